import logging

import numpy as np
import pandas as pd
import pytest

from xanestrack.parallel.series import evaluate_series, link_scans, process_scan, run_series, synthetic_sources
from xanestrack.synth import make_synthetic_series

CLASSICAL = dict(detector="classical", segmenter="classical")
KW = dict(shape=(260, 260), n_particles=4, radius_range=(12.0, 22.0), stage_offset=12.0, deformation=4.0, n_energies=60)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "series"
    return run_series(synthetic_sources(3, seed=3, **KW), out, scheduler="sync")


def test_series_identity_and_chemistry_trend(sequential):
    truth = make_synthetic_series("default", n_scans=3, seed=3, **KW).truth
    ev = evaluate_series(sequential, truth)
    assert ev["all_identities_kept"] and ev["n_particles"] == 4
    assert ev["max_abs_e50_error_ev"] < 0.2


def test_threads_and_local_cluster_equal_sequential(sequential, tmp_path, caplog):
    cols = ["particle", "scan", "scan_particle", "y0", "x0", "mean_e50", "oxidised_fraction"]
    thr = run_series(synthetic_sources(3, seed=3, **KW), tmp_path / "thr")
    pd.testing.assert_frame_equal(thr[cols], sequential[cols])
    caplog.set_level(logging.INFO)
    before = logging.getLogger("distributed").level
    dist = run_series(synthetic_sources(3, seed=3, **KW), tmp_path / "dist", workers=2)
    pd.testing.assert_frame_equal(dist[cols], sequential[cols])
    # the cluster's own chatter (every worker registered, removed, closed; tracebacks of comms closed
    # at shutdown, logged at INFO) is not the user's: none of it reaches the log, and the level is restored
    chatter = [
        r for r in caplog.records if r.name.startswith("distributed") and (r.levelno < logging.WARNING or r.exc_info)
    ]
    assert chatter == [], [r.getMessage()[:80] for r in chatter[:5]]
    assert logging.getLogger("distributed").level == before


def test_interrupted_series_resumes_without_redoing(tmp_path, monkeypatch):
    src = synthetic_sources(3, seed=3, **KW)
    out = tmp_path / "s"
    # "interrupt" after 2 scans: process them alone
    import json

    from xanestrack.parallel import series as ser

    (out).mkdir()
    manifest = dict(
        sources=[dict(name=s.name, index=s.index, kind=s.kind, path=s.path, synthetic=s.synthetic) for s in src]
    )
    (out / "series.json").write_text(json.dumps(manifest))
    for s in src[:2]:
        process_scan(s, out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "scans").rglob("results.h5")}
    loads = []
    orig = ser.ScanSource.load
    monkeypatch.setattr(ser.ScanSource, "load", lambda self: loads.append(self.index) or orig(self))
    table = run_series(src, out, scheduler="sync")
    assert loads == [2]  # only the missing scan was read and processed
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert table["scan"].nunique() == 3


def test_a_series_resumed_with_other_options_processes_its_scans_again(tmp_path, monkeypatch):
    """A series rerun into its folder with another --min-radius read back the scans done with the first (their
    particles as before, in 1.4 s): the options are part of what a scan's results are checked against."""
    from xanestrack.parallel import series as ser

    (s,) = synthetic_sources(1, seed=3, **KW)
    kw = dict(detector="classical", segmenter="classical")
    first = process_scan(s, tmp_path, **kw)
    loads = []
    orig = ser.ScanSource.load
    monkeypatch.setattr(ser.ScanSource, "load", lambda self: loads.append(self.index) or orig(self))
    assert process_scan(s, tmp_path, **kw) == first and loads == []  # the same settings: read back
    small = min(r["radius"] for r in first)
    again = process_scan(s, tmp_path, min_radius=small + 1.0, **kw)
    assert loads == [0] and len(again) < len(first)


def test_other_series_in_folder_is_refused(sequential, tmp_path):
    out = tmp_path / "x"
    run_series(synthetic_sources(1, seed=5, **KW), out, scheduler="sync")
    with pytest.raises(ValueError, match="holds a series of other scans"):  # what differs said ("something other")
        run_series(synthetic_sources(1, seed=6, **KW), out, scheduler="sync")
    from xanestrack.parallel.series import _how_other

    a, b = (dict(name=n, index=i, kind="input", path=f"/d/{n}.h5", synthetic=None) for i, n in enumerate("ab"))
    assert _how_other([a], [a, b]).startswith("holds a series of 1 scans; this one adds 1 (/d/b.h5")
    assert _how_other([a, b], [b, a]) == "holds the same scans in another order"


