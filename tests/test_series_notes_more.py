"""More series notes (the probe of operando series, findings 2, 4, 5): a scan on another energy grid anchoring the
offset judgement of the last scan, scans whose files give no pixel size beside one that does, a scan that fails,
the report's wording for scans of too few energies."""

import logging

import numpy as np
import pandas as pd

from xanestrack.series import energy_offset_scans, pixel_note, series_notes

#: energies (eV) of the probe's scans of 40 energies; its scan of every 2nd energy takes each other one
ENERGIES = np.linspace(8300.0, 8400.0, 40)


def _offset_table(offsets):
    """6 particles through 5 scans, each on a linear trend of its own (0-0.15 eV a scan, noise 0.02 eV), every
    particle of scan ``s`` moved by ``offsets[s]`` (eV): the probe's offline repro."""
    rng = np.random.default_rng(0)
    rows = []
    for j in range(6):
        base, rate = 8340.3 + 0.2 * j, rng.uniform(0.0, 0.15)
        for s in range(5):
            e = base + rate * s + rng.normal(0, 0.02) + offsets.get(s, 0.0)
            rows.append(dict(particle=j, scan=s, scan_name=f"s{s}", mean_e50=e, n_frames=40))
    return pd.DataFrame(rows)


def _grids(coarse=(3,), moved=None):
    return {s: ENERGIES[::2] if s in coarse else ENERGIES + (moved or {}).get(s, 0.0) for s in range(5)}


def test_a_scan_on_another_grid_does_not_anchor_the_last_scans_judgement():
    # the probe: s2's axis +1.00 eV off, s3 every 2nd energy (its E50 +0.2 eV, the grid's bias); the last scan s4,
    # correct, was named as -0.30 eV off (-0.35 eV through the pipeline), extrapolated through s2 and s3
    t = _offset_table({2: 1.0, 3: 0.2})
    # without the grids, the named scan alone anchors nothing: only s2 (s2 and s4, -0.30 eV, before)
    assert [f["scan"] for f in energy_offset_scans(t)] == [2]
    found = energy_offset_scans(t, grids=_grids(moved={2: 1.0}))
    assert [f["scan"] for f in found] == [2]
    assert abs(found[0]["offset_ev"] - 1.0) < 0.05
    # through series_notes, the grids by scan name as run_series leaves them
    t.attrs["energy_grids"] = {f"s{s}": e.tolist() for s, e in _grids(moved={2: 1.0}).items()}
    notes = [n for n in series_notes(t) if "off their trend" in n or "off the trend" in n]
    assert len(notes) == 1 and notes[0].startswith("scan s2: the mean edge energy of its 6 particles lies +1.00 eV")


def test_controls_the_last_scan_off_is_still_named_and_a_grid_bias_alone_names_none():
    # a last scan truly off, beside a scan of another grid: judged on the scans before that one, still named
    found = energy_offset_scans(_offset_table({4: 1.0, 3: 0.2}), grids=_grids())
    assert [f["scan"] for f in found] == [4] and abs(found[0]["offset_ev"] - 1.0) < 0.1
    # the grid's bias alone, and the correct series: nothing named
    assert energy_offset_scans(_offset_table({3: 0.2}), grids=_grids()) == []
    assert energy_offset_scans(_offset_table({}), grids=_grids(coarse=())) == []
    # a middle scan off on one grid throughout: named as before, with or without the grids
    for grids in (None, _grids(coarse=())):
        found = energy_offset_scans(_offset_table({2: 1.0}), grids=grids)
        assert [f["scan"] for f in found] == [2] and abs(found[0]["offset_ev"] - 1.0) < 0.05


def test_scans_without_a_pixel_size_beside_one_that_gives_it_are_said():
    # the probe: s2 binned 2x, its file 0.08 um, the four others none: all taken at 0.08 um, nothing said; 16 ids
    # for 10 particles
    sizes = {0: None, 1: None, 2: 0.08, 3: None, 4: None}
    names = {s: f"s{s}" for s in sizes}
    shapes = {s: (160, 160) if s == 2 else (320, 320) for s in sizes}
    assert pixel_note(sizes, names).startswith("s0, s1, s3, s4 give no pixel size")  # None before
    note = pixel_note(sizes, names, frame_shapes=shapes)
    assert note.startswith("s0, s1, s3, s4 give no pixel size in their files: taken at 0.08 um")
    assert "(s2)" in note and "their pixels are 0.04 um" in note and "ambiguous" in note
    # one scan without, frames of another region (not a multiple): said, no binning guessed
    note = pixel_note({0: 0.05, 1: 0.05, 2: None}, names, frame_shapes={0: (320, 320), 1: (320, 320), 2: (300, 340)})
    assert note.startswith("s2 gives no pixel size in its file: taken at 0.05 um") and "binning" not in note


def test_controls_one_pixel_size_throughout_or_none_at_all_is_not_said():
    assert pixel_note({0: 0.05, 1: 0.05, 2: 0.0502}, {}) is None
    assert pixel_note({0: None, 1: None}, {}, frame_shapes={0: (320, 320), 1: (160, 160)}) is None


def test_a_scan_that_fails_is_said_when_it_fails(caplog):
    import dask

    from xanestrack.parallel.series import _scans_done

    said = []
    tasks = [dask.delayed(lambda: [dict(scan=0)])(), dask.delayed(lambda: {"scan": "s2", "error": "truncated"})()]

    def progress(stage, done, total):
        said.append((stage, done, total, [r.getMessage() for r in caplog.records]))

    with caplog.at_level(logging.WARNING, logger="xanestrack.parallel.series"):
        with _scans_done(tasks, progress):
            dask.compute(*tasks, scheduler="sync")
    failed_line = [s for s in said if any("scan s2 failed" in m for m in s[3])]
    assert failed_line and "truncated" in failed_line[0][3][-1]
    assert len(said) == 2  # one progress call a scan, as before


def test_the_report_names_a_scan_of_too_few_energies_in_the_singular(tmp_path):
    from xanestrack.parallel.series import write_series_report

    rows = []
    for s, n in ((0, 40), (1, 1), (2, 40)):
        for j in range(3):
            rows.append(
                dict(
                    particle=j,
                    scan=s,
                    scan_name=f"s{s}",
                    n_frames=n,
                    mean_e50=8340.0 + 0.1 * s if n > 1 else np.nan,
                    y0=50.0 + 40 * j,
                    x0=60.0,
                    radius=10.0,
                    link_method="first" if s == 0 else "vote",
                    link_support=3,
                    common_dy=0.0,
                    common_dx=0.0,
                    offset_from_scan=s - 1,
                    scan_particle=j,
                    oxidised_fraction=0.5,
                    max_nonrigid_px=0.1,
                    flagged_frames=0,
                )
            )
    html = write_series_report(pd.DataFrame(rows), tmp_path).read_text()
    assert "Scan s1 (1 energy) has fewer than" in html
