"""Who is in the consultation and which cell each holds: the one record of a slot.

A slot is a participant's place in the output (a grid cell and a speaker track), chosen
by role from the layout. A participant who leaves keeps its slot reserved; coming back
(same id, perhaps a new session) it gets the same one, so the record shows one person in
one place. The media thread gets its copy of a slot only from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.config import ConfigError, Participant
from bot.media.report import SlotInfo


class Roster:
    def __init__(self, roles: Sequence[str]) -> None:
        self.slots: list[SlotInfo] = [SlotInfo("", role) for role in roles]
        self._present: dict[str, tuple[Participant, int]] = {}
        self._ever: dict[str, Participant] = {}

    def __contains__(self, participant_id: object) -> bool:
        return participant_id in self._present

    def place(self, participant: Participant) -> int:
        """The slot ``participant`` records into from now on.

        Raises ``ConfigError`` when the layout has no free cell for its role.
        """
        slot = self._slot_for(participant)
        self._present[participant.id] = (participant, slot)
        self._ever[participant.id] = participant
        self.slots[slot] = SlotInfo(participant.id, participant.role)
        return slot

    def remove(self, participant_id: str) -> int:
        """The slot ``participant_id`` held (it stays reserved); ``KeyError`` if absent."""
        _, slot = self._present.pop(participant_id)
        return slot

    def present(self) -> list[tuple[Participant, int]]:
        """Participants being recorded now, with their slots."""
        return list(self._present.values())

    def ever(self) -> list[Participant]:
        """Everyone recorded at some point, in order of first arrival (the manifest's)."""
        return list(self._ever.values())

    @property
    def roles(self) -> list[str]:
        return [slot.role for slot in self.slots]

    def _slot_for(self, participant: Participant) -> int:
        for index, slot in enumerate(self.slots):
            if slot.participant_id == participant.id:
                return index
        taken = {slot for _, slot in self._present.values()}
        for index, slot in enumerate(self.slots):
            if slot.role == participant.role and index not in taken and not slot.participant_id:
                return index
        raise ConfigError(
            f"no free cell for a {participant.role!r}: the layout is "
            f"{self.roles}; set recording.layout to include it"
        )
