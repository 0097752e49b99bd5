"""Training and inference speed on this machine, against its peak.

    python benchmarks/speed.py                  # table on stdout (about 6 minutes on 2 CPU cores,
                                                # a few more with the Keras peer)
    python benchmarks/speed.py --json-out speed.json --skip-fast

Training throughput runs the real training step of the reference recipe (data held as one
tensor, batched augmentation, forward, backward, RMSprop) on a slice of MNIST. The fast
recipe is then trained in full and its wall time and official test accuracy reported (time
to 99.5%). Inference measures batched throughput and single-image latency of the shipped
reference model with PyTorch and, when the [onnx] extra is installed, ONNX Runtime (fp32 and
int8); with --auto-runtime, also the runtimes `--runtime auto` takes here. FLOP/s are
counted from the model's convolutions and dense layers (a training step is about 3x a forward
pass) and compared with the machine's peak, estimated from its cores, clock and vector width
(or --peak-gflops).

When TensorFlow is at hand (this interpreter, the repository's .venv-keras, or --keras-python),
the same invocation then runs benchmarks/keras_peer.py, the notebook's Keras code, with the
same threads, training slice and inference batch, and each comparable row shows Keras' number
and how many times faster ours is. The training rows, ours and Keras', are measured in turn,
--rounds times (3 unless told), and each shows its median round: on a shared host the speed of
one machine drifts by a fifth over minutes, so a ratio of two single measurements minutes apart
says little.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from machine import cpu_flags, cpu_name, describe_cpu  # benchmarks/machine.py

from mnist_digits import allocator, data, pretrained
from mnist_digits.device import pick_device
from mnist_digits.evaluate import evaluate_model
from mnist_digits.model import DigitNet, forward_flops, predict_logits
from mnist_digits.recipes import TrainConfig, recipe
from mnist_digits.resume import EpochProgress
from mnist_digits.train import fit, train_one_epoch

# Dense (non-tensor-core) fp32 and bf16 tensor-core peaks, TFLOP/s, from the vendors' sheets.
GPU_PEAKS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0), "L4": (30.3, 121.0)}
HERE = Path(__file__).resolve().parent
KERAS_VENV_PYTHON = HERE.parent / ".venv-keras" / "bin" / "python"
KERAS_INSTALL = "python3.11 -m venv .venv-keras && .venv-keras/bin/pip install tensorflow-cpu scipy"
KERAS_TIMEOUT = 3600  # seconds; the peer takes a few minutes at the default sizes on 2 cores


@dataclass
class Result:
    machine: str
    device: str
    threads: int
    torch: str
    peak_gflops: float  # fp32 peak of the device used, estimated
    rows: list[dict] = field(default_factory=list)  # one per measurement
    cpu: str = ""  # model name and the notable flags it has and lacks
    cpu_flags: list[str] = field(default_factory=list)  # of machine.NOTABLE_FLAGS
    keras: dict | None = None  # keras_peer.py's output (versions, threads, rows), when it ran
    # images/s of each training round: {"fp32": ..., "bf16": ..., "keras": ...}, ours and Keras' in turn
    training_rounds: list[dict] = field(default_factory=list)


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


def measure_training(
    mnist: data.Mnist, device: torch.device, images_count: int, warmup_steps: int, precision: str = "fp32"
) -> dict:
    """Images/s of the reference recipe's training steps, augmentation included, with malloc set
    as `mnist-digits train` sets it."""
    allocator.keep_freed_memory()
    config = TrainConfig(precision=precision)
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
        "what": f"training, reference recipe (batch {config.batch_size}, augmentation, {precision})",
        "peer": "training",  # Keras' row trains in fp32, as the notebook does; `auto` takes bf16 where native
        "images_per_second": per_second,
        "seconds_per_epoch": round(len(labels) * (1 - config.val_fraction)) / per_second,
        "gflops": per_second * 3 * forward_flops(model) / 1e9,
    }


def measure_fast_recipe(mnist: data.Mnist, device: torch.device) -> dict:
    """Train the fast recipe in full; its training wall time and official test accuracy."""
    config = recipe("fast")
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(config, mnist, Path(run_dir), device=device, progress=False, log=lambda _: None)
    accuracy = evaluate_model(result.model, mnist.test, device).accuracy
    return {
        "what": f"fast recipe, {config.epochs} epochs: training time to test accuracy",
        "train_seconds": result.train_seconds,
        "test_accuracy": accuracy,
    }


def time_batches(predict: Callable[[], object], batch: int, repeats: int, device: torch.device) -> float:
    """Images per second of `predict`, which runs one batch."""
    predict()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        predict()
    sync(device)
    return batch * repeats / (time.perf_counter() - start)


def time_calls(predict: Callable[[], object], calls: int, device: torch.device) -> dict:
    """p50 and p99 of single calls, in milliseconds, after 20 warm-up calls."""
    times = []
    for i in range(calls + 20):
        start = time.perf_counter()
        predict()
        sync(device)
        if i >= 20:  # the first calls warm caches and allocators
            times.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(times, n=100)
    return {"p50_ms": quantiles[49], "p99_ms": quantiles[98]}


def measure_pytorch(model: torch.nn.Module, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Batched throughput and single-image latency of the model in eval mode."""
    batch = torch.rand(args.batch, 1, 28, 28, device=device)
    image = torch.rand(1, 1, 28, 28, device=device)
    with torch.inference_mode():
        per_second = time_batches(
            lambda: predict_logits(model, batch, args.batch), args.batch, args.repeats, device
        )
        latency = time_calls(lambda: predict_logits(model, image, 1), args.latency_calls, device)
    flops = forward_flops(model)
    return [
        {
            "what": f"inference, PyTorch, batch {args.batch}",
            "peer": "inference",
            "images_per_second": per_second,
            "gflops": per_second * flops / 1e9,
        },
        {"what": "latency, PyTorch, 1 image", "peer": "latency", **latency},
    ]


