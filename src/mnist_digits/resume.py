"""Resumable training: the full training state in one checkpoint file, and clean stops.

A checkpoint holds the weights, the optimizer's moments, the scheduler, the random-number
generators, the history and, when a run was stopped mid-epoch, the epoch's shuffled order
and how far it got. Restoring all of it makes a resumed run identical to an uninterrupted
one on the CPU. A run directory is checked before a run starts in it, so that no earlier
result is lost unless replacing it was asked for.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from . import checkpoint
from .errors import CheckpointError, MnistDigitsError
from .model import DigitNet

EPOCH_PREFIX = "epoch."  # tensors of an epoch in progress
AVERAGE_PREFIX = "average."  # the moving average of the weights, when training keeps one
KEPT_PREFIX = "kept."  # the network of the epoch kept so far (the best by validation accuracy)

# What a run writes in its directory (each through NAME.tmp, renamed into place when complete)
CHECKPOINT = "checkpoint.safetensors"  # everything needed to resume, rewritten after every epoch
MODEL = "model.safetensors"  # the kept epoch's network
HISTORY = "history.jsonl"  # one line of metrics per finished epoch
RUN_FILES = (CHECKPOINT, MODEL, HISTORY)


@dataclass
class EpochStats:
    """One finished epoch's metrics: a line of history.jsonl."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None  # None: trained without a validation split
    val_accuracy: float | None
    lr: float  # learning rate used during this epoch
    seconds: float  # wall time of the epoch's training steps
    images_per_second: float  # training throughput, augmentation included


@dataclass
class EpochProgress:
    """How far the current epoch got, so that an interrupted one continues at the same batch."""

    order: torch.Tensor  # this epoch's shuffled image indices
    step: int = 0  # batches finished
    loss_sum: float = 0.0  # sum of per-image losses so far
    correct: int = 0  # correctly classified images so far
    seen: int = 0  # images trained on so far
    seconds: float = 0.0  # training time spent on this epoch so far
    lr: float | None = None  # the learning rate when the epoch began, logged in its history line
    # (None: a checkpoint from before it was recorded)

    def scalars(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "order"}


@dataclass
class TrainingState:
    """What `fit` needs besides the config and the data to continue a run."""

    model: DigitNet
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an optim.Scheduler (typed loosely to keep the import one-way)
    generator: torch.Generator  # shuffling and augmentation
    history: list[EpochStats]  # one entry per finished epoch
    in_progress: EpochProgress | None = None  # set when stopped mid-epoch
    average: AveragedModel | None = None  # the weight average (optim.make_average), if any
    kept: dict[str, torch.Tensor] | None = None  # the kept epoch's network's weights (None: no epoch yet,
    # or a checkpoint from before they were saved in it)


def save_state(
    path: Path, state: TrainingState, train_config: dict[str, Any], data_identity: dict[str, Any]
) -> None:
    """Everything needed to continue exactly where training stands, written atomically.
    `data_identity` (checksums and image count) lets a resume refuse other training data."""
    tensors = checkpoint.model_tensors(state.model)
    optimizer_state = state.optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"{checkpoint.OPTIMIZER_PREFIX}{index}.{key}"] = torch.as_tensor(value)
    if state.average is not None:
        tensors.update({AVERAGE_PREFIX + k: v for k, v in state.average.state_dict().items()})
    if state.kept is not None:
        tensors.update({KEPT_PREFIX + k: v for k, v in state.kept.items()})
    tensors[checkpoint.RNG_PREFIX + "torch"] = torch.get_rng_state()
    tensors[checkpoint.RNG_PREFIX + "generator"] = state.generator.get_state()
    if torch.cuda.is_available():
        tensors[checkpoint.RNG_PREFIX + "cuda"] = torch.cuda.get_rng_state()
    progress = None
    if state.in_progress is not None:
        tensors[EPOCH_PREFIX + "order"] = state.in_progress.order
        progress = state.in_progress.scalars()
    metadata = {
        "train_config": train_config,
        "data_identity": data_identity,
        "model_config": state.model.config.to_dict(),
        "optimizer_param_groups": optimizer_state["param_groups"],
        "scheduler": state.scheduler.state_dict(),
        "history": [asdict(h) for h in state.history],
        "epoch_in_progress": progress,
    }
    checkpoint.save(path, tensors, {**metadata, "environment": checkpoint.environment()})


