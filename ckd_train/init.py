"""Initialisation of the training network from pretrained files (``docs/spec/CKD.md`` sec. 4.6).

* ``MODEL.RGB_BRANCH`` / ``TIR_BRANCH`` / ``RGB_TEACHER`` / ``TIR_TEACHER``: single-modality tracker
  (OSTrack / DropTrack: ``backbone.*``) or ViT (timm / MAE) files for the four branches, loaded with
  the core's :func:`~ckd_ros.core.checkpoint.load_vit_weights` (positional tables resized, DropTrack's
  temporal tables added).
* Heads: a tracker file's ``box_head.*`` initialises the teacher heads unchanged (``box_head_v``
  from ``RGB_TEACHER``, ``box_head_i`` from ``TIR_TEACHER``) and the fused head from ``RGB_BRANCH``
  with each tower's first conv duplicated along its input channels. ViT-only files leave the heads
  at their xavier initialisation.
* ``MODEL.PRETRAIN_FILE``: a CKD training checkpoint loaded strictly over everything (stage 2 starts
  from stage 1 this way). An inference checkpoint (exactly the students' and fused head's keys:
  ``python -m ckd_train.export`` output, the shipped weights, released files stripped of their
  teachers) loads those keys strictly and leaves the teachers and teacher heads as the per-branch
  loads above made them (fine-tuning from inference weights; not in the official code, which would
  fail its strict load). The official stage-1 files name a single-modality tracker here, whose
  strict load fails (defect D7); such a file has already initialised the branches, so it is
  skipped with a message instead.

Relative paths in these entries are opened from the current working folder (the official configs
use ``./pretrained/...`` relative to the repository root), not from the YAML file's folder.

Empty strings mean "keep the fresh initialisation" (training from scratch, e.g. on synthetic data).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ckd_ros.core.checkpoint import (INFERENCE_PREFIXES, TRAINING_ONLY_PREFIXES, CheckpointError, load_tracker_head,
                                     load_vit_weights, read_checkpoint, strip_module_prefix)

from .model import CKDTrainingNet


PRETRAINED_KEYS = ('RGB_BRANCH', 'TIR_BRANCH', 'RGB_TEACHER', 'TIR_TEACHER', 'PRETRAIN_FILE')


def check_pretrained_files(cfg) -> None:
    """Fail before any network is built when a file the configuration names does not exist."""
    for key in PRETRAINED_KEYS:
        path = getattr(cfg.MODEL, key)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f'pretrained file {path} (MODEL.{key}) does not exist; download it or set '
                                    f'the MODEL entry to "" to train from scratch')


def initialise_from_config(model: CKDTrainingNet, cfg, log: Callable[[str], None] | None = None) -> list[str]:
    """Load the files the configuration names; returns one line per action (also passed to ``log``)."""
    actions: list[str] = []
    cache: dict[str, Any] = {}

    def note(text: str) -> None:
        actions.append(text)
        if log is not None:
            log(f'[ckd-train] {text}')

    def read(path: str) -> Any:
        if path not in cache:
            if not Path(path).is_file():
                raise FileNotFoundError(f'pretrained file {path} (from the configuration) does not exist; '
                                        'download it or set the MODEL entry to "" to train from scratch')
            cache[path] = read_checkpoint(path)
        return cache[path]

    m = cfg.MODEL
    branches = [('RGB_BRANCH', model.rgb_branch, 'rgb_branch'), ('TIR_BRANCH', model.tir_branch, 'tir_branch'),
                ('RGB_TEACHER', model.teacher_rgb, 'teacher_rgb'), ('TIR_TEACHER', model.teacher_tir, 'teacher_tir')]
    for key, branch, name in branches:
        path = getattr(m, key)
        if not path:
            continue
        if name == 'tir_branch' and model.shares_student and path == m.RGB_BRANCH:
            continue  # the same module, already loaded
        report = load_vit_weights(branch, read(path))
        note(f"{name} <- {path} ({report.layout}; {len(report.loaded)} tensors, resized {report.resized or 'none'})")
    for key, head, name in (('RGB_BRANCH', model.box_head, 'box_head'), ('RGB_TEACHER', model.box_head_v, 'box_head_v'),
                            ('TIR_TEACHER', model.box_head_i, 'box_head_i')):
        path = getattr(m, key)
        if not path:
            continue
        try:
            report = load_tracker_head(head, read(path))
        except CheckpointError as exc:
            if 'no box_head' in str(exc):
                note(f'{name}: {path} has no tracker head, kept the xavier initialisation')
                continue
            raise
        note(f"{name} <- {path} box_head ({len(report.loaded)} tensors, input-duplicated {report.resized or 'none'})")
    if m.PRETRAIN_FILE:
        raw = read(m.PRETRAIN_FILE)
        net = raw.get('net', raw) if isinstance(raw, dict) else raw
        keys = list(net) if isinstance(net, dict) else []
        if keys and not any(k.startswith(('rgb_branch.', 'module.rgb_branch.')) for k in keys):
            note(f'PRETRAIN_FILE {m.PRETRAIN_FILE} is a single-modality tracker file (already used for the '
                 'branches); the official strict load would fail here (defect D7), skipped')
        else:
            note(load_pretrain_file(model, net, m.PRETRAIN_FILE, teacher_sources=(m.RGB_TEACHER, m.TIR_TEACHER)))
    return actions


def _fit_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> list[str]:
    """Missing, unexpected and other-shape keys of ``state`` against ``expected`` (empty: it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f'{k} {tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__} '
                f'vs {tuple(v.shape)}' for k, v in expected.items()
                if k in state and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(v.shape))]
    return [f"{label} {len(items)}: {items[:4]}{' ...' if len(items) > 4 else ''}"
            for label, items in (('missing', missing), ('unexpected', unexpected), ('other shape', reshaped)) if items]


