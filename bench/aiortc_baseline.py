"""The baseline: pull the call's tracks and record them with aiortc's ``MediaRecorder``.

This is what a user starts from with aiortc alone. It does no composite and no mix: each
pulled track becomes its own stream in one MP4 (two 640x360 H.264 streams at libx264's
defaults, two AAC streams), so it does less work than the recorder and the ffmpeg
command. Run as ``python -m bench.aiortc_baseline``; the app secret comes from
``BOT_REALTIME_APP_SECRET`` so it never shows in a process listing. Prints one JSON line:
the media seconds recorded, counted from the connection to the stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import MediaStreamTrack

from bot.config import TrackRef
from bot.realtime import RealtimeClient, SessionDescription, TrackObject

CONNECT_TIMEOUT = 20.0


async def record_with_media_recorder(
    client: RealtimeClient, refs: Sequence[TrackRef], seconds: float, output: Path
) -> float:
    """Record ``refs`` for ``seconds`` after the connection is up; returns the span."""
    loop = asyncio.get_running_loop()
    session = await client.new_session()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    recorder = MediaRecorder(str(output))
    connected = asyncio.Event()

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        recorder.addTrack(track)

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    async def answer(offer: SessionDescription) -> SessionDescription:
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
        await pc.setLocalDescription(await pc.createAnswer())
        return SessionDescription(type="answer", sdp=pc.localDescription.sdp)

    try:
        # One pull per publisher, as the recorder does: with both video tracks in one pull,
        # plain aiortc decoded no video at all from the local SFU (seen while
        # benchmarking; not investigated further, the recorder pulls per publisher).
        publishers: dict[str, list[TrackRef]] = {}
        for ref in refs:
            publishers.setdefault(ref.session_id, []).append(ref)
        for group in publishers.values():
            objects = [
                TrackObject(location="remote", sessionId=r.session_id, trackName=r.track_name)
                for r in group
            ]
            await client.pull_tracks(session.sessionId, objects, answer)
        await recorder.start()
        await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT)
        started = loop.time()
        await asyncio.sleep(seconds)
        span = loop.time() - started
    finally:
        await recorder.stop()
        await pc.close()
    return span


async def _main(args: argparse.Namespace) -> int:
    secret = os.environ.get("BOT_REALTIME_APP_SECRET", "")
    async with RealtimeClient(args.app_id, secret, base_url=args.base_url) as client:
        span = await record_with_media_recorder(
            client, [TrackRef.parse(t) for t in args.track], args.seconds, args.output
        )
    print(json.dumps({"media_seconds": span}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aiortc_baseline")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--track", action="append", required=True, metavar="SESSION/TRACK")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--output", type=Path, required=True)
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
