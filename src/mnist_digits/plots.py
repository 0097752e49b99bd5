"""Figures as PNG: confusion matrix, misclassified digits, training curves, reliability diagram.

Each `*_figure` function builds a matplotlib figure; `png_bytes` renders it (for embedding, as the
HTML report does) and the `*_png` functions write it to a file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .evaluate import Calibration, Evaluation, calibration
from .files import write_atomic
from .model import NUM_CLASSES

ERROR_RED = "#b00020"


def png_bytes(figure: Figure) -> bytes:
    """Render the figure as PNG. Figures are made without pyplot: no global backend is chosen
    or changed (a user's interactive plots keep theirs), and nothing keeps them alive after."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _save(figure: Figure, path: Path) -> Path:
    write_atomic(path, png_bytes(figure))
    return path


def confusion_figure(evaluation: Evaluation, title: str = "") -> Figure:
    """Counts on a log-scaled colour map, so that the few errors stand out beside the diagonal."""
    counts = np.asarray(evaluation.confusion)
    figure = Figure(figsize=(6.4, 5.6))
    axes = figure.subplots()
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
                    color="white" if dark else ("black" if true == predicted else ERROR_RED),
                )
    axes.set_xticks(range(NUM_CLASSES))
    axes.set_yticks(range(NUM_CLASSES))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(title or f"Confusion matrix: accuracy {evaluation.accuracy:.2%}")
    figure.colorbar(image, ax=axes, label="log(1 + count)", shrink=0.8)
    return figure


def confusion_png(evaluation: Evaluation, path: Path, title: str = "") -> Path:
    return _save(confusion_figure(evaluation, title), path)


def misclassified_figure(
    evaluation: Evaluation, images: np.ndarray, labels: np.ndarray, limit: int = 100, which: str = "test"
) -> Figure:
    """The misclassified digits, most confident mistakes first, with true/predicted/confidence."""
    wrong = np.flatnonzero(evaluation.predictions != labels)
    wrong = wrong[np.argsort(-evaluation.confidences[wrong])][:limit]
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    figure = Figure(figsize=(columns * 1.1, rows * 1.35))
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong, strict=False):
        axes.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        axes.set_title(
            f"#{index} {labels[index]}→{evaluation.predictions[index]}\n{evaluation.confidences[index]:.0%}",
            fontsize=7,
            color=ERROR_RED,
        )
    total = int((evaluation.predictions != labels).sum())
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.suptitle(
        f"Misclassified {which} digits ({len(wrong)} of {total} shown; #index true→predicted, confidence)",
        fontsize=10,
    )
    return figure


def misclassified_png(
    evaluation: Evaluation,
    images: np.ndarray,
    labels: np.ndarray,
    path: Path,
    limit: int = 100,
    which: str = "test",  # the set the digits come from, for the title: "test" or "validation"
) -> Path:
    return _save(misclassified_figure(evaluation, images, labels, limit, which), path)


