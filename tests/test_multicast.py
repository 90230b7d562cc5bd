"""Tests for chatcast.multicast.MulticastChannel over real sockets on the loopback interface.

Every channel and raw socket here sends with ``IP_MULTICAST_IF`` 127.0.0.1 (or lo) and TTL
0, so nothing leaves the host. Each test gets its own group in 239.255.0.0/16 and a free
port, so tests (and other programs) do not cross-talk.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from chatcast.exceptions import ChannelClosed, MessageTooLong
from chatcast.message import Message, render_text
from chatcast.multicast import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    INSTANCE_FIELD,
    MulticastChannel,
    MulticastStatistics,
)
from tests.helpers import timeout

# -- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A UDP port nobody on this host has bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Endpoint:
    """A group and port for one test."""

    group: str
    port: int


@pytest.fixture
def endpoint() -> Endpoint:
    """A fresh group in 239.255.0.0/16 (local scope, RFC 2365) and a free port."""
    return Endpoint(f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}", free_port())


class OpenChannel(Protocol):
    """``await open_channel(**options)``: an open channel on the test's endpoint."""

    async def __call__(self, **options: Any) -> MulticastChannel: ...


@pytest.fixture
async def open_channel(endpoint: Endpoint) -> AsyncIterator[OpenChannel]:
    """Factory of open channels on 127.0.0.1, TTL 0; all closed (and waited for) at teardown."""
    opened: list[MulticastChannel] = []

    async def make(**options: Any) -> MulticastChannel:
        group = options.pop("group", endpoint.group)
        port = options.pop("port", endpoint.port)
        options.setdefault("interface", "127.0.0.1")
        options.setdefault("ttl", 0)
        channel = MulticastChannel(group, port, **options)
        opened.append(channel)
        async with asyncio.timeout(timeout()):
            await channel.open()
        return channel

    yield make
    for channel in opened:
        channel.close()
        async with asyncio.timeout(timeout()):
            await channel.wait_closed()


