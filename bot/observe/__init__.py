"""What a recording tells the outside while it runs: Prometheus metrics, the terminal
progress panel, the append-only audit trail and signed webhooks.

Reads the recorder's status; may import ``bot.config``, ``bot.logs`` and ``bot.storage``
(the audit trail is stored beside the recording). Nothing in the media path imports it.
"""