def restore_state(
    path: Path,
    state: TrainingState,
    train_config: dict[str, Any],
    data_identity: dict[str, Any],
    complete: Callable[[dict[str, Any]], dict[str, Any]] = lambda config: config,
) -> None:
    """Load a checkpoint into `state`, refusing one made with other settings or other data.
    `complete` fills a saved config's fields that older versions did not record with their defaults."""
    tensors, metadata = checkpoint.read(path)
    saved_data = metadata.get("data_identity")  # absent from checkpoints of older versions
    if saved_data is not None and saved_data != json.loads(json.dumps(data_identity)):
        raise ResumeMismatch(
            f"{path} was trained on other data ({_data_difference(saved_data, data_identity)}).",
            "Resume with {same_data}, or start a new run in {elsewhere}.",
        )
    saved = json.loads(json.dumps(complete(metadata.get("train_config", {}))))
    wanted = json.loads(json.dumps(train_config))  # tuples become lists, as when saved
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ResumeMismatch(
            f"{path} was made with other settings ({', '.join(changed)} differ).",
            "Resume with the same settings, or start a new run in {elsewhere}.",
        )
    device = next(state.model.parameters()).device
    state.model.load_state_dict(checkpoint.build_model(tensors, metadata, path).state_dict())
    optimizer_state: dict[str, Any] = {"state": {}, "param_groups": metadata["optimizer_param_groups"]}
    for key, value in tensors.items():
        if key.startswith(checkpoint.OPTIMIZER_PREFIX):
            index, name = key[len(checkpoint.OPTIMIZER_PREFIX) :].split(".", 1)
            optimizer_state["state"].setdefault(int(index), {})[name] = value.to(device)
    state.optimizer.load_state_dict(optimizer_state)
    if state.average is not None:
        average = {k[len(AVERAGE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(AVERAGE_PREFIX)}
        state.average.load_state_dict(average)
    kept = {k[len(KEPT_PREFIX) :]: v.to(device) for k, v in tensors.items() if k.startswith(KEPT_PREFIX)}
    state.kept = kept or None
    state.scheduler.load_state_dict(metadata["scheduler"])
    torch.set_rng_state(tensors[checkpoint.RNG_PREFIX + "torch"])
    state.generator.set_state(tensors[checkpoint.RNG_PREFIX + "generator"])
    if torch.cuda.is_available() and checkpoint.RNG_PREFIX + "cuda" in tensors:
        torch.cuda.set_rng_state(tensors[checkpoint.RNG_PREFIX + "cuda"])
    state.history = [EpochStats(**h) for h in metadata["history"]]
    progress = metadata.get("epoch_in_progress")
    state.in_progress = (
        EpochProgress(order=tensors[EPOCH_PREFIX + "order"].to(device), **progress) if progress else None
    )


class RunDirectoryError(MnistDigitsError):
    """A run directory holding what the run as asked would replace, or nothing it could resume.

    `found` says what is there; `advice` what to do, its choices as placeholders ({resume},
    {overwrite}, {elsewhere}, {same_data}) that `explain` fills (errors.LIBRARY_TERMS, or the
    CLI's flags).
    """

    def __init__(self, found: str, advice: str) -> None:
        super().__init__(found, advice=advice)


class ResumeMismatch(RunDirectoryError, CheckpointError):
    """A checkpoint made with other settings or other data than the run resuming it."""


def run_files(run_dir: Path) -> list[str]:
    """The names of the files a run writes that `run_dir` holds, half-written ones (NAME.tmp) included."""
    names = [n for name in RUN_FILES for n in (name, name + ".tmp")]
    return [name for name in names if (Path(run_dir) / name).exists()]


def prepare_run_dir(
    run_dir: Path, *, resume: bool, overwrite: bool, log: Callable[[str], None], remove: bool = True
) -> bool:
    """Whether the run in `run_dir` resumes its checkpoint (True) or starts anew (False); a
    RunDirectoryError if starting would replace an earlier run's files, or if there is nothing
    to resume. `overwrite` allows replacing them (with `resume`: where there is no checkpoint),
    and removes them before the run starts. Files half-written by a run killed while saving
    (NAME.tmp) never hold a result; they are removed too. `remove` False only decides: for the
    processes of a distributed run other than the one that writes.
    """
    run_dir = Path(run_dir)
    found = run_files(run_dir)
    results = [name for name in found if not name.endswith(".tmp")]
    leftovers = [name for name in found if name.endswith(".tmp")]
    resumes = resume and CHECKPOINT in results
    if not resumes and not overwrite:
        if resume:
            raise _nothing_to_resume(run_dir, results, leftovers)
        if CHECKPOINT in results:
            raise RunDirectoryError(
                f"{run_dir} already holds a training run ({CHECKPOINT}).",
                "Continue it with {resume}, start it again in its place with {overwrite}, "
                "or choose {elsewhere}.",
            )
        if results:
            them = "it" if len(results) == 1 else "them"
            raise RunDirectoryError(
                f"{run_dir} holds {_names(results)} from an earlier run but no {CHECKPOINT}; a new run "
                f"would replace {them}.",
                f"Replace {them} with {{overwrite}}, or choose {{elsewhere}}.",
            )
    doomed = leftovers if resumes else found
    if doomed and remove:
        for name in doomed:
            (run_dir / name).unlink(missing_ok=True)
        if set(doomed) <= set(leftovers):
            log(f"Removed {_names(doomed)} from {run_dir}: left half-written by a run killed while saving.")
        else:
            log(f"Replacing the earlier run in {run_dir}: removed {_names(doomed)}.")
    if resume and not resumes and remove:  # said once, by the call that goes ahead, not by a check
        log(f"Nothing to resume in {run_dir}: starting a new run.")
    return resumes


def _nothing_to_resume(run_dir: Path, results: list[str], leftovers: list[str]) -> RunDirectoryError:
    """What `run_dir` holds instead of a checkpoint, and how to start again without losing it unasked."""
    replaces = f", which replaces {_names(results)}" if results else ""
    if leftovers:
        kept = f"; {_names(results)} {'is' if len(results) == 1 else 'are'} kept" if results else ""
        return RunDirectoryError(
            f"{run_dir} holds no {CHECKPOINT} to resume, only {_names(leftovers)}, left half-written "
            f"when its run was killed while saving{kept}.",
            f"Start the run again with {{overwrite}}{replaces}, or choose {{elsewhere}}.",
        )
    if results:
        return RunDirectoryError(
            f"{run_dir} holds {_names(results)} but no {CHECKPOINT}: nothing to resume.",
            f"Start a new run in its place with {{overwrite}}{replaces}, or choose {{elsewhere}}.",
        )
    return RunDirectoryError(
        f"{run_dir} holds no {CHECKPOINT}: nothing to resume.",
        "Start a new run without {resume}, or give the directory of the run to continue.",
    )


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class StopRequest:
    """Set by Ctrl-C or SIGTERM; the training loop checks it between batches."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second Ctrl-C interrupts at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return

    def handle(signum: int, frame: object) -> None:
        if request and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _data_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    if saved.get("train_images") != now.get("train_images"):
        return f"{saved.get('train_images'):,} training images then, {now.get('train_images'):,} now"
    then, here = saved.get("sha256", {}), now.get("sha256", {})
    files = sorted(name for name in then.keys() | here.keys() if then.get(name) != here.get(name))
    return f"files differ: {', '.join(files)}"
