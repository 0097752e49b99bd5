"""The `mnist-digits` command line. `main(argv)` returns an exit code and is callable from tests."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, data
from .errors import MnistDigitsError, TrainingInterrupted
from .files import directory_lock, ensure_writable_dir
from .pretrained import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from .checkpoint import LoadedModel
    from .distributed import Cluster
    from .evaluate import Evaluation
    from .predict import Recognizer
    from .train import TrainConfig

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Written out here so that `--help` needs no torch; tests check them against train.RECIPES and
# predict.DEFAULT_THRESHOLD.
RECIPE_NAMES = ("reference", "fast", "lean", "best", "full")
DEFAULT_THRESHOLD = 0.80


def _data_options(fetch: bool = True) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    cache = "else the user cache, fetched there if missing" if fetch else "else the user cache; never fetched"
    group = parent.add_argument_group("data")
    group.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"directory holding the four MNIST files (raw or .gz); default: ${data.ENV_VAR}, {cache}",
    )
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="accept IDX files whose checksums are not MNIST's (your own data in MNIST's format)",
    )
    return parent


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the default: a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:1, mps",
    )


def _model_option(parser: argparse.ArgumentParser, tta: bool = False) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help="a shipped model's name (see `mnist-digits models`), or a .safetensors model or ensemble "
        f"file; default: {DEFAULT_MODEL}, the most accurate single network",
    )
    if not tta:
        return
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the answers for the image and a few slightly turned "
        "and scaled copies (5 forward passes; a little more accurate)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-digits",
        description="Train, evaluate and use a CNN that recognizes handwritten digits (MNIST).",
    )
    parser.add_argument("--version", action="version", version=f"mnist-digits {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_opts = _data_options()

    p = commands.add_parser(
        "data",
        parents=[data_opts],
        help="find, verify and fetch the MNIST files",
        description="Show where MNIST is, check every file (format and checksums), fetch it if asked.",
    )
    p.add_argument("--fetch", action="store_true", help="download into the user cache if missing")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = commands.add_parser(
        "summary",
        help="print the network's layers, output shapes and parameter counts",
        description="A table like Keras' model.summary(): output shapes and parameter counts.",
    )
    p.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="summarize this model file's architecture (default: the reference one)",
    )

    p = commands.add_parser(
        "train",
        parents=[data_opts],
        help="train a model (default: the reference recipe)",
        description="Train on 54,000 training images, validate on the other 6,000 (chosen by "
        "--seed, or --split-seed), keep the best epoch, and report its accuracy on the official "
        "10,000 test images (unless --no-test).",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPE_NAMES),
        default="reference",
        help="preset of hyperparameters (default: reference, the Keras notebook's)",
    )
    p.add_argument("--epochs", type=int, help="number of epochs (reference: 20)")
    p.add_argument("--batch-size", type=int, help="images per step (reference: 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (reference: 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument(
        "--split-seed",
        type=int,
        metavar="S",
        help="choose the validation images by S instead of --seed; with --ensemble, every member "
        "then holds out the same images, and `evaluate --split val` can validate the ensemble",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="bf16: autocast training to bfloat16; worth it on GPUs and CPUs with native bf16 "
        "(default: fp32)",
    )
    p.add_argument(
        "--elastic",
        type=float,
        metavar="ALPHA",
        help="add elastic distortion of this strength (Simard's alpha in pixels, e.g. 34) to the "
        "recipe's augmentation (default: none)",
    )
    p.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="validate and save a moving average of the weights, updated every step with this "
        "decay (e.g. 0.999; 0 turns it off); default: the recipe's (0.999 for lean and best, "
        "none for the others)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="SHARE",
        help="share of the training images held out for validation (default: 0.1); 0 trains on "
        "all of them and keeps the last epoch, a final fit for a recipe already settled on "
        "validation (one-cycle recipes only)",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="N",
        help="train N networks with seeds SEED..SEED+N-1 into DIR/member0.. and write "
        "DIR/ensemble.safetensors, which averages their probabilities (default: 1)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="run directory for checkpoints, history and the model (default: runs/RECIPE)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change any setting of the recipe, dotted for the augmentation and the network "
        "(repeatable): label_smoothing=0.05, augment.rotation=10, model.channels=32,64,128; the "
        "fields are TrainConfig's, stored in every model file as its train_config",
    )
    p.add_argument(
        "--no-test",
        action="store_true",
        help="leave the official test set unread: validation only, for choosing a recipe; "
        "measure the chosen model once afterwards with `evaluate`",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's files in --out (its model, history and checkpoint), which are "
        "otherwise kept and the command refused; with --resume, only where there is no checkpoint",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="smoke test: train on the first 2,000 training images only, 1 epoch unless --epochs",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (off anyway when stderr is not a terminal)",
    )
    p.add_argument(
        "--extra-idx",
        type=Path,
        metavar="DIR",
        help="add these samples to the training images: a directory written by `feedback export`",
    )
    p.add_argument(
        "--train-csv",
        type=Path,
        metavar="CSV",
        help="train on Kaggle Digit Recognizer's train.csv instead of MNIST; accuracy is then reported "
        "on its held-out validation split, as Kaggle's digits include MNIST's test images",
    )
    _device_option(p)

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
    _device_option(p)

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
    _device_option(p)

    p = commands.add_parser(
        "models",
        help="list the shipped models: size, accuracy, latency, and which command uses which",
        description="Each shipped model's networks, parameters, file size, accuracy on MNIST's test set "
        "and on digits by other writers (as recorded in the file), and its single-image latency on this "
        "CPU, measured now.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-latency", action="store_true", help="skip timing the models (faster)")

    p = commands.add_parser(
        "join",
        parents=[data_opts],
        help="join trained models into one ensemble file",
        description="Write one ensemble file that averages the probabilities of the given models "
        "(model files, shipped names, or ensembles, whose networks join one by one), and report "
        "its accuracy on the official test set, measured with the weights as stored.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model or ensemble files, or shipped names")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the ensemble file to write"
    )
    p.add_argument(
        "--weights",
        choices=("float16", "int8"),
        default="float16",
        help="how the file stores the weights: float16 (half of float32's size, the default) or "
        "int8 with a scale per output channel (a quarter)",
    )
    p.add_argument(
        "--no-test",
        action="store_true",
        help="write the ensemble without measuring it on the official test set",
    )
    _device_option(p)

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

    p = commands.add_parser(
        "predict",
        help="read the handwritten digit in each image (or the number, with --multi)",
        description="Recognize digits in image files (PNG, JPEG, BMP, GIF, WebP, TIFF: photos, scans, "
        "drawings, any size, ink darker or lighter than the paper), folders of them and globs. Each "
        "image is first brought to MNIST's form: ink light on black, lighting and noise removed, "
        "scaled to a 20 px box and centred by its mass in 28x28.",
    )
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="image files, folders (the images in them) or globs"
    )
    _model_option(p, tta=True)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--csv", action="store_true", help="CSV output")
    p.add_argument(
        "--multi",
        action="store_true",
        help="each image holds a number: find its digits and read them left to right",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="P",
        help=f"answers less probable than this are marked uncertain (default: {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--save-inputs", type=Path, metavar="DIR", help="write the 28x28 images the model saw here (PNG)"
    )
    p.add_argument(
        "--kaggle",
        type=Path,
        metavar="CSV",
        help="Kaggle Digit Recognizer's test.csv: predict every row and write a submission to -o",
    )
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="with --kaggle: the submission CSV to write"
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="run the network with PyTorch or ONNX Runtime (onnx: the model is exported once and "
        "cached; an .onnx --model is used as it is; needs the [onnx] extra)",
    )
    _device_option(p)

    p = commands.add_parser(
        "serve",
        help="serve the drawing page and the HTTP API",
        description="A web page to draw a digit and see the answer live, and the HTTP API behind it "
        "(docs at /docs). Listens on 127.0.0.1 only unless --host says otherwise.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    _model_option(p, tta=True)
    _device_option(p)
    p.add_argument(
        "--feedback-db",
        type=Path,
        metavar="FILE",
        help="SQLite file for people's corrections (default: feedback.sqlite3 in the user data directory)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to call the API from a browser, e.g. https://example.org "
        "(repeatable; none by default)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=64,
        metavar="N",
        help="open connections at once; a request on one more is answered 503 (default: 64)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send a request's line and headers (default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time a client has to send a request's body, at most 4 MiB (default: 30)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="an idle connection is closed after this (default: 5)",
    )

    p = commands.add_parser(
        "feedback",
        help="export people's corrections from the server's database",
        description="The corrections people gave on the drawing page, as MNIST-format IDX files.",
    )
    feedback_commands = p.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    p = feedback_commands.add_parser(
        "export",
        help="write the corrections as IDX files (for `train --extra-idx`)",
        description="Write feedback-images-idx3-ubyte and feedback-labels-idx1-ubyte into --out.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the two files")
    p.add_argument(
        "--feedback-db",
        type=Path,
        metavar="FILE",
        help="the server's SQLite file (default: feedback.sqlite3 in the user data directory)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        _share_the_cpu_politely()
    handler = {
        "data": cmd_data,
        "summary": cmd_summary,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "models": cmd_models,
        "report": cmd_report,
        "join": cmd_join,
        "export": cmd_export,
        "predict": cmd_predict,
        "serve": cmd_serve,
        "feedback": cmd_feedback,
    }[args.command]
    try:
        return handler(args)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MnistDigitsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _share_the_cpu_politely() -> None:
    """For training, OpenMP threads that sleep while they wait rather than spin, unless the user chose:
    where another job holds a core, spinning threads fight it (benchmarks/shared_cpu.py). Not for
    inference, where waking sleeping threads slows each small forward pass. Read by OpenMP when torch
    loads, so this comes before any torch import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _load_data(args: argparse.Namespace, fetch: bool = True) -> data.Mnist:
    directory = data.locate(
        args.data_dir, fetch=fetch, verify=not args.no_verify, progress=_bars(), log=_stderr
    )
    return data.load(directory, verify=not args.no_verify)


