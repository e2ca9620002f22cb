"""An end-to-end encrypted call, recorded: publishers encrypt with Orange Meets' own worker.

Two synthetic publishers (barcode + beep) send every encoded frame through Orange's MLS
worker (WASM in Node, members "alice" and "bob") before packetization, as Orange's
encoded-frame transform does; the local SFU forwards ciphertext. The recorder runs with
its control API: until it is admitted nothing it receives can be opened, and nothing is
decoded; the orchestrator then fetches its KeyPackage, Alice commits its Add, the
Welcome goes back through the API, and from then on the MP4 shows both participants. A
third member joining mid-call changes the epoch without a hole in the picture. A
recorder that is never admitted fails with exit 4 naming encrypted media.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from testbed.analysis import _scan_video, abs_percentile, analyze_recording
from testbed.orange import OrangeWorkers, interop_dir, of_type
from testbed.sfu import LocalSfu

from bot.config import ControlSettings, E2eeSettings, Participant, TrackRef
from bot.control.run import ControlledRecording
from bot.e2ee.frames import Outcome
from bot.e2ee.session import safety_number_text
from bot.exitcodes import ExitCode
from bot.realtime import RealtimeClient
from bot.recording import RecordingResult
from bot.synthetic.participant import SyntheticParticipant
from tests.e2e import slots
from tests.faults import wait_until
from tests.test_media_e2e import settings_for

FOLDER = interop_dir()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        FOLDER is None,
        reason="Orange's MLS worker (../shared/interop/orange-e2ee) or node is absent",
    ),
]
SECRET = "e2ee-control-secret-0123456789abcdef"
LEAD = 0.8
"""Seconds the publishers encode ahead of each frame's send time: encrypting through
Orange's worker (a round trip to Node per frame) must never make a frame late, or the
A/V figure would measure the test's publisher instead of the recorder."""
AUDIENCE = "consultation-recorder"


@asynccontextmanager
async def _running(session: ControlledRecording) -> AsyncIterator[asyncio.Task[RecordingResult]]:
    """The recording, stopped and awaited if the test fails half-way (never left running)."""
    task = asyncio.create_task(session.run())
    try:
        yield task
    finally:
        if not task.done():
            session.recorder.stop("test_failed")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)


@pytest.fixture
def orange() -> Iterator[OrangeWorkers]:
    assert FOLDER is not None
    with OrangeWorkers(FOLDER) as workers:
        workers.new("alice")
        workers.event("alice", "initializeAndCreateGroup", id="alice")
        _member_joins(workers, "bob")
        yield workers


def _member_joins(orange: OrangeWorkers, name: str) -> bytes:
    """``name`` joins through Alice as Orange's room relays it; returns Alice's Commit."""
    orange.new(name)
    shared = of_type(orange.event(name, "initialize", id=name), "shareKeyPackage")[0]
    outputs = orange.event("alice", "userJoined", keyPkg=shared["keyPkg"])
    welcome = of_type(outputs, "sendMlsWelcome")[0]
    commit = of_type(outputs, "sendMlsMessage")[0]["msg"]
    orange.event(
        name, "recvMlsWelcome", welcome=welcome["welcome"], rtree=welcome["rtree"], senderId="alice"
    )
    for other in ("bob",) if name != "bob" else ():
        orange.event(other, "recvMlsMessage", msg=commit, senderId="alice")
    return bytes(commit)


