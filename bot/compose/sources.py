"""The archived tracks of one recording, found in the store or in a folder, each proven
against its sealed manifest before it is read.

A recording kept as tracks (``recording.mode`` tracks or both) has one object per track
under ``<stem>.tracks/``, each with its manifest (``track``: who, which codec, where its
frames belong on the timeline) beside it. Those manifests are the source of truth: they
exist for every stored track, also for one ``bot recover`` finished after a crash, when
the recording's own record (``recording.manifest.json``) was never written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bot.manifest import ArchivedTrack, Manifest
from bot.recording.archive import stored_tracks
from bot.storage import ObjectStore
from bot.storage.keys import MANIFEST_SUFFIX


class ComposeError(RuntimeError):
    """The tracks cannot be composed (missing, altered, or not a recording's tracks)."""


@dataclass(frozen=True)
class TrackSource:
    """One archived track file on local disk and what its manifest says about it."""

    path: Path
    manifest: Manifest

    @property
    def track(self) -> ArchivedTrack:
        assert self.manifest.track is not None
        return self.manifest.track


def tracks_in_store(store: ObjectStore, prefix: str, into: Path) -> list[TrackSource]:
    """Download every track under ``prefix`` into ``into``, each checked against the
    SHA-256 its verified manifest records."""
    try:
        manifests = stored_tracks(store, prefix)
    except ValueError as exc:
        raise ComposeError(_unreadable(prefix, exc)) from None
    sources = []
    for manifest in manifests:
        assert manifest.storage is not None
        object_key = manifest.storage.object_key
        path = into / object_key.rsplit("/", 1)[-1]
        digest = hashlib.sha256()
        with path.open("wb") as out:
            for chunk in store.iter_object(object_key):
                digest.update(chunk)
                out.write(chunk)
        _check(path.name, digest.hexdigest(), manifest)
        sources.append(TrackSource(path, manifest))
    return _one_recording(sources, prefix)


def tracks_in_folder(folder: Path) -> list[TrackSource]:
    """The tracks in a folder holding track files with their manifests beside them (as
    the local backend stores them, or as downloaded)."""
    sources = []
    for manifest_path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        manifest = _read_manifest(manifest_path.name, manifest_path.read_bytes())
        if manifest.track is None or manifest.storage is None:
            continue
        path = folder / manifest_path.name.removesuffix(MANIFEST_SUFFIX)
        if not path.is_file():
            raise ComposeError(f"{manifest_path.name} names a track file that is not in {folder}")
        digest = hashlib.sha256()
        with path.open("rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
        _check(path.name, digest.hexdigest(), manifest)
        sources.append(TrackSource(path, manifest))
    return _one_recording(sources, str(folder))


def _read_manifest(name: str, body: bytes) -> Manifest:
    try:
        return Manifest.from_json(body)
    except ValueError as exc:
        raise ComposeError(_unreadable(name, exc)) from None


def _unreadable(where: str, exc: ValueError) -> str:
    return (
        f"a manifest in {where} is not one this recorder reads "
        f"({str(exc).splitlines()[0]}); compose it with the recorder version that made it"
    )


def _check(name: str, sha256: str, manifest: Manifest) -> None:
    assert manifest.storage is not None
    if sha256 != manifest.storage.sha256:
        raise ComposeError(
            f"{name} is not the track its manifest verified (SHA-256 differs): "
            "it was altered or damaged; restore it before composing"
        )


def _one_recording(sources: list[TrackSource], where: str) -> list[TrackSource]:
    if not sources:
        raise ComposeError(
            f"no archived track under {where}: record with recording.mode = 'tracks' or "
            "'both', and point compose at the recording's tracks"
        )
    recordings = {s.track.part_of for s in sources}
    if len(recordings) > 1:
        raise ComposeError(f"{where} holds tracks of {len(recordings)} recordings; give one")
    return sorted(sources, key=lambda s: s.track.number)
