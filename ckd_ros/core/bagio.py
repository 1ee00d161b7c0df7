"""rosbag2 reading and writing with the pure-Python ``rosbags`` library (no ROS install needed).

Bags written here (``write_sequence_bag`` / ``convert_dataset``):

* storage MCAP (default) or sqlite3, metadata version 9 with a ``type_description_hash`` (RIHS01) per
  topic, as ``rosbags`` writes it (the hashes equal the ones rosidl generates for the same types);
* ``sensor_msgs/msg/Image`` RGB frames (``rgb8``, frame id ``camera_rgb``) and thermal frames
  (``mono8``; ``mono16`` when the source file is 16-bit; ``rgb8`` only for a colour thermal file
  whose channels differ; frame id ``camera_thermal``), both with ``header.stamp`` = the frame time
  ``start + index / fps`` and the same stamp for the two images of a pair;
* ground truth as ``ckd_ros/msg/TrackedTarget`` (the package's own output type, registered from
  ``msg/TrackedTarget.msg``, so outputs and ground truth compare field by field): ``state`` is
  ``STATE_TRACKING`` for a valid box and ``STATE_LOST`` for an invalid or missing one (fields kept as
  annotated, NaN for "not annotated"), ``score`` 1 / NaN. Per-modality ground truth (RGBT234, GTOT)
  goes to ``<ground_truth>/rgb`` and ``<ground_truth>/thermal``.

Readers decode images with :func:`ckd_ros.core.image.decode_image_buffer` and pair RGB and thermal
frames by header stamp (exactly, or with :class:`ckd_ros.core.pairing.ApproximateTimePairer` when a
slop is given). A corrupt or truncated bag raises :class:`BagReadError` naming the file and the
position (messages read, last time stamp); everything yielded before stays valid.
"""
from __future__ import annotations

import math
import os
import tempfile
from glob import escape as glob_escape
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence as SequenceType

import numpy as np

from ckd_ros.core.datasets import Dataset, Sequence, valid_box_mask
from ckd_ros.core.image import ImageConversionError, decode_image_buffer, encode_image_buffer
from ckd_ros.core.pairing import ApproximateTimePairer

IMAGE_TYPE = 'sensor_msgs/msg/Image'
TARGET_TYPE = 'ckd_ros/msg/TrackedTarget'
STATUS_TYPE = 'ckd_ros/msg/TrackerStatus'
RGB_FRAME_ID = 'camera_rgb'
THERMAL_FRAME_ID = 'camera_thermal'
STORAGES = ('mcap', 'sqlite3')

# TrackedTarget.STATE_* (msg/TrackedTarget.msg)
STATE_IDLE, STATE_TRACKING, STATE_LOST = 0, 1, 2


@dataclass(frozen=True)
class BagTopics:
    """Topic names of a converted bag (absolute: a bag records resolved names)."""

    rgb: str = '/rgb/image'
    thermal: str = '/thermal/image'
    ground_truth: str = '/ground_truth'

    @property
    def ground_truth_rgb(self) -> str:
        return self.ground_truth + '/rgb'

    @property
    def ground_truth_thermal(self) -> str:
        return self.ground_truth + '/thermal'


DEFAULT_TOPICS = BagTopics()


class BagReadError(RuntimeError):
    """A bag cannot be read (missing, corrupt or truncated); ``position`` says how far reading got."""

    def __init__(self, path, message: str, messages_read: int = 0, last_stamp_ns: int | None = None):
        position = f'after {messages_read} messages'
        if last_stamp_ns is not None:
            position += f' (last log time {last_stamp_ns} ns)'
        super().__init__(f'{path}: {message} [{position}]')
        self.path = Path(path)
        self.messages_read = messages_read
        self.last_stamp_ns = last_stamp_ns


class BagLimitError(BagReadError):
    """A bag refused before reading: its compressed data would decompress to more than the limits allow
    (:data:`MAX_DECOMPRESSED_BYTES`, :data:`MAX_LIVE_CHUNK_BYTES`); never read past, not even in part."""


# --------------------------------------------------------------------------------------------
# Types

def interface_definition(name: str) -> str:
    """Text of ``msg/<name>.msg`` of this package: the source tree's ``msg/`` or an installed
    ``share/ckd_ros/msg`` found on ``AMENT_PREFIX_PATH``."""
    import ckd_ros
    candidates = [Path(ckd_ros.__file__).resolve().parent.parent / 'msg' / f'{name}.msg']
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidates.append(Path(prefix) / 'share' / 'ckd_ros' / 'msg' / f'{name}.msg')
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f'message definition {name}.msg not found (looked in '
                            f'{", ".join(str(p.parent) for p in candidates)})')


