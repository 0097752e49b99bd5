"""The benchmark scripts run and report what they promise (tiny settings: this checks the
scripts, it measures nothing)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_speed_benchmark_reports_pytorch_and_onnx_rows(tmp_path, mnist_dir):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    args = ["--skip-training", "--skip-fast", "--skip-keras", "--batch", "16", "--repeats", "2"]
    args += ["--latency-calls", "10"]
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
    assert f"cpu: {result['cpu']}" in done.stdout and "speedup" not in done.stdout  # no Keras asked for


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
    whose members held out different digits and share too few gets none, with the reason."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import outside_mnist
    finally:
        sys.path.remove(str(BENCHMARKS))
    from mnist_digits import stress
    from mnist_digits.errors import MnistDigitsError
    from mnist_digits.predict import load_model
    from mnist_digits.recipes import held_out

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

    # ten networks of five 10% splits share one digit that none trained on: too few for rows
    with pytest.raises(MnistDigitsError, match=r"different validation images .* only 1 of the training"):
        outside_mnist.validation_split(load_model("ensemble"), mnist, 40)


def test_outside_mnist_reads_each_network_of_robust_on_its_own_held_out_digits(mnist, tmp_path):
    """--members: each network of robust alone has its own split, and gets the same answers as the
    network inside the pair, which is read on the digits both held out; --mistakes draws every
    digit read wrong."""
    outside_mnist = import_benchmark("outside_mnist")
    from mnist_digits import stress
    from mnist_digits.ensemble import members
    from mnist_digits.predict import load_model

    robust = load_model("robust", runtime="torch", precision="fp32")
    alone = outside_mnist.each_network("robust", robust)
    assert [label for label, _ in alone] == ["robust[1]", "robust[2]"]
    assert outside_mnist.each_network("best", load_model("best", runtime="torch")) == []
    splits = [outside_mnist.validation_split(reader, mnist, 60) for _, reader in alone]
    assert splits[0][1] != splits[1][1]  # different seeds held out different digits
    pair, which = outside_mnist.validation_split(robust, mnist, 0)  # the pair: what both held out
    assert which == "the digits all 2 networks held out: val_fraction 0.1, split seeds 1, 2"
    assert outside_mnist.MIN_SHARED <= len(pair.labels) < 6000
    for _, reader in alone:
        own = outside_mnist.validation_split(reader, mnist, 0)[0].images
        assert {d.tobytes() for d in pair.images} <= {d.tobytes() for d in own}
    inputs = splits[0][0].images.astype(np.float32) / 255
    network = members(robust.model)[0]
    with torch.no_grad():
        direct = network(torch.from_numpy(inputs)[:, None]).argmax(1).numpy()
    assert np.array_equal(alone[0][1].probabilities(inputs).argmax(1), direct)

    split = splits[0][0]
    thick = stress.stress_sets(split, ["thick"])
    rows = outside_mnist.stress_rows("robust[1]", False, alone[0][1], split, thick, tmp_path)
    sheet = Image.open(tmp_path / "robust[1]-thick.png")
    cells = -(-rows[1].errors // outside_mnist.SHEET_COLUMNS)
    assert sheet.height == max(1, cells) * (outside_mnist.PANEL + outside_mnist.CAPTION)
    predicted = np.arange(len(split.labels)) % 10  # a reader wrong nine times in ten: all drawn
    drawn = outside_mnist.mistakes_sheet(split.images, thick[0], predicted)
    expected = int((predicted != thick[0].labels).sum())
    assert drawn.height == -(-expected // outside_mnist.SHEET_COLUMNS) * (
        outside_mnist.PANEL + outside_mnist.CAPTION
    )
    first = int(np.flatnonzero(predicted != thick[0].labels)[0])
    panel = np.asarray(drawn)[: outside_mnist.PANEL, : outside_mnist.PANEL]
    enlarged = np.asarray(
        Image.fromarray(split.images[first]).resize((outside_mnist.PANEL,) * 2, Image.Resampling.NEAREST)
    )
    assert np.array_equal(panel, enlarged)  # the first mistake's digit, as it is, top left


def import_benchmark(name: str):
    """benchmarks/NAME.py as a module (they import benchmarks/machine.py as a sibling)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def keras_rows(train: float, predict: float, direct: float, predict_ms: float, direct_ms: float) -> dict:
    """A keras_peer.py result, as its JSON reads."""
    return {
        "tensorflow": "9.9.9",
        "keras": "8.8.8",
        "intra_op_threads": 2,
        "inter_op_threads": 2,
        "onednn": "default",
        "jit_compile": False,
        "params": 730_602,
        "rows": [
            {"what": "training, Keras fit", "kind": "training", "images_per_second": train},
            {"what": "inference, Keras model.predict", "kind": "inference", "images_per_second": predict},
            {"what": "inference, Keras model(x)", "kind": "inference", "images_per_second": direct},
            {"what": "latency, Keras model.predict", "kind": "latency", "p50_ms": predict_ms, "p99_ms": 90.0},
            {"what": "latency, Keras model(x)", "kind": "latency", "p50_ms": direct_ms, "p99_ms": 30.0},
        ],
    }


