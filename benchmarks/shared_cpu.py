"""Training speed when another process keeps one core busy, for each thread setting.

    python benchmarks/shared_cpu.py                  # about 4 minutes on 2 CPU cores
    python benchmarks/shared_cpu.py --precision bf16 --images 12800

Runs the reference recipe's training step (benchmarks/speed.py's measurement) in a fresh
process for each setting: OpenMP's threads waiting actively, PyTorch's default (spin 300,000
turns, then sleep), shorter spins (`mnist-digits train` sets GOMP_SPINCOUNT=10000), the passive
wait policy (sleep at once), and one thread (what `train` runs on when another process holds a
core as it starts). Each runs on an idle machine and again while a busy loop holds CPU 0, as
another job on a shared machine would. Needs Linux (the busy loop is pinned with
sched_setaffinity).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "active wait (OMP_WAIT_POLICY=ACTIVE)": {"OMP_WAIT_POLICY": "ACTIVE"},
    "PyTorch default (spin, then sleep)": {},
    "spin 1,000, then sleep": {"GOMP_SPINCOUNT": "1000"},
    "spin 10,000, then sleep": {"GOMP_SPINCOUNT": "10000"},
    "spin 100,000, then sleep": {"GOMP_SPINCOUNT": "100000"},
    "passive wait (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}
OURS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")  # the variables the settings choose
# One measurement in a child process: the images/s of speed.py's training row, printed as JSON.
MEASURE = """
import json, sys
sys.path.insert(0, {here!r})
import torch
from speed import measure_training
from mnist_digits import data
mnist = data.load(data.locate({data_dir!r}, log=lambda m: None))
row = measure_training(mnist, torch.device("cpu"), {images}, warmup_steps=5, precision={precision!r})
print(json.dumps({{"images_per_second": row["images_per_second"], "threads": torch.get_num_threads()}}))
"""


def busy_loop() -> subprocess.Popen:
    """A process that spins on CPU 0 until killed."""
    code = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def measure(env: dict[str, str], images: int, data_dir: str | None, timeout: float, precision: str) -> dict:
    code = MEASURE.format(here=str(HERE), data_dir=data_dir, images=images, precision=precision)
    child_env = {k: v for k, v in os.environ.items() if k not in OURS}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**child_env, **env},
            stdout=subprocess.PIPE,  # the child's errors reach this terminal as they happen
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return {"images_per_second": images / timeout, "threads": None, "note": f"over {timeout:.0f} s"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3200, help="training images timed per measurement")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a measurement is cut")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the training step's")
    parser.add_argument("--data-dir")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rows = []
    for state in ("idle", "CPU 0 busy"):
        spinner = busy_loop() if state != "idle" else None
        time.sleep(0.5 if spinner else 0)
        try:
            for name, env in SETTINGS.items():
                result = measure(env, args.images, args.data_dir, args.timeout, args.precision)
                rows.append({"state": state, "setting": name, **result})
                print(
                    f"{state:<11} {name:<40} {result['images_per_second']:>8,.0f} images/s", file=sys.stderr
                )
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    step = f"reference recipe's training step ({args.precision})"
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; {step}, images/s")
    print(f"{'setting':<40}{'idle':>10}{'CPU 0 busy':>12}{'ratio':>8}")
    for name in SETTINGS:
        idle, busy = (
            next(r for r in rows if r["state"] == s and r["setting"] == name) for s in ("idle", "CPU 0 busy")
        )
        ratio = busy["images_per_second"] / idle["images_per_second"]
        print(
            f"{name:<40}{idle['images_per_second']:>10,.0f}{busy['images_per_second']:>12,.0f}{ratio:>8.2f}"
        )
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"machine": cpu_name(), "precision": args.precision, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
