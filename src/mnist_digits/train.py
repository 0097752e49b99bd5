"""Training: a recipe (recipes.TrainConfig) run as a plain loop on a run directory.

A run directory holds:
  checkpoint.safetensors  everything needed to resume, rewritten after every epoch
  history.jsonl           one line of metrics per epoch
  model.safetensors       the kept network (the best epoch by validation accuracy), written once
                          when training ends, with its history and any test measurement
  .lock                   locked while a run trains there, so that a second one stops at once
A new run never replaces an earlier one's files unless asked to (`overwrite`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import checkpoint, distributed
from .augment import random_style, random_warp
from .data import Mnist, Split, split_validation, to_tensors
from .device import pick_device, pick_precision
from .distributed import SINGLE_PROCESS, Cluster
from .errors import CheckpointError, TrainingInterrupted
from .evaluate import Evaluation, evaluate_model
from .files import directory_lock, ensure_writable_dir, write_atomic
from .model import DigitNet, predict_logits
from .optim import Scheduler, make_average, make_optimizer, make_scheduler, sharpness_aware_gradients
from .recipes import TrainConfig, complete_saved
from .resume import (
    CHECKPOINT,
    HISTORY,
    MODEL,
    EpochProgress,
    EpochStats,
    StopRequest,
    TrainingState,
    prepare_run_dir,
    restore_state,
    save_state,
    stop_on_signals,
)


@dataclass
class FitResult:
    model: torch.nn.Module  # the DigitNet of the best epoch (the last without validation), in eval mode
    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float | None  # None: trained without a validation split
    train_seconds: float  # wall time of all training epochs, validation included
    path: Path  # the model file, written when training ended
    test: Evaluation | None = None  # the kept network on the images `fit` was given as `test`

    def describe(self) -> str:
        """Which epoch was kept, and why."""
        if self.best_val_accuracy is None:
            return f"last epoch {self.best_epoch} kept (no validation split: trained on every image)"
        return f"best epoch {self.best_epoch}: validation accuracy {self.best_val_accuracy:.4%}"


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    progress: EpochProgress,
    stop: StopRequest | None = None,
    bar: tqdm | None = None,
    cluster: Cluster = SINGLE_PROCESS,
    scheduler: Scheduler | None = None,
    average: AveragedModel | None = None,
) -> bool:
    """Train on shuffled, augmented batches from `progress.step` on, updating `progress`
    (and the weight average, if there is one).

    Returns True when the epoch is complete, False when `stop` was requested first. With
    several processes, every one draws the same global batch and augments it the same way
    (so their random generators stay in step), then trains on its own share of it.
    """
    model.train()
    n = len(progress.order)
    # On the device (no sync per step), and continued from a stopped epoch's sum in the same
    # float32 additions as an uninterrupted epoch makes, so that its history line is the same too.
    loss_sum = torch.tensor(progress.loss_sum, dtype=torch.float32, device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    start = time.perf_counter()
    steps = range(progress.step * config.batch_size, n, config.batch_size)
    finished = True
    for step, first in enumerate(steps, start=progress.step):
        if distributed.any_all(bool(stop), cluster, images.device):
            finished = False
            break
        index = progress.order[first : first + config.batch_size]
        if len(index) < 2 * cluster.world_size:
            break  # BatchNorm cannot normalize a batch of one
        batch = random_warp(images[index], config.augment, generator)
        batch = random_style(batch, config.augment, generator)  # MNIST lacks these; all off by default
        share = slice(cluster.rank, None, cluster.world_size)
        batch, index = batch[share].contiguous(memory_format=torch.channels_last), index[share]
        logits, loss = training_loss(model, batch, labels[index], config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.sam:
            sharpness_aware_gradients(
                model, config.sam, partial(_loss_only, model, batch, labels[index], config)
            )
        optimizer.step()
        if scheduler is not None:
            scheduler.after_batch()
        if average is not None:
            average.update_parameters(getattr(model, "module", model))  # unwrapped from DDP
        loss_sum += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels[index]).sum()
        progress.step, progress.seen = step + 1, progress.seen + len(index)
        if bar is not None:
            bar.update(len(index))
            if step % 20 == 0:  # reading the loss waits for a GPU; not every step
                seen = progress.seen
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.4f}",
                    acc=f"{(progress.correct + correct.item()) / seen:.4f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                    img_s=f"{seen / (progress.seconds + time.perf_counter() - start):.0f}",
                )
    progress.loss_sum = loss_sum.item()
    progress.correct += int(correct.item())
    progress.seconds += time.perf_counter() - start
    return finished


def _loss_only(
    model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    return training_loss(model, batch, labels, config)[1]


def training_loss(
    model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (in float32) and the label-smoothed loss of one batch, at the config's precision."""
    with torch.autocast(
        batch.device.type, torch.bfloat16, enabled=config.precision == "bf16"
    ):  # resolved by fit
        logits = model(batch).float()
    return logits, F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)


