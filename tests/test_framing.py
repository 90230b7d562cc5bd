"""Tier 1: the sans-I/O LineDecoder, fed bytes cut at every offset and at random."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcast._core.framing import DEFAULT_MAX_LINE_BYTES, LineDecoder
from chatcast.exceptions import InvalidFrame, LineTooLong, ProtocolError

#: A decoded frame in comparable form: the text, or (error class name, message).
Frame = str | tuple[str, str]

LIMIT = 8
TOO_LONG: Frame = ("LineTooLong", f"line longer than {LIMIT} bytes")


def norm(item: str | ProtocolError) -> Frame:
    """Make a decoder result comparable (exception instances never compare equal)."""
    if isinstance(item, str):
        return item
    return (type(item).__name__, str(item))


def run(chunks: Iterable[bytes], limit: int = LIMIT) -> tuple[list[Frame], Frame | None]:
    """Feed ``chunks`` to a fresh decoder; return the frames and what ``flush()`` gives."""
    decoder = LineDecoder(limit)
    frames = [norm(item) for chunk in chunks for item in decoder.feed(chunk)]
    rest = decoder.flush()
    return frames, None if rest is None else norm(rest)


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut ``stream`` at the sorted offsets ``cuts`` (repeats give empty chunks)."""
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def model_line(line: bytes, limit: int) -> Frame:
    """What one complete frame decodes to, by the rules in the module docstring."""
    line = line.removesuffix(b"\r")
    if len(line) > limit:
        return ("LineTooLong", f"line longer than {limit} bytes")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ("InvalidFrame", f"invalid UTF-8 at byte {exc.start}")


def model(stream: bytes, limit: int) -> tuple[list[Frame], Frame | None]:
    """Reference decoder over the whole stream at once: frames, then what flush() gives."""
    *lines, tail = stream.split(b"\n")
    frames = [model_line(line, limit) for line in lines]
    # An unfinished frame is reported as soon as it cannot be a frame within the limit:
    # limit + 1 bytes is still fine if the last one is a CR (its LF may come next).
    size = len(tail)
    if size > limit + 1 or (size == limit + 1 and not tail.endswith(b"\r")):
        frames.append(("LineTooLong", f"line longer than {limit} bytes"))
        return frames, None
    return frames, model_line(tail, limit) if tail else None


STREAMS: dict[str, bytes] = {
    "plain": b"hello\nworld\n",
    "crlf": b"one\r\ntwo\r\n\r\nthree\n",
    "lone-cr": b"a\rb\n\r\rx\r\n\r\n",
    "empty-lines": b"\n\n\r\n\n",
    "at-limit": b"12345678\n12345678\r\nok\n",
    "at-limit-cr-cr": b"12345678\r\r\nok\n",
    "limit+1": b"123456789\nok\n",
    "limit+1-cr-then-byte": b"12345678\rX\nok\n",
    "long-then-ok": b"x" * 20 + b"\nok\n",
    "long-unterminated": b"ok\n" + b"x" * 20,
    "invalid-utf8": b"ok\n\xff\xfe\nfine\n",
    "multibyte": "é☕\n🎉\n".encode(),
    "truncated-multibyte": b"caf\xc3\nok\n",
    "partial-tail": b"ok\npartial",
    "partial-at-limit-cr": b"ok\n12345678\r",
    "mixed": b"a\r\n\n" + b"y" * 9 + b"\r\n\xc3\xa9\xc3\n\r\rb",
}


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_streams_decode_as_the_model(stream: bytes) -> None:
    """Fed whole, each sample stream decodes exactly as the reference rules say."""
    assert run([stream]) == model(stream, LIMIT)


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_split_at_every_offset(stream: bytes) -> None:
    """A stream cut in two at any byte offset gives the same frames as fed whole."""
    whole = run([stream])
    for cut in range(len(stream) + 1):
        assert run(split_at(stream, [cut])) == whole, cut


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_one_byte_at_a_time(stream: bytes) -> None:
    """A stream fed one byte at a time gives the same frames as fed whole."""
    assert run(stream[i : i + 1] for i in range(len(stream))) == run([stream])


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_three_pieces_at_every_pair_of_offsets(stream: bytes) -> None:
    """A stream cut in three at every pair of offsets gives the same frames as fed whole."""
    whole = run([stream])
    for cuts in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        assert run(split_at(stream, cuts)) == whole, cuts


