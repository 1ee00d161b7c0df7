#!/usr/bin/env python3
"""Speed and accuracy of the precision/backend options against this package's fp32 eager tracker.

Every option tracks the same synthetic sequence (ckd_ros.core.synthetic, 640x512) in the same process,
frame by frame interleaved (frame i: fp32 eager, then each option), so machine load hits all of them
alike; the figure that counts is the *ratio* to fp32 eager: the median over frames of
(option's time / fp32 eager's time on the same frame); the order of the variants rotates frame by frame.  Accuracy effect:

* maps: max |score_map - fp32| on the first frame's crops (open loop, same input);
* boxes: per-frame IoU of each option's trajectory with the fp32 trajectory (closed loop);
* success/precision: AUC of the success plot and precision at 20 px against the synthetic ground truth
  (meaningful only with trained weights: the shipped ``ckd_ros/core/weights/<config>.pth.tar``; with the
  untrained recipe weights only box agreement is reported).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_acceleration.py --configs ckd_tiny --frames 60
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_acceleration.py \\
        --configs ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead --frames 10 --options fp32/int8 fp32/onnxruntime
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

import copy

import torch.nn.functional as F

from ckd_ros.core.acceleration import Acceleration, NetworkRunner
from ckd_ros.core.api import load_network, shipped_weights_path
from ckd_ros.core.config import load_config
from ckd_ros.core.metrics import centre_error, overlap
from ckd_ros.core.synthetic import SyntheticScene
from ckd_ros.core.model.vit import Attention
from ckd_ros.core.tracker import CKDTracker

from bench_tracker import OFFICIAL, cpu_model

DEFAULT_OPTIONS = ["fp32/int8", "fp32/onnxruntime", "bf16/eager"]
OFFICIAL_STYLE = "official-style"


class OfficialStyleAttention(Attention):
    """The official (timm/OSTrack) attention: the full (N x N) probability matrix is formed with an
    explicit softmax, multiplied with v, and candidate elimination slices its template rows."""

    def forward(self, x, template_len=None, template_rows=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        if template_len is None:
            return out, None
        rows = attn[:, :, :template_len] if template_rows is None else attn.gather(
            2, template_rows[:, None, :, None].expand(-1, self.num_heads, -1, N))
        return out, rows[..., template_len:]


class OfficialStyleRunner(NetworkRunner):
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
    try:
        precision, backend = text.split("/")
    except ValueError:
        raise SystemExit(f"option {text!r} must be PRECISION/BACKEND, e.g. fp32/int8") from None
    return Acceleration(precision=precision, backend=backend)


def machine_line() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average_1min": os.getloadavg()[0]}


def success_auc(ious: np.ndarray) -> float:
    thresholds = np.linspace(0, 1, 21)
    return float(np.mean([(ious > t).mean() for t in thresholds]))


def bench(config: str, options: list[Acceleration], frames: int, seed: int, official_style: bool = False) -> dict:
    cfg = load_config(config)
    trained = not cfg.is_official and shipped_weights_path(cfg.name).is_file()
    network = load_network(cfg, None if trained else "recipe", torch.device("cpu"))
    scene = SyntheticScene(seed, length=frames + 1, size=(640, 512))
    truth = scene.ground_truth[: frames + 1]
    variants = [("fp32/eager", Acceleration())] + [(f"{o.precision}/{o.backend}", o) for o in options]
    trackers, setup_s = {}, {}
    for name, acceleration in variants:
        start = time.perf_counter()
        trackers[name] = CKDTracker(network, cfg, "cpu", acceleration=acceleration)
        setup_s[name] = time.perf_counter() - start
    if official_style:
        # the in-process stand-in for the official code (for the ratio on this machine, at this load)
        trackers[OFFICIAL_STYLE] = CKDTracker(network, cfg, "cpu")
        trackers[OFFICIAL_STYLE].runner = OfficialStyleRunner(official_style_network(network), torch.device("cpu"))
        setup_s[OFFICIAL_STYLE] = 0.0
    rgb0, tir0 = scene.frame(0)
    for tracker in trackers.values():
        tracker.initialize(rgb0, tir0, tuple(truth[0]))
    # open loop: every runner on the same first-frame search crops
    reference = trackers["fp32/eager"]
    from ckd_ros.core.geometry import sample_target
    rgb1, tir1 = scene.frame(1)
    crops = [reference.preprocess(sample_target(img, reference.box, reference.search_factor, reference.search_size)[0])
             for img in (rgb1, tir1)]
    ref_maps = reference.runner(crops)
    map_error = {}
    for name, tracker in trackers.items():
        tracker.runner(crops)  # warm-up (compile happens here)
        maps = tracker.runner(crops)
        map_error[name] = max(float((a - b).abs().max()) for a, b in zip(maps, ref_maps))
    times = {name: [] for name in trackers}
    boxes = {name: [] for name in trackers}
    names = list(trackers)
    for index in range(1, frames + 1):
        rgb, tir = scene.frame(index)
        # rotate who goes first, so that no variant always runs right after frame rendering
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            tracker = trackers[name]
            start = time.perf_counter()
            result = tracker.track(rgb, tir)
            times[name].append(time.perf_counter() - start)
            boxes[name].append(result.box)
    ref_boxes = np.asarray(boxes["fp32/eager"])
    gt = truth[1:]
    def frame_ratio(name: str, reference: str) -> float:
        # median of per-frame ratios: the variants of one frame ran within a second of each other, so
        # load changes between frames (2x here) cancel, which a ratio of medians does not do
        return statistics.median(a / b for a, b in zip(times[name], times[reference]))
    rows = []
    for name in trackers:
        pred = np.asarray(boxes[name])
        agreement = overlap(pred, ref_boxes)
        median = statistics.median(times[name])
        row = {"option": name, "setup_s": setup_s[name], "track_median_ms": median * 1e3,
               "track_p90_ms": float(np.percentile(times[name], 90)) * 1e3, "ratio_vs_fp32_eager": frame_ratio(name, "fp32/eager"),
               "pairs_per_s": 1 / median, "max_abs_map_diff": map_error[name],
               "box_iou_vs_fp32_mean": float(agreement.mean()), "box_iou_vs_fp32_min": float(agreement.min()),
               "frames_iou_ge_0.9": float((agreement >= 0.9).mean())}
        if trained:
            row["success_auc"] = success_auc(overlap(pred, gt))
            row["precision_20px"] = float((centre_error(pred, gt) <= 20).mean())
        if official_style:
            row["ratio_vs_official_style"] = frame_ratio(name, OFFICIAL_STYLE)
        official = OFFICIAL.get(config)
        if official:
            row["ratio_vs_official_track"] = median / official["track_s"]
        rows.append(row)
    return {"config": config, "weights": "shipped" if trained else "recipe (untrained)", "frames": frames,
            "results": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["ckd_tiny"])
    parser.add_argument("--options", nargs="+", default=DEFAULT_OPTIONS, help="PRECISION/BACKEND pairs")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch/ORT threads (1 is faster on a busy 2-core box)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--official-style", action="store_true",
                        help="also time the official way of computing (explicit attention matrix, templates "
                             "embedded every frame) in the same process")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = [parse_option(o) for o in args.options]
    machine = machine_line()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
          f"{machine['torch_threads']} threads, load average {machine['load_average_1min']:.2f}", flush=True)
    reports = []
    for config in args.configs:
        report = bench(config, options, args.frames, args.seed, args.official_style)
        reports.append(report)
        print(f"{config} ({report['weights']} weights, {args.frames} frames 640x512, interleaved):")
        for row in report["results"]:
            line = (f"  {row['option']:<18} {row['track_median_ms']:8.1f} ms/frame (p90 {row['track_p90_ms']:.1f}) "
                    f"x{row['ratio_vs_fp32_eager']:.2f} of fp32 eager, {row['pairs_per_s']:.1f} pairs/s; "
                    f"map diff {row['max_abs_map_diff']:.1e}; box IoU vs fp32 mean {row['box_iou_vs_fp32_mean']:.3f} "
                    f"min {row['box_iou_vs_fp32_min']:.3f}")
            if "success_auc" in row:
                line += f"; success {100 * row['success_auc']:.1f}, precision@20 {100 * row['precision_20px']:.1f}"
            if "ratio_vs_official_style" in row:
                line += f"; x{row['ratio_vs_official_style']:.2f} of official-style"
            if "ratio_vs_official_track" in row:
                line += f"; x{row['ratio_vs_official_track']:.2f} of the official's published ms"
            print(line, flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "reports": reports}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
