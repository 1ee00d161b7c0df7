"""Faults of the camera streams, through a real node process: an input that stops or freezes, stamps that
repeat, go back a little (out of order) or a lot (a bag loops), zero stamps. Each is reported within a stated
time, no output repeats or goes back in time, and tracking resumes when the stream does."""
import time

import numpy as np
import pytest

from peers.frames import MS, SECOND, Driver, FrameMaker, finite_target, image_msg, stamp_ns_of
from peers.node_harness import (OutputDrain, RosTestClient, diagnostic_values, find_status, micro_model_params,
                                node_command)

pytestmark = pytest.mark.ros

NAMESPACE = '/streams'
NODE = f'{NAMESPACE}/ckd_tracker'
DIAG = 'ckd_tracker: tracker'
WIDTH, HEIGHT = 64, 48
TIMEOUT_S = 0.5              # input.timeout of the node under test
PERIOD_NS = 50 * MS          # RGB at 20 Hz, thermal with every second RGB frame (10 Hz)
# A stall is on /diagnostics within input.timeout + one watchdog period (timeout/4, at most 0.25 s); the
# rest is transport and a loaded 2-core machine.
STALL_REPORT_BOUND_S = TIMEOUT_S + min(0.25, TIMEOUT_S / 4) + 0.6


def _stamps(targets):
    return [stamp_ns_of(t) for t in targets]


