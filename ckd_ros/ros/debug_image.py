"""The annotated debug view: the RGB frame with the target box and score, the thermal frame beside it."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

TRACKING_COLOUR = (0, 255, 0)    # RGB order
LOST_COLOUR = (255, 160, 0)
TEXT_COLOUR = (255, 255, 255)


def compose_debug_image(rgb: np.ndarray, thermal: np.ndarray, box: Optional[tuple], score: float,
                        lost: bool, label: str = '') -> np.ndarray:
    """H x 2W x 3 uint8 RGB: ``rgb`` with ``box`` (x, y, w, h) drawn, and ``thermal`` (already on the RGB
    pixel grid) with the same box, side by side."""
    height, width = rgb.shape[:2]
    if thermal.shape[:2] != (height, width):
        thermal = cv2.resize(thermal, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas = np.concatenate([rgb, thermal], axis=1)
    thickness = max(1, round(min(height, width) / 200))
    scale = max(0.35, min(height, width) / 600)
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        colour = LOST_COLOUR if lost else TRACKING_COLOUR
        for offset in (0, width):
            cv2.rectangle(canvas, (x + offset, y), (x + w + offset, y + h), colour, thickness)
        text = f'{"LOST " if lost else ""}{score:.2f}'
        cv2.putText(canvas, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness,
                    cv2.LINE_AA)
    if label:
        cv2.putText(canvas, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return canvas
