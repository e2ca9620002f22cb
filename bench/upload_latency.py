"""Time from the end of a recording to its verified object, for 1- and 10-minute recordings.

Usage: ``.venv/bin/python -m bench.upload_latency [--speedup 30] [--bitrate 1500000]``

Each recording is a real fragmented MP4 (H.264 + AAC, 1 s fragments) encoded once up
front; it is then appended to a spool fragment by fragment at ``speedup`` times real
time while the uploader streams it to a local SeaweedFS, as the recorder would. The
clock starts when the last fragment is on disk and ``finish`` is called, and stops when
the object is completed, verified and its manifest written. The video is small noise
encoded at the target bitrate, so the byte rate and fragment cadence are a real
consultation's even though the picture is not. Both verification modes are measured:
"full" (streamed GET + SHA-256, the default on a loopback endpoint) and "ends" (the
default for a remote R2: part-MD5 chain + ranged decode probes). Beside each, how much the
process's resident memory grew while the parts streamed; the first run in a process is
the telling one (later runs reuse what the first left on the heap).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from testbed.s3 import LocalS3

from bench.measure import status_kib
from bot.logs import configure_logging
from bot.manifest import Manifest
from bot.storage import Spool, object_key_for, open_uploader
from bot.storage.verify import top_level_boxes

FPS = 10
WIDTH, HEIGHT = 192, 144


def encode(path: Path, seconds: int, bitrate: int) -> None:
    rng = np.random.default_rng(1)
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = bitrate
        video.options = {"preset": "ultrafast", "g": str(FPS), "keyint_min": str(FPS)}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        block = 48000 // FPS
        tone = (0.1 * np.sin(np.arange(block) / 10)).astype(np.float32).reshape(1, -1)
        for index in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8), format="gray"
            )
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(video.encode(frame))
            sound = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            sound.sample_rate, sound.pts = 48000, index * block
            out.mux(audio.encode(sound))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def run_once(
    store: LocalS3, source: Path, work: Path, *, mode: str, speedup: float
) -> dict[str, float]:
    data = source.read_bytes()
    cuts = [b.end for b in top_level_boxes(source, len(data)) if b.kind in (b"moov", b"mdat")]
    settings = store.storage_settings(spool_dir=work / "spool", verify_read=mode)
    recording_id = f"{source.stem}-{mode}"
    started = datetime.now(UTC)
    key = object_key_for(
        settings, consultation_id="bench", recording_id=recording_id, started_at=started
    )
    spool = Spool.create(
        settings.spool_dir, consultation_id="bench", recording_id=recording_id, object_key=key
    )
    uploader = open_uploader(settings, spool)
    resident_before = status_kib("self", "VmRSS") or 0
    uploader.start()
    fragment_seconds = 1.0 / speedup
    began = time.monotonic()
    with spool.media_path.open("ab") as out:
        previous = 0
        for number, cut in enumerate([*cuts, len(data)]):
            out.write(data[previous:cut])
            out.flush()
            previous = cut
            uploader.poke()
            # Pace the writer: one fragment per 1/speedup seconds of wall time.
            delay = began + number * fragment_seconds - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    lag = uploader.status().lag_bytes
    resident_growth = (status_kib("self", "VmRSS") or 0) - resident_before
    t0 = time.monotonic()
    result = uploader.finish(
        Manifest(consultation_id="bench", recording_id=recording_id, started_at=started)
    )
    return {
        "seconds": time.monotonic() - t0,
        "size": float(result.size),
        "parts": float(result.parts),
        "lag_at_end": float(lag),
        "resident_growth_mb": resident_growth / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=30.0, help="times real time")
    parser.add_argument("--bitrate", type=int, default=1_500_000)
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp, LocalS3() as store:
        work = Path(tmp)
        sources = {}
        for minutes in (1, 10):
            path = work / f"rec{minutes}m.mp4"
            began = time.monotonic()
            encode(path, minutes * 60, args.bitrate)
            print(
                f"encoded {minutes:>2}-min recording: {path.stat().st_size / 1e6:.1f} MB "
                f"in {time.monotonic() - began:.1f} s",
                file=sys.stderr,
            )
            sources[minutes] = path
        for mode in ("full", "ends"):
            timings = {}
            for minutes, path in sources.items():
                result = run_once(store, path, work, mode=mode, speedup=args.speedup)
                timings[minutes] = result["seconds"]
                size_mb, lag_mb = result["size"] / 1e6, result["lag_at_end"] / 1e6
                print(
                    f"verify_read={mode:<4} {minutes:>2}-min recording: {size_mb:6.1f} MB, "
                    f"{int(result['parts']):>3} parts, not yet uploaded at end {lag_mb:4.1f} MB, "
                    f"end-to-verified {result['seconds']:.2f} s, resident memory grew "
                    f"{result['resident_growth_mb']:.1f} MiB while streaming"
                )
            print(f"verify_read={mode:<4} ratio 10-min / 1-min: {timings[10] / timings[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
