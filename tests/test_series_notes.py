"""The series notes: a scan off by one energy offset, energy grids, the order of the scans, a scan given twice,
scans of another pixel size (the probe's findings on operando series of 5 scans)."""

import json

import numpy as np
import pandas as pd
import pytest

from xanestrack.series import ScanSource, link_scans, scan_image_prior, series_notes

#: mean E50 - 8340 eV of the probe's correct series (outA: 13 particles x scans t0..t4, each particle charging at a
#: rate of its own, NaN where it is out of the field): consecutive scans differ by 0.17 eV between particles
PROBE_E50 = np.array(
    [
        (0.23, np.nan, np.nan, np.nan, np.nan),
        (0.64, np.nan, 1.02, np.nan, 1.38),
        (0.02, 0.16, 0.21, np.nan, 0.40),
        (0.18, 0.29, 0.38, 0.45, 0.60),
        (0.34, 0.41, 0.51, np.nan, 0.71),
        (1.30, np.nan, np.nan, np.nan, np.nan),
        (0.48, 0.61, 0.76, 0.91, 1.04),
        (0.05, 0.33, np.nan, np.nan, 1.11),
        (0.44, 0.45, 0.42, 0.41, 0.43),
        (np.nan, 0.69, 0.79, 0.91, 1.00),
        (np.nan, np.nan, 1.28, np.nan, np.nan),
        (np.nan, np.nan, 1.77, 1.72, 1.79),
        (np.nan, np.nan, 0.68, 0.88, np.nan),
    ]
)


def _table(e50, n_frames=40):
    rows = [
        dict(particle=j, scan=k, scan_name=f"t{k}", mean_e50=8340.0 + v, n_frames=n_frames)
        for (j, k), v in np.ndenumerate(np.asarray(e50, float))
        if np.isfinite(v)
    ]
    return pd.DataFrame(rows)


def _offset_notes(table):
    return [n for n in series_notes(table) if "off their trend" in n or "off the trend" in n]


def test_a_scan_off_by_one_common_offset_is_named_alone_where_the_chemistry_moves():
    # the probe: t2's axis 0.5 / 1 eV off gave every particle's E50 that much more, unsaid (consecutive scans'
    # changes spread 0.17 eV between particles, over the old rule's 0.1); on a series whose chemistry does not move
    # the old rule named t3 as well, whose axis was right
    assert _offset_notes(_table(PROBE_E50)) == []  # the correct series: nothing
    for shift in (0.5, 1.0, -0.7):
        e50 = PROBE_E50.copy()
        e50[:, 2] += shift
        (note,) = _offset_notes(_table(e50))
        assert note.startswith(f"scan t2: the mean edge energy of its 8 particles lies {shift:+.2f} eV off their trend")
        assert "--known-edge" in note
    flat = np.nanmean(PROBE_E50, axis=1, keepdims=True) + 0 * PROBE_E50  # no chemistry, the same particles seen
    flat += np.random.default_rng(1).normal(0, 0.02, flat.shape)
    flat[:, 2] += 0.5
    from xanestrack.series import energy_offset_scans

    found = energy_offset_scans(_table(flat))
    assert [f["scan"] for f in found] == [2] and abs(found[0]["offset_ev"] - 0.5) < 0.05  # not t3


@pytest.mark.parametrize("scan", [0, 4])
def test_the_first_and_last_scans_are_judged_on_the_trend_extrapolated(scan):
    e50 = PROBE_E50.copy()
    e50[:, scan] += 0.6
    (note,) = _offset_notes(_table(e50))
    assert note.startswith(f"scan t{scan}: the mean edge energy of its")
    assert ("the first scan: extrapolated" if scan == 0 else "the last scan: extrapolated") in note


