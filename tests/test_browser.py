"""The drawing page in a real browser: Playwright drives Chromium or Chrome against the real server.

Digits and numbers are drawn with mouse, pen and finger strokes on the canvas, a file is uploaded, a
correction is sent, the keyboard walks every control. Screenshots of the page on a desktop and a phone
viewport, light and dark, are saved in artifacts/.
"""

import io
import itertools
import json
import shutil
import sqlite3
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image, ImageChops, ImageDraw

ARTIFACTS = REPO / "artifacts"
# Looked for on PATH in this order, as a user's machine has them; then Playwright's own download.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_BROWSER = (
    "no Chromium or Chrome on PATH ({names}) and no browser downloaded by Playwright: "
    "install one (e.g. `apt install chromium`) or run `python -m playwright install chromium`"
)
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
DESKTOP = {"width": 1200, "height": 800}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}

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


def find_browser(chromium_executable: str | None) -> str | None:
    """The first of BROWSER_NAMES on PATH, else Playwright's downloaded Chromium if it is there."""
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if chromium_executable and Path(chromium_executable).is_file():
        return chromium_executable
    return None


def test_the_browser_is_found_on_path_first_then_in_playwrights_download(tmp_path, monkeypatch):
    downloaded = tmp_path / "ms-playwright" / "chrome"
    downloaded.parent.mkdir()
    downloaded.write_text("#!/bin/sh\n")
    downloaded.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_browser(str(downloaded)) == str(downloaded)
    assert find_browser(str(tmp_path / "not-downloaded")) is None
    assert find_browser(None) is None
    for name in ("google-chrome-stable", "chromium-browser"):  # the earlier name in BROWSER_NAMES wins
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    assert find_browser(str(downloaded)) == str(bin_dir / "chromium-browser")


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="needs Playwright: pip install playwright"
    )
    with playwright_api.sync_playwright() as playwright:
        try:
            downloaded = playwright.chromium.executable_path
        except Exception:  # an unusual Playwright install: then only PATH counts
            downloaded = None
        executable = find_browser(downloaded)
        if executable is None:
            pytest.skip(NO_BROWSER.format(names=", ".join(BROWSER_NAMES)))
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Factory: a page in a fresh context; script errors, failed requests and CSP refusals fail the test."""
    contexts, problems = [], []

    def build(url, **options):
        options.setdefault("viewport", DESKTOP)
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.goto(url)
        page.wait_for_function(
            "() => !document.getElementById('model-info').textContent.startsWith('Asking')"
        )
        return page

    yield build
    for context in contexts:
        context.close()
    assert not problems, problems


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def stroke_points(page, stroke, region=(0, 0, 1, 1), steps=8):
    """A stroke's points in page pixels, with `steps` points on each segment; `region` is the part of
    the pad (left, top, right, bottom, 0-1) that the stroke's 0-1 coordinates span."""
    box = page.locator("#pad").bounding_box()
    left, top, right, bottom = region
    corners = [
        (
            box["x"] + (left + x * (right - left)) * box["width"],
            box["y"] + (top + y * (bottom - top)) * box["height"],
        )
        for x, y in stroke
    ]
    points = [corners[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        points += [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(1, steps + 1)]
    return points


def draw(page, strokes, region=(0, 0, 1, 1)):
    """Mouse strokes on the canvas."""
    for stroke in strokes:
        first, *rest = stroke_points(page, stroke, region)
        page.mouse.move(*first)
        page.mouse.down()
        for point in rest:
            page.mouse.move(*point)
        page.mouse.up()


def draw_number(page, digits):
    """Each digit in its own square slot, side by side across the pad, as a person writes a number."""
    box = page.locator("#pad").bounding_box()
    width = 1 / len(digits)
    height = min(1.0, width * box["width"] / box["height"])  # a square slot
    for index, digit in enumerate(digits):
        draw(page, DIGITS[digit], (index * width, (1 - height) / 2, (index + 1) * width, (1 + height) / 2))


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


def settle(page):
    """Wait until the page has its answer to the latest drawing."""
    from playwright.sync_api import expect

    expect(page.locator(".result")).to_have_attribute("aria-busy", "false", timeout=10_000)


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_drawn_digits_are_read_live_and_a_correction_is_saved(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url)
    for digit, strokes in DIGITS.items():
        page.click("#clear")
        expect(page.locator("#digit")).to_have_text("–")
        draw(page, strokes)
        settle(page)
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
    screenshot(page, "page-desktop.png")
    with sqlite3.connect(trained_server.feedback_db) as connection:
        predicted, label, model = connection.execute(
            "SELECT predicted, label, model FROM feedback ORDER BY id DESC"
        ).fetchone()
    assert (predicted, label) == (4, 9) and model


def test_the_page_says_which_model_answers_and_how_accurate_it_is(open_page, trained_server):
    from playwright.sync_api import expect

    model = get_json(f"{trained_server.url}/api/model")
    assert model["test_accuracy"] is not None  # a shipped model records it
    page = open_page(trained_server.url)
    info = page.locator("#model-info")
    expect(info).to_contain_text(f"Model: {model['name']}")
    expect(info).to_contain_text(f"{100 * model['test_accuracy']:.2f}% right on MNIST's 10,000 test digits")


def test_an_uploaded_photo_is_read(open_page, trained_server, tmp_path):
    from playwright.sync_api import expect

    photo = Image.new("RGB", (600, 800), (225, 222, 210))  # grayish paper, dark pen
    pen = ImageDraw.Draw(photo)
    pen.line([(180, 200), (420, 200), (260, 640)], fill=(40, 40, 60), width=22, joint="curve")
    path = tmp_path / "seven.jpg"
    photo.save(path, quality=85)

    page = open_page(trained_server.url)
    page.set_input_files("#upload", str(path))
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)


def test_a_pen_draws_too(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url)
    draw_with(page, DIGITS[1], "pen")
    expect(page.locator("#digit")).to_have_text("1", timeout=10_000)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_finger_draws_on_a_phone_and_the_answer_is_in_view(open_page, trained_server, scheme):
    from playwright.sync_api import expect

    page = open_page(trained_server.url, **PHONE, color_scheme=scheme)
    draw_with(page, DIGITS[7], "touch")
    expect(page.locator("#digit")).to_have_text("7", timeout=10_000)
    assert page.evaluate("() => window.scrollY") == 0  # the finger drew; it did not scroll the page
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] >= 300 and pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
    # The answer and its confidence are on the first screen, without scrolling.
    for selector in ("#digit", "#confidence"):
        box = page.locator(selector).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, (selector, box)
    screenshot(page, f"page-phone-{scheme}.png")


