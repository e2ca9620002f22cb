"""The review web app: a read-only aiohttp server on loopback, behind a one-time token.

Access: a random token is made at start and only printed (the URL ``/?token=...``);
the first visit with it sets an HttpOnly, SameSite=Strict cookie and redirects to the
same page without it, so the token stays out of the history and of any ``Referer``.
Every route needs the cookie (or the token); nothing is logged per request (aiohttp's
access log would write the token). Only GET and HEAD exist: the app cannot change a
record.

The recording is streamed through the server with HTTP Range support, read with the
store's own calls, so an SSE-C object (whose key the browser must never hold) and the
local folder play alike. Only a plain, unencrypted, remote S3 object (R2) is handed to
the browser as a presigned URL instead, so the bytes do not pass through this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Generator
from ipaddress import ip_address
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import structlog
from aiohttp import hdrs, web

from bot.config import StorageSettings
from bot.custody.signing import VerifyingKey
from bot.custody.verify import fetch_record, verify_record
from bot.review import pages
from bot.review.catalog import Catalog, NotFound, safe_key
from bot.storage import StorageError
from bot.storage.local_store import LocalStore
from bot.storage.s3_store import S3Store
from bot.storage.stores import open_store

log = structlog.get_logger("bot.review")

DEFAULT_PORT: Final = 8790
RANGE_CHUNK: Final = 1 << 20
"""Bytes per read when serving a range: one GET each on S3, so large enough to be cheap
and small enough that a seek does not fetch what will be thrown away."""
_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unsatisfiable(ValueError):
    """A Range header that names no byte of the object (answered 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open span a ``Range`` header asks for, None for the whole object.

    One range only; anything else (several ranges, other units) gets the whole object,
    which RFC 9110 allows a server to answer instead of a partial response.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:
        start, end = max(size - int(match[2]), 0), size
    else:
        start = int(match[1])
        end = min(int(match[2]) + 1, size) if match[2] else size
    if start >= size or start >= end:
        raise Unsatisfiable(f"bytes {start}- of {size}")
    return start, end


def _chunks(
    store: S3Store | LocalStore, key: str, span: tuple[int, int], size: int
) -> Generator[bytes, None, None]:
    """The span's bytes, in one streamed GET for the whole object, else range by range."""
    start, end = span
    if (start, end) == (0, size):
        yield from store.iter_object(key)
        return
    while start < end:
        stop = min(start + RANGE_CHUNK, end)
        yield store.read_range(key, start, stop)
        start = stop


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


class ReviewServer:
    """``start`` binds, ``stop`` closes; ``login_url`` is what the operator opens."""

    def __init__(
        self,
        settings: StorageSettings,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        public_keys: list[VerifyingKey] | None = None,
        limit: int = 200,
        store: S3Store | LocalStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.catalog = Catalog(settings, self.store)
        self.host, self.port, self.limit = host, port, limit
        self.public_keys = public_keys or []
        self.token = secrets.token_urlsafe(32)
        self.cookie = "bot_review_" + hashlib.sha256(self.token.encode()).hexdigest()[:12]
        self._verifying = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def login_url(self) -> str:
        return f"{self.url}/?token={self.token}"

    def redirects_media(self) -> bool:
        """Plain R2: the browser may fetch the object itself with a presigned URL."""
        store = self.store
        return isinstance(store, S3Store) and not store.encrypted and not store.loopback

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard, self._errors])
        app.router.add_get("/", self._list)
        app.router.add_get("/recording", self._recording)
        app.router.add_get("/media", self._media)
        app.router.add_get("/verify", self._verify)
        app.router.add_get("/review.css", self._css)
        app.on_response_prepare.append(self._headers)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        log.info("review.started", url=self.url, store=self.store.backend)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- access ---------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _refused()
            rest = {k: v for k, v in request.query.items() if k != "token"}
            answer = web.HTTPSeeOther(str(request.rel_url.with_query(rest)))
            answer.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
            raise answer
        cookie = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(cookie.encode(), self.token.encode()):
            return _refused()
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """No caching, no framing, no referrer, no script; media only from here (or R2)."""
        media = "'self'"
        if self.redirects_media() and isinstance(self.store, S3Store):
            parts = urlsplit(self.store.endpoint)
            media += f" {parts.scheme}://{parts.netloc}"
        response.headers.update(
            {
                "Content-Security-Policy": (
                    f"default-src 'none'; style-src 'self'; media-src {media}; "
                    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            }
        )

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            return _html(pages.message_page("Not found", str(exc)), 404)
        except StorageError as exc:
            log.warning("review.storage_error", kind=exc.kind, error=str(exc))
            return _html(pages.message_page("The store did not answer", str(exc)), 502)

    # -- pages ----------------------------------------------------------------------

    async def _css(self, request: web.Request) -> web.Response:
        return web.Response(text=pages.CSS, content_type="text/css")

    async def _list(self, request: web.Request) -> web.Response:
        listing = await asyncio.to_thread(self.catalog.listing, self.limit)
        where = self.store.describe("")
        return _html(pages.listing_page(listing, where))

    async def _recording(self, request: web.Request) -> web.Response:
        key = safe_key(request.query.get("key", ""))
        record = await asyncio.to_thread(self.catalog.record, key)
        return _html(pages.record_page(record))

    async def _verify(self, request: web.Request) -> web.Response:
        """``bot verify`` on the stored record: one at a time, since each reads the whole
        object into a scratch folder and decodes it."""
        key = safe_key(request.query.get("key", ""))
        await asyncio.to_thread(self.catalog.manifest, key)
        async with self._verifying:
            ok, lines = await asyncio.to_thread(self._run_verify, key)
        return _html(pages.verdict_page(key, ok, lines))

    def _run_verify(self, key: str) -> tuple[bool, list[str]]:
        with tempfile.TemporaryDirectory(prefix="bot-review-") as scratch:
            try:
                media, evidence = fetch_record(self.store, key, Path(scratch))
            except FileNotFoundError as exc:
                raise NotFound(str(exc)) from None
            verdict = verify_record(media, evidence, self.public_keys, subject=key)
        return verdict.ok, verdict.text().splitlines()

    # -- media ----------------------------------------------------------------------

    async def _media(self, request: web.Request) -> web.StreamResponse:
        key = safe_key(request.query.get("key", ""))
        if self.redirects_media() and isinstance(self.store, S3Store):
            await asyncio.to_thread(self.catalog.manifest, key)
            url = self.store.presign_get(key, self.settings.presign_seconds)
            raise web.HTTPFound(url)
        size = await asyncio.to_thread(self.catalog.size, key)
        try:
            span = byte_range(request.headers.get(hdrs.RANGE), size)
        except Unsatisfiable:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        response = web.StreamResponse(status=200 if span is None else 206)
        response.content_type = "video/mp4"
        response.headers["Accept-Ranges"] = "bytes"
        start, end = span or (0, size)
        if span is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_length = end - start
        await response.prepare(request)
        if request.method != "HEAD":
            await self._send(request, response, key, (start, end), size)
        return response

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        key: str,
        span: tuple[int, int],
        size: int,
    ) -> None:
        """Read in a thread, write on the loop; a player that seeks away closes the
        connection, which ends the read."""
        chunks = _chunks(self.store, key, span, size)
        remaining = span[1] - span[0]
        try:
            while remaining > 0:
                chunk = await asyncio.to_thread(next, chunks, b"")
                if not chunk:
                    break
                chunk = chunk[:remaining]
                remaining -= len(chunk)
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the player seeked elsewhere or closed the page
        except StorageError as exc:
            # The headers promised more: close, so the player does not wait for it.
            log.warning("review.media_error", kind=exc.kind, error=str(exc))
            if request.transport is not None:
                request.transport.close()
        finally:
            with contextlib.suppress(ValueError):  # still running in a cancelled thread
                chunks.close()


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _refused() -> web.Response:
    return _html(
        pages.message_page(
            "Not signed in",
            "Open the address bot review printed when it started (it carries a one-time "
            "token), or restart bot review for a new one.",
        ),
        401,
    )


async def serve(
    settings: StorageSettings,
    *,
    host: str,
    port: int,
    public_keys: list[VerifyingKey],
    limit: int,
    announce: Callable[[str], None],
) -> None:
    """Run until cancelled (Ctrl-C); ``announce`` gets the line with the login URL."""
    server = ReviewServer(settings, host=host, port=port, public_keys=public_keys, limit=limit)
    if isinstance(server.store, S3Store):
        await asyncio.to_thread(server.store.preflight)
    await server.start()
    try:
        if not is_loopback(host):
            announce(
                f"bot review: warning: serving on {host}, not loopback, over plain HTTP; "
                "anyone who sees the address can read the recordings"
            )
        announce(f"bot review: open {server.login_url} (Ctrl-C to stop)")
        await asyncio.Event().wait()
    finally:
        await server.stop()
