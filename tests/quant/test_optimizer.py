"""setup_optimizer / clear_optimizer / check_unused."""

from __future__ import annotations

import pytest
import torch

import optiquant.quant as oq


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4))


def test_optimizer_created_before_quantizer() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    quantizer = oq.DiffQuantizer(model, min_size=0)
    quantizer.setup_optimizer(opt, lr=5e-3)
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["lr"] == 5e-3 and group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in quantizer.parameters()}
    with pytest.raises(RuntimeError, match="already called"):
        quantizer.setup_optimizer(opt)


def test_optimizer_created_after_quantizer_is_fixed() -> None:
    model = _model()
    quantizer = oq.DiffQuantizer(model, min_size=0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    quantizer.setup_optimizer(opt)
    ids = {id(p) for p in quantizer.parameters()}
    assert not any(id(p) in ids for p in opt.param_groups[0]["params"])
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_optimizer_that_already_stepped() -> None:
    model = _model()
    quantizer = oq.LSQ(model, min_size=0)
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    with pytest.raises(RuntimeError, match="clear_optimizer"):
        quantizer.setup_optimizer(opt)
    quantizer.clear_optimizer(opt)
    quantizer.setup_optimizer(opt, lr=1e-2)
    assert opt.param_groups[-1]["lr"] == 1e-2


def test_bits_never_weight_decayed() -> None:
    model = _model()
    quantizer = oq.DiffQuantizer(model, min_size=0)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="weight_decay must be 0"):
        quantizer.setup_optimizer(opt, weight_decay=0.1)


def test_separate_optimizer_for_bits() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    quantizer = oq.DiffQuantizer(model, min_size=0)
    bits_opt = torch.optim.Adam([{"params": []}])
    quantizer.setup_optimizer(bits_opt)
    assert len(opt.param_groups) == 1
    assert bits_opt.param_groups[-1]["params"] == quantizer.parameters()


def test_check_unused_zeroes_bits_of_unused_layers() -> None:
    model = _model()
    quantizer = oq.DiffQuantizer(model, min_size=0)
    quantizer.no_optimizer()
    model.train()
    out = model[0](torch.randn(2, 32))  # the second layer is unused
    (out.sum() + quantizer.model_size()).backward()
    assert model[1].weight_diffq.grad is not None and bool(model[1].weight_diffq.grad.any())
    quantizer.check_unused()
    assert not bool(model[1].weight_diffq.grad.any())
    assert bool(model[0].weight_diffq.grad.any())


def test_uniform_has_no_parameters() -> None:
    model = _model()
    quantizer = oq.UniformQuantizer(model, min_size=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    quantizer.setup_optimizer(opt)
    assert len(opt.param_groups) == 1 and quantizer.parameters() == []
