"""The installed tracker node as a command line: where its executable is, and parameters, remappings
and parameter files as ``--ros-args`` (used by ``make demo``, the benchmarks and the tests' node harness),
and which launch arguments override the launch file's parameter file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

EXECUTABLE = 'ckd_tracker_node'


def node_executable() -> Path:
    """``lib/ckd_ros/ckd_tracker_node`` of the built package (FileNotFoundError saying what to run)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        prefix = Path(get_package_prefix('ckd_ros'))
    except PackageNotFoundError:
        raise FileNotFoundError('the ckd_ros package is not built or not sourced: run `make build` and '
                                '`source scripts/env.sh`') from None
    path = prefix / 'lib' / 'ckd_ros' / EXECUTABLE
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: run `make build`')
    return path


def param_value(value) -> str:
    """A Python value as the text of ``-p name:=<text>`` (YAML as rcl parses it)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        # rcl refuses a mixed list ([0.5,0] fails "Failed to parse global arguments"): with a float in
        # it, every number is written as a float
        if any(isinstance(v, float) for v in value) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            value = [float(v) for v in value]
        return '[' + ','.join(param_value(v) for v in value) + ']'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value == '':
        return "''"
    return str(value)


def tracker_node_args(name: str = 'ckd_tracker', namespace: str = '', params: Mapping | None = None,
                      remaps: Mapping[str, str] | None = None, params_files: Iterable = ()) -> list[str]:
    """``[executable, '--ros-args', ...]``: the node named ``name`` in ``namespace``, then the
    ``params_files`` (later ones win), then ``params`` as -p overrides."""
    args = [str(node_executable()), '--ros-args', '-r', f'__node:={name}']
    if namespace:
        args += ['-r', f'__ns:={namespace}']
    for source, target in (remaps or {}).items():
        args += ['-r', f'{source}:={target}']
    for params_file in params_files:
        args += ['--params-file', str(params_file)]
    for key, value in (params or {}).items():
        args += ['-p', f'{key}:={param_value(value)}']
    return args


# Launch arguments that override a parameter of the node's parameter file only when given.
LAUNCH_PARAMETER_ARGUMENTS = ('device', 'model_config', 'checkpoint')


def launch_parameter_overrides(values: Mapping[str, str], autostart: bool = False) -> dict:
    """The parameters the launch file sets after ``params_file``: the launch arguments of
    :data:`LAUNCH_PARAMETER_ARGUMENTS` that were given (non-empty), and ``autostart`` (false when the
    launch file drives the lifecycle; true for a respawned node, which must activate itself). An empty
    argument leaves the file's value (or the node's default) in place: a params_file with
    ``device: cuda`` is not overridden by a default ``auto``."""
    overrides = {name: values[name] for name in LAUNCH_PARAMETER_ARGUMENTS if values.get(name, '') != ''}
    overrides['autostart'] = bool(autostart)
    return overrides
