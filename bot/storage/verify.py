"""Is the stored object the spool, and does it play? Checked before the spool is deleted.

Cost stays flat with the length of the recording: the SHA-256 was computed while the
parts were uploaded, the decode probe reads only the start (init segment and first
fragment) and the last complete fragment with ranged GETs, and in "ends" mode the bytes
in between are proven by the server's per-part MD5s (each checked by the server against
the Content-MD5 we sent, and chained into the multipart ETag).

The composite is a fragmented MP4 whose fragments each start at a keyframe, so its end
decodes on its own. An archived track (``bot.recording.archive``: WebM clusters, or MP4
fragments cut every second) starts at a keyframe but its last pieces need not: their
end is proven to demux and its keyframes, if any, to decode.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av

from bot.manifest import Verification
from bot.storage.boxes import CLUSTER, is_matroska, segment_elements, top_level_boxes
from bot.storage.errors import StorageError
from bot.storage.journal import PartRecord
from bot.storage.stores import ObjectStore


@dataclass(frozen=True)
class Layout:
    init_end: int
    first_fragment_end: int
    last_fragment: tuple[int, int]
    end_span: tuple[int, int]
    """The last two complete fragments: what the end probe decodes. The last one alone
    may hold only an encoder flush, which decodes to nothing without what came before."""
    complete_end: int
    format: str = "mp4"
    """The container, as FFmpeg names its demuxer ("mp4", "matroska")."""
    keyframe_pieces: bool = True
    """Every fragment starts at a keyframe (the composite), so the end decodes alone."""


def fragment_layout(path: Path, size: int, *, keyframe_pieces: bool = True) -> Layout:
    """Where the init segment, the first and the last fragments (or clusters) are;
    ``keyframe_pieces``: whether the writer starts every fragment at a keyframe."""
    if is_matroska(path):
        return _cluster_layout(path, size)
    boxes = top_level_boxes(path, size)
    moov = next((b for b in boxes if b.kind == b"moov"), None)
    if moov is None:
        raise StorageError(
            "recording has no init segment (moov); nothing playable was written",
            kind="integrity",
            permanent=True,
        )
    fragments = [
        (moof.start, mdat.end)
        for moof, mdat in itertools.pairwise(boxes)
        if moof.kind == b"moof" and mdat.kind == b"mdat"
    ]
    if not fragments:
        raise StorageError("recording has no complete fragment", kind="integrity", permanent=True)
    end_span = (fragments[max(0, len(fragments) - 2)][0], fragments[-1][1])
    return Layout(
        moov.end, fragments[0][1], fragments[-1], end_span, boxes[-1].end, "mp4", keyframe_pieces
    )


def _cluster_layout(path: Path, size: int) -> Layout:
    elements = segment_elements(path, size)
    clusters = [(e.start, e.end) for e in elements if e.kind == CLUSTER]
    if not clusters:
        raise StorageError("recording has no complete cluster", kind="integrity", permanent=True)
    end_span = (clusters[max(0, len(clusters) - 2)][0], clusters[-1][1])
    return Layout(
        clusters[0][0], clusters[0][1], clusters[-1], end_span, elements[-1].end, "matroska", False
    )


@dataclass(frozen=True)
class Probe:
    video_frames: int
    audio_frames: int


def decode_probe(
    data: bytes, *, every_stream: bool = True, fmt: str = "mp4", keyframes_only: bool = False
) -> Probe:
    """Decode every packet of a (partial) fragmented MP4 or Matroska file.

    Fails if nothing decodes, or (``every_stream``) if a stream yields nothing: the last
    fragment may legitimately hold only one stream's final packets (encoder flushes).
    ``keyframes_only``: a piece that need not start at a keyframe; only its keyframes
    (and audio) are decoded, and its other packets must demux.
    """
    video = audio = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            streams = [s for s in container.streams if s.type in ("video", "audio")]
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue
                if keyframes_only and packet.stream.type == "video" and not packet.is_keyframe:
                    video += 1  # demuxed whole; decoding it needs the frames before it
                    continue
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        video += 1
                    else:
                        audio += 1
            kinds = {s.type for s in streams}
    except av.FFmpegError as exc:
        raise StorageError(
            f"stored recording does not decode: {exc}", kind="integrity", permanent=True
        ) from None
    missing = ("video" in kinds and not video) or ("audio" in kinds and not audio)
    if not kinds or not (video or audio) or (every_stream and missing):
        raise StorageError(
            "stored recording decodes to no frames", kind="integrity", permanent=True
        )
    return Probe(video, audio)


def multipart_etag(parts: list[PartRecord]) -> str:
    digest = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


def _integrity(message: str) -> StorageError:
    return StorageError(message, kind="integrity", permanent=True)


def verify_object(
    store: ObjectStore,
    key: str,
    *,
    media_path: Path,
    size: int,
    sha256: str,
    parts: list[PartRecord],
    full_read: bool,
    keyframe_pieces: bool = True,
) -> Verification:
    """Raise ``StorageError`` unless the stored object is exactly the spool and decodes."""
    began = time.monotonic()
    head = store.head(key)
    if head is None:
        raise _integrity(f"{store.describe(key)} is missing after completion")
    stored_size, etag = head
    if stored_size != size:
        raise _integrity(f"stored size {stored_size} != spool size {size}")
    etag_result: str = "not comparable"
    if etag is not None and "-" in etag and not store.encrypted:
        if etag != multipart_etag(parts):
            raise _integrity(f"stored ETag {etag} does not match the uploaded parts")
        etag_result = "match"
    if full_read:
        digest = hashlib.sha256()
        for chunk in store.iter_object(key):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise _integrity("stored object's SHA-256 differs from the spool's")
    elif etag_result != "match":
        raise _integrity("cannot prove the bytes without a full read; set verify_read = 'full'")

    layout = fragment_layout(media_path, size, keyframe_pieces=keyframe_pieces)
    with media_path.open("rb") as src:
        local_head = src.read(layout.first_fragment_end)
        last_start, last_end = layout.end_span
        src.seek(last_start)
        local_tail = src.read(last_end - last_start)
    remote_head = store.read_range(key, 0, layout.first_fragment_end)
    remote_tail = store.read_range(key, last_start, last_end)
    if remote_head != local_head or remote_tail != local_tail:
        raise _integrity("stored start or end differs from the spool")
    decode_probe(remote_head, fmt=layout.format)
    decode_probe(
        remote_head[: layout.init_end] + remote_tail,
        every_stream=False,
        fmt=layout.format,
        keyframes_only=not layout.keyframe_pieces,
    )
    return Verification(
        size_ok=True,
        etag="match" if etag_result == "match" else "not comparable",
        sha256_method="full-read" if full_read else "part-md5-chain",
        decode_start_ok=True,
        decode_end_ok=True,
        verified_at=datetime.now(UTC),
        seconds=round(time.monotonic() - began, 3),
    )
