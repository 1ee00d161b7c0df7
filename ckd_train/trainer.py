"""The training loop: data, model, optimiser, DDP, logging, checkpoints, resume (``docs/spec/CKD.md`` sec. 4).

One process trains on ``TRAIN.BATCH_SIZE`` samples per step; under ``torchrun`` every process does
(gloo on CPU, NCCL on GPU), DDP averages the gradients (``find_unused_parameters=True`` like the
official trainer: the ViT ``cls_token``/``pos_embed`` tables never take part), and process ``r`` of
``W`` takes the samples ``r, r + W, r + 2W, ...`` of the epoch (DistributedSampler split, no
padding). ``DATA.TRAIN.SAMPLE_PER_EPOCH`` samples per epoch in all, incomplete batches dropped.

Per step: forward of the four-branch graph, total CKD loss, backward, gradient clipping to a total
norm of ``TRAIN.GRAD_CLIP_NORM`` over all parameters, AdamW step (constant learning rate).

Outputs under ``--output`` (default ``./output``), official layout for checkpoints:
``checkpoints/train/ckd/<name>/OSTrack_CKD_ep<epoch:04d>.pth.tar``; ``logs/<name>/train.csv``
(every ``TRAIN.PRINT_INTERVAL`` steps), ``logs/<name>/epochs.csv`` (epoch means, train and
validation) and TensorBoard event files when ``torch.utils.tensorboard`` imports.

A run starting at epoch ``e`` (``e - 1`` is the resumed checkpoint's epoch, ``e = 1`` for a fresh run)
first drops the CSV rows of epochs ``>= e``: the rows of an epoch re-run after a resume, or of an epoch
whose checkpoint a killed run never wrote, so each (epoch, step) appears once and the files hold the
keys of an uninterrupted run. TensorBoard event files are only appended to: after a resume they may
hold the re-run steps twice. A resume into an output folder that holds another run of the same name
(its checkpoint is not one of that folder's) is refused unless ``--overwrite``, which then drops all
of the other run's CSV rows; a fresh run into a folder with checkpoints is refused likewise, and so is a resume
from a checkpoint of the folder's own run that has checkpoints of later epochs (the resumed run would replace
them; the error names them). The resumed checkpoint's epoch, history, optimizer state and RNG state are checked
before use (a crafted or damaged entry is a ``CheckpointError`` naming it and the shapes), and the CSV logs are
read only when they are regular files (a FIFO under a ``*.csv`` name would block the run).
"""
from __future__ import annotations

import csv
import filecmp
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ckd_ros.core.api import resolve_device
from ckd_ros.core.checkpoint import CheckpointError
from ckd_ros.core.results import atomic_write_text
from ckd_ros.core.synthetic import SyntheticScene

from .checkpoints import load_training_checkpoint, save_training_checkpoint
from .data import CKDProcessing, CKDTrainingDataset, ProcessingSettings, TrackingSampler, worker_count
from .init import check_pretrained_files, initialise_from_config
from .losses import CKDLossWeights, ckd_loss
from .model import CKDTrainingNet, build_training_model, ce_keep_rate_for_epoch
from .optim import apply_lr_schedule, build_optimizer, trainable_parameters
from .settings import DATASET_KINDS, SYNTHETIC_NAMES, SyntheticSettings, TrainConfig, load_train_config


@dataclass
class TrainOptions:
    """Run-time options (everything that is not in the configuration)."""

    config: str | Path | TrainConfig
    output_dir: Path = Path('output')
    resume: Path | None = None
    overwrite: bool = False  # replace checkpoints an earlier run left in the output folder
    epochs: int | None = None  # overrides TRAIN.EPOCH
    device: str = 'auto'
    workers: int | None = None  # DataLoader workers (default: TRAIN.NUM_WORKER capped by the CPUs)
    threads: int | None = None  # torch intra-op threads
    seed: int = 42
    data_roots: Mapping[str, str] = field(default_factory=dict)
    samples_per_epoch: int | None = None  # overrides DATA.TRAIN.SAMPLE_PER_EPOCH
    batch_size: int | None = None  # overrides TRAIN.BATCH_SIZE
    batchnorm: str = 'train'  # "train" (official: batch statistics) or "frozen" (running statistics)
    sync_batchnorm: bool = False  # SyncBatchNorm across GPUs (CUDA only; not in the official code)
    progress: bool = True
    validate: bool = True
    log_interval: int | None = None  # overrides TRAIN.PRINT_INTERVAL
    init: Path | None = None  # overrides MODEL.PRETRAIN_FILE (start from another run's weights)


