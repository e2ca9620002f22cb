"""``bot.realtime.RealtimeClient``: every endpoint against the local SFU, and its retry,
timeout, size and secrecy rules with ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import structlog
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from testbed.sfu import LocalSfu

from bot.realtime import (
    AppNotFoundError,
    AuthenticationError,
    InvalidRequestError,
    RealtimeClient,
    RealtimeError,
    SessionDescription,
    SessionGoneError,
    TrackError,
    TrackObject,
    TransientError,
    UpdateTrackObject,
)

pytestmark = pytest.mark.timeout(60)

SECRET = "super-secret-app-token-4242"


# --- against the local SFU --------------------------------------------------------------


@pytest.fixture
async def client(sfu: LocalSfu, sfu_app: Any) -> AsyncIterator[RealtimeClient]:
    async with RealtimeClient(sfu_app.app_id, sfu_app.app_secret, base_url=sfu.base_url) as c:
        yield c


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


def _local(pc: RTCPeerConnection) -> SessionDescription:
    return SessionDescription(type=pc.localDescription.type, sdp=pc.localDescription.sdp)


async def _publish(client: RealtimeClient, pcs: list[RTCPeerConnection]) -> str:
    session = await client.new_session()
    pc = RTCPeerConnection()
    pcs.append(pc)
    mic = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    cam = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    result = await client.new_tracks(
        session.sessionId,
        [
            TrackObject(location="local", mid=mic.mid, trackName="mic"),
            TrackObject(location="local", mid=cam.mid, trackName="cam"),
        ],
        _local(pc),
    )
    assert [t.trackName for t in result.tracks] == ["mic", "cam"]
    assert result.sessionDescription is not None
    await pc.setRemoteDescription(
        RTCSessionDescription(sdp=result.sessionDescription.sdp, type="answer")
    )
    return session.sessionId


def _answerer(
    pc: RTCPeerConnection,
) -> Callable[[SessionDescription], Awaitable[SessionDescription]]:
    async def answer(offer: SessionDescription) -> SessionDescription:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return _local(pc)

    return answer


async def test_every_endpoint_against_the_local_sfu(
    client: RealtimeClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher = await _publish(client, pcs)
    puller = (await client.new_session()).sessionId
    pc = RTCPeerConnection()
    pcs.append(pc)
    pulled = await client.pull_tracks(
        puller,
        [
            TrackObject(location="remote", sessionId=publisher, trackName="mic"),
            TrackObject(location="remote", sessionId=publisher, trackName="nobody"),
        ],
        _answerer(pc),
    )
    mic, missing = pulled.tracks
    assert not mic.failed and mic.mid
    # A partial failure stays on the result instead of raising.
    assert missing.failed and missing.errorCode == "not_found_track_error" and missing.mid == ""

    state = await client.session_state(puller)
    # "initializing" until the first packet is forwarded to the puller, as on Cloudflare.
    assert [(t.location, t.trackName, t.status) for t in state.tracks] in (
        [("remote", "mic", "initializing")],
        [("remote", "mic", "active")],
    )
    assert mic.mid is not None
    updated = await client.update_tracks(
        puller, [UpdateTrackObject(mid=mic.mid, sessionId=publisher, trackName="mic")]
    )
    assert not updated.tracks[0].failed
    bad_update = await client.update_tracks(puller, [UpdateTrackObject(mid="77")])
    assert bad_update.tracks[0].errorCode == "update_track_error"

    closed = await client.close_tracks(puller, [mic.mid, "77"])
    assert not closed.tracks[0].failed
    assert closed.tracks[1].errorCode == "close_track_error"
    state = await client.session_state(puller)
    assert state.tracks[0].status == "inactive"


async def test_pull_where_every_track_fails_raises_track_error(client: RealtimeClient) -> None:
    puller = (await client.new_session()).sessionId
    pc = RTCPeerConnection()
    try:
        with pytest.raises(TrackError) as caught:
            await client.pull_tracks(
                puller,
                [TrackObject(location="remote", sessionId="a" * 32, trackName="cam")],
                _answerer(pc),
            )
    finally:
        await pc.close()
    assert caught.value.failures[0].errorCode == "not_found_track_error"


async def test_new_tracks_keeps_per_track_errors(client: RealtimeClient) -> None:
    puller = (await client.new_session()).sessionId
    result = await client.new_tracks(
        puller, [TrackObject(location="remote", sessionId="b" * 32, trackName="cam")]
    )
    assert result.tracks[0].failed
    assert result.tracks[0].mid == ""


async def test_gone_session_and_bad_credentials_map_to_their_errors(
    sfu: LocalSfu, sfu_app: Any, client: RealtimeClient
) -> None:
    with pytest.raises(SessionGoneError):
        await client.session_state("c" * 32)
    async with RealtimeClient(sfu_app.app_id, SECRET, base_url=sfu.base_url) as wrong:
        with pytest.raises(AuthenticationError) as caught:
            await wrong.new_session()
        assert SECRET not in str(caught.value)
    async with RealtimeClient("no-such-app", SECRET, base_url=sfu.base_url) as unknown:
        with pytest.raises(AppNotFoundError):
            await unknown.new_session()
    with pytest.raises(InvalidRequestError) as invalid:
        await client.renegotiate(
            (await client.new_session()).sessionId, SessionDescription(type="answer", sdp="v=0")
        )
    assert invalid.value.status == 400


# --- retry policy and limits, with a mock transport -------------------------------------


class Recorder:
    """A mock Cloudflare that answers from a script and counts attempts."""

    def __init__(self, responder: Callable[[httpx.Request], httpx.Response]) -> None:
        self.attempts = 0
        self.requests: list[httpx.Request] = []
        self._responder = responder

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        self.requests.append(request)
        return self._responder(request)


def _mock_client(recorder: Recorder, max_retries: int = 3) -> RealtimeClient:
    return RealtimeClient(
        "app",
        SECRET,
        base_url="https://rtc.example/v1",
        max_retries=max_retries,
        backoff_base=0.0,
        transport=httpx.MockTransport(recorder),
    )


def _error_body(status: int, code: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json={"errorCode": code, "errorDescription": "x"})


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "rate_limited"),
        (503, "temporarily_unavailable_error"),
        (500, "internal_error"),
        (200, "retryable_transient_error"),
        (425, "session_error"),
    ],
)
async def test_transient_failures_are_retried_then_raised(status: int, code: str) -> None:
    recorder = Recorder(_error_body(status, code))
    async with _mock_client(recorder, max_retries=3) as client:
        with pytest.raises(RealtimeError) as caught:
            await client.session_state("s")
    assert recorder.attempts == 4
    assert caught.value.error_code == code


async def test_transient_failure_then_success_returns_the_result() -> None:
    answers = iter(
        [
            httpx.Response(503, text="busy"),
            httpx.Response(201, json={"sessionId": "ab" * 16}),
        ]
    )
    recorder = Recorder(lambda _: next(answers))
    async with _mock_client(recorder) as client:
        session = await client.new_session()
    assert session.sessionId == "ab" * 16
    assert recorder.attempts == 2
    assert recorder.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert recorder.requests[0].url.path == "/v1/apps/app/sessions/new"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "decoding_error", InvalidRequestError),
        (401, "unauthorized", AuthenticationError),
        (406, "invalid_params", InvalidRequestError),
        (410, "session_error", SessionGoneError),
    ],
)
async def test_caller_errors_are_never_retried(
    status: int, code: str, error: type[RealtimeError]
) -> None:
    recorder = Recorder(_error_body(status, code))
    async with _mock_client(recorder) as client:
        with pytest.raises(error):
            await client.new_tracks("s", [TrackObject(location="remote", trackName="t")])
    assert recorder.attempts == 1


def _calls(client: RealtimeClient) -> list[Callable[[], Awaitable[object]]]:
    offer = SessionDescription(type="offer", sdp="v=0")

    async def answer(_: SessionDescription) -> SessionDescription:
        return SessionDescription(type="answer", sdp="v=0")

    remote = [TrackObject(location="remote", sessionId="p", trackName="t")]
    return [
        client.new_session,
        lambda: client.new_tracks("s", remote, offer),
        lambda: client.renegotiate("s", SessionDescription(type="answer", sdp="v=0")),
        lambda: client.close_tracks("s", ["0"]),
        lambda: client.update_tracks("s", [UpdateTrackObject(mid="0")]),
        lambda: client.session_state("s"),
        lambda: client.pull_tracks("s", remote, answer),
    ]


async def test_every_call_times_out_into_a_retried_transient_error() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    recorder = Recorder(hang)
    async with _mock_client(recorder, max_retries=1) as client:
        calls = _calls(client)
        for call in calls:
            with pytest.raises(TransientError) as caught:
                await call()
            assert caught.value.error_code == "timeout"
    assert recorder.attempts == 2 * len(calls)


async def test_client_sets_a_timeout_on_every_request() -> None:
    seen: list[dict[str, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"sessionId": "s"})

    transport = httpx.MockTransport(answer)
    async with RealtimeClient("app", SECRET, timeout=2.5, transport=transport) as client:
        await client.new_session()
    assert seen and seen[0]["read"] == 2.5 and seen[0]["connect"] == 2.5


async def test_response_over_4_mib_is_rejected_without_retry() -> None:
    big = b'{"tracks": [], "pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}'
    recorder = Recorder(lambda _: httpx.Response(200, content=big))
    async with _mock_client(recorder) as client:
        with pytest.raises(RealtimeError) as caught:
            await client.session_state("s")
    assert caught.value.error_code == "invalid_response"
    assert "larger than" in str(caught.value)
    assert recorder.attempts == 1


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"{truncated", b'["a list"]'])
async def test_invalid_json_is_rejected(body: bytes) -> None:
    recorder = Recorder(lambda _: httpx.Response(200, content=body))
    async with _mock_client(recorder) as client:
        with pytest.raises(RealtimeError) as caught:
            await client.session_state("s")
    assert caught.value.error_code == "invalid_response"
    assert recorder.attempts == 1


async def test_app_secret_never_appears_in_exceptions_or_logs() -> None:
    def echo_secret(request: httpx.Request) -> httpx.Response:
        # A hostile or buggy server could echo headers into the failure it reports.
        echoed = f"bad header {request.headers['Authorization']}"
        return httpx.Response(503, json={"errorCode": "backend_error", "errorDescription": echoed})

    failures: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for responder in (
            echo_secret,
            _error_body(401, "unauthorized"),
            lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
        ):
            recorder = Recorder(responder)
            async with _mock_client(recorder, max_retries=2) as client:
                for call in _calls(client):
                    with pytest.raises(RealtimeError) as caught:
                        await call()
                    failures.append(f"{caught.value!s} {caught.value!r} {caught.value.args}")
    assert logs, "retries are logged"
    assert any(entry["event"] == "realtime.retry" for entry in logs)
    assert SECRET not in json.dumps(logs, default=str)
    assert all(SECRET not in text for text in failures)


async def test_empty_credentials_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="app secret is empty"):
        RealtimeClient("app", "")
    with pytest.raises(ValueError, match="app id is empty"):
        RealtimeClient("", SECRET)


async def test_an_offer_that_comes_with_only_failed_tracks_is_still_answered() -> None:
    """Cloudflare may answer a pull with per-track errors and an offer at once; unanswered,
    the offer blocks every later mutation on the session (406). Before, the client raised
    ``TrackError`` first and never answered."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                200,
                json={
                    "requiresImmediateRenegotiation": True,
                    "tracks": [
                        {
                            "sessionId": "p" * 32,
                            "trackName": "cam",
                            "mid": "",
                            "errorCode": "internal_error",
                            "errorDescription": "x",
                        }
                    ],
                    "sessionDescription": {"type": "offer", "sdp": "v=0 ..."},
                },
            )
        return httpx.Response(200, json={})

    recorder = Recorder(respond)
    answered: list[str] = []

    async def answer(offer: SessionDescription) -> SessionDescription:
        answered.append(offer.sdp)
        return SessionDescription(type="answer", sdp="v=0 answer")

    async with _mock_client(recorder) as client:
        with pytest.raises(TrackError):
            await client.pull_tracks(
                "s" * 32,
                [TrackObject(location="remote", sessionId="p" * 32, trackName="cam")],
                answer,
            )
    assert answered == ["v=0 ..."]
    assert [(r.method, r.url.path.rsplit("/", 1)[-1]) for r in recorder.requests] == [
        ("POST", "new"),
        ("PUT", "renegotiate"),
    ]
