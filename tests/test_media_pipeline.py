"""Compositor, mixer and the media thread on synthetic frames (no network)."""

import time
from pathlib import Path

import av
import numpy as np

from bot.media.compositor import Compositor
from bot.media.gaps import GapTracker
from bot.media.layout import Rect, grid
from bot.media.mixer import LIMIT_CEILING, SAMPLE_RATE, Mixer
from bot.media.pipeline import MediaPipeline
from bot.media.report import SlotInfo
from bot.media.withholding import CONSENT_PENDING, CONSENT_WITHDRAWN, PAUSED, Withholding
from bot.media.writer import Mp4Writer
from bot.timeline import Timeline


def gray(value: int, width: int = 64, height: int = 36) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((height, width, 3), value, np.uint8), format="rgb24")


def tone(samples: int = 960, amplitude: int = 8000) -> av.AudioFrame:
    pcm = (np.sin(np.arange(samples) * 0.1) * amplitude).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = SAMPLE_RATE
    return frame


def luma_at(frame: av.VideoFrame, x: int, y: int) -> int:
    return int(frame.to_ndarray(format="gray")[y, x])


def test_grid_cells_are_even_and_inside() -> None:
    for count in range(1, 10):
        for rect in grid(count, 1280, 720):
            assert rect.x % 2 == rect.y % 2 == rect.width % 2 == rect.height % 2 == 0
            assert rect.x + rect.width <= 1280 and rect.y + rect.height <= 720
    assert Rect(0, 0, 640, 720).fit(640, 360) == Rect(0, 180, 640, 360)


def test_compositor_shows_nearest_frame_and_survives_resolution_changes() -> None:
    comp = Compositor(320, 180, 30)
    comp.add_cell(Rect(0, 0, 320, 180), GapTracker("p", "video"))
    comp.push(0, 0.000, gray(60, 64, 36))
    comp.push(0, 0.040, gray(200, 1280, 720))  # a size change mid-stream
    comp.push(0, 0.070, gray(120, 32, 18))
    assert abs(luma_at(comp.compose(0.0), 160, 90) - 60) < 8
    assert abs(luma_at(comp.compose(1 / 30), 160, 90) - 200) < 8  # 0.040 nearest to 0.033
    assert abs(luma_at(comp.compose(2 / 30), 160, 90) - 120) < 8
    assert comp.stats()[0] == {
        "frames_in": 3,
        "frames_shown": 3,
        "frames_skipped": 0,
        "frames_late": 0,
    }


def test_compositor_freezes_then_goes_black_and_reports_the_gap() -> None:
    comp = Compositor(64, 36, 10)
    comp.add_cell(Rect(0, 0, 64, 36), GapTracker("p", "video"))
    comp.push(0, 0.0, gray(200))
    lumas = [luma_at(comp.compose(i / 10), 30, 18) for i in range(30)]
    assert lumas[5] > 150  # frozen last picture
    assert lumas[25] < 30  # then black
    gaps = comp.gaps(3.0)[0].gaps
    assert len(gaps) == 1 and abs(gaps[0].start - 0.5) < 0.11


