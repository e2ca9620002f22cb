"""Tracks as they arrived (issue #14): the track file, the archive in a real recording,
and ``bot compose`` of it, each checked by Debian's ffmpeg and ``bot verify``."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from testbed.analysis import abs_percentile, analyze_recording
from testbed.stack import start_local_sfu

from bot.compose import compose
from bot.compose.placement import Anchors
from bot.config import StorageSettings
from bot.exitcodes import ExitCode
from bot.manifest import Manifest
from bot.media.bitstream import h264_keyframe, is_keyframe, vp8_keyframe, vp8_size
from bot.media.track_file import TrackFile
from bot.recording import Recorder, RecordingResult, record
from bot.recording.archive import tracks_prefix
from bot.storage import manifest_key
from bot.storage.boxes import CLUSTER, segment_elements
from tests.e2e import CLINIC_KEY_PEM, bot_verify, ffprobe, recorder_settings, slots
from tests.faults import wait_until
from tests.test_media_e2e import record_two_at_25_fps, settings_for

ROOT = Path(__file__).resolve().parent.parent


def encoded(codec: str, seconds: float, *, keyframe_every: int = 60) -> list[av.Packet]:
    """Real VP8, H.264 (Annex B, as aiortc depayloads it) or Opus from FFmpeg's encoders."""
    if codec == "opus":
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "s16"
        encoder.time_base = Fraction(1, 48_000)
        packets = []
        for i in range(round(seconds * 50)):
            tone = np.sin((np.arange(960) + i * 960) * 2 * np.pi * 440 / 48_000) * 8000
            frame = av.AudioFrame.from_ndarray(
                tone.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 48_000, i * 960
            packets += encoder.encode(frame)
        return packets
    encoder = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = Fraction(1, 90_000)
    encoder.framerate = 30
    encoder.options = {"g": str(keyframe_every), "keyint_min": str(keyframe_every), "bf": "0"}
    if codec == "h264":
        encoder.options = {**encoder.options, "sc_threshold": "0"}
    packets = []
    for i in range(round(seconds * 30)):
        picture = np.full((240, 320, 3), (i * 7) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 3000
        packets += encoder.encode(frame)
    return packets + encoder.encode(None)


def debian_ffmpeg_errors(path: Path) -> str:
    """What Debian's ffmpeg says decoding the whole file (empty: it plays cleanly)."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr


def test_keyframes_and_vp8_sizes_are_read_from_the_bitstream() -> None:
    vp8 = [bytes(p) for p in encoded("vp8", 1.0, keyframe_every=15)]
    assert vp8_keyframe(vp8[0]) and vp8_size(vp8[0]) == (320, 240)
    assert [vp8_keyframe(f) for f in vp8].count(True) == 2
    assert vp8_size(vp8[1]) is None
    h264 = [bytes(p) for p in encoded("h264", 1.0, keyframe_every=15)]
    assert h264_keyframe(h264[0]) and not h264_keyframe(h264[1])
    assert [is_keyframe("h264", f) for f in h264].count(True) == 2
    assert is_keyframe("opus", b"\xf8\xff\xfe")


@pytest.mark.parametrize(
    ("codec", "container"), [("vp8", "webm"), ("h264", "mp4"), ("opus", "webm")]
)
def test_a_track_file_starts_at_a_keyframe_keeps_the_senders_timing_and_plays(
    tmp_path: Path, codec: str, container: str
) -> None:
    packets = encoded(codec, 6.0)
    rate = 48_000 if codec == "opus" else 90_000
    path = tmp_path / f"track.{container}"
    asked: list[int] = []
    pieces: list[int] = []
    file = TrackFile(
        path, codec, on_piece=lambda: pieces.append(1), want_keyframe=lambda: asked.append(1)
    )
    # Joined mid-stream: video must wait for the next keyframe (at 2 s), and asks for one.
    start = 5 if codec == "opus" else 10
    for packet in packets[start:]:
        rtp = 1000.0 + packet.pts / rate
        file.write(3.0 + packet.pts / rate, rtp, bytes(packet))
    file.close()

    report = file.report
    assert debian_ffmpeg_errors(path) == ""
    if codec == "opus":
        assert report.frames_before_keyframe == 0 and report.frames == len(packets) - start
    else:
        assert report.frames_before_keyframe == 50 and asked, "waited for the 2 s keyframe"
        assert report.sizes == [(5.0, 320, 240)]
    [(file_s, rtp_s, timeline_s)] = report.anchors  # one clock, one mapping
    assert report.first_s is not None and timeline_s == pytest.approx(report.first_s)
    assert rtp_s == pytest.approx(1000.0 + report.first_s - 3.0)
    assert file_s == pytest.approx(report.first_s, abs=0.001)  # the file's own tick
    assert report.gaps == []
    # Each piece reached the file whole, about a second each.
    assert len(pieces) >= 3
    if container == "webm":
        clusters = [e for e in segment_elements(path) if e.kind == CLUSTER]
        assert 3 <= len(clusters) <= 6
    with av.open(str(path)) as media:
        stream = media.streams[0]
        pts = [float(p.pts * p.time_base) for p in media.demux(stream) if p.pts is not None]
    steps = np.diff(pts)
    frame = 0.02 if codec == "opus" else 1 / 30
    assert np.allclose(steps, frame, atol=0.0015), "the sender's spacing, untouched"


def test_a_sender_clock_step_continues_the_file_and_anchors_the_new_clock(tmp_path: Path) -> None:
    packets = [bytes(p) for p in encoded("opus", 2.0)]
    file = TrackFile(tmp_path / "track.webm", "opus")
    for i, data in enumerate(packets[:50]):
        file.write(1.0 + i * 0.02, 500.0 + i * 0.02, data)
    for i, data in enumerate(packets[50:]):  # the sender restarted with a new RTP base
        file.write(2.0 + i * 0.02, 7.0 + i * 0.02, data)
    file.close()
    anchors = file.report.anchors
    assert len(anchors) == 2
    assert anchors[1][1] == 7.0 and anchors[1][2] == 2.0
    assert debian_ffmpeg_errors(tmp_path / "track.webm") == ""


# -- a real recording ----------------------------------------------------------------


async def _record(output_dir: Path, mode: str) -> RecordingResult:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        return await record(recorder_settings(call, output_dir, max_duration=6.0, mode=mode))
    finally:
        await call.close()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordingResult, Path]]:
    out = tmp_path_factory.mktemp("both")
    yield asyncio.run(_record(out, "both")), out


@pytest.fixture(scope="module")
def tracks_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RecordingResult, Path]]:
    out = tmp_path_factory.mktemp("tracks")
    yield asyncio.run(_record(out, "tracks")), out


def test_compose_places_video_by_the_settled_mapping_unless_the_clock_stepped() -> None:
    """As the live composite does: a frame goes by the anchor in effect half a latency
    later (the clock learned 60 ms at file second 0.2), never by a later step (30 s)."""
    anchors = Anchors(((0.0, 10.0, 1.0), (0.2, 10.2, 1.14), (2.0, 40.0, 33.0)))
    assert anchors.place(0.1) == pytest.approx(1.1)
    assert anchors.place(0.1, settle=0.5) == pytest.approx(1.04)
    assert anchors.place(1.8, settle=0.5) == pytest.approx(2.74)  # not 32.8: a step
    assert anchors.place(2.5, settle=0.5) == pytest.approx(33.5)


def test_both_modes_store_the_composite_and_every_track_verified(
    both: tuple[RecordingResult, Path], tmp_path: Path
) -> None:
    result, out = both
    assert result.exit_code == ExitCode.OK, result.error
    assert result.upload is not None and result.path is not None
    archive = result.upload.manifest.archive
    assert sorted((t.participant_id, t.kind) for t in archive) == [
        ("c1", "audio"),
        ("c1", "video"),
        ("p1", "audio"),
        ("p1", "video"),
    ]
    for track in archive:
        assert track.object_key is not None and track.object_key.startswith(
            tracks_prefix(result.upload.object_key)
        )
        path = out / "verified" / track.object_key
        assert hashlib.sha256(path.read_bytes()).hexdigest() == track.sha256
        assert debian_ffmpeg_errors(path) == ""
        assert track.clock == "sender_reports" and track.anchors
        assert track.first_s is not None and track.first_s < 1.0
        assert track.last_s is not None and track.last_s > 5.0
        if track.kind == "video":
            assert track.codec == "video/VP8" and track.sizes[0][1:] == (640, 360)
            assert track.frames_before_keyframe <= 3
    # The composite is the same as a composite-only recording's.
    assert [s["codec_name"] for s in ffprobe(result.path)["streams"]] == ["h264"] + ["aac"] * 3
    # Each track is a record of its own that a third party verifies.
    first = archive[0]
    assert first.object_key is not None
    verified = bot_verify(out / "verified" / first.object_key, public_key_dir=tmp_path)
    assert verified.returncode == ExitCode.OK, verified.stdout + verified.stderr


def test_tracks_only_stores_a_signed_record_and_no_composite(
    tracks_only: tuple[RecordingResult, Path],
) -> None:
    result, out = tracks_only
    assert result.exit_code == ExitCode.OK, result.error
    assert result.object_key is not None and result.upload is not None
    assert not (out / "verified" / result.object_key).exists(), "no composite"
    record_path = out / "verified" / result.upload.object_key
    assert record_path.name == "recording.manifest.json"
    manifest = Manifest.from_json(record_path.read_bytes())
    assert manifest.video is None and len(manifest.archive) == 4
    assert manifest.custody is not None and manifest.custody.signature == "jws-detached"
    assert (record_path.parent / "recording.manifest.sig").is_file()
    for track in manifest.archive:
        assert track.object_key is not None
        assert (out / "verified" / manifest_key(track.object_key)).is_file()


async def test_a_tracks_only_recording_reports_its_uploads_and_is_ready(tmp_path: Path) -> None:
    """With no composite, the status shows every track's upload as one, which the stop
    policy's disk caps read too, and the recorder is ready (no media thread to wait for)."""
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        recorder = Recorder(recorder_settings(call, tmp_path, max_duration=5.0, mode="tracks"))
        running = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 30)

        def spooled() -> bool:
            upload = recorder.status().upload
            return upload is not None and upload.bytes_spooled > 20_000

        await wait_until(spooled, 10, "the tracks' spools grow")
        status = recorder.status()
        assert status.readiness() == (True, "recording"), status.readiness()
        assert status.media is None and status.upload is not None
        assert status.upload.state == "uploading" and status.upload.disk_limit is None
        result = await asyncio.wait_for(running, 60)
    finally:
        await call.close()
    assert result.exit_code == ExitCode.OK, result.error


def test_compose_makes_the_composite_of_a_tracks_only_recording(
    tracks_only: tuple[RecordingResult, Path], tmp_path: Path
) -> None:
    result, out = tracks_only
    assert result.object_key is not None
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "BOT_STORAGE_LOCAL_DIR": str(out / "verified"),
        "BOT_STORAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "BOT_CUSTODY_SIGNING_KEY": CLINIC_KEY_PEM,
    }
    command = [sys.executable, "-m", "bot", "compose", "--key", result.object_key]
    composed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert composed.returncode == ExitCode.OK, composed.stderr[-2000:]
    assert "verified=True" in composed.stdout
    path = out / "verified" / result.object_key
    manifest = Manifest.from_json((path.parent / f"{path.name}.manifest.json").read_bytes())
    assert manifest.composed and len(manifest.archive) == 4
    assert manifest.duration_seconds is not None and abs(manifest.duration_seconds - 6.0) < 0.3
    report = analyze_recording(path, slots(2))
    left_out = {t.slot + 1: t.frames_before_keyframe for t in manifest.archive if t.kind == "video"}
    for number, participant in report.participants.items():
        # 30 fps sources into a 30 fps output: where two frames fall into one output
        # tick one is never shown (seen once in CI on a loaded machine). The exact count
        # is asserted by the 25-into-30 fps test below, where the phase sweeps. Frames
        # the archive itself left out (after a loss the file goes on from the next
        # keyframe) are not the composer's to show; the manifest's count also holds the
        # few before the file's first keyframe, so the bound is that much looser. Seen
        # once in CI: 20 frames missing after a participant's first, cause unconfirmed.
        missing = len(participant.missing_frames())
        print(f"participant {number}: {missing} missing, archive left out {left_out[number]}")
        assert missing <= 0.02 * participant.frames_seen + left_out[number], left_out
        assert abs_percentile(participant.av_offsets(), 95) <= 0.020
    verified = bot_verify(path, public_key_dir=tmp_path)
    assert verified.returncode == ExitCode.OK, verified.stdout + verified.stderr
    again = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == ExitCode.CONFIG and "never overwritten" in again.stderr


