"""E0 and the foil calibration on energy grids whose step changes (probe r45 "grids", findings 2 and 3).

``find_e0``'s 3-point running mean counted points: across a change of step it averaged a coarse and a fine neighbour,
and E0 sat where the step changes (0.5 eV to 8339 eV, then 4 eV: 8338.5-8338.6 eV for every mix). A Ni foil measured
every 2 eV to 8336 eV, every 0.5 eV after, had its derivative's maximum on its second rise (8345.58 eV): the axis
shifted by -12.6 eV, every E50 12.5 eV low, passed by the median step near that maximum (0.5 eV).
"""

from pathlib import Path

import numpy as np
import pytest

from xanestrack import synth, xanes
from xanestrack.chemistry.calibration import calibrate_from_reference
from xanestrack.chemistry.runnotes import UNCALIBRATED_NOTE
from xanestrack.errors import XanestrackError
from xanestrack.pipeline import run_pipeline
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack

FOIL = Path("/work/shared/data/spectra/larch_nio/Ni_foil_reference_merged_mu.txt")
DENSE = np.arange(8250.0, 8450.0, 0.02)


def _grid(below, change, above):
    """10 eV to 8320 eV, ``below`` eV to ``change``, ``above`` eV to 8400 eV, 10 eV to 8680 eV."""
    return np.r_[
        np.arange(8200.0, 8320.0, 10.0),
        np.arange(8320.0, change, below),
        np.arange(change, 8400.0, above),
        np.arange(8400.0, 8681.0, 10.0),
    ]


def _mix(f):
    refs = ni_references()
    return lambda e: (1 - f) * refs["NiO"](e) + f * refs["LiNiO2"](e)


@pytest.mark.parametrize("grid", [(2.0, 8339.0, 0.25), (1.0, 8340.0, 0.25)])
def test_e0_on_a_grid_whose_step_changes_is_the_dense_grids(grid):
    """Coarse to where the edge rises, fine over its derivative's maximum: the mix f = 0.5 had E0 at the change
    (8339.19 / 8340.18 eV, 6.9 / 5.9 eV below the dense grid's); now within 0.36 eV for every mix."""
    e = _grid(*grid)
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        mu = _mix(f)
        assert abs(xanes.find_e0(e, mu(e)) - xanes.find_e0(DENSE, mu(DENSE))) < 0.5, f


def test_e0_is_not_pinned_where_a_coarse_step_begins():
    """0.5 eV to 8339 eV, then 4 eV (the probe's grid): 8338.53-8338.59 eV for every mix (3.5-8.5 eV below the
    dense grid's 8342.1-8347.1 eV); now 8340.6-8342.2 eV, as far as 4-eV steps at the maximum allow (a uniform
    4-eV grid: up to 4.3 eV below). 0.25 eV to 8341 eV, then 2 eV: 8340.79-8340.81 eV before, now 8342.4-8345.2."""
    for grid, most in (((0.5, 8339.0, 4.0), 5.5), ((0.25, 8341.0, 2.0), 3.0)):
        e = _grid(*grid)
        got = [xanes.find_e0(e, _mix(f)(e)) for f in (0.0, 0.5, 1.0)]
        assert min(got) > grid[1] + 1.0 and got[2] > got[0] + 1.5, got
        for f, g in zip((0.0, 0.5, 1.0), got, strict=True):
            assert abs(g - xanes.find_e0(DENSE, _mix(f)(DENSE))) < most, (grid, f)


def test_e0_on_uniform_grids_is_as_before():
    """The control: on equal steps, and on the default grid (equal steps where the edge is), nothing changes
    (values of the 3-point running mean, seen before the change)."""
    was = {
        "uniform 0.5": (8342.541, 8346.347, 8346.878),
        "default": (8342.541, 8346.347, 8346.878),
    }
    for name, e in (("uniform 0.5", np.arange(8200.0, 8680.0, 0.5)), ("default", synth.ni_energy_grid())):
        for f, before in zip((0.0, 0.5, 1.0), was[name], strict=True):
            assert xanes.find_e0(e, _mix(f)(e)) == pytest.approx(before, abs=1e-3), (name, f)
    # equal steps: the running mean to the last bit (a dense 0.02-eV grid's E0 moved 0.36 eV with a sum's rounding)
    for e in (np.arange(8200.0, 8680.0, 1.0), DENSE):
        y = _mix(0.3)(e)
        mean = np.convolve(np.pad(y, 1, mode="edge"), np.ones(3) / 3, mode="valid")
        np.testing.assert_array_equal(xanes._smooth3(e, y), mean)


def _foil_on(grid):
    d = np.loadtxt(FOIL)
    return grid, np.interp(grid, d[:, 0], d[:, 1])


def _probe_grid():
    """The probe's: 2 eV to 8336 eV, 0.5 eV to 8360 eV, then 2 eV."""
    return np.r_[np.arange(8250.0, 8336.0, 2.0), np.arange(8336.0, 8360.0, 0.5), np.arange(8360.0, 8480.0, 2.0)]


