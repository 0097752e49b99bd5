"""The benchmark scripts run and report what they promise (tiny settings: this checks the
scripts, it measures nothing)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_speed_benchmark_reports_pytorch_and_onnx_rows(tmp_path, mnist_dir):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    args = ["--skip-training", "--skip-fast", "--batch", "16", "--repeats", "2", "--latency-calls", "10"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed.py"), *args, "--json-out", str(out)],
        env={**os.environ, "MNIST_DIGITS_DATA": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    names = [row["what"] for row in result["rows"]]
    assert names == [
        "inference, PyTorch, batch 16",
        "latency, PyTorch, 1 image",
        "inference, ONNX Runtime fp32, batch 16",
        "latency, ONNX Runtime fp32, 1 image",
        "inference, ONNX Runtime int8, batch 16",
        "latency, ONNX Runtime int8, 1 image",
    ]
    for row in result["rows"]:
        assert row.get("images_per_second", 1) > 0 and row.get("p50_ms", 1) > 0
        assert row.get("p99_ms", 1) >= row.get("p50_ms", 0)
    assert "estimated fp32 peak" in done.stdout and "ONNX Runtime int8" in done.stdout
