"""Energy grids a beamline really uses: a hole across the edge, two edges in one scan, a repeated setpoint read back
a little differently, and few particles for a turn of the field."""

import logging

import numpy as np
import pandas as pd
from scipy import ndimage

from conftest import shared_data, still_particle
from xanestrack import xanes
from xanestrack.synth import edge_energy_of_fraction, ni_energy_grid, ni_references

REFS = ni_references()


def _mix(e, f=0.5):
    return (1 - f) * REFS["NiO"](e) + f * REFS["LiNiO2"](e)


def _controls():
    """Grids on which none of the new rules may fire: the default synth grid (143), synth --n-energies 60, a grid
    0.5 eV apart at the edge and 10 eV far from it, uniform 2-5 eV grids, and the FXI Ni list."""
    grids = {
        "default": ni_energy_grid(143),
        "60": ni_energy_grid(60),
        "nonuniform": np.r_[np.arange(8200, 8320, 10.0), np.arange(8320, 8370, 0.5), np.arange(8370, 8690, 10.0)],
        **{f"uniform {s:g}": np.arange(8200.0, 8680.0, s) for s in (2.0, 3.0, 5.0)},
    }
    fxi = np.ravel(np.loadtxt(shared_data("spectra", "pyxas", "Ni_eng_list_from_stetef_repo.txt")))
    grids["fxi"] = fxi * 1000 if fxi.max() < 100 else fxi
    return grids


def _particle(aligned, mask, e, pid):
    """A ParticleResult of :func:`xanestrack.xanes.analyse_particle` on a small window (for the run-note helpers)."""
    xr = xanes.analyse_particle(aligned, mask, e, references=REFS, subtract_background=False)
    return still_particle(xr, aligned, mask, e, radius=3.0, pid=pid)


def _window(e, mu, seed, noise=0.003, size=9):
    rng = np.random.default_rng(seed)
    aligned = (mu[:, None, None] + rng.normal(0, noise, (e.size, size, size))).astype(np.float32)
    return aligned, np.ones((size, size), bool)


def test_a_hole_in_the_grid_across_the_edge_is_a_gap_as_left_out_frames_are():
    """The 143-energy grid without its frames of 8336.5-8344.5 eV (absent from the file): every mean E50
    1.39-1.48 eV low with a sigma of 0.004-0.027 eV, where the same frames in the file without beam were declined."""
    full = ni_energy_grid(143)
    e = full[(full < 8336) | (full > 8345)]
    wide = xanes._too_wide(e, e)
    assert np.flatnonzero(wide).tolist() == [int(np.flatnonzero(e == 8335.5)[0])]
    v, fl = xanes.edge_energy(e, xanes.normalize(e, _mix(e)).norm, scan_energies_ev=e)
    assert np.isnan(v) and fl & xanes.FLAG_GAP
    aligned, mask = _window(e, _mix(e), 0)
    out = xanes.analyse_particle(aligned, mask, e, subtract_background=False)
    assert np.isnan(out["edge_maps"]["e50"]).all()
    (note,) = [n for n in out["notes"] if n.startswith("E50 not measured")]
    assert "absent from the scan (8335.5-8345.5 eV)" in note and "its mean E50 is not given" in note
    # controls: no hole, and the E50 of a mixture where it was (within the coarse note's range at 5 eV steps)
    for name, g in _controls().items():
        assert not xanes._too_wide(g, g).any(), name
        if g[0] < 8300:  # the FXI list starts 8.26 keV... every grid here reaches 150 eV below the edge
            nm = xanes.normalize(g, _mix(g))
            v, fl = xanes.edge_energy(g, nm.norm, e0_ev=nm.e0_ev, scan_energies_ev=g)
            assert fl == 0 and abs(float(v) - edge_energy_of_fraction(0.5)) < 0.5, (name, float(v))


def test_the_coarse_step_note_states_the_bias_measured_at_that_step():
    from types import SimpleNamespace

    from xanestrack.chemistry.runnotes import _coarse_edge_note

    parts = [SimpleNamespace(edge_maps={"e50": np.full((3, 3), v)}) for v in (8340.2, 8341.0)]
    n5 = _coarse_edge_note(parts, np.arange(8300, 8400, 5.0))
    n10 = _coarse_edge_note(parts, np.arange(8300, 8400, 10.0))
    assert "sampled 5.0 eV apart: -0.49 to +0.06 eV" in n5 and "-0.75" not in n5
    assert "sampled 10.0 eV apart: -2.24 to +0.13 eV" in n10
    assert "more than the -3.20" in _coarse_edge_note(parts, np.arange(8300, 8400, 20.0))
    assert _coarse_edge_note(parts, ni_energy_grid(143)) == "" and _coarse_edge_note(parts, ni_energy_grid(60)) == ""