_NOT_READ = "official test set not read (--no-test); measure the chosen model once with `evaluate --record`"
_KAGGLE_NOT_READ = "not measured on MNIST's test set: Kaggle's digits include those images"


def _test_line(test: Evaluation | None, unread: str = _NOT_READ) -> str:
    """The test result to print, or `unread`: why the test set was left alone."""
    if test is None:
        return unread
    return f"test accuracy {test.accuracy:.4%} ({test.errors} errors), test loss {test.loss:.4f}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _bars() -> bool:
    """Progress bars only for a person watching: not when stderr goes to a file, a pipe or CI's log."""
    return sys.stderr.isatty()


def cmd_data(args: argparse.Namespace) -> int:
    directory = data.locate(
        args.data_dir, fetch=args.fetch, verify=not args.no_verify, progress=_bars(), log=_stderr
    )
    reports = data.inspect_dir(directory, verify=not args.no_verify)
    if args.json:
        rows = [{**asdict(r), "path": str(r.path) if r.path else None} for r in reports]
        print(json.dumps({"directory": str(directory), "files": rows}, indent=2))
    else:
        print(f"MNIST in {directory}")
        for r in reports:
            status = "ok, sha256 verified" if not args.no_verify else "ok, format checked"
            shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
            name = r.path.name if r.path else r.name
            print(f"  {name:<30} {shape:>12}  {r.problem or status}")
    return EXIT_OK if not data.first_problem(reports) else EXIT_ERROR


