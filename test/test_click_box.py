"""Two clicks on the debug image make a target box (ckd_ros.core.click_box)."""
import math

import pytest

from ckd_ros.core.click_box import TwoClickBox


def test_two_clicks_make_a_box_from_opposite_corners_in_any_order():
    clicks = TwoClickBox()
    assert clicks.click(50, 40, 0.0, rgb_width=320) is None and clicks.pending
    assert clicks.click(10, 12, 1.0, rgb_width=320) == (10, 12, 40, 28)
    assert not clicks.pending
    assert clicks.click(10, 40, 2.0, 320) is None
    assert clicks.click(50, 12, 2.5, 320) == (10, 12, 40, 28)


def test_a_click_on_the_thermal_half_means_the_same_rgb_pixel():
    clicks = TwoClickBox()
    clicks.click(320 + 10, 12, 0.0, rgb_width=320)
    assert clicks.click(50, 40, 0.5, rgb_width=320) == (10, 12, 40, 28)


def test_a_stale_first_click_is_forgotten():
    clicks = TwoClickBox(timeout_s=10.0)
    clicks.click(5, 5, 0.0, 320)
    assert clicks.click(50, 40, 11.0, 320) is None, 'the late click starts a new box'
    assert clicks.click(10, 12, 12.0, 320) == (10, 12, 40, 28)


@pytest.mark.parametrize('x, y', [(math.nan, 1.0), (1.0, math.inf)])
def test_a_click_that_is_no_position_is_refused_and_keeps_the_pending_corner(x, y):
    clicks = TwoClickBox()
    clicks.click(10, 12, 0.0, 320)
    with pytest.raises(ValueError, match='not a pixel position'):
        clicks.click(x, y, 0.1, 320)
    assert clicks.click(50, 40, 0.2, 320) == (10, 12, 40, 28)
