"""Accuracy on handwritten digits from outside MNIST: the UCI optical-recognition digits.

    .venv/bin/pip install scikit-learn      # ships the UCI digits; nothing is downloaded
    .venv/bin/python benchmarks/outside_mnist.py --model reference --model best --model ensemble --tta

The UCI set (Alpaydin and Kaynak, 1998; `sklearn.datasets.load_digits`) holds 1,797 digits
written by 43 people who are not among MNIST's writers. They were scanned, normalized to
32x32 bitmaps and stored as 8x8 blocks counting the inked pixels of each 4x4 square (0-16).
Each one is scaled back up to 32x32, given a margin and read like anyone's image: through
`mnist-digits predict`'s preprocessing, then the model.

That format loses most of the detail, so the table has a control row: MNIST's own test
digits put through the same 32x32 -> 8x8 -> back journey. The gap between the two rows is
what the new writers cost; the gap between the control and plain MNIST is what the format
costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/machine.py
from PIL import Image

from mnist_digits import data
from mnist_digits.files import write_atomic
from mnist_digits.predict import Recognizer, load_model
from mnist_digits.preprocess import prepare_digit
from mnist_digits.report import wilson_interval

BLOCK = 4  # UCI: each stored value counts the inked pixels of a 4x4 block of a 32x32 bitmap
BITMAP = 32
MARGIN = 8  # background added around the scaled-up digit, in pixels of the 32x32 bitmap


@dataclass
class Row:
    model: str
    tta: bool
    digits_from: str  # "UCI (43 writers)" or the MNIST control
    digits: int
    accuracy: float
    low: float  # Wilson 95% interval
    high: float
    errors: int
    confusions: str  # the commonest mistakes, "true->read x count"


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits as (N, 8, 8) counts 0-16, and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("This benchmark reads the UCI digits shipped with scikit-learn: pip install scikit-learn")
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def mnist_as_uci(images: np.ndarray) -> np.ndarray:
    """MNIST digits (N, 28, 28) uint8 put into UCI's format: the digit's box scaled, keeping its
    shape, to fill a 32x32 bitmap (ink where brighter than half), then counted in 4x4 blocks:
    (N, 8, 8), 0-16."""
    out = np.zeros((len(images), BITMAP // BLOCK, BITMAP // BLOCK), np.float32)
    for i, image in enumerate(images):
        rows, cols = np.nonzero(image > 127)
        if not len(rows):
            continue
        box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        scale = BITMAP / max(box.shape)
        height, width = (max(1, round(side * scale)) for side in box.shape)
        scaled = np.asarray(Image.fromarray(box).resize((width, height), Image.Resampling.BILINEAR)) > 127
        bitmap = np.zeros((BITMAP, BITMAP), bool)
        top, left = (BITMAP - height) // 2, (BITMAP - width) // 2
        bitmap[top : top + height, left : left + width] = scaled
        out[i] = bitmap.reshape(BITMAP // BLOCK, BLOCK, BITMAP // BLOCK, BLOCK).sum((1, 3))
    return out


def as_image(counts: np.ndarray) -> np.ndarray:
    """An 8x8 UCI digit as a grayscale image a person might hold: 32x32 plus a margin, white on black."""
    gray = Image.fromarray((counts * (255 / BLOCK**2)).astype(np.uint8))
    large = np.asarray(gray.resize((BITMAP, BITMAP), Image.Resampling.BICUBIC))
    return np.pad(large, MARGIN)


def prepare(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each 8x8 input scaled up and through the preprocessing: model inputs (N, 28, 28), and
    whether ink was found in each."""
    prepared = [prepare_digit(as_image(counts)) for counts in digits]
    found = np.array([p is not None for p in prepared])
    inputs = np.stack([p.image if p is not None else np.zeros((28, 28), np.float32) for p in prepared])
    return inputs, found


def read(recognizer: Recognizer, inputs: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The digit read for each prepared input; -1 where no ink was found."""
    return np.where(found, recognizer.probabilities(inputs).argmax(1), -1)


def score(model: str, tta: bool, source: str, predicted: np.ndarray, labels: np.ndarray) -> Row:
    right = int((predicted == labels).sum())
    low, high = wilson_interval(right, len(labels))
    wrong = predicted != labels
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], 1), axis=0, return_counts=True)
    common = sorted(zip(counts.tolist(), pairs.tolist(), strict=True), reverse=True)[:3]
    confusions = ", ".join(f"{t}->{p if p >= 0 else '?'} x{c}" for c, (t, p) in common)
    accuracy, errors = right / len(labels), len(labels) - right
    return Row(model, tta, source, len(labels), accuracy, low, high, errors, confusions)


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    uci, uci_labels = uci_digits()
    mnist = data.load(data.locate(args.data_dir, log=lambda m: print(m, file=sys.stderr)))
    control_labels = mnist.test.labels[: args.control]
    sets = [
        ("UCI (43 writers)", prepare(uci), uci_labels),
        ("MNIST via UCI format", prepare(mnist_as_uci(mnist.test.images[: args.control])), control_labels),
    ]
    rows = []
    for name in args.model or ["reference"]:
        for tta in sorted({False, args.tta}):
            recognizer = load_model(name, tta=tta)
            for source, (inputs, found), labels in sets:
                rows.append(score(name, tta, source, read(recognizer, inputs, found), labels))
            print(f"{name}{' --tta' if tta else ''}: {rows[-2].accuracy:.2%} UCI", file=sys.stderr)
    meta = {"machine": cpu_name(), "uci_digits": len(uci_labels), "control_digits": len(control_labels)}
    return rows, meta


def format_table(rows: list[Row]) -> str:
    w = max([len("model"), *(len(r.model) for r in rows)]) + 2  # long model paths stay apart
    lines = [
        f"{'model':<{w}}{'tta':<5}{'digits from':<22}{'n':>6}{'accuracy':>10}{'95% interval':>18}"
        f"{'errors':>8}  commonest mistakes"
    ]
    for r in rows:
        interval = f"{r.low:.2%}-{r.high:.2%}"
        lines.append(
            f"{r.model:<{w}}{'yes' if r.tta else 'no':<5}{r.digits_from:<22}{r.digits:>6}{r.accuracy:>10.2%}"
            f"{interval:>18}{r.errors:>8}  {r.confusions}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="shipped name or model file; repeatable")
    parser.add_argument("--tta", action="store_true", help="also read with test-time augmentation")
    parser.add_argument("--control", type=int, default=3000, help="MNIST test digits in the control")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rows, meta = run(args)
    print(format_table(rows))
    if args.json_out:
        report = {**meta, "rows": [asdict(r) for r in rows]}
        write_atomic(args.json_out, json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
