"""Smooth particle tracks across the energies of a scan: the common motion per frame, each particle's own motion smooth.

A particle's measured position in frame ``k`` is

    p_j(k) = r_j + T(k) + o_j(k) + e_j(k)

with ``T`` the motion every particle shares (stage and beam jitter, jumps: rough from frame
to frame, measured by all particles together), ``o_j`` the particle's own motion relative
to it (deformation, and the radial part of a magnification change: continuous across the
seconds between two energies) and ``e_j`` the frame's measurement error, which is white
(lag-1 correlation -0.1..0.3 measured on ``stress-counts``) and largest where the particle's
contrast is least (pre-edge, small particles). :func:`smooth_tracks` separates the three:
``T`` is the weighted mean over the particles of what their own motion does not explain,
each particle's own motion a penalised least-squares smooth of what ``T`` does not explain,
alternately. Nothing rough is assumed away: ``T`` keeps every frame's jitter and jumps;
how smooth each own motion is comes from its data (generalised cross-validation); where a
particle jumps on its own (:func:`find_steps`: two straight lines fitted on either side part
by more than 5 standard errors and 0.3 px, and the cut lowers the GCV score), the smooth is
cut there and the jump kept. A jump smaller than that (below ~0.9 px at 0.15 px of noise) is
smoothed over: its frames err by up to about half of it. With a single particle ``T`` takes
everything and nothing is smoothed. Frame order is taken as time order: where the particles'
positions alternate from frame to frame over a run of frames (:func:`_alternation`: two passes
over the energies sorted by energy, each particle having moved on between them), the own motions
are smoothed over the other frames only and the positions there stay as measured.

References
----------
Garcia, D. (2010). Robust smoothing of gridded data in one and higher dimensions with
missing values. Computational Statistics & Data Analysis 54, 1167-1178.
https://doi.org/10.1016/j.csda.2009.09.020 (the penalised least squares with GCV and
bisquare weights used here; solved with banded matrices instead of the DCT, so that
weights need no iteration).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import linalg
from scipy.linalg.lapack import dpbsv as _pbsv

from .robust import robust_sigma

__all__ = ["SmoothedSeries", "smooth_series", "find_steps", "SmoothedTracks", "smooth_tracks", "local_quadratic"]

#: smoothing parameters tried by GCV (the penalty weight of the squared second differences)
S_GRID = 10.0 ** np.arange(-2.0, 6.01, 0.25)

#: bisquare tuning constant (95 % efficiency for Gaussian errors)
BISQUARE = 4.685

#: residual degrees of freedom (points less the smooth's) below which (or below ``ROUGH_SHARE`` of
#: the points) the residuals do not tell outliers from bends: no robust reweighting before a test
MIN_RESIDUAL_DOF = 4

#: A smooth whose residual degrees of freedom are fewer than this share of its points keeps most of
#: what it is given: the motion bends from frame to frame about as much as it is noisy, and a
#: bisquare takes its bends for outliers (22 of the default scene's 143 energies, 5-10 frames
#: apart: a particle's own motion smoothed with 15 of 22 degrees of freedom, the frame where it
#: turned given weight 0, the smooth 0.43 px off there where measured to 0.02 px; the particle
#: 0.123 px RMS in all, 0.053 without robust weights). 0.25 before; 0.35-0.4 change none of 12
#: stress runs (counts and all seeds 1-2, drift and crowd seed 1, both paths) by a thousandth of a pixel
ROUGH_SHARE = 0.4


def local_quadratic(y, window: int) -> np.ndarray:
    """``y`` smoothed by a quadratic fitted over ``window`` points about each (Savitzky-Golay, order 2);
    the first and last ``window // 2`` points from the fit over the first and last ``window`` points, so a
    trend is kept to the ends.

    The same numbers as ``scipy.signal.savgol_filter(y, window, 2, mode="interp")``, written here because
    importing ``scipy.signal`` (which imports ``scipy.stats``) costs every run 0.55 s on a 2-core machine,
    for the one 143-point series a scan smooths with it.

    Parameters
    ----------
    y : array_like (n,)
    window : int
        Odd, 3 <= window <= n.
    """
    y = np.asarray(y, float)
    window = int(window)
    if window % 2 == 0 or window < 3 or window > y.size:
        raise ValueError(f"window must be odd, at least 3 and at most {y.size} (the points), got {window}")
    half = window // 2
    design = np.vander(np.arange(-half, half + 1, dtype=float), 3, increasing=True)
    coef = np.linalg.pinv(design)  # (3, window): the least-squares quadratic's coefficients
    out = np.empty_like(y)
    out[half : y.size - half] = np.correlate(y, coef[0], mode="valid")  # its value at the centre
    out[:half] = design[:half] @ (coef @ y[:window])
    out[y.size - half :] = design[half + 1 :] @ (coef @ y[-window:])
    return out


@lru_cache(maxsize=32)
def _penalty(n: int, breaks: tuple = ()):
    """``D'D`` of the second-difference operator ``D`` ((n - 2) x n) in upper banded form, and its eigenvalues.

    ``breaks``: indices ``k`` where the series may jump (between ``k - 1`` and ``k``): the
    second differences that span it are left out of ``D``.
    """
    d = np.diff(np.eye(n), 2, axis=0)
    if breaks:
        drop = {i for k in breaks for i in (k - 2, k - 1) if 0 <= i < n - 2}
        d = d[[i for i in range(n - 2) if i not in drop]]
    a = d.T @ d
    ab = np.zeros((3, n))
    ab[2] = np.diag(a)
    ab[1, 1:] = np.diag(a, 1)
    ab[0, 2:] = np.diag(a, 2)
    return ab, np.linalg.eigvalsh(a)


@dataclass(frozen=True)
class SmoothedSeries:
    """Result of :func:`smooth_series`.

    Attributes
    ----------
    values : ndarray (n,)
        The smooth (defined at every point, also where the weight was 0).
    s : float
        The smoothing parameter GCV chose.
    dof : float
        Effective degrees of freedom of the smooth (trace of the hat matrix): ``n`` means
        no smoothing, 2 a straight line.
    weights : ndarray (n,)
        Final weights (the given ones times the bisquare weights).
    sigma : float
        The noise of a point: the residual's robust standard deviation, divided by how much
        of white noise the smooth leaves in the residual (NaN with fewer than 3 weighted points).
    steps : tuple of int
        Where the series was let jump (:func:`find_steps`).
    """

    values: np.ndarray
    s: float
    dof: float
    weights: np.ndarray
    sigma: float
    steps: tuple = ()


def _fit(y, w, s, ab):
    # LAPACK's banded Cholesky solver called directly (what scipy.linalg.solveh_banded calls,
    # without its checks: tens of thousands of small solves per scan)
    a = ab * s
    a[2] += w
    _, z, info = _pbsv(a, w * y, lower=0, overwrite_ab=1, overwrite_b=1)
    if info > 0:
        # a stretch between two steps without a weighted point: the penalty alone leaves it
        # free. The least ridge pins it (to 0 there; the data elsewhere are unaffected)
        a = ab * s
        a[2] += w + 1e-9 * max(float(np.max(w)), 1e-12) + 1e-9 * s
        _, z, info = _pbsv(a, w * y, lower=0, overwrite_ab=1, overwrite_b=1)
    if info != 0:
        raise linalg.LinAlgError(f"banded smoothing system not solvable (LAPACK pbsv info {info})")
    return z


#: frames on each side of a candidate step over which a straight line is fitted
STEP_WINDOW = 6

#: a jump between the two sides' lines beyond this many of its standard errors is a step
STEP_SIGNIFICANCE = 5.0

#: a step found is kept where it lowers the smooth's clipped GCV score below this fraction
STEP_GAIN = 0.8

#: px. ... and beyond this: where the noise is a few hundredths of a pixel, the curvature of a
#: smooth motion parts the two lines by more than 5 standard errors; a jump smaller than this,
#: smoothed over, errs by less than half of it
STEP_MIN = 0.3


def find_steps(
    y,
    weights,
    sigma: float,
    *,
    window: int = STEP_WINDOW,
    significance: float = STEP_SIGNIFICANCE,
    min_step: float = STEP_MIN,
):
    """Where a series jumps: indices ``k`` with a step between ``k - 1`` and ``k``.

    At every ``k`` a straight line is fitted to the ``window`` weighted points before it and
    to the ``window`` after it; both are extrapolated to ``k - 1/2``. A smooth motion, fast
    or slow, gives two lines that meet there; a jump does not. A step is where the two
    differ by more than ``significance`` standard errors (``sigma``: the noise of a point)
    and by more than ``min_step``, at the largest such difference, then the next one at least ``window`` points away.

    Parameters
    ----------
    y : ndarray (n,)
    weights : ndarray (n,)
        Points with weight 0 (missing, outliers) are not used.
    sigma : float
        Standard deviation of a point's noise.

    Returns
    -------
    list of int, the most significant first
    """
    y = np.asarray(y, float)
    idx = np.flatnonzero((np.asarray(weights) > 0) & np.isfinite(y))
    if idx.size < 2 * window or not (sigma > 0):
        return []
    v = y[idx]
    x = np.arange(window, dtype=float)
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    # prediction half a point beyond the last of `window` points: its variance in units of sigma^2
    ext = window - 0.5 - x.mean()
    se = sigma * np.sqrt(2 * (1 / window + ext**2 / sxx))
    stats = np.zeros(idx.size)
    lines = {}
    for i in range(window, idx.size - window + 1):
        before, after = v[i - window : i], v[i : i + window]
        b1 = (xc * before).sum() / sxx
        a1 = (xc * after).sum() / sxx
        pb = before.mean() + b1 * ext  # the line before, at the midpoint
        pa = after.mean() - a1 * ext  # the line after, at the midpoint
        stats[i] = abs(pa - pb) / se if abs(pa - pb) > min_step else 0.0
        lines[i] = (pb, b1, pa, a1)
    steps = []
    while True:
        i = int(np.argmax(stats))
        if stats[i] <= significance:
            break
        k = int(idx[i])
        gap = np.arange(idx[i - 1] + 1, idx[i])  # points left out between the two sides
        gap = gap[np.isfinite(y[gap])]
        if gap.size:
            # the step's place among them: where they sit best on the two sides' lines
            # (in frames; the lines' slopes per used point are close enough over a gap)
            pb, b1, pa, a1 = lines[i]
            fb = pb + b1 * (gap - idx[i - 1] - 0.5)
            fa = pa + a1 * (gap - idx[i] + 0.5)
            cost = [
                np.sum((y[gap[:c]] - fb[:c]) ** 2) + np.sum((y[gap[c:]] - fa[c:]) ** 2) for c in range(gap.size + 1)
            ]
            c = int(np.argmin(cost))
            k = int(gap[c]) if c < gap.size else int(idx[i])
        steps.append(k)
        stats[max(0, i - window) : i + window] = 0
    return steps


def smooth_series(
    y, *, weights=None, robust: bool = True, iterations: int = 3, near=None, steps: bool = True, breaks=()
) -> SmoothedSeries:
    """Penalised least-squares smooth of a 1-D series, its smoothness chosen by GCV.

    Minimises ``sum w (y - z)**2 + s sum (second difference of z)**2`` over ``z``, with
    ``s`` minimising the generalised cross-validation score
    ``(sum w r**2 / n_w) / (1 - dof / n_w)**2`` over :data:`S_GRID` (Garcia 2010).

    Parameters
    ----------
    y : ndarray (n,)
        The series (NaN where ``weights`` is 0).
    weights : ndarray (n,), optional
        Each point's precision (1 / its noise's variance, on any scale), 0 for points that are missing; the
        residuals are standardised by them (relative to their mean) for the bisquare and the noise. Default all 1
        (NaN points 0).
    robust : bool
        Bisquare weights from the residuals, ``iterations`` times: a point far off the
        smooth (a mis-measured frame) does not pull it.
    iterations : int
        Robust iterations.
    near : float, optional
        A smoothing parameter found before (e.g. in the previous pass over similar data):
        only ``s`` within half a decade of it is tried, in eighths of a decade.
    steps : bool
        Let the series jump where it does (:func:`find_steps` on the robust smooth's
        weights and noise): the penalty is cut there and each side is smoothed on its own,
        so that an abrupt motion is not smeared over the frames around it.
    breaks : sequence of int
        Steps known already (found before, e.g. in the previous pass over similar data): the
        penalty is cut there whether or not ``steps`` looks for more.

    Returns
    -------
    SmoothedSeries

    Raises
    ------
    ValueError
        If ``weights`` does not match ``y``, or fewer than 4 points have weight.
    """
    y = np.asarray(y, float)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if weights is not None and np.shape(weights) != y.shape:
        raise ValueError(f"weights of shape {np.shape(weights)} do not match y of shape {y.shape}")
    w0 = np.isfinite(y).astype(float) if weights is None else np.asarray(weights, float) * np.isfinite(y)
    if (w0 > 0).sum() < 4:
        raise ValueError(f"smoothing needs at least 4 weighted points, got {int((w0 > 0).sum())}")
    # relative to their mean over the points weighted: GCV's degrees of freedom (:func:`_smooth_series`) are those
    # of weights of mean 1, and weights on another scale chose another smoothness (a noisy random walk weighted by
    # its precision: times 3, no smoothing at all, 0.41-0.77 px RMS; divided by 3, a line, 0.22-0.53; as given,
    # 0.14-0.26). The final weights are given back on the caller's scale
    unit = float(w0[w0 > 0].mean())
    w0 = w0 / unit
    best = _smooth_series(y, w0, robust, iterations, near, tuple(sorted(set(int(k) for k in breaks))))
    if steps:
        best = _with_steps(y, w0, best, robust, iterations)
    return replace(best, weights=best.weights * unit)


def _with_steps(y, w0, first, robust, iterations) -> SmoothedSeries:
    """``first`` smoothed again where it jumps (:func:`find_steps`), where that explains the data."""
    # isolated outliers (a frame the robust smooth gave no weight, its neighbours some) are
    # left out of the search; runs of them are what a step smeared over looks like: kept
    out = (first.weights <= 0) & (w0 > 0)
    near_ok = np.r_[False, first.weights[:-1] > 0] | np.r_[first.weights[1:] > 0, False]
    found = find_steps(y, np.where(out & near_ok, 0.0, w0), first.sigma)
    # a step is kept only where it explains the data: residuals (clipped at 4 sigma, so that
    # outliers weigh alike with and without it) per remaining degree of freedom, as GCV
    yv = np.where(w0 > 0, y, 0.0)
    clip = (4 * first.sigma) ** 2 if first.sigma > 0 else np.inf

    def score(r):
        n_w = w0.sum()
        return float(np.sum(w0 * np.minimum((yv - r.values) ** 2, clip)) / n_w / (1 - r.dof / n_w) ** 2)

    best, best_score = first, score(first)
    for k in (k for k in found if k not in first.steps):
        trial = _smooth_series(y, w0, robust, iterations, None, tuple(sorted((*best.steps, k))))
        t_score = score(trial)
        if t_score < STEP_GAIN * best_score:
            best, best_score = trial, t_score
    return best


def _smooth_series(y, w0, robust, iterations, near, breaks) -> SmoothedSeries:
    """:func:`smooth_series` with the penalty cut at ``breaks``; ``y`` 1-D float, ``w0`` its
    checked weights (0 where ``y`` is not finite)."""
    n = y.size
    yf = np.where(w0 > 0, y, 0.0)
    ab, eig = _penalty(n, breaks)

    def dof_of(s):
        return float((1.0 / (1.0 + s * eig)).sum())

    def search(grid, w, max_dof=np.inf):
        nw = w.sum()
        best = None
        for s in grid:
            dof = dof_of(s)
            if dof >= nw - 1 or dof > max_dof:
                continue
            z = _fit(yf, w, s, ab)
            gcv = (np.sum(w * (yf - z) ** 2) / nw) / (1 - dof / nw) ** 2
            if best is None or gcv < best[0]:
                best = (gcv, s, dof, z)
        return best

    def best_fit(w, near):
        best = None
        if near is not None and np.isfinite(near) and near > 0:
            best = search(near * 10.0 ** np.arange(-0.5, 0.51, 0.125), w)
        if best is None:  # the grid in half decades, then quarter and eighth decades around its best
            best = search(S_GRID[::2], w)
            if best is not None:
                best = min(
                    (b for b in (best, search(best[1] * 10.0 ** np.array([-0.25, -0.125, 0.125, 0.25]), w)) if b),
                    key=lambda b: b[0],
                )
        return best

    # the residuals standardised by the points' precision (w0 relative to its mean over the points
    # weighted: 1 where every point is weighted alike)
    unit = float(w0[w0 > 0].mean()) if (w0 > 0).any() else 1.0
    scale = np.sqrt(w0 / unit)

    def bisquare(z):
        # sigma is the residuals' own robust spread, already as small as the smooth leaves them:
        # no leverage factor on top (dividing by sqrt(1 - mean leverage) as well, as Garcia 2010
        # does, counts it twice, which matters where the smooth keeps most of the points)
        r = ((yf - z) * scale)[w0 > 0]
        sig = robust_sigma(r) if r.size >= 3 else np.nan
        if not (sig > 0):
            return None
        u = (yf - z) * scale / (BISQUARE * sig)
        return w0 * np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)

    def rough(dof, w):
        # GCV keeps (almost) every point: the data support hardly any smoothing
        return w.sum() - dof < max(MIN_RESIDUAL_DOF, ROUGH_SHARE * w.sum())

    w = w0.copy()
    best = best_fit(w, near)
    if best is None:  # too few points for any smoothing: the straightest line
        s = S_GRID[-1]
        z, dof = _fit(yf, w, s, ab), dof_of(s)
    else:
        _, s, dof, z = best
    if robust and best is not None and rough(dof, w):
        # a motion that bends from frame to frame more than it is noisy (few energies), or a few
        # frames far off that the smooth follows (a run of mis-measured frames)? Outliers of a
        # smooth with at most half the degrees of freedom are left out once: if the rest is then
        # smooth, they were outliers and the robust iterations go on from there; if not, the
        # motion bends and stands as measured (a bisquare would take its bends for outliers and
        # smooth through them: 22 frames measured to 0.02-0.06 px came out 0.8 px off)
        start = search(S_GRID[::2], w, max_dof=0.5 * w.sum())
        w_try = bisquare(start[3]) if start is not None else None
        trial = best_fit(w_try, None) if w_try is not None and (w_try == 0).any() else None
        if trial is not None and not rough(trial[2], w_try):
            w, (_, s, dof, z) = w_try, trial
        else:
            robust = False
    for _ in range(max(0, iterations) if robust else 0):
        w_new = bisquare(z)
        if w_new is None:
            break
        best = best_fit(w_new, s)
        if best is None or rough(best[2], w_new):
            break  # the weights leave too little to smooth: the last smooth stands
        w, (_, s, dof, z) = w_new, best
    r = ((yf - z) * scale)[w0 > 0]
    sigma = robust_sigma(r) if r.size >= 3 else np.nan
    if np.isfinite(sigma):
        # the residuals are the noise less what the smooth follows of it: for white noise their
        # spread is the noise's times sqrt(mean((1 - lambda)^2)) over the penalty's eigenvalues
        # (lambda = 1 / (1 + s mu)); undone, so that a smooth keeping almost every frame does not
        # report its frames as almost noiseless (smooth_tracks weighs the particles by it)
        sigma = sigma / max(float(np.sqrt(np.mean((s * eig / (1.0 + s * eig)) ** 2))), 1e-3)
    return SmoothedSeries(values=z, s=float(s), dof=float(dof), weights=w, sigma=float(sigma), steps=tuple(breaks))


#: frames over which a particle's measurement noise is taken as one (:func:`_precision`): a running median of
#: its squared second differences, then a running mean of its logarithm, both this wide
NOISE_WINDOW = 31

#: a noise whose variance changes by less than this factor over the scan is taken as one: every frame weighs
#: alike. White noise of one variance scatters the estimate by a factor of 2.1 / 3.3 / 6.5 over 143 frames (median,
#: 90th, 99th percentile of 200 draws), and weights from that scatter cost its smooth 1-5 %; the particles of
#: stress-counts and stress-drift (seed 1) change theirs by 7-25 (10th-90th percentile), across the edge
NOISE_RATIO = 8.0

#: the least precision a frame is given, relative to the particle's most precise
MIN_PRECISION = 0.02


def _precision(series, ok, window: int = NOISE_WINDOW) -> np.ndarray:
    """Per frame, the precision (1 / variance) of a particle's measurement noise, relative to its mean over the
    frames ``ok``; 1 everywhere where it changes by less than :data:`NOISE_RATIO` or too few frames are ``ok``.

    ``series`` (n, 2) is the particle's positions less the shared motion: its own motion, smooth, plus the noise.
    The noise's variance is a running median of the squared second differences over ``window`` frames (of white
    noise, 6 times its variance; of a smooth motion, about nothing), independent of any smooth fitted to them."""
    n = series.shape[0]
    out = np.ones(n)
    if ok.sum() < 2 * window:
        return out
    d = series[:-2] - 2 * series[1:-1] + series[2:]
    r2 = np.full(n, np.nan)
    r2[1:-1] = np.where(ok[:-2] & ok[1:-1] & ok[2:], np.mean(d**2, axis=1) / 6.0, np.nan)
    h = window // 2
    win = np.lib.stride_tricks.sliding_window_view(np.pad(r2, h, constant_values=np.nan), window)
    var = np.full(n, np.nan)
    enough = np.isfinite(win).sum(axis=1) >= h
    var[enough] = np.nanmedian(win[enough], axis=1)
    good = np.isfinite(var) & (var > 0)
    if good.sum() < window:
        return out
    lv = np.log(np.where(good, var, np.median(var[good])))
    var = np.exp(np.convolve(np.pad(lv, h, mode="edge"), np.ones(window) / window, mode="valid"))
    if var.max() < NOISE_RATIO * var.min():
        return out
    p = np.maximum(var.min() / var, MIN_PRECISION)
    return p / p[ok].mean()


@dataclass(frozen=True)
class SmoothedTracks:
    """Result of :func:`smooth_tracks`.

    Attributes
    ----------
    positions : ndarray (m, n, 2)
        ``r_j + T(k) + o_j(k)`` where the particle was measured and smoothed, the input
        elsewhere.
    common : ndarray (n, 2)
        ``T``: the motion the particles share, relative to their median positions (NaN in
        frames no smoothed particle was measured in).
    sigma : ndarray (m,)
        px: each particle's measurement error, from its residual from ``r + T + o`` (see
        :attr:`SmoothedSeries.sigma`); NaN where not smoothed.
    dof : ndarray (m, 2)
        Effective degrees of freedom of each particle's own motion per axis (``n``: not
        smoothed at all); NaN where not smoothed.
    smoothed : ndarray (m,) bool
        Particles whose positions were smoothed (measured in at least ``min_frames``
        frames, with at least one other such particle).
    steps : tuple of tuples
        Per particle, the frames where its own motion jumps (:func:`find_steps`, kept where
        it explains the data): smoothed on each side separately.
    alternating : ndarray (n,) bool or None
        Frames where the particles' positions alternate between consecutive frames (:func:`_alternation`), as
        frames of two passes sorted by energy do: not smoothed across (every particle's positions there as
        measured, its own motion smoothed over the other frames). None where not looked for.
    alternation_px : ndarray (m,) or None
        px: each particle's alternation there (median over those frames; NaN where none).
    """

    positions: np.ndarray
    common: np.ndarray
    sigma: np.ndarray
    dof: np.ndarray
    smoothed: np.ndarray
    steps: tuple = ()
    alternating: np.ndarray | None = None
    alternation_px: np.ndarray | None = None


#: frames: the running median over which a particle's alternation between consecutive frames is taken
#: (:func:`_alternation`); a lone outlier or jump moves at most 3 of them, a run of frames alternating all
ALTERNATION_WINDOW = 9

#: an alternation is seen where its running median exceeds this many times the noise of one frame's alternation
#: (from the frame's own noise). Of white noise the running median's largest value over 143 frames and both axes
#: was 3.0 / 3.5 times it (99th percentile / largest of 300 draws; 4.1 / 4.5 with Student-t noise of 3 degrees of
#: freedom); on the pipeline's positions of the default scene (seeds 1-2, 256 px, 5 particles) and of the reduced
#: stress-drift, stress-counts and stress-jitter (seeds 1-2), where it exceeds :data:`ALTERNATION_MIN_PX`, at most
#: 3.3 (reduced stress-all seed 1: one particle 8.9 over 4 frames, two outliers close together); of a two-pass scan
#: sorted by energy (the default scene, seeds 1, 2, 5) 105-127
ALTERNATION_Z = 6.0

#: px. ... and where it exceeds this: smoothed across, an alternation this small moves a frame by half of it
ALTERNATION_MIN_PX = 0.2

#: ... in this many particles at least (all of them where fewer take part), over a run of at least
#: :data:`ALTERNATION_WINDOW` frames each
ALTERNATION_PARTICLES = 2


def _running_nanmedian(x, window: int) -> np.ndarray:
    """The median of ``x`` (n,) over ``window`` frames about each, NaN where fewer than half of them are finite."""
    h = window // 2
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x, h, constant_values=np.nan), window)
    out = np.full(x.size, np.nan)
    enough = np.isfinite(win).sum(axis=1) > h
    out[enough] = np.nanmedian(win[enough], axis=1)
    return out


def _alternation(own, ok, *, window: int = ALTERNATION_WINDOW):
    """Frames where the particles' positions alternate between consecutive frames, as the frames of two passes
    over the energies do once sorted by energy (each particle having moved on between the passes).

    ``own`` (m, n, 2) is each particle's positions less the motion the particles share (that one is kept frame by
    frame, whatever it does), ``ok`` (m, n) where they are measured. Per particle and axis the alternation of frame
    ``k`` is ``-(-1)**k`` times half the second difference there: the distance between the two sets of positions
    where they alternate, about 0 where the motion is smooth (a curvature alternates in sign with ``k``). Its
    running median over ``window`` frames is compared with its noise: the frame's noise (a running median over
    :data:`NOISE_WINDOW` frames of ``(y[k-1] - y[k] - y[k+1] + y[k+2]) / 2``, which is blind to an alternation, a
    straight motion and a level, and of white noise has the noise's standard deviation) times ``sqrt(6) / 2``
    (the standard deviation of one frame's alternation, of white noise). A particle alternates where the running
    median exceeds :data:`ALTERNATION_Z` times that and :data:`ALTERNATION_MIN_PX` over at least ``window``
    frames in a row (at the first and last frame of a run, half the alternation: the running median reaches them
    where the run is longer than the window); a frame alternates where :data:`ALTERNATION_PARTICLES` particles do
    (all where fewer are measured).

    Returns
    -------
    frames : ndarray (n,) bool
    size : ndarray (m,)
        px: each particle's alternation (the length of the running medians' vector), median over ``frames``; NaN
        where no frame alternates or the particle is not measured there.
    """
    m, n, _ = own.shape
    count = np.zeros(n, int)  # particles alternating in each frame
    size = np.full((m, n), np.nan)
    if n < window:
        return np.zeros(n, bool), np.full(m, np.nan)
    sign = (-1.0) ** np.arange(n)
    for j in range(m):
        v = np.where(ok[j][:, None], own[j], np.nan)
        alt = np.full((n, 2), np.nan)
        alt[1:-1] = -sign[1:-1, None] * (v[:-2] - 2 * v[1:-1] + v[2:]) / 2
        blind = np.full((n, 2), np.nan)
        blind[1:-2] = (v[:-3] - v[1:-2] - v[2:-1] + v[3:]) / 2
        med = np.full((n, 2), np.nan)
        seen = np.zeros(n, bool)
        for a in range(2):
            med[:, a] = _running_nanmedian(alt[:, a], window)
            # the median of the square of a normal variable is 0.4549 times its variance
            noise = np.sqrt(_running_nanmedian(blind[:, a] ** 2, NOISE_WINDOW) / 0.4549) * np.sqrt(6) / 2
            with np.errstate(invalid="ignore"):
                seen |= (np.abs(med[:, a]) > ALTERNATION_Z * noise) & (np.abs(med[:, a]) > ALTERNATION_MIN_PX)
        # runs shorter than the window are outliers near each other, not an alternation
        edges = np.diff(np.r_[0, seen.astype(np.int8), 0])
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            count[start:stop] += stop - start >= window
        size[j] = np.hypot(*med.T)
    # the frame order is the whole scan's, not one particle's: one particle alone alternating is its outliers
    # close together (white noise with 3-8 % of the frames 30 times the noise off, 5 particles, 143 frames: in
    # 0.3-0.7 % of 300 draws one particle alternated over 9 frames or more, never two at once)
    frames = count >= max(1, min(ALTERNATION_PARTICLES, int(ok.any(axis=1).sum())))
    out = np.full(m, np.nan)
    if frames.any():
        for j in range(m):
            s = size[j, frames]
            out[j] = np.median(s[np.isfinite(s)]) if np.isfinite(s).any() else np.nan
    return frames, out


#: rounds in which the shared motion is taken again once own motions jump (:func:`smooth_tracks`)
STEP_REFITS = 2

#: frames: a gap this short inside a particle's track is bridged for the smoothing's first shared
#: motion (:func:`smooth_tracks`); longer ones, or frames missing at either end (a particle leaving
#: or entering the field), have it chained
SHORT_GAP = 3


def _bridged(P, use, max_gap: int):
    """``P`` (m, n, 2) with each track's frames outside ``use`` interpolated from its own, or None
    where a track misses a frame at either end or more than ``max_gap`` frames in a row."""
    out = P.copy()
    frames = np.arange(P.shape[1])
    for j in range(P.shape[0]):
        miss = ~use[j]
        if not miss.any():
            continue
        k = np.flatnonzero(use[j])
        if k.size < 2 or miss[: k[0]].any() or miss[k[-1] + 1 :].any():
            return None
        edges = np.diff(np.r_[0, miss.astype(np.int8), 0])
        if (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max() > max_gap:
            return None
        for a in range(2):
            out[j, miss, a] = np.interp(frames[miss], k, P[j, k, a])
    return out


def _chained_steps(P, use) -> np.ndarray:
    """The motion tracks share, chained from frame to frame: in each frame, the median over the
    tracks measured there of where each puts it, its position less its position in the last frame
    it was measured in, plus the shared motion there (NaN in a frame with no track measured; where
    none of them was measured before, the last frame's value). ``P`` (m, n, 2), ``use`` (m, n)
    bool; relative to the first frame with a track."""
    m, n = use.shape
    T = np.full((n, 2), np.nan)
    seen = np.full(m, -1)  # the last frame each track was measured in
    last = -1  # the last frame with any track
    for k in range(n):
        now = np.flatnonzero(use[:, k])
        if now.size == 0:
            continue
        before = now[seen[now] >= 0]
        if last < 0:
            T[k] = 0.0
        elif before.size:
            prev = seen[before]
            T[k] = np.median(T[prev] + P[before, k] - P[before, prev], axis=0)
        else:
            T[k] = T[last]
        seen[now] = k
        last = k
    return T


def smooth_tracks(
    positions, measured, *, min_frames: int = 9, iterations: int = 4, heteroscedastic: bool = True
) -> SmoothedTracks:
    """Separate the tracks of a scan into shared motion, smooth own motion and noise.

    Parameters
    ----------
    positions : ndarray (m, n_frames, 2)
        ``(y, x)`` of every particle in every frame (NaN: none).
    measured : ndarray (m, n_frames) bool
        Frames whose position was measured (not filled in).
    min_frames : int
        A particle measured in fewer frames keeps its positions and does not take part.
    iterations : int
        Alternations between the shared motion and the own motions.
    heteroscedastic : bool
        Weigh each particle's frames by its noise there (:func:`_precision`, from the second round on):
        a small particle's pre-edge frames, several times noisier than its post-edge ones, then pull its smooth
        and the shared motion less.

    Returns
    -------
    SmoothedTracks

    Raises
    ------
    ValueError
        On shapes that do not match.

    Notes
    -----
    The shared motion ``T(k)`` is the mean over the particles measured in frame ``k`` of
    ``p_j(k) - r_j - o_j(k)``, weighted by ``1 / sigma_j**2`` times the frame's bisquare
    weight and the particle's precision there (a badly measured particle or frame hardly pulls
    it); each ``o_j`` is :func:`smooth_series` of ``p_j - r_j - T`` per axis, its frames weighed
    by that precision. ``T`` is rough: jitter and jumps of
    the whole field stay in every position exactly as measured, averaged over the
    particles. Only what a particle does on its own is smoothed, as much as GCV finds its
    data support. Jumps of a particle's own (:func:`find_steps`) are sought against the shared
    motion chained from the particles' frame-to-frame steps (:func:`_chained_steps`, their
    median), which one particle's jump does not move; where one is found, the own motions are
    taken from that shared motion once, cut at their jumps, and the mean is taken again after.
    With fewer than two particles taking part nothing is changed.

    The smooth assumes that the frames are in the order they were taken. Where the positions less the
    median over the particles alternate from frame to frame over a run of frames
    (:func:`_alternation`), as the frames of two passes over the energies do once sorted by energy, those
    frames (:attr:`SmoothedTracks.alternating`) weigh nothing in the own motions (each is smoothed over the
    other frames) and keep their measured positions; in the shared motion they weigh alike. A particle with
    fewer than ``min_frames`` frames outside them takes no part.
    """
    P = np.asarray(positions, float)
    M = np.asarray(measured, bool)
    if P.ndim != 3 or P.shape[2] != 2:
        raise ValueError(f"positions must be (particles, frames, 2), got shape {P.shape}")
    if M.shape != P.shape[:2]:
        raise ValueError(f"measured of shape {M.shape} does not match positions {P.shape[:2]}")
    m, n = M.shape
    use = M & np.isfinite(P).all(axis=2)
    part = use.sum(axis=1) >= max(min_frames, 4)
    sigma = np.full(m, np.nan)
    dof = np.full((m, 2), np.nan)
    nothing = SmoothedTracks(P.copy(), np.full((n, 2), np.nan), sigma, dof, np.zeros(m, bool))
    if part.sum() < 2 or n < max(min_frames, 4):
        return nothing
    # the first shared motion. Where every particle is measured in every frame, the mean over
    # them (each particle from its median position). Where the particles measured change (one
    # leaving the field, frames not located), that mean jumped where one came or went (its median
    # lies elsewhere on a drift, its own motion differs): the others' frames there became outliers
    # of their own smooth motions and the shared motion followed the few particles present (the
    # default scene drifting (+50, -70) px in whole pixels, one particle leaving: every particle
    # 0.19 px RMS, its frames measured to 0.01 px); there it is chained from the frame-to-frame
    # steps of the particles (each from the last frame it was measured in). A particle missing
    # only in a few frames inside its track has them bridged for that mean instead (its own
    # positions interpolated): chained steps are a median of a few particles' steps, noisier than
    # their mean (stress-all seed 2, learned: one particle not located in one frame, the chained
    # start 0.578 / 0.396 px worst / median over the smoothing's output, bridged 0.565 / 0.373)
    take = use & part[:, None]
    T0 = None
    if not take[part].all():
        bridged = _bridged(P[part], take[part], SHORT_GAP)
        if bridged is None:
            T0 = _chained_steps(P, take)
        else:
            T0 = np.mean(bridged - np.median(bridged, axis=1, keepdims=True), axis=0)
    ref = np.zeros((m, 2))
    for j in np.flatnonzero(part):
        ref[j] = np.median(P[j, use[j]] - (0.0 if T0 is None else T0[use[j]]), axis=0)
    # frames whose positions alternate from frame to frame (two passes over the energies sorted by energy: the
    # frame order is not the time order there) are not smoothed across: each own motion is smoothed over the
    # other frames, the positions there stay as measured (the default scene rendered on a two-pass grid, seed 5:
    # smoothed across, 0.35-1.64 px RMS and up to 4.7 px off where measured to 0.17 px). Sought in the positions
    # less their median over the particles: one particle's outliers do not pass into the others' (as the mean's)
    first = np.full((n, 2), np.nan)
    have = take.any(axis=0)
    first[have] = np.nanmedian(np.where(take[..., None], P - ref[:, None], np.nan)[:, have], axis=0)
    alt, alt_px = _alternation(P - ref[:, None] - first[None], take)
    part &= (use & ~alt).sum(axis=1) >= max(min_frames, 4)
    if part.sum() < 2:
        return replace(nothing, alternating=alt, alternation_px=alt_px)
    own = np.zeros((m, n, 2))
    rw = use.astype(float)  # bisquare weights per particle and frame (both axes' product)
    sig = np.ones(m)
    Pz = np.where(use[..., None], P, 0.0)
    T = np.zeros((n, 2))
    last_s = np.full((m, 2), np.nan)  # each series' smoothing parameter, searched near it next time
    steps = [[(), ()] for _ in range(m)]  # per particle and axis, where its own motion jumps
    taking = use & part[:, None]  # the positions the shared motion is taken from
    prec = np.ones((m, n))  # each particle's precision per frame, relative to its mean (1: alike)
    rounds = max(1, iterations)
    it = -1
    while True:
        it += 1
        # the last round lets each own motion jump where its data say so (find_steps): the
        # search is costly, and the shared motion has settled by then. Where one does, the shared
        # motion is taken again with that jump in its own motion (STEP_REFITS rounds, the jumps kept
        # where found): it had been taken with the jump smoothed over, which every other particle
        # then shared (8 particles, one jumping 2.5 px on its own: the seven still ones 0.63 px off
        # around the jump, their frames flagged; after, 0.05 px)
        last = it == rounds
        refit = it > rounds
        w = np.where(part[:, None], rw * prec / sig[:, None] ** 2, 0.0)
        wsum = w.sum(axis=0)
        D = Pz - ref[:, None] - own
        T_new = np.einsum("jk,jka->ka", w, D) / np.where(wsum > 0, wsum, 1.0)[:, None]
        if it == 0 and T0 is not None:
            T_new = T0.copy()
        # a frame where every particle's weight is 0: one particle's wrong position pulled the
        # unweighted first estimate so far that every residual there became an outlier; the
        # median over the particles measured there is not pulled so (stress-all seed 2: a faint
        # 10-px particle 10.6 and 13.0 px off in two frames left both frames unsmoothed for
        # every particle, that particle's positions there as measured)
        lost = (wsum <= 0) & taking.any(axis=0)
        if lost.any():
            T_new[lost] = np.nanmedian(np.where(taking[..., None], D, np.nan)[:, lost], axis=0)
        T_new[(wsum <= 0) & ~lost] = np.nan
        change = np.nanmax(np.abs(T_new - T)) if np.isfinite(T_new).any() else 0.0
        T = T_new
        found = None
        if last:
            # the jumps are sought against the shared motion chained from the particles' frame-to-frame
            # steps (their median), not against the mean: where one particle jumped on its own, the mean
            # carried its jump (less what its smooth own motion took) divided by the particles into every
            # other particle's remainder, which was found as a jump of their own in some and smoothed
            # into the others (6 particles, one jumping 3 px: two of the five still ones given a step,
            # all five 0.10-0.18 px off around it where measured to 0.02 px; now 0.03-0.04, no step in
            # them; tests/test_own_jump_no_leak.py). Where a jump is found, its
            # round starts again from that shared motion, each own motion cut where its jump is; the
            # mean is taken again in the STEP_REFITS rounds after it
            T_search = _chained_steps(P, taking)
            T_search = np.where(np.isfinite(T_search) & np.isfinite(T), T_search, T)
            T_search += np.nanmedian(T - T_search, axis=0)
            found = {}
            for j in np.flatnonzero(part):
                ok = use[j] & np.isfinite(T_search).all(axis=1)
                for a in range(2):
                    search = np.where(ok, P[j, :, a] - ref[j, a] - T_search[:, a], np.nan)
                    found[j, a] = smooth_series(search, weights=(ok & ~alt) * prec[j], near=last_s[j, a]).steps
            if any(found.values()):
                T = T_search
        for j in np.flatnonzero(part):
            ok = use[j] & np.isfinite(T).all(axis=1)
            y = P[j] - ref[j] - T
            wj = np.ones(n)
            noise = []
            w0 = (ok & ~alt) * prec[j]
            for a in range(2):
                sm = smooth_series(
                    np.where(ok, y[:, a], np.nan),
                    weights=w0,
                    near=last_s[j, a],
                    steps=False,
                    breaks=found[j, a] if last else steps[j][a],
                )
                last_s[j, a] = sm.s
                steps[j][a] = sm.steps
                own[j, :, a] = sm.values
                wj *= np.divide(sm.weights, w0, out=np.zeros(n), where=w0 > 0)  # the bisquare's share
                dof[j, a] = sm.dof
                noise.append(sm.sigma)
            rw[j] = np.where(alt, 1.0, wj) * ok  # frames not smoothed across weigh alike in the shared motion
            if heteroscedastic and not (last or refit):
                prec[j] = _precision(y, ok & ~alt)
            sigma[j] = float(np.hypot(*noise) / np.sqrt(2))
            sig[j] = max(sigma[j], 0.01) if np.isfinite(sigma[j]) else 1.0
        if (last and not any(any(a) for a in steps)) or it >= rounds + STEP_REFITS:
            break
        if not (last or refit) and change < 1e-3:
            rounds = it + 1  # settled: one last round, with steps
    out = P.copy()
    smoothed = np.zeros(m, bool)
    for j in np.flatnonzero(part):
        ok = use[j] & np.isfinite(T).all(axis=1)
        out[j, ok] = ref[j] + T[ok] + own[j, ok]
        out[j, use[j] & alt] = P[j, use[j] & alt]
        smoothed[j] = True
    sigma[~smoothed] = np.nan
    dof[~smoothed] = np.nan
    return SmoothedTracks(
        out,
        T,
        sigma,
        dof,
        smoothed,
        tuple(tuple(sorted(set(k[0]) | set(k[1]))) for k in steps),
        alternating=alt,
        alternation_px=alt_px,
    )
