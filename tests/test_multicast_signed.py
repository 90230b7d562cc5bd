"""Keyed MulticastChannels over real sockets, and hostile-suite case 13 against them.

Every channel and raw socket here sends with ``IP_MULTICAST_IF`` 127.0.0.1 and TTL 0, so
nothing leaves the host. Each test gets its own group in 239.255.0.0/16 and a free port.
Hostile datagrams are sent from one raw socket, followed by a valid one: on loopback one
socket's datagrams arrive in order, so once the valid one is received the bad ones have been
counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chatcast._core.datagram import HEADER_BYTES, MARKER, OVERHEAD, Signer
from chatcast.exceptions import MessageTooLong
from chatcast.multicast import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    MulticastChannel,
    MulticastStatistics,
    SenderStatistics,
)
from tests.helpers import timeout
from tests.test_multicast import (
    Endpoint,
    LabPeer,
    OpenChannel,
    eventually,
    free_port,
    receive,
    recv_raw,
)

KEY = "kunci kelas 11 ✓"
OTHER_KEY = b"another key"
#: The counters of datagrams a keyed channel skips, each a reason of its own.
DROPS = ("unsigned", "truncated", "malformed", "forged", "stale", "replayed", "oversized")


@pytest.fixture
def endpoint() -> Endpoint:
    """A fresh group in 239.255.0.0/16 (local scope, RFC 2365) and a free port."""
    return Endpoint(f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}", free_port())


@pytest.fixture
async def open_channel(endpoint: Endpoint) -> AsyncIterator[OpenChannel]:
    """Factory of open channels on 127.0.0.1, TTL 0, keyed with KEY unless told otherwise."""
    opened: list[MulticastChannel] = []

    async def make(**options: Any) -> MulticastChannel:
        group = options.pop("group", endpoint.group)
        port = options.pop("port", endpoint.port)
        options.setdefault("interface", "127.0.0.1")
        options.setdefault("ttl", 0)
        options.setdefault("key", KEY)
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


@pytest.fixture
def lab(endpoint: Endpoint) -> Iterator[LabPeer]:
    """Lab-style stdlib sockets on the test's endpoint; closed at teardown."""
    peer = LabPeer(endpoint.group, endpoint.port)
    yield peer
    for sock in peer.sockets:
        sock.close()


class Forger:
    """Crafts datagrams as a key holder (or not) would, and sends them from one raw socket."""

    def __init__(self, lab: LabPeer, key: bytes | str = KEY, epoch: int = 1) -> None:
        self.lab = lab
        self.sock = lab.sender()
        self.key = key.encode() if isinstance(key, str) else key
        self.sender = f"{random.getrandbits(64):016x}"
        self.epoch = epoch
        self.seq = 0

    def datagram(
        self, text: str, *, seq: int | None = None, epoch: int | None = None, age: float = 0.0
    ) -> bytes:
        """A signed datagram; by default the next sequence number, stamped now."""
        if seq is None:
            seq = self.seq = self.seq + 1
        body = json.dumps({"type": "message", "from": "forger", "text": text}).encode()
        signer = Signer(self.key, self.sender, self.epoch if epoch is None else epoch)
        return signer.sign(seq, int((time.time() - age) * 1000), body)

    def send(self, data: bytes) -> None:
        """Send ``data`` to the group from this forger's one socket."""
        self.sock.sendto(data, (self.lab.group, self.lab.port))


def accounted(stats: MulticastStatistics) -> int:
    """Every datagram's fate, summed: equals ``received`` while the channel is open."""
    return (
        stats.own
        + stats.empty
        + stats.oversized
        + stats.invalid
        + stats.unsigned
        + stats.truncated
        + stats.malformed
        + stats.forged
        + stats.stale
        + stats.replayed
        + stats.overflowed
        + stats.delivered
        + stats.queued
    )


def drops(stats: MulticastStatistics) -> dict[str, int]:
    """The non-zero skip counters."""
    return {name: getattr(stats, name) for name in DROPS if getattr(stats, name)}


