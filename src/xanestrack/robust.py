"""Robust statistics shared by the stages: the scale of a sample with outliers."""

from __future__ import annotations

import numpy as np

__all__ = ["MAD_TO_SIGMA", "robust_sigma"]

#: the median absolute deviation of a normal distribution times this is its standard deviation
MAD_TO_SIGMA = 1.4826


def robust_sigma(x, *, centre=None):
    """Standard deviation estimated from the median absolute deviation: ``1.4826 median(|x - centre|)``.

    Parameters
    ----------
    x : array_like
        The sample (flattened); outliers up to half of it do not move the estimate.
    centre : float, optional
        The deviations are taken from this value (default: the median of ``x``); 0 for
        a sample of distances or absolute residuals.

    Returns
    -------
    float (NaN for an empty sample)
    """
    x = np.asarray(x)
    c = np.median(x) if centre is None else centre
    return MAD_TO_SIGMA * np.median(np.abs(x - c))
