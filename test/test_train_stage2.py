"""Stage 2 (``..._maxce_trainhead``): MCE in the four-branch ring, only the heads train, and the
stage-1 checkpoint comes in through MODEL.PRETRAIN_FILE."""
import torch

from ckd_ros.core.checkpoint import read_checkpoint
from ckd_ros.core.config import load_config
from ckd_train.model import build_training_model, ce_keep_rate_for_epoch
from ckd_train.settings import SyntheticSettings, TrainConfig
from ckd_train.trainer import TrainOptions, train

torch.set_num_threads(1)

SIZES = {'DATA': {'TEMPLATE': {'SIZE': 64}, 'SEARCH': {'SIZE': 128},
                  'TRAIN': {'DATASETS_NAME': ['SYNTHETIC'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 4}},
         'TEST': {'TEMPLATE_SIZE': 64, 'SEARCH_SIZE': 128}}
MODEL = {'PRETRAIN_FILE': '', 'RGB_BRANCH': '', 'TIR_BRANCH': '', 'RGB_TEACHER': '', 'TIR_TEACHER': '',
         'BACKBONE': {'EMBED_DIM': 32, 'DEPTH': 3, 'NUM_HEADS': 2}, 'HEAD': {'NUM_CHANNELS': 16}}
SYNTH = SyntheticSettings(seeds=(0, 2), val_seeds=(900, 901), length=30, size=(160, 128))


def stage2_config(pretrain: str = ''):
    return load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead', {
        **SIZES, 'MODEL': {**MODEL, 'PRETRAIN_FILE': pretrain, 'BACKBONE': {**MODEL['BACKBONE'], 'CE_LOC': [1, 2]}},
        'TRAIN': {'BATCH_SIZE': 2, 'EPOCH': 1, 'NUM_WORKER': 0, 'PARAM_KEY': [['head', 1e-3]]}})


def test_ring_selection_comes_from_the_students_and_teachers_follow():
    torch.manual_seed(0)
    cfg = stage2_config()
    assert cfg.MODEL.BACKBONE.CE_LOC == [1, 2] and ce_keep_rate_for_epoch(cfg, 1) == 0.7
    model = build_training_model(cfg).eval()
    z = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    x = [torch.randn(2, 3, 128, 128) for _ in range(2)]
    with torch.no_grad():
        out = model(z[0], z[1], x[0], x[1], ce_keep_rate=0.7)
    kept = out['global_index_s']
    assert kept[0].shape == (2, 32)  # 64 -> 45 -> 32 search tokens
    assert all(torch.equal(kept[0], k) for k in kept[1:])  # all four branches keep the same positions
    # the teachers' own attention has no say: other teacher weights, same selection
    with torch.no_grad():
        for p in list(model.teacher_rgb.parameters()) + list(model.teacher_tir.parameters()):
            p.add_(torch.randn_like(p))
        again = model(z[0], z[1], x[0], x[1], ce_keep_rate=0.7)['global_index_s']
        for p in model.rgb_branch.parameters():
            p.add_(torch.randn_like(p))
        changed = model(z[0], z[1], x[0], x[1], ce_keep_rate=0.7)['global_index_s']
    assert torch.equal(again[0], kept[0])
    assert not torch.equal(changed[0], kept[0])
    # per-block features line up token for token for the distillation terms
    assert [f.shape[1] for f in out['features']['rgb_branch']] == [16 + 64, 16 + 45, 16 + 32]


def test_stage2_trains_only_heads_from_the_stage1_checkpoint(tmp_path):
    stage1 = load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25', {
        **SIZES, 'MODEL': MODEL,
        'TRAIN': {'BATCH_SIZE': 2, 'EPOCH': 1, 'NUM_WORKER': 0,
                  'PARAM_KEY': [['head', 1e-3], ['branch', 1e-3], ['teacher', 1e-3]]}})
    first = train(TrainOptions(config=TrainConfig(stage1, SYNTH, name='s1'), output_dir=tmp_path, device='cpu',
                               progress=False, validate=False)).checkpoints[-1]
    cfg = stage2_config(str(first))
    second = train(TrainOptions(config=TrainConfig(cfg, SYNTH, name='s2'), output_dir=tmp_path, device='cpu',
                                progress=False, validate=False)).checkpoints[-1]
    before, after = read_checkpoint(first)['net'], read_checkpoint(second)['net']
    heads_moved = False
    for key, value in before.items():
        if key.endswith('num_batches_tracked') or 'running_' in key:
            continue
        if key.split('.')[0] in ('box_head', 'box_head_v', 'box_head_i'):
            heads_moved |= not torch.equal(value, after[key])
        else:
            assert torch.equal(value, after[key]), f'{key} changed although only heads train in stage 2'
    assert heads_moved
    # head BatchNorms ran in training mode (running statistics updated)
    assert not torch.equal(before['box_head.conv1_ctr.1.running_mean'], after['box_head.conv1_ctr.1.running_mean'])
    assert len(read_checkpoint(second)['optimizer']['param_groups']) == 1
