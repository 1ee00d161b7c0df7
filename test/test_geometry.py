"""Crop placement, padding quirks, box mapping and clipping against hand-computed cases."""
import math
import tracemalloc

import numpy as np
import pytest
import torch

from ckd_ros.core.geometry import (PADDED_CROP_MAX_BYTES, clip_box, crop_window, hann1d, hann2d, map_box_back,
                                   sample_target, validate_box)


def _column_image(height, width):
    """uint8 image whose pixel value is 1 + its column index (0 is reserved for padding)."""
    row = (np.arange(width) + 1).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


def test_interior_crop_placement():
    # sqrt(40*10) = 20, factor 2 -> 40; centre (120, 55) -> corner (100, 35)
    win = crop_window((100, 50, 40, 10), 2.0, 480, 640)
    assert (win.x1, win.y1, win.size) == (100, 35, 40)
    assert (win.pad_left, win.pad_top, win.pad_right, win.pad_bottom) == (0, 0, 0, 0)
    # ceil: sqrt(10*10) * 2.5 = 25 exactly; sqrt(2*3) * 4 = 9.79 -> 10
    assert crop_window((50, 50, 10, 10), 2.5, 480, 640).size == 25
    assert crop_window((50, 50, 2, 3), 4.0, 480, 640).size == 10


def test_python_round_half_to_even():
    # x + w/2 - size/2 = 0.5 -> round to 0 ; 1.5 -> 2 ; 2.5 -> 2
    assert crop_window((0.5, 0, 3, 3), 1.0, 100, 100).x1 == 0
    assert crop_window((1.5, 0, 3, 3), 1.0, 100, 100).x1 == 2
    assert crop_window((2.5, 0, 3, 3), 1.0, 100, 100).x1 == 2
    assert crop_window((0, 3.5, 3, 3), 1.0, 100, 100).y1 == 4


def test_right_bottom_edge_plus_one_quirk():
    image = _column_image(80, 100)
    # box (90, 70, 10, 10), factor 2 -> size 20, corner (85, 65), x2 = 105 -> pad_right = 105 - 100 + 1 = 6
    win = crop_window((90, 70, 10, 10), 2.0, 80, 100)
    assert (win.x1, win.y1, win.pad_right, win.pad_bottom) == (85, 65, 6, 6)
    patch, factor = sample_target(image, (90, 70, 10, 10), 2.0, 20)  # output = crop size: no resampling
    assert factor == 1.0 and patch.shape == (20, 20, 3)
    # columns 85..98 (values 86..99); image column 99 is dropped, then 6 zero columns
    np.testing.assert_array_equal(patch[0, :, 0], np.r_[np.arange(86, 100), np.zeros(6)])
    # rows 65..78 kept (14), row 79 dropped, 6 zero rows
    assert np.all(patch[14:] == 0) and np.all(patch[:14, :14] > 0)


def test_crop_touching_the_edge_drops_the_last_column():
    image = _column_image(50, 100)
    # box (80, 20, 10, 10), factor 2: size 20, corner 75, x2 = 95 < 100: no padding
    assert crop_window((80, 20, 10, 10), 2.0, 50, 100).pad_right == 0
    # box (85, 20, 10, 10): corner 80, x2 = 100 == W -> pad_right 1, last column replaced by zero
    patch, _ = sample_target(image, (85, 20, 10, 10), 2.0, 20)
    np.testing.assert_array_equal(patch[0, :, 0], np.r_[np.arange(81, 100), 0])


def test_left_top_padding():
    image = _column_image(60, 60)
    win = crop_window((-5, -5, 10, 10), 2.0, 60, 60)  # centre (0, 0), size 20 -> corner (-10, -10)
    assert (win.x1, win.y1, win.pad_left, win.pad_top) == (-10, -10, 10, 10)
    patch, _ = sample_target(image, (-5, -5, 10, 10), 2.0, 20)
    np.testing.assert_array_equal(patch[15, :, 0], np.r_[np.zeros(10), np.arange(1, 11)])
    assert np.all(patch[:10] == 0)


def test_resize_factor_and_linear_resize():
    image = np.full((200, 300, 3), 7, np.uint8)
    patch, factor = sample_target(image, (100, 80, 40, 40), 2.0, 128)  # crop 80 -> 128
    assert patch.shape == (128, 128, 3) and factor == 128 / 80
    assert np.all(patch == 7)


def test_single_channel_crop_equals_each_channel_of_the_replicated_image():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (120, 160), np.uint8)
    box = (140, 100, 30, 25)  # crop crosses the right and bottom borders
    patch_gray, f_gray = sample_target(gray, box, 4.0, 64)
    patch_rgb, f_rgb = sample_target(np.repeat(gray[:, :, None], 3, axis=2), box, 4.0, 64)
    assert patch_gray.shape == (64, 64) and f_gray == f_rgb
    for c in range(3):
        np.testing.assert_array_equal(patch_rgb[:, :, c], patch_gray)


def test_crop_outside_the_image_and_bad_boxes_are_errors():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match='does not overlap'):
        sample_target(image, (200, 200, 10, 10), 2.0, 32)
    with pytest.raises(ValueError, match='does not overlap'):
        sample_target(image, (-100, 10, 10, 10), 2.0, 32)
    with pytest.raises(ValueError, match='positive width and height'):
        crop_window((10, 10, 0, 5), 2.0, 50, 50)
    with pytest.raises(ValueError, match='finite'):
        validate_box((1, 2, float('nan'), 3))
    with pytest.raises(ValueError, match='4 numbers'):
        validate_box('abc')


