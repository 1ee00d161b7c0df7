"""Two-process DDP (torchrun, gloo on localhost) = one process on the combined batch.

The per-process head BatchNorm statistics of the official DDP setup (no SyncBatchNorm) make the two
differ by design, so this run freezes BatchNorm (``--batchnorm frozen``) and DropPath is 0; every
other part is the real path: torchrun environment, process group, DDP with
find_unused_parameters, the sample split, gradient averaging, clipping and AdamW.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckd_ros.core.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25
SYNTHETIC: {SEEDS: [0, 2], VAL_SEEDS: [900, 901], LENGTH: 30, SIZE: [160, 128]}
MODEL:
  PRETRAIN_FILE: ""
  RGB_BRANCH: ""
  TIR_BRANCH: ""
  RGB_TEACHER: ""
  TIR_TEACHER: ""
  BACKBONE: {EMBED_DIM: 32, DEPTH: 2, NUM_HEADS: 2}
  HEAD: {NUM_CHANNELS: 16}
DATA:
  TEMPLATE: {SIZE: 64}
  SEARCH: {SIZE: 128}
  TRAIN: {DATASETS_NAME: [SYNTHETIC], DATASETS_RATIO: [1], SAMPLE_PER_EPOCH: 4}
TEST: {TEMPLATE_SIZE: 64, SEARCH_SIZE: 128}
TRAIN:
  BATCH_SIZE: 2
  EPOCH: 1
  NUM_WORKER: 0
  DROP_PATH_RATE: 0.0
  PARAM_KEY: [[head, 0.001], [branch, 0.001], [teacher, 0.001]]
"""


def _run(args, env_extra=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH', '')) if p)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _net(out_dir: Path) -> dict:
    ckpt = out_dir / 'checkpoints' / 'train' / 'ckd' / 'ddp' / 'OSTrack_CKD_ep0001.pth.tar'
    return read_checkpoint(ckpt)['net']


pytestmark = pytest.mark.slow  # three torch processes start (about 30-90 s on 2 cores)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    config = tmp / 'ddp.yaml'
    config.write_text(CONFIG)
    common = ['--device', 'cpu', '--threads', '1', '--batchnorm', 'frozen', '--no-val', '--no-progress']
    _run(['-m', 'torch.distributed.run', '--standalone', '--nnodes', '1', '--nproc_per_node', '2',
          '-m', 'ckd_train', str(config), '--output', str(tmp / 'ddp'), *common])
    # one process, the combined batch (2 x 2 samples: the same 4 samples of the epoch)
    _run(['-m', 'ckd_train', str(config), '--output', str(tmp / 'single'), '--batch-size', '4', *common])
    # one process on rank 0's half only: must differ (shows the comparison can fail)
    _run(['-m', 'ckd_train', str(config), '--output', str(tmp / 'half'), '--samples-per-epoch', '2', *common])
    return {k: _net(tmp / k) for k in ('ddp', 'single', 'half')}, tmp


def test_ddp_step_equals_single_process_on_combined_batch(runs):
    nets, _ = runs
    ddp, single, half = nets['ddp'], nets['single'], nets['half']
    assert list(ddp) == list(single)
    worst = max(float((ddp[k].double() - single[k].double()).abs().max()) for k in ddp
                if ddp[k].is_floating_point())
    assert worst < 2e-6, f'DDP and single-process parameters differ by {worst}'
    # the step moved the weights by about the learning rate, and half the batch gives other weights
    moved = max(float((half[k].double() - ddp[k].double()).abs().max()) for k in ddp if ddp[k].is_floating_point())
    assert moved > 1e-4


def test_ddp_checkpoint_has_no_module_prefix_and_all_branches(runs):
    nets, _ = runs
    keys = list(nets['ddp'])
    assert not any(k.startswith('module.') for k in keys)
    prefixes = []
    for k in keys:
        p = k.split('.')[0]
        if not prefixes or prefixes[-1] != p:
            prefixes.append(p)
    assert prefixes == ['rgb_branch', 'tir_branch', 'box_head', 'teacher_rgb', 'teacher_tir',
                        'box_head_v', 'box_head_i']
