"""Checkpoint loading (restricted unpickler, key mapping, errors), writing, and ViT/tracker imports."""
import os
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from ckd_ros.core.checkpoint import (CheckpointError, PickledTrainingObject, inference_state_dict, load_model_weights,
                                     load_tracker_head, load_vit_weights, read_checkpoint, save_checkpoint)
from ckd_ros.core.config import load_config
from ckd_ros.core.model import build_branch, build_ckd_model, build_head

SMALL = {'MODEL': {'BACKBONE': {'EMBED_DIM': 32, 'DEPTH': 2, 'NUM_HEADS': 2}, 'HEAD': {'NUM_CHANNELS': 16}},
         'DATA': {'TEMPLATE': {'SIZE': 64}, 'SEARCH': {'SIZE': 128}},
         'TEST': {'TEMPLATE_SIZE': 64, 'SEARCH_SIZE': 128}}


@pytest.fixture(scope='module')
def cfg():
    return load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25', overrides=SMALL)


@pytest.fixture
def model(cfg):
    torch.manual_seed(0)
    return build_ckd_model(cfg)


def _training_net(model, cfg):
    """A training-mode ``net``: the inference keys followed by teachers and teacher heads."""
    torch.manual_seed(1)
    net = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    for name in ('teacher_rgb', 'teacher_tir'):
        for k, v in build_branch(cfg).state_dict().items():
            net[f'{name}.{k}'] = v
    for name in ('box_head_v', 'box_head_i'):
        for k, v in build_head(cfg, cfg.MODEL.BACKBONE.EMBED_DIM).state_dict().items():
            net[f'{name}.{k}'] = v
    return net


@pytest.fixture
def official_classes(monkeypatch):
    """Classes named lib.train.admin.* as the official trainer pickles them (test side only)."""
    made = {}
    for mod_name, cls_names in (('lib.train.admin.settings', ['Settings']),
                                ('lib.train.admin.stats', ['AverageMeter', 'StatValue']),
                                ('lib.train.admin.local', ['EnvironmentSettings'])):
        module = types.ModuleType(mod_name)
        for cls_name in cls_names:
            cls = type(cls_name, (), {'__module__': mod_name})
            setattr(module, cls_name, cls)
            made[cls_name] = cls
        monkeypatch.setitem(sys.modules, mod_name, module)
    for parent in ('lib', 'lib.train', 'lib.train.admin'):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    return made


def _official_file(tmp_path, model, cfg, classes, name='OSTrack_CKD_ep0030.pth.tar', net=None):
    env = classes['EnvironmentSettings']()
    env.workspace_dir = '/data/ckd'
    env.lasher_dir = '/data/LasHeR'
    settings = classes['Settings']()
    settings.env = env
    settings.use_gpu = True
    settings.script_name = 'ckd'
    settings.device = torch.device('cpu')
    meter = classes['AverageMeter']()
    meter.val, meter.avg, meter.sum, meter.count = 0.5, 0.25, 10.0, 40
    value = classes['StatValue']()
    value.val, value.history = 0.1, [0.1, 0.2]
    params = [torch.nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)
    params[0].sum().backward()
    optimizer.step()
    payload = {'epoch': 30, 'actor_type': 'OSTrack_CKD_Actor', 'net_type': 'OSTrack_CKD',
               'net': net if net is not None else _training_net(model, cfg), 'net_info': None, 'constructor': None,
               'optimizer': optimizer.state_dict(),
               'stats': OrderedDict(train=OrderedDict(Loss=meter, LearningRate=value)),
               'settings': settings}
    path = tmp_path / name
    torch.save(payload, path)
    return path


def _fresh(cfg):
    torch.manual_seed(123)
    return build_ckd_model(cfg)


def test_official_file_loads_with_stand_ins_and_ignores_training_parts(tmp_path, model, cfg, official_classes):
    path = _official_file(tmp_path, model, cfg, official_classes)
    for name in [m for m in sys.modules if m == 'lib' or m.startswith('lib.')]:
        sys.modules.pop(name)  # the loader must not need the official classes
    raw = read_checkpoint(path)
    branch_keys = len(build_branch(cfg).state_dict())
    assert raw['epoch'] == 30 and len(raw['net']) == len(model.state_dict()) + 2 * branch_keys + 2 * 90
    settings = raw['settings']
    assert isinstance(settings, PickledTrainingObject) and settings.official_name == 'lib.train.admin.settings.Settings'
    assert settings.env.lasher_dir == '/data/LasHeR' and settings.device == torch.device('cpu')
    assert raw['stats']['train']['Loss'].avg == 0.25
    target = _fresh(cfg)
    load_model_weights(target, path)
    for k, v in model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    path = tmp_path / 'evil.pth.tar'
    torch.save({'net': {'rgb_branch.cls_token': torch.zeros(1)}, 'settings': Exploit()}, path)
    with pytest.raises(CheckpointError, match='refusing to load .*system'):
        read_checkpoint(path)
    assert not marker.exists()

    class Builtin:
        def __reduce__(self):
            return eval, ("print('x')",)

    torch.save([Builtin()], path)
    with pytest.raises(CheckpointError, match='refusing'):
        read_checkpoint(path)


