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
averaged over those rows, then over heads (only those rows are computed); search tokens are sorted
descending (``torch.sort``) and
the first ``ceil(keep_ratio * L_s)`` are kept, in that order.  The selection happens after the
block's attention residual and before its MLP.  After the final LayerNorm the kept tokens go back to
their original positions and removed positions become exact zeros.

Execution layout (same numbers up to float rounding, <= 1e-5 measured): by default each branch runs
on its own, exactly as it would alone.  For inference, ``stacked_weights`` runs all branches as one
group: every layer of every branch is one batched product over weights stacked by
:class:`~ckd_ros.core.model.vit.StackedBranchWeights`; ``batch_branches`` runs branches that are the
same module (shared student) as one batch.  ``search_only`` lets the last block update only the
search tokens, the only ones the box head reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .vit import StackedLayer, VisionTransformerCE

CE_MODES = ('off', 'ce', 'mce')


def template_center_mask(mode: str, template_feat_size: int, batch: int,
                         device: torch.device | str = 'cpu') -> torch.Tensor | None:
    """Template-row mask for CE scoring (official ``generate_mask_cond``), bool (B, F*F) or None.

    ``CTR_POINT``: one token at row = col = (F-1)//2 (index 27 on the 8x8 grid, not the geometric
    centre); ``CTR_REC``: the central 2x2 (even F) or 1x1 (odd F) block; ``ALL``: None (all rows).
    """
    f = template_feat_size
    if mode == 'ALL':
        return None
    if mode == 'CTR_POINT':
        rows = slice((f - 1) // 2, (f - 1) // 2 + 1)
    elif mode == 'CTR_REC':
        rows = slice(f // 2 - 1, f // 2 + 1) if f % 2 == 0 else slice(f // 2, f // 2 + 1)
    else:
        raise ValueError(f'unsupported CE template range {mode!r}; use ALL, CTR_POINT or CTR_REC')
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
        raise ValueError(f'template_mask must be bool ({batch}, {lens_t}), got {template_mask.dtype} '
                         f'{tuple(template_mask.shape)}')
    rows_per_sample = template_mask.sum(dim=1)
    if bool((rows_per_sample != rows_per_sample[0]).any()) or int(rows_per_sample[0]) == 0:
        raise ValueError('template_mask must select the same, non-zero number of template tokens in every sample')
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
            raise ValueError('branches run in lock-step must have the same depth, CE blocks and token counts')


@dataclass
class _Group:
    """Branches that run as one tensor (g, S, N, C): ``stacked`` = branch j is weight set j (g =
    len(members), S = B); otherwise one weight set (g = 1) and the branches side by side (S = len * B)."""
    members: list[int]
    stacked: bool
    tokens: torch.Tensor | None = None   # (g, S, N, C)
    rows: torch.Tensor | None = None     # template rows of the CE score, (S, r)

    def member(self, tensor: torch.Tensor, j: int, batch: int) -> torch.Tensor:
        """Branch j's part of a group tensor (g, S, ...)."""
        return tensor[j] if self.stacked else tensor[0, j * batch:(j + 1) * batch]

    def join(self, per_member: list[torch.Tensor]) -> torch.Tensor:
        """Per-member (B, ...) tensors -> the group layout (g, S, ...); a member list holding one
        shared tensor (a shared selection) is expanded, not copied."""
        if len(per_member) == 1:
            return per_member[0].unsqueeze(0)
        if self.stacked:
            if all(t is per_member[0] for t in per_member):
                return per_member[0].unsqueeze(0).expand(len(per_member), *per_member[0].shape)
            return torch.stack(per_member)
        return torch.cat(per_member).unsqueeze(0)


def _groups(branches: Sequence[VisionTransformerCE], stacked_weights, batch_branches: bool) -> list[_Group]:
    n = len(branches)
    if stacked_weights is not None:
        if len({id(b) for b in branches}) != n:
            raise ValueError('stacked_weights need distinct branches')
        return [_Group(list(range(n)), stacked=True)]
    if not batch_branches:
        return [_Group([i], stacked=False) for i in range(n)]
    groups: dict[int, _Group] = {}
    for i, branch in enumerate(branches):
        groups.setdefault(id(branch), _Group([], stacked=False)).members.append(i)
    return list(groups.values())


def run_branches(branches: Sequence[VisionTransformerCE], templates: Sequence[torch.Tensor],
                 searches: Sequence[torch.Tensor], ce_mode: str = 'off',
                 template_mask: torch.Tensor | None = None, keep_ratio: float | None = None,
                 search_token_keep: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
                 selection_from: Sequence[int] | None = None,
                 return_block_features: bool = False,
                 stacked_weights: Sequence[dict[str, StackedLayer]] | None = None,
                 batch_branches: bool = False, search_only: bool = False) -> BranchRunResult:
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
        stacked_weights: the branches' block weights stacked in branch order
            (:meth:`~ckd_ros.core.model.vit.StackedBranchWeights.get`): all branches run as one
            batched computation.  They are plain tensors, not the parameters: for inference only
            (no gradients reach the parameters through them).
        batch_branches: branches that are the same module run as one batch (any mode).
        search_only: the last block computes only the search tokens' outputs (template tokens are
            keys and values only), and ``tokens`` hold only the search tokens (B, Ls, C): what the
            box head reads, with less work.  Not with ``return_block_features`` or a CE last block.
    """
    if ce_mode not in CE_MODES:
        raise ValueError(f'ce_mode must be one of {CE_MODES}, got {ce_mode!r}')
    n = len(branches)
    if n == 0 or len(templates) != n or len(searches) != n:
        raise ValueError(f'need one template and one search per branch, got {n} branches, '
                         f'{len(templates)} templates, {len(searches)} searches')
    _check_branches(branches)
    if search_token_keep is None or isinstance(search_token_keep, torch.Tensor):
        keeps = [search_token_keep] * n
    else:
        keeps = list(search_token_keep)
        if len(keeps) != n:
            raise ValueError(f'search_token_keep needs one entry per branch ({n}), got {len(keeps)}')
    chooser = tuple(range(n)) if selection_from is None else tuple(selection_from)
    if ce_mode == 'mce' and (not chooser or any(not 0 <= i < n for i in chooser)):
        raise ValueError(f'selection_from must name branches 0..{n - 1}, got {selection_from}')
    if keep_ratio is not None and not 0 < keep_ratio <= 1:
        raise ValueError(f'keep_ratio must be in (0, 1], got {keep_ratio}')
    if stacked_weights is not None and len(stacked_weights) != branches[0].depth:
        raise ValueError(f'stacked_weights need one entry per block ({branches[0].depth}), got {len(stacked_weights)}')

    first = branches[0]
    lens_t = first.num_template_tokens
    lens_s_full = first.num_search_tokens
    embedded = [b.embed(z, x, k) for b, z, x, k in zip(branches, templates, searches, keeps)]
    batch, device = embedded[0].shape[0], embedded[0].device
    rows = template_rows(template_mask, batch, lens_t)
    groups = _groups(branches, stacked_weights, batch_branches)
    for group in groups:
        group.tokens = group.join([embedded[i] for i in group.members])
        group.rows = None if rows is None else (rows if group.stacked else rows.repeat(len(group.members), 1))
    del embedded
    base_index = torch.arange(lens_s_full, device=device).unsqueeze(0).expand(batch, -1)
    global_index = [base_index] * n
    removed: list[list[torch.Tensor]] = [[] for _ in range(n)]
    features: list[list[torch.Tensor]] = [[] for _ in range(n)]
    ratios = [first.keep_ratio_at(i) if ce_mode != 'off' else None for i in range(first.depth)]
    trim_last = search_only and not return_block_features and ratios[-1] is None

    for block_index in range(first.depth):
        ratio = ratios[block_index]
        if ratio is not None and keep_ratio is not None:
            ratio = keep_ratio
        lens_s = groups[0].tokens.shape[2] - lens_t
        keep_count = math.ceil(ratio * lens_s) if ratio is not None else lens_s
        eliminate = keep_count < lens_s
        query_start = lens_t if trim_last and block_index == first.depth - 1 else 0
        probs: list[torch.Tensor | None] = [None] * n
        for group in groups:
            block = branches[group.members[0]].blocks[block_index]
            weights = stacked_weights[block_index] if group.stacked else None
            group.tokens, p = block.attention_residual(group.tokens, lens_t if eliminate else None, group.rows,
                                                       weights, query_start)
            if p is not None:
                for j, i in enumerate(group.members):
                    probs[i] = group.member(p, j, batch)
        if eliminate:
            if ce_mode == 'mce':
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
            for group in groups:
                x = group.tokens
                keep_idx = group.join([selections[i][0] for i in group.members])
                kept_tokens = x[:, :, lens_t:].gather(2, keep_idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[3]))
                group.tokens = torch.cat([x[:, :, :lens_t], kept_tokens], dim=2)
        for group in groups:
            block = branches[group.members[0]].blocks[block_index]
            weights = stacked_weights[block_index] if group.stacked else None
            group.tokens = block.mlp_residual(group.tokens, weights)
            if return_block_features:
                for j, i in enumerate(group.members):
                    features[i].append(group.member(group.tokens, j, batch))

    outputs: list[torch.Tensor | None] = [None] * n
    search_start = 0 if trim_last else lens_t
    for group in groups:
        for j, i in enumerate(group.members):
            x = branches[i].norm(group.member(group.tokens, j, batch))
            if x.shape[1] - search_start < lens_s_full:
                search = x.new_zeros(batch, lens_s_full, x.shape[2])
                search.scatter_(1, global_index[i].unsqueeze(-1).expand(-1, -1, x.shape[2]), x[:, search_start:])
                x = torch.cat([x[:, :search_start], search], dim=1) if search_start else search
            outputs[i] = x
    return BranchRunResult(tokens=outputs, global_index_search=global_index,
                           removed_index_search=removed, block_features=features if return_block_features else [])
