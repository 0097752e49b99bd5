"""Faults during training: a full disk, a read-only directory, damaged checkpoints.

The full and read-only disks are real: small tmpfs mounts (skipped where mounting is not
allowed). Each case must end in a clear error and leave every earlier file as it was.
"""

import os
import subprocess
import uuid
from dataclasses import replace

import pytest

from mnist_digits import checkpoint
from mnist_digits.cli import main
from mnist_digits.errors import CheckpointError, MnistDigitsError
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.recipes import TrainConfig
from mnist_digits.train import fit

SMALL = TrainConfig(epochs=1, batch_size=32, model=ModelConfig(channels=(4, 8, 8), hidden=16))


def _mount(tmp_path, options: str):
    point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    return point


@pytest.fixture
def small_disk(tmp_path):
    point = _mount(tmp_path, "size=4m")
    yield point
    subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    point = _mount(tmp_path, "ro,size=1m")
    yield point
    subprocess.run(["umount", str(point)], check=False)


def _fill(directory, leave_bytes: int) -> None:
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def test_full_disk_keeps_the_earlier_model_and_says_so(small_disk):
    path = small_disk / "model.safetensors"
    checkpoint.save_model(path, DigitNet(SMALL.model), {"version": 1})
    before = path.read_bytes()
    _fill(small_disk, leave_bytes=64 * 1024)
    with pytest.raises(MnistDigitsError, match="no space left"):
        checkpoint.save_model(path, DigitNet(), {"version": 2})  # 2.9 MB does not fit
    assert path.read_bytes() == before
    assert not list(small_disk.glob("*.tmp"))


def test_training_on_a_full_disk_stops_with_a_clear_error(small_disk, mnist, capsys, monkeypatch, mnist_dir):
    _fill(small_disk, leave_bytes=256 * 1024)
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    assert main(["train", "--dry-run", "--no-progress", "--out", str(small_disk / "run")]) == 1
    err = capsys.readouterr().err
    assert "no space left" in err and "Traceback" not in err
    assert not list((small_disk / "run").glob("*.tmp"))


def test_read_only_output_directory_is_a_clear_error(read_only_disk, capsys, monkeypatch, mnist_dir):
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    assert main(["train", "--dry-run", "--no-progress", "--out", str(read_only_disk / "run")]) == 1
    err = capsys.readouterr().err
    assert "not allowed to write here" in err and "Traceback" not in err


def test_resume_from_a_truncated_checkpoint_is_refused_and_the_file_kept(tmp_path, mnist):
    small = replace(mnist, train=type(mnist.train)(mnist.train.images[:600], mnist.train.labels[:600]))
    fit(SMALL, small, tmp_path, progress=False, log=lambda m: None)
    state = tmp_path / "checkpoint.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    damaged = state.read_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fit(SMALL, small, tmp_path, resume=True, progress=False)
    assert state.read_bytes() == damaged  # evidence kept for the user to inspect


def test_resume_from_another_architecture_is_refused(tmp_path, mnist):
    small = replace(mnist, train=type(mnist.train)(mnist.train.images[:600], mnist.train.labels[:600]))
    fit(SMALL, small, tmp_path, progress=False, log=lambda m: None)
    wider = replace(SMALL, model=ModelConfig(channels=(8, 8, 8), hidden=16))
    with pytest.raises(CheckpointError, match="other settings"):
        fit(wider, small, tmp_path, resume=True, progress=False)
