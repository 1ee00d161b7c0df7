"""OpenCV's CSRT / KCF / MIL as baseline trackers (ckd_ros/core/baselines.py): CKD's tracker API, finite
boxes, a lost target keeps its last box, the three inputs, CSRT's psr threshold, and a missing contrib
build named with the package to install; the dev requirements install that contrib build."""
import math
import re

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from ckd_ros.core import baselines, metrics
from ckd_ros.core.baselines import LOST, TRACKING, BaselineOptions, OpenCVTracker, parse_baseline
from ckd_ros.core.synthetic import SyntheticScene

COMBINATIONS = [(tracker, which) for tracker in baselines.BASELINES for which in baselines.INPUTS]


@pytest.fixture(scope='module', autouse=True)
def one_opencv_thread():
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(previous)


@pytest.fixture(scope='module')
def easy_scene():
    """An easy sequence: no failure segments, no look-alikes, no clutter, little noise; the target moves
    32 px and changes size (standing still overlaps the ground truth by 0.05 on average)."""
    scene = SyntheticScene(8, 40, (192, 160), conditions=(), n_rgb_twins=0, n_thermal_twins=0, n_clutter=0,
                           noise=1.0)
    return scene, [scene.frame(i) for i in range(len(scene))]


def _track(tracker, frames, init_box):
    first = tracker.initialize(*frames[0], init_box)
    return first, [tracker.track(*frame) for frame in frames[1:]]


# mean IoU on the easy scene, measured (OpenCV 5.0.0): CSRT 0.70-0.76, KCF 0.52-0.53; MIL samples with an RNG
# OpenCV seeds from the clock, so its boxes vary from run to run: RGB 0.36-0.52, fused 0.48-0.68, thermal 0.03-0.6
MIN_MEAN_IOU = {('csrt', w): 0.5 for w in baselines.INPUTS} | {('kcf', w): 0.4 for w in baselines.INPUTS} \
    | {('mil', 'rgb'): 0.25, ('mil', 'fused'): 0.25}


@pytest.mark.parametrize('tracker, which', COMBINATIONS)
def test_each_baseline_follows_an_easy_synthetic_target_with_finite_boxes(easy_scene, tracker, which):
    scene, frames = easy_scene
    gt = scene.ground_truth
    ot = OpenCVTracker(tracker=tracker, input=which)
    first, track = _track(ot, frames, gt[0])
    assert first.box == tuple(float(v) for v in gt[0]) and first.state == TRACKING and first.frame_index == 0
    boxes = np.array([r.box for r in track])
    assert boxes.shape == (len(frames) - 1, 4) and boxes.dtype == np.float64
    assert np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()
    previous = tuple(float(v) for v in gt[0])
    for k, result in enumerate(track, start=1):
        assert all(isinstance(v, float) for v in result.box)
        assert result.frame_index == k and result.state in (TRACKING, LOST) and result.valid
        assert result.score == (1.0 if result.state == TRACKING else 0.0)
        if result.state == LOST:
            assert result.box == previous, 'a lost target keeps the last box'
        previous = result.box
    mean_iou = float(metrics.overlap(boxes, gt[1:]).mean())
    standing_still = float(metrics.overlap(np.repeat(gt[:1], len(gt) - 1, axis=0), gt[1:]).mean())
    assert standing_still < 0.1
    if (tracker, which) in MIN_MEAN_IOU:
        assert mean_iou > MIN_MEAN_IOU[tracker, which], f'{tracker} {which}: mean IoU {mean_iou:.2f}'


def test_a_target_that_vanishes_is_lost_with_the_last_box_kept(easy_scene):
    """KCF reports failure when the target leaves the image (blank frames): state LOST, the last box, finite."""
    scene, frames = easy_scene
    blank = (np.zeros_like(frames[0][0]), np.zeros_like(frames[0][1]))
    tracker = OpenCVTracker(tracker='kcf', input='fused')
    _, track = _track(tracker, frames[:6] + [blank] * 6, scene.ground_truth[0])
    last_found = [r for r in track if r.state == TRACKING][-1].box
    assert track[-1].state == LOST and track[-1].box == last_found and np.isfinite(track[-1].box).all()


