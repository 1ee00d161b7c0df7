#!/usr/bin/env python3
"""Soak test of the tracker node: tens of thousands of RGB + thermal pairs through a node process, with
lifecycle cycles (deactivate/activate, and cleanup/configure every few), while watching the process.

Checks (exit code 1 when one fails, each printed with its figure):

* memory: the node's RSS after warm-up grows by less than ``--max-rss-growth-mib`` and its trend (least
  squares over the samples) stays under ``--max-rss-slope-mib`` MiB per 10k pairs;
* threads and file descriptors: the same count in every active phase (no worker, executor or DDS
  thread leaked by a lifecycle cycle), one subscription per input while active, none while inactive;
* latency (input stamp to publish, from the TrackedTarget messages): the median of the last quarter
  of the run is within ``--max-latency-drift`` x the first quarter's (+ 5 ms);
* the node stays up and its log has no traceback.

Run from a shell with the built package (``source scripts/env.sh``)::

    python benchmarks/soak.py                         # 20000 pairs at 100 Hz, ckd_tiny, cycles every 2000
    python benchmarks/soak.py --pairs 400 --cycle-every 100 --model-config test/data/node_micro_config.yaml \
        --checkpoint random          # a short check (a configuration without shipped weights needs a checkpoint)

The RSS trend per 10k pairs is only checked from ``SLOPE_MIN_PAIRS`` pairs on: a shorter run's trend is
its noise extrapolated (a 0.3 MiB wobble over 100 pairs reads as +30 MiB per 10k); the growth and
per-cycle checks apply to every run.

The pairs are 64x48 by default (the node's cost, not the network's, is under test); frames are drawn
from a bank of pre-rendered ones (a square drifting over noise) with fresh stamps for every pair.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ckd_ros.core import cli_args
from ckd_ros.ros.node_command import start_tracker_node

SECOND = 1_000_000_000
SLOPE_MIN_PAIRS = 5000   # fewer pairs: the per-10k-pairs RSS trend is not checked (see the module docstring)


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(key + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'no {key} for process {pid}')


def process_sample(pid: int) -> dict:
    return {'rss_mib': _proc_status(pid, 'VmRSS') / 1024.0, 'threads': _proc_status(pid, 'Threads'),
            'fds': len(os.listdir(f'/proc/{pid}/fd'))}


def frame_bank(count: int, width: int, height: int, seed: int = 0):
    """``count`` pairs: a bright, hot square drifting over noise (RGB uint8, thermal uint16)."""
    rng = np.random.default_rng(seed)
    side = max(8, min(width, height) // 4)
    bank = []
    for k in range(count):
        x = (width // 4 + 2 * k) % (width - side)
        y = (height // 4 + k) % (height - side)
        rgb = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        rgb[y:y + side, x:x + side] = 220
        thermal = rng.integers(2000, 2400, (height, width), dtype=np.uint16)
        thermal[y:y + side, x:x + side] = 9000
        bank.append((rgb, thermal))
    return bank, [float(width // 4), float(height // 4), float(side), float(side)]


def least_squares_slope(xs, ys) -> float:
    if len(xs) < 2:
        return 0.0
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / max((x * x).sum(), 1e-12))


class Soak:
    def __init__(self, args):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from ckd_ros.msg import TrackedTarget, TrackerStatus

        self.args = args
        self.namespace = args.namespace
        self.fqn = f'{args.namespace}/ckd_tracker'
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('ckd_soak', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.rgb_pub = self.node.create_publisher(Image, f'{self.namespace}/rgb/image', qos)
        self.thermal_pub = self.node.create_publisher(Image, f'{self.namespace}/thermal/image', qos)
        self.targets = []     # (pairs sent when received, latency s)
        self.statuses = []
        self.node.create_subscription(TrackedTarget, f'{self.fqn}/target', self._on_target,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(TrackerStatus, f'{self.fqn}/status', self.statuses.append, 10)
        self.sent = 0
        self.log_lines: list[str] = []
        self.proc = None

    def _on_target(self, msg):
        self.targets.append((self.sent, float(msg.latency), bool(math.isfinite(msg.x) and math.isfinite(msg.score))))

    # -------------------------------------------------------------- helpers
    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.01, max(0.0, end - time.monotonic())))

    def wait_for(self, predicate, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.02)
        if not predicate():
            raise RuntimeError(f'timed out after {timeout} s waiting for {what}; node log tail:\n'
                               + '\n'.join(self.log_lines[-30:]))

    def change_state(self, transition: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        ids = {'configure': Transition.TRANSITION_CONFIGURE, 'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE, 'cleanup': Transition.TRANSITION_CLEANUP,
               'shutdown': Transition.TRANSITION_ACTIVE_SHUTDOWN}
        if not hasattr(self, '_change'):
            self._change = self.node.create_client(ChangeState, f'{self.fqn}/change_state')
        self.wait_for(self._change.service_is_ready, 60, 'the change_state service')
        request = ChangeState.Request()
        request.transition.id = ids[transition]
        future = self._change.call_async(request)
        self.wait_for(future.done, 120, f'the {transition} transition')
        return future.result().success

    def input_subscriptions(self) -> tuple[int, int]:
        return (self.node.count_subscribers(f'{self.namespace}/rgb/image'),
                self.node.count_subscribers(f'{self.namespace}/thermal/image'))

    # -------------------------------------------------------------- run
    def start_node(self, init_box):
        params = {'model_config': self.args.model_config, 'device': 'cpu', 'torch_threads': self.args.torch_threads,
                  'initial_box': init_box, 'input.reliability': 'reliable', 'status_period': 0.5,
                  'diagnostic_updater.period': 1.0}
        if self.args.checkpoint:
            params['checkpoint'] = self.args.checkpoint
        self.proc = start_tracker_node('ckd_tracker', self.namespace, params)
        self.log_lines = self.proc.drain().lines

    def run(self) -> dict:
        from ckd_ros.core.report import machine_info
        from ckd_ros.ros.conversions import array_to_image_msg, ns_to_stamp

        args = self.args
        width, height = args.size
        bank, init_box = frame_bank(16, width, height)
        messages = [(array_to_image_msg(rgb, 'rgb8'), array_to_image_msg(thermal, 'mono16')) for rgb, thermal in bank]
        self.start_node(init_box)
        started = time.monotonic()
        if not (self.change_state('configure') and self.change_state('activate')):
            self.spin(0.5)
            raise RuntimeError('the node did not start; its log:\n' + '\n'.join(self.log_lines[-20:]))
        self.wait_for(lambda: self.rgb_pub.get_subscription_count() and self.thermal_pub.get_subscription_count(),
                      60, 'the node to subscribe')
        samples, active_checks, cycles = [], [], 0
        made = dropped = 0      # the node's pair counters restart at each activation: summed per phase
        period = 1.0 / args.rate
        next_send = time.monotonic()
        sample_every = max(1, args.pairs // 200)
        while self.sent < args.pairs:
            if self.proc.poll() is not None:
                raise RuntimeError(f'the node exited with {self.proc.returncode}:\n' + '\n'.join(self.log_lines[-30:]))
            rgb, thermal = messages[self.sent % len(messages)]
            stamp = ns_to_stamp(self.node.get_clock().now().nanoseconds)
            rgb.header.stamp, thermal.header.stamp = stamp, stamp
            self.rgb_pub.publish(rgb)
            self.thermal_pub.publish(thermal)
            self.sent += 1
            next_send += period
            self.spin(max(0.0, next_send - time.monotonic()))
            if self.sent % sample_every == 0:
                samples.append({'pairs': self.sent, 't': time.monotonic() - started, 'phase': cycles,
                                **process_sample(self.proc.pid)})
            if args.cycle_every and self.sent % args.cycle_every == 0 and self.sent < args.pairs:
                cycles += 1
                full = args.cleanup_every and cycles % args.cleanup_every == 0
                made, dropped = self._phase_counts(made, dropped)
                assert self.change_state('deactivate'), 'deactivate failed'
                self.wait_for(lambda: self.input_subscriptions() == (0, 0), 20, 'the subscriptions to go')
                if full:
                    assert self.change_state('cleanup') and self.change_state('configure'), 'cleanup/configure failed'
                assert self.change_state('activate'), 'activate failed'
                self.wait_for(lambda: self.input_subscriptions() == (1, 1), 20, 'one subscription per input')
                self.spin(0.3)
                active_checks.append({'cycle': cycles, 'full': bool(full), 'pairs': self.sent,
                                      **process_sample(self.proc.pid)})
                next_send = time.monotonic()
        self.spin(1.0)     # the last outputs
        made, dropped = self._phase_counts(made, dropped)
        final = process_sample(self.proc.pid)
        duration = time.monotonic() - started
        self.change_state('shutdown')
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.summarize(samples, active_checks, final, (made, dropped), duration, machine_info())

    def _phase_counts(self, made: int, dropped: int) -> tuple[int, int]:
        """Add this activation's pairs made/dropped, from a status published after its last pair."""
        count = len(self.statuses)
        self.wait_for(lambda: len(self.statuses) >= count + 2, 10, 'a fresh status')
        return made + int(self.statuses[-1].pairs_made), dropped + int(self.statuses[-1].pairs_dropped)

    def summarize(self, samples, active_checks, final, counts, duration, machine) -> dict:
        args = self.args
        warm = [s for s in samples if s['pairs'] >= args.pairs * 0.1] or samples
        rss = [s['rss_mib'] for s in warm]
        slope = least_squares_slope([s['pairs'] for s in warm], rss) * 10_000
        latencies = [lat for _, lat, _ in self.targets]
        quarter = max(1, len(latencies) // 4)
        first_q = statistics.median(latencies[:quarter]) if latencies else float('nan')
        last_q = statistics.median(latencies[-quarter:]) if latencies else float('nan')
        # Threads while streaming, per phase between lifecycle cycles: a leak raises the count phase by phase.
        phase_threads = {}
        for sample in samples:
            phase_threads[sample['phase']] = max(phase_threads.get(sample['phase'], 0), sample['threads'])
        thread_counts = sorted(set(phase_threads.values()))
        fd_counts = [c['fds'] for c in active_checks]
        # RSS right after each re-activation: a leak per lifecycle cycle shows as a trend over cycles.
        # (The first third of the cycles is warm-up: allocator pools and caches still fill.)
        cycle_rss = [c['rss_mib'] for c in active_checks]
        settled = cycle_rss[len(cycle_rss) // 3:]
        cycle_slope = least_squares_slope(list(range(len(settled))), settled) if len(settled) > 2 else 0.0
        result = {
            'machine': machine, 'rmw': os.environ.get('RMW_IMPLEMENTATION', ''),
            'config': {'pairs': args.pairs, 'rate_hz': args.rate, 'size': list(args.size),
                       'model_config': args.model_config, 'cycle_every': args.cycle_every,
                       'cleanup_every': args.cleanup_every, 'torch_threads': args.torch_threads},
            'duration_s': duration, 'pairs_sent': self.sent,
            'pairs_made': counts[0], 'pairs_dropped': counts[1],
            'targets_received': len(self.targets), 'lifecycle_cycles': len(active_checks),
            'rss_mib': {'after_warmup': rss[0] if rss else None, 'end': final['rss_mib'],
                        'max': max(rss) if rss else None,
                        'growth_after_warmup': (rss[-1] - rss[0]) if rss else 0.0, 'slope_per_10k_pairs': slope,
                        'slope_checked': args.pairs >= SLOPE_MIN_PAIRS,
                        'after_each_cycle': cycle_rss, 'slope_per_cycle': cycle_slope},
            'threads_streaming_per_phase': phase_threads, 'threads_active': thread_counts,
            'fds_active': sorted(set(fd_counts)),
            'latency_s': {'first_quarter_p50': first_q, 'last_quarter_p50': last_q,
                          'p95': float(np.percentile(latencies, 95)) if latencies else None},
            'samples': samples, 'active_checks': active_checks,
        }
        checks = {
            'rss_growth': result['rss_mib']['growth_after_warmup'] < args.max_rss_growth_mib,
            'rss_slope': slope < args.max_rss_slope_mib or args.pairs < SLOPE_MIN_PAIRS,
            'rss_per_cycle': cycle_slope < args.max_rss_per_cycle_mib,
            'threads_stable': len(thread_counts) <= 1,
            'fds_stable': len(set(fd_counts)) <= 1 or max(fd_counts) - min(fd_counts) <= 2,
            'latency_no_drift': bool(latencies) and last_q <= args.max_latency_drift * first_q + 0.005,
            'outputs_finite': all(ok for _, _, ok in self.targets),
            'targets_received': len(self.targets) > 0,
            'no_traceback': not any('Traceback' in line for line in self.log_lines),
            'node_exit_clean': self.proc.returncode == 0,
        }
        result['checks'] = checks
        result['passed'] = all(checks.values())
        return result

    def close(self):
        if self.proc is not None:
            self.proc.stop(timeout=10)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy
        rclpy.try_shutdown(context=self.context)


def print_summary(result: dict) -> None:
    m = result['machine']
    print(f"machine: {m.get('cpu_model', '?')} ({m.get('cpu_count')} CPUs), {m.get('platform')}, "
          f"python {m.get('python')}, rmw {result['rmw'] or 'default'}")
    c = result['config']
    print(f"run: {result['pairs_sent']} pairs of {c['size'][0]}x{c['size'][1]} at {c['rate_hz']:g} Hz, model "
          f"{Path(c['model_config']).name}, {result['lifecycle_cycles']} lifecycle cycles, "
          f"{result['duration_s']:.0f} s")
    print(f"node: {result['pairs_made']} pairs made, {result['pairs_dropped']} dropped (newest wins), "
          f"{result['targets_received']} targets received")
    r = result['rss_mib']
    print(f"RSS: {r['after_warmup']:.1f} MiB after warm-up -> {r['end']:.1f} MiB at the end (max {r['max']:.1f}); "
          f"growth {r['growth_after_warmup']:+.1f} MiB, trend {r['slope_per_10k_pairs']:+.2f} MiB per 10k pairs, "
          f"{r['slope_per_cycle']:+.2f} MiB per lifecycle cycle")
    print(f"threads while streaming, per phase: {sorted(result['threads_streaming_per_phase'].items())}; "
          f"fds after each cycle: {result['fds_active']}")
    lat = result['latency_s']
    print(f"latency p50: first quarter {1000 * lat['first_quarter_p50']:.1f} ms, last quarter "
          f"{1000 * lat['last_quarter_p50']:.1f} ms; p95 {1000 * (lat['p95'] or 0):.1f} ms")
    for name, ok in result['checks'].items():
        note = (f' (not checked: fewer than {SLOPE_MIN_PAIRS} pairs)'
                if name == 'rss_slope' and result['config']['pairs'] < SLOPE_MIN_PAIRS else '')
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{note}")
    print('PASSED' if result['passed'] else 'FAILED')




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pairs', type=cli_args.integer(1), default=20000)
    parser.add_argument('--rate', type=cli_args.number(0.0), default=100.0, help='pairs per second sent')
    parser.add_argument('--size', type=cli_args.size(16), default=(64, 48), help='WIDTHxHEIGHT of both images')
    parser.add_argument('--model-config', type=cli_args.config_name, default='ckd_tiny')
    parser.add_argument('--checkpoint', default='', help="node parameter 'checkpoint' ('' = shipped weights)")
    parser.add_argument('--torch-threads', type=cli_args.integer(1), default=1)
    parser.add_argument('--cycle-every', type=cli_args.integer(0), default=2000,
                        help='deactivate + activate every N pairs (0: never)')
    parser.add_argument('--cleanup-every', type=cli_args.integer(0), default=3,
                        help='every Nth cycle is cleanup + configure too (0: never)')
    parser.add_argument('--namespace', default='/soak')
    parser.add_argument('--max-rss-growth-mib', type=float, default=30.0)
    parser.add_argument('--max-rss-slope-mib', type=float, default=5.0, help='MiB per 10k pairs')
    parser.add_argument('--max-rss-per-cycle-mib', type=float, default=0.5,
                        help='trend of the RSS after each lifecycle cycle')
    parser.add_argument('--max-latency-drift', type=float, default=2.0)
    parser.add_argument('--json', type=cli_args.output_file, help='write the result (with every sample) here')
    args = parser.parse_args(argv)
    soak = Soak(args)
    try:
        result = soak.run()
    except RuntimeError as exc:   # the node did not start, exited, or stopped answering: its log tail says why
        print(f'soak: error: {exc}', file=sys.stderr)
        return 2
    finally:
        soak.close()
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
