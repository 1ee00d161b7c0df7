"""The node's lifecycle driven through <node>/change_state from another process: repeated cycles leak no
subscriptions, publishers, threads or memory; shutdown works from every state and the process exits."""
import signal
import time

import pytest

from peers.node_harness import (OutputDrain, RosTestClient, micro_model_params, node_command, process_rss_mib,
                                process_threads)

pytestmark = pytest.mark.ros


def _graph_counts(client, namespace):
    node = client.node
    return (node.count_subscribers(f'{namespace}/rgb/image'), node.count_subscribers(f'{namespace}/thermal/image'),
            node.count_subscribers(f'{namespace}/ckd_tracker/init_box'),
            node.count_publishers(f'{namespace}/ckd_tracker/target'))


def _service_names(client, namespace):
    return {name for name, _ in client.node.get_service_names_and_types_by_node('ckd_tracker', namespace)}


def test_repeated_lifecycle_cycles_leak_nothing_and_requests_are_refused_with_reasons(rclpy_context, spawn_process):
    from ckd_ros.srv import SetTarget

    namespace = '/lc'
    fqn = f'{namespace}/ckd_tracker'
    node = spawn_process(node_command(namespace, params=micro_model_params()))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    box = SetTarget.Request(x=10.0, y=10.0, width=20.0, height=20.0)
    try:
        assert client.get_state(fqn, output=out) == 'unconfigured'
        threads, rss = {}, {}
        for cycle in range(4):
            assert client.change_state(fqn, 'configure', out), out.text()[-3000:]
            assert client.get_state(fqn) == 'inactive'
            client.wait_for(lambda: _graph_counts(client, namespace) == (0, 0, 0, 1), 20, 'inactive graph', out)
            assert {f'{fqn}/set_target', f'{fqn}/reset'} <= _service_names(client, namespace)
            refused = client.call(SetTarget, f'{fqn}/set_target', box, output=out)
            assert not refused.success
            assert refused.message == 'node is not active (state: inactive); configure and activate it first'

            assert client.change_state(fqn, 'activate', out)
            client.wait_for(lambda: _graph_counts(client, namespace) == (1, 1, 1, 1), 20, 'active graph', out)
            early = client.call(SetTarget, f'{fqn}/set_target', box)
            assert not early.success and early.message.startswith('no synchronized RGB + thermal frame received yet')
            threads[cycle] = process_threads(node.pid)

            assert client.change_state(fqn, 'deactivate', out)
            client.wait_for(lambda: _graph_counts(client, namespace) == (0, 0, 0, 1), 20, 'deactivated graph', out)
            assert client.change_state(fqn, 'cleanup', out)
            assert client.get_state(fqn) == 'unconfigured'
            client.wait_for(lambda: _graph_counts(client, namespace) == (0, 0, 0, 0), 20, 'cleaned-up graph', out)
            client.wait_for(lambda: f'{fqn}/set_target' not in _service_names(client, namespace), 20,
                            'set_target to be removed', out)
            rss[cycle] = process_rss_mib(node.pid)

        # The first cycle pays one-time costs (imports, allocator pools); later ones must not grow.
        assert threads[3] == threads[1], threads
        assert rss[3] - rss[1] < 25.0, rss
        assert client.change_state(fqn, 'configure', out) and client.change_state(fqn, 'activate', out)
        assert client.change_state(fqn, 'active_shutdown', out)
        assert node.wait(timeout=20) == 0, 'the process exits once the node is finalized'
        assert 'Traceback' not in out.text()
    finally:
        client.close()


def test_shutdown_from_every_state_and_on_signals(rclpy_context, spawn_process):
    client = RosTestClient(rclpy_context)
    try:
        # Four nodes at once; only two load a model (torch is imported at configure).
        nodes = {}
        for namespace, extra in (('/sd_unconfigured', {}), ('/sd_inactive', {'unload_on_deactivate': True}),
                                 ('/sd_sigint', {}), ('/sd_sigterm', {})):
            proc = spawn_process(node_command(namespace, params=micro_model_params(**extra)))
            nodes[namespace] = (proc, OutputDrain(proc))

        proc, out = nodes['/sd_unconfigured']
        assert client.get_state('/sd_unconfigured/ckd_tracker', out) == 'unconfigured'
        assert client.change_state('/sd_unconfigured/ckd_tracker', 'unconfigured_shutdown', out)
        assert proc.wait(timeout=20) == 0

        # unload_on_deactivate: the model is loaded at activate and freed at deactivate.
        fqn = '/sd_inactive/ckd_tracker'
        proc, out = nodes['/sd_inactive']
        assert client.change_state(fqn, 'configure', out) and client.change_state(fqn, 'activate', out)
        assert client.change_state(fqn, 'deactivate', out)
        assert client.change_state(fqn, 'inactive_shutdown', out)
        assert proc.wait(timeout=20) == 0

        # Ctrl-C on an active node (subscriptions, worker thread, model), SIGTERM on an idle one.
        proc, out = nodes['/sd_sigint']
        assert client.change_state('/sd_sigint/ckd_tracker', 'configure', out)
        assert client.change_state('/sd_sigint/ckd_tracker', 'activate', out)
        proc_term, out_term = nodes['/sd_sigterm']
        assert client.get_state('/sd_sigterm/ckd_tracker', out_term) == 'unconfigured'
        for proc, out, signal_number in ((proc, out, signal.SIGINT), (proc_term, out_term, signal.SIGTERM)):
            started = time.monotonic()
            proc.send_signal(signal_number)
            assert proc.wait(timeout=20) == 0, out.text()[-3000:]
            assert time.monotonic() - started < 10.0, 'the node stops promptly on a signal'
        for proc, out in nodes.values():
            assert 'Traceback' not in out.text(), out.text()[-3000:]
    finally:
        client.close()