def test_empty_feeds_change_nothing() -> None:
    """feed(b'') returns nothing and leaves any partial frame in place."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"") == []
    assert decoder.feed(b"ab") == []
    assert decoder.feed(b"") == []
    assert decoder.pending == 2
    assert decoder.feed(b"\n") == ["ab"]


_BYTES = st.sampled_from([b"a", b"\r", b"\n", b"\xc3", b"\xa9", b"\xff", "☕".encode()])


@settings(deadline=None)
@given(
    stream=st.lists(_BYTES, max_size=60).map(b"".join),
    limit=st.integers(1, 10),
    data=st.data(),
)
def test_random_streams_random_chunks(stream: bytes, limit: int, data: st.DataObject) -> None:
    """Random bytes (CR, LF, UTF-8 pieces, junk) cut at random points decode as the model."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert run(split_at(stream, cuts), limit) == model(stream, limit)


_LINE_TEXT = st.text(
    st.one_of(st.characters(codec="utf-8", exclude_characters="\n"), st.just("\r"))
)


@settings(deadline=None)
@given(lines=st.lists(_LINE_TEXT, max_size=20), newline=st.sampled_from(["\n", "\r\n"]))
def test_random_lines_round_trip(lines: list[str], newline: str) -> None:
    """Lines of any text joined with LF or CRLF and chunked at random decode to themselves."""
    stream = "".join(line + newline for line in lines).encode()
    expected = lines if newline == "\r\n" else [line.removesuffix("\r") for line in lines]
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        assert run(chunks, DEFAULT_MAX_LINE_BYTES) == (expected, None)


@settings(deadline=None)
@given(lines=st.lists(_LINE_TEXT, max_size=20), data=st.data())
def test_random_lines_random_chunks(lines: list[str], data: st.DataObject) -> None:
    """CRLF-joined lines cut at random offsets decode to exactly the original lines."""
    stream = "".join(line + "\r\n" for line in lines).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert run(split_at(stream, cuts), DEFAULT_MAX_LINE_BYTES) == (lines, None)


# -- line endings ---------------------------------------------------------------------------


def test_crlf_accepted() -> None:
    """CRLF ends a frame like LF; the CR is not part of the frame."""
    assert LineDecoder().feed(b"hi\r\nthere\n") == ["hi", "there"]


def test_only_one_cr_before_lf_dropped() -> None:
    """Of several CRs before LF only the last is dropped."""
    assert LineDecoder().feed(b"hi\r\r\n\r\r\r\n") == ["hi\r", "\r\r"]


def test_lone_cr_inside_line_kept() -> None:
    """A CR not followed by LF is text, not a line end."""
    assert LineDecoder().feed(b"a\rb\n\rc\n") == ["a\rb", "\rc"]


def test_cr_then_lf_in_next_feed() -> None:
    """A CRLF split between two feeds still ends the frame without the CR."""
    decoder = LineDecoder()
    assert decoder.feed(b"hi\r") == []
    assert decoder.feed(b"\nnext\r") == ["hi"]
    assert decoder.feed(b"\n") == ["next"]


def test_empty_lines_give_empty_frames() -> None:
    """An empty line (LF or CRLF alone) is an empty frame, not skipped."""
    assert LineDecoder().feed(b"\n\r\n\n") == ["", "", ""]


# -- limits ----------------------------------------------------------------------------------


def test_default_limit_is_64_kib() -> None:
    """The default per-frame limit is 64 KiB."""
    assert DEFAULT_MAX_LINE_BYTES == 65536
    assert LineDecoder().max_line_bytes == DEFAULT_MAX_LINE_BYTES