def test_on_a_short_screen_the_answer_is_scrolled_into_view_once_the_pen_rests(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url, **{**PHONE, "viewport": {"width": 390, "height": 560}})
    answer = page.locator(".answer")
    assert answer.bounding_box()["y"] > 560  # below the fold before drawing
    draw_with(page, DIGITS[1], "touch")
    expect(page.locator("#digit")).to_have_text("1", timeout=10_000)
    page.wait_for_function(
        "() => { const box = document.querySelector('.answer').getBoundingClientRect();"
        " return box.top >= 0 && box.bottom <= window.innerHeight; }",
        timeout=5_000,
    )
    assert page.evaluate("() => window.scrollY") > 0


def test_a_number_written_side_by_side_is_read(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url)
    asked = []
    page.on("request", lambda r: r.method == "POST" and asked.append(r.url.rsplit("/", 1)[-1]))
    page.get_by_text("A number", exact=True).click()
    expect(page.locator("#title")).to_have_text("Write a number")
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] > 1.9 * pad["height"]  # a wide pad for digits side by side
    draw_number(page, [1, 7, 4])
    settle(page)
    expect(page.locator("#digit")).to_have_text("174")
    expect(page.locator("#confidence")).to_contain_text("sure of every digit")
    assert set(asked) == {"read-number"}
    tiles = page.locator("#tiles button")
    expect(tiles).to_have_count(3)
    expect(tiles.nth(0)).to_have_attribute("aria-pressed", "true")
    # A chosen digit shows its own probabilities and takes a correction for itself.
    tiles.nth(1).click()
    expect(tiles.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#bars li.top span").first).to_have_text("7")
    expect(page.locator("#feedback-label")).to_have_text("Wrong? Digit 2 was a")
    screenshot(page, "page-desktop-number.png")
    page.keyboard.press("Escape")
    expect(page.locator("#digit")).to_have_text("–")
    expect(page.locator("#tiles")).to_be_hidden()


def test_several_digits_in_one_digit_mode_show_the_servers_note_and_can_be_read_as_a_number(
    open_page, trained_server
):
    from playwright.sync_api import expect

    page = open_page(trained_server.url)
    notes = []
    page.on(
        "response",
        lambda r: r.url.endswith("/api/predict") and notes.append(r.json()["predictions"][0]["note"]),
    )
    draw_number(page, [1, 7])
    settle(page)
    assert notes and notes[-1]  # the server said the image holds several digits ...
    expect(page.locator("#note")).to_be_visible()  # ... and the page says what the server said
    expect(page.locator("#note-text")).to_have_text(notes[-1])
    page.click("#as-number")
    settle(page)
    expect(page.locator('input[name="mode"][value="number"]')).to_be_checked()
    expect(page.locator("#digit")).to_have_text("17")  # the same drawing, reread as a number
    expect(page.locator("#note")).to_be_hidden()


# Keeps a copy of each file the page posts (Playwright does not show a fetch's Blob body).
RECORD_UPLOADS = """
window.sentFiles = [];
const originalFetch = window.fetch;
window.fetch = async (url, options) => {
  const file = options && options.body instanceof FormData ? options.body.get("file") : null;
  if (file) window.sentFiles.push(Array.from(new Uint8Array(await file.arrayBuffer())));
  return originalFetch(url, options);
};
"""


def sent_file(page, strokes):
    """The file the page sends for these strokes."""
    page.add_init_script(RECORD_UPLOADS)
    page.reload()
    draw(page, strokes)
    settle(page)
    return bytes(page.evaluate("() => window.sentFiles.at(-1)"))


def test_the_pad_is_sharp_on_dense_screens_and_sends_the_same_image(open_page, trained_server):
    sent = {}
    for ratio in (1, 2, 3):
        page = open_page(trained_server.url, device_scale_factor=ratio)
        size = page.evaluate(
            "() => { const pad = document.getElementById('pad'); const box = pad.getBoundingClientRect();"
            " return [pad.width, pad.height, box.width, box.height]; }"
        )
        assert size[0] == round(size[2] * ratio) and size[1] == round(size[3] * ratio), size
        sent[ratio] = sent_file(page, DIGITS[7])
    assert Image.open(io.BytesIO(sent[1])).size == (280, 280)
    assert sent[2] == sent[1] and sent[3] == sent[1]  # the same bytes, whatever the screen


def luminance(rgb):
    channels = [c / 255 for c in rgb]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a, b):
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


