"""Reports of an evaluation run: tables (text, markdown, JSON), precision/success plots (PNG), the
per-attribute breakdown, and a performance JSON in the style of ros2_benchmark.

The performance keys follow ros2_benchmark's ``BasicPerformanceMetrics`` names (milliseconds, frames
per second; jitter = |second difference| of the output times), so numbers can be put beside Isaac ROS
tables; keys that ros2_benchmark does not have (latency percentiles, CPU use of this process) are
added under the same prefixes and named for what they are.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence as SequenceType

import numpy as np

from ckd_ros.core.atomic import atomic_write
from ckd_ros.core.metrics import GTOT_PRECISION_INDEX, PRECISION_INDEX, BenchmarkScore, attribute_breakdown
from ckd_ros.core.results import atomic_write_text


# --------------------------------------------------------------------------------------------
# Tables

def _pct(value: float) -> str:
    return f'{100 * value:.1f}' if np.isfinite(value) else '-'


def sequence_fps(times: np.ndarray | None) -> float:
    """Tracking speed of a sequence: frames after the first / their summed time (initialisation excluded)."""
    if times is None or len(times) < 2:
        return float('nan')
    measured = np.asarray(times[1:], dtype=np.float64)
    measured = measured[np.isfinite(measured)]   # nan: a frame without a measurement (dropped pair)
    total = float(measured.sum())
    return len(measured) / total if total > 0 else float('nan')


def overall_label(scored: int, total: int | None = None) -> str:
    """``ALL (n)``, or ``ALL (n of N)`` when only ``n`` of the benchmark's ``N`` sequences were scored."""
    return f'ALL ({scored} of {total})' if total is not None and scored < total else f'ALL ({scored})'


def score_table(score: BenchmarkScore, times: Mapping[str, np.ndarray] | None = None,
                markdown: bool = True, total: int | None = None, rates: Mapping[str, float] | None = None,
                latency_ms: Mapping[str, float] | None = None) -> str:
    """Per-sequence rows and an overall row; metric values in percent.

    ``times`` gives an ``fps`` column (frames after the first / their summed time); ``rates`` replaces
    it with ``pairs/s`` as measured elsewhere (a recorded node: answers per second of their time span,
    which is not 1 / latency), and ``latency_ms`` adds a ``latency ms`` column. ``total``: how many
    sequences the benchmark has, so that a partial folder's overall row says ``ALL (n of N)``.
    """
    metrics = list(score.metrics)
    header = ['sequence', 'frames', *metrics]
    if rates is not None:
        header.append('pairs/s')
    elif times:
        header.append('fps')
    if latency_ms is not None:
        header.append('latency ms')
    def rates_of(value):
        return f'{value:.1f}' if value is not None and np.isfinite(value) else '-'
    rows = []
    for name in score.sequences:
        row = [name, str(score.per_sequence[name]['frames'])] + [_pct(score.per_sequence[name][m]) for m in metrics]
        if rates is not None:
            row.append(rates_of(rates.get(name)))
        elif times:
            row.append(rates_of(sequence_fps(times.get(name))))
        if latency_ms is not None:
            row.append(rates_of(latency_ms.get(name)))
        rows.append(row)
    overall = ([overall_label(len(score.sequences), total), str(score.num_frames)]
               + [_pct(score.metrics[m]) for m in metrics])
    if rates is not None:
        # rates of separate recordings do not add up to one rate; one sequence is its own
        overall.append(rates_of(rates.get(score.sequences[0])) if len(score.sequences) == 1 else '-')
    elif times:
        measured = [t[1:][np.isfinite(t[1:])] for t in times.values() if len(t) > 1]
        frames = sum(len(t) for t in measured)
        seconds = sum(float(t.sum()) for t in measured)
        overall.append(f'{frames / seconds:.1f}' if seconds > 0 else '-')
    if latency_ms is not None:
        values = [v for n, v in latency_ms.items() if n in score.per_sequence and v is not None and np.isfinite(v)]
        overall.append(rates_of(float(np.mean(values)) if values else None))
    rows.append(overall)
    return _render(header, rows, markdown)


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines) + '\n'
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    def fmt(r):
        return '  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows]) + '\n'


def attribute_table(breakdown: Mapping[str, BenchmarkScore], markdown: bool = True) -> str:
    if not breakdown:
        return ''
    metrics = list(next(iter(breakdown.values())).metrics)
    rows = [[attr, str(len(s.sequences))] + [_pct(s.metrics[m]) for m in metrics] for attr, s in breakdown.items()]
    return _render(['attribute', 'sequences', *metrics], rows, markdown)


