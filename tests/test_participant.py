"""A synthetic participant through the local SFU: the pulled media carries the signal."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from testbed.analysis import detect_beeps
from testbed.commands import publish_until_stopped
from testbed.sfu import LocalSfu

from bot.exitcodes import ExitCode
from bot.realtime import RealtimeClient, SessionDescription, TrackObject
from bot.synthetic.media import MediaPlan, MediaWorker, MuteWindow, Scheduled
from bot.synthetic.participant import SyntheticParticipant, ice_servers_for
from bot.synthetic.signal import SAMPLE_RATE, SAMPLES_PER_FRAME, ResolutionStep, read_barcode

WAIT_S = 15.0
OPUS_DELAY = 312  # libopus's encoder delay at 48 kHz, carried in the packet timestamps


async def _pull(
    client: RealtimeClient, refs: dict[str, str]
) -> tuple[RTCPeerConnection, dict[str, MediaStreamTrack]]:
    session = await client.new_session()
    pc = RTCPeerConnection()
    received: dict[str, MediaStreamTrack] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        received[track.kind] = track

    async def answer(offer: SessionDescription) -> SessionDescription:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return SessionDescription(type="answer", sdp=pc.localDescription.sdp)

    tracks = []
    for ref in refs.values():
        publisher, name = ref.split("/")
        tracks.append(TrackObject(location="remote", sessionId=publisher, trackName=name))
    result = await client.pull_tracks(session.sessionId, tracks, answer)
    assert [t.failed for t in result.tracks] == [False, False]
    assert sorted(received) == ["audio", "video"]
    return pc, received


async def _read_video(track: MediaStreamTrack, count: int) -> list[tuple[int, int, int]]:
    """(pts in 90 kHz, participant, frame index) of the first ``count`` readable frames."""
    readings: list[tuple[int, int, int]] = []
    while len(readings) < count:
        frame: Any = await track.recv()
        rgb = await asyncio.to_thread(frame.to_ndarray, format="rgb24")
        code = read_barcode(rgb)
        if code is not None:
            readings.append((frame.pts, *code))
    return readings


async def _first_beep(track: MediaStreamTrack) -> float:
    """Position, in decoded samples from the first frame, of the first beep heard."""
    pieces: list[tuple[int, np.ndarray[Any, Any]]] = []
    while True:
        frame: Any = await track.recv()
        mono = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1) / 32768
        pieces.append((frame.pts, mono.astype(np.float32)))
        if len(pieces) % 25:
            continue
        origin = pieces[0][0]
        samples = np.zeros(pieces[-1][0] - origin + len(pieces[-1][1]), dtype=np.float32)
        for pts, piece in pieces:
            samples[pts - origin : pts - origin + len(piece)] = piece
        # Only onsets well before the end: a beep cut off at the end is not done yet.
        onsets = [o for o in detect_beeps(samples) if o < len(samples) - 0.1 * SAMPLE_RATE]
        if onsets:
            return onsets[0]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_pulled_tracks_carry_barcode_and_beep(
    sfu: LocalSfu, sfu_app: Any, codec: str
) -> None:
    async with RealtimeClient(sfu_app.app_id, sfu_app.app_secret, base_url=sfu.base_url) as client:
        participant = SyntheticParticipant(
            client, number=2, role="patient", codec=codec, width=320, height=180
        )
        await participant.start()
        pc: RTCPeerConnection | None = None
        try:
            assert participant.track_refs == {
                "audio": f"{participant.session_id}/audio",
                "video": f"{participant.session_id}/video",
            }
            pc, received = await _pull(client, participant.track_refs)
            sdp = pc.remoteDescription.sdp
            readings, onset = await asyncio.wait_for(
                asyncio.gather(_read_video(received["video"], 15), _first_beep(received["audio"])),
                WAIT_S,
            )
        finally:
            if pc is not None:
                await pc.close()
            await participant.stop()

    assert {number for _, number, _ in readings} == {2}
    assert f" {codec}/90000" in sdp
    assert {"VP8", "H264"} - {codec} <= {c for c in ("VP8", "H264") if f" {c}/90000" not in sdp}
    # Video RTP time is frame index / fps: pts (90 kHz) and index advance together.
    first_pts, _, first_index = readings[0]
    for pts, _, index in readings:
        assert pts - first_pts == (index - first_index) * 3000
    # Audio RTP time is the source sample index (Opus delay included), so a beep at
    # k * 48000 lands at the encoder delay within a 960-sample packet grid.
    assert abs((onset - OPUS_DELAY) % SAMPLES_PER_FRAME) <= SAMPLE_RATE / 1000 or (
        SAMPLES_PER_FRAME - (onset - OPUS_DELAY) % SAMPLES_PER_FRAME <= SAMPLE_RATE / 1000
    )


async def test_publish_command_prints_refs_and_ends_after_duration(
    sfu: LocalSfu, sfu_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await publish_until_stopped(
        base_url=sfu.base_url,
        app_id=sfu_app.app_id,
        app_secret=sfu_app.app_secret,
        role="clinician",
        number=1,
        duration=0.5,
    )
    assert code == ExitCode.OK
    # structlog's unconfigured default also prints to stdout; the CLI sends logs to stderr.
    out = capsys.readouterr().out.splitlines()
    (line,) = [json.loads(text) for text in out if text.startswith("{")]
    session = line["session_id"]
    assert line["tracks"] == {"audio": f"{session}/audio", "video": f"{session}/video"}
    assert line["role"] == "clinician"


async def test_publish_command_reports_a_wrong_secret(sfu: LocalSfu, sfu_app: Any) -> None:
    code = await publish_until_stopped(
        base_url=sfu.base_url,
        app_id=sfu_app.app_id,
        app_secret="not-the-secret",
        role="clinician",
        number=1,
        duration=0.1,
    )
    assert code == ExitCode.REALTIME_AUTH


def test_stun_only_for_remote_sfus_and_bad_options_rejected() -> None:
    assert ice_servers_for("http://127.0.0.1:8787/v1") == []
    assert ice_servers_for("https://rtc.live.cloudflare.com/v1") == [
        "stun:stun.cloudflare.com:3478"
    ]
    client = RealtimeClient("app", "secret")
    with pytest.raises(ValueError, match="codec"):
        SyntheticParticipant(client, number=1, role="clinician", codec="AV1")
    with pytest.raises(ValueError, match="participant number"):
        SyntheticParticipant(client, number=16, role="clinician")


def _pts(item: Scheduled) -> int:
    assert item.packet.pts is not None
    return item.packet.pts


def test_media_worker_follows_schedule_mutes_and_keyframes() -> None:
    """The worker alone, with a clock far ahead so it never waits."""
    fps = 10
    plan = MediaPlan(
        number=3,
        fps=fps,
        codec="VP8",
        video_bitrate=300_000,
        schedule=(ResolutionStep(0, 160, 90), ResolutionStep(1.0, 320, 180)),
        audio_mutes=(MuteWindow(0.5, 1.0),),
        video_mutes=(MuteWindow(1.5, 2.0),),
        near_silent_mute=False,
    )
    audio: list[Scheduled] = []
    video: list[Scheduled] = []
    done = threading.Event()

    def on_video(item: Scheduled | None) -> None:
        if item is None:
            done.set()
            return
        video.append(item)
        if _pts(item) >= 25:
            worker.stop()

    worker = MediaWorker(
        plan,
        clock=lambda: 1e9,
        start_at=100.0,
        lead_s=0.2,
        emit_audio=lambda item: audio.append(item) if item else None,
        emit_video=on_video,
        keyframe=threading.Event(),
    )
    worker.start()
    assert done.wait(WAIT_S)

    video_pts = [_pts(s) for s in video]
    assert video_pts == [*range(15), *range(20, 26)]
    assert all(s.due == 100.0 + _pts(s) / fps for s in video)
    keyframes = [_pts(s) for s in video if s.packet.is_keyframe]
    assert keyframes == [0, 10, 20]  # every second, and the first frame after the mute
    decoder = av.CodecContext.create("libvpx", "r")
    sizes = {}
    for s in video:
        for frame in decoder.decode(s.packet):
            sizes[s.packet.pts] = (frame.width, frame.height)
    assert sizes[9] == (160, 90)
    assert sizes[10] == (320, 180)

    audio_pts = [_pts(s) for s in audio]
    assert audio_pts[0] == -OPUS_DELAY
    # Nothing stamped inside the mute; the encoder's tail before it, a fresh start after.
    assert not [pts for pts in audio_pts if SAMPLE_RATE // 2 <= pts < SAMPLE_RATE - OPUS_DELAY]
    assert SAMPLE_RATE // 2 - OPUS_DELAY in audio_pts
    assert SAMPLE_RATE - OPUS_DELAY in audio_pts
    assert len(audio_pts) >= 25 + 1 + 10
    assert all(s.due == 100.0 + _pts(s) / SAMPLE_RATE for s in audio)
