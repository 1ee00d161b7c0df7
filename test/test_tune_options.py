"""ckd_train.tune_options: the sweep that chose the shipped tracker options runs and refuses bad grids."""
import json

import pytest

from ckd_train import tune_options


def test_the_option_sweep_scores_every_combination(tmp_path, capsys, one_torch_thread):
    out = tmp_path / 'rows.json'
    assert tune_options.main(['--seeds', '500000:500001', '--length', '12', '--size', '160x128',
                              '--lost', 'none,0.3', '--scale-change', 'none,1.1', '--redetect', 'none,1.2',
                              '--json', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r['lost_threshold'], r['max_scale_change'], r['redetect_growth']) for r in rows] == [
        (None, None, None), (None, None, 1.2), (None, 1.1, None), (None, 1.1, 1.2),
        (0.3, None, None), (0.3, None, 1.2), (0.3, 1.1, None), (0.3, 1.1, 1.2)]
    assert all(0.0 <= r['SR'] <= 1.0 and 0.0 <= r['PR'] <= 1.0 for r in rows)
    assert 'best by SR: lost' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--scale-change', '1.0'], 'max_scale_change must be None or a finite number > 1'),
    (['--lost', '1.5'], 'lost_threshold must be None or in [0, 1]'),
    (['--lost', 'abc'], "expected numbers or 'none'"),
    (['--redetect', '2.5'], 'redetect_growth must be None or in (1, 2]'),
    (['--failure-fraction', '0.9'], 'at most 0.8'),
])
def test_bad_grids_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        tune_options.main(argv)
    assert raised.value.code == 2 and message in capsys.readouterr().err
