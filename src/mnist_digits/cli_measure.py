"""The commands that look at data and models: `data`, `evaluate`, `report`, `models` and `export`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import data
from .cli_options import (
    EXIT_ERROR,
    EXIT_OK,
    FLAGS,
    Commands,
    _bars,
    _data_options,
    _device_option,
    _load_data,
    _model_option,
    _runtime_option,
    _stderr,
)
from .errors import MnistDigitsError
from .files import ensure_writable_dir

if TYPE_CHECKING:
    import torch

    from .checkpoint import LoadedModel
    from .device import Precision
    from .evaluate import Evaluation
    from .runtimes import Runtime


def add_data(commands: Commands, data_opts: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "data",
        parents=[data_opts],
        help="find, verify and fetch the MNIST files",
        description="Show where MNIST is, check every file (format and checksums), fetch it if asked.",
    )
    p.add_argument("--fetch", action="store_true", help="download into the user cache if missing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run_data)


def _problem(report: data.FileReport) -> str | None:
    """A file's problem, its advice in the command line's words."""
    return report.error.explain(**FLAGS) if report.error is not None else report.problem


def run_data(args: argparse.Namespace) -> int:
    directory = data.locate(
        args.data_dir, fetch=args.fetch, verify=not args.no_verify, progress=_bars(), log=_stderr
    )
    reports = data.inspect_dir(directory, verify=not args.no_verify)
    if args.json:
        rows = [
            {"name": r.name, "path": str(r.path) if r.path else None, "shape": r.shape, "sha256": r.sha256}
            | {"problem": _problem(r)}
            for r in reports
        ]
        print(json.dumps({"directory": str(directory), "files": rows}, indent=2))
    else:
        print(f"MNIST in {directory}")
        for r in reports:
            status = "ok, sha256 verified" if not args.no_verify else "ok, format checked"
            shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
            name = r.path.name if r.path else r.name
            print(f"  {name:<30} {shape:>12}  {_problem(r) or status}")
    return EXIT_OK if not data.first_problem(reports) else EXIT_ERROR


def add_evaluate(commands: Commands, data_opts: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "evaluate",
        parents=[data_opts],
        help="measure a model on the official test set",
        description="Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on "
        "the 10,000 test images; with --out, PNGs of the confusion matrix, the reliability "
        "diagram, the misclassified digits and the training curves.",
    )
    _model_option(p, tta=True)
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test: the official 10,000 test images (default); val: the validation images the "
        "model held out in training, for choosing between models, ensembles and --tta without "
        "reading the test set (an ensemble's members must share them: `train --split-seed`)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="write the PNG figures here")
    p.add_argument(
        "--record",
        action="store_true",
        help="store the test accuracy and loss in the model file, as `train` does (for a model "
        "trained with --no-test, once its settings are chosen; `join` copies it into ensembles)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _device_option(p, precision=True)
    # torch by default: evaluate measures the network's own answers, the accuracy `train` records,
    # --record stores and the docs quote; a runtime auto takes may move it by up to 0.03 points.
    _runtime_option(p, default="torch", why=": the network's own answers, as `train` records them")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import check_recordable, format_report

    if args.out:
        ensure_writable_dir(args.out)  # before the work, not after it
    if args.record:
        check_recordable(args.model, tta=args.tta, split=args.split)  # main names the flags
    loaded, mnist, images, evaluation, runtime = _evaluate(args, args.split)
    if args.record:
        from .checkpoint import update_metadata

        update_metadata(loaded.path, {"test_accuracy": evaluation.accuracy, "test_loss": evaluation.loss})
        _stderr(f"recorded the test accuracy in {loaded.path}")
    figures = []
    if args.out:
        from .plots import write_evaluation_figures

        which = "validation" if args.split == "val" else "test"
        history = loaded.members_metadata[0].get("history")  # an ensemble's first member
        figures = write_evaluation_figures(evaluation, images.images, args.out, which, history)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(loaded.path),
                    "split": args.split,
                    "runtime": runtime,
                    **evaluation.to_dict(),
                    "figures": [str(f) for f in figures],
                },
                indent=2,
            )
        )
        return EXIT_OK
    members = len(loaded.members_metadata)
    kind = f"an ensemble of {members} networks" if members > 1 else "one network"
    print(
        f"model: {loaded.path} ({kind}{', test-time augmentation' if args.tta else ''})\n"
        + (
            f"validation split: the {evaluation.count:,} training images in {mnist.directory} "
            "that the model held out\n"
            if args.split == "val"
            else f"test set: {mnist.directory} ({evaluation.count:,} images)\n"
        )
    )
    print(format_report(evaluation))
    for figure in figures:
        print(f"wrote {figure}")
    return EXIT_OK


def _evaluate(
    args: argparse.Namespace, split: str = "test"
) -> tuple[LoadedModel, data.Mnist, data.Split, Evaluation, str]:
    """--model (with --tta if asked) on the official test set, or with split "val" on the
    validation images it held out in training; returns the images it was measured on too, and the
    runtime's name."""
    from .device import pick_device, pick_precision
    from .ensemble import as_ensemble
    from .evaluate import evaluate_model
    from .pretrained import load
    from .recipes import MixedSplits, held_out
    from .runtimes import RuntimeNetwork, TorchRuntime, check_choice

    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    runtime_name = getattr(args, "runtime", "torch")  # `report` has no --runtime: PyTorch
    if getattr(args, "record", False) and runtime_name != "torch":
        raise MnistDigitsError("--record stores the PyTorch network's test accuracy: leave out --runtime.")
    check_choice(runtime_name, args.precision, args.tta)  # before the model and the data are read
    loaded = load(args.model, device)
    mnist = _load_data(args)
    try:
        images = held_out(loaded.members_metadata, mnist) if split == "val" else mnist.test
    except MixedSplits as e:
        raise MnistDigitsError(f"{e} On the command line: `train --ensemble N --split-seed S`.") from None
    network = as_ensemble(loaded.model, args.tta)
    runtime, said = _evaluation_runtime(
        args, runtime_name, network, loaded.path, device, precision, len(images.labels)
    )
    _stderr(f"Evaluating on {device} {said}.")
    if isinstance(runtime, TorchRuntime):
        evaluation = evaluate_model(network, images, device, bf16=runtime.bf16)
    else:  # ONNX Runtime, on the CPU
        evaluation = evaluate_model(RuntimeNetwork(runtime), images)
    return loaded, mnist, images, evaluation, runtime.name


