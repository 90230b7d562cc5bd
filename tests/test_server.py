"""BroadcastServer on real sockets: relaying, rooms, names, limits, bad input, shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from chatcast.client import BroadcastClient
from chatcast.exceptions import Refused
from chatcast.message import ANNOUNCEMENT, CLOSING, JOIN, LEAVE, MESSAGE, NICK, PRIVATE
from chatcast.server import BroadcastServer
from tests.conftest import TextPeer, receive_kind
from tests.helpers import timeout, wait_until

Factory = Callable[..., Any]


async def test_two_clients_relay_both_ways(connect: Factory) -> None:
    """The two-client lab: each client's message reaches the other, stamped, not itself."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.send("hi bob")
    got = await receive_kind(bob, MESSAGE)
    assert (got.sender, got.text, got.room) == ("alice", "hi bob", "lobby")
    await bob.send("hi alice")
    got = await receive_kind(alice, MESSAGE)
    assert (got.sender, got.text) == ("bob", "hi alice")
    # alice's own message never came back to her: the next message she sees is bob's.
    assert got.timestamp is not None


async def test_four_clients_and_announcement(server: BroadcastServer, connect: Factory) -> None:
    """The four-client lab: the announcement and every message reach all others once, in order."""
    clients = [await connect(f"c{i}") for i in range(4)]
    await server.broadcast("halo")
    for client in clients:
        got = await receive_kind(client, ANNOUNCEMENT)
        assert (got.text, got.sender) == ("halo", "server")
    for round_ in range(3):
        for client in clients:
            await client.send(f"{client.name} round {round_}")
    for client in clients:
        received = [await receive_kind(client, MESSAGE) for _ in range(9)]
        assert sorted(m.text for m in received) == sorted(
            f"c{i} round {r}" for r in range(3) for i in range(4) if f"c{i}" != client.name
        )
        for sender in {m.sender for m in received}:  # per-sender order kept
            texts = [m.text for m in received if m.sender == sender]
            assert texts == [f"{sender} round {r}" for r in range(3)]
        assert all(m.text.startswith(m.sender or "?") for m in received)  # stamped correctly


async def test_join_and_leave_notices(connect: Factory) -> None:
    """Others in the room see a join and a leave with its reason."""
    alice = await connect("alice")
    bob = await connect("bob")
    joined = await receive_kind(alice, JOIN)
    while joined.sender != "bob":
        joined = await receive_kind(alice, JOIN)
    assert joined.room == "lobby"
    await bob.close()
    left = await receive_kind(alice, LEAVE)
    assert (left.sender, left.room) == ("bob", "lobby")


async def test_text_client_chats_with_json_client(connect: Factory, text_peer: Factory) -> None:
    """A raw-socket client (like nc) and a BroadcastClient chat both ways."""
    alice = await connect("alice")
    peer = await text_peer(nick="nc")
    peer.send("hello from nc\n")
    got = await receive_kind(alice, MESSAGE)
    assert (got.sender, got.text) == ("nc", "hello from nc")
    await alice.send("hello nc")
    assert await peer.until(lambda line: not line.startswith("*")) == "alice: hello nc"


async def test_line_without_newline_is_a_message_after_silence(
    connect: Factory, text_peer: Factory
) -> None:
    """The lab's client1.py sends with no newline: a short silence completes the message."""
    alice = await connect("alice")
    peer = await text_peer()
    peer.send(b"hi")  # no newline, like socket.send(input().encode())
    got = await receive_kind(alice, MESSAGE)
    assert got.text == "hi"
    assert got.sender is not None
    assert got.sender.startswith("guest")


async def test_crlf_and_split_frames(connect: Factory, text_peer: Factory) -> None:
    """CRLF is accepted and a line split across many writes is one message."""
    alice = await connect("alice")
    peer = await text_peer()
    for piece in (b"spl", b"it li", b"ne\r", b"\nsecond\r\n"):
        peer.send(piece)
        await peer.writer.drain()
    assert (await receive_kind(alice, MESSAGE)).text == "split line"
    assert (await receive_kind(alice, MESSAGE)).text == "second"


