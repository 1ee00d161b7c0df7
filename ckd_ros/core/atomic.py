"""Writing a file so that readers (and a crash) see either the old file or the complete new one.

Results, reports, plots and checkpoints all go through :func:`atomic_write`: the content is written
to a temporary file in the target's folder, flushed to disk, then moved into place in one step.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class ExistingFileError(FileExistsError):
    """The target exists and replacing it was not requested."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], overwrite: bool = True,
                 exists_error: type[FileExistsError] = ExistingFileError) -> Path:
    """Call ``write(handle)`` on a temporary binary file next to ``path``, sync it, move it to ``path``.

    ``overwrite=True`` replaces an existing file (``os.replace``).  ``overwrite=False`` never does: an
    existing ``path`` raises ``exists_error`` and stays untouched (the final move is ``os.link``, which
    refuses an existing target atomically; on file systems without hard links, check then replace).
    A failure, including in ``write``, leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refusal = f'{path} exists; pass overwrite=True (--overwrite) to replace it'
    if not overwrite and path.exists():
        raise exists_error(refusal)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask)
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, 'wb') as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                raise exists_error(refusal) from None
            except OSError:
                if path.exists():
                    raise exists_error(refusal) from None
                os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def _current_umask() -> int:
    try:   # Linux: read it without changing it (os.umask is process-wide: other threads create files)
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)   # elsewhere, reading means setting: restored at once
    os.umask(mask)
    return mask
