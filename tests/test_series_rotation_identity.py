"""The series: a rotation of the field between scans, and links that the positions alone would make.

Hand-built summaries (no images): six particles in a 460 x 460 frame through five scans, stage offsets between scans.
A turn of the field between scans was every particle's own displacement, nothing said; a particle merged with its
neighbour, or a different particle appearing a few pixels from where one left, was given the old id, nothing said.
"""

import re

import numpy as np
import pandas as pd

from xanestrack.series import link_scans, series_notes, series_own_displacement

FRAME = (460, 460)
CENTRE = (np.array(FRAME) - 1) / 2
BASE = np.array([[60.0, 80.0], [90.0, 300.0], [200.0, 180.0], [230.0, 390.0], [330.0, 70.0], [360.0, 260.0]])
RADII = np.array([12.0, 16.0, 21.0, 27.0, 34.0, 42.0])
OFFSETS = np.array([[0.0, 0.0], [40.0, -25.0], [-30.0, 45.0], [55.0, 30.0], [-20.0, -35.0]])


def _turn(p, deg):
    """``p`` turned by ``deg`` about the frame centre (clockwise as the image is shown, rows downwards)."""
    a = np.deg2rad(deg)
    d = p - CENTRE
    return CENTRE + np.stack([np.cos(a) * d[:, 0] + np.sin(a) * d[:, 1], np.cos(a) * d[:, 1] - np.sin(a) * d[:, 0]], 1)


def _rows(scans):
    """Summary rows from ``scans``: per scan a list of (y, x, radius)."""
    rows = []
    for s, objs in enumerate(scans):
        for j, (y, x, r) in enumerate(objs):
            rows.append(
                dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=y, x0=x, radius=r, mean_e50=0.0)
                | dict(oxidised_fraction=0.0, max_nonrigid_px=0.0, flagged_frames=0, n_frames=20)
            )
    return pd.DataFrame(rows)


def _scans(seed=0, *, turn=None, walk=0.05, offsets=OFFSETS, swell=None, magnify=None, hide=(), base=BASE):
    """Per scan the six particles (y, x, radius): stage offsets, each particle moving on its own by a random walk of
    ``walk`` px a scan; ``turn`` / ``magnify`` (per scan) about the frame centre, ``swell`` (per scan) on the radii;
    ``hide``: (scan, particle) left out."""
    rng = np.random.default_rng(seed)
    n = len(offsets)
    own = np.cumsum(np.concatenate([np.zeros((1, 6, 2)), rng.normal(0, walk, (n - 1, 6, 2))]), axis=0)
    out = []
    for s in range(n):
        p = base + own[s]
        r = RADII * (1.0 if swell is None else swell[s]) * (1 + rng.normal(0, 0.005, 6))
        if magnify is not None:
            p, r = CENTRE + magnify[s] * (p - CENTRE), r * magnify[s]
        if turn is not None:
            p = _turn(p, turn[s])
        p = p + offsets[s]
        out.append([(y, x, rr) for j, ((y, x), rr) in enumerate(zip(p, r)) if (s, j) not in hide])
    return out


def _series(scans):
    t = link_scans(_rows(scans), frame_shape=FRAME)
    return series_own_displacement(t, frame_shape=FRAME)


def _step(doubt):
    """The own step (px) a ``link_doubt`` gives."""
    return float(re.search(r"its own step ([0-9.]+) px", doubt).group(1))


def _own(t):
    return np.hypot(t.own_dy, t.own_dx).to_numpy()


def test_a_turn_of_the_field_between_scans_is_fitted_and_said_not_each_particles_own():
    turn = [0.0, 0.5, 1.0, 1.5, 0.8]
    t = _series(_scans(turn=turn))
    assert t.particle.nunique() == 6
    # it was every particle's own displacement: up to 5.0 px at 1.5 degrees, 1.7 px at half a degree
    assert _own(t).max() < 0.3
    rot = t.groupby("scan").rotation_vs_first_deg.first().to_numpy()
    assert np.abs(rot + np.array(turn)).max() < 0.03  # clockwise as shown: negative, counter-clockwise positive
    assert (t.scale_vs_first == 1.0).all()
    notes = series_notes(t)
    assert len(notes) == 4 and all("as if turned by" in n and "clockwise" in n for n in notes)
    assert notes[0].startswith("scan s1: its particles lie as if turned by 0.5") and " degrees clockwise" in notes[0]


def test_a_turn_with_a_magnification_is_fitted_with_it():
    t = _series(_scans(turn=[0, 0, 1.0, 0, 0], magnify=[1, 1, 1.015, 1, 1]))
    assert _own(t).max() < 0.3
    assert abs(t[t.scan == 2].scale_vs_first.iloc[0] - 1.015) < 0.002
    assert abs(t[t.scan == 2].rotation_vs_first_deg.iloc[0] + 1.0) < 0.03


def test_controls_no_turn_is_read_from_own_motion_or_from_three_particles():
    for seed in range(5):  # particles moving 0.5 px a scan on their own: no rotation, no note
        t = _series(_scans(seed, walk=0.5))
        assert (t.rotation_vs_first_deg == 0.0).all() and not series_notes(t)
    # three particles: a turn is not fitted (too few to tell it from their own motion), as run needs four
    scans = [objs[:3] for objs in _scans(turn=[0, 1.0, 1.0, 1.0, 1.0])]
    t = _series(scans)
    assert (t.rotation_vs_first_deg == 0.0).all()
    # one particle far from the others' centroid moving 3 px on its own, at right angles to its lever: its own
    base = _scans(walk=0.0)
    for s in range(2, 5):
        y, x, r = base[s][5]
        base[s][5] = (y - 3.0, x + 1.0, r)
    t = _series(base)
    assert (t.rotation_vs_first_deg == 0.0).all()
    p5 = t[t.scan_particle == 5].sort_values("scan")
    assert np.all(np.abs(p5.own_dy.to_numpy()[2:] + 3.0) < 0.3) and p5.particle.nunique() == 1
    # its step is said (it moved alone), its id kept (its size as before), and the steps after it are its own
    assert abs(_step(p5.link_doubt.tolist()[2]) - 3.16) < 0.1 and (p5.unlinked_from == -1).all()
    assert (p5.link_doubt.to_numpy()[[0, 1, 3, 4]] == "").all()
    notes = series_notes(t)
    assert len(notes) == 1 and notes[0].startswith("linked by position, but moved on their own far more than the")


