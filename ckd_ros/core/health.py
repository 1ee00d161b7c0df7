"""The health of the node's inputs and outputs, without ROS: freshness of each input stream, rates,
latency and pair-dt statistics, recent problems and one summary of them.

:class:`InputHealth` gathers what the tracker node reports in ``~/status`` and ``/diagnostics`` about
its two inputs (index 0 = RGB, 1 = thermal, as :mod:`ckd_ros.ros.synchronizer` numbers them) since
activation; :class:`IssueBoard` holds the problems the diagnostics summarize.  The levels are the values
of ``diagnostic_msgs/DiagnosticStatus`` (``OK``, ``WARN``, ``ERROR``), so the ROS layer
(:mod:`ckd_ros.ros.diagnostics`) publishes them as they are.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Optional

# diagnostic_msgs/DiagnosticStatus levels (a byte each, as the generated message class defines them)
OK, WARN, ERROR = b'\x00', b'\x01', b'\x02'
_LEVEL_RANK = {OK: 0, WARN: 1, ERROR: 2}
INPUT_NAMES = ('rgb', 'thermal')   # by input index, as the issue kinds and diagnostic keys name them


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


class InputHealth:
    """Everything the node reports about its inputs and outputs since activation: one :class:`StreamWatch`
    per input, the stall and frozen-pixel conditions they raise, rates, latency and pair-dt windows (over
    the last ``stats_window`` samples) and the drop counters.  The :class:`ckd_ros.core.session.TrackingSession`
    feeds it; the node's watchdog timer calls :meth:`watch`."""

    def __init__(self, stats_window: int = 100):
        self.streams = [StreamWatch(1.0, 1.0), StreamWatch(1.0, 1.0)]
        self.stalled, self.frozen = [False, False], [False, False]
        self.rgb_rate, self.thermal_rate = RateMeter(), RateMeter()
        self.pair_rate, self.output_rate = RateMeter(), RateMeter()
        self.resize(stats_window)
        self.reset()

    def resize(self, stats_window: int) -> None:
        """New latency and pair-dt windows of ``stats_window`` samples (configure)."""
        self.latency = SampleWindow(stats_window)
        self.pair_dt_window = SampleWindow(stats_window)

    def reset(self) -> None:
        """Forget the rates, windows and counters (activation)."""
        for meter in (self.rgb_rate, self.thermal_rate, self.pair_rate, self.output_rate):
            meter.reset()
        self.latency.clear()
        self.pair_dt_window.clear()
        self.pair_dt_abs_sum, self.pairs_seen, self.frames_rejected, self.frames_future = 0.0, 0, 0, 0
        self.frames_unmatched_at_stop = 0
        self.pairs_out_of_order = 0     # not newer than the last tracked pair: skipped
        self.time_restarts = 0

    def restart_streams(self, timeout_s: float, jump_back_s: float) -> None:
        self.streams = [StreamWatch(timeout_s, jump_back_s) for _ in range(2)]
        self.stalled, self.frozen = [False, False], [False, False]

    def tick_input(self, index: int) -> None:
        (self.rgb_rate if index == 0 else self.thermal_rate).tick()

    def note_pair(self, pair_dt: float) -> None:
        self.pairs_seen += 1
        self.pair_dt_abs_sum += abs(pair_dt)
        self.pair_dt_window.add(abs(pair_dt))
        self.pair_rate.tick()

    def note_output(self, latency: float) -> None:
        self.latency.add(latency)
        self.output_rate.tick()

    def statistics(self, pairs_made: Optional[int] = None, frames_unmatched: Optional[int] = None,
                   slot_dropped: int = 0) -> dict:
        """Rates, latency and counters. ``pairs_made`` / ``frames_unmatched``: the pairing's own counts
        while it runs (None: the counts kept here); ``slot_dropped``: pairs replaced before the worker
        took them."""
        streams = self.streams
        rgb_stalled, thermal_stalled = streams[0].stalled(), streams[1].stalled()
        # A stalled input reports 0 at once, not a rate decaying over the meter's window; so do the pairs
        # and outputs, which need both inputs.
        no_pairs = rgb_stalled or thermal_stalled
        return {
            'rgb_rate': 0.0 if rgb_stalled else self.rgb_rate.rate(),
            'thermal_rate': 0.0 if thermal_stalled else self.thermal_rate.rate(),
            'pair_rate': 0.0 if no_pairs else self.pair_rate.rate(),
            'output_rate': 0.0 if no_pairs else self.output_rate.rate(),
            'latency': self.latency.summary(),
            'pairs_made': pairs_made if pairs_made is not None else self.pairs_seen,
            'pairs_dropped': slot_dropped + self.pairs_out_of_order,
            'pairs_out_of_order': self.pairs_out_of_order,
            'frames_unmatched': frames_unmatched if frames_unmatched is not None else self.frames_unmatched_at_stop,
            'frames_rejected': self.frames_rejected,
            'pair_dt_mean_abs': self.pair_dt_abs_sum / self.pairs_seen if self.pairs_seen else 0.0,
            'pair_dt_max_abs': self.pair_dt_window.summary()['max'],
        }

    def diagnostic_values(self, stats: dict) -> list[tuple[str, object]]:
        """The /diagnostics key/values of :meth:`statistics` and the streams, in the node's order."""
        latency, streams = stats['latency'], self.streams
        return [
            ('rgb_rate_hz', f"{stats['rgb_rate']:.2f}"), ('thermal_rate_hz', f"{stats['thermal_rate']:.2f}"),
            ('pair_rate_hz', f"{stats['pair_rate']:.2f}"), ('output_rate_hz', f"{stats['output_rate']:.2f}"),
            ('pair_dt_mean_abs_s', f"{stats['pair_dt_mean_abs']:.4f}"),
            ('pair_dt_max_abs_s', f"{stats['pair_dt_max_abs']:.4f}"),
            ('latency_mean_s', f"{latency['mean']:.4f}"), ('latency_p50_s', f"{latency['p50']:.4f}"),
            ('latency_p95_s', f"{latency['p95']:.4f}"), ('latency_max_s', f"{latency['max']:.4f}"),
            ('pairs_made', stats['pairs_made']), ('pairs_dropped', stats['pairs_dropped']),
            ('frames_unmatched', stats['frames_unmatched']), ('frames_rejected', stats['frames_rejected']),
            ('pairs_out_of_order', stats['pairs_out_of_order']),
            ('input_timeout_s', f'{streams[0].timeout_s:g}'),
            ('rgb_stalled', streams[0].frames > 0 and streams[0].stalled()),
            ('thermal_stalled', streams[1].frames > 0 and streams[1].stalled()),
            ('rgb_silent_s', f'{streams[0].silent_for():.2f}'),
            ('thermal_silent_s', f'{streams[1].silent_for():.2f}'),
            ('frames_stale_stamp', streams[0].stale_frames + streams[1].stale_frames),
            ('frames_zero_stamp', streams[0].zero_stamps + streams[1].zero_stamps),
            ('frames_future_stamp', self.frames_future),
            ('frames_identical', streams[0].identical_frames + streams[1].identical_frames),
            ('time_restarts', self.time_restarts)]

    def watch(self, issues: IssueBoard, topics, log) -> bool:
        """The watchdog: report inputs that stopped delivering new frames, or keep repeating the same pixels,
        as conditions on ``issues`` (and log the changes); True when a condition started or ended."""
        changed = False
        for index, watch in enumerate(self.streams):
            name, topic = INPUT_NAMES[index], topics[index]
            stalled = watch.frames > 0 and watch.stalled()
            if stalled:
                silent = watch.silent_for()
                detail = ''
                if watch.stale_frames or watch.zero_stamps:
                    detail = (f'; {watch.stale_frames} frames repeated or went back to an older stamp, '
                              f'{watch.zero_stamps} had a zero stamp')
                issues.set_condition(
                    f'{name} stalled', WARN,
                    f'{topic} stalled: no new frame for {silent:.1f} s (input.timeout {watch.timeout_s:g} s)'
                    f'{detail}', since=time.monotonic() - silent + watch.timeout_s)
                if not self.stalled[index]:
                    log.warning(f'{topic} stalled: no frame with a new stamp for {silent:.1f} s')
            elif self.stalled[index]:
                issues.clear_condition(f'{name} stalled')
                log.info(f'{topic} resumed')
            changed |= stalled != self.stalled[index]
            self.stalled[index] = stalled
            identical = watch.identical_for()
            frozen = not stalled and identical > watch.timeout_s
            if frozen:
                issues.set_condition(
                    f'{name} frozen', WARN,
                    f'{topic}: the last {watch.identical_run + 1} '
                    f'frames have identical pixels ({identical:.1f} s): '
                    'a frozen camera re-stamping its last image, or a perfectly uniform scene')
                if not self.frozen[index]:
                    log.warning(f'{topic}: frames keep repeating the same pixels for {identical:.1f} s')
            elif self.frozen[index]:
                issues.clear_condition(f'{name} frozen')
            changed |= frozen != self.frozen[index]
            self.frozen[index] = frozen
        return changed

    def stop(self, issues: IssueBoard) -> None:
        """The inputs are gone (deactivation): their conditions end."""
        for kind in ('rgb stalled', 'thermal stalled', 'rgb frozen', 'thermal frozen'):
            issues.clear_condition(kind)
        self.stalled, self.frozen = [False, False], [False, False]

    def input_warning(self, topics, pair_rate: float) -> Optional[str]:
        """What is wrong with the inputs of an active node beyond stalls (the watchdog reports those)."""
        never = [index for index, watch in enumerate(self.streams) if watch.frames == 0]
        if len(never) == 2:
            return f'active but no images on {topics[0]} / {topics[1]} (check topics and QoS)'
        if never:
            index = never[0]
            return (f'no images on {topics[index]} since activation '
                    f'{self.streams[index].silent_for():.1f} s ago while {topics[1 - index]} arrives '
                    '(check the topic and QoS)')
        if not any(self.stalled) and pair_rate == 0.0:
            return 'images arrive but no RGB-thermal pair matches (check stamps and sync.slop)'
        return None
