"""The kchat-cli commands."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import click
import httpx

from kchat_cli import __version__
from kchat_cli.client import EXIT_UNREACHABLE, EXIT_USAGE, Client, KchatError
from kchat_cli.format import message_line, receipt_line, rooms_table, stats_table, who_lines

PROG = "kchat-cli"
DEFAULT_URL = "http://127.0.0.1:6066"
EVENT_ID = re.compile(r"[0-9]+:-?[0-9]+")  # "partition:offset", as the server hands them out


def warn(text: str) -> None:
    click.echo(f"{PROG}: {text}", err=True)


def out(text: str) -> None:
    # click.echo flushes, which a pipe reader waiting for each message needs.
    click.echo(text)


class KchatGroup(click.Group):
    """Reports every failure as one line on stderr with a meaningful exit code."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name or PROG, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            code = EXIT_USAGE
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx else PROG
            warn(f"{err.format_message()} (see '{where} --help')")
            code = err.exit_code
        except click.ClickException as err:
            warn(err.format_message())
            code = err.exit_code
        except KchatError as err:
            warn(str(err))
            code = err.exit_code
        except click.Abort:
            warn("interrupted")
            code = 130
        sys.exit(code or 0)


@dataclass
class Settings:
    url: str
    timeout: float
    token: str | None = None

    def client(self) -> Client:
        return Client(self.url, self.timeout, self.token)


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{value!r} is not an http(s) URL, e.g. {DEFAULT_URL}")
    return value.rstrip("/")


@click.group(cls=KchatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="KCHAT_URL", default=DEFAULT_URL, show_default=True,
              show_envvar=True, callback=_check_url,
              help="Base URL of a kchat-faust worker.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the worker to answer.")
@click.option("--token", envvar="KCHAT_TOKEN", show_envvar=True, metavar="JWT",
              help="Bearer token, for workers run with KCHAT_JWT_SECRET (its sub is your user).")
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, url: str, timeout: float, token: str | None) -> None:
    """Chat through a kchat-faust worker: send, listen, chat, stats.

    \b
    Exit codes: 0 ok, 2 bad arguments, 3 worker unreachable or too slow,
    4 request refused by the worker (4xx), 5 worker error (5xx), 130 interrupted.

    \b
    Shell completion (bash; zsh_source and fish_source for the others):
      eval "$(_KCHAT_CLI_COMPLETE=bash_source kchat-cli)"
    """
    ctx.obj = Settings(url, timeout, token or None)


@cli.command()
@click.option("--user", "-u", required=True, help="Who the message is from.")
@click.option("--room", "-r", default="lobby", show_default=True, help="Room to post to.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the stored message as JSON instead of a summary.")
@click.option("--key", "key", default=None, metavar="KEY",
              help="Idempotency-Key of the message (default: a new one); sending again with the same "
                   "KEY cannot store it twice. Only with TEXT.")
@click.argument("text", nargs=-1)
@click.pass_obj
def send(settings: Settings, user: str, room: str, as_json: bool, key: str | None,
         text: tuple[str, ...]) -> None:
    """Publish TEXT (words joined by spaces) as one message.

    With no TEXT, or TEXT '-', every line of standard input is sent as its own
    message, in order; failed lines are reported with their line number.
    Prints where each message was stored: room, partition, offset, id, event_id
    (the event_id can be given to `listen --since`). A message whose outcome is unknown
    (timeout, lost connection, 503) is sent again with its Idempotency-Key, a few times.
    """
    def show(stored: dict[str, Any]) -> None:
        out(json.dumps(stored, ensure_ascii=False) if as_json else receipt_line(stored))

    if text and text != ("-",):
        message = " ".join(text)
        if not message.strip():
            raise click.UsageError("refusing to send an empty message; give some TEXT")

        async def one() -> None:
            async with settings.client() as client:
                show(await client.send(room, user, message, key=key))

        asyncio.run(one())
        return

    if key is not None:
        raise click.UsageError("--key names one message: give its TEXT (each stdin line gets a key of its own)")
    if sys.stdin.isatty():
        warn("reading messages from the terminal, one per line; Ctrl-D to finish")
    asyncio.run(_send_lines(settings, user, room, show))


