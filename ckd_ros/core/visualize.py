"""Drawing of tracking results: the node's debug image and the demo video share this one view.

The RGB frame with the predicted box and score (and, when given, the ground-truth box), the thermal
frame beside it with the same boxes.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

TRACKING_COLOUR = (0, 255, 0)    # RGB order
LOST_COLOUR = (255, 160, 0)
GROUND_TRUTH_COLOUR = (255, 0, 255)
TEXT_COLOUR = (255, 255, 255)


def _valid_box(box) -> bool:
    return box is not None and len(box) == 4 and bool(np.all(np.isfinite(np.asarray(box, dtype=float))))


def compose_debug_image(rgb: np.ndarray, thermal: np.ndarray, box: Optional[tuple], score: float,
                        lost: bool, label: str = '', gt_box: Optional[tuple] = None) -> np.ndarray:
    """H x 2W x 3 uint8 RGB: ``rgb`` with ``box`` (x, y, w, h) drawn, and ``thermal`` (already on the RGB
    pixel grid; H x W or H x W x 3) with the same box, side by side. ``gt_box`` is drawn thinner in magenta."""
    height, width = rgb.shape[:2]
    if thermal.ndim == 2:
        thermal = np.repeat(thermal[:, :, None], 3, axis=2)
    if thermal.shape[:2] != (height, width):
        thermal = cv2.resize(thermal, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas = np.ascontiguousarray(np.concatenate([rgb, thermal], axis=1))
    thickness = max(1, round(min(height, width) / 200))
    scale = max(0.35, min(height, width) / 600)
    if _valid_box(gt_box):
        x, y, w, h = (int(round(v)) for v in gt_box)
        for offset in (0, width):
            cv2.rectangle(canvas, (x + offset, y), (x + w + offset, y + h), GROUND_TRUTH_COLOUR, max(1, thickness - 1))
    if _valid_box(box):
        x, y, w, h = (int(round(v)) for v in box)
        colour = LOST_COLOUR if lost else TRACKING_COLOUR
        for offset in (0, width):
            cv2.rectangle(canvas, (x + offset, y), (x + w + offset, y + h), colour, thickness)
        text = f'{"LOST " if lost else ""}{score:.2f}' if np.isfinite(score) else ('LOST' if lost else '')
        cv2.putText(canvas, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness,
                    cv2.LINE_AA)
    if label:
        cv2.putText(canvas, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return canvas
