"""Parameter groups, optimiser and learning-rate schedule (``docs/spec/CKD.md`` sec. 4.4).

``TRAIN.PARAM_KEY`` is a list of ``[name_substring, lr]``: a parameter joins the group of the first
substring that occurs in its name; parameters matching none are frozen (``requires_grad = False``).
AdamW (betas 0.9/0.999, eps 1e-8) with ``TRAIN.WEIGHT_DECAY`` on every trainable tensor. The CKD
configs use a constant learning rate (``SCHEDULER.TYPE: null``); OSTrack's ``step`` schedule (every
group's rate times ``SCHEDULER.DECAY_RATE`` after each ``TRAIN.LR_DROP_EPOCH`` epochs) is available
for other configurations.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def parameter_groups(model: nn.Module, param_key) -> list[dict]:
    """Groups ``{"name", "params", "lr"}`` in PARAM_KEY order; freezes the unmatched parameters.

    An empty PARAM_KEY is an error (the official code would train nothing). A key that matches no
    parameter is an error too: it is almost always a typo that would silently freeze a branch.
    """
    if not param_key:
        raise ValueError('TRAIN.PARAM_KEY is empty: name at least one [substring, lr] pair '
                         '(e.g. [[head, 5.0e-5]]) or nothing would be trained')
    groups: "OrderedDict[str, dict]" = OrderedDict()
    for key, lr in param_key:
        if key in groups:
            raise ValueError(f'TRAIN.PARAM_KEY names {key!r} twice')
        groups[key] = {'name': key, 'params': [], 'lr': float(lr)}
    for name, param in model.named_parameters():
        match = next((key for key in groups if key in name), None)
        if match is None:
            param.requires_grad_(False)
        else:
            param.requires_grad_(True)
            groups[match]['params'].append(param)
    empty = [k for k, g in groups.items() if not g['params']]
    if empty:
        raise ValueError(f'TRAIN.PARAM_KEY entries {empty} match no parameter name '
                         '(names start with rgb_branch, tir_branch, box_head, teacher_rgb, teacher_tir, '
                         'box_head_v, box_head_i)')
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW over the PARAM_KEY groups (TRAIN.OPTIMIZER must be ADAMW, the only official choice)."""
    if cfg.TRAIN.OPTIMIZER.upper() != 'ADAMW':
        raise ValueError(f'TRAIN.OPTIMIZER {cfg.TRAIN.OPTIMIZER!r} is not supported; CKD trains with ADAMW')
    lr_factor(cfg, 1)  # validates TRAIN.SCHEDULER
    groups = parameter_groups(model, cfg.TRAIN.PARAM_KEY)
    return torch.optim.AdamW(groups, lr=cfg.TRAIN.LR, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.TRAIN.WEIGHT_DECAY)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lr_factor(cfg, epoch: int) -> float:
    """Multiplier of every group's base rate in (1-based) ``epoch``."""
    kind = cfg.TRAIN.SCHEDULER.TYPE
    if kind in (None, '', 'none', 'None'):
        return 1.0
    if kind == 'step':
        step = cfg.TRAIN.LR_DROP_EPOCH
        if step < 1:
            raise ValueError(f'TRAIN.LR_DROP_EPOCH must be >= 1 for the step schedule, got {step}')
        return float(cfg.TRAIN.SCHEDULER.DECAY_RATE) ** ((epoch - 1) // step)
    raise ValueError(f"TRAIN.SCHEDULER.TYPE {kind!r} is not supported; use null (constant, the CKD configs) or 'step'")


def apply_lr_schedule(optimizer: torch.optim.Optimizer, cfg, epoch: int) -> float:
    """Set every group's rate for ``epoch`` from its base rate (stored once as ``initial_lr``)."""
    factor = lr_factor(cfg, epoch)
    for group in optimizer.param_groups:
        group.setdefault('initial_lr', group['lr'])
        group['lr'] = group['initial_lr'] * factor
    return factor