async def test_many_senders_at_once(start_server: Factory) -> None:
    """10 clients x 1000 messages concurrently: each gets the 9000 others' intact, in order."""
    server = await start_server()
    count = 1000
    clients = [BroadcastClient("127.0.0.1", server.port, name=f"s{i}") for i in range(10)]
    for client in clients:
        await client.connect()
    try:

        async def send_all(client: BroadcastClient) -> None:
            for n in range(count):
                await client.send(f"{client.name} message {n} " + "x" * 40)

        async def receive_all(client: BroadcastClient) -> dict[str, list[int]]:
            seen: dict[str, list[int]] = {}
            while sum(map(len, seen.values())) < 9 * count:
                message = await receive_kind(client, MESSAGE, seconds=30)
                name, _, n, pad = message.text.split(" ")
                assert name == message.sender
                assert pad == "x" * 40
                seen.setdefault(name, []).append(int(n))
            return seen

        async with asyncio.timeout(timeout(60)):
            senders = asyncio.gather(*(send_all(c) for c in clients))
            results = await asyncio.gather(*(receive_all(c) for c in clients))
            await senders
        for client, seen in zip(clients, results, strict=True):
            assert client.name not in seen
            assert len(seen) == 9
            for numbers in seen.values():
                assert numbers == list(range(count))
        assert server.statistics().messages_out == 10 * 9 * count
    finally:
        for client in clients:
            await client.close()


async def test_rooms_isolate_and_private_messages(connect: Factory) -> None:
    """Messages stay in their room; /msg reaches one name only."""
    alice = await connect("alice", room="red")
    bob = await connect("bob", room="blue")
    carol = await connect("carol", room="red")
    await bob.send("blue only")
    await alice.send("psst", to="bob")
    await alice.send("red only")
    got = await receive_kind(carol, MESSAGE, PRIVATE)
    assert (got.kind, got.text) == (MESSAGE, "red only")
    got = await receive_kind(bob, MESSAGE, PRIVATE)
    assert (got.kind, got.sender, got.text, got.to) == (PRIVATE, "alice", "psst", "bob")
    assert await alice.who() == ["alice", "carol"]
    assert await alice.who("blue") == ["bob"]
    await bob.join("red")
    assert await alice.who() == ["alice", "bob", "carol"]
    assert await bob.rooms() == {"red": 3}


async def test_private_to_unknown_name_is_an_error(connect: Factory) -> None:
    """A private message to nobody is refused: send() raises with the server's reason."""
    alice = await connect("alice")
    with pytest.raises(Refused, match=r"^no such user: ghost$"):
        await alice.send("hello?", to="ghost")
    accepted = await alice.send("still here")  # the connection goes on
    assert accepted.id is not None
    assert accepted.text == "still here"


async def test_names_are_unique(connect: Factory, text_peer: Factory) -> None:
    """A hello with a taken name is refused with a reason; /nick to a taken name errs."""
    await connect("alice")
    with pytest.raises(Exception, match="name 'alice' is taken") as info:
        await connect("alice")
    assert type(info.value).__name__ == "ConnectionClosed"
    peer = await text_peer()
    peer.send("/nick alice\n")
    assert await peer.until(lambda line: line.startswith("!")) == "! name 'alice' is taken"


async def test_names_differing_only_in_case_or_width_are_one_name(
    connect: Factory, text_peer: Factory
) -> None:
    """Alice, alice and fullwidth alice are one name; a mixed-script look-alike is refused."""
    alice = await connect("alice")
    with pytest.raises(Exception, match="name 'Alice' is taken"):
        await connect("Alice")
    with pytest.raises(Exception, match="name '\uff41lice' is taken"):
        await connect("\uff41lice")  # fullwidth a
    peer = await text_peer()
    peer.send("/nick \u0430lice\n")  # Cyrillic a, Latin rest
    assert await peer.until(lambda line: line.startswith("!")) == (
        "! name mixes letters of different scripts"
    )
    peer.send("/msg ALICE psst\n")  # a private finds its recipient whatever the case
    got = await receive_kind(alice, PRIVATE)
    assert (got.to, got.text) == ("ALICE", "psst")
    await alice.nick("Alice")  # its own name in another case: allowed
    assert (await receive_kind(alice, NICK)).text == "Alice"


