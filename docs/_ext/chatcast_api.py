"""The API reference, computed from ``__all__`` so that a new public name documents itself.

A page says which public modules it covers::

    ```{chatcast-api} chatcast.server
    ```

and gets an autodoc entry for every public name exported by one of them (a name in
``chatcast.__all__`` is documented as ``chatcast.NAME``; a name only in a public submodule's
``__all__``, such as ``chatcast.backplane.RedisBackplane``, under that submodule). The page
whose directive says ``*`` gets every public name no other page claims, so a name added to
``__all__`` anywhere always lands somewhere. After reading all pages, the build warns (an
error under ``-W``) for any public name without a reference entry.

Public submodules are those whose dotted name has no ``_``-prefixed part, less
``chatcast_api_exclude`` (the command line, documented from its parsers instead).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


def public_modules(package: str, exclude: list[str]) -> list[str]:
    """Every module of ``package`` with no ``_``-prefixed part, less ``exclude`` subtrees."""
    root = importlib.import_module(package)
    found = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        parts = info.name.split(".")[1:]
        if any(part.startswith("_") for part in parts):
            continue
        if any(info.name == ex or info.name.startswith(f"{ex}.") for ex in exclude):
            continue
        found.append(info.name)
    return found


def public_names(package: str, exclude: list[str]) -> dict[str, tuple[Any, str]]:
    """Map each public name's documented dotted name to its object and its home module.

    ``package.__all__`` first (documented as ``package.NAME``), then each public submodule's
    ``__all__`` names that the package does not export itself (as ``package.sub.NAME``). The
    home module, which decides the page, is the first public submodule whose ``__all__``
    holds the object (``chatcast.Message`` lives in ``chatcast.message``), else the package.
    """
    root = importlib.import_module(package)
    modules = {}
    for modname in public_modules(package, exclude)[1:]:
        try:
            modules[modname] = importlib.import_module(modname)
        except ImportError as exc:  # an optional dependency the docs extra lacks
            logger.warning(
                "cannot import %s for the API reference: %s (add what it needs to the docs extra)",
                modname,
                exc,
                type="chatcast",
                subtype="api",
            )

    def home(name: str, obj: Any) -> str:
        for modname, module in modules.items():
            if name in getattr(module, "__all__", ()) and getattr(module, name) is obj:
                return modname
        return package

    names: dict[str, tuple[Any, str]] = {}
    for name in root.__all__:
        obj = getattr(root, name)
        names[f"{package}.{name}"] = (obj, home(name, obj))
    for modname, module in modules.items():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if name in root.__all__ and getattr(root, name) is obj:
                continue
            names[f"{modname}.{name}"] = (obj, modname)
    return names


def _matches(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def _directive_for(obj: Any) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isroutine(obj):
        return "autofunction"
    return "autodata"


class ChatcastApi(SphinxDirective):
    """``{chatcast-api} MODULE...`` or ``{chatcast-api} *``: autodoc entries for those names.

    For Markdown (MyST) pages: the autodoc entries are wrapped in an ``{eval-rst}`` block.
    """

    required_arguments = 1
    optional_arguments = 50

    def run(self) -> list[nodes.Node]:
        config = self.config
        names = public_names(config.chatcast_api_package, config.chatcast_api_exclude)
        claimed: list[str] = [p for page in config.chatcast_api_pages for p in page]
        if self.arguments != ["*"] and self.arguments not in config.chatcast_api_pages:
            logger.warning(
                "{chatcast-api} %s: list these modules in chatcast_api_pages in conf.py, so "
                "that the catch-all page leaves them out",
                " ".join(self.arguments),
                location=self.get_location(),
                type="chatcast",
                subtype="api",
            )
        lines: list[str] = []
        for full_name, (obj, module) in names.items():
            if self.arguments == ["*"]:
                if _matches(module, claimed):
                    continue
            elif not _matches(module, self.arguments):
                continue
            lines.append(f".. {_directive_for(obj)}:: {full_name}")
            if inspect.isclass(obj):
                lines += ["   :members:", "   :show-inheritance:"]
            lines.append("")
        # The pages are Markdown and nested content is parsed as the page is, while autodoc
        # writes reStructuredText: wrap it as MyST's eval-rst does.
        lines = ["```{eval-rst}", *lines, "```"]
        self.env.note_dependency(__file__)
        content = StringList(lines, source=self.get_source_info()[0])
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


def _documented(env: BuildEnvironment) -> set[str]:
    return set(env.get_domain("py").objects)  # type: ignore[attr-defined]


def check_coverage(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn for every public name that has no reference entry."""
    documented = _documented(env)
    names = public_names(app.config.chatcast_api_package, app.config.chatcast_api_exclude)
    for full_name in names:
        if full_name not in documented:
            logger.warning(
                "public name %s has no API reference entry (add its module to a "
                "{chatcast-api} directive, or keep the catch-all page)",
                full_name,
                type="chatcast",
                subtype="api",
            )


