"""Where no reference measures the normalisation's E50 bias, the run says so (xanestrack.chemistry.normbias).

The probe of Mn and Co electrodes (round 9, F1): a Co scan without references and a Mn scan with the user's XANES
standards (6520-6630 eV, short of the ranges the particles are normalised over) had run.json's bias ``{}`` and no
note, their particles 0.1-0.47 eV off their references' provider's E50 at 4-9 sigma. Scenes at reduced size: synth's
default scene on 60 energies, and the same moved 624 eV down (a Co-like edge, no reference of it)."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import CO_BELOW_NI_EV
from xanestrack import synth
from xanestrack.chemistry.normbias import (
    NOTE_START,
    normalisation_bias_note,
    own_spectra_bias,
    shipped_bias_at_edge,
    unmeasured_bias_note,
)
from xanestrack.chemistry.runnotes import _normalisation_bias, _particles_background
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.stack import Stack
from xanestrack.xanes import edge_energy, find_e0, normalize

UNMEASURED = f"{NOTE_START} was not measured against references"


def _stack(shift_ev: float = 0.0) -> Stack:
    """synth's default scene (seed 1, 60 energies, 3 particles, 160 px), its spectra and energies ``shift_ev``
    lower."""
    grid = synth.ni_energy_grid(60) - shift_ev
    refs = {k: ReferenceSpectrum(k, r.energies_ev - shift_ev, r.mu) for k, r in ni_references().items()}
    table = synth._e50_table()  # the Ni table, cached before the references are moved (truth maps only)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "_e50_table", lambda: table)
        mp.setattr(synth, "ni_energy_grid", lambda n=143: grid.copy())
        mp.setattr(synth, "ni_references", lambda: refs)
        s = synth.make_synthetic_stack(
            "default", seed=1, n_energies=60, shape=(160, 160), n_particles=3, radius_range=(12.0, 22.0)
        )
    return Stack(s.optical_density(), s.energies_ev)


@pytest.fixture(scope="module")
def runs():
    return {"co": run_pipeline(_stack(CO_BELOW_NI_EV)), "ni": run_pipeline(_stack())}


def _noted(result):
    return [n for n in result.notes if n.startswith(NOTE_START)]


def test_a_scan_without_references_of_its_edge_says_the_bias_was_not_measured(runs):
    """The Co-like scan (no reference of its edge): one note, that it was not measured and why, the part the
    particles' own mean spectra hold (their numbers) and the shipped Ni references' range on its energies moved to
    their edge, named as the Ni K-edge's. run.json's bias stays that of references: none."""
    r = runs["co"]
    assert not r.normalisation_bias
    (note,) = _noted(r)
    assert note.startswith(UNMEASURED) and "no reference spectrum of the particles' edge was given" in note
    own = own_spectra_bias(r.energies_ev, r.particles)
    assert len(own) >= 2 and all(abs(v) < 0.1 for v in own.values())
    lo, hi = min(own, key=own.get), max(own, key=own.get)
    assert f"{own[lo]:+.2f} eV ({lo}) to {own[hi]:+.2f} eV ({hi})" in note
    assert "moved to the Ni K-edge" in note and "not measured at this Co K-edge" in note
    assert "the shipped Ni references and their mixes read" in note


def test_the_ni_scene_keeps_its_measured_bias_and_note(runs):
    """Control: the same scene at the Ni edge, where the shipped references measure it: their numbers and the note
    as before (-0.176 / +0.031 eV on this 60-energy grid), no word of it not being measured."""
    r = runs["ni"]
    assert r.normalisation_bias["NiO"] == pytest.approx(-0.18, abs=0.02)
    assert r.normalisation_bias["LiNiO2"] == pytest.approx(0.03, abs=0.02)
    (note,) = _noted(r)
    assert not note.startswith(UNMEASURED) and "NiO -0.1" in note
    again, same = _normalisation_bias(r.particles, ni_references(), r.energies_ev, True, PipelineOptions())
    assert again == r.normalisation_bias and same == note


def test_references_short_of_the_ranges_are_named(runs):
    """A user's standards cut to E0 - 25 .. E0 + 90 eV (as XANES standards are measured) cannot be normalised as the
    particles are: the bias is {} as before, and the note now says so, naming them and their spans. The same
    references uncut measure it (control)."""
    r = runs["ni"]
    options = PipelineOptions()
    short = {}
    for k, ref in ni_references().items():
        e0 = find_e0(ref.energies_ev, ref.mu)
        keep = (ref.energies_ev >= e0 - 25) & (ref.energies_ev <= e0 + 90)
        short[k] = ReferenceSpectrum(k, ref.energies_ev[keep], ref.mu[keep])
    bias, note = _normalisation_bias(r.particles, short, r.energies_ev, False, options)
    assert bias == {}
    assert note.startswith(UNMEASURED) and "the references given (NiO 83" in note and "LiNiO2 83" in note
    assert "do not reach the ranges the particles are normalised over" in note
    assert "on this scan's energies, with their E0 placed" in note and "moved to" not in note  # at the Ni edge
    full, said = _normalisation_bias(r.particles, ni_references(), r.energies_ev, False, options)
    assert set(full) == {"NiO", "LiNiO2"} and said.startswith(NOTE_START) and not said.startswith(UNMEASURED)
    kw = dict(edge_window=options.edge_window, background=_particles_background(r.particles, r.energies_ev))
    assert unmeasured_bias_note(r.energies_ev, [], short, **kw) == ""  # no particle, nothing to bias


def _stand_in(e, norm, e0, i=0):
    return SimpleNamespace(particle=i, mean_norm=np.asarray(norm, float), e0_ev=float(e0))


@pytest.mark.parametrize("n", [30, 40, 60])
def test_own_spectra_bias_is_the_interpolation_across_the_edge(n):
    """The part measured from a mean spectrum on the scan's energies: E50 interpolated linearly between them, against
    the dense spectrum under the same normalisation. The shipped NiO / LiNiO2 on synth's grids: within 0.035 eV of
    that part measured from the dense references. A straight edge reads 0."""
    e = synth.ni_energy_grid(n)
    dense = np.arange(e[0], e[-1], 0.01)
    for k, ref in ni_references().items():
        nm = normalize(e, ref(e))
        lines = np.interp(dense, e, nm.pre_edge), float(nm.edge_step)
        truth = edge_energy(dense, ((ref(dense) - lines[0]) / lines[1])[:, None], e0_ev=nm.e0_ev)[0][0]
        seen = edge_energy(e, nm.norm[:, None], e0_ev=nm.e0_ev)[0][0]
        got = own_spectra_bias(e, [_stand_in(e, nm.norm, nm.e0_ev)])["particle 0"]
        assert got == pytest.approx(seen - truth, abs=0.035), k
    ramp = np.clip((e - 8330.0) / 20.0, 0.0, 1.0)
    assert own_spectra_bias(e, [_stand_in(e, ramp, 8340.0)])["particle 0"] == pytest.approx(0.0, abs=1e-3)


def test_own_spectra_bias_leaves_out_what_the_pipeline_does_not_measure():
    """A mean spectrum NaN (no XANES), one whose E50 falls in a hole of the energies (no E50 measured there), and too
    few energies: left out; no particle left, no note."""
    e = synth.ni_energy_grid(60)
    ref = ni_references()["NiO"]
    nm = normalize(e, ref(e))
    hole = (e > 8336.0) & (e < 8346.0)
    holed = np.where(hole, np.nan, nm.norm)
    parts = [
        _stand_in(e, np.full(e.size, np.nan), nm.e0_ev, 1),
        _stand_in(e, holed, nm.e0_ev, 2),
        _stand_in(e, np.where(np.arange(e.size) < 6, nm.norm, np.nan), nm.e0_ev, 3),
    ]
    assert own_spectra_bias(e, parts) == {}
    assert unmeasured_bias_note(e, parts) == ""
    assert "particle 4" in own_spectra_bias(e, parts + [_stand_in(e, nm.norm, nm.e0_ev, 4)])


def test_the_shipped_references_are_placed_about_the_particles_edge():
    """At the Ni edge with no offset the shipped references read as measured there; the placements cover a few eV,
    and the bias swings between them (synth's 60-energy grid); no edge, nothing."""
    e = synth.ni_energy_grid(60)
    refs = ni_references()
    at = float(np.median([find_e0(r.energies_ev, r.mu) for r in refs.values()]))
    placed = shipped_bias_at_edge(e, at, background=0.25)
    assert min(placed) <= -3 and max(placed) >= 3
    from xanestrack.chemistry.normbias import normalisation_bias

    assert placed[0.0]["NiO"] == pytest.approx(normalisation_bias(e, refs, background=0.25)["NiO"], abs=1e-9)
    nio = [b["NiO"] for b in placed.values()]
    assert max(nio) - min(nio) > 0.1
    assert shipped_bias_at_edge(e, float("nan")) == {}
    assert normalisation_bias_note({}) == ""


def _particle(e, norm, e0, i, e50_px):
    """A particle of a 21 x 21 disc (r 8) with ``norm`` as its mean spectrum and an E50 in ``e50_px`` of its pixels
    (0: its XANES failed after its mean spectrum was normalised)."""
    yy, xx = np.mgrid[:21, :21]
    mask = (yy - 10) ** 2 + (xx - 10) ** 2 <= 64
    e50 = np.full(mask.shape, np.nan, np.float32)
    e50[tuple(a[:e50_px] for a in np.nonzero(mask))] = e0
    return SimpleNamespace(
        particle=i, mean_norm=np.asarray(norm, float), e0_ev=float(e0), edge_maps={"e50": e50}, mask=mask
    )


def test_only_particles_whose_mean_e50_is_given_are_quoted():
    """The review's repro: a particle whose XANES failed after its mean spectrum was normalised (frames out of the
    energies' order, no E50 in any pixel) keeps a finite E0 and mean spectrum; its "own bias" was quoted, and the
    note given for it alone ("none to bias": ""). So was a particle whose mean E50 is withheld (E50 in 3 of its
    core pixels). Now only those with a mean E50 given; the control, every pixel measured, is quoted as before."""
    e = synth.ni_energy_grid(60)
    nm = normalize(e, ni_references()["NiO"](e))
    failed = _particle(e, nm.norm, nm.e0_ev, 1, 0)
    withheld = _particle(e, nm.norm, nm.e0_ev, 2, 3)
    given = _particle(e, nm.norm, nm.e0_ev, 3, 10_000)
    assert own_spectra_bias(e, [failed, withheld]) == {}
    assert unmeasured_bias_note(e, [failed, withheld]) == ""
    own = own_spectra_bias(e, [failed, withheld, given])
    assert set(own) == {"particle 3"}
    assert own["particle 3"] == own_spectra_bias(e, [_stand_in(e, nm.norm, nm.e0_ev, 3)])["particle 3"]
    note = unmeasured_bias_note(e, [failed, withheld, given])
    assert "particle 3" in note and "particle 1" not in note and "particle 2" not in note


def test_the_shipped_references_are_named_so_where_they_cannot_measure_it(runs):
    """References that cannot measure the bias on the scan's energies were called "the references given" though the
    user gave none (the shipped ones, default_references). Now "the shipped references"; a user's still "given"."""
    r = runs["ni"]
    short = {}
    for k, ref in ni_references().items():
        e0 = find_e0(ref.energies_ev, ref.mu)
        keep = (ref.energies_ev >= e0 - 25) & (ref.energies_ev <= e0 + 90)
        short[k] = ReferenceSpectrum(k, ref.energies_ev[keep], ref.mu[keep])
    _, shipped = _normalisation_bias(r.particles, short, r.energies_ev, True, PipelineOptions())
    assert "the shipped references (NiO 83" in shipped and "references given" not in shipped
    _, given = _normalisation_bias(r.particles, short, r.energies_ev, False, PipelineOptions())
    assert "the references given (NiO 83" in given and given == shipped.replace(
        "shipped references", "references given"
    )
