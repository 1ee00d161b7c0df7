"""Approximate-time pairing with message_filters semantics, the latest-wins slot and the pair history."""
import itertools
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy as np

from ckd_ros.core.pairing import ApproximateTimePairer, LatestSlot, RecentPairs, payload_bytes

MS = 1_000_000  # nanoseconds


def _reference_approximate_sync(arrivals, queue_size, slop_ns, num_inputs=2):
    """An independent transcription of message_filters' Python ApproximateTimeSynchronizer.add
    (queues keyed by stamp, search over the other queues, product in |dt| order): the list of
    emitted stamp tuples for a sequence of (input_index, stamp_ns) arrivals."""
    queues = [{} for _ in range(num_inputs)]
    emitted = []
    for my_index, stamp in arrivals:
        my_queue = queues[my_index]
        my_queue[stamp] = (my_index, stamp)
        while len(my_queue) > queue_size:
            del my_queue[min(my_queue)]
        search_queues = queues[:my_index] + queues[my_index + 1:]
        stamps = []
        found_all = True
        for queue in search_queues:
            topic_stamps = [(s, abs(s - stamp)) for s in queue if not abs(s - stamp) > slop_ns]
            if not topic_stamps:
                found_all = False
                break
            stamps.append(sorted(topic_stamps, key=lambda x: x[1]))
        if not found_all:
            continue
        for vv in itertools.product(*[list(zip(*s))[0] for s in stamps]):
            vv = list(vv)
            vv.insert(my_index, stamp)
            qt = list(zip(queues, vv))
            if (max(vv) - min(vv)) < slop_ns and all(t in q for q, t in qt):
                emitted.append(tuple(vv))
                for q, t in qt:
                    del q[t]
                break
    return emitted


def _run(pairer, arrivals):
    out = []
    for index, stamp in arrivals:
        match = pairer.add(index, stamp, (index, stamp))
        if match is not None:
            assert match.items == tuple((i, s) for i, s in enumerate(match.stamps_ns))
            out.append(match.stamps_ns)
    return out


def test_pairs_each_thermal_frame_with_the_closest_rgb_frame_within_slop():
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.02)
    # RGB at 30 Hz (33 ms), thermal at 10 Hz, arriving a little later than the RGB frame they belong to.
    arrivals = []
    for k in range(9):
        arrivals.append((0, k * 33 * MS))
        if k % 3 == 2:
            arrivals.append((1, k * 33 * MS + 4 * MS))
    matches = _run(pairer, arrivals)
    assert matches == [(66 * MS, 70 * MS), (165 * MS, 169 * MS), (264 * MS, 268 * MS)]
    assert pairer.matches == 3 and pairer.received == [9, 3]
    # The unpaired RGB frames are still queued (evicted only by the size cap).
    assert pairer.queued() == [6, 0] and pairer.frames_unmatched == 0


def test_closest_candidate_wins_and_the_spread_must_be_strictly_below_slop():
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.010)
    pairer.add(0, 100 * MS, 'far')
    pairer.add(0, 106 * MS, 'near')
    match = pairer.add(1, 108 * MS, 'thermal')
    assert match.items == ('near', 'thermal') and match.stamps_ns == (106 * MS, 108 * MS)
    # Exactly slop apart: a candidate (|dt| <= slop) but not a match (spread < slop is strict).
    assert pairer.add(1, 110 * MS, 'thermal2') is None
    assert pairer.add(1, 109 * MS, 'thermal3').items == ('far', 'thermal3')


def test_equal_stamp_overwrites_and_size_cap_evicts_the_oldest_counting_it_unmatched():
    pairer = ApproximateTimePairer(queue_size=2, slop_s=0.005)
    pairer.add(0, 10 * MS, 'a')
    pairer.add(0, 10 * MS, 'a2')          # same stamp: replaces, no eviction
    assert pairer.queued() == [1, 0]
    pairer.add(0, 20 * MS, 'b')
    pairer.add(0, 30 * MS, 'c')           # evicts 10 ms
    assert pairer.unmatched == [1, 0] and pairer.queued() == [2, 0]
    # An out-of-order arrival older than everything queued is evicted at once and cannot pair.
    pairer.add(1, 5 * MS, 'late-thermal')
    assert pairer.add(0, 4 * MS, 'old') is None
    assert pairer.unmatched == [2, 0]
    assert pairer.add(1, 21 * MS, 'thermal').items == ('b', 'thermal')
    assert pairer.add(1, 31 * MS, 'thermal').items == ('c', 'thermal')
    assert pairer.matches == 2


