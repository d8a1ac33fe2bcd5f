"""``--known-edge P=EV`` with particle P's true (densely measured) E50: the axis took the normalisation's bias of P's
chemistry on the scan's energies. On a 60-energy scene, calibrating on a pure NiO particle (true E50 8340.048 eV,
bias -0.18 eV there) shifted the axis +0.181 eV (truth 0): the NiO particles read 6 % LiNiO2 and lost ``at_bound``,
the LiNiO2 and core-shell particles' E50 +0.20-0.23 eV (6-20 sigma), and the run's note on the normalisation's bias
("NiO -0.17 eV, LiNiO2 +0.02 eV") no longer described the result. The bias at its chemistry is taken out now."""

from types import SimpleNamespace

import numpy as np
import pytest

from xanestrack import synth
from xanestrack.chemistry.normbias import BACKGROUND_AT_EDGE, _as_particles, normalisation_bias, particle_chemistry_bias
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.xanes import find_e0, normalize

GRID = synth.ni_energy_grid(60)


def _particle(pid, shares, offset_ev, side=30):
    """A particle of the shipped references mixed at ``shares``, as the pipeline leaves it after its first analysis
    on an axis read ``offset_ev`` high: its normalised mean spectrum, lines and E0 on the scan's energies, and its
    E50 (every pixel that of its mean spectrum on them, the normalisation's bias in it)."""
    refs = ni_references()
    grid = refs["NiO"].energies_ev
    spectrum = ReferenceSpectrum("mix", grid, sum(f * refs[k](grid) for k, f in shares.items()))
    e50, s, norm, e0 = _as_particles(
        GRID, spectrum, find_e0(grid, spectrum.mu), BACKGROUND_AT_EDGE, (-15.0, 20.0), GRID
    )
    assert s.size == GRID.size
    mu = spectrum(GRID) + BACKGROUND_AT_EDGE * (GRID / e0) ** -3
    nm = normalize(GRID, mu, e0_ev=e0)
    mask = np.zeros((side, side), bool)
    mask[3:-3, 3:-3] = True
    return SimpleNamespace(
        particle=pid,
        mask=mask,
        kept=mask,
        edge_maps={"e50": np.where(mask, e50 + offset_ev, np.nan)},
        e0_ev=e0 + offset_ev,
        mean_norm=np.asarray(norm, float),
        pre_edge=np.asarray(nm.pre_edge, float).ravel(),
        post_edge=np.asarray(nm.post_edge, float).ravel(),
        xanes_frames=np.ones(GRID.size, bool),
        notes=(),
        maps={},
        fractions=None,
    )


def _shift(pid, known, offset_ev):
    from xanestrack.cli import _known_edge_calibration

    particles = [
        _particle(0, {"NiO": 1.0}, offset_ev),
        _particle(1, {"LiNiO2": 1.0}, offset_ev),
    ]
    hook, record = _known_edge_calibration(pid, known)
    calibrated = hook(particles, GRID + offset_ev)
    return float(np.median(calibrated - (GRID + offset_ev))), record


def _half_step(name):
    from xanestrack.chemistry.calibration import half_step_energies

    return half_step_energies(ni_references())[name]


def test_known_edge_takes_the_normalisation_bias_of_its_chemistry_out():
    """Pure NiO on synth's 60-energy grid, its dense E50 given: the axis (exact) stays within 0.02 eV (+0.18 eV before,
    the NiO bias), and the record says what was taken out."""
    bias = normalisation_bias(GRID, ni_references())
    assert bias["NiO"] < -0.15  # the twist: the grid's bias of NiO
    shift, record = _shift(0, _half_step("NiO"), 0.0)
    assert abs(shift) < 0.02
    assert record["normalisation_bias_ev"] == pytest.approx(bias["NiO"], abs=0.02)
    assert record["bias_fractions"]["NiO"] > 0.98
    assert record["target_e50_ev"] == pytest.approx(_half_step("NiO") + record["normalisation_bias_ev"])


def test_known_edge_on_nio_recovers_an_axis_off_by_one_ev():
    """The axis read +1 eV high, calibrated on the NiO particle: -1.00 eV within 0.05 (-0.82 before)."""
    shift, record = _shift(0, _half_step("NiO"), 1.0)
    assert shift == pytest.approx(-1.0, abs=0.05), record


def test_known_edge_on_linio2_is_as_before():
    """The control: calibrated on the LiNiO2 particle (bias +0.03 eV), the exact axis stays within 0.035 eV (-0.031
    before, 0.000 now) and an axis read +1 eV high is recovered within 0.05 eV (-1.031 before, -1.000 now)."""
    shift, _ = _shift(1, _half_step("LiNiO2"), 0.0)
    assert abs(shift) < 0.035
    shift, _ = _shift(1, _half_step("LiNiO2"), 1.0)
    assert shift == pytest.approx(-1.0, abs=0.05)


