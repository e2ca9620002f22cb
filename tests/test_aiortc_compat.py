"""aiortc's private API as the recorder uses it: each patch checked, and what it changes
(lost packets, retransmissions, reused m-lines)."""

import asyncio
import gc
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiortc
import aiortc.rtcrtpreceiver
import pytest
import structlog
from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket, wrap_rtx
from hypothesis import given
from hypothesis import strategies as st

from bench.decoder_threads import decode_all, encode
from bot.exitcodes import ExitCode
from bot.rtc import receiver_tap
from bot.rtc.aiortc_compat import (
    AiortcCompatError,
    AudioPassThrough,
    LossTolerantJitterBuffer,
    accept_lower_dynamic_payload_types,
    check_private_api,
    decode_in_one_thread,
    handle_rtp_on_arrival,
    ice_check,
    negotiated_codecs,
    on_keyframe_request,
    route_by_mid,
    run_now,
)
from bot.rtc.buffers import AudioReorder, BoundedDecoderQueue, DroppingFrameQueue
from bot.rtc.clock import StreamClock
from bot.rtc.codec_policy import prepare_offer
from bot.rtc.receiver_tap import ReceiverTap
from bot.timeline import Timeline
from tests.cloudflare_sdp import OPUS_WITH_RED, VP8_WITH_HELPERS, Section, offer


def packet(seq: int, timestamp: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp)
    p._data = b"x"  # type: ignore[attr-defined]
    return p


def sequence(reorder: AudioReorder, arrivals: list[int]) -> list[int]:
    out: list[int] = []
    for seq in arrivals:
        out += [p.sequence_number for p in reorder.push(packet(seq & 0xFFFF, seq * 960))]
    return out


def test_audio_is_put_back_in_order_and_a_loss_costs_only_its_own_frame() -> None:
    # 3 and 4 swapped, 7 overtaken by three later packets, 10 lost, 15 a late duplicate.
    arrivals = [0, 1, 2, 4, 3, 5, 6, 8, 9, 11, 7, *range(12, 20), 15, *range(20, 30)]
    reorder = AudioReorder(wait=8)
    assert sequence(reorder, arrivals) == [n for n in range(30) if n != 10]
    assert reorder.given_up == 1 and reorder.too_late == 1


def test_audio_order_survives_the_sequence_number_wrap() -> None:
    start = 65530
    arrivals = [start, start + 2, start + 1, *range(start + 3, start + 12)]
    got = sequence(AudioReorder(wait=4), arrivals)
    assert got[:3] == [65530, 65531, 65532] and got[-1] == (start + 11) & 0xFFFF


