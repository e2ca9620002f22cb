"""The container's HEALTHCHECK: is this recorder alive?

With the control API enabled, alive means its ``/healthz`` answers 200 (the process serves
HTTP on its event loop, so a wedged loop fails the check). Without it there is nothing to
ask, so the check falls back to what ``bot --version`` proves and a little more: the
package imports and the settings the recorder was started with still load. Readiness
(recording, connected) is ``/readyz``, for orchestrators that probe it themselves.

Exit 0 healthy, 1 unhealthy, as Docker and podman expect. Settings come from the same
places as ``bot record``: ``BOT_CONFIG`` or /etc/recorder/config.toml, then the
environment. Nothing here prints a setting's value.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/recorder/config.toml")
TIMEOUT = 3.0


def _probe_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from inside the same container."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def check() -> tuple[bool, str]:
    try:
        from bot.config import ConfigError, load_settings
    except ImportError as exc:
        return False, f"bot does not import: {exc}"
    config = Path(os.environ.get("BOT_CONFIG", str(DEFAULT_CONFIG)))
    try:
        settings = load_settings(config if config.is_file() else None)
    except ConfigError as exc:
        return False, f"settings do not load: {exc}"
    control = settings.control
    if not control.enabled or control.port == 0:
        return True, "bot imports and its settings load (control API not enabled)"
    url = f"http://{_probe_host(control.host)}:{control.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"
    return status == 200, f"{url}: HTTP {status}"


def main() -> int:
    healthy, reason = check()
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