def cmd_summary(args: argparse.Namespace) -> int:
    from .ensemble import members
    from .model import DigitNet, format_summary, summarize

    networks = [DigitNet()]
    if args.model:
        from .pretrained import load

        networks = members(load(args.model).model)
    if len(networks) > 1:
        print(f"An ensemble of {len(networks)} networks; the first:")
    print(format_summary(summarize(networks[0])))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .device import pick_device
    from .resume import RunDirectoryError
    from .train import recipe, with_settings

    config = recipe(
        args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        precision=args.precision,
        ema=args.ema,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
    )
    if args.elastic is not None:
        config = replace(config, augment=replace(config.augment, elastic=args.elastic))
    config = with_settings(config, args.set)
    if args.ensemble < 1:
        raise MnistDigitsError(f"--ensemble {args.ensemble}: give the number of networks, 1 or more.")
    out: Path = args.out or Path("runs") / args.recipe  # default: runs/best for --recipe best
    # Under torchrun: one process per GPU (or CPU share); the main one fetches data first.
    cluster, device = distributed.join(pick_device(args.device))
    # One run at a time in `out`: locked from before the data is read until its files are recorded.
    with directory_lock(out) if cluster.is_main else contextlib.nullcontext():
        try:
            return _train_in(out, args, config, cluster, device)
        except RunDirectoryError as e:
            flags = dict(resume="--resume", overwrite="--overwrite", elsewhere="another --out directory")
            raise MnistDigitsError(e.explain(**flags)) from None


