"""Training: the reference recipe (RMSprop, augmentation, reduce-on-plateau) as a plain loop.

A run directory holds:
  checkpoint.safetensors  everything needed to resume, rewritten after every epoch
  model.safetensors       the best epoch by validation accuracy, with its metadata
  history.jsonl           one line of metrics per epoch
  .lock                   locked while a run trains there, so that a second one stops at once
A new run never replaces an earlier one's files unless asked to (`overwrite`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import checkpoint, distributed
from .augment import AugmentConfig, random_style, random_warp
from .data import Mnist, Split, split_validation, to_tensors
from .device import pick_device
from .distributed import SINGLE_PROCESS, Cluster
from .errors import MnistDigitsError, TrainingInterrupted
from .files import directory_lock, ensure_writable_dir, write_atomic
from .model import DigitNet, ModelConfig, predict_logits
from .resume import (
    CHECKPOINT,
    HISTORY,
    MODEL,
    EpochProgress,
    EpochStats,
    RunDirectoryError,
    StopRequest,
    TrainingState,
    prepare_run_dir,
    restore_state,
    run_files,
    save_state,
    stop_on_signals,
)

# What TrainConfig's numbers may hold (`--set` reaches them all): field, test, what to give.
_POSITIVE_INT = (lambda v: v >= 1, "a whole number, 1 or more")
_POSITIVE = (lambda v: v > 0, "a number above 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number, 0 or more")
_SHARE = (lambda v: 0 < v < 1, "a share between 0 and 1")
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "lr": _POSITIVE,
    "rho": (lambda v: 0 <= v < 1, "a decay in [0, 1)"),
    "eps": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "label_smoothing": (lambda v: 0 <= v < 1, "a share in [0, 1)"),
    "warmup": _SHARE,
    "final_div": (lambda v: v >= 1, "a ratio, 1 or more"),
    "plateau_patience": (lambda v: v >= 0, "a whole number of epochs, 0 or more"),
    "plateau_factor": _SHARE,
    "plateau_min_delta": _NON_NEGATIVE,
    "min_lr": _NON_NEGATIVE,
    "sam": _NON_NEGATIVE,
    "eval_batch_size": _POSITIVE_INT,
}


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the reference notebook's."""

    recipe: str = "reference"  # name of the preset this config started from
    epochs: int = 20
    batch_size: int = 64  # images per optimizer step
    optimizer: str = "rmsprop"  # "rmsprop" (the reference's) or "adamw"
    lr: float = 1e-3  # initial learning rate; with the one-cycle schedule, its peak
    rho: float = 0.9  # RMSprop's decay of the squared-gradient average (PyTorch: alpha)
    eps: float = 1e-7  # RMSprop's and AdamW's epsilon, Keras' default
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    label_smoothing: float = 0.0  # share of each target spread over the other classes
    schedule: str = "plateau"  # "plateau": cut lr when validation stalls; "onecycle": per step
    warmup: float = 0.25  # one-cycle: share of all steps spent rising to the peak lr
    final_div: float = 25_000.0  # one-cycle: the peak lr over the last step's (PyTorch's default);
    # 4 keeps the rate above a quarter of its peak, where the weight average is still moving
    precision: str = "fp32"  # "bf16": autocast the training forward pass to bfloat16 (GPUs, and
    # CPUs with native bf16 such as AVX-512 BF16 or AMX; elsewhere it is emulated and slower)
    plateau_patience: int = 3  # epochs without a better validation accuracy before cutting lr
    plateau_factor: float = 0.5  # lr multiplier at each cut
    plateau_min_delta: float = 1e-4  # accuracy gain that counts as better (Keras' min_delta)
    min_lr: float = 1e-5  # lr never goes below this
    ema: float = 0.0  # weight averaging: decay of a moving average of the weights (and BatchNorm
    # statistics) updated every step; the average is validated and saved instead (0: off)
    sam: float = 0.0  # sharpness-aware minimization: each step takes its gradient at weights moved
    # this far (L2 norm over all weights) uphill, which favours flat minima; twice the work a step (0: off)
    val_fraction: float = 0.1  # share of the 60,000 training images held out for validation; 0
    # trains on all of them and keeps the last epoch (a final fit, once the recipe is settled)
    seed: int = 0  # seeds weights, dropout, shuffling, augmentation and the validation split
    split_seed: int | None = None  # seeds the validation split instead (None: `seed` does); one
    # split_seed for every member of an ensemble lets the ensemble itself be validated
    eval_batch_size: int = 1000  # images per forward pass when evaluating
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name, (valid, what) in _RANGES.items():
            if not valid(getattr(self, name)):
                default = getattr(TrainConfig, name)
                raise MnistDigitsError(
                    f"{name} {getattr(self, name)}: give {what} (the reference uses {default})."
                )
        if self.optimizer not in ("rmsprop", "adamw"):
            raise MnistDigitsError(f"unknown optimizer {self.optimizer!r}; choose rmsprop or adamw.")
        if self.schedule not in ("plateau", "onecycle"):
            raise MnistDigitsError(f"unknown schedule {self.schedule!r}; choose plateau or onecycle.")
        if self.precision not in ("fp32", "bf16"):
            raise MnistDigitsError(f"unknown precision {self.precision!r}; choose fp32 or bf16.")
        if not 0.0 <= self.ema < 1.0:
            raise MnistDigitsError(f"ema {self.ema}: give a decay in [0, 1), such as 0.999 (0: off).")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MnistDigitsError(
                f"val_fraction {self.val_fraction}: give a share in [0, 1), such as 0.1 (0: no validation)."
            )
        if self.split_seed is not None and self.split_seed < 0:
            raise MnistDigitsError(f"split_seed {self.split_seed}: give a whole number, 0 or more.")
        if self.val_fraction == 0.0 and self.schedule == "plateau":
            raise MnistDigitsError(
                "val_fraction 0 leaves nothing to validate on, and the plateau schedule cuts the "
                "learning rate by validation accuracy; use a recipe with the one-cycle schedule "
                "(fast, lean, best, full) or keep a validation split."
            )

    @property
    def validates(self) -> bool:
        return self.val_fraction > 0.0

    @property
    def validation_seed(self) -> int:
        """The seed that chooses the validation images."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        values["augment"] = AugmentConfig(**values["augment"])
        values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


# 99.5% on the test set in the least time on a 2-core CPU: a half-width network with
# BatchNorm after every convolution and no dropout (dropout's random masks cost a sixth
# of a step here, and BatchNorm regularizes enough for 5 epochs), AdamW on a one-cycle
# schedule to a high peak, batch 256, label smoothing, lighter augmentation. Chosen on
# the validation split (docs/experiments.md).
_FAST = TrainConfig(
    recipe="fast",
    epochs=5,
    batch_size=256,
    optimizer="adamw",
    lr=8e-3,
    warmup=0.15,
    weight_decay=5e-4,
    label_smoothing=0.1,
    schedule="onecycle",
    augment=AugmentConfig(rotation=8.0, zoom=0.06, shift=0.06),
    model=ModelConfig(
        channels=(16, 32, 64), dropout_first=0.0, dropout=0.0, conv_batchnorm=True, bn_momentum=0.1
    ),
)

# Weight averaging for the long recipes: it raised both recipes' validation accuracy with the
# raw weights trained exactly as before (docs/experiments.md, "Weight averaging").
_EMA = 0.999

RECIPES: dict[str, TrainConfig] = {
    # The Keras notebook's recipe, exactly.
    "reference": TrainConfig(),
    "fast": _FAST,
    # The fast recipe's network trained six times longer with the reference augmentation,
    # validating and saving a moving average of its weights: as accurate as `full` on the
    # validation split in 40% of its time; its members are a cheap way to grow an ensemble.
    "lean": replace(_FAST, recipe="lean", epochs=30, augment=AugmentConfig(), ema=_EMA),
    # The most accurate single network: `lean` at three quarters of the reference width
    # (24-48-96 channels), half its batch (twice the steps at the same peak rate) and
    # sharpness-aware steps, each chosen on validation (docs/experiments.md).
    "best": replace(
        _FAST,
        recipe="best",
        epochs=30,
        batch_size=128,
        augment=AugmentConfig(),
        ema=_EMA,
        sam=0.05,
        model=replace(_FAST.model, channels=(24, 48, 96)),
    ),
    # The reference width with BatchNorm after every convolution, the reference
    # augmentation, label smoothing, AdamW on a one-cycle schedule (`best` until `lean`'s
    # wider network overtook it; two of the shipped ensemble's networks).
    "full": TrainConfig(
        recipe="full",
        epochs=20,
        batch_size=128,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        schedule="onecycle",
        model=ModelConfig(conv_batchnorm=True, bn_momentum=0.1),
    ),
}


@dataclass
class FitResult:
    model: torch.nn.Module  # the DigitNet of the best epoch (the last without validation), in eval mode
    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float | None  # None: trained without a validation split
    train_seconds: float  # wall time of all training epochs, validation included

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
            sharpness_aware_gradients(model, batch, labels[index], config)
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


def training_loss(
    model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (in float32) and the label-smoothed loss of one batch, at the config's precision."""
    with torch.autocast(batch.device.type, torch.bfloat16, enabled=config.precision == "bf16"):
        logits = model(batch).float()
    return logits, F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)


