import json
import math
import re
from dataclasses import fields, is_dataclass, replace

import numpy as np
import pytest
import torch

from mnist_digits import checkpoint
from mnist_digits.augment import AugmentConfig
from mnist_digits.data import Mnist, Split, split_validation, to_tensors
from mnist_digits.errors import CheckpointError, MnistDigitsError
from mnist_digits.evaluate import evaluate_model
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.train import (
    RECIPES,
    PlateauScheduler,
    TrainConfig,
    fit,
    held_out,
    make_scheduler,
    recipe,
    sharpness_aware_gradients,
    with_settings,
)

# A small network and a few epochs on 1,200 real digits: seconds, not minutes.
SMALL = TrainConfig(
    epochs=2,
    batch_size=32,
    augment=AugmentConfig(rotation=0, zoom=0, shift=0),
    model=ModelConfig(channels=(8, 16, 16), hidden=32),
)


@pytest.fixture(scope="module")
def small_mnist(mnist: Mnist) -> Mnist:
    return Mnist(
        Split(mnist.train.images[:1200], mnist.train.labels[:1200]),
        Split(mnist.test.images[:200], mnist.test.labels[:200]),
        mnist.directory,
        mnist.sha256,
    )


def _lr_after(accuracies: list[float], config: TrainConfig) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = PlateauScheduler(optimizer, config)
    rates = []
    for accuracy in accuracies:
        scheduler.after_epoch(accuracy)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_plateau_halves_lr_after_three_epochs_without_improvement():
    rates = _lr_after([0.90, 0.95, 0.95, 0.95, 0.95, 0.96, 0.96, 0.96, 0.96], TrainConfig())
    assert rates == [1e-3] * 4 + [5e-4] * 4 + [2.5e-4]


def test_plateau_counts_gains_below_min_delta_as_no_improvement():
    rates = _lr_after([0.99, 0.99005, 0.99009, 0.99009], TrainConfig())
    assert rates[-1] == 5e-4


def test_plateau_reports_each_change_and_respects_the_floor():
    config = replace(TrainConfig(), plateau_patience=0, min_lr=3e-4)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = PlateauScheduler(optimizer, config)
    assert scheduler.after_epoch(0.5) is None  # the first epoch sets the best
    assert scheduler.after_epoch(0.5) == (1e-3, 5e-4)
    assert scheduler.after_epoch(0.5) == (5e-4, 3e-4)
    assert scheduler.after_epoch(0.5) is None  # at the floor: nothing left to change


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


def test_an_interrupted_ensemble_says_which_member_stopped(small_mnist, tmp_path, monkeypatch):
    from mnist_digits import train
    from mnist_digits.errors import TrainingInterrupted

    seeds = []

    def fit_until_the_second(config, data, run_dir, **options):
        seeds.append(config.seed)
        if len(seeds) == 2:
            raise TrainingInterrupted("stopped by SIGTERM in epoch 1, batch 3; continue with --resume.")
        return None

    monkeypatch.setattr(train, "fit", fit_until_the_second)
    with pytest.raises(TrainingInterrupted, match=r"^ensemble member 2 of 3 stopped by SIGTERM"):
        train.fit_ensemble(replace(SMALL, seed=5), small_mnist, tmp_path, 3, log=lambda m: None)
    assert seeds == [5, 6]  # the third never started


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


def test_a_final_fit_needs_a_schedule_that_does_not_watch_validation():
    with pytest.raises(MnistDigitsError, match="plateau schedule cuts the learning rate by validation"):
        TrainConfig(val_fraction=0.0)
    with pytest.raises(MnistDigitsError, match=r"val_fraction 1.0: give a share in \[0, 1\)"):
        recipe("best", val_fraction=1.0)
    assert recipe("best", val_fraction=0.0).validates is False


