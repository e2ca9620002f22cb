"""Chromium publishers encrypting with Orange Meets' own MLS worker -> SFU -> recorder -> MP4.

Two real browsers publish our barcode/beep signal through the local SFU with every encoded
frame (audio and video) passed through Orange's shipped worker (``encryptStream`` on
``createEncodedStreams``, VP8 forced as Orange does); the first creates the MLS group and
admits the second by a Welcome, the testbed relaying handshake messages as Orange's room
does. The recorder runs with its control API and records ciphertext it cannot open (and
never decodes) until the orchestrator brings it in: it fetches the recorder's KeyPackage,
Orange's committer (in the browser) commits its Add, and the Welcome and the ratchet tree
go back through the API. From then on the MP4 must show both participants as an
unencrypted call does, and all three members must show the same safety number.

In the same call a second recorder that is never admitted must fail (exit 4, naming
encrypted media) after ``e2ee.join_timeout``, its MP4 without a single barcode.

Skips, saying why, where Debian's Chromium or Orange's worker (../shared/interop/
orange-e2ee, or $ORANGE_E2EE) is absent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
import structlog
from testbed.analysis import (
    RecordingReport,
    _scan_video,
    abs_percentile,
    analyze_recording,
    audio_rms,
)
from testbed.browser.driver import CHROMIUM
from testbed.browser.e2ee import Admission, E2eeCall, E2eePublisher, worker_folder
from testbed.browser.media_files import FakeMedia, write_fake_media
from testbed.stack import LocalCall, start_local_sfu

from bot.config import ControlSettings, E2eeSettings, Participant
from bot.control.run import ControlledRecording
from bot.e2ee.frames import Outcome
from bot.e2ee.session import safety_number_text
from bot.exitcodes import ExitCode
from bot.recording import RecordingResult
from tests.e2e import recorder_settings, slots
from tests.faults import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
    pytest.mark.skipif(
        worker_folder() is None,
        reason="Orange's MLS worker (../shared/interop/orange-e2ee, or $ORANGE_E2EE) is not "
        "on this machine",
    ),
]

DURATION = 12.0
"""The member's recording: a few seconds of ciphertext, then about 8 s after admission."""
SRC_FPS = 25
"""The fake cameras' rate: against the recorder's 30 fps the phase between the two frame
grids sweeps, so the analysis times video to well under a frame (at 30 in, 30 out a
frame's phase error, up to 33 ms, stays in the measure)."""
MEDIA_S = 30.0
"""Longer than setup plus the member's recording, so the fake capture files never loop
while it records (a loop would restart the barcode's frame index)."""
AV_MATCH_S = 0.49
"""As in test_browser_e2e: Chromium starts its fake microphone and camera files up to a
few hundred ms apart, so each participant's flashes are matched only to beeps in its own
speaker track, up to just under half the beep period apart; the constant start skew (the
median) is that browser's, and the recorder's share is the spread around it."""
MAX_SPREAD_P95_MS = 20
OVERLOADED = 2.0
"""Load average per core above which the source is known to slip: with the cores saturated
by other work Chromium's fake camera falls behind its own timer and its frame index drifts
against wall time by 20-30 ms a second (test_browser_e2e saw spreads of 130-490 ms
unencrypted). Seen here on a quiet machine: spread p95 0-6 ms; with other test runs
beside it (load 2-7 per core), 100-170 ms, or no beep matched at all."""
MIN_MATCHED_BEEPS = 4
FULL_WINDOW_FRAMES = 24
"""Output frames of a beep's picture window (the analysis's +-0.5 s: 30 at 30 fps) below
which the recording's start or end cut it."""
CIPHERTEXT_FRAMES = 50
"""Frames dropped as not-member before the orchestrator admits the recorder."""
JOIN_TIMEOUT_S = 4.0
"""The never-admitted recorder's ``e2ee.join_timeout``."""
SECRET = "browser-e2ee-control-secret-0123456789"
AUDIENCE = "consultation-recorder"


@dataclass
class Recorded:
    result: RecordingResult
    report: RecordingReport
    outcomes: Counter[Outcome]
    rms: list[float]
    first_seen_s: dict[int, float]
    """Output time of each participant's first barcode."""


