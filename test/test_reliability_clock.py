"""Simulated time through a real node process: the node clock follows /clock (use_sim_time) and jumps back
(a bag replayed with --clock loops). Pairing, the frame history and the latency statistics restart, and no
latency from before the jump leaks into the statistics or into an output. When /clock pauses, stalls are
still reported."""
import pytest

from peers.frames import MS, SECOND, Driver, FrameMaker, finite_target, stamp_ns_of
from peers.node_harness import (OutputDrain, RosTestClient, diagnostic_values, find_status, micro_model_params,
                                node_command)

pytestmark = pytest.mark.ros

NAMESPACE = '/simclock'
NODE = f'{NAMESPACE}/ckd_tracker'
STEP_NS = 50 * MS


def test_a_backward_jump_of_the_sim_clock_restarts_pairing_and_latency(rclpy_context, spawn_process):
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock

    from ckd_ros.msg import TrackedTarget, TrackerStatus
    from ckd_ros.ros.conversions import ns_to_stamp

    node = spawn_process(node_command(NAMESPACE, params=micro_model_params(
        autostart=True, use_sim_time=True, initial_box=[20.0, 14.0, 16.0, 14.0], **{'sync.queue_size': 4})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        targets = client.record(TrackedTarget, f'{NODE}/target', depth=200)
        statuses = client.record(TrackerStatus, f'{NODE}/status', depth=100)
        diagnostics = client.record(DiagnosticArray, '/diagnostics', depth=50)
        clock_pub = client.node.create_publisher(Clock, '/clock', 10)
        driver = Driver(client, NAMESPACE)
        driver.wait_subscribed(out)
        frames = FrameMaker(64, 48, seed=2)

        def run(start_ns, count, lag_ns):
            """Sim time from ``start_ns`` in 50 ms steps (one step per 50 ms of wall time); each step an RGB
            frame stamped ``lag_ns`` before the clock (thermal with every second one)."""
            stamps = []
            for k in range(count):
                now = start_ns + k * STEP_NS
                clock_pub.publish(Clock(clock=ns_to_stamp(now)))
                stamp = now - lag_ns
                driver.send(frames.rgb(stamp), frames.thermal(stamp + MS) if k % 2 == 0 else None,
                            spin_s=STEP_NS / SECOND)
                stamps.append(stamp)
            return stamps

        # A bag whose images are 400 ms old when they arrive.
        before = run(1000 * SECOND, 40, lag_ns=400 * MS)
        client.wait_for(lambda: len(targets) >= 5, 30, 'targets in sim time', out)
        assert all(0.39 < t.latency < 1.0 for t in targets), [t.latency for t in targets]
        client.wait_for(lambda: statuses and statuses[-1].latency_max > 0.39, 10, 'the latency statistics', out)

        # The bag loops: /clock jumps 500 s back first, then frames come with the new stamps, 20 ms old.
        count_before = len(targets)
        clock_pub.publish(Clock(clock=ns_to_stamp(500 * SECOND)))
        client.spin_for(0.2)
        after = run(500 * SECOND + STEP_NS, 40, lag_ns=20 * MS)
        client.wait_for(lambda: any(stamp_ns_of(t) in after for t in targets[count_before:]), 30,
                        'tracking after the jump', out)
        client.wait_for(lambda: any('time went backwards (the node clock jumped back by 501.950 s)' in line
                                    for line in out.lines), 10, 'the clock jump in the log', out)
        post = [t for t in targets[count_before:] if stamp_ns_of(t) in after]
        assert len(post) >= 5 and not any(stamp_ns_of(t) in before for t in targets[count_before:])
        assert all(0.0 <= t.latency < 0.3 for t in post), [t.latency for t in post]
        # The statistics cover only frames after the jump: the 400 ms latencies are gone.
        client.wait_for(lambda: 0.0 < statuses[-1].latency_max < 0.3 and statuses[-1].header.stamp.sec < 600, 10,
                        'statistics without the old latencies', out)
        values = diagnostic_values(find_status(diagnostics, 'ckd_tracker: tracker'))
        assert values['time_restarts'] == '1', values['time_restarts']   # the clock jump, not again for the stamps

        # The bag is paused: /clock and the images stop. The node's timers run on sim time and stop too,
        # but the input watchdog runs on the steady clock and publishes the stall itself.
        paused = len(diagnostics)
        client.wait_for(lambda: any('/simclock/rgb/image stalled' in s.message for a in diagnostics[paused:]
                                    for s in a.status), 2.5 + 1.0, 'the stall while /clock is paused', out)
        assert all(finite_target(t) for t in targets)
        assert 'Traceback' not in out.text()
    finally:
        client.close()
