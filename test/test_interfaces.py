"""The generated messages and service round-trip between two processes over real DDS."""
import math
import time

import pytest

pytestmark = pytest.mark.ros


def _wait_for(predicate, executor, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_messages_and_service_round_trip_across_processes(rclpy_context, spawn_process):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.srv import SetTarget
    from conftest import PEERS_DIR

    peer = spawn_process([PEERS_DIR / 'msg_echo_peer.py', '--lifetime', '60'])
    node = rclpy.create_node('ckd_interface_test', context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        got_targets, got_status = [], []
        node.create_subscription(TrackedTarget, 'echo/target_out', got_targets.append, 10)
        node.create_subscription(TrackerStatus, 'echo/status_out', got_status.append, 10)
        target_pub = node.create_publisher(TrackedTarget, 'echo/target_in', 10)
        status_pub = node.create_publisher(TrackerStatus, 'echo/status_in', 10)
        client = node.create_client(SetTarget, 'echo/set_target')
        assert client.wait_for_service(timeout_sec=30), 'peer never offered echo/set_target: ' + (
            peer.stdout.read() if peer.poll() is not None else 'still running')

        sent = TrackedTarget()
        sent.header.stamp.sec, sent.header.stamp.nanosec = 1234, 567_000_000
        sent.header.frame_id = 'camera_rgb'
        sent.x, sent.y, sent.width, sent.height = 10.5, 20.25, 30.0, 40.75
        sent.score, sent.state, sent.target_id = 0.875, TrackedTarget.STATE_LOST, 7
        sent.pair_dt, sent.latency = -0.0123, 0.0456
        status = TrackerStatus()
        status.lifecycle_state, status.tracker_state = 'active', TrackedTarget.STATE_TRACKING
        status.model_config, status.device = 'ckd_tiny', 'cpu'
        status.pairs_made, status.pairs_dropped, status.frames_unmatched = 100, 3, 2
        status.latency_p95, status.last_error = 0.031, 'thermal: unsupported encoding yuv422'

        # Publish until the echo comes back: discovery across processes takes a moment.
        def echoed():
            if not got_targets:
                target_pub.publish(sent)
            if not got_status:
                status_pub.publish(status)
            return bool(got_targets) and bool(got_status)
        assert _wait_for(echoed, executor, timeout=30), 'no echo from the peer process'

        back = got_targets[0]
        assert (back.header.stamp.sec, back.header.stamp.nanosec) == (1234, 567_000_000)
        assert back.header.frame_id == 'camera_rgb'
        assert (back.x, back.y, back.width, back.height) == (10.5, 20.25, 30.0, 40.75)
        assert back.score == 0.875 and back.state == TrackedTarget.STATE_LOST and back.target_id == 7
        assert math.isclose(back.pair_dt, -0.0123) and math.isclose(back.latency, 0.0456)
        back_status = got_status[0]
        assert back_status.model_config == 'ckd_tiny' and back_status.pairs_dropped == 3
        assert back_status.last_error == 'thermal: unsupported encoding yuv422'
        assert math.isclose(back_status.latency_p95, 0.031, rel_tol=1e-6)

        request = SetTarget.Request(x=5.0, y=6.0, width=50.0, height=60.0)
        request.stamp.sec = 10
        future = client.call_async(request)
        assert _wait_for(future.done, executor, timeout=15)
        assert future.result().success and future.result().target_id == 11

        refused = client.call_async(SetTarget.Request(x=5.0, y=6.0, width=0.0, height=60.0))
        assert _wait_for(refused.done, executor, timeout=15)
        assert not refused.result().success
        assert 'positive width and height' in refused.result().message
    finally:
        executor.shutdown()
        node.destroy_node()
