"""What a decoder thread's FFmpeg threads cost: aiortc's decoders as the recorder makes
them (``bot.rtc.aiortc_compat.decode_in_one_thread``: no FFmpeg threads) against PyAV's
default (on two cores an H.264 decoder starts two slice threads, a VP8 decoder one).

Usage: ``.venv/bin/python -m bench.decoder_threads [--frames 300] [--runs 5] [--slices 1]``

A synthetic participant's 640x360 picture (``bot.synthetic.signal``) is encoded once per
codec at 30 fps; H.264 in ``--slices`` slices per picture (1 with packetization mode 1;
a sender in mode 0 cuts a picture into a slice per packet). Then each way decodes the
whole stream with a fresh aiortc decoder, alternately, ``runs`` times; the CPU (user +
system of this process, every thread) per frame is reported as medians with their ratio,
with the threads each way started. Decoding only: no network, no event loop.
"""

from __future__ import annotations

import argparse
import fractions
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

import aiortc.rtcrtpreceiver
import av
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame

from bench.measure import machine_summary, median
from bot.rtc.aiortc_compat import decode_in_one_thread
from bot.synthetic.signal import render_i420

WIDTH, HEIGHT, FPS = 640, 360, 30
ENCODERS = {"VP8": "libvpx", "H264": "libx264"}


def encode(codec: str, frames: int, slices: int) -> list[bytes]:
    encoder: Any = av.CodecContext.create(ENCODERS[codec], "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.bit_rate = 1_000_000
    encoder.thread_count = 1  # x264's sliced threads would cut pictures into slices
    if codec == "H264":
        encoder.options = {"tune": "zerolatency", "preset": "veryfast", "slices": str(slices)}
    pictures: list[bytes] = []
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(
            render_i420(1, index, WIDTH, HEIGHT, FPS), format="yuv420p"
        )
        frame.pts = index
        pictures += [bytes(p) for p in encoder.encode(frame)]
    return pictures + [bytes(p) for p in encoder.encode(None)]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def decode_all(
    make_decoder: Callable[[Any], Any], codec: str, pictures: list[bytes]
) -> tuple[int, float, int]:
    """Frames decoded, the CPU seconds they took, and the threads the decoder started."""
    decoder = make_decoder(RTCRtpCodecParameters(mimeType=f"video/{codec}", clockRate=90000))
    before, start = threads(), cpu_seconds()
    decoded = 0
    started = 0
    for index, picture in enumerate(pictures):
        decoded += len(decoder.decode(JitterFrame(data=picture, timestamp=3000 * index)))
        if index == 0:
            started = threads() - before
    return decoded, cpu_seconds() - start, started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.decoder_threads", description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=1, help="H.264 slices per picture")
    args = parser.parse_args(argv)
    decode_in_one_thread()
    ways: dict[str, Callable[[Any], Any]] = {
        "one thread (recorder)": aiortc.rtcrtpreceiver.get_decoder,  # type: ignore[attr-defined]
        "PyAV default": get_decoder,
    }
    print(machine_summary())
    print(f"H.264 in {args.slices} slice(s) per picture")
    print(f"{'codec':6s} {'decoder':22s} {'threads':>7s} {'CPU ms/frame':>13s}  vs default")
    for codec in ENCODERS:
        pictures = encode(codec, args.frames, args.slices)
        per_frame: dict[str, list[float]] = {way: [] for way in ways}
        started: dict[str, int] = {}
        for _ in range(args.runs):
            for way, make_decoder in ways.items():
                decoded, seconds, started[way] = decode_all(make_decoder, codec, pictures)
                if decoded == 0:
                    raise RuntimeError(f"{codec}, {way}: nothing decoded")
                per_frame[way].append(seconds / decoded)
        baseline = median(per_frame["PyAV default"])
        for way in ways:
            figure = median(per_frame[way])
            print(
                f"{codec:6s} {way:22s} {started[way]:7d} {figure * 1000:13.3f}"
                f"  {figure / baseline:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
