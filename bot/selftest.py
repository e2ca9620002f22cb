"""``bot selftest``: the first run against the real Cloudflare app and the real bucket.

A clinic runs it before its first consultation, with the same settings ``bot record``
reads (``BOT_REALTIME_*``, ``BOT_STORAGE_*``, ``--config``). It publishes one synthetic
participant to the app, records it through the SFU with the real recorder, lets the
recorder upload and verify the file in the bucket, lists the bucket to see it there, and
deletes what it wrote. Each step is reported with its outcome and timing, so a failure
says which half (Cloudflare or the store) to look at, and the report of a passing run is
the evidence that turns the assumed rows of ``docs/cloudflare-conformance.md`` into
observed ones.

Two steps are observations, never failures: RTX needs packet loss to appear, and the
synthetic publisher sends a single simulcast layer. A failing step gives one line (what
failed, what to check), never a traceback, and every configured secret is scrubbed from
it in case a server echoed one back.

The recording goes to its own key prefix (``selftest/``) and a temporary spool: a bucket
lock on ``consultations/`` would make a test object undeletable, and ``bot recover``
must never find a selftest spool among the real ones. The publisher is passed in (the
CLI builds ``testbed``'s synthetic participant) so the product never imports the
testbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from bot.config import ConfigError, Participant, Settings, TrackRef
from bot.exitcodes import ExitCode
from bot.realtime import (
    AppNotFoundError,
    AuthenticationError,
    NewSessionResponse,
    RealtimeClient,
    RealtimeError,
)
from bot.recorder import Recorder, RecordingResult
from bot.rtc.subscriber import Subscriber
from bot.storage import S3Store, StorageError, manifest_key

DEFAULT_DURATION = 10.0
KEY_TEMPLATE = "selftest/{date}/{consultation_id}/{recording_id}.mp4"
PARTICIPANT_ROLE = "clinician"
PUBLISH_SETTLE = 1.0
"""Seconds between the publisher connecting and the pull: Cloudflare answers a pull of a
track with no media yet with ``empty_track_error``; the selftest is about the path, not
that race (in real calls the recorder pulls such a track again)."""
FIRST_FRAME_TIMEOUT = 10.0
POLL = 0.1
RECORDER_MARGIN = 30.0
"""The recorder's own ``max_duration`` is this far past the selftest's plan, so a stalled
selftest still ends with a stored file instead of recording for hours."""

Status = Literal["pass", "fail", "skipped", "observed", "not_seen", "unknown", "kept"]

STEPS: tuple[tuple[str, bool], ...] = (
    ("config", True),
    ("auth", True),
    ("publish", True),
    ("pull", True),
    ("ice", True),
    ("first_frame", True),
    ("rtx", False),
    ("simulcast", False),
    ("upload", True),
    ("verify", True),
    ("cleanup", True),
)
"""Every step in report order, and whether its failure fails the run."""


class Publisher(Protocol):
    """What the selftest needs of a publishing participant (``SyntheticParticipant``)."""

    @property
    def track_refs(self) -> dict[str, str]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


PublisherFactory = Callable[[RealtimeClient], Publisher]


@dataclass
class Step:
    """One line of the report."""

    name: str
    required: bool
    status: Status = "skipped"
    seconds: float | None = None
    detail: str = ""
    exit_code: ExitCode | None = None
    """Set on a failure: the class of what failed."""

    @property
    def done(self) -> bool:
        return self.status != "skipped"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "required": self.required,
            "status": self.status,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "detail": self.detail,
        }

    def line(self) -> str:
        label = {"not_seen": "NOT SEEN", "observed": "SEEN"}.get(self.status, self.status.upper())
        took = "-" if self.seconds is None else f"{self.seconds:.2f} s"
        return f"  {label:<8}  {self.name:<11}  {took:>8}  {self.detail}".rstrip()


@dataclass
class SelftestReport:
    """The steps in order, and what was left in the bucket."""

    steps: list[Step] = field(default_factory=lambda: [Step(n, r) for n, r in STEPS])
    object_key: str | None = None
    kept: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def exit_code(self) -> ExitCode:
        """The code of the first failing required step: it names the half to look at."""
        for step in self.steps:
            if step.required and step.status == "fail":
                return step.exit_code or ExitCode.FAILURE
        return ExitCode.OK

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.exit_code == ExitCode.OK,
            "exit_code": int(self.exit_code),
            "object_key": self.object_key,
            "kept": self.kept,
            "steps": [s.to_dict() for s in self.steps],
        }

    def verdict(self) -> str:
        code = self.exit_code
        if code == ExitCode.OK:
            return "selftest passed (exit 0)"
        failed = [s.name for s in self.steps if s.required and s.status == "fail"]
        return f"selftest FAILED at {', '.join(failed)} (exit {int(code)}, {code.name})"


def config_failure(message: str) -> SelftestReport:
    """The report of a run whose settings could not even be loaded."""
    report = SelftestReport()
    step = report["config"]
    step.status, step.seconds, step.detail, step.exit_code = "fail", 0.0, message, ExitCode.CONFIG
    for other in report.steps[1:]:
        other.detail = "not reached"
    return report


class _Scrub:
    """Removes every configured secret from text meant for a person."""

    def __init__(self, settings: Settings) -> None:
        values = (
            settings.realtime.app_secret,
            settings.storage.secret_access_key,
            settings.storage.sse_c_key,
        )
        self._secrets = [v.get_secret_value() for v in values if v.get_secret_value()]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return " ".join(text.split())  # one line, whatever a server sent


class _TimedClient(RealtimeClient):
    """Notes when the first ``sessions/new`` succeeded: that call is where Cloudflare
    checks the app id and secret, so it ends ``auth`` and starts ``publish``."""

    session_created: float | None = None

    async def new_session(self) -> NewSessionResponse:
        response = await super().new_session()
        if self.session_created is None:
            self.session_created = time.monotonic()
        return response


def recorder_settings(
    settings: Settings, participant: Participant, *, spool_dir: Path, duration: float
) -> Settings:
    """The clinic's settings, pointed at the synthetic participant and a throwaway place.

    What decides whether a real recording works (app, ICE servers, bucket, credentials,
    SSE-C key, encoder settings) is kept as configured.
    """
    recording = settings.recording.model_copy(
        update={
            "consultation_id": f"selftest-{secrets.token_hex(4)}",
            "participants": (participant,),
            "layout": (participant.role,),
            "max_duration": duration + settings.recording.connect_timeout + RECORDER_MARGIN,
        }
    )
    storage = settings.storage.model_copy(
        update={"spool_dir": spool_dir, "key_template": KEY_TEMPLATE}
    )
    return settings.model_copy(update={"recording": recording, "storage": storage})


class _Selftest:
    """One run: each ``_step_*`` settles its step; a failure leaves later ones skipped."""

    def __init__(
        self,
        settings: Settings,
        publisher: PublisherFactory,
        *,
        duration: float,
        keep: bool,
        on_step: Callable[[Step], None],
    ) -> None:
        self.settings = settings
        self.duration = duration
        self.keep = keep
        self.report = SelftestReport()
        self._publisher = publisher
        self._on_step = on_step
        self._emitted = 0
        self._scrub = _Scrub(settings)
        self._store: S3Store | None = None

    # -- reporting ---------------------------------------------------------------------

    def _settle(
        self,
        name: str,
        status: Status,
        detail: str,
        *,
        began: float | None = None,
        until: float | None = None,
        code: ExitCode | None = None,
    ) -> None:
        step = self.report[name]
        step.status = status
        if began is not None:
            step.seconds = (until or time.monotonic()) - began
        step.detail = self._scrub(detail)
        step.exit_code = code
        self._emit()

    def _fail(self, name: str, detail: str, code: ExitCode, *, began: float) -> None:
        self._settle(name, "fail", detail, began=began, code=code)

    def _emit(self) -> None:
        """Hand settled steps to ``on_step`` in report order, as soon as they can go."""
        steps = self.report.steps
        while self._emitted < len(steps) and steps[self._emitted].done:
            self._on_step(steps[self._emitted])
            self._emitted += 1

    @contextlib.contextmanager
    def _unforeseen(self, name: str, began: float) -> Iterator[None]:
        """An error nobody foresaw still ends as one line on its step, not a traceback."""
        try:
            yield
        except StorageError as exc:
            self._fail(name, str(exc), ExitCode.STORAGE, began=began)
        except (OSError, RuntimeError, ValueError) as exc:
            self._fail(name, f"{type(exc).__name__}: {exc}", ExitCode.FAILURE, began=began)

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> SelftestReport:
        workdir = Path(tempfile.mkdtemp(prefix="bot-selftest-"))
        try:
            if self._step_config():
                await self._call(workdir)
                await self._step_cleanup()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            for step in self.report.steps:
                if not step.done:
                    step.detail = step.detail or "not reached"
            self._emit_rest()
        return self.report

    def _emit_rest(self) -> None:
        """At the end, the steps never reached go out too, still in order."""
        for step in self.report.steps[self._emitted :]:
            self._on_step(step)
        self._emitted = len(self.report.steps)

    def _step_config(self) -> bool:
        began = time.monotonic()
        realtime, storage = self.settings.realtime, self.settings.storage
        problem = None
        if not realtime.app_id or not realtime.app_secret.get_secret_value():
            problem = "set BOT_REALTIME_APP_ID and BOT_REALTIME_APP_SECRET (the Realtime app)"
        elif storage.backend != "s3":
            problem = (
                "the selftest checks the real bucket: set BOT_STORAGE_BACKEND=s3 with "
                "BOT_STORAGE_ENDPOINT_URL, BOT_STORAGE_BUCKET and its credentials"
            )
        else:
            try:
                self._store = S3Store(storage)
            except (ConfigError, ValueError) as exc:  # no endpoint or bucket; a bad URL
                problem = str(exc)
        if problem is not None:
            self._fail("config", problem, ExitCode.CONFIG, began=began)
            return False
        sse = "; SSE-C on" if storage.sse_c_key.get_secret_value() else ""
        self._settle(
            "config",
            "pass",
            f"app {realtime.app_id} at {realtime.base_url}; "
            f"bucket {storage.bucket} at {storage.endpoint_url}{sse}",
            began=began,
        )
        return True

    async def _call(self, workdir: Path) -> None:
        """Publish, then record and store while the participant is live."""
        realtime = self.settings.realtime
        client = _TimedClient(
            realtime.app_id,
            realtime.app_secret.get_secret_value(),
            base_url=realtime.base_url,
            timeout=realtime.request_timeout,
            max_retries=realtime.max_retries,
        )
        async with client:
            publisher = self._publisher(client)
            try:
                if await self._step_auth_and_publish(client, publisher):
                    refs = publisher.track_refs
                    participant = Participant(
                        id="selftest",
                        role=PARTICIPANT_ROLE,
                        tracks=tuple(TrackRef.parse(refs[kind]) for kind in ("audio", "video")),
                    )
                    await self._record(participant, workdir / "spool")
            finally:
                await publisher.stop()

    async def _step_auth_and_publish(self, client: _TimedClient, publisher: Publisher) -> bool:
        began = time.monotonic()
        error: Exception | None = None
        try:
            await publisher.start()
        except Exception as exc:  # the publisher's own failures are testbed classes
            error = exc
        created = client.session_created
        if created is None:
            assert error is not None
            self._fail("auth", _api_advice(error), _auth_code(error), began=began)
            return False
        self._settle(
            "auth",
            "pass",
            "session created: app id and secret accepted",
            began=began,
            until=created,
        )
        if error is not None:
            self._fail("publish", _publish_advice(error), _auth_code(error), began=created)
            return False
        await asyncio.sleep(PUBLISH_SETTLE)
        self._settle(
            "publish",
            "pass",
            "synthetic participant connected, sending audio and video",
            began=created,
        )
        return True

    async def _record(self, participant: Participant, spool_dir: Path) -> None:
        settings = recorder_settings(
            self.settings, participant, spool_dir=spool_dir, duration=self.duration
        )
        recorder = Recorder(settings)
        began = time.monotonic()
        running = asyncio.create_task(recorder.run(), name="selftest-recorder")
        try:
            ok = await self._step_pull(recorder, running, began)
            ok = ok and await self._step_ice(recorder, running)
            ok = ok and await self._step_first_frame(recorder, running)
            if ok:
                await self._until(running, lambda: _recorded(recorder) >= self.duration)
        finally:
            recorder.stop("selftest_done")
            stopped = time.monotonic()
            result = await running
        self.report.object_key = result.object_key
        if recorder.subscriber is not None and self.report["first_frame"].status == "pass":
            self._observe(recorder.subscriber)
        self._step_upload(result, stopped)
        if result.upload is not None:
            await self._step_verify(result)

    async def _until(
        self,
        running: asyncio.Task[RecordingResult],
        ready: Callable[[], bool],
        within: float | None = None,
    ) -> bool:
        """Wait for ``ready`` while the recorder runs; False after ``within`` s or its end."""
        deadline = None if within is None else time.monotonic() + within
        while not ready():
            if running.done() or (deadline is not None and time.monotonic() > deadline):
                return ready()
            await asyncio.sleep(POLL)
        return True

    async def _step_pull(
        self, recorder: Recorder, running: asyncio.Task[RecordingResult], began: float
    ) -> bool:
        started = asyncio.ensure_future(recorder.started.wait())
        await asyncio.wait([started, running], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not recorder.started.is_set():
            result = running.result()
            error = result.error or "the recorder stopped before recording"
            code = ExitCode.REALTIME if result.exit_code == ExitCode.OK else result.exit_code
            self._fail("pull", _without_recover_advice(error), code, began=began)
            return False
        subscriber = recorder.subscriber
        tracks = subscriber.track_status() if subscriber is not None else []
        pulled = ", ".join(f"{t.get('kind')} {_codec(t)}" for t in tracks)
        self._settle("pull", "pass", f"{len(tracks)} tracks pulled: {pulled}", began=began)
        return True

    async def _step_ice(self, recorder: Recorder, running: asyncio.Task[RecordingResult]) -> bool:
        began = time.monotonic()
        timeout = self.settings.recording.connect_timeout
        subscriber = recorder.subscriber
        assert subscriber is not None
        if not await self._until(running, subscriber.connected.is_set, timeout):
            self._fail(
                "ice",
                f"the recorder's WebRTC connection to the SFU did not come up within "
                f"{timeout:g} s: check that UDP to Cloudflare is open from this machine "
                "(realtime.ice_servers; a TURN server behind strict firewalls)",
                ExitCode.REALTIME,
                began=began,
            )
            return False
        self._settle("ice", "pass", _describe_transport(subscriber), began=began)
        return True

    async def _step_first_frame(
        self, recorder: Recorder, running: asyncio.Task[RecordingResult]
    ) -> bool:
        began = time.monotonic()
        firsts: dict[str, float] = {}

        def every_kind_decoded() -> bool:
            tracks = _tracks(recorder)
            for track in tracks:
                kind = str(track.get("kind"))
                if kind not in firsts and _count(track, "frames") > 0:
                    firsts[kind] = time.monotonic() - began
            return bool(tracks) and all(str(t.get("kind")) in firsts for t in tracks)

        if not await self._until(running, every_kind_decoded, FIRST_FRAME_TIMEOUT):
            self._fail("first_frame", _no_frame(recorder), ExitCode.REALTIME, began=began)
            return False
        after = ", ".join(f"{kind} after {s:.2f} s" for kind, s in sorted(firsts.items()))
        self._settle("first_frame", "pass", f"decoded {after}", began=began)
        return True

    def _observe(self, subscriber: Subscriber) -> None:
        """RTX and simulcast layers: reported as seen or not, never a failure."""
        video = [t for t in subscriber.track_status() if t.get("kind") == "video"]
        counts = [t.get("rtx_packets") for t in video]
        if not video or None in counts:
            self._settle("rtx", "unknown", "this recorder does not count RTX packets")
        elif total := sum(_count(t, "rtx_packets") for t in video):
            self._settle("rtx", "observed", f"{total} packets retransmitted on the RTX stream")
        else:
            self._settle("rtx", "not_seen", "no retransmission was needed (no loss on the path)")
        self._settle(
            "simulcast",
            "not_seen",
            "the synthetic publisher sends one layer; layers need a browser publishing "
            "with simulcast on",
        )

    def _step_upload(self, result: RecordingResult, stopped: float) -> None:
        upload = result.upload
        if upload is None or result.exit_code != ExitCode.OK:
            error = _without_recover_advice(result.error or "the recorder stored nothing")
            code = ExitCode.STORAGE if result.exit_code == ExitCode.OK else result.exit_code
            self._fail("upload", error, code, began=stopped)
            return
        self._settle(
            "upload",
            "pass",
            f"{upload.location}: {upload.size / 1e6:.2f} MB in {upload.parts} part(s), "
            f"{result.media.duration:.1f} s recorded; verified by the recorder (size, "
            "ETag, SHA-256, decode)",
            began=stopped,
        )

    async def _step_verify(self, result: RecordingResult) -> None:
        """Look at the bucket from outside the recorder: the object and its manifest."""
        began = time.monotonic()
        assert result.upload is not None and self._store is not None
        key = result.upload.object_key
        with self._unforeseen("verify", began):
            listed = await asyncio.to_thread(_list, self._store, key)
            if listed.get(key) != result.upload.size:
                self._fail(
                    "verify",
                    f"the bucket lists {key} with size {listed.get(key)}, the recorder "
                    f"stored {result.upload.size} bytes: check what else writes under selftest/",
                    ExitCode.STORAGE,
                    began=began,
                )
            elif manifest_key(key) not in listed:
                self._fail(
                    "verify",
                    f"the manifest {manifest_key(key)} is missing from the bucket listing",
                    ExitCode.STORAGE,
                    began=began,
                )
            else:
                self._settle(
                    "verify",
                    "pass",
                    f"listed in the bucket: the object ({listed[key]} bytes) and its manifest",
                    began=began,
                )

    async def _step_cleanup(self) -> None:
        """Delete every object and open upload under the recording's key, unless --keep."""
        began = time.monotonic()
        key, store = self.report.object_key, self._store
        if key is None or store is None:
            self._settle("cleanup", "pass", "nothing was written to the bucket", began=began)
            return
        with self._unforeseen("cleanup", began):
            if self.keep:
                self.report.kept = sorted(await asyncio.to_thread(_list, store, key))
                self._settle(
                    "cleanup",
                    "kept",
                    f"--keep: {len(self.report.kept)} object(s) left under {key}",
                    began=began,
                )
                return
            try:
                deleted = await asyncio.to_thread(_delete_all, store, key)
            except StorageError as exc:
                self._fail(
                    "cleanup",
                    f"{exc}; delete the objects under {key} by hand",
                    ExitCode.STORAGE,
                    began=began,
                )
                return
            self._settle("cleanup", "pass", f"deleted {deleted} object(s) under {key}", began=began)


