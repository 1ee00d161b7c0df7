"""One CKD backbone branch: an OSTrack-style one-stream ViT (``VisionTransformerCE``).

State-dict names equal the official ones (``cls_token``, ``pos_embed``, ``pos_embed_z``,
``pos_embed_x``, ``patch_embed.proj.*``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``).  A branch does not run itself: :func:`ckd_ros.core.model.elimination.run_branches`
drives several branches block by block (lock-step), which is what candidate elimination across
branches needs.  The per-block pieces are :meth:`Block.attention_residual` and
:meth:`Block.mlp_residual`.

Grouped layout: the block code works on tokens ``(g, S, N, C)``: ``g`` weight sets (branches whose
weights are stacked, see :class:`StackedBranchWeights`) times ``S`` samples.  ``g = 1`` with the
module's own layers is the per-branch computation (numbers unchanged: the layers see the same
``(S*N, C)`` products as with ``(B, N, C)`` tokens); ``g > 1`` with stacked weights runs the same
maths for several branches as one batched product per layer (``torch.baddbmm``), which a
multi-threaded BLAS parallelises better than two products of half the size.  A shared student is
``g = 1`` with the branches side by side along ``S``.

timm 0.5.4's ``Mlp``/``DropPath`` are not imported: ``import timm`` pulls in torchvision, which does
not load with the CPU torch build here, so the two small layers are written out (same names, same
maths).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Grid of the 224-px ImageNet ViT whose table the official branch registers as ``pos_embed``
# (1 + 14*14 entries); kept so checkpoints have the official keys even though inference never reads it.
IMAGENET_POS_GRID = 14


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm 0.5.4 ``drop_path``)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


# (weight, bias) of one layer stacked over g weight sets: Linear (g, out, in) / (g, out), LayerNorm (g, C) / (g, C)
StackedLayer = tuple[torch.Tensor, torch.Tensor]
# the layers of a Block whose weights :class:`StackedBranchWeights` stacks (names relative to the block)
STACKED_LAYERS = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')


def grouped_linear(layer: nn.Module, x: torch.Tensor, stacked: StackedLayer | None) -> torch.Tensor:
    """``x`` (g, M, in) -> (g, M, out): ``layer`` itself when ``stacked`` is None (g = 1, also a
    quantised Linear), else one batched product with the stacked weights."""
    if stacked is None:
        return layer(x)
    weight, bias = stacked
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def grouped_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, stacked: StackedLayer | None) -> torch.Tensor:
    """LayerNorm of ``x`` (g, ..., C): ``norm`` itself when ``stacked`` is None, else normalisation
    followed by each group's own scale and shift."""
    if stacked is None:
        return norm(x)
    weight, bias = stacked
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return torch.addcmul(bias.view(shape), F.layer_norm(x, norm.normalized_shape, eps=norm.eps), weight.view(shape))


