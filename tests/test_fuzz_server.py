"""Random and mutated inputs against the real server: every answer is JSON, a 4xx names the mistake,
nothing is ever a 500, and the server stays healthy. Seeded, bounded in count and in time."""

import base64
import http.client
import io
import json
import time
import uuid

import numpy as np
import pytest
from conftest import REPO, RunningServer
from PIL import Image, ImageDraw

CASES = 240  # requests per run, split over the kinds below
TIME_BUDGET = 30.0  # s; the run stops early rather than take longer on a slow machine
ROUTES = ("/api/predict", "/api/read-number", "/api/feedback")


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    running = RunningServer(tiny_model_file, tmp_path_factory.mktemp("db") / "feedback.sqlite3")
    yield running
    running.stop()


def seed_images() -> list[bytes]:
    """Small valid files of every supported format and several modes: the mutations start from these."""
    image = Image.new("L", (64, 48), 255)
    ImageDraw.Draw(image).line([(16, 8), (48, 8), (28, 40)], fill=0, width=5)
    files = []
    for mode, format in [
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("P", "GIF"),
        ("RGB", "BMP"),
        ("RGBA", "WEBP"),
        ("F", "TIFF"),
        ("1", "TIFF"),
    ]:
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, format=format)
        files.append(buffer.getvalue())
    return files


def mutate(rng: np.random.Generator, content: bytes) -> bytes:
    data = bytearray(content)
    kind = rng.integers(4)
    if kind == 0:  # flipped bytes, often in the header
        for _ in range(int(rng.integers(1, 9))):
            position = (
                int(rng.integers(min(len(data), 64))) if rng.random() < 0.5 else int(rng.integers(len(data)))
            )
            data[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncated
        data = data[: int(rng.integers(1, len(data)))]
    elif kind == 2:  # a run of random bytes spliced in
        at = int(rng.integers(len(data)))
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
    else:  # random bytes under a real signature
        data = data[:8] + bytearray(rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes())
    return bytes(data)


def random_json(rng: np.random.Generator, depth: int = 0):
    kind = rng.integers(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return int(rng.integers(-(2**40), 2**40)) if rng.random() < 0.3 else int(rng.integers(-2, 300))
    if kind == 3:
        return float(rng.normal(0, 1e3))
    if kind == 4:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(0, 12))))
    if kind == 5:
        return rng.choice(["pixels", "label", "inputs", "image_base64", "data:image/png;base64,AAAA", "7"])
    if kind in (6, 7):
        keys = ["inputs", "pixels", "label", "image_base64", "extra"]
        return {str(rng.choice(keys)): random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}
    return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]


def near_valid_json(rng: np.random.Generator):
    """Bodies close to a valid one: the right keys with a wrong value somewhere."""
    pixels: list = rng.integers(0, 256, 784).tolist()
    spoilers = ["12", True, None, -1, 256, 1e308, [], {}, "NaN", 0.5]
    for _ in range(int(rng.integers(0, 3))):
        pixels[int(rng.integers(784))] = spoilers[int(rng.integers(len(spoilers)))]
    if rng.random() < 0.2:
        pixels = pixels[: int(rng.integers(0, 784))]
    if rng.random() < 0.5:
        return {
            "pixels": pixels,
            "label": spoilers[int(rng.integers(len(spoilers)))] if rng.random() < 0.5 else 3,
        }
    return {"inputs": [{"pixels": pixels}] * int(rng.integers(0, 3))}


def multipart(files: list[bytes], rng: np.random.Generator) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for i, content in enumerate(files):
        kind = ["image/png", "image/jpeg", "application/octet-stream", "image/x-anything"][
            int(rng.integers(4))
        ]
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f{i}"\r\n'
                f"Content-Type: {kind}\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    if rng.random() < 0.15:  # a broken form
        body = body[: int(rng.integers(1, len(body)))]
    return body, f"multipart/form-data; boundary={boundary}"


def cases(rng: np.random.Generator, seeds: list[bytes]):
    """(route, body, content type) forever: files as uploads and base64, random and near-valid JSON."""
    while True:
        kind = rng.integers(5)
        route = ROUTES[int(rng.integers(3 if kind >= 3 else 2))]
        if kind <= 1:
            files = [
                mutate(rng, seeds[int(rng.integers(len(seeds)))]) for _ in range(int(rng.integers(1, 4)))
            ]
            if kind == 0:
                yield (route, *multipart(files, rng))
            else:
                inputs = [{"image_base64": base64.b64encode(f).decode()} for f in files]
                yield route, json.dumps({"inputs": inputs}).encode(), "application/json"
        elif kind == 2:
            # A valid file now and then, so that the happy path is exercised in between.
            yield route, *multipart([seeds[int(rng.integers(len(seeds)))]], rng)
        elif kind == 3:
            body = json.dumps(random_json(rng)).encode()
            if rng.random() < 0.3:
                body = mutate(rng, body) if len(body) > 1 else b"{"
            yield route, body, "application/json"
        else:
            yield route, json.dumps(near_valid_json(rng)).encode(), "application/json"


def test_random_and_mutated_requests_get_clear_answers_and_never_a_500(server):
    rng = np.random.default_rng(20261201)
    seeds = seed_images()
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: dict[int, int] = {}
    start, done = time.monotonic(), 0
    for route, body, content_type in cases(rng, seeds):
        if done == CASES or time.monotonic() - start > TIME_BUDGET:
            break
        try:
            connection.request("POST", route, body, {"Content-Type": content_type})
            response = connection.getresponse()
        except (http.client.HTTPException, OSError):  # the server closed a kept-alive connection
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", route, body, {"Content-Type": content_type})
            response = connection.getresponse()
        raw = response.read()
        done += 1
        statuses[response.status] = statuses.get(response.status, 0) + 1
        case = f"{route} {content_type[:20]} {body[:120]!r}"
        assert response.status in (200, 201) or 400 <= response.status < 500, f"{response.status}: {case}"
        assert response.getheader("content-type") == "application/json", case
        answer = json.loads(raw)
        if response.status >= 400:
            assert set(answer) == {"status", "error", "message"} and answer["status"] == response.status
            assert answer["message"] and "Traceback" not in answer["message"]
            assert str(REPO) not in answer["message"] and "/tmp/" not in answer["message"], answer["message"]
        if response.getheader("connection") == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.close()
    assert done >= min(CASES, 100), f"only {done} cases in {TIME_BUDGET:.0f} s"
    assert statuses.get(200, 0) >= 10 and sum(n for s, n in statuses.items() if s >= 400) >= done // 3, (
        statuses
    )
    # Healthy afterwards, and nothing in the log but what was expected.
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    probe.request("GET", "/api/health")
    assert probe.getresponse().status == 200
    probe.close()
    log = "".join(server.log)
    assert "Traceback" not in log and "Exception in ASGI" not in log and "Warning" not in log, log[-3000:]
