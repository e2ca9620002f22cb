"""Measure a recording made of synthetic participants: frames, placement, A/V offset.

Reads a decoded MP4 with PyAV and the slot rectangles the compositor used, and reports,
per participant, which source frames made it into the output and where each beep of
``bot.synthetic.signal`` landed in video and in audio.

Definitions (all times in seconds; "source time" is the participant's own clock, 0 at its
first frame and first sample):

- Video placement ``D_v`` of beep k: the median over output frames showing source frames
  within ``window_s`` of source time k (the median, so that a frame frozen by a lost
  packet does not drag the figure) of (output pts - (frame index + frame_reference) /
  src_fps). Each term is one output frame's "output time minus source time". When the
  source and output rates differ (25 in, 30 out) the phase between the two frame grids
  sweeps through every value within a few frames, so the median converges to the true
  offset plus the compositor's average hold; with equal rates the phase is frozen at one
  unknown value and a single frame's error (up to one frame) stays in the median. A
  sample-and-hold compositor shows each source frame for its whole interval, so its
  average hold is half a source frame: ``frame_reference=0.5`` removes it; 0 (default)
  takes the frame's capture instant as its time.
- Audio placement ``D_a`` of beep k: the detected onset of the 1 kHz burst in the output
  audio minus k.
- A/V offset = ``D_v - D_a``: positive when the picture is late relative to the sound.
- Flash offset: the pts of the first output frame showing the flash minus the audio
  onset; quantized to one output frame, so a perfectly synced sample-and-hold recording
  gives values in [0, 1 / output fps).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from bot.inspect.report import Beep
from bot.media.layout import Rect
from bot.synthetic.signal import (
    BEEP_HZ,
    BEEP_SAMPLES,
    FRAME_INDEX_MODULO,
    SAMPLE_RATE,
    read_slot,
)

_ENVELOPE_MS = 5.0
_WHOLE_BEEP_MS = BEEP_SAMPLES * 1000 / SAMPLE_RATE - 10.0
"""A burst shorter than this lost a packet at its start, middle or end: its onset cannot
be timed (a lost first packet moves it 20 ms), so it is not reported."""
_MERGE_GAP_MS = 10.0
_CHUNK_S = 10.0
_CHUNK_OVERLAP_S = 0.5


@dataclass(frozen=True)
class BeepMeasurement:
    """Where beep ``k`` of one participant landed in the recording."""

    k: int
    video_offset_s: float
    """``D_v``: output time minus source time of the frames around the beep."""
    video_frames: int
    audio_onset_s: float | None
    """Output time of the detected beep onset; None when no onset matched."""
    flash_onset_s: float | None
    """Output pts of the first frame showing the flash; None when none was seen."""

    @property
    def audio_offset_s(self) -> float | None:
        """``D_a``: audio onset minus source time k."""
        return None if self.audio_onset_s is None else self.audio_onset_s - self.k

    @property
    def av_offset_s(self) -> float | None:
        """``D_v - D_a``; positive when the picture is late."""
        d_a = self.audio_offset_s
        return None if d_a is None else self.video_offset_s - d_a

    @property
    def flash_offset_s(self) -> float | None:
        """First flash frame minus beep onset, quantized to an output frame."""
        if self.flash_onset_s is None or self.audio_onset_s is None:
            return None
        return self.flash_onset_s - self.audio_onset_s


@dataclass
class ParticipantReport:
    number: int
    frames_seen: int = 0
    """Output frames in which this participant's barcode was read."""
    frame_indices: list[int] = field(default_factory=list)
    """Distinct source frame indices seen, ascending."""
    beeps: list[BeepMeasurement] = field(default_factory=list)

    def missing_frames(self) -> list[int]:
        """Source frames between the first and last seen that never appeared."""
        if not self.frame_indices:
            return []
        seen = set(self.frame_indices)
        return [i for i in range(self.frame_indices[0], self.frame_indices[-1]) if i not in seen]

    def av_offsets(self) -> list[float]:
        return [b.av_offset_s for b in self.beeps if b.av_offset_s is not None]


@dataclass
class RecordingReport:
    participants: dict[int, ParticipantReport]
    audio_onsets_s: list[float]
    """Every beep onset found in any audio stream, in output time."""
    video_frames: int
    output_fps: float | None

    def av_offsets(self) -> list[float]:
        return [o for p in self.participants.values() for o in p.av_offsets()]

    def av_offset_p50(self) -> float:
        """Median of |A/V offset| over every matched beep of every participant."""
        return abs_percentile(self.av_offsets(), 50)

    def av_offset_p95(self) -> float:
        return abs_percentile(self.av_offsets(), 95)


def abs_percentile(values: Sequence[float], q: float) -> float:
    """Percentile of absolute values; raises on an empty list (nothing was measured)."""
    if not values:
        raise ValueError("no measurements: nothing to take a percentile of")
    return float(np.percentile(np.abs(np.asarray(values, dtype=np.float64)), q))


