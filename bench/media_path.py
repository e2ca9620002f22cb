"""The recorder's media path on ffmpeg's input files: the composite without the network.

The comparison's recorder figure covers the whole process (start-up, ICE/DTLS, SRTP,
jitter buffers, the decoder threads, the media thread, the custody and the storage copy)
while ffmpeg only decodes files, composes and encodes. Run as a child process on the
same two WebM files as ffmpeg, this is the recorder's own composite alone: the files'
packets decoded as aiortc decodes them (libvpx; libopus to 48 kHz stereo s16), placed on
the timeline at their timestamps, then ``MediaPipeline`` with the recording's defaults
(grid, captions, mix and speaker tracks, x264 and AAC) driven offline, as fast as it
can. Set against ffmpeg it tells the composite's cost apart from the receive side's.

    python -m bench.media_path --input a.webm --input b.webm --output out.mp4 --seconds 60
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import av

from bot.config import RecordingSettings
from bot.media.report import SlotInfo
from bot.media.withholding import Withholding
from bot.recording.output import composite_writer, open_pipeline
from bot.timeline import Timeline

ROLES = ("clinician", "patient")
"""The bench call's roles, in the publishers' order (``bench.runners``)."""
SUBMIT_EVERY = 0.5
"""Timeline seconds of input submitted between two ``write_until`` calls: under the
pipeline's catch-up threshold (1 s), so no picture is written as a repeat of the last."""


def _packets(slot: int, path: Path) -> Iterator[tuple[float, int, str, bytes]]:
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None and packet.size:
                kind = packet.stream.type
                yield float(packet.pts * packet.time_base), slot, kind, bytes(packet)


def _decoders(count: int) -> dict[str, list[av.CodecContext]]:
    """aiortc's decoders (``aiortc.codecs.vpx``, ``aiortc.codecs.opus``)."""
    audio: list[av.CodecContext] = []
    for _ in range(count):
        opus = av.AudioCodecContext.create("libopus", "r")
        opus.format, opus.layout, opus.sample_rate = "s16", "stereo", 48_000
        audio.append(opus)
    return {
        "video": [av.CodecContext.create("libvpx", "r") for _ in range(count)],
        "audio": audio,
    }


def compose(inputs: Sequence[Path], output: Path, seconds: float) -> tuple[int, int]:
    """Compose ``seconds`` of ``inputs`` into ``output``: the video frames written, and how
    many of them repeated the previous picture (none, unless the pacing is wrong)."""
    rec = RecordingSettings()
    slots = [SlotInfo(f"p{n}", ROLES[(n - 1) % len(ROLES)]) for n in range(1, len(inputs) + 1)]
    writer = composite_writer(rec, output, [slot.role for slot in slots])
    pipeline = open_pipeline(rec, writer, slots, Timeline(time.time()), Withholding())
    decoders = _decoders(len(inputs))
    written_to = 0.0
    streams = (_packets(slot, path) for slot, path in enumerate(inputs))
    for t, slot, kind, data in heapq.merge(*streams):
        if t >= seconds:
            break
        for frame in decoders[kind][slot].decode(av.Packet(data)):
            pipeline.submit(slot, t, frame)
        if t - written_to >= SUBMIT_EVERY:
            # Everything placed before ``t`` has been submitted: the rest of the inputs
            # come later in time, as a live call's do after the recorder's latency.
            pipeline.write_until(t - rec.latency)
            written_to = t
    pipeline.write_until(seconds - SUBMIT_EVERY)
    report = pipeline.close_at(seconds)
    return writer.video_frames, report.video_frames_repeated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media_path")
    parser.add_argument("--input", type=Path, action="append", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    frames, repeated = compose(args.input, args.output, args.seconds)
    report = {"video_frames": frames, "repeated": repeated, "media_seconds": args.seconds}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
