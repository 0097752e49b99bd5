"""The HTTP API, tested against the real server started on loopback in a subprocess."""

import base64
import http.client
import io
import json
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from conftest import RunningServer
from PIL import Image, ImageDraw

from mnist_digits import feedback
from mnist_digits.cli import main
from mnist_digits.feedback import FeedbackStore


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    """One server with the untrained tiny model for the whole module: answers well-formed, not right."""
    running = RunningServer(tiny_model_file, tmp_path_factory.mktemp("db") / "feedback.sqlite3")
    yield running
    running.stop()


def call(url, body=None, content_type=None, method=None, headers=None):
    """(status, headers, parsed JSON or raw bytes) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, answer_headers, raw = e.code, e.headers, e.read()
    if answer_headers.get_content_type() == "application/json":
        return status, answer_headers, json.loads(raw)
    return status, answer_headers, raw


def post_json(url, payload):
    return call(url, json.dumps(payload).encode(), "application/json")


def multipart(files, field="file"):
    """A multipart/form-data body: files as (name, content type, bytes)."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, content_type, content in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_digit(strokes, side=280) -> Image.Image:
    """Dark round strokes on white, as the page's canvas draws them; points in 0-1 of the side."""
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    width = round(0.075 * side)
    for stroke in strokes:
        points = [(x * side, y * side) for x, y in stroke]
        draw.line(points, fill=17, width=width, joint="curve")
        for x, y in points:
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=17)
    return image


SEVEN = [[(0.28, 0.25), (0.72, 0.25), (0.42, 0.8)]]


# --- service endpoints and the page ------------------------------------------------------------


def test_health_and_model_info(server, tiny_model_file):
    status, _, body = call(f"{server.url}/api/health")
    # The fixture's server runs on the runtime it was given (conftest), and says so.
    assert status == 200 and body == {"status": "ok", "model": str(tiny_model_file), "runtime": "torch"}
    status, _, info = call(f"{server.url}/api/model")
    assert status == 200 and info["name"] == info["file"] == str(tiny_model_file)
    assert info["metadata"]["note"] == "untrained, for tests" and info["test_accuracy"] is None
    # Counted as `mnist-digits models` counts: the weights and BatchNorm's running mean and variance.
    weights, statistics = _tiny_counts(info["metadata"])
    assert statistics > 0 and info["parameters"] == weights + statistics


def _tiny_counts(metadata):
    """(weights, BatchNorm running-statistic values) of the network the model file describes."""
    from mnist_digits.model import DigitNet, ModelConfig

    model = DigitNet(ModelConfig.from_dict(metadata["model_config"]))
    buffers = model.named_buffers()
    statistics = sum(b.numel() for n, b in buffers if n.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return sum(p.numel() for p in model.parameters()), statistics


def test_the_page_and_its_files_are_served_with_no_outside_assets(server):
    status, headers, page = call(f"{server.url}/")
    assert status == 200 and headers.get_content_type() == "text/html"
    assert b'<canvas id="pad"' in page and b"/static/app.js" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, content = call(f"{server.url}/static/{name}")
        assert status == 200 and headers.get_content_type() == kind
        assert b"http://" not in content and b"https://" not in content  # no CDN, works offline
    assert b"http://" not in page and b"https://" not in page


@pytest.mark.parametrize(
    "path", ["/static/serve.py", "/static/..%2fserve.py", "/static/../serve.py", "/serve.py", "/static/"]
)
def test_nothing_outside_the_page_files_is_served(server, path):
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404") and b"create_app" not in answer


def test_openapi_docs_describe_both_kinds_of_predict_body(server):
    status, _, page = call(f"{server.url}/docs")
    assert status == 200 and b"swagger" in page.lower()
    status, _, spec = call(f"{server.url}/openapi.json")
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/PredictRequest"
    assert {"PredictRequest", "ImageInput", "PredictResponse", "ErrorBody"} <= set(
        spec["components"]["schemas"]
    )
    assert {"400", "413", "415", "422"} <= set(spec["paths"]["/api/predict"]["post"]["responses"])


# --- predictions ---------------------------------------------------------------------------------


def check_prediction(prediction):
    probabilities = prediction["probabilities"]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-4)
    assert prediction["digit"] == int(np.argmax(probabilities))
    assert prediction["confidence"] == pytest.approx(max(probabilities))
    assert len(prediction["image"]) == 784 and all(0 <= v <= 255 for v in prediction["image"])