async def test_nick_as_a_guests_first_command(start_server: Factory) -> None:
    """A text guest renamed before its join was announced: the room sees only the join under
    the new name; the guest sees its rename once."""
    # A join grace far longer than the test: under CPU contention the default 50 ms of the
    # fixture could pass before /nick arrives, and the join would be announced first.
    server = await start_server(join_grace=timeout(30))
    watcher = await TextPeer.connect(server.port)
    assert await watcher.line() == server.welcome
    watcher.send("/nick watcher\n")
    await watcher.until(lambda line: line.endswith("is now watcher"))
    guest = await TextPeer.connect(server.port)
    try:
        assert await guest.line() == server.welcome
        (old,) = (name for name in server.who() if name != "watcher")
        guest.send("/nick tari\n")
        # Not the first "*" line: the watcher's join notice may reach the guest first.
        assert await guest.until(lambda line: "is now" in line) == f"* {old} is now tari"
        guest.send("hai\n/who\n")
        later = [await guest.line()]
        while not later[-1].startswith("* in "):
            later.append(await guest.line())
        assert not [line for line in later if "is now" in line]  # told once
        seen = [await watcher.until(lambda line: not line.startswith("* watcher"))]
        seen.append(await watcher.line())
        assert seen == ["* tari joined lobby", "tari: hai"]
    finally:
        await watcher.close()
        await guest.close()


async def test_text_commands(text_peer: Factory) -> None:
    """/help, /who, /rooms, /join, //escape and unknown commands in text mode."""
    peer = await text_peer(nick="tess")
    other = await text_peer(nick="olaf")
    peer.send("/help\n")
    assert "/msg NAME TEXT" in await peer.until(lambda line: "/msg" in line)
    peer.send("/who\n")
    assert await peer.until(lambda line: line.startswith("* in ")) == "* in lobby: olaf, tess"
    peer.send("/bogus\n")
    assert (
        await peer.until(lambda line: line.startswith("!"))
        == "! unknown command /bogus (try /help)"
    )
    peer.send("//slash\n")
    assert await other.until(lambda line: line.startswith("tess:")) == "tess: /slash"
    peer.send("/join den\n")
    assert await peer.until(lambda line: "now in" in line) == "* you are now in den"
    assert await other.until(lambda line: "left" in line) == "* tess left lobby (joined den)"
    peer.send("/rooms\n")
    assert (
        await peer.until(lambda line: line.startswith("* rooms")) == "* rooms: den (1), lobby (1)"
    )
    other.send("/join den\n")
    await other.until(lambda line: "now in" in line)
    peer.send("/quit bye\n")
    assert await other.until(lambda line: "left" in line) == "* tess left den (bye)"


async def test_max_clients(start_server: Factory) -> None:
    """The client over max_clients gets an error line and is closed; the server serves on."""
    server = await start_server(max_clients=2)
    first = await TextPeer.connect(server.port)
    second = await TextPeer.connect(server.port)
    third = await TextPeer.connect(server.port)
    assert await third.line() == "! server full (2 clients)"
    assert await third.eof() == b""
    await first.close()
    await wait_until(lambda: server.statistics().clients == 1)
    fourth = await TextPeer.connect(server.port)
    assert await fourth.line() == server.welcome
    assert server.statistics().rejected == 1
    for peer in (second, third, fourth):
        await peer.close()


async def test_over_long_line_is_refused_and_the_next_line_works(
    connect: Factory, text_peer: Factory
) -> None:
    """A line over the limit gets an error; its tail is never relayed; the next line is."""
    alice = await connect("alice")
    peer = await text_peer(nick="big")
    peer.send(b"A" * (70 * 1024) + b"TAIL\nnext\n")
    assert (await peer.until(lambda line: line.startswith("!"))).startswith("! line longer than")
    got = await receive_kind(alice, MESSAGE)
    assert got.text == "next"


