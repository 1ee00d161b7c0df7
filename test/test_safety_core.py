"""Security/reliability review findings on the ROS-free core: non-finite network output never becomes a box,
checkpoint weights are checked for NaN/inf after the cast to the model's dtype, decompression bombs in
checkpoints (zip records) and bags (MCAP chunks, zstd messages) are refused before anything is
decompressed, and a malicious protocol-5 pickle is reported as refused (unsafe), never as truncated and
never with torch's advice to load it with weights_only=False."""
import copy
import math
import os
import pickle
import shutil
import struct
import time
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import moving_square_frames
from ckd_ros.cli import bag as bag_cli
from ckd_ros.core import bagio, checkpoint
from ckd_ros.core.checkpoint import CheckpointError, inference_state_dict, read_checkpoint
from ckd_ros.core.config import load_config
from ckd_ros.core.geometry import clip_box
from ckd_ros.core.model import build_ckd_model
from ckd_ros.core.recipe_weights import load_recipe_weights
from ckd_ros.core.tracker import LOST, TRACKING, CKDTracker, NonFiniteOutputError, TrackerOptions, TrackResult

TINY = 'ckd_tiny'
H, W = 240, 320
MICRO_CONFIG = str(Path(__file__).resolve().parent / 'data' / 'node_micro_config.yaml')


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


class _Peak:
    """Python-level memory peak (tracemalloc: bytes objects of decompressors included) and wall time."""

    def __enter__(self):
        tracemalloc.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


# ================================================================== 1. non-finite network output

@pytest.fixture(scope='module')
def network():
    return load_recipe_weights(build_ckd_model(TINY, initialize=False))


@pytest.fixture(scope='module')
def frames():
    return moving_square_frames(4, H, W)


def _poisoned(network, key, value=float('nan')):
    bad = copy.deepcopy(network)
    with torch.no_grad():
        bad.state_dict()[key].fill_(value)
    return bad


def test_clip_box_refuses_non_finite_boxes_instead_of_inventing_one():
    # the official min/max chain turned [nan, nan, nan, nan] into (0, 0, 10, 10) and inf into an edge box
    for bad in ([math.nan, 5, 20, 20], [5, math.nan, 20, 20], [5, 5, math.nan, 20], [5, 5, 20, math.nan],
                [math.inf, 5, 20, 20], [5, 5, -math.inf, 20], [math.nan] * 4):
        with pytest.raises(ValueError, match='non-finite box'):
            clip_box(bad, 50, 100, margin=10)
    assert clip_box([-5, 10, 30, 20], 50, 100, margin=10) == [0, 10, 25, 20]      # finite boxes: unchanged


@pytest.mark.parametrize('options', [{}, {'lost_threshold': 0.3, 'template_update_interval': 1,
                                          'template_update_threshold': 0.0}])
def test_nan_score_map_keeps_the_last_good_box_and_says_so(network, frames, options):
    rgb, tir = frames
    tracker = CKDTracker(_poisoned(network, 'box_head.conv5_ctr.bias'), load_config(TINY), 'cpu',
                         TrackerOptions(**options))
    init = tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    assert init.valid and init.error is None
    for index in (1, 2, 3):
        result = tracker.track(rgb[index], tir[index])
        assert result.valid is False and 'non-finite network output' in result.error and 'score map' in result.error
        assert result.state == LOST and math.isnan(result.score) and result.frame_index == index
        assert result.box == (120.0, 100.0, 30.0, 30.0) == tracker.box       # state not moved to garbage


def test_nan_in_the_size_map_at_the_peak_is_caught_too(network, frames):
    rgb, tir = frames
    tracker = CKDTracker(_poisoned(network, 'box_head.conv5_size.bias'), load_config(TINY), 'cpu')
    tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    result = tracker.track(rgb[1], tir[1])
    assert not result.valid and 'decoded box' in result.error and result.state == LOST
    assert result.box == (120.0, 100.0, 30.0, 30.0) and math.isnan(result.score)


