"""The CKD network: ViT branches, (multi-modal) candidate elimination, CENTER head.

Public pieces (also for the training code in ``ckd_train/``):

* :class:`VisionTransformerCE` - one backbone branch (official key names); :meth:`~VisionTransformerCE.embed`
  builds ``[template ; search]`` tokens, optionally with a search-token keep multiplier (masked modelling).
* :func:`run_branches` - runs N branches in lock-step with CE off / plain CE / MCE (shared selection
  from the maximum attention of chosen branches), returning final tokens, per-block features and
  kept/removed indices (:class:`BranchRunResult`); for inference all branches as one batched
  computation over weights stacked by :class:`StackedBranchWeights`.
* :func:`template_center_mask` - the CE template-row mask (CTR_POINT, CTR_REC, ALL).
* :class:`CenterHead` and :func:`decode_center_boxes` (official ``cal_bbox``).
* :class:`CKDNet` / :func:`build_ckd_model` - the inference network of a config; :func:`build_branch`,
  :func:`build_head` build single pieces (teachers, teacher heads) sized by a config.
"""
from .ckd import CKDNet, build_branch, build_ckd_model, build_head
from .elimination import (BranchRunResult, rank_search_tokens, run_branches, search_token_scores,
                          template_center_mask, template_rows)
from .head import CenterHead, decode_center_boxes
from .vit import Block, StackedBranchWeights, VisionTransformerCE, drop_path

__all__ = [
    'Block', 'BranchRunResult', 'CKDNet', 'CenterHead', 'StackedBranchWeights', 'VisionTransformerCE', 'build_branch',
    'build_ckd_model',
    'build_head', 'decode_center_boxes', 'drop_path', 'rank_search_tokens', 'run_branches', 'search_token_scores',
    'template_center_mask', 'template_rows',
]
