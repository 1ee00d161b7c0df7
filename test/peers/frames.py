"""Image messages for the reliability tests: random RGB + thermal frames with chosen stamps, sizes and
encodings, and a small driver that publishes them from the test process while spinning its node."""
from __future__ import annotations

import math

import numpy as np

MS = 1_000_000
SECOND = 1_000_000_000


def image_msg(array, encoding: str, stamp_ns: int, frame_id: str = 'cam'):
    from ckd_ros.ros.conversions import array_to_image_msg, ns_to_stamp
    msg = array_to_image_msg(array, encoding)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def stamp_ns_of(msg) -> int:
    return msg.header.stamp.sec * SECOND + msg.header.stamp.nanosec


class FrameMaker:
    """Random frames of a given size: RGB ``rgb8`` and thermal ``mono16`` (or ``32FC1``)."""

    def __init__(self, width: int, height: int, seed: int = 0):
        self.width, self.height = width, height
        self.rng = np.random.default_rng(seed)

    def rgb(self, stamp_ns: int, size=None):
        width, height = size or (self.width, self.height)
        return image_msg(self.rng.integers(0, 255, (height, width, 3), dtype=np.uint8), 'rgb8', stamp_ns)

    def thermal(self, stamp_ns: int, size=None):
        width, height = size or (self.width, self.height)
        return image_msg(self.rng.integers(3000, 9000, (height, width), dtype=np.uint16), 'mono16', stamp_ns)

    def thermal_float(self, stamp_ns: int, special=(), size=None):
        """32FC1 thermal with ``special`` values (NaN, inf, -inf) written over a few rows each."""
        width, height = size or (self.width, self.height)
        values = self.rng.uniform(280.0, 320.0, (height, width)).astype(np.float32)
        for row, value in enumerate(special):
            values[row] = value
        return image_msg(values, '32FC1', stamp_ns)


class Driver:
    """Publishes frames on ``<namespace>/rgb/image`` and ``<namespace>/thermal/image`` from the test's
    client node, spinning it between frames (so recorded topics keep flowing)."""

    def __init__(self, client, namespace: str, depth: int = 10):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.client = client
        self.rgb_pub = client.node.create_publisher(Image, f'{namespace}/rgb/image', qos)
        self.thermal_pub = client.node.create_publisher(Image, f'{namespace}/thermal/image', qos)

    def wait_subscribed(self, output=None, timeout: float = 90.0):
        self.client.wait_for(lambda: self.rgb_pub.get_subscription_count()
                             and self.thermal_pub.get_subscription_count(),
                             timeout, 'the node to subscribe to the images', output)

    def send(self, rgb=None, thermal=None, spin_s: float = 0.0):
        if rgb is not None:
            self.rgb_pub.publish(rgb)
        if thermal is not None:
            self.thermal_pub.publish(thermal)
        if spin_s:
            self.client.spin_for(spin_s)


def finite_target(target) -> bool:
    values = (target.x, target.y, target.width, target.height, target.score, target.latency, target.pair_dt)
    return all(math.isfinite(v) for v in values)
