"""ckd-train refusals with the reason instead of silent damage, hangs or tracebacks: later checkpoints of the run
a resume would replace, crafted checkpoint entries (epoch, history, tensor shapes, optimizer, RNG state), CSV logs
that are no regular files, and an unknown key blamed on the file that holds it."""
import os
import shutil
import threading

import pytest
import torch

from ckd_ros.core.checkpoint import CheckpointError, read_checkpoint
from ckd_train.settings import load_train_config
from ckd_train.trainer import MetricLog, train

from test_train_checkpoint import _options

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp('train3')
    return train(_options(out, epochs=3, validate=False)), out


def _tree_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_resume_refuses_to_replace_the_later_checkpoints_of_its_own_run(three_epochs, tmp_path, capsys):
    result, out = three_epochs
    run = tmp_path / 'run'
    shutil.copytree(out, run)
    folder = run / result.checkpoints[0].relative_to(out).parent
    before = _tree_bytes(run)
    # was: epochs 2 and 3 silently replaced by a new continuation of epoch 1
    with pytest.raises(FileExistsError) as exc:
        train(_options(run, resume=folder / 'OSTrack_CKD_ep0001.pth.tar', epochs=3, validate=False))
    message = str(exc.value)
    assert 'epochs after' in message and 'OSTrack_CKD_ep0002.pth.tar, OSTrack_CKD_ep0003.pth.tar' in message
    assert 'replace OSTrack_CKD_ep0002.pth.tar, OSTrack_CKD_ep0003.pth.tar' in message
    assert f"--resume {folder / 'OSTrack_CKD_ep0003.pth.tar'}" in message and '--overwrite' in message
    # a shorter continuation would replace epoch 2 and leave epoch 3 of the old one beside it
    with pytest.raises(FileExistsError, match='replace OSTrack_CKD_ep0002.pth.tar and leave OSTrack_CKD_ep0003'):
        train(_options(run, resume=folder / 'OSTrack_CKD_ep0001.pth.tar', epochs=2, validate=False))
    assert _tree_bytes(run) == before
    # resuming the last checkpoint replaces nothing: not refused
    last = train(_options(run, resume=folder / 'OSTrack_CKD_ep0003.pth.tar', epochs=4, validate=False))
    assert [p.name for p in last.checkpoints] == ['OSTrack_CKD_ep0004.pth.tar']
    # --overwrite: asked for, so done, and said
    again = train(_options(run, resume=folder / 'OSTrack_CKD_ep0001.pth.tar', epochs=2, validate=False,
                           overwrite=True))
    assert [p.name for p in again.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    assert '--overwrite: epochs 2.. run again, replacing OSTrack_CKD_ep0002.pth.tar' in capsys.readouterr().out


def _set_first_optimizer_state(raw, key, value):
    state = raw['optimizer']['state']
    state[next(iter(state))][key] = value


CRAFTED = {
    # was: ValueError "expected non-negative integer" from deep inside the sampler, after building everything
    'negative epoch': (lambda raw: raw.__setitem__('epoch', -10**12),
                       r"its 'epoch' entry is -1000000000000, not a whole number of epochs in 0\.\.100000"),
    'text epoch': (lambda raw: raw.__setitem__('epoch', '3'), r"its 'epoch' entry is '3', not a whole number"),
    'history not a list': (lambda raw: raw['settings'].__setitem__('history', 'x' * 1000),
                           r"settings\.history is 'xxxx.*\.\.\., not a list of per-epoch statistics"),
    'history longer than the epochs': (lambda raw: raw['settings'].__setitem__('history', [{}] * 10**5),
                                       r'settings\.history holds 100000 entries for 1 epoch\(s\)'),
    'history entry': (lambda raw: raw['settings']['history'][0].__setitem__('epoch', 7),
                      r'settings\.history\[0\]: its epoch 7 is not a whole number in 1\.\.1'),
    'history statistics': (lambda raw: raw['settings']['history'][0].__setitem__('train', {'total': 'abc'}),
                           r"settings\.history\[0\]: its 'train' entry is .* not a mapping of statistic names to"),
    # were: AttributeError / RuntimeError tracebacks
    'net value not a tensor': (lambda raw: raw['net'].__setitem__('box_head.conv1_ctr.0.weight', 5),
                               r"not a tensor 1: \['box_head\.conv1_ctr\.0\.weight \(int\)'\]"),
    'optimizer state shape': (lambda raw: _set_first_optimizer_state(raw, 'exp_avg', torch.zeros(3, 5)),
                              r"optimizer state 'exp_avg' of box_head\.conv1_ctr\.0\.weight has shape \(3, 5\), the "
                              r"parameter \(16, 64, 3, 3\)"),
    'optimizer groups': (lambda raw: raw['optimizer'].__setitem__('param_groups', raw['optimizer']['param_groups'][:1]),
                         r"its optimizer has 1 parameter group\(s\), this run's 3"),
    'optimizer not a state': (lambda raw: raw.__setitem__('optimizer', [1, 2]),
                              r"its 'optimizer' entry is not an optimizer state"),
    'rng state': (lambda raw: raw['settings'].__setitem__('torch_rng_state', torch.zeros(3)),
                  r"settings\.torch_rng_state is a torch\.float32 tensor of shape \(3,\); torch's RNG state is a "
                  r"uint8 tensor"),
}


@pytest.mark.parametrize('case', list(CRAFTED))
def test_crafted_checkpoint_entries_are_refused_naming_the_entry(three_epochs, tmp_path, case):
    result, _ = three_epochs
    mutate, message = CRAFTED[case]
    raw = read_checkpoint(result.checkpoints[0])
    mutate(raw)
    crafted = tmp_path / 'crafted.pth.tar'
    torch.save(raw, crafted)
    with pytest.raises(CheckpointError, match=message):
        train(_options(tmp_path / 'out', resume=crafted, epochs=3, validate=False))
    assert not (tmp_path / 'out' / 'checkpoints').exists()


def test_a_csv_log_that_is_a_fifo_or_a_link_is_refused_instead_of_waited_on(tmp_path):
    logs = tmp_path / 'logs'
    logs.mkdir()
    fifo = logs / 'train.csv'
    os.mkfifo(fifo)
    outcome = []

    def open_log():
        try:
            MetricLog(logs, tmp_path / 'tb', enabled=True, first_epoch=2).close()
            outcome.append('opened')
        except ValueError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=open_log, daemon=True)
    thread.start()
    thread.join(20)
    hung = thread.is_alive()
    if hung:  # was: blocked for good in open() (no writer ever comes); let it go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
    assert not hung, 'opening the logs waited on a FIFO'
    assert outcome and 'is not a regular file' in outcome[0] and str(fifo) in outcome[0]
    fifo.unlink()
    elsewhere = tmp_path / 'elsewhere.csv'
    elsewhere.write_text('epoch,step\n1,1\n3,1\n')
    fifo.symlink_to(elsewhere)  # was: the run rewrote the file the link points to
    with pytest.raises(ValueError, match='is a symbolic link'):
        MetricLog(logs, tmp_path / 'tb', enabled=True, first_epoch=2)
    assert elsewhere.read_text() == 'epoch,step\n1,1\n3,1\n'


