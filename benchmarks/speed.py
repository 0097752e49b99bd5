"""Training and inference speed of the reference model on this machine, against its peak.

    python benchmarks/speed.py                  # table on stdout
    python benchmarks/speed.py --json-out speed.json

Training throughput runs the real training step of the reference recipe (data held as one
tensor, batched augmentation, forward, backward, RMSprop) on a slice of MNIST. Inference
measures batched throughput and single-image latency. FLOP/s are counted from the model's
convolutions and dense layers (a training step is about 3x a forward pass) and compared
with the machine's peak, estimated from its cores, clock and vector width (or --peak-gflops).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py

from mnist_digits import data
from mnist_digits.model import DigitNet, forward_flops
from mnist_digits.resume import EpochProgress
from mnist_digits.train import TrainConfig, pick_device, predict_logits, train_one_epoch

# Dense (non-tensor-core) fp32 and bf16 tensor-core peaks, TFLOP/s, from the vendors' sheets.
GPU_PEAKS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0), "L4": (30.3, 121.0)}


@dataclass
class Result:
    machine: str
    device: str
    threads: int
    torch: str
    peak_gflops: float  # fp32 peak of the device used, estimated
    rows: list[dict] = field(default_factory=list)  # one per measurement


def cpu_peak_gflops(threads: int) -> float:
    """cores x GHz x fp32 FLOPs per cycle (two FMA units: 32 with AVX2, 64 with AVX-512)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return float("nan")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    per_cycle = 64 if " avx512f" in flags else 32 if " fma" in flags else 8
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    return threads * (max(mhz) / 1000 if mhz else float("nan")) * per_cycle


def gpu_peak_gflops(device: torch.device) -> float:
    name = torch.cuda.get_device_name(device)
    return next((fp32 * 1000 for key, (fp32, _) in GPU_PEAKS.items() if key in name), float("nan"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(mnist: data.Mnist, device: torch.device, images_count: int, warmup_steps: int) -> dict:
    """Images/s of the reference recipe's training steps, augmentation included."""
    config = TrainConfig()
    images, labels = data.to_tensors(mnist.train, device)
    torch.manual_seed(0)
    model = DigitNet(config.model).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr, alpha=config.rho, eps=config.eps)
    generator = torch.Generator().manual_seed(1)
    warmup = EpochProgress(torch.arange(warmup_steps * config.batch_size, device=device))
    train_one_epoch(model, optimizer, images, labels, config, generator, warmup)
    order = torch.randperm(len(labels), generator=generator)[:images_count].to(device)
    progress = EpochProgress(order)
    sync(device)
    start = time.perf_counter()
    train_one_epoch(model, optimizer, images, labels, config, generator, progress)
    sync(device)
    seconds = time.perf_counter() - start
    per_second = progress.seen / seconds
    return {
        "what": f"training, reference recipe (batch {config.batch_size}, augmentation)",
        "images_per_second": per_second,
        "seconds_per_epoch": round(len(labels) * (1 - config.val_fraction)) / per_second,
        "gflops": per_second * 3 * forward_flops(model) / 1e9,
    }


def measure_inference(model: torch.nn.Module, device: torch.device, batch: int, repeats: int) -> dict:
    """Batched throughput of the model in eval mode."""
    images = torch.rand(batch, 1, 28, 28, device=device)
    with torch.inference_mode():
        predict_logits(model, images, batch)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            predict_logits(model, images, batch)
        sync(device)
    per_second = batch * repeats / (time.perf_counter() - start)
    return {
        "what": f"inference, PyTorch, batch {batch}",
        "images_per_second": per_second,
        "gflops": per_second * forward_flops(model) / 1e9,
    }


def measure_latency(model: torch.nn.Module, device: torch.device, calls: int) -> dict:
    """Single-image latency, p50 and p99, in milliseconds."""
    image = torch.rand(1, 1, 28, 28, device=device)
    times = []
    with torch.inference_mode():
        for i in range(calls + 20):
            start = time.perf_counter()
            predict_logits(model, image, 1)
            sync(device)
            if i >= 20:  # the first calls warm caches and allocators
                times.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(times, n=100)
    return {"what": "latency, PyTorch, 1 image", "p50_ms": quantiles[49], "p99_ms": quantiles[98]}


def run(args: argparse.Namespace) -> Result:
    device = pick_device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cuda":
        machine, peak = torch.cuda.get_device_name(device), gpu_peak_gflops(device)
    else:
        machine, peak = f"{cpu_name()}, {os.cpu_count()} cores", cpu_peak_gflops(threads)
    if args.peak_gflops:
        peak = args.peak_gflops
    result = Result(machine, str(device), threads, torch.__version__, peak)
    mnist = data.load(data.locate(args.data_dir))
    model = DigitNet().to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    if not args.skip_training:
        result.rows.append(measure_training(mnist, device, args.train_images, warmup_steps=10))
    result.rows.append(measure_inference(model, device, batch=1000, repeats=args.repeats))
    result.rows.append(measure_latency(model, device, calls=args.latency_calls))
    for row in result.rows:
        if "gflops" in row:
            row["share_of_peak"] = row["gflops"] / peak
    return result


def format_table(result: Result) -> str:
    lines = [
        f"machine: {result.machine}; device {result.device}, {result.threads} threads, torch {result.torch}",
        f"estimated fp32 peak: {result.peak_gflops:,.0f} GFLOP/s",
        "",
        f"{'measurement':<55}{'images/s':>12}{'s/epoch':>9}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}",
    ]
    for row in result.rows:

        def cell(key: str, fmt: str, width: int, row: dict = row) -> str:
            return f"{format(row[key], fmt):>{width}}" if key in row else " " * (width - 1) + "-"

        lines.append(
            f"{row['what']:<55}{cell('images_per_second', ',.0f', 12)}{cell('seconds_per_epoch', '.1f', 9)}"
            f"{cell('gflops', '.1f', 9)}{cell('share_of_peak', '.0%', 9)}{cell('p50_ms', '.3f', 8)}"
            f"{cell('p99_ms', '.3f', 8)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--train-images", type=int, default=12_800, help="images timed for training")
    parser.add_argument("--repeats", type=int, default=10, help="batches of 1,000 timed for inference")
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--peak-gflops", type=float, help="the device's fp32 peak, if known better")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
