"""Deterministic "recipe" weights and inputs of the CKD reference run (``docs/spec/reference/README.md``).

Every state-dict key ``k`` gets ``z = default_rng(s).standard_normal(prod(shape))`` (float64) with
``s = int.from_bytes(sha256(f"{seed}/{k}").digest()[:8], "little")``, transformed by the first
matching rule of :func:`recipe_array` and cast to float32.  The official reference outputs were
produced with these weights, so the re-implementation is checked number for number without the
real checkpoints; benchmarks and tests of untrained models use them too.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

RECIPE_SEED = 20240503
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference run's input order (names and crop sizes of the official 128/256 model).
INPUT_ORDER = ('template_rgb', 'template_tir', 'search_rgb', 'search_tir')
_TABLES = ('pos_embed', 'pos_embed_z', 'pos_embed_x', 'cls_token')


def key_seed(key: str, seed: int = RECIPE_SEED) -> int:
    """The per-key generator seed: first 8 bytes (little endian) of sha256("<seed>/<key>")."""
    return int.from_bytes(hashlib.sha256(f'{seed}/{key}'.encode()).digest()[:8], 'little')


def recipe_array(key: str, shape: Iterable[int], seed: int = RECIPE_SEED) -> np.ndarray:
    """The recipe value of one state-dict entry (float32, or int64 zeros for ``num_batches_tracked``)."""
    shape = tuple(int(s) for s in shape)
    if key.endswith('num_batches_tracked'):
        return np.zeros(shape, dtype=np.int64)
    z = np.random.default_rng(key_seed(key, seed)).standard_normal(math.prod(shape)).reshape(shape)
    last = key.rsplit('.', 1)[-1]
    if key.endswith('running_var'):
        value = 1 + 0.2 * np.abs(z)
    elif key.endswith('running_mean'):
        value = 0.1 * z
    elif key.endswith('box_head.conv5_size.bias'):
        # size sigmoid ~0.25 keeps the tracked box scale stable under random weights
        value = math.log(0.25 / 0.75) + 0.02 * z
    elif last in _TABLES or last == 'bias':
        value = 0.02 * z
    elif last == 'weight' and len(shape) == 1:
        value = 1 + 0.1 * z
    elif last == 'weight':
        value = z / math.sqrt(math.prod(shape[1:]))
    else:
        raise ValueError(f'the weight recipe has no rule for key {key!r}')
    return value.astype(np.float32)


def recipe_state_dict(shapes: Mapping[str, Iterable[int]], seed: int = RECIPE_SEED) -> "OrderedDict[str, torch.Tensor]":
    """Recipe tensors for ``{key: shape}`` (e.g. the shapes of ``model.state_dict()``), in the given order."""
    return OrderedDict((k, torch.from_numpy(recipe_array(k, s, seed))) for k, s in shapes.items())


@torch.no_grad()
def load_recipe_weights(model: nn.Module, seed: int = RECIPE_SEED) -> nn.Module:
    """Fill every entry of ``model.state_dict()`` with its recipe value, in place; returns the model.

    Entries that alias an earlier one (shared student: ``tir_branch.*`` is ``rgb_branch.*``) keep the
    earlier key's value, as in the reference run.  One tensor is generated at a time (the ViT-B model
    takes about 10 s on 2 cores: 184 M normals).
    """
    seen_storage: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen_storage:
            continue
        seen_storage.add(ident)
        value = torch.from_numpy(recipe_array(key, tensor.shape, seed))
        tensor.data.copy_(value.to(tensor.dtype))
    return model


def recipe_images(batch: int = 2, seed: int = RECIPE_SEED, template_size: int = 128,
                  search_size: int = 256) -> "OrderedDict[str, np.ndarray]":
    """The reference run's uint8 input crops (B, 3, S, S); TIR crops repeat channel 0 in channels 1-2."""
    rng = np.random.default_rng(seed)
    images = OrderedDict()
    for name in INPUT_ORDER:
        size = template_size if name.startswith('template') else search_size
        img = rng.integers(0, 256, (batch, 3, size, size), np.uint8)
        if name.endswith('tir'):
            img[:, 1] = img[:, 0]
            img[:, 2] = img[:, 0]
        images[name] = img
    return images


def recipe_inputs(batch: int = 2, seed: int = RECIPE_SEED, template_size: int = 128,
                  search_size: int = 256) -> "OrderedDict[str, torch.Tensor]":
    """:func:`recipe_images` normalised in float32 exactly as the reference run:
    ``(img / 255 - mean) / std`` with ImageNet statistics."""
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    out = OrderedDict()
    for name, img in recipe_images(batch, seed, template_size, search_size).items():
        out[name] = torch.from_numpy((img.astype(np.float32) / np.float32(255) - mean) / std)
    return out


def fingerprint(tensor: torch.Tensor) -> tuple[float, float]:
    """``(sum, sum of squares)`` in float64, the form of ``weights_fingerprint.json``."""
    t = tensor.detach().to(torch.float64)
    return float(t.sum()), float((t * t).sum())
