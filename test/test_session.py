"""The node's tracking decisions without ROS or DDS (ckd_ros.core.session.TrackingSession): target id and
state, the initial box, the time rules that keep outputs from going back in time, future and zero stamps,
frame-size changes, LOST, and the input health it keeps. A fake tracker: every test runs in milliseconds."""
import math
import threading
import time

import numpy as np
import pytest

from ckd_ros.core.health import ERROR, FRESH, JUMPED_BACK, WARN, ZERO_STAMP
from ckd_ros.core.image import ThermalGainControl
from ckd_ros.core.session import FUTURE_STAMP, IDLE, LOST, TRACKING, TargetRefused, TrackingSession, check_target_box
from ckd_ros.core.tracking import TrackResult

MS = 1_000_000
T0 = 5 * 10**9


class FakeTracker:
    """initialize/track as CKDTracker has them; ``results`` (a list) gives the next track results."""

    def __init__(self):
        self.calls, self.results = [], []

    def initialize(self, rgb, thermal, box):
        self.calls.append(('initialize', tuple(box)))
        return TrackResult(box=tuple(box), score=1.0, state=TRACKING, frame_index=0)

    def track(self, rgb, thermal):
        self.calls.append(('track', rgb.shape[:2]))
        if self.results:
            return self.results.pop(0)
        return TrackResult(box=(11.0, 12.0, 20.0, 20.0), score=0.8, state=TRACKING, frame_index=1)


class Log:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(('info', message))

    def warning(self, message):
        self.lines.append(('warning', message))

    def error(self, message):
        self.lines.append(('error', message))


def frames(width=64, height=48):
    return np.zeros((height, width, 3), np.uint8), np.zeros((height, width, 3), np.uint8)


def make_session(initial_box=None, now_ns=T0 + 10**9):
    clock = [now_ns]
    session = TrackingSession(log=Log(), clock_ns=lambda: clock[0])
    session.clock = clock
    session.configure(stats_window=10, max_stamp_ahead_s=0.5, sync_slop_s=0.05, max_stamp_offset_s=0.1)
    session.start(timeout_s=1.0, jump_back_s=1.0, history_size=10, initial_box=initial_box, topics=('rgb', 'thermal'))
    session.tracker = FakeTracker()
    session.outputs = []
    return session


def track(session, stamp_ns, size=(64, 48), epoch=None):
    rgb, thermal = frames(*size)
    return session.track_pair(rgb, thermal, stamp_ns, session.epoch if epoch is None else epoch,
                              publish=session.outputs.append)


def set_target(session, stamp_ns, box=(10.0, 10.0, 20.0, 20.0), size=(64, 48)):
    """As the node does: the kept pair closest to the stamp, then initialise on it."""
    values, entry = session.target_frame(box, stamp_ns)
    rgb, thermal = frames(*size)
    return session.set_target(rgb, thermal, entry[0], values, 'test')


def keep(session, *stamps):
    for stamp in stamps:
        session.note_pair(stamp, stamp + MS, ('rgb', stamp))


def test_a_target_is_set_tracked_and_dropped_and_each_new_one_gets_the_next_id():
    session = make_session()
    assert session.state == IDLE and session.target_id == 0
    assert track(session, T0) is not None and session.outputs == [], 'no target: nothing published'
    keep(session, T0 + 50 * MS)
    assert set_target(session, T0 + 50 * MS) == (True, '')
    assert (session.state, session.target_id, session.box, session.score) == (TRACKING, 1, (10.0, 10.0, 20.0, 20.0),
                                                                             1.0)
    step = track(session, T0 + 100 * MS)
    assert step.box == (11.0, 12.0, 20.0, 20.0) and step.state == TRACKING and not step.lost
    output = session.outputs[-1]
    assert (output.stamp_ns, output.target_id, output.state, output.score) == (T0 + 100 * MS, 1, TRACKING, 0.8)
    assert output.latency == pytest.approx((session.clock[0] - output.stamp_ns) / 1e9)
    assert session.drop_target() == (True, 1)
    assert session.state == IDLE and session.box is None and track(session, T0 + 150 * MS).box is None
    assert session.drop_target() == (False, 1)
    keep(session, T0 + 200 * MS)
    assert set_target(session, 0) == (True, '') and session.target_id == 2   # stamp 0: the newest kept pair
    assert session.tracker.calls[-1] == ('initialize', (10.0, 10.0, 20.0, 20.0))


