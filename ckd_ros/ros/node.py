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

Tracking decisions (the target and its id, the initial box, the time rules that keep outputs from going
back in time, the frame-size check, the input health) are the ROS-free
:class:`ckd_ros.core.session.TrackingSession`, which also documents them; the node converts messages
to arrays for it and publishes what it decides.
"""
from __future__ import annotations

import copy
import functools
import operator
import signal
import sys
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
from ckd_ros.core.health import ERROR, OK, WARN, IssueBoard, summarize_issues
from ckd_ros.core.image import ThermalFrame, ThermalRegistration
from ckd_ros.core.session import (IDLE, LOST, TRACKING, Output, Step, TargetRefused, TrackingSession, choose_device,
                                  hardware_id)
from ckd_ros.core.visualize import compose_debug_image
from ckd_ros.msg import TrackedTarget, TrackerStatus
from ckd_ros.ros.conversions import (CV_BRIDGE_PROBLEM, DETECTIONS_AVAILABLE, IMAGE_BACKEND, array_to_image_msg,
                                     detections_msg, image_msg_to_array, polygon_to_box, stamp_to_ns,
                                     tracker_status_msg)
from ckd_ros.ros.diagnostics import UPDATER_BACKEND, create_updater, set_updater_period
from ckd_ros.ros.params import (ParameterError, TrackerNodeParameters, declare_parameters, node_parameter_getter,
                                read_parameters, read_seconds, review_parameter_update)
from ckd_ros.ros.synchronizer import RGB, SYNC_BACKEND, THERMAL, PairedImageSubscriptions, input_qos
from ckd_ros.srv import SetTarget

NODE_NAME = 'ckd_tracker'
RGB_TOPIC = 'rgb/image'
THERMAL_TOPIC = 'thermal/image'
STATE_MSG = {IDLE: TrackedTarget.STATE_IDLE, TRACKING: TrackedTarget.STATE_TRACKING, LOST: TrackedTarget.STATE_LOST}
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


def _from_session(path: str) -> property:
    """The session's state, read-only, under the name the node kept it by before the session held it."""
    getter = operator.attrgetter(path)
    return property(lambda self: getter(self._session))


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
    # the session's state under the names the node kept it by (tests read them)
    _tracker, _history, _last_box = _from_session('tracker'), _from_session('history'), _from_session('box')
    _target_id, _time_epoch = _from_session('target_id'), _from_session('epoch')
    _pairs_out_of_order = _from_session('health.pairs_out_of_order')
    _frames_future, _frames_rejected = _from_session('health.frames_future'), _from_session('health.frames_rejected')
    _time_restarts, _acceleration = _from_session('health.time_restarts'), _from_session('acceleration')

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        # after the declaration: values from files and the command line are checked at configure
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._params: Optional[TrackerNodeParameters] = None
        self._device, self._device_note = '', ''
        # The tracker, the target, the time rules and the input statistics (core/session.py).
        self._issues = IssueBoard()
        self._session = TrackingSession(self._issues, self.get_logger(),
                                        clock_ns=lambda: self.get_clock().now().nanoseconds)
        self._session.on_time_restart = self._forget_queued_pairs

        # Created at configure / activate.
        self._target_pub = self._detections_pub = self._debug_pub = None
        self._set_target_srv = self._reset_srv = None
        self._inputs: Optional[PairedImageSubscriptions] = None
        self._init_box_sub = self._click_sub = self._watch_timer = self._clock_jump_handle = None
        self._clicks = TwoClickBox()
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
            self._session.gain = params.make_gain_control()
            self._session.registration = ThermalRegistration(params.thermal_registration, params.thermal_homography)
        except (ParameterError, ValueError) as error:
            return self._fail_transition('configure', str(error))
        self._params = params
        self._issues.clear()
        self._session.configure(params.stats_window, params.input_max_stamp_ahead, params.sync_slop,
                                params.target_max_stamp_offset)
        try:
            self._device, self._device_note = choose_device(params.device)
        except Exception as error:
            return self._fail_transition('configure', f"parameter 'device': {error}")
        if self._device_note:
            self.get_logger().warning(self._device_note)
            self._issues.report('device', WARN, self._device_note)
        self.get_logger().info(f'device: {self._device}')
        self._updater.setHardwareID(hardware_id(self._device))
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
        # statistics, input watches, frame history, time marks and the thermal gain start afresh; the initial
        # box waits for the first pair
        self._session.start(params.input_timeout, params.input_jump_back_threshold, params.target_history_size,
                            int(params.target_history_max_mb * 2**20),   # sized by pairing.payload_bytes
                            initial_box=params.initial_box, topics=(self._input_topic(RGB), self._input_topic(THERMAL)))
        qos = input_qos(params.input_reliability, params.input_depth)
        self._inputs = PairedImageSubscriptions(self, RGB_TOPIC, THERMAL_TOPIC, qos, params.sync_queue_size,
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
        self._session.start_worker(lambda pair, epoch: self._process_pair(*pair, epoch))
        self.get_logger().info(
            f'active: tracking {self.resolve_topic_name(RGB_TOPIC)} + {self.resolve_topic_name(THERMAL_TOPIC)} '
            f'(QoS {params.input_reliability}, depth {params.input_depth}; slop {params.sync_slop} s)')
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._session.drop_target()
        if self._params is not None and self._params.unload_on_deactivate:
            self._session.release_model()
        self.get_logger().info('inactive: subscriptions destroyed, target dropped')
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_outputs()
        self._session.release_model()
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
        for step in (self._stop_processing, self._session.drop_target, self._release_outputs,
                     self._session.release_model):
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
        updater = getattr(self, '_updater', None)   # None while the updater declares the period: it checks it
        problem, updates, period = review_parameter_update(parameters, node_parameter_getter(self), updater is not None)
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
            self._session.release_model()
            self._params = None
        return TransitionCallbackReturn.FAILURE

    # ------------------------------------------------------------------ model
    def _load_model(self) -> Optional[str]:
        """Load (and warm up) the tracker; the reason on failure."""
        params = self._params
        try:
            self._session.load_model(params.model_config, params.checkpoint or None, self._device, params.precision,
                                     params.backend, params.torch_threads, params.warmup)
        except Exception as error:
            self.get_logger().debug(traceback.format_exc())
            return (f"could not load model_config '{params.model_config}' with checkpoint "
                    f"'{params.checkpoint or '(default)'}' on {self._device}: {error}")
        return None

    # ------------------------------------------------------------------ inputs and worker
    def _input_topic(self, index: int) -> str:
        return self.resolve_topic_name(RGB_TOPIC if index == RGB else THERMAL_TOPIC)

    def _on_frame(self, index: int, msg: Image) -> None:
        """Every frame, before pairing: is the input still delivering new frames, has time gone back?"""
        try:
            self._session.observe_frame(index, stamp_to_ns(msg.header.stamp), zlib.crc32(msg.data))
        except Exception:   # a bug here must not take the subscription down
            self._issues.report('input watch', ERROR, f'checking a frame failed: {sys.exc_info()[1]}')
            self.get_logger().error(f'checking a frame failed:\n{traceback.format_exc()}', throttle_duration_sec=5.0)

    def _forget_queued_pairs(self) -> None:
        """Time went backwards (the session starts a new time epoch): the frames waiting for a partner go."""
        if self._inputs is not None:
            self._inputs.reset()

    def _on_clock_jump(self, jump) -> None:
        try:
            self._session.restart_time(f'the node clock jumped back by {-jump.delta.nanoseconds / 1e9:.3f} s'
                                       if jump.delta.nanoseconds < 0 else
                                       f'the node clock changed source ({jump.clock_change})')
        except Exception:
            self.get_logger().error(f'handling a clock jump failed:\n{traceback.format_exc()}')

    def _watch_inputs(self) -> None:
        """Timer: report inputs that stopped delivering new frames, or keep repeating the same pixels."""
        try:
            if self._session.health.watch(self._issues, self._session.topics, self.get_logger()):
                self._publish_status()   # say so now rather than at the next period
                self._updater.force_update()
        except Exception:
            self.get_logger().error(f'watching the inputs failed:\n{traceback.format_exc()}', throttle_duration_sec=5.0)

    def _on_pair(self, rgb_msg: Image, thermal_msg: Image) -> None:
        self._session.note_pair(stamp_to_ns(rgb_msg.header.stamp), stamp_to_ns(thermal_msg.header.stamp),
                                (rgb_msg, thermal_msg))

    def _convert_pair(self, rgb_msg: Image, thermal_msg: Image, gain=None) -> Optional[ConvertedPair]:
        """The pair as tracker input, or None after reporting why it cannot be used. ``gain``: the thermal
        gain control to use instead of the stream's (whose smoothed range follows the live frames)."""
        frames = self._session.prepare(lambda: image_msg_to_array(rgb_msg), rgb_msg.encoding,
                                       lambda: image_msg_to_array(thermal_msg), thermal_msg.encoding, gain)
        if frames is None:
            return None
        stamp_ns = stamp_to_ns(rgb_msg.header.stamp)
        return ConvertedPair(header=rgb_msg.header, stamp_ns=stamp_ns,
                             pair_dt=(stamp_to_ns(thermal_msg.header.stamp) - stamp_ns) / 1e9,
                             rgb=frames.rgb, thermal=frames.thermal, thermal_frame=frames.thermal_frame)

    def _process_pair(self, rgb_msg: Image, thermal_msg: Image, epoch: int) -> None:
        session, stamp_ns = self._session, stamp_to_ns(rgb_msg.header.stamp)
        problem = session.pair_problem(stamp_ns)
        if problem:
            session.reject('rgb stamp', f'{self._input_topic(RGB)}: {problem}')
            return
        if session.is_stale(stamp_ns, epoch):
            return
        pair = self._convert_pair(rgb_msg, thermal_msg)
        if pair is None:
            return
        step = session.track_pair(pair.rgb, pair.thermal, pair.stamp_ns, epoch,
                                  publish=functools.partial(self._publish_result, pair))
        if step is not None:
            self._publish_debug_image(pair, step)

    def _publish_result(self, pair: ConvertedPair, output: Output) -> None:
        """One output (the session calls this under its lock, so outputs keep its order)."""
        msg = TrackedTarget(header=pair.header, score=output.score, state=STATE_MSG[output.state],
                            target_id=output.target_id, pair_dt=float(pair.pair_dt), latency=output.latency)
        msg.x, msg.y, msg.width, msg.height = (float(v) for v in output.box)
        self._target_pub.publish(msg)
        if self._detections_pub is not None:
            self._detections_pub.publish(detections_msg(pair.header, output.box, output.score, output.target_id))

    def _publish_debug_image(self, pair: ConvertedPair, step: Step) -> None:
        publisher = self._debug_pub
        if publisher is None or publisher.get_subscription_count() == 0:
            return   # drawing costs time: only when someone looks
        label = f'target {step.target_id} {step.state.lower()}  dt {pair.pair_dt * 1000:+.1f} ms'
        canvas = compose_debug_image(pair.rgb, pair.thermal, step.box, step.score, step.lost, label)
        publisher.publish(array_to_image_msg(canvas, 'rgb8', header=pair.header))

    def _stop_processing(self) -> None:
        if self._inputs is not None:
            self._session.health.frames_unmatched_at_stop = self._inputs.frames_unmatched
            self._inputs.destroy()
            self._inputs = None
        for name in ('_init_box_sub', '_click_sub', '_watch_timer'):
            entity = getattr(self, name)
            if entity is not None:
                (self.destroy_timer if name == '_watch_timer' else self.destroy_subscription)(entity)
                setattr(self, name, None)
        if self._clock_jump_handle is not None:
            self._clock_jump_handle.unregister()
            self._clock_jump_handle = None
        self._session.stop()   # the worker stops, the inputs' stall conditions end, the kept frames go

    def _release_outputs(self) -> None:
        for name in ('_target_pub', '_detections_pub', '_debug_pub', '_set_target_srv', '_reset_srv'):
            entity = getattr(self, name)
            if entity is not None:
                (self.destroy_lifecycle_publisher if name.endswith('_pub') else self.destroy_service)(entity)
                setattr(self, name, None)

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
            newest = self._session.newest_pair()
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
        newest = self._session.newest_pair()
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
        try:
            values, entry = self._session.target_frame(box, stamp_ns)
        except TargetRefused as refusal:
            return False, str(refusal)
        # a copy of the stream's gain: this (possibly old) frame gets the live mapping without moving it, and
        # this service thread does not race the worker on the smoothed range
        pair = self._convert_pair(*entry[1], gain=copy.copy(self._session.gain))
        if pair is None:
            return False, f'the frame for this request cannot be used: {self._issues.last_error}'
        return self._session.set_target(pair.rgb, pair.thermal, pair.stamp_ns, values, source)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        had_target, target_id = self._session.drop_target()
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

    def statistics(self) -> dict:
        inputs = self._inputs
        return self._session.statistics(pairs_made=inputs.pairs_made if inputs is not None else None,
                                        frames_unmatched=inputs.frames_unmatched if inputs is not None else None)

    def _model_config_name(self) -> str:
        if self._params is not None:
            return self._params.model_config
        value = self.get_parameter('model_config').value
        return value if isinstance(value, str) else ''

    def _publish_status(self) -> None:
        session = self._session
        msg = tracker_status_msg(self.statistics(), lifecycle_state=self.lifecycle_state_label(),
                                 tracker_state=STATE_MSG[session.state], target_id=session.target_id,
                                 model_config=self._model_config_name(), device=self._device,
                                 last_error=self._issues.last_error)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._status_pub.publish(msg)

    def _diagnose(self, status):
        """The diagnostic task: state, rates, pairing, latency, drops, device, recent problems."""
        state = self.lifecycle_state_label()
        stats = self.statistics()
        # Every current problem: errors first, then the state of the inputs, then warnings (newest first).
        issues = self._issues.current()
        session = self._session
        input_warning = session.health.input_warning(session.topics, stats['pair_rate']) if state == 'active' else None
        if input_warning:
            errors = [issue for issue in issues if issue[0] == ERROR]
            issues = errors + [(WARN, input_warning)] + issues[len(errors):]
        summary = summarize_issues(issues)
        tracker_state = session.state.lower()
        level, message = summary if summary else (OK, f'{state}, target {tracker_state}')
        status.summary(level, message)
        history = session.history
        values = [('lifecycle_state', state), ('tracker_state', tracker_state), ('target_id', session.target_id),
                  ('model_config', self._model_config_name()), ('device', self._device or 'none'),
                  ('device_note', self._device_note), ('acceleration', self._acceleration or 'none')]
        values += session.health.diagnostic_values(stats)
        values += [('history_pairs', len(history) if history is not None else 0),
                   ('history_mib', f'{(history.bytes if history is not None else 0) / 2**20:.1f}'),
                   ('last_error', self._issues.last_error),
                   ('backends', f'images {IMAGE_BACKEND}, pairing {SYNC_BACKEND}, diagnostics {UPDATER_BACKEND}'),
                   ('cv_bridge_problem', CV_BRIDGE_PROBLEM)]
        for key, value in values:
            # diagnostic_updater's DiagnosticStatusWrapper.add stores the value as given and the publish
            # raises TypeError for anything but str (Humble to Rolling): the node died 1 s after start
            status.add(key, str(value))
        return status

    def autostart(self) -> None:
        """configure + activate without a lifecycle manager (the `autostart` parameter)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error('autostart: configure failed; the node stays unconfigured')
            return
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error(f'autostart: activate failed; the node is {self.lifecycle_state_label()}')


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
