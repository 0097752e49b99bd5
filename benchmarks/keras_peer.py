"""The reference recipe written the way a TF-Keras user writes the notebook, timed the way
benchmarks/speed.py times ours; one JSON object on stdout, progress on stderr.

    pip install tensorflow-cpu scipy              # scipy: ImageDataGenerator's affine warps
    python benchmarks/keras_peer.py --data-dir DIR --threads 2
    python benchmarks/keras_peer.py --data-dir DIR --accuracy --epochs 20 --skip-training --skip-inference

Sequential model, ImageDataGenerator.flow, RMSprop, ReduceLROnPlateau, fit and predict, as
in the notebook. Training throughput is fit's steady state on a slice (the warm-up steps,
which trace the step function, are left out); inference is model.predict and a direct
model(x, training=False) call, batched and one image at a time. Standalone: it needs
TensorFlow and numpy, not mnist_digits (speed.py runs it in TensorFlow's own environment).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

BATCH_SIZE = 64  # images per optimizer step, the notebook's
PARAMS = 730_602  # the reference network's parameter count; a peer with any other is not the reference
VAL_IMAGES = 6_000  # training images held out for validation (val_fraction 0.1 of 60,000)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: unsigned bytes, 3 dimensions / 1 dimension


class PeerError(Exception):
    """A problem this script reports in one line and exits on (a missing or damaged MNIST file)."""


# --- MNIST from its IDX files ---------------------------------------------------------------------


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A uint8 array from an IDX file, raw or gzip (by its first bytes), magic and size checked."""
    content = path.read_bytes()
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except (EOFError, OSError, zlib.error) as e:
            raise PeerError(f"{path}: the gzip stream is damaged ({e}); fetch the file again.") from e
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(content) < header or struct.unpack(">i", content[:4])[0] != magic:
        raise PeerError(f"{path}: not an IDX file with magic number {magic}; is it the right MNIST file?")
    dims = struct.unpack(f">{ndim}i", content[4:header])
    if len(content) != header + math.prod(dims):
        raise PeerError(
            f"{path}: the header promises {dims} = {header + math.prod(dims):,} bytes, the file holds "
            f"{len(content):,}; fetch it again."
        )
    return np.frombuffer(content, np.uint8, offset=header).reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of 'train' or 't10k', from NAME or NAME.gz."""
    arrays = []
    for kind, magic, ndim in (("images", IMAGES_MAGIC, 3), ("labels", LABELS_MAGIC, 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        path = next((p for p in (data_dir / name, data_dir / f"{name}.gz") if p.is_file()), None)
        if path is None:
            raise PeerError(
                f"{data_dir}: {name} (or {name}.gz) is missing; give the folder of the MNIST files."
            )
        arrays.append(read_idx(path, magic))
    images, labels = arrays
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise PeerError(
            f"{data_dir}: {prefix} holds {images.shape} images and {len(labels):,} labels, not MNIST's."
        )
    return images, labels


def as_inputs(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels scaled to [0, 1] in Keras' channels-last shape (N, 28, 28, 1), labels one-hot (N, 10)."""
    return images.reshape(-1, 28, 28, 1).astype("float32") / 255.0, np.eye(10, dtype="float32")[labels]


# --- the notebook ---------------------------------------------------------------------------------


