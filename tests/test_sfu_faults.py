"""Injected SFU faults and how the Realtime client answers each: retry then succeed, or
give up with an error that says what happened."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from hypothesis import given
from hypothesis import strategies as st
from testbed.sfu import LocalSfu
from testbed.sfu.faults import Impairment

from bot.realtime import RealtimeClient, SessionDescription, TrackObject
from bot.realtime.errors import (
    InvalidRequestError,
    SessionGoneError,
    TrackError,
    TransientError,
)

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
QUIET_S = 1.0
"""No audio frame for this long (50 packet intervals) means forwarding stopped."""


@pytest.fixture
async def client(sfu: LocalSfu, sfu_app: Any) -> AsyncIterator[RealtimeClient]:
    async with RealtimeClient(
        sfu_app.app_id, sfu_app.app_secret, base_url=sfu.base_url, max_retries=2
    ) as realtime:
        yield realtime


@dataclass
class Call:
    publisher_id: str
    puller_id: str
    received: MediaStreamTrack


@pytest.fixture
async def call(client: RealtimeClient) -> AsyncIterator[Call]:
    """An aiortc publisher of one audio track ("mic") and a puller receiving it."""
    pcs: list[RTCPeerConnection] = []
    try:
        publisher = RTCPeerConnection()
        pcs.append(publisher)
        mic = publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        session = await client.new_session()
        result = await client.new_tracks(
            session.sessionId,
            [TrackObject(location="local", mid=mic.mid, trackName="mic")],
            SessionDescription(type="offer", sdp=publisher.localDescription.sdp),
        )
        assert result.sessionDescription is not None
        await publisher.setRemoteDescription(
            RTCSessionDescription(sdp=result.sessionDescription.sdp, type="answer")
        )
        puller = RTCPeerConnection()
        pcs.append(puller)
        received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        puller.on("track", received.set_result)
        pull_session = await client.new_session()
        await client.pull_tracks(
            pull_session.sessionId,
            [TrackObject(location="remote", sessionId=session.sessionId, trackName="mic")],
            lambda offer: _answer(puller, offer),
        )
        yield Call(session.sessionId, pull_session.sessionId, await received)
    finally:
        for pc in pcs:
            await pc.close()


async def _answer(pc: RTCPeerConnection, offer: SessionDescription) -> SessionDescription:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return SessionDescription(type="answer", sdp=pc.localDescription.sdp)


async def _pull_mic(client: RealtimeClient, call: Call) -> None:
    """Pull the publisher's mic into a fresh session (no answer needed to see errors)."""
    session = await client.new_session()
    pc = RTCPeerConnection()
    try:
        await client.pull_tracks(
            session.sessionId,
            [TrackObject(location="remote", sessionId=call.publisher_id, trackName="mic")],
            lambda offer: _answer(pc, offer),
        )
    finally:
        await pc.close()


