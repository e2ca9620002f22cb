"""The media thread: inputs from the network, one composed and mixed output, in real time.

The event loop only appends decoded frames to bounded queues (``submit``); everything
costly (scaling, compositing, mixing, encoding, muxing, file writes) happens here, off the
loop. The thread trails real time by ``latency`` seconds so that frames delayed by the
network or the jitter buffer still land in their place on the timeline.

Queue policy: video frames are dropped oldest first when the queue is full (the picture
freezes briefly); audio is never dropped unless its much larger queue overflows, which is
logged as an alarm.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import av
import structlog

from bot.media.compositor import Compositor
from bot.media.gaps import GapTracker
from bot.media.layout import Layout, LayoutReport, LayoutSpec, SpeakerSelector
from bot.media.mixer import Mixer, Samples
from bot.media.overlay import Captions, Overlay
from bot.media.report import SAMPLE_RATE, MediaReport, SlotInfo
from bot.media.withholding import Withholding
from bot.media.writer import Mp4Writer
from bot.timeline import Timeline

log = structlog.get_logger("bot.media")

VIDEO_QUEUE_SECONDS = 1.0
CATCH_UP_SECONDS = 1.0
"""Further behind real time than this, the thread repeats the last picture (cheap to
encode) instead of composing new ones until it has caught up."""
AUDIO_QUEUE_SECONDS = 20.0
SETTLE_FRACTION = 0.5
"""A video frame waits this part of ``latency`` before it is placed (unless its moment
comes sooner): see ``Replace``."""
REPLACE_LIMIT_SECONDS = 0.5
"""A clock that learned moves a frame by tens of milliseconds; one that stepped (a new RTP
base on the stream) by anything. A frame would move further than this only by a step
that came after it, which is not its own mapping: it keeps its first placement."""

Replace = Callable[[], float | None]
"""Where a video frame belongs by what its source's clock knows now.