def _train_in(
    out: Path, args: argparse.Namespace, config: TrainConfig, cluster: Cluster, device: torch.device
) -> int:
    """`train`'s work in its run directory, which the main process has locked."""
    from . import distributed
    from .evaluate import record_ensemble, record_training
    from .train import fit, fit_ensemble

    if not cluster.is_main:
        distributed.barrier(cluster)
    mnist = _read_train_csv(args.train_csv) if args.train_csv else _load_data(args)
    if cluster.is_main:
        distributed.barrier(cluster)
    if args.dry_run:
        config = replace(config, epochs=args.epochs or 1)
        mnist = replace(mnist, train=data.Split(mnist.train.images[:2000], mnist.train.labels[:2000]))
    if args.extra_idx:
        mnist = _add_training_samples(mnist, args.extra_idx)
    if cluster.is_main:
        _stderr(
            f"Training recipe '{config.recipe}' on {device} for {config.epochs} epochs "
            f"(batch {config.batch_size}, seed {config.seed}"
            + (f", validation split of seed {config.split_seed}" if config.split_seed is not None else "")
            + (f", {cluster.world_size} processes" if cluster.distributed else "")
            + f"); run directory {out}"
        )
    options = dict(
        device=device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=_bars() and not args.no_progress,
        cluster=cluster,
    )
    if args.ensemble > 1:
        results = fit_ensemble(config, mnist, out, args.ensemble, **options)
    else:
        results = [fit(config, mnist, out, **options)]
    distributed.leave(cluster)
    if not cluster.is_main:
        return EXIT_OK
    seconds = sum(r.train_seconds for r in results)
    # The official test set is used here, once, on the epochs chosen by validation accuracy
    # (or the last ones, without a validation split), unless --no-test leaves it unread.
    # Kaggle's 42,000 digits are drawn from all 70,000 of MNIST's, its test set included: a
    # score on that set would be inflated, so with --train-csv validation is the measure.
    test_split = None if args.no_test or args.train_csv else mnist.test
    unread = _KAGGLE_NOT_READ if args.train_csv else _NOT_READ
    members = [out] if args.ensemble == 1 else [out / f"member{i}" for i in range(args.ensemble)]
    for result, member in zip(results, members, strict=True):
        model_path = member / "model.safetensors"
        test = record_training(
            model_path, result.model, [asdict(s) for s in result.history], test_split, device
        )
        kept = result.describe()
        if args.train_csv and result.best_val_accuracy is not None:
            kept += f" (held out from {args.train_csv.name})"
        print(f"{kept}\n{_test_line(test, unread)}\nmodel: {model_path}")
    if args.ensemble > 1:
        path = out / "ensemble.safetensors"
        _, test = record_ensemble(path, [m / "model.safetensors" for m in members], test_split, device)
        print(f"ensemble of {args.ensemble}: {_test_line(test, unread)}\nmodel: {path}")
    print(f"trained in {seconds / 60:.1f} min on {device}")
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    from .device import pick_device
    from .evaluate import record_ensemble
    from .pretrained import resolve

    if args.output.suffix != ".safetensors":
        raise MnistDigitsError(f"--output {args.output}: an ensemble file must end in .safetensors.")
    paths = [resolve(m) for m in args.models]
    if any(p.resolve() == args.output.resolve() for p in paths):
        raise MnistDigitsError(f"--output {args.output} is one of the models to join; choose another file.")
    device = pick_device(args.device)
    networks, test = record_ensemble(
        args.output, paths, None if args.no_test else _load_data(args).test, device, args.weights
    )
    print(
        f"ensemble of {networks} networks: {_test_line(test)}\nmodel: {args.output} ({args.weights} "
        f"weights, {args.output.stat().st_size / 1e6:.1f} MB)"
    )
    return EXIT_OK


