"""The safetensors file: exact round trips, and clear errors for bad files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import optiquant.quant as oq
from optiquant.io import (
    FormatError,
    ModelMismatchError,
    load_quantized,
    read_quantized,
    save_quantized,
)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))


@pytest.fixture
def saved(tmp_path):
    model = _model()
    quantizer = oq.DiffQuantizer(model, group_size=4, min_size=0)
    with torch.no_grad():
        model[0].weight_diffq.uniform_(-3, 3)
    path = save_quantized(quantizer, tmp_path / "q.safetensors")
    return path, quantizer.quantized_weights()


def test_load_is_exact(saved) -> None:
    path, expected = saved
    model = load_quantized(_model(seed=1), path)
    for name, p in model.named_parameters():
        assert torch.equal(p, expected[name]), name


def test_metadata_is_typed_and_versioned(saved) -> None:
    path, _ = saved
    size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + size])
    doc = json.loads(header["__metadata__"]["optiquant"])
    assert doc["format"] == "optiquant" and doc["version"] == 1
    assert doc["config"]["kind"] == "diffq" and doc["config"]["group_size"] == 4
    assert doc["params"]["0.weight"]["scheme"] == "grouped"
    assert doc["params"]["0.weight"]["shape"] == [64, 48]
    assert doc["params"]["0.weight"]["dtype"] == "float32"
    assert len(doc["checksum"]["digest"]) == 64
    config = oq.config_from_dict(doc["config"])
    assert isinstance(config, oq.DiffQConfig)


def test_file_size_is_true_size_plus_header(tmp_path) -> None:
    model = _model()
    quantizer = oq.UniformQuantizer(model, bits=3, min_size=0)
    path = save_quantized(quantizer, tmp_path / "u.safetensors")
    data = path.read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(data) - header == round(quantizer.true_model_size() * 2**20)
    assert quantizer.packed_model_size() * 2**20 == len(data)


def test_corrupted_byte_detected(saved) -> None:
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum mismatch"):
        read_quantized(path)


def test_corrupted_metadata_detected(saved) -> None:
    path, _ = saved
    data = path.read_bytes()
    tampered = data.replace(b'group_size\\": 4', b'group_size\\": 2', 1)
    assert tampered != data
    path.write_bytes(tampered)
    with pytest.raises(FormatError):
        read_quantized(path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file(saved, keep: int) -> None:
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(FormatError, match=r"truncated|corrupted"):
        read_quantized(path)


def test_foreign_safetensors_file(tmp_path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    with pytest.raises(FormatError, match="not an optiquant file"):
        read_quantized(path)


def test_garbage_file(tmp_path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(FormatError, match="corrupted header"):
        read_quantized(path)


def test_future_version_refused(saved, tmp_path) -> None:
    path, _ = saved
    state = read_quantized(path)
    state["version"] = 99
    with pytest.raises(FormatError, match="unsupported quantized state version 99"):
        oq.restore_quantized_state(_model(), state)


def test_wrong_model_leaves_it_untouched(saved) -> None:
    path, _ = saved
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 9))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ModelMismatchError, match=r"'2.weight' has shape \(9, 64\)"):
        load_quantized(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    deeper = torch.nn.Sequential(*_model(), torch.nn.Linear(8, 8))
    with pytest.raises(ModelMismatchError, match="missing parameters"):
        load_quantized(deeper, path)


def test_plain_model_and_state_dict_inputs(tmp_path) -> None:
    model = _model()
    path = save_quantized(model, tmp_path / "plain.safetensors")
    restored = load_quantized(_model(seed=4), path)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), restored.parameters()))
    quantizer = oq.LSQ(model, bits=5, min_size=0)
    path = save_quantized(quantizer.get_quantized_state(), tmp_path / "state.safetensors")
    assert read_quantized(path)["quantizer"] == "LSQ"
    with pytest.raises(TypeError, match="save_quantized expects"):
        save_quantized(42, tmp_path / "x.safetensors")


def test_diffq_style_state_refused() -> None:
    with pytest.raises(FormatError, match="diffq state"):
        oq.restore_quantized_state(_model(), {"quantized": [], "meta": {}})


def test_loading_never_unpickles(saved) -> None:
    # The file is JSON plus raw bytes: it contains no pickle opcodes stream at all.
    path, _ = saved
    data = path.read_bytes()
    assert b"\x80\x04\x95" not in data and b"\x80\x02" not in data[:64]
