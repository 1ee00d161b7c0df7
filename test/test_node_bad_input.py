"""Bad input and bad requests reach the node from another process: each gives a clear service message or
diagnostic, nothing NaN is published, and the node keeps tracking."""
import math

import numpy as np
import pytest

from peers.node_harness import (OutputDrain, RosTestClient, diagnostic_values, find_status, micro_model_params,
                                node_command)

pytestmark = pytest.mark.ros

NAMESPACE = '/bad'
NODE = f'{NAMESPACE}/ckd_tracker'
WIDTH, HEIGHT = 64, 48


def _image(array, encoding, stamp_ns, frame_id='cam'):
    from ckd_ros.ros.conversions import array_to_image_msg, ns_to_stamp
    msg = array_to_image_msg(array, encoding)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def test_bad_frames_and_requests_are_explained_and_the_node_keeps_running(rclpy_context, spawn_process):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PolygonStamped
    from sensor_msgs.msg import Image

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.srv import SetTarget

    node = spawn_process(node_command(NAMESPACE, params=micro_model_params(
        autostart=True, **{'thermal.registration': 'identity', 'thermal.gain': 'minmax'})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        targets = client.record(TrackedTarget, f'{NODE}/target')
        statuses = client.record(TrackerStatus, f'{NODE}/status')
        diagnostics = client.record(DiagnosticArray, '/diagnostics')
        # Reliable publishers: the node's best-effort subscriptions accept them.
        rgb_pub = client.node.create_publisher(Image, f'{NAMESPACE}/rgb/image', 10)
        thermal_pub = client.node.create_publisher(Image, f'{NAMESPACE}/thermal/image', 10)
        box_pub = client.node.create_publisher(PolygonStamped, f'{NODE}/init_box', 10)
        client.wait_for(lambda: rgb_pub.get_subscription_count() and thermal_pub.get_subscription_count()
                        and box_pub.get_subscription_count(), 90, 'the node to subscribe', out)

        def set_target(x, y, w, h, stamp_ns=0):
            request = SetTarget.Request(x=float(x), y=float(y), width=float(w), height=float(h))
            request.stamp.sec, request.stamp.nanosec = divmod(stamp_ns, 10**9)
            return client.call(SetTarget, f'{NODE}/set_target', request, output=out)

        early = set_target(10, 10, 20, 20)
        assert not early.success and 'no synchronized RGB + thermal frame received yet' in early.message

        rng = np.random.default_rng(0)
        now_ns = client.node.get_clock().now().nanoseconds
        sent = {'frames': 0}

        def publish(rgb_msg, thermal_msg):
            rgb_pub.publish(rgb_msg)
            thermal_pub.publish(thermal_msg)
            sent['frames'] += 1

        def good_pair(stamp_ns, thermal=None):
            rgb = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            if thermal is None:
                thermal = _image(rng.integers(3000, 9000, (HEIGHT, WIDTH), dtype=np.uint16), 'mono16', stamp_ns + 1000)
            return _image(rgb, 'rgb8', stamp_ns), thermal

        first_stamp = now_ns
        publish(*good_pair(first_stamp))
        client.wait_for(lambda: statuses and statuses[-1].pairs_made >= 1, 30, 'the first pair', out)

        # Refusals, each with its reason.
        outside = set_target(50, 10, 30, 20)
        assert not outside.success and outside.message == 'box x=50 y=10 w=30 h=20 is not inside the 64x48 RGB image'
        nan_box = set_target(float('nan'), 10, 20, 20)
        assert not nan_box.success and 'non-finite' in nan_box.message
        flat = set_target(10, 10, 0, 20)
        assert not flat.success and 'positive width and height' in flat.message
        stale = set_target(10, 10, 20, 20, stamp_ns=first_stamp - 5 * 10**9)
        assert not stale.success and stale.message.startswith('no kept frame within 1 s of the requested stamp')
        stamped = set_target(10, 10, 20, 20, stamp_ns=first_stamp + 2 * 10**6)
        assert stamped.success and stamped.target_id == 1, stamped.message
        box_pub.publish(PolygonStamped())       # no points: refused, reported as a warning
        client.wait_for(lambda: any('~/init_box refused: an init box polygon needs at least 2 points' in line
                                    for line in out.lines), 20, 'the init_box refusal in the log', out)

        # NaN pixels in float thermal: a warning, the pixels become 0, tracking goes on.
        stamp = first_stamp + 10**8
        nan_thermal = rng.uniform(290, 310, (HEIGHT, WIDTH)).astype(np.float32)
        nan_thermal[:5] = np.nan
        publish(*good_pair(stamp, _image(nan_thermal, '32FC1', stamp)))
        client.wait_for(lambda: targets and targets[-1].header.stamp.nanosec == stamp % 10**9, 30,
                        'a target for the NaN frame', out)
        client.wait_for(lambda: (lambda s: s is not None and s.level == DiagnosticStatus.WARN
                                 and '320 NaN/inf pixels of 3072 set to 0' in s.message)(
            find_status(diagnostics, 'ckd_tracker: tracker')), 20, 'the NaN warning', out)

        def expect_error(rgb_msg, thermal_msg, text):
            publish(rgb_msg, thermal_msg)
            client.wait_for(lambda: statuses and text in statuses[-1].last_error, 30, f'last_error with {text!r}', out)
            client.wait_for(lambda: (lambda s: s is not None and s.level == DiagnosticStatus.ERROR
                                     and text in s.message)(
                find_status(diagnostics, 'ckd_tracker: tracker')), 20, f'an ERROR diagnostic with {text!r}', out)

        stamp += 10**8
        rgb_msg, thermal_msg = good_pair(stamp)
        rgb_msg.encoding = 'yuv422'
        expect_error(rgb_msg, thermal_msg, "/bad/rgb/image: unsupported encoding 'yuv422'")
        stamp += 10**8
        rgb_msg, thermal_msg = good_pair(stamp)
        thermal_msg.data = bytes(thermal_msg.data)[:-10]
        expect_error(rgb_msg, thermal_msg, '/bad/thermal/image: data length 6134 does not match step*height')
        stamp += 10**8
        small = _image(rng.integers(0, 255, (24, 32), dtype=np.uint8), 'mono8', stamp)
        expect_error(*good_pair(stamp, small),
                     "thermal image is 32x24 but the RGB image is 64x48; registration 'identity' needs equal sizes")
        stamp += 10**8
        all_nan = _image(np.full((HEIGHT, WIDTH), np.nan, np.float32), '32FC1', stamp)
        expect_error(*good_pair(stamp, all_nan), 'thermal image has no finite pixel (all NaN/inf)')

        # Still alive and tracking: a good pair gives a finite target.
        stamp += 10**8
        publish(*good_pair(stamp))
        client.wait_for(lambda: targets[-1].header.stamp.nanosec == stamp % 10**9, 30, 'a target after the errors', out)
        assert client.get_state(NODE) == 'active'
        for target in targets:
            values = (target.x, target.y, target.width, target.height, target.score, target.latency, target.pair_dt)
            assert all(math.isfinite(v) for v in values), values
        # set_target initialises without publishing; the NaN frame and the last good frame are tracked.
        assert len(targets) == 2 and {t.target_id for t in targets} == {1}
        client.wait_for(lambda: diagnostic_values(find_status(diagnostics, 'ckd_tracker: tracker'))['pairs_made']
                        == str(sent['frames']), 20, 'diagnostics counting every pair', out)
        assert diagnostic_values(find_status(diagnostics, 'ckd_tracker: tracker'))['frames_rejected'] == '4'
        assert 'Traceback' not in out.text()
    finally:
        client.close()
