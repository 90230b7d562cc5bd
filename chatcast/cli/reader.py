"""Reading a file without blocking the event loop: the console's input, in bytes.

:class:`InputReader` waits with ``loop.add_reader()`` where the selector accepts the file
descriptor, and reads in a daemon thread (:class:`ReaderThread`) where it does not: regular
files and ``/dev/null`` under Linux epoll, some devices under kqueue, and Windows, whose
Proactor loop cannot wait on a console or pipe handle.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, Final

__all__ = ["InputReader", "ReaderThread", "encoding_of", "fileno"]

#: Bytes asked for per read.
CHUNK: Final = 64 * 1024


class InputReader:
    """Deliver what arrives on ``source`` to ``on_data``, on the loop, as it arrives.

    ``b""`` is delivered once, last: end of input, or an error reading (``EIO``: a terminal
    hung up). Nothing is delivered after :meth:`stop`. ``source`` is never closed.

    Args:
        source: A file descriptor or a file object (binary or text).
        loop: The running loop ``on_data`` is called on.
        on_data: Called with each chunk read.
        encoding: How a text file object's text is turned back into bytes.
    """

    def __init__(
        self,
        source: int | IO[Any],
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        *,
        encoding: str,
    ) -> None:
        self._source = source
        self._loop = loop
        self._on_data = on_data
        self._encoding = encoding
        self._fd: int | None = None  # waited on with add_reader
        self._thread: ReaderThread | None = None
        self._paused = False
        fd = fileno(source)
        if fd is not None and sys.platform != "win32":
            try:
                loop.add_reader(fd, self._on_readable)
            except (OSError, ValueError, NotImplementedError):
                # Linux epoll refuses regular files and /dev/null (EPERM); kqueue refuses
                # some devices.
                pass
            else:
                self._fd = fd
                return
        self._thread = ReaderThread(self._blocking_read(fd), loop, on_data)

    def pause(self) -> None:
        """Stop reading until :meth:`resume` (a read under way in the thread completes)."""
        if self._fd is not None and not self._paused:
            self._loop.remove_reader(self._fd)
        if self._thread is not None:
            self._thread.pause()
        self._paused = True

    def resume(self) -> None:
        """Read again after :meth:`pause`."""
        if self._fd is not None and self._paused:
            self._loop.add_reader(self._fd, self._on_readable)
        if self._thread is not None:
            self._thread.resume()
        self._paused = False

    def stop(self) -> None:
        """Stop reading for good; idempotent."""
        if self._fd is not None:
            if not self._paused:
                self._loop.remove_reader(self._fd)
            self._fd = None
        if self._thread is not None:
            # A thread blocked in read() stays there until the next input or EOF (it is a
            # daemon and delivers nothing after this); nothing portable can interrupt it.
            self._thread.stop()
            self._thread = None

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: the terminal hung up
        if not data:
            self.stop()
        self._on_data(data)

    def _blocking_read(self, fd: int | None) -> Callable[[], bytes]:
        source = self._source
        if sys.platform == "win32" and not isinstance(source, int):
            # The console's own reader decodes typed text from UTF-16 (os.read on its file
            # descriptor would give the ANSI code page): one typed line per call.
            read1 = getattr(getattr(source, "buffer", source), "read1", None)
            if read1 is not None:
                return lambda: bytes(read1(CHUNK))
        if fd is not None:
            return lambda: os.read(fd, CHUNK)
        assert not isinstance(source, int)
        read = getattr(source, "read1", None) or source.read
        encoding = self._encoding

        def read_object() -> bytes:
            data = read(CHUNK)
            return data.encode(encoding, "replace") if isinstance(data, str) else bytes(data)

        return read_object


class ReaderThread:
    """A daemon thread that feeds ``on_data`` on the loop with chunks from ``read()``.

    ``b""`` (end of input, or any error reading) is delivered once, last. Nothing is
    delivered after :meth:`stop`.
    """

    def __init__(
        self,
        read: Callable[[], bytes],
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
    ) -> None:
        self._read = read
        self._loop = loop
        self._on_data = on_data
        self._may_read = threading.Event()
        self._may_read.set()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="chatcast-console-stdin", daemon=True)
        self.thread.start()

    def pause(self) -> None:
        self._may_read.clear()

    def resume(self) -> None:
        self._may_read.set()

    def stop(self) -> None:
        self._stopped = True
        self._may_read.set()

    def _run(self) -> None:
        while True:
            self._may_read.wait()
            if self._stopped:
                return
            try:
                data = self._read()
            except Exception:  # closed or unreadable stdin: end of input
                data = b""
            if self._stopped:
                return
            try:
                self._loop.call_soon_threadsafe(self._deliver, data)
            except RuntimeError:  # the loop is closed
                return
            if not data:
                return

    def _deliver(self, data: bytes) -> None:
        if not self._stopped:
            self._on_data(data)


def fileno(stream: int | IO[Any] | None) -> int | None:
    if stream is None or isinstance(stream, int):
        return stream
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation, closed, fake
        return None


def encoding_of(stream: int | IO[Any] | None) -> str:
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):
        return "utf-8"
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return "utf-8"
