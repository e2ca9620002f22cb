"""Hash chains: evidence that bytes and events came in this order and nothing was removed.

Two chains, one rule (``link``: ``h_n = SHA-256(h_{n-1} || item_n)``, from ``GENESIS``):

- the **fragment chain**: as the MP4 grows, each stretch of bytes the writer adds (a
  fragment, ``moof`` + ``mdat``, or the header before the first) is hashed and linked.
  Each link goes into the audit trail with its offset and size, so a stored object can be
  checked stretch by stretch: a flipped byte, a removed or a truncated fragment each
  break it at a named place, and a recovered recording shows it is a prefix of what was
  written;
- the **audit chain**: every audit line carries ``prev``, the SHA-256 of the line before
  it as written, so an edited or removed line breaks the next one.

Hashing happens where the bytes are anyway (the media thread has just written them and
the page cache still holds them); a link is a few hundred nanoseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

GENESIS: Final = "0" * 64
"""The link before the first: 32 zero bytes, hex."""
READ_CHUNK: Final = 1 << 20


def link(previous: str, item_sha256: str) -> str:
    """The next chain value after ``previous`` for an item whose SHA-256 is given (hex)."""
    return hashlib.sha256(bytes.fromhex(previous) + bytes.fromhex(item_sha256)).hexdigest()


def line_hash(line: bytes) -> str:
    """The hash the next audit line carries as ``prev``: of the line's bytes, newline
    excluded."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(frozen=True)
class FragmentLink:
    """One stretch of the recording's bytes and the chain value after it."""

    index: int
    offset: int
    size: int
    sha256: str
    chain: str

    def as_fields(self) -> dict[str, Any]:
        """The audit line's fields (event ``fragment.written``)."""
        return {
            "index": self.index,
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
            "chain": self.chain,
        }


FRAGMENT_EVENT: Final = "fragment.written"


class FragmentChain:
    """Follows a growing file: each ``advance`` hashes what was appended since the last.

    Owned by whoever writes the file (the media thread calls ``advance`` right after each
    fragment is flushed); nothing else reads its state until the file is complete.
    """

    def __init__(self, path: Path, proven: ChainCheck | None = None) -> None:
        """A chain from the start of ``path``, or continuing after the ``proven`` prefix
        (a crashed recording's trail, checked against the file by ``check_fragments``)."""
        self._path = path
        self._offset = proven.covered if proven else 0
        self._count = proven.links if proven else 0
        self.head = proven.head if proven else GENESIS

    @property
    def count(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Bytes covered so far."""
        return self._offset

    def advance(self) -> FragmentLink | None:
        """Hash and link the bytes appended since the last call; None if there are none."""
        digest = hashlib.sha256()
        start = self._offset
        with self._path.open("rb") as source:
            source.seek(start)
            while chunk := source.read(READ_CHUNK):
                digest.update(chunk)
                self._offset += len(chunk)
        if self._offset == start:
            return None
        sha = digest.hexdigest()
        self.head = link(self.head, sha)
        made = FragmentLink(self._count, start, self._offset - start, sha, self.head)
        self._count += 1
        return made


@dataclass(frozen=True)
class ChainCheck:
    """How far a chain holds: ``links`` items covering ``covered`` bytes (or lines) up to
    ``head``; ``problem`` says where and how it broke, None if it did not."""

    links: int
    covered: int
    head: str
    problem: str | None = None


def check_fragments(source: BinaryIO, links: Iterable[FragmentLink]) -> ChainCheck:
    """Recompute the fragment chain over ``source`` as the trail recorded it.

    Stops at the first fragment that is missing, shorter than recorded, or different,
    naming it and its byte range; bytes after the last recorded fragment are the caller's
    to judge (expected after a crash, not in a sealed record).
    """
    head, offset, count = GENESIS, 0, 0
    for recorded in links:
        held = ChainCheck(count, offset, head)
        if recorded.index != count or recorded.offset != offset:
            return _broken(
                held,
                f"fragment {count}: the trail records fragment "
                f"{recorded.index} at byte {recorded.offset} next (a line is missing)",
            )
        source.seek(offset)
        digest, got = hashlib.sha256(), 0
        while got < recorded.size:
            chunk = source.read(min(READ_CHUNK, recorded.size - got))
            if not chunk:
                return _broken(
                    held,
                    f"fragment {count} (bytes {offset}-{offset + recorded.size}) "
                    f"is cut short: the object ends at byte {offset + got}",
                )
            digest.update(chunk)
            got += len(chunk)
        if digest.hexdigest() != recorded.sha256:
            return _broken(
                held,
                f"fragment {count} (bytes {offset}-{offset + recorded.size}) "
                "differs from what was written",
            )
        head = link(head, recorded.sha256)
        if head != recorded.chain:
            return _broken(held, f"fragment {count}: the recorded chain value does not follow")
        count, offset = count + 1, offset + recorded.size
    return ChainCheck(count, offset, head)


def check_trail(lines: Iterable[bytes]) -> ChainCheck:
    """Follow the audit chain: each line's ``prev`` is the hash of the one before and its
    ``seq`` its position. ``covered`` counts lines."""
    head, count = GENESIS, 0
    for raw in lines:
        held = ChainCheck(count, count, head)
        try:
            line = json.loads(raw)
        except ValueError:
            return _broken(held, f"audit line {count + 1} is not JSON (torn or edited)")
        if not isinstance(line, dict) or line.get("prev") != head:
            return _broken(
                held,
                f"audit line {count + 1} does not follow line {count}: "
                "a line before it was edited or removed",
            )
        if line.get("seq") != count:
            return _broken(held, f"audit line {count + 1} says it is line {line.get('seq')}")
        head, count = line_hash(raw), count + 1
    return ChainCheck(count, count, head)


def _broken(held: ChainCheck, problem: str) -> ChainCheck:
    return ChainCheck(held.links, held.covered, held.head, problem)


def read_trail(path: Path) -> list[bytes]:
    """An audit trail's lines as written (newlines stripped; a torn last line kept)."""
    return [line for line in path.read_bytes().split(b"\n") if line]


def fragments_in(lines: Iterable[bytes]) -> Iterator[FragmentLink]:
    """The fragment links an audit trail records, in order; unreadable lines skipped (the
    audit chain check reports them)."""
    for raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == FRAGMENT_EVENT:
            try:
                yield FragmentLink(
                    int(line["index"]),
                    int(line["offset"]),
                    int(line["size"]),
                    str(line["sha256"]),
                    str(line["chain"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
