import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mnist_digits import checkpoint
from mnist_digits.cli import main
from mnist_digits.ensemble import TTA_VIEWS, Ensemble, as_ensemble, members, warp
from mnist_digits.errors import CheckpointError
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.predict import load_model

TINY = ModelConfig(channels=(4, 8, 8), hidden=16)


def _net(seed: int) -> DigitNet:
    torch.manual_seed(seed)
    return DigitNet(TINY).eval()


def _mass_centre(images: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    total = images.sum((1, 2, 3))
    return torch.stack([(images[:, 0] * xs).sum((1, 2)) / total, (images[:, 0] * ys).sum((1, 2)) / total], 1)


def test_warp_shifts_turns_and_scales_as_asked(test_digits):
    images = torch.tensor(test_digits.images[:8]).float().unsqueeze(1) / 255
    assert warp(images, 0.0, 1.0, 0.0, 0.0) is images
    moved = _mass_centre(warp(images, 0.0, 1.0, 2.0, -1.0)) - _mass_centre(images)
    # exact for every digit whose ink stays inside the frame (one here touches the edge)
    assert torch.allclose(moved.median(0).values, torch.tensor([2.0, -1.0]), atol=0.01)
    bigger = warp(images, 0.0, 1.1, 0.0, 0.0)
    assert bigger.sum() > images.sum() * 1.15  # area grows by about 1.1 squared
    turned = warp(images, 90.0, 1.0, 0.0, 0.0)
    assert torch.allclose(turned.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=0.02)  # nothing cut off
    assert not torch.allclose(turned, images, atol=0.1)


def test_an_ensemble_averages_its_members_probabilities(test_digits):
    a, b = _net(1), _net(2)
    x = torch.tensor(test_digits.images[:16]).float().unsqueeze(1) / 255
    with torch.no_grad():
        expected = (a(x).softmax(1) + b(x).softmax(1)) / 2
        got = Ensemble([a, b])(x).softmax(1)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(Ensemble([a, a])(x).softmax(1), a(x).softmax(1), atol=1e-6)
        with_tta = Ensemble([a], tta=True)
        views = torch.stack([a(warp(x, *v)).softmax(1) for v in TTA_VIEWS]).mean(0)
        assert torch.allclose(with_tta(x).softmax(1), views, atol=1e-6)
    assert as_ensemble(a) is a and as_ensemble(a, tta=True).tta
    assert members(as_ensemble(Ensemble([a, b]), tta=True)) == [a, b]


def test_ensemble_file_round_trips_with_each_members_metadata(tmp_path, test_digits):
    path = tmp_path / "ensemble.safetensors"
    nets = [_net(1), _net(2), _net(3)]
    checkpoint.save_ensemble(path, nets, [{"seed": i} for i in range(3)], {"test_accuracy": 0.5})
    loaded = checkpoint.load_model(path)
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 3
    assert [m["seed"] for m in loaded.members_metadata] == [0, 1, 2]
    assert loaded.metadata["test_accuracy"] == 0.5
    x = torch.tensor(test_digits.images[:16]).float().unsqueeze(1) / 255
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), Ensemble(nets)(x), atol=1e-6)
    recognizer = load_model(path)
    assert recognizer.parameter_count == 3 * sum(p.numel() for p in nets[0].parameters())
    [prediction] = recognizer.predict(test_digits.images[0])
    assert prediction.digit is not None


def test_networks_with_different_kernels_join_one_int8_file(tmp_path, test_digits):
    nets = [_net(1), DigitNet(replace(TINY, kernel=5)).eval(), DigitNet(replace(TINY, kernel=7)).eval()]
    path = tmp_path / "mixed.safetensors"
    checkpoint.save_ensemble(path, nets, [{}, {}, {}], {}, weights_dtype="int8")
    loaded = checkpoint.load_model(path).model
    assert [m.config.kernel for m in members(loaded)] == [3, 5, 7]
    x = torch.tensor(test_digits.images[:8]).float().unsqueeze(1) / 255
    for net in nets:
        checkpoint.round_to_stored(net, "int8")
    with torch.no_grad():
        assert torch.allclose(loaded(x), Ensemble(nets)(x), atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "stored", "bytes_per_weight"), [("float16", torch.float16, 2), ("int8", torch.int8, 1)]
)
def test_a_compact_ensemble_file_is_smaller_and_loads_the_rounded_weights(
    tmp_path, dtype, stored, bytes_per_weight
):
    nets = [_net(1), _net(2)]
    full, small = tmp_path / "full.safetensors", tmp_path / f"{dtype}.safetensors"
    checkpoint.save_ensemble(full, nets, [{}, {}], {})
    checkpoint.save_ensemble(small, nets, [{}, {}], {}, weights_dtype=dtype)
    assert checkpoint.read(small)[1]["weights_dtype"] == dtype
    matrices = [v for v in checkpoint.read(full)[0].values() if v.dim() >= 2]
    saved = sum(v.numel() * (4 - bytes_per_weight) for v in matrices)
    scales = sum(4 * v.shape[0] + 128 for v in matrices) if dtype == "int8" else 0  # and their headers
    assert full.stat().st_size - small.stat().st_size >= saved - scales
    loaded = checkpoint.load_model(small).model
    for net in nets:
        original = {k: v.clone() for k, v in net.state_dict().items()}
        checkpoint.round_to_stored(net, dtype)
        for k, v in net.state_dict().items():  # close to the original, but rounded
            assert torch.allclose(
                v.float(), original[k].float(), atol=1e-2 * original[k].abs().max() + 1e-6
            ), k
        assert not torch.equal(net.state_dict()["0.weight"], original["0.weight"])
    for got, net in zip(members(loaded), nets, strict=True):
        for k, v in net.state_dict().items():
            assert got.state_dict()[k].dtype == v.dtype and torch.equal(got.state_dict()[k], v), k


