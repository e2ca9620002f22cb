"""Consultation recorder for Cloudflare Realtime.

The flow, one direction: ``bot.realtime`` (API client) -> ``bot.rtc`` (PeerConnection, RTP
clock, aiortc's private API) -> ``bot.media`` (compositor, mixer, MP4 writer) -> ``bot.storage``
(spool, upload)
-> ``bot.manifest``. ``bot.testbed`` holds the local SFU, synthetic participants and the
local S3 store used by the demo and the tests.
"""

__version__ = "0.1.0"