class Mlp(nn.Module):
    """Linear -> GELU (exact erf) -> Linear, keys ``fc1``/``fc2`` (timm ``Mlp`` without dropout)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, fc1: StackedLayer | None = None,
                fc2: StackedLayer | None = None) -> torch.Tensor:
        """``x`` (..., C), or (g, M, C) with stacked ``fc1``/``fc2`` weights (:func:`grouped_linear`)."""
        return grouped_linear(self.fc2, self.act(grouped_linear(self.fc1, x, fc1)), fc2)


class PatchEmbed(nn.Module):
    """Conv2d(3 -> C, kernel = stride = patch) flattened row-major to tokens; no norm (official)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.proj.in_channels:
            raise ValueError(f'expected images (B, {self.proj.in_channels}, H, W), got {tuple(images.shape)}')
        if images.shape[2] % self.patch_size or images.shape[3] % self.patch_size:
            raise ValueError(f'image size {tuple(images.shape[2:])} is not a multiple of the patch size '
                             f'{self.patch_size}')
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with keys ``qkv`` (split [q | k | v] x heads) and ``proj``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, template_len: int | None = None, template_rows: torch.Tensor | None = None,
                weights: dict[str, StackedLayer] | None = None, query_start: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output (g, S, N - query_start, C) of tokens ``x`` (g, S, N, C) (grouped layout, see
        the module docstring) and, if ``template_len`` is given, the softmax probabilities of template
        query rows over the search keys, (g, S, heads, rows, N - template_len): the rows
        ``template_rows`` (S, r) indices, or all ``template_len`` template rows when None.

        ``weights``: stacked ``attn.qkv`` / ``attn.proj`` weights of the g groups (None: this module's
        own layers, g = 1).  ``query_start``: only the tokens from there on are queries (all tokens are
        keys and values); the others' outputs are not computed.

        The output uses ``scaled_dot_product_attention`` (no full probability matrix); candidate
        elimination only reads template-query rows of the probabilities, so only those rows are
        formed explicitly, as ``softmax(q k^T * scale)`` like the official code (softmax is per row).
        """
        weights = weights or {}
        g, S, N, C = x.shape
        qkv = grouped_linear(self.qkv, x.reshape(g, S * N, C), weights.get('attn.qkv'))
        q, k, v = qkv.reshape(g * S, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        queries = q[:, :, query_start:] if query_start else q
        out = F.scaled_dot_product_attention(queries, k, v)
        rows_out = N - query_start
        out = grouped_linear(self.proj, out.transpose(1, 2).reshape(g, S * rows_out, C), weights.get('attn.proj'))
        out = out.view(g, S, rows_out, C)
        if template_len is None:
            return out, None
        if template_rows is None:
            q_rows = q[:, :, :template_len]
        else:
            rows = template_rows.repeat(g, 1) if g > 1 else template_rows
            q_rows = q.gather(2, rows[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim))
        logits = (q_rows @ k.transpose(-2, -1)) * self.scale
        probs = logits.softmax(dim=-1)[..., template_len:]
        return out, probs.view(g, S, *probs.shape[1:])


class Block(nn.Module):
    """Pre-norm transformer block; candidate elimination happens between its two residuals.

    Both residual methods take tokens in the grouped layout (g, S, N, C) (module docstring) or, as
    one branch, (B, N, C); ``weights`` are the block's stacked layer weights
    (:meth:`StackedBranchWeights.get`, keys :data:`STACKED_LAYERS`) for g > 1 groups, None for the
    block's own layers.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        # stochastic depth draws per sample: samples are the (g, S) pairs
        return x + self.drop_path(update.flatten(0, 1)).view(update.shape)

    def attention_residual(self, x: torch.Tensor, template_len: int | None = None,
                           template_rows: torch.Tensor | None = None,
                           weights: dict[str, StackedLayer] | None = None,
                           query_start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x + Attn(LN1(x))`` and the template-row probabilities (see :meth:`Attention.forward`);
        with ``query_start`` only the tokens from there on are updated and returned."""
        if x.ndim == 3:
            out, probs = self.attention_residual(x.unsqueeze(0), template_len, template_rows, weights, query_start)
            return out.squeeze(0), None if probs is None else probs.squeeze(0)
        weights = weights or {}
        out, probs = self.attn(grouped_layer_norm(self.norm1, x, weights.get('norm1')), template_len, template_rows,
                               weights, query_start)
        return self._residual(x[:, :, query_start:] if query_start else x, out), probs

    def mlp_residual(self, x: torch.Tensor, weights: dict[str, StackedLayer] | None = None) -> torch.Tensor:
        """``x + MLP(LN2(x))``."""
        if x.ndim == 3:
            return self.mlp_residual(x.unsqueeze(0), weights).squeeze(0)
        weights = weights or {}
        g, S, N, C = x.shape
        h = grouped_layer_norm(self.norm2, x, weights.get('norm2')).reshape(g, S * N, C)
        return self._residual(x, self.mlp(h, weights.get('mlp.fc1'), weights.get('mlp.fc2')).view(g, S, N, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_residual(self.attention_residual(x)[0])


def _layer(block: Block, name: str) -> nn.Module:
    owner, _, attr = name.rpartition('.')
    return getattr(getattr(block, owner) if owner else block, attr)


class StackedBranchWeights:
    """The block weights of several distinct branches stacked along a new first dimension, so that
    :func:`~ckd_ros.core.model.elimination.run_branches` runs each layer of all branches as one
    batched product, without a second copy of the weights.

    :meth:`get` allocates one (n, ...) tensor per block layer weight/bias (:data:`STACKED_LAYERS`),
    copies the branches' values in and re-points every branch parameter (``param.data``) to a view of
    its slice: the parameter objects, state-dict keys and values stay as they were, in-place updates
    (``load_state_dict``, optimiser steps) reach the stack, and autograd through the parameters works
    as before.  When a parameter is replaced (``load_state_dict(assign=True)``, ``.to()``) or a layer
    is no longer a plain ``nn.Linear``/``nn.LayerNorm`` (quantisation), the next :meth:`get` notices
    (object identity and data pointer of every parameter) and restacks, or answers None.

    The stack is not copied with its owner (``copy.deepcopy`` gives copies with their own parameter
    storage: an empty stack is rebuilt on first use) and not pickled.
    """

    def __init__(self):
        self._params: list[torch.Tensor] = []     # every stacked parameter, in build order
        self._pointers: list[int] = []           # and the data pointer it had then
        self._blocks: list[dict[str, StackedLayer]] | None = None

    def __deepcopy__(self, memo):
        return StackedBranchWeights()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    @staticmethod
    def _layers(branches: Sequence['VisionTransformerCE']) -> list[dict[str, list[nn.Module]]] | None:
        """Per block: layer name -> that layer of every branch, or None when the branches cannot share a stack."""
        first = branches[0]
        if len(branches) < 2 or len({id(b) for b in branches}) != len(branches):
            return None
        blocks = []
        for index in range(first.depth):
            layers = {}
            for name in STACKED_LAYERS:
                modules = [_layer(b.blocks[index], name) for b in branches]
                kind = type(modules[0])
                if kind not in (nn.Linear, nn.LayerNorm) or any(type(m) is not kind for m in modules):
                    return None
                if any(m.weight is None or m.bias is None for m in modules):
                    return None
                reference = modules[0].weight
                if any(m.weight.shape != reference.shape or m.weight.dtype != reference.dtype
                       or m.weight.device != reference.device or m.bias.shape != modules[0].bias.shape
                       for m in modules):
                    return None
                layers[name] = modules
            blocks.append(layers)
        return blocks

    def _current(self, blocks: list[dict[str, list[nn.Module]]]) -> bool:
        if self._blocks is None:
            return False
        params = [getattr(m, attr) for layers in blocks for modules in layers.values() for attr in ('weight', 'bias')
                  for m in modules]  # the build order
        return len(params) == len(self._params) and all(
            p is q and p.data_ptr() == ptr for p, q, ptr in zip(params, self._params, self._pointers))

    @torch.compiler.disable  # pointer checks and parameter re-pointing stay outside compiled graphs
    def get(self, branches: Sequence['VisionTransformerCE']) -> list[dict[str, StackedLayer]] | None:
        """Per block: layer name -> stacked (weight, bias) of ``branches`` (in that order), building
        the stack when needed; None when the branches cannot be stacked (fewer than two distinct
        branches, or a layer that is not a plain ``nn.Linear``/``nn.LayerNorm``)."""
        blocks = self._layers(branches)
        if blocks is None:
            self.clear()
            return None
        if not self._current(blocks):
            self._build(blocks)
        return self._blocks

    def clear(self) -> None:
        """Forget the stack (the parameters keep their storage)."""
        self._params, self._pointers, self._blocks = [], [], None

    def _build(self, blocks: list[dict[str, list[nn.Module]]]) -> None:
        self.clear()
        stacked_blocks = []
        # plain tensors even when called under inference_mode: the parameters must stay usable by autograd
        with torch.inference_mode(False), torch.no_grad():
            for layers in blocks:
                stacked_layer = {}
                for name, modules in layers.items():
                    pair = []
                    for attr in ('weight', 'bias'):
                        params = [getattr(m, attr) for m in modules]
                        stack = torch.empty((len(params),) + tuple(params[0].shape), dtype=params[0].dtype,
                                            device=params[0].device)
                        for i, param in enumerate(params):
                            stack[i].copy_(param)
                            param.data = stack[i]
                            self._params.append(param)
                            self._pointers.append(param.data_ptr())
                        pair.append(stack)
                    stacked_layer[name] = (pair[0], pair[1])
                stacked_blocks.append(stacked_layer)
        self._blocks = stacked_blocks


class VisionTransformerCE(nn.Module):
    """One CKD backbone branch (ViT-B/16 by default) over ``[template tokens ; search tokens]``.

    Args:
        template_size, search_size: input crop sizes in pixels (128 / 256 officially).
        patch_size: patch/stride (16).
        embed_dim, depth, num_heads, mlp_ratio: ViT size (768 / 12 / 12 / 4).
        ce_loc: block indices with candidate elimination (official MCE: [3, 6, 9]).
        ce_keep_ratio: keep ratio per CE block, indexed by the CE block's rank in ``ce_loc``.
        drop_path_rate: maximum stochastic-depth rate; block i uses ``linspace(0, rate, depth)[i]``.
    """

    def __init__(self, template_size: int = 128, search_size: int = 256, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 ce_loc: tuple[int, ...] | list[int] = (), ce_keep_ratio: tuple[float, ...] | list[float] = (),
                 drop_path_rate: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        for size in (template_size, search_size):
            if size % patch_size:
                raise ValueError(f'crop size {size} is not a multiple of the patch size {patch_size}')
        if any(not 0 <= i < depth for i in ce_loc) or len(ce_keep_ratio) < len(ce_loc):
            raise ValueError(f'ce_loc {list(ce_loc)} must index blocks 0..{depth - 1} and have a keep ratio each '
                             f'(got {list(ce_keep_ratio)})')
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.template_size = template_size
        self.search_size = search_size
        self.template_feat_size = template_size // patch_size
        self.search_feat_size = search_size // patch_size
        self.ce_loc = tuple(int(i) for i in ce_loc)
        self.ce_keep_ratio = tuple(float(r) for r in ce_keep_ratio[:len(ce_loc)])

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + IMAGENET_POS_GRID ** 2, embed_dim))
        self.pos_embed_z = nn.Parameter(torch.zeros(1, self.template_feat_size ** 2, embed_dim))
        self.pos_embed_x = nn.Parameter(torch.zeros(1, self.search_feat_size ** 2, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()  # cpu: also under a meta-device build
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, rates[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.init_weights()

    @property
    def num_template_tokens(self) -> int:
        return self.template_feat_size ** 2

    @property
    def num_search_tokens(self) -> int:
        return self.search_feat_size ** 2

    def keep_ratio_at(self, block_index: int) -> float | None:
        """The configured keep ratio of a CE block, None for a plain block."""
        if block_index in self.ce_loc:
            return self.ce_keep_ratio[self.ce_loc.index(block_index)]
        return None

    def init_weights(self) -> None:
        """timm ViT initialisation (trunc-normal 0.02 tables and Linear weights, LayerNorm 1/0)."""
        for table in (self.pos_embed, self.pos_embed_z, self.pos_embed_x, self.cls_token):
            nn.init.trunc_normal_(table, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def embed(self, template: torch.Tensor, search: torch.Tensor,
              search_token_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequence ``[z + pos_z ; x * keep + pos_x]`` (B, Lz + Lx, C).

        ``template`` is a normalised crop (B, 3, H, W) or the tokens of :meth:`embed_template` (B, Lt, C).

        ``search_token_keep`` (B, Lx) multiplies the search patch embeddings *before* the positional
        embedding is added (masked modelling in training; a dropped token keeps only its position).
        """
        z = self.embed_template(template) if template.ndim == 4 else template
        x = self.patch_embed(search)
        if z.shape[1:] != (self.num_template_tokens, self.embed_dim) or x.shape[1] != self.num_search_tokens:
            raise ValueError(f'expected template {self.template_size}px and search {self.search_size}px crops, '
                             f'(or template tokens (B, {self.num_template_tokens}, {self.embed_dim})), '
                             f'got {tuple(template.shape[1:])} and {tuple(search.shape[2:])}')
        if search_token_keep is not None:
            if search_token_keep.shape != x.shape[:2]:
                raise ValueError(f'search_token_keep must be (B, {x.shape[1]}), got {tuple(search_token_keep.shape)}')
            x = x * search_token_keep.unsqueeze(-1).to(x.dtype)
        return torch.cat([z, x + self.pos_embed_x], dim=1)

    def embed_template(self, template: torch.Tensor) -> torch.Tensor:
        """Template tokens ``z + pos_z`` (B, Lt, C) of a normalised template crop (B, 3, H, W).

        They depend only on the template, so a tracker computes them once per target and passes them
        to :meth:`embed` (and :func:`run_branches`) in place of the crop: same numbers, less work per frame.
        """
        return self.patch_embed(template) + self.pos_embed_z
