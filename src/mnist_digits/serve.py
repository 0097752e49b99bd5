"""The drawing page and the HTTP API: `create_app(config)` builds the FastAPI app, `run(config)` serves it.

Every image, drawn on the page, uploaded or sent as base64, goes through `predict`'s single
preprocessing path; 784 raw pixels skip only the photo steps. Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from . import __version__, api_docs, schemas
from .api_errors import ERROR_RESPONSES, ApiError, install_error_handlers
from .errors import MnistDigitsError
from .feedback import FeedbackStore
from .http_guard import HEAD_LIMIT_BYTES, RequestGuard, guarded_protocol, is_loopback
from .pretrained import DEFAULT_MODEL
from .uploads import Inputs, each_image, parse_json, read_inputs

if TYPE_CHECKING:
    from PIL import Image

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
T = TypeVar("T")
P = TypeVar("P", bound=schemas.Prediction)  # an answer for one digit: Prediction or NumberDigit
MAX_NUMBER_DIGITS = 32  # most digits /api/read-number answers for one image (each carries its 784 pixels)


@dataclass(frozen=True)
class ServeConfig:
    model: str = DEFAULT_MODEL  # a shipped model's name or a .safetensors file
    host: str = "127.0.0.1"  # interface to listen on; loopback keeps the server private to this machine
    port: int = 8000  # TCP port; 0 lets the system pick a free one
    device: str = "cpu"  # where the model runs: cpu, cuda, auto
    precision: str = "auto"  # bf16 autocast where the device computes it natively, else fp32; or force one
    # auto: the fastest runtime here that keeps PyTorch fp32's answers, chosen (or read from the cache)
    # at the start; torch, onnx or onnx-int8 (ONNX Runtime) to name one
    runtime: str = "auto"
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
        for name in ("max_connections", "header_timeout", "body_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if not value > 0:  # NaN too
                raise MnistDigitsError(advice=f"{{{name}}} {value}: give a positive number.")


def create_app(config: ServeConfig) -> FastAPI:
    """The app with its model loaded and warmed up, the page's files read, the feedback store ready."""
    from .device import pick_device
    from .predict import load_model

    _check_origins(config.allowed_origins)
    recognizer = load_model(
        config.model,
        pick_device(config.device),
        tta=config.tta,
        precision=config.precision,
        runtime=config.runtime,
    )
    store = FeedbackStore(config.feedback_db)
    store.count()  # a database that cannot be opened stops the start, not a person's first correction
    static = {name: (resources.files("mnist_digits") / "static" / name).read_bytes() for name in STATIC_FILES}
    # auto's choice (seconds, unless cached) before the first request, which would wait for it, and
    # after the checks that can stop the start
    recognizer.choose_runtime()
    recognizer.probabilities(np.zeros((1, 28, 28), np.float32))  # the first call is slow: pay it now
    docs = {
        name: (resources.files("fastapi_offline") / "static" / name).read_bytes()
        for name in api_docs.DOCS_ASSETS
    }

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
    app.add_middleware(  # added last: the outermost, before CORS and the routes
        RequestGuard,
        host=config.host,
        allowed_origins=config.allowed_origins,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
    )
    install_error_handlers(app)
    api_docs.document_json_bodies(app)
    _add_page_routes(app, static, docs)
    _add_service_routes(app, config, recognizer)
    _add_digit_routes(app, config, recognizer, store)
    app.state.runtime = recognizer.describe()  # for the line `run` announces
    return app