def test_int8_weights_have_one_scale_per_output_channel_and_survive_a_second_rounding(tmp_path):
    net = _net(1)
    with torch.no_grad():
        net[0].weight[0] *= 1000  # one loud channel must not cost the others their precision
    stored = checkpoint.compress(net.state_dict(), "int8")
    assert stored["0.weight"].dtype == torch.int8 and stored["scale.0.weight"].shape == (4,)
    assert stored["0.bias"].dtype == torch.float16  # vectors stay float16
    quiet = checkpoint.expand(stored)["0.weight"][1:]
    assert torch.allclose(
        quiet, net.state_dict()["0.weight"][1:], atol=net[0].weight[1:].abs().max().item() / 200
    )
    checkpoint.round_to_stored(net, "int8")
    once = {k: v.clone() for k, v in net.state_dict().items()}
    checkpoint.round_to_stored(net, "int8")  # joining an int8 ensemble again changes nothing
    assert all(torch.allclose(v, once[k], rtol=1e-6, atol=0) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="float32, float16, int8"):
        checkpoint.compress(net.state_dict(), "int4")


def test_an_int8_file_whose_scales_do_not_fit_is_a_clear_error(tmp_path):
    path = tmp_path / "ensemble.safetensors"
    checkpoint.save_ensemble(path, [_net(1)], [{}], {}, weights_dtype="int8")
    raw = checkpoint.read(path)[1]
    tensors = checkpoint.compress(checkpoint.read(path)[0], "int8")
    tensors["scale.member0.model.0.weight"] = torch.ones(3)  # the kernel has 4 output channels
    checkpoint.save(path, tensors, raw)
    with pytest.raises(CheckpointError, match="int8 weights and their scales do not match"):
        checkpoint.load_model(path)


def test_an_ensemble_file_missing_a_member_is_a_clear_error(tmp_path):
    path = tmp_path / "ensemble.safetensors"
    checkpoint.save_ensemble(path, [_net(1), _net(2)], [{}, {}], {})
    tensors, metadata = checkpoint.read(path)
    checkpoint.save(path, {k: v for k, v in tensors.items() if k.startswith("member0.")}, metadata)
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load_model(path)


