"""The ``verify`` and ``cleanup`` steps: the bucket seen from outside the recorder.

Owns listing what the recording left under its key (the object, its manifest, any
sibling such as ``<key>.audit.jsonl``), deleting it and the open uploads for it, and the
one-line errors a listing or deletion the store refuses ends with. May import the
foundation and ``bot.storage`` (and ``bot.recording`` for the result it checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.exitcodes import ExitCode
from bot.recording import RecordingResult
from bot.selftest.report import StepLog
from bot.storage import StorageError, manifest_key
from bot.storage.s3_store import S3Store


async def verify(log: StepLog, store: S3Store, result: RecordingResult) -> None:
    """Look at the bucket from outside the recorder: the object and its manifest."""
    began = time.monotonic()
    assert result.upload is not None
    key = result.upload.object_key
    with _unforeseen(log, "verify", began):
        listed = await asyncio.to_thread(_list, store, key)
        if listed.get(key) != result.upload.size:
            log.fail(
                "verify",
                f"the bucket lists {key} with size {listed.get(key)}, the recorder "
                f"stored {result.upload.size} bytes: check what else writes under selftest/",
                ExitCode.STORAGE,
                began=began,
            )
        elif manifest_key(key) not in listed:
            log.fail(
                "verify",
                f"the manifest {manifest_key(key)} is missing from the bucket listing",
                ExitCode.STORAGE,
                began=began,
            )
        else:
            log.settle(
                "verify",
                "pass",
                f"listed in the bucket: the object ({listed[key]} bytes) and its manifest",
                began=began,
            )


async def cleanup(log: StepLog, store: S3Store, *, keep: bool) -> None:
    """Delete every object and open upload under the recording's key, unless ``keep``."""
    began = time.monotonic()
    key = log.report.object_key
    if key is None:
        log.settle("cleanup", "pass", "nothing was written to the bucket", began=began)
        return
    with _unforeseen(log, "cleanup", began):
        if keep:
            log.report.kept = sorted(await asyncio.to_thread(_list, store, key))
            log.settle(
                "cleanup",
                "kept",
                f"--keep: {len(log.report.kept)} object(s) left under {key}",
                began=began,
            )
            return
        try:
            deleted = await asyncio.to_thread(_delete_all, store, key)
        except StorageError as exc:
            log.fail(
                "cleanup",
                f"{exc}; delete the objects under {key} by hand",
                ExitCode.STORAGE,
                began=began,
            )
            return
        log.settle("cleanup", "pass", f"deleted {deleted} object(s) under {key}", began=began)


@contextlib.contextmanager
def _unforeseen(log: StepLog, name: str, began: float) -> Iterator[None]:
    """An error nobody foresaw still ends as one line on its step, not a traceback."""
    try:
        yield
    except StorageError as exc:
        log.fail(name, str(exc), ExitCode.STORAGE, began=began)
    except (OSError, RuntimeError, ValueError) as exc:
        log.fail(name, f"{type(exc).__name__}: {exc}", ExitCode.FAILURE, began=began)


def _list(store: S3Store, prefix: str) -> dict[str, int]:
    """Every object whose key starts with ``prefix``, with its size."""
    found: dict[str, int] = {}
    kwargs: dict[str, Any] = {"Bucket": store.bucket, "Prefix": prefix}
    while True:
        try:
            response = store.client.list_objects_v2(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(store, exc, "list the selftest's objects") from None
        found.update({item["Key"]: int(item["Size"]) for item in response.get("Contents", [])})
        if not response.get("IsTruncated"):
            return found
        kwargs["ContinuationToken"] = response["NextContinuationToken"]


def _delete_all(store: S3Store, key: str) -> int:
    """Abort open uploads for ``key``; delete the object, its manifest and any sibling
    (``<key>.audit.jsonl``); returns how many objects were deleted."""
    for pending in store.list_uploads(key):
        store.abort(pending.key, pending.upload_id)
    objects = _list(store, key)
    for name in objects:
        try:
            store.client.delete_object(Bucket=store.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error(store, exc, f"delete {name}") from None
    left = _list(store, key)
    if left:
        raise StorageError(
            f"{len(left)} object(s) under {key} are still listed after being deleted "
            "(a bucket lock covering selftest/?)",
            kind="store",
            permanent=True,
        )
    return len(objects)


def _storage_error(store: S3Store, exc: Exception, action: str) -> StorageError:
    """A listing or deletion the store refused, in one line: what, where, what to check."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return StorageError(
            f"{store.endpoint} (bucket {store.bucket!r}) refused to {action} "
            f"({error.get('Code') or status}); check that the credentials may list and "
            "delete objects in the bucket",
            kind="store",
            permanent=True,
        )
    return StorageError(
        f"cannot reach the object store at {store.endpoint} to {action}: "
        f"{type(exc).__name__}; check storage.endpoint_url and the network",
        kind="unreachable",
        permanent=False,
    )
