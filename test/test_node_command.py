"""The tracker node's command line (ckd_ros.ros.node_command), shared by make demo, the benchmarks and the
node tests: values reach rcl as the parameter types the node declares."""
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
