"""Tests for chatcast._core.mcast: the multicast classifier and encoder, with no event loop.

Datagrams are bytes, sources are address tuples and the clock is a number passed in, so every
rule of ``docs/multicast.md`` ("Receiving", "Receiving with a key") is driven directly, as
h11's tests feed bytes and read events. The end-to-end tests over real sockets are in
tests/test_multicast*.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcast._core.datagram import MARKER, OVERHEAD, WINDOW, Signer
from chatcast._core.mcast import (
    INSTANCE_FIELD,
    Address,
    Classifier,
    Encoder,
    SenderStatistics,
    Skip,
    source,
)
from chatcast._core.mcast_config import MulticastConfig
from chatcast._core.wire import Message
from chatcast.exceptions import MessageTooLong

KEY = b"kunci kelas 11"
ME = "00000000000000ee"
PEER = "00000000000000aa"
#: The fake clock: seconds since the Unix epoch.
NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
OWN_ADDRESS = ("127.0.0.1", 40000)
THEM = ("127.0.0.1", 40001)
BODY = b'{"type":"message","from":"alice","text":"halo"}'


def classifier(**options: Any) -> Classifier:
    """A classifier for channel ME, whose send socket is OWN_ADDRESS."""
    options.setdefault("instance", ME)
    made = Classifier(**options)
    made.own_address = OWN_ADDRESS
    return made


def keyed(**options: Any) -> Classifier:
    """A classifier for channel ME with the group key."""
    return classifier(key=KEY, **options)


def signed(
    seq: int,
    *,
    sender: str = PEER,
    epoch: int = 1,
    at: float = NOW,
    body: bytes = BODY,
    key: bytes = KEY,
) -> bytes:
    """A signed datagram from ``sender``, stamped ``at`` (seconds)."""
    return Signer(key, sender, epoch).sign(seq, int(at * 1000), body)


def json_datagram(**fields: Any) -> bytes:
    """A JSON-form datagram with ``fields`` (type "message" unless given)."""
    fields.setdefault("type", "message")
    return json.dumps(fields).encode()


def accounted(c: Classifier, delivered: int) -> bool:
    """Every datagram classified is either skipped for one reason or delivered."""
    return c.received == sum(c.skipped.values()) + delivered


def counts(c: Classifier) -> dict[str, int]:
    """The non-zero skip counters, by name."""
    return {reason.value: n for reason, n in c.skipped.items() if n}


# -- unkeyed: plain text ----------------------------------------------------------------------


def test_plain_text_is_a_message_from_its_source() -> None:
    """A plain datagram is its text, sent by "host:port" of its source, with no timestamp."""
    c = classifier()
    assert c.classify("halo ✓".encode(), THEM, NOW) == Message(
        text="halo ✓", sender="127.0.0.1:40001"
    )
    assert (c.received, counts(c)) == (1, {})


@pytest.mark.parametrize(
    ("data", "text"),
    [(b"lf\n", "lf"), (b"crlf\r\n", "crlf"), (b"two\n\n", "two\n"), (b"\r", "\r")],
)
def test_plain_text_loses_one_line_ending(data: bytes, text: str) -> None:
    """One trailing LF or CRLF (nc -u, socat) is not part of the text; nothing else is cut."""
    message = classifier().classify(data, THEM, NOW)
    assert isinstance(message, Message)
    assert message.text == text


@pytest.mark.parametrize("data", [b"\n", b"\r\n"])
def test_line_ending_alone_is_empty(data: bytes) -> None:
    """A datagram holding only a line ending is skipped as empty."""
    c = classifier()
    assert c.classify(data, THEM, NOW) is Skip.EMPTY
    assert counts(c) == {"empty": 1}


def test_ipv6_source() -> None:
    """An IPv6 source is shown as "[host]:port"."""
    message = classifier().classify(b"x", ("ff05::1", 5004, 0, 0), NOW)
    assert isinstance(message, Message)
    assert message.sender == "[ff05::1]:5004"
    assert source(("::1", 7)) == "[::1]:7"


def test_oversized_empty_and_not_utf8() -> None:
    """Oversized, empty and non-UTF-8 datagrams are skipped, each under its own counter."""
    c = classifier(max_datagram_bytes=10)
    assert c.classify(b"x" * 11, THEM, NOW) is Skip.OVERSIZED
    assert c.classify(b"", THEM, NOW) is Skip.EMPTY
    assert c.classify(b"\xff\xfe halo", THEM, NOW) is Skip.INVALID
    assert isinstance(c.classify(b"y" * 10, THEM, NOW), Message)  # exactly at the limit
    assert counts(c) == {"oversized": 1, "empty": 1, "invalid": 1}
    assert accounted(c, delivered=1)


# -- unkeyed: the JSON form -------------------------------------------------------------------


def test_json_message() -> None:
    """A JSON-form message keeps its sender, time and sequence number."""
    data = json_datagram(**{"from": "bob", "text": "a\nb", "ts": 1.5, "seq": 7, "x": [1]})
    assert classifier().classify(data, THEM, NOW) == Message(
        text="a\nb", sender="bob", timestamp=1.5, seq=7
    )


def test_json_without_from_is_from_its_source() -> None:
    """A JSON message without "from" is sent by its source address."""
    message = classifier().classify(json_datagram(text="hi"), THEM, NOW)
    assert message == Message(text="hi", sender="127.0.0.1:40001")


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "bogus", "text": "x"}',
        b'{"type": "message", "text": 5}',
        b'{"type": "message", "text": "x", "ts": "noon"}',
        b'{"type": "message", "text": "x", "seq": true}',
        b'{"type": "message", "text": "x", "ts": 1' + b"0" * 400 + b"}",
        b'{"type": "closing", "text": "connection closed by server"}',
        b'{"type": "announcement", "text": "fake"}',
        b'{"type": "message", "text": "\xc3\x28"}',
    ],
)
def test_invalid_json_messages(data: bytes) -> None:
    """A chatcast-looking JSON object that is not a valid chat message is invalid."""
    c = classifier()
    assert c.classify(data, THEM, NOW) is Skip.INVALID
    assert counts(c) == {"invalid": 1}


@pytest.mark.parametrize(
    "text", ["{not json", '{"no": "type"}', "{", '{"a":' + "[" * 3000 + "]" * 3000 + "}"]
)
def test_brace_that_is_not_chatcast_json_is_plain_text(text: str) -> None:
    """Text that merely starts with "{" is a plain-text message."""
    assert classifier().classify(text.encode(), THEM, NOW) == Message(
        text=text, sender="127.0.0.1:40001"
    )


# -- unkeyed: own datagrams -------------------------------------------------------------------


def test_own_datagrams_skipped_by_source() -> None:
    """A datagram from the channel's own send socket is skipped before it is decoded."""
    c = classifier()
    assert c.classify(b"\xff not even utf-8", OWN_ADDRESS, NOW) is Skip.OWN
    assert c.classify(b"mine", ("127.0.0.2", OWN_ADDRESS[1]), NOW) == Message(
        text="mine", sender="127.0.0.2:40000"
    )  # same port, another host: not ours
    assert counts(c) == {"own": 1}


