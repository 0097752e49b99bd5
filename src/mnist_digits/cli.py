"""The `mnist-digits` command line. `main(argv)` returns an exit code and is callable from tests."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from . import __version__, data
from .errors import MnistDigitsError
from .resume import TrainingInterrupted

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def _data_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("data")
    group.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"directory holding the four MNIST files (raw or .gz); default: ${data.ENV_VAR}, "
        "else the user cache, fetched there if missing",
    )
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="accept IDX files whose checksums are not MNIST's (your own data in MNIST's format)",
    )
    return parent


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1"
    )


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="reference",
        metavar="NAME_OR_PATH",
        help="a shipped model's name (see `mnist-digits models`) or a .safetensors file; default: reference",
    )


def build_parser() -> argparse.ArgumentParser:
    from .train import RECIPES

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
        "--seed), keep the best epoch, and report its accuracy on the official 10,000 test images.",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="reference",
        help="preset of hyperparameters (default: reference, the Keras notebook's)",
    )
    p.add_argument("--epochs", type=int, help="number of epochs (reference: 20)")
    p.add_argument("--batch-size", type=int, help="images per step (reference: 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (reference: 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/reference"),
        metavar="DIR",
        help="run directory for checkpoints, history and the model (default: runs/reference)",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument(
        "--dry-run", action="store_true", help="smoke test: 1 epoch on the first 2,000 training images"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    _device_option(p)

    p = commands.add_parser(
        "evaluate",
        parents=[data_opts],
        help="measure a model on the official test set",
        description="Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on "
        "the 10,000 test images; with --out, PNGs of the confusion matrix, the misclassified "
        "digits and the training curves.",
    )
    _model_option(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="write the PNG figures here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _device_option(p)

    commands.add_parser("models", help="list the models shipped with the package")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "data": cmd_data,
        "summary": cmd_summary,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "models": cmd_models,
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


def _load_data(args: argparse.Namespace) -> data.Mnist:
    directory = data.locate(args.data_dir, verify=not args.no_verify, log=_stderr)
    return data.load(directory, verify=not args.no_verify)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_data(args: argparse.Namespace) -> int:
    directory = data.locate(args.data_dir, fetch=args.fetch, verify=not args.no_verify, log=_stderr)
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
    from .model import DigitNet, format_summary, summarize

    if args.model:
        from .pretrained import load

        model = load(args.model).model
    else:
        model = DigitNet()
    print(format_summary(summarize(model)))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .evaluate import record_test_result
    from .train import fit, pick_device, recipe

    config = recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    device = pick_device(args.device)
    mnist = _load_data(args)
    if args.dry_run:
        config = replace(config, epochs=1)
        mnist = replace(mnist, train=data.Split(mnist.train.images[:2000], mnist.train.labels[:2000]))
    _stderr(
        f"Training recipe '{config.recipe}' on {device} for {config.epochs} epochs "
        f"(batch {config.batch_size}, seed {config.seed}); run directory {args.out}"
    )
    result = fit(config, mnist, args.out, device=device, resume=args.resume, progress=not args.no_progress)
    # The official test set is used here, once, on the epoch chosen by validation accuracy.
    model_path = args.out / "model.safetensors"
    test = record_test_result(
        model_path, result.model, mnist.test, [asdict(s) for s in result.history], device
    )
    print(
        f"best epoch {result.best_epoch}: validation accuracy {result.best_val_accuracy:.4%}\n"
        f"test accuracy {test.accuracy:.4%} ({test.errors} errors), test loss {test.loss:.4f}\n"
        f"trained in {result.train_seconds / 60:.1f} min on {device}\nmodel: {model_path}"
    )
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, format_report
    from .pretrained import load
    from .train import pick_device

    device = pick_device(args.device)
    loaded = load(args.model, device)
    mnist = _load_data(args)
    evaluation = evaluate_model(loaded.model, mnist.test, device)
    figures = []
    if args.out:
        from . import plots

        args.out.mkdir(parents=True, exist_ok=True)
        figures.append(plots.confusion_png(evaluation, args.out / "confusion.png"))
        figures.append(
            plots.misclassified_png(
                evaluation, mnist.test.images, mnist.test.labels, args.out / "misclassified.png"
            )
        )
        history = loaded.metadata.get("history")
        if history:
            figures.append(plots.curves_png(history, args.out / "curves.png"))
    if args.json:
        print(
            json.dumps(
                {"model": str(loaded.path), **evaluation.to_dict(), "figures": [str(f) for f in figures]},
                indent=2,
            )
        )
    else:
        print(f"model: {loaded.path}\ntest set: {mnist.directory} ({evaluation.count:,} images)\n")
        print(format_report(evaluation))
        for figure in figures:
            print(f"wrote {figure}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .pretrained import available

    for name, path in available().items():
        print(f"{name:<12} {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
