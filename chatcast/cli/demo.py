"""``chatcast demo``: the whole lab, done right, in one command on loopback.

Part 1 is the multicast lab: one sender and two receivers on 224.1.1.1 (interface 127.0.0.1,
so nothing leaves this machine). Part 2 is the broadcast lab with four clients: two text-mode
clients written like the lab's (raw sockets; one sends without a newline, as the lab's
client1.py did) and two :class:`~chatcast.client.BroadcastClient` s, plus a server
announcement. Every delivery is checked; the exit status says whether all arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Final

from ..client import BroadcastClient
from ..message import ANNOUNCEMENT, JOIN, MESSAGE, render_text
from ..multicast import MulticastChannel
from ..server import BroadcastServer

__all__ = ["add_parser", "run_demo"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="run the whole lab on loopback and print the transcript",
        description=(
            "Run the lab in one process, on loopback only: a multicast sender and two "
            "receivers (interface 127.0.0.1), then a chat server with four scripted clients "
            "and a server announcement. Prints the transcript; exits 0 when every message "
            "arrived, 1 otherwise."
        ),
    )
    demo.add_argument("--group", default="224.1.1.1", help="multicast group (default: %(default)s)")
    demo.add_argument(
        "--port", type=int, default=5004, help="multicast port (default: %(default)s)"
    )
    demo.set_defaults(run=run_demo)


async def run_demo(args: argparse.Namespace) -> int:
    """Run both parts; return 0 if every expected delivery arrived."""
    say: Callable[[str], None] = print
    try:
        async with asyncio.timeout(30):
            ok = await _multicast_part(args.group, args.port, say)
            ok = await _broadcast_part(say) and ok
    except TimeoutError:
        say("demo: timed out waiting for messages")
        return 1
    say("")
    say("demo: every message arrived" if ok else "demo: some messages were lost")
    return 0 if ok else 1


async def _multicast_part(group: str, port: int, say: Callable[[str], None]) -> bool:
    say(f"== Multicast: one sender, two receivers, group {group} port {port} ==")
    say("   (interface 127.0.0.1, TTL 1: nothing leaves this machine)")
    texts = ["halo semua", "ini pesan multicast", "selesai"]
    async with (
        MulticastChannel(group, port, interface="127.0.0.1", ttl=1, name="receiver1") as receiver1,
        MulticastChannel(group, port, interface="127.0.0.1", ttl=1, name="receiver2") as receiver2,
        MulticastChannel(group, port, interface="127.0.0.1", ttl=1, name="sender") as sender,
    ):
        for text in texts:
            say(f"sender    -> {text}")
            await sender.send(text)
        results = await asyncio.gather(
            _collect(receiver1, "sender", len(texts)), _collect(receiver2, "sender", len(texts))
        )
    for label, got in zip(("receiver1", "receiver2"), results, strict=True):
        for text in got:
            say(f"{label} <- sender: {text}")
    ok = all(got == texts for got in results)
    say(f"multicast: {'both receivers got every message, in order' if ok else 'MISSING messages'}")
    return ok


async def _collect(channel: MulticastChannel, sender: str, count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        message = await channel.receive()
        if message.sender == sender:  # other programs may share the group: skip them
            got.append(message.text)
    return got


class _TextClient:
    """A text-mode client written like the lab's: a raw TCP socket, reading lines."""

    def __init__(self, label: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.label = label
        self.reader = reader
        self.writer = writer

    async def next_chat(self) -> str:
        """The next chat or announcement line (skipping join/leave/info lines)."""
        while True:
            line = (await self.reader.readline()).decode().rstrip("\n")
            if not line:
                raise ConnectionError(f"{self.label}: connection closed")
            if not line.startswith(("* ", "! ")):
                return line


# Who says what, in order: client1 and client2 are text-mode (raw sockets, like the lab's
# clients and nc); client3 and client4 are BroadcastClients (JSON mode).
SCRIPT: Final = [
    ("client1", "hi"),
    ("client2", "apa kabar?"),
    ("client3", "baik, terima kasih"),
    ("client4", "sampai jumpa"),
]


async def _broadcast_part(say: Callable[[str], None]) -> bool:
    say("")
    async with BroadcastServer("127.0.0.1", 0, join_grace=0.1) as server:
        say(f"== Broadcast: a chat server on 127.0.0.1 port {server.port}, four clients ==")
        events = server.events()
        text_clients: dict[str, _TextClient] = {}
        for label in ("client1", "client2"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            welcome = (await reader.readline()).decode().strip()
            say(f"{label} (text mode, like nc) connected; server says: {welcome}")
            writer.write(f"/nick {label}\n".encode())
            text_clients[label] = _TextClient(label, reader, writer)
        async with contextlib.AsyncExitStack() as stack:
            json_clients: dict[str, BroadcastClient] = {}
            for label in ("client3", "client4"):
                client = BroadcastClient("127.0.0.1", server.port, name=label)
                json_clients[label] = await stack.enter_async_context(client)
                say(f"{label} (BroadcastClient, JSON mode) connected")
            joined: set[str] = set()
            async for event in events:  # wait until all four are in the room
                if event.kind == JOIN and event.sender:
                    joined.add(event.sender)
                    if len(joined) == 4:
                        break
            await events.aclose()

            say("server announces -> halo")
            await server.broadcast("halo")
            for label, text in SCRIPT:
                if label in text_clients:
                    # client1 sends with no newline, exactly like the lab's send(): the
                    # server takes the line after a short silence.
                    ending = "" if label == "client1" else "\n"
                    text_clients[label].writer.write((text + ending).encode())
                    note = "   (sent without a newline)" if not ending else ""
                    say(f"{label} -> {text}{note}")
                else:
                    await json_clients[label].send(text)
                    say(f"{label} -> {text}")

            received: dict[str, list[str]] = {}
            for label, text_client in text_clients.items():
                received[label] = [await text_client.next_chat() for _ in range(len(SCRIPT))]
                text_client.writer.close()
            for label, client in json_clients.items():
                got: list[str] = []
                while len(got) < len(SCRIPT):
                    message = await client.receive()
                    if message.kind in (MESSAGE, ANNOUNCEMENT):
                        got.append(render_text(message))
                received[label] = got

        ok = True
        for label, got in received.items():
            want = ["[server] halo"] + [f"{who}: {text}" for who, text in SCRIPT if who != label]
            for line in got:
                say(f"{label} <- {line}")
            # The announcement comes first; messages from different senders may interleave.
            if got[0] != want[0] or sorted(got) != sorted(want):
                ok = False
                say(f"{label}: expected {want}")
        stats = server.statistics()
        say(
            f"broadcast: {stats.messages_in} messages in, {stats.messages_out} delivered, "
            f"{stats.errors} errors"
        )
        return ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(run_demo(argparse.Namespace(group="224.1.1.1", port=5004))))