def test_link_scans_follows_a_large_common_jump():
    rows = []
    base = np.array([[50.0, 50.0], [50.0, 150.0], [150.0, 80.0]])
    for s, off in enumerate([(0, 0), (30, -25), (-20, 35)]):
        for j, (y, x) in enumerate(base[::-1] if s == 1 else base):  # ids permuted in scan 1
            rows.append(
                dict(
                    scan=s,
                    scan_name=f"s{s}",
                    scan_particle=j,
                    y0=y + off[0],
                    x0=x + off[1],
                    radius=15.0,
                    mean_e50=0.0,
                    oxidised_fraction=0.0,
                    max_nonrigid_px=0.0,
                    flagged_frames=0,
                )
            )
    t = link_scans(pd.DataFrame(rows))
    assert sorted(t.particle.unique()) == [0, 1, 2]
    # the particle at (50, 50)+offset has the same id in every scan
    ids = [
        int(t[(t.scan == s) & (np.hypot(t.y0 - (50 + o[0]), t.x0 - (50 + o[1])) < 1)].particle.iloc[0])
        for s, o in enumerate([(0, 0), (30, -25), (-20, 35)])
    ]
    assert len(set(ids)) == 1


# ---- linking across scans: large stage offsets, few common particles (issue 15, item 8) ---------------------

FRAME = (460, 460)


def _summary(scans):
    """Summary rows by hand: ``scans`` is a list of [(y, x, radius), ...] per scan (row order = scan_particle)."""
    rows = []
    for s, objs in enumerate(scans):
        for j, (y, x, r) in enumerate(objs):
            rows.append(
                dict(
                    scan=s,
                    scan_name=f"s{s}",
                    scan_particle=j,
                    y0=y,
                    x0=x,
                    radius=r,
                    mean_e50=0.0,
                    oxidised_fraction=0.0,
                    max_nonrigid_px=0.0,
                    flagged_frames=0,
                    n_frames=20,
                )
            )
    return pd.DataFrame(rows)


def _ids(table, scan, points):
    """Series id of the particle of ``scan`` at each of ``points`` (within 2 px)."""
    g = table[table.scan == scan]
    out = []
    for y, x in points:
        hit = g[np.hypot(g.y0 - y, g.x0 - x) < 2]
        assert len(hit) == 1, (scan, y, x)
        out.append(int(hit.particle.iloc[0]))
    return out


# six particles of distinct sizes, well apart
BASE = np.array([[60.0, 80.0], [90.0, 300.0], [200.0, 180.0], [230.0, 390.0], [330.0, 70.0], [360.0, 260.0]])
RADII = np.array([12.0, 16.0, 21.0, 27.0, 34.0, 42.0])


def test_link_scans_keeps_identities_through_60px_stage_offsets():
    rng = np.random.default_rng(0)
    offsets = [(0.0, 0.0), (60.0, -20.0), (-5.0, 45.0)]  # steps of 63 and 92 px
    scans, truth = [], []
    for off in offsets:
        pos = BASE + off + rng.normal(0, 0.8, BASE.shape)  # each particle also moves a little on its own
        perm = rng.permutation(len(BASE))
        scans.append([(*pos[k], RADII[k] * rng.uniform(0.97, 1.03)) for k in perm])
        truth.append(pos)
    t = link_scans(_summary(scans), frame_shape=FRAME)
    ids = np.array([_ids(t, s, truth[s]) for s in range(3)])  # (scan, true particle)
    assert (ids == ids[0]).all() and len(set(ids[0])) == 6
    assert list(t.groupby("scan").link_method.first()) == ["first", "vote", "vote"]
    steps = t.groupby("scan")[["common_dy", "common_dx"]].first().to_numpy()
    assert np.allclose(steps, offsets, atol=1.5)


def _two_common_scene():
    """Scan 0: six particles; scan 1 (stage moved by 80 px down): particles 1 and 2 still in view, the four
    others gone (out of the field or lost), four new ones (entered from the top) where none was expected."""
    off = np.array([80.0, 0.0])
    new = [(25.0, 60.0, 30.0), (40.0, 230.0, 13.0), (70.0, 420.0, 22.0), (300.0, 330.0, 17.0)]
    keep = [1, 2]
    s1 = [(*(BASE[k] + off + [0.6, -0.4]), RADII[k]) for k in keep] + new
    return _summary([[(*p, r) for p, r in zip(BASE, RADII)], s1[::-1]]), off, keep, new


