"""Errors answered as JSON in one shape (`schemas.ErrorBody`), by the routes, the request guard and the
HTTP protocol alike: the error type, the app's exception handlers and the statuses OpenAPI lists.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from . import schemas
from .errors import MnistDigitsError
from .feedback import FeedbackError

LOG = logging.getLogger("uvicorn.error")  # where uvicorn writes its own errors, at the server's log level

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


class ApiError(Exception):
    """An error answered as JSON: the status code, a short kind, and a message for the caller."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def error_response(status: int, error: str, message: str) -> JSONResponse:
    body = schemas.ErrorBody(status=status, error=error, message=message)
    return JSONResponse(body.model_dump(), status_code=status)


def error_bytes(status: int, error: str, message: str) -> bytes:
    """The JSON body alone, for answers written below ASGI, straight to the connection."""
    return schemas.ErrorBody(status=status, error=error, message=message).model_dump_json().encode()


async def send_error(
    scope: Scope, receive: Receive, send: Send, status: int, error: str, message: str, *, close: bool = False
) -> None:
    """An error answered by ASGI middleware, in the routes' shape; `close` ends the connection after it."""
    response = error_response(status, error, message)
    if close:  # the rest of the body is not read: the connection cannot carry another request
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.error, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(_describe(error) for error in e.errors()[:5])
        return error_response(422, "invalid_request", f"The request does not fit the schema: {problems}.")

    @app.exception_handler(MnistDigitsError)
    async def server_error(request: Request, e: MnistDigitsError) -> JSONResponse:
        # The server's own trouble (a feedback database gone read-only or full). Its message names
        # files on this machine: the log gets it whole, the caller what it means for the request.
        LOG.error("%s %s: %s", request.method, request.url.path, e)
        if isinstance(e, FeedbackError):
            message = "The feedback database cannot be written, so the correction was not stored."
        else:
            message = "The server could not answer this request."
        return error_response(500, "server_error", f"{message} The server's log says why.")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        # uvicorn logs the traceback after this answer: a bug to fix, not the caller's mistake.
        return error_response(500, "internal_error", "The server failed on this request; its log says why.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        kind, message = {
            404: ("not_found", f"{path}: no such page or endpoint. The API is listed at /docs."),
            405: ("method_not_allowed", f"{request.method} is not allowed on {path}. See /docs."),
        }.get(e.status_code, ("http_error", str(e.detail)))
        return error_response(e.status_code, kind, message)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))
