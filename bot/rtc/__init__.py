"""The WebRTC side: one Cloudflare session's PeerConnection, as a subscriber.

Owns the pulls and their negotiation (``subscriber``, ``simulcast``), what the recorder
accepts from an SFU's offer (``codec_policy``), what it does with each packet before
aiortc's jitter buffer (``receiver_tap``, ``buffers``), each track's reader and keyframe
watchdog (``track_reader``, ``tracks``), RTP time to the recording's wall clock
(``clock``), and every use of aiortc's and aioice's private API (``aiortc_compat``, the
only module that may touch it). May import ``bot.config`` and ``bot.realtime``; hands
decoded frames on through a callback and never imports ``bot.media``, ``bot.storage`` or
the recorder.
"""