async def _send_lines(settings: Settings, user: str, room: str, show: Any) -> None:
    failed, first_code = 0, 0
    async with settings.client() as client:  # one connection for all lines
        for lineno, line in enumerate(sys.stdin, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                warn(f"line {lineno}: empty, skipped")
                continue
            try:
                show(await client.send(room, user, line))
            except KchatError as err:
                failed += 1
                first_code = first_code or err.exit_code
                if err.exit_code == EXIT_UNREACHABLE:
                    # Every further line would wait out the same failure.
                    raise KchatError(f"line {lineno}: {err}; stopped, this and later lines "
                                     "were not sent", err.exit_code) from None
                warn(f"line {lineno}: {err}")
    if failed:
        raise KchatError(f"{failed} line(s) could not be sent", first_code)


@cli.command()
@click.option("--room", "-r", default="lobby", show_default=True, help="Room to follow.")
@click.option("--since", metavar="ID|TIME",
              help="Resume after this event_id (from `send` or `listen --json`), or start at the first "
                   "message at or after TIME (RFC 3339, e.g. 2026-12-04T15:00:00Z, or epoch milliseconds).")
@click.option("--json", "as_json", is_flag=True, help="Print each message as a JSON line.")
@click.option("--count", "-n", type=click.IntRange(min=1), metavar="N",
              help="Exit after N messages.")
@click.option("--user", "-u", help="Be listed in the room's presence as USER while listening.")
@click.pass_obj
def listen(settings: Settings, room: str, since: str | None, as_json: bool,
           count: int | None, user: str | None) -> None:
    """Print the room's messages as they arrive (Ctrl-C to stop).

    Each line shows local time, user and text. A dropped connection is
    reopened with backoff, resuming after the last message seen, so nothing
    is missed or repeated; if the log no longer has what came after the
    resume point, a line on stderr says so.
    """
    event_id, since_time = (since, None) if since is None or EVENT_ID.fullmatch(since) else (None, since)

    def reconnecting(reason: str, delay: float) -> None:
        warn(f"connection lost ({reason}); reconnecting in {delay:.1f}s")

    def connected(is_reconnect: bool) -> None:
        if is_reconnect:
            warn("reconnected")

    def gap(info: dict) -> None:
        warn(f"the log no longer has the messages after {info.get('missing_after_event_id')} "
             f"(retention); continuing from {info.get('first_event_id')}")

    async def follow() -> None:
        received = 0
        async with settings.client() as client, aclosing(
                client.events(room, event_id, on_reconnect=reconnecting, on_connect=connected, user=user,
                              since_time=since_time, on_gap=gap)) as stream:
            async for msg in stream:
                out(json.dumps(msg, ensure_ascii=False) if as_json else message_line(msg))
                received += 1
                if count is not None and received >= count:
                    return

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass  # the way to stop listening, not a failure


@cli.command()
@click.option("--room", "-r", default="lobby", show_default=True, help="The room.")
@click.option("--limit", "-n", type=click.IntRange(min=1, max=500), default=20, show_default=True,
              help="How many messages.")
@click.option("--before", metavar="ID", help="The messages just before this event_id (scroll back).")
@click.option("--since", metavar="TIME",
              help="From the first message at or after TIME (RFC 3339 or epoch milliseconds).")
@click.option("--json", "as_json", is_flag=True, help="Print each message as a JSON line.")
@click.pass_obj
def history(settings: Settings, room: str, limit: int, before: str | None, since: str | None,
            as_json: bool) -> None:
    """Print a page of ROOM's history, oldest first: the latest messages, the page before a message
    (--before), or from a point in time (--since). The last line on stderr tells how to get the
    page before it."""
    if before is not None and since is not None:
        raise click.UsageError("give --before or --since, not both")

    async def fetch() -> dict[str, Any]:
        async with settings.client() as client:
            return await client.history_page(room, limit, before, since)

    body = asyncio.run(fetch())
    for msg in body.get("messages", []):
        out(json.dumps(msg, ensure_ascii=False) if as_json else message_line(msg))
    gap = body.get("gap")
    if gap:
        warn(f"{gap.get('missing')} older message(s) of {room} are gone from the log (retention)")
    if body.get("before"):
        warn(f"older: kchat-cli history --room {room} --before {body['before']}")
    elif not gap:
        warn(f"that is the start of {room}")


@cli.command()
@click.option("--user", "-u", required=True, help="Your name in the room.")
@click.option("--room", "-r", default="lobby", show_default=True, help="Room to join.")
@click.pass_obj
def chat(settings: Settings, user: str, room: str) -> None:
    """Chat interactively: recent history, then a `USER: ` prompt.

    Others' messages appear above the prompt with a running count; your own
    are not echoed back. /quit or Ctrl-D leaves.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.UsageError("chat needs a terminal; to send from a pipe use "
                               "'kchat-cli send', to read use 'kchat-cli listen'")
    if not user.strip():
        raise click.BadParameter("must not be blank", param_hint="'--user'")
    from kchat_cli.chat import run_chat  # prompt_toolkit is only needed here

    asyncio.run(run_chat(settings.client(), user, room))


@cli.command()
@click.option("--trending", is_flag=True, help="Only the busiest rooms of the last 10 minutes.")
@click.option("--user", "-u", help="Add USER's unread messages per room (and the rooms USER read or posted in).")
@click.pass_obj
def rooms(settings: Settings, trending: bool, user: str | None) -> None:
    """List the rooms with messages or people: messages in the last minute, 10 minutes and hour,
    who is online, the last message's time; with --user, how many messages USER has not read."""
    async def fetch() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]] | None]:
        async with settings.client() as client:
            listed = await client.rooms(trending)
            return listed, (await client.unread(user) if user is not None else None)

    found, unread = asyncio.run(fetch())
    if unread is not None and not trending:
        # A room the user read in may be quiet now: list it anyway, with its unread count.
        known = {r.get("room") for r in found}
        found += [{"room": room, "last_message_at": u.get("last_message_at")}
                  for room, u in sorted(unread.items()) if room not in known]
    if not found:
        out("no rooms yet" if not trending else "nothing trending")
        return
    for line in rooms_table(found, unread):
        out(line)


@cli.command()
@click.option("--room", "-r", default="lobby", show_default=True, help="The room.")
@click.pass_obj
def who(settings: Settings, room: str) -> None:
    """Who is in ROOM now: the named users with their open sessions."""
    async def fetch() -> dict[str, Any]:
        async with settings.client() as client:
            return await client.presence(room)

    for line in who_lines(asyncio.run(fetch())):
        out(line)


@cli.command()
@click.option("--user", "-u", help="Show only this user's count.")
@click.option("--top", type=click.IntRange(min=1), metavar="N",
              help="Show only the N most active users.")
@click.pass_obj
def stats(settings: Settings, user: str | None, top: int | None) -> None:
    """Print how many messages each user has sent, busiest first."""
    async def fetch() -> dict[str, int]:
        async with settings.client() as client:
            if user is not None:
                return {user: await client.user_count(user)}
            return await client.user_counts()

    counts = asyncio.run(fetch())
    if not counts:
        out("no messages counted yet")
        return
    for line in stats_table(counts, top):
        out(line)
