"""The benchmark scripts run and report what they promise (tiny settings: this checks the
scripts, it measures nothing)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_outside_mnist_benchmark_reads_digits_in_the_uci_format(test_digits, reference_recognizer):
    """The control path of benchmarks/outside_mnist.py, which needs no scikit-learn: MNIST test
    digits turned into UCI's 8x8 block counts, scaled back up and read like anyone's image."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import outside_mnist
    finally:
        sys.path.remove(str(BENCHMARKS))

    counts = outside_mnist.mnist_as_uci(test_digits.images)
    assert counts.shape == (len(test_digits.labels), 8, 8)
    assert counts.min() == 0 and counts.max() == 16  # inked pixels of a 4x4 block
    ones = counts[test_digits.labels == 1]
    assert (ones.sum(1) > 0).sum(1).mean() < 5  # a 1 keeps its shape: narrow, not stretched square
    image = outside_mnist.as_image(counts[0])
    assert image.shape == (48, 48) and image.dtype == np.uint8

    predicted = outside_mnist.read(reference_recognizer, *outside_mnist.prepare(counts))
    row = outside_mnist.score("reference", False, "control", predicted, test_digits.labels)
    assert row.errors == int((predicted != test_digits.labels).sum())
    assert 0.9 < row.accuracy < 1.0  # the 8x8 format loses detail, but digits stay readable
    assert row.low < row.accuracy < row.high
    assert "->" in row.confusions
    table = outside_mnist.format_table([row])
    assert "control" in table and f"{row.accuracy:.2%}" in table


def test_outside_mnist_benchmark_reports_stress_rows_from_the_models_own_validation_digits(
    mnist, reference_recognizer
):
    """Each stress kind beside the validation row, from the digits the model held out; an ensemble
    whose members held out different digits gets none, with the reason."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import outside_mnist
    finally:
        sys.path.remove(str(BENCHMARKS))
    from mnist_digits import stress
    from mnist_digits.errors import MnistDigitsError
    from mnist_digits.predict import load_model
    from mnist_digits.train import held_out

    split, which = outside_mnist.validation_split(reference_recognizer, mnist, 40)
    assert which == "val_fraction 0.1, split seed 0"
    assert np.array_equal(split.images, held_out([reference_recognizer.metadata], mnist).images[:40])
    kinds = ["thick", "16x16"]
    rows = outside_mnist.stress_rows(
        "reference", False, reference_recognizer, split, stress.stress_sets(split, kinds)
    )
    assert [r.digits_from for r in rows] == ["validation", "stress: thick", "stress: 16x16"]
    assert all(r.digits == 40 and r.low <= r.accuracy <= r.high for r in rows)
    assert rows[0].vs_validation is None
    assert [r.vs_validation for r in rows[1:]] == pytest.approx(
        [r.accuracy - rows[0].accuracy for r in rows[1:]]
    )
    table = outside_mnist.format_table(rows)
    assert "vs val" in table and f"{100 * rows[1].vs_validation:+.2f}" in table

    with pytest.raises(MnistDigitsError, match="held out different validation images"):
        outside_mnist.validation_split(load_model("ensemble"), mnist, 40)
