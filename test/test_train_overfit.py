"""A small configuration learns a few synthetic sequences on the CPU: the total CKD loss falls by
at least a factor of 4 within 48 steps (about 20 s on one core)."""
import numpy as np
import torch

from ckd_ros.core.config import load_config
from ckd_train.settings import SyntheticSettings, TrainConfig
from ckd_train.trainer import TrainOptions, train

FACTOR = 4.0


def test_small_config_overfits_a_few_synthetic_sequences(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config('ckd_4b_dropmae_ckd_tf_cc_mask.25', {
        'MODEL': {'PRETRAIN_FILE': '', 'RGB_BRANCH': '', 'TIR_BRANCH': '', 'RGB_TEACHER': '', 'TIR_TEACHER': '',
                  'BACKBONE': {'EMBED_DIM': 32, 'DEPTH': 2, 'NUM_HEADS': 2}, 'HEAD': {'NUM_CHANNELS': 16}},
        'DATA': {'TEMPLATE': {'SIZE': 64}, 'SEARCH': {'SIZE': 128},
                 'TRAIN': {'DATASETS_NAME': ['SYNTHETIC'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 192}},
        'TEST': {'TEMPLATE_SIZE': 64, 'SEARCH_SIZE': 128},
        'TRAIN': {'BATCH_SIZE': 4, 'EPOCH': 1, 'NUM_WORKER': 0, 'PRINT_INTERVAL': 12, 'DROP_PATH_RATE': 0.0,
                  'PARAM_KEY': [['head', 2e-2], ['branch', 3e-3], ['teacher', 3e-3]]},
    })
    tc = TrainConfig(cfg, SyntheticSettings(seeds=(0, 3), val_seeds=(900, 901), length=40, size=(160, 128)),
                     name='overfit')
    result = train(TrainOptions(config=tc, output_dir=tmp_path, device='cpu', progress=False, validate=False))
    losses = np.array(result.step_losses)
    assert len(losses) == 48 and np.isfinite(losses).all()
    first, last = losses[:4].mean(), losses[-8:].mean()
    assert last < first / FACTOR, f'loss {first:.2f} -> {last:.2f}: fell by {first / last:.2f}x, expected {FACTOR}x'
    # the per-step log shows the fused prediction improving
    rows = (tmp_path / 'logs' / 'overfit' / 'train.csv').read_text().splitlines()
    header = rows[0].split(',')
    fused = [float(r.split(',')[header.index('loss_fused')]) for r in rows[1:]]
    iou = [float(r.split(',')[header.index('iou')]) for r in rows[1:]]
    assert len(fused) == 4 and fused[-1] < fused[0] / 2 and iou[-1] > iou[0]