# --------------------------------------------------------------------------------------------
# Plots

_PLOT_LABELS = {
    'PR': ('Location error threshold (px)', 'Precision'),
    'MPR': ('Location error threshold (px)', 'Maximum precision'),
    'NPR': ('Normalized location error threshold', 'Normalized precision'),
    'SR': ('Overlap threshold', 'Success rate'),
    'MSR': ('Overlap threshold', 'Maximum success rate'),
}


def score_point(score: BenchmarkScore, metric: str) -> tuple[float, float] | None:
    """Where on its curve a metric is read: ``(threshold, value)`` for the precisions (20 px, 0.2
    normalized, GTOT's 5 px), None for the success rates (the area under the curve, no point of it)."""
    if metric not in ('PR', 'MPR', 'NPR'):
        return None
    thresholds, curve = score.curves[metric]
    index = GTOT_PRECISION_INDEX if score.benchmark == 'gtot' and metric == 'MPR' else PRECISION_INDEX
    return float(thresholds[index]), float(curve[index])


def _threshold_text(score: BenchmarkScore, metric: str) -> str:
    point = score_point(score, metric)
    if point is None:
        return f'{metric}: area under the curve'
    unit = '' if metric == 'NPR' else ' px'
    return f'{metric} at {point[0]:g}{unit}'