def make_typestore():
    """The ROS 2 Kilted type store plus ``ckd_ros/msg/TrackedTarget`` and ``TrackerStatus``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for name, typename in (('TrackedTarget', TARGET_TYPE), ('TrackerStatus', STATUS_TYPE)):
        types.update(get_types_from_msg(interface_definition(name), typename))
    store.register(types)
    return store


def _stamp(store, stamp_ns: int):
    Time = store.types['builtin_interfaces/msg/Time']
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def _header(store, stamp_ns: int, frame_id: str):
    return store.types['std_msgs/msg/Header'](stamp=_stamp(store, stamp_ns), frame_id=frame_id)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def thermal_encoding(thermal: np.ndarray) -> tuple[np.ndarray, str]:
    """Pick the thermal message encoding: ``mono16`` for 16-bit, ``mono8`` for 8-bit grey (a 3-channel
    file with equal channels included), ``rgb8`` for a colour thermal image."""
    thermal = np.asarray(thermal)
    if thermal.ndim == 2:
        if thermal.dtype == np.uint16:
            return thermal, 'mono16'
        if thermal.dtype == np.uint8:
            return thermal, 'mono8'
    elif thermal.ndim == 3 and thermal.shape[2] == 3 and thermal.dtype == np.uint8:
        if (thermal[:, :, 0] == thermal[:, :, 1]).all() and (thermal[:, :, 0] == thermal[:, :, 2]).all():
            return np.ascontiguousarray(thermal[:, :, 0]), 'mono8'
        return thermal, 'rgb8'
    raise ValueError(f'unsupported thermal image: shape {thermal.shape}, dtype {thermal.dtype} '
                     '(expected H x W uint8/uint16 or H x W x 3 uint8)')


def image_message(store, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    enc = encode_image_buffer(array, encoding)
    return store.types[IMAGE_TYPE](
        header=_header(store, stamp_ns, frame_id), height=enc.height, width=enc.width, encoding=enc.encoding,
        is_bigendian=enc.is_bigendian, step=enc.step, data=np.frombuffer(enc.data, dtype=np.uint8))


def target_message(store, stamp_ns: int, box, frame_id: str = RGB_FRAME_ID, score: float | None = None,
                   state: int | None = None, target_id: int = 0, pair_dt: float = 0.0, latency: float = 0.0):
    """A ``TrackedTarget``; without ``state``/``score`` it is a ground-truth record (valid -> TRACKING)."""
    box = np.asarray(box, dtype=np.float64).reshape(4)
    valid = bool(valid_box_mask(box[None])[0])
    if state is None:
        state = STATE_TRACKING if valid else STATE_LOST
    if score is None:
        score = 1.0 if valid else math.nan
    return store.types[TARGET_TYPE](
        header=_header(store, stamp_ns, frame_id), x=float(box[0]), y=float(box[1]), width=float(box[2]),
        height=float(box[3]), score=float(score), state=int(state), target_id=int(target_id),
        pair_dt=float(pair_dt), latency=float(latency))


# --------------------------------------------------------------------------------------------
# Writing

def _storage_plugin(storage: str):
    from rosbags.rosbag2 import StoragePlugin
    key = storage.lower()
    if key not in STORAGES:
        raise ValueError(f'unknown bag storage {storage!r}; one of {", ".join(STORAGES)}')
    return StoragePlugin.MCAP if key == 'mcap' else StoragePlugin.SQLITE3


STAGING_LOCK = '.ckd-bag-writer.lock'
# keys of the bag's metadata custom_data that ckd-bag convert sets: where the sequence came from, so that
# ckd-eval run --bags scores with the dataset's protocol and per-attribute tables
SOURCE_DATASET_KEY = 'ckd_ros.dataset'
SOURCE_SEQUENCE_KEY = 'ckd_ros.sequence'
SOURCE_ATTRIBUTES_KEY = 'ckd_ros.attributes'


class BagWriter:
    """Context manager around ``rosbags.rosbag2.Writer`` that knows this package's topics and types.

    An exception inside the ``with`` block removes the unfinished bag. ``staged=False`` writes in
    place: rosbag2 writes ``metadata.yaml`` only when the bag is closed, so a killed process leaves a
    folder no reader takes for a complete bag, and an MCAP file is still read up to its damage.
    ``staged=None`` (default) stages sqlite3 and writes MCAP in place: ``rosbags`` commits a sqlite3
    database only when it closes, so a killed in-place sqlite3 writer would leave an empty database
    under the bag's name. ``staged=True`` writes into a hidden folder ``.<name>.*.tmp`` next to
    ``path`` and moves the finished bag into place when the block ends (files synced first; with
    ``overwrite`` an existing ``path`` stays until then): a killed process leaves no bag at ``path``,
    and the next staged writer of the same ``path`` removes the staging folders whose writer died
    (their lock is free); never those of a writer still running.
    """

    def __init__(self, path: str | os.PathLike, storage: str = 'mcap', compression: str | None = None,
                 overwrite: bool = False, staged: bool | None = None):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f'{self.path} exists; pass overwrite=True (--overwrite) to replace it')
        if compression not in (None, 'zstd'):
            raise ValueError(f'unknown compression {compression!r}; only zstd')
        self.storage = storage
        self.compression = compression
        self.overwrite = overwrite
        self.staged = str(storage).lower() == 'sqlite3' if staged is None else staged
        self.store = make_typestore()
        self._writer = None
        self._staging: Path | None = None
        self._lock = None
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> 'BagWriter':
        import shutil
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer
        plugin = _storage_plugin(self.storage)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.staged:
            _remove_dead_staging(self.path)
            self._staging = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.', suffix='.tmp',
                                                  dir=self.path.parent))
            self._lock = _hold_lock(self._staging / STAGING_LOCK, wait=True)
            # the bag folder keeps its final name: rosbag2 names its storage file after it
            target = self._staging / self.path.name
        else:
            if self.path.exists():
                shutil.rmtree(self.path)
            target = self.path
        try:
            self._writer = Writer(target, version=9, storage_plugin=plugin)
            if self.compression:
                self._writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
            self._writer.open()
        except BaseException:
            self._remove_staging()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        import shutil
        try:
            self._writer.close()
            if exc_type is None and self._staging is not None:
                self._publish(self._staging / self.path.name)
        finally:
            if self._staging is not None:
                self._remove_staging()
            elif exc_type is not None:
                shutil.rmtree(self.path, ignore_errors=True)
        return False

    def _remove_staging(self) -> None:
        import shutil
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._lock.close()

    def _publish(self, bag: Path) -> None:
        """Move the finished ``bag`` to ``self.path`` (an existing one goes into the staging folder)."""
        for file in bag.iterdir():
            with open(file, 'rb') as handle:
                os.fsync(handle.fileno())
        if os.path.lexists(self.path):
            if not self.overwrite:
                raise FileExistsError(f'{self.path} appeared while the bag was written; '
                                      'pass overwrite=True (--overwrite) to replace it')
            os.rename(self.path, self._staging / '.replaced')
        os.rename(bag, self.path)
        _fsync_folder(self.path.parent)

    def set_custom_data(self, key: str, value: str) -> None:
        """A key/value string pair in the bag's ``metadata.yaml`` (``custom_data``, metadata version >= 6)."""
        self._writer.set_custom_data(key, str(value))

    def _connection(self, topic: str, msgtype: str):
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
            self.counts[topic] = 0
        return self._connections[topic]

    def write(self, topic: str, msgtype: str, stamp_ns: int, message) -> None:
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns),
                           bytes(self.store.serialize_cdr(message, msgtype)))
        self.counts[topic] += 1

    def write_pair(self, stamp_ns: int, rgb: np.ndarray, thermal: np.ndarray,
                   topics: BagTopics = DEFAULT_TOPICS) -> str:
        """Write one RGB + thermal pair with the same stamp; returns the thermal encoding used."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f'RGB frame must be H x W x 3 uint8, got shape {rgb.shape}, dtype {rgb.dtype}')
        thermal, encoding = thermal_encoding(thermal)
        self.write(topics.rgb, IMAGE_TYPE, stamp_ns, image_message(self.store, rgb, 'rgb8', stamp_ns, RGB_FRAME_ID))
        self.write(topics.thermal, IMAGE_TYPE, stamp_ns,
                   image_message(self.store, thermal, encoding, stamp_ns, THERMAL_FRAME_ID))
        return encoding

    def write_raw(self, topic: str, msgtype: str, log_time_ns: int, data: bytes) -> None:
        """Write an already CDR-serialised message (e.g. ``rclpy.serialization.serialize_message``)."""
        self._writer.write(self._connection(topic, msgtype), int(log_time_ns), bytes(data))
        self.counts[topic] += 1

    def write_target(self, topic: str, stamp_ns: int, box, log_time_ns: int | None = None, **fields) -> None:
        """A ``TrackedTarget`` with header stamp ``stamp_ns`` (logged at ``log_time_ns``, default the stamp)."""
        self.write(topic, TARGET_TYPE, stamp_ns if log_time_ns is None else log_time_ns,
                   target_message(self.store, stamp_ns, box, **fields))


def _hold_lock(path: Path, wait: bool):
    """An open file holding an exclusive ``flock`` on ``path`` (released when the process dies), or
    None when ``wait`` is false and another process holds it."""
    import fcntl
    handle = open(path, 'a')
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _remove_dead_staging(path: Path) -> None:
    """Remove the staging folders ``.<name>.*.tmp`` of ``path`` whose writer died (lock free)."""
    import shutil
    prefix = f'.{path.name}.'
    for folder in path.parent.glob(f'{glob_escape(prefix)}*.tmp'):
        # mkdtemp's random part has no dot: '.a.b.x1y2.tmp' belongs to the bag 'a.b', not 'a'
        if '.' in folder.name[len(prefix):-len('.tmp')]:
            continue
        if not (folder.is_dir() and (folder / STAGING_LOCK).is_file()):
            continue  # not a staging folder of this writer: leave it alone
        lock = _hold_lock(folder / STAGING_LOCK, wait=False)
        if lock is not None:
            with lock:
                shutil.rmtree(folder, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# builtin_interfaces/Time: int32 sec (and no negative time in ROS): the last stamp a bag may carry
MAX_STAMP_NS = (2 ** 31 - 1) * 1_000_000_000 + 999_999_999


def frame_stamps(count: int, fps: float, start_ns: int = 0) -> np.ndarray:
    """``start + index / fps`` in ns for ``count`` frames; every stamp must fit a ROS Time (0 to 2**31 - 1 s)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f'frame rate must be a positive number of frames per second, got {fps}')
    if not 0 <= start_ns <= MAX_STAMP_NS:
        raise ValueError(f'start time {start_ns / 1e9:g} s is not a ROS time (0 to 2**31 - 1 s)')
    last_ns = start_ns + (count - 1) * 1e9 / fps if count else start_ns
    if last_ns > MAX_STAMP_NS:
        raise ValueError(f'{count} frames at {fps:g} fps from {start_ns / 1e9:g} s end at {last_ns / 1e9:.0f} s, past '
                         'the last ROS time (2**31 - 1 s: builtin_interfaces/Time.sec is an int32); give an earlier '
                         'start time or a higher frame rate')
    return start_ns + np.round(np.arange(count) * (1e9 / fps)).astype(np.int64)