def measure_onnx(model: torch.nn.Module, mnist: data.Mnist, args: argparse.Namespace) -> list[dict]:
    """The same for the model exported to ONNX, fp32 and int8, under ONNX Runtime."""
    from mnist_digits.export import OnnxModel, export_onnx, quantize_int8

    cpu = torch.device("cpu")
    flops = forward_flops(model)
    batch = torch.rand(args.batch, 1, 28, 28).numpy()
    image = batch[:1]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(model.cpu(), Path(folder) / "model.onnx")
        calibration = data.to_tensors(data.Split(mnist.train.images[:512], mnist.train.labels[:512]))[0]
        int8 = quantize_int8(fp32, Path(folder) / "model-int8.onnx", calibration.numpy())
        for kind, path in (("fp32", fp32), ("int8", int8)):
            session = OnnxModel.load(path)
            per_second = time_batches(lambda s=session: s.logits(batch), args.batch, args.repeats, cpu)
            rows.append(
                {
                    "what": f"inference, ONNX Runtime {kind}, batch {args.batch}",
                    "peer": "inference",
                    "images_per_second": per_second,
                    "gflops": per_second * flops / 1e9,
                }
            )
            rows.append(
                {
                    "what": f"latency, ONNX Runtime {kind}, 1 image",
                    "peer": "latency",
                    **time_calls(lambda s=session: s.logits(image), args.latency_calls, cpu),
                }
            )
    return rows


def measure_auto(model: torch.nn.Module, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """The same for what `--runtime auto` takes here for the reference model (chosen now, or read
    from the cache): its runtime for batches and its runtime for one image."""
    from mnist_digits.runtime_choice import choose_runtime
    from mnist_digits.runtimes import build_runtime

    path = pretrained.resolve("reference")
    choice = choose_runtime(model, path, device)
    print(choice.describe(), file=sys.stderr)
    batch = torch.rand(args.batch, 1, 28, 28).numpy()
    threads = torch.get_num_threads()
    batched, single = (
        build_runtime(name, model, path, device, threads) for name in (choice.name, choice.single)
    )
    per_second = time_batches(lambda: batched.logits(batch), args.batch, args.repeats, device)
    return [
        {
            "what": f"inference, auto runtime ({choice.name}), batch {args.batch}",
            "peer": "inference",
            "images_per_second": per_second,
            "gflops": per_second * forward_flops(model) / 1e9,
        },
        {
            "what": f"latency, auto runtime ({choice.single}), 1 image",
            "peer": "latency",
            **time_calls(lambda: single.logits(batch[:1]), args.latency_calls, device),
        },
    ]


def keras_python(given: Path | None) -> Path | None:
    """The interpreter for keras_peer.py: `given`, else this one if it has TensorFlow, else the
    repository's .venv-keras; None when there is none."""
    if given is not None:
        return given
    if importlib.util.find_spec("tensorflow") is not None:
        return Path(sys.executable)
    return KERAS_VENV_PYTHON if KERAS_VENV_PYTHON.is_file() else None


def peer_python(args: argparse.Namespace, device: torch.device) -> Path | None:
    """The interpreter that runs the Keras peer in this invocation; None, with a note why where it
    runs nowhere (--skip-keras says so itself)."""
    if args.skip_keras:
        return None
    if device.type != "cpu":
        print(
            "Keras rows skipped: keras_peer.py runs on the CPU; compare there with --device cpu",
            file=sys.stderr,
        )
        return None
    python = keras_python(args.keras_python)
    if python is None:
        print(f"Keras rows skipped: no TensorFlow here; install it with `{KERAS_INSTALL}`", file=sys.stderr)
    return python


def run_keras_peer(
    python: Path, data_dir: Path, threads: int, args: argparse.Namespace, training: bool, inference: bool
) -> dict | None:
    """keras_peer.py's JSON, run with our threads, training slice and inference sizes, for its
    training row, its inference rows or both; None (with a note) when it fails. Its progress and
    errors reach the terminal as they happen."""
    command = [str(python), str(HERE / "keras_peer.py"), "--data-dir", str(data_dir)]
    command += ["--threads", str(threads), "--train-images", str(args.train_images), "--warmup-steps", "10"]
    command += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    command += ["--latency-calls", str(args.latency_calls)]
    command += [] if training else ["--skip-training"]
    command += [] if inference else ["--skip-inference"]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=KERAS_TIMEOUT, check=True)
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as e:
        print(f"Keras rows skipped: keras_peer.py under {python} failed ({e})", file=sys.stderr)
        return None