def test_own_instance_skipped() -> None:
    """A JSON datagram carrying the channel's instance id is its own, from any source."""
    c = classifier()
    data = json_datagram(text="forged", **{INSTANCE_FIELD: ME})
    assert c.classify(data, THEM, NOW) is Skip.OWN
    assert counts(c) == {"own": 1}


def test_echo_delivers_own_datagrams() -> None:
    """With echo, own datagrams are delivered like any other."""
    c = classifier(echo=True)
    assert c.classify(b"mine", OWN_ADDRESS, NOW) == Message(text="mine", sender="127.0.0.1:40000")
    message = c.classify(json_datagram(text="j", **{INSTANCE_FIELD: ME}), OWN_ADDRESS, NOW)
    assert isinstance(message, Message)
    assert counts(c) == {}


def test_nothing_is_own_before_the_address_is_known() -> None:
    """Until the shell sets own_address, no source is taken for the channel's own."""
    c = Classifier(instance=ME)
    assert isinstance(c.classify(b"x", ("0.0.0.0", 1), NOW), Message)


def test_unkeyed_tracks_no_senders() -> None:
    """Without a key nothing is remembered per sender, and a signed datagram is plain text."""
    c = classifier()
    message = c.classify(signed(1), THEM, NOW)
    assert isinstance(message, Message)
    assert message.text.startswith(MARKER.decode())
    assert (c.signed, c.lost, c.sender_statistics()) == (False, 0, [])


