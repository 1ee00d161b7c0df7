"""The CKD inference network (official ``OSTrack_CKD`` in eval mode) and its builder."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import CKDConfig, load_config
from .elimination import run_branches, template_center_mask
from .head import CenterHead
from .vit import StackedBranchWeights, VisionTransformerCE


class CKDNet(nn.Module):
    """RGB branch + TIR branch + fused CENTER head (state-dict keys ``rgb_branch.*``,
    ``tir_branch.*``, ``box_head.*`` exactly as the official inference model).

    With a shared student (``rgb_branch is tir_branch``) both key groups exist and alias the same
    storage, as in the official model; unlike the official greenlet code (defect D4), the forward runs.

    ``ce_mode``: ``"mce"`` (official when the branches have CE blocks), ``"ce"`` (per-branch
    selection) or ``"off"``.

    ``batch_branches`` (default True): with gradients disabled (inference), the two branches run as
    one batched computation per layer (:func:`run_branches` with ``stacked_weights``; the branch
    parameters become views of per-layer stacks, no second copy, see
    :class:`~ckd_ros.core.model.vit.StackedBranchWeights`), a shared student as one batch of both
    modalities.  Same numbers up to float rounding (<= 1e-5); faster with several threads, where
    one product of twice the rows parallelises better than two.  With gradients, while tracing
    (ONNX export), or with False, each branch runs on its own.
    """

    def __init__(self, rgb_branch: VisionTransformerCE, tir_branch: VisionTransformerCE,
                 box_head: CenterHead, ce_mode: str = 'mce', ce_template_range: str = 'CTR_POINT'):
        super().__init__()
        if box_head.in_channels != rgb_branch.embed_dim + tir_branch.embed_dim:
            raise ValueError(f'head input {box_head.in_channels} != {rgb_branch.embed_dim} + {tir_branch.embed_dim}')
        if box_head.feat_sz != rgb_branch.search_feat_size:
            raise ValueError(f'head feature size {box_head.feat_sz} != search grid {rgb_branch.search_feat_size}')
        self.rgb_branch = rgb_branch
        self.tir_branch = tir_branch
        self.box_head = box_head
        self.ce_mode = ce_mode if rgb_branch.ce_loc else 'off'
        self.ce_template_range = ce_template_range
        self.batch_branches = True
        self._stacked_weights = StackedBranchWeights()

    def _apply(self, fn, recurse=True):
        # .to()/.half() give the parameters new storage: let the old stack go now, not at the next forward
        self._stacked_weights.clear()
        return super()._apply(fn, recurse)

    @property
    def shares_student(self) -> bool:
        return self.rgb_branch is self.tir_branch

    @property
    def uses_elimination(self) -> bool:
        return self.ce_mode != 'off'

    def template_mask(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """The CE template mask the official tracker builds (None when CE is off)."""
        if not self.uses_elimination:
            return None
        return template_center_mask(self.ce_template_range, self.rgb_branch.template_feat_size, batch, device)

    def embed_templates(self, template: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[z_rgb, z_tir]`` crops -> their template tokens (``z + pos_z`` per branch), which
        :meth:`forward` accepts in place of the crops (computed once per target by the tracker)."""
        if len(template) != 2:
            raise ValueError('CKDNet needs template=[rgb, tir]')
        return [self.rgb_branch.embed_template(template[0]), self.tir_branch.embed_template(template[1])]

    def forward(self, template: Sequence[torch.Tensor], search: Sequence[torch.Tensor],
                ce_template_mask: torch.Tensor | None = None, ce_keep_rate: float | None = None,
                return_block_features: bool = False, search_only: bool = False,
                batch_branches: bool | None = None, peak_weight: torch.Tensor | None = None) -> dict:
        """Official signature: ``template=[z_rgb, z_tir]``, ``search=[x_rgb, x_tir]`` normalised crops
        (the templates may also be the tokens of :meth:`embed_templates`).

        Returns ``pred_boxes`` (B,1,4), ``score_map``, ``size_map``, ``offset_map``,
        ``backbone_feat`` (B, Lt+Ls, 2C), ``aux_dict_rgb`` / ``aux_dict_tir`` with
        ``removed_indexes_s`` (list per CE block) and ``global_index_s``, and with
        ``return_block_features`` also ``x_list`` per branch.

        ``search_only``: the last block skips the template tokens' outputs, which only
        ``backbone_feat`` shows (the head reads the search tokens): same maps, ``backbone_feat`` is
        then (B, Ls, 2C).  ``batch_branches``: overrides the attribute of that name for this call.
        ``peak_weight`` (B or 1, 1, F, F), e.g. the tracker's Hann window: ``size_map`` and
        ``offset_map`` only at the arg-max of ``peak_weight * score_map`` (NaN elsewhere), which is
        all a GT-free decode reads; ``pred_boxes`` are decoded from that product
        (:meth:`CenterHead.maps_at_peak`).
        """
        if len(template) != 2 or len(search) != 2:
            raise ValueError('CKDNet needs template=[rgb, tir] and search=[rgb, tir]')
        if batch_branches is None:
            batch_branches = self.batch_branches
        batch_branches = batch_branches and not torch.is_grad_enabled() and not torch.jit.is_tracing()
        branches = [self.rgb_branch, self.tir_branch]
        stacked = self._stacked_weights.get(branches) if batch_branches and not self.shares_student else None
        run = run_branches(branches, template, search, ce_mode=self.ce_mode,
                           template_mask=ce_template_mask, keep_ratio=ce_keep_rate,
                           return_block_features=return_block_features, stacked_weights=stacked,
                           batch_branches=batch_branches, search_only=search_only)
        feat = torch.cat(run.tokens, dim=2)
        out = self.box_head.forward_tokens(feat, peak_weight=peak_weight)
        out['backbone_feat'] = feat
        for i, name in enumerate(('aux_dict_rgb', 'aux_dict_tir')):
            out[name] = {'removed_indexes_s': run.removed_index_search[i],
                         'global_index_s': run.global_index_search[i],
                         'x_list': run.block_features[i] if return_block_features else []}
        return out