# Boxes whose crops need padding on every side: a full-frame box, corners, the right/bottom +1 quirk,
# crops larger and smaller than the output, odd and even output sizes.
PADDED_CASES = [((0, 0, 300, 200), 4.0, 128), ((0, 0, 300, 200), 5.0, 256), ((-30, -20, 80, 60), 4.0, 96),
                ((250, 150, 60, 45), 4.0, 128), ((280, 10, 25, 150), 2.0, 64), ((5, 170, 200, 30), 3.3, 77),
                ((120.4, 80.6, 33.3, 21.7), 4.0, 192), ((299, 199, 1, 1), 50.0, 128)]


@pytest.mark.parametrize('channels', [0, 1, 3])
@pytest.mark.parametrize('box, factor, output_size', PADDED_CASES)
def test_the_memory_bounded_crop_equals_the_padded_crop(box, factor, output_size, channels):
    """The bounded path (forced with max_padded_bytes=0) against the official pad-then-resize path: bit
    for bit for uint8 when the crop is shrunk (every case the tracker reaches), within 1 grey level when
    it is enlarged, float32 within 1e-2 on 0..255 values."""
    rng = np.random.default_rng(7)
    shape = (200, 300) if channels == 0 else (200, 300, channels)
    image = rng.integers(0, 256, shape).astype(np.uint8)
    exact, f_exact = sample_target(image, box, factor, output_size)
    bounded, f_bounded = sample_target(image, box, factor, output_size, max_padded_bytes=0)
    assert bounded.shape == exact.shape and bounded.dtype == exact.dtype and f_bounded == f_exact
    if crop_window(box, factor, 200, 300).size > output_size:
        np.testing.assert_array_equal(bounded, exact)
    else:
        assert np.abs(bounded.astype(int) - exact).max() <= 1
    floats = image.astype(np.float32) + rng.random(shape, dtype=np.float32)
    exact_f, _ = sample_target(floats, box, factor, output_size)
    bounded_f, _ = sample_target(floats, box, factor, output_size, max_padded_bytes=0)
    assert bounded_f.dtype == np.float32
    np.testing.assert_allclose(bounded_f, exact_f, atol=1e-2, rtol=0)


def test_a_large_shrunk_crop_is_bit_exact_with_cv2():
    """Crops of thousands of pixels (where float32 source coordinates lose precision) still match."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (3000, 2500), np.uint8)
    for box, factor in (((0, 0, 2500, 3000), 4.0), ((2400, 10, 90, 2900), 4.0), ((-100, 2900, 1500, 400), 5.0)):
        for output_size in (128, 256, 384):
            exact, _ = sample_target(image, box, factor, output_size, max_padded_bytes=2**40)
            bounded, _ = sample_target(image, box, factor, output_size, max_padded_bytes=0)
            np.testing.assert_array_equal(bounded, exact)


def test_a_huge_padded_crop_is_not_built():
    """A full-frame box on a 2048x2048 frame pads to a 10240-pixel crop (100 MiB for one channel; 3 GiB
    for an 8192x8192 RGB frame with factor 4).  Before: the padded crop was allocated."""
    image = np.random.default_rng(0).integers(1, 256, (2048, 2048), np.uint8)   # no zero pixel
    box, factor = (0, 0, 2048, 2048), 5.0
    assert crop_window(box, factor, 2048, 2048).size ** 2 > PADDED_CROP_MAX_BYTES
    tracemalloc.start()
    try:
        patch, resize_factor = sample_target(image, box, factor, 256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert patch.shape == (256, 256) and resize_factor == 256 / 10240
    assert peak < 16 * 2**20, f'{peak / 2**20:.1f} MiB'
    # the image is crop pixels 4096..6143 (output 102.4..153.6), the rest is padding
    assert patch[104:152, 104:152].all()
    assert not patch[:102].any() and not patch[:, :102].any() and not patch[154:].any() and not patch[:, 154:].any()


def test_map_box_back():
    # previous box centre (110, 110); crop 80 px -> 256 px, resize_factor 3.2, half side 40
    factor = 256 / 80
    assert map_box_back([40, 40, 20, 20], [100, 100, 20, 20], 256, factor) == pytest.approx([100, 100, 20, 20])
    # a prediction 8 px right of the crop centre and a wider box
    assert map_box_back([48, 40, 30, 10], [100, 100, 20, 20], 256, factor) == pytest.approx([103, 105, 30, 10])


def test_clip_box_margin_10():
    assert clip_box([-5, 10, 30, 20], 50, 100, margin=10) == [0, 10, 25, 20]
    # beyond the right/bottom corner: x1 -> W - 10, y1 -> H - 10, size -> margin
    assert clip_box([95, 45, 20, 20], 50, 100, margin=10) == [90, 40, 10, 10]
    # entirely left of the frame: x2 raised to the margin
    assert clip_box([-50, 0, 20, 20], 50, 100, margin=10) == [0, 0, 10, 20]
    # inside: unchanged
    assert clip_box([10.5, 12.25, 30, 20], 50, 100, margin=10) == [10.5, 12.25, 30, 20]


def test_hann_window():
    w = hann1d(16)
    assert w.dtype == torch.float32 and w.shape == (16,)
    assert float(w[0]) == pytest.approx(0.5 * (1 - math.cos(2 * math.pi / 17)), rel=1e-6)
    assert float(w[0]) > 0  # k starts at 1: never zero at the border
    torch.testing.assert_close(w, w.flip(0))
    win = hann2d(16)
    assert win.shape == (1, 1, 16, 16)
    assert float(win[0, 0, 7, 8]) == pytest.approx(float(w[7] * w[8]))