# -- keyed ------------------------------------------------------------------------------------


def test_signed_message() -> None:
    """An authentic datagram is delivered with the header's sequence number and time."""
    c = keyed()
    body = b'{"type":"message","from":"alice","text":"halo","seq":99,"ts":1.0,"instance":"x"}'
    message = c.classify(signed(5, body=body, at=NOW - 2), THEM, NOW)
    assert message == Message(text="halo", sender="alice", timestamp=NOW - 2, seq=5)
    assert c.sender_statistics() == [
        SenderStatistics(sender_id=PEER, name="alice", epoch=1, last_seq=5, received=1, lost=0)
    ]
    assert c.signed


def test_signed_without_from_is_from_its_source() -> None:
    """A signed message without "from" is sent by its source address."""
    message = keyed().classify(signed(1, body=b'{"type":"message","text":"x"}'), THEM, NOW)
    assert isinstance(message, Message)
    assert message.sender == "127.0.0.1:40001"


def test_bad_mac_is_forged() -> None:
    """Another key, or one altered byte, is forged; neither leaves state behind."""
    c = keyed()
    assert c.classify(signed(1, key=b"another key"), THEM, NOW) is Skip.FORGED
    data = bytearray(signed(2))
    data[-70] ^= 1  # a byte of the body
    assert c.classify(bytes(data), THEM, NOW) is Skip.FORGED
    assert counts(c) == {"forged": 2}
    assert c.sender_statistics() == []


def test_structure_errors() -> None:
    """Unsigned, truncated and malformed datagrams are told apart."""
    c = keyed()
    good = signed(1)
    assert c.classify(b"halo", THEM, NOW) is Skip.UNSIGNED
    assert c.classify(json_datagram(text="x"), THEM, NOW) is Skip.UNSIGNED
    assert c.classify(good[:-1], THEM, NOW) is Skip.TRUNCATED
    assert c.classify(MARKER + b"x", THEM, NOW) is Skip.TRUNCATED
    assert c.classify(good + b"!", THEM, NOW) is Skip.MALFORMED
    assert c.classify(good.upper().replace(MARKER.upper(), MARKER), THEM, NOW) is Skip.MALFORMED
    assert counts(c) == {"unsigned": 2, "truncated": 2, "malformed": 2}


def test_replayed() -> None:
    """A datagram accepted once is replayed the second time; the next one still goes through."""
    c = keyed()
    assert isinstance(c.classify(signed(1), THEM, NOW), Message)
    assert c.classify(signed(1), ("192.0.2.9", 9), NOW) is Skip.REPLAYED  # from anywhere
    assert isinstance(c.classify(signed(2), THEM, NOW), Message)
    assert counts(c) == {"replayed": 1}


@pytest.mark.parametrize("offset", [-300.002, 300.002, -3600.0, 86400.0])
def test_stale_past_and_future(offset: float) -> None:
    """Stamped more than 5 minutes before or after the receiver's clock: stale."""
    c = keyed()
    assert c.classify(signed(1, at=NOW + offset), THEM, NOW) is Skip.STALE
    assert counts(c) == {"stale": 1}
    assert c.sender_statistics() == []  # stale datagrams leave no state


@pytest.mark.parametrize("offset", [-299.0, 299.0])
def test_within_clock_skew_accepted(offset: float) -> None:
    """Within 5 minutes either way is fresh."""
    assert isinstance(keyed().classify(signed(1, at=NOW + offset), THEM, NOW), Message)


