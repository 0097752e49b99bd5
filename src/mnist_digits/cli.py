"""The `mnist-digits` command line. `main(argv)` returns an exit code and is callable from tests.

Each command's options sit beside its handler: `add_<command>` and `run_<command>` in cli_train
(train, join, summary), cli_measure (data, evaluate, report, models, export) and cli_predict
(predict, serve, feedback). The handlers import the library (and torch) only when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, allocator, cli_measure, cli_predict, cli_train, threads
from .cli_options import (
    DEFAULT_THRESHOLD,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FLAGS,
    RECIPE_NAMES,
    _data_options,
)
from .errors import MnistDigitsError, TrainingInterrupted

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RECIPE_NAMES",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-digits",
        description="Train, evaluate and use a CNN that recognizes handwritten digits (MNIST).",
    )
    parser.add_argument("--version", action="version", version=f"mnist-digits {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_opts = _data_options()
    # In the order `--help` lists them.
    cli_measure.add_data(commands, data_opts)
    cli_train.add_summary(commands)
    cli_train.add_train(commands, data_opts)
    cli_measure.add_evaluate(commands, data_opts)
    cli_measure.add_report(commands, data_opts)
    cli_measure.add_models(commands)
    cli_train.add_join(commands, data_opts)
    cli_measure.add_export(commands)
    cli_predict.add_predict(commands)
    cli_predict.add_serve(commands)
    cli_predict.add_feedback(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":  # before torch loads: OpenMP reads its settings then
        threads.announce(threads.choose_for_training())
        allocator.keep_freed_memory()  # each step's blocks reused, not faulted in afresh
    try:
        return args.run(args)
    except TrainingInterrupted as e:  # only `train` stops this way
        print(f"interrupted: {e} Continue it: run the same command with --resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MnistDigitsError as e:
        print(f"error: {e.explain(**FLAGS)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
