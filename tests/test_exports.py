"""Keep ``__all__`` honest: in the package and in every public module, now and later."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
from types import ModuleType

import pytest

import chatcast


def ruff_sort_key(name: str) -> tuple[int, list[str | int]]:
    """The order ruff's RUF022 wants for ``__all__``.

    SCREAMING_SNAKE_CASE constants first, then CamelCase classes, then everything else;
    within each group a case-sensitive natural sort (``A2`` before ``A10``).
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name.lstrip("_")[:1].isupper():
        group = 1
    else:
        group = 2
    # re.split with a group alternates text and digits, so parts compare str/str, int/int.
    parts = re.split(r"(\d+)", name)
    return group, [int(part) if i % 2 else part for i, part in enumerate(parts)]


def public_modules() -> list[str]:
    """Every importable chatcast module whose dotted name has no ``_``-prefixed part."""
    found = []
    for info in pkgutil.walk_packages(chatcast.__path__, prefix="chatcast."):
        parts = info.name.split(".")[1:]
        if any(part.startswith("_") for part in parts):
            continue  # private, and __main__ (which would run the CLI)
        found.append(info.name)
    return sorted(found)


PUBLIC = public_modules()


def test_ruff_sort_key_matches_ruff() -> None:
    """The sort key above orders names as `ruff check --fix` (RUF022) did for this sample."""
    ruff_order = [
        "A1", "A2", "A10", "XY", "_CONST", "ABc", "B", "X", "Xy", "_Private", "__version__",
        "_a", "_x", "a", "a2", "a10", "aBc", "a_b", "ab", "abc", "b", "x_y",
    ]  # fmt: skip
    assert sorted(reversed(ruff_order), key=ruff_sort_key) == ruff_order


def test_public_modules_found() -> None:
    """The module walk finds the public modules (so the checks below are not vacuous)."""
    assert {"chatcast.exceptions", "chatcast.message"} <= set(PUBLIC)
    assert not [name for name in PUBLIC if name.rsplit(".", 1)[-1].startswith("_")]


def test_package_all_names_exist() -> None:
    """Every name in chatcast.__all__ is an attribute of the package."""
    missing = [name for name in chatcast.__all__ if not hasattr(chatcast, name)]
    assert not missing


def test_package_all_unique_and_sorted() -> None:
    """chatcast.__all__ has no repeats and is in RUF022 order."""
    assert len(set(chatcast.__all__)) == len(chatcast.__all__)
    assert list(chatcast.__all__) == sorted(chatcast.__all__, key=ruff_sort_key)


def test_package_star_import() -> None:
    """`from chatcast import *` gives exactly the names in __all__."""
    namespace: dict[str, object] = {}
    exec("from chatcast import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(chatcast.__all__)


def test_version_matches_metadata() -> None:
    """chatcast.__version__ is the version the installed distribution declares."""
    assert chatcast.__version__ == importlib.metadata.version("chatcast")


@pytest.mark.parametrize("name", PUBLIC)
def test_module_all(name: str) -> None:
    """Each public module has an __all__ of unique, existing names in RUF022 order."""
    module: ModuleType = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{name} has no __all__"
    assert [n for n in names if not hasattr(module, n)] == []
    assert len(set(names)) == len(names)
    assert list(names) == sorted(names, key=ruff_sort_key)


@pytest.mark.parametrize("name", PUBLIC)
def test_module_all_reexports_are_the_same_objects(name: str) -> None:
    """A name exported both by a module and by the package is the same object in both."""
    module = importlib.import_module(name)
    shared = set(module.__all__) & set(chatcast.__all__)
    assert [n for n in shared if getattr(module, n) is not getattr(chatcast, n)] == []
