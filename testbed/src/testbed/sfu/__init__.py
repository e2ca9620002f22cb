"""A local stand-in for Cloudflare Realtime's SFU: the same HTTP API, real WebRTC media.

Media is forwarded as RTP, never decoded or re-encoded (see ``forwarder``), so a pulled
track arrives in its publisher's codec, as on Cloudflare. Differences from Cloudflare
that a developer may meet: no bandwidth estimate (a subscriber without ``preferredRid``
gets the largest simulcast layer being sent), no data channels (501) and no
``empty_track_error`` unless injected.

It is as strict as Cloudflare's SFU by default, with no lenient switch; each behaviour is
marked in the code as observed (public reports of real sessions, Cloudflare's examples)
or assumed (the stricter reading, where nothing public says):

- ICE-lite for real (``aiortc_hooks.make_ice_lite``): always the controlled agent, never
  sends a check, takes a pair as nominated when a check with USE-CANDIDATE arrives;
  every client must be the controlling agent and nominate (observed). A peer is dead
  after ``consent_expiry_s`` without an incoming check (RFC 7675; how Cloudflare detects
  it is assumed).
- SDP shaped like Cloudflare's (``sdp_shape``): session-level fingerprint, ice-lite,
  extmap-allow-mixed, msid-semantic and one BUNDLE group, ``a=setup:actpass`` in offers
  (observed); several payload types per subscriber m-line, the publisher's codec first,
  RTX for each video codec, RED and ULPFEC for video, RED for Opus, every H.264 profile
  the publisher offered (observed), of which only the first is ever sent (assumed).
- Any H.264 profile or packetization mode from a publisher, answered in its own format.
- NACKed packets are resent over RTX on the subscription's RTX SSRC (observed); without
  negotiated RTX the original packet is resent (assumed).
- A closed m-line is ``a=inactive`` in the next offer and reused by the next pull of
  the same kind (observed that Cloudflare may; always doing it is the stricter choice).
- A pulled track reads ``initializing`` until answered and forwarding (the value is
  observed, when it shows is assumed); failed pull results come after the pulled ones,
  not in request order (assumed: Cloudflare's clients match by sessionId and trackName).
- A subscriber's answer may decline an m-line or drop its codec: that track sends
  nothing and the renegotiation succeeds (assumed).
- Simulcast (``simulcast``): a publisher's layers (rids ``a``/``b`` as Orange Meets
  sends them, or ``h``/``m``/``l``) are accepted in the answer and told apart by their
  rid header extensions (observed from Chromium); each subscription gets one layer as
  one stream, switching at a keyframe of the new layer, by ``preferredRid`` in
  ``tracks/new`` and ``tracks/update`` (reference) or, without it, to the largest layer
  being sent, falling back when that one stops for a second (assumed: Cloudflare picks
  by bandwidth estimate).

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

from testbed.sfu.api import build_app
from testbed.sfu.faults import FaultInjector
from testbed.sfu.registry import SessionRegistry

__all__ = ["FaultInjector", "LocalSfu", "serve_forever"]

log = structlog.get_logger("bot.sfu")


class LocalSfu:
    """The SFU's HTTP server and sessions; ``async with LocalSfu(...)`` binds a free port.

    ``session_expiry_s`` (a dead session stays visible this long), ``connect_wait_s`` (how
    long a mutation waits for a transport before 425), ``track_gc_s`` (a track silent
    this long cannot be pulled) and ``consent_expiry_s`` (a transport with no incoming
    ICE check for this long is dead, RFC 7675) default to Cloudflare's values; tests
    shorten them.
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
        consent_expiry_s: float = 30.0,
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
            "consent_expiry_s": consent_expiry_s,
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
