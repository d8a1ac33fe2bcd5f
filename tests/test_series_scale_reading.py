"""A scale between scans is the optics' magnification or the electrode's uniform strain: both readings, positions
and sizes alike.

Hand-built summaries (no images): six particles through four scans, stage offsets of up to 55 px, each particle
moving on its own by a random walk of 0.05 px a scan. A probe's series (gen.py, 320 px, 5 scans) whose electrode
swelled by 2 % was told "a refocus ..., not the particles' own motion", its own displacements read at most 0.22 px
against 2.0 px; one magnified by 2 % by the optics kept every radius 1.9-2.7 % larger, nothing said.
"""

import numpy as np
import pandas as pd

from xanestrack.series import link_scans, series_notes, series_own_displacement

FRAME = (460, 460)
CENTRE = (np.array(FRAME) - 1) / 2
BASE = np.array([[60.0, 80.0], [90.0, 300.0], [200.0, 180.0], [230.0, 390.0], [330.0, 70.0], [360.0, 260.0]])
RADII = np.array([12.0, 16.0, 21.0, 27.0, 34.0, 42.0])
OFFSETS = np.array([[0.0, 0.0], [40.0, -25.0], [-30.0, 45.0], [55.0, 30.0]])


def _series(*, strain=(1.0, 1.0, 1.0, 1.0), axes=(1.0, 1.0), magnify=None, sizes=None, binned=None, seed=0):
    """The series table of six particles: ``strain`` (per scan) of the electrode about the frame centre along
    ``axes`` (y, x) and the particles' own walk: their true own displacements (scan, particle, 2); ``magnify`` (scan,
    factor) by the optics, positions and radii; ``sizes`` (per scan) each particle's true radius factor; ``binned``
    a scan in pixels twice the size. Returns the table and the truth."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(np.concatenate([np.zeros((1, 6, 2)), rng.normal(0, 0.05, (3, 6, 2))]), axis=0)
    own = walk + (np.asarray(strain)[:, None, None] - 1) * (BASE - CENTRE) * np.asarray(axes)
    rows = []
    for s in range(4):
        p, r = BASE + own[s] + OFFSETS[s], RADII * (1.0 if sizes is None else sizes[s])
        if magnify is not None and s == magnify[0]:
            p, r = CENTRE + magnify[1] * (p - CENTRE), r * magnify[1]
        if s == binned:
            p, r = (p + 0.5) / 2 - 0.5, r / 2
        for j in range(6):
            rows.append(
                dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=p[j, 0], x0=p[j, 1], radius=r[j], mean_e50=0.0)
                | dict(oxidised_fraction=0.0, max_nonrigid_px=0.0, flagged_frames=0, n_frames=20)
            )
    scale = {binned: 2.0} if binned is not None else None
    t = link_scans(pd.DataFrame(rows), frame_shape=FRAME, scale=scale)
    assert t.particle.nunique() == 6
    t = series_own_displacement(t, frame_shape=FRAME, scale=scale).sort_values(["scan", "scan_particle"])
    return t, own


def _err(t, own, cols, *, translation=False):
    """The largest error of the own displacements ``cols`` against the truth ``own``; with ``translation``, less each
    scan's median error (a translation common to every particle is the stage's)."""
    d = t[list(cols)].to_numpy().reshape(4, 6, 2) - own
    return np.abs(d - np.median(d, axis=1, keepdims=True) if translation else d).max()


def test_a_uniform_swelling_is_given_as_the_electrodes_strain_beside_the_optics_reading():
    t, own = _series(strain=(1.0, 1.007, 1.014, 1.02))
    scales = t.groupby("scan").scale_vs_first.first().to_numpy()
    assert np.allclose(scales, [1.0, 1.007, 1.014, 1.02], atol=0.001)
    # read as the optics (the scale taken away) the particles hardly moved; as the electrode's strain, as they did
    assert np.hypot(*own.T).max() > 3.5 and np.hypot(t.own_dy, t.own_dx).max() < 0.3
    assert _err(t, own, ("own_dy_with_scale", "own_dx_with_scale")) < 0.2
    notes = series_notes(t)
    assert len(notes) == 3  # scans 1-3: 0.7 % moves them 1.0 px at their median distance
    last = notes[-1]
    assert last.startswith("scan s3: its particles lie as if magnified by +2.0")
    assert "not the particles' own motion" not in last and "cannot tell apart" in last
    assert "a uniform swelling of the electrode" in last and "a strain of +2.0" in last
    assert "own_dy_with_scale" in last and "scale_vs_first" in last
    # the radii did not change: what a change of the optics cannot give
    assert "Their radii changed by a median of +0.00 %" in last and "the electrode's strain is the likelier" in last


def test_a_magnified_scan_gives_its_radii_with_the_scale_taken_out_and_says_they_follow_it():
    t, own = _series(magnify=(2, 1.015))
    assert abs(t[t.scan == 2].scale_vs_first.iloc[0] - 1.015) < 0.002
    assert _err(t, own, ("own_dy", "own_dx")) < 0.2
    s2 = t[t.scan == 2]
    assert np.allclose(s2.radius / RADII, 1.015)  # as measured: every particle 1.5 % larger
    assert np.abs(s2.radius_at_first_scale / RADII - 1).max() < 0.002
    assert np.allclose(t[t.scan != 2].radius_at_first_scale, t[t.scan != 2].radius)
    notes = series_notes(t)
    assert len(notes) == 1 and notes[0].startswith("scan s2: its particles lie as if magnified by +1.5")
    assert "as much as the scale: what a change of the optics gives" in notes[0]
    assert "radius_at_first_scale" in notes[0]


def test_a_shrinking_electrode_whose_particles_shrank_alike_is_not_told_apart_from_the_optics():
    t, _ = _series(strain=(1.0, 1.0, 0.985, 0.985), sizes=(1.0, 1.0, 0.985, 0.985))
    notes = series_notes(t)
    assert len(notes) == 2 and "uniform shrinking of the electrode" in notes[0] and "-1.5" in notes[0]
    assert "as much as the scale" in notes[0]


def test_controls_no_scale_one_direction_strain_and_a_binned_scan_are_unchanged():
    """Without a kept scale the strain reading is the optics one and the radii are as measured (common px)."""
    for kw in (dict(), dict(seed=1), dict(strain=(1.0, 1.013, 1.027, 1.04), axes=(1.0, 0.0)), dict(binned=1)):
        t, own = _series(**kw)
        assert (t.scale_vs_first == 1.0).all() and not series_notes(t), kw
        assert (t.own_dy_with_scale == t.own_dy).all() and (t.own_dx_with_scale == t.own_dx).all()
        # the y-only strain (no similarity gives it) is the particles' own motion, less the stage's translation
        assert _err(t, own, ("own_dy", "own_dx"), translation=True) < 0.2, kw
        assert np.allclose(t.radius_at_first_scale, np.tile(RADII, 4))  # the binned scan's in common px


def test_shared_size_change():
    from xanestrack.series import shared_size_change

    m, se = shared_size_change([10, 20, 30], [10.2, 20.4, 30.6])
    assert abs(m - 0.02) < 1e-12 and abs(se - np.sqrt(np.pi / 2) * 0.005 / np.sqrt(3)) < 1e-12  # the floor
    assert np.isnan(shared_size_change([np.nan, 0.0], [1.0, 1.0])[0])
