"""Training checkpoints in the official layout (written by the core's ``save_checkpoint``).

``net`` holds the training-mode state dict (students, fused head, teachers, teacher heads),
``optimizer`` the AdamW state, ``stats`` the last epoch's means per split and ``settings`` a plain
dict: the configuration, run options, per-epoch history and the torch RNG state (so a resumed run
draws the same DropPath masks as an uninterrupted one). Files load with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ckd_ros.core.checkpoint import (INFERENCE_PREFIXES, TRAINING_ONLY_PREFIXES, CheckpointError, read_checkpoint,
                                     save_checkpoint, strip_module_prefix)


def _plain_options(options: Any) -> dict:
    if options is None:
        return {}
    data = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    data.pop('config', None)
    return {k: (str(v) if isinstance(v, Path) else dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}


def save_training_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                             epoch: int, history: list[dict], train_config, options=None,
                             torch_rng_state: torch.Tensor | None = None) -> Path:
    last = history[-1] if history else {}
    stats = {split: {f'Loss/{k}' if k not in ('iou',) else 'IoU': v for k, v in last[split].items()}
             for split in ('train', 'val') if split in last}
    settings = {
        'config': train_config.cfg.to_dict(),
        'config_name': train_config.name,
        'synthetic': train_config.synthetic.to_dict(),
        'options': _plain_options(options),
        'history': history,
        'versions': {'torch': str(torch.__version__), 'python': platform.python_version()},
    }
    if torch_rng_state is not None:
        settings['torch_rng_state'] = torch_rng_state
    return save_checkpoint(path, model.state_dict(), epoch=epoch,
                           optimizer=optimizer.state_dict() if optimizer is not None else None,
                           stats=stats, settings=settings)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint for resuming: must carry ``net`` and ``epoch``."""
    raw = read_checkpoint(path)
    if not isinstance(raw, Mapping) or 'net' not in raw or 'epoch' not in raw:
        raise CheckpointError(f"{path} is not a training checkpoint (needs 'net' and 'epoch'; a stripped "
                              "inference file cannot resume training)")
    state = dict(raw)
    if not isinstance(state['net'], Mapping):
        raise CheckpointError(f"{path}: its 'net' entry is not a state dict ({type(state['net']).__name__})")
    state['net'] = strip_module_prefix(state['net'])  # saved from a DDP wrapper
    if not isinstance(state.get('settings'), Mapping):
        state['settings'] = {}  # official files pickle a Settings object: nothing to resume from it
    missing = [p for p in TRAINING_ONLY_PREFIXES if not any(k.startswith(p) for k in state['net'])]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(p.rstrip('.') for p in missing)} weights: it was stripped "
                              "for inference and cannot resume training")
    epoch = state['epoch']
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise CheckpointError(f"{path}: its 'epoch' entry is {_shown(epoch)}, not a whole number of epochs in "
                              f"0..{MAX_EPOCH}: not a training checkpoint this trainer wrote (or a damaged one)")
    state['settings'] = dict(state['settings'])
    state['settings']['history'] = _checked_history(path, state['settings'].get('history'), epoch)
    return state


# the largest epoch number a checkpoint may carry (the official runs train 30 epochs; a crafted number would
# make the resumed loop, the global step and the history run on without end)
MAX_EPOCH = 100_000


def _shown(value: Any, limit: int = 60) -> str:
    """``repr`` of a checkpoint value, cut to ``limit`` characters (a crafted file may hold anything)."""
    text = repr(value) if not isinstance(value, (list, tuple, dict)) else f'a {type(value).__name__} of {len(value)}'
    return text if len(text) <= limit else text[:limit] + '...'


