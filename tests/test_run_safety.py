"""A run directory's earlier results are kept unless replacing them is asked for; one run at a
time writes there; a run stopped mid-epoch and resumed logs the history an uninterrupted one does.

The processes that are killed are real ones, killed by real signals, training on tiny synthetic
data with a tiny network.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch

from mnist_digits import checkpoint, data
from mnist_digits.augment import AugmentConfig
from mnist_digits.cli import main
from mnist_digits.errors import TrainingInterrupted
from mnist_digits.files import DirectoryBusy, directory_lock
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.recipes import TrainConfig
from mnist_digits.resume import RunDirectoryError
from mnist_digits.runs import ENSEMBLE, fit_ensemble
from mnist_digits.train import fit

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the kill tests send POSIX signals")

TINY_NETWORK = ["--set", "model.channels=4,8,8", "--set", "model.hidden=16", "--batch-size", "8"]
SMALL = TrainConfig(
    epochs=2,
    batch_size=32,
    augment=AugmentConfig(rotation=0, zoom=0, shift=0),
    model=ModelConfig(channels=(4, 8, 8), hidden=16),
)


@pytest.fixture
def tiny_data(tiny_mnist_dir):
    return tiny_mnist_dir(n_train=40, n_test=6)


def _train(data_dir, out, *extra):
    """`train` on the tiny synthetic data with a tiny network, as argv."""
    argv = ["train", "--data-dir", str(data_dir), "--no-verify", "--dry-run", "--no-progress"]
    return [*argv, "--device", "cpu", "--out", str(out), *TINY_NETWORK, *extra]


def _start(script, *argv):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_for_line(process, text, timeout=120):
    """Read the process's output until a line contains `text`; the output so far."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"the process ended before printing {text!r}:\n{''.join(seen)}")
        seen.append(line)
        if text in line:
            return "".join(seen)


# --- 16: earlier results are kept unless --overwrite ------------------------------------------


