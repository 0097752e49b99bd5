"""Request bodies read into images under the limits: JSON (pixels or base64) and multipart uploads,
the batch size, and each request's pixel budget checked from the files' headers before any is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import images, schemas
from .api_errors import ApiError
from .errors import InputError

UPLOAD_TYPES = ("image/", "application/octet-stream")  # content types accepted for uploaded files
T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)
Inputs = Sequence[schemas.ImageInput | tuple[str, bytes]]  # JSON inputs, or uploaded files' names and bytes


async def read_inputs(request: Request, max_batch: int) -> list[schemas.ImageInput] | list[tuple[str, bytes]]:
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
        inputs = _validate_json(body, schemas.PredictRequest).inputs
        _check_batch(len(inputs), max_batch)
        return inputs
    return await _read_uploads(request, body, max_batch)


def parse_json(request: Request, body: bytes, model: type[Model]) -> Model:
    """The body as `model`: 415 unless it is JSON, 400 for malformed JSON, 422 for JSON of the wrong shape."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted: send application/json.",
        )
    return _validate_json(body, model)


def _validate_json(body: bytes, model: type[Model]) -> Model:
    if not body.strip():
        raise ApiError(400, "invalid_json", "The body is empty: send a JSON object, as /docs describes.")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        if any(error["type"] == "json_invalid" for error in e.errors()):
            raise ApiError(400, "invalid_json", f"The body is not valid JSON: {e.errors()[0]['msg']}.") from e
        raise RequestValidationError(e.errors()) from e


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


# --- decoding, within the pixel budget ----------------------------------------------------------


def each_image(
    inputs: Inputs,
    read: Callable[[Image.Image | np.ndarray], T],
    *,
    max_side: int,  # the recognizer's working size: a JPEG decodes at a reduced scale down to it
    max_image_pixels: int,  # largest image, width x height
    max_request_pixels: int,  # most pixels decoded for the request, its images together
) -> list[T]:
    """`read` applied to each image in turn, an image decoded only once `read` is done with the one before.

    Every file's header is looked at first, so that a request over the pixel budget is refused before
    any pixel is decoded; then at most one image is in memory at its full size, whatever the batch.
    """
    sources = [_source(item, index) for index, item in enumerate(inputs)]
    decoded_pixels = sum(
        _decoded_pixels(*source, max_image_pixels, max_side)
        for source in sources
        if isinstance(source, tuple)
    )
    if decoded_pixels > max_request_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"The images of this request decode to {decoded_pixels:,} pixels together, over the limit of "
            f"{max_request_pixels:,}. Send fewer or smaller images per request.",
        )
    return [
        read(_open_upload(*source, max_image_pixels, max_side) if isinstance(source, tuple) else source)
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
                if pixels and pixels <= max_pixels:
                    images.reduce_on_decode(header, max_side)
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
