"""A storm of lifecycle transitions and target requests while a camera process streams at 30 Hz: every
transition gets an answer, invalid ones are refused, the node ends in a consistent state with no leaked
thread, subscription or worker, and tracks again once activated. (~/set_target exists only while the node
is configured: a request in flight when cleanup removes it is never answered, as for any ROS service that
goes away, so a client needs a timeout; the answered ones are checked.)"""
import json

import numpy as np
import pytest

from conftest import PEERS_DIR
from peers.node_harness import (TRANSITIONS, OutputDrain, RosTestClient, micro_model_params, node_command,
                                process_rss_mib, process_threads)

pytestmark = pytest.mark.ros

NAMESPACE = '/storm'
NODE = f'{NAMESPACE}/ckd_tracker'
# Which transitions each state accepts (lifecycle_msgs), and where they lead on success.
NEXT_STATE = {('unconfigured', 'configure'): 'inactive', ('inactive', 'cleanup'): 'unconfigured',
              ('inactive', 'activate'): 'active', ('active', 'deactivate'): 'inactive'}


def _graph(client):
    node = client.node
    return (node.count_subscribers(f'{NAMESPACE}/rgb/image'), node.count_subscribers(f'{NAMESPACE}/thermal/image'),
            node.count_publishers(f'{NODE}/target'))


def test_transition_and_request_storm_while_streaming(rclpy_context, spawn_process):
    from lifecycle_msgs.srv import ChangeState

    from ckd_ros.msg import TrackedTarget
    from ckd_ros.srv import SetTarget

    peer = spawn_process([PEERS_DIR / 'rgbt_camera_peer.py', '--namespace', NAMESPACE, '--frames', '100000',
                          '--rate', '30', '--thermal-every', '1', '--cycle', '8', '--size', '80x64',
                          '--thermal-size', '80x64', '--wait-subscribers', '0'])
    peer_out = OutputDrain(peer)
    client = RosTestClient(rclpy_context)
    try:
        client.wait_for(lambda: any(line.startswith('{') for line in peer_out.lines), 60, 'the camera peer')
        ready = json.loads(next(line for line in peer_out.lines if line.startswith('{')))
        node = spawn_process(node_command(NAMESPACE, params=micro_model_params(initial_box=ready['init_box'])))
        out = OutputDrain(node)
        targets = client.record(TrackedTarget, f'{NODE}/target', depth=1000)
        assert client.change_state(NODE, 'configure', out) and client.change_state(NODE, 'activate', out)
        client.wait_for(lambda: len(targets) >= 3, 60, 'tracking before the storm', out)
        baseline_threads, baseline_rss = process_threads(node.pid), process_rss_mib(node.pid)

        change = client.node.create_client(ChangeState, f'{NODE}/change_state')
        set_target = client.node.create_client(SetTarget, f'{NODE}/set_target')
        client.wait_for(lambda: change.service_is_ready() and set_target.service_is_ready(), 30, 'the services', out)
        rng = np.random.default_rng(7)
        names = ['configure', 'activate', 'deactivate', 'cleanup']
        transitions, requests = [], []
        for k in range(120):
            # At most 8 transitions in flight: a ROS service keeps the last 10 requests.
            client.wait_for(lambda: sum(not f.done() for _, f in transitions) < 8, 60, 'answers', out)
            name = names[rng.integers(len(names))]
            request = ChangeState.Request()
            request.transition.id = TRANSITIONS[name]
            transitions.append((name, change.call_async(request)))
            if k % 2 == 0:
                requests.append(set_target.call_async(SetTarget.Request(x=10.0, y=10.0, width=20.0, height=15.0)))
        client.wait_for(lambda: all(f.done() for _, f in transitions), 60, 'every transition answered', out)
        client.spin_for(2.0)      # set_target answers still on their way

        # Replay the answers against the lifecycle state machine: the node's own state must follow it. The
        # requests are served in order, so each accepted transition is the valid one from the state before.
        state, accepted = 'active', 0
        for name, future in transitions:
            success = future.result().success
            expected = NEXT_STATE.get((state, name))
            assert success == (expected is not None), (state, name, success)
            if success:
                state, accepted = expected, accepted + 1
        assert accepted >= 10, f'only {accepted} transitions were valid: the storm did not cycle the node'
        assert client.get_state(NODE) == state
        answers = [f.result() for f in requests if f.done()]
        for future in requests:
            if not future.done():
                set_target.remove_pending_request(future)
        assert len(answers) >= 5 and all(r.success or r.message for r in answers)
        assert any(r.message.startswith('node is not active') for r in answers) or state != 'active'

        # Bring the node to active whatever state the storm left it in, then it tracks as before.
        path = {'unconfigured': ['configure', 'activate'], 'inactive': ['activate'], 'active': []}[state]
        for name in path:
            assert client.change_state(NODE, name, out)
        client.wait_for(lambda: _graph(client) == (1, 1, 1), 20, 'one subscription per input, one target publisher',
                        out)
        count = len(targets)
        client.wait_for(lambda: len(targets) >= count + 5, 60, 'tracking after the storm', out)
        assert targets[-1].state in (TrackedTarget.STATE_TRACKING, TrackedTarget.STATE_LOST)
        threads, rss = process_threads(node.pid), process_rss_mib(node.pid)
        print(f'{accepted} transitions accepted of {len(transitions)}; threads {baseline_threads} -> {threads}, '
              f'RSS {baseline_rss:.0f} -> {rss:.0f} MiB')
        assert threads == baseline_threads, 'no worker or executor thread leaked'
        assert rss - baseline_rss < 60.0, (baseline_rss, rss)
        assert 'Traceback' not in out.text() and ' raised:' not in out.text()
    finally:
        client.close()
