"""The synthetic participant's media: rendered and encoded ahead of time in a thread,
released to aiortc at the scheduled instant.

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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from bot.synthetic.signal import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    ResolutionStep,
    render_audio,
    render_i420,
    resolution_at,
)

log = structlog.get_logger("bot.synthetic.participant")

_AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
_AUDIO_FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE
_NEAR_SILENT_GAIN = 0.001


@dataclass(frozen=True)
class MuteWindow:
    """Source-time interval [start_s, end_s) during which a medium sends nothing."""

    start_s: float
    end_s: float

    def covers(self, seconds: float) -> bool:
        return self.start_s <= seconds < self.end_s


@dataclass(frozen=True)
class Scheduled:
    packet: Packet[Any]
    due: float
    """Loop-clock instant at which the packet is handed to the sender."""


class PacketTrack(MediaStreamTrack):
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
        self._queue: asyncio.Queue[Scheduled | None] = asyncio.Queue(capacity)

    def offer(self, item: Scheduled | None) -> None:
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
class MediaPlan:
    number: int
    fps: int
    codec: str
    video_bitrate: int
    schedule: tuple[ResolutionStep, ...]
    audio_mutes: tuple[MuteWindow, ...]
    video_mutes: tuple[MuteWindow, ...]
    near_silent_mute: bool


Seal = Callable[[bytes, str], bytes]
"""Encrypts an encoded frame of a kind ("audio", "video") before it is packetized, as an
end-to-end encrypting app's encoded-frame transform does (tests of encrypted calls)."""


class MediaWorker:
    """Renders and encodes audio and video in a thread, ``lead_s`` ahead of schedule."""

    def __init__(
        self,
        plan: MediaPlan,
        *,
        clock: Callable[[], float],
        start_at: float,
        lead_s: float,
        emit_audio: Callable[[Scheduled | None], None],
        emit_video: Callable[[Scheduled | None], None],
        keyframe: threading.Event,
        seal: Seal | None = None,
    ) -> None:
        self._plan = plan
        self._seal = seal
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
            self._emit_audio(Scheduled(self._sealed(packet, "audio"), due))

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
            self._emit_video(Scheduled(self._sealed(packet, "video"), due))

    def _sealed(self, packet: Packet[Any], kind: str) -> Packet[Any]:
        """The packet as an end-to-end encrypting sender would send it (``seal``)."""
        if self._seal is None:
            return packet
        sealed: Packet[Any] = av.Packet(self._seal(bytes(packet), kind))
        sealed.pts, sealed.dts, sealed.time_base = packet.pts, packet.dts, packet.time_base
        return sealed

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
