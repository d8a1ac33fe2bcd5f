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


def test_nothing_measured_without_a_reference_position():
    pred = np.full((3, 2), np.nan)
    pos, q, measured = follow_particle(np.zeros((3, 40, 40), np.float32), pred, 8.0, 0)
    assert not measured.any() and (q == 0).all()


def test_every_option_is_documented():
    assert undocumented_fields(FollowOptions) == []
