"""Result files: official layout, readers for every delimiter, atomic and no-clobber writes."""
import os

import numpy as np
import pytest

from ckd_ros.core import results
from ckd_ros.core.datasets import AnnotationError


def test_official_layout_truncates_like_astype_int(tmp_path):
    boxes = np.array([[10.9, 20.2, 30.5, 40.99], [-1.5, 0.0, 5.0, 6.7]])
    box_path, time_path = results.write_sequence_result(tmp_path, 'seq1', boxes, [0.0123456, 0.5])
    assert box_path.read_text() == '10\t20\t30\t40\n-1\t0\t5\t6\n'
    assert time_path.read_text() == '0.012346\n0.500000\n'
    np.testing.assert_array_equal(results.read_result_boxes(box_path), [[10, 20, 30, 40], [-1, 0, 5, 6]])
    np.testing.assert_allclose(results.read_result_times(time_path), [0.012346, 0.5])
    assert results.list_result_sequences(tmp_path) == ['seq1']


def test_float_files_keep_nan(tmp_path):
    boxes = np.array([[1.25, 2, 3, 4], [np.nan] * 4])
    path, _ = results.write_sequence_result(tmp_path, 's', boxes, integer=False)
    back = results.read_result_boxes(path)
    np.testing.assert_allclose(back[0], [1.25, 2, 3, 4])
    assert np.isnan(back[1]).all()
    with pytest.raises(ValueError, match='box 1 is not finite'):
        results.write_sequence_result(tmp_path, 't', boxes)


@pytest.mark.parametrize('text', ['1,2,3,4\n5,6,7,8\n', '1 2 3 4\n5 6 7 8\n', '1\t2\t3\t4\n5\t6\t7\t8\n\n',
                                  '1, 2, 3, 4\r\n5,\t6, 7, 8\r\n'])
