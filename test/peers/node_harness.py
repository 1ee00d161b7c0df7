"""Helpers of the tracker-node tests: start the installed node in its own process, drive its
lifecycle and services from the test process, and watch its topics and its process."""
from __future__ import annotations

import time
from pathlib import Path

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ckd_ros.ros.node_command import ChildProcess, OutputLines, tracker_node_args

TEST_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TEST_DIR.parent
# A small model so that the node tests spend their time on the node, not on the network.
MICRO_CONFIG = TEST_DIR / 'data' / 'node_micro_config.yaml'

TRANSITIONS = {
    'configure': Transition.TRANSITION_CONFIGURE, 'cleanup': Transition.TRANSITION_CLEANUP,
    'activate': Transition.TRANSITION_ACTIVATE, 'deactivate': Transition.TRANSITION_DEACTIVATE,
    'unconfigured_shutdown': Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
    'inactive_shutdown': Transition.TRANSITION_INACTIVE_SHUTDOWN,
    'active_shutdown': Transition.TRANSITION_ACTIVE_SHUTDOWN,
}


def node_command(namespace: str, name: str = 'ckd_tracker', params: dict | None = None,
                 params_files: tuple = ()) -> list:
    """Arguments (after the interpreter) that start the node with ``params_files`` (later ones win) and
    then ``params`` as -p overrides, for ``spawn_process`` (a ``ChildProcess``)."""
    return tracker_node_args(name, namespace, params, params_files=params_files)


def micro_model_params(**extra) -> dict:
    params = {'model_config': str(MICRO_CONFIG), 'checkpoint': 'random', 'device': 'cpu', 'torch_threads': 1,
              'status_period': 0.25, 'diagnostic_updater.period': 0.25}
    params.update(extra)
    return params


def OutputDrain(proc: ChildProcess) -> OutputLines:
    """A child's combined output as it arrives (``lines``, ``text()``): ``ChildProcess.drain``, read in a
    thread (a full pipe would block the child)."""
    return proc.drain()


def process_threads(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('Threads:'):
            return int(line.split()[1])
    raise RuntimeError(f'no thread count for process {pid}')


def process_rss_mib(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no RSS for process {pid}')


class RosTestClient:
    """The test process's side: one rclpy node with helpers to wait, call services and record topics."""

    def __init__(self, context, name: str = 'ckd_node_test'):
        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._clients = {}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()

    def spin_for(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str = 'condition', output: OutputDrain | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.02)
        if predicate():
            return
        log = f'\n--- node output ---\n{output.text()[-6000:]}' if output is not None else ''
        raise AssertionError(f'timed out after {timeout} s waiting for {what}{log}')

    def record(self, msg_type, topic: str, reliable: bool = True, depth: int = 100) -> list:
        received = []
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def call(self, srv_type, name: str, request, timeout: float = 30.0, output: OutputDrain | None = None):
        key = (srv_type, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, name)
        client = self._clients[key]
        self.wait_for(client.service_is_ready, timeout, f'service {name}', output)
        future = client.call_async(request)
        self.wait_for(future.done, timeout, f'response of {name}', output)
        return future.result()

    def change_state(self, node_fqn: str, transition: str, output: OutputDrain | None = None) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return self.call(ChangeState, f'{node_fqn}/change_state', request, timeout=60.0, output=output).success

    def get_state(self, node_fqn: str, output: OutputDrain | None = None) -> str:
        return self.call(GetState, f'{node_fqn}/get_state', GetState.Request(), output=output).current_state.label


def diagnostic_values(status) -> dict:
    return {kv.key: kv.value for kv in status.values}


def find_status(diagnostic_arrays: list, name: str):
    """The newest DiagnosticStatus called ``name`` in the recorded arrays (None if none)."""
    for array in reversed(diagnostic_arrays):
        for status in array.status:
            if status.name == name:
                return status
    return None