def sharpness_aware_gradients(
    model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> None:
    """Replace the gradients in `model` (those of the loss at its weights w) by the gradients
    at w + rho * g / |g|, the steepest nearby point (Foret et al., 2021, "Sharpness-Aware
    Minimization"); the weights are put back, and BatchNorm's running statistics are left as
    the first pass set them."""
    params, grads = [], []
    for p in model.parameters():
        if p.grad is not None:
            params.append(p)
            grads.append(p.grad)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = config.sam / (norm + 1e-12)  # a tensor: no wait for a GPU to hand the norm back
    weights = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g * scale)
    statistics = [b.clone() for b in model.buffers()]  # BatchNorm's, which this pass moves
    _, loss = training_loss(model, batch, labels, config)
    model.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
        for b, kept in zip(model.buffers(), statistics, strict=True):
            b.copy_(kept)


def evaluate(
    model: DigitNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a labelled set."""
    logits = predict_logits(model, images, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def _completed(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added since it was written, at their defaults."""
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (KeyError, TypeError, MnistDigitsError):
        return saved  # not a config this version can read: compared as it is, and refused


def make_average(model: DigitNet, config: TrainConfig) -> AveragedModel | None:
    """The exponential moving average of the weights and BatchNorm statistics (PyTorch's
    AveragedModel), or None when the config does not average."""
    if not config.ema:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=config.lr, eps=config.eps, weight_decay=config.weight_decay
        )
    return torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rho, eps=config.eps)


