"""Training data: sequence protocol, paired RGB-T sampling and processing (``docs/spec/CKD.md`` sec. 4.5).

A training sequence is anything with ``name``, ``len()``, ``ground_truth`` ((N, 4) x, y, w, h),
``rgb(i)`` (H x W x 3 uint8 RGB) and ``thermal(i)`` (H x W or H x W x 3, uint8, or uint16 raw
counts): :class:`ckd_ros.core.datasets.Sequence` (LasHeR, RGBT234, ... readers) and
:class:`ckd_ros.core.synthetic.SyntheticScene` both qualify; :class:`ArraySequence` wraps arrays.

One training sample = a template frame and a search frame of one sequence, each as an RGB and a
thermal crop, plus the search box in crop coordinates and the students' masked-modelling keep
vector. Every random draw of a sample comes from one generator seeded with
``(seed, epoch, sample index)``, so a sample does not depend on the worker or the process that
builds it (a DDP run sees exactly the samples a single process would).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence as SequenceType, runtime_checkable

import cv2
import numpy as np
import torch

from ckd_ros.core.geometry import crop_window, sample_target
from ckd_ros.core.image import ThermalGainControl


@runtime_checkable
class TrainingSequence(Protocol):
    name: str

    def __len__(self) -> int: ...

    @property
    def ground_truth(self) -> np.ndarray: ...

    def rgb(self, index: int) -> np.ndarray: ...

    def thermal(self, index: int) -> np.ndarray: ...


class ArraySequence:
    """A sequence held in memory: ``rgb`` (N, H, W, 3) uint8, ``thermal`` (N, H, W[, 3]), ``boxes`` (N, 4)."""

    def __init__(self, name: str, rgb: np.ndarray, thermal: np.ndarray, boxes: np.ndarray):
        if len(rgb) != len(thermal) or len(rgb) != len(boxes):
            raise ValueError(f'sequence {name!r}: {len(rgb)} RGB frames, {len(thermal)} thermal frames and '
                             f'{len(boxes)} boxes; they must have one entry per frame')
        self.name = name
        self._rgb, self._thermal = rgb, thermal
        self._boxes = np.asarray(boxes, np.float64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self._boxes)

    @property
    def ground_truth(self) -> np.ndarray:
        return self._boxes

    def rgb(self, index: int) -> np.ndarray:
        return self._rgb[index]

    def thermal(self, index: int) -> np.ndarray:
        return self._thermal[index]


def visible_frames(boxes: np.ndarray) -> np.ndarray:
    """Official visibility: GT width and height > 0 (NaN boxes are not visible)."""
    boxes = np.asarray(boxes, np.float64)
    with np.errstate(invalid='ignore'):
        return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


# ----------------------------------------------------------------------------- sampling
class TrackingSampler:
    """The official ``TrackingSampler`` in 'causal' mode for one template and one search frame.

    Picks a dataset by ratio, a sequence uniformly among those with more than 4 visible frames and
    at least 20 frames, a template frame uniformly among the visible frames 0..N-2, and a search
    frame uniformly among the visible frames template+1 .. template+max_gap-1; the window grows by 5
    frames per failed draw.
    """

    MIN_FRAMES = 20
    MIN_VISIBLE = 4  # official: visible.sum() > 2 * (num_search + num_template)

    def __init__(self, datasets: SequenceType[SequenceType[TrainingSequence]], ratios: SequenceType[float],
                 max_gap: int = 200):
        if not datasets or len(datasets) != len(ratios):
            raise ValueError(f'need one ratio per dataset, got {len(datasets)} datasets and {len(ratios)} ratios')
        ratios = np.asarray(ratios, np.float64)
        if (ratios < 0).any() or ratios.sum() <= 0:
            raise ValueError(f'dataset ratios must be >= 0 with a positive sum, got {ratios.tolist()}')
        if max_gap < 1:
            raise ValueError(f'max_gap (DATA.MAX_SAMPLE_INTERVAL) must be >= 1, got {max_gap}')
        self.datasets = [list(d) for d in datasets]
        self.max_gap = int(max_gap)
        self._visible = [[visible_frames(s.ground_truth) for s in d] for d in self.datasets]
        self._usable = [np.array([i for i, v in enumerate(vis)
                                  if v.sum() > self.MIN_VISIBLE and len(v) >= self.MIN_FRAMES],
                                 np.int64) for vis in self._visible]
        for k, (d, usable) in enumerate(zip(self.datasets, self._usable)):
            if ratios[k] > 0 and len(usable) == 0:
                raise ValueError(f'dataset {k} ({len(d)} sequences) has no sequence with >= {self.MIN_FRAMES} frames '
                                 f'and > {self.MIN_VISIBLE} visible frames; training cannot sample from it')
        self.p = ratios / ratios.sum()

    def sample(self, rng: np.random.Generator) -> tuple[TrainingSequence, int, int]:
        """(sequence, template frame, search frame)."""
        k = int(rng.choice(len(self.datasets), p=self.p))
        seq_index = int(self._usable[k][rng.integers(len(self._usable[k]))])
        visible = self._visible[k][seq_index]
        n = len(visible)
        gap_increase = 0
        while True:
            candidates = np.flatnonzero(visible[:n - 1])
            template = int(candidates[rng.integers(len(candidates))])
            lo, hi = template + 1, min(n, template + self.max_gap + gap_increase)
            search_candidates = np.flatnonzero(visible[lo:hi]) + lo
            gap_increase += 5
            if len(search_candidates):
                search = int(search_candidates[rng.integers(len(search_candidates))])
                return self.datasets[k][seq_index], template, search


# ----------------------------------------------------------------------------- processing
@dataclass
class ProcessingSettings:
    template_size: int = 128
    search_size: int = 256
    template_factor: float = 2.0
    search_factor: float = 4.0
    search_scale_jitter: float = 0.25
    search_center_jitter: float = 3.0
    template_scale_jitter: float = 0.0
    template_center_jitter: float = 0.0
    grayscale_probability: float = 0.05
    flip_probability: float = 0.5
    brightness_jitter: float = 0.2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    stride: int = 16
    mask_probability: float = 0.0
    mask_ratio: float = 0.0
    modality_dropout: float = 0.0   # TRAIN.MODALITY_DROPOUT (not official; 0 = off)
    train: bool = True  # False: the validation pipeline (no brightness jitter, no per-crop flip)

    @classmethod
    def from_config(cls, cfg, train: bool = True) -> "ProcessingSettings":
        d = cfg.DATA
        return cls(template_size=d.TEMPLATE.SIZE, search_size=d.SEARCH.SIZE, template_factor=d.TEMPLATE.FACTOR,
                   search_factor=d.SEARCH.FACTOR, search_scale_jitter=d.SEARCH.SCALE_JITTER,
                   search_center_jitter=d.SEARCH.CENTER_JITTER, template_scale_jitter=d.TEMPLATE.SCALE_JITTER,
                   template_center_jitter=d.TEMPLATE.CENTER_JITTER, mean=tuple(d.MEAN), std=tuple(d.STD),
                   stride=cfg.MODEL.BACKBONE.STRIDE, mask_probability=cfg.TRAIN.MASK_PROBABILITY if train else 0.0,
                   mask_ratio=cfg.TRAIN.INPUT_MASK_RATIO if train else 0.0,
                   modality_dropout=cfg.TRAIN.MODALITY_DROPOUT if train else 0.0, train=train)


_THERMAL_GAIN = ThermalGainControl()   # the node's default gain (DEFAULT_GAIN_MODE): train as deployed


def thermal_to_rgb8(image: np.ndarray) -> np.ndarray:
    """A thermal frame as the network sees it: H x W x 3 uint8 (grey replicated; 16-bit raw counts
    through the node's default per-frame gain, stateless so samples stay independent)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return image
    elif image.ndim == 2 and image.dtype in (np.uint16, np.float32, np.float64):
        return _THERMAL_GAIN(image).image
    raise ValueError(f'thermal frame must be H x W (uint8/uint16/float) or H x W x 3 uint8, got '
                     f'{image.dtype} {image.shape}')


def _check_rgb(image: np.ndarray, name: str, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'sequence {name!r} frame {index}: RGB frame must be H x W x 3 uint8, got '
                         f'{image.dtype} {image.shape}')
    return image


def jitter_box(box: np.ndarray, scale_jitter: float, center_jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Official ``_get_jittered_box``: size ``wh * exp(N(0,1) * scale)``, centre shifted by
    ``sqrt(w'h') * center * (U(0,1) - 0.5)`` per axis."""
    size = box[2:4] * np.exp(rng.standard_normal(2) * scale_jitter)
    max_offset = np.sqrt(size.prod()) * center_jitter
    centre = box[0:2] + 0.5 * box[2:4] + max_offset * (rng.random(2) - 0.5)
    return np.concatenate([centre - 0.5 * size, size])


def box_to_crop(box: np.ndarray, crop_box: np.ndarray, resize_factor: float, out_size: int) -> np.ndarray:
    """Official ``transform_image_to_crop`` (normalised): GT box in the coordinates of a crop around
    ``crop_box``, divided by the output size."""
    centre_crop = crop_box[0:2] + 0.5 * crop_box[2:4]
    centre_box = box[0:2] + 0.5 * box[2:4]
    centre = (out_size - 1) / 2 + (centre_box - centre_crop) * resize_factor
    wh = box[2:4] * resize_factor
    return np.concatenate([centre - 0.5 * wh, wh]) / out_size


def padding_mask(image_shape: tuple[int, int], box: np.ndarray, factor: float, out_size: int) -> np.ndarray:
    """Padding (True) vs image (False) of the crop ``sample_target`` takes, at output resolution.

    The official training crop builds this mask beside the image; like the official code the float
    mask is resized bilinearly and every pixel touched by padding counts as padding."""
    win = crop_window(box, factor, image_shape[0], image_shape[1])
    mask = np.ones((win.size, win.size), np.float32)
    mask[win.pad_top:win.size - win.pad_bottom, win.pad_left:win.size - win.pad_right] = 0
    return cv2.resize(mask, (out_size, out_size), interpolation=cv2.INTER_LINEAR) != 0


def _rejected_by_padding(mask: np.ndarray, stride: int) -> bool:
    """Official checks: the crop is padding only, at full resolution or on the token grid
    (``F.interpolate(..., size=feat)`` nearest = take pixel ``floor(i * out / feat)``)."""
    if mask.all():
        return True
    feat = mask.shape[0] // stride
    idx = np.floor(np.arange(feat) * (mask.shape[0] / feat)).astype(int)
    return bool(mask[np.ix_(idx, idx)].all())


def masked_modelling_keep(rng: np.random.Generator, tokens: int, probability: float, ratio: float) -> np.ndarray:
    """The students' search-token keep vector (official ``rgb_branch`` forward, shared with ``tir_branch``).

    ``probability >= 1``: keep = U(0,1) > ratio per token. ``0 < probability < 1``: per sample with
    probability ``1 - probability`` keep only the tokens with U(0,1) < ratio, otherwise keep all
    (the official code's inverted semantics, kept as they are; no official config uses it).
    ``probability <= 0``: keep all.
    """
    if probability >= 1:
        return rng.random(tokens) > ratio
    if probability <= 0:
        return np.ones(tokens, bool)
    draws = rng.random(tokens)
    if rng.random() >= probability:
        return draws < ratio
    return np.ones(tokens, bool)


def modality_blanking(rng: np.random.Generator, probability: float) -> dict[str, tuple[int, ...]]:
    """Modality dropout (``TRAIN.MODALITY_DROPOUT``, not in the official code): which crops of a sample
    go black, as ``{'template' | 'search': (0 = RGB, 1 = thermal, ...)}``.

    With ``probability`` one modality, RGB or thermal at even odds, is blanked in the search crop, and
    in the template crop too at even odds: a camera dead from the start (the demo's "RGB only" /
    "thermal only" runs blank a whole stream) or one that fails after the target was chosen (night,
    glare, thermal crossover). Black is what the node's RGB-only / thermal-only runs feed. With
    ``probability`` 0 nothing is drawn, so the official sample stream is unchanged."""
    if probability <= 0 or rng.random() >= probability:
        return {}
    modality = int(rng.integers(2))
    whole_sequence = rng.random() < 0.5
    return {'search': (modality,), 'template': (modality,) if whole_sequence else ()}


class CKDProcessing:
    """Official STARK/OSTrack processing for RGB-T pairs (``docs/spec/CKD.md`` sec. 4.5). Returns None for a
    rejected sample."""

    def __init__(self, settings: ProcessingSettings):
        self.s = settings
        self._mean = np.asarray(settings.mean, np.float32).reshape(3, 1, 1)
        self._std = np.asarray(settings.std, np.float32).reshape(3, 1, 1)

    def __call__(self, rng: np.random.Generator, template: tuple[np.ndarray, np.ndarray, np.ndarray],
                 search: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray] | None:
        """``template`` / ``search`` = (rgb H x W x 3 uint8, thermal H x W x 3 uint8, box x y w h)."""
        s = self.s
        # joint transform: one grayscale and one flip draw for all template and search images
        gray = rng.random() < s.grayscale_probability
        flip = rng.random() < s.flip_probability
        blanked = modality_blanking(rng, s.modality_dropout)
        frames = {}
        for key, (rgb, tir, box) in (('template', template), ('search', search)):
            box = np.asarray(box, np.float64)
            if gray:
                rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
                tir = np.repeat(cv2.cvtColor(tir, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
            if flip:
                rgb, tir = np.ascontiguousarray(rgb[:, ::-1]), np.ascontiguousarray(tir[:, ::-1])
                # pytracking's pixel flip of the box corners: x' = (W - 1) - (x + w)
                box = np.array([(rgb.shape[1] - 1) - (box[0] + box[2]), box[1], box[2], box[3]])
            frames[key] = (rgb, tir, box)
        out: dict[str, np.ndarray] = {}
        for key, size, factor, sj, cj in (
                ('template', s.template_size, s.template_factor, s.template_scale_jitter, s.template_center_jitter),
                ('search', s.search_size, s.search_factor, s.search_scale_jitter, s.search_center_jitter)):
            rgb, tir, box = frames[key]
            crop_box = jitter_box(box, sj, cj, rng)  # one jittered box per frame, shared by RGB and TIR
            if not np.isfinite(crop_box).all() or np.ceil(np.sqrt(crop_box[2] * crop_box[3]) * factor) < 1:
                return None
            mask = padding_mask(rgb.shape[:2], crop_box, factor, size)
            if _rejected_by_padding(mask, s.stride):
                return None
            crop_rgb, resize_factor = _crop(rgb, crop_box, factor, size)
            crop_tir, _ = _crop(tir, crop_box, factor, size)
            anno = box_to_crop(box, crop_box, resize_factor, size)
            # per-crop transforms, joint over the RGB and TIR crop of this frame
            imgs = [crop_rgb.astype(np.float32).transpose(2, 0, 1), crop_tir.astype(np.float32).transpose(2, 0, 1)]
            if s.train:
                brightness = rng.uniform(max(0.0, 1 - s.brightness_jitter), 1 + s.brightness_jitter)
                imgs = [np.clip(im * np.float32(brightness / 255.0), 0.0, 1.0) for im in imgs]
                if rng.random() < s.flip_probability:
                    imgs = [np.ascontiguousarray(im[:, :, ::-1]) for im in imgs]
                    anno = np.array([1.0 - anno[0] - anno[2], anno[1], anno[2], anno[3]])
            else:
                imgs = [im / np.float32(255.0) for im in imgs]
            for modality in blanked.get(key, ()):
                imgs[modality] = np.zeros_like(imgs[modality])
            out[f'{key}_rgb'] = (imgs[0] - self._mean) / self._std
            out[f'{key}_tir'] = (imgs[1] - self._mean) / self._std
            out[f'{key}_anno'] = anno.astype(np.float32)
        tokens = (s.search_size // s.stride) ** 2
        out['search_token_keep'] = masked_modelling_keep(rng, tokens, s.mask_probability, s.mask_ratio)
        return out


def _crop(image: np.ndarray, box: np.ndarray, factor: float, size: int) -> tuple[np.ndarray, float]:
    crop, resize_factor = sample_target(image, box, factor, size)[:2]
    return crop, float(resize_factor)


# ----------------------------------------------------------------------------- dataset
class CKDTrainingDataset(torch.utils.data.Dataset):
    """``samples_per_epoch`` samples per epoch; sample ``i`` of epoch ``e`` is a function of
    ``(seed, e, i)`` only. Items are dicts of float32 tensors (crops (3, H, W), boxes (4,)) and the
    bool keep vector (Ls,)."""

    MAX_ATTEMPTS = 100

    def __init__(self, sampler: TrackingSampler, processing: CKDProcessing, samples_per_epoch: int, seed: int = 42):
        if samples_per_epoch < 1:
            raise ValueError(f'samples_per_epoch must be >= 1, got {samples_per_epoch}')
        self.sampler = sampler
        self.processing = processing
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        for _ in range(self.MAX_ATTEMPTS):
            seq, t, x = self.sampler.sample(rng)
            boxes = seq.ground_truth
            template = (_check_rgb(seq.rgb(t), seq.name, t), thermal_to_rgb8(seq.thermal(t)), boxes[t])
            search = (_check_rgb(seq.rgb(x), seq.name, x), thermal_to_rgb8(seq.thermal(x)), boxes[x])
            for frame, (rgb, tir, _) in ((t, template), (x, search)):
                if rgb.shape[:2] != tir.shape[:2]:
                    raise ValueError(f'sequence {seq.name!r} frame {frame}: RGB {rgb.shape[:2]} and thermal '
                                     f'{tir.shape[:2]} frames differ in size; register/resize them first')
            sample = self.processing(rng, template, search)
            if sample is not None:
                return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
        raise RuntimeError(f'no valid training sample after {self.MAX_ATTEMPTS} draws (sample {index}); '
                           'check that the ground-truth boxes lie inside the frames')


def worker_count(requested: int | None) -> int:
    """DataLoader workers: the request, capped by the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(0, min(int(requested if requested is not None else 0), cpus))
