"""RGBT benchmark metrics, computed exactly as the RGBT toolkit (pip ``rgbt==1.0.1``) computes them.

Definitions (``docs/spec/CKD.md`` sec. 5, ``rgbt/utils.py`` and ``rgbt/metrics/metrics.py``):

* boxes are ``x, y, w, h``; IoU uses the inclusive pixel convention (``x2 = x + w - 1``, intersection
  ``+ 1``) with areas ``w * h``; the centre is ``x + (w - 1) / 2`` (strict) or ``x + w / 2`` (GTOT);
* precision curve: fraction of frames with centre error ``<= t`` for ``t = 0..50`` px, PR = value at
  20 px; success curve: fraction with IoU ``> t`` for ``t = 0, 0.05, .., 1``, SR = mean of the curve;
  normalized precision: centres divided by the GT ``w, h``, ``t = 0..0.5``, value at 0.2;
* ``rgbt234``: MPR/MSR, per frame the min CLE / max IoU over the visible and infrared GT;
* ``rgbt210``: PR/SR against one GT, frame 0 replaced by the GT;
* ``lasher``: PR/NPR/SR, frame 0 replaced by the GT, results truncated to the GT length, predictions
  with ``w <= 0`` or ``h <= 0`` replaced by the previous one, frames whose GT has a value ``<= 0`` get
  score -1 (a hit for precision, a miss for success);
* ``gtot``: MPR/MSR with the non-strict centre, frames pooled over the dataset, MPR = fraction with
  CLE ``< 5`` px, MSR = trapezoidal area of the pooled success curve;
* ``generic`` (VTUAV, plain folders; not a toolkit protocol): PR/NPR/SR over the frames after frame 0
  whose GT is valid (finite, ``w, h > 0``), strict centre; sparse/missing GT frames are skipped.

Arithmetic is float32 like the toolkit's (it loads files as float32 and works on numpy float32
scalars), including its square root through float32 scalar ``** 0.5`` (libm ``powf``, which differs
from a correctly rounded ``sqrt`` by one ulp on some inputs), and the curves are reduced in the same
order, so the numbers are identical, not just close. Predictions are rounded to integers first
(``round_predictions``) as the toolkit's result loader does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence as SequenceType

import numpy as np

from ckd_ros.core.datasets import GroundTruth

PRECISION_THRESHOLDS = np.linspace(0, 50, 51)
SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)
NORMALIZED_PRECISION_THRESHOLDS = np.linspace(0, 0.5, 51)
GTOT_PRECISION_THRESHOLDS = np.linspace(0, 25, 51)
PRECISION_INDEX = 20        # 20 px (or 0.2 normalized)
GTOT_PRECISION_INDEX = 10   # 5 px

BENCHMARKS = ('rgbt234', 'rgbt210', 'lasher', 'gtot', 'generic')
BENCHMARK_METRICS = {
    'rgbt234': ('MPR', 'MSR'),
    'rgbt210': ('PR', 'SR'),
    'lasher': ('PR', 'NPR', 'SR'),
    'gtot': ('MPR', 'MSR'),
    'generic': ('PR', 'NPR', 'SR'),
}
_F32 = np.float32


# --------------------------------------------------------------------------------------------
# Per-frame measures (float32, toolkit operation order)

def _as_boxes32(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f'expected an (N, 4) array of x, y, w, h boxes, got shape {arr.shape}')
    return arr


def _powf_sqrt(squared: np.ndarray) -> np.ndarray:
    # The toolkit takes float32 scalar ``** 0.5`` (libm powf); numpy's vectorised sqrt rounds a few
    # inputs to the neighbouring float32, so go through the same scalar operation.
    return np.fromiter((v ** 0.5 for v in squared.astype(_F32)), dtype=_F32, count=len(squared))


def _centres(boxes: np.ndarray, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    if strict:
        return (boxes[:, 2] - _F32(1)) / _F32(2) + boxes[:, 0], (boxes[:, 3] - _F32(1)) / _F32(2) + boxes[:, 1]
    return boxes[:, 2] / _F32(2) + boxes[:, 0], boxes[:, 3] / _F32(2) + boxes[:, 1]


def centre_error(pred, gt, *, strict: bool = True) -> np.ndarray:
    """Centre location error per frame (float32), toolkit ``CLE``; ``strict=False`` is GTOT's centre."""
    pred, gt = _as_boxes32(pred), _as_boxes32(gt)
    n = min(len(pred), len(gt))
    px, py = _centres(pred[:n], strict)
    gx, gy = _centres(gt[:n], strict)
    with np.errstate(invalid='ignore', over='ignore'):
        return _powf_sqrt((px - gx) ** 2 + (py - gy) ** 2)


