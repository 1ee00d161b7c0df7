"""The benchmark scripts (benchmarks/) as a user runs them: every one starts in the shell of
scripts/env.sh, bad options are refused with the reason (exit code 2) before any work, and the options
that looked accepted but did nothing (or hung) now work or are refused."""
import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO_ROOT, ros_subprocess_env

BENCHMARKS = REPO_ROOT / 'benchmarks'
SCRIPTS = ('bench_tracker', 'bench_acceleration', 'bench_node', 'bench_dds_transport', 'soak')


def load(name):
    spec = importlib.util.spec_from_file_location(f'_bench_{name}', BENCHMARKS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', SCRIPTS)
def test_help_runs_in_the_env_sh_shell(name):
    """scripts/env.sh exports PYTHONSAFEPATH=1, which keeps a script's own folder off sys.path:
    bench_acceleration.py failed there with `No module named 'bench_tracker'`."""
    proc = subprocess.run([sys.executable, BENCHMARKS / f'{name}.py', '--help'], cwd=REPO_ROOT,
                          env=ros_subprocess_env(PYTHONSAFEPATH='1'), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'usage:' in proc.stdout and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('name, args, message', [
    ('bench_tracker', ['--size', '640'], 'must be WIDTHxHEIGHT'),
    ('bench_tracker', ['--frames', '0'], 'integer >= 1'),
    ('bench_tracker', ['--threads', '0'], 'integer >= 1'),
    ('bench_tracker', ['--configs', 'nope'], "unknown configuration name 'nope'"),
    ('bench_tracker', ['--json', '/nonexistent/folder/r.json'], 'does not exist'),
    ('bench_acceleration', ['--options', 'fp16/eager'], "'fp16' needs a CUDA device"),
    ('bench_acceleration', ['--options', 'fp32/bogus'], 'backend must be one of'),
    ('bench_acceleration', ['--options', 'fp32/eager'], 'baseline'),
    ('bench_acceleration', ['--count', '4'], '--count applies to --sequences demo'),
    ('bench_acceleration', ['--sequences', 'demo', '--seed', '3'], '--seed applies to --sequences synthetic'),
    ('bench_acceleration', ['--frames', '0'], 'integer >= 1'),
    ('bench_acceleration', ['--first-seed', '900000'], '--first-seed and --size apply to --sequences demo'),
    ('bench_acceleration', ['--sequences', 'demo', '--size', '640'], 'must be WIDTHxHEIGHT'),
    ('bench_node', ['--frames', '30'], 'all of it left out by --skip-s 1'),
    ('bench_node', ['--backend', 'bogus'], 'backend must be one of'),
    ('bench_node', ['--precision', 'fp16'], "'fp16' needs a CUDA device"),
    ('bench_node', ['--precision', 'auto', '--backend', 'bogus'], 'backend must be one of'),
    ('bench_node', ['--dds-profile', '/nonexistent.xml'], 'is not a file'),
    ('bench_node', ['--rate', '0'], 'finite number > 0'),
    ('bench_dds_transport', ['--frames', '10', '--skip', '10'], 'leaves none of the 10 --frames'),
    ('bench_dds_transport', ['--sizes', '0'], 'integer >= 1'),
    ('soak', ['--size', '64'], 'must be WIDTHxHEIGHT'),
    ('soak', ['--pairs', '0'], 'integer >= 1'),
    ('soak', ['--model-config', 'nope'], "unknown configuration name 'nope'"),
])
def test_bad_options_are_refused_with_the_reason(name, args, message, capsys):
    """Before: tracebacks (ValueError, StatisticsError, RuntimeError from torch, FileNotFoundError after the
    whole run), or a node benchmark that streamed, then said only 'no tracked pairs in the measuring window'."""
    module = load(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_soak_rss_trend_is_not_judged_on_a_short_run():
    """A 100-pair run's RSS wobble extrapolated to 10k pairs failed `rss_slope` (the docstring's short
    example reported FAILED on a flat node); a long run with the same trend still fails."""
    soak = load('soak')

    def summarize(pairs, rise_mib):
        args = SimpleNamespace(pairs=pairs, rate=100.0, size=(64, 48), model_config='m', cycle_every=0,
                               cleanup_every=0, torch_threads=1, max_rss_growth_mib=30.0, max_rss_slope_mib=5.0,
                               max_rss_per_cycle_mib=0.5, max_latency_drift=2.0)
        fake = SimpleNamespace(args=args, targets=[(0, 0.01, True)] * 10, log_lines=[], sent=pairs,
                               proc=SimpleNamespace(returncode=0))
        samples = [{'pairs': k * pairs // 10, 't': k, 'phase': 0, 'rss_mib': 400 + rise_mib * k / 10,
                    'threads': 21, 'fds': 20} for k in range(1, 11)]
        return soak.Soak.summarize(fake, samples, [], samples[-1], (pairs, 0), 1.0, {})

    short = summarize(100, 0.3)     # +0.3 MiB over 100 pairs: ~+33 MiB per 10k
    assert short['rss_mib']['slope_per_10k_pairs'] > 5 and not short['rss_mib']['slope_checked']
    assert short['checks']['rss_slope'] and short['passed']
    long = summarize(10_000, 9.0)   # +9 MiB over 10k pairs: a leak
    assert long['rss_mib']['slope_per_10k_pairs'] > 5 and long['rss_mib']['slope_checked']
    assert not long['checks']['rss_slope'] and not long['passed']


@pytest.mark.ros
def test_dds_transport_with_one_image_size(tmp_path):
    """`--sizes N` with one size (or three) published on the first two topics only and waited ~90 s for a
    second topic that never came; now every size gets its own topic."""
    proc = subprocess.run([sys.executable, BENCHMARKS / 'bench_dds_transport.py', '--sizes', '2000', '--frames', '4',
                           '--skip', '1', '--rate', '50', '--placements', 'none'], cwd=REPO_ROOT,
                          env=ros_subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '2000 B: 4 received' in proc.stdout, proc.stdout
    assert 'machine:' in proc.stdout


def test_paired_confidence_interval_of_a_success_change():
    """The +- beside an option's SR change: a per-sequence paired t interval, so that a change inside
    closed-loop luck is not read as an accuracy effect (or as none)."""
    from ckd_ros.core import metrics
    module = load('bench_acceleration')

    def score(values):
        return metrics.BenchmarkScore('generic', {}, {}, {f's{i}': {'SR': v} for i, v in enumerate(values)},
                                      [f's{i}' for i in range(len(values))], len(values), {})
    reference = score([0.5, 0.6, 0.7, 0.4])
    assert module.paired_ci95(score([0.5, 0.6, 0.7, 0.4]), reference, 'SR') == 0.0
    changes = np.array([1.0, -3.0, 2.0, 4.0])   # points
    half = module.paired_ci95(score([0.5 + 0.01, 0.6 - 0.03, 0.7 + 0.02, 0.4 + 0.04]), reference, 'SR')
    assert half == pytest.approx(3.182 * changes.std(ddof=1) / 2, rel=1e-6)
    assert np.isnan(module.paired_ci95(score([0.5]), score([0.4]), 'SR'))


def test_acceleration_benchmark_names_the_onnxruntime_version(capsys):
    """The issue: every benchmark prints the CPU, torch and ONNX Runtime versions, threads and load; the
    machine line used to be printed before ONNX Runtime was loaded, so it never named it."""
    pytest.importorskip('onnxruntime')
    module = load('bench_acceleration')
    assert module.main(['--configs', 'ckd_tiny', '--frames', '1', '--options', 'fp32/onnxruntime']) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith('machine: ') and 'onnxruntime 1.' in first and 'torch 2.' in first
    assert 'load average' in first and 'threads' in first
