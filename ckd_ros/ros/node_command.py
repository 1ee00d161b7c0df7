"""The installed tracker node as a command line and as a child process: where its executable is,
parameters, remappings and parameter files as ``--ros-args`` (:func:`tracker_node_args`, one rule for
every value: :func:`param_value`), the node (or any Python program, e.g. a test peer) started in a
child process with its output kept, stopped with SIGTERM then SIGKILL (:class:`ChildProcess`,
:func:`start_tracker_node`), and which launch arguments override the launch file's parameter file.

The one way ``make demo`` (:mod:`ckd_ros.ros.demo`), ``benchmarks/bench_node.py``, ``benchmarks/soak.py``
and the tests' node harness (``test/conftest.py``, ``test/peers/node_harness.py``) start the node.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
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


def child_environment(**extra) -> dict:
    """Environment of a child ROS process: this one's (the same ROS_DOMAIN_ID), discovery on this machine
    unless ROS_AUTOMATIC_DISCOVERY_RANGE says otherwise, unbuffered output; ``extra`` added as text."""
    env = dict(os.environ)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env['PYTHONUNBUFFERED'] = '1'
    env.update({key: str(value) for key, value in extra.items()})
    return env


class OutputLines:
    """A child's combined output as it arrives, read in a thread (a full pipe would block the child)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip('\n'))

    def text(self) -> str:
        return '\n'.join(self.lines)


class ChildProcess(subprocess.Popen):
    """A Python program (``args`` after the interpreter) in a child process with :func:`child_environment`.

    Its output goes to ``log_path`` when given, else to a pipe: read it yourself (``stdout``), or let
    :meth:`drain` keep it in memory. :meth:`stop` ends it (SIGTERM, then SIGKILL) and closes the log."""

    def __init__(self, args: Iterable, log_path: Path | None = None, **env_extra):
        self.log_path = Path(log_path) if log_path is not None else None
        self._log = open(self.log_path, 'w', encoding='utf-8') if self.log_path is not None else None
        self._output: OutputLines | None = None
        self._terminated = False
        try:
            super().__init__([sys.executable, *map(str, args)], env=child_environment(**env_extra),
                             stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             stdout=self._log if self._log is not None else subprocess.PIPE,
                             text=self._log is None)
        except BaseException:
            if self._log is not None:
                self._log.close()
            raise

    def drain(self) -> OutputLines:
        """The output kept in memory from now on (the same object on every call; not with ``log_path``)."""
        if self._log is not None:
            raise ValueError(f'the output of this process goes to {self.log_path}')
        if self._output is None:
            self._output = OutputLines(self.stdout)
        return self._output

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of its output (the log file, or what :meth:`drain` kept)."""
        if self.log_path is not None:
            try:
                text = self.log_path.read_text(encoding='utf-8', errors='replace').splitlines()
            except OSError:
                return ''
        else:
            text = self._output.lines if self._output is not None else []
        return '\n'.join(text[-lines:])

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds it used so far (``/proc/<pid>/stat``); None where unavailable."""
        return process_cpu_seconds(self.pid)

    def terminate(self) -> None:
        self._terminated = True
        super().terminate()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM if it still runs (once: not again after :meth:`terminate`), SIGKILL after ``timeout`` s;
        waits for it and closes its log. Its exit code."""
        if self.poll() is None:
            if not self._terminated:
                self.terminate()
            try:
                self.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()
        if self._log is not None:
            self._log.close()
        return self.returncode


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``); None where unavailable."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return None


def start_tracker_node(name: str = 'ckd_tracker', namespace: str = '', params: Mapping | None = None,
                       remaps: Mapping[str, str] | None = None, params_files: Iterable = (),
                       log_path: Path | None = None, **env_extra) -> ChildProcess:
    """The installed tracker node (:func:`tracker_node_args`) in a child process (:class:`ChildProcess`)."""
    return ChildProcess(tracker_node_args(name, namespace, params, remaps, params_files), log_path, **env_extra)


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
