"""Reliable multicast over real sockets on 127.0.0.1 (TTL 0): repair, gaps, plain peers.

Loss is made at the sender: its transport's ``sendto`` drops chosen datagrams (the repair
window still keeps them, as when the network loses them). Loss in network namespaces with
nftables is in ``tests/test_multicast_netns_loss.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chatcast.message import GAP
from chatcast.multicast import MulticastChannel, ReliableOptions
from tests.helpers import timeout, wait_until

FAST = ReliableOptions(linger=0.3)


def free_port() -> int:
    """A UDP port nobody on this host has bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def where() -> dict[str, Any]:
    """A fresh group, data port and repair port on 127.0.0.1."""
    return {
        "group": f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}",
        "port": free_port(),
        "repair_port": free_port(),
    }


@pytest.fixture
async def channels(where: dict[str, Any]) -> AsyncIterator[list[MulticastChannel]]:
    """Channels a test opens; closed and waited for at teardown."""
    opened: list[MulticastChannel] = []
    yield opened
    for channel in opened:
        channel.close()
    for channel in opened:
        async with asyncio.timeout(timeout()):
            await channel.wait_closed()


async def open_channel(
    where: dict[str, Any], opened: list[MulticastChannel], **options: Any
) -> MulticastChannel:
    """An open channel on ``where``, interface 127.0.0.1, TTL 0."""
    options.setdefault("reliable", True)
    options.setdefault("reliable_options", FAST)
    if not options["reliable"]:
        options.pop("repair_port", None)
        options.pop("reliable_options")
    else:
        options.setdefault("repair_port", where["repair_port"])
    channel = MulticastChannel(
        where["group"], where["port"], interface="127.0.0.1", ttl=0, **options
    )
    opened.append(channel)
    async with asyncio.timeout(timeout()):
        await channel.open()
    return channel


def drop_sends(channel: MulticastChannel, seqs: set[int]) -> None:
    """Make ``channel``'s data transport drop the datagrams numbered ``seqs``."""
    transport = channel._send_transport
    assert transport is not None
    original = transport.sendto
    count = iter(range(1, 1 << 30))

    def sendto(data: bytes, addr: Any = None) -> None:
        if next(count) not in seqs:
            original(data)

    transport.sendto = sendto  # type: ignore[method-assign,assignment]


async def texts(channel: MulticastChannel, count: int, seconds: float = 5.0) -> list[str]:
    """The next ``count`` messages' texts (gap events as "<gap n>")."""
    got = []
    async with asyncio.timeout(timeout(seconds)):
        for _ in range(count):
            message = await channel.receive()
            got.append(f"<gap {message.missed}>" if message.kind == GAP else message.text)
    return got


@pytest.fixture
def lab_receiver(where: dict[str, Any]) -> Iterator[socket.socket]:
    """A socket like the lab's receiver1.py (bound to the port on every address), joined on
    127.0.0.1; non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", where["port"]))
    mreq = struct.pack("4s4s", socket.inet_aton(where["group"]), socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_lost_datagrams_are_repaired_in_order(
    where: dict[str, Any], channels: list[MulticastChannel]
) -> None:
    """Datagrams lost on the way (first, middle, last) arrive by repair, in order, once."""
    receiver = await open_channel(where, channels)
    sender = await open_channel(where, channels, name="alice")
    drop_sends(sender, {1, 5, 6, 20})
    sent = [f"m{i}" for i in range(20)]
    for text in sent:
        await sender.send(text)
    assert await texts(receiver, 20) == sent
    stats = receiver.statistics()
    assert stats.repairs_received == 4
    assert stats.nacks_sent >= 1
    assert (stats.gaps, stats.held, stats.duplicates) == (0, 0, 0)
    assert sender.statistics().repairs_sent == 4
    assert receiver.receive_nowait() is None


async def test_signed_reliable(where: dict[str, Any], channels: list[MulticastChannel]) -> None:
    """With a key, repairs and control traffic are signed and work the same."""
    receiver = await open_channel(where, channels, key="kunci")
    outsider = await open_channel(where, channels, key="other")
    sender = await open_channel(where, channels, key="kunci", name="alice")
    drop_sends(sender, {2, 3})
    for text in ("a", "b", "c", "d"):
        await sender.send(text)
    assert await texts(receiver, 4) == ["a", "b", "c", "d"]
    await outsider.send("intruder")
    await wait_until(lambda: receiver.statistics().forged == 1)
    assert outsider.statistics().repairs_sent == 0


async def test_out_of_window_is_a_gap_event(
    where: dict[str, Any], channels: list[MulticastChannel]
) -> None:
    """What left the sender's window arrives as one gap event, and delivery goes on."""
    receiver = await open_channel(where, channels)
    options = ReliableOptions(window_messages=2, linger=0.3)
    sender = await open_channel(where, channels, reliable_options=options, name="alice")
    drop_sends(sender, {2, 3})
    for text in ("a", "b", "c", "d", "e"):
        await sender.send(text)
    assert await texts(receiver, 4) == ["a", "<gap 2>", "d", "e"]
    gap = receiver.statistics()
    assert (gap.gaps, gap.missed) == (1, 2)


