"""CENTER head (``CenterPredictor`` of OSTrack/CKD) and its GT-free box decode (``cal_bbox``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCORE_CLAMP = 1e-4  # sigmoid outputs are clamped to [1e-4, 1 - 1e-4] (official _sigmoid)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # keys <name>.0 (Conv2d 3x3, bias) and <name>.1 (BatchNorm2d), as in the official ``conv`` helper
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def decode_center_boxes(score_map: torch.Tensor, size_map: torch.Tensor, offset_map: torch.Tensor,
                        return_score: bool = False):
    """GT-free decode (official ``cal_bbox``): the arg-max cell of ``score_map`` plus its offset and size.

    Args:
        score_map: (B, 1, F, F) scores (raw or multiplied by a window).
        size_map: (B, 2, F, F) width/height as a fraction of the search crop.
        offset_map: (B, 2, F, F) sub-cell x/y offsets, in cells.
    Returns:
        (B, 4) boxes ``(cx, cy, w, h)`` normalised to the crop, and with ``return_score`` also the
        (B, 1) maximum of ``score_map``.  The first maximum wins on ties.
    """
    if score_map.ndim != 4 or score_map.shape[1] != 1 or score_map.shape[2] != score_map.shape[3]:
        raise ValueError(f'score_map must be (B, 1, F, F), got {tuple(score_map.shape)}')
    batch, feat_size = score_map.shape[0], score_map.shape[-1]
    for name, tensor in (('size_map', size_map), ('offset_map', offset_map)):
        if tuple(tensor.shape) != (batch, 2, feat_size, feat_size):
            raise ValueError(f'{name} must be {(batch, 2, feat_size, feat_size)}, got {tuple(tensor.shape)}')
    max_score, idx = torch.max(score_map.flatten(1), dim=1, keepdim=True)
    idx_y = torch.div(idx, feat_size, rounding_mode='floor')
    idx_x = idx % feat_size
    gather_idx = idx.unsqueeze(1).expand(batch, 2, 1)
    size = size_map.flatten(2).gather(dim=2, index=gather_idx).squeeze(-1)
    offset = offset_map.flatten(2).gather(dim=2, index=gather_idx).squeeze(-1)
    boxes = torch.cat([(idx_x.to(torch.float) + offset[:, :1]) / feat_size,
                       (idx_y.to(torch.float) + offset[:, 1:]) / feat_size,
                       size], dim=1)
    if return_score:
        return boxes, max_score
    return boxes


class CenterHead(nn.Module):
    """Three towers ``ctr``/``offset``/``size`` on a (B, in_channels, F, F) feature map.

    Each tower: 4 x [Conv3x3 -> BatchNorm -> ReLU] with channels C, C/2, C/4, C/8, then a 1x1 conv to
    1 (ctr) or 2 (offset, size) maps.  Keys ``conv{1..4}_{ctr,offset,size}.{0,1}.*`` and
    ``conv5_{ctr,offset,size}.*``; official CKD: in_channels 1536, channels 256, feat_size 16, stride 16.
    """

    TOWERS = ('ctr', 'offset', 'size')

    def __init__(self, in_channels: int, channels: int = 256, feat_size: int = 16, stride: int = 16):
        super().__init__()
        if channels % 8:
            raise ValueError(f'channels must be a multiple of 8, got {channels}')
        self.in_channels = in_channels
        self.channels = channels
        self.feat_sz = feat_size
        self.stride = stride
        widths = [in_channels, channels, channels // 2, channels // 4, channels // 8]
        for tower, out in zip(self.TOWERS, (1, 2, 2)):
            for level in range(4):
                setattr(self, f'conv{level + 1}_{tower}', _conv_bn_relu(widths[level], widths[level + 1]))
            setattr(self, f'conv5_{tower}', nn.Conv2d(widths[4], out, kernel_size=1))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform on every >1-D parameter (official init when trained from scratch)."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def _tower(self, tower: str, x: torch.Tensor) -> torch.Tensor:
        for level in range(1, 6):
            x = getattr(self, f'conv{level}_{tower}')(x)
        return x

    def score_maps(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(score_map, size_map, offset_map)``: sigmoid-clamped (B,1,F,F), sigmoid-clamped (B,2,F,F),
        raw (B,2,F,F)."""
        if feature_map.ndim != 4 or feature_map.shape[1:] != (self.in_channels, self.feat_sz, self.feat_sz):
            raise ValueError(f'expected a feature map (B, {self.in_channels}, {self.feat_sz}, {self.feat_sz}), '
                             f'got {tuple(feature_map.shape)}')
        score = torch.clamp(self._tower('ctr', feature_map).sigmoid(), SCORE_CLAMP, 1 - SCORE_CLAMP)
        size = torch.clamp(self._tower('size', feature_map).sigmoid(), SCORE_CLAMP, 1 - SCORE_CLAMP)
        offset = self._tower('offset', feature_map)
        return score, size, offset

    def _tower_at(self, tower: str, feature_map: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """The tower's output at one cell (C_out,) of one sample's (1, C, F, F) map, computed on the
        cell's receptive field only: 4 stacked 3x3 convolutions read a 9x9 window, so the expensive
        first convolution (1536 -> 256 officially) runs on 7x7 cells instead of F x F.

        Same numbers as the full tower: each layer's output cells outside the map are set to zero,
        which is the zero padding the full computation gives the next layer."""
        levels = 4
        window = F.pad(feature_map, (levels,) * 4)[:, :, row:row + 2 * levels + 1, col:col + 2 * levels + 1]
        for level in range(1, levels + 1):
            conv, norm, relu = getattr(self, f'conv{level}_{tower}')
            window = relu(norm(F.conv2d(window, conv.weight, conv.bias)))
            halo = levels - level
            if halo:
                rows = torch.arange(row - halo, row + halo + 1, device=window.device)
                cols = torch.arange(col - halo, col + halo + 1, device=window.device)
                inside = ((rows >= 0) & (rows < self.feat_sz))[:, None] & ((cols >= 0) & (cols < self.feat_sz))[None, :]
                window = window * inside.to(window.dtype)
        return getattr(self, f'conv5_{tower}')(window).flatten()

    def maps_at_peak(self, feature_map: torch.Tensor, peak_weight: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(score_map, size_map, offset_map)`` where size and offset are computed only at the cell a
        GT-free decode of ``peak_weight * score_map`` reads (the tracker's Hann-windowed arg-max, first
        maximum on ties as :func:`decode_center_boxes`), NaN elsewhere.

        An exact shortcut for trackers: the size and offset towers cost two thirds of the head and
        the box needs one cell of each.  ``peak_weight`` broadcasts to (B, 1, F, F).
        """
        score = torch.clamp(self._tower('ctr', feature_map).sigmoid(), SCORE_CLAMP, 1 - SCORE_CLAMP)
        batch = feature_map.shape[0]
        size = score.new_full((batch, 2, self.feat_sz, self.feat_sz), float('nan'))
        offset = score.new_full((batch, 2, self.feat_sz, self.feat_sz), float('nan'))
        peaks = torch.max((peak_weight * score).flatten(1), dim=1)[1].tolist()
        for b, peak in enumerate(peaks):
            row, col = divmod(int(peak), self.feat_sz)
            sample = feature_map[b:b + 1]
            size[b, :, row, col] = torch.clamp(self._tower_at('size', sample, row, col).sigmoid(),
                                               SCORE_CLAMP, 1 - SCORE_CLAMP)
            offset[b, :, row, col] = self._tower_at('offset', sample, row, col)
        return score, size, offset

    def forward(self, feature_map: torch.Tensor, gt_score_map: torch.Tensor | None = None,
                peak_weight: torch.Tensor | None = None):
        """Official ``CenterPredictor.forward``: ``(score_map, boxes (B,4), size_map, offset_map)``;
        the boxes are decoded from ``gt_score_map`` (B, F, F) instead of the prediction when given.

        With ``peak_weight`` (inference): size and offset only at the arg-max of ``peak_weight *
        score_map`` (:meth:`maps_at_peak`), and the boxes are decoded from that product."""
        if peak_weight is not None:
            if gt_score_map is not None:
                raise ValueError('peak_weight and gt_score_map exclude each other')
            score, size, offset = self.maps_at_peak(feature_map, peak_weight)
            return score, decode_center_boxes(peak_weight * score, size, offset), size, offset
        score, size, offset = self.score_maps(feature_map)
        decode_from = score if gt_score_map is None else gt_score_map.unsqueeze(1)
        return score, decode_center_boxes(decode_from, size, offset), size, offset

    def cal_bbox(self, score_map: torch.Tensor, size_map: torch.Tensor, offset_map: torch.Tensor,
                 return_score: bool = False):
        """Official name of :func:`decode_center_boxes`."""
        return decode_center_boxes(score_map, size_map, offset_map, return_score)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) backbone tokens -> (B, C, F, F) map of the last F*F (search) tokens, row-major."""
        n = self.feat_sz * self.feat_sz
        if tokens.ndim != 3 or tokens.shape[1] < n:
            raise ValueError(f'expected tokens (B, >= {n}, C), got {tuple(tokens.shape)}')
        search = tokens[:, -n:]
        return search.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.feat_sz, self.feat_sz)

    def forward_tokens(self, tokens: torch.Tensor, gt_score_map: torch.Tensor | None = None,
                       peak_weight: torch.Tensor | None = None) -> dict:
        """Official ``forward_head`` for the CENTER head: dict with ``pred_boxes`` (B, 1, 4),
        ``score_map``, ``size_map``, ``offset_map`` (``peak_weight``: see :meth:`forward`)."""
        score, boxes, size, offset = self(self.tokens_to_map(tokens), gt_score_map, peak_weight)
        return {'pred_boxes': boxes.view(tokens.shape[0], 1, 4), 'score_map': score,
                'size_map': size, 'offset_map': offset}
