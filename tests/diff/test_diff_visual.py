"""The autograd-graph drawing: names on the right nodes, DOT text, graphviz when installed."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch
from torch import nn

import optiquant.diff as diff
from optiquant.diff import visual


def _meta_graph() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Linear(2, 1)
    names = {f"step0.{k}": v for k, v in net.named_parameters()}
    opt = diff.MetaSGD(net, lr=0.1)
    x = torch.randn(4, 2)
    opt.step(net(x).pow(2).mean())
    names |= {f"step1.{k}": v for k, v in net.named_parameters()}
    return net(x).sum(), names


def test_graph_names_leaves_and_intermediate_tensors() -> None:
    loss, names = _meta_graph()
    g = visual.graph(loss, params=names)
    labels = {label.split("\n")[0] for _, label, _ in g.nodes}
    assert {"step0.weight", "step0.bias", "step1.weight", "step1.bias", "output"} <= labels
    params = [label for _, label, kind in g.nodes if kind == "param"]
    assert sorted(label.split("\n")[0] for label in params) == ["step0.bias", "step0.weight"]
    keys = {key for key, _, _ in g.nodes}
    assert all(a in keys and b in keys for a, b in g.edges)
    # every node but the output feeds something
    sources = {a for a, _ in g.edges}
    assert {key for key, _, kind in g.nodes if kind != "tensor"} <= sources


def test_saved_tensors_and_attributes() -> None:
    w = torch.ones(3, requires_grad=True)
    y = (w.pow(3) * 2).sum()
    plain = visual.graph(y)
    full = visual.graph(y, params=[("w", w)], show_attrs=True, show_saved=True)
    assert len(full.nodes) > len(plain.nodes)
    assert any(kind == "saved" for _, _, kind in full.nodes)
    assert any("exponent: 3" in label for _, label, _ in full.nodes)


def test_dot_source_needs_no_dependency() -> None:
    loss, _ = _meta_graph()
    text = visual.dot_source(loss, params=diff.extract_state_dict(nn.Linear(1, 1)))
    assert text.startswith("digraph {") and text.rstrip().endswith("}")
    assert "->" in text


def test_make_dot_with_graphviz() -> None:
    graphviz = pytest.importorskip("graphviz", reason="graphviz is optional")
    loss, names = _meta_graph()
    dot = visual.make_dot(loss, params=names)
    assert isinstance(dot, graphviz.Digraph)
    assert "step1.weight" in dot.source


def test_make_dot_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_graphviz(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "graphviz":
            raise ImportError("No module named 'graphviz'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "graphviz", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_graphviz)
    with pytest.raises(ImportError, match="pip install graphviz"):
        visual.make_dot(torch.ones(1, requires_grad=True).sum())


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="var"):
        visual.graph([torch.ones(1), "loss"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="params"):
        visual.graph(torch.ones(1), params={"w": 3.0})
    with pytest.raises(TypeError, match="params"):
        visual.graph(torch.ones(1), params=3)
