"""Audio: each participant's samples placed on the timeline, mixed, and kept per speaker.

Runs in the media thread. A frame's timeline time gives its sample position; while a
stream stays within ``SNAP_SECONDS`` of where its previous frame ended it is laid end to
end, so timestamp jitter never becomes clicks, and a real jump (loss, mute, a clock step)
becomes silence or a trimmed overlap instead of a drift: a single lost packet is such a
jump (it leaves its own 20 ms of silence in place). A lasting small offset (the
clock mapping improving by some milliseconds as a less-delayed packet arrives, which
moves the video at once) is slewed away, a quarter of it a frame and at most
``MAX_SLEW``, so the sound follows the picture within a few hundred milliseconds instead
of keeping the old offset for good.

The mix goes through a ``Limiter``; the speaker tracks do not (see its docstring).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
import numpy.typing as npt

from bot.media.gaps import GapTracker
from bot.media.report import SAMPLE_RATE

SNAP_SECONDS = 0.03
MIN_HOLE = 240
"""Samples (5 ms): the least distance from the previous frame's end read as a lost frame."""
SLEW_DEADBAND = 96
"""Samples (2 ms) of lasting offset left alone: below any perceptible lip-sync error."""
MAX_SLEW = 96
"""Samples (2 ms) a frame may move toward its mapped position: a tenth of a 20-ms frame
trimmed or padded, for the few frames after the mapping moved."""
MAX_AHEAD_SECONDS = 10.0
"""Samples placed further ahead than this (a broken mapping) are dropped, not kept."""
LIMIT_CEILING = 10 ** (-1.5 / 20)
"""The most the mix reaches before encoding (-1.5 dBFS, 0.84). AAC's decoded peaks land
above the encoded ones (quantization at 64 kb/s); two full-scale speech-like voices
limited to this decoded to at most 0.88 (tests/test_media_pipeline.py)."""
LIMIT_KNEE = 10 ** (-4.5 / 20)
"""Where limiting starts (-4.5 dBFS, 0.6): between knee and ceiling the peak level bends
smoothly over, so a waveform running into the limit is rounded, not flattened. A hard
knee (a corner where the limit starts) decoded up to 0.96 on the same voices."""
LIMIT_RELEASE_SECONDS = 0.3
"""Time constant of the limiter's recovery: slower than a voice's lowest pitch period
(the gain barely ripples within a cycle, so it does not distort) and fast enough that a
quieter speaker after a loud burst is back at full level within a second."""
LIMIT_BLOCK = SAMPLE_RATE // 10
"""The most samples the limiter takes at once, so that ``r ** -n`` stays far inside the
float64 range whatever size is pulled (the recorder pulls one AAC frame, 1024)."""

Samples = npt.NDArray[np.float32]


@dataclass
class _Voice:
    gaps: GapTracker
    resampler: av.AudioResampler = field(
        # Planar float in the sender's own layout; ``push`` averages the channels.
        default_factory=lambda: av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
    )
    segments: list[tuple[int, Samples]] = field(default_factory=list)
    next_position: int | None = None
    offset: float = 0.0
    """Smoothed ``mapped position - laid position``, in samples."""
    frames_in: int = 0
    samples_late: int = 0
    samples_ahead: int = 0
    discontinuities: int = 0
    samples_slewed: int = 0


