"""Tick labels of any step, however small, say the values their ticks are at.

``svgplot._tick_decimals`` took ``step x 10^d`` as whole within 1e-6 absolute below 1: any step under 1e-6 was
"written" by 0 decimals and every tick of such an axis labelled alike ("1", "0"). A lone tick (an axis given equal
limits) was written to a step of 1: 8339.5 as "8340".
"""

import numpy as np
import pytest

from xanestrack.svgplot import _label_step, _tick_decimals, _tick_label, ticks


@pytest.mark.parametrize("lo,hi", [(1.0, 1.0 + 4e-7), (0.0, 3e-7), (2e-6, 6e-6), (5e-12, 9e-12), (-3e-9, 1e-9)])
def test_tiny_steps_label_every_tick_apart_and_as_its_value(lo, hi):
    t = ticks(lo, hi, 5)
    step = float(np.diff(t).min())
    labels = [_tick_label(v, step) for v in t]
    assert len(set(labels)) == len(t), labels  # was: '1' x 5, '0' x 6, '0' x 5
    assert np.allclose([float(s) for s in labels], t, rtol=0, atol=1e-3 * step)
    assert len({len(s.split(".")[-1]) for s in labels}) == 1  # one number of decimals per axis


def test_the_fewest_decimals_for_small_steps_and_the_locators_float_error():
    assert [_tick_decimals(s) for s in (1e-6, 1e-7, 9.9999999e-08, 6e-8, 2.5e-9, 1.5e-12)] == [6, 7, 7, 8, 10, 13]
    # control: the steps the locator gives at ordinary scales, as before (tests/test_svg_tick_labels.py)
    assert [_tick_decimals(s) for s in (1, 2, 5, 10, 1500, 1.5, 0.25, 0.15, 0.025, 1.4999999999)] == [
        0, 0, 0, 0, 0, 1, 2, 2, 3, 1,
    ]  # fmt: skip


def test_a_lone_tick_is_written_as_its_value():
    """Only an axis given equal limits has one tick (random ranges of 1e-3 to 100 eV at 8000-8500 eV: always 2 or
    more); the three axes' labels (x, y, colour bar) take their step from _label_step."""
    t = ticks(8339.5, 8339.5)
    assert list(t) == [8339.5] and _label_step(t) == 8339.5
    assert _tick_label(t[0], _label_step(t)) == "8339.5"  # was "8340"
    assert _label_step([8340.0]) == 8340.0 and _tick_label(8340.0, _label_step([8340.0])) == "8340"
    assert _label_step([0.0]) == 1.0 and _label_step([]) == 1.0
    assert _label_step([8339.0, 8340.5, 8342.0]) == 1.5  # control: the spacing, as before
