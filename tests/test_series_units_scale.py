"""The series' own displacements: in common pixels where a scan is binned, and against a scan's magnification.

Hand-built summaries (no images): six particles through four scans, stage offsets of up to 64 px, each particle
moving on its own by a random walk of 0.5 px a scan.
"""

import numpy as np
import pandas as pd

from xanestrack.report import series_figure
from xanestrack.series import link_scans, series_notes, series_own_displacement

FRAME = (460, 460)
CENTRE = (np.array(FRAME) - 1) / 2
BASE = np.array([[60.0, 80.0], [90.0, 300.0], [200.0, 180.0], [230.0, 390.0], [330.0, 70.0], [360.0, 260.0]])
RADII = np.array([12.0, 16.0, 21.0, 27.0, 34.0, 42.0])
OFFSETS = np.array([[0.0, 0.0], [40.0, -25.0], [-30.0, 45.0], [55.0, 30.0]])


def _scene(seed=0):
    """True positions (scan, particle, 2) in common pixels and each particle's own walk since the first scan."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(np.concatenate([np.zeros((1, 6, 2)), rng.normal(0, 0.5, (3, 6, 2))]), axis=0)
    return BASE + walk + OFFSETS[:, None, :], walk


def _summary(pos, *, binned=None, magnified=None):
    """Summary rows of the scans at ``pos``; scan ``binned`` in pixels twice the size, scan ``magnified`` = (scan,
    scale) magnified about the frame centre."""
    rows = []
    for s, p in enumerate(pos):
        r = RADII.copy()
        if magnified is not None and s == magnified[0]:
            p = CENTRE + magnified[1] * (p - CENTRE)
        if s == binned:
            p, r = (p + 0.5) / 2 - 0.5, r / 2  # the pixel centres of a 2x binning
        for j in range(len(p)):
            rows.append(
                dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=p[j, 0], x0=p[j, 1], radius=r[j], mean_e50=0.0)
                | dict(oxidised_fraction=0.0, max_nonrigid_px=0.0, flagged_frames=0, n_frames=20)
            )
    return pd.DataFrame(rows)


def _own(t):
    """Own displacement (px), (scan, particle) in the order of the particles' first-scan rows."""
    t = t.sort_values(["scan", "scan_particle"])
    return np.hypot(t.own_dy, t.own_dx).to_numpy().reshape(-1, 6)


def _series(summary, **kw):
    t = link_scans(summary, frame_shape=FRAME, scale=kw.get("scale"))
    assert t.particle.nunique() == 6  # the identities are the linking's, kept through every scan
    return series_own_displacement(t, frame_shape=FRAME, **kw)


def test_a_scan_binned_2x_has_its_own_displacements_in_common_pixels():
    pos, walk = _scene()
    truth = np.hypot(*walk.transpose(2, 0, 1))
    plain = _series(_summary(pos))
    binned = _series(_summary(pos, binned=1), scale={1: 2.0})
    # the offset (common px) was taken from positions in the scan's own pixels: 129-134 px where ~1 px was moved
    assert np.abs(_own(binned) - truth).max() < 0.5
    assert np.abs(_own(binned) - _own(plain)).max() < 0.05
    assert (binned.scale_vs_first == 1.0).all()
    # the report's table names its unit, and gives um where the pixel size is known
    binned.attrs["pixel_size_um"] = 0.02
    t = series_figure(binned).tables["series_own_displacement"]
    assert list(t.columns) == ["particle", "scan", "own_displacement_common_px", "own_displacement_um"]
    assert t.own_displacement_common_px.max() < 2.5
    assert np.allclose(t.own_displacement_um, 0.02 * t.own_displacement_common_px)
    assert "common px, 0.02 um" in series_figure(binned).svg


def test_a_scan_magnified_is_measured_against_its_scale_and_the_scans_after_it_unchanged():
    pos, _ = _scene()
    plain = _series(_summary(pos))
    magnified = _series(_summary(pos, magnified=(2, 1.015)))
    scales = magnified.groupby("scan").scale_vs_first.first()
    assert abs(scales[2] - 1.015) < 0.002 and (scales.drop(2) == 1.0).all()
    # scan 3, unchanged, was joined through scan 2 and took its magnification as the particles' motion: 2.43 px
    # (scan 2: 3.07 px); now scan 3 is within 0.10 px of the series without it (0.06-0.44 px over 10 draws: the step
    # through scan 2 is a median of the particles' displacements, the linking's is one from their predicted places)
    change = np.abs(_own(magnified) - _own(plain)).max(axis=1)
    assert change[1] < 0.01 and change[3] < 0.2 and change[2] < 0.5
    notes = series_notes(magnified)
    assert len(notes) == 1 and notes[0].startswith("scan s2: its particles lie as if magnified by +1.5")
    assert "scale_vs_first" in notes[0]


def test_a_plain_series_is_measured_as_the_linking_gave_it():
    """Control: no scale is taken from the particles' own motion, and the own displacements are the linking's."""
    for seed in range(3):
        pos, _ = _scene(seed)
        t = _series(_summary(pos))
        assert (t.scale_vs_first == 1.0).all() and not series_notes(t)
        s = t.sort_values(["scan", "scan_particle"])
        first = s.groupby("particle")[["y0", "x0", "common_dy", "common_dx"]].transform("first")
        before = np.hypot(
            s.y0 - s.common_dy - (first.y0 - first.common_dy), s.x0 - s.common_dx - (first.x0 - first.common_dx)
        )
        assert np.abs(_own(t).ravel() - before.to_numpy()).max() < 0.05