async def _stopped(track: MediaStreamTrack) -> bool:
    """Drain what is buffered; True once no frame arrives for ``QUIET_S``."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        try:
            await asyncio.wait_for(track.recv(), QUIET_S)
        except TimeoutError:
            return True
        except MediaStreamError:
            return True
    return False


# -- HTTP status faults -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "rate_limited"),
        (500, "internal_error"),
        (503, "retryable_transient_error"),
        (425, "session_error"),
    ],
)
async def test_transient_statuses_are_retried_until_success(
    sfu: LocalSfu, client: RealtimeClient, status: int, code: str
) -> None:
    sfu.faults.fail_requests(status, code, operation="new_session", times=2)
    session = await client.new_session()
    assert session.sessionId
    assert sfu.faults.pending == 0  # both failures were met, then the call went through


async def test_persistent_transient_error_gives_up_with_status_and_code(
    sfu: LocalSfu, client: RealtimeClient
) -> None:
    sfu.faults.fail_requests(503, "retryable_transient_error", "overloaded", times=3)
    with pytest.raises(TransientError) as raised:
        await client.new_session()
    assert raised.value.status == 503
    assert raised.value.error_code == "retryable_transient_error"
    assert "create session failed with HTTP 503" in str(raised.value)
    assert sfu.faults.pending == 0  # 1 try + max_retries=2


async def test_overlapping_mutation_406_is_not_retried(
    sfu: LocalSfu, client: RealtimeClient
) -> None:
    session = await client.new_session()
    sfu.faults.fail_requests(
        406,
        "invalid_params",
        "another mutation on this session is in progress",
        operation="new_tracks",
        session_id=session.sessionId,
        times=2,
    )
    with pytest.raises(InvalidRequestError, match="invalid_params"):
        await client.new_tracks(
            session.sessionId, [TrackObject(location="remote", sessionId="x", trackName="y")]
        )
    assert sfu.faults.pending == 1  # one try only


async def test_injected_410_is_session_gone_and_not_retried(
    sfu: LocalSfu, client: RealtimeClient
) -> None:
    session = await client.new_session()
    sfu.faults.fail_requests(410, "session_error", operation="session_state", times=2)
    with pytest.raises(SessionGoneError):
        await client.session_state(session.sessionId)
    assert sfu.faults.pending == 1
    sfu.faults.clear()
    assert (await client.session_state(session.sessionId)).tracks == []


async def test_rules_only_match_their_operation_and_session(
    sfu: LocalSfu, client: RealtimeClient
) -> None:
    first = await client.new_session()
    second = await client.new_session()
    sfu.faults.fail_requests(410, "session_error", session_id=first.sessionId)
    await client.session_state(second.sessionId)
    assert sfu.faults.pending == 1
    with pytest.raises(SessionGoneError):
        await client.session_state(first.sessionId)


# -- session and track actions ------------------------------------------------------


async def test_expired_session_answers_410_and_its_tracks_are_gone(
    sfu: LocalSfu, client: RealtimeClient, call: Call
) -> None:
    sfu.faults.expire_session(call.publisher_id)
    with pytest.raises(SessionGoneError, match="HTTP 410"):
        await client.session_state(call.publisher_id)
    with pytest.raises(TrackError) as raised:
        await _pull_mic(client, call)
    assert [f.errorCode for f in raised.value.failures] == ["not_found_track_error"]
    assert await _stopped(call.received)


@pytest.mark.parametrize("code", ["not_found_track_error", "empty_track_error"])
async def test_track_error_fails_the_pull_once_then_it_succeeds(
    sfu: LocalSfu, client: RealtimeClient, call: Call, code: Any
) -> None:
    sfu.faults.fail_track("mic", code, session_id=call.publisher_id)
    with pytest.raises(TrackError) as raised:
        await _pull_mic(client, call)
    assert [f.errorCode for f in raised.value.failures] == [code]
    assert "track_errors" in str(raised.value) and code in str(raised.value)
    await _pull_mic(client, call)  # the fault was used up


async def test_stop_forwarding_stops_packets_but_the_track_looks_active(
    sfu: LocalSfu, client: RealtimeClient, call: Call
) -> None:
    await asyncio.wait_for(call.received.recv(), WAIT_S)
    sfu.faults.stop_forwarding(call.publisher_id, "mic")
    assert await _stopped(call.received)
    state = await client.session_state(call.puller_id)
    assert [t.status for t in state.tracks] == ["active"]


async def test_collected_track_stops_and_cannot_be_pulled(
    sfu: LocalSfu, client: RealtimeClient, call: Call
) -> None:
    await asyncio.wait_for(call.received.recv(), WAIT_S)
    sfu.faults.collect_track(call.publisher_id, "mic")
    assert await _stopped(call.received)
    with pytest.raises(TrackError) as raised:
        await _pull_mic(client, call)
    assert [f.errorCode for f in raised.value.failures] == ["not_found_track_error"]


async def test_actions_on_unknown_targets_raise(sfu: LocalSfu) -> None:
    with pytest.raises(LookupError):
        sfu.faults.expire_session("0" * 32)
    with pytest.raises(LookupError):
        sfu.faults.collect_track("0" * 32, "mic")
    with pytest.raises(ValueError, match="HTTP error status"):
        sfu.faults.fail_requests(200, "ok")


# -- the HTTP admin route -----------------------------------------------------------


async def test_admin_route_needs_the_secret_and_applies_faults(
    sfu: LocalSfu, sfu_app: Any, client: RealtimeClient, call: Call
) -> None:
    admin = sfu.base_url.removesuffix("/v1") + "/admin/faults"
    auth = {"Authorization": f"Bearer {sfu_app.app_secret}"}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        denied = await http.post(admin, json={"action": "expire_session", "sessionId": "x"})
        assert denied.status_code == 401
        bad = await http.post(admin, json={"action": "explode"}, headers=auth)
        assert (bad.status_code, bad.json()["errorCode"]) == (406, "invalid_params")
        missing = await http.post(
            admin, json={"action": "expire_session", "sessionId": "0" * 32}, headers=auth
        )
        assert missing.status_code == 404
        added = await http.post(
            admin,
            json={"action": "fail_requests", "status": 503, "errorCode": "backend_error"},
            headers=auth,
        )
        assert added.json() == {"pending": 1}
        await client.session_state(call.puller_id)  # retried past the 503
        assert sfu.faults.pending == 0
        expired = await http.post(
            admin, json={"action": "expire_session", "sessionId": call.publisher_id}, headers=auth
        )
        assert expired.status_code == 200
        with pytest.raises(SessionGoneError):
            await client.session_state(call.publisher_id)
        await http.post(
            admin,
            json={"action": "fail_requests", "status": 429, "errorCode": "rate_limited"},
            headers=auth,
        )
        cleared = await http.delete(admin, headers=auth)
        assert cleared.json() == {"pending": 0}


# -- the downlink impairment --------------------------------------------------------


@given(
    st.floats(0.0, 0.2),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
)
def test_downlink_holds_stay_within_delay_plus_minus_jitter(
    delay: float, jitter_share: float, reorder: float, seed: int
) -> None:
    impairment = Impairment(delay, delay * jitter_share, reorder)
    rng = random.Random(seed)
    holds = [impairment.hold(rng) for _ in range(200)]
    low, high = delay - delay * jitter_share, delay + delay * jitter_share
    assert all(h == 0.0 or low - 1e-9 <= h <= high + 1e-9 for h in holds)
    if reorder == 0.0 and low > 0:
        assert min(holds) > 0  # only the reorder share leaves at once


def test_corrupt_share_garbles_copies_and_leaves_the_rest_alone() -> None:
    impairment = Impairment(corrupt=0.25)
    rng = random.Random(7)
    payload = bytes(range(200))
    out = [impairment.mangle(payload, rng) for _ in range(2000)]
    garbled = sum(o != payload for o in out)
    assert 0.2 * 2000 < garbled < 0.3 * 2000
    assert all(len(o) == len(payload) for o in out) and payload == bytes(range(200))


def test_loss_share_drops_about_that_share() -> None:
    rng = random.Random(11)
    lost = sum(Impairment(loss=0.05).lost(rng) for _ in range(4000))
    assert 0.035 * 4000 < lost < 0.065 * 4000
    assert not any(Impairment().lost(rng) for _ in range(100))


async def test_impairment_is_set_and_cleared_and_refuses_nonsense(sfu: LocalSfu) -> None:
    sfu.faults.impair_downlink(0.05, 0.03, 0.05)
    assert sfu.faults.downlink == Impairment(0.05, 0.03, 0.05)
    with pytest.raises(ValueError, match="jitter must not exceed"):
        sfu.faults.impair_downlink(0.01, 0.03)
    with pytest.raises(ValueError, match="reorder, corrupt and loss"):
        sfu.faults.impair_downlink(corrupt=1.5)
    with pytest.raises(ValueError, match="reorder, corrupt and loss"):
        sfu.faults.impair_downlink(loss=-0.1)
    sfu.faults.impair_downlink(loss=0.05)
    assert sfu.faults.downlink == Impairment(loss=0.05)
    sfu.faults.impair_downlink()
    assert sfu.faults.downlink is None
