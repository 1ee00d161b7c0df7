"""The RGB + thermal image subscriptions, paired by approximate time.

``message_filters.ApproximateTimeSynchronizer`` when message_filters imports (a ROS install),
otherwise :class:`ckd_ros.core.pairing.ApproximateTimePairer` on two plain subscriptions; the
algorithm is the same (see that module).  Either way the subscriptions take an explicit QoS
(message_filters.Subscriber defaults to reliable depth 10, which silently refuses best-effort camera
drivers) and are destroyed together by :meth:`PairedImageSubscriptions.destroy`.

``max_bytes`` bounds each input's queue by the bytes of its images as well as by ``queue_size`` (the
oldest stamps leave first, one frame always stays): ApproximateTimePairer's own bound, and with
message_filters a trim of its queue after each arrival (under its lock, before the next frame).
"""
from __future__ import annotations

from typing import Callable, Optional

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ckd_ros.core.pairing import ApproximateTimePairer, payload_bytes
from ckd_ros.ros.conversions import stamp_to_ns

try:  # optional: part of a ROS install, not on PyPI
    import message_filters as _message_filters
except ImportError:
    _message_filters = None

SYNC_BACKEND = 'message_filters' if _message_filters is not None else 'ckd_ros.core.pairing'

RGB, THERMAL = 0, 1


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """The image subscriptions' QoS (``input.reliability`` 'best_effort' or 'reliable', ``input.depth``)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                      else ReliabilityPolicy.RELIABLE)


class PairedImageSubscriptions:
    """Subscribes to ``rgb_topic`` and ``thermal_topic``; calls ``on_pair(rgb_msg, thermal_msg)`` for each
    synchronized pair and ``on_frame(input_index, msg)`` for every frame (before pairing)."""

    def __init__(self, node, rgb_topic: str, thermal_topic: str, qos, queue_size: int, slop_s: float,
                 on_pair: Callable, on_frame: Callable, callback_group=None, max_bytes: Optional[int] = None):
        self._node = node
        self.max_bytes = max_bytes
        self._on_pair = on_pair
        self._on_frame = on_frame
        self.received = [0, 0]
        self.backend = SYNC_BACKEND
        if _message_filters is not None:
            self._filters = [
                _message_filters.Subscriber(node, Image, topic, qos_profile=qos, callback_group=callback_group)
                for topic in (rgb_topic, thermal_topic)]
            for index, image_filter in enumerate(self._filters):
                image_filter.registerCallback(self._count, index)
            self._synchronizer = _message_filters.ApproximateTimeSynchronizer(self._filters, queue_size, slop_s)
            self._synchronizer.registerCallback(self._on_pair)
            self._subscriptions = [image_filter.sub for image_filter in self._filters]
            self._pairer = None
            self._matches_seen = 0
            self._synchronizer.registerCallback(self._count_match)
            if max_bytes is not None:
                # registered after the synchronizer's own input callbacks, so it runs after each add
                for index, image_filter in enumerate(self._filters):
                    image_filter.registerCallback(self._trim_to_max_bytes, index)
        else:
            self._pairer = ApproximateTimePairer(queue_size=queue_size, slop_s=slop_s, max_bytes=max_bytes)
            self._subscriptions = [
                node.create_subscription(Image, topic, lambda msg, index=index: self._on_message(index, msg), qos,
                                         callback_group=callback_group)
                for index, topic in enumerate((rgb_topic, thermal_topic))]

    def _count(self, msg, index):
        self.received[index] += 1
        self._on_frame(index, msg)

    def _count_match(self, *msgs):
        self._matches_seen += 1

    def _trim_to_max_bytes(self, msg, index):
        """message_filters' queue ``index`` back under ``max_bytes``: the oldest stamps leave (counted in
        :attr:`frames_unmatched`, which message_filters derives from what is queued), the newest stays."""
        with self._synchronizer.lock:
            queue = self._synchronizer.queues[index]
            total = sum(payload_bytes(queued) for queued in queue.values())
            while total > self.max_bytes and len(queue) > 1:
                total -= payload_bytes(queue.pop(min(queue)))

    def _on_message(self, index: int, msg: Image) -> None:
        self.received[index] += 1
        self._on_frame(index, msg)
        match = self._pairer.add(index, stamp_to_ns(msg.header.stamp), msg)
        if match is not None:
            self._on_pair(*match.items)

    @property
    def pairs_made(self) -> int:
        return self._pairer.matches if self._pairer is not None else self._matches_seen

    @property
    def frames_unmatched(self) -> int:
        """Frames that left the pairing queues without a partner."""
        if self._pairer is not None:
            return self._pairer.frames_unmatched
        # message_filters does not count evictions: received - paired - still queued (equal-stamp
        # overwrites count as unmatched too).
        queued = sum(len(queue) for queue in self._synchronizer.queues)
        return max(0, sum(self.received) - 2 * self._matches_seen - queued)

    def reset(self) -> None:
        """Drop every frame waiting for a partner (time went backwards: queued frames from before the
        jump would otherwise hold the queues, whose size cap evicts the *oldest stamp*, i.e. every new
        frame, so nothing would pair until the stamps caught up again). Statistics are kept."""
        if self._pairer is not None:
            self._pairer.clear()
            return
        with self._synchronizer.lock:
            for queue in self._synchronizer.queues:
                queue.clear()

    def destroy(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        if self._pairer is not None:
            self._pairer.clear()
