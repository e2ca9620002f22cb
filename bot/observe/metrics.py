"""Prometheus metrics for one recorder, read from the recorder at scrape time.

Nothing is counted in the hot paths: a custom collector turns the ``Recorder.status()``
snapshot (tracks, media thread, upload) into metric families when ``/metrics`` is
scraped. Packet loss is only known through an async call, so ``refresh`` asks the
recorder to gather it just before a scrape renders; event-loop lag is measured by a task
as the overshoot of a short sleep (a loop busy with something else wakes it late, and the
same loop also does SRTP and RTCP for every track).

Labels are opaque ids only (participant id, kind, MID): never a name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from bot.recording.status import MediaStatus, RecorderStatus
from bot.storage import UploadStatus

if TYPE_CHECKING:
    from bot.recording import Recorder

log = structlog.get_logger("bot.observe.metrics")

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_TRACK_LABELS: Final = ("participant", "kind", "mid")
_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _RecorderCollector(Collector):
    """Builds the recording's metric families from live state on each scrape."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        status = self._recorder.status()
        yield _gauge("recorder_recording", "1 once recording started", status.started)
        yield _gauge("recorder_duration_seconds", "Timeline length so far", status.duration_s)
        yield _gauge("recorder_paused", "1 while a privacy pause lasts", status.paused)
        yield _gauge(
            "recorder_participants", "Participants being recorded", len(status.participants)
        )
        yield from _tracks(status)
        if status.media is not None:
            yield from _output(status.media)
        if status.upload is not None:
            yield from _upload(status.upload)


def _tracks(status: RecorderStatus) -> Iterator[Metric]:
    frames = CounterMetricFamily(
        "recorder_track_frames_received", "Decoded frames per track", labels=_TRACK_LABELS
    )
    packets = CounterMetricFamily(
        "recorder_track_packets_received", "RTP packets per track", labels=_TRACK_LABELS
    )
    lost = GaugeMetricFamily(
        "recorder_track_packets_lost",
        "Cumulative RTP packets lost per track (receiver report view; may shrink "
        "when duplicates arrive)",
        labels=_TRACK_LABELS,
    )
    synced = GaugeMetricFamily(
        "recorder_track_clock_sender_reports",
        "1: the track is placed by RTCP sender reports (A/V in sync across tracks); "
        "0: by first-packet arrival (offset up to the network jitter)",
        labels=_TRACK_LABELS,
    )
    active = GaugeMetricFamily(
        "recorder_track_active", "1 while the track is pulled", labels=_TRACK_LABELS
    )
    packets_lost = status.transport.packets_lost if status.transport else {}
    for track in status.tracks:
        labels = [track.participant, track.kind, track.mid]
        frames.add_metric(labels, track.frames)
        packets.add_metric(labels, track.packets)
        synced.add_metric(labels, track.clock == "sender_reports")
        active.add_metric(labels, track.active)
        if track.mid in packets_lost:
            lost.add_metric(labels, packets_lost[track.mid])
    yield from (frames, packets, lost, synced, active)


def _output(media: MediaStatus) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "recorder_output_video_frames",
        "Composed video frames written to the MP4",
        value=media.video_frames_written,
    )
    dropped = CounterMetricFamily(
        "recorder_input_frames_dropped",
        "Decoded frames dropped because the media thread fell behind",
        labels=["kind"],
    )
    dropped.add_metric(["video"], media.video_frames_dropped)
    dropped.add_metric(["audio"], media.audio_frames_dropped)
    yield dropped


def _upload(upload: UploadStatus) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "recorder_bytes_spooled", "MP4 bytes written to the local spool", value=upload.bytes_spooled
    )
    yield CounterMetricFamily(
        "recorder_bytes_uploaded", "Bytes stored as completed parts", value=upload.bytes_uploaded
    )
    yield _gauge("recorder_upload_parts", "Parts stored so far", upload.parts)
    yield _gauge("recorder_upload_lag_bytes", "Spooled bytes not yet stored", upload.lag_bytes)
    yield _gauge(
        "recorder_upload_lag_seconds",
        "How long a full part has waited for the store (0 while it keeps up)",
        upload.lag_seconds,
    )
    yield _gauge("recorder_upload_alarm", "1 while the store is failing", upload.alarm)
    yield CounterMetricFamily(
        "recorder_upload_errors", "Failed store requests", value=upload.errors
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class Metrics:
    """One recorder's registry (not the process-global one: tests run several)."""

    def __init__(self, recorder: Recorder, *, lag_interval: float = 0.25) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._recorder = recorder
        self._lag_interval = lag_interval
        self.registry.register(_RecorderCollector(recorder))
        self.loop_lag = Histogram(
            "recorder_event_loop_lag_seconds",
            "Overshoot of a short sleep on the recorder's event loop",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_last = Gauge(
            "recorder_event_loop_lag_last_seconds",
            "The latest event-loop lag sample",
            registry=self.registry,
        )
        self.control_requests = Counter(
            "recorder_control_requests",
            "Control API calls by action and HTTP status",
            ["action", "status"],
            registry=self.registry,
        )
        self.control_http_requests = Counter(
            "recorder_control_http_requests",
            "Every request to the control server by route and HTTP status, whatever its "
            "outcome (route 'unmatched': no such route; 'unparsed': not HTTP)",
            ["route", "status"],
            registry=self.registry,
        )
        self._lag_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring event-loop lag; call from the recorder's loop."""
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self._measure_lag(), name="loop-lag")

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None

    async def refresh(self) -> None:
        """Gather what only async APIs report (packet loss) before a scrape renders."""
        await self._recorder.refresh()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._lag_interval)
            lag = max(0.0, loop.time() - before - self._lag_interval)
            self.loop_lag.observe(lag)
            self.loop_lag_last.set(lag)
