"""The bound ``benchmarks/bench_stress_limits.py`` quotes for smoothing with the scene model's own drift prior.

Its ``crlb_drift_px`` is the posterior variance of a Gaussian motion (the stress model's smoothed random walk)
observed with each frame's Cramer-Rao variance, each track's mean removed as the RMS in ``evaluate_tracking`` is.
Checked here against the error of that posterior's mean on draws of the model itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stress_limits.py"


@pytest.fixture(scope="module")
def limits():
    spec = importlib.util.spec_from_file_location("bench_stress_limits", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _draw(rng, n, step_sd, smooth):
    # as synth_stress._drift draws a particle's own motion
    w = np.cumsum(rng.normal(0, step_sd, n))
    w = ndimage.gaussian_filter1d(w, smooth, mode="nearest")
    return w - w[0]


def test_the_drift_prior_is_the_covariance_of_the_scene_models_drift(limits):
    rng = np.random.default_rng(0)
    n, step, smooth = 30, 0.6, 3.0
    draws = np.array([_draw(rng, n, step, smooth) for _ in range(20000)])
    cov = limits._drift_prior(n, step, smooth)
    emp = draws.T @ draws / len(draws)
    assert np.allclose(cov[0], 0.0) and np.allclose(cov[:, 0], 0.0)  # frame 0 is the origin
    assert np.abs(emp - cov).max() < 0.05 * cov.max()
    # smoothed, not a random walk of its mean squared step: the excursion is the walk's, the steps far smaller
    steps = np.mean(np.diff(draws, axis=1) ** 2)
    assert steps < 0.25 * step**2 and cov[-1, -1] > 0.5 * step**2 * n


def test_the_posterior_variance_is_the_error_of_the_best_smoother_on_the_models_draws(limits):
    rng = np.random.default_rng(1)
    n, step, smooth = 40, 0.6, 3.0
    var = np.where(np.arange(n) < 15, 0.5, 0.02)  # faint before the edge, sharp after
    prior = limits._drift_prior(n, step, smooth)
    bound = limits._gp_variance(var, prior)
    c = prior + 1e4  # the particle's place unknown: only its motion is measured
    gain = c @ np.linalg.inv(c + np.diag(var))
    errs = []
    for _ in range(4000):
        truth = _draw(rng, n, step, smooth) + rng.normal(0, 30.0)
        est = gain @ (truth + rng.normal(0, np.sqrt(var)))
        e = est - truth
        errs.append((e - e.mean()) ** 2)
    mse = np.mean(errs, axis=0)
    assert np.allclose(mse, bound, rtol=0.1, atol=2e-3), (mse, bound)
    # the frames measured sharply are known to their noise or better; the faint ones far better than their noise
    assert np.all(bound[15:] <= 0.02 * 1.05) and np.all(bound[:15] < 0.5 * 0.5)
    # with no motion (a particle fixed to the matrix), nothing is left but the constant
    assert np.allclose(limits._gp_variance(var, np.zeros((n, n))), 0.0, atol=1e-4)
