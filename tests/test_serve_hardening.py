"""The server's defences, tested against the real server on loopback: memory and body limits, strict
types, one error shape, timeouts and the connection cap, quiet disconnects, cross-site requests,
no server paths in answers, and API docs that load nothing from the internet."""

import base64
import http.client
import io
import json
import re
import socket
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import RunningServer
from PIL import Image, ImageDraw, PngImagePlugin

from mnist_digits.feedback import FeedbackStore
from mnist_digits.predict import NO_DIGIT, load_model
from mnist_digits.serve import _shown_file

HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE, MAX_CONNECTIONS = 1.0, 2.0, 1.0, 8
SLACK = 1.5  # s; scheduling on a busy machine
MEMORY_BOUND = 300 * 2**20  # bytes above the idle server that one request within the limits may cost


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    running = RunningServer(
        tiny_model_file,
        tmp_path_factory.mktemp("db") / "feedback.sqlite3",
        *("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)),
        *("--keep-alive-timeout", str(KEEP_ALIVE), "--max-connections", str(MAX_CONNECTIONS)),
    )
    yield running
    running.stop()


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


def request(server, method, path, body=b"", headers=None, timeout=30):
    """(status, headers, parsed JSON or raw bytes) over a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=timeout)
    try:
        connection.request(method, path, body, dict(headers or {}))
        response = connection.getresponse()
        raw = response.read()
        kind = response.getheader("content-type", "")
        return response.status, response, json.loads(raw) if kind.startswith("application/json") else raw
    finally:
        connection.close()


def post_json(server, path, payload, headers=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(server, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})


def multipart(files):
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + content
        + b"\r\n"
        for name, content in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def assert_error(answer, status, error):
    got, response, body = answer
    assert got == status, body
    assert response.getheader("content-type") == "application/json", body
    assert set(body) == {"status", "error", "message"}
    assert body["status"] == status and body["error"] == error and len(body["message"]) > 20
    return body["message"]


def raw_exchange(server, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send `data`, then read until the server closes; what came back and how long it took."""
    with socket.create_connection(("127.0.0.1", port_of(server))) as connection:
        connection.settimeout(wait)
        start = time.monotonic()
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer, time.monotonic() - start


def json_of(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return json.loads(body)


def peak_memory(server) -> int:
    """The server process's peak resident memory so far, in bytes (Linux)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024


def digit_png(side: int, mode: str = "RGBA") -> bytes:
    """A drawn 7 on a transparent (or white) field of side x side: a small file of many pixels."""
    image = Image.new(mode, (side, side), (0, 0, 0, 0) if mode == "RGBA" else 255)
    draw = ImageDraw.Draw(image)
    points = [(0.28 * side, 0.25 * side), (0.72 * side, 0.25 * side), (0.42 * side, 0.8 * side)]
    draw.line(points, fill=(20, 20, 20, 255) if mode == "RGBA" else 20, width=side // 12)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def huge_png():
    return digit_png(4096)


BLANK = [0] * 784


# --- 1. memory per request ----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="reads the server's peak memory in /proc (Linux)")
def test_decoded_pixels_are_bounded_per_request_and_images_are_decoded_one_at_a_time(server, huge_png):
    assert len(huge_png) < 90_000
    before = peak_memory(server)
    # 48 images of 4096x4096 (RGBA) in 4 MB: refused from their headers, before any pixel is decoded.
    body, kind = multipart([(f"{i}.png", huge_png) for i in range(48)])
    assert len(body) < 4 * 2**20
    start = time.monotonic()
    message = assert_error(
        request(server, "POST", "/api/predict", body, {"Content-Type": kind}), 413, "too_many_pixels"
    )
    assert time.monotonic() - start < 3 and "67,108,864" in message
    assert peak_memory(server) - before < 64 * 2**20
    # Four of them is within the limits: answered, each decoded only once the one before is done.
    # 16-bit gray costs the most to shrink (Pillow widens it to 32 bits first).
    deep = io.BytesIO()
    Image.open(io.BytesIO(digit_png(4096, "L"))).convert("I;16").save(deep, format="PNG")
    body, kind = multipart([("deep.png", deep.getvalue()), *[(f"{i}.png", huge_png) for i in range(3)]])
    status, _, answer = request(server, "POST", "/api/predict", body, {"Content-Type": kind})
    assert status == 200 and len(answer["predictions"]) == 4
    assert all(p["digit"] is not None for p in answer["predictions"])
    assert peak_memory(server) - before < MEMORY_BOUND


def test_the_pixel_budget_covers_base64_and_read_number_too(server, huge_png):
    encoded = base64.b64encode(huge_png).decode()
    inputs = {"inputs": [{"image_base64": encoded}] * 5}
    assert_error(post_json(server, "/api/predict", inputs), 413, "too_many_pixels")
    assert_error(post_json(server, "/api/read-number", inputs), 413, "too_many_pixels")


def test_a_file_whose_header_inflates_is_refused_as_damaged(server):
    # 80 compressed text chunks of 1 MiB each in a 85 KB PNG: Pillow stops at 64 MiB of text.
    text = PngImagePlugin.PngInfo()
    for i in range(80):
        text.add_text(f"note{i}", "a" * (2**20 - 16), zip=True)
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG", pnginfo=text)
    body, kind = multipart([("notes.png", buffer.getvalue())] * 8)
    message = assert_error(
        request(server, "POST", "/api/predict", body, {"Content-Type": kind}), 400, "invalid_image"
    )
    assert message.startswith("notes.png: its header cannot be read")


# --- 2. the same body limit on every route, before the body is read -----------------------------


@pytest.mark.parametrize("path", ["/api/feedback", "/api/predict", "/api/read-number", "/api/health"])
def test_a_declared_body_over_the_limit_is_refused_at_once(server, path):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 62914584\r\n\r\n"
    )
    answer, seconds = raw_exchange(server, head.encode(), wait=10)
    assert answer.startswith(b"HTTP/1.1 413") and seconds < 1
    assert json_of(answer)["error"] == "payload_too_large"


def test_a_body_sent_over_the_limit_without_a_length_is_cut_off(server):
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=30)
    chunks = (b" " * 2**20 for _ in range(6))
    headers = {"Content-Type": "application/json"}
    connection.request("POST", "/api/feedback", chunks, headers, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"] == "payload_too_large"
    connection.close()
    # Declared a little over the limit and sent whole: drained, so that the client reads the 413.
    body = b'{"pixels": [' + b"0," * (2 * 2**20) + b"0]}"
    assert_error(post_json(server, "/api/feedback", body), 413, "payload_too_large")


# --- 3. images without a digit --------------------------------------------------------------------


NO_DIGIT_PIXELS = {
    "black": BLANK,
    "white": [255] * 784,
    "gray": [128] * 784,
    "one dot": [255 if i in (400, 401, 429) else 0 for i in range(784)],
    "ink all over": [0 if i in (400, 401) else 255 for i in range(784)],
}


def test_pixels_without_a_digit_get_no_answer(server):
    inputs = [{"pixels": p} for p in NO_DIGIT_PIXELS.values()]
    inputs.append({"pixels": [255 if 300 <= i < 500 and i % 28 in (13, 14) else 0 for i in range(784)]})
    status, _, body = post_json(server, "/api/predict", {"inputs": inputs})
    assert status == 200
    *blank, stroke = body["predictions"]
    for prediction in blank:
        assert prediction == {
            "digit": None,
            "confidence": 0.0,
            "uncertain": False,
            "probabilities": [],
            "image": None,
            "error": NO_DIGIT,
            "note": None,
        }
    assert stroke["digit"] is not None and len(stroke["probabilities"]) == 10  # a stroke is a digit


def test_the_library_and_the_server_agree_on_blank_pixels(tiny_model_file, mnist):
    recognizer = load_model(tiny_model_file, runtime="torch")  # the network's answers, not a chosen runtime's
    blank = np.array(list(NO_DIGIT_PIXELS.values()), np.uint8).reshape(-1, 28, 28)
    assert all(p.digit is None and p.error == NO_DIGIT for p in recognizer.predict_pixels(blank))
    # Every real MNIST digit still gets an answer (in float form too).
    images = mnist.test.images[:2000]
    assert all(p.digit is not None for p in recognizer.predict_pixels(images))
    assert all(p.digit is not None for p in recognizer.predict_pixels(images[:50].astype(np.float32) / 255))


def test_a_correction_of_an_image_without_a_digit_is_refused(server):
    before = FeedbackStore(server.feedback_db).count()
    for pixels in NO_DIGIT_PIXELS.values():
        answer = post_json(server, "/api/feedback", {"pixels": pixels, "label": 3})
        assert "no digit" in assert_error(answer, 422, "no_digit")
    assert FeedbackStore(server.feedback_db).count() == before


# --- 4. strict types ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["12", True, None, "NaN", [12], {"v": 1}])
def test_pixels_must_be_numbers(server, value):
    pixels = [0] * 783 + [value]
    assert_error(post_json(server, "/api/predict", {"inputs": [{"pixels": pixels}]}), 422, "invalid_request")
    assert_error(post_json(server, "/api/feedback", {"pixels": pixels, "label": 1}), 422, "invalid_request")


def test_nan_and_infinity_are_not_pixels(server):
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"inputs": [{"pixels": [' + b"0," * 783 + token + b"]}]}"
        assert post_json(server, "/api/predict", body)[0] in (400, 422)


@pytest.mark.parametrize("label", ["7", True, 7.0, -1, 10, None, [7]])
def test_a_label_is_an_integer_from_0_to_9(server, label):
    stroke = [255 if 300 <= i < 500 and i % 28 in (13, 14) else 0 for i in range(784)]
    before = FeedbackStore(server.feedback_db).count()
    assert_error(
        post_json(server, "/api/feedback", {"pixels": stroke, "label": label}), 422, "invalid_request"
    )
    assert_error(
        post_json(server, "/api/feedback", {"pixels": [1.0] * 784, "label": 1}), 422, "invalid_request"
    )
    assert FeedbackStore(server.feedback_db).count() == before
    status, _, stored = post_json(server, "/api/feedback", {"pixels": stroke, "label": 7})
    assert status == 201 and stored["label"] == 7


# --- 5. one error shape and one status per kind of mistake -----------------------------------------


@pytest.mark.parametrize("path", ["/api/predict", "/api/read-number", "/api/feedback"])
def test_each_kind_of_mistake_has_one_status_on_every_route(server, path):
    assert_error(post_json(server, path, b'{"inputs": ['), 400, "invalid_json")
    assert_error(post_json(server, path, b""), 400, "invalid_json")
    assert_error(post_json(server, path, b"   "), 400, "invalid_json")
    assert_error(post_json(server, path, b"\xff\xfe"), 400, "invalid_json")
    assert_error(post_json(server, path, [1, 2]), 422, "invalid_request")
    assert_error(post_json(server, path, {"nothing": 1}), 422, "invalid_request")
    answer = request(server, "POST", path, b"label=7", {"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(answer, 415, "unsupported_media_type")
    answer = request(
        server, "POST", path, b"{}", {"Content-Type": "application/json", "Host": "evil.example"}
    )
    assert_error(answer, 400, "host_not_allowed")
    headers = {"Origin": "https://evil.example"}
    assert_error(post_json(server, path, {"inputs": []}, headers), 403, "origin_not_allowed")
    assert_error(request(server, "GET", path), 405, "method_not_allowed")


def test_refusals_before_the_app_are_json_too(server):
    answer, _ = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n", wait=10)
    assert answer.startswith(b"HTTP/1.1 400") and json_of(answer)["error"] == "invalid_http"
    huge_head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    answer, _ = raw_exchange(server, huge_head, wait=10)  # arrives whole
    assert answer.startswith(b"HTTP/1.1 431") and json_of(answer)["error"] == "headers_too_large"
    with socket.create_connection(("127.0.0.1", port_of(server))) as connection:  # arrives in pieces
        connection.settimeout(10)
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(12):
                connection.sendall(b"a" * 2000)
                time.sleep(0.02)
        except OSError:
            pass
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and json_of(answer)["error"] == "invalid_http"
    assert_error(
        request(server, "GET", "/api/health", headers={"Host": "attacker.example"}), 400, "host_not_allowed"
    )
    assert request(server, "GET", "/api/health", headers={"Host": f"localhost:{port_of(server)}"})[0] == 200


# --- 6. slow and silent connections ------------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_header_timeout(server):
    answer, seconds = raw_exchange(server, b"", wait=HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.2 < seconds < HEADER_TIMEOUT + SLACK
    assert answer.startswith(b"HTTP/1.1 408") and json_of(answer)["error"] == "request_timeout"


def test_a_header_line_at_a_time_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", port_of(server))) as connection:
        connection.settimeout(HEADER_TIMEOUT + 10)
        start = time.monotonic()
        connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = b""
        try:
            for line in range(40):
                time.sleep(0.25)
                connection.sendall(f"X-Line-{line}: slow\r\n".encode())
        except OSError:  # closed by the server: what the test wants
            pass
        while chunk := connection.recv(65536):
            answer += chunk
        assert time.monotonic() - start < HEADER_TIMEOUT + SLACK
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_body_a_byte_at_a_time_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", port_of(server))) as connection:
        connection.settimeout(BODY_TIMEOUT + 10)
        start = time.monotonic()
        connection.sendall(
            b"POST /api/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        try:
            for _ in range(40):
                time.sleep(0.25)
                connection.sendall(b" ")
        except OSError:
            pass
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        assert BODY_TIMEOUT - 0.2 < time.monotonic() - start < BODY_TIMEOUT + SLACK
    assert answer.startswith(b"HTTP/1.1 408") and json_of(answer)["error"] == "request_timeout"


def test_a_declared_body_that_never_comes_is_answered(server):
    head = (
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10485760\r\n\r\n"
    )
    answer, seconds = raw_exchange(server, head, wait=BODY_TIMEOUT + 10)
    assert answer.startswith(b"HTTP/1.1 413") and seconds < 3.5  # over the limit: drained 2 s at most
    head = head.replace(b"10485760", b"1000")
    answer, seconds = raw_exchange(server, head, wait=BODY_TIMEOUT + 10)
    assert answer.startswith(b"HTTP/1.1 408") and seconds < BODY_TIMEOUT + SLACK


def test_an_idle_kept_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", port_of(server))) as connection:
        connection.settimeout(KEEP_ALIVE + 10)
        connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            answer += connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert connection.recv(65536) == b""  # closed by the server
        assert time.monotonic() - start < KEEP_ALIVE + SLACK


def test_connections_over_the_cap_are_answered_503(server):
    time.sleep(KEEP_ALIVE + 0.5)  # earlier tests' connections have closed
    idle = [socket.create_connection(("127.0.0.1", port_of(server))) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        answer, _ = raw_exchange(server, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", wait=10)
        assert answer.startswith(b"HTTP/1.1 503") and json_of(answer)["error"] == "overloaded"
    finally:
        for connection in idle:
            connection.close()
    time.sleep(0.3)
    assert request(server, "GET", "/api/health")[0] == 200


# --- 7. a client that goes away -------------------------------------------------------------------


def test_an_aborted_upload_is_not_a_traceback_in_the_log(server, huge_png):
    body, kind = multipart([("big.png", huge_png)])
    lines_before = len(server.log)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port_of(server))) as connection:
            connection.sendall(
                f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            time.sleep(0.1)
    time.sleep(0.5)
    assert request(server, "GET", "/api/health")[0] == 200
    new = "".join(server.log[lines_before:])
    assert "Traceback" not in new and "Exception" not in new and len(server.log) - lines_before <= 3


# --- 8. cross-site requests ------------------------------------------------------------------------


def test_cross_site_posts_are_refused_and_not_processed(server):
    stroke = [255 if 300 <= i < 500 and i % 28 in (13, 14) else 0 for i in range(784)]
    before = FeedbackStore(server.feedback_db).count()
    for origin in ("https://evil.example", "null", f"http://localhost:{port_of(server) + 1}"):
        headers = {"Origin": origin}
        assert_error(
            post_json(server, "/api/feedback", {"pixels": stroke, "label": 1}, headers),
            403,
            "origin_not_allowed",
        )
        body, kind = multipart([("7.png", digit_png(280, "L"))])
        answer = request(server, "POST", "/api/predict", body, {"Content-Type": kind, **headers})
        assert "--allow-origin" in assert_error(answer, 403, "origin_not_allowed")
        answer = request(
            server, "OPTIONS", "/api/predict", headers={**headers, "Access-Control-Request-Method": "POST"}
        )
        assert answer[0] == 403 and answer[1].getheader("access-control-allow-origin") is None
    assert FeedbackStore(server.feedback_db).count() == before
    # The page itself, under either loopback name, and clients that send no Origin, are served.
    for own in (f"http://127.0.0.1:{port_of(server)}", f"http://localhost:{port_of(server)}"):
        host = own.removeprefix("http://")
        body, kind = multipart([("7.png", digit_png(280, "L"))])
        headers = {"Content-Type": kind, "Origin": own, "Host": host}
        assert request(server, "POST", "/api/predict", body, headers)[0] == 200
    assert request(server, "GET", "/api/model", headers={"Origin": "https://evil.example"})[0] == 200


# --- 9. no server paths ----------------------------------------------------------------------------


def test_answers_show_no_server_paths(server, tiny_model_file):
    status, _, info = request(server, "GET", "/api/model")
    assert status == 200 and info["file"] == str(tiny_model_file)  # as the user gave it
    assert _shown_file("best", tiny_model_file.parent / "best.safetensors") == "best.safetensors"
    assert _shown_file("models/mine.safetensors", tiny_model_file) == "models/mine.safetensors"
    body, kind = multipart([("cut.png", digit_png(280, "L")[:200])])
    message = assert_error(
        request(server, "POST", "/api/predict", body, {"Content-Type": kind}), 400, "invalid_image"
    )
    assert (
        message.startswith("cut.png: ")
        and str(tiny_model_file.parent) not in message
        and "/tmp" not in message
    )


# --- the API docs, offline --------------------------------------------------------------------------


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.inline_scripts = [], 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.urls.append(attributes[name])
        if tag == "script" and not attributes.get("src"):
            self.inline_scripts += 1


def test_the_docs_page_loads_only_its_own_files(server):
    status, response, page = request(server, "GET", "/docs")
    assert status == 200 and response.getheader("content-type").startswith("text/html")
    csp = response.getheader("content-security-policy")
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp
    references = _References()
    references.feed(page.decode())
    assert references.inline_scripts == 0 and len(references.urls) >= 3
    for url in references.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        status, response, content = request(server, "GET", url)
        assert status == 200 and len(content) > 100, url
    assert request(server, "GET", "/docs/../serve.py")[0] == 404
    assert_error(request(server, "GET", "/docs/nothing.js"), 404, "not_found")


def test_the_docs_render_in_a_browser_with_no_outside_request(server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright")
    from test_browser import CHROMIUM_ARGS, find_browser

    executable = find_browser(None)
    if executable is None:
        pytest.skip("no Chromium or Chrome on PATH")
    outside, problems = [], []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on(
                "request",
                lambda r: r.url.startswith(server.url) or r.url.startswith("data:") or outside.append(r.url),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            assert page.locator(".opblock").count() >= 4  # the operations are listed
        finally:
            browser.close()
    assert not outside, outside
    assert not problems, problems