def test_target_requests_are_refused_with_the_reason():
    session = make_session()
    with pytest.raises(TargetRefused, match='no synchronized RGB \\+ thermal frame received yet: check that both '
                                            'rgb and thermal'):
        session.target_frame((1, 1, 5, 5), 0)
    keep(session, T0)
    with pytest.raises(TargetRefused, match='non-finite'):
        session.target_frame((math.nan, 1, 5, 5), 0)
    with pytest.raises(TargetRefused, match='positive width and height, got width=0, height=5'):
        session.target_frame((1, 1, 0, 5), 0)
    with pytest.raises(TargetRefused, match='the frame stamped 5.070000 has not been received yet'):
        session.target_frame((1, 1, 5, 5), T0 + 70 * MS)
    assert session.target_frame((1, 1, 5, 5), T0 + 30 * MS)[1][0] == T0   # within sync.slop: the closest
    with pytest.raises(TargetRefused, match='no kept frame within 0.1 s of the requested stamp'):
        session.target_frame((1, 1, 5, 5), T0 - 500 * MS)
    rgb, thermal = frames()
    assert session.set_target(rgb, thermal, T0, (60.0, 1.0, 20.0, 5.0), 'test') == (
        False, 'box x=60 y=1 w=20 h=5 is not inside the 64x48 RGB image')
    session.tracker = None
    assert session.set_target(rgb, thermal, T0, (1.0, 1.0, 5.0, 5.0), 'test') == (False, 'the model is not loaded')
    assert session.target_id == 0 and check_target_box((0, 0, 64, 48), 64, 48) is None


def test_the_initial_box_is_applied_on_the_next_pair_and_published():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    step = track(session, T0)
    assert session.tracker.calls == [('initialize', (10.0, 10.0, 20.0, 20.0))]
    assert step.state == TRACKING and session.target_id == 1 and session.pending_box is None
    assert [(o.stamp_ns, o.score, o.target_id) for o in session.outputs] == [(T0, 1.0, 1)]
    track(session, T0 + 50 * MS)
    assert session.tracker.calls[-1][0] == 'track' and len(session.outputs) == 2
    assert ('info', "target 1 set by parameter 'initial_box': [10.0, 10.0, 20.0, 20.0]") in session.log.lines


def test_an_initial_box_outside_the_image_is_reported_and_not_used():
    session = make_session(initial_box=(100.0, 10.0, 20.0, 20.0))
    step = track(session, T0)
    assert step.state == IDLE and session.outputs == [] and session.pending_box is None
    assert session.issues.worst()[0] == ERROR and "parameter 'initial_box': box x=100" in session.issues.last_error


def test_a_target_set_meanwhile_replaces_the_initial_box():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    keep(session, T0)
    assert set_target(session, T0, box=(5.0, 5.0, 10.0, 10.0)) == (True, '')
    assert session.pending_box is None
    track(session, T0 + 50 * MS)
    assert [call[0] for call in session.tracker.calls] == ['initialize', 'track']


def test_an_older_or_repeated_pair_is_skipped_and_outputs_never_go_back_in_time():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    track(session, T0 + 100 * MS)
    assert track(session, T0 + 50 * MS) is None, 'older than the last tracked pair'
    assert track(session, T0 + 100 * MS) is None, 'the same stamp again'
    assert session.is_stale(T0 + 100 * MS, session.epoch)
    assert session.health.pairs_out_of_order == 3
    track(session, T0 + 150 * MS)
    stamps = [output.stamp_ns for output in session.outputs]
    assert stamps == [T0 + 100 * MS, T0 + 150 * MS] and stamps == sorted(set(stamps))
    assert session.statistics()['pairs_dropped'] == 3


