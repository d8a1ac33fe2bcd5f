"""Run notes at other edges than Ni's: the shipped Ni references on a Co-only scan that crosses 8340 eV, the coarse-step
note's numbers, and the notes' wording by the edge the scan is at.

The scenes are those of the probe of other edges, at reduced size: synth's default scene with its energy grid and
its two end members swapped; a Co-like edge is the shipped Ni pair 624 eV lower (no Co spectrum needed). Real Mn and Co
spectra (../shared/data) are used where the edge's shape is the point."""

from types import SimpleNamespace

import numpy as np

from conftest import CO_BELOW_NI_EV, shared_data
from conftest import CO_NI_GRID as COWIDE
from xanestrack import synth
from xanestrack.chemistry import runnotes
from xanestrack.chemistry.normbias import NOTE_START, normalisation_bias_note
from xanestrack.chemistry.runnotes import _coarse_edge_note, _normalisation_bias
from xanestrack.chemistry.stray import STRAY_NOTE_START
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.xanes import SHOULDER_NOTE, _shoulder_note, find_e0, normalize


def _scene(monkeypatch, refs, grid, *, n_particles=3, seed=5, shape=(160, 160)):
    """A reduced gen.py scene on ``grid`` with ``refs`` as synth's end members."""
    from xanestrack.stack import Stack

    table = synth._e50_table()  # the Ni table, cached before the references are swapped (truth maps only)
    monkeypatch.setattr(synth, "_e50_table", lambda: table)
    monkeypatch.setattr(synth, "ni_energy_grid", lambda n=143: np.asarray(grid, float).copy())
    monkeypatch.setattr(synth, "ni_references", lambda: refs)
    s = synth.make_synthetic_stack(
        "default",
        seed=seed,
        n_energies=len(grid),
        shape=shape,
        n_particles=n_particles,
        radius_range=(12.0, 22.0),
    )
    monkeypatch.undo()
    return Stack(s.optical_density(), s.energies_ev)


def _co_like(scale=1.0):
    """The shipped pair moved 624 eV down (a Co-like edge at 7716 eV), ``scale`` times as thick (gen.py SCALE)."""
    out = {}
    for name, r in ni_references().items():
        out[name] = ReferenceSpectrum(name, r.energies_ev - CO_BELOW_NI_EV, scale * r.mu)
    return out


def _notes(result, start):
    return [n for n in result.notes if n.startswith(start)]


def test_co_scan_across_the_ni_edge_quotes_no_ni_numbers(monkeypatch):
    """Finding 2: Co-like particles (3x thick) scanned over 7650-8450 eV. The shipped Ni references were taken by the
    grid's span and quoted for stray light (0.07 / 0.32 eV, the particles' own spectra 0.30 / 0.76) and the
    normalisation's bias (NiO +0.22, LiNiO2 +0.03 eV in run.json), though no particle's edge was at theirs."""
    stack = _scene(monkeypatch, _co_like(3.0), COWIDE)
    r = run_pipeline(stack)
    e0 = [p.e0_ev for p in r.particles]
    assert len(e0) >= 2 and all(7690 < x < 7740 for x in e0)
    assert not r.normalisation_bias  # nothing measured with references of another edge
    # said not measured (normbias.unmeasured_bias_note): the shipped Ni numbers only as the Ni K-edge's, placed there
    (bias,) = _notes(r, NOTE_START)
    assert "was not measured against references" in bias and "moved to the Ni K-edge" in bias
    assert "not measured at this Co K-edge" in bias
    said = " ".join(r.notes)
    assert "crosses, but no particle's edge lies near" in said
    stray = _notes(r, STRAY_NOTE_START)
    assert stray, r.notes  # 3x thick: the sensitivity note, from the particles' own spectra
    assert "particles' own mean spectra" in stray[0] and "NiO" not in stray[0]


