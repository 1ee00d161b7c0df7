"""Number-for-number parity of the CKD network with the official code (recipe weights + inputs).

Reference: test/data/reference_outputs.npz (copied from spec/reference/, outputs of the unmodified
official code).  The full-size model is built and filled with the recipe weights once per module.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from ckd_ros.core.geometry import hann2d
from ckd_ros.core.model import (CenterHead, CKDNet, VisionTransformerCE, build_ckd_model, decode_center_boxes,
                                run_branches,
                                template_center_mask)
from ckd_ros.core.recipe_weights import fingerprint, load_recipe_weights, recipe_inputs

DATA = Path(__file__).resolve().parent / 'data'
NONCE = 'ckd_4b_dropmae_ckd_tf_cc_mask.25'
SOT = 'ckd_4b_sot_ckd_tf_cc_mask.25'
MCE = 'ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead'
SHARE = 'ckd_4b_dropmae_ckd_tf_cc_mask.25_share'
TOL = 1e-4

# [sum, sum of squares] of a few recipe tensors, from spec/reference/weights_fingerprint.json
FINGERPRINTS = {
    'rgb_branch.pos_embed_x': (14.29236156896594, 78.92598284129039),
    'rgb_branch.blocks.0.norm1.weight': (768.4038832783699, 776.6043642024554),
    'tir_branch.blocks.11.mlp.fc2.weight': (32.144198487759496, 768.4433748026479),
    'box_head.conv1_ctr.1.running_var': (298.63879907131195, 352.13747545714665),
    'box_head.conv1_ctr.1.running_mean': (-2.3656840212643147, 2.5527448698027433),
    'box_head.conv5_size.bias': (-2.1702903509140015, 2.3551800634614466),
    'box_head.conv3_offset.0.bias': (0.21554290497624606, 0.02232813261051348),
}


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope='module')
def reference():
    return np.load(DATA / 'reference_outputs.npz')


@pytest.fixture(scope='module')
def inputs():
    x = recipe_inputs()
    return [x['template_rgb'], x['template_tir']], [x['search_rgb'], x['search_tir']]


@pytest.fixture(scope='module')
def recipe_state():
    model = load_recipe_weights(build_ckd_model(NONCE, initialize=False))
    return model.state_dict()


def _model_with(name, state):
    model = build_ckd_model(name, initialize=False)
    model.load_state_dict(state, assign=True)  # shares the recipe tensors, no copy
    return model.eval()


def _forward(model, inputs):
    templates, searches = inputs
    with torch.no_grad():
        return model(templates, searches, ce_template_mask=model.template_mask(templates[0].shape[0], 'cpu'))


def _check_outputs(out, reference, tag):
    for name in ('score_map', 'size_map', 'offset_map', 'pred_boxes'):
        np.testing.assert_allclose(out[name].numpy(), reference[f'{tag}/{name}'], atol=TOL, rtol=0, err_msg=name)
    windowed = decode_center_boxes(out['score_map'] * hann2d(16), out['size_map'], out['offset_map'])
    np.testing.assert_allclose(windowed.numpy(), reference[f'{tag}/pred_boxes_hann'], atol=TOL, rtol=0)
    assert out['score_map'].flatten(1).argmax(1).tolist() == \
        torch.from_numpy(reference[f'{tag}/score_map']).flatten(1).argmax(1).tolist()
    feat = out['backbone_feat']
    assert feat.shape == (2, 320, 1536)
    np.testing.assert_allclose(feat[:, :, 0:16].numpy(), reference[f'{tag}/feat_rgb_c0_16'], atol=TOL, rtol=0)
    np.testing.assert_allclose(feat[:, :, 768:784].numpy(), reference[f'{tag}/feat_tir_c0_16'], atol=TOL, rtol=0)


def test_recipe_weights_match_fingerprints(recipe_state):
    for key, (want_sum, want_sq) in FINGERPRINTS.items():
        got_sum, got_sq = fingerprint(recipe_state[key])
        assert got_sum == pytest.approx(want_sum, rel=1e-9, abs=1e-6), key
        assert got_sq == pytest.approx(want_sq, rel=1e-9), key
    assert recipe_state['box_head.conv1_ctr.1.num_batches_tracked'].dtype == torch.int64


def test_state_dict_keys_are_the_official_inference_keys(recipe_state):
    keys = list(recipe_state)
    assert len(keys) == 394
    assert keys[:6] == ['rgb_branch.cls_token', 'rgb_branch.pos_embed', 'rgb_branch.pos_embed_z',
                        'rgb_branch.pos_embed_x', 'rgb_branch.patch_embed.proj.weight',
                        'rgb_branch.patch_embed.proj.bias']
    assert sum(k.startswith('rgb_branch.') for k in keys) == 152
    assert sum(k.startswith('tir_branch.') for k in keys) == 152
    assert sum(k.startswith('box_head.') for k in keys) == 90
    assert keys[-1] == 'box_head.conv5_size.bias'
    assert recipe_state['box_head.conv1_ctr.0.weight'].shape == (256, 1536, 3, 3)
    assert recipe_state['rgb_branch.pos_embed'].shape == (1, 197, 768)
    assert sum(v.numel() for v in recipe_state.values()) == 183_874_257


def test_nonce_matches_official(recipe_state, inputs, reference):
    _check_outputs(_forward(_model_with(NONCE, recipe_state), inputs), reference, 'nonce')


def test_sot_matches_official(recipe_state, inputs, reference):
    _check_outputs(_forward(_model_with(SOT, recipe_state), inputs), reference, 'sot')


def test_mce_matches_official_including_token_sets(recipe_state, inputs, reference):
    model = _model_with(MCE, recipe_state)
    assert model.ce_mode == 'mce'
    out = _forward(model, inputs)
    _check_outputs(out, reference, 'mce')
    for branch in ('rgb', 'tir'):
        aux = out[f'aux_dict_{branch}']
        removed = aux['removed_indexes_s']
        assert [r.shape[1] for r in removed] == [76, 54, 37]
        ref_removed = reference[f'mce/removed_indexes_s_{branch}']
        ref_kept = reference[f'mce/global_index_s_{branch}']
        for b in range(2):
            start = 0
            for layer in removed:
                stop = start + layer.shape[1]
                assert set(layer[b].tolist()) == set(ref_removed[b, start:stop].tolist())
                start = stop
            assert set(aux['global_index_s'][b].tolist()) == set(ref_kept[b].tolist())
    # MCE: one shared selection for both modalities
    for a, b in zip(out['aux_dict_rgb']['removed_indexes_s'], out['aux_dict_tir']['removed_indexes_s']):
        assert torch.equal(a, b)
    # eliminated positions are exact zeros after the final norm, kept ones are not
    feat = out['backbone_feat'][:, 64:]
    for b in range(2):
        gone = torch.cat([r[b] for r in out['aux_dict_rgb']['removed_indexes_s']])
        assert torch.all(feat[b, gone] == 0)
        assert torch.all(feat[b, out['aux_dict_rgb']['global_index_s'][b]].abs().sum(-1) > 0)


def test_mce_model_with_elimination_switched_off_equals_nonce(recipe_state, inputs, reference):
    model = _model_with(MCE, recipe_state)
    model.ce_mode = 'off'
    _check_outputs(_forward(model, inputs), reference, 'nonce')


def test_share_runs_and_equals_two_independent_branches_with_tied_weights(recipe_state, inputs):
    """Defect D4: the official shared-student forward raises.  Here it runs; with both branches tied
    it must compute exactly what two separate branches holding the same (RGB) weights compute."""
    tied = {k: (recipe_state['rgb_branch.' + k[len('tir_branch.'):]] if k.startswith('tir_branch.') else v)
            for k, v in recipe_state.items()}
    share = build_ckd_model(SHARE, initialize=False)
    assert share.rgb_branch is share.tir_branch and share.shares_student
    share.load_state_dict(tied)
    sd = share.state_dict()
    assert len(sd) == 394
    assert sd['tir_branch.blocks.5.attn.qkv.weight'].data_ptr() == sd['rgb_branch.blocks.5.attn.qkv.weight'].data_ptr()
    separate = build_ckd_model(NONCE, initialize=False)
    separate.load_state_dict({k: v.clone() for k, v in tied.items()})
    assert (separate.tir_branch.blocks[0].attn.qkv.weight.data_ptr()
            != separate.rgb_branch.blocks[0].attn.qkv.weight.data_ptr())
    out_share = _forward(share, inputs)
    out_separate = _forward(separate, inputs)
    for name in ('score_map', 'size_map', 'offset_map', 'pred_boxes', 'backbone_feat'):
        assert torch.equal(out_share[name], out_separate[name]), name
    # the shared branch is one function: identical RGB and TIR inputs give identical halves
    templates, searches = inputs
    with torch.no_grad():
        same = share([templates[0], templates[0]], [searches[0], searches[0]])
    assert torch.equal(same['backbone_feat'][..., :768], same['backbone_feat'][..., 768:])


# ---- small-model checks of the generic branch runner (fast, no reference needed) ----------------

def _small_branch(seed, ce_loc=(1, 2), keep=(0.7, 0.7)):
    torch.manual_seed(seed)
    return VisionTransformerCE(template_size=64, search_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=4,
                               ce_loc=ce_loc, ce_keep_ratio=keep).eval()


def _small_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 64, 64, generator=g) for _ in range(2)],
            [torch.randn(batch, 3, 128, 128, generator=g) for _ in range(2)])


def test_plain_ce_selects_per_branch_and_mce_shares_one_selection():
    a, b = _small_branch(1), _small_branch(2)
    z, x = _small_inputs()
    mask = template_center_mask('CTR_POINT', 4, 2)
    with torch.no_grad():
        ce = run_branches([a, b], z, x, ce_mode='ce', template_mask=mask)
        alone = run_branches([b], z[1:], x[1:], ce_mode='ce', template_mask=mask)
        mce = run_branches([a, b], z, x, ce_mode='mce', template_mask=mask)
        mce_from_b = run_branches([a, b], z, x, ce_mode='mce', template_mask=mask, selection_from=(1,))
    # 64 search tokens -> ceil(0.7*64)=45 -> ceil(0.7*45)=32
    assert [r.shape[1] for r in ce.removed_index_search[0]] == [19, 13]
    # plain CE: branch b chooses exactly as when it runs alone
    assert torch.equal(ce.global_index_search[1], alone.global_index_search[0])
    assert torch.equal(ce.tokens[1], alone.tokens[0])
    assert not torch.equal(ce.global_index_search[0], ce.global_index_search[1])
    # MCE: both branches keep the same positions
    assert torch.equal(mce.global_index_search[0], mce.global_index_search[1])
    # MCE choosing from branch b alone reproduces b's own plain-CE selection, imposed on a
    assert torch.equal(mce_from_b.global_index_search[0], alone.global_index_search[0])
    assert torch.equal(mce_from_b.tokens[1], alone.tokens[0])


def test_keep_ratio_one_and_ce_off_keep_every_token():
    a, b = _small_branch(3), _small_branch(4)
    z, x = _small_inputs()
    with torch.no_grad():
        off = run_branches([a, b], z, x, ce_mode='off')
        full = run_branches([a, b], z, x, ce_mode='mce', keep_ratio=1.0)
    assert off.removed_index_search == [[], []]
    assert torch.equal(off.global_index_search[0][0], torch.arange(64))
    for i in range(2):
        torch.testing.assert_close(full.tokens[i], off.tokens[i], atol=1e-6, rtol=0)


def test_block_features_and_search_token_keep():
    a = _small_branch(5, ce_loc=(), keep=())
    z, x = _small_inputs()
    with torch.no_grad():
        run = run_branches([a], z[:1], x[:1], return_block_features=True)
        assert len(run.block_features[0]) == 4 and run.block_features[0][0].shape == (2, 80, 64)
        torch.testing.assert_close(a.norm(run.block_features[0][-1]), run.tokens[0], atol=0, rtol=0)
        ones = run_branches([a], z[:1], x[:1], search_token_keep=torch.ones(2, 64))
        assert torch.equal(ones.tokens[0], run.tokens[0])
        keep = torch.ones(2, 64)
        keep[:, 5] = 0
        tokens = a.embed(z[0], x[0], keep)
        # a dropped search token carries only its positional embedding
        torch.testing.assert_close(tokens[:, 16 + 5], a.pos_embed_x[0, 5].expand(2, -1), atol=0, rtol=0)
        masked = run_branches([a, a], [z[0]] * 2, [x[0]] * 2, search_token_keep=[None, keep])
        assert torch.equal(masked.tokens[0], run.tokens[0])
        assert not torch.equal(masked.tokens[1], run.tokens[0])


def test_drop_path_is_active_only_in_training():
    torch.manual_seed(0)
    branch = VisionTransformerCE(template_size=32, search_size=64, embed_dim=32, depth=3, num_heads=2,
                                 drop_path_rate=0.5)
    z, x = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 64, 64)
    branch.eval()
    with torch.no_grad():
        first = run_branches([branch], [z], [x]).tokens[0]
        assert torch.equal(first, run_branches([branch], [z], [x]).tokens[0])
        branch.train()
        assert not torch.equal(first, run_branches([branch], [z], [x]).tokens[0])
    assert [blk.drop_path.drop_prob for blk in branch.blocks[1:]] == pytest.approx([0.25, 0.5])


def test_template_masks():
    point = template_center_mask('CTR_POINT', 8, 3)
    assert point.shape == (3, 64) and point.sum(1).tolist() == [1, 1, 1] and point[0, 27]
    rec = template_center_mask('CTR_REC', 8, 1)
    assert sorted(torch.nonzero(rec[0]).flatten().tolist()) == [27, 28, 35, 36]
    assert template_center_mask('ALL', 8, 1) is None
    with pytest.raises(ValueError, match='GT_BOX'):
        template_center_mask('GT_BOX', 8, 1)


def test_bad_inputs_are_rejected():
    a = _small_branch(6)
    z, x = _small_inputs()
    with pytest.raises(ValueError, match='ce_mode'):
        run_branches([a], z[:1], x[:1], ce_mode='max')
    with pytest.raises(ValueError, match='one template and one search per branch'):
        run_branches([a, a], z[:1], x)
    with pytest.raises(ValueError, match='search'):
        run_branches([a], z[:1], [torch.randn(2, 3, 96, 96)])
    with pytest.raises(ValueError, match='template_mask'):
        run_branches([a], z[:1], x[:1], ce_mode='ce', template_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match='selection_from'):
        run_branches([a], z[:1], x[:1], ce_mode='mce', selection_from=(3,))
    with pytest.raises(ValueError, match='head input'):
        CKDNet(a, a, CenterHead(64, channels=16, feat_size=8))


# ---- configurations ------------------------------------------------------------------------------

def test_official_configs_have_the_official_values():
    from ckd_ros.core.config import OFFICIAL_CONFIG_NAMES, load_config
    cfgs = {name: load_config(name) for name in OFFICIAL_CONFIG_NAMES}
    for cfg in cfgs.values():
        assert cfg.is_official
        assert (cfg.DATA.TEMPLATE.SIZE, cfg.DATA.SEARCH.SIZE, cfg.TEST.SEARCH_FACTOR, cfg.TEST.TEMPLATE_FACTOR) == \
            (128, 256, 4.0, 2.0)
        assert (cfg.MODEL.BACKBONE.EMBED_DIM, cfg.MODEL.BACKBONE.DEPTH, cfg.MODEL.HEAD.NUM_CHANNELS) == (768, 12, 256)
        assert cfg.MODEL.BACKBONE.CE_TEMPLATE_RANGE == 'CTR_POINT' and cfg.TRAIN.GRAD_CLIP_NORM == 0.1
        assert cfg.TRAIN.SCHEDULER.TYPE is None and cfg.TRAIN.CE_START_EPOCH == 0
        assert cfg.TEST.LOST_THRESHOLD is None and cfg.TEST.TEMPLATE_UPDATE_INTERVAL == 0
        assert cfg.TEST.MAX_SCALE_CHANGE is None and cfg.TEST.REDETECT_GROWTH is None
    mce = cfgs[MCE]
    assert mce.MODEL.BACKBONE.CE_LOC == [3, 6, 9] and mce.MODEL.BACKBONE.CE_KEEP_RATIO == [0.7, 0.7, 0.7]
    assert (mce.TRAIN.BATCH_SIZE, mce.TRAIN.EPOCH, mce.TEST.EPOCH, mce.TRAIN.MASK_PROBABILITY) == (64, 10, 10, 0)
    assert mce.TRAIN.PARAM_KEY == [['head', 5e-5]]
    assert cfgs[NONCE].TRAIN.INPUT_MASK_RATIO == 0.25 and cfgs[NONCE].DATA.TRAIN.SAMPLE_PER_EPOCH == 60000
    assert cfgs[SHARE].MODEL.SHARE_STUDENT and cfgs[SHARE].TEST.EPOCH == 20
    assert cfgs[SOT].MODEL.PRETRAIN_FILE.endswith('OSTrack_ep0300.pth.tar')


def test_small_configs_build_the_same_architecture_smaller():
    from ckd_ros.core.config import load_config
    tiny = build_ckd_model('ckd_tiny', initialize=False)
    cfg = load_config('ckd_tiny')
    assert tiny.ce_mode == 'mce' and tiny.rgb_branch.ce_loc == tuple(cfg.MODEL.BACKBONE.CE_LOC)
    assert tiny.box_head.in_channels == 2 * cfg.MODEL.BACKBONE.EMBED_DIM
    assert tiny.box_head.feat_sz == cfg.DATA.SEARCH.SIZE // 16
    assert set(k.split('.')[0] for k in tiny.state_dict()) == {'rgb_branch', 'tir_branch', 'box_head'}
    small = load_config('ckd_small')
    assert small.MODEL.BACKBONE.EMBED_DIM == 384 and small.MODEL.BACKBONE.CE_LOC == [3, 6, 9]


def test_config_errors_name_the_problem(tmp_path):
    from ckd_ros.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="unknown configuration name 'ckd_medium'"):
        load_config('ckd_medium')
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'absent.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('MODEL:\n  BACKBONE:\n    CE_LOCS: [3]\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: unknown key MODEL.BACKBONE.CE_LOCS'):
        load_config(bad)
    cases = [
        ({'MODEL': {'BACKBONE': {'CE_KEEP_RATIO': [0.7, 1.5, 0.7]}}}, 'CE_KEEP_RATIO entries must be in'),
        ({'MODEL': {'BACKBONE': {'EMBED_DIM': 100, 'NUM_HEADS': 12}}}, 'divisible by NUM_HEADS'),
        ({'MODEL': {'BACKBONE': {'CE_LOC': [6, 3]}}}, 'strictly increasing'),
        ({'MODEL': {'BACKBONE': {'CE_TEMPLATE_RANGE': 'GT_BOX'}}}, 'GT_BOX is not supported'),
        ({'MODEL': {'SHARE_STUDENT': 'yes'}}, 'SHARE_STUDENT must be true/false'),
        ({'DATA': {'SEARCH': {'SIZE': 250}}}, 'multiple of MODEL.BACKBONE.STRIDE'),
        ({'DATA': {'SEARCH': {'SIZE': 320}}}, 'must equal DATA.TEMPLATE.SIZE/DATA.SEARCH.SIZE'),
        ({'TRAIN': {'BATCH_SIZE': 2.5}}, 'must be an integer'),
        ({'TEST': {'LOST_THRESHOLD': 3}}, 'LOST_THRESHOLD must be null or in'),
        ({'TEST': {'REDETECT_GROWTH': 1.0}}, 'REDETECT_GROWTH must be null or in'),
        ({'TEST': {'REDETECT_MAX_FACTOR': 20}}, 'REDETECT_MAX_FACTOR must be in'),
        ({'MODEL': {'HEAD': {'TYPE': 'CORNER'}}}, 'must be CENTER'),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(MCE, overrides=overrides)
    good = tmp_path / 'custom.yaml'
    good.write_text('MODEL:\n  BACKBONE:\n    CE_LOC: [3, 6, 9]\n    CE_KEEP_RATIO: [0.7, 0.7, 0.7]\n'
                    '    CE_TEMPLATE_RANGE: CTR_POINT\n    CE_MODE: CE\n')
    cfg = load_config(good)
    assert cfg.name == 'custom' and not cfg.is_official and cfg.MODEL.BACKBONE.CE_MODE == 'CE'
    assert build_ckd_model(cfg, initialize=False).ce_mode == 'ce'
