"""Limits on connections and requests, enforced before the app reads them: the `RequestGuard` middleware
(Host, Origin, body size and deadline) and uvicorn's h11 protocol with a head deadline and a connection cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api_errors import LOG, error_bytes, send_error

if TYPE_CHECKING:
    import h11

DRAIN_FACTOR = 4  # a body up to this many times the limit is read to its end, so the client sees the 413
DRAIN_SECONDS = 2.0  # s; the most time spent draining a body already known to be over the limit
HEAD_LIMIT_BYTES = 16 * 2**10  # largest request line and headers together (h11's default, made explicit)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
SAFE_METHODS = ("GET", "HEAD")  # requests that change nothing and cost little: allowed from any origin


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,  # the interface the server listens on
        allowed_origins: tuple[str, ...],  # other web origins allowed to call the API
        max_body_bytes: int,
        body_timeout: float,  # s
    ) -> None:
        self.app = app
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout
        # On loopback, a web page whose DNS name is re-pointed to 127.0.0.1 sends its own name as Host.
        self.hosts = {*LOOPBACK_NAMES, host.lower()} if is_loopback(host) else None
        self.origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await send_error(scope, receive, send, *refusal, close=True)
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
        limit, seconds = self.max_body_bytes, self.body_timeout
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            # Not worth reading: the client may see the connection close before the answer.
            await send_error(scope, receive, send, *_too_large(limit), close=True)
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
                await send_error(
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
            await send_error(scope, receive, send, *_too_large(limit), close=size > DRAIN_FACTOR * limit)
            return None
        return b"".join(chunks)


def _too_large(limit: int) -> tuple[int, str, str]:
    return (
        413,
        "payload_too_large",
        f"The request body is over the limit of {limit / 2**20:.1f} MiB. Send a smaller image, "
        "or fewer images per request.",
    )


# --- every connection checked before a request is parsed ----------------------------------------


def guarded_protocol(*, max_connections: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline (s) for each request's head, a cap on open connections,
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
            if len(self.connections) > max_connections:
                self.app = _overloaded(max_connections)  # answers once the request's head is in
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
                self.head_timer = self.loop.call_later(header_timeout, self._head_too_slow)
            elif not waiting and self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_too_slow(self) -> None:
            self.head_timer = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                self.transport.write(_head_timeout_response(header_timeout))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            _send_invalid_http(self.conn, self.transport)

    return GuardedH11Protocol


def _head_timeout_response(header_timeout: float) -> bytes:
    """A whole 408 response, written raw: no request began, so h11 has none to answer."""
    body = error_bytes(
        408,
        "request_timeout",
        f"The request's line and headers did not arrive within {header_timeout:g} s.",
    )
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def _send_invalid_http(conn: h11.Connection, transport: asyncio.Transport) -> None:
    """uvicorn's answer to HTTP that h11 cannot parse, as JSON instead of plain text; then closes."""
    import h11

    body = error_bytes(
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
            transport.write(conn.send(event))
    except h11.LocalProtocolError:
        pass  # a response had begun already: all that is left is to close
    transport.close()


def _overloaded(limit: int) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = f"The server has {limit} connections open, its limit. Try again in a moment."
        await send_error(scope, receive, send, 503, "overloaded", message, close=True)

    return app
