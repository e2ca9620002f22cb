"""Pauses and consent, as the control API asks for them: moments on the one timeline.

The media thread reads the result through ``Withholding`` (black and silence, gaps with
their reason); the manifest lists the consent changes. Each call returns the moment it
takes effect, which the control API reports and audits.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from bot.media.withholding import Withholding

log = structlog.get_logger("bot.recorder")


class PrivacyControls:
    def __init__(self, withholding: Withholding, now: Callable[[], float]) -> None:
        self._withholding = withholding
        self._now = now

    def pause(self) -> float:
        """Black and silence for everyone from now until ``resume``."""
        at = self._now()
        self._withholding.pause(at)
        log.info("recorder.paused", at=round(at, 3))
        return at

    def resume(self) -> float:
        at = self._now()
        self._withholding.resume(at)
        log.info("recorder.resumed", at=round(at, 3))
        return at

    def set_consent(self, participant_id: str, given: bool) -> float:
        """A participant's consent, from now: withdrawn, their media stays out of the
        composite, the mix and their speaker track until it is given again."""
        at = self._now()
        self._withholding.set_consent(participant_id, given, at)
        log.info("recorder.consent", participant=participant_id, given=given, at=round(at, 3))
        return at