def test_chemistry_of_its_own_in_each_particle_is_not_an_offset():
    # sigmoids of their own (onsets, widths, amplitudes), 0.03 eV of noise, a quarter of the particles missing
    from xanestrack.series import energy_offset_scans

    rng = np.random.default_rng(5)
    for _ in range(40):
        n_s, n_p = int(rng.integers(4, 9)), int(rng.integers(5, 15))
        k = np.arange(n_s)
        amp, c, w = rng.uniform(0.3, 1.5, n_p), rng.uniform(0, n_s - 1, n_p), rng.uniform(0.2, 2.5, n_p)
        e50 = amp[:, None] / (1 + np.exp(-(k - c[:, None]) / w[:, None])) + rng.normal(0, 0.03, (n_p, n_s))
        e50[rng.random(e50.shape) < 0.25] = np.nan
        assert energy_offset_scans(_table(e50)) == []


def test_in_three_scans_the_middle_one_is_named_and_the_others_said_as_as_likely():
    # each particle's trend is a line through the other two scans: s1 off by +0.5 eV is s0 or s2 off by -1 eV;
    # the scan after the one off was named as off too
    rows = [
        dict(particle=j, scan=k, scan_name=f"s{k}", mean_e50=e + (0.5 if k == 1 else 0.0), n_frames=40)
        for k in range(3)
        for j, e in enumerate((8340.6, 8340.7, 8340.2, 8340.3))
    ]
    (note,) = _offset_notes(pd.DataFrame(rows))
    assert note.startswith("scan s1: the mean edge energy of its 4 particles lies +0.50 eV off their trend")
    assert "(or scan s0 off by -1.00 eV, or scan s2 off by -1.00 eV: too few scans to tell which)" in note


def test_two_scans_keep_the_rule_of_all_particles_moved_alike():
    e50 = PROBE_E50[:, :2].copy()
    e50[:, 1] = e50[:, 0] + 0.5
    (note,) = [n for n in series_notes(_table(e50)) if "moved by" in n]
    assert "moved by +0.50 eV" in note and "cannot tell which" in note
    e50[:, 1] += np.linspace(0, 0.4, len(e50))  # chemistry: each particle its own
    assert not any("moved by" in n for n in series_notes(_table(e50)))


def _grid(shift=0.0, n=40):
    fine = np.arange(8320.0, 8360.0, 1.82)
    e = np.concatenate([np.linspace(8200, 8300, 6), fine, np.linspace(8380, 8680, 9)])[:n]
    return (e + shift).tolist()


def test_scans_on_grids_moved_or_of_other_energies_are_named_by_their_energies():
    # the grids were compared by their number of energies: a scan whose 40 energies all lay 2 eV above the
    # others' had no note
    t = _table(PROBE_E50)
    t.attrs["energy_grids"] = {f"t{k}": _grid(2.0 if k == 2 else 0.0) for k in range(5)}
    grid = [n for n in series_notes(t) if n.startswith("the scans are on different energy grids")]
    assert len(grid) == 1 and "t0, t1, t3, t4 on " in grid[0] and "t2 on that grid moved by +2.00 eV" in grid[0]
    # a readback differing by a few hundredths of an eV is one grid; a grid of other energies is named
    jitter = np.random.default_rng(0).normal(0, 0.03, 5 * len(_grid())).reshape(5, -1)
    t.attrs["energy_grids"] = {f"t{k}": (np.array(_grid()) + jitter[k]).tolist() for k in range(5)}
    assert not any("energy grids" in n for n in series_notes(t))
    t.attrs["energy_grids"]["t3"] = _grid()[::2]
    (grid,) = [n for n in series_notes(t) if "energy grids" in n]
    assert "t3 " in grid and "moved" not in grid
    # how large the grids' bias can be: 0.1-0.2 eV alone was said, where a probe's 20 energies among 40 read 0.16-0.33
    assert "0.16-0.33 eV at 40" in grid
    # a table read back from series.csv (no energies): the number of energies, as before
    t2 = _table(PROBE_E50)
    t2.loc[t2.scan == 4, "n_frames"] = 20
    assert any(n.startswith("the scans are on different energy grids (energies: 20 (t4)") for n in series_notes(t2))


