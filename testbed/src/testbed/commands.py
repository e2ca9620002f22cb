"""The testbed's commands in ``bot``: ``demo``, ``sfu`` and ``publish``.

bot's command line finds them through the ``bot.commands`` entry points of this
distribution, so the production image (which does not install it) has none of them.
Each command loads what it runs only when it runs: every ``bot`` invocation loads this
module, and ``bot record`` in a development checkout must cost what it costs in the
image (the synthetic participant alone brings numpy, about 20 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal as signals
from pathlib import Path
from typing import Any

import structlog

from bot.cli import run_on_uvloop
from bot.config import ConfigError
from bot.exitcodes import ExitCode
from bot.logs import configure_logging
from bot.realtime import AuthenticationError, RealtimeClient, RealtimeError

log = structlog.get_logger("testbed.commands")

Subparsers = Any
"""argparse's ``_SubParsersAction`` (private in typeshed)."""


def add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="local SFU + two synthetic participants + recorder")
    demo.add_argument("--duration", type=float, default=10.0)
    demo.add_argument("--output-dir", type=Path, default=Path("recordings"))
    demo.add_argument("--storage", choices=["s3", "local"], default="s3")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from testbed.demo import run_demo

    configure_logging("warning" if not args.verbose else "info")
    return run_on_uvloop(
        run_demo(duration=args.duration, output_dir=args.output_dir, storage=args.storage)
    )


def add_sfu(sub: Subparsers) -> None:
    sfu = sub.add_parser("sfu", help="run the local Cloudflare-compatible SFU")
    sfu.add_argument("--host", default="127.0.0.1")
    sfu.add_argument("--port", type=int, default=8787)
    sfu.add_argument("--app-id", required=True)
    sfu.add_argument("--app-secret", required=True)
    sfu.add_argument("--no-sender-reports", action="store_true", help="withhold RTCP SRs")
    sfu.add_argument("--no-ssrc-lines", action="store_true", help="omit a=ssrc from offers")
    sfu.set_defaults(run=_sfu)


def _sfu(args: argparse.Namespace) -> int:
    from testbed.sfu import serve_forever

    configure_logging("info")
    run_on_uvloop(
        serve_forever(
            host=args.host,
            port=args.port,
            app_id=args.app_id,
            app_secret=args.app_secret,
            sender_reports=not args.no_sender_reports,
            ssrc_in_sdp=not args.no_ssrc_lines,
        )
    )
    return 0


def add_publish(sub: Subparsers) -> None:
    publish = sub.add_parser("publish", help="publish a synthetic participant")
    publish.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8787/v1")
    publish.add_argument("--app-id", required=True)
    publish.add_argument("--app-secret", required=True)
    publish.add_argument("--role", default="clinician")
    publish.add_argument("--number", type=int, default=1, help="participant number in the signal")
    publish.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    publish.add_argument(
        "--codec",
        choices=("VP8", "H264", "H264-high"),
        default="VP8",
        help="video codec; H264-high is High profile offered as 640c1f only",
    )
    publish.set_defaults(run=_publish)


def _publish(args: argparse.Namespace) -> int:
    configure_logging("info")
    return run_on_uvloop(
        publish_until_stopped(
            base_url=args.base_url,
            app_id=args.app_id,
            app_secret=args.app_secret,
            role=args.role,
            number=args.number,
            duration=args.duration,
            codec=args.codec,
        )
    )


async def publish_until_stopped(
    *,
    base_url: str,
    app_id: str,
    app_secret: str,
    role: str,
    number: int,
    duration: float | None,
    codec: str = "VP8",
) -> int:
    """``bot publish``: print the track references as one JSON line, publish until told.

    Stops after ``duration`` seconds (None: never) or on SIGINT/SIGTERM; either is a
    normal end (exit 0).
    """
    from bot.synthetic.participant import PublishError, SyntheticParticipant, ice_servers_for

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            client = RealtimeClient(app_id, app_secret, base_url=base_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        async with client:
            participant = SyntheticParticipant(
                client,
                number=number,
                role=role,
                codec=codec,
                ice_servers=ice_servers_for(base_url),
            )
            try:
                await participant.start()
                line = {
                    "role": role,
                    "number": number,
                    "session_id": participant.session_id,
                    "tracks": participant.track_refs,
                }
                print(json.dumps(line), flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration)
            finally:
                await participant.stop()
    except AuthenticationError as exc:
        log.error("participant.auth_failed", error=str(exc))
        return int(ExitCode.REALTIME_AUTH)
    except (RealtimeError, PublishError) as exc:
        log.error("participant.publish_failed", error=str(exc))
        return int(ExitCode.REALTIME)
    finally:
        for sig in (signals.SIGINT, signals.SIGTERM):
            loop.remove_signal_handler(sig)
    return int(ExitCode.OK)
