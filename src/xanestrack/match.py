"""ROI matching across frames: each particle keeps its identity through the scan.

Frames are linked in energy order. Between a frame and the tracks built so far:

1. the common (rigid) displacement is found by voting: every pairing of a track with
   a detection within ``max_jump`` proposes a displacement, and the one that brings
   most tracks onto a detection wins (stage jumps move every particle alike);
2. each track's position is predicted with that displacement, and track-detection
   pairs are scored by their residual distance (gated by ``gate``, widened for tracks
   missing in recent frames), by the SSIM of the two ROIs (the paper's criterion,
   computed on contrast-normalised ROIs so that the contrast change across the edge
   does not break it) and by their size ratio;
3. the optimal assignment (Hungarian) links them; unlinked detections start tracks.

Tracks present in fewer than ``min_track_fraction`` of the frames are dropped (and
returned as rejected), the others keep their gaps: frames where a particle was not
detected are listed with ``detected = False`` and a predicted position, never
silently dropped or filled with another particle.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

__all__ = ["MatchOptions", "link_detections", "roi_ssim", "propagate_common"]


@dataclass(frozen=True)
class MatchOptions:
    """Options of the frame-to-frame linking (lengths in pixels)."""

    max_jump: float | None = None
    gate: float = 8.0
    gate_fraction: float = 0.25
    gap_gate_growth: float = 0.5
    ssim_weight: float = 1.0
    size_weight: float = 1.0
    min_ssim: float = 0.2
    min_track_fraction: float = 0.5
    vote_tolerance: float = 3.0
    vote_fraction: float = 0.15
    max_gap: int = 10_000  # a track waits for its particle through the whole scan (gate widens with the gap)


def _patch(frame, y, x, half):
    ny, nx = frame.shape
    iy, ix = int(round(y)), int(round(x))
    y0, x0 = iy - half, ix - half
    pad = max(0, -y0, -x0, y0 + 2 * half + 1 - ny, x0 + 2 * half + 1 - nx)
    if pad:
        frame = np.pad(frame, pad, mode="edge")
        y0, x0 = y0 + pad, x0 + pad
    return frame[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]


def roi_ssim(a, b) -> float:
    """SSIM of two equally shaped ROIs after normalising each to zero mean, unit std.

    Normalising makes the score blind to the contrast change across the absorption
    edge (a pure rescaling of the OD) while keeping the structure comparison.
    """
    from skimage.metrics import structural_similarity

    a = (a - a.mean()) / (a.std() + 1e-9)
    b = (b - b.mean()) / (b.std() + 1e-9)
    win = min(7, (min(a.shape) // 2) * 2 - 1)
    if win < 3:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    return float(structural_similarity(a, b, data_range=hi - lo, win_size=win))


def _vote_displacement(prev, cur, max_jump, tol, prior=None):
    """Common displacement of point set ``prev`` onto ``cur`` by voting.

    ``prior`` (the frames' phase-correlation shift, when trusted) breaks ties between
    equally supported candidates, and replaces a vote that no two particles agree on
    (with one particle seen in both frames, any pairing "agrees" with itself).
    """
    nothing = (np.zeros(2) if prior is None else np.asarray(prior, float)), 0
    if len(prev) == 0 or len(cur) == 0:
        return nothing
    d = cur[None, :, :] - prev[:, None, :]  # (n_prev, n_cur, 2)
    cand = d[np.hypot(d[..., 0], d[..., 1]) <= max_jump]
    if cand.size == 0:
        return nothing
    best, best_n, best_gap = np.zeros(2), -1, np.inf
    for c in cand:
        moved = prev + c
        dist = np.hypot(*(moved[:, None, :] - cur[None, :, :]).transpose(2, 0, 1))
        n = int((dist.min(axis=1) <= tol).sum())
        gap = float(np.hypot(*(c - prior))) if prior is not None else 0.0
        if n > best_n or (n == best_n and gap < best_gap):
            best, best_n, best_gap = c, n, gap
    if prior is not None and best_n < 2 and best_gap > tol:
        best = np.asarray(prior, float)  # a lone pairing that the frames' shift does not support
    # refine: mean displacement of the agreeing pairs
    moved = prev + best
    dist = np.hypot(*(moved[:, None, :] - cur[None, :, :]).transpose(2, 0, 1))
    j = dist.argmin(axis=1)
    ok = dist[np.arange(len(prev)), j] <= tol
    if ok.any():
        best = np.median(cur[j[ok]] - prev[ok], axis=0)
    return best, best_n


#: binning of the frames registered by phase correlation (ROI propagation, vote fallback)
PC_BINNING = 4


@lru_cache(maxsize=8)
def _hann(shape):
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def _pc_prep(frame, binning=PC_BINNING):
    """A frame prepared for phase correlation: binned, high-passed, Hann-windowed."""
    from scipy import ndimage

    from .register import bin_frames

    f = bin_frames(frame, binning)
    f = f - ndimage.gaussian_filter(f, 8)
    return (f - f.mean()) * _hann(f.shape)


def link_detections(detections: pd.DataFrame, od, *, options: MatchOptions = MatchOptions(), frames=None):
    """Link per-frame detections of isolated particles into tracks.

    Parameters
    ----------
    detections : DataFrame
        From :func:`xanestrack.detect.detect_stack`; only rows with ``isolated`` are linked.
    od : ndarray (n_frames, rows, cols)
        The frames, for the SSIM of ROIs.
    options : MatchOptions
    frames : sequence of int, optional
        The frames the detector examined (default: all). Only these are linked; the
        others (detection on key frames) get predicted positions with ``examined``
        False, and the common shift of the nearest examined frames, interpolated.

    Returns
    -------
    tracks : DataFrame
        One row per particle per frame: ``particle, frame, y, x, area, radius,
        detected, examined, ssim``; for frames where the particle was not detected,
        ``y, x`` is the predicted position and ``detected`` is False.
    rejected : DataFrame
        Tracks too short to keep: ``track, n_frames, y, x`` (mean position).
    common_shift : ndarray (n_frames, 2)
        The voted common displacement of each frame relative to frame 0.
    """
    n_frames = od.shape[0]
    # tolerances grow with the particles (a centroid moves more with contrast on a big one)
    # and the largest jump with the field of view (stage/optics jitter scales with it)
    max_jump = options.max_jump if options.max_jump is not None else max(40.0, 0.08 * max(od.shape[1:]))
    med_r = float(np.nanmedian(detections["radius"])) if len(detections) else 10.0
    vote_tol = max(options.vote_tolerance, options.vote_fraction * med_r)
    det = detections[detections["isolated"]] if len(detections) else detections
    by_frame = {k: g for k, g in det.groupby("frame")} if len(det) else {}
    tracks: list[dict] = []  # each: rows, last (y, x), last_frame, patch, radius
    rows = []
    common = np.zeros((n_frames, 2))
    examined = np.arange(n_frames) if frames is None else np.unique(np.asarray(frames, int))
    if examined.size == 0 or examined[0] < 0 or examined[-1] >= n_frames:
        raise ValueError(f"frames must be indices in [0, {n_frames}), got {frames!r}")
    prev_k = None
    for k in examined:
        g = by_frame.get(k)
        cur = g[["y", "x"]].to_numpy(dtype=float) if g is not None else np.zeros((0, 2))
        # tracks seen recently, predicted at the common shift since they were seen
        alive = [t for t in tracks if k - t["last_frame"] <= options.max_gap]
        if prev_k is not None:
            # vote with the tracks of the previous frame (fall back to all alive)
            voters = [t for t in alive if t["last_frame"] == prev_k] or alive
            prev = np.array([t["last"] + common[prev_k] - common[t["last_frame"]] for t in voters]).reshape(-1, 2)
            jump = max_jump * np.sqrt(k - prev_k)  # more motion accumulates between key frames
            disp, n_agree = _vote_displacement(prev, cur, jump, vote_tol)
            prior = None
            if n_agree < 2:
                # no two particles agree: the frames' own shift (phase correlation) decides
                step, quality = _frame_step(_pc_prep(od[prev_k]), _pc_prep(od[k]), jump / PC_BINNING)
                if quality >= MIN_STEP_QUALITY:
                    prior = step * PC_BINNING
                    disp, n_agree = _vote_displacement(prev, cur, jump, vote_tol, prior=prior)
            common[k] = common[prev_k] + (disp if (n_agree > 0 or prior is not None) else 0)
        prev_k = k
        if len(cur) == 0:
            continue
        pred = np.array([t["last"] + common[k] - common[t["last_frame"]] for t in alive]).reshape(-1, 2)
        cost = np.full((len(alive), len(cur)), np.inf)
        ssim = np.full((len(alive), len(cur)), np.nan)
        for i, t in enumerate(alive):
            gap = int(np.searchsorted(examined, k) - np.searchsorted(examined, t["last_frame"])) - 1
            gate = max(options.gate, options.gate_fraction * t["radius"]) * (1 + options.gap_gate_growth * gap)
            dist = np.hypot(*(cur - pred[i]).T)
            for j in np.flatnonzero(dist <= gate):
                half = t["half"]
                s = roi_ssim(t["patch"], _patch(od[k], cur[j, 0], cur[j, 1], half))
                ssim[i, j] = s
                # low SSIM vetoes a link only when the position is not already convincing
                # (small particles in noisy pre-edge frames have low SSIM to themselves)
                if s < options.min_ssim and dist[j] > 0.5 * gate:
                    continue
                size = abs(np.log(g["area"].iloc[j] / t["area"]))
                cost[i, j] = dist[j] / gate + options.ssim_weight * (1 - s) + options.size_weight * size
        assigned = set()
        if len(alive):
            big = 1e6
            c = np.where(np.isfinite(cost), cost, big)
            ri, ci = linear_sum_assignment(c)
            for i, j in zip(ri, ci):
                if c[i, j] >= big:
                    continue
                t = alive[i]
                _update(t, g.iloc[j], od[k], k)
                t["rows"].append((k, cur[j, 0], cur[j, 1], g["area"].iloc[j], g["radius"].iloc[j], True, ssim[i, j]))
                assigned.add(j)
        for j in range(len(cur)):
            if j in assigned:
                continue
            r = g.iloc[j]
            t = {"rows": [], "id": len(tracks)}
            _update(t, r, od[k], k)
            t["rows"].append((k, r["y"], r["x"], r["area"], r["radius"], True, np.nan))
            tracks.append(t)
    if examined.size < n_frames:
        common = propagate_common(od, common, examined, max_jump=max_jump)
    seen = set(examined.tolist())
    kept, rejected = [], []
    for t in tracks:
        n = len(t["rows"])
        if n >= options.min_track_fraction * examined.size:
            kept.append(t)
        else:
            arr = np.array([r[1:3] for r in t["rows"]])
            rejected.append((t["id"], n, arr[:, 0].mean(), arr[:, 1].mean()))
    # order particles by their first position (top-left first) for stable ids
    kept.sort(key=lambda t: (round(t["rows"][0][1] / 20), t["rows"][0][2]))
    for pid, t in enumerate(kept):
        have = {r[0]: r for r in t["rows"]}
        frames_seen = np.array(sorted(have))
        pos_seen = np.array([have[f][1:3] for f in frames_seen])
        for k in range(n_frames):
            if k in have:
                r = have[k]
                rows.append((pid, k, r[1], r[2], r[3], r[4], True, True, r[6]))
            else:
                # predicted: between two seen frames, their positions (less the common
                # shift) interpolated, plus the common shift here; outside, the nearest
                i = np.searchsorted(frames_seen, k)
                lo, hi = frames_seen[max(i - 1, 0)], frames_seen[min(i, len(frames_seen) - 1)]
                plo = pos_seen[frames_seen == lo][0] - common[lo]
                phi = pos_seen[frames_seen == hi][0] - common[hi]
                w = (k - lo) / (hi - lo) if hi != lo else 0.0
                y, x = (1 - w) * plo + w * phi + common[k]
                rows.append((pid, k, y, x, np.nan, np.nan, False, k in seen, np.nan))
    tracks_df = pd.DataFrame(rows, columns=["particle", "frame", "y", "x", "area", "radius", "detected", "examined", "ssim"])
    rejected_df = pd.DataFrame(rejected, columns=["track", "n_frames", "y", "x"])
    return tracks_df, rejected_df, common


def _frame_step(a, b, max_shift):
    """Integer shift of frame ``b`` relative to ``a`` by phase correlation (binned frames).

    Returns ``(shift, quality)``: quality is the correlation peak over the spread of the
    correlation surface (measured ~30-80 between consecutive frames of a scan, ~5 when
    one of them holds no particles).
    """
    fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
    x = fb * np.conj(fa)
    r = np.fft.irfft2(x / (np.abs(x) + 1e-12), s=a.shape)
    ny, nx = a.shape
    yy = np.fft.fftfreq(ny, 1 / ny)
    xx = np.fft.fftfreq(nx, 1 / nx)
    far = (np.abs(yy)[:, None] > max_shift) | (np.abs(xx)[None, :] > max_shift)
    quality = float(r.max() / (r.std() + 1e-12))
    r[far] = -np.inf
    i = np.unravel_index(np.argmax(r), r.shape)
    return np.array([yy[i[0]], xx[i[1]]]), quality


#: phase-correlation quality below which a frame-to-frame step is not trusted
MIN_STEP_QUALITY = 12.0


def propagate_common(od, common, examined, *, max_jump: float = 40.0, binning: int = PC_BINNING):
    """Common shift of the frames between key frames, by chained phase correlation.

    Consecutive frames (one energy step apart, so nearly alike) are registered on
    ``binning`` x binned, high-passed copies; the chain between two key frames is
    corrected linearly so that it ends on the key frames' voted common shift. Jumps
    of the stage between key frames are thus placed in the right frame, and the ROI
    windows of the frames without detection land on their particles.
    """
    out = common.copy()
    for ka, kb in zip(examined[:-1], examined[1:]):
        if kb - ka < 2:
            continue
        # chain from the last frame that registered well (a frame without particles,
        # e.g. beam lost, breaks no chain: it is skipped and filled in afterwards)
        ref, ref_frame = ka, _pc_prep(od[ka], binning)
        chain = {ka: common[ka].astype(float)}
        for k in range(ka + 1, kb + 1):
            f = _pc_prep(od[k], binning)
            step, q = _frame_step(ref_frame, f, max_jump / binning * np.sqrt(k - ref))
            if q >= MIN_STEP_QUALITY:
                chain[k] = chain[ref] + step * binning
                ref, ref_frame = k, f
        if kb not in chain:  # no usable step to the next key frame: plain interpolation
            chain = {ka: common[ka], kb: common[kb]}
        miss = common[kb] - chain[kb]
        good = np.array(sorted(chain))
        vals = np.array([chain[k] + miss * (k - ka) / (kb - ka) for k in good])
        for k in range(ka + 1, kb):
            out[k] = [np.interp(k, good, vals[:, d]) for d in range(2)]
    # before the first / after the last key frame: hold
    out[: examined[0]] = common[examined[0]]
    out[examined[-1] + 1 :] = common[examined[-1]]
    return out


def _update(t, r, frame, k):
    if "half" not in t:
        t["half"] = int(np.ceil(r["radius"] * 1.3)) + 4
    t["radius"] = r["radius"]
    t["last"] = np.array([r["y"], r["x"]])
    t["last_frame"] = k
    t["area"] = r["area"]
    t["patch"] = _patch(frame, r["y"], r["x"], t["half"])
