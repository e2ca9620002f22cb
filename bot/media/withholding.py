"""What is kept out of the record, from when, and why: a pause, or a participant's consent.

A privacy pause withholds everyone; consent is one participant's. Withheld media is
replaced by black and silence in the composite, the mix and that participant's speaker
track, and the stretch is a gap with its reason (``paused``, ``consent_withdrawn``,
``consent_pending``), so the record says why nothing is there.

Changes come from the event loop (control calls) and are read by the media thread for
each output tick: both sides hold the lock for a few list operations only. Times are
timeline seconds, taken when the call arrives; the media thread trails real time, so a
change lands exactly at that moment of the recording.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

PAUSED: Final = "paused"
CONSENT_WITHDRAWN: Final = "consent_withdrawn"
CONSENT_PENDING: Final = "consent_pending"
ENCRYPTED: Final = "encrypted"
"""Media that arrives end-to-end encrypted, which this recorder cannot open: never
decoded, so black and silence (``bot.e2ee.frames``)."""


class Withholding:
    """The pauses and each participant's consent, as changes on the timeline."""

    def __init__(
        self,
        *,
        require_consent: bool = False,
        unreadable: Callable[[str], bool] | None = None,
    ) -> None:
        """``unreadable(participant)``: whether their media is ciphertext right now."""
        self._require_consent = require_consent
        self._unreadable = unreadable
        self._pauses: list[tuple[float, float | None]] = []
        self._consent: dict[str, list[tuple[float, bool]]] = {}
        self._changes: list[tuple[str, bool, float]] = []
        self._lock = threading.Lock()

    @property
    def paused(self) -> bool:
        with self._lock:
            return bool(self._pauses) and self._pauses[-1][1] is None

    def pause(self, at: float) -> None:
        with self._lock:
            if not self._pauses or self._pauses[-1][1] is not None:
                self._pauses.append((at, None))

    def resume(self, at: float) -> None:
        with self._lock:
            if self._pauses and self._pauses[-1][1] is None:
                self._pauses[-1] = (self._pauses[-1][0], at)

    def set_consent(self, participant: str, given: bool, at: float) -> None:
        with self._lock:
            self._consent.setdefault(participant, []).append((at, given))
            self._changes.append((participant, given, at))

    def consent_changes(self) -> list[tuple[str, bool, float]]:
        """Every consent change in the order made: participant, given, timeline second."""
        with self._lock:
            return list(self._changes)

    def consent(self, participant: str) -> bool:
        """Whether the participant's media enters the record now."""
        with self._lock:
            changes = self._consent.get(participant)
            return changes[-1][1] if changes else not self._require_consent

    def reason(self, t: float, participant: str) -> str | None:
        """Why ``participant``'s media at timeline second ``t`` is withheld; None if not."""
        decided = self.decided(t, participant)
        if decided is not None:
            return decided
        if self._unreadable is not None and self._unreadable(participant):
            return ENCRYPTED
        return None

    def decided(self, t: float, participant: str) -> str | None:
        """Why a decision (a pause, consent) keeps ``participant``'s media at ``t`` out;
        None if none does. What the track archive asks of every frame: a frame it sees
        was opened, so never ``encrypted``."""
        if not self._pauses and not self._consent and not self._require_consent:
            return None  # nothing decided yet: no lock for every frame of every call
        with self._lock:
            if any(start <= t and (stop is None or t < stop) for start, stop in self._pauses):
                return PAUSED
            state: bool | None = None
            for at, given in self._consent.get(participant, ()):
                if at > t:
                    break
                state = given
        if state is None and self._require_consent:
            return CONSENT_PENDING
        if state is False:
            return CONSENT_WITHDRAWN
        return None