@dataclass
class TrainResult:
    checkpoints: list[Path]
    epoch_stats: list[dict[str, Any]]
    step_losses: list[float]
    output_dir: Path


# ----------------------------------------------------------------------------- sources
def open_sequences(name: str, synthetic: SyntheticSettings, data_roots: Mapping[str, str]) -> list:
    """The training sequences a dataset name stands for."""
    if name in SYNTHETIC_NAMES:
        lo, hi = synthetic.val_seeds if name == 'SYNTHETIC_VAL' else synthetic.seeds
        # real-motion pools stay apart: training tracks for training, validation tracks for validation
        split = 'val' if name == 'SYNTHETIC_VAL' else 'train'
        return [SyntheticScene(seed, synthetic.length, synthetic.size, failure_fraction=synthetic.failure_fraction,
                               noise=synthetic.noise, world=synthetic.world, motion_split=split)
                for seed in range(lo, hi)]
    if name not in DATASET_KINDS:
        raise ValueError(f"unknown training dataset {name!r}; known: {', '.join([*SYNTHETIC_NAMES, *DATASET_KINDS])}")
    root = data_roots.get(name)
    if root is None:
        raise ValueError(f'dataset {name} needs its folder: pass --data-root {name}=PATH')
    from ckd_ros.core.datasets import open_dataset
    options = {'split': 'train'} if name == 'VTUAV' else {}
    return list(open_dataset(DATASET_KINDS[name], root, **options))


def build_dataset(tc: TrainConfig, split: str, data_roots: Mapping[str, str], seed: int,
                  samples: int | None = None) -> CKDTrainingDataset:
    cfg = tc.cfg
    section = cfg.DATA.TRAIN if split == 'train' else cfg.DATA.VAL
    names, ratios = list(section.DATASETS_NAME), list(section.DATASETS_RATIO)
    if len(names) != len(ratios):
        raise ValueError(f'DATA.{split.upper()}.DATASETS_NAME and DATASETS_RATIO differ in length ({names}, {ratios})')
    datasets = [open_sequences(n, tc.synthetic, data_roots) for n in names]
    sampler = TrackingSampler(datasets, ratios, cfg.DATA.MAX_SAMPLE_INTERVAL)
    processing = CKDProcessing(ProcessingSettings.from_config(cfg, train=split == 'train'))
    count = samples if samples is not None else section.SAMPLE_PER_EPOCH
    # validation draws its own samples (offset seed), never the training ones
    return CKDTrainingDataset(sampler, processing, count, seed=seed if split == 'train' else seed + 1_000_003)


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """torchrun environment -> process group (NCCL for CUDA devices, gloo otherwise)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return DistInfo(rank, world, local_rank)


def resolve_training_device(requested: str, local_rank: int) -> torch.device:
    """The core's device resolution; under torchrun a bare "cuda" means this process's GPU."""
    try:
        device = resolve_device(requested)
    except RuntimeError as exc:  # CUDA asked for but absent: a usage error, reported without a traceback
        raise ValueError(str(exc)) from None
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------- logging
class MetricLog:
    """CSV files (and TensorBoard when importable) on the main process.

    Rows of epochs ``>= first_epoch`` already in the folder's CSV files are dropped when the log opens
    (each file rewritten atomically); TensorBoard event files keep whatever they hold.
    """

    def __init__(self, directory: Path, tensorboard_dir: Path, enabled: bool, first_epoch: int = 1):
        self.enabled = enabled
        self._files: dict[str, tuple[Any, csv.DictWriter]] = {}
        self.directory = directory
        self._tb = None
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            for path in sorted(directory.glob('*.csv')):
                _drop_rows_from_epoch(path, first_epoch)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(tensorboard_dir))
            except Exception:  # tensorboard is optional; CSV is always written
                self._tb = None

    def write(self, table: str, row: Mapping[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        if table not in self._files:
            path = self.directory / f'{table}.csv'
            existing = path.is_file() and path.stat().st_size > 0
            handle = open(path, 'a', newline='')
            if existing:
                with open(path) as f:
                    fields = next(csv.reader(f))
            else:
                fields = list(row)
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction='ignore')
            if not existing:
                writer.writeheader()
            self._files[table] = (handle, writer)
        handle, writer = self._files[table]
        writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
        handle.flush()
        if self._tb is not None and step is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ('epoch', 'step'):
                    self._tb.add_scalar(f'{table}/{k}', v, step)

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        if self._tb is not None:
            self._tb.close()


# the largest CSV log read back (a run of the official 30 epochs writes a few MB even at one row per step)
MAX_CSV_LOG_BYTES = 1 << 30


def _read_csv_log(path: Path) -> list[list[str]]:
    """The rows of a CSV log of the output folder. Only a regular file up to :data:`MAX_CSV_LOG_BYTES` is read: a
    FIFO or device under a ``*.csv`` name would block the run or never end, a symbolic link would have the run
    rewrite a file elsewhere. Raises ValueError naming the file otherwise."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if os.path.islink(path):
            raise ValueError(f'CSV log {path} is a symbolic link; the logs of a run must be regular files in its '
                             'output folder (remove it, or choose another --output)') from None
        raise
    with os.fdopen(fd, 'rb') as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f'CSV log {path} is not a regular file (a FIFO or device); remove it, or choose another '
                             '--output')
        if info.st_size > MAX_CSV_LOG_BYTES:
            raise ValueError(f'CSV log {path} holds {info.st_size} bytes, over the {MAX_CSV_LOG_BYTES} a run writes; '
                             'remove it, or choose another --output')
        data = handle.read(MAX_CSV_LOG_BYTES + 1)
    try:
        return list(csv.reader(io.StringIO(data.decode('utf-8'), newline='')))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f'CSV log {path} is not a CSV file ({type(exc).__name__}: {exc}); remove it, or choose '
                         'another --output') from None