def _add_page_routes(app: FastAPI, static: dict[str, bytes], docs: dict[str, bytes]) -> None:
    """The drawing page and its files, and the API docs page with Swagger UI's."""

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
        return Response(api_docs.DOCS_PAGE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if name == "init.js":
            return Response(
                api_docs.DOCS_SCRIPT, media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS
            )
        if name not in api_docs.DOCS_ASSETS:
            raise ApiError(404, "not_found", f"/docs/{name}: no such file. The API docs are at /docs.")
        return Response(docs[name], media_type=api_docs.DOCS_ASSETS[name], headers=PAGE_HEADERS)


def _add_service_routes(app: FastAPI, config: ServeConfig, recognizer: Recognizer) -> None:
    """/api/health and /api/model: what a monitor or a client checks before sending images."""
    model_name = config.model  # a shipped model's name, or the file's path as given
    parameters = _parameter_count(recognizer)

    @app.get("/api/health", response_model=schemas.Health, tags=["service"])
    def health() -> schemas.Health:
        """The server is up, its model is loaded, and this is what runs it."""
        # Read at each call: a cached choice whose export can no longer be made falls back to torch.
        runtime = recognizer.describe().removeprefix("runtime ")
        return schemas.Health(status="ok", model=model_name, runtime=runtime)

    @app.get("/api/model", response_model=schemas.ModelInfo, tags=["service"])
    def model_info() -> schemas.ModelInfo:
        """Which model answers, its accuracy on MNIST's test set, and its metadata."""
        metadata = recognizer.metadata
        return schemas.ModelInfo(
            name=model_name,
            file=_shown_file(config.model, recognizer.path),
            parameters=parameters,
            test_accuracy=metadata.get("test_accuracy"),
            metadata=metadata,
        )


def _add_digit_routes(
    app: FastAPI, config: ServeConfig, recognizer: Recognizer, store: FeedbackStore
) -> None:
    """/api/predict, /api/read-number and /api/feedback: the endpoints that take images."""
    model_name = config.model
    work = asyncio.Semaphore(config.max_parallel)  # bounds the memory and threads that decoding takes
    images_body = api_docs.predict_request_body(
        max_body_bytes=config.max_body_bytes,
        max_batch=config.max_batch,
        max_image_pixels=config.max_image_pixels,
        max_request_pixels=config.max_request_pixels,
    )

    async def in_worker(function: Callable[..., T], *args: Any) -> T:
        # Decoding and the model take milliseconds of CPU: off the event loop, in worker threads.
        async with work:
            return await run_in_threadpool(function, *args)

    @app.post(
        "/api/predict",
        response_model=schemas.PredictResponse,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": images_body},
    )
    async def predict(request: Request) -> schemas.PredictResponse:
        """Recognize a batch of images: an upload (multipart field `file`, repeatable) or JSON."""
        inputs = await read_inputs(request, config.max_batch)
        predictions = await in_worker(_recognize, recognizer, inputs, config)
        return schemas.PredictResponse(model=model_name, predictions=predictions)

    @app.post(
        "/api/read-number",
        response_model=schemas.NumberResponse,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": images_body},
    )
    async def read_number(request: Request) -> schemas.NumberResponse:
        """Read each image's digits, written side by side, left to right as a number. Same bodies as
        /api/predict."""
        inputs = await read_inputs(request, config.max_batch)
        numbers = await in_worker(_read_numbers, recognizer, inputs, config)
        return schemas.NumberResponse(model=model_name, numbers=numbers)

    @app.post(
        "/api/feedback",
        response_model=schemas.FeedbackResponse,
        status_code=201,
        responses=ERROR_RESPONSES,
        tags=["digits"],
        openapi_extra={"requestBody": api_docs.json_request_body("FeedbackRequest")},
    )
    async def feedback(request: Request) -> schemas.FeedbackResponse:
        """Store a person's correction: the 28x28 image a prediction returned and the right digit."""
        correction = parse_json(request, await request.body(), schemas.FeedbackRequest)
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
            f"cannot listen on {config.host}:{config.port} ({e.strerror or e}).",
            advice="Is another server using the port? Choose {port}.",
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
    announce(app.state.runtime)
    if not is_loopback(config.host):
        announce(f"warning: {config.host} is reachable from other machines; the API has no authentication.")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            # h11, with a deadline for each request's head and a cap on open connections
            http=guarded_protocol(
                max_connections=config.max_connections, header_timeout=config.header_timeout
            ),
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


# --- images to answers --------------------------------------------------------------------------


def _recognize(recognizer: Recognizer, inputs: Inputs, config: ServeConfig) -> list[schemas.Prediction]:
    """Image files through the recognizer's preprocessing; MNIST-format pixels straight to the model."""

    def read(image: Image.Image | np.ndarray) -> Prediction:
        if isinstance(image, np.ndarray):
            return recognizer.predict_pixels(image[None])[0]
        return recognizer.predict(image)[0]

    return [_answer(r, schemas.Prediction) for r in _each_image(inputs, config, recognizer, read)]


def _read_numbers(recognizer: Recognizer, inputs: Inputs, config: ServeConfig) -> list[schemas.NumberReading]:
    """Each image's digits left to right, with all ten probabilities and the 28x28 input of each."""
    from .predict import NumberReading

    readings = [
        reading
        if len(reading.digits) <= MAX_NUMBER_DIGITS
        else NumberReading.failure(
            reading.source,
            f"{len(reading.digits)} separate marks, more than the {MAX_NUMBER_DIGITS} digits read as one "
            "number: crop the image to the number.",
        )
        for reading in _each_image(inputs, config, recognizer, lambda image: recognizer.read_number(image)[0])
    ]
    return [
        schemas.NumberReading(
            number=r.text,
            confidence=r.probability,
            uncertain=r.uncertain,
            digits=[
                _answer(d, schemas.NumberDigit, box=list(box))
                for d, box in zip(r.digits, r.boxes, strict=True)
            ],
            error=r.error,
        )
        for r in readings
    ]


def _each_image(
    inputs: Inputs, config: ServeConfig, recognizer: Recognizer, read: Callable[[Image.Image | np.ndarray], T]
) -> list[T]:
    return each_image(
        inputs,
        read,
        max_side=recognizer.config.work_side,
        max_image_pixels=config.max_image_pixels,
        max_request_pixels=config.max_request_pixels,
    )


def _answer(reading: Prediction, kind: type[P], **extra: Any) -> P:
    """The API's answer for one reading (or, with `kind` NumberDigit and its `box`, one digit of a number)."""
    seen = None if reading.input is None else np.rint(np.clip(reading.input, 0, 1) * 255).astype(np.uint8)
    probabilities = reading.probabilities
    return kind(
        **extra,
        digit=reading.digit,
        confidence=reading.probability,
        uncertain=reading.uncertain,
        probabilities=[] if probabilities is None else probabilities.tolist(),
        image=None if seen is None else seen.ravel().tolist(),
        error=reading.error,
        note=reading.note,
    )


# --- small helpers ----------------------------------------------------------------------------


def _check_origins(origins: tuple[str, ...]) -> None:
    for origin in origins:
        if origin == "*" or "://" not in origin or origin.endswith("/"):
            raise MnistDigitsError(
                f"allowed origin {origin!r}: give a full origin such as https://example.org "
                "(scheme, host, optional port, no path); a wildcard is not allowed."
            )


def _shown_file(model: str, path: Path | None) -> str:
    """The model file as the user named it; a shipped model's by file name, not by where it is installed."""
    if path is None or Path(model).suffix:  # a file given by its path: shown as given
        return model
    return path.name


def _parameter_count(recognizer: Recognizer) -> int:
    """As `mnist-digits models` counts them: weights plus BatchNorm's running statistics; 0 for ONNX."""
    from .export import OnnxModel
    from .model import keras_parameter_count

    if isinstance(recognizer.model, OnnxModel):
        return 0
    return keras_parameter_count(recognizer.model)
