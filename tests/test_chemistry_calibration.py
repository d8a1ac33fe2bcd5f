"""Energy calibration: a known artificial shift is recovered; the larch Ni foil gives E0 near 8333 eV."""

import json

import numpy as np
import pytest

from conftest import shared_data
from xanestrack.chemistry.calibration import (
    apply_energy_shift,
    calibrate_from_reference,
    calibrate_from_region,
    reference_e0,
)
from xanestrack.spectra import ni_references, read_spectrum
from xanestrack.synth import ni_energy_grid

NI_FOIL_E0 = 8333.0


def _foil():
    return read_spectrum(shared_data("spectra", "larch_nio", "Ni_foil_reference_merged_mu.txt"))


def test_larch_foil_e0_near_tabulated_value():
    foil = _foil()
    e0 = reference_e0(foil.energies_ev, foil.mu)
    assert abs(e0 - NI_FOIL_E0) < 0.3, e0  # measured 8332.99


def test_derivative_recovers_an_artificial_shift_of_the_foil():
    foil = _foil()
    cal = calibrate_from_reference(foil.energies_ev + 2.3, foil.mu, known_e0_ev=NI_FOIL_E0, source="foil +2.3 eV")
    assert cal.method == "derivative"
    assert abs(cal.shift_ev + 2.3) < 0.1, cal.shift_ev  # measured -2.287
    assert np.allclose(cal.apply(foil.energies_ev + 2.3), foil.energies_ev + 2.3 + cal.shift_ev)


@pytest.mark.parametrize("grid_name", ["fxi", "synth"])
def test_xcorr_recovers_a_shift_on_a_txm_grid_with_noise(grid_name):
    """The dense foil as the standard; the 'measured' foil shifted by +2.3 eV, resampled on a TXM grid, noisy.

    Measured (10 realisations, noise 0.4 % of the edge step): max |error| 0.06 eV (FXI 1 eV grid),
    0.05 eV (0.5 eV grid).
    """
    foil = _foil()
    if grid_name == "fxi":
        grid = np.loadtxt(shared_data("spectra", "pyxas", "Ni_eng_list_from_stetef_repo.txt")) * 1000.0
    else:
        grid = ni_energy_grid()
    rng = np.random.default_rng(1)
    step = np.ptp(foil.mu)
    errors = []
    for _ in range(10):
        measured = np.interp(grid - 2.3, foil.energies_ev, foil.mu) + rng.normal(0, 0.004 * step, grid.size)
        cal = calibrate_from_reference(grid, measured, standard=foil, known_e0_ev=NI_FOIL_E0)
        assert cal.method == "xcorr"
        errors.append(cal.shift_ev + 2.3)
    assert np.max(np.abs(errors)) < 0.1, errors


def test_xcorr_recovers_athenas_energy_shift_of_a_raw_nio_scan():
    """larch's NiO.prj: scan NiO.000 (raw mono energies) was aligned by Athena with eshift = +1.252 eV
    (from its simultaneously measured Ni foil); matching it to the merged, aligned NiO gives the same shift."""
    raw = np.loadtxt(shared_data("spectra", "larch_nio", "NiO_scan000_raw.txt"))
    merged = read_spectrum(shared_data("spectra", "larch_nio", "NiO_merged_mu.txt"))
    cal = calibrate_from_reference(raw[:, 0], raw[:, 3], standard=merged, source="NiO.000")
    assert abs(cal.shift_ev - 1.252) < 0.1, cal.shift_ev  # measured 1.238


def test_xcorr_on_shipped_references_no_shared_data_needed():
    nio = ni_references()["NiO"]
    grid = np.arange(8250.0, 8450.0, 0.8)
    measured = 0.4 * nio(grid + 1.7) + 0.1  # the axis reads 1.7 eV low; another scale and offset
    cal = calibrate_from_reference(grid, measured, standard=nio)
    assert abs(cal.shift_ev - 1.7) < 0.05, cal.shift_ev
    assert abs(cal.record()["scale"] - 0.4) < 0.05


def test_region_calibration_and_record():
    cal = calibrate_from_region(8341.2, known_e0_ev=8340.05, source="particle 3 (pristine NiO), E50")
    assert cal.shift_ev == pytest.approx(-1.15)
    rec = cal.record()
    assert rec["method"] == "region" and rec["source"].startswith("particle 3")
    json.dumps(rec)
    assert np.allclose(apply_energy_shift([8300.0, 8400.0], -1.15), [8298.85, 8398.85])
    nio = ni_references()["NiO"]
    x = calibrate_from_reference(nio.energies_ev, nio.mu, standard=nio, known_e0_ev=8342.5, source="NiO")
    json.dumps(x.record())


def test_bad_input_is_refused_with_a_clear_message():
    nio = ni_references()["NiO"]
    e, mu = nio.energies_ev, nio.mu
    with pytest.raises(ValueError, match="known_e0_ev"):
        calibrate_from_reference(e, mu)
    with pytest.raises(ValueError, match="standard"):
        calibrate_from_reference(e, mu, method="xcorr")
    with pytest.raises(ValueError, match="method"):
        calibrate_from_reference(e, mu, method="fourier", known_e0_ev=8333.0)
    with pytest.raises(ValueError, match="same length"):
        calibrate_from_reference(e, mu[:-1], known_e0_ev=8333.0)
    with pytest.raises(ValueError, match="NaN"):
        calibrate_from_reference(e, np.where(e > 8400, np.nan, mu), known_e0_ev=8333.0)
    short = (e[(e > 8320) & (e < 8360)], mu[(e > 8320) & (e < 8360)])
    with pytest.raises(ValueError, match="standard covers"):
        calibrate_from_reference(e, mu, standard=short)
    with pytest.raises(ValueError, match="edge of search_ev"):
        calibrate_from_reference(e, mu, standard=(e + 8.0, mu), search_ev=(-3.0, 3.0))
    with pytest.raises(ValueError, match="finite"):
        calibrate_from_region(float("nan"), known_e0_ev=8340.0)
