"""One CKD backbone branch: an OSTrack-style one-stream ViT (``VisionTransformerCE``).

State-dict names equal the official ones (``cls_token``, ``pos_embed``, ``pos_embed_z``,
``pos_embed_x``, ``patch_embed.proj.*``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``).  A branch does not run itself: :func:`ckd_ros.core.model.elimination.run_branches`
drives several branches block by block (lock-step), which is what candidate elimination across
branches needs.  The per-block pieces are :meth:`Block.attention_residual` and
:meth:`Block.mlp_residual`.

timm 0.5.4's ``Mlp``/``DropPath`` are not imported: ``import timm`` pulls in torchvision, which does
not load with the CPU torch build here, so the two small layers are written out (same names, same
maths).
"""
from __future__ import annotations

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
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear -> GELU (exact erf) -> Linear, keys ``fc1``/``fc2`` (timm ``Mlp`` without dropout)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Conv2d(3 -> C, kernel = stride = patch) flattened row-major to tokens; no norm (official)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.proj.in_channels:
            raise ValueError(f"expected images (B, {self.proj.in_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.patch_size or images.shape[3] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the patch size {self.patch_size}")
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

    def forward(self, x: torch.Tensor, template_len: int | None = None, template_rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output (B, N, C) and, if ``template_len`` is given, the softmax probabilities of
        template query rows over the search keys, (B, heads, rows, N - template_len): the rows
        ``template_rows`` (B, r) indices, or all ``template_len`` template rows when None.

        The output uses ``scaled_dot_product_attention`` (no full probability matrix); candidate
        elimination only reads template-query rows of the probabilities, so only those rows are
        formed explicitly, as ``softmax(q k^T * scale)`` like the official code (softmax is per row).
        """
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        if template_len is None:
            return out, None
        if template_rows is None:
            q_rows = q[:, :, :template_len]
        else:
            index = template_rows[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
            q_rows = q.gather(2, index)
        logits = (q_rows @ k.transpose(-2, -1)) * self.scale
        return out, logits.softmax(dim=-1)[..., template_len:]


class Block(nn.Module):
    """Pre-norm transformer block; candidate elimination happens between its two residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attention_residual(self, x: torch.Tensor, template_len: int | None = None,
                           template_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x + Attn(LN1(x))`` and the template-row probabilities (see :meth:`Attention.forward`)."""
        out, probs = self.attn(self.norm1(x), template_len, template_rows)
        return x + self.drop_path(out), probs

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + MLP(LN2(x))``."""
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_residual(self.attention_residual(x)[0])


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
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        for size in (template_size, search_size):
            if size % patch_size:
                raise ValueError(f"crop size {size} is not a multiple of the patch size {patch_size}")
        if any(not 0 <= i < depth for i in ce_loc) or len(ce_keep_ratio) < len(ce_loc):
            raise ValueError(f"ce_loc {list(ce_loc)} must index blocks 0..{depth - 1} and have a keep ratio each "
                             f"(got {list(ce_keep_ratio)})")
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
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also under a meta-device build
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
            raise ValueError(f"expected template {self.template_size}px and search {self.search_size}px crops, "
                             f"(or template tokens (B, {self.num_template_tokens}, {self.embed_dim})), "
                             f"got {tuple(template.shape[1:])} and {tuple(search.shape[2:])}")
        if search_token_keep is not None:
            if search_token_keep.shape != x.shape[:2]:
                raise ValueError(f"search_token_keep must be (B, {x.shape[1]}), got {tuple(search_token_keep.shape)}")
            x = x * search_token_keep.unsqueeze(-1).to(x.dtype)
        return torch.cat([z, x + self.pos_embed_x], dim=1)

    def embed_template(self, template: torch.Tensor) -> torch.Tensor:
        """Template tokens ``z + pos_z`` (B, Lt, C) of a normalised template crop (B, 3, H, W).

        They depend only on the template, so a tracker computes them once per target and passes them
        to :meth:`embed` (and :func:`run_branches`) in place of the crop: same numbers, less work per frame.
        """
        return self.patch_embed(template) + self.pos_embed_z
