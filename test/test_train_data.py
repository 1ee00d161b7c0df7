"""Paired RGB-T sampling and processing for training (docs/spec/CKD.md sec. 4.5)."""
import numpy as np
import pytest
import torch

from ckd_ros.core.synthetic import SyntheticScene
from ckd_train.data import (ArraySequence, CKDProcessing, CKDTrainingDataset, ProcessingSettings, TrackingSampler,
                            box_to_crop, masked_modelling_keep, modality_blanking, padding_mask, thermal_to_rgb8)

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _denorm(x: torch.Tensor) -> np.ndarray:
    return (x.numpy() * STD + MEAN) * 255.0


def _marker_sequence(n=30, h=200, w=240, seed=0, thermal_equals_rgb=True):
    """Grey noise frames with a pure red rectangle at the GT box (moving right)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(60, 120, (n, h, w, 3), dtype=np.uint8)
    boxes = np.zeros((n, 4))
    for i in range(n):
        x, y, bw, bh = 60 + 2 * i, 70, 40, 30
        rgb[i, y:y + bh, x:x + bw] = (250, 0, 0)
        boxes[i] = (x, y, bw, bh)
    thermal = rgb.copy() if thermal_equals_rgb else rgb[..., 0].copy()
    return ArraySequence(f'marker{seed}', rgb, thermal, boxes)


def test_box_to_crop_centres_the_unjittered_box():
    box = np.array([50.0, 40.0, 20.0, 10.0])
    anno = box_to_crop(box, box, resize_factor=128 / 29, out_size=128)
    centre = anno[:2] + anno[2:] / 2
    assert np.allclose(centre, 63.5 / 128)
    assert np.allclose(anno[2:], box[2:] * (128 / 29) / 128)


@pytest.mark.parametrize('seed', range(6))
def test_search_box_marks_the_target_after_every_augmentation(seed):
    """Jitter, joint flip/grayscale, per-crop flip and brightness: the GT box still covers the marker,
    and RGB and TIR crops stay pixel-aligned (TIR = RGB here, so the crops must be identical)."""
    seq = _marker_sequence()
    proc = CKDProcessing(ProcessingSettings(grayscale_probability=0.0))
    sampler = TrackingSampler([[seq]], [1.0])
    rng = np.random.default_rng(seed)
    for _ in range(5):
        s, t, x = sampler.sample(rng)
        out = proc(rng, (s.rgb(t), s.thermal(t), s.ground_truth[t]), (s.rgb(x), s.thermal(x), s.ground_truth[x]))
        assert out is not None
        assert np.array_equal(out['search_rgb'], out['search_tir'])
        assert np.array_equal(out['template_rgb'], out['template_tir'])
        for key, size in (('search', 256), ('template', 128)):
            img = _denorm(torch.from_numpy(out[f'{key}_rgb']))
            x0, y0, bw, bh = out[f'{key}_anno'] * size
            inner = img[:, int(y0 + 0.2 * bh):int(y0 + 0.8 * bh), int(x0 + 0.2 * bw):int(x0 + 0.8 * bw)]
            # red marker (brightness 0.8..1.2 of 250) inside the box, green ~ 0
            assert inner[0].mean() > 180 and inner[1].mean() < 20


def test_grayscale_is_joint_and_applies_to_both_modalities():
    seq = _marker_sequence(thermal_equals_rgb=False)
    proc = CKDProcessing(ProcessingSettings(grayscale_probability=1.0))
    rng = np.random.default_rng(1)
    out = proc(rng, (seq.rgb(0), thermal_to_rgb8(seq.thermal(0)), seq.ground_truth[0]),
               (seq.rgb(5), thermal_to_rgb8(seq.thermal(5)), seq.ground_truth[5]))
    for key in ('template_rgb', 'search_rgb', 'template_tir', 'search_tir'):
        img = _denorm(torch.from_numpy(out[key]))
        assert np.allclose(img[0], img[1], atol=1e-3) and np.allclose(img[1], img[2], atol=1e-3)


def test_modality_dropout_blanks_one_camera_and_is_off_by_default():
    """TRAIN.MODALITY_DROPOUT (not official): off draws nothing (the official sample stream is unchanged);
    on, one modality's search crop is black (pixel 0, what the demo's RGB-only / thermal-only runs feed),
    the template's too in about half of those samples, the other modality untouched."""
    from ckd_ros.core.config import ConfigError, load_config
    seq = _marker_sequence(thermal_equals_rgb=False)
    template = (seq.rgb(0), thermal_to_rgb8(seq.thermal(0)), seq.ground_truth[0])
    search = (seq.rgb(5), thermal_to_rgb8(seq.thermal(5)), seq.ground_truth[5])
    off = CKDProcessing(ProcessingSettings())
    official = CKDProcessing(ProcessingSettings(modality_dropout=0.0))
    a, b = off(np.random.default_rng(3), template, search), official(np.random.default_rng(3), template, search)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert load_config('ckd_tiny').TRAIN.MODALITY_DROPOUT == 0.0
    with pytest.raises(ConfigError, match='MODALITY_DROPOUT'):
        load_config('ckd_tiny', overrides={'TRAIN': {'MODALITY_DROPOUT': 1.5}})

    always = CKDProcessing(ProcessingSettings(modality_dropout=1.0, flip_probability=0.0, grayscale_probability=0.0))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        out = always(rng, template, search)
        black = {k for k in ('search_rgb', 'search_tir', 'template_rgb', 'template_tir')
                 if np.allclose(_denorm(torch.from_numpy(out[k])), 0, atol=1e-3)}
        assert len(black & {'search_rgb', 'search_tir'}) == 1          # one camera, never both
        modality = 'rgb' if 'search_rgb' in black else 'tir'
        assert black - {f'search_{modality}', f'template_{modality}'} == set()
        seen.add(frozenset(black))
    assert len(seen) == 4   # RGB or thermal, search only or search and template
    rates = [bool(modality_blanking(np.random.default_rng(i), 0.2)) for i in range(2000)]
    assert 0.15 < np.mean(rates) < 0.25


