"""Every live session of the SFU, found by id; expiry of sessions whose transport died."""

from __future__ import annotations

import asyncio
import secrets

import structlog

from testbed.sfu.errors import session_gone
from testbed.sfu.faults import FaultInjector, Impairment, TrackFailure
from testbed.sfu.forwarder import PublishedTrack
from testbed.sfu.sdp_shape import Codec
from testbed.sfu.session import SfuSession

log = structlog.get_logger("bot.sfu")


class SessionRegistry:
    def __init__(
        self,
        *,
        sender_reports: bool,
        ssrc_in_sdp: bool,
        session_expiry_s: float,
        connect_wait_s: float,
        track_gc_s: float,
        consent_expiry_s: float,
        faults: FaultInjector,
    ) -> None:
        self.faults = faults
        self._sender_reports = sender_reports
        self._ssrc_in_sdp = ssrc_in_sdp
        self._expiry_s = session_expiry_s
        self._connect_wait_s = connect_wait_s
        self._track_gc_s = track_gc_s
        self._consent_expiry_s = consent_expiry_s
        self._sessions: dict[str, SfuSession] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def create(self) -> SfuSession:
        session = SfuSession(
            secrets.token_hex(16),
            self,
            sender_reports=self._sender_reports,
            ssrc_in_sdp=self._ssrc_in_sdp,
            connect_wait_s=self._connect_wait_s,
            track_gc_s=self._track_gc_s,
            consent_expiry_s=self._consent_expiry_s,
            on_dead=self._schedule_expiry,
        )
        self._sessions[session.id] = session
        log.info("sfu.session_created", session_id=session.id)
        return session

    def get(self, session_id: str) -> SfuSession:
        """The session, or 410: unknown and expired look the same, as on Cloudflare."""
        session = self._sessions.get(session_id)
        if session is None:
            raise session_gone("unknown, closed or expired session; create a new one")
        return session

    async def discard(self, session: SfuSession) -> None:
        """Forget a session at once (its creation failed half-way)."""
        self._sessions.pop(session.id, None)
        await session.close()

    def find_track(
        self, session_id: str, track_name: str
    ) -> tuple[SfuSession, PublishedTrack] | None:
        session = self._sessions.get(session_id)
        if session is None or not session.alive:
            return None
        track = session.published(track_name)
        return None if track is None else (session, track)

    def pull_fault(self, session_id: str, track_name: str) -> TrackFailure | None:
        return self.faults.take_track(session_id, track_name)

    def downlink(self) -> Impairment | None:
        return self.faults.downlink

    def offered_codecs(self, track: PublishedTrack) -> list[Codec]:
        session = self._sessions.get(track.session_id)
        return [] if session is None else session.offered_codecs(track.mid)

    # -- fault actions (``FaultTarget``) -------------------------------------------------

    def expire_now(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        handle = self._expiries.pop(session_id, None)
        if handle is not None:
            handle.cancel()
        self._expire(session)
        return True

    def stop_forwarding(self, session_id: str, track_name: str) -> bool:
        found = self.find_track(session_id, track_name)
        if found is None:
            return False
        found[1].forwarding = False
        return True

    def collect_track(self, session_id: str, track_name: str) -> bool:
        found = self.find_track(session_id, track_name)
        if found is None:
            return False
        found[1].close()
        return True

    async def close_all(self) -> None:
        for handle in self._expiries.values():
            handle.cancel()
        self._expiries.clear()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), *self._closing)

    def _schedule_expiry(self, session: SfuSession) -> None:
        """A session whose transport failed or closed stays visible for the reuse window."""
        if session.id in self._sessions and session.id not in self._expiries:
            loop = asyncio.get_running_loop()
            self._expiries[session.id] = loop.call_later(self._expiry_s, self._expire, session)

    def _expire(self, session: SfuSession) -> None:
        self._expiries.pop(session.id, None)
        if self._sessions.pop(session.id, None) is None:
            return
        log.info("sfu.session_expired", session_id=session.id)
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
