#!/usr/bin/env python3
"""The tracker node end to end: a camera process publishes RGB + thermal pairs at --rate Hz, the node
(its own process, the installed entry point) tracks, this process counts what comes out.

Reports, per image size and Fast DDS transport setting: pairs delivered (pairs the node formed from
what reached it, over pairs published), throughput (targets per second over the streaming window),
latency p50/p95/p99 (the node's ``latency`` field: RGB stamp to publication, node clock), drops (pairs
published but not tracked: lost in transport, or the node kept only the newest pair when it fell
behind) and the node process's CPU use. The node runs with its default parameters (best-effort input,
as shipped) unless --input-reliability says otherwise; the camera publishes reliable, as most drivers do.

Needs the built workspace:

    source scripts/env.sh
    python benchmarks/bench_node.py --frames 300 --size 640x512                     # ckd_tiny, fp32 eager
    python benchmarks/bench_node.py --backend onnxruntime --json /tmp/node_ort.json
    python benchmarks/bench_node.py --dds-profile none          # Fast DDS built-in transports, for comparison
    python benchmarks/bench_node.py --size 640x512,1280x1024,1920x1080 --dds-profile both   # the README table

Weights are the untrained recipe weights unless --checkpoint is given (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ckd_ros.core import cli_args
from ckd_ros.ros.node_command import ChildProcess, start_tracker_node

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMERA_PEER = REPO_ROOT / 'test' / 'peers' / 'rgbt_camera_peer.py'
PACKAGE_PROFILE = REPO_ROOT / 'config' / 'fastdds_large_images.xml'
NAMESPACE = '/bench'
NODE = f'{NAMESPACE}/ckd_tracker'


def event(output, name: str):
    """The first JSON line ``{"event": name, ...}`` a peer printed (``output``: ``ChildProcess.drain()``)."""
    for line in output.lines:
        if line.startswith('{') and json.loads(line).get('event') == name:
            return json.loads(line)
    return None


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model-config', type=cli_args.config_name, default='ckd_tiny')
    parser.add_argument('--checkpoint', default='random')
    parser.add_argument('--precision', default='fp32')
    parser.add_argument('--backend', default='eager')
    parser.add_argument('--threads', type=cli_args.integer(1), default=1, help='node torch_threads')
    parser.add_argument('--rate', type=cli_args.number(0.0), default=30.0, help='camera pairs per second')
    parser.add_argument('--frames', type=cli_args.integer(2), default=300)
    parser.add_argument('--size', default='640x512',
                        help='WIDTHxHEIGHT, or several separated by commas (one run each)')
    parser.add_argument('--input-reliability', choices=('default', 'best_effort', 'reliable'), default='default',
                        help="the node's input.reliability ('default': the node's own default)")
    parser.add_argument('--skip-s', type=cli_args.number(0.0, inclusive=True), default=1.0,
                        help='seconds of the stream left out (start-up)')
    parser.add_argument('--json', type=cli_args.output_file, help='also write the results to this JSON file')
    parser.add_argument('--dds-profile', help="FASTDDS_DEFAULT_PROFILES_FILE for the camera and node processes: "
                        "a path, 'none' for Fast DDS's built-in transports, or 'both' (the package's profile, "
                        "then none; default: inherited, which scripts/env.sh sets to config/fastdds_large_images.xml)")
    args = parser.parse_args(argv)
    try:
        sizes = [cli_args.size(32)(text) for text in args.size.split(',')]
    except argparse.ArgumentTypeError as exc:
        parser.error(f'--size: {exc}')
    stream_s = args.frames / args.rate
    if args.skip_s >= stream_s:
        parser.error(f'--frames {args.frames} at --rate {args.rate:g} Hz stream for {stream_s:g} s, all of it left '
                     f'out by --skip-s {args.skip_s:g}: stream longer (more --frames) or skip less')
    try:
        from ckd_ros.core.api import select_acceleration
        # 'auto' is passed on to the node, which chooses the same way on this machine; named here for the report
        args.acceleration_choice = select_acceleration(args.precision, args.backend, 'cpu')
    except ValueError as exc:
        parser.error(f'--precision {args.precision} --backend {args.backend}: {exc}')
    if args.dds_profile not in (None, 'none', 'both') and not Path(args.dds_profile).is_file():
        parser.error(f"--dds-profile {args.dds_profile} is not a file (give a Fast DDS XML profile, 'none' or 'both')")
    profiles = {'both': [str(PACKAGE_PROFILE), 'none'], None: [os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', 'none')]}
    results = []
    for profile in profiles.get(args.dds_profile, [args.dds_profile]):
        if profile == 'none':
            os.environ.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
        else:
            os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(Path(profile).resolve())
        for size in sizes:
            results.append(run_once(args, size))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(results if len(results) > 1 else results[0], handle, indent=1)
    if len(results) > 1:
        print('\nsize        profile   delivered  tracked/s  dropped  p50 ms  p95 ms  p99 ms  node CPU')
        for r in results:
            lat = r['latency_ms']
            print(f"{r['size']:<11} {'package' if r['fastdds_profile'] else 'none':<9} "
                  f"{100 * r['delivered_fraction']:7.1f} %  {r['throughput_pairs_per_s']:8.1f}  "
                  f"{100 * r['drop_fraction']:5.1f} %  {lat['p50']:6.1f}  {lat['p95']:6.1f}  {lat['p99']:6.1f}  "
                  f"{100 * r['node_cpu_fraction']:5.0f} %")
    return 0


def run_once(args, size_wh) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from ckd_ros.core.report import machine_info, machine_line
    from ckd_ros.msg import TrackedTarget, TrackerStatus

    size = '{}x{}'.format(*size_wh)
    peer = ChildProcess([CAMERA_PEER, '--namespace', NAMESPACE, '--frames', args.frames, '--rate', args.rate,
                         '--thermal-every', '1', '--jitter-ms', '1', '--size', size, '--thermal-size', size,
                         '--rgb-encodings', 'rgb8', '--thermal-encodings', 'mono16', '--qos', 'reliable',
                         '--cycle', '30', '--wait-subscribers', '120', '--linger', '2'])
    peer_out = peer.drain()
    node = None
    rclpy.init()
    client = rclpy.create_node('ckd_bench_node')
    executor = SingleThreadedExecutor()
    executor.add_node(client)

    def wait(predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f'timed out waiting for {what}\n' + '\n'.join(
                    (node_out.lines if node is not None else peer_out.lines)[-40:]))
            executor.spin_once(timeout_sec=0.02)

    try:
        wait(lambda: event(peer_out, 'ready'), 120, 'the camera peer')
        ready = event(peer_out, 'ready')
        params = {'model_config': args.model_config, 'checkpoint': args.checkpoint, 'device': 'cpu',
                  'precision': args.precision, 'backend': args.backend, 'torch_threads': args.threads,
                  'autostart': True, 'initial_box': ready['init_box'],
                  'status_period': 0.5, 'stats_window': 1000, 'publish_detections': False}
        if args.input_reliability != 'default':
            params['input.reliability'] = args.input_reliability
        targets, arrival = [], []
        statuses = []
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        client.create_subscription(TrackedTarget, f'{NODE}/target',
                                   lambda m: (targets.append(m), arrival.append(time.monotonic())), qos)
        client.create_subscription(TrackerStatus, f'{NODE}/status', statuses.append, 10)
        node = start_tracker_node('ckd_tracker', NAMESPACE, params)
        node_out = node.drain()
        wait(lambda: len(targets) > 0, 300, "the node's first target")
        cpu_start, wall_start = node.cpu_seconds(), time.monotonic()
        wait(lambda: event(peer_out, 'done'), args.frames / args.rate + 300, 'the camera peer to finish')
        cpu_fraction = (node.cpu_seconds() - cpu_start) / max(1e-9, time.monotonic() - wall_start)
        done = event(peer_out, 'done')
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)
    finally:
        for proc in (node, peer):
            if proc is not None:
                proc.stop(timeout=10)
        executor.shutdown()
        client.destroy_node()
        rclpy.try_shutdown()

    published = sorted(done['rgb_stamps'])
    first_ns = published[0] + int(args.skip_s * 1e9)
    window = [s for s in published if s >= first_ns]
    stamps = [t.header.stamp.sec * 10**9 + t.header.stamp.nanosec for t in targets]
    tracked = [(s, t) for s, t in zip(stamps, targets) if s >= first_ns]
    if not window or not tracked:
        raise SystemExit('no tracked pairs in the measuring window: ' + '\n'.join(node_out.lines[-40:]))
    span_s = (window[-1] - window[0]) / 1e9 + 1 / args.rate
    latencies_ms = [1e3 * t.latency for _, t in tracked]
    last = statuses[-1] if statuses else None
    # pairs the node formed during the measuring window, from its status (stamped on the node clock, the
    # same clock as the camera's stamps on one machine): the start-up transient is left out as for the rest
    before = [s for s in statuses if s.header.stamp.sec * 10**9 + s.header.stamp.nanosec <= first_ns]
    made_before = int(before[-1].pairs_made) if before else 0
    delivered = ((int(last.pairs_made) - made_before) / len(window)) if last is not None else float('nan')
    delivered = min(delivered, 1.0)   # a status taken just before the window start counts a pair or two of it
    result = {
        'machine': machine_info(),
        # the DDS transport settings of all three processes (README: "Large images over Fast DDS")
        'rmw': os.environ.get('RMW_IMPLEMENTATION', ''),
        'fastdds_profile': os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', ''),
        'config': args.model_config, 'precision': args.precision, 'backend': args.backend,
        'acceleration': f'{args.acceleration_choice.precision}/{args.acceleration_choice.backend}',
        'node_torch_threads': args.threads, 'size': size, 'camera_rate_hz': args.rate,
        'pairs_published': len(window), 'pairs_tracked': len(tracked),
        'throughput_pairs_per_s': len(tracked) / span_s,
        'dropped': len(window) - len(tracked), 'drop_fraction': 1 - len(tracked) / len(window),
        # pairs the node formed from what reached it, over the pairs published in the measuring window
        'delivered_fraction': delivered,
        'node_input_reliability': params.get('input.reliability', 'default (best_effort)'),
        'node_cpu_fraction': cpu_fraction,   # of one core, from the first target to the stream's end
        'latency_ms': {'p50': percentile(latencies_ms, 50), 'p95': percentile(latencies_ms, 95),
                       'p99': percentile(latencies_ms, 99), 'max': max(latencies_ms)},
        'node_status': None if last is None else {'pairs_made': int(last.pairs_made),
                                                  'pairs_dropped': int(last.pairs_dropped),
                                                  'frames_unmatched': int(last.frames_unmatched),
                                                  'output_rate': float(last.output_rate)},
    }
    lat = result['latency_ms']
    chosen = f" (auto: {result['acceleration']})" if args.acceleration_choice.automatic else ''
    print(f"{machine_line(result['machine'])}; node: {args.model_config} {args.precision}/{args.backend}{chosen}, "
          f"{args.threads} torch thread(s); {result['rmw'] or 'default rmw'}, Fast DDS profile "
          f"{result['fastdds_profile'] or 'none (built-in transports)'}")
    print(f"{size} pairs at {args.rate:g} Hz: {100 * delivered:.1f} % delivered to the node; "
          f"node CPU {100 * cpu_fraction:.0f} % of a core; {len(window)} published after the first {args.skip_s:g} s: "
          f"{len(tracked)} tracked = {result['throughput_pairs_per_s']:.1f} pairs/s, dropped {result['dropped']} "
          f"({100 * result['drop_fraction']:.1f} %); latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f}, "
          f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}")
    if result['node_status']:
        print(f"node status: {result['node_status']}")
    return result


if __name__ == '__main__':
    sys.exit(main())
