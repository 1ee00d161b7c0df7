"""CKD training losses (``docs/spec/CKD.md`` sec. 4.3): CenterNet focal, GIoU, L1, GT heat map, style and content.

Everything here follows the official ``lib/train/actors/ckd.py`` / ``ckd_loss.py`` and the OSTrack
utilities they call; the "bug version" of CornerNet's ``gaussian_radius`` is kept on purpose
because it decides the size of every training target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- boxes
def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_iou_pairs(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of corresponding (x1, y1, x2, y2) boxes, shapes (N, 4) -> (N,)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    return inter / union, union


def generalized_box_iou_pairs(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GIoU and IoU of corresponding boxes. Raises ValueError for boxes with x2 < x1 or y2 < y1
    (the official code asserts; its actor then replaces the GIoU loss by 0)."""
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()) or not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError('degenerate box (x2 < x1 or y2 < y1) in GIoU')
    iou, union = box_iou_pairs(boxes1, boxes2)
    lt = torch.min(boxes1[:, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, 0] * wh[:, 1]
    return iou - (area - union) / area, iou


def giou_loss(pred_xyxy: torch.Tensor, gt_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mean(1 - GIoU) and the per-box IoU."""
    giou, iou = generalized_box_iou_pairs(pred_xyxy, gt_xyxy)
    return (1 - giou).mean(), iou


# ----------------------------------------------------------------------------- heat map
def gaussian_radius_bug(height, width, min_overlap: float = 0.7):
    """CornerNet's ``gaussian_radius`` as used by OSTrack/CKD: each root is divided by 2, not by 2a
    (the "bug version"); the smallest of the three is returned. Works on floats and numpy arrays
    (element-wise; the official code evaluates it on float32 tensors)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
    a2, b2, c2 = 4, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return np.minimum(r1, np.minimum(r2, r3))


def _gaussian_2d(radius: int) -> np.ndarray:
    diameter = 2 * radius + 1
    sigma = diameter / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def generate_heatmap(boxes_xywh: torch.Tensor, search_size: int, stride: int,
                     min_overlap: float = 0.7) -> torch.Tensor:
    """GT centre heat maps (B, 1, F, F), F = search_size // stride, from normalised (x, y, w, h) boxes.

    Centre cell ``round(F * (x + w/2)), round(F * (y + h/2))``; radius = floored "bug version"
    gaussian radius of the box size in cells, >= 0; a Gaussian of diameter 2r+1 with sigma (2r+1)/6,
    peak exactly 1, truncated at the map border (a centre outside the map still draws its tail).
    """
    if boxes_xywh.ndim != 2 or boxes_xywh.shape[1] != 4:
        raise ValueError(f'boxes must be (B, 4) normalised x, y, w, h; got shape {tuple(boxes_xywh.shape)}')
    feat = search_size // stride
    # float32 like the official tensors, so centre rounding and radius truncation match bit for bit
    boxes = boxes_xywh.detach().to('cpu', torch.float32).numpy() * np.float32(feat)
    centres = np.round(boxes[:, :2] + boxes[:, 2:] / np.float32(2)).astype(np.int64)  # half-to-even, as torch
    radii = np.maximum(gaussian_radius_bug(boxes[:, 3], boxes[:, 2], float(min_overlap)), 0).astype(np.int64)
    maps = np.zeros((len(boxes), 1, feat, feat), np.float32)
    for b in range(len(boxes)):
        (cx, cy), radius = centres[b], int(radii[b])
        g = _gaussian_2d(radius)
        x0, x1 = max(0, cx - radius), min(feat, cx + radius + 1)
        y0, y1 = max(0, cy - radius), min(feat, cy + radius + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        patch = g[y0 - (cy - radius):y1 - (cy - radius), x0 - (cx - radius):x1 - (cx - radius)]
        maps[b, 0, y0:y1, x0:x1] = np.maximum(maps[b, 0, y0:y1, x0:x1], patch)
    return torch.from_numpy(maps).to(boxes_xywh.device)


# ----------------------------------------------------------------------------- tracking losses
def focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet focal loss: positives where target == 1, normalised by their count (no division if none)."""
    pos = target.eq(1).float()
    neg = target.lt(1).float()
    neg_weights = torch.pow(1 - target, beta)
    pred = torch.clamp(pred, min=1e-12)
    pos_loss = (torch.log(pred) * torch.pow(1 - pred, alpha) * pos).sum()
    neg_loss = (torch.log(1 - pred) * torch.pow(pred, alpha) * neg_weights * neg).sum()
    num_pos = pos.sum()
    if num_pos == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / num_pos


@dataclass
class TrackingLossWeights:
    giou: float = 2.0
    l1: float = 5.0
    focal: float = 1.0


def tracking_loss(pred: dict, gt_boxes_xywh: torch.Tensor, gt_heatmap: torch.Tensor,
                  weights: TrackingLossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``w_giou * GIoU + w_l1 * L1 + w_focal * focal`` for one prediction (official actor).

    ``pred`` carries ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h) and ``score_map`` (B, 1, F, F);
    ``gt_boxes_xywh`` is (B, 4) normalised. GT corners are clamped to [0, 1].
    """
    pred_boxes = pred['pred_boxes']
    if torch.isnan(pred_boxes).any():
        raise FloatingPointError('the network predicted NaN boxes; training diverged (lower the LR or check the data)')
    queries = pred_boxes.shape[1]
    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes).reshape(-1, 4)
    gt_xyxy = box_xywh_to_xyxy(gt_boxes_xywh)[:, None, :].repeat(1, queries, 1).reshape(-1, 4).clamp(0.0, 1.0)
    try:
        giou, iou = giou_loss(pred_xyxy, gt_xyxy)
    except ValueError:
        # the official actor catches the degenerate-box assertion and drops the term
        giou = pred_xyxy.new_zeros(())
        iou = pred_xyxy.new_zeros(())
    l1 = F.l1_loss(pred_xyxy, gt_xyxy)
    focal = focal_loss(pred['score_map'], gt_heatmap)
    total = weights.giou * giou + weights.l1 * l1 + weights.focal * focal
    return total, {'giou': giou.detach(), 'l1': l1.detach(), 'location': focal.detach(),
                   'iou': iou.detach().mean()}


# ----------------------------------------------------------------------------- distillation
def style_loss(feat_a: torch.Tensor, feat_b: torch.Tensor, mode: str = 'channel') -> torch.Tensor:
    """First/second-order statistics alignment between two features (B, N, C).

    channel mode: per sample and channel, mean and unbiased std over the N tokens;
    ``mean_{b,c}((mu_a - mu_b)^2 + (sigma_a - sigma_b)^2)``. token mode: the same over channels per token.
    No detach: gradients reach both inputs.
    """
    _check_pair(feat_a, feat_b, 'style')
    dim = 1 if mode == 'channel' else 2 if mode == 'token' else None
    if dim is None:
        raise ValueError(f"style loss mode must be 'channel' or 'token', got {mode!r}")
    mu_a, mu_b = feat_a.mean(dim), feat_b.mean(dim)
    sd_a, sd_b = feat_a.std(dim, unbiased=True), feat_b.std(dim, unbiased=True)
    return ((mu_a - mu_b) ** 2 + (sd_a - sd_b) ** 2).mean()


def content_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str = 'channel',
                 stop_teacher_gradient: bool = True) -> torch.Tensor:
    """MSE between instance-normalised features (B, N, C).

    channel mode: ``InstanceNorm1d(C)`` on (B, C, N): per sample and channel over the tokens, biased
    variance, eps 1e-5, no affine, no running statistics. token mode: normalisation over channels per
    token. The teacher is detached when ``stop_teacher_gradient`` (official STOP_CONTENT_GRADIENT).
    """
    _check_pair(student, teacher, 'content')
    if stop_teacher_gradient:
        teacher = teacher.detach()
    if mode == 'channel':
        norm_s = F.instance_norm(student.transpose(1, 2), eps=1e-5)
        norm_t = F.instance_norm(teacher.transpose(1, 2), eps=1e-5)
    elif mode == 'token':
        norm_s = F.instance_norm(student, eps=1e-5)
        norm_t = F.instance_norm(teacher, eps=1e-5)
    else:
        raise ValueError(f"content loss mode must be 'channel' or 'token', got {mode!r}")
    return F.mse_loss(norm_s, norm_t)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f'{what} loss needs two (B, N, C) features of the same shape, got '
                         f'{tuple(a.shape)} and {tuple(b.shape)}')