def median_round(rows: list[dict]) -> dict:
    """The round of median speed (the lower of the two middle ones for an even count), with every
    round's images/s under "rounds"."""
    ordered = sorted(rows, key=lambda row: row["images_per_second"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [row["images_per_second"] for row in rows]}


def measure_training_rounds(
    mnist: data.Mnist, device: torch.device, args: argparse.Namespace, peer: Callable[[], dict | None] | None
) -> tuple[list[dict], dict | None, list[dict]]:
    """Our training rows and Keras' (`peer` runs it; None: no Keras), measured `args.rounds` times
    in turn, so that a machine whose speed drifts over minutes (a shared host's does) moves ours and
    Keras' alike. Each row is its median round. Returns our rows, Keras' training row (None without
    Keras) and each round's images/s."""
    precisions = ["fp32"] + (["bf16"] if args.bf16 else [])
    ours: dict[str, list[dict]] = {precision: [] for precision in precisions}
    keras: list[dict] = []
    rounds: list[dict] = []
    for _ in range(args.rounds):
        speeds = {}
        for precision in precisions:
            ours[precision].append(measure_training(mnist, device, args.train_images, 10, precision))
            speeds[precision] = ours[precision][-1]["images_per_second"]
        run = peer() if peer is not None else None
        row = next((row for row in run["rows"] if row["kind"] == "training"), None) if run else None
        if row is not None:
            keras.append(row)
            speeds["keras"] = row["images_per_second"]
        rounds.append(speeds)
    return [median_round(rows) for rows in ours.values()], median_round(keras) if keras else None, rounds


def compare_with_keras(rows: list[dict], keras: dict, forward_gflop: float) -> None:
    """Give each of our rows that has a Keras peer the fastest Keras way's number and the speedup
    (how many times faster ours is); Keras' rows get their GFLOP/s, counted from our model."""
    for row in keras["rows"]:
        if "images_per_second" in row:
            passes = 3 if row["kind"] == "training" else 1  # a training step is about 3 forward passes
            row["gflops"] = row["images_per_second"] * passes * forward_gflop
    for row in rows:
        peers = [peer for peer in keras["rows"] if peer["kind"] == row.get("peer")]
        if not peers:
            continue
        if "images_per_second" in row:
            best = max(peers, key=lambda peer: peer["images_per_second"])
            row["keras"] = best["images_per_second"]
            row["speedup"] = row["images_per_second"] / best["images_per_second"]
        else:
            best = min(peers, key=lambda peer: peer["p50_ms"])
            row["keras"], row["speedup"] = best["p50_ms"], best["p50_ms"] / row["p50_ms"]
        row["keras_what"] = best["what"]


def run(args: argparse.Namespace) -> Result:
    device = pick_device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cuda":
        machine, peak = torch.cuda.get_device_name(device), gpu_peak_gflops(device)
    else:
        machine, peak = f"{cpu_name()}, {os.cpu_count()} cores", cpu_peak_gflops(threads)
    if args.peak_gflops:
        peak = args.peak_gflops
    result = Result(machine, str(device), threads, torch.__version__, peak, cpu=describe_cpu())
    result.cpu_flags = cpu_flags()
    data_dir = data.locate(args.data_dir)
    mnist = data.load(data_dir)
    model = pretrained.load("reference", device).model.to(memory_format=torch.channels_last)
    python = peer_python(args, device)
    keras_training = None
    if not args.skip_training:
        peer = None
        if python is not None:
            peer = partial(run_keras_peer, python, data_dir, threads, args, training=True, inference=False)
        training, keras_training, result.training_rounds = measure_training_rounds(mnist, device, args, peer)
        result.rows += training
    if not args.skip_fast:
        result.rows.append(measure_fast_recipe(mnist, device))
    result.rows += measure_pytorch(model, device, args)
    try:
        result.rows += measure_onnx(model, mnist, args)
    except ImportError as e:
        print(f"ONNX Runtime rows skipped ({e}); install the [onnx] extra for them", file=sys.stderr)
    if args.auto_runtime:
        result.rows += measure_auto(model, device, args)
    if python is not None:
        result.keras = run_keras_peer(python, data_dir, threads, args, training=False, inference=True)
        if result.keras is not None and keras_training is not None:
            result.keras["rows"].insert(0, keras_training)
    if result.keras:
        compare_with_keras(result.rows, result.keras, forward_flops(model) / 1e9)
    for row in result.rows + (result.keras["rows"] if result.keras else []):
        if "gflops" in row:
            row["share_of_peak"] = row["gflops"] / peak
    return result


def format_row(row: dict, keras_columns: bool) -> str:
    """One measurement as a table line; '-' where it has no value."""

    def cell(key: str, fmt: str, width: int) -> str:
        return f"{format(row[key], fmt):>{width}}" if key in row else " " * (width - 1) + "-"

    line = (
        f"{row['what']:<55}{cell('images_per_second', ',.0f', 12)}{cell('seconds_per_epoch', '.1f', 9)}"
        f"{cell('gflops', '.1f', 9)}{cell('share_of_peak', '.0%', 9)}{cell('p50_ms', '.3f', 8)}"
        f"{cell('p99_ms', '.3f', 8)}"
    )
    if keras_columns:  # Keras' number is in the row's own unit: images/s, or p50 ms for latency
        line += cell("keras", ",.0f" if "images_per_second" in row else ".3f", 10)
        line += f"{row['speedup']:>8.2f}x" if "speedup" in row else cell("speedup", "", 9)
    return line


def format_table(result: Result) -> str:
    keras = result.keras
    lines = [
        f"machine: {result.machine}; device {result.device}, {result.threads} threads, torch {result.torch}",
        f"cpu: {result.cpu}",
        f"estimated fp32 peak: {result.peak_gflops:,.0f} GFLOP/s",
        "",
        f"{'measurement':<55}{'images/s':>12}{'s/epoch':>9}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}" + (f"{'Keras':>10}{'speedup':>9}" if keras else ""),
    ]
    lines += [format_row(row, bool(keras)) for row in result.rows if "train_seconds" not in row]
    if keras:
        lines.append(
            "Keras: the fastest Keras way below, in the row's unit (images/s; p50 ms for latency); "
            "speedup: how many times faster ours is."
        )
        lines.append(
            "\nKeras peer (benchmarks/keras_peer.py: training in turn with ours, inference after): "
            f"TensorFlow {keras['tensorflow']}, "
            f"Keras {keras['keras']}, {keras['intra_op_threads']} intra-op and {keras['inter_op_threads']} "
            f"inter-op threads, XLA {'on' if keras['jit_compile'] else 'off'}"
        )
        lines += [format_row(row, False) for row in keras["rows"]]
    if len(result.training_rounds) > 1:
        lines.append(
            f"\ntraining, {len(result.training_rounds)} rounds in turn (each row above: its median round)"
        )
        for number, speeds in enumerate(result.training_rounds, 1):
            cells = [f"{name} {value:,.0f}" for name, value in speeds.items()]
            if "keras" in speeds:
                cells += [
                    f"{name}/Keras {value / speeds['keras']:.2f}x"
                    for name, value in speeds.items()
                    if name != "keras"
                ]
            lines.append(f"  round {number}: " + ", ".join(cells) + " images/s" * ("keras" not in speeds))
    for row in result.rows:
        if "train_seconds" in row:
            reached = "reached" if row["test_accuracy"] >= 0.995 else "NOT reached"
            lines.append(
                f"\n{row['what']}: {row['train_seconds']:.0f} s of training, "
                f"test accuracy {row['test_accuracy']:.2%} (99.5% {reached})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--train-images", type=int, default=12_800, help="images timed for training")
    parser.add_argument("--batch", type=int, default=1000, help="images per batch for inference")
    parser.add_argument("--repeats", type=int, default=10, help="batches timed for inference")
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--skip-training", action="store_true", help="no training-throughput row")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times the training rows (ours and Keras', in turn) are measured; each row is the median",
    )
    parser.add_argument("--skip-fast", action="store_true", help="do not train the fast recipe")
    parser.add_argument("--bf16", action="store_true", help="also time training with bf16 autocast")
    parser.add_argument(
        "--auto-runtime",
        action="store_true",
        help="also time the runtimes `--runtime auto` takes here (choosing them first, unless cached)",
    )
    parser.add_argument("--peak-gflops", type=float, help="the device's fp32 peak, if known better")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--keras-python",
        type=Path,
        help="Python with TensorFlow for the Keras peer (default: this one if it has TensorFlow, "
        "else .venv-keras/bin/python beside the repository)",
    )
    parser.add_argument("--skip-keras", action="store_true", help="no Keras peer rows")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    result = run(args)
    print(format_table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