def load_pretrain_file(model: CKDTrainingNet, net: Any, source: str,
                       teacher_sources: tuple[str, str] = ('', '')) -> str:
    """Load ``MODEL.PRETRAIN_FILE``'s ``net`` into the training network; returns the line to print.

    * A CKD training checkpoint (students, fused head, teachers, teacher heads): strict load of everything
      (the official behaviour; stage 2 starts from stage 1 this way).
    * An inference checkpoint (exactly the keys ``rgb_branch.*``, ``tir_branch.*``, ``box_head.*`` of this
      network, as ``python -m ckd_train.export`` writes and the shipped weights hold): the students and the
      fused head are loaded strictly; the teachers and teacher heads keep what the per-branch loads
      (``RGB_TEACHER`` / ``TIR_TEACHER``) or the fresh initialisation gave them.

    A ``module.`` key prefix is accepted. Anything else (missing or unexpected keys, other shapes, another
    network size) raises :class:`CheckpointError` naming the keys.
    """
    if not isinstance(net, Mapping) or not net:
        raise CheckpointError(f"PRETRAIN_FILE {source} holds no state dict ('net' entry or a plain state dict)")
    state = strip_module_prefix(net)
    expected = model.state_dict()
    inference_only = not any(k.startswith(TRAINING_ONLY_PREFIXES) for k in state)
    if inference_only:
        expected = OrderedDict((k, v) for k, v in expected.items() if k.startswith(INFERENCE_PREFIXES))
    problems = _fit_problems(expected, state)
    if problems:
        kind = ('no teacher keys, so compared with the students and fused head only' if inference_only
                else 'teacher keys, so compared with the whole training network')
        raise CheckpointError(f"PRETRAIN_FILE {source} does not fit the training network (it has {kind}; "
                              f"{'; '.join(problems)}): it must be a CKD checkpoint of the configuration's network "
                              "size, either a training checkpoint (students, teachers and heads) or an inference "
                              "checkpoint (exactly rgb_branch, tir_branch, box_head, as python -m ckd_train.export "
                              "writes)")
    if not inference_only:
        model.load_state_dict(state, strict=True)
        return f'all weights <- {source} (strict)'
    if getattr(model, 'shares_student', False):
        differ = [k for k in state if k.startswith('rgb_branch.')
                  and not torch.equal(state[k], state['tir_branch.' + k[len('rgb_branch.'):]])]
        if differ:
            raise CheckpointError(f"PRETRAIN_FILE {source}: the configuration shares one student for RGB and TIR, but "
                                  f"the file's rgb_branch/tir_branch weights differ ({len(differ)} keys, e.g. "
                                  f"{differ[0]}); use a two-student configuration for this file")
    model.load_state_dict(state, strict=False)  # every student / fused-head key checked above; teachers untouched
    rgb_teacher, tir_teacher = teacher_sources
    if not rgb_teacher and not tir_teacher:
        origin = 'their fresh initialisation: RGB_TEACHER and TIR_TEACHER are empty'
    else:
        origin = (f"teacher_rgb/box_head_v from {rgb_teacher or 'the fresh initialisation'}, "
                  f"teacher_tir/box_head_i from {tir_teacher or 'the fresh initialisation'}")
    return (f'students and fused head <- {source} (inference checkpoint without teachers: rgb_branch, tir_branch, '
            f'box_head; {len(state)} tensors); teachers and teacher heads kept ({origin})')
