"""ckd_ros.core.atomic.atomic_write: the one way results, reports, plots and checkpoints reach disk."""
import os

import pytest

from ckd_ros.core.atomic import ExistingFileError, atomic_write
from ckd_ros.core.results import ResultExistsError, atomic_write_text


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith('.tmp'))


def test_replaces_by_default_and_creates_folders(tmp_path):
    path = tmp_path / 'a' / 'b' / 'file.bin'
    atomic_write(path, lambda handle: handle.write(b'one'))
    atomic_write(path, lambda handle: handle.write(b'two'))
    assert path.read_bytes() == b'two' and _leftovers(path.parent) == []


def test_refuses_an_existing_file_without_overwrite_and_leaves_it_alone(tmp_path):
    path = tmp_path / 'result.txt'
    path.write_bytes(b'mine')
    with pytest.raises(ExistingFileError, match='overwrite'):
        atomic_write(path, lambda handle: handle.write(b'new'), overwrite=False)
    with pytest.raises(ResultExistsError):   # the results module's own error type, same rule
        atomic_write_text(path, 'new')
    assert path.read_bytes() == b'mine' and _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'checkpoint.pth.tar'
    path.write_bytes(b'old complete file')

    def half_then_fail(handle):
        handle.write(b'half of the new')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b'old complete file' and _leftovers(tmp_path) == []


def test_text_is_utf8(tmp_path):
    path = atomic_write_text(tmp_path / 'r.txt', 'x\u00b5y\n')
    assert path.read_bytes() == 'x\u00b5y\n'.encode('utf-8')


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_the_file_mode_follows_the_umask_like_open(tmp_path, umask):
    """mkstemp makes 0600 files: results shared with a group or other users were unreadable to them."""
    previous = os.umask(umask)
    try:
        made = atomic_write(tmp_path / 'atomic.txt', lambda handle: handle.write(b'x'))
        with open(tmp_path / 'plain.txt', 'w'):
            pass
    finally:
        os.umask(previous)
    assert os.stat(made).st_mode & 0o777 == os.stat(tmp_path / 'plain.txt').st_mode & 0o777 == 0o666 & ~umask