def test_link_scans_80px_offset_with_two_of_six_common():
    table, off, keep, new = _two_common_scene()
    for prior in (None, {(0, 1): off + [1.0, -2.0]}):  # without, and with the image offset (a few px off)
        t = link_scans(table, prior=prior, frame_shape=FRAME)
        before = _ids(t, 0, BASE)
        after = _ids(t, 1, [BASE[k] + off + [0.6, -0.4] for k in keep])
        assert after == [before[k] for k in keep]  # the two common particles keep their ids
        newcomers = _ids(t, 1, [n[:2] for n in new])
        assert not set(newcomers) & set(before)  # no wrong link: the new particles get new ids
        assert t.particle.nunique() == 6 + len(new)
        assert t[t.scan == 1].link_method.iloc[0] == ("vote" if prior is None else "vote+prior")


def test_link_scans_one_common_particle_needs_the_image_offset():
    off = np.array([80.0, 0.0])
    common = BASE[2] + off
    others = [(30.0, 70.0, 16.0), (45.0, 330.0, 27.0), (80.0, 200.0, 42.0)]
    table = _summary([[(*p, r) for p, r in zip(BASE, RADII)], [(*common, RADII[2])] + others])
    # no prior: one pairing agrees with any offset; nothing is linked (new ids, not a guess)
    t = link_scans(table, frame_shape=FRAME)
    assert t.particle.nunique() == len(t) and t[t.scan == 1].link_method.iloc[0] == "ambiguous"
    # the image offset confirms it: the one common particle keeps its id
    t = link_scans(table, prior=lambda a, b: off + [2.0, 1.0], frame_shape=FRAME)
    assert _ids(t, 1, [common]) == [_ids(t, 0, [BASE[2]])[0]]
    assert t.particle.nunique() == len(t) - 1 and t[t.scan == 1].link_method.iloc[0] == "prior"
    # an image offset that no particle confirms: nothing linked
    t = link_scans(table, prior=lambda a, b: np.array([-90.0, 100.0]), frame_shape=FRAME)
    assert t.particle.nunique() == len(t)


def test_link_scans_chance_pairs_against_the_image_offset_give_new_ids():
    # one common particle (2); two new particles sit, by chance, exactly where particles 0 and 4 would be
    # after another offset: the particles alone would vote for that offset (two agree); the image offset
    # contradicts it, so nothing is linked rather than two wrong links
    off, chance = np.array([80.0, 0.0]), np.array([30.0, 110.0])
    s1 = [
        (*(BASE[2] + off), RADII[2]),
        (*(BASE[0] + chance), RADII[0]),
        (*(BASE[4] + chance), RADII[4]),
        (20.0, 400.0, 25.0),
    ]
    table = _summary([[(*p, r) for p, r in zip(BASE, RADII)], s1])
    t = link_scans(table, prior={(0, 1): off}, frame_shape=FRAME)
    assert t.particle.nunique() == len(t)
    assert t[t.scan == 1].link_method.iloc[0] == "prior contradicted"


def test_link_scans_closes_tracks_across_an_unknown_offset():
    # scan 1 cannot be placed (a single particle, no prior): scan 2 must not be linked to scan 0 through it
    s0 = [(*p, r) for p, r in zip(BASE, RADII)]
    s1 = [(100.0, 100.0, 20.0)]
    s2 = [(*p, r) for p, r in zip(BASE + [70.0, 0.0], RADII)]  # scan 0's field, moved 70 px from scan 0
    t = link_scans(_summary([s0, s1, s2]), frame_shape=FRAME)
    assert not set(t[t.scan == 2].particle) & set(t[t.scan == 0].particle)
    # its offset is not given from scan 0 as if it were none (the previous scan's was copied): the chain
    # starts again from it
    one = t[t.scan == 1].iloc[0]
    assert one.link_method in ("ambiguous", "prior contradicted") and one.offset_from_scan == 1
    assert one.common_dy == 0 and one.common_dx == 0
    assert (t[t.scan == 0].offset_from_scan == 0).all() and (t[t.scan == 2].offset_from_scan != 0).all()


