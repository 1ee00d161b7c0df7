"""Synthetic RGB-T tracking sequences (tests, training data, demo).

A sequence is fully determined by its seed and parameters. One moving target with a thermal
signature is rendered into an RGB and a thermal frame; around it move distractors that look
like the target in one modality only (RGB twins: same saturated colours, cold; thermal twins:
as hot, muted colours), muted lukewarm clutter objects, and occluders. So each modality alone
has a salient cue with a twin that only the other modality rules out: the target is the one
object salient in both. Segments of the sequence switch on the failure modes
that make fusion matter:

* ``rgb_dark``: exposure drops to a few grey levels and sensor noise dominates (RGB alone fails);
* ``rgb_glare``: a saturating bloom washes out the target region (RGB alone fails);
* ``thermal_crossover``: the target's temperature drifts to the local background temperature
  (thermal alone fails);
* ``thermal_low_contrast``: the thermal image loses almost all contrast (thermal alone fails).

RGB failures and thermal failures never overlap, so at every frame at least one modality shows
the target; the twin distractors make the other modality necessary to pick the right object.

Thermal frames are stored as "scene temperature" in [0, 1]; the 8-bit frame is
``round(255 * t)`` and the optional 16-bit raw counts are
``THERMAL_RAW_OFFSET + round(THERMAL_RAW_SPAN * t)`` (a 14-bit-camera-like range, so gain
control can be exercised on raw counts).

Usage::

    scene = SyntheticScene(seed=3, length=300, size=(640, 512))
    rgb, thermal = scene.frame(10)          # lazy, one frame (uint8 HxWx3, uint8 HxW)
    seq = generate_sequence(seed=3)         # all frames materialised
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ckd_ros.core import synthetic_assets as assets

CONDITIONS = (
    'rgb_dark',
    'rgb_glare',
    'thermal_crossover',
    'thermal_low_contrast',
    'occlusion',
    'rgb_distractor_near',
    'thermal_distractor_near',
)
RGB_FAILURES = ('rgb_dark', 'rgb_glare')
THERMAL_FAILURES = ('thermal_crossover', 'thermal_low_contrast')
FAILURE_CONDITIONS = RGB_FAILURES + THERMAL_FAILURES

# 'classic': patterned ellipses on noise, random smooth motion (the first world; tests and old recipes use it);
# 'rgbt': real target motion from the RGBT benchmarks' ground truth, natural-photo backgrounds, people / cars /
# drones / animals, camera ego-motion, motion blur and thermal sensor effects (ckd_ros.core.synthetic_assets).
WORLDS = ('classic', 'rgbt')

THERMAL_RAW_OFFSET = 4000
THERMAL_RAW_SPAN = 12000

_NOISE_BANK_SIZE = 5
_SPRITE_SIZE = 48


@dataclass
class SyntheticSequence:
    """A materialised synthetic sequence.

    rgb: (N, H, W, 3) uint8, RGB order. thermal: (N, H, W) uint8. thermal_raw: (N, H, W) uint16
    raw counts or None. boxes: (N, 4) float64 ground truth x, y, w, h in pixels (the full target
    extent, also while occluded). flags: condition name -> (N,) bool.
    """

    name: str
    seed: int
    rgb: np.ndarray
    thermal: np.ndarray
    boxes: np.ndarray
    flags: dict[str, np.ndarray]
    thermal_raw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def ground_truth(self) -> np.ndarray:
        """The boxes under the name the dataset readers use (``ckd_ros.core.datasets.Sequence``)."""
        return self.boxes

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rgb[index], self.thermal[index]


@dataclass
class _Object:
    """One rendered object: per-frame geometry, an RGB sprite, an alpha mask, a thermal level."""

    cx: np.ndarray
    cy: np.ndarray
    w: np.ndarray
    h: np.ndarray
    sprite_rgb: np.ndarray  # (S, S, 3) float32 0..255
    alpha: np.ndarray  # (S, S) float32 0..1
    heat_profile: np.ndarray  # (S, S) float32, multiplies the temperature (hot core)
    temperature: np.ndarray  # (N,) float32 scene temperature 0..1
    active: np.ndarray  # (N,) bool: drawn in this frame
    kind: str = 'clutter'


@dataclass
class _Segment:
    condition: str
    start: int
    stop: int  # exclusive


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise in [0, 1]: uniform noise on a coarse grid, bicubic upsampling."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    coarse = rng.random((gh, gw, channels), dtype=np.float32)
    up = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    if up.ndim == 2:
        up = up[:, :, None]
    return np.clip(up, 0.0, 1.0)


def _random_color(rng: np.random.Generator, saturated: bool = True) -> np.ndarray:
    hue = rng.random()
    sat = rng.uniform(0.6, 1.0) if saturated else rng.uniform(0.0, 0.35)
    val = rng.uniform(0.55, 1.0)
    # HSV -> RGB by hand (avoids a per-colour cv2 round trip)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def _make_sprite(rng: np.random.Generator, aspect: float, saturated: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A patterned object: RGB sprite, soft alpha mask, heat profile (all SxS; aspect is applied at draw time).
    ``saturated=False`` gives muted colours (clutter that is not salient in RGB)."""
    s = _SPRITE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (xx + 0.5) / s, (yy + 0.5) / s
    c1, c2 = _random_color(rng, saturated), _random_color(rng, saturated)
    pattern = rng.integers(0, 5)
    freq = rng.integers(2, 5)
    if pattern == 0:  # stripes
        sel = (np.floor(u * freq * 2) % 2) == 0
    elif pattern == 1:  # horizontal stripes
        sel = (np.floor(v * freq * 2) % 2) == 0
    elif pattern == 2:  # checker
        sel = ((np.floor(u * freq) + np.floor(v * freq)) % 2) == 0
    elif pattern == 3:  # ring
        sel = ((u - 0.5) ** 2 + (v - 0.5) ** 2) < 0.09
    else:  # two halves
        sel = u + v < 1.0
    sprite = np.where(sel[:, :, None], c1, c2).astype(np.float32)
    # rectangular or elliptic footprint with a soft edge
    if rng.random() < 0.5:
        inside = ((u - 0.5) / 0.5) ** 2 + ((v - 0.5) / 0.5) ** 2 <= 1.0
    else:
        inside = (np.abs(u - 0.5) < 0.47) & (np.abs(v - 0.5) < 0.47)
    alpha = cv2.GaussianBlur(inside.astype(np.float32), (5, 5), 1.0)
    heat = 0.85 + 0.15 * np.exp(-(((u - 0.5) ** 2 + (v - 0.5) ** 2) / 0.05)).astype(np.float32)
    return sprite, alpha, heat.astype(np.float32)