def test_a_batch_of_pixels_is_answered_in_order_without_preprocessing(server):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, 784).tolist() for _ in range(3)]
    status, _, body = post_json(f"{server.url}/api/predict", {"inputs": [{"pixels": p} for p in images]})
    assert status == 200 and body["model"].endswith("tiny.safetensors") and len(body["predictions"]) == 3
    for prediction, pixels in zip(body["predictions"], images, strict=True):
        check_prediction(prediction)
        assert prediction["image"] == pixels  # already MNIST-formatted: given to the model as it is
    assert body["predictions"][0]["probabilities"] != body["predictions"][1]["probabilities"]


def test_upload_base64_and_data_url_take_the_same_preprocessing_path(server):
    png = png_bytes(drawn_digit(SEVEN))
    upload, content_type = multipart([("seven.png", "image/png", png)])
    status, _, uploaded = call(f"{server.url}/api/predict", upload, content_type)
    assert status == 200
    check_prediction(uploaded["predictions"][0])
    encoded = base64.b64encode(png).decode()
    inputs = [{"image_base64": encoded}, {"image_base64": f"data:image/png;base64,{encoded}"}]
    status, _, sent = post_json(f"{server.url}/api/predict", {"inputs": inputs})
    assert status == 200
    # The same image the model saw; probabilities equal up to float rounding (batches of 1 and 2).
    first, second, upload_answer = *sent["predictions"], uploaded["predictions"][0]
    assert first["image"] == second["image"] == upload_answer["image"]
    assert first["probabilities"] == pytest.approx(upload_answer["probabilities"], abs=1e-5)
    assert second["probabilities"] == pytest.approx(upload_answer["probabilities"], abs=1e-5)
    # The image the model saw is MNIST-like: white ink on black, the digit's box 20 px on its long side.
    seen = np.array(uploaded["predictions"][0]["image"]).reshape(28, 28)
    rows, cols = np.flatnonzero((seen > 64).any(1)), np.flatnonzero((seen > 64).any(0))
    assert seen.max() == 255 and seen[0].max() == seen[:, 0].max() == 0
    assert 19 <= max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21


def test_several_files_in_one_upload_are_a_batch(server):
    pngs = [png_bytes(drawn_digit(SEVEN)), png_bytes(drawn_digit([[(0.5, 0.15), (0.5, 0.85)]]))]
    upload, content_type = multipart([(f"{i}.png", "image/png", p) for i, p in enumerate(pngs)])
    status, _, body = call(f"{server.url}/api/predict", upload, content_type)
    assert status == 200 and len(body["predictions"]) == 2
    assert body["predictions"][0]["image"] != body["predictions"][1]["image"]


def test_phone_photos_of_any_size_and_polarity_are_accepted(server):
    light_on_dark = Image.eval(drawn_digit(SEVEN, side=900), lambda v: 255 - v).convert("RGB")
    buffer = io.BytesIO()
    light_on_dark.save(buffer, format="JPEG", quality=90)
    upload, content_type = multipart([("photo.jpg", "image/jpeg", buffer.getvalue())])
    status, _, body = call(f"{server.url}/api/predict", upload, content_type)
    assert status == 200
    check_prediction(body["predictions"][0])


