"""Consultation recorder for Cloudflare Realtime.

The flow, one direction: ``bot.realtime`` (API client) -> ``bot.rtc`` (PeerConnection, RTP
clock, aiortc's private API) -> ``bot.media`` (compositor, mixer, MP4 writer) ->
``bot.storage`` (spool, upload) -> ``bot.manifest``; ``bot.recording`` runs it. Beside it:
``bot.observe``, ``bot.control``, ``bot.inspect``, ``bot.selftest`` and its publisher
``bot.synthetic``. The local SFU, S3 store and demo are the testbed's (``testbed/``, a
distribution of its own that uses this package and is never used by it).
"""

__version__ = "0.1.0"
