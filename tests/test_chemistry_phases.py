"""Phase mapping: known chemistries in known regions are recovered by k-means and NMF."""

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from conftest import shared_data
from xanestrack import xanes
from xanestrack.chemistry import phases
from xanestrack.spectra import ni_references, read_spectrum
from xanestrack.synth import ni_energy_grid

E = ni_energy_grid()
SHAPE = (48, 48)
RADIUS = 22
WINDOW = (8320.0, 8380.0)


def _region_labels(kind):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    c = (SHAPE[0] - 1) / 2
    if kind == "split":  # a tilted straight boundary
        return ((xx - c) + 0.3 * (yy - c) > 0).astype(int)
    if kind == "core":  # an off-centre core
        return (np.hypot(yy - c - 3, xx - c + 2) >= 11).astype(int)
    if kind == "bands":
        return np.digitize(yy, [16, 32])
    raise ValueError(kind)


def _scan(spectra, layouts, *, seed=1, counts=5000.0, smoothing_px=1.0):
    """Normalised per-pixel spectra of particles whose regions hold the given spectra.

    ``layouts``: per particle, a (h, w) int map of the index into ``spectra`` (k, n).
    Returns (norm maps, masks, true label maps), normalised as the pipeline does: every
    particle on its own E0 (of its mean spectrum), 1 px smoothing of the frames.
    """
    rng = np.random.default_rng(seed)
    mask = disc(SHAPE, RADIUS)
    norms, masks = [], []
    for lab in layouts:
        w = np.stack([lab == j for j in range(len(spectra))]).astype(float)
        od, _ = pixel_od(E, spectra, w, dome(SHAPE, RADIUS, 0.9), counts=counts, smoothing_px=smoothing_px, rng=rng)
        e0 = xanes.normalize(E, od[:, mask].mean(axis=1)).e0_ev
        full = np.full(od.shape, np.nan, np.float32)
        full[:, mask] = xanes.normalize(E, od[:, mask], e0_ev=e0).norm
        norms.append(full)
        masks.append(mask)
    return norms, masks, list(layouts)


def _e50(spectrum):
    v, _ = xanes.edge_energy(E, np.asarray(spectrum, float), e0_ev=8340.0)
    return float(v)


@pytest.fixture(scope="module")
def two_phases():
    refs = ni_references()
    spectra = np.stack([refs["NiO"](E), refs["LiNiO2"](E)])
    layouts = [_region_labels("split"), _region_labels("core"), np.ones(SHAPE, int)]
    norms, masks, truth = _scan(spectra, layouts)
    px = phases.collect_spectra(norms, masks, particles=[3, 7, 9])
    true = np.concatenate([t[m] for t, m in zip(truth, masks, strict=True)])
    return px, true, spectra, truth, masks


def test_kmeans_recovers_two_phases_in_known_regions(two_phases):
    px, true, spectra, truth, masks = two_phases
    r = phases.kmeans(px.spectra, energies_ev=E, n_clusters=2, energy_window=WINDOW, seed=0)
    agreement = float((r.labels == true).mean())
    assert agreement >= 0.95, agreement  # measured 1.000 (3 particles, 3792 pixels)
    # cluster 0 is the lower edge (NiO), its mean spectrum has NiO's edge energy
    assert abs(_e50(r.mean_spectra[0]) - _e50(spectra[0])) < 0.3
    assert abs(_e50(r.mean_spectra[1]) - _e50(spectra[1])) < 0.3
    assert r.mean_spectra.shape == (2, E.size) and r.centres.shape == (2, r.energies_ev.size)
    # per-particle maps and fractions
    maps = phases.to_maps(r.labels, px, fill=-1)
    assert set(maps) == {3, 7, 9}
    for pid, t, m in zip((3, 7, 9), truth, masks, strict=True):
        assert np.all(maps[pid][~m] == -1)
        assert (maps[pid][m] == t[m]).mean() >= 0.95
    table = phases.cluster_fractions(r.labels, px.particle, n_clusters=2)
    assert list(table.columns) == ["particle", "cluster", "n_pixels", "fraction"]
    assert np.allclose(table.groupby("particle")["fraction"].sum(), 1.0)
    for pid, t, m in zip((3, 7, 9), truth, masks, strict=True):
        got = table[(table.particle == pid) & (table.cluster == 1)]["fraction"].item()
        assert abs(got - t[m].mean()) < 0.03, (pid, got, t[m].mean())


def test_nmf_recovers_two_phases_in_known_regions(two_phases):
    px, true, spectra, _, _ = two_phases
    r = phases.nmf(px.spectra, energies_ev=E, n_components=2, energy_window=WINDOW, seed=0)
    agreement = float((np.argmax(r.fractions, axis=0) == true).mean())
    assert agreement >= 0.95, agreement  # measured 1.000
    # the components are the two phases (their edges, on the window's energies)
    ew = r.energies_ev
    for j in range(2):
        v, _ = xanes.edge_energy(ew, r.components[j], e0_ev=8340.0, window=(-15.0, 20.0))
        assert abs(float(v) - _e50(spectra[j])) < 0.4, j
    assert np.allclose(np.nansum(r.fractions, axis=0), 1.0)
    rms = float(np.sqrt(np.mean((r.fractions[1] - true) ** 2)))
    assert rms < 0.2, rms  # measured 0.11: the 1 px smoothing mixes the boundaries


