"""The result model: what the pipeline produces, what ``results.h5`` holds, what the report reads.

:class:`PipelineResult` (one scan) holds a :class:`ParticleResult` per tracked particle.
:func:`xanestrack.pipeline.run_pipeline` returns one; :func:`xanestrack.results.write_results`
writes it and :func:`xanestrack.results.read_results` gives the same object back, so the CLI,
the report, ``series`` and the evaluation all read one shape. :func:`particle_summary` is the
one per-particle table (mean edge energy, largest non-rigid motion, flagged frames...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineOptions

__all__ = ["FRAME_FLAGS", "flag_names", "ParticleResult", "PipelineResult", "particle_summary"]

#: per-particle, per-frame flags (bits)
FRAME_FLAGS = {
    "undetected": 1,  # not detected as an isolated particle in this frame (position predicted)
    "no_mask": 2,  # segmentation found no particle in the ROI
    "out_of_view": 4,  # the particle touches or crosses the frame border
    "area_outlier": 8,  # mask area far from the particle's median (merged with a neighbour?)
    "interpolated": 16,  # position not measured: filled from the common (rigid) motion
    "position_outlier": 32,  # measured position inconsistent with its neighbours in time
    "disagree": 64,  # centre of mass and the independent edge correlation disagree (or no second estimate)
}


def flag_names(value: int) -> str:
    """``"undetected|interpolated"`` for a flag value (empty string for 0)."""
    return "|".join(name for name, bit in FRAME_FLAGS.items() if int(value) & bit)


@dataclass(frozen=True)
class ParticleResult:
    """Everything computed for one particle.

    Attributes
    ----------
    particle : int
    positions : ndarray (n_frames, 2)
        Centre of mass ``(y, x)`` per frame in input pixel coordinates (filled where
        not measured, see ``frame_flags``).
    shifts : ndarray (n_frames, 2)
        ``positions - positions[0]``: what was undone to align the particle.
    origin : ndarray (2,) int
        Frame-0 pixel coordinates of pixel [0, 0] of ``aligned`` and the maps.
    aligned : ndarray (n_frames, h, w) float32
        The particle's aligned sub-stack (optical density) on the frame-0 grid.
    masks : ndarray (n_frames, h, w) float32
        Each frame's soft mask, aligned the same way.
    mask : ndarray (h, w) bool
        Consensus mask (aligned masks averaged over frames, >= 0.5).
    frame_flags : ndarray (n_frames,) uint8
        Bits of :data:`FRAME_FLAGS`.
    edge_maps : dict of str -> ndarray (h, w)
        ``e50`` (E at mu_norm = 0.5), ``derivative``, ``whiteline`` in eV, NaN outside
        the particle or where the fit failed.
    pixel_flags : ndarray (h, w) uint8
        XANES flags (see :mod:`xanestrack.xanes`), per pixel.
    fractions : ndarray (n_refs, h, w) or None
        Linear-combination fractions of ``reference_names``.
    mean_spectrum : ndarray (n_frames,)
        Mean optical density inside the mask.
    mean_norm : ndarray (n_frames,)
        Normalised mean spectrum (NaN if normalisation impossible).
    e0_ev : float
    notes : tuple of str
    """

    particle: int
    positions: np.ndarray
    shifts: np.ndarray
    origin: np.ndarray
    aligned: np.ndarray
    masks: np.ndarray
    mask: np.ndarray
    frame_flags: np.ndarray
    edge_maps: dict
    pixel_flags: np.ndarray
    fractions: np.ndarray | None
    reference_names: tuple
    mean_spectrum: np.ndarray
    mean_norm: np.ndarray
    pre_edge: np.ndarray
    post_edge: np.ndarray
    e0_ev: float
    radius: float
    unaligned_ends: np.ndarray | None = None
    notes: tuple = ()
    agreement: np.ndarray | None = None  # (n_frames,) px: |CoM - edge-correlation| displacement, NaN if not measured
    reference_frame: int = 0  # the frame the edge correlation is relative to
    edge_positions: np.ndarray | None = (
        None  # (n_frames, 2): the edge-correlation estimate, on the CoM's offset (NaN if not measured)
    )


@dataclass(frozen=True)
class PipelineResult:
    """Result of :func:`run_pipeline`."""

    energies_ev: np.ndarray
    frame_shape: tuple
    detections: pd.DataFrame
    tracks: pd.DataFrame
    rejected: pd.DataFrame
    particles: list
    motion: pd.DataFrame
    peak_ratios: pd.DataFrame
    common_shift: np.ndarray
    fused: np.ndarray | None  # (n_frames or 2, rows, cols): see PipelineOptions.fuse
    timings: dict
    options: PipelineOptions
    notes: tuple = ()
    similarity: pd.DataFrame | None = None  # per frame: common translation, scale, rotation (motion.SIMILARITY_COLUMNS)


def particle_summary(result: PipelineResult, *, core_px: int = 2) -> pd.DataFrame:
    """One row per particle: where, how large, how well measured, its chemistry and motion.

    The one per-particle table, used by the CLI, ``series``, the report and the evaluation.

    Parameters
    ----------
    result : PipelineResult
    core_px : int
        Edge energies and fractions are averaged over the mask eroded by this many pixels
        (the rim mixes particle and background; the whole mask if nothing is left).

    Returns
    -------
    DataFrame with columns ``particle, y0, x0, radius_px, frames, frames_measured,
    frames_vouched, flagged_frames, median_agreement_px, max_agreement_px,
    max_nonrigid_px, mean_e50_ev, e50_spread_ev, e0_ev, oxidised_fraction``
    (``oxidised_fraction``: mean fraction of the last reference of the linear
    combination fit, NaN without one).
    """
    from scipy import ndimage

    ratios = result.peak_ratios.set_index("particle") if len(result.peak_ratios) else None
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    rows = []
    for p in result.particles:
        flags = np.asarray(p.frame_flags)
        core = ndimage.binary_erosion(p.mask, iterations=core_px) if core_px > 0 else p.mask
        if not core.any():
            core = p.mask
        e50 = p.edge_maps["e50"][core]
        e50 = e50[np.isfinite(e50)]
        ox = np.nan
        if p.fractions is not None and len(p.reference_names) and core.any():
            v = p.fractions[-1][core]
            ox = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        a = np.asarray(p.agreement, float) if p.agreement is not None else np.full(len(flags), np.nan)
        fin = np.isfinite(a)
        nr = np.nan
        if ratios is not None and p.particle in ratios.index:
            nr = float(ratios.loc[p.particle, "max_nonrigid_displacement"])
        rows.append(
            dict(
                particle=int(p.particle),
                y0=float(p.positions[0, 0]),
                x0=float(p.positions[0, 1]),
                radius_px=float(p.radius),
                frames=int(len(flags)),
                frames_measured=int(((flags & unmeasured) == 0).sum()),
                frames_vouched=int(((flags & (unmeasured | FRAME_FLAGS["disagree"])) == 0).sum()),
                flagged_frames=int((flags > 0).sum()),
                median_agreement_px=float(np.median(a[fin])) if fin.any() else np.nan,
                max_agreement_px=float(a[fin].max()) if fin.any() else np.nan,
                max_nonrigid_px=nr,
                mean_e50_ev=float(e50.mean()) if e50.size else np.nan,
                e50_spread_ev=float(e50.std()) if e50.size else np.nan,
                e0_ev=float(p.e0_ev),
                oxidised_fraction=ox,
            )
        )
    cols = [
        "particle",
        "y0",
        "x0",
        "radius_px",
        "frames",
        "frames_measured",
        "frames_vouched",
        "flagged_frames",
        "median_agreement_px",
        "max_agreement_px",
        "max_nonrigid_px",
        "mean_e50_ev",
        "e50_spread_ev",
        "e0_ev",
        "oxidised_fraction",
    ]
    return pd.DataFrame(rows, columns=cols)
