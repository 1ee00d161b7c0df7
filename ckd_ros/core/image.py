"""Image-message-like buffers to arrays, thermal gain control and thermal-to-RGB registration.

ROS-free: the functions take the fields of a ``sensor_msgs/Image`` (height, width, encoding,
is_bigendian, step, data) rather than the message, so that bag tools, tests and the node share them
and nothing here imports rclpy.  Conventions (see ``docs/ros_notes.md`` sec. 3.4):

* :func:`decode_image_buffer` is the ``passthrough`` conversion of cv_bridge: native dtype
  (``mono16``/``16UC1`` -> ``uint16``, ``32FC1`` -> ``float32``), row padding (``step``) removed,
  big-endian data byte-swapped, H x W for one channel and H x W x C otherwise.  The result owns its
  memory (the message buffer may be reused by the middleware).
* The tracker wants H x W x 3 ``uint8`` RGB for both modalities (the official tracker reads the TIR
  frame as a 3-channel RGB-ordered image).  16-bit and float thermal is mapped to 8 bit by
  :class:`ThermalGainControl` (cv_bridge's fixed ``/257`` scaling makes raw radiometric counts an
  almost uniform grey), then replicated to 3 channels.
* :class:`ThermalRegistration` maps the thermal frame onto the RGB frame's pixel grid (same size,
  plain resize, or a 3 x 3 homography from thermal to RGB pixel coordinates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An image buffer cannot be converted: unsupported encoding, inconsistent sizes, no usable pixel."""


@dataclass(frozen=True)
class EncodingInfo:
    dtype: np.dtype   # element type in native byte order
    channels: int


# The encodings this package reads and writes (names from sensor_msgs/image_encodings.hpp).
ENCODINGS: dict[str, EncodingInfo] = {
    'rgb8': EncodingInfo(np.dtype(np.uint8), 3),
    'bgr8': EncodingInfo(np.dtype(np.uint8), 3),
    'rgba8': EncodingInfo(np.dtype(np.uint8), 4),
    'bgra8': EncodingInfo(np.dtype(np.uint8), 4),
    'mono8': EncodingInfo(np.dtype(np.uint8), 1),
    '8UC1': EncodingInfo(np.dtype(np.uint8), 1),
    'mono16': EncodingInfo(np.dtype(np.uint16), 1),
    '16UC1': EncodingInfo(np.dtype(np.uint16), 1),
    '32FC1': EncodingInfo(np.dtype(np.float32), 1),
}

# What each input accepts (the node rejects anything else with a message that lists these).
RGB_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
THERMAL_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1', '32FC1', 'rgb8', 'bgr8')

GAIN_MODES = ('minmax', 'percentile', 'fixed')
# The one default of the node, ckd-eval and training. Not 'percentile' (1..99): a hot target smaller than
# 1 % of the frame (a person or a drone at range) is clipped to white together with the brightest
# background, and the tracker lost it within ~45 frames that minmax tracks within 3 px
# (test_thermal_gain_default.py). minmax's weakness, a stuck hot pixel, is a camera fault the node's
# user can answer with 'percentile' and a percentile_high close to 100 or with 'fixed'.
DEFAULT_GAIN_MODE = 'minmax'
REGISTRATION_MODES = ('identity', 'resize', 'homography')


def decode_image_buffer(height: int, width: int, encoding: str, is_bigendian: int | bool, step: int,
                        data) -> np.ndarray:
    """Decode the fields of an image message into a numpy array of the encoding's native dtype.

    ``data`` is anything that exposes a byte buffer (``bytes``, ``array.array('B')`` as rclpy gives,
    ``memoryview``, a uint8 numpy array) or a sequence of byte values.  Raises
    :class:`ImageConversionError` for an unknown encoding, non-positive sizes, a ``step`` shorter
    than a row, or a data length other than ``step * height``.
    """
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageConversionError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image size must be positive, got {width}x{height} ({encoding})')
    row_bytes = width * info.channels * info.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} bytes)')
    raw = _as_byte_array(data)
    if raw.size != step * height:
        raise ImageConversionError(
            f'data length {raw.size} does not match step*height = {step}*{height} = {step * height} '
            f'({width}x{height} {encoding})')
    rows = raw.reshape(height, step)[:, :row_bytes]
    # Copy first: the row slice skips the padding, and the result must own its memory (the
    # middleware may reuse the message buffer). astype then byte-swaps only big-endian data.
    stored = rows.copy().view(info.dtype.newbyteorder('>' if is_bigendian else '<'))
    array = stored.astype(info.dtype, copy=False)
    if info.channels == 1:
        return array.reshape(height, width)
    return array.reshape(height, width, info.channels)