async def test_over_long_line_without_any_newline_ends_at_a_silence(
    connect: Factory, text_peer: Factory
) -> None:
    """A client that never sends LF (the lab's) is not muted by one over-long line: the
    silence that completes its lines also ends the discard."""
    alice = await connect("alice")
    peer = await text_peer(nick="lab")
    peer.send(b"A" * (70 * 1024))
    assert (await peer.until(lambda line: line.startswith("!"))).startswith("! line longer than")
    peer.send(b"more of the same long line")  # same burst: still the over-long line
    await asyncio.sleep(0.4)  # the silence *is* the frame boundary for the lab's clients
    peer.send(b"hello after the long one")
    got = await receive_kind(alice, MESSAGE)
    assert (got.sender, got.text) == ("lab", "hello after the long one")


async def test_huge_line_without_newline_does_not_grow_memory(
    server: BroadcastServer, connect: Factory, text_peer: Factory
) -> None:
    """10 MiB with no newline: one error, the connection survives, others are unaffected."""
    alice = await connect("alice")
    bob = await connect("bob")
    peer = await text_peer(nick="flood")
    chunk = b"B" * 65536
    for _ in range(160):
        peer.send(chunk)
        await peer.writer.drain()
    await alice.send("still here")
    assert (await receive_kind(bob, MESSAGE)).text == "still here"
    peer.send(b"\nafter\n")
    assert (await receive_kind(alice, MESSAGE)).text == "after"
    assert server.statistics().errors == 1
    lines: list[str] = []
    while not lines or not lines[-1].startswith("!"):
        lines.append(await peer.line())
    assert lines[-1] == "! line longer than 65536 bytes"


async def test_invalid_utf8_and_control_characters(connect: Factory, text_peer: Factory) -> None:
    """Bad UTF-8, NUL, ESC and a lone CR get errors; good lines around them get through."""
    alice = await connect("alice")
    peer = await text_peer(nick="bad")
    peer.send(b"ok 1\n\xff\xfe bad\nnul\x00here\nesc \x1b[31mred\nlone\rcr\nok 2\n")
    errors = [await peer.until(lambda line: line.startswith("!")) for _ in range(4)]
    assert errors[0] == "! invalid UTF-8 at byte 0"
    assert errors[1] == "! control character U+0000 is not allowed"
    assert errors[2] == "! control character U+001B is not allowed"
    assert errors[3] == "! control character U+000D is not allowed"
    assert (await receive_kind(alice, MESSAGE)).text == "ok 1"
    assert (await receive_kind(alice, MESSAGE)).text == "ok 2"


async def test_json_bad_frames_and_forged_sender(server: BroadcastServer, connect: Factory) -> None:
    """Unknown type and wrong field types get errors; a forged "from" is overwritten."""
    alice = await connect("alice")
    raw = await TextPeer.connect(server.port)
    await raw.line()
    raw.send('{"type":"hello","name":"mallory"}\n')
    assert json.loads(await raw.until(lambda line: '"welcome"' in line))["name"] == "mallory"
    raw.send('{"type":"teleport"}\n{"type":"message","text":5}\n[1,2]\n{"type":"message"\n')
    raw.send('{"type":"message","text":"hi","from":"alice"}\n')
    errors: list[str] = []
    while len(errors) < 4:
        obj = json.loads(await raw.line())
        if obj["type"] == "error":
            errors.append(obj["text"])
    assert errors[0] == "unknown frame type 'teleport'"
    assert errors[1] == '"text" must be a string'
    assert errors[2] == "a JSON frame must be an object"
    assert errors[3].startswith("not a JSON frame")
    got = await receive_kind(alice, MESSAGE)
    assert (got.sender, got.text) == ("mallory", "hi")
    await raw.close()


async def test_rst_mid_line_is_survived(server: BroadcastServer, connect: Factory) -> None:
    """A client that resets mid-line is removed; its partial line is never relayed."""
    alice = await connect("alice")
    bob = await connect("bob")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"half a li")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    await alice.send("after the reset")
    assert (await receive_kind(bob, MESSAGE)).text == "after the reset"
    await wait_until(lambda: server.statistics().clients == 2)
    assert server.statistics().messages_in == 1


