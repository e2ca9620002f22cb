"""The selftest's report: its steps in order, their lines, the verdict, the JSON.

Owns what a person reads: ``Step`` (one line), ``SelftestReport`` (the steps, the exit
code of the first required failure, the verdict) and ``StepLog``, through which every
step is settled, so each detail is scrubbed of secrets and each line goes to ``on_step``
once, in report order. Knows nothing of Cloudflare or the bucket: imports only the
foundation (settings, exit codes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bot.config import Settings
from bot.exitcodes import ExitCode

Status = Literal["pass", "fail", "skipped", "observed", "not_seen", "unknown", "kept"]

STEPS: tuple[tuple[str, bool], ...] = (
    ("config", True),
    ("auth", True),
    ("publish", True),
    ("pull", True),
    ("ice", True),
    ("first_frame", True),
    ("rtx", False),
    ("simulcast", False),
    ("upload", True),
    ("verify", True),
    ("cleanup", True),
)
"""Every step in report order, and whether its failure fails the run."""


@dataclass
class Step:
    """One line of the report."""

    name: str
    required: bool
    status: Status = "skipped"
    seconds: float | None = None
    detail: str = ""
    exit_code: ExitCode | None = None
    """Set on a failure: the class of what failed."""

    @property
    def done(self) -> bool:
        return self.status != "skipped"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "required": self.required,
            "status": self.status,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "detail": self.detail,
        }

    def line(self) -> str:
        label = {"not_seen": "NOT SEEN", "observed": "SEEN"}.get(self.status, self.status.upper())
        took = "-" if self.seconds is None else f"{self.seconds:.2f} s"
        return f"  {label:<8}  {self.name:<11}  {took:>8}  {self.detail}".rstrip()


@dataclass
class SelftestReport:
    """The steps in order, and what was left in the bucket."""

    steps: list[Step] = field(default_factory=lambda: [Step(n, r) for n, r in STEPS])
    object_key: str | None = None
    kept: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def exit_code(self) -> ExitCode:
        """The code of the first failing required step: it names the half to look at."""
        for step in self.steps:
            if step.required and step.status == "fail":
                return step.exit_code or ExitCode.FAILURE
        return ExitCode.OK

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.exit_code == ExitCode.OK,
            "exit_code": int(self.exit_code),
            "object_key": self.object_key,
            "kept": self.kept,
            "steps": [s.to_dict() for s in self.steps],
        }

    def verdict(self) -> str:
        code = self.exit_code
        if code == ExitCode.OK:
            return "selftest passed (exit 0)"
        failed = [s.name for s in self.steps if s.required and s.status == "fail"]
        return f"selftest FAILED at {', '.join(failed)} (exit {int(code)}, {code.name})"


def config_failure(message: str) -> SelftestReport:
    """The report of a run whose settings could not even be loaded."""
    report = SelftestReport()
    step = report["config"]
    step.status, step.seconds, step.detail, step.exit_code = "fail", 0.0, message, ExitCode.CONFIG
    for other in report.steps[1:]:
        other.detail = "not reached"
    return report


class _Scrub:
    """Removes every configured secret from text meant for a person."""

    def __init__(self, settings: Settings) -> None:
        values = (
            settings.realtime.app_secret,
            settings.storage.secret_access_key,
            settings.storage.sse_c_key,
        )
        self._secrets = [v.get_secret_value() for v in values if v.get_secret_value()]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return " ".join(text.split())  # one line, whatever a server sent


class StepLog:
    """Settles the steps of one run's report and hands each to ``on_step`` as soon as
    every step before it is settled too."""

    def __init__(self, settings: Settings, on_step: Callable[[Step], None]) -> None:
        self.report = SelftestReport()
        self._on_step = on_step
        self._emitted = 0
        self._scrub = _Scrub(settings)

    def settle(
        self,
        name: str,
        status: Status,
        detail: str,
        *,
        began: float | None = None,
        until: float | None = None,
        code: ExitCode | None = None,
    ) -> None:
        step = self.report[name]
        step.status = status
        if began is not None:
            step.seconds = (until or time.monotonic()) - began
        step.detail = self._scrub(detail)
        step.exit_code = code
        self._emit()

    def fail(self, name: str, detail: str, code: ExitCode, *, began: float) -> None:
        self.settle(name, "fail", detail, began=began, code=code)

    def finish(self) -> None:
        """At the end, the steps never reached go out too, still in order."""
        for step in self.report.steps:
            if not step.done:
                step.detail = step.detail or "not reached"
        for step in self.report.steps[self._emitted :]:
            self._on_step(step)
        self._emitted = len(self.report.steps)

    def _emit(self) -> None:
        """Hand settled steps to ``on_step`` in report order, as soon as they can go."""
        steps = self.report.steps
        while self._emitted < len(steps) and steps[self._emitted].done:
            self._on_step(steps[self._emitted])
            self._emitted += 1
