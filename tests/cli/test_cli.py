"""The ``optiquant`` command line: compress / inspect / decompress, safety and errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from optiquant.cli import COMMANDS, build_parser, main
from optiquant.cli._files import read_compressed


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "layer.weight": torch.randn(64, 96, generator=g) * 0.05,
        "layer.bias": torch.randn(64, generator=g),
        "emb.weight": torch.randn(200, 32, generator=g).to(torch.bfloat16),
        "ids": torch.arange(7),
    }
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    return path, sd


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_inspect_decompress(tmp_path: Path, checkpoint, capsys) -> None:
    src, sd = checkpoint
    out, dec = tmp_path / "m.oq", tmp_path / "dec.safetensors"
    code, text, _ = run(["compress", str(src), "-o", str(out), "--bits", "4", "--min-size", "0",
                         "--group-size", "32", "--quiet", "--json"], capsys)  # fmt: skip
    assert code == 0
    report = json.loads(text)
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["layer.weight"]["method"] == "lloyd" and rows["layer.weight"]["sqnr_db"] > 19
    assert rows["layer.bias"]["scheme"] == "float"  # 1-D tensors stay as they are
    assert report["totals"]["quantized_bits_per_param"] < 4.6
    code, text, _ = run(["inspect", str(out)], capsys)
    assert code == 0 and "layer.weight" in text and "SQNR" in text and "bits/value" in text
    code, text, _ = run(["compress", str(src), "-o", str(out), "--min-size", "0", "--force",
                         "--quiet", "--json", "--entropy"], capsys)  # fmt: skip
    e = json.loads(text)["totals"]["entropy"]
    assert code == 0 and e["rd_bound"] < e["entropy"] <= e["rans"] < e["fixed"] + 0.1
    code, _, _ = run(["decompress", str(out), "-o", str(dec), "--quiet"], capsys)
    assert code == 0
    back = load_file(str(dec))
    encoded, _ = read_compressed(out)
    assert set(back) == set(sd)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], encoded[name].decode())
    assert torch.equal(back["layer.bias"], sd["layer.bias"])
    assert torch.equal(back["ids"], sd["ids"])


def test_torch_state_dict_input_and_budget(tmp_path: Path, checkpoint, capsys) -> None:
    _, sd = checkpoint
    src = tmp_path / "model.pt"
    torch.save({"state_dict": sd}, src)
    out = tmp_path / "m.oq"
    code, text, _ = run(["compress", str(src), "-o", str(out), "--budget", "3.5", "--min-size",
                         "0", "--param-dtype", "log8", "--quiet", "--json"], capsys)  # fmt: skip
    assert code == 0
    totals = json.loads(text)["totals"]
    assert totals["quantized_bits_per_param"] <= 3.5


def test_never_overwrites_without_force(tmp_path: Path, checkpoint, capsys) -> None:
    src, _ = checkpoint
    out = tmp_path / "m.oq"
    out.write_bytes(b"precious")
    code, _, err = run(["compress", str(src), "-o", str(out), "--quiet"], capsys)
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"
    code, _, _ = run(["compress", str(src), "-o", str(out), "--quiet", "--force"], capsys)
    assert code == 0 and out.read_bytes() != b"precious"
    dec = tmp_path / "d.safetensors"
    dec.write_bytes(b"keep")
    code, _, err = run(["decompress", str(out), "-o", str(dec), "--quiet"], capsys)
    assert code == 2 and dec.read_bytes() == b"keep"


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_unreadable_inputs_give_clear_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.oq"
    code, _, err = run(["compress", str(tmp_path / "missing.pt"), "-o", str(out)], capsys)
    assert code == 2 and "no such file" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    code, _, err = run(["compress", str(junk), "-o", str(out)], capsys)
    assert code == 2 and "safetensors" in err
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Evil()}))
    code, text, err = run(["compress", str(evil), "-o", str(out)], capsys)
    assert code == 2 and "weights_only" in err and "code ran" not in text
    notdict = tmp_path / "list.pt"
    torch.save([torch.ones(2)], notdict)
    code, _, err = run(["compress", str(notdict), "-o", str(out)], capsys)
    assert code == 2 and "no state dict" in err
    assert not out.exists()


def test_inspect_rejects_foreign_and_corrupted_files(tmp_path: Path, checkpoint, capsys) -> None:
    src, _ = checkpoint
    code, _, err = run(["inspect", str(src)], capsys)
    assert code == 2 and "not an optiquant file" in err
    out = tmp_path / "m.oq"
    assert main(["compress", str(src), "-o", str(out), "--quiet", "--min-size", "0"]) == 0
    data = bytearray(out.read_bytes())
    data[-5] ^= 0xFF  # flip a byte of tensor data
    bad = tmp_path / "bad.oq"
    bad.write_bytes(bytes(data))
    code, _, err = run(["inspect", str(bad)], capsys)
    assert code == 2 and "checksum" in err
    trunc = tmp_path / "trunc.oq"
    trunc.write_bytes(bytes(data[: len(data) // 2]))
    code, _, err = run(["decompress", str(trunc), "-o", str(tmp_path / "x.safetensors")], capsys)
    assert code == 2 and "truncated" in err


def test_bad_options(tmp_path: Path, checkpoint, capsys) -> None:
    src, _ = checkpoint
    code, _, err = run(["compress", str(src), "-o", str(tmp_path / "o"), "--bits", "17"], capsys)
    assert code == 2 and "bits" in err
    with pytest.raises(SystemExit):
        main(["compress", str(src), "-o", "x", "--method", "nf9"])


def test_parser_is_extensible() -> None:
    assert {"compress", "inspect", "decompress"} <= set(
        build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    )
    assert all(hasattr(m, "register") for m in COMMANDS)


def test_python_dash_m() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "optiquant", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "compress" in res.stdout and "decompress" in res.stdout