def test_phase_offset_and_image_prior(tmp_path):
    from xanestrack.parallel.series import REFERENCE_FILE, phase_offset, scan_image_prior

    rng = np.random.default_rng(1)
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(size=(400, 400)), 2.0)  # a textured electrode matrix
    a, b = field[50:306, 40:296], field[120:376, 10:266]  # scan 1 sees it moved by (-70, +30)
    off, q, u = phase_offset(a, b)
    assert np.allclose(off, [-70, 30]) and q > 30 and u > 1.25
    _, q0, _ = phase_offset(a, ndimage.gaussian_filter(rng.normal(size=(256, 256)), 2.0))
    assert q0 < 15
    import json

    for name, img in (("s0", a), ("s1", b)):
        (tmp_path / "scans" / name).mkdir(parents=True)
        np.save(tmp_path / "scans" / name / REFERENCE_FILE, img[::2, ::2].copy())
        (tmp_path / "scans" / name / "summary.json").write_text(json.dumps(dict(reference_binning=2)))
    prior = scan_image_prior(tmp_path, {0: "s0", 1: "s1", 2: "missing"})
    assert np.allclose(prior(0, 1), [-70, 30], atol=2) and prior(0, 2) is None


# ---- series processing: size rules of `run`, scans of one frame, large offset end to end ------------------


@pytest.fixture(scope="module")
def fxi_scans(tmp_path_factory):
    """Two FXI files cut from one synthetic scan: A (12 energies) and B (its first frame only), B's field
    60 px lower than A's (particles at the top of A leave, new ones enter at the bottom); pixel 0.05 um."""
    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.synth import make_synthetic_stack

    d = tmp_path_factory.mktemp("fxi")
    s = make_synthetic_stack(
        "default", seed=4, shape=(330, 270), n_particles=8, radius_range=(11.0, 18.0), n_energies=12
    )
    cuts = {"a": (slice(0, 260), 12), "b": (slice(60, 320), 1)}
    paths = []
    for name, (rows, n) in cuts.items():
        p = d / f"{name}.h5"
        write_fxi(
            p,
            s.counts[:n, rows, :260],
            flats=s.flats[:n, rows, :260],
            darks=s.dark[rows, :260],
            energies_ev=s.energies_ev[:n],
            pixel_size_um=0.05,
        )
        paths.append(p)
    return paths, s


def test_one_frame_scan_and_pixel_size_rules(fxi_scans, tmp_path):
    import json

    from xanestrack.io import read_stack
    from xanestrack.parallel.series import series_sources
    from xanestrack.sizes import particle_radius_range

    paths, _ = fxi_scans
    src = series_sources([paths[1]])[0]
    rows = process_scan(src, tmp_path, detector="classical", segmenter="classical")
    info = json.loads((tmp_path / "scans" / src.name / "summary.json").read_text())
    assert info["n_frames"] == 1 and len(rows) >= 3
    assert all(np.isfinite([r["y0"], r["x0"], r["radius"]]).all() and np.isnan(r["mean_e50"]) for r in rows)
    assert any("no XANES" in n for n in info["notes"])
    # the radius range is run's rule: 0.4-8 um at 0.05 um per pixel, the largest clipped to what 260 x 260 frames
    # hold whole (129.5 px)
    assert info["pixel_size_um"] == pytest.approx(0.05) and info["radius_range_px"] == pytest.approx([8.0, 129.5])
    assert tuple(info["radius_range_px"]) == particle_radius_range(read_stack(paths[1]))[:2]
    rows2 = process_scan(
        src, tmp_path / "given", detector="classical", segmenter="classical", min_radius=5.0, max_radius=40.0
    )
    assert json.loads((tmp_path / "given" / "scans" / src.name / "summary.json").read_text())["radius_range_px"] == [
        5.0,
        40.0,
    ]
    assert len(rows2) >= 3