async def test_half_close_delivers_the_last_partial_line(
    server: BroadcastServer, connect: Factory
) -> None:
    """A peer that sends without a newline and shuts down writing still gets its line out."""
    alice = await connect("alice")
    peer = await TextPeer.connect(server.port)
    await peer.line()
    peer.send(b"last words")
    peer.writer.write_eof()
    assert (await receive_kind(alice, MESSAGE)).text == "last words"
    await peer.close()


def _never_reading_socket(port: int, nick: str) -> socket.socket:
    """A client with a tiny receive buffer that will not read (until the test says so)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"/nick {nick}\n".encode())
    return sock


async def _flood(port: int, total: int, size: int) -> TextPeer:
    """A text peer that sends ``total`` numbered lines of about ``size`` bytes, then 'last'."""
    peer = await TextPeer.connect(port)
    await peer.line()
    pad = "p" * size
    for start in range(0, total, 100):
        peer.send("".join(f"{n} {pad}\n" for n in range(start, min(total, start + 100))))
        await peer.writer.drain()
    peer.send("last\n")
    return peer


# The kernel absorbs several MiB per connection on loopback (tcp_wmem max 4 MiB here) before
# the server's own buffer starts to fill, so the floods below are 8 MiB.
FLOOD_LINES = 4000
FLOOD_SIZE = 2000


async def test_slow_consumer_is_disconnected_and_others_unaffected(start_server: Factory) -> None:
    """A never-reading client is cut off at its bound with a reason; the rest get everything."""
    # close_timeout: the dropped client is aborted only after the test has read its socket.
    server = await start_server(max_buffer_bytes=256 * 1024, close_timeout=60)
    bob = BroadcastClient("127.0.0.1", server.port, name="bob")
    await bob.connect()
    slow = _never_reading_socket(server.port, "slow")
    await wait_until(lambda: server.who() == ["bob", "slow"])
    try:

        async def drain() -> list[int]:
            seen: list[int] = []
            while True:
                message = await receive_kind(bob, MESSAGE, seconds=30)
                if message.text == "last":
                    return seen
                seen.append(int(message.text.split()[0]))

        async with asyncio.timeout(timeout(60)):
            flooder, seen = await asyncio.gather(
                _flood(server.port, FLOOD_LINES, FLOOD_SIZE), drain()
            )
        await flooder.close()
        assert seen == list(range(FLOOD_LINES))
        assert server.statistics().slow_consumers == 1
        await wait_until(lambda: server.who() == ["bob"])
        # What the slow client can still read ends with the reason, then EOF.
        slow.settimeout(timeout(10))
        data = b""
        while chunk := await asyncio.to_thread(slow.recv, 1 << 20):
            data += chunk
        assert data.rstrip(b"\n").rsplit(b"\n", 1)[-1] == (
            b"! slow consumer: more than 262144 bytes unread"
        )
    finally:
        slow.close()
        await bob.close()


async def test_slow_consumer_drop_oldest(start_server: Factory) -> None:
    """In drop-oldest mode a slow reader loses old messages, is told, and stays connected."""
    server = await start_server(max_buffer_bytes=256 * 1024, slow_consumer="drop-oldest")
    slow = _never_reading_socket(server.port, "slow")
    await wait_until(lambda: server.who() == ["slow"])
    flooder = await _flood(server.port, FLOOD_LINES, FLOOD_SIZE)
    try:
        await wait_until(lambda: server.statistics().messages_in == FLOOD_LINES + 1, 30)
        assert server.statistics().dropped > 0
        slow.settimeout(timeout(10))
        data = b""
        while not data.endswith(b": last\n"):
            chunk = await asyncio.to_thread(slow.recv, 1 << 20)
            assert chunk, "connection closed"
            data += chunk
        lines = data.decode().splitlines()
        notices = [line for line in lines if line.startswith("!")]
        assert len(notices) == 1
        assert notices[0].endswith("messages dropped: you were reading too slowly")
        numbers = [int(line.split()[1]) for line in lines[:-1] if line.startswith("guest")]
        assert numbers == sorted(numbers)  # what survived is in order
        assert len(numbers) + int(notices[0].split()[1]) == FLOOD_LINES
        assert server.statistics().slow_consumers == 1  # one episode of falling behind
        assert "slow" in server.who()
    finally:
        await flooder.close()
        slow.close()


async def test_close_is_graceful(start_server: Factory) -> None:
    """close(): everyone gets the notice, accepted messages are delivered, then EOF."""
    server = await start_server()
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    bob = BroadcastClient("127.0.0.1", server.port, name="bob")
    await alice.connect()
    await bob.connect()
    peer = await TextPeer.connect(server.port)
    await peer.line()
    for n in range(100):
        await alice.send(f"m{n}")
    await wait_until(lambda: server.statistics().messages_in == 100)
    server.close()
    texts = []
    async for message in bob:  # ends quietly at the server's closing notice
        if message.kind == MESSAGE:
            texts.append(message.text)
        last = message
    assert texts == [f"m{n}" for n in range(100)]
    assert (last.kind, last.text) == (CLOSING, "server shutting down")
    rest = (await peer.eof()).decode().splitlines()
    assert rest[-1] == "! server shutting down"
    async with asyncio.timeout(timeout(10)):
        await server.wait_closed()
    assert server.statistics().clients == 0
    await alice.close()
    await bob.close()
    await peer.close()


async def test_serve_forever_cancel_closes(start_server: Factory) -> None:
    """Cancelling serve_forever() closes the server and its connections."""
    server = await start_server()
    peer = await TextPeer.connect(server.port)
    await peer.line()
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving
    assert (await peer.eof()).endswith(b"! server shutting down\n")
    await peer.close()


async def test_events_stream(server: BroadcastServer, connect: Factory) -> None:
    """events() shows joins, messages and leaves to an embedding program (a bot)."""
    events = server.events()
    alice = await connect("alice")
    await alice.send("hello bot")
    seen: list[tuple[str, str | None, str]] = []
    async with asyncio.timeout(timeout(5)):
        async for event in events:
            seen.append((event.kind, event.sender, event.text))
            if event.kind == MESSAGE:
                break
    await events.aclose()
    assert seen == [(JOIN, "alice", ""), (MESSAGE, "alice", "hello bot")]


async def test_server_send_private_and_room_broadcast(
    server: BroadcastServer, connect: Factory
) -> None:
    """A bot can message one client, or announce to one room."""
    alice = await connect("alice", room="red")
    bob = await connect("bob", room="blue")
    await server.send("alice", "just you")
    got = await receive_kind(alice, PRIVATE)
    assert (got.sender, got.text) == ("server", "just you")
    assert await server.broadcast("blue news", room="blue") == 1
    assert (await receive_kind(bob, ANNOUNCEMENT)).text == "blue news"
    with pytest.raises(KeyError):
        await server.send("nobody", "x")


async def test_server_send_is_an_event(server: BroadcastServer, connect: Factory) -> None:
    """A private message from the server is seen by events() readers, as clients' are."""
    await connect("alice")
    events = server.events()
    await server.send("ALICE", "psst")
    async with asyncio.timeout(timeout(5)):
        event = await anext(events)
    await events.aclose()
    assert (event.kind, event.sender, event.to, event.text) == (PRIVATE, "server", "ALICE", "psst")
    assert server.statistics().messages_out == 1


