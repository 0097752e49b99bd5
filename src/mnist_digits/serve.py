"""The drawing page and the HTTP API: `create_app(config)` builds the FastAPI app, `run(config)` serves it.

Every image, drawn on the page, uploaded or sent as base64, goes through `predict`'s single
preprocessing path; 784 raw pixels skip only the photo steps. Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import logging
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, images, schemas
from .errors import InputError, MnistDigitsError
from .feedback import FeedbackError, FeedbackStore
from .pretrained import DEFAULT_MODEL

if TYPE_CHECKING:
    from .predict import Prediction, Recognizer

# The only files the server sends besides JSON: the page's three, read once when the app is built.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    # The page loads nothing from anywhere else and may not be framed by other sites.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
UPLOAD_TYPES = ("image/", "application/octet-stream")  # content types accepted for uploaded files
DRAIN_FACTOR = 4  # a body up to this many times the limit is read to its end, so the client sees the 413
DRAIN_SECONDS = 2.0  # s; the most time spent draining a body already known to be over the limit
HEAD_LIMIT_BYTES = 16 * 2**10  # largest request line and headers together (h11's default, made explicit)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
SAFE_METHODS = ("GET", "HEAD")  # requests that change nothing and cost little: allowed from any origin
# Swagger UI's script, style and icon, as the fastapi-offline package ships them: /docs works offline.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
DOCS_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mnist-digits API</title>
<link rel="icon" href="/docs/favicon.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# A script of its own rather than inline, so that the page's CSP needs no 'unsafe-inline'. No validator
# badge: it would send the API's description to an outside site.
DOCS_SCRIPT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""
LOG = logging.getLogger("uvicorn.error")  # where uvicorn writes its own errors, at the server's log level
T = TypeVar("T")
MAX_NUMBER_DIGITS = 32  # most digits /api/read-number answers for one image (each carries its 784 pixels)


@dataclass(frozen=True)
class ServeConfig:
    model: str = DEFAULT_MODEL  # a shipped model's name or a .safetensors file
    host: str = "127.0.0.1"  # interface to listen on; loopback keeps the server private to this machine
    port: int = 8000  # TCP port; 0 lets the system pick a free one
    device: str = "cpu"  # where the model runs: cpu, cuda, auto
    tta: bool = False  # test-time augmentation: average over 5 views of each image
    feedback_db: Path | None = None  # SQLite file for corrections; None: the user data directory
    allowed_origins: tuple[str, ...] = ()  # other web origins allowed to call the API (CORS); none by default
    max_body_bytes: int = 4 * 2**20  # largest request body, bytes (uploads, JSON)
    max_image_pixels: int = 4096 * 4096  # largest image, width x height, checked before decoding
    max_batch: int = 64  # most images in one request
    max_request_pixels: int = 4 * 4096 * 4096  # most pixels decoded for one request, its images together
    max_parallel: int = 4  # requests whose images are decoded and recognized at once; the others wait
    max_connections: int = 64  # open connections at once; a request on one more is answered 503
    header_timeout: float = 10.0  # s; to send a request's line and headers
    body_timeout: float = 30.0  # s; to send a request's body
    keep_alive_timeout: float = 5.0  # s; an idle connection is closed after this
    torch_threads: int = 1  # threads per forward pass; concurrent requests use the other cores

    def __post_init__(self) -> None:
        for option, value in (
            ("--max-connections", self.max_connections),
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--keep-alive-timeout", self.keep_alive_timeout),
        ):
            if not value > 0:  # NaN too
                raise MnistDigitsError(f"{option} {value}: give a positive number.")


class ApiError(Exception):
    """An error answered as JSON: the status code, a short kind, and a message for the caller."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _error_response(status: int, error: str, message: str) -> JSONResponse:
    body = schemas.ErrorBody(status=status, error=error, message=message)
    return JSONResponse(body.model_dump(), status_code=status)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody, "description": description}
    for code, description in {
        400: "Malformed JSON, base64, image file or HTTP; a Host that is not this server's",
        403: "A request from a web page of another origin (see --allow-origin)",
        408: "The request's head or body did not arrive in time",
        413: "Body, image, pixels or batch over the limits",
        415: "Not JSON or multipart/form-data, or a file that is not an image",
        422: "JSON that does not fit the schema, or an image without a digit to correct",
        431: "Headers over 16 KiB together",
        500: "The server's own trouble, such as a feedback database it can no longer write",
        503: "Too many open connections",
    }.items()
}


