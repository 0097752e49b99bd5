"""Shared fixtures. The real MNIST comes from $MNIST_DIGITS_DATA, else ../shared/data/mnist beside the
clone, else the way the product gets it (the user cache, the mirrors, the package index).

With $MNIST_DIGITS_NO_SKIPS=1 (set by CI) a skipped test fails the run: a skip there means a
path went untested for want of data, a browser or a package. Tests for hardware CI lacks are
deselected by their marker (`-m "not gpu"`) instead of skipped.
"""

import gzip
import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mnist_digits import data, idx
from mnist_digits.files import sha256_hex
from mnist_digits.runtimes import CACHE_VAR

# --- the real dataset ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"  # the project's own machines keep a copy here
NO_SKIPS_VAR = "MNIST_DIGITS_NO_SKIPS"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A directory of the four verified MNIST files, obtained as `mnist-digits data --fetch` would."""
    if not os.environ.get(data.ENV_VAR) and SHARED_MNIST.is_dir():
        return SHARED_MNIST
    try:  # $MNIST_DIGITS_DATA as given, else the user cache, filled from the mirrors or the package index
        return data.locate(None, log=lambda message: print(message, file=sys.stderr))
    except data.DataError as e:
        pytest.skip(f"MNIST could not be had by any route (set {data.ENV_VAR} to a copy): {e}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under $MNIST_DIGITS_NO_SKIPS, any skipped test fails the run, naming the skips."""
    if not os.environ.get(NO_SKIPS_VAR):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if (
        skipped and session.exitstatus == pytest.ExitCode.OK
    ):  # a failure, Ctrl-C or usage error keeps its code
        print(f"\n{len(skipped)} test(s) skipped under {NO_SKIPS_VAR}=1; each is a path left untested:")
        for report in skipped:
            print(f"  {report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder for the session's runtime choices and ONNX exports, the servers' it starts included:
    `--runtime auto` chooses once per model in a session, and the user's cache is never read or written."""
    folder = tmp_path_factory.mktemp("runtime-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VAR, str(folder))
        yield folder


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> data.Mnist:
    return data.load(mnist_dir)


# --- data, IDX and download fixtures (test_idx.py, test_data.py, test_download.py) -------------


@pytest.fixture
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset $MNIST_DIGITS_DATA so `locate(None, ...)` goes to the cache, whatever the shell has."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)


@pytest.fixture(scope="session")
def mirror_copies(mnist_dir: Path) -> dict[str, bytes]:
    """Each canonical file as a mirror serves it, gzipped, keyed by file name without `.gz`: the
    canonical .gz files where `mnist_dir` holds them, else gzipped here from its raw files (the
    package-index fallback rebuilds no .gz, and the mirrors may be out of reach)."""
    copies = {}
    for name in data.CANONICAL:
        path = data.find_file(mnist_dir, name)
        assert path is not None, f"{mnist_dir} was verified but lacks {name}"
        raw = path.read_bytes()
        copies[name] = raw if path.suffix == ".gz" else gzip.compress(raw, compresslevel=1, mtime=0)
    return copies


@pytest.fixture
def canonical_gz(mirror_copies: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The .gz bytes that mirrors serve, keyed by file name without `.gz`. Copies gzipped here
    differ from MNIST's published .gz, so for the test `data.CANONICAL` takes their .gz checksum;
    the checksum of the data inside stays MNIST's, and every file is still verified by it."""
    for name, body in mirror_copies.items():
        data_sha256, gz_sha256 = data.CANONICAL[name]
        if sha256_hex(body) != gz_sha256:
            monkeypatch.setitem(data.CANONICAL, name, (data_sha256, sha256_hex(body)))
    return mirror_copies


def synthetic_arrays(n_train: int, n_test: int, n_train_labels: int | None = None) -> dict[str, np.ndarray]:
    """Small, well-formed, non-canonical MNIST arrays keyed by canonical file name."""
    rng = np.random.default_rng(0)
    n_train_labels = n_train if n_train_labels is None else n_train_labels
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train_labels) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }


@pytest.fixture
def tiny_mnist_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a fresh directory of four small synthetic IDX files (raw)."""
    made = itertools.count()

    def build(n_train: int = 12, n_test: int = 6, n_train_labels: int | None = None) -> Path:
        directory = tmp_path / f"tiny{next(made)}"
        directory.mkdir()
        for name, array in synthetic_arrays(n_train, n_test, n_train_labels).items():
            (directory / name).write_bytes(idx.encode_idx(array))
        return directory

    return build


@pytest.fixture
def mnist_variant(tmp_path: Path, mnist_dir: Path) -> Callable[..., Path]:
    """Factory: a fresh directory of the real files (symlinked), some replaced by raw bytes or left out."""
    made = itertools.count()

    def build(replace: dict[str, bytes] | None = None, omit: Sequence[str] = ()) -> Path:
        directory = tmp_path / f"variant{next(made)}"
        directory.mkdir()
        for name in data.CANONICAL:
            if name in omit:
                continue
            if replace and name in replace:
                (directory / name).write_bytes(replace[name])
            else:
                source = data.find_file(mnist_dir, name)
                assert source is not None, f"{mnist_dir} lacks {name}"
                (directory / source.name).symlink_to(source)
        return directory

    return build


Route = Callable[[BaseHTTPRequestHandler], None]  # answers one GET request


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 whose answers are set per path; it records every path asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                server.routes.get(self.path, server.status(404))(self)

            def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def mirror(self, prefix: str, files: dict[str, Route]) -> str:
        """Serve `files` (file name -> route) under `/prefix/`; returns that mirror's base URL."""
        for filename, route in files.items():
            self.routes[f"/{prefix}/{filename}"] = route
        return f"{self.url}/{prefix}/"

    def hits(self, prefix: str) -> list[str]:
        return [path for path in self.requests if path.startswith(f"/{prefix}/")]

    @staticmethod
    def send(body: bytes, content_length: int | None = None) -> Route:
        """Answer 200 with `body`; a `content_length` above len(body) means hanging up part way."""

        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header(
                "Content-Length", str(len(body) if content_length is None else content_length)
            )
            handler.end_headers()
            handler.wfile.write(body)
            handler.close_connection = True

        return route

    @staticmethod
    def stall(body: bytes, seconds: float) -> Route:
        """Send half of `body`, then go silent for `seconds`: a connection that times out."""

        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            time.sleep(seconds)
            handler.close_connection = True

        return route

    @staticmethod
    def status(code: int) -> Route:
        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_error(code)

        return route

    @staticmethod
    def fail_first(times: int, then: Route, code: int = 500) -> Route:
        """Answer `code` to the first `times` requests, then as `then`: a transient outage."""
        failures_left = itertools.count(times, -1)
        lock = threading.Lock()

        def route(handler: BaseHTTPRequestHandler) -> None:
            with lock:
                failing = next(failures_left) > 0
            (LoopbackServer.status(code) if failing else then)(handler)

        return route


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A LoopbackServer running in a thread for the test's duration; unknown paths get 404."""
    server = LoopbackServer()
    # A short poll interval makes shutdown quick: it is checked between requests.
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    thread.join(timeout=5)


# --- the web server (test_serve.py, test_browser.py) --------------------------------------------


class RunningServer:
    """`mnist-digits serve` in a subprocess on a free loopback port; its output is kept in `log`."""

    def __init__(self, model: Path | str, feedback_db: Path, *options: str) -> None:
        command = [sys.executable, "-m", "mnist_digits", "serve", "--port", "0", "--device", "cpu"]
        command += ["--model", str(model), "--feedback-db", str(feedback_db), *options]
        if "--runtime" not in options:  # auto's choice costs seconds per model: test_serve tests it once
            command += ["--runtime", "torch"]
        if "--precision" not in options:  # the same answers on every CPU: `auto` takes bf16 where native
            command += ["--precision", "fp32"]
        self.feedback_db = feedback_db
        self.log: list[str] = []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_output, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + 120
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise RuntimeError("the server did not start within 120 s:\n" + "".join(self.log)) from None
            if line is None:
                self.stop()
                raise RuntimeError("the server exited while starting:\n" + "".join(self.log))
            match = re.search(r"http://(127\.0\.0\.\d+):(\d+)/", line)
            if match:
                self.url = f"http://{match[1]}:{match[2]}"
                return

    def _read_output(self, lines: queue.Queue[str | None]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            lines.put(line)
        lines.put(None)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # as Ctrl-C: uvicorn shuts down gracefully
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small network in a model file: answers are meaningless but well-formed, and fast."""
    import torch

    from mnist_digits import checkpoint
    from mnist_digits.model import DigitNet, ModelConfig

    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    torch.manual_seed(0)
    model = DigitNet(ModelConfig(channels=(4, 8, 8), hidden=16))
    checkpoint.save_model(path, model, {"note": "untrained, for tests"})
    return path


@pytest.fixture(scope="session")
def trained_model() -> str:
    """The shipped reference model's name, else the file a local `make train` wrote; skipped if neither."""
    from mnist_digits import pretrained

    if "reference" in pretrained.available():
        return "reference"
    local = REPO / "runs" / "reference" / "model.safetensors"
    if local.is_file():
        return str(local)
    pytest.skip("no trained model: the package ships none yet and runs/reference/model.safetensors is absent")


# --- people's images: test_images, test_preprocess, test_predict, test_kaggle, test_cli_predict --

REALISTIC_COUNT = 300  # MNIST test digits per kind of realistic input in the accuracy tests


@pytest.fixture(scope="session")
def reference_model_path() -> str:
    """The shipped reference model's file, or a skip while none ships.

    $MNIST_DIGITS_TEST_MODEL names another model file instead (to tune before a model ships).
    """
    from mnist_digits import pretrained

    override = os.environ.get("MNIST_DIGITS_TEST_MODEL")
    if override:
        return override
    shipped = pretrained.available().get("reference")
    if shipped is None:
        pytest.skip("no shipped reference model (src/mnist_digits/pretrained/reference.safetensors) yet")
    return str(shipped)


@pytest.fixture(scope="session")
def reference_recognizer(reference_model_path: str):  # -> mnist_digits.predict.Recognizer
    """The shipped reference model (see reference_model_path) as a Recognizer on the CPU, run by
    PyTorch in fp32: the tests that use it measure the network, not a runtime or precision this
    machine chose."""
    from mnist_digits.predict import load_model

    return load_model(reference_model_path, runtime="torch", precision="fp32")


@pytest.fixture(scope="session")
def test_digits(mnist: data.Mnist) -> data.Split:
    """The first REALISTIC_COUNT MNIST test digits: images the model never trained on."""
    return data.Split(mnist.test.images[:REALISTIC_COUNT], mnist.test.labels[:REALISTIC_COUNT])


@pytest.fixture(scope="session")
def png_declaring() -> Callable[[int, int], bytes]:
    """Factory: a 1x1 PNG whose header claims width x height, as a decompression bomb does."""
    import io
    import struct
    import zlib

    from PIL import Image

    def build(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, format="PNG")
        content = bytearray(buffer.getvalue())
        content[16:24] = struct.pack(">II", width, height)  # IHDR data: after signature, length, type
        content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))
        return bytes(content)

    return build


@pytest.fixture(scope="module")
def trained_server(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real server with a trained model and its own feedback database, for one test module."""
    running = RunningServer(trained_model, tmp_path_factory.mktemp("db") / "feedback.sqlite3")
    yield running
    running.stop()


# A small network and a few epochs on 1,200 real digits (`small_mnist`): seconds, not minutes.
def _small_training():
    from mnist_digits.augment import AugmentConfig
    from mnist_digits.model import ModelConfig
    from mnist_digits.recipes import TrainConfig

    return TrainConfig(
        epochs=2,
        batch_size=32,
        augment=AugmentConfig(rotation=0, zoom=0, shift=0),
        model=ModelConfig(channels=(8, 16, 16), hidden=32),
    )


SMALL = _small_training()


@pytest.fixture(scope="module")
def small_mnist(mnist):
    from mnist_digits.data import Mnist, Split

    return Mnist(
        Split(mnist.train.images[:1200], mnist.train.labels[:1200]),
        Split(mnist.test.images[:200], mnist.test.labels[:200]),
        mnist.directory,
        mnist.sha256,
    )
