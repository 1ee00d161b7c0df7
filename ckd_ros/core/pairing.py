"""Pairing RGB and thermal frames by time stamp, and the buffers that keep tracking off a backlog.

* :class:`ApproximateTimePairer` reproduces the algorithm of the Python
  ``message_filters.ApproximateTimeSynchronizer`` (identical on Humble, Jazzy and Rolling; see
  ``docs/ros_notes.md`` sec. 3.3) so that the node behaves the same with or without
  message_filters installed.  On each arrival: store the item in its input's queue keyed by the stamp
  in nanoseconds (an equal stamp overwrites); trim that queue to ``queue_size`` by deleting the oldest
  stamp; for every other input collect the stamps within ``slop`` of the new one (``|dt| <= slop``),
  sorted by ``|dt|``; walk the Cartesian product in that order and emit the first combination whose
  spread ``max - min`` is strictly below ``slop`` and whose items are all still queued; delete the
  emitted items.  Items that never pair are only evicted by the size cap; this class counts them
  (``frames_unmatched``) where message_filters does not.  Unlike message_filters it returns the match
  instead of calling a callback under its lock, so slow consumers never block producers.  With
  ``max_bytes`` an input's queue is also trimmed (oldest stamp first, counted unmatched, one item
  always kept) while its items hold more than ``max_bytes`` together: 10 queued 8192x8192 RGB frames
  are 2 GB.
* :class:`LatestSlot` holds the newest pair for a worker thread: a new pair replaces an unconsumed
  one (counted as dropped), so the tracker never works on a backlog.
* :class:`RecentPairs` remembers the last few pairs so that a target drawn on an older frame can be
  initialised on that frame.

Both size their items with :func:`payload_bytes` unless told otherwise.
"""
from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

Item = TypeVar('Item')


