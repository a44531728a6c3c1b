"""The browser chat page, driven in a real Chromium (Debian's, via Playwright) against real workers.

Chromium: /usr/bin/chromium (scripts/install-chromium installs it). Screenshots go to
test-artifacts/ (gitignored).
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import httpx
import pytest

from kchat_testkit.chat import unique
from kchat_testkit.procs import until_sync

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = pytest.mark.kafka

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
INJECTION = "<img src=x onerror=alert(1)>"
# Generous: what a page waits for often crosses Kafka (presence, counts, the room list), and the machine
# may stall for tens of seconds; an expectation returns as soon as it holds.
WAIT = 60_000  # ms: how long a page may take to show what the test waits for
RECONNECT_WAIT = 120_000  # ms: a worker restart plus the page's reconnect backoff (at most ~6 s)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-chromium (make test does)")
    expect.set_options(timeout=WAIT)
    pw = playwright_sync.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


class ChatPage:
    """One browser context (its own storage) with the chat page open; records dialogs and errors."""

    def __init__(self, browser, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 700})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT)
        self.dialogs: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.goto(base + "/")

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def join(self, user: str, room: str) -> "ChatPage":
        self.user = user
        self.page.fill("#user", user)
        self.page.fill("#room", room)
        self.page.click("#join-button")
        expect(self.state).to_have_text("connected", timeout=WAIT)
        return self

    def send(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")
        # The box is cleared once the server has answered 201; an error leaves it as it was.
        expect(self.page.locator("#text")).to_have_value("", timeout=WAIT)

    @property
    def state(self):
        return self.page.locator("#state")

    @property
    def texts(self):
        return self.page.locator("#messages .message .text")

    def event_ids(self) -> list[str]:
        return self.page.locator("#messages .message").evaluate_all("els => els.map(e => e.dataset.eventId)")

    def csp_violations(self) -> list[str]:
        return [m for m in self.console_errors if "Content Security Policy" in m]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser):
    pages: list[ChatPage] = []

    def make(base: str) -> ChatPage:
        p = ChatPage(browser, base)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()


def post(base: str, room: str, user: str, text: str) -> dict:
    r = httpx.post(f"{base}/api/rooms/{room}/messages", json={"user": user, "text": text}, timeout=20)
    assert r.status_code == 201, r.text
    return r.json()


def history(base: str, room: str) -> list[dict]:
    r = httpx.get(f"{base}/api/rooms/{room}/messages", params={"limit": 500}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_two_users_see_each_others_messages_in_order(kchat_worker, open_page):
    room, alice, bob = unique("page"), unique("alice"), unique("bob")
    a = open_page(kchat_worker.url).join(alice, room)
    b = open_page(kchat_worker.url).join(bob, room)

    texts = ["hi bob", "hello alice\nhow are you?", "fine, thanks"]
    a.send(texts[0])
    expect(b.texts).to_have_text(texts[:1])
    b.send(texts[1])
    expect(a.texts).to_have_text(texts[:2])
    a.send(texts[2])

    for p in (a, b):
        expect(p.texts).to_have_text(texts)
    # Own messages are marked, the other user's are not.
    expect(a.page.locator("#messages .message.own .text")).to_have_text([texts[0], texts[2]])
    expect(b.page.locator("#messages .message.own .text")).to_have_text([texts[1]])
    expect(a.page.locator("#messages .message:not(.own) .user")).to_have_text([bob])
    # The pages show the room exactly as the log holds it.
    logged = [m["event_id"] for m in history(kchat_worker.url, room)]
    assert a.event_ids() == logged and b.event_ids() == logged

    # The side panel shows the per-user counts from /stats/users.
    for p in (a, b):
        expect(p.page.locator(f'#users li[data-user="{alice}"] .count')).to_have_text("2")
        expect(p.page.locator(f'#users li[data-user="{bob}"] .count')).to_have_text("1")

    # A refused post shows the server's error text and keeps what was typed.
    refused = httpx.post(f"{kchat_worker.url}/api/rooms/{room}/messages",
                         json={"user": alice, "text": "   "}, timeout=20)
    assert refused.status_code == 400
    a.page.fill("#text", "   ")
    a.page.press("#text", "Enter")
    expect(a.page.locator("#error")).to_contain_text(refused.json()["error"])
    expect(a.page.locator("#text")).to_have_value("   ")

    # A later page joining the room gets the history.
    c = open_page(kchat_worker.url).join(unique("carol"), room)
    expect(c.texts).to_have_text(texts)
    expect(c.page.locator("#messages .message.own")).to_have_count(0)

    shot = screenshot(a.page, "page-conversation.png")
    assert shot.stat().st_size > 0
    for p in (a, b, c):
        assert p.page_errors == [] and p.dialogs == []
        assert p.csp_violations() == []


def test_scrolling_to_the_top_loads_older_messages_until_the_rooms_start(kchat_worker, open_page):
    room, user = unique("scroll"), unique("dora")
    with httpx.Client(timeout=20) as client:
        for i in range(130):  # the page loads 50 at a time
            r = client.post(f"{kchat_worker.url}/api/rooms/{room}/messages", json={"user": user, "text": f"m{i}"})
            assert r.status_code == 201, r.text
    p = open_page(kchat_worker.url).join(unique("eve"), room)
    expect(p.texts).to_have_count(50)
    expect(p.texts.first).to_have_text("m80")
    for shown in (100, 130):
        p.page.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
        expect(p.texts).to_have_count(shown)
    expect(p.texts.first).to_have_text("m0")
    assert p.texts.all_inner_texts() == [f"m{i}" for i in range(130)]  # each once, in log order
    # The view stays where it was: the older page lands above what was on screen.
    assert p.page.locator("#messages").evaluate("el => el.scrollTop") > 0
    assert p.page_errors == [] and p.csp_violations() == []


def test_a_send_whose_answer_was_lost_is_retried_with_its_key_and_shown_once(kchat_worker, open_page):
    room = unique("lost")
    p = open_page(kchat_worker.url).join(unique("dora"), room)
    keys: list[str] = []

    def lose_the_first_answer(route) -> None:
        if route.request.method != "POST":
            return route.continue_()
        keys.append(route.request.headers.get("idempotency-key", ""))
        if len(keys) == 1:
            route.fetch()  # the worker stores it ...
            return route.abort("connectionreset")  # ... and the page never hears back
        return route.continue_()

    p.page.route("**/api/rooms/*/messages", lose_the_first_answer)
    p.send("said once")
    expect(p.texts).to_have_text(["said once"])
    assert len(keys) == 2 and keys[0] == keys[1] != ""
    assert [m["text"] for m in history(kchat_worker.url, room)] == ["said once"]
    p.page.wait_for_timeout(500)  # a copy arriving late would show up here
    expect(p.texts).to_have_text(["said once"])
    assert p.page_errors == []


def test_who_is_online_joins_and_leaves_and_the_room_list(kchat_worker, open_page):
    room, other = unique("people"), unique("elsewhere")
    # Busy enough to be among the 30 busiest rooms the list shows, whatever other tests left on the
    # shared worker.
    for i in range(60):
        post(kchat_worker.url, other, "someone", f"busy over there {i}")
    ann, bob = unique("ann"), unique("bob")
    a = open_page(kchat_worker.url).join(ann, room)
    expect(a.page.locator("#messages .presence")).to_have_text([f"{ann} joined"])  # one's own, too
    b = open_page(kchat_worker.url).join(bob, room)
    expect(a.page.locator("#messages .presence")).to_have_text([f"{ann} joined", f"{bob} joined"])
    expect(a.page.locator("#online li .user")).to_have_text(sorted([ann, bob]))
    a.send("hello bob")
    # The room list shows both rooms with their activity; the current one is marked.
    expect(a.page.locator(f'#rooms li[data-room="{room}"] .activity')).to_contain_text("1/min · 2 online")
    expect(a.page.locator(f'#rooms li[data-room="{other}"]')).to_have_count(1)
    expect(a.page.locator(f'#rooms li.current[data-room="{room}"]')).to_have_count(1)
    b.page.click("#leave")
    expect(a.page.locator("#messages .presence")).to_have_text([f"{ann} joined", f"{bob} joined", f"{bob} left"])
    expect(a.page.locator("#online li .user")).to_have_text([ann])
    # Presence lines are no messages: the messages shown are still exactly the log's.
    assert a.event_ids() == [m["event_id"] for m in history(kchat_worker.url, room)]
    # A room in the list is a click away.
    a.page.click(f'#rooms li[data-room="{other}"] button')
    expect(a.page.locator("#where")).to_have_text(f"{ann} in {other}")
    expect(a.texts).to_have_text([f"busy over there {i}" for i in range(10, 60)])  # the last 50
    expect(a.page.locator("#online li .user")).to_have_text([ann])  # present in the new room now
    screenshot(a.page, "page-presence-and-rooms.png")
    assert a.page_errors == [] and a.csp_violations() == []


def unread(base: str, user: str) -> dict[str, dict]:
    r = httpx.get(f"{base}/api/users/{user}/unread", timeout=20)
    assert r.status_code == 200, r.text
    return {x["room"]: x for x in r.json()["rooms"]}


def poll(page, check, what: str, timeout: float = 60.0):
    """Polls check() -- (done, what it saw) -- while the page runs on (its own wait serves its events); fails
    with the last thing seen."""
    seen = []

    def done() -> bool:
        ok, last = check()
        seen[:] = [last]
        return ok
    until_sync(done, timeout, lambda: f"{what} (last seen {seen[0]})", interval=0.5,
               sleep=lambda seconds: page.wait_for_timeout(seconds * 1000))
    return seen[0]


def test_unread_badges_in_the_room_list_and_the_room_on_screen_is_read(kchat_worker, open_page):
    base, here, there = kchat_worker.url, unique("onscreen"), unique("badge")
    pat = unique("pat")
    first = post(base, there, "someone", "before pat looked")
    r = httpx.put(f"{base}/api/rooms/{there}/read", json={"user": pat, "event_id": first["event_id"]}, timeout=20)
    assert r.status_code == 204, r.text
    post(base, here, "someone", "already here")
    p = open_page(base).join(pat, here)
    elsewhere = [post(base, there, "someone", f"while pat was elsewhere {i}") for i in range(3)]

    def read_up_to(room: str, offset: int):
        def check():
            mine = unread(base, pat).get(room)
            return bool(mine) and mine["unread"] == 0 and int(mine["last_read"].split(":")[1]) >= offset, mine
        return check

    # The other room has a badge with its unread count; the room on screen has none, and is read as it goes.
    expect(p.page.locator(f'#rooms li[data-room="{there}"] .unread')).to_have_text("3")
    last = post(base, here, "someone", "said while pat watches")
    expect(p.texts.last).to_have_text("said while pat watches")
    expect(p.page.locator(f'#rooms li[data-room="{here}"] .unread')).to_have_count(0)
    # The page marks read as it shows; the server answers what it was told.
    poll(p.page, read_up_to(here, last["offset"]), f"{here} read by the page up to what it showed")
    screenshot(p.page, "page-unread-badges.png")
    # Opening the other room reads it: its badge goes, and the server says nothing is unread there.
    p.page.click(f'#rooms li[data-room="{there}"] button')
    expect(p.page.locator("#where")).to_have_text(f"{pat} in {there}")
    expect(p.texts.last).to_have_text("while pat was elsewhere 2")
    poll(p.page, read_up_to(there, elsewhere[-1]["offset"]), f"{there} read once opened")
    expect(p.page.locator("#rooms .unread")).to_have_count(0)
    assert p.page_errors == [] and p.csp_violations() == []


def test_markup_in_messages_is_shown_as_text(kchat_worker, open_page):
    room = unique("xss")
    p = open_page(kchat_worker.url).join(unique("viewer"), room)
    # Both through the API (also as the user name) and through the page's own send box.
    post(kchat_worker.url, room, INJECTION, INJECTION)
    p.send("<script>alert(2)</script><b>bold</b>")
    expect(p.texts).to_have_text([INJECTION, "<script>alert(2)</script><b>bold</b>"])
    expect(p.page.locator("#messages .message .user").first).to_have_text(INJECTION)
    # The user name also reaches the counts panel.
    expect(p.page.locator("#users li .user", has_text=INJECTION)).to_have_count(1)

    for sel in ("#messages img", "#messages script", "#messages b", "#users img"):
        assert p.page.locator(sel).count() == 0, sel
    # Loaded history goes through the same rendering: a second page sees the same text.
    q = open_page(kchat_worker.url).join(unique("late"), room)
    expect(q.texts).to_have_text([INJECTION, "<script>alert(2)</script><b>bold</b>"])
    assert q.page.locator("#messages img").count() == 0
    for pg in (p, q):
        assert pg.dialogs == [], pg.dialogs
        assert pg.page_errors == []


def test_page_reconnects_after_worker_restart_without_gap_or_duplicate(kchat_worker, worker_factory, open_page):
    room, user = unique("outage"), unique("dora")
    p = open_page(kchat_worker.url).join(user, room)
    p.send("before")
    expect(p.texts).to_have_text(["before"])

    other = worker_factory()  # a second worker in the group keeps the service up during the outage
    try:
        try:
            kchat_worker.stop()
            expect(p.state).to_have_text("reconnecting")
            expect(p.page.locator("#users-note")).to_contain_text("counts unavailable")
            during = [post(other.url, room, "helper", f"during {i}")["event_id"] for i in range(3)]
        finally:
            kchat_worker.start()
        expect(p.state).to_have_text("connected", timeout=RECONNECT_WAIT)
        expected = ["before", "during 0", "during 1", "during 2"]
        expect(p.texts).to_have_text(expected, timeout=RECONNECT_WAIT)

        # A message after the resume arrives after the caught-up ones; any duplicate of the
        # catch-up would have come before it on the same stream.
        post(kchat_worker.url, room, user, "after")
        expect(p.texts).to_have_text([*expected, "after"])
        ids = p.event_ids()
        assert ids[1:4] == during
        assert ids == [m["event_id"] for m in history(kchat_worker.url, room)]
        expect(p.page.locator("#messages .message.own .text")).to_have_text(["before", "after"])
        # The counts panel recovers too (the group may still be rebalancing after the restart).
        expect(p.page.locator("#users-note")).to_have_text("", timeout=RECONNECT_WAIT)
        assert p.page_errors == []
    finally:
        other.stop()


def test_page_headers_csp_and_static_caching(kchat_worker, open_page):
    base = kchat_worker.url
    r = httpx.get(base + "/", timeout=20)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split(";") if d.strip()}
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in csp["style-src"]
    # Every script in the page is an external file; no inline handlers or styles to be blocked.
    scripts = re.findall(r"<script\b[^>]*>", r.text)
    assert scripts and all(re.search(r'\ssrc="/static/[^"]+"', s) for s in scripts)
    assert not re.search(r"\son[a-z]+=", r.text) and " style=" not in r.text and "<style" not in r.text

    for name, content_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{base}/static/{name}", timeout=20)
        assert r.status_code == 200, name
        assert r.headers["content-type"] == f"{content_type}; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-cache"
        assert r.content == resources.files("kchat_faust").joinpath("static", name).read_bytes()
        etag = r.headers["etag"]
        again = httpx.get(f"{base}/static/{name}", headers={"If-None-Match": etag}, timeout=20)
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        stale = httpx.get(f"{base}/static/{name}", headers={"If-None-Match": '"other"'}, timeout=20)
        assert stale.status_code == 200 and stale.content == r.content
    missing = httpx.get(f"{base}/static/..%2Fpage.py", timeout=20)
    assert missing.status_code == 404
    missing = httpx.get(f"{base}/static/nothing.js", timeout=20)
    assert missing.status_code == 404 and missing.json()["error"]

    # The browser enforces the policy: a script element added at run time does not run.
    p = open_page(base)
    with p.page.expect_console_message(lambda m: "Content Security Policy" in m.text) as violation:
        ran = p.page.evaluate("""() => {
            const s = document.createElement("script");
            s.textContent = "window.__inlineRan = true";
            document.body.append(s);
            return window.__inlineRan === true;
        }""")
    assert ran is False
    assert "script-src" in violation.value.text


def test_page_passes_its_token_to_a_worker_with_authentication(open_page, worker_factory):
    import jwt

    secret = "page-test-secret-of-at-least-32-bytes!"
    worker = worker_factory(env={"KCHAT_JWT_SECRET": secret})
    try:
        room = unique("pageauth")
        page = open_page(worker.url)
        page.page.fill("#token", jwt.encode({"sub": "ida"}, secret, algorithm="HS256"))
        page.join("ida", room)  # history and the event stream need the token: "connected" proves both
        page.send("signed from the browser")
        expect(page.texts).to_have_text(["signed from the browser"])

        stranger = open_page(worker.url)
        stranger.page.fill("#user", "mallory")
        stranger.page.fill("#room", room)
        stranger.page.click("#join-button")  # no token: the history is refused and the page says so
        expect(stranger.page.locator("#error")).to_contain_text("token")
    finally:
        worker.stop()
