"""``make demo``: the CKD tracker lifecycle node on synthetic RGB-T bags, end to end over ROS 2.

``python -m ckd_ros.ros.demo [options]`` (after ``source scripts/env.sh``; ``make demo DEMO_ARGS=...``):

1. renders synthetic RGB-T sequences from seeds no training run uses (one scenario each, in turn:
   night + thermal crossover, glare + low thermal contrast, every failure mode) in the realistic world
   (``--world rgbt``: targets move along real held-out tracks of the RGBT benchmarks, over photographs,
   shaped like people, cars, drones and animals) and writes them as MCAP rosbags (``ckd_ros.core.bagio``);
2. starts the tracker node (``lib/ckd_ros/ckd_tracker_node``) in its own process, drives it to
   ``active`` through its lifecycle services (configure, then activate, as the launch file's event
   handlers do), replays each bag into it over DDS with ``ckd-bag play`` (lock-step by default: every
   pair is tracked; or at a real-time factor: the node drops what it cannot keep up with) and records
   its ``~/target`` and ``~/status``; then shuts it down through the lifecycle;
3. runs the same model without DDS on the same bags with one modality blanked (all-zero thermal =
   "RGB only", all-zero RGB = "thermal only"): what each camera alone carries;
4. runs OpenCV's classical trackers (``ckd_ros.core.baselines``; default CSRT on the fused image with
   psr threshold 0, KCF on RGB, MIL on thermal; ``--baselines``) on the same bags, as ``ckd-eval run
   --tracker`` processes alongside step 3 (output in ``baselines.log``): the peers CKD has to beat;
5. scores every run (PR / NPR / SR, generic protocol) overall and on the frames where one camera
   fails, says which tracker wins by SR and by PR, and writes everything below into
   ``<output-dir>/<YYYYmmdd-HHMMSS>/`` (``<output-dir>/latest`` points to the newest finished run; an
   existing run folder is never written into):

   ``metrics.md`` / ``metrics.json``  the table (also printed), configuration, timings
   ``precision.png`` ``success.png`` ``normalized_precision.png``  every run on one figure
   ``tracking.mp4`` (``.avi``/MJPG where OpenCV has no MPEG-4 writer)  RGB | thermal, node box + score,
                    ground truth in magenta; ``preview.png``: a night and a crossover frame of it
   ``performance.json``  node throughput, end-to-end and node latency percentiles, drops, CPU
   ``sequences.json``  seeds, scenarios, failure segments and what each scene is made of (real track,
                    target class, background photo, sensor effects); ``node.log``: the node's output
   ``bags/`` input bags, ``node_output/`` recorded node outputs, ``results/`` result files per run,
   ``reports/`` per-run reports (per-sequence tables and curves)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ckd_ros.core import bagio, baselines, cli_args, metrics, report, results
from ckd_ros.core.datasets import GroundTruth
from ckd_ros.core.synthetic import (CONDITIONS, RGB_FAILURES, THERMAL_FAILURES, WORLDS, SyntheticScene,
                                    rgb_failure, thermal_failure)
from ckd_ros.ros.node_command import ChildProcess, node_executable, start_tracker_node

# Seeds of the demo scenes. The shipped weights' recipe (ckd_train/configs/ckd_tiny_synthetic.yaml, then
# ckd_tiny_rgbt.yaml) trains on seeds [0, 64) and [1000, 1256) and validates on [500000, 500016), and
# ckd_train.evaluate holds out 900000..; the demo stays clear of all of them and
# also checks the checkpoint's recorded training seeds (see training_seed_ranges).
DEFAULT_FIRST_SEED = 700_000
SEED_STRIDE = 1_000          # scenario i searches seeds first_seed + i * SEED_STRIDE + k
SEED_SEARCH_LIMIT = 200      # seeds tried per scenario before giving up

RUNS = ('fused', 'rgb_only', 'thermal_only')
RUN_LABELS = {'fused': 'CKD fused (node over DDS)', 'rgb_only': 'CKD RGB only (thermal blanked)',
              'thermal_only': 'CKD thermal only (RGB blanked)'}
# OpenCV's classical trackers on the same bags (``--baselines``): the best setting of each on the demo
# sequences (README, "Demo"): CSRT on the fused image with psr threshold 0 (never reports the target lost),
# KCF on RGB (fused: within 0.1 SR), MIL on thermal
DEFAULT_BASELINES = 'csrt:fused:psr=0,kcf:rgb,mil:thermal'
BENCHMARK = 'generic'
STATE_LOST = bagio.STATE_LOST


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Scenes

@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    conditions: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]   # each group: at least one of these conditions must occur


SCENARIOS = (
    Scenario('night_crossover', 'night (RGB too dark to see the target), later a thermal crossover '
             '(target at the background temperature)',
             tuple(c for c in CONDITIONS if c not in ('rgb_glare', 'thermal_low_contrast')),
             (('rgb_dark',), ('thermal_crossover',))),
    Scenario('glare_low_contrast', 'sun glare washing out the RGB image, later a thermal image without contrast',
             tuple(c for c in CONDITIONS if c not in ('rgb_dark', 'thermal_crossover')),
             (('rgb_glare',), ('thermal_low_contrast',))),
    Scenario('mixed', 'every failure mode, look-alike distractors in each modality, occluders',
             CONDITIONS, (RGB_FAILURES, THERMAL_FAILURES)),
)


@dataclass
class DemoSequence:
    name: str
    seed: int
    scenario: Scenario
    scene: SyntheticScene

    def segments(self) -> list[dict]:
        """The failure segments as [condition, first frame, last frame] runs of the scene's flags."""
        out = []
        for condition in RGB_FAILURES + THERMAL_FAILURES + ('occlusion',):
            flags = self.scene.flags[condition]
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
            out += [{'condition': condition, 'first': int(a), 'last': int(b) - 1}
                    for a, b in zip(edges[::2], edges[1::2])]
        return sorted(out, key=lambda s: s['first'])


class SceneAsSequence:
    """A synthetic scene with the interface of ``ckd_ros.core.datasets.Sequence`` that
    ``bagio.write_sequence_bag`` reads (no per-modality ground truth)."""

    ground_truth_rgb = None
    ground_truth_thermal = None

    def __init__(self, scene: SyntheticScene, name: str):
        self.scene, self.name = scene, name

    def __len__(self) -> int:
        return len(self.scene)

    @property
    def ground_truth(self) -> np.ndarray:
        return self.scene.ground_truth

    def rgb(self, index: int) -> np.ndarray:
        return self.scene.rgb(index)

    def thermal(self, index: int) -> np.ndarray:
        return self.scene.thermal(index)


