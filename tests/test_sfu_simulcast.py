"""Simulcast through the local SFU.

Fast tests: the SDP that accepts a publisher's layers, the choice of layer, keyframe
detection and the rewriting that keeps one subscriber stream continuous across layer
switches. Slow tests: Chromium publishes two (``a``/``b``) or three (``h``/``m``/``l``)
layers through the call page, aiortc subscribers pull through ``RealtimeClient`` with and
without ``preferredRid``, and what they decode, and the RTP they get, is checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpSrPacket, RtpPacket
from av import VideoFrame
from testbed.browser.driver import CHROMIUM, BrowserCall, BrowserParticipant, LayerSendStats
from testbed.browser.media_files import write_fake_media
from testbed.sfu import LocalSfu
from testbed.sfu.simulcast import (
    LayerPreference,
    Splicer,
    accept_layers,
    choose_layer,
    keyframe_start,
    offered_layers,
)

from bot.realtime import RealtimeClient, SessionDescription, TrackObject
from bot.realtime.models import SimulcastPreference, UpdateTrackObject

# -- SDP --------------------------------------------------------------------------------

# What Chromium offers for a camera published with sendEncodings rids a and b (trimmed to
# the lines that matter here; seen with Debian's Chromium through the call page).
CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rid:a send",
        "a=rid:b send",
        "a=simulcast:send a;b",
        "",
    ]
)


def _answer(video_port: str = "9") -> str:
    return "\r\n".join(
        [
            "v=0",
            "o=- 3 4 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:0",
            "a=recvonly",
            f"m=video {video_port} UDP/TLS/RTP/SAVPF 96 97",
            "a=mid:1",
            "a=recvonly",
            "a=rtpmap:96 VP8/90000",
            "",
        ]
    )


def test_offered_layers_are_the_send_rids_in_the_publishers_order() -> None:
    assert offered_layers(CHROME_OFFER) == {"1": ("a", "b")}
    three = CHROME_OFFER.replace("a=rid:a send", "a=rid:h send\r\na=rid:m send\r\na=rid:l send")
    three = three.replace("a=simulcast:send a;b", "a=simulcast:send h;~m,x;l recv z")
    assert offered_layers(three) == {"1": ("h", "m", "l")}


def test_offered_layers_ignore_mlines_without_simulcast_or_send_rids() -> None:
    single = CHROME_OFFER.replace("a=simulcast:send a;b\r\n", "")
    assert offered_layers(single) == {}
    receive_only = CHROME_OFFER.replace("a=rid:a send", "a=rid:a recv")
    assert offered_layers(receive_only) == {"1": ("b",)}


def test_answer_accepts_each_layer_on_its_mline_only() -> None:
    answer = accept_layers(_answer(), {"1": ("a", "b")})
    video = answer.split("m=video")[1]
    assert video.endswith("a=rid:a recv\r\na=rid:b recv\r\na=simulcast:recv a;b\r\n")
    assert "a=rid" not in answer.split("m=video")[0]
    assert "\n" not in answer.replace("\r\n", "")


def test_answer_leaves_a_rejected_mline_alone() -> None:
    assert accept_layers(_answer("0"), {"1": ("a", "b")}) == _answer("0")


# -- which layer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "preference", "chosen"),
    [
        ({"a", "b"}, LayerPreference(), "a"),
        ({"b"}, LayerPreference(), "b"),
        ({"a", "b"}, LayerPreference(preferred_rid="b"), "b"),
        # The preferred layer is not sent: "none" keeps waiting for it ...
        ({"a"}, LayerPreference(preferred_rid="b"), "b"),
        # ... "asciibetical" takes the next in a-z order (h, l, m), or else the one before.
        ({"h", "l"}, LayerPreference(preferred_rid="m", rid_not_available="asciibetical"), "l"),
        ({"h", "m"}, LayerPreference(preferred_rid="l", rid_not_available="asciibetical"), "m"),
        ({"m", "l"}, LayerPreference(preferred_rid="h", rid_not_available="asciibetical"), "l"),
    ],
)
def test_choose_layer(available: set[str], preference: LayerPreference, chosen: str) -> None:
    ranked = ["a", "b"] if available <= {"a", "b"} else ["h", "m", "l"]
    assert choose_layer(ranked, available, preference, None) == chosen


def test_choose_layer_keeps_the_current_one_when_nothing_is_sent() -> None:
    assert choose_layer(["a", "b"], set(), LayerPreference(), "b") == "b"


def test_update_replaces_only_the_fields_given() -> None:
    preference = LayerPreference(preferred_rid="b", rid_not_available="asciibetical")
    assert preference.updated(preferred_rid="a") == LayerPreference(
        preferred_rid="a", rid_not_available="asciibetical"
    )


# -- keyframes --------------------------------------------------------------------------


def _vp8(keyframe: bool, start: bool = True, width: int = 640, height: int = 360) -> bytes:
    descriptor = bytes([0x90 if start else 0x80, 0x80, 0x81, 0x23])  # X, S; 15-bit picture id
    if not keyframe:
        return descriptor + b"\x31\x02\x00" + bytes(8)
    size = (width & 0x3FFF).to_bytes(2, "little") + (height & 0x3FFF).to_bytes(2, "little")
    return descriptor + b"\x50\x42\x00\x9d\x01\x2a" + size + bytes(8)


def test_vp8_keyframe_start_carries_the_picture_size() -> None:
    found = keyframe_start("video/VP8", _vp8(keyframe=True, width=320, height=180))
    assert found is not None and (found.width, found.height) == (320, 180)
    assert keyframe_start("video/VP8", _vp8(keyframe=False)) is None
    assert keyframe_start("video/VP8", _vp8(keyframe=True, start=False)) is None
    assert keyframe_start("video/VP8", b"") is None


def test_h264_keyframe_starts_at_sps_or_idr() -> None:
    sps, pps, idr = b"\x67\x42\xe0\x1f\xaa", b"\x68\xce\x3c\x80", b"\x65\x88\x84"
    stap_a = bytes([0x18]) + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps, idr))
    assert keyframe_start("video/H264", stap_a) is not None
    assert keyframe_start("video/H264", bytes([0x7C, 0x85, 0x00])) is not None  # FU-A IDR start
    assert keyframe_start("video/H264", bytes([0x7C, 0x05, 0x00])) is None  # FU-A middle
    assert keyframe_start("video/H264", b"\x41\x9a\x00") is None  # non-IDR slice
    assert keyframe_start("video/VP9", b"\x80\x00") is None


# -- one stream across layer switches ---------------------------------------------------

CLOCK = 90_000
FRAME = 3000  # 30 fps


@dataclass
class FakeLayer:
    """One layer of a synthetic publisher: its own sequence numbers and RTP clock base."""

    rid: str
    seq: int
    ts_base: int
    packets_per_frame: int = 2

    def frame(self, index: int, keyframe: bool = False) -> list[tuple[RtpPacket, bool]]:
        packets = []
        for part in range(self.packets_per_frame):
            packet = RtpPacket(
                payload_type=96,
                marker=part == self.packets_per_frame - 1,
                sequence_number=self.seq & 0xFFFF,
                timestamp=(self.ts_base + index * FRAME) & 0xFFFFFFFF,
                payload=bytes([self.packets_per_frame, part]),
            )
            self.seq += 1
            packets.append((packet, keyframe and part == 0))
        return packets

    def report(self, index: int, ntp_base: int) -> tuple[int, int]:
        """The (NTP, RTP) pair of a sender report at frame ``index``."""
        return ntp_base + index * (2**32 // 30), (self.ts_base + index * FRAME) & 0xFFFFFFFF


def _align(layers: dict[str, FakeLayer], reported: bool) -> Callable[[str, str], int | None]:
    def align(old: str, new: str) -> int | None:
        if not reported:
            return None
        return (layers[old].ts_base - layers[new].ts_base) & 0xFFFFFFFF

    return align


@dataclass
class Harness:
    """A splicer and what it sent: output sequence numbers, timestamps and payloads."""

    splicer: Splicer
    align: Callable[[str, str], int | None]
    seq: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    def push(self, layer: FakeLayer, packets: Sequence[tuple[RtpPacket, bool]], now: float) -> None:
        for packet, keyframe in packets:
            for sent, seq, ts in self.splicer.push(packet, layer.rid, keyframe, now, self.align):
                self.seq.append(seq)
                self.ts.append(ts)
                self.payloads.append(sent.payload)


def _continuous(out: Harness) -> None:
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(out.seq)), out.seq
    steps = [(b - a) & 0xFFFFFFFF for a, b in pairwise(out.ts)]
    assert all(step < 2**31 for step in steps), steps  # never backwards


def _two_layers() -> dict[str, FakeLayer]:
    return {
        "a": FakeLayer("a", seq=65_530, ts_base=4_294_960_000),
        "b": FakeLayer("b", seq=1_000, ts_base=123_456, packets_per_frame=1),
    }


@pytest.mark.parametrize("reported", [True, False])
def test_switch_waits_for_a_keyframe_and_continues_the_stream(reported: bool) -> None:
    layers = _two_layers()
    align = _align(layers, reported)
    splicer = Splicer(CLOCK, first_seq=65_534)
    out = Harness(splicer, align)
    splicer.want("b")
    for index in range(3):  # b's first frames are not keyframes: nothing starts
        out.push(layers["b"], layers["b"].frame(index), index / 30)
    assert out.seq == []
    for index in range(3, 10):
        out.push(layers["b"], layers["b"].frame(index, index == 3), index / 30)
        out.push(layers["a"], layers["a"].frame(index), index / 30)
    assert splicer.current == "b"
    assert out.ts[0] == layers["b"].ts_base + 3 * FRAME  # the first layer keeps its clock
    b_frames = len(out.seq)
    splicer.want("a")
    for index in range(10, 20):
        keyframe = index == 14
        out.push(layers["b"], layers["b"].frame(index), index / 30)
        a_frame = layers["a"].frame(index, keyframe)
        out.push(layers["a"], a_frame, index / 30 + 0.005)
    assert splicer.current == "a"
    _continuous(out)
    # b up to frame 14, then a from its keyframe (frame 14) on.
    assert len(out.seq) == b_frames + 5 + 6 * 2
    switch = b_frames + 5
    assert out.payloads[switch - 1] == bytes([1, 0]) and out.payloads[switch] == bytes([2, 0])
    # a's keyframe is frame 14, like b's last frame sent, and arrived 5 ms after it.
    step = (out.ts[switch] - out.ts[switch - 1]) & 0xFFFFFFFF
    # Sender reports place it at that same instant, so it goes one tick later; without
    # them, arrival time places it 5 ms later.
    assert step == (1 if reported else 450)
    assert (out.ts[switch + 2] - out.ts[switch]) & 0xFFFFFFFF == FRAME


def test_switch_lets_the_old_layers_frame_finish_first() -> None:
    layers = _two_layers()
    layers["b"].packets_per_frame = 3
    align = _align(layers, True)
    splicer = Splicer(CLOCK, first_seq=0)
    out = Harness(splicer, align)
    splicer.want("b")
    out.push(layers["b"], layers["b"].frame(0, True), 0.0)
    splicer.want("a")
    b_frame, a_frame = layers["b"].frame(1), layers["a"].frame(1, True)
    # a's keyframe starts while b's frame 1 is half sent: a waits for b's marker.
    out.push(layers["b"], b_frame[:1], 0.03)
    out.push(layers["a"], a_frame, 0.03)
    assert splicer.current == "b"
    out.push(layers["b"], b_frame[1:], 0.03)
    assert splicer.current == "a"
    assert out.payloads == [bytes([3, n]) for n in (0, 1, 2, 0, 1, 2)] + [
        bytes([2, 0]),
        bytes([2, 1]),
    ]
    _continuous(out)


def test_late_packets_of_the_old_layer_fill_only_holes_before_the_cut() -> None:
    layers = _two_layers()
    align = _align(layers, True)
    splicer = Splicer(CLOCK, first_seq=100)
    out = Harness(splicer, align)
    splicer.want("a")
    first = layers["a"].frame(0, True)
    lost = layers["a"].frame(1)
    out.push(layers["a"], first, 0.0)
    out.push(layers["a"], lost[1:], 0.03)
    splicer.want("b")
    out.push(layers["b"], layers["b"].frame(2, True), 0.06)
    assert splicer.current == "b"
    # a's lost packet comes back as a retransmission: it lands in its old place ...
    out.push(layers["a"], lost[:1], 0.07)
    assert out.seq[-1] == 102
    # ... while a's newer packets are not forwarded any more.
    out.push(layers["a"], layers["a"].frame(3), 0.1)
    assert out.seq == [100, 101, 103, 104, 102]


def test_sender_reports_are_translated_like_the_packets() -> None:
    layers = _two_layers()
    align = _align(layers, True)
    splicer = Splicer(CLOCK, first_seq=0)
    out = Harness(splicer, align)
    splicer.want("b")
    out.push(layers["b"], layers["b"].frame(0, True), 0.0)
    _, b_rtp = layers["b"].report(5, ntp_base=0)
    assert splicer.rtp_timestamp("b", b_rtp) == b_rtp
    splicer.want("a")
    out.push(layers["a"], layers["a"].frame(1, True), 0.03)
    _, a_rtp = layers["a"].report(5, ntp_base=0)
    # After the switch a's report says what b's said for the same instant; b's is not relayed.
    assert splicer.rtp_timestamp("a", a_rtp) == b_rtp
    assert splicer.rtp_timestamp("b", b_rtp) is None


def test_restart_continues_sequence_numbers_and_timestamps() -> None:
    def align(old: str, new: str) -> None:
        return None

    splicer = Splicer(CLOCK, first_seq=10)
    out = Harness(splicer, align)
    splicer.want("")
    first = FakeLayer("", seq=65_535, ts_base=4_000_000_000)
    out.push(first, first.frame(0, True), 0.0)
    splicer.restart()
    other = FakeLayer("", seq=7, ts_base=999)
    out.push(other, other.frame(0), 0.5)
    assert len(out.seq) == 2  # no keyframe yet: the new source has not started
    out.push(other, other.frame(1, True), 0.5)
    _continuous(out)
    assert (out.ts[2] - out.ts[1]) & 0xFFFFFFFF == CLOCK // 2


# -- Chromium publishing simulcast ------------------------------------------------------

WAIT_S = 20.0
MEDIA_S = 30.0
APP_ID, APP_SECRET = "simulcast-app", "simulcast-secret-0123456789"

browser = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)


@dataclass
class Frame:
    at: float
    width: int
    height: int


class VideoPuller:
    """An aiortc subscriber of one video track: what it decodes and the raw RTP and
    sender reports it gets (aiortc keeps neither)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pc = RTCPeerConnection()
        self.session_id = ""
        self.mid = ""
        self.frames: list[Frame] = []
        self.packets: list[tuple[int, int, int, float]] = []
        """(SSRC, sequence number, RTP timestamp, arrival) of every packet."""
        self.reports: list[tuple[int, int, float]] = []
        """(NTP, RTP, arrival) of every sender report."""
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def pull(
        self, client: RealtimeClient, publisher: BrowserParticipant, preference: Any
    ) -> None:
        self.session_id = (await client.new_session()).sessionId

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

        async def answer(offer: SessionDescription) -> SessionDescription:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            for transceiver in self.pc.getTransceivers():
                self._watch(transceiver.receiver)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            return SessionDescription(type="answer", sdp=self.pc.localDescription.sdp)

        track = TrackObject(
            location="remote",
            sessionId=publisher.video.session_id,
            trackName=publisher.video.track_name,
            simulcast=preference,
        )
        result = await client.pull_tracks(self.session_id, [track], answer)
        assert not result.tracks[0].failed, result.tracks[0]
        self.mid = result.tracks[0].mid or ""

    async def prefer(self, client: RealtimeClient, rid: str) -> None:
        update = UpdateTrackObject(mid=self.mid, simulcast=SimulcastPreference(preferredRid=rid))
        result = await client.update_tracks(self.session_id, [update])
        assert not result.tracks[0].failed, result.tracks[0]

    async def wait_for_size(self, width: int, height: int, *, frames: int = 10) -> float:
        """Wait until ``frames`` frames in a row have this size; the first one's time."""

        def run() -> bool:
            tail = self.frames[-frames:]
            return len(tail) == frames and all((f.width, f.height) == (width, height) for f in tail)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(run), WAIT_S)
            except TimeoutError:
                sizes = sorted({(f.width, f.height) for f in self.frames[-60:]})
                raise AssertionError(
                    f"{self.name}: no {width}x{height} frames; saw {sizes}"
                ) from None
        index = len(self.frames) - frames
        while index > 0 and (self.frames[index - 1].width, self.frames[index - 1].height) == (
            width,
            height,
        ):
            index -= 1
        return self.frames[index].at

    async def wait_for_report_after(self, moment: float) -> None:
        """Wait for a relayed sender report that arrived after ``moment``."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: any(at > moment for *_, at in self.reports)),
                WAIT_S,
            )

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, VideoFrame)
            async with self._changed:
                self.frames.append(Frame(time.monotonic(), frame.width, frame.height))
                self._changed.notify_all()

    def _watch(self, receiver: RTCRtpReceiver) -> None:
        original_rtp = receiver._handle_rtp_packet
        original_rtcp = receiver._handle_rtcp_packet

        async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.packets.append(
                (packet.ssrc, packet.sequence_number, packet.timestamp, time.monotonic())
            )
            await original_rtp(packet, arrival_time_ms)

        async def handle_rtcp(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                async with self._changed:
                    self.reports.append((info.ntp_timestamp, info.rtp_timestamp, time.monotonic()))
                    self._changed.notify_all()
            await original_rtcp(packet)

        receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


@asynccontextmanager
async def _simulcast_call(
    media_dir: Path, rids: Sequence[str], width: int, height: int
) -> AsyncIterator[tuple[RealtimeClient, BrowserParticipant, LocalSfu]]:
    media = await asyncio.to_thread(
        write_fake_media, media_dir, 1, MEDIA_S, width=width, height=height
    )
    async with LocalSfu(APP_ID, APP_SECRET) as sfu, BrowserCall(sfu.base_url) as call:
        publisher = await call.join("clinician", media, simulcast=rids)
        async with RealtimeClient(APP_ID, APP_SECRET, base_url=sfu.base_url) as client:
            yield client, publisher, sfu


async def _until_layers(
    publisher: BrowserParticipant, ok: Callable[[list[LayerSendStats]], bool]
) -> list[LayerSendStats]:
    """Poll the page's per-layer stats (getStats has no change event)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        layers = await publisher.layer_stats()
        if ok(layers):
            return layers
        if time.monotonic() > deadline:
            raise AssertionError(f"the layers never got there: {layers}")
        await asyncio.sleep(0.2)


