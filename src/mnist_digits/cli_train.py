"""The commands that make models: `summary` (the architecture), `train` and `join` (an ensemble)."""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import data
from .cli_options import (
    EXIT_OK,
    RECIPE_NAMES,
    Commands,
    _bars,
    _device_option,
    _load_data,
    _stderr,
)
from .errors import MnistDigitsError
from .files import directory_lock

if TYPE_CHECKING:
    import torch

    from .distributed import Cluster
    from .evaluate import Evaluation
    from .recipes import TrainConfig
    from .runs import TrainedRun


_NOT_READ = "official test set not read (--no-test); measure the chosen model once with `evaluate --record`"
_KAGGLE_NOT_READ = "not measured on MNIST's test set: Kaggle's digits include those images"


def add_summary(commands: Commands) -> None:
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
    p.set_defaults(run=run_summary)


def run_summary(args: argparse.Namespace) -> int:
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


def add_train(commands: Commands, data_opts: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "train",
        parents=[data_opts],
        help="train a model (default: the reference recipe)",
        description="Train on 54,000 training images, validate on the other 6,000 (chosen by "
        "--seed, or --split-seed), keep the best epoch, and report its accuracy on the official "
        "10,000 test images (unless --no-test).",
    )
    _hyperparameter_options(p)
    _run_options(p)
    p.set_defaults(run=run_train)


def _hyperparameter_options(p: argparse.ArgumentParser) -> None:
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
        choices=["auto", "fp32", "bf16"],
        help="auto (the default): bf16 autocast where the device computes it natively (GPUs; CPUs with "
        "AMX or AVX-512 BF16), else fp32; fp32 or bf16 force one",
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


def _run_options(p: argparse.ArgumentParser) -> None:
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


def run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .device import pick_device
    from .recipes import SettingError, recipe, with_settings

    if args.ensemble < 1:
        raise MnistDigitsError(f"--ensemble {args.ensemble}: give the number of networks, 1 or more.")
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
    try:
        config = with_settings(config, args.set)
    except SettingError as e:
        raise MnistDigitsError(f"--set {e.setting!r}: {e.problem}") from None
    out: Path = args.out or Path("runs") / args.recipe  # default: runs/best for --recipe best
    # Under torchrun: one process per GPU (or CPU share); the main one fetches data first.
    cluster, device = distributed.join(pick_device(args.device))
    # One run at a time in `out`: locked from before the data is read until its files are recorded.
    with directory_lock(out) if cluster.is_main else contextlib.nullcontext():
        return _train_in(out, args, config, cluster, device)


def _train_in(
    out: Path, args: argparse.Namespace, config: TrainConfig, cluster: Cluster, device: torch.device
) -> int:
    """`train`'s work in its run directory, which the main process has locked."""
    from . import distributed
    from .runs import run_training

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
    trained = run_training(
        config,
        mnist,
        out,
        networks=args.ensemble,
        measure_test=not args.no_test,
        device=device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=_bars() and not args.no_progress,
        cluster=cluster,
    )
    distributed.leave(cluster)
    if cluster.is_main:
        _print_trained(trained, args, device)
    return EXIT_OK


def _print_trained(trained: TrainedRun, args: argparse.Namespace, device: torch.device) -> None:
    # Kaggle's 42,000 digits are drawn from all 70,000 of MNIST's, its test set included, so with
    # --train-csv validation is the measure and the test set is never read.
    unread = _KAGGLE_NOT_READ if args.train_csv else _NOT_READ
    for result in trained.networks:
        kept = result.describe()
        if args.train_csv and result.best_val_accuracy is not None:
            kept += f" (held out from {args.train_csv.name})"
        print(f"{kept}\n{_test_line(result.test, unread)}\nmodel: {result.path}")
    if trained.ensemble is not None:
        print(
            f"ensemble of {len(trained.networks)}: {_test_line(trained.ensemble_test, unread)}\n"
            f"model: {trained.ensemble}"
        )
    print(f"trained in {trained.train_seconds / 60:.1f} min on {device}")


def add_join(commands: Commands, data_opts: argparse.ArgumentParser) -> None:
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
    p.set_defaults(run=run_join)


def run_join(args: argparse.Namespace) -> int:
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


def _test_line(test: Evaluation | None, unread: str = _NOT_READ) -> str:
    """The test result to print, or `unread`: why the test set was left alone."""
    if test is None:
        return unread
    return f"test accuracy {test.accuracy:.4%} ({test.errors} errors), test loss {test.loss:.4f}"


def _read_train_csv(path: Path) -> data.Mnist:
    from .kaggle import read_train_csv

    return read_train_csv(path)


def _add_training_samples(mnist: data.Mnist, directory: Path) -> data.Mnist:
    """MNIST with the samples of a `feedback export` directory added to its training split."""
    from .feedback import with_feedback_samples

    extended = with_feedback_samples(mnist, directory)
    added = len(extended.train.labels) - len(mnist.train.labels)
    _stderr(f"Adding {added:,} samples from {directory} to the training images.")
    return extended
