"""Data-parallel training for real: torchrun starts two gloo processes on this CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mnist_digits import checkpoint
from mnist_digits.distributed import SINGLE_PROCESS, any_all, sum_all

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]

# A small network whose BatchNorm statistics settle within a short run (momentum 0.1, not
# Keras' 0.01), so that validation accuracy after 3 epochs is a fair comparison.
_FIT_SMALL = """
import sys
from dataclasses import replace
from mnist_digits import data, distributed
from mnist_digits.evaluate import evaluate_model
from mnist_digits.model import ModelConfig
from mnist_digits.recipes import TrainConfig
from mnist_digits.train import fit

cluster, device = distributed.join(__import__("torch").device("cpu"))
mnist = data.load(data.locate())
mnist = replace(mnist, train=data.Split(mnist.train.images[:6000], mnist.train.labels[:6000]))
model = ModelConfig(channels=(8, 16, 32), hidden=32, bn_momentum=0.1)
result = fit(TrainConfig(epochs=3, model=model), mnist, sys.argv[1], progress=False, cluster=cluster)
if cluster.is_main:
    print("test", evaluate_model(result.model, mnist.test).accuracy)
distributed.leave(cluster)
"""


def _run(command, mnist_dir):
    env = {**os.environ, "MNIST_DIGITS_DATA": str(mnist_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_reach_the_accuracy_of_one(tmp_path, mnist_dir):
    script = tmp_path / "fit_small.py"
    script.write_text(_FIT_SMALL)
    one = _run([sys.executable, str(script), str(tmp_path / "one")], mnist_dir)
    two = _run([*TORCHRUN, str(script), str(tmp_path / "two")], mnist_dir)
    accuracy_one = float(one.stdout.split("test")[-1])
    accuracy_two = float(two.stdout.split("test")[-1])
    assert two.stdout.count("test") == 1  # only the main process prints
    # both learn (about 92-94% after 3 epochs on 6,000 images, depending on the CPU's kernels)
    assert accuracy_one > 0.90 and accuracy_two > 0.90
    assert abs(accuracy_one - accuracy_two) < 0.02


def test_torchrun_cli_writes_one_model_that_loads_in_a_single_process(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = _run(
        [*TORCHRUN, "-m", "mnist_digits", "train", "--dry-run", "--no-progress", "--out", str(out)], mnist_dir
    )
    assert "2 processes" in result.stderr and result.stdout.count("test accuracy") == 1
    metadata = checkpoint.load_model(out / "model.safetensors").metadata
    assert 0 < metadata["test_accuracy"] <= 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    seen = history[0]["images_per_second"] * history[0]["seconds"]
    assert seen == pytest.approx(1800, rel=0.01)  # both shares, counted once: 90% of 2,000
    assert not list(out.glob("*.tmp"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchrun_on_gpus_trains_with_nccl_in_bf16(tmp_path, mnist_dir):
    """One process per GPU, gradients over NCCL, the data and augmentation on the device, and
    precision auto taking bf16 where the GPU has it."""
    gpus = torch.cuda.device_count()
    out = tmp_path / "run"
    command = [*TORCHRUN[:-1], f"--nproc-per-node={gpus}", "-m", "mnist_digits", "train", "--dry-run"]
    result = _run([*command, "--no-progress", "--device", "cuda", "--out", str(out)], mnist_dir)
    assert "on cuda" in result.stderr and result.stdout.count("test accuracy") == 1
    if gpus > 1:
        assert f"{gpus} processes" in result.stderr
    metadata = checkpoint.load_model(out / "model.safetensors").metadata
    assert metadata["device"].startswith("cuda") and 0 < metadata["test_accuracy"] <= 1
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert metadata["train_config"]["precision"] == expected


def test_single_process_helpers_are_no_ops():
    assert sum_all([1.0, 2.0], SINGLE_PROCESS, "cpu") == [1.0, 2.0]
    assert any_all(True, SINGLE_PROCESS, "cpu") is True
    assert SINGLE_PROCESS.is_main and not SINGLE_PROCESS.distributed
