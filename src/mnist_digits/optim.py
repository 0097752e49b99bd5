"""Optimizers, weight averaging and learning-rate schedules for `train.fit`, built from a TrainConfig."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .model import DigitNet
from .recipes import TrainConfig


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


def sharpness_aware_gradients(
    model: torch.nn.Module, rho: float, loss_of: Callable[[], torch.Tensor]
) -> None:
    """Replace the gradients in `model` (those of the loss `loss_of` computes at its weights w)
    by the gradients at w + rho * g / |g|, the steepest nearby point (Foret et al., 2021,
    "Sharpness-Aware Minimization"); the weights are put back, and BatchNorm's running
    statistics are left as the first pass set them."""
    params, grads = [], []
    for p in model.parameters():
        if p.grad is not None:
            params.append(p)
            grads.append(p.grad)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = rho / (norm + 1e-12)  # a tensor: no wait for a GPU to hand the norm back
    weights = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g * scale)
    statistics = [b.clone() for b in model.buffers()]  # BatchNorm's, which this pass moves
    loss = loss_of()
    model.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
        for b, kept in zip(model.buffers(), statistics, strict=True):
            b.copy_(kept)
