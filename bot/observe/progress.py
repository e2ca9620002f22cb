"""A live status panel for a person running the recorder by hand.

Only on a terminal: when stderr is not a TTY (an orchestrator, a pipe, CI) nothing is
drawn and the JSON logs are the whole output. The panel is built on the event loop from
``Recorder.status()`` once a second (the recorder's state is only read where it is
changed) and handed to rich's ``Live``, whose own thread does the terminal writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from bot.recording import Recorder, RecorderStatus

STALE_SECONDS: Final = 3.0
"""A pulled track silent for longer than this is shown as a warning."""


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} GB"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def warnings_for(status: RecorderStatus) -> list[str]:
    """What a person watching should notice; plain strings, opaque ids only."""
    found = []
    upload = status.upload
    if status.paused:
        found.append("privacy pause: recording black and silence")
    for participant in status.participants:
        if not participant.consent:
            found.append(f"no consent from {participant.id}: black and silent in the record")
    if upload is not None and upload.alarm:
        found.append("object store failing: recording continues to the local spool")
    if upload is not None and upload.last_error:
        found.append(f"last storage error: {upload.last_error}")
    for track in status.tracks:
        silent = track.seconds_since_packet
        if track.active and silent is not None and silent > STALE_SECONDS:
            found.append(f"no {track.kind} from {track.participant} for {silent:.0f} s")
        if track.active and not track.packets:
            found.append(f"waiting for {track.kind} from {track.participant}")
    return found


def render_status(status: RecorderStatus) -> RenderableType:
    """The panel for one ``Recorder.status()`` snapshot."""
    upload = status.upload
    recorded = upload.bytes_spooled if upload else 0
    uploaded = upload.bytes_uploaded if upload else 0
    share = f" ({uploaded / recorded:.0%})" if recorded else ""
    state = "[yellow]PAUSED[/]" if status.paused else "[green]recording[/]"
    head = Text.from_markup(
        f"{state}  {_duration(status.duration_s)}  "
        f"recorded {_size(recorded)}  uploaded {_size(uploaded)}{share}"
    )
    table = Table(expand=True, box=None, pad_edge=False)
    for column in ("participant", "role", "tracks", "clock"):
        table.add_column(column)
    tracks = [t for t in status.tracks if t.active]
    for person in status.participants:
        own = [t for t in tracks if t.participant == person.id]
        table.add_row(
            person.id,
            person.role,
            ", ".join(f"{t.kind} {t.frames}f" for t in own) or "-",
            ", ".join(sorted({t.clock for t in own})) or "-",
        )
    if not status.participants:
        table.add_row("(nobody yet)", "", "", "")
    parts: list[RenderableType] = [head, table]
    parts += [Text(f"! {w}", style="bold red") for w in warnings_for(status)]
    return Panel(
        Group(*parts),
        title=f"consultation {status.consultation_id}",
        subtitle=f"recording {status.recording_id}",
    )


class Progress:
    """Draws ``render_status`` of a recorder on ``console`` until stopped."""

    def __init__(self, recorder: Recorder, console: Console, *, interval: float = 1.0) -> None:
        self._recorder = recorder
        self._console = console
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_terminal(cls, recorder: Recorder) -> Progress | None:
        """A panel on stderr if it is a terminal; None (draw nothing) otherwise."""
        if not sys.stderr.isatty():
            return None
        return cls(recorder, Console(stderr=True))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="progress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        with Live(
            render_status(self._recorder.status()),
            console=self._console,
            refresh_per_second=2,
            transient=False,
        ) as live:
            while True:
                await asyncio.sleep(self._interval)
                live.update(render_status(self._recorder.status()))