def _evaluation_runtime(
    args: argparse.Namespace,
    name: str,
    network: torch.nn.Module,
    path: Path,
    device: torch.device,
    precision: Precision,
    count: int,
) -> tuple[Runtime, str]:
    """What runs the network over `count` images (the runtime `name`, checked against the other
    options by `_evaluate`), and the words that say so."""
    from .runtime_choice import AutoRuntime
    from .runtimes import OnnxRuntime, TorchRuntime, cached_onnx

    in_torch = TorchRuntime(network, device, precision.bf16)
    if name == "torch" or (name == "auto" and (args.tta or args.precision == "bf16")):
        return in_torch, f"in {precision.describe()}"  # nothing to choose for --tta or --precision bf16
    if name == "auto":
        auto = AutoRuntime(network, path, device, args.precision, in_torch)
        return auto.runtime(count), f"with {auto.describe()}"
    onnx = OnnxRuntime(cached_onnx(network, path, args.tta, int8=name == "onnx-int8"), name)
    return onnx, f"with runtime {name} (ONNX Runtime)"


def add_report(commands: Commands, data_opts: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "report",
        parents=[data_opts],
        help="write a self-contained HTML report of a model on the official test set",
        description="One HTML file (no external assets): accuracy with a 95% confidence interval, "
        "per-digit metrics, confusion matrix, calibration (reliability) plot, training curves and "
        "the misclassified digits, for a model or an ensemble.",
    )
    _model_option(p, tta=True)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("report.html"),
        metavar="FILE",
        help="the HTML file to write (default: report.html)",
    )
    _device_option(p, precision=True)
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from .report import format_accuracy, model_details, write_report

    loaded, mnist, _, evaluation, _ = _evaluate(args)
    title = f"mnist-digits: {args.model}" + (" with TTA" if args.tta else "")
    path = write_report(
        evaluation,
        mnist.test.images,
        args.output,
        title=title,
        histories=[m.get("history") or [] for m in loaded.members_metadata],
        details=model_details(loaded, evaluation, mnist.directory, args.tta),
    )
    print(f"{format_accuracy(evaluation)}\nwrote {path}")
    return EXIT_OK


