"""Tracking quality on held-out synthetic sequences: fused vs RGB-only vs thermal-only.

The ablations run the same network with the other modality blanked (an all-zero frame), so they
show what each modality alone carries. Scores follow the core's ``generic`` protocol
(:func:`ckd_ros.core.metrics.evaluate`): PR at 20 px, NPR at 0.2, SR = mean success over IoU
thresholds 0..1; plus the success rate at IoU 0.5 on the frames where the RGB image fails (dark,
glare) and where the thermal image fails (crossover, low contrast).

``python -m ckd_train.evaluate --config ckd_tiny --checkpoint W.pth.tar --seeds 900000:900010``
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ckd_ros.core import cli_args
from ckd_ros.core.api import init_tracker
from ckd_ros.core.config import CKDConfig
from ckd_ros.core.datasets import GroundTruth
from ckd_ros.core.metrics import evaluate, overlap
from ckd_ros.core.results import atomic_write_text
from ckd_ros.core.tracker import TrackerOptions
from ckd_ros.core.synthetic import WORLDS, SyntheticScene, rgb_failure, thermal_failure
from ckd_ros.core.synthetic_assets import MOTION_SPLITS

from .settings import load_train_config

MODES = ('fused', 'rgb_only', 'thermal_only')


def run_sequence(tracker, scene, mode: str) -> np.ndarray:
    """Track one sequence from its first GT box; ``mode`` blanks a modality. Returns (N, 4) boxes."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    boxes = np.zeros((len(scene), 4))
    for i in range(len(scene)):
        rgb, thermal = scene.frame(i)
        if mode == 'rgb_only':
            thermal = np.zeros_like(thermal)
        elif mode == 'thermal_only':
            rgb = np.zeros_like(rgb)
        if i == 0:
            boxes[0] = tracker.initialize(rgb, thermal, scene.ground_truth[0]).box
        else:
            boxes[i] = tracker.track(rgb, thermal).box
    return boxes


@dataclass
class SyntheticEvaluation:
    metrics: dict[str, dict[str, float]]  # mode -> PR/NPR/SR, SR50 on failure frames
    seeds: list[int]
    frames: int
    seconds: float

    def to_dict(self) -> dict:
        return {'metrics': self.metrics, 'seeds': self.seeds, 'frames': self.frames, 'seconds': self.seconds}

    def table(self) -> str:
        cols = ('SR', 'PR', 'NPR', 'SR50_rgb_fail', 'SR50_thermal_fail')
        lines = [f"{'mode':<14}" + ''.join(f'{c:>18}' for c in cols)]
        for mode, m in self.metrics.items():
            lines.append(f'{mode:<14}' + ''.join(f"{m.get(c, float('nan')):>18.3f}" for c in cols))
        return '\n'.join(lines)


def evaluate_synthetic(config, checkpoint, seeds, length: int = 300, size=(640, 512), device: str = 'cpu',
                       modes=MODES, threads: int | None = None, lost_threshold: float | None = None,
                       world: str = 'classic', motion_split: str = 'test') -> SyntheticEvaluation:
    """Track every held-out sequence in every mode; ``lost_threshold`` switches on the tracker's
    non-official LOST state (keep the previous box when the peak score is lower), default off;
    ``motion_split``: the realistic world's pool of real tracks (held-out scores: 'test'; choosing between
    trained weights: 'val', with the validation seeds, so that the choice never sees the held-out tracks)."""
    if threads:
        torch.set_num_threads(threads)
    if not isinstance(config, CKDConfig):
        config = load_train_config(config).cfg  # training files (BASE + SYNTHETIC) and model configs alike
    options = TrackerOptions.from_config(config)
    if lost_threshold is not None:
        options = dataclasses.replace(options, lost_threshold=lost_threshold)
    tracker = init_tracker(config, checkpoint=checkpoint, device=device, options=options)
    scenes = [SyntheticScene(int(s), length, size, world=world, motion_split=motion_split) for s in seeds]
    gt = {s.name: GroundTruth(s.ground_truth) for s in scenes}
    tic = time.perf_counter()
    metrics = {}
    for mode in modes:
        results = {s.name: run_sequence(tracker, s, mode) for s in scenes}
        score = evaluate('generic', results, gt)
        m = {k: float(v) for k, v in score.metrics.items()}
        for label, select in (('rgb_fail', rgb_failure), ('thermal_fail', thermal_failure)):
            hits, count = 0, 0
            for s in scenes:
                frames = select(s.flags)
                frames[0] = False
                if frames.any():
                    iou = overlap(results[s.name][frames], s.ground_truth[frames])
                    hits += int((iou > 0.5).sum())
                    count += int(frames.sum())
            m[f'SR50_{label}'] = hits / count if count else float('nan')
        metrics[mode] = m
    return SyntheticEvaluation(metrics, [int(s) for s in seeds], sum(len(s) for s in scenes),
                               time.perf_counter() - tic)


def _seed_range(text: str) -> list[int]:
    lo, sep, hi = text.partition(':')
    try:
        if not sep:
            return [int(v) for v in text.split(',')]
        return list(range(int(lo), int(hi)))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected START:STOP or a comma list of integers, got {text!r}') from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m ckd_train.evaluate', description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default='ckd_tiny')
    p.add_argument('--checkpoint', help="weights (default: the config's shipped weights)")
    p.add_argument('--seeds', type=_seed_range, default='900000:900010',
                   help='START:STOP or a comma list (held-out seeds)')
    p.add_argument('--length', type=int, default=300)
    p.add_argument('--size', type=cli_args.size(16), default='640x512', help='WIDTHxHEIGHT')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=cli_args.integer(1))
    p.add_argument('--lost-threshold', type=float, help='tracker LOST state below this peak score (default off)')
    p.add_argument('--world', choices=WORLDS, default='rgbt', help='synthetic world of the held-out sequences')
    p.add_argument('--motion-split', choices=MOTION_SPLITS, default='test',
                   help="pool of real target tracks (realistic world): 'test' for held-out scores, 'val' (with the "
                        "validation seeds) for choosing between weights")
    p.add_argument('--json', type=Path, help='write the scores here')
    args = p.parse_args(argv)
    if args.json is not None and (args.json.is_dir() or any(d.exists() and not d.is_dir() for d in args.json.parents)):
        p.error(f'--json {args.json} cannot be written (a folder, or under a file); name a file in a folder')
    try:
        result = evaluate_synthetic(args.config, args.checkpoint, args.seeds, args.length, args.size, args.device,
                                    threads=args.threads, lost_threshold=args.lost_threshold, world=args.world,
                                    motion_split=args.motion_split)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f'evaluate: error: {exc}', file=sys.stderr)
        return 2
    print(result.table())
    print(f'{len(result.seeds)} sequences, {result.frames} frames per mode, {result.seconds:.1f} s')
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2), overwrite=True)
        except OSError as exc:
            print(f'evaluate: error: cannot write {args.json}: {exc}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