@dataclass(frozen=True)
class _Observation:
    time_s: float
    participant: int
    index: int
    slot: int


def analyze_recording(
    path: Path | str,
    slots: Sequence[Rect],
    *,
    src_fps: float = 30.0,
    window_s: float = 0.5,
    match_s: float = 0.25,
    frame_reference: float = 0.0,
) -> RecordingReport:
    """Measure every participant's frames and beeps in a recorded file.

    Participants are identified by their barcode, not by slot order. Each video beep
    takes the audio onset nearest to where its video placement predicts it (within
    ``match_s``). A recorder's file with one speaker track per cell (after the mix) is
    read per participant, from the track of the cell it was seen in: a beep cut by a lost
    packet is then unmatched rather than matched to another participant's beep. Other
    files pool the onsets of every audio stream, which works as long as two participants'
    beeps do not land within ``match_s`` of each other in the same mixed track.
    """
    observations, flashes, frames, fps = _scan_video(path, slots)
    tracks = [_stream_onsets(stream) for stream in _decode_audio(path)]
    pooled = sorted(o for onsets in tracks for o in onsets)
    per_cell = len(tracks) == len(slots) + 1
    participants: dict[int, ParticipantReport] = {}
    by_participant: dict[int, list[_Observation]] = {}
    for obs in observations:
        by_participant.setdefault(obs.participant, []).append(obs)
    for number, seen in sorted(by_participant.items()):
        report = ParticipantReport(
            number=number,
            frames_seen=len(seen),
            frame_indices=sorted({o.index for o in seen}),
        )
        slot = int(np.bincount([o.slot for o in seen]).argmax())
        onsets = tracks[slot + 1] if per_cell else pooled
        last_source_s = max(o.index for o in seen) / src_fps
        for k in range(1, int(last_source_s) + 1):
            near = [o for o in seen if abs(o.index / src_fps - k) <= window_s]
            if not near:
                continue
            d_v = float(np.median([o.time_s - (o.index + frame_reference) / src_fps for o in near]))
            report.beeps.append(
                BeepMeasurement(
                    k=k,
                    video_offset_s=d_v,
                    video_frames=len(near),
                    audio_onset_s=_nearest(onsets, k + d_v, match_s),
                    flash_onset_s=_nearest(flashes.get(number, []), k + d_v, window_s),
                )
            )
        participants[number] = report
    return RecordingReport(participants, pooled, frames, fps)


def measure_beeps(path: Path, cells: Sequence[Rect]) -> Iterator[Beep]:
    """``bot inspect``'s A/V measure (entry point ``bot.inspect.av``): every beep whose
    picture and sound were both found."""
    report = analyze_recording(path, cells)
    for number, participant in sorted(report.participants.items()):
        for beep in participant.beeps:
            offset = beep.av_offset_s
            if offset is not None and beep.audio_onset_s is not None:
                yield Beep(number, beep.audio_onset_s, offset)


def _nearest(values: Sequence[float], target: float, tolerance: float) -> float | None:
    best = min(values, key=lambda v: abs(v - target), default=None)
    return best if best is not None and abs(best - target) <= tolerance else None


def _scan_video(
    path: Path | str, slots: Sequence[Rect]
) -> tuple[list[_Observation], dict[int, list[float]], int, float | None]:
    """Barcode readings and flash onsets (per participant) of every decoded frame."""
    observations: list[_Observation] = []
    flashes: dict[int, list[float]] = {}
    flashing = [False] * len(slots)
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                continue
            frames += 1
            time_s = float(frame.pts * frame.time_base)
            luma = np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)
            for s, slot in enumerate(slots):
                crop = luma[slot.y : slot.y + slot.height, slot.x : slot.x + slot.width]
                reading = read_slot(crop)
                if reading.participant is not None and reading.frame_index is not None:
                    observations.append(
                        _Observation(time_s, reading.participant, reading.frame_index, s)
                    )
                    if reading.flash and not flashing[s]:
                        flashes.setdefault(reading.participant, []).append(time_s)
                flashing[s] = reading.flash
    return _unwrap(observations), flashes, frames, fps


def _unwrap(observations: list[_Observation]) -> list[_Observation]:
    """Undo the 2**20 wrap of frame indices (after 9.7 h at 30 fps) per participant."""
    last: dict[int, int] = {}
    offset: dict[int, int] = {}
    out = []
    for obs in observations:
        prev = last.get(obs.participant)
        if prev is not None and obs.index + FRAME_INDEX_MODULO // 2 < prev:
            offset[obs.participant] = offset.get(obs.participant, 0) + FRAME_INDEX_MODULO
        last[obs.participant] = obs.index
        index = obs.index + offset.get(obs.participant, 0)
        out.append(_Observation(obs.time_s, obs.participant, index, obs.slot))
    return out