def test_speed_table_sets_each_comparable_row_beside_the_fastest_keras_way():
    """Ours against Keras' best on training, batch inference and latency; bf16 and ONNX rows have
    no Keras peer, and Keras' own rows follow with their GFLOP/s counted from our network."""
    speed = import_benchmark("speed")
    rng = np.random.default_rng()
    ours = rng.uniform(500, 5000, 3)
    rows = [
        {"what": "training, fp32", "peer": "training", "images_per_second": ours[0], "gflops": 1.0},
        {"what": "training, bf16", "images_per_second": ours[0] / 10},
        {"what": "inference, PyTorch", "peer": "inference", "images_per_second": ours[1]},
        {"what": "latency, PyTorch", "peer": "latency", "p50_ms": ours[2] / 1000, "p99_ms": 9.0},
        {"what": "inference, ONNX Runtime fp32", "images_per_second": ours[1] * 2},
    ]
    keras = keras_rows(*rng.uniform(100, 900, 3), *rng.uniform(2, 80, 2))
    train, predict, direct = (row["images_per_second"] for row in keras["rows"][:3])
    predict_ms, direct_ms = (row["p50_ms"] for row in keras["rows"][3:])
    speed.compare_with_keras(rows, keras, forward_gflop=0.0334)

    assert rows[0]["keras"] == train and rows[0]["speedup"] == pytest.approx(ours[0] / train)
    assert rows[2]["keras"] == max(predict, direct)
    assert rows[2]["speedup"] == pytest.approx(ours[1] / max(predict, direct))
    assert rows[3]["keras"] == min(predict_ms, direct_ms)  # latency: lower is faster
    assert rows[3]["speedup"] == pytest.approx(min(predict_ms, direct_ms) / rows[3]["p50_ms"])
    assert "keras" not in rows[1] and "keras" not in rows[4]
    assert keras["rows"][0]["gflops"] == pytest.approx(train * 3 * 0.0334)  # a step: 3 forward passes
    assert keras["rows"][1]["gflops"] == pytest.approx(predict * 0.0334)

    result = speed.Result("a CPU, 2 cores", "cpu", 2, "2.x", 157.0, rows, cpu="a CPU; avx2", keras=keras)
    table = speed.format_table(result)
    lines = table.splitlines()
    assert "speedup" in lines[4] and "Keras" in lines[4]
    line = next(line for line in lines if line.startswith("training, fp32"))
    assert f"{train:,.0f}" in line and line.endswith(f"{ours[0] / train:.2f}x")
    line = next(line for line in lines if line.startswith("latency, PyTorch"))
    assert line.endswith(f"{min(predict_ms, direct_ms) / rows[3]['p50_ms']:.2f}x")
    assert next(line for line in lines if line.startswith("training, bf16")).endswith("-")
    assert "TensorFlow 9.9.9, Keras 8.8.8, 2 intra-op and 2 inter-op threads, XLA off" in table
    assert any(line.startswith("latency, Keras model(x)") and f"{direct_ms:.3f}" in line for line in lines)
    assert "Keras" not in speed.format_table(speed.Result("a CPU", "cpu", 2, "2.x", 157.0, rows))


def test_speed_training_rows_are_their_median_round_and_the_table_lists_every_round():
    """A host's speed drifts over minutes: the training rows take the median of rounds run in turn
    with Keras', and the table shows each round's ratio."""
    speed = import_benchmark("speed")
    rows = [
        {"what": "training, fp32", "images_per_second": v, "gflops": v / 10} for v in (900.0, 1500.0, 1100.0)
    ]
    middle = speed.median_round(rows)
    assert middle["images_per_second"] == 1100.0 and middle["gflops"] == 110.0
    assert middle["rounds"] == [900.0, 1500.0, 1100.0]  # in the order they ran
    assert speed.median_round(rows[:2])["images_per_second"] == 900.0  # even: the lower middle

    rounds = [
        {"fp32": 1300.0, "bf16": 2000.0, "keras": 1000.0},
        {"fp32": 1200.0, "bf16": 1900.0, "keras": 950.0},
    ]
    result = speed.Result("a CPU", "cpu", 2, "2.x", 157.0, [], training_rounds=rounds)
    table = speed.format_table(result)
    assert "training, 2 rounds in turn" in table
    assert "round 1: fp32 1,300, bf16 2,000, keras 1,000, fp32/Keras 1.30x, bf16/Keras 2.00x" in table
    assert "round 2:" in table and "bf16/Keras 2.00x" in table
    assert "rounds" not in speed.format_table(
        speed.Result("a CPU", "cpu", 2, "2.x", 157.0, [], training_rounds=rounds[:1])
    )