def _evaluate(
    args: argparse.Namespace, split: str = "test"
) -> tuple[LoadedModel, data.Mnist, data.Split, Evaluation]:
    """--model (with --tta if asked) on the official test set, or with split "val" on the
    validation images it held out in training; returns the images it was measured on too."""
    from .device import pick_device
    from .ensemble import as_ensemble
    from .evaluate import evaluate_model
    from .pretrained import load
    from .train import held_out

    device = pick_device(args.device)
    loaded = load(args.model, device)
    mnist = _load_data(args)
    images = held_out(loaded.members_metadata, mnist) if split == "val" else mnist.test
    return loaded, mnist, images, evaluate_model(as_ensemble(loaded.model, args.tta), images, device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import format_report

    if args.out:
        ensure_writable_dir(args.out)  # before the work, not after it
    if args.record:
        _check_recordable(args)
    loaded, mnist, images, evaluation = _evaluate(args, args.split)
    if args.record:
        from .checkpoint import update_metadata

        update_metadata(loaded.path, {"test_accuracy": evaluation.accuracy, "test_loss": evaluation.loss})
        _stderr(f"recorded the test accuracy in {loaded.path}")
    figures = []
    if args.out:
        from . import plots
        from .report import calibration

        figures.append(plots.confusion_png(evaluation, args.out / "confusion.png"))
        reliability = calibration(evaluation.confidences, evaluation.correct)
        figures.append(plots.reliability_png(reliability, args.out / "reliability.png"))
        figures.append(
            plots.misclassified_png(
                evaluation,
                images.images,
                images.labels,
                args.out / "misclassified.png",
                which="validation" if args.split == "val" else "test",
            )
        )
        history = loaded.members_metadata[0].get("history")  # an ensemble's first member
        if history:
            figures.append(plots.curves_png(history, args.out / "curves.png"))
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(loaded.path),
                    "split": args.split,
                    **evaluation.to_dict(),
                    "figures": [str(f) for f in figures],
                },
                indent=2,
            )
        )
    else:
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


def _check_recordable(args: argparse.Namespace) -> None:
    from .pretrained import available

    if args.tta:
        raise MnistDigitsError(
            "--record stores the model's own test accuracy, which --tta would change; leave out --tta."
        )
    if args.split != "test":
        raise MnistDigitsError(
            "--record stores the test accuracy; the validation accuracy is in the model file already "
            "(as val_accuracy). Leave out --split val."
        )
    if args.model in available():
        raise MnistDigitsError(
            f"--record writes into the model file; {args.model!r} is shipped with the package and "
            "already holds its test accuracy."
        )


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checked, synthetic_digits
    from .pretrained import load

    loaded = load(args.model)
    output = args.output or Path(f"{loaded.path.stem}.onnx")
    mnist = _local_data(args)
    if mnist is None:
        _stderr(
            "MNIST is not on this machine: checking the export on generated digit-like images, "
            "calibrating int8 on them, and not measuring accuracy (`mnist-digits data --fetch` gets MNIST)."
        )
        check, test = synthetic_digits(256), None
        calibration = synthetic_digits(512, seed=1) if args.int8 else None
        checked_on, calibrated_on = "generated", "generated"
    else:
        test_images, test_labels = (t.numpy() for t in data.to_tensors(mnist.test))
        test = (test_images, test_labels)
        check, checked_on, calibrated_on = test_images[:256], "test", "training"
        train = data.Split(mnist.train.images[:512], mnist.train.labels[:512])
        calibration = data.to_tensors(train)[0].numpy() if args.int8 else None
    exported = export_checked(loaded.model, output, check, calibration=calibration, test=test)
    for file in exported:
        if file.difference is not None:
            print(
                f"wrote {file.path} (largest difference from PyTorch on 256 {checked_on} images: "
                f"{file.difference:.1e})"
            )
        else:
            print(f"wrote {file.path} ({file.kind}, calibrated on 512 {calibrated_on} images)")
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


def cmd_report(args: argparse.Namespace) -> int:
    from .ensemble import TTA_VIEWS
    from .report import format_accuracy, write_report

    loaded, mnist, _, evaluation = _evaluate(args)
    members = loaded.members_metadata
    recipes = dict.fromkeys(str((m.get("train_config") or {}).get("recipe", "unknown")) for m in members)
    details = {
        "model": str(loaded.path),
        "networks": f"{len(members)} (probabilities averaged)" if len(members) > 1 else "1",
        "test-time augmentation": f"yes ({len(TTA_VIEWS)} views)" if args.tta else "no",
        "recipe": ", ".join(recipes),
        "trained": str((members[0].get("environment") or {}).get("date", "unknown")),
        "test set": f"{mnist.directory} ({evaluation.count:,} images)",
    }
    title = f"mnist-digits: {args.model}" + (" with TTA" if args.tta else "")
    histories = [m.get("history") or [] for m in members]
    path = write_report(
        evaluation, mnist.test.images, args.output, title=title, histories=histories, details=details
    )
    print(f"{format_accuracy(evaluation)}\nwrote {path}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
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


def _add_training_samples(mnist: data.Mnist, directory: Path) -> data.Mnist:
    """MNIST with the samples of a `feedback export` directory added to its training split."""
    import numpy as np

    from .feedback import read_idx
    from .files import sha256_hex
    from .idx import encode_idx

    extra = read_idx(directory)
    _stderr(f"Adding {len(extra.labels):,} samples from {directory} to the training images.")
    train = data.Split(
        np.concatenate([mnist.train.images, extra.images]), np.concatenate([mnist.train.labels, extra.labels])
    )
    # Recorded in the model's metadata beside MNIST's checksums, so the model says what it saw.
    sha256 = {
        **mnist.sha256,
        "extra-images": sha256_hex(encode_idx(extra.images)),
        "extra-labels": sha256_hex(encode_idx(extra.labels)),
    }
    return replace(mnist, train=train, sha256=sha256)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, run

    config = ServeConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        tta=args.tta,
        feedback_db=args.feedback_db,
        allowed_origins=tuple(args.allow_origin),
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
    )
    run(config, announce=lambda line: print(line, flush=True))
    return EXIT_OK


