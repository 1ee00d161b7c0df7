"""The launch file names the installed executable and drives the lifecycle; the RViz config shows the
node's debug image and the thermal stream.  launch/launch_ros are not installable from PyPI: the file is
checked by parsing it, and executed only where launch_ros imports."""
import ast
import importlib.util

import pytest
import yaml

from conftest import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / 'launch' / 'ckd_tracker.launch.py'
RVIZ_FILE = REPO_ROOT / 'rviz' / 'ckd_tracker.rviz'


def _module_constants(tree):
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def _calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def _keyword(call, name, constants):
    for keyword in call.keywords:
        if keyword.arg == name:
            value = keyword.value
            if isinstance(value, ast.Name):
                return constants[value.id]
            if isinstance(value, ast.Constant):
                return value.value
            return value
    return None


def test_launch_file_starts_the_lifecycle_node_of_this_package_and_activates_it():
    source = LAUNCH_FILE.read_text()
    tree = ast.parse(source, filename=str(LAUNCH_FILE))
    constants = _module_constants(tree)
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description' for n in tree.body)

    (tracker,) = _calls(tree, 'LifecycleNode')
    assert _keyword(tracker, 'package', constants) == 'ckd_ros'
    assert _keyword(tracker, 'executable', constants) == 'ckd_tracker_node'
    assert _keyword(tracker, 'namespace', constants) is not None, 'launch_ros needs an explicit namespace'
    # The same name is what CMakeLists.txt installs into lib/ckd_ros.
    assert 'scripts/ckd_tracker_node' in (REPO_ROOT / 'CMakeLists.txt').read_text()
    assert (REPO_ROOT / 'scripts' / 'ckd_tracker_node').is_file()

    arguments = {_call_first_string(call) for call in _calls(tree, 'DeclareLaunchArgument')}
    assert {'namespace', 'params_file', 'rgb_topic', 'thermal_topic', 'device', 'checkpoint', 'model_config',
            'use_rviz'} <= arguments
    # configure on start, activate once inactive (portable: no launch_ros autostart argument).
    transitions = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and node.attr.startswith('TRANSITION_')}
    assert transitions == {'TRANSITION_CONFIGURE', 'TRANSITION_ACTIVATE'}
    (handler,) = _calls(tree, 'OnStateTransition')
    assert _keyword(handler, 'goal_state', constants) == 'inactive'
    assert _keyword(handler, 'start_state', constants) == 'configuring'   # not after a deactivate
    # the parameters after params_file: only the given overrides, and autostart false (the node must not
    # also activate itself); see test_node_command.py for launch_parameter_overrides
    (tracker_parameters,) = [kw.value for kw in tracker.keywords if kw.arg == 'parameters']
    assert ast.unparse(tracker_parameters) == (
        "[LaunchConfiguration('params_file'), launch_parameter_overrides(given, autostart=respawn)]")
    for name in ('device', 'model_config', 'checkpoint'):
        (declared,) = [call for call in _calls(tree, 'DeclareLaunchArgument') if _call_first_string(call) == name]
        assert _keyword(declared, 'default_value', constants) == '', f'{name} must default to the file value'
    # The files it refers to exist (installed to share/ckd_ros by CMakeLists.txt).
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {'config', 'ckd_tracker.yaml', 'rviz', 'ckd_tracker.rviz'} <= strings
    assert (REPO_ROOT / 'config' / 'ckd_tracker.yaml').is_file() and RVIZ_FILE.is_file()
    remaps = [elt for call in _calls(tree, 'LifecycleNode') for kw in call.keywords if kw.arg == 'remappings'
              for elt in kw.value.elts]
    assert {elt.elts[0].value for elt in remaps} == {'rgb/image', 'thermal/image'}


def _call_first_string(call):
    first = call.args[0]
    assert isinstance(first, ast.Constant)
    return first.value


def test_launch_description_builds_where_launch_ros_is_installed():
    pytest.importorskip('launch_ros')
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location('ckd_tracker_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {entity.name for entity in description.entities if isinstance(entity, DeclareLaunchArgument)}
    assert {'namespace', 'params_file', 'rgb_topic', 'thermal_topic', 'device', 'checkpoint', 'model_config',
            'use_rviz'} <= names


def test_rviz_config_shows_the_debug_image_and_the_thermal_stream():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = config['Visualization Manager']['Displays']
    images = {d['Name']: d for d in displays if d['Class'] == 'rviz_default_plugins/Image'}
    assert images['CKD debug image']['Topic']['Value'] == '/ckd_tracker/debug_image'
    assert images['CKD debug image']['Topic']['Reliability Policy'] == 'Reliable'
    assert images['Thermal input']['Topic']['Value'] == '/thermal/image'
    # Best effort connects to any camera driver; the range is normalised for 16-bit thermal.
    assert images['Thermal input']['Topic']['Reliability Policy'] == 'Best Effort'
    assert images['Thermal input']['Normalize Range'] is True
    assert config['Visualization Manager']['Global Options']['Fixed Frame']