def test_settings_change_any_field_of_a_recipe_and_refuse_what_they_cannot_read():
    best = recipe("best")
    config = with_settings(
        best,
        [
            "label_smoothing=0.05",
            "augment.rotation=10",
            "model.channels=32,64,128",
            "model.conv_batchnorm=false",
            " epochs = 3",
        ],
    )
    assert config.label_smoothing == 0.05 and config.augment.rotation == 10.0 and config.epochs == 3
    assert config.model.channels == (32, 64, 128) and config.model.conv_batchnorm is False
    assert config.recipe == "best" and config.augment.zoom == best.augment.zoom  # the rest untouched
    assert with_settings(best, []) == best
    for setting, message in [
        ("rotation=10", "there is no setting 'rotation' here; choose one of epochs, batch_size"),
        ("recipe=fast", "there is no setting 'recipe'"),  # the preset's name is not a setting
        ("augment=10", "augment is a group of settings; name one: augment.rotation, augment.zoom"),
        ("epochs.x=1", "epochs is a single setting, with nothing inside it"),
        ("epochs=2.5", "'2.5' is not a value of this setting; give one like its current value, 30."),
        ("model.channels=8,16", "give one like its current value, 24,48,96."),
        ("model.conv_batchnorm=maybe", "current value, True."),
        ("label_smoothing", "write FIELD=VALUE, such as augment.rotation=10"),
        ("optimizer=sgd", "unknown optimizer 'sgd'"),  # the config's own checks still apply
        ("epochs=0", "epochs 0: give a whole number, 1 or more (the reference uses 20)."),
        ("batch_size=-1", "batch_size -1: give a whole number, 1 or more"),
        ("lr=0", "lr 0.0: give a number above 0"),
        ("warmup=1", "warmup 1.0: give a share between 0 and 1"),
        ("label_smoothing=1", "label_smoothing 1.0: give a share in [0, 1)"),
    ]:
        with pytest.raises(MnistDigitsError, match=re.escape(message)):
            with_settings(best, [setting])


def test_every_recipe_holds_values_of_its_fields_types():
    """--set reads a value like the field's current one: a recipe's 15 for a float 15.0 would
    make it refuse 7.5."""

    def mismatches(settings, prefix=""):
        for f in fields(settings):
            value = getattr(settings, f.name)
            if is_dataclass(value):
                yield from mismatches(value, f"{prefix}{f.name}.")
            elif ("None" if value is None else type(value).__name__) not in f.type.split("[")[0].split(" | "):
                yield f"{prefix}{f.name}: {f.type} holds {value!r}"

    assert [(name, m) for name, config in RECIPES.items() for m in mismatches(config)] == []


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


def test_held_out_refuses_networks_it_cannot_validate_without_leaking(small_mnist):
    def network(config: TrainConfig = SMALL, **metadata) -> dict:
        return {"train_config": config.to_dict(), "data_sha256": small_mnist.sha256, **metadata}

    one_split = [network(replace(SMALL, seed=seed, split_seed=5)) for seed in (0, 1, 2)]
    assert np.array_equal(
        held_out(one_split, small_mnist).labels, split_validation(small_mnist.train, 0.1, 5)[1].labels
    )
    assert len(held_out([network(train_images=1200)], small_mnist).labels) == 120
    for networks, message in [
        (
            [network(), network(replace(SMALL, seed=1)), network(replace(SMALL, seed=4, split_seed=1))],
            "held out different validation images (split seeds 0, 1), so each trained on images the "
            "others validate on. Train the members on one split",
        ),
        ([network(recipe("best", val_fraction=0.0))], "it held out no validation split"),
        (
            [network(data_sha256={"train-images-idx3-ubyte": "0" * 64})],
            "trained on other images than these 1,200",
        ),
        ([network(train_images=2000)], "trained on other images"),  # a --dry-run's first 2,000
        ([network(), {"note": "untrained"}], "network 2 of 2 does not record its training settings"),
    ]:
        with pytest.raises(MnistDigitsError, match=re.escape(message)):
            held_out(networks, small_mnist)
    with pytest.raises(MnistDigitsError, match=re.escape("split_seed -1: give a whole number, 0 or more.")):
        replace(SMALL, split_seed=-1)
    assert with_settings(SMALL, ["split_seed=4"]).split_seed == 4
    assert with_settings(replace(SMALL, split_seed=4), ["split_seed=none"]).split_seed is None
    with pytest.raises(
        MnistDigitsError,
        match=re.escape("'abc' is not a value of this setting; give a whole number, or none."),
    ):
        with_settings(SMALL, ["split_seed=abc"])


