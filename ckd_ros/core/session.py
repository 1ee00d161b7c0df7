"""Every tracking decision of the tracker node, without ROS: the target, the time rules, the frame checks.

:class:`TrackingSession` takes frames as arrays with their stamps (integer nanoseconds) and says what to
do with them; the node (:mod:`ckd_ros.ros.node`) subscribes, converts messages to arrays, publishes and
runs the lifecycle around it.  The session holds:

* the tracker (any object with ``initialize(rgb, thermal, box)`` and ``track(rgb, thermal)`` returning a
  :class:`ckd_ros.core.tracking.TrackResult`) and the target: its id (+1 at every new target), state
  (:data:`IDLE`, :data:`TRACKING`, :data:`LOST`), last box and score, and the box waiting for the next pair
  (the ``initial_box`` parameter).  They change together under :attr:`TrackingSession.lock`.
* time: each input's stamps must advance.  A frame whose stamp does not (a frozen driver, a duplicate, an
  out-of-order frame) is not fresh; a pair not newer than the last tracked one, or than the newest output of
  the time epoch, is skipped, so an output never repeats or goes back in time (also after a target set on an
  older kept pair); a zero stamp is refused, and so is a stamp more than ``max_stamp_ahead_s`` ahead of the
  clock (it would make every real frame after it look like time going back).  A stamp more than
  ``jump_back_s`` before the newest of its input, or a backward jump of the clock (:meth:`restart_time`),
  starts a new time epoch: pairing, the frame history and the latency statistics restart.
* the frames kept for a target drawn on an older frame (:class:`ckd_ros.core.pairing.RecentPairs`, items
  opaque to the session), and the RGB frame size the target's box belongs to: a change drops the target.
* the input health (:class:`ckd_ros.core.health.InputHealth`) and the board of recent problems.
* the worker thread that tracks the newest pair (:meth:`TrackingSession.start_worker`), and the array
  steps of converting a pair (:meth:`TrackingSession.prepare`: RGB to rgb8, thermal gain, registration).
"""
from __future__ import annotations

import gc
import logging
import math
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ckd_ros.core.health import ERROR, FRESH, INPUT_NAMES, JUMPED_BACK, WARN, ZERO_STAMP, InputHealth, IssueBoard
from ckd_ros.core.image import (ImageConversionError, ThermalFrame, ThermalRegistration, rgb_image_to_rgb8,
                                thermal_image_to_rgb8)
from ckd_ros.core.pairing import LatestSlot, RecentPairs
from ckd_ros.core.tracking import LOST, TRACKING

IDLE = 'IDLE'
FUTURE_STAMP = 'future stamp'   # what observe_frame says about a frame beyond max_stamp_ahead_s
WORKER_JOIN_TIMEOUT_S = 10.0


class TargetRefused(Exception):
    """A target request that cannot be served; the message says why."""


@dataclass(frozen=True)
class Output:
    """One tracking result to publish (the pair's RGB stamp, the target, the latency from stamp to now)."""
    stamp_ns: int
    box: tuple
    score: float
    state: str
    target_id: int
    latency: float


@dataclass(frozen=True)
class PreparedPair:
    """One pair as the tracker wants it."""
    rgb: np.ndarray                # H x W x 3 uint8 RGB
    thermal: np.ndarray            # H x W x 3 uint8, on the RGB pixel grid
    thermal_frame: ThermalFrame    # the thermal frame before registration, and what its conversion did


@dataclass(frozen=True)
class Step:
    """What one pair gave: the box to draw (None without a target), its score, state and target."""
    box: Optional[tuple]
    score: float
    state: str
    target_id: int

    @property
    def lost(self) -> bool:
        return self.state == LOST


