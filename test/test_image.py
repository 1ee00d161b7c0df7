"""Image buffers -> arrays (padding, endianness, errors), thermal gain control, registration onto RGB."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckd_ros.core.image import (ENCODINGS, ImageConversionError, ThermalGainControl, ThermalRegistration,
                                decode_image_buffer, encode_image_buffer, parse_homography, rgb_image_to_rgb8,
                                thermal_image_to_rgb8)


def test_rgb8_with_row_padding_drops_the_padding_and_owns_its_memory():
    height, width, step = 2, 3, 12          # 9 bytes of pixels + 3 bytes of padding per row
    rows = [bytes([10 * r + c for c in range(9)]) + b'\xee\xee\xee' for r in range(height)]
    data = bytearray(b''.join(rows))
    image = decode_image_buffer(height, width, 'rgb8', 0, step, data)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image[1, 2].tolist() == [16, 17, 18]
    assert not (image == 0xEE).any()
    data[0] = 99                            # the middleware may reuse the buffer
    assert image[0, 0, 0] == 0


def test_mono16_big_and_little_endian_and_odd_padding():
    values = np.array([[1, 258, 65535], [4096, 0, 300]], dtype=np.uint16)
    big = values.astype('>u2').tobytes()
    assert decode_image_buffer(2, 3, 'mono16', 1, 6, big).tolist() == values.tolist()
    little = values.astype('<u2').tobytes()
    decoded = decode_image_buffer(2, 3, '16UC1', 0, 6, little)
    assert decoded.dtype == np.uint16 and decoded.tolist() == values.tolist()
    # A step that is not a multiple of the element size (7 bytes for 3 uint16 pixels).
    padded = b''.join(values[r].astype('>u2').tobytes() + b'\x01' for r in range(2))
    assert decode_image_buffer(2, 3, 'mono16', True, 7, padded).tolist() == values.tolist()


def test_32fc1_keeps_floats_and_nan():
    values = np.array([[0.5, -1.25], [np.nan, 300.0]], dtype=np.float32)
    decoded = decode_image_buffer(2, 2, '32FC1', 0, 8, values.tobytes())
    assert decoded.dtype == np.float32 and decoded[0].tolist() == [0.5, -1.25] and math.isnan(decoded[1, 0])
    big = decode_image_buffer(2, 2, '32FC1', 1, 8, values.astype('>f4').tobytes())
    assert big[1, 1] == 300.0


def test_data_as_rclpy_array_list_and_numpy():
    import array
    pixels = [1, 2, 3, 4]
    expected = [[1, 2], [3, 4]]
    assert decode_image_buffer(2, 2, 'mono8', 0, 2, array.array('B', pixels)).tolist() == expected
    assert decode_image_buffer(2, 2, 'mono8', 0, 2, pixels).tolist() == expected
    assert decode_image_buffer(2, 2, 'mono8', 0, 2, np.array(pixels, np.uint8)).tolist() == expected


@pytest.mark.parametrize('fields, message', [
    ((2, 2, 'yuv422', 0, 4, bytes(8)), "unsupported encoding 'yuv422'"),
    ((2, 2, 'mono8', 0, 2, bytes(3)), 'data length 3 does not match step\\*height = 2\\*2 = 4'),
    ((2, 2, 'mono16', 0, 3, bytes(6)), 'step 3 is smaller than one row of 2 mono16 pixels \\(4 bytes\\)'),
    ((0, 2, 'mono8', 0, 2, b''), 'image size must be positive'),
    ((2, 2, 'mono8', 0, 2, np.zeros(4, np.float32)), 'must be bytes'),
])
def test_inconsistent_buffers_raise_a_clear_error(fields, message):
    with pytest.raises(ImageConversionError, match=message):
        decode_image_buffer(*fields)


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(sorted(ENCODINGS)), height=st.integers(1, 6), width=st.integers(1, 6),
       padding=st.integers(0, 5), big_endian=st.booleans(), data=st.data())
def test_decode_inverts_encode_for_every_encoding_padding_and_byte_order(encoding, height, width, padding,
                                                                         big_endian, data):
    info = ENCODINGS[encoding]
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    elements = (st.floats(-1e6, 1e6, width=32) if info.dtype.kind == 'f' else None)
    array = data.draw(hnp.arrays(info.dtype, shape, elements=elements))
    encoded = encode_image_buffer(array, encoding)
    assert (encoded.height, encoded.width, encoded.encoding) == (height, width, encoding)
    assert decode_image_buffer(**encoded.__dict__).tobytes() == array.tobytes()
    # The same pixels re-serialised with padding and the other byte order decode to the same array.
    order = '>' if big_endian else '<'
    rows = array.astype(info.dtype.newbyteorder(order)).reshape(height, -1)
    padded = b''.join(row.tobytes() + b'\xab' * padding for row in rows)
    decoded = decode_image_buffer(height, width, encoding, big_endian, encoded.step + padding, padded)
    assert decoded.dtype == info.dtype and decoded.tobytes() == array.tobytes()


def test_encode_rejects_wrong_shape_or_dtype():
    with pytest.raises(ImageConversionError, match='rgb8 needs an array of shape'):
        encode_image_buffer(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError, match='mono16 needs dtype uint16'):
        encode_image_buffer(np.zeros((2, 2), np.uint8), 'mono16')


def test_rgb_role_converts_bgr_mono_and_bgra_to_rgb_and_rejects_thermal_encodings():
    bgr = np.array([[[1, 2, 3]]], np.uint8)
    assert rgb_image_to_rgb8(bgr, 'bgr8').tolist() == [[[3, 2, 1]]]
    assert rgb_image_to_rgb8(bgr, 'rgb8').tolist() == [[[1, 2, 3]]]
    assert rgb_image_to_rgb8(np.array([[7]], np.uint8), 'mono8').tolist() == [[[7, 7, 7]]]
    assert rgb_image_to_rgb8(np.array([[[1, 2, 3, 4]]], np.uint8), 'bgra8').tolist() == [[[3, 2, 1]]]
    with pytest.raises(ImageConversionError, match="RGB image encoding 'mono16' is not supported"):
        rgb_image_to_rgb8(np.zeros((1, 1), np.uint16), 'mono16')


def test_thermal_eight_bit_passes_through_and_sixteen_bit_uses_the_gain():
    gain = ThermalGainControl('minmax')
    mono = thermal_image_to_rgb8(np.array([[0, 200]], np.uint8), 'mono8', gain)
    assert mono.image.tolist() == [[[0, 0, 0], [200, 200, 200]]] and math.isnan(mono.low)
    bgr = thermal_image_to_rgb8(np.array([[[1, 2, 3]]], np.uint8), 'bgr8', gain)
    assert bgr.image.tolist() == [[[3, 2, 1]]]
    raw = np.array([[1000, 1100], [1200, 1510]], np.uint16)
    frame = thermal_image_to_rgb8(raw, 'mono16', gain)
    assert (frame.low, frame.high) == (1000.0, 1510.0)
    assert frame.image[:, :, 0].tolist() == [[0, 50], [100, 255]]
    assert (frame.image[:, :, 0] == frame.image[:, :, 2]).all()
    with pytest.raises(ImageConversionError, match="thermal image encoding 'rgba8' is not supported"):
        thermal_image_to_rgb8(np.zeros((1, 1, 4), np.uint8), 'rgba8', gain)


def test_percentile_gain_ignores_hot_pixels_and_fixed_gain_clips():
    raw = np.full((10, 10), 3000, np.uint16)
    raw[:, 5:] = 3100
    raw[0, 0] = 60000                    # one hot pixel would flatten a min/max stretch
    minmax = ThermalGainControl('minmax')(raw).image[:, :, 0]
    robust = ThermalGainControl('percentile', percentile_low=2, percentile_high=98)(raw).image[:, :, 0]
    assert int(minmax[5, 9]) - int(minmax[5, 0]) <= 1
    assert robust[5, 0] == 0 and robust[5, 9] == 255 and robust[0, 0] == 255
    fixed = ThermalGainControl('fixed', fixed_min=2900, fixed_max=3155)(raw)
    assert (fixed.low, fixed.high) == (2900.0, 3155.0)
    assert fixed.image[5, 0, 0] == 100 and fixed.image[5, 9, 0] == 200 and fixed.image[0, 0, 0] == 255


def test_nan_thermal_pixels_become_zero_and_are_counted_and_all_nan_raises():
    raw = np.array([[np.nan, 10.0], [20.0, np.inf]], np.float32)
    frame = ThermalGainControl('minmax')(raw)
    assert frame.nonfinite_pixels == 2 and (frame.low, frame.high) == (10.0, 20.0)
    assert frame.image[:, :, 0].tolist() == [[0, 0], [255, 0]]
    with pytest.raises(ImageConversionError, match='no finite pixel'):
        ThermalGainControl('percentile')(np.full((2, 2), np.nan, np.float32))


def test_flat_frame_and_temporal_smoothing_of_the_range():
    gain = ThermalGainControl('minmax', smoothing=0.5)
    flat = gain(np.full((2, 2), 500, np.uint16))
    assert (flat.low, flat.high) == (500.0, 500.0) and not flat.image.any()
    second = gain(np.array([[100, 900]], np.uint16))
    assert (second.low, second.high) == (300.0, 700.0)       # halfway between the two frames' ranges
    assert second.image[0, :, 0].tolist() == [0, 255]
    gain.reset()
    assert (gain(np.array([[100, 900]], np.uint16)).low) == 100.0


@pytest.mark.parametrize('kwargs, message', [
    (dict(mode='auto'), "gain mode 'auto'"),
    (dict(mode='percentile', percentile_low=50, percentile_high=50), 'percentiles need'),
    (dict(mode='fixed', fixed_min=10, fixed_max=5), 'fixed range'),
    (dict(smoothing=1.0), 'smoothing'),
])
def test_gain_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThermalGainControl(**kwargs)


@settings(max_examples=50, deadline=None)
@given(raw=hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8)),
       mode=st.sampled_from(['minmax', 'percentile', 'fixed']))
def test_gain_output_is_monotonic_in_the_raw_value(raw, mode):
    frame = ThermalGainControl(mode, fixed_min=100, fixed_max=40000)(raw)
    out = frame.image[:, :, 0].astype(int).ravel()
    order = np.argsort(raw.ravel(), kind='stable')
    assert (np.diff(out[order]) >= 0).all()
    assert frame.image.dtype == np.uint8 and frame.image.shape == raw.shape + (3,)


def test_registration_identity_resize_and_homography():
    thermal = np.zeros((4, 6, 3), np.uint8)
    thermal[1, 2] = 255
    same = ThermalRegistration('identity')(thermal, 4, 6)
    assert same is thermal
    with pytest.raises(ImageConversionError, match='thermal image is 6x4 but the RGB image is 12x8'):
        ThermalRegistration('identity')(thermal, 8, 12)
    resized = ThermalRegistration('resize')(thermal, 8, 12)
    assert resized.shape == (8, 12, 3)
    np.testing.assert_array_equal(resized, cv2.resize(thermal, (12, 8), interpolation=cv2.INTER_LINEAR))
    # A translation by (+3, +2) RGB pixels moves the hot pixel from (x=2, y=1) to (x=5, y=3).
    shift = ThermalRegistration('homography', [1, 0, 3, 0, 1, 2, 0, 0, 1])(thermal, 8, 12)
    assert shift.shape == (8, 12, 3)
    assert np.argwhere(shift[:, :, 0] == 255).tolist() == [[3, 5]]
    assert shift[0, 0, 0] == 0           # outside the thermal view: black


def test_homography_validation_and_aspect_warning():
    assert parse_homography([2, 0, 0, 0, 2, 0, 0, 0, 2]).tolist() == np.eye(3).tolist()
    with pytest.raises(ValueError, match='9 numbers'):
        parse_homography([1, 0, 0, 1])
    with pytest.raises(ValueError, match='finite'):
        parse_homography([1, 0, 0, 0, float('nan'), 0, 0, 0, 1])
    with pytest.raises(ValueError, match='singular'):
        parse_homography([1, 2, 3, 2, 4, 6, 0, 0, 1])
    with pytest.raises(ValueError, match="registration mode 'warp'"):
        ThermalRegistration('warp')
    registration = ThermalRegistration('resize')
    assert registration.aspect_warning(256, 320, 512, 640) is None
    assert 'resize distorts' in registration.aspect_warning(512, 640, 360, 640)


@settings(max_examples=60, deadline=None)
@given(raw=hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)),
       mode=st.sampled_from(['minmax', 'percentile', 'fixed']),
       percentiles=st.tuples(st.floats(0, 49), st.floats(51, 100)))
def test_sixteen_bit_fast_path_equals_the_float_path(raw, mode, percentiles):
    """uint16 frames use a histogram and a lookup table; the result equals mapping the same values as float."""
    settings_ = dict(mode=mode, percentile_low=percentiles[0], percentile_high=percentiles[1], fixed_min=100,
                     fixed_max=30000)
    fast = ThermalGainControl(**settings_)(raw)
    reference = ThermalGainControl(**settings_)(raw.astype(np.float32))
    assert fast.low == pytest.approx(reference.low, rel=1e-6, abs=1e-6)
    assert fast.high == pytest.approx(reference.high, rel=1e-6, abs=1e-6)
    np.testing.assert_array_equal(fast.image, reference.image)


@pytest.mark.parametrize('mode', ['minmax', 'percentile'])
def test_one_extreme_float_frame_does_not_poison_the_smoothed_range(mode):
    gain = ThermalGainControl(mode, percentile_low=0.0, percentile_high=100.0, smoothing=0.95)
    rng = np.random.default_rng(1)

    def normal():
        return rng.uniform(290.0, 310.0, (16, 16)).astype(np.float32)   # a float (Kelvin) camera

    for _ in range(30):
        gain(normal())
    outlier = normal()
    outlier[0, 0], outlier[0, 1] = 3.4e38, -3.4e38                      # one corrupt frame
    gain(outlier)
    after = [gain(normal()) for _ in range(3)]
    # was: low ~ -3.2e38, high ~ 3.2e38 for ~120 frames at 0.95 (every pixel mid-grey: 128)
    for frame in after:
        assert 289.0 < frame.low < 291.0 and 309.0 < frame.high < 311.0, (frame.low, frame.high)
        assert frame.image.min() < 30 and frame.image.max() > 225
    # ordinary changes of the scene's range are still smoothed (a hot object: 10x the span)
    hot = normal()
    hot[:4, :4] = 500.0
    frame = gain(hot)
    assert 309.0 < frame.high < 330.0


def test_the_smoothed_range_restarts_on_a_change_of_scale_either_way():
    gain = ThermalGainControl('minmax', smoothing=0.9)
    gain(np.array([[1000, 2000]], np.uint16))
    big = gain(np.array([[0.0, 3e9]], np.float32))        # 1.5e6 times the scale: taken as it is
    assert (big.low, big.high) == (0.0, 3e9)
    back = gain(np.array([[1000, 2000]], np.uint16))      # and back: as it is too, not 0.9 * 3e9
    assert (back.low, back.high) == (1000.0, 2000.0)
    step = gain(np.array([[1000, 20000]], np.uint16))     # 10x: blended as before
    assert (step.low, step.high) == (1000.0, pytest.approx(0.9 * 2000 + 0.1 * 20000))