def test_a_folder_holding_only_a_model_is_kept_unless_overwrite_is_given(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save_model(run / "model.safetensors", DigitNet(ModelConfig(channels=(4, 8, 8), hidden=16)), {})
    before = (run / "model.safetensors").read_bytes()

    assert main(_train(tiny_data, run)) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "--overwrite" in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > 40 and err.strip().splitlines()[-1].startswith("error: ")
    assert main(_train(tiny_data, run, "--resume")) == 1
    err = capsys.readouterr().err
    assert "no checkpoint.safetensors: nothing to resume" in err and "--overwrite" in err
    assert (run / "model.safetensors").read_bytes() == before

    assert main(_train(tiny_data, run, "--overwrite")) == 0
    assert "Replacing the earlier run" in capsys.readouterr().out
    assert (run / "model.safetensors").read_bytes() != before
    assert checkpoint.read(run / "model.safetensors")[1]["train_config"]["model"]["hidden"] == 16
    assert (run / "checkpoint.safetensors").is_file()


def test_the_library_names_its_own_arguments(tiny_data, tmp_path):
    mnist = data.load(tiny_data, verify=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(RunDirectoryError, match=r"history\.jsonl .* overwrite=True") as refused:
        fit(SMALL, mnist, run, progress=False, log=lambda m: None)
    assert "--" not in str(refused.value)
    with pytest.raises(RunDirectoryError, match=r"nothing to resume\. .* resume=True"):
        fit(SMALL, mnist, tmp_path / "empty", resume=True, progress=False, log=lambda m: None)
    assert (run / "history.jsonl").read_text() == '{"epoch": 1}\n'


_KILLED_WHILE_SAVING = """
import io, os, signal, sys
from contextlib import contextmanager
from mnist_digits import files
from mnist_digits.cli import main

real_writer = files.atomic_writer

@contextmanager
def dies_half_way_through_the_checkpoint(path):
    with real_writer(path) as f:
        if path.name != "checkpoint.safetensors":
            yield f
            return
        content = io.BytesIO()
        yield content
        f.write(content.getvalue()[: len(content.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would

files.atomic_writer = dies_half_way_through_the_checkpoint
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_while_saving_its_checkpoint_leaves_no_half_written_result(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    killed = _start(_KILLED_WHILE_SAVING, *_train(tiny_data, run))
    output, _ = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, output
    assert (run / "checkpoint.safetensors.tmp").is_file()
    assert not (run / "checkpoint.safetensors").exists()
    assert not (run / "model.safetensors").exists()  # written once, when training ends

    assert main(_train(tiny_data, run, "--resume")) == 1
    err = capsys.readouterr().err
    assert "only checkpoint.safetensors.tmp" in err and "killed while saving" in err, err
    assert "--overwrite" in err
    assert (run / "checkpoint.safetensors.tmp").is_file()  # evidence kept until replacing is asked for

    assert main(_train(tiny_data, run)) == 0  # a new run: nothing there holds a result
    out = capsys.readouterr().out
    assert "Removed checkpoint.safetensors.tmp" in out and "half-written" in out, out
    assert not list(run.glob("*.tmp")) and (run / "checkpoint.safetensors").is_file()
    assert (run / "model.safetensors").is_file()


def test_a_resumed_run_removes_what_a_kill_left_half_written(tiny_data, tmp_path):
    mnist = data.load(tiny_data, verify=False)
    config = replace(SMALL, epochs=1)
    fit(config, mnist, tmp_path, progress=False, log=lambda m: None)
    (tmp_path / "checkpoint.safetensors.tmp").write_bytes(b"half a checkpoint")
    messages: list[str] = []
    fit(config, mnist, tmp_path, resume=True, progress=False, log=messages.append)
    assert any("Removed checkpoint.safetensors.tmp" in m for m in messages)
    assert not (tmp_path / "checkpoint.safetensors.tmp").exists()


def test_an_ensemble_checks_every_member_before_training_any(tiny_data, tmp_path):
    mnist = data.load(tiny_data, verify=False)
    (tmp_path / "member1").mkdir()
    (tmp_path / "member1" / "model.safetensors").write_bytes(b"an earlier member")
    with pytest.raises(RunDirectoryError, match=r"member1 holds model\.safetensors"):
        fit_ensemble(SMALL, mnist, tmp_path, 2, progress=False, log=lambda m: None)
    assert not (tmp_path / "member0").exists()  # refused before the first member trained

    (tmp_path / ENSEMBLE).write_bytes(b"an earlier ensemble")
    with pytest.raises(RunDirectoryError, match=r"already holds an ensemble .* overwrite=True"):
        fit_ensemble(SMALL, mnist, tmp_path, 2, progress=False, log=lambda m: None)
    assert (tmp_path / ENSEMBLE).read_bytes() == b"an earlier ensemble"

    messages: list[str] = []
    fit_ensemble(
        replace(SMALL, epochs=1), mnist, tmp_path, 2, overwrite=True, progress=False, log=messages.append
    )
    assert not (tmp_path / ENSEMBLE).exists()  # the earlier ensemble is gone, not left beside new members
    assert checkpoint.read(tmp_path / "member1" / "model.safetensors")[1]["train_config"]["seed"] == 1
    assert any("Replacing the earlier run in" in m and "member1" in m for m in messages)


# --- 17: one run at a time in a directory ------------------------------------------------------

_HOLD_THE_LOCK = """
import sys, time
from mnist_digits.files import directory_lock

with directory_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = _start(_HOLD_THE_LOCK, tmp_path)
    try:
        _wait_for_line(holder, "locked")
        busy = rf"in use by another process \(pid {holder.pid} on "
        with pytest.raises(DirectoryBusy, match=busy), directory_lock(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait(timeout=10)
    with directory_lock(tmp_path):  # the operating system let go of it with the process
        pass


def test_the_lock_nests_in_a_thread_and_excludes_other_threads(tmp_path):
    errors: list[BaseException] = []

    def other_thread():
        try:
            with directory_lock(tmp_path):
                pass
        except DirectoryBusy as e:
            errors.append(e)

    # the CLI holds it while `fit` takes it again
    with directory_lock(tmp_path), directory_lock(tmp_path / "."):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread of this process" in str(errors[0])
    with directory_lock(tmp_path):  # released when the outer block ended
        pass


_TRAIN_AND_HANG = """
import sys, time
from mnist_digits import train
from mnist_digits.cli import main

def hang(*args, **kwargs):
    print("augmenting the first batch", flush=True)
    time.sleep(120)

train.random_warp = hang
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_run_in_the_same_directory_is_refused_while_the_first_trains(tiny_data, tmp_path, capsys):
    run = tmp_path / "same"
    first = _start(_TRAIN_AND_HANG, *_train(tiny_data, run))
    try:
        _wait_for_line(first, "augmenting the first batch")
        assert main(_train(tiny_data, run)) == 1
        err = capsys.readouterr().err
        assert f"{run} is in use by another process (pid {first.pid} on " in err, err
        assert "Traceback" not in err
    finally:
        first.kill()
        first.wait(timeout=10)
    assert main(_train(tiny_data, run)) == 0  # the killed run's lock went with it


# --- 18: the history of a run resumed mid-epoch ------------------------------------------------


def _without_timing(history):
    return [{k: v for k, v in vars(s).items() if k not in ("seconds", "images_per_second")} for s in history]


def test_a_run_resumed_mid_epoch_logs_the_history_of_an_uninterrupted_one(
    tiny_mnist_dir, tmp_path, monkeypatch
):
    from mnist_digits import train

    mnist = data.load(tiny_mnist_dir(n_train=400, n_test=6), verify=False)
    # the one-cycle rate moves every step: a resumed epoch must log the rate it began with
    config = replace(SMALL, schedule="onecycle", optimizer="adamw", lr=8e-3, augment=AugmentConfig())
    whole = fit(config, mnist, tmp_path / "whole", progress=False, log=lambda m: None)

    calls, augment = [0], train.random_warp

    def augment_then_signal(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # batch 5 of the 12 in epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return augment(*args, **kwargs)

    monkeypatch.setattr(train, "random_warp", augment_then_signal)
    with pytest.raises(TrainingInterrupted, match="epoch 1, batch 5"):
        fit(config, mnist, tmp_path / "stopped", progress=False, log=lambda m: None)
    monkeypatch.setattr(train, "random_warp", augment)
    resumed = fit(config, mnist, tmp_path / "stopped", resume=True, progress=False, log=lambda m: None)

    assert whole.history[0].lr == pytest.approx(8e-3 / 25)
    assert _without_timing(resumed.history) == _without_timing(whole.history)
    logged = [json.loads(line) for line in (tmp_path / "stopped" / "history.jsonl").read_text().splitlines()]
    assert [line["lr"] for line in logged] == [s.lr for s in whole.history]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
