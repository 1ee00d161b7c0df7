"""One source per option vocabulary (ckd_ros.core.options; thermal gain: ckd_ros.core.image), and the device
resolved and checked once on its way from the name to the network."""
import re

import pytest

from conftest import REPO_ROOT, TEST_DIR
from ckd_ros.core import options

MICRO_CONFIG = TEST_DIR / 'data' / 'node_micro_config.yaml'


@pytest.mark.parametrize('text, name', [('auto', 'auto'), (' CPU ', 'cpu'), ('cuda', 'cuda'), ('Cuda:1', 'cuda:1')])
def test_device_names_are_normalised(text, name):
    assert options.parse_device(text) == name


@pytest.mark.parametrize('text', ['tpu', '', 'cuda:', 'cuda:x', 'cuda:-1', None, 3])
def test_other_device_names_are_refused_with_the_grammar(text):
    with pytest.raises(ValueError, match=re.escape(options.DEVICE_GRAMMAR)):
        options.parse_device(text)


def test_every_user_of_a_vocabulary_takes_it_from_its_one_source():
    from ckd_ros.cli import eval as eval_cli
    from ckd_ros.core import acceleration, api, image
    from ckd_ros.ros import params
    assert acceleration.PRECISIONS is options.PRECISIONS and acceleration.BACKENDS is options.BACKENDS
    assert acceleration.CPU_ONLY_BACKENDS is options.CPU_ONLY_BACKENDS and acceleration.AUTO is options.AUTO
    assert params.PRECISION_CHOICES is options.PRECISION_CHOICES and params.BACKEND_CHOICES is options.BACKEND_CHOICES
    assert api.RECIPE_CHECKPOINTS is options.RECIPE_CHECKPOINTS is eval_cli.RECIPE_CHECKPOINTS
    run = eval_cli.build_parser()._subparsers._group_actions[0].choices['run']
    action = {a.dest: a for a in run._actions}
    assert action['precision'].choices is options.PRECISION_CHOICES
    assert action['backend'].choices is options.BACKEND_CHOICES
    # one default thermal gain for the node, ckd-eval and ThermalGainControl
    assert action['thermal_gain'].choices is image.GAIN_MODES
    assert action['thermal_gain'].default == image.DEFAULT_GAIN_MODE
    assert next(s.default for s in params.PARAMETER_SPECS if s.name == 'thermal.gain') == image.DEFAULT_GAIN_MODE
    assert image.ThermalGainControl().mode == image.DEFAULT_GAIN_MODE


def test_no_copy_of_a_vocabulary_is_left_in_the_code():
    copies = {r"\('fp32', 'bf16'": 'ckd_ros/core/options.py',
              r"'onnxruntime', 'onnxruntime-int8'\)": 'ckd_ros/core/options.py',
              r"\('recipe', 'random'\)": 'ckd_ros/core/options.py',
              r"\('minmax', 'percentile', 'fixed'\)": 'ckd_ros/core/image.py'}
    files = [p for folder in ('ckd_ros', 'ckd_train', 'benchmarks') for p in (REPO_ROOT / folder).rglob('*.py')]
    for pattern, home in copies.items():
        where = sorted(str(p.relative_to(REPO_ROOT)) for p in files if re.search(pattern, p.read_text()))
        assert where == [home], (pattern, where)


def test_init_tracker_resolves_and_checks_the_device_once(monkeypatch):
    """Before: the name was checked twice and the device resolved twice (init_tracker and the
    select_acceleration it called), with a round trip between api and acceleration."""
    from ckd_ros.core import api
    calls = {'resolve': 0, 'check_request': 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(api, 'resolve_device', counting('resolve', api.resolve_device))
    monkeypatch.setattr(api, 'check_request', counting('check_request', api.check_request))
    tracker = api.init_tracker(str(MICRO_CONFIG), checkpoint='random', device='cpu', precision='auto')
    assert tracker.precision_choice.precision in options.PRECISIONS
    assert calls['resolve'] == 1 and calls['check_request'] == 1, calls
    with pytest.raises(ValueError, match='precision must be one of'):
        api.init_tracker(str(MICRO_CONFIG), checkpoint='random', device='cpu', precision='fp8')
    with pytest.raises(ValueError, match=re.escape(options.DEVICE_GRAMMAR)):
        api.init_tracker(str(MICRO_CONFIG), checkpoint='random', device='tpu')