def _min_flagged_frames(length: int) -> int:
    return max(3, length // 20)


def plan_sequences(count: int, frames: int, size: tuple[int, int], first_seed: int,
                   excluded_seeds: list[tuple[int, int]] = (), world: str = 'rgbt') -> list[DemoSequence]:
    """``count`` scenes, scenario ``i % len(SCENARIOS)``: for each, the first seed from
    ``first_seed + i * SEED_STRIDE`` whose scene has every failure its scenario requires (at least
    :func:`_min_flagged_frames` frames each) and that is outside ``excluded_seeds`` ([start, stop) ranges).
    In the realistic world the target moves along real tracks of the held-out ('test') pool, which neither
    training nor the choice of tracker options uses."""
    planned = []
    need = _min_flagged_frames(frames)
    for index in range(count):
        scenario = SCENARIOS[index % len(SCENARIOS)]
        start = first_seed + index * SEED_STRIDE
        for seed in range(start, start + SEED_SEARCH_LIMIT):
            if any(lo <= seed < hi for lo, hi in excluded_seeds):
                continue
            scene = SyntheticScene(seed, frames, size, conditions=scenario.conditions, world=world,
                                   motion_split='test')
            if all(sum(int(scene.flags[c].sum()) for c in group) >= need for group in scenario.required):
                planned.append(DemoSequence(f'{index:02d}_{scenario.name}', seed, scenario, scene))
                break
        else:
            raise DemoError(f'no seed in {start}..{start + SEED_SEARCH_LIMIT - 1} outside the training seeds '
                            f"gives a {frames}-frame '{scenario.name}' scene with its failure segments (each needs "
                            f'>= {need} frames); use more frames per sequence (--frames 60 or more) or another '
                            '--first-seed')
    return planned


def training_seed_ranges(checkpoint_path: Path | None) -> list[tuple[int, int]]:
    """The synthetic seed ranges ([start, stop)) a checkpoint written by ckd_train says it trained and
    validated on; empty when it records none (official or stripped files)."""
    if checkpoint_path is None:
        return []
    from ckd_ros.core.checkpoint import read_checkpoint
    raw = read_checkpoint(checkpoint_path)
    settings = raw.get('settings') if isinstance(raw, dict) else None
    synthetic = settings.get('synthetic') if isinstance(settings, dict) else None
    if not isinstance(synthetic, dict):
        return []
    ranges = []
    for key in ('SEEDS', 'VAL_SEEDS'):
        value = synthetic.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            ranges.append((int(value[0]), int(value[1])))
    return ranges


# --------------------------------------------------------------------------------------------
# Output folder

def make_run_dir(output_root: Path, now: float | None = None) -> Path:
    """A new ``<output_root>/<YYYYmmdd-HHMMSS>[-N]`` (never an existing one).  ``<output_root>/latest``
    is moved to it by :func:`link_latest` once the run has finished, so that a run that fails or is
    interrupted leaves ``latest`` on the last complete one."""
    output_root = Path(output_root)
    if output_root.exists() and not output_root.is_dir():
        raise DemoError(f'--output-dir {output_root} exists and is not a folder')
    try:
        output_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:   # a parent is a file, no permission, read-only file system
        raise DemoError(f'cannot create --output-dir {output_root}: {exc.strerror or exc}') from None
    latest = output_root / 'latest'
    if latest.exists() and not latest.is_symlink():   # checked now, not after the run
        raise DemoError(f'{latest} exists and is not a link; move it away (the demo keeps `latest` pointing to '
                        'the newest run)')
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(now))
    for suffix in range(1000):
        run_dir = output_root / (stamp if suffix == 0 else f'{stamp}-{suffix}')
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise DemoError(f'could not create a new run folder under {output_root}')
    return run_dir


def link_latest(run_dir: Path) -> Path:
    """Point ``<output_root>/latest`` at ``run_dir`` (replaced atomically)."""
    output_root = run_dir.parent
    latest = output_root / 'latest'
    if latest.exists() and not latest.is_symlink():
        raise DemoError(f'{latest} exists and is not a link; move it away (the demo keeps `latest` pointing to '
                        'the newest run)')
    tmp = output_root / f'.latest.{os.getpid()}'
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
    return latest


# --------------------------------------------------------------------------------------------
# The node process and its lifecycle

class TrackerNodeProcess:
    """The tracker node in a child process (``ckd_ros.ros.node_command.start_tracker_node``, output to
    ``log_path``), driven through its lifecycle services from ``client_node`` (a node of this process,
    spun by ``executor``)."""

    def __init__(self, namespace: str, name: str, params: dict, remaps: dict, log_path: Path, client_node, executor):
        self.namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
        self.name = name
        self.fqn = f'{self.namespace}/{name}'
        self.params, self.remaps = params, remaps
        self.log_path = log_path
        self.client_node, self.executor = client_node, executor
        try:
            node_executable()
        except FileNotFoundError as error:
            raise DemoError(f'{error} (make demo builds and sources it)') from None
        self.proc: ChildProcess | None = None
        self._cpu_start = None

    def start(self) -> None:
        self.proc = start_tracker_node(self.name, self.namespace, self.params, self.remaps, log_path=self.log_path)

    def log_tail(self, lines: int = 25) -> str:
        if self.proc is None:
            return ''
        return '\n'.join('    ' + line for line in self.proc.tail(lines).splitlines())

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(f'the tracker node exited (code {self.proc.returncode}); its last output '
                            f'({self.log_path}):\n{self.log_tail()}')

    def _wait_future(self, future, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not future.done():
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f'{what}: no answer within {timeout:.0f} s; node output ({self.log_path}):\n'
                                f'{self.log_tail()}')
            self.executor.spin_once(timeout_sec=0.05)
        return future.result()

    def _call(self, srv_type, service: str, request, timeout: float):
        client = self.client_node.create_client(srv_type, service)
        try:
            deadline = time.monotonic() + timeout
            while not client.service_is_ready():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(f'the service {service} did not appear within {timeout:.0f} s; node output '
                                    f'({self.log_path}):\n{self.log_tail()}')
                self.executor.spin_once(timeout_sec=0.05)
            return self._wait_future(client.call_async(request), timeout, service)
        finally:
            self.client_node.destroy_client(client)

    def state(self, timeout: float = 30.0) -> str:
        from lifecycle_msgs.srv import GetState
        return self._call(GetState, f'{self.fqn}/get_state', GetState.Request(), timeout).current_state.label

    def transition(self, transition_id: int, label: str, expect: str, timeout: float = 180.0) -> None:
        """One lifecycle transition through ``<node>/change_state``, checked with ``get_state``."""
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request()
        request.transition.id = transition_id
        response = self._call(ChangeState, f'{self.fqn}/change_state', request, timeout)
        state = self.state() if self.proc.poll() is None else 'exited'
        if not response.success or state != expect:
            raise DemoError(f"lifecycle transition '{label}' of {self.fqn} failed (state now: {state}); node output "
                            f'({self.log_path}):\n{self.log_tail()}')

    def bring_up(self) -> None:
        """configure, then activate (the launch file's event handlers, done here through the services)."""
        from lifecycle_msgs.msg import Transition
        self.transition(Transition.TRANSITION_CONFIGURE, 'configure', 'inactive')
        self.transition(Transition.TRANSITION_ACTIVATE, 'activate', 'active')
        self._cpu_start = (self.proc.cpu_seconds(), time.monotonic())

    def reset_target(self) -> None:
        from std_srvs.srv import Trigger
        response = self._call(Trigger, f'{self.fqn}/reset', Trigger.Request(), 30.0)
        if not response.success:
            raise DemoError(f'{self.fqn}/reset failed: {response.message}')

    def cpu_percent_of_one_core(self) -> float | None:
        """CPU use of the node process since it became active (percent of one core)."""
        if self._cpu_start is None or self.proc is None or self.proc.poll() is not None:
            return None
        cpu = self.proc.cpu_seconds()
        if cpu is None or self._cpu_start[0] is None:
            return None
        wall = time.monotonic() - self._cpu_start[1]
        return 100.0 * (cpu - self._cpu_start[0]) / wall if wall > 0 else None

    def shut_down(self, timeout: float = 15.0) -> int | None:
        """deactivate + shutdown through the lifecycle; the process exits once finalized. Escalates
        to SIGTERM, then SIGKILL, if it does not. Returns the exit code."""
        from lifecycle_msgs.msg import Transition
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                state = self.state(timeout=10.0)
                if state == 'active':
                    self.transition(Transition.TRANSITION_DEACTIVATE, 'deactivate', 'inactive', timeout)
                    state = 'inactive'
                shutdown = {'inactive': Transition.TRANSITION_INACTIVE_SHUTDOWN,
                            'unconfigured': Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}.get(state)
                if shutdown is not None:
                    from lifecycle_msgs.srv import ChangeState
                    request = ChangeState.Request()
                    request.transition.id = shutdown
                    self._call(ChangeState, f'{self.fqn}/change_state', request, timeout)
                self.proc.wait(timeout=timeout)
        except Exception:   # best effort (e.g. Ctrl-C shut the context down): SIGTERM/SIGKILL below
            pass
        finally:
            self.proc.stop(timeout=10)
        return self.proc.returncode


