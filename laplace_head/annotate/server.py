"""The annotator's HTTP server: Starlette routes over :class:`~laplace_head.annotate.annotator
.Annotator`, served by uvicorn.

Endpoints (JSON unless said otherwise; an error is ``{"error": reason}`` with a 4xx/5xx status):

- ``GET /``: the page; ``GET /static/<file>``: its script and style sheet.
- ``GET /api/info``: run, posterior, base segmenter, click rule, classes.
- ``GET /api/images?class=<name>&sort=name|error``: the image list with each image's status.
- ``GET /api/images/<id>/image``: the image (PNG, decoded as the predictor sees it).
- ``GET /api/images/<id>/state``: clicks, status, overlay, suggestion, expected error, timings.
- ``POST /api/images/<id>/click`` ``{"x": float, "y": float, "label": 0|1}``: the new state.
- ``POST /api/images/<id>/undo``, ``POST /api/images/<id>/reset``: the new state.
- ``POST /api/images/<id>/save`` ``{"overwrite": bool}``: writes the mask (409 when it exists).

Limits: a request body is JSON of at most :data:`MAX_BODY_BYTES` (no uploads: any other
content type is refused), every request is answered within ``request_timeout_s`` (503 after
it), and with a token (:func:`create_app`) every request must carry it: the ``token`` query
parameter of the printed URL (the page then keeps it in a same-site cookie) or the
:data:`TOKEN_HEADER` header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
import threading
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from laplace_head.annotate.annotator import Annotator
from laplace_head.annotate.catalog import AnnotateRequestError

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Largest request body accepted (a click or a save request is a few dozen bytes).
MAX_BODY_BYTES = 16 * 1024
#: Seconds after which a request is answered 503 (a SAM encoder pass on a CPU takes ~40 s).
REQUEST_TIMEOUT_S = 120.0
TOKEN_QUERY = "token"
TOKEN_HEADER = "x-laplace-head-token"
TOKEN_COOKIE = "laplace_head_token"
LOOPBACK_NAMES = ("localhost",)
#: The ``Host`` names a loopback server answers (``create_app(allowed_hosts=...)``).
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random URL-safe token for a server reachable from other machines."""
    return secrets.token_urlsafe(24)


class _TokenMiddleware:
    """Refuse (403) every request that does not carry the token."""

    def __init__(self, app: Callable, token: str) -> None:
        self.app = app
        self.token = token

    def _given(self, scope: dict) -> str:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get(TOKEN_QUERY):
            return query[TOKEN_QUERY][0]
        headers = dict(scope.get("headers") or [])
        if TOKEN_HEADER.encode() in headers:
            return headers[TOKEN_HEADER.encode()].decode("latin-1")
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not secrets.compare_digest(
            self._given(scope).encode(), self.token.encode()
        ):
            response = PlainTextResponse(
                "missing or wrong token: open the URL the annotate command printed "
                "(it ends in ?token=...)",
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, at most :data:`MAX_BODY_BYTES`; uploads are refused."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise AnnotateRequestError(
            415,
            f"content type {content_type or 'none'!r} is not accepted: send "
            "application/json (the annotator takes no uploads)",
        )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise AnnotateRequestError(
            413, f"request body of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise AnnotateRequestError(413, f"request body exceeds the {MAX_BODY_BYTES}-byte limit")
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotateRequestError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AnnotateRequestError(400, f"request body must be a JSON object; got {value!r}")
    return value


def create_app(
    annotator: Annotator,
    token: str | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The annotator's Starlette application.

    Parameters
    ----------
    annotator
        The sessions, images and store.
    token
        When given, every request must carry it (see the module); None serves without (for
        a loopback address only: :func:`serve` refuses otherwise).
    request_timeout_s
        Seconds after which a request is answered 503.
    allowed_hosts
        When given, a request whose ``Host`` header names another host is refused (400): a
        server without a token on a loopback address takes :data:`LOOPBACK_HOSTS`, so that a
        web page elsewhere cannot reach it through a DNS name rebound to 127.0.0.1.
    """

    async def call(func: Callable, *args: Any) -> Response:
        try:
            result = await asyncio.wait_for(run_in_threadpool(func, *args), request_timeout_s)
        except AnnotateRequestError as exc:
            return _error(exc.status, exc.reason)
        except asyncio.TimeoutError:
            return _error(503, f"the request took longer than {request_timeout_s:g} s")
        if isinstance(result, bytes):
            return Response(result, media_type="image/png", headers={"cache-control": "no-store"})
        return JSONResponse(result)

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})
        if token is not None and request.query_params.get(TOKEN_QUERY):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    async def info(request: Request) -> Response:
        return await call(annotator.info)

    async def images(request: Request) -> Response:
        params = request.query_params
        return await call(annotator.list_images, params.get("class"), params.get("sort", "name"))

    async def image(request: Request) -> Response:
        return await call(annotator.image_png, request.path_params["image_id"])

    async def state(request: Request) -> Response:
        return await call(annotator.state, request.path_params["image_id"])

    def action(name: str) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                body = await _json_body(request)
            except AnnotateRequestError as exc:
                return _error(exc.status, exc.reason)
            image_id = request.path_params["image_id"]
            if name == "click":
                args = [body.get("x"), body.get("y"), body.get("label")]
                return await call(annotator.click, image_id, *args)
            if name == "save":
                return await call(annotator.save, image_id, body.get("overwrite", False))
            return await call(getattr(annotator, name), image_id)

        return endpoint

    async def bad_image_path(request: Request) -> Response:
        return _error(
            400,
            f"malformed image path {request.path_params['rest']!r}: an image id is one "
            "<class>__<stem> name, followed by /image, /state, /click, /undo, /reset or /save",
        )

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/images", images),
        Route("/api/images/{image_id}/image", image),
        Route("/api/images/{image_id}/state", state),
        *(
            Route(f"/api/images/{{image_id}}/{name}", action(name), methods=["POST"])
            for name in ("click", "undo", "reset", "save")
        ),
        Route("/api/images/{rest:path}", bad_image_path, methods=["GET", "POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(_TokenMiddleware, token=token)] if token is not None else []
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return _error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}")

    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: http_error, 405: http_error},
    )


def server_url(host: str, port: int, token: str | None) -> str:
    """The URL to open: ``http://host:port/`` (``?token=...`` with a token)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?{TOKEN_QUERY}={token}" if token else "")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free port).

    Raises
    ------
    AnnotateRequestError
        (a :class:`~laplace_head.errors.LaplaceHeadError`) when the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AnnotateRequestError(
            500,
            f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port "
            "(0: any free one) or --host",
        ) from exc
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Starlette) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        limit_concurrency=64,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_BODY_BYTES,
    )
    return uvicorn.Server(config)


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on the bound ``sock`` until interrupted (Ctrl-C)."""
    _uvicorn_server(app).run(sockets=[sock])


class BackgroundServer:
    """``app`` served by uvicorn in a thread (tests, benchmarks): ``url``, then :meth:`stop`."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", token: str | None = None):
        self._sock = bind(host, 0)
        self.port = self._sock.getsockname()[1]
        self.url = server_url(host, self.port, token)
        self._server = _uvicorn_server(app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.02)

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
