"""extract_state_dict / recover_state_dict / stop_gradient."""

from __future__ import annotations

import pytest
import torch
from diff_helpers import F64
from torch import nn

import optiquant.diff as diff


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3).to(F64)
        self.norm = nn.BatchNorm1d(3).to(F64)
        self.b = nn.Linear(3, 3, bias=False).to(F64)
        self.b.weight = self.a.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.norm(torch.tanh(self.a(x))))


def test_extract_by_reference_copy_and_deepcopy() -> None:
    net = _Net()
    ref = diff.extract_state_dict(net)
    assert ref.params["a.weight"] is net.a.weight and ref.params["b.weight"] is net.a.weight
    assert set(ref.buffers) == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}

    copy = diff.extract_state_dict(net, by="copy")
    assert copy.params["a.weight"] is not net.a.weight
    assert copy.params["a.weight"] is copy.params["b.weight"]  # ties kept
    (g,) = torch.autograd.grad(copy.params["a.weight"].sum(), net.a.weight)  # history kept
    assert (g == 1).all()

    deep = diff.extract_state_dict(net, by="deepcopy")
    w = deep.params["a.weight"]
    assert isinstance(w, nn.Parameter) and w.is_leaf and w.requires_grad
    assert w.data_ptr() != net.a.weight.data_ptr() and torch.equal(w, net.a.weight)
    assert deep.params["b.weight"] is w
    assert deep.buffers["norm.running_mean"].data_ptr() != net.norm.running_mean.data_ptr()

    assert diff.extract_state_dict(net, with_buffers=False).buffers == {}
    detached = diff.extract_state_dict(net, detach_buffers=True)
    assert detached.buffers["norm.running_var"].data_ptr() == net.norm.running_var.data_ptr()
    assert diff.extract_state_dict(net, by="clone").params["a.bias"] is not net.a.bias


def test_recover_after_meta_steps_restores_leaves_and_state() -> None:
    net = _Net()
    x = torch.randn(8, 3, dtype=F64)
    opt = diff.MetaAdam(net, lr=0.1)
    net_state = diff.extract_state_dict(net)
    opt_state = diff.extract_state_dict(opt, by="deepcopy")
    for _ in range(2):
        opt.step(net(x).pow(2).mean())
    assert not net.a.weight.is_leaf and net.a.weight is net.b.weight
    diff.recover_state_dict(net, net_state)
    diff.recover_state_dict(opt, opt_state)
    assert net.a.weight is net_state.params["a.weight"] and net.b.weight is net.a.weight
    for now, saved in zip(
        torch.utils._pytree.tree_leaves(opt.state_dict()),
        torch.utils._pytree.tree_leaves(opt_state),
    ):
        assert now is saved


def test_recover_rejects_a_mismatched_module_and_changes_nothing() -> None:
    net = _Net()
    other = nn.Linear(3, 3).to(F64)
    state = diff.extract_state_dict(other)
    before = dict(net.named_parameters())
    with pytest.raises(ValueError, match="missing"):
        diff.recover_state_dict(net, state)
    assert dict(net.named_parameters()) == before
    wrong = diff.extract_state_dict(net)
    wrong.params["a.bias"] = torch.zeros(5, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        diff.recover_state_dict(net, wrong)
    assert net.a.bias is before["a.bias"]
    with pytest.raises(TypeError, match="ModuleState"):
        diff.recover_state_dict(net, dict(net.state_dict()))


def test_bad_targets() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module or a MetaOptimizer"):
        diff.extract_state_dict([torch.ones(1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module or a MetaOptimizer"):
        diff.recover_state_dict("net", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="by"):
        diff.extract_state_dict(nn.Linear(1, 1), by="shallow")  # type: ignore[arg-type]


def test_stop_gradient_cuts_history_but_keeps_leaves() -> None:
    net = _Net()
    original = net.a.weight
    x = torch.randn(8, 3, dtype=F64)
    opt = diff.MetaSGD(net, lr=0.1, momentum=0.9)
    opt.step(net(x).pow(2).mean())
    assert net.a.weight.grad_fn is not None
    adapted = net.a.weight.detach().clone()
    assert diff.stop_gradient(net) is net and diff.stop_gradient(opt) is opt
    assert net.a.weight.is_leaf and net.a.weight.requires_grad and net.b.weight is net.a.weight
    assert torch.equal(net.a.weight, adapted)
    for leaf in torch.utils._pytree.tree_leaves(opt.state_dict()):
        assert leaf.grad_fn is None
    opt.step(net(x).pow(2).mean())
    grads = torch.autograd.grad(net(x).sum(), [original], allow_unused=True)
    assert grads == (None,)  # no path back to the meta-parameters any more

    leaf = torch.ones(2, requires_grad=True)
    tree = {"x": leaf * 2, "y": leaf}
    cut = diff.stop_gradient(tree)
    assert cut["x"].grad_fn is None and cut["x"].requires_grad and cut["y"] is leaf
    with pytest.raises(TypeError, match="target"):
        diff.stop_gradient("net")
    state = diff.stop_gradient(diff.extract_state_dict(net, by="copy"))
    assert all(t.grad_fn is None for t in state.params.values())
