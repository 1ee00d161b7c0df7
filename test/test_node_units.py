"""Pieces of the node layer on their own: message conversions, target-box checks, statistics, and the
diagnostics layout without diagnostic_updater."""
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
    from ckd_ros.ros.diagnostics import ERROR, OK, WARN, IssueBoard, RateMeter, SampleWindow

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

    from ckd_ros.ros.diagnostics import WARN, FallbackUpdater

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
            status.add('rate_hz', 4.5)
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
