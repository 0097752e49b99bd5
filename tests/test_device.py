"""device.pick_device: CUDA, then Apple's MPS, then the CPU; names checked, not trusted."""

import pytest
import torch

from mnist_digits import device
from mnist_digits.errors import MnistDigitsError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.pick_device() == torch.device("cpu")
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.pick_device("auto") == torch.device("cuda")


def test_the_cpu_is_always_there():
    assert device.pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", "unknown device 'gpu'; give auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("meta", "device 'meta' is not supported"),
    ],
)
def test_unknown_names_are_refused_with_the_choices(name, message):
    with pytest.raises(MnistDigitsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        device.pick_device(name)


def test_a_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: False)
    with pytest.raises(MnistDigitsError, match="sees no CUDA GPU here; use cpu, or auto"):
        device.pick_device("cuda")
    with pytest.raises(MnistDigitsError, match="no Apple MPS GPU here"):
        device.pick_device("mps")


def test_a_gpu_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(MnistDigitsError, match=r"sees 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        device.pick_device("cuda:2")


@pytest.mark.gpu
@needs_cuda
def test_auto_takes_the_gpu_and_the_model_runs_there():
    from mnist_digits.predict import load_model

    chosen = device.pick_device()
    assert chosen.type == "cuda"
    recognizer = load_model(device="auto")
    probabilities = recognizer.probabilities(torch.zeros(3, 28, 28).numpy())
    assert probabilities.shape == (3, 10) and abs(probabilities.sum() - 3) < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_on_the_gpu_agrees_with_fp32():
    from mnist_digits.pretrained import load

    model = load("best", "cuda").model
    images = torch.rand(64, 1, 28, 28, device="cuda")
    with torch.inference_mode():
        fp32 = model(images).argmax(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(images).argmax(1)
    assert (fp32 == bf16).float().mean() >= 0.95


def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert device.native_bf16(cpu) is None
    auto = device.pick_precision("auto", cpu)
    assert auto.name == "fp32" and not auto.bf16 and "emulated" in auto.describe()
    assert device.pick_precision("bf16", cpu).bf16  # asked for: kept, and said to be slower
    assert "emulated here, slower" in device.pick_precision("bf16", cpu).reason

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert device.native_bf16(cpu) == "AVX-512 BF16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert device.native_bf16(cpu) == "AMX"
    auto = device.pick_precision("auto", cpu)
    assert auto.bf16 and auto.describe() == "precision bf16 (auto: AMX computes bf16 natively)"
    assert device.pick_precision("fp32", cpu).name == "fp32"  # forced, whatever the CPU
    assert device.native_bf16(torch.device("mps")) is None


def test_unknown_precisions_are_refused_with_the_choices():
    with pytest.raises(MnistDigitsError, match=r"unknown precision 'fp8'; choose auto, fp32, bf16\."):
        device.pick_precision("fp8", torch.device("cpu"))


@pytest.mark.gpu
@needs_cuda
def test_auto_precision_on_a_gpu_follows_its_bf16_support():
    gpu = torch.device("cuda")
    assert device.pick_precision("auto", gpu).bf16 == torch.cuda.is_bf16_supported()