def test_recipe_overrides_and_unknown_names():
    assert recipe("reference", epochs=3, lr=None).epochs == 3
    assert recipe("reference").lr == 1e-3
    with pytest.raises(MnistDigitsError, match="unknown recipe"):
        recipe("nope")


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
from mnist_digits.train import TrainConfig, fit

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


def test_onecycle_ends_at_the_peak_over_final_div():
    for final_div in (25_000.0, 4.0):
        config = replace(
            SMALL, schedule="onecycle", optimizer="adamw", lr=8e-3, epochs=3, final_div=final_div
        )
        optimizer = torch.optim.AdamW(DigitNet(config.model).parameters(), lr=config.lr)
        scheduler = make_scheduler(optimizer, config, train_size=10 * config.batch_size)
        lrs = []
        for _ in range(30 + 5):  # 3 epochs of 10 batches, and spare steps that must change nothing
            optimizer.step()
            scheduler.after_batch()
            lrs.append(optimizer.param_groups[0]["lr"])  # the next batch's lr
        assert max(lrs) == pytest.approx(8e-3, rel=0.01)
        assert lrs[28] == pytest.approx(8e-3 / final_div)  # the last batch's
        assert lrs[-1] == lrs[29]
        assert f"down to {8e-3 / final_div:.1e}" in scheduler.describe()
    with pytest.raises(MnistDigitsError, match=re.escape("final_div 0.5: give a ratio, 1 or more")):
        TrainConfig(final_div=0.5)


def test_unknown_optimizer_or_schedule_is_a_clear_error():
    with pytest.raises(MnistDigitsError, match="unknown optimizer 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(MnistDigitsError, match="unknown schedule"):
        TrainConfig(schedule="cosine")


def test_every_recipe_builds_its_network():
    for name, config in RECIPES.items():
        assert config.recipe == name
        model = DigitNet(config.model)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert RECIPES["reference"].model == ModelConfig()  # the reference stays the notebook's


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


def test_sharpness_aware_gradients_are_taken_uphill_and_leave_the_network_as_it_was():
    config = recipe("best", sam=0.05)
    torch.manual_seed(0)
    model = DigitNet(config.model).train()
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def loss_of(network):
        return torch.nn.functional.cross_entropy(network(images), labels, label_smoothing=0.1)

    # the expected gradients, by hand: a copy moved 0.05 along the normalized gradient
    loss_of(model).backward()
    uphill = DigitNet(config.model).train()
    uphill.load_state_dict(model.state_dict())
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    with torch.no_grad():
        for moved, p in zip(uphill.parameters(), model.parameters(), strict=True):
            moved.add_(p.grad * 0.05 / norm)
    loss_of(uphill).backward()

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    sharpness_aware_gradients(model, images, labels, config)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), f"{name} changed"  # weights and BatchNorm statistics
    for p, expected in zip(model.parameters(), uphill.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected.grad)
    assert model[0].weight.grad.abs().sum() > 0  # a real gradient, not zeros


def test_sharpness_aware_training_learns_and_is_logged(small_mnist, tmp_path):
    messages: list[str] = []
    result = fit(replace(SMALL, sam=0.05), small_mnist, tmp_path, progress=False, log=messages.append)
    assert result.best_val_accuracy > 0.5
    assert any("Sharpness-aware" in m for m in messages)
    assert checkpoint.load_model(tmp_path / "model.safetensors").metadata["train_config"]["sam"] == 0.05
    with pytest.raises(MnistDigitsError, match=r"sam -0\.1"):
        TrainConfig(sam=-0.1)
