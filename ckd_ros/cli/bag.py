"""``ckd-bag``: convert RGB-T sequences to rosbag2, summarise bags, replay them into the node.

* ``convert``: a dataset (one bag per sequence under ``--out``) or one sequence given as two image
  folders and a box file (the bag is ``--out``); MCAP by default, ``--storage sqlite3``; a bag appears
  under its name only once complete (see ``bagio.BagWriter``), so a killed conversion is rerun as is;
  ``--fps`` 0.1..1000, ``--start-time`` 0..2**31-1 s (a ROS Time), ``--max-frames`` >= 1; a sequence that cannot
  be read fails alone (the others are converted; exit status 2);
* ``info``: topics, types, message counts, duration, rates, image encodings; an MCAP bag without a usable
  ``metadata.yaml`` (missing, or damaged: text in its numbers) is read record by record as the readers do
  and reported as damaged (exit status 1);
* ``play``: replay a converted bag into a running tracker node and record its outputs (needs rclpy;
  see ``ckd_ros.ros.bag_play``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ckd_ros.cli import run_command
from ckd_ros.core import bagio, cli_args, datasets

# builtin_interfaces/Time.sec is an int32: stamps from 0 (no negative time in ROS) up to 2**31 - 1 s
MAX_START_TIME_S = float(2 ** 31 - 1)
FPS_RANGE = (0.1, 1000.0)


def _start_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0.0 <= value < MAX_START_TIME_S):
        raise argparse.ArgumentTypeError(f'must be a time in seconds from 0 to {MAX_START_TIME_S:.0f} (a ROS '
                                         f'builtin_interfaces/Time has an int32 sec field), got {text!r}')
    return value


def _fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    low, high = FPS_RANGE
    if not (low <= value <= high):
        raise argparse.ArgumentTypeError(f'must be a frame rate from {low:g} to {high:g} frames per second, '
                                         f'got {text!r}')
    return value


def _topics(args) -> bagio.BagTopics:
    return bagio.BagTopics(args.rgb_topic, args.thermal_topic, args.gt_topic)


def cmd_convert(args) -> int:
    from tqdm import tqdm
    options = dict(fps=args.fps, storage=args.storage, start_ns=int(round(args.start_time * 1e9)),
                   topics=_topics(args), compression=args.compression, overwrite=args.overwrite,
                   max_frames=args.max_frames)
    single = [f'--{name}' for name in ('rgb', 'thermal', 'boxes', 'name') if getattr(args, name)]
    if args.dataset and single:
        raise SystemExit(f'ckd-bag convert: give either --dataset or --rgb/--thermal/--boxes, not both '
                         f'(got --dataset and {", ".join(single)})')
    if args.sequences and not args.dataset:
        raise SystemExit('ckd-bag convert: --sequences selects sequences of a --dataset')
    if args.dataset:
        kind = args.kind or datasets.detect_kind(args.dataset)
        ds = datasets.open_dataset(kind, args.dataset)
        names = args.sequences.split(',') if args.sequences else ds.names
        unknown = [n for n in names if n not in ds]
        if unknown:
            raise SystemExit(f'ckd-bag convert: no sequence {", ".join(unknown)} in the {ds.kind} dataset at '
                             f'{args.dataset}')
        out = Path(args.out)
        failed = {}
        for name in tqdm(names, desc='sequences', unit='seq', disable=args.quiet):
            target = out / name
            if target.exists() and not args.overwrite:
                print(f'skip {name}: {target} exists (--overwrite to replace)', file=sys.stderr)
                continue
            try:
                seq = ds[name]      # a sequence whose annotation cannot be read fails alone
                with tqdm(total=len(seq) if args.max_frames is None else min(len(seq), args.max_frames), desc=name,
                          unit='frame', leave=False, disable=args.quiet) as bar:
                    summary = bagio.write_sequence_bag(seq, target, progress=bar.update, **options)
            except (OSError, ValueError) as exc:   # nothing is left under its name (staged writer); go on
                failed[name] = str(exc)
                print(f'ckd-bag convert: FAILED {name}: {exc}', file=sys.stderr)
                continue
            print(f'{name}: {summary.frames} frames, thermal {summary.thermal_encoding} -> {summary.path}')
        if failed:
            print(f'ckd-bag convert: {len(failed)} of {len(names)} sequence(s) failed ({", ".join(failed)}); the '
                  'others are converted, a rerun converts only the missing ones', file=sys.stderr)
            return 2
        return 0
    if not (args.rgb and args.thermal and args.boxes):
        raise SystemExit('ckd-bag convert: give --dataset ROOT, or --rgb DIR --thermal DIR --boxes FILE')
    seq = datasets.plain_sequence(args.rgb, args.thermal, args.boxes, name=args.name)
    with tqdm(total=len(seq), desc=seq.name, unit='frame', disable=args.quiet) as bar:
        summary = bagio.write_sequence_bag(seq, args.out, progress=bar.update, **options)
    print(f'{seq.name}: {summary.frames} frames, thermal {summary.thermal_encoding} -> {summary.path}')
    return 0


def cmd_info(args) -> int:
    """Every bag given (a folder of bags: each bag in it); an unreadable one is reported and the others
    still shown. Exit status 2 if one could not be opened, else 1 if one is damaged (read up to the damage,
    or without its metadata), else 0."""
    status = 0
    infos = []
    for path in args.bags:
        try:
            bags = bagio.bag_folders(path) if Path(path).is_dir() else [Path(path)]
        except FileNotFoundError:
            bags = [Path(path)]    # not a folder of bags: bag_info says why it is not a bag either
        for bag in bags:
            try:
                info = bagio.bag_info(bag, scan=not args.no_scan)
            except bagio.BagReadError as exc:
                print(f'ckd-bag: error: {exc}', file=sys.stderr)
                status = 2
                continue
            if info.get('error'):
                status = max(status, 1)
            if args.json:
                infos.append(info)
            else:
                print(bagio.format_info(info) + '\n')
    if args.json:
        # one JSON document: a bag's object, or a list when several bags were shown
        print(json.dumps(infos[0] if len(infos) == 1 and len(args.bags) == 1 else infos, indent=1, default=list))
    return status


def cmd_play(args) -> int:
    try:
        from ckd_ros.ros import bag_play
    except ImportError as exc:
        raise SystemExit(f'ckd-bag play needs rclpy and the built ckd_ros messages (source scripts/env.sh): {exc}')
    return bag_play.main_from_args(args)


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--rgb-topic', default=bagio.DEFAULT_TOPICS.rgb)
    parser.add_argument('--thermal-topic', default=bagio.DEFAULT_TOPICS.thermal)
    parser.add_argument('--gt-topic', default=bagio.DEFAULT_TOPICS.ground_truth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ckd-bag', description=__doc__.split('\n\n')[0],
        epilog='exit status: 0 done; 1 info: a bag is damaged (read up to the damage), play: the input bag '
               'broke off; 2 error (bad arguments, missing or unreadable input, an existing bag without '
               '--overwrite)')
    sub = parser.add_subparsers(dest='command', required=True)

    c = sub.add_parser('convert', help='dataset or image folders -> rosbag2')
    c.add_argument('--dataset', help='dataset root (one bag per sequence)')
    c.add_argument('--kind', choices=datasets.DATASET_KINDS, help='dataset layout (default: detected)')
    c.add_argument('--sequences', help='comma-separated subset of the dataset')
    c.add_argument('--rgb', help='RGB image folder (single sequence)')
    c.add_argument('--thermal', help='thermal image folder (single sequence)')
    c.add_argument('--boxes', help='box file: one x,y,w,h per frame, or one line (initial box)')
    c.add_argument('--name', help='sequence name (single sequence)')
    c.add_argument('--out', required=True, help='bag folder (single sequence) or folder of bags (dataset)')
    c.add_argument('--fps', type=_fps, default=30.0,
                   help=f'frame rate of the stamps, {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g} (default 30)')
    c.add_argument('--start-time', type=_start_time, default=0.0,
                   help='stamp of frame 0 in seconds, 0 to 2^31-1 (ROS time; default 0)')
    c.add_argument('--storage', choices=bagio.STORAGES, default='mcap')
    c.add_argument('--compression', choices=('zstd',), help='per-message zstd compression')
    c.add_argument('--max-frames', type=cli_args.integer(1), help='convert at most the first N frames (N >= 1)')
    c.add_argument('--overwrite', action='store_true', help='replace existing bags')
    c.add_argument('--quiet', action='store_true')
    add_topic_arguments(c)
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser('info', help='summarise bags')
    i.add_argument('bags', nargs='+', help='bag folders (or storage files), or folders of bags')
    i.add_argument('--json', action='store_true', help='JSON: an object for one bag, a list for several')
    i.add_argument('--no-scan', action='store_true', help='metadata only (do not read the messages)')
    i.set_defaults(func=cmd_info)

    p = sub.add_parser('play', help='replay a bag into the tracker node and record its outputs (rclpy)')
    p.add_argument('bag')
    p.add_argument('--out', required=True, help='output bag (node outputs + the replayed ground truth)')
    p.add_argument('--node', default='/ckd_tracker', help='node name whose ~/target and ~/status are recorded')
    p.add_argument('--mode', choices=('realtime', 'lockstep'), default='realtime',
                   help='realtime: bag timing (scaled by --rate); lockstep: each pair waits for the answer')
    # > 0 and finite: a rate of 0 never sent a frame, a timeout of 0 gave up on every pair
    p.add_argument('--rate', type=cli_args.number(0.0), default=1.0, help='playback rate factor (realtime mode), > 0')
    p.add_argument('--timeout', type=cli_args.number(0.0), default=10.0, help='lock-step wait per pair (s), > 0')
    p.add_argument('--keep-stamps', action='store_true', help='publish the recorded stamps (default: now)')
    p.add_argument('--no-init', action='store_true', help='do not send the first ground-truth box as the target')
    p.add_argument('--storage', choices=bagio.STORAGES, default='mcap')
    p.add_argument('--overwrite', action='store_true')
    add_topic_arguments(p)
    p.set_defaults(func=cmd_play)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser().parse_args(argv), 'ckd-bag', (OSError, ValueError, bagio.BagReadError))


if __name__ == '__main__':
    sys.exit(main())
