"""Property-based tests (hypothesis) of what untrusted input reaches: image buffers and the thermal gain,
the pairing policy and the freshness watch, the frame history, crop placement / box clipping / mapping
back, the metrics, and the annotation and result readers. Any input either gives a well-formed result or
the module's own error with a message; nothing else escapes."""
import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckd_ros.core import geometry, metrics, results
from ckd_ros.core.datasets import AnnotationError, read_box_file
from ckd_ros.core.image import (ENCODINGS, RGB_ENCODINGS, THERMAL_ENCODINGS, ImageConversionError, ThermalGainControl,
                                ThermalRegistration, decode_image_buffer, encode_image_buffer, rgb_image_to_rgb8,
                                thermal_image_to_rgb8)
from ckd_ros.core.pairing import ApproximateTimePairer, RecentPairs

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ image buffers

@FAST
@given(encoding=st.sampled_from(sorted(ENCODINGS) + ['yuv422', '', 'RGB8', '64FC1']),
       height=st.integers(-2, 7), width=st.integers(-2, 7), extra_step=st.integers(-4, 6),
       length_error=st.sampled_from([0, 0, 0, -1, 1, -7]), big_endian=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_decode_gives_the_declared_image_or_a_conversion_error(encoding, height, width, extra_step, length_error,
                                                               big_endian, seed):
    info = ENCODINGS.get(encoding)
    row = max(width, 0) * (info.channels * info.dtype.itemsize if info else 3)
    step = max(0, row + extra_step)
    size = max(0, step * max(height, 0) + length_error)
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    try:
        array = decode_image_buffer(height, width, encoding, big_endian, step, data)
    except ImageConversionError as error:
        assert str(error)
        return
    # Accepted: everything about the buffer was consistent, and the array is what it declares.
    assert info is not None and height > 0 and width > 0 and step >= row and size == step * height
    assert array.dtype == info.dtype
    assert not np.shares_memory(array, np.frombuffer(data, np.uint8)), 'the array owns its pixels'
    assert array.shape == ((height, width) if info.channels == 1 else (height, width, info.channels))
    rows = np.frombuffer(data, np.uint8).reshape(height, step)[:, :row]
    expected = rows.copy().view(info.dtype.newbyteorder('>' if big_endian else '<')).astype(info.dtype)
    assert np.array_equal(array.reshape(height, -1), expected.reshape(height, -1), equal_nan=info.dtype.kind == 'f')


@FAST
@given(raw=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                      elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       mode=st.sampled_from(['minmax', 'percentile', 'fixed']), smoothing=st.sampled_from([0.0, 0.5, 0.9]),
       repeats=st.integers(1, 3))
def test_float_thermal_with_nan_and_inf_maps_to_valid_pixels(raw, mode, smoothing, repeats):
    gain = ThermalGainControl(mode, fixed_min=-1e3, fixed_max=1e3, smoothing=smoothing)
    finite = np.isfinite(raw)
    for _ in range(repeats):      # the smoothed range must not turn NaN either
        if not finite.any():
            with pytest.raises(ImageConversionError, match='no finite pixel'):
                thermal_image_to_rgb8(raw, '32FC1', gain)
            return
        frame = thermal_image_to_rgb8(raw, '32FC1', gain)
        assert frame.image.dtype == np.uint8 and frame.image.shape == (*raw.shape, 3)
        assert (frame.image[..., 0] == frame.image[..., 1]).all() and (frame.image[..., 0] == frame.image[..., 2]).all()
        assert frame.nonfinite_pixels == int((~finite).sum())
        assert (frame.image[~finite] == 0).all()
        assert math.isfinite(frame.low) and math.isfinite(frame.high) and frame.low <= frame.high


@FAST
@given(encoding=st.sampled_from(sorted(set(RGB_ENCODINGS) | set(THERMAL_ENCODINGS))),
       height=st.integers(1, 6), width=st.integers(1, 6), seed=st.integers(0, 2**16),
       registration=st.sampled_from(['resize', 'homography']), rgb_size=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_every_accepted_encoding_becomes_rgb8_on_the_rgb_grid(encoding, height, width, seed, registration, rgb_size):
    info = ENCODINGS[encoding]
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    rng = np.random.default_rng(seed)
    values = (rng.uniform(250, 320, shape).astype(np.float32) if info.dtype.kind == 'f'
              else rng.integers(0, np.iinfo(info.dtype).max, shape, dtype=info.dtype, endpoint=True))
    encoded = encode_image_buffer(values, encoding)
    array = decode_image_buffer(encoded.height, encoded.width, encoding, encoded.is_bigendian, encoded.step,
                                encoded.data)
    if encoding in RGB_ENCODINGS:
        rgb = rgb_image_to_rgb8(array, encoding)
        assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    if encoding in THERMAL_ENCODINGS:
        thermal = thermal_image_to_rgb8(array, encoding, ThermalGainControl('percentile')).image
        assert thermal.dtype == np.uint8 and thermal.shape == (height, width, 3)
        registered = ThermalRegistration(registration,
                                         [1.5, 0, 0, 0, 1.5, 0, 0, 0, 1])(thermal, rgb_size[1], rgb_size[0])
        assert registered.shape == (rgb_size[1], rgb_size[0], 3) and registered.dtype == np.uint8


# ------------------------------------------------------------------ pairing, freshness, history

arrivals_strategy = st.lists(
    st.tuples(st.integers(0, 1), st.one_of(st.integers(0, 400), st.integers(10**6, 10**6 + 50))), max_size=80)


@FAST
@given(arrivals=arrivals_strategy, queue_size=st.integers(1, 6), slop=st.integers(1, 40),
       clear_at=st.one_of(st.none(), st.integers(0, 80)))
def test_pairing_conserves_frames_and_never_emits_a_frame_twice_or_beyond_slop(arrivals, queue_size, slop, clear_at):
    pairer = ApproximateTimePairer(queue_size, slop * 1e-9)
    emitted, overwritten = set(), 0
    queued_stamps = [set(), set()]
    for k, (side, stamp) in enumerate(arrivals):
        if clear_at == k:
            pairer.clear()
            queued_stamps = [set(), set()]
        overwritten += stamp in queued_stamps[side]
        match = pairer.add(side, stamp, (side, k))
        queued_stamps[side].add(stamp)
        if match is not None:
            assert max(match.stamps_ns) - min(match.stamps_ns) < slop
            assert [item[0] for item in match.items] == [0, 1]
            for item, item_stamp in zip(match.items, match.stamps_ns):
                assert item not in emitted
                emitted.add(item)
                queued_stamps[item[0]].discard(item_stamp)
        assert all(n <= queue_size for n in pairer.queued())
    # Every frame is paired, still queued, evicted/cleared (unmatched) or was overwritten by an equal stamp.
    assert len(emitted) + sum(pairer.queued()) + pairer.frames_unmatched + overwritten >= len(arrivals)
    assert len(emitted) + sum(pairer.queued()) + pairer.frames_unmatched <= len(arrivals)
    # After a clear (a time restart) two frames with the same new stamp always pair.
    pairer.clear()
    assert pairer.add(0, 5, 'rgb') is None and pairer.add(1, 5, 'thermal') is not None


@FAST
@given(stamps=st.lists(st.one_of(st.just(0), st.integers(1, 3 * 10**9)), max_size=60),
       gaps=st.lists(st.floats(0.0, 0.6), min_size=60, max_size=60))
def test_stream_watch_fresh_stamps_always_advance_within_a_time_epoch(stamps, gaps):
    from ckd_ros.core.health import FRESH, JUMPED_BACK, STALE_STAMP, ZERO_STAMP, StreamWatch

    now = [100.0]
    watch = StreamWatch(timeout_s=1.0, jump_back_s=1.0, clock=lambda: now[0])
    newest, verdicts = None, []
    for stamp, gap in zip(stamps, gaps):
        now[0] += gap
        verdict = watch.observe(stamp, data_crc=stamp % 3)
        verdicts.append(verdict)
        if stamp == 0:
            assert verdict == ZERO_STAMP
        elif newest is None or stamp > newest:
            assert verdict == FRESH
        elif newest - stamp > 10**9:
            assert verdict == JUMPED_BACK
        else:
            assert verdict == STALE_STAMP
        if verdict in (FRESH, JUMPED_BACK):
            newest = stamp
            assert not watch.stalled()
        assert watch.newest_stamp_ns == newest
    assert watch.frames == len(stamps)
    assert watch.fresh_frames + watch.stale_frames + watch.zero_stamps == len(stamps)
    assert watch.jumps_back == verdicts.count(JUMPED_BACK)
    now[0] += 1.01
    assert watch.stalled()


@FAST
@given(items=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 500)), min_size=1, max_size=50),
       capacity=st.integers(1, 10), max_bytes=st.one_of(st.none(), st.integers(1, 2000)), query=st.integers(0, 10**6))