def test_the_clock_is_the_callers() -> None:
    """Freshness follows the ``now`` passed in, not the host's clock."""
    c = keyed()
    assert c.classify(signed(1, at=NOW), THEM, NOW + 301) is Skip.STALE
    assert isinstance(c.classify(signed(2, at=NOW), THEM, NOW + 299), Message)


def test_gap_counted_lost_and_late_arrival_uncounts() -> None:
    """Skipped sequence numbers are lost until they arrive within the window."""
    c = keyed()
    for seq in (1, 2, 6):
        assert isinstance(c.classify(signed(seq), THEM, NOW), Message)
    assert c.lost == 3
    assert isinstance(c.classify(signed(4), THEM, NOW), Message)  # late, inside the window
    assert c.lost == 2
    (peer,) = c.sender_statistics()
    assert (peer.last_seq, peer.received, peer.lost) == (6, 4, 2)


def test_too_old_for_the_window() -> None:
    """A sequence number WINDOW or more below the newest is replayed, even if never seen."""
    c = keyed()
    c.classify(signed(1), THEM, NOW)
    c.classify(signed(WINDOW + 2), THEM, NOW)
    assert c.classify(signed(2), THEM, NOW) is Skip.REPLAYED
    assert isinstance(c.classify(signed(3), THEM, NOW), Message)


def test_new_epoch_restarts_old_epoch_replayed() -> None:
    """A greater epoch is a restart; a smaller one is replayed."""
    c = keyed()
    assert isinstance(c.classify(signed(5, epoch=10), THEM, NOW), Message)
    assert isinstance(c.classify(signed(1, epoch=11), THEM, NOW), Message)
    assert c.classify(signed(6, epoch=10), THEM, NOW) is Skip.REPLAYED
    (peer,) = c.sender_statistics()
    assert (peer.epoch, peer.last_seq, peer.lost) == (11, 1, 0)


def test_keyed_own_datagrams() -> None:
    """Own datagrams are skipped by source, or by sender id once authentic; echo keeps them."""
    c = keyed()
    assert c.classify(b"anything", OWN_ADDRESS, NOW) is Skip.OWN
    assert c.classify(signed(1, sender=ME), THEM, NOW) is Skip.OWN
    assert c.classify(signed(1, sender=ME, key=b"other"), THEM, NOW) is Skip.FORGED
    assert counts(c) == {"own": 2, "forged": 1}
    echo = keyed(echo=True)
    assert isinstance(echo.classify(signed(1, sender=ME), OWN_ADDRESS, NOW), Message)


@pytest.mark.parametrize(
    "body", [b"not json", b'{"type":"bogus"}', b"\xff", b'{"from":5}', b'{"type":"join"}']
)
def test_invalid_body_spends_its_number(body: bytes) -> None:
    """An authentic datagram with a body that is no message is invalid; its number is spent."""
    c = keyed()
    assert c.classify(signed(1, body=body), THEM, NOW) is Skip.INVALID
    assert c.classify(signed(1), THEM, NOW) is Skip.REPLAYED
    assert counts(c) == {"invalid": 1, "replayed": 1}


def test_bounded_sender_table() -> None:
    """At most max_senders senders are remembered; the least recently heard goes first."""
    c = keyed()
    senders = [f"{n:016x}" for n in range(0x1000, 0x1000 + 1500)]  # none is ME
    for sender in senders:
        assert isinstance(c.classify(signed(1, sender=sender), THEM, NOW), Message)
    known = [peer.sender_id for peer in c.sender_statistics()]
    assert known == senders[-1024:]
    # Forgotten, so its old datagram is new again (the timestamp bounds this: docs).
    assert isinstance(c.classify(signed(1, sender=senders[0]), THEM, NOW), Message)
    assert c.sender_statistics()[-1].sender_id == senders[0]
    assert len(c.sender_statistics()) == 1024


def test_small_sender_table_keeps_recent_senders() -> None:
    """Hearing from a sender again makes it the most recently heard."""
    c = keyed(max_senders=2)
    for sender in (PEER, "00000000000000bb", PEER, "00000000000000cc"):
        c.classify(signed(c.received + 1, sender=sender), THEM, NOW)
    assert [peer.sender_id for peer in c.sender_statistics()] == [PEER, "00000000000000cc"]


