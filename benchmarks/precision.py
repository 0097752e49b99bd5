"""bf16 against fp32 inference on the official test set, for each shipped network, on this machine.

    python benchmarks/precision.py                    # reference and best; about 2 minutes on 2 cores
    python benchmarks/precision.py --models best --json-out precision.json

For each model: test accuracy in fp32 and under bf16 autocast, the share of the 10,000 test
images on which both give the same digit, and batch-1000 throughput of each. It also says what
`--precision auto` takes here and why. Where the CPU lacks native bf16 (no AMX or AVX-512 BF16),
PyTorch emulates it: the answers are the same as on a native CPU, only the speed is not.
The criteria `auto` is held to: the same digit on at least 99.95% of the test set, and accuracy
within 0.03 points of fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from machine import describe_cpu  # benchmarks/machine.py

from mnist_digits import data, pretrained
from mnist_digits.device import pick_device, pick_precision
from mnist_digits.model import predict_logits

SAME_DIGIT = 0.9995  # the share of test images that must get the same digit in bf16
ACCURACY_POINTS = 0.03  # how far bf16's test accuracy may be from fp32's, in percentage points


def measure(name: str, mnist: data.Mnist, device: torch.device, batch: int) -> dict:
    model = pretrained.load(name, device).model
    images, labels = data.to_tensors(mnist.test, device)
    row: dict = {"model": name}
    digits = {}
    for precision in ("fp32", "bf16"):
        predict_logits(model, images[:batch], batch, bf16=precision == "bf16")  # warm-up
        start = time.perf_counter()
        logits = predict_logits(model, images, batch, bf16=precision == "bf16")
        seconds = time.perf_counter() - start
        digits[precision] = logits.argmax(1)
        row[f"{precision}_accuracy"] = (digits[precision] == labels).float().mean().item()
        row[f"{precision}_images_per_second"] = len(labels) / seconds
    row["same_digit"] = (digits["fp32"] == digits["bf16"]).float().mean().item()
    row["points_apart"] = 100 * abs(row["bf16_accuracy"] - row["fp32_accuracy"])
    row["passes"] = row["same_digit"] >= SAME_DIGIT and row["points_apart"] <= ACCURACY_POINTS
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["reference", "best"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="only the first N test images (a quick check)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    mnist = data.load(data.locate(args.data_dir))
    if args.limit:
        test = data.Split(mnist.test.images[: args.limit], mnist.test.labels[: args.limit])
        mnist = data.Mnist(mnist.train, test, mnist.directory, mnist.sha256)
    auto = pick_precision("auto", device)
    threads = torch.get_num_threads()
    print(f"machine: {describe_cpu()}; device {device}, {threads} threads, torch {torch.__version__}")
    print(f"--precision auto here: {auto.describe()}\n")
    rows = [measure(name, mnist, device, args.batch) for name in args.models]
    columns = ("fp32 acc", "bf16 acc", "same digit", "fp32 img/s", "bf16 img/s")
    print(f"{'model':<10} " + " ".join(f"{c:>11}" for c in columns))
    for r in rows:
        print(
            f"{r['model']:<10} {r['fp32_accuracy']:>11.2%} {r['bf16_accuracy']:>11.2%} "
            f"{r['same_digit']:>11.2%} {r['fp32_images_per_second']:>11,.0f} "
            f"{r['bf16_images_per_second']:>11,.0f}" + ("" if r["passes"] else "   outside the criteria")
        )
    print(
        f"\nCriteria: the same digit on at least {SAME_DIGIT:.2%} of the test set, accuracy within "
        f"{ACCURACY_POINTS} points of fp32."
    )
    if args.json_out:
        summary = {"machine": describe_cpu(), "auto": auto.describe(), "rows": rows}
        args.json_out.write_text(json.dumps(summary, indent=2))
    return 0 if all(r["passes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