def normalized_centre_error(pred, gt, *, strict: bool = True) -> np.ndarray:
    """Centre error with both centres divided by the GT ``w + 1e-8``, ``h + 1e-8`` (toolkit ``normalize_CLE``)."""
    pred, gt = _as_boxes32(pred), _as_boxes32(gt)
    n = min(len(pred), len(gt))
    px, py = _centres(pred[:n], strict)
    gx, gy = _centres(gt[:n], strict)
    gw, gh = gt[:n, 2] + _F32(1e-8), gt[:n, 3] + _F32(1e-8)
    with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
        dx = px / gw - gx / gw
        dy = py / gh - gy / gh
        return _powf_sqrt(dx ** 2 + dy ** 2)


def overlap(pred, gt) -> np.ndarray:
    """IoU per frame (float32), toolkit ``IoU``: inclusive corners, intersection ``+ 1``, areas ``w * h``."""
    pred, gt = _as_boxes32(pred), _as_boxes32(gt)
    n = min(len(pred), len(gt))
    pred, gt = pred[:n], gt[:n]
    one = _F32(1)
    x1, y1 = pred[:, 0], pred[:, 1]
    x2, y2 = pred[:, 2] + pred[:, 0] - one, pred[:, 3] + pred[:, 1] - one
    tx1, ty1 = gt[:, 0], gt[:, 1]
    tx2, ty2 = gt[:, 2] + gt[:, 0] - one, gt[:, 3] + gt[:, 1] - one
    ww = np.maximum(_F32(0), np.minimum(tx2, x2) - np.maximum(tx1, x1) + one)
    hh = np.maximum(_F32(0), np.minimum(ty2, y2) - np.maximum(ty1, y1) + one)
    inter = ww * hh
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        return inter / (pred[:, 3] * pred[:, 2] + gt[:, 3] * gt[:, 2] - inter)