class Scheduler:
    """A learning-rate schedule: told of every optimizer step and every validated epoch.

    Subclasses wrap one of PyTorch's schedulers in `self.scheduler`, whose state is saved.
    """

    scheduler: Any  # a torch.optim.lr_scheduler instance

    def after_batch(self) -> None:
        pass

    def after_epoch(self, val_accuracy: float) -> tuple[float, float] | None:
        """Returns (old_lr, new_lr) when the epoch's result changed the learning rate."""
        return None

    def describe(self) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class PlateauScheduler(Scheduler):
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
        self.config = config

    def after_epoch(self, val_accuracy: float) -> tuple[float, float] | None:
        old = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_accuracy)
        new = self.optimizer.param_groups[0]["lr"]
        return (old, new) if new != old else None

    def describe(self) -> str:
        c = self.config
        return (
            f"learning rate {c.lr:.1e}, halved (x{c.plateau_factor}) after {c.plateau_patience} epochs "
            f"without a better validation accuracy, never below {c.min_lr:.0e}"
        )


class OneCycleScheduler(Scheduler):
    """Smith's one-cycle policy: lr rises to its peak, then anneals (cosine) to nearly zero
    (or to the peak / `final_div`)."""

    START_DIV = 25.0  # the first step's lr is the peak / 25 (PyTorch's default)

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> None:
        self.total_steps = config.epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=self.total_steps,
            pct_start=config.warmup,
            cycle_momentum=False,
            div_factor=self.START_DIV,
            final_div_factor=config.final_div / self.START_DIV,  # of the start: ends at lr / final_div
        )
        self.config = config

    def after_batch(self) -> None:
        if self.scheduler.last_epoch < self.total_steps:  # a skipped tail batch leaves spare steps
            self.scheduler.step()

    def describe(self) -> str:
        c = self.config
        return (
            f"one-cycle learning rate over {self.total_steps:,} steps: {c.lr / self.START_DIV:.1e} rising to "
            f"{c.lr:.1e} in the first {c.warmup:.0%}, then down to {c.lr / c.final_div:.1e}"
        )


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, train_size: int) -> Scheduler:
    if config.schedule == "onecycle":
        return OneCycleScheduler(optimizer, config, math.ceil(train_size / config.batch_size))
    return PlateauScheduler(optimizer, config)


