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

from ckd_ros.ros.params import DIAGNOSTIC_PERIOD_PARAMETER, ParameterError, read_diagnostic_period

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
    the diagnostics report the worst (then newest) one seen within ``hold_s`` seconds.

    *Conditions* (:meth:`set_condition`, e.g. a stalled input) are problems that last until they are
    cleared rather than events: they never expire and do not touch ``last_error`` (which names the
    last failure, not a state the status rates already show)."""

    def __init__(self, hold_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._hold_s = hold_s
        self._clock = clock
        self._issues: dict[str, tuple[bytes, str, float]] = {}
        self._conditions: dict[str, tuple[bytes, str, float]] = {}
        self._lock = threading.Lock()
        self.last_error = ''

    def report(self, kind: str, level: bytes, message: str) -> None:
        with self._lock:
            self._issues[kind] = (level, message, self._clock())
            if level == ERROR or not self.last_error:
                self.last_error = message

    def set_condition(self, kind: str, level: bytes, message: str, since: Optional[float] = None) -> None:
        """A lasting problem, reported until :meth:`clear_condition`; ``since`` orders it among equals."""
        with self._lock:
            self._conditions[kind] = (level, message, self._clock() if since is None else since)

    def clear_condition(self, kind: str) -> None:
        with self._lock:
            self._conditions.pop(kind, None)

    def clear(self) -> None:
        with self._lock:
            self._issues.clear()
            self._conditions.clear()
            self.last_error = ''

    def current(self) -> list[tuple[bytes, str]]:
        """Every recent issue and every condition, the highest level first, among equals the newest."""
        with self._lock:
            now = self._clock()
            items = [(level, message, when) for level, message, when in self._issues.values()
                     if now - when <= self._hold_s]
            items += list(self._conditions.values())
        items.sort(key=lambda issue: (_LEVEL_RANK[issue[0]], issue[2]), reverse=True)
        return [(level, message) for level, message, _ in items]

    def worst(self) -> Optional[tuple[bytes, str]]:
        items = self.current()
        return items[0] if items else None


def summarize_issues(issues: list[tuple[bytes, str]], limit: int = 3) -> Optional[tuple[bytes, str]]:
    """One diagnostic summary for several simultaneous problems: the highest level, and the messages
    (``issues`` as :meth:`IssueBoard.current` orders them) joined by '; ', at most ``limit`` of them."""
    if not issues:
        return None
    level = max((issue[0] for issue in issues), key=lambda lv: _LEVEL_RANK[lv])
    messages = []
    for _, message in issues:
        if message not in messages:
            messages.append(message)
    text = '; '.join(messages[:limit])
    if len(messages) > limit:
        text += f' (+{len(messages) - limit} more)'
    return level, text


# What StreamWatch.observe says about one frame.
FRESH, STALE_STAMP, ZERO_STAMP, JUMPED_BACK = 'fresh', 'stale stamp', 'zero stamp', 'jumped back'


class StreamWatch:
    """Freshness of one input stream: is it still delivering new frames?

    A frame is *fresh* when its stamp is later than every stamp seen before on this input.  A frame with
    an equal or older stamp (a frozen driver repeating its last frame, a duplicate, a frame overtaken by
    a newer one) is *stale*; a stamp of zero means the driver does not stamp at all; a stamp more than
    ``jump_back_s`` before the newest means time went backwards (a bag loops, a simulation restarts):
    the watch starts over from it.  The input is *stalled* when no fresh frame arrived for
    ``timeout_s`` seconds (or none at all since :meth:`restart`), measured on a monotonic clock so that
    the check works whatever the stamps do.  Pixel-identical consecutive frames with new stamps (a
    driver re-stamping a frozen image, or a perfectly uniform scene) are counted by a CRC of the data:
    :meth:`identical_for` says for how long the content has not changed.
    """

    def __init__(self, timeout_s: float, jump_back_s: float, clock: Callable[[], float] = time.monotonic):
        self.timeout_s = float(timeout_s)
        self.jump_back_ns = int(jump_back_s * 1e9)
        self._clock = clock
        self.restart()

    def restart(self) -> None:
        """Forget everything (activation): the input is stalled until its first fresh frame."""
        self.started = self._clock()
        self.frames = 0                 # frames seen since restart
        self.fresh_frames = 0
        self.stale_frames = 0           # equal or older stamps
        self.zero_stamps = 0
        self.jumps_back = 0
        self.identical_frames = 0       # frames whose pixels equal the previous frame's
        self.identical_run = 0          # ... of them in a row, up to the newest frame
        self.last_fresh = None          # monotonic time of the last fresh frame
        self.newest_stamp_ns = None
        self._last_crc = None
        self._changed_at = None         # monotonic time of the last frame whose content changed
        self._last_frame_at = None

    def forget_stamps(self) -> None:
        """Time went backwards on another input: accept the next stamp of this one as it comes."""
        self.newest_stamp_ns = None

    def observe(self, stamp_ns: int, data_crc: Optional[int] = None) -> str:
        now = self._clock()
        self.frames += 1
        self._last_frame_at = now
        if data_crc is not None:
            if data_crc == self._last_crc:
                self.identical_frames += 1
                self.identical_run += 1
            else:
                self.identical_run = 0
                self._changed_at = now
            self._last_crc = data_crc
        if stamp_ns == 0:
            self.zero_stamps += 1
            return ZERO_STAMP
        verdict = FRESH
        if self.newest_stamp_ns is not None and stamp_ns <= self.newest_stamp_ns:
            if self.newest_stamp_ns - stamp_ns <= self.jump_back_ns:
                self.stale_frames += 1
                return STALE_STAMP
            self.jumps_back += 1
            verdict = JUMPED_BACK
        self.newest_stamp_ns = stamp_ns
        self.fresh_frames += 1
        self.last_fresh = now
        return verdict

    def silent_for(self) -> float:
        """Seconds since the last fresh frame (since :meth:`restart` when there was none)."""
        return self._clock() - (self.last_fresh if self.last_fresh is not None else self.started)

    def stalled(self) -> bool:
        return self.silent_for() > self.timeout_s

    def identical_for(self) -> float:
        """For how many seconds the arriving frames have repeated the same pixels (0 while the content
        changes, and without CRCs)."""
        if self.identical_run == 0 or self._changed_at is None:
            return 0.0
        return self._last_frame_at - self._changed_at


class StatusWrapper(DiagnosticStatus):
    """The part of diagnostic_updater.DiagnosticStatusWrapper the node's task uses."""

    def summary(self, level: bytes, message: str) -> None:
        self.level = level
        self.message = message

    def add(self, key: str, value: str) -> None:
        # Strict like the real DiagnosticStatusWrapper, whose publish fails on a non-str value: a caller
        # passing an int or bool must fail here too, not only on a robot with diagnostic_updater.
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f'diagnostic key and value must be str, got {type(key).__name__}: '
                            f'{type(value).__name__} for {key!r}')
        self.values.append(KeyValue(key=key, value=value))


