"""`make demo` (ckd_ros/ros/demo.py): a shortened demo end to end through a real node process over
DDS, and the demo's own rules (new run folder every time, unseen seeds with the failure segments
their scenario promises, clear refusals)."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TEST_DIR, ros_subprocess_env

pytestmark = pytest.mark.ros

MICRO_CONFIG = TEST_DIR / 'data' / 'node_micro_config.yaml'
SEQUENCES, FRAMES, WIDTH, HEIGHT = 2, 24, 160, 128
# the default --baselines: OpenCV's CSRT (fused, psr 0), KCF (RGB), MIL (thermal)
BASELINE_RUNS = {'opencv_csrt_fused_psr0': 'OpenCV CSRT fused (psr 0)', 'opencv_kcf_rgb': 'OpenCV KCF RGB',
                 'opencv_mil_thermal': 'OpenCV MIL thermal'}
CKD_RUNS = ('fused', 'rgb_only', 'thermal_only')


def demo_command(output_dir, *extra):
    return [sys.executable, '-m', 'ckd_ros.ros.demo', '--config', str(MICRO_CONFIG), '--checkpoint', 'random',
            '--device', 'cpu', '--threads', '1', '--sequences', str(SEQUENCES), '--frames', str(FRAMES),
            '--size', f'{WIDTH}x{HEIGHT}', '--output-dir', str(output_dir), '--quiet', *extra]


def run_demo(args, timeout=120):
    return subprocess.run(args, env=ros_subprocess_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """One shortened demo: 2 sequences x 24 frames at 160x128, micro model, lock-step replay."""
    output_dir = tmp_path_factory.mktemp('demo')
    tic = time.monotonic()
    proc = run_demo(demo_command(output_dir))
    seconds = time.monotonic() - tic
    assert proc.returncode == 0, f'demo failed:\n{proc.stdout}\n{proc.stderr}'
    run_dir = (output_dir / 'latest').resolve()
    return {'output_dir': output_dir, 'run_dir': run_dir, 'stdout': proc.stdout, 'seconds': seconds,
            'summary': json.loads((run_dir / 'metrics.json').read_text()),
            'manifest': json.loads((run_dir / 'sequences.json').read_text())}


def test_short_demo_writes_every_output_with_sane_numbers(demo_run):
    run_dir, summary = demo_run['run_dir'], demo_run['summary']
    assert demo_run['seconds'] < 60, f"the shortened demo took {demo_run['seconds']:.0f} s"
    assert run_dir.parent == demo_run['output_dir'] and (demo_run['output_dir'] / 'latest').is_symlink()
    for name in ('metrics.md', 'metrics.json', 'precision.png', 'success.png', 'normalized_precision.png',
                 'performance.json', 'sequences.json', 'node.log', 'preview.png', 'baselines.log'):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for png in ('precision.png', 'success.png', 'preview.png'):
        assert (run_dir / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # the table printed is the one written
    assert 'CKD fused (node over DDS)' in demo_run['stdout'] and 'CKD thermal only (RGB blanked)' in demo_run['stdout']
    assert str(run_dir / 'metrics.md') in demo_run['stdout']
    # the speed figures name their machine (README: every figure names its machine)
    machine_lines = [line for line in demo_run['stdout'].splitlines() if line.startswith('machine: ')]
    assert len(machine_lines) == 1 and 'CPUs' in machine_lines[0], demo_run['stdout'][-2000:]
    assert machine_lines[0] in (run_dir / 'metrics.md').read_text()
    assert summary['machine']['cpu_count'] >= 1
    assert 'lock-step round trip' in (run_dir / 'metrics.md').read_text()
    md = (run_dir / 'metrics.md').read_text()
    assert '| CKD fused (node over DDS) |' in md and '| CKD RGB only (thermal blanked) |' in md
    for label in BASELINE_RUNS.values():
        assert f'| {label} |' in md and label in demo_run['stdout']

    scored = SEQUENCES * (FRAMES - 1)            # frame 0 is the initialisation
    assert set(summary['metrics']) == set(CKD_RUNS) | set(BASELINE_RUNS)
    for run in (*CKD_RUNS, *BASELINE_RUNS):
        m = summary['metrics'][run]
        assert m['frames'] == scored
        for key in ('PR', 'NPR', 'SR'):
            assert 0.0 <= m[key] <= 100.0, (run, key, m[key])
        for group in ('rgb_fails', 'thermal_fails'):
            c = m['conditions'][group]
            assert c['frames'] > 0 and 0.0 <= c['PR'] <= 1.0 and 0.0 <= c['SR50'] <= 1.0
        assert m['fps'] > 0
    assert summary['frames_replayed'] == SEQUENCES * FRAMES
    assert summary['frames_dropped'] == 0, 'lock-step replay tracks every pair'
    assert summary['node_exit_code'] == 0, 'the node left through the lifecycle shutdown'
    assert set(summary['fused_beats_ablations']) == {'PR', 'NPR', 'SR'}
    # the verdict names the winner by SR and by PR: the run(s) with the highest value, among every tracker
    assert set(summary['winner']) == {'SR', 'PR'}
    for metric, runs in summary['winner'].items():
        top = max(m[metric] for m in summary['metrics'].values())
        assert runs and all(summary['metrics'][run][metric] == top for run in runs)
        assert f"by {metric}: {' and '.join(summary['labels'][run] for run in runs)} with {top:.1f}" \
            in summary['winner_verdict']
    assert summary['winner_verdict'].startswith('Winner by SR: ')
    assert summary['winner_verdict'] in demo_run['stdout'] and f"**{summary['winner_verdict']}.**" in md
    assert set(summary['config']['baselines']) == set(BASELINE_RUNS)
    assert summary['config']['baselines']['opencv_csrt_fused_psr0']['csrt_psr_threshold'] == 0.0
    assert summary['timings_s']['baselines_s'] > 0

    perf = json.loads((run_dir / 'performance.json').read_text())
    assert perf['BasicPerformanceMetrics.NUM_FRAMES_SENT'] == SEQUENCES * (FRAMES - 1)
    assert perf['BasicPerformanceMetrics.NUM_MISSED_FRAMES'] == 0
    assert 0 < perf['BasicPerformanceMetrics.P50_LATENCY'] <= perf['BasicPerformanceMetrics.P95_LATENCY'] \
        <= perf['BasicPerformanceMetrics.MAX_LATENCY'] < 30_000
    # the node's own latency is part of the end-to-end one
    assert perf['NodeLatency.P50_LATENCY'] <= perf['BasicPerformanceMetrics.P50_LATENCY']
    assert perf['BasicPerformanceMetrics.MEAN_FRAME_RATE'] > 0
    assert set(perf['sequences']) == {s['name'] for s in demo_run['manifest']['sequences']}
    assert set(perf['offline_baselines']) == set(BASELINE_RUNS)


def test_one_node_output_per_replayed_pair_and_scenes_with_the_promised_failures(demo_run):
    from ckd_ros.core import bagio, results
    run_dir, manifest = demo_run['run_dir'], demo_run['manifest']
    assert len(manifest['sequences']) == SEQUENCES
    first = manifest['sequences'][0]
    assert first['scenario'] == 'night_crossover'
    conditions = {s['condition'] for s in first['segments']}
    assert {'rgb_dark', 'thermal_crossover'} <= conditions, 'sequence 0 has a night and a crossover segment'
    assert all(s['seed'] >= 700_000 for s in manifest['sequences']), 'seeds away from the training ranges'
    assert first['frames'] == FRAMES and first['size'] == [WIDTH, HEIGHT]
    # the realistic world by default, each scene traceable to the held-out real track it moves along
    from ckd_ros.core.synthetic_assets import motion_split
    for seq in manifest['sequences']:
        scene = seq['scene']
        assert scene['world'] == 'rgbt' and scene['target'] and scene['background']
        assert scene['motion']['split'] == 'test' and motion_split(scene['motion']['track']) == 'test'
    for seq in manifest['sequences']:
        name = seq['name']
        stamps, gt = bagio.read_ground_truth(run_dir / 'node_output' / name)
        assert len(stamps) == FRAMES and len(np.unique(stamps)) == FRAMES
        targets = bagio.read_targets(run_dir / 'node_output' / name, '/ckd_demo/ckd_tracker/target')
        # every pair after the initialisation frame got exactly one answer carrying its stamp
        assert len(np.unique(targets.stamps_ns)) == len(targets.stamps_ns)
        assert set(stamps[1:].tolist()) <= set(targets.stamps_ns.tolist()) <= set(stamps.tolist())
        assert np.isfinite(targets.boxes).all() and ((targets.scores >= 0) & (targets.scores <= 1)).all()
        # the replayed ground truth is the input bag's
        _, input_gt = bagio.read_ground_truth(run_dir / 'bags' / name)
        np.testing.assert_array_equal(gt, input_gt)
        # result files: one box per frame for each run
        for run in (*CKD_RUNS, *BASELINE_RUNS):
            boxes = results.read_result_boxes(run_dir / 'results' / run / f'{name}.txt')
            assert boxes.shape == (FRAMES, 4) and np.isfinite(boxes).all(), run


def test_video_has_one_frame_per_replayed_pair(demo_run):
    from ckd_ros.ros.demo import count_video_frames
    summary = demo_run['summary']
    video = demo_run['run_dir'] / summary['video'].rsplit('/', 1)[-1]
    assert video.suffix in ('.mp4', '.avi') and video.is_file()
    assert summary['video_frames'] == SEQUENCES * FRAMES
    assert count_video_frames(video) == SEQUENCES * FRAMES
    import cv2
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (HEIGHT, 2 * WIDTH, 3), 'RGB and thermal side by side'


def test_node_over_dds_tracks_exactly_like_the_ros_free_tracker(demo_run):
    """The node's boxes equal those of the same model run in-process on the same bags: DDS, message
    conversion and the lifecycle change nothing about tracking."""
    import torch

    from ckd_ros import init_tracker
    from ckd_ros.core import bagio, results
    from ckd_ros.core.runner import bag_source
    from ckd_ros.core.image import ThermalGainControl
    torch.set_num_threads(1)   # as the node (--threads 1)
    tracker = init_tracker(str(MICRO_CONFIG), checkpoint='random', device='cpu')
    run_dir = demo_run['run_dir']
    for seq in demo_run['manifest']['sequences']:
        name = seq['name']
        source = bag_source(run_dir / 'bags' / name, bagio.DEFAULT_TOPICS, ThermalGainControl(), None)
        targets = bagio.read_targets(run_dir / 'node_output' / name, '/ckd_demo/ckd_tracker/target')
        stamps, _ = bagio.read_ground_truth(run_dir / 'node_output' / name)
        frame0_tracked = int(stamps[0]) in set(targets.stamps_ns.tolist())
        boxes = []
        for index, (rgb, thermal) in enumerate(source.frames()):
            if index == 0:
                tracker.initialize(rgb, thermal, [float(v) for v in source.init_box])
                boxes.append(source.init_box)
                if frame0_tracked:   # the node's worker also took frame 0 after the target was set on it
                    tracker.track(rgb, thermal)
            else:
                boxes.append(tracker.track(rgb, thermal).box)
        node_boxes = results.read_result_boxes(run_dir / 'results' / 'fused' / f'{name}.txt')
        np.testing.assert_allclose(node_boxes, np.trunc(np.asarray(boxes, dtype=np.float32)), atol=1.0)


def test_every_run_gets_a_new_folder_and_latest_moves(tmp_path):
    from ckd_ros.ros.demo import DemoError, link_latest, make_run_dir
    now = time.time()
    first = make_run_dir(tmp_path, now)
    (first / 'metrics.md').write_text('first run')
    link_latest(first)
    second = make_run_dir(tmp_path, now)          # same second: a suffixed folder, never the same one
    assert second != first and second.name.startswith(first.name) and second.parent == tmp_path
    assert (first / 'metrics.md').read_text() == 'first run'
    # `latest` moves when a run has finished, not when it starts (a failed run leaves it on the last good one)
    assert (tmp_path / 'latest').resolve() == first.resolve()
    link_latest(second)
    assert (tmp_path / 'latest').resolve() == second.resolve()
    (tmp_path / 'latest').unlink()
    (tmp_path / 'latest').mkdir()
    with pytest.raises(DemoError, match='latest.*not a link'):
        make_run_dir(tmp_path, now)
    with pytest.raises(DemoError, match='not a folder'):
        make_run_dir(first / 'metrics.md')
    with pytest.raises(DemoError, match='cannot create --output-dir'):   # was a NotADirectoryError traceback
        make_run_dir(first / 'metrics.md' / 'runs')


def test_scenes_come_from_unseen_seeds_and_hold_their_failure_segments(tmp_path):
    import torch

    from ckd_ros.core.checkpoint import save_checkpoint
    from ckd_ros.ros.demo import DemoError, plan_sequences, training_seed_ranges
    planned = plan_sequences(3, 60, (96, 80), first_seed=700_000)
    assert [p.scenario.name for p in planned] == ['night_crossover', 'glare_low_contrast', 'mixed']
    for p in planned:
        flags = p.scene.flags
        if p.scenario.name == 'night_crossover':
            assert flags['rgb_dark'].sum() >= 3 and flags['thermal_crossover'].sum() >= 3
            assert not flags['rgb_glare'].any() and not flags['thermal_low_contrast'].any()
        if p.scenario.name == 'glare_low_contrast':
            assert flags['rgb_glare'].sum() >= 3 and flags['thermal_low_contrast'].sum() >= 3
    # seeds a checkpoint says it trained on are skipped
    checkpoint = tmp_path / 'w.pth.tar'
    save_checkpoint(checkpoint, {'w': torch.zeros(1)},
                    settings={'synthetic': {'SEEDS': [planned[0].seed, planned[0].seed + 5], 'VAL_SEEDS': [5, 7]}})
    excluded = training_seed_ranges(checkpoint)
    assert excluded == [(planned[0].seed, planned[0].seed + 5), (5, 7)]
    again = plan_sequences(1, 60, (96, 80), first_seed=700_000, excluded_seeds=excluded)
    assert again[0].seed >= planned[0].seed + 5
    save_checkpoint(checkpoint, {'w': torch.zeros(1)})
    assert training_seed_ranges(checkpoint) == []
    with pytest.raises(DemoError, match='more frames'):   # no seed left to try
        plan_sequences(1, 60, (96, 80), first_seed=700_000, excluded_seeds=[(700_000, 700_200)])


@pytest.mark.parametrize('args, message', [
    (['--size', '10x10'], 'at least 64x64'),
    (['--rate', '0'], "'lockstep' or a positive real-time factor"),
    (['--frames', '5'], 'integer >= 20'),
    (['--checkpoint', '/nonexistent/w.pth.tar'], '--checkpoint /nonexistent/w.pth.tar does not exist'),
    # accepted before: lock-step then gave up on every answer at once and counted the frames as dropped
    (['--timeout', '-1'], '--timeout must be a positive number'),
    (['--timeout', 'nan'], '--timeout must be a positive number'),
    # a traceback before, after the bags had been written
    (['--namespace', 'bad-ns'], "--namespace 'bad-ns' is not a valid ROS namespace"),
    (['--baselines', 'goturn'], 'baseline tracker must be one of csrt, kcf, mil'),
    (['--baselines', 'csrt:depth'], 'baseline input must be one of rgb, thermal, fused'),
    (['--baselines', 'kcf:rgb,kcf:rgb'], 'a baseline is named twice'),
])
def test_bad_options_are_refused_with_the_reason(tmp_path, args, message):
    proc = run_demo(demo_command(tmp_path / 'out') + args, timeout=60)   # the last value of an option wins
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / 'out' / 'latest').exists(), 'nothing is written for a refused run'
    assert 'Traceback' not in proc.stderr


def test_refuses_to_replay_into_a_domain_where_someone_publishes_the_camera_topics(tmp_path, rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    intruder = rclpy.create_node('other_camera', context=rclpy_context)
    intruder.create_publisher(Image, '/rgb/image', 10)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(intruder)
    try:
        proc = subprocess.Popen(demo_command(tmp_path, '--sequences', '1'), env=ros_subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    finally:
        executor.shutdown()
        intruder.destroy_node()
    assert proc.returncode == 2, out + err
    assert '/rgb/image already has publishers' in err
    assert 'ROS_DOMAIN_ID' in err
    runs = [p for p in tmp_path.iterdir() if p.name != 'latest']
    assert len(runs) == 1 and not (runs[0] / 'node.log').exists(), 'the node was never started'
    assert not (tmp_path / 'latest').exists(), '`latest` links finished runs only'


def test_baselines_the_opencv_build_lacks_are_refused_before_any_work(monkeypatch):
    """Without OpenCV's contrib build (the runtime requirements' plain opencv-python-headless) CSRT and KCF
    are missing: the demo stops at once, naming the package to install and --baselines none."""
    import cv2

    from ckd_ros.core import baselines
    from ckd_ros.ros.demo import DemoError, check_baselines, parse_baselines
    monkeypatch.delattr(cv2, 'TrackerCSRT_create', raising=False)
    monkeypatch.delattr(cv2, 'TrackerCSRT', raising=False)
    monkeypatch.setattr(baselines, '_installed_opencv', lambda: {'opencv-python-headless': '5.0.0.93'})
    with pytest.raises(DemoError) as raised:
        check_baselines(parse_baselines('kcf:rgb,csrt:fused:psr=0'))
    message = str(raised.value)
    assert 'pip install opencv-contrib-python-headless==5.0.0.93' in message and '--baselines none' in message
    check_baselines(parse_baselines('kcf:rgb,mil:fused'))
    check_baselines(parse_baselines('none'))


def test_a_failing_baseline_run_stops_the_demo_with_its_output(tmp_path):
    """The baselines are `ckd-eval run --tracker ...` processes: one that fails is a DemoError with the end
    of its output (here: no bags to track)."""
    from ckd_ros.ros.demo import BaselineRuns, DemoError, baseline_command, parse_baselines
    chosen = parse_baselines('csrt:fused:psr=0,kcf:rgb')
    command = baseline_command(chosen[0], tmp_path / 'bags', tmp_path / 'results' / 'x', 1)
    assert command[1:] == ['-m', 'ckd_ros.cli.eval', 'run', '--bags', str(tmp_path / 'bags'), '--results',
                           str(tmp_path / 'results' / 'x'), '--tracker', 'csrt', '--tracker-input', 'fused',
                           '--threads', '1', '--quiet', '--no-report', '--csrt-psr-threshold', '0.0']
    job = BaselineRuns(chosen, tmp_path, 1)
    with pytest.raises(DemoError) as raised:
        job.wait([])
    message = str(raised.value)
    assert 'OpenCV baseline CSRT fused (psr 0): ckd-eval run exited with code 2' in message
    assert 'ckd-eval: error:' in message and str(tmp_path / 'baselines.log') in message
    assert '--tracker kcf' not in (tmp_path / 'baselines.log').read_text(), 'the runs stop at the first failure'
    job.cancel()                                   # a no-op once they have finished
