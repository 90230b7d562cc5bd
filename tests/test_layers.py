"""The layers of docs/design.md, enforced by reading every module's imports (as trio does).

* ``chatcast._core`` is sans-I/O: no asyncio, socket, selectors or ssl, and nothing of chatcast
  but itself and ``chatcast.exceptions`` (the bottom layer every layer raises from).
* The library shells (``chatcast/*.py``) import the core and each other, never the CLI.
* The CLI (``chatcast.cli``) uses the public API and the core's command parser: no private
  module of the library.
* Nothing imports upward behind ``if TYPE_CHECKING:`` either: type-only imports count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chatcast

PACKAGE = Path(chatcast.__file__).parent
IO_MODULES = frozenset({"asyncio", "socket", "selectors", "ssl"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(module: str) -> bool:
    candidate = PACKAGE.parent / Path(*module.split("."))
    return candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, type-only and function-level imports included.

    ``from package import module`` counts as importing ``package.module``.
    """
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if base.startswith("chatcast") and _exists(submodule) else base)
    return found


def _chatcast_imports(path: Path) -> set[str]:
    """The chatcast modules that ``path`` imports."""
    return {name for name in _imports(path) if name.startswith("chatcast") and _exists(name)}


MODULES = sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> str:
    if module == "chatcast.exceptions":
        return "exceptions"
    if module.startswith("chatcast._core"):
        return "core"
    if module in {"chatcast.cli", "chatcast.__main__"} or module.startswith("chatcast.cli."):
        return "cli"
    return "shell"


def test_there_are_layers() -> None:
    """The walk below sees the package: a core, shells and a CLI (a moved file cannot hide)."""
    layers = {_layer(_module_name(path)) for path in MODULES}
    assert layers == {"exceptions", "core", "shell", "cli"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path: Path) -> None:
    """Each module imports only its own layer and the layers below it."""
    module = _module_name(path)
    layer = _layer(module)
    for imported in _chatcast_imports(path):
        target = _layer(imported)
        if layer == "exceptions":
            pytest.fail(f"{module} is the bottom layer and imports {imported}")
        if layer == "core":
            assert target in {"core", "exceptions"}, f"core module {module} imports {imported}"
        if layer == "shell":
            assert target != "cli", f"library module {module} imports the CLI ({imported})"
        if layer == "cli" and target == "shell":
            private = any(part.startswith("_") for part in imported.split(".")[1:])
            assert not private, f"CLI module {module} imports private {imported}"
        if layer == "cli" and target == "core":
            assert imported.startswith("chatcast._core.commands"), (
                f"CLI module {module} imports {imported}: only the command parser is shared"
            )


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _layer(_module_name(p)) in {"core", "exceptions"}],
    ids=lambda p: _module_name(p),
)  # fmt: skip
def test_core_does_no_io(path: Path) -> None:
    """The core and the exceptions import no event loop, socket or TLS."""
    for imported in _imports(path):
        assert imported.split(".")[0] not in IO_MODULES, f"{path.name} imports {imported}"
