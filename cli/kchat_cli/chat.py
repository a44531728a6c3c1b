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
        print(f"-- joined room {room} as {user}; /quit or Ctrl-D to leave --")
        # Resuming from the point the history read covered leaves no gap between the
        # history and the live stream, and repeats nothing -- also in an empty room.

        # patch_stdout makes print() from the receiving task land above the
        # prompt instead of in the middle of what the user is typing.
        with patch_stdout():
            receiver = asyncio.create_task(_receive(client, user, room, since))
            typist = asyncio.create_task(_type(client, user, room))
            done, _ = await asyncio.wait({receiver, typist},
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in (receiver, typist):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        for task in done:
            task.result()  # a stream that failed for good ends the chat with its error


async def _receive(client: Client, user: str, room: str, since: str | None) -> None:
    received = 0

    def reconnecting(reason: str, delay: float) -> None:
        print(f"-- connection lost ({reason}); reconnecting… --")

    def connected(is_reconnect: bool) -> None:
        if is_reconnect:
            print("-- reconnected --")

    async with aclosing(client.events(room, since, on_reconnect=reconnecting, on_connect=connected,
                                      user=user, presence=True)) as stream:
        async for msg in stream:
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
