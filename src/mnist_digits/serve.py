"""The drawing page and the HTTP API: `create_app(config)` builds the FastAPI app, `run(config)` serves it.

Every image, drawn on the page, uploaded or sent as base64, goes through `predict`'s single
preprocessing path; 784 raw pixels skip only the photo steps. Nothing happens at import time.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import __version__, images, schemas
from .errors import InputError, MnistDigitsError
from .feedback import FeedbackStore

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
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeConfig:
    model: str = "reference"  # a shipped model's name or a .safetensors file
    host: str = "127.0.0.1"  # interface to listen on; loopback keeps the server private to this machine
    port: int = 8000  # TCP port; 0 lets the system pick a free one
    device: str = "cpu"  # where the model runs: cpu, cuda, auto
    tta: bool = False  # test-time augmentation: average over 5 views of each image
    feedback_db: Path | None = None  # SQLite file for corrections; None: the user data directory
    allowed_origins: tuple[str, ...] = ()  # other web origins allowed to call the API (CORS); none by default
    max_body_bytes: int = 4 * 2**20  # largest request body, bytes (uploads, JSON)
    max_image_pixels: int = 4096 * 4096  # largest image, width x height, checked before decoding
    max_batch: int = 64  # most images in one request
    torch_threads: int = 1  # threads per forward pass; concurrent requests use the other cores


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
        400: "Malformed JSON, base64 or image file",
        413: "Body, image or batch over the limits",
        415: "Not JSON or multipart/form-data, or a file that is not an image",
        422: "JSON that does not fit the schema",
        500: "The server's own trouble, such as a feedback database it can no longer write",
    }.items()
}


def create_app(config: ServeConfig) -> FastAPI:
    """The app with its model loaded and warmed up, the page's files read, the feedback store ready."""
    from .predict import load_model
    from .train import pick_device

    _check_origins(config.allowed_origins)
    recognizer = load_model(config.model, pick_device(config.device), tta=config.tta)
    model_name = config.model  # a shipped model's name, or the file's path as given
    store = FeedbackStore(config.feedback_db)
    store.count()  # a database that cannot be opened stops the start, not a person's first correction
    static = {name: (resources.files("mnist_digits") / "static" / name).read_bytes() for name in STATIC_FILES}
    recognizer.probabilities(np.zeros((1, 28, 28), np.float32))  # the first call is slow: pay it now

    app = FastAPI(
        title="mnist-digits",
        version=__version__,
        description="Recognize handwritten digits. The drawing page is at `/`.",
    )
    if _is_loopback(config.host):
        # A web page whose DNS name is re-pointed to 127.0.0.1 sends its own name as Host: refused.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_NAMES, config.host])
    if config.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )
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
            file=str(recognizer.path or config.model),
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
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", "multipart/form-data"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type or '(none)'} is not accepted: send application/json "
                "or multipart/form-data with the image in a field named `file`.",
            )
        body = await _read_body(request, config.max_body_bytes)
        inputs: list[schemas.ImageInput] | list[tuple[str, bytes]]
        if content_type == "application/json":
            inputs = _parse_predict_json(body, config.max_batch)
        else:
            inputs = await _read_uploads(request, body, config.max_batch)
        # Decoding and the model take milliseconds of CPU: off the event loop, in worker threads.
        predictions = await run_in_threadpool(_recognize, recognizer, inputs, config.max_image_pixels)
        return schemas.PredictResponse(model=model_name, predictions=predictions)

    @app.post(
        "/api/feedback",
        response_model=schemas.FeedbackResponse,
        status_code=201,
        responses=ERROR_RESPONSES,
        tags=["digits"],
    )
    def feedback(correction: schemas.FeedbackRequest) -> schemas.FeedbackResponse:
        """Store a person's correction: the 28x28 image a prediction returned and the right digit."""
        image = np.array(correction.pixels, dtype=np.uint8).reshape(28, 28)
        (reading,) = recognizer.predict_pixels(image[None])
        predicted = reading.digit
        assert predicted is not None  # an MNIST-format image always gets an answer
        sample_id = store.add(image, correction.label, predicted, model_name)
        return schemas.FeedbackResponse(
            id=sample_id, label=correction.label, predicted=predicted, stored=store.count()
        )

    return app


