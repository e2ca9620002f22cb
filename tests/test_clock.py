"""The timeline mapping: RTP unwrapping, sender reports, arrival fallback, clock steps."""

import structlog

from bot.rtc.clock import (
    NTP_UNIX_OFFSET,
    SENDER_REPORT_WINDOW,
    ClockDomain,
    MinOffset,
    RtpUnwrapper,
    StreamClock,
)
from bot.timeline import Timeline


def ntp(unix: float) -> int:
    seconds = int(unix) + NTP_UNIX_OFFSET
    return (seconds << 32) | int((unix % 1) * 2**32)


def test_unwrap_handles_wrap_and_steps_back() -> None:
    u = RtpUnwrapper()
    assert u.extend(2**32 - 100) == 2**32 - 100
    assert u.extend(50) == 2**32 + 50  # wrapped forwards
    assert u.extend(2**32 - 10) == 2**32 - 10  # a step back stays a step back (aiortc: +13 h)


def test_fallback_uses_least_delayed_packet() -> None:
    origin = 1000.0
    clock = StreamClock(48_000, ClockDomain("pub"), Timeline(origin))
    base = 123_456
    for i, delay in enumerate([0.050, 0.020, 0.080, 0.021]):
        clock.on_packet(1, base + i * 960, origin + 1.0 + i * 0.02 + delay)
    t = clock.timeline_seconds(base)
    assert t is not None
    assert abs(t - 1.020) < 1e-6


def test_sender_report_aligns_audio_and_video_of_one_publisher() -> None:
    origin = 5000.0
    domain = ClockDomain("pub")
    audio = StreamClock(48_000, domain, Timeline(origin))
    video = StreamClock(90_000, domain, Timeline(origin))
    capture = origin + 2.0  # both captured at the same instant, different RTP bases
    a_rtp, v_rtp = 1_000, 3_000_000_000
    audio.on_packet(7, a_rtp, capture + 0.010)
    video.on_packet(9, v_rtp, capture + 0.045)  # video arrives 35 ms later (encoder delay)
    audio.on_sender_report(7, ntp(capture), a_rtp)
    video.on_sender_report(9, ntp(capture), v_rtp)
    audio.on_packet(7, a_rtp + 960, capture + 0.030)
    video.on_packet(9, v_rtp + 3000, capture + 0.080)
    ta, tv = audio.timeline_seconds(a_rtp), video.timeline_seconds(v_rtp)
    assert ta is not None and tv is not None
    assert abs(ta - tv) < 1e-6  # lip sync from the shared sender clock
    assert abs(ta - 2.010) < 0.002


def test_sender_report_with_zero_ntp_is_ignored() -> None:
    clock = StreamClock(48_000, ClockDomain("pub"), Timeline(0.0))
    clock.on_packet(1, 100, 10.0)
    clock.on_sender_report(1, 0, 100)
    assert not clock.synced


def test_min_offset_reanchors_after_a_sustained_step_only() -> None:
    m = MinOffset()
    m.observe(1.0, 0.0)
    for i in range(40):  # a starved loop: packets seconds late for seconds, no step
        m.observe(9.0, 0.5 + i * 0.1)
    assert m.value == 1.0
    for i in range(40):  # a new RTP base: far later, and for longer than the window
        m.observe(60.0 + (i % 3) * 0.001, 5.0 + i * 0.1)
    assert m.value is not None and abs(m.value - 60.0) < 0.01


def test_sender_report_jitter_does_not_move_the_mapping() -> None:
    """aiortc stamps SRs at send time: the earliest of recent reports is the capture time."""
    domain = ClockDomain("pub")
    clock = StreamClock(90_000, domain, Timeline(0.0))
    clock.on_packet(5, 0, 100.0)
    for i, late in enumerate([0.004, 0.0, 0.007, 0.002]):
        clock.on_sender_report(5, ntp(100.0 + i + late), i * 90_000)
        clock.on_packet(5, i * 90_000, 100.0 + i + 0.001)
    t = clock.timeline_seconds(4 * 90_000)
    assert t is not None and abs(t - 104.0) < 1e-6  # the first packet had no delay


def test_a_moved_mapping_is_logged_with_its_size() -> None:
    """When the least-delayed report leaves the window the mapping moves: every frame of
    the stream shifts against its publisher's other streams, so the move is logged."""
    origin = 7000.0
    video = StreamClock(90_000, ClockDomain("pub"), Timeline(origin))
    video.on_packet(9, 0, origin + 0.05)
    with structlog.testing.capture_logs() as seen:
        video.on_sender_report(9, ntp(origin), 0)  # the earliest mapping
        for second in range(1, SENDER_REPORT_WINDOW + 1):  # each 25 ms later than capture
            video.on_sender_report(9, ntp(origin + second + 0.025), second * 90_000)
    moved = [e for e in seen if e["event"] == "clock.sender_mapping_moved"]
    assert [(e["session"], e["moved_ms"]) for e in moved] == [("pub", 25.0)]