@dataclass
class TwoLayerRun:
    sdp: tuple[str, str]
    sent: list[LayerSendStats]
    preferred_b: VideoPuller
    auto: VideoPuller
    switch_s: float
    """From ``tracks/update`` to the first full-size frame."""
    switch_at: float
    fallback_s: float
    """From layer ``a`` stopping to the automatic subscriber's first half-size frame."""
    back_s: float


async def _two_layer_call(media_dir: Path) -> TwoLayerRun:
    async with _simulcast_call(media_dir, ("a", "b"), 640, 360) as (client, publisher, _):
        sdp = await publisher.negotiated_sdp()
        sent = await _until_layers(
            publisher, lambda layers: all(layer.frames_sent > 0 for layer in layers)
        )
        preferred_b, auto = VideoPuller("preferred b"), VideoPuller("automatic")
        try:
            await preferred_b.pull(client, publisher, SimulcastPreference(preferredRid="b"))
            await auto.pull(client, publisher, None)
            await asyncio.gather(preferred_b.wait_for_size(320, 180), auto.wait_for_size(640, 360))
            await preferred_b.wait_for_report_after(0.0)
            asked = time.monotonic()
            await preferred_b.prefer(client, "a")
            switch_at = await preferred_b.wait_for_size(640, 360)
            await preferred_b.wait_for_report_after(switch_at)
            stopped = time.monotonic()
            await publisher.set_layer_active("a", False)
            fallback_at = await auto.wait_for_size(320, 180)
            restarted = time.monotonic()
            await publisher.set_layer_active("a", True)
            back_at = await auto.wait_for_size(640, 360)
        finally:
            await preferred_b.close()
            await auto.close()
    return TwoLayerRun(
        sdp=sdp,
        sent=sent,
        preferred_b=preferred_b,
        auto=auto,
        switch_s=switch_at - asked,
        switch_at=switch_at,
        fallback_s=fallback_at - stopped,
        back_s=back_at - restarted,
    )


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLayerRun]:
    yield asyncio.run(_two_layer_call(tmp_path_factory.mktemp("media")))


