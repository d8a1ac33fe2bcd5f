"""The reference fractions are fitted against the references normalised as the particle's spectra are.

A particle's spectra are normalised on the scan's energies (pre-edge line, post-edge line from E0 + 100 eV through
whatever post-edge energies the scan holds, catching the EXAFS wiggles where it happens to); the shipped references
are normalised densely by their provider. Fitted against them as given, the fractions carried a bias alike in every
pixel whose sign followed the energy grid: a particle of 10 % LiNiO2 read 0.076 on synth's 60-energy grid and 0.119
on its 143-energy grid (sigma 0.004-0.006), the probe's default scenes 21-34 % of pixels within 1 sigma, nothing
said. Now each reference is sampled on the particle's energies with its pre-edge absorbance under the step,
normalised at its E0 (:func:`xanestrack.xanes.references_on_scan`), and the fit's weights converted back by the
references' edge steps there. Controls: pure phases stay at the fit's bounds, E50 does not move, and references
that cannot be normalised so are fitted as given, with a note.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from xanestrack import pipeline, xanes
from xanestrack.chemistry.uncertainty import fraction_sigma
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.synth import ni_energy_grid
from xanestrack.synth_stress import stress_reference

SHAPE, RADIUS = (27, 27), 11


def _particle(n_energies: int, f: float, *, seed: int = 1, noise: bool = True, references=None):
    """``(analysis, mask)`` of one particle of uniform LiNiO2 fraction ``f`` (NiO the rest) on synth's grid."""
    refs = ni_references()
    e = ni_energy_grid(n_energies)
    mask = disc(SHAPE, RADIUS)
    w = np.stack([(1 - f) * mask, f * mask]).astype(float)
    spectra = np.stack([refs["NiO"](e), refs["LiNiO2"](e)])
    od, clean = pixel_od(e, spectra, w, dome(SHAPE, RADIUS, 0.8), rng=np.random.default_rng(seed))
    data = od if noise else clean.astype(np.float32)
    # neither smoothed nor a background subtracted (the ring's noise is common to every pixel of a frame): each
    # pixel's noise its own, so that the particle's mean has the standard error of independent pixels
    r = xanes.analyse_particle(
        data,
        mask,
        e,
        references=refs if references is None else references,
        smoothing=0,
        subtract_background=False,
    )
    return r, mask


@pytest.mark.parametrize("n_energies", [60, 143])
@pytest.mark.parametrize("f", [0.1, 0.5])
def test_mean_fraction_within_its_sigma(n_energies, f):
    """With noise (each pixel's its own) the particle's mean fraction lies within 3 standard errors of the mean
    (its pixels' sigmas in quadrature over their number) and its pixels' errors over their sigma average about 0;
    noise-free the fraction is the truth. As given: 0.077 / 0.118 for 0.1 at 60 / 143 energies (-7.9 / +10.7
    standard errors of the mean), 0.492 / 0.507 for 0.5 (-3.6 / +4.6); noise-free 0.1 read 0.076 / 0.119."""
    r, mask = _particle(n_energies, f)
    frac, sig = r["fractions"][1][mask], r["maps"]["fraction_sigma"][1][mask]
    ok = np.isfinite(frac) & np.isfinite(sig)
    sem = np.sqrt(np.sum(sig[ok] ** 2)) / ok.sum()
    assert abs(np.mean(frac[ok]) - f) < 3 * sem
    z = (frac[ok] - f) / sig[ok]
    assert abs(np.mean(z)) < 0.3
    assert 0.55 <= np.mean(np.abs(z) <= 1) <= 0.85
    clean, mask = _particle(n_energies, f, noise=False)
    assert np.nanmax(np.abs(clean["fractions"][1][mask] - f)) < 1e-3


@pytest.mark.parametrize("n_energies", [60, 143])
@pytest.mark.parametrize("f", [0.0, 1.0])
def test_pure_phases_stay_at_the_bounds(n_energies, f):
    """Control: a pure NiO or LiNiO2 particle is fitted at the bound, noise-free exactly (as given NiO read 0.023 on
    143 energies)."""
    r, mask = _particle(n_energies, f, noise=False)
    assert np.nanmax(np.abs(r["fractions"][1][mask] - f)) < 1e-3


def test_e50_unchanged_by_the_references():
    """Control: the edge energies do not depend on the fit (the same with the references or without)."""
    with_refs, mask = _particle(60, 0.3)
    without, _ = _particle(60, 0.3, references={})
    np.testing.assert_array_equal(with_refs["edge_maps"]["e50"][mask], without["edge_maps"]["e50"][mask])
    assert np.allclose(with_refs["maps"]["e50_sigma"][mask], without["maps"]["e50_sigma"][mask], equal_nan=True)


def test_references_not_spanning_the_scan_fitted_as_given_with_a_note():
    """Control: references cut short of the post-edge (to 8600 eV on a scan to 8680 eV) cannot be normalised as the
    particle's spectra are: fitted as given (the fractions as before), and the note says so."""
    refs = ni_references()
    short = {
        k: ReferenceSpectrum(k, r.energies_ev[r.energies_ev <= 8600], r.mu[r.energies_ev <= 8600])
        for k, r in refs.items()
    }
    r, mask = _particle(60, 0.1, references=short, noise=False)
    assert any(n.startswith(xanes.AS_GIVEN_NOTE) for n in r["notes"])
    frac = np.nanmean(r["fractions"][1][mask])
    assert -0.03 < frac - 0.1 < -0.015  # the bias of the two normalisations, said
    full, _ = _particle(60, 0.1, noise=False)
    assert not any(n.startswith(xanes.AS_GIVEN_NOTE) for n in full["notes"])


