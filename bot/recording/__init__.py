"""One consultation's lifecycle: ``Recorder`` runs it, ``record`` is ``bot record``.

Owns the roster (who holds which slot), the transport supervisor (probe, rebuild,
re-pull), the stop policy, the output (spool, uploader, writer) and the manifest that
comes out. Wires ``bot.rtc`` (frames in) to ``bot.media`` (the MP4) and ``bot.storage``
(the object); may import those, ``bot.realtime``, ``bot.manifest`` and the foundation.
"""

from bot.recording.recorder import Recorder, record
from bot.recording.result import RecordingResult
from bot.recording.status import RecorderStatus

__all__ = ["Recorder", "RecorderStatus", "RecordingResult", "record"]