def test_csrt_psr_threshold_zero_never_reports_failure(easy_scene):
    scene, frames = easy_scene
    blank = (np.zeros_like(frames[0][0]), np.zeros_like(frames[0][1]))
    sequence = frames[:4] + [blank] * 4
    _, default = _track(OpenCVTracker(tracker='csrt'), sequence, scene.ground_truth[0])
    _, never = _track(OpenCVTracker(tracker='csrt', psr_threshold=0.0), sequence, scene.ground_truth[0])
    assert LOST in [r.state for r in default], "OpenCV's default psr threshold reports the blank frames"
    assert all(r.state == TRACKING for r in never) and np.isfinite([r.box for r in never]).all()


class _FakeOpenCV:
    """An OpenCV tracker that answers from a script: (found, rect) or an exception."""

    def __init__(self, answers):
        self.answers = list(answers)

    def init(self, image, rect):
        assert image.dtype == np.uint8 and image.shape[2] == 3 and image.flags.c_contiguous
        assert all(isinstance(v, int) for v in rect)
        self.rect = rect

    def update(self, image):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_reported_failure_nonfinite_or_empty_boxes_and_opencv_errors_keep_the_last_box(monkeypatch, easy_scene):
    _, frames = easy_scene
    fake = _FakeOpenCV([(True, (10, 11, 12, 13)), (False, (0, 0, 0, 0)), (True, (math.nan, 1.0, 2.0, 3.0)),
                        (True, (5, 5, 0, 4)), cv2.error('simulated OpenCV assertion'), (True, (20, 21, 22, 23))])
    monkeypatch.setattr(baselines, 'opencv_factory', lambda name: lambda *params: fake)
    tracker = OpenCVTracker(tracker='kcf', input='rgb')
    tracker.initialize(*frames[0], (1.4, 2.6, 30.2, 20.7))
    assert fake.rect == (1, 3, 31, 20)     # the corners rounded: (1.4, 2.6) and (31.6, 23.3)
    results = [tracker.track(*frames[1]) for _ in range(6)]
    assert [r.state for r in results] == [TRACKING, LOST, LOST, LOST, LOST, TRACKING]
    assert [r.box for r in results] == [(10.0, 11.0, 12.0, 13.0)] * 5 + [(20.0, 21.0, 22.0, 23.0)]
    assert results[4].error and 'simulated OpenCV assertion' in results[4].error and not results[4].valid
    assert tracker.box == (20.0, 21.0, 22.0, 23.0)


def test_inputs_are_rgb_thermal_or_their_per_pixel_mean_in_opencv_bgr_order():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 101, 0          # R, G, B
    thermal = np.full((2, 3), 50, np.uint8)
    np.testing.assert_array_equal(baselines._as_bgr(rgb, thermal, 'rgb')[0, 0], [0, 101, 200])
    np.testing.assert_array_equal(baselines._as_bgr(rgb, thermal, 'thermal')[0, 0], [50, 50, 50])
    # (RGB + thermal) / 2 per pixel and channel, rounded half up: (0+50)/2, (101+50)/2, (200+50)/2 in BGR
    np.testing.assert_array_equal(baselines._as_bgr(rgb, thermal, 'fused')[0, 0], [25, 76, 125])
    np.testing.assert_array_equal(baselines._as_bgr(rgb, np.dstack([thermal] * 3), 'fused')[0, 0], [25, 76, 125])


def test_bad_options_and_frames_are_refused_with_the_reason(easy_scene):
    _, frames = easy_scene
    rgb, thermal = frames[0]
    with pytest.raises(ValueError, match='must be one of csrt, kcf, mil'):
        BaselineOptions('goturn')
    with pytest.raises(ValueError, match='input must be one of rgb, thermal, fused'):
        BaselineOptions('csrt', 'depth')
    with pytest.raises(ValueError, match='CSRT option; kcf has none'):
        BaselineOptions('kcf', 'rgb', 0.0)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match='finite number >= 0'):
            BaselineOptions('csrt', 'fused', bad)
    assert parse_baseline('CSRT:fused:psr=0') == BaselineOptions('csrt', 'fused', 0.0)
    assert parse_baseline('kcf:rgb') == BaselineOptions('kcf', 'rgb') and parse_baseline('mil').input == 'fused'
    assert BaselineOptions('csrt', 'fused', 0).label == 'CSRT fused (psr 0)'
    assert BaselineOptions('kcf', 'rgb').label == 'KCF RGB'
    for text in ('csrt:fused:0', 'csrt:fused:psr=x', 'a:b:c:d', ''):
        with pytest.raises(ValueError):
            parse_baseline(text)
    tracker = OpenCVTracker(tracker='csrt')
    with pytest.raises(RuntimeError, match='initialize'):
        tracker.track(rgb, thermal)
    with pytest.raises(ValueError, match='outside the 192x160 frame'):
        tracker.initialize(rgb, thermal, (500, 500, 10, 10))
    with pytest.raises(ValueError, match='w, h > 0'):
        tracker.initialize(rgb, thermal, (5, 5, 0, 10))
    with pytest.raises(ValueError, match='finite'):
        tracker.initialize(rgb, thermal, (math.nan, 5, 10, 10))
    with pytest.raises(ValueError, match='differ in size'):
        tracker.initialize(rgb, thermal[:-1], (5, 5, 10, 10))
    with pytest.raises(ValueError, match='uint8'):
        tracker.initialize(rgb.astype(np.float32), thermal, (5, 5, 10, 10))


