"""Sphinx configuration for the bilinear_kernels documentation.

Sphinx, because the libraries this project's users read (PyTorch, SciPy, torchao) document
themselves with it: autodoc builds the reference from the docstrings, and MyST keeps the pages in
the same Markdown as the README. Built strictly in CI: `sphinx-build -W --keep-going -n`.
"""
from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's package, not an installed copy

import bilinear_kernels  # noqa: E402
from sphinx.util import logging  # noqa: E402

LOG = logging.getLogger(__name__)

project = "bilinear_kernels"
release = bilinear_kernels.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
nitpicky = True
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False}

# Types from other libraries: no inventory of theirs is fetched (CI reaches no documentation site),
# so references to them are left unresolved on purpose. Names of this package are never ignored.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|numpy|np|scipy|safetensors|typing|collections|pathlib|os|dataclasses|types"
              r"|concurrent|contextlib|abc|enum|io|threading|warnings)(\..*)?"),
    ("py:.*", r"(str|int|float|bool|bytes|dict|list|tuple|set|object|type|None|Any|Callable|Iterable"
              r"|Iterator|Sequence|Mapping|Path|Tensor|ndarray|dtype|device|Module|Optional|Union|Literal"
              r"|os\.PathLike|Generator|NoneType|ellipsis|complex|slice|BaseException|Exception"
              r"|UserWarning|RuntimeWarning)"),
]

PUBLIC = [name for name in bilinear_kernels.__all__ if name != "__version__"]
API_PAGE = Path(__file__).with_name("api.md")


def _literal_docstrings(app, what, name, obj, options, lines):
    """Show docstrings as written: the package's docstrings are aligned plain text, not reST."""
    if lines and any(line.strip() for line in lines):
        body = [("    " + line) if line.strip() else "" for line in lines]
        lines[:] = ["::", ""] + body + [""]


def _public_name_without_docstring(app, what, name, obj, options, lines):
    short = name.removeprefix("bilinear_kernels.")
    if short in PUBLIC and not any(line.strip() for line in lines):
        LOG.warning(f"the public name bilinear_kernels.{short} has no docstring")


def _check_reference_covers_public_names(app):
    """Every name in bilinear_kernels.__all__ has an entry in the API reference."""
    documented = set(re.findall(r"^\.\. auto\w+:: bilinear_kernels\.(\w+)$", API_PAGE.read_text(), re.M))
    missing = sorted(set(PUBLIC) - documented)
    if missing:
        LOG.warning(f"docs/api.md lacks public names: {', '.join(missing)}")


def _package_classes(annotation, out: set) -> None:
    if isinstance(annotation, type) and annotation.__module__.startswith("bilinear_kernels."):
        out.add(annotation)
    for arg in typing.get_args(annotation):
        _package_classes(arg, out)


def _type_hints(obj) -> dict:
    # a hint that cannot be evaluated (a name imported only for type checkers) is skipped here;
    # if it names a class of the package, the strict build then reports it as unresolved
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError, AttributeError):
        return {}


def _annotated_classes(obj) -> set:
    """The package's classes named in the annotations of `obj` (a function, or a class: its fields
    and the signatures of its methods)."""
    functions, found = [], set()
    if inspect.isclass(obj):
        for annotation in _type_hints(obj).values():
            _package_classes(annotation, found)
        for member in vars(obj).values():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            if inspect.isfunction(member):
                functions.append(member)
    elif inspect.isfunction(obj):
        functions.append(obj)
    for function in functions:
        for annotation in _type_hints(function).values():
            _package_classes(annotation, found)
    return found


def returned_classes() -> list[type]:
    """Classes the public calls take or return that are not public names themselves (a sweep
    store's reader, a truncation curve, ...): documented under the module that defines them, found
    from the annotations at build time, so the pages name no module."""
    public = {getattr(bilinear_kernels, name) for name in PUBLIC}
    seen, todo = set(), list(public)
    while todo:
        for cls in _annotated_classes(todo.pop()):
            if cls not in seen and cls not in public:
                seen.add(cls)
                todo.append(cls)
    return sorted(seen, key=lambda cls: cls.__name__)


def _append_returned_classes(app, docname, source):
    if docname == "api":
        blocks = [f"```{{eval-rst}}\n.. autoclass:: {cls.__module__}.{cls.__qualname__}\n```\n"
                  for cls in returned_classes()]
        source[0] += "\n## Objects the calls return\n\n" + "\n".join(blocks)


def _resolve_public_names(app, env, node, contnode):
    """`bk.NAME` and `bilinear_kernels.<module>.NAME` point at the documented `bilinear_kernels.NAME`,
    so the pages and the signatures never depend on which module defines a public name."""
    target = node.get("reftarget", "")
    parts = target.split(".")
    if node.get("refdomain") != "py" or parts[0] not in ("bk", "bilinear_kernels") or len(parts) < 2:
        return None
    for i in range(1, len(parts)):
        if parts[i] in PUBLIC:
            new = ".".join(["bilinear_kernels", *parts[i:]])
            break
    else:
        return None
    if new == target:
        return None
    domain = env.get_domain("py")
    node = node.deepcopy()
    node["reftarget"] = new
    return domain.resolve_xref(env, node.get("refdoc"), app.builder, node.get("reftype"), new, node,
                               contnode)


def setup(app):
    app.connect("builder-inited", _check_reference_covers_public_names)
    app.connect("source-read", _append_returned_classes)
    app.connect("autodoc-process-docstring", _public_name_without_docstring, priority=400)
    app.connect("autodoc-process-docstring", _literal_docstrings, priority=600)
    app.connect("missing-reference", _resolve_public_names)
