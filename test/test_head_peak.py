"""The tracker's shortcut through the CENTER head: size and offset computed only on the receptive field
of the cell the Hann-windowed arg-max reads equal the full maps there, at every kind of cell (corner,
edge, interior), and the tracker's boxes do not change."""
import numpy as np
import pytest
import torch

from ckd_ros.core.config import load_config
from ckd_ros.core.model import build_ckd_model
from ckd_ros.core.model.head import CenterHead, decode_center_boxes
from ckd_ros.core.synthetic import SyntheticScene
from ckd_ros.core.tracker import CKDTracker


@pytest.fixture(scope='module')
def head():
    torch.manual_seed(0)
    head = CenterHead(in_channels=48, channels=32, feat_size=12).eval()
    for module in head.modules():   # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return head


@pytest.mark.parametrize('cell', [(0, 0), (0, 11), (11, 0), (11, 11), (0, 5), (6, 11), (3, 2), (5, 6), (1, 10)])
def test_size_and_offset_at_the_peak_equal_the_full_maps(head, cell):
    torch.manual_seed(1)
    features = torch.randn(2, 48, 12, 12)
    peak_weight = torch.zeros(2, 1, 12, 12)
    peak_weight[0, 0, cell[0], cell[1]] = 1.0            # sample 0: forced to this cell
    peak_weight[1] = 1.0                                   # sample 1: the raw arg-max
    with torch.no_grad():
        score, size, offset = head.score_maps(features)
        p_score, p_size, p_offset = head.maps_at_peak(features, peak_weight)
        _, boxes, _, _ = head(features, peak_weight=peak_weight)
    assert torch.equal(p_score, score)
    peaks = [cell, divmod(int(score[1].flatten().argmax()), 12)]
    for b, (row, col) in enumerate(peaks):
        torch.testing.assert_close(p_size[b, :, row, col], size[b, :, row, col], rtol=0, atol=1e-6)
        torch.testing.assert_close(p_offset[b, :, row, col], offset[b, :, row, col], rtol=0, atol=1e-5)
        assert int(p_size[b].isnan().sum()) == 2 * 144 - 2   # nothing else was computed
    torch.testing.assert_close(boxes, decode_center_boxes(peak_weight * score, size, offset), rtol=0, atol=1e-5)


def test_peak_weight_and_ground_truth_decoding_exclude_each_other(head):
    with pytest.raises(ValueError, match='exclude'):
        head(torch.zeros(1, 48, 12, 12), gt_score_map=torch.zeros(1, 12, 12), peak_weight=torch.ones(1, 1, 12, 12))


class FullMaps:
    """The runner as before the shortcut: full size and offset maps."""

    def __init__(self, runner):
        self.runner = runner

    def set_templates(self, templates, template_mask):
        self.runner.set_templates(templates, template_mask)

    def __call__(self, searches, peak_weight=None):
        return self.runner(searches)


def test_tracker_boxes_unchanged_by_the_peak_shortcut(one_torch_thread):
    cfg = load_config('ckd_tiny')
    torch.manual_seed(2)
    network = build_ckd_model(cfg)
    scene = SyntheticScene(5, length=12, size=(320, 256))
    full, shortcut = CKDTracker(network, cfg, 'cpu'), CKDTracker(network, cfg, 'cpu')
    full.runner = FullMaps(full.runner)
    rgb, tir = scene.frame(0)
    for tracker in (full, shortcut):
        tracker.initialize(rgb, tir, tuple(scene.boxes[0]))
    for k in range(1, 12):
        rgb, tir = scene.frame(k)
        a, b = full.track(rgb, tir), shortcut.track(rgb, tir)
        np.testing.assert_allclose(a.box, b.box, rtol=0, atol=1e-3)
        assert a.score == b.score