def test_series_of_a_scan_and_a_one_frame_scan_60px_apart(fxi_scans, tmp_path):
    from xanestrack.parallel.series import series_sources, write_series_report

    paths, s = fxi_scans
    t = run_series(
        series_sources(paths), tmp_path / "ser", scheduler="sync", detector="classical", segmenter="classical"
    )
    a, b = t[t.scan == 0], t[t.scan == 1]
    assert len(a) >= 4 and len(b) >= 4
    # a particle of A at (y, x) is at (y - 60, x) in B: every one seen in both keeps its id, nobody else shares one
    pairs = 0
    for r in a.itertuples():
        hit = b[np.hypot(b.y0 - (r.y0 - 60), b.x0 - r.x0) < 3]
        if len(hit):
            pairs += 1
            assert int(hit.particle.iloc[0]) == r.particle
        else:
            assert r.particle not in set(b.particle)
    assert pairs >= 3
    assert b.link_method.iloc[0] in ("vote", "vote+prior")
    assert b[["common_dy", "common_dx"]].iloc[0].to_numpy() == pytest.approx([-60, 0], abs=1.5)
    html = write_series_report(t, tmp_path / "ser").read_text()
    assert "no XANES" in html
    # each scan's notes (only in its run.json before): in the report, and the ones to act on printed by `series`
    from xanestrack.pipeline import CONSOLE_NOTE_WORDS
    from xanestrack.series import scan_notes

    notes = dict(scan_notes(tmp_path / "ser"))
    assert any(w in n for n in notes["b"] for w in CONSOLE_NOTE_WORDS)
    assert "Notes of each scan" in html and "<h3>b</h3>" in html
    # a scan not joined says why in its own words: "the images did not confirm it" was said where they had, and the
    # particles had not (each moving 4-6 px on its own, or the offset beyond their search)
    t2 = t.copy()
    t2.loc[t2.scan == 1, "link_method"] = "prior unconfirmed"
    html = write_series_report(t2, tmp_path / "ser").read_text()
    assert "Scan 1 (prior unconfirmed)" in html and "the images gave an offset, but too few of the particles" in html
    assert "the images did not confirm it" not in html


def test_hdf5_series_file_is_read_through_io_with_its_checks(tmp_path):
    """A 4-D FXI file (scans x energies x rows x cols): each scan read by io with per-scan flats and energies;
    raw counts without flats refused (not taken as transmission)."""
    import h5py

    from xanestrack.errors import XanestrackError
    from xanestrack.io import read_stack
    from xanestrack.parallel.series import ScanSource, series_sources

    rng = np.random.default_rng(0)
    flats = rng.uniform(900, 1100, (2, 6, 32, 40)).astype(np.float32)
    od = np.zeros((2, 6, 32, 40), np.float32)
    od[1, :, 10:20, 10:20] = 0.5
    counts = (flats * np.exp(-od)).astype(np.uint16)
    e = np.stack([np.linspace(8.30, 8.40, 6), np.linspace(8.31, 8.41, 6)])  # keV, one row per scan
    p = tmp_path / "series.h5"
    with h5py.File(p, "w") as f:
        f["img_xanes"], f["img_bkg"], f["X_eng"] = counts, flats.astype(np.uint16), e
        f["img_dark"] = np.zeros((32, 40), np.uint16)
    src = series_sources([p])
    assert [s.kind for s in src] == ["hdf5-scan", "hdf5-scan"]
    s1 = src[1].load()
    assert s1.od.shape == (6, 32, 40) and s1.energies_ev[0] == pytest.approx(8310.0)
    assert s1.od[:, 12:18, 12:18].mean() == pytest.approx(0.5, abs=0.01) and abs(s1.od[:, :5, :5].mean()) < 0.01
    with pytest.raises(XanestrackError, match="no scan 5"):
        read_stack(p, scan=5)
    q = tmp_path / "noflats.h5"
    with h5py.File(q, "w") as f:
        f["img_xanes"], f["X_eng"] = counts, e
    with pytest.raises(XanestrackError, match="flat"):
        ScanSource("scan_0000", 0, "hdf5-scan", str(q)).load()


def test_the_threaded_scheduler_keeps_one_scan_in_flight_on_two_cores():
    """Two scans at once gained nothing on two cores and took 1.7x the memory (bench_series.py)."""
    from xanestrack.parallel.series import scans_in_flight

    assert scans_in_flight(1) == scans_in_flight(2) == 1
    assert scans_in_flight(4) == scans_in_flight(16) == 2
    assert scans_in_flight(None) in (1, 2)