def test_keras_peer_reads_the_real_mnist_files_without_tensorflow(mnist_dir, mnist, tmp_path):
    """keras_peer.py's IDX reader gives the arrays mnist_digits reads, raw or gzip, and refuses a
    file whose magic or length is wrong; its inputs are Keras-shaped, its split disjoint."""
    from mnist_digits import idx

    peer = import_benchmark("keras_peer")
    images, labels = peer.load_split(mnist_dir, "train")
    assert np.array_equal(images, mnist.train.images) and np.array_equal(labels, mnist.train.labels)
    test_images, test_labels = peer.load_split(mnist_dir, "t10k")
    assert np.array_equal(test_images, mnist.test.images) and np.array_equal(test_labels, mnist.test.labels)

    (tmp_path / "raw-images").write_bytes(idx.encode_idx(test_images[:5]))
    assert np.array_equal(peer.read_idx(tmp_path / "raw-images", peer.IMAGES_MAGIC), test_images[:5])
    with pytest.raises(peer.PeerError, match="magic number 2049"):
        peer.read_idx(tmp_path / "raw-images", peer.LABELS_MAGIC)
    (tmp_path / "cut").write_bytes(idx.encode_idx(test_images[:5])[:-1])
    with pytest.raises(peer.PeerError, match="fetch it again"):
        peer.read_idx(tmp_path / "cut", peer.IMAGES_MAGIC)
    with pytest.raises(peer.PeerError, match="missing"):
        peer.load_split(tmp_path, "t10k")

    pixels, onehot = peer.as_inputs(test_images[:100], test_labels[:100])
    assert pixels.shape == (100, 28, 28, 1) and pixels.dtype == np.float32 and pixels.max() <= 1.0
    assert np.array_equal(onehot.argmax(1), test_labels[:100]) and np.all(onehot.sum(1) == 1)
    (train_x, train_y), (val_x, val_y) = peer.split_validation(images[:7000], labels[:7000], seed=0)
    assert len(val_y) == peer.VAL_IMAGES and len(train_y) == 1000
    assert not {row.tobytes() for row in train_x} & {row.tobytes() for row in val_x}


@pytest.mark.slow
def test_speed_benchmark_runs_the_keras_peer_in_the_same_invocation(tmp_path, mnist_dir):
    """End to end with TensorFlow (its own environment, as found by speed.py): Keras' rows in the
    JSON, and Keras' number and the speedup on each comparable row of the table."""
    speed = import_benchmark("speed")
    python = speed.keras_python(None)
    if python is None:
        pytest.skip(f"no TensorFlow for the Keras peer; install it with `{speed.KERAS_INSTALL}`")
    out = tmp_path / "speed.json"
    args = ["--skip-fast", "--train-images", "128", "--batch", "16", "--repeats", "2"]
    args += ["--latency-calls", "10", "--keras-python", str(python), "--json-out", str(out)]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed.py"), *args],
        env={**os.environ, "MNIST_DIGITS_DATA": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["keras"]["params"] == 730_602
    assert result["keras"]["intra_op_threads"] == result["threads"]
    kinds = [row["kind"] for row in result["keras"]["rows"]]
    assert kinds == ["training", "inference", "inference", "latency", "latency"]
    compared = [row for row in result["rows"] if "peer" in row]
    assert len(compared) == 3 and all(row["speedup"] > 0 for row in compared)
    assert "speedup" in done.stdout and f"TensorFlow {result['keras']['tensorflow']}" in done.stdout


def test_precision_benchmark_compares_bf16_with_fp32_and_says_what_auto_takes(tmp_path, mnist_dir):
    out = tmp_path / "precision.json"
    args = ["--models", "reference", "--limit", "300", "--batch", "100", "--json-out", str(out)]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "precision.py"), *args],
        env={**os.environ, "MNIST_DIGITS_DATA": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert done.returncode == (0 if row["passes"] else 1), done.stderr
    assert 0.9 < row["fp32_accuracy"] <= 1 and 0.9 < row["bf16_accuracy"] <= 1
    assert row["same_digit"] > 0.98 and row["bf16_images_per_second"] > 0
    assert row["points_apart"] == pytest.approx(100 * abs(row["bf16_accuracy"] - row["fp32_accuracy"]))
    assert "--precision auto here: precision" in done.stdout and result["auto"] in done.stdout


def test_uci_format_ceiling_trains_a_network_on_mnist_in_the_8x8_format(mnist):
    """benchmarks/uci_format_ceiling.py's own network: MNIST's digits as 8x8 counts, and one short
    epoch on some of them already reads other digits in that format well above chance."""
    ceiling = import_benchmark("uci_format_ceiling")
    train, other = mnist.train.images[:4000], mnist.train.images[4000:4500]
    inputs = ceiling.counts(train)
    assert inputs.shape == (4000, 1, 8, 8) and float(inputs.min()) >= 0 and float(inputs.max()) <= 1
    assert float(inputs.max()) == 1  # a fully inked 4x4 block is 16 of 16
    labels = torch.from_numpy(mnist.train.labels[:4000].astype(np.int64))
    config = ceiling.FormatConfig(epochs=1)
    network = ceiling.train_format_network(inputs, labels, seed=0, config=config)
    assert not network.training
    read = ceiling.accuracy(network, ceiling.counts(other), mnist.train.labels[4000:4500])
    assert read > 0.8, read
    again = ceiling.train_format_network(inputs, labels, seed=0, config=config)
    assert ceiling.accuracy(again, ceiling.counts(other), mnist.train.labels[4000:4500]) == read  # seeded