def fit(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    *,
    device: torch.device | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    cluster: Cluster = SINGLE_PROCESS,
) -> FitResult:
    """Train on data.train minus a held-out validation split; never looks at data.test.
    With config.val_fraction 0 there is no validation split, and the last epoch is kept.

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
        return _fit(config, data, run_dir, device or pick_device(), resume, progress, log, cluster)


def _fit(
    config: TrainConfig,
    data: Mnist,
    run_dir: Path,
    device: torch.device,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    cluster: Cluster,
) -> FitResult:
    """`fit` in a run directory that it has locked and checked."""
    state_path = run_dir / CHECKPOINT
    if cluster.is_main:
        ensure_writable_dir(run_dir)  # fail now, not after the first epoch

    train_split, val_split = split_validation(data.train, config.val_fraction, config.validation_seed)
    train_images, train_labels = to_tensors(train_split, device)
    val_images, val_labels = to_tensors(val_split, device)

    torch.manual_seed(config.seed)  # weights and dropout
    model = DigitNet(config.model).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_model: torch.nn.Module = model
    if cluster.distributed:
        torch.manual_seed(config.seed + cluster.rank)  # each process its own dropout masks
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_labels))
    average = make_average(model, config)
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(config.seed + 1),  # shuffling and augmentation
        history=[],
        average=average,
    )
    data_identity = {"sha256": data.sha256, "train_images": len(data.train.labels)}
    if resume:
        restore_state(state_path, state, config.to_dict(), data_identity, _completed)
        where = f"epoch {len(state.history) + 1}"
        if state.in_progress:
            where += f", batch {state.in_progress.step + 1}"
        if len(state.history) >= config.epochs:
            log(f"{run_dir} has finished all {config.epochs} epochs; nothing left to train.")
        else:
            log(f"Resuming {run_dir} at {where} of {config.epochs}.")
    else:
        log(f"Schedule: {scheduler.describe()}.")
        if config.sam:
            log(f"Sharpness-aware steps: gradients taken {config.sam} uphill of the weights (two passes).")
        if average is not None:
            log(
                f"Weight averaging: a moving average of the weights (decay {config.ema}, about the "
                f"last {1 / (1 - config.ema):,.0f} steps) is "
                + ("validated and saved." if config.validates else "saved.")
            )
    # the network that is validated and saved: the weight average when there is one
    kept: DigitNet = average.module if average is not None else model  # type: ignore[assignment]
    best = max(state.history, key=lambda s: s.val_accuracy or 0.0, default=None)
    best_epoch, best_val_accuracy = (best.epoch, best.val_accuracy) if best else (0, None)
    if not config.validates:
        best_epoch = len(state.history)

    metadata = {
        "train_config": config.to_dict(),
        "data_sha256": data.sha256,
        "train_images": len(data.train.labels),  # with data_sha256, what `held_out` splits again
        "device": str(device),
    }
    with stop_on_signals() as stop:
        for epoch in range(len(state.history) + 1, config.epochs + 1):
            if state.in_progress is None:
                state.in_progress = EpochProgress(
                    torch.randperm(len(train_labels), generator=state.generator),
                    lr=optimizer.param_groups[0]["lr"],
                )
            epoch_progress = state.in_progress
            epoch_progress.order = epoch_progress.order.to(device)
            # the rate the epoch began with, also when it resumes part way (one-cycle moves it every step)
            lr = optimizer.param_groups[0]["lr"] if epoch_progress.lr is None else epoch_progress.lr
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
                    scheduler,
                    average,
                )
            if not finished:
                if cluster.is_main:
                    save_state(state_path, state, config.to_dict(), data_identity)
                distributed.barrier(cluster)
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} in epoch {epoch}, batch {epoch_progress.step}; "
                    f"the run is saved in {state_path}. Continue it: run the same command with --resume."
                )
            distributed.sync_buffers(model, cluster)  # every process validates the same network
            if average is not None:
                distributed.sync_buffers(kept, cluster)
            val_loss, val_acc = (
                evaluate(kept, val_images, val_labels, config.eval_batch_size)
                if config.validates
                else (None, None)
            )
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
            validation = (
                f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}"
                if val_loss is not None and val_acc is not None
                else "no validation"
            )
            log(
                f"epoch {epoch:>2}/{config.epochs}  loss {stats.train_loss:.4f}  "
                f"acc {stats.train_accuracy:.4f}  {validation}  "
                f"lr {lr:.2e}  {stats.images_per_second:,.0f} img/s  {stats.seconds:.0f}s"
            )
            if val_acc is None:
                best_epoch = epoch  # nothing to choose by: the last epoch is kept
            else:
                change = scheduler.after_epoch(val_acc)
                if change:
                    log(
                        f"epoch {epoch:>2}: validation accuracy has not improved for "
                        f"{config.plateau_patience} epochs; learning rate {change[0]:.2e} -> {change[1]:.2e}"
                    )
                if best_val_accuracy is None or val_acc > best_val_accuracy:
                    best_val_accuracy, best_epoch = val_acc, epoch
            if not cluster.is_main:
                continue
            if best_epoch == epoch:
                checkpoint.save_model(
                    run_dir / MODEL,
                    kept,
                    {**metadata, "epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss},
                )
            save_state(state_path, state, config.to_dict(), data_identity)
            history_lines = "".join(json.dumps(asdict(s)) + "\n" for s in state.history)
            write_atomic(run_dir / HISTORY, history_lines.encode())

    distributed.barrier(cluster)  # the main process has written the files
    best_model = checkpoint.load_model(run_dir / MODEL, device).model
    return FitResult(
        best_model, state.history, best_epoch, best_val_accuracy, sum(s.seconds for s in state.history)
    )


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


def held_out(networks: Sequence[dict[str, Any]], data: Mnist) -> Split:
    """The validation images that the networks (a model's, or an ensemble's members' metadata)
    held out of `data`'s training images, as `fit` chose them; MnistDigitsError if they trained
    on other images or held out different ones, so no image they learned from is validated on."""
    splits = set()
    for i, metadata in enumerate(networks):
        which = f"network {i + 1} of {len(networks)}" if len(networks) > 1 else "this network"
        try:
            config = TrainConfig.from_dict(metadata["train_config"])
        except (KeyError, TypeError) as e:
            raise MnistDigitsError(
                f"{which} does not record its training settings ({e}), so its validation images are unknown."
            ) from None
        if not config.validates:
            raise MnistDigitsError(
                f"{which} trained on all {len(data.train.labels):,} training images (val_fraction 0): "
                "it held out no validation split. Evaluate it on the test set instead."
            )
        images = metadata.get("train_images", len(data.train.labels))  # not in files before 2026-11-29
        if metadata.get("data_sha256") != data.sha256 or images != len(data.train.labels):
            raise MnistDigitsError(
                f"{which} trained on other images than these {len(data.train.labels):,} (its own "
                "data, Kaggle's train.csv, samples from `feedback export`, or a --dry-run), so its "
                "validation images are not among them."
            )
        splits.add((config.val_fraction, config.validation_seed))
    if len(splits) > 1:
        seeds = ", ".join(str(seed) for _, seed in sorted(splits, key=lambda s: s[1]))
        raise MnistDigitsError(
            f"the networks of this ensemble held out different validation images (split seeds "
            f"{seeds}), so each trained on images the others validate on. Train the members on "
            "one split to validate the ensemble: `train --ensemble N --split-seed S`."
        )
    (fraction, seed) = splits.pop()
    return split_validation(data.train, fraction, seed)[1]


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with some fields replaced (None values are ignored)."""
    if name not in RECIPES:
        raise MnistDigitsError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def with_settings(config: TrainConfig, settings: Sequence[str]) -> TrainConfig:
    """The config with fields changed by 'FIELD=VALUE' strings, dotted into the augmentation
    and the network: 'label_smoothing=0.05', 'augment.rotation=10', 'model.channels=32,64,128'."""
    for setting in settings:
        name, equals, text = setting.partition("=")
        if not equals or not name.strip():
            raise MnistDigitsError(f"--set {setting!r}: write FIELD=VALUE, such as augment.rotation=10.")
        config = _with_field(config, name.strip().split("."), text.strip(), setting)
    return config


def _with_field(settings: Any, path: list[str], text: str, setting: str) -> Any:
    names = [f.name for f in fields(settings) if f.name != "recipe"]  # the preset's name stays
    if path[0] not in names:
        raise MnistDigitsError(
            f"--set {setting!r}: there is no setting {path[0]!r} here; choose one of {', '.join(names)}."
        )
    current = getattr(settings, path[0])
    if is_dataclass(current):
        if len(path) == 1:
            inner = ", ".join(f"{path[0]}.{f.name}" for f in fields(current))
            raise MnistDigitsError(f"--set {setting!r}: {path[0]} is a group of settings; name one: {inner}.")
        return replace(settings, **{path[0]: _with_field(current, path[1:], text, setting)})
    if len(path) > 1:
        raise MnistDigitsError(f"--set {setting!r}: {path[0]} is a single setting, with nothing inside it.")
    if next(str(f.type) for f in fields(settings) if f.name == path[0]) == "int | None":
        try:  # split_seed: a whole number, or "none" for its default
            return replace(settings, **{path[0]: None if text.lower() == "none" else int(text)})
        except ValueError:
            raise MnistDigitsError(
                f"--set {setting!r}: {text!r} is not a value of this setting; give a whole number, or none."
            ) from None
    return replace(settings, **{path[0]: _parse_like(current, text, setting)})


def _parse_like(current: Any, text: str, setting: str) -> Any:
    """`text` read as a value of the same kind as `current` (bool, int, float, str, or a tuple)."""
    try:
        if isinstance(current, bool):
            choices = {"true": True, "1": True, "false": False, "0": False}
            if text.lower() not in choices:
                raise ValueError
            return choices[text.lower()]
        if isinstance(current, tuple):
            values = tuple(type(current[0])(part) for part in text.split(","))
            if len(values) != len(current):
                raise ValueError
            return values
        return type(current)(text)
    except ValueError:
        example = ",".join(str(v) for v in current) if isinstance(current, tuple) else str(current)
        raise MnistDigitsError(
            f"--set {setting!r}: {text!r} is not a value of this setting; give one like its "
            f"current value, {example}."
        ) from None


__all__ = [
    "ENSEMBLE",
    "RECIPES",
    "EpochStats",
    "FitResult",
    "RunDirectoryError",
    "Split",
    "TrainConfig",
    "evaluate",
    "fit",
    "fit_ensemble",
    "held_out",
    "train_one_epoch",
    "with_settings",
]