def test_references_starting_above_the_pre_edge_carried_down_by_their_own_pre_edge_line():
    """References starting 30 eV above the scan (8230 eV; the shipped ones start at 8200 eV, E0 - 150 eV lies at
    8193-8197 eV) are carried down by a line through their own pre-edge: normalised as the particle's spectra, no
    note. Starting at 8260 eV (their pre-edge line spans less than the 60 eV it would be carried): as given, noted."""
    refs = ni_references()

    def cut(start):
        return {
            k: ReferenceSpectrum(k, r.energies_ev[r.energies_ev >= start], r.mu[r.energies_ev >= start])
            for k, r in refs.items()
        }

    r, mask = _particle(60, 0.1, references=cut(8230.0), noise=False)
    assert not any(n.startswith(xanes.AS_GIVEN_NOTE) for n in r["notes"])
    assert abs(np.nanmean(r["fractions"][1][mask]) - 0.1) < 2e-3
    r, mask = _particle(60, 0.1, references=cut(8260.0), noise=False)
    assert any(n.startswith(xanes.AS_GIVEN_NOTE) for n in r["notes"])


def test_references_on_scan_and_the_step_conversion():
    """A mix normalised on the scan's energies is the mix of the references so normalised with weights
    ``f_j s_j / sum f_k s_k``; the fit converts them back exactly, and its Jacobian is the conversion's."""
    refs = ni_references()
    e = ni_energy_grid(60)
    f = 0.3
    y = 0.25 * (e / 8333.0) ** -3 + (1 - f) * refs["NiO"](e) + f * refs["LiNiO2"](e)
    e0 = xanes.find_e0(e, y)
    norm = xanes.normalize(e, y, e0_ev=e0).norm
    on_scan, steps = xanes.references_on_scan(refs, e, e0, background=0.25)
    assert 0.95 < steps[0] < 0.99 and 0.99 < steps[1] < 1.02  # NiO's post-edge line 3 % low on this grid
    weights = xanes.linear_combination_fit(e, norm, on_scan, e0_ev=e0).fractions
    assert abs(weights[1] - f * steps[1] / ((1 - f) * steps[0] + f * steps[1])) < 1e-4
    fit = xanes.linear_combination_fit(e, norm, on_scan, e0_ev=e0, edge_steps=steps)
    assert abs(fit.fractions[1] - f) < 1e-4 and abs(fit.fractions.sum() - 1) < 1e-6
    c = np.array([0.6, 0.4])
    jac = xanes.fraction_jacobian(xanes._weights_to_fractions(c, steps), steps)
    d = 1e-6 * np.array([-1.0, 1.0])  # along the sum held
    numeric = (xanes._weights_to_fractions(c + d, steps) - xanes._weights_to_fractions(c - d, steps)) / 2e-6
    np.testing.assert_allclose(jac @ np.array([-1.0, 1.0]), numeric, rtol=1e-6)
    with pytest.raises(ValueError, match="edge_steps"):
        xanes.linear_combination_fit(e, norm, on_scan, e0_ev=e0, edge_steps=[1.0])


def test_fraction_sigma_needs_the_fractions_with_edge_steps():
    refs = ni_references()
    e = ni_energy_grid(60)
    mu = np.tile((0.25 * (e / 8333.0) ** -3 + refs["NiO"](e))[:, None, None], (1, 3, 3))
    with pytest.raises(ValueError, match="fractions"):
        fraction_sigma(e, mu, refs, edge_steps=[1.0, 1.0])


@pytest.mark.parametrize("n_energies", [60, 143])
def test_user_references_of_a_measured_spectrum(n_energies):
    """A user's references (the measured Ni(OH)2 of the stress scenes and it +2.5 eV, as ``--reference`` files give
    them): a 40 % mix fitted within 1e-3 noise-free (as given: 0.384 / 0.379 on 60 / 143 energies; the stress
    scenes' particles +0.02 to +0.06 through the pipeline)."""
    n = stress_reference()
    refs = {"NiOH2": n, "charged": ReferenceSpectrum("charged", n.energies_ev + 2.5, n.mu)}
    e = ni_energy_grid(n_energies)
    mask = disc(SHAPE, RADIUS)
    f = 0.4
    w = np.stack([(1 - f) * mask, f * mask]).astype(float)
    _, clean = pixel_od(e, np.stack([refs["NiOH2"](e), refs["charged"](e)]), w, dome(SHAPE, RADIUS, 0.8))
    r = xanes.analyse_particle(clean.astype(np.float32), mask, e, references=refs, smoothing=0)
    assert np.nanmax(np.abs(r["fractions"][1][mask] - f)) < 1e-3
    assert not any(n.startswith(xanes.AS_GIVEN_NOTE) for n in r["notes"])


def test_the_run_note_gathers_the_particles_fitted_as_given():
    note = "fractions fitted against the references as given (NiO 8200-8600 eV, LiNiO2 8200-8600 eV), ..."
    assert note.startswith(xanes.AS_GIVEN_NOTE)
    parts = [SimpleNamespace(particle=k, notes=[note] if k < 2 else []) for k in range(3)]
    out = pipeline._particle_chemistry_notes(parts)
    assert any(n.startswith("2 of 3 particles (0, 1): " + xanes.AS_GIVEN_NOTE) for n in out)
    assert not any(xanes.AS_GIVEN_NOTE in n for n in pipeline._particle_chemistry_notes(parts[2:]))
    assert pipeline._is_xanes_note(note)  # a redo replaces it
