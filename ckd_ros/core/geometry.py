"""Crop placement, box mapping and clipping of the official tracker (OSTrack ``sample_target``,
``map_box_back``, ``clip_box``, ``hann2d``), reproduced to the letter, quirks included.

Boxes are ``(x, y, w, h)`` in pixels of the full frame, x/y the top-left corner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class CropWindow:
    """A square crop of side ``size`` with its top-left corner at ``(x1, y1)`` (may lie outside the
    image) and the zero padding added on each side (``pad_right``/``pad_bottom`` include the
    official +1 quirk, see :func:`crop_window`)."""
    x1: int
    y1: int
    size: int
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int

    @property
    def x2(self) -> int:
        return self.x1 + self.size

    @property
    def y2(self) -> int:
        return self.y1 + self.size


def validate_box(box: Sequence[float], name: str = 'box') -> tuple[float, float, float, float]:
    """``box`` as 4 finite floats with positive width and height, else ValueError."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be 4 numbers (x, y, w, h), got {box!r}') from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f'{name} must be 4 finite numbers (x, y, w, h), got {box!r}')
    if values[2] <= 0 or values[3] <= 0:
        raise ValueError(f'{name} must have positive width and height, got {box!r}')
    return values


def crop_window(box: Sequence[float], factor: float, image_height: int, image_width: int) -> CropWindow:
    """Placement of the square crop around ``box`` (official ``sample_target``).

    ``size = ceil(sqrt(w*h) * factor)``; ``x1 = round(x + w/2 - size/2)`` with Python's ``round``
    (half to even); ``x2 = x1 + size``.  Padding: ``pad_left = max(0, -x1)``,
    ``pad_right = max(x2 - W + 1, 0)``: the official +1 means that a crop touching or passing the
    right (bottom) edge drops the last image column (row) and pads one more zero column (row).
    """
    x, y, w, h = validate_box(box)
    size = math.ceil(math.sqrt(w * h) * factor)
    if size < 1:
        raise ValueError(f'box {tuple(box)} is too small for a crop (factor {factor})')
    x1 = round(x + 0.5 * w - size * 0.5)
    y1 = round(y + 0.5 * h - size * 0.5)
    return CropWindow(x1=x1, y1=y1, size=size,
                      pad_left=max(0, -x1), pad_top=max(0, -y1),
                      pad_right=max(x1 + size - image_width + 1, 0), pad_bottom=max(y1 + size - image_height + 1, 0))


#: Largest zero-padded crop (bytes) that :func:`sample_target` builds as the official code does; a larger
#: one (a full-frame box on an 8192x8192 frame pads to 32768x32768, 3 GiB for RGB) is resampled without
#: being built, see :func:`_resize_padded_bounded`.
PADDED_CROP_MAX_BYTES = 64 * 2**20

_COEF_BITS = 11   # OpenCV's INTER_RESIZE_COEF_BITS: fixed-point weights of 8-bit INTER_LINEAR resizing
_COEF_SCALE = 1 << _COEF_BITS


