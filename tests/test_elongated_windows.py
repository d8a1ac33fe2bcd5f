"""Elongated particles: their windows hold their outline, sized on how far it reaches, not their equivalent radius.

The shapes probe (round 13, F4): a rod of aspect 4 (88 x 16 px) and one of aspect 6 (70 x 10 px), an 80 x 32 px
ellipse and an upright aspect-3 ellipse were left out by the learned pipeline, measured in no frame ("mask ran out
of its window" / "mask empty"), or kept with 0 of 56 frames vouched for; the classical path followed a piece of the
aspect-6 rod 11.5 px from its centre as a particle of radius 7.9 px. Their windows (followed, outlined, aligned) were
sized on the equivalent radius (1.3 radii plus a margin), which an elongated particle's ends reach beyond (a rod of
aspect 4.5: 1.9 radii; the 80 x 32 ellipse: 1.6), and the opening that cuts fines off its masks on that radius
(11 px for the 10 px wide rod). Round particles of the same areas were found at 0.02 px.

The scene: the default scene reduced (256 x 256 px, 40 energies, 2 round particles), with a rod of aspect 4.5
(72 x 16 px, turned 30 degrees) and an upright 80 x 32 px ellipse added, carrying the spectrum of particle 0 and
moving with the stage (the scene's common shift); the control puts discs of the same areas in their places.
"""

import numpy as np
import pytest

from xanestrack.detect import _region_extent
from xanestrack.pipeline import run_pipeline
from xanestrack.register import WINDOW_MARGIN, window_half, window_radius
from xanestrack.segment import isolate_particle
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack

#: (centre y, x in frame 0, px), (half-length of the axis, half-width), turn (degrees): a rod (capsule) of aspect
#: 4.5 and an 80 x 32 px ellipse, upright
ROD = ((128.0, 55.0), (28.0, 8.0), 30.0)
ELLIPSE = ((128.0, 205.0), (40.0, 16.0), 90.0)


def _thickness(yy, xx, shape, kind: str, round_: bool):
    """Thickness profile (0-1) of a body at ``shape`` = (centre, (half-length, half-width), turn) on the pixel
    grid ``yy, xx``; ``round_``: a disc of the same area instead."""
    (cy, cx), (a, b), turn = shape
    area = np.pi * a * b if kind == "ellipse" else 4 * a * b + np.pi * b * b
    dy, dx = yy - cy, xx - cx
    if round_:
        d = np.hypot(dy, dx) / np.sqrt(area / np.pi)
    else:
        t = np.deg2rad(turn)
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)  # along, across the axis
        if kind == "ellipse":
            d = np.hypot(u / a, v / b)
        else:
            d = np.hypot(np.clip(np.abs(u) - a, 0, None), v) / b
    return np.sqrt(np.clip(1 - d * d, 0, None))


def _scene(round_: bool):
    """``(stack, truth)``: the reduced default scene with the two shapes (or discs of their areas); ``truth``
    (2, n_frames, 2): their thickness-weighted centres."""
    s = make_synthetic_stack("default", seed=3, n_energies=40, shape=(256, 256), n_particles=2, radius_range=(12, 16))
    od = s.optical_density().astype(np.float64)
    gs = np.asarray(s.truth.global_shift, float)
    tp = s.truth.positions
    p0 = tp[tp["particle"] == 0].set_index("frame")
    yy, xx = np.mgrid[0 : od.shape[1], 0 : od.shape[2]].astype(float)
    truth = np.zeros((2, od.shape[0], 2))
    for k in range(od.shape[0]):
        y, x = int(round(p0.loc[k, "y"])), int(round(p0.loc[k, "x"]))
        spectrum = od[k, y - 2 : y + 3, x - 2 : x + 3].mean() - np.median(od[k, :12, :12])
        for i, (kind, shape) in enumerate((("rod", ROD), ("ellipse", ELLIPSE))):
            moved = ((shape[0][0] + gs[k, 0], shape[0][1] + gs[k, 1]), shape[1], shape[2])
            t = _thickness(yy, xx, moved, kind, round_)
            od[k] += spectrum * t
            truth[i, k] = (t * yy).sum() / t.sum(), (t * xx).sum() / t.sum()
    return Stack(od.astype(np.float32), s.energies_ev), truth


