"""Quality masks of per-pixel spectra: an edge jump worth normalising, a normalisation that fits.

Two masks, as TXM-Sandbox applies them before any map or statistic:

- **edge jump**: the edge step (post-edge fit minus pre-edge fit at E0, in OD) must exceed
  ``edge_jump_threshold`` times the pixel's pre-edge noise (and, optionally, an absolute
  ``min_edge_step_od``). Pixels outside the particle, thin rims and holes have no edge
  to speak of; their normalised spectra are noise divided by noise.
- **fit quality**: the RMS residual of the normalisation model (pre-edge line, post-edge
  polynomial) over the pre- and post-edge ranges, in normalised units, must not be an
  outlier: at most ``max_residual``, or, by default, at most the median of the pixels
  plus ``residual_n_mad`` robust standard deviations (MAD). A frame where the pixel was
  covered by a neighbour, a glitch, a misregistered rim: all show as a large residual.
  Any other per-pixel residual (the linear combination fit's, the whiteline fit's) can
  be added with ``extra_residual``.

Both come back as boolean maps with the numbers they were made from and the thresholds
actually used (``record()`` for run.json); :func:`apply_quality` blanks maps with them
and :func:`masked_statistics` summarises a map over the kept pixels.

References
----------
X. Xiao et al., TXM-Sandbox: an open-source software for transmission X-ray microscopy
data analysis, J. Synchrotron Rad. 29 (2022) 266, doi:10.1107/S1600577521011978
(edge-jump filter: ``post(E0) - pre(E0) > threshold * pre-edge SD``; TXM-Sandbox takes the
standard deviation of the pre-edge OD itself, here the residual of the fitted line, so
that a sloping pre-edge does not count as noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..robust import MAD_TO_SIGMA as _MAD_TO_SIGMA
from ..xanes import find_e0, normalize

__all__ = ["QualityMasks", "quality_masks", "apply_quality", "masked_statistics"]


@dataclass(frozen=True)
class QualityMasks:
    """Result of :func:`quality_masks`; maps have the spectra's trailing shape.

    Attributes
    ----------
    keep : ndarray bool
        Pixels that pass both masks (and were analysed).
    edge_jump_ok, fit_ok : ndarray bool
        The two masks on their own.
    edge_jump_od : ndarray float32
        The edge step post(E0) - pre(E0) (OD).
    pre_edge_sd_od : ndarray float32
        The pre-edge noise: residual standard deviation of the pre-edge line (OD).
    residual : ndarray float32
        The fit-quality measure (normalised units): RMS residual of the normalisation
        model, combined in quadrature with ``extra_residual`` if given.
    thresholds : dict
        What was applied: ``edge_jump_threshold``, ``min_edge_step_od``,
        ``max_residual`` (the value used), ``residual_rule``.
    """

    keep: np.ndarray
    edge_jump_ok: np.ndarray
    fit_ok: np.ndarray
    edge_jump_od: np.ndarray
    pre_edge_sd_od: np.ndarray
    residual: np.ndarray
    thresholds: dict = field(default_factory=dict)

    def record(self) -> dict:
        """Thresholds and pixel counts, JSON-serialisable (for run.json)."""
        n = int(np.count_nonzero(np.isfinite(self.edge_jump_od)))
        return dict(
            self.thresholds,
            n_pixels=n,
            n_low_edge_jump=int(n - np.count_nonzero(self.edge_jump_ok)),
            n_poor_fit=int(n - np.count_nonzero(self.fit_ok)),
            n_kept=int(np.count_nonzero(self.keep)),
        )


def quality_masks(
    energies_ev,
    mu,
    *,
    mask=None,
    e0_ev: float | None = None,
    pre_range=(-150.0, -30.0),
    post_range=(100.0, None),
    post_order: int | str = "auto",
    edge_jump_threshold: float = 5.0,
    min_edge_step_od: float = 0.0,
    max_residual: float | None = None,
    residual_n_mad: float = 5.0,
    extra_residual=None,
) -> QualityMasks:
    """Edge-jump and fit-quality masks of per-pixel OD spectra.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    mu : ndarray (n, ...)
        Optical density spectra (a map ``(n, h, w)`` or a list ``(n, n_pixels)``).
    mask : ndarray bool, optional
        Pixels to judge (default all); the others are False in every mask and NaN in
        the numbers.
    e0_ev : float, optional
        Default: :func:`xanestrack.xanes.find_e0` of the mean spectrum of the mask.
    pre_range, post_range, post_order
        As :func:`xanestrack.xanes.normalize`.
    edge_jump_threshold : float
        Minimum edge step in units of the pre-edge noise (TXM-Sandbox's default: 5).
        The step is extrapolated to E0 from both sides and scatters more than the
        pre-edge noise: on pure background (no edge), 1.5 % of pixels pass at 5
        (measured, 143 energies); inside a segmented particle this is not a concern.
    min_edge_step_od : float
        Minimum edge step in OD (0: none).
    max_residual : float, optional
        Largest accepted RMS residual (normalised units). Default: the median of the
        pixels plus ``residual_n_mad`` robust standard deviations.
    residual_n_mad : float
    extra_residual : ndarray, optional
        Another per-pixel residual in normalised units (e.g. ``LCFResult.residual``),
        added in quadrature; NaN fails.

    Returns
    -------
    QualityMasks

    Raises
    ------
    ValueError
        For misshaped input or non-positive thresholds.
    """
    e = np.asarray(energies_ev, dtype=float)
    mu = np.asarray(mu)
    if e.ndim != 1 or mu.shape[:1] != e.shape or mu.ndim < 2:
        raise ValueError(f"mu must be (n_energies, ...) with energies (n_energies,): got {mu.shape} and {e.shape}")
    if not edge_jump_threshold > 0:
        raise ValueError(f"edge_jump_threshold must be positive, got {edge_jump_threshold}")
    if not min_edge_step_od >= 0:
        raise ValueError(f"min_edge_step_od must be >= 0, got {min_edge_step_od}")
    if max_residual is not None and not max_residual > 0:
        raise ValueError(f"max_residual must be positive (or None for the robust rule), got {max_residual}")
    if not residual_n_mad > 0:
        raise ValueError(f"residual_n_mad must be positive, got {residual_n_mad}")
    shape = mu.shape[1:]
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask {mask.shape} does not match the maps {shape}")
    if extra_residual is not None:
        extra_residual = np.asarray(extra_residual, dtype=float)
        if extra_residual.shape != shape:
            raise ValueError(f"extra_residual {extra_residual.shape} does not match the maps {shape}")
    y = mu[:, mask]  # as given: the normalisation makes its own float64 copy
    fin = np.all(np.isfinite(y), axis=0)
    if e0_ev is None:
        if not fin.any():
            raise ValueError("every spectrum in the mask has NaN/inf values")
        e0_ev = find_e0(e, y[:, fin].astype(np.float64).mean(axis=1))
    nm = normalize(e, y, e0_ev=e0_ev, pre_range=pre_range, post_range=post_range, post_order=post_order)
    ip = np.flatnonzero((e >= nm.pre_range_ev[0]) & (e <= nm.pre_range_ev[1]))
    iq = np.flatnonzero((e >= nm.post_range_ev[0]) & (e <= nm.post_range_ev[1]))
    # the pre- and post-edge rows only, in float64, NaN made 0: the same numbers without (n, n_pixels) float64
    # copies (a large particle's 46 MiB each)
    y_ip, y_iq = y[ip].astype(np.float64), y[iq].astype(np.float64)
    del y
    y_ip[~np.isfinite(y_ip)] = 0.0
    y_iq[~np.isfinite(y_iq)] = 0.0
    pre_ip = nm.pre_edge[ip].astype(np.float64)
    post_iq = nm.post_edge[iq].astype(np.float64)
    step = nm.edge_step.astype(np.float64)
    pre_range_ev, post_range_ev = nm.pre_range_ev, nm.post_range_ev
    del nm  # its (n, n_pixels) normalised spectra and lines
    sd = np.sqrt(((y_ip - pre_ip) ** 2).sum(axis=0) / max(ip.size - 2, 1))
    jump_ok = fin & (step > edge_jump_threshold * sd) & (step > min_edge_step_od)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_pre = (y_ip - pre_ip) / step
        r_post = (y_iq - post_iq) / step
        resid = np.sqrt((np.sum(r_pre**2, axis=0) + np.sum(r_post**2, axis=0)) / (ip.size + iq.size))
    resid = np.where(jump_ok, resid, np.nan)
    if extra_residual is not None:
        resid = np.sqrt(resid**2 + extra_residual[mask] ** 2)
    rule = "given"
    limit = max_residual
    if limit is None:
        v = resid[np.isfinite(resid)]
        if v.size:
            med = float(np.median(v))
            limit = med + residual_n_mad * _MAD_TO_SIGMA * float(np.median(np.abs(v - med)))
        else:
            limit = float("nan")
        rule = f"median + {residual_n_mad} x 1.4826 MAD of the pixels with an edge jump"
    with np.errstate(invalid="ignore"):
        fit_ok = np.isfinite(resid) & (resid <= limit)

    def full(v, fill, dtype):
        out = np.full(shape, fill, dtype=dtype)
        out[mask] = v
        return out

    return QualityMasks(
        keep=full(jump_ok & fit_ok, False, bool),
        edge_jump_ok=full(jump_ok, False, bool),
        fit_ok=full(fit_ok, False, bool),
        edge_jump_od=full(np.where(fin, step, np.nan), np.nan, np.float32),
        pre_edge_sd_od=full(np.where(fin, sd, np.nan), np.nan, np.float32),
        residual=full(resid, np.nan, np.float32),
        thresholds=dict(
            e0_ev=float(e0_ev),
            edge_jump_threshold=float(edge_jump_threshold),
            min_edge_step_od=float(min_edge_step_od),
            max_residual=float(limit),
            residual_rule=rule,
            pre_range_ev=[float(v) for v in pre_range_ev],
            post_range_ev=[float(v) for v in post_range_ev],
        ),
    )


def apply_quality(maps, keep) -> dict:
    """Copies of the maps with NaN where ``keep`` is False.

    Parameters
    ----------
    maps : dict of name -> ndarray (..., h, w)
        Maps (or stacks of maps, e.g. fractions) whose trailing shape is ``keep``'s.
    keep : ndarray (h, w) bool

    Returns
    -------
    dict of name -> float32 ndarray
    """
    keep = np.asarray(keep, bool)
    out = {}
    for name, m in maps.items():
        m = np.asarray(m)
        if m.shape[-keep.ndim :] != keep.shape:
            raise ValueError(f"map {name!r} {m.shape} does not end with the mask's shape {keep.shape}")
        out[name] = np.where(keep, m, np.nan).astype(np.float32)
    return out


def masked_statistics(values, keep) -> dict:
    """Mean, median, standard deviation and counts of a map over the kept, finite pixels.

    Returns
    -------
    dict with ``n``, ``n_excluded`` (pixels of the map with a finite value that the
    mask removed), ``mean``, ``median``, ``std`` (NaN when ``n`` is 0).
    """
    v = np.asarray(values, dtype=float)
    keep = np.asarray(keep, bool)
    if v.shape != keep.shape:
        raise ValueError(f"values {v.shape} and keep {keep.shape} must have the same shape")
    fin = np.isfinite(v)
    sel = v[fin & keep]
    nan = float("nan")
    return dict(
        n=int(sel.size),
        n_excluded=int(np.count_nonzero(fin & ~keep)),
        mean=float(sel.mean()) if sel.size else nan,
        median=float(np.median(sel)) if sel.size else nan,
        std=float(sel.std(ddof=1)) if sel.size > 1 else nan,
    )
