"""Damaged and hostile files met where a user meets them: model files in evaluate, predict, serve
and summary; IDX headers and gzip bombs in data, train and --extra-idx; folders of links and
float images in predict. Each ends in exit code 1 and a one-line `error: ...`, never a traceback."""

import gzip
import json
import logging
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_bytes

from mnist_digits import checkpoint, idx, pretrained
from mnist_digits.cli import main
from mnist_digits.errors import CheckpointError
from mnist_digits.model import DigitNet, ModelConfig

TINY = ModelConfig(channels=(4, 8, 8), hidden=16)


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    """Exit code 1 and a single `error: ...` line on stderr holding every fragment."""
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


# --- model files: every header field checked before anything is built --------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, DigitNet(TINY), {"val_accuracy": 0.5, "history": []})
    return path


@pytest.fixture
def ensemble_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "ensemble.safetensors"
    networks = [DigitNet(TINY), DigitNet(TINY)]
    checkpoint.save_ensemble(path, networks, [{}, {}], {}, weights_dtype="int8")
    return path


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def joined(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def rewrite_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The file with its safetensors header edited in place; the tensors' bytes untouched."""
    header, data = split(path.read_bytes())
    edit(header)
    path.write_bytes(joined(header, data))
    return path


def metadata_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        metadata = json.loads(header["__metadata__"]["metadata"])
        change(metadata)
        header["__metadata__"]["metadata"] = json.dumps(metadata)

    return edit


def config_edit(**values: Any) -> Callable[[dict[str, Any]], None]:
    return metadata_edit(lambda m: m["model_config"].update(values))


HEADER_CASES = {
    # the header's own fields
    "no-metadata-key": (lambda h: h["__metadata__"].pop("metadata"), "the header has no metadata"),
    "metadata-not-json": (lambda h: h["__metadata__"].update(metadata="{oops"), "its metadata is not JSON"),
    "metadata-a-list": (lambda h: h["__metadata__"].update(metadata="[1, 2]"), "is list, not a JSON object"),
    "metadata-a-number": (lambda h: h["__metadata__"].update(metadata="7"), "is int, not a JSON object"),
    "no-format": (lambda h: h["__metadata__"].pop("format"), "not an mnist-digits model file"),
    "checksum-not-hex": (lambda h: h["__metadata__"].update(tensors_sha256="zz"), "is not a sha256"),
    "tensor-shape-wraps": (
        lambda h: h["model.0.weight"].update(shape=[2**30, 2**30, 16]),
        "does not fit its bytes",
    ),
    "tensor-dtype-unknown": (
        lambda h: h["model.0.weight"].update(dtype="F4"),
        "which these files do not hold",
    ),
    "tensor-offsets-outside": (
        lambda h: h["model.0.weight"].update(data_offsets=[0, 10**12]),
        "does not fit its bytes",
    ),
    # the model config, every field
    "no-model-config": (metadata_edit(lambda m: m.pop("model_config")), "has no model_config"),
    "config-a-string": (metadata_edit(lambda m: m.update(model_config="big")), "not an object of its fields"),
    "channels-too-few": (config_edit(channels=[4, 8]), "channels (4, 8): give three whole numbers"),
    "channels-negative": (config_edit(channels=[4, -8, 8]), "channels (4, -8, 8)"),
    "channels-absurd": (config_edit(channels=[4, 8, 10**7]), "channels (4, 8, 10000000)"),
    "channels-fractional": (config_edit(channels=[4, 8, 8.5]), "channels (4, 8, 8.5)"),
    "hidden-a-string": (config_edit(hidden="16"), "hidden '16'"),
    "hidden-zero": (config_edit(hidden=0), "hidden 0"),
    "dropout-five": (config_edit(dropout=5.0), "dropout 5.0: give a probability"),
    "dropout-first-negative": (config_edit(dropout_first=-0.1), "dropout_first -0.1"),
    "bn-eps-zero": (config_edit(bn_eps=0), "bn_eps 0"),
    "bn-momentum-two": (config_edit(bn_momentum=2), "bn_momentum 2"),
    "conv-batchnorm-yes": (config_edit(conv_batchnorm="yes"), "conv_batchnorm 'yes'"),
    "kernel-even": (config_edit(kernel=4), "kernel 4: give an odd size"),
    "kernel-huge": (config_edit(kernel=10**400), "kernel 1000"),
    "config-unknown-field": (config_edit(width=3), "does not know (width)"),
    "config-missing-field": (metadata_edit(lambda m: m["model_config"].pop("hidden")), "lacks hidden"),
    "config-other-network": (config_edit(channels=[8, 8, 8]), "do not fit the architecture"),
    # the other fields the commands read
    "accuracy-a-word": (metadata_edit(lambda m: m.update(test_accuracy="high")), "test_accuracy 'high'"),
    "accuracy-over-one": (metadata_edit(lambda m: m.update(val_accuracy=99.5)), "val_accuracy 99.5"),
    "history-a-string": (metadata_edit(lambda m: m.update(history="long")), "history is wrong"),
    "history-epoch-lacks-lr": (
        metadata_edit(lambda m: m.update(history=[{"epoch": 1, "train_loss": 0.1}])),
        "epoch 1 lacks train_accuracy",
    ),
    "environment-a-list": (metadata_edit(lambda m: m.update(environment=[1])), "environment [1]"),
    "train-config-a-list": (metadata_edit(lambda m: m.update(train_config=[])), "train_config is wrong"),
    "train-seconds-negative": (metadata_edit(lambda m: m.update(train_seconds=-1)), "train_seconds -1"),
}
COMMANDS = {
    "summary": lambda path: ["summary", "--model", str(path)],
    "evaluate": lambda path: ["evaluate", "--model", str(path)],
    "predict": lambda path: ["predict", "--model", str(path), "digit.png"],
    "serve": lambda path: ["serve", "--model", str(path), "--port", "0"],
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_a_tampered_model_header_is_one_line_error(model_file, case, capsys):
    edit, fragment = HEADER_CASES[case]
    rewrite_header(model_file, edit)
    with pytest.raises(CheckpointError, match=r"\A[^\n]*\Z"):  # one line from the library too
        checkpoint.load_model(model_file)
    command = list(COMMANDS)[sorted(HEADER_CASES).index(case) % len(COMMANDS)]
    one_line_error(capsys, main(COMMANDS[command](model_file)), str(model_file), fragment)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_loads_a_model_refuses_a_tampered_one(model_file, command, capsys):
    rewrite_header(model_file, config_edit(channels=[4, 8, 10**7]))
    one_line_error(capsys, main(COMMANDS[command](model_file)), "channels (4, 8, 10000000)")


ENSEMBLE_CASES = {
    "members-a-dict": (metadata_edit(lambda m: m.update(members={})), "members is wrong"),
    "member-not-object": (metadata_edit(lambda m: m["members"].__setitem__(1, 3)), "members is wrong"),
    "member-without-config": (
        metadata_edit(lambda m: m["members"][1].pop("model_config")),
        "the metadata of network 2 has no model_config",
    ),
    "member-dropout-five": (
        metadata_edit(lambda m: m["members"][1]["model_config"].update(dropout=5.0)),
        "members[1].model_config is wrong: dropout 5.0",
    ),
    "member-an-ensemble": (
        metadata_edit(lambda m: m["members"][0].update(members=[])),
        "members[0] is an ensemble itself",
    ),
    "too-many-members": (
        metadata_edit(lambda m: m.update(members=m["members"] * 600)),
        "1,200 networks, over the limit of 1,000",
    ),
    "one-member-fewer": (
        metadata_edit(lambda m: m.update(members=m["members"][:1])),
        "a tensor of no network of the ensemble",
    ),
    "weights-dtype-int4": (metadata_edit(lambda m: m.update(weights_dtype="int4")), "weights_dtype 'int4'"),
}


@pytest.mark.parametrize("case", ENSEMBLE_CASES)
def test_a_tampered_ensemble_header_is_one_line_error(ensemble_file, case, capsys):
    edit, fragment = ENSEMBLE_CASES[case]
    rewrite_header(ensemble_file, edit)
    one_line_error(capsys, main(["summary", "--model", str(ensemble_file)]), str(ensemble_file), fragment)


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.update({"scale.member0.model.99.weight": t.pop("scale.member0.model.0.weight")}),
        lambda t: t.update({"scale.member0.model.0.weight": torch.ones(3)}),
        lambda t: t.update({"scale.member0.model.0.bias": torch.ones(4)}),
    ],
    ids=["scale-of-nothing", "scale-too-short", "scale-of-a-float"],
)
def test_int8_scales_that_do_not_match_their_weights(ensemble_file, damage, capsys):
    tensors, metadata = checkpoint._read_stored(ensemble_file)
    damage(tensors)
    checkpoint.save(ensemble_file, tensors, metadata)  # written whole, with a checksum that agrees
    code = main(["summary", "--model", str(ensemble_file)])
    one_line_error(capsys, code, "int8 weights and their scales do not match")


