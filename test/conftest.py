"""Shared test fixtures: separate ROS processes and a per-process rclpy context."""
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = TEST_DIR.parent
PEERS_DIR = TEST_DIR / 'peers'


def ros_subprocess_env(**extra):
    """Environment for a child ROS process: the same domain, loopback discovery, unbuffered output."""
    from ckd_ros.ros.node_command import child_environment
    return child_environment(**extra)


@pytest.fixture
def spawn_process():
    """Start Python programs (test peers, the node: ``node_harness.node_command``) in separate processes
    (``ckd_ros.ros.node_command.ChildProcess``); terminate them all, then wait (kill) at teardown."""
    from ckd_ros.ros.node_command import ChildProcess
    procs = []

    def spawn(args, **env_extra):
        proc = ChildProcess(args, **env_extra)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.stop(timeout=10)


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context of this test's own (shut down afterwards)."""
    import rclpy
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module's tests: on the shared 2-core machine a second OpenMP thread busy-waits and
    makes timing-sensitive and model-heavy tests slower, never faster."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def moving_square_frames(count: int, height: int, width: int):
    """``count`` RGB and single-channel thermal uint8 frames: a bright 30x30 square moving 4 px right per
    frame over a noisy background (seeded: the same frames in every test that uses them)."""
    import numpy as np
    rng = np.random.default_rng(7)
    rgb, thermal = [], []
    for t in range(count):
        image = rng.integers(0, 60, (height, width, 3), np.uint8)
        image[100:130, 120 + 4 * t:150 + 4 * t] = (250, 200, 40)
        rgb.append(image)
        frame = rng.integers(0, 40, (height, width), np.uint8)
        frame[100:130, 120 + 4 * t:150 + 4 * t] = 230
        thermal.append(frame)
    return rgb, thermal
