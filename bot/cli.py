"""Command line: ``bot record | selftest | recover | inspect | verify | review`` (and the
testbed's commands).

Each command parses its flags here and hands a typed call to the module that owns the
work, so this file is the map from a command to the code behind it. Errors a user can fix
end as one line on stderr and a documented exit code (see ``bot.exitcodes``). Other
distributions add commands through the ``bot.commands`` entry points: the testbed adds
``demo``, ``sfu`` and ``publish``, which the production image therefore does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Coroutine, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from bot import __version__
from bot.config import ConfigError, Participant, Settings, load_settings
from bot.exitcodes import ExitCode
from bot.logs import configure_logging

if TYPE_CHECKING:
    from bot.recording import RecordingResult


_T = TypeVar("_T")
COMMANDS_ENTRY_POINTS = "bot.commands"


def run_on_uvloop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` on uvloop: the recorder's event loop handles a few hundred packets a
    second, and with uvloop's loop and UDP transports that thread uses 10-20% less CPU."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_recording(main: Coroutine[Any, Any, _T], mode: str) -> _T:
    """Run a recording on the loop that costs it least.

    A tracks-only recording runs on asyncio's own loop: its UDP transports can pause
    reading, so the ICE socket is read in batches (``bot.rtc.datagrams``), 20% less CPU
    than uvloop reading every packet as it comes. A composite stays on uvloop, each
    packet as it comes: read in batches, one CI run's recording never reached its
    completion, not yet explained (BENCHMARKS.md, "decoded frames off the event loop")."""
    if mode != "tracks":
        return run_on_uvloop(main)
    with asyncio.Runner() as runner:
        return runner.run(main)


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(args.config, overrides=overrides)


def _record_overrides(args: argparse.Namespace) -> dict[str, Any]:
    recording: dict[str, Any] = {}
    storage: dict[str, Any] = {}
    if args.consultation_id:
        recording["consultation_id"] = args.consultation_id
    if args.participant:
        recording["participants"] = [Participant.parse(p).model_dump() for p in args.participant]
    if args.max_duration is not None:
        recording["max_duration"] = args.max_duration
    if args.output_dir is not None:
        storage["local_dir"] = str(args.output_dir)
    if args.storage is not None:
        storage["backend"] = args.storage
    return {"recording": recording, "storage": storage}


def _cmd_record(args: argparse.Namespace) -> int:
    from bot.control.run import ControlledRecording

    try:
        settings = _settings(args, _record_overrides(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    configure_logging(settings.logging.level, settings.logging.format)

    async def run() -> RecordingResult:
        # Built on the loop: the control server, audit writer and webhook belong to it.
        return await ControlledRecording(settings).run()

    result = run_recording(run(), settings.recording.mode)
    if result.error:
        print(f"bot: error: {result.error}", file=sys.stderr)
    if result.path is not None:
        print(result.summary())
    return int(result.exit_code)


def _cmd_selftest(args: argparse.Namespace) -> int:
    from bot.selftest import Step, config_failure, run_selftest
    from bot.synthetic.participant import SyntheticParticipant

    # Each step is one line here; log lines and library tracebacks would bury them.
    configure_logging("info" if args.verbose else "critical")
    if not args.verbose:
        logging.disable(logging.CRITICAL)

    def show(step: Step) -> None:
        if not args.json:
            print(step.line(), flush=True)

    try:
        settings = _settings(args)
    except ConfigError as exc:
        report = config_failure(str(exc))
        for step in report.steps:
            show(step)
    else:
        realtime, recording = settings.realtime, settings.recording
        if not args.json:
            print(f"bot selftest: {args.duration:g} s through Cloudflare Realtime into the bucket")
        report = run_on_uvloop(
            run_selftest(
                settings,
                lambda client: SyntheticParticipant(
                    client,
                    number=1,
                    role="clinician",
                    ice_servers=realtime.ice_servers,
                    connect_timeout=recording.connect_timeout,
                ),
                duration=args.duration,
                keep=args.keep,
                on_step=show,
            )
        )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.verdict())
    return int(report.exit_code)


def _cmd_recover(args: argparse.Namespace) -> int:
    from bot.recording.recovery import recover_all

    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    return run_on_uvloop(recover_all(settings))


def _cmd_compose(args: argparse.Namespace) -> int:
    from bot.compose import ComposeError, compose
    from bot.storage import StorageError

    overrides = {"recording": {"encoder_threads": args.threads}} if args.threads else None
    settings = _settings(args, overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        done = run_on_uvloop(compose(settings, key=args.key, folder=args.tracks))
    except ComposeError as exc:
        print(f"bot: error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except StorageError as exc:
        print(f"bot: error: {exc}", file=sys.stderr)
        return int(ExitCode.STORAGE)
    speed = done.media.duration / done.seconds if done.seconds else 0.0
    print(
        f"composite {done.upload.location} duration={done.media.duration:.2f}s "
        f"in {done.seconds:.1f}s ({speed:.1f}x real time) verified=True"
    )
    return int(ExitCode.OK)


def _cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from bot.custody.signing import SignatureError, load_public_keys
    from bot.custody.verify import fetch_record, local_record, verify_record
    from bot.storage import StorageError
    from bot.storage.stores import open_store

    try:
        keys = [key for path in args.public_key for key in load_public_keys(path)]
    except (OSError, SignatureError) as exc:
        print(f"bot: error: --public-key: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    with tempfile.TemporaryDirectory(prefix="bot-verify-") as scratch:
        try:
            if not args.from_store:
                media = Path(args.target)
                evidence = local_record(
                    media,
                    manifest=args.manifest,
                    signature=args.signature,
                    trail=args.audit,
                    fhir=args.fhir,
                )
            else:
                store = open_store(_settings(args).storage)
                media, evidence = fetch_record(store, str(args.target), Path(scratch))
        except (OSError, StorageError) as exc:
            print(f"bot: error: cannot read the record: {exc}", file=sys.stderr)
            return int(ExitCode.CONFIG)
        verdict = verify_record(
            media,
            evidence,
            keys,
            subject=str(args.target),
            allow_unsigned=args.allow_unsigned,
        )
    print(json.dumps(verdict.as_dict(), indent=2) if args.json else verdict.text())
    return int(ExitCode.OK if verdict.ok else ExitCode.NOT_VERIFIED)


def _cmd_inspect(args: argparse.Namespace) -> int:
    import av
    import pydantic

    from bot.inspect.report import inspect_recording, summarize
    from bot.inspect.timeline_png import TimelineUnavailable, default_png_path, render_timeline

    try:
        print(summarize(args.file))
        inspection = inspect_recording(args.file, args.manifest)
    except av.error.FFmpegError as exc:
        print(f"bot: error: {args.file} is not a readable recording: {exc}", file=sys.stderr)
        return int(ExitCode.MEDIA)
    except (OSError, pydantic.ValidationError) as exc:
        print(f"bot: error: cannot inspect {args.file}: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    print(inspection.report())
    if args.no_png:
        return 0
    try:
        timeline = render_timeline(inspection, args.png or default_png_path(args.file))
    except (TimelineUnavailable, OSError) as exc:
        print(f"bot: error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    print(f"timeline: {timeline.path} ({timeline.width}x{timeline.height})")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from bot.custody.signing import SignatureError, load_public_keys
    from bot.review import serve
    from bot.storage import StorageError

    try:
        keys = [key for path in args.public_key for key in load_public_keys(path)]
    except (OSError, SignatureError) as exc:
        print(f"bot: error: --public-key: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        run_on_uvloop(
            serve(
                settings.storage,
                host=args.host,
                port=args.port,
                public_keys=keys,
                limit=args.limit,
                announce=lambda line: print(line, flush=True),
            )
        )
    except StorageError as exc:
        print(f"bot: error: {exc}", file=sys.stderr)
        return int(ExitCode.STORAGE)
    except OSError as exc:
        print(f"bot: error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the page is closed
    return int(ExitCode.OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_record(sub)
    _add_selftest(sub)
    _add_recover(sub)
    _add_compose(sub)
    _add_inspect(sub)
    _add_verify(sub)
    _add_review(sub)
    if not _add_registered_commands(sub):
        parser.epilog = (
            "demo, sfu and publish are the testbed's commands; a development checkout has "
            "them after `pip install -e ./testbed` (make demo and make test do it)"
        )
    return parser


def _add_compose(sub: Any) -> None:
    compose = sub.add_parser(
        "compose", help="make the composite MP4 of a recording kept as tracks, afterwards"
    )
    compose.add_argument("--config", type=Path, help="config.toml (default: built-in defaults)")
    source = compose.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--key", help="the recording's composite object key (its tracks are under <stem>.tracks/)"
    )
    source.add_argument(
        "--tracks", type=Path, help="a folder holding the track files and their manifests"
    )
    compose.add_argument(
        "--threads", type=int, default=0, help="x264 threads (default: recording.encoder_threads)"
    )
    compose.set_defaults(run=_cmd_compose)


def _add_record(sub: Any) -> None:
    record = sub.add_parser("record", help="record one consultation")
    record.add_argument("--config", type=Path, help="config.toml (default: built-in defaults)")
    record.add_argument("--consultation-id", help="opaque consultation id (no patient data)")
    record.add_argument(
        "--participant",
        action="append",
        metavar="ID:ROLE=SESSION/TRACK[,SESSION/TRACK]",
        help="a participant and the tracks to pull; repeat for each participant",
    )
    record.add_argument("--max-duration", type=float, help="stop after this many seconds")
    record.add_argument(
        "--output-dir", type=Path, help="where verified recordings go (local storage backend)"
    )
    record.add_argument("--storage", choices=["local", "s3"], help="override storage.backend")
    record.set_defaults(run=_cmd_record)


def _add_selftest(sub: Any) -> None:
    selftest = sub.add_parser(
        "selftest", help="publish, record, store and delete a 10-s test against the real service"
    )
    selftest.add_argument("--config", type=Path, help="config.toml (as for bot record)")
    selftest.add_argument(
        "--duration", type=float, default=10.0, help="seconds to record (default 10)"
    )
    selftest.add_argument(
        "--keep", action="store_true", help="leave the test recording in the bucket"
    )
    selftest.add_argument("--json", action="store_true", help="one JSON report on stdout")
    selftest.add_argument("--verbose", action="store_true", help="the recorder's logs on stderr")
    selftest.set_defaults(run=_cmd_selftest)


def _add_recover(sub: Any) -> None:
    recover = sub.add_parser("recover", help="finish uploads left by a crash")
    recover.add_argument("--config", type=Path)
    recover.set_defaults(run=_cmd_recover)


def _add_inspect(sub: Any) -> None:
    inspect = sub.add_parser("inspect", help="report on a recording and draw its timeline")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--manifest", type=Path, help="the recording's manifest (default: <file>.manifest.json)"
    )
    png = inspect.add_mutually_exclusive_group()
    png.add_argument("--png", type=Path, help="timeline picture (default: <file>.timeline.png)")
    png.add_argument("--no-png", action="store_true", help="text report only")
    inspect.set_defaults(run=_cmd_inspect)


def _add_verify(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="prove a stored record: object, fragment chain, audit trail, signature, decoding",
    )
    verify.add_argument(
        "target", help="a local recording file, or with --from-store the object key"
    )
    verify.add_argument(
        "--from-store",
        action="store_true",
        help="read the record from the configured store (--config and BOT_STORAGE_*)",
    )
    verify.add_argument("--config", type=Path, help="config.toml naming the store")
    verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="the clinic's public key (PEM) or key set (JWKS); repeat for rotated keys",
    )
    for name in ("manifest", "signature", "audit", "fhir"):
        verify.add_argument(f"--{name}", type=Path, help=f"the {name} file (default: beside it)")
    verify.add_argument(
        "--allow-unsigned", action="store_true", help="accept a record made without a key"
    )
    verify.add_argument("--json", action="store_true", help="the verdict as JSON on stdout")
    verify.set_defaults(run=_cmd_verify)


def _add_review(sub: Any) -> None:
    review = sub.add_parser(
        "review", help="a read-only web page on loopback listing and showing stored recordings"
    )
    review.add_argument("--config", type=Path, help="config.toml naming the store")
    review.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    review.add_argument(
        "--port", type=int, default=8790, help="port (default 8790; 0 for any free port)"
    )
    review.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="the clinic's public key (PEM or JWKS), for the page's bot verify; repeatable",
    )
    review.add_argument(
        "--limit", type=int, default=200, help="list at most this many recordings (newest)"
    )
    review.set_defaults(run=_cmd_review)


def _add_registered_commands(sub: Any) -> int:
    """Let installed distributions add their commands (``bot.commands`` entry points);
    returns how many did."""
    found = sorted(entry_points(group=COMMANDS_ENTRY_POINTS), key=lambda entry: entry.name)
    for entry in found:
        entry.load()(sub)
    return len(found)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"bot: config error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return code


if __name__ == "__main__":
    sys.exit(main())
