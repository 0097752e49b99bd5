"""Accuracy on handwritten digits from outside MNIST: the UCI optical-recognition digits, and
MNIST's held-out validation digits made to look like other people's (the stress sets).

    .venv/bin/pip install scikit-learn scikit-image   # the UCI digits (nothing is downloaded); skeletons
    .venv/bin/python benchmarks/outside_mnist.py                 # every shipped model
    .venv/bin/python benchmarks/outside_mnist.py --model best --tta --record

The UCI set (Alpaydin and Kaynak, 1998; `sklearn.datasets.load_digits`) holds 1,797 digits
written by 43 people who are not among MNIST's writers. They were scanned, normalized to
32x32 bitmaps and stored as 8x8 blocks counting the inked pixels of each 4x4 square (0-16).
Each one is scaled back up to 32x32, given a margin and read like anyone's image: through
`mnist-digits predict`'s preprocessing, then the model.

That format loses most of the detail, so the table has a control row: MNIST's own test
digits put through the same 32x32 -> 8x8 -> back journey. The gap between the two rows is
what the new writers cost; the gap between the control and plain MNIST is what the format
costs. 43 writers are few: every row carries its Wilson 95% interval.

The stress rows (mnist_digits.stress) are made from each model's own held-out validation
digits, the images `evaluate --split val` reads, never the test set: thin and thick strokes,
binarized, slanted, 16x16 frame-filling and the 8x8 UCI format, each read through the
preprocessing, beside the same digits as they are (`validation`) and unchanged through the
preprocessing (`stress: plain`). They are what to choose training settings by. An ensemble
whose members held out different digits is read on the digits all of them held out (590 for
`robust`'s two 10% splits, so its intervals are wide); one with too few such digits (the
ten-network `ensemble`: 1) has no stress rows.

`--members` adds a row group for each network of an ensemble on its own (`robust[1]`,
`robust[2]`), each with its own held-out digits (3,000 of them, narrower intervals than the
pair's 590). `--mistakes DIR` writes one sheet per model and stress
kind, DIR/MODEL-KIND.png: each digit read wrong as it is, as stressed, and as the network saw
it after the preprocessing, with what it was and what was read:

    .venv/bin/python benchmarks/outside_mnist.py --model robust --members --mistakes mistakes/

`--preprocess FIELD=VALUE` (repeatable) reads every row but `validation` with another
mnist_digits.preprocess.PreprocessConfig, to choose the preprocessing by the same rows:

    .venv/bin/python benchmarks/outside_mnist.py --model best --preprocess thin_thick_strokes=true
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py
from PIL import Image, ImageDraw

from mnist_digits import data, stress
from mnist_digits.checkpoint import update_metadata
from mnist_digits.ensemble import members
from mnist_digits.errors import MnistDigitsError
from mnist_digits.files import write_atomic
from mnist_digits.predict import Recognizer, load_model
from mnist_digits.preprocess import DEFAULT_CONFIG, PreprocessConfig
from mnist_digits.pretrained import available, resolve
from mnist_digits.recipes import (
    MixedSplits,
    SettingError,
    TrainConfig,
    held_out,
    held_out_by_all,
    with_settings,
)
from mnist_digits.report import wilson_interval
from mnist_digits.stress import mnist_as_uci
from mnist_digits.stress import uci_as_image as as_image

UCI = "UCI (43 writers)"
CONTROL = "MNIST via UCI format"
VALIDATION = "validation"  # the model's held-out digits as they are, as `evaluate --split val` reads them
STRESS = "stress: "  # prefix of the stress rows' source


@dataclass
class Row:
    model: str
    tta: bool
    digits_from: str  # UCI, the MNIST control, the validation digits, or "stress: KIND"
    digits: int
    accuracy: float
    low: float  # Wilson 95% interval
    high: float
    errors: int
    confusions: str  # the commonest mistakes, "true->read x count"
    vs_validation: float | None = None  # a stress row's accuracy minus the validation row's


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits as (N, 8, 8) counts 0-16, and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("This benchmark reads the UCI digits shipped with scikit-learn: pip install scikit-learn")
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def prepare(digits: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """Each 8x8 input scaled up and through the preprocessing: model inputs (N, 28, 28), and
    whether ink was found in each."""
    return stress.prepare([as_image(counts) for counts in digits], config)


def read(recognizer: Recognizer, inputs: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The digit read for each prepared input; -1 where no ink was found."""
    return np.where(found, recognizer.probabilities(inputs).argmax(1), -1)