def build_branch(cfg: CKDConfig, drop_path_rate: float | None = None) -> VisionTransformerCE:
    """One backbone branch sized by ``cfg`` (``drop_path_rate`` defaults to TRAIN.DROP_PATH_RATE)."""
    backbone = cfg.MODEL.BACKBONE
    return VisionTransformerCE(
        template_size=cfg.DATA.TEMPLATE.SIZE, search_size=cfg.DATA.SEARCH.SIZE, patch_size=backbone.STRIDE,
        embed_dim=backbone.EMBED_DIM, depth=backbone.DEPTH, num_heads=backbone.NUM_HEADS,
        mlp_ratio=backbone.MLP_RATIO, ce_loc=backbone.CE_LOC, ce_keep_ratio=backbone.CE_KEEP_RATIO,
        drop_path_rate=cfg.TRAIN.DROP_PATH_RATE if drop_path_rate is None else drop_path_rate)


def build_head(cfg: CKDConfig, in_channels: int) -> CenterHead:
    """A CENTER head sized by ``cfg`` for ``in_channels`` inputs (2*EMBED_DIM fused, EMBED_DIM teacher)."""
    return CenterHead(in_channels, channels=cfg.MODEL.HEAD.NUM_CHANNELS,
                      feat_size=cfg.DATA.SEARCH.SIZE // cfg.MODEL.BACKBONE.STRIDE, stride=cfg.MODEL.BACKBONE.STRIDE)


def build_ckd_model(config: CKDConfig | str, initialize: bool = True,
                    device: torch.device | str = 'cpu') -> CKDNet:
    """The inference network of a config, in ``eval()`` mode, on ``device``.

    ``initialize=True`` gives the training initialisation (timm ViT / xavier head); with ``False`` the
    tensors are allocated but left uninitialised (no 5 s of random init for ViT-B), for callers that
    load every entry right away (:mod:`ckd_ros.core.checkpoint`, recipe weights).
    """
    cfg = load_config(config)
    if initialize:
        return _assemble(cfg).to(device).eval()
    with torch.device('meta'):
        model = _assemble(cfg)
    return model.to_empty(device=device).eval()


def _assemble(cfg: CKDConfig) -> CKDNet:
    rgb = build_branch(cfg)
    tir = rgb if cfg.MODEL.SHARE_STUDENT else build_branch(cfg)
    head = build_head(cfg, 2 * cfg.MODEL.BACKBONE.EMBED_DIM)
    return CKDNet(rgb, tir, head, ce_mode=cfg.MODEL.BACKBONE.CE_MODE.lower(),
                  ce_template_range=cfg.MODEL.BACKBONE.CE_TEMPLATE_RANGE)
