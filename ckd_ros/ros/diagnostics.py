"""Runtime statistics of the node and their publication on /diagnostics.

``diagnostic_updater`` is used when it imports (a ROS install).  Without it, :class:`FallbackUpdater`
publishes the same layout: a ``diagnostic_msgs/DiagnosticArray`` on the absolute ``/diagnostics``
topic (depth 1), one status per task named ``"<node name>: <task name>"``, with the hardware id and
key/value pairs, every ``diagnostic_updater.period`` seconds.  Either way the updater is created once,
in the node's constructor (a second diagnostic_updater.Updater on the same node raises
ParameterAlreadyDeclared).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

try:  # optional: part of a ROS install, not on PyPI
    import diagnostic_updater as _diagnostic_updater
except ImportError:
    _diagnostic_updater = None

UPDATER_BACKEND = 'diagnostic_updater' if _diagnostic_updater is not None else 'ckd_ros'

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
_LEVEL_RANK = {OK: 0, WARN: 1, ERROR: 2}


class RateMeter:
    """Event rate (Hz) over the last ``window_s`` seconds of a monotonic clock."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._window_s = window_s
        self._clock = clock
        self._events: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            now = self._clock()
            self._events.append(now)
            self._trim(now)

    def rate(self) -> float:
        with self._lock:
            now = self._clock()
            self._trim(now)
            if len(self._events) < 2:
                return 0.0
            # (n - 1) intervals between the first event and now: the rate decays once a stream stops.
            span = now - self._events[0]
            return (len(self._events) - 1) / span if span > 0 else 0.0

    def reset(self) -> None:
        with self._lock:
            self._events.clear()

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0] > self._window_s:
            self._events.popleft()


class SampleWindow:
    """The last ``size`` samples of a quantity: mean, percentiles and maximum (0 when empty)."""

    def __init__(self, size: int):
        self._samples: deque[float] = deque(maxlen=int(size))
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        if math.isfinite(value):
            with self._lock:
                self._samples.append(float(value))

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self) -> dict:
        with self._lock:
            values = sorted(self._samples)
        if not values:
            return {'mean': 0.0, 'p50': 0.0, 'p95': 0.0, 'max': 0.0}
        return {'mean': sum(values) / len(values), 'p50': _percentile(values, 50.0),
                'p95': _percentile(values, 95.0), 'max': values[-1]}


def _percentile(sorted_values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(sorted_values) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


class IssueBoard:
    """Recent problems by kind (e.g. 'rgb input', 'thermal nonfinite'), each with a level and a message;
    the diagnostics report the worst (then newest) one seen within ``hold_s`` seconds."""

    def __init__(self, hold_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._hold_s = hold_s
        self._clock = clock
        self._issues: dict[str, tuple[bytes, str, float]] = {}
        self._lock = threading.Lock()
        self.last_error = ''

    def report(self, kind: str, level: bytes, message: str) -> None:
        with self._lock:
            self._issues[kind] = (level, message, self._clock())
            if level == ERROR or not self.last_error:
                self.last_error = message

    def clear(self) -> None:
        with self._lock:
            self._issues.clear()
            self.last_error = ''

    def worst(self) -> Optional[tuple[bytes, str]]:
        with self._lock:
            now = self._clock()
            recent = [(level, message, when) for level, message, when in self._issues.values()
                      if now - when <= self._hold_s]
        if not recent:
            return None
        # The highest level; among equals the newest.
        level, message, _ = max(recent, key=lambda issue: (_LEVEL_RANK[issue[0]], issue[2]))
        return level, message


class StatusWrapper(DiagnosticStatus):
    """The part of diagnostic_updater.DiagnosticStatusWrapper the node's task uses."""

    def summary(self, level: bytes, message: str) -> None:
        self.level = level
        self.message = message

    def add(self, key: str, value) -> None:
        self.values.append(KeyValue(key=key, value=str(value)))


class FallbackUpdater:
    """A diagnostic_updater.Updater work-alike (same topic, QoS, naming, period parameter)."""

    def __init__(self, node, period: float = 1.0):
        from rcl_interfaces.msg import ParameterDescriptor
        self._node = node
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 1)
        self.period = node.declare_parameter(
            'diagnostic_updater.period', float(period),
            ParameterDescriptor(description='seconds between /diagnostics messages')).value
        self._timer = node.create_timer(self.period, self.update)
        self._tasks: list[tuple[str, Callable]] = []
        self.hwid = ''

    def setHardwareID(self, hwid: str) -> None:  # noqa: N802 (diagnostic_updater's name)
        self.hwid = hwid

    def add(self, name: str, function: Callable) -> None:
        self._tasks.append((name, function))

    def update(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        for name, function in self._tasks:
            status = StatusWrapper(level=ERROR, name=name, message='No message was set', hardware_id=self.hwid)
            function(status)
            array.status.append(DiagnosticStatus(level=status.level, name=f'{self._node.get_name()}: {name}',
                                                 message=status.message, hardware_id=status.hardware_id,
                                                 values=list(status.values)))
        self._publisher.publish(array)

    def force_update(self) -> None:
        self.update()


def create_updater(node, period: float = 1.0):
    """diagnostic_updater.Updater(node, period) when installed, else :class:`FallbackUpdater`."""
    if _diagnostic_updater is not None:
        return _diagnostic_updater.Updater(node, period=period)
    return FallbackUpdater(node, period=period)