@dataclass
class CKDLossWeights:
    """Weights of the total CKD loss (config TRAIN.*)."""

    giou: float = 2.0
    l1: float = 5.0
    focal: float = 1.0
    style: float = 0.01
    content: float = 0.1
    style_mode: str = 'channel'
    content_mode: str = 'channel'
    stop_content_gradient: bool = True
    stop_style_gradient: bool = False
    enable_style: bool = True
    enable_content: bool = True

    @classmethod
    def from_config(cls, cfg) -> "CKDLossWeights":
        t = cfg.TRAIN
        return cls(giou=t.GIOU_WEIGHT, l1=t.L1_WEIGHT, style=t.STYLE_DISTILL_WEIGHT,
                   content=t.CONTENT_DISTILL_WEIGHT, style_mode=t.STYLE_LOSS_TYPE,
                   content_mode=t.CONTENT_LOSS_TYPE, stop_content_gradient=t.STOP_CONTENT_GRADIENT,
                   stop_style_gradient=t.STOP_STYLE_GRADIENT, enable_style=t.ENABLE_STYLE,
                   enable_content=t.ENABLE_CONTENT)


def ckd_loss(out: dict, gt_boxes_xywh: torch.Tensor, search_size: int, stride: int,
             weights: CKDLossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Total stage-1/stage-2 loss (``docs/spec/CKD.md`` sec. 4.3).

    ``out``: ``fused``, ``teacher_rgb``, ``teacher_tir`` prediction dicts, and ``features`` =
    dict branch name -> list of per-block (B, N, C) features for ``rgb_branch``, ``tir_branch``,
    ``teacher_rgb``, ``teacher_tir``.
    ``L = track(fused) + w_style * style + w_content * content + track(teacher_rgb) + track(teacher_tir)``.
    """
    heatmap = generate_heatmap(gt_boxes_xywh, search_size, stride)
    tw = TrackingLossWeights(weights.giou, weights.l1, weights.focal)
    fused, stats = tracking_loss(out['fused'], gt_boxes_xywh, heatmap, tw)
    total = fused
    log = {'loss_fused': fused.detach(), **stats}
    for key in ('teacher_rgb', 'teacher_tir'):
        if out.get(key) is not None:
            loss_t, stats_t = tracking_loss(out[key], gt_boxes_xywh, heatmap, tw)
            total = total + loss_t
            log[f'loss_{key}'] = loss_t.detach()
            log[f'iou_{key}'] = stats_t['iou']
    feats = out.get('features') or {}
    if feats:
        s_rgb, s_tir = feats['rgb_branch'], feats['tir_branch']
        t_rgb, t_tir = feats['teacher_rgb'], feats['teacher_tir']
        if not len(s_rgb) == len(s_tir) == len(t_rgb) == len(t_tir):
            raise ValueError('every branch must give one feature per block for the distillation losses')
        zero = fused.new_zeros(())
        style = zero
        content = zero
        if weights.enable_style:
            for a, b in zip(s_rgb, s_tir):
                if weights.stop_style_gradient:
                    b = b.detach()
                style = style + style_loss(a, b, weights.style_mode)
        if weights.enable_content:
            for s, t in zip(s_rgb, t_rgb):
                content = content + content_loss(s, t, weights.content_mode, weights.stop_content_gradient)
            for s, t in zip(s_tir, t_tir):
                content = content + content_loss(s, t, weights.content_mode, weights.stop_content_gradient)
        total = total + weights.style * style + weights.content * content
        log['style'] = style.detach()
        log['content'] = content.detach()
    log['total'] = total.detach()
    return total, {k: float(v) for k, v in log.items()}
