"""Deformation: trajectories, displacement, velocity, acceleration, rigid vs non-rigid.

From the per-frame centre of mass of every tracked particle:

- cumulative displacement ``dy, dx`` relative to the first frame;
- velocity ``vy, vx`` and acceleration ``ay, ax`` (central differences; per frame, or
  per second when frame times are given);
- rigid motion: the displacement shared by all particles in a frame (the median over
  particles, robust to one particle deforming on its own); each particle's non-rigid
  motion is its displacement less the rigid one;
- motion relative to a reference particle.

The paper summarises deformation by the ratio of the peak non-rigid to the peak rigid
velocity per component (4.37 vertical, 2.14 horizontal on its data);
:func:`peak_ratios` computes it per particle.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["compute_motion", "peak_ratios", "MOTION_COLUMNS"]

MOTION_COLUMNS = [
    "particle", "frame", "y", "x", "dy", "dx", "vy", "vx", "ay", "ax",
    "rigid_dy", "rigid_dx", "nonrigid_dy", "nonrigid_dx", "rel_dy", "rel_dx",
]


def _deriv(a, t):
    if a.shape[0] < 2:
        return np.zeros_like(a)
    return np.gradient(a, t, axis=0)


def compute_motion(tracks: pd.DataFrame, *, reference_particle: int | None = None, frame_times_s=None) -> pd.DataFrame:
    """Motion table from tracks.

    Parameters
    ----------
    tracks : DataFrame
        Columns ``particle, frame, y, x`` (centre of mass per frame; NaN where unknown).
    reference_particle : int, optional
        Particle whose motion the ``rel_*`` columns are relative to; default the particle
        with the smallest non-rigid motion (the one that moves with the electrode).
    frame_times_s : ndarray (n_frames,), optional
        Acquisition time of each frame; velocities are then in px/s (column names keep
        ``v``/``a``; the unit is recorded in ``attrs["velocity_unit"]``).

    Returns
    -------
    DataFrame with ``MOTION_COLUMNS``; ``attrs`` holds ``reference_particle`` and the units.
    """
    need = {"particle", "frame", "y", "x"}
    if not need <= set(tracks.columns):
        raise ValueError(f"tracks must have columns {sorted(need)}, got {list(tracks.columns)}")
    if len(tracks) == 0:
        out = pd.DataFrame(columns=MOTION_COLUMNS)
        out.attrs.update(reference_particle=None, velocity_unit="px/frame")
        return out
    piv_y = tracks.pivot(index="frame", columns="particle", values="y").sort_index()
    piv_x = tracks.pivot(index="frame", columns="particle", values="x").sort_index()
    frames = piv_y.index.to_numpy()
    pids = piv_y.columns.to_numpy()
    P = np.stack([piv_y.to_numpy(), piv_x.to_numpy()], axis=-1)  # (n_frames, n_particles, 2)
    # fill unknown positions by interpolation for the derivatives (flags live in tracks)
    for j in range(P.shape[1]):
        for c in range(2):
            v = P[:, j, c]
            ok = np.isfinite(v)
            if ok.sum() >= 2 and not ok.all():
                P[:, j, c] = np.interp(frames, frames[ok], v[ok])
    first = np.array([P[np.flatnonzero(np.isfinite(P[:, j, 0]))[0], j] if np.isfinite(P[:, j, 0]).any() else [np.nan, np.nan] for j in range(P.shape[1])])
    D = P - first[None]
    rigid = np.nanmedian(D, axis=1) if D.shape[1] > 0 else np.zeros((len(frames), 2))
    NR = D - rigid[:, None, :]
    if reference_particle is None:
        with np.errstate(invalid="ignore"):
            spread = np.array([np.nanmax(np.abs(NR[:, j])) if np.isfinite(NR[:, j]).any() else np.nan for j in range(NR.shape[1])])
        ref_j = int(np.nanargmin(spread)) if np.isfinite(spread).any() else 0
        reference_particle = int(pids[ref_j])
    else:
        if reference_particle not in set(pids.tolist()):
            raise ValueError(f"reference_particle {reference_particle} is not among the tracked particles {pids.tolist()}")
        ref_j = int(np.flatnonzero(pids == reference_particle)[0])
    t = frames.astype(float) if frame_times_s is None else np.asarray(frame_times_s, float)[frames]
    V = _deriv(D, t)
    A = _deriv(V, t)
    REL = D - D[:, ref_j : ref_j + 1, :]
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
                    "rigid_dy": rigid[:, 0],
                    "rigid_dx": rigid[:, 1],
                    "nonrigid_dy": NR[:, j, 0],
                    "nonrigid_dx": NR[:, j, 1],
                    "rel_dy": REL[:, j, 0],
                    "rel_dx": REL[:, j, 1],
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)
    unit = "px/frame" if frame_times_s is None else "px/s"
    out.attrs.update(reference_particle=reference_particle, velocity_unit=unit)
    return out


def peak_ratios(motion: pd.DataFrame) -> pd.DataFrame:
    """Per particle: peak |non-rigid velocity| / peak |rigid velocity|, per component.

    Returns
    -------
    DataFrame ``particle, peak_nonrigid_vy, peak_nonrigid_vx, peak_rigid_vy,
    peak_rigid_vx, ratio_v, ratio_h, max_nonrigid_displacement``.
    """
    rows = []
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
        disp = np.nanmax(np.hypot(g["nonrigid_dy"], g["nonrigid_dx"]))
        rows.append((pid, pn[0], pn[1], pr[0], pr[1], ratio[0], ratio[1], disp))
    return pd.DataFrame(
        rows,
        columns=[
            "particle", "peak_nonrigid_vy", "peak_nonrigid_vx", "peak_rigid_vy", "peak_rigid_vx",
            "ratio_v", "ratio_h", "max_nonrigid_displacement",
        ],
    )
