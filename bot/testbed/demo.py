"""``make demo``: a local SFU, a synthetic clinician and patient, and the recorder."""

from __future__ import annotations

import sys
from pathlib import Path

from bot.config import RealtimeSettings, RecordingSettings, Settings
from bot.media.inspect import summarize
from bot.recorder import record
from bot.testbed.stack import start_local_sfu


async def run_demo(duration: float, output_dir: Path) -> int:
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="clinician-1")
        await call.publish("patient", 2, participant_id="patient-1")
        settings = Settings(
            realtime=RealtimeSettings(
                base_url=call.base_url,
                app_id=call.app_id,
                app_secret=call.app_secret,
                ice_servers=(),
            ),
            recording=RecordingSettings(
                consultation_id="demo-consultation",
                participants=tuple(call.participants),
                max_duration=duration,
                output_dir=output_dir,
            ),
        )
        print(f"recording {duration:.0f} s of a synthetic consultation...", file=sys.stderr)
        result = await record(settings)
    finally:
        await call.close()
    if result.path is None:
        print(f"demo failed: {result.error}", file=sys.stderr)
        return int(result.exit_code)
    print(f"recording: {result.path.resolve()}")
    print(summarize(result.path))
    return int(result.exit_code)
