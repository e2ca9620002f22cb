"""The upload journal: enough on disk after every part to resume after a crash.

Written with fsync and an atomic rename so a crash leaves either the old or the new
journal, never half of one. It is a hint, not the truth: on resume the store's ListParts
is the authority, and every listed part is checked against the spool's bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PartRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int = Field(ge=1)
    size: int = Field(ge=0)
    etag: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str
    object_key: str
    part_size: int
    upload_id: str | None = None
    parts: list[PartRecord] = Field(default_factory=list)
    completed: bool = False

    @property
    def uploaded_bytes(self) -> int:
        return sum(p.size for p in self.parts)

    def save(self, path: Path) -> None:
        write_atomic(path, self.model_dump_json(indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Replace ``path`` with ``data`` (or its chunks) durably: temp file, fsync, rename,
    fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                out.writelines(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
