"""The text-mode fast path's check: is a whole read nothing but plain chat lines?

A text-mode read of plain chat (``nc``, the lab's clients) is relayed in bulk: its lines are
checked once over the whole read, in C, instead of one by one through the decoder and the
command parser. What is relayed, and the order, are the same either way; this module only
says whether a read qualifies. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from ..exceptions import InvalidFrame
from .commands import check_text

__all__ = ["plain_chat", "plain_lines"]

_PLAIN_ASCII: Final = bytes(range(0x20, 0x7F)) + b"\t\n"
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
# The non-ASCII characters check_text refuses, as UTF-8: C1 controls (C2 80-9F), U+2028-U+202E
# (E2 80 A8-AE), U+2066-U+2069 (E2 81 A6-A9), U+FEFF (EF BB BF).
_BAD_UTF8: Final = re.compile(
    rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]|\xef\xbb\xbf"
)


def plain_chat(line: str) -> bool:
    """True if a text-mode ``line`` is a chat message (not empty, not a command, clean)."""
    if not line or line[0] == "/":
        return False
    try:
        check_text(line)
    except InvalidFrame:
        return False
    return True


def plain_lines(data: bytes, start: int, end: int, max_line_bytes: int) -> list[str] | None:
    """The lines of ``data[start:end]`` if every one is plain chat text, else None.

    None means "take the per-frame path": an empty line, a ``/`` command, invalid UTF-8, a
    character :func:`~chatcast._core.commands.check_text` refuses, or a line that may be over
    ``max_line_bytes``. ``data[end]`` is the read's last LF.
    """
    raw = data[start:end]
    # What check_text refuses, found in C: deleting every printable ASCII byte, tab and
    # LF leaves nothing in a clean ASCII read; an ASCII byte left is a control character.
    # Non-ASCII reads also need the C1 controls and the invisible formatting characters
    # (_BAD_UTF8); surrogates and other invalid UTF-8 fail to decode.
    rest = raw.translate(None, _PLAIN_ASCII)
    if rest and (rest.translate(None, _HIGH_BYTES) or _BAD_UTF8.search(raw) is not None):
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if not text or text[0] in "\n/" or text[-1] == "\n" or "\n\n" in text or "\n/" in text:
        return None  # an empty line or a command: the per-frame path handles those
    lines = text.split("\n")
    if end - start > max_line_bytes and (
        not text.isascii() or max(map(len, lines)) > max_line_bytes
    ):
        return None  # some line may be over the limit: the decoder says which
    return lines
