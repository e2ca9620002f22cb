"""The recorder's aiortc hooks that change behaviour: how lost packets are given up."""

import random

from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from bot.receiver_hooks import (
    _AudioReorder,
    _BoundedDecoderQueue,
    _DroppingFrameQueue,
    _LossTolerantJitterBuffer,
)


def packet(seq: int, timestamp: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp)
    p._data = b"x"  # type: ignore[attr-defined]
    return p


def sequence(reorder: _AudioReorder, arrivals: list[int]) -> list[int]:
    out: list[int] = []
    for seq in arrivals:
        out += [p.sequence_number for p in reorder.push(packet(seq & 0xFFFF, seq * 960))]
    return out


def test_audio_is_put_back_in_order_and_a_loss_costs_only_its_own_frame() -> None:
    # 3 and 4 swapped, 7 overtaken by three later packets, 10 lost, 15 a late duplicate.
    arrivals = [0, 1, 2, 4, 3, 5, 6, 8, 9, 11, 7, *range(12, 20), 15, *range(20, 30)]
    reorder = _AudioReorder(wait=8)
    assert sequence(reorder, arrivals) == [n for n in range(30) if n != 10]
    assert reorder.given_up == 1 and reorder.too_late == 1


def test_audio_order_survives_the_sequence_number_wrap() -> None:
    start = 65530
    arrivals = [start, start + 2, start + 1, *range(start + 3, start + 12)]
    got = sequence(_AudioReorder(wait=4), arrivals)
    assert got[:3] == [65530, 65531, 65532] and got[-1] == (start + 11) & 0xFFFF


@given(st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_jittered_audio_comes_out_in_order_without_loss(seed: int, spread: int) -> None:
    """Any shuffle within ``spread`` packets (jitter up to spread x 20 ms) is undone; only
    packets overtaken by the very first to arrive (the stream starts there) are lost."""
    rng = random.Random(seed)
    arrivals = sorted(range(200), key=lambda n: n + rng.uniform(0, spread + 0.99))
    out = sequence(_AudioReorder(wait=8), arrivals)
    assert out == list(range(arrivals[0], arrivals[0] + len(out)))
    assert out[-1] >= 200 - 1 - 8


def test_video_waits_for_a_retransmission_then_gives_up_with_a_keyframe_request() -> None:
    buffer = _LossTolerantJitterBuffer(512, give_up_after=48)
    frames, plis = [], 0
    for seq in range(200):
        if seq in (20, 120):
            continue  # 20 is retransmitted below; 120 never arrives
        pli, frame = buffer.add(packet(seq, (seq // 3) * 3000))
        plis += pli
        if frame is not None:
            frames.append(frame.timestamp // 3000)
        if seq == 30:
            pli, frame = buffer.add(packet(20, (20 // 3) * 3000))
            frames += [frame.timestamp // 3000] if frame is not None else []
    assert 6 in frames  # the frame holding packet 20 was completed by the retransmission
    assert 40 not in frames  # the frame holding packet 120 was given up ...
    assert max(frames) >= 60 and plis >= 1  # ... the picture went on, a keyframe was asked for


def test_decoder_queue_drops_the_oldest_frames_but_never_the_stop_sentinel() -> None:
    q = _BoundedDecoderQueue(3)
    for i in range(10):
        q.put(("codec", i))
    q.put(None)
    items = [q.get_nowait() for _ in range(q.qsize())]
    assert items[:-1] == [("codec", 7), ("codec", 8), ("codec", 9)] and items[-1] is None
    assert q.dropped == 7


async def test_frame_queue_keeps_the_newest_frames_and_the_end_marker() -> None:
    q = _DroppingFrameQueue(2)
    for i in range(5):
        await q.put(i)
    await q.put(None)
    assert [q.get_nowait() for _ in range(q.qsize())] == [3, 4, None]
    assert q.dropped == 3
