"""What a newcomer meets first: the defaults, a fast --help, export without MNIST, quiet logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_digits import cli, pretrained
from mnist_digits.cli import main

READERS = ("predict", "serve", "evaluate", "report", "export")  # commands that read digits


def parsed(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", READERS)
def test_commands_that_read_digits_default_to_the_robust_network(command):
    assert parsed(command).model == pretrained.DEFAULT_MODEL == "robust"
    assert getattr(parsed(command), "device", "auto") == "auto"  # export runs on the CPU


def test_train_and_summary_start_from_the_notebook():
    assert parsed("train").recipe == "reference"
    assert parsed("summary").model is None  # the reference architecture, built fresh


def test_the_python_api_and_the_server_default_to_the_robust_network():
    from mnist_digits import load_model
    from mnist_digits.serve import ServeConfig

    assert load_model().path == pretrained.resolve("robust")
    assert ServeConfig().model == "robust"


def test_constants_written_out_for_a_fast_help_match_the_library():
    from mnist_digits.cli_options import PRECISIONS
    from mnist_digits.device import PRECISIONS as LIBRARY_PRECISIONS
    from mnist_digits.predict import DEFAULT_THRESHOLD
    from mnist_digits.recipes import RECIPES

    assert set(cli.RECIPE_NAMES) == set(RECIPES)
    assert cli.DEFAULT_THRESHOLD == DEFAULT_THRESHOLD
    assert PRECISIONS == LIBRARY_PRECISIONS


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["--version"]])
def test_help_loads_no_torch(argv):
    code = (
        "import sys\nfrom mnist_digits.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as e:\n    assert e.code == 0\nprint('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "False"
    assert "mnist-digits" in done.stdout


def test_a_usage_error_exits_2_with_argparse_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--no-such-option"])
    assert exit_info.value.code == cli.EXIT_USAGE == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.fixture
def no_mnist_here(tmp_path, monkeypatch):
    """A machine without MNIST: no $MNIST_DIGITS_DATA, an empty user cache."""
    from mnist_digits import data

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "default_cache_dir", lambda: tmp_path / "empty-cache")
    monkeypatch.chdir(tmp_path)


def test_export_without_mnist_checks_on_generated_digits(no_mnist_here, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", "reference", "--int8", "-o", str(tmp_path / "r.onnx")]) == 0
    out, err = capsys.readouterr()
    assert "MNIST is not on this machine" in err and "not measuring accuracy" in err
    assert "largest difference from PyTorch on 256 generated images" in out
    assert "calibrated on 512 generated images" in out and "test accuracy" not in out
    assert not (tmp_path / "empty-cache").exists()  # nothing was downloaded
    from mnist_digits.export import OnnxModel, max_difference, synthetic_digits

    model = pretrained.load("reference").model
    images = synthetic_digits(64, seed=7)
    assert max_difference(OnnxModel.load(tmp_path / "r.onnx"), model, images) < 1e-4
    assert 0 < (tmp_path / "r-int8.onnx").stat().st_size < (tmp_path / "r.onnx").stat().st_size / 2


def test_export_with_a_named_data_folder_that_is_wrong_is_an_error(no_mnist_here, tmp_path, capsys):
    assert main(["export", "--data-dir", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r.onnx")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()


def test_generated_digits_look_like_mnist_ink():
    from mnist_digits.export import synthetic_digits

    images = synthetic_digits(32)
    ink = (images > 0.5).mean((1, 2, 3))
    assert images.shape == (32, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert ((ink > 0.03) & (ink < 0.4)).all()  # strokes, neither empty nor a filled square
    assert images[:, :, :3].max() < 0.5 and images[:, :, -3:].max() < 0.5  # a margin, as MNIST has
    assert not (synthetic_digits(4, seed=1) == synthetic_digits(4, seed=2)).all()


def test_progress_bars_stay_out_of_logs(tiny_mnist_dir, tmp_path):
    """stderr to a pipe (a log, CI): no bars, the epoch lines still there."""
    tiny = ["--data-dir", str(tiny_mnist_dir(n_train=200, n_test=20)), "--no-verify"]
    argv = ["train", *tiny, "--epochs", "1", "--batch-size", "32", "--set", "model.channels=4,8,8"]
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "mnist_digits", *argv, "--out", str(tmp_path / "run"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert "epoch 1" in printed.lower() and "\r" not in printed and "it/s" not in printed


def test_models_says_which_model_each_command_uses(capsys):
    assert main(["models", "--json", "--no-latency"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert models["robust"]["default_for"].startswith("predict, serve, evaluate, report, export")
    assert models["reference"]["default_for"] == "train, summary"
    assert models["ensemble"]["default_for"] == models["best"]["default_for"] == ""
    assert models["robust"]["latency_ms"] is None


def test_training_asks_openmp_to_spin_briefly_unless_told_otherwise(tmp_path):
    code = (
        "import os, sys\nfrom mnist_digits.cli import main\ncode = main(sys.argv[1:])\n"
        "print(code, os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), file=sys.stderr)"
    )
    train = ["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def policy(argv: list[str], env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
        return done.stderr.strip().splitlines()[-1]

    assert policy(train, env) == "1 None 10000"  # set before the data (and torch) were looked at
    assert policy(train, {**env, "OMP_WAIT_POLICY": "PASSIVE"}) == "1 PASSIVE None"
    assert policy(train, {**env, "GOMP_SPINCOUNT": "7"}) == "1 None 7"
    assert policy(["models", "--json", "--no-latency"], env) == "0 None None"  # inference: PyTorch's own
