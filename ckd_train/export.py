"""Strip a training checkpoint for shipping: ``python -m ckd_train.export SRC DST [--keep-teachers] [--overwrite]``.

The result keeps the official top-level structure (epoch, actor_type, net_type, net, net_info,
constructor, optimizer, stats, settings) with ``optimizer`` None and ``net`` reduced to the
inference keys (rgb_branch, tir_branch, box_head), which is what ``init_tracker`` loads (and what
``MODEL.PRETRAIN_FILE`` accepts to fine-tune from). An existing DST is refused unless ``--overwrite``;
SRC itself is never replaced.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckd_ros.core.checkpoint import CheckpointError

from .checkpoints import export_inference_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m ckd_train.export', description=__doc__.split('\n\n')[0])
    p.add_argument('source', type=Path, help='training checkpoint (OSTrack_CKD_epNNNN.pth.tar)')
    p.add_argument('destination', type=Path, help='output file')
    p.add_argument('--keep-teachers', action='store_true', help="keep teacher branches and heads in 'net'")
    p.add_argument('--overwrite', action='store_true', help='replace an existing destination file (default: refuse)')
    args = p.parse_args(argv)
    try:
        out = export_inference_checkpoint(args.source, args.destination, keep_teachers=args.keep_teachers,
                                          overwrite=args.overwrite)
    except (CheckpointError, OSError) as exc:  # damaged source, missing file, unwritable destination
        print(f'export: error: {exc}', file=sys.stderr)
        return 2
    print(f'{out} ({out.stat().st_size / 1e6:.2f} MB)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
