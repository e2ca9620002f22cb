"""One recording's local directory: the growing MP4, its upload journal, and who it is.

The spool is the only copy until the object is verified, so it is deleted only by the
uploader after verification. A live recorder holds an exclusive ``flock`` on it; a crash
releases the lock, which is how ``bot recover`` tells an orphan from a live recording.
It also owns the disk figures (its size, the free space under it) and so the check of
the disk caps against them; the uploader enforces that check while the recording grows.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from bot import __version__
from bot.config import OPAQUE_ID
from bot.manifest import Manifest
from bot.storage.journal import Journal, write_atomic

MEDIA_NAME = "recording.mp4"
INFO_NAME = "spool.json"
JOURNAL_NAME = "journal.json"
DRAFT_NAME = "manifest.draft.json"
LOCK_NAME = "lock"
TRAIL_SUFFIX = ".audit.jsonl"


def trail_path(spool_dir: Path, recording_id: str) -> Path:
    """Where a recording's audit trail is kept until it is stored: beside its spool, not
    in it, because it starts before the spool and must outlive the spool's deletion
    until the trail itself is stored."""
    return spool_dir / f"{recording_id}{TRAIL_SUFFIX}"


@dataclass(frozen=True)
class DiskLimit:
    """A disk cap the spool has reached, with the figures that show it."""

    cap: Literal["max_spool_bytes", "min_free_bytes"]
    bytes_spooled: int
    free_bytes: int


class SpoolInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    consultation_id: str
    recording_id: str
    object_key: str
    created_at: AwareDatetime
    recorder_version: str
    media_name: str = MEDIA_NAME
    """The file in the spool: the composite MP4, or one archived track (WebM, MP4)."""


class Spool:
    def __init__(self, directory: Path, info: SpoolInfo) -> None:
        self.directory = directory
        self.info = info
        self.media_path = directory / info.media_name
        self.journal_path = directory / JOURNAL_NAME
        self.draft_path = directory / DRAFT_NAME
        self.trail_path = trail_path(directory.parent, info.recording_id)
        self._lock_fd: int | None = None

    @classmethod
    def create(
        cls,
        spool_dir: Path,
        *,
        consultation_id: str,
        recording_id: str,
        object_key: str,
        media_name: str = MEDIA_NAME,
    ) -> Spool:
        for name, value in (("consultation_id", consultation_id), ("recording_id", recording_id)):
            if not OPAQUE_ID.match(value):
                raise ValueError(f"{name} must be an opaque id (1-64 of [A-Za-z0-9_-])")
        spool_dir.mkdir(parents=True, exist_ok=True)
        directory = spool_dir / recording_id
        directory.mkdir(mode=0o700)  # exclusive: two recorders never share a spool
        info = SpoolInfo(
            consultation_id=consultation_id,
            recording_id=recording_id,
            object_key=object_key,
            created_at=datetime.now(UTC),
            recorder_version=__version__,
            media_name=media_name,
        )
        write_atomic(directory / INFO_NAME, info.model_dump_json(indent=1).encode("utf-8"))
        (directory / media_name).touch(mode=0o600)
        spool = cls(directory, info)
        spool.try_lock()  # before `bot recover` at another recorder's start-up could see it
        return spool

    @classmethod
    def open(cls, directory: Path) -> Spool:
        info = SpoolInfo.model_validate_json((directory / INFO_NAME).read_bytes())
        return cls(directory, info)

    @classmethod
    def scan(cls, spool_dir: Path) -> list[Spool]:
        """Every spool under ``spool_dir`` (live or orphaned), oldest first."""
        if not spool_dir.is_dir():
            return []
        found = [cls.open(d) for d in spool_dir.iterdir() if (d / INFO_NAME).is_file()]
        return sorted(found, key=lambda s: s.info.created_at)

    @property
    def composite(self) -> bool:
        """The composite MP4 (every fragment starts at a keyframe), not an archived track."""
        return self.info.media_name == MEDIA_NAME

    def media_size(self) -> int:
        try:
            return self.media_path.stat().st_size
        except FileNotFoundError:
            return 0

    def free_bytes(self) -> int:
        """Free space for this spool's file system (what the recording can still use).

        Asked of the nearest existing directory: the spool itself is gone once verified.
        """
        where = self.directory
        while not where.exists() and where != where.parent:
            where = where.parent
        return shutil.disk_usage(where).free

    def disk_limit(self, *, max_spool_bytes: int, min_free_bytes: int) -> DiskLimit | None:
        """The cap the recording has reached (it may not grow any more), or None."""
        spooled = self.media_size()
        free = self.free_bytes()
        if spooled >= max_spool_bytes:
            return DiskLimit("max_spool_bytes", spooled, free)
        if free < min_free_bytes:
            return DiskLimit("min_free_bytes", spooled, free)
        return None

    def journal(self) -> Journal | None:
        return Journal.load(self.journal_path)

    def save_manifest_draft(self, manifest: Manifest) -> None:
        """Keep the recorder's latest manifest so ``bot recover`` can finish it after a crash."""
        write_atomic(self.draft_path, manifest.to_json())

    def manifest_draft(self) -> Manifest | None:
        try:
            return Manifest.from_json(self.draft_path.read_bytes())
        except FileNotFoundError:
            return None

    def try_lock(self) -> bool:
        """Take the spool for this process; False if another live process holds it."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def delete(self) -> None:
        """Remove the spool; only ever called once the object is verified."""
        self.unlock()
        shutil.rmtree(self.directory)