def test_rejects_invalid_settings_with_the_parameter_named():
    with pytest.raises(ValueError, match='queue_size'):
        ApproximateTimePairer(queue_size=0, slop_s=0.1)
    with pytest.raises(ValueError, match='slop'):
        ApproximateTimePairer(queue_size=3, slop_s=float('nan'))
    with pytest.raises(ValueError, match='slop'):
        ApproximateTimePairer(queue_size=3, slop_s=0.0)
    with pytest.raises(IndexError):
        ApproximateTimePairer(queue_size=3, slop_s=0.1).add(2, 0, None)


def test_max_bytes_bounds_each_queue_evicting_the_oldest_counting_them_unmatched():
    """10 queued frames of 8192x8192 RGB are 2 GB: with max_bytes a queue holds what fits (at least the newest
    frame).  Before: only queue_size bounded the queues."""
    frame = np.zeros(1000, np.uint8)   # stands for an image: 1000 bytes
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.005, max_bytes=2500)
    for k in range(5):
        assert pairer.add(0, (10 + k) * MS * 10, frame) is None
    assert pairer.queued() == [2, 0] and pairer.bytes == [2000, 0] and pairer.unmatched == [3, 0]
    # the two newest RGB frames (130 and 140 ms) are the ones left to pair
    assert pairer.add(1, 131 * MS, np.ones(10, np.uint8)).stamps_ns == (130 * MS, 131 * MS)
    assert pairer.add(1, 141 * MS, np.ones(10, np.uint8)).stamps_ns == (140 * MS, 141 * MS)
    assert pairer.bytes == [0, 0] and pairer.queued() == [0, 0] and pairer.frames_unmatched == 3
    # one frame over the bound alone is kept (it may still pair); an equal stamp replaces, bytes follow
    pairer.add(0, 200 * MS, np.zeros(4000, np.uint8))
    assert pairer.queued() == [1, 0] and pairer.bytes == [4000, 0]
    pairer.add(0, 200 * MS, np.zeros(100, np.uint8))
    assert pairer.queued() == [1, 0] and pairer.bytes == [100, 0]
    # a late frame older than everything queued leaves first, as with the queue_size cap
    pairer.add(0, 210 * MS, np.zeros(2000, np.uint8))
    pairer.add(0, 150 * MS, np.zeros(1000, np.uint8))
    assert pairer.queued() == [2, 0] and pairer.bytes == [2100, 0] and pairer.unmatched == [4, 0]
    pairer.clear()
    assert pairer.bytes == [0, 0] and pairer.unmatched == [6, 0]
    with pytest.raises(ValueError, match='max_bytes'):
        ApproximateTimePairer(queue_size=3, slop_s=0.1, max_bytes=0)


def test_without_max_bytes_the_queues_are_bounded_by_count_only():
    pairer = ApproximateTimePairer(queue_size=10, slop_s=0.005)
    for k in range(5):
        pairer.add(0, k * 10 * MS, np.zeros(1000, np.uint8))
    assert pairer.queued() == [5, 0] and pairer.unmatched == [0, 0]


def test_payload_bytes_is_the_one_measure_of_images_for_the_queues_and_the_history():
    class Msg:   # a sensor_msgs/Image as rclpy builds it: data is array.array('B')
        def __init__(self, n):
            import array
            self.data = array.array('B', bytes(n))
            self.header = 'not counted'
    assert payload_bytes(Msg(300)) == 300
    assert payload_bytes((Msg(300), Msg(20))) == 320
    assert payload_bytes(np.zeros((4, 5, 3), np.uint16)) == 120
    assert payload_bytes(b'abcd') == 4 and payload_bytes(7) == 0 and payload_bytes((0, 'pair')) == 4
    history = RecentPairs(capacity=10, max_bytes=700)   # item_bytes defaults to payload_bytes
    for stamp in range(4):
        history.add(stamp, (Msg(300), Msg(20)))
    assert len(history) == 2 and history.bytes == 640


