"""What the command modules share: exit codes, the data, device and model options, and the helpers
that read the data options and print to stderr. Nothing here loads torch, so `--help` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeAlias

from . import data
from .pretrained import DEFAULT_MODEL

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Written out here so that `--help` needs no torch; tests check them against recipes.RECIPES and
# predict.DEFAULT_THRESHOLD.
RECIPE_NAMES = ("reference", "fast", "lean", "best", "robust", "full")
DEFAULT_THRESHOLD = 0.80
PRECISIONS = ("auto", "fp32", "bf16")  # device.PRECISIONS
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")  # predict.RUNTIMES
AUTO_MIN_IMAGES = 1000  # runtime_choice.AUTO_MIN_IMAGES

# The command line's words for the choices errors name (errors.LIBRARY_TERMS): its flags
FLAGS = {
    "resume": "--resume",
    "overwrite": "--overwrite",
    "elsewhere": "another --out directory",
    "same_data": "the same data options (--data-dir, --extra-idx, --train-csv, --dry-run)",
    "data_dir": "--data-dir (or $MNIST_DIGITS_DATA)",
    "no_verify": "--no-verify",
    "fetch": "`mnist-digits data --fetch`",
    "feedback_db": "another file with --feedback-db",
    "feedback_export": "`mnist-digits feedback export --out DIR`",
    "port": "another with --port",
    "allow_origin": "--allow-origin",
    "tta": "--tta",
    "record": "--record",
    "val": "--split val",
    "runtime": "--runtime",
    "precision": "--precision",
    "max_connections": "--max-connections",
    "header_timeout": "--header-timeout",
    "body_timeout": "--body-timeout",
    "keep_alive_timeout": "--keep-alive-timeout",
}

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # add_subparsers' result


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


def _device_option(parser: argparse.ArgumentParser, precision: bool = False) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the default: a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:1, mps",
    )
    if precision:
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="auto",
            help="auto (the default): bf16 autocast where the device computes it natively (GPUs; CPUs "
            "with AMX or AVX-512 BF16), else fp32; fp32 or bf16 force one",
        )


def _runtime_option(
    parser: argparse.ArgumentParser,
    default: str = "auto",
    when: str = f"for {AUTO_MIN_IMAGES:,} images or more",
    why: str = "",
) -> None:
    """--runtime; `when` says when auto makes its choice, `why` why the default is what it is."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default,
        help=f"what runs the network (default: {default}{why}). auto: {when}, the fastest here of PyTorch "
        "(fp32, or bf16 where native) and ONNX Runtime (fp32, int8) that keeps PyTorch fp32's answers, "
        "timed once per machine and model (seconds) and cached; torch: PyTorch; onnx, onnx-int8: ONNX "
        "Runtime (the model is exported, or quantized, once and cached; needs the [onnx] extra)",
    )


def _model_option(parser: argparse.ArgumentParser, tta: bool = False) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help="a shipped model's name (see `mnist-digits models`), or a .safetensors model or ensemble "
        f"file; default: {DEFAULT_MODEL}, trained for thick and thin pens as well as MNIST's",
    )
    if not tta:
        return
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the answers for the image and a few slightly turned "
        "and scaled copies (5 forward passes; a little more accurate)",
    )


def _load_data(args: argparse.Namespace, fetch: bool = True) -> data.Mnist:
    directory = data.locate(
        args.data_dir, fetch=fetch, verify=not args.no_verify, progress=_bars(), log=_stderr
    )
    return data.load(directory, verify=not args.no_verify)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _bars() -> bool:
    """Progress bars only for a person watching: not when stderr goes to a file, a pipe or CI's log."""
    return sys.stderr.isatty()