def _epoch_of(row: list[str], column: int) -> int | None:
    """The epoch of a CSV row (None when the field is no plain number of at most 9 digits)."""
    if len(row) <= column:
        return None
    value = row[column]
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None


def _drop_rows_from_epoch(path: Path, first_epoch: int) -> None:
    """Rewrite the CSV file ``path`` without its rows of epochs ``>= first_epoch``.

    Rows cut short by a killed write (field count unlike the header's) go too. A file left with no row
    is removed, so the new run writes its own header.
    """
    rows = _read_csv_log(path)
    if not rows or 'epoch' not in rows[0]:
        return
    header, column = rows[0], rows[0].index('epoch')
    kept = [row for row in rows[1:]
            if len(row) == len(header) and _epoch_of(row, column) is not None and _epoch_of(row, column) < first_epoch]
    if len(kept) == len(rows) - 1:
        return
    if not kept:
        path.unlink()
        return
    text = io.StringIO()
    csv.writer(text).writerows([rows[0], *kept])
    atomic_write_text(path, text.getvalue(), overwrite=True)


def _mean_logs(logs: list[dict[str, float]], dist_info: DistInfo, device: torch.device) -> dict[str, float]:
    """Mean of every logged value over the steps (and over processes under DDP)."""
    if not logs:
        return {}
    keys = sorted(logs[0])
    sums = torch.tensor([[sum(log[k] for log in logs) for k in keys] + [len(logs)]], dtype=torch.float64)
    if dist_info.enabled:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    total = sums[0, :-1] / sums[0, -1]
    return {k: float(v) for k, v in zip(keys, total)}


# ----------------------------------------------------------------------------- loop
def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _forward_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], cfg, weights: CKDLossWeights,
                  keep_rate: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(batch['template_rgb'], batch['template_tir'], batch['search_rgb'], batch['search_tir'],
                search_token_keep=batch['search_token_keep'], ce_keep_rate=keep_rate)
    return ckd_loss(out, batch['search_anno'], cfg.DATA.SEARCH.SIZE, cfg.MODEL.BACKBONE.STRIDE, weights)


def set_batchnorm_mode(model: nn.Module, mode: str) -> None:
    """``frozen``: every BatchNorm uses (and keeps) its running statistics even in training mode."""
    if mode == 'frozen':
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    elif mode != 'train':
        raise ValueError(f"batchnorm mode must be 'train' (official) or 'frozen', got {mode!r}")


def _loader(dataset, indices, batch_size: int, workers: int, device: torch.device):
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, drop_last=True,
                                       num_workers=workers, pin_memory=device.type == 'cuda',
                                       persistent_workers=False)


def _check_data_roots(cfg, data_roots: Mapping[str, str]) -> list[str]:
    """Refuse a ``--data-root`` name that is no dataset (a typo would otherwise be ignored); returns the
    known names this configuration does not use (their folders are ignored)."""
    unknown = sorted(set(data_roots) - set(DATASET_KINDS))
    if unknown:
        raise ValueError(f"--data-root names unknown dataset(s) {unknown}; known: {', '.join(DATASET_KINDS)}")
    used = set(cfg.DATA.TRAIN.DATASETS_NAME) | set(cfg.DATA.VAL.DATASETS_NAME)
    return sorted(set(data_roots) - used)


