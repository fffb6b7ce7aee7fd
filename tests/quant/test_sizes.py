"""Size accounting: true size is the exact byte count of the stored tensors."""

from __future__ import annotations

import pytest
import torch
from _quant_models import QUANTIZERS, inputs_for, make, mlp, tied, train_steps

from optiquant.io import packed_nbytes, state_to_bytes

MB = 2**20


def _tensor_bytes(state) -> int:
    total = sum(
        t.numel() * t.element_size()
        for entry in state["params"].values()
        for t in entry["tensors"].values()
    )
    return total + sum(b.numel() * b.element_size() for b in state["buffers"].values())


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("float16", [False, True])
@pytest.mark.parametrize("factory", [mlp, tied])
def test_true_size_is_exact(qname: str, float16: bool, factory) -> None:
    model = factory()
    quantizer = make(qname, model, float16=float16)
    train_steps(model, quantizer, inputs_for(model), steps=1)
    state = quantizer.get_quantized_state(packed=True)
    exact = _tensor_bytes(state)
    assert quantizer.true_model_size() * MB == exact
    # The differentiable estimate counts bits without byte padding (a few bytes per tensor).
    estimate = float(quantizer.model_size(exact=True).detach()) * MB
    n_tensors = len(state["params"])
    assert estimate <= exact <= estimate + 4 * n_tensors
    # File = tensors + header (safetensors index and optiquant JSON), bounded per tensor.
    data = state_to_bytes(state)
    n_stored = sum(len(e["tensors"]) for e in state["params"].values()) + len(state["buffers"])
    header = len(data) - exact
    assert 0 < header <= 1024 + 400 * n_stored
    assert quantizer.packed_model_size() * MB == len(data)


@pytest.mark.parametrize("qname", list(QUANTIZERS))
def test_size_ordering(qname: str) -> None:
    model = mlp()
    quantizer = make(qname, model)
    fp32 = sum(p.numel() * 4 for n, p in model.named_parameters() if "_" not in n) / MB
    assert quantizer.true_model_size() < fp32
    assert quantizer.compressed_model_size() > 0
    one = quantizer.compressed_model_size(num_workers=1)
    two = quantizer.compressed_model_size(num_workers=2)
    assert abs(one - two) <= 0.1 * one
    with pytest.raises(ValueError, match="num_workers"):
        quantizer.compressed_model_size(num_workers=0)


def test_uniform_sizes_closed_form() -> None:
    model = torch.nn.Linear(1000, 1000)
    quantizer = make("uniform4", model)
    # 10^6 weights x 4 bits + (min, max) float32, bias (1000 < 2621 entries... min_size 1e-3 -> 262)
    expected_weight = 1_000_000 * 4 // 8 + 8
    expected_bias = 1000 * 4 // 8 + 8
    assert quantizer.true_model_size() * MB == expected_weight + expected_bias


def test_diffq_default_sizes_match_diffq_rule() -> None:
    # DiffQ stores per-group widths; with all groups at 8 bits nothing is needed for them.
    model = torch.nn.Linear(1024, 1024, bias=False)
    import optiquant.quant as oq

    q1 = oq.DiffQuantizer(model, group_size=1)
    assert q1.true_model_size() * MB == 1024 * 1024 + 8
    model.weight_diffq.data[0] = 3.0  # one group at a higher width: its width must be stored
    widths = q1.get_widths()["weight"]
    top = int(widths.max())
    spread = top - int(widths.min())
    expected = (
        packed_nbytes(2**20 - 1, 8)
        + packed_nbytes(1, top)
        + packed_nbytes(2**20, spread.bit_length())
        + 8
    )
    assert q1.true_model_size() * MB == expected
    bits = (2**20 - 1) * 8 + top + 2**20 * spread.bit_length() + 64
    assert bits / 8 <= expected <= bits / 8 + 3 + 3
