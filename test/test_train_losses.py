"""CKD training losses against hand-computed values, and where their gradients go."""
import math

import numpy as np
import pytest
import torch

from ckd_ros.core.config import load_config
from ckd_train.losses import (CKDLossWeights, TrackingLossWeights, ckd_loss, content_loss, focal_loss,
                              gaussian_radius_bug, generate_heatmap, giou_loss, style_loss, tracking_loss)
from ckd_train.model import build_training_model

torch.set_num_threads(1)

TINY = {'MODEL': {'PRETRAIN_FILE': '', 'RGB_BRANCH': '', 'TIR_BRANCH': '', 'RGB_TEACHER': '', 'TIR_TEACHER': '',
                  'BACKBONE': {'EMBED_DIM': 32, 'DEPTH': 2, 'NUM_HEADS': 2}, 'HEAD': {'NUM_CHANNELS': 16}},
        'DATA': {'TEMPLATE': {'SIZE': 64}, 'SEARCH': {'SIZE': 128}},
        'TEST': {'TEMPLATE_SIZE': 64, 'SEARCH_SIZE': 128}}


def tiny_config(**train):
    overrides = {**TINY, 'TRAIN': {'DROP_PATH_RATE': 0.0, **train}}
    return load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25', overrides)


def test_gaussian_radius_bug_version():
    # h = w = 4, min_overlap 0.7: the three roots divided by 2 (not 2a)
    r1 = (8 + math.sqrt(8 ** 2 - 4 * (16 * 0.3 / 1.7))) / 2          # 7.6299
    r2 = (16 + math.sqrt(16 ** 2 - 4 * 4 * (0.3 * 16))) / 2           # 14.693
    r3 = (-2 * 0.7 * 8 + math.sqrt((2 * 0.7 * 8) ** 2 + 4 * 2.8 * 4.8)) / 2  # 1.0933
    assert gaussian_radius_bug(4.0, 4.0) == pytest.approx(min(r1, r2, r3))
    assert gaussian_radius_bug(4.0, 4.0) == pytest.approx(1.0933, abs=1e-4)
    # the correct CornerNet radius (divided by 2a) would be 4x smaller for r3
    assert gaussian_radius_bug(2.0, 8.0) == pytest.approx(
        (-2 * 0.7 * 10 + math.sqrt((1.4 * 10) ** 2 + 4 * 2.8 * 0.3 * 16)) / 2)


def test_heatmap_peak_radius_and_truncation():
    # box (4, 4, 4, 4) cells on a 16x16 map: centre cell (6, 6), radius floor(1.09) = 1, sigma 3/6
    maps = generate_heatmap(torch.tensor([[0.25, 0.25, 0.25, 0.25]]), 256, 16)
    assert maps.shape == (1, 1, 16, 16)
    m = maps[0, 0].numpy()
    assert m[6, 6] == 1.0
    assert m[6, 7] == pytest.approx(math.exp(-2.0)) and m[5, 6] == pytest.approx(math.exp(-2.0))
    assert m[5, 5] == pytest.approx(math.exp(-4.0))
    assert np.count_nonzero(m) == 9
    # larger box: radius of 8x8 cells = floor(2.187) = 2 -> 5x5 support, sigma 5/6
    big = generate_heatmap(torch.tensor([[0.25, 0.25, 0.5, 0.5]]), 256, 16)[0, 0].numpy()
    assert np.count_nonzero(big) == 25 and big[8, 8] == 1.0
    assert big[8, 10] == pytest.approx(math.exp(-4 / (2 * (5 / 6) ** 2)))
    # centre rounded to column 16 (outside the map): only the left tail is drawn, no positive cell
    edge = generate_heatmap(torch.tensor([[0.85, 0.25, 0.3, 0.5]]), 256, 16)[0, 0].numpy()
    assert edge.max() < 1.0 and np.count_nonzero(edge[:, 15]) > 0 and np.count_nonzero(edge[:, :14]) == 0
    with pytest.raises(ValueError, match='B, 4'):
        generate_heatmap(torch.zeros(4), 256, 16)


