"""Prometheus metrics for one recorder, read from the recorder at scrape time.

Nothing is counted in the hot paths: a custom collector turns ``Recorder.status()``, the
subscriber's per-track counters and the uploader's status into metric families when
``/metrics`` is scraped. Two things cannot be read that way and are measured here: packet
loss, which aiortc only reports through the async ``RTCRtpReceiver.getStats()`` (gathered
by ``refresh`` just before a scrape renders), and event-loop lag, measured by a small task
as the overshoot of a short sleep (a loop busy with something else wakes it late, and the
same loop also does SRTP and RTCP for every track).

Labels are opaque ids only (participant id, kind, MID): never a name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bot.recorder import Recorder

log = structlog.get_logger("bot.observe.metrics")

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_TRACK_LABELS: Final = ("participant", "kind", "mid")
_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _RecorderCollector(Collector):
    """Builds the recording's metric families from live state on each scrape."""

    def __init__(self, recorder: Recorder, packets_lost: dict[str, int]) -> None:
        self._recorder = recorder
        self._packets_lost = packets_lost

    def collect(self) -> Iterator[Metric]:
        recorder = self._recorder
        status = recorder.status()
        yield _gauge("recorder_recording", "1 once recording started", recorder.started.is_set())
        yield _gauge("recorder_duration_seconds", "Timeline length so far", status["duration_s"])
        yield _gauge("recorder_paused", "1 while a privacy pause lasts", status["paused"])
        yield _gauge(
            "recorder_participants", "Participants being recorded", len(status["participants"])
        )

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
        for track in status["tracks"]:
            labels = [str(track["participant"]), str(track["kind"]), str(track["mid"])]
            frames.add_metric(labels, track["frames"])
            packets.add_metric(labels, track["packets"])
            synced.add_metric(labels, track["clock"] == "sender_reports")
            active.add_metric(labels, track["active"])
            if str(track["mid"]) in self._packets_lost:
                lost.add_metric(labels, self._packets_lost[str(track["mid"])])
        yield from (frames, packets, lost, synced, active)

        yield from self._output(recorder)
        yield from self._upload(recorder)

    @staticmethod
    def _output(recorder: Recorder) -> Iterator[Metric]:
        pipeline = recorder.pipeline
        if pipeline is None:
            return
        # The writer's counter moves on the media thread; an int read is atomic.
        yield CounterMetricFamily(
            "recorder_output_video_frames",
            "Composed video frames written to the MP4",
            value=pipeline.video_frames_written,
        )
        dropped = CounterMetricFamily(
            "recorder_input_frames_dropped",
            "Decoded frames dropped because the media thread fell behind",
            labels=["kind"],
        )
        dropped.add_metric(["video"], pipeline.report.video_frames_dropped_in_queue)
        dropped.add_metric(["audio"], pipeline.report.audio_frames_dropped_in_queue)
        yield dropped

    @staticmethod
    def _upload(recorder: Recorder) -> Iterator[Metric]:
        uploader = recorder.uploader
        if uploader is None:
            return
        upload = uploader.status()
        yield CounterMetricFamily(
            "recorder_bytes_spooled",
            "MP4 bytes written to the local spool",
            value=upload.bytes_spooled,
        )
        yield CounterMetricFamily(
            "recorder_bytes_uploaded",
            "Bytes stored as completed parts",
            value=upload.bytes_uploaded,
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
        self._packets_lost: dict[str, int] = {}
        self.registry.register(_RecorderCollector(recorder, self._packets_lost))
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
        subscriber = self._recorder.subscriber
        if subscriber is None:
            return
        for track in list(subscriber.tracks):
            if not track.active:
                continue  # a closed receiver keeps its last value
            try:
                report: Any = await track.receiver.getStats()
            except Exception as exc:  # stats are best effort; never fail a scrape on them
                log.debug("metrics.stats_failed", mid=track.mid, error=str(exc))
                continue
            lost = [
                s.packetsLost for s in report.values() if getattr(s, "type", "") == "inbound-rtp"
            ]
            if lost:
                self._packets_lost[track.mid] = int(sum(lost))

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
