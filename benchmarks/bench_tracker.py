#!/usr/bin/env python3
"""Speed of the CKD network forward and of the whole tracker (track()) per frame, batch 1, fp32.

Compares with the official code measured on a 2-vCPU Xeon with torch 2.13 and 2 threads
(docs/spec/CKD.md sec. 7): forward 0.591 s (CE off) / 0.486 s (MCE); tracker 590 / 483 ms per frame.
Weights are the deterministic recipe weights (speed does not depend on their values).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tracker.py                 # full-size CE off + MCE, ckd_tiny
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tracker.py --configs ckd_tiny --frames 100

The ratios to the official figures only mean something on an idle machine like theirs; on a shared
one use benchmarks/bench_acceleration.py (same-process, frame-interleaved ratios to this package's fp32
eager path and to the official way of computing) and benchmarks/bench_node.py (the node end to end).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from ckd_ros.core import cli_args
from ckd_ros.core.config import load_config
from ckd_ros.core.model import build_ckd_model
from ckd_ros.core.recipe_weights import load_recipe_weights, recipe_inputs
from ckd_ros.core.report import PUBLISHED_OFFICIAL_SPEED_S, machine_info, machine_line
from ckd_ros.core.tracker import CKDTracker

CE_OFF, MCE = PUBLISHED_OFFICIAL_SPEED_S   # the full-size configurations without and with elimination
REALTIME_PAIRS_PER_S = 30.0


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {'median_s': statistics.median(ordered), 'min_s': ordered[0], 'max_s': ordered[-1],
            'p10_s': ordered[len(ordered) // 10], 'p90_s': ordered[(9 * len(ordered)) // 10], 'n': len(ordered)}


def synthetic_frames(count: int, height: int, width: int, seed: int = 0):
    """A textured square drifting over noise (RGB HxWx3, thermal HxW) and its first box."""
    rng = np.random.default_rng(seed)
    side = max(16, min(height, width) // 10)
    rgb, tir = [], []
    for t in range(count):
        x = width // 3 + 3 * t % (width // 3)
        y = height // 3 + 2 * t % (height // 3)
        frame = rng.integers(0, 80, (height, width, 3), np.uint8)
        frame[y:y + side, x:x + side] = rng.integers(150, 256, (side, side, 3), np.uint8)
        thermal = rng.integers(0, 60, (height, width), np.uint8)
        thermal[y:y + side, x:x + side] = 220
        rgb.append(frame)
        tir.append(thermal)
    return rgb, tir, (width // 3, height // 3, side, side)


def bench_config(name: str, frames: int, warmup: int, height: int, width: int) -> dict:
    cfg = load_config(name)
    network = load_recipe_weights(build_ckd_model(cfg, initialize=False))
    inputs = recipe_inputs(batch=1, template_size=cfg.DATA.TEMPLATE.SIZE, search_size=cfg.DATA.SEARCH.SIZE)
    templates = [inputs['template_rgb'], inputs['template_tir']]
    searches = [inputs['search_rgb'], inputs['search_tir']]
    mask = network.template_mask(1, 'cpu')
    forward = []
    with torch.inference_mode():
        for i in range(warmup + frames):
            start = time.perf_counter()
            network(templates, searches, ce_template_mask=mask)
            if i >= warmup:
                forward.append(time.perf_counter() - start)
    tracker = CKDTracker(network, cfg, 'cpu')
    rgb, tir, box = synthetic_frames(warmup + frames + 1, height, width)
    tracker.initialize(rgb[0], tir[0], box)
    track = []
    for i in range(1, warmup + frames + 1):
        start = time.perf_counter()
        tracker.track(rgb[i], tir[i])
        if i > warmup:
            track.append(time.perf_counter() - start)
    return {'config': name, 'ce_mode': network.ce_mode, 'forward': summary(forward), 'track': summary(track)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', type=cli_args.config_name, default=[CE_OFF, MCE, 'ckd_tiny'])
    parser.add_argument('--frames', type=cli_args.integer(1), default=20,
                        help='timed frames per measurement (default 20)')
    parser.add_argument('--warmup', type=cli_args.integer(0), default=3)
    parser.add_argument('--threads', type=cli_args.integer(1), default=2, help='torch threads (official figures: 2)')
    parser.add_argument('--size', type=cli_args.size(32), default='640x512',
                        help='frame WxH for track() (default 640x512)')
    parser.add_argument('--json', type=cli_args.output_file, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    width, height = args.size
    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(machine_line(machine))
    print(f'batch 1, fp32, {args.warmup} warm-up + {args.frames} timed frames, track() on {width}x{height}')
    results = []
    for name in args.configs:
        result = bench_config(name, args.frames, args.warmup, height, width)
        results.append(result)
        fwd, trk = result['forward'], result['track']
        line = (f"{name} [{result['ce_mode']}]: forward {fwd['median_s'] * 1e3:.1f} ms "
                f"(p10-p90 {fwd['p10_s'] * 1e3:.1f}-{fwd['p90_s'] * 1e3:.1f}), track {trk['median_s'] * 1e3:.1f} ms "
                f"(p10-p90 {trk['p10_s'] * 1e3:.1f}-{trk['p90_s'] * 1e3:.1f}) = {1 / trk['median_s']:.1f} pairs/s")
        official = PUBLISHED_OFFICIAL_SPEED_S.get(name)
        if official:
            result['ratio_forward_vs_official'] = fwd['median_s'] / official['forward_s']
            result['ratio_track_vs_official'] = trk['median_s'] / official['track_s']
            line += (f"; vs official {official['forward_s'] * 1e3:.0f} / {official['track_s'] * 1e3:.0f} ms: "
                     f"forward x{result['ratio_forward_vs_official']:.2f}, "
                     f"track x{result['ratio_track_vs_official']:.2f}")
        else:
            result['realtime'] = 1 / trk['median_s'] >= REALTIME_PAIRS_PER_S
            line += f"; real time (>= {REALTIME_PAIRS_PER_S:.0f} pairs/s): {'yes' if result['realtime'] else 'no'}"
        print(line, flush=True)
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'machine': machine, 'results': results}, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