def sample_target(image: np.ndarray, box: Sequence[float], factor: float, output_size: int, *,
                  max_padded_bytes: int = PADDED_CROP_MAX_BYTES) -> tuple[np.ndarray, float]:
    """Crop ``image`` (H, W, C) or (H, W) around ``box``, zero-pad, resize (cv2 INTER_LINEAR) to
    ``output_size``; returns the crop and ``resize_factor = output_size / crop size``.

    Same pixels as the official function (which also builds a padding mask that the network never
    uses; it is not computed here) whenever the crop needs no padding (``image`` is resized through a
    view) or the zero-padded crop takes at most ``max_padded_bytes`` (64 MiB by default: a 4729-pixel
    RGB crop).  A larger padded crop (a full-frame box on an 8192x8192 RGB frame: 3 GiB) is never
    built; :func:`_resize_padded_bounded` gathers only the pixels that the resize reads and combines
    them with cv2's arithmetic, in O(``output_size``**2) memory.  For uint8 images shrunk to the
    output (the only way to get there with the tracker's sizes) the result equals cv2's bit for bit in
    every case tested (crops of 20 to 20011 pixels); enlarging can differ by 1 grey level; float32
    agrees within 3e-5 when shrinking by 12x or more, within 1e-2 on 0..255 values near scale 1.
    """
    height, width = image.shape[:2]
    win = crop_window(box, factor, height, width)
    top, bottom = win.y1 + win.pad_top, win.y2 - win.pad_bottom
    left, right = win.x1 + win.pad_left, win.x2 - win.pad_right
    if bottom <= top or right <= left or bottom <= 0 or right <= 0:
        raise ValueError(f'the crop around box {tuple(box)} does not overlap the {width}x{height} image')
    crop = image[top:bottom, left:right]   # a view: no copy
    if win.pad_top or win.pad_bottom or win.pad_left or win.pad_right:
        channels = image.shape[2] if image.ndim == 3 else 1
        if win.size * win.size * channels * image.itemsize > max_padded_bytes:
            return _resize_padded_bounded(image, win, top, bottom, left, right, output_size), output_size / win.size
        crop = cv2.copyMakeBorder(crop, win.pad_top, win.pad_bottom, win.pad_left, win.pad_right,
                                  cv2.BORDER_CONSTANT)
    patch = cv2.resize(crop, (output_size, output_size))
    if image.ndim == 3 and patch.ndim == 2:  # cv2 drops a trailing channel axis of 1
        patch = patch[:, :, None]
    return patch, output_size / win.size


