"""Result files in the official layout, written atomically.

Layout (``docs/spec/CKD.md`` sec. 3, ``lib/test/evaluation/running.py``): one folder per run and dataset holding
``<seq>.txt`` (one ``x y w h`` line per frame including frame 0, tab-separated, boxes cast to int
with truncation like the official ``astype(int)``) and ``<seq>_time.txt`` (per-frame seconds, ``%f``).
The toolkit takes the sequence list from the ``*_time.txt`` files, so the time file is written last:
a sequence counts as finished only when both exist.

Every file is written through :func:`ckd_ros.core.atomic.atomic_write` (a temporary file in the same
folder, moved into place), so a crash never leaves a partial file under the final name, and an
existing result is never replaced unless asked.

``ckd-eval run`` also keeps a run manifest, ``ckd_run.json`` (:data:`RUN_MANIFEST`): the settings the
folder's results were made with, so that a later run with other settings is refused instead of taking
the old results for its own.

Results as trackers publish them (``<tracker>_<seq>.txt``, no time files; the toolkit's ``prefix=``)
are found by :func:`find_tracker_prefix` and read with ``prefix=``.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Collection, Iterable, Mapping

import numpy as np

from ckd_ros.core.atomic import _current_umask, atomic_write
from ckd_ros.core.datasets import AnnotationError, parse_box_text

TIME_SUFFIX = '_time.txt'
RUN_MANIFEST = 'ckd_run.json'


class ResultExistsError(FileExistsError):
    """A result file exists and overwriting was not requested."""


class ResultFileError(OSError):
    """A result file that is not a regular file (a symbolic link, a FIFO, a device): refused unread."""


def read_result_file(path: str | os.PathLike) -> bytes:
    """The bytes of a result file, which must be a regular file.

    A symbolic link is refused without being followed (``O_NOFOLLOW``): the readers quote a bad line in their
    errors, and a ``<seq>.txt`` linked to another file (``/etc/shadow``, a key) would have them print its first
    line. A FIFO or device is refused too (it would block, or never end). Raises :class:`ResultFileError`.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise ResultFileError(f'{path} is a symbolic link; results must be regular files (copy the file '
                                  'into the result folder instead)') from None
        raise
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ResultFileError(f'{path} is not a regular file (a FIFO, device or socket); results must be '
                                  'regular files')
        return handle.read()


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file in the same folder
    (:func:`ckd_ros.core.atomic.atomic_write`).

    Without ``overwrite`` an existing ``path`` raises :class:`ResultExistsError` and is left untouched.
    """
    return atomic_write(path, lambda handle: handle.write(text.encode('utf-8')), overwrite,
                        exists_error=ResultExistsError)


def format_boxes(boxes, integer: bool = True) -> str:
    """Tab-separated ``x y w h`` lines; ``integer`` truncates like the official ``astype(int)``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f'boxes must be an (N, 4) array of x, y, w, h, got shape {boxes.shape}')
    if integer:
        if not np.isfinite(boxes).all():
            bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
            raise ValueError(f'box {bad} is not finite ({boxes[bad].tolist()}); integer result files cannot '
                             'hold NaN/inf (write with integer=False to keep them)')
        return ''.join('\t'.join(str(int(v)) for v in row) + '\n' for row in boxes.astype(np.int64))
    return ''.join('\t'.join(f'{v:.4f}' if np.isfinite(v) else 'nan' for v in row) + '\n' for row in boxes)


def result_paths(result_dir: str | os.PathLike, sequence: str) -> tuple[Path, Path]:
    result_dir = Path(result_dir)
    return result_dir / f'{sequence}.txt', result_dir / f'{sequence}{TIME_SUFFIX}'


