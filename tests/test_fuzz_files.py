"""Random and mutated files: model headers, IDX headers, image bytes. Whatever the bytes, reading
them either works or raises one of the project's errors (MnistDigitsError and its kinds) with a
one-line message; never a KeyError, a numpy error, a Rust panic or anything else.

Each suite is seeded (a failure names its seed and case, to replay) and bounded both in cases
and in seconds, so the whole file runs in a few seconds.
"""

import gzip
import io
import json
import math
import random
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_digits import checkpoint, data, idx, images
from mnist_digits.errors import CheckpointError, DataError, InputError, MnistDigitsError
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.preprocess import prepare_digit

SEED = 20261201
CASES = 300  # per suite, at most...
SECONDS = 0.8  # ...and no longer than this


def cases(seed: int) -> Iterator[tuple[int, random.Random]]:
    """(case number, its own random generator) until CASES or SECONDS run out."""
    deadline = time.monotonic() + SECONDS
    for case in range(CASES):
        if time.monotonic() > deadline:
            return
        yield case, random.Random(seed * 1_000_003 + case)


def outcome(read: Callable[[], object], expected: type[MnistDigitsError], where: str) -> str:
    """'ok' or 'error' (one of `expected`'s kind); fails on any other exception, or on an error
    message that is empty or of several lines."""
    try:
        read()
    except expected as e:
        assert "\n" not in str(e) and str(e), f"{where}: {e!r}"
        return "error"
    except BaseException as e:  # a Rust panic is a BaseException: it must not get out either
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from e
    return "ok"


