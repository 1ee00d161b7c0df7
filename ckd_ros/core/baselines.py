"""OpenCV's classical single-object trackers (CSRT, KCF, MIL) as baselines with the API of
:class:`ckd_ros.core.tracker.CKDTracker`: ``initialize(rgb, thermal, box)`` and
``track(rgb, thermal)``, each returning a result with ``box`` (x, y, w, h floats), ``score`` and
``state``. So ``ckd-eval run --tracker csrt`` and ``make demo`` run them through the same loop as CKD.

An OpenCV tracker takes one image; :data:`INPUTS` says which:

* ``rgb``: the RGB frame;
* ``thermal``: the 8-bit thermal frame (replicated to 3 channels);
* ``fused``: ``(RGB + thermal) / 2`` per pixel and channel (rounded half up), the simplest RGB-T fusion.

CSRT and KCF are in OpenCV's contrib modules (``opencv-contrib-python-headless``, which replaces
``opencv-python-headless``: both provide ``cv2``); MIL is in the main package too. A tracker that the
installed OpenCV lacks raises :class:`BaselineUnavailable` naming the package to install.

OpenCV reports success or failure per frame, no confidence: ``score`` is 1.0 when it reports the
target found and 0.0 when it reports failure. On failure (or a box that is not finite or has no area)
the result keeps the last box with state ``"LOST"``; the OpenCV tracker goes on searching from its
own state. CSRT's ``psr_threshold`` (peak-to-sidelobe ratio below which it reports failure; OpenCV's
default 0.035) can be set, 0 included (never reports failure).

No torch import: this module needs numpy and cv2 only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .tracking import LOST, TRACKING, TrackResult, check_rgb, check_thermal

BASELINES = ('csrt', 'kcf', 'mil')
INPUTS = ('rgb', 'thermal', 'fused')
# cv2 factory names; the `*_create` functions of OpenCV 4.5.1+ and 5 (not the cv2.legacy ones)
_OPENCV_NAMES = {'csrt': 'TrackerCSRT', 'kcf': 'TrackerKCF', 'mil': 'TrackerMIL'}
LABELS = {'csrt': 'CSRT', 'kcf': 'KCF', 'mil': 'MIL'}
INPUT_LABELS = {'rgb': 'RGB', 'thermal': 'thermal', 'fused': 'fused'}
# the OpenCV distribution -> its contrib build (same version, same cv2 module)
_CONTRIB_OF = {'opencv-python-headless': 'opencv-contrib-python-headless',
               'opencv-python': 'opencv-contrib-python'}


class BaselineUnavailable(RuntimeError):
    """The installed OpenCV lacks the tracker (no contrib build, or no OpenCV at all); the message
    names the package to install."""


@dataclass(frozen=True)
class BaselineOptions:
    """Which OpenCV tracker, on which image, with which CSRT ``psr_threshold`` (None: OpenCV's)."""
    tracker: str = 'csrt'
    input: str = 'fused'
    psr_threshold: float | None = None

    def __post_init__(self):
        if self.tracker not in BASELINES:
            raise ValueError(f"baseline tracker must be one of {', '.join(BASELINES)}, got {self.tracker!r}")
        if self.input not in INPUTS:
            raise ValueError(f"baseline input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.psr_threshold is not None:
            if self.tracker != 'csrt':
                raise ValueError(f'psr_threshold is a CSRT option; {self.tracker} has none')
            value = float(self.psr_threshold)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'psr_threshold must be a finite number >= 0, got {self.psr_threshold!r}')
            object.__setattr__(self, 'psr_threshold', value)

    @property
    def label(self) -> str:
        """e.g. ``CSRT fused (psr 0)``."""
        text = f'{LABELS[self.tracker]} {INPUT_LABELS[self.input]}'
        return text + (f' (psr {self.psr_threshold:g})' if self.psr_threshold is not None else '')

    @property
    def settings(self) -> dict:
        """What decides the boxes, for a run manifest (with the OpenCV version)."""
        return {'tracker': self.tracker, 'tracker_input': self.input, 'csrt_psr_threshold': self.psr_threshold,
                'opencv_version': opencv_version()}


def opencv_version() -> str | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2.__version__


def _installed_opencv() -> dict[str, str]:
    """The pip distributions that provide cv2 here, name -> version."""
    from importlib import metadata
    found = {}
    for name in ('opencv-python-headless', 'opencv-python', 'opencv-contrib-python-headless',
                 'opencv-contrib-python'):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def install_hint(installed: dict[str, str] | None = None) -> str:
    """The pip command that gives this environment OpenCV's contrib build, at the installed version
    (``installed``: OpenCV distribution -> version; default: what pip installed here)."""
    installed = _installed_opencv() if installed is None else installed
    contrib = [n for n in installed if 'contrib' in n]
    plains = [n for n in installed if n in _CONTRIB_OF]
    if plains and contrib:
        # both provide cv2: whichever was installed last overwrote the other's files
        names = ' '.join(plains + contrib)
        return (f"{' and '.join(plains + contrib)} are both installed, and both provide cv2 (the plain build's files "
                f"won); reinstall the contrib build alone: pip uninstall -y {names} && pip install "
                f"{contrib[0]}=={installed[contrib[0]]}")
    if contrib:      # installed, yet cv2 lacks the tracker: a damaged or shadowed install
        return (f'{contrib[0]} {installed[contrib[0]]} is installed but the cv2 imported here lacks it; reinstall it: '
                f'pip install --force-reinstall --no-deps {contrib[0]}=={installed[contrib[0]]}')
    if plains:
        plain_name = plains[0]
        version = installed[plain_name]
        return (f"pip uninstall -y {plain_name} && pip install {_CONTRIB_OF[plain_name]}=={version} "
                f"(OpenCV's contrib build at the version of the installed {plain_name}; it replaces that package: "
                "both provide cv2 and must not be installed together)")
    version = opencv_version()
    pin = f'=={version}.*' if version else ''
    return (f"pip install opencv-contrib-python-headless{pin} (OpenCV's contrib build; it replaces "
            "opencv-python-headless: both provide cv2 and must not be installed together)")


def opencv_factory(tracker: str):
    """``cv2.Tracker<NAME>_create`` (or ``cv2.Tracker<NAME>.create``) for ``tracker``, or
    :class:`BaselineUnavailable` saying what to install."""
    if tracker not in BASELINES:
        raise ValueError(f"baseline tracker must be one of {', '.join(BASELINES)}, got {tracker!r}")
    name = _OPENCV_NAMES[tracker]
    try:
        import cv2
    except ImportError as error:
        raise BaselineUnavailable(f"OpenCV's {LABELS[tracker]} tracker needs OpenCV ({error}): "
                                  "pip install opencv-contrib-python-headless") from None
    create = getattr(cv2, f'{name}_create', None)
    if create is None:
        create = getattr(getattr(cv2, name, None), 'create', None)
    if create is None:
        where = "in OpenCV's contrib modules" if tracker != 'mil' else 'in OpenCV'
        raise BaselineUnavailable(
            f"OpenCV's {LABELS[tracker]} tracker is {where}, and the installed OpenCV {cv2.__version__} has no "
            f"cv2.{name}_create: {install_hint()}")
    return create


def check_available(tracker: str) -> None:
    """Raise :class:`BaselineUnavailable` when the installed OpenCV lacks ``tracker``."""
    opencv_factory(tracker)


def _as_bgr(rgb: np.ndarray, thermal: np.ndarray, which: str) -> np.ndarray:
    """The 3-channel BGR uint8 image the OpenCV tracker sees (OpenCV's colour features expect BGR)."""
    if which == 'rgb':
        image = rgb
    else:
        thermal3 = np.broadcast_to(thermal[:, :, None], rgb.shape) if thermal.ndim == 2 else thermal
        image = thermal3 if which == 'thermal' else ((rgb.astype(np.uint16) + thermal3 + 1) >> 1).astype(np.uint8)
    image = image[:, :, ::-1]      # RGB -> BGR (a no-op on grey thermal)
    return np.ascontiguousarray(image)


def _check_frames(rgb, thermal) -> tuple[np.ndarray, np.ndarray]:
    rgb = check_rgb(rgb)
    return rgb, check_thermal(thermal, *rgb.shape[:2])


def _init_rect(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The integer rectangle OpenCV's ``init`` takes: ``box`` rounded and cut to the frame."""
    values = [float(v) for v in box] if len(box) == 4 else []
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise ValueError(f'initial box must be four finite numbers x, y, w, h with w, h > 0, got {tuple(box)}')
    x0, y0 = max(0, round(values[0])), max(0, round(values[1]))
    x1 = min(width, round(values[0] + values[2]))
    y1 = min(height, round(values[1] + values[3]))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f'initial box {tuple(box)} lies outside the {width}x{height} frame')
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


class OpenCVTracker:
    """One of OpenCV's CSRT / KCF / MIL trackers on the RGB, thermal or fused image (see the module
    docstring). ``BaselineUnavailable`` at construction when the installed OpenCV lacks it."""

    def __init__(self, options: BaselineOptions | None = None, **kwargs):
        if options is not None and kwargs:
            raise TypeError('pass either options or keyword options, not both')
        self.options = options if options is not None else BaselineOptions(**kwargs)
        self._create = opencv_factory(self.options.tracker)
        self._tracker = None
        self._box: tuple[float, float, float, float] | None = None
        self._frame_index = 0

    @property
    def name(self) -> str:
        return self.options.label

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self._box

    @property
    def frame_index(self) -> int:
        return self._frame_index

    @property
    def is_initialized(self) -> bool:
        return self._tracker is not None

    def _new_tracker(self):
        if self.options.tracker == 'csrt' and self.options.psr_threshold is not None:
            import cv2
            params = cv2.TrackerCSRT_Params()
            params.psr_threshold = self.options.psr_threshold
            return self._create(params)
        return self._create()

    def initialize(self, rgb: np.ndarray, thermal: np.ndarray, box: Sequence[float]) -> TrackResult:
        """Start tracking the target at ``box`` = (x, y, w, h) in the first frame pair."""
        import cv2
        rgb, thermal = _check_frames(rgb, thermal)
        height, width = rgb.shape[:2]
        rect = _init_rect(box, width, height)
        tracker = self._new_tracker()
        try:
            tracker.init(_as_bgr(rgb, thermal, self.options.input), rect)
        except cv2.error as error:
            raise ValueError(f'OpenCV {LABELS[self.options.tracker]} could not start on the box {tuple(box)}: '
                             f'{str(error).strip().splitlines()[-1]}') from None
        self._tracker = tracker
        self._box = tuple(float(v) for v in box)
        self._frame_index = 0
        return TrackResult(box=self._box, score=1.0, state=TRACKING, frame_index=0)

    def track(self, rgb: np.ndarray, thermal: np.ndarray) -> TrackResult:
        """Locate the target in the next frame pair; on a reported failure the last box, ``LOST``."""
        import cv2
        if self._tracker is None:
            raise RuntimeError('call initialize(rgb, thermal, box) before track()')
        rgb, thermal = _check_frames(rgb, thermal)
        self._frame_index += 1
        error = None
        try:
            found, rect = self._tracker.update(_as_bgr(rgb, thermal, self.options.input))
        except cv2.error as exc:          # e.g. a model that degenerated at the frame border
            found, rect = False, None
            error = f'OpenCV {LABELS[self.options.tracker]} failed at frame {self._frame_index}: ' \
                    f'{str(exc).strip().splitlines()[-1]}; kept the last box'
        if found:
            values = tuple(float(v) for v in rect)
            if len(values) == 4 and all(math.isfinite(v) for v in values) and values[2] > 0 and values[3] > 0:
                self._box = values
                return TrackResult(box=values, score=1.0, state=TRACKING, frame_index=self._frame_index)
        return TrackResult(box=self._box, score=0.0, state=LOST, frame_index=self._frame_index, error=error)


def parse_baseline(text: str) -> BaselineOptions:
    """``tracker[:input[:psr=<value>]]``, e.g. ``csrt:fused:psr=0``, ``kcf:rgb``, ``mil``."""
    parts = [p.strip() for p in text.strip().lower().split(':')]
    if not parts or not parts[0] or len(parts) > 3:
        raise ValueError(f'expected tracker[:input[:psr=<value>]] (e.g. csrt:fused:psr=0), got {text!r}')
    kwargs: dict = {'tracker': parts[0]}
    if len(parts) > 1 and parts[1]:
        kwargs['input'] = parts[1]
    if len(parts) > 2:
        key, _, value = parts[2].partition('=')
        if key != 'psr' or not value:
            raise ValueError(f'expected psr=<value> after the input in {text!r}')
        try:
            kwargs['psr_threshold'] = float(value)
        except ValueError:
            raise ValueError(f'psr value in {text!r} is not a number') from None
    return BaselineOptions(**kwargs)
