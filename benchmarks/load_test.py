"""A bounded load test of `mnist-digits serve`: single-image predictions from a few concurrent clients.

Starts the real server on a free loopback port (or targets --url, which must be loopback), sends
--requests requests per kind of input from --clients threads, each on its own keep-alive
connection, and prints requests per second, p50/p99 latency and the error count. It stops by
itself and exits 1 if any request failed.

    .venv/bin/python benchmarks/load_test.py                       # the shipped model
    .venv/bin/python benchmarks/load_test.py --model runs/reference/model.safetensors
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw

WARMUP = 20  # requests per kind sent before timing, not counted


@dataclass(frozen=True)
class Payload:
    name: str  # what kind of input, for the report
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Result:
    payload: str
    requests: int
    errors: int
    seconds: float  # wall time of the timed requests
    latencies_ms: np.ndarray  # of the successful requests

    def line(self, clients: int) -> str:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if len(self.latencies_ms) else (np.nan, np.nan)
        return (
            f"{self.payload:<14} {self.requests:>6} requests  {clients} clients  "
            f"{self.requests / self.seconds:>7.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
            f"errors {self.errors}"
        )


def drawn_seven(side: int = 280) -> Image.Image:
    """A 7 as the page's canvas sends it: dark round-capped strokes on white, 7.5% of the side wide."""
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    width = round(side * 0.075)
    points = [(0.28 * side, 0.25 * side), (0.72 * side, 0.25 * side), (0.42 * side, 0.8 * side)]
    draw.line(points, fill=17, width=width, joint="curve")
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=17)
    return image


def payloads() -> list[Payload]:
    image = drawn_seven()
    png = io.BytesIO()
    image.save(png, format="PNG")
    boundary = uuid.uuid4().hex
    upload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="seven.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    small = 255 - np.asarray(image.resize((28, 28), Image.Resampling.BOX))  # white ink on black
    pixels = json.dumps({"inputs": [{"pixels": small.ravel().tolist()}]}).encode()
    return [
        Payload("png upload", upload, f"multipart/form-data; boundary={boundary}"),
        Payload("784 pixels", pixels, "application/json"),
    ]


def connect(host: str, port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle's algorithm off, as browsers and curl have it.

    http.client sends a body over ~1.5 kB in a second segment; with Nagle on, that segment
    waits for the server's delayed ACK (40 ms on Linux) and the test would measure the wait.
    """
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.connect()
    assert connection.sock is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def run_clients(host: str, port: int, payload: Payload, requests: int, clients: int) -> Result:
    """`requests` POSTs to /api/predict shared among `clients` threads; the first WARMUP are untimed."""
    counter = iter(range(requests + WARMUP))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    started = threading.Barrier(clients + 1)
    timing_start: list[float] = []

    def client() -> None:
        connection = connect(host, port)
        headers = {"Content-Type": payload.content_type}
        started.wait()
        while True:
            with lock:
                index = next(counter, None)
                if index == WARMUP:
                    timing_start.append(time.perf_counter())
            if index is None:
                break
            start = time.perf_counter()
            try:
                connection.request("POST", "/api/predict", payload.body, headers)
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and json.loads(answer)["predictions"][0]["digit"] == 7
                problem = None if ok else f"status {response.status}: {answer[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                problem = repr(e)
                connection.close()
                connection = connect(host, port)
            elapsed = time.perf_counter() - start
            if index >= WARMUP:
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed * 1000))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - timing_start[0]
    for problem in errors[:3]:
        print(f"  error: {problem}", file=sys.stderr)
    return Result(payload.name, requests, len(errors), seconds, np.array(latencies))


@contextmanager
def started_server(model: str) -> Iterator[str]:
    """`mnist-digits serve` on a free loopback port, stopped on exit; yields its URL."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "mnist_digits", "serve", "--port", "0", "--model", model]
        command += ["--device", "cpu", "--feedback-db", str(Path(scratch) / "feedback.sqlite3")]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                match = re.search(r"http://127\.0\.0\.1:\d+", line)
                if match:
                    break
            else:
                raise SystemExit(f"the server did not start (exit code {process.wait()})")
            # Keep reading its output so a full pipe never blocks it.
            threading.Thread(target=lambda: [None for _ in process.stdout or ()], daemon=True).start()
            yield match[0]
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default="reference", help="model for the server this script starts")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per kind of input")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 64:
        parser.error("--requests must be 1-100,000 and --clients 1-64: this is a bounded test")

    server = started_server(args.model) if args.url is None else _existing(args.url)
    with server as url:
        parts = urlsplit(url)
        if not ipaddress.ip_address(parts.hostname or "").is_loopback:
            parser.error(f"{url}: only loopback addresses (127.0.0.1, ::1) are load-tested")
        print(f"server {url}; {args.requests} timed requests per input kind, {args.clients} clients")
        results = [
            run_clients(parts.hostname or "", parts.port or 80, p, args.requests, args.clients)
            for p in payloads()
        ]
    for result in results:
        print(result.line(args.clients))
    return 1 if any(r.errors for r in results) else 0


@contextmanager
def _existing(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    sys.exit(main())