def evaluate(
    model: DigitNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a labelled set."""
    logits = predict_logits(model, images, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def fit(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    *,
    test: Split | None = None,
    device: torch.device | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    cluster: Cluster = SINGLE_PROCESS,
) -> FitResult:
    """Train on data.train minus a held-out validation split, keep the best epoch by validation
    accuracy (the last one with config.val_fraction 0) and write it to run_dir/model.safetensors,
    once, when training ends. data.test is never read; given `test`, the kept network is measured
    on it once, after training, and the result stored in the model file too.

    Ctrl-C or SIGTERM stops at the next batch, saves a resumable checkpoint and raises
    TrainingInterrupted; `resume=True` continues from the checkpoint in `run_dir`. An earlier
    run's files in `run_dir` are replaced only with `overwrite=True` (RunDirectoryError
    otherwise), and `run_dir` is locked while training, against a second run writing there
    (files.DirectoryBusy). Under torchrun (`cluster` from distributed.join) each process trains
    on its share of every batch and only the main one prints and writes files.
    """
    if not cluster.is_main:
        log, progress = (lambda message: None), False
    run_dir = Path(run_dir)
    with directory_lock(run_dir) if cluster.is_main else nullcontext():
        resume = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, log=log, remove=cluster.is_main)
        if cluster.is_main:
            ensure_writable_dir(run_dir)  # fail now, not after the first epoch
        device = device or pick_device()
        precision = pick_precision(config.precision, device)
        log(f"Training in {precision.describe()}.")
        # the config as trained, recorded and compared on resuming: bf16 or fp32, never "auto"
        config = replace(config, precision=precision.name)
        run = _Run.start(config, data, run_dir, device, cluster, log)
        if resume:
            run.restore()
        else:
            run.announce()
        with stop_on_signals() as stop:
            for epoch in range(len(run.state.history) + 1, config.epochs + 1):
                run.train_epoch(epoch, stop, progress)
        return run.finish(test)


@dataclass
class _Run:
    """One `fit`: the network, its optimizer and schedule, the data on the device and the state saved."""

    config: TrainConfig
    data: Mnist
    run_dir: Path
    device: torch.device
    cluster: Cluster
    log: Callable[[str], None]
    train_model: torch.nn.Module  # the network itself, or wrapped for DistributedDataParallel
    kept: DigitNet  # the network validated and kept: the weight average when there is one
    state: TrainingState
    train: tuple[torch.Tensor, torch.Tensor]  # images, labels
    val: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        data: Mnist,
        run_dir: Path,
        device: torch.device,
        cluster: Cluster,
        log: Callable[[str], None],
    ) -> _Run:
        train_split, val_split = split_validation(data.train, config.val_fraction, config.validation_seed)
        torch.manual_seed(config.seed)  # weights and dropout
        model = DigitNet(config.model).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        train_model: torch.nn.Module = model
        if cluster.distributed:
            torch.manual_seed(config.seed + cluster.rank)  # each process its own dropout masks
            ids = [device] if device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=ids)
        optimizer = make_optimizer(model, config)
        average = make_average(model, config)
        state = TrainingState(
            model=model,
            optimizer=optimizer,
            scheduler=make_scheduler(optimizer, config, len(train_split.labels)),
            generator=torch.Generator().manual_seed(config.seed + 1),  # shuffling and augmentation
            history=[],
            average=average,
        )
        kept: DigitNet = average.module if average is not None else model  # type: ignore[assignment]
        return cls(
            config,
            data,
            run_dir,
            device,
            cluster,
            log,
            train_model,
            kept,
            state,
            to_tensors(train_split, device),
            to_tensors(val_split, device),
        )

    @property
    def data_identity(self) -> dict[str, Any]:
        return {"sha256": self.data.sha256, "train_images": len(self.data.train.labels)}

    @property
    def scheduler(self) -> Scheduler:
        return self.state.scheduler

    def restore(self) -> None:
        config, state = self.config, self.state
        restore_state(self.run_dir / CHECKPOINT, state, config.to_dict(), self.data_identity, complete_saved)
        where = f"epoch {len(state.history) + 1}"
        if state.in_progress:
            where += f", batch {state.in_progress.step + 1}"
        if len(state.history) >= config.epochs:
            self.log(f"{self.run_dir} has finished all {config.epochs} epochs; nothing left to train.")
        else:
            self.log(f"Resuming {self.run_dir} at {where} of {config.epochs}.")

    def announce(self) -> None:
        config = self.config
        self.log(f"Schedule: {self.scheduler.describe()}.")
        if config.sam:
            self.log(
                f"Sharpness-aware steps: gradients taken {config.sam} uphill of the weights (two passes)."
            )
        if self.state.average is not None:
            self.log(
                f"Weight averaging: a moving average of the weights (decay {config.ema}, about the "
                f"last {1 / (1 - config.ema):,.0f} steps) is "
                + ("validated and saved." if config.validates else "saved.")
            )

    def train_epoch(self, epoch: int, stop: StopRequest, progress: bool) -> None:
        """Train epoch `epoch` (or the rest of it, resumed), validate, and save the state."""
        config, state, optimizer = self.config, self.state, self.state.optimizer
        images, labels = self.train
        if state.in_progress is None:
            order = torch.randperm(len(labels), generator=state.generator)
            state.in_progress = EpochProgress(order, lr=optimizer.param_groups[0]["lr"])
        epoch_progress = state.in_progress
        epoch_progress.order = epoch_progress.order.to(self.device)
        # the rate the epoch began with, also when it resumes part way (one-cycle moves it every step)
        lr = optimizer.param_groups[0]["lr"] if epoch_progress.lr is None else epoch_progress.lr
        bar = tqdm(
            total=len(labels),
            initial=epoch_progress.seen,
            unit="img",
            leave=False,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress,
        )
        with bar:
            finished = train_one_epoch(
                self.train_model,
                optimizer,
                images,
                labels,
                config,
                state.generator,
                epoch_progress,
                stop,
                bar,
                self.cluster,
                self.scheduler,
                state.average,
            )
        if not finished:
            self.save()
            distributed.barrier(self.cluster)
            raise TrainingInterrupted(
                f"stopped by {stop.signal_name} in epoch {epoch}, batch {epoch_progress.step}; "
                f"the run is saved in {self.run_dir / CHECKPOINT}, to be resumed."
            )
        stats = self.validate(epoch, epoch_progress, lr)
        state.history.append(stats)
        state.in_progress = None
        self.log_epoch(stats)
        if stats.val_accuracy is not None:
            change = self.scheduler.after_epoch(stats.val_accuracy)
            if change:
                self.log(
                    f"epoch {epoch:>2}: validation accuracy has not improved for "
                    f"{config.plateau_patience} epochs; learning rate {change[0]:.2e} -> {change[1]:.2e}"
                )
        if _kept_epoch(state.history) == epoch:
            state.kept = {k: v.detach().clone() for k, v in self.kept.state_dict().items()}
        self.save()
        if self.cluster.is_main:
            lines = "".join(json.dumps(asdict(s)) + "\n" for s in state.history)
            write_atomic(self.run_dir / HISTORY, lines.encode())

    def validate(self, epoch: int, epoch_progress: EpochProgress, lr: float) -> EpochStats:
        """The finished epoch's line of history, its training sums gathered from every process."""
        distributed.sync_buffers(self.state.model, self.cluster)  # every process validates the same network
        if self.state.average is not None:
            distributed.sync_buffers(self.kept, self.cluster)
        val_loss, val_acc = (
            evaluate(self.kept, *self.val, self.config.eval_batch_size)
            if self.config.validates
            else (None, None)
        )
        loss_sum, correct, seen = distributed.sum_all(
            [epoch_progress.loss_sum, epoch_progress.correct, epoch_progress.seen], self.cluster, self.device
        )
        return EpochStats(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_accuracy=correct / seen,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=lr,
            seconds=epoch_progress.seconds,
            images_per_second=seen / epoch_progress.seconds,
        )

    def log_epoch(self, stats: EpochStats) -> None:
        validation = (
            f"val_loss {stats.val_loss:.4f}  val_acc {stats.val_accuracy:.4f}"
            if stats.val_loss is not None and stats.val_accuracy is not None
            else "no validation"
        )
        self.log(
            f"epoch {stats.epoch:>2}/{self.config.epochs}  loss {stats.train_loss:.4f}  "
            f"acc {stats.train_accuracy:.4f}  {validation}  "
            f"lr {stats.lr:.2e}  {stats.images_per_second:,.0f} img/s  {stats.seconds:.0f}s"
        )

    def save(self) -> None:
        if self.cluster.is_main:
            save_state(self.run_dir / CHECKPOINT, self.state, self.config.to_dict(), self.data_identity)

    def finish(self, test: Split | None) -> FitResult:
        """The kept network, measured on `test` if given, written to the model file (by the main
        process) with everything the run measured."""
        history = self.state.history
        epoch = _kept_epoch(history)
        network = DigitNet(self.config.model).to(self.device)
        network.load_state_dict(self._kept_weights())
        network.eval()
        kept = history[epoch - 1]
        train_seconds = sum(s.seconds for s in history)
        evaluation = None
        path = self.run_dir / MODEL
        if self.cluster.is_main:
            evaluation = evaluate_model(network, test, self.device) if test is not None else None
            measured = (
                {"test_accuracy": evaluation.accuracy, "test_loss": evaluation.loss} if evaluation else {}
            )
            metadata = {
                "train_config": self.config.to_dict(),
                "data_sha256": self.data.sha256,
                "train_images": len(self.data.train.labels),  # with data_sha256, what `held_out` splits again
                "device": str(self.device),
                "epoch": epoch,
                "val_accuracy": kept.val_accuracy,
                "val_loss": kept.val_loss,
                "history": [asdict(s) for s in history],
                "train_seconds": train_seconds,
                "torch_threads": torch.get_num_threads(),
                **measured,
            }
            checkpoint.save_model(path, network, metadata)
        distributed.barrier(self.cluster)  # the main process has written the file
        return FitResult(network, history, epoch, kept.val_accuracy, train_seconds, path, evaluation)

    def _kept_weights(self) -> dict[str, torch.Tensor]:
        if self.state.kept is not None:
            return self.state.kept
        # a checkpoint written before it held the kept weights: they are in the model file of that run
        path = self.run_dir / MODEL
        if not path.exists():
            raise CheckpointError(
                f"{self.run_dir / CHECKPOINT} does not hold the weights of its kept epoch, and there is no "
                f"{MODEL} beside it. Start the run again."
            )
        return checkpoint.load_model(path, self.device).model.state_dict()


def _kept_epoch(history: list[EpochStats]) -> int:
    """The epoch to keep: the first with the best validation accuracy, else (no validation) the last."""
    validated = [s for s in history if s.val_accuracy is not None]
    if not validated:
        return len(history)
    return max(validated, key=lambda s: s.val_accuracy or 0.0).epoch
