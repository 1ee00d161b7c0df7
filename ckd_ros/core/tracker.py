"""The official CKD tracking pipeline (``lib/test/tracker/ckd.py``, class ``OSTrack_twobranch``)
plus options that are off in the official configs.

Per target (:meth:`CKDTracker.initialize`): RGB and TIR templates are cropped with the same box
(factor 2, 128 px), normalised once and kept.  Per frame (:meth:`CKDTracker.track`): both search
regions are cropped around the previous box (factor 4, 256 px), the network runs on
``[z_rgb, z_tir]``/``[x_rgb, x_tir]``, the score map is multiplied by the Hann window, decoded,
mapped back to the frame and clipped with a 10-pixel margin; that box becomes the new state.

Options (``TEST.*`` config keys or :class:`TrackerOptions`; all off = official numbers):

* confidence: every result carries ``score`` = maximum of the raw (un-windowed) score map; the
  official tracker computes no score.  It never changes the box.
* ``lost_threshold``: when ``score`` falls below it the result state is ``"LOST"`` and the tracker
  keeps (and returns) the last box it trusted, searching around it on the next frame.
* ``max_scale_change`` r > 1: the box's width and height may change by at most a factor r from one
  frame to the next (around the new centre). The network's size head sometimes jumps to a box a
  quarter of the image large and never recovers; a limit keeps such a jump from becoming the state.
* ``redetect_growth`` g in (1, 2] (with ``lost_threshold``): re-detection while lost. Every LOST frame
  the search region around the last trusted box grows by g (up to ``redetect_max_factor`` times the
  official search factor, 3 by default), still resized to the network's search size, so a target that
  moved away while it was hidden or dark comes back into view; the first frame above the threshold
  takes the box and the search region returns to its official size.
* ``template_update_interval`` N > 0: every N-th frame whose score is at least
  ``template_update_threshold`` re-crops both templates around the new box (the official tracker
  never updates its templates).

Non-finite network output (NaN/inf in the score map or in the decoded box: broken weights, an fp16
overflow, a faulty accelerator) is never turned into a box: :meth:`CKDTracker.track` then keeps the last
good box as its state and returns it with ``score`` NaN, state ``"LOST"`` and ``error`` set
(``valid`` False), whatever the options.  :meth:`CKDTracker.warm_up` runs the network once on a blank
frame pair and raises :class:`NonFiniteOutputError` when its output is not finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .acceleration import Acceleration, make_runner
from .config import CKDConfig
from .geometry import clip_box, hann2d, map_box_back, sample_target, validate_box
from .model import CKDNet, decode_center_boxes
from .tracking import LOST, TRACKING, TrackResult, check_rgb, check_thermal  # noqa: F401 (re-exported)

CLIP_MARGIN = 10  # official clip_box margin in pixels


class NonFiniteOutputError(RuntimeError):
    """The network's output is NaN or infinite (raised by :meth:`CKDTracker.warm_up`)."""


@dataclass(frozen=True)
class TrackerOptions:
    """Non-official tracker behaviour; the defaults reproduce the official tracker."""
    lost_threshold: float | None = None
    max_scale_change: float | None = None
    redetect_growth: float | None = None
    redetect_max_factor: float = 3.0
    template_update_interval: int = 0
    template_update_threshold: float = 0.5

    def __post_init__(self):
        if self.lost_threshold is not None and not 0 <= self.lost_threshold <= 1:
            raise ValueError(f'lost_threshold must be None or in [0, 1], got {self.lost_threshold}')
        if self.max_scale_change is not None and not (
                math.isfinite(self.max_scale_change) and self.max_scale_change > 1):
            raise ValueError(f'max_scale_change must be None or a finite number > 1, got {self.max_scale_change}')
        if self.redetect_growth is not None and not 1 < self.redetect_growth <= 2:
            raise ValueError(f'redetect_growth must be None or in (1, 2], got {self.redetect_growth}')
        if not 1 <= self.redetect_max_factor <= 8:
            raise ValueError(f'redetect_max_factor must be in [1, 8], got {self.redetect_max_factor}')
        if self.template_update_interval < 0:
            raise ValueError(f'template_update_interval must be >= 0 (0 = off), got {self.template_update_interval}')
        if not 0 <= self.template_update_threshold <= 1:
            raise ValueError(f'template_update_threshold must be in [0, 1], got {self.template_update_threshold}')

    @classmethod
    def from_config(cls, cfg: CKDConfig) -> "TrackerOptions":
        return cls(lost_threshold=cfg.TEST.LOST_THRESHOLD, max_scale_change=cfg.TEST.MAX_SCALE_CHANGE,
                   redetect_growth=cfg.TEST.REDETECT_GROWTH, redetect_max_factor=cfg.TEST.REDETECT_MAX_FACTOR,
                   template_update_interval=cfg.TEST.TEMPLATE_UPDATE_INTERVAL,
                   template_update_threshold=cfg.TEST.TEMPLATE_UPDATE_THRESHOLD)

    @property
    def is_official(self) -> bool:
        return (self.lost_threshold is None and self.max_scale_change is None and self.redetect_growth is None
                and self.template_update_interval == 0)