def skip_private_descriptors(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Leave out class attributes whose value is an instance of a private class.

    ``BroadcastServer``'s settings read back through a private descriptor (``server.rate``);
    its docstring says so once, instead of 22 entries repeating the descriptor's docstring.
    """
    if type(obj).__name__.startswith("_") and not inspect.isroutine(obj):
        return True
    return None


def _napoleon_but_not_attributes(app: Sphinx) -> None:
    """Keep napoleon off attribute and property docstrings.

    Napoleon reads the first ``words:`` of an attribute's docstring as its type; chatcast's
    property docstrings are sentences ("My name: the one asked for, ..."), and their types
    come from annotations.
    """
    listeners = app.events.listeners["autodoc-process-docstring"]
    for i, listener in enumerate(listeners):
        handler = listener.handler
        if getattr(handler, "__module__", "") != "sphinx.ext.napoleon":
            continue

        def wrapped(
            app: Sphinx,
            what: str,
            name: str,
            obj: Any,
            options: Any,
            lines: list[str],
            _handler: Any = handler,
        ) -> None:
            if what in ("attribute", "property", "data"):
                return
            _handler(app, what, name, obj, options, lines)

        listeners[i] = listener._replace(handler=wrapped)


def resolve_public_alias(
    app: Sphinx, env: BuildEnvironment, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve Python references that name a public object by another of its paths.

    The reference documents ``chatcast.BroadcastClient`` (defined in ``chatcast.client``);
    docstrings also say ``chatcast.client.BroadcastClient.send``, ``Message`` (from another
    module) or ``ssl_module.SSLContext`` (an import alias). Each is tried as the public name.
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    package = app.config.chatcast_api_package
    root = importlib.import_module(package)
    candidates: list[str] = []
    if target.startswith("ssl_module."):
        candidates.append("ssl." + target.removeprefix("ssl_module."))
    parts = target.split(".")
    if parts[0] == package:
        # chatcast.sub.Name.rest -> chatcast.Name.rest when Name is exported by the package
        for i in range(1, len(parts)):
            if parts[i] in root.__all__:
                candidates.append(".".join([package, *parts[i:]]))
                break
    else:
        candidates.append(f"{package}.{target}")
        candidates += [
            f"{m}.{target}" for m in public_modules(package, app.config.chatcast_api_exclude)
        ]
    domain = env.get_domain("py")
    for candidate in candidates:
        if candidate.startswith("ssl."):
            from sphinx.ext import intersphinx

            retry = node.deepcopy()
            retry["reftarget"] = candidate
            found = intersphinx.missing_reference(app, env, retry, contnode)
        else:
            found = domain.resolve_xref(
                env,
                node.get("refdoc", ""),
                app.builder,
                node["reftype"],
                candidate,
                node,
                contnode,
            )
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


def drop_inherited_type_docs(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """A constant without a ``#:`` comment gets no docstring, not ``str``'s or ``int``'s."""
    if what in ("data", "attribute") and obj is not None and not inspect.isroutine(obj):
        inherited = inspect.getdoc(type(obj))
        if inherited and "\n".join(lines).strip() == inherited.strip():
            lines.clear()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("chatcast_api_package", "chatcast", "env")
    app.add_config_value("chatcast_api_exclude", [], "env")
    app.add_config_value("chatcast_api_pages", [], "env")
    app.add_directive("chatcast-api", ChatcastApi)
    app.connect("env-check-consistency", check_coverage)
    app.connect("autodoc-skip-member", skip_private_descriptors)
    app.connect("autodoc-process-docstring", drop_inherited_type_docs)
    app.connect("missing-reference", resolve_public_alias)
    app.connect("builder-inited", _napoleon_but_not_attributes)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
