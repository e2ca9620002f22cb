"""The ffmpeg contender's input: each participant's signal as a VP8 360p30 + Opus WebM.

Rendered from ``bot.synthetic.signal`` with the same encoder settings the synthetic
participant publishes with (libvpx realtime at 600 kb/s, Opus VoIP at 32 kb/s), so
ffmpeg decodes the same kind of stream the recorder receives over WebRTC.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from bot.synthetic.signal import SAMPLE_RATE, SAMPLES_PER_FRAME, render_audio, render_i420

FPS = 30
WIDTH, HEIGHT = 640, 360
VIDEO_BITRATE = 600_000
AUDIO_BITRATE = 32_000


def write_participant_input(path: Path, number: int, seconds: float) -> None:
    """Write ``seconds`` of participant ``number``'s signal; CPU-bound, call in a thread."""
    with av.open(str(path), mode="w", format="webm") as container:
        video = container.add_stream("libvpx", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = VIDEO_BITRATE
        video.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "error-resilient": "1",
            "g": str(FPS),
        }
        audio = container.add_stream("libopus", rate=SAMPLE_RATE)
        audio.layout, audio.format = "mono", "s16"
        audio.bit_rate = AUDIO_BITRATE
        audio.options = {"application": "voip"}

        frames = round(seconds * FPS)
        chunks = round(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)
        video_i = audio_j = 0
        while video_i < frames or audio_j < chunks:
            # Interleave by time so the muxer never buffers one stream far ahead.
            if audio_j < chunks and (
                video_i >= frames or audio_j * SAMPLES_PER_FRAME * FPS <= video_i * SAMPLE_RATE
            ):
                pcm = render_audio(number, audio_j * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME)
                aframe = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                aframe.sample_rate = SAMPLE_RATE
                aframe.pts = audio_j * SAMPLES_PER_FRAME
                aframe.time_base = Fraction(1, SAMPLE_RATE)
                container.mux(audio.encode(aframe))
                audio_j += 1
            else:
                image = render_i420(number, video_i, WIDTH, HEIGHT, FPS)
                vframe = av.VideoFrame.from_ndarray(image, format="yuv420p")
                vframe.pts = video_i
                vframe.time_base = Fraction(1, FPS)
                container.mux(video.encode(vframe))
                video_i += 1
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