# settings that decide which samples a step sees: a resumed run that changes them is not the continuation
_RUN_SETTINGS = (('seed', lambda o, c: o.get('seed')), ('batch size', lambda o, c: c['TRAIN']['BATCH_SIZE']),
                 ('samples per epoch', lambda o, c: c['DATA']['TRAIN']['SAMPLE_PER_EPOCH']),
                 ('batchnorm', lambda o, c: o.get('batchnorm')))


def _resume_differences(settings: Mapping[str, Any], options: "TrainOptions", cfg) -> list[str]:
    """The run settings of this resumed run that differ from those the checkpoint was trained with."""
    stored_options, stored_config = settings.get('options'), settings.get('config')
    if not isinstance(stored_options, Mapping) or not isinstance(stored_config, Mapping):
        return []  # official files keep no run settings
    current_options = {'seed': options.seed, 'batchnorm': options.batchnorm}
    differences = []
    for label, read in _RUN_SETTINGS:
        try:
            before, now = read(stored_options, stored_config), read(current_options, cfg.to_dict())
        except (KeyError, TypeError):
            continue
        if before is not None and before != now:
            differences.append(f'{label} {now} (checkpoint: {before})')
    return differences


def _check_fits(model: nn.Module, state: Mapping[str, Any], source: Path, name: str) -> None:
    """Refuse, naming the keys, a checkpoint whose ``net`` is not this training network's (another size)."""
    expected = model.state_dict()
    net = state['net']
    missing = [k for k in expected if k not in net]
    unexpected = [k for k in net if k not in expected]
    not_tensors = [f'{k} ({type(net[k]).__name__})' for k in expected
                   if k in net and not isinstance(net[k], torch.Tensor)]
    reshaped = [f'{k} {tuple(net[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
                if k in net and isinstance(net[k], torch.Tensor) and tuple(net[k].shape) != tuple(v.shape)]
    retyped = [f'{k} {net[k].dtype} vs {v.dtype}' for k, v in expected.items()
               if k in net and isinstance(net[k], torch.Tensor) and v.is_floating_point()
               and not net[k].is_floating_point()]
    if missing or unexpected or not_tensors or reshaped or retyped:
        trained = (state.get('settings') or {}).get('config_name') or 'another configuration'
        if not isinstance(trained, str):
            trained = 'another configuration'
        parts = [f'{label} {len(keys)}: {keys[:3]}' for label, keys in
                 (('missing', missing), ('unexpected', unexpected), ('not a tensor', not_tensors),
                  ('other shape', reshaped), ('not floating point', retyped)) if keys]
        raise CheckpointError(f"{source} does not fit the training network of {name!r} (it was trained as "
                              f"{trained!r}; {'; '.join(parts)}): resume with the configuration it was trained with")