def test_frame_history_respects_count_and_memory_and_keeps_the_newest(items, capacity, max_bytes, query):
    history = RecentPairs(capacity, max_bytes=max_bytes, item_bytes=(lambda item: item[1]) if max_bytes else None)
    for stamp, size in items:
        history.add(stamp, (stamp, size))
        assert 1 <= len(history) <= capacity
        if max_bytes:
            assert history.bytes <= max_bytes or len(history) == 1
    last_stamp = items[-1][0]
    assert history.closest(last_stamp)[0] == last_stamp, 'the newest pair is always kept'
    assert history.closest(query)[1] in items and history.newest()[1] in items


# ------------------------------------------------------------------ geometry

box_strategy = st.tuples(st.floats(-50, 300), st.floats(-50, 300), st.floats(0.01, 200), st.floats(0.01, 200))


@FAST
@given(box=box_strategy, factor=st.sampled_from([2.0, 4.0, 5.0]), size=st.sampled_from([16, 32]),
       image=st.tuples(st.integers(1, 120), st.integers(1, 120)), channels=st.sampled_from([0, 1, 3]))
def test_crop_is_the_requested_square_around_the_box_or_a_named_error(box, factor, size, image, channels):
    height, width = image
    frame = np.zeros((height, width) if channels == 0 else (height, width, channels), np.uint8)
    window = geometry.crop_window(box, factor, height, width)
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    assert window.size == math.ceil(math.sqrt(box[2] * box[3]) * factor)
    assert window.x1 - 1 <= cx <= window.x2 + 1 and window.y1 - 1 <= cy <= window.y2 + 1
    try:
        patch, resize_factor = geometry.sample_target(frame, box, factor, size)
    except ValueError as error:
        assert 'does not overlap' in str(error)
        return
    assert patch.shape == ((size, size) if channels == 0 else (size, size, channels))
    assert resize_factor == pytest.approx(size / window.size)


