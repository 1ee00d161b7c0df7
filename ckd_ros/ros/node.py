"""The CKD tracker lifecycle node (executable ``ckd_tracker_node``, default name ``ckd_tracker``).

Lifecycle (``<node>/change_state``, or ``autostart:=true`` without a manager):

* constructor: declares parameters, creates ``~/status`` (periodic) and the /diagnostics updater
  (once: a second diagnostic_updater.Updater on a node raises); both report in every state.
* configure: reads and validates the parameters (FAILURE naming the bad one), resolves the device
  (CUDA when asked and present, else CPU, said in the log, status and diagnostics), loads the model
  and warms it up (unless ``unload_on_deactivate``), creates the output publishers and the
  ``~/set_target`` / ``~/reset`` services.
* activate: subscribes to ``rgb/image`` + ``thermal/image`` (paired by approximate time) and
  ``~/init_box``, starts the tracking worker thread.
* deactivate: destroys the subscriptions, stops the worker, drops the target.
* cleanup: destroys publishers and services and frees the model (and cached GPU memory).
* shutdown (from any state) and error processing release everything; the process exits once the
  node is finalized or on SIGINT/SIGTERM.

Threads: subscription, service and timer callbacks run on the executor thread and only queue work;
the worker thread converts the newest pair, tracks and publishes.  A pair that arrives while the
worker is busy replaces the waiting one (counted in ``pairs_dropped``), so the tracker never works on
a backlog.  Bad input never raises out of a callback: it becomes ``last_error`` and a WARN/ERROR
diagnostic, and the node keeps running.

Time: each input's stamps must advance.  A frame whose stamp does not (a frozen driver, a duplicate,
an out-of-order frame) is not fresh, and a pair not newer than the last tracked one is skipped, so an
output never repeats or goes back in time; a zero stamp is refused.  An input without a fresh frame for
``input.timeout`` s is reported stalled (a /diagnostics WARN naming it, within ``input.timeout`` plus a
watchdog period of at most 0.25 s; its rate in ``~/status`` drops to 0).  A stamp more than
``input.jump_back_threshold`` s before the newest, or a backward jump of the node clock (a bag loop,
``use_sim_time``), restarts pairing, the frame history and the latency statistics.  A change of the RGB
frame size drops the target, whose box belongs to the old frame.
"""
from __future__ import annotations

import copy
import functools
import gc
import math
import signal
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rclpy
from geometry_msgs.msg import Point, PolygonStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from ckd_ros.core.click_box import TwoClickBox
from ckd_ros.core.image import (ImageConversionError, ThermalFrame, ThermalRegistration, rgb_image_to_rgb8,
                                thermal_image_to_rgb8)
from ckd_ros.core.pairing import LatestSlot, RecentPairs
from ckd_ros.core.visualize import compose_debug_image
from ckd_ros.msg import TrackedTarget, TrackerStatus
from ckd_ros.ros.conversions import (CV_BRIDGE_PROBLEM, DETECTIONS_AVAILABLE, IMAGE_BACKEND, array_to_image_msg,
                                     check_target_box,
                                     detections_msg, finite_or, image_msg_to_array, polygon_to_box, stamp_to_ns)
from ckd_ros.ros.diagnostics import (ERROR, FRESH, JUMPED_BACK, OK, UPDATER_BACKEND, WARN, ZERO_STAMP, IssueBoard,
                                     RateMeter, SampleWindow, StreamWatch, create_updater, set_updater_period,
                                     summarize_issues)
from ckd_ros.ros.params import (DIAGNOSTIC_PERIOD_PARAMETER, PARAMETER_SPECS, ParameterError, TrackerNodeParameters,
                                check_parameter_update, declare_parameters, node_parameter_getter, plain_value,
                                read_diagnostic_period, read_parameters, read_seconds)
from ckd_ros.ros.synchronizer import RGB, SYNC_BACKEND, THERMAL, PairedImageSubscriptions
from ckd_ros.srv import SetTarget

NODE_NAME = 'ckd_tracker'
RGB_TOPIC = 'rgb/image'
THERMAL_TOPIC = 'thermal/image'
STATE_NAMES = {TrackedTarget.STATE_IDLE: 'idle', TrackedTarget.STATE_TRACKING: 'tracking',
               TrackedTarget.STATE_LOST: 'lost'}
WORKER_JOIN_TIMEOUT_S = 10.0
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
# The default service QoS keeps 10 requests (and responses): of 60 set_target calls sent at once, 49 were
# never answered. Requests are small; 100 covers a burst from several clients.
SERVICE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)
DEBUG_IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.VOLATILE)


def _logged_transition(callback):
    """rclpy turns an exception in a transition callback into ERROR without a word: log it first."""
    @functools.wraps(callback)
    def wrapper(self, state):
        try:
            return callback(self, state)
        except Exception:
            self.get_logger().error(f'{callback.__name__} raised:\n{traceback.format_exc()}')
            self._issues.report('lifecycle', ERROR, f'{callback.__name__} raised: {sys.exc_info()[1]}')
            return TransitionCallbackReturn.ERROR
    return wrapper


@dataclass
class ConvertedPair:
    """One synchronized pair as the tracker wants it."""
    header: object                 # std_msgs/Header of the RGB image
    stamp_ns: int
    pair_dt: float                 # thermal stamp - RGB stamp (s)
    rgb: np.ndarray                # H x W x 3 uint8 RGB
    thermal: np.ndarray            # H x W x 3 uint8, on the RGB pixel grid
    thermal_frame: ThermalFrame


class CkdTrackerNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        # after the declaration: values from files and the command line are checked at configure
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._params: Optional[TrackerNodeParameters] = None
        self._tracker = None
        self._device = ''
        self._acceleration = ''   # precision/backend in use (after 'auto' is resolved)
        self._device_note = ''
        self._gain = None
        self._registration: Optional[ThermalRegistration] = None
        self._aspect_checked_for: Optional[tuple] = None

        # Target state; the tracker and everything below change together under this lock.
        self._tracker_lock = threading.Lock()
        self._target_state = TrackedTarget.STATE_IDLE
        self._target_id = 0
        self._last_box: Optional[tuple] = None
        self._last_score = 0.0
        self._pending_initial_box: Optional[tuple] = None

        # Statistics (since activation; latencies over the last stats_window frames).
        self._issues = IssueBoard()
        self._rgb_rate, self._thermal_rate = RateMeter(), RateMeter()
        self._pair_rate, self._output_rate = RateMeter(), RateMeter()
        self._latency = SampleWindow(100)
        self._pair_dt_window = SampleWindow(100)
        self._pair_dt_abs_sum = 0.0
        self._pairs_seen = 0
        self._frames_rejected = 0
        self._frames_unmatched_at_stop = 0
        self._pairs_out_of_order = 0     # not newer than the last tracked pair: skipped
        self._time_restarts = 0

        # Input freshness and time (reset at activation).
        self._streams = [StreamWatch(1.0, 1.0), StreamWatch(1.0, 1.0)]
        self._stalled = [False, False]
        self._frozen = [False, False]
        self._time_epoch = 0                      # +1 whenever time goes backwards
        self._tracked_epoch = 0
        self._tracked_stamp_ns: Optional[int] = None   # RGB stamp of the last pair tracked or initialised on
        # RGB stamp of the newest output of this time epoch: a target set on an older kept pair must not let
        # a later output go back in time (it reset the mark above, and a late pair went out 94 ms older)
        self._published_stamp_ns: Optional[int] = None
        self._published_epoch = -1
        self._frames_future = 0                       # frames stamped beyond input.max_stamp_ahead
        self._frame_size: Optional[tuple] = None      # RGB (height, width) the target's box belongs to
        self._watch_timer = None
        self._clock_jump_handle = None

        # Created at configure / activate.
        self._target_pub = self._detections_pub = self._debug_pub = None
        self._set_target_srv = self._reset_srv = None
        self._inputs: Optional[PairedImageSubscriptions] = None
        self._init_box_sub = None
        self._click_sub = None
        self._clicks = TwoClickBox()
        self._slot: Optional[LatestSlot] = None
        self._history: Optional[RecentPairs] = None
        self._worker: Optional[threading.Thread] = None
        self._worker_stop = threading.Event()
        self._finalized = False

        # Reported in every state, so created here (and only here).
        self._status_pub = self.create_publisher(TrackerStatus, '~/status', OUTPUT_QOS)
        self._status_timer = self.create_timer(self._initial_status_period(), self._publish_status)
        self._updater = create_updater(self, period=1.0)
        self._updater.setHardwareID('none')
        self._updater.add('tracker', self._diagnose)
        if getattr(self._updater, 'problem', ''):
            self.get_logger().error(self._updater.problem)
            self._issues.report('diagnostics', ERROR, self._updater.problem)
        self.get_logger().info(
            f'{self.get_fully_qualified_name()} created (unconfigured); image conversion: {IMAGE_BACKEND}, '
            f'pairing: {SYNC_BACKEND}, diagnostics: {UPDATER_BACKEND}')
        if CV_BRIDGE_PROBLEM:
            self.get_logger().warning(CV_BRIDGE_PROBLEM)
        if not DETECTIONS_AVAILABLE:
            self.get_logger().info('vision_msgs is not installed: ~/detections is not published')

    # ------------------------------------------------------------------ lifecycle
    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            params = read_parameters(node_parameter_getter(self))
            self._gain = params.make_gain_control()
            self._registration = ThermalRegistration(params.thermal_registration, params.thermal_homography)
        except (ParameterError, ValueError) as error:
            return self._fail_transition('configure', str(error))
        self._params = params
        self._issues.clear()
        self._latency = SampleWindow(params.stats_window)
        self._pair_dt_window = SampleWindow(params.stats_window)
        try:
            self._device, self._device_note = self._resolve_device(params.device)
        except Exception as error:
            return self._fail_transition('configure', f"parameter 'device': {error}")
        if self._device_note:
            self.get_logger().warning(self._device_note)
            self._issues.report('device', WARN, self._device_note)
        self.get_logger().info(f'device: {self._device}')
        self._updater.setHardwareID(self._hardware_id())
        if not params.unload_on_deactivate:
            failure = self._load_model()
            if failure:
                return self._fail_transition('configure', failure)
        self._target_pub = self.create_lifecycle_publisher(TrackedTarget, '~/target', OUTPUT_QOS)
        if params.publish_detections and DETECTIONS_AVAILABLE:
            from vision_msgs.msg import Detection2DArray
            self._detections_pub = self.create_lifecycle_publisher(Detection2DArray, '~/detections', OUTPUT_QOS)
        self._debug_pub = self.create_lifecycle_publisher(Image, '~/debug_image', DEBUG_IMAGE_QOS)
        self._set_target_srv = self.create_service(SetTarget, '~/set_target', self._on_set_target,
                                                   qos_profile=SERVICE_QOS)
        self._reset_srv = self.create_service(Trigger, '~/reset', self._on_reset, qos_profile=SERVICE_QOS)
        self._replace_status_timer(params.status_period)
        self.get_logger().info(f"configured: model '{params.model_config}' on {self._device}")
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self._params
        if self._tracker is None:
            failure = self._load_model()
            if failure:
                return self._fail_transition('activate', failure)
        self._reset_statistics()
        self._slot = LatestSlot()
        self._history = RecentPairs(params.target_history_size, max_bytes=int(params.target_history_max_mb * 2**20),
                                    item_bytes=lambda pair: len(pair[0].data) + len(pair[1].data))
        self._gain.reset()
        self._streams = [StreamWatch(params.input_timeout, params.input_jump_back_threshold) for _ in range(2)]
        self._stalled, self._frozen = [False, False], [False, False]
        self._tracked_stamp_ns, self._frame_size = None, None
        self._published_stamp_ns, self._published_epoch = None, -1
        reliability = (ReliabilityPolicy.BEST_EFFORT if params.input_reliability == 'best_effort'
                       else ReliabilityPolicy.RELIABLE)
        input_qos = QoSProfile(depth=params.input_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                               durability=DurabilityPolicy.VOLATILE)
        self._inputs = PairedImageSubscriptions(self, RGB_TOPIC, THERMAL_TOPIC, input_qos, params.sync_queue_size,
                                                params.sync_slop, on_pair=self._on_pair, on_frame=self._on_frame,
                                                max_bytes=max(1, int(params.target_history_max_mb * 2**20)))
        self._init_box_sub = self.create_subscription(PolygonStamped, '~/init_box', self._on_init_box, OUTPUT_QOS)
        # rqt_image_view publishes clicks on ~/debug_image here (reliable, as it publishes them)
        self._clicks = TwoClickBox()
        self._click_sub = self.create_subscription(Point, '~/debug_image_mouse_left', self._on_click, OUTPUT_QOS)
        # The watchdog of the inputs: a stall is noticed at most one period after input.timeout. On the
        # steady clock: with use_sim_time a paused or stopped /clock must not pause the watchdog too.
        self._watch_timer = self.create_timer(min(0.25, max(0.02, params.input_timeout / 4.0)), self._watch_inputs,
                                              clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._clock_jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None,
                          min_backward=Duration(nanoseconds=-int(params.input_jump_back_threshold * 1e9)),
                          on_clock_change=True),
            post_callback=self._on_clock_jump)
        with self._tracker_lock:
            self._pending_initial_box = params.initial_box
        self._worker_stop = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, args=(self._slot, self._worker_stop),
                                        name='ckd_tracker_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'active: tracking {self.resolve_topic_name(RGB_TOPIC)} + {self.resolve_topic_name(THERMAL_TOPIC)} '
            f'(QoS {params.input_reliability}, depth {params.input_depth}; slop {params.sync_slop} s)')
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._drop_target()
        if self._params is not None and self._params.unload_on_deactivate:
            self._release_model()
        self.get_logger().info('inactive: subscriptions destroyed, target dropped')
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_outputs()
        self._release_model()
        self._params = None
        self.get_logger().info('unconfigured: model released')
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release_everything()
        self._finalized = True
        self.get_logger().info(f'shut down from {state.label}')
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'error processing (from {state.label}): releasing everything')
        self.release_everything()
        return TransitionCallbackReturn.SUCCESS

    def release_everything(self) -> None:
        """Stop the worker and subscriptions, destroy outputs, free the model. Idempotent; never raises."""
        for step in (self._stop_processing, self._drop_target, self._release_outputs, self._release_model):
            try:
                step()
            except Exception:
                self.get_logger().error(f'release step {step.__name__} failed:\n{traceback.format_exc()}')

    @property
    def finalized(self) -> bool:
        return self._finalized

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Refuse a value that would fail the next configure; say when an accepted one takes effect.
        A valid diagnostic_updater.period applies at once (the updater's timer)."""
        ours = {spec.name for spec in PARAMETER_SPECS}
        updates = {p.name: plain_value(p.value) for p in parameters if p.name in ours}
        period = None
        updater = getattr(self, '_updater', None)   # None while the updater declares the period: it checks it
        try:
            for parameter in parameters:
                if parameter.name == DIAGNOSTIC_PERIOD_PARAMETER and updater is not None:
                    period = read_diagnostic_period(parameter.value)
            problem = check_parameter_update(node_parameter_getter(self), updates) if updates else None
        except ParameterError as error:
            problem = str(error)
        if problem:
            self.get_logger().warning(f'set_parameters refused: {problem}')
            return SetParametersResult(successful=False, reason=problem)
        if updates and self._params is not None:   # configured: the values in use were read at configure
            self.get_logger().info(f"parameter(s) {', '.join(sorted(updates))} set; they take effect at the next "
                                   'configure (cleanup, then configure)')
        if period is not None:
            set_updater_period(self, updater, period)
            self.get_logger().info(f'/diagnostics now every {period:g} s')
        return SetParametersResult(successful=True)

    def lifecycle_state_label(self) -> str:
        return self._state_machine.current_state[1]

    def _fail_transition(self, transition: str, reason: str) -> TransitionCallbackReturn:
        self.get_logger().error(f'{transition} failed: {reason}')
        self._issues.report('lifecycle', ERROR, f'{transition} failed: {reason}')
        if transition == 'configure':
            self._release_outputs()
            self._release_model()
            self._params = None
        return TransitionCallbackReturn.FAILURE

    # ------------------------------------------------------------------ model
    @staticmethod
    def _resolve_device(requested: str) -> tuple[str, str]:
        """(device, note): CUDA when asked for and present; CPU with a note when CUDA is absent."""
        import torch
        from ckd_ros.core.api import resolve_device
        if requested.startswith('cuda') and not torch.cuda.is_available():
            return 'cpu', f"device '{requested}' was requested but CUDA is not available: running on the CPU"
        return str(resolve_device(requested)), ''

    def _hardware_id(self) -> str:
        if self._device.startswith('cuda'):
            import torch
            return f'{self._device} ({torch.cuda.get_device_name(torch.device(self._device))})'
        return self._device or 'none'

    def _load_model(self) -> Optional[str]:
        """Load (and warm up) the tracker; the reason on failure."""
        params = self._params
        try:
            from ckd_ros import init_tracker
            from ckd_ros.core.api import select_acceleration
            from ckd_ros.core.cpu_info import apply_threads, choose_threads
            threads = choose_threads(params.torch_threads)
            wait_policy_note = apply_threads(threads)
            self.get_logger().info(threads.log_line())
            if wait_policy_note:
                self.get_logger().warning(wait_policy_note)
            choice = select_acceleration(params.precision, params.backend, self._device)
            self.get_logger().info(choice.log_line())
            self._acceleration = f'{choice.precision}/{choice.backend}'
            tracker = init_tracker(params.model_config, checkpoint=params.checkpoint or None, device=self._device,
                                   precision=choice.precision, backend=choice.backend)
            if params.warmup:
                self._warm_up(tracker)
        except Exception as error:
            self.get_logger().debug(traceback.format_exc())
            return (f"could not load model_config '{params.model_config}' with checkpoint "
                    f"'{params.checkpoint or '(default)'}' on {self._device}: {error}")
        with self._tracker_lock:
            self._tracker = tracker
        return None

    @staticmethod
    def _warm_up(tracker) -> None:
        # One initialize + track on a blank pair: the first real frame then runs at full speed, and weights or
        # a precision that give NaN/inf fail configure here (NonFiniteOutputError) instead of tracking garbage.
        tracker.warm_up()

    def _release_model(self) -> None:
        with self._tracker_lock:
            had_model = self._tracker is not None
            self._tracker = None
        if had_model:
            gc.collect()
            torch = sys.modules.get('torch')
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inputs and worker
    def _input_topic(self, index: int) -> str:
        return self.resolve_topic_name(RGB_TOPIC if index == RGB else THERMAL_TOPIC)

    def _on_frame(self, index: int, msg: Image) -> None:
        """Every frame, before pairing: is the input still delivering new frames, has time gone back?"""
        try:
            watch = self._streams[index]
            stamp_ns = stamp_to_ns(msg.header.stamp)
            ahead_ns = self._stamp_ahead_ns(stamp_ns)
            if ahead_ns is not None:
                # not observed: a stamp from the future as the input's newest made every real frame after it
                # look like a jump back in time
                self._frames_future += 1
                message = (f'{self._input_topic(index)}: frame stamped {ahead_ns / 1e9:.3f} s ahead of the node clock '
                           f'(input.max_stamp_ahead {self._params.input_max_stamp_ahead:g} s): check the clocks '
                           '(chrony/NTP between machines, use_sim_time with a bag); frame not tracked')
                self._issues.report(f'{"rgb" if index == RGB else "thermal"} stamp', ERROR, message)
                self.get_logger().warning(message, throttle_duration_sec=2.0)
                return
            newest = watch.newest_stamp_ns
            verdict = watch.observe(stamp_ns, zlib.crc32(msg.data))
            if verdict in (FRESH, JUMPED_BACK):
                (self._rgb_rate if index == RGB else self._thermal_rate).tick()
            if verdict == ZERO_STAMP:
                message = (f'{self._input_topic(index)}: header.stamp is zero: the camera driver must stamp each '
                           'image with its capture time (pairing, freshness and latency need it); frame not tracked')
                self._issues.report(f'{"rgb" if index == RGB else "thermal"} stamp', ERROR, message)
                self.get_logger().warning(message, throttle_duration_sec=2.0)
            elif verdict == JUMPED_BACK:
                self._restart_time(f'{self._input_topic(index)}: stamp {stamp_ns / 1e9:.3f} s is '
                                   f'{(newest - stamp_ns) / 1e9:.3f} s before the newest frame of that input',
                                   keep=index)
        except Exception:   # a bug here must not take the subscription down
            self._issues.report('input watch', ERROR, f'checking a frame failed: {sys.exc_info()[1]}')
            self.get_logger().error(f'checking a frame failed:\n{traceback.format_exc()}', throttle_duration_sec=5.0)

    def _restart_time(self, reason: str, keep: Optional[int] = None) -> None:
        """Time went backwards: frames, pairs and statistics from before the jump mean nothing after it."""
        self._time_epoch += 1
        self._time_restarts += 1
        for index, watch in enumerate(self._streams):
            if index != keep:
                watch.forget_stamps()
        if self._inputs is not None:
            self._inputs.reset()
        if self._history is not None:
            self._history.clear()
        if self._slot is not None:
            self._slot.clear()
        self._latency.clear()
        self._pair_dt_window.clear()
        self._gain.reset()
        message = f'time went backwards ({reason}): pairing, frame history and latency statistics restarted'
        self._issues.report('time', WARN, message)
        self.get_logger().warning(message)

    def _on_clock_jump(self, jump) -> None:
        try:
            if jump.delta.nanoseconds < 0:
                self._restart_time(f'the node clock jumped back by {-jump.delta.nanoseconds / 1e9:.3f} s')
            else:
                self._restart_time(f'the node clock changed source ({jump.clock_change})')
        except Exception:
            self.get_logger().error(f'handling a clock jump failed:\n{traceback.format_exc()}')

    def _watch_inputs(self) -> None:
        """Timer: report inputs that stopped delivering new frames, or keep repeating the same pixels."""
        try:
            changed = False
            for index, watch in enumerate(self._streams):
                name, topic = ('rgb' if index == RGB else 'thermal'), self._input_topic(index)
                stalled = watch.frames > 0 and watch.stalled()
                if stalled:
                    silent = watch.silent_for()
                    detail = ''
                    if watch.stale_frames or watch.zero_stamps:
                        detail = (f'; {watch.stale_frames} frames repeated or went back to an older stamp, '
                                  f'{watch.zero_stamps} had a zero stamp')
                    self._issues.set_condition(
                        f'{name} stalled', WARN,
                        f'{topic} stalled: no new frame for {silent:.1f} s (input.timeout {watch.timeout_s:g} s)'
                        f'{detail}', since=time.monotonic() - silent + watch.timeout_s)
                    if not self._stalled[index]:
                        self.get_logger().warning(f'{topic} stalled: no frame with a new stamp for {silent:.1f} s')
                elif self._stalled[index]:
                    self._issues.clear_condition(f'{name} stalled')
                    self.get_logger().info(f'{topic} resumed')
                changed |= stalled != self._stalled[index]
                self._stalled[index] = stalled
                identical = watch.identical_for()
                frozen = not stalled and identical > watch.timeout_s
                if frozen:
                    self._issues.set_condition(
                        f'{name} frozen', WARN,
                        f'{topic}: the last {watch.identical_run + 1} '
                        f'frames have identical pixels ({identical:.1f} s): '
                        'a frozen camera re-stamping its last image, or a perfectly uniform scene')
                    if not self._frozen[index]:
                        self.get_logger().warning(f'{topic}: frames keep repeating the same pixels for '
                                                  f'{identical:.1f} s')
                elif self._frozen[index]:
                    self._issues.clear_condition(f'{name} frozen')
                changed |= frozen != self._frozen[index]
                self._frozen[index] = frozen
            if changed:   # say so now rather than at the next period
                self._publish_status()
                self._updater.force_update()
        except Exception:
            self.get_logger().error(f'watching the inputs failed:\n{traceback.format_exc()}', throttle_duration_sec=5.0)

    def _on_pair(self, rgb_msg: Image, thermal_msg: Image) -> None:
        stamp_ns = stamp_to_ns(rgb_msg.header.stamp)
        pair_dt = (stamp_to_ns(thermal_msg.header.stamp) - stamp_ns) / 1e9
        self._pairs_seen += 1
        self._pair_dt_abs_sum += abs(pair_dt)
        self._pair_dt_window.add(abs(pair_dt))
        self._pair_rate.tick()
        history, slot = self._history, self._slot
        if history is not None and stamp_ns != 0:
            history.add(stamp_ns, (rgb_msg, thermal_msg))
        if slot is not None:
            slot.put((rgb_msg, thermal_msg, self._time_epoch))

    def _worker_loop(self, slot: LatestSlot, stop: threading.Event) -> None:
        while not stop.is_set():
            pair = slot.take(timeout=0.2)
            if pair is None:
                continue
            try:
                self._process_pair(*pair)
            except Exception as error:   # keep the worker alive whatever a frame does
                self._issues.report('processing', ERROR, f'processing a pair failed: {error}')
                self.get_logger().error(f'processing a pair failed:\n{traceback.format_exc()}',
                                        throttle_duration_sec=5.0)

    def _convert_pair(self, rgb_msg: Image, thermal_msg: Image, gain=None) -> Optional[ConvertedPair]:
        """The pair as tracker input, or None after reporting why it cannot be used. ``gain``: the thermal
        gain control to use instead of the stream's (whose smoothed range follows the live frames)."""
        try:
            rgb = rgb_image_to_rgb8(image_msg_to_array(rgb_msg), rgb_msg.encoding)
        except ImageConversionError as error:
            return self._reject('rgb input', f'{self.resolve_topic_name(RGB_TOPIC)}: {error}')
        try:
            thermal_frame = thermal_image_to_rgb8(image_msg_to_array(thermal_msg), thermal_msg.encoding,
                                                  gain or self._gain)
            height, width = rgb.shape[:2]
            thermal = self._registration(thermal_frame.image, height, width)
        except ImageConversionError as error:
            return self._reject('thermal input', f'{self.resolve_topic_name(THERMAL_TOPIC)}: {error}')
        if thermal_frame.nonfinite_pixels:
            self._issues.report('thermal nonfinite', WARN,
                                f'{self.resolve_topic_name(THERMAL_TOPIC)}: {thermal_frame.nonfinite_pixels} NaN/inf '
                                f'pixels of {thermal_frame.image.shape[0] * thermal_frame.image.shape[1]} set to 0')
        sizes = (thermal_frame.image.shape[:2], rgb.shape[:2])
        if sizes != self._aspect_checked_for:
            self._aspect_checked_for = sizes
            warning = self._registration.aspect_warning(*sizes[0], *sizes[1])
            if warning:
                self.get_logger().warning(warning)
                self._issues.report('registration', WARN, warning)
        stamp_ns = stamp_to_ns(rgb_msg.header.stamp)
        return ConvertedPair(header=rgb_msg.header, stamp_ns=stamp_ns,
                             pair_dt=(stamp_to_ns(thermal_msg.header.stamp) - stamp_ns) / 1e9,
                             rgb=rgb, thermal=thermal, thermal_frame=thermal_frame)

    def _reject(self, kind: str, message: str) -> None:
        self._frames_rejected += 1
        self._issues.report(kind, ERROR, message)
        self.get_logger().warning(f'frame rejected: {message}', throttle_duration_sec=2.0)
        return None

    def _process_pair(self, rgb_msg: Image, thermal_msg: Image, epoch: int) -> None:
        stamp_ns = stamp_to_ns(rgb_msg.header.stamp)
        if stamp_ns == 0:
            self._reject('rgb stamp', f'{self._input_topic(RGB)}: header.stamp is zero: the camera driver must stamp '
                         'each image with its capture time; pair not tracked')
            return
        ahead_ns = self._stamp_ahead_ns(stamp_ns)
        if ahead_ns is not None:
            self._reject('rgb stamp', f'{self._input_topic(RGB)}: pair stamped {ahead_ns / 1e9:.3f} '
                         's ahead of the node '
                         'clock (input.max_stamp_ahead): pair not tracked')
            return
        with self._tracker_lock:
            if self._skip_stale_locked(stamp_ns, epoch):
                return
        pair = self._convert_pair(rgb_msg, thermal_msg)
        if pair is None:
            return
        with self._tracker_lock:
            # again: ~/set_target may have initialised on this very pair (or a newer one) meanwhile, and
            # tracking the initialisation frame again changed the tracker's state (a replay's results
            # varied from run to run) and repeated its stamp
            if self._skip_stale_locked(stamp_ns, epoch):
                return
            tracker = self._tracker
            if tracker is None:
                return
            size = pair.rgb.shape[:2]
            if (self._frame_size is not None and size != self._frame_size
                    and self._target_state != TrackedTarget.STATE_IDLE):
                message = (f'RGB image size changed from {self._frame_size[1]}x{self._frame_size[0]} to '
                           f'{size[1]}x{size[0]}: target {self._target_id} dropped (its box belongs to the old '
                           'image); set a new target')
                self._issues.report('frame size', WARN, message)
                self.get_logger().warning(message)
                self._target_state = TrackedTarget.STATE_IDLE
                self._last_box, self._last_score = None, 0.0
            self._frame_size = size
            if self._pending_initial_box is not None:
                box, self._pending_initial_box = self._pending_initial_box, None
                problem = check_target_box(box, pair.rgb.shape[1], pair.rgb.shape[0])
                if not problem:
                    try:
                        self._initialize_locked(tracker, pair, box, source="parameter 'initial_box'", epoch=epoch)
                    except ValueError as error:   # e.g. a crop that cannot overlap a 1-pixel-wide image
                        problem = f'cannot initialise the tracker on this frame: {error}'
                    else:
                        self._publish_result_locked(pair)
                if problem:
                    self._issues.report('initial_box', ERROR, f"parameter 'initial_box': {problem}")
                    self.get_logger().error(f"parameter 'initial_box' not used: {problem}")
            elif self._target_state != TrackedTarget.STATE_IDLE:
                self._tracked_stamp_ns, self._tracked_epoch = pair.stamp_ns, epoch
                self._track_locked(tracker, pair)
                self._publish_result_locked(pair)
            box = self._last_box if self._target_state != TrackedTarget.STATE_IDLE else None
            lost, score = self._target_state == TrackedTarget.STATE_LOST, self._last_score
        self._publish_debug_image(pair, box, score, lost)

    def _skip_stale_locked(self, stamp_ns: int, epoch: int) -> bool:
        """An output never repeats a stamp or goes back in time: a pair from before a time restart, or not
        newer than the last one tracked or initialised on (a duplicate, a frozen stream, a late frame), is
        skipped and counted."""
        if epoch != self._time_epoch or (self._tracked_stamp_ns is not None and epoch == self._tracked_epoch
                                         and stamp_ns <= self._tracked_stamp_ns) or (
                self._published_stamp_ns is not None and epoch == self._published_epoch
                and stamp_ns <= self._published_stamp_ns):
            self._pairs_out_of_order += 1
            return True
        return False

    def _stamp_ahead_ns(self, stamp_ns: int) -> Optional[int]:
        """How far ``stamp_ns`` lies ahead of the node clock beyond input.max_stamp_ahead, or None. A zero
        node clock (use_sim_time before the first /clock message) checks nothing."""
        params = self._params
        now_ns = self.get_clock().now().nanoseconds
        if params is None or now_ns <= 0:
            return None
        ahead_ns = stamp_ns - now_ns
        return ahead_ns if ahead_ns > params.input_max_stamp_ahead * 1e9 else None

    def _initialize_locked(self, tracker, pair: ConvertedPair, box, source: str, epoch: int) -> None:
        box = tuple(float(v) for v in box)
        tracker.initialize(pair.rgb, pair.thermal, box)
        self._tracked_stamp_ns, self._tracked_epoch = pair.stamp_ns, epoch
        self._frame_size = pair.rgb.shape[:2]
        self._target_id += 1
        self._target_state = TrackedTarget.STATE_TRACKING
        self._last_box, self._last_score = box, 1.0
        self.get_logger().info(f'target {self._target_id} set by {source}: {[round(v, 1) for v in box]}')

    def _track_locked(self, tracker, pair: ConvertedPair) -> None:
        result = tracker.track(pair.rgb, pair.thermal)
        box = tuple(float(v) for v in result.box)
        if not result.valid or not all(math.isfinite(v) for v in box):
            # NaN/inf network output: never a confident box. The tracker kept its last good box; the output
            # says LOST with score 0 and /diagnostics says ERROR until it recovers.
            self._issues.report('tracker', ERROR, result.error or f'the tracker returned a non-finite box {box}; '
                                'kept the last box')
            self._target_state = TrackedTarget.STATE_LOST
            self._last_score = 0.0
            return
        self._last_box = box
        self._last_score = finite_or(result.score, 0.0)
        self._target_state = _tracker_state_to_msg(result.state)

    def _publish_result_locked(self, pair: ConvertedPair) -> None:
        msg = TrackedTarget(header=pair.header, score=float(self._last_score), state=self._target_state,
                            target_id=self._target_id, pair_dt=float(pair.pair_dt))
        msg.x, msg.y, msg.width, msg.height = (float(v) for v in self._last_box)
        latency = (self.get_clock().now().nanoseconds - pair.stamp_ns) / 1e9
        msg.latency = float(latency)
        self._target_pub.publish(msg)
        if self._published_epoch != self._time_epoch or self._published_stamp_ns is None \
                or pair.stamp_ns > self._published_stamp_ns:
            self._published_stamp_ns, self._published_epoch = pair.stamp_ns, self._time_epoch
        self._latency.add(latency)
        self._output_rate.tick()
        if self._detections_pub is not None:
            self._detections_pub.publish(detections_msg(pair.header, self._last_box, self._last_score,
                                                        self._target_id))

    def _publish_debug_image(self, pair: ConvertedPair, box, score: float, lost: bool) -> None:
        publisher = self._debug_pub
        if publisher is None or publisher.get_subscription_count() == 0:
            return   # drawing costs time: only when someone looks
        label = f'target {self._target_id} {STATE_NAMES[self._target_state]}  dt {pair.pair_dt * 1000:+.1f} ms'
        canvas = compose_debug_image(pair.rgb, pair.thermal, box, score, lost, label)
        publisher.publish(array_to_image_msg(canvas, 'rgb8', header=pair.header))

    def _stop_processing(self) -> None:
        if self._inputs is not None:
            self._frames_unmatched_at_stop = self._inputs.frames_unmatched
            self._inputs.destroy()
            self._inputs = None
        if self._init_box_sub is not None:
            self.destroy_subscription(self._init_box_sub)
            self._init_box_sub = None
        if self._click_sub is not None:
            self.destroy_subscription(self._click_sub)
            self._click_sub = None
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        if self._clock_jump_handle is not None:
            self._clock_jump_handle.unregister()
            self._clock_jump_handle = None
        for kind in ('rgb stalled', 'thermal stalled', 'rgb frozen', 'thermal frozen'):
            self._issues.clear_condition(kind)
        self._stalled, self._frozen = [False, False], [False, False]
        self._worker_stop.set()
        if self._slot is not None:
            self._slot.close()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            if worker.is_alive():
                self.get_logger().error(f'the tracking worker did not stop within {WORKER_JOIN_TIMEOUT_S} s')
        if self._history is not None:
            self._history.clear()

    def _release_outputs(self) -> None:
        for name in ('_target_pub', '_detections_pub', '_debug_pub'):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        for name in ('_set_target_srv', '_reset_srv'):
            service = getattr(self, name)
            if service is not None:
                self.destroy_service(service)
                setattr(self, name, None)

    def _drop_target(self) -> None:
        with self._tracker_lock:
            self._target_state = TrackedTarget.STATE_IDLE
            self._last_box, self._last_score = None, 0.0
            self._pending_initial_box = None

    # ------------------------------------------------------------------ target requests
    def _on_set_target(self, request: SetTarget.Request, response: SetTarget.Response) -> SetTarget.Response:
        box = (request.x, request.y, request.width, request.height)
        try:
            response.success, response.message = self._set_target(box, stamp_to_ns(request.stamp), '~/set_target')
        except Exception as error:   # never let a request take the node down
            response.success, response.message = False, f'internal error: {error}'
            self.get_logger().error(traceback.format_exc())
        response.target_id = self._target_id
        return response

    def _on_init_box(self, msg: PolygonStamped) -> None:
        try:
            stamp_ns, box = polygon_to_box(msg)
            # a polygon in another frame (a map, the thermal camera) is not in RGB pixels: refused, not misread
            history = self._history
            newest = history.newest() if history is not None else None
            rgb_frame = newest[1][0].header.frame_id if newest is not None else ''
            if msg.header.frame_id and rgb_frame and msg.header.frame_id != rgb_frame:
                success, message = False, (f"the polygon is in frame '{msg.header.frame_id}', the RGB images in "
                                           f"'{rgb_frame}': give the box in RGB pixels (frame_id '{rgb_frame}' or '')")
            else:
                success, message = self._set_target(box, stamp_ns, '~/init_box')
        except Exception as error:
            success, message = False, str(error)
        if not success:
            self._issues.report('init_box', WARN, f'~/init_box refused: {message}')
            self.get_logger().warning(f'~/init_box refused: {message}', throttle_duration_sec=1.0)

    def _on_click(self, msg: Point) -> None:
        """Two clicks on ~/debug_image (opposite corners, either half) set a target on the newest pair."""
        history = self._history
        newest = history.newest() if history is not None else None
        rgb_width = int(newest[1][0].width) if newest is not None else 0
        try:
            box = self._clicks.click(float(msg.x), float(msg.y), time.monotonic(), rgb_width)
        except ValueError as error:
            success, message = False, str(error)
        else:
            if box is None:
                self.get_logger().info(f'~/debug_image click at ({msg.x:.0f}, {msg.y:.0f}): first corner; click '
                                       f'the opposite corner within {self._clicks.timeout_s:g} s')
                return
            success, message = self._set_target(box, 0, '~/debug_image clicks')
        if not success:
            self._issues.report('init_box', WARN, f'target from clicks refused: {message}')
            self.get_logger().warning(f'target from clicks refused: {message}', throttle_duration_sec=1.0)

    def _set_target(self, box, stamp_ns: int, source: str) -> tuple[bool, str]:
        """Initialise the tracker on the pair closest to ``stamp_ns`` (0: the newest); (success, reason)."""
        state = self.lifecycle_state_label()
        if state != 'active':
            return False, f'node is not active (state: {state}); configure and activate it first'
        values = [float(v) for v in box]
        if not all(math.isfinite(v) for v in values):
            return False, f'box {values} has a non-finite value (NaN or inf)'
        if values[2] <= 0 or values[3] <= 0:
            return False, f'box needs a positive width and height, got width={values[2]:g}, height={values[3]:g}'
        history = self._history
        entry = None if history is None else (history.newest() if stamp_ns == 0 else history.closest(stamp_ns))
        if entry is None:
            return False, ('no synchronized RGB + thermal frame received yet: check that both '
                           f'{self.resolve_topic_name(RGB_TOPIC)} and {self.resolve_topic_name(THERMAL_TOPIC)} '
                           'are published with compatible QoS and stamps within sync.slop')
        # A requested frame newer than every kept pair is still on its way. Initialising on the newest kept
        # pair instead put the box on another image (in a replay: the previous sequence's last frame, 70 ms
        # older, within target.max_stamp_offset).
        ahead_ns = stamp_ns - history.newest()[0] if stamp_ns else 0
        if ahead_ns > self._params.sync_slop * 1e9:
            return False, (f'the frame stamped {stamp_ns / 1e9:.6f} has not been received yet (the newest pair is '
                           f'{ahead_ns / 1e9:.3f} s older); retry when it has arrived')
        if stamp_ns and abs(entry[0] - stamp_ns) > self._params.target_max_stamp_offset * 1e9:
            return False, (f'no kept frame within {self._params.target_max_stamp_offset:g} s of the requested stamp '
                           f'(closest is {abs(entry[0] - stamp_ns) / 1e9:.3f} s away)')
        # a copy of the stream's gain: this (possibly old) frame gets the live mapping without moving it, and
        # this service thread does not race the worker on the smoothed range
        pair = self._convert_pair(*entry[1], gain=copy.copy(self._gain))
        if pair is None:
            return False, f'the frame for this request cannot be used: {self._issues.last_error}'
        problem = check_target_box(values, pair.rgb.shape[1], pair.rgb.shape[0])
        if problem:
            return False, problem
        with self._tracker_lock:
            if self._tracker is None:
                return False, 'the model is not loaded'
            try:
                self._initialize_locked(self._tracker, pair, values, source, epoch=self._time_epoch)
            except ValueError as error:   # e.g. a crop that cannot overlap a 1-pixel-wide image
                return False, f'cannot initialise the tracker on this frame: {error}'
            self._pending_initial_box = None
        return True, ''

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._tracker_lock:
            had_target = self._target_state != TrackedTarget.STATE_IDLE
            target_id = self._target_id
        self._drop_target()
        response.success = True
        response.message = f'target {target_id} dropped' if had_target else 'no target was set'
        self.get_logger().info(f'~/reset: {response.message}')
        return response

    # ------------------------------------------------------------------ status and diagnostics
    def _initial_status_period(self) -> float:
        try:
            return read_seconds('status_period', self.get_parameter('status_period').value)
        except ParameterError:
            return 1.0   # configure reports the invalid value

    def _replace_status_timer(self, period: float) -> None:
        if abs(self._status_timer.timer_period_ns - period * 1e9) > 1:
            # the new timer first: if creating it fails, the node keeps the old one (destroying first left a
            # node whose every later configure failed)
            timer = self.create_timer(period, self._publish_status)
            self.destroy_timer(self._status_timer)
            self._status_timer = timer

    def _reset_statistics(self) -> None:
        for meter in (self._rgb_rate, self._thermal_rate, self._pair_rate, self._output_rate):
            meter.reset()
        self._latency.clear()
        self._pair_dt_window.clear()
        self._pair_dt_abs_sum, self._pairs_seen, self._frames_rejected, self._frames_future = 0.0, 0, 0, 0
        self._frames_unmatched_at_stop = 0
        self._pairs_out_of_order, self._time_restarts = 0, 0

    def statistics(self) -> dict:
        inputs, slot = self._inputs, self._slot
        latency = self._latency.summary()
        streams = self._streams
        rgb_stalled, thermal_stalled = streams[RGB].stalled(), streams[THERMAL].stalled()
        # A stalled input reports 0 at once, not a rate decaying over the meter's window; so do the pairs
        # and outputs, which need both inputs.
        no_pairs = rgb_stalled or thermal_stalled
        return {
            'rgb_rate': 0.0 if rgb_stalled else self._rgb_rate.rate(),
            'thermal_rate': 0.0 if thermal_stalled else self._thermal_rate.rate(),
            'pair_rate': 0.0 if no_pairs else self._pair_rate.rate(),
            'output_rate': 0.0 if no_pairs else self._output_rate.rate(),
            'latency': latency,
            'pairs_made': inputs.pairs_made if inputs is not None else self._pairs_seen,
            'pairs_dropped': (slot.dropped if slot is not None else 0) + self._pairs_out_of_order,
            'pairs_out_of_order': self._pairs_out_of_order,
            'frames_unmatched': inputs.frames_unmatched if inputs is not None else self._frames_unmatched_at_stop,
            'frames_rejected': self._frames_rejected,
            'pair_dt_mean_abs': self._pair_dt_abs_sum / self._pairs_seen if self._pairs_seen else 0.0,
            'pair_dt_max_abs': self._pair_dt_window.summary()['max'],
        }

    def _model_config_name(self) -> str:
        if self._params is not None:
            return self._params.model_config
        value = self.get_parameter('model_config').value
        return value if isinstance(value, str) else ''

    def _publish_status(self) -> None:
        stats = self.statistics()
        msg = TrackerStatus(lifecycle_state=self.lifecycle_state_label(), tracker_state=self._target_state,
                            target_id=self._target_id, model_config=self._model_config_name(), device=self._device,
                            rgb_rate=stats['rgb_rate'], thermal_rate=stats['thermal_rate'],
                            pair_rate=stats['pair_rate'], output_rate=stats['output_rate'],
                            latency_mean=stats['latency']['mean'], latency_p50=stats['latency']['p50'],
                            latency_p95=stats['latency']['p95'], latency_max=stats['latency']['max'],
                            pairs_made=stats['pairs_made'], pairs_dropped=stats['pairs_dropped'],
                            frames_unmatched=stats['frames_unmatched'], pair_dt_mean_abs=stats['pair_dt_mean_abs'],
                            last_error=self._issues.last_error)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._status_pub.publish(msg)

    def _diagnose(self, status):
        """The diagnostic task: state, rates, pairing, latency, drops, device, recent problems."""
        state = self.lifecycle_state_label()
        stats = self.statistics()
        # Every current problem: errors first, then the state of the inputs, then warnings (newest first).
        issues = self._issues.current()
        input_warning = self._input_warning(stats) if state == 'active' else None
        if input_warning:
            errors = [issue for issue in issues if issue[0] == ERROR]
            issues = errors + [(WARN, input_warning)] + issues[len(errors):]
        summary = summarize_issues(issues)
        level, message = summary if summary else (OK, f'{state}, target {STATE_NAMES[self._target_state]}')
        status.summary(level, message)
        latency = stats['latency']
        streams = self._streams
        for key, value in (
                ('lifecycle_state', state), ('tracker_state', STATE_NAMES[self._target_state]),
                ('target_id', self._target_id), ('model_config', self._model_config_name()),
                ('device', self._device or 'none'), ('device_note', self._device_note),
                ('acceleration', self._acceleration or 'none'),
                ('rgb_rate_hz', f"{stats['rgb_rate']:.2f}"), ('thermal_rate_hz', f"{stats['thermal_rate']:.2f}"),
                ('pair_rate_hz', f"{stats['pair_rate']:.2f}"), ('output_rate_hz', f"{stats['output_rate']:.2f}"),
                ('pair_dt_mean_abs_s', f"{stats['pair_dt_mean_abs']:.4f}"),
                ('pair_dt_max_abs_s', f"{stats['pair_dt_max_abs']:.4f}"),
                ('latency_mean_s', f"{latency['mean']:.4f}"), ('latency_p50_s', f"{latency['p50']:.4f}"),
                ('latency_p95_s', f"{latency['p95']:.4f}"), ('latency_max_s', f"{latency['max']:.4f}"),
                ('pairs_made', stats['pairs_made']), ('pairs_dropped', stats['pairs_dropped']),
                ('frames_unmatched', stats['frames_unmatched']), ('frames_rejected', stats['frames_rejected']),
                ('pairs_out_of_order', stats['pairs_out_of_order']),
                ('input_timeout_s', f'{streams[RGB].timeout_s:g}'),
                ('rgb_stalled', streams[RGB].frames > 0 and streams[RGB].stalled()),
                ('thermal_stalled', streams[THERMAL].frames > 0 and streams[THERMAL].stalled()),
                ('rgb_silent_s', f'{streams[RGB].silent_for():.2f}'),
                ('thermal_silent_s', f'{streams[THERMAL].silent_for():.2f}'),
                ('frames_stale_stamp', streams[RGB].stale_frames + streams[THERMAL].stale_frames),
                ('frames_zero_stamp', streams[RGB].zero_stamps + streams[THERMAL].zero_stamps),
                ('frames_future_stamp', self._frames_future),
                ('frames_identical', streams[RGB].identical_frames + streams[THERMAL].identical_frames),
                ('time_restarts', self._time_restarts),
                ('history_pairs', len(self._history) if self._history is not None else 0),
                ('history_mib', f'{(self._history.bytes if self._history is not None else 0) / 2**20:.1f}'),
                ('last_error', self._issues.last_error),
                ('backends', f'images {IMAGE_BACKEND}, pairing {SYNC_BACKEND}, diagnostics {UPDATER_BACKEND}'),
                ('cv_bridge_problem', CV_BRIDGE_PROBLEM)):
            # diagnostic_updater's DiagnosticStatusWrapper.add stores the value as given and the publish
            # raises TypeError for anything but str (Humble to Rolling): the node died 1 s after start
            status.add(key, str(value))
        return status

    def _input_warning(self, stats: dict) -> Optional[str]:
        """What is wrong with the inputs of an active node beyond stalls (the watchdog reports those)."""
        never = [index for index, watch in enumerate(self._streams) if watch.frames == 0]
        if len(never) == 2:
            return (f'active but no images on {self._input_topic(RGB)} / {self._input_topic(THERMAL)} '
                    '(check topics and QoS)')
        if never:
            index = never[0]
            return (f'no images on {self._input_topic(index)} since activation '
                    f'{self._streams[index].silent_for():.1f} s ago while {self._input_topic(1 - index)} arrives '
                    '(check the topic and QoS)')
        if not any(self._stalled) and stats['pair_rate'] == 0.0:
            return 'images arrive but no RGB-thermal pair matches (check stamps and sync.slop)'
        return None

    def autostart(self) -> None:
        """configure + activate without a lifecycle manager (the `autostart` parameter)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error('autostart: configure failed; the node stays unconfigured')
            return
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error(f'autostart: activate failed; the node is {self.lifecycle_state_label()}')


def _tracker_state_to_msg(state) -> int:
    """The core tracker's result state as a TrackedTarget.STATE_* value."""
    from ckd_ros.core.tracker import LOST
    return TrackedTarget.STATE_LOST if state == LOST else TrackedTarget.STATE_TRACKING


def _no_keyboard_interrupt(signum, frame) -> None:
    """Python's handler for SIGINT. rclpy's own handler shuts the context down (the spin loop below then
    ends) and chains to the handler it found; Python's default one raised KeyboardInterrupt at whatever
    bytecode ran next, once inside a Future's __del__, which printed 'Exception ignored ... Traceback'."""


def main(args=None) -> int:
    signal.signal(signal.SIGINT, _no_keyboard_interrupt)   # before rclpy.init, which chains to it
    rclpy.init(args=args)
    node = None
    try:
        node = CkdTrackerNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        autostart = node.get_parameter('autostart').value
        if autostart is True:
            node.autostart()
        elif autostart is not False:
            node.get_logger().error(f"parameter 'autostart' must be true or false, got {autostart!r}: not starting")
        while rclpy.ok() and not node.finalized:
            try:
                executor.spin_once(timeout_sec=0.2)
            except Exception:
                # SIGINT/SIGTERM shut the context down from rclpy's signal handler; a wait that starts
                # just after that fails with an RCLError instead of ExternalShutdownException.
                if rclpy.ok():
                    raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.release_everything()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