def test_a_target_set_on_an_older_kept_pair_does_not_let_a_later_output_go_back_in_time():
    """Issue 17 item 6: set_target on an older kept pair reset the tracked-stamp mark, and a late pair older
    than an output already published went out after it (94 ms back in time)."""
    session = make_session()
    t = [T0 + i * 50 * MS for i in range(5)]
    keep(session, *t[:3])
    assert set_target(session, t[1]) == (True, '')
    track(session, t[3])
    assert set_target(session, t[0], box=(12.0, 12.0, 20.0, 20.0)) == (True, '')
    assert track(session, t[2]) is None, 'a pair older than the last output was tracked'
    track(session, t[4])
    assert [o.stamp_ns for o in session.outputs] == [t[3], t[4]] and session.outputs[-1].target_id == 2


def test_a_target_set_on_the_pair_the_worker_is_converting_is_not_tracked_again():
    session = make_session()
    keep(session, T0)
    assert not session.is_stale(T0, session.epoch)     # the worker checks, then converts without the lock...
    assert set_target(session, T0) == (True, '')       # ...while ~/set_target initialises on that very pair
    assert track(session, T0) is None and session.tracker.calls == [('initialize', (10.0, 10.0, 20.0, 20.0))]


def test_future_and_zero_stamps_are_refused_and_do_not_poison_the_stream():
    session = make_session()
    now = session.clock[0]
    verdict, message = session.observe_frame(0, now + 3600 * 10**9, data_crc=1)
    assert verdict == FUTURE_STAMP and message.startswith('rgb: frame stamped 3600.000 s ahead of the node clock')
    assert session.health.frames_future == 1 and session.issues.worst() == (ERROR, message)
    assert session.observe_frame(0, now, data_crc=2) == (FRESH, ''), 'a real frame after it: no time restart'
    assert session.health.time_restarts == 0 and session.epoch == 0
    assert session.pair_problem(now + 3600 * 10**9).startswith('pair stamped 3600.000 s ahead of the node clock')
    assert session.pair_problem(now + 200 * MS) is None, 'within max_stamp_ahead (clock offsets between machines)'
    assert session.pair_problem(0).startswith('header.stamp is zero')
    verdict, message = session.observe_frame(1, 0, data_crc=3)
    assert verdict == ZERO_STAMP and 'thermal: header.stamp is zero' in message
    session.clock[0] = 0                 # use_sim_time before the first /clock message: nothing to compare with
    assert session.stamp_ahead_ns(now + 3600 * 10**9) is None
    rejected = session.health.frames_rejected
    session.reject('rgb stamp', 'rgb: pair stamped in the future')
    assert session.health.frames_rejected == rejected + 1 and session.log.lines[-1][0] == 'warning'


def test_a_stamp_far_back_restarts_time_and_pairs_from_before_are_skipped():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    restarted = []
    session.on_time_restart = lambda: restarted.append(True)
    keep(session, T0, T0 + 50 * MS)
    old_epoch = session.epoch
    assert session.slot.take(timeout=0) == (('rgb', T0 + 50 * MS), old_epoch)   # the newest pair, with its epoch
    assert session.observe_frame(0, T0 + 50 * MS, data_crc=1) == (FRESH, '')
    verdict, _ = session.observe_frame(0, T0 - 3 * 10**9, data_crc=2)          # a bag loops
    assert verdict == JUMPED_BACK and session.epoch == old_epoch + 1 and restarted == [True]
    assert len(session.history) == 0 and session.health.time_restarts == 1
    assert session.issues.worst()[0] == WARN and 'time went backwards' in session.issues.last_error
    assert track(session, T0 + 100 * MS, epoch=old_epoch) is None, 'a pair from before the restart'
    track(session, T0 - 4 * 10**9)       # older than every output so far, but in the new epoch
    assert [o.stamp_ns for o in session.outputs] == [T0 - 4 * 10**9]


def test_a_change_of_the_rgb_size_drops_the_target():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    track(session, T0)
    step = track(session, T0 + 50 * MS, size=(80, 60))
    assert step.state == IDLE and step.box is None and session.state == IDLE and len(session.outputs) == 1
    assert session.issues.worst() == (WARN, 'RGB image size changed from 64x48 to 80x60: target 1 dropped (its box '
                                            'belongs to the old image); set a new target')
    assert session.frame_size == (60, 80)
    keep(session, T0 + 100 * MS)
    assert set_target(session, T0 + 100 * MS, size=(80, 60)) == (True, '') and session.target_id == 2
    track(session, T0 + 150 * MS, size=(80, 60))
    assert session.outputs[-1].target_id == 2


