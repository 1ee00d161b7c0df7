"""Choose the tracker options of a shipped configuration on validation sequences (never the demo's).

Runs the fused tracker over synthetic validation sequences for every combination of LOST threshold,
per-frame scale-change limit and re-detection growth and prints SR / PR / NPR (the core's ``generic``
protocol). Validation sequences of the realistic world take their target motion from the ``val`` pool of
real tracks (never the training or the demo / held-out pools). The shipped ``ckd_tiny`` options
(``TEST.LOST_THRESHOLD``, ``TEST.MAX_SCALE_CHANGE``, ``TEST.REDETECT_GROWTH``) were chosen with

    python -m ckd_train.tune_options --config ckd_tiny --world rgbt --seeds 500000:500012 --size 320x256 \\
        --failure-fraction 0.5 --length 200 --lost none,0.2,0.25,0.3,0.35,0.4 --scale-change none,1.1 \\
        --redetect none,1.2

(the figures are in the comment of ``ckd_ros/core/configs/ckd_tiny.yaml`` and the README's Demo section).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from ckd_ros.core import cli_args
from ckd_ros.core.api import init_tracker
from ckd_ros.core.datasets import GroundTruth
from ckd_ros.core.metrics import evaluate
from ckd_ros.core.report import machine_line
from ckd_ros.core.synthetic import WORLDS, SyntheticScene
from ckd_ros.core.tracker import TrackerOptions

from .evaluate import _seed_range, run_sequence


def _optional_numbers(text: str) -> list:
    values = []
    for item in text.split(','):
        item = item.strip().lower()
        try:
            values.append(None if item in ('none', 'off') else float(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers or 'none' separated by commas, got {text!r}") from None
    return values


def sweep(config: str, checkpoint, seeds, length: int, size, failure_fraction: float, lost_values, scale_values,
          redetect_values=(None,), world: str = 'classic'):
    """``[(lost, scale_change, redetect_growth, metrics dict)]`` for every combination, fused, from the first
    GT box. The sequences are rendered once and shared by every combination."""
    scenes = [SyntheticScene(int(seed), length, size, failure_fraction=failure_fraction, world=world,
                             motion_split='val').materialize() for seed in seeds]
    ground_truth = {scene.name: GroundTruth(scene.ground_truth) for scene in scenes}
    rows = []
    for lost, scale, redetect in itertools.product(lost_values, scale_values, redetect_values):
        options = TrackerOptions(lost_threshold=lost, max_scale_change=scale, redetect_growth=redetect)
        tracker = init_tracker(config, checkpoint=checkpoint, device='cpu', options=options)
        results = {scene.name: run_sequence(tracker, scene, 'fused') for scene in scenes}
        metrics = {k: float(v) for k, v in evaluate('generic', results, ground_truth).metrics.items()}
        rows.append((lost, scale, redetect, metrics))
        print(f'lost {lost} scale change {scale} redetect {redetect}: SR {100 * metrics["SR"]:.1f} '
              f'PR {100 * metrics["PR"]:.1f} NPR {100 * metrics["NPR"]:.1f}', flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m ckd_train.tune_options', description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default='ckd_tiny')
    p.add_argument('--checkpoint', help="weights (default: the config's shipped weights)")
    p.add_argument('--seeds', type=_seed_range, default='500000:500012',
                   help="validation seeds START:STOP (default: the shipped recipe's validation range)")
    p.add_argument('--length', type=cli_args.integer(2), default=300)
    p.add_argument('--size', type=cli_args.size(16), default='320x256')
    p.add_argument('--failure-fraction', type=cli_args.number(0.0, inclusive=True), default=0.6,
                   help='fraction of frames in failure segments, 0..0.8')
    p.add_argument('--lost', type=_optional_numbers, default='none,0.25,0.3,0.35,0.4')
    p.add_argument('--scale-change', type=_optional_numbers, default='none,1.05,1.1,1.2')
    p.add_argument('--redetect', type=_optional_numbers, default='none',
                   help='re-detection growth values per LOST frame (TEST.REDETECT_GROWTH), e.g. none,1.2')
    p.add_argument('--world', choices=WORLDS, default='rgbt', help='synthetic world of the validation sequences')
    p.add_argument('--threads', type=cli_args.integer(1), default=1)
    p.add_argument('--json', type=Path, help='also write the rows here')
    args = p.parse_args(argv)
    if args.failure_fraction > 0.8:
        p.error(f'--failure-fraction must be at most 0.8, got {args.failure_fraction:g}')
    try:
        for value in args.scale_change:
            TrackerOptions(max_scale_change=value)
        for value in args.lost:
            TrackerOptions(lost_threshold=value)
        for value in args.redetect:
            TrackerOptions(redetect_growth=value)
    except ValueError as error:
        p.error(str(error))
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    tic = time.perf_counter()
    rows = sweep(args.config, args.checkpoint, args.seeds, args.length, args.size, args.failure_fraction,
                 args.lost, args.scale_change, args.redetect, args.world)
    best = max(rows, key=lambda row: row[3]['SR'])
    print(f'best by SR: lost {best[0]}, scale change {best[1]}, redetect {best[2]} '
          f'({time.perf_counter() - tic:.0f} s)')
    if args.json:
        rows_out = [{'lost_threshold': lost, 'max_scale_change': scale, 'redetect_growth': redetect, **metrics}
                    for lost, scale, redetect, metrics in rows]
        args.json.write_text(json.dumps(rows_out, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
