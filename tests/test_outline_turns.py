"""A particle that turns is flagged by how far its pixels move, whatever its shape, and whoever else turns.

A probe (round 13) found the moving-rim check blind to turns it was meant to see:

- a square, hexagon or triangle crystal turning 1-4 degrees: its second moments are a disc's, so a turn changed
  nothing the check measured; the square turning 4 degrees kept 178 pixels more than 0.5 eV off (up to 2.7 eV),
  unflagged;
- four elongated particles turning 2-5 degrees the same way, their centres still: their median turn was taken out
  as the field's, though no window is ever turned (``--rotation`` fits the positions only), and none was flagged
  (the 5-degree one: 110 kept pixels more than 0.5 eV off; alone, 422 pixels flagged, none off);
- an ellipse 48 x 24 px turning 3 degrees moved its outline across itself by (a - b) x angle = 0.63 px, under the
  threshold, while its ends swept a x angle = 1.3 px: 3.8 % of its kept pixels more than 0.5 eV off.

The turn is now fitted to each frame's outline (``outlines._outline_turns``: a small rotation of its weights
against their mean), judged by its farthest pixels' sweep (extent x angle), and no turn is taken out as shared.
"""

import dataclasses
import re

import numpy as np
from scipy import ndimage
from test_particle_deformation_notes import _ellipse, _fake_shaped, _rim_notes

import xanestrack.synth as synth
from xanestrack import xanes
from xanestrack.outlines import _flag_moving_rims

E = synth.ni_energy_grid(60)
N = E.size
STEP = lambda k: 0.8 * (E[k] > 8345.0)  # noqa: E731  the outline steps with the contrast across the edge


def _square(half: float, angle_deg: float, turn=lambda k: 0.0, grow=STEP):
    """A soft square of half side ``half`` at ``angle_deg`` (counter-clockwise), turning by ``turn(k)`` degrees."""

    def shape(k, y, x):
        t = np.radians(angle_deg + turn(k))
        u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
        return np.clip(half - np.maximum(np.abs(u), np.abs(v)) + 0.5 + grow(k), 0, 1)

    return shape


def _turns(degrees: float):
    return lambda k: degrees * k / (N - 1)


def _flagged(particles):
    return [bool(_rim_notes(p)) for p in _flag_moving_rims(particles, E)]


def test_a_square_turning_is_flagged_one_still_is_not():
    """A square (half side 20 px, equivalent radius 22.6 px) turning 4 degrees among a disc and two ellipses left
    as they are: flagged, the note giving the turn and its corners' sweep; the same square still: nothing."""
    others = [_ellipse(16.0, 15.5, 0.0, grow=STEP), _ellipse(24.0, 15.0, 30.0, grow=STEP)]
    others.append(_ellipse(22.0, 16.0, -50.0, grow=STEP))
    still = [_fake_shaped(i, s, E) for i, s in enumerate(others + [_square(20.0, 10.0)])]
    assert _flagged(still) == [False] * 4
    turning = [_fake_shaped(i, s, E) for i, s in enumerate(others + [_square(20.0, 10.0, _turns(4.0))])]
    out = _flag_moving_rims(turning, E)
    assert [bool(_rim_notes(p)) for p in out] == [False, False, False, True]
    (note,) = _rim_notes(out[3])
    angle = float(re.search(r"turns by ([\d.]+) degrees \(counter-clockwise", note).group(1))
    assert 3.5 < angle < 4.5
    swept = float(re.search(r"move by ([\d.]+) px", note).group(1))
    assert 1.7 < swept < 2.3  # its corners, 28.8 px from its centre: 2.0 px
    depth = int(re.search(r"within (\d+) px of the outline", note).group(1))
    assert np.array_equal((out[3].pixel_flags & xanes.FLAG_MOVING_RIM) > 0, xanes.moving_rim(out[3].mask, depth))
    # turned the other way: clockwise, flagged all the same
    back = [_fake_shaped(i, s, E) for i, s in enumerate(others + [_square(20.0, 10.0, _turns(-4.0))])]
    (note,) = _rim_notes(_flag_moving_rims(back, E)[3])
    assert "degrees (clockwise as shown" in note


def test_three_particles_turning_alike_are_flagged_one_still_beside_them_is_not():
    """Three ellipses turning 4 degrees the same way and one left as it is: the three are flagged (their median turn
    was taken out as the field's: none of them flagged, and the still one said to turn 4 degrees the other way);
    the same four still: nothing."""
    axes = [(24.0, 15.0, 30.0), (22.0, 16.0, -50.0), (26.0, 18.0, 100.0), (25.0, 16.0, 10.0)]
    still = [_fake_shaped(i, _ellipse(a, b, t, grow=STEP), E) for i, (a, b, t) in enumerate(axes)]
    assert _flagged(still) == [False] * 4
    turning = [
        _fake_shaped(i, _ellipse(a, b, t, grow=STEP, turn=_turns(4.0 if i < 3 else 0.0)), E)
        for i, (a, b, t) in enumerate(axes)
    ]
    assert _flagged(turning) == [True, True, True, False]


def test_an_elongated_particle_whose_ends_sweep_is_flagged():
    """An ellipse 48 x 24 px turning 3 degrees: its outline moves across itself by (a - b) x angle = 0.63 px (under
    the shape's threshold, 0.75), its ends by a x angle = 1.26 px: flagged; not turning, or turning 1 degree: not."""
    others = [_ellipse(16.0, 15.5, 0.0, grow=STEP), _ellipse(20.0, 19.0, 70.0, grow=STEP)]
    for degrees, flagged in ((3.0, True), (1.0, False), (0.0, False)):
        target = _ellipse(24.0, 12.0, 20.0, grow=STEP, turn=_turns(degrees))
        assert _flagged([_fake_shaped(i, s, E) for i, s in enumerate(others + [target])]) == [False, False, flagged]


def test_a_round_textured_particle_turning_is_not_flagged():
    """A round particle (radius 18 px) whose grain texture turns 6 degrees with it, measured on its windows (a
    resolution matched across the scan: the texture enters its weights): its outline does not move, and neither
    its rim's spectra; not flagged. Its own texture still, the same."""
    rng = np.random.default_rng(3)
    size = 81
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - c
    grain = rng.normal(0, 1, (size * 2, size * 2))
    grain = ndimage.gaussian_filter(grain, 2.0)
    grain *= 0.15 / grain.std()

    def windows(degrees):
        out = []
        for k in range(N):
            t = np.radians(degrees * k / (N - 1))
            gy = c * 2 + yy * np.cos(t) - xx * np.sin(t)
            gx = c * 2 + yy * np.sin(t) + xx * np.cos(t)
            tex = ndimage.map_coordinates(grain, [gy, gx], order=1)
            disc = np.clip(18.0 - np.hypot(yy, xx) + 0.5, 0, 1)
            out.append((disc * (1 + tex) * (1 + (E[k] > 8345.0))).astype(np.float32))
        return np.stack(out)

    disc = _ellipse(18.0, 18.0, 0.0)
    blur = np.full(N, 0.5)
    for degrees in (6.0, 0.0):
        particles = [_fake_shaped(i, s, E) for i, s in enumerate([_ellipse(24.0, 15.0, 30.0), disc])]
        particles[1] = dataclasses.replace(particles[1], aligned=windows(degrees))
        out = _flag_moving_rims(particles, E, blur=blur)
        assert not any(_rim_notes(p) for p in out)
