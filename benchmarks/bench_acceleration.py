#!/usr/bin/env python3
"""Speed and accuracy of the precision/backend options against this package's fp32 eager tracker.

Every option tracks the same synthetic sequences in the same process, frame by frame interleaved
(frame i: fp32 eager and each option, the order rotating frame by frame), so machine load hits all
of them alike; the figure that counts is the *ratio* to fp32 eager: the median over frames of
(option's time / fp32 eager's time on the same frame).  Sequences: ``--sequences demo`` = the
sequences of ``make demo`` (``ckd_ros.ros.demo.plan_sequences`` with the demo's default count,
length, size, seeds and the shipped weights' training-seed exclusions; ``--frames`` then caps the
frames per sequence and ``--count`` plans more of them, scenarios in turn, for a closed-loop
success change with less variance), ``--sequences synthetic`` (default) = one 640x512 scene of ``--seed``.

Accuracy effect, per option:

* maps: max |map - fp32| on the first sequence's frame-1 crops (open loop, same input);
* box agreement: per-frame IoU of the option's trajectory with the fp32 trajectory (closed loop),
  mean and fraction of frames with IoU > 0.9;
* success (SR, AUC of the success plot) and precision (PR, centre error <= 20 px) against the
  synthetic ground truth, scored as ``make demo`` scores (result files, ``ckd_ros.core.metrics.evaluate``
  protocol ``generic``), and their change against fp32 eager in points.  Closed-loop tracking on a
  few sequences is chaotic (a one-pixel change can lose or keep the target through a failure
  segment), so small changes on three sequences are within noise; use ``--count``: each change is
  printed with the half-width of its 95 % interval (paired over sequences);
* open-loop success change: a second tracker per option starts every frame from the fp32 tracker's
  state (box, LOST count) and its boxes are scored the same way, so only that frame's numbers differ:
  the accuracy effect of the number format itself, without closed-loop luck (a narrow interval on the
  same sequences where the closed-loop one spans several points).  Meaningful only
  with trained weights (the shipped ``ckd_ros/core/weights/<config>.pth.tar``); the official configs
  run on the untrained recipe weights (flat score maps), where only box agreement is reported.

``--before`` adds this package's fp32 eager path as it was before the branches were batched (each
branch on its own, the last block over all tokens), ``--official-style`` the official way of computing.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_acceleration.py \\
        --configs ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead \\
        --frames 10 --threads 2 --options bf16/eager --before --official-style
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_acceleration.py --configs ckd_tiny --sequences demo \\
        --options fp32/compile fp32/int8 fp32/onnxruntime fp32/onnxruntime-int8 bf16/eager
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_acceleration.py --sequences demo --frames 3 \\
        --configs ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead \\
        --options fp32/int8 fp32/onnxruntime fp32/onnxruntime-int8
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ckd_ros.core import cli_args, metrics, results
from ckd_ros.core.acceleration import Acceleration, NetworkRunner
from ckd_ros.core.api import load_network, shipped_weights_path
from ckd_ros.core.config import load_config
from ckd_ros.core.cpu_info import read_cpu_info
from ckd_ros.core.datasets import GroundTruth
from ckd_ros.core.geometry import sample_target
from ckd_ros.core.model.vit import Attention
from ckd_ros.core.report import PUBLISHED_OFFICIAL_SPEED_S, machine_info, machine_line
from ckd_ros.core.synthetic import SyntheticScene
from ckd_ros.core.tracker import CKDTracker

DEFAULT_OPTIONS = ['fp32/int8', 'fp32/onnxruntime', 'fp32/onnxruntime-int8', 'bf16/eager']
OFFICIAL_STYLE = 'official-style'
BEFORE = 'fp32/eager-per-branch'


class OfficialStyleAttention(Attention):
    """The official (timm/OSTrack) attention: the full (N x N) probability matrix is formed with an
    explicit softmax, multiplied with v, and candidate elimination slices its template rows (one
    branch at a time: tokens (1, B, N, C) in the grouped layout of ckd_ros.core.model.vit)."""

    def forward(self, x, template_len=None, template_rows=None, weights=None, query_start=0):
        if weights or query_start:
            raise ValueError('the official way of computing runs each branch on its own, all tokens')
        _, B, N, C = x.shape
        q, k, v = self.qkv(x[0]).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)).unsqueeze(0)
        if template_len is None:
            return out, None
        rows = attn[:, :, :template_len] if template_rows is None else attn.gather(
            2, template_rows[:, None, :, None].expand(-1, self.num_heads, -1, N))
        return out, rows[..., template_len:].unsqueeze(0)


class PerBranchRunner(NetworkRunner):
    """This package's fp32 eager path before the branches were batched: each branch on its own, the
    last block over all tokens, the full size/offset maps (``--before``; the same numbers)."""

    def _forward(self, templates, searches, peak_weight=None):
        return self.network(templates, searches, ce_template_mask=self._mask, batch_branches=False)


class OfficialStyleRunner(PerBranchRunner):
    """Templates embedded again every frame, as the official tracker does (no token cache)."""

    def set_templates(self, templates, template_mask):
        self._templates = list(templates)
        self._mask = template_mask


def official_style_network(network):
    """A copy of ``network`` computing attention the official way (same weights, same numbers)."""
    copied = copy.deepcopy(network)
    for module in copied.modules():
        if type(module) is Attention:
            module.__class__ = OfficialStyleAttention
    return copied


def parse_option(text: str) -> Acceleration:
    """``PRECISION/BACKEND`` -> an Acceleration that runs on the CPU (argparse type: refused with the reason)."""
    try:
        precision, backend = text.split('/')
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} must be PRECISION/BACKEND, e.g. fp32/int8') from None
    try:
        acceleration = Acceleration(precision=precision, backend=backend)
        acceleration.check_device(torch.device('cpu'))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'{text!r}: {exc}') from None
    if (acceleration.precision, acceleration.backend) == ('fp32', 'eager'):
        raise argparse.ArgumentTypeError('fp32/eager is the baseline every option is timed against; it always runs')
    return acceleration


@dataclass
class BenchSequence:
    """A synthetic scene tracked from frame 0 (initialised on its ground truth) to ``frames``."""
    name: str
    scene: SyntheticScene
    frames: int   # tracked frames after frame 0

    @property
    def ground_truth(self) -> np.ndarray:
        return np.asarray(self.scene.ground_truth[: self.frames + 1], dtype=np.float64)


def demo_sequences(frames: int | None, count: int | None = None, first_seed: int | None = None,
                   size: tuple[int, int] | None = None) -> list[BenchSequence]:
    """The sequences ``make demo`` tracks with its defaults (``ckd_ros.ros.demo``: count, length, size,
    first seed, and the seeds its default weights were trained on left out), each cut to ``frames``
    tracked frames when given; ``count``: that many of them instead of the demo's count (the demo's
    ``--sequences``: scenarios in turn, the first ones are the demo's); ``first_seed`` / ``size``: the demo's
    ``--first-seed`` / ``--size`` (the held-out set: 900000, 640x512)."""
    from ckd_ros.ros import demo
    defaults = demo.build_parser().parse_args([])
    excluded = demo.training_seed_ranges(demo.resolve_checkpoint_file(defaults.config, defaults.checkpoint))
    planned = demo.plan_sequences(count or defaults.sequences, defaults.frames, size or defaults.size,
                                  defaults.first_seed if first_seed is None else first_seed, excluded)
    return [BenchSequence(f'{p.name} (seed {p.seed})', p.scene,
                          len(p.scene) - 1 if frames is None else min(frames, len(p.scene) - 1)) for p in planned]


def synthetic_sequence(seed: int, frames: int) -> list[BenchSequence]:
    return [BenchSequence(f'synthetic seed {seed}', SyntheticScene(seed, length=frames + 1, size=(640, 512)), frames)]


def as_result_files(boxes: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-sequence boxes written as result files and read back (what ``make demo`` and ckd-eval score)."""
    with tempfile.TemporaryDirectory(prefix='bench_acceleration_') as folder:
        out = {}
        for index, (name, rows) in enumerate(boxes.items()):
            file_name = f'seq{index:03d}'
            results.write_sequence_result(folder, file_name, np.asarray(rows), np.zeros(len(rows)))
            out[name] = results.read_result_boxes(results.result_paths(folder, file_name)[0])
        return out