def test_ni_scene_keeps_its_references_and_numbers():
    """Control: the default Ni scene (seed 1, reduced) keeps the shipped references, their bias numbers as measured
    with them on all its particles, and no note on references or coarse steps."""
    from xanestrack.stack import Stack

    s = synth.make_synthetic_stack(
        "default", seed=1, n_energies=60, shape=(192, 192), n_particles=3, radius_range=(10.0, 22.0)
    )
    options = PipelineOptions()
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev), options=options)
    assert set(r.normalisation_bias) == {"NiO", "LiNiO2"}
    again, note = _normalisation_bias(r.particles, ni_references(), r.energies_ev, True, options)
    assert again == r.normalisation_bias
    assert note in r.notes if note else not _notes(r, NOTE_START)
    assert not [n for n in r.notes if n.startswith("no linear-combination fit")]
    assert not [n for n in r.notes if "eV apart where the particles' edges cross" in n]
    assert any(p.fractions is not None and np.isfinite(p.fractions).any() for p in r.particles)
    for n in _notes(r, STRAY_NOTE_START):
        assert "from the references on this scan's energies" in n


def _particles_at(e50_ev, n=3):
    """Stand-ins for analysed particles whose edges cross half their step at ``e50_ev`` (eV)."""
    return [
        SimpleNamespace(
            particle=i,
            e0_ev=e50_ev + 0.5 * i,
            edge_maps={"e50": np.full((4, 4), e50_ev + 0.3 * i)},
            pre_edge=np.full(3, np.nan),
            post_edge=np.full(3, np.nan),
        )
        for i in range(n)
    ]


def test_coarse_note_quotes_no_ni_table_at_another_edge():
    """Finding 3: a Mn scan 5 eV apart, without references of its edge, was told "mostly low, -0.49 to +0.06 eV" (the
    Ni table); its particles read 0.16-0.35 eV high. No direction or numbers of its own now; the Ni table is named as
    the Ni K-edge's. Near the Ni edge (no references) the table stays."""
    mn = _coarse_edge_note(_particles_at(6545.0), np.arange(6402.0, 6890.0, 5.0))
    assert "not measured here" in mn and "mostly low" not in mn and "at the Ni K-edge" in mn
    ni = _coarse_edge_note(_particles_at(8341.0), np.arange(8200.0, 8680.0, 5.0))
    assert "mostly low" in ni and "-0.49 to +0.06 eV" in ni
    assert _coarse_edge_note(_particles_at(6545.0), np.arange(6402.0, 6890.0, 2.0)) == ""


def test_coarse_note_from_the_shipped_references_matches_the_table():
    """With references of the particles' edge the bias is measured for this run: the shipped pair 5 eV apart reads as
    the table was measured (-0.49 to +0.06 eV), and 2.5 eV apart (-0.166 to +0.099) gives no note, as before."""
    refs = ni_references()
    n5 = _coarse_edge_note(_particles_at(8341.0), np.arange(8200.0, 8680.0, 5.0), refs, shipped=True)
    assert "biased by -0.49 to +0.05 eV" in n5 and "NiO, LiNiO2" in n5  # the table: -0.49 to +0.06
    assert _coarse_edge_note(_particles_at(8341.0), np.arange(8200.0, 8680.0, 2.5), refs, shipped=True) == ""


def _xdi_pair(path, shift=None, other=None):
    """Two normalised references from xasdatalibrary XDI files (energy, i0, itrans), as gen.py makes them: ``path``
    and ``other``, or ``path`` and the same spectrum ``shift`` eV higher (its Co pair); pre-edge line and post-edge
    mean taken out, read flat past their ends on a dense grid 200 eV below to 400 eV above the edge, and normalised
    there as the particles are."""
    out = {}
    for name, p, d in (("A", path, 0.0), ("B", other or path, shift or 0.0)):
        a = np.loadtxt(p, comments="#")
        e, mu = a[:, 0] + d, np.log(a[:, 1] / a[:, 2])
        e0 = find_e0(e, mu)
        pre = e < e0 - 10.0
        mu = mu - np.polyval(np.polyfit(e[pre], mu[pre], 1), e)
        mu = mu / mu[e > e0 + 40.0].mean()
        g = np.arange(e0 - 200.0, e0 + 400.0, 0.1)
        m = ReferenceSpectrum(name, e, mu)(g)
        out[name] = ReferenceSpectrum(name, g, normalize(g, m, e0_ev=find_e0(g, m)).norm)
    return out


