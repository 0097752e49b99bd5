import json

import pytest
import torch
from safetensors.torch import save_file

from mnist_digits import checkpoint
from mnist_digits.errors import CheckpointError
from mnist_digits.model import DigitNet, ModelConfig

SMALL = ModelConfig(channels=(4, 8, 8), hidden=16)


def test_model_file_roundtrip_keeps_weights_and_metadata(tmp_path):
    model = DigitNet(SMALL).eval()
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, model, {"val_accuracy": 0.5})
    loaded = checkpoint.load_model(path)
    assert loaded.metadata["val_accuracy"] == 0.5
    assert loaded.metadata["model_config"]["channels"] == [4, 8, 8]
    assert "torch" in loaded.metadata["environment"] and "date" in loaded.metadata["environment"]
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.model(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, DigitNet(SMALL), {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an mnist-digits model file"):
        checkpoint.load_model(path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, DigitNet(SMALL), {})
    tensors, metadata = checkpoint.read(path)
    metadata["model_config"] = ModelConfig().to_dict()  # claims the reference sizes
    checkpoint.save(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        checkpoint.load_model(path)


def test_an_onnx_file_and_an_empty_ensemble_are_named_for_what_they_are(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX protobuf's first bytes
    with pytest.raises(CheckpointError, match="an ONNX file; only `predict` reads those"):
        checkpoint.load_model(onnx)
    path = tmp_path / "ensemble.safetensors"
    checkpoint.save(path, {"unused": torch.zeros(1)}, {"members": []})
    with pytest.raises(CheckpointError, match="an ensemble file with no networks in it"):
        checkpoint.load_model(path)


def test_missing_file_and_not_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such model file"):
        checkpoint.load_model(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 50)
    with pytest.raises(CheckpointError):
        checkpoint.load_model(garbage)


def test_metadata_is_plain_json_in_the_header(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, DigitNet(SMALL), {"note": "hello"})
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["format"] == checkpoint.FORMAT
    assert json.loads(header["__metadata__"]["metadata"])["note"] == "hello"
    stored, _ = checkpoint._read_stored(path)
    assert header["__metadata__"][checkpoint.CHECKSUM_KEY] == checkpoint.tensors_sha256(stored)


def test_the_checksum_covers_names_dtypes_shapes_and_bytes():
    tensors = {"a": torch.arange(6.0), "b": torch.zeros(2, dtype=torch.int64)}
    digest = checkpoint.tensors_sha256(tensors)
    assert digest == checkpoint.tensors_sha256({"b": tensors["b"].clone(), "a": tensors["a"].clone()})
    for changed in (
        {"a": tensors["a"], "c": tensors["b"]},  # a name
        {"a": tensors["a"].double(), "b": tensors["b"]},  # a dtype
        {"a": tensors["a"].view(2, 3), "b": tensors["b"]},  # a shape
        {"a": tensors["a"] + torch.tensor([0, 0, 0, 0, 0, 1.0]), "b": tensors["b"]},  # a value
    ):
        assert checkpoint.tensors_sha256(changed) != digest
