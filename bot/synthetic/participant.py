"""A synthetic participant that publishes the test signal the way a browser app does.

It creates a Realtime session, offers one sendonly audio and one sendonly video
transceiver, publishes them with ``tracks/new`` and sends ``bot.synthetic.signal``,
rendered and scheduled by ``bot.synthetic.media``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import structlog
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from bot.realtime import (
    RealtimeClient,
    RealtimeError,
    SessionDescription,
    TrackObject,
)
from bot.rtc.aiortc_compat import on_keyframe_request
from bot.synthetic.media import (
    MediaPlan,
    MediaWorker,
    MuteWindow,
    PacketTrack,
    Scheduled,
    Seal,
)
from bot.synthetic.signal import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    ResolutionStep,
    render_i420,
    resolution_at,
)

log = structlog.get_logger("bot.synthetic.participant")

CLOUDFLARE_STUN = "stun:stun.cloudflare.com:3478"
VIDEO_CODECS = ("VP8", "H264", "H264-high")
"""``H264`` is constrained baseline (what aiortc offers); ``H264-high`` is real High
profile, offered as ``profile-level-id=640c1f`` only, as Safari and hardware encoders do."""
_AIORTC_H264_PROFILE = "profile-level-id=42e01f"
_HIGH_H264_PROFILE = "profile-level-id=640c1f"
_QUEUE_SECONDS = 1.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class PublishError(Exception):
    """The participant could not publish (connection or track failure)."""


class SyntheticParticipant:
    """One publisher: a Realtime session with an ``audio`` and a ``video`` track."""

    def __init__(
        self,
        client: RealtimeClient,
        *,
        number: int,
        role: str,
        fps: int = 30,
        width: int = 640,
        height: int = 360,
        codec: str = "VP8",
        resolution_schedule: Sequence[tuple[float, int, int]] | None = None,
        audio_mutes: Sequence[tuple[float, float]] = (),
        video_mutes: Sequence[tuple[float, float]] = (),
        near_silent_mute: bool = False,
        video_bitrate: int = 600_000,
        ice_servers: Sequence[str] = (),
        connect_timeout: float = 10.0,
        lead_s: float = 0.2,
        seal: Seal | None = None,
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
        if fps < 1:
            raise ValueError(f"fps must be positive, got {fps}")
        steps = resolution_schedule or [(0.0, width, height)]
        self._plan = MediaPlan(
            number=number,
            fps=fps,
            codec=codec,
            video_bitrate=video_bitrate,
            schedule=tuple(ResolutionStep(t, w, h) for t, w, h in sorted(steps)),
            audio_mutes=tuple(MuteWindow(a, b) for a, b in audio_mutes),
            video_mutes=tuple(MuteWindow(a, b) for a, b in video_mutes),
            near_silent_mute=near_silent_mute,
        )
        # Fail now, not in the worker thread, on a bad number or picture size.
        render_i420(number, 0, *resolution_at(self._plan.schedule, 0.0), fps)
        self._client = client
        self.number = number
        self.role = role
        self._ice_servers = [RTCIceServer(urls=url) for url in ice_servers]
        self._connect_timeout = connect_timeout
        self._lead_s = lead_s
        self._seal = seal
        self.session_id = ""
        self.clock_start: float | None = None
        """Loop-clock instant of source time 0 (the first audio sample and video frame)."""
        self._pc: RTCPeerConnection | None = None
        self._worker: MediaWorker | None = None
        self._tracks: dict[str, PacketTrack] = {}
        self._keyframe = threading.Event()
        """Set by PLI/FIR, a dropped video packet or a video unmute; read by the worker."""
        self._mids: dict[str, str] = {}

    @property
    def track_refs(self) -> dict[str, str]:
        """``SESSION/TRACK`` references, as an app's room state would carry them."""
        if not self.session_id:
            raise RuntimeError("participant not started")
        return {kind: f"{self.session_id}/{kind}" for kind in ("audio", "video")}

    async def start(self) -> None:
        """Publish both tracks and start sending once the transport is connected."""
        loop = asyncio.get_running_loop()
        session = await self._client.new_session()
        self.session_id = session.sessionId
        log.info("participant.session", number=self.number, role=self.role, session=self.session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        self._pc = pc
        connected: asyncio.Future[None] = loop.create_future()

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if connected.done():
                return
            if pc.connectionState == "connected":
                connected.set_result(None)
            elif pc.connectionState in ("failed", "closed"):
                connected.set_exception(PublishError(f"connection {pc.connectionState}"))

        try:
            transceivers = await self._publish(pc)
            async with asyncio.timeout(self._connect_timeout):
                await connected
        except TimeoutError:
            await self.stop()
            raise PublishError(f"not connected within {self._connect_timeout:g} s") from None
        except BaseException:
            await self.stop()
            raise

        self.clock_start = loop.time() + self._lead_s
        worker = MediaWorker(
            self._plan,
            clock=loop.time,
            start_at=self.clock_start,
            lead_s=self._lead_s,
            emit_audio=self._emitter(loop, self._tracks["audio"]),
            emit_video=self._emitter(loop, self._tracks["video"]),
            keyframe=self._keyframe,
            seal=self._seal,
        )
        # A PLI or FIR from the SFU must reach the encoder, which aiortc does not own.
        on_keyframe_request(transceivers["video"].sender, self._keyframe.set)
        self._worker = worker
        worker.start()
        log.info(
            "participant.publishing",
            number=self.number,
            session=self.session_id,
            codec=self._plan.codec,
            fps=self._plan.fps,
        )

    async def _publish(self, pc: RTCPeerConnection) -> dict[str, RTCRtpTransceiver]:
        """Offer both tracks with ``tracks/new`` and apply the SFU's answer."""
        assert self.session_id is not None
        transceivers = self._add_transceivers(pc)
        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
        self._mids = {kind: str(t.mid) for kind, t in transceivers.items()}
        offer = SessionDescription(type="offer", sdp=self._on_wire(pc.localDescription.sdp))
        result = await self._client.new_tracks(
            self.session_id,
            [
                TrackObject(location="local", mid=mid, trackName=kind)
                for kind, mid in self._mids.items()
            ],
            offer,
        )
        failed = [t for t in result.tracks if t.failed]
        if failed or result.sessionDescription is None:
            codes = ", ".join(sorted({t.errorCode or "?" for t in failed})) or "no answer"
            raise PublishError(f"publishing tracks failed: {codes}")
        answer = self._for_aiortc(result.sessionDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return transceivers

    def _on_wire(self, sdp: str) -> str:
        """aiortc can only offer constrained baseline; a High-profile publisher says what
        it really sends (its packets are packed, not encoded, by aiortc)."""
        if self._plan.codec != "H264-high":
            return sdp
        return sdp.replace(_AIORTC_H264_PROFILE, _HIGH_H264_PROFILE)

    def _for_aiortc(self, sdp: str) -> str:
        """The answer as aiortc's codec matching accepts it (the inverse of ``_on_wire``)."""
        if self._plan.codec != "H264-high":
            return sdp
        return sdp.replace(_HIGH_H264_PROFILE, _AIORTC_H264_PROFILE)

    def _add_transceivers(self, pc: RTCPeerConnection) -> dict[str, RTCRtpTransceiver]:
        transceivers: dict[str, RTCRtpTransceiver] = {}
        video_mime = "video/VP8" if self._plan.codec == "VP8" else "video/H264"
        for kind, mime in (("audio", "audio/opus"), ("video", video_mime)):
            per_second = SAMPLE_RATE / SAMPLES_PER_FRAME if kind == "audio" else self._plan.fps
            # A dropped video packet breaks the decoder's references: recover with a keyframe.
            on_drop = self._keyframe.set if kind == "video" else _ignore
            track = PacketTrack(kind, round(per_second * _QUEUE_SECONDS), on_drop)
            self._tracks[kind] = track
            transceiver = pc.addTransceiver(track, direction="sendonly")
            codecs = RTCRtpSender.getCapabilities(kind).codecs
            transceiver.setCodecPreferences(
                [c for c in codecs if c.mimeType.lower() == mime.lower() and self._offers(c)]
            )
            transceivers[kind] = transceiver
        return transceivers

    def _offers(self, codec: RTCRtpCodecCapability) -> bool:
        """High profile is offered alone: one H.264 format, relabelled by ``_on_wire``."""
        if self._plan.codec != "H264-high" or codec.mimeType.lower() != "video/h264":
            return True
        return f"profile-level-id={codec.parameters.get('profile-level-id')}" == (
            _AIORTC_H264_PROFILE
        )

    @staticmethod
    def _emitter(
        loop: asyncio.AbstractEventLoop, track: PacketTrack
    ) -> Callable[[Scheduled | None], None]:
        def emit(item: Scheduled | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nothing to feed
                loop.call_soon_threadsafe(track.offer, item)

        return emit

    async def stop(self) -> None:
        """Stop sending, close the tracks on the SFU (best effort) and the connection."""
        if self._worker is not None:
            self._worker.stop()
            await asyncio.to_thread(self._worker.join, 5.0)
            self._worker = None
        dropped = {kind: t.dropped for kind, t in self._tracks.items() if t.dropped}
        if dropped:
            log.warning("participant.packets_dropped", number=self.number, **dropped)
        for track in self._tracks.values():
            track.stop()
        if self.session_id and self._mids and self._pc is not None:
            try:
                async with asyncio.timeout(3.0):
                    await self._client.close_tracks(self.session_id, list(self._mids.values()))
            except (RealtimeError, TimeoutError) as exc:
                log.info("participant.close_tracks_failed", number=self.number, error=str(exc))
        if self._pc is not None:
            await self._pc.close()
            self._pc = None


def _ignore() -> None:
    """A dropped audio packet is a 20 ms gap; nothing to repair."""


def ice_servers_for(base_url: str) -> list[str]:
    """Cloudflare's STUN server, except against a local SFU where it would only slow ICE."""
    host = urlparse(base_url).hostname or ""
    return [] if host in _LOOPBACK_HOSTS else [CLOUDFLARE_STUN]
