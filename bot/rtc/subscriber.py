"""The recorder's WebRTC side: one Cloudflare session pulling every participant's tracks.

Pulls go through the Cloudflare API (tracks/new remote, the SFU offers, we answer with
PUT renegotiate). Each received track gets a clock (``bot.rtc.clock``) and a reader task
(``bot.rtc.track_reader``) that hands decoded frames, placed on the timeline, to the
media pipeline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from bot.config import Participant, TrackRef
from bot.realtime import (
    OfferRefusedError,
    RealtimeClient,
    SessionDescription,
    TrackObject,
    TrackResult,
)
from bot.rtc.aiortc_compat import (
    accept_lower_dynamic_payload_types,
    decode_in_one_thread,
    handle_rtp_on_arrival,
    ice_check,
    ice_path,
    negotiated_codecs,
    request_keyframe,
    route_by_mid,
)
from bot.rtc.buffers import FrameOpener
from bot.rtc.clock import ClockDomain, StreamClock
from bot.rtc.codec_policy import Declined, OfferPlan, prepare_offer
from bot.rtc.receiver_tap import ReceiverTap
from bot.rtc.simulcast import prefer_layer
from bot.rtc.track_reader import FrameSink, read_track, watch_keyframes
from bot.rtc.track_status import TrackStatus
from bot.rtc.tracks import FailedTrack, PulledTrack, TrackArchiver
from bot.tasks import stop_task
from bot.timeline import Timeline

__all__ = ["FailedTrack", "FrameSink", "PulledTrack", "Subscriber"]

UNREADABLE_WITHIN = 2.0
"""Seconds since an unopened frame for its track to count as encrypted now."""

READ_BATCH_SECONDS = 0.05
"""How often the ICE socket is read once connected (``bot.rtc.datagrams``): the loop
wakes at most 20 times a second for media instead of for every packet; NACKs and
keyframe requests go out at most this much later."""

log = structlog.get_logger("bot.rtc.subscriber")


@dataclass(frozen=True)
class _Prepared:
    """An m-line made ready to receive, before the SFU sees our answer."""

    mid: str
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
        timeline: Timeline,
        ice_servers: tuple[str, ...] = (),
        simulcast_layer: str | None = None,
        open_frame: FrameOpener | None = None,
        archiver: TrackArchiver | None = None,
        decode: bool = True,
    ) -> None:
        """``archiver``: stores each track as it arrived; ``decode``: False when no
        decoded frame is wanted (``sink`` then gets none)."""
        accept_lower_dynamic_payload_types()
        decode_in_one_thread()
        self._client = client
        self._sink = sink
        self._timeline = timeline
        self._simulcast_layer = simulcast_layer
        self._open_frame = open_frame
        self._archiver = archiver
        self._decode = decode
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
                transceivers = self._pc.getTransceivers()
                if transceivers:  # one bundled transport for all
                    # Only without decoding (tracks only): a live composite read in
                    # batches hung once in CI before its completion (BENCHMARKS.md).
                    batched = handle_rtp_on_arrival(
                        transceivers[0].receiver.transport,
                        batch_seconds=0.0 if self._decode else READ_BATCH_SECONDS,
                    )
                    log.info("subscriber.rtp_reading", batched=batched)
                self.connected.set()
                log.info("subscriber.ice_path", **self.transport_info())
            elif state in ("failed", "closed"):
                self.failed.set()

    async def open(self) -> str:
        session = await self._client.new_session()
        self.session_id = session.sessionId
        log.info("subscriber.session_created")
        self._watchdog = asyncio.create_task(watch_keyframes(self._on_mid))
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
            return await self._answer(offer, prepared, new_declines)

        result = await self._client.pull_tracks(self.session_id, objects, answer)
        by_key = {(t.sessionId, t.trackName): t for t in result.tracks}
        failures = []
        pulled: list[PulledTrack] = []
        for ref in refs:
            item = _outcome(ref, by_key, new_declines)
            mid = item.mid or ""
            if item.failed or mid not in prepared:
                failures.append(item)
                self._fail(participant, slot, ref, item, ours=mid in new_declines)
            else:
                pulled.append(self._start(participant, slot, ref, prepared[mid]))
        video = [t for t in pulled if t.kind == "video"]
        await prefer_layer(self._client, self.session_id, video, self._simulcast_layer)
        return failures

    async def _answer(
        self,
        offer: SessionDescription,
        prepared: dict[str, _Prepared],
        new_declines: dict[str, Declined],
    ) -> SessionDescription:
        """Answer the SFU's offer, adding the m-lines it prepares to ``prepared`` and
        those it declines for the first time to ``new_declines``."""
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

    def _fail(
        self, participant: Participant, slot: int, ref: TrackRef, item: TrackResult, *, ours: bool
    ) -> None:
        """Log and keep a track that cannot be recorded; ``ours`` when we declined it."""
        code = item.errorCode or "mid_missing_from_offer"
        log.error(
            "subscriber.track_failed",
            participant=participant.id,
            track=ref.track_name,
            error_code=code,
            error=item.errorDescription,
        )
        self.failures.append(item)
        reason = item.errorDescription if ours else None
        self.failed_tracks[ref] = FailedTrack(participant, slot, code, reason)

    def _start(
        self, participant: Participant, slot: int, ref: TrackRef, ready: _Prepared
    ) -> PulledTrack:
        """Start recording a track the SFU now sends on the m-line made ``ready``."""
        self.failed_tracks.pop(ref, None)
        self._domains.setdefault(ref.session_id, ClockDomain(ref.session_id)).attach(ready.clock)
        track = PulledTrack(
            ref,
            participant,
            slot,
            ready.mid,
            ready.kind,
            ready.clock,
            ready.receiver,
            ready.tap,
            ready.codec,
        )
        self._on_mid[track.mid] = track
        self.tracks.append(track)
        if self._archiver is not None:
            ready.tap.archive_to(self._archiver.begin(track))
        track.reader = asyncio.create_task(read_track(track, self._sink), name=f"read-{track.mid}")
        log.info(
            "subscriber.track_pulled",
            participant=participant.id,
            role=participant.role,
            track=ref.track_name,
            kind=ready.kind,
            mid=track.mid,
            codec=ready.codec,
        )
        return track

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
            tap = self._taps[mid] = ReceiverTap(
                transceiver.receiver, transceiver.kind, self._open_frame, decode=self._decode
            )
            route_by_mid(transceiver.receiver.transport)
        return tap

    def _prepare(self, transceiver: Any) -> _Prepared:
        receiver = transceiver.receiver
        kind: str = transceiver.kind
        mid: str = transceiver.mid
        codecs = negotiated_codecs(transceiver)
        codec = next(iter(codecs), None)  # negotiated codecs, the forwarded one first
        rate = codec.clockRate if codec is not None else (48_000 if kind == "audio" else 90_000)
        clock = StreamClock(rate, None, self._timeline)

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
        return _Prepared(mid, tap, receiver, clock, kind, codec.mimeType if codec else None)

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
            if self._archiver is not None:
                track.tap.archive_to(None)
                self._archiver.end(track)
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

    def unreadable_participants(self) -> set[str]:
        """Participants whose media arrives encrypted beyond what this recorder can open."""
        return {
            t.participant.id
            for t in self.tracks
            if t.active and t.tap.unreadable(UNREADABLE_WITHIN)
        }

    def track_status(self) -> list[TrackStatus]:
        """A snapshot per track for status, metrics and the manifest's sync report."""
        now = time.time()
        return [track.status(now) for track in self.tracks]

    async def packets_lost(self) -> dict[str, int]:
        """Cumulative RTP packets lost per active track's mid, from aiortc's statistics
        (a closed receiver keeps its last value where the caller stored it)."""
        lost: dict[str, int] = {}
        for track in list(self.tracks):
            if track.active:
                value = await track.packets_lost()
                if value is not None:
                    lost[track.mid] = value
        return lost

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
        """Is the path to the SFU alive right now? None when there is no path to check:
        before it ever connected, or after close.

        aiortc notices a dead path only when consent expires (about 30 s), and says
        nothing while media is merely absent (a publisher may be muted or gone, which
        Cloudflare does not signal). One STUN check answered proves the path.
        """
        transceivers = self._pc.getTransceivers()
        if not transceivers or not self.connected.is_set():
            return None
        check = ice_check(transceivers[0].receiver.transport)
        if check is None:
            return None
        try:
            async with asyncio.timeout(answer_within):
                await check
        except (TimeoutError, ConnectionError, OSError):
            return False
        return True

    def last_media(self) -> float:
        """Wall-clock time of the newest packet on any track (0 if none yet)."""
        return max((t.last_packet for t in self.tracks if t.active), default=0.0)


def _outcome(
    ref: TrackRef,
    by_key: dict[tuple[str | None, str | None], TrackResult],
    new_declines: dict[str, Declined],
) -> TrackResult:
    """The SFU's result for ``ref``, with our own code and reason when we declined its
    m-line (the SFU knows nothing of that)."""
    item = by_key.get((ref.session_id, ref.track_name)) or TrackResult(
        sessionId=ref.session_id,
        trackName=ref.track_name,
        errorCode="missing_from_response",
    )
    declined = new_declines.get(item.mid or "")
    if declined is None:
        return item
    return item.model_copy(update={"errorCode": declined.code, "errorDescription": declined.reason})
