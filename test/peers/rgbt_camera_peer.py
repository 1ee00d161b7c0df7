"""A camera-rig process for the node tests: publishes time-stamped RGB + thermal image pairs.

RGB frames at ``--rate`` Hz and a thermal frame with every ``--thermal-every``-th RGB frame (a slower
thermal camera), both rendered by ``ckd_ros.core.synthetic`` and stamped like a driver does, with the
time of publication, plus a random jitter of up to ``--jitter-ms`` per stream.  ``--cycle N`` renders
only the first N frames and repeats them (for long, fast runs: rendering large frames is slow).
Encodings cycle through ``--rgb-encodings`` and
``--thermal-encodings`` frame by frame; ``--row-padding`` adds bytes to every row and ``--big-endian``
writes 16-bit/float data big-endian, as some drivers do.

Prints one JSON line ``{"event": "ready", ...}`` (image sizes, the target's first box) before it
publishes, and ``{"event": "done", "rgb_stamps": [...], "thermal_stamps": [...]}`` (nanoseconds) after.
"""
import argparse
import json
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ckd_ros.core.synthetic import SyntheticScene

FRAME_ID = 'rig_rgb_optical'
THERMAL_FRAME_ID = 'rig_thermal_optical'


def size_arg(text):
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def encode(array, encoding, big_endian, row_padding, stamp_ns, frame_id):
    """A sensor_msgs/Image of ``array`` with ``row_padding`` extra bytes per row."""
    array = np.ascontiguousarray(array)
    order = '>' if big_endian and array.dtype.itemsize > 1 else '<'
    stored = array.astype(array.dtype.newbyteorder(order))
    height, width = array.shape[:2]
    rows = stored.reshape(height, -1).view(np.uint8)
    if row_padding:
        rows = np.concatenate([rows, np.full((height, row_padding), 0xAB, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(order == '>'), step=rows.shape[1])
    msg.data = rows.tobytes()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def rgb_as(rgb, encoding):
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgr8':
        return rgb[:, :, ::-1]
    if encoding == 'mono8':
        return rgb.mean(axis=2).round().astype(np.uint8)
    raise ValueError(f'the peer cannot write RGB as {encoding}')


def thermal_as(raw, encoding, size):
    """Raw uint16 counts as ``encoding`` at ``size`` (width, height) (a lower-resolution camera)."""
    import cv2
    raw = cv2.resize(raw, size, interpolation=cv2.INTER_AREA)
    if encoding in ('mono16', '16UC1'):
        return raw
    if encoding == '32FC1':
        return (raw.astype(np.float32) / 100.0).astype(np.float32)   # a "kelvin"-like float image
    if encoding in ('mono8', 'rgb8', 'bgr8'):
        eight = ((raw.astype(np.float32) - raw.min()) * 255.0 / max(1, int(raw.max()) - int(raw.min())))
        eight = eight.round().astype(np.uint8)
        return eight if encoding == 'mono8' else np.repeat(eight[:, :, None], 3, axis=2)
    raise ValueError(f'the peer cannot write thermal as {encoding}')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--namespace', default='')
    parser.add_argument('--frames', type=int, default=30)
    parser.add_argument('--rate', type=float, default=15.0)
    parser.add_argument('--thermal-every', type=int, default=2)
    parser.add_argument('--jitter-ms', type=float, default=3.0)
    parser.add_argument('--rgb-encodings', default='bgr8,rgb8')
    parser.add_argument('--thermal-encodings', default='mono16,32FC1,16UC1,mono8')
    parser.add_argument('--size', type=size_arg, default=(96, 80))
    parser.add_argument('--thermal-size', type=size_arg, default=(72, 60))
    parser.add_argument('--qos', choices=('best_effort', 'reliable'), default='best_effort')
    parser.add_argument('--row-padding', type=int, default=0)
    parser.add_argument('--big-endian', action='store_true')
    parser.add_argument('--seed', type=int, default=3)
    parser.add_argument('--wait-subscribers', type=float, default=60.0,
                        help='wait up to this many seconds for a subscriber on both topics')
    parser.add_argument('--linger', type=float, default=1.0, help='seconds to stay up after the last frame')
    parser.add_argument('--cycle', type=int, default=0, help='render this many frames and repeat them (0: all)')
    args = parser.parse_args()

    rclpy.init()
    node = Node('rgbt_camera_peer', namespace=args.namespace or None)
    reliability = ReliabilityPolicy.BEST_EFFORT if args.qos == 'best_effort' else ReliabilityPolicy.RELIABLE
    qos = QoSProfile(depth=5, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
    rgb_pub = node.create_publisher(Image, 'rgb/image', qos)
    thermal_pub = node.create_publisher(Image, 'thermal/image', qos)
    rendered = min(args.cycle, args.frames) if args.cycle > 0 else args.frames
    scene = SyntheticScene(args.seed, length=max(2, rendered), size=args.size, raw_thermal=True)
    frames = [scene.frame_raw(k) for k in range(rendered)] if args.cycle > 0 else None
    rgb_encodings = args.rgb_encodings.split(',')
    thermal_encodings = args.thermal_encodings.split(',')
    rng = np.random.default_rng(args.seed)
    print(json.dumps({'event': 'ready', 'size': list(args.size), 'thermal_size': list(args.thermal_size),
                      'init_box': [float(v) for v in scene.boxes[0]], 'frame_id': FRAME_ID}), flush=True)

    deadline = time.monotonic() + args.wait_subscribers
    while time.monotonic() < deadline and (rgb_pub.get_subscription_count() == 0
                                           or thermal_pub.get_subscription_count() == 0):
        rclpy.spin_once(node, timeout_sec=0.05)

    rgb_stamps, thermal_stamps = [], []
    started = time.monotonic()
    for k in range(args.frames):
        rgb, raw = frames[k % rendered] if frames is not None else scene.frame_raw(k)
        base_ns = node.get_clock().now().nanoseconds     # "capture" time, as a driver stamps
        rgb_stamp = base_ns + int(rng.uniform(-args.jitter_ms, args.jitter_ms) * 1e6)
        rgb_encoding = rgb_encodings[k % len(rgb_encodings)]
        rgb_pub.publish(encode(rgb_as(rgb, rgb_encoding), rgb_encoding, args.big_endian, args.row_padding,
                               rgb_stamp, FRAME_ID))
        rgb_stamps.append(rgb_stamp)
        if k % args.thermal_every == 0:
            thermal_stamp = base_ns + int(rng.uniform(-args.jitter_ms, args.jitter_ms) * 1e6)
            encoding = thermal_encodings[(k // args.thermal_every) % len(thermal_encodings)]
            thermal_pub.publish(encode(thermal_as(raw, encoding, args.thermal_size), encoding, args.big_endian,
                                       args.row_padding, thermal_stamp, THERMAL_FRAME_ID))
            thermal_stamps.append(thermal_stamp)
        # Keep the real-time pace (stamps and wall time advance together).
        sleep = started + (k + 1) / args.rate - time.monotonic()
        if sleep > 0:
            time.sleep(sleep)
    linger_end = time.monotonic() + args.linger
    while time.monotonic() < linger_end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps({'event': 'done', 'rgb_stamps': rgb_stamps, 'thermal_stamps': thermal_stamps}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == '__main__':
    main()
