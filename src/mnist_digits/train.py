"""Training: the reference recipe (RMSprop, augmentation, reduce-on-plateau) as a plain loop.

A run directory holds:
  checkpoint.safetensors  everything needed to resume, rewritten after every epoch
  model.safetensors       the best epoch by validation accuracy, with its metadata
  history.jsonl           one line of metrics per epoch
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, distributed
from .augment import AugmentConfig, random_affine
from .data import Mnist, Split, split_validation, to_tensors
from .distributed import SINGLE_PROCESS, Cluster
from .errors import MnistDigitsError
from .files import ensure_writable_dir, write_atomic
from .model import DigitNet, ModelConfig
from .resume import (
    EpochProgress,
    EpochStats,
    StopRequest,
    TrainingInterrupted,
    TrainingState,
    restore_state,
    save_state,
    stop_on_signals,
)


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the reference notebook's."""

    recipe: str = "reference"  # name of the preset this config started from
    epochs: int = 20
    batch_size: int = 64  # images per optimizer step
    lr: float = 1e-3  # RMSprop's initial learning rate
    rho: float = 0.9  # RMSprop's decay of the squared-gradient average (PyTorch: alpha)
    eps: float = 1e-7  # RMSprop's epsilon, Keras' default
    plateau_patience: int = 3  # epochs without a better validation accuracy before cutting lr
    plateau_factor: float = 0.5  # lr multiplier at each cut
    plateau_min_delta: float = 1e-4  # accuracy gain that counts as better (Keras' min_delta)
    min_lr: float = 1e-5  # lr never goes below this
    val_fraction: float = 0.1  # share of the 60,000 training images held out for validation
    seed: int = 0  # seeds weights, dropout, shuffling, augmentation and the validation split
    eval_batch_size: int = 1000  # images per forward pass when evaluating
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        values["augment"] = AugmentConfig(**values["augment"])
        values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


RECIPES: dict[str, TrainConfig] = {
    "reference": TrainConfig(),
}