def test_focal_loss_hand_computed():
    pred = torch.tensor([[[[0.5, 0.2], [0.1, 0.9]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    positive = math.log(0.5) * 0.5 ** 2
    negative = (math.log(0.8) * 0.2 ** 2 * 0.5 ** 4 + math.log(0.9) * 0.1 ** 2 + math.log(0.1) * 0.9 ** 2)
    assert focal_loss(pred, target).item() == pytest.approx(-(positive + negative) / 1, rel=1e-6)
    # no positive cell: the negative sum is not divided
    target0 = torch.tensor([[[[0.0, 0.5], [0.0, 0.0]]]])
    negative0 = (math.log(0.5) * 0.25 + math.log(0.8) * 0.04 * 0.0625 + math.log(0.9) * 0.01
                 + math.log(0.1) * 0.81)
    assert focal_loss(pred, target0).item() == pytest.approx(-negative0, rel=1e-6)


def test_giou_loss_hand_computed():
    loss, iou = giou_loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert iou.item() == pytest.approx(1 / 7)
    assert loss.item() == pytest.approx(1 - (1 / 7 - (9 - 7) / 9))
    with pytest.raises(ValueError, match='degenerate'):
        giou_loss(torch.tensor([[0.0, 0.0, -1.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))


def test_tracking_loss_weights_and_clamping():
    pred = {'pred_boxes': torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), 'score_map': torch.full((1, 1, 16, 16), 0.01)}
    gt = torch.tensor([[0.45, 0.45, 0.2, 0.2]])
    heat = generate_heatmap(gt, 256, 16)
    total, parts = tracking_loss(pred, gt, heat, TrackingLossWeights(2.0, 5.0, 1.0))
    iou = 0.15 ** 2 / (0.04 + 0.04 - 0.15 ** 2)
    giou = iou - (0.25 ** 2 - 0.0575) / 0.25 ** 2
    assert parts['iou'].item() == pytest.approx(iou, rel=1e-5)
    assert parts['giou'].item() == pytest.approx(1 - giou, rel=1e-5)
    assert parts['l1'].item() == pytest.approx(0.05, rel=1e-5)
    assert total.item() == pytest.approx(2 * (1 - giou) + 5 * 0.05 + parts['location'].item(), rel=1e-5)
    # GT corners outside the crop are clamped to [0, 1] before GIoU and L1
    out_gt = torch.tensor([[0.9, 0.4, 0.3, 0.2]])  # x2 = 1.2 -> 1.0
    _, p2 = tracking_loss({'pred_boxes': torch.tensor([[[0.95, 0.5, 0.1, 0.2]]]), 'score_map': pred['score_map']},
                          out_gt, generate_heatmap(out_gt, 256, 16), TrackingLossWeights())
    assert p2['l1'].item() == pytest.approx(0.0, abs=1e-6) and p2['iou'].item() == pytest.approx(1.0, rel=1e-5)
    # a degenerate prediction makes the official actor drop the GIoU term (assertion caught)
    _, p3 = tracking_loss({'pred_boxes': torch.tensor([[[0.5, 0.5, -0.1, 0.2]]]), 'score_map': pred['score_map']},
                          gt, heat, TrackingLossWeights())
    assert p3['giou'].item() == 0.0
    with pytest.raises(FloatingPointError, match='NaN'):
        tracking_loss({'pred_boxes': torch.full((1, 1, 4), float('nan')), 'score_map': pred['score_map']},
                      gt, heat, TrackingLossWeights())


def test_style_loss_hand_computed():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # 3 tokens, 2 channels: mu (3, 4), unbiased sd (2, 2)
    b = torch.zeros_like(a)
    assert style_loss(a, b).item() == pytest.approx(((9 + 4) + (16 + 4)) / 2)
    # token mode: statistics over the channels of each token
    mu = torch.tensor([1.5, 3.5, 5.5])
    sd = torch.full((3,), math.sqrt(0.5))
    assert style_loss(a, b, 'token').item() == pytest.approx(float((mu ** 2 + sd ** 2).mean()))
    with pytest.raises(ValueError, match='same shape'):
        style_loss(a, torch.zeros(1, 2, 2))


def test_content_loss_hand_computed():
    student = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # channel 0 over tokens: (0, 2); channel 1: (1, 3)
    teacher = torch.tensor([[[2.0, 5.0], [0.0, 7.0]]])  # channel 0 reversed; channel 1 shifted: same after norm
    # instance norm: (x - mean) / sqrt(biased var + 1e-5), var = 1 for every channel here
    expected = (2 * (2 / math.sqrt(1 + 1e-5)) ** 2 + 0.0) / 4
    assert content_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope='module')
def tiny_model_output():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_training_model(cfg)
    batch = 2
    inputs = dict(template_rgb=torch.randn(batch, 3, 64, 64), template_tir=torch.randn(batch, 3, 64, 64),
                  search_rgb=torch.randn(batch, 3, 128, 128), search_tir=torch.randn(batch, 3, 128, 128))
    return cfg, model, inputs


def _grads(model, prefix):
    return [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]


def _nonzero(grads):
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_content_loss_does_not_reach_the_teachers(tiny_model_output):
    cfg, model, inputs = tiny_model_output
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    f = out['features']
    loss = sum(content_loss(s, t) for s, t in zip(f['rgb_branch'], f['teacher_rgb']))
    loss = loss + sum(content_loss(s, t) for s, t in zip(f['tir_branch'], f['teacher_tir']))
    loss.backward()
    assert _nonzero(_grads(model, 'rgb_branch.')) and _nonzero(_grads(model, 'tir_branch.'))
    assert not _nonzero(_grads(model, 'teacher_rgb.')) and not _nonzero(_grads(model, 'teacher_tir.'))
    # without the stop-gradient the teachers would be pulled too
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    f = out['features']
    sum(content_loss(s, t, stop_teacher_gradient=False) for s, t in zip(f['rgb_branch'], f['teacher_rgb'])).backward()
    assert _nonzero(_grads(model, 'teacher_rgb.'))


def test_style_loss_reaches_both_students_only(tiny_model_output):
    cfg, model, inputs = tiny_model_output
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    f = out['features']
    sum(style_loss(a, b) for a, b in zip(f['rgb_branch'], f['tir_branch'])).backward()
    assert _nonzero(_grads(model, 'rgb_branch.')) and _nonzero(_grads(model, 'tir_branch.'))
    assert not _nonzero(_grads(model, 'teacher_rgb.')) and not _nonzero(_grads(model, 'teacher_tir.'))
    assert not _nonzero(_grads(model, 'box_head'))


def test_total_loss_is_the_weighted_sum(tiny_model_output):
    cfg, model, inputs = tiny_model_output
    gt = torch.tensor([[0.4, 0.4, 0.2, 0.25], [0.3, 0.45, 0.3, 0.1]])
    with torch.no_grad():
        out = model(**inputs)
    total, log = ckd_loss(out, gt, 128, 16, CKDLossWeights.from_config(cfg))
    expected = (log['loss_fused'] + log['loss_teacher_rgb'] + log['loss_teacher_tir']
                + 0.01 * log['style'] + 0.1 * log['content'])
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # 2 blocks x 2 modalities of content, 2 blocks of style
    f = out['features']
    assert len(f['rgb_branch']) == 2
    content = sum(content_loss(s, t).item() for m in ('rgb', 'tir')
                  for s, t in zip(f[f'{m}_branch'], f[f'teacher_{m}']))
    assert log['content'] == pytest.approx(content, rel=1e-6)


def test_students_share_one_mask_and_teachers_see_everything(tiny_model_output, monkeypatch):
    cfg, model, inputs = tiny_model_output
    seen = {}
    for name in ('rgb_branch', 'tir_branch', 'teacher_rgb', 'teacher_tir'):
        branch = getattr(model, name)
        original = branch.embed

        def spy(z, x, keep=None, _name=name, _orig=original):
            seen[_name] = keep
            return _orig(z, x, keep)
        monkeypatch.setattr(branch, 'embed', spy)
    keep = torch.rand(2, 64) > 0.25
    with torch.no_grad():
        model(**inputs, search_token_keep=keep)
    assert seen['teacher_rgb'] is None and seen['teacher_tir'] is None
    assert seen['rgb_branch'] is seen['tir_branch']
    assert torch.equal(seen['rgb_branch'], keep.float())
    # a dropped token carries only its position: the students' embedding there is pos_embed_x
    monkeypatch.undo()
    branch = model.rgb_branch
    tokens = branch.embed(inputs['template_rgb'], inputs['search_rgb'], keep.float())
    dropped = (~keep[0]).nonzero()[0, 0]
    lz = branch.num_template_tokens
    assert torch.allclose(tokens[0, lz + dropped], branch.pos_embed_x[0, dropped])
