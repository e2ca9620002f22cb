"""The top-level pieces of a recording file, read from their headers (a seek per piece):
an MP4's boxes, or the elements inside a Matroska (WebM) segment."""

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


MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"
"""The EBML header's element ID: every Matroska and WebM file starts with it."""
_SEGMENT = b"\x18\x53\x80\x67"
CLUSTER = b"\x1f\x43\xb6\x75"


def is_matroska(path: Path) -> bool:
    with path.open("rb") as src:
        return src.read(4) == MATROSKA_MAGIC


def _vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``at``: ``(value, length)``; value -1 for an
    unknown size (all value bits set). None if cut short or invalid."""
    if at >= len(data) or data[at] == 0:
        return None
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        return None
    value = int.from_bytes(data[at : at + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


def segment_elements(path: Path, size: int | None = None) -> list[Box]:
    """The elements inside a Matroska file's segment (SeekHead, Info, Tracks, Clusters,
    Cues ...), each with its 4-byte ID as ``kind``. The segment's own size may be
    unknown (a file cut short by a crash); an element cut short is left out."""
    size = path.stat().st_size if size is None else size
    elements: list[Box] = []
    with path.open("rb") as src:
        offset = 0
        inside = False
        while offset < size:
            src.seek(offset)
            header = src.read(12)
            element = _vint(header, 0, keep_marker=True)
            length = element and _vint(header, element[1], keep_marker=False)
            if element is None or not length:
                break
            ident = header[: element[1]]
            body = offset + element[1] + length[1]
            if not inside and ident == _SEGMENT:
                inside, offset = True, body
                continue
            end = size if length[0] < 0 else body + length[0]
            if end > size:
                break
            if inside:
                elements.append(Box(ident, offset, end))
            offset = end
    return elements
