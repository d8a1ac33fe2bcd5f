"""A particle without the scanned element's edge (a binder or carbon clump, an Al flake) gets no E50 and no
fractions (probe round 9, acquisition variants, finding 1).

An absorber whose OD falls smoothly as E^-3, with no Ni edge (the probe's scene p_inert2, seed 3: r 12, post-edge OD
2), was given a mean E50 of 8326.69 +- 6.61 eV and fraction_LiNiO2 1.000 +- 0.272 (oxidised_fraction 1.000), not
withheld and with no note: one of its 437 mask pixels passed the quality masks, ``result.core_mask`` narrowed the
core to it, and the share test passed as "1 of 1". Its thinner neighbours were withheld, as chance had it. Now
(a) the share of the core measured is judged against the whole core, before the quality masks
(:func:`xanestrack.result.e50_share`), and the fractions are withheld with the E50
(:func:`xanestrack.result.fractions_withheld`, uncertainty.csv's flag ``withheld``); (b) a particle whose mean
spectrum shows no edge (:func:`xanestrack.xanes._no_edge_note`) has its XANES declined, with a note naming the
element.
"""

import dataclasses

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from conftest import one_particle_result
from xanestrack import synth, xanes
from xanestrack.pipeline import run_pipeline
from xanestrack.report import _fraction_means
from xanestrack.result import core_mask, e50_withheld, particle_summary
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack

E = synth.ni_energy_grid(60)


def _mix():
    refs = ni_references()
    return 0.6 * refs["NiO"](E) + 0.4 * refs["LiNiO2"](E)


def _window(spectrum, peak, pre_edge_level=0.25, seed=0):
    """A particle's OD window (60, 40, 40): ``peak * dome * (pre_edge_level * (E/8333)^-3 + spectrum)``, with photon
    noise; and its mask."""
    mask = disc((40, 40), 13)
    od, _ = pixel_od(
        E,
        np.asarray(spectrum, float)[None],
        mask[None].astype(float),
        dome((40, 40), 13, peak),
        pre_edge_level=pre_edge_level,
        rng=np.random.default_rng(seed),
    )
    return od, mask


@pytest.mark.parametrize("level", [0.3, 2.0])
def test_an_absorber_without_the_edge_gets_no_e50_nor_fractions(level):
    # OD level * (E/8333)^-3 at its thickest, no edge: the probe's inert particles had post-edge OD 0.15-2
    od, mask = _window(np.zeros(E.size), 1.0, pre_edge_level=level)
    out = xanes.analyse_particle(od, mask, E, references=ni_references(), uncertainty=False)
    (note,) = [n for n in out["notes"] if xanes.EDGE_ABSENT_NOTE in n]
    assert note.startswith("XANES failed: its mean spectrum shows no Ni K-edge"), note
    assert "binder or carbon" in note and "no E50 and no fractions" in note
    assert not np.isfinite(out["edge_maps"]["e50"]).any() and out["fractions"] is None
    assert np.isnan(out["e0_ev"])  # no edge, no E0: its derivative's maximum is noise
    assert not any(xanes.NEGATIVE_STEP_NOTE in n for n in out["notes"])  # not blamed on the frames' order


@pytest.mark.parametrize("peak", [1.0, 0.05])
def test_control_a_ni_particle_thick_or_faint_keeps_its_e50_and_fractions(peak):
    # the same window with a Ni edge: at 0.04 OD of step (5000 counts) its mean step stands 25 standard errors out
    od, mask = _window(_mix(), peak)
    out = xanes.analyse_particle(od, mask, E, references=ni_references(), uncertainty=False)
    assert not any(xanes.EDGE_ABSENT_NOTE in n or n.startswith("XANES failed") for n in out["notes"]), out["notes"]
    assert np.isfinite(out["edge_maps"]["e50"][mask]).mean() > (0.9 if peak == 1.0 else 0.5)
    assert out["fractions"] is not None and np.isfinite(out["fractions"][:, mask]).any()
    e = np.asarray(E, float)
    nm = xanes.normalize(e, od[:, mask].mean(axis=1))
    step, sigma, pre_od = xanes.mean_edge_step(e, od[:, mask].mean(axis=1), nm)
    assert step / sigma > 5 * xanes.EDGE_ABSENT_Z and step / pre_od > 50 * xanes.EDGE_ABSENT_RATIO


@pytest.mark.parametrize("peak", [1.0, 0.01])
def test_frames_in_the_reverse_order_are_still_said_so(peak):
    # a falling edge is an edge (the frames reversed), not the absence of one: the older note stays; a faint
    # particle's (a step of 0.008 OD, its pixels too noisy to say it one by one) is said from its mean spectrum
    od, mask = _window(_mix(), peak)
    out = xanes.analyse_particle(od[::-1], mask, E, references=ni_references(), uncertainty=False)
    (note,) = [n for n in out["notes"] if xanes.NEGATIVE_STEP_NOTE in n]
    assert "reverse order of the energies" in note and ("in its mean spectrum" in note) == (peak < 0.1)
    assert not any(xanes.EDGE_ABSENT_NOTE in n for n in out["notes"])
    assert not np.isfinite(out["edge_maps"]["e50"]).any()


