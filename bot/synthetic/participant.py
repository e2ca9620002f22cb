"""A synthetic participant that publishes the test signal the way a browser app does.

It creates a Realtime session, offers one sendonly audio and one sendonly video
transceiver, publishes them with ``tracks/new`` and sends ``bot.synthetic.signal``.

Timing is the point of this module. A worker thread renders and encodes each frame a
little ahead of time (``lead_s``), off the event loop; the track's ``recv()`` then holds
each encoded packet until its scheduled instant, measured from one start instant shared
by audio and video. aiortc sends a packet as soon as ``recv()`` returns it and its RTCP
sender reports pair "time of the last send" with "RTP timestamp of the last packet", so
sending on schedule makes those reports exact, like a browser's capture clock. aiortc
packs ``av.Packet`` objects without re-encoding (``encoder.pack``) and derives the RTP
timestamp from the packet's pts: video frame i has pts i (time base 1/fps), audio frame j
has pts j * 960 (time base 1/48000) minus Opus's 312-sample encoder delay, exactly as
FFmpeg reports it, so a decoder that keeps every sample (aiortc's does) puts source
sample s at RTP time s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlparse

import av
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
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from bot.realtime import (
    RealtimeClient,
    RealtimeError,
    SessionDescription,
    TrackObject,
)
from bot.synthetic.signal import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    ResolutionStep,
    render_audio,
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
_AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
_AUDIO_FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE
_NEAR_SILENT_GAIN = 0.001
_QUEUE_SECONDS = 1.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class PublishError(Exception):
    """The participant could not publish (connection or track failure)."""


@dataclass(frozen=True)
class MuteWindow:
    """Source-time interval [start_s, end_s) during which a medium sends nothing."""

    start_s: float
    end_s: float

    def covers(self, seconds: float) -> bool:
        return self.start_s <= seconds < self.end_s


@dataclass(frozen=True)
class _Scheduled:
    packet: Packet[Any]
    due: float
    """Loop-clock instant at which the packet is handed to the sender."""


class _PacketTrack(MediaStreamTrack):
    """A track of pre-encoded packets, each released at its scheduled instant.

    The queue is filled from the worker thread through ``call_soon_threadsafe``; it is
    bounded, and a packet arriving at a full queue (the sender stalled) is dropped and
    counted rather than buffered without limit.
    """

    def __init__(self, kind: str, capacity: int, on_drop: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self.dropped = 0
        self._on_drop = on_drop
        self._queue: asyncio.Queue[_Scheduled | None] = asyncio.Queue(capacity)

    def offer(self, item: _Scheduled | None) -> None:
        """Enqueue from the loop thread; ``None`` ends the track."""
        if item is None:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            self._on_drop()

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        delay = item.due - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        return item.packet


@dataclass(frozen=True)
class _MediaPlan:
    number: int
    fps: int
    codec: str
    video_bitrate: int
    schedule: tuple[ResolutionStep, ...]
    audio_mutes: tuple[MuteWindow, ...]
    video_mutes: tuple[MuteWindow, ...]
    near_silent_mute: bool


class _MediaWorker:
    """Renders and encodes audio and video in a thread, ``lead_s`` ahead of schedule."""

    def __init__(
        self,
        plan: _MediaPlan,
        *,
        clock: Callable[[], float],
        start_at: float,
        lead_s: float,
        emit_audio: Callable[[_Scheduled | None], None],
        emit_video: Callable[[_Scheduled | None], None],
        keyframe: threading.Event,
    ) -> None:
        self._plan = plan
        self._clock = clock
        self._start_at = start_at
        self._lead_s = lead_s
        self._emit_audio = emit_audio
        self._emit_video = emit_video
        self._stopping = threading.Event()
        self._keyframe = keyframe
        self._video_time_base = Fraction(1, plan.fps)
        self._audio_encoder: av.AudioCodecContext | None = None
        self._video_encoder: av.VideoCodecContext | None = None
        self._video_size: tuple[int, int] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"participant-{plan.number}-media", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        audio_j = video_i = 0
        try:
            while not self._stopping.is_set():
                audio_due = audio_j * _AUDIO_FRAME_S
                video_due = video_i / self._plan.fps
                wait = self._start_at + min(audio_due, video_due) - self._lead_s - self._clock()
                if wait > 0:
                    self._stopping.wait(wait)
                    continue
                if audio_due <= video_due:
                    self._encode_audio(audio_j)
                    audio_j += 1
                else:
                    self._encode_video(video_i)
                    video_i += 1
        except Exception:
            log.exception("participant.media_failed", number=self._plan.number)
        finally:
            self._emit_audio(None)
            self._emit_video(None)

    def _new_audio_encoder(self) -> av.AudioCodecContext:
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = SAMPLE_RATE
        encoder.format = "s16"
        encoder.layout = "mono"
        encoder.bit_rate = 32_000
        encoder.time_base = _AUDIO_TIME_BASE
        encoder.options = {"application": "voip"}
        return encoder

    def _encode_audio(self, j: int) -> None:
        gain = 1.0
        if any(w.covers(j * _AUDIO_FRAME_S) for w in self._plan.audio_mutes):
            if not self._plan.near_silent_mute:
                # Flush the encoder's delayed tail and start a fresh one after the mute:
                # a kept encoder would stamp its first packet after the gap with a pts
                # from before it, playing 13 ms of new audio at the old time.
                if self._audio_encoder is not None:
                    self._emit_audio_packets(self._audio_encoder.encode(None))
                    self._audio_encoder = None
                return
            gain = _NEAR_SILENT_GAIN
        if self._audio_encoder is None:
            self._audio_encoder = self._new_audio_encoder()
        pcm = render_audio(self._plan.number, j * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME, gain=gain)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = j * SAMPLES_PER_FRAME
        frame.time_base = _AUDIO_TIME_BASE
        self._emit_audio_packets(self._audio_encoder.encode(frame))

    def _emit_audio_packets(self, packets: list[Packet[Any]]) -> None:
        for packet in packets:
            if packet.pts is None:
                continue
            packet.time_base = _AUDIO_TIME_BASE
            due = self._start_at + float(packet.pts * _AUDIO_TIME_BASE)
            self._emit_audio(_Scheduled(packet, due))

    def _encode_video(self, i: int) -> None:
        seconds = i / self._plan.fps
        if any(w.covers(seconds) for w in self._plan.video_mutes):
            # The first frame after a mute must be decodable on its own.
            self._keyframe.set()
            return
        width, height = resolution_at(self._plan.schedule, seconds)
        if self._video_encoder is None or self._video_size != (width, height):
            self._video_encoder = self._new_video_encoder(width, height)
            self._video_size = (width, height)
        image = render_i420(self._plan.number, i, width, height, self._plan.fps)
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = i
        frame.time_base = self._video_time_base
        if i % self._plan.fps == 0 or self._keyframe.is_set():
            self._keyframe.clear()
            frame.pict_type = av.video.frame.PictureType.I
        for packet in self._video_encoder.encode(frame):
            if packet.pts is None:
                continue
            packet.time_base = self._video_time_base
            due = self._start_at + float(packet.pts * self._video_time_base)
            self._emit_video(_Scheduled(packet, due))

    def _new_video_encoder(self, width: int, height: int) -> av.VideoCodecContext:
        """A low-CPU realtime encoder; keyframes are forced every second, not by GOP."""
        plan = self._plan
        encoder = (
            av.CodecContext.create("libvpx", "w")
            if plan.codec == "VP8"
            else av.CodecContext.create("libx264", "w")
        )
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = self._video_time_base
        encoder.framerate = Fraction(plan.fps, 1)
        encoder.bit_rate = plan.video_bitrate
        encoder.gop_size = 10 * plan.fps
        encoder.thread_count = 1
        if plan.codec == "VP8":
            encoder.qmin = 4
            encoder.qmax = 56
            encoder.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "error-resilient": "1",
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
            }
        else:
            # Annex-B output (no global header) is what aiortc's H.264 packer splits.
            encoder.profile = "High" if plan.codec == "H264-high" else "Baseline"
            encoder.options = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "level": "31",
                "forced-idr": "1",
            }
        return encoder


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
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
        if fps < 1:
            raise ValueError(f"fps must be positive, got {fps}")
        steps = resolution_schedule or [(0.0, width, height)]
        self._plan = _MediaPlan(
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
        self.session_id = ""
        self.clock_start: float | None = None
        """Loop-clock instant of source time 0 (the first audio sample and video frame)."""
        self._pc: RTCPeerConnection | None = None
        self._worker: _MediaWorker | None = None
        self._tracks: dict[str, _PacketTrack] = {}
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
            await asyncio.wait_for(connected, self._connect_timeout)
        except TimeoutError:
            await self.stop()
            raise PublishError(f"not connected within {self._connect_timeout:g} s") from None
        except BaseException:
            await self.stop()
            raise

        self.clock_start = loop.time() + self._lead_s
        worker = _MediaWorker(
            self._plan,
            clock=loop.time,
            start_at=self.clock_start,
            lead_s=self._lead_s,
            emit_audio=self._emitter(loop, self._tracks["audio"]),
            emit_video=self._emitter(loop, self._tracks["video"]),
            keyframe=self._keyframe,
        )
        # A PLI or FIR from the SFU must reach the encoder, which aiortc does not own.
        transceivers["video"].sender._send_keyframe = self._keyframe.set  # type: ignore[method-assign]
        self._worker = worker
        worker.start()
        log.info(
            "participant.publishing",
            number=self.number,
            session=self.session_id,
            codec=self._plan.codec,
            fps=self._plan.fps,
        )

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
            track = _PacketTrack(kind, round(per_second * _QUEUE_SECONDS), on_drop)
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
        loop: asyncio.AbstractEventLoop, track: _PacketTrack
    ) -> Callable[[_Scheduled | None], None]:
        def emit(item: _Scheduled | None) -> None:
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
                await asyncio.wait_for(
                    self._client.close_tracks(self.session_id, list(self._mids.values())), 3.0
                )
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
