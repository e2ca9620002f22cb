"""What the review page reads from the store: which recordings it holds, and one record.

A recording is listed by its manifest (``<key>.manifest.json``): the manifest is what
makes an object a record, and it carries the opaque ids and dates the list shows. The
stores have no listing call of their own (the recorder never needs one), so listing is
done here: a paginated ``ListObjectsV2`` under the key template's fixed prefix on S3, a
walk of the folder for the local backend (which also holds the demo's copies outside the
prefix). Manifests are immutable once written and are cached by their modification time.

Keys come back from the browser, so every key is checked before it reaches a store: only
the characters object keys are made of, no ``.``-led segment (so no ``..``, no
``.uploads``), and a manifest must exist beside it. Everything here blocks (boto3, disk);
the server calls it from a thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from bot.config import StorageSettings
from bot.custody.chain import ChainCheck, check_trail
from bot.manifest import Manifest
from bot.storage import StorageError, audit_key, fhir_key, manifest_key, signature_key
from bot.storage.keys import MANIFEST_SUFFIX, key_prefix
from bot.storage.local_store import LocalStore
from bot.storage.s3_store import S3Store

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
MAX_KEY = 1024
"""S3's own limit on a key's length."""
MAX_SIDE_FILE = 64 * 1024 * 1024
"""A manifest or audit trail larger than this is not read into memory (a two-hour
recording's trail is a few megabytes)."""
READERS = 8
"""Manifests read at once when listing: R2 answers each in tens of milliseconds."""


class NotFound(LookupError):
    """The key is not a recording in this store (or not a key at all)."""


def safe_key(key: str) -> str:
    """``key`` if it could be an object key of this recorder; raises ``NotFound``."""
    if len(key) > MAX_KEY or not _SAFE_KEY.match(key) or key.endswith(MANIFEST_SUFFIX):
        raise NotFound("not a recording key")
    return key


@dataclass(frozen=True)
class Entry:
    """One line of the list: the opaque ids, when, how long, what is known of it."""

    key: str
    manifest: Manifest


@dataclass(frozen=True)
class Listing:
    entries: tuple[Entry, ...]
    """Newest first (by the manifest's start time)."""
    unreadable: tuple[str, ...]
    """Keys whose manifest could not be read or is not a recorder manifest."""
    truncated: bool
    """More recordings exist than the list shows (``limit``)."""


@dataclass(frozen=True)
class Record:
    """One recording as the detail page shows it, read now from the store."""

    key: str
    manifest: Manifest
    object_size: int | None
    """The stored object's size now (None: the object is missing)."""
    trail: tuple[bytes, ...] | None
    trail_check: ChainCheck | None
    signed_file: bool
    fhir_file: bool


class Catalog:
    """The recordings in one store. Thread-safe: the server calls it from threads."""

    def __init__(self, settings: StorageSettings, store: S3Store | LocalStore) -> None:
        self.settings = settings
        self.store = store
        self._cache: dict[str, tuple[float, Manifest]] = {}
        self._lock = threading.Lock()

    def manifests(self) -> list[tuple[str, float]]:
        """Every recording key with a manifest beside it, and the manifest's mtime."""
        if isinstance(self.store, S3Store):
            return list(_s3_manifests(self.store, key_prefix(self.settings)))
        return list(_local_manifests(self.store))

    def listing(self, limit: int) -> Listing:
        """The newest ``limit`` recordings (by manifest time, then sorted by start)."""
        found = sorted(self.manifests(), key=lambda item: item[1], reverse=True)
        with ThreadPoolExecutor(READERS) as pool:
            read = list(pool.map(self._cached_manifest, found[:limit]))
        entries = [Entry(key, m) for (key, _), m in zip(found, read, strict=False) if m]
        unreadable = [key for (key, _), m in zip(found, read, strict=False) if m is None]
        entries.sort(key=lambda entry: entry.manifest.started_at, reverse=True)
        return Listing(tuple(entries), tuple(unreadable), truncated=len(found) > limit)

    def _cached_manifest(self, item: tuple[str, float]) -> Manifest | None:
        key, mtime = item
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            manifest = self.manifest(key)
        except (NotFound, StorageError):
            return None
        with self._lock:
            self._cache[key] = (mtime, manifest)
        return manifest

    def manifest(self, key: str) -> Manifest:
        body = self._small(manifest_key(safe_key(key)))
        if body is None:
            raise NotFound("no manifest beside this key")
        try:
            return Manifest.from_json(body)
        except ValidationError:
            raise NotFound("the manifest beside this key is not a recorder manifest") from None

    def record(self, key: str) -> Record:
        """The manifest, the object's presence and size, and the audit trail, checked."""
        manifest = self.manifest(key)
        head = self.store.head(key)
        body = self._small(audit_key(key))
        trail = None if body is None else tuple(line for line in body.split(b"\n") if line)
        return Record(
            key=key,
            manifest=manifest,
            object_size=None if head is None else head[0],
            trail=trail,
            trail_check=None if trail is None else check_trail(trail),
            signed_file=self.store.head(signature_key(key)) is not None,
            fhir_file=self.store.head(fhir_key(key)) is not None,
        )

    def size(self, key: str) -> int:
        """The object's size; raises ``NotFound`` unless it is a recording with a manifest."""
        self.manifest(key)
        head = self.store.head(key)
        if head is None:
            raise NotFound("the object is missing")
        return head[0]

    def _small(self, key: str) -> bytes | None:
        head = self.store.head(key)
        if head is None:
            return None
        if head[0] > MAX_SIDE_FILE:
            raise StorageError(
                f"{key} is {head[0]} bytes, too large to show", kind="store", permanent=True
            )
        return b"".join(self.store.iter_object(key))


def _s3_manifests(store: S3Store, prefix: str) -> Iterator[tuple[str, float]]:
    """Plain listing needs no SSE-C key: names and dates are not encrypted."""
    try:
        pages = store.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=store.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = str(item["Key"])
                if name.endswith(MANIFEST_SUFFIX):
                    modified: datetime = item["LastModified"]
                    yield name[: -len(MANIFEST_SUFFIX)], modified.timestamp()
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(
            f"cannot list the recordings in bucket {store.bucket!r} at {store.endpoint}: "
            f"{type(exc).__name__}",
            kind="store",
            permanent=False,
        ) from None


def _local_manifests(store: LocalStore) -> Iterator[tuple[str, float]]:
    if not store.root.is_dir():
        return
    for path in store.root.rglob("*" + MANIFEST_SUFFIX):
        relative = path.relative_to(store.root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # multipart parts in progress, temp files
        key = relative.as_posix()[: -len(MANIFEST_SUFFIX)]
        if _SAFE_KEY.match(key):
            yield key, path.stat().st_mtime
