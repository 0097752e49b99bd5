"""Figures as PNG files: confusion matrix, misclassified digits, training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from .evaluate import Evaluation
from .files import write_atomic
from .model import NUM_CLASSES


def _save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
    return path


def confusion_png(evaluation: Evaluation, path: Path, title: str = "") -> Path:
    """Counts on a log-scaled colour map, so that the few errors stand out beside the diagonal."""
    counts = np.asarray(evaluation.confusion)
    figure, axes = plt.subplots(figsize=(6.4, 5.6))
    image = axes.imshow(np.log1p(counts), cmap="Blues")
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            n = counts[true, predicted]
            if n:
                dark = np.log1p(n) > 0.6 * np.log1p(counts.max())
                axes.text(
                    predicted,
                    true,
                    str(n),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else ("black" if true == predicted else "#b00020"),
                )
    axes.set_xticks(range(NUM_CLASSES))
    axes.set_yticks(range(NUM_CLASSES))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(title or f"Confusion matrix: accuracy {evaluation.accuracy:.2%}")
    figure.colorbar(image, ax=axes, label="log(1 + count)", shrink=0.8)
    return _save(figure, path)


def misclassified_png(
    evaluation: Evaluation, images: np.ndarray, labels: np.ndarray, path: Path, limit: int = 100
) -> Path:
    """The misclassified digits, most confident mistakes first, with true/predicted/confidence."""
    wrong = np.flatnonzero(evaluation.predictions != labels)
    wrong = wrong[np.argsort(-evaluation.confidences[wrong])][:limit]
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.35), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong, strict=False):
        axes.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        axes.set_title(
            f"#{index} {labels[index]}→{evaluation.predictions[index]}\n{evaluation.confidences[index]:.0%}",
            fontsize=7,
            color="#b00020",
        )
    total = int((evaluation.predictions != labels).sum())
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.suptitle(
        f"Misclassified test digits ({len(wrong)} of {total} shown; #index true→predicted, confidence)",
        fontsize=10,
    )
    return _save(figure, path)


def curves_png(history: Sequence[dict], path: Path) -> Path:
    """Loss, accuracy and learning rate per epoch for training and validation."""
    epochs = [h["epoch"] for h in history]
    figure, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_ax.set_title("loss")
    loss_ax.set_yscale("log")
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    acc_ax.set_title("accuracy")
    lowest = min(min(h["train_accuracy"], h["val_accuracy"]) for h in history)
    acc_ax.set_ylim(max(0.0, lowest - 0.005), 1.0)
    lr_ax.step(epochs, [h["lr"] for h in history], where="post", color="tab:green")
    lr_ax.set_yscale("log")
    lr_ax.set_title("learning rate")
    for axes in (loss_ax, acc_ax, lr_ax):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.legend()
    return _save(figure, path)