def _sources(*names):
    return [ScanSource(n.rsplit(".", 1)[0], i, "input", f"/data/{n}") for i, n in enumerate(names)]


def test_scans_given_out_of_the_order_of_the_numbers_in_their_names_are_said():
    # scan_10 before scan_2, as a shell sorts them: the trend scrambled without a word
    from xanestrack.series import order_note

    note = order_note(_sources("scan_10.h5", "scan_2.h5", "scan_3.h5"))
    assert "scan_10, scan_2, scan_3 (by number: scan_2, scan_3, scan_10)" in note
    assert order_note(_sources("scan_2.h5", "scan_3.h5", "scan_10.h5")) is None
    assert order_note(_sources("cell1_scan2.h5", "cell1_scan10.h5", "cell2_scan1.h5")) is None  # tuples of numbers
    assert order_note(_sources("pristine.h5", "charge_1.h5", "charge_2.h5")) is None  # compared among their kind
    assert order_note(_sources("pristine.h5", "charge_1.h5", "charge_3.h5", "charge_2.h5")) is not None
    assert order_note([ScanSource("scan_0001", 1, "hdf5-scan", "/data/s.h5")]) is None
    # decimals as such (4.05 < 4.1: they were compared as 4, 5 and 4, 1, and the order given said to be wrong)
    assert order_note(_sources("NCA_4.05V.h5", "NCA_4.1V.h5", "NCA_4.15V.h5", "NCA_4.2V.h5")) is None
    note = order_note(_sources("NCA_4.1V.h5", "NCA_4.05V.h5", "NCA_4.2V.h5"))
    assert "(by number: NCA_4.05V, NCA_4.1V, NCA_4.2V)" in note
    # falling throughout is meant (a discharge named by its voltages), unless in the order a shell lists them
    assert order_note(_sources("cell_4.2V.h5", "cell_4.0V.h5", "cell_3.8V.h5")) is None
    # the names as given: a symbolic link by its own name, not its target's ("stack" for every scan)
    links = [ScanSource(n, i, "input", "/data/x/stack.h5") for i, n in enumerate(("s_10", "s_2", "s_3"))]
    assert order_note(links) is not None


def test_a_copy_and_the_order_reach_series_json_and_the_report(tmp_path):
    # a copy of a scan was said in one console line only; the order nowhere
    import shutil

    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.parallel.series import run_series, series_sources, write_series_report

    rng = np.random.default_rng(0)
    flat = np.full((10, 64, 64), 1000.0)
    energies = np.linspace(8300, 8400, 10)
    write_fxi(
        tmp_path / "scan_10.h5",
        rng.poisson(flat).astype(np.uint16),
        flats=flat,
        darks=np.zeros((64, 64)),
        energies_ev=energies,
    )
    shutil.copy(tmp_path / "scan_10.h5", tmp_path / "scan_2.h5")
    out = tmp_path / "s"
    table = run_series(
        series_sources([tmp_path / "scan_10.h5", tmp_path / "scan_2.h5"]),
        out,
        scheduler="sync",
        detector="classical",
        segmenter="classical",
    )
    notes = json.loads((out / "series.json").read_text())["notes"]
    assert any(n.startswith("the scans were not given in the order of the numbers") for n in notes)
    assert any(n.startswith("scan scan_2 holds the same data as scan scan_10") for n in notes)
    assert notes == series_notes(table)
    scans = json.loads((out / "series.json").read_text())["scans"]
    assert [s["n_energies"] for s in scans] == [10, 10] and scans[0]["energy_range_ev"] == [8300.0, 8400.0]
    summary = json.loads((out / "scans" / "scan_2" / "summary.json").read_text())
    assert summary["energies_ev"] == pytest.approx(energies)
    page = write_series_report(table, out).read_text()
    assert "holds the same data as scan scan_10" in page and "not given in the order of the numbers" in page


