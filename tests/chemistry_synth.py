"""Synthetic per-pixel TXM-XANES data with known chemistry, for the chemistry tests.

A particle map is a mix of reference spectra with known weights per pixel; its optical
density is ``t * (pre(E) + sum_j w_j mu_j(E))`` (``t`` the edge step), measured with
Poisson photon noise on the sample and on the averaged flat (as in ``xanestrack.synth``,
without the frame-to-frame source fluctuation that the pipeline's local background removes).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def disc(shape, radius, centre=None):
    """A disc mask (h, w) bool."""
    h, w = shape
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if centre is None else centre
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - cy, xx - cx) <= radius


def dome(shape, radius, peak):
    """Edge-step (thickness) map of a sphere-like particle: peak at the centre, 0 outside."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) / radius
    return peak * (np.sqrt(np.clip(1 - r**2, 0, 1)) * 0.7 + 0.3) * (r <= 1)


def pixel_od(
    energies, spectra, weights, step, *, counts=5000.0, n_ref=10, pre_edge_level=0.25, smoothing_px=0.0, rng=None
):
    """Noisy and noise-free optical density (n_energies, h, w) of a particle.

    Parameters
    ----------
    energies : (n,) eV
    spectra : (k, n) normalised reference spectra at ``energies``
    weights : (k, h, w) weight of each spectrum per pixel
    step : (h, w) edge step (OD); the pre-edge is ``pre_edge_level * step * (E/8333)^-3``
    counts : incident counts per pixel per frame; the flat averages ``n_ref`` exposures
    smoothing_px : Gaussian smoothing of every frame (the pipeline smooths by 1 px)
    """
    rng = np.random.default_rng(0) if rng is None else rng
    e = np.asarray(energies, float)
    mu = np.tensordot(np.asarray(spectra, float).T, np.asarray(weights, float), axes=1)  # (n, h, w)
    pre = pre_edge_level * (e / 8333.0) ** -3
    clean = step[None] * (pre[:, None, None] + mu)
    i0 = counts
    sample = rng.poisson(i0 * np.exp(-clean)).astype(float)
    flat = rng.poisson(i0 * n_ref, size=clean.shape).astype(float) / n_ref
    od = -np.log(np.maximum(sample, 0.5) / flat)
    if smoothing_px > 0:
        od = ndimage.gaussian_filter(od, (0, smoothing_px, smoothing_px))
        clean = ndimage.gaussian_filter(clean, (0, smoothing_px, smoothing_px))
    return od.astype(np.float32), clean


def od_noise_sigma(clean, *, counts=5000.0, n_ref=10):
    """Photon-noise standard deviation of the OD (before smoothing)."""
    return np.sqrt(np.exp(clean) / counts + 1.0 / (counts * n_ref))