def cmd_feedback(args: argparse.Namespace) -> int:
    from .feedback import FeedbackStore

    store = FeedbackStore(args.feedback_db)
    result = store.export_idx(args.out)
    print(f"wrote {result.count:,} corrected samples from {store.path}:")
    print(f"  {result.images}\n  {result.labels}")
    return EXIT_OK


def _read_train_csv(path: Path) -> data.Mnist:
    from .kaggle import read_train_csv

    return read_train_csv(path)


def cmd_predict(args: argparse.Namespace) -> int:
    from . import predict
    from .images import expand_paths

    if not 0.0 <= args.threshold <= 1.0:
        raise MnistDigitsError(f"--threshold {args.threshold} is not a probability; give one from 0 to 1.")
    if args.kaggle and (args.paths or args.multi or not args.output):
        raise MnistDigitsError("--kaggle takes test.csv and -o FILE (the submission); no PATHs, no --multi.")
    if args.output and not args.kaggle:
        raise MnistDigitsError("-o is for the Kaggle submission: use it with --kaggle test.csv.")
    if not args.kaggle and not args.paths:
        raise MnistDigitsError("give image files, folders or globs (or --kaggle test.csv -o submission.csv).")
    recognizer = predict.load_model(
        args.model, args.device, args.threshold, tta=args.tta, runtime=args.runtime
    )
    if args.kaggle:
        return _predict_kaggle(recognizer, args.kaggle, args.output, args.threshold)

    # Folders and globs that yield nothing keep their place in the output, as an error row.
    entries = expand_paths(args.paths)
    files = [path for path, problem in entries if problem is None]
    results: Sequence[predict.Prediction | predict.NumberReading]
    if args.multi:
        read = iter(recognizer.read_number(files))
        readings = [next(read) if p is None else predict.NumberReading.failure(s, p) for s, p in entries]
        table, rows = predict.format_numbers(readings, args.threshold), predict.numbers_csv(readings)
        results, digits = readings, [d for r in readings for d in r.digits]
    else:
        found = iter(recognizer.predict(files))
        predictions = [next(found) if p is None else predict.Prediction.failure(s, p) for s, p in entries]
        table = predict.format_predictions(predictions, args.threshold)
        rows = predict.predictions_csv(predictions)
        results, digits = predictions, predictions
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(rows if args.csv else table, end="" if args.csv else "\n")
    if args.save_inputs:
        written = predict.save_inputs(args.save_inputs, digits)
        _stderr(f"wrote {len(written)} model inputs (28x28 PNG) to {args.save_inputs}")
    failed = [r for r in results if r.error and r.error != predict.NO_DIGIT]
    return EXIT_ERROR if failed else EXIT_OK


def _predict_kaggle(recognizer: Recognizer, test_csv: Path, output: Path, threshold: float) -> int:
    import numpy as np

    from .kaggle import read_test_csv, write_submission

    images = read_test_csv(test_csv)
    # Kaggle's rows are MNIST's format already (centred 28x28, white on black): no preprocessing.
    probs = recognizer.probabilities(images.astype(np.float32) / 255.0)
    write_submission(output, probs.argmax(1))
    uncertain = int((probs.max(1) < threshold).sum())
    print(f"wrote {len(probs):,} predictions to {output}; {uncertain} uncertain (below {threshold:.0%})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
