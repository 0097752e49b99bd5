"""POST /api/read-number, against the real server with the shipped model on loopback."""

import base64
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_serve import assert_error, call, multipart, png_bytes, post_json

from mnist_digits.serve import MAX_NUMBER_DIGITS

# Strokes in 0-1 of a square slot, as a person writes the digits side by side.
STROKES = {
    1: [[(0.5, 0.15), (0.5, 0.85)]],
    7: [[(0.28, 0.22), (0.72, 0.22), (0.42, 0.82)]],
    4: [[(0.6, 0.85), (0.6, 0.15), (0.25, 0.6), (0.78, 0.6)]],
}


def written_number(digits, side=200) -> Image.Image:
    """Dark round strokes on white, each digit in its own square slot, left to right."""
    image = Image.new("L", (side * len(digits), side), 255)
    pen = ImageDraw.Draw(image)
    width = round(0.075 * side)
    for index, digit in enumerate(digits):
        for stroke in STROKES[digit]:
            points = [(index * side + x * side, y * side) for x, y in stroke]
            pen.line(points, fill=17, width=width, joint="curve")
            for x, y in points:
                pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=17)
    return image


def test_an_uploaded_number_is_read_left_to_right_with_each_digits_details(trained_server):
    upload, content_type = multipart([("number.png", "image/png", png_bytes(written_number([1, 7, 4])))])
    status, _, body = call(f"{trained_server.url}/api/read-number", upload, content_type)
    assert status == 200 and body["model"] == call(f"{trained_server.url}/api/health")[2]["model"]
    (reading,) = body["numbers"]
    assert reading["number"] == "174" and reading["error"] is None
    digits = reading["digits"]
    assert [d["digit"] for d in digits] == [1, 7, 4]
    assert reading["confidence"] == pytest.approx(np.prod([d["confidence"] for d in digits]))
    lefts = [d["box"][0] for d in digits]
    assert lefts == sorted(lefts) and all(0 <= d["box"][0] < d["box"][2] <= 600 for d in digits)
    for digit in digits:
        assert len(digit["probabilities"]) == 10 and sum(digit["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert digit["digit"] == int(np.argmax(digit["probabilities"]))
        assert len(digit["image"]) == 784 and max(digit["image"]) > 200


def test_a_json_batch_is_answered_in_order_and_a_blank_image_has_no_number(trained_server):
    number = base64.b64encode(png_bytes(written_number([4, 1]))).decode()
    blank = base64.b64encode(png_bytes(Image.new("L", (300, 100), 255))).decode()
    inputs = [{"image_base64": f"data:image/png;base64,{number}"}, {"image_base64": blank}]
    status, _, body = post_json(f"{trained_server.url}/api/read-number", {"inputs": inputs})
    assert status == 200
    first, second = body["numbers"]
    assert first["number"] == "41" and len(first["digits"]) == 2
    assert second == {
        "number": "",
        "confidence": 0.0,
        "uncertain": False,
        "digits": [],
        "error": "no digit found",
    }


def test_an_image_with_more_marks_than_a_number_has_digits_is_refused_by_name(trained_server):
    count = MAX_NUMBER_DIGITS + 8
    image = written_number([1] * count, side=60)
    upload, content_type = multipart([("fence.png", "image/png", png_bytes(image))])
    status, _, body = call(f"{trained_server.url}/api/read-number", upload, content_type)
    assert status == 200
    (reading,) = body["numbers"]
    assert reading["number"] == "" and reading["digits"] == []
    assert f"more than the {MAX_NUMBER_DIGITS} digits" in reading["error"]


def test_bad_bodies_get_the_same_errors_as_predict(trained_server):
    url = f"{trained_server.url}/api/read-number"
    assert_error(call(url, b"1,2,3", "text/plain"), 415, "unsupported_media_type")
    assert_error(call(url, b'{"inputs": [', "application/json"), 400, "invalid_json")
    upload, content_type = multipart([("notes.txt", "text/plain", b"hello")])
    assert_error(call(url, upload, content_type), 415, "unsupported_media_type")
    upload, content_type = multipart([("number.png", "image/png", b"x")], field="image")
    assert_error(call(url, upload, content_type), 400, "missing_file")
    assert_error(post_json(url, {"inputs": []}), 422, "invalid_request")


def test_the_openapi_schema_documents_read_number(trained_server):
    status, _, spec = call(f"{trained_server.url}/openapi.json")
    assert status == 200
    operation = spec["paths"]["/api/read-number"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"] == "#/components/schemas/NumberResponse"
    assert {"400", "413", "415", "422"} <= set(operation["responses"])
    schemas = spec["components"]["schemas"]
    assert {"number", "confidence", "digits"} <= set(schemas["NumberReading"]["properties"])
    assert "box" in schemas["NumberDigit"]["properties"]
    json.dumps(spec)  # the whole document is plain JSON
