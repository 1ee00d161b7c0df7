"""The publication of the node's diagnostics on /diagnostics (the statistics behind them, ROS-free, are
:mod:`ckd_ros.core.health`).

``diagnostic_updater`` is used when it imports (a ROS install).  Without it, :class:`FallbackUpdater`
publishes the same layout: a ``diagnostic_msgs/DiagnosticArray`` on the absolute ``/diagnostics``
topic (depth 1), one status per task named ``"<node name>: <task name>"``, with the hardware id and
key/value pairs, every ``diagnostic_updater.period`` seconds.  Either way the updater is created once,
in the node's constructor (a second diagnostic_updater.Updater on the same node raises
ParameterAlreadyDeclared).
"""
from __future__ import annotations

from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from ckd_ros.core.health import ERROR, OK, WARN
from ckd_ros.ros.params import DIAGNOSTIC_PERIOD_PARAMETER, ParameterError, read_diagnostic_period

try:  # optional: part of a ROS install, not on PyPI
    import diagnostic_updater as _diagnostic_updater
except ImportError:
    _diagnostic_updater = None

UPDATER_BACKEND = 'diagnostic_updater' if _diagnostic_updater is not None else 'ckd_ros'

# the core's levels are the message's: published as they are
assert (OK, WARN, ERROR) == (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR)


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
