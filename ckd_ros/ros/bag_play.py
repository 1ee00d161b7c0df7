"""``ckd-bag play``: replay a converted bag into a running tracker node over DDS and record its answers.

Flow: wait for the node (its ``~/set_target`` service and a subscriber on the image topics), publish
frame 0 and set the target to frame 0's ground-truth box through ``~/set_target`` (stamp = frame 0,
so the node initialises on exactly that pair), then publish the remaining pairs

* ``realtime``: at the bag's timing divided by ``--rate`` (the node drops pairs it cannot keep up
  with, as it would on a robot);
* ``lockstep``: each pair waits for the node's ``TrackedTarget`` with that pair's stamp (or
  ``--timeout``), so every frame is tracked whatever the speed.

Images are published with fresh stamps (the node's clock at publication, so the node's latency
figures are real) unless ``--keep-stamps``. The output bag holds the node's ``<node>/target`` and
``<node>/status`` (log time = receive time) and ``/ground_truth`` restamped like the published
pairs, one record per published pair, so ``ckd-eval score-bag`` needs nothing else.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from ckd_ros.core import bagio
from ckd_ros.msg import TrackedTarget, TrackerStatus
from ckd_ros.ros.conversions import array_to_image_msg, ns_to_stamp, stamp_to_ns
from ckd_ros.srv import SetTarget

IMAGE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
OUTPUT_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


class PlaybackError(RuntimeError):
    """The node did not appear or refused the target."""


class BagPlayer(Node):
    """Publishes the pairs of a bag and records the tracker node's outputs into an output bag."""

    def __init__(self, writer: bagio.BagWriter, node: str, topics: bagio.BagTopics, context=None):
        super().__init__('ckd_bag_play', context=context)
        self.node_name = node.rstrip('/') if node.startswith('/') else '/' + node.rstrip('/')
        self.target_topic = f'{self.node_name}/target'
        self.status_topic = f'{self.node_name}/status'
        self.writer = writer
        self.topics = topics
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self.answers: dict[int, float] = {}      # input stamp -> receive time (s)
        # Received outputs wait here for the thread that opened the writer: a sqlite3 connection refuses
        # use from another thread (the executor's), so callbacks never write to the bag themselves.
        self._received: list[tuple[str, str, int, bytes]] = []
        self.rgb_pub = self.create_publisher(Image, topics.rgb, IMAGE_QOS)
        self.thermal_pub = self.create_publisher(Image, topics.thermal, IMAGE_QOS)
        self.create_subscription(TrackedTarget, self.target_topic, self._on_target, OUTPUT_QOS)
        self.create_subscription(TrackerStatus, self.status_topic, self._on_status, OUTPUT_QOS)
        self.set_target_client = self.create_client(SetTarget, f'{self.node_name}/set_target')

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _record(self, topic: str, msgtype: str, message) -> None:
        self._received.append((topic, msgtype, self.now_ns(), serialize_message(message)))

    def write_received(self) -> None:
        """Write the outputs received so far (call from the thread that opened the writer)."""
        with self._lock:
            received, self._received = self._received, []
        for topic, msgtype, log_time_ns, data in received:
            self.writer.write_raw(topic, msgtype, log_time_ns, data)

    def _on_target(self, msg: TrackedTarget) -> None:
        with self._lock:
            self._record(self.target_topic, bagio.TARGET_TYPE, msg)
            self.answers[stamp_to_ns(msg.header.stamp)] = time.monotonic()
            self._answered.notify_all()

    def _on_status(self, msg: TrackerStatus) -> None:
        with self._lock:
            self._record(self.status_topic, bagio.STATUS_TYPE, msg)

    def publish_pair(self, pair: bagio.BagPair, stamp_ns: int, record_truth: bool = True) -> None:
        """Publish ``pair`` stamped ``stamp_ns``; ``record_truth``: also record its ground truth (once per
        stamp: a pair sent again for a retried set_target is not recorded again)."""
        header_stamp = ns_to_stamp(stamp_ns)
        rgb = array_to_image_msg(pair.rgb, pair.rgb_encoding)
        rgb.header.stamp, rgb.header.frame_id = header_stamp, bagio.RGB_FRAME_ID
        thermal = array_to_image_msg(pair.thermal, pair.thermal_encoding)
        # keep the recorded thermal-RGB offset (approximately paired recordings)
        thermal.header.stamp = ns_to_stamp(stamp_ns + (pair.thermal_stamp_ns - pair.stamp_ns))
        thermal.header.frame_id = bagio.THERMAL_FRAME_ID
        self.write_received()
        if record_truth:
            # the published frame's ground truth, stamped like it: the output bag scores on its own; the
            # per-modality boxes of RGBT234/GTOT bags too, for their benchmarks' protocols
            box = pair.ground_truth if pair.ground_truth is not None else np.full(4, np.nan)
            log_time_ns = self.now_ns()
            self.writer.write_target(self.topics.ground_truth, stamp_ns, box, log_time_ns=log_time_ns)
            for topic, modal_box in ((self.topics.ground_truth_rgb, pair.ground_truth_rgb),
                                     (self.topics.ground_truth_thermal, pair.ground_truth_thermal)):
                if modal_box is not None:
                    self.writer.write_target(topic, stamp_ns, modal_box, log_time_ns=log_time_ns)
        self.rgb_pub.publish(rgb)
        self.thermal_pub.publish(thermal)

    def wait_answer(self, stamp_ns: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while stamp_ns not in self.answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._answered.wait(left)
            return True


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise PlaybackError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.05)