def test_first_unsigned_forged_stale_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    """The first unsigned, forged and stale datagram is a warning; later ones are debug."""
    c = keyed()
    with caplog.at_level(logging.DEBUG, logger="chatcast.multicast"):
        for _ in range(2):
            c.classify(b"plain", THEM, NOW)
            c.classify(signed(1, key=b"other"), THEM, NOW)
            c.classify(signed(1, at=NOW + 600), THEM, NOW)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "dropped a datagram from 127.0.0.1:40001: it is not signed (a sender without the key?)",
        "dropped a datagram from 127.0.0.1:40001: it is signed with another key, or was "
        "altered on the way",
        "dropped a datagram from 127.0.0.1:40001: it is stamped +600 s from this host's "
        "clock, more than 300 s: are the clocks synchronised?",
    ]
    assert counts(c) == {"unsigned": 2, "forged": 2, "stale": 2}


# -- garbage never crashes --------------------------------------------------------------------

ADDRESSES = st.one_of(
    st.tuples(st.sampled_from(["127.0.0.1", "192.0.2.1"]), st.integers(1, 65535)),
    st.tuples(st.just("fe80::1"), st.integers(1, 65535), st.just(0), st.integers(0, 9)),
    st.just(OWN_ADDRESS),
)
DATAGRAMS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda b: MARKER + b, st.binary(max_size=300)),
    st.builds(lambda b: b"{" + b, st.binary(max_size=100)),
    st.builds(
        lambda seq, cut, flip: _mangle(signed(seq), cut, flip),
        st.integers(1, 2**64 - 1),
        st.integers(0, 300),
        st.integers(0, 300),
    ),
)


def _mangle(data: bytes, cut: int, flip: int) -> bytes:
    """``data`` cut to ``cut`` bytes with the byte at ``flip`` changed (where they exist)."""
    mangled = bytearray(data[:cut])
    if flip < len(mangled):
        mangled[flip] ^= 0x20
    return bytes(mangled)


@pytest.mark.parametrize("key", [None, KEY])
@given(datagrams=st.lists(st.tuples(DATAGRAMS, ADDRESSES), max_size=20))
def test_garbage_counted_never_raises(
    key: bytes | None, datagrams: list[tuple[bytes, Address]]
) -> None:
    """Any bytes from any source are classified and counted once; nothing raises."""
    c = classifier(key=key, max_datagram_bytes=256)
    delivered = 0
    for data, addr in datagrams:
        result = c.classify(data, addr, NOW)
        assert isinstance(result, Message | Skip)
        delivered += isinstance(result, Message)
    assert c.received == len(datagrams)
    assert accounted(c, delivered)


@given(garbage=st.lists(DATAGRAMS, max_size=10), count=st.integers(1, 10))
def test_garbage_does_not_disturb_valid_datagrams(garbage: list[bytes], count: int) -> None:
    """Valid datagrams among garbage are all delivered, in order."""
    c = keyed()
    got = []
    for seq in range(1, count + 1):
        for data in garbage:
            c.classify(data, ("192.0.2.1", 9), NOW)
        message = c.classify(signed(seq, sender="00000000000000dd"), THEM, NOW)
        assert isinstance(message, Message)
        got.append(message.seq)
    assert got == list(range(1, count + 1))


# -- the encoder ------------------------------------------------------------------------------


def test_json_encoder_round_trip() -> None:
    """JSON-form datagrams carry name, time, instance and numbers from 1, with no LF."""
    encoder = Encoder(instance=PEER, epoch=1, name="bob")
    first, second = encoder.encode("a\nb", NOW), encoder.encode("c", NOW + 1)
    assert not first.endswith(b"\n")
    assert json.loads(first) == {
        "type": "message", "from": "bob", "text": "a\nb", "ts": NOW, "seq": 1, "instance": PEER
    }  # fmt: skip
    c = classifier()
    assert c.classify(second, THEM, NOW) == Message(
        text="c", sender="bob", timestamp=NOW + 1, seq=2
    )
    assert keyed().classify(first, THEM, NOW) is Skip.UNSIGNED
    assert classifier(instance=PEER).classify(first, THEM, NOW) is Skip.OWN


