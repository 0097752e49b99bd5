import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SMALL

from mnist_digits import checkpoint
from mnist_digits.augment import AugmentConfig
from mnist_digits.data import Split, split_validation, to_tensors
from mnist_digits.errors import CheckpointError, MnistDigitsError
from mnist_digits.evaluate import evaluate_model
from mnist_digits.recipes import TrainConfig, held_out, recipe
from mnist_digits.train import fit


def test_fit_learns_writes_history_and_keeps_the_best_epoch(small_mnist, tmp_path):
    messages: list[str] = []
    result = fit(SMALL, small_mnist, tmp_path, progress=False, log=messages.append)
    assert len(result.history) == 2
    assert result.best_val_accuracy > 0.5  # far above chance (0.1) after two epochs
    assert result.best_val_accuracy == max(s.val_accuracy for s in result.history)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    saved = checkpoint.load_model(tmp_path / "model.safetensors")
    assert saved.metadata["epoch"] == result.best_epoch
    assert saved.metadata["train_config"]["epochs"] == 2
    assert len(saved.metadata["data_sha256"]) == 4
    assert any("val_acc" in m for m in messages)


def test_fit_logs_learning_rate_changes(small_mnist, tmp_path):
    config = replace(SMALL, epochs=3, plateau_patience=0, plateau_min_delta=1.0)  # never "improves"
    messages: list[str] = []
    fit(config, small_mnist, tmp_path, progress=False, log=messages.append)
    changes = [m for m in messages if "->" in m]
    assert len(changes) == 2 and "1.00e-03 -> 5.00e-04" in changes[0]


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["plain", "weight-average"])
def test_resumed_run_matches_an_uninterrupted_one(small_mnist, tmp_path, ema):
    config = replace(SMALL, augment=AugmentConfig(), ema=ema)
    whole = fit(config, small_mnist, tmp_path / "whole", progress=False, log=lambda m: None)
    fit(replace(config, epochs=1), small_mnist, tmp_path / "split", progress=False, log=lambda m: None)
    # Pretend the run was stopped after epoch 1: same directory, full config, --resume.
    _rewrite_epochs(tmp_path / "split" / "checkpoint.safetensors", config.epochs)
    resumed = fit(config, small_mnist, tmp_path / "split", resume=True, progress=False, log=lambda m: None)
    assert [s.val_accuracy for s in resumed.history] == [s.val_accuracy for s in whole.history]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _rewrite_epochs(path, epochs):
    tensors, metadata = checkpoint.read(path)
    metadata["train_config"]["epochs"] = epochs
    checkpoint.save(path, tensors, metadata)


