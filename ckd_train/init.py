"""Initialisation of the training network from pretrained files (CKD.md sec. 4.6).

* ``MODEL.RGB_BRANCH`` / ``TIR_BRANCH`` / ``RGB_TEACHER`` / ``TIR_TEACHER``: single-modality tracker
  (OSTrack / DropTrack: ``backbone.*``) or ViT (timm / MAE) files for the four branches, loaded with
  the core's :func:`~ckd_ros.core.checkpoint.load_vit_weights` (positional tables resized, DropTrack's
  temporal tables added).
* Heads: a tracker file's ``box_head.*`` initialises the teacher heads unchanged (``box_head_v``
  from ``RGB_TEACHER``, ``box_head_i`` from ``TIR_TEACHER``) and the fused head from ``RGB_BRANCH``
  with each tower's first conv duplicated along its input channels. ViT-only files leave the heads
  at their xavier initialisation.
* ``MODEL.PRETRAIN_FILE``: a CKD training checkpoint loaded strictly over everything (stage 2 starts
  from stage 1 this way). The official stage-1 files name a single-modality tracker here, whose
  strict load fails (defect D7); such a file has already initialised the branches, so it is
  skipped with a message instead.

Empty strings mean "keep the fresh initialisation" (training from scratch, e.g. on synthetic data).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ckd_ros.core.checkpoint import CheckpointError, load_tracker_head, load_vit_weights, read_checkpoint

from .model import CKDTrainingNet


PRETRAINED_KEYS = ("RGB_BRANCH", "TIR_BRANCH", "RGB_TEACHER", "TIR_TEACHER", "PRETRAIN_FILE")


def check_pretrained_files(cfg) -> None:
    """Fail before any network is built when a file the configuration names does not exist."""
    for key in PRETRAINED_KEYS:
        path = getattr(cfg.MODEL, key)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"pretrained file {path} (MODEL.{key}) does not exist; download it or set "
                                    f"the MODEL entry to \"\" to train from scratch")


def initialise_from_config(model: CKDTrainingNet, cfg, log: Callable[[str], None] | None = None) -> list[str]:
    """Load the files the configuration names; returns one line per action (also passed to ``log``)."""
    actions: list[str] = []
    cache: dict[str, Any] = {}

    def note(text: str) -> None:
        actions.append(text)
        if log is not None:
            log(f"[ckd-train] {text}")

    def read(path: str) -> Any:
        if path not in cache:
            if not Path(path).is_file():
                raise FileNotFoundError(f"pretrained file {path} (from the configuration) does not exist; "
                                        "download it or set the MODEL entry to \"\" to train from scratch")
            cache[path] = read_checkpoint(path)
        return cache[path]

    m = cfg.MODEL
    branches = [("RGB_BRANCH", model.rgb_branch, "rgb_branch"), ("TIR_BRANCH", model.tir_branch, "tir_branch"),
                ("RGB_TEACHER", model.teacher_rgb, "teacher_rgb"), ("TIR_TEACHER", model.teacher_tir, "teacher_tir")]
    for key, branch, name in branches:
        path = getattr(m, key)
        if not path:
            continue
        if name == "tir_branch" and model.shares_student and path == m.RGB_BRANCH:
            continue  # the same module, already loaded
        report = load_vit_weights(branch, read(path))
        note(f"{name} <- {path} ({report.layout}; {len(report.loaded)} tensors, resized {report.resized or 'none'})")
    for key, head, name in (("RGB_BRANCH", model.box_head, "box_head"), ("RGB_TEACHER", model.box_head_v, "box_head_v"),
                            ("TIR_TEACHER", model.box_head_i, "box_head_i")):
        path = getattr(m, key)
        if not path:
            continue
        try:
            report = load_tracker_head(head, read(path))
        except CheckpointError as exc:
            if "no box_head" in str(exc):
                note(f"{name}: {path} has no tracker head, kept the xavier initialisation")
                continue
            raise
        note(f"{name} <- {path} box_head ({len(report.loaded)} tensors, input-duplicated {report.resized or 'none'})")
    if m.PRETRAIN_FILE:
        raw = read(m.PRETRAIN_FILE)
        net = raw.get("net", raw) if isinstance(raw, dict) else raw
        keys = list(net) if isinstance(net, dict) else []
        if keys and not any(k.startswith(("rgb_branch.", "module.rgb_branch.")) for k in keys):
            note(f"PRETRAIN_FILE {m.PRETRAIN_FILE} is a single-modality tracker file (already used for the "
                 "branches); the official strict load would fail here (defect D7), skipped")
        else:
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in net.items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"PRETRAIN_FILE {m.PRETRAIN_FILE} does not fit the training network "
                                      f"(missing {missing[:6]}, unexpected {unexpected[:6]}); it must be a CKD "
                                      "training checkpoint of the same size (with teachers)")
            note(f"all weights <- {m.PRETRAIN_FILE} (strict)")
    return actions