def _as_byte_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError(f'image data must be bytes (uint8), got a {data.dtype} array')
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    except TypeError:
        # A plain sequence of byte values (e.g. a list from a YAML/JSON dump).
        values = np.asarray(data)
        if values.ndim != 1 or (values.size and (values.min() < 0 or values.max() > 255)):
            raise ImageConversionError('image data must be a byte buffer or a flat sequence of 0..255')
        return values.astype(np.uint8)


@dataclass(frozen=True)
class EncodedImage:
    """The fields of an image message for an array (``is_bigendian`` is 0: the host is little-endian)."""
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def encode_image_buffer(array: np.ndarray, encoding: str) -> EncodedImage:
    """The inverse of :func:`decode_image_buffer` (no row padding, little-endian data)."""
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageConversionError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
    array = np.asarray(array)
    expected_ndim = 2 if info.channels == 1 else 3
    if array.ndim == 3 and info.channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (expected_ndim == 3 and array.shape[2] != info.channels):
        raise ImageConversionError(
            f'{encoding} needs an array of shape (H, W{"" if info.channels == 1 else f", {info.channels}"}), '
            f'got {array.shape}')
    if array.dtype != info.dtype:
        raise ImageConversionError(f'{encoding} needs dtype {info.dtype}, got {array.dtype}')
    height, width = array.shape[:2]
    little = np.ascontiguousarray(array, dtype=info.dtype.newbyteorder('<'))
    return EncodedImage(height=height, width=width, encoding=encoding, is_bigendian=0,
                        step=width * info.channels * info.dtype.itemsize, data=little.tobytes())