def test_missing_and_unexpected_keys_are_listed(model, cfg):
    state = OrderedDict(model.state_dict())
    del state['rgb_branch.blocks.1.mlp.fc2.bias']
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): \['rgb_branch.blocks.1.mlp.fc2.bias'\]"):
        inference_state_dict({'net': state}, _fresh(cfg))
    state = OrderedDict(model.state_dict())
    state['box_head.extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): \['box_head.extra.weight'\]"):
        inference_state_dict(state, _fresh(cfg))


def test_module_prefix_optional_keys_and_plain_state_dict(model, cfg):
    state = OrderedDict(('module.' + k, v) for k, v in model.state_dict().items()
                        if not k.endswith(('.cls_token', '.pos_embed', 'num_batches_tracked')))
    target = load_model_weights(_fresh(cfg), state)
    sd = target.state_dict()
    assert torch.equal(sd['rgb_branch.blocks.0.attn.qkv.weight'],
                       model.state_dict()['rgb_branch.blocks.0.attn.qkv.weight'])
    assert torch.count_nonzero(sd['rgb_branch.pos_embed']) == 0  # never read at inference: zero-filled


def test_wrong_shape_dtype_and_nan_are_named(model, cfg):
    good = model.state_dict()
    bad = OrderedDict(good)
    bad['box_head.conv1_ctr.0.weight'] = torch.zeros(16, 32, 3, 3)
    with pytest.raises(CheckpointError, match=r'box_head.conv1_ctr.0.weight: shape \(16, 32, 3, 3\)'):
        inference_state_dict(bad, _fresh(cfg))
    bad = OrderedDict(good)
    bad['tir_branch.norm.weight'] = torch.ones(32, dtype=torch.int32)
    with pytest.raises(CheckpointError, match='tir_branch.norm.weight: dtype torch.int32'):
        inference_state_dict(bad, _fresh(cfg))
    bad = OrderedDict(good)
    bad['tir_branch.norm.bias'] = torch.full((32,), float('nan'))
    with pytest.raises(CheckpointError, match='tir_branch.norm.bias: contains NaN'):
        inference_state_dict(bad, _fresh(cfg))
    half = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in good.items())
    converted = inference_state_dict(half, _fresh(cfg))
    assert converted['box_head.conv5_ctr.weight'].dtype == torch.float32


def test_truncated_and_foreign_files(tmp_path, model):
    path = tmp_path / 'ckpt.pth.tar'
    save_checkpoint(path, model.state_dict(), epoch=3)
    data = path.read_bytes()
    cut = tmp_path / 'cut.pth.tar'
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or not a torch checkpoint'):
        read_checkpoint(cut)
    text = tmp_path / 'notes.pth.tar'
    text.write_text('hello')
    with pytest.raises(CheckpointError, match='truncated or not a torch checkpoint'):
        read_checkpoint(text)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_checkpoint(tmp_path / 'absent.pth.tar')
    with pytest.raises(CheckpointError, match='expected a checkpoint dict'):
        inference_state_dict([1, 2], model)


def test_save_checkpoint_official_layout_atomic_roundtrip(tmp_path, model, cfg):
    path = tmp_path / 'out' / 'OSTrack_CKD_ep0005.pth.tar'
    stats = OrderedDict(train=OrderedDict(Loss={'avg': 0.5}))
    save_checkpoint(path, _training_net(model, cfg), epoch=5, stats=stats, settings={'script_name': 'ckd'})
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary file left
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert set(raw) == {'epoch', 'actor_type', 'net_type', 'net', 'net_info', 'constructor', 'optimizer', 'stats',
                        'settings'}
    assert raw['epoch'] == 5 and raw['net_type'] == 'OSTrack_CKD' and raw['actor_type'] == 'OSTrack_CKD_Actor'
    n = len(model.state_dict())
    assert list(raw['net'])[:n] == list(model.state_dict())
    target = load_model_weights(_fresh(cfg), path)
    assert torch.equal(target.state_dict()['box_head.conv5_size.bias'], model.state_dict()['box_head.conv5_size.bias'])
    with pytest.raises(ValueError, match='epoch'):
        save_checkpoint(path, model.state_dict(), epoch=-1)


