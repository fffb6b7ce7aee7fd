"""Packed inference form: exact outputs, memory close to the true size."""

from __future__ import annotations

import pytest
import torch
from _quant_models import QUANTIZERS, inputs_for, lstm, make, mlp, tied

import optiquant.quant as oq
from optiquant.io import read_quantized, save_quantized


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("factory", [mlp, tied, lstm])
def test_packed_outputs_exact(qname: str, factory) -> None:
    model = factory()
    quantizer = make(qname, model)
    x = inputs_for(model)
    model.eval()
    expected = model(x)
    true_bytes = quantizer.true_model_size() * 2**20
    packed = oq.pack_model(quantizer)
    assert oq.is_packed(packed)
    for _ in range(2):  # usable repeatedly
        out = packed(x)
        if isinstance(out, tuple):
            assert torch.equal(out[0], expected[0])
        else:
            assert torch.equal(out, expected)
    assert oq.packed_nbytes_in_memory(packed) <= true_bytes + 64  # plus a few 0-d scalars


def test_pack_from_file(tmp_path) -> None:
    model = mlp()
    quantizer = make("diffq_gs8", model)
    x = inputs_for(model)
    model.eval()
    expected = model(x)
    path = save_quantized(quantizer, tmp_path / "m.safetensors")
    packed = oq.pack_model(mlp(seed=3), read_quantized(path))
    assert torch.equal(packed(x), expected)
    with pytest.raises(ValueError, match="already packed"):
        oq.pack_model(packed, read_quantized(path))
    with pytest.raises(ValueError, match="needs the quantized state"):
        oq.pack_model(mlp())


def test_packed_model_moves_with_to() -> None:
    model = mlp()
    quantizer = make("uniform4", model)
    x = inputs_for(model)
    model.eval()
    expected = model(x)
    packed = oq.pack_model(quantizer).to(torch.float64).to(torch.float32)
    assert torch.equal(packed(x), expected)
