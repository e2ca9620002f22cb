"""The three contenders, each run as a measured child process on the same input.

- the recorder: ``python -m bot record`` pulling the call's participants;
- aiortc's MediaRecorder: ``python -m bench.aiortc_baseline`` pulling the same tracks
  (no composite, no mix: one encoded stream per track, the baseline users start from);
- Debian's ``ffmpeg`` doing the recorder's composite from pre-recorded inputs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog
from testbed.stack import LocalCall, participant_flag, start_local_sfu

from bench.measure import MeasuredProcess, Usage, media_duration, video_packets
from bot.config import RecordingSettings
from bot.media.layout import grid

log = structlog.get_logger("bot.bench")

INPUT_WIDTH, INPUT_HEIGHT, INPUT_FPS = 640, 360, 30
STOP_GRACE = 120.0
"""Start-up, finishing the MP4 and verifying it: beyond this a live contender is hung."""


class BenchError(Exception):
    """A contender failed; the message carries the end of its stderr."""


@dataclass(frozen=True)
class Measurement:
    name: str
    usage: Usage
    media_seconds: float
    frames_kept: float | None = None
    """Share of the input's video frames that reached the file, where it can be told.

    A contender starved of CPU can fall behind and drop or never encode frames, which
    lowers its CPU figure; this makes that visible.
    """

    @property
    def cpu_per_media_second(self) -> float:
        return self.usage.cpu_seconds / self.media_seconds


def start_recorder(call: LocalCall, workdir: Path, seconds: float) -> MeasuredProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bot", "record", "--consultation-id", "bench"]
    for participant in call.participants:
        argv += ["--participant", participant_flag(participant)]
    argv += ["--max-duration", f"{seconds:g}"]
    return MeasuredProcess(
        argv,
        env=call.recorder_env(workdir),
        stdout=workdir / "recorder.out",
        stderr=workdir / "recorder.err",
    )


async def finish_recorder(process: MeasuredProcess, workdir: Path, seconds: float) -> Measurement:
    """Wait for the recorder to stop at its max duration, plus ``STOP_GRACE`` seconds."""
    usage, stopped = await process.wait_or_stop(seconds + STOP_GRACE)
    if stopped:
        raise BenchError(
            f"recorder still running {STOP_GRACE:g} s after its {seconds:g} s max duration; "
            "stopped it:\n" + process.stderr_tail()
        )
    outputs = sorted((workdir / "out").rglob("*.mp4"))
    if usage.exit_code != 0 or len(outputs) != 1:
        raise BenchError(
            f"recorder exited {usage.exit_code} with {len(outputs)} recordings:\n"
            + process.stderr_tail()
        )
    return Measurement("recorder", usage, await media_duration(outputs[0]))


async def run_recorder(call: LocalCall, workdir: Path, seconds: float) -> Measurement:
    log.info("bench.recorder_started", seconds=seconds)
    return await finish_recorder(start_recorder(call, workdir, seconds), workdir, seconds)


async def run_aiortc_baseline(call: LocalCall, workdir: Path, seconds: float) -> Measurement:
    """aiortc's MediaRecorder; media seconds are its own count from connection to stop."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "bench.aiortc_baseline",
        "--base-url",
        call.base_url,
        "--app-id",
        call.app_id,
        "--seconds",
        f"{seconds:g}",
        "--output",
        str(workdir / "aiortc.mp4"),
    ]
    for participant in call.participants:
        for track in participant.tracks:
            argv += ["--track", str(track)]
    log.info("bench.aiortc_started", seconds=seconds)
    process = MeasuredProcess(
        argv,
        env=call.recorder_env(workdir),
        stdout=workdir / "aiortc.out",
        stderr=workdir / "aiortc.err",
    )
    usage, stopped = await process.wait_or_stop(seconds + STOP_GRACE)
    if usage.exit_code != 0 or stopped:
        raise BenchError(f"aiortc baseline exited {usage.exit_code}:\n" + process.stderr_tail())
    report = json.loads(process.stdout_path.read_text(encoding="utf-8").splitlines()[-1])
    media_seconds = float(report["media_seconds"])
    expected = INPUT_FPS * media_seconds * len(call.participants)  # one video track each
    kept = await video_packets(workdir / "aiortc.mp4") / expected
    return Measurement("aiortc MediaRecorder", usage, media_seconds, frames_kept=kept)