@pytest.mark.slow
@browser
def test_chromium_offers_two_layers_and_the_answer_accepts_them(two_layers: TwoLayerRun) -> None:
    offer, answer = two_layers.sdp
    for line in ("a=rid:a send", "a=rid:b send", "a=simulcast:send a;b"):
        assert line in offer
    for line in ("a=rid:a recv", "a=rid:b recv", "a=simulcast:recv a;b"):
        assert line in answer
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answer.split("m=video")[1]
    sizes = {layer.rid: (layer.width, layer.height) for layer in two_layers.sent}
    assert sizes == {"a": (640, 360), "b": (320, 180)}
    assert len({layer.ssrc for layer in two_layers.sent}) == 2


@pytest.mark.slow
@browser
def test_preferred_rid_b_then_update_to_a(two_layers: TwoLayerRun) -> None:
    puller = two_layers.preferred_b
    print(f"tracks/update to a: first 640x360 frame after {two_layers.switch_s * 1000:.0f} ms")
    assert two_layers.switch_s < 3.0
    before = [f for f in puller.frames if f.at < two_layers.switch_at]
    assert before and {(f.width, f.height) for f in before[5:]} == {(320, 180)}


@pytest.mark.slow
@browser
def test_one_continuous_stream_across_the_switch(two_layers: TwoLayerRun) -> None:
    packets = two_layers.preferred_b.packets
    assert len({ssrc for ssrc, *_ in packets}) == 1
    seqs = [seq for _, seq, _, _ in packets]
    gaps = [(a, b) for a, b in pairwise(seqs) if (b - a) & 0xFFFF != 1]
    assert gaps == []
    stamps = [ts for _, _, ts, _ in packets]
    back = [(a, b) for a, b in pairwise(stamps) if (b - a) & 0xFFFFFFFF >= 2**31]
    assert back == []


