"""Node parameters: validation names the bad parameter; config/ckd_tracker.yaml and the README document
every parameter with its default; the node loads the file and a bad value fails configure (recoverably)."""
import pytest
import yaml

from conftest import REPO_ROOT
from ckd_ros.ros.params import (DIAGNOSTIC_PERIOD_PARAMETER, PARAMETER_SPECS, ParameterError,
                                check_parameter_update, read_parameters)

CONFIG_FILE = REPO_ROOT / 'config' / 'ckd_tracker.yaml'


def _values(**overrides):
    values = {spec.name: spec.default for spec in PARAMETER_SPECS}
    values.update(overrides)
    return values.__getitem__


def _flatten(tree, prefix=''):
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def test_defaults_are_valid():
    params = read_parameters(_values())
    assert params.model_config == 'ckd_tiny' and params.device == 'auto' and params.initial_box is None
    assert params.input_reliability == 'best_effort' and params.sync_slop == 0.05
    assert params.make_gain_control().mode == 'minmax'


@pytest.mark.parametrize('name, value, message', [
    ('sync.slop', -0.1, "parameter 'sync.slop': must be > 0.0, got -0.1"),
    ('sync.slop', 'fast', "parameter 'sync.slop': must be a finite number, got 'fast'"),
    ('sync.queue_size', 0, "parameter 'sync.queue_size': must be >= 1, got 0"),
    ('input.reliability', 'sensor', "parameter 'input.reliability': must be one of best_effort, reliable"),
    ('input.depth', 2.5, "parameter 'input.depth': must be an integer, got 2.5"),
    ('device', 'tpu', "parameter 'device': must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ('model_config', ' ', "parameter 'model_config': must not be empty"),
    ('thermal.gain', 'auto', "parameter 'thermal.gain': must be one of minmax, percentile, fixed"),
    ('thermal.percentile_high', 0.5, "parameter 'thermal.percentile_high': must be above thermal.percentile_low"),
    ('thermal.fixed_max', -1.0, "parameter 'thermal.fixed_max': must be above thermal.fixed_min"),
    ('thermal.range_smoothing', 1.0, "parameter 'thermal.range_smoothing': must be < 1.0"),
    ('thermal.registration', 'warp', "parameter 'thermal.registration': must be one of identity, resize, homography"),
    ('thermal.homography', [1.0, 0.0, 0.0], "parameter 'thermal.homography': must be a list of 9 numbers, got 3"),
    ('thermal.homography', [0.0] * 9, "parameter 'thermal.homography': homography"),
    ('initial_box', [10.0, 10.0, 0.0, 5.0], "parameter 'initial_box': needs x, y >= 0 and width, height > 0"),
    ('initial_box', [1.0, 2.0], "parameter 'initial_box': must be a list of 4 numbers, got 2"),
    ('autostart', 'yes', "parameter 'autostart': must be true or false, got 'yes'"),
    ('status_period', 0.0, "parameter 'status_period': must be >= 0.01, got 0.0"),
    ('status_period', 1e-9, "parameter 'status_period': must be >= 0.01, got 1e-09"),
    ('input.jump_back_threshold', 1e-12, "parameter 'input.jump_back_threshold': must be >= 0.001, got 1e-12"),
    ('target.history_max_mb', 1e308, "parameter 'target.history_max_mb': must be <= 1000000.0"),
    ('target.history_size', 2**40, "parameter 'target.history_size': must be <= 100000"),
    ('sync.queue_size', 2**31, "parameter 'sync.queue_size': must be <= 100000"),
    ('stats_window', 10**9, "parameter 'stats_window': must be <= 1000000"),
    ('torch_threads', 64000, "parameter 'torch_threads': must be <= 256"),
    ('target.history_size', 0, "parameter 'target.history_size': must be >= 1, got 0"),
    ('input.jump_back_threshold', 1e12, "parameter 'input.jump_back_threshold': must be <= 1000000.0, "
                                        'got 1000000000000.0'),
    ('sync.slop', 1e10, "parameter 'sync.slop': must be <= 1000000.0"),
    ('status_period', 1e12, "parameter 'status_period': must be <= 1000000.0"),
    ('input.depth', 2**31, "parameter 'input.depth': must be <= 10000, got 2147483648"),
])
def test_an_invalid_value_names_the_parameter(name, value, message):
    with pytest.raises(ParameterError) as raised:
        read_parameters(_values(**{name: value}))
    assert str(raised.value).startswith(message)
    assert raised.value.name == name


def test_a_parameter_update_is_refused_only_for_the_problems_it_causes():
    current = _values()
    assert check_parameter_update(current, {'sync.slop': 0.1, 'thermal.gain': 'fixed'}) is None
    assert check_parameter_update(current, {'sync.slop': -0.1}) == "parameter 'sync.slop': must be > 0.0, got -0.1"
    # a conflict with a parameter that is not updated refuses the update
    assert check_parameter_update(current, {'thermal.percentile_low': 99.5}).startswith(
        "parameter 'thermal.percentile_high': must be above thermal.percentile_low (99.5)")
    assert check_parameter_update(current, {'thermal.percentile_low': 99.5, 'thermal.percentile_high': 99.9}) is None
    # values that are invalid already (from a file) do not block fixing the others one at a time
    broken = _values(**{'sync.slop': -1.0, 'input.depth': 0, 'thermal.fixed_max': -5.0})
    assert check_parameter_update(broken, {'input.depth': 3}) is None
    assert check_parameter_update(broken, {'sync.slop': 0.02}) is None
    assert check_parameter_update(broken,
                                  {'input.depth': 'x'}) == "parameter 'input.depth': must be an integer, got 'x'"


def test_integers_are_accepted_where_numbers_are_expected():
    params = read_parameters(_values(**{'sync.slop': 1, 'initial_box': [1, 2, 30, 40]}))
    assert params.sync_slop == 1.0 and params.initial_box == (1.0, 2.0, 30.0, 40.0)


def test_the_parameter_file_documents_every_parameter_with_its_default():
    loaded = yaml.safe_load(CONFIG_FILE.read_text())
    documented = _flatten(loaded['/**']['ros__parameters'])
    expected = {spec.name: spec.default for spec in PARAMETER_SPECS}
    expected[DIAGNOSTIC_PERIOD_PARAMETER] = 1.0
    assert documented == expected
    for spec in PARAMETER_SPECS:
        assert spec.description, spec.name


def test_doc_lists_every_parameter():
    text = (REPO_ROOT / 'README.md').read_text()
    missing = [spec.name for spec in PARAMETER_SPECS if f'`{spec.name}`' not in text]
    assert not missing, missing
    assert '`~/set_target`' in text and '`~/init_box`' in text and 'best_effort' in text


@pytest.mark.ros
def test_node_loads_the_parameter_file_and_a_bad_value_fails_configure_until_fixed(rclpy_context, spawn_process,
                                                                                   tmp_path):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    from ckd_ros.msg import TrackerStatus
    from peers.node_harness import OutputDrain, RosTestClient, micro_model_params, node_command

    # The shipped file, then an overlay as a user would write one (later files win).
    overlay = tmp_path / 'site.yaml'
    overlay.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'thermal': {'gain': 'minmax', 'range_smoothing': 0.5}, 'sync': {'slop': -1.0}}}}))
    namespace, fqn = '/params', '/params/ckd_tracker'
    # The file's model (ckd_tiny), with untrained weights: the test is about parameters.
    params = micro_model_params()
    del params['model_config']
    node = spawn_process(node_command(namespace, params=params, params_files=(CONFIG_FILE, overlay)))
    out = OutputDrain(node)
    client = RosTestClient(rclpy_context)
    try:
        statuses = client.record(TrackerStatus, f'{fqn}/status')
        names = ['thermal.gain', 'thermal.range_smoothing', 'thermal.percentile_high', 'sync.queue_size',
                 'initial_box', 'model_config']
        got = client.call(GetParameters, f'{fqn}/get_parameters', GetParameters.Request(names=names), output=out)
        values = dict(zip(names, got.values))
        assert values['thermal.gain'].string_value == 'minmax'
        assert values['thermal.range_smoothing'].double_value == 0.5
        assert values['thermal.percentile_high'].double_value == 99.0       # from the shipped file
        assert values['sync.queue_size'].integer_value == 10
        assert list(values['initial_box'].double_array_value) == [0.0, 0.0, 0.0, 0.0]
        assert values['model_config'].string_value == 'ckd_tiny'

        assert not client.change_state(fqn, 'configure', out)
        assert client.get_state(fqn) == 'unconfigured'
        expected = "configure failed: parameter 'sync.slop': must be > 0.0, got -1.0"
        client.wait_for(lambda: statuses and statuses[-1].last_error == expected, 20, 'the configure error', out)
        assert any(expected in line for line in out.lines)

        def set_double(name, value):
            parameter = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                                   double_value=value))
            return client.call(SetParameters, f'{fqn}/set_parameters',
                               SetParameters.Request(parameters=[parameter])).results[0]

        # A bad value is refused when it is set (the file's bad value does not block fixing others)...
        result = set_double('thermal.range_smoothing', 1.5)
        assert not result.successful and result.reason == "parameter 'thermal.range_smoothing': must be < 1.0, got 1.5"
        got = client.call(GetParameters, f'{fqn}/get_parameters',
                          GetParameters.Request(names=['thermal.range_smoothing']))
        assert got.values[0].double_value == 0.5, 'a refused value is not stored'
        assert set_double('thermal.range_smoothing', 0.25).successful
        # ... and the fix is accepted.
        assert set_double('sync.slop', 0.03).successful
        assert client.change_state(fqn, 'configure', out)
        assert client.get_state(fqn) == 'inactive'
        client.wait_for(lambda: statuses[-1].lifecycle_state == 'inactive' and statuses[-1].last_error == '', 20,
                        'an inactive status without error', out)
        # Configured: an accepted value says when it takes effect.
        assert set_double('sync.slop', 0.04).successful
        client.wait_for(lambda: any('sync.slop set; they take effect at the next configure' in line
                                    for line in out.lines), 10, 'the log line', out)
    finally:
        client.close()


