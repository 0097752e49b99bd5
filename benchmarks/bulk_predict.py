"""Images/s of `Recognizer.predict` over a folder of image files, serial and with a worker pool.

    .venv/bin/python benchmarks/bulk_predict.py                 # 10,000 files of each kind
    .venv/bin/python benchmarks/bulk_predict.py --files 2000 --json-out bulk.json
    mkdir /tmp/before && git archive HEAD src | tar -x -C /tmp/before   # the last commit
    .venv/bin/python benchmarks/bulk_predict.py --files 2000 --baseline /tmp/before/src

Writes N synthetic digit files of each kind to a temporary folder: 280x280 RGB PNG drawings
(black strokes on white, 21 px wide, as the drawing page sends them) and 16x16 grayscale scans
whose digit fills the frame. Then it times `predict` over each folder's paths with workers=1
(every file decoded and preprocessed in this process) and with the automatic setting (a pool,
one worker per core), checks that both give the same answers, and prints images/s, the CPU
time per image (the pool's workers included) and the ratios. --baseline also times the package
in another source folder, in a process of its own, as that version ran by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py
from PIL import Image, ImageDraw

from mnist_digits.predict import Prediction, Recognizer, default_workers, load_model

Stroke = list[tuple[float, float]]  # points in the unit square, (x, y), y down


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, steps: int = 24) -> Stroke:
    """Points along an ellipse from `start` to `stop` degrees (0 = right, 90 = down)."""
    angles = np.radians(np.linspace(start, stop, steps))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Each digit as pen strokes in the unit square: enough of its shape for the preprocessing to do
# its real work (polarity, paper, blobs, box, centring), which is what is timed.
STROKES: dict[int, list[Stroke]] = {
    0: [_arc(0.5, 0.5, 0.3, 0.42, 0, 360)],
    1: [[(0.4, 0.25), (0.55, 0.1), (0.55, 0.9)]],
    2: [[*_arc(0.5, 0.32, 0.28, 0.22, 180, 380), (0.22, 0.9), (0.8, 0.9)]],
    3: [_arc(0.48, 0.3, 0.26, 0.2, 200, 450), _arc(0.48, 0.69, 0.3, 0.21, 270, 520)],
    4: [[(0.6, 0.1), (0.2, 0.65), (0.85, 0.65)], [(0.65, 0.35), (0.65, 0.9)]],
    5: [[(0.78, 0.1), (0.3, 0.1), (0.26, 0.45)], _arc(0.5, 0.66, 0.3, 0.24, 230, 500)],
    6: [_arc(0.52, 0.66, 0.27, 0.24, 0, 360), [(0.25, 0.62), (0.4, 0.25), (0.65, 0.08)]],
    7: [[(0.2, 0.12), (0.8, 0.12), (0.42, 0.9)]],
    8: [_arc(0.5, 0.3, 0.22, 0.2, 0, 360), _arc(0.5, 0.7, 0.27, 0.21, 0, 360)],
    9: [_arc(0.48, 0.33, 0.25, 0.22, 0, 360), [(0.73, 0.35), (0.68, 0.9)]],
}


def _placed(digit: int, rng: np.random.Generator, size: float, margin: float) -> list[Stroke]:
    """The digit's strokes jittered (scale, slant, shift) and mapped to pixels of a `size` square."""
    scale = rng.uniform(0.85, 1.0) * (1 - 2 * margin)
    slant = rng.uniform(-0.15, 0.15)
    dx, dy = rng.uniform(-0.05, 0.05, 2) * (1 - scale)
    return [
        [
            (size * (0.5 + dx + scale * (x - 0.5 + slant * (0.5 - y))), size * (0.5 + dy + scale * (y - 0.5)))
            for x, y in stroke
        ]
        for stroke in STROKES[digit]
    ]


def drawing(digit: int, rng: np.random.Generator) -> Image.Image:
    """280x280 RGB, black ink 21 px wide on white: what the drawing page sends."""
    image = Image.new("RGB", (280, 280), "white")
    pen = ImageDraw.Draw(image)
    for stroke in _placed(digit, rng, 280, 0.1):
        pen.line(stroke, fill="black", width=21, joint="curve")
    return image


def scan(digit: int, rng: np.random.Generator) -> Image.Image:
    """16x16 grayscale, dark ink filling the frame on light paper, with a little sensor noise."""
    large = Image.new("L", (128, 128), 255)
    pen = ImageDraw.Draw(large)
    for stroke in _placed(digit, rng, 128, 0.02):
        pen.line(stroke, fill=0, width=14, joint="curve")
    small = np.asarray(large.resize((16, 16), Image.Resampling.BOX), dtype=np.float32)
    paper = rng.uniform(200, 245)
    values = small * (paper / 255) + rng.normal(0, 4, small.shape)
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))


KINDS: dict[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "drawing 280x280 PNG": drawing,
    "scan 16x16 PNG": scan,
}


def _write_chunk(task: tuple[str, str, int, int]) -> None:
    kind, folder, first, count = task
    for i in range(first, first + count):
        rng = np.random.default_rng((2026, i))
        KINDS[kind](i % 10, rng).save(Path(folder) / f"{i:05d}.png")


