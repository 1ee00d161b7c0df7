"""``ckd-train CONFIG [--output DIR] [--resume CKPT] [--epochs N] [--device DEV] ...``

CONFIG: a training file of ``ckd_train/configs`` (by name or path) or a model configuration
(official name, ``ckd_tiny``/``ckd_small``, YAML path). Under ``torchrun --nproc_per_node N`` every
process runs this same command (DDP; gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckd_ros.core import cli_args
from ckd_ros.core.checkpoint import CheckpointError
from ckd_ros.core.config import ConfigError


def _data_root(text: str) -> tuple[str, str]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError('expected NAME=PATH (e.g. LasHeR_trainingSet=/data/LasHeR/train), '
                                         f'got {text!r}')
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ckd-train', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='training file (ckd_train/configs) or model configuration name / YAML path')
    p.add_argument('--output', type=Path, default=Path('output'), help='output folder (checkpoints, logs)')
    p.add_argument('--resume', type=Path, help='training checkpoint to continue from (its next epoch)')
    p.add_argument('--init', type=Path,
                   help='start from these weights (a training or exported checkpoint; overrides MODEL.PRETRAIN_FILE)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the checkpoints of an earlier run in the output folder (default: refuse)')
    p.add_argument('--epochs', type=cli_args.integer(1), help='total epochs (overrides TRAIN.EPOCH)')
    p.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto (default)')
    p.add_argument('--workers', type=cli_args.integer(0),
                   help='DataLoader workers (default TRAIN.NUM_WORKER, capped by the CPUs)')
    p.add_argument('--threads', type=cli_args.integer(1), help='torch intra-op threads')
    p.add_argument('--seed', type=int, default=42, help='base seed (official 42)')
    p.add_argument('--data-root', type=_data_root, action='append', default=[], metavar='NAME=PATH',
                   help='folder of a dataset named in DATA.TRAIN/VAL (repeatable)')
    p.add_argument('--samples-per-epoch', type=cli_args.integer(1), help='overrides DATA.TRAIN.SAMPLE_PER_EPOCH')
    p.add_argument('--batch-size', type=cli_args.integer(1), help='per-process batch (overrides TRAIN.BATCH_SIZE)')
    p.add_argument('--batchnorm', choices=('train', 'frozen'), default='train',
                   help='head BatchNorm: batch statistics (official) or frozen running statistics')
    p.add_argument('--sync-batchnorm', action='store_true', help='SyncBatchNorm across GPUs (CUDA only)')
    p.add_argument('--no-val', action='store_true', help='skip validation')
    p.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
    p.add_argument('--log-interval', type=cli_args.integer(1),
                   help='steps per train.csv row (default TRAIN.PRINT_INTERVAL)')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .trainer import TrainOptions, train  # torch import after argument errors are reported
    options = TrainOptions(config=args.config, output_dir=args.output, resume=args.resume, overwrite=args.overwrite,
                           epochs=args.epochs,
                           device=args.device, workers=args.workers, threads=args.threads, seed=args.seed,
                           data_roots=dict(args.data_root), samples_per_epoch=args.samples_per_epoch,
                           batch_size=args.batch_size, batchnorm=args.batchnorm, sync_batchnorm=args.sync_batchnorm,
                           progress=not args.no_progress, validate=not args.no_val, log_interval=args.log_interval,
                           init=args.init)
    try:
        result = train(options)
    except (ConfigError, CheckpointError, OSError, ValueError, FloatingPointError) as exc:
        print(f'ckd-train: error: {exc}', file=sys.stderr)
        return 2
    if result.checkpoints:
        print(f'ckd-train: last checkpoint {result.checkpoints[-1]}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