class Limiter:
    """A soft-knee peak limiter without look-ahead: instant attack, exponential release.

    Two browsers at full level sum to nearly twice full scale. Clipping that sum flattens
    every peak into a corner, which the AAC encoder then rings on (a decoded peak of 1.18
    was measured) and which is heard as harsh distortion over both voices, the worst case
    for intelligibility. Here the gain follows a peak envelope that jumps to each new peak
    and decays with ``LIMIT_RELEASE_SECONDS``; the envelope's level maps through a soft
    knee onto at most ``LIMIT_CEILING``. So the output never exceeds the ceiling, a rising
    peak is bent over smoothly (its slope only lessens, it never jumps), after it the
    voices are scaled by a gain that glides back, and below the knee nothing changes.
    Looking ahead would soften the attack further but delay the mix against the picture
    and the speaker tracks.

    The envelope ``env[n] = max(|x[n]|, r * env[n-1])`` is a running maximum of
    ``|x[k]| / r**k`` scaled back by ``r**n``: one ``np.maximum.accumulate`` per chunk,
    no loop over samples. The envelope carries over from chunk to chunk.
    """

    def __init__(
        self,
        ceiling: float = LIMIT_CEILING,
        knee: float = LIMIT_KNEE,
        release_seconds: float = LIMIT_RELEASE_SECONDS,
    ) -> None:
        self.ceiling = ceiling
        self.knee = knee
        self._decay = float(np.exp(-1.0 / (release_seconds * SAMPLE_RATE)))
        self._envelope = 0.0
        self._powers = np.empty(0)
        """``r ** (n + 1)`` for n = 0, 1, ...: the decay n + 1 samples into a block."""

    def apply(self, mix: Samples) -> None:
        """Limit ``mix`` in place; below the knee it is left exactly as it was."""
        for start in range(0, mix.size, LIMIT_BLOCK):
            block = mix[start : start + LIMIT_BLOCK]
            peak = float(np.abs(block).max(initial=0.0))
            if max(peak, self._envelope) <= self.knee:
                # Quiet: the envelope stays under the knee, so the gain is 1 throughout
                # and no per-sample work is needed.
                self._envelope = max(peak, self._envelope * self._decay**block.size)
                continue
            powers = self._power_table(block.size)
            envelope = powers * np.maximum.accumulate(
                np.maximum(np.abs(block) / powers, self._envelope)
            )
            self._envelope = float(envelope[-1])
            block *= self._gain(envelope).astype(np.float32)

    def _gain(self, envelope: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """1 up to the knee; above it, the level bends over (tanh) toward the ceiling."""
        width = self.ceiling - self.knee
        level = np.maximum(envelope, self.knee)
        gain: npt.NDArray[np.float64] = (
            self.knee + width * np.tanh((level - self.knee) / width)
        ) / level
        return gain

    def _power_table(self, size: int) -> npt.NDArray[np.float64]:
        if self._powers.size < size:
            self._powers = self._decay ** np.arange(1, size + 1, dtype=np.float64)
        return self._powers[:size]


class Mixer:
    """Keeps each voice's pending samples and hands out aligned chunks of the mix."""

    def __init__(self) -> None:
        self._voices: list[_Voice] = []
        self.cursor = 0
        """First sample position not yet handed out."""
        self._limiter = Limiter()

    def add_voice(self, gaps: GapTracker) -> int:
        self._voices.append(_Voice(gaps))
        return len(self._voices) - 1

    def label(self, voice: int, participant_id: str) -> None:
        self._voices[voice].gaps.participant = participant_id

    def push(self, voice: int, t: float, frame: av.AudioFrame) -> None:
        v = self._voices[voice]
        v.frames_in += 1
        frame.pts = None  # the resampler must not re-time: placement is ours
        for out in v.resampler.resample(frame):
            # The channels' mean, not swresample's float downmix, which adds them at -3 dB
            # each: a mono voice arriving as identical stereo channels (Opus as aiortc
            # decodes it) came out 3 dB louder than sent, a full-scale voice at 1.41.
            planes = out.to_ndarray()
            samples = planes.sum(axis=0) / np.float32(planes.shape[0])
            self._place(v, round(t * SAMPLE_RATE), samples)
            t += samples.size / SAMPLE_RATE

    def pull(self, size: int, withheld: Sequence[str | None] = ()) -> tuple[Samples, list[Samples]]:
        """The next ``size`` samples of the mix and of each voice (silence where none, and
        where ``withheld`` gives a voice a reason to be kept out of the record)."""
        start, end = self.cursor, self.cursor + size
        mix = np.zeros(size, dtype=np.float32)
        voices = []
        for index, v in enumerate(self._voices):
            reason = withheld[index] if index < len(withheld) else None
            chunk = np.zeros(size, dtype=np.float32)
            has_media = False
            # Segments are sorted by position, so only the front ones reach this chunk;
            # those running past its end stay for the next.
            segments = v.segments
            taken = 0
            keep = []
            for position, samples in segments:
                if position >= end:
                    break
                taken += 1
                a, b = max(start, position), min(end, position + samples.size)
                if a < b:
                    chunk[a - start : b - start] = samples[a - position : b - position]
                    has_media = True
                if position + samples.size > end:
                    keep.append((position, samples))
            segments[:taken] = keep
            v.gaps.update(start / SAMPLE_RATE, has_media, reason)
            if reason is not None:
                chunk[:] = 0
            mix += chunk
            voices.append(chunk)
        self._limiter.apply(mix)
        self.cursor = end
        return mix, voices

    def stats(self) -> list[dict[str, int]]:
        return [
            {
                "frames_in": v.frames_in,
                "samples_late": v.samples_late,
                "samples_ahead": v.samples_ahead,
                "discontinuities": v.discontinuities,
                "samples_slewed": v.samples_slewed,
            }
            for v in self._voices
        ]

    def gaps(self, end: float) -> list[GapTracker]:
        for v in self._voices:
            v.gaps.finish(end)
        return [v.gaps for v in self._voices]

    def _place(self, v: _Voice, position: int, samples: Samples) -> None:
        if v.next_position is not None:
            error = position - v.next_position
            # A frame that starts half a frame or more after the previous one ended
            # follows a lost packet (RTP timestamps do not jitter; only the mapping moves,
            # by a few ms): laid end to end it would put the sound a frame early for as
            # long as the slew takes, so it goes to its own place and the loss is silence.
            lost = error >= max(samples.size // 2, MIN_HOLE)
            if not lost and abs(error) <= SNAP_SECONDS * SAMPLE_RATE:
                v.offset += 0.2 * (error - v.offset)  # jitter averages out, an offset stays
                slew = 0
                if abs(v.offset) > SLEW_DEADBAND:
                    slew = int(max(-MAX_SLEW, min(MAX_SLEW, v.offset / 4)))
                    v.offset -= slew
                    v.samples_slewed += abs(slew)
                position = v.next_position + slew
            else:
                v.discontinuities += 1
                v.offset = 0.0
        v.next_position = position + samples.size
        if position < self.cursor:
            late = min(samples.size, self.cursor - position)
            v.samples_late += late
            samples = samples[late:]
            position += late
        if position > self.cursor + MAX_AHEAD_SECONDS * SAMPLE_RATE:
            v.samples_ahead += samples.size
            return
        if samples.size:
            bisect.insort(v.segments, (position, samples), key=lambda segment: segment[0])
