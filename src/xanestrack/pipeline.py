"""The per-particle pipeline: detect → match → segment → register → xanes → motion.

:func:`run_pipeline` takes a :class:`~xanestrack.stack.Stack` and returns a
:class:`PipelineResult`; nothing here reads or writes files. The detector and the
segmenter are arguments, so the learned models (and any user's own) plug in:

- ``detector(od) -> DataFrame`` with the columns of :data:`xanestrack.detect.DETECTION_COLUMNS`;
- ``segmenter(rois) -> masks``: ROIs ``(n, h, w)`` to soft masks in [0, 1] of the same shape.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import xanes
from .detect import DetectOptions, detect_stack
from .follow import FollowOptions, follow_particle
from .match import MatchOptions, link_detections
from .motion import compute_motion, peak_ratios
from .register import (
    WINDOW_MARGIN,
    consensus_mask,
    fuse_particles,
    resample_masks,
    resample_windows,
    vouch_positions,
    window_half,
)
from .result import FRAME_FLAGS, ParticleResult, PipelineResult, flag_names
from .segment import SegmentOptions, segment_particle, segment_rois
from .stack import Stack, sanitize_stack
from .xanes import local_background  # noqa: F401 (re-exported: it lived here)

__all__ = [
    "PipelineOptions",
    "ParticleResult",
    "PipelineResult",
    "run_pipeline",
    # re-exported from the modules they live in (imported from here by existing code)
    "sanitize_stack",
    "analyse_xanes",
    "local_background",
    "fuse_particles",
    "FRAME_FLAGS",
    "flag_names",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Options of the whole pipeline (lengths in pixels, energies in eV).

    Attributes
    ----------
    detect : DetectOptions
        The detectors' size, border and convexity tests, and the classical detector.
    match : MatchOptions
        Linking of the detections into tracks.
    segment : SegmentOptions
        The classical segmenter (used when no ``segmenter`` is given to :func:`run_pipeline`).
    margin : int, default 6 (:data:`xanestrack.register.WINDOW_MARGIN`)
        px. Background around a particle's outline in its window: the window is
        ``2 (ceil(1.3 radius) + margin) + 1`` px wide (:func:`xanestrack.register.window_half`).
    detect_every : int, default 12
        Detect on every n-th frame (and the last); in between, each particle's window is
        placed from its own motion and the common shift (chained phase correlation).
        1: detect on every frame. Must be >= 1.
    interpolation_order : int, default 3
        Spline order (0, 1 or 3) of the resampling of each particle's aligned sub-stack.
    area_tolerance : float, default 0.25
        A frame whose mask area differs from the particle's median area by more than this
        in ``|log(area / median)|`` is flagged ``area_outlier`` (not used for its position).
    min_xanes_energies : int, default 8
        Fewer usable frames than this: no XANES analysis for the particle (a note).
    reference_particle : int or None, default None
        Particle the relative motion columns (``rel_*``) refer to; None: the particle with
        the smallest non-rigid motion (:func:`xanestrack.motion.compute_motion`).
    fuse : {"ends", "all", "none"}, default "ends"
        Frames of the fused frame-0-grid stack (:func:`xanestrack.register.fuse_particles`):
        the first and last, every frame, or none.
    lcf_window : (float, float), default (-20.0, 40.0)
        eV relative to the edge E0: range of the linear combination fit.
    edge_window : (float, float), default (-15.0, 20.0)
        eV relative to E0: where edge energies are searched
        (:func:`xanestrack.xanes.edge_energy`).
    local_background : bool, default True
        Subtract each frame's background plane, fitted to a ring around the particle,
        before the XANES analysis (:func:`xanestrack.xanes.local_background`).
    xanes_smoothing : float, default 1.0
        px. Gaussian sigma of the smoothing inside the particle's mask before the XANES
        analysis (0: none).
    follow : FollowOptions
        The edge-correlation estimate of each particle's position.
    agreement_px : float, default 0.5
        px. Frames where the displacements by centre of mass and by edge correlation
        differ by more than this are flagged ``disagree`` (not vouched for).
    separate_neighbours : bool, default True
        Cut fines and touching neighbours off every mask
        (:func:`xanestrack.segment.isolate_particle`).
    position : {"edges", "com"}, default "edges"
        ``"edges"``: the edge correlation is the position where it measured, vouched by
        the centre of mass; ``"com"``: the reverse (the paper's centre of mass).
    scale_model : {"energy", "frame"}, default "energy"
        Common magnification: linear in the photon energy (a zone plate's focal length
        follows the energy), or one scale per frame.
    """

    detect: DetectOptions = field(default_factory=DetectOptions)
    match: MatchOptions = field(default_factory=MatchOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    margin: int = WINDOW_MARGIN
    detect_every: int = 12
    interpolation_order: int = 3
    area_tolerance: float = 0.25
    min_xanes_energies: int = 8
    reference_particle: int | None = None
    fuse: str = "ends"
    lcf_window: tuple = (-20.0, 40.0)
    edge_window: tuple = (-15.0, 20.0)
    local_background: bool = True
    xanes_smoothing: float = 1.0
    follow: FollowOptions = field(default_factory=FollowOptions)
    agreement_px: float = 0.5
    separate_neighbours: bool = True
    position: str = "edges"
    scale_model: str = "energy"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _default_segmenter(options):
    def seg(rois):
        return segment_rois(rois, options=options)

    return seg


def _xanes_settings(options: PipelineOptions) -> dict:
    """The keywords of :func:`xanestrack.xanes.analyse_particle` from the pipeline's options."""
    return dict(
        min_energies=options.min_xanes_energies,
        subtract_background=options.local_background,
        smoothing=options.xanes_smoothing,
        edge_window=options.edge_window,
        lcf_window=options.lcf_window,
    )


def analyse_xanes(
    aligned, mask, energies, *, usable=None, options: PipelineOptions = PipelineOptions(), references=None
) -> dict:
    """:func:`xanestrack.xanes.analyse_particle` with the XANES settings of ``options``.

    Kept for existing callers; see :func:`~xanestrack.xanes.analyse_particle` for the
    parameters and the returned dict.
    """
    return xanes.analyse_particle(
        aligned, mask, energies, usable=usable, references=references, **_xanes_settings(options)
    )


def _process_particle(pid, track, od, energies, common, segmenter, options, references):
    n = od.shape[0]
    track = track.sort_values("frame")
    predicted = track[["y", "x"]].to_numpy()
    detected = track["detected"].to_numpy()
    radius = float(np.nanmax(track["radius"])) if track["radius"].notna().any() else 10.0
    half = window_half(radius, options.margin)
    examined = track["examined"].to_numpy() if "examined" in track else np.ones(n, bool)
    # follow the particle on its own: windows placed from its own positions and refined by
    # correlating its outline with a reference frame (the last frame it was detected in:
    # post-edge, highest contrast, in an energy scan)
    ref_frame = int(np.flatnonzero(detected)[-1]) if detected.any() else 0
    followed, _, measured = follow_particle(od, predicted, radius, ref_frame, options=options.follow)
    centres = np.where(measured[:, None], followed, predicted)
    seg = segment_particle(od, centres, half, segmenter=segmenter, radius=radius, separate=options.separate_neighbours)
    # the second, independent estimate vouches for each position
    v = vouch_positions(
        seg.com,
        followed,
        edge_measured=measured,
        masks=seg.masks,
        outside=seg.outside,
        clipped=seg.clipped,
        undetected=~detected & examined,
        common=common,
        reference_frame=ref_frame,
        area_tolerance=options.area_tolerance,
        agreement_px=options.agreement_px,
        position=options.position,
    )
    notes = []
    if not v.located.any():
        notes.append("the particle was measured in no frame: not aligned")
    disagree = (v.flags & FRAME_FLAGS["disagree"]) > 0
    if disagree.any():
        notes.append(
            f"{int(disagree.sum())} frames not vouched for: the edge correlation and the centre of mass disagree, or only one measured"
        )
    positions = v.positions
    ref = int(np.flatnonzero(v.located)[0]) if v.located.any() else 0
    size = 2 * half + 1
    origin = np.round(positions[ref]).astype(int) - half if v.located.any() else seg.origins[0]
    # the aligned grid is frame-0's (positions are filled for every frame, or all NaN)
    shifts = positions - positions[0]
    aligned = resample_windows(od, shifts, origin, (size, size), order=options.interpolation_order)
    amasks = resample_masks(seg.masks, seg.origins, shifts, origin, (size, size))
    # frames whose position is not measured are kept (interpolated, flagged) but not used
    use = v.usable & ~disagree & np.all(np.isfinite(aligned), axis=(1, 2))
    mask = consensus_mask(amasks, use)
    mean_spec = np.array([np.nanmean(a[mask]) if mask.any() else np.nan for a in aligned])

    xr = xanes.analyse_particle(
        aligned, mask, energies, usable=use & np.isfinite(mean_spec), references=references, **_xanes_settings(options)
    )
    notes += xr.pop("notes")
    return ParticleResult(
        particle=int(pid),
        positions=positions,
        shifts=shifts,
        origin=np.asarray(origin, int),
        aligned=aligned,
        masks=amasks,
        mask=mask,
        frame_flags=v.flags,
        mean_spectrum=mean_spec,
        radius=radius,
        **xr,
        unaligned_ends=resample_windows(od, np.zeros((n, 2)), origin, (size, size), order=0, frames=[0, n - 1]),
        notes=tuple(notes),
        agreement=v.agreement,
        reference_frame=ref_frame,
        edge_positions=v.edge_positions,
    ), seg.com


def run_pipeline(
    stack: Stack,
    *,
    options: PipelineOptions = PipelineOptions(),
    detector=None,
    segmenter=None,
    references=None,
    progress=None,
) -> PipelineResult:
    """Find, track, align and analyse every isolated particle of an energy scan.

    Parameters
    ----------
    stack : Stack
    options : PipelineOptions
    detector : callable(od[, frames=...]) -> DataFrame, optional
        Default: the classical detector with ``options.detect``. With
        ``options.detect_every > 1`` it is called with ``frames=`` the key frames.
    segmenter : callable(rois) -> masks, optional
        Default: the classical segmenter with ``options.segment``.
    references : dict of name -> ReferenceSpectrum, optional
        For the linear combination fit; default the shipped Ni references when the
        scan covers the Ni K-edge, else none.
    progress : callable(stage: str, done: int, total: int), optional

    Returns
    -------
    PipelineResult
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a xanestrack Stack, got {type(stack).__name__}")
    timings = {}
    notes = []
    od, n_fixed = sanitize_stack(stack.od, source=stack.metadata.get("source", "stack"))
    if n_fixed:
        notes.append(f"{n_fixed} NaN/inf pixels replaced by their local median")
    energies = np.asarray(stack.energies_ev, float)
    if references is None:
        from .spectra import ni_references

        references = ni_references() if (energies[0] < 8340 < energies[-1]) else {}

    def prog(stage):
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)

    t = time.perf_counter()
    n_frames = od.shape[0]
    if int(options.detect_every) < 1:
        raise ValueError(f"options.detect_every must be >= 1, got {options.detect_every}")
    key = None
    if options.detect_every > 1:
        key = sorted(set(range(0, n_frames, int(options.detect_every))) | {n_frames - 1})
    if detector is None:
        detections = detect_stack(od, options=options.detect, frames=key, progress=prog("detect"))
    else:
        detections = detector(od) if key is None else detector(od, frames=key)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    tracks, rejected_tracks, common = link_detections(detections, od, options=options.match, frames=key)
    timings["match"] = time.perf_counter() - t

    t = time.perf_counter()
    seg = segmenter if segmenter is not None else _default_segmenter(options.segment)
    particles = []
    com_rows = []
    pids = sorted(tracks["particle"].unique()) if len(tracks) else []
    for j, pid in enumerate(pids):
        tr = tracks[tracks["particle"] == pid]
        pr, com_raw = _process_particle(pid, tr, od, energies, common, seg, options, references)
        particles.append(pr)
        tr = tr.sort_values("frame")
        com_rows.append(
            pd.DataFrame(
                {
                    "particle": pid,
                    "frame": tr["frame"].to_numpy(),
                    "energy_ev": energies[tr["frame"].to_numpy()],
                    "y": pr.positions[:, 0],
                    "x": pr.positions[:, 1],
                    "measured_y": com_raw[:, 0],
                    "measured_x": com_raw[:, 1],
                    "detected": tr["detected"].to_numpy(),
                    "area": tr["area"].to_numpy(),
                    "ssim": tr["ssim"].to_numpy(),
                    "edge_y": pr.edge_positions[:, 0],
                    "edge_x": pr.edge_positions[:, 1],
                    "agreement_px": pr.agreement,
                    "flags": [flag_names(f) for f in pr.frame_flags],
                }
            )
        )
        if progress is not None:
            progress("particles", j + 1, len(pids))
    timings["segment_register_xanes"] = time.perf_counter() - t

    t = time.perf_counter()
    table = (
        pd.concat(com_rows, ignore_index=True)
        if com_rows
        else pd.DataFrame(
            columns=[
                "particle",
                "frame",
                "energy_ev",
                "y",
                "x",
                "measured_y",
                "measured_x",
                "detected",
                "area",
                "ssim",
                "edge_y",
                "edge_x",
                "agreement_px",
                "flags",
            ]
        )
    )
    ny, nx = od.shape[1:]
    fit = table[["particle", "frame", "y", "x"]].copy()
    # the common motion is fitted on vouched positions; where fewer than three particles
    # are vouched for in most frames (e.g. real frames whose masks do not confirm the
    # edge estimate), on every measured position instead (recorded in the similarity)
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    vouched = [(p.frame_flags & (unmeasured | FRAME_FLAGS["disagree"])) == 0 for p in particles]
    fitted_on = "vouched positions"
    if sum(v.mean() >= 0.5 for v in vouched) < 3:
        vouched = [(p.frame_flags & unmeasured) == 0 for p in particles]
        fitted_on = "measured positions (too few particles vouched for)"
    fit["reliable"] = np.concatenate(vouched) if particles else np.zeros(0, bool)
    motion = compute_motion(
        fit,
        reference_particle=options.reference_particle,
        centre=((ny - 1) / 2, (nx - 1) / 2),
        scale_axis=energies if options.scale_model == "energy" else None,
    )
    similarity = motion.attrs.get("similarity")
    if similarity is not None:
        similarity.attrs["fitted_on"] = fitted_on
    if len(table):
        table = table.merge(motion.drop(columns=["y", "x"]), on=["particle", "frame"], how="left")
        sim = similarity[["frame", "common_dy", "common_dx", "scale"]].rename(columns={"scale": "common_scale"})
        table = table.merge(sim, on="frame", how="left")
    ratios = peak_ratios(motion) if len(motion) else pd.DataFrame()
    timings["motion"] = time.perf_counter() - t

    fused = None
    if options.fuse not in ("ends", "all", "none"):
        raise ValueError(f"options.fuse must be 'ends', 'all' or 'none', got {options.fuse!r}")
    if options.fuse != "none" and particles:
        t = time.perf_counter()
        fused = fuse_particles(od, particles, common, frames=None if options.fuse == "all" else [0, od.shape[0] - 1])
        timings["fuse"] = time.perf_counter() - t
    if not particles:
        notes.append("no isolated particle was tracked through enough frames")
    rej = detections[~detections["isolated"]] if len(detections) else detections
    return PipelineResult(
        energies_ev=energies,
        frame_shape=tuple(od.shape[1:]),
        detections=detections,
        tracks=table,
        rejected=_summarise_rejected(rej, rejected_tracks),
        particles=particles,
        motion=motion,
        peak_ratios=ratios,
        common_shift=common,
        fused=fused,
        timings=timings,
        options=options,
        notes=tuple(notes),
        similarity=similarity,
    )


def _summarise_rejected(rejected_dets, rejected_tracks):
    """One row per rejected object (grouped by position): ``y, x, reason, n_frames``."""
    rows = []
    if len(rejected_dets):
        r = rejected_dets.copy()
        r["key"] = list(zip((r["y"] // 25).astype(int), (r["x"] // 25).astype(int), r["reason"]))
        for (_, _, reason), g in r.groupby("key"):
            rows.append((g["y"].mean(), g["x"].mean(), reason, len(g), g["radius"].mean()))
    for _, t in rejected_tracks.iterrows():
        rows.append((t["y"], t["x"], "short_track", int(t["n_frames"]), np.nan))
    return pd.DataFrame(rows, columns=["y", "x", "reason", "n_frames", "radius"])