# --- values a mutation writes -------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of the kinds that break naive readers: huge, negative, NaN, wrong type, nested."""
    kinds: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.choice([0, 1, -1, 3, 7, 2**31, 2**63, 2**64 + 16, 10**7, 10**400, -(2**40)]),
        lambda: rng.randint(-1000, 1000),
        lambda: rng.choice([0.0, 0.5, 1.0, 1.5, 5.0, -0.25, 1e-12, 1e308, math.inf, -math.inf, math.nan]),
        lambda: rng.choice(["", "x", "float32", "int8", "F32", "mnist-digits/1", "0" * 64, "\x00", "é" * 3]),
    ]
    if depth < 3:
        kinds += [
            lambda: [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
            lambda: {rng.choice(["a", "epoch", "lr", "channels"]): random_value(rng, depth + 1)},
        ]
    return rng.choice(kinds)()


def mutate_tree(value: Any, rng: random.Random) -> Any:
    """`value` (nested dicts and lists) with one node replaced, removed, or given a new key."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value, key=str))
        action = rng.random()
        if action < 0.15:
            return {k: v for k, v in value.items() if k != key}
        if action < 0.25:
            return {**value, rng.choice(["extra", "members", "model_config", "kernel"]): random_value(rng)}
        return {**value, key: mutate_tree(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        action = rng.random()
        if action < 0.15:
            return value[:i] + value[i + 1 :]
        if action < 0.25:
            return [*value, random_value(rng)]
        return [*value[:i], mutate_tree(value[i], rng), *value[i + 1 :]]
    return random_value(rng)


def mutate_bytes(raw: bytes, rng: random.Random, region: tuple[int, int] | None = None) -> bytes:
    """Bytes flipped, cut, doubled or inserted, within `region` (start, end) if given."""
    start, end = region or (0, len(raw))
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        at = rng.randrange(start, max(start + 1, min(end, len(data))))
        if action < 0.5 and data:
            data[min(at, len(data) - 1)] ^= rng.randrange(1, 256)
        elif action < 0.65:
            del data[at:]
        elif action < 0.8:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[at:at] = data[at : at + rng.randint(1, 64)]
    return bytes(data)


# --- model headers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-models")
    torch.manual_seed(0)
    tiny = ModelConfig(channels=(2, 2, 2), hidden=4, conv_batchnorm=True)
    checkpoint.save_model(folder / "model.safetensors", DigitNet(tiny), {"history": [], "val_accuracy": 0.5})
    checkpoint.save_ensemble(
        folder / "ensemble.safetensors", [DigitNet(tiny), DigitNet(tiny)], [{}, {}], {}, weights_dtype="int8"
    )
    return {name: (folder / f"{name}.safetensors").read_bytes() for name in ("model", "ensemble")}


def header_of(raw: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def file_of(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()  # NaN and Infinity as Python writes them
    return len(text).to_bytes(8, "little") + text + data


def mutated_model(raw: bytes, rng: random.Random) -> bytes:
    header, data = header_of(raw)
    choice = rng.random()
    if choice < 0.55:  # a field of the metadata object, the model config, a member...
        fields = header["__metadata__"]
        metadata = json.loads(fields["metadata"])
        for _ in range(rng.randint(1, 3)):
            metadata = mutate_tree(metadata, rng)
        fields["metadata"] = json.dumps(metadata) if rng.random() < 0.95 else json.dumps(metadata)[:-1]
    elif choice < 0.8:  # the safetensors header: __metadata__, a tensor's dtype, shape or offsets
        header = mutate_tree(header, rng)
        if not isinstance(header, dict):
            return file_of({"x": header}, data) if rng.random() < 0.5 else file_of({}, data)
    elif choice < 0.9:  # the header's bytes themselves
        length = int.from_bytes(raw[:8], "little")
        return mutate_bytes(raw, rng, (0, 8 + length))
    else:  # the length prefix
        return rng.choice([0, 1, 2**63, len(raw), len(raw) - 9]).to_bytes(8, "little") + raw[8:]
    return file_of(header, data)


@pytest.mark.parametrize("kind", ["model", "ensemble"])
def test_mutated_model_headers_load_or_raise_checkpoint_errors(model_files, kind, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    seen: dict[str, int] = {}
    for case, rng in cases(SEED + (kind == "ensemble")):
        path.write_bytes(mutated_model(model_files[kind], rng))
        result = outcome(lambda: checkpoint.load_model(path), CheckpointError, f"{kind} case {case}")
        seen[result] = seen.get(result, 0) + 1
    assert seen.get("error", 0) > 0.3 * sum(seen.values()), seen  # the mutations bite


def test_random_bytes_are_no_model_file(tmp_path):
    path = tmp_path / "random.safetensors"
    for case, rng in cases(SEED + 2):
        size = rng.choice([0, 3, 8, 9, 64, 1000])
        head = rng.choice([b"", struct.pack("<Q", rng.randrange(2**64)), struct.pack("<Q", 2)])
        path.write_bytes(head + bytes(rng.randrange(256) for _ in range(size)))
        result = outcome(lambda: checkpoint.load_model(path), CheckpointError, f"random case {case}")
        assert result == "error"


# --- IDX headers ---------------------------------------------------------------------------------


def random_idx(rng: random.Random) -> bytes:
    magic = rng.choice([idx.IMAGES_MAGIC, idx.LABELS_MAGIC, 2050, 2052, 0x0D03, 0, -1, rng.randrange(2**32)])
    ndim = rng.choice([0, 1, 2, 3, 4])
    dims = [
        rng.choice([0, 1, 3, 28, 29, -1, 2**30, 2**31 - 1, rng.randrange(-(2**31), 2**31)])
        for _ in range(ndim)
    ]
    header = struct.pack(">I", magic % 2**32) + struct.pack(f">{ndim}i", *dims)
    if rng.random() < 0.5 and all(0 <= d <= 40 for d in dims):
        body_size = math.prod(dims) + rng.choice([0, 0, 0, -1, 1, 100])  # mostly what it promises
    else:
        body_size = rng.choice([0, 1, 784, 3 * 784])
    body = bytes(rng.randrange(256) for _ in range(max(0, min(body_size, 4000))))
    content = header + body
    if rng.random() < 0.2:
        content = mutate_bytes(content, rng)
    return gzip.compress(content, compresslevel=1) if rng.random() < 0.4 else content


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_random_idx_headers_read_or_raise_data_errors(tmp_path, name):
    seen: dict[str, int] = {}
    for case, rng in cases(SEED + 3 + len(name)):
        content = random_idx(rng)
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        (folder / (f"{name}.gz" if content[:2] == b"\x1f\x8b" else name)).write_bytes(content)
        read = lambda folder=folder: data.read_file(folder, name, verify=False)  # noqa: E731
        result = outcome(read, DataError, f"idx case {case}")
        seen[result] = seen.get(result, 0) + 1
    assert seen.get("error", 0) > 0, seen


def test_corrupted_gzip_streams_raise_data_errors(tmp_path):
    good = gzip.compress(idx.encode_idx(np.arange(40, dtype=np.uint8) % 10))
    path = tmp_path / "labels.gz"
    for case, rng in cases(SEED + 4):
        path.write_bytes(mutate_bytes(good, rng))
        outcome(
            lambda: idx.parse_idx(idx.read_bytes(path), idx.LABELS_MAGIC, str(path)), DataError, f"{case}"
        )


# --- image bytes ---------------------------------------------------------------------------------


def sample_images() -> dict[str, bytes]:
    """Small, valid files of every format and many modes: what the mutations start from."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    samples = {}
    for fmt, mode in [
        ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("GIF", "P"),
        ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "F"), ("TIFF", "I"), ("TIFF", "RGB"), ("TIFF", "1"),
    ]:  # fmt: skip
        image = Image.fromarray(gray).convert(mode) if mode not in ("F", "I;16") else None
        if mode == "F":
            image = Image.fromarray(gray.astype(np.float32) / 255)
        if mode == "I;16":
            image = Image.fromarray(gray.astype(np.uint16) * 257)
        buffer = io.BytesIO()
        assert image is not None
        image.save(buffer, format=fmt)
        samples[f"{fmt}-{mode}"] = buffer.getvalue()
    return samples