@dataclass(frozen=True)
class _AudioTrack:
    samples: NDArray[np.float32]
    """Mono, channels averaged, full scale 1.0."""
    rate: int
    start_s: float
    """Output time of ``samples[0]``."""


def _decode_audio(path: Path | str) -> list[_AudioTrack]:
    """Every audio stream as one mono array placed by frame pts (gaps left as zeros)."""
    tracks = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            pieces: list[tuple[int, NDArray[np.float32]]] = []
            rate = stream.rate or SAMPLE_RATE
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                start = round(frame.pts * frame.time_base * rate)
                for out in resampler.resample(frame):
                    pieces.append((start, out.to_ndarray().reshape(-1).astype(np.float32)))
                    start += out.samples
            container.seek(0)
            if not pieces:
                continue
            origin = pieces[0][0]
            length = max(s + len(p) for s, p in pieces) - origin
            samples = np.zeros(length, dtype=np.float32)
            for start, piece in pieces:
                samples[start - origin : start - origin + len(piece)] = piece
            tracks.append(_AudioTrack(samples, rate, origin / rate))
    return tracks


def _stream_onsets(track: _AudioTrack) -> list[float]:
    return [track.start_s + s / track.rate for s in detect_beeps(track.samples, track.rate)]


def detect_beeps(
    samples: NDArray[np.floating], rate: int = SAMPLE_RATE, *, min_level: float = 0.02
) -> list[float]:
    """Onsets of 1 kHz bursts, in (fractional) samples from ``samples[0]``.

    The signal is shifted down by 1 kHz and averaged over a 5 ms window: that keeps the
    beep's amplitude and rejects the participants' tones (at least 120 Hz away, and
    lower in level). A burst's onset is where this envelope crosses half the burst's own
    plateau, minus half the window: a step through a box filter is a straight ramp
    centred there, so the estimate is sample-accurate whatever the burst's level (a
    mixer's gain or the codec do not move it). Only whole bursts are reported: one that
    lost a packet at its start, middle or end is shorter, and its onset could be a packet
    late. Long inputs are processed in overlapping chunks to keep memory bounded.
    """
    data = np.asarray(samples, dtype=np.float32)
    chunk = round(_CHUNK_S * rate)
    overlap = round(_CHUNK_OVERLAP_S * rate)
    onsets: list[float] = []
    for core in range(0, len(data), chunk):
        begin = max(0, core - overlap)
        end = min(len(data), core + chunk + overlap)
        for onset in _detect_in(data[begin:end], begin, rate, min_level):
            if core <= onset < core + chunk:
                onsets.append(onset)
    return onsets


def _detect_in(data: NDArray[np.float32], origin: int, rate: int, min_level: float) -> list[float]:
    window = round(rate * _ENVELOPE_MS / 1000)
    if len(data) <= window:
        return []
    n = np.arange(origin, origin + len(data), dtype=np.int64)
    phase = 2 * np.pi * ((BEEP_HZ * n) % rate) / rate
    shifted = data * np.exp(-1j * phase).astype(np.complex64)
    summed = np.concatenate(([0], np.cumsum(shifted, dtype=np.complex128)))
    envelope = np.abs(summed[window:] - summed[:-window]) * (2 / window)
    floor = max(min_level, 8 * float(np.median(envelope)))
    runs = _runs(envelope > floor, merge_gap=round(rate * _MERGE_GAP_MS / 1000))
    onsets = []
    shortest = round(rate * _WHOLE_BEEP_MS / 1000)
    longest = 3 * round(rate * BEEP_SAMPLES / SAMPLE_RATE)
    for start, stop in runs:
        if not shortest <= stop - start <= longest:
            continue
        inner = envelope[start + window : stop - window]
        plateau = float(np.median(inner)) if inner.size else float(envelope[start:stop].max())
        half = plateau / 2
        lo = max(1, start - 2 * window)
        above = np.flatnonzero(envelope[lo : start + window + 1] >= half)
        if above.size == 0:
            continue
        m = lo + int(above[0])
        before, after = float(envelope[m - 1]), float(envelope[m])
        fraction = (half - before) / (after - before) if after > before else 0.0
        onsets.append(origin + (m - 1 + fraction) + window / 2)
    return onsets


def _runs(mask: NDArray[np.bool_], merge_gap: int) -> list[tuple[int, int]]:
    """[start, stop) of True runs, joining runs separated by fewer than merge_gap."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    runs: list[tuple[int, int]] = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if runs and start - runs[-1][1] < merge_gap:
            runs[-1] = (runs[-1][0], int(stop))
        else:
            runs.append((int(start), int(stop)))
    return runs


def audio_rms(path: Path | str) -> list[float]:
    """RMS level (full scale 1.0) of each audio stream, in stream order."""
    return [
        float(np.sqrt(np.mean(np.square(t.samples, dtype=np.float64)))) if t.samples.size else 0.0
        for t in _decode_audio(path)
    ]
