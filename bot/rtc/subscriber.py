"""The recorder's WebRTC side: one Cloudflare session pulling every participant's tracks.

Pulls go through the Cloudflare API (tracks/new remote, the SFU offers, we answer with
PUT renegotiate). Each received track gets a clock (``bot.rtc.clock``) and a reader task
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
from bot.realtime import (
    OfferRefusedError,
    RealtimeClient,
    SessionDescription,
    SimulcastPreference,
    TrackObject,
    TrackResult,
    UpdateTrackObject,
)
from bot.rtc.aiortc_compat import (
    ReceiverTap,
    accept_lower_dynamic_payload_types,
    ice_path,
    negotiated_codecs,
    probe_ice_path,
    request_keyframe,
    route_by_mid,
)
from bot.rtc.clock import ClockDomain, StreamClock
from bot.rtc.codec_policy import Declined, OfferPlan, prepare_offer
from bot.tasks import stop_task

log = structlog.get_logger("bot.rtc.subscriber")

FrameSink = Callable[[int, float, av.VideoFrame | av.AudioFrame], None]
"""``(slot, timeline_seconds, frame)``: where decoded frames go (the media pipeline)."""

KEYFRAME_STALL_SECONDS = 1.0
MAX_SIZES = 64
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
    tap: ReceiverTap
    codec: str | None = None
    active: bool = True
    frames: int = 0
    packets: int = 0
    last_packet: float = 0.0
    last_frame: float = 0.0
    last_keyframe_request: float = 0.0
    foreign_reported: bool = False
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    """``(timeline seconds, width, height)`` at the first picture and at every change of
    size (a simulcast layer switch, the sender's own adaptation), at most ``MAX_SIZES``."""
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


@dataclass(frozen=True)
class _Prepared:
    """An m-line made ready to receive, before the SFU sees our answer."""

    tap: ReceiverTap
    receiver: Any
    clock: StreamClock
    kind: str
    codec: str | None


class Subscriber:
    """Owns the PeerConnection and the Cloudflare session of one recording."""

    def __init__(
        self,
        client: RealtimeClient,
        sink: FrameSink,
        *,
        origin_wall: float,
        ice_servers: tuple[str, ...] = (),
        simulcast_layer: str | None = None,
    ) -> None:
        accept_lower_dynamic_payload_types()
        self._client = client
        self._sink = sink
        self._origin_wall = origin_wall
        self._simulcast_layer = simulcast_layer
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
        self._taps: dict[str, ReceiverTap] = {}
        """One per m-line, for the m-line's life (a later track may reuse it)."""
        self._on_mid: dict[str, PulledTrack] = {}
        """The track each m-line carries now."""
        self._declined: dict[str, Declined] = {}
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

        @self._pc.on("connectionstatechange")
        def _on_state() -> None:
            state = self._pc.connectionState
            log.info("subscriber.connection_state", state=state)
            if state == "connected":
                self.connected.set()
                log.info("subscriber.ice_path", **self.transport_info())
            elif state in ("failed", "closed"):
                self.failed.set()

    async def open(self) -> str:
        session = await self._client.new_session()
        self.session_id = session.sessionId
        log.info("subscriber.session_created")
        self._watchdog = asyncio.create_task(self._watch_keyframes())
        return session.sessionId

    async def pull(self, participant: Participant, slot: int) -> list[TrackResult]:
        """Pull a participant's tracks; returns the per-track failures (already logged).

        Results are matched to requests by ``(sessionId, trackName)``, as Cloudflare's own
        clients do: nothing promises that they come back in request order.
        """
        assert self.session_id is not None, "open() first"
        refs = list(participant.tracks)
        objects = [
            TrackObject(location="remote", sessionId=r.session_id, trackName=r.track_name)
            for r in refs
        ]
        prepared: dict[str, _Prepared] = {}
        new_declines: dict[str, Declined] = {}

        async def answer(offer: SessionDescription) -> SessionDescription:
            plan = await self._apply_offer(offer.sdp)
            previously = self._declined
            self._declined = {d.mid: d for d in plan.declined}
            new_declines.update((m, d) for m, d in self._declined.items() if m not in previously)
            # Hook the new receivers before the SFU sees our answer: media may follow at once.
            for transceiver in self._pc.getTransceivers():
                mid = transceiver.mid
                if mid is None or mid in self._on_mid:
                    continue
                if mid in self._declined:
                    self._tap(transceiver).decline()
                elif mid in plan.sending and mid not in prepared:
                    prepared[mid] = self._prepare(transceiver)
            reply = await self._pc.createAnswer()
            await self._pc.setLocalDescription(reply)
            return SessionDescription(type="answer", sdp=plan.finish(self._pc.localDescription.sdp))

        result = await self._client.pull_tracks(self.session_id, objects, answer)
        by_key = {(t.sessionId, t.trackName): t for t in result.tracks}
        failures = []
        pulled: list[PulledTrack] = []
        for ref in refs:
            item = by_key.get((ref.session_id, ref.track_name)) or TrackResult(
                sessionId=ref.session_id,
                trackName=ref.track_name,
                errorCode="missing_from_response",
            )
            mid = item.mid or ""
            if mid in new_declines:
                item = item.model_copy(
                    update={
                        "errorCode": new_declines[mid].code,
                        "errorDescription": new_declines[mid].reason,
                    }
                )
            if item.failed or mid not in prepared:
                code = item.errorCode or "mid_missing_from_offer"
                failures.append(item)
                log.error(
                    "subscriber.track_failed",
                    participant=participant.id,
                    track=ref.track_name,
                    error_code=code,
                    error=item.errorDescription,
                )
                self.failures.append(item)
                ours = item.errorDescription if mid in new_declines else None
                self.failed_tracks[ref] = FailedTrack(participant, slot, code, ours)
                continue
            self.failed_tracks.pop(ref, None)
            ready = prepared[mid]
            self._domains.setdefault(ref.session_id, ClockDomain(ref.session_id)).attach(
                ready.clock
            )
            track = PulledTrack(
                ref,
                participant,
                slot,
                mid,
                ready.kind,
                ready.clock,
                ready.receiver,
                ready.tap,
                ready.codec,
            )
            self._on_mid[mid] = track
            self.tracks.append(track)
            pulled.append(track)
            track.reader = asyncio.create_task(self._read(track), name=f"read-{track.mid}")
            log.info(
                "subscriber.track_pulled",
                participant=participant.id,
                role=participant.role,
                track=ref.track_name,
                kind=ready.kind,
                mid=mid,
                codec=ready.codec,
            )
        await self._prefer_layer([t for t in pulled if t.kind == "video"])
        return failures

    async def _apply_offer(self, sdp: str) -> OfferPlan:
        """Set the SFU's offer; when aiortc refuses it, decline every new m-line instead.

        aiortc reports an offer it cannot use with assorted exception types (ValueError,
        OperationError, AssertionError from its parser ...). Declining the new m-lines
        still answers the SFU (Cloudflare refuses every later change while an offer is
        pending) and keeps the tracks already recorded; only when even that is refused
        does the pull fail, with a one-line error.
        """
        plan = prepare_offer(sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(plan.sdp, "offer"))
            return plan
        except Exception as exc:  # any aiortc failure means "unusable offer"
            first_error = type(exc).__name__
        offered = plan.sending | {d.mid for d in plan.declined}
        new = offered - set(self._on_mid)
        plan = prepare_offer(sdp, decline=new)
        log.error("subscriber.offer_refused", error=first_error, declined_mids=sorted(new))
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(plan.sdp, "offer"))
        except Exception as exc:
            raise OfferRefusedError(first_error, type(exc).__name__) from None
        return plan

    def _tap(self, transceiver: Any) -> ReceiverTap:
        mid: str = transceiver.mid
        tap = self._taps.get(mid)
        if tap is None:
            tap = self._taps[mid] = ReceiverTap(transceiver.receiver, transceiver.kind)
            route_by_mid(transceiver.receiver.transport)
        return tap

    def _prepare(self, transceiver: Any) -> _Prepared:
        receiver = transceiver.receiver
        kind: str = transceiver.kind
        mid: str = transceiver.mid
        codecs = negotiated_codecs(transceiver)
        codec = next(iter(codecs), None)  # negotiated codecs, the forwarded one first
        rate = codec.clockRate if codec is not None else (48_000 if kind == "audio" else 90_000)
        clock = StreamClock(rate, None, self._origin_wall)

        def on_packet(ssrc: int) -> None:
            now = time.time()
            track = self._on_mid.get(mid)
            if track is None or track.clock is not clock:
                return
            if track.packets == 0 and kind == "video":
                request_keyframe(receiver, ssrc)
                track.last_keyframe_request = now
            track.packets += 1
            track.last_packet = now

        tap = self._tap(transceiver)
        tap.retarget(clock, codecs, on_packet)
        return _Prepared(tap, receiver, clock, kind, codec.mimeType if codec else None)

    async def _prefer_layer(self, tracks: list[PulledTrack]) -> None:
        """Ask for ``recording.simulcast_layer`` on each video track (``tracks/update``).

        Sent after the pull, once the track's kind is known from the offer: a simulcast
        preference on an audio track is not something Cloudflare documents. With
        ``ridNotAvailable: asciibetical`` the SFU falls to the next layer in a-z order
        when the preferred one is not sent; a publisher without simulcast is unaffected.
        """
        if not tracks or self._simulcast_layer is None:
            return
        assert self.session_id is not None
        preference = SimulcastPreference(
            preferredRid=self._simulcast_layer,
            priorityOrdering="none",
            ridNotAvailable="asciibetical",
        )
        result = await self._client.update_tracks(
            self.session_id,
            [
                UpdateTrackObject(
                    mid=t.mid,
                    sessionId=t.ref.session_id,
                    trackName=t.ref.track_name,
                    simulcast=preference,
                )
                for t in tracks
            ],
        )
        for item in result.tracks:
            if item.failed:
                log.warning("subscriber.layer_not_set", mid=item.mid, error_code=item.errorCode)

    async def drop(self, participant_id: str) -> None:
        """Close a participant's tracks on our session (Cloudflare ``tracks/close``)."""
        assert self.session_id is not None
        leaving = [t for t in self.tracks if t.active and t.participant.id == participant_id]
        for ref, failure in list(self.failed_tracks.items()):
            if failure.participant.id == participant_id:
                del self.failed_tracks[ref]
        for track in leaving:
            track.active = False
            self._on_mid.pop(track.mid, None)
            if track.reader is not None:
                track.reader.cancel()
        if leaving:
            result = await self._client.close_tracks(self.session_id, [t.mid for t in leaving])
            for item in result.tracks:
                if item.failed:
                    log.warning("subscriber.close_failed", mid=item.mid, error_code=item.errorCode)

    def transport_info(self) -> dict[str, object]:
        """ICE role, whether the SFU is ICE-lite, and the candidate types in use."""
        transceivers = self._pc.getTransceivers()
        if not transceivers or not self.connected.is_set():
            return {
                "ice_role": None,
                "remote_ice_lite": False,
                "local_candidate_type": None,
                "remote_candidate_type": None,
            }
        return ice_path(transceivers[0].receiver.transport)

    def track_status(self) -> list[dict[str, object]]:
        """Plain data per track for status, metrics and the manifest's sync report."""
        now = time.time()
        return [
            {
                "participant": t.participant.id,
                "kind": t.kind,
                "mid": t.mid,
                "codec": t.codec,
                "active": t.active,
                "packets": t.packets,
                "rtx_packets": t.tap.rtx_packets if t.active else None,
                "nack_retries": t.tap.nack_retries if t.active else None,
                "frames": t.frames,
                "sizes": [list(size) for size in t.sizes],
                "clock": "sender_reports" if t.clock.synced else "arrival",
                "sender_reports": t.clock.sender_reports,
                "seconds_since_packet": round(now - t.last_packet, 3) if t.packets else None,
            }
            for t in self.tracks
        ]

    async def close(self) -> None:
        if self._watchdog is not None:
            await stop_task(self._watchdog)
        for track in self.tracks:
            if track.reader is not None:
                await stop_task(track.reader)
        # aiortc stops its receivers one by one, and a receiver no longer registered
        # leaves its packets to be routed to another one by payload type: a stream's last
        # packets would reach the wrong clock. Nothing is accepted once closing.
        for tap in self._taps.values():
            tap.decline()
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
                if track.kind == "video":
                    self._note_size(track, t, frame.width, frame.height)
                self._sink(track.slot, t, frame)
        except MediaStreamError:
            log.info("subscriber.track_ended", participant=track.participant.id, mid=track.mid)

    @staticmethod
    def _note_size(track: PulledTrack, t: float, width: int, height: int) -> None:
        if track.sizes and track.sizes[-1][1:] == (width, height):
            return
        if len(track.sizes) < MAX_SIZES:
            track.sizes.append((round(t, 3), width, height))
        log.info("subscriber.picture_size", mid=track.mid, width=width, height=height)

    async def _watch_keyframes(self) -> None:
        """Ask again for a keyframe when packets arrive but no picture comes out."""
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for track in self._on_mid.values():
                if track.tap.foreign_packets and not track.foreign_reported:
                    # The SFU sends a payload type the answer did not accept (a codec it
                    # forwards that was not first in its offer): the track stays dark.
                    track.foreign_reported = True
                    log.warning(
                        "subscriber.unexpected_payload_type",
                        mid=track.mid,
                        payload_type=track.tap.foreign_payload_type,
                    )
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
