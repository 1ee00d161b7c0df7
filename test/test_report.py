"""Report plots and the comparison of several trackers."""
import json

import numpy as np
import pytest

from ckd_ros.core import metrics, report
from ckd_ros.core.datasets import GroundTruth


def _score(benchmark, shift, frames=30, seed=0):
    """A two-sequence score whose predictions are the ground truth shifted by about ``shift`` px."""
    rng = np.random.default_rng(seed)
    gt, res = {}, {}
    for name in ('a', 'b'):
        boxes = np.column_stack([np.arange(frames) * 2 + 20, np.full(frames, 30), np.full(frames, 40),
                                 np.full(frames, 30)]).astype(float)
        gt[name] = GroundTruth(boxes, boxes, boxes)
        res[name] = boxes + np.column_stack([rng.integers(0, 2 * shift + 1, frames), np.zeros((frames, 3))])
    return metrics.evaluate(benchmark, res, gt)


def _markers(figure):
    """(x, y) of the single-point lines of a figure (the threshold marks)."""
    points = []
    for line in figure.axes[0].get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 1:
            points.append((float(x[0]), float(y[0])))
    return points


@pytest.mark.parametrize('benchmark, metric, threshold', [
    ('lasher', 'PR', 20.0), ('lasher', 'NPR', 0.2), ('gtot', 'MPR', 5.0), ('rgbt234', 'MPR', 20.0)])
def test_each_curve_marks_the_threshold_its_score_is_read_at(benchmark, metric, threshold):
    """The plots showed the curves only: where PR (20 px; 5 px on GTOT) is read was not to be seen."""
    scores = {'near': _score(benchmark, 4), 'far': _score(benchmark, 30, seed=1)}
    points = _markers(report.curve_figure(scores, metric))
    expected = sorted((threshold, s.metrics[metric]) for s in scores.values())
    np.testing.assert_allclose(sorted(points), expected)
    assert expected[0][1] != expected[1][1]      # two curves, two distinct points
    # the success rate is the area under its curve: no point of it is the score
    assert _markers(report.curve_figure(scores, 'SR' if benchmark in ('lasher',) else 'MSR')) == []


def test_several_trackers_in_one_report(tmp_path):
    scores = {'near': _score('lasher', 4), 'far': _score('lasher', 30, seed=1)}
    files = report.write_comparison(tmp_path / 'cmp', scores, title='two trackers')
    text = files.summary_markdown.read_text()
    assert text.index('| near |') < text.index('| far |')      # ranked by the first metric
    doc = json.loads(files.scores_json.read_text())
    assert set(doc['trackers']) == {'near', 'far'} and doc['trackers']['far']['metrics'] == scores['far'].metrics
    assert sorted(p.name for p in files.plots) == ['npr_plot.png', 'pr_plot.png', 'sr_plot.png']
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    legend = [t.get_text() for t in report.curve_figure(scores, 'PR').axes[0].get_legend().get_texts()]
    assert len(legend) == 2 and legend[0].startswith('near [')
    with pytest.raises(ValueError, match='different benchmarks'):
        report.write_comparison(tmp_path / 'x', {'a': scores['near'], 'g': _score('gtot', 4)})
