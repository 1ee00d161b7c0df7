"""ckd-eval / ckd-bag end to end on a small dataset: run (resume), score, reports, bags, score-bag."""
import json

import cv2
import numpy as np
import pytest

from ckd_ros.core import bag_cli, bagio, eval_cli, metrics, results
from ckd_ros.core.datasets import ground_truth_of, open_dataset
from ckd_ros.core.image import ThermalGainControl

H, W, SIZE = 48, 64, 8
SEQUENCES = {'aa': (4, 5), 'bb': (30, 20), 'cc': (10, 30)}   # start corner of the hot square
FRAMES = 6


def _square_box(start, k):
    return [start[0] + 3 * k, start[1] + k, SIZE, SIZE]


@pytest.fixture
def lasher_root(tmp_path):
    """LasHeR layout: a hot/bright square moving 3 px right and 1 px down per frame; 16-bit thermal."""
    root = tmp_path / 'lasher'
    for name, start in SEQUENCES.items():
        (root / name / 'visible').mkdir(parents=True)
        (root / name / 'infrared').mkdir(parents=True)
        lines = []
        for k in range(FRAMES):
            x, y, w, h = _square_box(start, k)
            rgb = np.full((H, W, 3), 30, np.uint8)
            rgb[y:y + h, x:x + w] = 220
            thermal = np.full((H, W), 2000, np.uint16)
            thermal[y:y + h, x:x + w] = 9000
            cv2.imwrite(str(root / name / 'visible' / f'v{k:05d}.png'), rgb)
            cv2.imwrite(str(root / name / 'infrared' / f'i{k:05d}.png'), thermal)
            lines.append(f'{x},{y},{w},{h}')
        (root / name / 'init.txt').write_text('\n'.join(lines) + '\n')
    (root / 'AttriSeqsTxt').mkdir()
    for name, flags in (('aa', [1] + [0] * 18), ('bb', [1, 1] + [0] * 17), ('cc', [0, 1] + [0] * 17)):
        (root / 'AttriSeqsTxt' / f'{name}.txt').write_text(','.join(map(str, flags)))
    return root


