"""Stored states and files reproduce the eval-mode weights bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from _quant_models import QUANTIZERS, inputs_for, lstm, make, mlp, tied, train_steps

import optiquant.quant as oq
from optiquant.io import load_quantized, read_quantized, save_quantized

MODELS = {"mlp": mlp, "tied": tied, "lstm": lstm}


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def _check_model_holds(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in expected.items():
        assert torch.equal(params[name], value), name


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("mname", list(MODELS))
@pytest.mark.parametrize("float16", [False, True])
def test_state_round_trip(qname: str, mname: str, float16: bool) -> None:
    model = MODELS[mname]()
    quantizer = make(qname, model, float16=float16)
    x = inputs_for(model)
    train_steps(model, quantizer, x)
    model.eval()
    expected_out = _output(model, x)
    expected = quantizer.quantized_weights()
    for packed in (True, False):
        state = quantizer.get_quantized_state(packed=packed)
        fresh = MODELS[mname](seed=123)
        oq.restore_quantized_state(fresh, state)
        fresh.eval()
        _check_model_holds(fresh, expected)
        assert torch.equal(_output(fresh, x), expected_out)


@pytest.mark.parametrize("qname", list(QUANTIZERS))
def test_quantizer_restore_keeps_eval_weights(qname: str) -> None:
    model = tied()
    quantizer = make(qname, model)
    x = inputs_for(model)
    train_steps(model, quantizer, x)
    expected = quantizer.quantized_weights()
    state = quantizer.get_quantized_state()
    other_model = tied(seed=5)
    other = make(qname, other_model)
    other.restore_quantized_state(state)
    _check_model_holds(other_model, expected)
    # The eval-mode weights of the receiving quantizer are exactly the stored ones.
    for name, value in other.quantized_weights().items():
        assert torch.equal(value, expected[name]), name
    other_model.eval()
    model.eval()
    assert torch.equal(other_model(x), model(x))


@pytest.mark.parametrize("qname", list(QUANTIZERS))
def test_torch_save_weights_only(qname: str) -> None:
    model = mlp()
    quantizer = make(qname, model)
    state = quantizer.get_quantized_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = oq.restore_quantized_state(mlp(seed=3), loaded)
    _check_model_holds(fresh, quantizer.quantized_weights())


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("float16", [False, True])
def test_file_round_trip(qname: str, float16: bool, tmp_path) -> None:
    model = tied()
    quantizer = make(qname, model, float16=float16)
    train_steps(model, quantizer, inputs_for(model))
    expected = quantizer.quantized_weights()
    path = save_quantized(quantizer, tmp_path / "m.safetensors")
    fresh = load_quantized(tied(seed=9), path)
    _check_model_holds(fresh, expected)
    # The buffers (batch norm statistics) travel too.
    for (name, a), (_, b) in zip(model.named_buffers(), fresh.named_buffers()):
        assert torch.equal(a, b), name
    # Saving the model finds its quantizer.
    path2 = save_quantized(model, tmp_path / "m2.safetensors")
    assert read_quantized(path2)["quantizer"] == type(quantizer).__name__


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("kind", ["uniform", "lsq"])
def test_every_bit_width(bits: int, kind: str) -> None:
    model = mlp()
    cls = oq.UniformQuantizer if kind == "uniform" else oq.LSQ
    quantizer = cls(model, bits=bits, min_size=0)
    quantizer.no_optimizer()
    expected = quantizer.quantized_weights()
    fresh = oq.restore_quantized_state(mlp(seed=2), quantizer.get_quantized_state())
    _check_model_holds(fresh, expected)
    # Quantization error is within half a step of the grid.
    for name, p in model.named_parameters():
        if name.endswith("_lsq"):
            continue
        err = (expected[name] - p).abs().max()
        if kind == "uniform":
            step = (p.max() - p.min()) / (2**bits - 1)
            assert err <= step / 2 * (1 + 1e-5) + 1e-7
        else:
            assert len(expected[name].unique()) <= 2**bits


@pytest.mark.parametrize("extra_bits", [0.0, 3.0, 7.0])
def test_diffq_every_width_including_15_and_16(extra_bits: float) -> None:
    # The 15-bit groups diffq 0.2.4 drops are stored exactly here.
    model = torch.nn.Linear(64, 64, bias=False)
    quantizer = oq.DiffQuantizer(
        model, min_size=0, group_size=4, min_bits=1, max_bits=16, init_bits=8,
        extra_bits=extra_bits,
    )  # fmt: skip
    logit = model.weight_diffq
    with torch.no_grad():
        # Spread the bits over the whole range so that every width appears.
        logit.copy_(torch.linspace(-12, 12, logit.numel()))
    widths = quantizer.get_widths()["weight"]
    if extra_bits == 0:
        assert set(widths.tolist()) == set(range(1, 17))
    expected = quantizer.quantized_weights()["weight"]
    for packed in (True, False):
        fresh = oq.restore_quantized_state(
            torch.nn.Linear(64, 64, bias=False), quantizer.get_quantized_state(packed=packed)
        )
        assert torch.equal(fresh.weight, expected)


def test_bound_parameter_stored_once() -> None:
    model = tied()
    quantizer = make("uniform4", model)
    state = quantizer.get_quantized_state()
    assert state["aliases"] == {"out.weight": "embed.weight"}
    assert "out.weight" not in state["params"]
    unbound_model = tied()
    unbound = make("uniform4", unbound_model, detect_bound=False)
    assert unbound.true_model_size() > quantizer.true_model_size()
    assert set(unbound.get_quantized_state()["params"]) >= {"embed.weight", "out.weight"}


def test_bound_diffq_shares_logits() -> None:
    model = tied()
    quantizer = make("diffq_gs8", model)
    names = [n for n, _ in model.named_parameters() if n.endswith("_diffq")]
    assert "embed.weight_diffq" in names and "out.weight_diffq" not in names
    model.eval()
    w = quantizer.quantized_weights()
    assert torch.equal(w["embed.weight"], w["out.weight"])


def test_excluded_parameters_stay_float() -> None:
    model = mlp()
    quantizer = oq.UniformQuantizer(model, bits=2, min_size=0, exclude=["bias", "4.*"])
    state = quantizer.get_quantized_state()
    schemes = {name: entry["scheme"] for name, entry in state["params"].items()}
    assert schemes == {
        "0.weight": "uniform", "0.bias": "float", "2.weight": "uniform", "2.bias": "float",
        "4.weight": "float", "4.bias": "float",
    }  # fmt: skip
    fresh = oq.restore_quantized_state(mlp(seed=4), state)
    assert torch.equal(fresh[4].weight, model[4].weight)
    assert torch.equal(fresh[0].bias, model[0].bias)


def test_float16_storage_of_small_params() -> None:
    model = mlp()
    quantizer = oq.UniformQuantizer(model, bits=8, min_size=1.0, float16=True)
    state = quantizer.get_quantized_state()
    assert all(e["tensors"]["value"].dtype == torch.float16 for e in state["params"].values())
    model.eval()
    fresh = oq.restore_quantized_state(mlp(seed=1), state)
    for (name, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(q, p.detach().half().float()), name
    x = inputs_for(model)
    assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype: torch.dtype) -> None:
    model = mlp(dtype=dtype)
    quantizer = make("diffq_gs8", model)
    expected = quantizer.quantized_weights()
    assert expected["0.weight"].dtype == dtype
    fresh = oq.restore_quantized_state(mlp(seed=3, dtype=dtype), quantizer.get_quantized_state())
    _check_model_holds(fresh, expected)


@pytest.mark.parametrize("group_size", [3, 5, 48, 1000])
def test_diffq_partial_last_group(group_size: int) -> None:
    model = mlp()
    quantizer = oq.DiffQuantizer(model, group_size=group_size, min_size=0)
    quantizer.no_optimizer()
    with torch.no_grad():
        for p in quantizer.parameters():
            p.uniform_(-3, 3)
    assert model[0].weight_diffq.numel() == -(-32 * 48 // group_size)
    x = inputs_for(model)
    model.train()
    out = model(x)
    (out.square().mean() + quantizer.model_size()).backward()
    assert all(p.grad is not None for p in quantizer.parameters())
    expected = quantizer.quantized_weights()
    state = quantizer.get_quantized_state()
    fresh = oq.restore_quantized_state(mlp(seed=8), state)
    _check_model_holds(fresh, expected)
    assert quantizer.true_model_size() * 2**20 == sum(
        t.numel() * t.element_size()
        for e in state["params"].values()
        for t in e["tensors"].values()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_bits": 2.5, "max_bits": 9.5, "init_bits": 4.2},
        {"extra_bits": -3.0},
        {"extra_bits": 2.5, "param": "noise"},
    ],
)
def test_diffq_unusual_bit_options(kwargs) -> None:
    model = mlp()
    quantizer = oq.DiffQuantizer(model, group_size=4, min_size=0, **kwargs)
    quantizer.no_optimizer()
    with torch.no_grad():
        for p in quantizer.parameters():
            p.uniform_(-3, 3)
    widths = torch.cat([w.reshape(-1) for w in quantizer.get_widths().values()])
    assert int(widths.min()) >= 1
    expected = quantizer.quantized_weights()
    fresh = oq.restore_quantized_state(mlp(seed=3), quantizer.get_quantized_state())
    _check_model_holds(fresh, expected)
    assert quantizer.true_model_size() > 0 and float(quantizer.model_size().detach()) > 0


def test_recursive_module_call() -> None:
    class Recursive(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(16, 16) / 4)

        def forward(self, x: torch.Tensor, depth: int = 2) -> torch.Tensor:
            h = torch.tanh(torch.nn.functional.linear(x, self.weight))
            if depth > 0:
                h = self(h, depth - 1)  # nested call of the module owning the weight
            return torch.nn.functional.linear(h, self.weight)  # still the quantized one

    def reference(x: torch.Tensor, w: torch.Tensor, depth: int = 2) -> torch.Tensor:
        h = torch.tanh(torch.nn.functional.linear(x, w))
        if depth > 0:
            h = reference(h, w, depth - 1)
        return torch.nn.functional.linear(h, w)

    torch.manual_seed(0)
    model = Recursive()
    quantizer = oq.UniformQuantizer(model, bits=2, min_size=0)
    model.eval()
    x = torch.randn(3, 16)
    expected = reference(x, quantizer.quantized_weights()["weight"])
    assert torch.equal(model(x), expected)
    assert "weight" not in model.__dict__  # nothing left behind after the forward