async def run_selftest(
    settings: Settings,
    publisher: PublisherFactory,
    *,
    duration: float = DEFAULT_DURATION,
    keep: bool = False,
    on_step: Callable[[Step], None] = lambda step: None,
) -> SelftestReport:
    """Run every step against the configured app and bucket; ``on_step`` sees each line
    as soon as it is known, in report order."""
    return await _Selftest(settings, publisher, duration=duration, keep=keep, on_step=on_step).run()


def _tracks(recorder: Recorder) -> list[dict[str, object]]:
    subscriber = recorder.subscriber
    return subscriber.track_status() if subscriber is not None else []


def _count(track: dict[str, object], key: str) -> int:
    value = track.get(key)
    return value if isinstance(value, int) else 0


def _codec(track: dict[str, object]) -> str:
    """``VP8`` from ``video/VP8``; the key is new in the subscriber, so it may be absent."""
    codec = track.get("codec")
    return str(codec).rsplit("/", 1)[-1] if codec else "(codec unknown)"


def _recorded(recorder: Recorder) -> float:
    pipeline = recorder.pipeline
    return pipeline.now() if pipeline is not None else 0.0


def _no_frame(recorder: Recorder) -> str:
    """Why nothing decoded: no packets (a network problem) or packets (a codec problem)."""
    tracks = _tracks(recorder)
    silent = [str(t.get("kind")) for t in tracks if not _count(t, "packets")]
    if silent:
        return (
            f"no packets arrived on {', '.join(silent)} within {FIRST_FRAME_TIMEOUT:g} s "
            "although ICE connected: check that inbound UDP from Cloudflare is not blocked"
        )
    undecoded = [str(t.get("kind")) for t in tracks if not _count(t, "frames")]
    return (
        f"packets arrived but nothing decoded on {', '.join(undecoded)} within "
        f"{FIRST_FRAME_TIMEOUT:g} s: the forwarded codec may not be decodable; run with "
        "--verbose and look for subscriber.track_failed"
    )