def _field(n=9, seed=2):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(60, 400, n), rng.uniform(60, 400, n), rng.uniform(10, 25, n)])


def test_a_scan_of_another_pixel_size_is_linked_in_common_pixels():
    # the probe: one scan binned 2x (0.1 um against 0.05 um, as the files say) split every identity from it on
    # (29 ids for 13 particles), said as an offset that could not be told
    from xanestrack.series import pixel_note, pixel_scales

    f = _field()
    rows = []
    for scan, (dy, dx), b in ((0, (0, 0), 1), (1, (30, -40), 2), (2, (50, -10), 1)):
        for j, (y, x, r) in enumerate(f):
            y, x = y + dy, x + dx
            rows.append(
                dict(
                    scan=scan,
                    scan_name=f"t{scan}",
                    scan_particle=j,
                    y0=(y - (b - 1) / 2) / b,
                    x0=(x - (b - 1) / 2) / b,
                    radius=r / b,
                )
            )
    summary = pd.DataFrame(rows)
    common, scale = pixel_scales({0: 0.05, 1: 0.1, 2: 0.05})
    assert common == 0.05 and scale == {1: 2.0}
    linked = link_scans(summary, frame_shape=(460, 460), scale=scale)
    assert linked["particle"].nunique() == len(f)
    one = linked[linked.scan == 1].iloc[0]
    assert (one.common_dy, one.common_dx) == pytest.approx((30, -40), abs=0.5)  # in common pixels
    assert linked.loc[linked.scan == 1, "y0"].max() < 240  # series.csv keeps the scan's own pixels
    assert link_scans(summary, frame_shape=(460, 460))["particle"].nunique() > len(f)  # unscaled: split
    note = pixel_note({0: 0.05, 1: 0.1, 2: 0.05, 3: None}, {1: "t1", 3: "t3"})
    assert note.startswith("the scans are not all of one pixel size (t1 0.1 um; the others 0.05 um")
    assert "t3 give no pixel size" in note
    assert pixel_scales({0: 0.05, 1: 0.0502, 2: None}) == (0.05, {})


def test_the_image_offset_between_scans_of_other_pixel_sizes(tmp_path):
    # a binned scan's frame is of another shape: no image offset was measured for it
    from scipy import ndimage

    from xanestrack.register import bin_frames

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.normal(size=(400, 400)), 2).astype(np.float32)
    a, b = field[40:296, 40:296], bin_frames(field[70:326, 20:276], 2)  # b: 30 px down, 20 left, binned 2x
    for name, img in (("t0", a), ("t1", b)):
        (tmp_path / "scans" / name).mkdir(parents=True)
        np.save(tmp_path / "scans" / name / "frame0_binned.npy", img)
        (tmp_path / "scans" / name / "summary.json").write_text(json.dumps(dict(reference_binning=1)))
    names = {0: "t0", 1: "t1"}
    assert scan_image_prior(tmp_path, names)(0, 1) is None
    off = scan_image_prior(tmp_path, names, scale={1: 2.0})(0, 1)
    assert off == pytest.approx((-30, 20), abs=2.1)  # in common pixels (the binned grid's: whole steps of 2)


def test_a_readback_jitter_of_a_few_hundredths_of_an_ev_is_one_grid():
    # each energy within a quarter of the finest step took a jitter of sd 0.03 eV on 0.5-eV steps for other grids
    # (42 of 50 series of 4 scans noted); a grid moved by half a step is still named
    from xanestrack.series import _grid_note

    rng = np.random.default_rng(0)
    e = np.r_[np.arange(8250, 8330, 5.0), np.arange(8330, 8360, 0.5), np.arange(8360, 8450, 5.0)]
    assert all(_grid_note({f"s{i}": e + rng.normal(0, 0.03, e.size) for i in range(4)}, str) is None for _ in range(20))
    assert "s3 on that grid moved by +0.25 eV" in _grid_note({**{f"s{i}": e for i in range(3)}, "s3": e + 0.25}, str)
