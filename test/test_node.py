"""The tracker node in its own process, fed by a camera process, observed and driven from the test process."""
import json
import math

import pytest

from conftest import PEERS_DIR
from peers.node_harness import (OutputDrain, RosTestClient, diagnostic_values, find_status, micro_model_params,
                                node_command)

pytestmark = pytest.mark.ros

NAMESPACE = '/rig'
NODE = f'{NAMESPACE}/ckd_tracker'
SLOP_S = 0.02


def _peer_event(lines, event):
    for line in lines:
        if line.startswith('{') and json.loads(line).get('event') == event:
            return json.loads(line)
    return None


def test_tracks_every_pair_of_a_camera_process_and_reports_what_happened(rclpy_context, spawn_process):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import Point, Point32, PolygonStamped
    from std_srvs.srv import Trigger

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.srv import SetTarget

    # 90 RGB frames at 15 Hz with jittered stamps, thermal at 7.5 Hz in four encodings (mono16,
    # 32FC1, 16UC1, mono8) at a lower resolution, RGB alternating bgr8/rgb8, rows padded, big-endian.
    peer = spawn_process([PEERS_DIR / 'rgbt_camera_peer.py', '--namespace', NAMESPACE, '--frames', '90',
                          '--rate', '15', '--thermal-every', '2', '--jitter-ms', '4', '--row-padding', '3',
                          '--big-endian', '--wait-subscribers', '90', '--linger', '2'])
    peer_out = OutputDrain(peer)
    client = RosTestClient(rclpy_context)
    try:
        client.wait_for(lambda: _peer_event(peer_out.lines, 'ready'), 60, 'the camera peer to start')
        ready = _peer_event(peer_out.lines, 'ready')
        width, height = ready['size']
        # The package's default model configuration (random weights: the test is about the node).
        # Subscribe before the node exists: its first target (the initialisation frame) is published once,
        # and a subscription created after it would miss it on a loaded machine.
        targets = client.record(TrackedTarget, f'{NODE}/target', depth=200)
        statuses = client.record(TrackerStatus, f'{NODE}/status')
        diagnostics = client.record(DiagnosticArray, '/diagnostics')
        node = spawn_process(node_command(NAMESPACE, params=micro_model_params(
            autostart=True, initial_box=ready['init_box'], model_config='ckd_tiny', **{'sync.slop': SLOP_S})))
        node_out = OutputDrain(node)
        box_pub = client.node.create_publisher(PolygonStamped, f'{NODE}/init_box', 10)

        client.wait_for(lambda: len(targets) >= 10, 90, '10 tracked targets', node_out)
        assert targets[0].target_id == 1 and targets[0].state == TrackedTarget.STATE_TRACKING
        # The initialisation frame is published once, right after activation; DDS may match this test's
        # subscription to the node's brand-new publisher a moment later, so that message can arrive or not.
        # Either it is the first one received, or the node's log shows the parameter's box was used.
        init_box = [round(v, 1) for v in ready['init_box']]
        first = [targets[0].x, targets[0].y, targets[0].width, targets[0].height]
        if first != pytest.approx(ready['init_box'], abs=1e-4):
            client.wait_for(
                lambda: any(f"target 1 set by parameter 'initial_box': {init_box}" in line for line in node_out.lines),
                10, "the node's log line: the first pair is initialised on the initial_box parameter", node_out)

        # A new target on the newest frame through the service, then through the init-box topic.
        response = client.call(SetTarget, f'{NODE}/set_target',
                               SetTarget.Request(x=30.0, y=20.0, width=24.0, height=18.0), output=node_out)
        assert response.success and response.message == '' and response.target_id == 2
        client.wait_for(lambda: targets[-1].target_id == 2, 30, 'targets of target 2', node_out)
        polygon = PolygonStamped()
        polygon.polygon.points = [Point32(x=50.0, y=40.0), Point32(x=10.0, y=12.0)]
        client.wait_for(lambda: box_pub.get_subscription_count() > 0, 30, 'the init_box subscription')
        box_pub.publish(polygon)
        client.wait_for(lambda: targets[-1].target_id == 3, 30, 'targets of target 3', node_out)
        # Two clicks on ~/debug_image as rqt_image_view publishes them: one corner on the thermal half
        # (x beyond the RGB width), the opposite one on the RGB half.
        click_pub = client.node.create_publisher(Point, f'{NODE}/debug_image_mouse_left', 10)
        client.wait_for(lambda: click_pub.get_subscription_count() > 0, 30, 'the click subscription')
        click_pub.publish(Point(x=float(width + 10), y=12.0))
        client.spin_for(0.3)
        assert targets[-1].target_id == 3, 'one click sets nothing'
        click_pub.publish(Point(x=50.0, y=40.0))
        client.wait_for(lambda: targets[-1].target_id == 4, 30, 'targets of target 4', node_out)
        client.wait_for(lambda: 'target 4 set by ~/debug_image clicks: [10.0, 12.0, 40.0, 28.0]' in node_out.text(),
                        10, 'the log line of the clicked target', node_out)

        client.wait_for(lambda: _peer_event(peer_out.lines, 'done'), 60, 'the camera peer to finish')
        done = _peer_event(peer_out.lines, 'done')
        client.spin_for(1.0)
        rgb_stamps = set(done['rgb_stamps'])
        thermal_stamps = sorted(done['thermal_stamps'])

        # One target per processed pair, carrying that pair's RGB header; never NaN.
        assert len(targets) >= 10
        stamps = [t.header.stamp.sec * 10**9 + t.header.stamp.nanosec for t in targets]
        assert set(stamps) <= rgb_stamps, 'every target carries the stamp of a published RGB frame'
        assert all(t.header.frame_id == ready['frame_id'] for t in targets)
        for target, stamp in zip(targets, stamps):
            values = [target.x, target.y, target.width, target.height, target.score, target.pair_dt, target.latency]
            assert all(math.isfinite(v) for v in values), values
            assert target.state in (TrackedTarget.STATE_TRACKING, TrackedTarget.STATE_LOST)
            assert 0.0 <= target.score <= 1.0
            assert target.width > 0 and target.height > 0
            assert -1 <= target.x and target.x + target.width <= width + 1
            assert abs(target.pair_dt) < SLOP_S
            # The partner is a published thermal frame: RGB stamp + pair_dt.
            partner = stamp + round(target.pair_dt * 1e9)
            assert min(abs(partner - s) for s in thermal_stamps) < 2_000, 'pair_dt names a published thermal stamp'
            assert 0.0 < target.latency < 10.0
        ids = [t.target_id for t in targets]
        assert ids == sorted(ids) and set(ids) == {1, 2, 3, 4}
        # Thermal runs at half the RGB rate: at most one target per thermal frame.
        assert len(targets) <= len(thermal_stamps)

        # ~/reset drops the target: no more targets until a new one is set.
        reset = client.call(Trigger, f'{NODE}/reset', Trigger.Request(), output=node_out)
        assert reset.success and reset.message == 'target 4 dropped'
        assert client.call(Trigger, f'{NODE}/reset', Trigger.Request()).message == 'no target was set'

        client.wait_for(lambda: statuses and statuses[-1].tracker_state == TrackedTarget.STATE_IDLE, 10,
                        'a status after the reset')
        status = statuses[-1]
        assert status.lifecycle_state == 'active' and status.device == 'cpu'
        assert status.model_config == 'ckd_tiny'
        assert status.tracker_state == TrackedTarget.STATE_IDLE and status.target_id == 4
        assert status.pairs_made + 0 >= len(targets) and status.pairs_made <= len(thermal_stamps)
        assert status.frames_unmatched >= 20, 'RGB frames without a thermal partner are counted'
        assert 0.0 < status.pair_dt_mean_abs < SLOP_S
        assert status.last_error == ''
        assert any(s.latency_max > 0 and s.latency_p95 <= s.latency_max for s in statuses)
        assert any(s.rgb_rate > 5 and s.thermal_rate > 2 for s in statuses), 'input rates near 15 / 7.5 Hz'

        diagnostic = find_status(diagnostics, 'ckd_tracker: tracker')
        assert diagnostic is not None, 'the node publishes /diagnostics'
        values = diagnostic_values(diagnostic)
        assert values['lifecycle_state'] == 'active' and values['device'] == 'cpu'
        assert int(values['pairs_made']) >= len(targets) and int(values['frames_unmatched']) >= 20
        assert {'latency_p95_s', 'pair_dt_max_abs_s', 'pairs_dropped', 'rgb_rate_hz', 'thermal_rate_hz'} <= set(values)
        assert any(s.level == DiagnosticStatus.OK for a in diagnostics for s in a.status
                   if s.name == 'ckd_tracker: tracker' and 'active' in s.message)
        assert 'Traceback' not in node_out.text()
    finally:
        client.close()


