"""The tracker pipeline (official steps, options) and the init_tracker API, on the small config."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import moving_square_frames
from ckd_ros.core import api
from ckd_ros.core.api import init_tracker, resolve_device
from ckd_ros.core.checkpoint import save_checkpoint
from ckd_ros.core.config import load_config
from ckd_ros.core.geometry import clip_box, hann2d, map_box_back, sample_target
from ckd_ros.core.model import build_ckd_model, decode_center_boxes
from ckd_ros.core.recipe_weights import load_recipe_weights
from ckd_ros.core.tracker import LOST, TRACKING, CKDTracker, TrackerOptions

TINY = 'ckd_tiny'
H, W = 240, 320


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope='module')
def frames():
    """A bright square moving right over a noisy background, RGB and single-channel thermal."""
    return moving_square_frames(6, H, W)


@pytest.fixture(scope='module')
def network():
    return load_recipe_weights(build_ckd_model(TINY, initialize=False))


def _tracker(network, **options):
    return CKDTracker(network, load_config(TINY), 'cpu', TrackerOptions(**options))


def test_track_follows_the_official_steps(network, frames):
    """Each result equals crop -> network -> Hann window -> decode -> map back -> clip, done by hand."""
    rgb, tir = frames
    cfg = load_config(TINY)
    tracker = _tracker(network)
    init = tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    assert init.box == (120.0, 100.0, 30.0, 30.0) and init.state == TRACKING and init.frame_index == 0
    mean = torch.tensor(cfg.DATA.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.DATA.STD).view(1, 3, 1, 1)

    def norm(patch):
        patch = np.repeat(patch[:, :, None], 3, axis=2) if patch.ndim == 2 else patch
        return ((torch.from_numpy(patch).float().permute(2, 0, 1).unsqueeze(0) / 255.0) - mean) / std

    z = [norm(sample_target(rgb[0], (120, 100, 30, 30), 2.0, 96)[0]),
         norm(sample_target(tir[0], (120, 100, 30, 30), 2.0, 96)[0])]
    state = [120.0, 100.0, 30.0, 30.0]
    for t in range(1, 6):
        x_rgb, factor = sample_target(rgb[t], state, 4.0, 192)
        x_tir, _ = sample_target(tir[t], state, 4.0, 192)
        with torch.no_grad():
            out = network(z, [norm(x_rgb), norm(x_tir)], ce_template_mask=network.template_mask(1, 'cpu'))
        boxes = decode_center_boxes(hann2d(12) * out['score_map'], out['size_map'], out['offset_map'])
        pred = (boxes.view(-1, 4).mean(dim=0) * 192 / factor).tolist()
        state = clip_box(map_box_back(pred, state, 192, factor), H, W, margin=10)
        result = tracker.track(rgb[t], tir[t])
        # the tracker computes size/offset on the peak's receptive field only (CenterHead.maps_at_peak):
        # the same sums in another order, ~1e-6 px apart
        assert result.box == pytest.approx(tuple(state), abs=1e-4)
        assert result.frame_index == t and result.state == TRACKING
        assert result.score == pytest.approx(float(out['score_map'].max()))
        assert 0 < result.score < 1
        x, y, w, h = result.box
        assert 0 <= x <= W - 10 and 0 <= y <= H - 10 and w >= 10 and h >= 10 and x + w <= W + 1e-6


def test_thermal_gray_and_three_channel_inputs_give_the_same_boxes(network, frames):
    rgb, tir = frames
    gray, rgb3 = _tracker(network), _tracker(network)
    gray.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    rgb3.initialize(rgb[0], np.repeat(tir[0][:, :, None], 3, axis=2), (120, 100, 30, 30))
    for t in range(1, 4):
        a = gray.track(rgb[t], tir[t][:, :, None])  # HxWx1 is accepted too
        b = rgb3.track(rgb[t], np.repeat(tir[t][:, :, None], 3, axis=2))
        assert a.box == b.box and a.score == b.score


def test_lost_state_keeps_the_last_trusted_box(network, frames):
    rgb, tir = frames
    tracker = _tracker(network, lost_threshold=1.0)  # every score (< 1 - 1e-4) counts as lost
    tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    for t in range(1, 3):
        result = tracker.track(rgb[t], tir[t])
        assert result.state == LOST and result.box == (120.0, 100.0, 30.0, 30.0) and result.score < 1.0
    assert tracker.box == (120.0, 100.0, 30.0, 30.0)
    reference = _tracker(network)
    reference.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    tracking = _tracker(network, lost_threshold=0.0)
    tracking.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    for t in range(1, 3):
        assert tracking.track(rgb[t], tir[t]) == reference.track(rgb[t], tir[t])


def test_scale_change_option_holds_the_box_size_within_the_ratio(network, frames):
    rgb, tir = frames
    reference = _tracker(network)
    limited = _tracker(network, max_scale_change=1.01)
    for tracker in (reference, limited):
        tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    previous = (120.0, 100.0, 30.0, 30.0)
    for t in range(1, 5):
        free, held = reference.track(rgb[t], tir[t]).box, limited.track(rgb[t], tir[t]).box
        for k in (2, 3):
            assert previous[k] / 1.01 - 1e-6 <= held[k] <= previous[k] * 1.01 + 1e-6
        previous = held
    assert free != held   # the random-weight network's sizes do change more than 1 % a frame
    with pytest.raises(ValueError, match='max_scale_change'):
        TrackerOptions(max_scale_change=1.0)
    assert not TrackerOptions(max_scale_change=1.1).is_official


def test_redetection_grows_the_search_region_while_lost_and_resets_on_the_next_hit(network, frames, monkeypatch):
    from ckd_ros.core import tracker as tracker_module
    factors = []
    real_sample_target = tracker_module.sample_target

    def recording_sample_target(image, box, factor, size):
        factors.append(factor)
        return real_sample_target(image, box, factor, size)

    monkeypatch.setattr(tracker_module, 'sample_target', recording_sample_target)
    rgb, tir = frames
    tracker = _tracker(network, lost_threshold=1.0, redetect_growth=1.5, redetect_max_factor=2.0)
    tracker.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    factors.clear()
    for t in range(1, 5):
        assert tracker.track(rgb[t], tir[t]).state == LOST
    # two crops (RGB, thermal) per frame: 4 x (1, 1.5, 2 (capped), 2), the box never moves while lost
    assert factors[::2] == factors[1::2] == [4.0, 6.0, 8.0, 8.0]
    assert tracker.box == (120.0, 100.0, 30.0, 30.0)
    tracker.options = TrackerOptions(lost_threshold=0.0, redetect_growth=1.5, redetect_max_factor=2.0)
    factors.clear()
    assert tracker.track(rgb[5], tir[5]).state == TRACKING   # found: taken at the grown search region ...
    assert tracker.track(rgb[5], tir[5]).state == TRACKING
    assert factors[::2] == [8.0, 4.0]                         # ... and back to the official size after
    # off by default and in every official configuration; out-of-range values are refused
    assert TrackerOptions().redetect_growth is None and not TrackerOptions(redetect_growth=1.2).is_official
    for bad in ({'redetect_growth': 1.0}, {'redetect_growth': 2.5}, {'redetect_max_factor': 0.5},
                {'redetect_max_factor': 9}):
        with pytest.raises(ValueError, match='redetect'):
            TrackerOptions(**bad)


def test_template_update_option(network, frames):
    rgb, tir = frames
    fixed = _tracker(network)
    updating = _tracker(network, template_update_interval=2, template_update_threshold=0.0)
    for tr in (fixed, updating):
        tr.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    first_templates = [z.clone() for z in updating._templates]
    results = []
    for t in range(1, 5):
        results.append((fixed.track(rgb[t], tir[t]), updating.track(rgb[t], tir[t])))
        same = all(torch.equal(a, b) for a, b in zip(first_templates, updating._templates))
        assert same == (t < 2)  # replaced on frame 2 (interval 2), not before
    assert results[0][0] == results[0][1] and results[1][0] == results[1][1]  # identical until the update is used
    assert results[2][0].box != results[2][1].box


def test_input_errors_are_clear(network, frames):
    rgb, tir = frames
    tracker = _tracker(network)
    with pytest.raises(RuntimeError, match='initialize'):
        tracker.track(rgb[0], tir[0])
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        tracker.initialize(rgb[0].astype(np.float32), tir[0], (120, 100, 30, 30))
    with pytest.raises(ValueError, match='uint8'):
        tracker.initialize(rgb[0], tir[0].astype(np.uint16), (120, 100, 30, 30))
    with pytest.raises(ValueError, match='differ in size'):
        tracker.initialize(rgb[0], tir[0][:200], (120, 100, 30, 30))
    with pytest.raises(ValueError, match='HxW, HxWx1 or HxWx3'):
        tracker.initialize(rgb[0], np.zeros((H, W, 2), np.uint8), (120, 100, 30, 30))
    with pytest.raises(ValueError, match='positive width'):
        tracker.initialize(rgb[0], tir[0], (120, 100, -3, 30))
    with pytest.raises(ValueError, match='outside'):
        tracker.initialize(rgb[0], tir[0], (400, 100, 30, 30))
    with pytest.raises(ValueError, match='lost_threshold'):
        TrackerOptions(lost_threshold=2.0)


# ---- API ------------------------------------------------------------------------------------------

def test_init_tracker_with_recipe_and_saved_checkpoint(tmp_path, network, frames):
    rgb, tir = frames
    path = save_checkpoint(tmp_path / 'ckd_tiny.pth.tar', network.state_dict(), epoch=1)
    from_file = init_tracker(TINY, checkpoint=path, device='cpu')
    from_recipe = init_tracker(TINY, checkpoint='recipe', device='cpu')
    for tr in (from_file, from_recipe):
        tr.initialize(rgb[0], tir[0], (120, 100, 30, 30))
    for t in range(1, 3):
        a, b = from_file.track(rgb[t], tir[t]), from_recipe.track(rgb[t], tir[t])
        assert a == b and isinstance(a.box[0], float)


def test_init_tracker_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(api, 'WEIGHTS_DIR', tmp_path)
    with pytest.raises(FileNotFoundError, match='make weights'):
        init_tracker(TINY, device='cpu')
    with pytest.raises(ValueError, match='pass checkpoint='):
        init_tracker('ckd_4b_dropmae_ckd_tf_cc_mask.25', device='cpu')
    with pytest.raises(ValueError, match='unknown configuration name'):
        init_tracker('ckd_huge', checkpoint='recipe')


def test_options_must_be_tracker_options():
    # a dict was accepted here and failed with AttributeError on the first track()
    with pytest.raises(TypeError, match='options must be a TrackerOptions'):
        init_tracker(TINY, checkpoint='recipe', device='cpu', options={'lost_threshold': 0.3})
    with pytest.raises(FileNotFoundError, match='checkpoint path is empty'):
        init_tracker(TINY, checkpoint='', device='cpu')  # was: "checkpoint . does not exist (it is a folder)"


def test_a_training_file_given_as_tracker_config_points_to_its_base():
    from ckd_train.settings import TRAIN_CONFIG_DIR
    with pytest.raises(ValueError, match='unknown key BASE.*give the tracker the model configuration'):
        init_tracker(TRAIN_CONFIG_DIR / 'ckd_tiny_smoke.yaml', checkpoint='recipe', device='cpu')


def test_resolve_device():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto') == torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA is not available'):
            resolve_device('cuda:0')
    with pytest.raises(ValueError, match='device must be'):
        resolve_device('tpu')


def test_package_import_is_light():
    code = ("import sys, ckd_ros, ckd_ros.core; "
            "assert 'torch' not in sys.modules and 'rclpy' not in sys.modules, sorted(sys.modules); "
            "f = ckd_ros.init_tracker; assert 'torch' in sys.modules and 'rclpy' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr


@pytest.mark.slow
def test_full_size_mce_tracker_runs_on_640x512():
    """ViT-B MCE tracker with recipe weights on a few 640x512 frames (about 10 s of weight generation)."""
    rng = np.random.default_rng(3)
    tracker = init_tracker('ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead', checkpoint='recipe', device='cpu')
    rgb = rng.integers(0, 256, (512, 640, 3), np.uint8)
    thermal = rng.integers(0, 256, (512, 640), np.uint8)
    tracker.initialize(rgb, thermal, (300, 200, 60, 40))
    for t in range(1, 4):
        result = tracker.track(rgb, thermal)
        x, y, w, h = result.box
        assert result.state == TRACKING and result.frame_index == t and 0.46 < result.score < 0.6
        assert 0 <= x <= 630 and 0 <= y <= 502 and w >= 10 and h >= 10