@FAST
@given(previous=box_strategy, search=st.sampled_from([128, 256, 384]), resize=st.floats(0.05, 20),
       offset=st.tuples(st.floats(-30, 30), st.floats(-30, 30)), wh=st.tuples(st.floats(1, 100), st.floats(1, 100)))
def test_a_box_at_the_crop_centre_maps_back_to_the_previous_centre(previous, search, resize, offset, wh):
    half = 0.5 * search / resize
    mapped = geometry.map_box_back([half + offset[0], half + offset[1], *wh], previous, search, resize)
    assert mapped[0] + mapped[2] / 2 == pytest.approx(previous[0] + previous[2] / 2 + offset[0], abs=1e-6)
    assert mapped[1] + mapped[3] / 2 == pytest.approx(previous[1] + previous[3] / 2 + offset[1], abs=1e-6)
    assert mapped[2:] == list(wh)


@FAST
@given(box=st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(-100, 1e4), st.floats(-100, 1e4)),
       image=st.tuples(st.integers(10, 2000), st.integers(10, 2000)), margin=st.sampled_from([0, 10]))
def test_clipped_boxes_stay_in_the_image_with_the_margin(box, image, margin):
    height, width = image
    x, y, w, h = geometry.clip_box(box, height, width, margin)
    assert 0 <= x <= width - margin and 0 <= y <= height - margin
    assert w >= margin and h >= margin and all(math.isfinite(v) for v in (x, y, w, h))
    assert x + w <= max(width, x + margin) and y + h <= max(height, y + margin)
    inside = box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= width and box[1] + box[3] <= height
    if inside and box[2] >= margin and box[3] >= margin and box[0] <= width - margin and box[1] <= height - margin:
        assert [x, y, w, h] == pytest.approx(list(box))


# ------------------------------------------------------------------ metrics

# Integer pixel boxes (result files are integers; float32 is exact on them, so the bounds are exact too:
# with fractional sizes the toolkit's float32 inclusive-pixel arithmetic can exceed 1 by ulps of x + w).
valid_boxes = hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.just(4)),
                         elements=st.integers(1, 2000).map(float))


@FAST
@given(pred=valid_boxes, data=st.data())
def test_overlap_and_centre_error_are_bounded_symmetric_and_exact_on_equal_boxes(pred, data):
    gt = data.draw(hnp.arrays(np.float64, pred.shape, elements=st.integers(1, 2000).map(float)))
    iou = metrics.overlap(pred, gt)
    assert ((0 <= iou) & (iou <= 1)).all()
    assert np.array_equal(iou, metrics.overlap(gt, pred))
    assert (metrics.overlap(pred, pred) == 1.0).all()
    error = metrics.centre_error(pred, gt)
    assert (error >= 0).all() and (metrics.centre_error(pred, pred) == 0).all()
    precision = metrics.precision_curve(error)
    success = metrics.success_curve(iou)
    assert (np.diff(precision) >= 0).all() and (np.diff(success) <= 0).all()
    assert ((0 <= precision) & (precision <= 1)).all() and ((0 <= success) & (success <= 1)).all()


