"""Untrusted and damaged files: checkpoints that would run code, truncated or bit-flipped checkpoints and
bags, a recorder killed mid-recording, bags with dropped images, unreadable dataset images, and processes
SIGKILLed in the middle of writing results, checkpoints or converted bags. Each gives an error naming the
file and the problem, keeps what was done before, never leaves a half-written file under a final name,
and a rerun resumes without overwriting anything."""
import json
import os
import pickle
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ckd_ros.cli import eval as eval_cli
from ckd_ros.core import bagio, results
from ckd_ros.core.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from conftest import PEERS_DIR, TEST_DIR

torch.set_num_threads(1)

MICRO_CONFIG = str(TEST_DIR / 'data' / 'node_micro_config.yaml')
H, W = 48, 64
SEQUENCES = {'aa': (4, 5), 'bb': (30, 20), 'cc': (10, 30)}
FRAMES = 6


def _env():
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _spawn(args):
    return subprocess.Popen([sys.executable, *map(str, args)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _read_events(proc, until, limit=2000):
    """Lines of ``proc`` until one whose JSON ``event`` is ``until`` (returned); the others are kept."""
    lines = []
    for _ in range(limit):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith('{') and json.loads(line).get('event') == until:
            return json.loads(line), lines
    raise AssertionError(f'no {until!r} event; output:\n{"".join(lines)[-3000:]}')


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


# ------------------------------------------------------------------ checkpoints

class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class _Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (['touch', str(self.marker)],)


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol 5')
def test_pickles_that_would_run_code_are_refused_in_every_container(tmp_path):
    marker = tmp_path / 'pwned'
    files = {}
    for name, payload in (('system', _System(marker)), ('popen', _Popen(marker)), ('exec', _Exec(marker))):
        legacy = tmp_path / f'legacy_{name}.pth'    # torch's pre-1.6 format: a bare pickle stream
        torch.save({'net': {}, 'settings': payload}, legacy, _use_new_zipfile_serialization=False)
        files[legacy] = 'refusing to load'
        raw = tmp_path / f'raw_{name}.pth.tar'     # a plain pickle named like a checkpoint
        raw.write_bytes(pickle.dumps({'net': {}, 'x': payload}, protocol=2))
        files[raw] = 'refusing to load'
    # A genuine zip checkpoint whose data.pkl was swapped for a malicious one (CRCs recomputed).
    good = tmp_path / 'good.pth.tar'
    torch.save({'net': {'box_head.w': torch.zeros(3)}}, good)
    swapped = tmp_path / 'swapped.pth.tar'
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(swapped, 'w') as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith('data.pkl'):
                data = pickle.dumps({'net': {}, 'x': _System(marker)}, protocol=2)
            target.writestr(info.filename, data)
    files[swapped] = 'refusing to load'
    # Protocol 5 (FRAME opcodes) is outside what the restricted unpickler reads: refused as unsafe too,
    # naming the global (torch's own error stops at the FRAME and reads like a damaged file).
    modern = tmp_path / 'protocol5.pth'
    modern.write_bytes(pickle.dumps([_Popen(marker)], protocol=5))
    files[modern] = 'refusing to load .*unsafe.*subprocess.Popen'
    for path, reason in files.items():
        with pytest.raises(CheckpointError, match=reason) as raised:
            read_checkpoint(path)
        assert str(path) in str(raised.value)
        assert 'weights_only' not in str(raised.value) and 'truncated' not in str(raised.value)
    assert not marker.exists(), 'no payload ran'


def test_truncated_and_bit_flipped_checkpoints_never_load_as_different_weights(tmp_path):
    torch.manual_seed(0)
    weights = {'rgb_branch.w': torch.randn(64, 64), 'box_head.b': torch.randn(100)}
    path = tmp_path / 'ckpt.pth.tar'
    save_checkpoint(path, weights, epoch=1)
    original = path.read_bytes()
    damaged = tmp_path / 'damaged.pth.tar'
    for cut in np.linspace(0, len(original) - 1, 40).astype(int):
        damaged.write_bytes(original[:cut])
        with pytest.raises(CheckpointError, match=r'damaged\.pth\.tar .*(truncated or not a torch checkpoint|corrupt)'):
            read_checkpoint(damaged)
    rng = np.random.default_rng(1)
    refused = 0
    for _ in range(150):
        data = bytearray(original)
        position = int(rng.integers(len(data)))
        data[position] ^= 1 << int(rng.integers(8))
        damaged.write_bytes(bytes(data))
        try:
            loaded = read_checkpoint(damaged)
        except CheckpointError as error:
            refused += 1
            assert 'damaged.pth.tar' in str(error)
            continue
        # A flip the file can absorb (zip padding, an unused header field): the weights are exact.
        for key, value in weights.items():
            assert torch.equal(loaded['net'][key], value), f'flip at byte {position} changed {key} silently'
    assert refused > 100
    data = bytearray(original)
    data[original.index(b'data/0') + 200] ^= 0x10          # inside the first tensor's bytes
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r'its record .*data/0 \(\d+ bytes\) fails its CRC-32 check'):
        read_checkpoint(damaged)


def test_wrong_architecture_and_dtypes_name_the_problem(tmp_path):
    from ckd_ros import init_tracker
    from ckd_ros.core.checkpoint import load_model_weights
    from ckd_ros.core.config import load_config
    from ckd_ros.core.model import build_ckd_model

    micro = build_ckd_model(load_config(MICRO_CONFIG))
    path = tmp_path / 'micro.pth.tar'
    save_checkpoint(path, micro.state_dict())
    # The file of a 32-wide, 2-block model into the ckd_tiny configuration.
    with pytest.raises(CheckpointError, match=r"micro\.pth\.tar does not fit this model \(missing \d+ key\(s\): "
                                              r"\['rgb_branch\.blocks\.2\."):
        init_tracker('ckd_tiny', checkpoint=path, device='cpu')
    for dtype, reason in ((torch.int32, 'dtype torch.int32 in the file, model needs a floating tensor'),
                          (torch.complex64, 'dtype torch.complex64 in the file, model needs a floating tensor'),
                          (torch.bool, 'dtype torch.bool in the file')):
        state = micro.state_dict()
        state['box_head.conv5_ctr.weight'] = torch.zeros_like(state['box_head.conv5_ctr.weight'], dtype=dtype)
        save_checkpoint(path, state)
        with pytest.raises(CheckpointError, match=f'box_head.conv5_ctr.weight: {reason}'):
            load_model_weights(build_ckd_model(load_config(MICRO_CONFIG)), path)
    with pytest.raises(FileNotFoundError, match='does not exist \\(it is a folder\\)'):
        read_checkpoint(tmp_path)


# ------------------------------------------------------------------ bags

def _small_sequence(tmp_path, count=8):
    from ckd_ros.core import datasets
    rgb_dir, thermal_dir = tmp_path / 'rgb', tmp_path / 'thermal'
    rgb_dir.mkdir()
    thermal_dir.mkdir()
    rng = np.random.default_rng(0)
    for k in range(count):
        cv2.imwrite(str(rgb_dir / f'{k:04d}.png'), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        cv2.imwrite(str(thermal_dir / f'{k:04d}.png'), rng.integers(0, 60000, (40, 50), dtype=np.uint16))
    (tmp_path / 'gt.txt').write_text(''.join(f'{1 + k} 2 3 4\n' for k in range(count)))
    return datasets.plain_sequence(rgb_dir, thermal_dir, tmp_path / 'gt.txt', name='seq')


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_and_bit_flipped_bags_raise_a_named_error_and_keep_what_was_read(tmp_path, storage):
    bag = tmp_path / 'bag'
    bagio.write_sequence_bag(_small_sequence(tmp_path), bag, storage=storage)
    file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    original = file.read_bytes()
    reference = list(bagio.read_pairs(bag))
    assert len(reference) == 8
    kept = []
    for cut in np.linspace(0, len(original) - 1, 30).astype(int):
        file.write_bytes(original[:cut])
        pairs, error = [], None
        try:
            for pair in bagio.read_pairs(bag):
                pairs.append(pair)
        except bagio.BagReadError as raised:
            error = str(raised)
        for pair, good in zip(pairs, reference):       # what was read is a prefix of the bag, intact
            assert pair.stamp_ns == good.stamp_ns and np.array_equal(pair.thermal, good.thermal)
        if error is None:    # a cut the format absorbs (sqlite3 without the end of its last page)
            assert len(pairs) == len(reference), cut
            continue
        assert file.name in error or str(bag) in error
        assert '[after ' in error, 'the error says how far reading got'
        if storage == 'sqlite3':
            # rosbags cannot open a truncated sqlite3 database (nothing to salvage; the error names it).
            assert error.startswith(f'{bag}: cannot open bag') and not pairs
        kept.append(len(pairs))
    if storage == 'mcap':
        # A single ~90 kB chunk: a crash cut keeps the complete records before it.
        assert kept == sorted(kept) and kept[-1] >= 6 and sum(k > 0 for k in kept) > 15, kept
    rng = np.random.default_rng(2)
    for _ in range(120):
        data = bytearray(original)
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        file.write_bytes(bytes(data))
        try:
            list(bagio.read_pairs(bag))
        except bagio.BagReadError:
            pass               # a flipped bit in the image bytes reads as other pixels: bags carry no CRC


def _record_then_kill(bag, storage: str, pairs: int) -> None:
    """Run test/peers/bag_recorder.py into ``bag`` and SIGKILL it once it has written ``pairs`` pairs."""
    recorder = _spawn([PEERS_DIR / 'bag_recorder.py', bag, storage])
    try:
        for _ in range(200):
            event, _ = _read_events(recorder, 'wrote')
            if event['pairs'] >= pairs:
                break
    finally:
        _kill(recorder)


def test_a_recorder_killed_mid_recording_leaves_a_readable_prefix_and_runs_keep_partial_results(tmp_path, capsys):
    from peers.bag_recorder import START_NS, PERIOD_NS, frame_pair

    bag = tmp_path / 'crashed'
    _record_then_kill(bag, 'mcap', pairs=30)
    assert not (bag / 'metadata.yaml').exists(), 'the recorder never closed the bag'
    pairs = []
    with pytest.raises(bagio.BagReadError, match=r'crashed\.mcap: truncated or corrupt at byte \d+ of \d+') as raised:
        for pair in bagio.read_pairs(bag):
            pairs.append(pair)
    assert len(pairs) >= 20 and raised.value.messages_read >= 3 * len(pairs)
    for k, pair in enumerate(pairs):
        rgb, thermal = frame_pair(k)
        assert pair.stamp_ns == START_NS + k * PERIOD_NS
        assert np.array_equal(pair.rgb, rgb) and np.array_equal(pair.thermal, thermal)

    out = tmp_path / 'results'
    args = ['run', '--bags', str(bag), '--results', str(out), '--config', MICRO_CONFIG, '--checkpoint', 'random',
            '--threads', '1', '--quiet', '--no-report']
    assert eval_cli.main(args) == 1
    err = capsys.readouterr().err
    assert 'FAILED crashed: ' in err and 'crashed.mcap: truncated or corrupt at byte' in err
    partial = results.read_result_boxes(out / 'partial' / 'crashed.txt')
    assert len(partial) == len(pairs) and np.isfinite(partial).all()
    assert results.list_result_sequences(out) == [], 'a broken-off sequence is not a finished result'


def test_a_sqlite3_recorder_killed_mid_recording_leaves_no_bag_and_a_rerun_records_under_the_name(tmp_path):
    """rosbags commits a sqlite3 database only when it closes: a recording killed in place left an empty
    database under the bag's name that blocked the next recording (staged by default now)."""
    from peers.bag_recorder import START_NS, PERIOD_NS

    bag = tmp_path / 'crashed'
    _record_then_kill(bag, 'sqlite3', pairs=5)
    assert not os.path.lexists(bag), 'nothing under the bag name before the recording is complete'
    dead = [p.name for p in tmp_path.iterdir()]
    assert len(dead) == 1 and dead[0].startswith('.crashed.') and dead[0].endswith('.tmp')
    with pytest.raises(FileNotFoundError, match='no rosbag2 folders'):
        bagio.bag_folders(tmp_path)    # the staging folder is not taken for a bag

    with bagio.BagWriter(bag, 'sqlite3') as writer:       # no overwrite needed
        for k in range(3):
            writer.write_pair(START_NS + k * PERIOD_NS, np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint16))
    assert [p.name for p in tmp_path.iterdir()] == ['crashed'], 'the dead staging folder is gone'
    assert [p.stamp_ns for p in bagio.read_pairs(bag)] == [START_NS + k * PERIOD_NS for k in range(3)]
    assert bagio.bag_info(bag)['storage'] == 'sqlite3'


def test_an_image_with_damaged_size_fields_in_a_bag_is_a_named_read_error(tmp_path, capsys):
    bag = tmp_path / 'lying'
    with bagio.BagWriter(bag) as writer:
        for k in range(5):
            stamp = 10**9 + k * 33_000_000
            rgb = bagio.image_message(writer.store, np.full((40, 50, 3), 10 * k, np.uint8), 'rgb8', stamp, 'c')
            if k == 3:
                rgb.step = 2**31 + 100          # a flipped high bit in the step field
            writer.write_target('/ground_truth', stamp, [5.0, 5.0, 10.0, 10.0])
            writer.write('/rgb/image', bagio.IMAGE_TYPE, stamp, rgb)
            writer.write('/thermal/image', bagio.IMAGE_TYPE, stamp,
                         bagio.image_message(writer.store, np.full((40, 50), 1000 * k, np.uint16),
                                             'mono16', stamp, 'c'))
    pairs = []
    with pytest.raises(bagio.BagReadError, match=r'lying: pair 3: the image on /rgb/image '
                                                 r'stamped 1099000000 ns cannot be '
                                                 r'decoded \(data length 6000 does not match step\*height') as raised:
        for pair in bagio.read_pairs(bag):
            pairs.append(pair)
    assert len(pairs) == 3 and raised.value.last_stamp_ns == 1_099_000_000
    out = tmp_path / 'results'
    assert eval_cli.main(['run', '--bags', str(bag), '--results', str(out), '--config', MICRO_CONFIG, '--checkpoint',
                          'random', '--threads', '1', '--quiet', '--no-report']) == 1
    assert 'FAILED lying: ' in capsys.readouterr().err
    assert len(results.read_result_boxes(out / 'partial' / 'lying.txt')) == 3


def test_dropped_images_in_a_bag_keep_the_result_rows_aligned_with_the_ground_truth(tmp_path, capsys):
    bag = tmp_path / 'dropped'
    with bagio.BagWriter(bag) as writer:
        for k in range(12):
            stamp = 10**9 + k * 33_000_000
            rgb = np.full((120, 160, 3), 30, np.uint8)
            rgb[20 + k:40 + k, 20 + 2 * k:50 + 2 * k] = 220
            thermal = np.full((120, 160), 2000, np.uint16)
            thermal[20 + k:40 + k, 20 + 2 * k:50 + 2 * k] = 9000
            writer.write_target('/ground_truth', stamp, [20 + 2 * k, 20 + k, 30, 20])
            writer.write('/rgb/image', bagio.IMAGE_TYPE, stamp,
                         bagio.image_message(writer.store, rgb, 'rgb8', stamp, 'c'))
            if k not in (4, 5, 9):    # the thermal camera dropped three frames
                writer.write('/thermal/image', bagio.IMAGE_TYPE, stamp,
                             bagio.image_message(writer.store, thermal, 'mono16', stamp, 'c'))
    out = tmp_path / 'results'
    assert eval_cli.main(['run', '--bags', str(bag), '--results', str(out), '--config', MICRO_CONFIG, '--checkpoint',
                          'random', '--threads', '1', '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'note: dropped: 3 ground-truth frames had no RGB-thermal pair in the bag' in printed
    boxes = results.read_result_boxes(out / 'dropped.txt')
    times = results.read_result_times(out / 'dropped_time.txt')
    assert len(boxes) == len(times) == 12
    assert boxes[0].tolist() == [20, 20, 30, 20]
    for k in (4, 5, 9):
        assert boxes[k].tolist() == boxes[k - 1].tolist() and times[k] == 0.0
    assert (out / 'report' / 'scores.json').is_file(), 'the aligned run is scored'


# ------------------------------------------------------------------ bag conversion
def _bag_pairs(bag):
    return [(p.stamp_ns, p.rgb.tobytes(), p.thermal.tobytes()) for p in bagio.read_pairs(bag)]


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_sigkill_mid_conversion_leaves_no_partial_bag_and_a_rerun_completes(tmp_path, capsys, storage):
    """The converter is killed with aa converted and bb's third pair being written (sqlite3 commits
    only when the bag closes: in place, that left an empty database under bb's name)."""
    from ckd_ros.cli import bag as bag_cli
    root = _lasher(tmp_path / 'lasher')
    bags = tmp_path / 'bags'

    def convert_args(out):
        return ['--dataset', str(root), '--kind', 'lasher', '--out', str(out), '--storage', storage, '--quiet']

    proc = _spawn([PEERS_DIR / 'convert_hang.py', FRAMES + 3, *convert_args(bags)])
    try:
        event, _ = _read_events(proc, 'hang')
    finally:
        _kill(proc)
    assert event == {'event': 'hang', 'bag': str(bags / 'bb'), 'pairs': 2}
    assert not os.path.lexists(bags / 'bb'), 'no bag under its final name before it is complete'
    assert [p.name for p in bags.iterdir() if not p.name.startswith('.')] == ['aa']
    assert bagio.bag_folders(bags) == [bags / 'aa'], 'the staging folder is not taken for a bag'
    assert bag_cli.main(['info', str(bags / 'bb')]) == 2
    assert 'bag not found' in capsys.readouterr().err
    assert len(list(bagio.read_pairs(bags / 'aa'))) == FRAMES

    reference = tmp_path / 'reference'
    assert bag_cli.main(['convert', *convert_args(reference)]) == 0
    assert bag_cli.main(['convert', *convert_args(bags)]) == 0      # no --overwrite, no cleanup
    assert 'skip aa' in capsys.readouterr().err
    assert sorted(p.name for p in bags.iterdir()) == ['aa', 'bb', 'cc'], 'the dead staging folder is gone'
    for name in SEQUENCES:
        assert bagio.bag_info(bags / name)['storage'] == storage
        assert _bag_pairs(bags / name) == _bag_pairs(reference / name), name


def test_overwriting_a_bag_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    seq = _small_sequence(tmp_path)
    bag = tmp_path / 'bag'
    bagio.write_sequence_bag(seq, bag, storage='sqlite3', max_frames=3)
    old = {p.name: p.read_bytes() for p in bag.iterdir()}

    class Broken(Exception):
        pass

    def fail_at_fifth(done):
        fail_at_fifth.frames += done
        assert sorted(p.name for p in bag.iterdir()) == sorted(old)   # still the old bag, untouched
        if fail_at_fifth.frames == 5:
            raise Broken
    fail_at_fifth.frames = 0
    with pytest.raises(Broken):
        bagio.write_sequence_bag(seq, bag, storage='sqlite3', overwrite=True, progress=fail_at_fifth)
    assert {p.name: p.read_bytes() for p in bag.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag', 'gt.txt', 'rgb', 'thermal']
    bagio.write_sequence_bag(seq, bag, storage='sqlite3', overwrite=True)
    assert len(list(bagio.read_pairs(bag))) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag', 'gt.txt', 'rgb', 'thermal']
    # a folder that only looks like a staging folder (no writer's lock in it) is never removed
    (tmp_path / '.bag.mine.tmp').mkdir()
    bagio.write_sequence_bag(seq, bag, storage='sqlite3', overwrite=True)
    assert (tmp_path / '.bag.mine.tmp').is_dir()


# ------------------------------------------------------------------ datasets and results

def _lasher(root: Path) -> Path:
    for name, start in SEQUENCES.items():
        (root / name / 'visible').mkdir(parents=True)
        (root / name / 'infrared').mkdir(parents=True)
        lines = []
        for k in range(FRAMES):
            x, y = start[0] + 3 * k, start[1] + k
            rgb = np.full((H, W, 3), 30, np.uint8)
            rgb[y:y + 8, x:x + 8] = 220
            thermal = np.full((H, W), 2000, np.uint16)
            thermal[y:y + 8, x:x + 8] = 9000
            cv2.imwrite(str(root / name / 'visible' / f'v{k:05d}.png'), rgb)
            cv2.imwrite(str(root / name / 'infrared' / f'i{k:05d}.png'), thermal)
            lines.append(f'{x},{y},8,8')
        (root / name / 'init.txt').write_text('\n'.join(lines) + '\n')
    return root


def _run_args(root, out):
    return ['run', '--dataset', str(root), '--kind', 'lasher', '--results', str(out), '--config', MICRO_CONFIG,
            '--checkpoint', 'random', '--threads', '1', '--quiet', '--no-report']


@pytest.fixture(scope='module')
def reference_results(tmp_path_factory):
    """Results of an uninterrupted run (the tracker is deterministic on the CPU)."""
    tmp = tmp_path_factory.mktemp('reference')
    root = _lasher(tmp / 'lasher')
    assert eval_cli.main(_run_args(root, tmp / 'results')) == 0
    return {name: results.read_result_boxes(tmp / 'results' / f'{name}.txt') for name in SEQUENCES}


def test_an_unreadable_image_keeps_partial_results_and_a_rerun_resumes(tmp_path, capsys, reference_results):
    root = _lasher(tmp_path / 'lasher')
    image = root / 'bb' / 'visible' / 'v00003.png'
    good = image.read_bytes()
    image.write_bytes(good[:60])                          # a truncated file
    out = tmp_path / 'results'
    assert eval_cli.main(_run_args(root, out)) == 1
    err = capsys.readouterr().err
    assert f'FAILED bb: cannot read image {image} (missing, truncated or not an image)' in err
    assert results.list_result_sequences(out) == ['aa', 'cc'], 'the other sequences ran'
    assert len(results.read_result_boxes(out / 'partial' / 'bb.txt')) == 3, 'frames 0-2 of bb are kept'
    finished = {name: (out / f'{name}.txt').stat().st_mtime_ns for name in ('aa', 'cc')}

    image.write_bytes(good)
    assert eval_cli.main(_run_args(root, out)) == 0
    assert 'tracked 1, skipped (results exist) 2, failed 0' in capsys.readouterr().out
    assert {name: (out / f'{name}.txt').stat().st_mtime_ns for name in ('aa', 'cc')} == finished, 'not rewritten'
    for name, boxes in reference_results.items():
        assert np.array_equal(results.read_result_boxes(out / f'{name}.txt'), boxes), name

    # A truncated JPEG decodes to grey rows without an error in OpenCV: refused by name.
    from ckd_ros.core.datasets import read_rgb_image
    jpeg = tmp_path / 'frame.jpg'
    cv2.imwrite(str(jpeg), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    assert read_rgb_image(jpeg).shape == (60, 80, 3)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    with pytest.raises(OSError, match=r'frame\.jpg: truncated JPEG \(\d+ bytes, no end-of-image marker\)'):
        read_rgb_image(jpeg)


@pytest.mark.parametrize('fsync_call, written', [(3, 'bb.txt'), (4, 'bb_time.txt')])
def test_sigkill_while_writing_results_leaves_no_partial_file_and_the_run_resumes(tmp_path, reference_results,
                                                                                 fsync_call, written):
    """fsync call 1-2: aa's box and time files, 3-4: bb's; the process is killed with the temporary file
    written and flushed but not yet moved into place."""
    root = _lasher(tmp_path / 'lasher')
    out = tmp_path / 'results'
    proc = _spawn([PEERS_DIR / 'fsync_hang.py', fsync_call, 'eval', *_run_args(root, out)])
    try:
        event, _ = _read_events(proc, 'hang')
    finally:
        _kill(proc)
    temporary = Path(event['path'])
    assert temporary.parent == out and temporary.name.startswith(f'.{written}.') and temporary.name.endswith('.tmp')
    assert results.list_result_sequences(out) == ['aa']
    assert not (out / 'bb_time.txt').exists()
    if written == 'bb.txt':
        assert not (out / 'bb.txt').exists(), 'no file appears under its final name before it is complete'
    else:
        assert len(results.read_result_boxes(out / 'bb.txt')) == FRAMES, 'the box file was complete before'

    assert eval_cli.main(_run_args(root, out)) == 0
    assert results.list_result_sequences(out) == ['aa', 'bb', 'cc']
    for name, boxes in reference_results.items():
        assert np.array_equal(results.read_result_boxes(out / f'{name}.txt'), boxes), name
        assert len(results.read_result_times(out / f'{name}_time.txt')) == FRAMES


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_ones_and_training_resumes(tmp_path):
    from ckd_train.checkpoints import load_training_checkpoint
    from ckd_train.trainer import TrainOptions, train
    from test_train_checkpoint import OVERRIDES, tiny_train_config

    config = tiny_train_config()
    spec = tmp_path / 'spec.json'
    spec.write_text(json.dumps({'base': 'ckd_4b_dropmae_ckd_tf_cc_mask.25', 'overrides': OVERRIDES, 'name': config.name,
                                'synthetic': {'seeds': list(config.synthetic.seeds),
                                              'val_seeds': list(config.synthetic.val_seeds),
                                              'length': config.synthetic.length,
                                              'size': list(config.synthetic.size)}}))
    out = tmp_path / 'train'
    proc = _spawn([PEERS_DIR / 'fsync_hang.py', 2, 'train', spec, out, 3])   # hang writing epoch 2
    try:
        event, _ = _read_events(proc, 'hang')
    finally:
        _kill(proc)
    folder = out / 'checkpoints' / 'train' / 'ckd' / config.name
    # the write went to a hidden temporary file next to the checkpoint (ckd_ros.core.atomic)
    assert Path(event['path']).parent == folder and Path(event['path']).name.startswith('.OSTrack_CKD_ep0002.pth.tar.')
    assert sorted(p.name for p in folder.glob('*.pth.tar')) == ['OSTrack_CKD_ep0001.pth.tar']
    first = load_training_checkpoint(folder / 'OSTrack_CKD_ep0001.pth.tar')
    assert first['epoch'] == 1

    result = train(TrainOptions(config=config, output_dir=out, device='cpu', progress=False, epochs=2,
                                resume=folder / 'OSTrack_CKD_ep0001.pth.tar'))
    assert [p.name for p in result.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    resumed = load_training_checkpoint(result.checkpoints[0])
    assert resumed['epoch'] == 2 and [h['epoch'] for h in resumed['settings']['history']] == [1, 2]
