"""Messages <-> arrays for the tracker node: images, the target box, detections, init boxes.

Images use cv_bridge's ``passthrough`` conversion when cv_bridge imports (a ROS install), otherwise
:func:`ckd_ros.core.image.decode_image_buffer` (same result: native dtype, padding removed,
big-endian swapped).  Both paths first check the message's fields with the core function's rules, so
a bad message gives the same clear error either way.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from ckd_ros.core.image import ENCODINGS, ImageConversionError, decode_image_buffer, encode_image_buffer


def _probe_cv_bridge():
    """``(CvBridge(), '')`` when cv_bridge imports AND converts a tiny image, else ``(None, why)``.

    Constructing a CvBridge proves nothing: cv_bridge's ``__init__`` swallows the ImportError of its
    compiled module (``No module named 'cv_bridge.boost'``, e.g. a system cv_bridge built for numpy 1.x
    beside numpy 2), and then every conversion fails. So one 2x2 mono8 image is converted here.
    """
    try:  # optional: part of a ROS install, not on PyPI
        from cv_bridge import CvBridge
    except ModuleNotFoundError as error:
        if error.name == 'cv_bridge':
            return None, ''   # not installed: nothing to report
        return None, f'cv_bridge does not import ({error}); using the in-package conversion'
    except Exception as error:   # e.g. the numpy-ABI failure of a mismatched build
        return None, f'cv_bridge does not import ({type(error).__name__}: {error}); using the in-package conversion'
    try:
        bridge = CvBridge()
        probe = Image(height=2, width=2, encoding='mono8', is_bigendian=0, step=2)
        probe.data = bytes([0, 1, 2, 3])
        pixels = np.asarray(bridge.imgmsg_to_cv2(probe, desired_encoding='passthrough'))
        if pixels.shape != (2, 2) or pixels.tolist() != [[0, 1], [2, 3]]:
            raise ValueError(f'converted a 2x2 mono8 test image to {pixels.shape} {pixels.tolist()}')
    except Exception as error:  # ImportError of cv_bridge.boost, numpy ABI errors, CvBridgeError
        return None, (f'cv_bridge is installed but cannot convert images ({type(error).__name__}: {error}); '
                      'using the in-package conversion')
    return bridge, ''


# CV_BRIDGE_PROBLEM: why an installed cv_bridge is not used ('' when it is used or not installed)
_CV_BRIDGE, CV_BRIDGE_PROBLEM = _probe_cv_bridge()

try:  # optional: vision_msgs is not on PyPI
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:
    Detection2DArray = None

IMAGE_BACKEND = 'cv_bridge' if _CV_BRIDGE is not None else 'ckd_ros.core.image'
DETECTIONS_AVAILABLE = Detection2DArray is not None


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> Time:
    return Time(sec=int(nanoseconds // 1_000_000_000), nanosec=int(nanoseconds % 1_000_000_000))


def image_msg_to_array(msg: Image) -> np.ndarray:
    """The pixels of a ``sensor_msgs/Image`` in their native dtype (H x W or H x W x C).

    Raises :class:`ImageConversionError` for unsupported encodings or inconsistent sizes.
    """
    if _CV_BRIDGE is None:
        return decode_image_buffer(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
    if msg.encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding '{msg.encoding}' (supported: {', '.join(ENCODINGS)})")
    expected = msg.step * msg.height
    if len(msg.data) != expected or msg.height <= 0 or msg.width <= 0:
        # The core decoder words the exact problem (sizes, step, data length).
        return decode_image_buffer(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
    try:
        return np.array(_CV_BRIDGE.imgmsg_to_cv2(msg, desired_encoding='passthrough'), copy=True)
    except Exception as error:   # CvBridgeError or a numpy error: word it like the core decoder
        raise ImageConversionError(f'cv_bridge could not convert the {msg.encoding} image: {error}') from error


def array_to_image_msg(array: np.ndarray, encoding: str, header=None) -> Image:
    encoded = encode_image_buffer(array, encoding)
    msg = Image(height=encoded.height, width=encoded.width, encoding=encoded.encoding,
                is_bigendian=encoded.is_bigendian, step=encoded.step)
    msg.data = encoded.data
    if header is not None:
        msg.header = header
    return msg


def finite_or(value: float, fallback: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else float(fallback)


def detections_msg(header, box, score: float, target_id: int):
    """A vision_msgs/Detection2DArray with the target (centre-based box), or None without vision_msgs."""
    if Detection2DArray is None:
        return None
    x, y, width, height = box
    detection = Detection2D()
    detection.header = header
    detection.id = str(target_id)
    detection.bbox.center.position.x = float(x + width / 2.0)
    detection.bbox.center.position.y = float(y + height / 2.0)
    detection.bbox.size_x = float(width)
    detection.bbox.size_y = float(height)
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id = 'target'
    hypothesis.hypothesis.score = float(score)
    detection.results.append(hypothesis)
    out = Detection2DArray()
    out.header = header
    out.detections.append(detection)
    return out


def polygon_to_box(polygon_msg) -> tuple[int, tuple[float, float, float, float]]:
    """``geometry_msgs/PolygonStamped`` -> (stamp in ns, (x, y, w, h)): the axis-aligned bounding box of
    the points (RGB pixels; at least 2 points, e.g. two opposite corners)."""
    points = polygon_msg.polygon.points
    if len(points) < 2:
        raise ValueError(f'an init box polygon needs at least 2 points (opposite corners), got {len(points)}')
    xs = [float(p.x) for p in points]
    ys = [float(p.y) for p in points]
    if not all(math.isfinite(v) for v in xs + ys):
        raise ValueError(f'init box polygon has non-finite coordinates: {list(zip(xs, ys))}')
    x0, y0 = min(xs), min(ys)
    return stamp_to_ns(polygon_msg.header.stamp), (x0, y0, max(xs) - x0, max(ys) - y0)


def check_target_box(box, image_width: int, image_height: int, tolerance: float = 0.5) -> Optional[str]:
    """Why ``box`` (x, y, w, h in pixels) cannot be a target on a W x H image, or None if it can."""
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return f'box {values} has a non-finite value (NaN or inf)'
    x, y, width, height = values
    if width <= 0 or height <= 0:
        return f'box needs a positive width and height, got width={width:g}, height={height:g}'
    if x < -tolerance or y < -tolerance or x + width > image_width + tolerance or y + height > image_height + tolerance:
        return (f'box x={x:g} y={y:g} w={width:g} h={height:g} is not inside the {image_width}x{image_height} '
                'RGB image')
    return None


def tracker_status_msg(stats: dict, **fields):
    """A ``ckd_ros/TrackerStatus`` from the node's statistics (rates, latency, pairing counters) and
    ``fields`` (lifecycle_state, tracker_state, target_id, model_config, device, last_error)."""
    from ckd_ros.msg import TrackerStatus
    latency = stats['latency']
    return TrackerStatus(rgb_rate=stats['rgb_rate'], thermal_rate=stats['thermal_rate'], pair_rate=stats['pair_rate'],
                         output_rate=stats['output_rate'], latency_mean=latency['mean'], latency_p50=latency['p50'],
                         latency_p95=latency['p95'], latency_max=latency['max'], pairs_made=stats['pairs_made'],
                         pairs_dropped=stats['pairs_dropped'], frames_unmatched=stats['frames_unmatched'],
                         pair_dt_mean_abs=stats['pair_dt_mean_abs'], **fields)