def write_sequence_result(result_dir: str | os.PathLike, sequence: str, boxes, times=None,
                          overwrite: bool = False, integer: bool = True) -> tuple[Path, Path]:
    """Write ``<seq>.txt`` and then ``<seq>_time.txt`` (``times``: per-frame seconds; zeros when
    not measured). Refuses to replace either file unless ``overwrite``."""
    box_path, time_path = result_paths(result_dir, sequence)
    boxes = np.asarray(boxes, dtype=np.float64)
    if times is None:
        times = np.zeros(len(boxes))
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if len(times) != len(boxes):
        raise ValueError(f'sequence {sequence!r}: {len(times)} times for {len(boxes)} boxes')
    if not overwrite:
        for p in (box_path, time_path):
            if p.exists():
                raise ResultExistsError(f'{p} exists; pass overwrite=True (--overwrite) to replace it')
    box_text = format_boxes(boxes, integer)
    time_text = ''.join(f'{t:f}\n' for t in times)
    atomic_write_text(box_path, box_text, overwrite)
    atomic_write_text(time_path, time_text, overwrite)
    return box_path, time_path


def read_result_boxes(path: str | os.PathLike) -> np.ndarray:
    """``(N, 4)`` float64 boxes of a result file (delimiters ',', ' ' or tab); a symbolic link or other
    non-regular file raises :class:`ResultFileError` unread (:func:`read_result_file`)."""
    try:
        data = read_result_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'box file not found: {path}') from None
    return parse_box_text(data, path)


def read_result_times(path: str | os.PathLike) -> np.ndarray:
    """Per-frame seconds of a ``<seq>_time.txt`` (regular files only, as :func:`read_result_boxes`)."""
    path = Path(path)
    try:
        text = read_result_file(path).decode('utf-8')
    except UnicodeDecodeError as exc:
        raise AnnotationError(f'{path}: not a text file ({exc})') from None
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(float(line.strip()))
        except ValueError:
            raise AnnotationError(f'{path}:{lineno}: expected one number (seconds), got {line.strip()!r}') from None
    return np.array(values)


def is_finished(result_dir: str | os.PathLike, sequence: str) -> bool:
    """Both files of a sequence exist (the time file is written last)."""
    return all(p.is_file() for p in result_paths(result_dir, sequence))


def list_result_sequences(result_dir: str | os.PathLike) -> list[str]:
    """Finished sequences of a result folder (those with ``<seq>_time.txt`` and ``<seq>.txt``), sorted."""
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise FileNotFoundError(f'result folder not found: {result_dir}')
    names = (p.name[:-len(TIME_SUFFIX)] for p in result_dir.iterdir()
             if p.name.endswith(TIME_SUFFIX) and not p.name.startswith('.'))
    return sorted(n for n in names if (result_dir / f'{n}.txt').is_file())


def load_results(result_dir: str | os.PathLike, sequences: Iterable[str] | None = None,
                 prefix: str = '') -> dict[str, np.ndarray]:
    """Sequence -> boxes for a result folder (all finished sequences, or the given ones);
    ``prefix``: files ``<prefix><seq>.txt`` (see :func:`find_tracker_prefix`)."""
    result_dir = Path(result_dir)
    names = list(sequences) if sequences is not None else list_result_sequences(result_dir)
    out = {}
    for name in names:
        path = result_dir / f'{prefix}{name}.txt'
        if not path.is_file():
            raise FileNotFoundError(f'no result file for sequence {name!r}: {path}')
        out[name] = read_result_boxes(path)
    return out


def load_times(result_dir: str | os.PathLike, sequences: Iterable[str], prefix: str = '') -> dict[str, np.ndarray]:
    result_dir = Path(result_dir)
    return {n: read_result_times(result_dir / f'{prefix}{n}{TIME_SUFFIX}') for n in sequences
            if (result_dir / f'{prefix}{n}{TIME_SUFFIX}').is_file()}


# --------------------------------------------------------------------------------------------
# Results as published by other trackers

