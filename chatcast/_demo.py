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

from .client import BroadcastClient
from .message import ANNOUNCEMENT, JOIN, MESSAGE, render_text
from .multicast import MulticastChannel
from .server import BroadcastServer

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


async def _broadcast_part(say: Callable[[str], None]) -> bool:
    say("")
    async with BroadcastServer("127.0.0.1", 0, join_grace=0.1) as server:
        say(f"== Broadcast: a chat server on 127.0.0.1 port {server.port}, four clients ==")
        events = server.events()
        joins: set[str] = set()
        text_clients = []
        for label in ("client1", "client2"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            welcome = (await reader.readline()).decode().strip()
            say(f"{label} (text mode, like nc) connected; server says: {welcome}")
            writer.write(f"/nick {label}\n".encode())
            text_clients.append(_TextClient(label, reader, writer))
        json_clients = [
            BroadcastClient("127.0.0.1", server.port, name=f"client{i}") for i in (3, 4)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for client in json_clients:
                await stack.enter_async_context(client)
                say(f"{client.name} (BroadcastClient, JSON mode) connected")
            async for event in events:
                if event.kind == JOIN and event.sender:
                    joins.add(event.sender)
                if joins >= {"client1", "client2", "client3", "client4"}:
                    break
            await events.aclose()
            say("server announces -> halo")
            await server.broadcast("halo")
            lines = [
                (text_clients[0], "hi"),
                (text_clients[1], "apa kabar?"),
                (json_clients[0], "baik, terima kasih"),
                (json_clients[1], "sampai jumpa"),
            ]
            for sender, text in lines:
                if isinstance(sender, _TextClient):
                    # client1 sends with no newline, exactly like the lab's send(): the
                    # server takes the line after a short silence.
                    ending = "" if sender.label == "client1" else "\n"
                    sender.writer.write((text + ending).encode())
                    say(
                        f"{sender.label} -> {text}"
                        + ("   (sent without a newline)" if not ending else "")
                    )
                else:
                    await sender.send(text)
                    say(f"{sender.name} -> {text}")
                await asyncio.sleep(0)
            said = [(getattr(s, "label", None) or getattr(s, "name", "")) for s, _ in lines]
            expected = {
                name: ["[server] halo"]
                + [f"{n}: {t}" for n, (_, t) in zip(said, lines, strict=True) if n != name]
                for name in said
            }
            received: dict[str, list[str]] = {}
            for text_client in text_clients:
                received[text_client.label] = [await text_client.next_chat() for _ in range(4)]
            for client in json_clients:
                got = []
                while len(got) < 4:
                    message = await client.receive()
                    if message.kind in (MESSAGE, ANNOUNCEMENT):
                        got.append(render_text(message))
                assert client.name is not None
                received[client.name] = got
            for text_client in text_clients:
                text_client.writer.close()
        ok = True
        for name, want in expected.items():
            got = received[name]
            for line in got:
                say(f"{name} <- {line}")
            if sorted(got) != sorted(want) or got[0] != want[0]:
                ok = False
                say(f"{name}: expected {want}")
        stats = server.statistics()
        say(
            f"broadcast: {stats.messages_in} messages in, {stats.messages_out} delivered, "
            f"{stats.errors} errors"
        )
        return ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(run_demo(argparse.Namespace(group="224.1.1.1", port=5004))))