def create_app(config: ServeConfig) -> FastAPI:
    """The app with its model loaded and warmed up, the page's files read, the feedback store ready."""
    from .device import pick_device
    from .predict import load_model

    _check_origins(config.allowed_origins)
    recognizer = load_model(config.model, pick_device(config.device), tta=config.tta)
    model_name = config.model  # a shipped model's name, or the file's path as given
    store = FeedbackStore(config.feedback_db)
    store.count()  # a database that cannot be opened stops the start, not a person's first correction
    static = {name: (resources.files("mnist_digits") / "static" / name).read_bytes() for name in STATIC_FILES}
    recognizer.probabilities(np.zeros((1, 28, 28), np.float32))  # the first call is slow: pay it now

    docs = {name: (resources.files("fastapi_offline") / "static" / name).read_bytes() for name in DOCS_ASSETS}
    work = asyncio.Semaphore(config.max_parallel)  # bounds the memory and threads that decoding takes

    async def in_worker(function: Callable[..., T], *args: Any) -> T:
        # Decoding and the model take milliseconds of CPU: off the event loop, in worker threads.
        async with work:
            return await run_in_threadpool(function, *args)

    app = FastAPI(
        title="mnist-digits",
        version=__version__,
        description="Recognize handwritten digits. The drawing page is at `/`.",
        docs_url=None,  # served below from the shipped Swagger UI files, not from a CDN
        redoc_url=None,
    )
    if config.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )
    app.add_middleware(RequestGuard, config=config)  # added last: the outermost, before CORS and the routes
    _install_error_handlers(app)
    _document_predict_bodies(app)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", f"/static/{name}: no such file.")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> Response:
        return Response(DOCS_PAGE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if name == "init.js":
            return Response(DOCS_SCRIPT, media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS)
        if name not in DOCS_ASSETS:
            raise ApiError(404, "not_found", f"/docs/{name}: no such file. The API docs are at /docs.")
        return Response(docs[name], media_type=DOCS_ASSETS[name], headers=PAGE_HEADERS)

    @app.get("/api/health", response_model=schemas.Health, tags=["service"])
    def health() -> schemas.Health:
        """The server is up and its model is loaded."""
        return schemas.Health(status="ok", model=model_name)

    @app.get("/api/model", response_model=schemas.ModelInfo, tags=["service"])
    def model_info() -> schemas.ModelInfo:
        """Which model answers, its accuracy on MNIST's test set, and its metadata."""
        metadata = recognizer.metadata
        return schemas.ModelInfo(
            name=model_name,
            file=_shown_file(config.model, recognizer.path),
            parameters=recognizer.parameter_count or 0,
            test_accuracy=metadata.get("test_accuracy"),
            metadata=metadata,
        )

    @app.post(
        "/api/predict",
        response_model=schemas.PredictResponse,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": _predict_request_body(config)},
    )
    async def predict(request: Request) -> schemas.PredictResponse:
        """Recognize a batch of images: an upload (multipart field `file`, repeatable) or JSON."""
        inputs = await _read_inputs(request, config)
        predictions = await in_worker(_recognize, recognizer, inputs, config)
        return schemas.PredictResponse(model=model_name, predictions=predictions)

    @app.post(
        "/api/read-number",
        response_model=schemas.NumberResponse,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": _predict_request_body(config)},
    )
    async def read_number(request: Request) -> schemas.NumberResponse:
        """Read each image's digits, written side by side, left to right as a number. Same bodies as
        /api/predict."""
        inputs = await _read_inputs(request, config)
        numbers = await in_worker(_read_numbers, recognizer, inputs, config)
        return schemas.NumberResponse(model=model_name, numbers=numbers)

    @app.post(
        "/api/feedback",
        response_model=schemas.FeedbackResponse,
        status_code=201,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": _json_request_body("FeedbackRequest")},
    )
    async def feedback(request: Request) -> schemas.FeedbackResponse:
        """Store a person's correction: the 28x28 image a prediction returned and the right digit."""
        correction = _parse_json(request, await request.body(), schemas.FeedbackRequest)
        image = np.array(correction.pixels, dtype=np.uint8).reshape(28, 28)
        (reading,) = await in_worker(recognizer.predict_pixels, image[None])
        if reading.digit is None:  # a blank image labelled as a digit would teach the model nonsense
            raise ApiError(
                422,
                "no_digit",
                "The image holds no digit (it is blank, nearly empty or ink all over): send the `image` "
                "of a prediction that found one.",
            )
        sample_id = await in_worker(store.add, image, correction.label, reading.digit, model_name)
        stored = await in_worker(store.count)
        return schemas.FeedbackResponse(
            id=sample_id, label=correction.label, predicted=reading.digit, stored=stored
        )

    return app


def run(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C. The socket is bound first, so the announced URL has the real port."""
    import torch
    import uvicorn

    torch.set_num_threads(config.torch_threads)
    # Pillow warns about each damaged file it still reads (corrupt EXIF, odd TIFF tags): people's
    # uploads, answered as such, not news for the server's log.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off only on sockets that say so,
    # and with it on, every keep-alive response waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        sock.close()
        raise MnistDigitsError(
            f"cannot listen on {config.host}:{config.port} ({e.strerror or e}). "
            "Is another server using the port? Choose another with --port."
        ) from e
    try:
        app = create_app(config)
    except BaseException:
        sock.close()
        raise
    sock.listen(2048)  # from here on, connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    shown_host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    announce(f"Serving model {config.model} on http://{shown_host}:{port}/ (API docs at /docs)")
    if not _is_loopback(config.host):
        announce(f"warning: {config.host} is reachable from other machines; the API has no authentication.")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=_guarded_protocol(config),  # h11, with a deadline for each request's head
            ws="none",  # no WebSocket routes: an upgrade request is an ordinary request
            lifespan="off",
            h11_max_incomplete_event_size=HEAD_LIMIT_BYTES,
            timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    server.run(sockets=[sock])


# --- reading requests -------------------------------------------------------------------------


async def _read_inputs(
    request: Request, config: ServeConfig
) -> list[schemas.ImageInput] | list[tuple[str, bytes]]:
    """The images of a JSON or multipart body (/api/predict and /api/read-number take the same)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted: send application/json "
            "or multipart/form-data with the image in a field named `file`.",
        )
    body = await request.body()  # read by the RequestGuard already, within the size limit and in time
    if content_type == "application/json":
        return _parse_predict_json(body, config.max_batch)
    return await _read_uploads(request, body, config.max_batch)


Model = TypeVar("Model", bound=BaseModel)


def _parse_json(request: Request, body: bytes, model: type[Model]) -> Model:
    """The body as `model`: 415 unless it is JSON, 400 for malformed JSON, 422 for JSON of the wrong shape."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted: send application/json.",
        )
    if not body.strip():
        raise ApiError(400, "invalid_json", "The body is empty: send a JSON object, as /docs describes.")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        if any(error["type"] == "json_invalid" for error in e.errors()):
            raise ApiError(400, "invalid_json", f"The body is not valid JSON: {e.errors()[0]['msg']}.") from e
        raise RequestValidationError(e.errors()) from e


def _parse_predict_json(body: bytes, max_batch: int) -> list[schemas.ImageInput]:
    if not body.strip():
        raise ApiError(400, "invalid_json", "The body is empty: send a JSON object, as /docs describes.")
    try:
        request = schemas.PredictRequest.model_validate_json(body)
    except ValidationError as e:
        if any(error["type"] == "json_invalid" for error in e.errors()):
            raise ApiError(400, "invalid_json", f"The body is not valid JSON: {e.errors()[0]['msg']}.") from e
        raise RequestValidationError(e.errors()) from e
    _check_batch(len(request.inputs), max_batch)
    return request.inputs


async def _read_uploads(request: Request, body: bytes, max_batch: int) -> list[tuple[str, bytes]]:
    """The name and bytes of each file in the multipart field `file`, checked to claim an image type."""

    async def replay() -> dict[str, Any]:  # the body was read already, within the size limit
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except StarletteHTTPException as e:  # a malformed body
        raise ApiError(400, "invalid_multipart", f"Cannot read the multipart form: {e.detail}") from e
    try:  # closes the form's spooled files on every path, errors included
        files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
        if not files:
            raise ApiError(
                400, "missing_file", "The form has no file: send the image in a field named `file`."
            )
        _check_batch(len(files), max_batch)
        contents: list[tuple[str, bytes]] = []
        for upload in files:
            content_type = (upload.content_type or "application/octet-stream").lower()
            if not content_type.startswith(UPLOAD_TYPES):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"{upload.filename or 'the file'} is {content_type}, not an image. "
                    "Upload a PNG, JPEG, GIF, BMP, WebP or TIFF file.",
                )
            contents.append((upload.filename or f"file {len(contents)}", await upload.read()))
        return contents
    finally:
        await form.close()


def _check_batch(count: int, max_batch: int) -> None:
    if count > max_batch:
        raise ApiError(
            413,
            "too_many_images",
            f"{count} images in one request; the limit is {max_batch}. Split them over several requests.",
        )


def _recognize(
    recognizer: Recognizer, inputs: Sequence[schemas.ImageInput | tuple[str, bytes]], config: ServeConfig
) -> list[schemas.Prediction]:
    """Image files through the recognizer's preprocessing; MNIST-format pixels straight to the model."""

    def read(image: Image.Image | np.ndarray) -> Prediction:
        if isinstance(image, np.ndarray):
            return recognizer.predict_pixels(image[None])[0]
        return recognizer.predict(image)[0]

    readings = _each_image(inputs, config, recognizer.config.work_side, read)
    # A Prediction carries the top three digits; the page's bars show all ten: one more batched pass.
    found = [r.input for r in readings if r.input is not None]
    probabilities = iter(recognizer.probabilities(np.stack(found)) if found else [])
    return [_answer(r, next(probabilities) if r.input is not None else None) for r in readings]


def _read_numbers(
    recognizer: Recognizer, inputs: Sequence[schemas.ImageInput | tuple[str, bytes]], config: ServeConfig
) -> list[schemas.NumberReading]:
    """Each image's digits left to right, with all ten probabilities and the 28x28 input of each."""
    from .predict import NumberReading

    max_side = recognizer.config.work_side
    readings = [
        reading
        if len(reading.digits) <= MAX_NUMBER_DIGITS
        else NumberReading.failure(
            reading.source,
            f"{len(reading.digits)} separate marks, more than the {MAX_NUMBER_DIGITS} digits read as one "
            "number: crop the image to the number.",
        )
        for reading in _each_image(inputs, config, max_side, lambda image: recognizer.read_number(image)[0])
    ]
    found = [d.input for r in readings for d in r.digits if d.input is not None]
    probabilities = iter(recognizer.probabilities(np.stack(found)) if found else [])
    return [
        schemas.NumberReading(
            number=r.text,
            confidence=r.probability,
            uncertain=r.uncertain,
            digits=[
                schemas.NumberDigit(**_answer(d, next(probabilities)).model_dump(), box=list(box))
                for d, box in zip(r.digits, r.boxes, strict=True)
            ],
            error=r.error,
        )
        for r in readings
    ]


def _answer(reading: Prediction, probabilities: np.ndarray | None) -> schemas.Prediction:
    seen = None if reading.input is None else np.rint(np.clip(reading.input, 0, 1) * 255).astype(np.uint8)
    return schemas.Prediction(
        digit=reading.digit,
        confidence=reading.probability,
        uncertain=reading.uncertain,
        probabilities=[] if probabilities is None else probabilities.tolist(),
        image=None if seen is None else seen.ravel().tolist(),
        error=reading.error,
        note=reading.note,
    )


def _each_image(
    inputs: Sequence[schemas.ImageInput | tuple[str, bytes]],
    config: ServeConfig,
    max_side: int,
    read: Callable[[Image.Image | np.ndarray], T],
) -> list[T]:
    """`read` applied to each image in turn, an image decoded only once `read` is done with the one before.

    Every file's header is looked at first, so that a request over the pixel budget is refused before
    any pixel is decoded; then at most one image is in memory at its full size, whatever the batch.
    """
    sources = [_source(item, index) for index, item in enumerate(inputs)]
    decoded_pixels = sum(
        _decoded_pixels(*source, config.max_image_pixels, max_side)
        for source in sources
        if isinstance(source, tuple)
    )
    if decoded_pixels > config.max_request_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"The images of this request decode to {decoded_pixels:,} pixels together, over the limit of "
            f"{config.max_request_pixels:,}. Send fewer or smaller images per request.",
        )
    return [
        read(
            _open_upload(*source, config.max_image_pixels, max_side) if isinstance(source, tuple) else source
        )
        for source in sources
    ]


