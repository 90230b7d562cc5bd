"""Tests for the sans-I/O reliable multicast core: loss, reordering, timers, bounds, signing.

Everything runs on the fake network and clock of ``tests/reliable_sim.py``: real encoders,
classifiers and ``ReliableCore``s, datagrams dropped per receiver and delivered out of order,
no socket and no event loop.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcast._core.reliable_options import ReliableOptions
from chatcast._core.reliable_wire import (
    CONTROL_MARKER,
    HEARTBEAT,
    NACK,
    REPAIR_MARKER,
    Control,
    ControlCodec,
)
from chatcast._core.wire import GAP
from tests.reliable_sim import KEY, T0, Net, Node


def texts(count: int, prefix: str = "m") -> list[str]:
    """``count`` distinct texts."""
    return [f"{prefix}{i}" for i in range(count)]


def gaps(node: Node) -> list[int]:
    """The ``missed`` counts of the gap events ``node`` got."""
    return [m.missed or 0 for m in node.got if m.kind == GAP]


# -- delivery -------------------------------------------------------------------------------


def test_no_loss_costs_no_control_traffic_but_heartbeats() -> None:
    """Without loss every message arrives once, in order, and nobody sends a NACK."""
    net = Net(0)
    sender = net.node(name="s")
    receivers = [net.node() for _ in range(3)]
    net.send_paced(sender, texts(500), 0.001)
    net.run(5)
    for receiver in receivers:
        assert receiver.texts("s") == texts(500)
        assert receiver.core.receiver.nacks_sent == 0
    assert sender.core.sender.repairs_sent == 0
    # The idle sender's heartbeats back off: 50 ms, then 100, 200 ... capped at 2 s.
    assert 3 <= net.sent["control"] <= 8


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0.0, 0.4),
    senders=st.integers(1, 2),
    signed=st.booleans(),
)
def test_every_message_once_in_order_despite_loss_and_reordering(
    seed: int, loss: float, senders: int, signed: bool
) -> None:
    """With independent loss at each receiver and random latency, each receiver gets every
    message of every sender exactly once, in each sender's order, and no gap."""
    net = Net(seed, latency=(0.0001, 0.004))  # up to 4 ms: datagrams overtake each other
    key = KEY if signed else None
    sources = [net.node(name=f"s{i}", key=key) for i in range(senders)]
    receivers = [net.node(key=key) for _ in range(3)]
    for receiver in receivers:
        receiver.loss = loss
    for i, source in enumerate(sources):
        net.send_paced(source, texts(300, f"s{i}-"), 0.001)
    net.run(20)
    for receiver in receivers:
        for i in range(senders):
            assert receiver.texts(f"s{i}") == texts(300, f"s{i}-")
        assert gaps(receiver) == []
        assert receiver.core.receiver.held == 0


@settings(max_examples=25, deadline=None)
@given(lost=st.sets(st.integers(1, 60)), seed=st.integers(0, 1000))
def test_any_loss_pattern_is_repaired(lost: set[int], seed: int) -> None:
    """Whichever sequence numbers are lost (first and last included), all are repaired."""
    net = Net(seed)
    sender = net.node(name="s")
    receiver = net.node()

    def drop(source: Node, target: Node, port: str, data: bytes) -> bool:
        if port != "data":
            return False
        return json.loads(data)["seq"] in lost

    net.drop = drop
    net.send_paced(sender, texts(60), 0.002)
    net.run(10)
    assert receiver.texts("s") == texts(60)
    assert receiver.core.receiver.repairs_received == len(lost)


def test_unordered_delivers_as_they_come_each_once() -> None:
    """ordered=False delivers at once, out of order after a loss, still each once."""
    net = Net(3)
    sender = net.node(name="s")
    receiver = net.node(ordered=False)
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] == 2
    net.send_paced(sender, texts(5), 0.001)
    net.run(0.0045)  # m0, m2 (m1 lost), m3 arrived; no repair yet
    assert receiver.texts("s") == ["m0", "m2", "m3"]
    net.run(2)
    assert sorted(receiver.texts("s")) == texts(5)
    assert receiver.texts("s")[-2:] in (["m4", "m1"], ["m1", "m4"])


def test_ordered_holds_back_until_repaired() -> None:
    """ordered=True holds what follows a loss until the repair, then delivers in order."""
    net = Net(3)
    sender = net.node(name="s")
    receiver = net.node()
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] == 2
    net.send_paced(sender, texts(5), 0.001)
    net.run(0.0045)
    assert receiver.texts("s") == ["m0"]
    assert receiver.core.receiver.held == 2
    net.run(2)
    assert receiver.texts("s") == texts(5)
    assert receiver.core.receiver.held == 0