def check_target_box(box, image_width: int, image_height: int, tolerance: float = 0.5) -> Optional[str]:
    """Why ``box`` (x, y, w, h in pixels) cannot be a target on a W x H image, or None if it can."""
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return f'box {values} has a non-finite value (NaN or inf)'
    x, y, width, height = values
    if width <= 0 or height <= 0:
        return f'box needs a positive width and height, got width={width:g}, height={height:g}'
    if x < -tolerance or y < -tolerance or x + width > image_width + tolerance or y + height > image_height + tolerance:
        return (f'box x={x:g} y={y:g} w={width:g} h={height:g} is not inside the {image_width}x{image_height} '
                'RGB image')
    return None


def choose_device(requested: str) -> tuple[str, str]:
    """(device, note): CUDA when asked for and present; CPU with a note when CUDA is absent."""
    import torch

    from ckd_ros.core.api import resolve_device
    if requested.startswith('cuda') and not torch.cuda.is_available():
        return 'cpu', f"device '{requested}' was requested but CUDA is not available: running on the CPU"
    return str(resolve_device(requested)), ''


def hardware_id(device: str) -> str:
    """The device as /diagnostics names the hardware: with the GPU's name for CUDA."""
    if device.startswith('cuda'):
        import torch
        return f'{device} ({torch.cuda.get_device_name(torch.device(device))})'
    return device or 'none'


