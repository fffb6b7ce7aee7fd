"""TorchScript export with packed storage."""

from __future__ import annotations

import pytest
import torch

import optiquant.quant as oq

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: oq.DiffQuantizer(m, group_size=8, min_size=0),
        lambda m: oq.DiffQuantizer(m, group_size=5, min_size=0, float16=True),
        lambda m: oq.UniformQuantizer(m, bits=4),
        lambda m: oq.LSQ(m, bits=3),
    ],
)
def test_export_exact_and_small(make, tmp_path) -> None:
    model = _model()
    quantizer = make(model)
    quantizer.no_optimizer()
    with torch.no_grad():
        for p in quantizer.parameters():
            if p.dim() == 1:
                p.uniform_(-2, 2)
    x = torch.randn(3, 512)
    model.eval()
    expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "model.ts"
    oq.export(quantizer, path)
    loaded = torch.jit.load(str(path))
    assert torch.equal(loaded(x), expected)
    assert torch.equal(loaded(x), expected)
    # The quantizer and its model are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)
    assert path.stat().st_size <= 1.2 * quantizer.true_model_size() * 2**20