def test_sampler_follows_the_causal_rules():
    n = 60
    boxes = np.tile([10.0, 10.0, 20.0, 20.0], (n, 1))
    boxes[::3, 2] = 0  # every third frame invisible
    long_seq = ArraySequence('long', np.zeros((n, 64, 64, 3), np.uint8), np.zeros((n, 64, 64), np.uint8), boxes)
    short = ArraySequence('short', np.zeros((19, 64, 64, 3), np.uint8), np.zeros((19, 64, 64), np.uint8),
                          np.tile([10.0, 10.0, 20.0, 20.0], (19, 1)))
    sampler = TrackingSampler([[short, long_seq]], [1.0], max_gap=10)
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(400):
        seq, t, x = sampler.sample(rng)
        assert seq is long_seq  # < 20 frames: never sampled
        assert t % 3 and x % 3  # visible frames only
        assert 0 <= t <= n - 2 and x > t
        gaps.append(x - t)
    assert max(gaps) <= 9 + 5  # window template+1 .. template+max_gap-1, grown by 5 on a failed draw
    assert min(gaps) == 1
    with pytest.raises(ValueError, match='no sequence'):
        TrackingSampler([[short]], [1.0])
    with pytest.raises(ValueError, match='one ratio per dataset'):
        TrackingSampler([[long_seq]], [1.0, 2.0])


def test_masked_modelling_keep_vector():
    rng = np.random.default_rng(0)
    keeps = np.stack([masked_modelling_keep(rng, 256, 1.0, 0.25) for _ in range(200)])
    assert keeps.dtype == bool and keeps.shape == (200, 256)
    assert abs(keeps.mean() - 0.75) < 0.01
    assert masked_modelling_keep(rng, 256, 0.0, 0.25).all()
    # 0 < p < 1: the official inverted semantics (keep only U < ratio) with probability 1 - p
    partial = np.stack([masked_modelling_keep(rng, 256, 0.5, 0.25) for _ in range(400)])
    fully_kept = partial.all(axis=1)
    assert 0.4 < fully_kept.mean() < 0.6
    assert abs(partial[~fully_kept].mean() - 0.25) < 0.02


def test_padding_rejection_and_mask():
    # crop touching the right edge: the official +1 pads one extra column
    mask = padding_mask((100, 100), np.array([80.0, 40.0, 20.0, 20.0]), 2.0, 40)
    assert mask[:, -1].all() and not mask[:, 0].any()
    seq = _marker_sequence()
    proc = CKDProcessing(ProcessingSettings(search_center_jitter=0, search_scale_jitter=0))
    far_box = np.array([5000.0, 5000.0, 40.0, 30.0])  # crop entirely outside the frame
    rng = np.random.default_rng(0)
    assert proc(rng, (seq.rgb(0), seq.thermal(0), seq.ground_truth[0]), (seq.rgb(1), seq.thermal(1), far_box)) is None


