"""The recorder's aiortc hooks that change behaviour: how lost packets are given up."""

from aiortc.rtp import RtpPacket

from bot.receiver_hooks import (
    _AudioPassThrough,
    _BoundedDecoderQueue,
    _DroppingFrameQueue,
    _LossTolerantJitterBuffer,
)


def packet(seq: int, timestamp: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp)
    p._data = b"x"  # type: ignore[attr-defined]
    return p


def test_audio_frames_pass_at_once_and_a_loss_costs_only_its_own_frame() -> None:
    buffer = _AudioPassThrough()
    out = []
    for seq in [*range(10), *range(11, 20), 15, 19]:  # 10 lost; 15 and 19 arrive twice, late
        _, frame = buffer.add(packet(seq, seq * 960))
        if frame is not None:
            out.append(frame.timestamp // 960)
    assert out == [*range(10), *range(11, 20)]


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
