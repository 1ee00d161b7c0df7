#!/usr/bin/env python3
"""Image transport between two processes with and without the package's Fast DDS profile.

A publisher process sends pairs of sensor_msgs/Image (default 983,040 and 655,360 bytes: 640x512 rgb8
and mono16) at --rate Hz, stamped just before publishing; this process subscribes (reliable, depth 5)
and measures stamp-to-callback per image.  Run for each placement of the profile
(config/fastdds_large_images.xml), back to back:

    source scripts/env.sh
    python benchmarks/bench_dds_transport.py                      # none / subscriber only / both
    python benchmarks/bench_dds_transport.py --sizes 6220800 655360 --frames 150

The README's "Large images over Fast DDS" table comes from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ckd_ros.core import cli_args

PROFILE = Path(__file__).resolve().parent.parent / 'config' / 'fastdds_large_images.xml'


def topics(count: int) -> list[str]:
    """One topic per image size (a pair by default: --sizes RGB THERMAL)."""
    return [f'bench_dds/image{i}' for i in range(count)]

PLACEMENTS = {'none': (False, False), 'subscriber': (False, True), 'both': (True, True)}


def publisher(sizes: list[int], frames: int, rate: float) -> int:
    """The publishing side (run as a child process)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_dds_publisher')
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pubs = [node.create_publisher(Image, topic, qos) for topic in topics(len(sizes))]
    payloads = [np.random.default_rng(i).integers(0, 256, size, np.uint8).tobytes() for i, size in enumerate(sizes)]
    deadline = time.monotonic() + 60
    while any(p.get_subscription_count() == 0 for p in pubs) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    start = time.monotonic()
    for k in range(frames):
        for pub, payload in zip(pubs, payloads):
            msg = Image(height=1, width=len(payload), encoding='mono8', step=len(payload))
            msg.data = payload
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
            pub.publish(msg)
        time.sleep(max(0.0, start + (k + 1) / rate - time.monotonic()))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def measure(sizes: list[int], frames: int, rate: float, publisher_profile: bool, subscriber_profile: bool,
            skip: int) -> list[dict]:
    """Stamp-to-callback statistics per image size for one placement of the profile."""
    env = dict(os.environ)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    if publisher_profile:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    # this process's participant reads the variable when rclpy creates it: run the subscriber in a child too
    sub_env = dict(env)
    sub_env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    if subscriber_profile:
        sub_env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    sub = subprocess.Popen([sys.executable, __file__, '--role', 'subscriber', '--frames', str(frames),
                            '--rate', str(rate), '--skip', str(skip), '--sizes', *map(str, sizes)],
                           env=sub_env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    pub = subprocess.Popen([sys.executable, __file__, '--role', 'publisher', '--frames', str(frames),
                            '--rate', str(rate), '--sizes', *map(str, sizes)], env=env)
    out, _ = sub.communicate(timeout=frames / rate + 120)
    pub.wait(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def subscriber(sizes: list[int], frames: int, rate: float, skip: int) -> int:
    """The subscribing side (a child process): prints one JSON line of statistics."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_dds_subscriber')
    delays: list[list[float]] = [[] for _ in sizes]

    def callback(index):
        def on_image(msg):
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            delays[index].append((time.time_ns() - stamp_ns) / 1e6)
        return on_image

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    for i, topic in enumerate(topics(len(sizes))):
        node.create_subscription(Image, topic, callback(i), qos)
    deadline = time.monotonic() + frames / rate + 90
    while time.monotonic() < deadline and min(len(d) for d in delays) < frames:
        rclpy.spin_once(node, timeout_sec=0.05)
    stats = []
    for size, values in zip(sizes, delays):
        kept = np.array(values[skip:]) if len(values) > skip else np.array(values)
        stats.append({'bytes': size, 'received': len(values),
                      'p50_ms': float(np.percentile(kept, 50)) if kept.size else None,
                      'p95_ms': float(np.percentile(kept, 95)) if kept.size else None,
                      'max_ms': float(kept.max()) if kept.size else None})
    print(json.dumps(stats), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=cli_args.integer(1), nargs='+', default=[983040, 655360],
                        help='image sizes in bytes, one topic each (default: a 640x512 rgb8 + mono16 pair)')
    parser.add_argument('--frames', type=cli_args.integer(1), default=240)
    parser.add_argument('--rate', type=cli_args.number(0.0), default=30.0)
    parser.add_argument('--skip', type=cli_args.integer(0), default=30,
                        help='first frames left out (discovery, warm-up)')
    parser.add_argument('--placements', nargs='+', choices=list(PLACEMENTS), default=list(PLACEMENTS))
    parser.add_argument('--role', choices=('bench', 'publisher', 'subscriber'), default='bench', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == 'bench' and args.skip >= args.frames:
        parser.error(f'--skip {args.skip} leaves none of the {args.frames} --frames: send more or skip fewer')
    if args.role == 'publisher':
        return publisher(args.sizes, args.frames, args.rate)
    if args.role == 'subscriber':
        return subscriber(args.sizes, args.frames, args.rate, args.skip)
    from ckd_ros.core.report import machine_line
    print(f"{machine_line()}; "
          f"{os.environ.get('RMW_IMPLEMENTATION', 'default rmw')}; {args.frames} pairs at {args.rate:g} Hz, "
          f"first {args.skip} left out; stamp to callback in ms")
    for placement in args.placements:
        stats = measure(args.sizes, args.frames, args.rate, *PLACEMENTS[placement], args.skip)
        cells = '; '.join(f"{s['bytes']} B: {s['received']} received, p50 {s['p50_ms']:.1f} / p95 {s['p95_ms']:.1f} / "
                          f"max {s['max_ms']:.1f}" if s['received'] else f"{s['bytes']} B: none received"
                          for s in stats)
        print(f'profile in {placement:10s}: {cells}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