def _source(item: schemas.ImageInput | tuple[str, bytes], index: int) -> tuple[str, bytes] | np.ndarray:
    """An image file's name and bytes, or 784 pixels as a (28, 28) float array in [0, 1]."""
    if isinstance(item, tuple):
        return item
    if item.pixels is not None:
        return np.array(item.pixels, dtype=np.float32).reshape(28, 28) / np.float32(255)
    assert item.image_base64 is not None
    encoded = item.image_base64
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(
            400, "invalid_base64", f"inputs[{index}].image_base64 is not valid base64 ({e})."
        ) from e
    return f"inputs[{index}]", content


def _decoded_pixels(name: str, content: bytes, max_pixels: int, max_side: int) -> int:
    """How many pixels the file will decode to, from its header alone; the HTTP error if it cannot be used.

    A JPEG decodes at a reduced scale, at least `max_side` a side, as `images.open_image` does.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is below
            with Image.open(io.BytesIO(content), formats=images.SUPPORTED_FORMATS) as header:  # no pixels yet
                pixels: int | None = header.width * header.height
                if pixels and pixels <= max_pixels and header.format in ("JPEG", "MPO"):
                    header.draft(None, (max_side, max_side))
                    pixels = header.width * header.height
    except Image.DecompressionBombError:
        pixels = None  # more than Pillow's own limit
    except UnidentifiedImageError:
        raise ApiError(
            415,
            "unsupported_image",
            f"{name}: not an image file in a supported format ({', '.join(images.SUPPORTED_FORMATS)}). "
            "Convert it to PNG or JPEG.",
        ) from None
    except Exception as e:  # a known format, damaged: Pillow raises OSError, ValueError, EOFError...
        raise ApiError(
            400, "invalid_image", f"{name}: its header cannot be read ({e}). Save or export it again."
        ) from None
    if pixels is None or pixels > max_pixels:
        declared = f"{pixels:,} pixels" if pixels else "more pixels than Pillow allows"
        raise ApiError(
            413,
            "image_too_large",
            f"{name}: declares {declared}, over the limit of {max_pixels:,}. Scale the image down first.",
        )
    return pixels


def _open_upload(name: str, content: bytes, max_pixels: int, max_side: int) -> Image.Image:
    """An uploaded file decoded by `images.open_image`; 400 when it is truncated or corrupt."""
    try:
        return images.open_image(content, max_pixels=max_pixels, max_side=max_side, name=name)
    except InputError as e:  # truncated or corrupt
        raise ApiError(400, "invalid_image", str(e)) from e


# --- errors as JSON ---------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error_response(e.status, e.error, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        if any(error.get("type") == "json_invalid" for error in e.errors()):
            return _error_response(400, "invalid_json", "The body is not valid JSON.")
        problems = "; ".join(_describe(error) for error in e.errors()[:5])
        return _error_response(422, "invalid_request", f"The request does not fit the schema: {problems}.")

    @app.exception_handler(MnistDigitsError)
    async def server_error(request: Request, e: MnistDigitsError) -> JSONResponse:
        # The server's own trouble (a feedback database gone read-only or full). Its message names
        # files on this machine: the log gets it whole, the caller what it means for the request.
        LOG.error("%s %s: %s", request.method, request.url.path, e)
        if isinstance(e, FeedbackError):
            message = "The feedback database cannot be written, so the correction was not stored."
        else:
            message = "The server could not answer this request."
        return _error_response(500, "server_error", f"{message} The server's log says why.")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        # uvicorn logs the traceback after this answer: a bug to fix, not the caller's mistake.
        return _error_response(500, "internal_error", "The server failed on this request; its log says why.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        kind, message = {
            404: ("not_found", f"{path}: no such page or endpoint. The API is listed at /docs."),
            405: ("method_not_allowed", f"{request.method} is not allowed on {path}. See /docs."),
        }.get(e.status_code, ("http_error", str(e.detail)))
        return _error_response(e.status_code, kind, message)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


def _document_predict_bodies(app: FastAPI) -> None:
    """Add the JSON requests' models to the OpenAPI components (no route parameter declares them)."""
    components: dict[str, Any] = {}
    for model in (schemas.PredictRequest, schemas.FeedbackRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update({**schema.pop("$defs", {}), model.__name__: schema})
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            build().setdefault("components", {}).setdefault("schemas", {}).update(components)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- small helpers ----------------------------------------------------------------------------


def _check_origins(origins: tuple[str, ...]) -> None:
    for origin in origins:
        if origin == "*" or "://" not in origin or origin.endswith("/"):
            raise MnistDigitsError(
                f"--allow-origin {origin!r}: give a full origin such as https://example.org "
                "(scheme, host, optional port, no path); a wildcard is not allowed."
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _predict_request_body(config: ServeConfig) -> dict[str, Any]:
    """OpenAPI for the two accepted bodies (the endpoint reads the body itself to enforce limits)."""
    return {
        "required": True,
        "description": f"At most {config.max_body_bytes // 2**20} MiB and {config.max_batch} images; "
        f"each image at most {config.max_image_pixels:,} pixels, all of them together at most "
        f"{config.max_request_pixels:,}.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
        },
    }


def _json_request_body(model: str) -> dict[str, Any]:
    """OpenAPI for a JSON body that the endpoint reads itself (to answer malformed JSON with 400)."""
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }


