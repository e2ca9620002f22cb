"""The recorder's WebRTC side: one Cloudflare session pulling every participant's tracks.

Pulls go through the Cloudflare API (tracks/new remote, the SFU offers, we answer with
PUT renegotiate). Each received track gets a clock (bot.media.clock) and a reader task
that hands decoded frames, placed on the timeline, to the media pipeline. Every accepted
track is drained for as long as it lives: an unread aiortc track queue grows forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bot.config import Participant, TrackRef
from bot.media.clock import ClockDomain, StreamClock
from bot.realtime import RealtimeClient, SessionDescription, TrackObject, TrackResult
from bot.receiver_hooks import (
    attach_clock,
    bound_decoder_queue,
    bound_frame_queue,
    discard_media,
    probe_ice_path,
    request_keyframe,
    route_by_mid,
    tolerate_loss,
)
from bot.sdp_codecs import Declined, accept_undecodable, decline

log = structlog.get_logger("bot.subscriber")

FrameSink = Callable[[int, float, av.VideoFrame | av.AudioFrame], None]
"""``(slot, timeline_seconds, frame)``: where decoded frames go (the media pipeline)."""

KEYFRAME_STALL_SECONDS = 1.0
"""Packets flowing but no picture decoded for this long: ask for a keyframe again."""


@dataclass
class PulledTrack:
    """One remote track on our session, from pull to end."""

    ref: TrackRef
    participant: Participant
    slot: int
    mid: str
    kind: str
    clock: StreamClock
    receiver: Any
    active: bool = True
    frames: int = 0
    packets: int = 0
    last_packet: float = 0.0
    last_frame: float = 0.0
    last_keyframe_request: float = 0.0
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


REPULL_CODES = frozenset({"not_found_track_error", "empty_track_error"})
"""Per-track errors that can pass: the publisher's track is not there yet, or has no
media yet (a publisher still connecting, or reconnecting)."""


@dataclass(frozen=True)
class FailedTrack:
    """A track that cannot be recorded now: whose, where it would go, and why."""

    participant: Participant
    slot: int
    code: str
    reason: str | None
    """Our own explanation; the SFU's error text is left out: it may quote the app's
    track names."""

    @property
    def can_pass(self) -> bool:
        """Worth pulling again while recording (``REPULL_CODES``)."""
        return self.code in REPULL_CODES

    def report(self) -> dict[str, str | None]:
        """Plain data for the result and the manifest."""
        return {"participant": self.participant.id, "errorCode": self.code, "reason": self.reason}


class Subscriber:
    """Owns the PeerConnection and the Cloudflare session of one recording."""

    def __init__(
        self,
        client: RealtimeClient,
        sink: FrameSink,
        *,
        origin_wall: float,
        ice_servers: tuple[str, ...] = (),
    ) -> None:
        self._client = client
        self._sink = sink
        self._origin_wall = origin_wall
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])
        )
        self._domains: dict[str, ClockDomain] = {}
        self.session_id: str | None = None
        self.tracks: list[PulledTrack] = []
        """Every track ever pulled, dropped ones included (the manifest lists them)."""
        self.failures: list[TrackResult] = []
        self.failed_tracks: dict[TrackRef, FailedTrack] = {}
        """Tracks that cannot be recorded now; those that ``can_pass`` the recorder pulls
        again while it records."""
        self._tracks_by_receiver: dict[int, PulledTrack] = {}
        self._declined_mids: set[str] = set()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

        @self._pc.on("connectionstatechange")
        def _on_state() -> None:
            state = self._pc.connectionState
            log.info("subscriber.connection_state", state=state)
            if state == "connected":
                self.connected.set()
            elif state in ("failed", "closed"):
                self.failed.set()

    async def open(self) -> str:
        session = await self._client.new_session()
        self.session_id = session.sessionId
        log.info("subscriber.session_created")
        self._watchdog = asyncio.create_task(self._watch_keyframes())
        return session.sessionId

    async def pull(self, participant: Participant, slot: int) -> list[TrackResult]:
        """Pull a participant's tracks; returns the per-track failures (already logged)."""
        assert self.session_id is not None, "open() first"
        refs = list(participant.tracks)
        objects = [
            TrackObject(location="remote", sessionId=r.session_id, trackName=r.track_name)
            for r in refs
        ]
        hooked: dict[str, tuple[Any, StreamClock, str, str | None]] = {}
        declined: dict[str, Declined] = {}

        async def answer(offer: SessionDescription) -> SessionDescription:
            acceptable, undecodable = accept_undecodable(offer.sdp)
            await self._pc.setRemoteDescription(RTCSessionDescription(acceptable, offer.type))
            known = {t.mid for t in self.tracks} | set(self._declined_mids)
            declined.update((d.mid, d) for d in undecodable if d.mid not in known)
            # Hook the new receivers before the SFU sees our answer: media may follow at once.
            for transceiver in self._pc.getTransceivers():
                mid = transceiver.mid
                if mid in declined:
                    discard_media(transceiver.receiver)
                elif mid is not None and mid not in known and mid not in hooked:
                    hooked[mid] = self._hook(transceiver)
            reply = await self._pc.createAnswer()
            await self._pc.setLocalDescription(reply)
            sdp = decline(self._pc.localDescription.sdp, list(declined.values()))
            return SessionDescription(type="answer", sdp=sdp)

        result = await self._client.pull_tracks(self.session_id, objects, answer)
        failures = []
        for ref, answered in zip(refs, result.tracks, strict=False):
            mid = answered.mid or ""
            item = answered
            if mid in declined:
                self._declined_mids.add(mid)
                item = answered.model_copy(
                    update={
                        "errorCode": "codec_not_supported",
                        "errorDescription": declined[mid].reason,
                    }
                )
            if item.failed or mid not in hooked:
                failures.append(item)
                log.error(
                    "subscriber.track_failed",
                    participant=participant.id,
                    track=ref.track_name,
                    error_code=item.errorCode or "mid_missing_from_offer",
                    error=item.errorDescription,
                )
                self.failures.append(item)
                self.failed_tracks[ref] = FailedTrack(
                    participant,
                    slot,
                    item.errorCode or "mid_missing_from_offer",
                    item.errorDescription if mid in declined else None,
                )
                continue
            self.failed_tracks.pop(ref, None)
            receiver, clock, kind, codec = hooked[mid]
            self._domains.setdefault(ref.session_id, ClockDomain(ref.session_id)).attach(clock)
            track = PulledTrack(ref, participant, slot, mid, kind, clock, receiver)
            self._tracks_by_receiver[id(receiver)] = track
            self.tracks.append(track)
            track.reader = asyncio.create_task(self._read(track), name=f"read-{track.mid}")
            log.info(
                "subscriber.track_pulled",
                participant=participant.id,
                role=participant.role,
                track=ref.track_name,
                kind=kind,
                mid=mid,
                codec=codec,
            )
        return failures

    def _hook(self, transceiver: Any) -> tuple[Any, StreamClock, str, str | None]:
        receiver = transceiver.receiver
        kind: str = transceiver.kind
        codec = next(iter(transceiver._codecs), None)  # negotiated codecs, preferred first
        rate = codec.clockRate if codec is not None else (48_000 if kind == "audio" else 90_000)
        clock = StreamClock(rate, None, self._origin_wall)

        def on_packet(ssrc: int) -> None:
            now = time.time()
            track = self._tracks_by_receiver.get(id(receiver))
            if track is None:
                return
            if track.packets == 0 and kind == "video":
                request_keyframe(receiver, ssrc)
                track.last_keyframe_request = now
            track.packets += 1
            track.last_packet = now

        tolerate_loss(receiver, kind)
        attach_clock(receiver, clock, on_packet)
        bound_decoder_queue(receiver, kind)
        bound_frame_queue(receiver, kind)
        route_by_mid(receiver.transport)
        return receiver, clock, kind, codec.mimeType if codec is not None else None

    async def drop(self, participant_id: str) -> None:
        """Close a participant's tracks on our session (Cloudflare ``tracks/close``)."""
        assert self.session_id is not None
        leaving = [t for t in self.tracks if t.active and t.participant.id == participant_id]
        for ref, failure in list(self.failed_tracks.items()):
            if failure.participant.id == participant_id:
                del self.failed_tracks[ref]
        for track in leaving:
            track.active = False
            if track.reader is not None:
                track.reader.cancel()
        if leaving:
            result = await self._client.close_tracks(self.session_id, [t.mid for t in leaving])
            for item in result.tracks:
                if item.failed:
                    log.warning("subscriber.close_failed", mid=item.mid, error_code=item.errorCode)

    def track_status(self) -> list[dict[str, object]]:
        """Plain data per track for status, metrics and the manifest's sync report."""
        now = time.time()
        return [
            {
                "participant": t.participant.id,
                "kind": t.kind,
                "mid": t.mid,
                "active": t.active,
                "packets": t.packets,
                "frames": t.frames,
                "clock": "sender_reports" if t.clock.synced else "arrival",
                "sender_reports": t.clock.sender_reports,
                "seconds_since_packet": round(now - t.last_packet, 3) if t.packets else None,
            }
            for t in self.tracks
        ]

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for track in self.tracks:
            if track.reader is not None:
                track.reader.cancel()
        await self._pc.close()

    async def probe(self, answer_within: float = 1.0) -> bool | None:
        """Is the path to the SFU alive? None before it ever connected or after close."""
        transceivers = self._pc.getTransceivers()
        if not transceivers or not self.connected.is_set():
            return None
        return await probe_ice_path(transceivers[0].receiver.transport, answer_within)

    def last_media(self) -> float:
        """Wall-clock time of the newest packet on any track (0 if none yet)."""
        return max((t.last_packet for t in self.tracks if t.active), default=0.0)

    async def _read(self, track: PulledTrack) -> None:
        media = track.receiver.track
        try:
            while True:
                frame = await media.recv()
                t = track.clock.timeline_seconds(frame.pts)
                track.last_frame = time.time()
                if t is None:
                    continue
                track.frames += 1
                self._sink(track.slot, t, frame)
        except MediaStreamError:
            log.info("subscriber.track_ended", participant=track.participant.id, mid=track.mid)

    async def _watch_keyframes(self) -> None:
        """Ask again for a keyframe when packets arrive but no picture comes out."""
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for track in self.tracks:
                stalled = (
                    track.kind == "video"
                    and track.clock.ssrc is not None
                    and now - track.last_packet < KEYFRAME_STALL_SECONDS
                    and now - max(track.last_frame, track.last_keyframe_request)
                    > KEYFRAME_STALL_SECONDS
                )
                if stalled and track.clock.ssrc is not None:
                    track.last_keyframe_request = now
                    request_keyframe(track.receiver, track.clock.ssrc)
                    log.info("subscriber.keyframe_requested", mid=track.mid)
