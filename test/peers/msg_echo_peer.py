"""A separate process for the interface round-trip test: echoes ckd_ros messages and serves SetTarget.

Runs until it receives SIGTERM/SIGINT or `--lifetime` seconds pass.
"""
import argparse
import math
import time

import rclpy
from rclpy.node import Node

from ckd_ros.msg import TrackedTarget, TrackerStatus
from ckd_ros.srv import SetTarget


class EchoPeer(Node):
    def __init__(self):
        super().__init__('ckd_msg_echo_peer')
        self._target_pub = self.create_publisher(TrackedTarget, 'echo/target_out', 10)
        self._status_pub = self.create_publisher(TrackerStatus, 'echo/status_out', 10)
        self.create_subscription(TrackedTarget, 'echo/target_in', self._target_pub.publish, 10)
        self.create_subscription(TrackerStatus, 'echo/status_in', self._status_pub.publish, 10)
        self.create_service(SetTarget, 'echo/set_target', self._on_set_target)
        self._next_id = 1

    def _on_set_target(self, request, response):
        values = (request.x, request.y, request.width, request.height)
        if not all(math.isfinite(v) for v in values) or request.width <= 0 or request.height <= 0:
            response.success = False
            response.message = f'box must have positive width and height, got {values}'
            return response
        response.success = True
        response.message = ''
        response.target_id = self._next_id + request.stamp.sec
        self._next_id += 1
        return response


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--lifetime', type=float, default=60.0)
    args = parser.parse_args()
    rclpy.init()
    node = EchoPeer()
    deadline = time.monotonic() + args.lifetime
    try:
        while rclpy.ok() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
