"""The tracker node's parameters: one table (name, default, meaning), declaration and validation.

Every parameter is declared with ``dynamic_typing`` so that a wrong type or value in a YAML file or on
the command line does not crash the constructor; :func:`read_parameters` validates everything when
the node is configured and raises :class:`ParameterError` naming the parameter, which the node turns
into a configure FAILURE.  Parameters are read at configure: change them, then cleanup + configure.
A running node refuses a ``set_parameters`` call that would make them invalid
(:func:`check_parameter_update`), so a bad value is caught when it is set, not at the next configure.
The same table documents ``config/ckd_tracker.yaml`` and the README's parameter table (a test checks they agree).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ckd_ros.core.image import DEFAULT_GAIN_MODE, GAIN_MODES, REGISTRATION_MODES, ThermalGainControl, parse_homography
# the precision / backend / device vocabularies (one source, torch-free; 'auto': ckd_ros.core.api.select_acceleration)
from ckd_ros.core.options import BACKEND_CHOICES, DEVICE_GRAMMAR, PRECISION_CHOICES, parse_device

RELIABILITY_CHOICES = ('best_effort', 'reliable')
IDENTITY_HOMOGRAPHY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NO_INITIAL_BOX = (0.0, 0.0, 0.0, 0.0)
# Longest duration a seconds parameter may have (int64 nanoseconds hold ~292 years; this is ~11.6 days).
MAX_SECONDS = 1e6
# Deepest image subscription queue (rmw takes a 32-bit depth; only the newest frames are ever used).
MAX_INPUT_DEPTH = 10000
# Shortest period of a publishing timer: 1e-9 s flooded ~/status (0 made /diagnostics ~3200 msg/s).
MIN_PUBLISH_PERIOD = 0.01
# Smallest backwards clock jump that counts as a time restart: 1e-12 s became a zero rclpy Duration,
# which the jump callback refuses (activate failed with a traceback).
MIN_JUMP_BACK_S = 1e-3
# Bounds of counts and sizes that are typos, not configurations (the node allocates by them).
MAX_QUEUE_OR_HISTORY = 100_000
MAX_STATS_WINDOW = 1_000_000
MAX_HISTORY_MB = 1e6
# More torch threads than this is a typo, not a machine (and far more than cores starves the executor).
MAX_TORCH_THREADS = 256


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str


PARAMETER_SPECS: tuple[ParameterSpec, ...] = (
    ParameterSpec('autostart', False,
                  'configure and activate at start-up, without a lifecycle manager (for `ros2 run`)'),
    ParameterSpec('model_config', 'ckd_tiny',
                  'model/tracker configuration: an official CKD config name, ckd_tiny, ckd_small, or a YAML path'),
    ParameterSpec('checkpoint', '',
                  "weights: '' = the configuration's default (shipped ckd_tiny weights), a .pth/.pth.tar path, "
                  "or 'random' (untrained, for tests)"),
    ParameterSpec('device', 'auto',
                  "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; CUDA that is not present falls back "
                  'to CPU with a warning'),
    ParameterSpec('precision', 'fp32',
                  "'fp32' (official numbers), 'bf16' (autocast), 'fp16' (CUDA only) or 'auto': the fastest precision "
                  'measured within 1 SR point on this CPU class / GPU, else fp32 (the choice and its reason are logged '
                  'at configure)'),
    ParameterSpec('backend', 'eager',
                  "'eager', 'compile' (torch.compile; first frame compiles), 'int8' (dynamic int8 Linear layers, CPU), "
                  "'onnxruntime' (ONNX Runtime, CPU; same boxes as eager), 'onnxruntime-int8' (ONNX Runtime with int8 "
                  "weight MatMuls, CPU) or 'auto' (chosen with precision: e.g. 'onnxruntime' where it was measured "
                  "exact and faster); see the README's Performance section"),
    ParameterSpec('torch_threads', 0,
                  'CPU threads for torch (at most 256); 0 = choose: 1 on <= 2 usable cores (affinity, physical cores, '
                  'cgroup quota), else usable - 1 (at most 8); logged at configure'),
    ParameterSpec('warmup', True, 'run one initialize + track on a blank frame at configure (first-frame latency)'),
    ParameterSpec('unload_on_deactivate', False,
                  'load the model at activate and free it at deactivate (frees GPU memory while inactive; '
                  'activate then takes the load time)'),
    ParameterSpec('input.reliability', 'best_effort',
                  "QoS reliability of the image subscriptions: 'best_effort' accepts reliable and best-effort "
                  "publishers; 'reliable' accepts only reliable ones"),
    ParameterSpec('input.depth', 5, 'QoS history depth of the image subscriptions'),
    ParameterSpec('input.timeout', 1.0,
                  'seconds without a new frame (a later stamp) on one input before it is reported stalled '
                  '(/diagnostics WARN naming it, its rate in ~/status 0)'),
    ParameterSpec('input.jump_back_threshold', 1.0,
                  'a frame stamped this many seconds before the newest one of its input means time went '
                  'backwards (bag loop, simulation reset): pairing, frame history and latency statistics '
                  'restart; smaller steps back are out-of-order frames and are not tracked'),
    ParameterSpec('input.max_stamp_ahead', 1.0,
                  'seconds a frame stamp may lie ahead of the node clock (clock offset between machines); a frame '
                  'stamped later than that is rejected with an ERROR diagnostic (check clock sync or use_sim_time): '
                  'tracked, it had a negative latency and made every real frame after it look like time going back'),
    ParameterSpec('sync.slop', 0.05,
                  'largest RGB-thermal stamp difference (seconds, strict) for a pair; ~half the faster '
                  'camera period for hardware-synced cameras, more for free-running ones'),
    ParameterSpec('sync.queue_size', 10, 'frames kept per input while waiting for a partner'),
    ParameterSpec('thermal.gain', DEFAULT_GAIN_MODE,
                  "16-bit/float thermal to 8 bit: 'minmax', 'percentile' or 'fixed' (8-bit thermal passes through)"),
    ParameterSpec('thermal.percentile_low', 1.0, "lower percentile mapped to 0 ('percentile' gain)"),
    ParameterSpec('thermal.percentile_high', 99.0, "upper percentile mapped to 255 ('percentile' gain)"),
    ParameterSpec('thermal.fixed_min', 0.0, "raw value mapped to 0 ('fixed' gain)"),
    ParameterSpec('thermal.fixed_max', 65535.0, "raw value mapped to 255 ('fixed' gain)"),
    ParameterSpec('thermal.range_smoothing', 0.0,
                  'temporal low-pass of the gain range in [0, 1): 0 = per frame, 0.9 = slow (no flicker)'),
    ParameterSpec('thermal.registration', 'resize',
                  "thermal onto the RGB pixel grid: 'identity' (same size required), 'resize', or 'homography'"),
    ParameterSpec('thermal.homography', list(IDENTITY_HOMOGRAPHY),
                  "row-major 3x3 homography from thermal pixels to RGB pixels ('homography' registration)"),
    ParameterSpec('initial_box', list(NO_INITIAL_BOX),
                  '[x, y, width, height] in RGB pixels: the target set on the first pair after activation; '
                  'all zero = none (set one with ~/set_target or ~/init_box)'),
    ParameterSpec('target.history_size', 30,
                  'synchronized pairs kept so that ~/set_target with a stamp initialises on that frame'),
    ParameterSpec('target.max_stamp_offset', 1.0,
                  'a stamped ~/set_target is refused when no kept pair is within this many seconds'),
    ParameterSpec('target.history_max_mb', 256.0,
                  'memory cap (MiB) of the pairs kept for ~/set_target, and of the frames each input holds '
                  'while waiting for a partner: large images keep fewer than target.history_size pairs and '
                  'sync.queue_size frames (the newest is always kept)'),
    ParameterSpec('status_period', 1.0, 'seconds between ~/status messages'),
    ParameterSpec('stats_window', 100, 'number of recent frames the latency statistics cover'),
    ParameterSpec('publish_detections', True,
                  'also publish vision_msgs/Detection2DArray on ~/detections (when vision_msgs is installed)'),
)

# diagnostic_updater declares this one itself; the in-package fallback declares the same name.
DIAGNOSTIC_PERIOD_PARAMETER = 'diagnostic_updater.period'


class ParameterError(ValueError):
    """A parameter value is invalid; the message starts with the parameter's name."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name


