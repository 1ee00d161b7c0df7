"""What every tracker of this package shares, without torch: the per-frame result and the checks of
its input frames (:class:`ckd_ros.core.tracker.CKDTracker` and the OpenCV baselines of
:mod:`ckd_ros.core.baselines`, so that ``ckd-eval run`` and ``make demo`` drive both alike)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRACKING = 'TRACKING'
LOST = 'LOST'


@dataclass(frozen=True)
class TrackResult:
    """One frame's result: ``box`` = (x, y, w, h) floats in frame pixels, ``score`` in [0, 1]
    (1.0 for the initial box), ``state`` ``"TRACKING"`` or ``"LOST"``, ``frame_index`` (0 = init).

    ``error`` is None for a normal result.  When the network output of the frame was not finite it
    says so; the result then carries the last good box (the tracker's unchanged state), ``score``
    NaN and state ``"LOST"``, and :attr:`valid` is False.  (A field with a default, so results built
    with the four fields alone stay valid.)"""
    box: tuple[float, float, float, float]
    score: float
    state: str
    frame_index: int
    error: str | None = None

    @property
    def valid(self) -> bool:
        """False when the frame's network output was NaN/inf (see ``error``)."""
        return self.error is None


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an HxWx3 uint8 RGB array, got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    return rgb


def check_thermal(thermal: np.ndarray, height: int, width: int) -> np.ndarray:
    """Thermal frame as HxW (one channel; expanded to 3 after cropping) or HxWx3 uint8."""
    if not isinstance(thermal, np.ndarray) or thermal.dtype != np.uint8:
        raise ValueError(f"thermal must be a uint8 array (convert 16-bit thermal to 8 bits first), got "
                         f"{getattr(thermal, 'dtype', type(thermal).__name__)}")
    if thermal.ndim == 3 and thermal.shape[2] == 1:
        thermal = thermal[:, :, 0]
    if not (thermal.ndim == 2 or (thermal.ndim == 3 and thermal.shape[2] == 3)):
        raise ValueError(f'thermal must be HxW, HxWx1 or HxWx3, got shape {thermal.shape}')
    if thermal.shape[:2] != (height, width):
        raise ValueError(f'thermal frame {thermal.shape[1]}x{thermal.shape[0]} and RGB frame {width}x{height} differ '
                         'in size; register them to one geometry first (both are cropped with the same box)')
    return thermal