def run(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C. The socket is bound first, so the announced URL has the real port."""
    import torch
    import uvicorn

    torch.set_num_threads(config.torch_threads)
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
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    )
    server.run(sockets=[sock])


# --- reading requests -------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it is over `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        _too_large(limit)  # not worth reading: the client may see the connection close instead
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        _too_large(limit)
    return b"".join(chunks)


def _too_large(limit: int) -> NoReturn:
    raise ApiError(
        413,
        "payload_too_large",
        f"The request body is over the limit of {limit / 2**20:.1f} MiB. Send a smaller image, "
        "or fewer images per request.",
    )


def _parse_predict_json(body: bytes, max_batch: int) -> list[schemas.ImageInput]:
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
    recognizer: Recognizer, inputs: Sequence[schemas.ImageInput | tuple[str, bytes]], max_pixels: int
) -> list[schemas.Prediction]:
    """Image files through the recognizer's preprocessing; MNIST-format pixels straight to the model."""
    max_side = recognizer.config.work_side  # preprocessing shrinks images to this anyway
    decoded = [_decode(item, index, max_pixels, max_side) for index, item in enumerate(inputs)]
    photos = iter(recognizer.predict([x for x in decoded if isinstance(x, Image.Image)]))
    pixels = [x for x in decoded if isinstance(x, np.ndarray)]
    mnist_format = iter(recognizer.predict_pixels(np.stack(pixels)) if pixels else [])
    readings = [next(photos) if isinstance(x, Image.Image) else next(mnist_format) for x in decoded]
    # A Prediction carries the top three digits; the page's bars show all ten: one more batched pass.
    found = [r.input for r in readings if r.input is not None]
    probabilities = iter(recognizer.probabilities(np.stack(found)) if found else [])
    return [_answer(r, next(probabilities) if r.input is not None else None) for r in readings]


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


def _decode(
    item: schemas.ImageInput | tuple[str, bytes], index: int, max_pixels: int, max_side: int
) -> Image.Image | np.ndarray:
    """An image file as a PIL image, or 784 pixels as a (28, 28) float array in [0, 1]."""
    if isinstance(item, tuple):
        return _open_upload(*item, max_pixels, max_side)
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
    return _open_upload(f"inputs[{index}]", content, max_pixels, max_side)


def _open_upload(name: str, content: bytes, max_pixels: int, max_side: int) -> Image.Image:
    """An uploaded file decoded by `images.open_image`, after a look at its header for the HTTP status."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is below
            with Image.open(io.BytesIO(content), formats=images.SUPPORTED_FORMATS) as header:  # no pixels yet
                pixels: int | None = header.width * header.height
    except Image.DecompressionBombError:
        pixels = None  # more than Pillow's own limit
    except (UnidentifiedImageError, OSError):
        raise ApiError(
            415,
            "unsupported_image",
            f"{name}: not an image file in a supported format ({', '.join(images.SUPPORTED_FORMATS)}). "
            "Convert it to PNG or JPEG.",
        ) from None
    if pixels is None or pixels > max_pixels:
        declared = f"{pixels:,} pixels" if pixels else "more pixels than Pillow allows"
        raise ApiError(
            413,
            "image_too_large",
            f"{name}: declares {declared}, over the limit of {max_pixels:,}. Scale the image down first.",
        )
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
        problems = "; ".join(_describe(error) for error in e.errors()[:5])
        return _error_response(422, "invalid_request", f"The request does not fit the schema: {problems}.")

    @app.exception_handler(MnistDigitsError)
    async def server_error(request: Request, e: MnistDigitsError) -> JSONResponse:
        # The server's own trouble (a feedback database gone read-only or full): the caller sees why.
        return _error_response(500, "server_error", str(e))

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
    """Add the JSON request's models to the OpenAPI components (no route parameter declares them)."""
    schema = schemas.PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = {**schema.pop("$defs", {}), "PredictRequest": schema}
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
        f"each image at most {config.max_image_pixels:,} pixels.",
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
