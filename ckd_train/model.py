"""The training-mode CKD network (``docs/spec/CKD.md`` sec. 4.1-4.2): four branches in lock-step, three heads.

Module names and their order are the official ones, so ``state_dict()`` is the official training
checkpoint's ``net`` (878 keys for ViT-B): ``rgb_branch``, ``tir_branch``, ``box_head`` (the
inference model, first), then ``teacher_rgb``, ``teacher_tir``, ``box_head_v``, ``box_head_i``.

The four branches run as the official greenlet ring does: teacher_rgb <- RGB, teacher_tir <- TIR,
rgb_branch <- RGB, tir_branch <- TIR, block by block (``ckd_ros.core.model.run_branches``); with CE
the selection comes from the maximum attention of the two students and every branch follows it.
The students see the masked-modelling keep vector (one per sample, shared by both); the teachers
see unmasked inputs.

Deviation (documented): with ``SHARE_STUDENT`` the official ring is mis-wired (defect D4) and does
not run; here the shared student simply appears twice in the ring.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ckd_ros.core.config import CKDConfig, load_config
from ckd_ros.core.model import CenterHead, CKDNet, VisionTransformerCE, build_branch, build_head
from ckd_ros.core.model import run_branches, template_center_mask

STUDENTS = ('rgb_branch', 'tir_branch')
TEACHERS = ('teacher_rgb', 'teacher_tir')
TEACHER_HEADS = ('box_head_v', 'box_head_i')
INFERENCE_PREFIXES = ('rgb_branch.', 'tir_branch.', 'box_head.')


class CKDTrainingNet(nn.Module):
    """Training-mode ``OSTrack_CKD``."""

    def __init__(self, rgb_branch: VisionTransformerCE, tir_branch: VisionTransformerCE, box_head: CenterHead,
                 teacher_rgb: VisionTransformerCE, teacher_tir: VisionTransformerCE,
                 box_head_v: CenterHead, box_head_i: CenterHead, ce_mode: str = 'mce',
                 ce_template_range: str = 'CTR_POINT'):
        super().__init__()
        # registration order = official state-dict order
        self.rgb_branch = rgb_branch
        self.tir_branch = tir_branch
        self.box_head = box_head
        self.teacher_rgb = teacher_rgb
        self.teacher_tir = teacher_tir
        self.box_head_v = box_head_v
        self.box_head_i = box_head_i
        self.ce_mode = ce_mode if rgb_branch.ce_loc else 'off'
        self.ce_template_range = ce_template_range

    @property
    def shares_student(self) -> bool:
        return self.rgb_branch is self.tir_branch

    def template_mask(self, batch: int, device) -> torch.Tensor | None:
        if self.ce_mode == 'off':
            return None
        return template_center_mask(self.ce_template_range, self.rgb_branch.template_feat_size, batch, device)

    def forward(self, template_rgb: torch.Tensor, template_tir: torch.Tensor, search_rgb: torch.Tensor,
                search_tir: torch.Tensor, search_token_keep: torch.Tensor | None = None,
                ce_keep_rate: float | None = None) -> dict:
        """Returns ``fused``, ``teacher_rgb``, ``teacher_tir`` prediction dicts (``pred_boxes``
        (B,1,4), ``score_map``, ``size_map``, ``offset_map``) and ``features``: branch name -> list
        of per-block (B, N, C) features (after each block's MLP residual, before the final norm)."""
        batch = template_rgb.shape[0]
        keep = None
        if search_token_keep is not None:
            keep = search_token_keep.to(template_rgb.dtype)
        run = run_branches(
            [self.teacher_rgb, self.teacher_tir, self.rgb_branch, self.tir_branch],
            [template_rgb, template_tir, template_rgb, template_tir],
            [search_rgb, search_tir, search_rgb, search_tir],
            ce_mode=self.ce_mode, template_mask=self.template_mask(batch, template_rgb.device),
            keep_ratio=ce_keep_rate, search_token_keep=[None, None, keep, keep],
            selection_from=(2, 3), return_block_features=True)
        t_rgb, t_tir, s_rgb, s_tir = run.tokens
        fused = self.box_head.forward_tokens(torch.cat([s_rgb, s_tir], dim=2))
        return {
            'fused': fused,
            'teacher_rgb': self.box_head_v.forward_tokens(t_rgb),
            'teacher_tir': self.box_head_i.forward_tokens(t_tir),
            'features': dict(zip(TEACHERS + STUDENTS, run.block_features)),
            'global_index_s': run.global_index_search,
        }

    def inference_model(self) -> CKDNet:
        """A CKDNet sharing this model's students and fused head (for evaluation during training)."""
        return CKDNet(self.rgb_branch, self.tir_branch, self.box_head, ce_mode=self.ce_mode,
                      ce_template_range=self.ce_template_range)

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The inference model's keys only (``rgb_branch.*``, ``tir_branch.*``, ``box_head.*``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(INFERENCE_PREFIXES)}


def build_training_model(config: CKDConfig | str) -> CKDTrainingNet:
    """The four-branch training network of a config, freshly initialised (ViT: timm init; heads:
    xavier), in training mode. Load pretrained weights with :mod:`ckd_train.init`."""
    cfg = load_config(config)
    embed = cfg.MODEL.BACKBONE.EMBED_DIM
    rgb = build_branch(cfg)
    tir = rgb if cfg.MODEL.SHARE_STUDENT else build_branch(cfg)
    model = CKDTrainingNet(rgb, tir, build_head(cfg, 2 * embed), build_branch(cfg), build_branch(cfg),
                           build_head(cfg, embed), build_head(cfg, embed),
                           ce_mode=cfg.MODEL.BACKBONE.CE_MODE.lower(),
                           ce_template_range=cfg.MODEL.BACKBONE.CE_TEMPLATE_RANGE)
    return model.train()


def adjust_keep_rate(epoch: int, warmup_epochs: int, total_epochs: int, iters_per_epoch: int = 1,
                     base_keep_rate: float = 0.5, max_keep_rate: float = 1.0, iters: int = -1) -> float:
    """OSTrack's CE keep-rate schedule (1 before ``warmup_epochs``, cosine to ``base_keep_rate``,
    then constant); the actor calls it with ``warmup = CE_START_EPOCH``,
    ``total = CE_START_EPOCH + CE_WARM_EPOCH``, one iteration per epoch."""
    if epoch < warmup_epochs:
        return 1.0
    if epoch >= total_epochs:
        return base_keep_rate
    if iters == -1:
        iters = epoch * iters_per_epoch
    total_iters = iters_per_epoch * (total_epochs - warmup_epochs)
    iters = iters - iters_per_epoch * warmup_epochs
    return base_keep_rate + (max_keep_rate - base_keep_rate) * (math.cos(iters / total_iters * math.pi) + 1) * 0.5


def ce_keep_rate_for_epoch(cfg: CKDConfig, epoch: int) -> float | None:
    """The ``ce_keep_rate`` the official actor passes at ``epoch`` (None when CE is off)."""
    backbone = cfg.MODEL.BACKBONE
    if not backbone.CE_LOC:
        return None
    start, warm = cfg.TRAIN.CE_START_EPOCH, cfg.TRAIN.CE_WARM_EPOCH
    return adjust_keep_rate(epoch, start, start + warm, 1, base_keep_rate=backbone.CE_KEEP_RATIO[0])