def test_no_network_is_built_before_every_member_is_checked(ensemble_file, monkeypatch):
    rewrite_header(ensemble_file, metadata_edit(lambda m: m["members"][1]["model_config"].update(hidden=8)))
    built = []
    original = DigitNet.__init__

    def counting(self, config=None):
        built.append(torch.empty(0).device.type)  # the meta layouts of the checks run under "meta"
        original(self, config)

    monkeypatch.setattr(DigitNet, "__init__", counting)
    with pytest.raises(CheckpointError, match="of network 2 do not fit the architecture"):
        checkpoint.load_model(ensemble_file)
    assert "cpu" not in built  # only meta layouts, which allocate nothing


def test_non_finite_weights_are_refused(tmp_path):
    model = DigitNet(TINY)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    checkpoint.save_model(path, model, {})
    with pytest.raises(CheckpointError, match=r"0\.weight holds NaN or infinite values"):
        checkpoint.load_model(path)


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(Exception, match=r"dropout 5\.0"):
        ModelConfig(dropout=5.0)
    with pytest.raises(Exception, match="channels"):
        ModelConfig(channels=(4, 8, 10**7))
    assert ModelConfig.from_dict({**TINY.to_dict(), "channels": [4, 8, 8]}) == TINY


# --- weights' checksum ----------------------------------------------------------------------------