def _ou_path(rng: np.random.Generator, n: int, start: float, low: float, high: float,
             speed: float, jerk: float) -> np.ndarray:
    """Smooth 1-D motion: velocity follows an Ornstein-Uhlenbeck process, positions bounce in [low, high]."""
    pos = np.empty(n, np.float64)
    p, vel = start, rng.normal(0, speed)
    for i in range(n):
        pos[i] = p
        vel = 0.92 * vel + rng.normal(0, jerk)
        vel = float(np.clip(vel, -3 * speed, 3 * speed))
        p += vel
        if p < low:
            p, vel = 2 * low - p, abs(vel)
        elif p > high:
            p, vel = 2 * high - p, -abs(vel)
    return pos


def _ramp(n: int, start: int, stop: int, edge: int) -> np.ndarray:
    """0..1 envelope that is 1 on [start, stop) with linear ramps of `edge` frames inside the segment."""
    env = np.zeros(n, np.float32)
    length = stop - start
    edge = max(1, min(edge, length // 3))
    for i in range(start, stop):
        k = min(i - start + 1, stop - i)
        env[i] = min(1.0, k / edge)
    return env


class SyntheticScene:
    """Lazily rendered synthetic RGB-T sequence, deterministic from ``seed``.

    Parameters
    ----------
    seed: any non-negative int; the same seed and parameters give bit-identical frames.
    length: number of frames (>= 2).
    size: (width, height) in pixels (each >= 64).
    conditions: the conditions that may occur (subset of CONDITIONS); default all.
    failure_fraction: approximate fraction of frames covered by failure segments (0..0.8).
    n_rgb_twins / n_thermal_twins / n_clutter: number of RGB-like distractors (cold), thermal-like
        distractors (hot, different look) and neutral clutter objects.
    noise: sensor noise standard deviation in 8-bit grey levels (RGB; thermal uses 0.6x).
    raw_thermal: also produce uint16 raw counts.
    world: ``WORLDS`` ('classic' by default; 'rgbt' for the realistic world).
    motion_split: 'rgbt' world only: the pool of real tracks the target's motion comes from
        (``synthetic_assets.MOTION_SPLITS``: training uses 'train', tuning 'val', held-out scores and the demo
        'test').

    ``metadata`` records what a sequence is made of (world, motion source, target class, background photo,
    failure segments) so that a score can be traced back to its scenario.
    """

    def __init__(self, seed: int, length: int = 300, size: tuple[int, int] = (640, 512), *,
                 conditions: tuple[str, ...] | None = None, failure_fraction: float = 0.4,
                 n_rgb_twins: int = 1, n_thermal_twins: int = 1, n_clutter: int = 3,
                 noise: float = 3.0, raw_thermal: bool = False, world: str = 'classic',
                 motion_split: str = 'test') -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f'seed must be a non-negative int, got {seed!r}')
        if length < 2:
            raise ValueError(f'length must be >= 2 frames, got {length}')
        width, height = (int(v) for v in size)
        if width < 64 or height < 64:
            raise ValueError(f'size must be (width, height) with both >= 64, got {size!r}')
        conditions = CONDITIONS if conditions is None else tuple(conditions)
        unknown = sorted(set(conditions) - set(CONDITIONS))
        if unknown:
            raise ValueError(f'unknown conditions {unknown}; known: {list(CONDITIONS)}')
        if not 0.0 <= failure_fraction <= 0.8:
            raise ValueError(f'failure_fraction must be in [0, 0.8], got {failure_fraction}')
        if min(n_rgb_twins, n_thermal_twins, n_clutter) < 0 or noise < 0:
            raise ValueError('object counts and noise must be non-negative')
        if world not in WORLDS:
            raise ValueError(f'world must be one of {WORLDS}, got {world!r}')
        if motion_split not in assets.MOTION_SPLITS:
            raise ValueError(f'motion_split must be one of {assets.MOTION_SPLITS}, got {motion_split!r}')
        self.world = world
        self.motion_split = motion_split
        self.metadata: dict = {'world': world, 'seed': int(seed), 'length': int(length), 'size': [width, height]}
        self.seed = int(seed)
        self.length = int(length)
        self.width, self.height = width, height
        self.conditions = conditions
        self.raw_thermal = raw_thermal
        self.name = f'synthetic_{self.seed:06d}'
        self._noise_sigma = float(noise)
        rng = np.random.default_rng([0x5C4D, self.seed])
        self._build_background(rng)
        self._build_target(rng)
        self._build_segments(rng, failure_fraction)
        self._build_distractors(rng, n_rgb_twins, n_thermal_twins, n_clutter)
        self._build_occluders(rng)
        self._build_condition_envelopes(rng)
        self._build_noise(rng)
        self.boxes = np.stack([self._target.cx - self._target.w / 2, self._target.cy - self._target.h / 2,
                               self._target.w, self._target.h], axis=1)
        self.flags = self._compute_flags()
        self.metadata['segments'] = [[seg.condition, seg.start, seg.stop] for seg in self._segments]
        self._cache_index: int | None = None
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ construction
    def _build_background(self, rng: np.random.Generator) -> None:
        if self.world == 'rgbt':
            self._build_background_rgbt(rng)
            return
        h, w = self.height, self.width
        pad = max(w, h) // 8
        self._pad = pad
        bh, bw = h + 2 * pad, w + 2 * pad
        base = _smooth_field(rng, bh, bw, cell=max(16, w // 5), channels=3)
        detail = _smooth_field(rng, bh, bw, cell=max(4, w // 40), channels=3)
        rgb = 50 + 110 * base + 40 * (detail - 0.5)
        # muted colours (a real scene's background is mostly greyish): the saturated objects stand out
        # in RGB, so RGB carries a cue of its own besides thermal
        grey = rgb.mean(axis=2, keepdims=True)
        rgb = grey + 0.35 * (rgb - grey)
        # structures (walls, windows, road marks) give the background trackable texture
        for _ in range(int(rng.integers(8, 16))):
            x0, y0 = int(rng.integers(0, bw)), int(rng.integers(0, bh))
            rw, rh = int(rng.integers(bw // 30, bw // 6)), int(rng.integers(bh // 30, bh // 6))
            color = _random_color(rng, saturated=False) * rng.uniform(0.4, 0.8)
            cv2.rectangle(rgb, (x0, y0), (x0 + rw, y0 + rh), tuple(float(c) for c in color), -1)
        self._bg_rgb = np.clip(rgb, 0, 255).astype(np.float32)
        th = 0.28 + 0.16 * _smooth_field(rng, bh, bw, cell=max(16, w // 4))[:, :, 0]
        th += 0.05 * (_smooth_field(rng, bh, bw, cell=max(4, w // 32))[:, :, 0] - 0.5)
        for _ in range(int(rng.integers(3, 7))):  # warm structures (engines, windows) below target heat
            x0, y0 = int(rng.integers(0, bw)), int(rng.integers(0, bh))
            rw, rh = int(rng.integers(bw // 40, bw // 10)), int(rng.integers(bh // 40, bh // 10))
            cv2.rectangle(th, (x0, y0), (x0 + rw, y0 + rh), float(rng.uniform(0.45, 0.6)), -1)
        self._bg_thermal = th.astype(np.float32)
        n = self.length
        self._cam_x = np.clip(_ou_path(rng, n, pad, 0, 2 * pad, 0.4, 0.1), 0, 2 * pad).round().astype(int)
        self._cam_y = np.clip(_ou_path(rng, n, pad, 0, 2 * pad, 0.3, 0.08), 0, 2 * pad).round().astype(int)

    def _build_background_rgbt(self, rng: np.random.Generator) -> None:
        """A natural photo (or noise without one) as the scene, a thermal scene derived from its structure, and a
        camera path with drone-like ego-motion (slow drifts, sometimes fast pans)."""
        h, w = self.height, self.width
        pad = max(w, h) // 4
        self._pad = pad
        bh, bw = h + 2 * pad, w + 2 * pad
        rgb, source = assets.texture_background(rng, bh, bw)
        if rgb is None:
            base = _smooth_field(rng, bh, bw, cell=max(16, w // 5), channels=3)
            detail = _smooth_field(rng, bh, bw, cell=max(4, w // 40), channels=3)
            rgb, source = (50 + 110 * base + 40 * (detail - 0.5)).astype(np.float32), 'noise'
        self.metadata['background'] = source
        self._bg_rgb = rgb
        # thermal: materials differ in emissivity, so the photo's structure shows (blurred, with either sign)
        # over a smooth temperature field, plus a few warm structures below the target's heat
        lum = cv2.GaussianBlur(rgb.mean(axis=2), (0, 0), max(1.0, w / 160)) / 255.0
        sign = 1.0 if rng.random() < 0.6 else -1.0
        th = 0.3 + 0.14 * _smooth_field(rng, bh, bw, cell=max(16, w // 4))[:, :, 0] + sign * 0.16 * (lum - lum.mean())
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, bw)), int(rng.integers(0, bh))
            rw, rh = int(rng.integers(bw // 40, bw // 10)), int(rng.integers(bh // 40, bh // 10))
            cv2.rectangle(th, (x0, y0), (x0 + rw, y0 + rh), float(rng.uniform(0.45, 0.62)), -1)
        self._bg_thermal = np.clip(th, 0.0, 1.0).astype(np.float32)
        n = self.length
        pan = float(rng.choice([0.3, 1.0, 2.5], p=[0.4, 0.4, 0.2]))  # static mount, slow drone, fast pan
        self.metadata['ego_motion_px_per_frame'] = pan
        self._cam_x = np.clip(_ou_path(rng, n, pad, 0, 2 * pad, pan, pan * 0.25), 0, 2 * pad).round().astype(int)
        self._cam_y = np.clip(_ou_path(rng, n, pad, 0, 2 * pad, 0.7 * pan, pan * 0.2), 0, 2 * pad).round().astype(int)

    def _object_geometry(self, rng: np.random.Generator, base_size: float, aspect: float,
                         speed: float) -> tuple[np.ndarray, ...]:
        n, w_img, h_img = self.length, self.width, self.height
        bw, bh = base_size * math.sqrt(aspect), base_size / math.sqrt(aspect)
        # scale change: slow sinusoid in log-scale, plus a drift
        amp = rng.uniform(0.1, 0.45)
        period = rng.uniform(0.6, 1.5) * n
        phase = rng.uniform(0, 2 * math.pi)
        drift = rng.uniform(-0.3, 0.3)
        t = np.arange(n) / max(1, n - 1)
        scale = np.exp(amp * np.sin(2 * math.pi * np.arange(n) / period + phase) + drift * t)
        w, h = bw * scale, bh * scale
        mx, my = 0.5 * bw * 1.5, 0.5 * bh * 1.5
        cx = _ou_path(rng, n, rng.uniform(mx, w_img - mx), mx, w_img - mx, speed, speed * 0.25)
        cy = _ou_path(rng, n, rng.uniform(my, h_img - my), my, h_img - my, speed * 0.8, speed * 0.2)
        return cx, cy, w, h

    def _build_target(self, rng: np.random.Generator) -> None:
        if self.world == 'rgbt':
            self._build_target_rgbt(rng)
            return
        n = self.length
        base = math.sqrt(self.width * self.height) * rng.uniform(0.07, 0.14)
        aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
        speed = base * rng.uniform(0.03, 0.08)
        cx, cy, w, h = self._object_geometry(rng, base, aspect, speed)
        sprite, alpha, heat = _make_sprite(rng, aspect)
        self._target_hot = float(rng.uniform(0.72, 0.9))
        self._target = _Object(cx, cy, w, h, sprite, alpha, heat,
                               np.full(n, self._target_hot, np.float32), np.ones(n, bool), 'target')
        self._target_aspect, self._target_base = aspect, base

    def _build_target_rgbt(self, rng: np.random.Generator) -> None:
        """The target moves like a real annotated target (a window of a real track, placed in the frame) and
        looks like a person, car, drone or animal chosen to fit the track's aspect."""
        n = self.length
        base = math.sqrt(self.width * self.height) * rng.uniform(0.06, 0.15)
        bank = assets.motion_bank(self.motion_split)
        if bank:
            track = bank[int(rng.integers(0, len(bank)))]
            window, first, speed = assets.track_window(track, rng, n)
            c = assets.fit_track(window, self.width, self.height, base)
            cx, cy, w, h = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
            self.metadata['motion'] = {'track': track.name, 'first_frame': first, 'speed': round(speed, 3),
                                       'split': self.motion_split}
        else:
            aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
            cx, cy, w, h = self._object_geometry(rng, base, aspect, base * rng.uniform(0.03, 0.08))
            self.metadata['motion'] = {'track': None, 'split': self.motion_split}
        aspect = float(np.median(w / h))
        shape = assets.shape_for_aspect(aspect, rng)
        sprite, alpha, heat = assets.make_shape_sprite(shape, rng)
        self.metadata['target'] = shape
        self._target_shape = shape
        self._target_hot = float(rng.uniform(0.7, 0.9))
        self._target = _Object(cx, cy, w, h, sprite, alpha, heat,
                               np.full(n, self._target_hot, np.float32), np.ones(n, bool), 'target')
        self._target_aspect, self._target_base = aspect, float(np.median(np.sqrt(w * h)))

    def _build_segments(self, rng: np.random.Generator, failure_fraction: float) -> None:
        """Non-overlapping failure segments, alternating RGB and thermal failures."""
        n = self.length
        enabled_rgb = [c for c in RGB_FAILURES if c in self.conditions]
        enabled_th = [c for c in THERMAL_FAILURES if c in self.conditions]
        self._segments: list[_Segment] = []
        if not (enabled_rgb or enabled_th) or failure_fraction <= 0 or n < 10:
            return
        budget = int(failure_fraction * n)
        seg_len_lo, seg_len_hi = max(4, n // 12), max(5, n // 6)
        cursor = int(rng.integers(max(1, n // 20), max(2, n // 8)))
        pick_rgb = bool(rng.random() < 0.5)
        while budget > 0 and cursor < n - 3:
            pool = enabled_rgb if (pick_rgb and enabled_rgb) or not enabled_th else enabled_th
            cond = pool[int(rng.integers(0, len(pool)))]
            length = int(min(budget, rng.integers(seg_len_lo, seg_len_hi + 1), n - cursor - 1))
            if length < 3:
                break
            self._segments.append(_Segment(cond, cursor, cursor + length))
            budget -= length
            cursor += length + int(rng.integers(max(2, n // 30), max(3, n // 10)))
            pick_rgb = not pick_rgb

    def _twin_path(self, rng: np.random.Generator, hover: bool) -> tuple[np.ndarray, ...]:
        """Geometry of a distractor that keeps coming back close to the target (and sometimes crosses it)."""
        n, tg = self.length, self._target
        diag = np.sqrt(tg.w ** 2 + tg.h ** 2)
        i = np.arange(n)
        omega = 2 * math.pi / rng.uniform(40, 90)
        radius = diag * (0.55 + (2.2 if hover else 4.0) * np.abs(np.sin(omega * i + rng.uniform(0, math.pi))))
        theta = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.05, n))
        dx, dy = radius * np.cos(theta), radius * np.sin(theta)
        # a twin that would leave the frame swaps to the other side of the target instead
        dx = np.where((tg.cx + dx < 0.5 * tg.w) | (tg.cx + dx > self.width - 0.5 * tg.w), -dx, dx)
        dy = np.where((tg.cy + dy < 0.5 * tg.h) | (tg.cy + dy > self.height - 0.5 * tg.h), -dy, dy)
        cx = np.clip(tg.cx + dx, 0, self.width)
        cy = np.clip(tg.cy + dy, 0, self.height)
        size_jitter = rng.uniform(0.85, 1.15)
        return cx, cy, tg.w * size_jitter, tg.h * size_jitter

    def _build_distractors(self, rng: np.random.Generator, n_rgb: int, n_th: int, n_clutter: int) -> None:
        n = self.length
        self._distractors: list[_Object] = []
        for _ in range(n_rgb if 'rgb_distractor_near' in self.conditions else 0):
            cx, cy, w, h = self._twin_path(rng, hover=True)
            # same look as the target, ambient temperature: only thermal tells them apart
            sprite = self._target.sprite_rgb * rng.uniform(0.92, 1.08)
            temp = np.full(n, rng.uniform(0.3, 0.42), np.float32)
            self._distractors.append(_Object(cx, cy, w, h, np.clip(sprite, 0, 255), self._target.alpha.copy(),
                                             np.ones_like(self._target.heat_profile), temp, np.ones(n, bool),
                                             'rgb_twin'))
        for _ in range(n_th if 'thermal_distractor_near' in self.conditions else 0):
            cx, cy, w, h = self._twin_path(rng, hover=True)
            if self.world == 'rgbt':  # a look-alike of the same class: a second person, car, drone
                sprite, alpha, _ = assets.make_shape_sprite(self._target_shape, rng, saturated=False)
            else:
                sprite, alpha, _ = _make_sprite(rng, self._target_aspect, saturated=False)
            # same heat as the target, a muted look: only RGB tells them apart
            temp = np.full(n, self._target_hot * rng.uniform(0.97, 1.03), np.float32)
            self._distractors.append(_Object(cx, cy, w, h, sprite, self._target.alpha.copy(),
                                             self._target.heat_profile.copy(), temp, np.ones(n, bool),
                                             'thermal_twin'))
        for _ in range(n_clutter):
            base = self._target_base * rng.uniform(0.6, 1.6)
            aspect = float(np.exp(rng.uniform(-0.8, 0.8)))
            cx, cy, w, h = self._object_geometry(rng, base, aspect, base * rng.uniform(0.02, 0.08))
            # clutter is muted in RGB and not hot: texture, not a second target
            if self.world == 'rgbt':
                sprite, alpha, heat = assets.make_shape_sprite(
                    assets.SHAPES[int(rng.integers(0, len(assets.SHAPES)))], rng, saturated=False)
                # parked cars, people standing: attached to the world, so they move with the camera
                cx = cx - (self._cam_x - self._pad)
                cy = cy - (self._cam_y - self._pad)
            else:
                sprite, alpha, heat = _make_sprite(rng, aspect, saturated=False)
            temp = np.full(n, rng.uniform(0.35, 0.6), np.float32)
            self._distractors.append(_Object(cx, cy, w, h, sprite, alpha, heat, temp, np.ones(n, bool)))

    def _build_occluders(self, rng: np.random.Generator) -> None:
        """Occluders sweep across the target in front of it during short windows."""
        n, tg = self.length, self._target
        self._occluders: list[_Object] = []
        if 'occlusion' not in self.conditions or n < 20:
            return
        for _ in range(int(rng.integers(1, 3))):
            dur = int(rng.integers(max(6, n // 25), max(7, n // 10)))
            start = int(rng.integers(0, max(1, n - dur)))
            stop = min(n, start + dur)
            active = np.zeros(n, bool)
            active[start:stop] = True
            prog = np.clip((np.arange(n) - start) / max(1, stop - start - 1), 0, 1)
            direction = 1 if rng.random() < 0.5 else -1
            ow = tg.w * rng.uniform(0.8, 1.4)
            oh = tg.h * rng.uniform(1.5, 2.5)
            travel = tg.w + ow
            cx = tg.cx + direction * (prog - 0.5) * 2 * travel
            cy = tg.cy + rng.uniform(-0.2, 0.2) * tg.h
            sprite, alpha, heat = _make_sprite(rng, 1.0)
            alpha = np.ones_like(alpha)  # solid (a pole / vehicle)
            temp = np.full(n, rng.uniform(0.3, 0.5), np.float32)
            self._occluders.append(_Object(cx, cy, ow, oh, sprite, alpha, heat, temp, active, 'occluder'))

    def _build_condition_envelopes(self, rng: np.random.Generator) -> None:
        n = self.length
        self._env = {c: np.zeros(n, np.float32) for c in FAILURE_CONDITIONS}
        for seg in self._segments:
            self._env[seg.condition] = np.maximum(self._env[seg.condition],
                                                  _ramp(n, seg.start, seg.stop,
                                                        edge=max(2, (seg.stop - seg.start) // 4)))
        # flags switch on at envelope 0.5 (see _compute_flags); the effect is already at full strength there
        self._strength = {c: np.clip(2.0 * e, 0.0, 1.0) for c, e in self._env.items()}
        # target temperature during crossover: towards the local background temperature
        tg = self._target
        env = self._strength['thermal_crossover']
        if env.any():
            local = np.array([self._local_bg_temperature(i) for i in range(n)], np.float32)
            tg.temperature = (1 - env) * self._target_hot + env * local
        self._glare_center = np.stack([np.clip(tg.cx + rng.normal(0, 0.2, n) * tg.w, 0, self.width),
                                       np.clip(tg.cy + rng.normal(0, 0.2, n) * tg.h, 0, self.height)], axis=1)
        bloom = max(self.width, self.height)
        yy, xx = np.mgrid[-bloom:bloom, -bloom:bloom].astype(np.float32)
        sigma = 0.18 * bloom
        self._bloom = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)).astype(np.float32)

    def _local_bg_temperature(self, i: int) -> float:
        tg = self._target
        x0 = int(np.clip(tg.cx[i] - tg.w[i], 0, self.width - 1)) + self._cam_x[i]
        x1 = int(np.clip(tg.cx[i] + tg.w[i], 1, self.width)) + self._cam_x[i]
        y0 = int(np.clip(tg.cy[i] - tg.h[i], 0, self.height - 1)) + self._cam_y[i]
        y1 = int(np.clip(tg.cy[i] + tg.h[i], 1, self.height)) + self._cam_y[i]
        return float(self._bg_thermal[y0:y1, x0:x1].mean())

    def _build_noise(self, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        self._noise_rgb = rng.standard_normal((_NOISE_BANK_SIZE, h, w, 3), dtype=np.float32)
        self._noise_th = rng.standard_normal((_NOISE_BANK_SIZE, h, w), dtype=np.float32)
        if self.world == 'rgbt':
            self._build_thermal_sensor(rng)

    def _build_thermal_sensor(self, rng: np.random.Generator) -> None:
        """An uncooled microbolometer's artefacts: fixed-pattern noise (column and row offsets, pixel gain),
        edge-enhancement halos around hot objects, and automatic-gain jumps that settle over ~a second."""
        h, w, n = self.height, self.width, self.length
        fpn_level = rng.uniform(0.002, 0.012)
        self._fpn = (fpn_level * rng.standard_normal((1, w)) + 0.5 * fpn_level * rng.standard_normal((h, 1))
                     ).astype(np.float32)
        self._pixel_gain = (1.0 + 0.02 * rng.standard_normal((h, w))).astype(np.float32)
        self._halo = float(rng.uniform(0.0, 0.8))
        self._halo_sigma = max(1.5, w / 90)
        offset, gain = np.zeros(n, np.float32), np.ones(n, np.float32)
        jumps = []
        for _ in range(int(rng.integers(0, 4))):
            at = int(rng.integers(1, n))
            d_off, d_gain = rng.uniform(-0.08, 0.08), rng.uniform(-0.25, 0.25)
            decay = np.exp(-np.arange(n - at) / rng.uniform(10, 40))
            offset[at:] += d_off * decay
            gain[at:] *= 1 + d_gain * decay
            jumps.append(at)
        self._agc_offset, self._agc_gain = offset, gain
        self.metadata['thermal_sensor'] = {'fpn': round(fpn_level, 4), 'halo': round(self._halo, 3),
                                           'gain_jumps': sorted(jumps)}

    def _compute_flags(self) -> dict[str, np.ndarray]:
        n, tg = self.length, self._target
        flags = {c: np.zeros(n, bool) for c in CONDITIONS}
        for c in FAILURE_CONDITIONS:
            flags[c] = self._env[c] > 0.5
        tx0, ty0, tx1, ty1 = tg.cx - tg.w / 2, tg.cy - tg.h / 2, tg.cx + tg.w / 2, tg.cy + tg.h / 2
        for occ in self._occluders:
            ix = np.clip(np.minimum(tx1, occ.cx + occ.w / 2) - np.maximum(tx0, occ.cx - occ.w / 2), 0, None)
            iy = np.clip(np.minimum(ty1, occ.cy + occ.h / 2) - np.maximum(ty0, occ.cy - occ.h / 2), 0, None)
            flags['occlusion'] |= occ.active & (ix * iy >= 0.3 * tg.w * tg.h)
        diag = np.sqrt(tg.w ** 2 + tg.h ** 2)
        for d in self._distractors:
            if d.kind in ('rgb_twin', 'thermal_twin'):
                near = np.hypot(d.cx - tg.cx, d.cy - tg.cy) < 1.5 * diag
                flags[d.kind.replace('twin', 'distractor_near')] |= near
        return flags

    # ------------------------------------------------------------------ rendering
    def __len__(self) -> int:
        return self.length

    @property
    def ground_truth(self) -> np.ndarray:
        """The boxes under the name the dataset readers use (``ckd_ros.core.datasets.Sequence``)."""
        return self.boxes

    def rgb(self, index: int) -> np.ndarray:
        """RGB frame ``index`` (same interface as a dataset sequence; renders lazily, caches one frame)."""
        return self._cached_frame(index)[0]

    def thermal(self, index: int) -> np.ndarray:
        """Thermal frame ``index`` (uint16 raw counts if ``raw_thermal``, else uint8)."""
        return self._cached_frame(index)[1]

    def _cached_frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # rgb(i) and thermal(i) come in pairs: render the pair once
        if self._cache_index != index:
            self._cache = self.frame_raw(index) if self.raw_thermal else self.frame(index)
            self._cache_index = index
        return self._cache

    @staticmethod
    def _paste(rgb: np.ndarray, th: np.ndarray, obj: _Object, i: int, blur: bool = False) -> None:
        h_img, w_img = th.shape
        w, h = max(1, int(round(obj.w[i]))), max(1, int(round(obj.h[i])))
        x0, y0 = int(round(obj.cx[i] - w / 2)), int(round(obj.cy[i] - h / 2))
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w_img, x0 + w), min(h_img, y0 + h)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        sprite = cv2.resize(obj.sprite_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(obj.alpha, (w, h), interpolation=cv2.INTER_LINEAR)
        heat = cv2.resize(obj.heat_profile, (w, h), interpolation=cv2.INTER_LINEAR) * obj.temperature[i]
        if blur and i > 0:  # motion blur over the exposure (the ground truth stays the sharp extent)
            dx, dy = float(obj.cx[i] - obj.cx[i - 1]), float(obj.cy[i] - obj.cy[i - 1])
            sprite = assets.motion_blur(sprite * alpha[:, :, None], dx, dy)
            heat = assets.motion_blur(heat * alpha, dx, dy)
            alpha = assets.motion_blur(alpha, dx, dy)
            sprite = sprite / np.maximum(alpha, 1e-3)[:, :, None]
            heat = heat / np.maximum(alpha, 1e-3)
        sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        a = alpha[sl]
        region = rgb[cy0:cy1, cx0:cx1]
        region += a[:, :, None] * (sprite[sl] - region)
        tregion = th[cy0:cy1, cx0:cx1]
        tregion += a * (heat[sl] - tregion)

    def _render_float(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f'frame index {index} out of range for a sequence of {self.length} frames')
        i = index
        h, w = self.height, self.width
        ox, oy = self._cam_x[i], self._cam_y[i]
        rgb = self._bg_rgb[oy:oy + h, ox:ox + w].copy()
        th = self._bg_thermal[oy:oy + h, ox:ox + w].copy()
        realistic = self.world == 'rgbt'
        if realistic and i > 0:  # the camera's own motion blurs the scene
            pan_x, pan_y = float(ox - self._cam_x[i - 1]), float(oy - self._cam_y[i - 1])
            rgb, th = assets.motion_blur(rgb, pan_x, pan_y), assets.motion_blur(th, pan_x, pan_y)
        for obj in self._distractors:
            self._paste(rgb, th, obj, i, blur=realistic)
        self._paste(rgb, th, self._target, i, blur=realistic)
        for obj in self._occluders:
            if obj.active[i]:
                self._paste(rgb, th, obj, i)
        # RGB failure modes
        glare = self._strength['rgb_glare'][i]
        if glare > 0:
            gx, gy = self._glare_center[i]
            bloom = max(w, h)
            bx, by = int(round(bloom - gx)), int(round(bloom - gy))
            rgb *= 1.0 + 0.8 * glare
            rgb += (450.0 * glare) * self._bloom[by:by + h, bx:bx + w, None]
        dark = self._strength['rgb_dark'][i]
        if dark > 0:
            rgb *= 1.0 - 0.96 * dark
        # thermal failure mode (crossover is already in the target temperature)
        low = self._strength['thermal_low_contrast'][i]
        if low > 0:
            mean = float(th.mean())
            th = mean + (1.0 - 0.93 * low) * (th - mean)
        if realistic:
            if self._halo > 0:  # the camera's detail enhancement rings around hot objects
                th = th + self._halo * (th - cv2.GaussianBlur(th, (0, 0), self._halo_sigma))
            mean = float(th.mean())
            th = mean + self._agc_gain[i] * (th - mean) + self._agc_offset[i]
            th = th * self._pixel_gain + self._fpn
        k = i % _NOISE_BANK_SIZE
        # sensor noise is relatively stronger in the dark (gain is raised)
        sigma = self._noise_sigma * (1.0 + 1.5 * dark)
        if sigma > 0:
            rgb += sigma * self._noise_rgb[k]
            th += (0.6 * self._noise_sigma / 255.0) * self._noise_th[k]
        return rgb, th

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb HxWx3 uint8 RGB order, thermal HxW uint8) of frame ``index``."""
        rgb, th = self._render_float(index)
        return (np.clip(rgb, 0, 255).astype(np.uint8),
                np.clip(th * 255.0 + 0.5, 0, 255).astype(np.uint8))

    def frame_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb HxWx3 uint8, thermal HxW uint16 raw counts) of frame ``index``."""
        rgb, th = self._render_float(index)
        raw = THERMAL_RAW_OFFSET + np.clip(th, 0.0, 1.0) * THERMAL_RAW_SPAN + 0.5
        return np.clip(rgb, 0, 255).astype(np.uint8), raw.astype(np.uint16)

    def materialize(self) -> SyntheticSequence:
        n, h, w = self.length, self.height, self.width
        rgb = np.empty((n, h, w, 3), np.uint8)
        thermal = np.empty((n, h, w), np.uint8)
        raw = np.empty((n, h, w), np.uint16) if self.raw_thermal else None
        for i in range(n):
            frgb, fth = self._render_float(i)
            np.clip(frgb, 0, 255, out=frgb)
            rgb[i] = frgb
            thermal[i] = np.clip(fth * 255.0 + 0.5, 0, 255)
            if raw is not None:
                raw[i] = THERMAL_RAW_OFFSET + np.clip(fth, 0.0, 1.0) * THERMAL_RAW_SPAN + 0.5
        return SyntheticSequence(self.name, self.seed, rgb, thermal, self.boxes.copy(),
                                 {k: v.copy() for k, v in self.flags.items()}, raw)


def generate_sequence(seed: int, length: int = 300, size: tuple[int, int] = (640, 512),
                      **options) -> SyntheticSequence:
    """Render a whole synthetic sequence; ``options`` are SyntheticScene's keyword parameters."""
    return SyntheticScene(seed, length, size, **options).materialize()


def rgb_failure(flags: dict[str, np.ndarray]) -> np.ndarray:
    """Frames where the RGB image does not show the target (dark or glare)."""
    return np.logical_or.reduce([flags[c] for c in RGB_FAILURES])


def thermal_failure(flags: dict[str, np.ndarray]) -> np.ndarray:
    """Frames where the thermal image does not show the target (crossover or low contrast)."""
    return np.logical_or.reduce([flags[c] for c in THERMAL_FAILURES])