def build_model() -> Any:
    """The reference network as a Sequential model, compiled with the notebook's loss and optimizer."""
    import tensorflow as tf

    layers = tf.keras.layers
    # He-normal conv kernels, as the reference (and our DigitNet) initializes them.
    conv: dict[str, Any] = {"kernel_size": 3, "activation": "relu", "kernel_initializer": "he_normal"}
    # fmt: off
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        layers.Conv2D(32, **conv),                   # (26, 26, 32) valid
        layers.Conv2D(32, **conv),                   # (24, 24, 32) valid
        layers.MaxPooling2D(2),                      # (12, 12, 32)
        layers.Dropout(0.20),
        layers.Conv2D(64, padding="same", **conv),   # (12, 12, 64)
        layers.Conv2D(64, padding="same", **conv),   # (12, 12, 64)
        layers.MaxPooling2D(2),                      # (6, 6, 64)
        layers.Dropout(0.25),
        layers.Conv2D(128, padding="same", **conv),  # (6, 6, 128)
        layers.Dropout(0.25),
        layers.Flatten(),                            # (4608,)
        layers.Dense(128, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.25),
        layers.Dense(10, activation="softmax"),
    ])
    # fmt: on
    if model.count_params() != PARAMS:
        raise PeerError(f"the Keras model has {model.count_params():,} parameters, the reference {PARAMS:,}.")
    model.compile(
        optimizer=tf.keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def augmenter() -> Any:
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator(
        rotation_range=15, zoom_range=0.1, width_shift_range=0.1, height_shift_range=0.1
    )


def plateau() -> Any:
    """The notebook's schedule; it watched 'val_acc', a name Keras no longer logs, so it never fired."""
    import tensorflow as tf

    return tf.keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", patience=3, factor=0.5, min_lr=1e-5)


def clock() -> Any:
    """A callback noting when each training step and each epoch ends."""
    import tensorflow as tf

    class Clock(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step_ends: list[float] = []
            self.epoch_spans: list[float] = []  # seconds, validation included

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_start = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.step_ends.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_spans.append(time.perf_counter() - self.epoch_start)

    return Clock()


def split_validation(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[tuple, tuple]:
    """(train, validation) inputs: 6,000 training images held out at random."""
    order = np.random.default_rng(seed).permutation(len(labels))
    val, train = order[:VAL_IMAGES], order[VAL_IMAGES:]
    return as_inputs(images[train], labels[train]), as_inputs(images[val], labels[val])


# --- measurements ---------------------------------------------------------------------------------


def measure_training(model: Any, train: tuple, images_count: int, warmup_steps: int, seed: int) -> dict:
    """Images/s of fit on the augmenting flow, after `warmup_steps` steps (which trace the step)."""
    steps = max(1, images_count // BATCH_SIZE)
    timer = clock()
    flow = augmenter().flow(*train, batch_size=BATCH_SIZE, seed=seed)
    model.fit(flow, epochs=1, steps_per_epoch=warmup_steps + steps, callbacks=[timer], verbose=0)
    seconds = timer.step_ends[-1] - timer.step_ends[warmup_steps - 1]
    per_second = steps * BATCH_SIZE / seconds
    return {
        "what": f"training, Keras fit(ImageDataGenerator.flow), batch {BATCH_SIZE}",
        "kind": "training",
        "images_per_second": per_second,
        "seconds_per_epoch": len(train[1]) / per_second,
    }


def measure_full_epoch(model: Any, train: tuple, val: tuple, seed: int) -> dict:
    """Wall time of a whole epoch as the notebook runs it: the second of two, validation included."""
    timer = clock()
    flow = augmenter().flow(*train, batch_size=BATCH_SIZE, seed=seed)
    model.fit(flow, epochs=2, validation_data=val, callbacks=[plateau(), timer], verbose=0)
    return {
        "what": f"one epoch, Keras fit ({len(train[1]):,} images, validation included)",
        "kind": "epoch",
        "seconds": timer.epoch_spans[1],
        "first_epoch_seconds": timer.epoch_spans[0],  # traces the last, smaller batch and validation
    }


def time_batches(predict: Callable[[], object], batch: int, repeats: int) -> float:
    """Images per second of `predict`, which runs one batch, after one untimed call."""
    predict()
    start = time.perf_counter()
    for _ in range(repeats):
        predict()
    return batch * repeats / (time.perf_counter() - start)


def time_calls(predict: Callable[[], object], calls: int) -> dict:
    """p50 and p99 of single calls, in milliseconds, after 20 warm-up calls (as speed.py)."""
    times = []
    for i in range(calls + 20):
        start = time.perf_counter()
        predict()
        if i >= 20:
            times.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(times, n=100)
    return {"p50_ms": quantiles[49], "p99_ms": quantiles[98]}


def measure_inference(model: Any, images: np.ndarray, batch: int, repeats: int, calls: int) -> list[dict]:
    """Batched throughput and one-image latency of model.predict and of a direct call."""
    pixels = np.resize(images, (batch, 28, 28, 1))  # repeats the test images past 10,000
    image = pixels[:1]
    ways: dict[str, Callable[[np.ndarray], object]] = {
        "model.predict": lambda x: model.predict(x, batch_size=batch, verbose=0),
        "model(x, training=False)": lambda x: np.asarray(model(x, training=False)),
    }
    rows = []
    for name, run in ways.items():
        per_second = time_batches(partial(run, pixels), batch, repeats)
        rows.append(
            {
                "what": f"inference, Keras {name}, batch {batch}",
                "kind": "inference",
                "images_per_second": per_second,
            }
        )
    for name, run in ways.items():
        rows.append(
            {
                "what": f"latency, Keras {name}, 1 image",
                "kind": "latency",
                **time_calls(partial(run, image), calls),
            }
        )
    return rows


def train_for_accuracy(train: tuple, val: tuple, test: tuple, epochs: int, seed: int) -> dict:
    """The whole recipe, as the notebook trains it, and its official test accuracy."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = build_model()
    flow = augmenter().flow(*train, batch_size=BATCH_SIZE, seed=seed)
    start = time.perf_counter()
    history = model.fit(flow, epochs=epochs, validation_data=val, callbacks=[plateau()], verbose=2)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(*test, batch_size=1000, verbose=0)
    return {
        "what": f"reference recipe in Keras, {epochs} epochs: training time to test accuracy",
        "kind": "accuracy",
        "train_seconds": seconds,  # validation included
        "val_accuracy": history.history["val_accuracy"][-1],
        "test_accuracy": float(accuracy),
    }


# --- the script -----------------------------------------------------------------------------------


def set_threads(threads: int | None) -> None:
    """Intra- and inter-op pools of `threads` each (TensorFlow's own default is one per core for both)."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def run(args: argparse.Namespace) -> dict:
    """Every measurement asked for, as one JSON-ready dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices, not errors
    import tensorflow as tf

    set_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)
    train_images, train_labels = load_split(args.data_dir, "train")
    test = as_inputs(*load_split(args.data_dir, "t10k"))
    train, val = split_validation(train_images, train_labels, args.seed)
    model = build_model()
    rows = []
    if not args.skip_training:
        print(f"timing fit on {args.train_images:,} images ...", file=sys.stderr)
        rows.append(measure_training(model, train, args.train_images, args.warmup_steps, args.seed))
    if args.full_epoch:
        print("timing two whole epochs ...", file=sys.stderr)
        rows.append(measure_full_epoch(model, train, val, args.seed))
    if not args.skip_inference:
        print("timing predict and direct calls ...", file=sys.stderr)
        rows += measure_inference(model, test[0], args.batch, args.repeats, args.latency_calls)
    if args.accuracy:
        rows.append(train_for_accuracy(train, val, test, args.epochs, args.seed))
    return {
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0: one per core
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),  # on by default on x86
        "jit_compile": bool(model.jit_compile),  # Keras turns XLA off on CPU-only machines
        "params": model.count_params(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIGITS_DATA"))
    parser.add_argument("--threads", type=int, help="intra- and inter-op threads (default: one per core)")
    parser.add_argument("--train-images", type=int, default=12_800, help="images timed for training")
    parser.add_argument("--warmup-steps", type=int, default=10, help="training steps run before the clock")
    parser.add_argument("--batch", type=int, default=1000, help="images per batch for inference")
    parser.add_argument("--repeats", type=int, default=10, help="batches timed for inference")
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--skip-training", action="store_true", help="no training-throughput row")
    parser.add_argument("--skip-inference", action="store_true", help="no inference or latency rows")
    parser.add_argument("--full-epoch", action="store_true", help="also time a whole epoch")
    parser.add_argument(
        "--accuracy", action="store_true", help="also train the whole recipe for test accuracy"
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the --accuracy run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("give --data-dir (or set MNIST_DIGITS_DATA): the folder of the four MNIST files")
    if (
        min(args.train_images, args.warmup_steps, args.batch, args.repeats, args.latency_calls, args.epochs)
        < 1
    ):
        parser.error(
            "--train-images, --warmup-steps, --batch, --repeats, --latency-calls and --epochs must be >= 1"
        )
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints progress on stdout; it holds the JSON
            result = run(args)
    except (PeerError, OSError) as e:
        print(f"keras_peer: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
