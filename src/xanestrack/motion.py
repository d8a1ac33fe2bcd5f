"""Deformation: trajectories, displacement, velocity, acceleration, rigid vs non-rigid.

From the per-frame centre of mass of every tracked particle:

- cumulative displacement ``dy, dx`` relative to the first frame (for a particle entering the field
  later, to its first frame vouched for: its own motion before is not seen);
- velocity ``vy, vx`` and acceleration ``ay, ax`` (central differences; per frame, or
  per second when frame times are given);
- common motion: a similarity per frame (translation + isotropic scale, optionally
  rotation) fitted robustly over the particles, because a zone plate's magnification
  changes with the energy and a scale change moves every particle radially. A particle's
  rigid displacement is where that similarity takes its first position; its non-rigid
  motion is the residual. On a scan with a pure magnification change no particle comes
  out "non-rigid";
- motion relative to a reference particle.

The paper summarises deformation by the ratio of the peak non-rigid to the peak rigid
velocity per component (4.37 vertical, 2.14 horizontal on its data);
:func:`peak_ratios` computes it per particle.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .robust import MAD_TO_SIGMA, robust_sigma

__all__ = [
    "compute_motion",
    "peak_ratios",
    "noise_maximum",
    "OWN_MOTION_NOISE_COLUMNS",
    "OWN_MOTION_SPLIT_COLUMNS",
    "SPLIT_NOTE_PX",
    "undetermined_split_px",
    "MOTION_COLUMNS",
    "fit_similarity",
    "common_similarity",
    "common_motion_split",
    "SIMILARITY_COLUMNS",
]

#: per-frame common motion: translation of the centre, scale (1 = unchanged), rotation (rad)
SIMILARITY_COLUMNS = ["frame", "common_dy", "common_dx", "scale", "rotation_rad", "n_particles", "residual_px"]

MOTION_COLUMNS = [
    "particle",
    "frame",
    "y",
    "x",
    "dy",
    "dx",
    "vy",
    "vx",
    "ay",
    "ax",
    "rigid_dy",
    "rigid_dx",
    "nonrigid_dy",
    "nonrigid_dx",
    "rel_dy",
    "rel_dx",
    "rel_to",
]


def _deriv(a, t):
    if a.shape[0] < 2:
        return np.zeros_like(a)
    return np.gradient(a, t, axis=0)


def fit_similarity(src, dst, *, weights=None, rotation: bool = False, centre=None):
    """Least-squares similarity ``dst ~ c + t + s R(theta) (src - c)``.

    Parameters
    ----------
    src, dst : ndarray (n, 2)
        Point pairs ``(y, x)``.
    weights : ndarray (n,), optional
    rotation : bool
        Fit the rotation too (else ``theta = 0``).
    centre : (2,), optional
        The point the scale and rotation act about (default: weighted mean of ``src``).

    Returns
    -------
    t : ndarray (2,), scale : float, theta : float (rad)
    """
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    # np.average's arithmetic (the products summed, over the weights' sum) without its checks: called thousands
    # of times per scan on a few points
    ws = w.sum()
    ms = (src * w[:, None]).sum(axis=0) / ws
    md = (dst * w[:, None]).sum(axis=0) / ws
    c = ms if centre is None else np.asarray(centre, float)
    a = src - ms
    b = dst - md
    den = float((w * (a**2).sum(1)).sum())
    if den <= 1e-12:
        return md - ms, 1.0, 0.0
    dot = float((w * (a * b).sum(1)).sum())
    theta = 0.0
    if rotation:
        # (y, x) coordinates: cross term of a rotation by theta
        crs = float((w * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])).sum())
        theta = float(np.arctan2(crs, dot))
        scale = float(np.hypot(dot, crs) / den)
    else:
        scale = dot / den
    R = _rot(theta)
    # dst = md + s R (src - ms) = c + t + s R (src - c)  =>  t = md - c - s R (ms - c)
    t = md - c - scale * R @ (ms - c)
    return t, scale, theta


def _rot(theta):
    # acting on (y, x) row vectors (``points @ _rot(theta).T``): y' = y cos - x sin, x' = x cos + y sin; with
    # rows downwards as an image is shown, a positive theta turns the field counter-clockwise on the screen
    # (the comment here said the reverse, x' = x cos - y sin, y' = x sin + y cos)
    cs, sn = np.cos(theta), np.sin(theta)
    return np.array([[cs, sn], [-sn, cs]]).T


def _apply(points, t, scale, theta, centre):
    return centre + t + scale * (np.asarray(points, float) - centre) @ _rot(theta).T


def _unapply(points, t, scale, theta, centre):
    """The inverse of :func:`_apply`: where the similarity takes these points from."""
    return centre + (np.asarray(points, float) - centre - t) @ _rot(-theta).T / scale


def common_similarity(
    P,
    *,
    reference=None,
    rotation: bool = False,
    centre=None,
    min_particles: int = 3,
    max_iter: int = 12,
    scale_axis=None,
    refit_weights: bool = True,
):
    """Common motion of every frame: a similarity fitted robustly over the particles.

    Parameters
    ----------
    P : ndarray (n_frames, n_particles, 2)
        Positions (NaN where unknown).
    reference : ndarray (n_particles, 2), optional
        Positions the similarity maps from (default: each particle's first known one).
    rotation : bool
        Fit a rotation as well.
    centre : (2,), optional
        The point scale and rotation act about (default: the reference positions' mean;
        the pipeline passes the frame centre, the optical axis).
    min_particles : int
        With fewer particles in a frame, only a translation is fitted (a scale from two
        particles would absorb their relative motion).
    scale_axis : ndarray (n_frames,), optional
        The photon energy of each frame: the scale is then one straight line in it,
        ``1 + kappa * (E - E_0)`` (a zone plate's focal length, hence its magnification,
        changes linearly with the energy), fitted robustly to the frames' own scales and
        weighted by the particles each had; every frame's translation is then refitted
        with its scale fixed. One parameter for the whole scan instead of one per frame:
        a few particles drifting on their own cannot fake a magnification in one frame.
        The line is kept only if the particles share it (:func:`_magnification_is_shared`:
        their own radial slopes' mean three standard errors from zero, the particles the
        frames' robust similarities drop as drifting on their own left out); else the
        scale is 1: particles drifting on their own fake no magnification either. The
        line dropped is kept in ``attrs["dropped_scale"]`` (its scale at the two ends of
        ``scale_axis``) and ``attrs["dropped_scale_t"]`` (how far the particles leaned towards it: the
        test's t-statistic; absent where no majority was left to test), on record only: no run note says it (the
        default scenes' particles, drifting on their own with no magnification, lean towards lines of -0.5 to
        +1.6 % at t 0.3-2.4; the crowded scene whose true +0.5 % was dropped, at t 0.4).
    refit_weights : bool
        With ``scale_axis``: each frame's translation (its scale fixed) is fitted robustly
        again, its weights found for it; else it is the mean weighted as the frame's own
        similarity weighted the particles (the matrix's motion behind the particles,
        :func:`xanestrack.pipeline._matrix_shifts`, is measured better so on the stress
        family, whose 0.2 % magnification the line rarely finds: those weights had let the
        magnification take the far particles' radial motion).

    Returns
    -------
    params : DataFrame with :data:`SIMILARITY_COLUMNS` (``frame`` is the row index)
        ``residual_px`` is the plain (unweighted) RMS of the distances of the ``n_particles`` fitted
        from where the frame's similarity takes them, those the robust fit all but ignored included.
        ``attrs["centre"]``: the point the scale acts about; ``attrs["dropped_scale"]`` (only with
        ``scale_axis``, where the line fitted was not kept): its scale at the scan's two ends;
        ``attrs["rotation_fitted"]`` (only with ``rotation``): per frame, whether its rotation was fitted
        (``rotation_rad`` is 0 where not: :func:`rotation_reported`).
    rigid : ndarray (n_frames, n_particles, 2)
        Where each particle's reference position is taken by its frame's similarity.
    """
    params, rigid, _ = _common_similarity(
        P,
        reference=reference,
        rotation=rotation,
        centre=centre,
        min_particles=min_particles,
        max_iter=max_iter,
        scale_axis=scale_axis,
        refit_weights=refit_weights,
    )
    return params, rigid


def rotation_reported(params):
    """The rotation of each frame as reported: ``rotation_rad`` of :func:`common_similarity`'s table, NaN in the
    frames where a rotation was asked for and not fitted (``attrs["rotation_fitted"]``; fewer than three
    particles kept), where the table holds the 0 the rigid positions applied. Without the attribute (no
    rotation asked for) the column as it is.

    A field turning by 1.5 degrees, tracked with two particles and ``--rotation``, read a rotation of 0.000
    in every frame, a measurement of no turn, where none was measured.
    """
    theta = params["rotation_rad"].to_numpy(float).copy()
    fitted = params.attrs.get("rotation_fitted")
    if fitted is not None and len(fitted) == len(theta):
        theta[~np.asarray(fitted, bool)] = np.nan
    return theta


def _common_similarity(
    P,
    *,
    reference=None,
    rotation: bool = False,
    centre=None,
    min_particles: int = 3,
    max_iter: int = 12,
    scale_axis=None,
    refit_weights: bool = True,
    scale_slope=None,
):
    """:func:`common_similarity`, and the weights ``(n_frames, n_particles)`` its robust fits gave the particles in
    each frame (0 where a particle was not fitted). ``scale_slope`` (with ``scale_axis``): the scale line's slope per
    unit of ``scale_axis``, taken as given (neither fitted nor tested: :func:`common_motion_split` refits the
    translations with one particle left out and the scale as the whole fit found it)."""
    P = np.asarray(P, float)
    n, m = P.shape[:2]
    if reference is None:
        reference = np.full((m, 2), np.nan)
        for j in range(m):
            ok = np.flatnonzero(np.isfinite(P[:, j]).all(axis=1))
            if ok.size:
                reference[j] = P[ok[0], j]
    ref = np.asarray(reference, float)
    have_ref = np.isfinite(ref).all(axis=1)
    c = (
        np.nanmean(ref[have_ref], axis=0)
        if centre is None and have_ref.any()
        else (np.zeros(2) if centre is None else np.asarray(centre, float))
    )
    rows = np.zeros((n, 6))
    rigid = np.full(P.shape, np.nan)
    weights = np.zeros((n, m))
    turned = np.zeros(n, bool)  # frames whose rotation was fitted (not left at 0 for want of particles)
    params_dropped, dropped_t = None, np.nan
    for k in range(n):
        ok = np.isfinite(P[k]).all(axis=1) & have_ref
        t, s, th, res = np.zeros(2), 1.0, 0.0, np.nan
        if ok.sum() == 2:
            # two particles: their mean translation, each keeping half their relative motion. Reweighted, one of two
            # always loses: the shared motion followed one particle or the other from frame to frame (weights [1,
            # 1 - eps] missed the tie of the weighted median), and the other took the whole relative motion
            src, dst = ref[ok], P[k, ok]
            w = np.ones(2)
            t = (dst - src).mean(axis=0)
            r = np.hypot(*(dst - _apply(src, t, s, th, c)).T)
            res = float(np.sqrt(np.mean(r**2)))
        elif ok.sum() >= 1:
            src, dst = ref[ok], P[k, ok]
            w = np.ones(ok.sum())
            # start from the median translation, so that one drifting particle cannot
            # skew the first fit; then reweighted similarity fits
            t = _weighted_median(dst - src, w)
            r = np.hypot(*(dst - _apply(src, t, s, th, c)).T)
            need = max(min_particles, 3 if rotation else 2)  # particles a similarity is fitted to, at least
            for it in range(max_iter + 1):
                if it > 0:
                    if (w > 0).sum() >= need:
                        t, s, th = fit_similarity(src, dst, weights=w, rotation=rotation, centre=c)
                        turned[k] = rotation
                    else:
                        t, s, th = _weighted_median(dst - src, w), 1.0, 0.0
                        turned[k] = False
                    r = np.hypot(*(dst - _apply(src, t, s, th, c)).T)
                w_new = _robust_weights(r, w)
                if it == 0 and ok.sum() >= need > np.count_nonzero(w_new):
                    # dropped on a translation's residuals, which hold a magnification's radial motion, the frame
                    # would stay a translation (its drops confirmed by the same residuals): the closer fit decides
                    w_new = _start_or_similarity(src, dst, r, w_new, rotation=rotation, centre=c)
                if w_new.sum() < 1e-6 or (it > 0 and _settled(w_new, w)):
                    break
                w = w_new
            # the plain RMS over the particles fitted: weighted as the fit weighs them (~1 / r), the SSRL pair's
            # residuals 0.02-0.97 px read 0.13 px where their RMS is 0.59
            res = float(np.sqrt(np.mean(r**2)))
        rows[k] = (*t, s, th, ok.sum(), res)
        rigid[k, have_ref] = _apply(ref[have_ref], t, s, th, c)
        weights[k, np.flatnonzero(ok)] = w if ok.sum() >= 1 else 0.0
    if scale_axis is not None and (n >= 3 or scale_slope is not None):
        e = np.asarray(scale_axis, float)
        fitted = rows[:, 4] >= max(min_particles, 2)  # frames whose own scale was fitted
        wf = np.where(fitted, np.sqrt(weights.sum(axis=1)), 0.0)
        # a slope given is applied whatever the particles in each frame: with one of 3 left out (2 a frame, no scale
        # of their own) it was skipped, the translations fitted at scale 1, and a kept 1 % magnification read as
        # 1.0-1.7 px of every particle's own motion and a common motion "not determined" (common_motion_split)
        if scale_slope is not None or (wf > 0).sum() >= SCALE_LINE_MIN_FRAMES:
            x = e - e[0]
            kappa = 0.0
            wk = wf.copy()
            for _ in range(0 if scale_slope is not None else 5):  # robust straight line through (0, 1)
                kappa = float((wk * x * (rows[:, 2] - 1)).sum() / max((wk * x * x).sum(), 1e-30))
                r = np.abs(rows[:, 2] - 1 - kappa * x)
                sc = robust_sigma(r[wk > 0], centre=0.0) + 1e-9
                wk = wf * (r < 4 * sc)
            # the particles each frame's own robust similarity keeps (weight above 0) in most of the frames fitted:
            # a particle drifting on its own is dropped by them once its drift exceeds the others' spread
            seen = fitted[:, None] & np.isfinite(P).all(axis=2) & have_ref
            with np.errstate(invalid="ignore"):
                kept = ((weights > 0) & seen).sum(axis=0) / seen.sum(axis=0)
            test = {}
            if scale_slope is not None:
                kappa = float(scale_slope)
            elif not _magnification_is_shared(
                P, ref, have_ref, c, x, kappa, rows[:, :2], own_movers=kept < MAGNIFICATION_INLIER_SHARE, stats=test
            ):
                if kappa != 0.0:
                    # on record: the scale line's ends across the scan, and how far the particles leaned towards it
                    params_dropped = (1.0 + kappa * float(np.nanmin(x)), 1.0 + kappa * float(np.nanmax(x)))
                    dropped_t = test.get("t", np.nan)
                kappa = 0.0  # particles drifting on their own, not one magnification: no scale
            for k in range(n):
                ok = np.isfinite(P[k]).all(axis=1) & have_ref
                sk = 1.0 + kappa * x[k]
                th = rows[k, 3]
                if ok.any():
                    w = weights[k, ok]
                    w = w if w.sum() > 0 else np.ones(ok.sum())
                    src, dst = ref[ok], P[k, ok]
                    # translation with the scale (and rotation) fixed: weighted mean residual, the
                    # weights found again for it (those of the frame's own similarity were for its
                    # residuals, not these: with the scale line dropped, 4 particles that moved by
                    # less than 0.2 px between two frames had the shared translation jump by 0.87 px)
                    d = dst - c - sk * (src - c) @ _rot(th).T
                    for _ in range(max_iter + 1 if refit_weights else 1):
                        t = np.average(d, axis=0, weights=w)
                        r = np.hypot(*(d - t).T)
                        w_new = _robust_weights(r, w)
                        if w_new.sum() < 1e-6 or _settled(w_new, w):
                            break
                        w = w_new
                    r = np.hypot(*(dst - _apply(src, t, sk, th, c)).T)
                    weights[k, np.flatnonzero(ok)] = w
                    rows[k] = (*t, sk, th, ok.sum(), float(np.sqrt(np.mean(r**2))))
                    rigid[k, have_ref] = _apply(ref[have_ref], t, sk, th, c)
    empty = rows[:, 4] == 0
    if empty.any() and (~empty).any():
        # a frame in which no particle was measured (no beam, the sample out): its similarity
        # interpolated from the frames on either side, not the identity (which made every
        # particle's interpolated position there its own motion: 7-11 px on the default scene);
        # n_particles says 0
        f = np.arange(n)
        for col in range(4):
            rows[empty, col] = np.interp(f[empty], f[~empty], rows[~empty, col])
        # a turn interpolated between frames whose turn was fitted is measured; next to one left at 0, not
        turned[empty] = np.interp(f[empty], f[~empty], turned[~empty].astype(float)) > 1 - 1e-9
        for k in np.flatnonzero(empty):
            rigid[k, have_ref] = _apply(ref[have_ref], rows[k, :2], rows[k, 2], rows[k, 3], c)
    params = pd.DataFrame(rows, columns=SIMILARITY_COLUMNS[1:])
    params.insert(0, "frame", np.arange(n))
    params["n_particles"] = params["n_particles"].astype(int)
    params.attrs["centre"] = c.tolist()
    if rotation:
        # rotation_rad is 0 in the frames whose turn was not fitted (fewer than three particles kept): the value the
        # rigid positions applied, not a measurement (rotation_reported gives NaN there for the user)
        params.attrs["rotation_fitted"] = turned.tolist()
    if params_dropped is not None:
        params.attrs["dropped_scale"] = params_dropped
        if np.isfinite(dropped_t):  # (a NaN attribute does not round-trip through results.h5 as equal)
            params.attrs["dropped_scale_t"] = dropped_t
    return params, rigid, weights


#: particles :func:`common_motion_split` leaves out, one at a time, at most: those the common fits weighed most over
#: the scan (a particle the fits drop, drifting on its own, moves them little when left out: the README's default
#: scenes, 9 particles, give the same largest with 6 left out as with all 9). Each costs one more fit of the common
#: motion, two where a scale line was kept (0.1 s for 5 particles over 60 frames, 0.35 s for 9 over 143)
SPLIT_MAX_LEFT_OUT = 6
#: frames with a scale of their own (``max(min_particles, 2)`` particles or more) that the straight scale line in the
#: energy (:func:`common_similarity`) needs to be fitted and tested; with fewer, no line (scale 1)
SCALE_LINE_MIN_FRAMES = 3
#: frames :func:`common_motion_split` fits with each particle left out, at most, spread over the scan, where the
#: scale is taken as the whole fit found it (each frame then fitted on its own; the frames between take their
#: nearest one's move)
SPLIT_MAX_FRAMES = 48


#: px: the run note on the split (:func:`xanestrack.pipeline._split_notes`) is given where fitting the common motion
#: again with any one particle left out (:func:`common_motion_split`) moves it by this much or more, and some
#: particle's own motion over its frames vouched for as much (and more than the median particle's
#: ``max_nonrigid_noise_px``). Leaving one out shows a lower bound of the doubt, not its size. Measured (the largest
#: ``own_motion_split_px`` over the particles; beside it the largest error of the common motion against the
#: generator's stage motion): reduced stress-drift seeds 1-3 2.50 / 3.50 / 1.99 px (error 2.62 / 2.89 / 1.92; seed 1
#: transposed 2.51, with stage jitter added 2.55), stress-all 3.6-11.6 (1.0-9.5); the reduced default scenes (256 px,
#: 60 energies, 5 particles) 0.93 / 1.09 / 1.94 (error 0.13 / 2.70 / 1.96: all but one particle drift 1-6 px on their
#: own there too), the README's default scene (460 px, 143 energies, 9 particles) seeds 1-3 1.20 / 1.34 / 0.67 (error
#: 1.85 / 0.54 / 0.84); the other reduced stress runs (counts, crowd, fines, jitter, magnification, seeds 1-3)
#: 0.18-0.96, and stress-counts seed 1 1.65, from its kept 1.65 % magnification (truly 0.2 %) that one particle left
#: out drops (the magnification's note says so; its translation moves 0.21 px)
SPLIT_NOTE_PX = 1.0


def common_motion_split(
    P, reference, params, rigid, weights, *, rotation: bool = False, centre=None, scale_axis=None, min_particles=3
):
    """How far the common motion, and so each particle's own motion, moves with any one particle left out.

    The common similarity (:func:`common_similarity`) is what most particles share, as a median is. Where most
    particles move on their own with none shared by a majority (stress-drift: 4 of 5 drifting 3-9 px each; the
    default scenes: all but one drifting 1-6 px), it settles on whichever particles win a near-tie, frame by frame,
    and which ones win is decided by differences far below the positions' errors: the common motion of reduced
    stress-drift seed 1 was 2.6 px off the stage's, a particle fixed to the cell was given 2.42 px of own motion
    (its noise bound 0.72 px), and the same scan transposed gave 0.55 px. The positions do not decide that split;
    this measures how far it is from being decided: the fit is made again with each particle left out (the
    :data:`SPLIT_MAX_LEFT_OUT` the fits weighed most), its scale as the whole fit found it (the straight line in
    ``scale_axis`` kept or dropped as it was: refitted and tested with 4 particles left, a line the 5 did not
    share was kept at 3-4 % on the default scene), and, where the line was kept, again with the line refitted and
    tested (a kept magnification the particles do not determine: reduced stress-crowd seed 1, 6 particles, +0.65 %
    kept where the truth is +0.2 %, dropped with one particle left out, as with an empty margin cropped or the
    frames transposed).

    Parameters
    ----------
    P, reference, rotation, centre, scale_axis, min_particles
        As given to :func:`common_similarity`.
    params, rigid, weights
        What :func:`_common_similarity` returned for them.

    Returns
    -------
    moves : ndarray (n_left_out, n_frames, n_particles, 2)
        Per particle left out, how far each particle's rigid displacement (where the common similarity takes its
        reference position) moves, ``(dy, dx)`` px, the scale as the whole fit found it; its own motion moves by as
        much the other way.
    left_out : ndarray (n_left_out,)
        The particles left out (indices into the columns of ``P``).
    line_moves : ndarray (n_left_out, n_frames, n_particles, 2) or None
        Where the scale line was kept: as ``moves``, with the line refitted and tested again; else None.
    scale_ends : ndarray (n_left_out,) or None
        Where the scale line was kept: its scale at the scan's far end (the largest ``|E - E_0|``) with each left
        out, 1 where the test drops the line then, NaN where the particles left cannot fit and test one (fewer
        than :data:`SCALE_LINE_MIN_FRAMES` frames with ``max(min_particles, 2)`` of them: 3 particles, one left
        out; their ``line_moves`` 0); else None.
    """
    P = np.asarray(P, float)
    ref = np.asarray(reference, float)
    n, m = P.shape[:2]
    if m < 3:  # two particles: the shared motion is their mean by rule (a note says so); one: no own motion
        return np.zeros((0, n, m, 2)), np.zeros(0, int), None, None
    seen = np.isfinite(P).all(axis=2).any(axis=0) & np.isfinite(ref).all(axis=1)
    order = np.argsort(-np.where(seen, np.nansum(weights, axis=0), -np.inf), kind="stable")
    left_out = np.sort(order[: min(SPLIT_MAX_LEFT_OUT, int(seen.sum()))])
    slope, far = None, None
    if scale_axis is not None:
        x = np.asarray(scale_axis, float) - float(np.asarray(scale_axis, float)[0])
        far = int(np.nanargmax(np.abs(x)))
        scale = params["scale"].to_numpy(float)
        # the line's slope as the whole fit found it (0 where it was dropped)
        slope = float(scale[far] - 1.0) / x[far] if x[far] != 0 and np.isfinite(scale[far]) else 0.0
        if not np.allclose(scale, 1.0 + slope * x, rtol=0, atol=1e-9):
            slope = None  # no line was fitted (too few frames with a scale of their own): scales per frame
    kept = slope is not None and slope != 0.0
    # with the scale as the whole fit found it, each frame is fitted on its own: the fits on frames spread over the
    # scan are those of every frame there, and a frame between takes its nearest one's (143 frames: a third of the
    # cost, +1.46 s -> +0.5 s of a 460^2 run); the line refitted and tested takes every frame
    sub = np.unique(np.linspace(0, n - 1, min(n, SPLIT_MAX_FRAMES)).round().astype(int))
    nearest = sub[np.clip(np.round(np.interp(np.arange(n), sub, np.arange(sub.size))).astype(int), 0, sub.size - 1)]
    at = np.searchsorted(sub, nearest)
    moves = np.zeros((left_out.size, n, m, 2))
    line_moves = np.zeros_like(moves) if kept else None
    ends = np.ones(left_out.size) if kept else None
    for i, j in enumerate(left_out):
        Q = P.copy()
        Q[:, j] = np.nan
        # the line refitted and tested needs frames with a scale of their own: with 2 particles left it is not
        # fitted and reads 1, as if the test had dropped it (3 particles, a true 1 % magnification: every
        # particle's own motion "uncertain by" 1.0-1.7 px and the line "dropped"); not tested, it is not counted
        testable = _scale_line_frames(Q, ref, min_particles) >= SCALE_LINE_MIN_FRAMES
        if kept and not testable:
            ends[i] = np.nan
        for refit in (False, True) if kept and testable else (False,):
            frames = slice(None) if refit or slope is None else sub
            p_j, r_j, _ = _common_similarity(
                Q[frames],
                reference=ref,
                rotation=rotation,
                centre=centre,
                min_particles=min_particles,
                scale_axis=None if scale_axis is None else np.asarray(scale_axis, float)[frames],
                scale_slope=None if refit else slope,
            )
            if refit:
                line_moves[i] = r_j - rigid
                ends[i] = float(p_j["scale"].iloc[far])
            elif slope is None:
                moves[i] = r_j - rigid
            else:
                moves[i] = r_j[at] - rigid[nearest]  # each frame its nearest fitted frame's shift
                moves[i][~np.isfinite(rigid)] = np.nan
    return moves, left_out, line_moves, ends


def _scale_line_frames(P, reference, min_particles: int = 3) -> int:
    """The frames of ``P`` (n_frames, n_particles, 2) in which :func:`_common_similarity` fits a scale of their own
    (``max(min_particles, 2)`` particles or more measured, with a reference position), which its scale line is
    fitted through."""
    have = np.isfinite(np.asarray(P, float)).all(axis=2) & np.isfinite(np.asarray(reference, float)).all(axis=1)
    return int(np.count_nonzero(have.sum(axis=1) >= max(min_particles, 2)))


def _settled(w_new, w) -> bool:
    """Whether IRLS weights have settled: ``np.allclose(w_new, w, atol=1e-3)`` (its default ``rtol`` 1e-5), written
    out: on the few particles of a frame ``np.allclose`` costs 30 us a call, and the common fits make about 1,300
    calls per fit of 143 frames (a quarter of :func:`common_similarity`'s time, with each particle left out as
    :func:`common_motion_split` fits it six times more)."""
    return bool(np.all(np.abs(w_new - w) <= 1e-3 + 1e-5 * np.abs(w)))


def _median_of_few(x) -> float:
    """``np.median`` of a few finite values (the residuals of a frame's particles), by a sort: the same number,
    without ``np.median``'s overhead of about 20 us a call (the common fits call it about 1,300 times per fit of
    143 frames, :func:`_robust_weights`)."""
    s = np.sort(np.asarray(x, float).ravel())
    h = s.size // 2
    return float(s[h]) if s.size % 2 else float((s[h - 1] + s[h]) / 2)


#: px: where the start of a frame's robust similarity (the median translation) drops so many particles that the rest
#: are too few for a similarity, the similarity fitted to every particle is taken instead if its largest residual is
#: no more than this above that of the translation refitted to the particles left (:func:`_start_or_similarity`):
#: about the least error of a position the robust fits assume (:func:`_robust_weights` cuts at 0.5 px at least, 4.7
#: times it). Measured, the similarity's largest residual less the translation's in the frames where it is asked (3
#: particles, 20 seeds each of two scenes: the reviewer's, 60 frames, 0.03 px noise, and tests/test_motion_split.py's,
#: 40 frames, 0.05 px): +1 % and still, -0.16 to +0.16 px; no magnification and one particle drifting 1, 1.5 or 2 px
#: on its own, +0.05 to +1.34 (5 % under +0.14 to +0.28). With it, which scenes keep a line changed on none of those
#: with a drifting particle; with none (the closer fit alone), two of three particles close together lost their
#: line still in seed 4 (both fits at the noise: 0.01-0.2 px)
SIMILARITY_START_MARGIN_PX = 0.1


def _start_or_similarity(src, dst, r, w, *, rotation: bool = False, centre=None):
    """The first weights of a frame's robust similarity where its start, a translation (residuals ``r``, weights
    ``w`` of :func:`_robust_weights`), drops so many particles that those left are too few for a similarity.

    Returns ``w``; or, where the similarity fitted to every particle (``src`` -> ``dst``, equal weights) leaves a
    largest residual no more than :data:`SIMILARITY_START_MARGIN_PX` above that of the translation refitted to the
    particles ``w`` keeps, the weights of that similarity's residuals.

    The start's residuals hold a magnification's radial motion. Dropped on them, the frame was fitted as a
    translation of the particles left, and the drop confirmed by residuals that still held it: of three still
    particles, two 21 px apart on one side of the centre and the third across it (64-90 px out), +1 % across the
    scan, the third was dropped in 25 of 40 frames once 0.5 px off the median translation, taken for drifting on its
    own (:data:`MAGNIFICATION_INLIER_SHARE`), and the scale line dropped: 1.56 px of own motion said of it, 0.78 px
    "uncertain", no note; with a fourth particle, one left out did the same (a false note that the magnification is
    not determined, ``own_motion_split_px`` 1.53 px). The closer fit decides: a magnification leaves the similarity
    at the noise and the particles left half their relative radial motion (the noise where they lie close
    together); a particle drifting on its own leaves the others' translation at the noise and the similarity, which
    takes up a part of its drift in the scale, much of the rest.
    """
    keep = w > 0
    if not keep.any():
        return w
    d = dst[keep] - src[keep]
    r_start = np.hypot(*(d - np.average(d, axis=0, weights=w[keep])).T)
    t, s, th = fit_similarity(src, dst, rotation=rotation, centre=centre)
    r_sim = np.hypot(*(dst - _apply(src, t, s, th, centre)).T)
    if r_sim.max() < r_start.max() + SIMILARITY_START_MARGIN_PX:
        return _robust_weights(r_sim, np.ones(r_sim.size))
    return w


def _robust_weights(r, w):
    """IRLS weights of residuals ``r`` (px), given the current weights ``w`` (which particles count
    in the spread): least absolute deviations (1 / max(r, 0.02 px): the common motion is what
    most particles share, as a median is) times Tukey's biweight at 4.7 x the MAD (at least
    0.5 px), which drops a particle drifting on its own altogether; scaled to a maximum of 1."""
    scale_r = max(MAD_TO_SIGMA * _median_of_few(r[w > 0]) if (w > 0).any() else 0.0, 0.5 / 4.685)
    u = r / (4.685 * scale_r)
    w_new = np.where(u < 1, (1 - u**2) ** 2, 0.0) / np.maximum(r, 0.02)
    return w_new / max(w_new.max(), 1e-12)


#: a particle that each frame's own robust similarity drops (weight 0: drifting on its own) in more than a
#: quarter of the frames fitted is left out of the test that the particles share a magnification
#: (:func:`_magnification_is_shared`), and at least half of the particles must be left. The crowded scene of
#: seed 3 (10 particles, 40 energies, +0.5 % across the scan, four drifting 2.5-5 px on their own): kept in 25-56 %
#: of the frames by the movers, 100 % by the six still ones. Default seeds 1, 2, 5, 23, hard and rigid seed 1 (60
#: energies), reduced stress-magnification seeds 1-3, -drift 1-3, -all 1-2, -counts, -fines, -jitter seed 1: 2 of 127
#: particles under it (0.57, 0), and whether a magnification was kept changed on none of them.
MAGNIFICATION_INLIER_SHARE = 0.75


#: a particle whose own radial slope lies closer to the others' (weighted median) than this many px of radial motion
#: across the scan (slope difference x lever x the scan's span) is never cut from :func:`_magnification_is_shared`
#: as drifting on its own. Still particles, the tool's tracks (reduced stress-magnification seeds 1-3, +1 %, 4
#: particles each): up to 0.38 px off the median (a particle 34-51 px from the centre, 0.03-0.35 px, was cut by the
#: MAD of the others' slopes, and seeds 1 and 3 lost their magnification); rigid scene (256 px, 60 energies) with 3
#: or 4 particles, +1 % or none: 0.005-0.125 px. Particles drifting on their own (reduced stress-drift seeds 1-3,
#: stress-all 1-2, default 1-2): 0.74-15 px where their drift is what the test must leave out, less where it is
#: mostly across their lever arm (and then moves the mean slope by as little). With it (and
#: :data:`MAGNIFICATION_SLOPE_ERROR_PX`) stress-magnification seeds 1 and 3 keep their line; whether one was kept
#: changed on none of the others
MAGNIFICATION_CUT_FLOOR_PX = 0.5

#: the error of one particle's own radial motion across the scan, px, that :func:`_magnification_is_shared` takes
#: at least for each slope in the mean's standard error. The rigid scene (256 px, 60 energies) with 3 or 4 still
#: particles, no magnification: the tool's radial slopes 0.005-0.125 px from their median across the scan. Built from
#: positions (as tests/test_magnification_few_particles.py does, 3 particles, no magnification, with a bias of 0.03 px
#: per component across the scan and 0.02 px of noise): all three slopes of one sign in seeds 1 and 4 of 10, 0.04-0.11 px, t = -4.2 and -5.6 from their spread alone,
#: and a scale of 0.9988 and 0.9993 was kept; with this error t = -1.4 and -0.9 (seeds 1-10 magnified by 1 %: t =
#: 11.4-13.1 with 3 particles, 15.1-16.3 with 4)
MAGNIFICATION_SLOPE_ERROR_PX = 0.1


def _magnification_is_shared(
    P, ref, have_ref, c, x, kappa, translation, *, min_lever: float = 0.2, own_movers=None, stats=None
):
    """Is a scale change ``kappa`` per unit of ``x`` what the particles share?

    A magnification moves every particle radially in proportion to its distance from the
    centre; particles drifting on their own move radially at random. Each particle's own
    radial slope (after each frame's ``translation``: that of the frame's own robust
    similarity, which a particle drifting on its own does not pull; the median translation
    taken before was pulled by it and by the magnification itself, and the rigid scene
    magnified by 1 % with one of six particles drifting 0.8 px lost its scale: the other
    five reported up to 1.1 px of own motion, nothing said) is computed for the particles
    with a lever of at least ``min_lever`` of the largest; the magnification is shared when
    their mean (weighted by lever squared, particles far from the rest left out) has the
    sign of ``kappa`` and lies more than three standard errors from zero. Measured: no
    magnification on the default preset (t = -1.5, -0.3 on seeds 1, 2; hard seed 1 -0.1,
    stress-drift -0.3), 1 % on stress-magnification found (t = 11 with 9 particles).

    ``own_movers`` (bool per particle) are left out first: those the frames' own robust similarities drop as
    drifting on their own (:data:`MAGNIFICATION_INLIER_SHARE`); at least half of the particles must be left. Two
    particles drifting inward passed the weighted-MAD cut (their radial slopes -0.0009 and -0.0066 across the scan
    against 0.0028-0.0097 for the six still ones) and pulled the t-statistic under 3: the crowded scene of seed 3,
    magnified by +0.5 % (fitted 0.66 %), lost its scale, and its still particles reported up to 1.04 px of own
    motion, the movers 1.0-1.3 px off, nothing said.

    The outlier cut is never closer than :data:`MAGNIFICATION_CUT_FLOOR_PX` of radial motion across the scan, and
    each slope's error is taken as at least :data:`MAGNIFICATION_SLOPE_ERROR_PX` in the mean's standard error. Of
    three slopes (the rigid scene, 256 px, 60 energies, +1 % linear in the energy: 21.2, 21.0, 19.8 x 1e-6 per eV,
    the truth 20.8) the MAD was set by the two closest and the third was cut: with 3 or 4 particles the scale was
    set to 1 and the still particles reported 0.6-0.9 px of own motion; now 1.0099 / 1.0094 (3 particles, seeds 1,
    2) and 1.0102 (4), own motions at most 0.04 / 0.07 / 0.12 px.
    """
    if kappa == 0.0:
        return False
    t = np.asarray(translation, float)
    lever = np.hypot(*(ref - c).T)
    use = have_ref & (lever >= min_lever * np.nanmax(np.where(have_ref, lever, np.nan)))
    if own_movers is not None:
        still = use & ~np.asarray(own_movers, bool)
        if still.sum() < 0.5 * use.sum():
            return False  # most particles drift on their own: no majority shares one slope
        use = still
    slopes, levers = [], []
    for j in np.flatnonzero(use):
        u = (ref[j] - c) / lever[j]
        rad = ((P[:, j] - ref[j] - t) @ u) / lever[j]
        fin = np.isfinite(rad) & np.isfinite(x)
        if fin.sum() >= 3 and (x[fin] ** 2).sum() > 0:
            slopes.append(float((x[fin] * rad[fin]).sum() / (x[fin] ** 2).sum()))
            levers.append(lever[j])
    slopes, levers = np.asarray(slopes), np.asarray(levers)
    if slopes.size < 3:
        return False
    # a far particle measures the scale best (weights lever^2); particles far from the
    # weighted median (4 weighted median absolute deviations: drifting on their own) are left
    # out. (The mean absolute deviation used before was itself inflated by the particles
    # drifting on their own: on the rigid scene magnified by -0.8 % with two of six drifting,
    # they stayed in, t = -2.8, and the magnification was dropped.)
    w = levers**2 / (levers**2).sum()

    def wmedian(v):
        o = np.argsort(v)
        return float(v[o][np.searchsorted(np.cumsum(w[o]), 0.5)])

    wmed = wmedian(slopes)
    mad = wmedian(np.abs(slopes - wmed))
    # the cut is never closer than MAGNIFICATION_CUT_FLOOR_PX of radial motion across the scan: of three or four
    # particles whose slopes agree within their errors, the MAD of the two closest cut the third
    span = float(np.nanmax(x) - np.nanmin(x))
    floor = MAGNIFICATION_CUT_FLOOR_PX / (levers * span) if span > 0 else 0.0
    keep = np.abs(slopes - wmed) <= np.maximum(4 * MAD_TO_SIGMA * mad, floor) + 1e-15
    if keep.sum() < max(3, 0.5 * slopes.size):
        return False  # no majority shares one slope
    w = w[keep] / w[keep].sum()
    mean = float((w * slopes[keep]).sum())
    neff = 1.0 / float((w**2).sum())
    sd = np.sqrt(float((w * (slopes[keep] - mean) ** 2).sum()) * neff / max(neff - 1.0, 1.0))
    # the mean's standard error is no less than each slope's own (MAGNIFICATION_SLOPE_ERROR_PX across the scan) would
    # give it: three slopes of one sign by chance, close together, read t = -4 to -6 where nothing was magnified
    own = MAGNIFICATION_SLOPE_ERROR_PX / (levers[keep] * span) if span > 0 else np.zeros(keep.sum())
    se = max(sd / np.sqrt(neff), float(np.sqrt((w**2 * own**2).sum())))
    t_stat = mean / (se + 1e-15)
    if stats is not None:  # signed towards kappa: how far the particles lean towards the scale fitted
        stats["t"] = float(t_stat * np.sign(kappa))
    return abs(t_stat) > 3 and np.sign(mean) == np.sign(kappa)


def _weighted_median(d, w):
    """Per column of ``d`` (n, 2), the weighted median; where the weights below one value make
    exactly half, the mean of it and the next (of two particles, their mean: not the lower one,
    a choice that moved each axis to whichever particle lay lower on it)."""
    out = np.zeros(2)
    for a in range(2):
        o = np.argsort(d[:, a])
        cw = np.cumsum(w[o])
        i = int(np.searchsorted(cw, 0.5 * cw[-1]))
        v = d[o, a]
        out[a] = 0.5 * (v[i] + v[i + 1]) if i + 1 < len(v) and np.isclose(cw[i], 0.5 * cw[-1]) else v[i]
    return out


def compute_motion(
    tracks: pd.DataFrame,
    *,
    reference_particle: int | None = None,
    frame_times_s=None,
    centre=None,
    rotation: bool = False,
    scale_axis=None,
    split: bool = True,
) -> pd.DataFrame:
    """Motion table from tracks.

    Parameters
    ----------
    tracks : DataFrame
        Columns ``particle, frame, y, x`` (centre of mass per frame; NaN where unknown),
        optionally ``reliable`` (bool): only those positions drive the common motion.
    reference_particle : int, optional
        Particle whose motion the ``rel_*`` columns are relative to (its id in column ``rel_to``);
        default the particle with the smallest non-rigid motion (the one that moves with the electrode).
    frame_times_s : ndarray (n_frames,), optional
        Acquisition time of each frame; velocities are then in px/s (column names keep
        ``v``/``a``; the unit is recorded in ``attrs["velocity_unit"]``).
    centre : (2,), optional
        Where the common scale acts about (the optical axis; the pipeline passes the
        frame centre). Default: the particles' mean position.
    rotation : bool
        Fit a rotation in the common similarity as well.
    scale_axis : ndarray (n_frames,), optional
        Photon energy per frame: the common scale is one straight line in it (see
        :func:`common_similarity`); default a scale per frame.
    split : bool
        Measure how far the split into common and own motion moves with any one particle left out
        (:func:`common_motion_split`; 3 particles or more).

    Returns
    -------
    DataFrame with ``MOTION_COLUMNS``; ``attrs`` holds ``reference_particle``, the units
    and ``similarity`` (the per-frame common similarity, :data:`SIMILARITY_COLUMNS`). With ``split``:
    ``similarity["split_px"]`` (per frame, the most any particle's own motion moves there with one particle
    left out, the scale as fitted), ``attrs["own_split"]`` (a table ``particle, frame, own_split_px``: how far that
    particle's own motion moves there, a kept scale line refitted too, NaN where not measured; :func:`peak_ratios`
    takes its largest over the frames counted), ``similarity.attrs["split_by_particle"]`` (``[particle, px]`` per
    particle left out: the most it moved any particle's own motion, the scale as fitted) and, where a scale line
    was kept, ``similarity.attrs["split_scale_ends"]`` (the least and largest scale at the scan's far end with one
    particle left out, the line refitted and tested: 1 where it was dropped then; of the particles left out whose
    others can fit and test a line, absent where none can: 3 particles, 2 left in every frame; then
    ``similarity.attrs["split_scale_untested"]`` is True).

    Notes
    -----
    ``dy, dx`` are from the particle's first position; where ``tracks`` has ``measured`` and a
    particle is first measured after its first frame (one entering the field), they are from its
    first frame vouched for (``reliable``), and so are its ``rigid_*`` (``nonrigid = d - rigid``
    still holds) and its ``rel_*`` (from the later of its first frame and the reference particle's):
    its own motion before it was seen cannot be measured. Its positions before are kept as given.
    """
    need = {"particle", "frame", "y", "x"}
    if not need <= set(tracks.columns):
        raise ValueError(f"tracks must have columns {sorted(need)}, got {list(tracks.columns)}")
    if len(tracks) == 0:
        out = pd.DataFrame(columns=MOTION_COLUMNS)
        out.attrs.update(
            reference_particle=None, velocity_unit="px/frame", similarity=pd.DataFrame(columns=SIMILARITY_COLUMNS)
        )
        return out
    piv_y = tracks.pivot(index="frame", columns="particle", values="y").sort_index()
    piv_x = tracks.pivot(index="frame", columns="particle", values="x").sort_index()
    frames = piv_y.index.to_numpy()
    for name, v, increasing in (("frame_times_s", frame_times_s, True), ("scale_axis", scale_axis, False)):
        if v is None:
            continue
        a = np.asarray(v, float)
        if a.ndim != 1 or a.size <= int(frames.max(initial=-1)) or not np.all(np.isfinite(a)):
            raise ValueError(
                f"{name} must be a finite value per frame ({int(frames.max(initial=-1)) + 1}), got {a.shape}"
            )
        if increasing and np.any(np.diff(a) <= 0):  # decreasing times flipped every velocity's sign
            raise ValueError(f"{name} must increase strictly from frame to frame")
    pids = piv_y.columns.to_numpy()
    P = np.stack([piv_y.to_numpy(), piv_x.to_numpy()], axis=-1)  # (n_frames, n_particles, 2)
    # fill unknown positions by interpolation for the derivatives (flags live in tracks)
    for j in range(P.shape[1]):
        for c in range(2):
            v = P[:, j, c]
            ok = np.isfinite(v)
            if ok.sum() >= 2 and not ok.all():
                P[:, j, c] = np.interp(frames, frames[ok], v[ok])
    first = np.array(
        [
            P[np.flatnonzero(np.isfinite(P[:, j, 0]))[0], j] if np.isfinite(P[:, j, 0]).any() else [np.nan, np.nan]
            for j in range(P.shape[1])
        ]
    )
    P_fit = P
    late = np.zeros(P.shape[1], bool)
    k_first = np.zeros(P.shape[1], int)
    if "reliable" in tracks:
        # only positions measured and vouched for drive the common motion
        rel = tracks.pivot(index="frame", columns="particle", values="reliable").sort_index().to_numpy()
        rel = rel.astype(bool) & np.isfinite(P).all(axis=2)
        P_fit = np.where(rel[..., None], P, np.nan)
    if "measured" in tracks:
        # a particle first measured after its first position (one entering the field): the
        # positions before are filled in; its reference is taken from its first frame vouched
        # for (``reliable``) from then on, else its first measured one. A particle measured from
        # the first frame on keeps its first position, vouched for or not (its own motion since
        # then counts: stress-drift seed 1, a particle 6.95 px off its start in truth, 7.03
        # reported, 2.68 from its first frame vouched for)
        meas = tracks.pivot(index="frame", columns="particle", values="measured").sort_index().to_numpy()
        meas = meas.astype(bool) & np.isfinite(P).all(axis=2)
        vouch = rel if "reliable" in tracks else meas
        for j in range(P.shape[1]):
            km = np.flatnonzero(meas[:, j])
            known = np.flatnonzero(np.isfinite(P[:, j]).all(axis=1))
            if km.size and known.size and km[0] > known[0]:
                kv = np.flatnonzero(vouch[km[0] :, j])
                late[j], k_first[j] = True, km[0] + kv[0] if kv.size else km[0]
    axis = None if scale_axis is None else np.asarray(scale_axis, float)[frames]
    # the first fit without the late particles where enough others are left: their reference (their filled-in
    # first position) is what it is there to find. With it, a particle deposited at frame 5 and first vouched for
    # at frame 12 kept a 3.2 % magnification in the common motion (truly none) and 1.65 px of own motion on a
    # particle truly still (the default scene, seed 5, 4 particles and the deposit)
    P_first = np.where(late[None, :, None], np.nan, P_fit) if late.any() and (~late).sum() >= 3 else P_fit
    sim, rigid_pos, fit_w = _common_similarity(
        P_first, reference=first, rotation=rotation, centre=centre, scale_axis=axis
    )
    if late.any():
        # such a particle's reference is where the common motion puts it in the first frame from that
        # position, not its filled-in first position: the default scene drifting
        # (-50, +70) px back to the unchanged field, a particle entering at frame 41 was reported
        # moving 9.8-10.1 px on its own in every frame vouched for (truly at most 1.3 px)
        c = np.asarray(sim.attrs["centre"], float)
        for j in np.flatnonzero(late):
            dy, dx, sc, th = sim.loc[k_first[j], ["common_dy", "common_dx", "scale", "rotation_rad"]].to_numpy(float)
            first[j] = _unapply(P[k_first[j], j], np.array([dy, dx]), sc, th, c)
        sim, rigid_pos, fit_w = _common_similarity(
            P_fit, reference=first, rotation=rotation, centre=centre, scale_axis=axis
        )
    D = P - first[None]
    sim["frame"] = frames
    RIG = rigid_pos - first[None]  # each particle's displacement by the common similarity
    for j in np.flatnonzero(late):
        # a late particle's displacements are from its first frame vouched for: its own motion before it
        # entered was not seen, and from its frame-0 position where the common motion puts it (which
        # takes that motion as none) its dy, dx were 2.6 px off in every frame vouched for, with no flag
        # (the default scene seen through a window sliding 60 px, a particle entering at frame 30)
        D[:, j] -= D[k_first[j], j]
        RIG[:, j] -= RIG[k_first[j], j]
    NR = D - RIG
    own_split = None
    if split:
        # how far the split into common and own motion moves with any one particle left out (the last fit's inputs:
        # P_first is P_fit unless late particles were left out of a first fit)
        moves, left_out, line_moves, ends = common_motion_split(
            P_fit, first, sim, rigid_pos, fit_w, rotation=rotation, centre=centre, scale_axis=axis
        )
        for mv in (moves, line_moves) if line_moves is not None else (moves,):
            for j in np.flatnonzero(late):  # (from its first frame vouched for, as its own motion)
                mv[:, :, j] -= mv[:, k_first[j] : k_first[j] + 1, j]
        size = np.hypot(moves[..., 0], moves[..., 1])
        if left_out.size:
            with np.errstate(invalid="ignore"):
                reach = np.where(np.isfinite(size), size, -np.inf).max(axis=(0, 2))
            # per frame: the common motion with its scale as fitted (the magnification's own doubt is in the
            # attrs' split_scale_ends and in each particle's own_split_px)
            sim["split_px"] = np.where(np.isfinite(reach), reach, np.nan)
            own_split = np.max(size, axis=0)  # NaN where a particle has no rigid displacement
            if line_moves is not None:
                own_split = np.fmax(own_split, np.max(np.hypot(line_moves[..., 0], line_moves[..., 1]), axis=0))
            most = np.where(np.isfinite(size), size, -np.inf).reshape(left_out.size, -1).max(axis=1)
            sim.attrs["split_by_particle"] = [
                [int(pids[j]), float(v)] for j, v in zip(left_out, most) if np.isfinite(v)
            ]
            if ends is not None and np.isfinite(ends).any():  # those tested (3 particles: none, no line refitted)
                sim.attrs["split_scale_ends"] = [float(np.nanmin(ends)), float(np.nanmax(ends))]
            elif ends is not None:
                # a kept line no particles left can test: said (pipeline._split_notes), as a particle drifting
                # radially on its own and a magnification read alike with three particles, two close together
                sim.attrs["split_scale_untested"] = True
        else:
            sim["split_px"] = np.nan
    if P.shape[1] < 2:
        # one particle: the common motion is its motion; its own cannot be told (not 0)
        NR = np.full_like(NR, np.nan)
    if reference_particle is None:
        with np.errstate(invalid="ignore"):
            spread = np.array(
                [np.nanmax(np.abs(NR[:, j])) if np.isfinite(NR[:, j]).any() else np.nan for j in range(NR.shape[1])]
            )
        ref_j = int(np.nanargmin(spread)) if np.isfinite(spread).any() else 0
        reference_particle = int(pids[ref_j])
    else:
        if reference_particle not in set(pids.tolist()):
            raise ValueError(
                f"`reference_particle` {reference_particle} is not among the tracked particles {pids.tolist()}"
            )
        ref_j = int(np.flatnonzero(pids == reference_particle)[0])
    t = frames.astype(float) if frame_times_s is None else np.asarray(frame_times_s, float)[frames]
    V = _deriv(D, t)
    A = _deriv(V, t)
    REL = D - D[:, ref_j : ref_j + 1, :]
    for j in np.flatnonzero(late | late[ref_j]):
        # from the later of the two particles' first frames: the displacements of both are known from there on
        k = max(k_first[j], k_first[ref_j])
        REL[:, j] = (D[:, j] - D[k, j]) - (D[:, ref_j] - D[k, ref_j])
    rows = []
    for j, pid in enumerate(pids):
        rows.append(
            pd.DataFrame(
                {
                    "particle": pid,
                    "frame": frames,
                    "y": P[:, j, 0],
                    "x": P[:, j, 1],
                    "dy": D[:, j, 0],
                    "dx": D[:, j, 1],
                    "vy": V[:, j, 0],
                    "vx": V[:, j, 1],
                    "ay": A[:, j, 0],
                    "ax": A[:, j, 1],
                    "rigid_dy": RIG[:, j, 0],
                    "rigid_dx": RIG[:, j, 1],
                    "nonrigid_dy": NR[:, j, 0],
                    "nonrigid_dx": NR[:, j, 1],
                    "rel_dy": REL[:, j, 0],
                    "rel_dx": REL[:, j, 1],
                    "rel_to": reference_particle,
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)
    unit = "px/frame" if frame_times_s is None else "px/s"
    out.attrs.update(reference_particle=reference_particle, velocity_unit=unit, similarity=sim)
    if split:
        out.attrs["own_split"] = pd.DataFrame(
            {
                "particle": np.repeat(pids, len(frames)),
                "frame": np.tile(frames, len(pids)),
                "own_split_px": (np.full(NR.shape[:2], np.nan) if own_split is None else own_split).T.reshape(-1),
            }
        )
    return out


def _own_motions(motion: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The particles' own (non-rigid) displacements ``(frames, particles, 2)`` and their first positions
    ``(particles, 2)`` (median over the frames of position less displacement), ``(y, x)``."""

    def table(col):
        return motion.pivot(index="frame", columns="particle", values=col).sort_index().to_numpy(float)

    NR = np.stack([table("nonrigid_dy"), table("nonrigid_dx")], axis=-1)
    with warnings.catch_warnings():  # a particle without a position: NaN, left out by the callers
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.stack(
            [np.nanmedian(table("y") - table("dy"), axis=0), np.nanmedian(table("x") - table("dx"), axis=0)], -1
        )
    return NR, ref


#: particles a frame needs for :func:`field_rotation` (one parameter, a turn or a scale, and a free translation; with
#: one particle left out, 3). Random own motions (smooth walks of 0.5-3 px over 40 frames, particles at random
#: places, 150 layouts each, compute_motion without rotation) read as a turn explaining a share of them of, median /
#: largest: 3 particles 0.36-0.43 / 0.88-0.92 (2-3 % of layouts 0.8 or more: the note), 4 particles 0.26-0.29 /
#: 0.70-0.79; the least with each one left out, 4 particles 0.24 / 0.66-0.76, 5 0.15-0.16 / 0.60-0.65. A default
#: scene of 3 particles (no turn) whose scan starts at 8300 eV: 81 %, the note, before
ROTATION_MIN_PARTICLES = 4


def field_rotation(motion: pd.DataFrame, *, kind: str = "rotation") -> tuple[np.ndarray, float]:
    """How much of the particles' own motion a turn (or a change of scale) of the whole field explains.

    Per frame, the angle (rad) of the rotation (``kind="scale"``: the change of scale, 1 less the
    frame's scale) that best explains the particles' own (non-rigid) displacements, least squares
    with a free translation (the common similarity's translation took the part of a turn that its
    centre sees, wherever that is: the lever arms are from the particles' centroid, not the image's
    centre, whatever point the field turns about); and the share of their sum of squares it
    explains over the scan (0 where there is nothing to explain). Where the common similarity was
    fitted without rotation, a turning field shows as every particle's own motion, at right angles
    to its lever arm (the rigid default scene turned by up to 3 degrees: own motions up to 12.9
    px, none reported as a rotation); where its scale is one straight line in the energy, a
    magnification that does not follow one shows along the lever arms (a 1 % step at
    mid-scan: every particle's own motion 0.3-1.4 px).

    Only frames with :data:`ROTATION_MIN_PARTICLES` or more particles count, and the share is the
    least of it with every particle and with each one left out (as :func:`field_strain`'s): one
    particle drifting on its own, far from the others' centroid, reads as a turn too.
    """
    if kind not in ("rotation", "scale"):
        raise ValueError(f"kind must be 'rotation' or 'scale', got {kind!r}")
    if not len(motion):
        return np.zeros(0), 0.0
    NR, ref = _own_motions(motion)
    ok = np.isfinite(NR).all(axis=2) & np.isfinite(ref).all(axis=1)[None]
    # the displacement of a small turn, per radian, in the similarity's sense (``rotation_rad``); of a scale
    if kind == "rotation":
        design = lambda lv: np.stack([-lv[:, 1], lv[:, 0]], -1).reshape(-1, 1)  # noqa: E731
    else:
        design = lambda lv: lv.reshape(-1, 1)  # noqa: E731
    theta, total, left = _field_fit(NR, ref, ok, design, ROTATION_MIN_PARTICLES)
    share = (1.0 - left / total) if total > 0 else 0.0
    for j in range(NR.shape[1]):
        without = ok.copy()
        without[:, j] = False
        _, t, lft = _field_fit(NR, ref, without, design, ROTATION_MIN_PARTICLES - 1)
        share = min(share, (1.0 - lft / t) if t > 0 else 0.0)
    return theta[:, 0], share


def _field_fit(NR, ref, ok, design, min_particles: int):
    """Per frame with ``min_particles`` or more particles ``ok``, the least-squares fit of their own displacements
    ``NR`` about their centroid (a free translation) on the columns of ``design(lever)`` ((2 n, p), the lever arms
    from the centroid of their first positions ``ref``): the parameters (frames, p), and the sums of squares of the
    own motions and of what the fits leave."""
    p = design(np.zeros((1, 2))).shape[1]
    params = np.zeros((NR.shape[0], p))
    total = left = 0.0
    for k in range(NR.shape[0]):
        o = ok[k]
        if o.sum() < min_particles:
            continue
        G = design(ref[o] - ref[o].mean(axis=0))
        d = (NR[k, o] - NR[k, o].mean(axis=0)).reshape(-1)
        params[k], *_ = np.linalg.lstsq(G, d, rcond=None)
        total += float((NR[k, o] ** 2).sum())
        left += float(((d - G @ params[k]) ** 2).sum())
    return params, total, left


def _gradient_design(lever):
    """Rows (dy, dx) of each point against the displacement gradient's entries A[0, 0], A[0, 1], A[1, 0], A[1, 1]."""
    G = np.zeros((2 * len(lever), 4))
    G[0::2, 0:2] = lever
    G[1::2, 2:4] = lever
    return G


#: particles a frame needs for :func:`field_strain` (an affine field has 6 parameters: with fewer
#: particles the own motions' random part is explained by chance, 3 / (2 n - 3) of it on average)
STRAIN_MIN_PARTICLES = 6


def _strain_fit(NR, ref, ok, min_particles: int = STRAIN_MIN_PARTICLES):
    """Per frame with ``min_particles`` or more particles ``ok``, the displacement gradient of :func:`field_strain`
    over them, and the sums of squares of the own motions and of what it leaves."""
    params, total, left = _field_fit(NR, ref, ok, _gradient_design, min_particles)
    return params.reshape(-1, 2, 2), total, left


def field_strain(motion: pd.DataFrame) -> tuple[np.ndarray, float]:
    """How much of the particles' own motion one uniform deformation of the whole field explains.

    Per frame with :data:`STRAIN_MIN_PARTICLES` or more particles, the 2 x 2 displacement gradient
    ``A`` (``(y, x)`` in rows and columns: ``A[0, 0]`` the strain along y, ``A[1, 1]`` along x, the
    off-diagonal the shear and turn) that with a free translation best explains the particles'
    own (non-rigid) displacements about their centroid, least squares; and the share of their sum
    of squares it explains over the scan, the least of it with every particle and with each one left
    out (one particle drifting on its own, far from the others' centroid, is explained by a gradient
    too: with 6 particles and no deformation the share passed 0.8 in 30 % of random layouts). What a
    similarity cannot represent (a stretch along one axis, a shear; a turn where rotation is not fitted)
    shows as every particle's own motion, a smooth pattern across the field: a uniform strain or shear
    of 1 % on the rigid scene explains 99.8-99.9 % of them.
    """
    if not len(motion):
        return np.zeros((0, 2, 2)), 0.0
    NR, ref = _own_motions(motion)
    ok = np.isfinite(NR).all(axis=2) & np.isfinite(ref).all(axis=1)[None]
    A, total, left = _strain_fit(NR, ref, ok)
    share = (1.0 - left / total) if total > 0 else 0.0
    for j in range(NR.shape[1]):
        without = ok.copy()
        without[:, j] = False
        # one fewer for the fits with one left out (as field_rotation's): with exactly 6 particles each had 5, fitted
        # none, and the share was 0 (a perfect 1 % shear of 6 particles said nothing; 7 particles: 100 %)
        _, t, lft = _strain_fit(NR, ref, without, STRAIN_MIN_PARTICLES - 1)
        share = min(share, (1.0 - lft / t) if t > 0 else 0.0)
    return A, share


#: the ratios of peak velocities (:func:`peak_ratios`) along a component are left undefined (NaN) for every particle
#: where the field's common (rigid) velocity stays below this many times the positions' noise in every frame
#: (``noise_px``; the pipeline's is, per frame, the RMS over the particles of the raw edge estimates about the
#: positions reported, not divided by their number: the common velocity's error against the truth was at the 95th
#: percentile over the frames 0.70-1.43 times it on the rigid scene with and without stage motion and the reduced
#: stress-counts seeds 1-3, at most 1.11 and 1.56 on the rigid scene, 1.31-6.35 on stress-counts). Decided once for the field: the largest velocity / noise
#: over the frames was 1.56 along y and 1.48 along x on the rigid scene with no stage motion (6 particles, one moving
#: (+4, -2) px on its own; the truth 0, so ratios of 1.19 and 1.98 were noise over noise), 5.68-9.57 on the reduced
#: stress-counts seeds 1-3 (4 particles, noise 0.37-0.39 px in the 90th percentile frame, the field moving 0.54-1.16 px/frame), 12.9 or more on
#: the other 19 reduced stress runs and 50 or more on 11 default scenes (256 px, 60 energies) and the rigid one.
#: (Before, each particle's peak over its own frames vouched for against 3 times the 90th percentile of that noise
#: over the frames: 5 of those 22 stress runs lost ratios on fields moving 0.5-1.2 px/frame.)
STILL_FIELD_NOISE = 3.0


#: the share of noise-only scans whose largest own displacement (or peak own velocity) stays below the floor
#: :func:`peak_ratios` gives it (``max_nonrigid_noise_px``, ``peak_nonrigid_v_noise``)
OWN_MOTION_NOISE_QUANTILE = 0.95

#: the columns :func:`peak_ratios` adds with ``position_noise``: the particle's positions' noise (px per axis), the
#: largest own displacement and the largest |own velocity| per axis that noise alone reaches over its frames
#: (:data:`OWN_MOTION_NOISE_QUANTILE`), and whether its largest own displacement is not above that
OWN_MOTION_NOISE_COLUMNS = ["position_noise_px", "max_nonrigid_noise_px", "nonrigid_at_noise", "peak_nonrigid_v_noise"]


def noise_maximum(n, *, dims: int = 2, quantile: float = OWN_MOTION_NOISE_QUANTILE) -> np.ndarray:
    """The ``quantile`` of the largest length of ``n`` independent ``dims``-D normal vectors of unit standard
    deviation per axis: how far noise alone reaches over ``n`` frames, in units of its standard deviation.

    ``dims=2``: the largest of ``n`` Rayleigh values, ``sqrt(-2 ln(1 - q^(1/n)))`` (3.76 for 60 frames at 95 %);
    ``dims=1``: the largest of ``n`` absolute normal values, ``Phi^-1((1 + q^(1/n)) / 2)`` (3.33 for 60). NaN for
    ``n`` below 1.
    """
    from statistics import NormalDist

    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie between 0 and 1, got {quantile!r}")
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        each = quantile ** (1.0 / np.where(n >= 1, n, np.nan))  # every one of the n below it
    if dims == 2:
        return np.sqrt(-2.0 * np.log1p(-each))
    inv = np.vectorize(lambda p: NormalDist().inv_cdf(p) if np.isfinite(p) else np.nan, otypes=[float])
    return inv((1.0 + each) / 2.0)


#: a particle's own displacement is the difference of two positions, the frame's and its first (the reference its
#: displacements are from), each with the particle's noise: its noise per axis is sqrt(2) times the positions'.
#: Checked on the calibration probe's noise-only redraws (12-20 per scene, 256-320 px, 60 energies, 116 runs):
#: the default model's own motions (0.33-5.7 px; 5 scenes at 5000 and 600 counts) were marked in none of 300
#: particle-draws, the nearest at 1.5 times its floor; stress-counts' particles read 0.24 and 0.28 px (median; truly
#: 0.37 and 0.16 px) were marked in 92 and 82 % of draws, its 1.03 px (truly 1.29) in none of 11; stress-drift's
#: (1.6-9.2 px) in none. Errors of the positions that wander slower than a frame (a touching neighbour, the matrix)
#: are not in the noise measured frame to frame: over the draws the own motion spread 0.6-3.5 times it (median 1.7),
#: so a value just above its floor is not sure to be motion (stress-crowd's and -fines' near-still particles, truly
#: 0.10-0.16 px and read 0.25-0.46, were marked in 25-75 % of draws)
OWN_DISPLACEMENT_NOISE = float(np.sqrt(2.0))


def velocity_noise_scales(frames) -> np.ndarray:
    """Per frame, the standard deviation of the velocity :func:`numpy.gradient` gives there from positions of unit
    noise per axis (independent frame to frame), with ``frames`` as its coordinates (sorted, distinct).

    Inside, the second-order difference over the neighbours ``h1`` before and ``h2`` after:
    ``sqrt(a^2 + b^2 + c^2)`` with ``a = -h2 / (h1 (h1 + h2))``, ``b = (h2 - h1) / (h1 h2)``,
    ``c = h1 / (h2 (h1 + h2))`` (1 / sqrt(2) for frames 1 apart); at the first and last frame the one-sided
    difference, ``sqrt(2) / h``: twice a central one's. NaN for fewer than 2 frames.
    """
    f = np.asarray(frames, float)
    out = np.full(len(f), np.nan)
    if len(f) < 2:
        return out
    h = np.diff(f)
    out[0], out[-1] = np.sqrt(2.0) / h[0], np.sqrt(2.0) / h[-1]
    h1, h2 = h[:-1], h[1:]
    a = -h2 / (h1 * (h1 + h2))
    b = (h2 - h1) / (h1 * h2)
    c = h1 / (h2 * (h1 + h2))
    out[1:-1] = np.sqrt(a * a + b * b + c * c)
    return out


def velocity_noise_maximum(scales, *, quantile: float = OWN_MOTION_NOISE_QUANTILE) -> float:
    """The ``quantile`` of the largest absolute value of independent normal values of standard deviations
    ``scales``: the ``B`` with ``prod_i P(|N(0, scales_i)| <= B) = quantile``, found by bisection (NaN where no
    scale is finite and positive).

    Equal scales ``s`` give ``s`` times :func:`noise_maximum` of their number in 1-D; a few larger ones (the
    one-sided velocities at a track's ends, :func:`velocity_noise_scales`) raise it to what they reach.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie between 0 and 1, got {quantile!r}")
    from math import erf, log, sqrt

    s = np.asarray(scales, float).ravel()
    s = s[np.isfinite(s) & (s > 0)]
    if not len(s):
        return np.nan
    vals, counts = np.unique(np.round(s, 12), return_counts=True)
    each = float(noise_maximum(len(s), dims=1))
    lo, hi = float(vals[0]) * each, float(vals[-1]) * each  # every value at the least (the largest) scale
    target = log(quantile)

    def log_below(b):  # log P(every |value| <= b)
        return sum(int(k) * log(max(erf(b / (float(v) * sqrt(2.0))), 1e-300)) for v, k in zip(vals, counts))

    for _ in range(200):
        if hi - lo <= 1e-12 * hi:
            break
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if log_below(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _own_motion_noise(out: pd.DataFrame, counts: dict, position_noise) -> pd.DataFrame:
    """``out`` (:func:`peak_ratios`'s table) with :data:`OWN_MOTION_NOISE_COLUMNS`: per particle, its positions'
    noise (``position_noise``: a Series by particle, px per axis; NaN where not given), the largest own displacement
    that noise reaches over its ``counts[particle][0]`` frames (:data:`OWN_DISPLACEMENT_NOISE` times it, times
    :func:`noise_maximum` in 2-D), the largest |own velocity| per axis over its velocities, whose noise is
    ``counts[particle][1]`` (:func:`velocity_noise_scales`) times it (:func:`velocity_noise_maximum`), and
    ``nonrigid_at_noise``: its largest own displacement is not above that floor (False where no floor is known)."""
    pids = out["particle"].to_numpy()
    sigma = (
        pd.Series(position_noise, dtype=float).reindex(pids).to_numpy(float)
        if isinstance(position_noise, pd.Series)
        else np.full(len(pids), float(position_noise))
    )
    sigma = np.where(sigma > 0, sigma, np.nan)
    n_disp = np.array([counts.get(p, (0, ()))[0] for p in pids], float)
    # the velocities are np.gradient's: central differences inside (1 / sqrt(2) of the noise), one-sided at the
    # track's ends (sqrt(2) of it, twice as noisy): a floor for central ones alone was exceeded by white noise of
    # that size in 41 % of particles (two axes), its ends' velocities above it
    v_max = np.array([velocity_noise_maximum(counts.get(p, (0, ()))[1]) for p in pids], float)
    out["position_noise_px"] = sigma
    out["max_nonrigid_noise_px"] = OWN_DISPLACEMENT_NOISE * sigma * noise_maximum(n_disp, dims=2)
    with np.errstate(invalid="ignore"):
        out["nonrigid_at_noise"] = (out["max_nonrigid_displacement"] <= out["max_nonrigid_noise_px"]).astype(bool)
    out["peak_nonrigid_v_noise"] = sigma * v_max
    return out


#: the columns :func:`peak_ratios` adds where :func:`compute_motion` measured the split (``attrs["own_split"]``): how
#: far the particle's own motion moves, over its frames counted, when the common motion is fitted again with any one
#: particle left out (:func:`common_motion_split`), and whether its largest own displacement is within that and its
#: noise together (``max_nonrigid_noise_px``, where known): the positions cannot tell it from a particle that did not
#: move on its own
OWN_MOTION_SPLIT_COLUMNS = ["own_motion_split_px", "nonrigid_within_split"]


def undetermined_split_px(ratios: pd.DataFrame) -> float:
    """The largest ``own_motion_split_px`` of :func:`peak_ratios`'s table where it says that the particles do not
    determine the split into common and own motion (:data:`SPLIT_NOTE_PX` or more, and more than the median
    particle's ``max_nonrigid_noise_px``, where known: beyond what the noise leaves undecided anyway); else NaN."""
    if ratios is None or not len(ratios) or "own_motion_split_px" not in ratios:
        return np.nan
    split = ratios["own_motion_split_px"].to_numpy(float)
    if not np.isfinite(split).any():
        return np.nan
    worst = float(np.nanmax(split))
    noise = ratios["max_nonrigid_noise_px"].to_numpy(float) if "max_nonrigid_noise_px" in ratios else np.zeros(0)
    floor = float(np.nanmedian(noise)) if np.isfinite(noise).any() else 0.0
    return worst if worst >= SPLIT_NOTE_PX and worst > floor else np.nan


def _own_motion_split(out: pd.DataFrame, motion: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """``out`` (:func:`peak_ratios`'s table) with :data:`OWN_MOTION_SPLIT_COLUMNS`: per particle, the largest
    ``own_split_px`` of ``split`` over the frames its own motion counts in (``motion``'s ``nonrigid_*`` finite: the
    frames vouched for, where :func:`peak_ratios` was given them), NaN where none was measured; and
    ``nonrigid_within_split``: its ``max_nonrigid_displacement`` is not above that plus ``max_nonrigid_noise_px``
    (0 where not known). The common motion is what most particles share; where none is shared by most, leaving one
    particle out moves it, and every own motion with it (reduced stress-drift seed 1: 2.5 px; a particle fixed to the
    cell was read 2.42 px, 0.55 px with the frames transposed)."""
    m = motion[["particle", "frame", "nonrigid_dy", "nonrigid_dx"]].merge(
        split[["particle", "frame", "own_split_px"]], on=["particle", "frame"], how="left"
    )
    counted = np.isfinite(m[["nonrigid_dy", "nonrigid_dx"]].to_numpy(float)).all(axis=1)
    v = m["own_split_px"].to_numpy(float)
    v = np.where(counted & np.isfinite(v), v, -np.inf)
    most = pd.Series(v).groupby(m["particle"].to_numpy()).max()
    most = most.where(np.isfinite(most))
    out["own_motion_split_px"] = most.reindex(out["particle"].to_numpy()).to_numpy(float)
    noise = out["max_nonrigid_noise_px"].to_numpy(float) if "max_nonrigid_noise_px" in out else np.zeros(len(out))
    reach = np.where(np.isfinite(noise), noise, 0.0) + out["own_motion_split_px"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        out["nonrigid_within_split"] = (out["max_nonrigid_displacement"].to_numpy(float) <= reach).astype(bool)
    return out


def only_reliable(
    motion: pd.DataFrame, reliable, columns=("rigid_dy", "rigid_dx", "nonrigid_dy", "nonrigid_dx")
) -> pd.DataFrame:
    """``motion`` with ``columns`` NaN in its rows whose ``(particle, frame)`` the table ``reliable`` (``particle,
    frame, reliable``) does not mark reliable (a row it lacks is not); ``motion`` itself where ``reliable`` is None."""
    if reliable is None or not len(motion):
        return motion
    keep = motion[["particle", "frame"]].merge(reliable, on=["particle", "frame"], how="left")["reliable"]
    keep = keep.fillna(False).astype(bool).to_numpy()
    out = motion.copy()
    out.loc[~keep, list(columns)] = np.nan
    return out


def peak_ratios(
    motion: pd.DataFrame,
    reliable: pd.DataFrame | None = None,
    *,
    noise_px: float | pd.Series | None = None,
    position_noise: float | pd.Series | None = None,
) -> pd.DataFrame:
    """Per particle: peak |non-rigid velocity| / peak |rigid velocity|, per component.

    Parameters
    ----------
    motion : DataFrame
        :func:`compute_motion`'s table.
    reliable : DataFrame, optional
        ``particle, frame, reliable``: only the frames marked so count (the pipeline passes the
        frames vouched for: a particle's filled-in positions, before it entered the field, say,
        or those measured while the border cut it, do not).
    noise_px : float or Series, optional
        The positions' noise, px per component: one value, or one per frame (a Series indexed by
        frame; frames without one are not judged). Decided once for the field, per component: where
        the common (rigid) velocity, the largest over the particles in each frame, stays below
        :data:`STILL_FIELD_NOISE` times the frame's noise in every frame, the field hardly moves
        (frames aligned upstream), its common velocity is the positions' error, and the ratio would
        be noise over noise: it is NaN for every particle. Default: no such test.
    position_noise : float or Series, optional
        Each particle's positions' noise, px per axis (a Series indexed by particle; the pipeline's is
        :func:`xanestrack.pipeline._particle_position_noise`): the table then says how far noise alone takes its
        own motion over its frames (:data:`OWN_MOTION_NOISE_COLUMNS`, :func:`_own_motion_noise`): a largest own
        displacement of a faint particle read 0.33 px where it truly moved 0.16 px, with nothing saying that this
        is what its noise gives. Default: no such columns.

    Returns
    -------
    DataFrame ``particle, peak_nonrigid_vy, peak_nonrigid_vx, peak_rigid_vy,
    peak_rigid_vx, ratio_v, ratio_h, max_nonrigid_displacement`` (with ``position_noise``, then
    :data:`OWN_MOTION_NOISE_COLUMNS`; where ``motion.attrs["own_split"]`` is given, :func:`compute_motion`'s,
    then :data:`OWN_MOTION_SPLIT_COLUMNS`, :func:`_own_motion_split`); ``attrs["still_field"]``
    (with ``noise_px``) holds per component (``"y"``, ``"x"``) ``moves`` and the frame where the
    common velocity is largest against the noise: ``frame``, ``velocity`` (px/frame), ``noise``
    (px); ``attrs["least_common_velocity"]`` (px/frame) is the least common velocity that counts
    as motion, :data:`STILL_FIELD_NOISE` times the least noise (NaN without ``noise_px``).
    """
    split = motion.attrs.get("own_split")  # (compute_motion's: how far each own motion moves with the split)
    motion = only_reliable(motion, reliable)
    rows, common, counts = [], [], {}
    for pid, g in motion.groupby("particle"):
        g = g.sort_values("frame")
        f = g["frame"].to_numpy(float)
        if len(f) < 2:
            continue
        rv = np.gradient(g[["rigid_dy", "rigid_dx"]].to_numpy(), f, axis=0)
        nv = np.gradient(g[["nonrigid_dy", "nonrigid_dx"]].to_numpy(), f, axis=0)
        if not (np.isfinite(rv).any() and np.isfinite(nv).any()):
            continue
        pr = np.nanmax(np.abs(rv), axis=0)
        pn = np.nanmax(np.abs(nv), axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = pn / pr
        with np.errstate(invalid="ignore"):
            disp = np.nanmax(np.hypot(g["nonrigid_dy"], g["nonrigid_dx"]))
        rows.append([pid, pn[0], pn[1], pr[0], pr[1], ratio[0], ratio[1], disp])
        # the frames the largest own displacement and the peak own velocities were taken over
        nr = g[["nonrigid_dy", "nonrigid_dx"]].to_numpy(float)
        axis = int(np.argmax(np.isfinite(nv).sum(axis=0)))  # the axis with the most velocities
        counts[pid] = (int(np.isfinite(nr).all(axis=1).sum()), velocity_noise_scales(f)[np.isfinite(nv[:, axis])])
        common.append(pd.DataFrame({"frame": g["frame"].to_numpy(), "vy": np.abs(rv[:, 0]), "vx": np.abs(rv[:, 1])}))
    out = pd.DataFrame(
        rows,
        columns=[
            "particle",
            "peak_nonrigid_vy",
            "peak_nonrigid_vx",
            "peak_rigid_vy",
            "peak_rigid_vx",
            "ratio_v",
            "ratio_h",
            "max_nonrigid_displacement",
        ],
    )
    if position_noise is not None:
        out = _own_motion_noise(out, counts, position_noise)
    if isinstance(split, pd.DataFrame) and {"particle", "frame", "own_split_px"} <= set(split):
        out = _own_motion_split(out, motion, split)
    out.attrs["least_common_velocity"] = np.nan
    if noise_px is None or not common:
        return out
    # the field's common velocity per frame (the largest over the particles: a magnification moves the far ones
    # most), against the noise of the frame: one decision for the field, not one per particle over its own frames
    v = pd.concat(common).groupby("frame")[["vy", "vx"]].max()
    if isinstance(noise_px, pd.Series):
        noise = noise_px.reindex(v.index).to_numpy(float)
    else:
        noise = np.full(len(v), float(noise_px))
    noise = np.where(noise > 0, noise, np.nan)
    if not np.isfinite(noise).any():
        return out
    still = {}
    for c, col, name in (("y", "vy", "ratio_v"), ("x", "vx", "ratio_h")):
        vel = v[col].to_numpy(float)
        with np.errstate(invalid="ignore"):
            z = vel / noise
        if not np.isfinite(z).any():
            continue
        k = int(np.nanargmax(z))
        moves = bool(z[k] >= STILL_FIELD_NOISE)
        still[c] = {"moves": moves, "frame": int(v.index[k]), "velocity": float(vel[k]), "noise": float(noise[k])}
        if not moves:
            out[name] = np.nan
    out.attrs["still_field"] = still
    out.attrs["least_common_velocity"] = STILL_FIELD_NOISE * float(np.nanmin(noise))
    return out
