import json

import pytest
import torch
from safetensors import torch as safetensors_torch

from mnist_digits import checkpoint, data, evaluate, pretrained, train
from mnist_digits.cli import main
from mnist_digits.model import DigitNet, ModelConfig


@pytest.fixture
def data_env(monkeypatch, mnist_dir):
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.safetensors"
    checkpoint.save_model(path, DigitNet(ModelConfig(channels=(4, 8, 8), hidden=16)), {"note": "untrained"})
    return path


def test_summary_prints_the_keras_totals(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 730,602" in out and "Trainable params: 730,346" in out


def test_data_reports_verified_files(data_env, capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert out.count("sha256 verified") == 4 and "60000x28x28" in out
    assert main(["data", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["problem"] for f in report["files"]] == [None] * 4


def test_data_dir_with_a_bad_file_is_an_error_not_a_download(tmp_path, capsys, mnist_dir):
    for source in mnist_dir.iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes())
    labels = data.find_file(tmp_path, "t10k-labels-idx1-ubyte")  # .gz from the mirrors, raw from PyPI's copy
    assert labels is not None
    labels.write_bytes(labels.read_bytes()[:-10])
    assert main(["data", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and labels.name in err and "Traceback" not in err


def test_dry_run_training_then_evaluate_with_figures(data_env, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--dry-run",
        "--no-progress",
        "--out",
        str(run),
        "--seed",
        "3",
        "--set",
        "augment.elastic=20",
    ]
    assert main([*argv, "--ema", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    metadata = checkpoint.load_model(run / "model.safetensors").metadata
    assert 0.1 < metadata["test_accuracy"] <= 1 and metadata["train_config"]["seed"] == 3
    assert metadata["train_config"]["augment"]["elastic"] == 20.0
    assert metadata["train_config"]["ema"] == 0.99
    assert len(metadata["history"]) == 1

    figures = tmp_path / "figures"
    evaluate = ["evaluate", "--model", str(run / "model.safetensors"), "--out", str(figures), "--json"]
    assert main([*evaluate, "--precision", "fp32"]) == 0  # as `train` measures it; auto may take bf16
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(metadata["test_accuracy"])
    written = sorted(p.name for p in figures.iterdir())
    assert written == ["confusion.png", "curves.png", "misclassified.png", "reliability.png"]

    # The same run directory again without --resume: refused, nothing lost.
    assert main(["train", "--dry-run", "--no-progress", "--out", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_no_test_trains_an_ensemble_with_changed_settings_and_never_reads_the_test_set(
    data_env, tmp_path, capsys, monkeypatch
):
    def read_the_test_set(*args, **kwargs):
        raise AssertionError("--no-test read the official test set")

    monkeypatch.setattr(evaluate, "evaluate_model", read_the_test_set)
    monkeypatch.setattr(train, "evaluate_model", read_the_test_set)  # the name train measures with
    run = tmp_path / "run"
    argv = ["train", "--dry-run", "--no-progress", "--no-test", "--ensemble", "2", "--out", str(run)]
    settings = ["augment.rotation=5", "model.channels=8,16,16", "label_smoothing=0.05"]
    assert main([*argv, *(arg for s in settings for arg in ("--set", s))]) == 0
    assert (
        capsys.readouterr().out.count("official test set not read (--no-test)") == 3
    )  # 2 networks, 1 ensemble
    for member in ("member0", "member1"):
        metadata = checkpoint.load_model(run / member / "model.safetensors").metadata
        assert "test_accuracy" not in metadata and len(metadata["history"]) == 1
        config = metadata["train_config"]
        assert config["augment"]["rotation"] == 5.0 and config["model"]["channels"] == [8, 16, 16]
        assert config["label_smoothing"] == 0.05
    assert "test_accuracy" not in checkpoint.load_model(run / "ensemble.safetensors").metadata

    assert main(["train", "--dry-run", "--out", str(tmp_path / "bad"), "--set", "augment.spin=5"]) == 1
    assert "there is no setting 'spin' here; choose one of rotation, zoom" in capsys.readouterr().err


def test_final_fit_from_the_command_line_then_its_report(data_env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "fast"  # the default run directory is named after the recipe
    assert main(["train", "--recipe", "fast", "--dry-run", "--no-progress", "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "last epoch 1 kept (no validation split" in out and "test accuracy" in out
    assert checkpoint.load_model(run / "model.safetensors").metadata["train_config"]["val_fraction"] == 0.0
    assert main(["report", "--model", str(run / "model.safetensors"), "-o", str(tmp_path / "r.html")]) == 0
    assert "none (trained on every image)" in (tmp_path / "r.html").read_text()
    assert main(["train", "--dry-run", "--val-fraction", "0", "--out", str(tmp_path / "plateau")]) == 1
    assert "plateau schedule" in capsys.readouterr().err


def test_evaluate_text_report(data_env, tiny_model, capsys):
    assert main(["evaluate", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix" in out


def test_evaluate_into_a_file_instead_of_a_folder_fails_before_the_work(
    data_env, tiny_model, tmp_path, capsys
):
    taken = tmp_path / "figures"
    taken.write_text("keep me")
    assert main(["evaluate", "--model", str(tiny_model), "--out", str(taken)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "a file stands where a folder is needed" in err and err.count("\n") == 1
    )
    assert taken.read_text() == "keep me"


def test_evaluate_record_stores_the_test_accuracy_and_keeps_the_weights_as_stored(
    data_env, tiny_model, tmp_path, capsys
):
    ensemble = tmp_path / "ensemble.safetensors"
    argv = ["join", str(tiny_model), str(tiny_model), "--weights", "int8", "--no-test", "-o", str(ensemble)]
    assert main(argv) == 0
    stored_before, _ = safetensors_torch.load_file(ensemble), capsys.readouterr()
    for path in (tiny_model, ensemble):
        assert "test_accuracy" not in checkpoint.load_model(path).metadata
        assert main(["evaluate", "--model", str(path), "--record", "--json"]) == 0
        measured = json.loads(capsys.readouterr().out)
        metadata = checkpoint.load_model(path).metadata
        assert metadata["test_accuracy"] == pytest.approx(measured["accuracy"])
        assert metadata["test_loss"] == pytest.approx(measured["loss"])
    stored_after = safetensors_torch.load_file(ensemble)
    assert stored_after.keys() == stored_before.keys()
    assert all(torch.equal(stored_after[k], stored_before[k]) for k in stored_before)  # int8 stays int8

    assert main(["evaluate", "--model", str(tiny_model), "--record", "--tta"]) == 1
    assert "leave out --tta" in capsys.readouterr().err
    assert main(["evaluate", "--model", "reference", "--record"]) == 1
    assert "shipped with the package" in capsys.readouterr().err


def test_evaluate_on_the_validation_split_the_model_held_out(data_env, capsys):
    """The 6,000 images rebuilt from the shipped `best` model's settings give back the
    validation accuracy it recorded in training; the shipped ensemble's members held out
    different images each, so validating it is refused rather than leaked."""
    assert main(["evaluate", "--model", "best", "--split", "val", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    recorded = checkpoint.load_model(pretrained.resolve("best")).metadata
    assert measured["split"] == "val" and measured["count"] == 6000
    assert measured["accuracy"] == pytest.approx(recorded["val_accuracy"], abs=1e-6)
    assert main(["evaluate", "--model", "ensemble", "--split", "val"]) == 1
    assert "held out different validation images (split seeds 0, 1, 2, 3, 4)" in capsys.readouterr().err
    assert main(["evaluate", "--model", "best", "--split", "val", "--record"]) == 1
    assert "Leave out --split val" in capsys.readouterr().err


def test_an_ensemble_trained_on_one_split_is_validated_on_it(tiny_mnist_dir, tmp_path, capsys):
    tiny = ["--data-dir", str(tiny_mnist_dir(n_train=200, n_test=20)), "--no-verify"]
    run, small = tmp_path / "run", ["--epochs", "1", "--batch-size", "32", "--set", "model.channels=4,8,8"]
    argv = ["train", *tiny, *small, "--no-progress", "--no-test", "--ensemble", "2", "--out", str(run)]
    assert main([*argv, "--split-seed", "5"]) == 0
    assert "validation split of seed 5" in capsys.readouterr().err
    members = [checkpoint.load_model(run / m / "model.safetensors").metadata for m in ("member0", "member1")]
    assert [m["train_config"]["seed"] for m in members] == [0, 1]
    assert [m["train_config"]["split_seed"] for m in members] == [5, 5]
    for model, expected in [
        (run / "member1" / "model.safetensors", members[1]["val_accuracy"]),
        (run / "ensemble.safetensors", None),
    ]:
        assert main(["evaluate", *tiny, "--model", str(model), "--split", "val", "--json"]) == 0
        measured = json.loads(capsys.readouterr().out)
        assert measured["count"] == 20
        if expected is not None:
            assert measured["accuracy"] == pytest.approx(expected)
    text = main(["evaluate", *tiny, "--model", str(run / "ensemble.safetensors"), "--split", "val"])
    assert text == 0 and "validation split: the 20 training images" in capsys.readouterr().out

    # Without --split-seed each member holds out the images of its own seed.
    apart = tmp_path / "apart"
    assert main([*argv[:-1], str(apart)]) == 0
    capsys.readouterr()
    assert main(["evaluate", *tiny, "--model", str(apart / "ensemble.safetensors"), "--split", "val"]) == 1
    assert "train --ensemble N --split-seed S" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["evaluate", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "neither a model file nor a shipped model" in err


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--recipe", "--epochs", "--batch-size", "--seed", "--out", "--resume", "--device"):
        assert option in out


def test_report_writes_one_self_contained_html_file(data_env, tiny_model, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--model", str(tiny_model), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "95% CI" in printed and str(out) in printed
    html = out.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "https://" not in html
    assert str(tiny_model) in html  # the details table names the model


def test_models_lists_the_shipped_models_with_their_accuracy(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "networks", "parameters", "file"]
    reference = next(line for line in lines if line.startswith("reference")).split()
    assert reference[1:4] == ["1", "730,602", "2.9"] and "99.55%" in reference
    assert reference[-2:] == ["train,", "summary"]  # the notebook's model is where training starts
    best = next(line for line in lines if line.startswith("best"))
    assert "99.74%" in best and " ms " in best and best.endswith(" -")  # no longer a default
    robust = next(line for line in lines if line.startswith("robust")).split()
    assert robust[1] == "2" and "99.72%" in robust and "98.00%" in robust
    assert " ".join(robust).endswith("predict, serve, evaluate, report, export, load_model()")


def test_models_json_gives_sizes_accuracies_and_latency(capsys):
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(models) == set(pretrained.available())
    for name, m in models.items():
        assert m["file_bytes"] == pretrained.available()[name].stat().st_size
        assert 0 < m["latency_ms"] < 1000 and 0.99 < m["test_accuracy"] <= 1
    assert models["ensemble"]["networks"] == 10 and models["best"]["networks"] == 1
    # robust records 1,761 of the 1,797 UCI digits
    assert models["robust"]["networks"] == 2 and models["robust"]["outside_accuracy"] > 0.975
    assert models["ensemble"]["parameters"] > 5 * models["best"]["parameters"]


def test_library_errors_reach_the_command_line_in_its_words(tmp_path, capsys, monkeypatch):
    """The library's advice names its own arguments; the command line's names its flags."""
    monkeypatch.delenv("MNIST_DIGITS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["evaluate", "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "give as --data-dir (or $MNIST_DIGITS_DATA) the folder" in err and "data_dir" not in err
    assert main(["feedback", "export", "--out", str(tmp_path), "--feedback-db", str(tmp_path / "x.db")]) == 1
    err = capsys.readouterr().err
    assert "or choose another file with --feedback-db." in err and "another database path" not in err


def test_a_checksum_mismatch_says_the_flag_that_reads_ones_own_files(tiny_mnist_dir, capsys):
    directory = tiny_mnist_dir(n_train=20, n_test=10)  # well-formed IDX files that are not MNIST's
    assert main(["data", "--data-dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "or use --no-verify to read your own IDX files" in err
    assert "verify=False" not in err
    assert main(["data", "--data-dir", str(directory), "--no-verify", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["files"]
    assert [row["problem"] for row in rows] == [None] * 4 and all(row["sha256"] for row in rows)