def _shown_file(model: str, path: Path | None) -> str:
    """The model file as the user named it; a shipped model's by file name, not by where it is installed."""
    if path is None or Path(model).suffix:  # a file given by its path: shown as given
        return model
    return path.name


def _host_name(host_header: str) -> str:
    """The name in a Host header, without its port: `127.0.0.1:8000` -> `127.0.0.1`, `[::1]:80` -> `[::1]`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


# --- every request checked before the app reads it ----------------------------------------------


class RequestGuard:
    """ASGI middleware that checks each request's Host and Origin and reads its body, before any route.

    The body is read here, once, within the size limit and the body timeout, and replayed to the
    app: every route gets the same limits, and a client that goes away mid-upload ends the request
    quietly instead of raising in a route.
    """

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        # On loopback, a web page whose DNS name is re-pointed to 127.0.0.1 sends its own name as Host.
        self.hosts = {*LOOPBACK_NAMES, config.host.lower()} if _is_loopback(config.host) else None
        self.origins = frozenset(config.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _send_error(scope, receive, send, *refusal, close=True)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:  # answered already, or the client went away
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the server's own wait for a disconnect

        await self.app(scope, replay, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        # h11 bounds a head that arrives in pieces; one that arrives whole is measured here.
        if sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > HEAD_LIMIT_BYTES:
            return (
                431,
                "headers_too_large",
                f"The request's headers are over {HEAD_LIMIT_BYTES // 2**10} KiB together: send fewer or "
                "shorter ones.",
            )
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return (
                400,
                "host_not_allowed",
                f"Host {host or '(none)'!r} is not this server's name: call it by 127.0.0.1 or localhost.",
            )
        origin = headers.get("origin")
        if origin is None or scope["method"] in SAFE_METHODS or origin in self.origins:
            return None  # not from a web page, or a request that changes nothing; CORS decides the rest
        if origin == f"{scope.get('scheme', 'http')}://{host}":
            return None  # the page this server serves
        return (
            403,
            "origin_not_allowed",
            f"Requests from web pages at {origin} are refused. Start the server with --allow-origin {origin} "
            "to allow them.",
        )

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once an error has been answered or the client has gone away."""
        limit, seconds = self.config.max_body_bytes, self.config.body_timeout
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            # Not worth reading: the client may see the connection close before the answer.
            await _send_error(scope, receive, send, *_too_large(limit), close=True)
            return None
        over = declared.isdigit() and int(declared) > limit
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        try:
            # Known to be too large: drained briefly, only so that the client sees the 413.
            async with asyncio.timeout(min(seconds, DRAIN_SECONDS) if over else seconds) as deadline:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        LOG.info(
                            "%s %s: the client went away during the request", scope["method"], scope["path"]
                        )
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size <= limit:
                        chunks.append(chunk)
                    elif not over:
                        over = True
                        chunks = []
                        deadline.reschedule(min(deadline.when() or loop.time(), loop.time() + DRAIN_SECONDS))
                    if size > DRAIN_FACTOR * limit or not message.get("more_body", False):
                        break
        except TimeoutError:
            if not over:
                await _send_error(
                    scope,
                    receive,
                    send,
                    408,
                    "request_timeout",
                    f"The request body did not arrive within {seconds:g} s ({size:,} bytes came). "
                    "Send it at once, or a smaller one.",
                    close=True,
                )
                return None
        if over:
            await _send_error(scope, receive, send, *_too_large(limit), close=size > DRAIN_FACTOR * limit)
            return None
        return b"".join(chunks)