def xor_weight_bytes(path: Path, count: int) -> None:
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    rng = np.random.default_rng(0)
    for offset in rng.choice(len(raw) - start, size=count, replace=False):
        raw[start + int(offset)] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(raw))


def test_corrupted_weights_fail_the_checksum(model_file, capsys):
    xor_weight_bytes(model_file, 2000)
    one_line_error(
        capsys, main(["evaluate", "--model", str(model_file)]), "do not match the checksum", "damaged"
    )


def test_one_flipped_bit_and_a_swapped_name_fail_the_checksum(tmp_path):
    model = DigitNet(TINY)
    with torch.no_grad():
        model[0].bias.copy_(torch.arange(4.0))  # two biases of 4 numbers that differ
        model[2].bias.copy_(-torch.arange(4.0))
    model_file = tmp_path / "model.safetensors"
    checkpoint.save_model(model_file, model, {})
    good = model_file.read_bytes()
    xor_weight_bytes(model_file, 1)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        checkpoint.load_model(model_file)

    def swap(header: dict[str, Any]) -> None:  # the same shapes: only the checksum can tell
        header["model.0.bias"], header["model.2.bias"] = header["model.2.bias"], header["model.0.bias"]

    model_file.write_bytes(good)
    rewrite_header(model_file, swap)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        checkpoint.load_model(model_file)


def old_style(path: Path) -> Path:
    """The file as versions before the checksum wrote it: the same tensors, no tensors_sha256."""
    tensors, metadata = checkpoint.read(path)
    header = {"format": checkpoint.FORMAT, "metadata": json.dumps(metadata, sort_keys=True)}
    path.write_bytes(save_bytes(tensors, metadata=header))
    return path


def test_a_file_without_a_checksum_loads_with_a_note(model_file, caplog):
    old_style(model_file)
    with caplog.at_level(logging.WARNING, logger="mnist_digits"):
        loaded = checkpoint.load_model(model_file)
    assert loaded.metadata["val_accuracy"] == 0.5
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith(f"note: {model_file} records no checksum")


