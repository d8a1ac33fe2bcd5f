"""Whiteline position and height per pixel, from a peak model fitted around the maximum.

The whiteline (the first, strong maximum of the normalised spectrum above the edge)
moves with the oxidation state and its height with the density of empty states. The
arg-max of noisy points is quantised to the energy grid and jumps between neighbouring
points of a flat-topped peak; a model fitted to all points of the peak's top is neither.

Per pixel:

1. the maximum of a lightly smoothed copy of the spectrum (Gaussian in energy,
   ``smoothing_ev``) inside the search window locates the peak;
2. a cubic (``model="cubic"``, the default), a quadratic (``"quadratic"``) or a
   Gaussian (``"gaussian"``: a quadratic in ``log(norm)``) is fitted by least squares to
   the unsmoothed points within ``half_width_ev`` of it; its maximum gives the position
   and the height. Whitelines are asymmetric (a steep rise, a slower fall): a symmetric
   model pulls the position towards the slow side by about 0.2-0.5 eV on the Ni
   references, a cubic follows the asymmetry;
3. the fit is repeated once around the grid point nearest the vertex, so that the
   points are centred on the peak rather than on the noisy maximum.

All pixels that share a fit centre share one design matrix, so a map costs a few
matrix products, not a loop over pixels. A fit is not trusted (NaN, flag
``FLAG_FIT``) when the model has no maximum (curvature >= 0), when the vertex lies
outside the points fitted or outside the search window, or when the spectrum's
maximum sits on the window's edge (no peak inside); a spectrum with NaN/inf gets
``FLAG_NONFINITE``. Where frames were left out of the analysis (``scan_energies_ev``), a
maximum next to a gap of left-out frames is not measured either (``FLAG_GAP``): the
model's top is then drawn through the points on either side of the gap.

References
----------
TXM-Sandbox (X. Xiao et al., J. Synchrotron Rad. 29 (2022) 266,
doi:10.1107/S1600577521011978) fits the whiteline with a peak model per pixel in the same spirit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..xanes import FLAG_FIT, FLAG_GAP, FLAG_NONFINITE, _too_wide, find_e0

__all__ = ["Whiteline", "fit_whiteline", "WHITELINE_MIN_GAP_EV"]

#: eV: a gap of left-out frames narrower than this leaves the peak model constrained. Measured on a
#: test particle (0.5 eV steps, 3 seeds, gaps placed at -4..+4 eV of the maximum): analysed energies
#: up to 3 eV apart change the fitted maximum by 0.12-0.31 eV RMS (median over the placements; the
#: fit's own error is about 0.2 eV), 3.6-4.1 eV by 0.38, 4.1-5.1 eV by 0.55, wider by 1.9 (up to 8).
WHITELINE_MIN_GAP_EV = 3.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Whiteline:
    """Result of :func:`fit_whiteline`; arrays have the spectra's trailing shape.

    Attributes
    ----------
    position_ev : ndarray float32
        Energy of the fitted maximum (eV), NaN where not trusted.
    height : ndarray float32
        Model value at the maximum (normalised units), NaN where not trusted. A model
        fitted over several eV rounds a sharp top off: on the Ni references the cubic's
        height is 0.02-0.08 below the true maximum.
    curvature : ndarray float32
        Second derivative of the model at the maximum (per eV^2, negative for a peak).
    residual : ndarray float32
        RMS residual of the fit (normalised units).
    flags : ndarray uint8
        ``FLAG_NONFINITE`` (1), ``FLAG_FIT`` (8) of :mod:`xanestrack.xanes`.
    e0_ev, window_ev, half_width_ev, model : the settings used (for the record).
    """

    position_ev: np.ndarray
    height: np.ndarray
    curvature: np.ndarray
    residual: np.ndarray
    flags: np.ndarray
    e0_ev: float
    window_ev: tuple
    half_width_ev: float
    model: str

    def record(self) -> dict:
        """The settings and the count of untrusted fits, JSON-serialisable (for run.json)."""
        return dict(
            method=f"{self.model} fit within {self.half_width_ev} eV of the smoothed maximum",
            e0_ev=self.e0_ev,
            window_ev=list(self.window_ev),
            half_width_ev=self.half_width_ev,
            model=self.model,
            n_untrusted=int(np.count_nonzero(self.flags)),
            n_gap=int(np.count_nonzero(self.flags & FLAG_GAP)),
        )


def _neighbourhood(e, c, half_width, lo, hi, minimum):
    """Indices within half_width eV of e[c] among lo..hi-1 (at least ``minimum``, the nearest)."""
    idx = np.arange(lo, hi)
    j = idx[np.abs(e[idx] - e[c]) <= half_width + 1e-9]
    if j.size < minimum:
        j = np.sort(idx[np.argsort(np.abs(e[idx] - e[c]), kind="stable")[:minimum]])
    return j


def _vertex(coef):
    """Maximum of a polynomial (coefficients (d+1, m), increasing powers, d = 2 or 3) near u = 0.

    Returns the position u, the value and the second derivative there; NaN where the
    polynomial has no maximum.
    """
    a1, a2 = coef[1], coef[2]
    a3 = coef[3] if coef.shape[0] > 3 else np.zeros_like(a1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quad = -a1 / (2 * a2)
        disc = 4 * a2**2 - 12 * a1 * a3
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        # the root of p'(u) = a1 + 2 a2 u + 3 a3 u^2 where p'' = 2 a2 + 6 a3 u < 0: u = (-2 a2 - root) / (6 a3),
        # written in the form that stays accurate as a3 -> 0
        u = np.where(np.abs(a3) > 0, 2 * a1 / (-2 * a2 + root), quad)
        u = np.where(np.isfinite(u), u, quad)
        val = sum(coef[k] * u**k for k in range(coef.shape[0]))
        curv = 2 * a2 + 6 * a3 * u
    return u, val, curv


def _fit_groups(e, y, centre, half_width, model, lo, hi):
    """Polynomial fit around each pixel's centre index; returns position, value, curvature, rms, ok."""
    npix = y.shape[1]
    pos = np.full(npix, np.nan)
    val = np.full(npix, np.nan)
    curv = np.full(npix, np.nan)
    rms = np.full(npix, np.nan)
    inside = np.zeros(npix, bool)
    degree = 3 if model == "cubic" else 2
    for c in np.unique(centre):
        cols = np.flatnonzero(centre == c)
        j = _neighbourhood(e, int(c), half_width, lo, hi, degree + 1)
        u = e[j] - e[c]
        X = np.vander(u, degree + 1, increasing=True)
        yy = y[np.ix_(j, cols)]
        if model == "gaussian":
            with np.errstate(divide="ignore", invalid="ignore"):
                yy = np.where(yy > 0, np.log(yy), np.nan)
        good = np.all(np.isfinite(yy), axis=0)
        coef = np.full((degree + 1, cols.size), np.nan)
        if good.any():
            coef[:, good] = np.linalg.lstsq(X, yy[:, good], rcond=None)[0]
        uv, top, d2 = _vertex(coef)
        with np.errstate(invalid="ignore", over="ignore"):
            fit = X @ coef
            if model == "gaussian":
                top = np.exp(top)
                d2 = d2 * top  # (exp p)'' = p'' exp p at the vertex, where p' = 0
                fit, raw = np.exp(fit), np.exp(yy)
            else:
                raw = yy
            rms[cols] = np.sqrt(np.mean((raw - fit) ** 2, axis=0))
            inside[cols] = good & (d2 < 0) & (uv >= u[0] - 1e-9) & (uv <= u[-1] + 1e-9)
        pos[cols] = e[c] + uv
        val[cols] = top
        curv[cols] = d2
    return pos, val, curv, rms, inside