def precision_curve(errors, thresholds=PRECISION_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with error ``<= t`` for each threshold (NaN errors count as misses)."""
    errors = np.asarray(errors)
    return np.array([np.sum(errors <= t) / len(errors) for t in thresholds])


def success_curve(overlaps, thresholds=SUCCESS_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with IoU ``> t`` for each threshold."""
    overlaps = np.asarray(overlaps)
    return np.array([np.sum(overlaps > t) / len(overlaps) for t in thresholds])


# --------------------------------------------------------------------------------------------
# Benchmark protocols

@dataclass
class SequenceCurves:
    """Per-sequence curves of one protocol. For ``gtot`` the curves hold frame *counts* (pooled later)."""

    num_frames: int
    curves: dict[str, np.ndarray]


@dataclass
class BenchmarkScore:
    """Scores of one run on one benchmark protocol."""

    benchmark: str
    metrics: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    """metric -> (thresholds, dataset curve) for plots."""
    per_sequence: dict[str, dict[str, float]]
    sequences: list[str]
    num_frames: int
    sequence_curves: dict[str, SequenceCurves] = field(repr=False, default_factory=dict)

    def subset(self, names: SequenceType[str]) -> 'BenchmarkScore':
        """The same protocol aggregated over a subset of sequences (e.g. one attribute)."""
        names = [n for n in names if n in self.sequence_curves]
        if not names:
            raise ValueError(f'none of the requested sequences was scored in this {self.benchmark} run')
        return _aggregate(self.benchmark, {n: self.sequence_curves[n] for n in names})

    def to_dict(self) -> dict:
        return {
            'benchmark': self.benchmark,
            'metrics': dict(self.metrics),
            'num_sequences': len(self.sequences),
            'num_frames': self.num_frames,
            'curves': {k: {'thresholds': t.tolist(), 'values': v.tolist()} for k, (t, v) in self.curves.items()},
            'per_sequence': self.per_sequence,
        }


def _prepare_prediction(name: str, pred, gt_len: int, round_predictions: bool) -> np.ndarray:
    pred = np.array(pred, dtype=np.float32, copy=True)
    if pred.ndim == 1 and pred.size == 4:
        pred = pred.reshape(1, 4)
    if pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(f'sequence {name!r}: result must be (N, 4) x, y, w, h boxes, got shape {pred.shape}')
    if len(pred) < gt_len:
        raise ValueError(f'sequence {name!r}: {len(pred)} result boxes for {gt_len} ground-truth frames '
                         '(incomplete run?)')
    if round_predictions:
        pred = np.round(pred)
    return pred[:gt_len]


def _curves_rgbt234(pred, gt: GroundTruth) -> SequenceCurves:
    if gt.rgb is None or gt.thermal is None:
        raise ValueError('the rgbt234 protocol needs visible and infrared ground truth')
    cle = np.minimum(centre_error(pred, gt.rgb), centre_error(pred, gt.thermal))
    iou = np.maximum(overlap(pred, gt.rgb), overlap(pred, gt.thermal))
    return SequenceCurves(len(cle), {'MPR': precision_curve(cle), 'MSR': success_curve(iou)})


def _curves_rgbt210(pred, gt: GroundTruth) -> SequenceCurves:
    boxes = _as_boxes32(gt.boxes)
    pred[0] = boxes[0]
    return SequenceCurves(len(pred), {'PR': precision_curve(centre_error(pred, boxes)),
                                      'SR': success_curve(overlap(pred, boxes))})


def _curves_lasher(pred, gt: GroundTruth) -> SequenceCurves:
    boxes = _as_boxes32(gt.boxes)
    pred[0] = boxes[0]
    for i in range(1, len(pred)):
        if pred[i, 2] <= 0 or pred[i, 3] <= 0:
            pred[i] = pred[i - 1]
    invalid_gt = (boxes <= 0).any(axis=1)
    cle = centre_error(pred, boxes)
    ncle = normalized_centre_error(pred, boxes)
    iou = overlap(pred, boxes)
    cle[invalid_gt] = -1
    ncle[invalid_gt] = -1
    iou[invalid_gt] = -1
    return SequenceCurves(len(pred), {'PR': precision_curve(cle),
                                      'NPR': precision_curve(ncle, NORMALIZED_PRECISION_THRESHOLDS),
                                      'SR': success_curve(iou)})


def _curves_gtot(pred, gt: GroundTruth) -> SequenceCurves:
    if gt.rgb is None or gt.thermal is None:
        raise ValueError('the gtot protocol needs visible and infrared ground truth')
    cle = np.minimum(centre_error(pred, gt.rgb, strict=False), centre_error(pred, gt.thermal, strict=False))
    iou = np.maximum(overlap(pred, gt.rgb), overlap(pred, gt.thermal))
    # counts, not fractions: GTOT pools frames over the dataset
    return SequenceCurves(len(cle), {'MPR': np.array([np.sum(cle < t) for t in GTOT_PRECISION_THRESHOLDS]),
                                     'MSR': np.array([np.sum(iou > t) for t in SUCCESS_THRESHOLDS])})


def _curves_generic(pred, gt: GroundTruth) -> SequenceCurves:
    boxes = _as_boxes32(gt.boxes)
    keep = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    keep[0] = False  # frame 0 is the initialisation
    if not keep.any():
        raise ValueError('no frame after the first has a valid ground-truth box')
    pred, boxes = pred[keep], boxes[keep]
    return SequenceCurves(len(pred), {
        'PR': precision_curve(centre_error(pred, boxes)),
        'NPR': precision_curve(normalized_centre_error(pred, boxes), NORMALIZED_PRECISION_THRESHOLDS),
        'SR': success_curve(overlap(pred, boxes))})


_PROTOCOLS = {'rgbt234': _curves_rgbt234, 'rgbt210': _curves_rgbt210, 'lasher': _curves_lasher,
              'gtot': _curves_gtot, 'generic': _curves_generic}


def _thresholds(benchmark: str, metric: str) -> np.ndarray:
    if metric in ('MSR', 'SR'):
        return SUCCESS_THRESHOLDS
    if metric == 'NPR':
        return NORMALIZED_PRECISION_THRESHOLDS
    return GTOT_PRECISION_THRESHOLDS if benchmark == 'gtot' else PRECISION_THRESHOLDS


def _summary(metric: str, curve_rows: np.ndarray) -> np.ndarray:
    """Per-row value of a mean-over-sequences metric (precision at index 20, success mean)."""
    return curve_rows[..., PRECISION_INDEX] if metric in ('PR', 'MPR', 'NPR') else curve_rows.mean(axis=-1)


def _aggregate(benchmark: str, per_seq: Mapping[str, SequenceCurves]) -> BenchmarkScore:
    names = list(per_seq)
    metric_names = BENCHMARK_METRICS[benchmark]
    total_frames = int(sum(c.num_frames for c in per_seq.values()))
    metrics, curves, per_sequence = {}, {}, {n: {'frames': per_seq[n].num_frames} for n in names}
    for metric in metric_names:
        rows = np.array([per_seq[n].curves[metric] for n in names])
        thresholds = _thresholds(benchmark, metric)
        if benchmark == 'gtot':
            frames = np.array([per_seq[n].num_frames for n in names])
            step = SUCCESS_THRESHOLDS[1]
            if metric == 'MPR':
                value = rows[:, GTOT_PRECISION_INDEX].sum() / total_frames
                seq_values = rows[:, GTOT_PRECISION_INDEX] / frames
            else:
                # the toolkit's trapezoid: (sum(rows[:, 1:] * step) + sum(rows[:, :-1] * step)) / 2 / frames
                value = ((rows[:, 1:] * step).sum() + (rows[:, :-1] * step).sum()) / 2. / total_frames
                seq_values = ((rows[:, 1:] * step).sum(axis=1) + (rows[:, :-1] * step).sum(axis=1)) / 2. / frames
            curve = rows.sum(axis=0) / total_frames
        else:
            value = _summary(metric, rows.mean(axis=0)) if metric in ('PR', 'MPR', 'NPR') else rows.mean()
            seq_values = _summary(metric, rows)
            curve = rows.mean(axis=0)
        metrics[metric] = float(value)
        curves[metric] = (thresholds, curve)
        for n, v in zip(names, seq_values):
            per_sequence[n][metric] = float(v)
    return BenchmarkScore(benchmark, metrics, curves, per_sequence, names, total_frames, dict(per_seq))


def evaluate(benchmark: str, results: Mapping[str, np.ndarray], ground_truth: Mapping[str, GroundTruth],
             sequences: SequenceType[str] | None = None, round_predictions: bool = True) -> BenchmarkScore:
    """Score result boxes against ground truth with one protocol of :data:`BENCHMARKS`.

    ``sequences`` defaults to the ground-truth sequences that have results (in ground-truth order).
    Results longer than the ground truth are cut to its length (the toolkit's behaviour); shorter ones
    are an error. The caller's arrays are not modified.
    """
    key = benchmark.lower()
    if key not in _PROTOCOLS:
        raise ValueError(f'unknown benchmark protocol {benchmark!r}; one of {", ".join(BENCHMARKS)}')
    if sequences is None:
        unknown = [n for n in results if n not in ground_truth]
        if unknown:
            raise KeyError(f'results for sequences without ground truth: {unknown[:5]}')
        sequences = [n for n in ground_truth if n in results]
    else:
        missing = [n for n in sequences if n not in results or n not in ground_truth]
        if missing:
            raise KeyError(f'sequences without results or ground truth: {missing[:5]}')
    if not sequences:
        raise ValueError('no sequence to evaluate')
    per_seq = {}
    for name in sequences:
        gt = ground_truth[name]
        if len(gt.boxes) == 0:
            raise ValueError(f'sequence {name!r}: its ground truth has no frames')
        pred = _prepare_prediction(name, results[name], len(gt.boxes), round_predictions)
        try:
            per_seq[name] = _PROTOCOLS[key](pred, gt)
        except ValueError as exc:
            raise ValueError(f'sequence {name!r}: {exc}') from None
    return _aggregate(key, per_seq)


def attribute_breakdown(score: BenchmarkScore,
                        attributes: Mapping[str, SequenceType[str]]) -> dict[str, BenchmarkScore]:
    """Attribute -> score over the scored sequences having it (attributes with none are left out)."""
    out = {}
    for attr, names in attributes.items():
        present = [n for n in names if n in score.sequence_curves]
        if present:
            out[attr] = score.subset(present)
    return out