def curve_figure(scores: Mapping[str, BenchmarkScore], metric: str, title: str = ''):
    """A matplotlib Figure with the ``metric`` curve of each run (several trackers on one figure),
    ranked by the metric; the legend carries each value, and on each precision curve a dot marks the
    threshold its value is read at (a dotted line at that threshold)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1].metrics[metric])
    marked = None
    for run, score in ranked:
        thresholds, curve = score.curves[metric]
        (line,) = ax.plot(thresholds, curve, linewidth=2, label=f'{run} [{100 * score.metrics[metric]:.1f}]')
        point = score_point(score, metric)
        if point is not None:
            ax.plot([point[0]], [point[1]], marker='o', markersize=6, color=line.get_color(), linestyle='none',
                    label='_nolegend_')
            marked = point[0]
    if marked is not None:
        ax.axvline(marked, color='0.5', linestyle=':', linewidth=1, label='_nolegend_')
    first = next(iter(scores.values()))
    xlabel, ylabel = _PLOT_LABELS.get(metric, ('threshold', metric))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_xlim(thresholds[0], thresholds[-1])
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f'{metric} ({first.benchmark})')
    ax.legend(loc='lower right' if metric in ('PR', 'MPR', 'NPR') else 'lower left', fontsize=8,
              title=_threshold_text(first, metric), title_fontsize=8)
    return fig


def plot_curves(scores: Mapping[str, BenchmarkScore], metric: str, path: str | os.PathLike, title: str = '') -> Path:
    """One PNG with the ``metric`` curve of each run (see :func:`curve_figure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = curve_figure(scores, metric, title)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda handle: fig.savefig(handle, format='png'))


# --------------------------------------------------------------------------------------------
# Performance (ros2_benchmark style)

class CpuUsage:
    """CPU time of this process and of the whole machine between :meth:`start` and :meth:`stop`."""

    def start(self) -> 'CpuUsage':
        self._wall = time.perf_counter()
        self._proc = time.process_time()
        self._system = _system_cpu_times()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self._wall
        proc = time.process_time() - self._proc
        out = {'wall_s': wall, 'process_cpu_s': proc,
               'process_cpu_percent_of_one_core': 100.0 * proc / wall if wall > 0 else float('nan')}
        end = _system_cpu_times()
        if self._system and end:
            busy = (end[0] - self._system[0])
            total = (end[1] - self._system[1])
            out['overall_cpu_percent'] = 100.0 * busy / total if total > 0 else float('nan')
        return out


def _system_cpu_times() -> tuple[float, float] | None:
    try:
        fields = [float(v) for v in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


# The official code's published CPU speed (seconds per frame, batch 1, fp32), docs/spec/CKD.md sec. 7:
# the full-size configurations without and with candidate elimination.
PUBLISHED_OFFICIAL_SPEED_S = {
    'ckd_4b_dropmae_ckd_tf_cc_mask.25': {'forward_s': 0.591, 'track_s': 0.590},
    'ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead': {'forward_s': 0.486, 'track_s': 0.483},
}


def machine_info() -> dict:
    info = {'hostname': socket.gethostname(), 'platform': platform.platform(), 'machine': platform.machine(),
            'python': platform.python_version(), 'cpu_count': os.cpu_count()}
    try:
        from ckd_ros.core.cpu_info import cpu_class, read_cpu_info
        cpu = read_cpu_info()
        if cpu.model:
            info['cpu_model'] = cpu.model
        info['cpu_class'] = cpu_class(cpu.flags)
        # the flags that decide bf16/int8 speed (the CPU differs from session to session)
        info['cpu_flags'] = sorted(f for f in cpu.flags if f.startswith(
            ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'avx_vnni', 'amx', 'fma', 'bf16', 'i8mm', 'asimd')))
    except Exception:   # never fail a report over the CPU description
        pass
    import sys
    ort = sys.modules.get('onnxruntime')
    if ort is not None:
        info['onnxruntime'] = ort.__version__
    torch = sys.modules.get('torch')   # report torch only when the run used it
    if torch is not None:
        info['torch'] = torch.__version__
        info['torch_threads'] = torch.get_num_threads()
        info['cuda'] = bool(torch.cuda.is_available())
        if info['cuda']:
            info['gpu'] = torch.cuda.get_device_name(0)
    if hasattr(os, 'getloadavg'):
        info['load_average_1min'] = os.getloadavg()[0]   # timings on a busy machine say so
    return info


def machine_line(info: dict | None = None) -> str:
    """One line naming the machine for printed speed figures."""
    info = info or machine_info()
    line = f"machine: {info.get('cpu_model') or info.get('machine')}, {info.get('cpu_count')} CPUs"
    if info.get('cpu_class'):
        line += f" (class {info['cpu_class']}; flags {' '.join(info.get('cpu_flags') or []) or 'none of interest'})"
    if info.get('gpu'):
        line += f", GPU {info['gpu']}"
    if info.get('torch'):
        line += f", torch {info['torch']} with {info['torch_threads']} threads"
    if info.get('onnxruntime'):
        line += f", onnxruntime {info['onnxruntime']}"
    if info.get('load_average_1min') is not None:
        line += f", load average {info['load_average_1min']:.2f}"
    return line


def performance_metrics(latencies_s: SequenceType[float], output_times_ns: SequenceType[int],
                        input_times_ns: SequenceType[int] | None = None, frames_sent: int | None = None,
                        frames_dropped: int | None = None) -> dict:
    """ros2_benchmark ``BasicPerformanceMetrics`` (ms, fps) plus latency percentiles.

    ``latencies_s``: per answered frame, input to output; ``output_times_ns``: when each output was
    produced/received (same clock as ``input_times_ns``, the times the inputs were sent).
    """
    lat_ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    out_ms = np.asarray(output_times_ns, dtype=np.float64) / 1e6
    p = 'BasicPerformanceMetrics.'
    m: dict = {}
    if len(out_ms):
        m[p + 'RECEIVED_DURATION'] = float(out_ms[-1] - out_ms[0])
        if len(out_ms) > 1 and out_ms[-1] > out_ms[0]:
            m[p + 'MEAN_FRAME_RATE'] = len(out_ms) / ((out_ms[-1] - out_ms[0]) / 1e3)
    if input_times_ns is not None and len(input_times_ns) > 1:
        in_ms = np.asarray(input_times_ns, dtype=np.float64) / 1e6
        if in_ms[-1] > in_ms[0]:
            m[p + 'MEAN_PLAYBACK_FRAME_RATE'] = len(in_ms) / ((in_ms[-1] - in_ms[0]) / 1e3)
        if len(out_ms):
            m[p + 'FIRST_SENT_RECEIVED_LATENCY'] = float(out_ms[0] - in_ms[0])
            m[p + 'LAST_SENT_RECEIVED_LATENCY'] = float(out_ms[-1] - in_ms[-1])
    sent = frames_sent if frames_sent is not None else (len(input_times_ns) if input_times_ns is not None else None)
    if sent is not None:
        m[p + 'NUM_FRAMES_SENT'] = int(sent)
        m[p + 'NUM_MISSED_FRAMES'] = int(frames_dropped if frames_dropped is not None else sent - len(out_ms))
    if len(lat_ms):
        m[p + 'FIRST_INPUT_LATENCY'] = float(lat_ms[0])
        m[p + 'LAST_INPUT_LATENCY'] = float(lat_ms[-1])
        m[p + 'MAX_LATENCY'] = float(lat_ms.max())
        m[p + 'MIN_LATENCY'] = float(lat_ms.min())
        m[p + 'MEAN_LATENCY'] = float(lat_ms.mean())
        for q in (50, 95, 99):
            m[p + f'P{q}_LATENCY'] = float(np.percentile(lat_ms, q))
    if len(out_ms) > 2:
        jitter = np.abs(np.diff(np.diff(out_ms)))
        m[p + 'MAX_JITTER'] = float(jitter.max())
        m[p + 'MIN_JITTER'] = float(jitter.min())
        m[p + 'MEAN_JITTER'] = float(jitter.mean())
        m[p + 'STD_DEV_JITTER'] = float(jitter.std())
    return m


def performance_report(metrics: dict, cpu: dict | None = None, config: dict | None = None,
                       name: str = 'ckd_ros') -> dict:
    """The JSON document: metrics, CPU use, and metadata (machine, configuration, time)."""
    doc = dict(metrics)
    if cpu:
        if 'overall_cpu_percent' in cpu:
            doc['ResourceMetrics.MEAN_OVERALL_CPU_UTILIZATION'] = cpu['overall_cpu_percent']
        doc['ResourceMetrics.PROCESS_CPU_PERCENT_OF_ONE_CORE'] = cpu['process_cpu_percent_of_one_core']
    doc['metadata'] = {'name': name, 'test_datetime': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                       'machine': machine_info(), 'config': config or {}}
    return doc


def offline_performance(times: Mapping[str, np.ndarray], cpu: dict | None = None, config: dict | None = None) -> dict:
    """Performance of a run without DDS: per-frame tracker times (initialisation frames excluded),
    outputs spaced by the processing times (back-to-back frames), nothing dropped."""
    latencies, ends, t = [], [], 0.0
    for seq_times in times.values():
        for dt in seq_times[1:]:
            t += float(dt)
            latencies.append(float(dt))
            ends.append(int(round(t * 1e9)))
    m = performance_metrics(latencies, ends, frames_sent=len(latencies), frames_dropped=0)
    total = sum(latencies)
    if total > 0:
        m['BasicPerformanceMetrics.MEAN_FRAME_RATE'] = len(latencies) / total
    return performance_report(m, cpu, config, name='ckd_ros offline (no DDS)')


# --------------------------------------------------------------------------------------------
# Whole report

@dataclass
class ReportFiles:
    directory: Path
    summary_markdown: Path
    summary_text: Path
    scores_json: Path
    plots: list[Path]


def write_report(out_dir: str | os.PathLike, score: BenchmarkScore, run_name: str = 'CKD',
                 times: Mapping[str, np.ndarray] | None = None,
                 attributes: Mapping[str, SequenceType[str]] | None = None,
                 performance: dict | None = None, extra: dict | None = None, total: int | None = None,
                 rates: Mapping[str, float] | None = None,
                 latency_ms: Mapping[str, float] | None = None) -> ReportFiles:
    """Write ``summary.md``, ``summary.txt``, ``scores.json``, one PNG per metric curve,
    and ``performance.json`` when given. Files are replaced atomically (a report is derived data).

    ``total``: the number of sequences of the benchmark (or dataset); fewer scored ones are said in the
    title, the overall row and ``scores.json`` (``benchmark_sequences``, ``partial``). ``rates`` and
    ``latency_ms``: see :func:`score_table`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    breakdown = attribute_breakdown(score, attributes) if attributes else {}
    partial = total is not None and len(score.sequences) < total
    scope = f'partial: {len(score.sequences)} of {total} sequences' if partial else f'{len(score.sequences)} sequences'
    title = f'{run_name} on {score.benchmark} ({scope}, {score.num_frames} frames)'
    overall = ', '.join(f'{m} {100 * v:.1f}' for m, v in score.metrics.items())
    def table(markdown):
        return score_table(score, times, markdown, total, rates, latency_ms)
    md = [f'# {title}', '', f'Overall: {overall}', '', table(True)]
    txt = [title, f'Overall: {overall}', '', table(False)]
    if breakdown:
        md += ['## Per attribute', '', attribute_table(breakdown, markdown=True)]
        txt += ['Per attribute', attribute_table(breakdown, markdown=False)]
    doc = {'run': run_name, **score.to_dict(),
           'attributes': {a: {'sequences': s.sequences, 'metrics': s.metrics} for a, s in breakdown.items()}}
    if total is not None:
        doc['benchmark_sequences'] = total
        doc['partial'] = partial
    if rates is not None:
        doc['fps'] = {n: rates.get(n) for n in score.sequences}
        doc['fps_is'] = 'outputs per second of their time span (pairs answered per second)'
    elif times:
        doc['fps'] = {n: sequence_fps(times.get(n)) for n in score.sequences}
    if latency_ms is not None:
        doc['latency_ms'] = {n: latency_ms.get(n) for n in score.sequences}
    if extra:
        doc.update(extra)
    files = ReportFiles(out_dir, out_dir / 'summary.md', out_dir / 'summary.txt', out_dir / 'scores.json', [])
    atomic_write_text(files.summary_markdown, '\n'.join(md), overwrite=True)
    atomic_write_text(files.summary_text, '\n'.join(txt), overwrite=True)
    atomic_write_text(files.scores_json, to_json(doc), overwrite=True)
    for metric in score.curves:
        files.plots.append(plot_curves({run_name: score}, metric, out_dir / f'{metric.lower()}_plot.png'))
    if performance is not None:
        atomic_write_text(out_dir / 'performance.json', to_json(performance),
                          overwrite=True)
    return files


def comparison_table(scores: Mapping[str, BenchmarkScore], markdown: bool = True) -> str:
    """One row per tracker (ranked by the benchmark's first metric), metric values in percent."""
    metrics = list(next(iter(scores.values())).metrics)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1].metrics[metrics[0]])
    rows = [[run, str(len(s.sequences)), str(s.num_frames)] + [_pct(s.metrics[m]) for m in metrics]
            for run, s in ranked]
    return _render(['tracker', 'sequences', 'frames', *metrics], rows, markdown)


def write_comparison(out_dir: str | os.PathLike, scores: Mapping[str, BenchmarkScore], title: str = '',
                     total: int | None = None) -> ReportFiles:
    """Several trackers' scores of one benchmark: ``comparison.md``/``.txt``/``.json`` and one PNG per
    metric with every tracker's curve (:func:`curve_figure`). Score them on the same sequences for a
    fair comparison (``ckd-eval compare`` does); ``total`` as in :func:`write_report`."""
    if not scores:
        raise ValueError('no scores to compare')
    benchmarks = {s.benchmark for s in scores.values()}
    if len(benchmarks) > 1:
        raise ValueError(f'cannot compare scores of different benchmarks ({", ".join(sorted(benchmarks))})')
    benchmark = benchmarks.pop()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sequence_lists = {tuple(s.sequences) for s in scores.values()}
    same = len(sequence_lists) == 1
    count = len(next(iter(scores.values())).sequences)
    scope = (f'partial: {count} of {total} sequences' if same and total is not None and count < total
             else f'{count} sequences' if same else 'different sequences per tracker')
    heading = title or f'{len(scores)} trackers on {benchmark} ({scope})'
    md = [f'# {heading}', '', comparison_table(scores, markdown=True)]
    txt = [heading, '', comparison_table(scores, markdown=False)]
    doc = {'benchmark': benchmark, 'title': heading, 'sequences': list(sequence_lists.pop()) if same else None,
           'benchmark_sequences': total,
           'trackers': {run: {'metrics': s.metrics, 'num_sequences': len(s.sequences), 'num_frames': s.num_frames,
                              'curves': {k: {'thresholds': t.tolist(), 'values': v.tolist()}
                                         for k, (t, v) in s.curves.items()}}
                        for run, s in scores.items()}}
    files = ReportFiles(out_dir, out_dir / 'comparison.md', out_dir / 'comparison.txt', out_dir / 'comparison.json', [])
    atomic_write_text(files.summary_markdown, '\n'.join(md), overwrite=True)
    atomic_write_text(files.summary_text, '\n'.join(txt), overwrite=True)
    atomic_write_text(files.scores_json, to_json(doc), overwrite=True)
    for metric in next(iter(scores.values())).curves:
        files.plots.append(plot_curves(scores, metric, out_dir / f'{metric.lower()}_plot.png', title or ''))
    return files


def _finite_or_none(value):
    """JSON has no NaN/inf: write null instead (json.dumps would emit the invalid token NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def to_json(doc) -> str:
    return json.dumps(_finite_or_none(json.loads(json.dumps(doc, default=_json_default))), indent=1,
                      allow_nan=False) + '\n'


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')
