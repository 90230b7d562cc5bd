"""Sphinx configuration for chatcast's documentation site.

Build it (from a fresh clone, no network needed past the package index):

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[docs]' && \\
        .venv/bin/sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import chatcast  # noqa: E402

project = "chatcast"
author = "chatcast developers"
copyright = "chatcast developers"
release = version = chatcast.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxarg.ext",
    "chatcast_api",
]

# The existing pages are Markdown (they read well on GitHub too); MyST turns them into pages.
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx", "_ext", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 4  # [text](page.md#a-heading) links resolve and are checked
myst_enable_extensions = ["colon_fence", "deflist"]

# API reference: autodoc + napoleon (the docstrings are Google style).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False  # defaults as values (ttl=2), not names (ttl=DEFAULT_TTL)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes: of frozen dataclasses, without duplicate entries
napoleon_use_rtype = False

# Which reference page documents the names of which public modules; everything else lands on
# the page with `{chatcast-api} *` (docs/reference/other.md). See docs/_ext/chatcast_api.py.
chatcast_api_package = "chatcast"
chatcast_api_exclude = ["chatcast.cli"]
chatcast_api_pages = [
    ["chatcast.server"],
    ["chatcast.client"],
    ["chatcast.multicast"],
    ["chatcast.message"],
    ["chatcast.exceptions"],
    ["chatcast.backplane"],
]

# Links to the Python docs, from an inventory kept in the repository (the build machine has
# no network): docs/_intersphinx/python-3.11.inv, from Debian's python3.11-doc package.
# docs/contributing.md says how to refresh it.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_intersphinx" / "python-3.11.inv")),
}
intersphinx_timeout = 1

# Broken references are warnings, and the build runs with -W: they fail CI.
nitpicky = True
nitpick_ignore_regex = [
    # Private types that appear in public signatures; they have no page on purpose.
    ("py:.*", r"chatcast(\.\w+)*\._\w+(\..*)?"),
    # asyncio.Future is implemented in C as _asyncio.Future: the annotation names that.
    ("py:class", r"_asyncio\.Future"),
]

html_theme = "furo"
html_title = f"chatcast {release}"
html_static_path: list[str] = []
