"""Robust statistics (xanestrack.robust)."""

import numpy as np
import pytest

from xanestrack.robust import MAD_TO_SIGMA, robust_sigma


def test_sigma_of_a_normal_sample_with_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, 20000)
    x[:2000] = 1e6  # 10 % wild outliers move it little
    assert robust_sigma(x) == pytest.approx(2.0, rel=0.15)
    assert robust_sigma(x[2000:]) == pytest.approx(2.0, rel=0.03)


def test_known_answer_and_centre():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, |x - 3| = 2 1 0 1 97: median 1
    assert robust_sigma(x) == pytest.approx(MAD_TO_SIGMA)
    d = np.array([0.5, 1.0, 2.0])  # distances: deviations from 0
    assert robust_sigma(d, centre=0.0) == pytest.approx(MAD_TO_SIGMA * 1.0)
    assert MAD_TO_SIGMA == pytest.approx(1 / 0.6744897501960817, rel=1e-4)  # 1 / Phi^-1(3/4)