def test_existing_run_is_never_overwritten_and_resume_needs_the_same_settings(small_mnist, tmp_path):
    config = replace(SMALL, epochs=1)
    fit(config, small_mnist, tmp_path, progress=False, log=lambda m: None)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(MnistDigitsError, match=r"already holds a training run.* resume=True"):
        fit(config, small_mnist, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        fit(replace(config, lr=0.5), small_mnist, tmp_path, resume=True, progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    fewer = replace(small_mnist, train=Split(small_mnist.train.images[:-50], small_mnist.train.labels[:-50]))
    with pytest.raises(CheckpointError, match=r"trained on other data .* training images then"):
        fit(config, fewer, tmp_path, resume=True, progress=False)
    other = replace(small_mnist, sha256={**small_mnist.sha256, "extra-images": "0" * 64})
    with pytest.raises(CheckpointError, match="files differ: extra-images"):
        fit(config, other, tmp_path, resume=True, progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    with pytest.raises(MnistDigitsError, match="nothing to resume"):
        fit(config, small_mnist, tmp_path / "empty", resume=True, progress=False)


def test_weight_average_is_what_is_validated_and_saved(small_mnist, tmp_path):
    config = replace(SMALL, ema=0.9)
    result = fit(config, small_mnist, tmp_path, progress=False, log=lambda m: None)
    saved = checkpoint.load_model(tmp_path / "model.safetensors")
    assert saved.metadata["epoch"] == result.best_epoch
    # the training checkpoint holds the raw weights of the last epoch; the model file, the average
    raw = checkpoint.load_model(tmp_path / "checkpoint.safetensors").model.state_dict()
    averaged = saved.model.state_dict()
    assert not any(torch.equal(raw[k], averaged[k]) for k in averaged if averaged[k].is_floating_point())
    _, val = split_validation(small_mnist.train, config.val_fraction, config.seed)
    images, labels = to_tensors(val)
    with torch.no_grad():
        accuracy = (saved.model(images).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)
    with pytest.raises(MnistDigitsError, match="decay"):
        TrainConfig(ema=1.0)


def test_checkpoint_from_before_a_new_setting_still_resumes(small_mnist, tmp_path):
    config = replace(SMALL, epochs=1)
    fit(config, small_mnist, tmp_path, progress=False, log=lambda m: None)
    path = tmp_path / "checkpoint.safetensors"
    tensors, metadata = checkpoint.read(path)
    del metadata["train_config"]["ema"]  # as written before weight averaging existed
    metadata["train_config"]["epochs"] = 2
    checkpoint.save(path, tensors, metadata)
    resumed = fit(replace(config, epochs=2), small_mnist, tmp_path, resume=True, progress=False)
    assert len(resumed.history) == 2


def test_a_final_fit_trains_on_every_image_and_keeps_the_last_epoch(small_mnist, tmp_path):
    config = replace(SMALL, val_fraction=0.0, schedule="onecycle", optimizer="adamw", lr=4e-3, ema=0.9)
    messages: list[str] = []
    result = fit(config, small_mnist, tmp_path / "run", progress=False, log=messages.append)
    assert result.best_val_accuracy is None and result.best_epoch == 2
    assert "last epoch 2 kept" in result.describe()
    assert all(s.val_accuracy is None and s.val_loss is None for s in result.history)
    assert sum("no validation" in m for m in messages) == 2
    steps = math.ceil(len(small_mnist.train.labels) / config.batch_size) * 2  # all 1,200 images
    assert checkpoint.read(tmp_path / "run" / "checkpoint.safetensors")[1]["scheduler"]["last_epoch"] == steps
    saved = checkpoint.load_model(tmp_path / "run" / "model.safetensors")
    assert saved.metadata["epoch"] == 2 and saved.metadata["val_accuracy"] is None
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["val_accuracy"] for h in history] == [None, None]  # valid JSON: null, not NaN

    # Resumed when finished, it trains nothing more and still keeps the last epoch.
    again = fit(config, small_mnist, tmp_path / "run", resume=True, progress=False, log=messages.append)
    assert "nothing left to train" in messages[-1] and again.best_epoch == 2
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_split_seed_chooses_the_validation_images_and_held_out_finds_them_again(small_mnist, tmp_path):
    config = replace(SMALL, epochs=1, seed=3, split_seed=7)
    assert config.validation_seed == 7 and replace(config, split_seed=None).validation_seed == 3
    result = fit(config, small_mnist, tmp_path / "run", progress=False, log=lambda message: None)
    metadata = checkpoint.load_model(tmp_path / "run" / "model.safetensors").metadata
    images = held_out([metadata], small_mnist)
    chosen = split_validation(small_mnist.train, 0.1, 7)[1]
    assert np.array_equal(images.images, chosen.images) and np.array_equal(images.labels, chosen.labels)
    assert not np.array_equal(images.labels, split_validation(small_mnist.train, 0.1, 3)[1].labels)
    # measured again on them, the network scores what it scored in training
    assert evaluate_model(result.model, images, "cpu").accuracy == pytest.approx(metadata["val_accuracy"])


@pytest.mark.slow
def test_full_reference_training_reaches_the_reference_accuracy(mnist, tmp_path):
    """The whole default recipe (about 25 minutes on 2 CPU cores)."""
    from mnist_digits.evaluate import evaluate_model

    result = fit(TrainConfig(), mnist, tmp_path, progress=False)
    assert evaluate_model(result.model, mnist.test).accuracy >= 0.9955


_RUN_SMALL = """
import sys
from dataclasses import replace
from mnist_digits import data
from mnist_digits.augment import AugmentConfig
from mnist_digits.model import ModelConfig
from mnist_digits.recipes import TrainConfig
from mnist_digits.train import fit

if len(sys.argv) > 3:  # deliver a real SIGTERM to this process at a chosen augmented batch
    import os, signal
    from mnist_digits import train
    calls, augment = [0], train.random_warp

    def augment_then_signal(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGTERM)
        return augment(*args, **kwargs)

    train.random_warp = augment_then_signal

mnist = data.load(data.locate())
mnist = replace(mnist, train=data.Split(mnist.train.images[:2400], mnist.train.labels[:2400]))
config = TrainConfig(epochs=2, batch_size=32, model=ModelConfig(channels=(8, 16, 16), hidden=32))
fit(config, mnist, sys.argv[1], resume=sys.argv[2] == "resume", progress=False,
    log=lambda m: print(m, flush=True))
"""


def _train_process(run_dir, mode, mnist_dir, *extra):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MNIST_DIGITS_DATA": str(mnist_dir)}
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_SMALL, str(run_dir), mode, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches(mnist_dir, tmp_path):
    """A real training process stopped mid-epoch by SIGTERM resumes to the same weights."""
    whole = _train_process(tmp_path / "whole", "new", mnist_dir)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    # 2,160 training images at batch 32 is 68 batches an epoch: batch 90 is mid-epoch 2,
    # at the same point however fast the machine is.
    stopped = _train_process(tmp_path / "stopped", "new", mnist_dir, "90")
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode != 0 and "stopped by SIGTERM in epoch 2" in err, err
    state = checkpoint.read(tmp_path / "stopped" / "checkpoint.safetensors")[1]
    assert state["epoch_in_progress"] is not None and len(state["history"]) == 1

    resumed = _train_process(tmp_path / "stopped", "resume", mnist_dir)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "Resuming" in out and "batch" in out
    a = checkpoint.read(tmp_path / "whole" / "checkpoint.safetensors")
    b = checkpoint.read(tmp_path / "stopped" / "checkpoint.safetensors")
    timing = ("seconds", "images_per_second")  # all else in the history is the same to the bit
    assert [{k: v for k, v in h.items() if k not in timing} for h in a[1]["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b[1]["history"]
    ]
    for key, tensor in a[0].items():
        if key.startswith("model."):
            assert torch.equal(tensor, b[0][key]), key


def test_onecycle_rises_to_the_peak_then_anneals_and_is_logged(small_mnist, tmp_path):
    config = replace(SMALL, schedule="onecycle", optimizer="adamw", lr=4e-3, warmup=0.3, label_smoothing=0.1)
    messages: list[str] = []
    result = fit(config, small_mnist, tmp_path, progress=False, log=messages.append)
    assert any(m.startswith("Schedule: one-cycle") for m in messages)
    first, second = (s.lr for s in result.history)  # each epoch's starting lr
    assert first == pytest.approx(4e-3 / 25) and first < second <= 4e-3
    state = checkpoint.read(tmp_path / "checkpoint.safetensors")[1]
    train_split, _ = split_validation(small_mnist.train, config.val_fraction, config.seed)
    steps = math.ceil(len(train_split.labels) / config.batch_size) * 2
    assert state["scheduler"]["last_epoch"] == steps  # stepped once per batch, to the end
    assert result.best_val_accuracy > 0.5


@pytest.mark.slow
def test_fast_recipe_reaches_99_5_percent(mnist, tmp_path):
    """The whole fast recipe (about 2-3 minutes on 2 CPU cores)."""
    from mnist_digits.evaluate import evaluate_model

    result = fit(recipe("fast"), mnist, tmp_path, progress=False)
    assert evaluate_model(result.model, mnist.test).accuracy >= 0.995


def test_bf16_autocast_trains_and_keeps_fp32_weights(small_mnist, tmp_path):
    result = fit(replace(SMALL, precision="bf16"), small_mnist, tmp_path, progress=False)
    assert result.best_val_accuracy > 0.5
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    with pytest.raises(MnistDigitsError, match="unknown precision"):
        TrainConfig(precision="fp8")


def test_auto_precision_is_resolved_said_and_recorded_as_trained(small_mnist, tmp_path, monkeypatch):
    from mnist_digits import device

    monkeypatch.setattr(device, "native_bf16", lambda d: "AMX")  # as on a CPU with AMX
    messages: list[str] = []
    config = replace(SMALL, epochs=1, precision="auto")
    fit(config, small_mnist, tmp_path, progress=False, log=messages.append)
    assert "Training in precision bf16 (auto: AMX computes bf16 natively)." in messages
    saved = checkpoint.load_model(tmp_path / "model.safetensors").metadata["train_config"]
    assert saved["precision"] == "bf16"  # what it trained in, never "auto"
    fit(config, small_mnist, tmp_path, resume=True, progress=False, log=messages.append)  # the same here
    monkeypatch.setattr(device, "native_bf16", lambda d: None)  # another machine: fp32 there
    with pytest.raises(CheckpointError, match=r"other settings \(precision differ\)"):
        fit(config, small_mnist, tmp_path, resume=True, progress=False)


def test_the_model_file_is_written_once_when_training_ends_with_all_it_measured(small_mnist, tmp_path):
    from mnist_digits import checkpoint as files

    present_during_training = []

    def log(message: str) -> None:
        if message.startswith("epoch  1/"):
            present_during_training.append((tmp_path / "model.safetensors").exists())

    writes = []
    real = files.save_model
    files.save_model = lambda path, *rest: (writes.append(path), real(path, *rest))
    try:
        result = fit(SMALL, small_mnist, tmp_path, test=small_mnist.test, progress=False, log=log)
    finally:
        files.save_model = real
    assert present_during_training == [False] and writes == [tmp_path / "model.safetensors"]
    metadata = checkpoint.load_model(result.path).metadata
    assert [h["epoch"] for h in metadata["history"]] == [1, 2]
    assert result.test is not None and metadata["test_accuracy"] == result.test.accuracy
    assert metadata["epoch"] == result.best_epoch and metadata["val_accuracy"] == result.best_val_accuracy
    assert evaluate_model(result.model, small_mnist.test).accuracy == pytest.approx(result.test.accuracy)


def test_sharpness_aware_training_learns_and_is_logged(small_mnist, tmp_path):
    messages: list[str] = []
    result = fit(replace(SMALL, sam=0.05), small_mnist, tmp_path, progress=False, log=messages.append)
    assert result.best_val_accuracy > 0.5
    assert any("Sharpness-aware" in m for m in messages)
    assert checkpoint.load_model(tmp_path / "model.safetensors").metadata["train_config"]["sam"] == 0.05
    with pytest.raises(MnistDigitsError, match=r"sam -0\.1"):
        TrainConfig(sam=-0.1)
