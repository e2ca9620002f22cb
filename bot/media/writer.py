"""The fragmented MP4: H.264 video, a mixed audio track, and one audio track per speaker.

Fragmented (``frag_keyframe+empty_moov+default_base_moof``) with a keyframe every
``keyframe_seconds``: every fragment is playable on its own, so a crash loses at most the
fragment being written, and the spool can be uploaded while it grows. ``flush_packets``
pushes each fragment to the file as soon as it is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from bot.media.mixer import Samples
from bot.media.report import SAMPLE_RATE

AUDIO_FRAME_SIZE = {"aac": 1024, "opus": 960}
AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
_AUDIO_ENCODER = {"aac": "aac", "opus": "libopus"}


class Mp4Writer:
    """Owns the PyAV container; used from the media thread only."""

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        fps: int,
        video_bitrate: int,
        keyframe_seconds: float,
        audio_codec: str,
        audio_bitrate: int,
        speaker_titles: Sequence[str],
        preset: str = "veryfast",
        encoder_threads: int = 1,
        on_fragment: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.audio_frame_size = AUDIO_FRAME_SIZE[audio_codec]
        self._on_fragment = on_fragment
        self._container = av.open(
            str(path),
            mode="w",
            format="mp4",
            options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "flush_packets": "1",
            },
        )
        self._video_time_base = Fraction(1, fps)
        self._video = self._add_video(
            width=width,
            height=height,
            fps=fps,
            bitrate=video_bitrate,
            keyframe_seconds=keyframe_seconds,
            preset=preset,
            threads=encoder_threads,
        )
        self._audio = [
            self._add_audio(audio_codec, audio_bitrate, title, default=index == 0)
            for index, title in enumerate(["mix", *speaker_titles])
        ]
        self._audio_positions = [0] * len(self._audio)
        self.video_frames = 0
        self.bytes_written = 0

    def _add_video(
        self,
        *,
        width: int,
        height: int,
        fps: int,
        bitrate: int,
        keyframe_seconds: float,
        preset: str,
        threads: int,
    ) -> av.VideoStream:
        """H.264 High with a keyframe exactly every ``keyframe_seconds`` (each starts a
        fragment) and no B-frames: frames leave the encoder as soon as they are written."""
        keyint = max(1, round(fps * keyframe_seconds))
        video = self._container.add_stream("libx264", rate=fps)
        assert isinstance(video, av.VideoStream)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.bit_rate = bitrate
        video.codec_context.time_base = self._video_time_base
        video.options = {
            "preset": preset,
            "tune": "zerolatency",
            "profile": "high",
            "g": str(keyint),
            "keyint_min": str(keyint),
            "sc_threshold": "0",
            "bf": "0",
        }
        # x264's sliced threads cost ~20% more CPU for the same frames; one thread keeps a
        # 720p30 composite at about a fifth of a core, and the decoders run on their own.
        video.codec_context.thread_count = threads
        return video

    def _add_audio(self, codec: str, bitrate: int, title: str, *, default: bool) -> av.AudioStream:
        """One mono track named ``title``; players pick the ``default`` one (the mix)."""
        stream = self._container.add_stream(_AUDIO_ENCODER[codec], rate=SAMPLE_RATE)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        if codec == "aac":
            # Half the CPU of the default "twoloop" search, which its author found no
            # better above low bit rates; three tracks are encoded for every second.
            stream.options = {"aac_coder": "fast"}
        stream.metadata["title"] = title
        stream.metadata["handler_name"] = title
        if not default:
            stream.disposition = av.stream.Disposition(0)
        return stream

    def write_video(self, frame: av.VideoFrame) -> None:
        frame.pts = self.video_frames
        frame.time_base = self._video_time_base
        self.video_frames += 1
        self._mux(self._video.encode(frame), keyframes=True)

    def write_audio(self, track: int, samples: Samples) -> None:
        """Track 0 is the mix; 1..n the speakers in the order given."""
        stream = self._audio[track]
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.float32, copy=False), format="fltp", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._audio_positions[track]
        frame.time_base = AUDIO_TIME_BASE
        self._audio_positions[track] += samples.size
        self._mux(stream.encode(frame), keyframes=False)

    def close(self) -> None:
        """Flush every encoder and write the last fragment; the file is then complete."""
        self._mux(self._video.encode(None), keyframes=False)
        for stream in self._audio:
            self._mux(stream.encode(None), keyframes=False)
        self._container.close()
        if self._on_fragment is not None:
            self._on_fragment()

    def _mux(self, packets: Sequence[av.Packet[Any]], *, keyframes: bool) -> None:
        for packet in packets:
            self._container.mux(packet)
            if keyframes and packet.is_keyframe and self._on_fragment is not None:
                # A video keyframe starts a new fragment: the previous one is on disk now.
                self._on_fragment()
