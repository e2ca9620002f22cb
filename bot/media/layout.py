"""Where each participant's picture goes on the fixed-size output frame."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    def fit(self, width: int, height: int) -> Rect:
        """The largest rectangle of ``width:height`` aspect centred in this one, even-sized.

        Even sizes and offsets keep 4:2:0 chroma planes aligned.
        """
        scale = min(self.width / width, self.height / height)
        w = max(2, int(width * scale) // 2 * 2)
        h = max(2, int(height * scale) // 2 * 2)
        x = self.x + (self.width - w) // 4 * 2
        y = self.y + (self.height - h) // 4 * 2
        return Rect(x, y, w, h)


def grid(count: int, width: int, height: int) -> list[Rect]:
    """Split the frame into ``count`` equal cells, as square a grid as the count allows."""
    if count <= 0:
        return []
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w = width // columns // 2 * 2
    cell_h = height // rows // 2 * 2
    return [
        Rect((i % columns) * cell_w, (i // columns) * cell_h, cell_w, cell_h) for i in range(count)
    ]
