"""The launch file and the ``ros2`` CLI against the node, with the real launch_ros and ros2cli.

Neither is on PyPI: these tests run where a ROS install (or those packages built from source with colcon) puts
``ros2`` on PATH and launch_ros on the Python path, and skip cleanly elsewhere. They start
``ros2 launch ckd_ros ckd_tracker.launch.py`` as a user does, so the lifecycle event handlers, the
parameter file, the Fast DDS profile argument and the exit behaviour are those of the real launch_ros.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import TEST_DIR, ros_subprocess_env

pytestmark = pytest.mark.ros

MICRO_CONFIG = TEST_DIR / 'data' / 'node_micro_config.yaml'


def _ros2():
    pytest.importorskip('launch_ros')
    pytest.importorskip('ros2lifecycle')
    ros2 = shutil.which('ros2')
    if ros2 is None:
        pytest.skip('no ros2 command on PATH')
    # `ros2` may carry another interpreter in its shebang (a colcon build from another venv): run it with this one
    return [sys.executable, ros2]


def _child_pids(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        for child in _child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _node_pids(launch_pid):
    pids = []
    for pid in _descendants(launch_pid):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as handle:
                if b'ckd_tracker_node' in handle.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


class Launch:
    """``ros2 launch ckd_ros ckd_tracker.launch.py`` in its own process, output collected in a file."""

    def __init__(self, ros2, tmp_path, namespace, *arguments):
        self.ros2, self.namespace = ros2, namespace
        self.log_path = tmp_path / 'launch.log'
        self._log = open(self.log_path, 'w')
        args = [*ros2, 'launch', 'ckd_ros', 'ckd_tracker.launch.py', f'namespace:={namespace}',
                f'model_config:={MICRO_CONFIG}', 'checkpoint:=random', 'device:=cpu', *arguments]
        # SIGINT must reach launch (a background job of a shell may start with it ignored)
        self.proc = subprocess.Popen(args, env=ros_subprocess_env(OMP_NUM_THREADS=1), stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                                signal.SIG_DFL))

    def log(self):
        return self.log_path.read_text()

    def cli(self, *args, timeout=30):
        return subprocess.run([*self.ros2, *args], env=ros_subprocess_env(), capture_output=True, text=True,
                              timeout=timeout)

    def state(self):
        for _ in range(3):   # without a daemon, discovery within the spin time can miss on a loaded machine
            out = self.cli('lifecycle', 'get', '--no-daemon', '--spin-time', '5', f'{self.namespace}/ckd_tracker')
            if out.stdout.strip():
                break
        return out.stdout.strip()

    def wait_active(self, timeout=90):
        deadline = time.monotonic() + timeout
        state = ''
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f'launch exited ({self.proc.returncode}):\n{self.log()}'
            state = self.state()
            if state.startswith('active'):
                return
            time.sleep(1.0)
        raise AssertionError(f'node not active after {timeout} s (last state {state!r}):\n{self.log()}')

    def wait_node_pid(self, exclude=(), timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in _node_pids(self.proc.pid) if p not in exclude]
            if pids:
                return pids[0]
            time.sleep(0.2)
        raise AssertionError(f'no node process under launch:\n{self.log()}')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # to launch only: it forwards SIGINT to the node
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in _descendants(self.proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def ros2():
    return _ros2()


def test_ros2_launch_activates_the_node_and_ros2_cli_drives_it(ros2, tmp_path):
    launch = Launch(ros2, tmp_path, '/launched', 'params_file:=' + str(TEST_DIR.parent / 'config' / 'ckd_tracker.yaml'))
    try:
        launch.wait_active()
        fqn = '/launched/ckd_tracker'
        # given launch arguments win over the parameter file; the others keep its values
        assert launch.cli('param', 'get', '--no-daemon', '--timeout', '10',
                          fqn, 'checkpoint').stdout.strip().endswith('random')
        assert 'fp32' in launch.cli('param', 'get', '--no-daemon', '--timeout', '10', fqn, 'precision').stdout
        # a value that would fail configure is refused when set, with the reason
        refused = launch.cli('param', 'set', '--no-daemon', '--timeout', '10', fqn, 'sync.slop', '-1.0')
        assert 'must be > 0' in refused.stdout + refused.stderr
        accepted = launch.cli('param', 'set', '--no-daemon', '--timeout', '10', fqn, 'sync.slop', '0.05')
        assert 'Set parameter successful' in accepted.stdout
        # the lifecycle through the CLI
        assert 'Transitioning successful' in launch.cli('lifecycle', 'set', '--no-daemon', '--spin-time', '3',
                                                        fqn, 'deactivate').stdout
        assert launch.state().startswith('inactive')
        assert 'Transitioning successful' in launch.cli('lifecycle', 'set', '--no-daemon', '--spin-time', '3',
                                                        fqn, 'activate').stdout
        assert launch.state().startswith('active')
    finally:
        launch.stop()
    assert launch.proc.returncode == 0, launch.log()
    assert 'Traceback' not in launch.log(), launch.log()


def _environment(pid):
    with open(f'/proc/{pid}/environ', 'rb') as handle:
        return dict(item.split(b'=', 1) for item in handle.read().split(b'\0') if b'=' in item)


def test_ros2_launch_shuts_down_when_the_node_dies(ros2, tmp_path):
    launch = Launch(ros2, tmp_path, '/dies')
    try:
        launch.wait_active()
        pid = launch.wait_node_pid()
        # the node process gets the large-image Fast DDS profile (the test's own setting, from env.sh, wins
        # when set) and a passive OpenMP wait policy
        env = _environment(pid)
        expected = os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '').encode() or b'fastdds_large_images.xml'
        assert env[b'FASTDDS_DEFAULT_PROFILES_FILE'].endswith(expected), env.get(b'FASTDDS_DEFAULT_PROFILES_FILE')
        assert env.get(b'OMP_WAIT_POLICY') == os.environ.get('OMP_WAIT_POLICY', 'PASSIVE').encode()
        os.kill(pid, signal.SIGKILL)
        try:
            launch.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'ros2 launch still running 30 s after its node died:\n{launch.log()}') from None
    finally:
        launch.stop()
    assert 'process has died' in launch.log() and 'exit code -9' in launch.log()
    assert 'shutting down launched system' in launch.log(), launch.log()
    # launch exits 0 after a Shutdown action (it cannot pass the node's exit status on)
    assert launch.proc.returncode == 0, launch.log()


def test_ros2_launch_respawns_the_node_and_it_activates_itself(ros2, tmp_path):
    launch = Launch(ros2, tmp_path, '/respawned', 'respawn:=true', 'respawn_delay:=0.5')
    try:
        launch.wait_active()
        first = launch.wait_node_pid()
        os.kill(first, signal.SIGKILL)
        second = launch.wait_node_pid(exclude=(first,))
        assert second != first
        launch.wait_active()
        assert launch.proc.poll() is None
    finally:
        launch.stop()
