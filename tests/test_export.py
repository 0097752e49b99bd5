"""ONNX export and int8 quantization of the real models, checked against PyTorch."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mnist_digits import data, pretrained
from mnist_digits.errors import MnistDigitsError
from mnist_digits.export import OnnxModel, check_export, export_onnx, quantize_int8


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist):
    model = pretrained.load("reference").model
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, folder / "reference.onnx")
    calibration = data.to_tensors(data.Split(mnist.train.images[:256], mnist.train.labels[:256]))[0].numpy()
    int8 = quantize_int8(fp32, folder / "reference-int8.onnx", calibration)
    return model, OnnxModel.load(fp32), OnnxModel.load(int8)


def test_onnx_matches_pytorch_for_any_batch_size(exported, mnist):
    model, fp32, _ = exported
    images = data.to_tensors(data.Split(mnist.test.images[:300], mnist.test.labels[:300]))[0].numpy()
    for batch in (1, 7, 300):
        assert check_export(fp32, model, images[:batch], tolerance=1e-4) < 1e-4


def test_int8_model_keeps_the_accuracy(exported, mnist):
    _, fp32, int8 = exported
    images, labels = data.to_tensors(data.Split(mnist.test.images[:2000], mnist.test.labels[:2000]))
    x, y = images.numpy(), labels.numpy()
    accuracy_fp32 = (fp32.logits(x).argmax(1) == y).mean()
    accuracy_int8 = (int8.logits(x).argmax(1) == y).mean()
    assert accuracy_fp32 > 0.99
    assert accuracy_int8 >= accuracy_fp32 - 0.002  # at most 4 of 2,000 digits change
    assert int8.path.stat().st_size < fp32.path.stat().st_size / 3


def test_a_network_with_5x5_kernels_exports_too(tmp_path, mnist):
    import torch

    from mnist_digits.model import DigitNet, ModelConfig

    torch.manual_seed(0)
    model = DigitNet(ModelConfig(channels=(8, 16, 32), conv_batchnorm=True, kernel=5)).eval()
    onnx_model = OnnxModel.load(export_onnx(model, tmp_path / "k5.onnx"))
    images = data.to_tensors(data.Split(mnist.test.images[:16], mnist.test.labels[:16]))[0].numpy()
    assert check_export(onnx_model, model, images, tolerance=1e-4) < 1e-4


def test_a_broken_onnx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(MnistDigitsError, match="not a loadable ONNX model"):
        OnnxModel.load(path)


def test_export_is_refused_when_outputs_differ(exported, mnist):
    model, fp32, _ = exported
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with pytest.raises(MnistDigitsError, match="differ from PyTorch"):
        check_export(fp32, model, images, tolerance=0.0)


def test_an_export_is_checked_on_test_images_and_calibrated_on_training_ones(mnist):
    from mnist_digits.export import export_images

    images = export_images(mnist, int8=True)
    assert (images.checked_on, images.calibrated_on) == ("test", "training")
    test_images, test_labels = images.test
    assert test_images.shape == (len(mnist.test.labels), 1, 28, 28) and test_images.max() <= 1.0
    np.testing.assert_array_equal(test_labels, mnist.test.labels)
    np.testing.assert_allclose(images.check * 255, mnist.test.images[: len(images.check), None], atol=1e-3)
    np.testing.assert_allclose(
        images.calibration * 255, mnist.train.images[: len(images.calibration), None], atol=1e-3
    )
    assert export_images(mnist).calibration is None  # no int8, nothing to calibrate


def test_without_mnist_an_export_is_checked_and_calibrated_on_generated_digits():
    from mnist_digits.export import export_images

    images = export_images(None, int8=True)
    assert (images.checked_on, images.calibrated_on, images.test) == ("generated", "generated", None)
    assert images.check.shape[1:] == images.calibration.shape[1:] == (1, 28, 28)
    assert not np.array_equal(
        images.check[: len(images.calibration)], images.calibration[: len(images.check)]
    )
    assert export_images(None).calibration is None


def test_export_command_writes_checked_fp32_and_int8_models(tmp_path, monkeypatch, mnist_dir, capsys):
    from mnist_digits.cli import main

    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    assert main(["export", "--model", "reference", "--int8", "-o", str(tmp_path / "reference.onnx")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "reference.onnx").is_file() and (tmp_path / "reference-int8.onnx").is_file()
    accuracies = [float(line.split()[-1].rstrip("%")) for line in out.splitlines() if "test accuracy" in line]
    assert len(accuracies) == 2 and accuracies[0] >= 99.55 and accuracies[1] >= accuracies[0] - 0.05