def test_a_refused_series_leaves_no_folder_behind(fxi_scans, tmp_path):
    """A series refused for its options or inputs wrote its manifest and marker first: the folder stayed, and a
    later series with other scans was refused there ("holds something other than this series")."""
    import tifffile
    from typer.testing import CliRunner

    from xanestrack.cli import app

    paths, _ = fxi_scans
    out = tmp_path / "series"
    runner = CliRunner()
    for args in (["--min-radius", "-3"], ["--detector", "foo"]):
        r = runner.invoke(app, ["-q", "series", str(paths[1]), "--scheduler", "sync", "--out", str(out), *args])
        assert r.exit_code == 2 and r.output.startswith("error: "), r.output
        assert not out.exists(), (args, list(out.iterdir()))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 32, 32), np.float32))
    r = runner.invoke(app, ["-q", "series", str(tmp_path / "stack.tif"), "--out", str(out)])
    assert r.exit_code == 2 and "takes no energies file" in r.output and not out.exists(), r.output
    out.mkdir()  # the user's empty folder is kept, emptied of what the refused series wrote
    r = runner.invoke(
        app, ["-q", "series", str(paths[1]), "--scheduler", "sync", "--out", str(out), "--min-radius", "-3"]
    )
    assert r.exit_code == 2 and out.is_dir() and not any(out.iterdir())
    r = runner.invoke(
        app,
        ["-q", "series", str(paths[1]), "--scheduler", "sync", "--out", str(out), "--detector", "classical"]
        + ["--segmenter", "classical"],
    )
    assert r.exit_code == 0, r.output


def test_scheduler_with_workers_or_nowhere_is_refused_naming_the_option(fxi_scans, tmp_path):
    """--scheduler was ignored without a word beside --workers, and an address without a scheduler was
    reported as an error of the input files."""
    from typer.testing import CliRunner

    from xanestrack.cli import app

    paths, _ = fxi_scans
    runner = CliRunner()
    for args, expect in (
        (["--scheduler", "sync", "--workers", "2"], "--workers 2 starts a local cluster and --scheduler sync"),
        (["--scheduler", "bogus"], "--scheduler bogus: no dask scheduler reached there"),
    ):
        out = tmp_path / args[1]
        r = runner.invoke(app, ["-q", "series", str(paths[1]), "--out", str(out), *args])
        assert r.exit_code == 2 and expect in r.output, r.output
        assert not out.exists()


def test_link_scans_keeps_a_particle_that_moved_on_its_own_between_scans():
    # `series --synthetic 2`: nine particles, each moving up to ~6 px on its own between the scans; a 17-px one
    # 8.3 px from where the voted offset put it was given a new id (gate 8 px)
    s0 = [
        (101.4, 344.2, 24.8), (133.0, 216.4, 38.5), (159.7, 97.7, 28.8), (193.6, 362.2, 8.8), (260.2, 156.9, 35.1),
        (283.6, 327.1, 30.2), (364.5, 102.3, 17.3), (371.4, 232.7, 20.7), (380.1, 373.3, 13.4),
    ]  # fmt: skip
    s1 = [
        (77.6, 321.8, 25.0), (115.4, 198.9, 38.4), (137.4, 74.4, 28.8), (170.8, 337.2, 8.9), (233.7, 137.8, 35.1),
        (259.9, 304.0, 30.4), (346.5, 85.2, 17.4), (352.2, 213.4, 20.5), (354.1, 353.0, 13.4),
    ]  # fmt: skip
    t = link_scans(_summary([s0, s1]), frame_shape=FRAME)
    assert t[t.scan == 1].particle.tolist() == t[t.scan == 0].particle.tolist()