@pytest.mark.slow
async def test_compose_matches_the_live_composites_lip_sync_and_alignment(
    sfu_factory, tmp_path: Path
) -> None:
    """Recorded in ``both`` mode: the composite made afterwards from the tracks meets the
    live recorder's figures (A/V p95 within 20 ms, participants within 40 ms)."""
    sfu = await sfu_factory()
    result, starts = await record_two_at_25_fps(sfu, tmp_path, mode="both")
    assert result.upload is not None and result.object_key is not None, result.error
    live = tmp_path / "out" / result.object_key
    tracks = tmp_path / "out" / tracks_prefix(result.object_key)
    # Composed from the folder of tracks into another store (the live one holds the key).
    elsewhere = StorageSettings(spool_dir=tmp_path / "c", local_dir=tmp_path / "c")
    settings = settings_for(sfu, tmp_path).model_copy(update={"storage": elsewhere})
    done = await compose(settings, folder=tracks)
    assert done.upload.object_key == result.object_key
    composed = tmp_path / "c" / done.upload.object_key

    for name, path in (("live", live), ("composed", composed)):
        report = analyze_recording(path, slots(2), src_fps=25)
        placements = []
        for number, start in zip((1, 2), starts, strict=True):
            participant = report.participants[number]
            p95 = abs_percentile(participant.av_offsets(), 95)
            print(f"{name} participant {number}: A/V p95 {p95 * 1000:.1f} ms")
            assert p95 <= 0.020
            assert participant.missing_frames() == []
            audio = [b.audio_offset_s for b in participant.beeps if b.audio_offset_s is not None]
            placements.append(float(np.median(audio)) - start)
        print(f"{name} placement after capture: {[round(p * 1000, 1) for p in placements]} ms")
        assert abs(placements[0] - placements[1]) < 0.040
