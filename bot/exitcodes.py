"""Exit codes by failure class, so an orchestrator can decide whether to retry."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    """Unexpected failure; the spool is kept for ``bot recover``."""
    CONFIG = 2
    """Bad config, flags or environment: fix the input, do not retry unchanged."""
    REALTIME_AUTH = 3
    """Cloudflare rejected the app id or secret."""
    REALTIME = 4
    """Cloudflare API or WebRTC failure (tracks not found, transport lost for good)."""
    STORAGE = 5
    """The object store failed; the recording is complete on local disk."""
    MEDIA = 6
    """Media could not be decoded or encoded."""
    NOT_VERIFIED = 7
    """``bot verify``: the record does not prove itself (the report says which check)."""
    INTERRUPTED = 130
    """Stopped by a signal before the recording could be finished."""
