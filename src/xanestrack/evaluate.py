"""Accuracy against ground truth (synthetic scans).

Registration error of a particle: estimated minus true centre of mass per frame,
less its mean over frames (a constant offset does not misalign anything), RMS over
frames of the 2-D error. Edge-energy error: estimated minus true E(mu_norm = 0.5)
inside the particle with a rim of ``rim_px`` pixels excluded, RMS over pixels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = ["pair_particles", "registration_error", "edge_map_error", "evaluate_result", "detection_f1", "f1_by_band", "energy_band", "ENERGY_BANDS"]


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
    """RMS (mean removed), worst frame, and fraction of frames off by more than 1 px."""
    e = np.asarray(est_positions, float) - np.asarray(true_positions, float)
    ok = np.all(np.isfinite(e), axis=1)
    if not ok.any():
        return dict(rms=np.nan, worst=np.nan, worst_frame=-1, frac_over_1px=np.nan)
    e = e - e[ok].mean(axis=0)
    r = np.hypot(e[:, 0], e[:, 1])
    r[~ok] = np.nan
    return dict(
        rms=float(np.sqrt(np.nanmean(r**2))),
        worst=float(np.nanmax(r)),
        worst_frame=int(np.nanargmax(r)),
        frac_over_1px=float(np.nanmean(r > 1.0)),
    )


def edge_map_error(est_map, est_origin, true_map, true_origin, *, rim_px: int = 2) -> dict:
    """RMS error (eV) of an edge-energy map on the frame-0 grid, rim excluded."""
    est_map = np.asarray(est_map)
    true_map = np.asarray(true_map)
    inside = ndimage.binary_erosion(np.isfinite(true_map), iterations=rim_px)
    ty, tx = np.nonzero(inside)
    gy = ty + int(true_origin[0]) - int(est_origin[0])
    gx = tx + int(true_origin[1]) - int(est_origin[1])
    okb = (gy >= 0) & (gy < est_map.shape[0]) & (gx >= 0) & (gx < est_map.shape[1])
    est = np.full(ty.size, np.nan)
    est[okb] = est_map[gy[okb], gx[okb]]
    diff = est - true_map[ty, tx]
    good = np.isfinite(diff)
    return dict(
        rms_ev=float(np.sqrt(np.mean(diff[good] ** 2))) if good.any() else np.nan,
        bias_ev=float(np.mean(diff[good])) if good.any() else np.nan,
        coverage=float(good.mean()) if good.size else 0.0,
        n_pixels=int(good.sum()),
    )


def evaluate_result(result, truth, *, rim_px: int = 2, max_distance: float = 10.0):
    """Per-particle accuracy of a :class:`~xanestrack.pipeline.PipelineResult`.

    Returns
    -------
    table : DataFrame
        One row per true particle: ``truth_particle, particle`` (estimated id or -1),
        ``radius, pattern, frames_measured, rms_px, worst_px, frac_over_1px, edge_rms_ev,
        edge_bias_ev, edge_coverage``.
    summary : dict
        ``n_true, n_found, n_false, max_rms_px, median_rms_px, max_edge_rms_ev``.
    """
    tp = truth.positions
    n_true = int(tp["particle"].nunique())
    true0 = tp[tp["frame"] == 0].sort_values("particle")[["y", "x"]].to_numpy()
    est0 = np.array([p.positions[0] for p in result.particles]).reshape(-1, 2)
    pairs = dict((j, i) for i, j in pair_particles(est0, true0, max_distance=max_distance))
    rows = []
    for j in range(n_true):
        tpos = tp[tp["particle"] == j].sort_values("frame")[["y", "x"]].to_numpy()
        row = dict(truth_particle=j, particle=-1, radius=float(truth.radii[j]), pattern=truth.patterns[j])
        if j in pairs:
            p = result.particles[pairs[j]]
            reg = registration_error(p.positions, tpos)
            em = edge_map_error(p.edge_maps["e50"], p.origin, truth.edge_maps[j], truth.edge_map_origins[j], rim_px=rim_px)
            measured = int(((p.frame_flags & 16) == 0).sum())
            row.update(
                particle=p.particle,
                frames_measured=measured,
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


#: energy bands of the Ni K-edge used to report detection and segmentation scores (eV)
ENERGY_BANDS = (("pre-edge", -np.inf, 8330.0), ("edge", 8330.0, 8360.0), ("post-edge", 8360.0, np.inf))


def energy_band(energy_ev) -> np.ndarray:
    """Name of the band (``ENERGY_BANDS``) of each energy."""
    e = np.asarray(energy_ev, float)
    out = np.empty(e.shape, object)
    for name, lo, hi in ENERGY_BANDS:
        out[(e >= lo) & (e < hi)] = name
    return out


def detection_f1(detections, truth, energies_ev, *, max_distance: float = 4.0, radius_fraction: float = 0.5) -> pd.DataFrame:
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
