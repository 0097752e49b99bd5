"""Recognizer results as people and programs read them: a table, CSV rows, the model's inputs as PNG."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .files import write_atomic
from .predict import DEFAULT_THRESHOLD, NO_DIGIT, NumberReading, Prediction


def _note(result: Prediction | NumberReading, threshold: float) -> str:
    if result.error:
        prefix = f"{result.source}: "  # errors name their file; the row already does
        message = result.error[len(prefix) :] if result.error.startswith(prefix) else result.error
        return message if result.error == NO_DIGIT else f"error: {message}"
    if isinstance(result, Prediction) and result.note:
        return result.note
    return f"uncertain (below {threshold:.0%})" if result.uncertain else ""


def _top3(prediction: Prediction) -> str:
    return ", ".join(f"{d} {p:.1%}" for d, p in prediction.top3)


def format_predictions(predictions: Sequence[Prediction], threshold: float = DEFAULT_THRESHOLD) -> str:
    """A table: image, digit, probability, top 3, and a note (uncertain, no digit, error)."""
    width = max([len("image"), *(len(p.source) for p in predictions)])
    lines = [f"{'image':<{width}}  digit  probability  {'top 3':<26}  note"]
    for p in predictions:
        digit = "-" if p.digit is None else str(p.digit)
        probability = "-" if p.digit is None else f"{p.probability:.1%}"
        line = f"{p.source:<{width}}  {digit:>5}  {probability:>11}  {_top3(p):<26}  {_note(p, threshold)}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_numbers(readings: Sequence[NumberReading], threshold: float = DEFAULT_THRESHOLD) -> str:
    """A table: image, number, probability that all its digits are right, each digit, a note."""
    width = max([len("image"), *(len(r.source) for r in readings)])
    number_width = max([len("number"), *(len(r.text) for r in readings)])
    lines = [f"{'image':<{width}}  {'number':>{number_width}}  probability  digits"]
    for r in readings:
        number = r.text or "-"
        probability = f"{r.probability:.1%}" if r.text else "-"
        digits = ", ".join(f"{d.digit} {d.probability:.1%}{'?' if d.uncertain else ''}" for d in r.digits)
        note = _note(r, threshold)
        line = f"{r.source:<{width}}  {number:>{number_width}}  {probability:>11}  {digits}"
        lines.append((f"{line}  {note}" if note else line).rstrip())
    return "\n".join(lines)


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with a header: source, digit, probability, top3 ("7:0.9990 1:0.0005 ..."), uncertain, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "digit", "probability", "top3", "uncertain", "error"])
    for p in predictions:
        top3 = " ".join(f"{d}:{q:.4f}" for d, q in p.top3)
        probability = f"{p.probability:.4f}" if p.digit is not None else ""
        writer.writerow(
            [p.source, "" if p.digit is None else p.digit, probability, top3, p.uncertain, p.error or ""]
        )
    return buffer.getvalue()


def numbers_csv(readings: Sequence[NumberReading]) -> str:
    """CSV with a header: source, number, probability, digit_probabilities, uncertain, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "number", "probability", "digit_probabilities", "uncertain", "error"])
    for r in readings:
        per_digit = " ".join(f"{d.digit}:{d.probability:.4f}" for d in r.digits)
        probability = f"{r.probability:.4f}" if r.text else ""
        writer.writerow([r.source, r.text, probability, per_digit, r.uncertain, r.error or ""])
    return buffer.getvalue()


def save_inputs(directory: Path, predictions: Sequence[Prediction]) -> list[Path]:
    """Write each prediction's 28x28 model input as an 8-bit PNG named after its source; the paths."""
    written, used = [], set()
    for p in predictions:
        if p.input is None:
            continue
        base, mark, index = p.source.rpartition("#")  # a digit of a number: "year.png#2"
        stem = f"{Path(base).stem}_{index}" if mark and index.isdigit() else Path(p.source).stem
        stem = stem or "image"
        name, copy = f"{stem}.png", 2
        while name in used:
            name, copy = f"{stem}-{copy}.png", copy + 1
        used.add(name)
        buffer = io.BytesIO()
        Image.fromarray((np.clip(p.input, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        write_atomic(directory / name, buffer.getvalue())
        written.append(directory / name)
    return written