def test_plain_encoder() -> None:
    """The plain form is the bare text; it has no number and cannot be empty."""
    encoder = Encoder(instance=PEER, epoch=1, name="bob", plain=True)
    assert encoder.encode("halo ✓", NOW) == "halo ✓".encode()
    assert encoder.seq == 0
    with pytest.raises(ValueError, match="empty"):
        encoder.encode("", NOW)
    with pytest.raises(UnicodeEncodeError):
        encoder.encode("\ud800", NOW)


def test_signed_encoder_round_trip() -> None:
    """A keyed encoder's datagrams are accepted by a keyed classifier, numbered from 1."""
    encoder = Encoder(instance=PEER, epoch=7, name="alice", key=KEY)
    c = keyed()
    for n in (1, 2):
        message = c.classify(encoder.encode(f"m{n}", NOW), THEM, NOW)
        assert message == Message(text=f"m{n}", sender="alice", timestamp=NOW, seq=n)
    (peer,) = c.sender_statistics()
    assert (peer.sender_id, peer.epoch, peer.last_seq) == (PEER, 7, 2)


@pytest.mark.parametrize("key", [None, KEY])
def test_too_long_uses_no_number(key: bytes | None) -> None:
    """A datagram over the limit raises MessageTooLong and uses no sequence number."""
    encoder = Encoder(instance=PEER, epoch=1, key=key, max_datagram_bytes=200)
    with pytest.raises(MessageTooLong) as caught:
        encoder.encode("x" * 200, NOW)
    assert caught.value.limit == 200
    if key is not None:
        assert caught.value.size == OVERHEAD + len(b'{"type":"message","text":""}') + 200
    assert encoder.seq == 0
    assert len(encoder.encode("short", NOW)) <= 200
    assert encoder.seq == 1


def test_encoder_refuses_key_with_plain() -> None:
    """A key cannot be combined with the plain form."""
    with pytest.raises(ValueError, match="plain"):
        Encoder(instance=PEER, epoch=1, plain=True, key=KEY)


# -- the configuration ------------------------------------------------------------------------


def test_config_normalises() -> None:
    """create() returns the group as an address and a str key as its UTF-8 bytes."""
    config = MulticastConfig.create("FF05::1", 5004, key="kunci ✓", drop="newest")
    assert (str(config.group), config.key, config.drop) == ("ff05::1", "kunci ✓".encode(), "newest")
    assert MulticastConfig.create("224.1.1.1", 1).key is None


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"group": "10.0.0.1"}, ValueError, "not a multicast group"),
        ({"port": 0}, ValueError, r"port must be in 1\.\.65535"),
        ({"ttl": -1}, ValueError, r"ttl must be in 0\.\.255"),
        ({"name": ""}, ValueError, "name must be a non-empty str"),
        ({"max_datagram_bytes": 65508}, ValueError, r"1\.\.65507, got 65508"),
        ({"group": "ff05::1", "max_datagram_bytes": 65528}, ValueError, r"1\.\.65527"),
        ({"max_queue": 0}, ValueError, r"max_queue must be >= 1"),
        ({"max_queue": 1.5}, TypeError, "max_queue must be an int"),
        ({"receive_buffer_bytes": 0}, ValueError, "receive_buffer_bytes must be >= 1"),
        ({"drop": "random"}, ValueError, "drop must be 'oldest' or 'newest'"),
        ({"key": ""}, ValueError, "key must not be empty"),
        ({"key": "k", "plain": True}, ValueError, "plain=True"),
    ],
)
def test_config_errors(options: dict[str, Any], error: type[Exception], match: str) -> None:
    """Each bad option is refused at creation, naming the value and the allowed range."""
    group = options.pop("group", "224.1.1.1")
    port = options.pop("port", 5004)
    with pytest.raises(error, match=match):
        MulticastConfig.create(group, port, **options)