def _found(result, truth):
    """Per shape: (vouched share of frames, RMS px of its vouched positions from the truth, its mean offset
    removed, its ParticleResult) of the particle tracked there, or None where none is."""
    out = []
    for t in truth:
        near = [p for p in result.particles if np.nanmedian(np.hypot(*(p.positions - t).T)) < 5.0]
        if not near:
            out.append(None)
            continue
        (p,) = near
        g = result.tracks[result.tracks["particle"] == p.particle].sort_values("frame")
        v = g["flags"].astype(str).isin(["", "nan"]).to_numpy()
        e = g[["y", "x"]].to_numpy(float)[v] - t[v]
        e -= e.mean(axis=0)
        out.append((v.mean(), float(np.sqrt(np.mean(np.sum(e * e, axis=1)))) if v.any() else np.inf, p))
    return out


@pytest.fixture(scope="module")
def elongated():
    stack, truth = _scene(round_=False)
    return run_pipeline(stack), truth


@pytest.fixture(scope="module")
def rounded():
    stack, truth = _scene(round_=True)
    return run_pipeline(stack), truth


def test_elongated_particles_are_followed_and_vouched_for(elongated):
    result, truth = elongated
    for name, found in zip(("rod of aspect 4.5", "80 x 32 px ellipse"), _found(result, truth)):
        assert found is not None, f"the {name} was not tracked"  # left out before, measured in no frame
        share, rms, p = found
        assert share > 0.9, (name, share)
        assert rms < 0.1, (name, rms)
        # its windows hold its outline: wider than those of its equivalent radius
        assert p.aligned.shape[-1] > 2 * window_half(p.radius) + 1, name
        assert p.mask.sum() > 0.8 * np.pi * p.radius**2, name  # the whole body, not a piece of it


def test_round_particles_of_the_same_area_keep_their_windows(rounded):
    result, truth = rounded
    for found in _found(result, truth):
        assert found is not None
        share, rms, p = found
        assert share > 0.9 and rms < 0.1, (share, rms)
    for p in result.particles:  # every window as sized on the equivalent radius
        assert p.aligned.shape[-1] == 2 * window_half(p.radius) + 1, p.particle


def test_window_radius_grows_only_beyond_the_reach_of_an_irregular_outline():
    assert window_radius(20.0) == window_radius(20.0, float("nan")) == 20.0
    assert window_radius(20.0, 25.0) == 20.0  # within 1.3 radii: as before
    assert window_half(window_radius(20.0, 44.0)) >= 44 + WINDOW_MARGIN  # a rod's ends fit, with the margin


def test_extent_of_a_disc_is_its_radius_and_of_a_rod_its_half_length():
    yy, xx = np.mgrid[-40:41, -40:41]
    py, px = np.nonzero(np.hypot(yy, xx) <= 20)
    assert abs(_region_extent(py, px, 1) - 20.0) < 0.2
    py, px = np.nonzero(np.hypot(xx / 30, yy / 10) <= 1)  # an ellipse: its semi-major axis
    assert abs(_region_extent(py, px, 1) - 30.0) < 0.3
    py, px = np.nonzero(np.hypot(np.clip(np.abs(xx) - 25, 0, None), yy) <= 4)  # a rod 58 px long: its ends fit
    assert 29.0 <= _region_extent(py, px, 1) < 1.2 * 29.0
    # a round particle with a lobe reaches as far as a rod by its farthest pixel, not by its moments
    lobed = (np.hypot(yy, xx) <= 20) | (np.hypot(yy, xx - 24) <= 6)
    py, px = np.nonzero(lobed)
    assert _region_extent(py, px, 1) < 1.3 * np.sqrt(lobed.sum() / np.pi)


def test_a_thin_rod_is_not_opened_away():
    # a rod 10 px wide (aspect 7, equivalent radius 14 px): the opening sized on its radius (11 px) left nothing
    yy, xx = np.mgrid[:83, :83] - 41.0
    rod = (np.hypot(np.clip(np.abs(xx) - 30, 0, None), yy) <= 4.6).astype(np.float32)[None]
    radius = float(np.sqrt(rod.sum() / np.pi))
    reach = window_radius(radius, 35.0)
    assert (isolate_particle(rod, radius=radius, reach=reach) > 0.5).sum() == rod.sum()
    # a disc keeps its opening (fines of its size cut off as before)
    disc = (np.hypot(yy, xx) <= 14).astype(np.float32)[None]
    assert np.array_equal(isolate_particle(disc, radius=14.0, reach=14.0), isolate_particle(disc, radius=14.0))
