"""Every example in README.md and docs/ runs as its page says (tests/docs_examples.py)."""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import chatcast
from chatcast.cli.parser import build_parser
from tests import docs_examples as ex

PAGES = ex.pages()
ALL_BLOCKS = [block for page in PAGES for block in ex.extract(page)]


def _id(path: Path) -> str:
    return str(path.relative_to(ex.ROOT))


def test_pages_found() -> None:
    """The page walk finds the README and the docs, and runnable examples in them."""
    names = {_id(p) for p in PAGES}
    assert {"README.md", "docs/tutorial.md", "docs/security.md"} <= names
    assert not [n for n in names if "_build" in n]
    assert sum(b.runnable and b.lang == "python" for b in ALL_BLOCKS) >= 5


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.lang == "python" and not b.runnable],
    ids=lambda b: b.where,
)
def test_fragment_compiles(block: ex.Block) -> None:
    """A block marked as a fragment still compiles (top-level await allowed)."""
    ex.check_fragment(block)


SHELL = [b for b in ALL_BLOCKS if b.lang in ("sh", "bash", "console")]
COMMANDS = [(b, argv) for b in SHELL for argv in ex.command_lines(b)]


def test_commands_found() -> None:
    """The shell blocks hold chatcast command lines (so the parse check is not vacuous)."""
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS} >= {"server", "client", "multicast", "demo"}


@pytest.mark.parametrize(
    ("block", "argv"),
    COMMANDS,
    ids=[f"{b.where}:{' '.join(a)[:40]}" for b, a in COMMANDS],
)
def test_command_line_parses(block: ex.Block, argv: list[str]) -> None:
    """Every chatcast command line in the docs is accepted by the command's own parser."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{block.where}: `chatcast {' '.join(argv)}` is refused (exit {exc.code})")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(b.runnable for b in ex.extract(p))],
    ids=_id,
)
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    """Each page's runnable examples run, in order, in one scratch directory, as a reader's."""
    blocks = [b for b in ex.extract(page) if b.runnable]
    for tool in ("openssl", "socat"):
        if any(tool in b.code for b in blocks) and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    if any(b.has("redis") for b in blocks):
        if shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None:
            pytest.skip("redis-server or redis-py is missing (.ci/run installs both)")
    ex.run_page(page, tmp_path)


# -- the runner itself, on synthetic pages ----------------------------------------------------

GOOD = """\
# A page

<!-- expect: 42 -->
```python
print(6 * 7)
```

<!-- fragment -->
```python
await something_defined_elsewhere()
```

```sh
chatcast server --port 8080    # not run, only parsed
```
"""


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_runner_passes_a_good_page(tmp_path: Path) -> None:
    """A page whose examples work passes; the fragment is compiled, not run."""
    page = _page(tmp_path, GOOD)
    blocks = ex.extract(page)
    assert [(b.lang, b.runnable) for b in blocks] == [
        ("python", True),
        ("python", False),
        ("sh", False),
    ]
    assert blocks[0].line == 4
    assert blocks[0].values("expect") == ["42"]
    assert list(ex.command_lines(blocks[2])) == [["server", "--port", "8080"]]
    assert len(ex.run_page(page, tmp_path)) == 1


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ("```python\nprint(undefined_name)\n```\n", "NameError"),
        ("<!-- expect: 43 -->\n```python\nprint(6 * 7)\n```\n", "lacks '43'"),
        ("```python\nimport sys\nsys.exit(3)\n```\n", "exit status 3"),
        ("<!-- fragment -->\n```python\nawait (\n```\n", "does not compile"),
        ("<!-- run -->\n```sh\nfalse\necho never\n```\n", "exit status 1"),
        (
            "```python\nimport asyncio\nasyncio.run(asyncio.sleep(30))\n```\n",
            "still running",
        ),
        (
            "```python\nfrom chatcast import MulticastChannel\n"
            "MulticastChannel('239.1.2.3', 5004, interface='eth0')\n```\n",
            "must use interface 127.0.0.1",
        ),
    ],
    ids=[
        "name-error",
        "wrong-output",
        "exit-status",
        "fragment-syntax",
        "shell",
        "hangs",
        "multicast-off-loopback",
    ],
)
def test_runner_fails_a_broken_example(
    tmp_path: Path, broken: str, complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately broken example fails the run, and the failure says where and why."""
    monkeypatch.setenv("CHATCAST_TIMEOUT_SCALE", "0.05")  # the hanging one: 1.5 s, not 30
    page = _page(tmp_path, GOOD + "\n" + broken)
    with pytest.raises(ex.ExampleFailed, match=complaint) as caught:
        ex.run_page(page, tmp_path)
    assert "page.md:" in str(caught.value)


