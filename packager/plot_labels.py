"""Where a scatter plot's text labels go so that none covers another label or a point.

Deterministic and static (the page needs no script): labels are placed in the order of their points'
x, each in the first free slot of a fixed sequence: beside its point, then one label height lower,
higher, two lower, two higher, ... A label that would run past the plot's right edge goes on the
left of its point. Coordinates are display units (pixels, y up), as matplotlib's renderer measures.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle; y grows upwards."""

    left: float
    bottom: float
    right: float
    top: float

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share interior area (touching edges do not count)."""
        return (self.left < other.right and other.left < self.right
                and self.bottom < other.top and other.bottom < self.top)

    def padded(self, pad: float) -> Box:
        return Box(self.left - pad, self.bottom - pad, self.right + pad, self.top + pad)


def _slots() -> Iterator[int]:
    """0, -1, 1, -2, 2, ...: how many label heights away from beside its point a label is tried."""
    yield 0
    for step in itertools.count(1):
        yield -step
        yield step


def place_labels(anchors: list[tuple[float, float]], extents: list[tuple[float, float]], obstacles: list[Box],
                 beside: float, gap: float, right_limit: float) -> list[Box]:
    """Return each label's box, for labels of (width, height) `extents` at points `anchors`.

    A label starts `beside` to the right of its point (left, past `right_limit`), centred on it; no
    returned box comes within `gap` of another or of an `obstacle` (the plotted points).
    """
    placed: list[Box] = []

    def free(box: Box) -> bool:
        return not any(box.overlaps(other.padded(gap)) for other in [*placed, *obstacles])

    boxes: dict[int, Box] = {}
    for i in sorted(range(len(anchors)), key=lambda i: (anchors[i], i)):
        (x, y), (width, height) = anchors[i], extents[i]
        left = x + beside if x + beside + width <= right_limit else x - beside - width
        for slot in _slots():
            bottom = y - height / 2 + slot * (height + gap)
            box = Box(left, bottom, left + width, bottom + height)
            if free(box):
                break
        boxes[i] = box
        placed.append(box)
    return [boxes[i] for i in range(len(anchors))]
