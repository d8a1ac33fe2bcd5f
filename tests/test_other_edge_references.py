"""Scans over two absorption edges (the Co K and Ni K edges of NMC-like particles, 7650-8450 eV): a --known-edge
calibration on a particle whose E50 the run withholds, and references of the other edge than the particles'.

The scenes are those of the probe of other edges, at reduced size: synth's default scene with its energy grid and
its two end members swapped, a Co-like step being the Ni references 624 eV lower (no Co spectrum needed)."""

import numpy as np
import pytest

from conftest import CO_BELOW_NI_EV
from conftest import CO_NI_GRID as GRID
from xanestrack import synth
from xanestrack.spectra import ReferenceSpectrum, ni_references


def _refs(co_nio: float, co_linio2: float) -> dict:
    """NiO and LiNiO2 with a Co-like step ``co_*`` times the Ni step beneath (on a 0.25 eV grid, as gen.py)."""
    ni = ni_references()
    g = np.arange(7000.0, 9001.0, 0.25)
    co = ni["NiO"](g + CO_BELOW_NI_EV)
    return {
        "NiO": ReferenceSpectrum("NiO", g, co_nio * co + ni["NiO"](g)),
        "LiNiO2": ReferenceSpectrum("LiNiO2", g, co_linio2 * co + ni["LiNiO2"](g)),
    }


def _scene(monkeypatch, refs, *, patterns=None, n_particles=3, seed=5):
    """A reduced gen.py scene (160 x 160) on :data:`GRID` with ``refs`` as synth's end members."""
    from xanestrack.stack import Stack

    table = synth._e50_table()  # the Ni table, cached before the references are swapped (truth maps only)
    monkeypatch.setattr(synth, "_e50_table", lambda: table)
    monkeypatch.setattr(synth, "ni_energy_grid", lambda n=143: GRID.copy())
    monkeypatch.setattr(synth, "ni_references", lambda: refs)
    s = synth.make_synthetic_stack(
        "default",
        seed=seed,
        n_energies=len(GRID),
        shape=(160, 160),
        n_particles=n_particles,
        radius_range=(12.0, 22.0),
        **({"patterns": patterns} if patterns else {}),
    )
    monkeypatch.undo()
    return Stack(s.optical_density(), s.energies_ev)


def _co_references():
    """A Co-like pair (the shipped Ni pair 624 eV lower): an edge of another element inside the Co+Ni scan."""
    return _shifted(ni_references(), -CO_BELOW_NI_EV)


def _shifted(refs, by_ev):
    """``refs`` (the shipped pair, 8200-9000 eV) moved by ``by_ev`` eV and read from 1000 eV below their start to 1000
    eV past their end every 0.25 eV (flat past their ends, as they are read): they cover a scan over two edges."""
    g = np.arange(7200.0, 10000.0, 0.25) + by_ev
    return {name: ReferenceSpectrum(name, g, r(g - by_ev)) for name, r in refs.items()}


def test_known_edge_on_a_particle_measured_across_two_edges_is_refused(monkeypatch):
    """LCO-rich particles (Co step 2.5 times the Ni one) beside Ni-rich ones: the probe's --known-edge 0=7716.6 on an
    LCO-rich particle moved the axis -2.254 eV (truth 0), every Ni particle's E50 -2.2 eV and its LiNiO2 fraction
    from 1.00 to 0.08, with no note; run.json check_mean_e50_ev NaN. Refused now, naming why and what to do."""
    from xanestrack.cli import _known_edge_calibration
    from xanestrack.errors import XanestrackError
    from xanestrack.pipeline import run_pipeline

    stack = _scene(monkeypatch, _refs(2.5, 0.25), patterns=["phase_NiO", "phase_LiNiO2"])

    def on(pick, known_ev):
        def hook(particles, energies):
            pid = pick(particles, key=lambda p: p.e0_ev).particle
            seen["pid"] = pid
            return _known_edge_calibration(pid, known_ev)[0](particles, energies)

        seen = {}
        return hook, seen

    hook, _ = on(min, 7716.6)  # the Co-rich particle: E0 at the Co edge, normalised across the Ni step
    with pytest.raises(XanestrackError, match=r"crosses two absorption edges .*--energy-reference") as err:
        run_pipeline(stack, recalibrate=hook)
    assert "\n" not in str(err.value) and "name a particle with a mean E50" in str(err.value)
    # the control: the Ni-rich particle, whose E50 the run gives, calibrates (its own E50: no shift to speak of)
    hook, seen = on(max, 8341.76)
    result = run_pipeline(stack, recalibrate=hook)
    (p,) = [q for q in result.particles if q.particle == seen["pid"]]
    assert abs(np.nanmean(p.edge_maps["e50"]) - 8341.76) < 0.1
    assert np.nanmean(p.fractions[-1]) > 0.9  # pure LiNiO2


def test_references_of_another_edge_are_not_fitted_at_the_particles_edge(monkeypatch):
    """NMC-like particles (their edge at Ni, a Co step 0.25 beneath) fitted with Co references: every fraction 0.000
    (truth 0.13-0.66), no particle note, and a run note calling 620 eV an axis offset. No fractions now (NaN, not 0),
    a note on each particle and a run note naming both edges."""
    from xanestrack.chemistry.runnotes import UNCALIBRATED_NOTE
    from xanestrack.pipeline import run_pipeline
    from xanestrack.xanes import OTHER_EDGE_NOTE

    stack = _scene(monkeypatch, _refs(0.25, 0.25))
    result = run_pipeline(stack, references=_co_references())
    assert result.particles
    for p in result.particles:
        assert p.fractions is None or np.isnan(p.fractions).all()
        assert any(n.startswith(OTHER_EDGE_NOTE) for n in p.notes)
    (note,) = [n for n in result.notes if "another absorption edge than the particles'" in n]
    assert "NiO (edge at 77" in note and "(E0 83" in note and "not an axis offset" in note
    assert not any(n.startswith(UNCALIBRATED_NOTE) for n in result.notes)
    # the control: the same scan with the Ni references fits at its Ni edge
    result = run_pipeline(stack, references=ni_references())
    for p in result.particles:
        assert np.isfinite(p.fractions).any() and not any(n.startswith(OTHER_EDGE_NOTE) for n in p.notes)
    assert not any("another absorption edge than the particles'" in n for n in result.notes)