def score(
    model: str,
    tta: bool,
    source: str,
    predicted: np.ndarray,
    labels: np.ndarray,
    baseline: float | None = None,
) -> Row:
    right = int((predicted == labels).sum())
    low, high = wilson_interval(right, len(labels))
    wrong = predicted != labels
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], 1), axis=0, return_counts=True)
    common = sorted(zip(counts.tolist(), pairs.tolist(), strict=True), reverse=True)[:3]
    confusions = ", ".join(f"{t}->{p if p >= 0 else '?'} x{c}" for c, (t, p) in common)
    accuracy, errors = right / len(labels), len(labels) - right
    versus = None if baseline is None else accuracy - baseline
    return Row(model, tta, source, len(labels), accuracy, low, high, errors, confusions, versus)


MIN_SHARED = 300  # an ensemble's stress rows need this many digits that none of its networks saw


def validation_split(recognizer: Recognizer, mnist: data.Mnist, digits: int) -> tuple[data.Split, str]:
    """The first `digits` (0: all) of the images the model held out, and which split they are. An
    ensemble whose networks held out different ones gets the digits all of them held out (about
    1% of the training images for two 10% splits); MnistDigitsError when there are fewer than
    MIN_SHARED."""
    networks = recognizer.metadata.get("members") or [recognizer.metadata]  # as LoadedModel.members_metadata
    try:
        split = held_out(networks, mnist)
        config = TrainConfig.from_dict(networks[0]["train_config"])
        which = f"val_fraction {config.val_fraction}, split seed {config.validation_seed}"
    except MixedSplits as e:
        split, which = held_out_by_all(networks, mnist)
        if len(split.labels) < MIN_SHARED:
            raise MnistDigitsError(
                f"{e.args[0].split(', so ')[0]}, and all of them held out only {len(split.labels)} "
                f"of the training images (fewer than {MIN_SHARED})"
            ) from None
    chosen = slice(None) if digits == 0 else slice(digits)
    return data.Split(split.images[chosen], split.labels[chosen]), which


def stress_rows(
    name: str,
    tta: bool,
    recognizer: Recognizer,
    split: data.Split,
    prepared: list[stress.StressSet],
    mistakes: Path | None = None,
) -> list[Row]:
    """The validation row (the digits as they are, no preprocessing) and one row per stress kind;
    with `mistakes`, a sheet of each kind's mistakes there."""
    plain = recognizer.probabilities(split.images.astype(np.float32) / 255).argmax(1)
    rows = [score(name, tta, VALIDATION, plain, split.labels.astype(np.int64))]
    for kind in prepared:
        predicted = read(recognizer, kind.inputs, kind.found)
        rows.append(score(name, tta, STRESS + kind.kind, predicted, kind.labels, rows[0].accuracy))
        if mistakes is not None:
            sheet = mistakes_sheet(split.images, kind, predicted)
            safe = name.replace("/", "_").replace(" ", "_")
            sheet.save(mistakes / f"{safe}{'-tta' if tta else ''}-{kind.kind}.png")
    return rows


SHEET_COLUMNS = 4  # mistakes a row
PANEL = 84  # px: each image 3x its 28 px
CAPTION = 16  # px below each mistake for "#index: true -> read"


