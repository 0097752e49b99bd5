"""Measuring a model on a labelled set: accuracy, loss, per-class metrics, confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, to_tensors
from .model import NUM_CLASSES, predict_logits


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


def evaluate_model(
    model: torch.nn.Module, split: Split, device: torch.device | str = "cpu", batch_size: int = 1000
) -> Evaluation:
    """Run the model over a split and measure everything `Evaluation` holds."""
    images, labels = to_tensors(split, device)
    logits = predict_logits(model, images, batch_size).float()
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


def record_training(
    model_path: Path,
    model: torch.nn.Module,
    history: list[dict],
    test: Split | None,
    device: torch.device | str,
) -> Evaluation | None:
    """Store the training history in the model file's metadata (so `evaluate` and `report`
    can draw its curves) and, given the official test set, evaluate the chosen model on it,
    once, and store that too. None: the test set was left unread."""
    from . import checkpoint

    evaluation = evaluate_model(model, test, device) if test is not None else None
    _, metadata = checkpoint.read(model_path)
    metadata.update(
        history=history,
        train_seconds=sum(h["seconds"] for h in history),
        torch_threads=torch.get_num_threads(),
    )
    if evaluation is not None:
        metadata.update(test_accuracy=evaluation.accuracy, test_loss=evaluation.loss)
    checkpoint.save_model(model_path, model, metadata)  # type: ignore[arg-type]
    return evaluation


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
