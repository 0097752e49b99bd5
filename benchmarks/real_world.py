"""Accuracy on MNIST test digits drawn as people's images, next to the model's plain MNIST accuracy.

    .venv/bin/python benchmarks/real_world.py                        # all 10,000, the shipped model
    .venv/bin/python benchmarks/real_world.py -n 500 --model runs/reference/model.safetensors
    .venv/bin/python benchmarks/real_world.py --workers 2 --json-out real_world.json

Every kind of mnist_digits.render (large, inverted, off-centre, noisy, unevenly lit, JPEG, a
transparent canvas, inside a form's box and written to its edges) is made from each of the
first N test digits, which the model never trained on, and goes through the same
preprocessing as `mnist-digits predict`. "number" puts them side
by side four at a time and reads them with --multi's segmentation; a number whose digits are not
all found counts every digit of it as wrong. Image i of a kind is drawn with seed (seed, i), so
results do not depend on --workers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py

from mnist_digits import data, render
from mnist_digits.files import write_atomic
from mnist_digits.predict import Recognizer, load_model
from mnist_digits.preprocess import prepare_digit, segment_digits
from mnist_digits.pretrained import DEFAULT_MODEL

DIGITS_PER_NUMBER = 4


@dataclass
class Row:
    kind: str
    digits: int  # test digits read
    accuracy: float  # share read right
    gap: float  # accuracy minus plain MNIST accuracy on the same digits, percentage points
    no_digit: int  # inputs where no ink was found (counted wrong)
    uncertain: int  # answers below the threshold
    ms_per_image: float  # rendering excluded: opening the ink, cleaning, scaling, centring


def prepare_chunk(task: tuple[str, int, np.ndarray, int]) -> tuple[list[np.ndarray | None], float]:
    """Render and preprocess digits first.. of one kind: the model's inputs (None: no ink), seconds."""
    kind, first, digits, seed = task
    inputs, seconds = [], 0.0
    for offset, digit in enumerate(digits):
        rng = np.random.default_rng([seed, first + offset])
        image = render.KINDS[kind](digit, rng)
        start = time.perf_counter()
        prepared = prepare_digit(image)
        seconds += time.perf_counter() - start
        inputs.append(None if prepared is None else prepared.image)
    return inputs, seconds


def segment_chunk(task: tuple[int, np.ndarray, int]) -> tuple[list[list[np.ndarray]], float]:
    """Numbers of DIGITS_PER_NUMBER digits rendered side by side, segmented: their inputs, seconds."""
    first, numbers, seed = task
    found, seconds = [], 0.0
    for offset, digits in enumerate(numbers):
        image = render.render_number(digits, np.random.default_rng([seed, first + offset]))
        start = time.perf_counter()
        found.append([s.image for s in segment_digits(image)])
        seconds += time.perf_counter() - start
    return found, seconds


