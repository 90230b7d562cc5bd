"""Tests for chatcast._core.datagram: the signed multicast datagram, pure (no sockets, no clock).

The format is pinned by an independent implementation of ``docs/multicast.md`` ("Signed
datagrams") written here from the text, not from the module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from chatcast._core.datagram import (
    HEADER_BYTES,
    MARKER,
    MAX_CLOCK_SKEW_MS,
    OVERHEAD,
    WINDOW,
    Drop,
    ReplayGuard,
    SignedDatagram,
    Signer,
    Verifier,
    check_key,
)

KEY = b"correct horse battery staple"
SENDER = "9f2c4e1a0b7d3e55"
EPOCH = 0x6610CDCBEEC15
NOW = 1_700_000_000_000
BODY = b'{"type":"message","from":"alice","text":"halo\\nsemua \xc3\xbc"}'
#: What verify() may return for anything but an untouched valid datagram.
REJECTIONS = {Drop.UNSIGNED, Drop.TRUNCATED, Drop.MALFORMED, Drop.FORGED}


def by_the_book(key: bytes, sender: str, epoch: int, seq: int, time_ms: int, body: bytes) -> bytes:
    """A signed datagram built from the documented format alone."""
    signed = (
        f"chatcast-hmac1 {sender} {epoch:016x} {seq:016x} {time_ms:016x} {len(body):04x} ".encode()
        + body
        + b" "
    )
    return signed + hmac.new(key, signed, hashlib.sha256).hexdigest().encode()


def valid(seq: int = 1, *, time_ms: int = NOW, body: bytes = BODY) -> bytes:
    """A valid datagram from SENDER/EPOCH under KEY."""
    return Signer(KEY, SENDER, EPOCH).sign(seq, time_ms, body)


def signed(seq: int, *, sender: bytes = b"00000000000000aa", epoch: int = 1) -> SignedDatagram:
    """An authentic datagram as the guard sees it, stamped NOW."""
    return SignedDatagram(sender, epoch, seq, NOW, b"{}")


# -- the format ---------------------------------------------------------------------------


def test_format_matches_the_documentation() -> None:
    """Signer produces exactly the documented bytes; the sizes are as documented."""
    data = Signer(KEY, SENDER, EPOCH).sign(7, NOW, BODY)
    assert data == by_the_book(KEY, SENDER, EPOCH, 7, NOW, BODY)
    assert data.startswith(b"chatcast-hmac1 9f2c4e1a0b7d3e55 0006610cdcbeec15 0000000000000007 ")
    assert (HEADER_BYTES, OVERHEAD) == (88, 153)
    assert len(data) == OVERHEAD + len(BODY)
    assert data.decode() == by_the_book(KEY, SENDER, EPOCH, 7, NOW, BODY).decode()  # text-safe


def test_round_trip() -> None:
    """verify() returns exactly what was signed."""
    data = by_the_book(KEY, SENDER, EPOCH, 2**64 - 1, NOW, BODY)
    assert Verifier(KEY).verify(data) == SignedDatagram(
        SENDER.encode(), EPOCH, 2**64 - 1, NOW, BODY
    )


def test_empty_body_round_trip() -> None:
    """An empty body is well-formed at this layer (the receiver then counts it invalid)."""
    result = Verifier(KEY).verify(valid(body=b""))
    assert isinstance(result, SignedDatagram)
    assert result.body == b""


def test_str_key_is_utf8() -> None:
    """A str key signs as its UTF-8 bytes; a bytearray as its bytes."""
    data = Signer(check_key("kunci rahasia ✓"), SENDER, 1).sign(1, NOW, BODY)
    assert Verifier("kunci rahasia ✓".encode()).verify(data) != Drop.FORGED
    assert check_key(bytearray(b"k")) == b"k"


@pytest.mark.parametrize(
    ("key", "error", "match"),
    [
        (b"", ValueError, "key must not be empty"),
        ("", ValueError, "key must not be empty"),
        ("\ud800", ValueError, "UTF-8"),
        (5, TypeError, "key must be bytes or str, got int"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_keys(key: object, error: type[Exception], match: str) -> None:
    """Empty, unencodable and non-bytes keys are refused with a clear message."""
    with pytest.raises(error, match=match):
        check_key(key)


def test_signer_argument_errors() -> None:
    """Out-of-range sender ids, epochs, sequence numbers, times and bodies are refused."""
    for sender in ("9F2C4E1A0B7D3E55", "9f2c", "9f2c4e1a0b7d3e55x", "g" * 16):
        with pytest.raises(ValueError, match="sender must be 16 lowercase hex digits"):
            Signer(KEY, sender, 1)
    for epoch in (-1, 2**64, True):
        with pytest.raises(ValueError, match="epoch must be in"):
            Signer(KEY, SENDER, epoch)
    signer = Signer(KEY, SENDER, 1)
    for seq in (0, -1, 2**64, True):
        with pytest.raises(ValueError, match="seq must be in 1"):
            signer.sign(seq, NOW, BODY)
    with pytest.raises(ValueError, match="time_ms must be in"):
        signer.sign(1, -1, BODY)
    with pytest.raises(ValueError, match="body must be at most 65535 bytes"):
        signer.sign(1, NOW, b"x" * 65536)


# -- verify(): every rejection ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"halo", b'{"type":"message","text":"x","seq":1}', b"\xff\xfe", b"chatcast-hmac1", b"x"],
)
def test_unsigned(data: bytes) -> None:
    """Anything without the whole marker is unsigned."""
    assert Verifier(KEY).verify(data) is Drop.UNSIGNED


def test_truncated_at_every_offset() -> None:
    """A valid datagram cut anywhere after its marker is truncated; inside it, unsigned."""
    data = valid()
    verifier = Verifier(KEY)
    for cut in range(1, len(data)):
        expected = Drop.TRUNCATED if cut >= len(MARKER) else Drop.UNSIGNED
        assert verifier.verify(data[:cut]) is expected, cut


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d + b"x",  # a byte after the tag
        lambda d: d + b" " + d[-64:],  # a second tag
        lambda d: d[:15] + d[15:31].upper() + d[31:],  # uppercase hex: one spelling only
        lambda d: d[:31] + b"-" + d[32:],  # a separator replaced
        lambda d: d[:-65] + b"-" + d[-64:],  # the space before the tag replaced
        lambda d: d[:83] + b"zzzz" + d[87:],  # a length that is not hex
        lambda d: d[:83] + b"0001" + d[87:],  # a length shorter than the body
    ],
)
def test_malformed(mangle: Callable[[bytes], bytes]) -> None:
    """A marker followed by anything but the documented layout is malformed."""
    assert Verifier(KEY).verify(mangle(valid())) is Drop.MALFORMED


def test_longer_length_field_is_truncated() -> None:
    """A length field larger than what arrived reads as truncated (documented order)."""
    data = valid()
    assert Verifier(KEY).verify(data[:83] + b"ffff" + data[87:]) is Drop.TRUNCATED


def test_seq_zero_is_malformed_even_if_signed() -> None:
    """Sequence number 0 is never valid, even correctly signed by a key holder."""
    data = by_the_book(KEY, SENDER, 1, 0, NOW, BODY)
    assert Verifier(KEY).verify(data) is Drop.MALFORMED


def test_wrong_key_is_forged() -> None:
    """A well-formed datagram signed with another key is forged."""
    assert Verifier(b"another key").verify(valid()) is Drop.FORGED
    assert Verifier(KEY + b"x").verify(valid()) is Drop.FORGED


def test_flipped_body_or_tag_byte_is_forged() -> None:
    """One bit flipped in any body or tag byte makes the datagram forged."""
    data = valid()
    verifier = Verifier(KEY)
    for offset in [*range(HEADER_BYTES, len(data) - 65), *range(len(data) - 64, len(data))]:
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[offset] ^= bit
            assert verifier.verify(bytes(flipped)) is Drop.FORGED, (offset, bit)


def test_flipped_byte_anywhere_never_authenticates() -> None:
    """Every single-byte change anywhere is rejected with one of the documented reasons."""
    data = valid()
    verifier = Verifier(KEY)
    for offset in range(len(data)):
        for value in (0x00, 0x20, 0x30, 0x61, 0x7B, 0xFF):
            if data[offset] == value:
                continue
            changed = data[:offset] + bytes([value]) + data[offset + 1 :]
            assert verifier.verify(changed) in REJECTIONS, (offset, value)


@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes are never authentic, and verify() never raises."""
    assert Verifier(KEY).verify(data) in REJECTIONS
    assert Verifier(KEY).verify(MARKER + data) in REJECTIONS