def test_lost_and_non_finite_results():
    session = make_session(initial_box=(10.0, 10.0, 20.0, 20.0))
    track(session, T0)
    session.tracker.results = [
        TrackResult(box=(10.0, 10.0, 20.0, 20.0), score=0.1, state=LOST, frame_index=1),
        TrackResult(box=(10.0, 10.0, 20.0, 20.0), score=math.nan, state=LOST, frame_index=2,
                    error='non-finite network output (NaN/inf in the score map) at frame 2; kept the last good box'),
        TrackResult(box=(14.0, 10.0, 20.0, 20.0), score=0.9, state=TRACKING, frame_index=3)]
    step = track(session, T0 + 50 * MS)
    assert step.lost and session.outputs[-1].state == LOST and session.outputs[-1].score == pytest.approx(0.1)
    assert step.box == (10.0, 10.0, 20.0, 20.0), 'LOST still draws the kept box'
    step = track(session, T0 + 100 * MS)
    output = session.outputs[-1]
    assert step.lost and output.state == LOST and output.score == 0.0 and output.box == (10.0, 10.0, 20.0, 20.0)
    assert session.issues.worst()[0] == ERROR and 'non-finite network output' in session.issues.last_error
    track(session, T0 + 150 * MS)
    assert session.outputs[-1].state == TRACKING and session.outputs[-1].box == (14.0, 10.0, 20.0, 20.0)


def test_the_worker_takes_the_newest_pair_and_stops():
    session = make_session()
    done, seen = threading.Event(), []

    def process(item, epoch):
        seen.append((item, epoch))
        if item == 'boom':
            raise RuntimeError('a bad frame')
        done.set()

    session.start_worker(process)
    session.note_pair(T0, T0, 'boom')
    deadline = time.monotonic() + 5
    while not session.issues.last_error and time.monotonic() < deadline:
        time.sleep(0.005)
    assert session.issues.last_error == 'processing a pair failed: a bad frame', 'the worker goes on'
    session.note_pair(T0 + MS, T0 + MS, 'pair')
    assert done.wait(5) and seen[-1] == ('pair', 0)
    session.stop()
    assert session._worker is None and len(session.history) == 0


def test_prepare_converts_registers_and_rejects_bad_frames():
    session = make_session()
    session.gain = ThermalGainControl()
    rgb = np.full((48, 64, 3), 7, np.uint8)
    thermal = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    pair = session.prepare(rgb, 'rgb8', lambda: thermal, 'mono16')
    assert pair.rgb.shape == pair.thermal.shape == (48, 64, 3) and pair.thermal_frame.image.shape[:2] == (24, 32)
    assert session.prepare(rgb, 'yuv422', thermal, 'mono16') is None
    assert session.health.frames_rejected == 1 and session.issues.last_error.startswith('rgb: ')

    def broken():
        from ckd_ros.core.image import ImageConversionError
        raise ImageConversionError('data length 3 does not match')
    assert session.prepare(rgb, 'rgb8', broken, 'mono16') is None
    assert session.health.frames_rejected == 2 and session.issues.last_error == 'thermal: data length 3 does not match'


def test_input_health_reports_stalls_and_what_is_missing():
    session = make_session()
    session.health.restart_streams(timeout_s=0.02, jump_back_s=1.0)
    topics = session.topics
    assert session.health.input_warning(topics, 0.0) == 'active but no images on rgb / thermal (check topics and QoS)'
    session.observe_frame(0, T0, data_crc=1)
    assert session.health.input_warning(topics, 0.0).startswith('no images on thermal since activation')
    session.observe_frame(1, T0, data_crc=1)
    assert session.health.input_warning(topics, 0.0).startswith('images arrive but no RGB-thermal pair matches')
    time.sleep(0.05)
    log = Log()
    assert session.health.watch(session.issues, topics, log) is True
    assert session.health.stalled == [True, True] and session.statistics()['rgb_rate'] == 0.0
    assert session.issues.worst()[0] == WARN and 'stalled: no new frame for' in session.issues.worst()[1]
    assert session.health.watch(session.issues, topics, log) is False, 'no change: nothing new to say'
    session.stop()
    assert session.issues.current() == [] and session.health.stalled == [False, False]
