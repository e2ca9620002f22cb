"""What is in a recording, read back with PyAV: the check a person runs on a file."""

from __future__ import annotations

from pathlib import Path

import av


def summarize(path: Path) -> str:
    """One line: duration, streams, size, fragments."""
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / av.time_base
        streams = []
        for stream in container.streams:
            if isinstance(stream, av.VideoStream):
                ctx = stream.codec_context
                rate = stream.guessed_rate or stream.average_rate
                streams.append(f"video {ctx.name} {ctx.width}x{ctx.height}@{rate}")
            elif isinstance(stream, av.AudioStream):
                label = stream.metadata.get("handler_name", "")
                streams.append(f"audio {stream.codec_context.name} {label}".rstrip())
    size = path.stat().st_size
    fragments = _count_boxes(path, b"moof")
    return f"{path}: {duration:.2f}s, {size / 1e6:.2f} MB, {fragments} fragments; " + "; ".join(
        streams
    )


def inspect_file(path: Path) -> str:
    return summarize(path)


def _count_boxes(path: Path, box: bytes) -> int:
    """Count top-level MP4 boxes of one type without loading the file."""
    count = 0
    with path.open("rb") as f:
        while header := f.read(8):
            if len(header) < 8:
                break
            size = int.from_bytes(header[:4], "big")
            if size == 1:
                size = int.from_bytes(f.read(8), "big")
                f.seek(size - 16, 1)
            elif size == 0:
                break
            else:
                f.seek(size - 8, 1)
            count += header[4:8] == box
    return count