@FAST
@given(first=st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(1, 50), st.floats(1, 50)),
       later=hnp.arrays(np.float64, st.tuples(st.integers(1, 19), st.just(4)),
                        elements=st.one_of(st.floats(0, 100), st.just(math.nan), st.just(-1.0))),
       data=st.data(), benchmark=st.sampled_from(['generic', 'lasher', 'rgbt210']))
def test_scores_of_any_predictions_are_percentages_or_a_named_error(first, later, data, benchmark):
    from ckd_ros.core.datasets import GroundTruth
    gt = np.vstack([np.array(first)[None], later])      # frame 0 (the initialisation) is a valid box
    pred = data.draw(hnp.arrays(np.float64, (len(gt), 4),
                                elements=st.one_of(st.floats(-50, 300), st.just(math.nan), st.just(0.0))))
    try:
        score = metrics.evaluate(benchmark, {'s': pred}, {'s': GroundTruth(gt)})
    except ValueError as error:
        assert "sequence 's'" in str(error)
        return
    for name, value in score.metrics.items():
        assert 0.0 <= value <= 100.0, (name, value)


# ------------------------------------------------------------------ annotation and result files

numbers = st.floats(-1e5, 1e5, allow_nan=False).map(lambda v: round(v, 3))


@FAST
@given(boxes=st.lists(st.tuples(numbers, numbers, numbers, numbers), min_size=1, max_size=20),
       delimiter=st.sampled_from([',', '\t', ' ', ', ', '  ']), trailing=st.sampled_from(['', '\n', '\n\n  \n']),
       bom=st.booleans(), nan_row=st.one_of(st.none(), st.integers(0, 19)))
def test_box_files_read_back_what_was_written(tmp_path_factory, boxes, delimiter, trailing, bom, nan_row):
    rows = [list(b) for b in boxes]
    if nan_row is not None and nan_row < len(rows):
        rows[nan_row] = [math.nan] * 4
    text = '\n'.join(delimiter.join('nan' if math.isnan(v) else repr(v) for v in row) for row in rows) + trailing
    path = tmp_path_factory.mktemp('boxes') / 'gt.txt'
    path.write_text(('\ufeff' if bom else '') + text, encoding='utf-8')
    np.testing.assert_array_equal(read_box_file(path), np.array(rows, dtype=np.float64))


@FAST
@given(lines=st.lists(st.text(alphabet=string.digits + ',.-\t eEnaN xy', max_size=30), min_size=1, max_size=8))
def test_any_box_file_parses_or_names_the_file_and_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp('boxes') / 'gt.txt'
    path.write_text('\n'.join(lines))
    try:
        boxes = read_box_file(path)
    except AnnotationError as error:
        assert str(error).startswith(f'{path}:')
        return
    assert boxes.dtype == np.float64 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1


@FAST
@given(boxes=hnp.arrays(np.float64, st.tuples(st.integers(1, 15), st.just(4)), elements=st.floats(-1e4, 1e4)),
       times=st.lists(st.floats(0, 10), min_size=15, max_size=15), garbage=st.one_of(st.none(), st.integers(0, 14)))
def test_result_files_round_trip_and_damaged_ones_name_the_line(tmp_path_factory, boxes, times, garbage):
    folder = tmp_path_factory.mktemp('results')
    box_path, time_path = results.write_sequence_result(folder, 'seq', boxes, times[:len(boxes)])
    np.testing.assert_array_equal(results.read_result_boxes(box_path), boxes.astype(np.int64).astype(np.float64))
    np.testing.assert_allclose(results.read_result_times(time_path), times[:len(boxes)], atol=1e-6)
    with pytest.raises(results.ResultExistsError, match='exists; pass overwrite=True'):
        results.write_sequence_result(folder, 'seq', boxes)
    if garbage is not None and garbage < len(boxes):
        lines = time_path.read_text().splitlines()
        lines[garbage] = 'twelve'
        time_path.write_text('\n'.join(lines) + '\n')
        with pytest.raises(AnnotationError, match=f'{time_path}:{garbage + 1}: expected one number'):
            results.read_result_times(time_path)
