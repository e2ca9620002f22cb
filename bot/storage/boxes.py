"""The top-level boxes of an MP4 file, read from their headers (a seek per box)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Box:
    kind: bytes
    start: int
    end: int


def top_level_boxes(path: Path, size: int | None = None) -> list[Box]:
    """Walk the file's top-level boxes without reading their bodies.

    A box cut short by a crash is left out: the file's usable part ends before it.
    ``size`` limits the walk to the file's first bytes (default: the whole file).
    """
    size = path.stat().st_size if size is None else size
    boxes = []
    with path.open("rb") as src:
        offset = 0
        while offset + 8 <= size:
            src.seek(offset)
            header = src.read(16)
            length, kind = struct.unpack(">I4s", header[:8])
            if length == 1 and len(header) == 16:
                length = struct.unpack(">Q", header[8:16])[0]
            elif length == 0:
                length = size - offset
            if length < 8 or offset + length > size:
                break
            boxes.append(Box(kind, offset, offset + length))
            offset += length
    return boxes
