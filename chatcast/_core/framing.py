"""Newline framing, sans I/O.

:class:`LineDecoder` turns a byte stream, cut anywhere, into text frames. It imports no
asyncio and does no I/O, so the TCP server, the client and the tests all feed it the same way.

Rules (``docs/protocol.md``, "Framing"):

* LF ends a frame; one CR right before the LF is dropped (CRLF is accepted).
* A frame may hold at most ``max_line_bytes`` bytes, terminator excluded. A longer frame is
  reported as :class:`~chatcast.exceptions.LineTooLong` as soon as the limit is passed, never
  after buffering the whole line; the decoder then discards bytes up to the next LF and
  resumes, so the frame after it is decoded normally.
* A frame that is not valid UTF-8 is reported as :class:`~chatcast.exceptions.InvalidFrame`;
  the frames around it are unaffected.

Errors are *returned* in the list of frames, in stream order, not raised: one bad frame must
not cost the good frames decoded from the same read.
"""

from __future__ import annotations

from ..exceptions import InvalidFrame, LineTooLong, ProtocolError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineDecoder"]

#: Default per-frame limit: 64 KiB.
DEFAULT_MAX_LINE_BYTES = 64 * 1024


class LineDecoder:
    """Incremental decoder of LF-terminated UTF-8 frames.

    Args:
        max_line_bytes: The largest frame accepted, in bytes, not counting the terminator.

    Raises:
        ValueError: If ``max_line_bytes`` is not positive.

    The buffer never holds a complete line, so each byte is searched for LF exactly once: a
    line that arrives one byte at a time costs linear, not quadratic, time.
    """

    __slots__ = ("_buffer", "_discarding", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held in the buffer."""
        return len(self._buffer)

    @property
    def discarding(self) -> bool:
        """True while the tail of an over-long frame is being thrown away."""
        return self._discarding

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        """Add received bytes and return every frame they complete.

        Args:
            data: The next bytes of the stream, of any length (empty is fine).

        Returns:
            In stream order, each completed frame as ``str``, or a
            :class:`~chatcast.exceptions.ProtocolError` instance for a frame that was too
            long or not UTF-8. An over-long frame is reported once, when its limit is passed.
        """
        out: list[str | ProtocolError] = []
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return out
            self._discarding = False
            data = data[end + 1 :]
        buffer = self._buffer
        if buffer:
            end = data.find(b"\n")
            if end < 0:
                self._hold(data, out)
                return out
            if len(buffer) + end > self.max_line_bytes + 1:
                # Too long even if it ends in CR: report it without copying it in.
                out.append(LineTooLong(self.max_line_bytes))
            else:
                buffer += data[:end]
                self._emit(bytes(buffer), out)
            buffer.clear()
            data = data[end + 1 :]
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            self._emit(line, out)
        if tail:
            self._hold(tail, out)
        return out

    def flush(self, *, hold_incomplete: bool = False) -> str | ProtocolError | None:
        """Take the unfinished frame in the buffer as if its LF had arrived.

        Used for peers that send lines without a terminator (the lab's clients), after a
        silence. Returns ``None`` when nothing is pending. An over-long frame that was being
        discarded ends here too: the bytes fed next start a new frame.

        Args:
            hold_incomplete: Keep a UTF-8 character cut short at the end of the buffer (its
                first 1 to 3 bytes) for the next frame instead of reporting invalid UTF-8:
                after a mere silence the rest of the character may still be on its way.
        """
        # As if the LF had arrived: an over-long frame being discarded has ended too.
        self._discarding = False
        data = bytes(self._buffer)
        keep = _incomplete_utf8_tail(data) if hold_incomplete else 0
        if len(data) == keep:
            return None
        out: list[str | ProtocolError] = []
        self._emit(data[: len(data) - keep], out)
        del self._buffer[: len(data) - keep]
        return out[0]

    def _emit(self, line: bytes, out: list[str | ProtocolError]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            out.append(LineTooLong(self.max_line_bytes))
            return
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            out.append(InvalidFrame(f"invalid UTF-8 at byte {exc.start}"))

    def _hold(self, data: bytes, out: list[str | ProtocolError]) -> None:
        # Add ``data`` (no LF in it) to the unfinished frame, or, if that passes the limit,
        # report it and start discarding; the buffer never grows past limit + 1 bytes.
        # A partial frame of exactly limit + 1 bytes ending in CR may still be a frame at the
        # limit whose LF is in the next packet: keep it (Twisted test_basic.py pins this).
        size = len(self._buffer) + len(data)
        limit = self.max_line_bytes
        last = data[-1:] or self._buffer[-1:]
        if size > limit + 1 or (size == limit + 1 and last != b"\r"):
            out.append(LineTooLong(limit))
            self._buffer.clear()
            self._discarding = True
        else:
            self._buffer += data


def _incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` are the start of a cut-short UTF-8 character."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        if byte < 0xC0:  # ASCII: nothing is cut short
            return 0
        needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return back if back < needed else 0
    return 0