def test_a_blank_image_has_no_digit(server):
    blank = png_bytes(Image.new("L", (280, 280), 255))
    status, _, body = call(f"{server.url}/api/predict", *multipart([("blank.png", "image/png", blank)]))
    assert status == 200
    assert body["predictions"] == [
        {
            "digit": None,
            "confidence": 0.0,
            "uncertain": False,
            "probabilities": [],
            "image": None,
            "error": "no digit found",
            "note": None,
        }
    ]


# --- limits and errors ---------------------------------------------------------------------------


def assert_error(answer, status, error):
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers.get_content_type() == "application/json"
    assert body["status"] == status and body["error"] == error and len(body["message"]) > 20
    return body["message"]


def test_wrong_content_types_are_415(server):
    message = assert_error(
        call(f"{server.url}/api/predict", b"1,2,3", "text/plain"), 415, "unsupported_media_type"
    )
    assert "application/json" in message and "multipart/form-data" in message
    assert_error(call(f"{server.url}/api/predict", b"", None, method="POST"), 415, "unsupported_media_type")
    upload, content_type = multipart([("notes.txt", "text/plain", b"a seven")])
    message = assert_error(
        call(f"{server.url}/api/predict", upload, content_type), 415, "unsupported_media_type"
    )
    assert "notes.txt" in message
    upload, content_type = multipart([("fake.png", "image/png", b"this is not a png at all" * 10)])
    assert_error(call(f"{server.url}/api/predict", upload, content_type), 415, "unsupported_image")


def test_malformed_bodies_are_400(server):
    assert_error(call(f"{server.url}/api/predict", b'{"inputs": [', "application/json"), 400, "invalid_json")
    answer = post_json(f"{server.url}/api/predict", {"inputs": [{"image_base64": "not base64!"}]})
    assert_error(answer, 400, "invalid_base64")
    truncated = png_bytes(drawn_digit(SEVEN))[:300]
    upload, content_type = multipart([("cut.png", "image/png", truncated)])
    assert "cut.png" in assert_error(
        call(f"{server.url}/api/predict", upload, content_type), 400, "invalid_image"
    )
    upload, content_type = multipart([("seven.png", "image/png", b"x")], field="image")
    assert "`file`" in assert_error(
        call(f"{server.url}/api/predict", upload, content_type), 400, "missing_file"
    )


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"inputs": [{"pixels": [0] * 783}]}, "inputs.0.pixels"),
        ({"inputs": [{"pixels": [0] * 783 + [256]}]}, "inputs.0.pixels.783"),
        ({"inputs": [{"pixels": [0] * 784, "image_base64": "AAAA"}]}, "exactly one"),
        ({"inputs": [{}]}, "exactly one"),
        ({"inputs": []}, "inputs"),
        ({"images": []}, "images"),
        ([1, 2, 3], "object"),
    ],
)
def test_json_that_does_not_fit_the_schema_is_422(server, payload, where):
    message = assert_error(post_json(f"{server.url}/api/predict", payload), 422, "invalid_request")
    assert where in message


def test_limits_are_413(server):
    too_many = {"inputs": [{"pixels": [0] * 784}] * 65}
    message = assert_error(post_json(f"{server.url}/api/predict", too_many), 413, "too_many_images")
    assert "64" in message
    huge_body = b'{"inputs": [{"image_base64": "' + b"A" * (4 * 2**20) + b'"}]}'
    assert_error(call(f"{server.url}/api/predict", huge_body, "application/json"), 413, "payload_too_large")
    # Sent in chunks, without a Content-Length, the body is counted as it arrives.
    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    chunks = (b"A" * 2**20 for _ in range(5))
    connection.request(
        "POST", "/api/predict", chunks, {"Content-Type": "application/json"}, encode_chunked=True
    )
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"] == "payload_too_large"
    connection.close()
    # A small file that declares 64 megapixels is refused before its pixels are decoded.
    bomb = png_bytes(Image.new("1", (8000, 8000)))
    assert len(bomb) < 100_000
    upload, content_type = multipart([("bomb.png", "image/png", bomb)])
    assert_error(call(f"{server.url}/api/predict", upload, content_type), 413, "image_too_large")