@pytest.mark.ros
def test_the_largest_accepted_values_activate_and_larger_ones_fail_configure(rclpy_context):
    """Durations and depths beyond what rclpy holds (int64 nanoseconds, a 32-bit QoS depth) used to pass
    configure and make activate raise (OverflowError, TypeError: a traceback and error processing), and a huge
    status_period crashed the constructor."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ckd_ros.ros.node import CkdTrackerNode
    from ckd_ros.ros.params import MAX_INPUT_DEPTH, MAX_SECONDS, MIN_JUMP_BACK_S, MIN_PUBLISH_PERIOD
    from peers.node_harness import micro_model_params

    model = {**micro_model_params(), 'warmup': False}
    seconds = ('input.timeout', 'input.jump_back_threshold', 'sync.slop', 'target.max_stamp_offset', 'status_period')
    largest = {**{name: MAX_SECONDS for name in seconds}, 'input.depth': MAX_INPUT_DEPTH}
    node = CkdTrackerNode('ckd_largest', context=rclpy_context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in {**model, **largest}.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state_label() == 'active' and node._issues.last_error == ''
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.release_everything()
        node.destroy_node()
    # the smallest accepted values activate too (input.jump_back_threshold 1e-12 made activate raise)
    smallest = {'status_period': MIN_PUBLISH_PERIOD, 'input.jump_back_threshold': MIN_JUMP_BACK_S,
                'diagnostic_updater.period': MIN_PUBLISH_PERIOD}
    node = CkdTrackerNode('ckd_smallest', context=rclpy_context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in {**model, **smallest}.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node._issues.last_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS, node._issues.last_error
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    finally:
        node.release_everything()
        node.destroy_node()
    for name, value in [*((name, MAX_SECONDS * 1e6) for name in seconds), ('input.depth', 2**31)]:
        node = CkdTrackerNode('ckd_too_large', context=rclpy_context,
                              parameter_overrides=[Parameter(k, value=v) for k, v in {**model, name: value}.items()])
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, name
            assert node._issues.last_error.startswith(f"configure failed: parameter '{name}': must be <= ")
        finally:
            node.release_everything()
            node.destroy_node()


def test_doc_lists_every_launch_argument():
    import ast
    tree = ast.parse((REPO_ROOT / 'launch' / 'ckd_tracker.launch.py').read_text())
    arguments = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, 'id', None) == 'DeclareLaunchArgument'}
    assert {'params_file', 'device', 'model_config', 'checkpoint'} <= arguments
    section = (REPO_ROOT / 'README.md').read_text().split('## The tracker node', 1)[1].split('\n## ', 1)[0]
    missing = sorted(name for name in arguments if f'`{name}`' not in section)
    assert not missing, missing


@pytest.mark.ros
def test_precision_auto_and_torch_threads_zero_are_resolved_at_configure_and_reported(rclpy_context):
    import torch
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ckd_ros.core.api import select_acceleration
    from ckd_ros.core.cpu_info import choose_threads
    from ckd_ros.ros.node import CkdTrackerNode
    from peers.node_harness import micro_model_params

    expected = select_acceleration('auto', 'auto', 'cpu')
    params = {**micro_model_params(), 'warmup': False, 'precision': 'auto', 'backend': 'auto', 'torch_threads': 0}
    threads_before = torch.get_num_threads()
    node = CkdTrackerNode('ckd_auto', context=rclpy_context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node._issues.last_error
        assert node._acceleration == f'{expected.precision}/{expected.backend}'
        assert torch.get_num_threads() == choose_threads(0).threads
        status = node._diagnose(_Recorder())
        assert dict(status.values)['acceleration'] == node._acceleration
    finally:
        torch.set_num_threads(threads_before)
        node.release_everything()
        node.destroy_node()


class _Recorder:
    """The part of a DiagnosticStatusWrapper the node's task uses, recording str values only."""

    def __init__(self):
        self.values = []

    def summary(self, level, message):
        self.level, self.message = level, message

    def add(self, key, value):
        assert isinstance(value, str), (key, value)
        self.values.append((key, value))