def test_a_scan_over_two_edges_is_said_and_no_edge_is_compared_with_another():
    """A scan over a Co-like edge (the Ni references 624 eV lower) and the Ni K edge: particles whose Co step is 3 times
    their Ni step were measured at Co (their post-edge across the Ni edge), another at Ni, in one table, with
    "resolved" differences of 624.7 eV."""
    from xanestrack.chemistry.runnotes import _two_edges

    g = ni_energy_grid(60)
    e = np.r_[g - 624.0, g]

    def spectrum(co, f):
        return co * _mix(e + 624.0, f) + _mix(e, f)

    parts = [
        _particle(*_window(e, spectrum(co, f), j), e, j) for j, (co, f) in enumerate([(3, 0.2), (3, 0.6), (0.5, 0.4)])
    ]
    assert [round(p.e0_ev, -2) for p in parts] == [7700, 7700, 8300]
    out, note = _two_edges(parts, e)
    assert note.startswith(
        "the scan spans 2 absorption edges, near 7720 eV (E0 of particles 0, 1; a second step in "
        "the spectra of particle 2) and near 8344 eV (E0 of particle 2; a second step in the spectra "
        "of particles 0, 1)"
    )
    assert "particles 0, 1 have none" in note
    for p in out[:2]:
        assert all(np.isnan(m).all() for m in p.edge_maps.values())
        assert p.fractions is None or np.isnan(p.fractions).all()  # the LCF skipped: references at Ni
        assert np.isnan(p.maps["e50_sigma"]).all() and "across another absorption edge's step" in p.notes[-1]
    assert out[2] is parts[2] and abs(np.nanmean(out[2].edge_maps["e50"]) - edge_energy_of_fraction(0.4)) < 0.2
    # a Co step 0.15 of the Ni one: every particle at Ni, kept, and the second edge said
    parts = [_particle(*_window(e, spectrum(0.15, f), j), e, j) for j, f in enumerate((0.2, 0.6))]
    out, note = _two_edges(parts, e)
    assert "a second step in the spectra of particles 0, 1" in note and "have none" not in note
    assert all(a is b for a, b in zip(out, parts, strict=True))
    # controls: one edge (the default grid, the 60-energy grid)
    for grid in (ni_energy_grid(143), g):
        parts = [_particle(*_window(grid, _mix(grid, f), j), grid, j) for j, f in enumerate((0.1, 0.9))]
        assert _two_edges(parts, grid) == (parts, "")


def test_an_energy_a_fraction_of_an_ev_from_another_is_not_taken_for_the_edge(caplog):
    """The 60-energy grid with one more energy 0.02-0.3 eV above 8388.6 eV (a repeated setpoint read back a little
    differently): E0 found there, 8389.9 eV, and every particle's E50 and fractions lost ("too low an edge step")."""
    from xanestrack.stack import validate_energies

    g = ni_energy_grid(60)
    for dup in (0.02, 0.1, 0.3):
        e = np.sort(np.r_[g, g[45] + dup])
        for seed in range(5):
            rng = np.random.default_rng(seed)
            y = _mix(e) + rng.normal(0, 0.003, e.size)
            assert abs(xanes.find_e0(e, y) - xanes.find_e0(g, np.delete(y, 46))) < 1.0
        aligned, mask = _window(e, _mix(e), 1)
        out = xanes.analyse_particle(aligned, mask, e, subtract_background=False)
        assert np.isfinite(out["edge_maps"]["e50"]).all() and abs(out["e0_ev"] - 8343) < 3
        with caplog.at_level(logging.WARNING, logger="xanestrack.stack"):
            caplog.clear()
            validate_energies(e, e.size, source="x.txt")
        assert f"1 energies only {dup:.2f} eV from the one before" in caplog.text and "8388.61/" in caplog.text
        with caplog.at_level(logging.WARNING, logger="xanestrack.stack"):
            validate_energies(e, e.size, source="x.txt")  # the Stack validates the reader's energies again
        assert caplog.text.count("energies only") == 1  # said twice in every run before
    # controls: E0 unchanged (no repeats), nothing said
    for name, grid in _controls().items():
        y = _mix(grid)
        assert xanes._merge_repeats(grid, y)[0] is grid, name
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xanestrack.stack"):
            validate_energies(grid, grid.size)
        assert "energies only" not in caplog.text, name


def _walk_tracks(seed, n, turn_deg=0.0, frames=40):
    rng = np.random.default_rng(seed)
    base = rng.uniform(20, 236, (n, 2))
    w = ndimage.gaussian_filter1d(np.cumsum(rng.normal(size=(frames, n, 2)), 0), 4, axis=0)
    w *= 2.0 / np.abs(w).max()
    c = np.array([128.0, 128.0])
    rows = []
    for k in range(frames):
        th = np.radians(turn_deg) * k / (frames - 1)
        rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
        p = (base - c) @ rot.T + c + (w[k] if not turn_deg else 0.0)
        rows += [(j, k, *p[j]) for j in range(n)]
    return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])


def test_a_turn_of_the_field_is_not_said_of_three_particles_drifting_on_their_own():
    """Three particles drifting on their own (no turn) read as a turn explaining 95 % of their own motion, and the
    note said so (a default scene of 3 particles starting at 8300 eV: 81 %, -1.33 degrees)."""
    from xanestrack.motion import compute_motion, field_rotation
    from xanestrack.motion_notes import _field_motion_notes
    from xanestrack.pipeline import PipelineOptions

    e = np.linspace(8300, 8400, 40)
    c = np.array([128.0, 128.0])
    m = compute_motion(_walk_tracks(140, 3), centre=c, scale_axis=e)
    assert field_rotation(m)[1] == 0.0 and _field_motion_notes(m, e, PipelineOptions()) == []
    # a true turn of 1 degree seen on 4 particles (and 9: tests/test_motion.py) keeps its note
    m = compute_motion(_walk_tracks(3, 4, turn_deg=1.0), centre=c, scale_axis=e)
    assert field_rotation(m)[1] > 0.9
    (note,) = _field_motion_notes(m, e, PipelineOptions())
    assert "a turn of the whole field" in note