def test_stalled_frozen_repeated_and_backward_streams(rclpy_context, spawn_process):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from ckd_ros.msg import TrackedTarget, TrackerStatus

    node = spawn_process(node_command(NAMESPACE, params=micro_model_params(
        autostart=True, initial_box=[20.0, 14.0, 16.0, 14.0],
        **{'input.timeout': TIMEOUT_S, 'sync.queue_size': 4, 'thermal.registration': 'identity'})))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        targets = client.record(TrackedTarget, f'{NODE}/target', depth=200)
        statuses = client.record(TrackerStatus, f'{NODE}/status', depth=50)
        diagnostics = client.record(DiagnosticArray, '/diagnostics', depth=50)
        driver = Driver(client, NAMESPACE)
        driver.wait_subscribed(out)
        frames = FrameMaker(WIDTH, HEIGHT, seed=4)
        clock = {'next': client.node.get_clock().now().nanoseconds}

        def stream(count, rgb=True, thermal=True, jump_ns=0):
            """``count`` RGB frames at 20 Hz (thermal with every second one), stamped like a driver."""
            sent = []
            for k in range(count):
                clock['next'] += PERIOD_NS
                stamp = clock['next'] + jump_ns
                with_thermal = thermal and k % 2 == 0
                driver.send(frames.rgb(stamp) if rgb else None, frames.thermal(stamp + MS) if with_thermal else None,
                            spin_s=PERIOD_NS / SECOND)
                sent.append(stamp)
            return sent

        def diag():
            return find_status(diagnostics, DIAG)

        def diag_says(text, level=None):
            status = diag()
            return status is not None and text in status.message and (level is None or status.level == level)

        # Normal pairs: tracked from the initial_box on.
        stream(12)
        client.wait_for(lambda: len(targets) >= 3, 30, 'targets of the normal stream', out)

        # 1. The thermal camera is unplugged: RGB keeps coming, thermal stops.
        last_thermal = time.monotonic()
        count_before = len(targets)
        reported = None
        for _ in range(60):
            stream(1, thermal=False)
            if reported is None and diag_says(f'{NAMESPACE}/thermal/image stalled: no new frame',
                                              DiagnosticStatus.WARN):
                reported = time.monotonic() - last_thermal
                break
        assert reported is not None, out.text()[-3000:]
        print(f'thermal stall reported on /diagnostics {reported:.2f} s after its last frame '
              f'(input.timeout {TIMEOUT_S} s, bound {STALL_REPORT_BOUND_S:.2f} s)')
        assert reported <= STALL_REPORT_BOUND_S
        client.wait_for(lambda: statuses[-1].thermal_rate == 0.0 and statuses[-1].rgb_rate > 5.0, 5,
                        'a status with the thermal rate at 0', out)
        # no pairs without thermal: pair and output rates read 0 too (were decaying over 5 s)
        assert statuses[-1].pair_rate == 0.0 and statuses[-1].output_rate == 0.0
        assert diagnostic_values(diag())['thermal_stalled'] == 'True'
        assert len(targets) <= count_before + 1, 'nothing is tracked without thermal frames'

        # ... and plugged in again: tracking resumes, the stall is cleared.
        resumed = stream(10)
        client.wait_for(lambda: targets and stamp_ns_of(targets[-1]) in resumed, 20, 'tracking to resume', out)
        client.wait_for(lambda: diagnostic_values(diag())['thermal_stalled'] == 'False'
                        and 'stalled' not in diag().message, 10, 'the stall to clear', out)

        # 2. RGB freezes: the driver repeats its last image with its old stamp; thermal goes on.
        frozen_rgb = frames.rgb(clock['next'] + PERIOD_NS)
        frozen_started, reported = time.monotonic(), None
        for k in range(60):
            clock['next'] += PERIOD_NS
            driver.send(frozen_rgb, frames.thermal(clock['next'] + MS) if k % 2 == 0 else None,
                        spin_s=PERIOD_NS / SECOND)
            if diag_says(f'{NAMESPACE}/rgb/image stalled: no new frame', DiagnosticStatus.WARN):
                reported = time.monotonic() - frozen_started
                break
        assert reported is not None and reported <= STALL_REPORT_BOUND_S, (reported, out.text()[-3000:])
        assert 'frames repeated or went back to an older stamp' in diag().message
        assert int(diagnostic_values(diag())['frames_stale_stamp']) > 0

        # 3. Both freeze on the same pair (a stuck driver pair): it pairs again and again, but an output
        #    never repeats a stamp.
        clock['next'] += PERIOD_NS
        stuck = (frames.rgb(clock['next']), frames.thermal(clock['next'] + MS))
        for _ in range(15):
            driver.send(*stuck, spin_s=PERIOD_NS / SECOND)
        client.wait_for(lambda: int(diagnostic_values(diag())['pairs_out_of_order']) > 0, 10,
                        'repeated pairs to be skipped', out)
        assert _stamps(targets).count(stamp_ns_of(stuck[0])) <= 1

        # 4. Frozen pixels with fresh stamps (a driver re-stamping its last image): a warning, no stall.
        still = np.random.default_rng(9).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frozen_pixels = []
        for k in range(40):
            clock['next'] += PERIOD_NS
            driver.send(image_msg(still, 'rgb8', clock['next']),
                        frames.thermal(clock['next'] + MS) if k % 2 == 0 else None, spin_s=PERIOD_NS / SECOND)
            frozen_pixels.append(clock['next'])
            if (diag_says(f'{NAMESPACE}/rgb/image: the last', DiagnosticStatus.WARN)
                    and 'identical pixels' in diag().message):
                break
        assert 'identical pixels' in diag().message, diag().message
        assert 'stalled' not in diag().message
        assert any(stamp_ns_of(t) in frozen_pixels for t in targets), 'new stamps are still tracked'

        # 5. Out of order, duplicate and zero stamps.
        stream(6)
        client.wait_for(lambda: stamp_ns_of(targets[-1]) >= clock['next'] - 2 * PERIOD_NS, 20, 'targets', out)
        late = clock['next'] - 3 * PERIOD_NS - 7 * MS            # a pair 157 ms older than the newest
        driver.send(frames.rgb(late), frames.thermal(late + MS), spin_s=0.2)
        driver.send(frames.rgb(0), frames.thermal(0), spin_s=0.2)   # an unstamped driver
        client.wait_for(lambda: diag_says('/streams/rgb/image: header.stamp is zero', DiagnosticStatus.ERROR), 10,
                        'the zero-stamp error', out)
        client.wait_for(lambda: 'header.stamp is zero' in statuses[-1].last_error, 10, 'last_error', out)
        assert late not in _stamps(targets) and 0 not in _stamps(targets)

        # 6. A bag loops: stamps jump 30 s back while the RGB queue is full of unpaired frames (thermal
        #    runs at half the rate). Without a restart the queue's size cap would evict every new frame.
        stream(8)
        before_jump = len(targets)
        looped = stream(16, jump_ns=-30 * SECOND)
        client.wait_for(lambda: any(stamp_ns_of(t) in looped for t in targets[before_jump:]), 20,
                        'tracking after the loop', out)
        first_after = next(stamp_ns_of(t) for t in targets[before_jump:] if stamp_ns_of(t) in looped)
        assert looped.index(first_after) <= 4, 'pairs resume within the first thermal frames after the jump'
        client.wait_for(lambda: diagnostic_values(diag())['time_restarts'] == '1', 10, 'one time restart', out)
        assert any('time went backwards (/streams/rgb/image: stamp' in line for line in out.lines)

        # Never a NaN; within one time epoch the outputs' stamps strictly increase.
        assert all(finite_target(t) for t in targets)
        stamps = _stamps(targets)
        jump_at = stamps.index(first_after)
        for part in (stamps[:jump_at], stamps[jump_at:]):
            assert all(a < b for a, b in zip(part, part[1:])), part
        assert client.get_state(NODE) == 'active'
        assert 'Traceback' not in out.text()
    finally:
        client.close()