class RosSession:
    """This process's ROS side: a context of its own, a client node and an executor. Created before the
    bags are written, so that DDS discovery of whatever else runs on the domain overlaps with that work."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('ckd_demo', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.created = time.monotonic()

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def check_graph_is_free(session: RosSession, fqn: str, topics: list[str], discovery_s: float = 3.0) -> None:
    """Refuse to start when this ROS domain already has a node called ``fqn`` or publishers on the
    replay topics (another demo or a camera would mix its frames into ours). Looks until
    ``discovery_s`` after the session was created (discovery of other processes takes ~1 s here,
    more on a loaded machine)."""
    domain = os.environ.get('ROS_DOMAIN_ID', '0')
    while True:
        names = {(ns.rstrip('/') + '/' + name) for name, ns in session.node.get_node_names_and_namespaces()}
        if fqn in names:
            raise DemoError(f'a node {fqn} is already running on ROS_DOMAIN_ID={domain} (another demo?); stop it '
                            'or run with another ROS_DOMAIN_ID (e.g. `ROS_DOMAIN_ID=17 make demo`)')
        for topic in topics:
            publishers = session.node.get_publishers_info_by_topic(topic)
            if publishers:
                owners = ', '.join(sorted({f'{p.node_namespace.rstrip("/")}/{p.node_name}' for p in publishers}))
                raise DemoError(f'{topic} already has publishers on ROS_DOMAIN_ID={domain} (nodes: {owners}); '
                                'their frames would mix with the replay: stop them or run with another '
                                'ROS_DOMAIN_ID (e.g. `ROS_DOMAIN_ID=17 make demo`)')
        if time.monotonic() >= session.created + discovery_s:
            return
        session.executor.spin_once(timeout_sec=0.1)


# --------------------------------------------------------------------------------------------
# Tracking runs

@dataclass
class SequenceTrack:
    """One run's per-frame output on one sequence."""

    boxes: np.ndarray              # (N, 4), frame 0 = the ground-truth initialisation
    scores: np.ndarray             # (N,) NaN where there is no output of its own
    states: np.ndarray             # (N,) TrackedTarget.STATE_*; -1 where there is no output of its own
    answered: np.ndarray           # (N,) bool: the frame got an output of its own
    times: np.ndarray              # (N,) seconds per frame (node: its latency; offline: tracker time)


@dataclass
class NodeReplay:
    """What replaying one bag into the node gave."""

    track: SequenceTrack
    stamps_ns: np.ndarray          # header stamps of the published pairs
    output_log_ns: np.ndarray      # receive times of the answered frames' outputs
    end_to_end_s: np.ndarray       # receive time - publication stamp, answered frames
    node_latency_s: np.ndarray     # the node's own latency field, answered frames
    stats: dict


def node_track_from_bag(out_bag: Path, target_topic: str, gt_boxes: np.ndarray, stats: dict) -> NodeReplay:
    """Per-frame boxes of the node from the output bag ``ckd-bag play`` recorded: outputs matched to the
    replayed pairs by header stamp; a dropped pair keeps the last published box (as a consumer sees it)."""
    stamps, replayed_gt = bagio.read_ground_truth(out_bag)
    if len(stamps) != len(gt_boxes):
        raise DemoError(f'{out_bag}: {len(stamps)} pairs were replayed but the bag has {len(gt_boxes)}')
    try:
        targets = bagio.read_targets(out_bag, target_topic)
    except bagio.BagReadError as exc:
        raise DemoError(f'the node published nothing on {target_topic} ({exc})') from None
    boxes, answered = bagio.boxes_at_stamps(targets, stamps, init_box=gt_boxes[0])
    boxes[0] = gt_boxes[0]    # frame 0 is the initialisation (set through ~/set_target)
    index = {int(s): i for i, s in enumerate(targets.stamps_ns)}
    rows = [index.get(int(s)) for s in stamps]
    scores = np.array([targets.scores[i] if i is not None else np.nan for i in rows])
    states = np.array([targets.states[i] if i is not None else -1 for i in rows])
    times = np.array([targets.latencies[i] if i is not None else np.nan for i in rows])
    answered_rows = [i for i in rows if i is not None]
    log_ns = targets.log_times_ns[answered_rows]
    return NodeReplay(SequenceTrack(boxes, scores, states, answered, times), stamps, log_ns,
                      (log_ns - targets.stamps_ns[answered_rows]) / 1e9, targets.latencies[answered_rows], stats)


def replay_through_node(session: RosSession, sequences: list[DemoSequence], bags: dict[str, Path], run_dir: Path,
                        args, gt: dict[str, np.ndarray],
                        say: Callable[[str], None]) -> tuple[dict[str, NodeReplay], dict]:
    """Start the node, bring it up, replay every bag (target set on frame 0), shut it down."""
    from ckd_ros.ros import bag_play

    topics = bagio.DEFAULT_TOPICS
    lockstep = args.rate is None
    params = {'model_config': args.config, 'checkpoint': args.checkpoint, 'device': args.device,
              'torch_threads': args.threads, 'autostart': False, 'publish_detections': False,
              # lock-step waits for each answer: a best-effort subscription that lost a fragment of a
              # large image would stall it; real-time replay keeps the robot setting (best effort)
              'input.reliability': 'reliable' if lockstep else 'best_effort'}
    node = TrackerNodeProcess(args.namespace, 'ckd_tracker', params,
                              {'rgb/image': topics.rgb, 'thermal/image': topics.thermal},
                              run_dir / 'node.log', session.node, session.executor)
    replays: dict[str, NodeReplay] = {}
    info = {}
    try:
        check_graph_is_free(session, node.fqn, [topics.rgb, topics.thermal])
        say(f'starting the tracker node {node.fqn} (log: {node.log_path})')
        tic = time.monotonic()
        node.start()
        node.bring_up()
        info['bring_up_s'] = time.monotonic() - tic
        say(f'node active after {info["bring_up_s"]:.1f} s (configure: model load + warm-up; activate)')
        mode = 'lockstep' if lockstep else 'realtime'
        for seq in sequences:
            node.reset_target()
            out_bag = run_dir / 'node_output' / seq.name
            tic = time.monotonic()
            try:
                stats = bag_play.play(bags[seq.name], out_bag, node=node.fqn, mode=mode,
                                      rate=args.rate or 1.0, timeout=args.timeout, context=session.context,
                                      log=lambda text: say(f'  {text}'))
            except bag_play.PlaybackError as exc:
                node.check_alive()
                raise DemoError(f'replaying {seq.name}: {exc}; node output ({node.log_path}):\n'
                                f'{node.log_tail()}') from None
            node.check_alive()
            replay = node_track_from_bag(out_bag, f'{node.fqn}/target', gt[seq.name], stats)
            replays[seq.name] = replay
            took = time.monotonic() - tic
            say(f'  {seq.name}: {stats["sent"]} pairs sent, {int(replay.track.answered.sum())} tracked by the node, '
                f'{took:.1f} s ({stats["sent"] / took:.1f} pairs/s)')
        info['node_cpu_percent_of_one_core'] = node.cpu_percent_of_one_core()
    finally:
        code = node.shut_down()
        info['node_exit_code'] = code
    if code not in (0, None):
        say(f'note: the node exited with code {code} (see {node.log_path})')
    return replays, info


def blank_modality(source, blanked: str):
    """The same frame source with the ``'rgb'`` or ``'thermal'`` frames replaced by zeros."""
    def frames():
        for rgb, thermal in source.frames():
            if blanked == 'rgb':
                rgb = np.zeros_like(rgb)
            else:
                thermal = np.zeros_like(thermal)
            yield rgb, thermal
    return dataclasses.replace(source, frames=frames)