def read_image(content: bytes) -> None:
    """The path a person's file takes: decoded (with a small pixel limit: fuzzing should be fast),
    turned gray and prepared for the model."""
    prepare_digit(images.open_image(content, max_pixels=250_000, max_side=64))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged TIFF tags it skips
def test_mutated_images_read_or_raise_input_errors():
    samples = sample_images()
    names = sorted(samples)
    seen: dict[str, int] = {}
    for case, rng in cases(SEED + 5):
        name = names[case % len(names)]
        content = mutate_bytes(samples[name], rng, (0, min(len(samples[name]), 200)) if case % 2 else None)
        result = outcome(lambda content=content: read_image(content), InputError, f"{name} case {case}")
        seen[result] = seen.get(result, 0) + 1
    assert seen.get("error", 0) > 0 and seen.get("ok", 0) > 0, seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_bytes_and_arrays_are_no_image():
    for case, rng in cases(SEED + 6):
        prefix = rng.choice(
            [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]
        )
        content = prefix + bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 100, 600])))
        result = outcome(lambda content=content: read_image(content), InputError, f"bytes case {case}")
        assert result == "error"
        shape = rng.choice([(5, 6), (5, 6, 3), (5, 6, 4), (5, 6, 2), (0, 3), (3,), (4, 4, 1)])
        dtype = rng.choice(
            [np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
        )
        scale = rng.choice([1, 255, 70000, -3, 1e40])
        with np.errstate(over="ignore", invalid="ignore"):  # 1e40 in float16 is inf: a case, not a slip
            array = (np.random.default_rng(case).random(shape) * scale).astype(dtype)
        read = lambda array=array: images.to_grayscale(array)  # noqa: E731
        outcome(read, InputError, f"array case {case}: {dtype.__name__} x {scale}")
