"""Guards of the linking of scans: two chance pairs without the images' offset, and images of different frame sizes.

Reduced scenes: the scans' detections and images are built directly, no scan is run.
"""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from xanestrack.series import REFERENCE_FILE, link_scans, phase_offset, scan_image_prior, series_notes


def _summary(scans):
    """Summary rows by hand: ``scans`` is a list of [(y, x, radius), ...] per scan (row order = scan_particle)."""
    rows = []
    for s, objs in enumerate(scans):
        for j, (y, x, r) in enumerate(objs):
            rows.append(dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=y, x0=x, radius=r))
    return pd.DataFrame(rows)


def _ids(t, scan, points):
    """Series id of the row of ``scan`` nearest each point (within 3 px; -1 if none)."""
    g = t[t.scan == scan]
    out = []
    for p in points:
        d = np.hypot(g.y0 - p[0], g.x0 - p[1])
        out.append(int(g.particle.iloc[int(np.argmin(d))]) if len(g) and d.min() < 3 else -1)
    return out


# the probe's two 320 x 320 windows of one field, 110 px apart in y and x (one particle in common: b's 2nd row is a's
# 2nd), as the series found them; a's particles 0 and 1 and b's 0 and 1 agree within 2.2 px on (10.7, 10.2) px by
# chance (similar radii), and the images gave no offset (phase correlation quality 14)
PROBE_A = [
    (36.7567, 190.1358, 19.9949),
    (76.6105, 70.4803, 17.5535),
    (144.9219, 246.0710, 19.9311),
    (181.7703, 149.2106, 23.5071),
    (257.7654, 55.4116, 9.4407),
]
PROBE_B = [
    (48.5437, 201.2656, 22.7082),
    (86.2282, 79.7554, 18.8138),
    (185.6362, 182.3170, 17.4443),
    (243.7754, 20.4805, 15.4304),
    (266.8653, 100.8850, 10.9981),
]


def test_two_chance_pairs_without_an_image_offset_do_not_join_unrelated_particles(caplog):
    # it was linked as "vote": two ids each joined two different true particles, the offset read (10.7, 10.2)
    with caplog.at_level(logging.WARNING, logger="xanestrack.series"):
        t = link_scans(_summary([PROBE_A, PROBE_B]), frame_shape=(320, 320))
    b = t[t.scan == 1]
    assert b.link_method.iloc[0] == "vote unconfirmed"
    assert t.particle.nunique() == len(t)  # new ids, no link
    assert (b.offset_from_scan == 1).all() and (b.common_dy == 0).all()
    assert "vote unconfirmed" in caplog.text
    # without the frame: no link either (the chance is then taken over the objects' bounding box, larger)
    t = link_scans(_summary([PROBE_A, PROBE_B]))
    assert t.particle.nunique() == len(t)


# six particles of scan 0; scan 1 (stage 80 px down): two of them in view, four new ones (tests/test_series.py)
BASE = np.array([[60.0, 80.0], [90.0, 300.0], [200.0, 180.0], [230.0, 390.0], [330.0, 70.0], [360.0, 260.0]])
RADII = np.array([12.0, 16.0, 21.0, 27.0, 34.0, 42.0])


def test_a_link_of_two_particles_and_no_image_offset_is_kept_and_said(tmp_path, caplog):
    off = np.array([80.0, 0.0])
    new = [(25.0, 60.0, 30.0), (40.0, 230.0, 13.0), (70.0, 420.0, 22.0), (300.0, 330.0, 17.0)]
    s1 = [(*(BASE[k] + off + [0.6, -0.4]), RADII[k]) for k in (1, 2)] + new
    with caplog.at_level(logging.WARNING, logger="xanestrack.series"):
        t = link_scans(_summary([[(*p, r) for p, r in zip(BASE, RADII)], s1]), frame_shape=(460, 460))
    # the overlap rule does not fire: 2 of the 3 particles in view of both frames have a partner
    assert t[t.scan == 1].link_method.iloc[0] == "vote" and t[t.scan == 1].link_support.iloc[0] == 2
    assert _ids(t, 1, [BASE[k] + off for k in (1, 2)]) == _ids(t, 0, [BASE[1], BASE[2]])
    assert "joined to the previous scan by 2 particles alone" in caplog.text
    notes = series_notes(t.assign(n_frames=40, mean_e50=np.nan))
    assert any(n.startswith("scan s1 was joined to the scan before by two particles alone") for n in notes)
    # and in the report
    from xanestrack.report import write_series_report

    html = write_series_report(t.assign(n_frames=40, mean_e50=8340.0, oxidised_fraction=0.5), tmp_path).read_text()
    assert "joined to the scan before by two particles alone" in html


