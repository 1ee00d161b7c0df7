"""Fine-tuning from inference weights: MODEL.PRETRAIN_FILE naming a checkpoint without teachers (the export of a
training run, the shipped ckd_tiny weights) loads the students and the fused head and keeps the teachers."""
from pathlib import Path

import pytest
import torch

from ckd_ros.core.checkpoint import INFERENCE_PREFIXES, TRAINING_ONLY_PREFIXES, read_checkpoint
from ckd_train.cli import main as train_main
from ckd_train.export import main as export_main
from ckd_train.init import initialise_from_config
from ckd_train.model import build_training_model
from ckd_train.settings import load_train_config

torch.set_num_threads(1)

SHIPPED = Path(__file__).resolve().parents[1] / 'ckd_ros' / 'core' / 'weights' / 'ckd_tiny.pth.tar'

# ckd_tiny_smoke.yaml style, one step of two small samples
RUN = """BASE: ckd_tiny
SYNTHETIC: {{SEEDS: [0, 2], VAL_SEEDS: [500000, 500001], LENGTH: 30, SIZE: [160, 128]}}
MODEL: {{PRETRAIN_FILE: "{pretrain}", RGB_BRANCH: "", TIR_BRANCH: "", RGB_TEACHER: "", TIR_TEACHER: ""{model}}}
DATA:
  TRAIN: {{DATASETS_NAME: [SYNTHETIC], DATASETS_RATIO: [1], SAMPLE_PER_EPOCH: 2}}
  VAL: {{DATASETS_NAME: [SYNTHETIC_VAL], DATASETS_RATIO: [1], SAMPLE_PER_EPOCH: 2}}
TRAIN: {{BATCH_SIZE: 2, EPOCH: 1, NUM_WORKER: 0, PRINT_INTERVAL: 1,
        PARAM_KEY: [[head, 0.001], [rgb_branch, 0.0005], [tir_branch, 0.0005], [teacher_rgb, 0.0005],
                    [teacher_tir, 0.0005]]}}
"""


def _config(folder: Path, name: str, pretrain: str = '', model: str = '') -> Path:
    path = folder / f'{name}.yaml'
    path.write_text(RUN.format(pretrain=pretrain, model=model))
    return path


def _train(config: Path, output: Path) -> int:
    return train_main([str(config), '--output', str(output), '--device', 'cpu', '--threads', '1', '--no-progress',
                       '--no-val'])


def _initialised(config: Path):
    """The training network as the run would start (fresh init under a fixed seed, then the files)."""
    cfg = load_train_config(config).cfg
    torch.manual_seed(0)
    model = build_training_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    lines = initialise_from_config(model, cfg)
    return model, fresh, lines


def _check_students_loaded_teachers_kept(model, fresh, net):
    state = model.state_dict()
    net = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in net.items()}
    inference = [k for k in state if k.startswith(INFERENCE_PREFIXES)]
    teachers = [k for k in state if k.startswith(TRAINING_ONLY_PREFIXES)]
    assert len(inference) == len(net) and teachers
    for key in inference:
        assert torch.equal(state[key], net[key]), key
    for key in teachers:  # RGB_TEACHER / TIR_TEACHER are empty: their fresh initialisation, untouched
        assert torch.equal(state[key], fresh[key]), key


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp('finetune')
    assert _train(_config(folder, 'base'), folder / 'out') == 0
    checkpoint = folder / 'out' / 'checkpoints' / 'train' / 'ckd' / 'base' / 'OSTrack_CKD_ep0001.pth.tar'
    assert export_main([str(checkpoint), str(folder / 'base.pth.tar')]) == 0
    return folder, checkpoint, folder / 'base.pth.tar'


def test_train_export_then_finetune_from_the_export(exported, tmp_path, capsys):
    folder, _, export = exported
    config = _config(tmp_path, 'ft', str(export))
    capsys.readouterr()
    # was: "PRETRAIN_FILE ... does not fit the training network (missing ['teacher_rgb.cls_token', ...])"
    assert _train(config, tmp_path / 'out') == 0
    out = capsys.readouterr().out
    assert (f'students and fused head <- {export} (inference checkpoint without teachers' in out
            and 'teachers and teacher heads kept' in out)
    assert (tmp_path / 'out' / 'checkpoints' / 'train' / 'ckd' / 'ft' / 'OSTrack_CKD_ep0001.pth.tar').is_file()
    model, fresh, lines = _initialised(config)
    assert len(lines) == 1 and 'teachers and teacher heads kept' in lines[0]
    _check_students_loaded_teachers_kept(model, fresh, read_checkpoint(export)['net'])


def test_finetune_from_a_ddp_prefixed_export(exported, tmp_path):
    _, _, export = exported
    raw = read_checkpoint(export)
    raw['net'] = {f'module.{k}': v for k, v in raw['net'].items()}
    prefixed = tmp_path / 'prefixed.pth.tar'
    torch.save(raw, prefixed)
    model, fresh, _ = _initialised(_config(tmp_path, 'ft', str(prefixed)))
    _check_students_loaded_teachers_kept(model, fresh, raw['net'])


