"""A Node script driven over JSON lines: the testbed's MLS partners (Orange's worker,
ts-mls) each run in one such process.

One command per line on stdin (``{"op": ..., "id": n, ...}``), one answer per line on
stdout (``{"id": n, "ok": true, ...}`` or ``{"ok": false, "error": ...}``). Calls may come
from several threads (publishers encrypt in their media threads): one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any


class NodeScriptError(RuntimeError):
    """The script refused a command, or ended; the message is its own."""


class NodeScript:
    def __init__(
        self, script: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self._process = subprocess.Popen(
            ["node", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self._calls = 0
        self._lock = threading.Lock()
        self._name = script.name

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def call(self, **command: Any) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        with self._lock:
            self._calls += 1
            command["id"] = self._calls
            try:
                self._process.stdin.write(json.dumps(command) + "\n")
                self._process.stdin.flush()
            except BrokenPipeError:
                pass  # the process ended: the empty read below says so
            line = self._process.stdout.readline()
        if not line:
            raise NodeScriptError(f"{self._name} ended (exit {self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise NodeScriptError(str(answer.get("error", answer)))
        return answer
