"""Find the code examples in README.md and docs/, and run them as a reader would.

The conventions (docs/contributing.md): a fenced ``python`` block is a complete program and is
run, unless an HTML comment on the line(s) right before it marks it otherwise. Markers:

- ``<!-- fragment -->``: part of a program (top-level ``await``, names defined elsewhere). It is
  only compiled, with top-level ``await`` allowed, so a syntax error still fails.
- ``<!-- expect: TEXT -->``: the program's standard output must contain TEXT (repeatable).
- ``<!-- server: PORT -->``: the example talks to a chat server on PORT, as one started with
  ``chatcast server --port PORT``; the test starts one on 127.0.0.1 and writes its real port
  in place of PORT.
- ``<!-- port: PORT -->``: the example listens on PORT; the test writes a free port instead.
- ``<!-- redis: PORT -->``: the example needs a Redis on PORT; the test starts its own
  ``redis-server`` on 127.0.0.1 and writes its port instead.
- ``<!-- interrupt: SIGINT -->`` (or ``SIGTERM``, or both: ``SIGINT SIGTERM``, one run each):
  the example serves until stopped; once its output shows the first ``expect`` text the test
  sends it that signal, and it must exit with status 0, no traceback, within a few seconds,
  having printed every ``expect`` text.
- ``<!-- run -->`` before a ``sh`` block: the block is run with bash (``-e``), in order with
  the page's other runnable blocks, in one scratch directory per page.

Every ``chatcast ...`` line of every ``sh`` block, run or not, is parsed by the command's own
argument parser, so a renamed or removed flag fails too. An example that uses multicast is run
only if it names the loopback interface (``interface="127.0.0.1"``).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


@dataclass
class Block:
    """One fenced code block and the markers right before it."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"

    def has(self, name: str) -> bool:
        return any(m == name or m.startswith(f"{name}:") for m in self.markers)

    def values(self, name: str) -> list[str]:
        return [m.partition(":")[2].strip() for m in self.markers if m.startswith(f"{name}:")]

    @property
    def runnable(self) -> bool:
        if self.lang == "python":
            return not self.has("fragment")
        return self.lang in ("sh", "bash", "console") and self.has("run")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/ (not the build output)."""
    found = [ROOT / "README.md"]
    found += sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
    return found


def extract(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        lang = match["info"].strip().split(" ")[0].lower() if match["info"].strip() else ""
        markers: list[str] = []
        j = i - 1
        while j >= 0 and (m := MARKER.match(lines[j])):
            markers.insert(0, m["body"])
            j -= 1
        body: list[str] = []
        k = i + 1
        while k < len(lines):
            closing = lines[k].strip()
            if closing.startswith(fence[0] * len(fence)) and closing.strip(fence[0]) == "":
                break
            body.append(lines[k][indent:] if lines[k][:indent].strip() == "" else lines[k])
            k += 1
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", markers))
        i = k + 1
    return blocks


def check_fragment(block: Block) -> None:
    """Compile a fragment (top-level ``await`` allowed); raise SyntaxError if it is broken."""
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def command_lines(block: Block) -> Iterator[list[str]]:
    """The argument lists of the ``chatcast`` commands in a shell block (prompts, comments,
    continuations, ``&&`` chains and ``.venv/bin/`` prefixes handled)."""
    text = re.sub(r"\\\n\s*", " ", block.code)
    for raw in text.splitlines():
        line = raw.strip().removeprefix("$ ")
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                name = command[0].rsplit("/", 1)[-1] if command else ""
                if name == "chatcast":
                    yield command[1:]
                elif command[:3] == ["python", "-m", "chatcast"]:
                    yield command[3:]
                command = []
            else:
                command.append(word)


class ExampleFailed(AssertionError):
    """An example did not do what its page says."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def chat_server() -> Iterator[int]:
    """A ``chatcast server`` process on 127.0.0.1, a free port; stopped by its PID."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "chatcast"), "server", "--port", str(port), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, process, "chat server")
        yield port
    finally:
        _stop(process)


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A throw-away ``redis-server`` on 127.0.0.1, a free port, no persistence; stopped by PID."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, "redis-server")
        yield port
    finally:
        _stop(process)


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10 * _scale()
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise ExampleFailed(f"the {what} for the examples did not start")
        time.sleep(0.05)  # polling a port under a deadline


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _scale() -> float:
    return float(os.environ.get("CHATCAST_TIMEOUT_SCALE", "1"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CHATCAST_TOKEN", None)  # examples set what they need themselves
    return env


def _substitute(code: str, ports: dict[str, int]) -> str:
    for old, new in ports.items():
        code = re.sub(rf"\b{re.escape(old)}\b", str(new), code)
    return code


def check_loopback_only(block: Block) -> None:
    """Refuse to run an example that would send multicast off this machine.

    The project's rule: multicast in tests names the loopback interface. An example that uses
    multicast must name ``127.0.0.1`` as its interface; it is not run otherwise.
    """
    uses_multicast = "MulticastChannel" in block.code or "chatcast multicast" in block.code
    if uses_multicast and not re.search(r"""interface[=\s]+["']?127\.0\.0\.1""", block.code):
        raise ExampleFailed(
            f"{block.where}: a multicast example must use interface 127.0.0.1 to be run here "
            "(or be marked as a fragment)"
        )


