"""Pieces of the node layer on their own: message conversions, target-box checks, statistics, and the
diagnostics layout without diagnostic_updater, and the node in this process where two of its threads must
be interleaved exactly."""
import contextlib
import math

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def test_image_messages_round_trip_and_padded_big_endian_messages_decode():
    from sensor_msgs.msg import Image

    from ckd_ros.core.image import ImageConversionError
    from ckd_ros.ros.conversions import array_to_image_msg, image_msg_to_array

    thermal = np.array([[1000, 2000, 65535]], np.uint16)
    msg = array_to_image_msg(thermal, 'mono16')
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (1, 3, 6, 0)
    assert image_msg_to_array(msg).tolist() == thermal.tolist()
    padded = Image(height=1, width=3, encoding='16UC1', is_bigendian=1, step=8)
    padded.data = thermal.astype('>u2').tobytes() + b'\x00\x00'
    assert image_msg_to_array(padded).tolist() == thermal.tolist()
    padded.data = bytes(7)
    with pytest.raises(ImageConversionError, match='data length 7 does not match step\\*height = 8\\*1 = 8'):
        image_msg_to_array(padded)


def test_stamps_convert_both_ways():
    from builtin_interfaces.msg import Time

    from ckd_ros.ros.conversions import ns_to_stamp, stamp_to_ns

    assert stamp_to_ns(Time(sec=12, nanosec=345)) == 12_000_000_345
    assert ns_to_stamp(12_000_000_345) == Time(sec=12, nanosec=345)


@pytest.mark.parametrize('box, problem', [
    ((10, 10, 20, 20), None),
    ((0, 0, 64, 48), None),
    ((-0.4, 0, 10, 10), None),                     # within half a pixel of the border
    ((50, 10, 30, 20), 'is not inside the 64x48 RGB image'),
    ((-5, 0, 10, 10), 'is not inside'),
    ((10, 10, 0, 5), 'positive width and height'),
    ((10, 10, 5, -1), 'positive width and height'),
    ((math.nan, 10, 5, 5), 'non-finite'),
    ((10, 10, math.inf, 5), 'non-finite'),
])
def test_target_box_checks(box, problem):
    from ckd_ros.ros.conversions import check_target_box

    result = check_target_box(box, 64, 48)
    if problem is None:
        assert result is None
    else:
        assert problem in result


def test_init_box_polygon_is_the_bounding_box_of_its_points():
    from geometry_msgs.msg import Point32, PolygonStamped

    from ckd_ros.ros.conversions import polygon_to_box

    polygon = PolygonStamped()
    polygon.header.stamp.sec, polygon.header.stamp.nanosec = 3, 5
    polygon.polygon.points = [Point32(x=40.0, y=12.0), Point32(x=10.0, y=30.0), Point32(x=25.0, y=5.0)]
    assert polygon_to_box(polygon) == (3_000_000_005, (10.0, 5.0, 30.0, 25.0))
    polygon.polygon.points = polygon.polygon.points[:1]
    with pytest.raises(ValueError, match='at least 2 points'):
        polygon_to_box(polygon)
    polygon.polygon.points = [Point32(x=math.nan, y=1.0), Point32(x=2.0, y=3.0)]
    with pytest.raises(ValueError, match='non-finite'):
        polygon_to_box(polygon)


def test_detections_need_vision_msgs():
    from std_msgs.msg import Header

    from ckd_ros.ros import conversions

    detections = conversions.detections_msg(Header(frame_id='cam'), (10.0, 20.0, 30.0, 40.0), 0.5, 7)
    if not conversions.DETECTIONS_AVAILABLE:
        assert detections is None
    else:
        detection = detections.detections[0]
        assert (detection.bbox.center.position.x, detection.bbox.center.position.y) == (25.0, 40.0)
        assert (detection.bbox.size_x, detection.bbox.size_y, detection.id) == (30.0, 40.0, '7')


