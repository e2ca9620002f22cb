"""The test signal as the files Chromium's fake capture devices play.

Chromium's ``--use-file-for-fake-video-capture`` takes a Y4M file and
``--use-file-for-fake-audio-capture`` a WAV file; both loop when they end. The frame
index in the barcode restarts at 0 on each loop, which the recording analysis cannot tell
from a jump back in time, so the files are made longer than any test's call: a test
measures only before the first loop.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

from bot.synthetic.signal import SAMPLE_RATE, render_audio, render_i420

WIDTH = 640
HEIGHT = 360
FPS = 30


@dataclass(frozen=True)
class FakeMedia:
    """One participant's capture files."""

    number: int
    video: Path
    audio: Path
    duration_s: float
    width: int = WIDTH
    height: int = HEIGHT
    fps: int = FPS


def write_fake_media(
    directory: Path,
    number: int,
    duration_s: float,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    fps: int = FPS,
) -> FakeMedia:
    """Write participant ``number``'s signal as ``p<n>.y4m`` and ``p<n>.wav``.

    Blocking file I/O (about 10 MB per second of 640x360 video): call it in a worker
    thread from async code. A larger camera (``width``, ``height``) lets Chrome send
    more simulcast layers: it sends two at 360p, three from 540p. ``fps``: the camera's
    rate (25 against the recorder's 30 lets the analysis time video to under a frame).
    """
    if duration_s <= 0:
        raise ValueError("fake media needs a positive duration")
    directory.mkdir(parents=True, exist_ok=True)
    video = directory / f"p{number}.y4m"
    audio = directory / f"p{number}.wav"
    frames = round(duration_s * fps)
    with video.open("wb") as out:
        # C420mpeg2: 4:2:0 with the chroma siting our I420 planes use; limited range.
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420mpeg2\n".encode())
        for index in range(frames):
            out.write(b"FRAME\n")
            out.write(render_i420(number, index, width, height, fps).tobytes())
    samples = frames * SAMPLE_RATE // fps
    with wave.open(str(audio), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        chunk = SAMPLE_RATE
        for first in range(0, samples, chunk):
            wav.writeframes(render_audio(number, first, min(chunk, samples - first)).tobytes())
    return FakeMedia(
        number=number,
        video=video,
        audio=audio,
        duration_s=frames / fps,
        width=width,
        height=height,
        fps=fps,
    )
