"""How much of a digit UCI's 8x8 format leaves: networks trained on nothing but MNIST's
training digits in that format, read on the held-out digits of `outside_mnist.py`'s 8x8 stress
row and on UCI's 43 writers, beside the shipped model's networks on the same digits.

    .venv/bin/pip install scikit-learn          # the UCI digits (nothing is downloaded)
    .venv/bin/python benchmarks/uci_format_ceiling.py                  # robust's networks, 3 seeds
    .venv/bin/python benchmarks/uci_format_ceiling.py --network 2 --seeds 0 1

For each network of the model, a small network is trained on the 8x8 counts (0-16) of the
training digits that network trained on (its own validation split held out), and read on the
first `--digits` digits it held out, in the same format. The shipped network reads the same
digits as the 8x8 stress row does: scaled back up and through the preprocessing. A network
made for the format that reads those digits no better than the shipped one shows the row's
gap to plain validation is the format's (what the 8x8 counts no longer hold), not the model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from machine import cpu_flags, cpu_name  # benchmarks/machine.py
from outside_mnist import each_network, read, uci_digits, validation_split  # benchmarks/outside_mnist.py
from torch import nn

from mnist_digits import data, stress
from mnist_digits.files import write_atomic
from mnist_digits.predict import load_model
from mnist_digits.recipes import TrainConfig
from mnist_digits.report import wilson_interval


@dataclass(frozen=True)
class FormatConfig:
    """How the format's own networks are trained (chosen once, on nothing but these digits)."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3  # the peak of a one-cycle schedule, AdamW
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1


def format_network() -> nn.Module:
    """A small convolutional network for 8x8 inputs: 3x3 convolutions, one pooling to 4x4."""

    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]

    return nn.Sequential(
        *block(1, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        *block(128, 128),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(128 * 4 * 4, 256),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(256, 10),
    )


def counts(images: np.ndarray) -> torch.Tensor:
    """MNIST digits (N, 28, 28) uint8 in UCI's format, (N, 1, 8, 8) floats 0-1."""
    return as_inputs(stress.mnist_as_uci(images))


def as_inputs(uci_counts: np.ndarray) -> torch.Tensor:
    """8x8 counts (N, 8, 8), 0-16, as the format network's inputs: (N, 1, 8, 8) floats 0-1."""
    return torch.from_numpy(uci_counts / stress.UCI_BLOCK**2).unsqueeze(1).float()


def train_format_network(
    inputs: torch.Tensor, labels: torch.Tensor, seed: int, config: FormatConfig
) -> nn.Module:
    torch.manual_seed(seed)
    network = format_network()
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(labels) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
    loss_of = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_of(network(inputs[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    return network.eval()


@torch.no_grad()
def accuracy(network: nn.Module, inputs: torch.Tensor, labels: np.ndarray) -> float:
    return float((network(inputs).argmax(1).numpy() == labels).mean())


def interval(value: float, n: int) -> str:
    low, high = wilson_interval(round(value * n), n)
    return f"{value:.2%} ({low:.2%}-{high:.2%})"


def run(args: argparse.Namespace) -> dict:
    config = FormatConfig(epochs=args.epochs)
    mnist = data.load(data.locate(args.data_dir, log=lambda m: print(m, file=sys.stderr)))
    uci, uci_labels = uci_digits()
    uci_inputs = as_inputs(uci)
    model = load_model(args.model, runtime="torch", precision="fp32")
    every = each_network(args.model, model) or [(args.model, model)]
    networks = [every[k - 1] for k in args.network if 1 <= k <= len(every)] if args.network else every
    if not networks:
        sys.exit(f"--network: {args.model} has networks 1 to {len(every)}")
    results = []
    for name, network in networks:
        held, which = validation_split(network, mnist, args.digits)
        split = TrainConfig.from_dict(network.metadata["train_config"])
        trained_on = data.split_validation(mnist.train, split.val_fraction, split.validation_seed)[0]
        eight = stress.stress_sets(held, kinds=["8x8"])[0]
        shipped = float((read(network, eight.inputs, eight.found) == held.labels).mean())
        as_they_are = network.probabilities(held.images.astype(np.float32) / 255).argmax(1)
        plain = float((as_they_are == held.labels).mean())
        inputs, labels = counts(trained_on.images), torch.from_numpy(trained_on.labels.astype(np.int64))
        held_inputs = counts(held.images)
        for seed in args.seeds:
            start = time.perf_counter()
            own = train_format_network(inputs, labels, seed, config)
            seconds = time.perf_counter() - start
            row = {
                "network": name,
                "split": which,
                "digits": len(held.labels),
                "seed": seed,
                "shipped_validation": plain,
                "shipped_8x8": shipped,
                "format_network_8x8": accuracy(own, held_inputs, held.labels),
                "format_network_uci": accuracy(own, uci_inputs, uci_labels),
                "train_seconds": round(seconds, 1),
            }
            results.append(row)
            print(
                f"{name}, {which}, seed {seed}: validation {plain:.2%}; 8x8: shipped "
                f"{interval(shipped, row['digits'])}, format network "
                f"{interval(row['format_network_8x8'], row['digits'])}; UCI writers: format network "
                f"{interval(row['format_network_uci'], len(uci_labels))} ({seconds:.0f} s)",
                flush=True,
            )
    return {
        "machine": cpu_name(),
        "flags": cpu_flags(),
        "date": date.today().isoformat(),
        "model": args.model,
        "format_config": vars(config),
        "uci_digits": len(uci_labels),
        "rows": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="robust", help="shipped name or model file (default: robust)")
    parser.add_argument("--digits", type=int, default=3000, help="held-out digits read (as outside_mnist.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="format networks' seeds")
    parser.add_argument(
        "--network", type=int, nargs="+", help="only these networks of an ensemble, from 1 (default: all)"
    )
    parser.add_argument("--epochs", type=int, default=FormatConfig.epochs)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    results = run(args)
    print(f"{results['machine']} ({', '.join(results['flags'])}), {results['date']}")
    if args.json_out:
        write_atomic(args.json_out, json.dumps(results, indent=2).encode())


if __name__ == "__main__":
    main()