A clock's mapping improves as packets arrive, most in a stream's first second, when the
first packets come in a burst: frames placed as they left the network would be squeezed
together and some never shown (the mixer slews audio; the compositor has no slew). So a
frame is placed again once it has settled, and the placement lands within ``latency``.
"""

_VideoInput = tuple[int, float, av.VideoFrame, float, Replace | None]
"""Slot, timeline second, frame, timeline second it was submitted, and its ``Replace``."""


class MediaPipeline:
    """Compositor + mixer + writer driven by a wall-clock thread."""

    def __init__(
        self,
        writer: Mp4Writer,
        slots: list[SlotInfo],
        *,
        width: int,
        height: int,
        fps: int,
        timeline: Timeline,
        latency: float,
        withholding: Withholding | None = None,
        captions: Captions | None = None,
        layout: LayoutSpec | None = None,
    ) -> None:
        """``captions``: labels and clock burned into the picture; None: none.
        ``layout``: grid or speaker, contain or cover; None: a contained 16:9 grid."""
        self._writer = writer
        self._slots = list(slots)
        self._fps = fps
        self._timeline = timeline
        self._latency = latency
        spec = layout or LayoutSpec()
        self._layout = Layout(spec, len(slots), width, height)
        self._compositor = Compositor(width, height, fps, spec.fit)
        self._mixer = Mixer()
        rects = self._layout.cells()
        self._speakers = SpeakerSelector(len(slots)) if self._layout.switches else None
        self._next_speaker: int | None = None
        """Decided from the sound, shown from the next picture on."""
        self._layout_report = LayoutReport(spec, list(rects))
        for slot, rect in zip(slots, rects, strict=True):
            self._compositor.add_cell(rect, GapTracker(slot.participant_id, "video"))
            self._mixer.add_voice(GapTracker(slot.participant_id, "audio"))
        cells = [(rect, slot.role) for slot, rect in zip(slots, rects, strict=True)]
        self._overlay = (
            None
            if captions is None
            else Overlay(width, height, cells, captions, origin_wall=timeline.origin_wall)
        )
        video_cap = max(8, int(VIDEO_QUEUE_SECONDS * 30 * max(1, len(slots))))
        audio_cap = max(50, int(AUDIO_QUEUE_SECONDS * 50 * max(1, len(slots))))
        self._video_in: deque[_VideoInput] = deque(maxlen=video_cap)
        self._settling: list[_VideoInput] = []
        """Video frames taken off the queue, not yet placed (the media thread's own)."""
        self._audio_in: deque[tuple[int, float, av.AudioFrame]] = deque(maxlen=audio_cap)
        self._wake = threading.Event()
        self._end: float | None = None
        self.withholding = withholding or Withholding()
        """Pauses and consent: what is kept out of the record (changed from the loop)."""
        self._thread = threading.Thread(target=self._run, name="media", daemon=True)
        self._error: BaseException | None = None
        self.report = MediaReport()

    # -- called from the event loop ------------------------------------------------

    def submit(
        self,
        slot: int,
        t: float,
        frame: av.VideoFrame | av.AudioFrame,
        replace: Replace | None = None,
    ) -> None:
        """Queue a decoded frame placed at timeline second ``t``; never blocks.
        ``replace``: a video frame's placement asked again when it has settled."""
        if isinstance(frame, av.VideoFrame):
            if len(self._video_in) == self._video_in.maxlen:
                self.report.video_frames_dropped_in_queue += 1
            self._video_in.append((slot, t, frame, self.now(), replace))
        else:
            if len(self._audio_in) == self._audio_in.maxlen:
                self.report.audio_frames_dropped_in_queue += 1
                log.error("media.audio_queue_overflow", slot=slot)
            self._audio_in.append((slot, t, frame))

    def now(self) -> float:
        """Seconds since the recording's origin."""
        return self._timeline.now()

    def start(self) -> None:
        self._thread.start()

    def finish(self, end: float) -> MediaReport:
        """Write everything up to timeline second ``end``, close the file. Blocking."""
        self._end = end
        self._wake.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.report

    @property
    def video_frames_written(self) -> int:
        """Output frames so far (read from any thread: an int read is atomic)."""
        return self._writer.video_frames

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the media thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self._error = exc
            log.exception("media.thread_failed")
            try:
                self._writer.close()
            except Exception:
                log.exception("media.close_failed")

    def _loop(self) -> None:
        period = 1.0 / self._fps
        while True:
            end = self._end
            now = self.now()
            horizon = now - self._latency if end is None else min(end, now - self._latency)
            final = end is not None and now >= end + self._latency
            if final and end is not None:
                horizon = end
            self._drain(None if final else horizon)
            # At most a second of output per pass, so the inputs are drained between passes
            # even when the thread is far behind.
            pass_end = min(horizon, self._writer.video_frames * period + 1.0)
            self._write_video(pass_end, end, now)
            horizon = min(horizon, pass_end + period)
            final = final and horizon >= (end or 0.0)
            self._write_audio(horizon, final)
            if final:
                break
            next_tick = self._writer.video_frames * period + self._latency
            self._wake.wait(timeout=min(period, max(0.001, next_tick - self.now())))
            self._wake.clear()
        assert end is not None
        self._close(end)

    # -- offline, on the caller's thread (``bot compose``) ------------------------------

    def write_until(self, horizon: float) -> None:
        """Write every output frame and audio chunk up to timeline second ``horizon``,
        now: every input frame placed before it has been submitted (a composer reading
        files, not a network). The thread is never started."""
        self._drain()
        self._write_video(horizon, None, horizon + self._latency)
        self._write_audio(horizon, final=False)

    def close_at(self, end: float) -> MediaReport:
        """Write the rest up to ``end`` and close the file (offline, as ``write_until``)."""
        self._drain()
        self._write_video(end, end, end + self._latency)
        self._write_audio(end, final=True)
        self._close(end)
        return self.report

    # -- the output --------------------------------------------------------------------

    def _write_video(self, until: float, end: float | None, now: float) -> None:
        """Pictures for every tick up to ``until`` (and before ``end``); ``now``: timeline
        second it is, to tell whether the thread has fallen behind."""
        period = 1.0 / self._fps
        while self._writer.video_frames * period <= until and (
            end is None or self._writer.video_frames * period < end
        ):
            tick = self._writer.video_frames * period
            behind = now - self._latency - tick > CATCH_UP_SECONDS
            self.report.video_frames_repeated += behind
            self._writer.write_video(self._picture(tick, behind))

    def _write_audio(self, horizon: float, final: bool) -> None:
        """Every audio chunk wholly before ``horizon``; when ``final``, the last one may run
        up to one audio frame past it."""
        chunk = self._writer.audio_frame_size
        audio_horizon = horizon * SAMPLE_RATE
        lead = 0 if final else chunk
        while self._mixer.cursor + lead <= audio_horizon and (
            not final or self._mixer.cursor < audio_horizon
        ):
            start = self._mixer.cursor / SAMPLE_RATE
            mix, voices = self._mixer.pull(chunk, self._withheld(start))
            self._listen(start, start + chunk / SAMPLE_RATE, voices)
            self._writer.write_audio(0, mix)
            for index, samples in enumerate(voices, start=1):
                self._writer.write_audio(index, samples)

    def _picture(self, tick: float, repeat: bool) -> av.VideoFrame:
        """The output frame for ``tick``, captioned; the captions come off again before
        the next compose, so the compositor repaints only what it changed itself."""
        withheld = self._withheld(tick)
        if self._overlay is None:
            self._switch_speaker(tick)
            return self._compositor.compose(tick, withheld, repeat=repeat)
        self._overlay.erase()
        self._switch_speaker(tick)
        frame = self._compositor.compose(tick, withheld, repeat=repeat)
        self._overlay.draw(frame, tick, withheld)
        return frame

    def _listen(self, start: float, end: float, voices: list[Samples]) -> None:
        """Who made a sound in the chunk from ``start`` to ``end``: the captions' "muted",
        and who speaks (the speaker layout)."""
        if self._overlay is not None:
            self._overlay.listen(end, voices)
        if self._speakers is not None:
            speaker = self._speakers.hear(start, voices)
            if speaker is not None:
                self._next_speaker = speaker

    def _switch_speaker(self, tick: float) -> None:
        """Give the large cell to the speaker the sound chose, from picture ``tick`` on,
        and note the switch for the manifest; only rectangles move (computed up front)."""
        speaker, self._next_speaker = self._next_speaker, None
        if speaker is None:
            return
        rects = self._layout.cells(speaker)
        self._compositor.arrange(rects)
        if self._overlay is not None:
            self._overlay.place(rects)
        participant = self._slots[speaker].participant_id
        self._layout_report.switches.append((round(tick, 3), participant))

    def assign(self, slot: int, info: SlotInfo) -> None:
        """A participant takes a cell (joins, or comes back under a new session)."""
        self._slots[slot] = info
        self._compositor.label(slot, info.participant_id)
        self._mixer.label(slot, info.participant_id)

    def cut(self, slot: int, at: float) -> None:
        """A participant was dropped at timeline second ``at``: its cell is black from
        there (no frozen last picture), until frames from after ``at`` arrive."""
        self._compositor.cut(slot, at)

    def _close(self, end: float) -> None:
        self._writer.close()
        report = self.report
        report.duration = end
        report.video_frames = self._writer.video_frames
        report.audio_samples = self._mixer.cursor
        report.layout = self._layout_report
        trackers = self._compositor.gaps(end) + self._mixer.gaps(end)
        report.gaps = sorted((g for t in trackers for g in t.gaps), key=lambda g: g.start)
        for slot, video, audio in zip(
            self._slots, self._compositor.stats(), self._mixer.stats(), strict=True
        ):
            report.slots.append(
                {
                    "participant": slot.participant_id,
                    "role": slot.role,
                    "video": video,
                    "audio": audio,
                }
            )

    def _drain(self, horizon: float | None = None) -> None:
        """Hand the inputs on: with a ``horizon`` (live), a video frame only once it has
        settled or its moment is one frame from being composed; without, all of them."""
        while self._video_in:
            self._settling.append(self._video_in.popleft())
        settled = self.now() - self._latency * SETTLE_FRACTION
        due = None if horizon is None else horizon + 1.0 / self._fps
        waiting = []
        for entry in self._settling:
            slot, t, vframe, submitted, replace = entry
            if due is not None and submitted > settled and t > due:
                waiting.append(entry)
                continue
            placed = replace() if replace is not None else None
            if placed is not None and abs(placed - t) <= REPLACE_LIMIT_SECONDS:
                t = placed
            self._compositor.push(slot, t, vframe)
        self._settling = waiting
        while self._audio_in:
            slot, t, aframe = self._audio_in.popleft()
            self._mixer.push(slot, t, aframe)

    def _withheld(self, t: float) -> list[str | None]:
        """Per slot, why its media at ``t`` stays out of the record (None: it goes in)."""
        return [self.withholding.reason(t, slot.participant_id) for slot in self._slots]
