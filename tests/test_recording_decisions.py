"""The recorder's decisions without a network: stop policy, dead path, rebuild, re-pull,
slots. Each runs in milliseconds with injected collaborators; the end-to-end tests show
the same decisions against the local SFU."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from bot.config import (
    ConfigError,
    Participant,
    RecordingSettings,
    Settings,
    StorageSettings,
    TrackRef,
)
from bot.exitcodes import ExitCode
from bot.realtime import RealtimeClient, RealtimeError, TrackResult
from bot.recording import Recorder
from bot.recording.roster import Roster
from bot.recording.stop_policy import StopPolicy, StopSignals, failure_of
from bot.recording.supervisor import (
    PROBE_INTERVAL,
    PathWatch,
    TransportSupervisor,
    rebuild_delay,
    tracks_to_repull,
)
from bot.rtc.subscriber import FailedTrack, PulledTrack

CALM = StopSignals(
    elapsed_s=10.0,
    silent_for_s=0.1,
    has_tracks=True,
    connected=True,
    pipeline_alive=True,
    disk_limit=False,
)


def _policy() -> StopPolicy:
    return StopPolicy(
        RecordingSettings(max_duration=60.0, silence_timeout=20.0, connect_timeout=15.0)
    )


def _participant(pid: str, role: str = "patient", *tracks: str) -> Participant:
    return Participant(id=pid, role=role, tracks=tracks or (f"s-{pid}/mic",))


# -- stop policy ---------------------------------------------------------------------


def test_a_calm_recording_goes_on() -> None:
    assert _policy().reason(CALM) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"elapsed_s": 60.0}, "duration_limit"),
        ({"silent_for_s": 20.0}, "silence_timeout"),
        ({"connected": False, "elapsed_s": 15.0}, "connect_timeout"),
        ({"pipeline_alive": False}, "media_failed"),
        ({"disk_limit": True}, "disk_limit"),
        ({"unreadable_for_s": 30.0}, "encrypted"),
    ],
)
def test_each_stop_rule(change: dict[str, object], reason: str) -> None:
    assert _policy().reason(replace(CALM, **change)) == reason  # type: ignore[arg-type]


def test_not_connected_is_only_a_failure_after_the_connect_timeout_and_with_tracks() -> None:
    policy = _policy()
    assert policy.reason(replace(CALM, connected=False, elapsed_s=14.9)) is None
    waiting = replace(CALM, connected=False, has_tracks=False, elapsed_s=30.0)
    assert policy.reason(waiting) is None  # nobody to connect for yet (control API joins)


def test_the_duration_limit_wins_over_everything_else() -> None:
    everything = StopSignals(60.0, 99.0, True, False, False, True)
    assert _policy().reason(everything) == "duration_limit"


def test_failures_have_exit_codes_and_normal_ends_have_none() -> None:
    assert failure_of("disk_limit") is not None
    assert failure_of("disk_limit")[0] == ExitCode.STORAGE  # type: ignore[index]
    assert failure_of("connect_timeout")[0] == ExitCode.REALTIME  # type: ignore[index]
    assert failure_of("media_failed")[0] == ExitCode.MEDIA  # type: ignore[index]
    encrypted = failure_of("encrypted")
    assert encrypted is not None and encrypted[0] == ExitCode.REALTIME
    assert "end-to-end encrypted" in encrypted[1] and "e2ee.join_timeout" in encrypted[1]
    for normal in ("duration_limit", "silence_timeout", "sigterm", "stop_requested"):
        assert failure_of(normal) is None


# -- dead path -----------------------------------------------------------------------


def test_a_path_is_dead_only_after_dead_after_seconds_without_an_answer() -> None:
    watch = PathWatch(dead_after=2.0, now=0.0)
    t = 0.0
    verdicts = []
    while t < 3.0:
        t += PROBE_INTERVAL
        verdicts.append(watch.dead(asked=t - PROBE_INTERVAL, now=t, alive=False, failed=False))
    assert verdicts == [False, False, False, True, True, True]


def test_an_answer_or_a_starved_loop_resets_the_watch() -> None:
    watch = PathWatch(dead_after=2.0, now=0.0)
    assert not watch.dead(asked=1.0, now=1.5, alive=False, failed=False)
    assert not watch.dead(asked=1.5, now=2.0, alive=True, failed=False)
    assert not watch.dead(asked=2.0, now=3.9, alive=False, failed=False)  # starved: 1.9 s
    assert not watch.dead(asked=3.9, now=5.8, alive=False, failed=False)  # starved again
    assert not watch.dead(asked=5.8, now=6.3, alive=False, failed=False)
    assert watch.dead(asked=7.3, now=7.8, alive=False, failed=False)


def test_a_failed_connection_is_dead_at_once_and_unknown_is_alive() -> None:
    watch = PathWatch(dead_after=60.0, now=0.0)
    assert not watch.dead(asked=0.0, now=0.5, alive=None, failed=False)
    assert watch.dead(asked=0.5, now=1.0, alive=None, failed=True)


def test_rebuild_backoff_doubles_to_its_ceiling() -> None:
    assert [rebuild_delay(a) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


# -- re-pull -------------------------------------------------------------------------


def test_only_failures_that_can_pass_are_pulled_again_grouped_by_participant() -> None:
    c1, p1 = _participant("c1", "clinician"), _participant("p1")
    refs = [TrackRef.parse(r) for r in ("s1/mic", "s1/cam", "s2/mic", "s2/cam")]
    failed = {
        refs[0]: FailedTrack(c1, 0, "not_found_track_error", None),
        refs[1]: FailedTrack(c1, 0, "codec_not_supported", "no decoder"),
        refs[2]: FailedTrack(p1, 1, "empty_track_error", None),
        refs[3]: FailedTrack(p1, 1, "not_found_track_error", None),
    }
    assert tracks_to_repull(failed) == {"c1": [refs[0]], "p1": [refs[2], refs[3]]}


# -- roster --------------------------------------------------------------------------


def test_a_returning_participant_gets_its_slot_back_and_roles_fill_in_order() -> None:
    roster = Roster(["clinician", "patient", "patient"])
    assert roster.place(_participant("c1", "clinician")) == 0
    assert roster.place(_participant("p1")) == 1
    assert roster.place(_participant("p2")) == 2
    assert roster.remove("p1") == 1
    assert "p1" not in roster
    with pytest.raises(ConfigError, match="no free cell for a 'patient'"):
        roster.place(_participant("p3"))  # p1's slot stays reserved for p1
    assert roster.place(_participant("p1")) == 1
    assert [p.id for p in roster.ever()] == ["c1", "p1", "p2"]
    assert [(p.id, slot) for p, slot in roster.present()] == [("c1", 0), ("p2", 2), ("p1", 1)]


# -- rebuild -------------------------------------------------------------------------


class FakeTransport:
    """Stands in for a Subscriber: answers probes and pulls as scripted."""

    def __init__(self, *, opens: bool = True, probe: bool | None = False) -> None:
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self.tracks: list[PulledTrack] = []
        self.failed_tracks: dict[TrackRef, FailedTrack] = {}
        self.pulled: list[tuple[str, int]] = []
        self.pulled_any = asyncio.Event()
        self.closed = False
        self._opens = opens
        self.answer = probe

    async def open(self) -> str:
        if not self._opens:
            raise RealtimeError("session refused", status=503)
        self.connected.set()
        return "session"

    async def pull(self, participant: Participant, slot: int) -> list[TrackResult]:
        self.pulled.append((participant.id, slot))
        self.pulled_any.set()
        return []

    async def probe(self, answer_within: float = 1.0) -> bool | None:
        return self.answer

    async def close(self) -> None:
        self.closed = True


def _supervisor(script: list[FakeTransport], roster: Roster) -> TransportSupervisor[FakeTransport]:
    made = iter(script)
    return TransportSupervisor(
        lambda: next(made),
        roster,
        dead_after=1.0,
        connect_within=1.0,
        stopping=lambda: False,
    )


async def test_a_rebuild_pulls_everyone_present_into_their_slots_on_a_new_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bot.recording.supervisor.REBUILD_BACKOFF_FIRST", 0.0)
    roster = Roster(["clinician", "patient"])
    roster.place(_participant("c1", "clinician"))
    roster.place(_participant("p1"))
    old, refused, new = FakeTransport(), FakeTransport(opens=False), FakeTransport()
    supervisor = _supervisor([old, refused, new], roster)
    await supervisor.rebuild()
    assert supervisor.current is new and supervisor.rebuilds == 1
    assert new.pulled == [("c1", 0), ("p1", 1)]
    assert old.closed and refused.closed and not new.closed


async def test_a_path_that_comes_back_during_the_rebuild_is_kept() -> None:
    roster = Roster(["clinician"])
    old = FakeTransport(probe=True)
    supervisor = _supervisor([old], roster)
    await supervisor.rebuild()
    assert supervisor.current is old and supervisor.rebuilds == 0 and not old.closed


async def test_the_repull_loop_asks_again_for_the_tracks_that_can_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bot.recording.supervisor.REPULL_FIRST", 0.0)
    roster = Roster(["clinician", "patient"])
    patient = _participant("p1", "patient", "s2/mic", "s2/cam")
    transport = FakeTransport()
    transport.failed_tracks = {
        TrackRef.parse("s2/mic"): FailedTrack(patient, 1, "codec_not_supported", "no decoder"),
        TrackRef.parse("s2/cam"): FailedTrack(patient, 1, "not_found_track_error", None),
    }
    supervisor = _supervisor([transport], roster)
    task = asyncio.create_task(supervisor.repull())
    try:
        await asyncio.wait_for(transport.pulled_any.wait(), 5.0)
    finally:
        task.cancel()
    assert transport.pulled[0] == ("p1", 1)


async def test_a_recorder_with_an_injected_client_fails_before_any_file_on_a_wrong_secret(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(401, json={"errorCode": "unauthorized"})

    settings = Settings(
        recording=RecordingSettings(
            consultation_id="c-1", participants=(_participant("p1", "patient", "s1/mic"),)
        ),
        storage=StorageSettings(backend="local", spool_dir=tmp_path / "spool"),
    )
    client = RealtimeClient(
        "app", "secret", base_url="https://rtc.example/v1", transport=httpx.MockTransport(refuse)
    )
    recorder = Recorder(settings, client=client)
    result = await recorder.run()
    assert result.exit_code == ExitCode.REALTIME_AUTH
    assert asked == ["/v1/apps/app/sessions/new"]
    # No media file, no spool: only the audit trail, which says why.
    assert result.path is None
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [recorder.audit.path.name]
    last = json.loads(recorder.audit.path.read_text().splitlines()[-1])
    assert last["event"] == "recording.failed" and last["exit_code"] == ExitCode.REALTIME_AUTH