def test_the_note_reaches_a_user_as_one_plain_line(model_file):
    old_style(model_file)
    result = subprocess.run(
        [sys.executable, "-m", "mnist_digits", "summary", "--model", str(model_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"note: {model_file} records no checksum of its weights (it was written by an older version), "
        "so damage to them cannot be detected."
    ]


def test_rewriting_an_old_file_adds_the_checksum_and_keeps_the_tensors(model_file, caplog):
    old_style(model_file)
    before, _ = checkpoint._read_stored(model_file)
    checkpoint.update_metadata(model_file, {"test_accuracy": 0.25})
    header, _ = split(model_file.read_bytes())
    after, metadata = checkpoint._read_stored(model_file)
    assert header["__metadata__"][checkpoint.CHECKSUM_KEY] == checkpoint.tensors_sha256(before)
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert metadata["test_accuracy"] == 0.25


def test_the_shipped_files_carry_their_checksum_and_load_without_a_note(caplog):
    with caplog.at_level(logging.WARNING, logger="mnist_digits"):
        for name, path in pretrained.available().items():
            header, _ = split(path.read_bytes())
            assert len(header["__metadata__"][checkpoint.CHECKSUM_KEY]) == 64, name
            checkpoint.read(path)
    assert not caplog.records


def test_loading_reads_the_file_once(model_file, monkeypatch):
    reads = []
    original_read_bytes, original_open = Path.read_bytes, open

    def read_bytes(self: Path) -> bytes:
        reads.append(("read_bytes", self))
        return original_read_bytes(self)

    def counting_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file) == str(model_file):
            reads.append(("open", file))
        return original_open(file, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr("builtins.open", counting_open)
    checkpoint.load_model(model_file)
    assert reads == [("read_bytes", model_file)]


# --- IDX headers and gzip bombs -----------------------------------------------------------------


def write_mnist(directory: Path, replace: dict[str, bytes]) -> Path:
    """Four small, well-formed IDX files, some replaced by the given bytes."""
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(10) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        content = replace.get(name, idx.encode_idx(array))
        (directory / (f"{name}.gz" if content[:2] == b"\x1f\x8b" else name)).write_bytes(content)
    return directory


WRAPPING = struct.pack(">iiii", idx.IMAGES_MAGIC, 2**30, 2**30, 16)  # 2**64 bytes: 0 in int64


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "no-verify"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_a_header_whose_size_wraps_is_refused_by_data(tmp_path, capsys, verify, compress):
    content = gzip.compress(WRAPPING) if compress else WRAPPING
    directory = write_mnist(tmp_path / "data", {"train-images-idx3-ubyte": content})
    code = main(["data", "--data-dir", str(directory), *([] if verify else ["--no-verify"])])
    one_line_error(
        capsys, code, "train-images-idx3-ubyte", "18,446,744,073,709,551,632 bytes", "over the limit"
    )


def test_a_header_whose_size_wraps_is_refused_by_train(tmp_path, capsys):
    directory = write_mnist(tmp_path / "data", {"t10k-images-idx3-ubyte": WRAPPING})
    code = main(["train", "--data-dir", str(directory), "--no-verify", "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, "t10k-images-idx3-ubyte", "over the limit")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_header_whose_size_wraps_is_refused_by_extra_idx(tmp_path, capsys):
    from mnist_digits.feedback import IMAGES_FILE, LABELS_FILE

    directory = write_mnist(tmp_path / "data", {})
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / IMAGES_FILE).write_bytes(WRAPPING)
    (extra / LABELS_FILE).write_bytes(idx.encode_idx(np.zeros(3, np.uint8)))
    code = main(
        [
            *("train", "--data-dir", str(directory), "--no-verify", "--extra-idx", str(extra)),
            *("--out", str(tmp_path / "run"), "--dry-run", "--epochs", "1"),
        ]
    )
    one_line_error(capsys, code, IMAGES_FILE, "over the limit")


def test_parse_idx_checks_sizes_with_python_integers():
    with pytest.raises(idx.IdxError, match=r"truncated: the header promises .* = 18,446,744,073,709,551,632"):
        idx.parse_idx(WRAPPING, idx.IMAGES_MAGIC, "images")


def gzip_bomb(header: bytes, expanded: int) -> bytes:
    """A gzip stream of `header` then zeros, `expanded` bytes in all, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    parts = [packer.compress(header)]
    zeros = bytes(2**20)
    for _ in range((expanded - len(header)) // len(zeros)):
        parts.append(packer.compress(zeros))
    return b"".join([*parts, packer.flush()])


def test_a_gzip_bomb_stops_at_what_its_header_promises(tmp_path, capsys):
    header = struct.pack(">iiii", idx.IMAGES_MAGIC, 20, 28, 28)
    bomb = gzip_bomb(header, 128 * 2**20)  # 128 MiB of output from ~130 KB
    directory = write_mnist(tmp_path / "data", {"train-images-idx3-ubyte": bomb})
    tracemalloc.start()
    try:
        code = main(["data", "--data-dir", str(directory), "--no-verify"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_line_error(capsys, code, "more than the 15,696 bytes its header promises", "decompression bomb")
    assert peak < 16 * 2**20  # the stream is never held, only what the header promised and a chunk


@pytest.mark.parametrize(
    "header",
    [b"\x00" * 16, struct.pack(">ii", idx.LABELS_MAGIC, 2**31 - 1)],
    ids=["not-idx", "promises-2-GB"],
)
def test_a_gzip_bomb_with_a_hostile_header_is_refused_at_the_header(tmp_path, header):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip_bomb(header, 64 * 2**20))
    tracemalloc.start()
    try:
        with pytest.raises(idx.IdxError, match=r"magic number 0|over the limit"):
            idx.parse_idx(idx.read_bytes(path), idx.LABELS_MAGIC, str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_a_raw_file_longer_than_its_header_is_not_read_to_the_end(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx.encode_idx(np.zeros(3, np.uint8)) + bytes(32 * 2**20))
    tracemalloc.start()
    try:
        with pytest.raises(idx.IdxError, match=f"has trailing bytes: .* holds {8 + 3 + 32 * 2**20:,}"):
            idx.read_bytes(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


# --- folders: every file found gets a row --------------------------------------------------------


def digit_png(path: Path) -> Path:
    canvas = np.zeros((28, 28), np.uint8)
    canvas[5:23, 12:16] = 255  # a "1"
    Image.fromarray(canvas).save(path)
    return path


def test_links_that_lead_nowhere_keep_their_rows_in_a_folder(tmp_path, tiny_model_file, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    digit_png(folder / "a.png")
    (folder / "loop1.png").symlink_to(folder / "loop2.png")
    (folder / "loop2.png").symlink_to(folder / "loop1.png")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    os.mkfifo(folder / "pipe.png")  # opening it would wait for a writer forever
    (folder / "sub.png").mkdir()  # a folder: not a file, no row
    code = main(["predict", "--model", str(tiny_model_file), "--json", str(folder)])
    out = capsys.readouterr().out
    rows = {Path(row["source"]).name: row for row in json.loads(out)}
    assert code == 1
    assert sorted(rows) == ["a.png", "dangling.png", "loop1.png", "loop2.png", "pipe.png"]
    assert rows["a.png"]["error"] is None
    assert "symbolic links" in rows["loop1.png"]["error"] and "symbolic links" in rows["loop2.png"]["error"]
    assert "no such file" in rows["dangling.png"]["error"]
    assert "not a regular file" in rows["pipe.png"]["error"]
    glob_code = main(["predict", "--model", str(tiny_model_file), "--json", str(folder / "loop*.png")])
    assert glob_code == 1 and len(json.loads(capsys.readouterr().out)) == 2


def test_a_folder_that_cannot_be_listed_gets_a_row(tmp_path, tiny_model_file, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    digit_png(folder / "a.png")
    folder.chmod(0)
    if os.geteuid() == 0:  # root lists every folder: the refusal the kernel gives others, then
        listing = Path.iterdir

        def iterdir(self: Path):  # type: ignore[no-untyped-def]
            if self == folder:
                raise PermissionError(13, "Permission denied", str(folder))
            return listing(self)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    try:
        code = main(["predict", "--model", str(tiny_model_file), str(folder)])
    finally:
        folder.chmod(0o755)
    assert code == 1
    [row] = capsys.readouterr().out.splitlines()[1:]
    assert row.startswith(str(folder)) and row.endswith("error: cannot list this folder (Permission denied).")


# --- float images: out-of-range values are never silently misread ------------------------------


def float_tiff(path: Path, block: float) -> Path:
    values = np.zeros((60, 60), np.float32)
    values[10:50, 27:33] = 1.0  # a "1" in [0, 1]
    values[2:7, 2:7] = block
    Image.fromarray(values).save(path, format="TIFF")
    assert Image.open(path).mode == "F"
    return path


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        (2.0, "pixel values from 0 to 2: a floating-point image must hold values from 0 to 1"),
        (float("inf"), "NaN or infinite pixel values"),
        (float("nan"), "NaN or infinite pixel values"),
        (-0.5, "pixel values from -0.5 to 1"),
    ],
    ids=["two", "inf", "nan", "negative"],
)
def test_a_float_tiff_out_of_range_is_an_error_row(tmp_path, tiny_model_file, capsys, block, fragment):
    path = float_tiff(tmp_path / "scan.tif", block)
    code = main(["predict", "--model", str(tiny_model_file), str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert fragment in out.splitlines()[1] and "error: " in out.splitlines()[1]


def test_float_images_in_range_still_read(tmp_path):
    from mnist_digits import images

    unit = float_tiff(tmp_path / "unit.tif", 0.5)
    assert images.to_grayscale(images.open_image(unit)).max() == pytest.approx(1.0)
    whole = np.zeros((600, 600), np.float32)
    whole[100:500, 280:320] = 255.0  # 0-255 floats, large enough to be shrunk first
    Image.fromarray(whole).save(tmp_path / "whole.tif", format="TIFF")
    small = images.shrink(images.open_image(tmp_path / "whole.tif"), 100)
    assert images.to_grayscale(small).max() == pytest.approx(1.0)
    deep = np.full((4, 4), 70000, np.int32)
    with pytest.raises(Exception, match="pixel values from 70000 to 70000"):
        images.to_grayscale(deep)