def _describe_transport(subscriber: Subscriber) -> str:
    """ICE role and candidate types, or "unknown" where this recorder cannot tell."""
    info_of = getattr(subscriber, "transport_info", None)
    info: dict[str, object] = info_of() if callable(info_of) else {}
    lite = info.get("remote_ice_lite")
    mode = "ICE-lite" if lite is True else "full ICE" if lite is False else "of unknown ICE mode"
    return (
        f"connected; recorder {info.get('ice_role') or 'role unknown'}, SFU {mode}; "
        f"candidates local {info.get('local_candidate_type') or 'unknown'} -> "
        f"remote {info.get('remote_candidate_type') or 'unknown'}"
    )


def _auth_code(error: Exception) -> ExitCode:
    """Exit 3 when Cloudflare refused the app id or secret, 4 for anything else."""
    refused = isinstance(error, AuthenticationError | AppNotFoundError) or (
        isinstance(error, RealtimeError) and error.status == 403
    )
    return ExitCode.REALTIME_AUTH if refused else ExitCode.REALTIME


def _api_advice(error: Exception) -> str:
    if not isinstance(error, RealtimeError):
        return f"creating a session failed: {type(error).__name__}: {error}"
    if error.status is None:
        return f"{error}: check realtime.base_url and that HTTPS to it is reachable"
    if error.status == 403:
        return f"{error}: check realtime.app_id and BOT_REALTIME_APP_SECRET"
    return str(error)


def _publish_advice(error: Exception) -> str:
    if isinstance(error, RealtimeError):
        return (
            f"the SFU refused the synthetic participant's tracks: {error}; run with "
            "--verbose to see the API's reply"
        )
    return (
        f"the synthetic participant could not publish: {error}; check that UDP to "
        "Cloudflare is open (realtime.ice_servers; a TURN server behind strict firewalls)"
    )


def _without_recover_advice(error: str) -> str:
    """The recorder tells an operator to run ``bot recover`` after a failed upload; the
    selftest's spool is temporary and a test recording is not worth recovering."""
    return error.split("; the recording is complete in", 1)[0]


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