def test_train_ensemble_writes_members_and_an_evaluated_ensemble(monkeypatch, mnist_dir, tmp_path, capsys):
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    run = tmp_path / "run"
    args = ["train", "--dry-run", "--no-progress", "--ensemble", "2", "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2: test accuracy" in out
    seeds = [
        checkpoint.read(run / f"member{i}" / "model.safetensors")[1]["train_config"]["seed"] for i in (0, 1)
    ]
    assert seeds == [0, 1]
    ensemble = checkpoint.load_model(run / "ensemble.safetensors")
    assert len(ensemble.members_metadata) == 2 and 0.1 < ensemble.metadata["test_accuracy"] <= 1
    assert ensemble.metadata["train_config"]["recipe"] == "reference"  # one recipe: it is recorded

    # In fp32, as training measured it: `auto` takes bf16 where it is native, which rounds.
    assert (
        main(["evaluate", "--model", str(run / "ensemble.safetensors"), "--json", "--precision", "fp32"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(ensemble.metadata["test_accuracy"])

    # Resuming a finished ensemble trains nothing more and gives the same ensemble.
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr()
    assert out.err.count("nothing left to train") == 2 or out.out.count("nothing left to train") == 2
    again = checkpoint.load_model(run / "ensemble.safetensors")
    assert again.metadata["test_accuracy"] == ensemble.metadata["test_accuracy"]


def test_join_makes_one_ensemble_of_models_and_ensembles_of_different_recipes(
    monkeypatch, mnist_dir, tmp_path, capsys
):
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    single, pair, joined = (tmp_path / f"{n}.safetensors" for n in ("single", "pair", "joined"))
    wide = DigitNet(ModelConfig(channels=(8, 8, 16), hidden=16)).eval()
    checkpoint.save_model(single, wide, {"train_config": {"recipe": "lean", "seed": 7}})
    checkpoint.save_ensemble(
        pair, [_net(1), _net(2)], [{"train_config": {"recipe": "best", "seed": s}} for s in (0, 1)], {}
    )

    assert main(["join", str(single), str(pair), "-o", str(joined)]) == 0
    assert "ensemble of 3 networks: test accuracy" in capsys.readouterr().out
    loaded = checkpoint.load_model(joined)
    assert [m["train_config"]["seed"] for m in loaded.members_metadata] == [7, 0, 1]
    assert loaded.metadata["weights_dtype"] == "float16"  # join's default
    assert "train_config" not in loaded.metadata  # two recipes: no one config speaks for all
    assert [n.config for n in members(loaded.model)] == [wide.config, TINY, TINY]
    assert (
        main(["evaluate", "--model", str(joined), "--json", "--precision", "fp32"]) == 0
    )  # as join measures
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(loaded.metadata["test_accuracy"])

    small = tmp_path / "small.safetensors"
    assert main(["join", str(joined), "--weights", "int8", "-o", str(small)]) == 0
    assert "(int8 weights," in capsys.readouterr().out
    assert checkpoint.load_model(small).metadata["weights_dtype"] == "int8"
    assert small.stat().st_size < joined.stat().st_size

    assert (
        main(["evaluate", "--model", str(small), "--json", "--precision", "fp32"]) == 0
    )  # measured = stored
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(
        checkpoint.load_model(small).metadata["test_accuracy"]
    )

    assert main(["join", str(single), str(joined), "-o", str(joined)]) == 1
    assert "is one of the models to join" in capsys.readouterr().err
    assert main(["join", str(single), "-o", str(tmp_path / "joined.pt")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err

    # --no-test writes the ensemble without even looking for the data
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(tmp_path / "no-data-here"))
    unmeasured = tmp_path / "unmeasured.safetensors"
    assert main(["join", str(single), str(pair), "--no-test", "-o", str(unmeasured)]) == 0
    assert "ensemble of 3 networks: official test set not read" in capsys.readouterr().out
    assert "test_accuracy" not in checkpoint.load_model(unmeasured).metadata


def test_predict_with_onnx_runtime_matches_pytorch(tmp_path, monkeypatch, test_digits, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MNIST_DIGITS_RUNTIME_CACHE", str(tmp_path / "cache"))  # where exports are kept
    model_path = tmp_path / "tiny.safetensors"
    checkpoint.save_model(model_path, _net(5), {})
    pixels = [test_digits.images[i] for i in range(20)]
    by_torch = load_model(model_path, precision="fp32").predict(
        pixels
    )  # ONNX's arithmetic, where bf16 is native too
    by_onnx = load_model(model_path, runtime="onnx").predict(pixels)
    assert [p.digit for p in by_onnx] == [p.digit for p in by_torch]
    assert np.allclose([p.probability for p in by_onnx], [p.probability for p in by_torch], atol=1e-4)
    assert len(list((tmp_path / "cache").rglob("*.onnx"))) == 1  # exported once, then reused
    load_model(model_path, runtime="onnx")
    assert len(list((tmp_path / "cache").rglob("*.onnx"))) == 1

    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(test_digits.images[0]).save(image)
    onnx_file = next((tmp_path / "cache").rglob("*.onnx"))
    assert main(["predict", "--model", str(onnx_file), "--json", str(image)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["digit"] == by_torch[0].digit
    with pytest.raises(Exception, match="test-time augmentation needs the PyTorch model"):
        load_model(onnx_file, tta=True)


@pytest.mark.parametrize("tta", [False, True])
def test_an_ensemble_exports_to_onnx_and_computes_the_same(tmp_path, test_digits, tta):
    pytest.importorskip("onnxruntime")
    from mnist_digits.export import OnnxModel, export_onnx, max_difference

    ensemble = Ensemble([_net(1), _net(2)], tta=tta)
    path = export_onnx(ensemble, tmp_path / "ensemble.onnx")
    x = test_digits.images[:8, None].astype(np.float32) / 255
    assert max_difference(OnnxModel.load(path), ensemble, x) < 1e-4
