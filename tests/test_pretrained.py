"""The models shipped inside the package load by name and keep the accuracy they state."""

import pytest

from mnist_digits import pretrained
from mnist_digits.errors import CheckpointError
from mnist_digits.evaluate import evaluate_model


def test_reference_model_ships_with_its_metadata():
    loaded = pretrained.load("reference")
    metadata = loaded.metadata
    assert metadata["train_config"]["recipe"] == "reference"
    assert metadata["test_accuracy"] >= 0.9955
    assert len(metadata["history"]) == metadata["train_config"]["epochs"]
    assert set(metadata["data_sha256"]) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }


def test_reference_model_reaches_the_reference_accuracy_on_the_official_test_set(mnist):
    loaded = pretrained.load("reference")
    evaluation = evaluate_model(loaded.model, mnist.test)
    assert evaluation.accuracy >= 0.9955
    assert evaluation.accuracy == pytest.approx(loaded.metadata["test_accuracy"], abs=1e-4)


def test_best_model_ships_beside_the_reference_and_beats_it(mnist):
    assert set(pretrained.available()) >= {"reference", "best"}
    loaded = pretrained.load("best")
    assert loaded.metadata["train_config"]["recipe"] == "best"
    evaluation = evaluate_model(loaded.model, mnist.test)
    assert evaluation.accuracy == pytest.approx(loaded.metadata["test_accuracy"], abs=1e-4)
    assert evaluation.accuracy > pretrained.load("reference").metadata["test_accuracy"]


def test_shipped_ensemble_holds_every_best_and_lean_network_within_5_mb(mnist):
    from mnist_digits.ensemble import Ensemble

    loaded = pretrained.load("ensemble")
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 10
    recipes = [(m["train_config"]["recipe"], m["train_config"]["seed"]) for m in loaded.members_metadata]
    # the composition fixed before testing: all of `best` and `lean`, then `full` networks in
    # order of their validation accuracy while the float16 weights stay within 10 MB (with five
    # `best` networks, no `full` one fits)
    assert recipes == [("best", s) for s in range(5)] + [("lean", s) for s in range(5)]
    float16_bytes = sum(2 * p.numel() for p in loaded.model.state_dict().values() if p.is_floating_point())
    assert float16_bytes <= 10_000_000
    assert pretrained.available()["ensemble"].stat().st_size <= 5_000_000  # int8: no tracked file over 5 MB
    assert loaded.metadata["weights_dtype"] == "int8"
    evaluation = evaluate_model(loaded.model, mnist.test)
    assert evaluation.accuracy == pytest.approx(loaded.metadata["test_accuracy"], abs=1e-4)
    members = [m["test_accuracy"] for m in loaded.members_metadata]
    assert evaluation.accuracy >= sum(members) / len(members)


def test_every_shipped_network_is_its_recipe_with_its_seed():
    """`train --recipe NAME --seed S` reproduces each shipped network's settings exactly (in fp32, which
    `--precision auto` takes on a CPU without native bf16, like the one they were trained on)."""
    from dataclasses import asdict

    from mnist_digits.recipes import TrainConfig, recipe

    networks = [pretrained.load(name).metadata for name in ("reference", "best")]
    networks += pretrained.load("ensemble").members_metadata
    for metadata in networks:
        config = TrainConfig.from_dict(metadata["train_config"])
        # recipes compute in `auto` precision; fp32 is what auto takes on CPUs without native bf16
        assert config.precision == "fp32" and recipe(config.recipe).precision == "auto"
        asked = recipe(config.recipe, seed=config.seed, precision="fp32")
        assert asdict(config) == asdict(asked), config
        # trained before the augmentation's styles existed: stored without them, read with them off
        assert "thicken" not in metadata["train_config"]["augment"] and not config.augment.styled
    # `best` as it stands (sharpness-aware steps), alone and in the ensemble
    best_networks = [m for m in networks if m["train_config"]["recipe"] == "best"]
    assert len(best_networks) == 6
    assert recipe("best").sam > 0
    assert {m["train_config"]["sam"] for m in best_networks} == {recipe("best").sam}


def test_a_shipped_name_is_found_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reference").mkdir()  # e.g. the run directory `make train` writes
    assert pretrained.resolve("reference") == pretrained.available()["reference"]
    with pytest.raises(CheckpointError, match="is a folder, not a model file"):
        pretrained.resolve("./reference")
    with pytest.raises(CheckpointError, match="no such model file"):
        pretrained.resolve("runs/absent")
    with pytest.raises(CheckpointError, match="neither a model file nor a shipped model"):
        pretrained.resolve("absent")
