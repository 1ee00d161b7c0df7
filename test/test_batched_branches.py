"""The batched inference path of the branches (stacked weights, shared-student batch, search-only
last block) against the per-branch path, on small random networks (fast, no reference data)."""
from __future__ import annotations

import copy

import pytest
import torch

from ckd_ros.core.model import (CenterHead, CKDNet, StackedBranchWeights, VisionTransformerCE, run_branches,
                                template_center_mask)

TOL = 1e-5


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


def _branch(seed, ce_loc=(1, 2), keep=(0.7, 0.7), depth=4):
    torch.manual_seed(seed)
    branch = VisionTransformerCE(template_size=64, search_size=128, patch_size=16, embed_dim=64, depth=depth,
                                 num_heads=4, ce_loc=ce_loc, ce_keep_ratio=keep).eval()
    # LayerNorms away from 1/0, so that a wrong scale or shift shows
    with torch.no_grad():
        for module in branch.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return branch


def _network(seed, shared=False, ce_mode='mce', ce_loc=(1, 2)):
    rgb = _branch(seed, ce_loc=ce_loc, keep=(0.7,) * len(ce_loc))
    tir = rgb if shared else _branch(seed + 100, ce_loc=ce_loc, keep=(0.7,) * len(ce_loc))
    torch.manual_seed(seed + 200)
    return CKDNet(rgb, tir, CenterHead(128, channels=16, feat_size=8), ce_mode=ce_mode).eval()


def _inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 64, 64, generator=g) for _ in range(2)],
            [torch.randn(batch, 3, 128, 128, generator=g) for _ in range(2)])


def _run(network, inputs, **kwargs):
    templates, searches = inputs
    with torch.inference_mode():
        return network(templates, searches, ce_template_mask=network.template_mask(templates[0].shape[0], 'cpu'),
                       **kwargs)


def _assert_same(got, want, maps_only=False):
    names = ('score_map', 'size_map', 'offset_map', 'pred_boxes') + (() if maps_only else ('backbone_feat',))
    for name in names:
        assert got[name].shape == want[name].shape, name
        assert float((got[name] - want[name]).abs().max()) <= TOL, name
    for aux in ('aux_dict_rgb', 'aux_dict_tir'):
        for a, b in zip(got[aux]['removed_indexes_s'], want[aux]['removed_indexes_s']):
            assert torch.equal(a, b)
        assert torch.equal(got[aux]['global_index_s'], want[aux]['global_index_s'])


@pytest.mark.parametrize('ce_mode', ['mce', 'ce', 'off'])
@pytest.mark.parametrize('batch', [1, 2])
def test_batched_equals_per_branch(ce_mode, batch):
    network = _network(1, ce_mode=ce_mode)
    inputs = _inputs(batch)
    per_branch = _run(network, inputs, batch_branches=False)
    batched = _run(network, inputs)
    assert network._stacked_weights._blocks is not None, 'the batched path must have run'
    _assert_same(batched, per_branch)
    if ce_mode == 'ce':  # per-branch CE: the two branches choose differently, and each keeps its choice
        assert not torch.equal(batched['aux_dict_rgb']['global_index_s'], batched['aux_dict_tir']['global_index_s'])


@pytest.mark.parametrize('batch', [1, 2])
def test_shared_student_batch_equals_per_branch(batch):
    network = _network(2, shared=True)
    inputs = _inputs(batch)
    per_branch = _run(network, inputs, batch_branches=False)
    batched = _run(network, inputs)
    assert network._stacked_weights._blocks is None  # one weight set: no stack, one batch of both modalities
    _assert_same(batched, per_branch)


@pytest.mark.parametrize('ce_mode,shared', [('mce', False), ('off', False), ('ce', True)])
def test_search_only_gives_the_same_maps(ce_mode, shared):
    network = _network(3, shared=shared, ce_mode=ce_mode)
    inputs = _inputs(2)
    full = _run(network, inputs, batch_branches=False)
    for batch_branches in (False, True):
        trimmed = _run(network, inputs, search_only=True, batch_branches=batch_branches)
        _assert_same(trimmed, full, maps_only=True)
        lens_t = network.rgb_branch.num_template_tokens
        assert trimmed['backbone_feat'].shape == (2, network.rgb_branch.num_search_tokens, 128)
        assert float((trimmed['backbone_feat'] - full['backbone_feat'][:, lens_t:]).abs().max()) <= TOL


def test_block_features_of_a_batched_run():
    a, b = _branch(4), _branch(5)
    templates, searches = _inputs(2)
    mask = template_center_mask('CTR_POINT', 4, 2)
    stack = StackedBranchWeights()
    with torch.no_grad():
        plain = run_branches([a, b], templates, searches, ce_mode='mce', template_mask=mask, return_block_features=True)
        batched = run_branches([a, b], templates, searches, ce_mode='mce', template_mask=mask,
                               return_block_features=True, stacked_weights=stack.get([a, b]))
    for i in range(2):
        assert len(batched.block_features[i]) == 4
        for got, want in zip(batched.block_features[i], plain.block_features[i]):
            assert got.shape == want.shape and float((got - want).abs().max()) <= TOL
        assert float((batched.tokens[i] - plain.tokens[i]).abs().max()) <= TOL


