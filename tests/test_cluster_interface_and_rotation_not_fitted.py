"""A cluster that is the interface of two phases, and a rotation asked for and not fitted (probe "options", F3, F4).

- F3: a thin band of pixels on the boundary of two phases, their spectra mixes of theirs (the resolution and the
  smoothing mixing a sharp front), clustered on its own passed the distinctness test over a window of few
  energies (4.5 x the spread) and read as a third phase, unsaid. It is now named in a note, and not counted among
  the phases (the separation is of the others). Kept as phases: a third compound at the front whose spectrum is not
  a mix, a rim of other chemistry on an outline, one phase cut in three (the "not distinct" note, as before).
- F4: ``--rotation`` with fewer than three particles fits no turn, and ``common_rotation_deg`` read 0.000 in every
  frame (a field turning 1.5 degrees): it is NaN there, in tracks.csv, results.h5 and the report, with a note.

Reduced scenes: hand-made spectra maps (no pipeline) and two static or synthetic scenes of 160-200 px.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xanestrack.chemistry import phases
from xanestrack.motion import common_similarity, rotation_reported
from xanestrack.pipeline import CLUSTER_MIN_SEPARATION, CONSOLE_NOTE_WORDS, PipelineOptions, run_pipeline
from xanestrack.results import cluster_table, read_results, write_results
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack, ni_energy_grid
from xanestrack.synth_stress import stress_reference

E = ni_energy_grid(48)
WINDOW = (8330.0, 8370.0)


def _spectra():
    r = ni_references()
    nio, lno = r["NiO"](E), r["LiNiO2"](E)
    # a third compound: Ni(OH)2's shape with its edge (E50) between NiO's and LiNiO2's, not a mix of the two
    third = stress_reference()(E + (8346.11 - 8340.9))
    return {"NiO": nio, "LiNiO2": lno, "mix": 0.5 * (nio + lno), "third": third}


# ----------------------------------------------------------------------------- F3, without the pipeline


def _maps(layers, *, radius=20.0, seed=0, noise=0.03, blur=1.0):
    """One particle's normalised spectra (48, h, w), its mask and the name of each pixel's layer: ``layers``
    ``[(u_max, name), ...]`` inside out (u the radius over ``radius``), the chemistry blurred by ``blur`` px (the
    optics) and the spectra by 1 px (the pipeline's xanes_smoothing), noise added between."""
    sp = _spectra()
    n = int(2 * radius + 7)
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    u = np.hypot(yy, xx) / radius
    mask = u <= 1
    field = np.zeros((E.size, n, n))
    layer = np.full((n, n), "", object)
    lo = 0.0
    for umax, name in layers:
        sel = (u >= lo) & (u < umax) if umax < 1 else u >= lo  # the outer layer to the window's edge: no rim of 0
        field[:, sel] = sp[name][:, None]
        layer[sel] = name
        lo = umax
    layer[~mask] = ""
    field = ndimage.gaussian_filter(field, (0, blur, blur)) if blur else field
    field = field + np.random.default_rng(seed).normal(0, noise, field.shape)
    field = ndimage.gaussian_filter(field, (0, 1.0, 1.0))
    field[:, ~mask] = np.nan
    return field, mask, layer


def _scene(particles):
    """``phases.collect_spectra`` of several particles (``_maps`` arguments each)."""
    made = [_maps(layers, seed=i) for i, layers in enumerate(particles)]
    ps = phases.collect_spectra([m[0] for m in made], [m[1] for m in made])
    names = np.concatenate([m[2][m[1]] for m in made])  # collect_spectra's order: row-major per particle
    return ps, names


CORE_SHELL = [(0.55, "NiO"), (1, "LiNiO2")]


def _labels_by_mix(ps):
    """0 / 1 / 2 by each pixel's weight of LiNiO2 (below 0.2, between, above 0.8): the band across the front."""
    sp = _spectra()
    d = sp["LiNiO2"] - sp["NiO"]
    t = d @ (ps.spectra - sp["NiO"][:, None]) / (d @ d)
    return np.digitize(t, [0.2, 0.8])


def test_the_band_across_a_blurred_front_is_the_interface_of_the_two_phases():
    ps, _ = _scene([[(1, "NiO")], [(1, "LiNiO2")], CORE_SHELL, CORE_SHELL])
    labels = _labels_by_mix(ps)
    assert 50 < (labels == 1).sum() < 0.1 * labels.size  # a thin band
    (m,) = phases.interface_clusters(ps.spectra, labels, ps, energies_ev=E, energy_window=WINDOW)
    assert (m.cluster, m.between, m.particles) == (1, (0, 2), (2, 3))
    assert m.boundary_share >= 0.8 and 0.3 < m.mix < 0.7 and m.misfit < phases.INTERFACE_MAX_MISFIT
    assert m.separation >= CLUSTER_MIN_SEPARATION


def test_a_third_compound_at_the_front_is_a_phase():
    """Control: a 2 px layer of a compound whose spectrum is not a mix of the two, between core and shell."""
    layered = [(0.5, "NiO"), (0.6, "third"), (1, "LiNiO2")]
    ps, names = _scene([[(1, "NiO")], [(1, "LiNiO2")], layered, layered])
    labels = np.select([names == "NiO", names == "third"], [0, 1], 2)
    assert not phases.interface_clusters(ps.spectra, labels, ps, energies_ev=E, energy_window=WINDOW)
    # the same layer made of the mix: the interface (a band as thin as the blur is the resolution's)
    mixed = [(0.5, "NiO"), (0.6, "mix"), (1, "LiNiO2")]
    ps, names = _scene([[(1, "NiO")], [(1, "LiNiO2")], mixed, mixed])
    labels = np.select([names == "NiO", names == "mix"], [0, 1], 2)
    (m,) = phases.interface_clusters(ps.spectra, labels, ps, energies_ev=E, energy_window=WINDOW)
    assert m.cluster == 1


def test_a_rim_of_other_chemistry_and_a_thick_layer_are_phases():
    """Controls: a 3 px rim of the mix on NiO particles borders one phase only; a layer of the mix 5 px thick
    between core and shell is a region, wider than the blur."""
    rim = [(0.85, "NiO"), (1, "mix")]
    thick = [(0.4, "NiO"), (0.65, "mix"), (1, "LiNiO2")]
    for particles in ([rim, [(1, "LiNiO2")], rim, [(1, "NiO")]], [[(1, "NiO")], [(1, "LiNiO2")], thick, thick]):
        ps, names = _scene(particles)
        labels = np.select([names == "NiO", names == "mix"], [0, 1], 2)
        assert not phases.interface_clusters(ps.spectra, labels, ps, energies_ev=E, energy_window=WINDOW)


def test_one_phase_cut_in_three_has_no_interface():
    """Control: k-means cuts one phase's noise in three; the middle cluster lies between the others in space and
    spectrum alike, but the two are not distinct phases once it is shared out between them."""
    ps, _ = _scene([[(1, "NiO")]] * 4)
    labels = phases.kmeans(ps.spectra, energies_ev=E, n_clusters=3, energy_window=WINDOW).labels
    assert not phases.interface_clusters(ps.spectra, labels, ps, energies_ev=E, energy_window=WINDOW)


# ----------------------------------------------------------------------------- F3, through the pipeline


def _static_scene(layouts, shape=(200, 200), noise=0.01, seed=0):
    """A still OD stack: ``(cy, cx, radius, layers)`` per particle on a faint textured background."""
    sp = _spectra()
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    od = np.full((E.size,) + shape, 0.05) + 0.02 * np.sin(yy / 7.0) * np.cos(xx / 9.0)
    pre = 0.15 * (E / 8333.0) ** -3
    for cy, cx, r, layers in layouts:
        rho = np.hypot(yy - cy, xx - cx)
        u = np.clip(rho / r, 0, 1)
        thick = 0.8 * np.clip(r - rho + 0.5, 0, 1) * ((1 - u**2) ** 0.3 + 0.15) / 1.15
        mu = np.zeros(od.shape)
        lo = 0.0
        for umax, name in layers:
            sel = (u >= lo) & (u < umax) if umax < 1 else (u >= lo)
            mu[:, sel] = sp[name][:, None]
            lo = umax
        od += thick * (pre[:, None, None] + mu)
    od += np.random.default_rng(seed).normal(0, noise, od.shape)
    return Stack(od.astype(np.float32), E)


TWO_PHASES = [
    (45, 45, 20, [(1, "NiO")]),
    (45, 150, 20, [(1, "LiNiO2")]),
    (150, 45, 22, CORE_SHELL),
    (150, 150, 22, CORE_SHELL),
    (100, 100, 15, [(1, "NiO")]),
]


def test_a_front_clustered_on_its_own_over_a_window_is_said_and_not_counted_as_a_phase(tmp_path):
    """Two phases (NiO, LiNiO2; two NiO-core / LiNiO2-shell particles) in 3 clusters over 8330-8370 eV: the third
    cluster is the fronts' band (214 pixels). Before: separation 4.29 (>= 4, "distinct"), no note."""
    r = run_pipeline(_static_scene(TWO_PHASES), options=PipelineOptions(clusters=3, cluster_window=WINDOW))
    st = r.chemistry["settings"]
    (note,) = [n for n in r.notes if "is not a phase" in n]
    assert note.startswith("phase mapping: cluster 1 is not a phase") and "clusters 0 and 2" in note
    assert "particles 3, 4" in note and any(w in note for w in CONSOLE_NOTE_WORDS)
    assert st["interface_clusters"] == [1]
    assert st["separation"] >= CLUSTER_MIN_SEPARATION  # of the two phases, the band not among them
    t = cluster_table(r)
    assert (t["cluster_1_fraction"].fillna(0) < 0.2).all()  # a thin band: no particle is mostly "phase 1"
    write_results(r, tmp_path / "o", run_info={})
    back = read_results(tmp_path / "o")
    assert back.chemistry["settings"]["interface_clusters"] == [1]


# ----------------------------------------------------------------------------- F4


def test_a_rotation_not_fitted_is_nan_not_zero():
    """Two particles: a translation, no turn fitted; with four, the turn is fitted (the control)."""
    ref = np.array([[50.0, 50.0], [50.0, 150.0], [150.0, 50.0], [150.0, 150.0]])
    a = np.deg2rad(np.linspace(0, 1.5, 5))
    c = ref.mean(axis=0)
    P = np.stack([c + (ref - c) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) for t in a])
    four, _ = common_similarity(P, reference=ref, rotation=True)
    np.testing.assert_allclose(np.degrees(rotation_reported(four)), np.degrees(a), atol=1e-6)
    two, _ = common_similarity(P[:, :2], reference=ref[:2], rotation=True)
    assert np.isnan(rotation_reported(two)).all()
    assert (two["rotation_rad"] == 0).all()  # the value the rigid positions applied, kept for them
    plain, _ = common_similarity(P, reference=ref)
    assert "rotation_fitted" not in plain.attrs and (rotation_reported(plain) == 0).all()