@given(st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_jittered_audio_comes_out_in_order_without_loss(seed: int, spread: int) -> None:
    """Any shuffle within ``spread`` packets (jitter up to spread x 20 ms) is undone; only
    packets overtaken by the very first to arrive (the stream starts there) are lost."""
    rng = random.Random(seed)
    arrivals = sorted(range(200), key=lambda n: n + rng.uniform(0, spread + 0.99))
    out = sequence(AudioReorder(wait=8), arrivals)
    assert out == list(range(arrivals[0], arrivals[0] + len(out)))
    assert out[-1] >= 200 - 1 - 8


def test_video_waits_for_a_retransmission_then_gives_up_with_a_keyframe_request() -> None:
    buffer = LossTolerantJitterBuffer(512, give_up_after=48)
    frames, plis = [], 0
    for seq in range(200):
        if seq in (20, 120):
            continue  # 20 is retransmitted below; 120 never arrives
        pli, frame = buffer.add(packet(seq, (seq // 3) * 3000))
        plis += pli
        if frame is not None:
            frames.append(frame.timestamp // 3000)
        if seq == 30:
            pli, frame = buffer.add(packet(20, (20 // 3) * 3000))
            frames += [frame.timestamp // 3000] if frame is not None else []
    assert 6 in frames  # the frame holding packet 20 was completed by the retransmission
    assert 40 not in frames  # the frame holding packet 120 was given up ...
    assert max(frames) >= 60 and plis >= 1  # ... the picture went on, a keyframe was asked for
    assert buffer.losses == plis == 1, "one loss given up, counted for the track archive"


def test_decoder_queue_drops_the_oldest_frames_but_never_the_stop_sentinel() -> None:
    q = BoundedDecoderQueue(3)
    for i in range(10):
        q.put(("codec", i))
    q.put(None)
    items = [q.get_nowait() for _ in range(q.qsize())]
    assert items[:-1] == [("codec", 7), ("codec", 8), ("codec", 9)] and items[-1] is None
    assert q.dropped == 7


def test_decoder_queue_opens_frames_and_drops_those_it_cannot() -> None:
    """The decoder thread takes frames through the opener (end-to-end decryption): what
    cannot be opened is never handed to the decoder, and frames dropped for space are not
    opened at all (no key spent on them)."""
    opened: list[bytes] = []

    def opener(data: bytes) -> bytes | None:
        opened.append(data)
        return None if data.startswith(b"sealed") else data.upper()

    frames = [JitterFrame(data, timestamp=i) for i, data in enumerate([b"a", b"sealed", b"b"])]
    q = BoundedDecoderQueue(2, opener)
    for frame in frames:
        q.put(("codec", frame))
    q.put(None)
    assert q.get()[1].data == b"B"  # "a" was dropped for space, unopened
    assert q.get() is None and q.unopened == 1 and q.dropped == 1
    assert opened == [b"sealed", b"b"]


def test_decoder_queue_hands_opened_frames_to_the_archive_and_decodes_only_if_asked() -> None:
    """Beside a composite, the decoder thread archives each opened frame, then decodes it;
    with nothing to decode, frames are archived as they are put and never queued."""

    def opener(data: bytes) -> bytes | None:
        return None if data.startswith(b"sealed") else data.upper()

    for decode in (True, False):
        archived: list[tuple[int, bytes]] = []
        q = BoundedDecoderQueue(8, opener, decode=decode)
        q.archive = lambda timestamp, data, into=archived: into.append((timestamp, data))
        for i, data in enumerate([b"a", b"sealed", b"b"]):
            q.put(("codec", JitterFrame(data, timestamp=90 * i)))
        q.put(None)
        decoded = [item[1].data for item in iter(q.get, None)]
        assert archived == [(0, b"A"), (180, b"B")], "opened frames only, ciphertext never"
        assert decoded == ([b"A", b"B"] if decode else [])
        assert q.unopened == 1


async def test_frame_queue_keeps_the_newest_frames_and_the_end_marker() -> None:
    q = DroppingFrameQueue(2)
    for i in range(5):
        await q.put(i)
    await q.put(None)
    assert [q.get_nowait() for _ in range(q.qsize())] == [3, 4, None]
    assert q.dropped == 3


async def _receiver(sdp: str, kind: str = "video") -> tuple[RTCPeerConnection, Any]:
    """A real aiortc receiver for the offer's m-line of ``kind`` (not connected)."""
    accept_lower_dynamic_payload_types()
    pc = RTCPeerConnection()
    await pc.setRemoteDescription(RTCSessionDescription(prepare_offer(sdp).sdp, "offer"))
    transceiver = next(t for t in pc.getTransceivers() if t.kind == kind)
    return pc, transceiver


def _vp8_keyframe(seq: int, timestamp: int, ssrc: int) -> RtpPacket:
    # VP8 payload descriptor (S=1, partition 0) + a keyframe header: one-packet frames.
    payload = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) + bytes(20)
    return RtpPacket(
        payload_type=96, sequence_number=seq, timestamp=timestamp, ssrc=ssrc, payload=payload
    )


async def test_retransmissions_on_their_own_ssrc_never_reach_the_clock() -> None:
    """RTX (Cloudflare retransmits on its own SSRC) is not "the stream changed SSRC".

    Before, every packet fed the clock, so the first retransmission looked like a new
    stream: ``clock.ssrc_changed``, and the sender-report mapping (lip sync) was thrown
    away. Here the offer has no ``a=ssrc-group:FID``: the RTX SSRC is learned.
    """
    sdp = offer([Section("video", "0", VP8_WITH_HELPERS, 2000)], ssrc_lines=False)
    pc, transceiver = await _receiver(sdp)
    try:
        receiver = transceiver.receiver
        tap = ReceiverTap(receiver, "video")
        clock = StreamClock(90_000, None, Timeline(time.time()))
        seen: list[int] = []
        tap.retarget(clock, negotiated_codecs(transceiver), seen.append)
        media_ssrc, rtx_ssrc = 1111, 2222
        for seq in range(3):
            await receiver._handle_rtp_packet(_vp8_keyframe(seq, seq * 3000, media_ssrc), 0)
        clock.on_sender_report(media_ssrc, 0xE000_0000_0000_0000, 6000)
        assert clock.synced
        resent = wrap_rtx(_vp8_keyframe(1, 3000, media_ssrc), 97, 500, rtx_ssrc)
        with structlog.testing.capture_logs() as logs:
            await receiver._handle_rtp_packet(resent, 0)
            await receiver._handle_rtp_packet(RtpPacket(payload_type=98, ssrc=media_ssrc), 0)
        assert clock.ssrc == media_ssrc and clock.synced, "the mapping survived the RTX"
        assert seen == [media_ssrc] * 3
        assert tap.rtx_packets == 1 and tap.foreign_packets == 1
        assert receiver._RTCRtpReceiver__rtx_ssrc == {rtx_ssrc: media_ssrc}
        assert not [e for e in logs if e["event"] == "clock.ssrc_changed"]
    finally:
        await pc.close()


async def test_a_reused_m_line_starts_afresh_for_its_new_track() -> None:
    sdp = offer([Section("video", "0", VP8_WITH_HELPERS, 2000)])
    pc, transceiver = await _receiver(sdp)
    try:
        receiver = transceiver.receiver
        tap = ReceiverTap(receiver, "video")
        first = StreamClock(90_000, None, Timeline(time.time()))
        tap.retarget(first, negotiated_codecs(transceiver))
        await receiver._handle_rtp_packet(_vp8_keyframe(7, 9000, 1111), 0)
        receiver.track._queue.put_nowait("a frame of the previous track")
        second = StreamClock(90_000, None, Timeline(time.time()))
        tap.retarget(second, negotiated_codecs(transceiver))
        await receiver._handle_rtp_packet(_vp8_keyframe(40000, 1, 3333), 0)
        assert first.ssrc == 1111 and second.ssrc == 3333
        assert receiver.track._queue.empty()
        tap.decline()
        await receiver._handle_rtp_packet(_vp8_keyframe(40001, 2, 3333), 0)
        assert second.ssrc == 3333 and tap.foreign_packets == 0
    finally:
        await pc.close()


async def test_a_packet_still_missing_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiortc NACKs a packet once, when its gap appears: a lost retransmission (or a lost
    NACK) froze the picture until the jitter buffer gave up. The tap asks again."""
    sdp = offer([Section("video", "0", VP8_WITH_HELPERS, 2000)])
    pc, transceiver = await _receiver(sdp)
    try:
        receiver = transceiver.receiver
        asked: list[list[int]] = []

        async def nack(ssrc: int, lost: list[int]) -> None:
            asked.append(lost)

        monkeypatch.setattr(receiver, "_send_rtcp_nack", nack)
        tap = ReceiverTap(receiver, "video")
        tap.retarget(
            StreamClock(90_000, None, Timeline(time.time())), negotiated_codecs(transceiver)
        )
        now = [100.0]
        monkeypatch.setattr(receiver_tap.time, "monotonic", lambda: now[0])
        for seq in (0, 1, 3, 4):  # 2 lost: aiortc asks at 3
            await receiver._handle_rtp_packet(_vp8_keyframe(seq, seq * 3000, 1111), 0)
        assert asked == [[2]]
        now[0] += 0.05
        await receiver._handle_rtp_packet(_vp8_keyframe(5, 15000, 1111), 0)
        assert asked == [[2]], "not before NACK_RETRY_SECONDS"
        now[0] += 0.06
        await receiver._handle_rtp_packet(_vp8_keyframe(6, 18000, 1111), 0)
        assert asked == [[2], [2]] and tap.nack_retries == 1
        await receiver._handle_rtp_packet(_vp8_keyframe(2, 6000, 1111), 0)  # it came
        now[0] += 0.2
        await receiver._handle_rtp_packet(_vp8_keyframe(7, 21000, 1111), 0)
        assert asked == [[2], [2]]
    finally:
        await pc.close()


# --- the guard: every private name checked, at start-up and when patched ------------------


async def test_the_installed_aiortc_has_every_private_name_used() -> None:
    await check_private_api()


@pytest.mark.parametrize(
    ("owner", "name"), [(RTCRtpReceiver, "_send_rtcp_pli"), (RTCRtpSender, "_send_keyframe")]
)
async def test_a_missing_private_name_fails_at_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(AiortcCompatError, match=rf"{name}.*aiortc 1\.16"):
        await check_private_api()


async def test_a_decoder_made_another_way_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the decoders' threads are set: aiortc's decoder thread must still make its
    decoders with ``get_decoder``, and they must still keep an unopened FFmpeg context."""

    def worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
        pass

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "decoder_worker", worker)
    with pytest.raises(AiortcCompatError, match=r"no longer calls get_decoder.*aiortc 1\.16"):
        await check_private_api()
    monkeypatch.undo()
    monkeypatch.setattr("bot.rtc.aiortc_compat.get_decoder", lambda codec: object())
    with pytest.raises(AiortcCompatError, match=r"audio/opus decoder keeps no unopened"):
        await check_private_api()


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_aiortc_decoders_decode_on_their_thread_alone(codec: str) -> None:
    """PyAV starts FFmpeg threads for each decoder (H.264: slice threads, one more than
    the cores) that a one-slice WebRTC picture cannot use. The decoders aiortc's decoder
    thread makes start none, and decode every picture PyAV's own do."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("on one core PyAV's decoders start no threads either: nothing to compare")
    decode_in_one_thread()
    decode_in_one_thread()  # idempotent: aiortc's own get_decoder is not wrapped twice
    assert aiortc.rtcrtpreceiver.get_decoder.__name__ == "_decoder_in_one_thread"
    pictures = encode(codec, 10, slices=1)
    decoded, started = [], []
    for make_decoder in (aiortc.rtcrtpreceiver.get_decoder, get_decoder):
        gc.collect()  # an earlier test's context freed now would take its threads away
        frames, _, threads = decode_all(make_decoder, codec, pictures)
        decoded.append(frames)
        started.append(threads)
    ours, pyavs = decoded
    assert ours == pyavs > 0
    assert started[0] == 0, "aiortc's decoder thread's decoder started threads"
    assert started[1] > 0, "PyAV's default starts threads (or this check proves nothing)"


async def test_a_packet_attribute_no_longer_set_fails_at_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``packet._data`` (what the audio pass-through hands on) is set per packet, so the
    check looks for it in the receiver's code."""

    async def renamed(self: Any, packet: Any, arrival_time_ms: int) -> None:
        packet.depayloaded = b""

    monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", renamed)
    with pytest.raises(AiortcCompatError, match=r"no longer sets '_data'.*aiortc 1\.16"):
        await check_private_api()


async def test_another_minor_version_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with pytest.raises(AiortcCompatError, match=r"aiortc 1.17.0 is installed.*1\.16\.x"):
        await check_private_api()


async def test_a_renamed_private_attribute_is_refused_not_created() -> None:
    """Assigning a renamed attribute would create an unused one and leave aiortc's own
    jitter buffer (seconds of stall per loss) in place, with everything still running."""
    sdp = offer([Section("video", "0", VP8_WITH_HELPERS, 2000)])
    pc, transceiver = await _receiver(sdp)
    try:
        receiver = transceiver.receiver
        del receiver._RTCRtpReceiver__timestamp_mapper  # as if aiortc renamed it
        with pytest.raises(AiortcCompatError, match="_RTCRtpReceiver__timestamp_mapper"):
            ReceiverTap(receiver, "video")
        assert not hasattr(receiver, "_RTCRtpReceiver__timestamp_mapper")
    finally:
        await pc.close()


async def test_every_patch_takes_effect_on_a_real_receiver() -> None:
    accept_lower_dynamic_payload_types()
    assert 36 in aiortc.rtp.DYNAMIC_PAYLOAD_TYPES
    sdp = offer([Section("video", "0", VP8_WITH_HELPERS, 2000)])
    pc, transceiver = await _receiver(sdp)
    try:
        receiver = transceiver.receiver
        tap = ReceiverTap(receiver, "video")
        tap.retarget(
            StreamClock(90_000, None, Timeline(time.time())), negotiated_codecs(transceiver)
        )
        route_by_mid(receiver.transport)
        assert receiver._handle_rtp_packet == tap._on_rtp
        assert receiver._handle_rtcp_packet == tap._on_rtcp
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, LossTolerantJitterBuffer)
        assert isinstance(receiver._RTCRtpReceiver__decoder_queue, BoundedDecoderQueue)
        assert isinstance(receiver.track._queue, DroppingFrameQueue)
        mapper = receiver._RTCRtpReceiver__timestamp_mapper
        assert mapper.map(1000) == 1000, "frames keep their RTP time, not aiortc's from 0"
        assert receiver.transport._rtp_router.route_rtp.__name__ == "route"
        assert ice_check(receiver.transport) is None, "no nominated pair before connecting"
    finally:
        await pc.close()


async def test_audio_is_put_in_order_then_handed_on_frame_by_frame() -> None:
    """A real audio receiver: packets reordered by the tap, then past aiortc's audio
    jitter buffer (four frames held back, 320 ms of silence per loss) at once."""
    sdp = offer([Section("audio", "0", OPUS_WITH_RED, 1000)])
    pc, transceiver = await _receiver(sdp, "audio")
    try:
        receiver = transceiver.receiver
        receiver._RTCRtpReceiver__decoder_thread = True  # as when receiving: frames go on
        tap = ReceiverTap(receiver, "audio")
        tap.retarget(StreamClock(48_000, None, time.time()), negotiated_codecs(transceiver))
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, AudioPassThrough)
        for seq in (0, 2, 1, 3):
            opus = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
            opus.ssrc, opus.payload = 1000, bytes([seq + 1])
            await receiver._handle_rtp_packet(opus, 0)
        decoded = receiver._RTCRtpReceiver__decoder_queue
        frames = [decoded.get_nowait()[1] for _ in range(decoded.qsize())]
        assert [(f.timestamp, f.data) for f in frames] == [
            (n * 960, bytes([n + 1])) for n in range(4)
        ]
    finally:
        await pc.close()


async def test_a_keyframe_request_reaches_a_sender_that_does_not_encode() -> None:
    """The synthetic participant sends frames already encoded: a PLI from the SFU must
    reach its encoder, not aiortc's (which it does not use)."""
    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        asked: list[bool] = []
        on_keyframe_request(sender, lambda: asked.append(True))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2))
        assert asked == [True]
    finally:
        await pc.close()


def test_bot_record_stops_before_any_network_call_on_another_aiortc(tmp_path: Path) -> None:
    """As if aiortc 1.17 were installed: exit 1 with one line naming it, before the API."""
    env = {
        **os.environ,
        "BOT_REALTIME_APP_ID": "app",
        "BOT_REALTIME_APP_SECRET": "secret",
        # Nothing listens here: a network call would end in a realtime error, exit 4.
        "BOT_REALTIME_BASE_URL": "http://127.0.0.1:9/v1",
        "BOT_STORAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "BOT_STORAGE_LOCAL_DIR": str(tmp_path / "out"),
    }
    args = ["record", "--consultation-id", "c1", "--participant", f"p1:patient={'a' * 32}/mic"]
    program = (
        "import sys, aiortc; aiortc.__version__ = '1.17.0'; from bot.cli import main; "
        f"sys.exit(main({args!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ExitCode.FAILURE, done.stderr
    assert "aiortc 1.17.0 is installed" in done.stderr and "Traceback" not in done.stderr
    assert "realtime" not in done.stderr.lower(), "no API call was made"


async def test_a_handler_that_never_waits_runs_to_its_end_at_once() -> None:
    done: list[str] = []

    async def inner() -> None:
        done.append("inner")

    async def handler() -> None:
        await inner()
        done.append("handler")

    run_now(handler())
    assert done == ["inner", "handler"], "ran before run_now returned, no task needed"


async def test_a_handler_that_waits_is_carried_on_until_its_end() -> None:
    release: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done: list[object] = []
    ended = asyncio.Event()

    async def handler() -> None:
        done.append("before")
        done.append(await release)
        await asyncio.sleep(0)  # a bare yield as well
        done.append("after")
        ended.set()

    run_now(handler())
    assert done == ["before"]
    release.set_result(7)
    async with asyncio.timeout(5):
        await ended.wait()
    assert done == ["before", 7, "after"]


async def test_a_failing_handler_is_logged_and_never_raised() -> None:
    async def handler() -> None:
        raise ValueError("bad packet")

    with structlog.testing.capture_logs() as logs:
        run_now(handler())
    assert [e["event"] for e in logs] == ["rtc.rtp_handler_failed"]
    assert "ValueError: bad packet" in logs[0]["error"]


@pytest.mark.parametrize("batch_seconds", [0.0, 0.05])
async def test_media_from_a_real_aiortc_sender_is_handled_as_it_arrives(
    batch_seconds: float,
) -> None:
    """Two aiortc peers over real UDP: once connected, the receiver's RTP no longer goes
    through aiortc's DTLS queue (its own packet count stops), yet every frame decodes;
    read in batches too (asyncio's loop, as the recorder runs on)."""
    sender, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender.addTrack(VideoStreamTrack())
        connected = asyncio.Event()

        @receiver_pc.on("connectionstatechange")
        def _on_state() -> None:
            if receiver_pc.connectionState == "connected":
                connected.set()

        await sender.setLocalDescription(await sender.createOffer())
        await receiver_pc.setRemoteDescription(sender.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender.setRemoteDescription(receiver_pc.localDescription)
        async with asyncio.timeout(20):
            await connected.wait()
        transceiver = receiver_pc.getTransceivers()[0]
        dtls = transceiver.receiver.transport
        batched = handle_rtp_on_arrival(dtls, batch_seconds)
        assert batched == (batch_seconds > 0)
        assert handle_rtp_on_arrival(dtls, batch_seconds) == batched  # idempotent
        through_aiortc = dtls._RTCDtlsTransport__rx_packets
        async with asyncio.timeout(20):
            frames = [await transceiver.receiver.track.recv() for _ in range(30)]
        assert all(f.width == 640 and f.height == 480 for f in frames)
        stats = await transceiver.receiver.getStats()
        received = sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
        by_aiortc = dtls._RTCDtlsTransport__rx_packets - through_aiortc
        assert received >= 30
        # What still goes aiortc's way: RTCP (a few a second) and packets queued before.
        assert by_aiortc < received / 4, (by_aiortc, received)
    finally:
        await sender.close()
        await receiver_pc.close()
