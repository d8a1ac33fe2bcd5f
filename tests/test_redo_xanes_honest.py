"""``pipeline.redo_xanes`` does what ``run_pipeline`` would on the new axis or references, and says that it did.

One reduced scene for all (4 particles, 48 energies, 200 x 200, with a disc touching particle 0 so that its local
background leaves pixels out): the references are checked and normalised as ``run_pipeline`` does, the pixels left
out of a background ring are written to results.h5 (a redo from the folder is the redo in memory), the notes of the
earlier analysis are replaced, the new axis is checked, the uncalibrated-axis caveat stays on the run's own axis,
and run.json holds the energies used and what the redo changed.
"""

import json
import logging

import h5py
import numpy as np
import pytest

from xanestrack.chemistry.runnotes import ONE_REFERENCE, UNCALIBRATED_NOTE
from xanestrack.pipeline import REDONE_NOTE, redo_xanes, run_pipeline
from xanestrack.result import particle_summary
from xanestrack.results import read_results, write_results
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.stack import Stack
from xanestrack.xanes import MISFIT_NOTE


@pytest.fixture(scope="module")
def scene():
    """``(stack, result)``: the small synthetic scan with a disc of f 0.9 touching particle 0 (as
    test_touching_background builds it), run with the defaults."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default",
        seed=11,
        n_energies=48,
        shape=(200, 200),
        n_particles=4,
        radius_range=(10.0, 22.0),
        drift_range=(1.0, 3.0),
    )
    od, e = s.optical_density(), s.energies_ev
    tp = s.truth.positions
    p0 = tp[tp["particle"] == 0].sort_values("frame")[["y", "x"]].to_numpy()
    r0, r1 = float(s.truth.radii[0]), 22.0
    refs = ni_references()
    mu = 0.25 * (e / 8333.0) ** -3 + 0.1 * refs["NiO"](e) + 0.9 * refs["LiNiO2"](e)
    gy, gx = np.mgrid[0 : od.shape[1], 0 : od.shape[2]]
    disc = np.empty_like(od)
    for k in range(len(e)):
        cy, cx = p0[k] + [0.0, r0 + r1 - 3.0]
        disc[k] = 0.8 * np.sqrt(np.clip(1 - (np.hypot(gy - cy, gx - cx) / r1) ** 2, 0, None)) * mu[k]
    st = Stack((od + disc).astype(np.float32), e)
    return st, run_pipeline(st)


def _measured(refs):
    """The references as a measurement gives them: edge step 0.4, a pre-edge of 0.3 with a slope."""
    return {
        k: ReferenceSpectrum(k, v.energies_ev, 0.4 * v.mu + 0.3 + 2e-4 * (v.energies_ev - 8333.0))
        for k, v in refs.items()
    }


def _fractions(result):
    return particle_summary(result).set_index("particle")["oxidised_fraction"].to_numpy(float)


def test_references_given_are_normalised_and_checked(scene):
    """Measured NiO / LiNiO2 were fitted as given: 0.301 / 0.114 / 0.563 / 0.000 against 0.463 / 0.322 / 0.580 /
    0.120 (api probe, seed 5 at 256 px); one reference gave every fraction 1.0, a list an AttributeError."""
    st, r = scene
    refs = ni_references()
    redone = redo_xanes(r, energies_ev=r.energies_ev, references=_measured(refs))
    fresh = run_pipeline(st, references=_measured(refs))
    np.testing.assert_allclose(_fractions(redone), _fractions(fresh), atol=1e-9, equal_nan=True)
    assert sorted(n for n in redone.notes if not n.startswith(REDONE_NOTE)) == sorted(fresh.notes)
    said = [n for n in redone.notes if n.startswith("reference ") and "normalised as the particles'" in n]
    assert len(said) == 2
    # the reference notes are replaced, not kept, by the next redo (here with the shipped references)
    again = redo_xanes(redone, energies_ev=r.energies_ev)
    assert not any("normalised as the particles'" in n for n in again.notes)
    with pytest.raises(ValueError, match="one given") as exc:
        redo_xanes(r, energies_ev=r.energies_ev, references={"NiO": refs["NiO"]})
    assert str(exc.value) == ONE_REFERENCE.format(given="references: one given (NiO)")
    with pytest.raises(TypeError, match="references must map names"):
        redo_xanes(r, energies_ev=r.energies_ev, references=list(refs.values()))


def test_references_already_normalised_change_nothing(scene):
    """Control: the shipped references given by name fit as the run did, with no note on their normalisation."""
    _, r = scene
    redone = redo_xanes(r, energies_ev=r.energies_ev, references=ni_references())
    np.testing.assert_allclose(_fractions(redone), _fractions(r), atol=1e-9, equal_nan=True)
    assert not any("normalised as the particles'" in n for n in redone.notes)


def test_redo_from_the_folder_is_the_redo_in_memory(scene, tmp_path_factory):
    """``background_exclude`` was not written to results.h5: a redo on the same axis from the folder moved
    stress-crowd seed 1's mean E50 by up to 0.063 eV (a pixel's by 2.63 eV), nothing said."""
    st, r = scene
    assert any(p.background_exclude is not None and p.background_exclude.any() for p in r.particles)
    out = tmp_path_factory.mktemp("redo_folder")
    write_results(r, out, stack=st)
    back = read_results(out)
    for p, q in zip(r.particles, back.particles):
        if p.background_exclude is None:  # control: none comes near, none is read back
            assert q.background_exclude is None
        else:
            assert q.background_exclude.dtype == bool and np.array_equal(q.background_exclude, p.background_exclude)
    mem, folder = redo_xanes(r, energies_ev=r.energies_ev), redo_xanes(back, energies_ev=r.energies_ev)
    for p, q in zip(mem.particles, folder.particles):
        np.testing.assert_allclose(q.edge_maps["e50"], p.edge_maps["e50"], atol=1e-9, equal_nan=True)


def test_notes_of_the_earlier_analysis_are_replaced(scene):
    """Each particle kept its earlier analysis's notes ("the references ... do not describe this particle's
    spectra ... 17.5 x" after the axis was calibrated): a redo back onto the run's axis gives the run's notes."""
    _, r = scene
    off = redo_xanes(r, energies_ev=r.energies_ev - 6.0)
    assert any(MISFIT_NOTE in n for p in off.particles for n in p.notes)  # 6 eV off: the references misfit
    back = redo_xanes(off, energies_ev=r.energies_ev)
    for p, q in zip(back.particles, r.particles):
        assert sorted(p.notes) == sorted(q.notes), p.particle
    # control: a redo on the same axis keeps every note where it was (registration first)
    same = redo_xanes(r, energies_ev=r.energies_ev)
    assert [p.notes for p in same.particles] == [p.notes for p in r.particles]