def add_models(commands: Commands) -> None:
    p = commands.add_parser(
        "models",
        help="list the shipped models: size, accuracy, latency, and which command uses which",
        description="Each shipped model's networks, parameters, file size, accuracy on MNIST's test set "
        "and on digits by other writers (as recorded in the file), and its single-image latency on this "
        "CPU, measured now.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-latency", action="store_true", help="skip timing the models (faster)")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    from .pretrained import catalog

    models = catalog(measure_latency=not args.no_latency)
    if args.json:
        print(json.dumps([asdict(m) for m in models], indent=2))
        return EXIT_OK
    rows = [
        ("model", "networks", "parameters", "file", "MNIST test", "other writers", "latency", "default for")
    ]
    for m in models:
        rows.append(
            (
                m.name,
                str(m.networks),
                f"{m.parameters:,}",
                f"{m.file_bytes / 1e6:.1f} MB",
                _percent(m.test_accuracy),
                _percent(m.outside_accuracy),
                f"{m.latency_ms:.2f} ms" if m.latency_ms is not None else "-",
                m.default_for or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(w) if i in (0, 7) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print(
        "\nMNIST test: the official 10,000 test images. Other writers: the 1,797 UCI digits of 43 people "
        "outside MNIST\n(benchmarks/outside_mnist.py). Latency: one 28x28 image on one thread of this "
        "machine's CPU,\nmedian of 30, measured now."
    )
    return EXIT_OK


def _percent(share: float | None) -> str:
    return f"{share:.2%}" if share is not None else "not measured"


def add_export(commands: Commands) -> None:
    p = commands.add_parser(
        "export",
        parents=[_data_options(fetch=False)],
        help="export a model to ONNX (optionally int8)",
        description="Write the model as ONNX with a dynamic batch size and check its outputs against "
        "PyTorch; --int8 also writes a quantized copy. With MNIST on this machine the check uses test "
        "images, int8 is calibrated on training images and each file's test accuracy is printed; "
        "without it, generated digit-like images serve for both and accuracy is not measured (MNIST is "
        "never downloaded for this). Needs the [onnx] extra.",
    )
    _model_option(p)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="where to write (default: MODEL_NAME.onnx in the current directory)",
    )
    p.add_argument("--int8", action="store_true", help="also write FILE-int8.onnx, statically quantized")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .export import export_checked, export_images
    from .pretrained import load

    loaded = load(args.model)
    output = args.output or Path(f"{loaded.path.stem}.onnx")
    mnist = _local_data(args)
    if mnist is None:
        _stderr(
            "MNIST is not on this machine: checking the export on generated digit-like images, "
            "calibrating int8 on them, and not measuring accuracy (`mnist-digits data --fetch` gets MNIST)."
        )
    images = export_images(mnist, int8=args.int8)
    exported = export_checked(
        loaded.model, output, images.check, calibration=images.calibration, test=images.test
    )
    for file in exported:
        if file.difference is not None:
            print(
                f"wrote {file.path} (largest difference from PyTorch on {len(images.check)} "
                f"{images.checked_on} images: {file.difference:.1e})"
            )
        else:
            calibrated = len(images.calibration) if images.calibration is not None else 0
            print(
                f"wrote {file.path} ({file.kind}, calibrated on {calibrated} {images.calibrated_on} images)"
            )
    for file in exported:
        if file.accuracy is not None:
            print(f"{file.path.name}: test accuracy {file.accuracy:.4%}")
    return EXIT_OK


def _local_data(args: argparse.Namespace) -> data.Mnist | None:
    """MNIST if it is already on this machine (--data-dir, $MNIST_DIGITS_DATA or the cache), never
    fetched; a folder named explicitly must hold it."""
    try:
        return _load_data(args, fetch=False)
    except data.NotCached:
        return None