def test_crafted_epoch_fields_in_a_csv_log_are_dropped_not_a_traceback(tmp_path):
    logs = tmp_path / 'logs'
    logs.mkdir()
    # '²' passes str.isdigit but not int(); 5000 digits exceed Python's int parsing limit: were ValueErrors
    (logs / 'train.csv').write_text(f"epoch,step\r\n1,1\r\n\u00b2,1\r\n{'9' * 5000},1\r\n2,1\r\n")
    MetricLog(logs, tmp_path / 'tb', enabled=True, first_epoch=2).close()
    assert (logs / 'train.csv').read_bytes() == b'epoch,step\r\n1,1\r\n'


def test_an_unknown_key_is_blamed_on_the_file_that_has_it(tmp_path):
    run = tmp_path / 'run.yaml'
    run.write_text('BASE: ckd_tiny\nTRAIN: {BATCH_SIZ: 3}\n')
    with pytest.raises(ValueError) as exc:
        load_train_config(run)
    # was: "run.yaml: .../ckd_ros/core/configs/ckd_tiny.yaml: unknown key TRAIN.BATCH_SIZ"
    assert str(exc.value).startswith(f'{run}: unknown key TRAIN.BATCH_SIZ') and 'ckd_tiny.yaml' not in str(exc.value)
    base = tmp_path / 'base.yaml'
    base.write_text('TRAIN: {EPOCHH: 3}\n')
    run.write_text('BASE: base.yaml\nTRAIN: {BATCH_SIZE: 3}\n')
    with pytest.raises(ValueError, match=rf'^{run}: BASE: {base}: unknown key TRAIN\.EPOCHH'):
        load_train_config(run)
    base.write_text('MODEL: {BACKBONE: {NUM_HEADS: 4}}\n')
    run.write_text('BASE: base.yaml\nMODEL: {BACKBONE: {EMBED_DIM: 33}}\n')   # each file fine, together not
    with pytest.raises(ValueError, match=rf"^{run} \(over its BASE '{base}'\): MODEL\.BACKBONE\.EMBED_DIM \(33\) "
                                         "must be divisible"):
        load_train_config(run)