def _checked_history(path, history: Any, epoch: int) -> list[dict]:
    """The per-epoch statistics of a checkpoint's ``settings``: at most one entry per epoch up to ``epoch``, each
    a mapping with an increasing integer ``epoch`` and ``train`` (and optional ``val``) mappings of numbers.
    Anything else is refused naming the entry ([] when the file keeps none, as the official ones)."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise CheckpointError(f'{path}: settings.history is {_shown(history)}, not a list of per-epoch statistics')
    if len(history) > epoch:
        raise CheckpointError(f'{path}: settings.history holds {len(history)} entries for {epoch} epoch(s) (at most '
                              'one per epoch): a damaged or crafted checkpoint')
    checked, previous = [], 0
    for index, entry in enumerate(history):
        where = f'{path}: settings.history[{index}]'
        if not isinstance(entry, Mapping):
            raise CheckpointError(f'{where} is {_shown(entry)}, not a mapping of epoch statistics')
        number = entry.get('epoch')
        if isinstance(number, bool) or not isinstance(number, int) or not previous < number <= epoch:
            raise CheckpointError(f'{where}: its epoch {_shown(number)} is not a whole number in '
                                  f'{previous + 1}..{epoch} (entries go up one epoch at a time)')
        previous = number
        for split in ('train', 'val'):
            values = entry.get(split, {} if split == 'val' else None)
            if not isinstance(values, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    for k, v in values.items()):
                raise CheckpointError(f'{where}: its {split!r} entry is {_shown(values)}, not a mapping of '
                                      'statistic names to numbers')
        checked.append(dict(entry))
    return checked


def export_inference_checkpoint(source: str | os.PathLike, destination: str | os.PathLike,
                                keep_teachers: bool = False, overwrite: bool = False) -> Path:
    """Strip a training checkpoint for shipping: same top-level structure, ``optimizer`` None,
    ``net`` reduced to the inference keys (unless ``keep_teachers``), history kept, RNG state dropped.

    An existing ``destination`` is refused (:class:`FileExistsError`) unless ``overwrite``; the source itself
    never is replaced."""
    source, destination = Path(source), Path(destination)
    if destination.is_dir():
        raise IsADirectoryError(f"export destination {destination} is a folder; name the file to write "
                                f"(e.g. {destination / 'ckd.pth.tar'})")
    for parent in destination.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise NotADirectoryError(f'cannot write export destination {destination}: {parent} is a file, not '
                                         'a folder; choose another destination')
            break
    if destination.exists() and source.exists() and destination.samefile(source):
        raise FileExistsError(f'export destination {destination} is the source checkpoint itself: stripping it in '
                              'place would lose the optimizer and teachers; write to another file')
    if (destination.exists() or destination.is_symlink()) and not overwrite:
        raise FileExistsError(f'export destination {destination} exists; pass --overwrite (overwrite=True) to replace '
                              'it, or write to another file')
    raw = read_checkpoint(source)
    if not isinstance(raw, Mapping) or not isinstance(raw.get('net'), Mapping):
        raise CheckpointError(f"{source} has no 'net' entry (a CKD checkpoint: dict with 'net', 'epoch' ...)")
    net = {k: v for k, v in strip_module_prefix(raw['net']).items()
           if keep_teachers or k.startswith(INFERENCE_PREFIXES)}
    if not any(k.startswith(INFERENCE_PREFIXES) for k in net):
        raise CheckpointError(f"{source} holds no {'/'.join(p.rstrip('.') for p in INFERENCE_PREFIXES)} weights: "
                              "not a CKD checkpoint")
    settings = dict(raw['settings']) if isinstance(raw.get('settings'), Mapping) else {}
    settings.pop('torch_rng_state', None)
    settings['stripped'] = {'optimizer': True, 'teachers': not keep_teachers, 'source': os.path.basename(str(source))}
    return save_checkpoint(destination, net, epoch=int(raw.get('epoch', 0)), optimizer=None,
                           stats=raw.get('stats') if isinstance(raw.get('stats'), Mapping) else None,
                           settings=settings, actor_type=raw.get('actor_type', 'OSTrack_CKD_Actor'),
                           net_type=raw.get('net_type', 'OSTrack_CKD'))