@pytest.mark.slow
@browser
def test_relayed_sender_reports_stay_consistent_across_the_switch(two_layers: TwoLayerRun) -> None:
    """Each relayed report's (NTP, RTP) pair must place the packets where the one before the
    switch did: the clock a subscriber builds from reports does not jump."""
    reports = two_layers.preferred_b.reports
    before = [r for r in reports if r[2] < two_layers.switch_at]
    after = [r for r in reports if r[2] > two_layers.switch_at]
    assert before and after, reports
    ntp0, rtp0, _ = before[-1]
    ntp1, rtp1, _ = after[-1]
    predicted = rtp0 + round((ntp1 - ntp0) * CLOCK / 2**32)
    error_ms = (((rtp1 - predicted) + 2**31) % 2**32 - 2**31) / 90
    print(f"sender report mapping across the switch moved by {error_ms:.1f} ms")
    assert abs(error_ms) < 20


@pytest.mark.slow
@browser
def test_without_preferred_rid_the_highest_layer_and_a_fallback(two_layers: TwoLayerRun) -> None:
    frames = two_layers.auto.frames
    assert (frames[20].width, frames[20].height) == (640, 360)
    print(
        f"layer a stopped: half size after {two_layers.fallback_s * 1000:.0f} ms;"
        f" restarted: full size after {two_layers.back_s * 1000:.0f} ms"
    )
    assert two_layers.fallback_s < 4.0
    assert two_layers.back_s < 6.0