@pytest.fixture(scope="module")
def two_particles():
    s = make_synthetic_stack("rigid", seed=0, n_particles=2, shape=(160, 160), radius_range=(12.0, 18.0), n_energies=30)
    return Stack(s.optical_density(), s.energies_ev)


def test_rotation_with_two_particles_is_nan_in_every_output_with_a_note(two_particles, tmp_path):
    from xanestrack import report

    r = run_pipeline(two_particles, options=PipelineOptions(rotation=True))
    assert r.tracks["particle"].nunique() == 2
    assert r.tracks["common_rotation_deg"].isna().all()  # read 0.000 in every frame
    (note,) = [n for n in r.notes if n.startswith("--rotation: the field's turn was not fitted in any frame")]
    assert "NaN" in note and any(w in note for w in CONSOLE_NOTE_WORDS)
    assert r.similarity["rotation_rad"].isna().all()
    write_results(r, tmp_path / "o", run_info={})
    back = read_results(tmp_path / "o")
    assert back.tracks["common_rotation_deg"].isna().all() and back.similarity["rotation_rad"].isna().all()
    assert pd.read_csv(tmp_path / "o" / "tracks.csv")["common_rotation_deg"].isna().all()
    assert "not fitted in any frame" in report.motion_figure(back).caption


def test_without_rotation_nothing_changes(two_particles):
    """Control: the same scene without --rotation: no column, no note; its positions as with it."""
    r = run_pipeline(two_particles, options=PipelineOptions())
    assert "common_rotation_deg" not in r.tracks
    assert not [n for n in r.notes if n.startswith("--rotation")]
    assert (r.similarity["rotation_rad"] == 0).all()