async def test_plain_peers_see_each_message_once_and_no_control(
    where: dict[str, Any], channels: list[MulticastChannel], lab_receiver: socket.socket
) -> None:
    """A lab-style receiver and an unreliable channel see each message once, no NACKs,
    heartbeats or repairs; a plain channel's messages reach reliable ones as they are."""
    receiver = await open_channel(where, channels)
    plain = await open_channel(where, channels, reliable=False)
    sender = await open_channel(where, channels, name="alice")
    drop_sends(sender, {2})
    for text in ("a", "b", "c"):
        await sender.send(text)
    assert await texts(receiver, 3) == ["a", "b", "c"]
    assert receiver.statistics().repairs_received == 1
    # Let the sender's heartbeats go out too (50 ms, then 100 ms later).
    await asyncio.sleep(0.2)
    lab_seen = []
    while True:
        try:
            lab_seen.append(json.loads(lab_receiver.recv(65536))["text"])
        except BlockingIOError:
            break
    assert lab_seen == ["a", "c"]  # "b" was lost for everyone; only its repair brought it
    got = [plain.receive_nowait(), plain.receive_nowait()]
    assert [m.text if m else None for m in got] == ["a", "c"]
    assert plain.receive_nowait() is None
    await plain.send("from a plain channel")
    assert await texts(receiver, 1) == ["from a plain channel"]


async def test_closing_sender_answers_nacks_while_lingering(
    where: dict[str, Any], channels: list[MulticastChannel]
) -> None:
    """A sender that closes right after its last (lost) message still repairs it."""
    receiver = await open_channel(where, channels)
    sender = MulticastChannel(
        where["group"],
        where["port"],
        interface="127.0.0.1",
        ttl=0,
        reliable=True,
        repair_port=where["repair_port"],
        reliable_options=FAST,
    )
    async with sender:
        drop_sends(sender, {2})
        await sender.send("first")
        await sender.send("last")
    assert await texts(receiver, 2) == ["first", "last"]


def test_reliable_arguments_are_checked(where: dict[str, Any]) -> None:
    """reliable with plain, a repair port equal to the port: ValueError at construction."""
    with pytest.raises(ValueError, match="plain"):
        MulticastChannel(where["group"], where["port"], reliable=True, plain=True)
    with pytest.raises(ValueError, match="repair_port"):
        MulticastChannel(where["group"], 5004, reliable=True, repair_port=5004)
    with pytest.raises(TypeError, match="ReliableOptions"):
        MulticastChannel(where["group"], 5004, reliable=True, reliable_options={})  # type: ignore[arg-type]


async def test_release_after_repair_is_not_lost_to_a_small_queue(
    where: dict[str, Any], channels: list[MulticastChannel]
) -> None:
    """A repair releases everything held behind it at once; the queue makes room for it
    (max_queue + max_held), so a small max_queue loses none of it."""
    receiver = await open_channel(where, channels, max_queue=2)
    sender = await open_channel(where, channels, name="alice")
    drop_sends(sender, {1})
    sent = [f"m{i}" for i in range(10)]
    for text in sent:
        await sender.send(text)
    assert await texts(receiver, 10) == sent
    assert receiver.statistics().overflowed == 0