@pytest.fixture(scope="module")
def synth_scene():
    """The default synthetic scene, seed 1, reduced (300 x 300, 4 energies): frame-0 OD and true particles."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, shape=(300, 300), n_energies=4)
    p = s.truth.positions
    p0 = p[p.frame == 0].sort_values("particle")
    return s.optical_density()[0], p0[["y", "x"]].to_numpy(float), np.asarray(s.truth.radii, float)


def test_control_windows_of_the_default_scene_still_link_by_vote(synth_scene):
    # two 240 x 240 windows 40 px apart, each particle moving a little on its own: linked, no rule fires, no note
    _, pos, radii = synth_scene
    rng = np.random.default_rng(0)
    origins = [np.array([0.0, 0.0]), np.array([40.0, 25.0])]
    scans, seen = [], []
    for k, o in enumerate(origins):
        q = pos - o + (rng.normal(0, 0.8, pos.shape) if k else 0)
        inside = np.all((q - radii[:, None] > 0) & (q + radii[:, None] < 239), axis=1)
        scans.append([(*q[j], radii[j]) for j in np.flatnonzero(inside)])
        seen.append((inside, q))
    common = np.flatnonzero(seen[0][0] & seen[1][0])
    assert len(common) >= 3
    t = link_scans(_summary(scans), frame_shape=(240, 240))
    b = t[t.scan == 1]
    assert b.link_method.iloc[0] == "vote" and b.link_support.iloc[0] >= 3
    assert _ids(t, 1, seen[1][1][common]) == _ids(t, 0, seen[0][1][common])
    assert t.particle.nunique() == len(t) - len(common)
    assert not any("two particles alone" in n for n in series_notes(t.assign(n_frames=4, mean_e50=np.nan)))


def _write_reference(folder, img):
    folder.mkdir(parents=True)
    np.save(folder / REFERENCE_FILE, np.asarray(img, np.float32))
    (folder / "summary.json").write_text(json.dumps(dict(reference_binning=1)))


def test_images_of_different_frame_sizes_give_the_offset(synth_scene, tmp_path):
    # a detector ROI changed between two scans (260 x 260, then 250 x 280): no offset was measured at all
    od, _, _ = synth_scene
    a, b = od[0:260, 0:260], od[30:280, 20:300]  # b sees the field moved by (-30, -20)
    off, q, u = phase_offset(a, b, max_shift=130)
    assert np.allclose(off, [-30, -20]) and q >= 30 and u >= 1.25
    same, _, _ = phase_offset(a, od[30:290, 20:280], max_shift=130)  # control: frames of one size
    assert np.allclose(same, off)
    _write_reference(tmp_path / "scans" / "s0", a)
    _write_reference(tmp_path / "scans" / "s1", b)
    prior = scan_image_prior(tmp_path, {0: "s0", 1: "s1"})
    assert prior(0, 1) == pytest.approx([-30, -20], abs=0.5)
    assert prior.not_compared(0, 1) is None


def test_images_that_cannot_be_compared_are_said_so(synth_scene, tmp_path):
    # one particle in common: the particles alone cannot tell the offset; where the other scan has no image the
    # scan is "images not compared", where the images were compared and gave nothing it stays "ambiguous"
    od, _, _ = synth_scene
    table = _summary([[(100.0, 100.0, 20.0), (200.0, 60.0, 12.0)], [(70.0, 80.0, 20.0), (150.0, 200.0, 30.0)]])
    _write_reference(tmp_path / "scans" / "s0", od[0:260, 0:260])
    prior = scan_image_prior(tmp_path, {0: "s0", 1: "s1"})
    assert prior(0, 1) is None and "no reference image of s1" in prior.not_compared(0, 1)
    t = link_scans(table, prior=prior, frame_shape=(260, 260))
    assert t[t.scan == 1].link_method.iloc[0] == "images not compared" and t.particle.nunique() == len(t)
    from xanestrack.report import write_series_report

    html = write_series_report(t.assign(n_frames=40, mean_e50=8340.0, oxidised_fraction=0.5), tmp_path).read_text()
    assert "Scan 1 (images not compared)" in html and "the images could not be compared" in html
    # control: an unrelated image (the field turned by 90 degrees) is compared and singles out nothing
    _write_reference(tmp_path / "scans" / "s1", np.rot90(od[20:280, 30:290]))
    t = link_scans(table, prior=scan_image_prior(tmp_path, {0: "s0", 1: "s1"}), frame_shape=(260, 260))
    assert t[t.scan == 1].link_method.iloc[0] == "ambiguous"
