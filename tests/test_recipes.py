"""recipes: TrainConfig's checks, the named recipes, FIELD=VALUE settings and the held-out images."""

import re
from dataclasses import fields, is_dataclass, replace

import numpy as np
import pytest
import torch
from conftest import SMALL

from mnist_digits.augment import STYLES
from mnist_digits.data import split_validation, validation_order
from mnist_digits.errors import MnistDigitsError
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.recipes import RECIPES, TrainConfig, held_out, held_out_by_all, recipe, with_settings


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
            "others validate on. Train the members with one split_seed",
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
    # An ensemble of two splits still has the images both held out, and only those.
    two = [network(replace(SMALL, split_seed=5)), network(replace(SMALL, seed=1, split_seed=6))]
    shared, which = held_out_by_all(two, small_mnist)
    both = set(validation_order(1200, 0.1, 5)[0]) & set(validation_order(1200, 0.1, 6)[0])
    assert 0 < len(shared.labels) == len(both) < 120
    assert np.array_equal(shared.labels, small_mnist.train.labels[sorted(both)])
    assert which == "the digits all 2 networks held out: val_fraction 0.1, split seeds 5, 6"
    alone, which = held_out_by_all(one_split, small_mnist)
    assert sorted(alone.labels.tolist()) == sorted(held_out(one_split, small_mnist).labels.tolist())
    assert which == "val_fraction 0.1, split seed 5"
    with pytest.raises(MnistDigitsError, match="held out no validation split"):
        held_out_by_all([*two, network(recipe("best", val_fraction=0.0))], small_mnist)
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


def test_robust_is_best_with_the_pen_styles_and_nothing_else():
    best, robust = RECIPES["best"], RECIPES["robust"]
    assert robust.augment.styled and not best.augment.styled
    on = {p for p, _ in STYLES if getattr(robust.augment, p)}
    assert on == {"thicken", "thin"}  # the styles chosen on validation (docs/experiments.md)
    # Every other setting, the warp's included, is best's: the comparison measures the styles.
    assert replace(robust, recipe="best", augment=best.augment) == best
    assert (robust.augment.rotation, robust.augment.zoom, robust.augment.shift) == (15.0, 0.1, 0.1)
