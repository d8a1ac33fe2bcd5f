"""The second estimate: each particle followed by its outline (xanestrack.follow)."""

import numpy as np

from conftest import undocumented_fields
from xanestrack.follow import FollowOptions, follow_particle


def test_known_subpixel_displacements_recovered_through_a_contrast_change():
    rng = np.random.default_rng(4)
    n = 12
    truth = np.c_[60 + 0.37 * np.arange(n), 55 - 0.23 * np.arange(n)]
    yy, xx = np.mgrid[0:120, 0:120]
    od = []
    for k, (y, x) in enumerate(truth):
        r = np.hypot(yy - y, xx - x)
        outline = 14 * (1 + 0.06 * np.cos(3 * np.arctan2(yy - y, xx - x)))  # not a disc: its rotation is fixed
        contrast = 0.3 + 0.6 * k / (n - 1)  # across the absorption edge
        od.append(
            contrast * np.clip(outline - r + 0.5, 0, 1) + 0.05 + 0.001 * yy - 0.0005 * xx
        )  # on a smooth background
    od = np.asarray(od, np.float32) + rng.normal(0, 0.01, (n, 120, 120)).astype(np.float32)
    predicted = np.round(truth)  # the detector's whole-pixel guess
    pos, quality, measured = follow_particle(od, predicted, 14.0, n - 1)
    assert measured.all() and (quality > 0.5).all()
    est = pos - pos[n - 1]
    true = truth - truth[n - 1]
    assert np.abs(est - true).max() < 0.05  # measured 0.034 px


def test_textured_surroundings_cut_by_the_apodisation_do_not_pull_towards_the_prediction():
    # a large particle (binned window) and, half inside its apodisation disc, a textured
    # agglomerate, all shifted by 1 px: the texture's gradient level, cut by the disc, is a
    # pattern fixed to the window
    from scipy import ndimage

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:420, 0:420]
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (420, 420)), 4.0)
    tex /= tex.std()
    scene = 0.8 * np.clip(100 - np.hypot(yy - 210, xx - 180) + 0.5, 0, 1) * (1 + 0.1 * tex)
    scene = scene + 0.6 * np.clip(70 - np.hypot(yy - 210, xx - 320) + 0.5, 0, 1) * (1 + 0.5 * tex)
    od = np.stack([scene, ndimage.shift(scene, (1.0, 0), order=3, mode="nearest")])
    od = (od + rng.normal(0, 0.005, od.shape)).astype(np.float32)
    predicted = np.array([[210.0, 180.0], [210.0, 180.0]])  # the prediction: no shift
    pos, _, measured = follow_particle(od, predicted, 100.0, 0)
    assert measured.all()
    assert np.abs(pos[1] - pos[0] - [1.0, 0.0]).max() < 0.02  # measured 0.996, -0.002
    # one level per window and a taper of 1.33 binned px (as before): 0.89 px after two passes
    old = FollowOptions(floor_scale=0.0, apodisation_margin=4 / 3, search="disc", max_passes=2)
    pos, _, _ = follow_particle(od, predicted, 100.0, 0, options=old)
    assert pos[1, 0] - pos[0, 0] < 0.95


def _pair_moving_as_one(gap: float, seed: int = 7):
    """``(od, truth, predicted)``: particles of radius 14 and 12 px, ``gap`` px apart along x, moving as one (a
    random walk of 0.4 px steps), and a prediction 0.5 px off (the linker's, between key frames)."""
    rng = np.random.default_rng(seed)
    n = 30
    truth = np.array([40.0, 40.0]) + np.cumsum(rng.normal(0, 0.4, (n, 2)), axis=0)
    yy, xx = np.mgrid[0:80, 0:110]
    od = []
    for y, x in truth:
        a = np.clip(1 - ((yy - y) ** 2 + (xx - x) ** 2) / 14.0**2, 0, None) ** 0.5
        b = np.clip(1 - ((yy - y) ** 2 + (xx - x - 26 - gap) ** 2) / 12.0**2, 0, None) ** 0.5
        od.append(0.8 * (a + b))
    od = np.asarray(od, np.float32) + rng.normal(0, 0.01, (n, 80, 110)).astype(np.float32)
    return od, truth, truth + rng.normal(0, 0.5, truth.shape)


def test_a_neighbour_moving_with_the_particle_a_few_px_away_does_not_pull_it_towards_the_prediction():
    """The neighbour's near rim lies in the apodisation disc's taper, weighted by where it lies in the window: with
    the frames apodised as the template and two passes (the defaults) each frame's shift is pulled towards the
    window's centre, the prediction, along the pair's axis; searched in the whole window, passes until settled (as
    the pipeline follows such a particle again: ``pipeline._refine_near_neighbours``), it is not."""
    od, truth, predicted = _pair_moving_as_one(4.0)
    errs = {}
    for name, options in (("now", FollowOptions(search="window", max_passes=8)), ("before", FollowOptions())):
        pos, _, measured = follow_particle(od, predicted, 14.0, len(od) - 1, options=options)
        assert measured.all()
        e = pos - truth
        errs[name] = (e - e.mean(axis=0)).std(axis=0)
    assert errs["now"][1] < 0.06, errs  # along the axis: measured 0.017 px (across it 0.014)
    assert errs["before"][1] > 2 * errs["now"][1], errs  # measured 0.100 px