class TrackingSession:
    """The tracking state machine of one node (see the module docstring).

    ``issues``: the board the problems go to (the node's, which /diagnostics summarizes); ``log``: an object
    with ``info``, ``warning`` and ``error`` (the node's logger); ``clock_ns``: the clock the stamps are
    compared with (the node clock: sim time with ``use_sim_time``); a value <= 0 checks no stamp against it.
    :attr:`on_time_restart` is called when time goes backwards, for what the caller keeps (the node: the
    pairing queues); the session itself clears the kept frames, the worker's slot, the statistics and the
    thermal gain's smoothed range."""

    def __init__(self, issues: Optional[IssueBoard] = None, log=None, clock_ns: Callable[[], int] = time.time_ns):
        self.lock = threading.Lock()
        self.issues = issues if issues is not None else IssueBoard()
        self.log = log if log is not None else logging.getLogger(__name__)
        self.clock_ns = clock_ns
        self.on_time_restart: Callable[[], None] = lambda: None
        self.health = InputHealth()
        self.tracker = None
        self.acceleration = ''               # precision/backend of the tracker (after 'auto' is resolved)
        self.topics = INPUT_NAMES            # how messages name the inputs (the node: the resolved topics)
        self.history: Optional[RecentPairs] = None
        self.slot: Optional[LatestSlot] = None   # the newest pair for the worker thread
        self._worker: Optional[threading.Thread] = None
        self._worker_stop = threading.Event()
        self.gain = None                         # ThermalGainControl of the live thermal stream
        self.registration = ThermalRegistration()
        self._aspect_checked_for: Optional[tuple] = None
        self._logged_at: dict[str, float] = {}
        # settings (configure); None: no stamp is checked against the clock
        self.max_stamp_ahead_s: Optional[float] = None
        self.sync_slop_s = 0.05
        self.max_stamp_offset_s = 0.1
        # the target; the tracker and everything below change together under the lock
        self.state = IDLE
        self.target_id = 0
        self.box: Optional[tuple] = None
        self.score = 0.0
        self.pending_box: Optional[tuple] = None
        # time
        self.epoch = 0                                  # +1 whenever time goes backwards
        self._tracked_epoch = 0
        self._tracked_stamp_ns: Optional[int] = None    # RGB stamp of the last pair tracked or initialised on
        # RGB stamp of the newest output of this time epoch: a target set on an older kept pair must not let a
        # later output go back in time (it reset the mark above, and a late pair went out 94 ms older)
        self._published_stamp_ns: Optional[int] = None
        self._published_epoch = -1
        self.frame_size: Optional[tuple] = None         # RGB (height, width) the target's box belongs to

    # ------------------------------------------------------------------ lifecycle
    def configure(self, stats_window: int, max_stamp_ahead_s: float, sync_slop_s: float,
                  max_stamp_offset_s: float) -> None:
        self.health.resize(stats_window)
        self.max_stamp_ahead_s, self.sync_slop_s = max_stamp_ahead_s, sync_slop_s
        self.max_stamp_offset_s = max_stamp_offset_s

    def _log_throttled(self, key: str, period_s: float, message: str, level: str = 'warning') -> None:
        """Log at most once every ``period_s`` seconds from one place (``key``), as rclpy's throttled logging."""
        now = time.monotonic()
        if key not in self._logged_at or now - self._logged_at[key] >= period_s:
            self._logged_at[key] = now
            getattr(self.log, level)(message)

    def start(self, timeout_s: float, jump_back_s: float, history_size: int, history_max_bytes: Optional[int] = None,
              item_bytes: Optional[Callable] = None, initial_box: Optional[tuple] = None, topics=None) -> None:
        """Activation: fresh statistics, streams, history and time marks; ``initial_box`` waits for the next
        pair."""
        if topics is not None:
            self.topics = tuple(topics)
        self.health.reset()
        self.slot = LatestSlot()
        if self.gain is not None:
            self.gain.reset()
        self.history = RecentPairs(history_size, max_bytes=history_max_bytes, item_bytes=item_bytes)
        self.health.restart_streams(timeout_s, jump_back_s)
        self._tracked_stamp_ns, self.frame_size = None, None
        self._published_stamp_ns, self._published_epoch = None, -1
        with self.lock:
            self.pending_box = initial_box

    def load_model(self, model_config: str, checkpoint: Optional[str], device: str, precision: str = 'auto',
                   backend: str = 'auto', torch_threads: int = 0, warmup: bool = True) -> None:
        """Load the tracker (torch threads chosen, precision/backend resolved, see :attr:`acceleration`) and
        warm it up: one initialize + track on a blank pair, so the first real frame runs at full speed, and
        weights or a precision that give NaN/inf fail here (NonFiniteOutputError) instead of tracking
        garbage.  Raises on failure (the session keeps no tracker then)."""
        from ckd_ros import init_tracker
        from ckd_ros.core.cpu_info import apply_threads, choose_threads
        threads = choose_threads(torch_threads)
        wait_policy_note = apply_threads(threads)
        self.log.info(threads.log_line())
        if wait_policy_note:
            self.log.warning(wait_policy_note)
        # init_tracker resolves the device and makes the precision/backend choice once ('auto' included)
        tracker = init_tracker(model_config, checkpoint=checkpoint, device=device, precision=precision,
                               backend=backend)
        choice = tracker.precision_choice
        self.log.info(choice.log_line())
        self.acceleration = f'{choice.precision}/{choice.backend}'
        if warmup:
            tracker.warm_up()
        with self.lock:
            self.tracker = tracker

    def release_model(self) -> None:
        """Free the tracker (and the cached GPU memory)."""
        with self.lock:
            had_model, self.tracker = self.tracker is not None, None
        if had_model:
            gc.collect()
            torch = sys.modules.get('torch')
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def start_worker(self, process: Callable[[object, int], None]) -> None:
        """The tracking thread: it calls ``process(item, epoch)`` with the newest pair :meth:`note_pair` got.
        A pair that arrives while it is busy replaces the waiting one (counted in ``pairs_dropped``), so the
        tracker never works on a backlog; an exception is reported and the thread goes on."""
        self._worker_stop = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, args=(self.slot, self._worker_stop, process),
                                        name='ckd_tracker_worker', daemon=True)
        self._worker.start()

    def _worker_loop(self, slot: LatestSlot, stop: threading.Event, process) -> None:
        while not stop.is_set():
            pair = slot.take(timeout=0.2)
            if pair is None:
                continue
            try:
                process(*pair)
            except Exception as error:   # keep the worker alive whatever a frame does
                self.issues.report('processing', ERROR, f'processing a pair failed: {error}')
                self._log_throttled('processing', 5.0, f'processing a pair failed:\n{traceback.format_exc()}', 'error')

    def stop(self) -> None:
        """Deactivation: the worker stops, the inputs' conditions end and the kept frames go."""
        self.health.stop(self.issues)
        self._worker_stop.set()
        if self.slot is not None:
            self.slot.close()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            if worker.is_alive():
                self.log.error(f'the tracking worker did not stop within {WORKER_JOIN_TIMEOUT_S} s')
        if self.history is not None:
            self.history.clear()

    def drop_target(self) -> tuple[bool, int]:
        """Forget the target (and a waiting initial box); (whether there was one, its id)."""
        with self.lock:
            had_target, target_id = self.state != IDLE, self.target_id
            self.state, self.box, self.score = IDLE, None, 0.0
            self.pending_box = None
        return had_target, target_id

    # ------------------------------------------------------------------ frames and time
    def stamp_ahead_ns(self, stamp_ns: int) -> Optional[int]:
        """How far ``stamp_ns`` lies ahead of the clock beyond max_stamp_ahead_s, or None. A zero clock
        (use_sim_time before the first /clock message) checks nothing."""
        now_ns = self.clock_ns()
        if self.max_stamp_ahead_s is None or now_ns <= 0:
            return None
        ahead_ns = stamp_ns - now_ns
        return ahead_ns if ahead_ns > self.max_stamp_ahead_s * 1e9 else None

    def observe_frame(self, index: int, stamp_ns: int, data_crc: Optional[int] = None) -> tuple[str, str]:
        """Every frame of input ``index``, before pairing: is the input still delivering new frames, has time
        gone back (then :meth:`restart_time`)?  (verdict, a warning to log or '')."""
        topic = self.topics[index]
        ahead_ns = self.stamp_ahead_ns(stamp_ns)
        if ahead_ns is not None:
            # not observed: a stamp from the future as the input's newest made every real frame after it look
            # like a jump back in time
            self.health.frames_future += 1
            message = (f'{topic}: frame stamped {ahead_ns / 1e9:.3f} s ahead of the node clock '
                       f'(input.max_stamp_ahead {self.max_stamp_ahead_s:g} s): check the clocks '
                       '(chrony/NTP between machines, use_sim_time with a bag); frame not tracked')
            self.issues.report(f'{INPUT_NAMES[index]} stamp', ERROR, message)
            self._log_throttled('future stamp', 2.0, message)
            return FUTURE_STAMP, message
        watch = self.health.streams[index]
        newest = watch.newest_stamp_ns
        verdict = watch.observe(stamp_ns, data_crc)
        if verdict in (FRESH, JUMPED_BACK):
            self.health.tick_input(index)
        if verdict == ZERO_STAMP:
            message = (f'{topic}: header.stamp is zero: the camera driver must stamp each '
                       'image with its capture time (pairing, freshness and latency need it); frame not tracked')
            self.issues.report(f'{INPUT_NAMES[index]} stamp', ERROR, message)
            self._log_throttled('zero stamp', 2.0, message)
            return verdict, message
        if verdict == JUMPED_BACK:
            self.restart_time(f'{topic}: stamp {stamp_ns / 1e9:.3f} s is '
                              f'{(newest - stamp_ns) / 1e9:.3f} s before the newest frame of that input', keep=index)
        return verdict, ''

    def restart_time(self, reason: str, keep: Optional[int] = None) -> None:
        """Time went backwards: frames, pairs and statistics from before the jump mean nothing after it.
        ``keep``: the input whose stamp showed it (its watch already starts over from that stamp)."""
        self.epoch += 1
        self.health.time_restarts += 1
        for index, watch in enumerate(self.health.streams):
            if index != keep:
                watch.forget_stamps()
        self.on_time_restart()
        if self.history is not None:
            self.history.clear()
        if self.slot is not None:
            self.slot.clear()
        self.health.latency.clear()
        self.health.pair_dt_window.clear()
        if self.gain is not None:
            self.gain.reset()
        message = f'time went backwards ({reason}): pairing, frame history and latency statistics restarted'
        self.issues.report('time', WARN, message)
        self.log.warning(message)

    def note_pair(self, stamp_ns: int, thermal_stamp_ns: int, item=None) -> None:
        """A synchronized pair (``item``: what the history keeps of it and the worker gets, with the time
        epoch it belongs to)."""
        self.health.note_pair((thermal_stamp_ns - stamp_ns) / 1e9)
        if self.history is not None and stamp_ns != 0:
            self.history.add(stamp_ns, item)
        if self.slot is not None:
            self.slot.put((item, self.epoch))

    def newest_pair(self):
        """The newest kept pair as (stamp, item), or None."""
        history = self.history
        return history.newest() if history is not None else None

    def statistics(self, pairs_made: Optional[int] = None, frames_unmatched: Optional[int] = None) -> dict:
        """:meth:`ckd_ros.core.health.InputHealth.statistics` with the pairs the worker dropped."""
        slot = self.slot
        return self.health.statistics(pairs_made, frames_unmatched, slot.dropped if slot is not None else 0)

    def reject(self, kind: str, message: str) -> None:
        """A frame or pair that cannot be tracked: counted, reported (ERROR) and logged (at most every 2 s)."""
        self.health.frames_rejected += 1
        self.issues.report(kind, ERROR, message)
        self._log_throttled('reject', 2.0, f'frame rejected: {message}')
        return None

    def prepare(self, rgb, rgb_encoding: str, thermal, thermal_encoding: str, gain=None) -> Optional[PreparedPair]:
        """The pair as tracker input, or None after rejecting it: RGB as HxWx3 uint8 RGB, thermal through the gain
        control and registered onto the RGB pixel grid.  ``rgb`` / ``thermal``: decoded arrays, or functions
        decoding them (their ImageConversionError rejects the input too).  ``gain``: the thermal gain control
        to use instead of the stream's (whose smoothed range follows the live frames)."""
        try:
            rgb = rgb_image_to_rgb8(rgb() if callable(rgb) else rgb, rgb_encoding)
        except ImageConversionError as error:
            return self.reject('rgb input', f'{self.topics[0]}: {error}')
        try:
            thermal_frame = thermal_image_to_rgb8(thermal() if callable(thermal) else thermal, thermal_encoding,
                                                  gain or self.gain)
            height, width = rgb.shape[:2]
            registered = self.registration(thermal_frame.image, height, width)
        except ImageConversionError as error:
            return self.reject('thermal input', f'{self.topics[1]}: {error}')
        if thermal_frame.nonfinite_pixels:
            self.issues.report('thermal nonfinite', WARN,
                               f'{self.topics[1]}: {thermal_frame.nonfinite_pixels} NaN/inf '
                               f'pixels of {thermal_frame.image.shape[0] * thermal_frame.image.shape[1]} set to 0')
        sizes = (thermal_frame.image.shape[:2], rgb.shape[:2])
        if sizes != self._aspect_checked_for:
            self._aspect_checked_for = sizes
            warning = self.registration.aspect_warning(*sizes[0], *sizes[1])
            if warning:
                self.log.warning(warning)
                self.issues.report('registration', WARN, warning)
        return PreparedPair(rgb=rgb, thermal=registered, thermal_frame=thermal_frame)

    def pair_problem(self, stamp_ns: int) -> Optional[str]:
        """Why a pair with this RGB stamp is not tracked at all (a zero or future stamp), or None."""
        if stamp_ns == 0:
            return ('header.stamp is zero: the camera driver must stamp each image with its capture time; '
                    'pair not tracked')
        ahead_ns = self.stamp_ahead_ns(stamp_ns)
        if ahead_ns is not None:
            return (f'pair stamped {ahead_ns / 1e9:.3f} s ahead of the node clock (input.max_stamp_ahead): '
                    'pair not tracked')
        return None

    def is_stale(self, stamp_ns: int, epoch: int) -> bool:
        """Whether a pair would be skipped now (counted), see :meth:`_skip_stale_locked`."""
        with self.lock:
            return self._skip_stale_locked(stamp_ns, epoch)

    def _skip_stale_locked(self, stamp_ns: int, epoch: int) -> bool:
        """An output never repeats a stamp or goes back in time: a pair from before a time restart, or not
        newer than the last one tracked or initialised on (a duplicate, a frozen stream, a late frame), is
        skipped and counted."""
        if epoch != self.epoch or (self._tracked_stamp_ns is not None and epoch == self._tracked_epoch
                                   and stamp_ns <= self._tracked_stamp_ns) or (
                self._published_stamp_ns is not None and epoch == self._published_epoch
                and stamp_ns <= self._published_stamp_ns):
            self.health.pairs_out_of_order += 1
            return True
        return False

    # ------------------------------------------------------------------ tracking
    def track_pair(self, rgb: np.ndarray, thermal: np.ndarray, stamp_ns: int, epoch: int,
                   publish: Optional[Callable[[Output], None]] = None) -> Optional[Step]:
        """Track one converted pair (or initialise on it with the waiting initial box).  ``publish`` gets each
        output under the lock.  None when the pair is skipped (not newer than the last, from an older time
        epoch) or no model is loaded."""
        with self.lock:
            # again (the caller checked before converting): ~/set_target may have initialised on this very
            # pair (or a newer one) meanwhile, and tracking the initialisation frame again changed the
            # tracker's state (a replay's results varied from run to run) and repeated its stamp
            if self._skip_stale_locked(stamp_ns, epoch):
                return None
            tracker = self.tracker
            if tracker is None:
                return None
            size = rgb.shape[:2]
            if self.frame_size is not None and size != self.frame_size and self.state != IDLE:
                message = (f'RGB image size changed from {self.frame_size[1]}x{self.frame_size[0]} to '
                           f'{size[1]}x{size[0]}: target {self.target_id} dropped (its box belongs to the old '
                           'image); set a new target')
                self.issues.report('frame size', WARN, message)
                self.log.warning(message)
                self.state, self.box, self.score = IDLE, None, 0.0
            self.frame_size = size
            if self.pending_box is not None:
                box, self.pending_box = self.pending_box, None
                problem = check_target_box(box, rgb.shape[1], rgb.shape[0])
                if not problem:
                    try:
                        self._initialize_locked(tracker, rgb, thermal, stamp_ns, box, "parameter 'initial_box'",
                                                epoch)
                    except ValueError as error:   # e.g. a crop that cannot overlap a 1-pixel-wide image
                        problem = f'cannot initialise the tracker on this frame: {error}'
                    else:
                        self._output_locked(stamp_ns, publish)
                if problem:
                    self.issues.report('initial_box', ERROR, f"parameter 'initial_box': {problem}")
                    self.log.error(f"parameter 'initial_box' not used: {problem}")
            elif self.state != IDLE:
                self._tracked_stamp_ns, self._tracked_epoch = stamp_ns, epoch
                self._track_locked(tracker, rgb, thermal)
                self._output_locked(stamp_ns, publish)
            return Step(box=self.box if self.state != IDLE else None, score=self.score, state=self.state,
                        target_id=self.target_id)

    def _initialize_locked(self, tracker, rgb, thermal, stamp_ns: int, box, source: str, epoch: int) -> None:
        box = tuple(float(v) for v in box)
        tracker.initialize(rgb, thermal, box)
        self._tracked_stamp_ns, self._tracked_epoch = stamp_ns, epoch
        self.frame_size = rgb.shape[:2]
        self.target_id += 1
        self.state = TRACKING
        self.box, self.score = box, 1.0
        self.log.info(f'target {self.target_id} set by {source}: {[round(v, 1) for v in box]}')

    def _track_locked(self, tracker, rgb, thermal) -> None:
        result = tracker.track(rgb, thermal)
        box = tuple(float(v) for v in result.box)
        if not result.valid or not all(math.isfinite(v) for v in box):
            # NaN/inf network output: never a confident box. The tracker kept its last good box; the output
            # says LOST with score 0 and /diagnostics says ERROR until it recovers.
            self.issues.report('tracker', ERROR, result.error or f'the tracker returned a non-finite box {box}; '
                               'kept the last box')
            self.state, self.score = LOST, 0.0
            return
        self.box = box
        self.score = float(result.score) if result.score is not None and math.isfinite(result.score) else 0.0
        self.state = LOST if result.state == LOST else TRACKING

    def _output_locked(self, stamp_ns: int, publish: Optional[Callable[[Output], None]]) -> None:
        latency = (self.clock_ns() - stamp_ns) / 1e9
        if publish is not None:
            publish(Output(stamp_ns=stamp_ns, box=self.box, score=float(self.score), state=self.state,
                           target_id=self.target_id, latency=float(latency)))
        if self._published_epoch != self.epoch or self._published_stamp_ns is None \
                or stamp_ns > self._published_stamp_ns:
            self._published_stamp_ns, self._published_epoch = stamp_ns, self.epoch
        self.health.note_output(latency)

    # ------------------------------------------------------------------ target requests
    def target_frame(self, box, stamp_ns: int):
        """The kept pair a target request is for: the one closest to ``stamp_ns`` (0: the newest), as
        ``(box values, (stamp, item))``; raises :class:`TargetRefused` saying why there is none."""
        values = [float(v) for v in box]
        if not all(math.isfinite(v) for v in values):
            raise TargetRefused(f'box {values} has a non-finite value (NaN or inf)')
        if values[2] <= 0 or values[3] <= 0:
            raise TargetRefused(f'box needs a positive width and height, got width={values[2]:g}, '
                                f'height={values[3]:g}')
        history = self.history
        entry = None if history is None else (history.newest() if stamp_ns == 0 else history.closest(stamp_ns))
        if entry is None:
            raise TargetRefused('no synchronized RGB + thermal frame received yet: check that both '
                                f'{self.topics[0]} and {self.topics[1]} '
                                'are published with compatible QoS and stamps within sync.slop')
        # A requested frame newer than every kept pair is still on its way. Initialising on the newest kept
        # pair instead put the box on another image (in a replay: the previous sequence's last frame, 70 ms
        # older, within target.max_stamp_offset).
        ahead_ns = stamp_ns - history.newest()[0] if stamp_ns else 0
        if ahead_ns > self.sync_slop_s * 1e9:
            raise TargetRefused(f'the frame stamped {stamp_ns / 1e9:.6f} has not been received yet (the newest '
                                f'pair is {ahead_ns / 1e9:.3f} s older); retry when it has arrived')
        if stamp_ns and abs(entry[0] - stamp_ns) > self.max_stamp_offset_s * 1e9:
            raise TargetRefused(f'no kept frame within {self.max_stamp_offset_s:g} s of the requested stamp '
                                f'(closest is {abs(entry[0] - stamp_ns) / 1e9:.3f} s away)')
        return values, entry

    def set_target(self, rgb: np.ndarray, thermal: np.ndarray, stamp_ns: int, box, source: str) -> tuple[bool, str]:
        """Initialise the tracker on a (kept, converted) pair; (success, reason).  The mark of the newest
        output stays: a later output never goes back in time, even from a target set on an older pair."""
        problem = check_target_box(box, rgb.shape[1], rgb.shape[0])
        if problem:
            return False, problem
        with self.lock:
            if self.tracker is None:
                return False, 'the model is not loaded'
            try:
                self._initialize_locked(self.tracker, rgb, thermal, stamp_ns, box, source, epoch=self.epoch)
            except ValueError as error:   # e.g. a crop that cannot overlap a 1-pixel-wide image
                return False, f'cannot initialise the tracker on this frame: {error}'
            self.pending_box = None
        return True, ''