def test_shared_student_checks_rgb_equals_tir(cfg):
    share_cfg = cfg.with_overrides({'MODEL': {'SHARE_STUDENT': True}})
    torch.manual_seed(2)
    share = build_ckd_model(share_cfg)
    assert share.shares_student
    good = share.state_dict()  # rgb_branch.* and tir_branch.* alias the same tensors
    load_model_weights(build_ckd_model(share_cfg), good)
    torch.manual_seed(3)
    two = build_ckd_model(cfg).state_dict()
    with pytest.raises(CheckpointError, match='shares one student'):
        load_model_weights(build_ckd_model(share_cfg), two)


def test_vit_import_timm_mae_and_dropmae_tracker_layouts(cfg):
    branch = build_branch(cfg)
    torch.manual_seed(4)
    embed = cfg.MODEL.BACKBONE.EMBED_DIM
    vit = OrderedDict((k, torch.randn_like(v)) for k, v in branch.state_dict().items()
                      if k not in ('pos_embed_z', 'pos_embed_x'))
    vit['head.weight'] = torch.randn(1000, embed)
    report = load_vit_weights(branch, {'model': dict(vit, **{'decoder_embed.weight': torch.randn(4, embed),
                                                              'mask_token': torch.randn(1, 1, embed)})})
    assert report.layout == 'mae' and 'decoder_embed.weight' in report.ignored and 'head.weight' in report.ignored
    grid = vit['pos_embed'][:, 1:].reshape(1, 14, 14, embed).permute(0, 3, 1, 2)
    want_z = F.interpolate(grid, size=(4, 4), mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(branch.pos_embed_z, want_z, atol=0, rtol=0)
    assert torch.equal(branch.blocks[1].mlp.fc1.weight, vit['blocks.1.mlp.fc1.weight'])
    assert load_vit_weights(build_branch(cfg), vit).layout == 'timm'

    # DropTrack file: backbone.* with 4x4/8x8 tables at another grid plus temporal tables
    track = OrderedDict(('backbone.' + k, v) for k, v in vit.items() if not k.startswith('head.'))
    track['backbone.pos_embed_z'] = torch.randn(1, 36, embed)
    track['backbone.pos_embed_x'] = torch.randn(1, 64, embed)
    track['backbone.temporal_pos_embed_z'] = torch.randn(1, 16, embed)
    track['backbone.temporal_pos_embed_x'] = torch.randn(1, 64, embed)
    branch = build_branch(cfg)
    report = load_vit_weights(branch, {'net': track})
    assert report.layout == 'dropmae_track' and report.resized == ['pos_embed_z']
    want_z = F.interpolate(track['backbone.pos_embed_z'].reshape(1, 6, 6, embed).permute(0, 3, 1, 2), size=(4, 4),
                           mode='bilinear', align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(branch.pos_embed_z, want_z + track['backbone.temporal_pos_embed_z'], atol=1e-6, rtol=0)
    torch.testing.assert_close(branch.pos_embed_x,
                               track['backbone.pos_embed_x'] + track['backbone.temporal_pos_embed_x'])
    del track['backbone.blocks.0.attn.qkv.weight']
    with pytest.raises(CheckpointError, match='blocks.0.attn.qkv.weight'):
        load_vit_weights(build_branch(cfg), {'net': track})
    wrong = OrderedDict(vit)
    wrong['blocks.0.mlp.fc1.weight'] = torch.randn(7, embed)
    with pytest.raises(CheckpointError, match='different ViT size'):
        load_vit_weights(build_branch(cfg), wrong)


def test_tracker_head_import_duplicates_first_convs_for_the_fused_head(cfg):
    single = build_head(cfg, cfg.MODEL.BACKBONE.EMBED_DIM)
    state = {'net': OrderedDict(('box_head.' + k, v) for k, v in single.state_dict().items())}
    fused = build_head(cfg, 2 * cfg.MODEL.BACKBONE.EMBED_DIM)
    report = load_tracker_head(fused, state)
    assert report.resized == ['conv1_ctr.0.weight', 'conv1_offset.0.weight', 'conv1_size.0.weight']
    w = single.conv1_ctr[0].weight
    assert torch.equal(fused.conv1_ctr[0].weight, torch.cat([w, w], dim=1))
    assert torch.equal(fused.conv5_size.bias, single.conv5_size.bias)
    teacher = build_head(cfg, cfg.MODEL.BACKBONE.EMBED_DIM)
    assert load_tracker_head(teacher, state).resized == []
    with pytest.raises(CheckpointError, match='does not fit'):
        load_tracker_head(fused, state, duplicate_inputs=False)
