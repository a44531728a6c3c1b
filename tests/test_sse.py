"""SSE framing: what each subscriber receives for a record, in both formats."""
from __future__ import annotations

import json

from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from kchat_faust.models import ChatMessage
from kchat_faust.sse import KEEPALIVE, Frames, sse_frame


def decode(stream: bytes) -> list:
    """Events as an SSE client (httpx-sse, the CLI's) splits and parses them."""
    lines, decoder, events = SSELineDecoder(), SSEDecoder(), []
    for line in [*lines.decode(stream.decode()), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    return events


def message(text: str, user: str = "ann") -> ChatMessage:
    return ChatMessage(id="x1", room="lobby", user=user, text=text, sent_at="2026-12-01T00:00:00.000+00:00")


def test_sse_frame_cannot_be_broken_by_newlines():
    frame = sse_frame("test", "a\ndata: x\r\nid: 9", "1:2").decode()
    assert frame == "id: 1:2\nevent: test\ndata: a\ndata: data: x\ndata: id: 9\n\n"
    [event] = decode(frame.encode())
    assert (event.event, event.id, event.data) == ("test", "1:2", "a\ndata: x\nid: 9")


def test_native_frames_carry_the_message_json_with_newlines_and_u2028_intact():
    text = "line one\nline two\r\nthree \u2028 four \u2029 five"
    [event] = decode(Frames(message(text), 3, 41).render(compat=False))
    assert (event.event, event.id) == ("message", "3:41")
    body = json.loads(event.data)
    assert body["text"] == text and body["event_id"] == "3:41" and (body["partition"], body["offset"]) == (3, 41)
    # JSON escapes the newlines; U+2028 stays raw, and must not split the data line.
    assert Frames(message(text), 3, 41).render(compat=False).count(b"data:") == 1


def test_seed_frames_are_the_tutorials_event_test_with_name_and_text():
    frame = Frames(message("hello\nworld", user="alice"), 0, 7).render(compat=True)
    assert frame == b"id: 0:7\nevent: test\ndata: alice: hello\ndata: world\n\n"
    [event] = decode(frame)
    assert event.data == "alice: hello\nworld"


def test_a_record_is_rendered_once_per_format():
    frames = Frames(message("hi"), 0, 1)
    assert frames.render(compat=False) is frames.render(compat=False)
    assert frames.render(compat=True) is frames.render(compat=True)


def test_keepalive_is_a_lone_comment_that_no_client_turns_into_an_event():
    assert KEEPALIVE.startswith(b":") and not KEEPALIVE.endswith(b"\n\n")
    assert decode(KEEPALIVE * 3) == []