def chunks(count: int, size: int) -> list[tuple[int, int]]:
    return [(first, min(first + size, count)) for first in range(0, count, size)]


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    mnist = data.load(data.locate(args.data_dir, log=lambda m: print(m, file=sys.stderr)))
    images, labels = mnist.test.images[: args.count], mnist.test.labels[: args.count]
    # The network's accuracy, not a chosen runtime's, and in fp32 on every CPU (as outside_mnist.py).
    recognizer = load_model(args.model, runtime="torch", precision="fp32")
    threshold = recognizer.threshold

    def row(kind: str, probs: np.ndarray, found: np.ndarray, seconds: float) -> Row:
        predicted = np.where(found, probs.argmax(1), -1)
        accuracy = float((predicted == labels[: len(predicted)]).mean())
        uncertain = int(((probs.max(1) < threshold) & found).sum())
        return Row(
            kind, len(predicted), accuracy, 0.0, int((~found).sum()), uncertain, 1000 * seconds / len(found)
        )

    plain = recognizer.probabilities(images.astype(np.float32) / 255.0)
    rows = [row("mnist (as is)", plain, np.ones(len(labels), bool), 0.0)]
    kinds = ["mnist 28x28", *render.KINDS] if not args.kinds else args.kinds
    with ProcessPoolExecutor(args.workers) as pool:
        for kind in kinds:
            if kind == "number":
                continue
            start = time.perf_counter()
            if kind == "mnist 28x28":  # MNIST's own images through the preprocessing: must stay as good
                prepared = [prepare_digit(digit) for digit in images]
                inputs = [None if p is None else p.image for p in prepared]
                seconds = time.perf_counter() - start
            else:
                tasks = [(kind, a, images[a:b], args.seed) for a, b in chunks(len(images), 250)]
                parts = list(pool.map(prepare_chunk, tasks))
                inputs = [x for part, _ in parts for x in part]
                seconds = sum(s for _, s in parts)
            found = np.array([x is not None for x in inputs])
            stacked = np.stack([x if x is not None else np.zeros((28, 28), np.float32) for x in inputs])
            rows.append(row(kind, recognizer.probabilities(stacked), found, seconds))
            print(f"{kind}: {rows[-1].accuracy:.2%} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        if not args.kinds or "number" in args.kinds:
            rows.append(read_numbers(pool, recognizer, images, labels, args.seed, threshold))
    for r in rows:
        r.gap = 100 * (r.accuracy - rows[0].accuracy)
    meta = {
        "model": str(recognizer.path),
        "model_test_accuracy": recognizer.metadata.get("test_accuracy"),
        "digits": len(labels),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "threshold": threshold,
        "seed": args.seed,
    }
    return rows, meta


def read_numbers(
    pool: ProcessPoolExecutor,
    recognizer: Recognizer,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    threshold: float,
) -> Row:
    usable = len(labels) - len(labels) % DIGITS_PER_NUMBER
    numbers = images[:usable].reshape(-1, DIGITS_PER_NUMBER, 28, 28)
    start = time.perf_counter()
    tasks = [(a, numbers[a:b], seed) for a, b in chunks(len(numbers), 100)]
    parts = list(pool.map(segment_chunk, tasks))
    segments = [found for part, _ in parts for found in part]
    seconds = sum(s for _, s in parts)
    right = uncertain = missed = 0
    for index, found in enumerate(segments):
        truth = labels[index * DIGITS_PER_NUMBER : (index + 1) * DIGITS_PER_NUMBER]
        if len(found) != DIGITS_PER_NUMBER:
            missed += 1
            continue
        probs = recognizer.probabilities(np.stack(found))
        right += int((probs.argmax(1) == truth).sum())
        uncertain += int((probs.max(1) < threshold).sum())
    print(f"number: {right / usable:.2%} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    ms_per_image = 1000 * seconds / len(numbers)
    return Row(
        "number (4 digits)", usable, right / usable, 0.0, missed * DIGITS_PER_NUMBER, uncertain, ms_per_image
    )


def format_table(rows: list[Row], meta: dict) -> str:
    lines = [
        f"model {meta['model']} on {meta['digits']:,} MNIST test digits; {meta['machine']}, "
        f"{meta['workers']} worker(s)",
        "",
        f"{'kind':<20}{'digits':>8}{'accuracy':>10}{'vs MNIST':>10}"
        f"{'no digit':>10}{'uncertain':>11}{'ms/image':>10}",
    ]
    for r in rows:
        gap = "" if r is rows[0] else f"{r.gap:+.2f} pp"
        ms = f"{r.ms_per_image:.1f}" if r.ms_per_image else "-"
        lines.append(
            f"{r.kind:<20}{r.digits:>8,}{r.accuracy:>10.2%}{gap:>10}{r.no_digit:>10}{r.uncertain:>11}{ms:>10}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=10_000, help="test digits to use (default: all)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"shipped model name or .safetensors file (default: {DEFAULT_MODEL}, the package's default)",
    )
    parser.add_argument(
        "--kinds", nargs="+", choices=["mnist 28x28", *render.KINDS, "number"], help="only these kinds"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes rendering and preprocessing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the renderings")
    parser.add_argument("--data-dir", type=Path, help="MNIST directory (default: as `mnist-digits data`)")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    rows, meta = run(args)
    print(format_table(rows, meta))
    if args.json_out:
        report = {**meta, "rows": [asdict(r) for r in rows]}
        write_atomic(args.json_out, (json.dumps(report, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
