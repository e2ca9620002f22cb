"""The steps the real recorder drives: ``pull``, ``ice``, ``first_frame``, ``rtx``,
``simulcast`` and ``upload``.

Owns the settings the recorder runs with (the clinic's, pointed at the synthetic
participant, a throwaway spool and the ``selftest/`` key prefix), the run of the
recorder itself, what it is watched for while it runs, and the advice each of these
steps fails with. May import the foundation, ``bot.rtc`` (the subscriber it reads) and
``bot.recording``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from bot.config import Participant, Settings
from bot.exitcodes import ExitCode
from bot.recording import Recorder, RecordingResult
from bot.rtc.subscriber import Subscriber
from bot.rtc.track_status import TrackStatus
from bot.selftest.report import StepLog

KEY_TEMPLATE = "selftest/{date}/{consultation_id}/{recording_id}.mp4"
FIRST_FRAME_TIMEOUT = 10.0
POLL = 0.1
RECORDER_MARGIN = 30.0
"""The recorder's own ``max_duration`` is this far past the selftest's plan, so a stalled
selftest still ends with a stored file instead of recording for hours."""

Running = asyncio.Task[RecordingResult]


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


async def record(
    log: StepLog,
    settings: Settings,
    participant: Participant,
    *,
    spool_dir: Path,
    duration: float,
) -> RecordingResult:
    """Record ``participant`` for ``duration`` s with the real recorder and settle its
    steps; the recorder stores (and itself verifies) what it recorded."""
    recorder = Recorder(
        recorder_settings(settings, participant, spool_dir=spool_dir, duration=duration)
    )
    began = time.monotonic()
    running = asyncio.create_task(recorder.run(), name="selftest-recorder")
    try:
        ok = await _step_pull(log, recorder, running, began)
        ok = ok and await _step_ice(log, recorder, running, settings.recording.connect_timeout)
        ok = ok and await _step_first_frame(log, recorder, running)
        if ok:
            await _until(running, lambda: _recorded(recorder) >= duration)
    finally:
        recorder.stop("selftest_done")
        stopped = time.monotonic()
        result = await running
    log.report.object_key = result.object_key
    if recorder.subscriber is not None and log.report["first_frame"].status == "pass":
        _observe(log, recorder.subscriber)
    _step_upload(log, result, stopped)
    return result


async def _until(running: Running, ready: Callable[[], bool], within: float | None = None) -> bool:
    """Wait for ``ready`` while the recorder runs; False after ``within`` s or its end."""
    deadline = None if within is None else time.monotonic() + within
    while not ready():
        if running.done() or (deadline is not None and time.monotonic() > deadline):
            return ready()
        await asyncio.sleep(POLL)
    return True


async def _step_pull(log: StepLog, recorder: Recorder, running: Running, began: float) -> bool:
    started = asyncio.ensure_future(recorder.started.wait())
    await asyncio.wait([started, running], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if not recorder.started.is_set():
        result = running.result()
        error = result.error or "the recorder stopped before recording"
        code = ExitCode.REALTIME if result.exit_code == ExitCode.OK else result.exit_code
        log.fail("pull", _without_recover_advice(error), code, began=began)
        return False
    tracks = _tracks(recorder)
    pulled = ", ".join(f"{t.kind} {_codec(t)}" for t in tracks)
    log.settle("pull", "pass", f"{len(tracks)} tracks pulled: {pulled}", began=began)
    return True


async def _step_ice(
    log: StepLog, recorder: Recorder, running: Running, connect_timeout: float
) -> bool:
    began = time.monotonic()
    subscriber = recorder.subscriber
    assert subscriber is not None
    if not await _until(running, subscriber.connected.is_set, connect_timeout):
        log.fail(
            "ice",
            f"the recorder's WebRTC connection to the SFU did not come up within "
            f"{connect_timeout:g} s: check that UDP to Cloudflare is open from this machine "
            "(realtime.ice_servers; a TURN server behind strict firewalls)",
            ExitCode.REALTIME,
            began=began,
        )
        return False
    log.settle("ice", "pass", _describe_transport(subscriber), began=began)
    return True


async def _step_first_frame(log: StepLog, recorder: Recorder, running: Running) -> bool:
    began = time.monotonic()
    firsts: dict[str, float] = {}

    def every_kind_decoded() -> bool:
        tracks = _tracks(recorder)
        for track in tracks:
            if track.kind not in firsts and track.frames > 0:
                firsts[track.kind] = time.monotonic() - began
        return bool(tracks) and all(t.kind in firsts for t in tracks)

    if not await _until(running, every_kind_decoded, FIRST_FRAME_TIMEOUT):
        log.fail("first_frame", _no_frame(recorder), ExitCode.REALTIME, began=began)
        return False
    after = ", ".join(f"{kind} after {s:.2f} s" for kind, s in sorted(firsts.items()))
    log.settle("first_frame", "pass", f"decoded {after}", began=began)
    return True


def _observe(log: StepLog, subscriber: Subscriber) -> None:
    """RTX and simulcast layers: reported as seen or not, never a failure."""
    video = [t for t in subscriber.track_status() if t.kind == "video"]
    counts = [t.rtx_packets for t in video]
    if not video or None in counts:
        log.settle("rtx", "unknown", "this recorder does not count RTX packets")
    elif total := sum(count or 0 for count in counts):
        log.settle("rtx", "observed", f"{total} packets retransmitted on the RTX stream")
    else:
        log.settle("rtx", "not_seen", "no retransmission was needed (no loss on the path)")
    log.settle(
        "simulcast",
        "not_seen",
        "the synthetic publisher sends one layer; layers need a browser publishing "
        "with simulcast on",
    )


def _step_upload(log: StepLog, result: RecordingResult, stopped: float) -> None:
    upload = result.upload
    if upload is None or result.exit_code != ExitCode.OK:
        error = _without_recover_advice(result.error or "the recorder stored nothing")
        code = ExitCode.STORAGE if result.exit_code == ExitCode.OK else result.exit_code
        log.fail("upload", error, code, began=stopped)
        return
    log.settle(
        "upload",
        "pass",
        f"{upload.location}: {upload.size / 1e6:.2f} MB in {upload.parts} part(s), "
        f"{result.media.duration:.1f} s recorded; verified by the recorder (size, "
        "ETag, SHA-256, decode)",
        began=stopped,
    )


def _tracks(recorder: Recorder) -> list[TrackStatus]:
    subscriber = recorder.subscriber
    return subscriber.track_status() if subscriber is not None else []


def _codec(track: TrackStatus) -> str:
    """``VP8`` from ``video/VP8``; the track may not know its codec."""
    return track.codec.rsplit("/", 1)[-1] if track.codec else "(codec unknown)"


def _recorded(recorder: Recorder) -> float:
    pipeline = recorder.pipeline
    return pipeline.now() if pipeline is not None else 0.0


def _no_frame(recorder: Recorder) -> str:
    """Why nothing decoded: no packets (a network problem) or packets (a codec problem)."""
    tracks = _tracks(recorder)
    silent = [t.kind for t in tracks if not t.packets]
    if silent:
        return (
            f"no packets arrived on {', '.join(silent)} within {FIRST_FRAME_TIMEOUT:g} s "
            "although ICE connected: check that inbound UDP from Cloudflare is not blocked"
        )
    undecoded = [t.kind for t in tracks if not t.frames]
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


def _without_recover_advice(error: str) -> str:
    """The recorder tells an operator to run ``bot recover`` after a failed upload; the
    selftest's spool is temporary and a test recording is not worth recovering."""
    return error.split("; the recording is complete in", 1)[0]