def test_coarse_note_follows_the_edge_shape():
    """MnO / Mn2O3 mixes 5 eV apart read high (the probe's +0.69 eV), and a Co foil pair reaches -0.46 eV already
    2.5 eV apart, where the shipped Ni pair gives no note (the threshold follows the edge's sharpness)."""
    d = "spectra", "xasdatalibrary"
    mn = _xdi_pair(shared_data(*d, "Mn", "MnO_rt_01.xdi"), other=shared_data(*d, "Mn", "Mn2O3_rt_01.xdi"))
    lo, hi = runnotes._coarse_edge_range(
        mn, np.arange(6407.0, 6887.0, 1.0), 5.0, shipped=False, background=None, edge_window=(-15.0, 20.0)
    )
    assert hi > 0.3  # two-sided, up to well above 0: not "mostly low"
    note = _coarse_edge_note(_particles_at(6545.0), np.arange(6402.0, 6890.0, 5.0), mn)
    assert f"to {hi:+.2f} eV" in note and "mostly low" not in note
    co = _xdi_pair(shared_data(*d, "Co", "co_metal_rt.xdi"), shift=4.0)
    lo, hi = runnotes._coarse_edge_range(
        co, np.arange(7576.0, 8056.0, 1.0), 2.5, shipped=False, background=None, edge_window=(-15.0, 20.0)
    )
    assert max(-lo, hi) > runnotes.COARSE_EDGE_NOTE_EV
    assert "biased by" in _coarse_edge_note(_particles_at(7716.0), np.arange(7576.0, 8056.0, 2.5), co)


def test_notes_name_the_edge_they_were_measured_at():
    """Finding 6: a Co particle's shoulder note cited "a Ni foil read so" as its own; the bias note "the shipped Ni
    references within 0.11 eV" on Mn / Co runs. At the Ni edge the words are as before."""
    e = np.arange(7650.0, 7800.0, 1.0)
    norm = np.clip((e - 7705.0) * 0.04, 0.0, 1.0)  # 0.04 of the step per eV: a metal-like shoulder
    co = _shoulder_note(e, norm, 7709.0)
    assert co.startswith(SHOULDER_NOTE) and "not measured at this Co K-edge" in co
    ni = _shoulder_note(e + 624.0, norm, 8333.0)
    assert "a Ni foil read so" in ni and "not measured" not in ni
    bias = {"A": 0.30, "B": 0.0}
    assert "not measured at this Mn K-edge" in normalisation_bias_note(bias, edge_ev=6545.0)
    plain = normalisation_bias_note(bias)
    assert plain == normalisation_bias_note(bias, edge_ev=8341.0) and "not measured" not in plain
    assert "(every 10 eV from E0 + 100 eV on left the shipped Ni references within 0.11 eV)" in plain


def test_withheld_particles_get_no_stray_or_bias_notes(monkeypatch):
    """Finding 6: particles all withheld (Co-rich NMC-like, the Co step 2.5 times the Ni one over 7650-8450 eV) had
    stray-light and normalisation-bias notes on E50s they no longer have."""
    ni = ni_references()
    g = np.arange(7000.0, 9001.0, 0.25)
    co = ni["NiO"](g + CO_BELOW_NI_EV)
    refs = {k: ReferenceSpectrum(k, g, 2.5 * co + ni[k](g)) for k in ("NiO", "LiNiO2")}
    r = run_pipeline(_scene(monkeypatch, refs, COWIDE))
    withheld = [p for p in r.particles if not np.isfinite(p.edge_maps["e50"]).any()]
    assert withheld and len(withheld) == len(r.particles)
    assert not _notes(r, NOTE_START) and not _notes(r, STRAY_NOTE_START)
    assert not r.normalisation_bias
    assert not any(n.startswith(SHOULDER_NOTE) for p in r.particles for n in p.notes)