# -- keyed channels talk ---------------------------------------------------------------------


async def test_keyed_channels_talk(open_channel: OpenChannel) -> None:
    """Channels sharing a key exchange messages with name, sequence number and time."""
    alice = await open_channel(name="alice")
    bob = await open_channel(name="bob", key=KEY.encode())  # the same key, as bytes
    before = time.time()
    await alice.send("halo bob\n✓")
    await alice.send("")
    await bob.send("halo alice")
    first, second = await receive(bob), await receive(bob)
    assert (first.text, first.sender, first.seq) == ("halo bob\n✓", "alice", 1)
    assert (second.text, second.seq) == ("", 2)
    assert first.timestamp is not None
    assert before - 1 <= first.timestamp <= time.time() + 1
    reply = await receive(alice)
    assert (reply.text, reply.sender, reply.seq) == ("halo alice", "bob", 1)
    await eventually(lambda: bob.statistics().own == 1)
    assert bob.sender_statistics() == [
        SenderStatistics(
            sender_id=alice.instance, name="alice", epoch=alice._epoch, last_seq=2,
            received=2, lost=0,
        )
    ]  # fmt: skip
    stats = bob.statistics()
    assert (stats.received, stats.own, stats.delivered, stats.dropped, stats.lost) == (
        3, 1, 2, 0, 0,
    )  # fmt: skip
    assert "signed" in repr(bob)


async def test_lab_scenario_keyed(open_channel: OpenChannel) -> None:
    """The lab's scenario, keyed: both receivers get every message, in order, numbered."""
    port = free_port()
    sender = await open_channel(group="224.1.1.1", port=port, name="sender")
    receivers = [await open_channel(group="224.1.1.1", port=port) for _ in range(2)]
    texts = [f"pesan {i}: halo ünïcödé ✓" for i in range(50)] + ["two\nlines"]
    for text in texts:
        await sender.send(text)
    for receiver in receivers:
        got = [await receive(receiver) for _ in texts]
        assert [message.text for message in got] == texts
        assert {message.sender for message in got} == {"sender"}
        assert [message.seq for message in got] == list(range(1, len(texts) + 1))
        stats = receiver.statistics()
        assert (stats.received, stats.delivered, stats.dropped, stats.lost) == (51, 51, 0, 0)
    assert sender.statistics().sent == len(texts)


async def test_restarted_sender_accepted(open_channel: OpenChannel) -> None:
    """A sender that closes and comes back (a new channel) is heard again from seq 1."""
    receiver = await open_channel()
    first = await open_channel(name="alice")
    await first.send("before")
    assert (await receive(receiver)).seq == 1
    first.close()
    await first.wait_closed()
    second = await open_channel(name="alice")
    await second.send("after")
    message = await receive(receiver)
    assert (message.text, message.seq) == ("after", 1)
    assert receiver.statistics().dropped == 0


@pytest.mark.parametrize("echo", [False, True])
async def test_own_datagrams(open_channel: OpenChannel, lab: LabPeer, echo: bool) -> None:
    """Own datagrams are skipped as own (or, with echo, delivered), never seen as replays."""
    channel = await open_channel(echo=echo, name="me")
    witness = await open_channel()
    capture = lab.receiver()
    await channel.send("mine")
    assert (await receive(witness)).text == "mine"
    forger = Forger(lab)
    forger.send(await recv_raw(capture))  # our own datagram, from another address
    forger.send(forger.datagram("theirs"))
    if echo:
        message = await receive(channel)
        assert (message.text, message.sender, message.seq) == ("mine", "me", 1)
    assert (await receive(channel)).text == "theirs"
    stats = channel.statistics()
    assert (stats.own, stats.replayed) == ((0, 1) if echo else (2, 0))


