"""The demo call page the SFU serves, and the app backend's proxy to the Realtime API.

A real app (Orange Meets, a clinic's web app) keeps the Realtime app secret on its own
backend and relays the browser's calls with the bearer added; this is that backend in
miniature, so a browser test exercises the same shape. Only the calls a publishing page
needs are relayed; everything else (and the admin routes) is unreachable from the page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import aiohttp
from aiohttp import web

_STATIC = resources.files("testbed.sfu") / "static"
_HTTP = web.AppKey("call_page_http", aiohttp.ClientSession)
_APP_PATH = web.AppKey("call_page_app_path", str)
_BEARER = web.AppKey("call_page_bearer", str)
_FORWARDED_HEADERS = ("Content-Type",)
_PROXY_TIMEOUT_S = 30.0


def add_call_page(app: web.Application, app_id: str, app_secret: str) -> None:
    """Serve ``GET /call`` and relay ``/call/api/...`` to this SFU's API as app ``app_id``."""
    app[_APP_PATH] = f"/v1/apps/{app_id}"
    app[_BEARER] = f"Bearer {app_secret}"
    app.cleanup_ctx.append(_http_client)
    app.router.add_get("/call", _page)
    app.router.add_get("/call/call.js", _script)
    for method, path in (
        ("POST", "/sessions/new"),
        ("POST", "/sessions/{session_id}/tracks/new"),
        ("PUT", "/sessions/{session_id}/renegotiate"),
        ("PUT", "/sessions/{session_id}/tracks/close"),
    ):
        app.router.add_route(method, "/call/api" + path, _relay)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROXY_TIMEOUT_S)) as http:
        app[_HTTP] = http
        yield


async def _page(request: web.Request) -> web.Response:
    return web.Response(
        body=(_STATIC / "call.html").read_bytes(),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def _script(request: web.Request) -> web.Response:
    return web.Response(
        body=(_STATIC / "call.js").read_bytes(),
        content_type="application/javascript",
        headers={"Cache-Control": "no-store"},
    )


async def _relay(request: web.Request) -> web.Response:
    """Forward the call with the app's bearer; the answer goes back unchanged."""
    tail = request.path.removeprefix("/call/api")
    target = f"{request.scheme}://{request.host}{request.app[_APP_PATH]}{tail}"
    headers = {k: request.headers[k] for k in _FORWARDED_HEADERS if k in request.headers}
    headers["Authorization"] = request.app[_BEARER]
    async with request.app[_HTTP].request(
        request.method, target, data=await request.read(), headers=headers
    ) as upstream:
        return web.Response(
            body=await upstream.read(),
            status=upstream.status,
            content_type=upstream.content_type,
        )