def test_dataset_is_deterministic_per_sample_and_epoch():
    scenes = [SyntheticScene(s, length=40, size=(160, 128)) for s in range(2)]
    settings = ProcessingSettings(template_size=64, search_size=128, mask_probability=1.0, mask_ratio=0.25)
    ds = CKDTrainingDataset(TrackingSampler([scenes], [1.0]), CKDProcessing(settings), 10, seed=3)
    a, b = ds[4], ds[4]
    assert set(a) == {'template_rgb', 'template_tir', 'search_rgb', 'search_tir', 'template_anno', 'search_anno',
                      'search_token_keep'}
    assert a['search_rgb'].shape == (3, 128, 128) and a['template_rgb'].shape == (3, 64, 64)
    assert a['search_token_keep'].shape == (64,) and a['search_token_keep'].dtype == torch.bool
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[5]['search_rgb'], a['search_rgb'])
    ds.set_epoch(1)
    assert not torch.equal(ds[4]['search_rgb'], a['search_rgb'])


def test_thermal_formats_and_mismatched_frames():
    assert thermal_to_rgb8(np.full((4, 5), 7, np.uint8)).shape == (4, 5, 3)
    raw = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
    converted = thermal_to_rgb8(raw)
    assert converted.dtype == np.uint8 and converted.max() > 200 and converted.min() < 50
    with pytest.raises(ValueError, match='thermal frame'):
        thermal_to_rgb8(np.zeros((4, 5, 2), np.uint8))
    seq = ArraySequence('bad', np.zeros((30, 64, 64, 3), np.uint8), np.zeros((30, 32, 32), np.uint8),
                        np.tile([10.0, 10.0, 20.0, 20.0], (30, 1)))
    ds = CKDTrainingDataset(TrackingSampler([[seq]], [1.0]), CKDProcessing(ProcessingSettings()), 4)
    with pytest.raises(ValueError, match='differ in size'):
        ds[0]
    with pytest.raises(ValueError, match='one entry per frame'):
        ArraySequence('x', np.zeros((3, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8), np.zeros((3, 4)))


def test_dataset_readers_plug_in_by_official_name(tmp_path):
    """A LasHeR-layout folder (visible/, infrared/, init.txt) named LasHeR_trainingSet feeds training."""
    import cv2

    from ckd_train.trainer import open_sequences
    from ckd_train.settings import SyntheticSettings
    seq_dir = tmp_path / 'seq_a'
    (seq_dir / 'visible').mkdir(parents=True)
    (seq_dir / 'infrared').mkdir()
    marker = _marker_sequence(n=24, h=120, w=160)
    lines = []
    for i in range(24):
        cv2.imwrite(str(seq_dir / 'visible' / f'v{i:06d}.png'), cv2.cvtColor(marker.rgb(i), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(seq_dir / 'infrared' / f'i{i:06d}.png'), marker.rgb(i)[..., 0])
        lines.append(','.join(str(int(v)) for v in marker.ground_truth[i]))
    (seq_dir / 'init.txt').write_text('\n'.join(lines) + '\n')
    sequences = open_sequences('LasHeR_trainingSet', SyntheticSettings(), {'LasHeR_trainingSet': str(tmp_path)})
    assert [s.name for s in sequences] == ['seq_a'] and len(sequences[0]) == 24
    ds = CKDTrainingDataset(TrackingSampler([sequences], [1.0]), CKDProcessing(ProcessingSettings()), 4)
    item = ds[0]
    assert item['search_rgb'].shape == (3, 256, 256) and torch.isfinite(item['search_tir']).all()
    with pytest.raises(ValueError, match='--data-root RGBT234=PATH'):
        open_sequences('RGBT234', SyntheticSettings(), {})
    with pytest.raises(ValueError, match='unknown training dataset'):
        open_sequences('KITTI', SyntheticSettings(), {})


def test_training_files_choose_the_synthetic_world_and_keep_real_motion_pools_apart(tmp_path):
    from ckd_train.settings import load_train_config
    from ckd_train.trainer import open_sequences
    from ckd_ros.core.config import ConfigError
    shipped = load_train_config('ckd_tiny_rgbt')
    assert shipped.synthetic.world == 'rgbt' and shipped.synthetic.to_dict()['WORLD'] == 'rgbt'
    assert load_train_config('ckd_tiny_synthetic').synthetic.world == 'classic'   # stage 1 of the recipe
    small = shipped.synthetic.__class__(seeds=(3, 5), val_seeds=(500000, 500002), length=20, size=(96, 64),
                                        world='rgbt')
    train = open_sequences('SYNTHETIC', small, {})
    val = open_sequences('SYNTHETIC_VAL', small, {})
    assert {s.motion_split for s in train} == {'train'} and {s.motion_split for s in val} == {'val'}
    assert all(s.world == 'rgbt' for s in train + val)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('BASE: ckd_tiny\nSYNTHETIC: {WORLD: fancy}\n')
    with pytest.raises(ConfigError, match='SYNTHETIC.WORLD must be one of'):
        load_train_config(bad)