# -- tail loss, heartbeats, leaving --------------------------------------------------------


def test_lost_last_message_is_noticed_by_heartbeat() -> None:
    """The last message lost: the idle sender's heartbeat reveals it, and it is repaired."""
    net = Net(4)
    sender = net.node(name="s")
    receiver = net.node()
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] == 3
    net.send_paced(sender, texts(3), 0.001)
    net.run(0.04)
    assert receiver.texts("s") == ["m0", "m1"]  # before the first heartbeat (50 ms)
    net.run(0.2)
    assert receiver.texts("s") == texts(3)


def test_heartbeats_back_off_while_idle() -> None:
    """An idle sender's heartbeats come 50 ms after its last message, then at doubling
    intervals up to heartbeat_max; a new message starts again from the shortest."""
    net = Net(0)
    sender = net.node(name="s", options=ReliableOptions(heartbeat_max=0.4))
    net.node()
    beats: list[float] = []
    codec = ControlCodec()

    def watch(source: Node, target: Node, port: str, data: bytes) -> bool:
        if port == "control" and isinstance(control := codec.decode(data, 0), Control):
            if control.kind == HEARTBEAT:
                beats.append(round(net.now - T0, 3))
        return False

    net.drop = watch
    sender.send("one")
    net.run(1.6)
    assert beats == [0.05, 0.15, 0.35, 0.75, 1.15, 1.55]
    beats.clear()
    sender.send("two")
    net.run(0.1)
    assert beats == [1.65]


def test_leaving_sender_gap_is_given_up_after_linger() -> None:
    """A sender that leaves answers NACKs during its linger; what is still missing after
    it is a gap event (sender id, count), and delivery goes on."""
    options = ReliableOptions(linger=0.2)
    net = Net(5)
    sender = net.node(name="s", options=options)
    other = net.node(name="o")
    receiver = net.node()
    # Data 2..3 from s never arrive, nor any repair of them: only the leave notice does.
    net.drop = lambda s, t, port, data: (
        t is receiver
        and s is sender
        and (
            (port == "data" and json.loads(data)["seq"] in (2, 3)) or data.startswith(REPAIR_MARKER)
        )
    )
    net.send_paced(sender, texts(4), 0.001)
    net.run(0.01)
    net.broadcast(sender, "control", sender.core.leave(net.now))
    net.run(0.19)
    assert receiver.texts("s") == ["m0"]  # m3 held behind the gap
    net.run(0.05)
    assert receiver.texts("s") == ["m0", "m3"]
    assert [(m.kind, m.sender, m.missed) for m in receiver.got[1:2]] == [(GAP, sender.instance, 2)]
    other.send("still here")
    net.run(0.01)
    assert receiver.texts("o") == ["still here"]


# -- honest limits and bounds ------------------------------------------------------------------


def test_outside_window_is_a_gap_event() -> None:
    """Asked for what has left the sender's window: a gap event with the count, at once
    (the sender says where its window starts), and the rest delivered."""
    net = Net(6)
    sender = net.node(name="s", options=ReliableOptions(window_messages=3))
    receiver = net.node()
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] in (2, 3)
    for text in texts(8):
        sender.send(text)  # all at once: 2 and 3 leave the window before anyone asks
    net.run(1)
    assert receiver.texts("s") == ["m0", "m3", "m4", "m5", "m6", "m7"]
    assert gaps(receiver) == [2]
    assert sender.core.sender.repairs_unavailable >= 2


def test_given_up_after_max_tries() -> None:
    """A message nobody repairs is given up after max_tries rounds, as a gap event."""
    options = ReliableOptions(max_tries=3, repair_wait=0.01)
    net = Net(7)
    sender = net.node(name="s", options=options)
    receiver = net.node(options=options)
    net.drop = lambda s, t, port, data: (
        (port == "data" and json.loads(data)["seq"] == 2) or data.startswith(REPAIR_MARKER)
    )
    net.send_paced(sender, texts(3), 0.001)
    net.run(1)
    assert receiver.texts("s") == ["m0", "m2"]
    assert gaps(receiver) == [1]
    assert receiver.core.receiver.nacks_sent == 3