def test_the_share_measured_is_of_the_whole_core_and_the_fractions_go_with_the_e50():
    od, mask = _window(_mix(), 1.0)
    xr = xanes.analyse_particle(od, mask, E, references=ni_references())
    good = one_particle_result(xr, od, mask, E, 13.0)
    # the control: every core pixel kept and measured, its mean E50 and fractions given
    row = particle_summary(good).iloc[0]
    assert not e50_withheld(good.particles[0]) and np.isfinite(row["mean_e50_ev"])
    assert np.isfinite(row["oxidised_fraction"])
    fr = _fraction_means(good).iloc[0]
    assert np.isfinite(fr["fraction_LiNiO2"]) and "withheld" not in fr["fraction_flags"]
    # the probe's flake: 6 pixels with an E50 (noise crossings), 1 of them kept by the quality masks
    p = good.particles[0]
    n_core = int(core_mask(mask, mask).sum())
    ys, xs = np.nonzero(core_mask(mask, mask))
    e50 = np.full(mask.shape, np.nan, np.float32)
    e50[ys[200:206], xs[200:206]] = 8326.69
    keep = np.zeros(mask.shape, bool)
    keep[ys[200], xs[200]] = True
    q = dataclasses.replace(p, edge_maps={**p.edge_maps, "e50": e50}, maps={**p.maps, "quality_keep": keep})
    flake = dataclasses.replace(good, particles=[q])
    why = e50_withheld(q)
    assert why.startswith(f"E50 measured in 6 of its {n_core} core pixels only"), why  # was "1 of 1": given
    row = particle_summary(flake).iloc[0]
    assert np.isnan(row["mean_e50_ev"]) and np.isnan(row["oxidised_fraction"])  # were 8326.69 and a fraction
    fr = _fraction_means(flake).iloc[0]
    assert np.isnan(fr["fraction_LiNiO2"]) and np.isnan(fr["oxidised_fraction"])
    assert np.isnan(fr["fraction_LiNiO2_sigma_median"]) and fr["fraction_flags"].split("|") == ["withheld"]
    note = xanes._few_e50_note(e50, np.asarray(p.pixel_flags), mask)
    assert note.startswith(f"E50 measured in 6 of its {n_core} core pixels only") and "nor its mean fractions" in note
    # the control: a faint particle, the quality masks keeping a quarter of its core, its E50 in most: given
    e50 = p.edge_maps["e50"].copy()
    keep = np.zeros(mask.shape, bool)
    keep[ys[::4], xs[::4]] = True
    q = dataclasses.replace(p, maps={**p.maps, "quality_keep": keep})
    assert not e50_withheld(q)
    row = particle_summary(dataclasses.replace(good, particles=[q])).iloc[0]
    assert np.isfinite(row["mean_e50_ev"]) and np.isfinite(row["oxidised_fraction"])


@pytest.fixture(scope="module")
def scenes(small_synth):
    """synth's small scene (conftest's ``small_synth``: 4 particles, 48 energies, 200 x 200) with a disc added where
    none is, moving with the scene: an absorber without the Ni edge (OD 1.2 (E/8333)^-3 at its thickest), and, the
    control, the same disc with a Ni spectrum."""
    s = small_synth
    od, e = s.optical_density(), s.energies_ev
    yy, xx = np.mgrid[0:200, 0:200]
    out = {}
    for kind, spectrum in (("inert", np.zeros(e.size)), ("ni", 0.5 * ni_references()["NiO"](e))):
        stack = od.copy()
        for k in range(e.size):
            cy, cx = np.array([150.0, 150.0]) + s.truth.global_shift[k]
            u = np.clip(np.hypot(yy - cy, xx - cx) / 14.0, 0, 1)
            thick = np.sqrt(1 - u**2) * (u < 1)
            level = 1.2 if kind == "inert" else 0.3
            stack[k] += (thick * (level * (e[k] / 8333.0) ** -3 + spectrum[k])).astype(stack.dtype)
        out[kind] = run_pipeline(Stack(stack, e))
    return out


def _at_disc(result):
    (p,) = [p for p in result.particles if np.hypot(*(p.positions[0] - 150.0)) < 5]
    return p


def test_an_edgeless_particle_of_a_scene_is_said_and_given_no_chemistry(scenes):
    result = scenes["inert"]
    p = _at_disc(result)
    assert any(n.startswith("XANES failed: its mean spectrum shows no Ni K-edge") for n in p.notes), p.notes
    summ = particle_summary(result).set_index("particle")
    assert np.isnan(summ.loc[p.particle, "mean_e50_ev"]) and np.isnan(summ.loc[p.particle, "oxidised_fraction"])
    assert _fraction_means(result).set_index("particle").loc[p.particle, "fraction_flags"] == "no_fit"
    assert any(
        n.startswith(f"no XANES for 1 of {len(result.particles)} particles ({p.particle})") for n in result.notes
    )
    # the Ni particles keep their mean E50, as in the control's scene
    ctrl = particle_summary(scenes["ni"]).set_index("particle")
    others = summ.drop(p.particle)
    assert np.isfinite(others["mean_e50_ev"]).all() and len(others) >= 3
    for _, r in others.iterrows():
        (c,) = [c for c, q in ctrl.iterrows() if np.hypot(q["y0"] - r["y0"], q["x0"] - r["x0"]) < 2]
        assert abs(ctrl.loc[c, "mean_e50_ev"] - r["mean_e50_ev"]) < 0.01


def test_control_the_same_disc_with_a_ni_edge_is_measured(scenes):
    result = scenes["ni"]
    p = _at_disc(result)
    assert not any(xanes.EDGE_ABSENT_NOTE in n for n in p.notes)
    summ = particle_summary(result).set_index("particle")
    assert abs(summ.loc[p.particle, "mean_e50_ev"] - 8340.0) < 0.5  # NiO: about 8340 eV
    assert not any(xanes.EDGE_ABSENT_NOTE in n for n in result.notes)