@dataclass
class FitResult:
    model: DigitNet  # weights of the best epoch, in eval mode
    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float
    train_seconds: float  # wall time of all training epochs, validation included


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when it is there, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MnistDigitsError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    return device


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
) -> bool:
    """Train on shuffled, augmented batches from `progress.step` on, updating `progress`.

    Returns True when the epoch is complete, False when `stop` was requested first. With
    several processes, every one draws the same global batch and augments it the same way
    (so their random generators stay in step), then trains on its own share of it.
    """
    model.train()
    n = len(progress.order)
    loss_sum = torch.zeros((), device=images.device)  # on the device: no sync per step
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
        batch = random_affine(images[index], config.augment, generator)
        share = slice(cluster.rank, None, cluster.world_size)
        batch, index = batch[share].contiguous(memory_format=torch.channels_last), index[share]
        logits = model(batch)
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels[index]).sum()
        progress.step, progress.seen = step + 1, progress.seen + len(index)
        if bar is not None:
            bar.update(len(index))
            if step % 20 == 0:  # reading the loss waits for a GPU; not every step
                seen = progress.seen
                bar.set_postfix(
                    loss=f"{(progress.loss_sum + loss_sum.item()) / seen:.4f}",
                    acc=f"{(progress.correct + correct.item()) / seen:.4f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                    img_s=f"{seen / (progress.seconds + time.perf_counter() - start):.0f}",
                )
    progress.loss_sum += loss_sum.item()
    progress.correct += int(correct.item())
    progress.seconds += time.perf_counter() - start
    return finished


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits (N, 10) for float images (N, 1, 28, 28), in eval mode, batch by batch."""
    model.eval()
    outputs = [
        model(images[i : i + batch_size].contiguous(memory_format=torch.channels_last))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, 10)


def evaluate(
    model: DigitNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a labelled set."""
    logits = predict_logits(model, images, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


class PlateauScheduler:
    """Keras' ReduceLROnPlateau on validation accuracy, reporting every change it makes."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=config.plateau_factor,
            # Keras cuts lr once `patience` epochs in a row failed to improve; PyTorch waits
            # until more than `patience` have: Keras' 3 is PyTorch's 2 (Keras' 0 and 1 act alike).
            patience=max(config.plateau_patience - 1, 0),
            threshold=config.plateau_min_delta,
            threshold_mode="abs",  # Keras compares accuracy + min_delta, not a relative gain
            min_lr=config.min_lr,
        )
        self.optimizer = optimizer

    def step(self, val_accuracy: float) -> tuple[float, float] | None:
        """Feed one epoch's validation accuracy; returns (old_lr, new_lr) if lr changed."""
        old = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_accuracy)
        new = self.optimizer.param_groups[0]["lr"]
        return (old, new) if new != old else None

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def fit(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    *,
    device: torch.device | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    cluster: Cluster = SINGLE_PROCESS,
) -> FitResult:
    """Train on data.train minus a held-out validation split; never looks at data.test.

    Ctrl-C or SIGTERM stops at the next batch, saves a resumable checkpoint and raises
    TrainingInterrupted; `resume=True` continues from the checkpoint in `run_dir`. Under
    torchrun (`cluster` from distributed.join) each process trains on its share of every
    batch and only the main one prints and writes files.
    """
    if not cluster.is_main:
        log, progress = (lambda message: None), False
    device = device or pick_device()
    run_dir = Path(run_dir)
    state_path = run_dir / "checkpoint.safetensors"
    if state_path.exists() and not resume:
        raise MnistDigitsError(
            f"{run_dir} already holds a training run. Pass --resume to continue it, "
            "or choose another --out directory."
        )
    if resume and not state_path.exists():
        raise MnistDigitsError(f"--resume: {state_path} does not exist; nothing to resume.")
    if cluster.is_main:
        ensure_writable_dir(run_dir)  # fail now, not after the first epoch

    train_split, val_split = split_validation(data.train, config.val_fraction, config.seed)
    train_images, train_labels = to_tensors(train_split, device)
    val_images, val_labels = to_tensors(val_split, device)

    torch.manual_seed(config.seed)  # weights and dropout
    model = DigitNet(config.model).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_model: torch.nn.Module = model
    if cluster.distributed:
        torch.manual_seed(config.seed + cluster.rank)  # each process its own dropout masks
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rho, eps=config.eps)
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=PlateauScheduler(optimizer, config),
        generator=torch.Generator().manual_seed(config.seed + 1),  # shuffling and augmentation
        history=[],
    )
    if resume:
        restore_state(state_path, state, config.to_dict())
        where = f"epoch {len(state.history) + 1}"
        if state.in_progress:
            where += f", batch {state.in_progress.step + 1}"
        log(f"Resuming {run_dir} at {where} of {config.epochs}.")
    best = max(state.history, key=lambda s: s.val_accuracy, default=None)
    best_epoch, best_val_accuracy = (best.epoch, best.val_accuracy) if best else (0, -math.inf)

    metadata = {"train_config": config.to_dict(), "data_sha256": data.sha256, "device": str(device)}
    with stop_on_signals() as stop:
        for epoch in range(len(state.history) + 1, config.epochs + 1):
            if state.in_progress is None:
                state.in_progress = EpochProgress(
                    torch.randperm(len(train_labels), generator=state.generator)
                )
            epoch_progress = state.in_progress
            epoch_progress.order = epoch_progress.order.to(device)
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(
                total=len(train_labels),
                initial=epoch_progress.seen,
                unit="img",
                leave=False,
                desc=f"epoch {epoch}/{config.epochs}",
                disable=not progress,
            )
            with bar:
                finished = train_one_epoch(
                    train_model,
                    optimizer,
                    train_images,
                    train_labels,
                    config,
                    state.generator,
                    epoch_progress,
                    stop,
                    bar,
                    cluster,
                )
            if not finished:
                if cluster.is_main:
                    save_state(state_path, state, config.to_dict())
                distributed.barrier(cluster)
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} in epoch {epoch}, batch {epoch_progress.step}; "
                    f"the run is saved in {state_path}. Continue it with --resume --out {run_dir}."
                )
            distributed.sync_buffers(model, cluster)  # every process validates the same network
            val_loss, val_acc = evaluate(model, val_images, val_labels, config.eval_batch_size)
            loss_sum, correct, seen = distributed.sum_all(
                [epoch_progress.loss_sum, epoch_progress.correct, epoch_progress.seen], cluster, device
            )
            stats = EpochStats(
                epoch=epoch,
                train_loss=loss_sum / seen,
                train_accuracy=correct / seen,
                val_loss=val_loss,
                val_accuracy=val_acc,
                lr=lr,
                seconds=epoch_progress.seconds,
                images_per_second=seen / epoch_progress.seconds,
            )
            state.history.append(stats)
            state.in_progress = None
            log(
                f"epoch {epoch:>2}/{config.epochs}  loss {stats.train_loss:.4f}  "
                f"acc {stats.train_accuracy:.4f}  val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  "
                f"lr {lr:.2e}  {stats.images_per_second:,.0f} img/s  {stats.seconds:.0f}s"
            )
            change = state.scheduler.step(val_acc)
            if change:
                log(
                    f"epoch {epoch:>2}: validation accuracy has not improved for "
                    f"{config.plateau_patience} epochs; learning rate {change[0]:.2e} -> {change[1]:.2e}"
                )
            if val_acc > best_val_accuracy:
                best_val_accuracy, best_epoch = val_acc, epoch
            if not cluster.is_main:
                continue
            if best_epoch == epoch:
                checkpoint.save_model(
                    run_dir / "model.safetensors",
                    model,
                    {**metadata, "epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss},
                )
            save_state(state_path, state, config.to_dict())
            history_lines = "".join(json.dumps(asdict(s)) + "\n" for s in state.history)
            write_atomic(run_dir / "history.jsonl", history_lines.encode())

    distributed.barrier(cluster)  # the main process has written the files
    best_model = checkpoint.load_model(run_dir / "model.safetensors", device).model
    return FitResult(
        best_model, state.history, best_epoch, best_val_accuracy, sum(s.seconds for s in state.history)
    )


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with some fields replaced (None values are ignored)."""
    if name not in RECIPES:
        raise MnistDigitsError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


__all__ = ["RECIPES", "EpochStats", "FitResult", "Split", "TrainConfig", "evaluate", "fit", "train_one_epoch"]