def run_block(block: Block, workdir: Path, *, timeout: float = 30.0) -> str:
    """Run one runnable block in ``workdir``; return its output, raise ExampleFailed."""
    check_loopback_only(block)
    timeout *= _scale()
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for value in block.values("server"):
            ports[value] = stack.enter_context(chat_server())
        for value in block.values("redis"):
            ports[value] = stack.enter_context(redis_server())
        for value in block.values("port"):
            ports[value] = free_port()
        code = _substitute(block.code, ports)
        if block.lang == "python":
            script = workdir / f"example_{block.line}.py"
            script.write_text(code, encoding="utf-8")
            argv = [sys.executable, script.name]
        else:
            argv = ["bash", "-e", "-o", "pipefail", "-c", code]
        stop = [name for value in block.values("interrupt") for name in value.split()]
        if stop:
            for signame in stop:
                out, err, status = _run_until_interrupted(block, argv, workdir, signame, timeout)
                _check(block, out, err, status, f" after {signame}")
            return out
        else:
            try:
                done = subprocess.run(
                    argv,
                    cwd=workdir,
                    env=_env(),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as exc:
                raise ExampleFailed(
                    f"{block.where}: still running after {timeout:.0f} s\n{_text(exc.stdout)}"
                    f"{_text(exc.stderr)}"
                ) from None
            out, err, status = done.stdout, done.stderr, done.returncode
    _check(block, out, err, status, "")
    return out


def _check(block: Block, out: str, err: str, status: int, when: str) -> None:
    if status != 0:
        raise ExampleFailed(f"{block.where}: exit status {status}{when}\n{out}{err}")
    if "Traceback (most recent call last)" in err:
        raise ExampleFailed(f"{block.where}: printed a traceback{when}\n{err}")
    for text in block.values("expect"):
        if text not in out:
            raise ExampleFailed(f"{block.where}: output lacks {text!r}{when}\n{out}{err}")


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _run_until_interrupted(
    block: Block, argv: list[str], workdir: Path, signame: str, timeout: float
) -> tuple[str, str, int]:
    """Start a serving example, wait for its expected output, signal it, collect it."""
    expected = block.values("expect")
    if not expected:
        raise ExampleFailed(f"{block.where}: an interrupt example needs an expect marker")
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    chunks: list[bytes] = []
    errors: list[bytes] = []
    readers = [
        threading.Thread(target=_drain, args=(process.stdout, chunks), daemon=True),
        threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True),
    ]
    for reader in readers:
        reader.start()

    def out() -> str:
        return b"".join(chunks).decode(errors="replace")

    try:
        deadline = time.monotonic() + timeout
        while expected[0] not in out():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                for reader in readers:
                    reader.join(5)
                raise ExampleFailed(
                    f"{block.where}: never printed {expected[0]!r} before the signal\n{out()}"
                    f"{b''.join(errors).decode(errors='replace')}"
                )
            time.sleep(0.02)  # polling a pipe's output under a deadline
        process.send_signal(SIGNALS[signame])
        try:
            process.wait(10 * _scale())
        except subprocess.TimeoutExpired:
            raise ExampleFailed(f"{block.where}: did not stop within 10 s of {signame}") from None
        for reader in readers:
            reader.join(5)
        return out(), b"".join(errors).decode(errors="replace"), process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _drain(stream: IO[bytes], into: list[bytes]) -> None:
    with stream:
        for line in iter(stream.readline, b""):
            into.append(line)


def run_page(path: Path, workdir: Path) -> list[str]:
    """Run every runnable block of a page, in order, in ``workdir``; check every fragment.

    Returns one line per block run (where, and how long it took).
    """
    report = []
    for block in extract(path):
        if block.lang == "python" and not block.runnable:
            try:
                check_fragment(block)
            except SyntaxError as exc:
                raise ExampleFailed(f"{block.where}: fragment does not compile: {exc}") from None
        elif block.runnable:
            started = time.monotonic()
            run_block(block, workdir)
            report.append(f"{block.where} {time.monotonic() - started:.1f} s")
    return report
