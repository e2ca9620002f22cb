"""What the receive path costs per RTP packet: aiortc's own way against handling each
packet where its datagram arrives (``bot.rtc.aiortc_compat.handle_rtp_on_arrival``).

Usage: ``.venv/bin/python -m bench.receive_path [--packets 20000] [--runs 5]``

Two aiortc peers connect over real UDP on this machine (ICE, DTLS, SRTP keys agreed as
in a call); the receiving m-line has the recorder's tap installed (MID routing, the
clock, the loss-tolerant jitter buffer, no decoding, every frame handed to an archive
sink that keeps nothing, as in tracks mode). Then, in this process, SRTP packets
protected with the sender's keys (one-packet VP8 frames, 30 a second of RTP time) are
handed to the receiving ICE socket's datagram callback one per turn of the event loop,
as the loop does when packets arrive one by one, until the last has reached the sink. The
CPU (user + system of this process) per packet is measured for aiortc's way and for
the on-arrival way, in fresh pairs of peers, alternately, and the medians are reported
with their ratio. The network, the sender's encoder and the archive's muxing are not in
the figures: this is the receive path alone, the part of a recording that is per packet.

The bench feeds aiortc's private parts directly (the sender's SRTP session, the
receiver's ICE protocol): it measures them, it is not the product.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiortc import RTCPeerConnection, RTCRtpCodecParameters

from bench.measure import machine_summary, median
from bot.logs import configure_logging
from bot.rtc.aiortc_compat import handle_rtp_on_arrival, negotiated_codecs, route_by_mid
from bot.rtc.clock import StreamClock
from bot.rtc.receiver_tap import ReceiverTap
from bot.timeline import Timeline

VP8_KEYFRAME = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0x68, 0x01]) + bytes(1000)
"""A VP8 payload descriptor (start of partition 0) and a 640x360 keyframe header,
padded to the size of a packet of the synthetic participants' video."""


@dataclass(frozen=True)
class Run:
    way: str
    cpu_us_per_packet: float
    frames: int


class _Pair:
    """A sender and a receiver peer, connected; the receiver tapped as the recorder taps."""

    def __init__(self) -> None:
        self.sender, self.receiver = RTCPeerConnection(), RTCPeerConnection()
        self.frames = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def connect(self) -> None:
        # A sender without a track sends no media of its own, only what is fed below.
        self.sender.addTransceiver("video", direction="sendonly")
        await self.sender.setLocalDescription(await self.sender.createOffer())
        await self.receiver.setRemoteDescription(self.sender.localDescription)
        transceiver = self.receiver.getTransceivers()[0]
        tap = ReceiverTap(transceiver.receiver, "video", decode=False)
        codecs: list[RTCRtpCodecParameters] = negotiated_codecs(transceiver)
        tap.retarget(StreamClock(90_000, None, Timeline(time.time())), codecs)
        tap.archive_to(self._archived)
        connected = asyncio.Event()

        @self.receiver.on("connectionstatechange")
        def _on_state() -> None:
            if self.receiver.connectionState == "connected":
                connected.set()

        await self.receiver.setLocalDescription(await self.receiver.createAnswer())
        route_by_mid(transceiver.receiver.transport)
        await self.sender.setRemoteDescription(self.receiver.localDescription)
        async with asyncio.timeout(30):
            await connected.wait()
        self.dtls = transceiver.receiver.transport
        sdp = self.receiver.remoteDescription.sdp
        self.ssrc = int(re.search(r"a=ssrc:(\d+) ", sdp).group(1))  # type: ignore[union-attr]
        self.payload_type = int(
            re.search(r"a=rtpmap:(\d+) VP8/90000", sdp).group(1)  # type: ignore[union-attr]
        )

    def _archived(self, timestamp: int, data: bytes) -> None:
        self.frames += 1
        if self.frames >= self.expected:
            self.done.set()

    def packets(self, count: int, first_seq: int) -> list[bytes]:
        """``count`` SRTP packets, one VP8 keyframe each, protected with the sender's keys."""
        protect = self.sender.getTransceivers()[0].sender.transport._tx_srtp.protect
        out = []
        for n in range(count):
            seq = (first_seq + n) & 0xFFFF
            header = struct.pack(
                "!BBHII", 0x80, 0x80 | self.payload_type, seq, 3000 * (first_seq + n), self.ssrc
            )
            out.append(protect(header + VP8_KEYFRAME))
        return out

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(way: str, count: int) -> Run:
    pair = _Pair()
    try:
        await pair.connect()
        if way == "on arrival":
            handle_rtp_on_arrival(pair.dtls)
        warm_up = pair.packets(200, 1)
        packets = pair.packets(count, 1 + len(warm_up))
        addr = ("127.0.0.1", 9)
        # The nominated pair's protocol is the one its datagrams arrive on.
        nominated = next(iter(pair.dtls.transport._connection._nominated.values()))
        deliver = nominated.protocol.datagram_received
        for batch, frames in ((warm_up, len(warm_up) - 1), (packets, len(packets))):
            # A frame is complete when the next one's first packet comes: the batch's
            # first packet completes the warm-up's last frame, its last one waits.
            pair.frames, pair.expected = 0, frames
            pair.done.clear()
            began = _cpu()
            for datagram in batch:
                deliver(datagram, addr)
                # One datagram per turn of the loop, as when packets arrive one by one
                # (aiortc's task runs in the next turn).
                await asyncio.sleep(0)
            async with asyncio.timeout(60):
                await pair.done.wait()
            spent = _cpu() - began
        return Run(way, spent / count * 1e6, pair.frames)
    finally:
        await pair.close()


async def run_report(count: int, runs: int) -> str:
    results: dict[str, list[Run]] = {"aiortc": [], "on arrival": []}
    for _ in range(runs):
        for way, found in results.items():
            found.append(await measure(way, count))
    lines = [machine_summary(), f"{count} packets per run, {runs} runs per way, medians", ""]
    lines.append(f"{'way':<12}{'CPU us/packet':>15}{'frames':>8}")
    figures = {}
    for way, found in results.items():
        figures[way] = median([r.cpu_us_per_packet for r in found])
        lines.append(f"{way:<12}{figures[way]:>15.1f}{found[0].frames:>8}")
    lines.append("")
    lines.append(f"on arrival / aiortc's way: {figures['on arrival'] / figures['aiortc']:.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--packets", type=int, default=20_000, help="packets per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per way")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receive_path", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("warning")
    print(asyncio.run(run_report(args.packets, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