def _token() -> str:
    now = int(time.time())
    claims = {"sub": "orchestrator-1", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims |= {"consultation_id": "c-media", "role": "orchestrator"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _participant(pid: str, source: SyntheticParticipant) -> Participant:
    refs = source.track_refs
    return Participant(
        id=pid, role=source.role, tracks=tuple(TrackRef.parse(r) for r in refs.values())
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _seal(orange: OrangeWorkers, member: str) -> Any:
    """Encrypt a frame as ``member``'s Orange worker does, before it is packetized."""
    return lambda data, kind: orange.encrypt(member, data, kind)


async def _publishers(client: RealtimeClient, orange: OrangeWorkers) -> list[SyntheticParticipant]:
    sources = [
        SyntheticParticipant(
            client, number=1, role="clinician", fps=25, seal=_seal(orange, "alice"), lead_s=LEAD
        ),
        SyntheticParticipant(
            client, number=2, role="patient", fps=25, seal=_seal(orange, "bob"), lead_s=LEAD
        ),
    ]
    for source in sources:
        await source.start()
    return sources


def _recording(
    sfu: LocalSfu,
    tmp_path: Path,
    sources: list[SyntheticParticipant],
    layout: tuple[str, ...] = (),
    mode: str = "composite",
    **e2ee: Any,
) -> ControlledRecording:
    participants = (_participant("c1", sources[0]), _participant("p1", sources[1]))
    settings = settings_for(
        sfu, tmp_path, participants=participants, max_duration=16.0, layout=layout, mode=mode
    )
    control = ControlSettings(enabled=True, port=0, jwt_secret=SECRET, jwt_audience=AUDIENCE)
    update = {"control": control, "e2ee": E2eeSettings(**e2ee)}
    return ControlledRecording(settings.model_copy(update=update), progress=False)


async def test_an_encrypted_call_is_recorded_once_the_recorder_is_admitted(
    sfu: LocalSfu, tmp_path: Path, orange: OrangeWorkers
) -> None:
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        sources = await _publishers(client, orange)
        session = _recording(sfu, tmp_path, sources, mode="both")
        recorder = session.recorder
        running = asyncio.create_task(session.run())
        await asyncio.wait_for(recorder.started.wait(), 30)
        frames = recorder.e2ee.frames
        await wait_until(lambda: frames.outcomes[Outcome.NOT_MEMBER] > 50, 20, "ciphertext arrives")
        assert session.server is not None
        auth = {"Authorization": f"Bearer {_token()}"}
        async with httpx.AsyncClient(base_url=session.server.url, headers=auth, timeout=10) as api:
            answer = await api.post("/v1/e2ee/key-package", json={"identity": "recorder"})
            assert answer.status_code == 200, answer.text
            package = base64.b64decode(answer.json()["key_package"])
            outputs = orange.event("alice", "userJoined", keyPkg=package)
            welcome = of_type(outputs, "sendMlsWelcome")[0]
            orange.event(
                "bob",
                "recvMlsMessage",
                msg=of_type(outputs, "sendMlsMessage")[0]["msg"],
                senderId="alice",
            )
            body = {
                "welcome": base64.b64encode(welcome["welcome"]).decode(),
                "ratchet_tree": base64.b64encode(welcome["rtree"]).decode(),
            }
            joined = (await api.post("/v1/e2ee/welcome", json=body)).json()
            admitted = recorder.status().duration_s
            alice_number = of_type(outputs, "newSafetyNumber")[0]["hash"]
            assert joined["accepted"] and joined["safety_number"] == safety_number_text(
                alice_number
            )
            await asyncio.sleep(
                max(0.0, admitted + 4 - recorder.status().duration_s)
            )  # schedules the next step
            commit = _member_joins(orange, "carol")  # a third member: a new epoch mid-call
            changed = (
                await api.post(
                    "/v1/e2ee/messages", json={"message": base64.b64encode(commit).decode()}
                )
            ).json()
            epoch_change = recorder.status().duration_s
            assert changed["new_epoch"] and changed["epoch"] == joined["epoch"] + 1
            status = (await api.get("/v1/status")).json()
            assert status["e2ee"]["joined"] and status["e2ee"]["members"] == 4
            await asyncio.sleep(max(0.0, epoch_change + 3 - recorder.status().duration_s))
            # Carol leaves: Alice commits her Remove, a second epoch change mid-call.
            removal = of_type(orange.event("alice", "userLeft", id="carol"), "sendMlsMessage")
            orange.event("bob", "recvMlsMessage", msg=removal[0]["msg"], senderId="alice")
            left = await api.post("/v1/e2ee/messages", json={"message": _b64(removal[0]["msg"])})
            second_change = recorder.status().duration_s
            assert left.json()["members"] == 3
        result = await asyncio.wait_for(running, 60)
        for source in sources:
            await source.stop()

    assert (
        result.exit_code == ExitCode.OK and result.path is not None and result.upload is not None
    ), result.error
    manifest = result.upload.manifest
    assert manifest.e2ee is not None
    assert [c.kind for c in manifest.e2ee.changes] == ["joined", "epoch", "epoch"]
    assert manifest.e2ee.frames["not_member"] > 50 and manifest.e2ee.frames["opened"] > 200

    observations, _, _, _ = _scan_video(result.path, slots(2))
    for number in (1, 2):
        seen = np.array(sorted(o.time_s for o in observations if o.participant == number))
        # Frames the publishers encrypted before they processed the recorder's Add (up to
        # LEAD seconds ahead) stay unreadable, and a picture starts at the next keyframe.
        assert seen.min() == pytest.approx(admitted + LEAD / 2 + 0.5, abs=1.5), (
            f"participant {number} before admission"
        )
        for change in (epoch_change, second_change):
            around = seen[(seen > change - 2) & (seen < change + 2)]
            assert np.diff(around).max() < 1.0, f"participant {number}: a hole at {change:.1f} s"
    report = analyze_recording(result.path, slots(2), src_fps=25)
    for number in (1, 2):
        offsets = report.participants[number].av_offsets()
        assert len(offsets) >= 4 and abs_percentile(offsets, 95) <= 0.020, offsets
    # The tracks as they arrived hold what the participants saw and heard (opened frames,
    # from the admission on), never ciphertext: Debian's ffmpeg decodes them cleanly.
    assert len(manifest.archive) == 4
    for track in manifest.archive:
        assert track.object_key is not None and track.first_s is not None
        assert track.first_s > admitted, "nothing archived before the recorder could open it"
        path = tmp_path / "out" / track.object_key
        decoded = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert decoded.stderr == "", decoded.stderr[:500]


async def test_a_recorder_never_admitted_fails_naming_encrypted_media(
    sfu: LocalSfu, tmp_path: Path, orange: OrangeWorkers
) -> None:
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        sources = await _publishers(client, orange)
        session = _recording(sfu, tmp_path, sources, join_timeout=4.0)
        result = await asyncio.wait_for(session.run(), 60)
        for source in sources:
            await source.stop()
    assert result.exit_code == ExitCode.REALTIME and result.stop_reason == "encrypted"
    assert result.error is not None and "end-to-end encrypted" in result.error
    assert result.path is not None
    observations, _, _, _ = _scan_video(result.path, slots(2))
    assert not observations, "nothing but black: ciphertext was never decoded"
    assert result.upload is not None and result.upload.manifest.e2ee is not None
    assert result.upload.manifest.e2ee.frames["not_member"] > 50


async def test_outliving_the_call_it_admits_a_newcomer_whose_media_is_recorded(
    sfu: LocalSfu, tmp_path: Path, orange: OrangeWorkers
) -> None:
    """Alice and Bob, who were in the group before the recorder, leave one after the other
    (two more epochs: Bob commits Alice's Remove, the recorder Bob's); the recorder is then
    the group's committer: it admits Dave with its own Commit and Welcome, Orange's worker
    accepts them, and Dave's encrypted media is recorded."""
    async with RealtimeClient(
        "test-app", "test-secret-0123456789abcdef", base_url=sfu.base_url
    ) as client:
        sources = await _publishers(client, orange)
        # A third cell: the departed keep theirs, reserved should they come back.
        session = _recording(sfu, tmp_path, sources, layout=("clinician", "patient", "clinician"))
        async with _running(session) as running:
            await asyncio.wait_for(session.recorder.started.wait(), 30)
            assert session.server is not None
            auth = {"Authorization": f"Bearer {_token()}"}
            async with httpx.AsyncClient(
                base_url=session.server.url, headers=auth, timeout=10
            ) as api:
                await _admit_recorder(api, orange)
                await _everyone_from_before_leaves(api, orange, sources)
                dave = await _recorder_admits_dave(api, orange, client)
                dave_from = session.recorder.status().duration_s
            result = await asyncio.wait_for(running, 60)
            await dave.stop()

    assert result.exit_code == ExitCode.OK and result.path is not None, result.error
    assert result.upload is not None and result.upload.manifest.e2ee is not None
    kinds = [c.kind for c in result.upload.manifest.e2ee.changes]
    assert kinds == ["joined", "epoch", "committed", "committed"]
    observations, _, _, _ = _scan_video(result.path, slots(3))
    seen = sorted(o.time_s for o in observations if o.participant == 3)
    assert len(seen) > 25 and seen[0] == pytest.approx(dave_from, abs=2.0)


async def _admit_recorder(api: httpx.AsyncClient, orange: OrangeWorkers) -> None:
    package = (await api.post("/v1/e2ee/key-package", json={"identity": "recorder"})).json()
    outputs = orange.event("alice", "userJoined", keyPkg=base64.b64decode(package["key_package"]))
    welcome = of_type(outputs, "sendMlsWelcome")[0]
    commit = of_type(outputs, "sendMlsMessage")[0]["msg"]
    orange.event("bob", "recvMlsMessage", msg=commit, senderId="alice")
    body = {"welcome": _b64(welcome["welcome"]), "ratchet_tree": _b64(welcome["rtree"])}
    assert (await api.post("/v1/e2ee/welcome", json=body)).json()["accepted"]


async def _everyone_from_before_leaves(
    api: httpx.AsyncClient, orange: OrangeWorkers, sources: list[SyntheticParticipant]
) -> None:
    await sources[0].stop()  # Alice leaves: Bob (there before the recorder) commits
    await api.delete("/v1/participants/c1")
    removal = of_type(orange.event("bob", "userLeft", id="alice"), "sendMlsMessage")
    assert (await api.delete("/v1/e2ee/members/alice")).json()["committed"] is False
    moved = await api.post("/v1/e2ee/messages", json={"message": _b64(removal[0]["msg"])})
    assert moved.json()["members"] == 2
    await sources[1].stop()  # Bob leaves: nobody from before is left, the recorder commits
    await api.delete("/v1/participants/p1")
    left = (await api.delete("/v1/e2ee/members/bob")).json()
    assert left["committed"] and left["committer"] and left["members"] == 1, left
    await api.get("/v1/e2ee/outbox")  # the Remove: nobody is left to send it to


async def _recorder_admits_dave(
    api: httpx.AsyncClient, orange: OrangeWorkers, client: RealtimeClient
) -> SyntheticParticipant:
    orange.new("dave")
    shared = of_type(orange.event("dave", "initialize", id="dave"), "shareKeyPackage")[0]
    body = {"key_package": _b64(shared["keyPkg"])}
    added = (await api.post("/v1/e2ee/members", json=body)).json()
    assert added["committed"] and added["members"] == 2, added
    sent = {m["type"]: m for m in (await api.get("/v1/e2ee/outbox")).json()["messages"]}
    joined = orange.event(
        "dave",
        "recvMlsWelcome",
        welcome=base64.b64decode(sent["sendMlsWelcome"]["welcome"]),
        rtree=base64.b64decode(sent["sendMlsWelcome"]["rtree"]),
        senderId="recorder",
    )
    number = of_type(joined, "newSafetyNumber")[0]["hash"]
    assert safety_number_text(number) == added["safety_number"]
    dave = SyntheticParticipant(
        client, number=3, role="clinician", fps=25, seal=_seal(orange, "dave"), lead_s=LEAD
    )
    await dave.start()
    tracks = {"participant_id": "d1", "role": "clinician", "tracks": list(dave.track_refs.values())}
    added_tracks = await api.post("/v1/tracks", json=tracks)
    assert added_tracks.status_code == 200, added_tracks.text
    return dave