def _runtime_opencv_pin() -> str:
    pins = [line for line in (REPO_ROOT / 'requirements-runtime.txt').read_text().splitlines()
            if line.startswith('opencv-python-headless==')]
    assert len(pins) == 1
    return pins[0].split('==', 1)[1]


@pytest.mark.parametrize('tracker', ['csrt', 'kcf'])
def test_without_the_contrib_build_the_error_names_the_package_to_install(monkeypatch, tracker):
    """OpenCV's plain build (opencv-python-headless) has MIL but neither CSRT nor KCF."""
    version = _runtime_opencv_pin()
    name = baselines._OPENCV_NAMES[tracker]
    monkeypatch.delattr(cv2, f'{name}_create', raising=False)
    monkeypatch.delattr(cv2, name, raising=False)
    monkeypatch.setattr(baselines, '_installed_opencv', lambda: {'opencv-python-headless': version})
    with pytest.raises(baselines.BaselineUnavailable) as raised:
        OpenCVTracker(tracker=tracker)
    message = str(raised.value)
    assert f'pip install opencv-contrib-python-headless=={version}' in message
    assert 'pip uninstall -y opencv-python-headless' in message and 'must not be installed together' in message
    assert f'cv2.{name}_create' in message and 'contrib modules' in message
    with pytest.raises(baselines.BaselineUnavailable):
        baselines.check_available(tracker)
    baselines.check_available('mil')          # in the plain build too


def test_install_hints_for_other_opencv_installs():
    both = baselines.install_hint({'opencv-python-headless': '5.0.0.93',
                                   'opencv-contrib-python-headless': '5.0.0.93'})
    assert 'both installed' in both and 'pip uninstall -y opencv-python-headless opencv-contrib-python-headless' in both
    assert both.endswith('pip install opencv-contrib-python-headless==5.0.0.93')
    gui = baselines.install_hint({'opencv-python': '4.10.0.84'})
    assert 'pip install opencv-contrib-python==4.10.0.84' in gui
    assert f'pip install opencv-contrib-python-headless=={cv2.__version__}.*' in baselines.install_hint({})


def test_the_dev_requirements_swap_opencv_for_its_contrib_build_and_otherwise_equal_the_runtime_ones():
    """requirements.txt repeats requirements-runtime.txt (it cannot include it: pip would install both OpenCV
    packages, which overwrite each other's cv2) with opencv-contrib-python-headless at the same version."""
    def pins(name):
        lines = [line.strip() for line in (REPO_ROOT / name).read_text().splitlines()]
        return [line for line in lines if line and not line.startswith('#')]
    runtime, dev = pins('requirements-runtime.txt'), pins('requirements.txt')
    version = _runtime_opencv_pin()
    assert not any(re.match(r'-r\s', line) for line in dev)
    assert not any(line.startswith('opencv-python') for line in dev), 'the plain OpenCV build would clash with contrib'
    assert f'opencv-contrib-python-headless=={version}' in dev
    expected = [f'opencv-contrib-python-headless=={version}' if line.startswith('opencv-python-headless==') else line
                for line in runtime]
    assert dev[:len(expected)] == expected
    # and the environment the tests run in has it: CSRT and KCF, and one OpenCV distribution
    assert hasattr(cv2, 'TrackerCSRT_create') and hasattr(cv2, 'TrackerKCF_create')
    installed = baselines._installed_opencv()
    assert list(installed) == ['opencv-contrib-python-headless'], (
        f'{installed}: more than one OpenCV package provides cv2 (a .venv made before requirements.txt took the '
        f'contrib build); fix it with: pip uninstall -y {" ".join(installed)} && pip install '
        f'opencv-contrib-python-headless=={version}')