def mistakes_sheet(digits: np.ndarray, kind: stress.StressSet, predicted: np.ndarray) -> Image.Image:
    """Every digit of `kind` read wrong: as it is, as stressed, and the network's input, side by side
    (each enlarged to PANEL px), captioned with its index in the split, its label and what was read."""
    wrong = np.flatnonzero(predicted != kind.labels)
    cell_width, cell_height = 3 * PANEL + 8, PANEL + CAPTION
    rows = max(1, -(-len(wrong) // SHEET_COLUMNS))
    sheet = Image.new("L", (SHEET_COLUMNS * cell_width, rows * cell_height), 48)
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(wrong):
        left, top = (k % SHEET_COLUMNS) * cell_width, (k // SHEET_COLUMNS) * cell_height
        network_input = (kind.inputs[i] * 255).round().clip(0, 255).astype(np.uint8)
        for m, image in enumerate((digits[i], kind.images[i], network_input)):
            panel = Image.fromarray(np.asarray(image)).resize((PANEL, PANEL), Image.Resampling.NEAREST)
            sheet.paste(panel, (left + m * PANEL, top))
        read_as = predicted[i] if predicted[i] >= 0 else "no ink"
        draw.text((left + 2, top + PANEL + 2), f"#{i}: {kind.labels[i]} read as {read_as}", fill=255)
    return sheet


def each_network(name: str, recognizer: Recognizer) -> list[tuple[str, Recognizer]]:
    """Each network of an ensemble alone, as NAME[k] (from 1), with its own metadata; none for one network."""
    networks = members(recognizer.model) if isinstance(recognizer.model, torch.nn.Module) else []
    metadata = recognizer.metadata.get("members") or []
    if len(networks) < 2 or len(metadata) != len(networks):
        return []
    return [
        (f"{name}[{k}]", Recognizer(network, config=recognizer.config, metadata=meta))
        for k, (network, meta) in enumerate(zip(networks, metadata, strict=True), 1)
    ]


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    uci, uci_labels = uci_digits()
    mnist = data.load(data.locate(args.data_dir, log=lambda m: print(m, file=sys.stderr)))
    control_labels = mnist.test.labels[: args.control]
    config = args.preprocess_config
    sets = [
        (UCI, prepare(uci, config), uci_labels),
        (CONTROL, prepare(mnist_as_uci(mnist.test.images[: args.control]), config), control_labels),
    ]
    rows, notes, splits = [], [], {}
    prepared: dict[str, list[stress.StressSet]] = {}  # by split: models that share one share its images
    for name in args.model or list(available()):
        for tta in sorted({False, args.tta}):
            # The network's own answers, the same on any CPU (bf16 rounds them).
            recognizer = load_model(name, tta=tta, runtime="torch", precision="fp32")
            readers = [(name, recognizer)]
            if args.members and not tta:
                readers += each_network(name, recognizer)
            for label, reader in readers:
                for source, (inputs, found), labels in sets:
                    rows.append(score(label, tta, source, read(reader, inputs, found), labels))
                print(f"{label}{' --tta' if tta else ''}: {rows[-2].accuracy:.2%} UCI", file=sys.stderr)
                if args.no_stress:
                    continue
                try:
                    split, which = validation_split(reader, mnist, args.stress_digits)
                except MnistDigitsError as e:
                    if not tta:
                        notes.append(f"{label}: no validation or stress rows: {e}")
                    continue
                if which not in prepared:
                    digits = f"{len(split.labels):,} digits"
                    print(f"preparing the stress sets of {which} ({digits})", file=sys.stderr)
                    prepared[which] = stress.stress_sets(split, seed=args.stress_seed, config=config)
                splits[label] = which
                rows += stress_rows(label, tta, reader, split, prepared[which], args.mistakes)
    meta = {
        "machine": cpu_name(),
        "date": date.today().isoformat(),
        "uci_digits": len(uci_labels),
        "control_digits": len(control_labels),
        "stress_seed": args.stress_seed,
        "preprocess": {k: v for k, v in asdict(config).items() if v != getattr(DEFAULT_CONFIG, k)},
        "stress_kinds": stress.KINDS,
        "validation_splits": splits,
        "notes": notes,
    }
    return rows, meta


def recorded(row: Row, meta: dict) -> dict:
    """What a model file keeps of its UCI result."""
    return {
        "accuracy": row.accuracy,
        "errors": row.errors,
        "digits": row.digits,
        "interval95": [row.low, row.high],
        "measured": date.today().isoformat(),
        "machine": meta["machine"],
        "how": "benchmarks/outside_mnist.py: 8x8 digits scaled to 32x32 with a margin, then predict's steps",
    }


def format_table(rows: list[Row]) -> str:
    w = max([len("model"), *(len(r.model) for r in rows)]) + 2  # long model paths stay apart
    lines = [
        f"{'model':<{w}}{'tta':<5}{'digits from':<22}{'n':>6}{'accuracy':>10}{'95% interval':>18}"
        f"{'vs val':>8}{'errors':>8}  commonest mistakes"
    ]
    for r in rows:
        interval = f"{r.low:.2%}-{r.high:.2%}"
        versus = "" if r.vs_validation is None else f"{100 * r.vs_validation:+.2f}"
        lines.append(
            f"{r.model:<{w}}{'yes' if r.tta else 'no':<5}{r.digits_from:<22}{r.digits:>6}{r.accuracy:>10.2%}"
            f"{interval:>18}{versus:>8}{r.errors:>8}  {r.confusions}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="shipped name or model file; repeatable")
    parser.add_argument("--tta", action="store_true", help="also read with test-time augmentation")
    parser.add_argument("--control", type=int, default=3000, help="MNIST test digits in the control")
    parser.add_argument(
        "--stress-digits",
        type=int,
        default=3000,
        help="held-out validation digits per stress kind (0: all of them; a 10%% split holds 6,000)",
    )
    parser.add_argument("--stress-seed", type=int, default=stress.SEED, help="seed of the stress sets")
    parser.add_argument("--no-stress", action="store_true", help="only the UCI and control rows")
    parser.add_argument(
        "--members", action="store_true", help="also read each network of an ensemble alone, as NAME[k]"
    )
    parser.add_argument(
        "--mistakes", type=Path, metavar="DIR", help="write a sheet of each stress kind's mistakes here"
    )
    parser.add_argument(
        "--preprocess",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="read the images with this PreprocessConfig field changed (repeatable): smooth_binary=false",
    )
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--record",
        action="store_true",
        help="store each model's UCI accuracy (without TTA) in its file, for `mnist-digits models`",
    )
    args = parser.parse_args()
    if args.stress_digits < 0 or args.control < 1:
        parser.error("--stress-digits takes 0 (all) or more digits, --control 1 or more")
    try:
        args.preprocess_config = with_settings(DEFAULT_CONFIG, args.preprocess)
    except SettingError as e:
        parser.error(f"--preprocess: {e}")
    if args.record and args.preprocess:
        parser.error("--record stores what the default preprocessing reads; leave out --preprocess")
    if args.mistakes is not None:
        if args.no_stress:
            parser.error("--mistakes draws the stress rows' mistakes; leave out --no-stress")
        args.mistakes.mkdir(parents=True, exist_ok=True)
    rows, meta = run(args)
    print(format_table(rows))
    for name, which in meta["validation_splits"].items():
        print(f"{name}: validation and stress rows from its held-out digits ({which})")
    for note in meta["notes"]:
        print(note)
    changed = ", ".join(f"{k}={v}" for k, v in meta["preprocess"].items()) or "the defaults"
    print(f"preprocessing: {changed}")
    print(f"stress seed {meta['stress_seed']}; {meta['machine']}; {meta['date']}")
    if args.record:
        for row in rows:
            if row.digits_from == UCI and not row.tta:
                update_metadata(resolve(row.model), {"outside_mnist": {"uci_digits": recorded(row, meta)}})
    if args.json_out:
        report = {**meta, "rows": [asdict(r) for r in rows]}
        write_atomic(args.json_out, json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
