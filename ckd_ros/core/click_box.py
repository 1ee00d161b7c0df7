"""A target box from two clicks on the node's debug image (``rqt_image_view`` publishes each left click
on an image topic as a ``geometry_msgs/Point`` in image pixels on ``<topic>_mouse_left``).

The debug image shows the RGB frame and the thermal frame (on the RGB pixel grid) side by side, so a
click at ``x >= rgb_width`` lies on the thermal half and means ``x - rgb_width`` in RGB pixels. The first
click is one corner, the second the opposite corner; a first click older than ``timeout_s`` is
forgotten (a stray click must not pair with one made minutes later).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

CLICK_TIMEOUT_S = 10.0


@dataclass
class TwoClickBox:
    timeout_s: float = CLICK_TIMEOUT_S
    _first: Optional[tuple[float, float, float]] = None   # (x, y, time) of the pending corner

    def click(self, x: float, y: float, now_s: float, rgb_width: int) -> Optional[tuple[float, float, float, float]]:
        """Feed one click (debug-image pixels); the box (x, y, w, h) in RGB pixels once two clicks made one,
        else None. Non-finite clicks raise ValueError and leave a pending corner as it was."""
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f'click at ({x}, {y}) is not a pixel position')
        if rgb_width > 0 and x >= rgb_width:
            x -= rgb_width   # the thermal half shows the same pixel grid
        first = self._first
        if first is None or now_s - first[2] > self.timeout_s or now_s < first[2]:
            self._first = (x, y, now_s)
            return None
        self._first = None
        x0, y0 = min(first[0], x), min(first[1], y)
        return (x0, y0, abs(x - first[0]), abs(y - first[1]))

    @property
    def pending(self) -> bool:
        return self._first is not None

    def clear(self) -> None:
        self._first = None