def run_ablations(sequences: list[DemoSequence], bags: dict[str, Path], run_dir: Path, tracker,
                  show_progress: bool) -> dict[str, dict[str, SequenceTrack]]:
    """RGB-only and thermal-only runs of the ROS-free tracker over the same bags (``ckd-eval run``'s
    machinery); result files under ``results/<run>/``."""
    from ckd_ros.core import runner
    from ckd_ros.core.image import ThermalGainControl
    out = {}
    for run, blanked in (('rgb_only', 'thermal'), ('thermal_only', 'rgb')):
        sources = [blank_modality(runner.bag_source(bags[s.name], bagio.DEFAULT_TOPICS, ThermalGainControl(), None),
                                  blanked) for s in sequences]
        result_dir = run_dir / 'results' / run
        summary = runner.run_sources(sources, lambda: tracker, result_dir, show_progress=show_progress)
        if summary.failed:
            raise DemoError(f'{run}: tracking failed on {summary.failed}')
        tracks = {}
        for seq in sequences:
            times = summary.times[seq.name]
            n = len(times)
            # per-frame boxes for scoring come from the result files (read_result_files)
            tracks[seq.name] = SequenceTrack(np.full((n, 4), np.nan), np.full(n, np.nan), np.full(n, -1),
                                             np.ones(n, bool), times)
        out[run] = tracks
    return out


def baseline_run_name(options: baselines.BaselineOptions) -> str:
    """The run's folder name under ``results/`` and ``reports/``: ``opencv_csrt_fused_psr0``."""
    psr = '' if options.psr_threshold is None else f'_psr{options.psr_threshold:g}'
    return f'opencv_{options.tracker}_{options.input}{psr}'


def parse_baselines(text: str) -> list[baselines.BaselineOptions]:
    """``--baselines``: comma-separated ``tracker[:input[:psr=<value>]]``, or ``none``."""
    if text.strip().lower() in ('none', ''):
        return []
    try:
        chosen = [baselines.parse_baseline(part) for part in text.split(',')]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    names = [baseline_run_name(o) for o in chosen]
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f'a baseline is named twice in {text!r}')
    return chosen


def check_baselines(chosen: list[baselines.BaselineOptions]) -> None:
    """Refuse (before any work) a baseline the installed OpenCV lacks, saying what to install."""
    for options in chosen:
        try:
            baselines.check_available(options.tracker)
        except baselines.BaselineUnavailable as error:
            raise DemoError(f'{error}. Or leave the OpenCV baselines out: --baselines none (or e.g. --baselines '
                            'mil:fused: MIL is in the plain OpenCV build too)') from None


def usable_cores() -> int:
    from ckd_ros.core.cpu_info import read_cores
    return read_cores().usable


def baseline_command(options: baselines.BaselineOptions, bags_dir: Path, result_dir: Path, threads: int) -> list[str]:
    """``ckd-eval run --tracker ...`` over the demo's bags, as ``python -m ckd_ros.cli.eval``."""
    command = [sys.executable, '-m', 'ckd_ros.cli.eval', 'run', '--bags', str(bags_dir), '--results',
               str(result_dir), '--tracker', options.tracker, '--tracker-input', options.input,
               '--threads', str(threads), '--quiet', '--no-report']
    if options.psr_threshold is not None:
        command += ['--csrt-psr-threshold', repr(options.psr_threshold)]
    return command


class BaselineRuns:
    """OpenCV's trackers over the demo's bags: ``ckd-eval run --tracker ...`` child processes, one after
    another, from a thread of this process (started with :meth:`start`, so they can run while this
    process runs the ablations: each process measures its own frame times, and no GIL is shared).
    Their output goes to ``baselines.log``; result files to ``results/<run>/``."""

    def __init__(self, chosen: list[baselines.BaselineOptions], run_dir: Path, threads: int):
        self.chosen, self.run_dir, self.threads = chosen, run_dir, threads
        self.log_path = run_dir / 'baselines.log'
        self.seconds: float | None = None
        self.failure: str | None = None
        self._proc: subprocess.Popen | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run_all, name='demo-baselines', daemon=True)

    def start(self) -> 'BaselineRuns':
        self._thread.start()
        return self

    def _run_all(self) -> None:
        tic = time.monotonic()
        try:
            with open(self.log_path, 'w', encoding='utf-8') as log:
                for options in self.chosen:
                    if self._cancelled.is_set():
                        return
                    command = baseline_command(options, self.run_dir / 'bags',
                                               self.run_dir / 'results' / baseline_run_name(options), self.threads)
                    log.write('$ ' + ' '.join(command) + '\n')
                    log.flush()
                    self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED='1'))
                    code = self._proc.wait()
                    if code != 0 and not self._cancelled.is_set():
                        self.failure = f'{options.label}: ckd-eval run exited with code {code}'
                        return
        except OSError as error:
            self.failure = f'could not run the baselines: {error}'
        finally:
            self.seconds = time.monotonic() - tic

    def wait(self, sequences: list[DemoSequence]) -> dict[str, dict[str, SequenceTrack]]:
        """Run them (if not started yet), wait, and read their frame times; DemoError on a failure."""
        if self._thread.ident is None:
            self.start()
        self._thread.join()
        if self.failure:
            try:
                tail = '\n'.join('    ' + line for line in self.log_path.read_text(errors='replace').splitlines()[-20:])
            except OSError:
                tail = ''
            raise DemoError(f'OpenCV baseline {self.failure}; its output ({self.log_path}):\n{tail}')
        out = {}
        for options in self.chosen:
            run = baseline_run_name(options)
            times = results.load_times(self.run_dir / 'results' / run, [s.name for s in sequences])
            missing = [s.name for s in sequences if s.name not in times]
            if missing:
                raise DemoError(f'OpenCV baseline {options.label}: no results for {", ".join(missing)} (see '
                                f'{self.log_path})')
            out[run] = {}
            for seq in sequences:
                n = len(times[seq.name])
                # per-frame boxes for scoring come from the result files (read_result_files)
                out[run][seq.name] = SequenceTrack(np.full((n, 4), np.nan), np.full(n, np.nan), np.full(n, -1),
                                                   np.ones(n, bool), times[seq.name])
        return out

    def cancel(self) -> None:
        """Stop the runs (an error or Ctrl-C elsewhere in the demo); a no-op once they have finished."""
        self._cancelled.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------------------------
# Scoring

def winners(scores: dict[str, metrics.BenchmarkScore], labels: dict[str, str],
            baseline_runs: list[str]) -> tuple[dict[str, list[str]], str]:
    """The run(s) with the highest SR and PR, and one sentence naming them, each against the best run of
    the other side: an OpenCV winner against CKD's fused node run, a CKD winner against the best OpenCV
    baseline."""
    best: dict[str, list[str]] = {}
    parts = []
    for metric in ('SR', 'PR'):
        values = {run: score.metrics[metric] for run, score in scores.items()}
        top = max(values.values())
        best[metric] = [run for run, value in values.items() if value == top]
        text = f'by {metric}: {" and ".join(labels[run] for run in best[metric])} with {100 * top:.1f}'
        if baseline_runs:
            if any(run in baseline_runs for run in best[metric]):
                text += f', {labels["fused"]} {100 * values["fused"]:.1f}'
            else:
                other = max(baseline_runs, key=lambda run: values[run])
                text += f', the best baseline, {labels[other]}, {100 * values[other]:.1f}'
        parts.append(text)
    sentence = 'Winner ' + '; '.join(parts)
    if not baseline_runs:
        sentence += ' (no OpenCV baseline run: --baselines none)'
    return best, sentence