def test_unknown_paths_and_methods_are_json_errors(server):
    assert_error(call(f"{server.url}/api/nothing"), 404, "not_found")
    assert_error(call(f"{server.url}/api/predict"), 405, "method_not_allowed")


def test_no_cross_origin_access_by_default(server):
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = call(f"{server.url}/api/predict", method="OPTIONS", headers=preflight)
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = call(f"{server.url}/api/health", headers={"Origin": "https://elsewhere.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_requests_for_another_host_name_are_refused(server):
    # A DNS-rebinding page reaches 127.0.0.1 under its own name; the server does not answer it.
    status, _, _ = call(f"{server.url}/api/health", headers={"Host": "attacker.example"})
    assert status == 400


def test_allowed_origins_are_named_one_by_one(tiny_model_file, tmp_path, capsys):
    assert main(["serve", "--model", str(tiny_model_file), "--allow-origin", "*"]) == 1
    assert "wildcard is not allowed" in capsys.readouterr().err
    origin = "https://digits.example"
    running = RunningServer(tiny_model_file, tmp_path / "feedback.sqlite3", "--allow-origin", origin)
    try:
        status, headers, _ = call(f"{running.url}/api/health", headers={"Origin": origin})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
        status, headers, _ = call(f"{running.url}/api/health", headers={"Origin": "https://other.example"})
        assert "Access-Control-Allow-Origin" not in headers
        # An allowed origin may post; another is refused before its request is processed.
        upload, content_type = multipart([("7.png", "image/png", png_bytes(drawn_digit(SEVEN)))])
        status, headers, _ = call(
            f"{running.url}/api/predict", upload, content_type, headers={"Origin": origin}
        )
        assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
        answer = call(
            f"{running.url}/api/predict", upload, content_type, headers={"Origin": "https://other.example"}
        )
        assert_error(answer, 403, "origin_not_allowed")
    finally:
        running.stop()


def test_a_busy_port_is_a_clear_error(tiny_model_file, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model_file), "--port", str(port)]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux answers on all of 127.0.0.0/8")
def test_any_loopback_address_answers_under_its_own_name(tiny_model_file, tmp_path):
    running = RunningServer(tiny_model_file, tmp_path / "feedback.sqlite3", "--host", "127.0.0.2")
    try:
        assert running.url.startswith("http://127.0.0.2:")
        status, _, body = call(f"{running.url}/api/health")
        assert status == 200 and body["status"] == "ok"
        status, _, _ = call(f"{running.url}/api/health", headers={"Host": "attacker.example"})
        assert status == 400
    finally:
        running.stop()


def test_a_server_on_the_auto_runtime_says_what_it_chose_and_answers(
    tiny_model_file, tmp_path, runtime_cache
):
    """The default runtime (the other tests' servers run on torch: conftest), chosen as the server starts."""
    import time

    running = RunningServer(tiny_model_file, tmp_path / "feedback.sqlite3", "--runtime", "auto")
    try:
        deadline = time.monotonic() + 10  # the line after the one RunningServer waits for
        while not any(line.startswith("runtime ") for line in running.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        [said] = [line for line in running.log if line.startswith("runtime ")]
        assert "(auto: " in said and "; one image: " in said
        assert list(runtime_cache.glob("choice-*.json"))  # kept for the next start
        status, _, health = call(f"{running.url}/api/health")
        assert status == 200 and health["runtime"] == said.strip().removeprefix("runtime ")
        images = [np.random.default_rng(i).integers(0, 256, 784).tolist() for i in range(2)]
        status, _, body = post_json(f"{running.url}/api/predict", {"inputs": [{"pixels": p} for p in images]})
        assert status == 200 and len(body["predictions"]) == 2
        for prediction in body["predictions"]:
            check_prediction(prediction)
    finally:
        running.stop()


# --- feedback ------------------------------------------------------------------------------------


def test_feedback_is_stored_and_exported_as_idx(server, tmp_path):
    status, _, body = call(
        f"{server.url}/api/predict", *multipart([("7.png", "image/png", png_bytes(drawn_digit(SEVEN)))])
    )
    seen = body["predictions"][0]["image"]
    before = FeedbackStore(server.feedback_db).count()
    status, _, stored = post_json(f"{server.url}/api/feedback", {"pixels": seen, "label": 7})
    assert status == 201 and stored["label"] == 7 and stored["stored"] == before + 1
    assert stored["predicted"] == body["predictions"][0]["digit"]
    assert_error(
        post_json(f"{server.url}/api/feedback", {"pixels": seen, "label": 10}), 422, "invalid_request"
    )
    assert_error(
        post_json(f"{server.url}/api/feedback", {"pixels": seen[:-1], "label": 1}), 422, "invalid_request"
    )

    assert main(["feedback", "export", "--feedback-db", str(server.feedback_db), "--out", str(tmp_path)]) == 0
    exported = feedback.read_idx(tmp_path)
    assert exported.labels[-1] == 7
    np.testing.assert_array_equal(exported.images[-1], np.array(seen, np.uint8).reshape(28, 28))


def test_a_feedback_database_that_cannot_be_written_is_a_clear_error(tiny_model_file, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    argv = [
        "serve",
        "--model",
        str(tiny_model_file),
        "--port",
        "0",
        "--feedback-db",
        str(blocker / "fb.sqlite3"),
    ]
    assert main(argv) == 1  # refused at the start, not at a person's first correction
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--feedback-db" in err and err.count("\n") == 1

    folder = tmp_path / "feedback"
    running = RunningServer(tiny_model_file, folder / "fb.sqlite3")
    try:
        (folder / "fb.sqlite3").unlink()
        folder.rmdir()
        folder.write_text("the folder is gone, a file took its place")
        pixels = [255 if 300 <= i < 500 and i % 28 in (13, 14) else 0 for i in range(784)]  # a stroke
        message = assert_error(
            post_json(f"{running.url}/api/feedback", {"pixels": pixels, "label": 3}), 500, "server_error"
        )
        assert "not stored" in message and str(tmp_path) not in message  # the path is for the log only
        deadline = time.monotonic() + 10  # the log is read by a thread: on a busy machine it lags the reply
        while str(folder) not in "".join(running.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert str(folder) in "".join(running.log)
    finally:
        running.stop()


# --- right answers, with the trained model -------------------------------------------------------


def test_the_trained_model_reads_mnist_pixels_and_drawn_digits(trained_server, mnist):
    images, labels = mnist.test.images[:32], mnist.test.labels[:32]
    inputs = [{"pixels": image.ravel().tolist()} for image in images]
    status, _, body = post_json(f"{trained_server.url}/api/predict", {"inputs": inputs})
    assert status == 200
    digits = [p["digit"] for p in body["predictions"]]
    assert sum(d == label for d, label in zip(digits, labels, strict=True)) >= 31

    drawings = {
        7: SEVEN,
        1: [[(0.5, 0.15), (0.5, 0.85)]],
        0: [[(0.5, 0.15), (0.3, 0.3), (0.28, 0.6), (0.5, 0.85), (0.7, 0.6), (0.7, 0.3), (0.5, 0.15)]],
    }
    files = [(f"{d}.png", "image/png", png_bytes(drawn_digit(s))) for d, s in drawings.items()]
    status, _, body = call(f"{trained_server.url}/api/predict", *multipart(files))
    assert status == 200
    assert [p["digit"] for p in body["predictions"]] == list(drawings)
    assert all(p["confidence"] > 0.8 for p in body["predictions"])
