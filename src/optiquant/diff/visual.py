"""Draw the autograd graph behind a (meta-)loss, with tensor names on it.

:func:`graph` walks the graph into plain Python data, :func:`dot_source` writes it in the
DOT language (no dependency), and :func:`make_dot` returns a ``graphviz.Digraph`` that
Jupyter displays and ``.render()`` turns into an image. ``make_dot`` needs the optional
``graphviz`` Python package (``pip install graphviz``); rendering images also needs the
Graphviz programs (for example ``apt install graphviz``).

Naming the tensors of every inner step shows where a meta-gradient flows::

    names = {f"step0.{k}": v for k, v in net.named_parameters()}
    opt.step(inner_loss)
    names |= {f"step1.{k}": v for k, v in net.named_parameters()}
    make_dot(outer_loss, params=names).render("graph", format="svg")
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from optiquant.diff.state import ModuleState

__all__ = ["dot_source", "graph", "make_dot"]

_COLORS = {"param": "lightblue", "tensor": "darkolivegreen1", "saved": "orange", "op": "lightgray"}


@dataclass
class Graph:
    """Nodes ``(id, label, kind)`` with kind ``'param'``, ``'tensor'``, ``'saved'`` or ``'op'``
    and edges ``(source, target)`` in the direction of the forward computation.

    >>> w = torch.ones(2, requires_grad=True)
    >>> g = graph((w * 2).sum(), params={"w": w})
    >>> sorted(kind for _, _, kind in g.nodes)
    ['op', 'op', 'param', 'tensor']
    >>> len(g.edges)
    3
    """

    nodes: list[tuple[str, str, str]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)


def _named(params: Any) -> tuple[dict[int, str], dict[int, str]]:
    """Names by tensor id, and names by the id of the node that produced a named tensor."""
    names: dict[int, str] = {}
    produced_by: dict[int, str] = {}
    if params is None:
        return names, produced_by
    stack = [params]
    while stack:
        item = stack.pop()
        if isinstance(item, ModuleState):
            stack.extend([item.params, item.buffers])
        elif isinstance(item, Mapping):
            for name, value in item.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"params[{name!r}]: expected a tensor, got {type(value).__name__}"
                    )
                names.setdefault(id(value), str(name))
                if value.grad_fn is not None:
                    produced_by.setdefault(id(value.grad_fn), str(name))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            if not isinstance(item[1], torch.Tensor):
                raise TypeError(f"params: {item[0]!r} is not a tensor")
            names.setdefault(id(item[1]), item[0])
            if item[1].grad_fn is not None:
                produced_by.setdefault(id(item[1].grad_fn), item[0])
        elif isinstance(item, Iterable) and not isinstance(item, (str, torch.Tensor)):
            stack.extend(reversed(list(item)))
        else:
            raise TypeError(
                "params: expected a mapping name -> tensor, (name, tensor) pairs, a ModuleState "
                f"or a list of those, got {type(item).__name__}"
            )
    return names, produced_by


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _short(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def graph(
    var: torch.Tensor | Iterable[torch.Tensor],
    params: Any = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
) -> Graph:
    """The autograd graph that produced ``var`` (a tensor or several), as a :class:`Graph`.

    ``params`` names tensors: a mapping ``name -> tensor``, ``(name, tensor)`` pairs (such
    as ``module.named_parameters()``), a :class:`~optiquant.diff.ModuleState`, or a list of
    those. Named leaves label their accumulation nodes; named intermediate tensors label
    the operation that produced them. ``show_attrs`` lists the non-tensor attributes that
    an operation saved, ``show_saved`` adds the tensors it saved.

    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> g = graph((w * 3).sum(), params={"w": w})
    >>> [label for _, label, kind in g.nodes if kind == "param"]
    ['w\\n(2)']
    """
    roots = [var] if isinstance(var, torch.Tensor) else list(var)
    for index, root in enumerate(roots):
        if not isinstance(root, torch.Tensor):
            raise TypeError(f"var: item {index} is {type(root).__name__}, expected a tensor")
    names, produced_by = _named(params)
    out = Graph()
    seen: set[str] = set()
    stack = []

    def node_of(fn: Any) -> str:
        key = str(id(fn))
        if key in seen:
            return key
        seen.add(key)
        variable = getattr(fn, "variable", None)
        if isinstance(variable, torch.Tensor):
            label = f"{names.get(id(variable), '')}\n{_shape(variable)}".lstrip("\n")
            out.nodes.append((key, label, "param"))
            return key
        label = type(fn).__name__
        if id(fn) in produced_by:
            label = f"{produced_by[id(fn)]}\n{label}"
        attrs = []
        for attr in dir(fn):
            if not attr.startswith("_saved_"):
                continue
            value = getattr(fn, attr)
            if isinstance(value, torch.Tensor):
                if show_saved:
                    saved_key = f"{key}.{attr}"
                    saved_name = names.get(id(value), attr[len("_saved_") :])
                    out.nodes.append((saved_key, f"{saved_name}\n{_shape(value)}", "saved"))
                    out.edges.append((saved_key, key))
            elif show_attrs:
                attrs.append(f"{attr[len('_saved_') :]}: {_short(value, max_attr_chars)}")
        if attrs:
            label = label + "\n" + "\n".join(attrs)
        out.nodes.append((key, label, "op"))
        stack.append(fn)
        return key

    for index, root in enumerate(roots):
        root_key = f"output{index}"
        label = names.get(id(root), "output" if len(roots) == 1 else f"output {index}")
        out.nodes.append((root_key, f"{label}\n{_shape(root)}", "tensor"))
        if root.grad_fn is not None:
            out.edges.append((node_of(root.grad_fn), root_key))
    while stack:
        fn = stack.pop()
        for child, _ in fn.next_functions:
            if child is not None:
                out.edges.append((node_of(child), str(id(fn))))
    return out


def dot_source(
    var: torch.Tensor | Iterable[torch.Tensor],
    params: Any = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
) -> str:
    """The graph of :func:`graph` in the DOT language.

    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> print(dot_source(w.sum(), params={"w": w}).splitlines()[0])
    digraph {
    """
    g = graph(var, params, show_attrs, show_saved, max_attr_chars)
    lines = [
        "digraph {",
        '  node [shape=box, style=filled, fontsize=10, height=0.2, fontname="monospace"]',
    ]
    for key, label, kind in g.nodes:
        text = html.escape(label).replace("\n", "<br/>")
        lines.append(f'  "{key}" [label=<{text}>, fillcolor={_COLORS[kind]}]')
    for source, target in g.edges:
        lines.append(f'  "{source}" -> "{target}"')
    lines.append("}")
    return "\n".join(lines) + "\n"


def make_dot(
    var: torch.Tensor | Iterable[torch.Tensor],
    params: Any = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
) -> Any:
    """The graph of :func:`graph` as a ``graphviz.Digraph`` (needs the ``graphviz`` package).

    Raises ``ImportError`` with installation instructions when ``graphviz`` is missing;
    :func:`dot_source` gives the same graph as text without it.

    >>> w = torch.ones(2, requires_grad=True)
    >>> try:
    ...     source = make_dot(w.sum(), params={"w": w}).source
    ... except ImportError:  # graphviz is not installed: the DOT text is still available
    ...     source = dot_source(w.sum(), params={"w": w})
    >>> source.lstrip().startswith("digraph {")
    True
    """
    try:
        import graphviz
    except ImportError as error:
        raise ImportError(
            "make_dot needs the optional 'graphviz' Python package: pip install graphviz "
            "(rendering images also needs the Graphviz programs, e.g. apt install graphviz). "
            "optiquant.diff.visual.dot_source(...) returns the same graph as DOT text without it."
        ) from error
    g = graph(var, params, show_attrs, show_saved, max_attr_chars)
    dot = graphviz.Digraph(
        node_attr={
            "shape": "box",
            "style": "filled",
            "fontsize": "10",
            "height": "0.2",
            "fontname": "monospace",
        },
        graph_attr={"size": "12,12"},
    )
    for key, label, kind in g.nodes:
        dot.node(key, label, fillcolor=_COLORS[kind])
    for source, target in g.edges:
        dot.edge(source, target)
    return dot