def test_a_scan_given_twice_or_with_synthetic_is_refused_and_an_empty_series_keeps_its_columns(fxi_scans, tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.parallel.series import series_sources

    paths, _ = fxi_scans
    with pytest.raises(ValueError, match="given twice"):  # processed as two scans, linked at offset 0, before
        series_sources([paths[0], paths[1], paths[0]])
    r = CliRunner().invoke(app, ["-q", "series", str(paths[0]), "--synthetic", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not both" in r.output and not (tmp_path / "x").exists()  # inputs ignored before
    rng = np.random.default_rng(0)
    flat = np.full((10, 64, 64), 1000.0)
    counts = rng.poisson(flat).astype(np.uint16)  # nothing but the beam
    write_fxi(
        tmp_path / "blank.h5", counts, flats=flat, darks=np.zeros((64, 64)), energies_ev=np.linspace(8300, 8400, 10)
    )
    t = run_series(series_sources([tmp_path / "blank.h5"]), tmp_path / "s", scheduler="sync", **CLASSICAL)
    assert len(t) == 0 and list(t.columns) == list(pd.read_csv(tmp_path / "s" / "series.csv").columns)
    assert t.columns[0] == "particle" and "link_method" in t.columns  # particle last, linking columns missing before


def test_a_scan_that_cannot_be_read_is_named_and_the_others_are_processed(fxi_scans, tmp_path):
    """One scan without flat-field images stopped the whole series: no series.csv, no report (a series probe)."""
    import h5py
    from typer.testing import CliRunner

    from xanestrack.cli import app

    paths, _ = fxi_scans
    with h5py.File(paths[1]) as f, h5py.File(tmp_path / "noflats.h5", "w") as g:
        g["img_xanes"] = f["img_xanes"][()]
        g["X_eng"] = f["X_eng"][()]
    out = tmp_path / "s"
    args = ["-q", "series", str(paths[0]), str(tmp_path / "noflats.h5"), str(paths[1]), "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--detector", "classical", "--segmenter", "classical", "--scheduler", "sync"])
    assert r.exit_code == 2 and "scan noflats not processed" in r.output, r.output
    t = pd.read_csv(out / "series.csv")
    assert set(t.scan_name) == {"a", "b"}
    assert "Scan noflats was not processed" in (out / "series_report.html").read_text()


def test_a_series_interrupted_while_a_scan_runs_can_be_resumed(tmp_path, monkeypatch):
    """Ctrl-C within seconds of a new series took its manifest away while a scan in flight still finished:
    the rerun was refused ("holds something other than this series")."""
    from xanestrack.parallel import series as ser

    src = synthetic_sources(2, seed=3, **KW)
    orig = ser.process_scan

    done = []

    def interrupted(source, *a, **k):  # Ctrl-C during the second scan, whichever runs second
        if done:
            raise KeyboardInterrupt
        done.append(source.name)
        return orig(source, *a, **k)

    monkeypatch.setattr(ser, "process_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_series(src, tmp_path / "s", scheduler="sync", **CLASSICAL)
    # the manifest and the scan done stay (they were taken away, and a scan still in flight then wrote a folder
    # the rerun refused)
    assert (tmp_path / "s" / "series.json").is_file()
    assert (tmp_path / "s" / "scans" / done[0] / "summary.json").is_file()
    monkeypatch.setattr(ser, "process_scan", orig)
    t = run_series(src, tmp_path / "s", scheduler="sync", **CLASSICAL)
    assert t["scan"].nunique() == 2


def test_a_scan_whose_particles_all_moved_alike_in_energy_or_another_grid_is_said():
    # a scan's axis 0.5-1 eV off read as every particle oxidised alike (fraction 0.46 -> 0.85 at +1 eV), unsaid;
    # a scan of 20 energies among scans of 40 mixed the grids' bias into the trend, said only in that scan's notes
    from xanestrack.series import series_notes

    rows = []
    for scan, shift, n in ((0, 0.0, 40), (1, 0.5, 40), (2, 0.0, 20)):
        for pid, e in enumerate((8340.6, 8340.7, 8340.2, 8340.3)):
            rows.append(dict(particle=pid, scan=scan, scan_name=f"s{scan}", mean_e50=e + shift, n_frames=n))
    notes = series_notes(pd.DataFrame(rows))
    assert notes[0].startswith("the scans are on different energy grids (energies: 20 (s2); 40 (s0, s1))")
    assert notes[1].startswith("scan s1: the mean edge energy of its 4 particles lies +0.50 eV off their trend")
    assert len(notes) == 2  # s2, back on the others' trend, is not named (it was, as moved by -0.50 eV)
    # chemistry that moves the particles differently is not an axis
    t = pd.DataFrame(rows)
    t.loc[t.scan == 1, "mean_e50"] += np.array([0.0, 0.2, 0.4, 0.1])
    assert not any(n.startswith("scan s1") for n in series_notes(t[t.scan < 2]))


def test_a_copy_of_a_scan_under_another_name_is_said(tmp_path, caplog):
    # processed as a second scan (linked at offset 0, every particle's trend flat) without a word
    import shutil

    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.parallel.series import series_sources

    rng = np.random.default_rng(0)
    flat = np.full((10, 64, 64), 1000.0)
    write_fxi(
        tmp_path / "a.h5",
        rng.poisson(flat).astype(np.uint16),
        flats=flat,
        darks=np.zeros((64, 64)),
        energies_ev=np.linspace(8300, 8400, 10),
    )
    shutil.copy(tmp_path / "a.h5", tmp_path / "a_copy.h5")
    with caplog.at_level("WARNING"):
        run_series(
            series_sources([tmp_path / "a.h5", tmp_path / "a_copy.h5"]), tmp_path / "s", scheduler="sync", **CLASSICAL
        )
    assert any("holds the same data as scan" in r.getMessage() for r in caplog.records)


def test_a_series_interrupted_on_the_command_line_says_how_to_resume(tmp_path, monkeypatch):
    # it ended with status 130 and not a word
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.parallel import series as ser

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ser, "process_scan", interrupted)
    r = CliRunner().invoke(app, ["series", "--synthetic", "2", "--out", str(tmp_path / "s"), "--scheduler", "sync"])
    assert r.exit_code == 130 and "run the same command again to resume" in r.output


def test_a_particle_missing_from_up_to_max_gap_scans_keeps_its_id():
    """The docstring promises a particle missing from up to 3 scans keeps its id; one absent from 3 was given a new
    one (the linker counts the steps since it was seen: 4)."""
    import pandas as pd

    from xanestrack.series import link_scans

    for missing, kept in ((1, True), (3, True), (4, False)):
        rows = []
        n = missing + 2
        for s in range(n):
            pts = [(50, 50, 20), (200, 60, 15), (120, 300, 25)] + ([(300, 250, 18)] if s in (0, n - 1) else [])
            for j, (y, x, r) in enumerate(pts):
                rows.append(dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=y + 60 * s, x0=x, radius=r))
        t = link_scans(pd.DataFrame(rows), frame_shape=(800, 400))
        assert (t[t.x0 == 250].particle.nunique() == 1) == kept, missing


def test_a_synthetic_series_of_a_preset_that_cannot_be_drawn_is_refused_before_writing(tmp_path):
    """`series --synthetic 2 --preset hard` failed every scan ("cannot place 10 particles"), printed "done 0 particles
    through 0 of 2 scans" and left an empty series.csv and report."""
    from typer.testing import CliRunner

    from xanestrack.cli import app

    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["series", "--synthetic", "2", "--preset", "hard", "--out", str(out)])
    assert r.exit_code == 2 and "cannot place" in r.output and "use --preset default or rigid" in r.output
    assert not out.exists()