def test_reader_accepts_official_delimiters(tmp_path, text):
    path = tmp_path / 'r.txt'
    path.write_text(text)
    np.testing.assert_array_equal(results.read_result_boxes(path), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_reader_names_file_and_line(tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_text('1 2 3 4\n1 2 x 4\n')
    with pytest.raises(AnnotationError, match=r'bad\.txt:2: .*1 2 x 4'):
        results.read_result_boxes(path)
    path.write_text('1 2 3 4\n1 2 3\n')
    with pytest.raises(AnnotationError, match=r'bad\.txt:2: expected 4 values'):
        results.read_result_boxes(path)
    path.write_text('1 2 3 4\n\n1 2 3 4\n')
    with pytest.raises(AnnotationError, match=r'bad\.txt:2: blank line'):
        results.read_result_boxes(path)


def test_never_overwrites_without_flag(tmp_path):
    results.write_sequence_result(tmp_path, 's', np.ones((2, 4)))
    before = (tmp_path / 's.txt').read_text()
    with pytest.raises(results.ResultExistsError, match='overwrite'):
        results.write_sequence_result(tmp_path, 's', np.zeros((2, 4)))
    assert (tmp_path / 's.txt').read_text() == before
    results.write_sequence_result(tmp_path, 's', np.zeros((3, 4)), overwrite=True)
    assert (tmp_path / 's.txt').read_text() == '0\t0\t0\t0\n' * 3
    assert (tmp_path / 's_time.txt').read_text().count('\n') == 3


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError('disk full (simulated)')

    monkeypatch.setattr(os, 'fsync', failing_fsync)
    with pytest.raises(OSError, match='disk full'):
        results.write_sequence_result(tmp_path, 's', np.ones((1000, 4)))
    assert list(tmp_path.iterdir()) == []   # neither the result nor a temporary file


def test_crash_between_files_leaves_sequence_unfinished(tmp_path, monkeypatch):
    real = results.atomic_write_text

    def fail_on_time_file(path, text, overwrite=False):
        if str(path).endswith(results.TIME_SUFFIX):
            raise KeyboardInterrupt
        return real(path, text, overwrite)

    monkeypatch.setattr(results, 'atomic_write_text', fail_on_time_file)
    with pytest.raises(KeyboardInterrupt):
        results.write_sequence_result(tmp_path, 's', np.ones((2, 4)))
    assert not results.is_finished(tmp_path, 's')
    assert results.list_result_sequences(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.txt']


def test_load_results_and_mismatched_times(tmp_path):
    results.write_results(tmp_path, {'a': np.ones((2, 4)), 'b': np.full((3, 4), 2.0)})
    loaded = results.load_results(tmp_path)
    assert list(loaded) == ['a', 'b'] and loaded['b'].shape == (3, 4)
    assert set(results.load_times(tmp_path, ['a', 'b'])) == {'a', 'b'}
    with pytest.raises(ValueError, match='2 times for 3 boxes'):
        results.write_sequence_result(tmp_path, 'c', np.ones((3, 4)), [0.1, 0.2])
    with pytest.raises(FileNotFoundError, match='no result file'):
        results.load_results(tmp_path, ['zzz'])


def test_tracker_prefix_of_published_results(tmp_path):
    """<tracker>_<seq>.txt: tracker and sequence names may both hold '_' (LasHeR's ab_bikeoccluded)."""
    known = {'ab_bikeoccluded', 'bikeoccluded', '10runone'}
    for stem in ('CKD_v2_ab_bikeoccluded', 'CKD_v2_10runone'):
        (tmp_path / f'{stem}.txt').write_text('1,2,3,4\n')
    assert results.find_tracker_prefix(tmp_path, known) == ('CKD_v2_', ['10runone', 'ab_bikeoccluded'])
    assert results.find_tracker_prefix(tmp_path, known, 'CKD_v2')[0] == 'CKD_v2_'
    with pytest.raises(FileNotFoundError, match='no result files X<seq>.txt'):
        results.find_tracker_prefix(tmp_path, known, 'X')
    # 'T_' and 'T_ab_' both name known sequences for the same files: refused, not guessed
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'T_ab_bikeoccluded.txt').write_text('1,2,3,4\n')
    with pytest.raises(ValueError, match='--tracker-prefix'):
        results.find_tracker_prefix(other, known)
    boxes = results.load_results(tmp_path, ['10runone'], prefix='CKD_v2_')
    np.testing.assert_array_equal(boxes['10runone'], [[1, 2, 3, 4]])


def test_run_manifest_round_trip_and_damage(tmp_path):
    assert results.read_run_manifest(tmp_path) is None
    results.write_run_manifest(tmp_path, {'settings': {'config': 'ckd_tiny'}})
    assert results.read_run_manifest(tmp_path) == {'settings': {'config': 'ckd_tiny'}}
    assert [p.name for p in tmp_path.iterdir()] == ['ckd_run.json']        # no temporary file left
    assert results.list_result_sequences(tmp_path) == [] and results.box_file_stems(tmp_path) == []
    (tmp_path / 'ckd_run.json').write_text('{"settings": ')                  # cut off: never "no manifest"
    with pytest.raises(ValueError, match='not a run manifest'):
        results.read_run_manifest(tmp_path)


def test_a_result_file_that_is_a_symbolic_link_is_refused_unread(tmp_path, capsys):
    from ckd_ros.cli import eval as eval_cli
    secret = tmp_path / 'shadow'
    secret.write_text('root:$6$saltsalt$SECRETHASH:19000:0:99999:7:::\n')
    out = tmp_path / 'run'
    results.write_sequence_result(out, 'aa', [[1, 2, 3, 4], [2, 3, 4, 5]])
    (out / 'bb.txt').symlink_to(secret)
    (out / 'bb_time.txt').write_text('0\n')
    (out / 'cc_time.txt').symlink_to(secret)
    (out / 'cc.txt').write_text('1 2 3 4\n')
    # was: AnnotationError "...bb.txt:1: expected numbers ..., got 'root:$6$saltsalt$SECRETHASH:...'"
    for read, path in ((results.read_result_boxes, out / 'bb.txt'), (results.read_result_times, out / 'cc_time.txt')):
        with pytest.raises(results.ResultFileError, match='is a symbolic link; results must be regular files') as exc:
            read(path)
        assert 'SECRETHASH' not in str(exc.value)
    with pytest.raises(results.ResultFileError, match=r'bb\.txt is a symbolic link'):
        results.load_results(out)
    with pytest.raises(results.ResultFileError, match=r'cc_time\.txt is a symbolic link'):
        results.load_times(out, ['aa', 'cc'])
    np.testing.assert_array_equal(results.load_results(out, ['aa'])['aa'], [[1, 2, 3, 4], [2, 3, 4, 5]])
    # the command line: one line naming the link, nothing of the file it points to
    import cv2
    root = tmp_path / 'plain'
    for name in ('aa', 'bb', 'cc'):
        for sub in ('rgb', 'thermal'):
            (root / name / sub).mkdir(parents=True)
            for k in range(2):
                cv2.imwrite(str(root / name / sub / f'{k}.png'), np.zeros((8, 8, 3), np.uint8))
        (root / name / 'groundtruth.txt').write_text('1 2 3 4\n2 3 4 5\n')
    assert eval_cli.main(['score', '--results', str(out), '--benchmark', 'generic', '--dataset', str(root),
                          '--kind', 'plain', '--report', str(tmp_path / 'report')]) == 2
    err = capsys.readouterr().err
    assert 'SECRETHASH' not in err and 'bb.txt is a symbolic link' in err


def test_a_result_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    import os
    out = tmp_path / 'run'
    out.mkdir()
    os.mkfifo(out / 'aa.txt')
    with pytest.raises(results.ResultFileError, match=r'aa\.txt is not a regular file'):
        results.read_result_boxes(out / 'aa.txt')