class HotSpotTracker:
    """Test double with real behaviour: the box keeps its size and is centred on the centroid of the
    thermal pixels brighter than the frame's midpoint."""

    def __init__(self, fail_on=None):
        self.fail_on = fail_on
        self.frames_tracked = 0
        self.box = None

    def initialize(self, rgb, thermal, box):
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert thermal.dtype == np.uint8            # 16-bit thermal reached the tracker as 8 bit
        self.box = list(box)

    def track(self, rgb, thermal):
        if self.fail_on is not None and self.frames_tracked == self.fail_on:
            raise KeyboardInterrupt('simulated interruption')
        self.frames_tracked += 1
        grey = thermal if thermal.ndim == 2 else thermal[:, :, 0]
        ys, xs = np.nonzero(grey > (int(grey.min()) + int(grey.max())) // 2)
        w, h = self.box[2:]
        self.box = [xs.mean() - (w - 1) / 2, ys.mean() - (h - 1) / 2, w, h]

        class Result:
            box = tuple(self.box)
        return Result()


def test_run_resumes_after_interruption(lasher_root, tmp_path):
    ds = open_dataset('lasher', lasher_root)
    gain = ThermalGainControl()
    out = tmp_path / 'results'
    # the tracker dies on its 8th track call: sequence aa (5 calls) finishes, bb is interrupted
    dying = HotSpotTracker(fail_on=7)
    with pytest.raises(KeyboardInterrupt):
        eval_cli.run_sources(eval_cli.dataset_sources(ds, None, gain, None), lambda: dying, out, show_progress=False)
    assert results.list_result_sequences(out) == ['aa']
    assert not (out / 'bb.txt').exists()           # nothing half-written for the interrupted sequence
    first = (out / 'aa.txt').read_text()
    fresh = HotSpotTracker()
    summary = eval_cli.run_sources(eval_cli.dataset_sources(ds, None, gain, None), lambda: fresh, out,
                                   show_progress=False)
    assert summary.skipped == ['aa'] and summary.tracked == ['bb', 'cc']
    assert fresh.frames_tracked == 2 * (FRAMES - 1)
    assert (out / 'aa.txt').read_text() == first
    boxes = results.read_result_boxes(out / 'cc.txt')
    np.testing.assert_array_equal(boxes, [_square_box(SEQUENCES['cc'], k) for k in range(FRAMES)])


def _fake_factory(monkeypatch):
    monkeypatch.setattr(eval_cli, 'make_tracker_factory', lambda *a, **k: HotSpotTracker)


def test_run_command_writes_report_and_performance(lasher_root, tmp_path, monkeypatch, capsys):
    _fake_factory(monkeypatch)
    out = tmp_path / 'run'
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet']) == 0
    rep = out / 'report'
    doc = json.loads((rep / 'scores.json').read_text())
    assert doc['benchmark'] == 'lasher' and doc['num_sequences'] == 3
    assert doc['metrics']['PR'] == pytest.approx(1.0) and doc['metrics']['SR'] > 0.9
    assert set(doc['attributes']) == {'NO', 'PO'} and doc['attributes']['PO']['sequences'] == ['bb', 'cc']
    for png in ('pr_plot.png', 'sr_plot.png', 'npr_plot.png'):
        assert (rep / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| ALL (3) |' in (rep / 'summary.md').read_text()
    perf = json.loads((rep / 'performance.json').read_text())
    assert perf['BasicPerformanceMetrics.NUM_FRAMES_SENT'] == 3 * (FRAMES - 1)
    assert perf['BasicPerformanceMetrics.NUM_MISSED_FRAMES'] == 0
    assert perf['BasicPerformanceMetrics.MEAN_FRAME_RATE'] > 0
    assert perf['metadata']['config']['sequences_tracked'] == ['aa', 'bb', 'cc']
    assert 'ResourceMetrics.PROCESS_CPU_PERCENT_OF_ONE_CORE' in perf
    # a second run tracks nothing and reports the same numbers from the files
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet']) == 0
    assert 'skipped (results exist) 3' in capsys.readouterr().out
    assert json.loads((rep / 'scores.json').read_text())['metrics'] == doc['metrics']


def test_score_command_matches_metrics(lasher_root, tmp_path):
    out = tmp_path / 'res'
    rng = np.random.default_rng(0)
    for name, start in SEQUENCES.items():
        gt = np.array([_square_box(start, k) for k in range(FRAMES)], float)
        results.write_sequence_result(out, name, gt + rng.integers(-6, 7, gt.shape), np.full(FRAMES, 0.02))
    assert eval_cli.main(['score', '--results', str(out), '--benchmark', 'lasher', '--dataset', str(lasher_root),
                          '--report', str(tmp_path / 'rep'), '--name', 'noisy']) == 0
    doc = json.loads((tmp_path / 'rep' / 'scores.json').read_text())
    ds = open_dataset('lasher', lasher_root)
    expected = metrics.evaluate('lasher', results.load_results(out),
                                {n: ground_truth_of(ds[n]) for n in ds.names})
    assert doc['metrics'] == expected.metrics
    assert doc['fps']['aa'] == pytest.approx(50.0)
    # no ground truth for a result -> clear error, exit code 2 path via SystemExit message
    results.write_sequence_result(out, 'zz', np.ones((2, 4)))
    with pytest.raises(SystemExit, match='without ground truth: zz'):
        eval_cli.main(['score', '--results', str(out), '--benchmark', 'lasher', '--dataset', str(lasher_root)])


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_convert_then_run_over_bags_equals_dataset_run(lasher_root, tmp_path, monkeypatch, capsys, storage):
    _fake_factory(monkeypatch)
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--out', str(bags), '--fps', '10',
                         '--storage', storage, '--quiet']) == 0
    assert sorted(p.name for p in bags.iterdir()) == ['aa', 'bb', 'cc']
    assert bag_cli.main(['info', str(bags / 'aa')]) == 0
    text = capsys.readouterr().out
    assert 'mono16 64x48' in text and '10.00 Hz' in text
    eval_cli.main(['run', '--bags', str(bags), '--results', str(tmp_path / 'from_bags'), '--quiet',
                   '--benchmark', 'lasher'])
    eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(tmp_path / 'from_ds'), '--quiet'])
    for name in SEQUENCES:
        assert (tmp_path / 'from_bags' / f'{name}.txt').read_text() == (tmp_path / 'from_ds' / f'{name}.txt').read_text()