def test_an_inf_cell_anywhere_in_the_score_map_is_invalid_and_tracking_resumes_after_it(network, frames):
    rgb, tir = frames
    tracker = CKDTracker(network, load_config(TINY), 'cpu')
    real = tracker.runner
    good = CKDTracker(network, load_config(TINY), 'cpu')
    tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    good.initialize(rgb[0], tir[0], (120, 100, 30, 30))

    def inf_corner(searches, peak_weight=None):
        score, size, offset = real(searches, peak_weight=peak_weight)
        score = score.clone()
        score[..., 0, 0] = math.inf          # away from the peak: the box alone would look fine
        return score, size, offset

    tracker.runner = inf_corner
    result = tracker.track(rgb[1], tir[1])
    assert not result.valid and result.state == LOST and result.box == (120.0, 100.0, 30.0, 30.0)
    tracker.runner = real                     # the output is finite again: tracking goes on from the kept box
    expected = good.track(rgb[1], tir[1])
    resumed = tracker.track(rgb[1], tir[1])
    assert resumed.valid and resumed.error is None and resumed.state == TRACKING
    assert resumed.box == expected.box and resumed.score == expected.score


def test_track_result_field_defaults_keep_existing_constructions_valid():
    result = TrackResult(box=(1.0, 2.0, 3.0, 4.0), score=0.5, state=TRACKING, frame_index=3)
    assert result.valid and result.error is None


def test_warm_up_checks_that_the_output_on_a_blank_pair_is_finite(network, frames):
    rgb, tir = frames
    tracker = CKDTracker(network, load_config(TINY), 'cpu')
    result = tracker.warm_up()
    assert result.valid and math.isfinite(result.score) and not tracker.is_initialized
    tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))     # usable as before after the warm-up
    assert tracker.track(rgb[1], tir[1]).valid
    broken = CKDTracker(_poisoned(network, 'box_head.conv5_ctr.weight'), load_config(TINY), 'cpu')
    with pytest.raises(NonFiniteOutputError, match="not finite.*precision 'fp32' with backend 'eager'"):
        broken.warm_up()
    assert not broken.is_initialized and broken.box is None


# ================================================================== 2. finiteness after the cast

@pytest.fixture(scope='module')
def micro():
    torch.manual_seed(0)
    return build_ckd_model(load_config(MICRO_CONFIG))


def _with(micro, key, value):
    state = OrderedDict(micro.state_dict())
    state[key] = value
    return state


KEY = 'box_head.conv5_ctr.bias'
FLOAT8 = [getattr(torch, name) for name in ('float8_e4m3fn', 'float8_e4m3fnuz', 'float8_e5m2', 'float8_e5m2fnuz',
                                            'float8_e8m0fnu') if hasattr(torch, name)]


def test_float64_weights_that_overflow_float32_are_refused(micro):
    shape = micro.state_dict()[KEY].shape
    with pytest.raises(CheckpointError, match=rf"{KEY}: contains NaN or infinite values once converted from the "
                                              r"file's torch.float64 to the model's torch.float32"):
        inference_state_dict(_with(micro, KEY, torch.full(shape, 1e300, dtype=torch.float64)), micro)
    ok = inference_state_dict(_with(micro, KEY, torch.full(shape, 1e30, dtype=torch.float64)), micro)
    assert ok[KEY].dtype == torch.float32 and bool(torch.isfinite(ok[KEY]).all())


@pytest.mark.parametrize('dtype', FLOAT8 + [torch.float16, torch.bfloat16], ids=str)
def test_every_floating_dtype_is_converted_and_checked(micro, dtype):
    shape = micro.state_dict()[KEY].shape
    loaded = inference_state_dict(_with(micro, KEY, torch.full(shape, 2.0).to(dtype)), micro)
    assert loaded[KEY].dtype == torch.float32 and bool((loaded[KEY] == 2.0).all())
    nan = torch.full(shape, math.nan).to(dtype)        # every one of these types has a NaN
    with pytest.raises(CheckpointError, match=rf'{KEY}: contains NaN or infinite values'):
        inference_state_dict(_with(micro, KEY, nan), micro)