def test_mixer_lays_jittered_frames_end_to_end_and_fills_loss_with_silence() -> None:
    mixer = Mixer()
    mixer.add_voice(GapTracker("p", "audio"))
    t = 0.0
    for i in range(10):
        jitter = 0.004 if i % 2 else -0.003
        mixer.push(0, t + jitter if i else t, tone())
        t += 0.02
    mix, voices = mixer.pull(9600)
    assert np.count_nonzero(voices[0][: 960 * 10] == 0) < 50  # no holes from jitter
    mixer.push(0, 0.5, tone())  # 300 ms after the previous frame ended: a real gap
    mix, _ = mixer.pull(SAMPLE_RATE // 2)  # covers 0.2 s .. 0.7 s
    silence = int(0.3 * SAMPLE_RATE)
    assert np.abs(mix[:silence]).max() == 0
    assert np.abs(mix[silence : silence + 960]).max() > 0.1
    assert mixer.stats()[0]["discontinuities"] == 1


def test_one_lost_audio_frame_is_silence_in_its_place_not_a_shift() -> None:
    """Before, a single lost 20-ms packet (under the 30-ms snap) closed up: every later
    frame sounded 20 ms early until slewed back, a lip-sync error of 10-17 ms on average
    under 5% loss."""
    mixer = Mixer()
    mixer.add_voice(GapTracker("p", "audio"))
    for i in range(10):
        if i != 4:  # frame 4 (80-100 ms) lost
            mixer.push(0, i * 0.02, tone())
    _, voices = mixer.pull(960 * 10)
    voice = voices[0]
    assert np.abs(voice[960 * 4 : 960 * 5]).max() == 0, "the lost frame's time is silent"
    assert np.abs(voice[960 * 5 : 960 * 5 + 48]).max() > 0.1, "the next frame in its place"
    assert mixer.stats()[0]["samples_slewed"] == 0


def small_pipeline(path: Path, origin_wall: float, latency: float = 0.05) -> MediaPipeline:
    """One clinician cell at 320x180, 30 fps, trailing real time by ``latency``."""
    writer = Mp4Writer(
        path,
        width=320,
        height=180,
        fps=30,
        video_bitrate=300_000,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=["clinician"],
    )
    return MediaPipeline(
        writer,
        [SlotInfo("c1", "clinician")],
        width=320,
        height=180,
        fps=30,
        timeline=Timeline(origin_wall),
        latency=latency,
    )


def test_pipeline_writes_a_fragmented_mp4_of_the_right_length(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    pipeline = small_pipeline(path, origin_wall=time.time())
    pipeline.start()
    for i in range(50):
        pipeline.submit(0, i / 25, gray(i * 4))
    for i in range(100):
        pipeline.submit(0, i * 0.02, tone())
    report = pipeline.finish(2.0)
    assert report.video_frames == 60
    with av.open(str(path)) as container:
        assert abs(container.duration / av.time_base - 2.0) < 0.1
        assert [s.type for s in container.streams] == ["video", "audio", "audio"]
    assert path.read_bytes().count(b"moof") >= 2


def test_a_burst_placed_by_a_clock_still_learning_is_placed_again_and_every_frame_shown(
    tmp_path: Path,
) -> None:
    """A stream's first packets often come in a burst: each frame leaves the network with
    the mapping known so far, which squeezes them together (here 5 ms apart instead of
    40). Asked again once settled, the clock spreads them out and every one is shown."""
    path = tmp_path / "burst.mp4"
    pipeline = small_pipeline(path, origin_wall=time.time(), latency=0.4)
    pipeline.start()
    levels = [30 + 20 * i for i in range(10)]
    for i, level in enumerate(levels):
        pipeline.submit(0, 0.3 + i * 0.005, gray(level), lambda i=i: 0.1 + i / 25)
    pipeline.finish(0.6)
    with av.open(str(path)) as container:
        shown = [int(f.to_ndarray(format="gray").mean()) for f in container.decode(video=0)]
    seen = [level for level in levels if any(abs(luma - level) <= 6 for luma in shown)]
    assert seen == levels


def test_a_frame_keeps_its_place_when_its_clock_stepped_after_it(tmp_path: Path) -> None:
    """A new RTP base on the stream after the frame left the network moves its mapping by
    seconds: not the frame's own timing, so the frame stays where it was placed."""
    path = tmp_path / "step.mp4"
    pipeline = small_pipeline(path, origin_wall=time.time(), latency=0.4)
    pipeline.start()
    for i in range(10):
        pipeline.submit(0, 0.1 + i / 25, gray(200), lambda i=i: 0.1 + i / 25 - 30.0)
    report = pipeline.finish(0.6)
    assert report.video_frames == 18
    with av.open(str(path)) as container:
        shown = [int(f.to_ndarray(format="gray").mean()) for f in container.decode(video=0)]
    assert all(abs(luma - 200) <= 6 for luma in shown[4:15]), shown


def test_a_thread_far_behind_repeats_pictures_to_catch_up(tmp_path: Path) -> None:
    """Started 20 s late (a starved machine): it must catch up, not compose every frame."""
    pipeline = small_pipeline(tmp_path / "late.mp4", origin_wall=time.time() - 20.0)
    for i in range(500):
        pipeline.submit(0, i / 25, gray(i % 250))
    pipeline.start()
    report = pipeline.finish(20.0)
    assert report.video_frames == 600
    assert report.video_frames_repeated > 300


def test_a_dropped_participant_goes_black_at_once_and_comes_back() -> None:
    comp = Compositor(64, 36, 10)
    comp.add_cell(Rect(0, 0, 64, 36), GapTracker("p", "video"))
    comp.push(0, 0.0, gray(200))
    assert luma_at(comp.compose(0.0), 30, 18) > 150
    comp.cut(0, 0.15)
    assert luma_at(comp.compose(0.1), 30, 18) > 150  # before the drop: still there
    assert luma_at(comp.compose(0.2), 30, 18) < 30  # after it: black, not frozen
    comp.push(0, 0.3, gray(120))  # back, under a new session
    assert abs(luma_at(comp.compose(0.3), 30, 18) - 120) < 8


def test_a_frame_arriving_after_its_moment_is_dropped_not_shown_late() -> None:
    comp = Compositor(64, 36, 10)
    comp.add_cell(Rect(0, 0, 64, 36), GapTracker("p", "video"))
    comp.push(0, 0.0, gray(200))
    comp.compose(0.0)
    comp.compose(0.1)
    comp.compose(0.2)
    comp.push(0, 0.1, gray(60))  # its moment (0.1) has been composed already
    assert luma_at(comp.compose(0.3), 30, 18) > 150  # frozen, not the late frame
    assert comp.stats()[0]["frames_late"] == 1


def test_a_frame_that_already_fits_its_cell_is_copied_as_is() -> None:
    comp = Compositor(64, 36, 10)
    comp.add_cell(Rect(0, 0, 64, 36), GapTracker("p", "video"))
    planes = np.full((36 * 3 // 2, 64), 128, np.uint8)
    planes[:36] = 90
    comp.push(0, 0.0, av.VideoFrame.from_ndarray(planes, format="yuv420p"))
    out = comp.compose(0.0).to_ndarray()
    assert np.array_equal(out, planes)


def test_mixer_follows_a_lasting_offset_slowly_and_ignores_jitter() -> None:
    """The clock mapping improves by 20 ms (a less-delayed packet): the sound moves to
    its mapped place by at most half a millisecond a frame, without a hole or a jump."""
    mixer = Mixer()
    mixer.add_voice(GapTracker("p", "audio"))
    for i in range(200):
        shift = -0.020 if i >= 20 else 0.0
        mixer.push(0, 1.0 + i * 0.02 + shift, tone())
    mixer.pull(SAMPLE_RATE)  # before the audio starts
    mixer.pull(SAMPLE_RATE * 4 - 960 * 4)
    stats = mixer.stats()[0]
    assert stats["discontinuities"] == 0
    moved = stats["samples_slewed"]
    assert 0.020 * SAMPLE_RATE - 2 * 96 <= moved <= 0.020 * SAMPLE_RATE


def test_withholding_says_why_per_participant() -> None:
    held = Withholding(require_consent=True)
    assert held.reason(0.0, "p") == CONSENT_PENDING and not held.consent("p")
    held.set_consent("p", True, 1.0)
    held.set_consent("p", False, 3.0)
    held.set_consent("p", True, 5.0)
    held.pause(6.0)
    held.resume(7.0)
    reasons = [held.reason(t, "p") for t in (0.5, 1.0, 2.9, 3.0, 4.9, 5.0, 6.5, 7.0)]
    assert reasons == [
        CONSENT_PENDING,
        None,
        None,
        CONSENT_WITHDRAWN,
        CONSENT_WITHDRAWN,
        None,
        PAUSED,
        None,
    ]
    assert held.reason(6.5, "other") == PAUSED and held.reason(8.0, "other") == CONSENT_PENDING
    assert Withholding().reason(0.0, "anyone") is None  # consent not required: in the record


def test_a_withheld_participant_is_black_and_silent_others_are_not() -> None:
    comp = Compositor(128, 36, 10)
    comp.add_cell(Rect(0, 0, 64, 36), GapTracker("p", "video"))
    comp.add_cell(Rect(64, 0, 64, 36), GapTracker("c", "video"))
    mixer = Mixer()
    mixer.add_voice(GapTracker("p", "audio"))
    mixer.add_voice(GapTracker("c", "audio"))
    for t in range(10):
        comp.push(0, t / 10, gray(200))
        comp.push(1, t / 10, gray(200))
    for i in range(50):
        mixer.push(0, i * 0.02, tone())
        mixer.push(1, i * 0.02, tone())
    frame = comp.compose(0.5, [CONSENT_WITHDRAWN, None])
    assert luma_at(frame, 30, 18) < 30 and luma_at(frame, 94, 18) > 150
    mix, (withheld, kept) = mixer.pull(SAMPLE_RATE // 2, [CONSENT_WITHDRAWN, None])
    assert not withheld.any() and np.abs(kept).max() > 0.1
    assert np.array_equal(mix, kept)  # the mix carries only the participant kept
    comp.compose(0.9, [CONSENT_WITHDRAWN, None])
    gaps = comp.gaps(1.0)[0].gaps + mixer.gaps(1.0)[0].gaps
    assert {g.reason for g in gaps} == {CONSENT_WITHDRAWN}


def speech_like(pitch_hz: float, seconds: float, level: float = 1.0) -> np.ndarray:
    """A voiced sound: a pitch with falling harmonics under a syllable-rate swell, its
    peak at ``level`` (1.0: a browser at full level)."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buzz = sum(np.sin(2 * np.pi * pitch_hz * h * t + h) / h for h in range(1, 12))
    voice = buzz * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    scaled: np.ndarray = voice * (level / np.abs(voice).max())
    return scaled


def s16_frames(samples: np.ndarray) -> list[av.AudioFrame]:
    """20-ms stereo s16 frames, as a browser's decoded Opus arrives."""
    pcm = np.round(samples * 32767).astype(np.int16)
    frames = []
    for i in range(0, pcm.size, 960):
        frame = av.AudioFrame.from_ndarray(
            np.repeat(pcm[i : i + 960], 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        frames.append(frame)
    return frames


def mixed(sources: list[np.ndarray], chunk: int = 1024) -> tuple[np.ndarray, list[np.ndarray]]:
    """The whole mix and each voice, pulled ``chunk`` samples at a time as the recorder does."""
    mixer = Mixer()
    for index, source in enumerate(sources):
        mixer.add_voice(GapTracker(f"p{index}", "audio"))
        for n, frame in enumerate(s16_frames(source)):
            mixer.push(index, n * 0.02, frame)
    pulls = [mixer.pull(chunk) for _ in range(min(s.size for s in sources) // chunk)]
    mix = np.concatenate([m for m, _ in pulls])
    voices = [np.concatenate([v[i] for _, v in pulls]) for i in range(len(sources))]
    return mix, voices


def test_two_full_scale_voices_are_limited_in_the_mix_only() -> None:
    """Before, the sum (peak 1.7) was clipped at 1.0; now the mix stays under the ceiling
    while each speaker track is exactly what the participant sent."""
    sources = [speech_like(120, 2.0), speech_like(210, 2.0)]
    mix, voices = mixed(sources)
    assert np.abs(sum(voices)).max() > 1.5, "the test needs a sum well past full scale"
    assert np.abs(mix).max() <= LIMIT_CEILING + 1e-6
    assert np.abs(mix).max() > LIMIT_CEILING - 0.01, "limited, not merely turned down"
    for source, voice in zip(sources, voices, strict=True):
        sent = np.round(source * 32767).astype(np.int16)[: voice.size] / np.float32(32768)
        assert np.array_equal(voice, sent.astype(np.float32)), "speaker tracks bit-for-bit"


def test_a_single_quiet_voice_passes_the_limiter_unchanged() -> None:
    mix, (voice,) = mixed([speech_like(150, 1.0, level=0.5)])
    assert np.array_equal(mix, voice)


def test_the_limiter_moves_no_faster_than_the_voices_and_lets_go() -> None:
    """Both voices for one second (attack), then the quieter one alone (release): the mix
    never jumps more from one sample to the next than the plain sum does, and within a
    second of the loud part the quiet voice is back at its own level, untouched. Pulled
    in AAC-sized chunks or all at once, the result is the same (state carries over)."""
    loud = speech_like(120, 3.0)
    loud[SAMPLE_RATE:] = 0.0
    quiet = speech_like(210, 3.0, level=0.4)
    mix, voices = mixed([loud, quiet])
    plain = voices[0] + voices[1]
    assert np.abs(np.diff(mix)).max() <= np.abs(np.diff(plain)).max() + 1e-6
    after = 2 * SAMPLE_RATE
    assert np.array_equal(mix[after:], voices[1][after:])
    whole, _ = mixed([loud, quiet], chunk=mix.size)
    assert np.allclose(whole, mix, atol=1e-6)


def test_the_decoded_mix_of_two_full_scale_voices_stays_under_full_scale(
    tmp_path: Path,
) -> None:
    """Through the media thread and the AAC encoder, decoded again: the mix (1.18 before,
    in a two-tab recording) peaks under 1.0; each speaker track keeps its full level."""
    path = tmp_path / "loud.mp4"
    writer = Mp4Writer(
        path,
        width=64,
        height=36,
        fps=10,
        video_bitrate=50_000,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=["clinician", "patient"],
    )
    pipeline = MediaPipeline(
        writer,
        [SlotInfo("c1", "clinician"), SlotInfo("p1", "patient")],
        width=64,
        height=36,
        fps=10,
        timeline=Timeline(time.time() - 10.0),  # far behind: runs as fast as it can
        latency=0.05,
    )
    for slot, pitch in enumerate((120, 210)):
        for n, frame in enumerate(s16_frames(speech_like(pitch, 2.0))):
            pipeline.submit(slot, n * 0.02, frame)
    pipeline.start()
    pipeline.finish(2.0)
    peaks = {}
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            decoded = [np.abs(f.to_ndarray()).max() for f in container.decode(stream)]
            peaks[stream.metadata.get("handler_name")] = float(max(decoded))
            container.seek(0)
    assert peaks["mix"] <= 1.0, peaks
    assert peaks["clinician"] > 0.9 and peaks["patient"] > 0.9, peaks


def test_two_16_9_participants_fill_their_halves_of_the_recording(tmp_path: Path) -> None:
    """Issue #15: each participant fills at least 90% of the width of its half of the
    decoded picture (the default layout: a contained 16:9 grid)."""
    path = tmp_path / "halves.mp4"
    writer = Mp4Writer(
        path,
        width=320,
        height=180,
        fps=30,
        video_bitrate=300_000,
        keyframe_seconds=1.0,
        audio_codec="aac",
        audio_bitrate=64_000,
        speaker_titles=["clinician", "patient"],
    )
    pipeline = MediaPipeline(
        writer,
        [SlotInfo("c1", "clinician"), SlotInfo("p1", "patient")],
        width=320,
        height=180,
        fps=30,
        timeline=Timeline(time.time()),
        latency=0.05,
    )
    for i in range(30):
        pipeline.submit(0, i / 30, gray(200, 160, 90))
        pipeline.submit(1, i / 30, gray(120, 160, 90))
    pipeline.start()
    pipeline.finish(1.0)
    with av.open(str(path)) as container:
        last = [f.to_ndarray(format="gray") for f in container.decode(video=0)][-1]
    for half in (last[:, :160], last[:, 160:]):
        assert (half > 80).any(axis=0).sum() >= 0.9 * 160
