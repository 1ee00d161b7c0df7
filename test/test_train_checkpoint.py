"""Training checkpoints: official structure, round trip into init_tracker, stripping, exact resume, logs."""
import csv
import io
import shutil

import numpy as np
import pytest
import torch

from ckd_ros.core.api import init_tracker
from ckd_ros.core.checkpoint import CheckpointError, read_checkpoint
from ckd_ros.core.synthetic import SyntheticScene
from ckd_train.checkpoints import export_inference_checkpoint, load_training_checkpoint
from ckd_train.settings import SyntheticSettings, TrainConfig, load_train_config
from ckd_train.trainer import MetricLog, TrainOptions, train

from ckd_ros.core.config import load_config

torch.set_num_threads(1)

OVERRIDES = {
    'MODEL': {'PRETRAIN_FILE': '', 'RGB_BRANCH': '', 'TIR_BRANCH': '', 'RGB_TEACHER': '', 'TIR_TEACHER': '',
              'BACKBONE': {'EMBED_DIM': 32, 'DEPTH': 2, 'NUM_HEADS': 2}, 'HEAD': {'NUM_CHANNELS': 16}},
    'DATA': {'TEMPLATE': {'SIZE': 64}, 'SEARCH': {'SIZE': 128},
             'TRAIN': {'DATASETS_NAME': ['SYNTHETIC'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 4},
             'VAL': {'DATASETS_NAME': ['SYNTHETIC_VAL'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 2}},
    'TEST': {'TEMPLATE_SIZE': 64, 'SEARCH_SIZE': 128},
    'TRAIN': {'BATCH_SIZE': 2, 'EPOCH': 2, 'NUM_WORKER': 0, 'VAL_EPOCH_INTERVAL': 1, 'PRINT_INTERVAL': 1,
              'PARAM_KEY': [['head', 1e-3], ['branch', 1e-3], ['teacher', 1e-3]]},
}


def tiny_train_config() -> TrainConfig:
    cfg = load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25', OVERRIDES)  # DropPath 0.1 stays on: RNG matters
    return TrainConfig(cfg, SyntheticSettings(seeds=(0, 2), val_seeds=(900, 901), length=30, size=(160, 128)),
                       name='tiny')


def _options(tmp_path, **kw):
    return TrainOptions(config=tiny_train_config(), output_dir=tmp_path, device='cpu', progress=False, **kw)


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp('train')
    return train(_options(out)), out


def test_checkpoint_has_the_official_structure(two_epochs):
    result, out = two_epochs
    assert [p.name for p in result.checkpoints] == ['OSTrack_CKD_ep0001.pth.tar', 'OSTrack_CKD_ep0002.pth.tar']
    assert result.checkpoints[0].parent == out / 'checkpoints' / 'train' / 'ckd' / 'tiny'
    raw = read_checkpoint(result.checkpoints[-1])  # weights_only load: plain containers only
    assert set(raw) == {'epoch', 'actor_type', 'net_type', 'net', 'net_info', 'constructor', 'optimizer', 'stats',
                        'settings'}
    assert raw['epoch'] == 2 and raw['actor_type'] == 'OSTrack_CKD_Actor' and raw['net_type'] == 'OSTrack_CKD'
    assert {k.split('.')[0] for k in raw['net']} == {'rgb_branch', 'tir_branch', 'box_head', 'teacher_rgb',
                                                     'teacher_tir', 'box_head_v', 'box_head_i'}
    assert raw['net']['box_head_v.conv1_ctr.0.weight'].shape[1] == 32
    assert raw['net']['box_head.conv1_ctr.0.weight'].shape[1] == 64
    assert len(raw['optimizer']['param_groups']) == 3
    assert set(raw['stats']) == {'train', 'val'} and 'Loss/total' in raw['stats']['train']
    assert raw['settings']['config']['MODEL']['BACKBONE']['EMBED_DIM'] == 32
    assert [h['epoch'] for h in raw['settings']['history']] == [1, 2]
    csv = (out / 'logs' / 'tiny' / 'train.csv').read_text().splitlines()
    assert csv[0].startswith('epoch,step,global_step') and len(csv) == 1 + 4
    epochs = (out / 'logs' / 'tiny' / 'epochs.csv').read_text().splitlines()
    assert [line.split(',')[:2] for line in epochs[1:]] == [['1', 'train'], ['1', 'val'], ['2', 'train'], ['2', 'val']]


def _track(tracker, scene, frames=6):
    rgb, th = scene.frame(0)
    tracker.initialize(rgb, th, scene.ground_truth[0])
    return np.array([tracker.track(*scene.frame(i)).box for i in range(1, frames)])


def test_training_checkpoint_round_trips_into_init_tracker(two_epochs, tmp_path):
    result, _ = two_epochs
    cfg = tiny_train_config().cfg
    tracker = init_tracker(cfg, checkpoint=result.checkpoints[-1], device='cpu')
    net = read_checkpoint(result.checkpoints[-1])['net']
    loaded = tracker.network.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, net[key]), key
    scene = SyntheticScene(7, length=8, size=(320, 256))
    boxes = _track(tracker, scene)
    assert np.isfinite(boxes).all() and (boxes[:, 2:] >= 10).all()
    # the stripped file (no optimizer, no teachers) gives the same tracker
    small = export_inference_checkpoint(result.checkpoints[-1], tmp_path / 'tiny.pth.tar')
    stripped = read_checkpoint(small)
    assert stripped['optimizer'] is None and not any(k.startswith('teacher') for k in stripped['net'])
    assert set(stripped) == set(read_checkpoint(result.checkpoints[-1]))
    assert small.stat().st_size < 0.6 * result.checkpoints[-1].stat().st_size
    np.testing.assert_array_equal(_track(init_tracker(cfg, checkpoint=small, device='cpu'), scene), boxes)
    with pytest.raises(CheckpointError, match='stripped'):
        load_training_checkpoint(small)


def test_resume_continues_exactly(two_epochs, tmp_path):
    result, _ = two_epochs
    first = result.checkpoints[0]
    resumed = train(_options(tmp_path, resume=first))
    assert [p.name for p in resumed.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    a = read_checkpoint(result.checkpoints[-1])
    b = read_checkpoint(resumed.checkpoints[-1])
    for key in a['net']:
        assert torch.equal(a['net'][key], b['net'][key]), key
    assert [h['epoch'] for h in b['settings']['history']] == [1, 2]


def test_training_file_and_bad_configs(tmp_path):
    path = tmp_path / 'run.yaml'
    path.write_text('BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nSYNTHETIC: {SEEDS: [0, 4], LENGTH: 40}\n'
                    'TRAIN: {BATCH_SIZE: 3}\n')
    tc = load_train_config(path)
    assert tc.cfg.TRAIN.BATCH_SIZE == 3 and tc.synthetic.seeds == (0, 4) and tc.synthetic.length == 40
    assert tc.cfg.TRAIN.EPOCH == 30  # from BASE
    path.write_text('BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nSYNTHETIC: {SEEDS: [0, 4], VAL_SEEDS: [2, 6]}\n')
    with pytest.raises(ValueError, match='overlap'):
        load_train_config(path)
    path.write_text('SYNTHETIC: {SEEDS: [0, 4]}\nTRAIN: {BATCH_SIZE: 3}\n')
    with pytest.raises(ValueError, match='needs BASE'):
        load_train_config(path)
    path.write_text('BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nTRAIN: {BATCH_SIZ: 3}\n')
    with pytest.raises(ValueError, match='unknown key TRAIN.BATCH_SIZ'):
        load_train_config(path)
    # official stage-1 file: the pretrained DropTrack file does not exist here -> actionable error
    with pytest.raises(FileNotFoundError, match='set the MODEL entry'):
        train(TrainOptions(config='ckd_4b_dropmae_ckd_tf_cc_mask.25', output_dir=tmp_path, device='cpu',
                           data_roots={'LasHeR_trainingSet': str(tmp_path)}, validate=False, progress=False))


def test_param_key_freezes_unmatched_and_rejects_typos():
    from ckd_train.model import build_training_model
    from ckd_train.optim import build_optimizer
    cfg = tiny_train_config().cfg.with_overrides({'TRAIN': {'PARAM_KEY': [['head', 5e-5]]}})
    model = build_training_model(cfg)
    opt = build_optimizer(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('head' in n for n in trainable)
    assert any(n.startswith('box_head_v.') for n in trainable) and any(n.startswith('box_head.') for n in trainable)
    assert opt.param_groups[0]['lr'] == 5e-5 and opt.param_groups[0]['weight_decay'] == 1e-4
    bad = cfg.with_overrides({'TRAIN': {'PARAM_KEY': [['head', 5e-5], ['rgb_brnch', 1e-5]]}})
    with pytest.raises(ValueError, match='rgb_brnch'):
        build_optimizer(build_training_model(bad), bad)


def test_held_out_evaluation_scores_three_modes(two_epochs):
    from ckd_train.evaluate import MODES, evaluate_synthetic, run_sequence
    result, _ = two_epochs
    cfg = tiny_train_config().cfg
    ev = evaluate_synthetic(cfg, result.checkpoints[-1], seeds=[900000], length=12, size=(160, 128))
    assert set(ev.metrics) == set(MODES) and ev.frames == 12
    for m in ev.metrics.values():
        assert 0.0 <= m['SR'] <= 1.0 and 0.0 <= m['PR'] <= 1.0
    assert 'SR' in ev.table() and 'thermal_only' in ev.table()
    with pytest.raises(ValueError, match='mode'):
        run_sequence(None, SyntheticScene(1, length=3, size=(64, 64)), 'infrared')


def test_step_schedule_and_constant_default():
    from ckd_train.model import build_training_model
    from ckd_train.optim import apply_lr_schedule, build_optimizer, lr_factor
    cfg = tiny_train_config().cfg
    assert [lr_factor(cfg, e) for e in (1, 5, 30)] == [1.0, 1.0, 1.0]  # official: constant
    step = cfg.with_overrides({'TRAIN': {'LR_DROP_EPOCH': 2, 'SCHEDULER': {'TYPE': 'step', 'DECAY_RATE': 0.1}}})
    assert [lr_factor(step, e) for e in (1, 2, 3, 4, 5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    opt = build_optimizer(build_training_model(step), step)
    apply_lr_schedule(opt, step, 3)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4, 1e-4])
    apply_lr_schedule(opt, step, 1)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-3])
    bad = cfg.with_overrides({'TRAIN': {'SCHEDULER': {'TYPE': 'cosine'}}})
    with pytest.raises(ValueError, match='not supported'):
        build_optimizer(build_training_model(bad), bad)


def _csv_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _csv_rows_from_bytes(data):
    return list(csv.DictReader(io.StringIO(data.decode(), newline='')))


def test_resumed_run_logs_each_epoch_and_step_once(two_epochs, tmp_path):
    result, out = two_epochs
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    logs = tmp_path / 'logs' / 'tiny'
    before = {table: (logs / f'{table}.csv').read_bytes() for table in ('train', 'epochs')}
    # resume from epoch 1 though epoch 2 was logged (and checkpointed; replacing it takes --overwrite): its rows
    # must not appear twice
    resumed = train(_options(tmp_path, resume=tmp_path / result.checkpoints[0].relative_to(out), epochs=3,
                             overwrite=True))
    assert [p.name for p in resumed.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar', 'OSTrack_CKD_ep0003.pth.tar']
    train_rows = _csv_rows(logs / 'train.csv')
    assert [(r['epoch'], r['step']) for r in train_rows] == [(str(e), str(s)) for e in (1, 2, 3) for s in (1, 2)]
    assert [r['global_step'] for r in train_rows] == [str(i) for i in range(1, 7)]
    epoch_rows = _csv_rows(logs / 'epochs.csv')
    assert [(r['epoch'], r['split']) for r in epoch_rows] == [(str(e), s) for e in (1, 2, 3) for s in ('train', 'val')]
    for table, rows in (('train', train_rows), ('epochs', epoch_rows)):
        old = before[table].splitlines(keepends=True)
        new = (logs / f'{table}.csv').read_bytes().splitlines(keepends=True)
        assert new[0] == old[0]  # same header
        n1 = sum(1 for r in rows if r['epoch'] == '1')
        assert new[1:1 + n1] == old[1:1 + n1]  # the epoch-1 rows are the uninterrupted run's, byte for byte
        # the re-run epoch 2 continues exactly, so its logged values equal the first run's (timings aside)
        first_run = [r for r in _csv_rows_from_bytes(before[table]) if r['epoch'] == '2']
        again = [r for r in rows if r['epoch'] == '2']
        for a, b in zip(first_run, again, strict=True):
            assert {k: v for k, v in a.items() if k != 'seconds_per_step'} == \
                {k: v for k, v in b.items() if k != 'seconds_per_step'}


def test_log_drops_the_rows_of_the_epochs_it_runs_again(tmp_path):
    logs = tmp_path / 'logs'
    logs.mkdir()
    # rows of epochs 1-2 (checkpointed) and a row of epoch 3 whose write was cut by the kill
    (logs / 'train.csv').write_text('epoch,step,loss\r\n1,1,0.5\r\n2,1,0.4\r\n3,1,0.3\r\n3,2,0.')
    MetricLog(logs, tmp_path / 'tb', enabled=True, first_epoch=3).close()
    assert (logs / 'train.csv').read_bytes() == b'epoch,step,loss\r\n1,1,0.5\r\n2,1,0.4\r\n'
    log = MetricLog(logs, tmp_path / 'tb', enabled=True, first_epoch=1)  # --overwrite: a new header
    log.write('train', {'epoch': 1, 'step': 1, 'total': 0.25})
    log.close()
    assert (logs / 'train.csv').read_bytes() == b'epoch,step,total\r\n1,1,0.25\r\n'
    assert list(logs.iterdir()) == [logs / 'train.csv']  # no temporary file left behind


def test_resume_refuses_a_finished_run_and_another_network(two_epochs, tmp_path):
    result, _ = two_epochs
    last = result.checkpoints[-1]  # epoch 2 of 2: resuming it without more epochs trained nothing, silently
    with pytest.raises(ValueError, match='nothing to train; pass --epochs N with N > 2'):
        train(_options(tmp_path, resume=last))
    assert not (tmp_path / 'checkpoints').exists()
    # a checkpoint of another network size: a short error naming the keys, not torch's page of mismatches
    wider = load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25',
                        {**OVERRIDES, 'MODEL': {**OVERRIDES['MODEL'], 'BACKBONE': {'EMBED_DIM': 48, 'DEPTH': 2,
                                                                                   'NUM_HEADS': 2}}})
    options = TrainOptions(config=TrainConfig(wider, tiny_train_config().synthetic, name='wider'), output_dir=tmp_path,
                           device='cpu', progress=False, resume=result.checkpoints[0])
    with pytest.raises(CheckpointError, match=r"does not fit the training network of 'wider' \(it was trained as "
                                              r"'tiny'; other shape"):
        train(options)


def test_ddp_prefixed_checkpoint_resumes_and_exports(two_epochs, tmp_path):
    result, _ = two_epochs
    raw = read_checkpoint(result.checkpoints[0])
    raw['net'] = {f'module.{k}': v for k, v in raw['net'].items()}  # saved from the DDP wrapper
    prefixed = tmp_path / 'ddp.pth.tar'
    torch.save(raw, prefixed)
    state = load_training_checkpoint(prefixed)  # was: "stripped for inference and cannot resume"
    assert set(state['net']) == set(read_checkpoint(result.checkpoints[0])['net'])
    exported = read_checkpoint(export_inference_checkpoint(prefixed, tmp_path / 'out.pth.tar'))  # was: empty net
    plain = read_checkpoint(export_inference_checkpoint(result.checkpoints[0], tmp_path / 'plain.pth.tar'))
    assert list(exported['net']) == list(plain['net'])
    for key, value in plain['net'].items():
        assert torch.equal(exported['net'][key], value), key


def test_export_refuses_its_source_and_a_folder(two_epochs, tmp_path):
    from ckd_train.export import main as export_main
    result, _ = two_epochs
    source = tmp_path / 'ep.pth.tar'
    shutil.copy(result.checkpoints[0], source)
    before = source.read_bytes()
    with pytest.raises(FileExistsError, match='source checkpoint itself'):
        export_inference_checkpoint(source, tmp_path / '.' / 'ep.pth.tar')
    assert source.read_bytes() == before  # the training checkpoint (optimizer, teachers) is intact
    assert export_main([str(source), str(tmp_path)]) == 2  # was: IsADirectoryError traceback
    not_ckd = tmp_path / 'foreign.pth'
    torch.save({'net': {'encoder.weight': torch.zeros(2)}}, not_ckd)
    with pytest.raises(CheckpointError, match='holds no rgb_branch/tir_branch/box_head weights'):
        export_inference_checkpoint(not_ckd, tmp_path / 'x.pth.tar')


def test_resume_names_changed_run_settings_and_data_roots_are_checked(two_epochs, tmp_path, capsys):
    result, _ = two_epochs
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['LasHer_trainingSet'\]"):  # a typo was ignored
        train(_options(tmp_path, data_roots={'LasHer_trainingSet': str(tmp_path)}))
    # was silent: another seed draws other samples, so the run no longer continues the checkpoint's
    train(_options(tmp_path, resume=result.checkpoints[0], seed=7, data_roots={'GTOT': str(tmp_path)}))
    out = capsys.readouterr().out
    assert 'resuming with seed 7 (checkpoint: 42): not an exact continuation' in out
    assert '--data-root GTOT ignored' in out
    train(_options(tmp_path / 'same', resume=result.checkpoints[0]))
    assert 'resuming with' not in capsys.readouterr().out


def _tree_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_resume_refuses_to_replace_another_run_in_the_output_folder(two_epochs, tmp_path, capsys):
    result, out = two_epochs
    other = tmp_path / 'other'  # a folder holding another run of "tiny" (two checkpoints, CSV logs)
    shutil.copytree(out, other)
    before = _tree_bytes(other)
    raw = read_checkpoint(result.checkpoints[0])  # epoch 1 of an unrelated run (other weights)
    raw['net']['box_head.conv1_ctr.0.weight'] += 0.01
    foreign = tmp_path / 'foreign.pth.tar'
    torch.save(raw, foreign)
    # was: its OSTrack_CKD_ep0002 replaced and its epoch-2 CSV rows dropped without a word
    with pytest.raises(FileExistsError) as exc:
        train(_options(other, resume=foreign))
    message = str(exc.value)
    assert "holds another run of 'tiny'" in message and 'is not one of its checkpoints' in message
    assert 'replace its checkpoint(s) OSTrack_CKD_ep0002.pth.tar' in message
    assert 'epochs.csv, train.csv' in message and '--overwrite' in message and 'another --output' in message
    assert _tree_bytes(other) == before
    # a byte-identical backup of the folder's own checkpoint is a resume into its own folder: not another run's,
    # though replacing the folder's later epoch 2 still takes --overwrite
    backup = tmp_path / 'backup.pth.tar'
    shutil.copy(other / result.checkpoints[0].relative_to(out), backup)
    with pytest.raises(FileExistsError, match='holds checkpoint\\(s\\) of epochs after') as exc:
        train(_options(other, resume=backup))
    assert 'another run' not in str(exc.value)
    resumed = train(_options(other, resume=backup, overwrite=True))
    assert [p.name for p in resumed.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    assert [r['epoch'] for r in _csv_rows(other / 'logs' / 'tiny' / 'epochs.csv')] == ['1', '1', '2', '2']
    assert 'another run' not in capsys.readouterr().out
    # --overwrite: the other run's checkpoints and CSV rows are replaced, the logs hold this run's epochs only
    again = train(_options(other, resume=foreign, overwrite=True))
    assert [p.name for p in again.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    assert '--overwrite: replacing the checkpoints and CSV logs of another run' in capsys.readouterr().out
    rows = _csv_rows(other / 'logs' / 'tiny' / 'epochs.csv')
    assert [(r['epoch'], r['split']) for r in rows] == [('2', 'train'), ('2', 'val')]


def test_resume_into_an_empty_or_new_output_folder_is_not_refused(two_epochs, tmp_path):
    result, out = two_epochs
    (tmp_path / 'logs' / 'other_name').mkdir(parents=True)  # another configuration's logs are not this run's
    (tmp_path / 'logs' / 'other_name' / 'train.csv').write_text('epoch,step\n1,1\n')
    resumed = train(_options(tmp_path, resume=result.checkpoints[0], validate=False))
    assert [p.name for p in resumed.checkpoints] == ['OSTrack_CKD_ep0002.pth.tar']
    assert (tmp_path / 'logs' / 'other_name' / 'train.csv').read_text() == 'epoch,step\n1,1\n'


def test_export_refuses_an_existing_destination_unless_overwrite(two_epochs, tmp_path, capsys):
    from ckd_train.export import main as export_main
    result, _ = two_epochs
    destination = tmp_path / 'shipped.pth.tar'
    destination.write_bytes(b'a file the user made')
    # was: silently replaced
    assert export_main([str(result.checkpoints[0]), str(destination)]) == 2
    err = capsys.readouterr().err
    assert f'export destination {destination} exists; pass --overwrite' in err
    assert destination.read_bytes() == b'a file the user made'
    with pytest.raises(FileExistsError, match='exists; pass --overwrite'):
        export_inference_checkpoint(result.checkpoints[0], destination)
    assert export_main([str(result.checkpoints[0]), str(destination), '--overwrite']) == 0
    assert read_checkpoint(destination)['epoch'] == 1
    # the source itself stays refused, even with --overwrite
    assert export_main([str(result.checkpoints[0]), str(result.checkpoints[0]), '--overwrite']) == 2
    assert 'source checkpoint itself' in capsys.readouterr().err
    # a destination under a file: was a bare "[Errno 17] File exists"
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('')
    for target in (a_file / 'ckd.pth.tar', a_file / 'sub' / 'ckd.pth.tar'):
        assert export_main([str(result.checkpoints[0]), str(target)]) == 2
        assert f'{a_file} is a file, not a folder' in capsys.readouterr().err
    assert a_file.read_text() == ''


def test_make_weights_replaces_the_shipped_weights_explicitly():
    from pathlib import Path
    script = (Path(__file__).resolve().parents[1] / 'scripts' / 'make_weights.sh').read_text()
    export_lines = [line for line in script.splitlines() if '-m ckd_train.export' in line]
    assert export_lines and all('--overwrite' in line for line in export_lines)


STUB_PYTHON = r"""#!/bin/bash
# stands in for python: logs each call; a training call leaves one epoch checkpoint, an export writes its file
echo "$*" >> "$STUB_LOG"
if [ "$2" = ckd_train ]; then
  for ((i = 1; i <= $#; i++)); do [ "${!i}" = --output ] && { j=$((i + 1)); out="${!j}"; }; done
  mkdir -p "$out/checkpoints/train/ckd/$3" && touch "$out/checkpoints/train/ckd/$3/OSTrack_CKD_ep0001.pth.tar"
elif [ "$2" = ckd_train.export ]; then
  echo stub > "$4"
fi
"""


def test_make_weights_chains_its_stages_and_resumes(tmp_path):
    """The recipe on a stub interpreter: stage 1 -> export -> stage 2 (--init the export) -> stage 3
    (--init stage 2's last checkpoint) -> export -> held-out scores; a second run repeats no finished stage
    and resumes stage 3. Before, a fresh run stopped at once: with pipefail, `ls` finding no checkpoint
    ended the script under set -e."""
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    stub, log, work = tmp_path / 'python', tmp_path / 'calls.log', tmp_path / 'work'
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    copy = tmp_path / 'repo'
    (copy / 'scripts').mkdir(parents=True)
    (copy / 'scripts' / 'make_weights.sh').write_text((root / 'scripts' / 'make_weights.sh').read_text())
    env = {**os.environ, 'PYTHON': str(stub), 'STUB_LOG': str(log), 'CKD_WEIGHTS_WORK': str(work)}
    run = subprocess.run(['bash', str(copy / 'scripts' / 'make_weights.sh')], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[1:3] for c in calls] == [
        ['ckd_train', 'ckd_tiny_synthetic'], ['ckd_train.export', str(work / 'stage1/checkpoints/train/ckd/'
                                                                    'ckd_tiny_synthetic/OSTrack_CKD_ep0001.pth.tar')],
        ['ckd_train', 'ckd_tiny_rgbt'], ['ckd_train', 'ckd_tiny_rgbt_dropout'],
        ['ckd_train.export', str(work / 'stage3/checkpoints/train/ckd/ckd_tiny_rgbt_dropout/'
                                        'OSTrack_CKD_ep0001.pth.tar')], ['ckd_train.evaluate', '--config']]
    assert f'--init {work}/stage1.pth.tar' in calls[2]
    assert f'--init {work}/stage2/checkpoints/train/ckd/ckd_tiny_rgbt/OSTrack_CKD_ep0001.pth.tar' in calls[3]
    assert (copy / 'ckd_ros/core/weights/ckd_tiny.pth.tar').read_text() == 'stub\n'   # the copy's, not ours
    log.write_text('')
    again = subprocess.run(['bash', str(copy / 'scripts' / 'make_weights.sh')], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[2] for c in calls if c.split()[1] == 'ckd_train'] == ['ckd_tiny_rgbt_dropout']
    assert '--resume' in calls[0] and 'stage3' in calls[0]