def write_files(kind: str, folder: Path, count: int, workers: int) -> list[Path]:
    """`count` files of one kind, written in parallel; their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 500
    tasks = [(kind, str(folder), first, min(chunk, count - first)) for first in range(0, count, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_chunk, tasks))
    return [folder / f"{i:05d}.png" for i in range(count)]


@dataclass
class Row:
    kind: str
    files: int
    code: str  # "this": the working tree; else the baseline's source folder
    workers: int  # 1: serial; else the pool's processes (a baseline runs as it did, "0")
    seconds: float  # wall time of predict over every file
    images_per_second: float
    cpu_ms_per_image: float  # CPU time of this process and its workers: what a shared machine spends


def timed(recognizer: Recognizer, paths: list[Path], workers: int) -> tuple[float, float, list[Prediction]]:
    """Wall seconds and CPU seconds (workers' included) of one predict over `paths`, its answers."""
    recognizer.workers = workers
    cpu, start = _cpu_seconds(), time.perf_counter()
    predictions = recognizer.predict(paths)
    return time.perf_counter() - start, _cpu_seconds() - cpu, predictions


def _cpu_seconds() -> float:
    """This process's CPU time and that of its ended children (a pool's workers, once it is shut down)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# The baseline's predict, in a process of its own that imports the package from another folder.
BASELINE = """
import inspect, sys, time
from pathlib import Path
from mnist_digits.predict import load_model
# On PyTorch, as run() measures it; a version without runtimes runs nothing else.
torch_only = {"runtime": "torch"} if "runtime" in inspect.signature(load_model).parameters else {}
recognizer = load_model(sys.argv[1], **torch_only)
paths = [Path(line) for line in sys.stdin.read().splitlines()]
recognizer.predict(paths[:64])
cpu, start = time.process_time(), time.perf_counter()
recognizer.predict(paths)
print(time.perf_counter() - start, time.process_time() - cpu)
"""


def timed_baseline(source: Path, model: str, paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds of predict over `paths` with the package in `source` (its src folder)."""
    done = subprocess.run(
        [sys.executable, "-c", BASELINE, model],
        input="\n".join(map(str, paths)),
        env={**os.environ, "PYTHONPATH": str(source.resolve())},
        cwd=tempfile.gettempdir(),  # not this checkout, whose package could be found first
        capture_output=True,
        text=True,
        check=True,
    )
    wall, cpu = map(float, done.stdout.split())
    return wall, cpu


def same(a: list[Prediction], b: list[Prediction]) -> bool:
    """The same digits and errors, and probabilities within 1e-6."""
    return all(
        p.digit == q.digit
        and p.error == q.error
        and (p.probabilities is None) == (q.probabilities is None)
        and (p.probabilities is None or np.allclose(p.probabilities, q.probabilities, rtol=0, atol=1e-6))
        for p, q in zip(a, b, strict=True)
    )


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    # PyTorch, not the runtime `auto` would choose here: this measures reading the files, and its
    # numbers stay comparable with earlier ones and with the baseline's
    recognizer = load_model(args.model, runtime="torch")
    auto = default_workers() if args.workers is None else args.workers
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulk-predict-") as tmp:
        for index, kind in enumerate(KINDS):
            paths = write_files(kind, (args.keep_files or Path(tmp)) / f"kind{index}", args.files, auto)
            count = len(paths)
            if args.baseline:
                wall, cpu = timed_baseline(args.baseline, args.model, paths)
                rows.append(Row(kind, count, str(args.baseline), 0, wall, count / wall, cpu / count * 1e3))
            recognizer.predict(paths[:64])  # warm up: imports, the network's first pass
            serial_wall, serial_cpu, serial = timed(recognizer, paths, 1)
            pool_wall, pool_cpu, pooled = timed(recognizer, paths, auto)
            if not same(serial, pooled):
                raise SystemExit(f"{kind}: the pool's answers differ from the serial ones")
            for workers, wall, cpu in ((1, serial_wall, serial_cpu), (auto, pool_wall, pool_cpu)):
                rows.append(Row(kind, count, "this", workers, wall, count / wall, cpu / count * 1e3))
    machine = {
        "cpu": cpu_name(),
        "cores": default_workers(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return rows, machine


def format_table(rows: list[Row], machine: dict) -> str:
    """One line per measurement; ratios of images/s against this code's serial run and the baseline."""
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads)",
        f"{'kind':<20} {'files':>6} {'code':<10} {'workers':>7} {'seconds':>8} {'images/s':>9} "
        f"{'CPU ms/image':>12} {'vs serial':>9} {'vs baseline':>11}",
    ]
    for row in rows:
        serial = next(r for r in rows if r.kind == row.kind and r.code == "this" and r.workers == 1)
        baseline = next((r for r in rows if r.kind == row.kind and r.code != "this"), None)
        code = "this" if row.code == "this" else "baseline"
        versus = f"{row.images_per_second / baseline.images_per_second:.2f}x" if baseline else "-"
        lines.append(
            f"{row.kind:<20} {row.files:>6} {code:<10} {row.workers or '-':>7} {row.seconds:>8.2f} "
            f"{row.images_per_second:>9.0f} {row.cpu_ms_per_image:>12.2f} "
            f"{row.images_per_second / serial.images_per_second:>8.2f}x {versus:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000, help="files of each kind (default 10,000)")
    parser.add_argument("--workers", type=int, help="the pool's processes (default: one per core)")
    parser.add_argument("--model", default="best", help="a shipped model's name or a model file")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also time predict with the package in this folder (another revision's src/), as it ran",
    )
    parser.add_argument("--keep-files", type=Path, metavar="DIR", help="write the files here, and keep them")
    parser.add_argument("--json-out", type=Path, help="also write the rows and the machine as JSON")
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("--files must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.baseline and not (args.baseline / "mnist_digits").is_dir():
        parser.error(f"--baseline {args.baseline}: no mnist_digits package in it; give a src/ folder")
    rows, machine = run(args)
    print(format_table(rows, machine))
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
