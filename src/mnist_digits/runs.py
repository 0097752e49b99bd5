"""Training runs as a user starts them: one network or an ensemble in a run directory, measured
once on the test set when training ends."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .data import Mnist
from .device import pick_device
from .distributed import SINGLE_PROCESS, Cluster
from .errors import MnistDigitsError, TrainingInterrupted
from .evaluate import Evaluation, record_ensemble
from .files import directory_lock
from .recipes import TrainConfig
from .resume import RunDirectoryError, prepare_run_dir, run_files
from .train import FitResult, fit

ENSEMBLE = "ensemble.safetensors"  # an ensemble run's joined networks, beside its member directories


def fit_ensemble(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    size: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = tqdm.write,
    **options: Any,
) -> list[FitResult]:
    """Train `size` networks with seeds seed, seed+1, ... in run_dir/member0, member1, ...

    With `resume`, finished members are kept as they are, an interrupted one continues and
    the rest start. `overwrite` lets the ensemble replace an earlier one's files (with `resume`:
    only a member's that has no checkpoint to resume). `options` go to `fit` (device, progress,
    cluster). Every member's directory is checked before the first one trains.
    """
    run_dir = Path(run_dir)
    cluster: Cluster = options.get("cluster", SINGLE_PROCESS)
    with directory_lock(run_dir) if cluster.is_main else nullcontext():
        joined = run_dir / ENSEMBLE
        if joined.exists() and not resume:
            if not overwrite:
                raise RunDirectoryError(
                    f"{run_dir} already holds an ensemble ({ENSEMBLE}).",
                    "Continue its training with {resume}, start it again in its place with {overwrite}, "
                    "or choose {elsewhere}.",
                )
            if cluster.is_main:
                joined.unlink(missing_ok=True)
                log(f"Replacing the earlier ensemble in {run_dir}: removed {ENSEMBLE}.")
        member_dirs = [run_dir / f"member{i}" for i in range(size)]
        # a member that has written nothing yet starts, also when the ensemble resumes
        again = [resume and bool(run_files(member_dir)) for member_dir in member_dirs]
        for member_dir, member_resumes in zip(member_dirs, again, strict=True):
            prepare_run_dir(member_dir, resume=member_resumes, overwrite=overwrite, log=log, remove=False)
        results = []
        for i, (member_dir, member_resumes) in enumerate(zip(member_dirs, again, strict=True)):
            member = replace(config, seed=config.seed + i)
            log(f"Ensemble member {i + 1} of {size} (seed {member.seed}) in {member_dir}")
            try:
                fitted = fit(
                    member, data, member_dir, resume=member_resumes, overwrite=overwrite, log=log, **options
                )
            except TrainingInterrupted as e:  # resuming takes the whole ensemble's command, not the member's
                raise TrainingInterrupted(f"ensemble member {i + 1} of {size} {e}") from e
            results.append(fitted)
        return results


@dataclass
class TrainedRun:
    """What `run_training` trained and measured."""

    networks: list[FitResult]  # one, or an ensemble's members in order
    ensemble: Path | None  # the joined ensemble's file (None: one network)
    ensemble_test: Evaluation | None  # the ensemble on the test set (None: not measured, or one network)
    test_read: bool  # whether the official test set was read, once, after training

    @property
    def train_seconds(self) -> float:
        return sum(r.train_seconds for r in self.networks)


def run_training(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    *,
    networks: int = 1,
    measure_test: bool = True,
    **options: Any,
) -> TrainedRun:
    """Train one network (or an ensemble of `networks`, joined into run_dir/ensemble.safetensors)
    and measure what was kept on data.test, once, after training; left unread with
    `measure_test` False, or when data has no test set (Kaggle's train.csv, whose digits include
    MNIST's test images). `options` go to `fit` (device, resume, overwrite, progress, log, cluster)."""
    if networks < 1:
        raise MnistDigitsError(f"an ensemble of {networks} networks: give the number of networks, 1 or more.")
    test = data.test if measure_test and len(data.test.labels) else None
    if networks == 1:
        return TrainedRun([fit(config, data, run_dir, test=test, **options)], None, None, test is not None)
    members = fit_ensemble(config, data, run_dir, networks, test=test, **options)
    cluster: Cluster = options.get("cluster", SINGLE_PROCESS)
    if not cluster.is_main:
        return TrainedRun(members, None, None, test is not None)
    path = Path(run_dir) / ENSEMBLE
    device = options.get("device") or pick_device()
    _, evaluation = record_ensemble(path, [m.path for m in members], test, device)
    return TrainedRun(members, path, evaluation, test is not None)
