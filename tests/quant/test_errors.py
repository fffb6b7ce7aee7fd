"""Bad input raises clear errors naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

import optiquant.quant as oq
from optiquant.io import FormatError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4))


@pytest.mark.parametrize("bits", [0, 17, -3, 4.5])
@pytest.mark.parametrize("cls", [oq.UniformQuantizer, oq.LSQ])
def test_bits_out_of_range(cls, bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        cls(_model(), bits=bits)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_bits": 0}, "min_bits"),
        ({"max_bits": 17}, "max_bits"),
        ({"min_bits": 8, "max_bits": 4}, "min_bits"),
        ({"init_bits": 15}, "init_bits"),
        ({"init_bits": 2}, "init_bits"),
        ({"group_size": -1}, "group_size"),
        ({"group_size": 2.5}, "group_size"),
        ({"param": "logit"}, "param"),
        ({"noise": "laplace"}, "noise"),
        ({"extra_bits": math.inf}, "extra_bits"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": math.nan}, "min_size"),
        ({"suffix": ""}, "suffix"),
        ({"suffix": "a.b"}, "suffix"),
    ],
)
def test_diffq_options_validated(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        oq.DiffQuantizer(_model(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"float16": 1}, TypeError),
        ({"detect_bound": "yes"}, TypeError),
        ({"exclude": [3]}, TypeError),
    ],
)
def test_shared_options_typed(kwargs, error) -> None:
    with pytest.raises(error):
        oq.UniformQuantizer(_model(), **kwargs)


def test_exclude_string_is_one_pattern_and_no_shared_default() -> None:
    a = oq.UniformQuantizer(_model(), exclude="*.bias", min_size=0)
    assert a.config.exclude == ("*.bias",)
    b_model = _model()
    b = oq.UniformQuantizer(b_model, min_size=0)
    assert b.config.exclude == () and isinstance(b.config.exclude, tuple)


def test_noise_scale_shape_checked() -> None:
    with pytest.raises(ValueError, match="one entry per group"):
        oq.pseudo_quantization_noise(torch.zeros(10), torch.zeros(6))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("cls", [oq.UniformQuantizer, oq.LSQ, oq.DiffQuantizer])
def test_nan_inf_weights_raise(cls, bad) -> None:
    model = _model()
    quantizer = cls(model, min_size=0)
    quantizer.no_optimizer()
    with torch.no_grad():
        model[0].weight[3, 4] = bad
    with pytest.raises(ValueError, match=r"0\.weight: weights contain NaN or inf"):
        quantizer.get_quantized_state()
    model.eval()
    with pytest.raises(ValueError, match="NaN or inf"):
        model(torch.randn(2, 32))


def test_not_a_model() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        oq.DiffQuantizer(torch.ones(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        oq.restore_quantized_state("model", {})  # type: ignore[arg-type]


def test_malformed_states() -> None:
    model = _model()
    good = oq.UniformQuantizer(_model(), bits=4, min_size=0).get_quantized_state()
    with pytest.raises(FormatError, match="must be a dict"):
        oq.restore_quantized_state(model, [1, 2])
    bad = dict(good, params=dict(good["params"]))
    entry = dict(bad["params"]["0.weight"])
    entry["tensors"] = dict(entry["tensors"], codes=entry["tensors"]["codes"][:-1])
    bad["params"]["0.weight"] = entry
    with pytest.raises(FormatError, match=r"'0\.weight'.*'codes' has 511 elements, expected 512"):
        oq.restore_quantized_state(model, bad)
    bad["params"]["0.weight"] = dict(entry, scheme="mystery")
    with pytest.raises(FormatError, match="unknown scheme 'mystery'"):
        oq.restore_quantized_state(model, bad)
    bad["params"]["0.weight"] = dict(entry, meta={"bits": 40})
    with pytest.raises(FormatError, match="'bits' must be an int in"):
        oq.restore_quantized_state(model, bad)
    nan_range = dict(good["params"]["0.weight"])
    nan_range["tensors"] = dict(nan_range["tensors"], range=torch.tensor([0.0, math.nan]))
    bad["params"]["0.weight"] = nan_range
    with pytest.raises(FormatError, match="range must be finite"):
        oq.restore_quantized_state(model, bad)
    aliased = dict(good, aliases={"0.weight": "nowhere"})
    with pytest.raises(FormatError, match=r"alias '0\.weight' points to 'nowhere'"):
        oq.restore_quantized_state(model, aliased)


def test_training_forward_needs_optimizer_setup() -> None:
    model = _model()
    quantizer = oq.DiffQuantizer(model, min_size=0)
    model.train()
    with pytest.raises(RuntimeError, match="setup_optimizer"):
        model(torch.randn(2, 32))
    quantizer.no_optimizer()
    model(torch.randn(2, 32))


def test_negative_lsq_step_size_raises() -> None:
    model = _model()
    quantizer = oq.LSQ(model, min_size=0)
    with torch.no_grad():
        model[0].weight_lsq.fill_(-1.0)
    with pytest.raises(ValueError, match="step size must be finite and > 0"):
        quantizer.get_quantized_state()