def test_known_edge_on_a_nio_particle_in_the_pipeline():
    """End to end (a reduced synth scene, 60 energies, two NiO particles and a LiNiO2 one; the axis exact and read +1
    eV high), calibrated on a NiO particle with its true E50: every particle's mean E50 within 0.05 eV (or 3 sigma) of its
    truth plus its chemistry's bias as the run's note quotes it (before: the LiNiO2 one 0.18 eV beyond it), the other NiO
    particle's LiNiO2 fraction under 0.03 (0.06 before), and the run's calibration record and note say what was taken
    out."""
    from xanestrack.chemistry.runnotes import _known_edge_note
    from xanestrack.cli import _known_edge_calibration
    from xanestrack.evaluate import evaluate_result
    from xanestrack.pipeline import run_pipeline
    from xanestrack.result import particle_summary
    from xanestrack.stack import Stack

    s = synth.make_synthetic_stack(
        "default",
        seed=0,
        n_energies=60,
        shape=(200, 200),
        n_particles=3,
        radius_range=(12.0, 20.0),
        patterns=["phase_NiO", "phase_LiNiO2"],
    )
    truth = s.truth
    true = [float(np.nanmean(m)) for m in truth.edge_maps]
    bias = normalisation_bias(s.energies_ev, ni_references())  # what the run's note quotes
    plain = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    tab, _ = evaluate_result(plain, truth)
    pid = {int(r.particle): int(r.truth_particle) for _, r in tab.iterrows() if r.particle >= 0}
    nio = [p for p, j in pid.items() if truth.patterns[j] == "phase_NiO"]
    assert len(nio) == 2 and len(pid) == 3
    for offset in (0.0, 1.0):
        hook, record = _known_edge_calibration(nio[0], true[pid[nio[0]]])
        result = run_pipeline(Stack(s.optical_density(), s.energies_ev + offset), recalibrate=hook)
        assert record["shift_ev"] == pytest.approx(-offset, abs=0.05)
        summ = particle_summary(result).set_index("particle")
        for p, j in pid.items():
            chem = "NiO" if truth.patterns[j] == "phase_NiO" else "LiNiO2"
            near = max(
                0.05, 3 * summ.loc[p, "mean_e50_sigma_ev"]
            )  # the other NiO: -0.223 eV, sigma 0.029, uncalibrated
            assert summ.loc[p, "mean_e50_ev"] - true[j] == pytest.approx(bias[chem], abs=near), (offset, p, chem)
        assert summ.loc[nio[1], "oxidised_fraction"] < 0.03
        note = _known_edge_note(record, nio[0], true[pid[nio[0]]])
        assert f"reads {record['normalisation_bias_ev']:+.2f} eV" in note and "taken out" in note


def test_known_edge_without_references_takes_nothing_out_and_says_why():
    """Where the bias cannot be measured (no references describe the particle's spectrum, or none at all), the axis is
    set to the known E50 itself (as before) and the record and the run's note say why."""
    from xanestrack.chemistry.calibration import calibrate_from_particle
    from xanestrack.chemistry.runnotes import KNOWN_EDGE_NOTE, _known_edge_note

    p = _particle(0, {"NiO": 1.0}, 0.0)
    cal = calibrate_from_particle(
        GRID, 8339.9, known_e50_ev=8340.0, mean_norm=p.mean_norm, e0_ev=p.e0_ev, references={}
    )
    rec = cal.record()
    assert cal.shift_ev == pytest.approx(0.1) and np.isnan(rec["normalisation_bias_ev"])
    assert "no reference spectrum" in rec["bias_not_measured"]
    note = _known_edge_note(rec, 0, 8340.0)
    assert (
        note.startswith(KNOWN_EDGE_NOTE)
        and "no normalisation's bias taken out" in note
        and "--energy-reference" in note
    )
    # a spectrum the references do not describe (a step 2 eV wide, 6 eV above theirs): not its chemistry's bias
    other = np.clip((GRID - 8346.0) / 2.0 + 0.5, 0, 1)
    cb = particle_chemistry_bias(GRID, None, other, 8346.0, ni_references())
    assert np.isnan(cb.bias_ev) and "do not describe" in cb.why


def test_known_edge_on_a_scan_too_short_for_xanes_says_why(tmp_path):
    """Probe r52 "fuzz", F3: on a 5-energy scan the refusal said "its note says why" (a refused run writes no notes)
    and pointed at particles.csv, a file no run writes; now it says the scan is too short for a XANES and where a
    run without the option gives the particles' mean E50."""
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.synth import make_synthetic_stack
    from xanestrack.truth_io import write_synthetic

    s = make_synthetic_stack(
        "default", seed=3, n_energies=5, shape=(160, 160), n_particles=2, radius_range=(12.0, 16.0)
    )
    (tmp_path / "scan").mkdir()
    write_synthetic(s, tmp_path / "scan")
    r = CliRunner().invoke(
        app, ["run", str(tmp_path / "scan" / "stack.h5"), "--known-edge", "0=8341", "--out", str(tmp_path / "o")]
    )
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    assert "the scan has 5 energies, fewer than the 8 a XANES needs" in text, text
    assert "figures/uncertainty.csv" in text and "particles.csv" not in text.replace("uncertainty.csv", "")
