"""ckd-bag: option ranges (stamps that fit a ROS Time, a sane frame rate, at least one frame), `info` on a bag
whose metadata is missing or damaged (read record by record, as the readers do; exit 1), and a dataset
conversion that goes on past a sequence it cannot read."""
import json
import shutil

import cv2
import numpy as np
import pytest
import yaml

from ckd_ros.cli import bag as bag_cli
from ckd_ros.core import bagio

from test_bagio import _sequence


@pytest.mark.parametrize('option, value', [
    ('--start-time', '-1'), ('--start-time', '1e12'), ('--start-time', '2147483648'), ('--start-time', 'nan'),
    ('--start-time', 'abc'), ('--fps', '1e-9'), ('--fps', '0'), ('--fps', '-30'), ('--fps', '2000'),
    ('--fps', 'inf'), ('--max-frames', '0'), ('--max-frames', '-3')])
def test_convert_options_out_of_range_are_argument_errors(tmp_path, capsys, option, value):
    # were accepted: a negative or int32-overflowing header stamp, one frame per 31 years, zero frames
    with pytest.raises(SystemExit) as exc:
        bag_cli.main(['convert', '--rgb', 'r', '--thermal', 't', '--boxes', 'b', '--out', str(tmp_path / 'bag'),
                      option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'argument {option}' in err and value in err
    assert not (tmp_path / 'bag').exists()


@pytest.mark.parametrize('option, value', [('--rate', '0'), ('--rate', '-1'), ('--rate', 'nan'), ('--timeout', '0'),
                                           ('--timeout', '-5'), ('--timeout', 'inf')])
def test_play_options_out_of_range_are_argument_errors(tmp_path, capsys, option, value):
    # were accepted: a rate of 0 never sent a frame, a timeout of 0 gave up on every pair
    with pytest.raises(SystemExit) as exc:
        bag_cli.main(['play', str(tmp_path / 'bag'), '--out', str(tmp_path / 'out'), option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'argument {option}' in err and value in err
    assert not (tmp_path / 'out').exists()


def test_the_last_stamp_must_fit_a_ros_time_too(tmp_path, capsys):
    seq = _sequence(tmp_path)
    with pytest.raises(ValueError, match=r'5 frames at 0\.1 fps from 2\.14748e\+09 s end at 2147483687 s, past the '
                                         r'last ROS time'):
        bagio.write_sequence_bag(seq, tmp_path / 'bag', fps=0.1, start_ns=(2**31 - 1) * 10**9)
    assert not (tmp_path / 'bag').exists()
    assert bag_cli.main(['convert', '--rgb', str(tmp_path / 'rgb'), '--thermal', str(tmp_path / 'th'), '--boxes',
                         str(tmp_path / 'gt.txt'), '--out', str(tmp_path / 'bag'), '--quiet', '--fps', '0.1',
                         '--start-time', str(2**31 - 2)]) == 2
    assert 'past the last ROS time' in capsys.readouterr().err
    assert bag_cli.main(['convert', '--rgb', str(tmp_path / 'rgb'), '--thermal', str(tmp_path / 'th'), '--boxes',
                         str(tmp_path / 'gt.txt'), '--out', str(tmp_path / 'bag'), '--quiet', '--fps', '1000',
                         '--start-time', str(2**31 - 2), '--max-frames', '1']) == 0
    assert [p.stamp_ns for p in bagio.read_pairs(tmp_path / 'bag')] == [(2**31 - 2) * 10**9]


@pytest.fixture
def converted(tmp_path):
    seq = _sequence(tmp_path)
    bag = tmp_path / 'bag'
    bagio.write_sequence_bag(seq, bag, fps=25.0)
    return bag


def _damage_metadata(bag, mutate):
    path = bag / 'metadata.yaml'
    document = yaml.safe_load(path.read_text())
    mutate(document['rosbag2_bagfile_information'])
    path.write_text(yaml.safe_dump(document))


def _info(capsys, *args):
    status = bag_cli.main(['info', *map(str, args)])
    return status, capsys.readouterr()


def test_info_reads_a_bag_without_metadata_record_by_record(converted, capsys):
    (converted / 'metadata.yaml').unlink()
    status, out = _info(capsys, converted)
    # was: exit 2, "cannot open bag (FileNotFoundError: Expected metadata file ... does not exist.)", nothing shown
    assert status == 1, out.err
    assert 'no usable metadata: read record by record' in out.out and 'messages:  15' in out.out
    assert '/thermal/image  sensor_msgs/msg/Image              5 msgs    25.00 Hz  [mono16 8x6]' in out.out
    assert 'ERROR: no metadata.yaml' in out.out and 'read record by record instead (15 messages' in out.out
    status, out = _info(capsys, converted, '--json')
    info = json.loads(out.out)
    assert status == 1 and info['salvaged'] and info['message_count'] == 15 and info['duration_s'] == 0.16
    assert {t['name']: t['count'] for t in info['topics']} == {'/ground_truth': 5, '/rgb/image': 5, '/thermal/image': 5}
    # the readers (ckd-eval run --bags) read the same pairs
    assert len(list(bagio.read_pairs(converted))) == 5


@pytest.mark.parametrize('field, mutate, message', [
    ('starting_time', lambda i: i['starting_time'].__setitem__('nanoseconds_since_epoch', 'abc'),
     "starting_time.nanoseconds_since_epoch is 'abc', not a whole number of nanoseconds"),
    ('message_count', lambda i: i.__setitem__('message_count', 'abc'),      # was: a TypeError traceback
     "message_count is 'abc', not a whole number >= 0"),
    ('topic count', lambda i: i['topics_with_message_count'][0].__setitem__('message_count', '5x'),
     "topics_with_message_count[0].message_count is '5x'"),
    ('duration', lambda i: i['duration'].__setitem__('nanoseconds', -5),
     'duration.nanoseconds is -5, not a whole number of nanoseconds >= 0'),
])
def test_info_on_text_in_the_metadata_numbers_is_a_damaged_bag_not_a_traceback(converted, capsys, field, mutate,
                                                                                  message):
    _damage_metadata(converted, mutate)
    status, out = _info(capsys, converted)
    assert status == 1, out.err
    assert f'ERROR: damaged metadata.yaml ({message}' in out.out and 'messages:  15' in out.out
    assert 'source:    plain sequence seq' in out.out      # what metadata.yaml says that can be read
    assert len(list(bagio.read_pairs(converted))) == 5


def test_unreadable_metadata_yaml_and_sqlite3_bags(converted, tmp_path, capsys):
    (converted / 'metadata.yaml').write_text(': : [ not yaml')
    status, out = _info(capsys, converted)
    assert status == 1 and 'damaged metadata.yaml (not readable as YAML' in out.out
    # sqlite3 cannot be read without its metadata: an error (exit 2) naming the field, not rosbags' TypeError
    seq_dir = tmp_path / 'sq'
    seq_dir.mkdir()
    sq = tmp_path / 'sqlite_bag'
    bagio.write_sequence_bag(_sequence(seq_dir), sq, storage='sqlite3')
    _damage_metadata(sq, lambda i: i['starting_time'].__setitem__('nanoseconds_since_epoch', 'abc'))
    status, out = _info(capsys, sq)
    assert status == 2
    assert "cannot open bag: damaged metadata.yaml (starting_time.nanoseconds_since_epoch is 'abc'" in out.err
    with pytest.raises(bagio.BagReadError, match='damaged metadata.yaml'):
        list(bagio.read_pairs(sq))


def test_convert_goes_on_past_a_sequence_it_cannot_read(tmp_path, capsys):
    root = tmp_path / 'lasher'
    for name in ('aa', 'bb', 'cc'):
        for sub in ('visible', 'infrared'):
            (root / name / sub).mkdir(parents=True)
            for k in range(3):
                cv2.imwrite(str(root / name / sub / f'{k:04d}.png'), np.full((8, 8, 3), 40 * k, np.uint8))
        (root / name / 'init.txt').write_text('1,1,3,3\n' * 3)
    (root / 'bb' / 'init.txt').unlink()                     # bb: no annotation
    (root / 'cc' / 'infrared' / '0001.png').write_bytes(b'not a png')
    out = tmp_path / 'bags'
    # was: a FileNotFoundError for bb stopped the conversion (cc never converted); an OSError was a traceback
    assert bag_cli.main(['convert', '--dataset', str(root), '--kind', 'lasher', '--out', str(out), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'FAILED bb: lasher sequence' in err and 'no init.txt' in err
    assert 'FAILED cc: cannot read image' in err and '2 of 3 sequence(s) failed (bb, cc)' in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ['aa']
    shutil.copy(root / 'aa' / 'init.txt', root / 'bb' / 'init.txt')
    shutil.copy(root / 'aa' / 'infrared' / '0001.png', root / 'cc' / 'infrared' / '0001.png')
    assert bag_cli.main(['convert', '--dataset', str(root), '--kind', 'lasher', '--out', str(out), '--quiet']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['aa', 'bb', 'cc']