@dataclass
class EncryptedCall:
    member: Recorded
    outsider: Recorded
    codecs: dict[str, str]
    admission: Admission
    admitted_at_s: float
    """Recording time at which the Welcome was accepted."""
    joined: dict[str, Any]
    """The control API's answer to the Welcome."""
    status: dict[str, Any]
    """The recorder's ``e2ee`` status at the end of its recording."""
    browser_safety: dict[str, bytes | None]
    worker_errors: dict[str, list[str]]
    load: float
    """The highest 1-minute load average per core seen around the member's recording."""
    mapping_moves: dict[int, list[tuple[int, float]]]
    """Per participant, each capture-time mapping move (clock rate, ms) of the member's
    recording: a lip-sync step the recorder made, told from one the browser's source made."""


def _token(consultation_id: str) -> str:
    now = int(time.time())
    claims = {"sub": "orchestrator-1", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims |= {"consultation_id": consultation_id, "role": "orchestrator"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _controlled(
    call: LocalCall,
    output_dir: Path,
    participants: tuple[Participant, ...],
    consultation_id: str,
    **e2ee: Any,
) -> ControlledRecording:
    settings = recorder_settings(
        call,
        output_dir,
        participants=participants,
        max_duration=DURATION,
        consultation_id=consultation_id,
    )
    control = ControlSettings(enabled=True, port=0, jwt_secret=SECRET, jwt_audience=AUDIENCE)
    update = {"control": control, "e2ee": E2eeSettings(**e2ee)}
    return ControlledRecording(settings.model_copy(update=update), progress=False)


def _mapping_moves(
    logs: list[dict[str, Any]], participants: tuple[Participant, ...]
) -> dict[int, list[tuple[int, float]]]:
    """Each participant's ``clock.sender_mapping_moved`` events, by its sessions."""
    moves: dict[int, list[tuple[int, float]]] = {}
    for number, participant in enumerate(participants, start=1):
        sessions = {track.session_id for track in participant.tracks}
        moves[number] = [
            (e["clock_rate"], e["moved_ms"])
            for e in logs
            if e["event"] == "clock.sender_mapping_moved" and e["session"] in sessions
        ]
    return moves


async def _member_recording(
    call: LocalCall, room: E2eeCall, output_dir: Path, participants: tuple[Participant, ...]
) -> tuple[
    RecordingResult, Counter[Outcome], Admission, float, dict[str, Any], dict[str, Any], float
]:
    session = _controlled(call, output_dir, participants, "c-e2ee-member")
    recorder = session.recorder
    running = asyncio.create_task(session.run())
    await asyncio.wait_for(recorder.started.wait(), 60)
    frames = recorder.e2ee.frames
    await wait_until(
        lambda: frames.outcomes[Outcome.NOT_MEMBER] > CIPHERTEXT_FRAMES, 20, "ciphertext arrives"
    )
    assert session.server is not None
    auth = {"Authorization": f"Bearer {_token('c-e2ee-member')}"}
    async with httpx.AsyncClient(base_url=session.server.url, headers=auth, timeout=10) as api:
        answer = await api.post("/v1/e2ee/key-package", json={"identity": "recorder"})
        assert answer.status_code == 200, answer.text
        admission = await room.admit(base64.b64decode(answer.json()["key_package"]))
        body = {"welcome": _b64(admission.welcome), "ratchet_tree": _b64(admission.ratchet_tree)}
        answer = await api.post("/v1/e2ee/welcome", json=body)
        assert answer.status_code == 200, answer.text
        joined = answer.json()
        admitted_at = recorder.status().duration_s
        load = os.getloadavg()[0]
        result = await asyncio.wait_for(running, 60)
    load = max(load, os.getloadavg()[0]) / (os.cpu_count() or 1)
    status = recorder.status().e2ee
    assert status is not None
    return (
        result,
        Counter(frames.outcomes),
        admission,
        admitted_at,
        joined,
        {"joined": status.joined, "members": status.members, "safety": status.safety_number},
        load,
    )


async def _outsider_recording(
    call: LocalCall, output_dir: Path, participants: tuple[Participant, ...]
) -> tuple[RecordingResult, Counter[Outcome]]:
    session = _controlled(
        call, output_dir, participants, "c-e2ee-outsider", join_timeout=JOIN_TIMEOUT_S
    )
    result = await asyncio.wait_for(session.run(), 60)
    return result, Counter(session.recorder.e2ee.frames.outcomes)


async def _read(result: RecordingResult, outcomes: Counter[Outcome]) -> Recorded:
    assert result.path is not None, result.error
    report = await asyncio.to_thread(
        analyze_recording, result.path, slots(2), src_fps=SRC_FPS, match_s=AV_MATCH_S
    )
    rms = await asyncio.to_thread(audio_rms, result.path)
    observations, _, _, _ = await asyncio.to_thread(_scan_video, result.path, slots(2))
    first: dict[int, float] = {}
    for observation in observations:
        first.setdefault(observation.participant, observation.time_s)
        first[observation.participant] = min(first[observation.participant], observation.time_s)
    return Recorded(result, report, outcomes, rms, first)


async def _encrypted_call(output_dir: Path, media_dir: Path) -> EncryptedCall:
    media: list[FakeMedia] = await asyncio.gather(
        *(asyncio.to_thread(write_fake_media, media_dir, n, MEDIA_S, fps=SRC_FPS) for n in (1, 2))
    )
    call = await start_local_sfu()
    try:
        async with E2eeCall(call.base_url) as room:
            clinician = await room.join("clinician", media[0])
            patient = await room.join("patient", media[1])
            browsers: tuple[E2eePublisher, ...] = (clinician, patient)
            participants = tuple(
                b.browser.participant(pid) for b, pid in zip(browsers, ("c1", "p1"), strict=True)
            )
            with structlog.testing.capture_logs() as logs:
                member = await _member_recording(call, room, output_dir / "member", participants)
            moves = _mapping_moves(logs, participants)
            browser_safety = await room.safety_numbers()
            outsider = await _outsider_recording(call, output_dir / "outsider", participants)
            worker_errors = {b.member_id: await b.worker_errors() for b in browsers}
            codecs = {b.member_id: b.browser.video_codec for b in browsers}
    finally:
        await call.close()
    result, outcomes, admission, admitted_at, joined, status, load = member
    return EncryptedCall(
        member=await _read(result, outcomes),
        outsider=await _read(*outsider),
        codecs=codecs,
        admission=admission,
        admitted_at_s=admitted_at,
        joined=joined,
        status=status,
        browser_safety=browser_safety,
        worker_errors=worker_errors,
        load=load,
        mapping_moves=moves,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptedCall]:
    yield asyncio.run(
        _encrypted_call(tmp_path_factory.mktemp("rec"), tmp_path_factory.mktemp("media"))
    )


def test_browsers_encrypt_with_orange_and_vp8(run: EncryptedCall) -> None:
    assert run.codecs == {"clinician": "VP8", "patient": "VP8"}
    assert run.worker_errors == {"clinician": [], "patient": []}
    assert run.admission.sender_id == "clinician", "the longest-lived member commits"


def test_the_recorder_is_a_visible_member_with_the_browsers_safety_number(
    run: EncryptedCall,
) -> None:
    number = safety_number_text(run.admission.safety_number)
    print(f"safety number (all three members): {number}")
    assert run.joined["accepted"] and run.joined["members"] == 3
    assert run.joined["safety_number"] == number
    assert run.status == {"joined": True, "members": 3, "safety": number}
    assert run.browser_safety == {
        "clinician": run.admission.safety_number,
        "patient": run.admission.safety_number,
    }


def test_the_member_opens_the_frames_from_admission_on(run: EncryptedCall) -> None:
    member = run.member
    print(
        f"member: admitted at {run.admitted_at_s:.2f} s; first barcodes at "
        f"{ {n: round(t, 2) for n, t in sorted(member.first_seen_s.items())} }; "
        f"frame outcomes {dict(member.outcomes)}"
    )
    assert member.result.exit_code == ExitCode.OK, member.result.error
    assert member.result.stop_reason == "duration_limit"
    opened = member.outcomes[Outcome.OPENED]
    remaining = DURATION - run.admitted_at_s
    assert opened > remaining * (SRC_FPS + 50) * 0.8, member.outcomes
    assert member.outcomes[Outcome.PLAIN] == 0
    # Frames of the epoch before the recorder's Add (sent before the patient applied the
    # Commit) cannot be opened: a handful at most.
    assert member.outcomes[Outcome.UNREADABLE] < opened / 100, member.outcomes
    for number, first in member.first_seen_s.items():
        # Nothing before admission (ciphertext is never decoded); the picture from the
        # first keyframe after it.
        assert run.admitted_at_s - 0.1 < first < run.admitted_at_s + 1.5, (number, first)


def test_both_encrypted_browsers_are_seen_and_heard(run: EncryptedCall) -> None:
    report = run.member.report
    print(
        "frames seen: "
        + str({n: p.frames_seen for n, p in sorted(report.participants.items())})
        + f"; audio rms (mix, c1, p1): {[round(r, 3) for r in run.member.rms]}"
    )
    assert set(report.participants) == {1, 2}
    for participant in report.participants.values():
        assert participant.frames_seen > (DURATION - run.admitted_at_s - 2) * 25
        assert participant.frame_indices[-1] < MEDIA_S * SRC_FPS
    assert min(run.member.rms) > 0.01, run.member.rms


def test_av_offset_per_participant(run: EncryptedCall) -> None:
    """Beeps matched in each participant's own speaker track; the recorder's share of the
    offset is its spread around that browser's constant start skew (the median), held to
    20 ms. On an overloaded machine the source itself slips (``LOADED_SPREAD_P95_MS``):
    there a failing figure says nothing about the recorder and the check is skipped,
    with the figures and the load in the reason. A beep whose picture window the
    recording cuts (admission at its start, the end at its end: fewer than
    ``FULL_WINDOW_FRAMES``) is timed from one side only and is left out: seen once as a
    30-ms outlier at a participant's last beep with no mapping move in the recorder (the
    next run's last beep had 19 frames in its window)."""
    figures: dict[int, dict[str, Any]] = {}
    for number, participant in sorted(run.member.report.participants.items()):
        whole = [b for b in participant.beeps if b.video_frames >= FULL_WINDOW_FRAMES]
        offsets = [b.av_offset_s for b in whole if b.av_offset_s is not None]
        median = float(np.median(offsets)) if offsets else 0.0
        figures[number] = {
            "beeps": len(offsets),
            "offsets_ms": [round(o * 1000) for o in offsets],
            "cut_beeps_ms": [
                round(b.av_offset_s * 1000)
                for b in participant.beeps
                if b.video_frames < FULL_WINDOW_FRAMES and b.av_offset_s is not None
            ],
            "median_ms": round(median * 1000),
            "spread_p95_ms": round(abs_percentile([o - median for o in offsets], 95) * 1000, 1)
            if offsets
            else None,
            "abs_p95_ms": round(abs_percentile(offsets, 95) * 1000, 1) if offsets else None,
            "mapping_moves": run.mapping_moves[number],
        }
    print(f"encrypted browsers' A/V offsets per participant (load {run.load:.1f}/core): {figures}")
    held = all(
        f["beeps"] >= MIN_MATCHED_BEEPS and f["spread_p95_ms"] <= MAX_SPREAD_P95_MS
        for f in figures.values()
    )
    if not held and run.load > OVERLOADED:
        pytest.skip(
            f"load {run.load:.1f} per core: Chromium's fake devices slip, so A/V says nothing "
            f"about the recorder ({figures})"
        )
    assert set(figures) == {1, 2}, figures
    for figure in figures.values():
        assert figure["beeps"] >= MIN_MATCHED_BEEPS, figures
        assert figure["spread_p95_ms"] <= MAX_SPREAD_P95_MS, (run.load, figures)


def test_a_recorder_never_admitted_fails_naming_encrypted_media_and_records_no_noise(
    run: EncryptedCall,
) -> None:
    outsider = run.outsider
    print(
        f"outsider: exit {outsider.result.exit_code!r} ({outsider.result.stop_reason}), "
        f"error {outsider.result.error!r}, outcomes {dict(outsider.outcomes)}, "
        f"audio rms {[round(r, 4) for r in outsider.rms]}"
    )
    assert outsider.result.exit_code == ExitCode.REALTIME
    assert outsider.result.stop_reason == "encrypted"
    assert outsider.result.error is not None and "end-to-end encrypted" in outsider.result.error
    assert outsider.outcomes[Outcome.NOT_MEMBER] > CIPHERTEXT_FRAMES, outsider.outcomes
    assert outsider.outcomes[Outcome.OPENED] == 0 and outsider.outcomes[Outcome.PLAIN] == 0
    assert outsider.first_seen_s == {}, "a barcode in a recording of ciphertext"
    assert outsider.report.participants == {}
    assert max(outsider.rms) < 0.001, outsider.rms