def paired_ci95(score: metrics.BenchmarkScore, reference: metrics.BenchmarkScore, metric: str) -> float:
    """Half-width (points) of the 95 % confidence interval of the mean per-sequence change of ``metric``
    against ``reference`` (paired over sequences, Student t): what separates an option's real accuracy
    effect from closed-loop luck. NaN with fewer than two sequences."""
    changes = np.array([100 * (score.per_sequence[n][metric] - reference.per_sequence[n][metric])
                        for n in reference.per_sequence])
    if len(changes) < 2:
        return math.nan
    return T_975[min(len(changes) - 1, len(T_975) - 1)] * float(changes.std(ddof=1)) / math.sqrt(len(changes))


# Student t 0.975 quantiles for 1..30 degrees of freedom (index = df; beyond 30 the normal 1.96 is within 2 %)
T_975 = (math.nan, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042, 1.960)


def follow(follower: CKDTracker, reference: CKDTracker) -> None:
    """Put ``follower`` in ``reference``'s tracking state (box, frame count, LOST count) before a frame: the
    open-loop measurement; the templates are the follower's own (same first frame, same box)."""
    follower._box = list(reference.box)
    follower._frame_index = reference.frame_index
    follower._lost_frames = reference._lost_frames


def bench(config: str, options: list[Acceleration], sequences: list[BenchSequence],
          official_style: bool = False, before: bool = False) -> dict:
    cfg = load_config(config)
    trained = not cfg.is_official and shipped_weights_path(cfg.name).is_file()
    network = load_network(cfg, None if trained else 'recipe', torch.device('cpu'))
    variants = [('fp32/eager', Acceleration())] + [(f'{o.precision}/{o.backend}', o) for o in options]
    trackers, setup_s = {}, {}
    for name, acceleration in variants:
        start = time.perf_counter()
        trackers[name] = CKDTracker(network, cfg, 'cpu', acceleration=acceleration)
        setup_s[name] = time.perf_counter() - start
    if before:
        trackers[BEFORE] = CKDTracker(network, cfg, 'cpu')
        trackers[BEFORE].runner = PerBranchRunner(network, torch.device('cpu'))
        setup_s[BEFORE] = 0.0
    if official_style:
        # the in-process stand-in for the official code (for the ratio on this machine, at this load)
        trackers[OFFICIAL_STYLE] = CKDTracker(network, cfg, 'cpu')
        trackers[OFFICIAL_STYLE].runner = OfficialStyleRunner(official_style_network(network), torch.device('cpu'))
        setup_s[OFFICIAL_STYLE] = 0.0
    names = list(trackers)
    # open loop: a second tracker per option that starts every frame from the fp32 tracker's state, so its
    # boxes differ from fp32's only by this frame's numbers, never by an earlier frame's luck
    followers = {name: CKDTracker(network, cfg, 'cpu', acceleration=acceleration)
                 for name, acceleration in variants[1:]}
    open_boxes = {name: {} for name in followers}
    times = {name: [] for name in names}
    boxes = {name: {} for name in names}   # sequence -> (frames + 1, 4), frame 0 = the initial box
    map_error = {}
    frame_count = 0
    for sequence in sequences:
        truth = sequence.ground_truth
        rgb0, tir0 = sequence.scene.frame(0)
        for name in names:
            trackers[name].initialize(rgb0, tir0, tuple(truth[0]))
            boxes[name][sequence.name] = [truth[0]]
        for name, follower in followers.items():
            follower.initialize(rgb0, tir0, tuple(truth[0]))
            open_boxes[name][sequence.name] = [truth[0]]
        if not map_error:
            # open loop: every runner on the same frame-1 search crops of the first sequence
            reference = trackers['fp32/eager']
            rgb1, tir1 = sequence.scene.frame(1)
            crops = [reference.preprocess(sample_target(img, reference.box, reference.search_factor,
                                                        reference.search_size)[0]) for img in (rgb1, tir1)]
            ref_maps = reference.runner(crops)
            for name in names:
                trackers[name].runner(crops)  # warm-up (compile happens here)
                maps = trackers[name].runner(crops)
                map_error[name] = max(float((a - b).abs().max()) for a, b in zip(maps, ref_maps))
        for index in range(1, sequence.frames + 1):
            rgb, tir = sequence.scene.frame(index)
            # rotate who goes first, so that no variant always runs right after frame rendering
            frame_count += 1
            reference = trackers['fp32/eager']
            for name, follower in followers.items():
                follow(follower, reference)
                open_boxes[name][sequence.name].append(follower.track(rgb, tir).box)
            shift = frame_count % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                result = trackers[name].track(rgb, tir)
                times[name].append(time.perf_counter() - start)
                boxes[name][sequence.name].append(result.box)
    ground_truth = {s.name: GroundTruth(s.ground_truth) for s in sequences}
    # the demo's scoring: the boxes as result files hold them (official layout, integers truncated like
    # the official astype(int)), generic protocol (the frames after frame 0)
    scores = {name: metrics.evaluate('generic', as_result_files(boxes[name]), ground_truth) for name in names}
    open_scores = {name: metrics.evaluate('generic', as_result_files(open_boxes[name]), ground_truth)
                   for name in followers}
    tracked = {name: np.concatenate([np.asarray(boxes[name][s.name])[1:] for s in sequences]) for name in names}

    def frame_ratio(name: str, reference: str) -> float:
        # median of per-frame ratios: the variants of one frame ran within a second of each other, so
        # load changes between frames (2x here) cancel, which a ratio of medians does not do
        return statistics.median(a / b for a, b in zip(times[name], times[reference]))
    rows = []
    for name in names:
        agreement = metrics.overlap(tracked[name], tracked['fp32/eager'])
        median = statistics.median(times[name])
        row = {'option': name, 'setup_s': setup_s[name], 'track_median_ms': median * 1e3,
               'track_p90_ms': float(np.percentile(times[name], 90)) * 1e3,
               'ratio_vs_fp32_eager': frame_ratio(name, 'fp32/eager'), 'pairs_per_s': 1 / median,
               'max_abs_map_diff': map_error[name], 'box_iou_vs_fp32_mean': float(agreement.mean()),
               'box_iou_vs_fp32_min': float(agreement.min()), 'frames_iou_gt_0.9': float((agreement > 0.9).mean())}
        if trained:
            row['success_auc'] = float(scores[name].metrics['SR'])
            row['precision_20px'] = float(scores[name].metrics['PR'])
            row['success_change_points'] = 100 * (row['success_auc'] - float(scores['fp32/eager'].metrics['SR']))
            row['precision_change_points'] = 100 * (row['precision_20px'] - float(scores['fp32/eager'].metrics['PR']))
            row['success_change_ci95_points'] = paired_ci95(scores[name], scores['fp32/eager'], 'SR')
            # fp32's open loop is its closed loop (it is the trajectory every follower starts from)
            opened = open_scores.get(name, scores['fp32/eager'])
            row['open_loop_success_change_points'] = 100 * (float(opened.metrics['SR'])
                                                            - float(scores['fp32/eager'].metrics['SR']))
            row['open_loop_success_change_ci95_points'] = paired_ci95(opened, scores['fp32/eager'], 'SR')
        if before:
            row['ratio_vs_per_branch'] = frame_ratio(name, BEFORE)
        if official_style:
            row['ratio_vs_official_style'] = frame_ratio(name, OFFICIAL_STYLE)
        official = PUBLISHED_OFFICIAL_SPEED_S.get(config)
        if official:
            row['ratio_vs_official_track'] = median / official['track_s']
        rows.append(row)
    return {'config': config, 'weights': 'shipped' if trained else 'recipe (untrained)',
            'sequences': [{'name': s.name, 'frames': s.frames} for s in sequences], 'frames': frame_count,
            'results': rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', type=cli_args.config_name, default=['ckd_tiny'])
    parser.add_argument('--options', nargs='+', type=parse_option, default=DEFAULT_OPTIONS,
                        help='PRECISION/BACKEND pairs, timed against fp32/eager')
    parser.add_argument('--sequences', choices=('synthetic', 'demo'), default='synthetic',
                        help="'demo': the sequences of make demo; 'synthetic': one 640x512 scene of --seed")
    parser.add_argument('--count', type=cli_args.integer(1), default=None,
                        help="--sequences demo: this many demo sequences (scenarios in turn) instead of the demo's 3, "
                             "for a closed-loop success change with less variance")
    parser.add_argument('--first-seed', type=cli_args.integer(0), default=None,
                        help="--sequences demo: the demo's --first-seed (held-out set: 900000)")
    parser.add_argument('--size', type=cli_args.size(64), default=None,
                        help="--sequences demo: the demo's --size WIDTHxHEIGHT (held-out set: 640x512)")
    parser.add_argument('--frames', type=cli_args.integer(1), default=None,
                        help='tracked frames (synthetic: default 30; demo: per sequence, default all)')
    parser.add_argument('--threads', type=cli_args.integer(1), default=1,
                        help='torch/ORT threads (1 is faster on a busy 2-core box)')
    parser.add_argument('--seed', type=cli_args.integer(0), default=None,
                        help='scene seed of --sequences synthetic (default 7)')
    parser.add_argument('--official-style', action='store_true',
                        help='also time the official way of computing (explicit attention matrix, templates '
                             'embedded every frame) in the same process')
    parser.add_argument('--before', action='store_true',
                        help=f'also time {BEFORE}: fp32 eager with each branch on its own and the last block '
                             'over all tokens (the path before batching the branches; same numbers)')
    parser.add_argument('--json', type=cli_args.output_file, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    # options that only apply to one kind of sequences are refused with the other, not silently ignored
    if args.sequences == 'synthetic' and args.count is not None:
        parser.error('--count applies to --sequences demo (the synthetic sequence is one scene of --seed)')
    if args.sequences == 'synthetic' and (args.first_seed is not None or args.size is not None):
        parser.error('--first-seed and --size apply to --sequences demo '
                     '(the synthetic sequence is one scene of --seed)')
    if args.sequences == 'demo' and args.seed is not None:
        parser.error("--seed applies to --sequences synthetic (the demo sequences have the demo's seeds)")
    torch.set_num_threads(args.threads)
    options = [o if isinstance(o, Acceleration) else parse_option(o) for o in args.options]
    if args.sequences == 'demo':
        sequences = demo_sequences(args.frames, args.count, args.first_seed, args.size)
    else:
        sequences = synthetic_sequence(7 if args.seed is None else args.seed,
                                       30 if args.frames is None else args.frames)
    if any(o.backend.startswith('onnxruntime') for o in options):
        import onnxruntime  # noqa: F401  (loaded before the machine line, so that it names ORT's version)
    machine = machine_info()   # CPU class and the flags that matter (acceleration.MEASURED_OPTIONS is keyed by class)
    cpu = read_cpu_info()
    machine['cpu_flags_all'], machine['cpu_flags_source'] = sorted(cpu.flags), cpu.source   # the JSON keeps all
    print(machine_line(machine), flush=True)
    print(cpu.describe(), flush=True)
    print('sequences: ' + ', '.join(f'{s.name} {s.frames} frames {s.scene.width}x{s.scene.height}'
                                    for s in sequences), flush=True)
    reports = []
    for config in args.configs:
        report = bench(config, options, sequences, args.official_style, args.before)
        reports.append(report)
        print(f"{config} ({report['weights']} weights, {report['frames']} tracked frames, interleaved):")
        for row in report['results']:
            line = (f"  {row['option']:<22} {row['track_median_ms']:8.1f} ms/frame (p90 {row['track_p90_ms']:.1f}) "
                    f"x{row['ratio_vs_fp32_eager']:.2f} of fp32 eager, {row['pairs_per_s']:.1f} pairs/s; "
                    f"map diff {row['max_abs_map_diff']:.1e}; box IoU vs fp32 mean {row['box_iou_vs_fp32_mean']:.3f}, "
                    f"IoU > 0.9 on {100 * row['frames_iou_gt_0.9']:.1f} % of frames")
            if 'success_auc' in row:
                line += (f"; SR {100 * row['success_auc']:.1f} ({row['success_change_points']:+.1f} "
                         f"+- {row['success_change_ci95_points']:.1f} at 95 %; open loop "
                         f"{row['open_loop_success_change_points']:+.2f} +- "
                         f"{row['open_loop_success_change_ci95_points']:.2f}), "
                         f"PR {100 * row['precision_20px']:.1f} ({row['precision_change_points']:+.1f})")
            if 'ratio_vs_per_branch' in row:
                line += f"; x{row['ratio_vs_per_branch']:.2f} of per-branch"
            if 'ratio_vs_official_style' in row:
                line += f"; x{row['ratio_vs_official_style']:.2f} of official-style"
            if 'ratio_vs_official_track' in row:
                line += f"; x{row['ratio_vs_official_track']:.2f} of the official's published ms"
            print(line, flush=True)
        if 'success_auc' not in report['results'][0]:
            print('  (untrained recipe weights: success/precision and their change cannot be measured, '
                  'only box agreement with fp32)')
    print(f'load average at the end: {os.getloadavg()[0]:.2f}')
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'machine': machine, 'reports': reports}, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