class FallbackUpdater:
    """A diagnostic_updater.Updater work-alike (same topic, QoS, naming, period parameter).

    The period parameter is declared dynamically typed and checked here: an invalid value from the
    command line or a parameter file (a string, 0, a negative number) is reported in :attr:`problem`
    and the default period is used, instead of failing the node's constructor (an integer is accepted).
    Setting :attr:`period` restarts the timer, as diagnostic_updater's ``period`` setter does."""

    def __init__(self, node, period: float = 1.0):
        from rcl_interfaces.msg import ParameterDescriptor
        self._node = node
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 1)
        value = node.declare_parameter(
            DIAGNOSTIC_PERIOD_PARAMETER, float(period),
            ParameterDescriptor(description='seconds between /diagnostics messages', dynamic_typing=True)).value
        self.problem = ''
        try:
            self._period = read_diagnostic_period(value)
        except ParameterError as error:
            self.problem = f'{error}: publishing every {float(period):g} s instead'
            self._period = float(period)
        self._timer = node.create_timer(self._period, self.update)
        self._tasks: list[tuple[str, Callable]] = []
        self.hwid = ''

    @property
    def period(self) -> float:
        return self._period

    @period.setter
    def period(self, period: float) -> None:
        self._period = read_diagnostic_period(period)
        self._node.destroy_timer(self._timer)
        self._timer = self._node.create_timer(self._period, self.update)

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
    """diagnostic_updater.Updater(node, period) when installed, else :class:`FallbackUpdater`.

    The real Updater declares its period statically typed as a double and creates its timer from it
    without a check: an integer from the command line or a parameter file raised in the node's
    constructor, and -1, 'abc' or 1e12 killed the node at start-up. So the node's override is checked
    (and an integer made a float) before the Updater reads it; an invalid one is replaced by ``period`` and
    reported in the returned updater's ``problem`` (as :class:`FallbackUpdater` does)."""
    if _diagnostic_updater is None:
        return FallbackUpdater(node, period=period)
    problem = _check_period_override(node, period)
    updater = _diagnostic_updater.Updater(node, period=period)
    updater.problem = problem
    return updater


def _check_period_override(node, default: float) -> str:
    from rclpy.parameter import Parameter
    # rclpy keeps the -p / --params-file values of a node here until they are declared (Humble to Rolling)
    overrides = getattr(node, '_parameter_overrides', None)
    if not isinstance(overrides, dict) or DIAGNOSTIC_PERIOD_PARAMETER not in overrides:
        return ''
    try:
        value = read_diagnostic_period(overrides[DIAGNOSTIC_PERIOD_PARAMETER].value)
        problem = ''
    except ParameterError as error:
        value, problem = float(default), f'{error}: publishing every {float(default):g} s instead'
    overrides[DIAGNOSTIC_PERIOD_PARAMETER] = Parameter(DIAGNOSTIC_PERIOD_PARAMETER, value=value)
    return problem


def set_updater_period(node, updater, period: float) -> None:
    """Change the period of either updater. The real Updater's ``period`` setter creates a new timer and
    leaves the old one running (it only resets it): /diagnostics went out at both rates. Its old timer is
    destroyed here."""
    old_timer = getattr(updater, 'timer', None) if _diagnostic_updater is not None and not isinstance(
        updater, FallbackUpdater) else None
    updater.period = period
    if old_timer is not None and old_timer is not getattr(updater, 'timer', None):
        node.destroy_timer(old_timer)