def test_a_burst_is_not_tracked_as_a_backlog_and_the_debug_image_is_published_on_demand(rclpy_context,
                                                                                         spawn_process):
    import numpy as np
    from sensor_msgs.msg import Image

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.ros.conversions import array_to_image_msg, ns_to_stamp

    namespace, node_fqn = '/burst', '/burst/ckd_tracker'
    width, height = 96, 72      # small frames: the burst (a few MB) stays within the transport's buffers
    node = spawn_process(node_command(namespace, params=micro_model_params(
        autostart=True, initial_box=[60.0, 40.0, 30.0, 30.0], **{'input.depth': 100, 'sync.queue_size': 100,
             # reliable: the burst's last pair must arrive (best effort may drop any frame of a burst)
             'input.reliability': 'reliable'})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        targets = client.record(TrackedTarget, f'{node_fqn}/target', depth=500)
        statuses = client.record(TrackerStatus, f'{node_fqn}/status')
        rgb_pub = client.node.create_publisher(Image, f'{namespace}/rgb/image', 500)
        thermal_pub = client.node.create_publisher(Image, f'{namespace}/thermal/image', 500)
        client.wait_for(lambda: rgb_pub.get_subscription_count() and thermal_pub.get_subscription_count(), 90,
                        'the node to subscribe', out)
        rng = np.random.default_rng(1)
        start_ns = client.node.get_clock().now().nanoseconds
        count = 100
        rgb_stamps = []
        # Pre-build the burst so that it leaves as fast as possible.
        burst = []
        for k in range(count):
            stamp = start_ns + k * 10**7
            rgb = array_to_image_msg(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), 'rgb8')
            thermal = array_to_image_msg(rng.integers(2000, 9000, (height, width), dtype=np.uint16), 'mono16')
            rgb.header.stamp, thermal.header.stamp = ns_to_stamp(stamp), ns_to_stamp(stamp + 500_000)
            burst.append((rgb, thermal))
            rgb_stamps.append(stamp)
        for rgb, thermal in burst:
            rgb_pub.publish(rgb)
            thermal_pub.publish(thermal)
        last = rgb_stamps[-1]
        client.wait_for(lambda: targets and targets[-1].header.stamp == ns_to_stamp(last), 60,
                        'the newest pair to be tracked', out)
        # Each pair the node made is either tracked (one target) or skipped for a newer one (counted).
        client.wait_for(lambda: statuses and statuses[-1].pairs_made > 0
                        and statuses[-1].pairs_made == len(targets) + statuses[-1].pairs_dropped, 20,
                        'a status that accounts for every pair', out)
        status = statuses[-1]
        assert status.pairs_dropped > 0, 'pairs that arrived while the worker was busy were skipped'
        assert status.pairs_made <= count
        stamps = [t.header.stamp.sec * 10**9 + t.header.stamp.nanosec for t in targets]
        assert stamps == sorted(stamps) and set(stamps) <= set(rgb_stamps)

        # No subscriber, no debug image; with one, the RGB and thermal views side by side (rgb8).
        debug = client.record(Image, f'{node_fqn}/debug_image', depth=10)
        client.wait_for(lambda: client.node.count_publishers(f'{node_fqn}/debug_image') == 1, 20, 'debug publisher')
        client.spin_for(1.0)
        stamp = last + 10**8
        rgb = array_to_image_msg(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), 'rgb8')
        thermal = array_to_image_msg(rng.integers(2000, 9000, (height, width), dtype=np.uint16), 'mono16')
        rgb.header.stamp, thermal.header.stamp = ns_to_stamp(stamp), ns_to_stamp(stamp)
        rgb.header.frame_id = 'debug_cam'
        rgb_pub.publish(rgb)
        thermal_pub.publish(thermal)
        # The burst's last pair may still get a debug image: the node checks for subscribers after publishing
        # its target, and this subscription can match in between on a loaded machine. Nothing older may come.
        client.wait_for(lambda: any(d.header.stamp == ns_to_stamp(stamp) for d in debug), 30, 'a debug image', out)
        assert [d.header.stamp for d in debug] in ([ns_to_stamp(stamp)], [ns_to_stamp(last), ns_to_stamp(stamp)])
        image = debug[-1]
        assert (image.height, image.width, image.encoding) == (height, 2 * width, 'rgb8')
        assert image.header.frame_id == 'debug_cam'
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(height, 2 * width, 3)
        # The thermal half is grey (three equal channels) except where the box is drawn.
        thermal_half = pixels[:, width:].astype(int)
        assert (thermal_half[:, :, 0] == thermal_half[:, :, 2]).mean() > 0.9
        assert 'Traceback' not in out.text()
    finally:
        client.close()