def condition_masks(seq: DemoSequence) -> dict[str, np.ndarray]:
    """Frames (after frame 0) where the RGB image fails, where the thermal image fails, and neither."""
    rgb_fail = rgb_failure(seq.scene.flags).copy()
    thermal_fail = thermal_failure(seq.scene.flags).copy()
    rgb_fail[0] = thermal_fail[0] = False
    clear = ~(rgb_fail | thermal_fail)
    clear[0] = False
    return {'rgb_fails': rgb_fail, 'thermal_fails': thermal_fail, 'both_visible': clear}


def read_result_files(result_dir: Path, sequences: list[DemoSequence]) -> dict[str, np.ndarray]:
    """The boxes every run is scored on: its result files (integer boxes, as the toolkits read them)."""
    return {s.name: results.read_result_boxes(results.result_paths(result_dir, s.name)[0]) for s in sequences}


def condition_scores(boxes: dict[str, np.ndarray], sequences: list[DemoSequence],
                     gt: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per condition group: PR (centre error <= 20 px) and SR50 (IoU > 0.5) pooled over the frames."""
    out = {}
    for group in ('rgb_fails', 'thermal_fails', 'both_visible'):
        errors, overlaps = [], []
        for seq in sequences:
            mask = condition_masks(seq)[group]
            if mask.any():
                pred = boxes[seq.name][mask]
                errors.append(metrics.centre_error(pred, gt[seq.name][mask]))
                overlaps.append(metrics.overlap(pred, gt[seq.name][mask]))
        if errors:
            e, o = np.concatenate(errors), np.concatenate(overlaps)
            out[group] = {'frames': int(len(e)), 'PR': float(np.mean(e <= 20)), 'SR50': float(np.mean(o > 0.5))}
        else:
            out[group] = {'frames': 0, 'PR': float('nan'), 'SR50': float('nan')}
    return out


def metrics_table(scores: dict[str, metrics.BenchmarkScore], conditions: dict[str, dict], fps: dict[str, float],
                  markdown: bool, labels: dict[str, str] | None = None) -> str:
    labels = RUN_LABELS if labels is None else labels
    header = ['run', 'frames', 'PR', 'NPR', 'SR', 'PR rgb-fail', 'SR50 rgb-fail', 'PR th-fail', 'SR50 th-fail',
              'fps']
    def pct(v):
        return f'{100 * v:.1f}' if np.isfinite(v) else '-'
    rows = []
    for run, score in scores.items():
        c = conditions[run]
        rows.append([labels[run], str(score.num_frames), pct(score.metrics['PR']), pct(score.metrics['NPR']),
                     pct(score.metrics['SR']), pct(c['rgb_fails']['PR']), pct(c['rgb_fails']['SR50']),
                     pct(c['thermal_fails']['PR']), pct(c['thermal_fails']['SR50']),
                     f'{fps[run]:.1f}' if np.isfinite(fps[run]) else '-'])
    return report._render(header, rows, markdown)


# --------------------------------------------------------------------------------------------
# Video

def open_video_writer(path_stem: Path, fps: float, size: tuple[int, int]):
    """MPEG-4 (``.mp4``) where OpenCV can write it, else Motion-JPEG ``.avi``; (writer, path, codec)."""
    import cv2
    for fourcc, suffix in (('mp4v', '.mp4'), ('MJPG', '.avi')):
        path = path_stem.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path, fourcc
        writer.release()
        path.unlink(missing_ok=True)
    raise DemoError(f'OpenCV {cv2.__version__} can write neither MPEG-4 nor MJPG video here')


def frame_label(seq: DemoSequence, index: int) -> str:
    active = [c for c in RGB_FAILURES + THERMAL_FAILURES + ('occlusion',) if seq.scene.flags[c][index]]
    names = {'rgb_dark': 'NIGHT: RGB fails', 'rgb_glare': 'GLARE: RGB fails',
             'thermal_crossover': 'CROSSOVER: thermal fails', 'thermal_low_contrast': 'LOW CONTRAST: thermal fails',
             'occlusion': 'occluded'}
    text = f'{seq.name} #{index}'
    return text + ('  ' + ', '.join(names[c] for c in active) if active else '')


def write_video(sequences: list[DemoSequence], bags: dict[str, Path], tracks: dict[str, SequenceTrack],
                gt: dict[str, np.ndarray], path_stem: Path, fps: float) -> tuple[Path, str, int, dict]:
    """RGB | thermal side by side with the node's box and score (orange when LOST) and the ground
    truth (magenta), every sequence in turn. Returns (path, codec, frames written, preview frames)."""
    import cv2

    from ckd_ros.core.image import rgb_image_to_rgb8
    from ckd_ros.core.visualize import compose_debug_image
    writer = path = codec = None
    written = 0
    previews: dict[str, tuple[int, np.ndarray]] = {}
    wanted = preview_frames(sequences)
    try:
        for seq in sequences:
            track = tracks[seq.name]
            for pair in bagio.read_pairs(bags[seq.name]):
                i = pair.index
                rgb = rgb_image_to_rgb8(pair.rgb, pair.rgb_encoding)
                score = float(track.scores[i]) if i > 0 else 1.0
                lost = bool(track.states[i] == STATE_LOST)
                canvas = compose_debug_image(rgb, pair.thermal, track.boxes[i], score, lost,
                                             label=frame_label(seq, i), gt_box=gt[seq.name][i])
                if writer is None:
                    writer, path, codec = open_video_writer(path_stem, fps, (canvas.shape[1], canvas.shape[0]))
                writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
                written += 1
                for key, (name, index) in wanted.items():
                    if name == seq.name and index == i:
                        previews[key] = canvas
    finally:
        if writer is not None:
            writer.release()
    return path, codec, written, previews


def preview_frames(sequences: list[DemoSequence]) -> dict[str, tuple[str, int]]:
    """The middle frame of the first RGB-failure and of the first thermal-failure segment."""
    wanted = {}
    for seq in sequences:
        masks = condition_masks(seq)
        for key, group in (('rgb_fails', 'rgb_fails'), ('thermal_fails', 'thermal_fails')):
            if key in wanted or not masks[group].any():
                continue
            frames = np.flatnonzero(masks[group])
            run_end = frames[0] + int(np.argmax(np.diff(np.append(frames, -1)) != 1))
            wanted[key] = (seq.name, int((frames[0] + run_end) // 2))
    return wanted


def count_video_frames(path: Path) -> int:
    import cv2
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while capture.read()[0]:
            count += 1
    finally:
        capture.release()
    return count


# --------------------------------------------------------------------------------------------
# Main

def parse_rate(text: str) -> float | None:
    if text.strip().lower() in ('lockstep', 'lock-step'):
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = float('nan')
    if not (math.isfinite(rate) and rate > 0):
        raise argparse.ArgumentTypeError(f"rate must be 'lockstep' or a positive real-time factor (1.0 = the "
                                         f'recorded speed), got {text!r}')
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m ckd_ros.ros.demo', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--sequences', type=cli_args.integer(1), default=3,
                   help='number of synthetic sequences (scenarios in turn: night+crossover, glare+low contrast, mixed)')
    p.add_argument('--frames', type=cli_args.integer(20), default=300, help='frames per sequence')
    p.add_argument('--size', type=cli_args.size(64), default='320x256', help='image size WIDTHxHEIGHT')
    p.add_argument('--fps', type=float, default=30.0, help='frame rate of the bags (their stamps)')
    p.add_argument('--rate', type=parse_rate, default='lockstep',
                   help="'lockstep' (every pair waits for the node's answer) or a real-time factor (1.0 = the bag's "
                        'speed; the node drops pairs it cannot keep up with)')
    p.add_argument('--output-dir', type=Path, default=Path('demo_output'),
                   help='runs go to <output-dir>/<YYYYmmdd-HHMMSS>/ (a new folder each time), '
                        '<output-dir>/latest links '
                        'the newest finished run')
    p.add_argument('--config', default='ckd_tiny', help='model configuration (name or YAML path)')
    p.add_argument('--checkpoint', default='',
                   help="weights: '' = the configuration's shipped weights, a .pth.tar path, or 'recipe' (untrained)")
    p.add_argument('--device', default='auto', help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--threads', type=cli_args.integer(1), default=1,
                   help='torch CPU threads of the node and of the ablation runs, OpenCV threads of the baselines (1 '
                        'avoids oversubscribing 2 cores)')
    p.add_argument('--world', choices=WORLDS, default='rgbt',
                   help="synthetic world: 'rgbt' (real target motion, photo backgrounds, people / cars / drones; "
                        "default) or 'classic' (patterned shapes on noise)")
    p.add_argument('--first-seed', type=cli_args.integer(0), default=DEFAULT_FIRST_SEED,
                   help='first seed searched for scenario 0 (scenario i: + i * 1000)')
    p.add_argument('--baselines', type=parse_baselines, default=DEFAULT_BASELINES,
                   help="OpenCV trackers run on the same bags for comparison: comma-separated "
                        "tracker[:input[:psr=<v>]] (tracker csrt, kcf or mil; input rgb, thermal or fused = (RGB + "
                        "thermal) / 2; psr: CSRT's psr threshold), or 'none'")
    p.add_argument('--namespace', default='/ckd_demo', help='namespace of the tracker node')
    p.add_argument('--timeout', type=float, default=30.0, help='seconds to wait for the node (per frame in lock-step)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def resolve_checkpoint_file(config: str, checkpoint: str) -> Path | None:
    """The weights file the node will load, for the training-seed check (None: recipe weights)."""
    from ckd_ros.core.api import RECIPE_CHECKPOINTS, shipped_weights_path
    from ckd_ros.core.config import load_config
    if checkpoint in RECIPE_CHECKPOINTS:
        return None
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise DemoError(f'--checkpoint {checkpoint} does not exist')
        return path
    cfg = load_config(config)
    if cfg.is_official:
        raise DemoError(f'the official config {cfg.name!r} has no shipped weights: pass --checkpoint <file>')
    path = shipped_weights_path(cfg.name)
    if not path.is_file():
        raise DemoError(f'no shipped weights for {cfg.name!r} at {path}: create them with `make weights`, or run '
                        "the demo with untrained weights: make demo DEMO_ARGS='--checkpoint recipe'")
    return path


def write_bags(args, run_dir: Path, excluded: list[tuple[int, int]], say) -> tuple[list[DemoSequence], dict, dict]:
    """The demo scenes as MCAP bags under ``bags/`` and their manifest ``sequences.json``; returns the
    sequences, their bag paths and their ground truth as stored in the bags."""
    sequences = plan_sequences(args.sequences, args.frames, args.size, args.first_seed, excluded, args.world)
    bags = {}
    for seq in sequences:
        bags[seq.name] = run_dir / 'bags' / seq.name
        bagio.write_sequence_bag(SceneAsSequence(seq.scene, seq.name), bags[seq.name], fps=args.fps)
        failures = ', '.join(f"{s['condition']} {s['first']}-{s['last']}" for s in seq.segments())
        say(f'bag {bags[seq.name]}: seed {seq.seed}, {len(seq.scene)} frames {args.size[0]}x{args.size[1]}; '
            f'{failures}')
    manifest = {'seeds_excluded_by_checkpoint': excluded, 'sequences': [
        {'name': s.name, 'seed': s.seed, 'scenario': s.scenario.name, 'description': s.scenario.description,
         'frames': len(s.scene), 'size': list(args.size), 'fps': args.fps, 'bag': str(bags[s.name]),
         'segments': s.segments(),
         # what the scene is made of: world, real track the target follows, target class, background photo
         'scene': {k: v for k, v in s.scene.metadata.items() if k not in ('seed', 'length', 'size', 'segments')}}
        for s in sequences]}
    (run_dir / 'sequences.json').write_text(json.dumps(manifest, indent=1) + '\n')
    gt = {s.name: bagio.read_ground_truth(bags[s.name])[1] for s in sequences}
    return sequences, bags, gt


class StageTimer:
    """Seconds per stage of a demo run (``metrics.json``'s ``timings_s``), in the order they ran."""

    def __init__(self):
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.since = self.started

    def stage(self, name: str) -> None:
        """The stage ``name`` ends now; the next one starts."""
        now = time.monotonic()
        self.timings[name] = now - self.since
        self.since = time.monotonic()

    def restart(self) -> None:
        self.since = time.monotonic()


def load_models(args) -> tuple[object, Path | None, list[tuple[int, int]]]:
    """Fail fast on the model and the OpenCV baselines before any work: the ablation tracker (loaded here, in
    this process), the checkpoint file and the seed ranges it was trained on."""
    check_baselines(args.baselines)
    checkpoint_file = resolve_checkpoint_file(args.config, args.checkpoint)
    import torch
    torch.set_num_threads(args.threads)
    from ckd_ros import init_tracker
    try:
        tracker = init_tracker(args.config, checkpoint=args.checkpoint or None, device=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise DemoError(f'cannot load the model: {exc}') from None
    return tracker, checkpoint_file, training_seed_ranges(checkpoint_file)


def bags_and_node_replay(args, run_dir: Path, excluded: list[tuple[int, int]], timer: StageTimer, say):
    """Stages 1 and 2: scenes -> bags (while DDS discovers what else runs on this domain), then the node over
    DDS; the node's result files under ``results/fused/``. Returns the sequences, bags, ground truth, the
    replays and the node's figures."""
    session = RosSession()
    try:
        sequences, bags, gt = write_bags(args, run_dir, excluded, say)
        timer.stage('generate_bags_s')
        say(f"replaying into the node ({'lock-step' if args.rate is None else f'real time x{args.rate:g}'})")
        replays, node_info = replay_through_node(session, sequences, bags, run_dir, args, gt, say)
    finally:
        session.close()
    for seq in sequences:
        track = replays[seq.name].track
        results.write_sequence_result(run_dir / 'results' / 'fused', seq.name, track.boxes, track.times)
    timer.stage('node_replay_s')
    return sequences, bags, gt, replays, node_info


def ablations_and_baselines(args, sequences: list[DemoSequence], bags: dict[str, Path], run_dir: Path, tracker,
                            timer: StageTimer, say) -> tuple[dict, dict]:
    """Stages 3 and 4: the ablations without DDS, and OpenCV's classical trackers on the same bags (ckd-eval run
    --tracker, in processes of their own), alongside the ablations where the machine has cores for both.
    Returns the ablation and the baseline tracks by run name."""
    job = BaselineRuns(args.baselines, run_dir, args.threads) if args.baselines else None
    alongside = job is not None and usable_cores() >= 2 * args.threads
    baseline_tracks = {}
    try:
        if alongside:
            say('baselines: OpenCV ' + ', '.join(o.label for o in args.baselines) + ' (ckd-eval run --tracker) on '
                f'the same bags, alongside the ablations (log: {job.log_path})')
            job.start()
        say('ablations: the same model without DDS, one modality blanked')
        ablations = run_ablations(sequences, bags, run_dir, tracker, show_progress=not args.quiet)
        timer.stage('ablations_s')
        if job is not None:
            if not alongside:
                say('baselines: OpenCV ' + ', '.join(o.label for o in args.baselines) + ' (ckd-eval run --tracker) '
                    f'on the same bags (log: {job.log_path})')
            baseline_tracks = job.wait(sequences)
            timer.timings['baselines_s'] = job.seconds
            if alongside:
                timer.timings['baselines_wait_s'] = time.monotonic() - timer.since
            say(f'baselines: done in {job.seconds:.0f} s')
            timer.restart()
    finally:
        if job is not None:
            job.cancel()
    return ablations, baseline_tracks


@dataclass
class Scores:
    """Stage 5: every run scored overall and per failing camera, its speed, the plots and the verdicts."""
    scores: dict[str, metrics.BenchmarkScore]
    conditions: dict[str, dict]
    fps: dict[str, float]
    plots: dict[str, Path]
    fused_wins: dict[str, bool]
    winner: str | None
    winner_line: str


def score_runs(runs: list[str], sequences: list[DemoSequence], gt: dict, tracks: dict, replays: dict,
               labels: dict[str, str], run_dir: Path) -> Scores:
    """Scores, per-run reports under ``reports/`` and the precision/success plots of every run."""
    ground_truth = {s.name: GroundTruth(gt[s.name]) for s in sequences}
    scores, conditions, fps = {}, {}, {}
    for run_name in runs:
        boxes = read_result_files(run_dir / 'results' / run_name, sequences)
        scores[run_name] = metrics.evaluate(BENCHMARK, boxes, ground_truth)
        conditions[run_name] = condition_scores(boxes, sequences, gt)
        times = {n: tr.times for n, tr in tracks[run_name].items()}
        if run_name == 'fused':   # throughput of the node pipeline: answered pairs per second of replay
            duration = sum((r.output_log_ns[-1] - r.output_log_ns[0]) / 1e9 for r in replays.values()
                           if len(r.output_log_ns) > 1)
            answered = sum(max(0, len(r.output_log_ns) - 1) for r in replays.values())
            fps[run_name] = answered / duration if duration > 0 else float('nan')
        else:
            measured = np.concatenate([tt[1:] for tt in times.values()])
            fps[run_name] = len(measured) / measured.sum() if measured.sum() > 0 else float('nan')
        report.write_report(run_dir / 'reports' / run_name, scores[run_name], labels[run_name], times)
    labelled = {labels[r]: scores[r] for r in runs}     # every run on one figure
    plots = {}
    for metric, file in (('PR', 'precision.png'), ('SR', 'success.png'), ('NPR', 'normalized_precision.png')):
        plots[metric] = report.plot_curves(labelled, metric, run_dir / file,
                                           title=f'{metric}: {len(sequences)} synthetic RGB-T sequences')
    fused_wins = {metric: all(scores['fused'].metrics[metric] > scores[r].metrics[metric]
                              for r in ('rgb_only', 'thermal_only')) for metric in ('PR', 'NPR', 'SR')}
    baseline_runs = [r for r in runs if r not in RUNS]
    winner, winner_line = winners(scores, labels, baseline_runs)
    return Scores(scores, conditions, fps, plots, fused_wins, winner, winner_line)


def video_and_preview(args, sequences: list[DemoSequence], bags: dict[str, Path], fused_tracks: dict, gt: dict,
                      run_dir: Path):
    """Stage 6: the node's boxes on the replayed frames (``tracking.mp4``) and ``preview.png``; returns the
    video path, its codec and frame count, and the preview's path (None without one)."""
    video, codec, video_frames, previews = write_video(sequences, bags, fused_tracks, gt, run_dir / 'tracking',
                                                       args.fps)
    preview_path = None
    if previews:
        import cv2
        preview_path = run_dir / 'preview.png'
        stacked = np.concatenate([previews[k] for k in ('rgb_fails', 'thermal_fails') if k in previews], axis=0)
        cv2.imwrite(str(preview_path), cv2.cvtColor(stacked, cv2.COLOR_RGB2BGR))
    return video, codec, video_frames, preview_path


@dataclass
class NodePerformance:
    """Stage 7: the node's speed (``performance.json``) and what the tables say about it."""
    metrics: dict
    config: dict
    sent: int
    tracked_pairs: int
    dropped: int


def node_performance(args, replays: dict, node_info: dict, fps: dict[str, float], sequences: list[DemoSequence],
                     labels: dict[str, str], baseline_runs: list[str], checkpoint_file: Path | None,
                     run_dir: Path) -> NodePerformance:
    """``performance.json``: throughput, end-to-end and node latency percentiles, drops, CPU of the node."""
    all_e2e = np.concatenate([r.end_to_end_s for r in replays.values()])
    all_node = np.concatenate([r.node_latency_s for r in replays.values()])
    sent = sum(r.stats['sent'] for r in replays.values())
    # frame 0 of each sequence is the initialisation through ~/set_target, not a tracked pair
    tracked_pairs = sent - len(replays)
    dropped = sum(int((~r.track.answered[1:]).sum()) for r in replays.values())
    perf_metrics = report.performance_metrics(all_e2e, [], frames_sent=tracked_pairs, frames_dropped=dropped)
    perf_metrics['BasicPerformanceMetrics.MEAN_FRAME_RATE'] = fps['fused']
    for q in (50, 95, 99):
        if len(all_node):
            perf_metrics[f'NodeLatency.P{q}_LATENCY'] = float(np.percentile(all_node, q) * 1e3)
    if len(all_node):
        perf_metrics['NodeLatency.MEAN_LATENCY'] = float(all_node.mean() * 1e3)
        perf_metrics['NodeLatency.MAX_LATENCY'] = float(all_node.max() * 1e3)
    if node_info.get('node_cpu_percent_of_one_core') is not None:
        perf_metrics['ResourceMetrics.NODE_PROCESS_CPU_PERCENT_OF_ONE_CORE'] = node_info['node_cpu_percent_of_one_core']
    config = {'mode': 'lockstep' if args.rate is None else f'realtime x{args.rate:g}', 'model_config': args.config,
              'checkpoint': str(checkpoint_file or args.checkpoint), 'device': args.device,
              'torch_threads': args.threads, 'sequences': [s.name for s in sequences], 'frames': args.frames,
              'size': list(args.size), 'bag_fps': args.fps, 'node_bring_up_s': node_info.get('bring_up_s'),
              'baselines': {baseline_run_name(o): {**o.settings, 'label': labels[baseline_run_name(o)]}
                            for o in args.baselines},
              'latency_note': "BasicPerformanceMetrics latencies: publication stamp to receipt of the node's "
                              'TrackedTarget in the player (DDS both ways + conversion + tracking); NodeLatency: the '
                              "node's own stamp-to-publish latency field"}
    perf = report.performance_report(perf_metrics, config=config, name='ckd_ros demo: tracker node over DDS')
    perf['sequences'] = {n: report.performance_metrics(r.end_to_end_s, r.output_log_ns, r.stamps_ns,
                                                       frames_sent=r.stats['sent'] - 1,
                                                       frames_dropped=int((~r.track.answered[1:]).sum()))
                         for n, r in replays.items()}
    perf['offline_ablations'] = {run_name: {'MEAN_FRAME_RATE': fps[run_name]}
                                 for run_name in ('rgb_only', 'thermal_only')}
    perf['offline_baselines'] = {run_name: {'MEAN_FRAME_RATE': fps[run_name]} for run_name in baseline_runs}
    (run_dir / 'performance.json').write_text(report.to_json(perf))
    return NodePerformance(perf_metrics, config, sent, tracked_pairs, dropped)


def write_tables(args, run_dir: Path, runs: list[str], sequences: list[DemoSequence], labels: dict[str, str],
                 scored: Scores, perf: NodePerformance, replays: dict, node_info: dict, video_info: tuple,
                 timings: dict[str, float], checkpoint_file: Path | None) -> tuple[str, str, str, str, str]:
    """Stage 8: ``metrics.json`` and ``metrics.md``; returns the printed table, the verdict, the performance
    and machine lines (and the winner line)."""
    video, codec, video_frames, _ = video_info
    scores, conditions, fps = scored.scores, scored.conditions, scored.fps
    text_table = metrics_table(scores, conditions, fps, markdown=False, labels=labels)
    md_table = metrics_table(scores, conditions, fps, markdown=True, labels=labels)
    verdict = ('CKD fused beats both of its single-modality runs on PR, NPR and SR' if all(scored.fused_wins.values())
               else 'CKD fused does NOT beat both of its single-modality runs on ' +
               ', '.join(m for m, won in scored.fused_wins.items() if not won) +
               (' (untrained recipe weights: expected)' if checkpoint_file is None else ''))
    # the speed figures (fps, latency) name the machine they were measured on (load: at the end)
    machine = report.machine_info()
    machine_line = report.machine_line(machine)
    perf_metrics, dropped, tracked_pairs = perf.metrics, perf.dropped, perf.tracked_pairs
    perf_line = (f"node: {fps['fused']:.1f} pairs/s, end-to-end latency p50 "
                 f"{perf_metrics.get('BasicPerformanceMetrics.P50_LATENCY', float('nan')):.1f} ms, p95 "
                 f"{perf_metrics.get('BasicPerformanceMetrics.P95_LATENCY', float('nan')):.1f} ms, "
                 f"{dropped} of {tracked_pairs} pairs dropped")
    winner_line = scored.winner_line
    summary = {
        'run_dir': str(run_dir), 'verdict': verdict, 'fused_beats_ablations': scored.fused_wins,
        'winner': scored.winner, 'winner_verdict': winner_line, 'labels': labels,
        'metrics': {r: {**{k: 100 * v for k, v in scores[r].metrics.items()}, 'frames': scores[r].num_frames,
                        'fps': fps[r], 'conditions': conditions[r]} for r in runs},
        'frames_replayed': perf.sent,
        'frames_answered': int(sum(r.track.answered.sum() for r in replays.values())),
        'frames_dropped': dropped, 'video': str(video), 'video_codec': codec, 'video_frames': video_frames,
        'timings_s': timings, 'node_exit_code': node_info.get('node_exit_code'), 'config': perf.config,
        'machine': machine,
    }
    (run_dir / 'metrics.json').write_text(report.to_json(summary))
    seeds = ', '.join(f'{s.name} (seed {s.seed})' for s in sequences)
    md = [f'# CKD tracker demo ({time.strftime("%Y-%m-%d %H:%M")})', '',
          f'Model `{args.config}`, weights `{checkpoint_file or args.checkpoint}`, device {args.device}, '
          f'{args.threads} torch thread(s); {len(sequences)} synthetic sequences x {args.frames} frames at '
          f'{args.size[0]}x{args.size[1]}: {seeds}. Replay: {perf.config["mode"]}.', '',
          md_table, f'Percent. PR: centre error <= 20 px; NPR: normalised centre error <= 0.2; SR: success AUC; '
          'SR50: IoU > 0.5. "rgb-fail": frames where the RGB image does not show the target (night, glare); '
          '"th-fail": frames where the thermal image does not (crossover, low contrast). fps: fused = pairs per '
          f'second through the node over DDS ({"lock-step round trip" if args.rate is None else "real-time replay"}); '
          'ablations and OpenCV rows = the tracker alone, without DDS. OpenCV rows: its classical trackers '
          '(`ckd-eval run --tracker`) on the image named, fused = (RGB + thermal) / 2 per pixel; psr 0: CSRT never '
          'reports the target lost.', '',
          f'**{winner_line}.**', '', f'**{verdict}.**', '', perf_line + '.', '', machine_line + '.', '',
          'Stage timings (s): ' + ', '.join(f'{k[:-2]} {v:.1f}' for k, v in timings.items()) +
          ('; the baselines ran alongside the ablations (baselines_wait: the time spent waiting for them after the '
           'ablations)' if 'baselines_wait_s' in timings else ''), '']
    (run_dir / 'metrics.md').write_text('\n'.join(md))

    return text_table, verdict, perf_line, machine_line, winner_line


def say_outputs(args, run_dir: Path, lines: tuple[str, ...], timings: dict[str, float], plots: dict[str, Path],
                video: Path, preview_path: Path | None, say) -> None:
    """The table, the verdicts, the timings and where every output is."""
    say('')
    for line in lines:
        say(line)
    say(f"took {timings['total_s']:.0f} s (" + ', '.join(f'{k[:-2]} {v:.0f}' for k, v in timings.items()
                                                         if k != 'total_s') + ')' +
        ('; the baselines ran alongside the ablations' if 'baselines_wait_s' in timings else ''))
    say('')
    say(f'outputs in {run_dir} ({args.output_dir / "latest"} links the newest run):')
    for label, path in (('metrics table', run_dir / 'metrics.md'), ('precision plot', plots['PR']),
                        ('success plot', plots['SR']), ('video', video), ('preview frame', preview_path),
                        ('performance', run_dir / 'performance.json'), ('input bags', run_dir / 'bags'),
                        ('node outputs', run_dir / 'node_output'), ('node log', run_dir / 'node.log')):
        if path is not None:
            say(f'  {label:<15} {path}')


def run(args) -> int:
    """The demo's stages in turn (module docstring); the run folder becomes ``latest`` once all are done."""
    timer = StageTimer()

    def say(text):
        return print(text, flush=True)

    tracker, checkpoint_file, excluded = load_models(args)
    run_dir = make_run_dir(args.output_dir)
    say(f'demo run: {run_dir}  (model {args.config}, weights {checkpoint_file or args.checkpoint}, '
        f'device {args.device}, {args.threads} thread(s))')
    timer.restart()
    sequences, bags, gt, replays, node_info = bags_and_node_replay(args, run_dir, excluded, timer, say)
    labels = dict(RUN_LABELS)
    labels.update({baseline_run_name(o): f'OpenCV {o.label}' for o in args.baselines})
    ablations, baseline_tracks = ablations_and_baselines(args, sequences, bags, run_dir, tracker, timer, say)
    runs = list(RUNS) + list(baseline_tracks)
    tracks = {'fused': {n: r.track for n, r in replays.items()}, **ablations, **baseline_tracks}
    scored = score_runs(runs, sequences, gt, tracks, replays, labels, run_dir)
    timer.stage('scoring_s')
    video_info = video_and_preview(args, sequences, bags, tracks['fused'], gt, run_dir)
    timer.stage('video_s')
    perf = node_performance(args, replays, node_info, scored.fps, sequences, labels, list(baseline_tracks),
                            checkpoint_file, run_dir)
    timer.stage('performance_s')
    timer.timings['total_s'] = time.monotonic() - timer.started
    text_table, verdict, perf_line, machine_line, winner_line = write_tables(
        args, run_dir, runs, sequences, labels, scored, perf, replays, node_info, video_info, timer.timings,
        checkpoint_file)
    link_latest(run_dir)   # only a finished run becomes `latest`
    video, _, _, preview_path = video_info
    say_outputs(args, run_dir, (text_table, winner_line, verdict, perf_line, machine_line), timer.timings,
                scored.plots, video, preview_path, say)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not (math.isfinite(args.fps) and args.fps > 0):
        print(f'demo: error: --fps must be a positive number, got {args.fps}', file=sys.stderr)
        return 2
    # a timeout <= 0 (or NaN) made lock-step give up on every answer at once: frames were counted as
    # dropped and the replay was no longer lock-step
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        print(f'demo: error: --timeout must be a positive number of seconds, got {args.timeout}', file=sys.stderr)
        return 2
    from rclpy.exceptions import InvalidNamespaceException
    from rclpy.validate_namespace import validate_namespace
    try:   # checked before any work (it failed with a traceback after the bags were written)
        validate_namespace('/' + args.namespace.strip('/'))
    except InvalidNamespaceException as exc:
        print(f'demo: error: --namespace {args.namespace!r} is not a valid ROS namespace: '
              f'{str(exc).splitlines()[0]}', file=sys.stderr)
        return 2
    # files are handed to the node process as absolute paths (its working folder need not be ours)
    for name in ('config', 'checkpoint'):
        value = getattr(args, name)
        if value and Path(value).is_file():
            setattr(args, name, str(Path(value).resolve()))
    try:
        return run(args)
    except DemoError as exc:
        print(f'demo: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('demo: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
