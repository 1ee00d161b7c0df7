"""Training checkpoints: official structure, round trip into init_tracker, stripping, exact resume."""
import numpy as np
import pytest
import torch

from ckd_ros.core.api import init_tracker
from ckd_ros.core.checkpoint import CheckpointError, read_checkpoint
from ckd_ros.core.synthetic import SyntheticScene
from ckd_train.checkpoints import export_inference_checkpoint, load_training_checkpoint
from ckd_train.settings import SyntheticSettings, TrainConfig, load_train_config
from ckd_train.trainer import TrainOptions, train

from ckd_ros.core.config import load_config

torch.set_num_threads(1)

OVERRIDES = {
    "MODEL": {"PRETRAIN_FILE": "", "RGB_BRANCH": "", "TIR_BRANCH": "", "RGB_TEACHER": "", "TIR_TEACHER": "",
              "BACKBONE": {"EMBED_DIM": 32, "DEPTH": 2, "NUM_HEADS": 2}, "HEAD": {"NUM_CHANNELS": 16}},
    "DATA": {"TEMPLATE": {"SIZE": 64}, "SEARCH": {"SIZE": 128},
             "TRAIN": {"DATASETS_NAME": ["SYNTHETIC"], "DATASETS_RATIO": [1], "SAMPLE_PER_EPOCH": 4},
             "VAL": {"DATASETS_NAME": ["SYNTHETIC_VAL"], "DATASETS_RATIO": [1], "SAMPLE_PER_EPOCH": 2}},
    "TEST": {"TEMPLATE_SIZE": 64, "SEARCH_SIZE": 128},
    "TRAIN": {"BATCH_SIZE": 2, "EPOCH": 2, "NUM_WORKER": 0, "VAL_EPOCH_INTERVAL": 1, "PRINT_INTERVAL": 1,
              "PARAM_KEY": [["head", 1e-3], ["branch", 1e-3], ["teacher", 1e-3]]},
}


def tiny_train_config() -> TrainConfig:
    cfg = load_config("ckd_4b_dropmae_ckd_tf_cc_mask.25", OVERRIDES)  # DropPath 0.1 stays on: RNG matters
    return TrainConfig(cfg, SyntheticSettings(seeds=(0, 2), val_seeds=(900, 901), length=30, size=(160, 128)),
                       name="tiny")