def test_the_subscriptions_pass_max_bytes_to_the_pairer_and_trim_message_filters_queues(monkeypatch):
    """Both backends of ros/synchronizer.py bound their queues by bytes (message_filters faked here: its
    queues keyed by stamp in ns under a lock, callbacks in registration order)."""
    pytest.importorskip('sensor_msgs.msg')
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image

    from ckd_ros.ros import synchronizer

    class Node:
        def __init__(self):
            self.callbacks = {}

        def create_subscription(self, msg_type, topic, callback, qos, callback_group=None):
            self.callbacks[topic] = callback
            return topic

        def destroy_subscription(self, subscription):
            self.callbacks.pop(subscription)

    class FakeSubscriber:
        def __init__(self, node, msg_type, topic, qos_profile=None, callback_group=None):
            self.callbacks = {}
            self.sub = node.create_subscription(msg_type, topic, self.signal, qos_profile)

        def registerCallback(self, callback, *args):
            self.callbacks[len(self.callbacks)] = (callback, args)

        def signal(self, msg):
            for callback, args in list(self.callbacks.values()):
                callback(msg, *args)

    class FakeApproximateTimeSynchronizer:
        def __init__(self, filters, queue_size, slop):
            self.queues = [{} for _ in filters]
            self.lock = threading.Lock()
            self.queue_size = queue_size
            for index, image_filter in enumerate(filters):
                image_filter.registerCallback(self.add, self.queues[index], index)

        def add(self, msg, queue, index):
            with self.lock:
                queue[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = msg
                while len(queue) > self.queue_size:
                    del queue[min(queue)]

        def registerCallback(self, callback):
            pass

    def image(stamp_ms, size=1000):
        msg = Image(height=1, width=size, encoding='mono8', step=size)
        msg.data = bytes(size)
        msg.header.stamp = Time(sec=0, nanosec=stamp_ms * MS)
        return msg

    fake = type('message_filters', (), {'Subscriber': FakeSubscriber,
                                         'ApproximateTimeSynchronizer': FakeApproximateTimeSynchronizer})
    for backend in (None, fake):
        monkeypatch.setattr(synchronizer, '_message_filters', backend)
        node = Node()
        inputs = synchronizer.PairedImageSubscriptions(node, 'rgb', 'thermal', 10, 10, 0.005, on_pair=print,
                                                       on_frame=lambda index, msg: None, max_bytes=2500)
        for k in range(5):
            node.callbacks['rgb'](image(10 * k))
        queued = inputs._pairer.queued() if backend is None else [len(q) for q in inputs._synchronizer.queues]
        assert queued == [2, 0] and inputs.frames_unmatched == 3, backend
        inputs.destroy()


arrival_lists = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 60).map(lambda t: t * MS)),
                         min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(arrivals=arrival_lists, queue_size=st.integers(1, 6), slop_ms=st.integers(1, 15))
def test_matches_the_message_filters_algorithm_on_any_arrival_order(arrivals, queue_size, slop_ms):
    pairer = ApproximateTimePairer(queue_size=queue_size, slop_s=slop_ms / 1000)
    got = _run(pairer, arrivals)
    assert got == _reference_approximate_sync(arrivals, queue_size, slop_ms * MS)
    for rgb_stamp, thermal_stamp in got:
        assert abs(rgb_stamp - thermal_stamp) < slop_ms * MS
    # Every arrival is either emitted, still queued, evicted unmatched, or overwritten by an equal stamp.
    overwritten = len(arrivals) - len(set(arrivals))
    assert 2 * len(got) + sum(pairer.queued()) + pairer.frames_unmatched <= len(arrivals)
    assert 2 * len(got) + sum(pairer.queued()) + pairer.frames_unmatched >= len(arrivals) - overwritten


@settings(max_examples=100, deadline=None)
@given(arrivals=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30).map(lambda t: t * MS)),
                         min_size=1, max_size=30),
       queue_size=st.integers(1, 4), slop_ms=st.integers(1, 10))
def test_three_inputs_match_the_reference_too(arrivals, queue_size, slop_ms):
    pairer = ApproximateTimePairer(queue_size=queue_size, slop_s=slop_ms / 1000, num_inputs=3)
    got = _run(pairer, arrivals)
    assert got == _reference_approximate_sync(arrivals, queue_size, slop_ms * MS, num_inputs=3)


def test_latest_slot_keeps_only_the_newest_item_and_counts_drops():
    slot = LatestSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0.01) is None
    slot.put(4)
    slot.clear()
    assert slot.take(timeout=0.01) is None and slot.dropped == 2


def test_latest_slot_wakes_a_waiting_worker_and_close_releases_it():
    slot = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    time.sleep(0.05)
    slot.put('pair')
    worker.join(timeout=2)
    assert got == ['pair']
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(timeout=2)
    assert not waiter.is_alive() and got[-1] is None and time.monotonic() - started < 2
    assert slot.put('after close') is False and slot.closed
    assert slot.take(timeout=0) is None


def test_recent_pairs_finds_the_closest_and_newest_stamp():
    history = RecentPairs(capacity=3)
    assert history.closest(0) is None and history.newest() is None
    for stamp in (100, 300, 200, 400):      # arrival order differs from stamp order; 100 falls out
        history.add(stamp, f'pair{stamp}')
    assert len(history) == 3
    assert history.newest() == (400, 'pair400')
    assert history.closest(90) == (200, 'pair200')
    assert history.closest(251) == (300, 'pair300')
    assert history.closest(250) == (300, 'pair300')   # tie: the later frame
    with pytest.raises(ValueError, match='capacity'):
        RecentPairs(capacity=0)