def test_damaged_bag_keeps_partial_results(tmp_path, monkeypatch):
    _fake_factory(monkeypatch)
    bag = tmp_path / 'big'
    # large frames so that the MCAP file has several chunks
    big = tmp_path / 'bigseq'
    (big / 'rgb').mkdir(parents=True)
    (big / 'th').mkdir()
    for k in range(12):
        rgb = np.full((240, 320, 3), 30, np.uint8)
        rgb[20 + k:28 + k, 20 + 3 * k:28 + 3 * k] = 220
        th = np.full((240, 320), 2000, np.uint16)
        th[20 + k:28 + k, 20 + 3 * k:28 + 3 * k] = 9000
        cv2.imwrite(str(big / 'rgb' / f'{k:03d}.png'), rgb)
        cv2.imwrite(str(big / 'th' / f'{k:03d}.png'), th)
    (big / 'gt.txt').write_text(''.join(f'{20 + 3 * k},{20 + k},8,8\n' for k in range(12)))
    assert bag_cli.main(['convert', '--rgb', str(big / 'rgb'), '--thermal', str(big / 'th'), '--boxes',
                         str(big / 'gt.txt'), '--out', str(bag), '--quiet']) == 0
    data = (bag / 'big.mcap').read_bytes()
    (bag / 'big.mcap').write_bytes(data[: int(len(data) * 0.75)])
    out = tmp_path / 'res'
    code = eval_cli.main(['run', '--bags', str(bag), '--results', str(out), '--quiet', '--no-report'])
    assert code == 1
    assert results.list_result_sequences(out) == []            # not counted as finished
    partial = results.read_result_boxes(out / 'partial' / 'big.txt')
    assert 0 < len(partial) < 12
    np.testing.assert_array_equal(partial[:3, 0], [20, 23, 26])   # the frames before the damage were tracked


def test_score_bag_counts_dropped_frames(tmp_path):
    bag = tmp_path / 'out_bag'
    gt = [[10 + 2 * k, 10, 8, 8] for k in range(6)]
    with bagio.BagWriter(bag) as writer:
        for k, box in enumerate(gt):
            stamp = 1_000_000_000 + k * 100_000_000
            writer.write_target('/ground_truth', stamp, box)
            if k in (2, 4):
                continue             # the node dropped these pairs
            answer = np.array(box, float) + [1, 0, 0, 0]
            # recorded 40 ms after the input stamp
            writer.write('/ckd_tracker/target', bagio.TARGET_TYPE, stamp + 40_000_000,
                         bagio.target_message(writer.store, stamp, answer, score=0.9, state=bagio.STATE_TRACKING,
                                              latency=0.035))
    assert eval_cli.main(['score-bag', str(bag), '--results', str(tmp_path / 'r')]) == 0
    boxes = results.read_result_boxes(tmp_path / 'r' / 'out_bag.txt')
    # frame 0 = GT, dropped frames repeat the last answer
    np.testing.assert_array_equal(boxes[:, 0], [10, 13, 13, 17, 17, 21])
    perf = json.loads((tmp_path / 'r' / 'report' / 'performance.json').read_text())
    assert perf['BasicPerformanceMetrics.NUM_MISSED_FRAMES'] == 2
    assert perf['BasicPerformanceMetrics.MEAN_LATENCY'] == pytest.approx(40.0)
    assert perf['BasicPerformanceMetrics.P95_LATENCY'] == pytest.approx(40.0)
    doc = json.loads((tmp_path / 'r' / 'report' / 'scores.json').read_text())
    assert doc['frames_answered'] == 4 and doc['num_frames'] == 5    # generic: frames after the first
    # the time file holds the node's latency for answered frames, nan for dropped ones
    assert doc['fps']['out_bag'] == pytest.approx(1 / 0.035)