@given(
    seq=st.integers(1, 2**64 - 1),
    body=st.binary(max_size=200),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "insert", "delete", "truncate"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_mutated_datagrams(seq: int, body: bytes, edits: list[tuple[str, int, int]]) -> None:
    """A valid datagram changed in any way is rejected with a documented reason."""
    original = valid(seq, body=body)
    mutated = bytearray(original)
    for operation, where, value in edits:
        at = where % (len(mutated) + 1)
        if operation == "replace" and at < len(mutated):
            mutated[at] = value
        elif operation == "insert":
            mutated[at:at] = bytes([value])
        elif operation == "delete" and at < len(mutated):
            del mutated[at]
        elif operation == "truncate":
            del mutated[at:]
    assume(bytes(mutated) != original)
    assert Verifier(KEY).verify(bytes(mutated)) in REJECTIONS


@given(seq=st.integers(1, 2**64 - 1), time_ms=st.integers(0, 2**64 - 1), body=st.binary())
def test_fuzz_round_trip(seq: int, time_ms: int, body: bytes) -> None:
    """Whatever is signed verifies to the same fields and body."""
    assume(len(body) <= 0xFFFF)
    result = Verifier(KEY).verify(Signer(KEY, SENDER, 2**64 - 1).sign(seq, time_ms, body))
    assert result == SignedDatagram(SENDER.encode(), 2**64 - 1, seq, time_ms, body)


# -- ReplayGuard ----------------------------------------------------------------------------


def outcomes(guard: ReplayGuard, seqs: list[int]) -> list[bool]:
    """Which of ``seqs`` (one sender, one epoch) the guard accepts."""
    return [not isinstance(guard.accept(signed(seq), NOW), Drop) for seq in seqs]


def test_each_sequence_number_accepted_once() -> None:
    """An exact repeat is replayed; the first is accepted."""
    guard = ReplayGuard()
    assert guard.accept(signed(1), NOW) != Drop.REPLAYED
    assert guard.accept(signed(1), NOW) is Drop.REPLAYED


def test_out_of_order_within_window_accepted_once() -> None:
    """Reordered datagrams inside the window are accepted exactly once, filling their gap."""
    guard = ReplayGuard()
    assert outcomes(guard, [1, 4, 3, 2, 3, 2, 4]) == [True, True, True, True, False, False, False]
    assert guard.lost == 0
    assert guard.senders()[0].received == 4


def test_older_than_window_rejected() -> None:
    """A sequence number WINDOW or more behind the newest is rejected, and stays lost."""
    guard = ReplayGuard()
    top = 2 + WINDOW  # the window is now top - 63 .. top
    assert outcomes(guard, [1, top, top - WINDOW, top - WINDOW + 1]) == [True, True, False, True]
    state = guard.senders()[0]
    assert (state.top, state.lost, state.received) == (top, WINDOW - 1, 3)
    assert guard.lost == WINDOW - 1  # 2 .. top - 1 skipped; top - 63 arrived late


def test_gap_counted_as_lost() -> None:
    """Skipped sequence numbers are counted lost, per sender and in total."""
    guard = ReplayGuard()
    outcomes(guard, [1, 2, 5, 6, 1000])
    assert guard.lost == 2 + 993
    assert guard.senders()[0].lost == 995


def test_first_contact_spends_everything_below() -> None:
    """Nothing older than the first datagram heard from an epoch is accepted."""
    guard = ReplayGuard()
    assert outcomes(guard, [50, 49, 1, 51]) == [True, False, False, True]
    assert guard.lost == 0  # a late joiner does not count what it never expected


def test_new_epoch_accepted_old_epoch_rejected() -> None:
    """A greater epoch is a restart (accepted, window afresh); a smaller one is replayed."""
    guard = ReplayGuard()
    assert guard.accept(signed(5, epoch=10), NOW) != Drop.REPLAYED
    assert guard.accept(signed(1, epoch=11), NOW) != Drop.REPLAYED  # restarted
    assert guard.accept(signed(2, epoch=11), NOW) != Drop.REPLAYED
    assert guard.accept(signed(6, epoch=10), NOW) is Drop.REPLAYED  # the old life
    assert guard.accept(signed(1, epoch=11), NOW) is Drop.REPLAYED
    state = guard.senders()[0]
    assert (state.epoch, state.top, state.received, state.lost) == (11, 2, 3, 0)


@pytest.mark.parametrize(
    ("offset", "fresh"),
    [(0, True), (MAX_CLOCK_SKEW_MS, True), (-MAX_CLOCK_SKEW_MS, True), (300_001, False),
     (-300_001, False)],
)  # fmt: skip
def test_stale(offset: int, fresh: bool) -> None:
    """A datagram stamped more than 5 minutes from the receiver's clock is stale."""
    guard = ReplayGuard()
    result = guard.accept(SignedDatagram(b"00000000000000aa", 1, 1, NOW + offset, b""), NOW)
    assert (result is not Drop.STALE) == fresh
    assert len(guard.senders()) == (1 if fresh else 0)  # no state for a stale datagram


def test_state_is_bounded() -> None:
    """At most max_senders senders are remembered; the least recently heard is forgotten."""
    guard = ReplayGuard(max_senders=3)
    for number in range(3):
        guard.accept(signed(1, sender=b"%016x" % number), NOW)
    guard.accept(signed(2, sender=b"%016x" % 0), NOW)  # sender 0 heard again
    guard.accept(signed(1, sender=b"%016x" % 9), NOW)
    assert [state.sender for state in guard.senders()] == [b"%016x" % n for n in (2, 0, 9)]
    # A forgotten sender starts afresh: the documented limit of bounded state.
    assert guard.accept(signed(1, sender=b"%016x" % 1), NOW) != Drop.REPLAYED
    with pytest.raises(ValueError, match="max_senders must be >= 1"):
        ReplayGuard(max_senders=0)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=200))
def test_guard_matches_model(seqs: list[int]) -> None:
    """The window accepts exactly what a simple set-based model of its rules accepts."""
    guard = ReplayGuard()
    first, top, accepted = seqs[0], seqs[0], {seqs[0]}
    assert guard.accept(signed(first), NOW) != Drop.REPLAYED
    for seq in seqs[1:]:
        expected = seq > first and seq not in accepted and seq > top - WINDOW
        result = guard.accept(signed(seq), NOW)
        assert (result is not Drop.REPLAYED) == expected, seq
        if expected:
            accepted.add(seq)
            top = max(top, seq)
    missing = set(range(first, top + 1)) - accepted
    assert guard.lost == len(missing) >= 0