def _linear_taps(output_size: int, source_size: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2 ``INTER_LINEAR`` along one axis: for each output index the first source index ``s`` (the
    second is ``s + 1``) and the float32 weight ``f`` of the second, computed as OpenCV's ``resize``
    does (``f = float((d + 0.5) * scale - 0.5)``, clamped to the first and last source pixel)."""
    scale = 1.0 / (output_size / source_size)   # cv2: inv_scale = dsize / ssize, scale = 1 / inv_scale
    f = ((np.arange(output_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)
    clamped = (s < 0) | (s >= source_size - 1)
    s = np.clip(s, 0, source_size - 1)
    f[clamped] = 0
    return s, f


def _resize_padded_bounded(image: np.ndarray, win: CropWindow, top: int, bottom: int, left: int, right: int,
                           output_size: int) -> np.ndarray:
    """``cv2.resize(copyMakeBorder(image[top:bottom, left:right], pads...), (out, out))`` without the
    padded crop: bilinear resampling reads at most 2 rows and 2 columns per output row and column, so
    those (at most (2 out)^2 pixels) are gathered from ``image`` (zero where the padded crop is padding)
    and combined as OpenCV's ``resize`` does.  uint8: weights ``round(w * 2048)``, integer row sums,
    and cv2's vectorised vertical step ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2``
    (the scalar formula ``(b0 * r0 + b1 * r1 + 2**21) >> 22`` differs in ~12% of pixels, cv2 uses the
    vectorised one for whole rows).  Other types: float weights, float32 arithmetic for float32
    images, float64 (rounded and saturated for integers) otherwise.
    """
    size = win.size
    rows, fy = _linear_taps(output_size, size)
    cols, fx = _linear_taps(output_size, size)
    # padded-crop index p is frame index x1 + p (y1 + p); inside the image part iff top <= y1 + p < bottom
    row_taps = np.concatenate([rows, np.minimum(rows + 1, size - 1)]) + win.y1
    col_taps = np.concatenate([cols, np.minimum(cols + 1, size - 1)]) + win.x1
    row_ok = (row_taps >= top) & (row_taps < bottom)
    col_ok = (col_taps >= left) & (col_taps < right)
    src = image if image.ndim == 3 else image[:, :, None]
    taps = src[np.ix_(np.clip(row_taps, top, bottom - 1), np.clip(col_taps, left, right - 1))]
    integer = image.dtype == np.uint8
    work = np.int64 if integer else (np.float32 if image.dtype == np.float32 else np.float64)
    taps = taps.astype(work)
    taps[~row_ok] = 0
    taps[:, ~col_ok] = 0

    def weights(f):
        w0, w1 = np.float32(1) - f, f
        if integer:   # cv2: saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE), round half to even
            scale = np.float32(_COEF_SCALE)
            return np.rint(w0 * scale).astype(work), np.rint(w1 * scale).astype(work)
        return w0.astype(work), w1.astype(work)

    a0, a1 = weights(fx)
    b0, b1 = weights(fy)
    n = output_size
    horizontal = taps[:, :n] * a0[None, :, None] + taps[:, n:] * a1[None, :, None]   # (2n, n, C)
    b0, b1 = b0[:, None, None], b1[:, None, None]
    if integer:   # cv2's vectorised VResizeLinear: 16-bit high products, then a rounding shift by 2
        out = ((((horizontal[:n] >> 4) * b0) >> 16) + (((horizontal[n:] >> 4) * b1) >> 16) + 2) >> 2
        out = np.clip(out, 0, 255)
    else:
        out = horizontal[:n] * b0 + horizontal[n:] * b1    # (n, n, C)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(image.dtype)
    return out if image.ndim == 3 else out[:, :, 0]


def map_box_back(pred_box: Sequence[float], previous_box: Sequence[float], search_size: int,
                 resize_factor: float) -> list[float]:
    """Official ``map_box_back``: a (cx, cy, w, h) box in crop pixels (already divided by
    ``resize_factor``) -> (x, y, w, h) in the frame, relative to the previous box centre.

    ``cx' = cx + (cx_prev - half)`` with ``half = 0.5 * search_size / resize_factor``; this ignores
    the rounding of the crop corner, exactly like the official tracker.
    """
    cx_prev = previous_box[0] + 0.5 * previous_box[2]
    cy_prev = previous_box[1] + 0.5 * previous_box[3]
    cx, cy, w, h = pred_box
    half_side = 0.5 * search_size / resize_factor
    cx_real = cx + (cx_prev - half_side)
    cy_real = cy + (cy_prev - half_side)
    return [cx_real - 0.5 * w, cy_real - 0.5 * h, w, h]


def clip_box(box: Sequence[float], height: int, width: int, margin: float = 0) -> list[float]:
    """Official ``clip_box``: keep at least ``margin`` pixels of the box inside the frame.

    ``x2 = x1 + w`` from the unclamped box; ``x1 := min(max(0, x1), W - margin)``,
    ``x2 := min(max(margin, x2), W)``, ``w = max(margin, x2 - x1)``; same for y.

    A box with a NaN or infinite value raises ValueError: the official min/max chain would turn NaN
    into ``(0, 0, margin, margin)`` (Python's ``max(0, nan)`` is 0) and inf into a margin-sized box at
    the frame edge, i.e. a garbage network output would come out as a plausible box.  Callers (the
    tracker) check the network output first and keep their last good box.
    """
    x1, y1, w, h = box
    if not all(math.isfinite(v) for v in (x1, y1, w, h)):
        raise ValueError(f'cannot clip a non-finite box {tuple(box)} (the network output was NaN or infinite)')
    x2, y2 = x1 + w, y1 + h
    x1 = min(max(0, x1), width - margin)
    x2 = min(max(margin, x2), width)
    y1 = min(max(0, y1), height - margin)
    y2 = min(max(margin, y2), height)
    w = max(margin, x2 - x1)
    h = max(margin, y2 - y1)
    return [x1, y1, w, h]


def hann1d(size: int) -> torch.Tensor:
    """``0.5 * (1 - cos(2 pi k / (size + 1)))`` for k = 1..size (never 0 at the border; float32)."""
    return 0.5 * (1 - torch.cos((2 * math.pi / (size + 1)) * torch.arange(1, size + 1).float()))


def hann2d(size: int) -> torch.Tensor:
    """(1, 1, size, size) outer product of :func:`hann1d`, the tracker's output window."""
    w = hann1d(size)
    return w.reshape(1, 1, -1, 1) * w.reshape(1, 1, 1, -1)