def test_the_default_scene_is_fitted_and_calibrated_as_before():
    """The control: the default synth scene (seed 1, reduced): the shipped references fitted on every particle with
    no note on another edge, and --known-edge on a particle with an E50 calibrates."""
    from xanestrack.cli import _known_edge_calibration
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.xanes import OTHER_EDGE_NOTE

    s = synth.make_synthetic_stack(
        "default", seed=1, n_energies=48, shape=(200, 200), n_particles=3, radius_range=(10.0, 22.0)
    )
    hook, record = _known_edge_calibration(0, 8341.0)
    result = run_pipeline(Stack(s.optical_density(), s.energies_ev), references=ni_references(), recalibrate=hook)
    assert abs(record["shift_ev"]) < 2.0
    assert not any("another absorption edge" in n for n in result.notes)
    for p in result.particles:
        assert not any(n.startswith(OTHER_EDGE_NOTE) for n in p.notes)
        assert p.fractions is not None and np.isfinite(p.fractions).any()


def test_references_at_the_particles_edge_are_fitted_offset_or_not():
    """Controls on one particle's window: the shipped references at Ni, Mn-like references on a Mn-like scan (both
    1793 eV lower), and references 15 eV off the particles (the largest axis offset the uncalibrated-axis note is
    built for) are all fitted; a pair 624 eV lower (the Co K edge's place) is not."""
    from xanestrack.xanes import OTHER_EDGE_NOTE, analyse_particle

    ni = ni_references()
    yy, xx = np.mgrid[:15, :15]
    mask = (yy - 7) ** 2 + (xx - 7) ** 2 <= 25
    rng = np.random.default_rng(1)

    def fit(e, refs, shift=0.0):
        mu = 0.4 * ni["NiO"](e + shift) + 0.6 * ni["LiNiO2"](e + shift)
        aligned = (mu[:, None, None] * mask + 0.002 * rng.normal(size=(e.size, *mask.shape))).astype(np.float32)
        xr = analyse_particle(aligned, mask, e, references=refs, subtract_background=False)
        return xr["fractions"], [n for n in xr["notes"] if n.startswith(OTHER_EDGE_NOTE)]

    e = synth.ni_energy_grid(60)
    fr, notes = fit(e, ni)
    assert fr is not None and abs(np.nanmean(fr[-1]) - 0.6) < 0.05 and not notes
    mn = _shifted(ni, -1793.0)
    fr, notes = fit(e - 1793.0, mn, shift=1793.0)
    assert fr is not None and abs(np.nanmean(fr[-1]) - 0.6) < 0.05 and not notes
    off = _shifted(ni, 15.0)
    fr, notes = fit(e, off)
    assert fr is not None and not notes  # fitted (badly): the axis-offset note's case, not another edge's
    co = _co_references()
    wide = np.r_[e - CO_BELOW_NI_EV, e]
    fr, notes = fit(wide, co)
    assert fr is None and len(notes) == 1 and "NiO at 77" in notes[0]


def test_a_step_on_one_energy_at_the_scans_end_is_no_second_edge():
    """A particle's mean spectrum whose last frames rise by 0.056, with one energy 10-60 eV above the rise (a stress
    scene's last frame at 600 counts: the run took the scan for two edges and withheld every particle's E50), has no
    second edge; the same step over the last three frames (two of them 10-60 eV above it) is one (a Co-rich particle's)."""
    from xanestrack.chemistry.runnotes import SECOND_EDGE_STEP, _second_edge

    e = np.r_[np.arange(8200.0, 8330.0, 5.0), np.arange(8330.0, 8360.0, 0.5), np.arange(8360.0, 8681.0, 10.0)]
    norm = np.where(e < 8345.0, 0.0, 1.0)
    last = norm.copy()
    last[-3:] += (0.02, 0.056, 0.056)  # the rise at 8661 eV: only the last energy lies 10-60 eV above it
    assert np.isnan(_second_edge(e, last, 8345.0))
    two = norm.copy()
    two[e > 8650.0] += 0.056  # 8660, 8670 and 8680 eV
    assert SECOND_EDGE_STEP < 0.056 and abs(_second_edge(e, two, 8345.0) - 8655.0) <= 10.0


@pytest.mark.parametrize("step_ev", [30.0, 50.0])
def test_a_second_step_on_a_coarse_grid_is_found_on_one_energy_a_side(step_ev):
    """On a grid stepping 25 eV or more one energy a side is all the scan holds (review r53: a Co K step sampled
    every 30-50 eV, or a Co-rich particle's Ni post-edge every 30 eV, was lost when two were asked for)."""
    from xanestrack.chemistry.runnotes import _second_edge

    e = np.r_[np.arange(7500.0, 8330.0, step_ev), np.arange(8330.0, 8360.0, 0.5), np.arange(8360.0, 8500.0, 10.0)]
    norm = np.where(e < 8345.0, 0.0, 1.0) + np.where(e < 7709.0, 0.0, 0.3) - 0.3  # a Co step 0.3 of the Ni one
    assert abs(_second_edge(e, norm, 8345.0) - 7709.0) <= step_ev