def test_finetune_from_the_shipped_weights(tmp_path, capsys):
    config = _config(tmp_path, 'shipped', str(SHIPPED))
    assert _train(config, tmp_path / 'out') == 0
    assert 'teachers and teacher heads kept' in capsys.readouterr().out
    model, fresh, _ = _initialised(config)
    _check_students_loaded_teachers_kept(model, fresh, read_checkpoint(SHIPPED)['net'])


def test_full_training_checkpoint_still_loads_strictly(exported, tmp_path):
    _, checkpoint, _ = exported
    model, _, lines = _initialised(_config(tmp_path, 'full', str(checkpoint)))
    assert lines == [f'all weights <- {checkpoint} (strict)']
    net = read_checkpoint(checkpoint)['net']
    for key, value in model.state_dict().items():
        assert torch.equal(value, net[key]), key


def _refused(config: Path, output: Path, capsys) -> str:
    capsys.readouterr()
    assert _train(config, output) == 2
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return captured.err


def test_other_mismatches_are_clear_errors_naming_the_keys(exported, tmp_path, capsys):
    _, checkpoint, export = exported
    raw = read_checkpoint(export)
    # an inference file lacking student keys
    del raw['net']['tir_branch.norm.weight'], raw['net']['box_head.conv1_ctr.0.weight']
    partial = tmp_path / 'partial.pth.tar'
    torch.save(raw, partial)
    err = _refused(_config(tmp_path, 'partial', str(partial)), tmp_path / 'out', capsys)
    assert 'does not fit the training network' in err and 'missing 2' in err
    assert 'tir_branch.norm.weight' in err and 'box_head.conv1_ctr.0.weight' in err
    # the shipped ckd_tiny weights into another network size
    err = _refused(_config(tmp_path, 'smaller', str(SHIPPED), ', BACKBONE: {EMBED_DIM: 64}'), tmp_path / 'out', capsys)
    assert 'does not fit the training network' in err and 'other shape' in err and 'rgb_branch.' in err
    # a training checkpoint with one tensor of another shape: was a torch RuntimeError traceback
    full = read_checkpoint(checkpoint)
    full['net']['teacher_tir.norm.weight'] = torch.zeros(3)
    bad = tmp_path / 'bad_full.pth.tar'
    torch.save(full, bad)
    err = _refused(_config(tmp_path, 'bad_full', str(bad)), tmp_path / 'out', capsys)
    assert 'does not fit the training network' in err and 'teacher_tir.norm.weight (3,)' in err
    # a training checkpoint missing one teacher head: still the strict official load, no silent partial load
    full = read_checkpoint(checkpoint)
    full['net'] = {k: v for k, v in full['net'].items() if not k.startswith('box_head_i.')}
    bad = tmp_path / 'no_head_i.pth.tar'
    torch.save(full, bad)
    err = _refused(_config(tmp_path, 'no_head_i', str(bad)), tmp_path / 'out', capsys)
    assert 'missing 90' in err and 'box_head_i.' in err
    assert not (tmp_path / 'out' / 'checkpoints').exists()


def test_relative_paths_documented_resolution(tmp_path, monkeypatch):
    """Documented (ckd_train/README.md): a relative BASE is looked up next to the training file, a relative
    MODEL.PRETRAIN_FILE is opened from the current folder (the official ./pretrained/... convention)."""
    from ckd_train.init import check_pretrained_files
    configs = tmp_path / 'configs'
    configs.mkdir()
    tiny = (SHIPPED.parents[1] / 'configs' / 'ckd_tiny.yaml').read_text()
    assert '  PRETRAIN_FILE: ""' in tiny
    (configs / 'base.yaml').write_text(tiny.replace('  PRETRAIN_FILE: ""', '  PRETRAIN_FILE: weights/ckd_tiny.pth.tar'))
    (configs / 'run.yaml').write_text('BASE: base.yaml\nTRAIN: {BATCH_SIZE: 1}\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(configs / 'run.yaml').cfg  # BASE found next to run.yaml, not in the current folder
    assert cfg.TRAIN.BATCH_SIZE == 1 and cfg.MODEL.PRETRAIN_FILE == 'weights/ckd_tiny.pth.tar'
    (configs / 'weights').mkdir()
    (configs / 'weights' / 'ckd_tiny.pth.tar').write_bytes(SHIPPED.read_bytes())  # next to the YAML: not used
    with pytest.raises(FileNotFoundError, match=r'weights/ckd_tiny.pth.tar \(MODEL.PRETRAIN_FILE\) does not exist'):
        check_pretrained_files(cfg)
    (tmp_path / 'weights').mkdir()
    (tmp_path / 'weights' / 'ckd_tiny.pth.tar').write_bytes(SHIPPED.read_bytes())  # from the current folder
    check_pretrained_files(cfg)
    assert 'students and fused head <- weights/ckd_tiny.pth.tar' in initialise_from_config(build_training_model(cfg),
                                                                                          cfg)[0]