@pytest.mark.slow
@browser
async def test_chromium_three_layers_h_m_l(tmp_path: Path) -> None:
    async with _simulcast_call(tmp_path, ("h", "m", "l"), 960, 540) as (client, publisher, _):
        sent = await _until_layers(
            publisher, lambda layers: len(layers) == 3 and all(x.frames_sent for x in layers)
        )
        sizes = {layer.rid: (layer.width, layer.height) for layer in sent}
        print(f"Chromium's h/m/l layers from a 960x540 camera: {sizes}")
        for rid, scale in (("h", 1), ("m", 2), ("l", 4)):
            assert abs(sizes[rid][0] - 960 // scale) <= 1, sizes
            assert abs(sizes[rid][1] - 540 // scale) <= 1, sizes
        pullers = {rid: VideoPuller(rid or "automatic") for rid in ("m", "l", "")}
        try:
            for rid, puller in pullers.items():
                preference = SimulcastPreference(preferredRid=rid) if rid else None
                await puller.pull(client, publisher, preference)
            await asyncio.gather(
                pullers["m"].wait_for_size(*sizes["m"]),
                pullers["l"].wait_for_size(*sizes["l"]),
                pullers[""].wait_for_size(*sizes["h"]),
            )
        finally:
            for puller in pullers.values():
                await puller.close()


pytestmark = pytest.mark.timeout(180)
