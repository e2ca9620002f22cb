"""``bot compose``: a recording's composite made afterwards from its archived tracks.

``sources`` finds the tracks (store or folder) and proves each against its manifest,
``placement`` decodes each onto the recording's timeline, ``composer`` drives the live
recorder's media pipeline with them and stores the result like a live recording.
"""

from __future__ import annotations

from bot.compose.composer import Composed, compose
from bot.compose.sources import ComposeError

__all__ = ["ComposeError", "Composed", "compose"]
