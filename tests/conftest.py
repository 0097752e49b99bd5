"""Shared fixtures. The real MNIST comes from $MNIST_DIGITS_DATA, else ../shared/data/mnist."""

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mnist_digits import data, idx

# --- the real dataset ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def shared_mnist_dir() -> Path:
    return Path(os.environ.get(data.ENV_VAR) or REPO.parent / "shared" / "data" / "mnist")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    directory = shared_mnist_dir()
    if not directory.is_dir():
        pytest.skip(f"no MNIST copy at {directory}; set {data.ENV_VAR}")
    return directory


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> data.Mnist:
    return data.load(mnist_dir)


# --- data, IDX and download fixtures (test_idx.py, test_data.py, test_download.py) -------------


@pytest.fixture
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset $MNIST_DIGITS_DATA so `locate(None, ...)` goes to the cache, whatever the shell has."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)


@pytest.fixture(scope="session")
def canonical_gz(mnist_dir: Path) -> dict[str, bytes]:
    """The canonical .gz bytes, as the mirrors serve them, keyed by file name without `.gz`."""
    paths = {name: mnist_dir / f"{name}.gz" for name in data.CANONICAL}
    if not all(path.is_file() for path in paths.values()):
        pytest.skip(f"{mnist_dir} does not hold the four canonical .gz files")
    return {name: path.read_bytes() for name, path in paths.items()}


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