def play(bag: str | Path, out: str | Path, node: str = '/ckd_tracker', mode: str = 'realtime', rate: float = 1.0,
         timeout: float = 10.0, keep_stamps: bool = False, send_init: bool = True,
         topics: bagio.BagTopics = bagio.DEFAULT_TOPICS, storage: str = 'mcap', overwrite: bool = False,
         context=None, log=print) -> dict:
    """Replay ``bag`` into ``node`` and record to ``out``; returns counts (sent, answered, missed)."""
    if mode not in ('realtime', 'lockstep'):
        raise ValueError(f"mode must be 'realtime' or 'lockstep', got {mode!r}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f'rate must be a positive factor, got {rate}')
    own_context = context is None
    if own_context:
        context = rclpy.Context()
        rclpy.init(context=context)
    stats = {'sent': 0, 'answered': 0, 'missed_lockstep': 0}
    try:
        with bagio.BagWriter(out, storage=storage, overwrite=overwrite) as writer:
            # where the played sequence came from (ckd-bag convert): score-bag picks the dataset's protocol
            for key, value in bagio.bag_custom_data(bag).items():
                writer.set_custom_data(key, value)
            player = BagPlayer(writer, node, topics, context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(player)
            spinner = threading.Thread(target=executor.spin, daemon=True)
            spinner.start()
            try:
                _run(player, bag, mode, rate, timeout, keep_stamps, send_init, topics, stats, log)
            finally:
                executor.shutdown(timeout_sec=1.0)
                player.destroy_node()
            player.write_received()
            stats['answered'] = len(player.answers)
    finally:
        if own_context:
            rclpy.try_shutdown(context=context)
    return stats


def _run(player: BagPlayer, bag, mode, rate, timeout, keep_stamps, send_init, topics, stats, log) -> None:
    _wait(lambda: player.rgb_pub.get_subscription_count() > 0 and player.thermal_pub.get_subscription_count() > 0,
          timeout, f'a subscriber on {topics.rgb} and {topics.thermal} (is the node running and active?)')
    if send_init:
        _wait(lambda: player.set_target_client.service_is_ready(), timeout,
              f'the service {player.node_name}/set_target')
    first_bag_ns = None
    start_ns = player.now_ns()
    start_clock = time.monotonic()
    pairs = bagio.read_pairs(bag, topics)
    try:
        for pair in pairs:
            if first_bag_ns is None:
                first_bag_ns = pair.stamp_ns
            offset_s = (pair.stamp_ns - first_bag_ns) / 1e9 / rate
            if keep_stamps:
                stamp = pair.stamp_ns
            elif mode == 'realtime':
                stamp = start_ns + int(round(offset_s * 1e9))
            else:
                stamp = player.now_ns()
            if mode == 'realtime' and pair.index > 0:
                delay = start_clock + offset_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            player.publish_pair(pair, stamp)
            stats['sent'] += 1
            if pair.index == 0 and send_init:
                _set_target(player, pair, stamp, timeout)
                # frame 0 is the initialisation: restart the clock so frame 1 keeps its spacing, and the
                # stamps with it (stamps that stayed behind by the service call's duration would show up
                # as node latency: measured 180 ms p50 instead of ~30 ms in a real-time replay)
                start_clock = time.monotonic() - offset_s
                start_ns = player.now_ns() - int(round(offset_s * 1e9))
                continue
            if mode == 'lockstep' and not player.wait_answer(stamp, timeout):
                stats['missed_lockstep'] += 1
                log(f'no answer for frame {pair.index} within {timeout} s')
    except bagio.BagReadError as exc:
        log(f'input bag damaged, stopping: {exc}')
        stats['error'] = str(exc)
    # outputs still on their way
    time.sleep(min(timeout, 1.0) if mode == 'realtime' else 0.2)


def _set_target(player: BagPlayer, pair: bagio.BagPair, stamp_ns: int, timeout: float) -> None:
    if pair.ground_truth is None or not np.isfinite(pair.ground_truth).all():
        raise PlaybackError('frame 0 has no ground-truth box to initialise the node with (use --no-init and '
                            'set the target yourself)')
    request = SetTarget.Request()
    request.x, request.y, request.width, request.height = (float(v) for v in pair.ground_truth)
    request.stamp = ns_to_stamp(stamp_ns)
    deadline = time.monotonic() + timeout
    while True:
        future = player.set_target_client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(max(0.1, deadline - time.monotonic())):
            raise PlaybackError(f'{player.node_name}/set_target did not answer within {timeout} s')
        response = future.result()
        if response.success:
            return
        if time.monotonic() > deadline:
            raise PlaybackError(f'{player.node_name}/set_target refused the first box: {response.message}')
        # the node may not have buffered frame 0 yet: send it again and retry
        time.sleep(0.1)
        player.publish_pair(pair, stamp_ns, record_truth=False)


def score_bag_command(out, node: str, topics: bagio.BagTopics) -> str:
    """The ``ckd-eval score-bag`` command line that scores the output bag ``out`` of a play."""
    import shlex
    command = ['ckd-eval', 'score-bag', str(out), '--target-topic', f"{node.rstrip('/')}/target"]
    if topics.ground_truth != bagio.DEFAULT_TOPICS.ground_truth:
        command += ['--gt-topic', topics.ground_truth]
    return shlex.join(command)


def main_from_args(args) -> int:
    topics = bagio.BagTopics(args.rgb_topic, args.thermal_topic, args.gt_topic)
    try:
        stats = play(args.bag, args.out, node=args.node, mode=args.mode, rate=args.rate, timeout=args.timeout,
                     keep_stamps=args.keep_stamps, send_init=not args.no_init, topics=topics, storage=args.storage,
                     overwrite=args.overwrite)
    except PlaybackError as exc:
        print(f'ckd-bag play: error: {exc}')
        return 2
    print(f"sent {stats['sent']} pairs, {stats['answered']} answered; output bag {args.out} "
          f"(score with: {score_bag_command(args.out, args.node, topics)})")
    return 1 if stats.get('error') else 0