def test_kmeans_three_phases_with_a_mixture():
    refs = ni_references()
    a, b = refs["NiO"](E), refs["LiNiO2"](E)
    spectra = np.stack([a, 0.5 * (a + b), b])  # the middle one is 1 eV from either
    layouts = [_region_labels("split"), 1 + _region_labels("split").T, _region_labels("bands")]
    norms, masks, truth = _scan(spectra, layouts, seed=2)
    px = phases.collect_spectra(norms, masks)
    true = np.concatenate([t[m] for t, m in zip(truth, masks, strict=True)])
    r = phases.kmeans(px.spectra, energies_ev=E, n_clusters=3, energy_window=WINDOW, seed=0)
    agreement = float((r.labels == true).mean())
    assert agreement >= 0.95, agreement  # measured 1.000


def test_kmeans_three_measured_chemistries():
    """NiO, LiNiO2 and a measured Ni(OH)2 (XAS Data Library): three real spectra in known regions."""
    path = shared_data("spectra", "xasdatalibrary", "Ni", "NiOH2_rt_01.xdi")
    s = read_spectrum(path)
    n = xanes.normalize(s.energies_ev, s.mu)
    refs = ni_references()
    spectra = np.stack([refs["NiO"](E), np.interp(E, s.energies_ev, n.norm), refs["LiNiO2"](E)])
    layouts = [_region_labels("bands"), 2 - _region_labels("bands").T, np.where(_region_labels("core") == 0, 1, 0)]
    norms, masks, truth = _scan(spectra, layouts, seed=3)
    px = phases.collect_spectra(norms, masks)
    true = np.concatenate([t[m] for t, m in zip(truth, masks, strict=True)])
    r = phases.kmeans(px.spectra, energies_ev=E, n_clusters=3, energy_window=WINDOW, seed=0)
    # cluster numbering follows the edge position, not our numbering: pair by majority
    pairs = {j: np.bincount(true[r.labels == j], minlength=3).argmax() for j in range(3)}
    assert sorted(pairs.values()) == [0, 1, 2]
    agreement = float((np.vectorize(pairs.get)(r.labels) == true).mean())
    assert agreement >= 0.95, agreement  # measured 0.968


def test_pca_scree_counts_the_phases():
    refs = ni_references()
    a, b = refs["NiO"](E), refs["LiNiO2"](E)
    rng = np.random.default_rng(0)
    f = rng.random(300)
    two = np.outer(a, 1 - f) + np.outer(b, f)
    r = phases.pca(two, energies_ev=E, n_components=4, energy_window=WINDOW)
    assert r.explained_variance_ratio[0] > 0.999
    c = np.stack([refs["NiO"](E + 3.0)] * 300, axis=1)
    g = rng.dirichlet([1, 1, 1], 300).T
    three = np.outer(a, g[0]) + np.outer(b, g[1]) + c * g[2]
    r3 = phases.pca(three, energies_ev=E, n_components=4, energy_window=WINDOW)
    assert r3.explained_variance_ratio[:2].sum() > 0.999 and r3.explained_variance_ratio[1] > 0.01
    # scores reconstruct the data
    rec = r3.mean[:, None] + r3.components.T @ r3.scores
    sel = (E >= WINDOW[0]) & (E <= WINDOW[1])
    assert np.allclose(rec[:, :], three[sel], atol=1e-6)
    assert np.all(np.diff(r3.explained_variance_ratio) <= 0)


def test_results_are_deterministic_for_a_seed(two_phases):
    px = two_phases[0]
    sub = px.spectra[:, ::4]
    r1 = phases.kmeans(sub, energies_ev=E, n_clusters=2, seed=5)
    r2 = phases.kmeans(sub, energies_ev=E, n_clusters=2, seed=5)
    assert np.array_equal(r1.labels, r2.labels)
    n1 = phases.nmf(sub, energies_ev=E, n_components=2, energy_window=WINDOW, seed=5)
    n2 = phases.nmf(sub, energies_ev=E, n_components=2, energy_window=WINDOW, seed=5)
    assert np.array_equal(n1.weights, n2.weights)


def test_to_maps_round_trip():
    rng = np.random.default_rng(0)
    norms = [rng.random((10, 5, 6)), rng.random((10, 4, 4))]
    norms[0][3, 1, 1] = np.nan  # left out
    masks = [np.ones((5, 6), bool), np.eye(4, dtype=bool)]
    px = phases.collect_spectra(norms, masks, particles=[4, 2])
    assert px.spectra.shape == (10, 30 - 1 + 4)
    maps = phases.to_maps(px.spectra, px)
    assert np.isnan(maps[4][:, 1, 1]).all()
    m = masks[0].copy()
    m[1, 1] = False
    assert np.allclose(maps[4][:, m], norms[0][:, m])
    assert np.allclose(maps[2][:, masks[1]], norms[1][:, masks[1]])


def test_bad_input_is_refused_with_a_clear_message():
    x = np.random.default_rng(0).random((20, 50))
    e = np.arange(20.0)
    y = x.copy()
    y[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        phases.kmeans(y, energies_ev=e, n_clusters=2)
    with pytest.raises(ValueError, match="energy_window"):
        phases.pca(x, energies_ev=e, energy_window=(100.0, 200.0))
    with pytest.raises(ValueError, match="n_clusters"):
        phases.kmeans(x, energies_ev=e, n_clusters=0)
    with pytest.raises(ValueError, match="n_energies, n_pixels"):
        phases.nmf(x, energies_ev=e[:-1], n_components=2)
    with pytest.raises(ValueError, match="init"):
        phases.nmf(x, energies_ev=e, n_components=2, init="random")
    with pytest.raises(ValueError, match="one mask per map"):
        phases.collect_spectra([x.reshape(20, 5, 10)], [])
    with pytest.raises(ValueError, match="do not match"):
        phases.collect_spectra([x.reshape(20, 5, 10)], [np.ones((5, 9), bool)])