def test_foil_coarse_where_its_edge_rises_is_refused_not_shifted_12_ev(tmp_path):
    """The probe's grid: shifted by -12.576 eV (its maximum on the second rise, 8345.58 eV, where the steps are
    0.5 eV), every E50 12.5 eV low; now refused: 2-eV steps where its edge rises. So is 5 eV to 8335 eV (-2.56 eV
    applied before, the maximum now on the second rise)."""
    from xanestrack.cli import _calibrate_stack

    e, mu = _foil_on(_probe_grid())
    cal = calibrate_from_reference(e, mu, known_e0_ev=8333.0)
    assert cal.record()["rise_largest_step_ev"] == pytest.approx(2.0)
    assert cal.record()["rise_largest_step_at_ev"] == [8330.0, 8332.0]
    stack = Stack(np.ones((60, 8, 8), np.float32), np.linspace(8200.0, 8680.0, 60))
    np.savetxt(tmp_path / "foil.txt", np.c_[e, mu])
    with pytest.raises(XanestrackError, match=r"too coarse where its edge rises: 2 eV from 8330.0 to 8332.0 eV"):
        _calibrate_stack(stack, tmp_path / "foil.txt", 8333.0, None)
    g = np.r_[np.arange(8250.0, 8335.0, 5.0), np.arange(8335.0, 8360.0, 0.5), np.arange(8360.0, 8480.0, 2.0)]
    np.savetxt(tmp_path / "foil5.txt", np.c_[_foil_on(g)])
    with pytest.raises(XanestrackError, match=r"5 eV from 8330.0 to 8335.0 eV.*shift the energies by -12.6 eV"):
        _calibrate_stack(stack, tmp_path / "foil5.txt", 8333.0, None)


@pytest.mark.parametrize("start", [8200.0, 8325.0, 8331.0])
def test_foil_fine_where_its_edge_rises_is_calibrated_as_before(tmp_path, start):
    """The controls: every 0.5 eV (shift -0.12 eV, as before), and 10 eV to 8325 / 8331 eV then every 0.5 eV."""
    from xanestrack.cli import _calibrate_stack

    g = np.r_[np.arange(8200.0, start, 10.0), np.arange(start, 8480.0, 0.5)]
    np.savetxt(tmp_path / "foil.txt", np.c_[_foil_on(g)])
    stack = Stack(np.ones((60, 8, 8), np.float32), np.linspace(8200.0, 8680.0, 60))
    _, rec, _ = _calibrate_stack(stack, tmp_path / "foil.txt", 8333.0, None)
    assert rec["shift_ev"] == pytest.approx(-0.12, abs=0.02)


def test_foil_every_1_ev_is_still_refused(tmp_path):
    """The control: a uniform 1-eV grid (its maximum on the second rise, 8345.3 eV) is refused by the median step
    near the maximum, as before."""
    from xanestrack.cli import _calibrate_stack

    np.savetxt(tmp_path / "foil.txt", np.c_[_foil_on(np.arange(8200.0, 8480.0, 1.0))])
    stack = Stack(np.ones((60, 8, 8), np.float32), np.linspace(8200.0, 8680.0, 60))
    with pytest.raises(XanestrackError, match=r"measured every 1 eV near its edge, too coarse"):
        _calibrate_stack(stack, tmp_path / "foil.txt", 8333.0, None)


@pytest.fixture(scope="module")
def small():
    s = synth.make_synthetic_stack(
        "default", seed=1, n_particles=3, shape=(160, 160), n_energies=48, radius_range=(12.0, 18.0)
    )
    return s.optical_density(), s.energies_ev


def _calibrated(od, e, shift):
    rec = {"method": "derivative", "source": "foil.txt", "shift_ev": shift}
    return Stack(od, e + shift, metadata={"energy_calibration": rec})


def test_e50s_far_from_the_references_after_a_calibration_are_said(small):
    """A calibration 12.6 eV off (the foil's second rise) said nothing but that the references do not describe the
    particles' spectra; the E50 check of an axis not calibrated now runs after a calibration too."""
    od, e = small
    result = run_pipeline(_calibrated(od, e, -12.576))
    (note,) = [n for n in result.notes if "on the axis calibrated from foil.txt" in n]
    assert "below the references' half-step energies" in note and "shifted by -12.58 eV" in note
    assert not any(n.startswith(UNCALIBRATED_NOTE) for n in result.notes)
    # the control: a calibration that leaves the axis right (the default scene's E50s within 8340.0-8341.8 eV)
    result = run_pipeline(_calibrated(od, e, -0.117))
    assert not any("on the axis calibrated from" in n for n in result.notes)


def test_derivative_map_peak_refined_for_the_steps_either_side():
    """Probe r52 "audit", finding 2: the per-pixel derivative map refined its peak by the equal-step parabola: on a
    grid going from 0.5-eV to 2-eV steps at the peak, a noise-free arctan edge's derivative peak was put up to 0.72 eV
    off. The parabola through the three points as they lie: within 0.08 eV (the error of the derivative itself on those
    steps); on a uniform grid as before."""
    uneven = np.r_[np.arange(8300, 8342.3, 0.5), np.arange(8342.5, 8400, 2.0)]
    uniform = np.arange(8300.0, 8400.0, 1.0)
    truth = np.arange(8341.6, 8343.41, 0.2)
    for grid, tol in ((uneven, 0.08), (uniform, 0.03)):
        mu = 0.5 + np.arctan((grid[:, None] - truth[None]) / 1.5) / np.pi
        got, _ = xanes.edge_energy(grid, mu, method="derivative", e0_ev=8342.5)
        assert np.abs(got - truth).max() < tol, (grid[:3], got - truth)