def test_rate_meter_sample_window_and_issue_board():
    from ckd_ros.core.health import ERROR, OK, WARN, IssueBoard, RateMeter, SampleWindow

    now = [100.0]
    meter = RateMeter(window_s=5.0, clock=lambda: now[0])
    assert meter.rate() == 0.0
    for _ in range(11):                      # 10 Hz for one second
        meter.tick()
        now[0] += 0.1
    assert meter.rate() == pytest.approx(10 / 1.1)
    now[0] += 10.0                           # the stream stopped: the window empties
    assert meter.rate() == 0.0

    window = SampleWindow(size=50)
    assert window.summary() == {'mean': 0.0, 'p50': 0.0, 'p95': 0.0, 'max': 0.0}
    samples = np.random.default_rng(0).exponential(0.03, 80)
    for value in samples:
        window.add(float(value))
    window.add(math.nan)                     # ignored
    kept = samples[-50:]
    summary = window.summary()
    assert summary['mean'] == pytest.approx(kept.mean())
    assert summary['p50'] == pytest.approx(np.percentile(kept, 50))
    assert summary['p95'] == pytest.approx(np.percentile(kept, 95))
    assert summary['max'] == pytest.approx(kept.max())

    board = IssueBoard(hold_s=5.0, clock=lambda: now[0])
    assert board.worst() is None and board.last_error == ''
    board.report('thermal nonfinite', WARN, 'some NaN')
    assert board.worst() == (WARN, 'some NaN') and board.last_error == 'some NaN'
    now[0] += 1.0
    board.report('rgb input', ERROR, 'bad encoding')
    now[0] += 1.0
    board.report('thermal input', ERROR, 'bad length')
    assert board.worst() == (ERROR, 'bad length') and board.last_error == 'bad length'
    now[0] += 4.5                             # the first error is older than the hold time
    assert board.worst() == (ERROR, 'bad length')
    now[0] += 1.0
    assert board.worst() is None and board.last_error == 'bad length'
    assert OK == b'\x00'


