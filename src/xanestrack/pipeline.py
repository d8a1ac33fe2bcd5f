"""The per-particle pipeline: detect → match → segment → register → xanes → motion.

:func:`run_pipeline` takes a :class:`~xanestrack.stack.Stack` and returns a
:class:`PipelineResult`; nothing here reads or writes files. The detector and the
segmenter are arguments, so the learned models (and any user's own) plug in:

- ``detector(od) -> DataFrame`` with the columns of :data:`xanestrack.detect.DETECTION_COLUMNS`;
- ``segmenter(rois) -> masks``: ROIs ``(n, h, w)`` to soft masks in [0, 1] of the same shape.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from . import xanes
from .background import (
    Footprint,
    MatrixBackground,
    matrix_motion,
    matrix_texture_ratio,
    separate_layers,
    unmix_layers,
)
from .chemistry.normbias import FRAMES_NOTE_START
from .detect import DetectOptions, cut_at_necks, detect_stack
from .follow import FollowOptions, density_residuals, follow_particle, shape_weight, window_geometry
from .match import MatchOptions, link_detections
from .morph import dilate_cross
from .motion import common_similarity, compute_motion, peak_ratios
from .register import (
    MEDIAN_OFFSET_FRAMES,
    MOTION_RUN_FRAMES,
    WINDOW_MARGIN,
    VouchedPositions,
    consensus_mask,
    edge_widths,
    fill_positions,
    fuse_particles,
    resample_masks,
    resample_windows,
    vouch_by_motion,
    vouch_positions,
    window_half,
    withdraw_lone_agreements,
)
from .result import FRAME_FLAGS, ParticleResult, PipelineResult, flag_names
from .robust import robust_sigma
from .segment import SegmentOptions, isolate_particle, segment_particle, segment_roi, segment_rois
from .smoothing import local_quadratic, smooth_tracks
from .stack import Stack, duplicate_frames, lone_step, lone_step_words, sanitize_stack
from .xanes import (
    MISFIT_NOTE,
    MISFIT_REGION_NOTE,
    OTHER_EDGE_EV,
    OTHER_EDGE_NOTE,
    SHOULDER_NOTE,
    SPARSE_POST_EDGE_NOTE,
    find_e0,
    local_background,  # noqa: F401 (re-exported: it lived here)
)

__all__ = [
    "PipelineOptions",
    "ParticleResult",
    "PipelineResult",
    "run_pipeline",
    "phase_mapping",
    "redo_xanes",
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
        1: detect on every frame. Must be >= 1. A short scan is examined more often, on
        :data:`MIN_KEY_FRAMES` frames at least (:func:`key_frame_step`).
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
    match_resolution : bool, default True
        Where the particles' edges blur or sharpen across the scan (a focus drifting with the
        energy: the run note of :func:`_resolution_change`), blur each frame's particle windows
        to the scan's coarsest resolution before the XANES analysis (a Gaussian per frame
        from the particles' edge widths, :func:`_resolution_blur`), so that the share of the
        surroundings mixed into a pixel no longer changes with the energy and biases its edge
        energy. The aligned stack written stays as measured. Scans whose focus holds are not
        touched.
    follow : FollowOptions
        The edge-correlation estimate of each particle's position.
    agreement_px : float, default 0.5
        px. Frames where the displacements by centre of mass and by edge correlation
        differ by more than this are flagged ``disagree`` (not vouched for).
    window_offset_px : float, default 0.0
        px. Cut the windows the centre of mass is measured in up to this far (uniform, per
        frame, drawn from the particle's id) from the edge estimate, so that a segmenter
        leaning towards its window's centre in an ambiguous frame does not make the two
        estimates agree (:func:`xanestrack.segment.segment_particle`). Measured at 2.5 px
        (stress family, full size, seeds 1-2): with a Dual U-Net fine-tuned on the stress
        family, frames off by > 1 px yet vouched for on stress-counts / stress-drift seed 1
        7 / 2 centred, 3 / 2 offset; with the shipped one, 1 in all 14 runs either way (10 %
        more frames not vouched for); the classical segmenter, which keeps the component
        nearest its window's centre, got worse (stress-drift seed 1: 0.375 -> 0.774 px worst,
        2 frames vouched for wrongly): 0, centred, by default.
    separate_neighbours : bool, default True
        Cut fines and touching neighbours off every mask
        (:func:`xanestrack.segment.isolate_particle`).
    separate_matrix : bool, default True
        Follow every particle that moves on its own relative to the matrix a second time,
        with the matrix behind it subtracted (two layers separated by their motions,
        :mod:`xanestrack.background`) and the
        correlation apodised by the particle's own shape instead of a disc: the matrix
        texture moves with the common motion and pulls the estimate of a particle
        drifting on its own towards it in the faint pre-edge frames (15-70 % of its own
        motion on ``stress-drift``). From 1.5 px of own motion (``SEPARATE_PX``), and from
        0.75 px (``MIN_OWN_MOTION``) where the motion is 4 times the noise of the
        particle's positions in its noisiest frames (``OWN_MOTION_SNR``): see there for
        what was measured. Not where the matrix is too faintly textured to pull any particle
        (``MATRIX_MIN_TEXTURE``; a run note says so).
    subtract_matrix : bool, default True
        With ``separate_matrix``: subtract the matrix separated from behind a particle (its
        texture, moved by the common motion, :func:`_matrix_windows`) from the particle's aligned
        frames before the XANES analysis and its mean spectrum: the texture slides through the
        pixels of a particle that moves on its own and enters their spectra. The aligned
        stack written to the outputs stays the measured optical density; the particle's notes
        say so.
    shape_apodisation : bool, default True
        With ``separate_matrix``: follow a particle that moves on its own but is not
        separated from the matrix (by ``MIN_OWN_MOTION / 2`` or more, or by ``SHAPE_MIN_PX``
        or more where that stands out of its noise, :func:`_moves_on_its_own`; and less than
        ``MIN_OWN_MOTION``, or less than ``SEPARATE_PX`` where its motion does not stand
        out of its noise, :func:`_separable`) a second time, the correlation apodised by
        its own shape (the consensus of its masks, grown by the edge images' reach)
        instead of the disc, without subtracting
        anything: matrix texture, fines and neighbours inside the disc but outside the
        particle no longer pull. Its own motion is then measured again on these positions
        (less pulled than the first pass's) and, where that makes it separable, it is
        separated from the matrix after all (``_refine_one``); so again after its matrix is
        told apart by the edge (``unmix_matrix``). A particle moving with the matrix keeps the disc (its
        surroundings move with it: signal), and so does every particle of a scan of fewer
        than 3 frames (its own motion cannot be told, and a shape averaged from two masks
        is not independent of their centres of mass, which vouch). Measured on the stress
        family (full size, seeds 1-2, 28 runs; with the separation from 1.5 px, so for own
        motions of 0.75-1.5 px): worst particle within 0.25 px in 15 runs where 14, e.g.
        stress-counts seed 1 0.318 -> 0.278 px (learned), 0.272 -> 0.237
        (classical), stress-jitter seed 2 0.370 -> 0.281; 13 runs better, 1 worse
        (stress-all seed 1, classical, 0.460 -> 0.478). Given to every particle:
        stress-magnification, whose particles move with the matrix, 0.086 -> 0.096; given
        to two-frame scans: frames off by 1.6 and 2.4 px vouched for.
    unmix_matrix : bool, default True
        With ``shape_apodisation``: a particle not separated from the matrix by its motion
        (one followed by its shape, and one that moves with the matrix) is followed again
        with the matrix behind it subtracted, the two layers told apart by the particle's
        absorption edge instead of its motion (:func:`xanestrack.background.unmix_layers`;
        the particle's contrast per frame, pre-edge absorption included, from
        :func:`_particle_contrasts`): the particle's contrast changes three- to fivefold
        across the edge while the matrix's does not. The matrix biases such a particle's
        faint pre-edge frames: it pulls one moving on its own towards the common motion,
        and even under one moving with it, the windows' mixture of particle and matrix
        changes across the edge while the correlation's template keeps one mixture (up to
        0.3 px between the frames before and after the edge at the true positions,
        ``docs/HISTORY.md``). It is kept only where the matrix so estimated stands
        ``UNMIX_MIN_SNR`` times out of its own noise (not at 600 counts: there it cost
        ``stress-counts`` seed 2's worst particle 0.31 -> 0.50 px) and moved the particle's
        positions beyond their noise (``UNMIX_CHANGE_Z``; elsewhere it only adds its own
        noise: ``stress-magnification``'s particles, which move with the matrix, 0.039 ->
        0.053 px median unmixed every one); else the particle keeps its shape's positions,
        or the disc if it moves with the matrix. The chemistry is not affected (the matrix
        so estimated is not subtracted from the spectra). Measured on the stress family:
        see the README.
    mask_guard : bool, default True
        With a learned segmenter: outline each particle's mean window (its key frames, aligned
        on the first pass) with the classical segmenter too, neighbours cut off alike; where
        the learned consensus shape, grown by 2 px, misses more than ``MASK_MISS`` of that
        outline (a lobe or an irregular outline the network was not trained on), segment that
        particle with the classical segmenter instead and say so in its notes (:func:`_mask_miss`).
        Likewise where the learned outline of the mean window moves with the window's orientation
        (its centre of mass more than ``MASK_ORIENTATION_PX`` from the mean over the square's 8
        orientations: a strip left out on one side; :func:`_orientation_spread`). The classical
        segmenter is never guarded.
    smooth_tracks : bool, default True
        Separate the positions of all particles into the motion they share (kept rough,
        frame by frame: jitter, jumps), each particle's own motion (smoothed across the
        energies as far as its data support, by GCV; where it jumps, the jump is kept) and
        noise (:func:`xanestrack.smoothing.smooth_tracks`). Measured on the stress family
        (full size, seeds 1-2, worst / median RMS px over the isolated particles, learned
        path): stress-counts 0.460 / 0.303, 0.192 / 0.216 -> 0.293 / 0.218, 0.118 / 0.118;
        stress-all 0.925 / 2.362, 0.654 / 0.524 -> 0.346 / 1.631, 0.258 / 0.371;
        magnification 0.149 / 0.144 -> 0.113 / 0.086; worse only on stress-crowd seed 1's
        median (0.191 -> 0.211). Default scenes (seeds 1-4): worst 0.054-0.065 ->
        0.032-0.053 px. Frames whose positions alternate from frame to frame (two passes over the
        energies sorted by energy) are not smoothed across; a note names them.
    density_voucher : bool, default True
        For a particle whose centre of mass confirms the edge estimate in no frame (its
        outline is no second estimate at all), let a third estimate vouch: the correlation
        of its optical density (background plane removed, normalised) in windows centred on
        the edge estimate (:func:`xanestrack.follow.density_residuals`), in the frames where
        its mask is usable and its surroundings (a ring around its window) move with it
        within ``WITH_MATRIX_PX``. It is a correlation of the edge estimate's window:
        texture moving otherwise pulls both alike (given to every frame it vouched for 21
        frames off by 1.0-1.3 px on stress-drift seed 1), in faint frames both drift alike
        (4 on stress-all seed 1 with the ring test alone), and a neighbour inside the window
        fools both (reduced stress-all seed 3: 3-4 frames off by 1.05-1.11 px whose centres
        of mass disagreed, while the centre of mass confirmed most of that particle's frames).
        Real frames (SSRL 6-2c, 8324 / 8354 eV): the masks' outlines move across the edge
        (the centres of mass of 5 particles stray 1.2-6 px from any similarity, the edge
        estimates 0.01-0.53 px), so no particle was vouched for; with it 4, radius 53-167 px,
        each within 0.49 px of the common similarity.
    motion_voucher_frames : int, default ``register.MOTION_RUN_FRAMES`` (24)
        A frame not vouched for only because its centre of mass disagreed or was missing,
        inside a run of at most this many such frames with frames vouched for on both sides,
        is vouched for (``by_motion``) where its edge estimate and its position lie within
        ``agreement_px`` of the other particles' motion in that frame plus its own motion
        interpolated from the frames vouched for on either side
        (:func:`xanestrack.register.vouch_by_motion`; 0: never). Chemically mixed particles
        are outlined in part across the edge, so their centres of mass stray there while their
        positions hold, and the frames that carry the edge were left out of their chemistry.
    position : {"edges", "com"}, default "edges"
        ``"edges"``: the edge correlation is the position where it measured, vouched by
        the centre of mass; ``"com"``: the reverse (the paper's centre of mass).
    scale_model : {"energy", "frame"}, default "energy"
        Common magnification: linear in the photon energy (a zone plate's focal length
        follows the energy), or one scale per frame.
    rotation : bool, default False
        Fit a rotation of each frame in the common similarity as well (with three particles
        or more in the frame), for scans whose image turns (a sample stage that turns
        between energies): without it such a rotation is reported as every particle's own
        (non-rigid) motion, with it a particle cluster turning on its own is taken for the
        frame's. Off by default: nothing turns the image in a TXM energy scan.
    uncertainty : bool, default True
        Per-pixel standard errors of E50 (from the frames' noise and from the
        particle's registration uncertainty, its per-frame ``agreement_px``) and of the
        LCF fractions (:mod:`xanestrack.chemistry.uncertainty`).
    edge_jump_threshold : float, default 5.0
        Quality mask: a pixel is trusted when its edge step exceeds this many times its
        pre-edge noise (TXM-Sandbox's rule) and its normalisation and LCF residual are
        not outliers (:func:`xanestrack.chemistry.quality.quality_masks`). Statistics
        (particle means, cluster fractions) use only trusted pixels.
    clusters : int, default 0
        Phase mapping: cluster the normalised per-pixel spectra of all particles together
        into this many phases (0: no phase mapping; 1 is refused) on the frames usable in
        every particle (:func:`phase_mapping`).
    cluster_method : {"kmeans", "nmf"}, default "kmeans"
        k-means (hard clusters) or NMF started from k-means (a pixel's cluster is its
        largest component).
    cluster_window : (float, float) or None, default None
        eV, absolute: cluster on the energies in this range only (None: all common frames).
    threads : int or None, default 1
        Particles refined on the matrix and finished (resampled, XANES) this many at a time,
        and the matrix's frames prepared, in threads (numpy, scipy and torch release the GIL
        in their heavy loops); None: the machine's cores, at most 4. Results do not depend on
        it (tested). Measured on the 2-core machine (460^2, 9 particles, ``xanestrack run``,
        3 runs each): 1 thread 13.4-14.4 s, 718-727 MiB peak; 2 threads 12.7-14.7 s,
        813-861 MiB (refine alone +75, finish alone +125 MiB; the matrix's frames alone
        +5 MiB): no gain beyond this machine's noise, and over issue 12's memory budget
        (2 x the OD stack + 500 MiB = 731 MiB). Particles are always located one at a time
        (each holds its whole window stack, masks and labels then).
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
    match_resolution: bool = True
    follow: FollowOptions = field(default_factory=FollowOptions)
    agreement_px: float = 0.5
    window_offset_px: float = 0.0
    separate_neighbours: bool = True
    separate_matrix: bool = True
    subtract_matrix: bool = True
    shape_apodisation: bool = True
    unmix_matrix: bool = True
    mask_guard: bool = True
    smooth_tracks: bool = True
    position: str = "edges"
    scale_model: str = "energy"
    rotation: bool = False
    uncertainty: bool = True
    edge_jump_threshold: float = 5.0
    clusters: int = 0
    cluster_method: str = "kmeans"
    cluster_window: tuple | None = None
    threads: int | None = 1
    density_voucher: bool = True
    motion_voucher_frames: int = MOTION_RUN_FRAMES

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _threads(options) -> int:
    if options.threads is not None:
        if int(options.threads) < 1:
            raise ValueError(f"threads must be >= 1 or None, got {options.threads}")
        return int(options.threads)
    return max(1, min(4, os.cpu_count() or 1))


def _map(fn, items, threads: int) -> list:
    """``[fn(x) for x in items]``, ``threads`` at a time (in order)."""
    items = list(items)
    if threads <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    # the particles are the parallel work: BLAS's own threads inside each of them (OpenBLAS starts one per
    # core, and they spin-wait for the next call) took the cores from the other particles' numpy work. The
    # 1024^2 stress-all scan (36 particles, 2 cores) in-process: quiet, 19.5 / 20.0 s -> 19.1 / 19.3 s (the 460^2
    # default scene unchanged, 3.4-3.6 s); with other work on the machine, 38.5 -> 20.1 s, the matrix
    # separation's small eigenproblems 3.9 s -> 0.06 s. PyTorch's threads are left as they are: the segmenter's
    # batches gain from them (limited to one too, 27.4 s against 21.9 s)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(min(threads, len(items))) as ex:
        return list(ex.map(fn, items))


def _default_segmenter(options):
    def seg(rois):
        return segment_rois(rois, options=options)

    seg.fits_background = True  # its own plane per window: segment._level_windows is not needed
    return seg


def _xanes_settings(options: PipelineOptions) -> dict:
    """The keywords of :func:`xanestrack.xanes.analyse_particle` from the pipeline's options."""
    return dict(
        min_energies=options.min_xanes_energies,
        subtract_background=options.local_background,
        smoothing=options.xanes_smoothing,
        edge_window=options.edge_window,
        lcf_window=options.lcf_window,
        uncertainty=options.uncertainty,
        edge_jump_threshold=options.edge_jump_threshold,
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


def _consensus_shape(seg, centres, frames, radius, follow_options):
    """The particle's consensus shape on :func:`follow_particle`'s window (bool; None if empty)."""
    _, _, size = window_geometry(radius, follow_options)
    c = (size - 1) / 2
    k = np.flatnonzero(frames & np.isfinite(centres).all(axis=1) & (seg.masks.max(axis=(1, 2)) > 0.5))
    if k.size == 0:
        return None
    placed = resample_masks(seg.masks[k], seg.origins[k], centres[k] - c, (0, 0), (size, size))
    shape = placed.mean(axis=0) > 0.5
    return shape if shape.any() else None


@dataclass
class _Located:
    """A particle after the first pass: followed with a disc, segmented."""

    pid: int
    track: pd.DataFrame
    detected: np.ndarray
    examined: np.ndarray
    radius: float
    half: int
    ref_frame: int
    followed: np.ndarray
    measured: np.ndarray
    centres: np.ndarray
    seg: object
    shape: np.ndarray | None
    unseparated_motion: float | None = None  # px: own motion of a particle not separated from the matrix
    mask_missed: float | None = None  # share of the mean window's outline the learned masks missed (guarded)
    mask_turned: tuple | None = None  # (px, n): the learned outline's spread over n orientations (guarded)
    matrix: MatrixBackground | None = None  # the matrix separated from behind it (its own motion), if it was
    unmixed_motion: float | None = None  # px: own motion of a particle whose matrix was told apart by its edge
    unmixed_still: bool = False  # that particle moves with the matrix (its own motion not told from noise)
    separation_undone: tuple | None = None  # (px, times the noise): a separation from the matrix undone


#: a faint track (detected in fewer than ``min_track_fraction`` of the frames examined) whose mean spectrum
#: shows no absorption edge, its step within this many standard errors of nil, is left out: matrix texture, not
#: a particle of the element scanned. On a scene without pre-edge contrast and a textured matrix (OD 0.5, 30 %),
#: 17 such tracks were kept as particles, some vouched for in 45 of 60 frames, their steps -0.04 to +0.01 OD
#: (0-1 standard errors); the particles' were 10-29 standard errors, the one nearest the rule 5
EDGELESS_Z = 3.0


def _edge_step_z(spectrum, energies, e0) -> float:
    """A mean spectrum's step across the edge at ``e0`` (post-edge mean less pre-edge mean, 20-30 eV away from
    it) in standard errors (the frame-to-frame scatter of its pre-edge); NaN with fewer than 3 frames a side."""
    s = np.asarray(spectrum, float)
    e = np.asarray(energies, float)
    a, b = s[(e < e0 - 20) & np.isfinite(s)], s[(e > e0 + 30) & np.isfinite(s)]
    if a.size < 3 or b.size < 3:
        return float("nan")
    noise = robust_sigma(np.diff(a), centre=0.0) / np.sqrt(2)
    if not noise > 0:
        return float("nan")
    return float((b.mean() - a.mean()) / (noise * np.sqrt(1 / a.size + 1 / b.size)))


def _core_spectrum(r) -> np.ndarray:
    """The mean OD of a particle's aligned frames over its mask, or where it has none (no frame outlined it)
    over the disc of 0.7 its radius at the window's centre (where it was followed); every frame."""
    if getattr(r, "aligned", None) is None:
        return np.full(0, np.nan)
    a = np.asarray(r.aligned, float)
    m = np.asarray(r.mask, bool)
    if not m.any():
        h, w = a.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        m = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= max(0.7 * float(r.radius), 2.0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a[:, m], axis=1)


def _edgeless_faint_tracks(located, results, energies, options) -> list:
    """Indices of the tracks measured in no frame (nothing of them to report: a one-frame Zeiss image of a test
    chip listed 20 such as particles, every position NaN) and of the faint ones whose mean spectrum shows no
    absorption edge (:data:`EDGELESS_Z`)."""
    nowhere = [j for j, r in enumerate(results) if not np.isfinite(r.positions).any()]
    e0s = [r.e0_ev for r in results if np.isfinite(r.e0_ev)]
    if not e0s or len(located) < 2:
        return nowhere
    e0 = float(np.median(e0s))
    z = [
        _edge_step_z(_core_spectrum(r), energies, e0) if np.isfinite(r.positions).any() else float("nan")
        for r in results
    ]
    if not any(v >= EDGELESS_Z for v in z):  # no track shows the edge: the scan is not across the particles'
        return nowhere
    out = list(nowhere)
    for j, loc in enumerate(located):
        n_examined, n_seen = int(loc.examined.sum()), int((loc.detected & loc.examined).sum())
        if j in nowhere or not (n_examined and n_seen < options.match.min_track_fraction * n_examined):
            continue
        if z[j] < EDGELESS_Z:  # faint, and without an edge
            out.append(j)
    return sorted(out)


#: a track measured in no frame is said to have run into a tracked particle in a frame where at least this share
#: of the smaller of its mask and that particle's disc (at its position there) lies in both. Seen: the probe's
#: cracked r 55 particle, cut by the learned detector into pieces of r 34 and 42: the r 34 piece's masks that
#: took in the whole particle (5580-7777 px, 48 of 68 frames) 0.54-0.83, those of the piece alone (1225-2894
#: px, the 20 pre-edge frames) 0.24-0.28 (the other piece's disc, r 42, reaches over it); the real SSRL pair,
#: learned: a touching pair's masks 0.67-1.00, the lone particles at (944, 761) and (935, 362) at most 0.02;
#: classical: a 7261-px mask of an r 34 particle (its disc 3718 px) reaching into the 163-px one held 0.27 of
#: itself in that one's disc (said to run out of its window instead)
TAKEN_SHARE = 0.4


def _runs_out_of_window(hard, clipped) -> np.ndarray:
    """Per frame: the mask (bool ``(n_frames, h, w)``) touches its window's edge where the window lies inside the
    frame (not ``clipped``): joined to something beside the particle."""
    edge = hard[:, 0, :].any(1) | hard[:, -1, :].any(1) | hard[:, :, 0].any(1) | hard[:, :, -1].any(1)
    return edge & ~np.asarray(clipped, bool)


def _mask_failures(loc, located, area_tolerance: float = 0.25) -> dict:
    """What the window of a track measured in no frame gave, frame by frame: the number of frames its mask was
    ``empty``, cut by the frame's ``border``, ``joined`` (it ran into a tracked particle: at least
    :data:`TAKEN_SHARE` of the smaller of its mask and that particle's disc lie in both; ``taken``: that
    particle's index in ``located``), ran out of its window (``beyond``: joined to something beside it that no neck
    parts from it, a touching neighbour or the matrix), or had an area too far from its median (``area``: by more than
    ``area_tolerance`` in log, the test :func:`~xanestrack.register.mask_flags` makes; ``areas`` the areas of
    those frames and ``median`` that of every mask) where nothing else is wrong (``other``: none of these,
    e.g. a position outlier). Empty dict for a track without its windows' masks."""
    from .register import mask_flags

    seg = getattr(loc, "seg", None)
    if seg is None:
        return {}
    soft = np.asarray(seg.masks, np.float32)
    hard = soft > 0.5
    n, h, w = hard.shape
    area = soft.sum(axis=(1, 2))
    flags = mask_flags(soft, outside=seg.outside, clipped=seg.clipped, area_tolerance=area_tolerance)
    border = (flags & FRAME_FLAGS["out_of_view"]) > 0
    beyond = _runs_out_of_window(hard, seg.clipped)
    # how much this track's mask and each other track's disc share, frame by frame: of the smaller of the two
    # (a mask that took in a touching particle as large, or ran into a larger one)
    share = np.zeros((len(located), n))
    yy, xx = np.mgrid[0:h, 0:w]
    for i, other in enumerate(located):
        if other is loc or getattr(other, "centres", None) is None:
            continue
        pos = _positions(other)
        with np.errstate(invalid="ignore"):  # only the others whose disc reaches into the window
            near = np.hypot(*(pos - np.asarray(seg.origins, float) - [(h - 1) / 2, (w - 1) / 2]).T)
            near = near < other.radius + np.hypot(h, w) / 2
        for k in np.flatnonzero(hard.any(axis=(1, 2)) & near):
            dy, dx = yy + seg.origins[k][0] - pos[k, 0], xx + seg.origins[k][1] - pos[k, 1]
            disc = dy * dy + dx * dx <= other.radius**2
            if disc.any():
                both = np.count_nonzero(disc & hard[k])
                share[i, k] = both / max(min(np.pi * other.radius**2, np.count_nonzero(hard[k])), 1.0)
    empty = area <= 0
    joined = ~empty & ~border & (share.max(axis=0, initial=0.0) >= TAKEN_SHARE)
    beyond &= ~empty & ~border & ~joined
    rest = ~empty & ~border & ~joined & ~beyond
    med = float(np.median(area[area > 0])) if (area > 0).any() else 0.0
    off_median = rest & ((flags & FRAME_FLAGS["area_outlier"]) > 0)
    taken = int(np.argmax(share[:, joined].max(axis=1))) if joined.any() else None
    return {
        "empty": int(empty.sum()),
        "border": int(border.sum()),
        "joined": int(joined.sum()),
        "taken": taken,
        "beyond": int(beyond.sum()),
        "area": int(off_median.sum()),
        "areas": area[off_median],
        "median": med,
        "other": int((rest & ~off_median).sum()),
    }


def _unmeasured(loc, located, gone_ids=(), area_tolerance: float = 0.25) -> tuple[str, str]:
    """``(reason, words)``: why a track was measured in no frame, as its window's segmentation tells
    (:func:`_mask_failures`): ``reason`` for ``rejected.csv`` (the failure of most frames), ``words`` for the
    run note. A track followed, and detected in some frames, is not one without an outline in its window: on
    the real SSRL pair a particle detected isolated (r 34) was said to have "no outline of a particle in its
    window" where its masks held 2241 and 4109 px, too far apart to trust either of two frames; the probe's
    r 34 piece of a cracked particle, detected in 6 of 9 key frames, where its masks took in the other piece."""
    n_ex = int(np.sum(loc.examined))
    n_det = int(np.sum(np.asarray(loc.detected) & np.asarray(loc.examined)))
    seen = f"detected in {n_det} of the {n_ex} frames examined"
    f = _mask_failures(loc, located, area_tolerance)
    if not f:
        return "no_usable_mask", f"{seen}, no usable mask of it in any frame"
    said, counts = [], []  # the reason: that of most frames, the first said of those as many
    if f["joined"]:
        other = located[f["taken"]]
        who = f"track {other.pid} (left out too)" if other.pid in gone_ids else f"particle {other.pid}"
        said.append(f"its mask ran into the touching {who} in {_count(f['joined'], 'frame')}")
        kind = "track" if other.pid in gone_ids else "particle"
        counts.append((f["joined"], f"mask_joined_to_{kind}_{other.pid}"))
    if f["empty"]:
        said.append(f"its mask in its window was empty in {_count(f['empty'], 'frame')}")
        counts.append((f["empty"], "mask_empty"))
    if f["beyond"]:
        said.append(
            "its mask ran out of its window (joined to something beside it: a touching neighbour or the matrix) in "
            + _count(f["beyond"], "frame")
        )
        counts.append((f["beyond"], "mask_runs_out_of_window"))
    if f["area"]:
        a = f["areas"]
        said.append(
            f"its mask's area was too far from its median to trust ({a.min():.0f}"
            + (f"-{a.max():.0f}" if round(a.max()) != round(a.min()) else "")
            + f" px against {f['median']:.0f}) in "
            f"{_count(f['area'], 'frame')}"
        )
        counts.append((f["area"], "mask_area_unsteady"))
    if f["border"]:
        said.append(f"its mask was cut by the frame's border in {_count(f['border'], 'frame')}")
        counts.append((f["border"], "mask_at_border"))
    if f["other"]:
        said.append(f"its mask was not usable otherwise (a position outlier) in {_count(f['other'], 'frame')}")
        counts.append((f["other"], "no_usable_mask"))
    if not counts:
        return "no_usable_mask", f"{seen}, no usable mask of it in any frame"
    reason = max(counts, key=lambda c: c[0])[1]
    return reason, f"{seen}: " + ", ".join(said)


#: the tracks measured in no frame that the run note describes one by one (a one-frame Zeiss image of a test
#: chip had 20); rejected.csv has a row for each
MAX_NAMED_UNMEASURED = 8


def _edgeless_note(gone, results, located=None, area_tolerance: float = 0.25) -> str:
    """The run note on the tracks :func:`_edgeless_faint_tracks` left out: those measured in no frame, each with
    what its window's segmentation gave (:func:`_unmeasured`; ``located``: every track, to name the one a mask
    took in; ``area_tolerance``: the pipeline's), and the faint ones without an absorption edge."""
    nowhere = [loc for loc, r in zip(gone, results) if not np.isfinite(r.positions).any()]
    edgeless = [loc for loc, r in zip(gone, results) if np.isfinite(r.positions).any()]
    located = list(gone) if located is None else list(located)
    gone_ids = {getattr(loc, "pid", None) for loc in gone}
    said = []
    if nowhere:
        each = [
            f"at (y, x) {_where(np.array([loc.centres[0]]))}, {_unmeasured(loc, located, gone_ids, area_tolerance)[1]}"
            for loc in nowhere[:MAX_NAMED_UNMEASURED]
        ]
        more = len(nowhere) - MAX_NAMED_UNMEASURED
        said.append(
            f"{_count(len(nowhere), 'track')} left out, measured in no frame (no usable mask in any frame: nothing "
            "to report). Where each was (frame 0) and what its window gave: "
            + "; ".join(each)
            + (f"; and {more} more" if more > 0 else "")
            + " (rejected.csv names each with the failure of most of its frames)"
        )
    if edgeless:
        said.append(
            f"{_count(len(edgeless), 'faint track')} left out at (y, x) "
            f"{_where(np.array([loc.centres[0] for loc in edgeless]))} (frame 0): detected in few of the frames "
            f"examined and showing no absorption edge in its mean spectrum (a step within {EDGELESS_Z:g} standard "
            "errors of nil, where the particles' stand out): texture of the matrix, not a particle of the element "
            "scanned"
        )
    return "; ".join(said)


def _left_out_rows(gone, results, located, area_tolerance: float = 0.25) -> list:
    """``rejected.csv`` rows ``(y, x, reason, n_frames, radius)`` of the tracks :func:`_edgeless_faint_tracks`
    left out (frame 0's position; the frames they were detected in): ``no_absorption_edge`` for a faint one,
    for one measured in no frame the failure of its window's masks in most frames (:func:`_unmeasured`)."""
    gone_ids = {loc.pid for loc in gone}
    rows = []
    for loc, r in zip(gone, results):
        if np.isfinite(r.positions).any():
            reason = "no_absorption_edge"
        else:
            reason = _unmeasured(loc, located, gone_ids, area_tolerance)[0]
        y, x = np.asarray(loc.centres, float)[0]
        rows.append((y, x, reason, int(np.sum(np.asarray(loc.detected) & np.asarray(loc.examined))), float(loc.radius)))
    return rows


def _distinct_particles(located, vouched=None) -> list:
    """Indices of ``located`` to keep: of two tracks followed onto one particle (their positions within half the
    smaller radius of each other, median over the frames), the one detected in fewer frames goes. (A two-frame
    scan whose particle drifted 6 px more than the rest was not linked across the frames; both tracks were then
    followed onto it, and the particle was reported twice, vouched for in 2 of 2 frames each, unsaid.)

    The positions compared are those followed and, with ``vouched``, those reported: a track kept for a faint
    object beside a particle (a blob of matrix texture) whose outline's centre of mass lay 18 px away, while its
    edge estimate, which gives the positions reported, locked onto the particle's edges: it was reported as a
    second particle 1.5 px from the first (median), 12 of its frames vouched for."""
    keep = list(range(len(located)))
    pos = [[_positions(loc) for loc in located]]
    if vouched is not None:
        pos.append([v.positions for v in vouched])
    for i in range(len(located)):
        for j in range(i + 1, len(located)):
            if i not in keep or j not in keep:
                continue
            with np.errstate(invalid="ignore"):
                d = [np.hypot(*(q[i] - q[j]).T) for q in pos]
            d = [np.nanmedian(x) for x in d if np.isfinite(x).any()]
            if not d:
                continue
            if min(d) < 0.5 * min(located[i].radius, located[j].radius):
                a, b = located[i], located[j]
                keep.remove(j if int(np.sum(b.detected)) <= int(np.sum(a.detected)) else i)
    return keep


def _positions(loc: _Located) -> np.ndarray:
    """(n_frames, 2): the particle's followed positions where measured, its window centres elsewhere."""
    return np.where(loc.measured[:, None], loc.followed, loc.centres)


#: The share of a particle's classical outline in its mean window that a learned segmenter's
#: consensus shape (grown by 2 px) may miss before that particle is outlined classically
#: (``PipelineOptions.mask_guard``). Measured (learned path, seed 1): every particle of the
#: default scene misses 0.000; on the stress family only the 41-43 px particle with a lobe misses
#: 0.033-0.058 (the network, trained on our first generator's rounder particles, leaves the lobe
#: out: its centre of mass 4 px from the true one) and, on stress-fines, a 14-px particle 0.028;
#: every other particle <= 0.001.
MASK_MISS = 0.02


def _mask_miss(shape, od, centres, frames, radius, options) -> float:
    """Share of the particle's outline (:func:`_mean_outline`) that ``shape`` (grown by 2 px)
    misses; 0 where there is nothing to compare."""
    outline = _mean_outline(shape, od, centres, frames, radius, options)
    if outline is None:
        return 0.0
    return float((outline & ~dilate_cross(shape, 2)).sum() / outline.sum())


#: px. How far the centres of mass of the learned segmenter's outlines of a particle's mean window,
#: segmented in each of the square's 8 orientations (:func:`_orientation_spread`), may lie from their
#: mean before that particle is outlined classically (``PipelineOptions.mask_guard``). The network is
#: not orientation-invariant: on some particles it leaves out a strip on one side, which moves the
#: centre of mass, on which the absolute positions are anchored, by about 1 px. Measured (learned
#: path): stress-jitter seed 1 (256 px, 60 energies, 5 particles) as given, the 12-px particle vouched
#: 1.07 px off the truth: 0.72 px; seed 2 (as given, transposed, flipped up-down), a 20-px particle
#: vouched 0.21 / 1.15 / 1.12 px off: 0.90 / 0.97 / 0.84 px; every other particle 0.08-0.47 px.
#: Default scenes seeds 1-2 (256 px, 24 energies, 5 particles): 0.02-0.11 px. Stress family seed 1
#: (320 px, 60 energies): fines / drift 0.04-0.88 (the 0.88 px particle was outlined classically
#: before too), crowd 0.08-0.59, crowd2 0.10-2.87, jitter 0.16-0.98, magnification 0.15-1.21 px.
#: Unlike the classical outline's centre (which takes attached fines in or cuts a dim rim tighter
#: on one side), this spread leaves stress-fines / stress-drift's 22-px particle and stress-crowd's
#: 14-px one with their learned masks.
MASK_ORIENTATION_PX = 0.65


def _oriented(x, t, inverse: bool = False):
    """The stack ``x`` (n, h, w) in orientation ``t`` = (transpose, flip rows, flip columns) of the square, or
    (``inverse``) back from it."""
    transpose, flip_rows, flip_cols = t
    if transpose and not inverse:
        x = np.swapaxes(x, 1, 2)
    if flip_rows:
        x = x[:, ::-1]
    if flip_cols:
        x = x[:, :, ::-1]
    if transpose and inverse:
        x = np.swapaxes(x, 1, 2)
    return x


def _orientations(h: int, w: int) -> list:
    """The orientations of an ``h`` x ``w`` window (:func:`_oriented`): the square's 8, a rectangle's 4 flips."""
    return [(t, r, c) for t in ((False, True) if h == w else (False,)) for r in (False, True) for c in (False, True)]


def _mean_window(od, centres, frames, size):
    """The particle's mean window (``size`` px square, float32) over ``frames``, aligned on ``centres`` (its
    centre at ``(size - 1) / 2``; pixels outside the frame given the median), or None."""
    c = (size - 1) / 2
    k = np.flatnonzero(frames & np.isfinite(centres).all(axis=1))
    if k.size == 0:
        return None
    win = resample_windows(od, centres - c, (0, 0), (size, size), order=1, frames=k)
    seen = np.isfinite(win).any(axis=0)
    if not seen.any():
        return None
    mean = np.zeros((size, size), np.float32)
    mean[seen] = np.nanmean(win[:, seen], axis=0)
    mean[~seen] = np.median(mean[seen])
    return mean


def _orientation_spread(segmenter, od, centres, frames, radius, half) -> tuple[float, int]:
    """px: how far the centres of mass of ``segmenter``'s outlines of the particle's mean window lie from their
    mean (the largest), the window segmented in each orientation of the square and each outline turned back;
    and the number of orientations. 0 where there is nothing to compare.

    The mean window (:func:`_mean_window`, over ``frames``) is the segmentation window (``2 * half + 1`` px),
    levelled as every window is (:func:`xanestrack.segment._level_windows`), the outlines cut off from fines
    and neighbours as every mask (:func:`isolate_particle`).
    """
    from .segment import _level_windows

    size = 2 * half + 1
    ts = _orientations(size, size)
    mean = _mean_window(od, centres, frames, size)
    if mean is None:
        return 0.0, len(ts)
    roi = mean[None] if getattr(segmenter, "fits_background", False) else _level_windows(mean[None])
    prob = np.asarray(segmenter(np.ascontiguousarray(np.concatenate([_oriented(roi, t) for t in ts]))), np.float32)
    masks = np.concatenate([_oriented(prob[i : i + 1], t, inverse=True) for i, t in enumerate(ts)])
    masks = isolate_particle(masks, radius=radius, centres=np.full((len(ts), 2), float(half))) > 0.5
    com = np.array([ndimage.center_of_mass(m) for m in masks if m.any()])
    if len(com) < 2:
        return 0.0, len(ts)
    return float(np.hypot(*(com - com.mean(axis=0)).T).max()), len(ts)


def _mean_outline(shape, od, centres, frames, radius, options):
    """The classical outline of the particle seen in its mean window (bool, ``shape``'s window), or None.

    The outline is the classical segmenter's on the particle's mean window over ``frames``
    (aligned on ``centres``, the first pass's positions: averaging keeps its noise low),
    fines and neighbours cut off as in every mask (:func:`isolate_particle`) and touching
    particles at their necks (:func:`xanestrack.detect.cut_at_necks`, the piece that
    ``shape`` covers most), and only its components that ``shape`` touches. None where
    there is nothing to compare.
    """
    _, _, size = window_geometry(radius, options.follow)
    c = (size - 1) / 2
    mean = _mean_window(od, centres, frames, size) if shape.any() else None
    if mean is None:
        return None
    outline = segment_roi(mean, centre=(c, c), options=options.segment)[None]
    outline = isolate_particle(outline, radius=radius, centres=np.array([[c, c]]))[0] > 0.5
    # a small particle touching this one is cut off at its neck, as the detector cuts touching
    # particles; the lobes of one irregular particle (wide necks) stay (SSRL 6-2c: a 167-px
    # particle's outline took a 25-px neighbour in, which its learned masks rightly leave out)
    pieces = cut_at_necks(outline, 0, np.inf)
    if pieces:
        outline = pieces[int(np.argmax([np.count_nonzero(q & shape) for q in pieces]))]
    lab, _ = ndimage.label(outline)
    touched = np.unique(lab[shape & (lab > 0)])
    outline = np.isin(lab, touched[touched > 0])
    return outline if outline.any() else None


def _mask_trouble(seg, frames, options) -> int:
    """How many of ``frames`` (bool) have a mask of ``seg`` that runs out of its window (touches the window's
    edge where the window lies inside the frame: joined to something beside the particle) or whose area is an
    ``area_outlier`` (:func:`~xanestrack.register.mask_flags`)."""
    from .register import mask_flags

    soft = np.asarray(seg.masks, np.float32)
    hard = soft > 0.5
    beyond = _runs_out_of_window(hard, seg.clipped)
    flags = mask_flags(soft, outside=seg.outside, clipped=seg.clipped, area_tolerance=options.area_tolerance)
    bad = beyond | ((flags & FRAME_FLAGS["area_outlier"]) > 0)
    return int((bad & np.asarray(frames, bool)).sum())


def _mask_score(seg, centres, frames, options) -> tuple[int, int]:
    """How well the masks of ``seg`` serve a particle over ``frames`` (bool), to compare two segmenters': the
    frames whose mask's centre of mass lies within ``options.agreement_px`` of ``centres`` (the first pass's
    positions: the frames the centre of mass can vouch for), then the fewer frames of :func:`_mask_trouble`.
    The number of troubled frames alone chose learned masks missing part of a 38-px particle in every frame
    (their centre of mass 0.88 px off the edge estimate, median: 56 of 60 frames not vouched for, the note
    calling it perhaps no particle; reduced stress-all seed 2) over classical ones troubled in about 20 frames
    that vouched for 31. On the real SSRL pair neither agrees in any frame (the outlines move across the edge)
    and the troubled frames decide."""
    frames = np.asarray(frames, bool)
    with np.errstate(invalid="ignore"):
        agree = np.hypot(*(np.asarray(seg.com, float) - np.asarray(centres, float)).T) <= options.agreement_px
    return int((agree & frames).sum()), -_mask_trouble(seg, frames, options)


def _locate_particle(pid, track, od, segmenter, options, fallback=None, unlit=None) -> _Located:
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
    # the windows the centre of mass is measured in, centred on the edge estimate it must
    # vouch for unless offset (window_offset_px; off by default, see its docstring)
    offsets = window_offsets(pid, n, options.window_offset_px)

    def segmented(by):
        return segment_particle(
            od,
            centres,
            half,
            segmenter=by,
            radius=radius,
            separate=options.separate_neighbours,
            offsets=offsets,
            unlit=unlit,
        )

    seg = segmented(segmenter)
    # the shape from the frames the particle was detected in (key frames, where its
    # contrast sufficed), not from faint pre-edge frames whose masks come out partial
    best = measured & detected if (measured & detected).any() else measured
    shape = _consensus_shape(seg, centres, best, radius, options.follow) if best.any() else None
    missed = turned = None
    if fallback is not None and options.mask_guard and shape is not None:
        # a learned segmenter that leaves out part of what the particle's mean window shows
        # (a lobe: stress family, 41-px particle, its masks' centre of mass 4 px off the true
        # one), or whose outline of it moves with the window's orientation (a strip left out on
        # one side: stress-jitter, a 12-px particle vouched 1.07 px off the truth, 0.20 px with
        # the frames transposed), is not trusted with this particle: the classical segmenter
        # outlines it
        miss = _mask_miss(shape, od, centres, best, radius, options)
        spread, n_turns = (
            (0.0, 0) if miss > MASK_MISS else _orientation_spread(segmenter, od, centres, best, radius, half)
        )
        if miss > MASK_MISS or spread > MASK_ORIENTATION_PX:
            classical = segmented(fallback)
            # unless the classical masks fail where the learned ones hold (:func:`_mask_score`): a particle
            # touching larger ones that the mean window's outline takes in (SSRL 6-2c: a 45-px particle joined
            # to two the frame's border cuts, learned masks of 7072 / 7005 px, classical 4657 / 10895 px,
            # running out of their window into the neighbours: the track was left out, measured in no frame)
            if _mask_score(classical, centres, best, options) >= _mask_score(seg, centres, best, options):
                missed = miss if miss > MASK_MISS else None
                turned = (spread, n_turns) if missed is None else None
                seg = classical
                shape = _consensus_shape(seg, centres, best, radius, options.follow)
    return _Located(
        int(pid),
        track,
        detected,
        examined,
        radius,
        half,
        ref_frame,
        followed,
        measured,
        centres,
        seg,
        shape,
        mask_missed=missed,
        mask_turned=turned,
    )


def _unlit_field(stack, frame_shape):
    """``stack.metadata["unlit"]``: the pixels outside the beam's lit field (bool (rows, cols)) the reader found
    (:func:`xanestrack.io.flatfield.optical_density`), or None. Taken as outside the frame by every particle's
    windows: a particle the field's edge cuts is flagged ``out_of_view`` there, as at the frame's border. It was
    measured cut and vouched for: a particle of r 9.5 px reaching 1.3-2.6 px beyond a round field's edge in 28 of
    40 frames, 0.15 px RMS from the truth (0.28 px at worst), 0.03 px with the field lit.

    Raises
    ------
    ValueError
        If it is not of the frames' shape (the frames cropped or binned after reading).
    """
    unlit = stack.metadata.get("unlit")
    if unlit is None:
        return None
    unlit = np.asarray(unlit)
    if unlit.shape != tuple(frame_shape) or unlit.dtype != bool:
        raise ValueError(
            f"stack.metadata['unlit'] (the pixels outside the beam's lit field) must be a bool mask of the frames' "
            f"shape {tuple(frame_shape)}, got {unlit.dtype} {unlit.shape}: crop or bin it as the frames were, or "
            "leave it out (a particle the field's edge cuts is then measured cut, not flagged out of view)"
        )
    return unlit if unlit.any() else None


def window_offsets(pid: int, n: int, amplitude: float) -> np.ndarray:
    """``(n, 2)`` offsets of a particle's segmentation windows: uniform in +-``amplitude`` px.

    Drawn from the particle's id, so a run is reproducible; zero for ``amplitude`` 0.
    """
    if amplitude <= 0:
        return np.zeros((n, 2))
    return np.random.default_rng([int(pid), 0x5E6]).uniform(-amplitude, amplitude, (n, 2))


#: px. A particle's footprint on the matrix: its shape grown by the blur and the phase-contrast halo around it
FOOTPRINT_GROW = 6

#: px. The least own motion (:func:`_own_motion_px`, relative to the matrix) for which a particle
#: is separated from the matrix behind it (where it stands out of its noise, see
#: ``OWN_MOTION_SNR``). The matrix pulls the estimate of a particle that moves on its own by a
#: share of that motion in the faint pre-edge frames (15-70 % on ``stress-drift``):
#: ``stress-jitter`` seed 2, a particle drifting about 1 px was 0.55 px off through the pre-edge
#: when only particles moving 1.5 px or more were separated (with the matrix, ghosts and strands
#: taken out of that scene, noise-free: every particle within 0.01-0.09 px). Lower, 0.4 px: a
#: reduced stress-magnification particle that moves only with the matrix came out non-rigid by
#: 0.61 px (a still particle's own motion measured through noisy frames reaches 0.4 px).
MIN_OWN_MOTION = 0.75

#: A particle moving on its own by less than ``SEPARATE_PX`` is separated from the matrix only
#: where its own motion is at least this many times the noise of its positions in its noisiest
#: frames (:func:`_position_noise_px`): the layers are told apart by that motion. Separated from
#: 0.75 px without it, stress-counts seed 1 (600 counts) lost most: a 16-px particle moving
#: 0.83 px, its positions 0.31 px noisy before the edge, 0.27 -> 0.41 px RMS (the row 0.278 ->
#: 0.367 learned, 0.237 -> 0.264 classical); with it 0.260 and 0.211. Stress family (full size,
#: seeds 1-2, 28 runs), against separating from 1.5 px only: runs with the worst particle within
#: 0.25 px 15 -> 19, with the median within 0.12 px 18 -> 19, both 11 -> 16; no run worse by
#: more than 0.004 px. (Without the test, 0.75 px: 18, 19 and 15, stress-all seed 1 better
#: (0.476 -> 0.389 learned), stress-counts seed 1 worse.)
OWN_MOTION_SNR = 4.0

#: px. A particle moving on its own by less than ``MIN_OWN_MOTION / 2`` is still followed by its
#: shape (and its matrix told apart by its edge, ``unmix_matrix``) where that motion stands
#: ``OWN_MOTION_SNR`` times out of its noise and reaches this (:func:`_moves_on_its_own`). The
#: still particles of stress-magnification (no own motion drawn, seeds 1-2) measure 0.02-0.26
#: px, 0.45-2.84 times their noise. Measured (bench_stress, both paths, against
#: ``MIN_OWN_MOTION / 2`` alone): seeds 1-2 medians better in 5 runs (stress-fines seed 1
#: learned 0.108 -> 0.078 px, its particle 7 0.108 -> 0.062; stress-jitter seed 2 particle 2
#: 0.151 -> 0.102), worse in 1 (stress-crowd seed 2 learned 0.148 -> 0.154: a 13-px particle
#: 0.128 -> 0.163); seeds 3-4 (held out) better in 2, worse in none; no worst particle changed
#: by more than 0.005 px.
SHAPE_MIN_PX = 0.2

#: px. Own motion from which a particle is separated from the matrix whatever its noise (the
#: noise test alone lost stress-all seed 2's 9-px particle drifting 3.5 px, 1.5 px noisy before
#: the edge: the row's worst 0.44 -> 0.80 px)
SEPARATE_PX = 1.5

#: The matrix's texture against the particles' contrast (:func:`xanestrack.background.matrix_texture_ratio`)
#: below which no particle is separated from the matrix: too faint to pull them, the separation costs
#: time and adds its own noise. Measured (learned path, worst / median RMS px with / without the
#: separation): default scenes seeds 1-8 ratio 0.0011-0.0019 (seeds 1-2: 0.033 / 0.030, 0.031 / 0.029
#: px worst; 16.7 / 9.4 s, 13.4 / 8.0 s in-process); stress-drift seed 1 drawn with its matrix thinned,
#: ratio 0.0041: 0.151 / 0.135, 0.0044: 0.123 / 0.134, 0.0057: 0.124 / 0.274 px; the stress family as
#: drawn 0.0085-0.037 (seeds 1-2 every case, 9 runs of seeds 7-11), hard 0.045-0.052: never skipped.
MATRIX_MIN_TEXTURE = 0.003

#: px. Own motion below which a particle moves with the matrix: the common similarity is the
#: matrix's motion where two particles do (:func:`_matrix_shifts`)
WITH_MATRIX_PX = 0.75

#: particles vouched for in most frames below which the common similarity is fitted on every
#: measured position (robustly) instead of the vouched ones: translation and scale take 3 of
#: them, and one more moving on its own leaves no redundancy (SSRL 6-2c, classical path: 4
#: vouched for, one moving 6 px on its own: scale 0.99505, beyond the zone plate's 0.36 %
#: over those 30 eV; over the 6 measured, 0.99644)
MIN_VOUCHED_FOR_FIT = 5

#: px. The range of the particles' edge width across the scan (:func:`_resolution_change`) from
#: which the run notes that the resolution changed (a focus drifting with the energy) and, with
#: ``match_resolution``, brings every frame to the coarsest. Measured: see the README (**When
#: something is wrong**)
RESOLUTION_CHANGE_PX = 0.3
#: particles measured, and frames each, from which the edge widths are compared
RESOLUTION_MIN_PARTICLES = 3
RESOLUTION_MIN_FRAMES = 16
#: frames. A per-frame profile of the edge widths (:func:`_width_profile`) is a running median
#: over this many frames, then a quadratic Savitzky-Golay fit over as many (which keeps a trend
#: to the scan's ends, where the coarsest frame often is): a focus drifts smoothly with the
#: energy, while one particle's width in one frame scatters by +-0.3 px
RESOLUTION_SMOOTH_FRAMES = 15
#: rounds of :func:`_resolution_blur` (the frames blurred so far measured again)
RESOLUTION_ROUNDS = 3


@dataclass
class _Resolution:
    """The particles' edge widths across a scan (:func:`_resolution_change`)."""

    change: float  # px: the widest quarter of the frames less the sharpest
    n: int  # particles measured
    sharpest: int  # quarter (0-3)
    coarsest: int  # quarter
    measured: list  # (aligned windows, mask, the frames used) per particle
    widths: np.ndarray  # (particles, frames) px, NaN where not measured
    across_edge: np.ndarray | None = None  # (frames,) bool: left out of the widths' trend (:func:`_off_edge`)
    step: tuple | None = None  # (last frame before, first after, px): the resolution stepped there (:func:`_edge_step`)


#: eV from the particles' edge (their median E0): frames where a particle's rim and core may absorb differently
#: (a rim of other chemistry crosses its edge elsewhere, up to the whiteline), left out of the resolution's trend
#: (:func:`_resolution_change`) and interpolated across. A real rim 3 px thick, 1.3 eV above its core, on five of
#: nine particles widened every outline there by 0.4 px: taken for a focus change, the windows were blurred to
#: match, and the four uniform particles came out with rims 0.34-0.47 eV low (15-21 sigma), the real rims halved
RESOLUTION_EDGE_EV = (-10.0, 40.0)


def _off_edge(rows, across_edge):
    """``rows`` (particles, frames) with the frames across the edge set to NaN (unchanged without them)."""
    if across_edge is None:
        return rows
    rows = np.array(rows, float)
    rows[:, across_edge] = np.nan
    return rows


#: A change of the resolution in one step inside the edge's frames (the optics refocused in one move) is placed
#: where the particles' edge width (median over them, each less its median) jumps between two frames by
#: ``RESOLUTION_CHANGE_PX`` or more and by this many times the frame-to-frame scatter beside the edge's frames
#: (:func:`_edge_step`). Measured on the default scene, NiO / LiNiO2 particles, 4 of them, 60 energies, 200 px:
#: a blur stepping from 0 to 2 px sd at 8340 eV jumped 1.34 px between 8339.5 and 8340.7 eV against a
#: scatter of 0.012 px; a blur growing over the frames to 2.5 px sd jumped 0.04 px at most there, one set
#: mid-scan and drifting both ways 0.08 px (scatter 0.121), a step at 8450 eV 0.03 px, the default scene as
#: drawn (seed 1, default chemistry) 0.06 px
RESOLUTION_STEP_Z = 5.0
#: frames on either side of a step over which its size is taken (median of each side, :func:`_trend`)
RESOLUTION_STEP_FRAMES = 3


def _edge_step(rows, across_edge) -> tuple | None:
    """Where the particles' edge width steps inside the frames across the edge, or None where it does not.

    The median over the particles of each one's width less its median, in the frames from the last
    before the edge's frames to the first after them (those measured for ``RESOLUTION_MIN_PARTICLES``
    or more); its largest change between two of them that are measured in turn, where it is
    ``RESOLUTION_CHANGE_PX`` or more, ``RESOLUTION_STEP_Z`` times the frame-to-frame scatter (MAD)
    of the frames beside the edge's or more, and the widths after the edge's frames differ from
    those before in the same sense by half of it or more (a rim of other chemistry widens the
    outlines across the edge and narrows them again). Returns (the frame before it, the frame after
    it, the change in px): the two frames need not be neighbours, where those between are not
    measured.
    """
    if across_edge is None or not across_edge.any():
        return None
    rows = np.asarray(rows, float)
    seen = np.isfinite(rows).sum(axis=0) >= RESOLUTION_MIN_PARTICLES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames measured for no particle
        prof = np.nanmedian(rows - np.nanmedian(_off_edge(rows, across_edge), axis=1, keepdims=True), axis=0)
    inside = np.flatnonzero(across_edge)
    frames = np.arange(len(seen))
    below = np.flatnonzero(seen & ~across_edge & (frames < inside[0]))
    above = np.flatnonzero(seen & ~across_edge & (frames > inside[-1]))
    if below.size < 2 or above.size < 2:
        return None
    run = np.r_[below[-1], inside[seen[inside]], above[0]]
    jumps = np.diff(prof[run])
    k = int(np.argmax(np.abs(jumps)))
    n = 2 * RESOLUTION_STEP_FRAMES + 2  # frames beside the edge's, each side, for the scatter
    side = np.r_[np.diff(prof[below[-n:]]), np.diff(prof[above[:n]])]
    scatter = 1.4826 * np.median(np.abs(side - np.median(side)))
    sides = np.median(prof[above[:RESOLUTION_STEP_FRAMES]]) - np.median(prof[below[-RESOLUTION_STEP_FRAMES:]])
    jump = float(jumps[k])
    if abs(jump) < max(RESOLUTION_CHANGE_PX, RESOLUTION_STEP_Z * scatter) or sides * jump < 0.5 * jump**2:
        return None
    return int(run[k]), int(run[k + 1]), jump


def _trend(rows, res: _Resolution) -> np.ndarray | None:
    """The profile of ``rows`` across the frames (:func:`_width_profile`), the edge's frames interpolated across.

    Where the resolution stepped between two neighbouring frames there (``res.step``), the step is
    taken out (its size: each particle's median over ``RESOLUTION_STEP_FRAMES`` frames after it
    less that over as many before, median over the particles), the profile interpolated across and
    the step put back: the frames before it follow the trend before the edge, those after it the
    trend after.
    """
    step = res.step
    if step is None or step[1] - step[0] != 1:
        return _width_profile(_off_edge(rows, res.across_edge))
    rows = np.asarray(rows, float)
    k, n = step[1], RESOLUTION_STEP_FRAMES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a particle not measured there
        size = np.nanmedian(np.nanmedian(rows[:, k : k + n], axis=1) - np.nanmedian(rows[:, max(k - n, 0) : k], axis=1))
    after = np.where(np.arange(rows.shape[1]) >= k, size if np.isfinite(size) else 0.0, 0.0)
    prof = _width_profile(_off_edge(rows - after, res.across_edge))
    return None if prof is None else prof + after


def _edge_width_rows(measured, n_frames: int, blur=None) -> np.ndarray:
    """Each measured particle's edge width per frame (px; NaN where not measured), its windows blurred by ``blur``."""
    rows = np.full((len(measured), n_frames), np.nan)
    for i, (aligned, mask, used) in enumerate(measured):
        windows = aligned[used]
        rows[i, used] = edge_widths(windows if blur is None else _blur_frames(windows, blur[used]), mask)
    return rows


def _width_profile(rows) -> np.ndarray | None:
    """Per frame, the median over the particles of their value less its median over the frames, smoothed.

    Interpolated over frames where fewer than ``RESOLUTION_MIN_PARTICLES`` are measured, then
    smoothed across the energies (``RESOLUTION_SMOOTH_FRAMES``). None where fewer than
    ``RESOLUTION_MIN_PARTICLES`` particles have ``RESOLUTION_MIN_FRAMES`` values or fewer than
    ``RESOLUTION_MIN_FRAMES`` frames are measured for enough of them.
    """
    rows = rows[np.isfinite(rows).sum(axis=1) >= RESOLUTION_MIN_FRAMES]
    if len(rows) < RESOLUTION_MIN_PARTICLES:
        return None
    seen = np.isfinite(rows).sum(axis=0) >= RESOLUTION_MIN_PARTICLES
    if seen.sum() < max(RESOLUTION_MIN_FRAMES, RESOLUTION_SMOOTH_FRAMES):
        return None
    frames = np.arange(rows.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames measured for no particle
        prof = np.nanmedian(rows - np.nanmedian(rows, axis=1, keepdims=True), axis=0)
    prof = np.interp(frames, frames[seen], prof[seen])
    prof = ndimage.median_filter(prof, RESOLUTION_SMOOTH_FRAMES, mode="nearest")
    return local_quadratic(prof, RESOLUTION_SMOOTH_FRAMES)  # a trend kept to the ends


def _measured_frames(p):
    """The frames of a particle's XANES (``xanes_frames``, None where not set) whose position is vouched for: those
    its shape, size and edge width are measured on. A faint particle's pre-edge frames not vouched for may stand in
    for its pre-edge (:func:`xanestrack.xanes._pre_edge_from_unvouched`), a pixel or two off: its outline there is
    blurred by that, and the scan's resolution change measured with them moved every particle's E50 (stress-drift
    seed 1: up to 0.036 eV, particles whose own frames had not changed)."""
    from .result import UNVOUCHED_FLAGS

    frames = getattr(p, "xanes_frames", None)
    flags = getattr(p, "frame_flags", None)
    if frames is None or flags is None:
        return frames
    return np.asarray(frames, bool) & ((np.asarray(flags).astype(np.uint16) & UNVOUCHED_FLAGS) == 0)


def _resolution_change(particles, n_frames: int, energies=None) -> _Resolution | None:
    """How much the particles' edges blur or sharpen across the scan, or None where too few are measured.

    Each particle's edge width (:func:`register.edge_widths <xanestrack.register.edge_widths>`)
    in every frame its XANES uses (``RESOLUTION_MIN_FRAMES`` or more); per particle, the median
    of each quarter of those frames less their mean; per quarter, the median over the
    particles; the change is the largest less the smallest. A focus set at the edge and
    drifting both ways blurs both ends of the scan: four quarters see it where the first and
    last alone would not. A quarter's median over some 36 frames is what keeps this steady
    where the focus holds (a profile frame by frame, smoothed over 15, ranged 0.05-0.54 px on
    the stress family).
    """
    measured = []
    for p in particles:
        if p.aligned is None or p.mask is None or not p.mask.any():
            continue
        frames = _measured_frames(p)
        used = np.flatnonzero(frames) if frames is not None else np.arange(len(p.aligned))
        if used.size >= RESOLUTION_MIN_FRAMES:
            measured.append((p.aligned, p.mask, used))  # the frames used are taken one particle at a time
    if len(measured) < RESOLUTION_MIN_PARTICLES:
        return None
    rows = _edge_width_rows(measured, n_frames)
    across = None
    e0s = [p.e0_ev for p in particles if np.isfinite(getattr(p, "e0_ev", np.nan))]
    if energies is not None and e0s:
        e, e0 = np.asarray(energies, float), float(np.median(e0s))
        across = (e >= e0 + RESOLUTION_EDGE_EV[0]) & (e <= e0 + RESOLUTION_EDGE_EV[1])
        # only where enough frames are left (a scan of the edge alone is judged on all its frames)
        if np.median([np.count_nonzero(~across[used]) for _, _, used in measured]) < RESOLUTION_MIN_FRAMES:
            across = None
    trend = _off_edge(rows, across)
    quarters = []
    for row, (_, _, used) in zip(trend, measured):
        kept = used if across is None else used[~across[used]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a quarter with no width measured
            q = np.array([np.nanmedian(row[part]) for part in np.array_split(kept, 4)])
        if np.isfinite(q).all():
            quarters.append(q - q.mean())
    if len(quarters) < RESOLUTION_MIN_PARTICLES:
        return None
    per_quarter = np.median(quarters, axis=0)
    lo, hi = int(np.argmin(per_quarter)), int(np.argmax(per_quarter))
    change = float(per_quarter[hi] - per_quarter[lo])
    return _Resolution(change, len(quarters), lo, hi, measured, rows, across, _edge_step(rows, across))


#: px. A frame whose particles' edges are this much wider than in the frames around it (median over the
#: particles of each one's width less its running median over BLURRED_FRAME_WINDOW frames) is blurred on
#: its own (a defocused shot) and left out of every particle's XANES. Measured: the default scene with every
#: 10th frame blurred by a Gaussian of sd 1.5 / 3 px, 0.88-0.91 / 2.14-2.17 px there (every particle's mean
#: E50 then -0.94 to +0.28 eV off the clean scan's, unflagged); elsewhere, and on the default, hard and
#: stress scenes as drawn (9 runs), 0.69 px at most (`stress-counts`, 600 counts, its faint first frames),
#: 0.05 px at most at full counts
BLURRED_FRAME_PX = 0.8
BLURRED_FRAME_WINDOW = 9


def _blurred_frames(res: _Resolution) -> np.ndarray:
    """Frames blurred on their own: the particles' edges wider there than in the frames around them."""
    rows = res.widths[np.isfinite(res.widths).sum(axis=1) >= RESOLUTION_MIN_FRAMES]
    if len(rows) < RESOLUTION_MIN_PARTICLES:
        return np.zeros(0, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames measured for no particle
        filled = np.where(np.isfinite(rows), rows, np.nanmedian(rows, axis=1, keepdims=True))
        base = ndimage.median_filter(filled, size=(1, BLURRED_FRAME_WINDOW), mode="mirror")
        excess = np.nanmedian(rows - base, axis=0)
    enough = np.isfinite(rows).sum(axis=0) >= RESOLUTION_MIN_PARTICLES
    return np.flatnonzero(enough & (excess >= BLURRED_FRAME_PX))


def _blurred_frames_note(res: _Resolution, frames, energies) -> str:
    """The run note of frames blurred on their own (:func:`_blurred_frames`), left out of the XANES."""
    return (
        f"{_count(len(frames), 'frame')} blurred on {'its' if len(frames) == 1 else 'their'} own (a defocused shot?): "
        f"the particles' edges {BLURRED_FRAME_PX:g} px or more wider there than in the frames around "
        f"(median over {len(res.measured)} particles): left out of every particle's XANES, their positions kept: "
        f"{_frame_list(list(frames), energies)}. Left in, every 10th frame of the default scene blurred by 1.5 / 3 px "
        "moved the mean edge energies by up to 0.3 / 0.9 eV; left out, by up to 0.06 / 0.36 eV (leaving out every 10th "
        "frame across the edge moves them by up to 0.3 eV on the unblurred scene: compare such scans among themselves)"
    )


def _resolution_blur(res: _Resolution) -> np.ndarray | None:
    """Per frame, the Gaussian sd (px) that brings it to the scan's coarsest resolution.

    An outline of width ``w0`` seen through a Gaussian blur of sd ``s`` has the width
    ``sqrt(w0**2 + s**2)``: each particle's squared edge width less its median over the
    frames is the frame's squared blur less the particle's typical one, whatever the
    particle's own outline. Their profile across the frames (:func:`_width_profile`) is each
    frame's excess ``D``; the frame is blurred by ``sqrt(D[c] - D)``, ``c`` the frame where it
    is largest. The fitted widths of a curved outline seen within ``EDGE_REACH_PX`` grow more
    slowly than the blur (the default scene blurred by 0 -> 2.5 px: widths 0.9 -> 2.4 px, not
    2.7), so the frames so blurred are measured again and their remaining difference to frame
    ``c`` added (signed, none below zero: the widths' noise does not pile up),
    ``RESOLUTION_ROUNDS`` rounds in all.
    """
    n_frames = res.widths.shape[1]
    blur2 = np.zeros(n_frames)
    rows = res.widths
    coarsest = None
    for _ in range(RESOLUTION_ROUNDS):
        excess = _trend(rows**2, res)
        if excess is None:
            return None
        if coarsest is None:
            coarsest = int(np.argmax(excess))
        blur2 = np.maximum(blur2 + excess[coarsest] - excess, 0.0)
        rows = _edge_width_rows(res.measured, n_frames, np.sqrt(blur2))
    return np.sqrt(blur2)


def _blur_frames(windows, sd) -> np.ndarray:
    """Each window blurred by a Gaussian of its own sd (px; NaN pixels ignored and kept NaN)."""
    out = np.array(windows, dtype=np.float64)
    for k, s_ in enumerate(sd):
        if s_ < 0.05:
            continue
        finite = np.isfinite(out[k])
        num = ndimage.gaussian_filter(np.where(finite, out[k], 0.0), s_, mode="nearest")
        den = ndimage.gaussian_filter(finite.astype(float), s_, mode="nearest")
        out[k] = np.where(finite, num / np.maximum(den, 1e-12), np.nan)
    return out.astype(np.asarray(windows).dtype, copy=False)


def _resolution_note(res: _Resolution, energies, blur: np.ndarray | None) -> str:
    """The run note of a resolution that changes across the scan (and of its correction, if made)."""
    names = ("first", "second", "third", "last")

    def span(k):
        part = np.array_split(np.arange(len(energies)), 4)[k]
        return f"the {names[k]} quarter of the frames ({energies[part[0]]:.0f}-{energies[part[-1]]:.0f} eV)"

    said = (
        f"the resolution changes across the scan: the particles' edges are {res.change:.1f} px wider in "
        f"{span(res.coarsest)} than in {span(res.sharpest)} (the sd of an erf fitted across each outline, median over "
        f"{res.n} particles; 0.2 px at most where the focus holds): "
    )
    step, placed = res.step, res.step is not None and res.step[1] - res.step[0] == 1
    if step is None:
        said += "a focus that drifts with the energy. "
    else:
        a, b, size = energies[step[0]], energies[step[1]], abs(step[2])
        sense = "wider" if step[2] > 0 else "sharper"
        said += (
            f"it changed inside the edge's frames, in one step between {a:.1f} and {b:.1f} eV (the edges {size:.1f} px "
            f"{sense} after it): the optics refocused in one move, not a drift. "
            if placed
            else f"it changed by {size:.1f} px inside the edge's frames, between {a:.1f} and {b:.1f} eV, where the "
            "outlines could not be measured frame by frame (the edges "
            f"{sense} after): the optics refocused there, or a focus drifted fast. "
        )
    if blur is None:
        return said + (
            "Mean edge energies are biased by it, most for small particles, and are not corrected (measured on the "
            "default scene: 0.07 / 0.37 eV at most for blurs growing to 1.0 / 2.5 px)"
        )
    matched = (
        f"Each frame's particle windows were blurred to the scan's coarsest resolution before the XANES analysis (a "
        f"Gaussian of up to {blur.max():.1f} px sd, from the edge widths; the aligned stack written stays as measured)"
    )
    coarser = " Maps are that much coarser; --no-match-resolution leaves the frames as measured"
    if step is not None and not placed:
        return (
            f"{said}{matched}: across the edge's frames, from {a:.1f} to {b:.1f} eV, the blur is interpolated between "
            "the two sides', so there the share of the surroundings mixed into a pixel still changes with the energy, "
            "and the edge energies (E50) and fractions may be biased by it (on the default scene's NiO and LiNiO2 "
            "particles, a blur stepping from 0 to 2 px at 8340 eV, interpolated over, read the LiNiO2 particles "
            f"0.26-0.54 eV high, 5-6 sigma).{coarser}"
        )
    by_side = ", the frames before and after the step each to their own side's trend" if placed else ""
    return f"{said}{matched}{by_side}: the share of the surroundings mixed into a pixel no longer changes with the energy.{coarser}"


#: The matrix told apart by the edge (:func:`xanestrack.background.unmix_layers`) is subtracted
#: only where it stands this many times out of its own noise (``MatrixBackground.snr``): at 600
#: counts (``stress-counts`` seed 2) every particle's estimate stood 2.0-3.1 times out of it and,
#: subtracted, made the worst particle 0.309 -> 0.502 px (a 10-px one 0.244 -> 0.501); on
#: ``stress-jitter`` seed 1 most stood 11.7-24 times out of it
UNMIX_MIN_SNR = 5.0

#: ... and kept only where it moved the particle's positions beyond their noise: the change, a
#: running mean over ``UNMIX_CHANGE_FRAMES`` frames, at least this many times that mean's noise
#: (:func:`_changed_beyond_noise`). Where it does not, the matrix did not bias the particle
#: and the subtraction only adds its own noise (``stress-magnification`` seed 1, every particle
#: unmixed: median 0.039 -> 0.053 px; their changes stood 1.5-3.8 times out of their noise)
UNMIX_CHANGE_Z = 4.0
UNMIX_CHANGE_FRAMES = 15

#: second-pass iterations: separate the layers at the positions, follow, repeat
REFINE_PASSES = 2

#: px. RMS change of a particle's positions below which the separation is not repeated
SETTLED_PX = 0.05

#: A particle's separation from the matrix is undone where it moved the particle's positions (RMS,
#: their common offset removed) by more than this many times the noise of its first-pass positions
#: (:func:`_position_noise_px`). The pull it removes grows as the particle's contrast over the matrix
#: texture falls, as that noise does: over 245 separations (bench_stress seeds 1-2 and 7-8, both
#: paths) those that helped moved the positions by at most 6.2 times it; the two that moved them
#: more (12.9 and 9.1 times) were touching particles whose separation went wrong: stress-all seed 8
#: (learned), a 32-px particle moved 2.2 px RMS, its positions 0.25 -> 2.3 px off, 16 frames off by
#: more than 1 px vouched for; stress-crowd seed 2 (learned), a 23-px one 0.34 -> 0.50 px
SEPARATION_MAX_CHANGE_Z = 8.0

#: the fields of :class:`_Located` that :func:`_refine_one` may change (restored where a refinement is undone)
_REFINED_FIELDS = ("followed", "measured", "matrix", "unmixed_motion", "unmixed_still")


def _refined_state(loc) -> dict:
    """A copy of what :func:`_refine_one` may change in ``loc`` (:func:`_restore` puts it back)."""
    return {f: copy.copy(getattr(loc, f)) for f in _REFINED_FIELDS}


def _restore(loc, state: dict) -> None:
    for f, value in state.items():
        setattr(loc, f, value)


def _matrix_shifts(located, od, energies, footprints, options):
    """``(n_frames, n_particles, 2)``: the matrix's displacement from frame 0 at each particle.

    The common similarity fitted over the first pass's positions
    (:func:`xanestrack.motion.common_similarity`), where at least two particles move with
    it (their own motion below ``WITH_MATRIX_PX``): the matrix moves with them. Where
    none does (every particle drifting on its own, as in the default scene model), its
    translation is not the matrix's (1.2 px RMS off on default seed 1): the translation is
    then measured on the matrix's own texture, particles masked out
    (:func:`xanestrack.background.matrix_motion`, 0.15 px RMS there), and the
    similarity's magnification (shared by the particles and the matrix) kept.
    """
    P = np.stack([np.where(loc.measured[:, None], loc.followed, np.nan) for loc in located], axis=1)
    ny, nx = od.shape[1:]
    c = np.array([(ny - 1) / 2, (nx - 1) / 2])
    params, rigid = common_similarity(
        P,
        centre=c,
        rotation=options.rotation,
        scale_axis=energies if options.scale_model == "energy" else None,
        # the weights of each frame's own similarity: with them found again for the fixed scale (as the
        # reported motion does), stress-all seed 2 classical 0.422 -> 0.626 px worst, stress-crowd seed 1
        # learned 0.304 -> 0.328, the reduced jitter scene of the shape test 0.261 -> 0.300 (drift seed 1
        # learned 0.270 -> 0.249)
        refit_weights=False,
    )
    shifts = rigid - rigid[:1]
    # where particles move with the similarity, it is the matrix's motion; where none does
    # (every particle drifting on its own), the matrix is measured on its own texture
    with_matrix = sum(
        _own_motion_px((loc.centres - shifts[:, j])[loc.measured]) < WITH_MATRIX_PX
        for j, loc in enumerate(located)
        if loc.measured.sum() >= 3 and np.isfinite(shifts[:, j]).all()
    )
    if with_matrix >= 2:
        return shifts
    t = params[["common_dy", "common_dx"]].to_numpy(float)
    scale = params["scale"].to_numpy(float)
    # the frames are prepared in parallel whatever ``options.threads`` (which bounds the particles
    # held at once): a frame's filters hold only a few crop-sized arrays (460^2, 2 cores: 1.53 -> 0.82 s)
    t, _ = matrix_motion(od, footprints, t - t[0], threads=max(_threads(options), min(4, os.cpu_count() or 1)))
    x0 = np.array([np.nanmedian(loc.centres - t, axis=0) for loc in located]) - c  # about the optical axis
    return t[:, None, :] + (scale - scale[0])[:, None, None] * x0[None]


def _own_motion_px(own, *, smooth: int = 15) -> float:
    """Amplitude of a particle's own motion (n, 2), noise smoothed away: the 90th percentile
    distance from its median position after a running median over ``smooth`` frames."""
    k = min(smooth, len(own))
    k -= 1 - k % 2  # odd: an even window is not centred (of two frames it kept only the larger)
    sm = ndimage.median_filter(own, size=(k, 1), mode="nearest")
    return float(np.percentile(np.hypot(*(sm - np.median(sm, axis=0)).T), 90))


def _position_noise_px(own, *, blocks: int = 4) -> float:
    """px per axis: the noise of a particle's positions (n, 2) in its noisiest stretch.

    The robust standard deviation of the second differences ``x_k - (x_{k-1} + x_{k+1}) / 2``
    (of white noise: 1.5 times its variance; a smooth motion hardly adds to them) over each of
    ``blocks`` consecutive stretches of the frames, the largest: in an energy scan, the faint
    frames before the edge. NaN with fewer than 5 second differences.
    """
    own = np.asarray(own, float)
    d = own[1:-1] - 0.5 * (own[:-2] + own[2:])
    d = d[np.isfinite(d).all(axis=1)]
    if len(d) < 5:
        return float("nan")
    parts = np.array_split(d, max(1, min(blocks, len(d) // 5)))
    return float(max(np.hypot(robust_sigma(q[:, 0]), robust_sigma(q[:, 1])) / np.sqrt(3) for q in parts))


def _moves_on_its_own(own, motion: float) -> bool:
    """Whether a particle with own motion ``own`` (n, 2; its amplitude ``motion``, px) that is
    not separable (:func:`_separable`) is followed again by its shape: from ``MIN_OWN_MOTION /
    2``, or from ``SHAPE_MIN_PX`` where the motion stands ``OWN_MOTION_SNR`` times out of the
    positions' noise. A particle that moves with the matrix keeps the disc: its surroundings
    move with it and are signal."""
    if motion >= 0.5 * MIN_OWN_MOTION:
        return True
    return motion >= SHAPE_MIN_PX and motion >= OWN_MOTION_SNR * _position_noise_px(own)


def _separable(own, motion: float) -> bool:
    """Whether a particle with own motion ``own`` (n, 2; its amplitude ``motion``, px) is
    separated from the matrix: the layers are told apart by that motion, so below
    ``SEPARATE_PX`` it must stand out of the positions' noise (``OWN_MOTION_SNR``), else the
    separation's own errors cost more than the pull it removes."""
    if motion >= SEPARATE_PX:
        return True
    return motion >= MIN_OWN_MOTION and motion >= OWN_MOTION_SNR * _position_noise_px(own)


def _refine_on_matrix(located, od, energies, options) -> tuple[list[int], list[int], list[int]]:
    """Second pass for the particles that move on their own: follow each that
    :func:`_separable` allows again with the matrix behind it subtracted
    (:mod:`xanestrack.background`) and apodised by its own shape; the others that move on
    their own (:func:`_moves_on_its_own`), apodised by their own shape
    (``shape_apodisation``), and then separated too where the own motion measured on
    those positions, less pulled by the matrix, is separable, or else, with ``unmix_matrix``,
    followed with the matrix told apart by their absorption edge subtracted (:func:`_unmix_one`).
    Updates ``located``; returns the ids of the particles separated, of those unmixed and of
    those followed by their shape alone."""
    footprints = []
    for loc in located:
        if loc.shape is not None:
            c = (loc.shape.shape[0] - 1) / 2
            grown = ndimage.binary_dilation(loc.shape, iterations=FOOTPRINT_GROW)
            footprints.append(Footprint(grown, (c, c), loc.centres))
    shifts = _matrix_shifts(located, od, energies, footprints, options)
    contrasts = _particle_contrasts(located, shifts, od, energies) if options.unmix_matrix else None
    first = [_refined_state(loc) for loc in located]
    refined = _map(
        lambda j: _refine_one(
            located[j], shifts[:, j], od, footprints, options, None if contrasts is None else contrasts[j]
        ),
        range(len(located)),
        _threads(options),
    )
    for j, (loc, how) in enumerate(zip(located, refined)):
        if how == "matrix":
            z = _separation_change(first[j]["followed"], first[j]["measured"], loc, shifts[:, j])
            if z is not None and z[1] > SEPARATION_MAX_CHANGE_Z:
                _restore(loc, first[j])
                loc.separation_undone = z
                refined[j] = None
    for j, (loc, how) in enumerate(zip(located, refined)):
        if how not in ("matrix", "unmixed") and loc.measured.sum() >= 3 and np.isfinite(shifts[:, j]).all():
            pos = _positions(loc)
            loc.unseparated_motion = _own_motion_px((pos - shifts[:, j])[loc.measured])
    return (
        [loc.pid for loc, how in zip(located, refined) if how == "matrix"],
        [loc.pid for loc, how in zip(located, refined) if how == "unmixed"],
        [loc.pid for loc, how in zip(located, refined) if how == "shape"],
    )


def _separation_change(followed, measured, loc, m) -> tuple | None:
    """``(change, z)``: how far a particle's separation from the matrix moved its positions from
    ``followed`` (measured in ``measured``, the first pass) to ``loc``'s (px RMS over the frames
    measured in both, their common offset removed), and that in units of the first pass's noise
    (:func:`_position_noise_px` of its own motion, ``m`` the matrix's shifts). None where it
    cannot be told (fewer than 5 frames, or no noise measured)."""
    both = measured & loc.measured & np.isfinite(followed).all(axis=1) & np.isfinite(loc.followed).all(axis=1)
    if both.sum() < 5:
        return None
    noise = _position_noise_px((followed - m)[measured & np.isfinite(m).all(axis=1)])
    if not np.isfinite(noise) or noise <= 0:
        return None
    d = loc.followed[both] - followed[both]
    change = float(np.sqrt(np.mean(np.sum((d - np.median(d, axis=0)) ** 2, axis=1))))
    return change, change / noise


#: eV. Frames this far below the scan's edge (and ``CONTRAST_POST_EV`` above it) give a
#: particle's pre-edge and post-edge contrast levels
CONTRAST_PRE_EV = 15.0
CONTRAST_POST_EV = 40.0


def _particle_contrasts(located, shifts, od, energies):
    """Each particle's whole contrast per frame, pre-edge absorption included, for
    :func:`xanestrack.background.unmix_layers`; None where the scan has no edge to tell the
    layers apart by.

    A particle's contrast in frame ``k`` is its mean OD over a disc of 0.7 its radius less the
    median of a ring 4-9 px outside it, in matrix coordinates; normalised to its edge step
    (0 before the edge, 1 after) it gives the edge's shape, and its level before the edge,
    relative to that step, is the material's pre-edge absorption, which the matrix under a
    small particle would bias (the ring and the disc see different matrix): it is taken from
    the largest third of the particles, where the matrix is least of their contrast.
    """
    n = od.shape[0]
    e = np.asarray(energies, float)
    raw = np.full((len(located), n), np.nan)
    for j, loc in enumerate(located):
        m = shifts[:, j]
        if not np.isfinite(m).all():
            continue
        x0 = np.nanmedian(loc.centres - m, axis=0)
        if not np.isfinite(x0).all():
            continue
        half = int(np.ceil(loc.radius + 10))
        size = 2 * half + 1
        v = resample_windows(od, m, np.round(x0).astype(int) - half, (size, size), order=1)
        yy, xx = np.mgrid[:size, :size] - half
        rr = np.hypot(yy, xx)
        disc, ring = rr < 0.7 * loc.radius, (rr > loc.radius + 4) & (rr < loc.radius + 9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            raw[j] = np.nanmean(v[:, disc], axis=1) - np.nanmedian(v[:, ring], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        top = np.nanmax(raw, axis=1, keepdims=True)
        pop = np.nanmedian(raw / np.where(top > 0, top, np.nan), axis=0)
    have = np.isfinite(pop)  # frames without data (the beam lost) left out
    if have.sum() < 10:
        return None
    try:
        e0 = find_e0(e[have], pop[have])
    except ValueError:
        return None
    pre, post = e < e0 - CONTRAST_PRE_EV, e > e0 + CONTRAST_POST_EV
    if pre.sum() < 3 or post.sum() < 3:
        return None
    with warnings.catch_warnings():  # a particle never measured there: NaN, left out as not usable below
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmean(raw[:, pre], axis=1)
        hi = np.nanmean(raw[:, post], axis=1)
    step = hi - lo
    usable = np.isfinite(step) & (step > 0)
    if not usable.any():
        return None
    radii = np.array([loc.radius for loc in located])
    big = usable & (radii >= np.percentile(radii[usable], 67))
    ratio = float(np.median(lo[big] / step[big]))
    if not np.isfinite(ratio) or ratio < 0:
        return None
    # a 3-frame running mean over the frames measured (a frame without the particle, e.g. the beam
    # lost, stays NaN and is not used by the regression)
    seen = np.isfinite(raw)
    num = ndimage.uniform_filter1d(np.where(seen, raw, 0.0), 3, axis=1, mode="nearest")
    den = ndimage.uniform_filter1d(seen.astype(float), 3, axis=1, mode="nearest")
    smooth = np.where(seen & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)
    out = ratio + (smooth - lo[:, None]) / np.where(usable, step, np.nan)[:, None]
    out[~usable] = np.nan
    return out


def _own_shape_weight(loc, options) -> np.ndarray:
    """The apodisation by the particle's own shape, grown by the edge images' reach."""
    b, _, _ = window_geometry(loc.radius, options.follow)
    return shape_weight(loc.shape, grow=2.0 + 2.0 * options.follow.sigma * b, taper=max(3.0, 2.0 * b))


def _follow_by_shape(loc, od, options) -> bool:
    """Follow a particle again, the correlation apodised by its own shape (updates ``loc``)."""
    if loc.shape is None:
        return False
    weight = _own_shape_weight(loc, options)
    refined, _, measured = follow_particle(
        od, loc.centres, loc.radius, loc.ref_frame, options=options.follow, weight=weight
    )
    loc.followed = np.where(measured[:, None], refined, loc.followed)
    loc.measured = loc.measured | measured
    return True


def _followed_own_motion(loc, m):
    """``(own, motion)``: a particle's followed positions less the matrix's shifts ``m`` over its
    measured frames, and their amplitude (:func:`_own_motion_px`)."""
    own = (loc.followed - m)[loc.measured]
    return own, _own_motion_px(own)


def _refine_one(loc, m, od, footprints, options, contrast=None) -> str | None:
    """:func:`_refine_on_matrix` for one particle (``m``: the matrix's shifts at it; ``contrast``:
    its contrast per frame, :func:`_particle_contrasts`, or None): "matrix" (separated from the
    matrix), "unmixed" (the matrix told apart by the edge), "shape" (followed by its shape) or None.

    By its own motion on the first pass, a particle is separated at once (:func:`_separable`),
    refined as one that moves on its own (:func:`_refine_moving`), or as one that moves with the
    matrix (:func:`_refine_still`)."""
    if loc.shape is None or not np.isfinite(m).all():
        return None
    own = (loc.centres - m)[loc.measured]
    if own.shape[0] < 3:
        # too few frames to tell its own motion; and its shape would be the average of the
        # masks whose centres of mass must vouch for the result: not independent (two-frame
        # cuts of the stress scenes, followed by their shapes: frames vouched for 1.6 and
        # 2.4 px off, stress-counts seed 2)
        return None
    motion = _own_motion_px(own)
    if _separable(own, motion):
        return _separate(loc, m, od, footprints, options, loc.centres)
    if _moves_on_its_own(own, motion):
        return _refine_moving(loc, m, od, footprints, options, contrast)
    return _refine_still(loc, m, od, footprints, options, contrast)


def _refine_still(loc, m, od, footprints, options, contrast) -> str | None:
    """A particle that moves with the matrix: "unmixed" or None (``loc`` as it was).

    It is not pulled by the matrix, and the two layers cannot be told apart by their motions;
    but it is biased by it all the same: the windows' mixture of particle and matrix changes
    across the edge, the template's does not (docs/HISTORY.md: up to 0.3 px between the frames
    before and after the edge, measured at the true positions). Its matrix told apart by the
    edge is kept where it moves its positions beyond their noise; elsewhere it keeps the disc:
    its surroundings move with it and are signal (stress-magnification, no own motion: worst
    particle 0.086 -> 0.096 px followed by its shape)."""
    if not options.shape_apodisation or contrast is None:
        return None
    if not _matrix_may_tell(loc, m, od, footprints, options, contrast):
        return None
    before = _refined_state(loc)
    if not _follow_by_shape(loc, od, options):
        return None
    _, motion = _followed_own_motion(loc, m)
    if _unmix_where_it_tells(loc, m, od, footprints, options, contrast, motion):
        loc.unmixed_still = True
        return "unmixed"
    _restore(loc, before)
    return None


def _refine_moving(loc, m, od, footprints, options, contrast) -> str | None:
    """A particle that moves on its own but not enough, on the first pass, to be separated:
    followed by its shape ("shape"), then with the matrix told apart by the edge ("unmixed"),
    and separated after all ("matrix") where its own motion, measured again, allows it."""
    if not (options.shape_apodisation and _follow_by_shape(loc, od, options)):
        return None
    # the first pass is pulled toward the matrix, which hides part of the own motion: it
    # is measured again on the positions followed by the shape (stress-crowd seed 4: a
    # faint 10-px particle, own motion 1.45 px, first pass 0.74, after the shape 0.87;
    # separated, frames vouched for off by more than 1 px 5 -> 0; bench_stress seeds
    # 1-4, both paths: frames > 1 px 161 -> 141)
    own, motion = _followed_own_motion(loc, m)
    if not _separable(own, motion):
        if contrast is None:
            return "shape"
        # its own motion standing out of its noise tells that the matrix pulls it (as the
        # release before: unmixed whatever the matrix estimate's noise; at 600 counts such
        # particles gained and lost alike); else the estimate and its effect must tell
        if motion >= OWN_MOTION_SNR * _position_noise_px(own):
            if not _unmix_one(loc, m, od, footprints, options, contrast, min_snr=0.0):
                return "shape"
            loc.unmixed_motion = motion
        elif not _unmix_where_it_tells(loc, m, od, footprints, options, contrast, motion):
            return "shape"
        # the matrix told apart by the edge pulls it less again: its own motion, measured once
        # more, may now tell the layers apart by that motion, which models what the edge
        # cannot (the matrix sliding under it; stress-fines seed 1, learned: a 16-px particle
        # measured 0.72 px after its shape, 0.84 px unmixed, then separated: 0.220 -> 0.208 px).
        # bench_stress seeds 1-4, both paths: 5 particles better by 0.012-0.047 px, 5 worse by
        # 0.018-0.025; runs' worst better in 2, worse in none (README: Measured again after the edge)
        own, motion = _followed_own_motion(loc, m)
        if not _separable(own, motion):
            return "unmixed"
        loc.unmixed_motion = None
    return _separate(loc, m, od, footprints, options, _positions(loc))


def _separate(loc, m, od, footprints, options, centres) -> str:
    """Separate a particle from the matrix by their different motions, starting at ``centres``,
    and follow it again on its frames less the matrix (:func:`_follow_on_matrix`): "matrix"."""
    _, _, size = window_geometry(loc.radius, options.follow)

    def separated(centres, lo, box, near):
        background, _, _ = separate_layers(od, centres, m, lo, box, size, near)
        loc.matrix = background  # the last one: subtracted again before the chemistry
        return background

    _follow_on_matrix(loc, m, od, footprints, options, centres, separated)
    return "matrix"


def _unmix_one(loc, m, od, footprints, options, contrast, *, min_snr: float = UNMIX_MIN_SNR) -> bool:
    """Follow a particle not separable by its motion again, the matrix behind it told apart
    by its absorption edge (:func:`xanestrack.background.unmix_layers`) and subtracted
    (not kept for the chemistry: ``loc.matrix`` is the separation's). False where the
    layers cannot be told apart so, or the matrix so estimated does not stand ``min_snr``
    times out of its own noise."""
    centres = _positions(loc)

    def unmixed(centres, lo, box, near):
        background = unmix_layers(od, centres, m, lo, box, contrast, near)
        if background is None or (min_snr > 0 and not background.snr >= min_snr):
            return None  # (an estimate whose noise was not measured, NaN, is not vouched for)
        return background

    return _follow_on_matrix(loc, m, od, footprints, options, centres, unmixed)


def _matrix_may_tell(loc, m, od, footprints, options, contrast) -> bool:
    """Whether the matrix behind a particle moving with it, told apart by the edge at its
    first-pass positions (one regression, :func:`xanestrack.background.unmix_layers` without
    its iterations), stands ``UNMIX_MIN_SNR`` times out of its own noise: where it does not
    (600 counts), the shape pass and the unmixing that would be undone are not made (1024^2
    ``stress-all``, 36 particles, in-process: the matrix stage 17.1 -> 14.5 s, 10.4 s where still
    particles are not tried; the stress table's rows, seeds 1-2, both paths, identical)."""
    lo, box, near = _matrix_box(loc, m, footprints, options)
    centres = _positions(loc)
    background = unmix_layers(od, centres, m, lo, box, contrast, near, iterations=0)
    return background is not None and background.snr >= UNMIX_MIN_SNR


def _unmix_where_it_tells(loc, m, od, footprints, options, contrast, motion) -> bool:
    """:func:`_unmix_one`, kept only where it moved the particle's positions beyond their noise
    (:func:`_changed_beyond_noise`; else ``loc`` is left as it was). Records ``motion`` (px,
    the particle's own motion) in ``loc.unmixed_motion`` where kept."""
    before = _refined_state(loc)
    if not _unmix_one(loc, m, od, footprints, options, contrast):
        return False  # no estimate made: ``loc`` untouched
    if _changed_beyond_noise(before["followed"], loc.followed, before["measured"] & loc.measured) < UNMIX_CHANGE_Z:
        _restore(loc, before)
        return False
    loc.unmixed_motion = motion
    return True


def _changed_beyond_noise(before, after, frames, *, window: int = UNMIX_CHANGE_FRAMES) -> float:
    """How far a change of a particle's positions stands out of the noise: the RMS of its
    running mean over ``window`` frames, per axis, over the noise of such a mean (the change's
    noise from its second differences, robustly); the larger axis. 0 with fewer than 20 frames.

    Pure white noise gives about 1 (``stress-magnification`` seed 1, whose particles move with
    the matrix and gain nothing by its subtraction: 1.5-3.8, the noise not quite white).
    """
    both = np.asarray(frames, bool) & np.isfinite(before).all(axis=1) & np.isfinite(after).all(axis=1)
    if both.sum() < 20:
        return 0.0
    d = (np.asarray(after) - np.asarray(before))[both]
    d = d - np.median(d, axis=0)
    second = d[2:] - 2 * d[1:-1] + d[:-2]
    sigma = np.array([robust_sigma(second[:, a], centre=0.0) for a in (0, 1)]) / np.sqrt(6.0)
    slow = ndimage.uniform_filter1d(d, window, axis=0, mode="nearest")
    z = np.sqrt(np.mean(slow**2, axis=0)) / (sigma / np.sqrt(window) + 1e-9)
    return float(np.max(z))


def _matrix_box(loc, m, footprints, options):
    """``(lo, box, near)``: the box in matrix (frame-0) coordinates that holds every window of the
    particle, and the footprints near it."""
    _, _, size = window_geometry(loc.radius, options.follow)
    q = loc.centres - m  # the windows' centres in matrix (frame-0) coordinates
    lo = np.floor(np.nanmin(q, axis=0) - size / 2 - 3).astype(int)
    box = np.ceil(np.nanmax(q, axis=0) + size / 2 + 3).astype(int) - lo + 1
    near = [
        f
        for f in footprints
        if np.nanmin(np.hypot(*(f.positions - m - (lo + box / 2)).T)) < np.hypot(*box) / 2 + f.shape.shape[0]
    ]
    return lo, tuple(box), near


def _follow_on_matrix(loc, m, od, footprints, options, centres, layers) -> bool:
    """Follow a particle again, apodised by its shape, on its frames less the matrix behind it:
    ``layers(centres, lo, box, near)`` estimates the matrix (a MatrixBackground, or None: not
    possible) in the box ``lo``, ``box`` (matrix coordinates) at the particle's positions
    ``centres``, the footprints ``near`` it covering the matrix; the two repeated up to
    ``REFINE_PASSES`` times (updates ``loc``). False where no estimate was made."""
    weight = _own_shape_weight(loc, options)
    lo, box, near = _matrix_box(loc, m, footprints, options)
    # subtracting the matrix cannot make the particle appear: a frame where neither the first pass
    # nor the segmentation found it is not measured now (the separation leaks a faint copy of the
    # particle into the matrix layer: a frame without the particle, beam lost, was "measured" on
    # that copy). Measured: only stress-all seed 2 (learned) changes: frames of a faint isolated
    # particle, measured on the subtraction alone and partly more than 1 px off, are interpolated
    # instead (frames > 1 px 12 -> 9; that particle no longer tracked through every frame, worst
    # 0.438 -> 0.526 px)
    first = loc.measured | (loc.seg.masks.max(axis=(1, 2)) > 0.5)
    done = False
    for _ in range(REFINE_PASSES):
        background = layers(centres, lo, box, near)
        if background is None:
            break
        done = True
        refined, _, measured = follow_particle(
            od, centres, loc.radius, loc.ref_frame, options=options.follow, weight=weight, background=background
        )
        measured &= first
        moved = np.hypot(*(refined - centres)[measured & np.isfinite(centres).all(axis=1)].T)
        loc.followed = np.where(measured[:, None], refined, loc.followed)
        loc.measured = loc.measured | measured
        centres = _positions(loc)
        if moved.size == 0 or np.sqrt(np.mean(moved**2)) < SETTLED_PX:
            break  # the matrix did not pull this particle: nothing to iterate
    return done


def _vouch(loc: _Located, common, od, options) -> VouchedPositions:
    """The particle's positions, each vouched for (or not) by the centre of mass or, for a
    particle whose centre of mass confirms no frame, or disagrees by a steady offset in one
    contrast regime (:func:`_steady_offset_frames`), by the density correlation
    (``density_voucher``); none in frames whose common step the linking could not tell
    (:func:`_ambiguous_unvouched`)."""
    return _ambiguous_unvouched(_vouch_estimates(loc, common, od, options), loc.track)


def _ambiguous_unvouched(v: VouchedPositions, track) -> VouchedPositions:
    """``v`` with the frames whose common step between key frames the linking could not tell
    (``common_ambiguous``: a lattice of alike particles moved by one spacing, no matrix texture to
    tell it) flagged ``position_outlier`` and ``disagree``: the window may sit on a neighbour there,
    where both estimates agree (16 of 20 particles vouched for 36 px off before the linking looked
    for a second peak); not vouched for by the scan's motion either (the others err alike)."""
    if "common_ambiguous" not in track:
        return v
    amb = track.sort_values("frame")["common_ambiguous"].fillna(False).to_numpy(bool)
    if amb.shape != v.flags.shape or not amb.any():
        return v
    v.flags[amb] |= FRAME_FLAGS["position_outlier"] | FRAME_FLAGS["disagree"]
    v.usable[amb] = False
    return v


def _vouch_estimates(loc: _Located, common, od, options) -> VouchedPositions:
    """:func:`_vouch` before the frames of an ambiguous common step are taken out."""
    seg = loc.seg
    kw = dict(
        edge_measured=loc.measured,
        masks=seg.masks,
        outside=seg.outside,
        clipped=seg.clipped,
        undetected=~loc.detected & loc.examined,
        common=common,
        reference_frame=loc.ref_frame,
        area_tolerance=options.area_tolerance,
        agreement_px=options.agreement_px,
        position=options.position,
    )
    v = vouch_positions(seg.com, loc.followed, **kw)
    # the density correlation is asked only for a particle whose centre of mass confirms the
    # edge estimate in no frame where both measured (its outline is no second estimate at all,
    # e.g. real frames whose outlines move across the edge). Where the centre of mass confirms
    # some frames, its disagreement elsewhere is evidence: the density shares the edge
    # estimate's window and errs with it (reduced stress-all seed 3: frames off by 1.05-1.11 px,
    # a neighbour inside the window, whose centres of mass disagreed by 0.9-1.5 px, were vouched
    # for by the density when it was asked wherever the centre of mass disagreed)
    both = v.usable & loc.measured
    ask = both & ((v.flags & FRAME_FLAGS["disagree"]) > 0)
    if not options.density_voucher or not ask.any():
        return v
    if (both & ~ask).any():
        # but where the centre of mass disagrees by a steady offset in one contrast regime (the frames
        # before or after the edge: a textured particle's outline follows its contrast), the density is
        # asked there (:func:`_steady_offset_frames`)
        ask = _steady_offset_frames(seg.com - loc.followed, both, ask)
        if not ask.any():
            return v
    # only in frames where the particle's surroundings move with it (within the own motion
    # below which a particle moves with the matrix)
    density, measured, _ = density_residuals(
        od,
        loc.followed,
        loc.measured,
        loc.radius,
        loc.ref_frame,
        options=options.follow,
        surroundings_px=WITH_MATRIX_PX,
        frames=ask,
    )
    return vouch_positions(seg.com, loc.followed, density=density, density_measured=measured, **kw)


#: px: the centre of mass less the edge estimate must scatter less than this (robust sd, each axis) in the
#: frames of one contrast regime for the density voucher to be asked where the centre of mass disagrees there
#: (:func:`_steady_offset_frames`). The probe's dense textured field: 14 of 19 particles with such frames pass
#: (0.07-0.19), 4 scatter 0.28-0.42, one disagrees in every frame of the other run too. At 0.4, on the stress
#: family (learned, seeds 1 and 3), the frames it would give reach 0.71 px off the truth (0.25: 0.68; edge
#: estimates, before the smoothing)
STEADY_OFFSET_SD_PX = 0.25

#: frames: the fewest frames of a contrast regime (before or after the change of the offset) that
#: :func:`_steady_offset_frames` tells apart
STEADY_MIN_FRAMES = 5


def _steady_offset_frames(
    offset, both, ask, *, sd_px: float = STEADY_OFFSET_SD_PX, min_frames: int = STEADY_MIN_FRAMES
) -> np.ndarray:
    """The frames of ``ask`` (bool ``(n_frames,)``) where the centre of mass disagrees with the edge
    estimate by a steady offset in one contrast regime: the density voucher may be asked there.

    ``offset`` ``(n_frames, 2)`` is the centre of mass less the edge estimate, compared where ``both``
    measured. Those frames are split in two runs, the first ``k`` and the rest (``k`` at least
    ``min_frames`` from either end), where the offset is closest to one constant in each (least
    absolute deviation from each run's median): one contrast regime before the absorption edge, one
    after it. The run holding more of the disagreeing frames ``ask`` is the block; its ``ask`` frames
    are returned where the offset scatters less than ``sd_px`` over the block (robust sd, each axis)
    and the other run holds frames the centre of mass confirms. None otherwise: a disagreement that
    wanders is evidence against the edge estimate, not a texture.

    A textured particle (primary grains, pores) has an outline whose centre of mass follows its
    contrast: the texture that stands out before the edge is not what stands out after it, so the
    centre of mass sits a steady offset off the edge estimate in the pre-edge frames and on it after
    (the probe's textured r 90 particle: (+0.75, +0.54) px, sd (0.17, 0.11)). The density correlation
    (the whole pattern, not an outline) vouches for the edge estimate there. Such a particle, its
    centre of mass confirming the post-edge frames, was not asked at all before (a disagreement is
    evidence where a neighbour in the window pulls the edge estimate and the density alike) and lost
    every pre-edge frame, so all of its chemistry: the probe's dense textured field 13 of 33 particles,
    5 with this rule; its big scene 3 of 4, none; its agglomerate 4 of 8, 1 (the 250 frames newly
    vouched for within 0.19 px of the truth). Learned, full size, ``stress-all`` seeds 1 and 3,
    ``stress-crowd`` and ``stress-counts`` seed 1: RMS and frames > 1 px unchanged, 206 frames newly
    vouched for, their edge estimates within 0.62 px of the truth; the default scene (seed 1)
    unchanged frame by frame.
    """
    both = np.asarray(both, bool) & np.isfinite(offset).all(axis=1)
    ask = np.asarray(ask, bool)
    out = np.zeros(len(both), bool)
    idx = np.flatnonzero(both)
    if idx.size < 2 * min_frames:
        return out
    o = np.asarray(offset, float)[idx]
    costs = [
        sum(np.abs(p - np.median(p, axis=0)).sum() for p in (o[:k], o[k:]))
        for k in range(min_frames, idx.size - min_frames + 1)
    ]
    k = min_frames + int(np.argmin(costs))
    runs = (idx[:k], idx[k:])
    block, rest = runs if ask[runs[0]].sum() >= ask[runs[1]].sum() else runs[::-1]
    if not ask[block].any() or ask[rest].all():
        return out
    q = np.asarray(offset, float)[block]
    if max(robust_sigma(q[:, 0]), robust_sigma(q[:, 1])) >= sd_px:
        return out
    out[block] = ask[block]
    return out


def _smooth(vouched: list, common, agreement_px: float):
    """:func:`smooth_tracks` over every particle's located frames; the frames filled in
    are filled again from the smoothed ones. A frame whose smoothed position is more than
    ``agreement_px`` from the position measured there is not vouched for (``disagree``):
    the two estimates vouched for the measurement, not for where the smoothing put it.
    Returns the new list, the SmoothedTracks and the number of frames so flagged."""
    P = np.stack([v.positions for v in vouched])
    located = np.stack([v.located for v in vouched])
    st = smooth_tracks(P, located)
    # the frames filled in (a particle before it enters the field, after it leaves) follow the motion
    # the particles share, measured over them all, rather than the linker's rough common shift (taken
    # between key frames: 2-3 px off after 30 frames, which then stood in every displacement from frame 0)
    shared = np.isfinite(st.common).all(axis=1)
    if shared.any():
        common = fill_positions(st.common, shared, common)
    out = []
    n_moved = 0
    for j, v in enumerate(vouched):
        if not st.smoothed[j] and v.located.any() and not v.located.all():
            v = dataclasses.replace(v, positions=fill_positions(v.positions, v.located, common))
        if st.smoothed[j]:
            pos = fill_positions(np.where(v.located[:, None], st.positions[j], np.nan), v.located, common)
            with np.errstate(invalid="ignore"):
                moved = v.located & (np.hypot(*(pos - v.positions).T) > agreement_px)
            fresh = moved & ((v.flags & FRAME_FLAGS["disagree"]) == 0)
            n_moved += int(fresh.sum())
            flags = v.flags.copy()
            flags[moved] |= FRAME_FLAGS["disagree"]
            v = dataclasses.replace(v, positions=pos, flags=flags)
        out.append(v)
    return out, st, n_moved


def _vouch_by_motion(vouched: list, located: list, energies, options):
    """:func:`vouch_by_motion` over every particle's vouched positions (not for a particle the matrix
    pulls: moving on its own, not separated from it). Returns the new list and the frames so vouched for."""
    flags, agreement, n_motion = vouch_by_motion(
        np.stack([v.positions for v in vouched]),
        np.stack([v.edge_positions for v in vouched]),
        np.stack([v.flags for v in vouched]),
        energies,
        agreement_px=options.agreement_px,
        max_run=options.motion_voucher_frames,
        particles=[loc.unseparated_motion is None or loc.unseparated_motion < SHAPE_MIN_PX for loc in located],
    )
    out = []
    for j, v in enumerate(vouched):
        by = np.isfinite(agreement[j])
        out.append(
            dataclasses.replace(v, flags=flags[j], agreement=np.where(by, agreement[j], v.agreement)) if by.any() else v
        )
    return out, n_motion


def _matrix_windows(matrix: MatrixBackground, origin, shifts, size: int) -> np.ndarray:
    """The separated matrix's texture where it lies, in each frame, behind a particle's aligned window.

    The aligned grid's pixel ``[i, j]`` is frame ``k``'s pixel ``origin + (i, j) + shifts[k]``
    (:func:`resample_windows`); the matrix there is moved by the common motion, not by the
    particle's, so its texture slides through the particle's pixels as the particle moves on
    its own. Returned less its median: the frame's level is left to the local background.
    Measured (``benchmarks/bench_chemistry_stress.py``, learned, seeds 1-2, the 43 separated
    particles with an E50 map): E50 RMS against the truth median 0.557 -> 0.397 eV, 30 better,
    5 worse by 0.007-0.073 eV (``stress-all`` seed 2 three of them: 600 counts, a noisy matrix
    estimate); ``stress-drift`` medians 0.689 / 0.432 -> 0.406 / 0.302 eV (seeds 1 / 2, all
    twelve better).
    """
    n = shifts.shape[0]
    corners = np.asarray(origin, float)[None] + np.asarray(shifts, float)
    w = matrix.windows(corners, size, np.arange(n))
    return (w - np.float32(np.median(matrix.image))).astype(np.float32)


def _chemistry_frames(aligned, masks, candidates):
    """The frames and the mask of a particle's XANES analysis: ``(use, mask)``.

    A frame is used where its position is vouched for (``candidates``) and every pixel of the
    particle lies inside the frame; the window's margin may leave it (a particle near the frame's
    border keeps its chemistry, the ring of its local background is only narrower there). The
    mask is the consensus of the used frames' masks, less any pixel missing from one of them.
    """
    seen = np.isfinite(aligned)
    use = candidates & seen.any(axis=(1, 2))
    use &= seen[:, consensus_mask(masks, use)].all(axis=1)
    mask = consensus_mask(masks, use) & seen[use].all(axis=0)
    return use, mask


def _aligned_masks(loc: _Located, v: VouchedPositions):
    """The particle's aligned grid and its masks on it: ``(origin, shifts, masks)``.

    ``origin`` is the frame-0 pixel of the grid's ``[0, 0]`` (the window around its first located
    position), ``shifts`` ``(n_frames, 2)`` its displacement from frame 0, ``masks`` each frame's
    soft mask resampled onto the grid (:func:`resample_masks`).
    """
    seg, half = loc.seg, loc.half
    positions = v.positions
    size = 2 * half + 1
    if v.located.any():
        ref = int(np.flatnonzero(v.located)[0])
        origin = np.round(positions[ref]).astype(int) - half
    else:
        origin = seg.origins[0]
    # the aligned grid is frame-0's (positions are filled for every frame, or all NaN)
    shifts = positions - positions[0]
    return origin, shifts, resample_masks(seg.masks, seg.origins, shifts, origin, (size, size))


#: px: a particle's mask is grown by this much before asking how much of it another particle covers
#: (:func:`_overlapping_frames`): the XANES smooths inside the mask by 1 px (``xanes_smoothing``) and the
#: image's blur carries a neighbour's optical density a pixel or two beyond its outline
OVERLAP_GROW_PX = 2

#: share of the smaller particle's area (its mask's pixels) that another particle must cover of a particle's
#: grown mask, more than it covers in the particle's reference frame, for the frame to be left out of the
#: particle's XANES (:func:`_overlapping_frames`). A touching pair drifting 0.6 px towards each other adds at most
#: 0.067 of the smaller one's area (discs of 7-40 px radius, touching or 1 px apart or interpenetrating by 1 px;
#: 0.018-0.025 for 10-30 px pairs); a 12-px particle passing over a still 22-px one covers up to its whole area
#: (1.0): the probe's crossing, outlines overlapping in frames 51-118, was flagged in frames 54-115
OVERLAP_SHARE = 0.10

#: the baseline of what another particle covers of a particle (:func:`_overlapping_frames`) is what it covers in
#: the particle's reference frame, or in this share of the frames where it covers least if that is less: not the
#: least of all frames, which one frame's stray position would set (the 40-px neighbour of a 7-px particle, the two
#: interpenetrating by 2 px, covers 20 % of its area grown by 2 px: every frame but that one would be flagged;
#: touching, 6 %)
OVERLAP_BASE_QUANTILE = 0.1


def _overlapping_frames(
    masks, origins, shifts, reference_frames, *, grow_px: int = OVERLAP_GROW_PX, share: float = OVERLAP_SHARE
) -> np.ndarray:
    """Where one tracked particle lies over another: ``covered[i, j, k]`` (bool, ``(n, n, n_frames)``).

    Particle ``j``'s mask, placed at its own position in frame ``k`` (its grid moved by its displacement),
    covers particle ``i``'s mask grown by ``grow_px`` by more than ``share`` times the smaller of the two masks'
    areas beyond what it covers in particle ``i``'s reference frame, or in the tenth of the frames where it covers
    least if that is less (:data:`OVERLAP_BASE_QUANTILE`: a particle that came to rest on another one by its
    reference frame is not its baseline). The baseline keeps a touching pair that stays put (cut apart by the
    segmentation, :func:`xanestrack.segment.separate_neighbours`) out of it: only a particle that comes over
    another one counts, not a neighbour that was there all along.

    Parameters
    ----------
    masks : list of ndarray (h_i, w_i) bool
        Each particle's mask on its aligned (frame-0) grid; an empty one is left out (never covered, covers nothing).
    origins : list of ndarray (2,)
        Frame-0 pixel of each grid's ``[0, 0]``.
    shifts : list of ndarray (n_frames, 2)
        Each particle's displacement from frame 0 (px, ``(y, x)``); NaN rows are frames not compared.
    reference_frames : list of int
        Each particle's reference frame (the baseline of what its neighbours cover of it).

    Notes
    -----
    Grid pixel ``[p, q]`` of particle ``j`` lies in frame ``k`` at ``origins[j] + (p, q) + shifts[j][k]``, which is
    grid pixel ``d + (p, q)`` of particle ``i`` with ``d = origins[j] - origins[i] + shifts[j][k] - shifts[i][k]``.
    The covered area at every integer ``d`` is the correlation of the two masks (one FFT per pair that comes near);
    between integers it is interpolated bilinearly, which is the area covered by ``j``'s mask shifted bilinearly.
    """

    n_p = len(masks)
    n_frames = len(shifts[0]) if n_p else 0
    covered = np.zeros((n_p, n_p, n_frames), bool)
    masks = [np.asarray(m, bool) for m in masks]
    areas = np.array([float(m.sum()) for m in masks])
    grown = [
        ndimage.binary_dilation(np.pad(m, grow_px), iterations=grow_px) if grow_px > 0 else m for m in masks
    ]  # on a grid widened by grow_px each side: its [0, 0] is at origin - grow_px
    for i in range(n_p):
        if areas[i] == 0:
            continue
        gi = grown[i].astype(np.float64)
        for j in range(n_p):
            if j == i or areas[j] == 0:
                continue
            compared = np.isfinite(shifts[i]).all(axis=1) & np.isfinite(shifts[j]).all(axis=1)
            placed = _covered_areas(gi, np.asarray(origins[i], float) - grow_px, masks[j], origins[j], shifts, i, j)
            if placed is None:
                continue
            cover, near = placed
            base = min(cover[reference_frames[i]], np.quantile(cover[compared], OVERLAP_BASE_QUANTILE))
            covered[i, j] = near & (cover - base > share * min(areas[i], areas[j]))
    return covered


def _extent(mask, axis: int) -> tuple[int, int]:
    """``(first, last + 1)`` of the rows (``axis=1``) or columns (``axis=0``) where ``mask`` holds a pixel;
    ``(0, 0)`` where it holds none."""
    hit = np.flatnonzero(np.any(mask, axis=axis))
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)


def _covered_areas(grid_i, origin_i, mask_j, origin_j, shifts, i: int, j: int, use=None):
    """``(cover, near)``: per frame, the area of ``grid_i`` (float, its ``[0, 0]`` at frame-0 pixel ``origin_i``)
    that particle ``j``'s mask covers, each placed where it is in the frame (``shifts[i]``, ``shifts[j]``); 0 in the
    frames where they do not come near, or not among ``use`` (bool, optional). None where they never come near.

    The covered area at every integer offset is the correlation of the two grids (one FFT); between integers it is
    interpolated bilinearly (:func:`_overlapping_frames`' notes). Shared by :func:`_overlapping_frames` and
    :func:`_inside_shares`."""
    hi, wi = grid_i.shape
    hj, wj = mask_j.shape
    d = (
        np.asarray(origin_j, float)
        - np.asarray(origin_i, float)
        + np.asarray(shifts[j], float)
        - np.asarray(shifts[i], float)
    )
    near = np.isfinite(d).all(axis=1) & (True if use is None else np.asarray(use, bool))
    near[near] &= (d[near, 0] > -hj) & (d[near, 0] < hi) & (d[near, 1] > -wj) & (d[near, 1] < wi)
    # where the two masks' bounding boxes do not meet (the bilinear weights' pixel beside included), the area is
    # nil: no FFT for a pair that never comes near (most pairs: the grids' margins are wide)
    (yi0, yi1), (xi0, xi1) = _extent(grid_i > 0, 1), _extent(grid_i > 0, 0)
    (yj0, yj1), (xj0, xj1) = _extent(mask_j, 1), _extent(mask_j, 0)
    if yi1 == yi0 or yj1 == yj0:
        return None
    near[near] &= (d[near, 0] > yi0 - yj1 - 1) & (d[near, 0] < yi1 - yj0)
    near[near] &= (d[near, 1] > xi0 - xj1 - 1) & (d[near, 1] < xi1 - xj0)
    if not near.any():
        return None
    from scipy.signal import fftconvolve  # a heavy import (about 0.7 s): only for a pair that comes near

    area = fftconvolve(grid_i, mask_j[::-1, ::-1].astype(np.float64), mode="full")
    cover = np.zeros(len(d))
    cover[near] = ndimage.map_coordinates(area, (d[near] + [hj - 1, wj - 1]).T, order=1, mode="constant", cval=0.0)
    return np.clip(cover, 0.0, None), near


def _frame_runs_text(frames, energies, most: int = 3) -> str:
    """``"frames 51-118 (8338.5-8440.0 eV), 125 (8450.0 eV)"``: runs of consecutive frames with their energies."""
    from .xanes import frame_runs

    k, starts, ends = frame_runs(frames)
    if not k.size:
        return ""
    runs = [
        f"{k[a]} ({energies[k[a]]:.1f} eV)"
        if a == b
        else f"{k[a]}-{k[b]} ({energies[k[a]]:.1f}-{energies[k[b]]:.1f} eV)"
        for a, b in zip(starts, ends)
    ]
    more = len(runs) - most
    return (
        ("frame " if k.size == 1 else "frames ")
        + ", ".join(runs[:most])
        + (f" and {more} more run{'s' if more > 1 else ''}" if more > 0 else "")
    )


def _footprints(located: list, vouched: list, threads: int = 1) -> list:
    """Per particle ``(mask, origin, shifts)``: its mask on its aligned grid (the consensus over the frames its XANES
    would use, where its mask is its own, else every frame it was located in), the grid's origin and its shifts
    (float), as :func:`_overlaps` and :func:`_neighbour_pixels` place it beside the others. None with fewer than two
    particles (nothing to place)."""
    if len(located) < 2:
        return None

    def footprint(j):
        loc, v = located[j], vouched[j]
        origin, shifts, amasks = _aligned_masks(loc, v)
        frames = v.usable & ((np.asarray(v.flags).astype(np.uint16) & FRAME_FLAGS["disagree"]) == 0)
        if not frames.any():
            frames = v.located
        return consensus_mask(amasks, frames), np.asarray(origin, float), np.asarray(shifts, float)

    return _map(footprint, range(len(located)), threads)


def _overlaps(located: list, vouched: list, prints) -> tuple[list, list]:
    """Every particle's frames another tracked particle lies over (:func:`_overlapping_frames`), flagged
    ``overlap``: ``(vouched, overlaps)``, the list with those flags set (every particle's flags as uint16) and per
    particle a dict ``{other particle's id: frames (n_frames,) bool}`` (empty where none). ``prints``: the
    particles' :func:`_footprints`."""
    n_p = len(located)
    covered = np.zeros((n_p, n_p, 0), bool)
    if prints is not None:
        refs = [loc.ref_frame for loc in located]
        covered = _overlapping_frames([f[0] for f in prints], [f[1] for f in prints], [f[2] for f in prints], refs)
    out_v, out_o = [], []
    for i, v in enumerate(vouched):
        flags = np.asarray(v.flags).astype(np.uint16)
        others = {located[j].pid: covered[i, j] for j in range(n_p) if covered.size and covered[i, j].any()}
        if others:
            flags[np.any(list(others.values()), axis=0)] |= FRAME_FLAGS["overlap"]
        out_v.append(dataclasses.replace(v, flags=flags))
        out_o.append(others)
    return out_v, out_o


def _overlap_note(overlaps: dict, energies, left_out=()) -> str:
    """A particle's note naming the particles that lay over it and the frames left out of its XANES for it;
    ``left_out``: those of them left out of the results afterwards (faint tracks without an edge of their own)."""
    if not overlaps:
        return ""
    parts = [
        f"particle {pid}"
        + (" (a faint track, left out of the results later: no absorption edge of its own)" if pid in left_out else "")
        + f" in {_frame_runs_text(frames, energies)}"
        for pid, frames in sorted(overlaps.items())
    ]
    n = int(np.any(list(overlaps.values()), axis=0).sum())
    return (
        f"another tracked particle lies over it in {_count(n, 'frame')} ({'; '.join(parts)}): its spectra there are "
        "those of both, so these frames are left out of its XANES (flag overlap: the other particle, placed where it "
        f"was in the frame, covered its mask grown by {OVERLAP_GROW_PX} px by more than {100 * OVERLAP_SHARE:.0f} % "
        "of the smaller particle's area beyond what it covers in its reference frame). Its positions there are "
        "vouched for as they are"
    )


#: share of a track's mask that another tracked particle's mask must cover, in the frames both were located in (in
#: the tenth of them where it covers least), for the track to be taken for a part of that particle tracked a second
#: time and left out (:func:`_inside_other_particles`). Measured on the masks as :func:`_footprints` places them, no
#: growth: the real SSRL pair (learned) has a lobe of particle 3 tracked as particle 1, 0.9996 of its mask inside
#: (particle 3's own mask 0.18 inside particle 1's; the classical path: no pair above 0.0005); between particles of
#: the truth, the default scene (seed 1, 6 particles, 48 energies) and the reduced ``stress-crowd`` and ``stress-all``
#: scenes (seed 1, both paths; their touching groups' masks cut apart, interpenetrating by 1 px) stay below 0.0005
INSIDE_SHARE = 0.8


def _inside_shares(masks, origins, shifts, frames) -> np.ndarray:
    """``shares[i, j]``: how much of particle ``i``'s mask particle ``j``'s covers, each placed where it is in the
    frames both were located in (the share of ``i``'s mask's pixels, in the tenth of those frames where it is least,
    :data:`OVERLAP_BASE_QUANTILE`: one frame's stray position does not set it); 0 where they never come near.

    ``masks``, ``origins``, ``shifts`` as :func:`_overlapping_frames` takes them; ``frames``: per particle the frames
    it was located in (bool ``(n_frames,)``)."""
    n_p = len(masks)
    shares = np.zeros((n_p, n_p))
    masks = [np.asarray(m, bool) for m in masks]
    areas = np.array([float(m.sum()) for m in masks])
    for i in range(n_p):
        if areas[i] == 0:
            continue
        gi = masks[i].astype(np.float64)
        for j in range(n_p):
            if j == i or areas[j] == 0:
                continue
            both = np.isfinite(shifts[i]).all(axis=1) & np.isfinite(shifts[j]).all(axis=1)
            both &= np.asarray(frames[i], bool) & np.asarray(frames[j], bool)
            placed = _covered_areas(gi, origins[i], masks[j], origins[j], shifts, i, j, use=both)
            if placed is None:
                continue
            shares[i, j] = float(np.quantile(placed[0][both], OVERLAP_BASE_QUANTILE)) / areas[i]
    return shares


def _inside_other_particles(located: list, vouched: list, prints, *, share: float = INSIDE_SHARE) -> dict:
    """Tracks that lie inside another tracked particle: ``{index: (index of that particle, share)}``, a track whose
    mask another particle's covers by more than ``share`` (:func:`_inside_shares`) in the frames both were located
    in; of two that lie inside each other, the smaller. Such a track is a part of that particle tracked a second
    time (the detector outlined the particle differently in two frames and the linker made two tracks of it): its
    position is not a particle's and its pixels are the other's. ``prints``: the particles' :func:`_footprints`.

    :func:`_overlapping_frames` does not see it: it counts only what comes over a particle beyond what covers it in
    its reference frame, and this one lies inside the other from the start."""
    if prints is None:
        return {}
    shares = _inside_shares(
        [f[0] for f in prints], [f[1] for f in prints], [f[2] for f in prints], [v.located for v in vouched]
    )
    areas = np.array([float(np.sum(f[0])) for f in prints])
    gone: dict = {}
    for i in np.argsort(areas, kind="stable"):
        hosts = [j for j in range(len(located)) if j != i and j not in gone and areas[j] >= areas[i]]
        hosts = [j for j in hosts if shares[i, j] > share]
        if hosts:
            j = max(hosts, key=lambda h: shares[i, h])
            gone[int(i)] = (int(j), float(shares[i, j]))
    return gone


def _inside_note(inside: dict, located: list) -> str:
    """The run note on the tracks :func:`_inside_other_particles` left out, naming each and the particle it lies in."""
    parts = [
        f"track {located[i].pid}, {100 * sh:.0f} % of its mask inside particle {located[j].pid}"
        for i, (j, sh) in sorted(inside.items(), key=lambda kv: located[kv[0]].pid)
    ]
    return (
        f"{_count(len(inside), 'track')} lay inside another tracked particle's mask in the frames both were found in "
        f"({'; '.join(parts)}): a part of that particle tracked a second time, left out (rejected.csv "
        "inside_particle_K), so that it is neither counted as a particle nor weighs in the motion all particles "
        "share"
    )


#: a particle's note where the matrix separated from behind it is subtracted before its XANES
#: (:func:`_finish_particle`; :func:`redo_xanes` cannot subtract it again)
MATRIX_SUBTRACTED_NOTE = (
    "the matrix texture separated from behind it (it moves on its own over the matrix) is subtracted from its "
    "frames before the XANES analysis: it would move through the particle's pixels and enter their spectra"
)


#: px: the other tracked particles' masks are grown by this much before their pixels are left out of a particle's
#: local-background ring (:func:`_neighbour_pixels`): the masks are drawn at 0.35 of a particle's contrast, and the
#: image's blur carries its optical density a few pixels beyond. The dense two-chemistry field's three touching
#: particles read within 0.006 eV of each other grown by 1, 3 or 6 px
NEIGHBOUR_GROW_PX = 3


def _neighbour_pixels(located: list, vouched: list, prints) -> list:
    """Per particle, the pixels of its aligned window where another tracked particle lies (bool ``(size, size)``, or
    None where none comes near): left out of the ring of its local background (:func:`xanestrack.xanes.local_background`).

    A touching neighbour fills a large part of that ring; the sigma clipping does not reject it, and the plane
    fitted carries the neighbour's absorption edge under the whole particle (a dense field of 37 particles of two
    chemistries, f 0.1 and 0.9: touching particles of f 0.1 read E50 +0.32, -0.20 and -0.08 eV off their isolated
    siblings' median, 16, 6.8 and 1.4 sigma, LiNiO2 fractions 0.161, 0.039 and 0.037 against 0.1; with their
    neighbours left out -0.003, +0.023 and +0.048 eV, 0.1, 0.9 and 1.1 sigma, 0.113, 0.120 and 0.114, the isolated
    ones 0.109-0.117). Each other particle's mask (its consensus over the frames its XANES would use) is placed where it lies, relative
    to this particle, in every frame this particle's XANES may use (at the integer offsets either side of its
    displacement), the union grown by :data:`NEIGHBOUR_GROW_PX`. ``prints``: the particles' :func:`_footprints`
    (the masks placed for the ``overlap`` flag: resampled once for both).
    """
    n_p = len(located)
    if prints is None:
        return [None] * n_p
    overlap_or_disagree = FRAME_FLAGS["disagree"] | FRAME_FLAGS["overlap"]
    out = []
    for i in range(n_p):
        mi, oi, si = prints[i]
        hi, wi = mi.shape
        v = vouched[i]
        frames = v.usable & ((np.asarray(v.flags).astype(np.uint16) & overlap_or_disagree) == 0)
        if not frames.any():
            frames = np.ones(len(si), bool)
        taken = np.zeros((hi, wi), bool)
        for j in range(n_p):
            mj, oj, sj = prints[j]
            if j == i or not mj.any():
                continue
            hj, wj = mj.shape
            d = (oj - oi + sj - si)[frames]
            d = d[np.isfinite(d).all(axis=1)]
            if not d.size:
                continue
            near = (d[:, 0] > -hj - NEIGHBOUR_GROW_PX) & (d[:, 0] < hi + NEIGHBOUR_GROW_PX)
            near &= (d[:, 1] > -wj - NEIGHBOUR_GROW_PX) & (d[:, 1] < wi + NEIGHBOUR_GROW_PX)
            if not near.any():
                continue
            d = d[near]
            offsets = np.unique(np.concatenate([np.floor(d), np.ceil(d)]).astype(int), axis=0)
            for dy, dx in offsets:
                y0, y1, x0, x1 = max(dy, 0), min(dy + hj, hi), max(dx, 0), min(dx + wj, wi)
                if y0 < y1 and x0 < x1:
                    taken[y0:y1, x0:x1] |= mj[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        if taken.any():
            taken = ndimage.binary_dilation(taken, iterations=NEIGHBOUR_GROW_PX)
            out.append(taken)
        else:
            out.append(None)
    return out


#: Stands in a particle's note on its own motion measured against the matrix's (:func:`_finish_particle`) where
#: :func:`_quote_reported_own_motion` puts the own motion the run reports (tracks.csv, motion_summary.csv), known
#: only once every particle is followed: the two differ (a window wrinkle taken for the matrix, reduced default
#: scene: measured 1.00 px, reported 0.22 px for a particle truly still).
OWN_MOTION_REPORTED = "its own motion as reported: motion_summary.csv"


def _finish_particle(
    loc: _Located,
    v: VouchedPositions,
    od,
    energies,
    options,
    references,
    blur=None,
    exclude=None,
    overlaps=None,
    neighbours=None,
    gaps=(),
):
    """A particle's :class:`ParticleResult`: aligned, its mask, its XANES (``(result, centres of mass, norm)``).

    ``exclude``: frames left out of every particle's XANES; ``overlaps``: ``{other particle: frames}`` where
    another tracked particle lies over this one (:func:`_overlaps`, flagged ``overlap``), named in its notes;
    ``neighbours``: the pixels of its aligned window where other tracked particles lie (:func:`_neighbour_pixels`),
    left out of the ring of its local background; ``gaps``: the wide patches of input pixels without a value
    (``(frame, pixels)``, :func:`_flag_filled_pixels`), whose pixels are left out of its XANES's check of the
    frames' order (``filled`` of :func:`xanestrack.xanes.analyse_particle`).
    """
    n = od.shape[0]
    pid, seg = loc.pid, loc.seg
    radius, half, ref_frame = loc.radius, loc.half, loc.ref_frame
    notes = []
    if not v.located.any():
        notes.append("the particle was measured in no frame: not aligned")
    if loc.unseparated_motion is not None:
        notes.append(
            f"not separated from the matrix behind it (its motion against the matrix's measured "
            f"{loc.unseparated_motion:.2f} px, separated from {MIN_OWN_MOTION:g} px; {OWN_MOTION_REPORTED}): the matrix pulls it towards the common motion, so a sub-pixel motion of "
            "its own is reported in part only (0.33-0.94 of it on the stress family, README: how much of a "
            "particle's own motion is reported)"
        )
    if loc.unmixed_motion is not None and loc.unmixed_still:
        notes.append(
            f"moving with the matrix behind it (its motion against the matrix's {loc.unmixed_motion:.2f} px before the "
            f"matrix was subtracted, not told from the noise; {OWN_MOTION_REPORTED}): the "
            "matrix, whose share of its faint pre-edge frames changes across the edge, biased them; the matrix was told "
            "apart from it by its absorption edge (the particle's contrast changes across the edge, the matrix's does "
            "not) and subtracted, which moved the positions beyond their noise, before it was followed again"
        )
    elif loc.unmixed_motion is not None:
        notes.append(
            f"moving on its own by {loc.unmixed_motion:.2f} px against the matrix before the matrix was subtracted "
            f"({OWN_MOTION_REPORTED}), too little to tell it from the matrix behind it by that motion: the matrix was told apart from it by its absorption edge (the particle's contrast changes across "
            "the edge, the matrix's does not) and subtracted before it was followed again: its own motion is "
            "reported at 0.64-1.00 of it on the stress family (median 0.93; 0.80 without), read it as a lower bound"
        )
    if loc.separation_undone is not None:
        change, z = loc.separation_undone
        notes.append(
            f"its separation from the matrix behind it was undone: it moved the positions by {change:.2f} px RMS, "
            f"{z:.1f} times their noise (more than {SEPARATION_MAX_CHANGE_Z:g}: no pull of the matrix is that large "
            "for a particle measured that precisely; a touching neighbour can mislead the separation), so the "
            "first pass's positions are kept"
        )
    if loc.mask_missed is not None:
        notes.append(
            f"outlined by the classical segmenter: the learned one missed {100 * loc.mask_missed:.1f} % of the particle "
            "seen in its mean window (a lobe or an outline unlike those it was trained on)"
        )
    if loc.mask_turned is not None:
        notes.append(
            f"outlined by the classical segmenter: the learned one's outline of the particle moved by "
            f"{loc.mask_turned[0]:.2f} px with the window's orientation (over {loc.mask_turned[1]} flipped and "
            "transposed windows), which would have moved its positions by about as much"
        )
    n_examined, n_seen = int(loc.examined.sum()), int((loc.detected & loc.examined).sum())
    n_irregular = int(loc.track["irregular"].fillna(False).astype(bool).sum()) if "irregular" in loc.track else 0
    if n_irregular:
        notes.append(
            f"detected in only {n_seen} of the {n_examined} frames examined, and outlined in its place as one "
            f"irregular body (not convex, rejected as a particle) in {n_irregular} more: kept, and followed from "
            "where it was seen through the other frames"
        )
    elif n_examined and n_seen < options.match.min_track_fraction * n_examined:
        # the frames examined where it was missed as it lay outside the field (entering or leaving it)
        n_away = int(np.sum(loc.examined & ~loc.detected & ((v.flags & FRAME_FLAGS["out_of_view"]) > 0)))
        if n_seen >= options.match.min_track_fraction * (n_examined - n_away):
            notes.append(
                f"detected in only {n_seen} of the {n_examined} frames examined: out of the field (or cut by its "
                f"border) in {n_away} of the {n_examined - n_seen} it was missed in, as it enters or leaves the "
                "field; followed from where it was seen through the other frames"
            )
        else:
            notes.append(
                f"detected in only {n_seen} of the {n_examined} frames examined: a faint particle, kept as nothing else "
                "was seen where it was missed, and followed from where it was seen through the other frames"
                + (
                    f" ({n_away} of the frames it was missed in it lay out of the field or across its border)"
                    if n_away
                    else ""
                )
            )
    disagree = (v.flags & FRAME_FLAGS["disagree"]) > 0
    by_motion = (v.flags & FRAME_FLAGS["by_motion"]) > 0
    if by_motion.any():
        notes.append(
            f"{_count(int(by_motion.sum()), 'frame')} vouched for by the scan's motion where the centre of mass did not (its "
            "outline strays where its chemistry is mixed, across the edge, or where it is faint): the edge estimate "
            f"lies within {options.agreement_px:g} px of the other particles' motion plus its own, interpolated "
            "from the frames vouched for on either side"
        )
    if disagree.any():
        away = disagree & ((v.flags & FRAME_FLAGS["out_of_view"]) > 0)  # nothing whole to measure there
        why = "the edge correlation and the centre of mass disagree, or only one measured"
        # frames measured both ways where no other frame was: the two estimates' offset is set by the frame
        # itself, so it is compared with nothing (NaN agreement, register._edge_agreement), not "0 px"
        both = v.usable & loc.measured
        agreement = np.asarray(v.agreement, float)
        alone = disagree & both & ~np.isfinite(agreement)
        if alone.any():
            why += (
                f", or both measured in {_frame_runs_text(alone, energies)} but in no other frame: their offset "
                "there is compared with nothing (agreement not compared)"
            )
        # with few frames the reference frame is compared with the others alone, its agreement theirs: within
        # the threshold yet not vouched for where they are not (register._agreeing), which "disagree" does not say
        if (
            both.sum() < MEDIAN_OFFSET_FRAMES
            and disagree[ref_frame]
            and both[ref_frame]
            and agreement[ref_frame] <= options.agreement_px
        ):
            why += (
                f"; {_frame_runs_text(np.arange(n) == ref_frame, energies)}, the frame the edge estimate is relative "
                f"to, has no agreement of its own (its {agreement[ref_frame]:.2f} px is the other frames' with it) and "
                "is not vouched for where they are not"
            )
        if away.any():
            rest = int((disagree & ~away).sum())
            why = (
                f"{'in ' + str(int(away.sum())) + ' of them ' if rest else ''}the particle is out of the field or cut "
                f"by its border ({_frame_runs_text(away, energies)}: it enters or leaves the field, or lies at its edge)"
                + (f"; in the other {rest} {why}" if rest else "")
            )
        notes.append(f"{_count(int(disagree.sum()), 'frame')} not vouched for: {why}")
    overlapped = (np.asarray(v.flags).astype(np.uint16) & FRAME_FLAGS["overlap"]) > 0
    if overlaps:
        notes.append(_overlap_note(overlaps, energies))
    positions = v.positions
    size = 2 * half + 1
    origin, shifts, amasks = _aligned_masks(loc, v)
    aligned = resample_windows(od, shifts, origin, (size, size), order=options.interpolation_order)
    chem = aligned
    if loc.matrix is not None and options.subtract_matrix:
        chem = aligned - _matrix_windows(loc.matrix, origin, shifts, size)
        notes.append(MATRIX_SUBTRACTED_NOTE)
    if blur is not None:
        chem = _blur_frames(chem, blur)  # each frame to the scan's coarsest resolution (_resolution_blur)
    # frames whose position is not measured are kept (interpolated, flagged) but not used; nor those another
    # particle lies over (their positions are vouched for, by_motion included, but not their spectra)
    candidates = v.usable & ~disagree & ~overlapped
    if exclude is not None:  # frames left out of every particle's XANES (blurred: _blurred_frames)
        candidates = candidates & ~exclude
    use, mask = _chemistry_frames(aligned, amasks, candidates)
    n_pieces, n_cut, pieces_note = _pieces_note(loc.track, energies, mask, pid)
    if pieces_note:
        notes.append(pieces_note)
    with warnings.catch_warnings():  # a frame with no finite pixel in the mask: NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_spec = np.array([np.nanmean(a[mask]) if mask.any() else np.nan for a in chem])
    # frames not vouched for but measured (by the edge estimate or the centre of mass, in the field, not an outlier
    # in time, nothing over it, not excluded): they may stand in for the pre-edge alone where the frames vouched for
    # hold too few pre-edge energies (a faint particle's stray centre of mass, or no mask of it in its faintest
    # frames: xanes._pre_edge_from_unvouched). Their own masks are not used (the particle's mask over its frames
    # used is), nor are they in its shape, size or edge width (_measured_frames)
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"] | FRAME_FLAGS["out_of_view"]
    measured_only = v.located & disagree & ~overlapped & ((v.flags & unmeasured) == 0)
    if exclude is not None:
        measured_only = measured_only & ~exclude
    stand_in = measured_only & np.isfinite(mean_spec)
    # the pixels filled from a patch's rim in any frame the analysis may use, those standing in for the pre-edge
    # included: over the frames vouched for alone, a patch in a stand-in frame was not filled to the analysis (its
    # pixels counted in the check that the frames are in the order of the energies)
    filled, _ = _filled_on_grid(origin, shifts, mask.shape, gaps, use | stand_in)

    xr = xanes.analyse_particle(
        chem,
        mask,
        energies,
        usable=use & np.isfinite(mean_spec),
        references=references,
        agreement=v.agreement,
        keep_norm=options.clusters > 0,
        left_out=(
            "their positions are not vouched for (the edge estimate and the centre of mass disagree by more than "
            f"{options.agreement_px:g} px, or only one was measured) or not measured, or the particle leaves the frame"
            + (", or another tracked particle lies over it (flag overlap)" if (overlapped & v.usable).any() else "")
            + "; no spectrum is made from them"
            if mask.any()
            # an empty mask leaves every frame out whatever its position: the real SSRL pair's particle 13 was said
            # to be left out as "not vouched for", then "vouched for in every frame"
            else "the particle's mask over the frames is empty (no outline of it agreed between its frames' windows): "
            "no pixel to make a spectrum of"
        ),
        background_exclude=neighbours,
        filled=filled if filled.any() else None,
        pre_usable=stand_in,
        **_xanes_settings(options),
    )
    notes += xr.pop("notes")
    norm = xr.pop("norm", None)
    return (
        ParticleResult(
            particle=int(pid),
            positions=positions,
            shifts=shifts,
            origin=np.asarray(origin, int),
            aligned=aligned,
            masks=amasks,
            mask=mask,
            frame_flags=np.asarray(v.flags).astype(np.uint16),
            mean_spectrum=mean_spec,
            radius=radius,
            **xr,
            unaligned_ends=resample_windows(od, np.zeros((n, 2)), origin, (size, size), order=0, frames=[0, n - 1]),
            notes=tuple(notes),
            agreement=v.agreement,
            reference_frame=ref_frame,
            edge_positions=v.edge_positions,
            background_exclude=neighbours,
            touching_pieces=n_pieces,
            touching_pieces_frames=n_cut,
        ),
        seg.com,
        norm,
    )


#: how a particle's note on its outline found in pieces begins (the run note gathers them: :func:`_pieces_run_note`)
PIECES_NOTE = "its outline was cut into"


#: :func:`_pieces_note`: a mask whose equivalent radius is below this share of the outline the detector kept whole
#: holds a part of it only (the segmenter kept one of the touching particles): the others lie beside it, untracked
PIECES_MASK_SHARE = 0.75


def _pieces_note(track, energies, mask=None, pid: int | None = None) -> tuple[int, int, str]:
    """``(pieces, frames, note)`` of a particle whose outline the detector cut into pieces of a particle's size in
    some of the frames it examined and kept whole in the others (``pieces`` / ``pieces_at`` of
    :func:`xanestrack.match.link_detections`): the most pieces in a frame, the frames so cut and the particle's note
    (``(0, 0, "")`` where never). Touching particles with long contacts are kept whole as one irregular particle
    where no neck is narrow: a trio of particles (radius 94, 65 and 57 px, their E50s 0.57 eV apart, sliding by up
    to 3.5 px) was reported as one 128-px particle vouched for in 50 of 50 frames, its motion 0.6-1.6 px RMS off
    each member's and one mean E50, and nothing said that it might be several (cut into two in 1 of 8 key frames).
    Where its ``mask`` (the particle's, over its frames) is much smaller than that outline
    (:data:`PIECES_MASK_SHARE`), the note says that it holds a part of it only: the pieces beside it were not tracked
    (an agglomerate of three, r 50, 40 and 38 px, reported as its largest member, the others lost: its E50 0.47 eV
    low, the matrix behind it estimated over them). ``pid``: the particle, named in the rejected pieces' reason.
    """
    if "pieces" not in track or not len(track):
        return 0, 0, ""
    t = track.sort_values("frame")
    n = t["pieces"].fillna(0).to_numpy(int)
    cut = np.flatnonzero(n >= 2)
    if not cut.size:
        return 0, 0, ""
    examined = t["examined"].to_numpy(bool) if "examined" in t else np.ones(len(t), bool)
    frames = t["frame"].to_numpy(int)
    at = t["pieces_at"].to_numpy(object) if "pieces_at" in t else np.full(len(t), "", object)

    def where(j):
        parts = [q.split(",") for q in str(at[j]).split(";") if q]
        return " and ".join(f"({float(y):.0f}, {float(x):.0f}) r {float(r):.0f}" for y, x, r in parts)

    shown = "; ".join(f"frame {frames[j]} ({energies[frames[j]]:.1f} eV): at {where(j)}" for j in cut[:3])
    more = f"; {cut.size - 3} more" if cut.size > 3 else ""
    most = int(n.max())
    detected = t["detected"].to_numpy(bool) & (n == 0)
    whole = float(np.nanmedian(t["radius"].to_numpy(float)[detected])) if detected.any() else np.nan
    own = float(np.sqrt(np.sum(mask) / np.pi)) if mask is not None and np.any(mask) else np.nan
    if own < PIECES_MASK_SHARE * whole:
        what = (
            f"its mask holds a part of that outline only (radius {own:.0f} of {whole:.0f} px): the other touching "
            "particles lie beside it, not tracked (in the surroundings its local background and the matrix behind "
            "it are taken from)"
        )
    else:
        what = (
            f"it may be {most} or more touching particles reported as one, its position, motion, size and chemistry a "
            "mix of theirs (touching particles whose contact is long, not a narrow neck)"
        )
    return (
        most,
        int(cut.size),
        f"{PIECES_NOTE} {most} pieces of a particle's size in {cut.size} of the {int(examined.sum())} frames "
        f"examined (y, x in px; radius r: {shown}{more}) and kept whole as one irregular particle where detected: "
        f"{what}; the pieces, seen too seldom, were not tracked (rejected.csv: "
        f"short_track_piece_of_{'N' if pid is None else pid})",
    )


def _pieces_run_note(particles) -> str:
    """The run note naming the particles whose outline was found in pieces in some frames (:func:`_pieces_note`)."""
    ids = [p.particle for p in particles if int(getattr(p, "touching_pieces", 0) or 0) >= 2]
    if not ids:
        return ""
    return (
        f"the outline{'s' if len(ids) > 1 else ''} of {len(ids)} of {len(particles)} particles "
        f"({', '.join(map(str, ids))}) {'were' if len(ids) > 1 else 'was'} cut "
        "into pieces of a particle's size in some of the frames examined and kept whole in the others: each may be "
        "touching particles reported as one (long contacts, no narrow neck), its position, motion, size and E50 a mix "
        "of theirs, or one of them with the others beside it not tracked; each particle's note names the pieces "
        "(touching_pieces and touching_pieces_frames in the particles' table and figures/uncertainty.csv)"
    )


#: frames examined by the detector at least (all of a shorter scan): with every 12th of a 15-energy
#: scan (3 key frames) a particle must be seen in 2 of 3 to be kept, and the field moves 12 steps
#: between them: the default scene, 15 of its energies, drifting 5 px per energy, lost 3 of its 9
#: particles, each seen in 1 of the 3 (all 9 tracked on every frame, 0.06-0.41 px)
MIN_KEY_FRAMES = 8


def key_frame_step(n_frames: int, detect_every: int) -> int:
    """The detector's step through the frames: ``detect_every``, or less, so that a scan of
    ``n_frames`` is examined on :data:`MIN_KEY_FRAMES` frames at least (the last one always)."""
    return max(1, min(int(detect_every), (int(n_frames) - 1) // (MIN_KEY_FRAMES - 1)))


def run_pipeline(
    stack: Stack,
    *,
    options: PipelineOptions = PipelineOptions(),
    detector=None,
    segmenter=None,
    references=None,
    progress=None,
    recalibrate=None,
) -> PipelineResult:
    """Find, track, align and analyse every isolated particle of an energy scan.

    Parameters
    ----------
    stack : Stack
    options : PipelineOptions
    detector : callable(od[, frames=...]) -> DataFrame, optional
        Default: the classical detector with ``options.detect``. With
        ``options.detect_every > 1`` it is called with ``frames=`` the key frames. One
        made with other DetectOptions (a LearnedDetector) runs with ``options.detect``
        (:func:`xanestrack.detect.detector_with_options`).
    segmenter : callable(rois) -> masks, optional
        Default: the classical segmenter with ``options.segment``.
    references : dict of name -> ReferenceSpectrum, optional
        For the linear combination fit, two or more (one is refused: the fractions sum to
        one); default the shipped Ni references when the scan covers the Ni K-edge, else none.
    progress : callable(stage: str, done: int, total: int), optional
    recalibrate : callable(particles, energies_ev) -> ndarray or None, optional
        Called once every particle is analysed, with their :class:`ParticleResult` s and
        the energies: a new energy axis (e.g. from a particle whose edge energy is known,
        ``run --known-edge``), on which every particle's XANES is analysed again from the
        same windows (matrix subtracted, resolution matched, frames and masks as before;
        registration does not depend on the energies' values), or None to keep the axis.

    Returns
    -------
    PipelineResult

    Notes
    -----
    Where references (the shipped or the caller's) fit the fractions and the axis is not calibrated (no
    ``recalibrate``, and no ``stack.metadata["energy_calibration"]``: the record of a
    calibration applied to ``stack.energies_ev`` before the run, as ``run --energy-reference``
    does), a run note says how far each 0.5 eV of calibration error moves the fractions
    (:func:`_uncalibrated_note`). The rim of a particle whose own size or shape changes across the
    scan is flagged and left out of its means (:func:`_flag_moving_rims`).
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a xanestrack Stack, got {type(stack).__name__}")
    _check_options(options, stack.energies_ev)
    timings = {}
    notes = []
    blank = []
    gaps = []  # (frame, pixels) of the wide patches without a value, filled from their rim
    od, n_fixed = sanitize_stack(stack.od, source=stack.metadata.get("source", "stack"), blank=blank, gaps=gaps)
    energies = np.asarray(stack.energies_ev, float)
    same = duplicate_frames(od)
    if same:
        a, b = same[0]
        raise ValueError(
            f"{stack.metadata.get('source', 'stack')}: frames {a} and {b} ({energies[a]:.2f} and {energies[b]:.2f} eV) "
            f"are the same image pixel for pixel{f' (and {len(same) - 1} more pairs)' if len(same) > 1 else ''}: "
            "one frame written twice, under two energies? Remove the wrong one with its energy"
        )
    if n_fixed:
        notes.append(f"{n_fixed} NaN/inf pixels replaced by their local median")
    if blank:
        notes.append(
            f"{len(blank)} frame{'s' if len(blank) > 1 else ''} more than half NaN/inf, carried as frames without an "
            f"image (no particle measured there): {_frame_list(blank, energies)}"
        )
    if len(energies) < options.min_xanes_energies:
        notes.append(
            f"{len(energies)} frame(s): positions and sizes only, no XANES (needs {options.min_xanes_energies} energies)"
        )
    notes += [n for n in (_frame_means_note(od),) if n]
    default_references = references is None
    no_references = None
    if not default_references:
        references, more = _user_references(references, energies)
        notes += more
    else:
        references = _default_references(energies)
        if not references and len(energies) >= options.min_xanes_energies:
            no_references = _no_references_note(energies)
            notes.append(no_references)

    def prog(stage):
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)

    def tell(stage, done, total):
        # every stage that takes time says so (the detector given, matching, locating, the matrix, vouching):
        # 100 particles passed 26 of 36 s without a word, the one bar shown covered 2 s of them
        if progress is not None:
            progress(stage, done, total)

    t = time.perf_counter()
    n_frames = od.shape[0]
    if int(options.detect_every) < 1:
        raise ValueError(f"options.detect_every must be >= 1, got {options.detect_every}")
    key = None
    step = key_frame_step(n_frames, options.detect_every)
    if step > 1:
        key = sorted(set(range(0, n_frames, step)) | {n_frames - 1})
    if detector is None:
        detections = detect_stack(od, options=options.detect, frames=key, progress=prog("detect"))
    else:
        from .detect import detector_with_options

        detector = detector_with_options(detector, options.detect)  # the options result.options records
        import inspect

        try:  # the learned detector reports its frames as it goes; a callable of one's own may not take it
            takes = progress is not None and "progress" in inspect.signature(detector).parameters
        except (TypeError, ValueError):
            takes = False
        more = {"progress": prog("detect")} if takes else {}
        detections = detector(od, **more) if key is None else detector(od, frames=key, **more)
        if not takes:
            n_det = n_frames if key is None else len(key)
            tell("detect", n_det, n_det)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    tell("match", 0, 1)
    tracks, rejected_tracks, common = link_detections(detections, od, options=options.match, frames=key)
    tell("match", 1, 1)
    timings["match"] = time.perf_counter() - t
    if options.reference_particle is not None and len(tracks):
        ids = sorted(int(v) for v in tracks["particle"].unique())
        if int(options.reference_particle) not in ids:  # refused after every particle was analysed, before
            raise ValueError(
                f"`reference_particle` {options.reference_particle} is not among the tracked particles {ids}"
            )
    n_examined = n_frames if key is None else len(key)
    notes += [n for n in (_still_note(rejected_tracks), _short_tracks_note(rejected_tracks, n_examined, tracks)) if n]

    t = time.perf_counter()
    seg = segmenter if segmenter is not None else _default_segmenter(options.segment)
    particles = []
    norms = []
    com_rows = []
    pids = sorted(tracks["particle"].unique()) if len(tracks) else []
    threads = _threads(options)
    # one particle at a time: locating holds a particle's whole window stack, masks and labels
    # (~100 MB at 460^2 with 9 particles); two at once broke the memory budget (issue 12)
    fallback = _default_segmenter(options.segment) if segmenter is not None else None
    located = []
    unlit = _unlit_field(stack, od.shape[1:])
    for pid in pids:  # 32 s of a 91 s profiled run at 100 particles: said particle by particle
        located.append(_locate_particle(pid, tracks[tracks["particle"] == pid], od, seg, options, fallback, unlit))
        tell("locate", len(located), len(pids))
    texture = float("inf")
    if options.separate_matrix and located:
        texture = matrix_texture_ratio(
            od,
            np.stack([_positions(loc) for loc in located]),
            [loc.radius for loc in located],
        )
        if texture < MATRIX_MIN_TEXTURE:
            notes.append(
                f"the matrix behind the particles is too faintly textured to pull them (its texture {texture:.4f} of the "
                f"particles' contrast, below {MATRIX_MIN_TEXTURE:g}): not separated from it"
            )
    if options.separate_matrix and located and texture >= MATRIX_MIN_TEXTURE:
        t_m = time.perf_counter()
        tell("matrix", 0, 1)
        refined_ids, unmixed_ids, shaped_ids = _refine_on_matrix(located, od, energies, options)
        tell("matrix", 1, 1)
        timings["matrix"] = time.perf_counter() - t_m
        if refined_ids:
            notes.append(
                f"{_count(len(refined_ids), 'particle')} moving on their own followed again with the matrix behind them subtracted"
            )
        if unmixed_ids:
            notes.append(
                f"{len(unmixed_ids)} particles not separated from the matrix by their motion followed again, the matrix "
                "behind them told apart from them by their absorption edge and taken out (where their own motion stood "
                "out of its noise, or the matrix so estimated stood out of its own and moved their positions beyond "
                "theirs)"
            )
        if shaped_ids:
            notes.append(
                f"{_count(len(shaped_ids), 'particle')} followed again apodised by their own shape (moving on their own, by too "
                "little to separate them from the matrix)"
            )
    vouched = []
    for loc in located:  # one step more for the smoothing, the motion's voucher and the overlaps below
        vouched.append(_vouch(loc, common, od, options))
        tell("vouch", len(vouched), len(located) + 1)
    if "common_ambiguous" in tracks and tracks["common_ambiguous"].fillna(False).astype(bool).any():
        amb = np.unique(tracks.loc[tracks["common_ambiguous"].fillna(False).astype(bool), "frame"].to_numpy(int))
        notes.append(
            f"the common step between key frames could not be told in {_count(len(amb), 'frame')} "
            f"({_frame_list(amb, energies)}): the field shows the same pattern at two shifts (alike particles one "
            "spacing apart, no matrix texture to tell them); no position is vouched for there (flagged "
            "position_outlier and disagree); detect in more frames (--detect-every) to measure them"
        )
    if options.smooth_tracks and len(vouched) >= 2:
        vouched, st, n_moved = _smooth(vouched, common, options.agreement_px)
        moved = (
            f"; {n_moved} frames not vouched for where the smoothing moved the position more than "
            f"{options.agreement_px:g} px from the one measured"
            if n_moved
            else ""
        )
        alt = np.flatnonzero(st.alternating) if st.alternating is not None else np.zeros(0, int)
        n_own = n_frames - alt.size  # the frames each own motion is smoothed over
        if st.smoothed.any() and np.nanmedian(st.dof) >= 0.75 * n_own:
            # the residuals of a smooth that keeps almost every frame measure no noise: none is quoted
            notes.append(
                f"positions of {int(st.smoothed.sum())} particles hardly smoothed across the energies: their own "
                f"motion wanders more from frame to frame than their positions are noisy ({np.nanmedian(st.dof):.0f} "
                f"degrees of freedom of {n_own} frames per own motion, median over the particles)" + moved
            )
        elif st.smoothed.any():
            notes.append(
                f"positions of {int(st.smoothed.sum())} particles smoothed across the energies (their own motion; the "
                f"motion they share kept frame by frame): measurement noise {np.nanmedian(st.sigma):.3f} px "
                f"(median over the particles), {np.nanmedian(st.dof):.0f} degrees of freedom of "
                f"{n_own} frames per own motion" + moved
            )
        if alt.size:
            # two passes over the energies sorted by energy: the frame order is not the time order there, and a
            # smooth across the frames put every particle halfway between its two passes' positions
            sizes = st.alternation_px[np.isfinite(st.alternation_px)]
            apart = f"{_span(sizes)} px apart (median over those frames; over the particles)" if sizes.size else "apart"
            notes.append(
                f"the particles' positions alternate from frame to frame in {_frame_runs_text(st.alternating, energies)}: "
                f"consecutive frames {apart}, as the "
                "frames of two passes over the energies sorted by energy would be (each particle moved on between "
                "the passes): the positions were not smoothed across the energies there and stand as measured. "
                "Frames taken at different times: the XANES mixes whatever changed in the sample between the "
                "passes (charging, beam damage); to tell, run each pass on its own"
            )
    # the rule against a frame agreeing almost alone, applied again once every test has had its say
    n_lone = 0
    for j, v in enumerate(vouched):
        flags, n = withdraw_lone_agreements(v.flags)
        if n:
            vouched[j] = dataclasses.replace(v, flags=flags)
            n_lone += n
    if n_lone:
        notes.append(
            f"{n_lone} frames not vouched for that agreed almost alone among their +-3 neighbours once the other "
            "tests had withdrawn theirs (an agreement almost alone is chance)"
        )
    if options.motion_voucher_frames > 0 and len(vouched) >= 3:
        vouched, n_motion = _vouch_by_motion(vouched, located, energies, options)
        if n_motion:
            notes.append(
                f"{n_motion} frames whose centre of mass did not vouch for them vouched for by the scan's motion "
                f"(their edge estimate within {options.agreement_px:g} px of the other particles' motion there plus "
                "their own, interpolated from the frames vouched for on either side; flag by_motion)"
            )
    keep = _distinct_particles(located, vouched)
    if len(keep) < len(located):
        gone = [located[j].pid for j in range(len(located)) if j not in keep]
        located, vouched = [located[j] for j in keep], [vouched[j] for j in keep]
        notes.append(
            f"{_count(len(gone), 'track')} ({', '.join(map(str, gone))}) followed onto a particle another track follows: "
            "left out, the particle reported once"
        )
    # frames another tracked particle lies over: their positions stand, their spectra are both particles'
    # (a 12-px particle passing over a still 22-px one: the still one's E50 +0.91 eV median, 73 % of its pixels
    # more than 0.5 eV off, unflagged); left out of its XANES after every voucher has had its say
    prints = _footprints(located, vouched, threads)  # each particle's mask placed once, for both below
    # a track inside another tracked particle's mask from the start is that particle's part tracked twice (the SSRL
    # pair: a lobe of one agglomerate, vouched for 2/2, took one of three places fixing the common scale, 0.11 % off)
    inside = _inside_other_particles(located, vouched, prints)
    inside_rows = []
    if inside:
        notes.append(_inside_note(inside, located))
        for i, (j, _) in sorted(inside.items()):
            loc = located[i]
            y, x = np.asarray(loc.centres, float)[0]
            n_det = int(np.sum(np.asarray(loc.detected) & np.asarray(loc.examined)))
            inside_rows.append((y, x, f"inside_particle_{located[j].pid}", n_det, float(loc.radius)))
        keep = [j for j in range(len(located)) if j not in inside]
        located, vouched = [located[j] for j in keep], [vouched[j] for j in keep]
        prints = [prints[j] for j in keep] if len(keep) >= 2 else None
    vouched, overlaps = _overlaps(located, vouched, prints)
    neighbours = _neighbour_pixels(located, vouched, prints)  # left out of their local backgrounds' rings
    if vouched:
        tell("vouch", len(vouched) + 1, len(vouched) + 1)
    done = [0]
    lock = threading.Lock()

    def finish(j):
        out = _finish_particle(
            located[j],
            vouched[j],
            od,
            energies,
            options,
            references,
            overlaps=overlaps[j],
            neighbours=neighbours[j],
            gaps=gaps,
        )
        if progress is not None:
            with lock:
                done[0] += 1
                progress("particles", done[0], len(located))  # not len(pids): tracks were left out since
        return out

    def finish_again():
        """Every particle's XANES analysed again (the frames matched in resolution, or a new energy axis)."""
        again = [0]

        def one(j):
            out = _finish_particle(
                located[j],
                vouched[j],
                od,
                energies,
                options,
                references,
                blur=resolution_blur,
                exclude=blurred,
                overlaps=overlaps[j],
                neighbours=neighbours[j],
                gaps=gaps,
            )
            if progress is not None:
                with lock:
                    again[0] += 1
                    progress("again", again[0], len(located))
            return out

        return _map(one, range(len(located)), threads)

    finished = _map(finish, range(len(located)), threads)
    resolution = _resolution_change([f[0] for f in finished], len(energies), energies)
    resolution_blur = None
    if resolution is not None and resolution.change >= RESOLUTION_CHANGE_PX:
        if options.match_resolution:
            resolution_blur = _resolution_blur(resolution)
    blurred_frames = _blurred_frames(resolution) if resolution is not None else np.zeros(0, int)
    blurred = np.isin(np.arange(len(energies)), blurred_frames) if blurred_frames.size else None
    if resolution_blur is not None or blurred is not None:
        finished = finish_again()
    # before a --known-edge calibration measures its particle's mean, so that it is over the pixels trusted
    finished = _with_filled_pixels(_with_moving_rims(finished, energies, gaps, resolution_blur), gaps, energies)
    if recalibrate is not None:
        calibrated = recalibrate([f[0] for f in finished], energies)
        if calibrated is not None:
            calibrated = np.asarray(calibrated, float)
            if calibrated.shape != energies.shape or not (np.diff(calibrated) > 0).all():
                raise ValueError(f"recalibrate: expected {len(energies)} increasing energies, got {calibrated}")
            energies = calibrated
            if default_references:  # the scan may now cross the references' edge, or no longer
                references = _default_references(energies)
                if no_references is not None:
                    notes.remove(no_references)
                if not references and len(energies) >= options.min_xanes_energies:
                    notes.append(_no_references_note(energies))
            finished = _with_moving_rims(finish_again(), energies, gaps, resolution_blur)
            finished = _with_filled_pixels(finished, gaps, energies)
    edgeless = _edgeless_faint_tracks(located, [f[0] for f in finished], energies, options)
    left_out = list(inside_rows)
    if edgeless:
        gone = [located[j] for j in edgeless]
        gone_results = [finished[j][0] for j in edgeless]
        notes.append(_edgeless_note(gone, gone_results, located, options.area_tolerance))
        left_out += _left_out_rows(gone, gone_results, located, options.area_tolerance)
        keep = [j for j in range(len(located)) if j not in edgeless]
        located, vouched, finished = [located[j] for j in keep], [vouched[j] for j in keep], [finished[j] for j in keep]
        overlaps = [overlaps[j] for j in keep]
        # a particle's note names the tracks that lay over it; a faint track left out just now is said to be
        # (its frames stay left out: what lay over the particle there was seen, whatever it was)
        gone_ids = {loc.pid for loc in gone}
        for j, others in enumerate(overlaps):
            if gone_ids & set(others):
                pr, com_raw, norm = finished[j]
                said, now = _overlap_note(others, energies), _overlap_note(others, energies, gone_ids)
                notes_j = tuple(now if n == said else n for n in pr.notes)
                finished[j] = (dataclasses.replace(pr, notes=notes_j), com_raw, norm)
    if any(overlaps):
        ids = [located[j].pid for j in range(len(located)) if overlaps[j]]
        vouched_for = FRAME_FLAGS["overlap"] | FRAME_FLAGS["disagree"]
        n_left = sum(int((((v.flags & vouched_for) == FRAME_FLAGS["overlap"]) & v.usable).sum()) for v in vouched)
        notes.append(
            f"{_count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}) "
            f"overlapped by another tracked particle in some frames: {n_left} frames vouched for left out of their "
            "XANES, where their spectra are those of both (flag overlap; each particle's note names the other and "
            "the frames)"
        )
    for j, loc in enumerate(located):
        pr, com_raw, norm = finished[j]
        tr = loc.track
        pid = loc.pid
        particles.append(pr)
        norms.append(norm)
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
                    "com_agreement_px": vouched[j].com_agreement,
                    "density_agreement_px": vouched[j].density_agreement,
                    "flags": [flag_names(f) for f in pr.frame_flags],
                }
            )
        )
    timings["segment_register_xanes"] = time.perf_counter() - t
    particles, two_edges = _two_edges(particles, energies)
    if two_edges:
        notes.append(two_edges)
    # the shipped references only where a particle's edge is at theirs (a Co-only scan crossing 8340 eV took them by
    # its span); the stray-light, coarse-step and bias numbers only from references at the particles' edge, and
    # only for particles with edge energies (a withheld particle's shoulder note is of E50s it no longer has)
    if default_references and references:
        references = _default_references(energies, particles)
        if not references:
            notes.append(_no_references_note(energies, particles))
    measured = [p for p in particles if not _across_two_edges(p)]
    at_edge = _references_at_particles_edge(references, measured)
    particles = [
        dataclasses.replace(p, notes=tuple(n for n in p.notes if not n.startswith(SHOULDER_NOTE)))
        if _across_two_edges(p)
        else p
        for p in particles
    ]
    # light not absorbed (harmonics, stray light) bends thick pixels' edges low: measured from the particles' own
    # pre- to post-edge OD against their thickness; its thick pixels flagged (chemistry/stray)
    from .chemistry.stray import flag_stray_light

    particles, stray_note, _ = flag_stray_light(
        particles, energies, at_edge, background=_particles_background(particles, energies)
    )
    notes += [stray_note] if stray_note and measured else []
    unmeasured_note = _frames_without_particles(particles, energies)
    if unmeasured_note:
        notes.append(unmeasured_note)
    edge_width_table = None
    if blurred_frames.size:
        notes.append(_blurred_frames_note(resolution, blurred_frames, energies))
    if resolution is not None:
        if resolution.change >= RESOLUTION_CHANGE_PX:
            notes.append(_resolution_note(resolution, energies, resolution_blur))
        profile = _trend(resolution.widths, resolution)
        if profile is not None:
            edge_width_table = pd.DataFrame(
                {
                    "frame": np.arange(len(energies)),
                    "energy_ev": energies,
                    "width_change_px": profile,
                    "blur_px": resolution_blur if resolution_blur is not None else np.zeros(len(energies)),
                }
            )
    chemistry = None
    if options.clusters > 0 and particles:
        t = time.perf_counter()
        particles, chemistry = phase_mapping(particles, norms, energies, options=options)
        timings["phases"] = time.perf_counter() - t
        if chemistry["settings"]["note"]:
            notes.append(f"phase mapping: {chemistry['settings']['note']}")
    del norms

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
                "com_agreement_px",
                "density_agreement_px",
                "flags",
            ]
        )
    )
    ny, nx = od.shape[1:]
    fit = table[["particle", "frame", "y", "x"]].copy()
    # the common motion is fitted on vouched positions; where fewer than MIN_VOUCHED_FOR_FIT
    # particles are vouched for in most frames (e.g. real frames whose masks do not confirm
    # the edge estimate), on every measured position instead (recorded in the similarity)
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    finite = [np.isfinite(p.positions).all(axis=1) for p in particles]
    vouched = [((p.frame_flags & (unmeasured | FRAME_FLAGS["disagree"])) == 0) & f for p, f in zip(particles, finite)]
    fitted_on = "vouched positions"
    summary_frames = fit[["particle", "frame"]].copy()
    summary_frames["reliable"] = np.concatenate(vouched) if particles else np.zeros(0, bool)
    n_mostly = sum(v.mean() >= 0.5 for v in vouched)
    if n_mostly < MIN_VOUCHED_FOR_FIT:
        strict = vouched
        vouched = [((p.frame_flags & unmeasured) == 0) & f for p, f in zip(particles, finite)]
        fitted_on = "measured positions (too few particles vouched for)"
        added = sum(int((v & ~w).sum()) for v, w in zip(vouched, strict))
        if len(particles) >= 3 and added:
            notes.append(
                f"{n_mostly} of {len(particles)} particles vouched for in most of their frames (fewer than "
                f"{MIN_VOUCHED_FOR_FIT}): the motion all particles share is fitted robustly on every measured position, "
                f"{_count(added, 'frame')} not vouched for included; each particle's own motion in the summary counts "
                "only frames vouched for"
            )
    fit["reliable"] = np.concatenate(vouched) if particles else np.zeros(0, bool)
    measured = [((p.frame_flags & FRAME_FLAGS["interpolated"]) == 0) & f for p, f in zip(particles, finite)]
    # a particle's leading frames not vouched for with next to nothing absorbing where it lies later are not
    # measured: it was not there (deposited mid-scan) or not measurable. They counted as measured: a particle
    # appearing at frame 30 was given 11.94 px of own motion (truly none) from its frame-0 position of nothing, and
    # one growing from frame 5 pulled a 5.8 % magnification into the common motion (the default scene, seed 5)
    first_seen = [_first_seen(p, [q.positions for q in particles if q is not p], od) for p in particles]
    measured = [m & (np.arange(m.size) >= k) for m, k in zip(measured, first_seen)]
    fit["measured"] = np.concatenate(measured) if particles else np.zeros(0, bool)
    motion = compute_motion(
        fit,
        reference_particle=options.reference_particle,
        centre=((ny - 1) / 2, (nx - 1) / 2),
        scale_axis=energies if options.scale_model == "energy" else None,
        rotation=options.rotation,
    )
    similarity = motion.attrs.get("similarity")
    if similarity is not None:
        similarity.attrs["fitted_on"] = fitted_on
    particles = [
        dataclasses.replace(p, notes=(*p.notes, _first_seen_note(p.frame_flags, k, energies)))
        if 0 < k < len(energies)
        else p
        for p, k in zip(particles, first_seen)
    ]
    lone = lone_step(energies)
    if lone is not None:
        notes.append(
            f"{lone_step_words(energies, lone)} The frames are used as given"
            + (
                "; the magnification, fitted as one straight line in the energy, leans on that frame (a typo put a "
                "whole 1 % on one frame): --scale-model frame fits each frame's own"
                if options.scale_model == "energy"
                else ""
            )
        )
    ref_note = _reference_note(motion, options.reference_particle, len(energies))
    if ref_note:
        notes.append(ref_note)
    if len(particles) >= 3 and len(energies) >= 3:
        notes += _field_motion_notes(motion, energies, options)
        scale_note = _large_scale_note(similarity, motion)
        if scale_note:
            notes.append(scale_note)
    elif len(particles) >= 3 and len(energies) == 2:
        notes += [n for n in (_two_frame_scale_note(motion, similarity),) if n]
    if len(particles) == 1:
        notes.append(
            "one particle: the motion all particles share is its motion; its own (non-rigid) motion cannot be told "
            "from it and is not given"
        )
    elif len(particles) == 2:
        notes.append(
            "two particles: the motion they share is a translation, their mean; each one's own (non-rigid) motion is "
            "half their motion relative to each other (from three particles the shared motion is a similarity fitted "
            "robustly)"
        )
    if len(table):
        table = table.merge(motion.drop(columns=["y", "x"]), on=["particle", "frame"], how="left")
        sim = similarity[["frame", "common_dy", "common_dx", "scale"]].rename(columns={"scale": "common_scale"})
        if options.rotation:
            # the fitted turn (--rotation) was in results.h5 alone; positive counter-clockwise as the image is shown
            sim["common_rotation_deg"] = np.degrees(similarity["rotation_rad"].to_numpy(float))
        table = table.merge(sim, on="frame", how="left")
    # the summary of each particle's own motion over its frames vouched for, not over positions filled
    # in or measured wrong (a particle entering the field late, cut by the border: 9.1-9.8 px of own
    # motion that was not there)
    # (over the frames vouched for even where the shared motion had to be fitted on every measured position:
    # stress-all seed 2, a particle's largest own motion 3.81 px from a frame flagged disagree, 3.30 over its
    # frames vouched for)
    ratios = (
        peak_ratios(
            motion,
            reliable=summary_frames,
            noise_px=_position_noise(table, per_frame=True),
            position_noise=_particle_position_noise(table, summary_frames),
        )
        if len(motion)
        else pd.DataFrame()
    )
    notes += [n for n in (_still_field_note(ratios), _own_motion_noise_note(ratios)) if n]
    notes += _split_notes(similarity, ratios, motion)
    particles = _quote_reported_own_motion(particles, ratios)
    timings["motion"] = time.perf_counter() - t

    fused = None
    if options.fuse != "none" and particles:
        t = time.perf_counter()
        fused = fuse_particles(od, particles, common, frames=None if options.fuse == "all" else [0, od.shape[0] - 1])
        timings["fuse"] = time.perf_counter() - t
    if not particles:
        notes.append("no isolated particle was tracked through enough frames")
    untrusted = [p for p in particles if _means_untrusted(p)]
    if untrusted:
        # result.core_pixels then averages every core pixel: said, so that no mean passes for a trusted one
        notes.append(_untrusted_note(untrusted))
    notes += [
        n
        for n in (
            _coarse_edge_note(
                particles, energies, at_edge, shipped=default_references, edge_window=options.edge_window
            ),
            _rarely_vouched_note(particles),
        )
        if n
    ]
    notes += _particle_chemistry_notes(
        particles,
        len(energies),
        options.min_xanes_energies,
        calibrated=recalibrate is not None or bool(stack.metadata.get("energy_calibration")),
    )
    notes += [
        n
        for n in (
            _moving_rim_run_note(particles),
            _filled_run_note(particles, gaps, energies),
            _pieces_run_note(particles),
        )
        if n
    ]
    # a user's references too (they were left out: the same spectra as the shipped, given with --reference, lost the
    # note, though an offset of the scan's axis against theirs moves the fractions as much)
    if references and recalibrate is None and not stack.metadata.get("energy_calibration"):
        notes += [
            n
            for n in (
                _uncalibrated_note(
                    particles,
                    energies,
                    references,
                    options.lcf_window,
                    shipped=default_references,
                    edge_window=options.edge_window,
                ),
            )
            if n
        ]
    elif references and recalibrate is None:  # calibrated from a reference: the E50 check is still made
        notes += [
            n
            for n in (
                _calibrated_e50_note(
                    particles,
                    references,
                    stack.metadata["energy_calibration"],
                    energies,
                    edge_window=options.edge_window,
                ),
            )
            if n
        ]
    other_edge = _other_edge_references_note(particles, references)
    notes += [other_edge] if other_edge else []
    # on the final energies (after a --known-edge calibration), beside the references' own notes
    norm_bias, bias_note = _normalisation_bias(
        [p for p in particles if not _across_two_edges(p)], at_edge, energies, default_references, options
    )
    notes += [bias_note] if bias_note else []
    # that bias is the scan's energies': a particle normalised on fewer of them is moved otherwise (said, measured)
    particles, frames_note = _frames_bias(particles, at_edge, energies, options)
    notes += [frames_note] if frames_note else []
    rej = detections[~detections["isolated"]] if len(detections) else detections
    notes += [
        n
        for n in (
            _too_large_note(rej, options.detect.max_radius),
            _too_small_note(rej, options.detect.min_radius, n_examined),
        )
        if n
    ]
    return PipelineResult(
        energies_ev=energies,
        frame_shape=tuple(od.shape[1:]),
        detections=detections,
        tracks=table,
        rejected=_summarise_rejected(rej, rejected_tracks, left_out),
        particles=particles,
        motion=motion,
        peak_ratios=ratios,
        common_shift=common,
        fused=fused,
        timings=timings,
        options=options,
        notes=tuple(notes),
        similarity=similarity,
        chemistry=chemistry,
        edge_widths=edge_width_table,
        normalisation_bias=norm_bias,
    )


def _quote_reported_own_motion(particles, ratios) -> list:
    """``particles`` with :data:`OWN_MOTION_REPORTED` in their notes replaced by the own motion the run reports for
    each: its largest over its frames vouched for (``max_nonrigid_displacement`` of ``ratios``, motion_summary.csv),
    against the motion the particles share. The notes' own number is measured against the matrix's motion, before
    the matrix was subtracted where it was: a moving wrinkle or bubble taken for the matrix parts the two (reduced
    default scene, a particle truly still: 1.00 px against 0.22 px reported). Where the particles do not determine
    the split into common and own motion (:func:`xanestrack.motion.undetermined_split_px`), with how far it moves
    (``own_motion_split_px``)."""
    reported, floor = {}, {}
    if len(ratios) and "max_nonrigid_displacement" in ratios:
        reported = dict(zip(ratios["particle"], ratios["max_nonrigid_displacement"]))
    if len(ratios) and "nonrigid_at_noise" in ratios:  # where noise alone reaches it (_own_motion_noise_note)
        at = ratios[ratios["nonrigid_at_noise"].astype(bool)]
        floor = dict(zip(at["particle"], at["max_nonrigid_noise_px"]))
    from .motion import undetermined_split_px

    # where the particles do not determine the split into common and own motion (_split_notes), by how much
    split = {}
    if np.isfinite(undetermined_split_px(ratios)):
        split = dict(zip(ratios["particle"], ratios["own_motion_split_px"]))
    out = []
    for p in particles:
        y = reported.get(p.particle, np.nan)
        words = (
            f"its own motion as reported in tracks.csv, against the motion the particles share: up to {y:.2f} px "
            "over its frames vouched for"
            + (
                f", within its positions' noise (noise alone reaches {floor[p.particle]:.2f} px)"
                if p.particle in floor
                else ""
            )
            + (
                f", uncertain by {split[p.particle]:.2f} px or more as the split into common and own motion is not "
                "determined by the particles (run notes)"
                if np.isfinite(split.get(p.particle, np.nan))
                else ""
            )
            if np.isfinite(y)
            else "its own motion is not reported"
        )
        notes = tuple(n.replace(OWN_MOTION_REPORTED, words) for n in p.notes)
        out.append(p if notes == tuple(p.notes) else dataclasses.replace(p, notes=notes))
    return out


def _particles_background(particles, energies) -> float | None:
    """The particles' pre-edge absorbance under their edge step, as a share of it at E0 (the median over the particles
    whose mean spectrum's pre- and post-edge lines are known there): the background
    :func:`xanestrack.chemistry.normbias.normalisation_bias` puts under each reference. None where no particle has
    them."""
    e = np.asarray(energies, float)
    shares = []
    for p in particles:
        pre, post = np.asarray(p.pre_edge, float), np.asarray(p.post_edge, float)
        ok = np.isfinite(pre) & np.isfinite(post)
        if ok.sum() < 2 or not np.isfinite(p.e0_ev):
            continue
        a, b = np.interp(p.e0_ev, e[ok], pre[ok]), np.interp(p.e0_ev, e[ok], post[ok])
        if b - a > 0:
            shares.append(a / (b - a))
    return float(np.clip(np.median(shares), 0.0, 50.0)) if shares else None


#: a user's reference that xanestrack's own normalisation (:func:`xanestrack.xanes.normalize`, at its E0) changes
#: by less than this anywhere is one xanestrack normalised itself (:func:`xanestrack.spectra.prepare_reference`,
#: in the CLI or :func:`_user_references`): measured 2.4e-7 at most on the real Ni and Co references so normalised
#: (xasdatalibrary Ni foil, Ni(OH)2, "Ni2O3", NiS, Co foil; larch's NiO and Ni foil), against 0.028 / 0.024 for the
#: pyxas NiO / LiNiO2 (their provider's normalisation, fitted as given) (:func:`_reference_used_as_given`)
SELF_NORMALISED_TOLERANCE = 1e-4


def _reference_used_as_given(ref, energies) -> bool:
    """Whether the fit uses a user's reference with its values as given, normalised by its provider
    (:func:`xanestrack.spectra.prepare_reference` left it as it was, and it is not xanestrack's own normalisation:
    :data:`SELF_NORMALISED_TOLERANCE`). False for one xanestrack normalised (or would normalise: as measured), and
    for callables and references it cannot judge."""
    from .spectra import ReferenceSpectrum, prepare_reference
    from .xanes import find_e0, normalize

    if not isinstance(ref, ReferenceSpectrum) or ref.energies_ev.size < 8:
        return False
    try:
        prepared, _ = prepare_reference(ref, energies)
    except ValueError:
        return False
    if prepared is not ref:  # as measured: the fit gets it normalised as the particles are
        return False
    try:
        again = normalize(ref.energies_ev, ref.mu, e0_ev=find_e0(ref.energies_ev, ref.mu)).norm
    except ValueError:  # too short to normalise, and normalised as given: fitted as it is
        return True
    return float(np.max(np.abs(np.asarray(again, float) - ref.mu))) > SELF_NORMALISED_TOLERANCE


def _normalisation_bias(particles, references, energies, default_references: bool, options) -> tuple[dict | None, str]:
    """``(bias, note)``: eV per reference, the bias of E50 from the normalisation on the scan's energies
    (:func:`xanestrack.chemistry.normbias.normalisation_bias`, with the particles' own pre-edge under the step,
    :func:`_particles_background`), the references whose bias could be measured (None without references or XANES);
    and the run's note on it (:func:`xanestrack.chemistry.normbias.normalisation_bias_note`), over the references'
    biases and those of their mixes (:func:`~xanestrack.chemistry.normbias.mixture_bias`: on synth's 30-energy grid
    the 50:50 mix of the shipped references -0.188 eV, NiO -0.056 and LiNiO2 -0.161 eV), ``""`` where it does not
    matter or there are no particles.

    Each reference is measured against its E50 as the fit uses it: the shipped references and a user's normalised
    by its provider (:func:`_reference_used_as_given`) where their values cross 0.5 (``dense="given"``); a user's
    that xanestrack normalised against the same normalisation on its own energies (``"normalised"``), and a mix
    so where either of its two is. The pyxas NiO / LiNiO2 given with ``--reference`` had all been measured the
    second way: on a 60-energy synth scan NiO -0.29 / LiNiO2 +0.04 eV, spread 0.34 eV, where the same spectra
    shipped read -0.18 / +0.03 eV, 0.21 (its NiO particle measured -0.147 eV from the truth, LiNiO2 -0.003).

    Where no reference measures it (none of the particles' edge, or none reaching the ranges they are normalised
    over), the note says so, with the part the particles' own mean spectra hold and what it is elsewhere
    (:func:`xanestrack.chemistry.normbias.unmeasured_bias_note`): a Mn scan with standards over 6520-6630 eV and a
    Co scan without references were silent, their particles 0.1-0.47 eV off their references' provider's E50."""
    from .chemistry.normbias import mixture_bias, normalisation_bias, normalisation_bias_note, unmeasured_bias_note

    if len(energies) < options.min_xanes_energies:
        return None, ""
    kw = dict(
        edge_window=options.edge_window,
        background=_particles_background(particles, energies),  # the scene's own pre-edge under its step
    )
    if not references:
        return None, unmeasured_bias_note(energies, particles, **kw)
    given = {k: default_references or _reference_used_as_given(r, energies) for k, r in references.items()}
    raw = {}
    for how in ("given", "normalised"):
        part = {k: r for k, r in references.items() if given[k] == (how == "given")}
        raw.update(normalisation_bias(energies, part, dense=how, **kw) if part else {})
    bias = {k: raw[k] for k in references if k in raw and np.isfinite(raw[k])}  # in the order given
    if not bias:  # not measured: said (run.json's bias stays the references', none)
        return bias, unmeasured_bias_note(energies, particles, references, shipped=default_references, **kw)
    if not particles:
        return bias, ""
    from .spectra import ReferenceSpectrum

    mixes = {}
    names = [k for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8]
    for a, b in zip(names[:-1], names[1:]):  # as mixture_bias pairs them, each pair as its references are measured
        pair = {a: references[a], b: references[b]}
        mixes.update(mixture_bias(energies, pair, dense="given" if given[a] and given[b] else "normalised", **kw))
    edges = [float(p.e0_ev) for p in particles if np.isfinite(p.e0_ev)]
    return bias, normalisation_bias_note(bias, mixes, edge_ev=float(np.median(edges)) if edges else None)


#: how the run note on the particles whose XANES left out energies that move their mean E50 or fractions begins
#: (:func:`_frames_bias`); "left out" puts it on the console (:data:`CONSOLE_NOTE_WORDS`)
FRAMES_RUN_NOTE_START = "the energies left out of their XANES move the mean E50"


def _frames_bias(particles, references, energies, options) -> tuple[list, str]:
    """``(particles, note)``: each particle with ``e50_normalisation_shift_ev`` measured (how far the energies its
    XANES used, fewer than the scan's, move its E50 against a particle of its chemistry measured on all of them), and
    a note where that is :data:`~xanestrack.chemistry.normbias.FRAMES_SHIFT_FLOOR_EV` or more and
    :data:`~xanestrack.chemistry.normbias.FRAMES_SHIFT_SIGMAS` times its mean E50's sigma, or where its last
    reference's fraction moves by :data:`~xanestrack.chemistry.normbias.FRAMES_FRACTION_FLOOR` or more; the run note
    gathering them, ``""`` where none.

    Where the references describe its normalised mean spectrum (their fit with a free scale,
    :func:`~xanestrack.chemistry.normbias.scale_free_fractions`, leaves
    :data:`~xanestrack.chemistry.normbias.FRAMES_DESCRIBED_RMS` or less), from them mixed at that chemistry
    (:func:`~xanestrack.chemistry.normbias.frames_bias_shift`); else from the particle measured on every energy whose
    spectrum is most like its own (its analysed mean spectrum on the particle's energies,
    :func:`~xanestrack.chemistry.normbias.spectrum_frames_shift`); NaN where neither is there.

    The run's note on the normalisation's bias (:func:`_normalisation_bias`) is of the scan's energies: a particle
    cut by the border in the last 5 of synth's 60 frames was normalised on 5 post-edge energies where the others had
    10, its mean E50 -0.39 eV (16 sigma) off the same particle's measured on all of them, its fractions at the bound
    and said misfit, and nothing said of its E50 (now: -0.41 eV measured, its note and the column). Not applied to
    its mean E50: an estimate from other spectra (within 0.025 eV of the moves of synth's particles, made of the
    references; 0.01-0.10 eV from the stress family's by their neighbours).

    ``references``: those at the particles' edge (:func:`_references_at_particles_edge`); none: every particle NaN.
    A particle whose mean E50 is not given, or that spans two edges, NaN."""
    from types import SimpleNamespace

    from .chemistry.normbias import (
        FRAMES_DESCRIBED_RMS,
        FRAMES_FRACTION_FLOOR,
        FRAMES_SHIFT_FLOOR_EV,
        FRAMES_SHIFT_SIGMAS,
        _e50_given,
        frames_bias_shift,
        scale_free_fractions,
        spectrum_frames_shift,
    )
    from .result import fractions_withheld, particle_summary

    e = np.asarray(energies, float)
    nan = float("nan")

    # the sigma of each one's mean E50, as the particles' table gives it (before this column is set)
    def measurable(p):
        used = None if p.xanes_frames is None else np.asarray(p.xanes_frames, bool)
        return used is not None and used.shape == e.shape and not _across_two_edges(p) and _e50_given(p)

    # only where a particle left frames out (a scan whose particles used every frame: each 0, nothing to measure)
    fewer = bool(references) and any(measurable(p) and not np.asarray(p.xanes_frames, bool).all() for p in particles)
    stand_in = SimpleNamespace(particles=particles, peak_ratios=pd.DataFrame(), options=options, energies_ev=e)
    summ = particle_summary(stand_in) if particles and fewer else None
    sigma = dict(zip(summ["particle"], summ["mean_e50_sigma_ev"])) if summ is not None else {}
    background = _particles_background(particles, e) if fewer else None

    # the particles measured on every energy: their analysed mean spectra, for those the references do not describe
    whole = {
        p.particle: (np.asarray(p.pre_edge, float) + np.asarray(p.mean_norm, float) * (p.post_edge - p.pre_edge))
        for p in particles
        if measurable(p) and np.asarray(p.xanes_frames, bool).all()
    }
    norms = {p.particle: np.asarray(p.mean_norm, float) for p in particles if p.particle in whole}
    reads = {}
    out, said = [], []
    for p in particles:
        notes = tuple(n for n in p.notes if not n.startswith(FRAMES_NOTE_START))
        shift, how = nan, None
        if references and measurable(p) and np.asarray(p.xanes_frames, bool).all():
            shift = 0.0
        elif references and measurable(p):
            used = np.asarray(p.xanes_frames, bool)
            shares, rms = scale_free_fractions(e, p.mean_norm, p.e0_ev, references, lcf_window=options.lcf_window)
            described = shares is not None and rms <= FRAMES_DESCRIBED_RMS
            if described:
                fs = frames_bias_shift(
                    e,
                    used,
                    references,
                    fractions=shares,
                    edge_window=options.edge_window,
                    lcf_window=options.lcf_window,
                    background=background,
                )
                if fs is not None:
                    shift, how = fs.e50_ev, dict(shares=shares, fraction=fs.fraction)
            else:
                alike = _most_alike(p, norms, used, e, options.lcf_window)
                if alike:
                    # each of the most alike read on this one's energies (the same frames left out: read once)
                    read = {}
                    for q in alike:
                        key = (q, used.tobytes())
                        if key not in reads:
                            reads[key] = spectrum_frames_shift(e, used, whole[q], edge_window=options.edge_window)
                        read[q] = reads[key]
                    near = alike[0]
                    shift = read[near]
                    fin = [v for v in read.values() if np.isfinite(v)]
                    how = dict(near=near, rms=rms, low=min(fin, default=nan), high=max(fin, default=nan), n=len(fin))
        if how is not None and np.isfinite(shift):
            s = float(sigma.get(p.particle, nan))
            bar = max(FRAMES_SHIFT_FLOOR_EV, FRAMES_SHIFT_SIGMAS * s) if np.isfinite(s) else FRAMES_SHIFT_FLOOR_EV
            moved = abs(shift) >= bar
            fitted = bool(p.fractions is not None and len(p.reference_names) and not fractions_withheld(p))
            # its fractions are fitted to the same spectra: moved as the references predict, and where its E50 moved,
            # a misfit said of it may be the normalisation's (the probe's particle 3 without its last 5 of 60 frames:
            # -0.014 predicted, a misfit region flagged and its mean LiNiO2 fraction +0.25); where the references do
            # not describe it, by as much as its E50 says, not measured
            misfit = moved and any(MISFIT_NOTE in n or n.startswith(MISFIT_REGION_NOTE) for n in p.notes)
            df = how.get("fraction", nan)
            # only where the fit took the references as given: normalised on the particle's own energies
            # (xanes.references_on_scan) they are normalised as its spectra on the same energies, and its fractions do
            # not move with the frames left out (a review: 0.6 NiO + 0.4 LiNiO2 without its last 5 of 60 frames,
            # +0.0001 fitted where this said -0.037)
            as_given = any(n.startswith(xanes.AS_GIVEN_NOTE) for n in p.notes)
            fraction_moved = (
                fitted
                and as_given
                and ((np.isfinite(df) and (abs(df) >= FRAMES_FRACTION_FLOOR or misfit)) or ("near" in how and moved))
            )
            if moved or fraction_moved:
                last = p.reference_names[-1] if fraction_moved else ""
                notes += (_frames_bias_words(shift, how, used, e, s, last, misfit),)
                said.append(
                    f"{p.particle}: {shift:+.2f} eV" + (f", {last} {df:+.3f}" if last and np.isfinite(df) else "")
                )
        out.append(dataclasses.replace(p, e50_normalisation_shift_ev=shift, notes=notes))
    if not said:
        return out, ""
    return out, (
        f"{FRAMES_RUN_NOTE_START} (or the fractions) of {_count(len(said), 'particle')} ({'; '.join(said[:12])}"
        + (" ..." if len(said) > 12 else "")
        + ") against particles of their chemistry measured on all the scan's energies: their XANES was normalised on "
        "fewer of them (frames not vouched for, out of the field, under another particle), the post-edge line from "
        "E0 + 100 eV following the EXAFS wiggles their own energies catch. The note on the normalisation's bias on "
        "this scan's energies does not hold for them, and their mean E50s are not comparable with the others' by as "
        "much; each one's note says more (e50_normalisation_shift_ev in figures/uncertainty.csv)"
    )


#: how many of the particles measured on every energy, the most alike first, a particle the references do not describe
#: is read from (:func:`_most_alike`): the most alike gives its move, the others' range is said beside it
MOST_ALIKE = 5


def _most_alike(p, norms: dict, used, energies, lcf_window, most: int = MOST_ALIKE) -> list:
    """Up to ``most`` particles of ``norms`` (id -> normalised mean spectrum over every energy), those whose spectrum
    is most like particle ``p``'s first: the least RMS difference over its fit window on the energies ``used``, each
    scaled to it (its own normalisation, on fewer energies, sets another step); ``p`` itself left out."""
    e = np.asarray(energies, float)
    m = np.asarray(p.mean_norm, float)
    w = used & np.isfinite(m) & (e >= p.e0_ev + lcf_window[0]) & (e <= p.e0_ev + lcf_window[1])
    mm = float(m[w] @ m[w])
    if w.sum() < 2 or mm <= 0:
        return []
    far = {}
    for q, n in norms.items():
        if q == p.particle or not np.isfinite(n[w]).all():
            continue
        far[q] = float(np.sqrt(np.mean((n[w] - float(m[w] @ n[w]) / mm * m[w]) ** 2)))
    return sorted(far, key=far.get)[:most]


def _frames_bias_words(shift: float, how: dict, used, energies, sigma: float, fraction_of: str, misfit: bool) -> str:
    """A particle's note on the energies its XANES used (:func:`_frames_bias`): ``shift`` (eV) and ``how`` it was
    measured (``shares``, ``fraction``: from the references at its chemistry; ``near``, ``rms``, ``low``, ``high``,
    ``n``: from the particle most like it measured on every energy); ``fraction_of`` the reference whose fraction to
    say moved (``""``: not said); ``misfit``: a misfit is said of its spectra, which may come of it."""
    from .chemistry.normbias import FRAMES_FRACTIONS_WORDS
    from .xanes import _frame_runs

    n, k = used.size, int(used.sum())
    if "shares" in how:
        source = (
            "its chemistry read from its normalised mean spectrum fitted with a free scale: "
            + ", ".join(f"{100 * v:.0f} % {name}" for name, v in how["shares"].items() if v >= 0.005)
            + "; the references so mixed sampled on both sets of energies and normalised as the particles are"
        )
    else:
        source = (
            f"the references do not describe its spectra (their fit leaves {how['rms']:.3f}): read from particle "
            f"{how['near']}, the one most like it measured on every energy, its mean spectrum normalised on this "
            "one's energies and on all"
            + (
                f" (the {how['n']} most like it so read {how['low']:+.2f} to {how['high']:+.2f} eV)"
                if how["n"] > 1
                else ""
            )
        )
    times = f" ({abs(shift) / sigma:.0f} x its sigma)" if np.isfinite(sigma) and sigma > 0 else ""
    df = how.get("fraction", float("nan"))
    return (
        f"{FRAMES_NOTE_START} ({k} of {n}; {_frame_runs(energies, ~used)} left out): its mean E50 is moved by "
        f"{shift:+.2f} eV{times} against a particle of its chemistry measured on all of them ({source}). Its "
        "post-edge line from E0 + 100 eV follows the EXAFS wiggles its own energies catch, so the run's note on the "
        "normalisation's bias on this scan's energies does not hold for it, and its mean E50 is not comparable with "
        "the other particles' by that much (e50_normalisation_shift_ev in uncertainty.csv; an estimate from other "
        "spectra, not applied)"
        + (
            f"; {FRAMES_FRACTIONS_WORDS}"
            + (
                f": its {fraction_of} fraction by {df:+.3f} as the references predict"
                if np.isfinite(df)
                else f", its {fraction_of} fraction fitted to the same spectra (by how much not measured)"
            )
            + (", and the misfit said of its spectra may come of it" if misfit and np.isfinite(df) else "")
            + " (fraction_flags frames_left_out)"
            if fraction_of
            else ""
        )
    )


#: the refusal of a single reference (``{given}``: what was given), by :func:`_user_references` and ``run
#: --reference``: the fit's fractions sum to one, so one reference gave every pixel 1.000 +- 0.000 and every
#: particle an oxidised_fraction of 1.0 (a 60-energy synth scan, NiO, core-shell and gradient particles alike)
ONE_REFERENCE = (
    "{given}: the fractions need two or more references (they sum to one: with one, every fraction is 1); give "
    "another, or none for the edge-energy maps alone (E50, whiteline: they need no reference; a Ni K-edge scan is "
    "then fitted with the shipped NiO and LiNiO2)"
)


def _user_references(references, energies) -> tuple[dict, list]:
    """The references a caller gave, checked before anything is computed, and notes: each
    :class:`~xanestrack.spectra.ReferenceSpectrum` made ready for the fit
    (:func:`~xanestrack.spectra.prepare_reference`: normalised where it is not, refused where its edge is
    not in the scan); a single reference is refused (:data:`ONE_REFERENCE`). Spectra as measured were fitted as given from Python (the CLI prepared them):
    pure NiO particles 0.39 NiO against 0.90 with the normalised references, without a word."""
    from collections.abc import Mapping

    from .spectra import ReferenceSpectrum, prepare_reference

    if not isinstance(references, Mapping):
        raise TypeError(
            f"references must map names to ReferenceSpectrum (or callables of the energies), got "
            f"{type(references).__name__}"
        )
    if len(references) > 6:
        raise ValueError(f"references: at most 6 references supported, got {len(references)}")
    if len(references) == 1:  # every fraction 1.000 +- 0.000 and oxidised_fraction 1.0, by the sum to one alone
        raise ValueError(ONE_REFERENCE.format(given=f"references: one given ({next(iter(references))})"))
    out, notes = {}, []
    for name, ref in references.items():
        if isinstance(ref, ReferenceSpectrum):
            if not (np.all(np.isfinite(ref.energies_ev)) and np.all(np.isfinite(ref.mu))):
                raise ValueError(f"reference {name}: NaN/inf values")
            try:
                ref, note = prepare_reference(ref, energies)
            except ValueError as exc:
                raise ValueError(f"reference {name}: {exc}") from None
            if note:
                notes.append(note)
        elif not callable(ref):
            raise TypeError(
                f"reference {name}: give a ReferenceSpectrum (xanestrack.spectra.read_spectrum) or a callable of the "
                f"energies, got {type(ref).__name__}"
            )
        out[name] = ref
    order = _oxidised_order_note(out, energies)
    if order:
        notes.append(order)
    notes += _coarse_reference_notes(out, energies)
    return out, notes


#: a reference sampled across its edge (E0 - 20 to E0 + 40 eV) in steps more than this many times the scan's there
#: is noted (:func:`_coarse_reference_notes`)
COARSE_REFERENCE_RATIO = 1.5


def _coarse_reference_notes(references: dict, energies) -> list:
    """Notes on references sampled across the edge more coarsely than the scan: the fit interpolates them linearly
    between their points, and the misfit that leaves was blamed on the references' chemistry or the energy axis
    (Mn references every 3 eV against a scan every 1 eV: fractions right to 0.003-0.006, "do not describe 2 of 4
    particles ... calibrate it")."""
    from .spectra import ReferenceSpectrum
    from .xanes import find_e0

    e = np.asarray(energies, float)
    out = []
    for name, ref in references.items():
        if not isinstance(ref, ReferenceSpectrum) or ref.energies_ev.size < 8:
            continue
        try:
            e0 = find_e0(ref.energies_ev, ref.mu)
        except ValueError:
            continue
        r_e, s_e = ref.energies_ev, e
        r_step = np.diff(r_e[(r_e >= e0 - 20) & (r_e <= e0 + 40)])
        s_step = np.diff(s_e[(s_e >= e0 - 20) & (s_e <= e0 + 40)])
        if r_step.size < 2 or s_step.size < 2:
            continue
        r, sc = float(np.median(r_step)), float(np.median(s_step))
        if r > COARSE_REFERENCE_RATIO * sc:
            out.append(
                f"reference {name} is sampled every {r:.2g} eV across its edge, the scan every {sc:.2g} eV: the fit "
                "takes it linearly between its points there, and a note that the references do not describe a "
                "particle may come of that alone; give references sampled as finely as the scan"
            )
    return out


#: the share of its edge step where a reference's edge is placed (its first crossing) to tell its oxidation state
#: from the others' (:func:`_oxidised_order_note`). Measured on the real references of ../shared/data (SOURCES.md),
#: the first crossing of 0.2 / 0.3 / 0.5: Ni foil (larch) 8333.4 / 8334.8 / 8341.1 eV, Ni metal (xasdatalibrary)
#: 8331.9 / 8333.2 / 8339.5, NiO (pyxas) 8337.3 / 8338.2 / 8340.1, LiNiO2 (pyxas) 8338.7 / 8339.6 / 8341.9; MnO
#: 6542.2 / 6543.0 / 6544.0, Mn3O4 6542.8 / 6544.4 / 6546.1, Mn2O3 6546.6 / 6547.7 / 6549.7, MnO2 6542.3 / 6550.0 /
#: 6551.7 (the Mn files span 6520-6630 eV only: normalised by a pre-edge line to 6532 eV and the mean from 6590 eV).
#: At 0.5 (E50) the metal's shoulder and slow rise put the foil above NiO (the note told the user to give the metal
#: last); at 0.2 MnO2's pre-edge peak put it below Mn2O3, and so did the derivative's maximum (E0: 6551.9 against
#: 6552.8 eV). At 0.3 each set is in the order of its oxidation state
ORDER_EDGE_LEVEL = 0.3


def _oxidised_order_note(references: dict, energies) -> str:
    """The note where the last reference, whose fraction is the particles' ``oxidised_fraction`` (their table
    ``figures/uncertainty.csv``, ``series.csv``, the series report), has not the highest edge: references given as LiNiO2 then NiO made every
    particle's "oxidised" fraction its NiO fraction (0.70 became 0.30), without a word. Empty otherwise.

    The edge is where the reference first reaches :data:`ORDER_EDGE_LEVEL` of its step (E50 put a Ni foil's
    edge above NiO's, and the note asked for the metal last)."""
    if len(references) < 2:
        return ""
    e = np.asarray(energies, float)
    grid = np.arange(e.min(), e.max(), 0.05)
    edge = {}
    for name, ref in references.items():
        try:
            mu = np.asarray(ref(grid), float)
        except Exception:  # a callable that cannot be evaluated off the scan's energies: not judged
            return ""
        up = np.flatnonzero((mu[:-1] < ORDER_EDGE_LEVEL) & (mu[1:] >= ORDER_EDGE_LEVEL))
        if not up.size:
            return ""
        edge[name] = float(grid[up[0] + 1])
    last = list(references)[-1]
    top = max(edge, key=edge.get)
    if edge[top] - edge[last] <= 0.1:
        return ""
    return (
        f"oxidised_fraction (the particles' table figures/uncertainty.csv, series.csv) is the fraction of the last "
        f"reference given, {last} "
        f"(its edge, where it first reaches {ORDER_EDGE_LEVEL:g} of its step, at {edge[last]:.1f} eV), but {top}'s "
        f"edge lies higher ({edge[top]:.1f} eV): give the references in the order of their oxidation state, the most "
        "oxidised last"
    )


#: eV relative to a particle's E0: its size across the scan is measured on the frames at or below E0 + the first
#: and at or above E0 + the second, each side with a level of its own (:func:`_outline_change`): the segmented
#: outline follows the particle's contrast, which rises across the edge (particles of one size throughout, on
#: the stress scenes, outlined 0.3-0.9 px larger past the edge than before it); only the trend within the two
#: sides counts. From E0 - 20 eV the pre-edge's rise towards the edge still showed (stress-drift seed 1, a
#: 21-px particle: +0.36 px across the scan; +0.15 from E0 - 30 eV)
OUTLINE_SIZE_EV = (-30.0, 40.0)
#: frames on either side of the edge (:data:`OUTLINE_SIZE_EV`, among those the XANES used) needed to measure a
#: particle's size change: with four pre-edge frames, a 12-px hard-scene particle of fixed size measured +1.3 px
OUTLINE_MIN_FRAMES = 5
#: px, and standard errors: a particle whose own outline moves by both this much or more across the scan (its
#: equivalent radius's trend, less the change the particles share) has its rim flagged. Measured, particles of
#: fixed size (the others' changes taken out): the default scene (seeds 1-5, 45 particles) within 0.10 px and
#: 2.8 standard errors; the hard (seeds 1-4, 44) 0.30 px, 2.5; the stress scenes (drift, counts, jitter,
#: magnification, crowd, all; 14 scans, 119 particles measured, 69 with too few frames on a side) 0.50 px, 4.9
#: (stress-drift seed 3: -0.32 +- 0.06 px). The probe's swelling particle (radius 27 px): +4 % +1.11 +- 0.03 px
#: (38 standard errors), +2 % +0.43 +- 0.04 (11), -3 % -0.94 +- 0.04 (22). Its rim's E50 at +2 %: +0.50 / +0.29 /
#: +0.12 eV at 0-1 / 1-2 / 2-3 px inside the outline beyond a fixed particle's. First 0.25 px; but through the whole
#: pipeline the hard scenes' shrinking-core particles, of fixed size in the truth (true area 2752-2756 px over the
#: scan), measured +0.76 px (seed 1, particle 4; 2.6 %) and +0.54 px (seed 4), over 7 standard errors: their masks
#: follow the chemistry's contrast as it changes within the pre- and post-edge frames. Above those: the +4 % and -3 %
#: particles are flagged, the +2 % one (0.43 px) is not
OUTLINE_CHANGE_PX = 0.8
OUTLINE_CHANGE_Z = 7.0
#: px inside the outline flagged beyond half the outline's movement (the outline sweeps the consensus mask's
#: edge by half its change either way): the smoothing inside the mask (1 px) and the image's blur carry the
#: mixed spectra further in. Measured on the probe's +4 %, +2 % and -3 % particles (outline movement 1.12, 0.44,
#: -0.93 px), E50 beyond a fixed particle's by depth inside the consensus mask: 0-1 px +0.86 / +0.50 / -0.84 eV,
#: 2-3 px +0.23 / +0.12 / -0.19 eV, 3-4 px +0.12 / +0.04 / -0.09 eV, 4-5 px +0.09 / +0.03 / -0.05 eV (the pixels'
#: standard error 0.07-0.08 eV there): 3 px flagged for a movement under 1 px, 4 px up to 3 px
RIM_REACH_PX = 2.5
#: how a particle's note on its moving rim begins (the run note gathers them: :func:`_moving_rim_run_note`)
MOVING_RIM_NOTE = "its outline moves across the scan"


def _equivalent_radii(p, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A particle's equivalent radius ``sqrt(area / pi)`` of each frame's aligned soft mask (px) and the frames
    it is measured on: those its XANES used, with a mask."""
    masks = getattr(p, "masks", None)
    frames = _measured_frames(p)
    if masks is None or frames is None or len(masks) != n_frames:
        return np.full(n_frames, np.nan), np.zeros(n_frames, bool)
    area = np.nansum(np.asarray(masks, float), axis=(1, 2))
    return np.sqrt(area / np.pi), np.asarray(frames, bool) & (area > 0)


def _shared_change(changes, radii) -> float:
    """The size change the particles share, relative to their size: the median over the particles measured
    (three or more; with two, below) of their change across the scan over their radius.

    The field's magnification changes every particle's size alike, and so does this. The scale the common
    motion fits to the particles' positions (``PipelineResult.similarity``) is not taken: on stress-all (1 %
    magnified, its particles drifting on their own) it fitted none, and the particles measured then grew on
    their own by 0.2-1.4 px (1.0-3.7 %, up to 8.8 standard errors; seeds 1-2). The median of the particles'
    changes, not of their sizes frame by frame: the sizes' levels differ from particle to particle (each
    outline steps with its own contrast across the edge), and with four particles one swelling moved the
    frames' median with it. A swelling that every particle shares is taken out with it, as a uniform
    swelling of the electrode is taken into the field's scale.

    With two particles measured, the change of the one that changes less (nearer 0): the median of two (their
    mean) would give half of one's swelling to the other, and 0 left the field's magnification in both.
    Stress-all, seed 2, 320 px: two of its 9 particles have enough frames on both sides of the edge, and measure
    +3.2 % (42 px) and +2.4 % (35 px); their truth masks, by the same trend, +2.6 % and +2.5 % (the field is
    magnified by 1.0 % end to end, most of it within the frames before and past the edge, which the trend
    carries over the whole scan); with 0 taken out, the 42-px one was said to grow by +1.37 px on its own
    (969 of its 5650 pixels flagged), now by +0.34 px (not flagged). With one particle, 0: its own change cannot
    be told from the field's (stress-all seed 1 measures one, +2.1 %, 0.85 px: not flagged, under 7 standard
    errors).
    """
    rel = np.asarray(changes, float) / np.asarray(radii, float)
    rel = rel[np.isfinite(rel)]
    if rel.size == 2:
        return float(rel[np.argmin(np.abs(rel))])
    return float(np.median(rel)) if rel.size >= 3 else 0.0


def _outline_change(radius, used, energies, e0_ev: float) -> tuple[float, float, float]:
    """A particle's own size change across the scan: ``(change_px, sigma_px, radius_px)``, NaN where not measured.

    The equivalent radius's trend with the frame (the scan's time), measured within the frames before the edge
    and within those past it (:data:`OUTLINE_SIZE_EV`), each with its own level: the Theil-Sen slope over the
    pairs of frames on one side, times the frames from the first used to the last. Its standard error is
    the residuals' robust spread over the frames' spread in time on both sides.
    """
    nan = float("nan")
    e = np.asarray(energies, float)
    r = np.asarray(radius, float)
    used = np.asarray(used, bool) & np.isfinite(r)
    if not np.isfinite(e0_ev) or used.sum() < 2 * OUTLINE_MIN_FRAMES:
        return nan, nan, nan
    t = np.arange(e.size, dtype=float)
    sides = [used & (e <= e0_ev + OUTLINE_SIZE_EV[0]), used & (e >= e0_ev + OUTLINE_SIZE_EV[1])]
    if any(s.sum() < OUTLINE_MIN_FRAMES for s in sides):
        return nan, nan, nan
    slopes = []
    for s in sides:
        k = np.flatnonzero(s)
        k = k[np.linspace(0, k.size - 1, min(k.size, 300)).astype(int)]  # 300 frames a side: 45 000 pairs at most
        i, j = np.triu_indices(k.size, 1)
        slopes.append((r[k[j]] - r[k[i]]) / (t[k[j]] - t[k[i]]))
    b = float(np.median(np.concatenate(slopes)))
    res, spread = [], 0.0
    for s in sides:
        rs = r[s] - b * t[s]
        res.append(rs - np.median(rs))
        spread += float(np.sum((t[s] - t[s].mean()) ** 2))
    span = float(np.ptp(np.flatnonzero(used)))
    sigma = robust_sigma(np.concatenate(res), centre=0.0) / np.sqrt(spread) * span
    return b * span, float(sigma), float(np.median(r[used]))


#: px, and standard errors: a particle whose outline changes its shape across the scan by both this much or more
#: (:func:`_outline_shape_change`: the trend of its elongation, a vector ``(a - b) / 2`` at twice its
#: orientation, which a size change leaves as it is; the most its outline moves across itself) has its rim
#: flagged. Measured, particles left as they are (the turn and stretch the particles share taken out): the
#: default scene (seeds 1-5, 45 particles) within 0.26 px and 6.4 standard errors; the hard (seeds 1-4, 35
#: measured) 0.60 px (6.1), 8.5 standard errors (0.42 px); the stress scenes (drift, counts, jitter,
#: magnification, crowd, all; seeds 1-2, 109 measured) 0.66 px (4.3), 4.3. The probe's particle 1.6 times as
#: long as wide (32 px equivalent radius) turned by 8 degrees: 1.94 +- 0.04 px (44 standard errors; 10.5 degrees
#: read), its E50 off by 0.69 / 0.60 / 0.39 / 0.20 / 0.14 eV on average at 0-1 / 1-2 / 2-3 / 3-4 / 4-5 px inside
#: its outline (unturned 0.31 / 0.18 / 0.11 / 0.10 / 0.09), its kept pixels more than 0.5 eV off 6.9 % (0.0 %
#: unturned; 0.0 % with the rim flagged, 4 px); a round one (elongation 0.025) turned by
#: 6 degrees: 0.22 px (4.9), harmless (its E50 as unturned). The step between the frames before the edge and
#: those past it is not used: up to 1.15 px on particles left as they are (hard seed 2; 0.38 default, 0.85
#: stress), the outline's shape changing with its contrast; the probe's 1.5-px crack opening across the edge
#: (mid-scan) changed it by 0.32 px and its trend by 0.04: not seen
OUTLINE_SHAPE_PX = 0.75
OUTLINE_SHAPE_Z = 7.0
#: a particle whose elongation ``(a - b) / (a + b)`` (semi-axes from its masks' second moments; a/b 1.17) is at
#: least this before the edge, and whose shape change keeps its elongation (within half the change), is said to
#: turn, by the angle its orientation changes; another's note gives the change of shape (the default scene's
#: particles 0.01-0.07, the probe's particle 1.6 times as long as wide 0.16)
TURN_MIN_ELONGATION = 0.08
#: particles (at least) elongated as :data:`TURN_MIN_ELONGATION` whose median turn and stretch is taken as the
#: one the particles share (the field turned or magnified; :func:`_shared_shape_factor`)
SHARED_SHAPE_MIN_PARTICLES = 3
#: px: where the frames are blurred to the scan's coarsest resolution (:func:`_resolution_blur`), a particle's
#: shape is measured on its aligned windows so blurred (:func:`_matched_outline_weights`): each frame's window
#: scaled from its level in a ring outside its mask (from the first to the second of these distances beyond it)
#: to its level in the mask's core (this far inside it), clipped to 0-1, kept within the ring's outer
#: distance. The learned segmenter's soft masks, measured as they are, follow the blur: the default scene (seed 5,
#: 256 px, 4 particles) blurred 0 -> 2.5 px across the scan read shape changes of 1.51 / 0.51 / 1.08 / 0.31 px (two
#: rims flagged; 0.11-0.30 px unblurred), these weights on the matched windows 0.25 / 0.12 / 0.09 / 0.06 px
#: (0.04-0.25 px unblurred); a particle 1.4 times as long as wide turning by 8 degrees under the same blur was not
#: flagged on the masks, and is on these weights (8.3 degrees read)
MATCHED_OUTLINE_RING_PX = (4, 6)
MATCHED_OUTLINE_CORE_PX = 2


def _matched_outline_weights(p, blur) -> np.ndarray | None:
    """A particle's soft weights per frame for its shape (:func:`_outline_shapes`), from its aligned windows
    brought to the scan's coarsest resolution (``blur``: each frame's Gaussian sd, :func:`_resolution_blur`):
    each window scaled from its median in a ring outside the particle's mask to its median in the mask's core
    and clipped to 0-1 (:data:`MATCHED_OUTLINE_RING_PX`, :data:`MATCHED_OUTLINE_CORE_PX`). None without windows
    or a mask."""
    aligned, mask = getattr(p, "aligned", None), getattr(p, "mask", None)
    if aligned is None or mask is None or not np.any(mask) or len(aligned) != len(blur):
        return None
    mask = np.asarray(mask, bool)
    windows = _blur_frames(np.asarray(aligned, float), blur)
    core = ndimage.binary_erosion(mask, iterations=MATCHED_OUTLINE_CORE_PX)
    core = core if core.sum() >= 10 else mask  # a particle too small to erode
    reach = ndimage.binary_dilation(mask, iterations=MATCHED_OUTLINE_RING_PX[1])
    ring = reach & ~ndimage.binary_dilation(mask, iterations=MATCHED_OUTLINE_RING_PX[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a frame without a value in the ring or the core
        lo = np.nanmedian(windows[:, ring], axis=1)[:, None, None]
        hi = np.nanmedian(windows[:, core], axis=1)[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.clip((windows - lo) / (hi - lo), 0.0, 1.0)
    return np.where(reach & np.isfinite(w) & (hi > lo), w, 0.0)


def _outline_shapes(p, n_frames: int, blur=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A particle's shape in each frame from its aligned soft mask's second moments: ``(q, semi_major, used)``.

    ``q`` (complex, px) is ``(a - b) / 2 * exp(2 i theta)``, ``a`` and ``b`` the semi-axes of the ellipse of the
    same second moments and ``theta`` its major axis's angle, counter-clockwise as the image is shown (row 0 at
    the top). An outline that moves out or in by the same distance all round leaves ``a - b`` as it is (the
    segmented outlines do change their shape with their contrast across the edge all the same: only the trends
    within each side are taken, :func:`_outline_shape_change`); a turn by
    ``alpha`` changes it by about ``(a - b) alpha``, the most the outline moves along its normal (at 45 degrees
    to the axes; the ends slide along the outline by ``a alpha``); two halves parted by ``g`` (a crack) by
    about ``g / 5`` (a disc; the parted ends move by ``g / 2``). ``used``: the frames its XANES used, with a
    mask.

    With ``blur`` (each frame's Gaussian sd bringing it to the scan's coarsest resolution, :func:`_resolution_blur`;
    None or all 0 where the resolution holds) the moments are those of :func:`_matched_outline_weights`, so that a
    focus drifting with the energy does not read as a change of shape (:data:`MATCHED_OUTLINE_RING_PX`).
    """
    masks = getattr(p, "masks", None)
    frames = _measured_frames(p)
    none = np.full(n_frames, np.nan + 0j), np.full(n_frames, np.nan), np.zeros(n_frames, bool)
    if masks is None or frames is None or len(masks) != n_frames:
        return none
    matched = None
    if blur is not None and np.any(np.asarray(blur) > 0) and len(blur) == n_frames:
        matched = _matched_outline_weights(p, np.asarray(blur, float))
    w = np.nan_to_num(np.asarray(masks, float)) if matched is None else matched
    h, wd = w.shape[1:]
    y, x = -np.arange(h, dtype=float), np.arange(wd, dtype=float)  # y up: angles counter-clockwise as shown
    wy, wx = w.sum(axis=2), w.sum(axis=1)  # (n, h), (n, w)
    area = wy.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        my, mx = wy @ y / area, wx @ x / area
        cyy = wy @ (y * y) / area - my**2
        cxx = wx @ (x * x) / area - mx**2
        cxy = np.einsum("nij,i,j->n", w, y, x) / area - my * mx
        half = np.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
        mean = (cxx + cyy) / 2
        a, b = 2 * np.sqrt(mean + half), 2 * np.sqrt(np.maximum(mean - half, 0.0))
        q = (a - b) / 2 * np.exp(1j * np.arctan2(2 * cxy, cxx - cyy))
    return q, a, np.asarray(frames, bool) & (area > 0) & np.isfinite(q)


def _outline_shape_change(q, used, energies, e0_ev: float) -> tuple[complex, float, complex]:
    """A particle's own shape change across the scan: ``(change, sigma, before)`` (complex px, px, complex px;
    NaN where not measured).

    The trend of :func:`_outline_shapes`'s ``q`` within the frames before the edge and within those past it,
    each side with its own level, as the radius's (:func:`_outline_change`, on each component; ``sigma`` a
    component's standard error). The step between the two sides is not taken: the segmented outline changes
    its shape with its contrast across the edge (particles left as they are: up to 1.15 px between the sides,
    :data:`OUTLINE_SHAPE_PX`), so a change that happens at once across the edge is not seen (a 1.5-px crack
    opening there: 0.32 px). ``before``: ``q`` before the edge (the median of that side).
    """
    nan = complex(np.nan, np.nan)
    e = np.asarray(energies, float)
    q = np.asarray(q, complex)
    used = np.asarray(used, bool) & np.isfinite(q)
    if not np.isfinite(e0_ev):
        return nan, float("nan"), nan
    pre = used & (e <= e0_ev + OUTLINE_SIZE_EV[0])
    (cr, sr, _), (ci, si, _) = (_outline_change(part, used, e, e0_ev) for part in (q.real, q.imag))
    if not (np.isfinite(cr) and np.isfinite(ci)):
        return nan, float("nan"), nan
    before = complex(np.median(q[pre].real), np.median(q[pre].imag))
    return complex(cr, ci), float(np.sqrt((sr**2 + si**2) / 2)), before


def _shared_shape_factor(changes, befores, radii) -> complex:
    """The turn and stretch of the particles' shapes they share: ``q`` with its change across the scan over ``q``
    before the edge (:func:`_outline_shape_change`), as ``ratio * exp(2 i angle)``: the medians of the ratio and of the angle over the particles elongated at least
    :data:`TURN_MIN_ELONGATION` (:data:`SHARED_SHAPE_MIN_PARTICLES` or more; 1 with fewer). A field that turns
    (``rotation_rad``) or is magnified turns or stretches every particle alike (each registered by a translation
    only), as :func:`_shared_change` takes out a size change they share.
    """
    c, b, r = (np.asarray(v) for v in (changes, befores, radii))
    ok = np.isfinite(c) & np.isfinite(b) & np.isfinite(r) & (r > 0)
    ok[ok] &= np.abs(b[ok]) >= TURN_MIN_ELONGATION * r[ok]
    if ok.sum() < SHARED_SHAPE_MIN_PARTICLES:
        return 1.0 + 0j
    ratio = (b[ok] + c[ok]) / b[ok]
    return complex(np.median(np.abs(ratio)) * np.exp(1j * np.median(np.angle(ratio))))


def _shared_stretch(changes, radii) -> complex:
    """The stretch of the particles' outlines they share, in px times their radius: the median (each component)
    over the particles measured (:data:`SHARED_SHAPE_MIN_PARTICLES` or more; 0 with fewer) of their shape change
    across the scan (:func:`_outline_shape_change`) times their radius.

    A resolution that changes more along one direction than across it (an astigmatic focus drift) stretches
    every outline alike in its second moments: by as much in ``(a - b) / 2`` times the radius, round particles
    as elongated ones, where :func:`_shared_shape_factor` takes a ratio of the elongated ones alone. Taken out
    where the frames are brought to a common resolution (isotropically, :func:`_resolution_blur`), which leaves
    such a stretch in them: the probe's focus drifting from 0 at the edge to 3 px sd in y and 0.6 px in x at the
    scan's ends (the default scene, seed 5, 256 px) read changes of shape of 1.12 / 0.40 / 1.73 / 0.78 px on
    the windows so matched (10-17 px times the radius, along 88-92 degrees), 0.09 / 0.22 / 0.10 / 0.03 px less
    this; the same scene blurred alike in both directions (0 -> 2.5 px) 0.25 / 0.12 / 0.09 / 0.06 px, 0.27 / 0.10
    / 0.14 / 0.04 less it.
    """
    c, r = np.asarray(changes, complex), np.asarray(radii, float)
    ok = np.isfinite(c) & np.isfinite(r) & (r > 0)
    if ok.sum() < SHARED_SHAPE_MIN_PARTICLES:
        return 0j
    cr = c[ok] * r[ok]
    return complex(np.median(cr.real), np.median(cr.imag))


def _turn_clause(change: complex, before: complex, semi_major: float, radius: float) -> str:
    """How a particle's shape changes across the scan (:func:`_outline_shape_change`), in words: a turn by an
    angle where it is elongated and keeps its elongation, else a change of shape along an angle."""
    after = before + change
    if abs(before) >= TURN_MIN_ELONGATION * radius and abs(abs(after) - abs(before)) <= abs(change) / 2:
        angle = np.angle(after / before) / 2
        return (
            f"turns by {np.degrees(abs(angle)):.1f} degrees ({'counter-' if angle > 0 else ''}clockwise as shown; its "
            f"ends move by {abs(angle) * semi_major:.1f} px along the outline, its sides by up to {abs(change):.2f} px "
            "across it)"
        )
    along = round(float(np.degrees(np.angle(change) / 2))) % 180
    return (
        f"changes its shape by {abs(change):.2f} px (its outline moves out along {along} degrees, counter-clockwise "
        "from a row as shown, and in across that, beyond any change of size: a crack widening, a turn of a roundish "
        "particle, a part moving on its own)"
    )


def _moving_rim_note(clauses: list, depth: int, n_px: int, n_mask: int) -> str:
    return (
        f"{MOVING_RIM_NOTE}: it {' and '.join(clauses)} (its own, the change the particles share taken out), "
        "which the registration (a translation per frame) does not follow: the outline sweeps through its rim as "
        "the energy crosses the edge, and the rim's spectra mix the particle and its surroundings: its E50 within "
        f"{depth} px of the outline is biased (a particle grown by 4 %: +0.69 / +0.41 / +0.26 eV at 0-1 / 1-2 / 2-3 "
        "px in, 7-10 times their standard error; one 1.6 times as long as wide turned by 8 degrees: "
        "off by 0.69 / 0.60 / 0.39 / 0.20 eV on average at 0-1 / 1-2 / 2-3 / 3-4 px in, 0.31 / 0.18 / 0.11 / 0.10 "
        "unturned), and so are its fractions "
        f"there: those {n_px} of its {n_mask} pixels are flagged moving_rim and left out of its means"
    )


def _flag_moving_rims(particles: list, energies, gaps=(), blur=None) -> list:
    """The particles with the rim of each one whose own outline moves across the scan flagged.

    Its size: each particle's equivalent radius per frame (:func:`_equivalent_radii`) gives its change across
    the scan (:func:`_outline_change`), less the change the particles share (:func:`_shared_change`), flagged
    where it reaches :data:`OUTLINE_CHANGE_PX` and :data:`OUTLINE_CHANGE_Z` standard errors. Its shape (a
    turn, a crack widening): its elongation's trend across the scan (:func:`_outline_shapes`,
    :func:`_outline_shape_change`), less the turn and stretch the particles share
    (:func:`_shared_shape_factor`), flagged where it reaches :data:`OUTLINE_SHAPE_PX` and
    :data:`OUTLINE_SHAPE_Z` standard errors; where the frames were brought to the scan's coarsest resolution
    (``blur``, each frame's Gaussian sd, :func:`_resolution_blur`), measured on the windows so blurred (a focus
    drifting from 0 to 2.5 px across the scan read as a change of shape of 1.51 px on the segmented masks), the
    stretch the particles share there taken out first (:func:`_shared_stretch`). The mask's pixels within half
    the changes flagged plus
    :data:`RIM_REACH_PX` of its outline are flagged (:func:`xanestrack.xanes.flag_moving_rim`: out of the
    quality mask) and a note says so. A note of an earlier pass (:func:`redo_xanes`) is replaced.

    The frames in which a particle's mask lay in a wide patch of input pixels without a value (``gaps``:
    ``(frame, pixels)`` of :func:`xanestrack.stack.sanitize_stack`; :func:`_filled_frames`) are left out of both:
    its outline there follows the patch's fill from the patch's rim. A 40 x 40 px patch in every frame over part of
    a particle drifting 16 px across it (api probe, seed 5 at 256 px, particle 2: -2.14 +- 0.27 px measured, no
    more than 0.20 +- 0.11 without the patch) said it shrank by 10.9 % (-2.11 px) and changed its shape by 2.60 px,
    and its rim was flagged: kept fraction 0.283, 0.560 with those frames left out (its 515 filled pixels of 1175
    out), not measured then (the patch lay over it in every frame). Those frames are kept in each particle's
    ``filled_frames``; without ``gaps`` (:func:`redo_xanes`) they are read from there.
    """
    n = len(energies)
    if not particles or n < 2 * OUTLINE_MIN_FRAMES:
        return list(particles)
    clear = [~_filled_frames(p, gaps, n) for p in particles]
    radii = [_equivalent_radii(p, n) for p in particles]
    measured = [
        _outline_change(r, used & c, energies, float(p.e0_ev)) for p, (r, used), c in zip(particles, radii, clear)
    ]
    shared = _shared_change([m[0] for m in measured], [m[2] for m in measured])
    shapes = [
        (q, semi, used & c) for (q, semi, used), c in zip((_outline_shapes(p, n, blur) for p in particles), clear)
    ]
    shaped = [_outline_shape_change(q, used, energies, float(p.e0_ev)) for p, (q, _, used) in zip(particles, shapes)]
    if blur is not None and np.any(np.asarray(blur) > 0):  # the stretch an astigmatic focus drift leaves
        stretch = _shared_stretch([m[0] for m in shaped], [m[2] for m in measured])
        shaped = [(dq - stretch / r if r > 0 else dq, s, b) for (dq, s, b), (_, _, r) in zip(shaped, measured)]
    factor = _shared_shape_factor([m[0] for m in shaped], [m[2] for m in shaped], [m[2] for m in measured])
    if gaps:  # the frames left out, kept for redo_xanes (which has no gaps: _filled_frames reads them back)
        particles = [dataclasses.replace(p, filled_frames=None if c.all() else ~c) for p, c in zip(particles, clear)]
    out = []
    for p, (change, sigma, radius), (dq, dq_sigma, before), (_, semi, used) in zip(particles, measured, shaped, shapes):
        notes = tuple(x for x in p.notes if not x.startswith(MOVING_RIM_NOTE))
        change = change - shared * radius
        dq = before + dq - factor * before  # its own: the shape the shared turn and stretch made of it taken out
        clauses, moved = [], 0.0
        if p.quality_assessed and radius > 0:
            if abs(change) >= OUTLINE_CHANGE_PX and abs(change) >= OUTLINE_CHANGE_Z * sigma:
                clauses.append(
                    f"{'grows' if change > 0 else 'shrinks'} by {abs(100 * change / radius):.1f} % ({change:+.2f} px "
                    "in radius)"
                )
                moved += abs(change)
            if abs(dq) >= OUTLINE_SHAPE_PX and abs(dq) >= OUTLINE_SHAPE_Z * dq_sigma:
                clauses.append(_turn_clause(dq, factor * before, float(np.nanmedian(semi[used])), radius))
                moved += abs(dq)
        if not clauses:
            out.append(p if notes == tuple(p.notes) else dataclasses.replace(p, notes=notes))
            continue
        depth = int(np.ceil(moved / 2 + RIM_REACH_PX))
        flags, maps, n_px = xanes.flag_moving_rim(p.pixel_flags, p.maps, p.mask, depth)
        note = _moving_rim_note(clauses, depth, n_px, int(np.count_nonzero(p.mask)))
        out.append(dataclasses.replace(p, pixel_flags=flags, maps=maps, notes=notes + (note,)))
    return out


def _with_moving_rims(finished: list, energies, gaps=(), blur=None) -> list:
    """:func:`_flag_moving_rims` on the ``(ParticleResult, ...)`` tuples of :func:`_finish_particle`."""
    flagged = _flag_moving_rims([f[0] for f in finished], energies, gaps, blur)
    return [(p, *f[1:]) for p, f in zip(flagged, finished)]


#: the start of a particle's note saying which of its pixels lay in a wide patch of input pixels without a value
#: (:func:`_flag_filled_pixels`)
FILLED_NOTE = "pixels filled, not measured"


def _patch_on_grid(origin, shift, shape, patch) -> np.ndarray:
    """``shape`` bool: the pixels of a particle's grid (``origin``, and ``shift`` in one frame) that take from a
    frame's ``patch`` of filled pixels: grid pixel ``[i, j]`` lies at ``origin + (i, j) + shift``, and is taken where
    any of the four whole pixels around that point is in the patch (the registration's bilinear resampling takes
    from them). None taken where the shift is not finite."""
    here = np.zeros(shape, bool)
    at = np.asarray(origin, float) + np.asarray(shift, float)
    if not np.isfinite(at).all():
        return here
    h, w = shape
    for dy in {int(np.floor(at[0])), int(np.ceil(at[0]))}:
        for dx in {int(np.floor(at[1])), int(np.ceil(at[1]))}:
            y0, y1 = max(dy, 0), min(dy + h, patch.shape[0])
            x0, x1 = max(dx, 0), min(dx + w, patch.shape[1])
            if y0 < y1 and x0 < x1:
                here[y0 - dy : y1 - dy, x0 - dx : x1 - dx] |= patch[y0:y1, x0:x1]
    return here


def _filled_on_grid(origin, shifts, shape, gaps, used, within=None) -> tuple[np.ndarray, list]:
    """``(pixels, frames)``: the pixels of a particle's grid (``shape``, at ``origin`` and ``shifts``) that took from
    a filled patch (:func:`_patch_on_grid`) in a frame it ``used`` (bool per frame), within ``within`` where given
    (its mask), and those frames in order; for the XANES's filled pixels (:func:`_finish_particle`) and their flags
    (:func:`_flag_filled_pixels`)."""
    hit = np.zeros(shape, bool)
    frames = []
    for k, patch in gaps:
        if not used[k]:
            continue
        here = _patch_on_grid(origin, shifts[k], shape, patch)
        if within is not None:
            here &= within
        if here.any():
            hit |= here
            frames.append(k)
    return hit, sorted(frames)


def _filled_frames(p, gaps, n_frames: int) -> np.ndarray:
    """``(n_frames,)`` bool: the frames in which particle ``p``'s mask (its consensus mask, or that frame's aligned
    mask) lay in a wide patch of input pixels without a value (``gaps``, :func:`_flag_filled_pixels`). Its outline
    there follows the patch's fill from the patch's rim, not the particle. Without ``gaps`` (:func:`redo_xanes`, a
    result read back): those the run found, kept in ``p.filled_frames``."""
    out = np.zeros(n_frames, bool)
    masks = getattr(p, "masks", None)
    if not gaps:
        kept = getattr(p, "filled_frames", None)
        if kept is not None and len(kept) == n_frames:
            out |= np.asarray(kept, bool)
        return out
    if p.shifts is None or len(p.shifts) != n_frames:
        return out
    mask = np.asarray(p.mask, bool)
    for k, patch in gaps:
        near = mask if masks is None or len(masks) != n_frames else mask | (np.nan_to_num(masks[k]) > 0)
        out[k] |= bool((_patch_on_grid(p.origin, p.shifts[k], mask.shape, patch) & near).any())
    return out


def _flag_filled_pixels(particles: list, gaps: list, energies) -> list:
    """Flag the pixels of each particle that lay, in a frame its XANES used, in a wide patch of input pixels without
    a value (``gaps``: ``(frame, pixels)`` of :func:`xanestrack.stack.sanitize_stack`, filled from the patch's rim).

    Grid pixel ``[i, j]`` of a particle lies in frame ``k`` at ``origin + (i, j) + shifts[k]``; a mask pixel is
    flagged where any of the four whole pixels around that point is in frame ``k``'s patch (the registration's
    bilinear resampling takes from them): :data:`xanestrack.xanes.FLAG_FILLED`, out of ``maps["quality_keep"]``
    (so out of its means), and a note naming how many and the frames. Flats saturated over the beam's hot spot
    (11.5x the default scene's exposure) made such a patch over a particle in the edge's frames: 777 of its 923
    pixels flagged; the 68 core pixels kept read an E50 0.16 eV below the truth on average (0.06 eV without the
    saturation), each within 3 standard errors.
    """
    if not gaps:
        return list(particles)
    n = len(energies)
    patches = dict(gaps)
    out = []
    for p in particles:
        notes = tuple(x for x in p.notes if not x.startswith(FILLED_NOTE))
        mask = np.asarray(p.mask, bool)
        used = np.ones(n, bool) if p.xanes_frames is None else np.asarray(p.xanes_frames, bool)
        hit, frames = _filled_on_grid(p.origin, p.shifts, mask.shape, patches.items(), used, within=mask)
        if not hit.any():
            out.append(p if notes == tuple(p.notes) else dataclasses.replace(p, notes=notes))
            continue
        flags = np.array(p.pixel_flags, dtype=np.uint16, copy=True)  # uint16: the misfit bit (256) survives
        flags[hit] |= xanes.FLAG_FILLED
        maps = dict(p.maps)
        if "quality_keep" in maps:
            maps["quality_keep"] = np.asarray(maps["quality_keep"], bool) & ~hit
        n_hit, n_mask = int(hit.sum()), int(mask.sum())
        note = (
            f"{FILLED_NOTE}: {n_hit} of its {n_mask} pixels lay in a wide patch of input pixels without a value "
            f"(saturated flat or detector pixels: see the input's notes) in {_count(len(frames), 'frame')} its XANES "
            f"used ({_frame_list(frames, energies)}); they were filled from the patch's rim, so their spectra there "
            "are not measured: flagged filled and left out of its means"
            + (
                " (none of its pixels is left: its means are over pixels not measured in those frames, not to be "
                "trusted; lower the exposure of the flats)"
                if n_hit >= n_mask
                else ""
            )
        )
        out.append(dataclasses.replace(p, pixel_flags=flags, maps=maps, notes=notes + (note,)))
    return out


def _has_note(p, start: str) -> bool:
    """Whether particle ``p`` has a note starting with ``start``."""
    return any(n.startswith(start) for n in p.notes)


def _with_filled_pixels(finished: list, gaps: list, energies) -> list:
    """:func:`_flag_filled_pixels` on the ``(ParticleResult, ...)`` tuples of :func:`_finish_particle`."""
    if not gaps:
        return finished
    flagged = _flag_filled_pixels([f[0] for f in finished], gaps, energies)
    return [(p, *f[1:]) for p, f in zip(flagged, finished)]


def _filled_run_note(particles, gaps: list, energies) -> str:
    """The run note saying where the input had wide patches without a value and which particles lay in them.

    Each patch (8-connected over the frames' patches together, the largest three) is located by its own pixels,
    weighted by the frames it was missing in: located by all of them at once, four patches in the frame's corners
    were said to be centred near row 126, column 126 of 256, where no pixel was missing. The cause is named as
    possible ones only: the same note came from flats saturated over the beam's hot spot and from optical density
    masked with NaN."""
    if not gaps:
        return ""
    from scipy import ndimage

    frames = sorted(k for k, _ in gaps)
    often = np.sum([g for _, g in gaps], axis=0, dtype=np.float64)
    labels, n_patches = ndimage.label(often > 0, structure=np.ones((3, 3), bool))
    index = np.arange(1, n_patches + 1)
    weight = ndimage.sum(often, labels, index)
    centres = ndimage.center_of_mass(often, labels, index)
    where = "; ".join(f"row {centres[i][0]:.0f}, column {centres[i][1]:.0f}" for i in np.argsort(-weight)[:3])
    ids = [p.particle for p in particles if any(n.startswith(FILLED_NOTE) for n in p.notes)]
    return (
        f"wide patches of input pixels without a value (saturated flat pixels, a masked region, saturated or dead "
        f"detector pixels: see the input's notes) in {_count(len(frames), 'frame')} "
        f"({_frame_list(frames, energies)}), up to {max(int(g.sum()) for _, g in gaps)} pixels in one, "
        f"{_count(n_patches, 'patch').replace('patchs', 'patches')} centred near {where}"
        f"{' ...' if n_patches > 3 else ''}: filled from their rim (the frame's median there would be background "
        "inside a particle); "
        + (
            f"the pixels of {_count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}"
            f"{' ...' if len(ids) > 20 else ''}) that lay in them are flagged filled and left out of their means "
            "(each particle's note says how many and in which frames); where they are saturated flat pixels, lower "
            "the exposure of the flats"
            if ids
            else "no particle's pixels lay in them"
        )
    )


def _moving_rim_run_note(particles) -> str:
    """The run note gathering the particles whose rim was flagged (:func:`_flag_moving_rims`)."""
    ids = [p.particle for p in particles if any(n.startswith(MOVING_RIM_NOTE) for n in p.notes)]
    if not ids:
        return ""
    return (
        f"the outlines of {len(ids)} of {len(particles)} particles ({', '.join(map(str, ids[:12]))}"
        f"{' ...' if len(ids) > 12 else ''}) grow or shrink across the scan, or turn or change their shape, "
        "which the registration (a translation per frame) does not follow: their rims' E50 and fractions are "
        "biased (the rim's spectra mix the particle and its surroundings), flagged moving_rim and left out of "
        "their means; each particle's note says by how much"
    )


def _means_untrusted(p) -> bool:
    """Whether a particle has edge energies but the quality masks keep no pixel of its core
    (:func:`xanestrack.result.core_pixels` then falls back to every core pixel)."""
    from .result import core_pixels

    if not p.quality_assessed or p.kept is None or not np.isfinite(p.edge_maps["e50"]).any():
        return False
    core = core_pixels(p)
    return bool(core.any() and not (core & p.kept).any())


#: frames whose means differ by less than this share of their mean are said to be normalised one by one
#: (:func:`_frame_means_note`). OD divided by each frame's mean by an earlier tool: 2e-7 (float32), 8e-5 on the
#: probe's scene once a zinger was replaced; the frames as measured: 1.1 and 1.5 (two default scenes), 0.15 (a
#: reduced stress-drift scene)
SAME_FRAME_MEAN = 1e-3


def _frame_means_note(od) -> str:
    """The note where every frame's mean is the same (within :data:`SAME_FRAME_MEAN`): the frames were divided by
    their own means (or so scaled) before, which divides the particles' edge out of their spectra: no E50 anywhere,
    or spectra no sample has, and nothing said of why. Empty otherwise."""
    if od.shape[0] < 3:
        return ""
    means = np.array([np.nanmean(f, dtype=np.float64) for f in od])
    mid = float(np.median(np.abs(means)))
    if not (np.all(np.isfinite(means)) and mid > 0):
        return ""
    spread = float(means.max() - means.min()) / mid
    if spread >= SAME_FRAME_MEAN:
        return ""
    return (
        f"every frame has the same mean ({mid:.4g}, within {spread:.1e} of it): were the frames divided by their own "
        "means before (normalised frame by frame)? That divides the particles' edge out of their spectra: their "
        "edge energies and fractions are not the particles'; give the optical density as measured"
    )


def _untrusted_note(untrusted) -> str:
    """The run note on particles whose core no quality mask keeps (:func:`_means_untrusted`): their means are
    over every core pixel, none trusted; it names the means given, not a mean E50 withheld (the particle's note
    says why: "the mean edge energy ... over every core pixel" was said where no mean E50 was given)."""
    from .result import core_pixels, fractions_withheld

    ids = lambda ps: ", ".join(str(p.particle) for p in ps[:20]) + (" ..." if len(ps) > 20 else "")  # noqa: E731
    withheld = [p for p in untrusted if any("its mean E50 is not given" in n for n in p.notes)]
    with_fractions = [
        p
        for p in untrusted
        if p.fractions is not None and np.isfinite(p.fractions[:, core_pixels(p)]).any() and not fractions_withheld(p)
    ]
    given = [
        what
        for what, has in (
            ("the mean edge energy", len(withheld) < len(untrusted)),
            ("the fractions", bool(with_fractions)),
        )
        if has
    ]
    many = len(untrusted) > 1
    text = (
        f"particle{'s' if many else ''} {ids(untrusted)}: no pixel of {'their' if many else 'its'} core passed the "
        "quality masks (edge jump, fit"
        + (", filled where the input had no value" if any(_has_note(p, FILLED_NOTE) for p in untrusted) else "")
        + ")"
    )
    if given:
        text += f", so {' and '.join(given)} given are over every core pixel, none of them trusted"
    else:
        text += " (none of them trusted)"
    if withheld:
        text += (
            f"; no mean edge energy is given for {ids(withheld) if len(withheld) < len(untrusted) else 'any'}"
            " (each particle's note says why)"
        )
    return text


#: eV: the scan's step where the edge crosses half its height beyond which its edge energies are said to be
#: biased. The default scene's pixel spectra (noise-free, every pixel's E50 against the truth), its energies
#: taken every k-th: 0.5-2.5 eV apart there -0.13 to +0.11 eV; 3-5 eV apart -0.75 to +0.17 eV (the linear
#: crossing across the edge's curvature). With the post-edge parabola of releases before (a line now:
#: :func:`xanestrack.xanes.auto_post_order`), 1.5 eV apart was already -0.65 to +0.06 eV.
COARSE_EDGE_STEP_EV = 2.5
#: (step eV, lowest, highest bias eV): the E50 of noise-free mixtures of the shipped NiO and LiNiO2 (fractions
#: 0-1 by 0.1) sampled on uniform grids of that step over 8200-8680 eV (10 grid phases each), normalised and
#: measured as the particles are, against their densely computed E50. The bias grows with the step, mostly low
#: (medians -0.04 / -0.22 / -0.62 / -1.00 / -1.50 eV at 2.5 / 5 / 8 / 10 / 12 eV); at 15 eV the edge window
#: holds one energy. :func:`_coarse_edge_note` quotes it at the scan's step (interpolated), where no references of
#: the particles' edge measure the bias for the run and the particles' edges lie at the Ni K-edge only (within
#: :data:`TWO_EDGES_EV` of :data:`NI_REFERENCE_EDGE_EV`): MnO / Mn2O3 mixtures sampled so read two-sided, up to
#: +0.69 eV at 5 eV apart, and a Co foil and that foil +4 eV -0.46 eV at 2.5 eV apart
COARSE_EDGE_BIAS_EV = (
    (2.5, -0.16, 0.10),
    (3.0, -0.21, 0.10),
    (4.0, -0.32, 0.08),
    (5.0, -0.49, 0.06),
    (6.0, -0.68, 0.08),
    (8.0, -1.41, 0.08),
    (10.0, -2.24, 0.13),
    (12.0, -3.20, 0.56),
)


#: eV: with references of the particles' edge, the coarse-step note is given where their mixtures' E50 sampled at
#: the scan's step is biased this much or more (:func:`_coarse_edge_range`), so that a sharp edge's note waits for a
#: coarser step than a metal-like edge's. Just above the shipped pair's at 2.5 eV apart (-0.166 to +0.099 eV; 3 eV
#: -0.212, synth's 30-energy grid, 2.45 eV there, -0.163), so that Ni scans keep :data:`COARSE_EDGE_STEP_EV`;
#: a Co foil pair reaches -0.46 eV and MnO / Mn2O3 +0.32 eV at 2.5 eV apart
COARSE_EDGE_NOTE_EV = 0.17
#: eV: steps up to this are not measured (:func:`_coarse_edge_range`, 0.1-0.3 s a run): the shipped pair read within
#: 0.11 eV on synth's 143- and 60-energy grids (0.5 and 1.2 eV apart at their edge)
COARSE_EDGE_MEASURED_FROM_EV = 1.0
#: the grid offsets (a share of the step each) and shares of the second reference of each adjacent pair that
#: :func:`_coarse_edge_range` samples, as :data:`COARSE_EDGE_BIAS_EV` was measured
COARSE_EDGE_PHASES = tuple(np.arange(10) / 10)
COARSE_EDGE_FRACTIONS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _coarse_edge_range(references, energies, step: float, *, shipped: bool, background, edge_window):
    """``(lowest, highest)`` eV: the bias of E50 of the mixtures of each adjacent pair of ``references``
    (:data:`COARSE_EDGE_FRACTIONS`, :func:`xanestrack.chemistry.normbias.mixture_bias`, measured as
    :func:`_normalisation_bias` measures them) sampled on uniform grids ``step`` eV apart over the scan's span, at
    :data:`COARSE_EDGE_PHASES` offsets; NaNs where none could be measured (fewer than two spectra)."""
    from .chemistry.normbias import mixture_bias

    e = np.asarray(energies, float)
    given = shipped or all(_reference_used_as_given(r, e) for r in references.values())
    vals = []
    for ph in COARSE_EDGE_PHASES:
        grid = np.arange(e[0] + ph * step, e[-1] + 1e-9, step)
        b = mixture_bias(
            grid,
            references,
            dense="given" if given else "normalised",
            edge_window=edge_window,
            fractions=COARSE_EDGE_FRACTIONS,
            background=background,
        )
        vals += [v for v in b.values() if np.isfinite(v)]
    return (min(vals), max(vals)) if vals else (float("nan"), float("nan"))


def _coarse_edge_bias(step: float) -> str:
    """The words of :func:`_coarse_edge_note` on the bias at ``step`` eV (:data:`COARSE_EDGE_BIAS_EV`)."""
    s, lo, hi = (np.asarray(c, float) for c in zip(*COARSE_EDGE_BIAS_EV))
    if step > s[-1]:
        return (
            f"more than the {lo[-1]:+.2f} to {hi[-1]:+.2f} eV of noise-free reference mixtures sampled {s[-1]:g} eV "
            "apart"
        )
    return (
        f"noise-free reference mixtures sampled {step:.1f} eV apart: {np.interp(step, s, lo):+.2f} to "
        f"{np.interp(step, s, hi):+.2f} eV; 2.5 eV apart, within {max(-lo[0], hi[0]):.2f} eV"
    )


def _coarse_edge_note(particles, energies, references=None, *, shipped: bool = False, edge_window=(-15.0, 20.0)) -> str:
    """A note where the scan's energies are far apart where the particles' edges cross half their step:
    E50 is interpolated linearly between frames, and across a coarse step the edge's curvature biases it, by an
    amount and in a direction the edge's shape sets. With ``references`` of the particles' edge
    (:func:`_references_at_particles_edge`) the bias is measured for this run (:func:`_coarse_edge_range`) and said
    where it reaches :data:`COARSE_EDGE_NOTE_EV`; without, where the step is over :data:`COARSE_EDGE_STEP_EV`,
    with the Ni table (:data:`COARSE_EDGE_BIAS_EV`) at the Ni K-edge and no numbers elsewhere (a Mn scan 5 eV
    apart was told "mostly low, -0.49 to +0.06 eV"; its particles read 0.16-0.35 eV high). Empty where the step
    there is fine."""
    e50 = []
    for p in particles:
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            e50.append(float(np.nanmedian(m)))
    e = np.asarray(energies, float)
    i = np.searchsorted(e, e50)
    inside = (i > 0) & (i < e.size)
    if not inside.any():
        return ""
    step = float(np.max(e[i[inside]] - e[i[inside] - 1]))
    e50 = np.asarray(e50)[inside]
    start = (
        f"the scan's energies are up to {step:.1f} eV apart where the particles' edges cross half their step "
        f"({min(e50):.1f}-{max(e50):.1f} eV): edge energies (E50) are interpolated between frames that far apart "
    )
    end = ": compare them between scans of one energy grid only"
    from .spectra import ReferenceSpectrum

    pair = {k: r for k, r in (references or {}).items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8}
    if len(pair) >= 2 and step > COARSE_EDGE_MEASURED_FROM_EV:
        lo, hi = _coarse_edge_range(
            pair,
            e,
            step,
            shipped=shipped,
            background=_particles_background(particles, e),
            edge_window=edge_window,
        )
        if np.isfinite(lo):
            if max(-lo, hi) < COARSE_EDGE_NOTE_EV:
                return ""
            return (
                start + f"and are biased by {lo:+.2f} to {hi:+.2f} eV (noise-free mixtures of the references "
                f"{', '.join(pair)} sampled {step:.1f} eV apart at {len(COARSE_EDGE_PHASES)} offsets, normalised and "
                "measured as the particles are, against their densely measured E50)" + end
            )
    if step <= COARSE_EDGE_STEP_EV:
        return ""
    if abs(float(np.median(e50)) - NI_REFERENCE_EDGE_EV) <= TWO_EDGES_EV:
        return start + f"and are biased, mostly low ({_coarse_edge_bias(step)})" + end
    at, lo, hi = (np.asarray(c, float) for c in zip(*COARSE_EDGE_BIAS_EV))
    ni = (
        f"more than {lo[-1]:+.2f} to {hi[-1]:+.2f} eV"
        if step > at[-1]
        else f"{np.interp(step, at, lo):+.2f} to {np.interp(step, at, hi):+.2f} eV"
    )
    return (
        start + "and are biased by an amount and in a direction the edge's shape sets, not measured here: no "
        "references of this edge (give them with --reference NAME=FILE for its numbers; at the Ni K-edge noise-free "
        f"NiO / LiNiO2 mixtures sampled so read {ni}, other edges' shapes otherwise, higher or lower)" + end
    )


#: eV: particles whose E0s (:func:`xanestrack.xanes.find_e0`, the largest rise of each one's mean spectrum) are
#: more than this apart are measured at two absorption edges (a scan over the Co K and Ni K edges of Co-rich
#: particles: one particle's E0 8343 eV, three at 7709 eV; one edge's E0s vary by a few eV)
TWO_EDGES_EV = 100.0
#: a step of a particle's mean normalised spectrum, more than :data:`SECOND_EDGE_FROM_EV` from its E0, of more than
#: this share of its edge step is another edge (:func:`_second_edge`). One edge (the probe's default, 143-energy,
#: 320-energy, uniform 5 eV, 0.5/10 eV, Mn and Ni-only Co+Ni scans, 40 particles): at most 0.01; a Co K step 0.15 /
#: 1 / 3 times the Ni K step: 0.08-0.18 / 0.54-1.14 / 0.28-1.65
SECOND_EDGE_STEP = 0.05
SECOND_EDGE_FROM_EV = 200.0


def _second_edge(e, norm, e0: float) -> float:
    """The energy (eV) of another edge in a particle's mean normalised spectrum ``norm`` at the energies ``e``: the
    largest rise (:func:`xanestrack.xanes.find_e0`) among the energies more than :data:`SECOND_EDGE_FROM_EV` below or
    above its E0 ``e0`` whose step (the mean 10-60 eV above it less the mean 10-60 eV below) is more than
    :data:`SECOND_EDGE_STEP`; NaN where there is none (or too few energies, 8, to look)."""
    e, norm = np.asarray(e, float), np.asarray(norm, float)
    best, where = SECOND_EDGE_STEP, float("nan")
    for part in (e < e0 - SECOND_EDGE_FROM_EV, e > e0 + SECOND_EDGE_FROM_EV):
        ok = part & np.isfinite(norm)
        if ok.sum() < 8:
            continue
        ec = find_e0(e[ok], norm[ok])
        hi = ok & (e > ec + 10.0) & (e < ec + 60.0)
        lo = ok & (e < ec - 10.0) & (e > ec - 60.0)
        if hi.any() and lo.any():
            step = abs(float(norm[hi].mean() - norm[lo].mean()))
            if step > best:
                best, where = step, float(ec)
    return where


def _two_edges(particles, energies) -> tuple[list, str]:
    """``(particles, note)``: where the particles' E0s lie more than :data:`TWO_EDGES_EV` apart, or a particle's mean
    spectrum has another step (:func:`_second_edge`), a run note naming the edges and the particles measured at
    each; the particles whose normalisation (from E0 + PRE_EDGE_RANGE[0] to the scan's end) spans another edge's
    step are given without edge energies and fractions (NaN maps, and a note), so that no table compares edges.

    A scan over the Co K and Ni K edges of Co-rich particles (Co step 3 times the Ni one): one particle's mean E50
    8340.5 eV (Ni), three 7715.8-7716.0 eV (Co: their post-edge line fitted across the Ni edge), in one table, and
    "resolved" differences of 624.7 eV between them. Those measured at the lower edge are withheld: their post-edge
    spans the upper edge's step; those at the upper edge keep theirs (their pre-edge lies 150-30 eV below it)."""
    from .xanes import PRE_EDGE_RANGE

    e = np.asarray(energies, float)
    e0 = {p.particle: float(p.e0_ev) for p in particles if np.isfinite(p.e0_ev)}
    second = {}
    for p in particles:
        if p.particle in e0 and getattr(p, "mean_norm", None) is not None:
            where = _second_edge(e, p.mean_norm, e0[p.particle])
            if np.isfinite(where):
                second[p.particle] = where
    if len(e0) < 2 and not second:
        return particles, ""
    at = np.array(sorted([*e0.values(), *second.values()]))
    starts = np.r_[0, np.flatnonzero(np.diff(at) > TWO_EDGES_EV) + 1]
    if starts.size < 2:
        return particles, ""
    groups = np.split(at, starts[1:])
    edges = [float(np.median(g)) for g in groups]
    edge_of = {pid: int(np.argmin([abs(v - x) for x in edges])) for pid, v in e0.items()}

    def ids(pids):
        return ", ".join(map(str, sorted(pids)))

    parts = []
    for k, x in enumerate(edges):
        own = [pid for pid, j in edge_of.items() if j == k]
        seen = [pid for pid, v in second.items() if abs(v - x) <= TWO_EDGES_EV]
        words = [f"E0 of particle{'s' if len(own) > 1 else ''} {ids(own)}"] if own else []
        if seen:
            words.append(f"a second step in the spectra of particle{'s' if len(seen) > 1 else ''} {ids(seen)}")
        parts.append(f"near {x:.0f} eV ({'; '.join(words)})")
    withheld, out = [], []
    for p in particles:
        others = [x for k, x in enumerate(edges) if p.particle in edge_of and k != edge_of[p.particle]]
        if p.particle in e0 and any(x > e0[p.particle] + PRE_EDGE_RANGE[0] for x in others):
            withheld.append(p.particle)
            nan_maps = {k: np.full_like(np.asarray(v, np.float32), np.nan) for k, v in p.edge_maps.items()}
            fr = None if p.fractions is None else np.full_like(np.asarray(p.fractions, np.float32), np.nan)
            maps = {
                k: np.full_like(np.asarray(v, np.float32), np.nan) if k.startswith(("e50", "whiteline")) else v
                for k, v in p.maps.items()
            }
            note = (
                f"no edge energies nor fractions: its spectrum is normalised at its edge near {e0[p.particle]:.0f} eV "
                f"from {e0[p.particle] + PRE_EDGE_RANGE[0]:.0f} eV to the scan's end, across another absorption "
                f"edge's step near {', '.join(f'{x:.0f}' for x in others)} eV (the run's note on two edges)"
            )
            p = dataclasses.replace(p, edge_maps=nan_maps, fractions=fr, maps=maps, notes=tuple(p.notes) + (note,))
        out.append(p)
    text = (
        f"the scan spans {len(edges)} absorption edges, {' and '.join(parts)}: each particle's edge energies and "
        "fractions are measured at the edge its mean spectrum rises most at, which hangs on its composition and "
        "thickness, and one edge's are not compared with another's"
    )
    if withheld:
        text += (
            f"; particle{'s' if len(withheld) > 1 else ''} {ids(withheld)} "
            f"{'have' if len(withheld) > 1 else 'has'} none (normalised across another edge's step)"
        )
    text += "; give each edge's frames as a scan of their own"
    return out, text


#: a turn of the field (rotation not fitted), or a change of its scale off the straight line in the energy
#: (scale model "energy"), explaining at least this share of the particles' own motion and moving them by
#: FIELD_NOTE_PX or more, is named in a run note. The rigid default scene turned by 0.5-3 degrees across the
#: scan: turn 0.96-0.97 of the own motion, 1.3-7.9 px; magnified by a 1 % step at mid-scan: scale 0.97, 0.84
#: px; 34 runs of other probes (default, drifting, cracked, touching, sparse, real frames): turn 0.00-0.27,
#: scale 0.00-0.57 (0.57: three particles of a small drifting scene). A turn or scale is judged at the particle
#: farthest from the particles' centroid (the rigid scene turned by 0.3 degrees: 0.55 px there, 0.47 px at the
#: median distance)
FIELD_NOTE_SHARE = 0.8
FIELD_NOTE_PX = 0.5


#: a change of the field's fitted scale across the scan beyond this share is said to be more than the optics give
#: (the note itself is given from FIELD_NOTE_PX at the particles' median distance from the centre): a zone plate
#: refocused on the energy changes the magnification by 0.3-1 % across a XANES scan (issue 15's range); stress-all,
#: its particles drifting on their own and 1 % magnified, was fitted 4.3 % (its own drift outward taken for it);
#: the default scene of seed 23, its particles drifting 1-6 px each way, 1.5 %
LARGE_SCALE_CHANGE = 0.02


def _large_scale_note(similarity, motion=None) -> str:
    """A note where the common motion's change of scale across the scan moves the particles by
    :data:`FIELD_NOTE_PX` or more at their median distance from the field's centre (as the two-frame note's; without
    ``motion``, where it changes by more than :data:`LARGE_SCALE_CHANGE`): a uniform swelling or shrinking of the
    electrode, or particles drifting outward together, is a change of scale as well, and is taken into it rather
    than into the particles' own motions. The default scene of seed 5 (256 px, 60 energies, 6 particles, no
    magnification in the truth) was fitted a scale of 0.9872 (-1.28 %, under the 2 % that alone gave the note), its
    particles' own motions off by up to 1.09 px, nothing said."""
    if similarity is None or "scale" not in similarity or not len(similarity):
        return ""
    scale = np.asarray(similarity["scale"], float)
    scale = scale[np.isfinite(scale)]
    if not scale.size:
        return ""
    change = float(scale.max() - scale.min())
    moved = lever = np.nan
    if motion is not None and len(motion):
        from .motion import _own_motions

        _, ref = _own_motions(motion)
        centre = np.asarray(similarity.attrs.get("centre", (np.nan, np.nan)), float)
        d = np.hypot(*(ref - centre).T)
        d = d[np.isfinite(d)]
        if d.size:
            lever = float(np.median(d))
            moved = change * lever
    if not (moved >= FIELD_NOTE_PX if np.isfinite(moved) else change > LARGE_SCALE_CHANGE):
        return ""
    how_far = (
        f", moving the particles by {moved:.1f} px at their median distance from the field's centre ({lever:.0f} px)"
        if np.isfinite(moved)
        else ""
    )
    optics = (
        "more than a zone plate refocused on the energy gives (0.3-1 %)"
        if change > LARGE_SCALE_CHANGE
        else "taken as a change of the optics' magnification (a zone plate refocused on the energy gives 0.3-1 %)"
        if change <= 0.01
        else "taken as a change of the optics' magnification, though more than a zone plate refocused on the "
        "energy usually gives (0.3-1 %)"
    )
    return (
        f"the field's scale (magnification) fitted to the particles changes by {100 * change:.1f} % across the scan "
        f"(common_scale {scale.min():.4f} to {scale.max():.4f}){how_far}, {optics}: a uniform swelling or shrinking of "
        "the electrode, or particles drifting outward or inward together, cannot be told from a change of "
        "magnification and is counted in it, not in the particles' own motions; where the optics' magnification is "
        "known, compare"
    )


def _position_noise(table, *, per_frame: bool = False):
    """The positions' noise, px per component: the RMS over the particles of the raw edge estimates (``edge_y,
    edge_x``) about the positions reported (smoothed across the energies), per frame (``per_frame``: a Series indexed
    by frame, what :func:`xanestrack.motion.peak_ratios` tests the field's common velocity against), else its 90th
    percentile over the frames; NaN where there is none to measure (no edge estimates, or positions not smoothed:
    ``--no-smooth-tracks``). The rigid scene with no stage motion: 0.009 px median over the frames, 0.039 at the 90th
    percentile, in its pre-edge frames."""
    if not len(table) or not {"edge_y", "edge_x", "y", "x", "frame"} <= set(table):
        return pd.Series(dtype=float) if per_frame else np.nan
    r2 = (table["edge_y"] - table["y"]) ** 2 + (table["edge_x"] - table["x"]) ** 2
    frames = np.sqrt(r2.groupby(table["frame"]).mean() / 2.0)  # per component
    if per_frame:
        return frames.where(frames > 0)
    per_frame = frames.to_numpy(float)
    per_frame = per_frame[np.isfinite(per_frame)]
    noise = float(np.percentile(per_frame, 90)) if per_frame.size else np.nan
    return noise if noise > 0 else np.nan


#: second differences of frames vouched for a particle needs for its positions' noise
#: (:func:`_particle_position_noise`); fewer: NaN, its own motion not judged against its noise
MIN_NOISE_DIFFERENCES = 5

#: frames: the longest span of the three frames vouched for that one second difference takes (next to each other
#: among the frames vouched for, those between not). Three in a row only, a faint particle vouched for in 24
#: scattered frames of 60 (reduced stress-counts seed 1) had 3 and went unjudged at 0.22 px of own motion; over 6
#: frames a smooth own motion of the default scenes (up to 0.2 px/frame) bends by a few hundredths of a pixel
NOISE_SPAN_FRAMES = 6


def _particle_position_noise(table, reliable) -> pd.Series:
    """Per particle (a Series by particle), its positions' noise, px per axis, over its frames vouched for
    (``reliable``: ``particle, frame, reliable``): the RMS of the second differences of its own motion as measured
    (``nonrigid`` plus the raw edge estimate less the position reported, ``edge - y``: the edge estimates less the
    motion the particles share; the position where the frame has no edge estimate), each frame vouched for against
    the straight line through its neighbours vouched for (``x_k - (x_{k-1} + x_{k+1}) / 2`` for three in a row; at
    most :data:`NOISE_SPAN_FRAMES` apart), each divided by its standard deviation for white noise of one
    (``sqrt(1 + a^2 + b^2)``, a and b the line's weights: sqrt(1.5) for three in a row); a smooth own motion hardly
    adds to them. NaN with fewer than :data:`MIN_NOISE_DIFFERENCES` of them.

    What the still-field rule's noise (:func:`_position_noise`: the raw estimates about the positions reported) is per
    particle: on the calibration probe's 116 runs the two agree (median ratio 1.01-1.08 per scene), and this one
    needs no smoothing (``--no-smooth-tracks``: positions as estimated, no residual) and is not shrunk where the
    smooth keeps almost every frame. Its RMS, not a robust spread: the occasional far frame is what a largest own
    displacement picks (a robust one read 0.5-0.9 times it on the stress scenes, and their noise-level own motions
    went unmarked)."""
    need = {"particle", "frame", "y", "x", "nonrigid_dy", "nonrigid_dx"}
    if not len(table) or not need <= set(table):
        return pd.Series(dtype=float)
    t = table.merge(reliable, on=["particle", "frame"], how="left") if reliable is not None else table.copy()
    use = t["reliable"].fillna(False).astype(bool) if "reliable" in t else pd.Series(True, index=t.index)
    own = t[["nonrigid_dy", "nonrigid_dx"]].to_numpy(float, copy=True)
    if {"edge_y", "edge_x"} <= set(t):
        raw = t[["edge_y", "edge_x"]].to_numpy(float) - t[["y", "x"]].to_numpy(float)
        own = own + np.where(np.isfinite(raw), raw, 0.0)
    own[~use.to_numpy()] = np.nan
    out = {}
    frames = t["frame"].to_numpy(float)
    for pid, idx in t.groupby("particle").indices.items():
        ok = idx[np.isfinite(own[idx]).all(axis=1)]
        ok = ok[np.argsort(frames[ok])]
        f, o = frames[ok], own[ok]
        if len(f) < 3:
            out[pid] = np.nan
            continue
        span = f[2:] - f[:-2]
        a = (f[2:] - f[1:-1]) / np.where(span > 0, span, 1.0)  # the weight of the frame before, 1 / 2 in a row
        b = 1.0 - a
        d = (o[1:-1] - a[:, None] * o[:-2] - b[:, None] * o[2:]) / np.sqrt(1.0 + a**2 + b**2)[:, None]
        d = d[(span > 0) & (span <= NOISE_SPAN_FRAMES)]
        out[pid] = float(np.sqrt(np.mean(d**2))) if len(d) >= MIN_NOISE_DIFFERENCES else np.nan
    return pd.Series(out, dtype=float)


def _still_field_note(ratios) -> str:
    """The note where the ratios of peak velocities are not defined: the field's common velocity stays within
    :data:`xanestrack.motion.STILL_FIELD_NOISE` times the positions' noise in every frame (``attrs["still_field"]`` of
    :func:`xanestrack.motion.peak_ratios`), as on frames aligned upstream. It quotes the values compared: the frame
    where the common velocity is largest against the noise."""
    from .motion import STILL_FIELD_NOISE

    still = ratios.attrs.get("still_field", {}) if len(ratios) else {}
    undefined = [(c, still[c]) for c in ("y", "x") if c in still and not still[c]["moves"]]
    if not undefined:
        return ""
    names = " and ".join({"y": "ratio_v", "x": "ratio_h"}[c] for c, _ in undefined)
    said = " and ".join(
        f"along {c} at most {d['velocity'] / d['noise']:.2f} times it (frame {d['frame']}: {d['velocity']:.3f} "
        f"px/frame, noise {d['noise']:.3f} px)"
        for c, d in undefined
    )
    return (
        f"the field hardly moves: its common velocity (the particles' rigid motion) stays within "
        f"{STILL_FIELD_NOISE:g} times the positions' noise (the raw edge estimates about the positions reported) in "
        f"every frame, {said}, so {names} (own against common velocity) "
        f"{'are' if len(undefined) > 1 else 'is'} not defined and left NaN for every particle in motion_summary.csv; "
        "each particle's own motion (peak_nonrigid_vy, peak_nonrigid_vx, max_nonrigid_displacement) is given as "
        "measured"
    )


#: particles an own-motion noise note names one by one (:func:`_own_motion_noise_note`); more are counted
NOISE_NOTE_MOST = 8


def _own_motion_noise_note(ratios) -> str:
    """The note naming the particles whose own motion is within their positions' noise (``nonrigid_at_noise`` of
    :func:`xanestrack.motion.peak_ratios`): their largest own displacement over their frames vouched for is not above
    what that noise alone reaches over as many frames (``max_nonrigid_noise_px``). Such a number is the noise's
    largest excursion, biased upward (a faint particle truly moving 0.16 px on its own read 0.33 +- 0.24 px over
    noise-only redraws), not a measured own motion. Quotes each one's numbers; empty where none is."""
    from .motion import OWN_MOTION_NOISE_QUANTILE

    if not len(ratios) or "nonrigid_at_noise" not in ratios:
        return ""
    at = ratios[ratios["nonrigid_at_noise"].astype(bool)].sort_values("particle")
    if not len(at):
        return ""
    shown = at.iloc[:NOISE_NOTE_MOST]
    each = ", ".join(
        f"particle {int(r.particle)} {r.max_nonrigid_displacement:.2f} px (noise alone: up to "
        f"{r.max_nonrigid_noise_px:.2f} px; {r.position_noise_px:.3f} px per axis)"
        for r in shown.itertuples()
    )
    more = f" and {len(at) - len(shown)} more" if len(at) > len(shown) else ""
    many = len(at) > 1
    return (
        f"{len(at)} of {len(ratios)} particles' own motion is within {'their' if many else 'its'} "
        f"positions' noise: {'their' if many else 'its'} largest own (non-rigid) displacement over "
        f"{'their' if many else 'its'} frames vouched for is not above what that noise alone reaches over as many "
        f"frames (of white noise that size, {OWN_MOTION_NOISE_QUANTILE:.0%} of scans stay below it): {each}{more}; "
        f"read {'these' if many else 'it'} as no own motion measured, not as how far "
        f"{'they' if many else 'it'} moved (motion_summary.csv: nonrigid_at_noise, max_nonrigid_noise_px)"
    )


#: particles the split note names one by one (those whose leaving out moves the common motion most; whose own motion
#: may be the split's); more are counted
SPLIT_NOTE_MOST = 6


def _scale_at_far_end(similarity, motion) -> tuple:
    """``(scale, far, lever)``: the common scale per frame, the frame where it lies furthest from 1, and the
    particles' median distance (px) from the field's centre at their reference positions (NaN where none)."""
    from .motion import _own_motions

    scale = similarity["scale"].to_numpy(float)
    far = int(np.nanargmax(np.abs(scale - 1.0)))
    _, ref = _own_motions(motion)
    centre = np.asarray(similarity.attrs.get("centre", (np.nan, np.nan)), float)
    lever = np.hypot(*(ref - centre).T)
    lever = float(np.median(lever[np.isfinite(lever)])) if np.isfinite(lever).any() else np.nan
    return scale, far, lever


def _split_notes(similarity, ratios, motion) -> list[str]:
    """Notes where the positions do not determine the split into common and own motion
    (:func:`xanestrack.motion.common_motion_split`, ``own_motion_split_px`` of
    :func:`xanestrack.motion.peak_ratios`, :func:`xanestrack.motion.undetermined_split_px`).

    The common motion is what most particles share; where most move on their own and no majority moves together,
    the robust fit follows whichever particles win a near-tie in each frame: reduced stress-drift seed 1 reported a
    particle fixed to the cell moving 2.42 px on its own (its noise bound 0.72 px), 0.55 px with the frames
    transposed, nothing said. One note where leaving one particle out moves the common motion (its scale as
    fitted) by :data:`xanestrack.motion.SPLIT_NOTE_PX` or more and some particle's own motion as much over its
    frames vouched for: how far, which particles carry the fit, which particles' own motion is within that
    (``nonrigid_within_split``), and what is determined (motion relative to one particle). One note where a kept
    magnification (the scale line in the energy) moves, with one particle left out and the line refitted, by
    :data:`FIELD_NOTE_PX` or more at the particles' median distance from the field's centre (or is dropped then),
    or moves an own motion by :data:`xanestrack.motion.SPLIT_NOTE_PX` where the translation did not: reduced
    stress-crowd seed 1 (6 particles) kept +0.65 % where the truth is +0.2 %; an empty margin cropped, or the
    frames transposed, dropped it; stress-counts seed 1 kept +1.65 % (one particle left out: dropped, the own
    motions 1.65 px apart)."""
    from .motion import SPLIT_NOTE_PX, undetermined_split_px

    notes = []
    if similarity is None or not len(ratios) or "own_motion_split_px" not in ratios:
        return notes
    worst = undetermined_split_px(ratios)
    shared = similarity["split_px"].to_numpy(float) if "split_px" in similarity else np.zeros(0)
    shared_worst = float(np.nanmax(shared)) if np.isfinite(shared).any() else 0.0
    within = ratios[ratios["nonrigid_within_split"].astype(bool)].sort_values("particle")
    shown = within.iloc[:SPLIT_NOTE_MOST]
    may = (
        "; the own motion of particle "
        + ", ".join(f"{int(r.particle)} ({r.max_nonrigid_displacement:.2f} px)" for r in shown.itertuples())
        + (f" and {len(within) - len(shown)} more" if len(within) > len(shown) else "")
        + " is within that and its noise: "
        + ("it" if len(within) == 1 else "they")
        + " may not have moved on "
        + ("its" if len(within) == 1 else "their")
        + " own at all (nonrigid_within_split)"
        if len(within)
        else ""
    )
    said = False
    if np.isfinite(worst) and shared_worst >= SPLIT_NOTE_PX:
        noise = (
            float(np.nanmedian(ratios["max_nonrigid_noise_px"]))
            if "max_nonrigid_noise_px" in ratios and np.isfinite(ratios["max_nonrigid_noise_px"]).any()
            else 0.0
        )
        k = int(np.nanargmax(shared))
        by = sorted(similarity.attrs.get("split_by_particle", []), key=lambda pv: -pv[1])
        carriers = [(p, v) for p, v in by if v >= SPLIT_NOTE_PX][:SPLIT_NOTE_MOST]
        carry = (
            "; leaving out particle "
            + ", ".join(
                f"{int(p)} moves it by {v:.2f} px" if i == 0 else f"{int(p)} by {v:.2f}"
                for i, (p, v) in enumerate(carriers)
            )
            + (
                f" ({len(by) - len(carriers)} more left out: less than {SPLIT_NOTE_PX:.1f} px)"
                if len(by) > len(carriers)
                else ""
            )
            if carriers
            else ""
        )
        notes.append(
            "the motion the particles share is not determined by them: most of them move on their own and no "
            "majority moves together, so the common motion (common_dy, common_dx) follows whichever particles win a "
            f"near-tie, frame by frame; fitted again with any one particle left out, it moves by up to "
            f"{shared_worst:.2f} px (frame {int(similarity['frame'].iloc[k])}), and a particle's own motion over its "
            f"frames vouched for by up to {worst:.2f} px, beyond the positions' noise (the own motions' noise bound, "
            f"median {noise:.2f} px){carry}. Every particle's own (non-rigid) motion and the ratios of own to common "
            f"velocity are relative to a common motion uncertain by that much or more (motion_summary.csv: "
            f"own_motion_split_px){may}. The motion relative to one particle is determined: where one is known to "
            "stay with the cell, --reference-particle gives every particle's motion relative to it (rel_dy, rel_dx "
            "in tracks.csv)"
        )
        said = True
    ends = similarity.attrs.get("split_scale_ends")
    if ends is not None and "scale" in similarity and len(similarity) and len(motion):
        scale, far, lever = _scale_at_far_end(similarity, motion)
        lo, hi = float(ends[0]), float(ends[1])
        moved = max(abs(hi - scale[far]), abs(scale[far] - lo)) * lever
        own = np.isfinite(worst) and not said
        if moved >= FIELD_NOTE_PX or own:
            dropped = " (1: the particles left do not share one, and it is dropped)" if 1.0 in (lo, hi) else ""
            notes.append(
                f"the magnification fitted to the particles (common_scale {scale[0]:.4f} to {scale[far]:.4f} across "
                f"the scan) is not determined by them: fitted again with any one particle left out it reads "
                f"{lo:.4f} to {hi:.4f} there{dropped}, moving the particles by up to {moved:.2f} px at their median "
                f"distance from the field's centre ({lever:.0f} px)"
                + (
                    f", and a particle's own motion over its frames vouched for by up to {worst:.2f} px: every "
                    f"particle's own (non-rigid) motion is uncertain by that much or more (motion_summary.csv: "
                    f"own_motion_split_px){may}"
                    if own
                    else "; the particles' own motions carry that (motion_summary.csv: own_motion_split_px)"
                )
                + "; where the optics' magnification is known, compare"
            )
    elif similarity.attrs.get("split_scale_untested") and "scale" in similarity and len(similarity) and len(motion):
        # three particles: one left out leaves two, which fit no line to test it. A review's scene (two of three
        # particles close together, the third drifting 1-1.5 px outward on its own, no magnification) kept a line
        # of +0.6-0.9 %, its own motion read as none; the truth's 1 % magnification on the same layout was dropped
        # before the frames' start took the similarity (motion._start_or_similarity): either way unsaid
        scale, far, lever = _scale_at_far_end(similarity, motion)
        moved = abs(scale[far] - 1.0) * lever
        if np.isfinite(moved) and moved >= FIELD_NOTE_PX:
            notes.append(
                f"the magnification fitted to the particles (common_scale {scale[0]:.4f} to {scale[far]:.4f} across "
                f"the scan, {moved:.2f} px at their median distance from the field's centre, {lever:.0f} px) rests on "
                "too few particles to be tested with one left out: one particle drifting toward or away from the "
                "centre on its own reads as a magnification, and a magnification as that particle's own motion; "
                "where the optics' magnification is known, compare, or give --reference-particle"
            )
    return notes


def _two_frame_scale_note(motion, similarity) -> str:
    """The note on the scale of a scan of two frames, where it moves the particles by :data:`FIELD_NOTE_PX` or
    more at their median distance from the field's centre: one pair of frames fits it freely, with no straight
    line in the energy and no test that the particles share it (both need three frames), so particles drifting
    outward or inward together are taken for a magnification (the default scene's four particles, three drifting
    4-6 px the same way: scale 1.029, the one still particle reported moving 3.4 px on its own, nothing said).
    A translation alone would make a true magnification every particle's own motion (the zone plate's 0.4 %
    between SSRL's two energies: 1.4 px at the particles' median distance from the axis), so the scale is kept
    and said."""
    if similarity is None or "scale" not in similarity or len(similarity) != 2 or not len(motion):
        return ""
    scale = float(similarity["scale"].iloc[1])
    first = motion[motion["frame"] == motion["frame"].min()]
    centre = np.asarray(similarity.attrs.get("centre", (np.nan, np.nan)), float)
    lever = np.hypot(first["y"].to_numpy(float) - centre[0], first["x"].to_numpy(float) - centre[1])
    lever = lever[np.isfinite(lever)]
    if not (np.isfinite(scale) and lever.size):
        return ""
    moved = abs(scale - 1.0) * float(np.median(lever))
    if not moved >= FIELD_NOTE_PX:
        return ""
    return (
        f"two energies: the motion all particles share is a similarity fitted on one pair of frames, its scale "
        f"{scale:.4f} ({100 * (scale - 1):+.1f} %, {moved:.1f} px at the particles' median distance from the field's "
        "centre), neither checked against one straight line in the energy nor tested on the particles (both need three "
        "energies or more): particles drifting outward or inward together cannot be told from a change of "
        "magnification and are counted in it; each particle's own (non-rigid) motion is relative to this scale (the "
        "displacement as measured is dy, dx in tracks.csv)"
    )


def _field_motion_notes(motion, energies, options) -> list[str]:
    """Notes where the particles' own (non-rigid) motions are mostly a turn of the whole field (rotation not
    fitted), a magnification off the scale model's straight line, or one uniform strain or shear of the field:
    each is a motion of the whole field, not of the particles one by one."""
    from .motion import _own_motions, field_rotation, field_strain

    _, ref = _own_motions(motion)
    ref = ref[np.isfinite(ref).all(axis=1)]
    if not len(ref):
        return []
    levers = np.hypot(*(ref - ref.mean(axis=0)).T)
    lever = float(np.median(levers))
    kinds = (["rotation"] if not options.rotation else []) + (["scale"] if options.scale_model == "energy" else [])
    notes = []
    for kind in kinds:
        theta, share = field_rotation(motion, kind=kind)
        if not theta.size or share < FIELD_NOTE_SHARE:
            continue
        k = int(np.argmax(np.abs(theta)))
        # judged on the largest own motion it explains, at the particle farthest from their centroid: at the median
        # distance, the rigid scene turned by 0.3 degrees (98 % of the own motions a turn of 0.286 degrees) read
        # 0.47 px and was not said, while five of six still particles reported 0.42-0.52 px of own motion
        if not abs(theta[k]) * levers.max() >= FIELD_NOTE_PX:
            continue
        where = (
            f"(frame {k}, {energies[k]:.1f} eV; {abs(theta[k]) * levers.max():.2f} px at the particle farthest from "
            f"their centroid, {abs(theta[k]) * lever:.2f} px at their median distance)"
        )
        if kind == "rotation":
            notes.append(
                f"the particles' own (non-rigid) motions are mostly ({100 * share:.0f} %) a turn of the whole field, up "
                f"to {np.degrees(theta[k]):+.2f} degrees {where}: the rotation is not fitted by default; if the image "
                "turns, run again with --rotation"
            )
        elif "dropped_scale" in getattr(motion.attrs.get("similarity"), "attrs", {}):
            # the straight line was fitted and not kept (motion.common_similarity's attrs["dropped_scale"]): the scale left in the own motions
            # is that line's, not one off it
            notes.append(
                f"the particles' own (non-rigid) motions are mostly ({100 * share:.0f} %) a change of the field's "
                f"magnification that the common motion does not hold (the straight line in the energy fitted to it "
                f"was not kept), up to {100 * theta[k]:+.2f} % {where}: where the optics' magnification changed, run "
                "again with --scale-model frame (a scale fitted in every frame)"
            )
        else:
            notes.append(
                f"the particles' own (non-rigid) motions are mostly ({100 * share:.0f} %) a change of the field's "
                f"magnification off one straight line in the energy, up to {100 * theta[k]:+.2f} % {where}: if the "
                "optics were refocused during the scan, run again with --scale-model frame"
            )
    if notes:
        return notes
    A, share = field_strain(motion)
    if not A.size or share < FIELD_NOTE_SHARE:
        return notes
    left = np.abs(A).max(axis=(1, 2))  # what the common motion left in the particles' own motions
    if not left.max() * lever >= FIELD_NOTE_PX:
        return notes
    # the field's deformation is A and the fitted scale change together: the scale took the isotropic part of a
    # stretch (the rigid scene stretched by 1 % along x only, 8 particles: -0.22 % along y, +0.59 % along x quoted at
    # frame 47, where the remainder was largest; with the scale, +0.00 / +0.81 % there, the truth 0 / +0.80 %, and
    # +0.00 / +1.01 % at the last frame, where the stretch is largest)
    sim = motion.attrs.get("similarity")
    scale = np.ones(len(A))
    if sim is not None and len(sim) and "scale" in sim:
        frames = np.sort(motion["frame"].unique())
        scale = sim.set_index("frame")["scale"].reindex(frames).to_numpy(float)
        scale = np.where(np.isfinite(scale), scale, 1.0)
    total = A + (scale - 1.0)[:, None, None] * np.eye(2)
    size = np.abs(total).max(axis=(1, 2))
    k = int(np.argmax(size))
    a = total[k]

    def pct(v):  # a percentage to two decimals, "+0.00" rather than "-0.00" for a stretch along x alone
        return float(np.round(100 * v, 2)) + 0.0

    notes.append(
        f"the particles' own (non-rigid) motions are mostly ({100 * share:.0f} %) one uniform deformation of the "
        f"whole field, which the common motion (translation, scale{', rotation' if options.rotation else ''}) "
        f"does not take whole: with the fitted magnification, up to {pct(a[0, 0]):+.2f} % strain along y, "
        f"{pct(a[1, 1]):+.2f} % along x, {pct((a[0, 1] + a[1, 0]) / 2):+.2f} % shear"
        + ("" if options.rotation else f", {np.degrees((a[1, 0] - a[0, 1]) / 2):+.2f} degrees of turn")
        + f" (frame {k}, {energies[k]:.1f} eV; {size[k] * lever:.1f} px at the particles' median distance from "
        f"their centroid), of which the common scale took {100 * (scale[k] - 1):+.2f} % along both (common_scale: "
        f"not all of it a magnification of the optics) and the own motions keep up to {left.max() * lever:.1f} px: "
        "a strain of the electrode as a whole or of the image (optics, detector); the particles' own motions are "
        "relative to it"
    )
    return notes


#: a particle vouched for in fewer than this share of its frames is named in a run note (an empty field's
#: texture and noise, taken for 35 particles, every one vouched for in at most 1 of 143 frames, said nothing)
RARELY_VOUCHED = 0.1


def _rarely_vouched_note(particles) -> str:
    """A note naming the particles vouched for in fewer than ``RARELY_VOUCHED`` of their frames."""
    from .result import UNVOUCHED_FLAGS

    rare = [p for p in particles if np.mean((np.asarray(p.frame_flags) & UNVOUCHED_FLAGS) == 0) < RARELY_VOUCHED]
    if not rare:
        return ""
    # a real particle out of the field, or cut by its border, in most of its frames was called "perhaps not a
    # particle at all" (a probe's particle that the drift carried onto the border)
    away = [p.particle for p in rare if np.mean((np.asarray(p.frame_flags) & FRAME_FLAGS["out_of_view"]) > 0) > 0.5]
    ids = [p.particle for p in rare]
    why = "not followed reliably; perhaps not particles at all (texture of the matrix, debris, noise), or too faint to follow"
    if len(away) == len(ids):
        why = "out of the field or cut by its border in most of their frames"
    elif away:
        why += f"; {', '.join(map(str, away))} out of the field or cut by its border in most of {'its' if len(away) == 1 else 'their'} frames"
    return (
        f"{_count(len(ids), 'particle')} of {len(particles)} vouched for in fewer than {100 * RARELY_VOUCHED:.0f} % of "
        f"{'its' if len(ids) == 1 else 'their'} frames ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}): "
        f"{why}: read their positions, motions and chemistry as not measured"
    )


def _count(n: int, noun: str) -> str:
    """``"1 object"``, ``"3 objects"`` (notes said "1 objects")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _frame_list(frames, energies) -> str:
    """``"20 (8330.0 eV), 31 (8341.5 eV)"``: up to ten frames with their energies, `` ...`` after."""
    return ", ".join(f"{k} ({energies[k]:.1f} eV)" for k in frames[:10]) + (" ..." if len(frames) > 10 else "")


def _frames_without_particles(particles, energies) -> str:
    """A note naming the frames in which no particle was measured (every one interpolated there),
    with two particles or more: a frame without an image (no beam, the shutter closed, the sample
    out of the beam) rather than a particle lost. Empty where there is none."""
    if len(particles) < 2:
        return ""
    flags = np.array([np.asarray(p.frame_flags) for p in particles])
    frames = np.flatnonzero(((flags & FRAME_FLAGS["interpolated"]) > 0).all(axis=0))
    if not frames.size:
        return ""
    used = [np.asarray(p.xanes_frames, bool)[frames] for p in particles if p.xanes_frames is not None]
    left_out = bool(used) and not np.any(used)
    return (
        f"no particle measured in {frames.size} frame{'s' if frames.size > 1 else ''}: {_frame_list(frames, energies)}; every particle's "
        "position there is interpolated"
        + (", and the frame is in no particle's XANES" if left_out else "")
        + " (a frame without an image: no beam, the shutter closed, the sample out of the beam?)"
    )


#: the words of a run note that asks the user to run again with another option (the CLI prints
#: such notes beside the table; every note is in run.json and the report)
RERUN = "run again with"

#: words of a run note the user should act on or know before reading on: ``run`` and ``series`` print those
#: notes (every note is in run.json and the report)
CONSOLE_NOTE_WORDS = (
    RERUN,
    "left out",
    "not computed",
    "no XANES",
    "no isolated particle",
    "no image there",
    "do not describe",
    "uniform deformation",
    "mistyped energy",
    "cannot be told from a change of magnification",
    "oxidised_fraction (the particles' table",  # the references given most oxidised first: every fraction inverted
    "common step between key frames could not be told",
    "the normalisation's bias on this scan's energies",  # E50 moved by how the post-edge is sampled (normbias)
    "mean E50 not given",  # a "-" under the mean E50: a gap of frames across its edge, few pixels measured
    # the clusters asked for are not phases (_cluster_note: one spread of pixels cut in two, a window without the
    # edge) or were not made (too few frames or pixels): said in the report alone before, clusters.csv silent
    "phase mapping: ",
)

#: the words of a particle's note where its mean E50 is withheld (:mod:`xanestrack.xanes`), and of the run note
#: that gathers those particles (:func:`_particle_chemistry_notes`)
MEAN_E50_WITHHELD, MEAN_E50_NOT_GIVEN = "its mean E50 is not given", "mean E50 not given"


def _where(points) -> str:
    """``"(y, x), ..."`` of up to six positions (n, 2), `` ...`` after."""
    points = np.asarray(points, float)
    return ", ".join(f"({y:.0f}, {x:.0f})" for y, x in points[:6]) + (" ..." if len(points) > 6 else "")


def _still_note(rejected_tracks) -> str | None:
    """The note on tracks left out as still on the detector (:func:`xanestrack.match._still_on_detector`)."""
    still = rejected_tracks[rejected_tracks["reason"] == "still_on_detector"]
    if not len(still):
        return None
    return (
        f"{_count(len(still), 'object')} left out that stayed put on the detector while the sample moved under them (dust on "
        f"the scintillator or the optics, or flat-field pattern the flats did not take out), at (y, x) "
        f"{_where(still[['y', 'x']].to_numpy())}"
    )


def _particle_chemistry_notes(
    particles, n_energies: int | None = None, min_energies: int = 8, *, calibrated: bool = False
) -> list:
    """Run notes gathering the particles whose XANES failed or was skipped, those whose mean E50 is not given,
    and those the references do not describe (each said only in the particle's own notes before, in the report:
    on the console a "-" under the mean E50, or fractions given as they were). A scan of fewer energies than the
    XANES needs is said so (the first particle's reason blamed frames not vouched for on the two-frame SSRL scan).
    With ``calibrated`` (the axis calibrated for this run: ``--energy-reference``, ``--known-edge``) the misfit
    note does not advise calibrating it."""
    from .xanes import EDGE_ABSENT_NOTE, FALL_BACK_NOTE, NEGATIVE_STEP_NOTE

    out = []
    ids = lambda ps: ", ".join(str(p) for p in ps[:12]) + (" ..." if len(ps) > 12 else "")  # noqa: E731
    failed = [(p.particle, n) for p in particles for n in p.notes if n.startswith(("XANES failed", "XANES skipped"))]
    if failed and n_energies is not None and n_energies < min_energies:
        n = f"{n_energies} energy" if n_energies == 1 else f"{n_energies} energies"
        out.append(f"no XANES: the scan has {n} (the analysis needs {min_energies})")
        failed = []
    # spectra no sample has (frames in another order than the energies, or reversed), and particles without the
    # scan's edge (binder, an Al flake): said on their own, whatever the first particle failed on (the XANES of
    # every particle declined for the same cause reads as one note)
    for marker in (FALL_BACK_NOTE, NEGATIVE_STEP_NOTE, EDGE_ABSENT_NOTE):
        own = [(pid, n) for pid, n in failed if marker in n]
        if own:
            who = sorted({pid for pid, _ in own})
            out.append(
                f"no XANES for {len(who)} of {len(particles)} particles ({ids(who)}): {own[0][1]}"
                + (" (likewise for the others: each particle's note in the report)" if len(who) > 1 else "")
            )
            failed = [(pid, n) for pid, n in failed if pid not in who]
    if failed:
        who = sorted({pid for pid, _ in failed})
        out.append(
            f"no XANES for {len(who)} of {len(particles)} particles ({ids(who)}): {failed[0][1]}"
            + (
                " (and likewise or otherwise for the others: each particle's note in the report)"
                if len(who) > 1
                else ""
            )
        )
    # a "-" under every mean E50 with no word printed: frames missing across the edge (every E50 in the gap), or a
    # particle whose frames not vouched for cut gaps across its edge (stress-crowd seed 1, particle 1)
    no_xanes = {p.particle for p in particles if any(n.startswith(("XANES failed", "XANES skipped")) for n in p.notes)}
    withheld = [
        (p.particle, n) for p in particles if p.particle not in no_xanes for n in p.notes if MEAN_E50_WITHHELD in n
    ]
    if withheld:
        who = sorted({pid for pid, _ in withheld})
        out.append(
            f"{MEAN_E50_NOT_GIVEN} for {len(who)} of {len(particles)} particles ({ids(who)}): "
            f"particle {withheld[0][0]}: {withheld[0][1]}"
            + (" (likewise or otherwise for the others: each particle's note in the report)" if len(who) > 1 else "")
        )
    few = [p.particle for p in particles if any(n.startswith(SPARSE_POST_EDGE_NOTE) for n in p.notes)]
    if few:
        first = next(n for p in particles for n in p.notes if n.startswith(SPARSE_POST_EDGE_NOTE))
        out.append(f"{first} (particles {ids(few)})")
    shoulder = [p.particle for p in particles if any(n.startswith(SHOULDER_NOTE) for n in p.notes)]
    if shoulder:
        out.append(
            f"the edges of {len(shoulder)} of {len(particles)} particles ({ids(shoulder)}) cross half their step on "
            "a shoulder (metal-like): their E50 hangs on the edge step the normalisation sets, by more than their "
            "sigma says; each particle's note says by how much"
        )
    misfit = [p.particle for p in particles if any(MISFIT_NOTE in n for n in p.notes)]
    if misfit:
        out.append(
            f"the references do not describe the spectra of {len(misfit)} of {len(particles)} particles "
            f"({ids(misfit)}): their fractions may not be their chemistry (a phase the references do not hold, the "
            + (
                "energy axis off theirs even as calibrated for this run"
                if calibrated
                else "energy axis off theirs: calibrate it with --energy-reference or --known-edge"
            )
            + ", or spectra the scan's energies cannot normalise: see the other notes); each particle's note says by "
            "how much"
        )
    region = [p.particle for p in particles if any(n.startswith(MISFIT_REGION_NOTE) for n in p.notes)]
    if region:
        # a phase the references lack in part of a particle: its fractions there read as the nearest reference's
        out.append(
            f"the references do not describe a region of {len(region)} of {len(particles)} particles "
            f"({ids(region)}): a phase they do not hold (or spectra distorted there), fitted as the nearest of them; "
            "those pixels are flagged misfit in pixel_flags and left out of the particles' mean fractions (not of "
            "their mean E50); each particle's note says how much"
        )
    given = [(p.particle, n) for p in particles for n in p.notes if n.startswith(xanes.AS_GIVEN_NOTE)]
    if given:
        # the references not normalised as the particles' spectra are (xanes.references_on_scan): their fractions
        # carry the bias of the two normalisations, said on the particles only
        who = sorted({pid for pid, _ in given})
        out.append(
            f"{len(who)} of {len(particles)} particles ({ids(who)}): {given[0][1]}"
            + (" (likewise for the others: each particle's note in the report)" if len(who) > 1 else "")
        )
    out += [n for n in (_shared_noise_run_note(particles),) if n]
    return out


def _shared_noise_run_note(particles) -> str:
    """The run note gathering the particles whose mean E50's sigma was widened for noise their pixels share along
    rows or columns of a frame (:data:`xanestrack.xanes.SHARED_NOISE_NOTE`); empty where none was."""
    import re

    from .xanes import SHARED_NOISE_NOTE

    seen = [(p.particle, n) for p in particles for n in p.notes if n.startswith(SHARED_NOISE_NOTE)]
    if not seen:
        return ""
    x = [float(m.group(1)) for _, n in seen for m in [re.search(r"widened ([0-9.]+) x", n)] if m]
    along = [w for w in ("rows", "columns") if any(f"{SHARED_NOISE_NOTE} {w}" in n or f"and {w}" in n for _, n in seen)]
    who = sorted({pid for pid, _ in seen})
    return (
        f"{SHARED_NOISE_NOTE} {' and '.join(along)} of the frames (readout stripes, or a detector's correlated "
        f"noise), measured in the background around {len(who)} of {len(particles)} particles "
        f"({', '.join(str(p) for p in who[:12])}{' ...' if len(who) > 12 else ''}): a mean over a particle's pixels "
        "averages that part away only across rows (columns), so the standard errors of their mean E50 were widened "
        + (f"{min(x):.1f}-{max(x):.1f} x" if x and min(x) != max(x) else f"{x[0]:.1f} x" if x else "")
        + " (each particle's note); removing the stripes from the frames before the run would narrow them"
    )


#: share of a particle's absorption above the ring around it (the median over its frames vouched for) under which
#: it is taken as not there in a leading frame with no mask of its size: a sphere deposited at frame 30 (the default
#: scene, seed 5, 256 px) absorbed under 2 % of it before; stress-all seed 2 (reduced)'s particle faintest in its
#: first frame, with no mask there, 12-15 %
FIRST_SEEN_CONTRAST = 0.05


def _first_seen(p: ParticleResult, others: list, od: np.ndarray) -> int:
    """The first frame a particle is seen in: after its leading frames not vouched for with nothing absorbing there.

    Parameters
    ----------
    p : ParticleResult
        The particle (its ``frame_flags``, ``positions``, ``masks``, ``origin``).
    others : list of ndarray (n_frames, 2)
        The other particles' positions: their median displacement from the particle's first frame vouched for
        places its mask in the frames before.
    od : ndarray (n_frames, ny, nx)
        The optical density.

    Returns
    -------
    int
        The first frame that is not one of a leading run of frames each not vouched for and where its mask (from
        its first frame vouched for, placed by the others' motion) absorbs no more than
        :data:`FIRST_SEEN_CONTRAST` of what it absorbs in its frames vouched for above the ring around it; 0 where
        its first frame is vouched for or absorbs more, or where this cannot be told (no frame vouched for, no
        other particle). Its positions in such frames are of something else (an
        edge correlation on nothing, or a mask on a feature nearby). A particle faint before its edge absorbs
        there: it is seen (stress-all seed 2, reduced: 20 frames with no mask, none left out).
    """
    from .result import UNVOUCHED_FLAGS

    f = np.asarray(p.frame_flags, int)
    vouched = np.flatnonzero((f & UNVOUCHED_FLAGS) == 0)
    run = int(vouched[0]) if vouched.size else int(f.size)  # the leading frames not vouched for
    if run == 0 or not vouched.size or not others:
        return 0
    kv = int(vouched[0])
    pos = np.asarray(p.positions, float)
    mask = np.asarray(p.masks[kv]) >= 0.5
    if not np.isfinite(pos[kv]).all() or mask.sum() < 5:
        return 0
    inner = ndimage.binary_dilation(mask, iterations=2)
    ring = ndimage.binary_dilation(mask, iterations=8) & ~inner
    mi, ri = np.argwhere(mask), np.argwhere(ring)
    _, ny, nx = od.shape

    def contrast(k, at):
        """The mask's mean absorption above the ring's median in frame ``k`` with the mask's centre at ``at``."""
        off = np.round(np.asarray(p.origin, float) + at - pos[0]).astype(int)
        m, r = mi + off, ri + off
        m = m[(m >= 0).all(axis=1) & (m[:, 0] < ny) & (m[:, 1] < nx)]
        r = r[(r >= 0).all(axis=1) & (r[:, 0] < ny) & (r[:, 1] < nx)]
        if len(m) < 0.5 * len(mi) or len(r) < 0.5 * len(ri):
            return np.nan
        return float(np.nanmean(od[k][m[:, 0], m[:, 1]]) - np.nanmedian(od[k][r[:, 0], r[:, 1]]))

    seen = np.array([contrast(k, pos[k]) for k in vouched])
    level = np.nanmedian(seen) if np.isfinite(seen).any() else np.nan
    if not level > 0:
        return 0
    at = np.stack([np.asarray(q, float) for q in others])  # (n_others, n_frames, 2)
    for k in range(run):
        d = at[:, k] - at[:, kv]
        d = d[np.isfinite(d).all(axis=1)]
        c = contrast(k, pos[kv] + np.median(d, axis=0)) if len(d) else np.nan
        if not c <= FIRST_SEEN_CONTRAST * level:
            return k
    return run


def _first_seen_note(frame_flags, k: int, energies) -> str:
    """A particle's note that it was first seen at frame ``k`` (:func:`_first_seen`), and from where its own
    motion is measured."""
    from .result import UNVOUCHED_FLAGS

    f = np.asarray(frame_flags, int)
    vouched = np.flatnonzero((f[k:] & UNVOUCHED_FLAGS) == 0)
    since = f"frame {k + int(vouched[0])}" if vouched.size else "no frame (none vouched for)"
    return (
        f"first seen at frame {k} ({float(energies[k]):.1f} eV): not there, or not measurable, before (frames "
        f"0-{k - 1}: its position not vouched for and next to nothing absorbing where it lies later; a particle "
        "deposited or grown during the scan, or one too faint there); its displacements and own motion are measured "
        f"from its first frame vouched for, {since}, and its frames before are left out of the motion all particles "
        "share"
    )


def _reference_note(motion, reference_particle, n_frames: int) -> str | None:
    """The note on a reference particle (``--reference-particle``) measured in no frame: its ``rel_*``
    columns were NaN throughout and the report's panel empty, nothing said. None otherwise."""
    if reference_particle is None or not len(motion):
        return None
    rows = motion[motion["particle"] == reference_particle]
    if np.isfinite(rows["dy"].to_numpy(float)).any():
        return None
    return (
        f"reference particle {reference_particle} was measured in none of the {n_frames} frames: no motion relative "
        "to it (rel_dy, rel_dx are NaN); choose another with --reference-particle"
    )


def _short_tracks_note(rejected_tracks, n_examined: int, tracks=None) -> str | None:
    """The note on tracks left out as seen in too few of the frames examined (in two at least: one sighting
    is noise): a particle entering the field late in the scan is one (the default scene seen through a
    window drifting 90 px: one particle entering in the last 3 of 13 key frames, left out without a word
    before this note). Pieces of a particle that is tracked (inside its radius of its median position in
    ``tracks``: a faint particle outlined in pieces in some frames) are not such objects (named so before,
    where the report's table of rejected objects already left them out as its fragments).

    A track whose place showed, where it was missed, one irregular body of its size (``n_irregular``, rejected
    as not convex: :func:`xanestrack.match.link_detections`) is named apart, with how often, and counts as seen
    there (a track detected once is named where it was so outlined in one frame more): a particle ringed by
    fines, outlined so in most frames, is kept; one outlined so in too few frames too was left out without a
    word (stress-all seed 3, reduced: a particle of radius 12.6 px detected in 1 of 9 key frames, outlined as
    one irregular body in 3 more)."""
    short = rejected_tracks[rejected_tracks["reason"] == "short_track"]
    if "piece_of" in short:  # pieces of a tracked particle's outline: its own note names them (_pieces_note)
        short = short[short["piece_of"].to_numpy(int) < 0]
    irregular = short["n_irregular"].to_numpy(int) if "n_irregular" in short else np.zeros(len(short), int)
    short = short.assign(n_irregular=irregular)
    short = short[short["n_frames"] + short["n_irregular"] >= 2]
    if len(short) and tracks is not None and len(tracks) and {"particle", "y", "x", "radius"} <= set(tracks.columns):
        at = tracks.groupby("particle")[["y", "x", "radius"]].median().to_numpy(float)
        d = np.hypot(short["y"].to_numpy()[:, None] - at[None, :, 0], short["x"].to_numpy()[:, None] - at[None, :, 1])
        short = short[~(d < at[None, :, 2]).any(axis=1)]
    if not len(short):
        return None
    parts = []
    plain, odd = short[short["n_irregular"] == 0], short[short["n_irregular"] > 0]
    if len(plain):
        lo, hi = int(plain["n_frames"].min()), int(plain["n_frames"].max())
        parts.append(
            f"{_count(len(plain), 'object')} seen in only part of the scan ({lo if lo == hi else f'{lo}-{hi}'} of the "
            f"{n_examined} frames examined) left out, at (y, x) {_where(plain[['y', 'x']].to_numpy())}: particles "
            "entering or leaving the field, faint particles, or debris"
        )
    if len(odd):
        seen = ", ".join(
            f"({y:.0f}, {x:.0f}) detected in {int(n)} and outlined as one irregular body in {int(m)}"
            for y, x, n, m in odd[["y", "x", "n_frames", "n_irregular"]].to_numpy(float)
        )
        parts.append(
            f"{_count(len(odd), 'object')} detected as a particle in too few of the {n_examined} frames examined and, "
            f"where missed, outlined in its place at its size as one irregular body (not convex, rejected as a "
            f"particle) in others, left out as seen in fewer than half of them, at (y, x) {seen}: likely a particle with "
            "fines or a neighbour stuck to it, lost; rejected.csv names it short_track_not_convex_N (N: those frames)"
        )
    return "; ".join(parts)


def _objects(dets) -> list:
    """Detections of one reason grouped into objects (those within their radius of one another):
    ``[y, x, radius, frames]`` each, the largest first."""
    pts = dets[["y", "x", "radius", "frame"]].to_numpy(float)
    objects = []
    for y, x, r, k in pts[np.argsort(-pts[:, 2])]:
        for o in objects:
            if np.hypot(o[0] - y, o[1] - x) < max(o[2], r):
                o[3].add(int(k))
                break
        else:
            objects.append([y, x, r, {int(k)}])
    return objects


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if round(lo, 1) == round(hi, 1) else f"{lo:.1f}-{hi:.1f}"


def _too_large_note(rejected_dets, max_radius: float) -> str | None:
    """The note on objects left out as larger than the largest particle radius in two frames or more,
    with the ``--max-radius`` that would keep them; None where there are none. The radius range comes
    from the pixel size, or is a default: a user whose particles are larger is told, not left to find
    the largest of them missing."""
    if not len(rejected_dets) or "reason" not in rejected_dets:
        return None
    seen = [o for o in _objects(rejected_dets[rejected_dets["reason"] == "too_large"]) if len(o[3]) >= 2]
    if not seen:
        return None
    radii = [o[2] for o in seen]
    suggest = int(np.ceil(1.2 * max(radii) / 10.0) * 10)
    return (
        f"{_count(len(seen), 'object')} left out as larger than the largest particle radius ({max_radius:.0f} px) in every frame "
        f"they were seen (radius {min(radii):.0f}-{max(radii):.0f} px, at (y, x) {_where([o[:2] for o in seen])}): if "
        f"they are particles, {RERUN} --max-radius {suggest}"
    )


#: px: the smallest --min-radius the note on objects too small to be particles suggests
MIN_SUGGESTED_RADIUS = 2

#: an object left out as too small is named where seen in at least this share of the frames examined:
#: a fine fixed to the matrix or a particle of a binned scan is, a blob of noise is not (stress-counts
#: seed 1: 18 such detections, none of them an object seen in 40 % of the key frames)
SMALL_SEEN_SHARE = 0.4


def _too_small_note(rejected_dets, min_radius: float, n_examined: int) -> str | None:
    """The note on objects left out as smaller than the smallest particle radius in at least
    :data:`SMALL_SEEN_SHARE` of the frames examined, with the ``--min-radius`` that would keep them (a
    scan binned 2x: the default scene's two smallest particles, r 4.7 and 6.5 px, were left out without
    a word); None where there are none."""
    if not len(rejected_dets) or "reason" not in rejected_dets:
        return None
    need = max(2, SMALL_SEEN_SHARE * n_examined)
    seen = [o for o in _objects(rejected_dets[rejected_dets["reason"] == "too_small"]) if len(o[3]) >= need]
    if not seen:
        return None
    radii = [o[2] for o in seen]
    # never below 2 px: fines of a matrix (radius 2-4 px, now listed down to a 16th of the smallest area) made
    # it suggest --min-radius 1, which tracks noise
    suggest = max(MIN_SUGGESTED_RADIUS, int(np.floor(0.8 * min(radii))))
    return (
        f"{_count(len(seen), 'object')} left out as smaller than the smallest particle radius ({min_radius:g} px) in every frame "
        f"they were seen, seen in {SMALL_SEEN_SHARE:.0%} of the {n_examined} frames examined or more (radius "
        f"{_span(radii)} px, at (y, x) {_where([o[:2] for o in seen])}): fines, or particles of a binned scan; if "
        f"they are particles, {RERUN} --min-radius {suggest}"
    )


def _summarise_rejected(rejected_dets, rejected_tracks, left_out=()):
    """One row per rejected object (grouped by position): ``y, x, reason, n_frames``; ``left_out``: rows of the
    tracks left out after they were followed (:func:`_left_out_rows`)."""
    rows = []
    if len(rejected_dets):
        r = rejected_dets.copy()
        r["key"] = list(zip((r["y"] // 25).astype(int), (r["x"] // 25).astype(int), r["reason"]))
        for (_, _, reason), g in r.groupby("key"):
            rows.append((g["y"].mean(), g["x"].mean(), reason, len(g), g["radius"].mean()))
    for _, t in rejected_tracks.iterrows():
        reason = t["reason"]
        if reason == "short_track" and int(t.get("piece_of", -1)) >= 0:
            # a piece of a tracked particle's outline, cut apart in few frames (that particle's note: _pieces_note)
            reason = f"short_track_piece_of_{int(t['piece_of'])}"
        elif reason == "short_track" and int(t.get("n_irregular", 0) or 0) > 0:
            # outlined as one irregular body where it was missed: a particle lost, not debris (_short_tracks_note)
            reason = f"short_track_not_convex_{int(t['n_irregular'])}"
        rows.append((t["y"], t["x"], reason, int(t["n_frames"]), np.nan))
    rows += list(left_out)
    return pd.DataFrame(rows, columns=["y", "x", "reason", "n_frames", "radius"])


def _check_chemistry_options(options: PipelineOptions) -> None:
    """Refuse chemistry options that cannot work, before anything is computed."""
    k = options.clusters
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0 or k == 1:
        raise ValueError(f"options.clusters must be 0 (none) or an integer >= 2, got {k!r}")
    if options.cluster_method not in ("kmeans", "nmf"):
        raise ValueError(f"options.cluster_method must be 'kmeans' or 'nmf', got {options.cluster_method!r}")
    w = options.cluster_window
    if w is not None and (len(w) != 2 or not np.all(np.isfinite(w)) or not w[0] < w[1]):
        raise ValueError(f"options.cluster_window must be (low, high) in eV with low < high, or None; got {w!r}")
    if not options.edge_jump_threshold > 0:
        raise ValueError(f"options.edge_jump_threshold must be positive, got {options.edge_jump_threshold!r}")
    # accepted before: a negative or NaN smoothing ran as none, a reversed window failed every particle's XANES
    # with a message about the scan's range, a string for `uncertainty` ran as True
    s = options.xanes_smoothing
    if not (isinstance(s, (int, float, np.number)) and not isinstance(s, bool) and np.isfinite(s) and s >= 0):
        raise ValueError(f"options.xanes_smoothing must be a number of pixels >= 0, got {s!r}")
    for name in ("edge_window", "lcf_window"):
        w = getattr(options, name)
        if len(w) != 2 or not np.all(np.isfinite(w)) or not w[0] < w[1]:
            raise ValueError(f"options.{name} must be (low, high) in eV relative to E0 with low < high, got {w!r}")
    if not isinstance(options.uncertainty, (bool, np.bool_)):
        raise ValueError(f"options.uncertainty must be True or False, got {options.uncertainty!r}")


#: the fewest of the scan's energies a cluster window may hold (:func:`_check_options`): what the clustering
#: itself refuses below (:mod:`xanestrack.chemistry.phases`: its PCA, k-means and NMF on a window need 2). The
#: clustering uses only the frames every particle used, so a window may still hold too few of those there
CLUSTER_WINDOW_MIN_ENERGIES = 2


def _check_options(options: PipelineOptions, energies) -> None:
    """Refuse options that cannot work before anything is computed (some were refused only after the whole scan
    was processed, others were taken for another value: ``scale_model="bogus"`` ran as "frame")."""
    if not isinstance(options, PipelineOptions):
        raise TypeError(f"options must be a PipelineOptions, got {type(options).__name__}")
    for name, allowed in (
        ("fuse", ("ends", "all", "none")),
        ("scale_model", ("energy", "frame")),
        ("position", ("edges", "com")),  # refused only after detection and tracking before
    ):
        if getattr(options, name) not in allowed:
            raise ValueError(f"options.{name} must be one of {allowed}, got {getattr(options, name)!r}")
    if options.interpolation_order not in (0, 1, 3):
        raise ValueError(f"options.interpolation_order must be 0, 1 or 3, got {options.interpolation_order!r}")
    for name in ("agreement_px", "area_tolerance"):
        v = getattr(options, name)
        if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and v > 0):
            raise ValueError(f"options.{name} must be a positive number, got {v!r}")
    v = options.window_offset_px  # NaN failed inside numpy's random generator (OverflowError)
    if not (isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0):
        raise ValueError(f"options.window_offset_px must be a number of pixels >= 0, got {v!r}")
    for name in ("detect_every", "motion_voucher_frames"):
        v = getattr(options, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if name == "detect_every" else 0):
            low = 1 if name == "detect_every" else 0
            raise ValueError(f"options.{name} must be an integer >= {low}, got {v!r}")
    if not (isinstance(options.margin, (int, np.integer)) and 0 <= options.margin <= 64):
        raise ValueError(f"options.margin must be an integer number of pixels, 0-64, got {options.margin!r}")
    _check_chemistry_options(options)
    w = options.cluster_window
    e = np.asarray(energies, float)
    if options.clusters and w is not None and (w[1] < e[0] or w[0] > e[-1]):
        raise ValueError(f"options.cluster_window {tuple(w)} eV lies outside the scan's {e[0]:.1f}-{e[-1]:.1f} eV")
    if options.clusters and w is not None:
        # a window of too few energies was refused by the clustering, after the whole scan was processed
        inside = e[(e >= w[0]) & (e <= w[1])]
        if inside.size < CLUSTER_WINDOW_MIN_ENERGIES:
            near = np.sort(e[np.argsort(np.abs(e - 0.5 * (w[0] + w[1])))[:4]])
            raise ValueError(
                f"options.cluster_window {tuple(float(v) for v in w)} eV holds {inside.size} of the scan's energies"
                + (f" ({', '.join(f'{v:.1f}' for v in inside)} eV)" if inside.size else "")
                + f"; the clustering needs {CLUSTER_WINDOW_MIN_ENERGIES} or more: widen it (the scan's energies "
                f"nearest it: {', '.join(f'{v:.1f}' for v in near)} eV)"
            )


def phase_mapping(particles, norms, energies_ev, *, options: PipelineOptions = PipelineOptions()):
    """Cluster the normalised per-pixel spectra of all particles together.

    Parameters
    ----------
    particles : list of ParticleResult
    norms : list of ndarray (n_frames, h, w) or None
        Each particle's normalised spectra (``analyse_particle(..., keep_norm=True)``),
        NaN in the frames it did not use.
    energies_ev : ndarray (n_frames,)
    options : PipelineOptions
        ``clusters``, ``cluster_method``, ``cluster_window``.

    Returns
    -------
    particles : list of ParticleResult
        With ``maps["cluster"]`` (int16, -1 where not clustered).
    chemistry : dict
        See :class:`~xanestrack.result.PipelineResult`.

    Notes
    -----
    Clusters need one energy axis for every particle: only the frames that every
    analysed particle used enter (``xanes_frames`` differ where a frame was not vouched
    for). Only the pixels the quality masks keep are clustered. A PCA of the same
    spectra gives the scree (how many distinct spectral shapes the data hold).
    """
    from .chemistry import phases

    k = int(options.clusters)
    e = np.asarray(energies_ev, float)
    usable = [
        i for i, p in enumerate(particles) if norms[i] is not None and p.xanes_frames is not None and p.quality_assessed
    ]
    common = np.ones(e.size, bool)
    for i in usable:
        common &= np.asarray(particles[i].xanes_frames, bool)
    settings = dict(
        method=options.cluster_method,
        clusters=k,
        window_ev=None if options.cluster_window is None else [float(v) for v in options.cluster_window],
        n_common_frames=int(common.sum()),
        particles=[int(particles[i].particle) for i in usable],
        note="",
    )

    def empty(note):
        settings["note"] = note
        logger.warning("phase mapping: %s", note)
        out = [
            dataclasses.replace(p, maps={**p.maps, "cluster": np.full(p.mask.shape, -1, np.int16)}) for p in particles
        ]
        return out, dict(settings=settings)

    if not usable or common.sum() < options.min_xanes_energies:
        return empty(
            f"{int(common.sum())} frames usable in every particle (need {options.min_xanes_energies}): no clusters"
        )
    keeps = []
    for i in usable:
        nm = norms[i][common]
        keeps.append(particles[i].kept & np.all(np.isfinite(nm), axis=0))
    if sum(int(m.sum()) for m in keeps) < max(k, 2):
        return empty("too few trusted pixels to cluster")
    ps = phases.collect_spectra(
        [norms[i][common] for i in usable], keeps, particles=[particles[i].particle for i in usable]
    )
    ec = e[common]
    window = None if options.cluster_window is None else tuple(float(v) for v in options.cluster_window)
    try:
        n_win = ps.spectra.shape[0] if window is None else int(((ec >= window[0]) & (ec <= window[1])).sum())
        pc = phases.pca(
            ps.spectra, energies_ev=ec, n_components=min(8, n_win, ps.spectra.shape[1]), energy_window=window
        )
        chem = {}
        if options.cluster_method == "nmf":
            nm = phases.nmf(ps.spectra, energies_ev=ec, n_components=k, energy_window=window)
            labels = np.argmax(nm.weights, axis=0)
            chem["nmf_components"] = nm.components.astype(np.float64)
        else:
            labels = phases.kmeans(ps.spectra, energies_ev=ec, n_clusters=k, energy_window=window).labels
    except ValueError as exc:
        raise ValueError(f"phase mapping: {exc}") from None
    spectra = ps.spectra.astype(np.float64)
    means = np.stack(
        [spectra[:, labels == j].mean(axis=1) if (labels == j).any() else np.full(ec.size, np.nan) for j in range(k)]
    )
    sep, pair = _cluster_separation(spectra, labels, means, ec, window)
    settings["separation"] = sep if np.isfinite(sep) else None
    settings["note"] = _cluster_note(sep, pair, window, [particles[i] for i in usable])
    maps = phases.to_maps(labels.astype(np.int16), ps, fill=np.int16(-1))
    out = []
    for p in particles:
        cmap = maps.get(p.particle, np.full(p.mask.shape, -1, np.int16)).astype(np.int16)
        out.append(dataclasses.replace(p, maps={**p.maps, "cluster": cmap}))
    settings["n_pixels"] = int(labels.size)
    chem.update(
        energies_ev=ec,
        cluster_mean_spectra=means,
        pca_energies_ev=np.asarray(pc.energies_ev, float),
        pca_components=np.asarray(pc.components, float),
        pca_explained_variance_ratio=np.asarray(pc.explained_variance_ratio, float),
        cluster_fractions=phases.cluster_fractions(labels, ps.particle, n_clusters=k),
        settings=settings,
    )
    return out, chem


#: two clusters are distinct phases when their centroids lie this many times their pixels' spread apart
#: along the line joining them (:func:`_cluster_separation`). One phase cut in two by k-means: about 2.7 for a
#: Gaussian spread (centroids at +-0.8 sd, each half 0.6 sd wide), 3.5 for a uniform one (a continuum of
#: mixtures). Measured (smallest pair): a one-phase NiO scene (4 particles, 40 energies) in 2 / 5 clusters 2.3 /
#: 1.9; NiO, LiNiO2 and a core-shell particle in 2 / 3: 19.8 / 2.1; the default scene (seed 1: gradients,
#: core-shells, mixtures) in 2 / 3: 4.3 / 3.7
CLUSTER_MIN_SEPARATION = 4.0


def _cluster_separation(spectra, labels, means, energies, window):
    """``(smallest separation, (a, b))`` over the pairs of clusters: the distance of their centroids over
    the pooled sd of their pixels projected on the line joining them (the spectra over the clustering
    window); ``(inf, None)`` with fewer than two clusters holding pixels."""
    rows = np.ones(energies.size, bool) if window is None else (energies >= window[0]) & (energies <= window[1])
    x, m = spectra[rows], means[:, rows]
    best, pair = np.inf, None
    k = means.shape[0]
    for a in range(k):
        for b in range(a + 1, k):
            ia, ib = labels == a, labels == b
            if ia.sum() < 2 or ib.sum() < 2:
                continue
            d = m[a] - m[b]
            nd = float(np.linalg.norm(d))
            if not nd > 0:
                return 0.0, (a, b)
            za, zb = d @ x[:, ia] / nd, d @ x[:, ib] / nd
            spread = np.sqrt(0.5 * (za.var() + zb.var()))
            sep = abs(float(za.mean() - zb.mean())) / spread if spread > 0 else np.inf
            if sep < best:
                best, pair = sep, (a, b)
    return float(best), pair


def _cluster_note(sep, pair, window, particles) -> str:
    """What the clusters cannot be (``sep, pair``: :func:`_cluster_separation`): phases, where two of them
    are one spread of pixels cut in two
    (k-means splits any cloud into k: a one-phase scene gave 2 and 5 "phases" 0.1 eV apart, nothing said), or
    where the window holds no edge (a post-edge window: a NiO particle 65/35)."""
    out = []
    e0 = [p.e0_ev for p in particles if np.isfinite(p.e0_ev)]
    if window is not None and e0 and not any(window[0] - 10 <= v <= window[1] + 10 for v in e0):
        out.append(
            f"the window {window[0]:g}-{window[1]:g} eV holds no particle's edge (E0 {min(e0):.1f}-{max(e0):.1f} eV): "
            "the clusters sort the spectra's shape there and their noise, not their oxidation state"
        )
    if pair is not None and sep < CLUSTER_MIN_SEPARATION:
        out.append(
            f"clusters {pair[0]} and {pair[1]} are not distinct phases: their centroids lie {sep:.1f} x their pixels' "
            f"spread apart (one spread of pixels cut in two lies about 2.7 apart; distinct phases, {CLUSTER_MIN_SEPARATION:g} "
            "or more): fewer phases than clusters, try --clusters with fewer"
        )
    return "; ".join(out)


#: eV. The shipped Ni references (NiO, LiNiO2: half-step energies 8340.0 / 8341.8 eV) are fitted
#: by default to scans whose energies span this
NI_REFERENCE_EDGE_EV = 8340.0


#: eV: the calibration error the note on an uncalibrated axis quotes the fractions' change for
#: (:func:`_uncalibrated_note`; a monochromator is off by 0.5-3 eV between beamtimes)
CALIBRATION_STEP_EV = 0.5
#: how the run note on fractions fitted on an uncalibrated axis begins (with the shipped references or a user's)
UNCALIBRATED_NOTE = "the oxidised fractions are fitted on an energy axis not calibrated"
#: a particle's mean spectrum fitted with a fraction within this of 0 (another's of 1) sits at the fit's bounds:
#: left out of :func:`_uncalibrated_note`'s change per 0.5 eV (0 there: the axis 3-15 eV off read "0.00")
BOUND_FRACTION = 1e-3
#: eV: the particles' E50 (the median of their medians) further than this outside the references' half-step
#: energies is said in :func:`_uncalibrated_note` (the axis off, or a phase beyond the references). A five-particle
#: default scene: 8340.8 eV, within NiO / LiNiO2's 8340.0-8341.8; its axis 3 eV high / low: 2.0 eV above / 2.2 eV
#: below (every fraction at 0 or 1, "0.00 per 0.5 eV" said before); 15 eV high: 14.0 eV above. Reduced stress-drift
#: and -crowd scenes (Ni(OH)2 and that shifted 2.5 eV: a phase the references do not hold) 1.7 / 1.8 eV above. Synth
#: seed 5 on 8 energies (against the references' E50 on them, 8338.2-8340.2 eV): 8338.6 eV, not said; 3 eV high,
#: 1.3 eV above
UNCALIBRATED_E50_OUTSIDE_EV = 1.0
#: eV: on an axis calibrated from a reference, the particles' E50 further than this outside the references' is said
#: (:func:`_calibrated_e50_note`): the calibration's own check (a reference measured coarsely where its edge rises
#: is refused) has passed, so only what no phase of the references' element explains is taken for a calibration
#: gone wrong. At :data:`UNCALIBRATED_E50_OUTSIDE_EV` a good calibration (stress-drift seed 1 on larch's Ni foil,
#: shifted -0.02 eV; its particles' Ni(OH)2-like phases 8343.4-8344.5 eV, as drawn) was said to be "off by about"
#: 1.8 eV; charged Ni-rich cathodes sit 1-2 eV above LiNiO2. A foil whose derivative's maximum lay on its second
#: rise moved the axis by -12.6 eV
CALIBRATED_E50_OUTSIDE_EV = 4.0


def _references_e50_on_scan(references, energies, *, background=None, edge_window=(-15.0, 20.0)) -> dict:
    """``{name: eV}``: each reference's E50 as the particles' are measured on the scan's ``energies`` (sampled
    there, with ``background`` under its step, normalised as a particle's spectrum is: its half-step energy plus
    :func:`xanestrack.chemistry.normbias.normalisation_bias`), where that moves it by
    :data:`~xanestrack.chemistry.normbias.NOTE_BIAS_EV` or more (where the run's note on the normalisation's bias
    speaks); else, and where the scan's energies cannot measure it (NaN there), its half-step energy on its own
    energies (:func:`xanestrack.chemistry.calibration.half_step_energies`; NaN for a callable)."""
    from .chemistry.calibration import half_step_energies
    from .chemistry.normbias import NOTE_BIAS_EV, normalisation_bias

    half = half_step_energies(references)
    # "given": against the values the fit uses (a user's reference as prepare_reference made it ready, too), so
    # that half-step + bias is the E50 measured on the scan's energies
    bias = normalisation_bias(energies, references, dense="given", edge_window=edge_window, background=background)
    return {
        k: v + bias[k] if np.isfinite(bias.get(k, np.nan)) and abs(bias[k]) >= NOTE_BIAS_EV else v
        for k, v in half.items()
    }


def _uncalibrated_note(
    particles, energies, references, lcf_window, *, shipped: bool = True, edge_window=(-15.0, 20.0)
) -> str:
    """The run note where the fractions are fitted on an energy axis not calibrated (``shipped``: with the shipped
    references; else with the caller's, which the note asks to be on the scan's own axis).

    The references were measured on another (calibrated) axis; a scan's axis is off by its monochromator's
    offset. A user's references are as sensitive to it (the shipped NiO / LiNiO2 given with ``--reference``: the
    same 0.19 per 0.5 eV on a 60-energy synth scan), unless they were measured on the scan's own axis. A +1 eV offset moved the default scene's oxidised fractions by 0.35-0.40, 7 of its 9 particles with
    no note (the references still describe their spectra, shifted; --known-edge recovered them). The change
    per :data:`CALIBRATION_STEP_EV` is computed from each particle's mean normalised spectrum and the
    references used (:func:`xanestrack.chemistry.calibration.fraction_shift_sensitivity`), not assumed.
    Empty where no particle has fractions.

    The particles' E50 (the median of their medians) is said where it lies more than
    :data:`UNCALIBRATED_E50_OUTSIDE_EV` outside the references' E50 as the scan's energies measure them
    (:func:`_references_e50_on_scan`, ``edge_window`` as the particles'), over the particles whose mean E50 is
    given (:func:`xanestrack.result.e50_withheld`). Against the references' dense half-step energies, 8 energies
    (synth seed 5) read "1.4 eV below ... the axis is off" on an exact axis, the sampling's own -1.66 to -1.91 eV;
    and a particle whose mean E50 was withheld (its E50 in a gap of frames left out: 8351.1 eV, the other's 8341.3)
    made it "4.4 eV above" on an exact axis.
    """
    from .chemistry.calibration import fraction_shift_sensitivity, half_step_energies
    from .result import e50_withheld, fractions_withheld
    from .xanes import linear_combination_fit

    e = np.asarray(energies, float)
    moves, bound, e50, withheld = [], [], [], 0
    for p in particles:
        if p.fractions is None or not len(p.reference_names) or p.xanes_frames is None:
            continue
        norm = np.asarray(p.mean_norm, float)
        use = np.asarray(p.xanes_frames, bool) & np.isfinite(norm)
        try:
            # whether it sits at a bound: fitted as its pixels are, against the references normalised as its
            # spectra (xanes.references_on_scan; as given, a pure NiO particle read 0.023 on 143 energies)
            bg = xanes.particle_background(e[use], np.asarray(p.pre_edge)[use], np.asarray(p.post_edge)[use], p.e0_ev)
            on_scan = xanes.references_on_scan(references, e[use], float(p.e0_ev), background=bg)
            fit_refs, steps = on_scan if on_scan is not None else (references, None)
            fit = linear_combination_fit(
                e[use], norm[use], fit_refs, e0_ev=float(p.e0_ev), window=lcf_window, edge_steps=steps
            )
            s = fraction_shift_sensitivity(
                e[use], norm[use], references, e0_ev=float(p.e0_ev), window=lcf_window, shift_ev=CALIBRATION_STEP_EV
            )
        except ValueError:
            continue
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            if e50_withheld(p):  # the pixels measured are a biased choice: its E50 is not the particle's
                withheld += 1
            else:
                e50.append(float(np.nanmedian(m)))
        if fractions_withheld(p):  # its fractions are not given: not among "the particles fitted"
            continue
        # a fit held at 0 or 1 by its constraints does not move one way, and moves the other: its "0.00 per
        # 0.5 eV" reassured (the axis 3-15 eV off), and "moves them little or not at all" hid that pure NiO on
        # an axis 0.5 eV high fits as 0.20 LiNiO2: the change the other way is said for them
        if np.nanmin(fit.fractions) <= BOUND_FRACTION:
            try:
                s2 = fraction_shift_sensitivity(
                    e[use],
                    norm[use],
                    references,
                    e0_ev=float(p.e0_ev),
                    window=lcf_window,
                    shift_ev=-CALIBRATION_STEP_EV,
                )
            except ValueError:
                s2 = np.full_like(np.asarray(s, float), np.nan)
            bound.append(float(np.nanmax(np.abs([s[-1], s2[-1]]))) if np.isfinite([s[-1], s2[-1]]).any() else np.nan)
        elif np.isfinite(s[-1]):
            moves.append(abs(float(s[-1])))
    if not moves and not bound:
        return ""
    names = list(references)
    half = half_step_energies(references)
    apart = max(half.values()) - min(half.values()) if len(half) > 1 else float("nan")
    text = (
        f"{UNCALIBRATED_NOTE}, with the {'shipped references' if shipped else 'references given'} ({', '.join(names)}"
        + (f", {apart:.1f} eV apart at half step" if np.isfinite(apart) else "")
        + ("): " if shipped else "), unless these were measured on the scan's own axis: ")
    )
    if moves:
        spread = f" ({min(moves):.2f}-{max(moves):.2f} over {len(moves)} particles)" if len(moves) > 1 else ""
        text += f"each {CALIBRATION_STEP_EV:g} eV it is off moves the {names[-1]} fraction by {np.median(moves):.2f}{spread}"
    if bound:
        one_way = [b for b in bound if np.isfinite(b) and b >= 0.01]
        # of the particles fitted, and how many were tracked where they differ: "4 of 4 particles" beside another
        # run note's "4 of 9 particles" (stress-all: 5 of its 9 particles without XANES) read as a contradiction
        n_fit = len(bound) + len(moves)
        of = (
            f"{('all ' if n_fit > 1 else 'the ') if len(bound) == n_fit else ''}{len(bound)}"
            + ("" if len(bound) == n_fit else f" of the {n_fit}")
            + f" particle{'s' if n_fit > 1 else ''} fitted{f' (of {len(particles)} tracked; the others have no fractions)' if n_fit < len(particles) else ''}"
        )
        text += (
            f"{'; ' if moves else ''}the fractions of {of} sit at 0 or 1 "
            f"(the fit's bounds){' (left out of these numbers)' if moves else ''}: an offset one way leaves them "
            "there, which may hide it"
            + (
                f", the other way each {CALIBRATION_STEP_EV:g} eV moves "
                + (f"{len(one_way)} of them" if len(one_way) < len(bound) else "them")
                + f" by {np.median(one_way):.2f}"
                + (f" ({min(one_way):.2f}-{max(one_way):.2f})" if len(one_way) > 1 else "")
                if one_way
                else f"; {CALIBRATION_STEP_EV:g} eV either way leaves them there"
            )
        )
    # the references' E50 as this scan's energies measure them: 8 energies move E50 by -1.66 to -1.91 eV, which
    # the dense half-step energies called an axis offset
    scan = _references_e50_on_scan(
        references, e, background=_particles_background(particles, e), edge_window=edge_window
    )
    lo, hi = min(scan.values(), default=np.nan), max(scan.values(), default=np.nan)
    moved = any(abs(scan[k] - half[k]) > 0 for k in half if np.isfinite(half[k]))
    where = (
        f"({lo:.1f}-{hi:.1f} eV on this scan's energies, sampled and normalised as the particles are; "
        f"{min(half.values()):.1f}-{max(half.values()):.1f} eV measured densely)"
        if moved
        else f"({lo:.1f}-{hi:.1f} eV)"
    )
    left_out = (
        f", over {_count(len(e50), 'particle')}: {withheld} whose mean E50 is withheld left out" if withheld else ""
    )
    if e50 and np.isfinite(lo):
        mid = float(np.median(e50))
        off = mid - hi if mid > hi else mid - lo if mid < lo else 0.0
        if abs(off) > OTHER_EDGE_EV:  # not an axis offset (a callable's edge is not judged per particle)
            text += (
                f"; the particles' E50 (median {mid:.1f} eV{left_out}) lie {abs(off):.1f} eV "
                f"{'above' if off > 0 else 'below'} the references' half-step energies {where}: the references are of "
                "another absorption edge"
            )
        elif abs(off) > UNCALIBRATED_E50_OUTSIDE_EV:
            text += (
                f"; the particles' E50 (median {mid:.1f} eV, {min(e50):.1f}-{max(e50):.1f}{left_out}) lie {abs(off):.1f} "
                f"eV {'above' if off > 0 else 'below'} the references' half-step energies {where}: the "
                f"axis is off by about that much, or the particles hold a phase the references do not"
            )
    return text + "; calibrate: run again with --energy-reference FILE or --known-edge PARTICLE=EV"


def _calibrated_e50_note(particles, references, calibration, energies, *, edge_window=(-15.0, 20.0)) -> str:
    """The run note where, on an axis calibrated from a reference (``calibration``: its run.json record), the median
    of the particles' E50s lies more than :data:`CALIBRATED_E50_OUTSIDE_EV` outside the references' half-step
    energies, else "".

    :func:`_uncalibrated_note` says it of an axis not calibrated; a calibration can be as far off: a Ni foil measured
    every 2 eV to 8336 eV had its derivative's maximum on its second rise, the axis shifted by -12.6 eV and every
    E50 12.4-12.6 eV low, with no word but that the references do not describe the particles' spectra. As there,
    over the particles whose mean E50 is given (:func:`xanestrack.result.e50_withheld`), against the references'
    E50 as the scan's ``energies`` measure them (:func:`_references_e50_on_scan`)."""
    from .result import e50_withheld

    e50 = []
    for p in particles:
        m = p.edge_maps.get("e50") if p.edge_maps else None
        usable = p.fractions is not None and len(p.reference_names) and m is not None and np.isfinite(m).any()
        if usable and not e50_withheld(p):
            e50.append(float(np.nanmedian(m)))
    if not e50:
        return ""
    e = np.asarray(energies, float)
    scan = _references_e50_on_scan(
        references, e, background=_particles_background(particles, e), edge_window=edge_window
    )
    half = {k: v for k, v in scan.items() if np.isfinite(v)}
    if not half:
        return ""
    lo, hi = min(half.values()), max(half.values())
    mid = float(np.median(e50))
    off = mid - hi if mid > hi else mid - lo if mid < lo else 0.0
    # beyond 50 eV (what an energy calibration may shift, cli.MAX_CALIBRATION_SHIFT_EV) the references are of another
    # edge, which other notes say
    if not CALIBRATED_E50_OUTSIDE_EV < abs(off) <= 50.0:
        return ""
    return (
        f"the particles' E50 (median {mid:.1f} eV, {min(e50):.1f}-{max(e50):.1f}) lie {abs(off):.1f} eV "
        f"{'above' if off > 0 else 'below'} the references' half-step energies ({lo:.1f}-{hi:.1f} eV) on the axis "
        f"calibrated from {calibration.get('source') or 'a reference'} (shifted by "
        f"{float(calibration.get('shift_ev', np.nan)):+.2f} eV): the calibration is off by about that much (a "
        "reference measured too coarsely where its edge rises, its derivative's maximum on another feature; a wrong "
        "--reference-e0), or the particles hold a phase the references do not"
    )


#: what the run note of :func:`_other_edge_references_note` says (:func:`redo_xanes` replaces it)
OTHER_EDGE_RUN_NOTE = "are of another absorption edge than the particles'"


def _other_edge_references_note(particles, references) -> str:
    """The run note where particles' fits were skipped for references of another absorption edge
    (:data:`~xanestrack.xanes.OTHER_EDGE_NOTE`, :data:`~xanestrack.xanes.OTHER_EDGE_EV`): both edges' energies, and
    that this is not an axis offset. Co references on a Co+Ni scan's Ni particles were fitted at the Ni edge (every
    fraction 0.000, truth 0.13-0.66) and the only word was the uncalibrated-axis note's "620.0 eV above the
    references' half-step energies: the axis is off by about that much"."""
    from .xanes import _other_edge_references

    skipped = [p for p in particles if any(n.startswith(OTHER_EDGE_NOTE) for n in p.notes)]
    if not skipped:
        return ""
    e0 = [float(p.e0_ev) for p in skipped]
    far = _other_edge_references(references, float(np.median(e0)))
    gap = min((abs(v - np.median(e0)) for v in far.values()), default=float("nan"))
    ids = [p.particle for p in skipped]
    return (
        f"no fractions for {_count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}"
        f"): the references {', '.join(f'{n} (edge at {v:.0f} eV)' for n, v in far.items()) or 'given'} "
        f"{OTHER_EDGE_RUN_NOTE} (E0 {min(e0):.0f}-{max(e0):.0f} eV"
        + (f", {gap:.0f} eV away" if np.isfinite(gap) else "")
        + f"), not an axis offset (those are a few eV; over {OTHER_EDGE_EV:.0f} eV is another edge): give references "
        "of the particles' edge with --reference NAME=FILE"
    )


def _no_references_note(energies, particles=None) -> str:
    """The run's note where the shipped references are not fitted: the scan does not cross their edge, or (given
    ``particles``) no particle's edge lies at theirs (:func:`_default_references`)."""
    edges = _particle_edges(particles or [])
    where = (
        f"which this scan ({energies[0]:.1f}-{energies[-1]:.1f} eV) crosses, but no particle's edge lies near "
        f"(E0 and E50 {min(edges):.0f}-{max(edges):.0f} eV; not used for the stray-light, coarse-step or "
        "normalisation-bias numbers either)"
        if edges and energies[0] < NI_REFERENCE_EDGE_EV < energies[-1]
        else f"which this scan ({energies[0]:.1f}-{energies[-1]:.1f} eV) does not cross"
    )
    return (
        f"no linear-combination fit (no oxidised fraction): the shipped reference spectra (NiO, LiNiO2) are of "
        f"the Ni K-edge, their edges near {NI_REFERENCE_EDGE_EV:.0f} eV, {where}; "
        "give the phases of its edge with --reference NAME=FILE (edge energies are measured either way)"
    )


def _default_references(energies, particles=None):
    """The shipped Ni references where the scan crosses their edge (:data:`NI_REFERENCE_EDGE_EV`), else ``{}``;
    given the analysed ``particles``, only where some particle's edge lies at theirs
    (:func:`_references_at_particles_edge`): a Co-only scan over 7650-8450 eV took them by its span alone, and its
    stray-light and normalisation-bias notes quoted them (0.07 / 0.32 eV for 1 % of stray light, where the Co
    particles' own spectra read 0.30 / 0.76 eV), though no particle was fitted with them."""
    from .spectra import ni_references

    refs = ni_references() if (energies[0] < NI_REFERENCE_EDGE_EV < energies[-1]) else {}
    # narrowed only where some particle has an edge energy to judge by: where none has (every XANES failed, a
    # scan of two or three energies), "no particle's edge lies near" is not known, and the note said the scan
    # does not cross the Ni edge (the real SSRL pair at 8324 / 8354 eV, a map at 8296 / 8341 / 8398 eV)
    if particles is None or not _particle_edges(particles):
        return refs
    return _references_at_particles_edge(refs, particles)


def _particle_edges(particles) -> list:
    """eV: the particles' E0s and mean E50s (those measured), the energies their edges are at."""
    out = []
    for p in particles:
        out += [float(p.e0_ev)] if np.isfinite(p.e0_ev) else []
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            out.append(float(np.nanmedian(m)))
    return out


def _references_at_particles_edge(references, particles) -> dict:
    """The references whose edge (:func:`xanestrack.xanes.find_e0` of their spectrum) lies within
    :data:`TWO_EDGES_EV` of some particle's E0 or mean E50 (:func:`_particle_edges`): those the stray-light,
    coarse-step and normalisation-bias numbers may come from. A callable (no spectrum) is kept; ``{}`` without
    particles' edges."""
    from .xanes import _other_edge_references

    edges = _particle_edges(particles)
    if not references or not edges:
        return {}
    far = [set(_other_edge_references(references, x)) for x in edges]
    return {k: r for k, r in references.items() if not all(k in f for f in far)}


#: words of the particle note of :func:`_two_edges` on a particle whose edge energies it withholds
TWO_EDGES_WITHHELD = "across another absorption edge's step"


def _across_two_edges(p) -> bool:
    """Whether :func:`_two_edges` withheld a particle's edge energies (normalised across another edge's step)."""
    return any(TWO_EDGES_WITHHELD in n for n in p.notes)


#: how the notes :func:`xanestrack.xanes.analyse_particle` gives a particle begin (the misfit note holds
#: :data:`~xanestrack.xanes.MISFIT_NOTE`): :func:`redo_xanes` drops them before it adds its own analysis's, and
#: keeps the notes of the registration and tracking. It only added before: a scan run on an axis 6 eV low and
#: calibrated by a redo kept "the references (NiO, LiNiO2) do not describe this particle's spectra: the fit leaves
#: 17.5 x the spectra's noise" on each of its 4 particles (15.9-17.5 x), which a fresh run on that axis does not give
XANES_NOTE_STARTS = (
    "XANES skipped",
    "XANES failed",
    "other particles fill most of the ring",
    SPARSE_POST_EDGE_NOTE,
    SHOULDER_NOTE,
    "E50 not measured in",
    "derivative edge energy not measured in",
    "whiteline not fitted",
    "whiteline not measured in",
    "LCF skipped",
    "no registration uncertainty",
    "E50 measured in ",
    xanes.PRE_UNVOUCHED_NOTE,
    xanes.PRE_UNVOUCHED_REFUSED_NOTE,
    MISFIT_REGION_NOTE,
    FRAMES_NOTE_START,  # _frames_bias: measured again on the new analysis
    xanes.AS_GIVEN_NOTE,
)
#: the particle note of :func:`redo_xanes` on a particle whose matrix texture was subtracted in the run
REDO_MEASURED_NOTE = (
    "its XANES analysed again from its aligned frames as measured: the matrix texture subtracted in the run is not "
    "kept in the result (pipeline.redo_xanes)"
)
#: how the run note of :func:`redo_xanes` begins (what it changed); ``run.json`` lists these notes under
#: ``xanes_redone`` (:func:`xanestrack.results.write_results`) and the report's run table says so
REDONE_NOTE = "XANES analysed again after the run (pipeline.redo_xanes)"


def _is_xanes_note(note: str) -> bool:
    """Whether a particle note is one :func:`xanestrack.xanes.analyse_particle` (or :func:`redo_xanes`) gave."""
    return note.startswith(XANES_NOTE_STARTS) or MISFIT_NOTE in note or note == REDO_MEASURED_NOTE


def _is_reference_note(note: str) -> bool:
    """Whether a run note is one on the references used (:func:`_user_references`, :func:`_no_references_note`)."""
    return (
        (
            note.startswith("reference ")
            and ("normalised as the particles' spectra are" in note or " is sampled every " in note)
        )
        or note.startswith("oxidised_fraction (the particles' table")
        or note.startswith("no linear-combination fit (no oxidised fraction)")
    )


def _redone_note(before, after, references: dict, shipped: bool) -> str:
    """The run note of :func:`redo_xanes`: the energy axis it used against the run's, and the references."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    span = lambda e: f"{e[0]:.1f}-{e[-1]:.1f} eV"  # noqa: E731
    d = after - before
    if not d.any():
        axis = f"on the run's energy axis ({span(after)})"
    elif np.ptp(d) < 1e-6:
        axis = f"on an energy axis moved by {d[0]:+.2f} eV ({span(before)} -> {span(after)}), taken as calibrated"
    else:
        axis = (
            f"on another energy axis ({span(before)} -> {span(after)}, each energy moved by {d.min():+.2f} to "
            f"{d.max():+.2f} eV), taken as calibrated"
        )
    if not references:
        refs = "without references (no oxidised fraction)"
    else:
        refs = f"with the {'shipped references' if shipped else 'references given'} ({', '.join(references)})"
    return f"{REDONE_NOTE}: {axis}, {refs}"


#: the words of :func:`xanestrack.xanes.analyse_particle`'s notes before the reason frames were left out of a
#: particle's analysis (its ``left_out``): :func:`_left_out_words` reads the run's reason back from them
LEFT_OUT_WORDS = "were left out of this particle's analysis: "


def _left_out_words(p, options) -> str:
    """Why frames were left out of particle ``p``'s XANES, as :func:`_finish_particle` said it (``left_out`` of
    :func:`xanestrack.xanes.analyse_particle`): read from its notes where one says it (the frames a redo uses are
    the run's), else said again from its frame flags. A redo said "not usable" where the run gave the reason."""
    from .result import UNVOUCHED_FLAGS

    for note in p.notes:
        if LEFT_OUT_WORDS in note:
            return note.split(LEFT_OUT_WORDS, 1)[1]
    flags = np.asarray(p.frame_flags).astype(np.uint16)
    overlapped = ((flags & FRAME_FLAGS["overlap"]) > 0) & ((flags & UNVOUCHED_FLAGS) == 0)
    return (
        "their positions are not vouched for (the edge estimate and the centre of mass disagree by more than "
        f"{options.agreement_px:g} px, or only one was measured) or not measured, or the particle leaves the frame"
        + (", or another tracked particle lies over it (flag overlap)" if overlapped.any() else "")
        + "; no spectrum is made from them"
    )


def _redo_frames(p) -> tuple:
    """``(usable, pre_usable)`` of particle ``p``'s analysis again (:func:`redo_xanes`): the frames its XANES used
    (``xanes_frames``) whose positions are vouched for, and those not vouched for (flag ``disagree``) that stood in
    for its pre-edge (:func:`xanestrack.xanes._pre_edge_from_unvouched`; None where none did). Given as usable
    alone, they were analysed as frames vouched for, and the run's note naming them kept the run's energies."""
    used = p.xanes_frames
    if used is None or p.frame_flags is None or len(p.frame_flags) != len(used):
        return used, None
    used = np.asarray(used, bool)
    stand_in = used & ((np.asarray(p.frame_flags).astype(np.uint16) & FRAME_FLAGS["disagree"]) > 0)
    return (used & ~stand_in, stand_in) if stand_in.any() else (used, None)


def redo_xanes(result: PipelineResult, *, energies_ev, references=None) -> PipelineResult:
    """The result with its XANES part analysed again on another energy axis (e.g. calibrated), or with other references.

    Registration, tracking and motion are kept as they are (they do not depend on the
    energies' values); every particle's aligned stack is analysed again with the same
    frames, mask and options, the phase mapping is redone, and ``energies_ev`` and the
    tracks' ``energy_ev`` become the new energies. The resolution matching of the run
    (``result.edge_widths``) is repeated; the matrix texture subtracted from a drifting
    particle's frames is not kept in the result, so such a particle is analysed from its
    frames as measured, and its notes say so. ``run --known-edge`` does not use this: it
    calibrates inside :func:`run_pipeline` (``recalibrate``), from the same windows. The rims
    of particles whose outline moves are flagged again (:func:`_flag_moving_rims`), leaving out, as the run did, the
    frames in which a particle's mask lay in a wide patch of input pixels without a value (``filled_frames``); its
    pixels filled from such a patch (``FLAG_FILLED`` of its ``pixel_flags``) are analysed as in the run and flagged
    filled again, out of ``quality_keep``.

    Each particle's notes of the earlier analysis (:data:`XANES_NOTE_STARTS`) are replaced by the new
    analysis's; those of its registration and tracking are kept. The run notes on the references, on the
    normalisation's bias and on an axis not calibrated are replaced, and a run note (:data:`REDONE_NOTE`) says
    what was redone: :func:`xanestrack.results.write_results` puts it in ``run.json`` (``xanes_redone``).

    Parameters
    ----------
    result : PipelineResult
        From :func:`run_pipeline`, or read back from its folder
        (:func:`xanestrack.results.read_results`: the same redo).
    energies_ev : array (n_frames,)
        The new energy axis in eV, checked as a :class:`~xanestrack.stack.Stack`'s are
        (:func:`xanestrack.stack.validate_energies`: one per frame, finite, strictly increasing).
        An axis other than the run's is taken as calibrated: the run's note on an axis not
        calibrated is dropped. On the run's own axis (other references) it is kept, computed again.
    references : dict of name -> ReferenceSpectrum, optional
        As for :func:`run_pipeline`: normalised where they are not, two or more
        (:func:`_user_references`); default the shipped Ni references where the new axis
        crosses the Ni K-edge, else none (a note says so).

    Raises
    ------
    ValueError
        For energies that are not one per frame, not finite, not strictly increasing, or look like keV;
        a single reference, or one that cannot be normalised or whose edge the scan does not cross.
    TypeError
        For references that are not a mapping of names to spectra.
    """
    from .stack import validate_energies

    before = np.asarray(result.energies_ev, float)
    e = validate_energies(energies_ev, len(before), source="redo_xanes: energies_ev")
    options = result.options
    shipped = references is None
    # the run's notes on its references, and the caller's references checked and normalised as run_pipeline does
    # (they were fitted as given: measured NiO / LiNiO2 read 0.301 / 0.114 / 0.563 / 0.000, normalised 0.463 / 0.322
    # / 0.580 / 0.120; one reference gave every particle 1.0)
    notes = tuple(n for n in result.notes if not _is_reference_note(n))
    if shipped:
        references = _default_references(e)
        if not references and len(e) >= options.min_xanes_energies:
            notes += (_no_references_note(e),)
    else:
        references, more = _user_references(references, e)
        notes += tuple(more)
    particles, norms = [], []
    blur = None
    if result.edge_widths is not None and (result.edge_widths["blur_px"] > 0).any():
        blur = result.edge_widths["blur_px"].to_numpy(float)
    for p in result.particles:
        extra = [REDO_MEASURED_NOTE] if MATRIX_SUBTRACTED_NOTE in p.notes else []
        # its pixels filled from a patch's rim in the run (_flag_filled_pixels): analysed as the run did, and flagged
        # and left out of its means again (the redo lost them: 0 of 515 flagged, kept 0.536 against 0.560)
        filled = (np.asarray(p.pixel_flags) & xanes.FLAG_FILLED) > 0
        used, stand_in = _redo_frames(p)
        xr = xanes.analyse_particle(
            p.aligned if blur is None else _blur_frames(p.aligned, blur),
            p.mask,
            e,
            usable=used,
            references=references,
            agreement=p.agreement,
            keep_norm=options.clusters > 0,
            left_out=_left_out_words(p, options),
            background_exclude=p.background_exclude,
            filled=filled if filled.any() else None,
            pre_usable=stand_in,
            **_xanes_settings(options),
        )
        if filled.any():
            xr["pixel_flags"] = np.where(filled, xr["pixel_flags"] | xanes.FLAG_FILLED, xr["pixel_flags"])
            if "quality_keep" in xr.get("maps", {}):
                xr["maps"] = {**xr["maps"], "quality_keep": np.asarray(xr["maps"]["quality_keep"], bool) & ~filled}
        # the earlier analysis's notes replaced by this one's, where they stood (after the registration's)
        old = tuple(p.notes)
        at = next((i for i, n in enumerate(old) if _is_xanes_note(n)), len(old))
        kept = [n for n in old[:at] if not _is_xanes_note(n)]
        rest = [n for n in old[at:] if not _is_xanes_note(n)]
        new_notes = tuple(kept) + tuple(xr.pop("notes")) + tuple(extra) + tuple(rest)
        norms.append(xr.pop("norm", None))
        particles.append(dataclasses.replace(p, **xr, notes=new_notes))
    # the new analysis's flags and quality masks hold no moving rim: flagged again (the note replaced)
    particles = _flag_moving_rims(particles, e, blur=blur)
    chemistry = result.chemistry
    if options.clusters > 0 and particles:
        particles, chemistry = phase_mapping(particles, norms, e, options=options)
    tracks = result.tracks.copy()
    if len(tracks) and "energy_ev" in tracks:
        tracks["energy_ev"] = e[tracks["frame"].to_numpy(int)]
    # another axis is taken as calibrated (what the function is for): the run's note on fractions fitted on an axis
    # not calibrated is dropped; on the run's own axis (other references only) it stays, its numbers computed again
    # with the references now used (it was dropped there too, though nothing was calibrated)
    moved = not np.array_equal(e, before)
    uncalibrated = any(n.startswith(UNCALIBRATED_NOTE) for n in notes)
    notes = tuple(n for n in notes if not n.startswith(UNCALIBRATED_NOTE))
    if uncalibrated and not moved and references:
        notes += tuple(
            n
            for n in (
                _uncalibrated_note(
                    particles, e, references, options.lcf_window, shipped=shipped, edge_window=options.edge_window
                ),
            )
            if n
        )
    # the normalisation's bias is the energies' (chemistry/normbias): measured again on the new axis
    from .chemistry.normbias import NOTE_START

    if shipped and references:  # as run_pipeline: the shipped references only where a particle's edge is at theirs
        references = _default_references(e, particles)
        notes += () if references else (_no_references_note(e, particles),)
    norm_bias, bias_note = _normalisation_bias(
        [p for p in particles if not _across_two_edges(p)],
        _references_at_particles_edge(references, particles),
        e,
        shipped,
        options,
    )
    notes = tuple(n for n in notes if not n.startswith(NOTE_START)) + ((bias_note,) if bias_note else ())
    # and each particle's own energies' move against the scan's, measured again (its old note dropped above)
    particles, frames_note = _frames_bias(particles, _references_at_particles_edge(references, particles), e, options)
    notes = tuple(n for n in notes if not n.startswith(FRAMES_RUN_NOTE_START)) + ((frames_note,) if frames_note else ())
    other_edge = _other_edge_references_note(particles, references)  # again: the references may be others
    notes = tuple(n for n in notes if OTHER_EDGE_RUN_NOTE not in n) + ((other_edge,) if other_edge else ())
    notes += (_redone_note(before, e, references, shipped),)
    return dataclasses.replace(
        result,
        energies_ev=e,
        particles=particles,
        chemistry=chemistry,
        tracks=tracks,
        notes=notes,
        normalisation_bias=norm_bias,
    )
