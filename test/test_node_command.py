"""The tracker node's command line (ckd_ros.ros.node_command), shared by make demo, the benchmarks and the
node tests: values reach rcl as the parameter types the node declares."""
import signal
import time
from pathlib import Path

import pytest

from ckd_ros.ros.node_command import launch_parameter_overrides, param_value, tracker_node_args


@pytest.mark.parametrize('value, text', [
    (True, 'true'), (False, 'false'), (3, '3'), (0.1, '0.1'), (2.0, '2.0'), ('cpu', 'cpu'), ('', "''"),
    ([1.0, 2.5, 3.0, 4.0], '[1.0,2.5,3.0,4.0]'), ((1, 2), '[1,2]'),
    ([0.5, 0, 0, 1], '[0.5,0.0,0.0,1.0]'), (['a', 'b'], '[a,b]'),
])
def test_values_are_written_as_rcl_parses_them(value, text):
    assert param_value(value) == text


@pytest.mark.ros
def test_rcl_parses_a_list_of_ints_and_floats_as_written():
    """rcl refuses '[0.5,0]' ("Failed to parse global arguments"), so a homography written with
    integer zeros stopped the node at start-up."""
    rclpy = pytest.importorskip('rclpy')
    from rclpy._rclpy_pybind11 import RCLError

    def parses(text):
        context = rclpy.Context()
        try:
            rclpy.init(context=context, args=['--ros-args', '-p', f'thermal.homography:={text}'])
        except RCLError:
            return False
        rclpy.shutdown(context=context)
        return True

    assert not parses('[0.5,0,0,0,0.5,0,0,0,1]')
    assert parses(param_value([0.5, 0, 0, 0, 0.5, 0, 0, 0, 1]))


def test_command_names_the_installed_executable_then_remaps_files_and_overrides(tmp_path):
    params_file = tmp_path / 'p.yaml'
    args = tracker_node_args('tracker', '/robot', {'device': 'cpu', 'initial_box': [1.0, 2.0, 3.0, 4.0]},
                             {'rgb/image': '/cam/rgb'}, [params_file])
    assert Path(args[0]).name == 'ckd_tracker_node' and Path(args[0]).is_file()
    assert args[1:] == ['--ros-args', '-r', '__node:=tracker', '-r', '__ns:=/robot', '-r', 'rgb/image:=/cam/rgb',
                        '--params-file', str(params_file), '-p', 'device:=cpu', '-p', 'initial_box:=[1.0,2.0,3.0,4.0]']
    assert '__ns' not in ' '.join(tracker_node_args('tracker'))   # no namespace: none given


def test_launch_arguments_override_the_parameter_file_only_when_given():
    """The launch file passed device/model_config/checkpoint after params_file at their defaults too, so a
    params_file with device: cuda silently ran with auto."""
    assert launch_parameter_overrides({'device': '', 'model_config': '', 'checkpoint': ''}) == {'autostart': False}
    assert launch_parameter_overrides({'device': 'cuda', 'model_config': '', 'checkpoint': '/w.pth'}) == {
        'device': 'cuda', 'checkpoint': '/w.pth', 'autostart': False}


def test_an_empty_string_and_a_list_reach_rcl_as_the_types_written():
    """The four copies that started the node disagreed: soak.py wrote '' as nothing (``-p key:=``) and every
    list as floats; all now write parameters with param_value."""
    rclpy = pytest.importorskip('rclpy')

    context = rclpy.Context()
    args = tracker_node_args('typed', params={'checkpoint': '', 'initial_box': [1, 2.5, 3, 4], 'torch_threads': 2})
    rclpy.init(context=context, args=args[1:])
    try:
        node = rclpy.create_node('typed', context=context, automatically_declare_parameters_from_overrides=True)
        try:
            assert node.get_parameter('checkpoint').value == ''
            assert node.get_parameter('initial_box').value == [1.0, 2.5, 3.0, 4.0]
            assert node.get_parameter('torch_threads').value == 2
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_every_starter_of_the_node_uses_the_one_helper():
    """make demo, bench_node.py, soak.py and the tests' harness start the node through node_command (the
    command line and the child process), none with a --ros-args list of its own."""
    from conftest import REPO_ROOT
    starters = [REPO_ROOT / 'ckd_ros' / 'ros' / 'demo.py', REPO_ROOT / 'benchmarks' / 'bench_node.py',
                REPO_ROOT / 'benchmarks' / 'soak.py', REPO_ROOT / 'test' / 'peers' / 'node_harness.py',
                REPO_ROOT / 'test' / 'conftest.py']
    for path in starters:
        text = path.read_text()
        assert "'--ros-args'" not in text and 'subprocess.Popen(' not in text.split('class BaselineRuns')[0], path
        assert 'ckd_ros.ros.node_command import' in text, path


def test_a_child_process_keeps_its_output_and_is_stopped_by_sigterm_then_sigkill(tmp_path):
    from ckd_ros.ros.node_command import ChildProcess
    script = tmp_path / 'child.py'
    script.write_text('import os, signal, sys, time\n'
                      "print('env', os.environ['PYTHONUNBUFFERED'], os.environ['EXTRA'])\n"
                      "if sys.argv[1] == 'stubborn':\n"
                      '    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                      "print('ready')\n"
                      'time.sleep(60)\n')
    polite = ChildProcess([script, 'polite'], EXTRA=7)
    output = polite.drain()
    assert polite.drain() is output
    deadline = time.monotonic() + 30
    while 'ready' not in output.lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert output.lines[:2] == ['env 1 7', 'ready'] and polite.tail(1) == 'ready'
    assert polite.cpu_seconds() is not None
    assert polite.stop(timeout=10) == -signal.SIGTERM
    stubborn = ChildProcess([script, 'stubborn'], log_path=tmp_path / 'child.log', EXTRA='x')
    deadline = time.monotonic() + 30
    while 'ready' not in stubborn.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stubborn.stop(timeout=0.5) == -signal.SIGKILL
    assert (tmp_path / 'child.log').read_text().splitlines() == ['env 1 x', 'ready']
    with pytest.raises(ValueError):
        stubborn.drain()      # its output went to the log
