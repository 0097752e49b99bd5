"""The drawing page in a real browser: Playwright drives Debian's Chromium against the real server.

Digits are drawn with mouse strokes on the canvas, a file is uploaded, a correction is sent.
Screenshots of the page on a desktop and a phone viewport are saved in artifacts/.
"""

import itertools
import sqlite3
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image, ImageDraw

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
# Flags that let Chromium run headless as root in a container with no network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
)

# Strokes in canvas coordinates 0-1, drawn the way a person would.
DIGITS = {
    1: [[(0.5, 0.15), (0.5, 0.85)]],
    7: [[(0.28, 0.22), (0.72, 0.22), (0.42, 0.82)]],
    0: [
        [
            (0.5, 0.15),
            (0.32, 0.25),
            (0.26, 0.5),
            (0.32, 0.75),
            (0.5, 0.85),
            (0.68, 0.75),
            (0.74, 0.5),
            (0.68, 0.25),
            (0.5, 0.15),
        ]
    ],
    4: [[(0.6, 0.85), (0.6, 0.15), (0.25, 0.6), (0.78, 0.6)]],
}


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def stroke_points(page, stroke, steps=8):
    """A stroke's points in page pixels, with `steps` points on each segment."""
    box = page.locator("#pad").bounding_box()
    corners = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
    points = [corners[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        points += [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(1, steps + 1)]
    return points


def draw(page, strokes):
    """Mouse strokes on the canvas."""
    for stroke in strokes:
        first, *rest = stroke_points(page, stroke)
        page.mouse.move(*first)
        page.mouse.down()
        for point in rest:
            page.mouse.move(*point)
        page.mouse.up()


def draw_with(page, strokes, device):
    """Strokes with a finger ("touch") or a pen ("pen"), as the browser's input layer gets them."""
    cdp = page.context.new_cdp_session(page)
    for stroke in strokes:
        points = stroke_points(page, stroke)
        for index, (x, y) in enumerate(points):
            if device == "touch":
                kind = "touchStart" if index == 0 else "touchMove"
                cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
            else:
                kind = "mousePressed" if index == 0 else "mouseMoved"
                event = {"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "pointerType": "pen"}
                cdp.send("Input.dispatchMouseEvent", {**event, "clickCount": 1} if index == 0 else event)
        if device == "touch":
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        else:
            x, y = points[-1]
            event = {"type": "mouseReleased", "x": x, "y": y, "button": "left", "pointerType": "pen"}
            cdp.send("Input.dispatchMouseEvent", {**event, "clickCount": 1})
    cdp.detach()


def test_drawn_digits_are_read_live_and_a_correction_is_saved(browser, trained_server):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
    page.goto(trained_server.url)
    expect(page.locator("#model-info")).to_contain_text("Model:")

    for digit, strokes in DIGITS.items():
        page.click("#clear")
        expect(page.locator("#digit")).to_have_text("–")
        draw(page, strokes)
        expect(page.locator(".result")).to_have_attribute("aria-busy", "false", timeout=10_000)
        expect(page.locator("#digit")).to_have_text(str(digit))
        expect(page.locator("#confidence")).to_contain_text("% sure")
        top = page.locator("#bars li.top")
        expect(top).to_have_count(1)
        expect(top.locator("span").first).to_have_text(str(digit))
    # The 28x28 image the model saw is drawn: white ink on black somewhere in the preview.
    lit = page.evaluate(
        "() => Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 200).length"
    )
    assert lit > 20

    # "Wrong? It was a ..." stores the image, the prediction and the right label.
    page.click('#labels button[data-label="9"]')
    expect(page.locator("#status")).to_contain_text("saved as a 9")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-desktop.png"), full_page=True)
    with sqlite3.connect(trained_server.feedback_db) as connection:
        predicted, label, model = connection.execute(
            "SELECT predicted, label, model FROM feedback ORDER BY id DESC"
        ).fetchone()
    assert (predicted, label) == (4, 9) and model
    assert not errors, errors
    page.close()


def test_an_uploaded_photo_is_read(browser, trained_server, tmp_path):
    from playwright.sync_api import expect

    photo = Image.new("RGB", (600, 800), (225, 222, 210))  # grayish paper, dark pen
    pen = ImageDraw.Draw(photo)
    pen.line([(180, 200), (420, 200), (260, 640)], fill=(40, 40, 60), width=22, joint="curve")
    path = tmp_path / "seven.jpg"
    photo.save(path, quality=85)

    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.goto(trained_server.url)
    page.set_input_files("#upload", str(path))
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)
    page.close()


def test_a_pen_draws_too(browser, trained_server):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.goto(trained_server.url)
    draw_with(page, DIGITS[1], "pen")
    expect(page.locator("#digit")).to_have_text("1", timeout=10_000)
    page.close()


def test_a_finger_draws_on_a_phone_and_the_page_fits_it(browser, trained_server):
    from playwright.sync_api import expect

    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.goto(trained_server.url)
    draw_with(page, DIGITS[7], "touch")
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)
    assert page.evaluate("() => window.scrollY") == 0  # the finger drew; it did not scroll the page
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] >= 300 and pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)
    context.close()
