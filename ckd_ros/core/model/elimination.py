"""Lock-step execution of N backbone branches with candidate elimination (CE / MCE).

The official code runs the branches as greenlet coroutines that hand attention maps to each other
at every CE block.  Here one loop walks the blocks and, inside each block, the branches; the
numbers are those of running each branch alone, plus the shared token selection:

* ``ce_mode="off"``: no elimination (every branch keeps all search tokens).
* ``ce_mode="ce"``: plain OSTrack CE, every branch chooses from its own attention.
* ``ce_mode="mce"``: CKD's multi-modal CE: the element-wise maximum of the attention probabilities
  of the branches in ``selection_from`` is scored once and every branch keeps the same positions
  (inference: both branches; stage-2 training ring: the two students, teachers follow).

Scoring (OSTrack ``candidate_elimination``): the probabilities of the template query rows over the
search keys, restricted to the rows of ``template_mask`` (CTR_POINT: only template token 27), are
averaged over those rows, then over heads (only those rows are computed); search tokens are sorted descending (``torch.sort``) and
the first ``ceil(keep_ratio * L_s)`` are kept, in that order.  The selection happens after the
block's attention residual and before its MLP.  After the final LayerNorm the kept tokens go back to
their original positions and removed positions become exact zeros.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .vit import VisionTransformerCE

CE_MODES = ("off", "ce", "mce")


def template_center_mask(mode: str, template_feat_size: int, batch: int,
                         device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Template-row mask for CE scoring (official ``generate_mask_cond``), bool (B, F*F) or None.

    ``CTR_POINT``: one token at row = col = (F-1)//2 (index 27 on the 8x8 grid, not the geometric
    centre); ``CTR_REC``: the central 2x2 (even F) or 1x1 (odd F) block; ``ALL``: None (all rows).
    """
    f = template_feat_size
    if mode == "ALL":
        return None
    if mode == "CTR_POINT":
        rows = slice((f - 1) // 2, (f - 1) // 2 + 1)
    elif mode == "CTR_REC":
        rows = slice(f // 2 - 1, f // 2 + 1) if f % 2 == 0 else slice(f // 2, f // 2 + 1)
    else:
        raise ValueError(f"unsupported CE template range {mode!r}; use ALL, CTR_POINT or CTR_REC")
    mask = torch.zeros(batch, f, f, dtype=torch.bool, device=device)
    mask[:, rows, rows] = True
    return mask.flatten(1)


def template_rows(template_mask: torch.Tensor | None, batch: int, lens_t: int) -> torch.Tensor | None:
    """The template query rows a CE score averages: (B, r) ascending indices of ``template_mask``
    (bool (B, Lt), the same number r >= 1 of rows in every sample, as the official ``view`` needs),
    or None for all template rows."""
    if template_mask is None:
        return None
    if template_mask.shape != (batch, lens_t) or template_mask.dtype != torch.bool:
        raise ValueError(f"template_mask must be bool ({batch}, {lens_t}), got {template_mask.dtype} "
                         f"{tuple(template_mask.shape)}")
    rows_per_sample = template_mask.sum(dim=1)
    if bool((rows_per_sample != rows_per_sample[0]).any()) or int(rows_per_sample[0]) == 0:
        raise ValueError("template_mask must select the same, non-zero number of template tokens in every sample")
    return template_mask.nonzero()[:, 1].view(batch, -1)


def search_token_scores(template_probs: torch.Tensor) -> torch.Tensor:
    """(B, heads, rows, Ls) probabilities of the chosen template query rows over the search keys ->
    (B, Ls) scores: mean over the rows, then over heads (OSTrack order)."""
    return template_probs.mean(dim=2).mean(dim=1)


def rank_search_tokens(scores: torch.Tensor, keep_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (into the current search tokens) to keep, in rank order, and to remove."""
    _, order = torch.sort(scores, dim=1, descending=True)
    return order[:, :keep_count], order[:, keep_count:]


@dataclass
class BranchRunResult:
    """Output of :func:`run_branches`, one entry per branch in every list.

    tokens: (B, Lt + Ls, C) after the final LayerNorm, removed search positions refilled with zeros.
    global_index_search: (B, kept) original search positions still present, in rank order (int64).
    removed_index_search: per CE block that removed tokens, (B, removed) original positions in
        elimination order (official ``removed_indexes_s``).
    block_features: with ``return_block_features``, 12 (depth) tensors per branch taken after each
        block's MLP residual, before the final norm.  With elimination these hold only the tokens
        present after that block (template first, kept search tokens in rank order, no refill);
        branches that share a selection therefore line up token for token.  Empty otherwise.
    """
    tokens: list[torch.Tensor]
    global_index_search: list[torch.Tensor]
    removed_index_search: list[list[torch.Tensor]]
    block_features: list[list[torch.Tensor]] = field(default_factory=list)


def _check_branches(branches: Sequence[VisionTransformerCE]) -> None:
    first = branches[0]
    for b in branches[1:]:
        if (b.depth, b.ce_loc, b.num_template_tokens, b.num_search_tokens) != (
                first.depth, first.ce_loc, first.num_template_tokens, first.num_search_tokens):
            raise ValueError("branches run in lock-step must have the same depth, CE blocks and token counts")


def run_branches(branches: Sequence[VisionTransformerCE], templates: Sequence[torch.Tensor],
                 searches: Sequence[torch.Tensor], ce_mode: str = "off",
                 template_mask: torch.Tensor | None = None, keep_ratio: float | None = None,
                 search_token_keep: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
                 selection_from: Sequence[int] | None = None,
                 return_block_features: bool = False) -> BranchRunResult:
    """Run N branches block by block with optional (multi-modal) candidate elimination.

    Args:
        branches: the ViT branches; the same module may appear twice (shared student).
        templates, searches: one normalised (B, 3, H, W) crop per branch; a template may also be its
            tokens from :meth:`VisionTransformerCE.embed_template` (B, Lt, C), computed once per target.
        ce_mode: ``"off"``, ``"ce"`` (per branch) or ``"mce"`` (shared max-attention selection);
            elimination happens at the branches' ``ce_loc`` blocks.
        template_mask: bool (B, Lt) template rows used for scoring (CTR_POINT etc.); None = all rows.
            Only those rows' attention probabilities are formed (softmax is per row, so the scores
            equal the official ones taken from the full matrix).
        keep_ratio: overrides every CE block's ratio (training's ``ce_keep_rate``); None uses the
            blocks' own ratios; a ratio whose kept count equals the token count removes nothing.
        search_token_keep: (B, Ls) multiplier on the search patch embeddings before the positional
            embeddings (masked modelling), either one tensor for every branch or one entry (tensor or
            None) per branch, e.g. ``[None, None, keep, keep]`` for the ring teacher_rgb, teacher_tir,
            rgb_branch, tir_branch.
        selection_from: with ``"mce"``, the indices of the branches whose attention maximum chooses
            (default: all branches); e.g. ``(2, 3)`` = the two students of the training ring.
        return_block_features: also return the per-block features (distillation losses).
    """
    if ce_mode not in CE_MODES:
        raise ValueError(f"ce_mode must be one of {CE_MODES}, got {ce_mode!r}")
    n = len(branches)
    if n == 0 or len(templates) != n or len(searches) != n:
        raise ValueError(f"need one template and one search per branch, got {n} branches, "
                         f"{len(templates)} templates, {len(searches)} searches")
    _check_branches(branches)
    if search_token_keep is None or isinstance(search_token_keep, torch.Tensor):
        keeps = [search_token_keep] * n
    else:
        keeps = list(search_token_keep)
        if len(keeps) != n:
            raise ValueError(f"search_token_keep needs one entry per branch ({n}), got {len(keeps)}")
    chooser = tuple(range(n)) if selection_from is None else tuple(selection_from)
    if ce_mode == "mce" and (not chooser or any(not 0 <= i < n for i in chooser)):
        raise ValueError(f"selection_from must name branches 0..{n - 1}, got {selection_from}")
    if keep_ratio is not None and not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")

    first = branches[0]
    lens_t = first.num_template_tokens
    lens_s_full = first.num_search_tokens
    xs = [b.embed(z, x, k) for b, z, x, k in zip(branches, templates, searches, keeps)]
    batch, device = xs[0].shape[0], xs[0].device
    rows = template_rows(template_mask, batch, lens_t)
    base_index = torch.arange(lens_s_full, device=device).unsqueeze(0).expand(batch, -1)
    global_index = [base_index] * n
    removed: list[list[torch.Tensor]] = [[] for _ in range(n)]
    features: list[list[torch.Tensor]] = [[] for _ in range(n)]

    for block_index in range(first.depth):
        ratio = first.keep_ratio_at(block_index) if ce_mode != "off" else None
        if ratio is not None and keep_ratio is not None:
            ratio = keep_ratio
        lens_s = xs[0].shape[1] - lens_t
        keep_count = math.ceil(ratio * lens_s) if ratio is not None else lens_s
        eliminate = keep_count < lens_s
        probs: list[torch.Tensor | None] = []
        for i, branch in enumerate(branches):
            xs[i], p = branch.blocks[block_index].attention_residual(xs[i], lens_t if eliminate else None, rows)
            probs.append(p)
        if eliminate:
            if ce_mode == "mce":
                joint = probs[chooser[0]]
                for i in chooser[1:]:
                    joint = torch.maximum(joint, probs[i])
                shared = rank_search_tokens(search_token_scores(joint), keep_count)
                selections = [shared] * n
            else:
                selections = [rank_search_tokens(search_token_scores(p), keep_count) for p in probs]
            for i, (keep_idx, drop_idx) in enumerate(selections):
                removed[i].append(global_index[i].gather(1, drop_idx))
                global_index[i] = global_index[i].gather(1, keep_idx)
                channels = xs[i].shape[2]
                kept_tokens = xs[i][:, lens_t:].gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, channels))
                xs[i] = torch.cat([xs[i][:, :lens_t], kept_tokens], dim=1)
        for i, branch in enumerate(branches):
            xs[i] = branch.blocks[block_index].mlp_residual(xs[i])
            if return_block_features:
                features[i].append(xs[i])

    outputs = []
    for i, branch in enumerate(branches):
        x = branch.norm(xs[i])
        if x.shape[1] - lens_t < lens_s_full:
            search = x.new_zeros(batch, lens_s_full, x.shape[2])
            search.scatter_(1, global_index[i].unsqueeze(-1).expand(-1, -1, x.shape[2]), x[:, lens_t:])
            x = torch.cat([x[:, :lens_t], search], dim=1)
        outputs.append(x)
    return BranchRunResult(tokens=outputs, global_index_search=global_index,
                           removed_index_search=removed, block_features=features if return_block_features else [])