def test_stack_is_views_not_a_copy_and_follows_weight_changes():
    network = _network(6)
    inputs = _inputs(1)
    keys = list(network.state_dict())
    before = _run(network, inputs, batch_branches=False)
    _run(network, inputs)
    stack = network._stacked_weights._blocks
    qkv_rgb, qkv_tir = network.rgb_branch.blocks[1].attn.qkv.weight, network.tir_branch.blocks[1].attn.qkv.weight
    assert qkv_rgb.data_ptr() == stack[1]['attn.qkv'][0][0].data_ptr()
    assert qkv_tir.data_ptr() == stack[1]['attn.qkv'][0][1].data_ptr()
    assert qkv_rgb.is_leaf and isinstance(qkv_rgb, torch.nn.Parameter)
    assert list(network.state_dict()) == keys
    # in-place loading (load_state_dict copies) reaches the stack without a rebuild
    other = _network(7)
    network.load_state_dict(other.state_dict())
    assert network._stacked_weights._blocks is stack
    _assert_same(_run(network, inputs), _run(other, inputs, batch_branches=False))
    # assign=True replaces the parameters: the next batched call restacks
    network.load_state_dict({k: v.clone() for k, v in before_state(6).items()}, assign=True)
    _assert_same(_run(network, inputs), before)
    assert network._stacked_weights._blocks is not stack


def before_state(seed):
    return _network(seed).state_dict()


def test_copies_get_their_own_stack_and_no_shared_storage():
    network = _network(8)
    inputs = _inputs(1)
    want = _run(network, inputs)
    copied = copy.deepcopy(network)
    assert copied._stacked_weights._blocks is None
    assert (copied.rgb_branch.blocks[0].mlp.fc1.weight.data_ptr()
            != network.rgb_branch.blocks[0].mlp.fc1.weight.data_ptr())
    _assert_same(_run(copied, inputs), want)


def test_quantised_copy_runs_per_branch():
    from ckd_ros.core.acceleration import quantize_linear_int8
    network = _network(9)
    inputs = _inputs(1)
    _run(network, inputs)  # the original has a stack; the quantised copy cannot use one
    quantized = quantize_linear_int8(network)
    out = _run(quantized, inputs)
    assert quantized._stacked_weights._blocks is None
    assert float((out['score_map'] - _run(network, inputs)['score_map']).abs().max()) < 0.1


def test_training_after_a_batched_inference_is_unchanged():
    """Stacking re-points the parameters' storage; gradients and optimiser steps must not notice."""
    reference = _network(10)
    network = copy.deepcopy(reference)
    inputs = _inputs(2)
    _run(network, inputs)  # builds the stack
    assert network._stacked_weights._blocks is not None
    templates, searches = inputs
    for model in (reference, network):
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(templates, searches, ce_template_mask=model.template_mask(2, 'cpu'), return_block_features=True)
        loss = (out['score_map'].sum() + out['size_map'].square().sum()
                + out['aux_dict_rgb']['x_list'][-1].square().mean())
        loss.backward()
        optimiser.step()
        model.eval()
    for (name, p), q in zip(reference.named_parameters(), network.parameters()):
        if '.blocks.' in name:
            assert p.grad is not None and q.grad is not None, name
        assert (p.grad is None) == (q.grad is None), name  # cls_token and the ImageNet pos_embed are unused
        if p.grad is not None:
            assert float((p.grad - q.grad).abs().max()) <= TOL, name
        assert float((p - q).detach().abs().max()) <= TOL, name
    # the optimiser step went into the stack: the batched path sees the new weights
    _assert_same(_run(network, inputs), _run(reference, inputs, batch_branches=False))


def test_batched_path_is_not_used_with_gradients():
    network = _network(11)
    templates, searches = _inputs(1)
    out = network(templates, searches, ce_template_mask=network.template_mask(1, 'cpu'))
    assert network._stacked_weights._blocks is None
    assert out['score_map'].requires_grad


def test_to_drops_the_stack():
    network = _network(12)
    _run(network, _inputs(1))
    assert network._stacked_weights._blocks is not None
    network.to(torch.float64)
    assert network._stacked_weights._blocks is None
    network.float()
    _assert_same(_run(network, _inputs(1)), _run(network, _inputs(1), batch_branches=False))


def test_stacked_weights_refuse_repeated_branches():
    a = _branch(13)
    assert StackedBranchWeights().get([a, a]) is None
    templates, searches = _inputs(1)
    with pytest.raises(ValueError, match='distinct'):
        run_branches([a, a], templates, searches, stacked_weights=StackedBranchWeights().get([a, _branch(14)]))