def test_fallback_updater_publishes_the_diagnostic_updater_layout(rclpy_context):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from ckd_ros.core.health import WARN
    from ckd_ros.ros.diagnostics import FallbackUpdater

    node = rclpy.create_node('ckd_updater_test', context=rclpy_context)
    listener = rclpy.create_node('ckd_updater_listener', context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    executor.add_node(listener)
    received = []
    listener.create_subscription(DiagnosticArray, '/diagnostics', received.append, 10)
    try:
        updater = FallbackUpdater(node, period=0.1)
        updater.setHardwareID('cpu')

        def task(status):
            status.summary(WARN, 'slow')
            status.add('rate_hz', '4.5')
            return status
        updater.add('tracker', task)
        assert node.get_parameter('diagnostic_updater.period').value == 0.1
        for _ in range(200):
            executor.spin_once(timeout_sec=0.02)
            if received:
                break
        (status,) = received[0].status
        assert (status.name, status.level, status.message, status.hardware_id) == (
            'ckd_updater_test: tracker', WARN, 'slow', 'cpu')
        assert [(kv.key, kv.value) for kv in status.values] == [('rate_hz', '4.5')]
    finally:
        executor.shutdown()
        node.destroy_node()
        listener.destroy_node()


def test_diagnostic_values_must_be_strings_as_with_the_real_diagnostic_updater():
    """The real DiagnosticStatusWrapper.add stores the value as given and its publish raises TypeError for
    anything but str: the node died 1 s after start on a ROS install. The fallback refuses at once, so
    every node test of the suite (which runs with the fallback) catches a non-str value."""
    from ckd_ros.ros.diagnostics import StatusWrapper

    status = StatusWrapper()
    status.add('pairs_made', '3')
    for value in (3, 4.5, True, None):
        with pytest.raises(TypeError, match='must be str'):
            status.add('key', value)
    assert [(kv.key, kv.value) for kv in status.values] == [('pairs_made', '3')]


def test_a_cv_bridge_that_cannot_convert_is_not_used(tmp_path):
    """A cv_bridge whose compiled module does not load still constructs (its __init__ swallows the
    ImportError) and then fails every frame. The node probes one conversion at import and falls back."""
    import subprocess
    import sys

    from conftest import ros_subprocess_env

    broken = tmp_path / 'cv_bridge'
    broken.mkdir()
    # the shape of a cv_bridge built against another numpy: CvBridge() works, converting does not
    (broken / '__init__.py').write_text(
        'class CvBridge:\n'
        '    def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):\n'
        '        raise ImportError("No module named \'cv_bridge.boost\'")\n')
    code = ('from ckd_ros.ros import conversions as c\n'
            'from ckd_ros.ros.conversions import image_msg_to_array, array_to_image_msg\n'
            'import numpy as np\n'
            'msg = array_to_image_msg(np.arange(12, dtype=np.uint8).reshape(3, 4), "mono8")\n'
            'assert image_msg_to_array(msg).tolist() == np.arange(12).reshape(3, 4).tolist()\n'
            'print(c.IMAGE_BACKEND)\nprint(c.CV_BRIDGE_PROBLEM)\n')
    env = ros_subprocess_env()
    env['PYTHONPATH'] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    backend, problem = result.stdout.strip().splitlines()
    assert backend == 'ckd_ros.core.image'
    assert 'cv_bridge is installed but cannot convert images' in problem and 'cv_bridge.boost' in problem


def test_the_diagnostic_period_is_validated_at_start_up_and_when_set(rclpy_context):
    """An invalid diagnostic_updater.period (from -p or a parameter file) used to crash the node's constructor
    with a traceback (an integer, a string or a negative number) and 0 made the updater publish without pause;
    at run time any value was accepted and none took effect. Runs with whichever updater is installed: the
    real diagnostic_updater declares the period as a double, so there rclpy itself refuses an integer or a
    string set at run time."""
    import rclpy
    from rclpy.parameter import Parameter

    from ckd_ros.ros.diagnostics import UPDATER_BACKEND
    from ckd_ros.ros.node import CkdTrackerNode

    def timer_ns(updater):
        return (updater._timer if hasattr(updater, '_timer') else updater.timer).timer_period_ns

    period = 'diagnostic_updater.period'
    for index, (value, expected) in enumerate(((2, 2.0), (0.5, 0.5), ('abc', 1.0), (-1.0, 1.0), (0.0, 1.0),
                                               (1e12, 1.0))):
        node = CkdTrackerNode(f'ckd_period_{index}', context=rclpy_context,
                              parameter_overrides=[Parameter(period, value=value)])
        try:
            assert node._updater.period == expected, value
            assert timer_ns(node._updater) == int(expected * 1e9)
            if expected == 1.0:
                assert f"parameter '{period}'" in node._issues.last_error and '1 s' in node._issues.last_error
            else:
                assert node._issues.last_error == ''
        finally:
            node.destroy_node()

    real = UPDATER_BACKEND == 'diagnostic_updater'
    node = CkdTrackerNode('ckd_period_set', context=rclpy_context)
    try:
        timers_before = len(list(node.timers))
        for value, reason in ((-1.0, f"parameter '{period}': must be >= 0.01, got -1.0"),
                              (0.0, f"parameter '{period}': must be >= 0.01, got 0.0"),
                              ('fast', f"parameter '{period}': must be a finite number, got 'fast'")):
            result = node.set_parameters([Parameter(period, value=value)])[0]
            assert not result.successful
            if not (real and isinstance(value, str)):   # rclpy's own type check answers first there
                assert result.reason == reason
            assert node.get_parameter(period).value == 1.0 and node._updater.period == 1.0
        # A valid period applies at once (the updater's timer), in every lifecycle state.
        assert node.set_parameters([Parameter(period, value=0.2)])[0].successful
        assert node._updater.period == 0.2 and timer_ns(node._updater) == 200_000_000
        # the old timer is gone (the real Updater's own setter left it running)
        assert len(list(node.timers)) == timers_before
        assert node.set_parameters([Parameter(period, value=3.0)])[0].successful
        assert node._updater.period == 3.0
        if not real:
            assert node.set_parameters([Parameter(period, value=4)])[0].successful
            assert node._updater.period == 4.0
        # Refused together with an invalid tracker parameter: neither is applied.
        result = node.set_parameters_atomically([Parameter(period, value=0.5), Parameter('sync.slop', value=-1.0)])
        assert not result.successful and node._updater.period in (3.0, 4.0)
    finally:
        node.destroy_node()
    assert rclpy.ok(context=rclpy_context)


@contextlib.contextmanager
def _active_node(context):
    """The tracker node (micro model) active in this process, for tests that interleave its threads."""
    from rclpy.parameter import Parameter

    from ckd_ros.ros.node import CkdTrackerNode
    from peers.node_harness import micro_model_params

    overrides = [Parameter(name, value=value) for name, value in micro_model_params(
        **{'warmup': False, 'diagnostic_updater.period': 1.0, 'status_period': 1.0}).items()]
    node = CkdTrackerNode(context=context, parameter_overrides=overrides)
    try:
        node.trigger_configure()
        node.trigger_activate()
        assert node.lifecycle_state_label() == 'active'
        yield node
    finally:
        node.trigger_deactivate()
        node.trigger_cleanup()
        node.destroy_node()


def test_a_target_set_while_the_worker_converts_that_pair_is_not_tracked_on_it(rclpy_context):
    """The worker checked a pair's stamp, converted it without the lock, then tracked it: a ~/set_target on
    that very pair in between made the worker track the initialisation frame again (an output repeating
    the init stamp, and a tracker state that depended on timing: the demo's scores varied run to run).
    The node runs in this process so that the two threads can be interleaved exactly."""
    import threading

    import numpy as np

    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames, stamp_ns = FrameMaker(64, 48), 5 * 10**9
        rgb, thermal = frames.rgb(stamp_ns), frames.thermal(stamp_ns)
        node._history.add(stamp_ns, (rgb, thermal))          # as pairing does before handing the pair over
        tracked = []
        real_track = node._tracker.track
        node._tracker.track = lambda *a: tracked.append(1) or real_track(*a)
        converting, set_done = threading.Event(), threading.Event()
        real_convert = node._convert_pair

        def slow_worker_convert(rgb_msg, thermal_msg, gain=None):
            if gain is None:                                  # the worker's call (set_target passes a gain)
                converting.set()
                assert set_done.wait(10)
            return real_convert(rgb_msg, thermal_msg, gain)

        node._convert_pair = slow_worker_convert
        worker = threading.Thread(target=node._process_pair, args=(rgb, thermal, node._time_epoch))
        worker.start()
        assert converting.wait(10)
        skipped_before = node._pairs_out_of_order
        assert node._set_target([10.0, 10.0, 20.0, 20.0], stamp_ns, 'test') == (True, '')
        set_done.set()
        worker.join(10)
        assert tracked == [], 'the initialisation frame was tracked again'
        assert node._pairs_out_of_order == skipped_before + 1
        assert np.isfinite(node._last_box).all()


def test_a_target_stamped_after_every_kept_pair_waits_for_its_frame(rclpy_context):
    """A stamped ~/set_target whose frame had not arrived yet initialised on the newest kept pair (in a
    replay: the previous sequence's last frame, 70 ms older and so within target.max_stamp_offset)."""
    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames, stamp_ns = FrameMaker(64, 48), 5 * 10**9
        node._history.add(stamp_ns, (frames.rgb(stamp_ns), frames.thermal(stamp_ns)))
        ok, message = node._set_target([10.0, 10.0, 20.0, 20.0], stamp_ns + 70_000_000, 'test')
        assert not ok and message.startswith('the frame stamped 5.070000 has not been received yet (the newest '
                                             'pair is 0.070 s older); retry')
        # within sync.slop (0.05 s) of the newest pair, or older: the closest kept pair, as documented
        assert node._set_target([10.0, 10.0, 20.0, 20.0], stamp_ns + 30_000_000, 'test') == (True, '')
        assert node._set_target([10.0, 10.0, 20.0, 20.0], stamp_ns - 500_000_000, 'test') == (True, '')


def test_non_finite_network_output_is_published_as_lost_with_an_error_never_as_a_box(rclpy_context):
    """clip_box turned NaN into (0, 0, 10, 10) and a NaN score skipped the LOST test: the node published
    TRACKING with score 0 and /diagnostics stayed OK. Now the tracker keeps its last good box and says so."""
    import numpy as np
    import torch

    from ckd_ros.msg import TrackedTarget
    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames = FrameMaker(64, 48)
        published = []
        node._target_pub.publish = published.append
        stamps = [5 * 10**9 + i * 50_000_000 for i in range(3)]
        for stamp in stamps:
            node._history.add(stamp, (frames.rgb(stamp), frames.thermal(stamp)))
        assert node._set_target([10.0, 10.0, 20.0, 20.0], stamps[0], 'test') == (True, '')
        good_box = tuple(node._last_box)
        runner = node._tracker.runner

        def nan_runner(*args, **kwargs):
            return tuple(torch.full_like(m, float('nan')) for m in runner(*args, **kwargs))
        node._tracker.runner = nan_runner
        node._process_pair(frames.rgb(stamps[1]), frames.thermal(stamps[1]), node._time_epoch)
        message = published[-1]
        assert message.state == TrackedTarget.STATE_LOST and message.score == 0.0
        assert (message.x, message.y, message.width, message.height) == pytest.approx(good_box)
        assert 'non-finite network output' in node._issues.last_error
        assert node._diagnose(_StrStatus()).level == b'\x02'   # ERROR
        # the network recovers: tracking goes on from the kept box
        node._tracker.runner = runner
        node._process_pair(frames.rgb(stamps[2]), frames.thermal(stamps[2]), node._time_epoch)
        assert all(np.isfinite([published[-1].x, published[-1].y, published[-1].score]))


def test_warm_up_refuses_weights_that_give_non_finite_output(rclpy_context, monkeypatch):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ckd_ros.core.tracker import CKDTracker, NonFiniteOutputError
    from ckd_ros.ros.node import CkdTrackerNode
    from peers.node_harness import micro_model_params

    def broken_warm_up(self, *args, **kwargs):
        raise NonFiniteOutputError('the network output on a blank 320x256 frame pair is not finite')
    monkeypatch.setattr(CKDTracker, 'warm_up', broken_warm_up)
    node = CkdTrackerNode('ckd_nan_weights', context=rclpy_context, parameter_overrides=[
        Parameter(k, value=v) for k, v in micro_model_params(warmup=True).items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'not finite' in node._issues.last_error
    finally:
        node.release_everything()
        node.destroy_node()


class _StrStatus:
    """A DiagnosticStatusWrapper stand-in that accepts str values only, as the real one."""

    def __init__(self):
        self.values, self.level, self.message = [], None, ''

    def summary(self, level, message):
        self.level, self.message = level, message

    def add(self, key, value):
        assert isinstance(value, str), (key, value)
        self.values.append((key, value))


def test_outputs_never_go_back_in_time_after_a_target_set_on_an_older_frame(rclpy_context):
    """~/set_target on an older kept pair reset the tracked-stamp mark: a late pair older than an output
    already published went out after it (94 ms back in time)."""
    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames = FrameMaker(64, 48)
        published = []
        node._target_pub.publish = published.append
        t = [5 * 10**9 + i * 50_000_000 for i in range(5)]
        for stamp in t[:3]:
            node._history.add(stamp, (frames.rgb(stamp), frames.thermal(stamp)))
        assert node._set_target([10.0, 10.0, 20.0, 20.0], t[1], 'test') == (True, '')
        node._process_pair(frames.rgb(t[3]), frames.thermal(t[3]), node._time_epoch)
        assert len(published) == 1
        # a new target on the oldest kept frame, then a late pair between it and the last output
        assert node._set_target([12.0, 12.0, 20.0, 20.0], t[0], 'test') == (True, '')
        node._process_pair(frames.rgb(t[2]), frames.thermal(t[2]), node._time_epoch)
        assert len(published) == 1, 'a pair older than the last output was published'
        node._process_pair(frames.rgb(t[4]), frames.thermal(t[4]), node._time_epoch)
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in published]
        assert stamps == [t[3], t[4]] and published[-1].target_id == node._target_id


def test_a_frame_stamped_in_the_future_is_rejected_and_does_not_poison_the_stream(rclpy_context):
    """A frame stamped 1 h ahead was tracked with latency -3592 s, and every real frame after it looked like
    time going backwards (pairing and statistics restarted)."""
    from ckd_ros.ros.synchronizer import RGB
    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames = FrameMaker(64, 48)
        published = []
        node._target_pub.publish = published.append
        now = node.get_clock().now().nanoseconds
        future = now + 3600 * 10**9
        node._on_frame(RGB, frames.rgb(future))
        assert node._frames_future == 1 and 'ahead of the node clock' in node._issues.last_error
        restarts = node._time_restarts
        node._on_frame(RGB, frames.rgb(now))   # a real frame after it: no time restart
        assert node._time_restarts == restarts
        node._history.add(now, (frames.rgb(now), frames.thermal(now)))
        assert node._set_target([10.0, 10.0, 20.0, 20.0], now, 'test') == (True, '')
        rejected = node._frames_rejected
        node._process_pair(frames.rgb(future), frames.thermal(future), node._time_epoch)
        assert published == [] and node._frames_rejected == rejected + 1
        # within input.max_stamp_ahead (clock offsets between machines): tracked
        soon = node.get_clock().now().nanoseconds + 200_000_000
        node._process_pair(frames.rgb(soon), frames.thermal(soon), node._time_epoch)
        assert len(published) == 1


def test_an_init_box_in_another_frame_is_refused_not_misread(rclpy_context):
    from geometry_msgs.msg import Point32, PolygonStamped

    from peers.frames import FrameMaker

    with _active_node(rclpy_context) as node:
        frames, stamp_ns = FrameMaker(64, 48), 5 * 10**9
        rgb = frames.rgb(stamp_ns)
        rgb.header.frame_id = 'camera_rgb'
        node._history.add(stamp_ns, (rgb, frames.thermal(stamp_ns)))
        polygon = PolygonStamped()
        polygon.polygon.points = [Point32(x=10.0, y=10.0), Point32(x=30.0, y=30.0)]
        polygon.header.frame_id = 'map'
        node._on_init_box(polygon)
        assert node._target_id == 0 and "the polygon is in frame 'map'" in node._issues.last_error
        for frame_id in ('camera_rgb', ''):   # the RGB frame, or none given: RGB pixels
            polygon.header.frame_id = frame_id
            before = node._target_id
            node._on_init_box(polygon)
            assert node._target_id == before + 1
