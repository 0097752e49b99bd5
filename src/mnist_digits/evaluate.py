"""Measuring a model on a labelled set: accuracy, loss, per-class metrics, confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, to_tensors
from .errors import MnistDigitsError
from .model import NUM_CLASSES, predict_logits

CONFIDENCE_BINS = 15  # equal-width bins over [0, 1] for the reliability diagram and the ECE


@dataclass(frozen=True)
class ClassMetrics:
    digit: int
    precision: float  # of the images predicted as this digit, the share that are it
    recall: float  # of the images of this digit, the share found
    f1: float
    support: int  # images of this digit in the set


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # mean cross-entropy
    count: int  # images evaluated
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # confusion[true][predicted]
    labels: np.ndarray  # (N,) true digit per image
    predictions: np.ndarray  # (N,) predicted digit per image
    confidences: np.ndarray  # (N,) probability of the predicted digit

    @property
    def correct(self) -> np.ndarray:
        """(N,) whether each image's digit was read right."""
        return self.predictions == self.labels

    @property
    def errors(self) -> int:
        return int((~self.correct).sum())

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-image arrays)."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": self.count,
            "errors": self.errors,
            "per_class": [asdict(c) for c in self.per_class],
            "confusion": self.confusion,
        }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(10, 10) counts, rows = true digit, columns = predicted digit."""
    flat = labels.astype(np.int64) * NUM_CLASSES + predictions.astype(np.int64)
    return np.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_metrics(confusion: np.ndarray) -> list[ClassMetrics]:
    rows = []
    for digit in range(NUM_CLASSES):
        hits = int(confusion[digit, digit])
        predicted, actual = int(confusion[:, digit].sum()), int(confusion[digit].sum())
        precision = hits / predicted if predicted else 0.0
        recall = hits / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(ClassMetrics(digit, precision, recall, f1, actual))
    return rows


@dataclass(frozen=True)
class Calibration:
    edges: np.ndarray  # (bins + 1,) from 0 to 1; bin i holds confidences in (edges[i], edges[i + 1]]
    counts: np.ndarray  # (bins,) images whose confidence falls in the bin
    accuracy: np.ndarray  # (bins,) share of them predicted correctly; NaN where the bin is empty
    confidence: np.ndarray  # (bins,) their mean confidence; NaN where the bin is empty
    ece: float  # expected calibration error: sum over bins of count / N * |accuracy - confidence|


def calibration(confidences: np.ndarray, correct: np.ndarray, bins: int = CONFIDENCE_BINS) -> Calibration:
    """Bin predictions by confidence and compare each bin's accuracy with its mean confidence."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidences.ndim != 1 or confidences.shape != correct.shape or not len(confidences):
        raise ValueError(
            f"need two equally long, non-empty 1-D arrays; got confidences {confidences.shape}, "
            f"correct {correct.shape}"
        )
    if not np.isfinite(confidences).all() or confidences.min() < 0 or confidences.max() > 1 + 1e-6:
        raise ValueError("confidences must be probabilities in [0, 1]")
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    confidences = confidences.clip(0, 1)  # float32 softmax can overshoot 1 by an ulp
    edges = np.linspace(0, 1, bins + 1)
    which = np.searchsorted(edges[1:-1], confidences, side="left")  # right-closed bins
    counts = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=correct, minlength=bins)
    confidence_sums = np.bincount(which, weights=confidences, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy, confidence = hits / counts, confidence_sums / counts
    # count / N * |hits / count - sum / count| = |hits - sum| / N, and empty bins add nothing.
    ece = float(np.abs(hits - confidence_sums).sum() / len(confidences))
    return Calibration(edges, counts, accuracy, confidence, ece)


def evaluate_model(
    model: torch.nn.Module,
    split: Split,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    *,
    bf16: bool = False,
) -> Evaluation:
    """Run the model over a split (autocast to bfloat16 with `bf16`) and measure everything
    `Evaluation` holds."""
    images, labels = to_tensors(split, device)
    logits = predict_logits(model, images, batch_size, bf16=bf16)
    loss = F.cross_entropy(logits, labels).item()
    probs = logits.softmax(1)
    confidences, predictions = probs.max(1)
    predictions_np = predictions.cpu().numpy()
    labels_np = labels.cpu().numpy()
    confusion = confusion_matrix(labels_np, predictions_np)
    return Evaluation(
        accuracy=float((predictions_np == labels_np).mean()),
        loss=loss,
        count=len(labels_np),
        per_class=class_metrics(confusion),
        confusion=confusion.tolist(),
        labels=labels_np,
        predictions=predictions_np,
        confidences=confidences.cpu().numpy(),
    )


def format_report(evaluation: Evaluation) -> str:
    """Accuracy, per-class table and confusion matrix as text."""
    lines = [
        f"accuracy {evaluation.accuracy:.4%}  ({evaluation.errors} errors in {evaluation.count:,})"
        f"   loss {evaluation.loss:.4f}",
        "",
        "digit  precision  recall      f1  support",
    ]
    for c in evaluation.per_class:
        lines.append(f"{c.digit:>5}  {c.precision:>9.4f}  {c.recall:>6.4f}  {c.f1:>6.4f}  {c.support:>7}")
    lines += ["", "confusion matrix (rows: true digit, columns: predicted)"]
    lines.append("      " + "".join(f"{d:>6}" for d in range(NUM_CLASSES)))
    for digit, row in enumerate(evaluation.confusion):
        lines.append(f"{digit:>6}" + "".join(f"{n:>6}" for n in row))
    return "\n".join(lines)


class NotRecordable(MnistDigitsError):
    """An evaluation whose accuracy must not be stored in the model file; its advice names the
    choices as placeholders ({record}, {tta}, {val}) of errors.LIBRARY_TERMS."""


def check_recordable(model: str | Path, *, tta: bool, split: str) -> None:
    """NotRecordable unless evaluating `model` so may store its test accuracy in the model file:
    the network's own answers (no test-time augmentation), on the test split, in a file not shipped."""
    from .pretrained import available

    if tta:
        raise NotRecordable(
            advice="{record} stores the model's own test accuracy, which {tta} would change; leave out {tta}."
        )
    if split != "test":
        raise NotRecordable(
            advice="{record} stores the test accuracy; the validation accuracy is in the model file "
            "already (as val_accuracy). Leave out {val}."
        )
    if str(model) in available():
        shipped = repr(str(model)).replace("{", "{{").replace("}", "}}")  # a name, not a placeholder
        raise NotRecordable(
            advice="{record} writes into the model file; " + shipped + " is shipped with the package "
            "and already holds its test accuracy."
        )


def record_ensemble(
    path: Path,
    member_paths: list[Path],
    test: Split | None,
    device: torch.device | str,
    weights_dtype: str = "float16",
) -> tuple[int, Evaluation | None]:
    """Join trained models into one ensemble file and, given the official test set, evaluate
    it once and store the result in its metadata. Returns the number of networks joined and
    that evaluation (None: the test set was left unread). A path may be an ensemble itself:
    its networks join one by one. The file holds weights of
    `weights_dtype` (float16 or int8: half or a quarter of the size; the networks still
    compute in float32), and the evaluation is of exactly those weights."""
    from . import checkpoint
    from .ensemble import Ensemble, members

    loaded = [checkpoint.load_model(p, device) for p in member_paths]
    networks = [network for m in loaded for network in members(m.model)]
    networks_metadata = [metadata for m in loaded for metadata in m.members_metadata]
    for network in networks:
        checkpoint.round_to_stored(network, weights_dtype)
    evaluation = evaluate_model(Ensemble(networks), test, device) if test is not None else None
    configs = [m.get("train_config") or {} for m in networks_metadata]
    metadata = {
        "data_sha256": networks_metadata[0].get("data_sha256"),
        "train_seconds": sum(m.get("train_seconds", 0.0) for m in networks_metadata),
    }
    if evaluation is not None:
        metadata.update(test_accuracy=evaluation.accuracy, test_loss=evaluation.loss)
    if len({c.get("recipe") for c in configs}) == 1:  # one recipe, seeds apart: the first speaks for all
        metadata["train_config"] = configs[0]
    checkpoint.save_ensemble(path, networks, networks_metadata, metadata, weights_dtype)
    return len(networks), evaluation
