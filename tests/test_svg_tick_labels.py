"""Tick labels of the SVG figures say the values their ticks are at.

A probe read the report's figures back through their own labels: ``MaxNLocator`` steps by 1.5, 2.5, 0.15 or 0.25 as
often as by 1, 2 or 5, and a label rounded to the step's order printed ticks at 8339.5 / 8341.0 / 8342.5 eV as
8340 / 8341 / 8342: evenly spaced, the whole scale 1.5 x off (a 3.54 eV gap between two particles' mean E50 read as
2.36 eV on the resolution figure; a common translation of -2.42 px read as -3.22 px).
"""

import re

import numpy as np
import pytest

from xanestrack.svgplot import SvgFigure, _tick_label, ticks

RANGES = [(8338.1, 8343.6), (8339.53, 8345.67), (-0.5, 5.5), (0, 12), (0, 1.1), (0, 0.6), (-2.6, 0.4), (0, 0.07)]


@pytest.mark.parametrize("lo,hi", RANGES)
def test_every_tick_label_reads_back_as_its_value(lo, hi):
    t = ticks(lo, hi, 5)
    step = float(np.diff(t).min())
    labels = [_tick_label(v, step) for v in t]
    assert np.allclose([float(s) for s in labels], t, atol=1e-9 * max(1.0, abs(hi)))
    assert len({len(s.split(".")[-1]) if "." in s else 0 for s in labels}) == 1  # one number of decimals per axis


def test_decimals_are_the_fewest_that_write_the_step():
    from xanestrack.svgplot import _tick_decimals

    assert [_tick_decimals(s) for s in (1, 2, 5, 10, 1.5, 2.5, 0.5, 0.25, 0.15, 0.025, 1.4999999999)] == [
        0,
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        3,
        1,
    ]
    assert _tick_label(-0.0, 0.5) == "0.0"


def _axis_labels(svg, anchor):
    """(screen position, printed value) of the y-axis tick labels anchored so (``end``: left axis)."""
    pat = rf'<line x1="[\d.]+" y1="([\d.]+)" x2="[\d.]+" y2="[\d.]+" stroke="#444"/><text x="[\d.]+" y="[\d.]+" text-anchor="{anchor}" font-size="9">(-?[\d.]+)</text>'
    return [(float(y), float(v)) for y, v in re.findall(pat, svg)]


def test_a_rendered_axis_and_colour_bar_read_back_on_their_own_scale():
    lo, hi = 8339.2, 8346.1  # MaxNLocator steps this by 1.5
    fig = SvgFigure(300, 260)
    ax = fig.axes(60, 10, 200, 200, ylim=(lo, hi))
    ax.line([0, 1], [lo, hi], color="black")
    fig.colorbar(265, 10, 10, 200, cmap="viridis", vmin=lo, vmax=hi, label="E50 (eV)")
    svg = fig.to_svg()
    read = _axis_labels(svg, "end")
    assert len(read) >= 3
    ys, vs = np.array(read).T
    # the labels' values against their screen positions: one straight line through the axis limits
    slope, icpt = np.polyfit(vs, ys, 1)
    y_lo, y_hi = icpt + slope * lo, icpt + slope * hi
    assert y_lo == pytest.approx(210.0, abs=0.05) and y_hi == pytest.approx(10.0, abs=0.05)
    # the colour bar's labels (no anchor: to the right of the bar), on the same scale
    pat = r'<line x1="[\d.]+" y1="([\d.]+)" x2="[\d.]+" y2="[\d.]+" stroke="#444"/><text x="[\d.]+" y="[\d.]+" font-size="9">(-?[\d.]+)</text>'
    bar = np.array([(float(y), float(v)) for y, v in re.findall(pat, svg)])
    assert len(bar) >= 3
    slope, icpt = np.polyfit(bar[:, 1], bar[:, 0], 1)
    assert icpt + slope * lo == pytest.approx(210.0, abs=0.05) and icpt + slope * hi == pytest.approx(10.0, abs=0.05)