@dataclass
class LabPeer:
    """Stdlib socket code as in the lab's scripts, but pinned to interface 127.0.0.1."""

    group: str
    port: int
    sockets: list[socket.socket] = field(default_factory=list)

    def sender(self) -> socket.socket:
        """A socket like the lab's sender.py, plus IP_MULTICAST_IF 127.0.0.1 and TTL 0."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sockets.append(sock)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        return sock

    def send(self, data: bytes) -> tuple[str, int]:
        """Send ``data`` from a new lab-style socket; return its source address."""
        sock = self.sender()
        sock.sendto(data, (self.group, self.port))
        host, port = sock.getsockname()
        return "127.0.0.1" if host == "0.0.0.0" else host, port

    def receiver(self) -> socket.socket:
        """A socket like the lab's receiver1.py, but joined on 127.0.0.1; non-blocking."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", self.port))
        mreq = struct.pack("4s4s", socket.inet_aton(self.group), socket.inet_aton("127.0.0.1"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
        return sock


@pytest.fixture
def lab(endpoint: Endpoint) -> Iterator[LabPeer]:
    """Lab-style stdlib sockets on the test's endpoint; closed at teardown."""
    peer = LabPeer(endpoint.group, endpoint.port)
    yield peer
    for sock in peer.sockets:
        sock.close()


async def recv_raw(sock: socket.socket, seconds: float = 5.0) -> bytes:
    """The next datagram on a non-blocking stdlib socket."""
    async with asyncio.timeout(timeout(seconds)):
        data, _ = await asyncio.get_running_loop().sock_recvfrom(sock, 65536)
    return data


async def receive(channel: MulticastChannel, seconds: float = 5.0) -> Message:
    """The channel's next message, within ``seconds`` (scaled)."""
    async with asyncio.timeout(timeout(seconds)):
        return await channel.receive()


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, letting the event loop run in between.

    For conditions nothing signals (a counter, datagrams the kernel has yet to hand over):
    a bounded poll of the condition, never a guess at how long something takes.
    """
    async with asyncio.timeout(timeout(seconds)):
        while not predicate():  # noqa: ASYNC110 - no event exists for these conditions
            await asyncio.sleep(0.001)


def waiting(channel: MulticastChannel) -> int:
    """How many receive() calls are parked on the channel (white box)."""
    return len(channel._receiver.waiters)


def accounted(stats: MulticastStatistics) -> int:
    """Every datagram's fate, summed: equals ``received`` while the channel is open."""
    return (
        stats.own
        + stats.empty
        + stats.oversized
        + stats.invalid
        + stats.overflowed
        + stats.delivered
        + stats.queued
    )


# -- the lab's scenario ----------------------------------------------------------------------


async def test_lab_scenario_one_sender_two_receivers(open_channel: OpenChannel) -> None:
    """On the lab's group, both receivers get every message, in order, intact."""
    port = free_port()
    sender = await open_channel(group="224.1.1.1", port=port, name="sender")
    receivers = [await open_channel(group="224.1.1.1", port=port) for _ in range(2)]
    texts = [f"pesan {i}: halo ünïcödé ✓" for i in range(50)] + ["two\nlines", " spaced "]
    for text in texts:
        await sender.send(text)
    for receiver in receivers:
        got = [await receive(receiver) for _ in texts]
        assert [message.text for message in got] == texts
        assert {message.sender for message in got} == {"sender"}
        assert [message.seq for message in got] == list(range(1, len(texts) + 1))
        assert receiver.statistics().received == len(texts)
    assert sender.statistics().sent == len(texts)


async def test_two_channels_and_lab_receiver_share_port(
    open_channel: OpenChannel, lab: LabPeer
) -> None:
    """Two channels and a lab-style receiver on one group:port each get every datagram."""
    first = await open_channel()
    lab_socket = lab.receiver()
    second = await open_channel()
    lab.send(b"one")
    lab.send(b"two")
    for channel in (first, second):
        assert [(await receive(channel)).text for _ in range(2)] == ["one", "two"]
    assert [await recv_raw(lab_socket) for _ in range(2)] == [b"one", b"two"]


async def test_burst_arrives_whole_and_in_order(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A burst far larger than one read batch is delivered complete and in order."""
    channel = await open_channel()
    sender = lab.sender()
    count = 2000  # ~1 KiB of kernel buffer each: well inside the channel's receive buffer
    for i in range(count):
        sender.sendto(str(i).encode(), (lab.group, lab.port))
    got = [int((await receive(channel)).text) for _ in range(count)]
    assert got == list(range(count))
    assert channel.statistics().received == count


async def test_read_error_while_draining_counted(open_channel: OpenChannel) -> None:
    """An OS error while reading ahead is counted; the datagram in hand is still delivered."""
    channel = await open_channel()
    broken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broken.close()
    channel._receiver.sock = broken  # reads from it fail with EBADF
    channel._receiver.datagram_received(b"in hand", ("192.0.2.7", 5004))
    assert (await receive(channel)).text == "in hand"
    assert channel.statistics().errors == 1


# -- interoperation with plain UDP code ------------------------------------------------------


async def test_receives_from_plain_socket(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A datagram from plain stdlib code is a plain-text message from "host:port"."""
    channel = await open_channel()
    source = lab.send("halo dari lab ✓".encode())
    message = await receive(channel)
    assert message == Message(text="halo dari lab ✓", sender=f"{source[0]}:{source[1]}")
    assert message.timestamp is None


async def test_plain_channel_to_lab_receiver(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A plain channel sends the bare UTF-8 text that the lab's receivers print."""
    lab_socket = lab.receiver()
    channel = await open_channel(plain=True)
    await channel.send("halo semua ✓")
    assert await recv_raw(lab_socket) == "halo semua ✓".encode()


async def test_json_channel_to_lab_receiver(open_channel: OpenChannel, lab: LabPeer) -> None:
    """The JSON form is one UTF-8 JSON object per datagram, with the documented fields."""
    lab_socket = lab.receiver()
    channel = await open_channel(name="alice")
    await channel.send("hi\nthere")
    data = await recv_raw(lab_socket)
    assert not data.endswith(b"\n")
    obj = json.loads(data.decode())
    assert set(obj) == {"type", "from", "text", "ts", "seq", INSTANCE_FIELD}
    assert obj["type"] == "message"
    assert obj["from"] == "alice"
    assert obj["text"] == "hi\nthere"
    assert obj["seq"] == 1
    assert obj[INSTANCE_FIELD] == channel.instance
    assert isinstance(obj["ts"], float)


async def test_unnamed_channel_is_known_by_address(open_channel: OpenChannel) -> None:
    """Without a name, the JSON form leaves "from" out and receivers show the source address."""
    sender = await open_channel()
    receiver = await open_channel()
    await sender.send("who am I")
    message = await receive(receiver)
    assert sender.local_address is not None
    host, port = sender.local_address
    assert message.sender == f"{host}:{port}"


async def test_terminal_line_endings_stripped(open_channel: OpenChannel, lab: LabPeer) -> None:
    """One trailing LF or CRLF of a plain datagram is not part of the text (nc, socat)."""
    channel = await open_channel()
    for data in (b"lf\n", b"crlf\r\n", b"two\n\n", b"\r"):
        lab.send(data)
    assert [(await receive(channel)).text for _ in range(4)] == ["lf", "crlf", "two\n", "\r"]


# -- echo suppression ------------------------------------------------------------------------


@pytest.mark.parametrize("plain", [False, True])
async def test_own_datagrams_skipped(open_channel: OpenChannel, lab: LabPeer, plain: bool) -> None:
    """By default a channel does not hand back its own looped-back datagrams."""
    channel = await open_channel(plain=plain)
    witness = await open_channel()
    await channel.send("mine")
    assert (await receive(witness)).text == "mine"  # it did go out and loop back
    lab.send(b"theirs")
    assert (await receive(channel)).text == "theirs"  # "mine" would have come first
    stats = channel.statistics()
    assert (stats.own, stats.received, stats.delivered) == (1, 2, 1)


@pytest.mark.parametrize("plain", [False, True])
async def test_echo_on(open_channel: OpenChannel, plain: bool) -> None:
    """With echo=True a channel receives its own messages too."""
    channel = await open_channel(echo=True, plain=plain, name="me")
    await channel.send("mine")
    message = await receive(channel)
    assert message.text == "mine"
    assert channel.local_address is not None
    host, port = channel.local_address
    assert message.sender == ("me" if not plain else f"{host}:{port}")
    assert channel.statistics().own == 0


async def test_forged_instance_is_treated_as_own(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A JSON datagram carrying this channel's instance id is skipped as its own (documented)."""
    channel = await open_channel()
    forged = {"type": "message", "text": "forged", INSTANCE_FIELD: channel.instance}
    lab.send(json.dumps(forged).encode())
    lab.send(b"next")
    assert (await receive(channel)).text == "next"
    assert channel.statistics().own == 1


# -- bad input -------------------------------------------------------------------------------


async def test_bad_datagrams_counted_and_skipped(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Oversized, empty, non-UTF-8 and invalid JSON datagrams are skipped and counted."""
    channel = await open_channel(max_datagram_bytes=100)
    bad = [
        b"x" * 101,  # oversized
        b"",  # empty
        b"\n",  # nothing but a line ending
        b"\xff\xfe halo",  # not UTF-8
        b'{"type": "message", "text": "\xc3\x28"}',  # not UTF-8, inside JSON
        b'{"type": "bogus", "text": "x"}',  # unknown type
        b'{"type": "message", "text": 5}',  # wrong field type
        b'{"type": "message", "text": "x", "ts": "noon"}',  # wrong field type
        b'{"type": "closing", "text": "connection closed by server"}',  # no server here
        b'{"type": "announcement", "text": "fake"}',  # ... to speak for
    ]
    for data in bad:
        lab.send(data)
    lab.send(b"y" * 100)  # exactly at the limit: fine
    message = await receive(channel)
    assert message.text == "y" * 100
    stats = channel.statistics()
    assert stats.received == len(bad) + 1
    assert (stats.oversized, stats.empty, stats.invalid) == (1, 2, 7)
    assert stats.dropped == 10
    assert accounted(stats) == stats.received


async def test_timestamp_no_float_can_hold(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A "ts" integer beyond a float's range is an invalid datagram, not an OverflowError."""
    channel = await open_channel()
    lab.send(b'{"type": "message", "text": "x", "ts": 1' + b"0" * 400 + b"}")
    lab.send(b"next")
    assert (await receive(channel)).text == "next"
    stats = channel.statistics()
    assert (stats.received, stats.invalid) == (2, 1)


async def test_forged_looking_datagrams(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Datagrams that only look like JSON are plain text; a JSON "from" is taken as given."""
    channel = await open_channel()
    deep = '{"a":' + "[" * 3000 + "]" * 3000 + "}"  # nested past the JSON parser's limit
    datagrams = [
        b"{not json",
        b'{"no": "type"}',
        b"[1, 2, 3]",
        b'"just a string"',
        deep.encode(),
        b'{"type": "message", "from": "admin\\u001b[31m", "text": "I am root"}',
        b'{"type": "message", "text": "no from"}',
    ]
    source = ""
    for data in datagrams:
        host, port = lab.send(data)
        source = f"{host}:{port}"
    got = [await receive(channel) for _ in datagrams]
    assert [m.text for m in got[:5]] == [d.decode() for d in datagrams[:5]]
    assert all(m.sender and m.sender.startswith("127.0.0.1:") for m in got[:5])
    assert got[5].sender == "admin\x1b[31m"  # no authentication on multicast (docs)
    assert "\x1b" not in render_text(got[5])  # ... but it cannot drive a terminal
    assert got[6] == Message(text="no from", sender=source)
    assert channel.statistics().dropped == 0


async def test_send_too_long(open_channel: OpenChannel) -> None:
    """send() over the datagram limit raises MessageTooLong and sends nothing."""
    sender = await open_channel(plain=True, max_datagram_bytes=64)
    receiver = await open_channel()
    with pytest.raises(MessageTooLong) as caught:
        await sender.send("é" * 33)  # 66 bytes
    assert (caught.value.size, caught.value.limit) == (66, 64)
    await sender.send("x" * 64)
    assert (await receive(receiver)).text == "x" * 64  # the long one never went out
    assert sender.statistics().sent == 1


async def test_send_too_long_json(open_channel: OpenChannel) -> None:
    """The limit counts the whole JSON datagram, and a refused send uses no sequence number."""
    sender = await open_channel()
    receiver = await open_channel()
    with pytest.raises(MessageTooLong) as caught:
        await sender.send("x" * DEFAULT_MAX_DATAGRAM_BYTES)
    assert caught.value.size > DEFAULT_MAX_DATAGRAM_BYTES
    await sender.send("short")
    message = await receive(receiver)
    assert (message.text, message.seq) == ("short", 1)


async def test_send_argument_errors(open_channel: OpenChannel) -> None:
    """Empty plain text, non-str text and unencodable text are refused."""
    plain = await open_channel(plain=True)
    with pytest.raises(ValueError, match="empty"):
        await plain.send("")
    with pytest.raises(TypeError):
        await plain.send(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        await plain.send("\ud800")
    json_channel = await open_channel()
    await json_channel.send("")  # an empty text is a valid JSON-form message
    assert plain.statistics().sent == 0


async def test_send_os_error_raised(open_channel: OpenChannel) -> None:
    """An OSError from the OS is raised by send(), counted, and the channel stays usable."""
    channel = await open_channel()
    assert channel._send_transport is not None
    channel._send_transport.get_extra_info("socket").shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        await channel.send("lost")
    stats = channel.statistics()
    assert (stats.sent, stats.errors) == (0, 1)
    assert not channel.closed


# -- receive(): closing, cancellation, queue -------------------------------------------------


async def test_close_wakes_receivers(open_channel: OpenChannel) -> None:
    """close() wakes every waiting receiver with ChannelClosed."""
    channel = await open_channel()
    receivers = [asyncio.create_task(channel.receive()) for _ in range(3)]
    await eventually(lambda: waiting(channel) == 3)
    channel.close()
    for task in receivers:
        with pytest.raises(ChannelClosed):
            async with asyncio.timeout(timeout()):
                await task


async def test_async_for_ends_on_close(open_channel: OpenChannel, lab: LabPeer) -> None:
    """``async for`` yields messages in order and ends cleanly when the channel is closed."""
    channel = await open_channel()
    got: list[str] = []

    async def consume() -> None:
        async for message in channel:
            got.append(message.text)
            if len(got) == 3:
                channel.close()

    for text in (b"a", b"b", b"c", b"d"):
        lab.send(text)
    async with asyncio.timeout(timeout()):
        await consume()
    assert got == ["a", "b", "c"]


async def test_cancelled_receive_loses_nothing(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A receive() cancelled while waiting takes no message; the next receive gets it."""
    channel = await open_channel()
    task = asyncio.create_task(channel.receive())
    await eventually(lambda: waiting(channel) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waiting(channel) == 0
    lab.send(b"kept")
    assert (await receive(channel)).text == "kept"


async def test_cancel_after_wakeup_passes_message_on(open_channel: OpenChannel) -> None:
    """A receiver cancelled just after being woken leaves the message to the next receiver."""
    channel = await open_channel()
    first = asyncio.create_task(channel.receive())
    second = asyncio.create_task(channel.receive())
    await eventually(lambda: waiting(channel) == 2)
    # A datagram arrives (delivered synchronously, as the event loop does) and wakes `first`;
    # `first` is cancelled before it runs.
    channel._receiver.datagram_received(b"only one", ("192.0.2.7", 5004))
    first.cancel()
    async with asyncio.timeout(timeout()):
        message = await second
    assert message.text == "only one"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert channel.statistics().delivered == 1


async def test_concurrent_receivers_share(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Several tasks may wait at once; each message goes to exactly one of them."""
    channel = await open_channel()
    tasks = [asyncio.create_task(channel.receive()) for _ in range(3)]
    await eventually(lambda: waiting(channel) == 3)
    for text in (b"1", b"2", b"3"):
        lab.send(text)
    async with asyncio.timeout(timeout()):
        got = await asyncio.gather(*tasks)
    assert sorted(message.text for message in got) == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("drop", "kept"), [("oldest", ["3", "4", "5"]), ("newest", ["1", "2", "3"])]
)
async def test_queue_full_drop_policy(
    open_channel: OpenChannel, lab: LabPeer, drop: str, kept: list[str]
) -> None:
    """A full queue drops the oldest (default) or the newest message, and counts it."""
    channel = await open_channel(max_queue=3, drop=drop)
    for text in ("1", "2", "3", "4", "5"):
        lab.send(text.encode())
    await eventually(lambda: channel.statistics().received == 5)
    stats = channel.statistics()
    assert (stats.queued, stats.overflowed) == (3, 2)
    got = [channel.receive_nowait() for _ in range(3)]
    assert [message.text for message in got if message is not None] == kept
    assert channel.receive_nowait() is None


async def test_receive_nowait(open_channel: OpenChannel, lab: LabPeer) -> None:
    """receive_nowait() returns a queued message or None, and never waits."""
    channel = await open_channel()
    assert channel.receive_nowait() is None
    lab.send(b"queued")
    await eventually(lambda: channel.statistics().queued == 1)
    message = channel.receive_nowait()
    assert message is not None
    assert message.text == "queued"
    channel.close()
    with pytest.raises(ChannelClosed):
        channel.receive_nowait()


# -- statistics ------------------------------------------------------------------------------


async def test_statistics(open_channel: OpenChannel, lab: LabPeer) -> None:
    """statistics() is a frozen snapshot whose counts add up to what was received."""
    sender = await open_channel()
    channel = await open_channel(max_queue=2)
    before = channel.statistics()
    assert before.receive_buffer_bytes > 0
    for text in ("a", "b", "c"):
        await sender.send(text)
    lab.send(b"\xff")
    await eventually(lambda: channel.statistics().received == 4)
    await receive(channel)
    stats = channel.statistics()
    assert stats.received == accounted(stats) == 4
    assert (stats.delivered, stats.queued, stats.overflowed, stats.invalid) == (1, 1, 1, 1)
    assert sender.statistics().sent == 3
    assert before.received == 0  # a snapshot, not a live view
    with pytest.raises(AttributeError):
        stats.sent = 5  # type: ignore[misc]


async def test_receive_error_counted(open_channel: OpenChannel) -> None:
    """Errors the OS reports on the receive socket are counted, not raised."""
    channel = await open_channel()
    channel._receiver.error_received(ConnectionRefusedError())
    assert channel.statistics().errors == 1


async def test_send_waits_while_paused(open_channel: OpenChannel) -> None:
    """send() waits while the transport's buffer is over its high-water mark."""
    channel = await open_channel()
    receiver = await open_channel()
    channel._sender.pause_writing()
    task = asyncio.create_task(channel.send("held"))
    assert (await receive(receiver)).text == "held"  # handed to the OS already...
    assert not task.done()  # ... but send() waits for the buffer to drain
    channel._sender.resume_writing()
    async with asyncio.timeout(timeout()):
        await task


# -- validation and life cycle ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("10.1.2.3", 5004), {}, "not a multicast group"),
        (("not-an-ip", 5004), {}, "multicast address"),
        (("224.1.1.1", 0), {}, r"port must be in 1\.\.65535, got 0"),
        (("224.1.1.1", 65536), {}, r"port must be in 1\.\.65535"),
        (("224.1.1.1", 5004), {"ttl": 256}, r"ttl must be in 0\.\.255, got 256"),
        (("224.1.1.1", 5004), {"ttl": -1}, r"ttl must be in 0\.\.255"),
        (("224.1.1.1", 5004), {"interface": "nosuchif0"}, "unknown interface 'nosuchif0'"),
        (("224.1.1.1", 5004), {"interface": "192.0.2.254"}, "unknown interface"),
        (("224.1.1.1", 5004), {"name": ""}, "name must be a non-empty str"),
        (("224.1.1.1", 5004), {"max_queue": 0}, r"max_queue must be >= 1"),
        (("224.1.1.1", 5004), {"max_datagram_bytes": 0}, r"1\.\.65507"),
        (("224.1.1.1", 5004), {"max_datagram_bytes": 65508}, r"1\.\.65507, got 65508"),
        (("ff05::1", 5004), {"max_datagram_bytes": 65528}, r"1\.\.65527"),
        (("224.1.1.1", 5004), {"receive_buffer_bytes": 0}, "receive_buffer_bytes"),
        (("224.1.1.1", 5004), {"drop": "middle"}, "drop must be 'oldest' or 'newest'"),
        (("ff02::1", 5004), {}, "link-local group ff02::1 needs an interface"),
    ],
)
def test_validation(args: tuple[str, int], options: dict[str, Any], match: str) -> None:
    """Bad arguments are a ValueError at construction, naming the value and the range."""
    with pytest.raises(ValueError, match=match):
        MulticastChannel(*args, **options)


def test_validation_types() -> None:
    """Arguments of the wrong type are a TypeError at construction."""
    with pytest.raises(TypeError):
        MulticastChannel("224.1.1.1", "5004")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MulticastChannel("224.1.1.1", 5004, max_queue=1.5)  # type: ignore[arg-type]


def test_constructor_touches_no_network(endpoint: Endpoint) -> None:
    """A new channel exposes its settings and has opened no socket."""
    channel = MulticastChannel(endpoint.group, endpoint.port, interface="127.0.0.1", name="n")
    assert (channel.group, channel.port, channel.ttl, channel.name) == (
        endpoint.group,
        endpoint.port,
        2,
        "n",
    )
    assert channel.local_address is None
    assert channel.statistics() == MulticastStatistics()
    assert not channel.closed
    assert len(channel.instance) == 16
    assert "new" in repr(channel)


async def test_life_cycle(endpoint: Endpoint) -> None:
    """Use before open is a RuntimeError; after close, ChannelClosed; close is idempotent."""
    channel = MulticastChannel(endpoint.group, endpoint.port, interface="127.0.0.1", ttl=0)
    with pytest.raises(RuntimeError, match="open the channel first"):
        await channel.send("x")
    with pytest.raises(RuntimeError, match="open the channel first"):
        await channel.receive()
    with pytest.raises(RuntimeError, match="open the channel first"):
        channel.receive_nowait()
    async with channel as entered:
        assert entered is channel
        assert "open" in repr(channel)
        with pytest.raises(RuntimeError, match="opened already"):
            await channel.open()
    assert channel.closed
    channel.close()
    async with asyncio.timeout(timeout()):
        await channel.wait_closed()
    with pytest.raises(ChannelClosed):
        await channel.send("x")
    with pytest.raises(ChannelClosed):
        await channel.receive()
    with pytest.raises(ChannelClosed):
        await channel.open()


async def test_closed_before_open(endpoint: Endpoint) -> None:
    """A channel closed before it was opened cannot be opened, and wait_closed returns."""
    channel = MulticastChannel(endpoint.group, endpoint.port, interface="127.0.0.1")
    channel.close()
    await channel.wait_closed()
    with pytest.raises(ChannelClosed):
        await channel.open()


async def test_open_failure_leaves_nothing_open(endpoint: Endpoint) -> None:
    """If the OS refuses the join, open() raises OSError and the channel is closed."""
    channel = MulticastChannel(endpoint.group, endpoint.port, interface="127.0.0.1")
    channel._interface = type(channel._interface)(index=2**31 - 1, spec="bogus0")
    with pytest.raises(OSError, match="cannot join"):
        await channel.open()
    assert channel.closed


# -- IPv6 --------------------------------------------------------------------------------------


def _ipv6_loopback_problem() -> str | None:
    """Why IPv6 multicast on this host's lo cannot be tested, or None if it can."""
    if not socket.has_ipv6:
        return "this Python has no IPv6"
    try:
        with open("/sys/class/net/lo/flags", encoding="ascii") as file:
            flags = int(file.read(), 16)
    except OSError:
        return "no Linux interface named lo"
    if not flags & 0x1000:  # IFF_MULTICAST
        return "lo lacks the MULTICAST flag here (tested in a netns: test_multicast_netns.py)"
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex("lo"))
        probe.connect(("ff05::c4a7", 9))
    except OSError as exc:
        return f"no IPv6 multicast route via lo here ({exc.strerror})"
    finally:
        probe.close()
    return None


async def test_ipv6_on_loopback(open_channel: OpenChannel) -> None:
    """IPv6 group on lo: a message goes from one channel to another."""
    problem = _ipv6_loopback_problem()
    if problem is not None:
        pytest.skip(problem)
    port = free_port()
    sender = await open_channel(group="ff05::c4a7:2", port=port, interface="lo", name="six")
    receiver = await open_channel(group="ff05::c4a7:2", port=port, interface="lo")
    await sender.send("over IPv6")
    message = await receive(receiver)
    assert (message.text, message.sender) == ("over IPv6", "six")