def test_hold_back_is_bounded() -> None:
    """Past max_held, the oldest gap is given up and what was held is delivered."""
    options = ReliableOptions(max_held=5)
    net = Net(8)
    sender = net.node(name="s")
    receiver = net.node(options=options)
    net.drop = lambda s, t, port, data: (
        (port == "data" and json.loads(data)["seq"] == 2) or data.startswith(REPAIR_MARKER)
    )
    for text in texts(10):
        sender.send(text)
    net.run(0.003)
    assert receiver.texts("s") == ["m0", *texts(10)[2:]]
    assert gaps(receiver) == [1]
    assert receiver.core.receiver.held == 0


def test_late_joiner_does_not_ask_for_history() -> None:
    """A receiver that joins after the sender started asks for nothing sent before."""
    net = Net(9)
    sender = net.node(name="s")
    for text in texts(5):
        sender.send(text)
    net.run(1)
    late = net.node()
    net.send_paced(sender, texts(3, "late"), 0.001)
    net.run(1)
    assert late.texts("s") == texts(3, "late")
    assert late.core.receiver.nacks_sent == 0
    assert gaps(late) == []


def test_early_receiver_asks_for_a_lost_first_message() -> None:
    """A receiver that was there before the sender started gets its lost first messages."""
    net = Net(10)
    receiver = net.node()
    net.run(5)  # joined well before; the sender's clock is 3 s ahead of the receiver's
    sender = net.node(name="s")
    sender.encoder = type(sender.encoder)(
        instance=sender.instance, epoch=0, name="s", reliable_since=int((net.now + 3) * 1000)
    )
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] in (1, 2)
    original = sender.encoder.encode
    sender.encoder.encode = lambda text, now: original(text, now + 3)  # type: ignore[method-assign]
    net.send_paced(sender, texts(4), 0.001)
    net.run(1)
    assert receiver.texts("s") == texts(4)


def test_suppression_common_loss() -> None:
    """A loss every receiver shares is asked for by about one of them, not all ten."""
    net = Net(11)
    sender = net.node(name="s")
    receivers = [net.node() for _ in range(10)]
    lost = set(range(5, 200, 10))  # 20 datagrams lost before the fan-out
    net.drop = lambda s, t, port, data: port == "data" and json.loads(data)["seq"] in lost
    net.send_paced(sender, texts(200), 0.01)
    net.run(5)
    nacks = sum(r.core.receiver.nacks_sent for r in receivers)
    suppressed = sum(r.core.receiver.suppressed for r in receivers)
    for receiver in receivers:
        assert receiver.texts("s") == texts(200)
    assert nacks <= 2 * len(lost)  # not 10 per loss
    assert suppressed >= 5 * len(lost)
    assert sender.core.sender.repairs_sent <= 2 * len(lost)


def test_duplicate_nacks_get_one_repair() -> None:
    """Two NACKs for one message within the holdoff get one repair."""
    net = Net(12)
    sender = net.node(name="s")
    sender.send("x")
    nack = Control(NACK, sender.instance, 0, int(net.now * 1000), ranges=((1, 1),), origin="0" * 16)
    sender.core.sender.nack(nack, net.now)
    sender.core.sender.nack(nack, net.now + 0.001)
    assert sender.core.sender.repairs_sent == 1
    sender.core.sender.nack(nack, net.now + 0.05)
    assert sender.core.sender.repairs_sent == 2


def test_nack_flood_is_rate_limited() -> None:
    """A flood of NACKs gets at most repair_rate repairs per second (plus one burst)."""
    options = ReliableOptions(repair_rate=100.0, repair_holdoff=0.0)
    net = Net(13)
    sender = net.node(name="s", options=options)
    for text in texts(50):
        sender.send(text)
    for i in range(1000):  # 1000 NACKs for 50 messages each, over one second
        now = net.now + i / 1000
        nack = Control(
            NACK, sender.instance, 0, int(now * 1000), ranges=((1, 50),), origin="0" * 16
        )
        sender.core.sender.nack(nack, now)
    assert sender.core.sender.repairs_sent <= 100 + 25 + 1
    assert sender.core.sender.repairs_throttled > 40_000


# -- signing ------------------------------------------------------------------------------


def test_signed_control_refuses_outsiders() -> None:
    """With a key, unsigned or wrongly signed NACKs cause no repair, and a forged repair
    delivers nothing."""
    net = Net(14)
    sender = net.node(name="s", key=KEY)
    receiver = net.node(key=KEY)
    sender.send("hello")
    net.run(0.01)
    nack = Control(NACK, sender.instance, 7, int(net.now * 1000), ranges=((1, 1),), origin="0" * 16)
    for codec in (ControlCodec(), ControlCodec(b"other key")):
        sender.deliver("control", codec.encode(nack), ("10.0.0.9", 1))
    assert sender.core.sender.repairs_sent == 0
    assert sender.core.control_skipped == {"unsigned": 1, "forged": 1}
    sender.deliver("control", ControlCodec(KEY).encode(nack), ("10.0.0.9", 1))
    assert sender.core.sender.repairs_sent == 1
    forged = REPAIR_MARKER + sender.encoder.encode("fake", net.now).replace(b"fake", b"evil")
    receiver.deliver("control", forged, ("10.0.0.9", 1))
    assert receiver.core.control_skipped == {"forged": 1}
    assert receiver.texts("s") == ["hello"]