@pytest.mark.parametrize(
    "axis, words",
    [
        (lambda e: e[::-1].copy(), "not increasing"),
        (lambda e: np.where(np.arange(len(e)) == 5, np.nan, e), "NaN"),
        (lambda e: np.r_[e[:10], e[9], e[11:]], "duplicate energy"),
        (lambda e: e[:-1], "energies"),
    ],
)
def test_the_new_axis_is_checked(scene, axis, words):
    """A decreasing axis, one with a NaN or a repeated energy was taken: every E50 NaN, a note on each particle."""
    _, r = scene
    with pytest.raises(ValueError, match=words) as exc:
        redo_xanes(r, energies_ev=axis(r.energies_ev))
    assert str(exc.value).startswith("redo_xanes: energies_ev") and "\n" not in str(exc.value)


def test_an_axis_off_the_references_edge_is_said(scene):
    """Moved 200 eV off the Ni edge: every fraction NaN without the note run_pipeline gives; (n, 1) is an axis."""
    _, r = scene
    off = redo_xanes(r, energies_ev=r.energies_ev + 200.0)
    assert sum(n.startswith("no linear-combination fit") for n in off.notes) == 1
    assert np.isnan(_fractions(off)).all()
    back = redo_xanes(off, energies_ev=r.energies_ev[:, None])  # as a Stack takes it; the edge crossed again
    assert not any(n.startswith("no linear-combination fit") for n in back.notes)
    np.testing.assert_allclose(_fractions(back), _fractions(r), atol=1e-9, equal_nan=True)


def test_the_uncalibrated_caveat_stays_on_the_runs_axis(scene):
    """The rule: an axis other than the run's is taken as calibrated (the caveat dropped); on the run's own axis
    (other references, or the same energies) the caveat stays, computed again. It was dropped either way."""
    _, r = scene
    assert sum(n.startswith(UNCALIBRATED_NOTE) for n in r.notes) == 1
    same = redo_xanes(r, energies_ev=r.energies_ev)
    assert [n for n in same.notes if n.startswith(UNCALIBRATED_NOTE)] == [
        n for n in r.notes if n.startswith(UNCALIBRATED_NOTE)
    ]
    given = redo_xanes(r, energies_ev=r.energies_ev, references=_measured(ni_references()))
    assert any(n.startswith(f"{UNCALIBRATED_NOTE}, with the references given") for n in given.notes)
    moved = redo_xanes(r, energies_ev=r.energies_ev + 0.5)  # control: a calibration
    assert not any(n.startswith(UNCALIBRATED_NOTE) for n in moved.notes)


def test_run_json_holds_the_energies_used_and_the_redo(scene, tmp_path_factory, caplog):
    """run.json gave the Stack's 8200.0 eV beside 8203.0 eV in results.h5 and tracks.csv, and nothing of the redo."""
    from xanestrack.report import _redone_rows

    st, r = scene
    redone = redo_xanes(r, energies_ev=r.energies_ev + 3.0)
    out = tmp_path_factory.mktemp("redo_report")
    with caplog.at_level(logging.WARNING, logger="xanestrack.results"):
        write_results(redone, out, stack=st)
    run = json.loads((out / "run.json").read_text())
    with h5py.File(out / "results.h5") as f:
        np.testing.assert_array_equal(run["energies_ev"], f["energies_ev"][()])
    np.testing.assert_array_equal(run["energies_ev"], st.energies_ev + 3.0)
    np.testing.assert_array_equal(run["input_energies_ev"], st.energies_ev)
    assert len(run["xanes_redone"]) == 1 and run["xanes_redone"][0].startswith(REDONE_NOTE)
    assert "moved by +3.00 eV" in run["xanes_redone"][0]
    rows = _redone_rows(read_results(out))
    assert len(rows) == 1 and rows[0][0] == "re-analysed" and "+3.00 eV" in rows[0][1]
    # the stack was given, without a pixel size: said so, not "pass stack="
    assert "the stack given has none" in caplog.text and "pass stack=" not in caplog.text


def test_run_json_of_a_run_is_as_before(scene, tmp_path_factory):
    """Control: a result as run: the Stack's energies, no redo recorded, no row in the report."""
    from xanestrack.report import _redone_rows

    st, r = scene
    out = tmp_path_factory.mktemp("run_report")
    write_results(r, out, stack=st)
    run = json.loads((out / "run.json").read_text())
    np.testing.assert_array_equal(run["energies_ev"], st.energies_ev)
    assert "xanes_redone" not in run and "input_energies_ev" not in run
    assert _redone_rows(r) == []