def _merge_scans():
    """Particle 0 (r 12) lies 4 px from particle 3 (r 27); from scan 2 the two are one blob, its centroid where their
    areas put it (7.1 px from particle 3's), its radius that of their areas together; particle 0 is not found from
    then on."""
    base = BASE.copy()
    base[0] = base[3] - [0.0, 27 + 12 + 4]
    scans = _scans(base=base)
    for s in range(2, len(scans)):
        (y0, x0, r0), (y3, x3, r3) = scans[s][0], scans[s][3]
        c = (np.array([y0, x0]) * r0**2 + np.array([y3, x3]) * r3**2) / (r0**2 + r3**2)
        scans[s][3] = (c[0], c[1], np.hypot(r0, r3))
        del scans[s][0]
    return scans


def test_a_merged_particle_is_not_given_either_id_and_is_said():
    base = _series(_scans())
    t = _series(_merge_scans())
    first = t[t.scan == 0].set_index("scan_particle").particle
    blob = t[(t.scan == 2) & (t.scan_particle == 2)].iloc[0]  # particle 3's row (particle 0 is gone)
    # it kept particle 3's id, its own step 7.1 px where the others' were 0.1, its size +9 %, particle 0's track ended
    assert blob.particle not in set(first)
    assert blob.unlinked_from == first[3]
    assert abs(_step(blob.link_doubt) - 7.1) < 0.1
    assert f"particle {first[0]}'s track ends where it overlaps it" in blob.link_doubt and "merged" in blob.link_doubt
    later = t[(t.scan > 2) & (t.scan_particle == 2)]
    assert (later.particle == blob.particle).all() and (later.unlinked_from == -1).all()  # the blob's own track
    assert t[t.particle == first[3]].scan.max() == 1  # particle 3's track ends before the merge
    assert t.particle.nunique() == 7  # the other four keep theirs through every scan, as without the merge
    assert all(t[t.particle == first[j]].scan.nunique() == 5 for j in (1, 2, 4, 5))
    assert (base.link_doubt == "").all() and base.particle.nunique() == 6
    notes = series_notes(t)
    assert len(notes) == 1 and notes[0].startswith("not linked, though position alone links them: ")
    assert (
        f"particle {blob.particle} of scan s2 (at y" in notes[0] and f"to particle {first[3]} of scan s1:" in notes[0]
    )


def test_a_different_particle_where_one_left_is_not_given_its_id():
    scans = _scans()
    for s in range(3, len(scans)):
        y, x, r = scans[s][1]
        scans[s][1] = (y + 4.0, x - 3.0, r * 1.07)  # another particle, 5 px from where particle 1 would be
    t = _series(scans)
    first = t[t.scan == 0].set_index("scan_particle").particle
    new = t[(t.scan == 3) & (t.scan_particle == 1)].iloc[0]
    assert new.particle not in set(first) and new.unlinked_from == first[1]
    assert abs(_step(new.link_doubt) - 5.0) < 0.1
    assert t.groupby("particle").scan.nunique().drop(new.particle).eq(5).sum() == 5  # the others keep theirs
    assert any(f"to particle {first[1]} of scan s2: its own step" in n for n in series_notes(t))


def test_controls_swelling_magnification_large_offsets_and_a_hidden_particle_keep_every_id():
    big = np.array([[0.0, 0.0], [80.0, -100.0], [-20.0, -10.0], [100.0, 60.0], [40.0, -60.0]])  # steps 85-144 px
    cases = [
        dict(swell=[1.0, 1.02, 1.05, 1.09, 1.13]),
        dict(magnify=[1.0, 1.01, 1.02, 1.03, 1.02]),
        dict(offsets=big),
        dict(hide={(2, 4), (3, 4)}),
        dict(walk=0.5),
        dict(turn=[0.0, 0.5, 1.0, 1.5, 0.8], swell=[1.0, 1.02, 1.05, 1.09, 1.13]),
    ]
    for seed in range(3):
        for kw in cases:
            t = _series(_scans(seed, **kw))
            assert t.particle.nunique() == 6, kw
            assert (t.link_doubt == "").all() and (t.unlinked_from == -1).all(), kw
            # no doubtful-link note ("position alone links them", "linked by position"); the scale's note says that
            # positions alone cannot tell a magnification from a swelling
            assert not any("position alone" in n or "linked by position" in n for n in series_notes(t)), kw


def test_control_a_particle_cut_by_the_frame_border_is_not_judged_by_its_part_in_view():
    """The part of a particle at the frame's border that lies in view changes with the stage: its size and centroid
    are not held against it."""
    base = BASE.copy()
    base[0] = [12.0, 80.0]  # radius 12: touching the top row
    scans = _scans(base=base, offsets=OFFSETS * [0.0, 1.0])
    for s in range(2, len(scans)):
        y, x, r = scans[s][0]
        scans[s][0] = (y + 2.0, x, r * 0.85)  # a sixth of it out of view: its centroid 2 px inwards
    t = _series(scans)
    assert t.particle.nunique() == 6 and (t.link_doubt == "").all() and not series_notes(t)