def test_scans_far_apart_or_whose_particles_moved_on_their_own_are_linked_by_the_images_offset():
    """The images measured an offset of 155 px exactly, but the particles looked for one within 150 px only: every id
    was reset ('prior unconfirmed'). Particles each moving 4-5 px on their own between scans did not confirm a right
    offset within the vote's 4 px: every id reset too. Two unrelated fields still link nothing."""
    import pandas as pd

    from xanestrack.series import link_scans

    rng = np.random.default_rng(2)
    base = np.c_[rng.uniform(40, 460, 6), rng.uniform(40, 300, 6)]  # in view of a 500 x 500 frame after 155 px
    radii = rng.uniform(14, 30, 6)

    def table(offsets, own):
        rows = []
        for s, off in enumerate(offsets):
            p = base + off + own * s * np.c_[np.cos(np.arange(6) * 2.1), np.sin(np.arange(6) * 2.1)]
            for j in range(6):
                rows.append(dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=p[j, 0], x0=p[j, 1], radius=radii[j]))
        return pd.DataFrame(rows)

    for offsets, own in (([(0, 0), (0, 155)], 0.0), ([(0, 0), (40, 30)], 4.5)):
        d = np.subtract(offsets[1], offsets[0]) + 0.0
        t = link_scans(table(offsets, own), prior=lambda a, b, d=d: d, frame_shape=(500, 500))
        assert t[t.scan == 1].link_method.iloc[0] not in ("ambiguous", "prior contradicted", "prior unconfirmed")
        assert (
            t[t.scan == 0].sort_values("scan_particle").particle.to_numpy()
            == t[t.scan == 1].sort_values("scan_particle").particle.to_numpy()
        ).all()
    # an unrelated second field with the images' chance offset: nothing linked
    other = pd.DataFrame(
        [
            dict(scan=1, scan_name="s1", scan_particle=j, y0=y, x0=x, radius=r)
            for j, (y, x, r) in enumerate(zip(*rng.uniform(40, 460, (2, 6)), rng.uniform(14, 30, 6), strict=True))
        ]
    )
    t = link_scans(
        pd.concat([table([(0, 0)], 0.0), other]), prior=lambda a, b: np.array([12.0, -7.0]), frame_shape=(1000, 1000)
    )
    assert not set(t[t.scan == 0].particle) & set(t[t.scan == 1].particle)