def _check_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Any, source: Path) -> None:
    """Refuse, naming the parameter, the entry and the shapes, a checkpoint's ``optimizer`` that does not fit this
    run's optimizer (torch would load it and fail at the first step with a bare size mismatch)."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get('state'), Mapping) \
            or not isinstance(saved.get('param_groups'), (list, tuple)):
        raise CheckpointError(f"{source}: its 'optimizer' entry is not an optimizer state (a mapping with 'state' and "
                              f"'param_groups'), got {type(saved).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    groups, saved_groups = optimizer.param_groups, saved['param_groups']
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"{source}: its optimizer has {len(saved_groups)} parameter group(s), this run's "
                              f"{len(groups)} (TRAIN.PARAM_KEY differs from the checkpoint's run)")
    for number, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        indices = saved_group.get('params') if isinstance(saved_group, Mapping) else None
        if not isinstance(indices, (list, tuple)) or len(indices) != len(group['params']):
            count = len(indices) if isinstance(indices, (list, tuple)) else type(indices).__name__
            raise CheckpointError(f"{source}: optimizer parameter group {number} has {count} parameter(s) in the "
                                  f"checkpoint, {len(group['params'])} in this run (TRAIN.PARAM_KEY differs from the "
                                  "checkpoint's run)")
        for index, param in zip(indices, group['params']):
            entry = saved['state'].get(index, {})
            if not isinstance(entry, Mapping):
                raise CheckpointError(f'{source}: the optimizer state of {names.get(id(param), index)} is '
                                      f'{type(entry).__name__}, not a mapping')
            for key, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise CheckpointError(f'{source}: optimizer state {key!r} of {names.get(id(param), index)} '
                                              f'is {type(value).__name__}, not a tensor or a number')
                    continue
                if value.dim() and tuple(value.shape) != tuple(param.shape):
                    raise CheckpointError(f"{source}: optimizer state {key!r} of {names.get(id(param), index)} has "
                                          f"shape {tuple(value.shape)}, the parameter {tuple(param.shape)}: the "
                                          "optimizer state is not this network's")
                if not value.is_floating_point():
                    raise CheckpointError(f'{source}: optimizer state {key!r} of {names.get(id(param), index)} is a '
                                          f'{value.dtype} tensor, not floating point')


def _check_rng_state(value: Any, source: Path) -> torch.Tensor:
    """The torch RNG state a checkpoint stored, if it is one (``torch.set_rng_state`` raises a bare TypeError or
    RuntimeError otherwise)."""
    current = torch.get_rng_state()
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or tuple(value.shape) != tuple(current.shape):
        shown = (f'a {value.dtype} tensor of shape {tuple(value.shape)}' if isinstance(value, torch.Tensor)
                 else type(value).__name__)
        raise CheckpointError(f"{source}: settings.torch_rng_state is {shown}; torch's RNG state is a uint8 tensor "
                              f"of shape {tuple(current.shape)}")
    return value


def _later_checkpoints(ckpt_dir: Path, resumed_epoch: int) -> list[Path]:
    """The checkpoints of ``ckpt_dir`` of epochs after ``resumed_epoch``, in epoch order."""
    if not ckpt_dir.is_dir():
        return []
    later = []
    for path in ckpt_dir.glob('OSTrack_CKD_ep*.pth.tar'):
        number = path.name[len('OSTrack_CKD_ep'):-len('.pth.tar')]
        if number.isascii() and number.isdigit() and int(number) > resumed_epoch:
            later.append((int(number), path))
    return [path for _, path in sorted(later)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _is_own_checkpoint(resume: Path, ckpt_dir: Path, resumed_epoch: int) -> bool:
    """Whether ``resume`` belongs to the run in ``ckpt_dir``: it lies in that folder, or it is a byte-identical copy
    of the folder's checkpoint of the same epoch (a backup of the run resumed into its own folder)."""
    if _same_file(resume.parent, ckpt_dir):
        return True
    own = ckpt_dir / f'OSTrack_CKD_ep{resumed_epoch:04d}.pth.tar'
    try:
        return own.is_file() and own.stat().st_size == resume.stat().st_size and filecmp.cmp(own, resume, shallow=False)
    except OSError:
        return False


def _csv_epochs(path: Path) -> list[int]:
    """The epochs of the rows of a CSV log (empty when it has no epoch column or cannot be read)."""
    try:
        rows = _read_csv_log(path)
    except (OSError, ValueError):
        return []
    if not rows or 'epoch' not in rows[0]:
        return []
    column = rows[0].index('epoch')
    return [e for e in (_epoch_of(row, column) for row in rows[1:]) if e is not None]


def _foreign_run(out_dir: Path, name: str, resume: Path, start_epoch: int, total_epochs: int) -> str | None:
    """The refusal for a resume into an output folder that holds another run of ``name`` (checkpoints or CSV logs,
    and ``resume`` is not one of its checkpoints), naming what the resumed run would replace there; None when the
    folder holds no run of ``name`` or ``resume`` is its own checkpoint (a normal resume)."""
    ckpt_dir = out_dir / 'checkpoints' / 'train' / 'ckd' / name
    log_dir = out_dir / 'logs' / name
    checkpoints = sorted(ckpt_dir.glob('OSTrack_CKD_ep*.pth.tar')) if ckpt_dir.is_dir() else []
    logs = sorted(log_dir.glob('*.csv')) if log_dir.is_dir() else []
    if not checkpoints and not logs:
        return None
    if _is_own_checkpoint(resume, ckpt_dir, start_epoch - 1):
        return None  # a normal resume in the run's own output folder
    replaced = [p.name for p in checkpoints
                if p.name[len('OSTrack_CKD_ep'):-len('.pth.tar')].isdigit()
                and start_epoch <= int(p.name[len('OSTrack_CKD_ep'):-len('.pth.tar')]) <= total_epochs]
    trimmed = [p.name for p in logs if any(e >= start_epoch for e in _csv_epochs(p))]
    what = []
    if replaced:
        what.append(f"replace its checkpoint(s) {', '.join(replaced)}")
    if trimmed:
        what.append(f"drop the rows of epochs >= {start_epoch} from its log(s) {', '.join(trimmed)}")
    if not what:
        what.append(f"mix this run's checkpoints and log rows with its {len(checkpoints)} checkpoint(s) and "
                    f"{len(logs)} log file(s)")
    return (f"--output {out_dir} holds another run of {name!r} ({len(checkpoints)} checkpoint(s) in "
                          f"{ckpt_dir}, {len(logs)} CSV log(s) in {log_dir}) "
                          f"and {resume} is not one of its checkpoints: "
                          f"resuming there would {' and '.join(what)}. Choose another --output, resume from that "
                          f"folder's own checkpoint, or pass --overwrite to replace them")