def test_runner_catches_a_traceback_on_interrupt(tmp_path: Path) -> None:
    """A serving example that dies with a traceback on Ctrl-C fails its interrupt check."""
    page = _page(
        tmp_path,
        "<!-- interrupt: SIGINT -->\n<!-- expect: up -->\n```python\n"
        "import asyncio\n\nasync def main():\n    print('up', flush=True)\n"
        "    await asyncio.Event().wait()\n\nasyncio.run(main())\n```\n",
    )
    with pytest.raises(ex.ExampleFailed, match=r"exit status|traceback"):
        ex.run_page(page, tmp_path)


def test_cli_parse_check_catches_a_bad_flag() -> None:
    """A documented command line with a flag the parser does not know is caught."""
    block = ex.Block(Path("x.md"), 1, "sh", "chatcast server --no-such-flag\n")
    (argv,) = ex.command_lines(block)
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


# -- the reference covers every public name ----------------------------------------------------


def _inventory_names(path: Path) -> set[str]:
    """The object names in a Sphinx ``objects.inv`` (version 2: four header lines, then
    zlib-compressed lines of ``name domain:role priority uri display``)."""
    data = path.read_bytes()
    header = data.split(b"\n", 4)
    assert header[0] == b"# Sphinx inventory version 2"
    lines = zlib.decompress(header[4]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reference_has_every_public_name(tmp_path: Path) -> None:
    """The built site's inventory has an entry for every name in chatcast.__all__ (computed
    from __all__, so names added later are covered), and the CLI page every subcommand."""
    if importlib.util.find_spec("sphinx") is None and not os.environ.get("CHATCAST_DOCS_HTML"):
        pytest.skip("sphinx is not installed: pip install -e '.[docs]'")
    built = os.environ.get("CHATCAST_DOCS_HTML")  # .ci/run: the site it has just built
    if built:
        out = Path(built)
    else:
        out = tmp_path / "html"
        # In a subprocess, as the documented command runs it (and away from this suite's
        # warnings-as-errors filter, which would trip on Sphinx's own deprecation warnings).
        argv = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html"]
        done = subprocess.run(
            [*argv, str(ex.ROOT / "docs"), str(out)],
            capture_output=True,
            text=True,
            timeout=110,
        )
        assert done.returncode == 0, done.stderr
    documented = _inventory_names(out / "objects.inv")
    missing = [n for n in chatcast.__all__ if f"chatcast.{n}" not in documented]
    assert missing == []
    _check_defaults(out / "reference")
    cli = (out / "reference" / "cli.html").read_text(encoding="utf-8")
    checked = 0
    for path, parser in _parsers(["chatcast"], build_parser()):
        assert f'id="{"-".join(path)}"' in cli, f"no section for {' '.join(path)}"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert option in cli, f"{' '.join(path)} {option} is not on the CLI page"
                checked += 1
    assert checked > 40


def _check_defaults(reference: Path) -> None:
    """Each public class's constructor arguments are shown with their defaults, and each
    public dataclass's fields are described."""
    shown = set()
    for page in reference.glob("*.html"):
        for param in re.findall(r'<em class="sig-param">(.*?)</em>', page.read_text("utf-8")):
            shown.add(html.unescape(re.sub(r"<[^>]+>", "", param)).replace(" ", ""))
    names = {p.split(":")[0].split("=")[0] for p in shown}
    checked = 0
    for name in chatcast.__all__:
        obj = getattr(chatcast, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for param in inspect.signature(obj).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            assert param.name in names, f"{name}({param.name}) is not in the reference"
            if param.default is not param.empty:
                default = repr(param.default).replace(" ", "")
                assert any(p.endswith(f"={default}") and p.startswith(param.name) for p in shown), (
                    f"{name}({param.name}={default}) is not in the reference"
                )
                checked += 1
    assert checked > 50
    # Every field of every public dataclass (the statistics, Message) is described.
    text = "".join(page.read_text("utf-8") for page in reference.glob("*.html"))
    for name in chatcast.__all__:
        obj = getattr(chatcast, name)
        if dataclasses.is_dataclass(obj):
            for field in dataclasses.fields(obj):
                assert f"<strong>{field.name}</strong>" in text, f"{name}.{field.name} undocumented"


def _parsers(
    path: list[str], parser: argparse.ArgumentParser
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every (sub)command's parser, with its command path."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers([*path, name], sub)
    return found


# -- security.md's text-mode TLS lines, against a real TLS server --------------------------------


def _tls_lines() -> list[str]:
    page = ex.ROOT / "docs" / "security.md"
    return [
        line.strip()
        for block in ex.extract(page)
        if block.lang == "sh"
        for line in block.code.splitlines()
        if "10.0.0.5:8443" in line and line.startswith(("socat", "openssl s_client"))
    ]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", ["socat", "openssl"])
def test_security_md_tls_lines_connect_by_address(tool: str, tmp_path: Path) -> None:
    """security.md's socat / openssl lines that connect by address (with the certificate's
    name given) reach a TLS server made with the page's own certificate recipe; the socat
    line without commonname= fails, as the page says."""
    for needed in ("openssl", tool):
        if shutil.which(needed) is None:
            pytest.skip(f"{needed} is not installed (.ci/run installs it)")
    page = ex.ROOT / "docs" / "security.md"
    (recipe,) = [b for b in ex.extract(page) if b.runnable and b.lang == "sh"]
    ex.run_block(recipe, tmp_path)
    (line,) = [line for line in _tls_lines() if line.startswith(tool)]
    port = ex.free_port()
    server = subprocess.Popen(
        [
            *(str(Path(sys.executable).parent / "chatcast"), "server", "--port", str(port)),
            *("--quiet", "--tls-cert", "server.pem", "--tls-key", "server.key"),
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ex._wait_listening(port, server, "TLS chat server")

        def run(command: str) -> subprocess.CompletedProcess[str]:
            argv = shlex.split(command.replace("10.0.0.5:8443", f"127.0.0.1:{port}"))
            return subprocess.run(
                argv, cwd=tmp_path, input="/quit\n", capture_output=True, text=True, timeout=20
            )

        done = run(line)
        assert "Selamat datang" in done.stdout, done.stderr
        if tool == "socat":
            assert "commonname=chat.lab" in line
            refused = run(line.replace(",commonname=chat.lab", ""))
            assert "Selamat datang" not in refused.stdout
            assert refused.returncode != 0
    finally:
        ex._stop(server)


# -- the embedded-server how-to, as a client sees it --------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_embedded_server_howto_tells_clients_on_a_signal(
    signum: signal.Signals, tmp_path: Path
) -> None:
    """The how-to's signal-handler server, sent SIGINT or SIGTERM, tells a connected client
    why it closes, then exits 0 without a traceback."""
    page = ex.ROOT / "docs" / "howto" / "embedded-server.md"
    (block,) = [b for b in ex.extract(page) if "SIGTERM" in " ".join(b.values("interrupt"))]
    port = ex.free_port()
    script = tmp_path / "server.py"
    script.write_text(block.code.replace("8080", str(port)), encoding="utf-8")
    server = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        assert b"serving on port" in server.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as peer:
            reader = peer.makefile("rb")
            assert reader.readline().startswith(b"Selamat datang")
            peer.sendall(b"/nick watcher\n")  # a first line: joined and announced
            assert b"watcher" in reader.readline()
            server.send_signal(signum)
            rest = reader.read().decode()
        out, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert f"! server stopping ({signum.name})" in rest
    assert server.returncode == 0
    assert b"Traceback" not in err
    assert b"stopped cleanly" in out
