"""The weight swap is explicit and robust: nothing is overwritten, cached or lost."""

from __future__ import annotations

import io

import pytest
import torch
from _quant_models import QUANTIZERS, inputs_for, lstm, make, mlp, tied

import optiquant.quant as oq


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("qname", list(QUANTIZERS))
def test_forwards_never_modify_parameters(qname: str) -> None:
    model = mlp()
    make(qname, model)
    x = inputs_for(model)
    before = _snapshot(model)
    model.train()
    model(x)
    model.eval()
    model(x)
    assert _same(before, _snapshot(model))


@pytest.mark.parametrize("qname", list(QUANTIZERS))
def test_eval_uses_quantized_weights(qname: str) -> None:
    model = mlp()
    quantizer = make(qname, model)
    x = inputs_for(model)
    model.eval()
    out = model(x)
    quantizer_free = oq.restore_quantized_state(mlp(seed=3), quantizer.get_quantized_state())
    quantizer.detach()
    assert torch.equal(quantizer_free(x), out)
    assert not torch.equal(model(x), out)  # detached: float weights again


def test_train_mode_behaviours() -> None:
    x = inputs_for(mlp())
    plain = mlp()
    # Post-training uniform: training forward untouched.
    model = mlp()
    oq.UniformQuantizer(model, bits=2, min_size=0)
    model.train()
    assert torch.equal(model(x), plain(x))
    # QAT and LSQ: training forward equals the quantized (eval) forward.
    for make_q in (
        lambda m: oq.UniformQuantizer(m, bits=2, min_size=0, qat=True),
        lambda m: oq.LSQ(m, bits=2, min_size=0),
    ):
        model = mlp()
        q = make_q(model)
        q.no_optimizer()
        model.train()
        train_out = model(x)
        model.eval()
        torch.testing.assert_close(train_out, model(x), rtol=0, atol=1e-6)
        assert not torch.equal(train_out, plain(x))


def test_enter_quantize_and_explicit_calls() -> None:
    model = mlp()
    quantizer = oq.DiffQuantizer(model, min_size=0, group_size=8)
    quantizer.no_optimizer()
    x = inputs_for(model)
    model.eval()
    expected = model(x)
    model.train()
    with quantizer.enter_quantize():
        assert quantizer.is_quantized
        assert torch.equal(model(x), expected)
        # The state dict saved while quantized holds the float weights.
        saved = _snapshot(model)
    assert not quantizer.is_quantized
    assert torch.equal(saved["0.weight"], model[0].weight)
    assert quantizer.quantize() is True
    assert quantizer.quantize() is False
    assert torch.equal(model(x), expected)
    assert quantizer.unquantize() is True
    assert quantizer.unquantize() is False
    assert not torch.equal(model(x), expected)  # noisy training forward again


def test_cache_follows_weight_changes() -> None:
    model = mlp()
    quantizer = oq.UniformQuantizer(model, bits=3, min_size=0)
    x = inputs_for(model)
    model.eval()
    first = model(x)
    assert torch.equal(model(x), first)
    with torch.no_grad():
        model[0].weight.mul_(0.5)  # tracked in-place change
    second = model(x)
    assert not torch.equal(second, first)
    model[0].weight.data.mul_(2.0)  # untracked change through .data
    assert torch.equal(model(x), first)
    model.load_state_dict(mlp(seed=5).state_dict())
    fresh = mlp(seed=5)
    expected = oq.restore_quantized_state(fresh, quantizer.get_quantized_state())
    assert torch.equal(model(x), expected(x))


def test_dtype_move_while_quantized() -> None:
    model = mlp()
    quantizer = oq.UniformQuantizer(model, bits=4, min_size=0)
    x = inputs_for(model)
    model.eval()
    model(x)
    with quantizer.enter_quantize():
        model.to(torch.float64)
        out = model(x.double())
    assert out.dtype == torch.float64
    assert quantizer.quantized_weights()["0.weight"].dtype == torch.float64
    restored = oq.restore_quantized_state(mlp().double(), quantizer.get_quantized_state())
    assert torch.equal(restored(x.double()), out)


def test_wrapped_model_still_quantized() -> None:
    model = mlp()
    quantizer = oq.LSQ(model, bits=2, min_size=0)
    quantizer.no_optimizer()
    x = inputs_for(model)
    model.eval()
    expected = model(x)
    wrapper = torch.nn.Sequential(model).eval()
    assert torch.equal(wrapper(x), expected)
    # Calling a submodule directly also uses its quantized weight.
    sub = model[0](x)
    qw = quantizer.quantized_weights()
    ref = torch.nn.functional.linear(x, qw["0.weight"], qw["0.bias"])
    assert torch.equal(sub, ref)
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


def test_shared_module_called_twice_and_recursion() -> None:
    layer = torch.nn.Linear(32, 32)
    model = torch.nn.Sequential(layer, torch.nn.Tanh(), layer)
    quantizer = oq.UniformQuantizer(model, bits=2, min_size=0)
    model.eval()
    x = torch.randn(4, 32)
    w = quantizer.quantized_weights()["0.weight"]
    b = quantizer.quantized_weights()["0.bias"]
    expected = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, w, b)), w, b)
    assert torch.equal(model(x), expected)


def test_lstm_quantized_and_restored() -> None:
    model = lstm()
    quantizer = oq.UniformQuantizer(model, bits=3, min_size=0)
    x = inputs_for(model)
    model.eval()
    out = model(x)[0]
    fresh = oq.restore_quantized_state(lstm(seed=2), quantizer.get_quantized_state())
    assert torch.equal(fresh(x)[0], out)
    quantizer.detach()
    assert not torch.equal(model(x)[0], out)


def test_model_without_quantizable_params() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    quantizer = oq.DiffQuantizer(model)  # min_size keeps everything float
    x = torch.randn(2, 4)
    model.eval()
    model(x)
    model.train()
    model(x)
    assert float(quantizer.model_size()) == pytest.approx(20 * 4 / 2**20)


def test_detach_and_reattach() -> None:
    model = tied()
    quantizer = make("diffq_gs8", model)
    with pytest.raises(RuntimeError, match="already has a quantizer"):
        oq.UniformQuantizer(model)
    quantizer.detach()
    quantizer.detach()  # idempotent
    assert not any(n.endswith("_diffq") for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="detached"):
        quantizer.get_quantized_state()
    second = oq.LSQ(model, min_size=0)
    assert oq.attached_quantizer(model) is second


def test_state_dict_keys_and_pickled_model_unaffected() -> None:
    model = mlp()
    oq.UniformQuantizer(model, bits=4, min_size=0)
    assert list(model.state_dict()) == list(mlp().state_dict())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    assert _same(torch.load(buffer, weights_only=True), _snapshot(model))


def test_ddp_wrapped_model_rejected() -> None:
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module: torch.nn.Module) -> None:
            torch.nn.Module.__init__(self)
            self.module = module

    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        oq.DiffQuantizer(FakeDDP(mlp()))


def test_repr_lists_non_defaults() -> None:
    q = oq.DiffQuantizer(mlp(), min_size=0, group_size=8)
    assert repr(q) == "DiffQuantizer(min_size=0.0, group_size=8)"