def box_file_stems(result_dir: str | os.PathLike) -> list[str]:
    """Names (without ``.txt``) of the box files of a folder: every ``*.txt`` but time files, hidden
    files and the run manifest, sorted."""
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise FileNotFoundError(f'result folder not found: {result_dir}')
    return sorted(p.name[:-4] for p in result_dir.iterdir()
                  if p.name.endswith('.txt') and not p.name.endswith(TIME_SUFFIX) and not p.name.startswith('.')
                  and p.is_file())


def find_tracker_prefix(result_dir: str | os.PathLike, known: Collection[str],
                        prefix: str | None = None) -> tuple[str, list[str]]:
    """The file-name prefix of a folder of ``<prefix><seq>.txt`` files and the sequences it has results for.

    ``known``: the sequence names the ground truth has. Without ``prefix`` every prefix that all box
    files share and that ends in ``_`` (or none) is tried, and the one naming the most ``known``
    sequences wins; tracker and sequence names may both contain ``_`` (``CKD_v2_ab_bikeoccluded``), so
    a tie is refused. A given ``prefix`` is taken as is, or with ``_`` added (``--tracker-prefix CKD``
    for ``CKD_<seq>.txt``). The names returned are those of every file with the prefix (unknown ones
    included, for the caller to report).
    """
    stems = box_file_stems(result_dir)
    known = set(known)
    if prefix is not None:
        candidates = [prefix] + ([prefix + '_'] if not prefix.endswith('_') else [])
    else:
        shared = os.path.commonprefix(stems) if stems else ''
        candidates = [''] + [shared[:i + 1] for i, c in enumerate(shared) if c == '_']

    def named(candidate):
        return [s[len(candidate):] for s in stems if s.startswith(candidate) and len(s) > len(candidate)]

    hits = {c: sum(n in known for n in named(c)) for c in candidates}
    best = max(hits.values(), default=0)
    if best == 0:
        shown = f'{prefix}<seq>.txt' if prefix is not None else '<seq>.txt or <tracker>_<seq>.txt'
        raise FileNotFoundError(f'no result files {shown} for sequences of the ground truth in {result_dir}')
    winners = [c for c, h in hits.items() if h == best]
    if len(winners) > 1:
        raise ValueError(f'{result_dir}: the result files can be read with the prefixes '
                         f'{", ".join(repr(w) for w in winners)} alike; choose one with --tracker-prefix')
    return winners[0], named(winners[0])


# --------------------------------------------------------------------------------------------
# Run manifest

def read_run_manifest(result_dir: str | os.PathLike) -> dict | None:
    """The run manifest of a result folder, or None when it has none. An unreadable one raises
    ValueError (it is never taken for "no manifest")."""
    path = Path(result_dir) / RUN_MANIFEST
    try:
        text = path.read_text(encoding='utf-8')
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f'{path}: not a run manifest ({exc})') from None
    if not isinstance(doc, dict) or not isinstance(doc.get('settings'), dict):
        raise ValueError(f'{path}: not a run manifest (no "settings")')
    return doc


def write_run_manifest(result_dir: str | os.PathLike, manifest: Mapping) -> Path:
    """Write ``ckd_run.json`` atomically (temporary file in the folder, ``fdatasync``, rename).

    Not through :func:`atomic_write`: that syncs with ``os.fsync``, and the crash tests count those
    calls to stop a run in the middle of a given result file; ``fdatasync`` gets the content on disk
    as well before the rename makes it visible.
    """
    path = Path(result_dir) / RUN_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(manifest, indent=1, sort_keys=True) + '\n').encode('utf-8')
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fdatasync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())   # mkstemp's 0600, as open() would make it
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def write_results(result_dir: str | os.PathLike, results: Mapping[str, np.ndarray],
                  times: Mapping[str, np.ndarray] | None = None, overwrite: bool = False,
                  integer: bool = True) -> list[Path]:
    """Write several sequences; returns the box file paths."""
    written = []
    for name, boxes in results.items():
        written.append(write_sequence_result(result_dir, name, boxes, (times or {}).get(name), overwrite,
                                             integer)[0])
    return written