async def test_heartbeat_drops_silent_json_client(start_server: Factory) -> None:
    """A JSON client that stops answering pings is dropped with a reason."""
    server = await start_server(heartbeat_interval=0.2, heartbeat_timeout=0.2)
    raw = await TextPeer.connect(server.port)
    await raw.line()
    raw.send('{"type":"hello","name":"mute"}\n')
    lines = (await raw.eof()).decode().splitlines()
    assert '{"type":"ping"}' in lines
    reason = "heartbeat timeout"
    assert json.loads(lines[-1]) == {"type": "error", "text": reason, "reason": reason}
    assert server.statistics().timeouts == 1
    await raw.close()


async def test_heartbeat_is_not_fooled_by_a_frame_that_never_ends(start_server: Factory) -> None:
    """A JSON client trickling bytes of a frame it never finishes (a slowloris) is pinged
    and dropped like a silent one: only whole frames count as answers."""
    server = await start_server(heartbeat_interval=0.2, heartbeat_timeout=0.2)
    raw = await TextPeer.connect(server.port)
    await raw.line()
    raw.send('{"type":"hello","name":"slow"}\n{"type":')

    async def trickle() -> None:
        while True:
            raw.send(b" ")
            await asyncio.sleep(0.05)  # pacing the attacker, not waiting for the server

    task = asyncio.create_task(trickle())
    try:
        lines = (await raw.eof()).decode().splitlines()
    finally:
        task.cancel()
        await raw.close()
    assert json.loads(lines[-1])["text"] == "heartbeat timeout"


