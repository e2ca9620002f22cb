"""``bot review``: a read-only web page on loopback for looking at stored recordings.

It lists the recordings in the configured store (newest first, by consultation id and
date) and, for one, shows the player, a timeline picture of participants, gaps, pauses
and consent (``timeline``), the storage, verification and custody facts from the
manifest checked against the store now (``facts``), and the audit trail; ``bot verify``
runs on demand. ``catalog`` reads the store, ``pages`` renders HTML, ``server`` serves it
behind a one-time token and streams the object with Range support, so SSE-C stays on the
server.

It owns only these pages: it may import the foundation, ``bot.manifest``, ``bot.storage``
and ``bot.custody`` (read-only use of each), and nothing imports it but the command line.
"""

from bot.review.server import ReviewServer, serve

__all__ = ["ReviewServer", "serve"]
