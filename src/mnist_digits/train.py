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
from tqdm import tqdm

from . import checkpoint
from .augment import AugmentConfig, random_affine
from .data import Mnist, Split, split_validation, to_tensors
from .errors import CheckpointError, MnistDigitsError
from .files import write_atomic
from .model import DigitNet, ModelConfig


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
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # learning rate used during this epoch
    seconds: float  # wall time of the epoch's training steps
    images_per_second: float  # training throughput, augmentation included


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
    model: DigitNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    bar: tqdm | None = None,
) -> tuple[float, float]:
    """One pass over shuffled, augmented batches; returns mean loss and accuracy."""
    model.train()
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(images.device)
    total_loss = torch.zeros((), device=images.device)
    total_correct = torch.zeros((), device=images.device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    for first in range(0, n, config.batch_size):
        index = order[first : first + config.batch_size]
        if len(index) < 2:
            break  # BatchNorm cannot normalize a batch of one
        batch = random_affine(images[index], config.augment, generator)
        batch = batch.contiguous(memory_format=torch.channels_last)
        logits = model(batch)
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(index)
        total_correct += (logits.argmax(1) == labels[index]).sum()
        seen += len(index)
        if bar is not None:
            bar.update(len(index))
            if (first // config.batch_size) % 20 == 0:  # reading the loss syncs a GPU; not every step
                bar.set_postfix(
                    loss=f"{total_loss.item() / seen:.4f}",
                    acc=f"{total_correct.item() / seen:.4f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                    img_s=f"{seen / (time.perf_counter() - start):.0f}",
                )
    return total_loss.item() / seen, total_correct.item() / seen


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
    extra_metadata: dict[str, Any] | None = None,
) -> FitResult:
    """Train on data.train minus a held-out validation split; never looks at data.test."""
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

    train_split, val_split = split_validation(data.train, config.val_fraction, config.seed)
    train_images, train_labels = to_tensors(train_split, device)
    val_images, val_labels = to_tensors(val_split, device)

    torch.manual_seed(config.seed)  # weights and dropout
    generator = torch.Generator().manual_seed(config.seed + 1)  # shuffling and augmentation
    model = DigitNet(config.model).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rho, eps=config.eps)
    scheduler = PlateauScheduler(optimizer, config)
    history: list[EpochStats] = []
    best_val_accuracy, best_epoch = -math.inf, 0
    if resume:
        history = _restore(state_path, config, model, optimizer, scheduler, generator, device)
        best = max(history, key=lambda s: s.val_accuracy, default=None)
        best_epoch, best_val_accuracy = (best.epoch, best.val_accuracy) if best else (0, -math.inf)
        log(f"Resuming {run_dir} after epoch {len(history)} of {config.epochs}.")

    metadata = {
        "train_config": config.to_dict(),
        "data_sha256": data.sha256,
        "device": str(device),
        **(extra_metadata or {}),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(len(history) + 1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        with tqdm(
            total=len(train_labels),
            unit="img",
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        ) as bar:
            train_loss, train_acc = train_one_epoch(
                model, optimizer, train_images, train_labels, config, generator, bar
            )
        seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, val_images, val_labels, config.eval_batch_size)
        stats = EpochStats(
            epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, len(train_labels) / seconds
        )
        history.append(stats)
        log(
            f"epoch {epoch:>2}/{config.epochs}  loss {train_loss:.4f}  acc {train_acc:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  lr {lr:.2e}  "
            f"{stats.images_per_second:,.0f} img/s  {seconds:.0f}s"
        )
        change = scheduler.step(val_acc)
        if change:
            log(
                f"epoch {epoch:>2}: validation accuracy has not improved for "
                f"{config.plateau_patience} epochs; learning rate {change[0]:.2e} -> {change[1]:.2e}"
            )
        if val_acc > best_val_accuracy:
            best_val_accuracy, best_epoch = val_acc, epoch
            checkpoint.save_model(
                run_dir / "model.safetensors",
                model,
                {**metadata, "epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss},
            )
        _save_state(state_path, config, model, optimizer, scheduler, generator, history)
        write_atomic(
            run_dir / "history.jsonl",
            "".join(json.dumps(asdict(s)) + "\n" for s in history).encode(),
        )

    best_model = checkpoint.load_model(run_dir / "model.safetensors", device).model
    return FitResult(best_model, history, best_epoch, best_val_accuracy, sum(s.seconds for s in history))


def _save_state(
    path: Path,
    config: TrainConfig,
    model: DigitNet,
    optimizer: torch.optim.Optimizer,
    scheduler: PlateauScheduler,
    generator: torch.Generator,
    history: list[EpochStats],
) -> None:
    """Everything needed to continue exactly where this epoch ended."""
    tensors = checkpoint.model_tensors(model)
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"{checkpoint.OPTIMIZER_PREFIX}{index}.{key}"] = torch.as_tensor(value)
    tensors[checkpoint.RNG_PREFIX + "torch"] = torch.get_rng_state()
    tensors[checkpoint.RNG_PREFIX + "generator"] = generator.get_state()
    if torch.cuda.is_available():
        tensors[checkpoint.RNG_PREFIX + "cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "train_config": config.to_dict(),
        "model_config": model.config.to_dict(),
        "optimizer_param_groups": opt_state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "history": [asdict(s) for s in history],
        "environment": checkpoint.environment(),
    }
    checkpoint.save(path, tensors, metadata)


def _restore(
    path: Path,
    config: TrainConfig,
    model: DigitNet,
    optimizer: torch.optim.Optimizer,
    scheduler: PlateauScheduler,
    generator: torch.Generator,
    device: torch.device,
) -> list[EpochStats]:
    tensors, metadata = checkpoint.read(path)
    saved = metadata.get("train_config", {})
    wanted = json.loads(json.dumps(config.to_dict()))  # tuples become lists, as when saved
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise CheckpointError(
            f"{path} was made with other settings ({', '.join(changed)} differ). "
            "Resume with the same options, or start a new run in another --out directory."
        )
    model.load_state_dict(checkpoint.build_model(tensors, metadata, path).state_dict())
    opt_state: dict[str, Any] = {"state": {}, "param_groups": metadata["optimizer_param_groups"]}
    for key, value in tensors.items():
        if key.startswith(checkpoint.OPTIMIZER_PREFIX):
            index, name = key[len(checkpoint.OPTIMIZER_PREFIX) :].split(".", 1)
            opt_state["state"].setdefault(int(index), {})[name] = value.to(device)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(metadata["scheduler"])
    torch.set_rng_state(tensors[checkpoint.RNG_PREFIX + "torch"])
    generator.set_state(tensors[checkpoint.RNG_PREFIX + "generator"])
    if torch.cuda.is_available() and checkpoint.RNG_PREFIX + "cuda" in tensors:
        torch.cuda.set_rng_state(tensors[checkpoint.RNG_PREFIX + "cuda"])
    return [EpochStats(**s) for s in metadata["history"]]


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with some fields replaced (None values are ignored)."""
    if name not in RECIPES:
        raise MnistDigitsError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


__all__ = ["RECIPES", "FitResult", "Split", "TrainConfig", "evaluate", "fit", "train_one_epoch"]
