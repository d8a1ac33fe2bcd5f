"""Accuracy against ground truth (synthetic scans).

Registration error of a particle: estimated minus true centre of mass per frame,
less its mean over frames (a constant offset does not misalign anything), RMS over
frames of the 2-D error. Edge-energy error: estimated minus true E(mu_norm = 0.5)
inside the particle with a rim of ``rim_px`` pixels excluded, RMS over pixels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import ndimage

from .result import FRAME_FLAGS, UNVOUCHED_FLAGS

__all__ = [
    "pair_particles",
    "pair_tracks",
    "registration_error",
    "edge_map_error",
    "edge_map_pixel_errors",
    "evaluate_result",
    "evaluate_tracking",
    "true_tracks",
    "UNVOUCHED_FLAGS",
    "detection_f1",
    "f1_by_band",
    "energy_band",
    "ENERGY_BANDS",
]


def pair_particles(est_yx, true_yx, *, max_distance: float = 10.0):
    """Optimal one-to-one pairing of estimated and true positions within ``max_distance``.

    Returns
    -------
    list of (i_est, i_true) pairs
    """
    from scipy.optimize import linear_sum_assignment

    est_yx = np.asarray(est_yx, float).reshape(-1, 2)
    true_yx = np.asarray(true_yx, float).reshape(-1, 2)
    if len(est_yx) == 0 or len(true_yx) == 0:
        return []
    d = np.hypot(est_yx[:, None, 0] - true_yx[None, :, 0], est_yx[:, None, 1] - true_yx[None, :, 1])
    d = np.where(np.isfinite(d), d, 1e9)
    r, c = linear_sum_assignment(d)
    return [(int(i), int(j)) for i, j in zip(r, c) if d[i, j] <= max_distance]


def registration_error(est_positions, true_positions) -> dict:
    """RMS (mean removed), worst frame, and fraction of frames off by more than 1 px.

    Over the frames with an estimate; ``frac_missing`` is the fraction without one. With
    fewer than two, nothing is measured (NaN): one frame less its mean is 0 px whatever
    the method did (a method that failed in every other frame scored best before).
    """
    e = np.asarray(est_positions, float) - np.asarray(true_positions, float)
    ok = np.all(np.isfinite(e), axis=1)
    missing = float(1.0 - ok.mean()) if ok.size else np.nan
    if ok.sum() < 2:
        return dict(rms=np.nan, worst=np.nan, worst_frame=-1, frac_over_1px=np.nan, frac_missing=missing)
    e = e - e[ok].mean(axis=0)
    r = np.hypot(e[:, 0], e[:, 1])
    r[~ok] = np.nan
    return dict(
        rms=float(np.sqrt(np.nanmean(r**2))),
        worst=float(np.nanmax(r)),
        worst_frame=int(np.nanargmax(r)),
        frac_over_1px=float(np.mean(r[ok] > 1.0)),
        frac_missing=missing,
    )


def edge_map_pixel_errors(est_map, est_origin, true_map, true_origin, *, rim_px: int = 2, other_map=None):
    """Estimated minus true edge energy at every pixel of the true interior (rim excluded), frame-0 grid.

    Returns the errors (NaN where the estimate has no value) and, with ``other_map`` (a map on
    ``est_map``'s grid, e.g. its standard errors), that map sampled at the same pixels.
    """
    est_map = np.asarray(est_map)
    true_map = np.asarray(true_map)
    inside = ndimage.binary_erosion(np.isfinite(true_map), iterations=rim_px)
    ty, tx = np.nonzero(inside)
    gy = ty + int(true_origin[0]) - int(est_origin[0])
    gx = tx + int(true_origin[1]) - int(est_origin[1])
    okb = (gy >= 0) & (gy < est_map.shape[0]) & (gx >= 0) & (gx < est_map.shape[1])

    def sample(m):
        v = np.full(ty.size, np.nan)
        v[okb] = np.asarray(m)[gy[okb], gx[okb]]
        return v

    diff = sample(est_map) - true_map[ty, tx]
    return diff, (sample(other_map) if other_map is not None else None)


def edge_map_error(est_map, est_origin, true_map, true_origin, *, rim_px: int = 2, sigma_map=None) -> dict:
    """RMS error (eV) of an edge-energy map on the frame-0 grid, rim excluded.

    With ``sigma_map`` (the map's standard errors, on ``est_map``'s grid) also
    ``within_1_sigma`` and ``within_2_sigma``: the shares of the compared pixels with a finite
    sigma whose error is within one and two of it (0.68 and 0.95 where sigma is right).
    """
    diff, sig = edge_map_pixel_errors(est_map, est_origin, true_map, true_origin, rim_px=rim_px, other_map=sigma_map)
    good = np.isfinite(diff)
    out = dict(
        rms_ev=float(np.sqrt(np.mean(diff[good] ** 2))) if good.any() else np.nan,
        bias_ev=float(np.mean(diff[good])) if good.any() else np.nan,
        coverage=float(good.mean()) if good.size else 0.0,
        n_pixels=int(good.sum()),
    )
    if sig is not None:
        judged = good & np.isfinite(sig)
        for k in (1, 2):
            out[f"within_{k}_sigma"] = (
                float(np.mean(np.abs(diff[judged]) <= k * sig[judged])) if judged.any() else np.nan
            )
    return out


def evaluate_result(result, truth, *, rim_px: int = 2, max_distance: float = 10.0):
    """Per-particle accuracy of a :class:`~xanestrack.pipeline.PipelineResult`.

    Returns
    -------
    table : DataFrame
        One row per true particle: ``truth_particle, particle`` (estimated id or -1),
        ``radius, pattern, frames_measured, frames_vouched`` (as in
        :func:`xanestrack.result.particle_summary`), ``rms_px, worst_px, frac_over_1px,
        edge_rms_ev, edge_bias_ev, edge_coverage``.
    summary : dict
        ``n_true, n_found, n_false, max_rms_px, median_rms_px, max_edge_rms_ev``.
    """
    tp = truth.positions
    n_true = int(tp["particle"].nunique())
    true0 = tp[tp["frame"] == 0].sort_values("particle")[["y", "x"]].to_numpy()
    est0 = np.array([p.positions[0] for p in result.particles]).reshape(-1, 2)
    pairs = dict((j, i) for i, j in pair_particles(est0, true0, max_distance=max_distance))
    from .result import particle_summary

    summ = particle_summary(result).set_index("particle") if result.particles else None
    rows = []
    for j in range(n_true):
        tpos = tp[tp["particle"] == j].sort_values("frame")[["y", "x"]].to_numpy()
        row = dict(truth_particle=j, particle=-1, radius=float(truth.radii[j]), pattern=truth.patterns[j])
        if j in pairs:
            p = result.particles[pairs[j]]
            reg = registration_error(p.positions, tpos)
            em = edge_map_error(
                p.edge_maps["e50"], p.origin, truth.edge_maps[j], truth.edge_map_origins[j], rim_px=rim_px
            )
            row.update(
                particle=p.particle,
                frames_measured=int(summ.loc[p.particle, "frames_measured"]),
                frames_vouched=int(summ.loc[p.particle, "frames_vouched"]),
                rms_px=reg["rms"],
                worst_px=reg["worst"],
                frac_over_1px=reg["frac_over_1px"],
                edge_rms_ev=em["rms_ev"],
                edge_bias_ev=em["bias_ev"],
                edge_coverage=em["coverage"],
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    found = table[table["particle"] >= 0]
    summary = dict(
        n_true=n_true,
        n_found=int(len(found)),
        n_false=int(len(result.particles) - len(found)),
        max_rms_px=float(found["rms_px"].max()) if len(found) else np.nan,
        median_rms_px=float(found["rms_px"].median()) if len(found) else np.nan,
        max_edge_rms_ev=float(found["edge_rms_ev"].max()) if len(found) else np.nan,
    )
    return table, summary


def pair_tracks(est_tracks, truth_tracks, *, max_distance: float = 10.0):
    """Optimal one-to-one pairing of whole tracks by their median distance over frames.

    ``est_tracks`` (m, n_frames, 2) and ``truth_tracks`` (t, n_frames, 2, e.g.
    :func:`true_tracks`); NaN frames are ignored. Unlike a pairing on frame 0 alone, a
    track whose first frame is wrong or filled still pairs with the particle it follows.

    Returns
    -------
    list of (i_est, i_true) pairs with a median distance <= ``max_distance``
    """
    from scipy.optimize import linear_sum_assignment

    est = np.asarray(est_tracks, float)
    tru = np.asarray(truth_tracks, float)
    if est.size == 0 or tru.size == 0:
        return []
    d = np.hypot(est[:, None, :, 0] - tru[None, :, :, 0], est[:, None, :, 1] - tru[None, :, :, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs: no distance
        med = np.nanmedian(d, axis=2)
    med = np.where(np.isfinite(med), med, 1e9)
    r, c = linear_sum_assignment(med)
    return [(int(i), int(j)) for i, j in zip(r, c) if med[i, j] <= max_distance]


def true_tracks(truth) -> np.ndarray:
    """The truth's positions as tracks ``(n_particles, n_frames, 2)`` ``(y, x)``, particles in id order."""
    tp = truth.positions.sort_values(["particle", "frame"])
    if not len(tp):
        return np.zeros((0, 0, 2))
    return np.stack([g[["y", "x"]].to_numpy(float) for _, g in tp.groupby("particle")])


def evaluate_tracking(result, truth, *, max_distance: float = 10.0, wrong_px: float = 1.0, agreement_px: float = 0.5):
    """Tracking and vouching scores of a pipeline result against a scene's truth.

    Every estimated track is paired with a true particle (isolated or not) by its
    median distance over frames (:func:`pair_tracks`); an estimated track paired with
    none is *spurious*. Per paired particle and frame the error is the estimated minus
    the true position, less its median over the frames whose position was measured
    (a constant offset misaligns nothing). A frame is *tracked* when its position is
    measured (not flagged ``interpolated``); it is *wrong* when its error exceeds
    ``wrong_px``, and *unflagged wrong* when, moreover, it carries none of
    ``interpolated``, ``position_outlier``, ``disagree`` (the tool states it as measured
    and vouched for). A frame vouched for whose error exceeds ``agreement_px`` (the tool's
    own default threshold between its two estimates, issue 15's 0.5 px) is counted as
    ``vouched_off``: below ``wrong_px`` such frames are not wrong, but more off than the
    tool's agreement promises; ``worst_vouched_px`` is the largest error of a frame vouched for.

    Returns
    -------
    table : DataFrame
        One row per true particle: ``truth_particle, particle`` (estimated id or -1),
        ``isolated, radius, frames_tracked, tracked_all, rms_px, worst_px, frames_wrong,
        unflagged_wrong, worst_unflagged_px, frames_disagree, vouched_off, worst_vouched_px``.
    summary : dict
        ``n_true, n_found, n_isolated, isolated_found, isolated_tracked`` (found and
        tracked through every frame), ``max_rms_px, median_rms_px`` (over isolated
        particles found), ``spurious, frames_wrong, unflagged_wrong,
        worst_unflagged_px, vouched_off, worst_vouched_px`` (over all paired tracks),
        ``frames_disagree`` (over all tracks), ``n_frames``.
    """
    tp = truth.positions.sort_values(["particle", "frame"])
    true_ids = np.sort(tp["particle"].unique())
    n_frames = int(tp["frame"].max()) + 1 if len(tp) else 0
    tracks = true_tracks(truth)
    iso = tp.groupby("particle")["isolated"].all().reindex(true_ids).to_numpy(bool)
    est_tracks = np.array([p.positions for p in result.particles], float).reshape(-1, n_frames, 2)
    pairs = dict((j, i) for i, j in pair_tracks(est_tracks, tracks, max_distance=max_distance))
    radii = np.asarray(getattr(truth, "radii", np.full(len(true_ids), np.nan)), float)
    rows = []
    for j, tid in enumerate(true_ids):
        row = dict(
            truth_particle=int(tid),
            particle=-1,
            isolated=bool(iso[j]),
            radius=float(radii[j]) if j < radii.size else np.nan,
        )
        if j in pairs:
            p = result.particles[pairs[j]]
            flags = np.asarray(p.frame_flags, int)
            tracked = (flags & FRAME_FLAGS["interpolated"]) == 0
            reg = registration_error(p.positions, tracks[j])
            e = p.positions - tracks[j]
            fin = np.all(np.isfinite(e), axis=1)
            base = fin & tracked if (fin & tracked).any() else fin
            err = np.full(n_frames, np.nan)
            if base.any():
                err = np.hypot(*(e - np.median(e[base], axis=0)).T)
            wrong = ~(err <= wrong_px)  # NaN (no position) counts as wrong
            unflagged = wrong & ((flags & UNVOUCHED_FLAGS) == 0)
            vouched = np.isfinite(err) & ((flags & UNVOUCHED_FLAGS) == 0)
            row.update(
                particle=int(p.particle),
                frames_tracked=int(tracked.sum()),
                tracked_all=bool(tracked.all()),
                rms_px=reg["rms"],
                worst_px=reg["worst"],
                frames_wrong=int(wrong.sum()),
                unflagged_wrong=int(unflagged.sum()),
                worst_unflagged_px=float(np.nanmax(np.where(unflagged, err, np.nan))) if unflagged.any() else 0.0,
                frames_disagree=int(((flags & FRAME_FLAGS["disagree"]) != 0).sum()),
                vouched_off=int((vouched & (err > agreement_px)).sum()),
                worst_vouched_px=float(err[vouched].max()) if vouched.any() else 0.0,
            )
        rows.append(row)
    cols = [
        "truth_particle",
        "particle",
        "isolated",
        "radius",
        "frames_tracked",
        "tracked_all",
        "rms_px",
        "worst_px",
        "frames_wrong",
        "unflagged_wrong",
        "worst_unflagged_px",
        "frames_disagree",
        "vouched_off",
        "worst_vouched_px",
    ]
    table = pd.DataFrame(rows).reindex(columns=cols)
    found = table[table["particle"] >= 0]
    found_iso = found[found["isolated"].astype(bool)]
    summary = dict(
        n_true=int(len(true_ids)),
        n_found=int(len(found)),
        n_isolated=int(iso.sum()),
        isolated_found=int(len(found_iso)),
        isolated_tracked=int(found_iso["tracked_all"].astype(bool).sum()),
        max_rms_px=float(found_iso["rms_px"].max()) if len(found_iso) else np.nan,
        median_rms_px=float(found_iso["rms_px"].median()) if len(found_iso) else np.nan,
        spurious=int(len(result.particles) - len(found)),
        frames_wrong=int(found["frames_wrong"].sum()),
        unflagged_wrong=int(found["unflagged_wrong"].sum()),
        worst_unflagged_px=float(found["worst_unflagged_px"].max()) if len(found) else 0.0,
        vouched_off=int(found["vouched_off"].sum()),
        worst_vouched_px=float(found["worst_vouched_px"].max()) if len(found) else 0.0,
        frames_disagree=int(
            sum(int(((np.asarray(p.frame_flags, int) & FRAME_FLAGS["disagree"]) != 0).sum()) for p in result.particles)
        ),
        n_frames=n_frames,
    )
    return table, summary


#: energy bands of the Ni K-edge used to report detection and segmentation scores (eV)
ENERGY_BANDS = (("pre-edge", -np.inf, 8330.0), ("edge", 8330.0, 8360.0), ("post-edge", 8360.0, np.inf))


def energy_band(energy_ev) -> np.ndarray:
    """Name of the band (``ENERGY_BANDS``) of each energy."""
    e = np.asarray(energy_ev, float)
    out = np.empty(e.shape, object)
    for name, lo, hi in ENERGY_BANDS:
        out[(e >= lo) & (e < hi)] = name
    return out


def detection_f1(
    detections, truth, energies_ev, *, max_distance: float = 4.0, radius_fraction: float = 0.5
) -> pd.DataFrame:
    """Per-frame counts of isolated-particle detection against the truth.

    A true particle and an isolated detection are paired (optimal assignment) when
    their centres are within ``max(max_distance, radius_fraction * radius)``. Detections
    of fines, touching pairs or noise kept as isolated count as false positives.

    Returns a DataFrame ``frame, band, tp, fp, fn``.
    """
    from scipy.optimize import linear_sum_assignment

    tp_all = truth.positions
    radii = np.asarray(truth.radii, float)
    iso = detections[detections["isolated"]] if len(detections) else detections
    if "touching" in iso:
        # pieces of separated touching particles are tracked, but they are not the
        # isolated particles this score is about
        iso = iso[~iso["touching"].astype(bool)]
    by_frame = {k: g for k, g in iso.groupby("frame")} if len(iso) else {}
    bands = energy_band(energies_ev)
    rows = []
    for k, t in tp_all.groupby("frame"):
        t = t[t["isolated"]]
        g = by_frame.get(k)
        d = g[["y", "x"]].to_numpy(float) if g is not None else np.zeros((0, 2))
        ty = t[["y", "x"]].to_numpy(float)
        tol = np.maximum(max_distance, radius_fraction * radii[t["particle"].to_numpy()])
        tp = 0
        if len(d) and len(ty):
            dist = np.hypot(*(ty[:, None, :] - d[None, :, :]).transpose(2, 0, 1))
            cost = np.where(dist <= tol[:, None], dist, 1e6)
            ri, ci = linear_sum_assignment(cost)
            tp = int((cost[ri, ci] < 1e6).sum())
        rows.append((int(k), bands[int(k)], tp, len(d) - tp, len(ty) - tp))
    return pd.DataFrame(rows, columns=["frame", "band", "tp", "fp", "fn"])


def f1_by_band(counts: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall and F1 per band (and ``all``) from :func:`detection_f1` counts."""
    t = counts.groupby("band")[["tp", "fp", "fn"]].sum()
    t.loc["all"] = t.sum()
    t["precision"] = t.tp / np.maximum(t.tp + t.fp, 1)
    t["recall"] = t.tp / np.maximum(t.tp + t.fn, 1)
    t["f1"] = 2 * t.tp / np.maximum(2 * t.tp + t.fp + t.fn, 1)
    order = [b for b, _, _ in ENERGY_BANDS if b in t.index] + ["all"]
    return t.loc[order]


def evaluate_series(table: pd.DataFrame, truth: pd.DataFrame, *, max_distance: float = 10.0) -> dict:
    """Identity and chemistry-trend accuracy of a series against its ground truth.

    Each true particle is paired, in every scan, with the estimated particle nearest its
    true frame-0 position; it kept its identity if that is the same series id in every
    scan. The chemistry error is estimated minus true mean edge energy per scan.
    """
    errs, ids_ok, rows = [], [], []
    for tp, g in truth.groupby("particle"):
        ids = []
        for _, t in g.sort_values("scan").iterrows():
            est = table[table["scan"] == t["scan"]]
            pr = pair_particles(est[["y0", "x0"]].to_numpy(), np.array([[t["y0"], t["x0"]]]), max_distance=max_distance)
            if not pr:
                ids.append(None)
                continue
            e = est.iloc[pr[0][0]]
            ids.append(int(e["particle"]))
            err = float(e["mean_e50"] - t["mean_e50"])
            errs.append(err)
            rows.append((tp, int(t["scan"]), int(e["particle"]), err))
        ids_ok.append(len(set(ids)) == 1 and None not in ids)
    errs = np.array(errs)
    return dict(
        all_identities_kept=bool(all(ids_ok)),
        n_particles=len(ids_ok),
        max_abs_e50_error_ev=float(np.nanmax(np.abs(errs))) if errs.size else np.nan,
        rms_e50_error_ev=float(np.sqrt(np.nanmean(errs**2))) if errs.size else np.nan,
        per_scan=pd.DataFrame(rows, columns=["truth_particle", "scan", "particle", "e50_error_ev"]),
    )