async def test_idle_timeout_for_text_clients(start_server: Factory) -> None:
    """A silent text client is dropped after idle_timeout, told why."""
    server = await start_server(idle_timeout=0.3)
    peer = await TextPeer.connect(server.port)
    await peer.line()
    assert (await peer.eof()).decode().splitlines()[-1] == "! idle timeout"
    await peer.close()


def test_constructor_validation() -> None:
    """Bad arguments are refused at construction with the allowed range."""
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535"):
        BroadcastServer("127.0.0.1", 70000)
    with pytest.raises(ValueError, match=r"slow_consumer"):
        BroadcastServer(slow_consumer="panic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_clients"):
        BroadcastServer(max_clients=0)
    with pytest.raises(ValueError, match="one line"):
        BroadcastServer(welcome="two\nlines")
    with pytest.raises(ValueError, match="default_room"):
        BroadcastServer(default_room="bad room")
    with pytest.raises(ValueError, match="rate"):
        BroadcastServer(rate=0)


async def test_big_rooms_skip_join_and_leave_notices(start_server: Factory) -> None:
    """Past notice_limit members a room gets no join/leave notices; who() lists everyone."""
    server = await start_server(notice_limit=2)
    alice = BroadcastClient("127.0.0.1", server.port, name="alice")
    bob = BroadcastClient("127.0.0.1", server.port, name="bob")
    carol = BroadcastClient("127.0.0.1", server.port, name="carol")
    try:
        await alice.connect()
        await receive_kind(alice, JOIN)  # her own
        await bob.connect()
        assert (await receive_kind(alice, JOIN)).sender == "bob"  # 2 members: notice sent
        await carol.connect()  # 3 members: no notice
        await carol.close()  # and no leave notice either
        await bob.send("after carol")
        got = await receive_kind(alice, JOIN, LEAVE, MESSAGE)
        assert (got.kind, got.text) == (MESSAGE, "after carol")
        assert await alice.who() == ["alice", "bob"]
    finally:
        await alice.close()
        await bob.close()


async def test_a_join_arrives_before_the_joiners_first_message(
    text_peer: Factory,
) -> None:
    """A join and a message in one read: the room sees the join first."""
    watcher = await text_peer(nick="watcher")
    peer = await text_peer(nick="tari")
    peer.send("/join den\nhalo den\n")
    await peer.until(lambda line: line == "* you are now in den")
    watcher.send("/join den\n")
    await watcher.until(lambda line: line == "* you are now in den")
    peer.send("/join lobby\n/join den\nagain\n")
    seen = [await watcher.line(), await watcher.line(), await watcher.line()]
    assert seen == ["* tari left den (joined lobby)", "* tari joined den", "tari: again"]


async def test_who_lists_a_silent_guest_at_once(server: BroadcastServer, connect: Factory) -> None:
    """A text-mode guest that reads the room is in who() from its first moment, not after."""
    alice = await connect("alice")
    peer = await TextPeer.connect(server.port)
    await peer.line()
    await wait_until(lambda: len(server.who()) == 2)  # the server has accepted it
    names = await alice.who()
    assert names[0] == "alice"
    assert names[1].startswith("guest")
    await peer.close()


def test_settings_read_back_and_are_fixed() -> None:
    """Every constructor setting reads back on the server; assigning one raises."""
    server = BroadcastServer("127.0.0.1", 0, rate=2.0, join_grace=0.25, notice_limit=None)
    assert (server.rate, server.burst, server.join_grace) == (2.0, 4.0, 0.25)
    assert server.notice_limit is None
    assert server.config.burst is None  # as given; server.burst is the bucket in use
    with pytest.raises(AttributeError, match="join_grace is fixed"):
        server.join_grace = 5.0
    assert server.join_grace == 0.25
