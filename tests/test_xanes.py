import numpy as np
import pytest

from conftest import shared_data
from xanestrack import xanes
from xanestrack.spectra import ni_references, read_spectrum
from xanestrack.synth import edge_energy_of_fraction, ni_energy_grid


def _e50(e, mu, **kw):
    n = xanes.normalize(e, mu, **kw)
    v, _ = xanes.edge_energy(e, n.norm, e0_ev=n.e0_ev)
    return float(v)


def test_shipped_reference_edges_known_values():
    refs = ni_references()
    e = ni_energy_grid()
    # E(mu_norm = 0.5): NiO ~8340.0 eV, LiNiO2 ~8341.8 eV (pyxas references)
    assert abs(_e50(e, refs["NiO"](e)) - 8340.05) < 0.15
    assert abs(_e50(e, refs["LiNiO2"](e)) - 8341.81) < 0.15


def test_edge_energy_with_sloped_pre_edge_and_scaling():
    refs = ni_references()
    e = ni_energy_grid()
    mu = 0.37 * refs["NiO"](e) + 0.2 - 0.3 * (e - 8200) / 1000
    assert abs(_e50(e, mu) - 8340.05) < 0.15


def test_vectorised_normalisation_equals_per_spectrum_loop():
    refs = ni_references()
    e = ni_energy_grid()
    rng = np.random.default_rng(0)
    f = rng.random(12)
    mu = np.stack([(1 - fi) * refs["NiO"](e) + fi * refs["LiNiO2"](e) for fi in f], axis=1)
    mu = mu * rng.uniform(0.5, 2, 12) + rng.uniform(0, 0.3, 12) + rng.normal(0, 0.002, mu.shape)
    n = xanes.normalize(e, mu, e0_ev=8340.0)
    for j in range(12):
        nj = xanes.normalize(e, mu[:, j], e0_ev=8340.0)
        assert np.allclose(n.norm[:, j], nj.norm, atol=1e-5)
    v, _ = xanes.edge_energy(e, n.norm, e0_ev=8340.0)
    assert np.all(np.abs(v - edge_energy_of_fraction(f)) < 0.2)


def test_edge_energy_methods_order_and_flags():
    refs = ni_references()
    e = ni_energy_grid()
    mu = np.stack([refs["NiO"](e), refs["LiNiO2"](e), np.full(e.size, np.nan), np.zeros(e.size)], axis=1)
    n = xanes.normalize(e, mu, e0_ev=8340.0)
    assert n.flags[2] & xanes.FLAG_NONFINITE
    assert n.flags[3] & xanes.FLAG_LOW_STEP
    for method in ("half", "derivative", "whiteline"):
        v, fl = xanes.edge_energy(e, n.norm, method=method, e0_ev=8340.0)
        assert v[1] > v[0], method  # Ni3+ above Ni2+
        assert np.isnan(v[2]) and np.isnan(v[3])
        assert fl[2] and fl[3]


def test_linear_combination_fit_recovers_fractions():
    refs = ni_references()
    e = ni_energy_grid()
    f = np.array([0.0, 0.3, 0.75, 1.0])
    norm = np.stack([(1 - fi) * refs["NiO"](e) + fi * refs["LiNiO2"](e) for fi in f], axis=1)
    r = xanes.linear_combination_fit(e, norm, refs, e0_ev=8340.0)
    assert r.names == ("NiO", "LiNiO2")
    assert np.allclose(r.fractions[1], f, atol=1e-3)
    assert np.allclose(r.fractions.sum(axis=0), 1.0, atol=1e-6)
    # non-negativity: a spectrum beyond LiNiO2 is clipped to pure LiNiO2
    beyond = 1.3 * refs["LiNiO2"](e) - 0.3 * refs["NiO"](e)
    r2 = xanes.linear_combination_fit(e, beyond[:, None], refs, e0_ev=8340.0)
    assert np.all(r2.fractions >= 0) and abs(r2.fractions[1, 0] - 1.0) < 1e-6


def test_bad_input_messages():
    e = ni_energy_grid(20)
    with pytest.raises(ValueError, match="energy axis first"):
        xanes.normalize(e, np.zeros((5, 20)))
    with pytest.raises(ValueError, match="at least 8 energies"):
        xanes.normalize(e[:4], np.zeros(4))
    with pytest.raises(ValueError, match="post-edge range"):
        xanes.normalize(e[:12], np.linspace(0, 1, 12))


def test_mn_references_edges_increase_with_oxidation_state():
    folder = shared_data("spectra", "xasdatalibrary", "Mn")
    edges = {}
    for name in ("MnO", "Mn3O4", "Mn2O3", "MnO2"):
        sp = read_spectrum(folder / f"{name}_rt_01.xdi")
        edges[name] = _e50(sp.energies_ev, sp.mu, pre_range=(-40, -12), post_range=(35, None))
    vals = [edges[n] for n in ("MnO", "Mn3O4", "Mn2O3", "MnO2")]
    assert all(a < b for a, b in zip(vals, vals[1:])), edges


def test_ni_foil_e0_energy_calibration():
    path = shared_data("spectra", "larch_nio", "Ni_foil_reference_merged_mu.txt")
    sp = read_spectrum(path)
    e0 = xanes.find_e0(sp.energies_ev, sp.mu)
    assert abs(e0 - 8333.0) < 1.5