def _limit_scale_change(box, previous, ratio: float) -> list:
    """``box`` with its width and height held within [1/ratio, ratio] times ``previous``'s, same centre."""
    x, y, w, h = box
    width = min(max(w, previous[2] / ratio), previous[2] * ratio)
    height = min(max(h, previous[3] / ratio), previous[3] * ratio)
    return [x + (w - width) / 2, y + (h - height) / 2, width, height]


class CKDTracker:
    """Single-target RGB-T tracker around a :class:`~ckd_ros.core.model.CKDNet` (official pipeline).

    ``network`` must already hold its weights and live on ``device``; it is put in ``eval()`` mode.
    """

    def __init__(self, network: CKDNet, cfg: CKDConfig, device: torch.device | str = 'cpu',
                 options: TrackerOptions | None = None, acceleration: Acceleration | None = None):
        self.network = network.eval()
        self.cfg = cfg
        self.device = torch.device(device)
        if options is not None and not isinstance(options, TrackerOptions):
            raise TypeError(f'options must be a TrackerOptions (e.g. TrackerOptions(lost_threshold=0.3)) or None, '
                            f'got {type(options).__name__}')
        self.options = options if options is not None else TrackerOptions.from_config(cfg)
        test = cfg.TEST
        self.template_factor, self.template_size = float(test.TEMPLATE_FACTOR), int(test.TEMPLATE_SIZE)
        self.search_factor, self.search_size = float(test.SEARCH_FACTOR), int(test.SEARCH_SIZE)
        self.feat_size = self.search_size // cfg.MODEL.BACKBONE.STRIDE
        self.acceleration = acceleration or Acceleration()
        # how the network runs (precision/backend); fp32 eager reproduces the official numbers
        self.runner = make_runner(self.network, self.device, self.acceleration, self.template_size, self.search_size)
        self.window = hann2d(self.feat_size).to(self.device)
        self.mean = torch.tensor(cfg.DATA.MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.DATA.STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._templates: list[torch.Tensor] | None = None
        self._template_mask: torch.Tensor | None = None
        self._box: list[float] | None = None
        self._frame_index = 0
        self._lost_frames = 0  # consecutive LOST frames (re-detection grows the search region with it)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The current state (last trusted box), None before :meth:`initialize`."""
        return None if self._box is None else tuple(self._box)

    @property
    def frame_index(self) -> int:
        return self._frame_index

    @property
    def is_initialized(self) -> bool:
        return self._templates is not None

    def preprocess(self, patch: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 (or HxW, replicated to 3 channels) crop -> (1, 3, H, W) normalised float32
        (official ``Preprocessor``: ``(x / 255 - mean) / std``)."""
        tensor = torch.from_numpy(np.ascontiguousarray(patch)).to(self.device)
        tensor = tensor.unsqueeze(-1).expand(-1, -1, 3) if tensor.ndim == 2 else tensor
        return ((tensor.float().permute(2, 0, 1).unsqueeze(0) / 255.0) - self.mean) / self.std

    def _set_templates(self, rgb: np.ndarray, thermal: np.ndarray, box: Sequence[float]) -> None:
        z_rgb, _ = sample_target(rgb, box, self.template_factor, self.template_size)
        z_tir, _ = sample_target(thermal, box, self.template_factor, self.template_size)
        self._templates = [self.preprocess(z_rgb), self.preprocess(z_tir)]
        # CTR_POINT/CTR_REC ignore the box; the mask only depends on the template grid
        self._template_mask = self.network.template_mask(1, self.device)
        self.runner.set_templates(self._templates, self._template_mask)

    def initialize(self, rgb: np.ndarray, thermal: np.ndarray, box: Sequence[float]) -> TrackResult:
        """Start tracking the target at ``box`` = (x, y, w, h) in the first frame pair."""
        rgb = check_rgb(rgb)
        thermal = check_thermal(thermal, *rgb.shape[:2])
        init_box = list(validate_box(box, 'initial box'))
        height, width = rgb.shape[:2]
        x, y, w, h = init_box
        if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
            raise ValueError(f'initial box {tuple(box)} lies outside the {width}x{height} frame')
        self._set_templates(rgb, thermal, init_box)
        self._box = init_box
        self._frame_index = 0
        self._lost_frames = 0
        return TrackResult(box=tuple(init_box), score=1.0, state=TRACKING, frame_index=0)

    @torch.inference_mode()
    def track(self, rgb: np.ndarray, thermal: np.ndarray) -> TrackResult:
        """Locate the target in the next frame pair."""
        if self._templates is None:
            raise RuntimeError('call initialize(rgb, thermal, box) before track()')
        rgb = check_rgb(rgb)
        thermal = check_thermal(thermal, *rgb.shape[:2])
        height, width = rgb.shape[:2]
        self._frame_index += 1
        factor = self._search_factor()
        x_rgb, resize_factor = sample_target(rgb, self._box, factor, self.search_size)
        x_tir, _ = sample_target(thermal, self._box, factor, self.search_size)
        score_map, size_map, offset_map = self.runner([self.preprocess(x_rgb), self.preprocess(x_tir)],
                                                      peak_weight=self.window)
        boxes = decode_center_boxes(self.window * score_map, size_map, offset_map)
        pred = boxes.view(-1, 4).mean(dim=0) * self.search_size / resize_factor
        # One device sync for the box, the peak score and "is the whole score map finite".  The size and
        # offset maps are only checked where decoding read them (the decoded box): the eager runner
        # leaves them NaN away from the peak on purpose.
        values = torch.cat([pred, score_map.max().view(1),
                            torch.isfinite(score_map).all().view(1).to(pred.dtype)]).tolist()
        pred_box, score, score_map_finite = values[:4], values[4], values[5] == 1.0
        mapped = map_box_back(pred_box, self._box, self.search_size, resize_factor)
        if not (score_map_finite and math.isfinite(score) and all(math.isfinite(v) for v in mapped)):
            # Garbage in the network output: clip_box would turn NaN into a confident-looking box, and a
            # NaN score slips through "score < lost_threshold".  Keep the last good box as the state.
            what = ('score map' if not (score_map_finite and math.isfinite(score))
                    else 'decoded box (size/offset maps)')
            return TrackResult(box=tuple(self._box), score=math.nan, state=LOST, frame_index=self._frame_index,
                               error=f'non-finite network output (NaN/inf in the {what}) at frame '
                                     f'{self._frame_index}; kept the last good box')
        new_box = clip_box(mapped, height, width, margin=CLIP_MARGIN)
        opts = self.options
        if opts.lost_threshold is not None and score < opts.lost_threshold:
            self._lost_frames += 1
            return TrackResult(box=tuple(self._box), score=score, state=LOST, frame_index=self._frame_index)
        if opts.max_scale_change is not None:
            new_box = clip_box(_limit_scale_change(new_box, self._box, opts.max_scale_change), height, width,
                               margin=CLIP_MARGIN)
        self._box = new_box
        self._lost_frames = 0
        if (opts.template_update_interval and self._frame_index % opts.template_update_interval == 0
                and score >= opts.template_update_threshold):
            self._set_templates(rgb, thermal, new_box)
        return TrackResult(box=tuple(new_box), score=score, state=TRACKING, frame_index=self._frame_index)

    def _search_factor(self) -> float:
        """The official search factor, grown while lost when re-detection is on."""
        growth = self.options.redetect_growth
        if growth is None or self._lost_frames == 0:
            return self.search_factor
        return self.search_factor * min(growth ** self._lost_frames, self.options.redetect_max_factor)

    def warm_up(self, height: int = 256, width: int = 320) -> TrackResult:
        """Run :meth:`initialize` + :meth:`track` once on a blank (mid-grey) ``width`` x ``height`` pair,
        so that the first real frame runs at full speed, and check the network output: raises
        :class:`NonFiniteOutputError` when it is NaN/inf (unusable weights, or a precision/backend that
        overflows), so a node can refuse the model at load time instead of publishing garbage.  Returns
        the warm-up result; the tracker is left uninitialised (call :meth:`initialize` for a target)."""
        grey = np.full((height, width, 3), 127, np.uint8)
        side = min(40.0, min(height, width) / 2)     # the node's former warm-up box on 320x256
        box = ((width - side) / 2, (height - side) / 2, side, side)
        try:
            self.initialize(grey, grey, box)
            result = self.track(grey, grey)
        finally:
            self._templates, self._template_mask, self._box, self._frame_index = None, None, None, 0
            self._lost_frames = 0
        if not result.valid:
            accel = self.acceleration
            raise NonFiniteOutputError(f'the network output on a blank {width}x{height} frame pair is not finite '
                                       f'({result.error}): the weights, or precision {accel.precision!r} with '
                                       f'backend {accel.backend!r}, produce NaN/inf')
        return result