@pytest.mark.parametrize("bad", [0, -1])
def test_limit_below_one_rejected(bad: int) -> None:
    """max_line_bytes < 1 is a ValueError naming the bad value."""
    with pytest.raises(ValueError, match=rf"max_line_bytes must be >= 1, got {bad}"):
        LineDecoder(bad)


def test_limit_of_one() -> None:
    """With a limit of 1 byte, one-byte frames pass and two-byte frames do not."""
    frames = LineDecoder(1).feed(b"a\n\nab\nb\r\n")
    assert [norm(f) for f in frames] == ["a", "", ("LineTooLong", "line longer than 1 bytes"), "b"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_at_limit_accepted(newline: bytes) -> None:
    """A frame of exactly max_line_bytes is accepted, with LF or CRLF."""
    assert LineDecoder(LIMIT).feed(b"a" * LIMIT + newline) == ["a" * LIMIT]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_line_at_limit_newline_in_next_packet(newline: bytes) -> None:
    """A frame at the limit whose LF or CRLF arrives in the next packet is accepted (Twisted)."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"a" * LIMIT) == []
    assert decoder.feed(newline + b"ok\n") == ["a" * LIMIT, "ok"]


def test_line_at_limit_cr_then_lf_in_next_packet() -> None:
    """A frame at the limit plus CR is held (limit + 1 bytes) until its LF arrives."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"a" * LIMIT + b"\r") == []
    assert decoder.pending == LIMIT + 1
    assert not decoder.discarding
    assert decoder.feed(b"\n") == ["a" * LIMIT]
    assert decoder.pending == 0


@pytest.mark.parametrize("after", [b"x", b"x\n", b"\r", b"\r\n"])
def test_line_at_limit_cr_then_more_is_too_long(after: bytes) -> None:
    """Limit bytes plus CR followed by anything but LF is over the limit (one CR is dropped)."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"a" * LIMIT + b"\r") == []
    [error] = decoder.feed(after)
    assert isinstance(error, LineTooLong)
    # Ended by its own LF, the next LF is an empty frame; otherwise it ends the discard.
    expected = ["", "ok"] if after.endswith(b"\n") else ["ok"]
    assert decoder.feed(b"\nok\n") == expected


def test_limit_plus_one_with_lf_reported_and_next_line_decoded() -> None:
    """limit + 1 bytes then LF is one LineTooLong; the next line is decoded normally."""
    frames = LineDecoder(LIMIT).feed(b"a" * (LIMIT + 1) + b"\nnext\n")
    assert len(frames) == 2
    error, after = frames
    assert isinstance(error, LineTooLong)
    assert error.limit == LIMIT
    assert str(error) == f"line longer than {LIMIT} bytes"
    assert after == "next"


def test_too_long_tail_never_delivered() -> None:
    """Wherever an over-long line is cut, no piece of it comes out as a frame of its own."""
    stream = b"0123456789tail\nnext\n"
    for cut in range(len(stream) + 1):
        for chunks in (split_at(stream, [cut]), split_at(stream, [cut, cut + 3])):
            assert run(chunks) == ([TOO_LONG, "next"], None), chunks


def test_too_long_reported_as_soon_as_limit_passed() -> None:
    """An unterminated frame is reported by the feed that passes the limit, not at its LF."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"a" * LIMIT) == []
    assert not decoder.discarding
    [error] = decoder.feed(b"a")
    assert isinstance(error, LineTooLong)
    assert error.limit == LIMIT
    assert decoder.discarding
    assert decoder.pending == 0


def test_discarding_resumes_at_next_lf() -> None:
    """After an over-long frame, bytes up to the next LF are dropped and then decoding resumes."""
    decoder = LineDecoder(LIMIT)
    [error] = decoder.feed(b"x" * (LIMIT + 5))
    assert isinstance(error, LineTooLong)
    assert decoder.feed(b"y" * 100) == []
    assert decoder.feed(b"zz\r") == []
    assert decoder.discarding
    assert decoder.feed(b"\nok\npart") == ["ok"]
    assert not decoder.discarding
    assert decoder.pending == 4


def test_flood_without_lf_memory_bounded() -> None:
    """10 MiB with no LF in 64 KiB reads: one LineTooLong, never more than limit + 1 held."""
    decoder = LineDecoder()
    chunk = b"x" * 65536
    frames: list[str | ProtocolError] = []
    for _ in range(10 * 1024 * 1024 // len(chunk)):
        frames += decoder.feed(chunk)
        assert decoder.pending <= DEFAULT_MAX_LINE_BYTES + 1
    assert len(frames) == 1
    assert isinstance(frames[0], LineTooLong)
    assert frames[0].limit == DEFAULT_MAX_LINE_BYTES
    assert decoder.feed(b"\nafter\n") == ["after"]


def test_huge_single_feed_not_buffered() -> None:
    """One huge read, without or with its LF, holds nothing over the limit and is one error."""
    decoder = LineDecoder(LIMIT)
    assert [norm(f) for f in decoder.feed(b"x" * 1_000_000)] == [TOO_LONG]
    assert decoder.pending == 0
    assert decoder.feed(b"\nab") == []
    assert [norm(f) for f in decoder.feed(b"x" * 1_000_000 + b"\nok\n")] == [TOO_LONG, "ok"]
    assert decoder.pending == 0


# -- UTF-8 -----------------------------------------------------------------------------------


def test_invalid_utf8_is_an_error_for_that_frame_only() -> None:
    """A frame that is not UTF-8 becomes InvalidFrame; the frames around it are intact."""
    frames = LineDecoder().feed(b"before\nab\xffcd\nafter\n")
    assert len(frames) == 3
    before, error, after = frames
    assert (before, after) == ("before", "after")
    assert isinstance(error, InvalidFrame)
    assert str(error) == "invalid UTF-8 at byte 2"


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc3", b"caf\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"],
    ids=["ff", "truncated", "truncated-at-end", "overlong", "surrogate", "above-max"],
)
def test_invalid_utf8_forms(bad: bytes) -> None:
    """Truncated, overlong, surrogate and out-of-range sequences are all InvalidFrame."""
    frames = LineDecoder().feed(b"ok\n" + bad + b"\nok\n")
    assert frames[0] == frames[2] == "ok"
    assert isinstance(frames[1], InvalidFrame)


def test_multibyte_char_split_across_feeds_is_valid() -> None:
    """A UTF-8 character cut between feeds is joined back, not reported as invalid."""
    decoder = LineDecoder()
    encoded = "é🎉\n".encode()
    frames: list[str | ProtocolError] = []
    for i in range(len(encoded)):
        frames += decoder.feed(encoded[i : i + 1])
    assert frames == ["é🎉"]


def test_limit_counts_bytes_not_characters() -> None:
    """The limit is in UTF-8 bytes: four 2-byte characters fill a limit of 8."""
    decoder = LineDecoder(LIMIT)
    assert decoder.feed("éééé\n".encode()) == ["éééé"]
    [error] = decoder.feed("éééé!\n".encode())
    assert isinstance(error, LineTooLong)


# -- flush -----------------------------------------------------------------------------------


def test_flush_returns_partial_and_resets() -> None:
    """flush() hands back the unfinished frame once, and the decoder starts afresh."""
    decoder = LineDecoder()
    assert decoder.flush() is None
    assert decoder.feed(b"done\npart") == ["done"]
    assert decoder.pending == 4
    assert decoder.flush() == "part"
    assert decoder.pending == 0
    assert decoder.flush() is None
    assert decoder.feed(b"new\n") == ["new"]


def test_flush_drops_one_cr() -> None:
    """flush() treats the partial frame as if its LF had come: one trailing CR is dropped."""
    decoder = LineDecoder(LIMIT)
    decoder.feed(b"a" * LIMIT + b"\r")
    assert decoder.flush() == "a" * LIMIT


def test_flush_invalid_utf8() -> None:
    """flush() of a partial frame that is not UTF-8 gives InvalidFrame, not an exception."""
    decoder = LineDecoder()
    decoder.feed(b"caf\xc3")
    assert isinstance(decoder.flush(), InvalidFrame)
    assert decoder.pending == 0


def test_flush_ends_discarding() -> None:
    """flush() while discarding an over-long frame ends it: what comes next is a new frame."""
    decoder = LineDecoder(LIMIT)
    [error] = decoder.feed(b"x" * (LIMIT + 1))
    assert isinstance(error, LineTooLong)
    assert decoder.flush() is None
    assert not decoder.discarding
    assert decoder.feed(b"hello") == []
    assert decoder.flush() == "hello"


# -- cost and purity -------------------------------------------------------------------------


class _Meter:
    """Counts the bytes that searches, splits, slices and copies go over."""

    work: ClassVar[int] = 0

    @classmethod
    def add(cls, n: int) -> None:
        cls.work += n


_METERED = (
    "find",
    "index",
    "rfind",
    "rindex",
    "count",
    "split",
    "rsplit",
    "partition",
    "rpartition",
    "splitlines",
    "decode",
    "endswith",
    "startswith",
    "__contains__",
)


def _metered(base: type[Any]) -> type[Any]:
    """A subclass of bytes/bytearray whose scanning methods charge len(self) to _Meter."""

    def wrap(name: str) -> Any:
        method = getattr(base, name)

        def scan(self: Any, *args: Any, **kwargs: Any) -> Any:
            _Meter.add(len(self))
            return method(self, *args, **kwargs)

        return scan

    def getitem(self: Any, key: Any) -> Any:
        result = base.__getitem__(self, key)
        if isinstance(key, slice):
            _Meter.add(len(result))
        return result

    def to_bytes(self: Any) -> bytes:
        _Meter.add(len(self))
        return bytes(memoryview(self))

    namespace: dict[str, Any] = {name: wrap(name) for name in _METERED}
    namespace["__getitem__"] = getitem
    namespace["__bytes__"] = to_bytes
    return type(f"Metered{base.__name__}", (base,), namespace)


MeteredBytes = _metered(bytes)
MeteredBytearray = _metered(bytearray)


def test_slow_line_costs_linear_work() -> None:
    """A 60 KiB line fed one byte at a time is scanned a bounded number of times per byte."""
    size = 60 * 1024
    decoder = LineDecoder()
    # Meter the decoder's own buffer too: a rescan of it on every feed is the quadratic bug.
    decoder._buffer = MeteredBytearray()
    _Meter.work = 0
    frames: list[str | ProtocolError] = []
    for _ in range(size):
        frames += decoder.feed(MeteredBytes(b"x"))
    frames += decoder.feed(MeteredBytes(b"\n"))
    assert frames == ["x" * size]
    assert type(decoder._buffer) is MeteredBytearray
    # Linear: a few passes per byte. Rescanning the buffer would be ~size**2 / 2 = 1.9e9.
    assert 0 < _Meter.work <= 10 * size


@pytest.mark.parametrize("text", ["héllo", "日本語", "a😀b", "ü"])
def test_flush_holds_a_character_cut_short(text: str) -> None:
    """flush(hold_incomplete=True) never splits a UTF-8 character: a silence mid-character."""
    data = text.encode()
    for cut in range(1, len(data)):
        decoder = LineDecoder()
        assert decoder.feed(data[:cut]) == []
        first = decoder.flush(hold_incomplete=True)
        assert decoder.feed(data[cut:]) == []
        second = decoder.flush(hold_incomplete=True)
        parts = [part for part in (first, second) if part is not None]
        assert all(isinstance(part, str) for part in parts)
        assert "".join(str(part) for part in parts) == text
        assert decoder.pending == 0


def test_flush_without_hold_reports_a_character_cut_short() -> None:
    """At end of stream (plain flush) a cut-short character is invalid UTF-8."""
    decoder = LineDecoder()
    decoder.feed("é".encode()[:1])
    assert isinstance(decoder.flush(), InvalidFrame)
