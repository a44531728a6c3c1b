"""The interactive client: a prompt, with the room's messages printed above it."""

from __future__ import annotations

import asyncio
from contextlib import aclosing, suppress

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from kchat_cli.client import Client, KchatError
from kchat_cli.format import message_line

HISTORY = 20


async def run_chat(client: Client, user: str, room: str) -> None:
    async with client:
        history, since = await client.history(room, limit=HISTORY)
        for msg in history:
            print(message_line(msg))
        marker = ReadMarker(client, user, room)
        if history:
            marker.shown(history[-1]["event_id"])
        print(f"-- joined room {room} as {user}; /quit or Ctrl-D to leave --")
        # Resuming from the point the history read covered leaves no gap between the
        # history and the live stream, and repeats nothing -- also in an empty room.

        # patch_stdout makes print() from the receiving task land above the
        # prompt instead of in the middle of what the user is typing.
        with patch_stdout():
            receiver = asyncio.create_task(_receive(client, user, room, since, marker))
            typist = asyncio.create_task(_type(client, user, room))
            done, _ = await asyncio.wait({receiver, typist},
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in (receiver, typist):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await marker.close()
        for task in done:
            task.result()  # a stream that failed for good ends the chat with its error


class ReadMarker:
    """Marks the room read up to the last event shown, one request at a time: the newest position
    waits while one is on its way, and older ones are dropped (a position only moves forward)."""

    def __init__(self, client: Client, user: str, room: str) -> None:
        self.client, self.user, self.room = client, user, room
        self.pending: str | None = None
        self.task: asyncio.Task | None = None

    def shown(self, event_id: str | None) -> None:
        if not event_id:
            return
        self.pending = event_id
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self.pending is not None:
            event_id, self.pending = self.pending, None
            try:
                await self.client.mark_read(self.room, self.user, event_id)
            except KchatError as err:
                print(f"-- could not mark read: {err} --")
                return

    async def close(self) -> None:
        """Let the last mark go out (briefly) before leaving."""
        if self.task is not None:
            with suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)


async def _receive(client: Client, user: str, room: str, since: str | None, marker: ReadMarker) -> None:
    received = 0

    def reconnecting(reason: str, delay: float) -> None:
        print(f"-- connection lost ({reason}); reconnecting… --")

    def connected(is_reconnect: bool) -> None:
        if is_reconnect:
            print("-- reconnected --")

    async with aclosing(client.events(room, since, on_reconnect=reconnecting, on_connect=connected,
                                      user=user, presence=True)) as stream:
        async for msg in stream:
            marker.shown(msg.get("event_id"))
            if msg.get("event") in ("join", "leave"):
                if msg.get("user") != user:
                    print(f"-- {msg.get('user', '?')} {'joined' if msg['event'] == 'join' else 'left'} --")
                continue
            if msg.get("user") == user:
                continue  # already on screen as typed
            received += 1
            print(f"{msg.get('user', '?')}: {msg.get('text', '')}  (received: {received})")


async def _type(client: Client, user: str, room: str) -> None:
    session: PromptSession[str] = PromptSession()
    while True:
        try:
            text = await session.prompt_async(f"{user}: ")
        except (EOFError, KeyboardInterrupt):
            return
        if text.strip() == "/quit":
            return
        if not text.strip():
            continue
        try:
            await client.send(room, user, text)
        except KchatError as err:
            # One failed message should not end the conversation.
            print(f"-- not sent: {err} --")