def test_a_particle_alone_settles_in_two_passes():
    """Alone (the neighbour far off), the passes after the second move it by under ``settle_px``: the positions are
    those of two passes to within that."""
    od, _, predicted = _pair_moving_as_one(30.0)
    two, _, _ = follow_particle(od, predicted, 14.0, len(od) - 1)
    settled, _, _ = follow_particle(od, predicted, 14.0, len(od) - 1, options=FollowOptions(max_passes=8))
    assert np.sqrt(np.mean(np.sum((two - settled) ** 2, axis=1))) <= FollowOptions().settle_px


def test_nothing_measured_without_a_reference_position():
    pred = np.full((3, 2), np.nan)
    pos, q, measured = follow_particle(np.zeros((3, 40, 40), np.float32), pred, 8.0, 0)
    assert not measured.any() and (q == 0).all()


def test_every_option_is_documented():
    assert undocumented_fields(FollowOptions) == []


def _textured_particle_frames(truth, contrast, rng, size=120, radius=14.0):
    """A particle with an inner texture of its own on a sloping background, at ``truth``."""
    yy, xx = np.mgrid[0:size, 0:size]
    od = []
    for (y, x), c in zip(truth, contrast):
        r = np.hypot(yy - y, xx - x)
        body = np.clip(radius - r + 0.5, 0, 1) * (1 + 0.3 * np.cos((yy - y) / 3.0) * np.sin((xx - x) / 4.0))
        od.append(c * body + 0.05 + 0.002 * yy * c - 0.001 * xx)
    return np.asarray(od, np.float32) + rng.normal(0, 0.01, (len(truth), size, size)).astype(np.float32)


def test_density_residuals_confirm_right_positions_and_measure_wrong_ones():
    from xanestrack.follow import density_residuals

    rng = np.random.default_rng(7)
    n = 9
    truth = np.c_[60 + 0.41 * np.arange(n), 58 - 0.27 * np.arange(n)]
    contrast = np.linspace(0.3, 1.0, n)  # across the absorption edge, background slope changing with it
    od = _textured_particle_frames(truth, contrast, rng)
    res, ok, _ = density_residuals(od, truth, np.ones(n, bool), 14.0, n - 1)
    assert ok.all()
    spread = np.hypot(*(res - np.median(res, axis=0)).T)
    assert spread.max() < 0.1, spread  # right positions: one constant residual
    wrong = truth.copy()
    wrong[3] += [1.5, 0.0]  # an estimate 1.5 px off in one frame
    res, ok, _ = density_residuals(od, wrong, np.ones(n, bool), 14.0, n - 1)
    d = res - np.median(res, axis=0)
    assert abs(d[3, 0] + 1.5) < 0.2 and abs(d[3, 1]) < 0.2, d[3]  # the residual says by how much
    assert np.hypot(*np.delete(d, 3, axis=0).T).max() < 0.15


def test_density_residuals_need_the_reference_and_a_second_frame():
    from xanestrack.follow import density_residuals

    od = np.zeros((3, 60, 60), np.float32)
    pos = np.full((3, 2), 30.0)
    for measured in ([True, False, False], [False, True, True]):  # one frame; no reference (frame 0)
        res, ok, _ = density_residuals(od, pos, np.array(measured), 8.0, 0)
        assert not ok.any() and np.isnan(res).all()


def test_density_is_not_measured_where_the_surroundings_move_otherwise():
    """A particle drifting over a textured matrix: both correlations of its window are pulled
    alike, so the density correlation must not vouch there (frames whose ring of surroundings
    sits more than ``surroundings_px`` from where it sits on average)."""
    from scipy import ndimage

    from xanestrack.follow import density_residuals

    rng = np.random.default_rng(1)
    n, size = 9, 160
    truth = np.c_[80 + 0.3 * np.arange(n), 80 - 0.2 * np.arange(n)]
    yy, xx = np.mgrid[0:size, 0:size]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size + 40, size + 40)), 2) * 3
    measured = {}
    for own in (0.0, 3.0):  # the matrix moves with the particle, or 3 px relative to it over the scan
        od = []
        for k, (y, x) in enumerate(truth):
            shift = truth[k] - truth[0] + [own * k / (n - 1), 0]
            matrix = ndimage.shift(texture, shift, order=1)[20:-20, 20:-20]
            body = np.clip(14 - np.hypot(yy - y, xx - x) + 0.5, 0, 1)
            od.append(0.1 * matrix * (1 - body) + (0.3 + 0.07 * k) * body)
        od = np.asarray(od, np.float32) + rng.normal(0, 0.01, (n, size, size)).astype(np.float32)
        _, ok, surroundings = density_residuals(od, truth, np.ones(n, bool), 14.0, n - 1)
        measured[own] = ok
        if own == 0:
            assert np.hypot(*surroundings.T).max() < 0.1
        else:  # measured 1.45, 1.00, 0.61, 0.30, 0, ... px from the middle frame
            assert np.hypot(*surroundings[[0, -1]].T).min() > 1.2
    assert measured[0.0].all()
    assert not measured[3.0][[0, 1, -2, -1]].any() and measured[3.0][3:6].all()
