"""A local stand-in for Cloudflare Realtime's SFU: the same HTTP API, real WebRTC media.

Media is forwarded as RTP, never decoded or re-encoded (see ``forwarder``), so a pulled
track arrives in its publisher's codec, as on Cloudflare. Differences from Cloudflare
that a developer may meet: one media layer per track (``preferredRid`` is accepted and
ignored), no data channels (501), no ``empty_track_error`` unless injected, and the SFU
is a full-ICE aiortc peer rather than ICE-lite.

The same server also serves a small publishing page at ``GET /call`` (see ``call_page``)
so a real browser can join a local call, and a fault API (``LocalSfu.faults``, or
``POST /admin/faults`` with the app secret; see ``faults`` and ``admin``) so tests can make
it fail on demand.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import structlog
from aiohttp import web

from bot.testbed.sfu.api import build_app
from bot.testbed.sfu.faults import FaultInjector
from bot.testbed.sfu.registry import SessionRegistry

__all__ = ["FaultInjector", "LocalSfu", "serve_forever"]

log = structlog.get_logger("bot.sfu")


class LocalSfu:
    """The SFU's HTTP server and sessions; ``async with LocalSfu(...)`` binds a free port.

    ``session_expiry_s`` (a dead session stays visible this long), ``connect_wait_s`` (how
    long a mutation waits for a transport before 425) and ``track_gc_s`` (a track silent
    this long cannot be pulled) default to Cloudflare's values; tests shorten them.
    """

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        sender_reports: bool = True,
        ssrc_in_sdp: bool = True,
        session_expiry_s: float = 30.0,
        connect_wait_s: float = 5.0,
        track_gc_s: float = 30.0,
    ) -> None:
        if not app_id or not app_secret:
            raise ValueError("the local SFU needs a non-empty app id and app secret")
        self._app_id = app_id
        self._app_secret = app_secret
        self._registry_options = {
            "sender_reports": sender_reports,
            "ssrc_in_sdp": ssrc_in_sdp,
            "session_expiry_s": session_expiry_s,
            "connect_wait_s": connect_wait_s,
            "track_gc_s": track_gc_s,
        }
        self._registry: SessionRegistry | None = None
        self.faults = FaultInjector(lambda: self._registry)
        """Make this SFU misbehave on demand (see ``faults``); rules survive a restart."""
        self._runner: web.AppRunner | None = None
        self._address: tuple[str, int] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: a free port, read back from ``base_url``)."""
        if self._runner is not None:
            raise RuntimeError("the local SFU is already started")
        self._registry = SessionRegistry(
            **self._registry_options,  # type: ignore[arg-type]
            faults=self.faults,
        )
        runner = web.AppRunner(
            build_app(self._registry, self._app_id, self._app_secret), access_log=None
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._address = (host, sock.getsockname()[1])
        log.info("sfu.started", base_url=self.base_url)

    async def stop(self) -> None:
        """Close every PeerConnection, then the HTTP server; safe to call twice."""
        runner, registry = self._runner, self._registry
        self._runner = self._registry = None
        if registry is not None:
            await registry.close_all()
        if runner is not None:
            await runner.cleanup()
            log.info("sfu.stopped")

    @property
    def base_url(self) -> str:
        if self._address is None:
            raise RuntimeError("the local SFU is not started")
        host, port = self._address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    async def __aenter__(self) -> LocalSfu:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(
    *,
    host: str,
    port: int,
    app_id: str,
    app_secret: str,
    sender_reports: bool,
    ssrc_in_sdp: bool,
) -> None:
    """Run the SFU until SIGINT or SIGTERM (the ``bot sfu`` command)."""
    sfu = LocalSfu(app_id, app_secret, sender_reports=sender_reports, ssrc_in_sdp=ssrc_in_sdp)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sfu.start(host, port)
        print(f"local SFU listening on {sfu.base_url}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await sfu.stop()