def _too_large(limit: int) -> tuple[int, str, str]:
    return (
        413,
        "payload_too_large",
        f"The request body is over the limit of {limit / 2**20:.1f} MiB. Send a smaller image, "
        "or fewer images per request.",
    )


async def _send_error(
    scope: Scope, receive: Receive, send: Send, status: int, error: str, message: str, *, close: bool = False
) -> None:
    """An error answered by ASGI middleware, in the routes' shape; `close` ends the connection after it."""
    response = _error_response(status, error, message)
    if close:  # the rest of the body is not read: the connection cannot carry another request
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _error_bytes(status: int, error: str, message: str) -> bytes:
    return schemas.ErrorBody(status=status, error=error, message=message).model_dump_json().encode()


def _guarded_protocol(config: ServeConfig) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's head, a cap on open connections,
    and its own errors (malformed HTTP, the cap) answered as JSON like the app's.

    uvicorn times out only idle kept-alive connections: a client that sends a header line a second,
    or connects and says nothing, would hold its connection open for as long as it likes.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > config.max_connections:
                self.app = _overloaded(config.max_connections)  # answers once the request's head is in
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None
            super().connection_lost(exc)

        def _watch_head(self) -> None:
            # A head is awaited when the client has begun no request yet (or only part of one), and
            # uvicorn's keep-alive timer is not already counting the connection's idle time.
            waiting = (
                self.conn.their_state is h11.IDLE
                and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()
            )
            if waiting and self.head_timer is None:
                self.head_timer = self.loop.call_later(config.header_timeout, self._head_too_slow)
            elif not waiting and self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_too_slow(self) -> None:
            self.head_timer = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                body = _error_bytes(
                    408,
                    "request_timeout",
                    f"The request's line and headers did not arrive within {config.header_timeout:g} s.",
                )
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            body = _error_bytes(
                400,
                "invalid_http",
                f"The request is not valid HTTP/1.1, or its line and headers are over "
                f"{HEAD_LIMIT_BYTES // 2**10} KiB together.",
            )
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            try:
                for event in (
                    h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:
                pass  # a response had begun already: all that is left is to close
            self.transport.close()

    return GuardedH11Protocol


def _overloaded(limit: int) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = f"The server has {limit} connections open, its limit. Try again in a moment."
        await _send_error(scope, receive, send, 503, "overloaded", message, close=True)

    return app