def ffmpeg_composite_argv(
    inputs: list[Path],
    output: Path,
    settings: RecordingSettings | None = None,
    *,
    x264_default_threads: bool = False,
) -> list[str]:
    """ffmpeg doing what the recorder does, with the recorder's own geometry and encoders.

    Each input is fitted and letterboxed into its grid cell (``bot.media.layout``), the
    cells stacked side by side; audio is a clipped sum (``amix`` without normalisation)
    plus one track per speaker; x264 and AAC take the recorder's default settings,
    including its x264 thread count unless ``x264_default_threads`` (ffmpeg's own choice,
    as a user would type the command); the MP4 is fragmented on keyframes like the
    recorder's.
    """
    rec = settings or RecordingSettings()
    cells = grid(len(inputs), rec.width, rec.height)
    keyint = max(1, round(rec.fps * rec.keyframe_seconds))
    filters: list[str] = []
    for i, cell in enumerate(cells):
        fit = cell.fit(INPUT_WIDTH, INPUT_HEIGHT)
        filters.append(
            f"[{i}:v]fps={rec.fps},scale={fit.width}:{fit.height},format=yuv420p,"
            f"pad={cell.width}:{cell.height}:{fit.x - cell.x}:{fit.y - cell.y}:black[v{i}]"
        )
    layout = "|".join(f"{cell.x}_{cell.y}" for cell in cells)
    stacked = "".join(f"[v{i}]" for i in range(len(cells)))
    if len(cells) == 1:
        filters.append("[v0]null[vout]")
    else:
        filters.append(f"{stacked}xstack=inputs={len(cells)}:layout={layout}:fill=black[vout]")
    for i in range(len(inputs)):
        filters.append(
            f"[{i}:a]aresample={48_000},aformat=channel_layouts=mono,asplit=2[m{i}][s{i}]"
        )
    mix_inputs = "".join(f"[m{i}]" for i in range(len(inputs)))
    filters.append(f"{mix_inputs}amix=inputs={len(inputs)}:normalize=0[mix]")

    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for path in inputs:
        argv += ["-i", str(path)]
    argv += ["-filter_complex", ";".join(filters), "-map", "[vout]", "-map", "[mix]"]
    for i in range(len(inputs)):
        argv += ["-map", f"[s{i}]"]
    argv += [
        "-c:v",
        "libx264",
        "-preset",
        rec.video_preset,
        "-tune",
        "zerolatency",
        "-profile:v",
        "high",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        str(rec.video_bitrate),
        "-g",
        str(keyint),
        "-keyint_min",
        str(keyint),
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        *([] if x264_default_threads else ["-threads:v", str(rec.encoder_threads)]),
        "-c:a",
        rec.audio_codec if rec.audio_codec == "aac" else "libopus",
        *(["-aac_coder", "fast"] if rec.audio_codec == "aac" else []),
        "-b:a",
        str(rec.audio_bitrate),
        "-ar",
        "48000",
        "-ac",
        "1",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-flush_packets",
        "1",
        str(output),
    ]
    return argv


FFMPEG, FFMPEG_DEFAULT_THREADS = "ffmpeg composite", "ffmpeg, x264 auto threads"
MEDIA_PATH = "recorder's composite, files"


async def run_ffmpeg(
    inputs: list[Path], workdir: Path, media_seconds: float, *, x264_default_threads: bool = False
) -> Measurement:
    """ffmpeg's composite; ``x264_default_threads``: see ``ffmpeg_composite_argv``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("bench.ffmpeg_started", inputs=len(inputs), x264_default_threads=x264_default_threads)
    argv = ffmpeg_composite_argv(
        inputs, workdir / "ffmpeg.mp4", x264_default_threads=x264_default_threads
    )
    process = MeasuredProcess(
        argv,
        stdout=workdir / "ffmpeg.out",
        stderr=workdir / "ffmpeg.err",
    )
    usage = await process.wait()
    if usage.exit_code != 0:
        raise BenchError(f"ffmpeg exited {usage.exit_code}:\n" + process.stderr_tail())
    name = FFMPEG_DEFAULT_THREADS if x264_default_threads else FFMPEG
    return Measurement(name, usage, media_seconds)


async def run_media_path(inputs: list[Path], workdir: Path, media_seconds: float) -> Measurement:
    """The recorder's media path alone on ffmpeg's inputs (``bench.media_path``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("bench.media_path_started", inputs=len(inputs))
    argv = [sys.executable, "-m", "bench.media_path", "--seconds", f"{media_seconds:g}"]
    for path in inputs:
        argv += ["--input", str(path)]
    argv += ["--output", str(workdir / "composite.mp4")]
    process = MeasuredProcess(
        argv, stdout=workdir / "media_path.out", stderr=workdir / "media_path.err"
    )
    usage = await process.wait()
    if usage.exit_code != 0:
        raise BenchError(f"media path exited {usage.exit_code}:\n" + process.stderr_tail())
    report = json.loads(process.stdout_path.read_text(encoding="utf-8").splitlines()[-1])
    kept = 1 - report["repeated"] / report["video_frames"]
    return Measurement(MEDIA_PATH, usage, media_seconds, frames_kept=kept)


async def start_two_party_call() -> LocalCall:
    """The local SFU and two synthetic participants publishing VP8 360p30 + Opus."""
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p2")
    except BaseException:
        await call.close()
        raise
    return call