@dataclass
class ConversionSummary:
    path: Path
    frames: int
    thermal_encoding: str
    counts: dict[str, int]


def write_sequence_bag(sequence: Sequence, path: str | os.PathLike, fps: float = 30.0, storage: str = 'mcap',
                       start_ns: int = 0, topics: BagTopics = DEFAULT_TOPICS, compression: str | None = None,
                       overwrite: bool = False, max_frames: int | None = None,
                       progress: Callable[[int], None] | None = None) -> ConversionSummary:
    """Write one sequence as a bag: image pairs and ground truth at ``fps`` from ``start_ns``.

    Staged (see :class:`BagWriter`): ``path`` holds either no bag or the complete one, even if the
    process is killed; a rerun needs no cleanup."""
    count = len(sequence) if max_frames is None else min(len(sequence), int(max_frames))
    stamps = frame_stamps(count, fps, start_ns)
    encodings = set()
    modal = [(topics.ground_truth_rgb, sequence.ground_truth_rgb),
             (topics.ground_truth_thermal, sequence.ground_truth_thermal)]
    with BagWriter(path, storage, compression, overwrite, staged=True) as writer:
        # duck-typed sequences (the demo's synthetic scenes) may have no dataset: nothing recorded
        if getattr(sequence, 'dataset', ''):
            writer.set_custom_data(SOURCE_DATASET_KEY, sequence.dataset)
            writer.set_custom_data(SOURCE_SEQUENCE_KEY, sequence.name)
            writer.set_custom_data(SOURCE_ATTRIBUTES_KEY, ','.join(getattr(sequence, 'attributes', ())))
        for index in range(count):
            stamp = int(stamps[index])
            if index < len(sequence.ground_truth):
                writer.write_target(topics.ground_truth, stamp, sequence.ground_truth[index])
            for topic, boxes in modal:
                if boxes is not None and index < len(boxes):
                    writer.write_target(topic, stamp, boxes[index])
            encodings.add(writer.write_pair(stamp, sequence.rgb(index), sequence.thermal(index), topics))
            if progress is not None:
                progress(1)
    return ConversionSummary(Path(path), count, '/'.join(sorted(encodings)), dict(writer.counts))


def convert_dataset(dataset: Dataset, out_dir: str | os.PathLike, sequences: SequenceType[str] | None = None,
                    **options) -> list[ConversionSummary]:
    """One bag per sequence: ``<out_dir>/<sequence>``. Options as :func:`write_sequence_bag`."""
    out_dir = Path(out_dir)
    names = list(sequences) if sequences is not None else dataset.names
    return [write_sequence_bag(dataset[name], out_dir / name, **options) for name in names]


# --------------------------------------------------------------------------------------------
# Decompression limits
#
# MCAP chunks (and rosbag2's per-message zstd compression) are decompressed whole, in memory, by rosbags
# and by the mcap library: ``zstd.decompress`` ignores the size a chunk declares and inflates whatever the
# data holds (zstd turns 10 MB of zeros into 327 bytes), so a 98 KB bag reached 6.1 GB.  Every such
# decompression here goes through :func:`_decompress_at_most`: a declared size over the cap is refused
# before anything is decompressed, and the output never exceeds the declared size (a chunk that lies
# about its size is an error after ``size + 1`` bytes).  rosbags also keeps every chunk whose time range
# covers the current time decompressed at once, so the chunk index is checked for that total too.

MAX_DECOMPRESSED_BYTES = 256 << 20   # one MCAP chunk or one compressed message, uncompressed
MAX_LIVE_CHUNK_BYTES = 1 << 30       # MCAP chunks whose time ranges overlap (held in memory together)


class DecompressionLimitError(ValueError):
    """Compressed bag data declares or inflates to more than :data:`MAX_DECOMPRESSED_BYTES`."""


def _decompress_at_most(data: bytes, compression: str, size: int | None, what: str = 'an MCAP chunk') -> bytes:
    """``data`` decompressed (``''``, ``'zstd'`` or ``'lz4'``), refusing more than ``size`` bytes (the
    declared size; None: unknown) or :data:`MAX_DECOMPRESSED_BYTES`, without producing them."""
    if compression == '':
        return data         # stored as is: bytes the file really holds, nothing to inflate
    limit = MAX_DECOMPRESSED_BYTES if size is None else size
    if limit > MAX_DECOMPRESSED_BYTES:
        raise DecompressionLimitError(
            f'{what} declares {size} bytes uncompressed, over the cap of {MAX_DECOMPRESSED_BYTES} bytes '
            '(bagio.MAX_DECOMPRESSED_BYTES): refusing to decompress it (a damaged bag or a decompression bomb)')
    if compression == 'zstd':
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd

        def decompressor():
            return zstd.ZstdDecompressor()
    elif compression == 'lz4':
        import lz4.frame

        def decompressor():
            return lz4.frame.LZ4FrameDecompressor()
    else:
        raise ValueError(f'unsupported compression {compression!r}')
    parts, total, rest = [], 0, bytes(data)
    while rest:                                   # one frame after the other (writers make one)
        if compression == 'zstd':
            # a zstd frame usually states its size: refuse an oversized one before decompressing anything
            try:
                stated = zstd.get_frame_info(rest).decompressed_size
            except Exception:    # no readable frame header: the decompressor reports it
                stated = None
            if stated is not None and stated > limit - total:
                raise DecompressionLimitError(
                    f'{what} holds a zstd frame of {stated} bytes uncompressed, more than the '
                    f'{"declared " + str(size) if size is not None else "cap of " + str(limit)} bytes: refusing '
                    'to decompress it (a damaged bag or a decompression bomb)')
        engine = decompressor()
        part = engine.decompress(rest, max_length=limit + 1 - total)
        parts.append(part)
        total += len(part)
        if total > limit:
            declared = f'declares {size} bytes' if size is not None else 'has no declared size'
            raise DecompressionLimitError(
                f'{what} {declared} but decompresses to more than {limit} bytes: refusing to decompress it '
                '(a damaged bag or a decompression bomb)')
        if not engine.eof:
            raise ValueError(f'{what} holds incomplete {compression} data')
        rest = engine.unused_data
    return b''.join(parts)