def curves_figure(histories: Sequence[Sequence[dict]]) -> Figure:
    """Loss, accuracy and learning rate per epoch, training and validation, for each history.

    One history: train and validation in two colours. Several (an ensemble's members): one
    colour per member, validation solid and training dashed. Empty histories are left out.
    """
    members = [(number, history) for number, history in enumerate(histories, start=1) if history]
    if not members:
        raise ValueError("curves_figure needs at least one non-empty training history")
    figure = Figure(figsize=(13, 3.6))
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    single = len(histories) == 1
    for number, history in members:
        epochs = [h["epoch"] for h in history]
        colour = f"C{(number - 1) % 10}"
        train_style = {"color": "C0", "marker": "o"} if single else {"color": colour, "ls": "--"}
        val_style = {"color": "C1", "marker": "o"} if single else {"color": colour}
        validated = all(h["val_accuracy"] is not None for h in history)  # not so in a final fit
        for axes, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            axes.plot(epochs, [h[f"train_{key}"] for h in history], label="train", **train_style)
            if validated:
                axes.plot(epochs, [h[f"val_{key}"] for h in history], label="validation", **val_style)
        lr_ax.step(epochs, [h["lr"] for h in history], where="post", color="tab:green" if single else colour)
    loss_ax.set_title("loss")
    loss_ax.set_yscale("log")
    acc_ax.set_title("accuracy")
    accuracies = [
        h[key] for _, history in members for h in history for key in ("train_accuracy", "val_accuracy")
    ]
    lowest = min(a for a in accuracies if a is not None)  # a final fit has no validation accuracy
    acc_ax.set_ylim(max(0.0, lowest - 0.005), 1.0)
    lr_ax.set_yscale("log")
    lr_ax.set_title("learning rate")
    for axes in (loss_ax, acc_ax, lr_ax):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    if single:
        loss_ax.legend()
        acc_ax.legend()
    else:
        handles = [
            Line2D([], [], color="black", label="validation"),
            Line2D([], [], color="black", ls="--", label="train"),
        ]
        handles += [Line2D([], [], color=f"C{(n - 1) % 10}", label=f"member {n}") for n, _ in members]
        figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        figure.tight_layout()
    return figure


def curves_png(history: Sequence[dict], path: Path) -> Path:
    return _save(curves_figure([history]), path)


def reliability_figure(calibration: Calibration) -> Figure:
    """Accuracy per confidence bin, its gap to the bin's mean confidence hatched, bin counts below."""
    edges, counts = calibration.edges, calibration.counts
    filled = counts > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    accuracy, confidence = calibration.accuracy[filled], calibration.confidence[filled]
    figure = Figure(figsize=(6.4, 6.4))
    acc_ax, count_ax = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1.2)})
    acc_ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    acc_ax.bar(left, accuracy, width, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
    # Above the bar: over-confident; below its top: under-confident.
    acc_ax.bar(
        left,
        confidence - accuracy,
        width,
        bottom=accuracy,
        align="edge",
        facecolor="none",
        edgecolor=ERROR_RED,
        hatch="///",
        label="gap to mean confidence",
    )
    acc_ax.set_xlim(0, 1)
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy in bin")
    acc_ax.set_title(f"Reliability: expected calibration error {calibration.ece:.2%}", pad=26)
    # Above the axes: inside, any corner may hide a bar.
    acc_ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    acc_ax.grid(alpha=0.3)
    count_ax.bar(left, counts[filled], width, align="edge", color="grey", edgecolor="white")
    count_ax.set_yscale("log")
    count_ax.set_ylim(0.5, counts.max() * 8)
    for x, w, n in zip(left, width, counts[filled], strict=True):
        count_ax.text(x + w / 2, n * 1.3, f"{n:,}", ha="center", va="bottom", fontsize=7)
    count_ax.set_xlabel("confidence (probability of the predicted digit)")
    count_ax.set_ylabel("images")
    count_ax.xaxis.set_major_locator(matplotlib.ticker.MultipleLocator(0.1))
    figure.tight_layout()
    return figure


def reliability_png(calibration: Calibration, path: Path) -> Path:
    return _save(reliability_figure(calibration), path)


def write_evaluation_figures(
    evaluation: Evaluation,
    images: np.ndarray,
    directory: Path,
    which: str = "test",
    history: Sequence[dict] | None = None,
) -> list[Path]:
    """Write confusion.png, reliability.png, misclassified.png of `evaluation` on `images` (N, 28, 28),
    and curves.png of a training `history` if there is one, into `directory`; returns the paths."""
    directory = Path(directory)
    bins = calibration(evaluation.confidences, evaluation.correct)
    wrong = misclassified_figure(evaluation, images, evaluation.labels, which=which)
    figures = [
        confusion_png(evaluation, directory / "confusion.png"),
        reliability_png(bins, directory / "reliability.png"),
        _save(wrong, directory / "misclassified.png"),
    ]
    if history:
        figures.append(curves_png(history, directory / "curves.png"))
    return figures