@dataclass(frozen=True)
class TrackerNodeParameters:
    autostart: bool
    model_config: str
    checkpoint: str
    device: str
    precision: str
    backend: str
    torch_threads: int
    warmup: bool
    unload_on_deactivate: bool
    input_reliability: str
    input_depth: int
    input_timeout: float
    input_jump_back_threshold: float
    input_max_stamp_ahead: float
    sync_slop: float
    sync_queue_size: int
    thermal_gain: str
    thermal_percentile_low: float
    thermal_percentile_high: float
    thermal_fixed_min: float
    thermal_fixed_max: float
    thermal_range_smoothing: float
    thermal_registration: str
    thermal_homography: tuple
    initial_box: Optional[tuple]          # None when all zero
    target_history_size: int
    target_max_stamp_offset: float
    target_history_max_mb: float
    status_period: float
    stats_window: int
    publish_detections: bool

    def make_gain_control(self) -> ThermalGainControl:
        return ThermalGainControl(self.thermal_gain, self.thermal_percentile_low, self.thermal_percentile_high,
                                  self.thermal_fixed_min, self.thermal_fixed_max, self.thermal_range_smoothing)


def _boolean(name, value):
    if isinstance(value, bool):
        return value
    raise ParameterError(name, f'must be true or false, got {value!r}')


