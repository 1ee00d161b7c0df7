"""Bad data through a real node process (beyond test_node_bad_input.py): images that lie about their size,
step or encoding, a frame size change mid-stream, 1x1 and 8K frames, NaN/inf thermal with the percentile gain,
degenerate boxes, and storms of target requests. Each gives a clear message and a diagnostic; no exception
escapes a callback (the log has no traceback) and no output carries a NaN."""
import math
import time

import numpy as np
import pytest

from peers.frames import MS, Driver, FrameMaker, finite_target, image_msg, stamp_ns_of
from peers.node_harness import (OutputDrain, RosTestClient, diagnostic_values, find_status, micro_model_params,
                                node_command, process_rss_mib)

pytestmark = pytest.mark.ros

NAMESPACE = '/baddata'
NODE = f'{NAMESPACE}/ckd_tracker'
DIAG = 'ckd_tracker: tracker'
WIDTH, HEIGHT = 64, 48


def test_lying_odd_and_huge_frames_degenerate_boxes_and_request_storms(rclpy_context, spawn_process):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import Point32, PolygonStamped

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.srv import SetTarget

    # initial_box lies outside the 64x48 frames: refused with an ERROR on the first pair.
    node = spawn_process(node_command(NAMESPACE, params=micro_model_params(
        autostart=True, initial_box=[50.0, 30.0, 30.0, 30.0],
        **{'input.reliability': 'reliable', 'input.timeout': 30.0, 'target.history_max_mb': 150.0})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        targets = client.record(TrackedTarget, f'{NODE}/target', depth=500)
        statuses = client.record(TrackerStatus, f'{NODE}/status', depth=50)
        diagnostics = client.record(DiagnosticArray, '/diagnostics', depth=50)
        driver = Driver(client, NAMESPACE)
        box_pub = client.node.create_publisher(PolygonStamped, f'{NODE}/init_box', 1000)
        driver.wait_subscribed(out)
        client.wait_for(lambda: box_pub.get_subscription_count(), 30, 'the init_box subscription', out)
        frames = FrameMaker(WIDTH, HEIGHT, seed=11)
        clock = {'now': client.node.get_clock().now().nanoseconds}

        def next_stamp(step_ms=50):
            clock['now'] += step_ms * MS
            return clock['now']

        def diag():
            return find_status(diagnostics, DIAG)

        def expect_diag(text, level, what):
            client.wait_for(lambda: diag() is not None and (level is None or diag().level == level)
                            and text in diag().message, 20, what, out)

        def set_target(x, y, w, h):
            return client.call(SetTarget, f'{NODE}/set_target',
                               SetTarget.Request(x=float(x), y=float(y), width=float(w), height=float(h)), output=out)

        def send_pair(size=None, thermal=None):
            stamp = next_stamp()
            driver.send(frames.rgb(stamp, size), thermal if thermal is not None else frames.thermal(stamp + MS, size),
                        spin_s=0.05)
            return stamp

        send_pair()
        expect_diag("parameter 'initial_box': box x=50 y=30 w=30 h=30 is not inside the 64x48 RGB image",
                    DiagnosticStatus.ERROR, 'the initial_box error')
        assert not targets

        # Degenerate boxes are refused with a reason.
        for box, reason in (((10, 10, -5, 8), 'positive width and height'), ((10, 10, 8, 0), 'positive width'),
                            ((60, 40, 10, 10), 'is not inside the 64x48 RGB image'),
                            ((1e30, 10, 5, 5), 'is not inside')):
            response = set_target(*box)
            assert not response.success and reason in response.message, (box, response.message)
        point = Point32(x=20.0, y=20.0)
        polygon = PolygonStamped()
        polygon.polygon.points = [point, point]      # two equal corners: zero size
        box_pub.publish(polygon)
        client.wait_for(lambda: any('~/init_box refused: box needs a positive width and height' in line
                                    for line in out.lines), 20, 'the zero-size init_box refusal', out)

        assert set_target(20, 14, 16, 14).success
        send_pair()
        client.wait_for(lambda: len(targets) >= 1, 20, 'a target', out)

        # Lying and unsupported images: each refused with its reason (ERROR diagnostic, last_error).
        def lie(field_edits, text, thermal_side=False):
            stamp = next_stamp()
            rgb, thermal = frames.rgb(stamp), frames.thermal(stamp + MS)
            target_msg = thermal if thermal_side else rgb
            for name, value in field_edits.items():
                setattr(target_msg, name, value)
            rejected = int(diagnostic_values(diag())['frames_rejected'])
            driver.send(rgb, thermal, spin_s=0.05)
            client.wait_for(lambda: int(diagnostic_values(diag())['frames_rejected']) > rejected
                            and text in diag().message, 20, f'the refusal {text!r}', out)
            client.wait_for(lambda: text in statuses[-1].last_error, 10, f'last_error {text!r}', out)

        lie({'step': WIDTH * 3 - 1, 'data': bytes((WIDTH * 3 - 1) * HEIGHT)},
            f'step {WIDTH * 3 - 1} is smaller than one row of {WIDTH} rgb8 pixels')
        lie({'data': bytes(WIDTH * 3 * HEIGHT + 5)}, 'data length 9221 does not match step*height = 192*48 = 9216')
        lie({'width': WIDTH * 2}, f'step {WIDTH * 3} is smaller than one row of {WIDTH * 2} rgb8 pixels')
        lie({'height': 0, 'data': b''}, 'image size must be positive, got 64x0')
        lie({'height': 100_000, 'width': 100_000, 'step': 300_000}, 'data length 9216 does not match step*height')
        lie({'encoding': '16UC1', 'step': WIDTH * 2, 'data': bytes(WIDTH * 2 * HEIGHT)},
            "RGB image encoding '16UC1' is not supported")
        lie({'encoding': 'bgra8', 'step': WIDTH * 4, 'data': bytes(WIDTH * 4 * HEIGHT)},
            "thermal image encoding 'bgra8' is not supported", thermal_side=True)
        lie({'encoding': 'yuv422_yuy2'}, "unsupported encoding 'yuv422_yuy2'", thermal_side=True)

        # NaN, +inf and -inf pixels in float thermal with the percentile gain: counted, written as 0.
        stamp = next_stamp()
        driver.send(frames.rgb(stamp), frames.thermal_float(stamp + MS, special=(math.nan, math.inf, -math.inf)),
                    spin_s=0.05)
        client.wait_for(lambda: targets and stamp_ns_of(targets[-1]) == stamp, 20, 'the NaN/inf frame tracked', out)
        expect_diag(f'NaN/inf pixels of {WIDTH * HEIGHT} set to 0', None, 'the NaN/inf warning')
        assert f'{3 * WIDTH} NaN/inf pixels' in diag().message
        stamp = next_stamp()
        driver.send(frames.rgb(stamp), image_msg(np.full((HEIGHT, WIDTH), np.inf, np.float32), '32FC1', stamp + MS))
        expect_diag('thermal image has no finite pixel (all NaN/inf)', DiagnosticStatus.ERROR, 'the all-inf error')

        # The RGB frame size changes mid-stream: the target's box belongs to the old frame, so it is dropped.
        id_before = targets[-1].target_id
        count_before = len(targets)
        send_pair(size=(96, 80))
        expect_diag(f'RGB image size changed from 64x48 to 96x80: target {id_before} dropped', None,
                    'the size change warning')
        client.wait_for(lambda: statuses[-1].tracker_state == TrackedTarget.STATE_IDLE, 10, 'an idle status', out)
        send_pair(size=(96, 80))
        client.spin_for(0.3)
        assert len(targets) == count_before, 'no box of the old frame is published on the new one'
        assert set_target(70, 60, 20, 16).success, 'a new target on the new size'
        send_pair(size=(96, 80))
        client.wait_for(lambda: targets[-1].target_id == id_before + 1 and targets[-1].x + targets[-1].width <= 97,
                        20, 'tracking on the new size', out)

        # 1x1 frames: no target can be set (the crop cannot overlap one pixel), refused without a traceback.
        send_pair(size=(1, 1))
        client.wait_for(lambda: statuses[-1].tracker_state == TrackedTarget.STATE_IDLE, 10, 'dropped on 1x1', out)
        tiny = set_target(0, 0, 1, 1)
        assert not tiny.success and tiny.message.startswith('cannot initialise the tracker on this frame: the crop '
                                                            'around box (0.0, 0.0, 1.0, 1.0) '
                                                            'does not overlap the 1x1 image')
        assert 'is not inside the 1x1 RGB image' in set_target(0, 0, 2, 2).message

        # 8K RGB (7680x4320, 100 MB a frame) with a 640x512 thermal camera: tracked; the set_target
        # history stays under target.history_max_mb (150 MiB: one 8K pair).
        big = (7680, 4320)
        rgb_8k = np.random.default_rng(3).integers(0, 255, (big[1], big[0], 3), dtype=np.uint8)
        big_stamps = []
        started = time.monotonic()
        for k in range(2):
            stamp = next_stamp(100)
            driver.send(image_msg(rgb_8k, 'rgb8', stamp), frames.thermal(stamp + MS, size=(640, 512)), spin_s=0.1)
            big_stamps.append(stamp)
            if k == 0:
                client.wait_for(lambda: statuses[-1].pairs_made > 0
                                and diagnostic_values(diag())['history_pairs'] != '0'
                                and int(float(diagnostic_values(diag())['history_mib'])) >= 95, 60,
                                'the first 8K pair', out)
                response = set_target(3000, 2000, 120, 90)
                assert response.success, response.message
        client.wait_for(lambda: targets and stamp_ns_of(targets[-1]) == big_stamps[-1], 60, 'an 8K pair tracked', out)
        print(f'two 8K pairs sent, set_target and tracked in {time.monotonic() - started:.1f} s; '
              f'node RSS {process_rss_mib(node.pid):.0f} MiB')
        target = targets[-1]
        assert 0 <= target.x and target.x + target.width <= big[0] and target.y + target.height <= big[1]
        client.wait_for(lambda: int(diagnostic_values(diag())['history_pairs']) == 1, 20, 'a capped history', out)
        assert float(diagnostic_values(diag())['history_mib']) <= 150.0

        # A storm of 300 set_target requests (valid and invalid, 8 in flight at a time: a ROS service keeps
        # 10 requests, so a client with more outstanding loses some) while frames flow, and 300 init boxes.
        client.node.destroy_publisher(driver.rgb_pub)     # the 8K messages stay in the reliable history otherwise
        driver = Driver(client, NAMESPACE)
        driver.wait_subscribed(out)
        made = statuses[-1].pairs_made
        for _ in range(3):
            send_pair()
        client.wait_for(lambda: statuses[-1].pairs_made >= made + 3, 20, 'small pairs again', out)
        set_client = client.node.create_client(SetTarget, f'{NODE}/set_target')
        rng = np.random.default_rng(5)
        futures = []
        for k in range(300):
            client.wait_for(lambda: sum(not f.done() for f in futures) < 8, 30, 'set_target responses', out)
            box = [float(rng.uniform(0, 40)), float(rng.uniform(0, 30)), float(rng.uniform(-5, 30)),
                   float(rng.uniform(-5, 20))]
            futures.append(set_client.call_async(SetTarget.Request(x=box[0], y=box[1], width=box[2], height=box[3])))
            polygon = PolygonStamped()
            polygon.polygon.points = [Point32(x=box[0], y=box[1]), Point32(x=box[0] + box[2], y=box[1] + box[3])]
            box_pub.publish(polygon)
            if k % 10 == 0:
                send_pair()
        client.wait_for(lambda: all(f.done() for f in futures), 30, 'every set_target response', out)
        responses = [f.result() for f in futures]
        assert all(r.success or r.message for r in responses), 'every refusal says why'
        ids = sorted(r.target_id for r in responses if r.success)
        assert 0 < len(ids) < 300 and len(set(ids)) == len(ids), 'each success is a new target id'
        for _ in range(5):
            send_pair()
        client.wait_for(lambda: statuses[-1].target_id >= ids[-1] and targets[-1].target_id == statuses[-1].target_id,
                        20, 'tracking the newest target after the storm', out)
        refusals = [line for line in out.lines if '~/init_box refused' in line]
        assert len(refusals) < 60, f'{len(refusals)} init_box refusal lines: the log is throttled'

        assert all(finite_target(t) for t in targets)
        assert client.get_state(NODE) == 'active'
        assert 'Traceback' not in out.text()
    finally:
        client.close()