def rgb_image_to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded RGB-camera image as H x W x 3 uint8 RGB (the tracker's input)."""
    if encoding not in RGB_ENCODINGS:
        raise ImageConversionError(
            f"RGB image encoding '{encoding}' is not supported (supported: {', '.join(RGB_ENCODINGS)})")
    return _eight_bit_to_rgb8(array, encoding)


_TO_RGB = {'mono8': cv2.COLOR_GRAY2RGB, '8UC1': cv2.COLOR_GRAY2RGB, 'bgr8': cv2.COLOR_BGR2RGB,
           'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB}


def _eight_bit_to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == 'rgb8':
        return array
    code = _TO_RGB.get(encoding)
    if code is None:
        raise ImageConversionError(f"'{encoding}' is not an 8-bit image encoding")
    return cv2.cvtColor(array, code)   # several times faster than numpy's strided copies


@dataclass(frozen=True)
class ThermalFrame:
    """A thermal frame ready for the tracker, and what the conversion did (for diagnostics)."""
    image: np.ndarray            # H x W x 3 uint8, RGB order (three equal channels for mono input)
    low: float                   # raw value mapped to 0 (NaN for 8-bit input, which passes through)
    high: float                  # raw value mapped to 255
    nonfinite_pixels: int        # NaN/inf pixels of float input, written as 0


class ThermalGainControl:
    """Maps 16-bit or float thermal images to 8 bit with a linear gain chosen per frame.

    Modes: ``minmax`` (the frame's finite minimum and maximum), ``percentile`` (``percentile_low``
    and ``percentile_high`` of the finite pixels: robust to a few hot or dead pixels), ``fixed``
    (``fixed_min``/``fixed_max`` in raw units: stable brightness for radiometric cameras).  With
    ``smoothing`` in (0, 1) the per-frame range is low-pass filtered over time
    (``range = smoothing * previous + (1 - smoothing) * current``), which removes the flicker
    automatic ranges show when a hot object enters the view.  A frame whose range is of another order
    of magnitude than the smoothed one (more than :data:`RANGE_RESET_FACTOR` times larger or smaller,
    e.g. one float frame holding +-3.4e38, or the normal frame after it) is not blended in: smoothing
    restarts from that frame's own range, so one outlier changes one frame instead of dragging the
    mapping for hundreds.  NaN/inf pixels (32FC1) are excluded from the range and written as 0; a
    frame without any finite pixel raises.
    """

    def __init__(self, mode: str = DEFAULT_GAIN_MODE, percentile_low: float = 1.0, percentile_high: float = 99.0,
                 fixed_min: float = 0.0, fixed_max: float = 65535.0, smoothing: float = 0.0):
        if mode not in GAIN_MODES:
            raise ValueError(f"thermal gain mode '{mode}' is not one of {', '.join(GAIN_MODES)}")
        if not (0.0 <= percentile_low < percentile_high <= 100.0):
            raise ValueError(f'percentiles need 0 <= low < high <= 100, got low={percentile_low}, '
                             f'high={percentile_high}')
        if not (math.isfinite(fixed_min) and math.isfinite(fixed_max) and fixed_min < fixed_max):
            raise ValueError(f'fixed range needs finite min < max, got min={fixed_min}, max={fixed_max}')
        if not (0.0 <= smoothing < 1.0):
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        self.mode = mode
        self.percentile_low = float(percentile_low)
        self.percentile_high = float(percentile_high)
        self.fixed_min = float(fixed_min)
        self.fixed_max = float(fixed_max)
        self.smoothing = float(smoothing)
        self._previous_range: Optional[tuple[float, float]] = None

    def reset(self) -> None:
        """Forget the smoothed range (call when the stream restarts)."""
        self._previous_range = None

    def __call__(self, raw: np.ndarray) -> ThermalFrame:
        """Map one H x W raw frame (uint16 or float) to an 8-bit H x W x 3 RGB frame."""
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise ImageConversionError(f'thermal gain control needs a single-channel image, got shape {raw.shape}')
        if raw.dtype == np.uint16:
            # 16-bit: the range from a histogram and the mapping as a 65536-entry lookup table give the
            # float path's result several times faster (no per-pixel float arithmetic).
            low, high = self._smoothed(*self._uint16_range(raw))
            eight_bit = self._map(np.arange(65536, dtype=np.float32), low, high)[raw]
            nonfinite = 0
        else:
            values = raw.astype(np.float32, copy=False)
            finite = np.isfinite(values)
            nonfinite = int(values.size - np.count_nonzero(finite))
            if nonfinite == values.size:
                raise ImageConversionError('thermal image has no finite pixel (all NaN/inf)')
            low, high = self._smoothed(*self._frame_range(values[finite] if nonfinite else values.reshape(-1)))
            eight_bit = self._map(values, low, high)
            if nonfinite:
                eight_bit[~finite] = 0
        return ThermalFrame(image=cv2.cvtColor(eight_bit, cv2.COLOR_GRAY2RGB), low=float(low), high=float(high),
                            nonfinite_pixels=nonfinite)

    def _smoothed(self, low: float, high: float) -> tuple[float, float]:
        if self.smoothing > 0.0 and self._previous_range is not None \
                and not _ranges_apart(self._previous_range, (low, high)):
            previous_low, previous_high = self._previous_range
            low = self.smoothing * previous_low + (1.0 - self.smoothing) * low
            high = self.smoothing * previous_high + (1.0 - self.smoothing) * high
        self._previous_range = (low, high)
        return low, high

    @staticmethod
    def _map(values: np.ndarray, low: float, high: float) -> np.ndarray:
        """``values`` (float32) linearly to 0..255 (rounded, clipped); NaN becomes 0."""
        if high > low:
            with np.errstate(over='ignore', invalid='ignore'):   # a +-3.4e38 range: inf, then clipped
                scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
        else:
            # A flat frame (or flat range): everything above the level is white, the rest black.
            scaled = np.where(values > low, np.float32(255.0), np.float32(0.0))
        np.clip(scaled, 0.0, 255.0, out=scaled)
        return np.nan_to_num(np.rint(scaled), nan=0.0).astype(np.uint8)

    def _frame_range(self, finite_values: np.ndarray) -> tuple[float, float]:
        if self.mode == 'fixed':
            return self.fixed_min, self.fixed_max
        if self.mode == 'minmax':
            return float(finite_values.min()), float(finite_values.max())
        low, high = np.percentile(finite_values, [self.percentile_low, self.percentile_high])
        return float(low), float(high)

    def _uint16_range(self, raw: np.ndarray) -> tuple[float, float]:
        if self.mode != 'percentile':
            return self._frame_range(raw)
        # numpy's 'linear' percentile from the histogram: the order statistics at floor/ceil of
        # (n - 1) * q / 100, interpolated.
        cumulative = np.cumsum(np.bincount(raw.ravel(), minlength=65536))
        n = int(cumulative[-1])
        result = []
        for q in (self.percentile_low, self.percentile_high):
            position = (n - 1) * q / 100.0
            lower = math.floor(position)
            below, above = np.searchsorted(cumulative, [lower, min(lower + 1, n - 1)], side='right')
            result.append(float(below) + (float(above) - float(below)) * (position - lower))
        return result[0], result[1]


# How far apart (a factor, either way) the magnitudes of a frame's range and the smoothed range may be before
# ThermalGainControl restarts the smoothing instead of blending: real scenes change their range by a few
# times (a hot object entering), a corrupt float frame by 1e30 and more.
RANGE_RESET_FACTOR = 1000.0


def _range_magnitude(low: float, high: float) -> float:
    """The scale of a gain range: its span or its levels, whichever is larger (at least 1 raw unit, so that a
    flat zero frame is no zero scale)."""
    return max(high - low, abs(low), abs(high), 1.0)


def _ranges_apart(previous: tuple[float, float], current: tuple[float, float]) -> bool:
    """Whether two gain ranges are of different orders of magnitude (or one is not finite): blending them
    would hold the mapping at neither for many frames."""
    if not all(math.isfinite(v) for v in (*previous, *current)):
        return True
    a, b = _range_magnitude(*previous), _range_magnitude(*current)
    return max(a, b) > RANGE_RESET_FACTOR * min(a, b)


def thermal_image_to_rgb8(array: np.ndarray, encoding: str, gain: ThermalGainControl) -> ThermalFrame:
    """A decoded thermal image as H x W x 3 uint8 RGB: 8-bit input passes through (grey replicated to 3
    channels, BGR swapped), 16-bit and float input goes through ``gain``."""
    if encoding not in THERMAL_ENCODINGS:
        raise ImageConversionError(
            f"thermal image encoding '{encoding}' is not supported "
            f"(supported: {', '.join(THERMAL_ENCODINGS)})")
    if encoding in ('mono16', '16UC1', '32FC1'):
        return gain(array)
    return ThermalFrame(image=_eight_bit_to_rgb8(array, encoding), low=math.nan, high=math.nan,
                        nonfinite_pixels=0)


def parse_homography(values: Sequence[float]) -> np.ndarray:
    """A 3 x 3 homography from 9 row-major numbers, normalised so that H[2, 2] = 1.

    Raises ValueError naming the problem for a wrong count, non-finite entries, or a singular matrix.
    """
    flat = [float(v) for v in values]
    if len(flat) != 9:
        raise ValueError(f'a homography needs 9 numbers (row-major 3x3), got {len(flat)}')
    if not all(math.isfinite(v) for v in flat):
        raise ValueError(f'homography entries must be finite, got {flat}')
    matrix = np.array(flat, dtype=np.float64).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-12 * max(1.0, float(np.abs(matrix).max()) ** 3):
        raise ValueError(f'homography {flat} is singular (determinant ~ 0)')
    if abs(matrix[2, 2]) > 1e-12:
        matrix = matrix / matrix[2, 2]
    return matrix


class ThermalRegistration:
    """Maps a thermal frame onto the RGB frame's pixel grid.

    ``identity``: the two cameras share the pixel grid; a size mismatch is an error.
    ``resize``: the thermal frame covers the same view; it is scaled to the RGB size.
    ``homography``: ``homography`` (3 x 3, thermal pixel -> RGB pixel, e.g. from a calibration) warps
    it; RGB pixels the thermal camera does not see become 0.
    """

    def __init__(self, mode: str = 'resize', homography: Optional[Sequence[float]] = None):
        if mode not in REGISTRATION_MODES:
            raise ValueError(f"thermal registration mode '{mode}' is not one of {', '.join(REGISTRATION_MODES)}")
        self.mode = mode
        self.homography = parse_homography(homography if homography is not None else np.eye(3).ravel())

    def __call__(self, thermal: np.ndarray, rgb_height: int, rgb_width: int) -> np.ndarray:
        thermal_height, thermal_width = thermal.shape[:2]
        if self.mode == 'homography':
            return cv2.warpPerspective(thermal, self.homography, (rgb_width, rgb_height), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if (thermal_height, thermal_width) == (rgb_height, rgb_width):
            return thermal
        if self.mode == 'identity':
            raise ImageConversionError(
                f'thermal image is {thermal_width}x{thermal_height} but the RGB image is {rgb_width}x{rgb_height}; '
                "registration 'identity' needs equal sizes (use 'resize' or 'homography')")
        return cv2.resize(thermal, (rgb_width, rgb_height), interpolation=cv2.INTER_LINEAR)

    def aspect_warning(self, thermal_height: int, thermal_width: int, rgb_height: int,
                       rgb_width: int, tolerance: float = 0.05) -> Optional[str]:
        """A message when ``resize`` would distort the thermal frame (aspect ratios differ)."""
        if self.mode != 'resize':
            return None
        thermal_aspect, rgb_aspect = thermal_width / thermal_height, rgb_width / rgb_height
        if abs(thermal_aspect / rgb_aspect - 1.0) <= tolerance:
            return None
        return (f'thermal aspect ratio {thermal_aspect:.3f} ({thermal_width}x{thermal_height}) differs from RGB '
                f'{rgb_aspect:.3f} ({rgb_width}x{rgb_height}): resize distorts it; set a homography')
