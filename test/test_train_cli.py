"""The ckd-train command line: help, argument errors and actionable configuration errors."""
import pytest
import torch

from ckd_train.cli import build_parser, main


def test_help_lists_the_documented_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ('--output', '--resume', '--epochs', '--device', '--data-root', '--batchnorm'):
        assert option in text


def test_data_root_must_be_name_equals_path(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(['ckd_tiny', '--data-root', '/data/lasher'])
    assert 'NAME=PATH' in capsys.readouterr().err


def test_missing_dataset_root_is_reported(capsys, tmp_path):
    # ckd_tiny trains on LasHeR_trainingSet by default: without its folder the run stops before any work
    assert main(['ckd_tiny', '--output', str(tmp_path), '--device', 'cpu', '--no-progress']) == 2
    assert '--data-root LasHeR_trainingSet=PATH' in capsys.readouterr().err


def test_unknown_config_is_reported(capsys, tmp_path):
    assert main(['no_such_config', '--output', str(tmp_path)]) == 2
    assert 'unknown configuration name' in capsys.readouterr().err


def test_an_earlier_run_is_not_overwritten_without_being_asked(capsys, tmp_path):
    earlier = tmp_path / 'checkpoints' / 'train' / 'ckd' / 'ckd_tiny_smoke' / 'OSTrack_CKD_ep0001.pth.tar'
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's checkpoint")
    assert main(['ckd_tiny_smoke', '--output', str(tmp_path), '--device', 'cpu', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'already holds 1 checkpoint' in err and '--resume' in err and '--overwrite' in err
    assert earlier.read_bytes() == b"an earlier run's checkpoint"


@pytest.mark.parametrize('option, value', [('--threads', '0'), ('--threads', '-1'), ('--workers', '-1'),
                                           ('--log-interval', '0'), ('--log-interval', '-2'), ('--epochs', '0'),
                                           ('--batch-size', '0'), ('--samples-per-epoch', '0')])
def test_counts_out_of_range_are_argument_errors(capsys, option, value):
    # were: a torch RuntimeError traceback (threads), or silently the default / every step (log interval)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(['ckd_tiny_smoke', option, value])
    assert exc.value.code == 2 and f'argument {option}' in capsys.readouterr().err


def test_output_that_is_a_file_and_missing_cuda_are_reported(capsys, tmp_path):
    a_file = tmp_path / 'output'
    a_file.write_text('not a folder')
    assert main(['ckd_tiny_smoke', '--output', str(a_file), '--device', 'cpu', '--no-progress']) == 2
    assert 'is an existing file' in capsys.readouterr().err
    if not torch.cuda.is_available():  # was: a RuntimeError traceback
        assert main(['ckd_tiny_smoke', '--output', str(tmp_path / 'run'), '--device', 'cuda', '--no-progress']) == 2
        assert 'CUDA is not available' in capsys.readouterr().err


@pytest.mark.parametrize('args, message', [(['--size', '640'], 'must be WIDTHxHEIGHT'),
                                           (['--seeds', 'abc'], 'START:STOP'),
                                           (['--threads', '0'], 'integer >= 1'),
                                           (['--motion-split', 'demo'], 'invalid choice')])
def test_evaluate_argument_errors(capsys, args, message):
    from ckd_train.evaluate import main as evaluate_main
    with pytest.raises(SystemExit) as exc:
        evaluate_main([*args, '--checkpoint', 'no_such_file.pth.tar'])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_refuses_an_unwritable_json_before_tracking(capsys, tmp_path):
    from ckd_train.evaluate import main as evaluate_main
    (tmp_path / 'a_file').write_text('')
    # was: every sequence tracked first, then a FileExistsError traceback
    with pytest.raises(SystemExit) as exc:
        evaluate_main(['--json', str(tmp_path / 'a_file' / 'scores.json'), '--checkpoint', str(tmp_path / 'none')])
    assert exc.value.code == 2 and 'cannot be written' in capsys.readouterr().err


def test_evaluate_draws_target_motion_from_the_pool_it_is_told(monkeypatch):
    """Choosing between weights uses the validation pool of real tracks, held-out scores the test pool."""
    from ckd_train import evaluate as module
    seen = []

    class Scene:
        def __init__(self, seed, length, size, world, motion_split):
            seen.append(motion_split)
            raise ValueError('stop here')
    monkeypatch.setattr(module, 'SyntheticScene', Scene)
    monkeypatch.setattr(module, 'init_tracker', lambda *a, **k: None)
    for split in ('val', 'test'):
        with pytest.raises(ValueError, match='stop here'):
            module.evaluate_synthetic('ckd_tiny', None, [500000], world='rgbt', motion_split=split)
    assert seen == ['val', 'test']