def train(options: TrainOptions) -> TrainResult:
    """Run (or resume) a training; returns the checkpoints written and the per-epoch statistics."""
    tc = options.config if isinstance(options.config, TrainConfig) else load_train_config(options.config)
    overrides: dict[str, Any] = {}
    if options.epochs is not None:
        overrides.setdefault('TRAIN', {})['EPOCH'] = int(options.epochs)
    if options.batch_size is not None:
        overrides.setdefault('TRAIN', {})['BATCH_SIZE'] = int(options.batch_size)
    if options.samples_per_epoch is not None:
        overrides.setdefault('DATA', {}).setdefault('TRAIN', {})['SAMPLE_PER_EPOCH'] = int(options.samples_per_epoch)
    if options.init is not None:
        overrides.setdefault('MODEL', {})['PRETRAIN_FILE'] = str(options.init)
    if overrides:
        tc = tc.with_overrides(overrides)
    cfg = tc.cfg
    batch_size = cfg.TRAIN.BATCH_SIZE
    total_epochs = cfg.TRAIN.EPOCH
    if batch_size < 1 or total_epochs < 1:
        raise ValueError(f'TRAIN.BATCH_SIZE and TRAIN.EPOCH must be >= 1, got {batch_size} and {total_epochs}')
    if options.threads is not None and int(options.threads) < 1:
        raise ValueError(f'threads must be >= 1, got {options.threads}')
    if options.workers is not None and int(options.workers) < 0:
        raise ValueError(f'workers must be >= 0 (0 = load in the training process), got {options.workers}')
    if options.log_interval is not None and int(options.log_interval) < 1:
        raise ValueError(f'log_interval must be >= 1 step, got {options.log_interval}')
    out_dir = Path(options.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f'output folder {out_dir} is an existing file; choose another --output')
    if options.threads is not None:
        torch.set_num_threads(int(options.threads))

    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_training_device(options.device, local_rank)
    dist_info = init_distributed(device)
    # official seeding: base seed + local rank + 1 (DropPath draws); model init is broadcast by DDP
    torch.manual_seed(options.seed + dist_info.rank + 1)
    np.random.seed(options.seed + dist_info.rank + 1)

    unused_roots = _check_data_roots(cfg, options.data_roots)
    if options.resume is None:
        check_pretrained_files(cfg)
        earlier = sorted((out_dir / 'checkpoints' / 'train' / 'ckd' / (tc.name or cfg.name))
                         .glob('OSTrack_CKD_ep*.pth.tar'))
        if earlier and not options.overwrite:
            raise FileExistsError(f'{earlier[0].parent} already holds {len(earlier)} checkpoint(s) of an earlier run '
                                  f'(last: {earlier[-1].name}): continue it with --resume {earlier[-1]}, choose '
                                  'another --output, or pass --overwrite to replace them')
    model: CKDTrainingNet = build_training_model(cfg)
    start_epoch = 1
    history: list[dict[str, Any]] = []
    resume_state = None
    log_first_epoch = 1
    if options.resume is not None:
        resume_state = load_training_checkpoint(options.resume)
        start_epoch = log_first_epoch = int(resume_state['epoch']) + 1
        if start_epoch > total_epochs:
            raise ValueError(f'{options.resume} already holds epoch {start_epoch - 1} and the run has '
                             f'{total_epochs} epoch(s): nothing to train; pass --epochs N with N > {start_epoch - 1} '
                             'to continue it')
        foreign = _foreign_run(out_dir, tc.name or cfg.name, Path(options.resume), start_epoch, total_epochs)
        if foreign is not None:
            if not options.overwrite:
                raise FileExistsError(foreign)
            log_first_epoch = 1  # --overwrite: the other run's CSV rows go too, so the logs are this run's only
            if dist_info.is_main:
                print(f'[ckd-train] --overwrite: replacing the checkpoints and CSV logs of another run in {out_dir}',
                      flush=True)
        else:
            # the run's own folder: checkpoints of epochs after the resumed one belong to a continuation of it that
            # this run would replace (or, past --epochs, leave mixed with its own)
            own_dir = out_dir / 'checkpoints' / 'train' / 'ckd' / (tc.name or cfg.name)
            later = _later_checkpoints(own_dir, start_epoch - 1)
            if later and not options.overwrite:
                replaced = [p.name for p in later
                            if int(p.name[len('OSTrack_CKD_ep'):-len('.pth.tar')]) <= total_epochs]
                kept = [p.name for p in later if p.name not in replaced]
                what = []
                if replaced:
                    what.append(f"replace {', '.join(replaced)}")
                if kept:
                    what.append(f"leave {', '.join(kept)} of the old continuation beside its own checkpoints")
                raise FileExistsError(f"{own_dir} holds checkpoint(s) of epochs after {options.resume} (epoch "
                                      f"{start_epoch - 1}): {', '.join(p.name for p in later)}; resuming from it "
                                      f"would {' and '.join(what)}. Resume from the last one (--resume {later[-1]}), "
                                      "choose another --output, or pass --overwrite to replace them")
            if later and dist_info.is_main:
                print(f"[ckd-train] --overwrite: epochs {start_epoch}.. run again, replacing "
                      f"{', '.join(p.name for p in later)} where this run reaches them", flush=True)
        _check_fits(model, resume_state, options.resume, tc.name or cfg.name)
        settings = resume_state.get('settings') or {}
        if settings.get('torch_rng_state') is not None:
            _check_rng_state(settings['torch_rng_state'], options.resume)
        if resume_state.get('optimizer') is not None:
            _check_optimizer_state(model, build_optimizer(model, cfg), resume_state['optimizer'], options.resume)
        model.load_state_dict(resume_state['net'], strict=True)
        history = list(settings.get('history', []))
        changed = _resume_differences(resume_state.get('settings') or {}, options, cfg)
        if changed and dist_info.is_main:
            print(f"[ckd-train] note: resuming with {', '.join(changed)}: not an exact continuation of the "
                  "checkpoint's run", flush=True)
    else:
        initialise_from_config(model, cfg, log=print if dist_info.is_main else None)
    if unused_roots and dist_info.is_main:
        print(f"[ckd-train] note: --data-root {', '.join(unused_roots)} ignored: DATA.TRAIN/VAL do not name "
              f"{'it' if len(unused_roots) == 1 else 'them'}", flush=True)
    train_set = build_dataset(tc, 'train', options.data_roots, options.seed)
    steps_per_epoch = len(train_set) // (batch_size * dist_info.world_size)
    if steps_per_epoch < 1:
        raise ValueError(f'DATA.TRAIN.SAMPLE_PER_EPOCH ({len(train_set)}) is smaller than one step '
                         f'(batch {batch_size} x {dist_info.world_size} processes)')
    val_set = None
    if options.validate and cfg.TRAIN.VAL_EPOCH_INTERVAL > 0:
        try:
            val_set = build_dataset(tc, 'val', options.data_roots, options.seed)
        except ValueError as exc:
            if dist_info.is_main:
                print(f'[ckd-train] validation disabled: {exc}')

    model.to(device)
    if options.sync_batchnorm:
        if device.type != 'cuda':
            raise ValueError("--sync-batchnorm needs CUDA devices (torch's SyncBatchNorm is GPU-only)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    if resume_state is not None and resume_state.get('optimizer') is not None:
        try:
            optimizer.load_state_dict(resume_state['optimizer'])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # what the check above does not foresee
            raise CheckpointError(f"{options.resume}: its optimizer state cannot be loaded into this run's optimizer "
                                  f"({type(exc).__name__}: {exc})") from None
    if resume_state is not None and (resume_state.get('settings') or {}).get('torch_rng_state') is not None:
        torch.set_rng_state(resume_state['settings']['torch_rng_state'])
    net: nn.Module = model
    if dist_info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, find_unused_parameters=True)

    weights = CKDLossWeights.from_config(cfg)
    name = tc.name or cfg.name
    ckpt_dir = out_dir / 'checkpoints' / 'train' / 'ckd' / name
    log = MetricLog(out_dir / 'logs' / name, out_dir / 'tensorboard' / name, dist_info.is_main, log_first_epoch)
    workers = worker_count(options.workers if options.workers is not None else cfg.TRAIN.NUM_WORKER)
    interval = options.log_interval or cfg.TRAIN.PRINT_INTERVAL
    params = trainable_parameters(model)
    checkpoints: list[Path] = []
    step_losses: list[float] = []
    global_step = (start_epoch - 1) * steps_per_epoch

    progress_bar = None
    if options.progress and dist_info.is_main:
        try:
            from tqdm import tqdm as progress_bar
        except ImportError:
            progress_bar = None
    try:
        for epoch in range(start_epoch, total_epochs + 1):
            train_set.set_epoch(epoch)
            net.train()
            set_batchnorm_mode(model, options.batchnorm)
            keep_rate = ce_keep_rate_for_epoch(cfg, epoch)
            lr_scale = apply_lr_schedule(optimizer, cfg, epoch)
            # every process gets the same number of whole batches (DistributedSampler split without padding)
            indices = list(range(dist_info.rank, steps_per_epoch * batch_size * dist_info.world_size,
                                 dist_info.world_size))
            loader = _loader(train_set, indices, batch_size, workers, device)
            iterator = loader if progress_bar is None else progress_bar(
                loader, total=len(loader), desc=f'epoch {epoch}/{total_epochs}', leave=False)
            epoch_logs: list[dict[str, float]] = []
            window: list[dict[str, float]] = []
            tic = time.perf_counter()
            for step, batch in enumerate(iterator, start=1):
                batch = _to_device(batch, device)
                loss, values = _forward_loss(net, batch, cfg, weights, keep_rate)
                if not math.isfinite(values['total']):
                    raise FloatingPointError(f"loss became {values['total']} at epoch {epoch} step {step}; "
                                             "lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                values['grad_norm'] = float(torch.nn.utils.clip_grad_norm_(params, cfg.TRAIN.GRAD_CLIP_NORM))
                optimizer.step()
                global_step += 1
                epoch_logs.append(values)
                window.append(values)
                step_losses.append(values['total'])
                if progress_bar is not None:
                    iterator.set_postfix(loss=f"{values['total']:.3f}", iou=f"{values['iou']:.3f}")
                if step % interval == 0 or step == len(loader):
                    means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    elapsed = time.perf_counter() - tic
                    log.write('train', {'epoch': epoch, 'step': step, 'global_step': global_step, 'lr_scale': lr_scale,
                                        'samples': global_step * batch_size * dist_info.world_size,
                                        'seconds_per_step': elapsed / len(window), **means}, global_step)
                    window, tic = [], time.perf_counter()
            stats: dict[str, Any] = {'epoch': epoch, 'train': _mean_logs(epoch_logs, dist_info, device)}
            if val_set is not None and epoch % cfg.TRAIN.VAL_EPOCH_INTERVAL == 0:
                stats['val'] = validate(net, model, val_set, cfg, weights, keep_rate, batch_size, workers, device,
                                        dist_info)
            history.append(stats)
            for split in ('train', 'val'):
                if split in stats:
                    log.write('epochs', {'epoch': epoch, 'split': split, **stats[split]}, epoch)
            if dist_info.is_main:
                path = ckpt_dir / f'OSTrack_CKD_ep{epoch:04d}.pth.tar'
                save_training_checkpoint(path, model, optimizer, epoch, history, tc, options,
                                         torch_rng_state=torch.get_rng_state())
                checkpoints.append(path)
                summary = ' '.join(f'{k}={v:.4f}' for k, v in stats['train'].items()
                                   if k in ('total', 'loss_fused', 'iou', 'style', 'content'))
                print(f'[ckd-train] epoch {epoch}/{total_epochs}: {summary} -> {path}', flush=True)
            if dist_info.enabled:
                dist.barrier()
    finally:
        log.close()
    return TrainResult(checkpoints, history, step_losses, out_dir)


@torch.no_grad()
def validate(net: nn.Module, model: nn.Module, dataset: CKDTrainingDataset, cfg, weights: CKDLossWeights,
             keep_rate: float | None, batch_size: int, workers: int, device: torch.device,
             dist_info: DistInfo) -> dict[str, float]:
    """Loss and IoU on the validation samples (official validation pipeline, network in eval mode)."""
    steps = len(dataset) // (batch_size * dist_info.world_size)
    if steps < 1:
        return {}
    net.eval()
    indices = list(range(dist_info.rank, steps * batch_size * dist_info.world_size, dist_info.world_size))
    logs = []
    for batch in _loader(dataset, indices, batch_size, workers, device):
        batch = _to_device(batch, device)
        # call the wrapped module: evaluation needs no gradient synchronisation
        _, values = _forward_loss(model, batch, cfg, weights, keep_rate)
        logs.append(values)
    net.train()
    return _mean_logs(logs, dist_info, device)