def _integer(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(name, f'must be an integer, got {value!r}')
    if value < minimum:
        raise ParameterError(name, f'must be >= {minimum}, got {value}')
    if maximum is not None and value > maximum:
        raise ParameterError(name, f'must be <= {maximum}, got {value}')
    return int(value)


def read_seconds(name, value, minimum=None):
    """A duration > 0 (>= ``minimum`` when given) that ROS can hold: rclpy durations and timers are int64
    nanoseconds, so a huge value passed configure and then failed activate (OverflowError) or the status timer."""
    if minimum is None:
        return _number(name, value, 0.0, MAX_SECONDS, strict_minimum=True)
    return _number(name, value, minimum, MAX_SECONDS)


def _number(name, value, minimum=None, maximum=None, strict_minimum=False, strict_maximum=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(name, f'must be a finite number, got {value!r}')
    value = float(value)
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        raise ParameterError(name, f'must be {">" if strict_minimum else ">="} {minimum}, got {value}')
    if maximum is not None and (value > maximum or (strict_maximum and value == maximum)):
        raise ParameterError(name, f'must be {"<" if strict_maximum else "<="} {maximum}, got {value}')
    return value


def _choice(name, value, choices):
    if value not in choices:
        raise ParameterError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _text(name, value, allow_empty):
    if not isinstance(value, str):
        raise ParameterError(name, f'must be a string, got {value!r}')
    if not allow_empty and not value.strip():
        raise ParameterError(name, 'must not be empty')
    return value.strip()


def _numbers(name, value, count):
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
        raise ParameterError(name, f'must be a list of {count} numbers, got {value!r}')
    values = list(value)
    if len(values) != count:
        raise ParameterError(name, f'must be a list of {count} numbers, got {len(values)}: {values}')
    return tuple(_number(name, v) for v in values)


def _device(name, value):
    value = _text(name, value, allow_empty=False)
    try:
        return parse_device(value)
    except ValueError:
        raise ParameterError(name, f'must be {DEVICE_GRAMMAR}, got {value.lower()!r}') from None


def read_parameters(get_value: Callable[[str], Any]) -> TrackerNodeParameters:
    """Read and validate every parameter; ``get_value(name)`` returns the current value.

    Raises :class:`ParameterError` for the first invalid one.
    """
    g = get_value
    percentile_low = _number('thermal.percentile_low', g('thermal.percentile_low'), 0.0, 100.0)
    percentile_high = _number('thermal.percentile_high', g('thermal.percentile_high'), 0.0, 100.0)
    if percentile_high <= percentile_low:
        raise ParameterError('thermal.percentile_high',
                             f'must be above thermal.percentile_low ({percentile_low}), got {percentile_high}')
    fixed_min = _number('thermal.fixed_min', g('thermal.fixed_min'))
    fixed_max = _number('thermal.fixed_max', g('thermal.fixed_max'))
    if fixed_max <= fixed_min:
        raise ParameterError('thermal.fixed_max', f'must be above thermal.fixed_min ({fixed_min}), got {fixed_max}')
    homography = _numbers('thermal.homography', g('thermal.homography'), 9)
    try:
        parse_homography(homography)
    except ValueError as error:
        raise ParameterError('thermal.homography', str(error)) from None
    box = _numbers('initial_box', g('initial_box'), 4)
    if box == NO_INITIAL_BOX:
        initial_box = None
    elif box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
        raise ParameterError('initial_box', 'needs x, y >= 0 and width, height > 0 (or all zero for none), '
                             f'got {list(box)}')
    else:
        initial_box = box
    return TrackerNodeParameters(
        autostart=_boolean('autostart', g('autostart')),
        model_config=_text('model_config', g('model_config'), allow_empty=False),
        checkpoint=_text('checkpoint', g('checkpoint'), allow_empty=True),
        device=_device('device', g('device')),
        precision=_choice('precision', g('precision'), PRECISION_CHOICES),
        backend=_choice('backend', g('backend'), BACKEND_CHOICES),
        torch_threads=_integer('torch_threads', g('torch_threads'), 0, MAX_TORCH_THREADS),
        warmup=_boolean('warmup', g('warmup')),
        unload_on_deactivate=_boolean('unload_on_deactivate', g('unload_on_deactivate')),
        input_reliability=_choice('input.reliability', g('input.reliability'), RELIABILITY_CHOICES),
        input_depth=_integer('input.depth', g('input.depth'), 1, MAX_INPUT_DEPTH),
        input_timeout=read_seconds('input.timeout', g('input.timeout')),
        input_jump_back_threshold=read_seconds('input.jump_back_threshold', g('input.jump_back_threshold'),
                                               MIN_JUMP_BACK_S),
        input_max_stamp_ahead=read_seconds('input.max_stamp_ahead', g('input.max_stamp_ahead')),
        sync_slop=read_seconds('sync.slop', g('sync.slop')),
        sync_queue_size=_integer('sync.queue_size', g('sync.queue_size'), 1, MAX_QUEUE_OR_HISTORY),
        thermal_gain=_choice('thermal.gain', g('thermal.gain'), GAIN_MODES),
        thermal_percentile_low=percentile_low,
        thermal_percentile_high=percentile_high,
        thermal_fixed_min=fixed_min,
        thermal_fixed_max=fixed_max,
        thermal_range_smoothing=_number('thermal.range_smoothing', g('thermal.range_smoothing'), 0.0, 1.0,
                                        strict_maximum=True),
        thermal_registration=_choice('thermal.registration', g('thermal.registration'), REGISTRATION_MODES),
        thermal_homography=homography,
        initial_box=initial_box,
        target_history_size=_integer('target.history_size', g('target.history_size'), 1, MAX_QUEUE_OR_HISTORY),
        target_max_stamp_offset=read_seconds('target.max_stamp_offset', g('target.max_stamp_offset')),
        target_history_max_mb=_number('target.history_max_mb', g('target.history_max_mb'), 0.0, MAX_HISTORY_MB,
                                      strict_minimum=True),
        status_period=read_seconds('status_period', g('status_period'), MIN_PUBLISH_PERIOD),
        stats_window=_integer('stats_window', g('stats_window'), 1, MAX_STATS_WINDOW),
        publish_detections=_boolean('publish_detections', g('publish_detections')),
    )


def read_diagnostic_period(value: Any) -> float:
    """``diagnostic_updater.period`` in seconds (an integer is accepted); :class:`ParameterError` when invalid."""
    return read_seconds(DIAGNOSTIC_PERIOD_PARAMETER, plain_value(value), MIN_PUBLISH_PERIOD)


def check_parameter_update(get_value: Callable[[str], Any], updates: dict[str, Any]) -> Optional[str]:
    """Why setting ``updates`` (name -> new value) over the current values is refused, or None.

    Only a problem that the update causes refuses it: a parameter that is invalid already (e.g. from a
    parameter file) and not part of the update is checked at its default instead, so invalid values
    can be fixed one at a time. A conflict between an updated parameter and one that is not updated
    (``thermal.percentile_low`` set above ``thermal.percentile_high``) refuses the update.
    """
    defaults = {spec.name: spec.default for spec in PARAMETER_SPECS}
    replaced: dict[str, Any] = {}

    def value(name):
        if name in updates:
            return updates[name]
        return replaced[name] if name in replaced else get_value(name)

    for _ in range(len(PARAMETER_SPECS) + 1):
        try:
            read_parameters(value)
            return None
        except ParameterError as error:
            if error.name in updates or error.name in replaced or error.name not in defaults:
                return str(error)
            replaced[error.name] = defaults[error.name]
    return 'parameters do not validate'   # not reached: each round replaces a different parameter


def review_parameter_update(parameters, get_value: Callable[[str], Any], check_period: bool
                            ) -> tuple[Optional[str], dict[str, Any], Optional[float]]:
    """A ``set_parameters`` request (rclpy ``Parameter`` objects) seen before it is applied: (the reason to
    refuse it or None, the node's own parameters it changes, the new diagnostic_updater period or None).
    ``check_period`` is False while diagnostic_updater itself declares the period (it checks it then)."""
    ours = {spec.name for spec in PARAMETER_SPECS}
    updates = {p.name: plain_value(p.value) for p in parameters if p.name in ours}
    period = None
    try:
        for parameter in parameters:
            if parameter.name == DIAGNOSTIC_PERIOD_PARAMETER and check_period:
                period = read_diagnostic_period(parameter.value)
        problem = check_parameter_update(get_value, updates) if updates else None
    except ParameterError as error:
        problem = str(error)
    return problem, updates, period


def declare_parameters(node) -> None:
    """Declare every parameter of :data:`PARAMETER_SPECS` on ``node`` (dynamically typed, described)."""
    from rcl_interfaces.msg import ParameterDescriptor

    for spec in PARAMETER_SPECS:
        if not node.has_parameter(spec.name):
            node.declare_parameter(spec.name, spec.default,
                                   ParameterDescriptor(description=spec.description, dynamic_typing=True))


def plain_value(value: Any) -> Any:
    """A parameter value as :func:`read_parameters` takes it: rclpy gives array parameters as
    array.array, tuple or list; all become a list."""
    return list(value) if hasattr(value, 'tolist') or isinstance(value, tuple) else value


def node_parameter_getter(node) -> Callable[[str], Any]:
    """``get_value`` for :func:`read_parameters` that reads ``node``'s current parameter values."""
    return lambda name: plain_value(node.get_parameter(name).value)