def _nearest(e, pos):
    """Index of the energy nearest each position (NaN positions: some valid index)."""
    j = np.clip(np.searchsorted(e, np.nan_to_num(pos, nan=e[0])), 1, e.size - 1)
    return np.where(np.abs(e[j - 1] - pos) < np.abs(e[j] - pos), j - 1, j)


def _smoother(e, idx, sigma):
    """Rows of a Gaussian smoothing in energy (sigma eV) for the energies idx, over all energies."""
    if sigma <= 0:
        s = np.zeros((idx.size, e.size))
        s[np.arange(idx.size), idx] = 1.0
        return s
    w = np.exp(-0.5 * ((e[idx][:, None] - e[None, :]) / sigma) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def fit_whiteline(
    energies_ev,
    norm,
    *,
    e0_ev: float | None = None,
    window=(0.0, 30.0),
    half_width_ev: float = 5.0,
    model: str = "cubic",
    smoothing_ev: float = 1.0,
    scan_energies_ev=None,
) -> Whiteline:
    """Fitted whiteline position and height of normalised spectra, vectorised over pixels.

    Parameters
    ----------
    energies_ev : ndarray (n,)
        Strictly increasing energies.
    norm : ndarray (n, ...)
        Normalised spectra (one, a map or a flat list).
    e0_ev : float, optional
        Edge energy the window is relative to (default: :func:`xanestrack.xanes.find_e0`
        of the mean spectrum).
    window : (float, float)
        Search window for the maximum, relative to ``e0_ev`` in eV.
    half_width_ev : float
        Points within this distance of the peak enter the fit (at least degree + 1
        points). About the half width of the peak: 4-5 eV for Ni K-edge whitelines.
    model : {"cubic", "quadratic", "gaussian"}
    smoothing_ev : float
        Width (sigma, eV) of the Gaussian smoothing used only to locate the maximum.
    scan_energies_ev : ndarray, optional
        Every energy of the scan, where ``energies_ev`` are those analysed (frames left
        out). A maximum (the smoothed spectrum's, or the model's) whose nearest analysed
        energy borders a gap of left-out frames (:func:`xanestrack.xanes.edge_energy`'s
        rule, more than ``MAX_GAP_RATIO`` times the scan's own widest step there, and
        wider than :data:`WHITELINE_MIN_GAP_EV`) is not measured: NaN, flagged
        ``FLAG_GAP`` (with the 6 eV around the peak of a test particle left out, the fit
        kept up to 85 % of the pixels 4-5.5 eV off).

    Returns
    -------
    Whiteline

    Raises
    ------
    ValueError
        For misshaped input, non-increasing energies, fewer than 3 energies in the
        window, an unknown model or a non-positive ``half_width_ev``.
    """
    e = np.asarray(energies_ev, dtype=float)
    y = np.asarray(norm)
    if e.ndim != 1 or y.shape[:1] != e.shape:
        raise ValueError(f"spectra must have the energy axis first: energies {e.shape}, spectra {y.shape}")
    if e.size < 3 or np.any(np.diff(e) <= 0):
        raise ValueError("energies_ev must hold at least 3 strictly increasing energies")
    if model not in ("quadratic", "gaussian", "cubic"):
        raise ValueError(f"model must be 'quadratic', 'gaussian' or 'cubic', got {model!r}")
    if not half_width_ev > 0:
        raise ValueError(f"half_width_ev must be positive, got {half_width_ev}")
    shape = y.shape[1:]
    y = y.reshape(e.size, -1).astype(np.float64)
    finite = np.all(np.isfinite(y), axis=0)
    if e0_ev is None:
        if not finite.any():
            raise ValueError("every spectrum has NaN/inf values: cannot find E0")
        e0_ev = find_e0(e, y[:, finite])
    iw = np.flatnonzero((e >= e0_ev + window[0]) & (e <= e0_ev + window[1]))
    if iw.size < 4:
        raise ValueError(
            f"window {window} eV around E0 {e0_ev:.1f} eV holds {iw.size} energies, need 4; "
            f"the spectra cover {e[0]:.1f}-{e[-1]:.1f} eV"
        )
    lo, hi = int(iw[0]), int(iw[-1]) + 1
    yf = np.where(np.isfinite(y), y, 0.0)
    smooth = _smoother(e, iw, smoothing_ev) @ yf
    centre = iw[np.argmax(smooth, axis=0)]
    on_edge = (centre == iw[0]) | (centre == iw[-1])
    pos, val, curv, rms, ok = _fit_groups(e, yf, centre, half_width_ev, model, lo, hi)
    # re-centre on the grid point nearest the vertex and fit again
    near = np.clip(np.where(np.isfinite(pos), _nearest(e, pos), centre), lo, hi - 1)
    again = ok & (near != centre)
    if again.any():
        p2, v2, c2, r2, ok2 = _fit_groups(e, yf[:, again], near[again], half_width_ev, model, lo, hi)
        keep = ok2
        idx = np.flatnonzero(again)[keep]
        pos[idx], val[idx], curv[idx], rms[idx] = p2[keep], v2[keep], c2[keep], r2[keep]
    in_window = (pos >= e[lo]) & (pos <= e[hi - 1])
    trusted = finite & ok & in_window & ~on_edge
    gap = np.zeros_like(trusted)
    wide = _too_wide(e, scan_energies_ev, WHITELINE_MIN_GAP_EV)
    if wide.any():
        # the maximum found (the smoothed spectrum's, or the model's) borders a gap of left-out frames
        borders = np.zeros(e.size, bool)
        borders[:-1] |= wide
        borders[1:] |= wide
        gap = trusted & (borders[centre] | borders[_nearest(e, pos)])
        trusted &= ~gap
    flags = np.zeros(y.shape[1], np.uint8)
    flags[~finite] |= FLAG_NONFINITE
    flags[gap] |= FLAG_GAP
    flags[finite & ~trusted & ~gap] |= FLAG_FIT
    pos[~trusted] = np.nan
    val[~trusted] = np.nan
    n_bad = int((finite & ~trusted & ~gap).sum())
    if n_bad and n_bad > 0.01 * finite.sum():
        logger.warning("whiteline: %d of %d spectra without a trustworthy peak fit (NaN)", n_bad, int(finite.sum()))
    r = lambda a, t=np.float32: a.reshape(shape).astype(t)  # noqa: E731
    return Whiteline(
        position_ev=r(pos),
        height=r(val),
        curvature=r(curv),
        residual=r(rms),
        flags=r(flags, np.uint8),
        e0_ev=float(e0_ev),
        window_ev=(float(e0_ev + window[0]), float(e0_ev + window[1])),
        half_width_ev=float(half_width_ev),
        model=model,
    )
