"""The default thermal gain keeps a small hot target: a person or a drone at range covers far less than 1 %
of a 640x512 frame. The former default, 'percentile' 1..99, clipped it to white together with the
brightest 1 % of the background, and the shipped model lost it after ~45 frames; this sequence is
tracked by the node's default within a few pixels."""
import numpy as np
import pytest

from ckd_ros.core.image import DEFAULT_GAIN_MODE, ThermalGainControl, thermal_image_to_rgb8

HEIGHT, WIDTH, SIZE, FRAMES = 512, 640, 10, 60


def _sequence(seed=3):
    """A night scene: dark RGB, a 10x10 px hot target (0.03 % of the frame) moving over a warm, textured
    16-bit background with sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = 3000 + 300 * np.sin(xx / 90.0) * np.cos(yy / 70.0) + 200 * (yy / HEIGHT)
    for i in range(FRAMES):
        cx, cy = 200 + 4 * i, 250 + 30 * np.sin(i / 8)
        raw = background + rng.normal(0, 20, (HEIGHT, WIDTH))
        x0, y0 = int(round(cx - SIZE / 2)), int(round(cy - SIZE / 2))
        raw[y0:y0 + SIZE, x0:x0 + SIZE] = 4200 + rng.normal(0, 20, (SIZE, SIZE))
        rgb = (8 + rng.integers(0, 6, (HEIGHT, WIDTH, 3))).astype(np.uint8)
        yield rgb, np.clip(raw, 0, 65535).astype(np.uint16), (x0, y0, SIZE, SIZE)


def _node_default_gain():
    from ckd_ros.ros.params import PARAMETER_SPECS, read_parameters
    defaults = {spec.name: spec.default for spec in PARAMETER_SPECS}
    return read_parameters(defaults.__getitem__).make_gain_control()


def test_the_default_gain_keeps_a_small_hot_target_distinct_from_the_background():
    rgb, raw, (x, y, w, h) = next(_sequence())
    default = thermal_image_to_rgb8(raw, 'mono16', ThermalGainControl()).image[:, :, 0]
    target = default[y:y + h, x:x + w].astype(float)
    background = np.delete(default.ravel(), (np.arange(y, y + h)[:, None] * WIDTH + np.arange(x, x + w)).ravel())
    assert target.mean() - np.percentile(background, 99.9) > 60
    # the former default saturates target and background alike: the target is gone
    clipped = thermal_image_to_rgb8(raw, 'mono16', ThermalGainControl('percentile', 1.0, 99.0)).image[:, :, 0]
    assert clipped[y:y + h, x:x + w].mean() == 255 and np.percentile(clipped, 99.5) == 255


def test_node_ros_free_tracker_and_training_share_one_default_gain():
    pytest.importorskip('rclpy')
    from ckd_train import data
    assert DEFAULT_GAIN_MODE == 'minmax'
    assert _node_default_gain().mode == ThermalGainControl().mode == data._THERMAL_GAIN.mode == DEFAULT_GAIN_MODE


def test_the_shipped_model_tracks_a_small_hot_target_with_the_default_gain(one_torch_thread):
    from ckd_ros.core.api import init_tracker
    tracker = init_tracker('ckd_tiny', None, 'cpu')
    gain = ThermalGainControl()
    errors = []
    for index, (rgb, raw, box) in enumerate(_sequence()):
        thermal = thermal_image_to_rgb8(raw, 'mono16', gain).image
        if index == 0:
            tracker.initialize(rgb, thermal, box)
            continue
        x, y, w, h = tracker.track(rgb, thermal).box
        errors.append(np.hypot(x + w / 2 - box[0] - SIZE / 2, y + h / 2 - box[1] - SIZE / 2))
    assert max(errors) < 9.0, errors   # measured 2.2 px; 'percentile' 1..99 drifted 54 px away