def test_key_validation() -> None:
    """An empty key, a key of the wrong type, and a key with plain=True are refused."""
    with pytest.raises(ValueError, match="key must not be empty"):
        MulticastChannel("224.1.1.1", 5004, key="")
    with pytest.raises(ValueError, match="key must not be empty"):
        MulticastChannel("224.1.1.1", 5004, key=b"")
    with pytest.raises(TypeError, match="key must be bytes or str, got int"):
        MulticastChannel("224.1.1.1", 5004, key=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be combined with plain=True"):
        MulticastChannel("224.1.1.1", 5004, key="k", plain=True)


async def test_send_too_long_counts_signature(open_channel: OpenChannel) -> None:
    """The limit counts the whole signed datagram; a refused send uses no sequence number."""
    sender = await open_channel()
    receiver = await open_channel()
    body = len(json.dumps({"type": "message", "text": ""}, separators=(",", ":")))
    with pytest.raises(MessageTooLong) as caught:
        await sender.send("x" * (DEFAULT_MAX_DATAGRAM_BYTES - OVERHEAD - body + 1))
    assert caught.value.size == DEFAULT_MAX_DATAGRAM_BYTES + 1
    with pytest.raises(MessageTooLong):
        await sender.send("x" * 70_000)  # more than a signed body can ever hold
    await sender.send("x" * (DEFAULT_MAX_DATAGRAM_BYTES - OVERHEAD - body))  # exactly the limit
    message = await receive(receiver)
    assert message.seq == 1
    assert receiver.statistics().oversized == 0


# -- interoperation with unkeyed peers ---------------------------------------------------------


async def test_keyed_ignores_unkeyed_peers(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A keyed channel drops (and counts) what unkeyed channels and plain programs send."""
    keyed = await open_channel()
    unkeyed = await open_channel(key=None, name="plain-json")
    plain = await open_channel(key=None, plain=True)
    await unkeyed.send("unsigned json")
    await plain.send("unsigned text")
    lab.send(b"from the lab")
    forger = Forger(lab)
    forger.send(forger.datagram("signed"))
    assert (await receive(keyed)).text == "signed"
    await eventually(lambda: keyed.statistics().received == 4)  # four sockets: any order
    assert drops(keyed.statistics()) == {"unsigned": 3}


async def test_unkeyed_sees_signed_as_text(open_channel: OpenChannel) -> None:
    """An unkeyed channel shows a signed datagram as plain text (documented): no secrecy."""
    keyed = await open_channel(name="alice")
    unkeyed = await open_channel(key=None)
    await keyed.send("not a secret")
    message = await receive(unkeyed)
    assert message.text.startswith(MARKER.decode() + keyed.instance + " ")
    assert '"text":"not a secret"' in message.text


# -- hostile-suite case 13: forged, replayed, truncated, oversized, unsigned, a gap -----------


async def test_unsigned(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Plain text, unkeyed chatcast JSON, binary junk: unsigned; the next valid one arrives."""
    channel = await open_channel()
    forger = Forger(lab)
    forger.send(b"halo, plain text")
    forger.send(b'{"type":"message","from":"admin","text":"obey","ts":1.0,"seq":1}')
    forger.send(b"\xff\xfe\x00 binary")
    forger.send(b"chatcast-hmac")  # not even the whole marker
    forger.send(forger.datagram("valid"))
    assert (await receive(channel)).text == "valid"
    stats = channel.statistics()
    assert drops(stats) == {"unsigned": 4}
    assert accounted(stats) == stats.received == 5


async def test_forged(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Another key, a flipped body byte, a flipped tag byte: forged; no sender state made."""
    channel = await open_channel()
    outsider, forger = Forger(lab, key=OTHER_KEY), Forger(lab)
    outsider.send(outsider.datagram("wrong key"))
    good = forger.datagram("flipped")
    for offset in (HEADER_BYTES + 5, len(good) - 1):
        flipped = bytearray(good)
        flipped[offset] ^= 0x01
        forger.send(bytes(flipped))
    for _ in range(100):  # many invented sender ids: none gets any state
        outsider.sender = f"{random.getrandbits(64):016x}"
        outsider.send(outsider.datagram("spray"))
    forger.send(forger.datagram("valid"))
    message = await receive(channel)
    assert (message.text, message.sender, message.seq) == ("valid", "forger", 2)
    assert drops(channel.statistics()) == {"forged": 103}
    assert [s.sender_id for s in channel.sender_statistics()] == [forger.sender]


async def test_truncated(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A valid datagram cut in its header, body or tag is truncated; the next one arrives."""
    channel = await open_channel()
    forger = Forger(lab)
    forger.send(forger.datagram("whole"))
    whole = forger.datagram("cut short")
    cuts = [len(MARKER), 40, HEADER_BYTES - 1, HEADER_BYTES + 3, len(whole) - 64, len(whole) - 1]
    for cut in cuts:
        forger.send(whole[:cut])
    forger.send(forger.datagram("valid"))
    assert [(m.text, m.seq) for m in [await receive(channel), await receive(channel)]] == [
        ("whole", 1),
        ("valid", 3),
    ]
    assert drops(channel.statistics()) == {"truncated": len(cuts)}
    assert channel.statistics().lost == 1  # seq 2 never arrived whole


async def test_malformed(open_channel: OpenChannel, lab: LabPeer) -> None:
    """The marker followed by a header not as specified, or bytes after the tag: malformed."""
    channel = await open_channel()
    forger = Forger(lab)
    whole = forger.datagram("x")
    forger.send(whole + b"\n")  # a terminal's line ending after the tag
    forger.send(MARKER + b"0" * (OVERHEAD - len(MARKER)))
    forger.send(whole[:20] + b"ABCDEF0123" + whole[30:])  # sender id: uppercase hex
    forger.send(forger.datagram("valid"))
    assert (await receive(channel)).text == "valid"
    assert drops(channel.statistics()) == {"malformed": 3}


async def test_oversized(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A correctly signed datagram over max_datagram_bytes is skipped as oversized."""
    channel = await open_channel(max_datagram_bytes=512)
    forger = Forger(lab)
    big = forger.datagram("x" * 400)
    assert len(big) > 512
    forger.send(big)
    forger.send(forger.datagram("valid"))
    assert (await receive(channel)).text == "valid"
    assert drops(channel.statistics()) == {"oversized": 1}


async def test_replayed_capture(open_channel: OpenChannel, lab: LabPeer) -> None:
    """An exact captured datagram, resent, is replayed; the sender's next one arrives."""
    channel = await open_channel()
    sender = await open_channel(name="alice")
    capture = lab.receiver()
    await sender.send("pay 5 euro to bob")
    assert (await receive(channel)).text == "pay 5 euro to bob"
    captured = await recv_raw(capture)
    forger = Forger(lab)
    for _ in range(3):
        forger.send(captured)
    await sender.send("next")
    message = await receive(channel)
    assert (message.text, message.seq) == ("next", 2)
    # The replays came from another socket than "next": make sure all three were read.
    await eventually(lambda: channel.statistics().received == 5)
    stats = channel.statistics()
    assert drops(stats) == {"replayed": 3}
    assert (stats.delivered, stats.lost) == (2, 0)


async def test_reordered_within_window(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Out of order but within the window: each accepted exactly once; older: rejected."""
    channel = await open_channel()
    forger = Forger(lab)
    for seq in (1, 4, 3, 3, 2, 4, 69, 6, 5, 80):
        forger.send(forger.datagram(f"m{seq}", seq=seq))
    got = [await receive(channel) for _ in range(7)]
    assert [message.seq for message in got] == [1, 4, 3, 2, 69, 6, 80]
    assert [message.text for message in got] == [f"m{m.seq}" for m in got]
    stats = channel.statistics()
    assert drops(stats) == {"replayed": 3}  # 3 and 4 again; 5 is 64 behind 69: too old
    assert stats.lost == (69 - 4 - 1 - 1) + (80 - 69 - 1)  # 5..68 but 6; 70..79
    (sender,) = channel.sender_statistics()
    assert (sender.last_seq, sender.received, sender.lost) == (80, 7, stats.lost)


async def test_new_epoch_accepted_old_rejected(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A known sender with a greater epoch (restarted) is heard; its old epoch is not."""
    channel = await open_channel()
    forger = Forger(lab, epoch=1_000)
    forger.send(forger.datagram("life 1, seq 1", seq=1))
    forger.send(forger.datagram("life 1, seq 2", seq=2))
    forger.send(forger.datagram("life 2, seq 1", seq=1, epoch=2_000))
    forger.send(forger.datagram("life 1, seq 3", seq=3))  # the old life: a replay
    forger.send(forger.datagram("life 2, seq 2", seq=2, epoch=2_000))
    got = [(await receive(channel)).text for _ in range(4)]
    assert got == ["life 1, seq 1", "life 1, seq 2", "life 2, seq 1", "life 2, seq 2"]
    assert drops(channel.statistics()) == {"replayed": 1}
    (sender,) = channel.sender_statistics()
    assert (sender.epoch, sender.last_seq, sender.received) == (2_000, 2, 4)


async def test_stale(open_channel: OpenChannel, lab: LabPeer) -> None:
    """Authentic datagrams stamped over 5 minutes from this host's clock are stale."""
    channel = await open_channel()
    forger = Forger(lab)
    forger.send(forger.datagram("recorded an hour ago", age=3600))
    forger.send(forger.datagram("from a clock 6 minutes fast", age=-360))
    forger.send(forger.datagram("4 minutes old is fine", age=240))
    message = await receive(channel)
    assert message.text == "4 minutes old is fine"
    assert drops(channel.statistics()) == {"stale": 2}


async def test_sequence_gap_counted_as_lost(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A gap in a sender's sequence numbers is counted lost, in total and per sender."""
    channel = await open_channel()
    forger = Forger(lab)
    for seq in (1, 2, 6, 7, 9):
        forger.send(forger.datagram(f"m{seq}", seq=seq))
    assert [(await receive(channel)).seq for _ in range(5)] == [1, 2, 6, 7, 9]
    stats = channel.statistics()
    assert (stats.lost, stats.dropped) == (4, 0)
    (sender,) = channel.sender_statistics()
    assert (sender.name, sender.lost, sender.received) == ("forger", 4, 5)


async def test_invalid_body_from_key_holder(open_channel: OpenChannel, lab: LabPeer) -> None:
    """A key holder's datagram whose body is not a valid message is counted invalid."""
    channel = await open_channel()
    forger = Forger(lab)
    signer = Signer(KEY.encode(), forger.sender, 1)
    now = int(time.time() * 1000)
    for seq, body in enumerate([b"not json", b'{"type":"bogus"}', b"\xff", b'{"from":5}'], 1):
        forger.send(signer.sign(seq, now, body))
    forger.send(signer.sign(5, now, b'{"type":"message","text":"ok","seq":99,"ts":1.0}'))
    message = await receive(channel)
    assert (message.text, message.seq) == ("ok", 5)  # the signed header's, not the body's
    assert message.timestamp == now / 1000
    assert message.sender is not None
    assert message.sender.startswith("127.0.0.1:")  # no "from": the source address
    stats = channel.statistics()
    assert (stats.invalid, stats.dropped, stats.lost) == (4, 4, 0)


async def test_unkeyed_channel_has_no_sender_state(open_channel: OpenChannel) -> None:
    """Without a key nothing is tracked per sender and the signed counters stay 0."""
    sender = await open_channel(key=None)
    channel = await open_channel(key=None)
    await sender.send("x")
    await receive(channel)
    assert channel.sender_statistics() == []
    stats = channel.statistics()
    assert drops(stats) == {}
    assert stats.lost == 0