def payload_bytes(item: Any) -> int:
    """The bytes of image data ``item`` holds: an array's ``nbytes``, a message's ``data`` (a
    ``sensor_msgs/Image``: ``len(data)`` times its item size), a bytes-like object's length, summed over
    a tuple or list (a pair of images); 0 for anything else.  Headers and Python objects are not counted:
    the bounds this serves are about images."""
    if isinstance(item, (tuple, list)):
        return sum(payload_bytes(part) for part in item)
    nbytes = getattr(item, 'nbytes', None)   # numpy arrays, memoryview
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(item, (bytes, bytearray, str)):
        return len(item)
    data = getattr(item, 'data', None)
    if data is None or isinstance(data, str):
        return 0
    nbytes = getattr(data, 'nbytes', None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return len(data) * int(getattr(data, 'itemsize', 1))   # array.array('B') in rclpy messages
    except TypeError:
        return 0


def _check_max_bytes(max_bytes: Optional[int]) -> Optional[int]:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or not max_bytes > 0 \
            or int(max_bytes) != max_bytes:
        raise ValueError(f'max_bytes must be a whole number of bytes > 0 or None, got {max_bytes!r}')
    return int(max_bytes)


@dataclass(frozen=True)
class Match:
    """One synchronized set: the items in input order and their stamps (nanoseconds)."""
    items: tuple
    stamps_ns: tuple


class ApproximateTimePairer:
    """message_filters' Python ApproximateTimeSynchronizer algorithm, returning matches (thread-safe)."""

    def __init__(self, queue_size: int, slop_s: float, num_inputs: int = 2, max_bytes: Optional[int] = None,
                 item_bytes: Callable[[Any], int] = payload_bytes):
        if int(queue_size) != queue_size or queue_size < 1:
            raise ValueError(f'queue_size must be an integer >= 1, got {queue_size}')
        if not (isinstance(slop_s, (int, float)) and math.isfinite(slop_s) and slop_s > 0):
            raise ValueError(f'slop must be a finite number of seconds > 0, got {slop_s}')
        if num_inputs < 2:
            raise ValueError(f'pairing needs at least 2 inputs, got {num_inputs}')
        self.queue_size = int(queue_size)
        self.slop_ns = int(slop_s * 1e9)   # as rclpy's Duration(seconds=slop) converts it
        self.num_inputs = num_inputs
        self.max_bytes = _check_max_bytes(max_bytes)   # per input; None: only queue_size bounds a queue
        self._item_bytes = item_bytes
        self._queues: list[dict[int, Any]] = [{} for _ in range(num_inputs)]
        self._sizes: list[dict[int, int]] = [{} for _ in range(num_inputs)]   # bytes of each queued item
        self.bytes = [0] * num_inputs   # bytes queued per input
        self._lock = threading.Lock()
        self.received = [0] * num_inputs
        self.unmatched = [0] * num_inputs   # evicted by the size or byte cap without ever being paired
        self.matches = 0

    @property
    def frames_unmatched(self) -> int:
        return sum(self.unmatched)

    def queued(self) -> list[int]:
        with self._lock:
            return [len(queue) for queue in self._queues]

    def clear(self) -> None:
        """Drop every queued item; they count as unmatched (they leave without a partner)."""
        with self._lock:
            for index, queue in enumerate(self._queues):
                self.unmatched[index] += len(queue)
                queue.clear()
                self._sizes[index].clear()
                self.bytes[index] = 0

    def add(self, input_index: int, stamp_ns: int, item: Any) -> Optional[Match]:
        """Queue ``item`` of input ``input_index`` stamped ``stamp_ns``; return the match it completes."""
        if not 0 <= input_index < self.num_inputs:
            raise IndexError(f'input index {input_index} outside 0..{self.num_inputs - 1}')
        stamp_ns = int(stamp_ns)
        size = int(self._item_bytes(item)) if self.max_bytes is not None else 0
        with self._lock:
            self.received[input_index] += 1
            my_queue, my_sizes = self._queues[input_index], self._sizes[input_index]
            my_queue[stamp_ns] = item
            self.bytes[input_index] += size - my_sizes.get(stamp_ns, 0)   # an equal stamp replaces
            my_sizes[stamp_ns] = size
            while len(my_queue) > self.queue_size or (
                    self.max_bytes is not None and self.bytes[input_index] > self.max_bytes and len(my_queue) > 1):
                # message_filters deletes the oldest stamp, which may be the one just added.
                oldest = min(my_queue)
                del my_queue[oldest]
                self.bytes[input_index] -= my_sizes.pop(oldest)
                self.unmatched[input_index] += 1
            candidates = []   # per other input: its stamps within slop, closest first
            for other_index, queue in enumerate(self._queues):
                if other_index == input_index:
                    continue
                # A stable sort by |dt|: ties keep the queue's insertion order, as in message_filters.
                near = sorted((s for s in queue if abs(s - stamp_ns) <= self.slop_ns),
                              key=lambda s: abs(s - stamp_ns))
                if not near:
                    return None
                candidates.append(near)
            for combination in itertools.product(*candidates):
                stamps = list(combination)
                stamps.insert(input_index, stamp_ns)
                if max(stamps) - min(stamps) >= self.slop_ns:
                    continue
                if any(s not in queue for queue, s in zip(self._queues, stamps)):
                    continue
                items = tuple(queue.pop(s) for queue, s in zip(self._queues, stamps))
                for index, s in enumerate(stamps):
                    self.bytes[index] -= self._sizes[index].pop(s)
                self.matches += 1
                return Match(items=items, stamps_ns=tuple(stamps))
            return None


class LatestSlot(Generic[Item]):
    """A one-item mailbox between a producer (subscription callbacks) and a worker thread.

    ``put`` replaces an item the worker has not taken yet (the newest item wins; ``dropped`` counts
    the replaced ones); ``take`` waits for an item; ``close`` wakes the worker for good.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._item: Optional[Item] = None
        self._has_item = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Item) -> bool:
        """Store ``item``; return True when it replaced one that was never taken (ignored once closed)."""
        with self._condition:
            if self._closed:
                return False
            replaced = self._has_item
            if replaced:
                self.dropped += 1
            self._item, self._has_item = item, True
            self._condition.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[Item]:
        """The newest item (removing it), or None after ``timeout`` seconds or once closed."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._has_item or self._closed, timeout):
                return None
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def clear(self) -> None:
        with self._condition:
            self._item, self._has_item = None, False

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._item, self._has_item = None, False
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RecentPairs(Generic[Item]):
    """The last ``capacity`` pairs by stamp, for choosing the frame a target box was drawn on.

    With ``max_bytes`` the oldest pairs also leave once the kept ones exceed ``max_bytes`` together
    (each sized by ``item_bytes``, :func:`payload_bytes` when None), so that large images cannot make
    the history a memory hog (30 pairs of 8K RGB are 3 GB); the newest pair is always kept.
    """

    def __init__(self, capacity: int, max_bytes: Optional[int] = None,
                 item_bytes: Optional[Callable[[Item], int]] = None):
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f'capacity must be an integer >= 1, got {capacity}')
        self._pairs: deque[tuple[int, Item, int]] = deque()
        self._capacity = int(capacity)
        self._max_bytes = _check_max_bytes(max_bytes)
        self._item_bytes = item_bytes if item_bytes is not None or max_bytes is None else payload_bytes
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, stamp_ns: int, pair: Item) -> None:
        size = int(self._item_bytes(pair)) if self._item_bytes is not None else 0
        with self._lock:
            self._pairs.append((int(stamp_ns), pair, size))
            self.bytes += size
            while len(self._pairs) > self._capacity or (
                    self._max_bytes is not None and self.bytes > self._max_bytes and len(self._pairs) > 1):
                self.bytes -= self._pairs.popleft()[2]

    def clear(self) -> None:
        with self._lock:
            self._pairs.clear()
            self.bytes = 0

    def newest(self) -> Optional[tuple[int, Item]]:
        """The pair with the largest stamp (arrival order may differ from stamp order)."""
        with self._lock:
            return max(self._pairs, key=lambda entry: entry[0])[:2] if self._pairs else None

    def closest(self, stamp_ns: int) -> Optional[tuple[int, Item]]:
        """The pair whose stamp is closest to ``stamp_ns`` (the later one on a tie)."""
        with self._lock:
            if not self._pairs:
                return None
            return min(self._pairs, key=lambda entry: (abs(entry[0] - stamp_ns), -entry[0]))[:2]