COLORS = """() => {
  const rgb = (element, property) =>
    getComputedStyle(element)[property].match(/\\d+/g).slice(0, 3).map(Number);
  const top = document.querySelector('#bars li.top .fill');
  const other = document.querySelector('#bars li:not(.top) .fill');
  return {page: rgb(document.documentElement, 'backgroundColor'), card: rgb(document.querySelector('.result'),
    'backgroundColor'), track: rgb(document.querySelector('.bar'), 'backgroundColor'),
    top: rgb(top, 'backgroundColor'), other: rgb(other, 'backgroundColor'),
    text: rgb(document.body, 'color'), muted: rgb(document.getElementById('confidence'), 'color')};
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dark_mode_follows_the_system_and_the_bars_keep_their_contrast(open_page, trained_server, scheme):
    from playwright.sync_api import expect

    page = open_page(trained_server.url, color_scheme=scheme)
    draw(page, DIGITS[0])
    settle(page)
    expect(page.locator("#digit")).to_have_text("0")
    colors = page.evaluate(COLORS)
    assert (luminance(colors["page"]) < 0.05) == (scheme == "dark"), colors
    for fill in ("top", "other"):  # bars against their track and the card around them: at least 3:1
        assert contrast(colors[fill], colors["track"]) >= 3, (fill, colors)
        assert contrast(colors[fill], colors["card"]) >= 3, (fill, colors)
    assert (
        contrast(colors["text"], colors["card"]) >= 4.5 and contrast(colors["muted"], colors["card"]) >= 4.5
    )
    # The pad takes the scheme's colours; what is sent stays dark ink on white.
    corner = page.evaluate(
        "() => Array.from(document.getElementById('pad').getContext('2d').getImageData(1, 1, 1, 1).data)"
    )
    assert (luminance(corner[:3]) < 0.05) == (scheme == "dark"), corner
    screenshot(page, f"page-desktop-{scheme}.png")


MARK_CONTROLS = """() => {
  const controls = [...document.querySelectorAll('button, a[href], input, [tabindex]')].filter((e) => {
    const shown = e.matches('input.visually-hidden, .modes input') ? e.nextElementSibling : e;
    return shown.getClientRects().length > 0 && !e.closest('[hidden]');
  });
  return controls.map((e, k) => {
    e.dataset.k = k;
    const shown = e.matches('input.visually-hidden, .modes input') ? e.nextElementSibling : e;
    const box = shown.getBoundingClientRect();
    const name = e.id || e.value || e.dataset.label || e.textContent.trim();
    return {k, name, unchecked_radio: e.type === 'radio' && !e.checked,
            box: {x: box.x - 7, y: box.y - 7, width: box.width + 14, height: box.height + 14}};
  });
}"""


def focus_rings(page):
    """(control, whether focusing it by keyboard changed how it looks) for every control reached by Tab."""
    page.mouse.click(2, 2)  # Tab starts from the top of the page; no hover effects in the pictures
    controls = page.evaluate(MARK_CONTROLS)
    unfocused = {c["k"]: page.screenshot(clip=c["box"]) for c in controls}
    reached = {}
    for _ in range(len(controls) + 5):
        page.keyboard.press("Tab")
        k = page.evaluate("() => document.activeElement.dataset.k ?? null")
        if k is None or int(k) in reached:
            break
        focused = Image.open(io.BytesIO(page.screenshot(clip=controls[int(k)]["box"])))
        before = Image.open(io.BytesIO(unfocused[int(k)]))
        reached[int(k)] = (
            ImageChops.difference(focused.convert("RGB"), before.convert("RGB")).getbbox() is not None
        )
    expected = {c["k"] for c in controls if not c["unchecked_radio"]}
    names = {c["k"]: c["name"] for c in controls}
    assert set(reached) == expected, ({names[k] for k in expected - set(reached)}, "not reached by Tab")
    return [(names[k], changed) for k, changed in reached.items()]


def test_every_control_shows_where_the_keyboard_is(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url, viewport={"width": 1200, "height": 1100})
    draw_number(page, [1, 7])  # one-digit mode with two digits: the note and its button too
    settle(page)
    expect(page.locator("#as-number")).to_be_visible()
    rings = focus_rings(page)
    assert {"upload", "clear", "as-number", "digit"} <= {name for name, _ in rings}
    assert all(changed for _, changed in rings), [name for name, changed in rings if not changed]
    page.click("#as-number")  # a number: its digit tiles too
    settle(page)
    expect(page.locator("#tiles button")).to_have_count(2)
    rings = focus_rings(page)
    assert all(changed for _, changed in rings), [name for name, changed in rings if not changed]


LIVE_REGIONS = (
    "() => document.querySelectorAll('[aria-live], [role=status], [role=alert], [role=log], "
    "[role=timer], [role=marquee], output').length"
)


def test_one_live_region_announces_answers_and_escape_clears(open_page, trained_server):
    from playwright.sync_api import expect

    page = open_page(trained_server.url)
    assert page.evaluate(LIVE_REGIONS) == 1
    draw(page, DIGITS[4])
    settle(page)
    announce = page.locator("[role=status]")
    expect(announce).to_contain_text("4, ")
    expect(announce).to_contain_text("% sure")
    assert page.evaluate(LIVE_REGIONS) == 1  # still one once the answer and the feedback row are shown
    page.keyboard.press("Escape")
    expect(page.locator("#digit")).to_have_text("–")
    expect(page.locator("#feedback")).to_be_hidden()
    # The pad is blank again: every pixel the paper's colour.
    colours = page.evaluate(
        "() => { const pad = document.getElementById('pad');"
        " const data = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;"
        " const seen = new Set();"
        " for (let i = 0; i < data.length; i += 4) seen.add(data.slice(i, i + 3).join());"
        " return [...seen]; }"
    )
    assert len(colours) == 1, colours[:5]


class FailingProxy:
    """A reverse proxy on loopback whose upstream answers GETs, while every POST gets the proxy's own
    HTML 502 page, as nginx gives when its upstream is down."""

    def __init__(self, upstream: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with urllib.request.urlopen(upstream + self.path, timeout=30) as response:
                    body = response.read()
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.headers["Content-Type"])
                    for name in ("Content-Security-Policy", "X-Content-Type-Options"):
                        if response.headers[name]:
                            self.send_header(name, response.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
                self.send_response(502)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_an_html_error_page_from_a_proxy_is_reported_as_such(browser, trained_server):
    from playwright.sync_api import expect

    proxy = FailingProxy(trained_server.url)
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(proxy.url)
        draw(page, DIGITS[1])
        settle(page)
        status = page.locator("#status")
        expect(status).to_have_class("error")
        expect(status).to_contain_text("The server answered 502 Bad Gateway with a web page")
        expect(status).to_contain_text("proxy or gateway")
        assert "JSON.parse" not in status.text_content() and "Unexpected token" not in status.text_content()
        expect(page.locator("[role=status]")).to_have_text(status.text_content())
        expect(page.locator("#digit")).to_have_text("–")
        screenshot(page, "page-desktop-proxy-error.png")
    finally:
        context.close()
        proxy.stop()