class _BoundedZstdModule:
    """Stands in for the ``zstd`` module of ``rosbags.rosbag2.reader``: per-message decompression is
    bounded; everything else (``open`` for file compression) is the real module."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def decompress(self, data, *args, **kwargs):
        return _decompress_at_most(data, 'zstd', None, 'a zstd-compressed message')


def _bound_rosbags_decompression() -> None:
    """Route rosbags' MCAP chunk and per-message decompression through :func:`_decompress_at_most`
    (rosbags offers no limit of its own; its tables and module global are replaced once)."""
    from rosbags.rosbag2 import reader, storage_mcap
    table = storage_mcap.DECOMPRESSORS
    if getattr(table.get('zstd'), '_ckd_bounded', False):
        return
    for name in ('zstd', 'lz4'):
        def bounded(data, size, _name=name):
            return _decompress_at_most(data, _name, size)
        bounded._ckd_bounded = True
        table[name] = bounded
    if hasattr(reader, 'zstd') and not isinstance(reader.zstd, _BoundedZstdModule):
        reader.zstd = _BoundedZstdModule(reader.zstd)


def _mcap_chunk_index(file: Path) -> list[tuple[int, int, int, int, bytes]]:
    """``(message_start_time, message_end_time, chunk_start_offset, uncompressed_size, compression)`` of every chunk
    index record in the summary section of an MCAP file, parsed here field by field as rosbags reads them
    (the mcap library's ``get_summary`` would decompress a chunk record found there, without limit).
    Nothing is decompressed; [] without a summary; a damaged summary ends the list (rosbags reports it)."""
    import struct
    entries = []
    size = file.stat().st_size
    with open(file, 'rb') as handle:
        if size < 8 + 37:
            return entries
        handle.seek(size - 37)
        footer = handle.read(37)
        if footer[:9] != b'\x02\x14' + bytes(7):
            return entries
        (position,) = struct.unpack_from('<Q', footer, 9)     # summary_start (0: no summary section)
        if not position or position > size - 37:
            return entries
        handle.seek(position)
        while True:
            head = handle.read(9)
            if len(head) < 9 or head[0] in (0x02, 0x0E):      # footer / summary offsets: end of the index
                break
            (length,) = struct.unpack_from('<Q', head, 1)
            if length > size:
                break
            if head[0] != 0x08:
                handle.seek(length, 1)
                continue
            body = handle.read(length)
            try:
                start, end, offset, _ = struct.unpack_from('<QQQQ', body, 0)
                cursor = 32
                cursor += 4 + struct.unpack_from('<I', body, cursor)[0] + 8   # message index offsets, length
                (name_length,) = struct.unpack_from('<I', body, cursor)
                compression = body[cursor + 4:cursor + 4 + name_length]
                cursor += 4 + name_length
                _, uncompressed = struct.unpack_from('<QQ', body, cursor)
            except struct.error:
                break
            entries.append((start, end, offset, uncompressed, compression))
    return entries


def _check_mcap_chunk_index(path: Path) -> None:
    """Refuse an MCAP bag whose chunk index declares a chunk over :data:`MAX_DECOMPRESSED_BYTES` or chunks
    overlapping in time that together exceed :data:`MAX_LIVE_CHUNK_BYTES` (rosbags would hold them
    decompressed at once).  Reads only the summary section; a file without one is read chunk after chunk
    (bounded one by one)."""
    events = []
    for file in _mcap_files(path):
        seen = set()
        for start, end, offset, uncompressed, compression in _mcap_chunk_index(file):
            if offset in seen:    # rosbags would read (and decompress) that chunk once per entry, all at once
                raise BagLimitError(file, f'its chunk index lists the chunk at byte {offset} more than once: '
                                          'refusing to read it (a damaged bag or a decompression bomb)')
            seen.add(offset)
            # an uncompressed chunk holds its bytes in the file; it still counts in the overlap total below
            if compression and uncompressed > MAX_DECOMPRESSED_BYTES:
                raise BagLimitError(file, f'its chunk at byte {offset} declares {uncompressed} bytes uncompressed, '
                                          f'over the cap of {MAX_DECOMPRESSED_BYTES} bytes '
                                          '(bagio.MAX_DECOMPRESSED_BYTES): refusing to decompress it (a damaged bag '
                                          'or a decompression bomb)')
            events.append((start, 0, uncompressed))
            events.append((end, 1, -uncompressed))
    live = 0
    for time_ns, _, change in sorted(events):     # at equal times chunks open (0) before others close (1)
        live += change
        if live > MAX_LIVE_CHUNK_BYTES:
            raise BagLimitError(path, f'chunks overlapping in time at {time_ns} ns declare {live} bytes uncompressed '
                                     f'together, over the cap of {MAX_LIVE_CHUNK_BYTES} bytes '
                                     '(bagio.MAX_LIVE_CHUNK_BYTES): refusing to read the bag (a damaged bag or a '
                                     'decompression bomb)')


# --------------------------------------------------------------------------------------------
# Reading

def _open_reader(path: Path, store):
    from rosbags.highlevel import AnyReader
    if not path.exists():
        raise BagReadError(path, 'bag not found')
    if path.is_dir() and not is_bag(path):
        # rosbags' own words for these cases ("Expected metadata file ... does not exist") name no bag file
        if any(path.glob('*.db3')):
            raise BagReadError(path, 'a sqlite3 database without metadata.yaml: its recording never finished '
                                     '(rosbags commits sqlite3 only when it closes the bag)')
        raise BagReadError(path, 'not a rosbag2 bag: the folder has no metadata.yaml or .mcap file')
    _bound_rosbags_decompression()
    _check_mcap_chunk_index(path)
    problem = metadata_problem(path)
    if problem is not None:
        # rosbags would fail on it with a bare TypeError, or later on arithmetic with a text field
        raise BagReadError(path, f'cannot open bag: damaged metadata.yaml ({problem})')
    try:
        reader = AnyReader([path], default_typestore=store)
        reader.open()
    except DecompressionLimitError as exc:   # from rosbags' scan of an MCAP file without a chunk index
        raise BagLimitError(path, f'cannot open bag: {exc}') from exc
    except Exception as exc:  # rosbags raises several types for unreadable files
        raise BagReadError(path, f'cannot open bag ({type(exc).__name__}: {exc})') from exc
    return reader


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def metadata_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a bag folder's ``metadata.yaml`` in the fields rosbags computes with (None when it is
    absent or fine): YAML that does not parse, a missing section, text or negative numbers in the times and
    counts, topics without a name or type. Checked before rosbags reads it: rosbags turns these into a bare
    ``TypeError`` (``starting_time: {nanoseconds_since_epoch: "abc"}``) or, for the message count, a traceback
    when the summary is asked for."""
    metadata = Path(path) / 'metadata.yaml'
    if not Path(path).is_dir() or not metadata.is_file():
        return None
    import yaml
    try:
        document = yaml.safe_load(metadata.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return f'not readable as YAML: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
    info = document.get('rosbag2_bagfile_information') if isinstance(document, dict) else None
    if not isinstance(info, dict):
        return 'no rosbag2_bagfile_information mapping'

    def shown(value) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + '...'

    version = info.get('version')
    if isinstance(version, bool) or not isinstance(version, int):
        return f'version is {shown(version)}, not an integer'
    if not isinstance(info.get('storage_identifier'), str):
        return f'storage_identifier is {shown(info.get("storage_identifier"))}, not a name'
    paths = info.get('relative_file_paths')
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return f'relative_file_paths is {shown(paths)}, not a list of file names'
    for section, key, least in (('duration', 'nanoseconds', 0), ('starting_time', 'nanoseconds_since_epoch', None)):
        value = info.get(section)
        value = value.get(key) if isinstance(value, dict) else value
        if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
            return (f'{section}.{key} is {shown(value)}, not a whole number of nanoseconds'
                    + (f' >= {least}' if least is not None else ''))
    if not _is_count(info.get('message_count')):
        return f'message_count is {shown(info.get("message_count"))}, not a whole number >= 0'
    topics = info.get('topics_with_message_count')
    if not isinstance(topics, list):
        return f'topics_with_message_count is {shown(topics)}, not a list'
    for index, topic in enumerate(topics):
        where = f'topics_with_message_count[{index}]'
        meta = topic.get('topic_metadata') if isinstance(topic, dict) else None
        if not isinstance(meta, dict):
            return f'{where} has no topic_metadata mapping'
        for key in ('name', 'type', 'serialization_format'):
            if not isinstance(meta.get(key), str):
                return f'{where}.topic_metadata.{key} is {shown(meta.get(key))}, not a string'
        if not _is_count(topic.get('message_count')):
            return f'{where}.message_count is {shown(topic.get("message_count"))}, not a whole number >= 0'
    files = info.get('files', [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return f'files is {shown(files)}, not a list of mappings'
    return None


def is_bag(folder: str | os.PathLike) -> bool:
    """A rosbag2 folder: ``metadata.yaml`` (written when a recording is closed), or an ``.mcap`` file
    whose recorder crashed before writing it (read up to the damage)."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / 'metadata.yaml').is_file() or any(folder.glob('*.mcap')))


def bag_folders(directory: str | os.PathLike) -> list[Path]:
    """Bags in a folder: itself if it is one, else its sub-folders that are (:func:`is_bag`; hidden
    staging folders of unfinished writers are not)."""
    directory = Path(directory)
    if is_bag(directory):
        return [directory]
    bags = sorted(p for p in directory.iterdir() if not p.name.startswith('.') and is_bag(p)) \
        if directory.is_dir() else []
    if not bags:
        what = 'not found' if not directory.exists() else 'has no rosbag2 folders (with metadata.yaml or an .mcap file)'
        raise FileNotFoundError(f'{directory} {what}')
    return bags


def bag_name(path: str | os.PathLike) -> str:
    """The name of a bag (its folder's name, the sequence it holds), also for ``.`` or ``bags/aa/``."""
    return Path(os.path.abspath(path)).name


def _mcap_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == '.mcap':
        return [path]
    return sorted(path.glob('*.mcap')) if path.is_dir() else []


_MCAP_CHUNK_OPCODE = 0x06
_MCAP_RECORD_HEADER = 9          # opcode (1 byte) + content length (8 bytes)


def _partial_chunk_records(data: bytes) -> tuple[list, int]:
    """The complete records of an uncompressed MCAP chunk cut short (``data`` starts at the chunk's
    opcode), and how many bytes of ``data`` they and the chunk's header take.

    A crashed recorder stops in the middle of a chunk (rosbags' chunks hold about 1 MiB, a small bag only
    one): the records written before the cut are intact. Compressed chunks cannot be read in part.
    """
    import struct
    from io import BytesIO

    from mcap.data_stream import ReadDataStream
    from mcap.records import Channel, Message, Schema

    position = _MCAP_RECORD_HEADER + 8 + 8 + 8 + 4          # start/end time, uncompressed size, crc
    if len(data) < position + 4:
        return [], 0
    (name_length,) = struct.unpack_from('<I', data, position)
    position += 4
    compression = data[position:position + name_length]
    position += name_length + 8                              # records length
    if compression != b'' or len(data) < position:
        return [], 0
    records = []
    while len(data) - position >= _MCAP_RECORD_HEADER:
        opcode = data[position]
        (length,) = struct.unpack_from('<Q', data, position + 1)
        end = position + _MCAP_RECORD_HEADER + length
        if end > len(data):
            break
        stream = ReadDataStream(BytesIO(data[position + _MCAP_RECORD_HEADER:end]))
        if opcode == 0x03:
            records.append(Schema.read(stream))
        elif opcode == 0x04:
            records.append(Channel.read(stream))
        elif opcode == 0x05:
            records.append(Message.read(stream, length))
        position = end
    return records, position


def _chunk_records(chunk) -> list:
    """The schema, channel and message records of an MCAP chunk (``mcap.stream_reader.breakup_chunk``
    with the bounded decompression of :func:`_decompress_at_most`)."""
    from io import BytesIO

    from mcap.data_stream import ReadDataStream
    from mcap.records import Channel, Message, Schema
    data = _decompress_at_most(chunk.data, chunk.compression, chunk.uncompressed_size)
    stream = ReadDataStream(BytesIO(data))
    records = []
    while stream.count < len(data):
        opcode = stream.read1()
        length = stream.read8()
        if opcode == 0x04:
            records.append(Channel.read(stream))
        elif opcode == 0x05:
            records.append(Message.read(stream, length))
        elif opcode == 0x03:
            records.append(Schema.read(stream))
        else:
            stream.read(length)
    return records


def _salvage_mcap(path: Path, wanted: set | None, store, open_error: Exception,
                  topic_types: dict | None = None) -> Iterator[tuple[str, int, object]]:
    """Read an MCAP file record by record (no summary section needed), up to the first damage.

    rosbags needs the file's footer and summary, which a crashed recorder never writes; the records
    before the damage are still valid, so they are yielded (those of a chunk cut short too, when it is
    uncompressed) and the damage is reported with its byte offset. ``topic_types``, when given, receives
    topic -> message type for every channel met (also those without a message).
    """
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader
    files = _mcap_files(path)
    if len(files) != 1:
        raise BagReadError(path, f'cannot open bag ({type(open_error).__name__}: {open_error})') from open_error
    file = files[0]
    size = file.stat().st_size
    schemas, channels = {}, {}
    count, last = 0, None

    def use(record, offset):
        nonlocal count, last
        if isinstance(record, Schema):
            schemas[record.id] = record.name
        elif isinstance(record, Channel):
            channels[record.id] = (record.topic, schemas.get(record.schema_id))
            if topic_types is not None and (wanted is None or record.topic in wanted):
                topic_types.setdefault(record.topic, schemas.get(record.schema_id))
        elif isinstance(record, Message):
            topic, msgtype = channels.get(record.channel_id, (None, None))
            if topic is None or (wanted is not None and topic not in wanted):
                return None
            try:
                message = store.deserialize_cdr(record.data, msgtype)
            except Exception as exc:
                raise BagReadError(file, f'cannot decode a {msgtype} message on {topic} at byte {offset} '
                                   f'({type(exc).__name__}: {exc})', count, last) from exc
            count += 1
            last = record.log_time
            return topic, record.log_time, message
        return None

    def unpacked(stream_records):
        # The mcap library decompresses a chunk without any limit; take chunks whole and unpack them here
        # (bounded by the chunk's declared size and MAX_DECOMPRESSED_BYTES).
        for record in stream_records:
            if isinstance(record, Chunk):
                yield from _chunk_records(record)
            else:
                yield record

    with open(file, 'rb') as handle:
        # no record is longer than the file: a damaged length fails here instead of asking for gigabytes
        records = unpacked(StreamReader(handle, emit_chunks=True, record_size_limit=size).records)
        while True:
            offset = handle.tell()
            try:
                record = next(records)
            except StopIteration:
                break
            except DecompressionLimitError as exc:
                raise BagLimitError(file, f'{exc} (the record at byte {offset} of {size})', count, last) from exc
            except Exception as exc:
                damage = offset
                handle.seek(offset)
                tail = handle.read()
                if tail[:1] == bytes([_MCAP_CHUNK_OPCODE]):
                    partial, used = _partial_chunk_records(tail)
                    for inner in partial:
                        item = use(inner, offset)
                        if item is not None:
                            yield item
                    damage = offset + used
                raise BagReadError(file, f'truncated or corrupt at byte {damage} of {size} '
                                   f'({type(exc).__name__}: {exc}); messages before it were read '
                                   f'(rosbags could not open the bag: {open_error})', count, last) from exc
            item = use(record, offset)
            if item is not None:
                yield item


def iter_messages(path: str | os.PathLike, topics: Iterable[str] | None = None,
                  store=None) -> Iterator[tuple[str, int, object]]:
    """``(topic, log_time_ns, message)`` in log-time order; corrupt data raises :class:`BagReadError`.

    An MCAP bag that rosbags cannot open (no footer/summary: a crashed recording) is read record by
    record up to its damage (then :class:`BagReadError` with the byte offset).
    """
    path = Path(path)
    store = store or make_typestore()
    wanted = set(topics) if topics is not None else None
    if not path.exists():
        raise BagReadError(path, 'bag not found')
    try:
        reader = _open_reader(path, store)
    except BagReadError as exc:
        if isinstance(exc, BagLimitError) or not _mcap_files(path):
            raise
        yield from _salvage_mcap(path, wanted, store, exc.__cause__ or exc)
        return
    count, last = 0, None
    try:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not connections:
            return
        iterator = reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(iterator)
                message = reader.deserialize(raw, connection.msgtype)
            except StopIteration:
                break
            except DecompressionLimitError as exc:
                raise BagLimitError(path, str(exc), count, last) from exc
            except Exception as exc:
                raise BagReadError(path, f'corrupt or truncated data ({type(exc).__name__}: {exc})', count,
                                   last) from exc
            count += 1
            last = timestamp
            yield connection.topic, timestamp, message
    finally:
        try:
            reader.close()
        except Exception:
            pass


def decode_image_message(message) -> np.ndarray:
    return decode_image_buffer(message.height, message.width, message.encoding, message.is_bigendian,
                               message.step, message.data)


def _box(message) -> np.ndarray:
    return np.array([message.x, message.y, message.width, message.height], dtype=np.float64)


@dataclass
class BagPair:
    """One RGB + thermal pair read from a bag (arrays as decoded, native dtype)."""

    index: int
    stamp_ns: int
    rgb: np.ndarray
    thermal: np.ndarray
    rgb_encoding: str
    thermal_encoding: str
    thermal_stamp_ns: int
    ground_truth: np.ndarray | None = None
    ground_truth_rgb: np.ndarray | None = None
    ground_truth_thermal: np.ndarray | None = None


def read_pairs(path: str | os.PathLike, topics: BagTopics = DEFAULT_TOPICS, slop_s: float | None = None,
               queue_size: int = 10) -> Iterator[BagPair]:
    """Paired frames of a bag in time order, with the ground truth stamped like the RGB frame.

    Without ``slop_s`` an RGB and a thermal image pair when their header stamps are equal (bags written
    here); with it, pairing follows message_filters' approximate-time policy.
    """
    path = Path(path)
    store = make_typestore()
    gt_topics = {topics.ground_truth: 'ground_truth', topics.ground_truth_rgb: 'ground_truth_rgb',
                 topics.ground_truth_thermal: 'ground_truth_thermal'}
    pairer = ApproximateTimePairer(queue_size, slop_s) if slop_s else None
    waiting: list[dict[int, object]] = [{}, {}]
    ground_truth: dict[int, dict[str, np.ndarray]] = {}
    index = 0
    seen_images = False

    messages_read = 0

    def emit(rgb_msg, thermal_msg):
        nonlocal index
        stamp = stamp_to_ns(rgb_msg.header.stamp)
        gts = ground_truth.pop(stamp, {})
        images = []
        for topic, msg in ((topics.rgb, rgb_msg), (topics.thermal, thermal_msg)):
            try:
                images.append(decode_image_message(msg))
            except ImageConversionError as exc:
                # a damaged image (e.g. a flipped bit in its size fields): the bag is corrupt from here
                raise BagReadError(path, f'pair {index}: the image on {topic} stamped {stamp_to_ns(msg.header.stamp)} '
                                   f'ns cannot be decoded ({exc})', messages_read, stamp) from exc
        pair = BagPair(index, stamp, images[0], images[1], rgb_msg.encoding, thermal_msg.encoding,
                       stamp_to_ns(thermal_msg.header.stamp), **gts)
        index += 1
        return pair

    # A completed pair is held until a message with a later stamp arrives, so that ground truth
    # logged at the same time after its images is still attached.
    pending: list[tuple[object, object]] = []

    def flush(before_ns: int | None):
        while pending and (before_ns is None or stamp_to_ns(pending[0][0].header.stamp) < before_ns):
            yield emit(*pending.pop(0))

    messages = iter_messages(path, [topics.rgb, topics.thermal, *gt_topics], store)
    while True:
        try:
            topic, _, message = next(messages)
        except StopIteration:
            break
        except BagReadError:
            yield from flush(None)   # pairs completed before the damage are good
            raise
        messages_read += 1
        stamp = stamp_to_ns(message.header.stamp)
        yield from flush(stamp)
        if topic in gt_topics:
            ground_truth.setdefault(stamp, {})[gt_topics[topic]] = _box(message)
            continue
        seen_images = True
        side = 0 if topic == topics.rgb else 1
        if pairer is not None:
            match = pairer.add(side, stamp, message)
            if match is not None:
                pending.append(match.items)
            continue
        other = waiting[1 - side].pop(stamp, None)
        if other is None:
            waiting[side][stamp] = message
            continue
        pending.append((message, other) if side == 0 else (other, message))
    yield from flush(None)
    if not seen_images:
        raise BagReadError(path, f'no messages on {topics.rgb} / {topics.thermal} (see ckd-bag info for its topics)')


def read_ground_truth(path: str | os.PathLike, topic: str = DEFAULT_TOPICS.ground_truth,
                      keep_partial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(stamps_ns, boxes)`` of a ground-truth topic (header stamps), one record per stamp (see
    :func:`read_ground_truth_records`). With ``keep_partial`` a damaged bag gives the records before
    the damage instead of raising."""
    records = read_ground_truth_records(path, topic, keep_partial)
    return records.stamps_ns, records.boxes


@dataclass
class GroundTruthRecords:
    """Ground truth of a bag: one row per frame stamp; ``rgb``/``thermal`` are the per-modality boxes
    (``<topic>/rgb``, ``<topic>/thermal``; None when the bag has none, NaN rows for frames without one)
    and ``log_times_ns`` when each main record was written (``ckd-bag play``: when its pair was sent)."""

    stamps_ns: np.ndarray
    boxes: np.ndarray
    log_times_ns: np.ndarray
    rgb: np.ndarray | None = None
    thermal: np.ndarray | None = None


def read_ground_truth_records(path: str | os.PathLike, topic: str = DEFAULT_TOPICS.ground_truth,
                              keep_partial: bool = False, modalities: bool = False) -> GroundTruthRecords:
    """The ground truth on ``topic`` (and, with ``modalities``, on ``<topic>/rgb`` and
    ``<topic>/thermal``), in stamp order of first appearance.

    A stamp is one frame: a record repeating a stamp (bags from earlier ``ckd-bag play`` versions wrote
    frame 0's ground truth again when they re-sent it for a retried ``~/set_target``) is skipped, so a
    frame is never scored twice. With ``keep_partial`` a damaged bag gives the records before the damage."""
    topics = BagTopics(ground_truth=topic)
    wanted = [topic] + ([topics.ground_truth_rgb, topics.ground_truth_thermal] if modalities else [])
    main: dict[int, tuple[np.ndarray, int]] = {}
    modal: dict[str, dict[int, np.ndarray]] = {t: {} for t in wanted[1:]}
    try:
        for name, log_time, message in iter_messages(path, wanted):
            stamp = stamp_to_ns(message.header.stamp)
            if name == topic:
                main.setdefault(stamp, (_box(message), int(log_time)))
            else:
                modal[name].setdefault(stamp, _box(message))
    except BagReadError:
        if not keep_partial or not main:
            raise
    stamps = np.array(list(main), dtype=np.int64)
    boxes = np.array([b for b, _ in main.values()], dtype=np.float64).reshape(-1, 4)
    log_times = np.array([t for _, t in main.values()], dtype=np.int64)

    def per_frame(found: dict[int, np.ndarray]) -> np.ndarray | None:
        if not found:
            return None
        return np.array([found.get(int(s), np.full(4, np.nan)) for s in stamps], dtype=np.float64).reshape(-1, 4)

    return GroundTruthRecords(stamps, boxes, log_times, *(per_frame(modal[t]) for t in wanted[1:]))


@dataclass
class TargetTrack:
    """``TrackedTarget`` messages of one topic: header stamps, boxes, scores, states, receive times."""

    stamps_ns: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    states: np.ndarray
    latencies: np.ndarray
    log_times_ns: np.ndarray


def read_targets(path: str | os.PathLike, topic: str) -> TargetTrack:
    rows = []
    for _, log_time, m in iter_messages(path, [topic]):
        rows.append((stamp_to_ns(m.header.stamp), m.x, m.y, m.width, m.height, m.score, m.state, m.latency, log_time))
    if not rows:
        raise BagReadError(path, f'no TrackedTarget messages on {topic}')
    arr = np.array(rows, dtype=object)
    return TargetTrack(arr[:, 0].astype(np.int64), arr[:, 1:5].astype(np.float64), arr[:, 5].astype(np.float64),
                       arr[:, 6].astype(np.int64), arr[:, 7].astype(np.float64), arr[:, 8].astype(np.int64))


def boxes_at_stamps(track: TargetTrack, stamps_ns: np.ndarray, init_box=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame boxes for the given frame stamps from a node's outputs (matched by header stamp).

    Frames without an output (pairs the node dropped) take the last box published before them, as a
    consumer of the topic would see it; frames before the first output take ``init_box`` (NaN if
    none). Returns ``(boxes, answered)`` where ``answered`` marks frames with their own output.
    """
    by_stamp = {int(s): i for i, s in enumerate(track.stamps_ns)}
    boxes = np.full((len(stamps_ns), 4), np.nan)
    answered = np.zeros(len(stamps_ns), dtype=bool)
    last = np.asarray(init_box, dtype=np.float64) if init_box is not None else np.full(4, np.nan)
    for k, stamp in enumerate(stamps_ns):
        i = by_stamp.get(int(stamp))
        if i is not None:
            last = track.boxes[i]
            answered[k] = True
        boxes[k] = last
    return boxes, answered


# --------------------------------------------------------------------------------------------
# Info

@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    first_ns: int | None = None
    last_ns: int | None = None
    encodings: set = field(default_factory=set)

    @property
    def rate_hz(self) -> float | None:
        if self.count < 2 or self.first_ns is None or self.last_ns == self.first_ns:
            return None
        return (self.count - 1) / ((self.last_ns - self.first_ns) / 1e9)


@dataclass(frozen=True)
class BagSource:
    """Where a converted bag's sequence came from (its metadata's custom_data; empty when unknown)."""

    dataset: str = ''
    sequence: str = ''
    attributes: tuple[str, ...] = ()

    @classmethod
    def from_custom_data(cls, custom: Mapping[str, str]) -> 'BagSource':
        return cls(custom.get(SOURCE_DATASET_KEY, ''), custom.get(SOURCE_SEQUENCE_KEY, ''),
                   tuple(a for a in custom.get(SOURCE_ATTRIBUTES_KEY, '').split(',') if a))


def bag_source_info(path: str | os.PathLike) -> BagSource:
    """The dataset kind, sequence name and attributes ``ckd-bag convert`` recorded in the bag's
    ``metadata.yaml`` (an empty :class:`BagSource` for other bags, or without metadata)."""
    return BagSource.from_custom_data(bag_custom_data(path))


def bag_custom_data(path: str | os.PathLike) -> dict[str, str]:
    """The ``custom_data`` strings of a bag's ``metadata.yaml`` ({} without one, or when damaged:
    reading the bag reports that)."""
    metadata = Path(path) / 'metadata.yaml'
    if not metadata.is_file():
        return {}
    import yaml
    try:
        # BaseLoader: every value stays a string, as rosbag2 wrote it (safe_load reads the attribute
        # list 'NO' as False)
        meta = yaml.load(metadata.read_text(), Loader=yaml.BaseLoader) or {}
        custom = meta.get('rosbag2_bagfile_information', {}).get('custom_data') or {}
        return {str(key): str(value) for key, value in custom.items()}
    except (yaml.YAMLError, AttributeError, OSError):
        return {}


def bag_info(path: str | os.PathLike, scan: bool = True) -> dict:
    """Summary of a bag: storage, version, duration, and per topic type, count, rate (and image
    encodings when ``scan``). A corrupt bag gives what was read plus ``error``.

    An MCAP bag that rosbags cannot open (no ``metadata.yaml``, a damaged one, a file without its summary) is
    read record by record as :func:`iter_messages` reads it (``salvaged``: True, ``error`` saying why and
    where the reading stopped), with or without ``scan``: there is no usable summary to show instead.
    Bags refused for their size (:class:`BagLimitError`) and other unopenable bags raise."""
    path = Path(path)
    store = make_typestore()
    try:
        reader = _open_reader(path, store)
    except BagReadError as exc:
        if isinstance(exc, BagLimitError) or not _mcap_files(path):
            raise
        return _salvaged_info(path, store, exc)
    try:
        topics = {c.topic: TopicInfo(c.topic, c.msgtype, int(c.msgcount)) for c in reader.connections}
        info = {'path': str(path), 'message_count': int(reader.message_count),
                'start_ns': int(reader.start_time) if reader.message_count else None,
                'end_ns': int(reader.end_time) if reader.message_count else None,
                'duration_s': (reader.duration / 1e9) if reader.message_count else 0.0}
    finally:
        reader.close()
    metadata = path / 'metadata.yaml' if path.is_dir() else None
    if metadata is not None and metadata.is_file():
        import yaml
        try:
            meta = yaml.safe_load(metadata.read_text()).get('rosbag2_bagfile_information', {})
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as exc:  # changed since it was opened
            raise BagReadError(path, f'cannot read metadata.yaml ({type(exc).__name__}: {exc})') from exc
        info['storage'] = meta.get('storage_identifier')
        info['version'] = meta.get('version')
        info['ros_distro'] = meta.get('ros_distro')
        info['type_description_hashes'] = {t['topic_metadata']['name']: t['topic_metadata'].get('type_description_hash')
                                           for t in meta.get('topics_with_message_count', [])}
        info['custom_data'] = bag_custom_data(path)
    error = None
    if scan:
        for stats in topics.values():
            stats.count = 0
        try:
            for topic, log_time, message in iter_messages(path, list(topics), store):
                stats = topics[topic]
                stats.count += 1
                stats.first_ns = log_time if stats.first_ns is None else stats.first_ns
                stats.last_ns = log_time
                if stats.msgtype == IMAGE_TYPE:
                    stats.encodings.add(f'{message.encoding} {message.width}x{message.height}')
        except BagReadError as exc:
            error = str(exc)
    info['topics'] = [{'name': t.name, 'type': t.msgtype, 'count': t.count, 'rate_hz': t.rate_hz,
                       **({'encodings': sorted(t.encodings)} if t.encodings else {})}
                      for t in sorted(topics.values(), key=lambda t: t.name)]
    if error:
        info['error'] = error
    return info


def _salvaged_info(path: Path, store, open_error: BagReadError) -> dict:
    """:func:`bag_info` of an MCAP bag that rosbags cannot open, from its records (:func:`_salvage_mcap`)."""
    if Path(path).is_dir() and not (Path(path) / 'metadata.yaml').is_file():
        reason = 'no metadata.yaml (its recording never finished, or the file was removed)'
    else:
        problem = metadata_problem(path)
        cause = open_error.__cause__
        reason = (f'damaged metadata.yaml ({problem})' if problem is not None else
                  f'rosbags cannot open it ({type(cause).__name__}: {cause})' if cause is not None else str(open_error))
    types: dict[str, str | None] = {}
    topics: dict[str, TopicInfo] = {}
    count, first, last, error = 0, None, None, None
    try:
        for topic, log_time, message in _salvage_mcap(path, None, store, open_error.__cause__ or open_error, types):
            stats = topics.get(topic)
            if stats is None:
                stats = topics[topic] = TopicInfo(topic, types.get(topic) or '?', 0)
            stats.count += 1
            stats.first_ns = log_time if stats.first_ns is None else stats.first_ns
            stats.last_ns = log_time
            if stats.msgtype == IMAGE_TYPE:
                stats.encodings.add(f'{message.encoding} {message.width}x{message.height}')
            count += 1
            first = log_time if first is None else min(first, log_time)
            last = log_time if last is None else max(last, log_time)
    except BagReadError as exc:      # damage after the records read (a limit too: reported like a scan's)
        error = f'{reason}; {exc}'
    for topic, msgtype in types.items():
        topics.setdefault(topic, TopicInfo(topic, msgtype or '?', 0))
    if error is None:
        error = f'{reason}: read record by record instead ({count} messages, to the end of the file)'
    info = {'path': str(path), 'salvaged': True, 'storage': 'mcap', 'message_count': count,
            'start_ns': first, 'end_ns': last, 'duration_s': (last - first) / 1e9 if count else 0.0,
            'custom_data': bag_custom_data(path),
            'topics': [{'name': t.name, 'type': t.msgtype, 'count': t.count, 'rate_hz': t.rate_hz,
                        **({'encodings': sorted(t.encodings)} if t.encodings else {})}
                       for t in sorted(topics.values(), key=lambda t: t.name)],
            'error': error}
    return info


def format_info(info: dict) -> str:
    lines = [f"bag:       {info['path']}"]
    if info.get('salvaged'):
        lines.append(f"storage:   {info['storage']} (no usable metadata: read record by record)")
    elif info.get('storage'):
        lines.append(f"storage:   {info['storage']} (metadata version {info.get('version')}, "
                     f"ros_distro {info.get('ros_distro')})")
    source = BagSource.from_custom_data(info.get('custom_data') or {})
    if source.dataset:
        lines.append(f'source:    {source.dataset} sequence {source.sequence}'
                     + (f" (attributes {', '.join(source.attributes)})" if source.attributes else ''))
    lines.append(f"messages:  {info['message_count']}")
    lines.append(f"duration:  {info['duration_s']:.3f} s")
    if info.get('start_ns') is not None:
        lines.append(f"start:     {info['start_ns'] / 1e9:.9f} s   end: {info['end_ns'] / 1e9:.9f} s")
    lines.append('topics:')
    width = max([len(t['name']) for t in info['topics']] + [5])
    for t in info['topics']:
        rate = f"{t['rate_hz']:.2f} Hz" if t['rate_hz'] else '-'
        extra = f"  [{', '.join(t['encodings'])}]" if t.get('encodings') else ''
        lines.append(f"  {t['name']:<{width}}  {t['type']:<28} {t['count']:>7} msgs  {rate:>10}{extra}")
    if info.get('error'):
        lines.append(f"ERROR: {info['error']}")
    return '\n'.join(lines)