def test_a_target_set_on_an_old_frame_leaves_the_thermal_gain_of_the_stream_alone(rclpy_context, spawn_process):
    """~/set_target with a stamp converts a kept old frame; it used the stream's smoothed thermal gain, so an
    old frame with another temperature range pulled the live mapping toward it (here: live frames black)."""
    import numpy as np
    from sensor_msgs.msg import Image

    from ckd_ros.msg import TrackerStatus
    from ckd_ros.ros.conversions import ns_to_stamp
    from ckd_ros.srv import SetTarget
    from peers.frames import Driver, image_msg

    namespace, node_fqn = '/gain', '/gain/ckd_tracker'
    width, height = 64, 48
    node = spawn_process(node_command(namespace, params=micro_model_params(
        autostart=True, **{'thermal.gain': 'minmax', 'thermal.range_smoothing': 0.9, 'input.reliability': 'reliable',
                           'target.history_size': 200, 'target.max_stamp_offset': 100.0})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        statuses = client.record(TrackerStatus, f'{node_fqn}/status')
        driver = Driver(client, namespace)
        driver.wait_subscribed(out)
        rng = np.random.default_rng(3)
        start_ns = client.node.get_clock().now().nanoseconds

        def publish(k, low, high):
            stamp_ns = start_ns + k * 20_000_000
            driver.send(image_msg(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), 'rgb8', stamp_ns),
                        image_msg(rng.integers(low, high, (height, width), dtype=np.uint16), 'mono16', stamp_ns),
                        spin_s=0.02)
            return ns_to_stamp(stamp_ns)

        old = publish(0, 20000, 60000)             # a hot scene, kept in the history
        for k in range(1, 80):                     # then a cool one: the smoothed range settles on it
            publish(k, 1000, 2000)
        client.wait_for(lambda: statuses and statuses[-1].pairs_made >= 60, 30, 'the pairs', out)
        request = SetTarget.Request(x=10.0, y=10.0, width=20.0, height=20.0, stamp=old)
        response = client.call(SetTarget, f'{node_fqn}/set_target', request, output=out)
        assert response.success, response.message

        debug = client.record(Image, f'{node_fqn}/debug_image', depth=10)
        client.wait_for(lambda: client.node.count_publishers(f'{node_fqn}/debug_image') == 1, 20, 'debug publisher')
        client.spin_for(1.0)
        last = publish(81, 1000, 2000)             # newer than every output, not ahead of the node clock
        client.wait_for(lambda: any(d.header.stamp == last for d in debug), 30, 'the debug image', out)
        image = next(d for d in debug if d.header.stamp == last)
        thermal_half = np.frombuffer(bytes(image.data), np.uint8).reshape(height, 2 * width, 3)[:, width:, 0]
        # uniform raw values over the live range map to ~0..255 (mean ~128); pulled 10 % toward the old
        # frame's range, the low end rises above every live value and the frame turns black
        assert 90 < thermal_half.mean() < 170, thermal_half.mean()
    finally:
        client.close()


def test_a_burst_of_service_requests_is_answered_in_full(rclpy_context, spawn_process):
    """The default service QoS keeps 10 requests: of 60 set_target calls sent at once, 49 were never answered."""
    import time

    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger

    from ckd_ros.srv import SetTarget
    from peers.frames import Driver, FrameMaker

    namespace, node_fqn = '/requests', '/requests/ckd_tracker'
    node = spawn_process(node_command(namespace, params=micro_model_params(
        autostart=True, **{'input.reliability': 'reliable'})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        driver = Driver(client, namespace)
        driver.wait_subscribed(out)
        # the client keeps its responses too (its own QoS: the default would drop all but 10)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        set_target = client.node.create_client(SetTarget, f'{node_fqn}/set_target', qos_profile=qos)
        reset = client.node.create_client(Trigger, f'{node_fqn}/reset', qos_profile=qos)
        assert set_target.wait_for_service(timeout_sec=30) and reset.wait_for_service(timeout_sec=30)
        start_ns = client.node.get_clock().now().nanoseconds
        frames = FrameMaker(64, 48)
        for k in range(3):
            stamp_ns = start_ns + k * 10**7
            driver.send(frames.rgb(stamp_ns), frames.thermal(stamp_ns), spin_s=0.05)
        client.spin_for(1.0)   # the pairs reach the node's history
        futures = [set_target.call_async(SetTarget.Request(x=5.0 + k % 7, y=5.0, width=10.0, height=10.0))
                   for k in range(60)] + [reset.call_async(Trigger.Request()) for _ in range(20)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(f.done() for f in futures):
            client.spin_for(0.1)
        assert sum(f.done() for f in futures) == len(futures)
        assert all(f.result().success for f in futures), [f.result() for f in futures if not f.result().success]
    finally:
        client.close()