@given(st.binary(max_size=300))
def test_control_decoder_never_raises(data: bytes) -> None:
    """Any bytes on the repair port are decoded or refused with a reason, never raise."""
    for codec in (ControlCodec(), ControlCodec(KEY)):
        result = codec.decode(CONTROL_MARKER + data, 0)
        assert isinstance(result, Control | str)


@pytest.mark.parametrize(
    "obj",
    [
        {
            "type": "nack",
            "sender": "0" * 16,
            "epoch": 0,
            "time": 1,
            "ranges": [],
            "origin": "1" * 16,
        },
        {
            "type": "nack",
            "sender": "0" * 16,
            "epoch": 0,
            "time": 1,
            "ranges": [[2, 1]],
            "origin": "1" * 16,
        },
        {
            "type": "nack",
            "sender": "0" * 16,
            "epoch": 0,
            "time": 1,
            "ranges": [[1, 5000]],
            "origin": "1" * 16,
        },
        {
            "type": "heartbeat",
            "sender": "0" * 16,
            "epoch": 0,
            "time": 1,
            "top": 1,
            "low": 5,
            "since": 0,
        },
        {
            "type": "heartbeat",
            "sender": "XYZ",
            "epoch": 0,
            "time": 1,
            "top": 1,
            "low": 1,
            "since": 0,
        },
        {
            "type": "heartbeat",
            "sender": "0" * 16,
            "epoch": -1,
            "time": 1,
            "top": 1,
            "low": 1,
            "since": 0,
        },
        {"type": "ping"},
    ],
)
def test_control_decoder_refuses_bad_fields(obj: dict[str, object]) -> None:
    """Out-of-range, over-long and unknown control objects are refused as malformed."""
    data = CONTROL_MARKER + json.dumps(obj).encode()
    assert ControlCodec().decode(data, 0) == "malformed"


def test_control_round_trip_and_staleness() -> None:
    """What the codec encodes it decodes; signed ones older than 5 minutes are stale."""
    codec = ControlCodec(KEY)
    beat = Control(HEARTBEAT, "a" * 16, 3, 1_000_000, top=9, low=4, since_ms=5)
    assert codec.decode(codec.encode(beat), 1_000_000) == beat
    assert codec.decode(codec.encode(beat), 1_000_000 + 300_001) == "stale"


def test_options_are_checked() -> None:
    """Bad timers and bounds are a ValueError naming the option."""
    with pytest.raises(ValueError, match="window_messages"):
        ReliableOptions(window_messages=0)
    with pytest.raises(ValueError, match="nack_delay"):
        ReliableOptions(nack_delay=(0.5, 0.1))
    with pytest.raises(ValueError, match="heartbeat_max"):
        ReliableOptions(heartbeat_min=2, heartbeat_max=1)
    with pytest.raises(ValueError, match="linger"):
        ReliableOptions(linger=-1)


def test_a_stalled_sender_catches_up() -> None:
    """A sender that answers nothing for 3 s (a starved process) is asked again with
    backing off, answers its backlog of NACKs with one repair each, and every receiver
    gets everything; the NACKs stay bounded by the back-off."""
    net = Net(15)
    sender = net.node(name="s")
    receivers = [net.node() for _ in range(3)]
    for receiver in receivers:
        receiver.loss = 0.1
    net.send_paced(sender, texts(3000), 0.001)
    net.run(0.5)
    sender.stalled_until = net.now + 3
    net.run(20)
    for receiver in receivers:
        assert receiver.texts("s") == texts(3000)
        assert receiver.core.receiver.nacks_sent < 400


def test_largest_nack_fits() -> None:
    """A NACK of the most ranges of the largest numbers, signed, is accepted whole."""
    top = 2**64 - 1
    ranges = tuple((top - 2 * i, top - 2 * i) for i in range(32))
    nack = Control(NACK, "f" * 16, top, top, ranges=ranges, origin="e" * 16)
    codec = ControlCodec(KEY)
    assert codec.decode(codec.encode(nack), top) == nack