def _options(tmp_path, **kw):
    return TrainOptions(config=tiny_train_config(), output_dir=tmp_path, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return train(_options(out)), out


def test_checkpoint_has_the_official_structure(two_epochs):
    result, out = two_epochs
    assert [p.name for p in result.checkpoints] == ["OSTrack_CKD_ep0001.pth.tar", "OSTrack_CKD_ep0002.pth.tar"]
    assert result.checkpoints[0].parent == out / "checkpoints" / "train" / "ckd" / "tiny"
    raw = read_checkpoint(result.checkpoints[-1])  # weights_only load: plain containers only
    assert set(raw) == {"epoch", "actor_type", "net_type", "net", "net_info", "constructor", "optimizer", "stats",
                        "settings"}
    assert raw["epoch"] == 2 and raw["actor_type"] == "OSTrack_CKD_Actor" and raw["net_type"] == "OSTrack_CKD"
    assert {k.split(".")[0] for k in raw["net"]} == {"rgb_branch", "tir_branch", "box_head", "teacher_rgb",
                                                     "teacher_tir", "box_head_v", "box_head_i"}
    assert raw["net"]["box_head_v.conv1_ctr.0.weight"].shape[1] == 32
    assert raw["net"]["box_head.conv1_ctr.0.weight"].shape[1] == 64
    assert len(raw["optimizer"]["param_groups"]) == 3
    assert set(raw["stats"]) == {"train", "val"} and "Loss/total" in raw["stats"]["train"]
    assert raw["settings"]["config"]["MODEL"]["BACKBONE"]["EMBED_DIM"] == 32
    assert [h["epoch"] for h in raw["settings"]["history"]] == [1, 2]
    csv = (out / "logs" / "tiny" / "train.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,step,global_step") and len(csv) == 1 + 4
    epochs = (out / "logs" / "tiny" / "epochs.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in epochs[1:]] == [["1", "train"], ["1", "val"], ["2", "train"], ["2", "val"]]


def _track(tracker, scene, frames=6):
    rgb, th = scene.frame(0)
    tracker.initialize(rgb, th, scene.ground_truth[0])
    return np.array([tracker.track(*scene.frame(i)).box for i in range(1, frames)])


def test_training_checkpoint_round_trips_into_init_tracker(two_epochs, tmp_path):
    result, _ = two_epochs
    cfg = tiny_train_config().cfg
    tracker = init_tracker(cfg, checkpoint=result.checkpoints[-1], device="cpu")
    net = read_checkpoint(result.checkpoints[-1])["net"]
    loaded = tracker.network.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, net[key]), key
    scene = SyntheticScene(7, length=8, size=(320, 256))
    boxes = _track(tracker, scene)
    assert np.isfinite(boxes).all() and (boxes[:, 2:] >= 10).all()
    # the stripped file (no optimizer, no teachers) gives the same tracker
    small = export_inference_checkpoint(result.checkpoints[-1], tmp_path / "tiny.pth.tar")
    stripped = read_checkpoint(small)
    assert stripped["optimizer"] is None and not any(k.startswith("teacher") for k in stripped["net"])
    assert set(stripped) == set(read_checkpoint(result.checkpoints[-1]))
    assert small.stat().st_size < 0.6 * result.checkpoints[-1].stat().st_size
    np.testing.assert_array_equal(_track(init_tracker(cfg, checkpoint=small, device="cpu"), scene), boxes)
    with pytest.raises(CheckpointError, match="stripped"):
        load_training_checkpoint(small)


def test_resume_continues_exactly(two_epochs, tmp_path):
    result, _ = two_epochs
    first = result.checkpoints[0]
    resumed = train(_options(tmp_path, resume=first))
    assert [p.name for p in resumed.checkpoints] == ["OSTrack_CKD_ep0002.pth.tar"]
    a = read_checkpoint(result.checkpoints[-1])
    b = read_checkpoint(resumed.checkpoints[-1])
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    assert [h["epoch"] for h in b["settings"]["history"]] == [1, 2]


def test_training_file_and_bad_configs(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nSYNTHETIC: {SEEDS: [0, 4], LENGTH: 40}\n"
                    "TRAIN: {BATCH_SIZE: 3}\n")
    tc = load_train_config(path)
    assert tc.cfg.TRAIN.BATCH_SIZE == 3 and tc.synthetic.seeds == (0, 4) and tc.synthetic.length == 40
    assert tc.cfg.TRAIN.EPOCH == 30  # from BASE
    path.write_text("BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nSYNTHETIC: {SEEDS: [0, 4], VAL_SEEDS: [2, 6]}\n")
    with pytest.raises(ValueError, match="overlap"):
        load_train_config(path)
    path.write_text("SYNTHETIC: {SEEDS: [0, 4]}\nTRAIN: {BATCH_SIZE: 3}\n")
    with pytest.raises(ValueError, match="needs BASE"):
        load_train_config(path)
    path.write_text("BASE: ckd_4b_dropmae_ckd_tf_cc_mask.25\nTRAIN: {BATCH_SIZ: 3}\n")
    with pytest.raises(ValueError, match="unknown key TRAIN.BATCH_SIZ"):
        load_train_config(path)
    # official stage-1 file: the pretrained DropTrack file does not exist here -> actionable error
    with pytest.raises(FileNotFoundError, match="set the MODEL entry"):
        train(TrainOptions(config="ckd_4b_dropmae_ckd_tf_cc_mask.25", output_dir=tmp_path, device="cpu",
                           data_roots={"LasHeR_trainingSet": str(tmp_path)}, validate=False, progress=False))


def test_param_key_freezes_unmatched_and_rejects_typos():
    from ckd_train.model import build_training_model
    from ckd_train.optim import build_optimizer
    cfg = tiny_train_config().cfg.with_overrides({"TRAIN": {"PARAM_KEY": [["head", 5e-5]]}})
    model = build_training_model(cfg)
    opt = build_optimizer(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("head" in n for n in trainable)
    assert any(n.startswith("box_head_v.") for n in trainable) and any(n.startswith("box_head.") for n in trainable)
    assert opt.param_groups[0]["lr"] == 5e-5 and opt.param_groups[0]["weight_decay"] == 1e-4
    bad = cfg.with_overrides({"TRAIN": {"PARAM_KEY": [["head", 5e-5], ["rgb_brnch", 1e-5]]}})
    with pytest.raises(ValueError, match="rgb_brnch"):
        build_optimizer(build_training_model(bad), bad)


def test_held_out_evaluation_scores_three_modes(two_epochs):
    from ckd_train.evaluate import MODES, evaluate_synthetic, run_sequence
    result, _ = two_epochs
    cfg = tiny_train_config().cfg
    ev = evaluate_synthetic(cfg, result.checkpoints[-1], seeds=[900000], length=12, size=(160, 128))
    assert set(ev.metrics) == set(MODES) and ev.frames == 12
    for m in ev.metrics.values():
        assert 0.0 <= m["SR"] <= 1.0 and 0.0 <= m["PR"] <= 1.0
    assert "SR" in ev.table() and "thermal_only" in ev.table()
    with pytest.raises(ValueError, match="mode"):
        run_sequence(None, SyntheticScene(1, length=3, size=(64, 64)), "infrared")


def test_step_schedule_and_constant_default():
    from ckd_train.model import build_training_model
    from ckd_train.optim import apply_lr_schedule, build_optimizer, lr_factor
    cfg = tiny_train_config().cfg
    assert [lr_factor(cfg, e) for e in (1, 5, 30)] == [1.0, 1.0, 1.0]  # official: constant
    step = cfg.with_overrides({"TRAIN": {"LR_DROP_EPOCH": 2, "SCHEDULER": {"TYPE": "step", "DECAY_RATE": 0.1}}})
    assert [lr_factor(step, e) for e in (1, 2, 3, 4, 5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    opt = build_optimizer(build_training_model(step), step)
    apply_lr_schedule(opt, step, 3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4, 1e-4])
    apply_lr_schedule(opt, step, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-3])
    bad = cfg.with_overrides({"TRAIN": {"SCHEDULER": {"TYPE": "cosine"}}})
    with pytest.raises(ValueError, match="not supported"):
        build_optimizer(build_training_model(bad), bad)