def test_a_float_dtype_that_cannot_be_converted_is_named(micro):
    if not hasattr(torch, 'float4_e2m1fn_x2'):
        pytest.skip('no float4 in this torch')
    shape = micro.state_dict()[KEY].shape
    packed = torch.zeros(shape, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    with pytest.raises(CheckpointError, match=rf'{KEY}: dtype torch.float4_e2m1fn_x2 in the file cannot be converted'):
        inference_state_dict(_with(micro, KEY, packed), micro)


# ================================================================== 3. decompression bombs: checkpoints

def _rezip(source: Path, target: Path, replace: dict | None = None, compression=zipfile.ZIP_STORED) -> None:
    """``source``'s records written again (CRCs recomputed), some replaced by an iterable of byte pieces."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, 'w') as dst:
        for info in src.infolist():
            suffix = next((s for s in replace if info.filename.endswith(s)), None)
            if suffix is None:
                dst.writestr(info.filename, src.read(info), compress_type=compression)
                continue
            with dst.open(zipfile.ZipInfo(info.filename), 'w', force_zip64=True) as handle:
                for piece in replace[suffix]:
                    handle.write(piece)


def _zeros(total, piece=1 << 20):
    block = bytes(piece)
    for _ in range(total // piece):
        yield block


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('torch.load was reached: the file should have been refused before')
    monkeypatch.setattr(torch, 'load', refuse)


def _write_deflated_record(tmp_path, name, pieces, original=None):
    """A checkpoint whose tensor record ``data/0`` is deflated (torch.load inflates it in one piece)."""
    original = original or tmp_path / 'good.pth.tar'
    torch.save({'net': {'box_head.w': torch.zeros(4)}}, original)
    bomb = tmp_path / name
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(bomb, 'w') as dst:
        for info in src.infolist():
            if info.filename.endswith('data/0'):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(record, 'w', force_zip64=True) as handle:
                    for piece in pieces:
                        handle.write(piece)
            else:
                dst.writestr(info.filename, src.read(info))
    return bomb


def test_a_deflated_record_that_inflates_1000x_is_refused_before_decompressing(tmp_path, no_torch_load):
    bomb = _write_deflated_record(tmp_path, 'bomb.pth.tar', _zeros(64 << 20))     # 64 MiB of zeros, ~65 KB
    assert bomb.stat().st_size < 200_000
    with _Peak() as peak, pytest.raises(CheckpointError, match=r'refusing to load .*bomb\.pth\.tar .*declare '
                                                               r'67108864 bytes uncompressed from \d+ bytes \(ratio'):
        read_checkpoint(bomb)
    assert peak.peak < 4 << 20 and peak.seconds < 5


def test_compressed_records_over_the_absolute_cap_are_refused(tmp_path, monkeypatch, no_torch_load):
    rng = np.random.default_rng(0)
    bomb = _write_deflated_record(tmp_path, 'big.pth.tar', [rng.bytes(3 << 20)])   # incompressible: ratio ~1
    monkeypatch.setattr(checkpoint, 'MAX_INFLATED_BYTES', 2 << 20)
    with pytest.raises(CheckpointError, match=r'declare 3145728 bytes uncompressed, over the cap of 2097152'):
        read_checkpoint(bomb)


def test_overlapping_zip_records_are_refused_before_reading_any(tmp_path, no_torch_load):
    # one deflated record of 16 MiB of zeros listed 300 times in the central directory: 4.8 GB to inflate
    # from a file of ~30 KB (the CRC pass alone took minutes on such a file)
    bomb = _write_deflated_record(tmp_path, 'overlap.pth.tar', _zeros(16 << 20))
    with zipfile.ZipFile(bomb, 'a') as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith('data/0'))
        archive.filelist.extend(copy.copy(record) for _ in range(300))
        archive._didModify = True
    with _Peak() as peak, pytest.raises(CheckpointError, match=r'refusing to load .*overlap\.pth\.tar.*zip records '
                                                               r'declare \d+ bytes of data, more than the file holds'):
        read_checkpoint(bomb)
    assert peak.peak < 4 << 20 and peak.seconds < 5


def _central_entry(data: bytes, name: str) -> int:
    """Offset of the central-directory entry of record ``name``."""
    entry = data.index(b'PK\x01\x02')
    while True:
        (name_length,) = struct.unpack_from('<H', data, entry + 28)
        if data[entry + 46:entry + 46 + name_length].decode() == name:
            return entry
        entry = data.index(b'PK\x01\x02', entry + 4)


def test_a_stored_record_whose_sizes_disagree_and_a_zip_that_zipfile_cannot_read_never_reach_torch(
        tmp_path, no_torch_load):
    good = tmp_path / 'good.pth.tar'
    torch.save({'net': {'box_head.w': torch.zeros(4)}}, good)
    with zipfile.ZipFile(good) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith('data/0'))
    data = bytearray(good.read_bytes())
    struct.pack_into('<I', data, _central_entry(data, name) + 24, 1 << 30)   # uncompressed size: 1 GiB
    lying = tmp_path / 'lying.pth.tar'
    lying.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r'stored \(uncompressed\) zip record .*data/0 declares 1073741824'):
        read_checkpoint(lying)
    broken = tmp_path / 'broken.pth.tar'      # torch.load would read it with its own zip reader
    broken.write_bytes(b'PK\x03\x04' + bytes(200))
    with pytest.raises(CheckpointError, match=r'broken\.pth\.tar \(204 bytes\) is truncated or not a torch checkpoint'):
        read_checkpoint(broken)


def test_a_modestly_deflated_checkpoint_still_loads(tmp_path):
    torch.manual_seed(0)
    weights = {'box_head.w': torch.randn(50_000), 'box_head.b': torch.zeros(100)}
    plain = tmp_path / 'plain.pth.tar'
    torch.save({'net': weights}, plain)
    deflated = tmp_path / 'deflated.pth.tar'
    _rezip(plain, deflated, compression=zipfile.ZIP_DEFLATED)
    loaded = read_checkpoint(deflated)
    assert all(torch.equal(loaded['net'][k], v) for k, v in weights.items())


# ================================================================== 4. malicious protocol-5 pickles

class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


UNSAFE = r'refusing to load .*: unsafe, .*could run arbitrary code \(it names (posix|nt)\.system\)'


def _assert_clean(message):
    assert 'weights_only' not in message and 'will likely succeed' not in message
    assert 'truncated' not in message


@pytest.mark.filterwarnings('ignore:Detected pickle protocol 5')
def test_protocol5_system_reduce_is_refused_as_unsafe_in_zip_legacy_and_raw_files(tmp_path):
    marker = tmp_path / 'pwned'
    payload = {'net': {'box_head.w': torch.zeros(3)}, 'settings': _System(marker)}
    in_zip = tmp_path / 'zip5.pth.tar'             # torch's zip layout, data.pkl in protocol 5 (CRCs valid)
    torch.save(payload, in_zip, pickle_protocol=5)
    legacy = tmp_path / 'legacy5.pth'              # torch's legacy (pre-1.6) layout in protocol 5
    torch.save(payload, legacy, _use_new_zipfile_serialization=False, pickle_protocol=5)
    swapped = tmp_path / 'swapped5.pth.tar'        # a genuine zip checkpoint whose data.pkl was replaced
    _rezip(in_zip, swapped, {'data.pkl': [pickle.dumps({'net': {}, 'x': _System(marker)}, protocol=5)]})
    raw = tmp_path / 'raw5.pth'                    # a bare pickle named like a checkpoint
    raw.write_bytes(pickle.dumps({'net': {}, 'x': _System(marker)}, protocol=5))
    for path in (in_zip, legacy, swapped, raw):
        with pytest.raises(CheckpointError, match=UNSAFE) as raised:
            read_checkpoint(path)
        assert str(path) in str(raised.value)
        _assert_clean(str(raised.value))
    assert not marker.exists(), 'no payload ran'


@pytest.mark.filterwarnings('ignore:Detected pickle protocol 5')
def test_an_innocent_protocol5_checkpoint_is_refused_for_its_protocol_not_as_truncated(tmp_path):
    path = tmp_path / 'clean5.pth.tar'
    torch.save({'net': {'box_head.w': torch.zeros(3)}}, path, pickle_protocol=5)
    with pytest.raises(CheckpointError, match=r'uses protocol 5 opcodes .* no unsafe global was found') as raised:
        read_checkpoint(path)
    _assert_clean(str(raised.value))


def test_torch_advice_to_disable_weights_only_is_never_repeated(tmp_path):
    # a protocol-2 pickle with an opcode torch's restricted unpickler does not know: torch's message opens
    # with "Re-running torch.load with weights_only set to False will likely succeed"
    path = tmp_path / 'odd.pth'
    path.write_bytes(b'\x80\x02' + b'\xff' * 16)
    with pytest.raises(CheckpointError, match=r'odd\.pth \(18 bytes\) is truncated or not a torch checkpoint: '
                                              r'UnpicklingError: Unsupported operand 255') as raised:
        read_checkpoint(path)
    assert 'weights_only' not in str(raised.value) and 'likely succeed' not in str(raised.value)


# ================================================================== 3. decompression bombs: bags

def _chunked_bag(path: Path, payloads, compression='zstd') -> Path:
    """An MCAP bag whose chunks are zstd-compressed (rosbags' storage compression), one raw message per
    ``(log_time_ns, size)`` of zeros (rosbags closes a chunk once it holds over 1 MiB)."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compression:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection('/rgb/image', bagio.IMAGE_TYPE, typestore=bagio.make_typestore())
        for log_time, size in payloads:
            writer.write(connection, log_time, bytes(size))
    return path


def _declare_chunk_sizes(file: Path, size: int) -> None:
    """Make every chunk of ``file`` declare ``size`` bytes uncompressed (chunk records and chunk index)."""
    data = bytearray(file.read_bytes())
    position = 8
    while position + 9 <= len(data):
        opcode = data[position]
        (length,) = struct.unpack_from('<Q', data, position + 1)
        body = position + 9
        if opcode == 0x06:      # chunk: start, end, uncompressed size, ...
            struct.pack_into('<Q', data, body + 16, size)
        elif opcode == 0x08:    # chunk index: ..., compressed size, uncompressed size (last field)
            struct.pack_into('<Q', data, body + length - 8, size)
        elif opcode == 0x02:    # footer
            break
        position = body + length
    file.write_bytes(bytes(data))


def test_a_chunk_declaring_more_than_the_cap_is_refused_before_decompressing(tmp_path, monkeypatch, capsys):
    bag = _chunked_bag(tmp_path / 'big', [(1000, 64 << 20)])         # 64 MiB of zeros in a ~4 KB file
    assert next(bag.glob('*.mcap')).stat().st_size < 20_000
    monkeypatch.setattr(bagio, 'MAX_DECOMPRESSED_BYTES', 8 << 20)
    for read in (lambda: list(bagio.iter_messages(bag)), lambda: bagio.bag_info(bag)):
        with _Peak() as peak, pytest.raises(bagio.BagLimitError, match=r'declares 671\d+ bytes uncompressed, over '
                                                                       r'the cap of 8388608 bytes'):
            read()
        assert peak.peak < 4 << 20 and peak.seconds < 5
    assert bag_cli.main(['info', str(bag)]) == 2
    assert 'over the cap of 8388608 bytes' in capsys.readouterr().err


@pytest.mark.parametrize('salvage', [False, True], ids=['indexed', 'no-metadata-salvage'])
def test_a_chunk_lying_about_its_size_is_never_inflated_past_it(tmp_path, salvage):
    bag = _chunked_bag(tmp_path / 'lie', [(1000, 64 << 20)])
    _declare_chunk_sizes(next(bag.glob('*.mcap')), 4096)
    if salvage:       # no metadata.yaml: the record-by-record reader (mcap library) reads the file
        (bag / 'metadata.yaml').unlink()
    with _Peak() as peak, pytest.raises(bagio.BagLimitError, match=r'zstd frame of 671\d+ bytes uncompressed, more '
                                                                   r'than the declared 4096 bytes'):
        list(bagio.iter_messages(bag))
    assert peak.peak < 4 << 20 and peak.seconds < 5


def test_chunks_overlapping_in_time_are_capped_together(tmp_path, monkeypatch):
    bag = _chunked_bag(tmp_path / 'overlap', [(1000, 3 << 20)] * 4)   # 4 chunks, all at the same time
    monkeypatch.setattr(bagio, 'MAX_LIVE_CHUNK_BYTES', 10 << 20)
    with pytest.raises(bagio.BagLimitError, match=r'chunks overlapping in time at 1000 ns declare \d+ bytes'):
        bagio.bag_info(bag)
    monkeypatch.setattr(bagio, 'MAX_LIVE_CHUNK_BYTES', 1 << 30)
    assert [len(m) for _, _, m in _raw_messages(bag)] == [3 << 20] * 4


def test_a_chunk_listed_twice_in_the_index_is_refused(tmp_path):
    # each index entry makes rosbags read and decompress the chunk again, all of them held at once
    bag = _chunked_bag(tmp_path / 'twice', [(1000, 2 << 20)])
    file = next(bag.glob('*.mcap'))
    data = file.read_bytes()
    position = 8
    while data[position] != 0x08:           # the first chunk index record (summary section)
        position += 9 + struct.unpack_from('<Q', data, position + 1)[0]
    end = position + 9 + struct.unpack_from('<Q', data, position + 1)[0]
    file.write_bytes(data[:end] + data[position:end] * 50 + data[end:])
    with pytest.raises(bagio.BagLimitError, match=r'lists the chunk at byte \d+ more than once'):
        list(bagio.iter_messages(bag))


def _raw_messages(bag):
    """(topic, time, raw bytes) through rosbags with the bounded decompressors (iter_messages would try to
    deserialise the zero payloads as images)."""
    reader = bagio._open_reader(bag, bagio.make_typestore())
    try:
        return [(c.topic, t, raw) for c, t, raw in reader.messages()]
    finally:
        reader.close()


def test_a_zstd_compressed_message_bomb_is_refused(tmp_path, monkeypatch):
    bag = tmp_path / 'messages'
    with bagio.BagWriter(bag, compression='zstd') as writer:     # rosbag2 per-message compression
        writer.write_raw('/rgb/image', bagio.IMAGE_TYPE, 1000, bytes(64 << 20))
    monkeypatch.setattr(bagio, 'MAX_DECOMPRESSED_BYTES', 8 << 20)
    with _Peak() as peak, pytest.raises(bagio.BagLimitError, match=r'zstd-compressed message holds a zstd frame of '
                                                                   r'67108864 bytes .* cap of 8388608'):
        list(bagio.iter_messages(bag))
    assert peak.peak < 4 << 20
    assert '67108864 bytes' in bagio.bag_info(bag)['error']


def test_bounded_decompression_without_a_stated_size_stops_at_the_limit():
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    import lz4.frame
    compressor = zstd.ZstdCompressor()                  # streaming: the frame states no content size
    frame = compressor.compress(bytes(32 << 20)) + compressor.flush()
    assert zstd.get_frame_info(frame).decompressed_size is None
    for data, kind in ((frame, 'zstd'), (lz4.frame.compress(bytes(32 << 20)), 'lz4')):
        with _Peak() as peak, pytest.raises(bagio.DecompressionLimitError, match='decompresses to more than 1000'):
            bagio._decompress_at_most(data, kind, 1000)
        assert peak.peak < 1 << 20
        assert bagio._decompress_at_most(data, kind, 32 << 20) == bytes(32 << 20)
        with pytest.raises(bagio.DecompressionLimitError, match='over the cap'):
            bagio._decompress_at_most(data, kind, bagio.MAX_DECOMPRESSED_BYTES + 1)


def test_chunk_compressed_bags_still_read_normally(tmp_path):
    bag = _chunked_bag(tmp_path / 'normal', [(1000 + k, 300_000) for k in range(10)])
    messages = _raw_messages(bag)
    assert [t for _, t, _ in messages] == [1000 + k for k in range(10)]
    assert all(raw == bytes(300_000) for _, _, raw in messages)
    shutil.rmtree(bag)
