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
from .chemistry.phases import INTERFACE_MAX_WIDTH_PX
from .chemistry.runnotes import (
    FRAMES_RUN_NOTE_START,
    OTHER_EDGE_RUN_NOTE,
    UNCALIBRATED_NOTE,
    _across_two_edges,
    _calibrated_e50_note,
    _coarse_edge_note,
    _default_references,
    _frames_bias,
    _no_references_note,
    _normalisation_bias,
    _other_edge_references_note,
    _particles_background,
    _references_at_particles_edge,
    _smoothing_note,
    _two_edges,
    _uncalibrated_note,
    _user_references,
)
from .detect import DetectOptions, cut_at_necks, detect_stack
from .follow import FollowOptions, density_residuals, disc_weight, follow_particle, shape_weight, window_geometry
from .io.checks import release_freed_memory
from .match import MatchOptions, link_detections
from .morph import dilate_cross
from .motion import common_similarity, compute_motion, peak_ratios, rotation_reported
from .motion_notes import (
    _field_motion_notes,
    _large_scale_note,
    _own_motion_noise_note,
    _particle_position_noise,
    _position_noise,
    _rarely_vouched_note,
    _split_notes,
    _still_field_note,
    _two_frame_scale_note,
)
from .outlines import (
    FILLED_NOTE,
    LOBE_DOMINANT_AREA,
    LOBE_NECK,
    _filled_on_grid,
    _filled_run_note,
    _flag_moving_rims,
    _has_note,
    _lobes_run_note,
    _moving_rim_run_note,
    _with_filled_pixels,
    _with_moving_rims,
    _with_outline_lobes,
    neighbour_lobes_left_out,
    window_lobes,
)
from .register import (
    MEDIAN_OFFSET_FRAMES,
    MOTION_RUN_FRAMES,
    WINDOW_MARGIN,
    VouchedPositions,
    centre_of_mass,
    consensus_mask,
    fill_positions,
    fuse_particles,
    resample_masks,
    resample_windows,
    vouch_by_motion,
    vouch_positions,
    window_half,
    window_radius,
    withdraw_lone_agreements,
)
from .resolution import (
    RESOLUTION_CHANGE_PX,
    _blur_frames,
    _blurred_frames,
    _blurred_frames_note,
    _resolution_blur,
    _resolution_change,
    _resolution_note,
    _trend,
)
from .result import FRAME_FLAGS, ParticleResult, PipelineResult, flag_names
from .robust import robust_sigma
from .segment import PackedMasks, SegmentOptions, isolate_particle, segment_particle, segment_roi, segment_rois
from .smoothing import smooth_tracks
from .stack import Stack, duplicate_frames, lone_step, lone_step_words, sanitize_stack
from .words import count, frame_list
from .xanes import (
    MISFIT_NOTE,
    MISFIT_REGION_NOTE,
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
        particle's positions in its noisiest frames (``OWN_MOTION_SNR``) or where the edge
        does not tell its matrix apart (``SEPARATE_WHERE_UNMIXING_FAILS``): see there for
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
    beside_neighbours : bool, default True
        After the first pass, follow again each particle whose apodisation disc (1.25 radii plus
        4 px) holds a neighbour moving otherwise (their relative position moving by
        ``NEIGHBOUR_MOTION_PX`` or more), that neighbour's outline, swept over its positions
        relative to the particle, left out of the correlation (:func:`_refine_beside_neighbours`);
        the later passes (its shape, the matrix) leave it out too. Without it such a neighbour
        pulls the edge estimate by a share of their relative motion (real SSRL particles 4-5 px
        apart, own random walks: 0.39-0.51 px RMS, frames up to 1.5 px off vouched for).
    split_groups : bool, default True
        Track apart touching particles of alike size that the detector kept whole as one track (a contact too long
        for its necks rule): where a particle's outline at half height has two or more lobes of a particle's size
        joined at necks, none 4 times as large as the next, each lobe is followed, outlined (its masks cut at the
        neck) and analysed as a particle of its own (:func:`_split_groups`); kept where each comes out one. Without
        it such a group is one particle, its note saying it may be several. A touching pair (radius 30 and 24 px,
        contact 39 px) held together: each member within 0.04 px RMS of its truth and its mean E50 within 0.02 eV
        of the member alone, where the group's was between theirs. A smaller particle touching a larger one (its
        lobe 4 times smaller or more) is tracked beside it (:func:`_track_smaller`), the larger one left as it is;
        without this option it is left out of the larger one's mask and of every table.
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
        frame's. Off by default: nothing turns the image in a TXM energy scan. In frames with
        fewer than three particles kept no turn is fitted: ``common_rotation_deg`` is NaN
        there (not 0), with a run note.
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
    beside_neighbours: bool = True
    split_groups: bool = True
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
    reach: float  # px: the radius its windows are sized on (:func:`~xanestrack.register.window_radius`)
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
    mask_empty: tuple | None = None  # (n, n): frames the learned / classical masks left empty (guarded)
    matrix: MatrixBackground | None = None  # the matrix separated from behind it (its own motion), if it was
    unmixed_motion: float | None = None  # px: own motion of a particle whose matrix was told apart by its edge
    unmixed_still: bool = False  # that particle moves with the matrix (its own motion not told from noise)
    separation_undone: tuple | None = None  # (px, times the noise): a separation from the matrix undone
    beside: np.ndarray | None = None  # weight on its window leaving out neighbours that move otherwise
    beside_ids: tuple = ()  # those neighbours' ids
    group: tuple | None = None  # (the group's track id, its members' ids, neck): tracked apart (:func:`_split_groups`)
    larger: tuple | None = None  # (the larger particle's id, times its area, neck): tracked beside it (_track_smaller)
    smaller: tuple = ()  # the ids of the smaller touching particles tracked beside it (:func:`_track_smaller`)
    magnification: tuple | None = None  # (ratio per frame, point in frame 0): the matrix's scale about it


#: a faint track (detected in fewer than ``min_track_fraction`` of the frames examined) whose mean spectrum
#: shows no absorption edge, its step within this many standard errors of nil, is left out: matrix texture, not
#: a particle of the element scanned. On a scene without pre-edge contrast and a textured matrix (OD 0.5, 30 %),
#: 17 such tracks were kept as particles, some vouched for in 45 of 60 frames, their steps -0.04 to +0.01 OD
#: (0-1 standard errors); the particles' were 10-29 standard errors, the one nearest the rule 5. The step is
#: judged on the core's spectrum and on the core's less its surroundings' (:func:`_surroundings_spectrum`); an
#: edge in either keeps the track
EDGELESS_Z = 3.0

#: px. The surroundings a faint track's core spectrum is compared with (:func:`_surroundings_spectrum`): its
#: aligned window's pixels at least this far beyond its mask; at least ``SURROUNDINGS_MIN_PX`` of them
SURROUNDINGS_GAP_PX = 3
SURROUNDINGS_MIN_PX = 20


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
    a = np.asarray(r.aligned)
    m = np.asarray(r.mask, bool)
    if not m.any():
        h, w = a.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        m = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= max(0.7 * float(r.radius), 2.0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(a[:, m], float), axis=1)  # the mask's pixels in float64, not the whole stack


def _surroundings_spectrum(r) -> np.ndarray | None:
    """The median OD, frame by frame, of a particle's aligned window :data:`SURROUNDINGS_GAP_PX` or more beyond its
    mask (other tracked particles' pixels, ``background_exclude``, left out); None where fewer than
    :data:`SURROUNDINGS_MIN_PX` pixels are left or the particle has no mask.

    The matrix's own absorption falls with the energy (about as E^-3) by more than a faint particle's edge step rises:
    the stress family's matrix, 0.84 -> 0.76 OD from below to above the Ni edge, hid the step of a particle of radius
    10 px (+0.11 OD over its surroundings, +0.03 over the scan's frames), and the faint track was left out as matrix
    texture (``stress-counts`` seed 2, classical). The core less this shows the particle's own step."""
    a = getattr(r, "aligned", None)
    m = np.asarray(getattr(r, "mask", np.zeros((0, 0), bool)), bool)
    if a is None or not m.any():
        return None
    ring = ~dilate_cross(m, SURROUNDINGS_GAP_PX)
    exclude = getattr(r, "background_exclude", None)
    if exclude is not None and np.shape(exclude) == m.shape:
        ring &= ~np.asarray(exclude, bool)
    if ring.sum() < SURROUNDINGS_MIN_PX:
        return None
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.asarray(a)[:, ring], axis=1).astype(float)


def _surroundings_edge_z(r, energies, e0) -> float:
    """A track's edge step in standard errors (:func:`_edge_step_z`) over its surroundings: of its core's mean spectrum
    less theirs (:func:`_surroundings_spectrum`); NaN where it has none or was measured nowhere."""
    around = _surroundings_spectrum(r) if np.isfinite(r.positions).any() else None
    if around is None:
        return float("nan")
    core = _core_spectrum(r)
    return _edge_step_z(core - around, energies, e0) if around.shape == core.shape else float("nan")


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
        if j in nowhere or not _faint_track(loc, options):
            continue
        # faint, and without an edge, also over its surroundings (taken for the faint tracks only: a large
        # particle's surroundings over every frame are tens of MiB, held at the run's peak)
        if z[j] < EDGELESS_Z and not _surroundings_edge_z(results[j], energies, e0) >= EDGELESS_Z:
            out.append(j)
    return sorted(out)


def _faint_track(loc, options) -> bool:
    """A track detected in fewer than ``options.match.min_track_fraction`` of the frames examined: left out where its
    mean spectrum shows no edge (:func:`_edgeless_faint_tracks`)."""
    n_examined, n_seen = int(loc.examined.sum()), int((loc.detected & loc.examined).sum())
    return bool(n_examined and n_seen < options.match.min_track_fraction * n_examined)


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
        said.append(f"its mask ran into the touching {who} in {count(f['joined'], 'frame')}")
        kind = "track" if other.pid in gone_ids else "particle"
        counts.append((f["joined"], f"mask_joined_to_{kind}_{other.pid}"))
    if f["empty"]:
        said.append(f"its mask in its window was empty in {count(f['empty'], 'frame')}")
        counts.append((f["empty"], "mask_empty"))
    if f["beyond"]:
        said.append(
            "its mask ran out of its window (joined to something beside it: a touching neighbour or the matrix) in "
            + count(f["beyond"], "frame")
        )
        counts.append((f["beyond"], "mask_runs_out_of_window"))
    if f["area"]:
        a = f["areas"]
        said.append(
            f"its mask's area was too far from its median to trust ({a.min():.0f}"
            + (f"-{a.max():.0f}" if round(a.max()) != round(a.min()) else "")
            + f" px against {f['median']:.0f}) in "
            f"{count(f['area'], 'frame')}"
        )
        counts.append((f["area"], "mask_area_unsteady"))
    if f["border"]:
        said.append(f"its mask was cut by the frame's border in {count(f['border'], 'frame')}")
        counts.append((f["border"], "mask_at_border"))
    if f["other"]:
        said.append(f"its mask was not usable otherwise (a position outlier) in {count(f['other'], 'frame')}")
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
            f"{count(len(nowhere), 'track')} left out, measured in no frame (no usable mask in any frame: nothing "
            "to report). Where each was (frame 0) and what its window gave: "
            + "; ".join(each)
            + (f"; and {more} more" if more > 0 else "")
            + " (rejected.csv names each with the failure of most of its frames)"
        )
    if edgeless:
        said.append(
            f"{count(len(edgeless), 'faint track')} left out at (y, x) "
            f"{_where(np.array([loc.centres[0] for loc in edgeless]))} (frame 0): detected in few of the frames "
            f"examined and showing no absorption edge in its mean spectrum nor over its surroundings' (a step within "
            f"{EDGELESS_Z:g} standard errors of nil, where the particles' stand out): texture of the matrix, not a "
            "particle of the element scanned"
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


def _mask_miss(shape, od, centres, frames, radius, options, reach=None) -> float:
    """Share of the particle's outline (:func:`_mean_outline`) that ``shape`` (grown by 2 px)
    misses; 0 where there is nothing to compare."""
    outline = _mean_outline(shape, od, centres, frames, radius, options, reach)
    if outline is None:
        return 0.0
    return float((outline & ~dilate_cross(shape, 2)).sum() / outline.sum())


#: The share of the frames a particle was followed in (and at least :data:`MASK_EMPTY_MIN` of them) where a learned
#: segmenter's mask of it may be empty before the classical segmenter is asked too (``PipelineOptions.mask_guard``);
#: its masks replace the learned ones where they are empty in at most half as many frames and serve the key frames as
#: well (:func:`_mask_score`). Measured: stress-all seed 11 (learned, 600 counts), the learned masks of three
#: particles of radius 11-19 px empty in 48, 34 and 48 of 143 frames before the edge (their positions there from the
#: edge estimate alone, vouched for by nothing), the classical ones in 13, 0 and 1: those outline them now (0.282,
#: 0.237, 0.211 -> 0.287, 0.222, 0.212 px RMS). Where the classical masks are empty in most of those frames too (an
#: 11-px particle there: 59 and 45 frames) nothing changes.
MASK_EMPTY_SHARE = 0.1
MASK_EMPTY_MIN = 5


def _masks_left_empty(seg, measured, segmented, fallback, centres, best, options):
    """``(classical, (n_learned, n_classical))`` where the learned masks ``seg`` are empty in more than
    :data:`MASK_EMPTY_SHARE` of the ``measured`` frames and the classical segmenter's (``segmented(fallback)``) in at
    most half as many, serving the key frames ``best`` as well (:func:`_mask_score`); None otherwise. A learned
    segmenter that sees a faint particle only after the edge leaves it to the edge estimate alone before it."""
    measured = np.asarray(measured, bool)

    def n_empty_of(s):
        return int((~np.isfinite(np.asarray(s.com, float)).all(axis=1) & measured).sum())

    n_empty = n_empty_of(seg)
    if n_empty < max(MASK_EMPTY_MIN, MASK_EMPTY_SHARE * measured.sum()):
        return None
    classical = segmented(fallback)
    c_empty = n_empty_of(classical)
    if 2 * c_empty > n_empty:
        return None
    if _mask_score(classical, centres, best, options) < _mask_score(seg, centres, best, options):
        return None
    return classical, (n_empty, c_empty)


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


def _orientation_spread(segmenter, od, centres, frames, radius, half, reach=None) -> tuple[float, int]:
    """px: how far the centres of mass of ``segmenter``'s outlines of the particle's mean window lie from their
    mean (the largest), the window segmented in each orientation of the square and each outline turned back;
    and the number of orientations. 0 where there is nothing to compare.

    The mean window (:func:`_mean_window`, over ``frames``) is the segmentation window (``2 * half + 1`` px),
    levelled as every window is (:func:`xanestrack.segment._level_windows`), the outlines cut off from fines
    and neighbours as every mask (:func:`isolate_particle`; ``reach``: the radius the windows are sized on).
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
    masks = isolate_particle(masks, radius=radius, centres=np.full((len(ts), 2), float(half)), reach=reach) > 0.5
    com = np.array([ndimage.center_of_mass(m) for m in masks if m.any()])
    if len(com) < 2:
        return 0.0, len(ts)
    return float(np.hypot(*(com - com.mean(axis=0)).T).max()), len(ts)


def _mean_outline(shape, od, centres, frames, radius, options, reach=None):
    """The classical outline of the particle seen in its mean window (bool, ``shape``'s window), or None.

    The outline is the classical segmenter's on the particle's mean window over ``frames``
    (aligned on ``centres``, the first pass's positions: averaging keeps its noise low),
    fines and neighbours cut off as in every mask (:func:`isolate_particle`) and touching
    particles at their necks (:func:`xanestrack.detect.cut_at_necks`, the piece that
    ``shape`` covers most), and only its components that ``shape`` touches. None where
    there is nothing to compare. ``reach``: the radius the windows are sized on (:func:`_Located`'s; default
    ``radius``).
    """
    _, _, size = window_geometry(radius if reach is None else reach, options.follow)
    c = (size - 1) / 2
    mean = _mean_window(od, centres, frames, size) if shape.any() else None
    if mean is None:
        return None
    outline = segment_roi(mean, centre=(c, c), options=options.segment)[None]
    outline = isolate_particle(outline, radius=radius, centres=np.array([[c, c]]), reach=reach)[0] > 0.5
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
    edge where the window lies inside the frame: joined to something beside the particle), whose area is an
    ``area_outlier``, or that is empty (``no_mask``; :func:`~xanestrack.register.mask_flags`). Empty masks were not
    counted: classical masks empty in both frames of the real SSRL pair, turned 180 degrees, scored better than
    learned ones of 7540 / 6715 px with one odd frame and replaced them (a 90-px particle then measured in no frame
    and left out)."""
    from .register import mask_flags

    soft = np.asarray(seg.masks, np.float32)
    hard = soft > 0.5
    beyond = _runs_out_of_window(hard, seg.clipped)
    flags = mask_flags(soft, outside=seg.outside, clipped=seg.clipped, area_tolerance=options.area_tolerance)
    bad = beyond | ((flags & (FRAME_FLAGS["area_outlier"] | FRAME_FLAGS["no_mask"])) > 0)
    return int((bad & np.asarray(frames, bool)).sum())


def _mask_score(seg, centres, frames, options) -> tuple[int, int]:
    """How well the masks of ``seg`` serve a particle over ``frames`` (bool), to compare two segmenters' (the higher
    the better): the frames whose mask's centre of mass lies within ``options.agreement_px`` of ``centres`` (the
    first pass's positions: the frames the centre of mass can vouch for) less the frames of :func:`_mask_trouble`,
    then the frames that agree. The number of troubled frames alone chose learned masks missing part of a 38-px
    particle in every frame (their centre of mass 0.88 px off the edge estimate, median: 56 of 60 frames not
    vouched for, the note calling it perhaps no particle; reduced stress-all seed 2) over classical ones troubled
    in about 20 frames that vouched for 31. The frames that agree first, then the troubled ones (before
    2026-12-07), chose classical masks of 21848 / 48332 px of the real SSRL pair's 131-px particle (turned 180
    degrees: one of its two frames agreeing by chance, both areas odd) over learned ones of 53511 / 52800 px that
    agreed in neither: the track was left out, its masks' area unsteady. On the pair as given neither agrees in any
    frame (the outlines move across the edge) and the troubled frames decide."""
    frames = np.asarray(frames, bool)
    with np.errstate(invalid="ignore"):
        agree = np.hypot(*(np.asarray(seg.com, float) - np.asarray(centres, float)).T) <= options.agreement_px
    n_agree = int((agree & frames).sum())
    return n_agree - _mask_trouble(seg, frames, options), n_agree


#: a particle whose outline reaches beyond its windows (:func:`~xanestrack.register.window_radius`) is located
#: again in windows that hold it where its masks failed (:func:`_outline_lost`) in more than this share of its
#: frames
OUTLINE_LOST_SHARE = 0.5


def _outline_lost(loc: _Located) -> int:
    """The frames in which the particle's mask is empty, runs out of its window (:func:`_runs_out_of_window`) or
    holds under half the area of its detections' disc (a piece of it: the classical masks of a rod of aspect 6,
    10 px wide, opened away but for a piece of radius 8 px of its 15.7)."""
    hard = np.asarray(loc.seg.masks) > 0.5
    piece = hard.sum(axis=(1, 2)) < 0.5 * np.pi * loc.radius**2
    return int((piece | _runs_out_of_window(hard, loc.seg.clipped)).sum())


def _locate_particle(pid, track, od, segmenter, options, fallback=None, unlit=None) -> _Located:
    """The particle of ``track`` followed and outlined in every frame (:func:`_locate_in`), in windows sized on its
    detections' largest radius; an elongated one whose outline reaches beyond them (its detections' ``extent``,
    the median) and whose masks were empty, pieces of it or ran out of them in most frames
    (:data:`OUTLINE_LOST_SHARE`, :func:`_outline_lost`) again, in windows that hold it
    (:func:`~xanestrack.register.window_radius`), kept where its masks fail there in fewer frames.

    Rods of aspect 4 and 6 and an 80 x 32 px ellipse were measured in no frame, their masks running out of the
    windows of their equivalent radius (the thinner rod's opened away by the opening sized on that radius, but
    for a piece followed as a particle of radius 8 px, 9 px from its centre). Only where they fail: every other
    particle keeps its windows (the real SSRL pair's irregular ones reach 1.3-1.4 radii along their long axis;
    followed in wider windows, one of radius 97 px was taken for a part of its 167-px neighbour).
    """
    track = track.sort_values("frame")
    radius = float(np.nanmax(track["radius"])) if track["radius"].notna().any() else 10.0
    extent = track["extent"].to_numpy(float) if "extent" in track else np.zeros(0)
    reach = window_radius(radius, float(np.nanmedian(extent)) if np.isfinite(extent).any() else None)
    loc = _locate_in(pid, track, od, segmenter, options, fallback, unlit, radius, radius)
    if reach > radius and _outline_lost(loc) > OUTLINE_LOST_SHARE * len(loc.centres):
        wide = _locate_in(pid, track, od, segmenter, options, fallback, unlit, radius, reach)
        if _outline_lost(wide) < _outline_lost(loc):
            loc = wide
    return loc


#: the most frames (of those the particle was detected in, spread over them) whose windows' mean its outline's lobes
#: are sought on before it is analysed (:func:`_window_lobes`); the brightest half of them is used
GROUP_FRAMES = 24


def _window_lobes(loc, od, options) -> tuple[list, float]:
    """The lobes of a located particle's outline (:func:`xanestrack.outlines.window_lobes`) on the mean of its
    windows (on :func:`follow_particle`'s grid, centred on its first-pass positions) in frames it was detected and
    measured in, past the edge; each lobe's ``centre`` in window px (the particle's position at
    ``(size - 1) / 2``)."""
    if loc.shape is None:
        return [], float("nan")
    _, _, size = window_geometry(loc.reach, options.follow)
    k = np.flatnonzero(loc.measured & loc.detected & np.isfinite(loc.centres).all(axis=1))
    if k.size < 2:
        return [], float("nan")
    k = np.unique(k[np.linspace(0, k.size - 1, min(k.size, GROUP_FRAMES)).round().astype(int)])
    windows = resample_windows(od, loc.centres - (size - 1) / 2, (0, 0), (size, size), order=1, frames=k)
    return window_lobes(windows, loc.shape, options.detect.min_radius)


def _piece_lobes(loc, options) -> list:
    """Lobes of a group from the pieces the detector cut its outline into in some key frames (``pieces_at``),
    where its masks hold one of them only (the others beyond its outline, so :func:`_window_lobes` finds none):
    each piece seen in at least half of those frames (matched to the pieces of the frame with the most by distance,
    within half its radius), at its median offset from the track's first-pass position and median radius, drawn as
    a disc on a grid centred on that position (:class:`~xanestrack.outlines.Lobe`, its ``centre`` in grid px). None
    where fewer than two such pieces are of a particle's size."""
    from .outlines import Lobe

    t = loc.track.sort_values("frame")
    if "pieces" not in t or "pieces_at" not in t:
        return []
    cut = np.flatnonzero(t["pieces"].fillna(0).to_numpy(int) >= 2)
    frames = t["frame"].to_numpy(int)
    seen = []
    for j in cut:
        k = frames[j]
        if not np.isfinite(loc.centres[k]).all():
            continue
        parts = [tuple(map(float, q.split(","))) for q in str(t["pieces_at"].iloc[j]).split(";") if q.count(",") == 2]
        seen.append(np.array([(y - loc.centres[k, 0], x - loc.centres[k, 1], r) for y, x, r in parts]))
    if not seen:
        return []
    ref = max(seen, key=len)
    matched = [[] for _ in ref]
    for parts in seen:
        for y, x, r in parts:
            d = np.hypot(ref[:, 0] - y, ref[:, 1] - x)
            i = int(np.argmin(d))
            if d[i] <= 0.5 * ref[i, 2]:
                matched[i].append((y, x, r))
    pieces = [np.median(m, axis=0) for m in matched if 2 * len(m) >= len(seen)]
    pieces = [q for q in pieces if q[2] >= options.detect.min_radius]
    if len(pieces) < 2:
        return []
    half = int(np.ceil(max(np.hypot(y, x) + r for y, x, r in pieces))) + 2
    yy, xx = np.mgrid[: 2 * half + 1, : 2 * half + 1] - half
    lobes = []
    for y, x, r in pieces:
        disc = np.hypot(yy - y, xx - x) <= r
        lobes.append(Lobe(disc, (half + y, half + x), float(r), float(r)))
    return lobes


def _member_track(loc, offset, pid: int, radius: float) -> pd.DataFrame:
    """The track of one member of a group ``loc`` tracked apart: its first-pass positions moved by ``offset``
    (px), its radius ``radius``, id ``pid``; the group's detections' extent and pieces are not its."""
    track = loc.track.sort_values("frame").copy()
    track[["y", "x"]] = loc.centres + np.asarray(offset, float)
    track["particle"] = pid
    track["radius"] = radius
    for column, empty in (("extent", np.nan), ("pieces", 0), ("pieces_at", "")):
        if column in track:
            track[column] = empty
    return track


def _cut_at_lobes(member, own, others, options) -> None:
    """A group's member's masks cut to the pixels nearer to its own lobe than to the others' (``own``, ``others``:
    :class:`~xanestrack.outlines.Lobe` on the group's window grid), its own lobe placed at its position in each
    frame; its masks' centres of mass and its consensus shape again (updates ``member``). The segmenter's neck rule
    (:func:`~xanestrack.segment.isolate_particle`) cuts a touching neighbour only at a narrow neck: the contacts the
    detector kept whole are too wide for it."""
    from dataclasses import replace

    theirs = np.min([ndimage.distance_transform_edt(~q.pixels) for q in others], axis=0)
    kept = ndimage.distance_transform_edt(~own.pixels) <= theirs
    seg = member.seg
    masks = np.array(seg.masks, copy=True)
    _, h, w = masks.shape
    yy, xx = np.mgrid[:h, :w]
    for k in np.flatnonzero(np.isfinite(member.centres).all(axis=1)):
        gy = np.round(yy + (seg.origins[k, 0] - member.centres[k, 0] + own.centre[0])).astype(int)
        gx = np.round(xx + (seg.origins[k, 1] - member.centres[k, 1] + own.centre[1])).astype(int)
        on = (gy >= 0) & (gy < kept.shape[0]) & (gx >= 0) & (gx < kept.shape[1])
        theirs_here = np.zeros((h, w), bool)
        theirs_here[on] = ~kept[gy[on], gx[on]]
        masks[k][theirs_here] = 0.0
    member.seg = replace(seg, masks=masks, com=centre_of_mass(masks) + seg.origins)
    best = member.measured & member.detected if (member.measured & member.detected).any() else member.measured
    member.shape = _consensus_shape(member.seg, member.centres, best, member.reach, options.follow)


def _members_apart(members) -> bool:
    """Whether the members of a group tracked apart came out as particles of their own: each outlined (a
    consensus shape holding its own position) and measured in at least half of its frames, and no member's shape
    holding another's position (median over the frames both are measured in)."""
    return all(_own_particle(a, [b for b in members if b is not a]) for a in members)


def _own_particle(a, others) -> bool:
    """Whether ``a`` came out a particle of its own beside ``others`` (:func:`_members_apart`)."""
    if a.shape is None or a.measured.sum() < 0.5 * len(a.measured):
        return False
    size = a.shape.shape[0]
    c = (size - 1) / 2
    if not a.shape[int(round(c)), int(round(c))]:
        return False
    for b in others:
        both = a.measured & b.measured
        if not both.any():
            return False
        y, x = np.round(c + np.median(b.centres[both] - a.centres[both], axis=0)).astype(int)
        if 0 <= y < size and 0 <= x < size and a.shape[y, x]:
            return False
    return True


def _track_smaller(loc, lobes, neck, next_pid, od, segmenter, options, fallback, unlit) -> list:
    """The smaller particles touching a larger one that its outline takes in (lobes of a particle's size,
    ``lobes``, the largest at least :data:`~xanestrack.outlines.LOBE_DOMINANT_AREA` times as large as each other),
    each tracked beside it: its track the larger one's first-pass positions moved to its lobe's centre, its radius
    its lobe's, followed, outlined (its masks cut from the larger one's lobe: :func:`_cut_at_lobes`) and analysed on
    its own; kept where it comes out a particle of its own (:func:`_own_particle`). The larger particle is left as it
    is (the smaller ones are left out of its mask before its chemistry:
    :func:`~xanestrack.outlines.neighbour_lobes_left_out`). Before, such a particle was in no table."""
    if len(lobes) < 2:
        return []
    big = max(lobes, key=lambda q: np.count_nonzero(q.pixels))
    area = float(np.count_nonzero(big.pixels))
    out = []
    for q in lobes:
        if q is big or area < LOBE_DOMINANT_AREA * np.count_nonzero(q.pixels):
            continue
        pid = next_pid + len(out)
        offset = np.subtract(q.centre, (q.pixels.shape[0] - 1) / 2)
        m = _locate_particle(pid, _member_track(loc, offset, pid, q.radius), od, segmenter, options, fallback, unlit)
        _cut_at_lobes(m, q, [o for o in lobes if o is not q], options)
        if _own_particle(m, [loc]):
            m.larger = (loc.pid, area / np.count_nonzero(q.pixels), neck)
            out.append(m)
    loc.smaller = tuple(m.pid for m in out)
    return out


def _split_groups(located, od, segmenter, options, fallback=None, unlit=None) -> tuple[list, list]:
    """``(located, groups)``: each particle whose outline is made of touching particles of alike size (two or more
    lobes at half height, :func:`_window_lobes`, none :data:`~xanestrack.outlines.LOBE_DOMINANT_AREA` times as large
    as the next) tracked apart: one track per lobe (the group's first-pass positions moved to the lobe's centre, its
    radius the lobe's), each followed, outlined and analysed on its own as touching particles the detector cut are
    (its masks cut between the lobes: :func:`_cut_at_lobes`); kept where every member comes out a particle of its
    own (:func:`_members_apart`), else the group stays one particle (its note says it may be several:
    :func:`~xanestrack.outlines._with_outline_lobes`). Where its masks hold one of the pieces the detector cut it
    into in some key frames, those pieces are the lobes (:func:`_piece_lobes`). ``groups``: ``(group id, member
    ids, neck)``, the neck NaN where the pieces were the lobes.

    The detector cuts touching particles at necks narrower than 0.6 of the smaller one's width (at its binning, in
    key frames); a contact longer than that, or an outline convex enough at that binning, keeps them whole as one
    track, in every frame: one position, one size and one mean E50 for particles that may differ in all three."""
    out, groups = [], []
    next_pid = max((loc.pid for loc in located), default=-1) + 1
    for loc in located:
        lobes, neck = _window_lobes(loc, od, options)
        if len(lobes) < 2:  # its masks hold one of the pieces the detector cut it into: those pieces
            lobes, neck = _piece_lobes(loc, options), float("nan")
        areas = sorted((float(np.count_nonzero(q.pixels)) for q in lobes), reverse=True)
        if len(lobes) < 2 or areas[0] >= LOBE_DOMINANT_AREA * areas[1]:
            out.append(loc)
            smaller = _track_smaller(loc, lobes, neck, next_pid, od, segmenter, options, fallback, unlit)
            out.extend(smaller)
            next_pid += len(smaller)
            continue
        members = []
        for q in lobes:  # both kinds of lobes lie on a square grid centred on the track's first-pass position
            offset = np.subtract(q.centre, (q.pixels.shape[0] - 1) / 2)
            track = _member_track(loc, offset, next_pid + len(members), q.radius)
            members.append(_locate_particle(next_pid + len(members), track, od, segmenter, options, fallback, unlit))
        for m, q in zip(members, lobes, strict=True):
            _cut_at_lobes(m, q, [o for o in lobes if o is not q], options)
        if not _members_apart(members):
            out.append(loc)
            continue
        ids = tuple(m.pid for m in members)
        for m in members:
            m.group = (loc.pid, ids, neck)
        out.extend(members)
        groups.append((loc.pid, ids, neck))
        next_pid += len(members)
    return out, groups


#: how the note of a smaller particle tracked beside the larger one it touches begins (:func:`_track_smaller`)
SMALLER_NOTE = "tracked beside the larger particle it touches"
#: how the note of a particle tracked apart from the touching particles it was detected with begins
GROUP_NOTE = "tracked apart from the particles it touches"
#: ... and the note of one that moved against a member of its group (:func:`_with_group_motion`)
GROUP_MOTION_NOTE = "it moved against a touching particle of its group"
#: px: members of a group whose relative position strays from its median by more than this (95th percentile over
#: the frames both are vouched for in) and :data:`GROUP_APART_Z` times its noise moved against each other. Each
#: member's edge correlation sees the contact, which moves with both, so they pull each other and their relative
#: motion is read low: the probe's pair (radius 30 and 24 px, contact 39 px, classical path) read 0.04 px held
#: together, 0.08 / 0.14 / 0.29 px with its smaller member sliding 0.5 / 1 / 2 px across the scan (each member's
#: positions then 0.20-0.26 px RMS off its truth, 0.41 at most; held together 0.03-0.04), and 0.50 px parting by
#: 3.7 px with the contact shortening (0.41-0.45 px RMS)
GROUP_APART_PX = 0.1
GROUP_APART_Z = 4.0


def _group_note(group) -> str:
    """A member's note (:func:`_split_groups`)."""
    gid, ids, neck = group
    how = (
        f"whose outline at half height has {len(ids)} lobes of a particle's size joined at a neck {neck:.2f} of the "
        "smaller one's width"
        if np.isfinite(neck)
        else f"which it cut into these {len(ids)} in some of its key frames only, its masks holding one of them"
    )
    return (
        f"{GROUP_NOTE} (particles {', '.join(map(str, ids))}): the detector kept the {len(ids)} whole as one "
        f"(track {gid}), {how}; each followed, outlined (its masks cut between them) and analysed on its own"
    )


def _with_group_motion(particles: list, groups: list) -> list:
    """The members of each group tracked apart (:func:`_split_groups`) with a note where they moved against each
    other across the scan: of each pair, their positions' difference over the frames both are vouched for in, less
    its median, its 95th percentile beyond :data:`GROUP_APART_PX` and :data:`GROUP_APART_Z` times its noise (the
    frame-to-frame scatter)."""
    from itertools import combinations

    from .result import UNVOUCHED_FLAGS

    by_id = {p.particle: p for p in particles}
    apart = {}
    for _, ids, _ in groups:
        for i, j in combinations([m for m in ids if m in by_id], 2):
            a, b = by_id[i], by_id[j]
            both = ((np.asarray(a.frame_flags) | np.asarray(b.frame_flags)) & UNVOUCHED_FLAGS) == 0
            d = (b.positions - a.positions)[both]
            d = d[np.isfinite(d).all(axis=1)]
            if len(d) < 4:
                continue
            v = float(np.percentile(np.hypot(*(d - np.median(d, axis=0)).T), 95))
            step = np.diff(d, axis=0)
            noise = float(np.hypot(robust_sigma(step[:, 0]), robust_sigma(step[:, 1]))) / np.sqrt(2)
            if not v > max(GROUP_APART_PX, GROUP_APART_Z * noise):
                continue
            for k, other in ((i, j), (j, i)):
                if v > apart.get(k, (0.0, -1))[0]:
                    apart[k] = (v, other)
    out = []
    for p in particles:
        v, other = apart.get(p.particle, (0.0, -1))
        if other >= 0:
            note = (
                f"{GROUP_MOTION_NOTE} (particle {other}): their relative position strayed {v:.2f} px from its median "
                "(95th percentile of the frames both are vouched for in); its position is measured beside the "
                "contact, which moves with both, so the two pull each other: their relative motion is read low (a "
                "2-px slide as 0.29 px on a test pair, each position then 0.2-0.26 px RMS off) and each position may be "
                "off by a share of it"
            )
            p = dataclasses.replace(p, notes=(*p.notes, note))
        out.append(p)
    return out


def _pieces_to_members(rejected_tracks: pd.DataFrame, located: list, groups: list) -> pd.DataFrame:
    """``rejected_tracks`` with the pieces of a group's outline (``piece_of`` the group, cut apart in a few key frames)
    made pieces of the member nearest to them (:func:`_split_groups`): the group is no particle of the run."""
    gids = {gid: ids for gid, ids, _ in groups}
    if "piece_of" not in rejected_tracks or not rejected_tracks["piece_of"].isin(list(gids)).any():
        return rejected_tracks
    at = {loc.pid: np.nanmedian(_positions(loc), axis=0) for loc in located}
    out = rejected_tracks.copy()
    for i, t in out.iterrows():
        ids = gids.get(int(t["piece_of"]))
        if ids:
            out.at[i, "piece_of"] = min(ids, key=lambda m: float(np.hypot(*(at[m] - (t["y"], t["x"])))))
    return out


def _groups_run_note(groups) -> str:
    """The run note on the groups tracked apart (:func:`_split_groups`)."""
    said = "; ".join(f"track {gid} into particles {', '.join(map(str, ids))}" for gid, ids, _ in groups[:12])
    return (
        f"{count(len(groups), 'group')} of touching particles of alike size that the detector kept whole as one "
        f"(lobes of its outline at half height joined at necks of at most {LOBE_NECK:.2f} of the smaller one's width, "
        "or pieces it was cut into in some key frames) tracked apart, each member on its own "
        f"({said}{' ...' if len(groups) > 12 else ''})"
    )


def _locate_in(pid, track, od, segmenter, options, fallback, unlit, radius: float, reach: float) -> _Located:
    """:func:`_locate_particle` in windows sized on ``reach`` (px), its masks cut from fines as those of a
    particle of ``radius`` (px) as wide as a disc of ``radius**2 / reach``."""
    n = od.shape[0]
    predicted = track[["y", "x"]].to_numpy()
    detected = track["detected"].to_numpy()
    half = window_half(reach, options.margin)
    examined = track["examined"].to_numpy() if "examined" in track else np.ones(n, bool)
    # follow the particle on its own: windows placed from its own positions and refined by
    # correlating its outline with a reference frame (the last frame it was detected in:
    # post-edge, highest contrast, in an energy scan)
    ref_frame = int(np.flatnonzero(detected)[-1]) if detected.any() else 0
    followed, _, measured = follow_particle(od, predicted, reach, ref_frame, options=options.follow)
    centres = np.where(measured[:, None], followed, predicted)
    # the windows the centre of mass is measured in, centred on the edge estimate it must
    # vouch for unless offset (window_offset_px; off by default, see its docstring)
    offsets = window_offsets(pid, n, options.window_offset_px)

    made = {}  # each segmenter's windows made once (the guards below may each ask for the classical ones)

    def segmented(by):
        if id(by) not in made:
            made[id(by)] = segment_particle(
                od,
                centres,
                half,
                segmenter=by,
                radius=radius,
                separate=options.separate_neighbours,
                offsets=offsets,
                unlit=unlit,
                reach=reach,
            )
        return made[id(by)]

    seg = segmented(segmenter)
    # the shape from the frames the particle was detected in (key frames, where its
    # contrast sufficed), not from faint pre-edge frames whose masks come out partial
    best = measured & detected if (measured & detected).any() else measured
    shape = _consensus_shape(seg, centres, best, reach, options.follow) if best.any() else None
    missed = turned = None
    if fallback is not None and options.mask_guard and shape is not None:
        # a learned segmenter that leaves out part of what the particle's mean window shows
        # (a lobe: stress family, 41-px particle, its masks' centre of mass 4 px off the true
        # one), or whose outline of it moves with the window's orientation (a strip left out on
        # one side: stress-jitter, a 12-px particle vouched 1.07 px off the truth, 0.20 px with
        # the frames transposed), is not trusted with this particle: the classical segmenter
        # outlines it
        miss = _mask_miss(shape, od, centres, best, radius, options, reach)
        spread, n_turns = (
            (0.0, 0) if miss > MASK_MISS else _orientation_spread(segmenter, od, centres, best, radius, half, reach)
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
                shape = _consensus_shape(seg, centres, best, reach, options.follow)
    empty = None
    if fallback is not None and options.mask_guard and shape is not None and missed is None and turned is None:
        empty = _masks_left_empty(seg, measured, segmented, fallback, centres, best, options)
        if empty is not None:
            seg, empty = empty
            shape = _consensus_shape(seg, centres, best, reach, options.follow)
    return _Located(
        int(pid),
        track,
        detected,
        examined,
        radius,
        reach,
        half,
        ref_frame,
        followed,
        measured,
        centres,
        seg,
        shape,
        mask_missed=missed,
        mask_turned=turned,
        mask_empty=empty,
    )


def _own_motion_vouched(motion: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """``motion`` with each particle's own (non-rigid) displacement NaN in its frames not vouched for (``frames``:
    ``particle, frame, reliable``), for the notes on the whole field's motion (a turn, a magnification, a strain):
    judged on every frame, they took the frames where no particle was vouched for, whose common motion is filled in
    from the frames that were, and the jitter it missed there, 3-9 px frame to frame, for the particles' own motion (a
    reduced stress-all scene, seed 2, learned: no particle vouched for before frame 18, "mostly (84 %) a turn of the
    whole field, up to -0.53 degrees (frame 10)", and a magnification off its line: the scene neither turns nor
    leaves its line)."""
    from .motion import only_reliable

    return only_reliable(motion, frames if frames is not None and len(frames) else None, ("nonrigid_dy", "nonrigid_dx"))


def _illumination_field(stack, shape):
    """``stack.metadata["illumination"]``: the pattern by which each frame's illumination differed from its own
    flat's (:class:`xanestrack.io.flatfield.IlluminationResidual`, found by the reader), or None. Taken out of each
    particle's aligned frames before its chemistry (:func:`_finish_particle`); its positions are measured on the
    frames as given (taken out of the frames, ``--dynamic-flats``, the positions of the stress family's particles
    came out 0.01-0.05 px RMS worse where it acted: the pattern's estimate has noise of its own).

    Raises
    ------
    ValueError
        If it is not of the frames' shape (the frames cropped, binned or some left out after reading), or was kept
        for these frames in another order (:func:`_illumination_reordered`).
    """
    found = stack.metadata.get("illumination")
    if found is None:
        return None
    got = getattr(found, "shape", None)
    if got is None or not hasattr(found, "windows"):
        raise ValueError(
            "stack.metadata['illumination'] must be an xanestrack.io.flatfield.IlluminationResidual (as read_stack "
            f"keeps it), got {type(found).__name__}"
        )
    if tuple(got) != tuple(shape):
        raise ValueError(
            f"stack.metadata['illumination'] (each frame's illumination off its flat's) was measured on frames of "
            f"shape {tuple(got)}, not the stack's {tuple(shape)}: leave it out where the frames were cropped, binned "
            "or some left out after reading (the particles' chemistry then keeps the mismatch)"
        )
    if _illumination_reordered(found, stack.od):
        raise ValueError(
            "stack.metadata['illumination'] (each frame's illumination off its flat's) was kept for these frames in "
            "another order: leave it out where the frames were sorted or reordered after reading (the particles' "
            "chemistry then keeps the mismatch), or reorder it with them"
        )
    return found


def _illumination_reordered(found, od) -> bool:
    """Whether the frames ``od`` are those the pattern ``found`` was kept for, put in another order: their levels
    (:func:`xanestrack.io.flatfield.frame_levels`) match those kept by the reader only once both are sorted. The
    pattern would go to other frames (a Stack's frames sorted or shuffled after reading, the metadata kept: each
    frame's chemistry given another frame's mismatch). False where no levels were kept or the values changed."""
    from .io.flatfield import frame_levels

    kept = getattr(found, "frame_levels", None)
    if kept is None or len(kept) != od.shape[0]:
        return False
    now = frame_levels(od)
    same = lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)  # noqa: E731
    return not same(now, kept) and same(np.sort(now), np.sort(kept))


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

#: A particle moving on its own by less than ``SEPARATE_PX`` is separated from the matrix at once only
#: where its own motion is at least this many times the noise of its positions in its noisiest
#: frames (:func:`_position_noise_px`): the layers are told apart by that motion. Separated from
#: 0.75 px without it, stress-counts seed 1 (600 counts) lost most: a 16-px particle moving
#: 0.83 px, its positions 0.31 px noisy before the edge, 0.27 -> 0.41 px RMS (the row 0.278 ->
#: 0.367 learned, 0.237 -> 0.264 classical); with it 0.260 and 0.211. Stress family (full size,
#: seeds 1-2, 28 runs), against separating from 1.5 px only: runs with the worst particle within
#: 0.25 px 15 -> 19, with the median within 0.12 px 18 -> 19, both 11 -> 16; no run worse by
#: more than 0.004 px. (Without the test, 0.75 px: 18, 19 and 15, stress-all seed 1 better
#: (0.476 -> 0.389 learned), stress-counts seed 1 worse.) Those measurements were made with the
#: matrix taken from 48 frames; since it is taken from every frame (2026-12-07,
#: :func:`xanestrack.background.separate_layers`), a particle that fails this test is still separated
#: from ``MIN_OWN_MOTION`` where the edge cannot tell its matrix apart (``SEPARATE_WHERE_UNMIXING_FAILS``).
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

#: A particle moving on its own by ``MIN_OWN_MOTION`` or more but less than ``SEPARATE_PX``, whose
#: motion does not stand out of its noise (``OWN_MOTION_SNR``), is told apart from the matrix by its
#: edge (:func:`_unmix_where_it_tells`) where that estimate stands out of its own noise and moves the
#: particle, else (at low counts, the estimate's noise 2-4 times below its signal) separated by its
#: motion all the same (:func:`_refine_moving`): it was followed by its shape alone, still pulled by
#: the matrix. Measured (``bench_stress.py``, full size, both paths, against the code before: the
#: matrix from 48 frames, this False): stress-counts seed 2 learned 0.333 -> 0.240 px worst,
#: classical 0.321 -> 0.249, seed 1 classical 0.245 -> 0.210 (seed 2's 12-px particle, moving 0.89 px
#: on its own, 1.6 times its noise: in a 260-px cut of the scene 0.342 -> 0.284 px RMS); the table's
#: runs meeting every goal and the held-out seeds: README, "The stress family". Separating every such particle instead, even
#: where the edge tells its matrix apart, lost one that the edge had measured well (stress-crowd
#: seed 2, classical: an 11-px particle about 0.10 -> 0.17 px, the run's median 0.118 -> 0.168);
#: separating every particle moving 0.75 px or more (``SEPARATE_PX`` 0.75) with the matrix from 48
#: frames as before lost stress-counts seed 1 (classical 0.245 -> 0.299 px, seed 2 0.321 -> 0.282).
SEPARATE_WHERE_UNMIXING_FAILS = True

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
#: measured position (robustly) instead of the vouched ones. 5 before 2026-12-07, set when the
#: classical path vouched for a small particle moving 6 px on its own among 4 on the SSRL 6-2c
#: pair (scale 0.99505, beyond the zone plate's 0.36 % over those 30 eV); a loose agreement no
#: longer vouches for such a departure in a scan of few frames. With 5, the fit took every measured
#: position where 3 or 4 were vouched for, among them tracks 6-7 px off: the pair's 8 orientations,
#: both paths, scale 0.99621-0.99791 and one vouched particle 1.12 px off it (columns flipped,
#: learned); on the vouched ones (3 here), scale 0.99602-0.9975 and every vouched particle within
#: 0.90 px, the classical path's scale 0.99602-0.99607 in 7 of 8 orientations (0.99662-0.99771
#: before). The reduced stress family (21 scenes, both paths): every position the same
MIN_VOUCHED_FOR_FIT = 3


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
    scale = params["scale"].to_numpy(float)
    ratio = scale / scale[0] if np.isfinite(scale[0]) and scale[0] > 0 else np.full(len(scale), np.nan)
    if with_matrix >= 2:
        # where the shifts hold: each particle's reference position, in frame 0
        _set_magnification(located, ratio, rigid[0])
        return shifts
    t = params[["common_dy", "common_dx"]].to_numpy(float)
    # the frames are prepared in parallel whatever ``options.threads`` (which bounds the particles
    # held at once): a frame's filters hold only a few crop-sized arrays (460^2, 2 cores: 1.53 -> 0.82 s)
    t, _ = matrix_motion(od, footprints, t - t[0], threads=max(_threads(options), min(4, os.cpu_count() or 1)))
    x0 = np.array([np.nanmedian(loc.centres - t, axis=0) for loc in located]) - c  # about the optical axis
    _set_magnification(located, ratio, x0 + c)
    return t[:, None, :] + (scale - scale[0])[:, None, None] * x0[None]


def _set_magnification(located, ratio, refs) -> None:
    """Give each particle the frames' magnification (``ratio``: each frame's scale relative to frame 0) about
    its point ``refs[j]`` (frame 0), where its matrix shifts hold, for its separation from the matrix
    (:func:`xanestrack.background.separate_layers`); none where the scale is not known in every frame."""
    ratio = np.asarray(ratio, float)
    ok = np.isfinite(ratio).all() and bool(MATRIX_MAGNIFICATION)
    for loc, ref in zip(located, np.asarray(refs, float)):
        loc.magnification = (ratio, ref) if ok and np.isfinite(ref).all() else None


#: Whether a particle's matrix is separated as it is magnified from frame to frame (the common similarity's
#: scale), not moved by the shift at the particle alone (:func:`_set_magnification`)
MATRIX_MAGNIFICATION = True


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
    """The apodisation by the particle's own shape, grown by the edge images' reach; less its
    neighbours that move otherwise (``loc.beside``, :func:`_refine_beside_neighbours`)."""
    b, _, _ = window_geometry(loc.reach, options.follow)
    weight = shape_weight(loc.shape, grow=2.0 + 2.0 * options.follow.sigma * b, taper=max(3.0, 2.0 * b))
    return weight if loc.beside is None else weight * loc.beside


#: px. A neighbour whose position relative to a particle moves by at least this much over the scan
#: (:func:`_own_motion_px` of the difference of their first-pass positions) is left out of that
#: particle's edge correlation (:func:`_refine_beside_neighbours`); one moving with it is signal. Not lower:
#: two real particles 53 px apart sharing only a 0.5 % magnification (0.27 px apart over the scan) measure
#: 0.43 px on the noisy first pass; left out from half this, the matrix stage's choices changed with the
#: positions and a third particle went 0.10 -> 0.29 px RMS
NEIGHBOUR_MOTION_PX = MIN_OWN_MOTION

#: px. A neighbour's pixels are left out of a particle's window within this distance of its outline
#: swept over its positions relative to the particle (the edge images' blur carries its outline about
#: that far), the weight rising to 1 over ``NEIGHBOUR_TAPER_PX`` beyond; the particle's own shape keeps 1
NEIGHBOUR_REACH_PX = 1.0
NEIGHBOUR_TAPER_PX = 2.0


def _swept_neighbour(loc, other, options) -> np.ndarray | None:
    """bool ``(size, size)`` on ``loc``'s correlation window (:func:`window_geometry`): where ``other``'s
    shape lies, placed at its first-pass positions relative to ``loc``'s, over every frame both have one
    (rounded to whole pixels, so grown by up to half a pixel). None where it never enters the window."""
    _, _, size = window_geometry(loc.reach, options.follow)
    _, _, size_o = window_geometry(other.reach, options.follow)
    d = _positions(other) - _positions(loc)
    d = d[np.isfinite(d).all(axis=1)]
    if d.size == 0:
        return None
    if other.shape is not None:
        ys, xs = np.nonzero(other.shape)
    else:  # not outlined: a disc of its radius
        yy, xx = np.mgrid[:size_o, :size_o] - (size_o - 1) / 2
        ys, xs = np.nonzero(np.hypot(yy, xx) <= other.radius)
    shifts = np.unique(np.round(d + (size - size_o) / 2).astype(int), axis=0)
    y = (ys[None, :] + shifts[:, :1]).ravel()
    x = (xs[None, :] + shifts[:, 1:]).ravel()
    keep = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    if not keep.any():
        return None
    swept = np.zeros((size, size), bool)
    swept[y[keep], x[keep]] = True
    return swept


def _relative_motion_px(loc, other) -> float:
    """How far ``other`` moves relative to ``loc`` over the frames both are measured in (:func:`_own_motion_px` of
    the difference of their first-pass positions), px; NaN with fewer than 3 such frames."""
    rel = _positions(other) - _positions(loc)
    both = loc.measured & other.measured & np.isfinite(rel).all(axis=1)
    return _own_motion_px(rel[both]) if both.sum() >= 3 else float("nan")


def _beside_weight(loc, located, options) -> tuple[np.ndarray | None, tuple]:
    """``(weight, ids)``: the weight on ``loc``'s correlation window leaving out the neighbours among
    ``located`` that move otherwise (by ``NEIGHBOUR_MOTION_PX`` or more relative to it) and enter its
    apodisation disc (:func:`_swept_neighbour`), and their ids; ``(None, ())`` where none does."""
    disc = disc_weight(loc.reach, options.follow)
    swept = np.zeros(disc.shape, bool)
    ids = []
    for other in located:
        if other is loc:
            continue
        moved = _relative_motion_px(loc, other)
        if not np.isfinite(moved) or (not _same_group(loc, other) and moved < NEIGHBOUR_MOTION_PX):
            continue
        s = _swept_neighbour(loc, other, options)
        if s is None or not (disc[s] > 0).any():
            continue
        if loc.shape is not None and (s & loc.shape.astype(bool)).any() and not _same_group(loc, other):
            # it passes over the particle or touches it: its pixels there are the particle's too (kept at weight 1),
            # and taking its surroundings out of the window moved a still particle a mover crossed 0.16 -> 0.23 px
            # (its E50 +0.196 eV against -0.095) and an overlapping pair's vouched frames more than 0.25 px off 10 ->
            # 18; the frames it covers are the overlap flag's. Only neighbours that stay apart are left out
            continue
        swept |= s
        ids.append(other.pid)
    if not ids:
        return None, ()
    far = ndimage.distance_transform_edt(~swept)
    weight = np.clip((far - NEIGHBOUR_REACH_PX) / NEIGHBOUR_TAPER_PX, 0, 1).astype(np.float32)
    if loc.shape is not None:
        weight = np.maximum(weight, loc.shape.astype(np.float32))
    return weight, tuple(ids)


def _same_group(loc, other) -> bool:
    """Whether ``loc`` and ``other`` are members of one group tracked apart (:func:`_split_groups`): touching, and
    each other's only where their own shapes lie (a member's swept shape is left out of the other's window)."""
    if _beside_larger(loc, other) or _beside_larger(other, loc):
        return True  # a smaller touching particle tracked beside the larger one (:func:`_track_smaller`)
    return loc.group is not None and other.group is not None and loc.group[0] == other.group[0]


def _refine_beside_neighbours(located, od, options) -> list[int]:
    """Follow again, with the disc less those neighbours (:func:`_beside_weight`), each particle whose
    apodisation disc holds neighbours that move otherwise; keep that weight for its later passes
    (``loc.beside``, :func:`_own_shape_weight`). Returns the ids of the particles followed again.

    The disc reaches 1.25 radii plus 4 px from the particle's centre: a neighbour closer than that
    (a gap of a few pixels) is correlated with it, and where the two move differently it pulls the
    particle's edge estimate by a share of their relative motion. Real SSRL 6-2c particles with their
    own random walks (0.3 px steps), flat matrix: three particles 4-5 px apart 0.39-0.51 px RMS,
    frames up to 1.5 px off vouched for, while each alone (its neighbour not drawn) 0.08-0.09 px.
    """
    weights = _map(lambda loc: _beside_weight(loc, located, options), located, _threads(options))
    done = []
    for loc, (weight, ids) in zip(located, weights):
        if weight is None or not np.isfinite(_positions(loc)[loc.ref_frame]).all():
            continue
        refined, _, measured = follow_particle(
            od,
            loc.centres,
            loc.reach,
            loc.ref_frame,
            options=options.follow,
            weight=disc_weight(loc.reach, options.follow) * weight,
        )
        loc.followed = np.where(measured[:, None], refined, loc.followed)
        loc.measured = loc.measured | measured
        loc.beside, loc.beside_ids = weight, ids
        done.append(loc.pid)
    return done


#: the passes a particle with a neighbour in its disc's taper is followed again with (:func:`_refine_near_neighbours`)
NEAR_NEIGHBOUR_PASSES = 8


def _taper_neighbours(loc, located, options) -> tuple:
    """The ids of the neighbours among ``located`` that move with ``loc`` (by less than ``NEIGHBOUR_MOTION_PX``
    relative to it) and whose outline, swept over their positions relative to it, enters the taper of its
    apodisation disc (where the disc's weight is between 0 and 1)."""
    disc = disc_weight(loc.reach, options.follow)
    taper = (disc > 0) & (disc < 1)
    ids = []
    for other in located:
        if other is loc:
            continue
        if not _relative_motion_px(loc, other) < NEIGHBOUR_MOTION_PX:  # NaN: too few frames both are measured in
            continue
        s = _swept_neighbour(loc, other, options)
        if s is not None and (s & taper).any():
            ids.append(other.pid)
    return tuple(ids)


def _refine_near_neighbours(located, od, options) -> list[int]:
    """Follow again each particle with a neighbour moving with it in its disc's taper (:func:`_taper_neighbours`;
    not one followed beside neighbours that move otherwise: :func:`_refine_beside_neighbours`), with passes until
    settled (up to :data:`NEAR_NEIGHBOUR_PASSES`) and each frame searched in its whole window
    (:attr:`~xanestrack.follow.FollowOptions.search`). Returns the ids of the particles followed again.

    The taper weighs the neighbour's near rim by where it lies in the window; with the frames apodised as the
    reference it pulls each frame's shift towards the window's centre, the prediction, by a share the next pass
    takes again: two particles 4 px apart moving as one, random common drift of 0.4 px steps, 0.16-0.17 px RMS
    along their axis (alone 0.03-0.04), 0.033 px so followed; a chain of three touching particles whose smaller end
    one slides 2 px across the scan, the other two 0.26 / 0.28 px, 0.04 / 0.12 (the second touches the slider).

    Run where the matrix is not separated (run_pipeline): there these are the edge estimates. Where it is, the
    matrix stage follows most particles again (their shape, the matrix behind them) and this pass changed nothing
    measurable on the stress family (the particles so followed within 0.01 px RMS of their truth as without it,
    ``stress-crowd`` and ``stress-all`` seeds 1-2, both paths), while the shared motion it moved carried a change
    to the faintest particles (``stress-all`` seed 2, classical: a 10-px particle not followed again 0.448 ->
    0.540 px; ``stress-crowd`` seed 2, learned, a 14-px one 0.127 -> 0.147; other rows better by as much)."""
    # not those followed beside neighbours that move otherwise, nor those without a reference position
    asked = [loc for loc in located if loc.beside is None and np.isfinite(_positions(loc)[loc.ref_frame]).all()]
    near = _map(lambda loc: _taper_neighbours(loc, located, options), asked, _threads(options))
    follow = dataclasses.replace(options.follow, search="window", max_passes=NEAR_NEIGHBOUR_PASSES)
    done = []
    for loc, ids in zip(asked, near):
        if not ids:
            continue
        refined, _, measured = follow_particle(od, loc.centres, loc.reach, loc.ref_frame, options=follow)
        loc.followed = np.where(measured[:, None], refined, loc.followed)
        loc.measured = loc.measured | measured
        done.append(loc.pid)
    return done


def _follow_by_shape(loc, od, options) -> bool:
    """Follow a particle again, the correlation apodised by its own shape (updates ``loc``)."""
    if loc.shape is None:
        return False
    weight = _own_shape_weight(loc, options)
    refined, _, measured = follow_particle(
        od, loc.centres, loc.reach, loc.ref_frame, options=options.follow, weight=weight
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
    and separated after all ("matrix") where its own motion, measured again, allows it, or where
    it moves by ``MIN_OWN_MOTION`` or more and the edge does not tell its matrix apart
    (``SEPARATE_WHERE_UNMIXING_FAILS``)."""
    if not (options.shape_apodisation and _follow_by_shape(loc, od, options)):
        return None
    # the first pass is pulled toward the matrix, which hides part of the own motion: it
    # is measured again on the positions followed by the shape (stress-crowd seed 4: a
    # faint 10-px particle, own motion 1.45 px, first pass 0.74, after the shape 0.87;
    # separated, frames vouched for off by more than 1 px 5 -> 0; bench_stress seeds
    # 1-4, both paths: frames > 1 px 161 -> 141)
    own, motion = _followed_own_motion(loc, m)
    if not _separable(own, motion):
        # a motion of MIN_OWN_MOTION or more that does not stand out of its noise: told apart by the
        # edge where that estimate stands out of its own noise and moves the particle (below), else by
        # that motion after all (SEPARATE_WHERE_UNMIXING_FAILS)
        by_motion = SEPARATE_WHERE_UNMIXING_FAILS and motion >= MIN_OWN_MOTION

        def not_unmixed():
            return _separate(loc, m, od, footprints, options, _positions(loc)) if by_motion else "shape"

        if contrast is None:
            return not_unmixed()
        # its own motion standing out of its noise tells that the matrix pulls it (as the
        # release before: unmixed whatever the matrix estimate's noise; at 600 counts such
        # particles gained and lost alike); else the estimate and its effect must tell
        if motion >= OWN_MOTION_SNR * _position_noise_px(own):
            if not _unmix_one(loc, m, od, footprints, options, contrast, min_snr=0.0):
                return "shape"
            loc.unmixed_motion = motion
        elif not _unmix_where_it_tells(loc, m, od, footprints, options, contrast, motion):
            return not_unmixed()
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
    _, _, size = window_geometry(loc.reach, options.follow)
    cache = {}  # the box's frames, cover and first estimate: the same in every pass

    def separated(centres, lo, box, near):
        ratio, ref = loc.magnification or (None, None)
        background, _, _ = separate_layers(od, centres, m, lo, box, size, near, cache=cache, ratio=ratio, ref=ref)
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
    _, _, size = window_geometry(loc.reach, options.follow)
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
            od, centres, loc.reach, loc.ref_frame, options=options.follow, weight=weight, background=background
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
        loc.reach,
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


#: px: a particle's mask within this much of its aligned window's border is taken as cut by it
#: (:func:`_window_cut_note`); the window's margin is 0.3 r + 6 px (:func:`xanestrack.register.window_half`)
WINDOW_CUT_BAND_PX = 1
#: :func:`_window_cut_note`: the share of its frames used whose own mask reaches the window's band above which,
#: in at least :data:`WINDOW_CUT_FRAMES` frames, the particle is said to be cut where its mask over them does not
#: reach it. One frame alone is not enough: the real SSRL pair (2 frames) has a particle whose frame-0 mask is
#: another object's, reaching its window's border (its size is not given for it, ``ParticleResult.size_radius``)
WINDOW_CUT_SHARE = 0.25
WINDOW_CUT_FRAMES = 2
#: how a particle's note that its window cuts it begins (:func:`_window_cut_note`)
WINDOW_CUT_NOTE = "cut by its window"


def _window_cut_note(masks, use, mask, energies) -> str:
    """A particle's note that its mask reaches its aligned window's border: ``""`` where it does not.

    Parameters
    ----------
    masks : ndarray (n_frames, h, w)
        Each frame's soft mask on the aligned grid (:func:`_aligned_masks`).
    use : ndarray (n_frames,) bool
        The frames its XANES uses (:func:`_chemistry_frames`).
    mask : ndarray (h, w) bool
        Its mask over them, the pixels its maps and means cover.
    energies : ndarray (n_frames,)

    Returns
    -------
    str
        The note, where its mask over the frames used, or its own mask in more than :data:`WINDOW_CUT_SHARE` of
        them (and :data:`WINDOW_CUT_FRAMES` or more), lies within :data:`WINDOW_CUT_BAND_PX` of the window's border: the particle reaches past its window
        (larger than its detection, or its window off its position), and its radius, maps, mean spectrum, mean E50
        and fractions are of the part inside. A particle entering the field after a 20-px stage jump had its
        window 20 px off-centre (:func:`_aligned_masks`, since mended) and was read 9.47 px for 11.89, its mean E50
        +0.23 eV and its LiNiO2 fraction 0.597 for 0.500, its pixels unflagged and nothing said.
    """
    if not np.asarray(use).any():
        return ""
    b = WINDOW_CUT_BAND_PX + 1
    band = np.ones(np.asarray(mask).shape, bool)
    band[b:-b, b:-b] = False
    hits = ((np.asarray(masks)[use] >= 0.5) & band).any(axis=(1, 2))
    whole = bool((np.asarray(mask, bool) & band).any())
    if not whole and (hits.mean() <= WINDOW_CUT_SHARE or hits.sum() < WINDOW_CUT_FRAMES):
        return ""
    at = np.zeros(len(energies), bool)
    at[np.flatnonzero(use)[hits]] = True
    own = f"its own mask in {count(int(hits.sum()), 'frame')} of {int(np.count_nonzero(use))} used"
    if hits.any():
        own += f" ({_frame_runs_text(at, energies)})"
    return (
        f"{WINDOW_CUT_NOTE}: {'its mask over its frames used and ' if whole else ''}{own} reach within "
        f"{WINDOW_CUT_BAND_PX} px of the window's border; the particle reaches past its window, and its radius, maps, "
        "mean spectrum, mean E50 and fractions are of the part inside it"
    )


def _aligned_masks(loc: _Located, v: VouchedPositions):
    """The particle's aligned grid and its masks on it: ``(origin, shifts, masks)``.

    ``origin`` is the frame-0 pixel of the grid's ``[0, 0]`` (the window around its frame-0
    position, measured or filled from the common motion), ``shifts`` ``(n_frames, 2)`` its
    displacement from frame 0, ``masks`` each frame's soft mask resampled onto the grid
    (:func:`resample_masks`).

    The grid's pixel ``[i, j]`` is frame ``k``'s ``origin + (i, j) + shifts[k]``, so the particle (at
    ``positions[k]``) lies at ``positions[0] - origin`` in every frame: the window is centred on the
    frame-0 position the shifts are measured from. It was placed at the first located frame's position
    while the shifts ran from frame 0's: a particle first found after the stage moved (entering the
    field) sat that motion off the window's centre, and past the window's margin (0.3 r + 6 px) was cut
    (the probe's r-12 particle after a 20-px stage jump: radius 11.89 -> 9.47 px, mean E50 +0.23 eV,
    its LiNiO2 fraction 0.500 -> 0.597, unsaid). Particles located in frame 0 are unchanged.
    """
    seg, half = loc.seg, loc.half
    positions = v.positions
    size = 2 * half + 1
    # the aligned grid is frame-0's (positions are filled for every frame, or all NaN)
    shifts = positions - positions[0]
    if v.located.any() and np.isfinite(positions[0]).all():
        origin = np.round(positions[0]).astype(int) - half
    elif v.located.any():  # not filled in frame 0 (not met: filled for every frame): its first located frame's
        ref = int(np.flatnonzero(v.located)[0])
        origin = np.round(positions[ref]).astype(int) - half
    else:
        origin = seg.origins[0]
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
        f"another tracked particle lies over it in {count(n, 'frame')} ({'; '.join(parts)}): its spectra there are "
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
        # a smaller touching particle tracked beside the larger one whose mask takes it in is not a part of it
        hosts = [j for j in hosts if shares[i, j] > share and not _beside_larger(located[i], located[j])]
        if hosts:
            j = max(hosts, key=lambda h: shares[i, h])
            gone[int(i)] = (int(j), float(shares[i, j]))
    return gone


def _beside_larger(loc, other) -> bool:
    """Whether ``loc`` is a smaller touching particle tracked beside ``other`` (:func:`_track_smaller`)."""
    return loc.larger is not None and loc.larger[0] == other.pid


def _inside_note(inside: dict, located: list) -> str:
    """The run note on the tracks :func:`_inside_other_particles` left out, naming each and the particle it lies in."""
    parts = [
        f"track {located[i].pid}, {100 * sh:.0f} % of its mask inside particle {located[j].pid}"
        for i, (j, sh) in sorted(inside.items(), key=lambda kv: located[kv[0]].pid)
    ]
    return (
        f"{count(len(inside), 'track')} lay inside another tracked particle's mask in the frames both were found in "
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


#: bytes: after finishing a particle whose aligned stack is this large, the memory its XANES freed is handed back
#: (:func:`xanestrack.io.checks.release_freed_memory`, 2-6 ms): glibc kept it, and a 1024^2 scan's 12 large
#: particles' results were held on top of it
TRIM_AFTER_BYTES = 1 << 20


def _largest_first(fn, located, threads: int) -> list:
    """``[fn(j) for j in range(len(located))]``, the particles with the largest windows first (the results in
    ``located``'s order). A particle's XANES works on every pixel of its window at once, several times its aligned
    stack for a while (a particle of radius 113 px, its window 307 px, 143 frames: 504 MiB traced at its peak); the
    largest analysed first, that peak comes before the others' results are held, not on top of them."""
    order = _finish_order(located)
    out = [None] * len(located)
    for j, r in zip(order, _map(fn, order, threads)):
        out[j] = r
    return out


def _finish_order(located) -> list:
    """The indices of ``located`` in the order :func:`_largest_first` finishes them: the largest windows first."""
    return sorted(range(len(located)), key=lambda j: -int(located[j].half))


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
    illumination=None,
    grid=None,
    let_go=False,
):
    """A particle's :class:`ParticleResult`: aligned, its mask, its XANES (``(result, centres of mass, norm)``).

    ``exclude``: frames left out of every particle's XANES; ``overlaps``: ``{other particle: frames}`` where
    another tracked particle lies over this one (:func:`_overlaps`, flagged ``overlap``), named in its notes;
    ``neighbours``: the pixels of its aligned window where other tracked particles lie (:func:`_neighbour_pixels`),
    left out of the ring of its local background; ``gaps``: the wide patches of input pixels without a value
    (``(frame, pixels)``, :func:`_flag_filled_pixels`), whose pixels are left out of its XANES's check of the
    frames' order (``filled`` of :func:`xanestrack.xanes.analyse_particle`); ``illumination``: each frame's
    illumination off its flat's (:func:`_illumination_field`), taken out of its aligned frames. ``grid``: its
    aligned grid and masks (``(origin, shifts, masks)`` of :func:`_aligned_masks`) where they were made before for
    the same positions; ``let_go``: its windows' masks (``loc.seg``'s) are let go once its aligned masks are made
    from them, before its XANES allocates (a track measured in no frame keeps them: :func:`_unmeasured` tells it by
    them).
    """
    n = od.shape[0]
    pid, com = loc.pid, loc.seg.com
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
    if loc.group is not None:
        notes.append(_group_note(loc.group))
    if loc.larger is not None:
        larger, times, neck = loc.larger
        joined = f"at a neck {neck:.2f} of its width" if np.isfinite(neck) else "at a narrow neck"
        notes.append(
            f"{SMALLER_NOTE} (particle {larger}, {times:.0f} times its area at half height, joined {joined}): the "
            "detector kept the two whole as one; followed, outlined (its masks cut from the larger one's) and analysed "
            "on its own"
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
    if loc.mask_empty is not None:
        notes.append(
            f"outlined by the classical segmenter: the learned one's mask of it was empty in {loc.mask_empty[0]} "
            f"frames (the classical one's in {loc.mask_empty[1]}), where its positions would have rested on the edge "
            "estimate alone"
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
            f"{count(int(by_motion.sum()), 'frame')} vouched for by the scan's motion where the centre of mass did not (its "
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
        notes.append(f"{count(int(disagree.sum()), 'frame')} not vouched for: {why}")
    overlapped = (np.asarray(v.flags).astype(np.uint16) & FRAME_FLAGS["overlap"]) > 0
    if overlaps:
        notes.append(_overlap_note(overlaps, energies))
    positions = v.positions
    size = 2 * half + 1
    origin, shifts, amasks = _aligned_masks(loc, v) if grid is None else grid
    if let_go and np.isfinite(positions).any():
        # the scan's particles do not hold their windows' masks and their aligned masks at once, nor this one's
        # beside its XANES's work (12 particles of radius 10-113 px at 1024^2: 320 MiB; the largest's 64 MiB)
        loc.seg = dataclasses.replace(loc.seg, masks=None, outside=None)
    aligned = resample_windows(od, shifts, origin, (size, size), order=options.interpolation_order)
    if illumination is not None:  # the frames as the chemistry takes them (and results.h5's aligned stack)
        aligned -= illumination.windows(origin, shifts, size)
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
    cut_note = _window_cut_note(amasks, use, mask, energies)  # a particle reaching past its window: said
    if cut_note:
        notes.append(cut_note)
    n_pieces, n_cut, pieces_note = _pieces_note(loc.track, energies, mask, pid)
    if pieces_note:
        notes.append(pieces_note)
    if n_pieces < 2:
        # a smaller touching particle its outline takes in, beyond a neck: left out of its mask (its chemistry alone)
        mask, left_out, left_out_note = neighbour_lobes_left_out(
            aligned, mask, v.flags, origin, neighbours, options.detect.min_radius, loc.smaller
        )
        if left_out_note:
            notes.append(left_out_note)
            # and out of its local background's ring (and its size's), as the tracked particles beside it are
            neighbours = left_out if neighbours is None else np.asarray(neighbours, bool) | left_out
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
        com,
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
    # (the frames so cut: those whose outline has lobes, never cut, have 0 and a note of their own, _lobes_run_note)
    ids = [
        p.particle
        for p in particles
        if int(getattr(p, "touching_pieces", 0) or 0) >= 2 and int(getattr(p, "touching_pieces_frames", 0) or 0) > 0
    ]
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
    let_go_frames: bool = False,
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
    let_go_frames : bool
        Let the stack's frames go once every particle is finished (``stack.od`` is None after the call; the frames
        ``options.fuse`` asks for are kept), before the passes over every particle's results: for a caller that
        reads the stack for this run alone (``xanestrack run``: 572 MiB of frames at 1024^2, held beside every
        particle's results). Not with ``options.fuse == "all"``, which needs every frame at the end.

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
    illumination = _illumination_field(stack, od.shape)
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
            f"image (no particle measured there): {frame_list(blank, energies)}"
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
    if options.reference_particle is not None:  # none tracked too (that run ended without a word: probe r52 fuzz)
        ids = sorted(int(v) for v in tracks["particle"].unique()) if len(tracks) else []
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
    groups = []
    if options.split_groups and located:
        # touching particles of alike size the detector kept whole as one track: tracked apart
        t_g = time.perf_counter()
        located, groups = _split_groups(located, od, seg, options, fallback, unlit)
        timings["groups"] = time.perf_counter() - t_g
        if groups:
            notes.append(_groups_run_note(groups))
            rejected_tracks = _pieces_to_members(rejected_tracks, located, groups)
    if options.beside_neighbours and len(located) >= 2:
        t_b = time.perf_counter()
        _refine_beside_neighbours(located, od, options)
        timings["beside"] = time.perf_counter() - t_b
    texture = float("inf")
    if options.separate_matrix and located:
        texture = matrix_texture_ratio(
            od,
            np.stack([_positions(loc) for loc in located]),
            [loc.radius for loc in located],
            without_image=blank,
        )
        if texture < MATRIX_MIN_TEXTURE:
            notes.append(
                f"the matrix behind the particles is too faintly textured to pull them (its texture {texture:.4f} of the "
                f"particles' contrast, below {MATRIX_MIN_TEXTURE:g}): not separated from it"
            )
    if len(located) >= 2 and not (options.separate_matrix and texture >= MATRIX_MIN_TEXTURE):
        # the first pass's positions are the edge estimates (no matrix stage follows them again): a neighbour in a
        # disc's taper no longer pulls them towards the prediction
        t_n = time.perf_counter()
        _refine_near_neighbours(located, od, options)
        timings["near"] = time.perf_counter() - t_n
    if options.separate_matrix and located and texture >= MATRIX_MIN_TEXTURE:
        t_m = time.perf_counter()
        tell("matrix", 0, 1)
        refined_ids, unmixed_ids, shaped_ids = _refine_on_matrix(located, od, energies, options)
        tell("matrix", 1, 1)
        timings["matrix"] = time.perf_counter() - t_m
        if refined_ids:
            notes.append(
                f"{count(len(refined_ids), 'particle')} moving on their own followed again with the matrix behind them subtracted"
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
                f"{count(len(shaped_ids), 'particle')} followed again apodised by their own shape (moving on their own, by too "
                "little to separate them from the matrix)"
            )
    vouched = []
    for loc in located:  # one step more for the smoothing, the motion's voucher and the overlaps below
        vouched.append(_vouch(loc, common, od, options))
        tell("vouch", len(vouched), len(located) + 1)
    if "common_ambiguous" in tracks and tracks["common_ambiguous"].fillna(False).astype(bool).any():
        amb = np.unique(tracks.loc[tracks["common_ambiguous"].fillna(False).astype(bool), "frame"].to_numpy(int))
        notes.append(
            f"the common step between key frames could not be told in {count(len(amb), 'frame')} "
            f"({frame_list(amb, energies)}): a step from frame to frame matched as well at another shift, and the "
            "key frames allow both (alike particles one spacing apart with no matrix texture to tell them, or faint "
            "frames); no position is vouched for there (flagged "
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
            f"{count(len(gone), 'track')} ({', '.join(map(str, gone))}) followed onto a particle another track follows: "
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
    present = {loc.pid for loc in located}
    for loc in located:  # a smaller touching particle tracked beside it and left out since is not named
        loc.smaller = tuple(i for i in loc.smaller if i in present)
    if vouched:
        tell("vouch", len(vouched) + 1, len(vouched) + 1)
    done = [0]
    lock = threading.Lock()
    grids = {}  # each particle's aligned grid and masks, for its XANES analysed again (finish_again)

    def finish(j):
        loc = located[j]
        out = _finish_particle(
            loc,
            vouched[j],
            od,
            energies,
            options,
            references,
            overlaps=overlaps[j],
            neighbours=neighbours[j],
            gaps=gaps,
            illumination=illumination,
            let_go=True,
        )
        pr = out[0]
        grids[j] = (pr.origin, pr.shifts, pr.masks)
        if pr.aligned is not None and pr.aligned.nbytes >= TRIM_AFTER_BYTES:
            # what its XANES freed, handed back before the next particle's allocates beside its results (a few ms)
            release_freed_memory()
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
                illumination=illumination,
                grid=grids[j],
            )
            if progress is not None:
                with lock:
                    again[0] += 1
                    progress("again", again[0], len(located))
            return out

        return _largest_first(one, located, threads)

    # the windows' masks of the particles waiting to be finished, packed (lossless: their zeros take a bit each): they
    # are held beside the largest particle's XANES (12 particles of radius 10-113 px at 1024^2: 203 MiB float32)
    largest = _finish_order(located)[0] if located else -1  # the first finished: its masks are used at once
    for j, loc in enumerate(located):
        if j != largest and loc.seg is not None and isinstance(loc.seg.masks, np.ndarray):
            loc.seg = dataclasses.replace(loc.seg, masks=PackedMasks(loc.seg.masks))
    # what locating freed, handed back before the largest particle's XANES allocates (glibc keeps freed blocks
    # below its growing mmap threshold: the 1024^2 large-particle scene's RSS 1395 -> ~1300 MiB here)
    release_freed_memory()
    finished = _largest_first(finish, located, threads)
    resolution = _resolution_change([f[0] for f in finished], len(energies), energies)
    resolution_blur = None
    if resolution is not None and resolution.change >= RESOLUTION_CHANGE_PX:
        if options.match_resolution:
            resolution_blur = _resolution_blur(resolution)
    blurred_frames = _blurred_frames(resolution) if resolution is not None else np.zeros(0, int)
    blurred = np.isin(np.arange(len(energies)), blurred_frames) if blurred_frames.size else None
    if resolution_blur is not None or blurred is not None:
        finished = finish_again()
    seen = None  # each particle's first frame seen (_first_seen), told before the frames are let go
    fuse_frames = None if options.fuse == "all" else [0, od.shape[0] - 1]
    kept_frames = [] if options.fuse == "none" else fuse_frames  # what is looked at once the frames are let go
    if (
        let_go_frames
        and fuse_frames is not None
        and recalibrate is None
        and not any(_faint_track(loc, options) for loc in located)
    ):
        # no stage looks at the frames again (no calibration finishes the particles again) and none of the
        # particles will be left out as a faint track without an edge (the others' motion, which _first_seen
        # places a particle by, is then that of these): told now, the frames let go before the passes over every
        # particle's results (12 particles of radius 10-113 px at 1024^2: the frames' 572 MiB beside their 510)
        results = [f[0] for f in finished]
        seen = dict(zip((p.particle for p in results), _first_seen_all(results, od)))
        od = _let_go(stack, od, kept_frames)
        del results
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
            f"{count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}) "
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
    # touching particles the detector kept whole as one and never cut in a key frame:
    # the lobes of the outline said (outlines.outline_lobes)
    particles = _with_outline_lobes(particles, options.detect.min_radius)
    particles = _with_group_motion(particles, groups)
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

    # a particle's leading frames not vouched for with next to nothing absorbing where it lies later are not
    # measured: it was not there (deposited mid-scan) or not measurable. They counted as measured: a particle
    # appearing at frame 30 was given 11.94 px of own motion (truly none) from its frame-0 position of nothing, and
    # one growing from frame 5 pulled a 5.8 % magnification into the common motion (the default scene, seed 5).
    # Told here, the last look at the frames but the fused ends', where the frames were not let go above
    if seen is None:
        first_seen = _first_seen_all(particles, od)
        if let_go_frames and fuse_frames is not None:
            od = _let_go(stack, od, kept_frames)
    else:
        first_seen = [seen[p.particle] for p in particles]
    release_freed_memory()  # what the particles' XANES freed, before the pass over all of them allocates
    particles, stray_note, _ = flag_stray_light(
        particles, energies, at_edge, background=_particles_background(particles, energies)
    )
    notes += [stray_note] if stray_note and measured else []
    unmeasured_note = _frames_without_particles(particles, energies)
    if unmeasured_note:
        notes.append(unmeasured_note)
    smoothing_note = _smoothing_note(particles, options.xanes_smoothing)
    if smoothing_note:
        notes.append(smoothing_note)
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
                f"{count(added, 'frame')} not vouched for included; each particle's own motion in the summary counts "
                "only frames vouched for"
            )
    fit["reliable"] = np.concatenate(vouched) if particles else np.zeros(0, bool)
    measured = [((p.frame_flags & FRAME_FLAGS["interpolated"]) == 0) & f for p, f in zip(particles, finite)]
    # the leading frames where it was not yet seen (first_seen, above) are not measured
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
    origin_note = _origin_unvouched_note(particles, first_seen, energies)
    if origin_note:
        notes.append(origin_note)
    ref_note = _reference_note(motion, options.reference_particle, len(energies))
    if ref_note:
        notes.append(ref_note)
    if len(particles) >= 3 and len(energies) >= 3:
        notes += _field_motion_notes(_own_motion_vouched(motion, summary_frames), energies, options)
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
    rot_note = _rotation_not_fitted_note(similarity, energies) if options.rotation else ""
    if rot_note:
        notes.append(rot_note)
    if len(table):
        table = table.merge(motion.drop(columns=["y", "x"]), on=["particle", "frame"], how="left")
        sim = similarity[["frame", "common_dy", "common_dx", "scale"]].rename(columns={"scale": "common_scale"})
        if options.rotation:
            # the fitted turn (--rotation) was in results.h5 alone; positive counter-clockwise as the image is shown;
            # NaN in the frames whose turn was not fitted (it read 0.000, no turn, with two particles)
            sim["common_rotation_deg"] = np.degrees(rotation_reported(similarity))
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
        fused = fuse_particles(od, particles, common, frames=fuse_frames)
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
            _lobes_run_note(particles),
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
            _not_convex_note(rej, particles, n_examined),
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
        similarity=_similarity_reported(similarity),
        chemistry=chemistry,
        edge_widths=edge_width_table,
        normalisation_bias=norm_bias,
    )


def _similarity_reported(similarity):
    """The common similarity as the result holds it: ``rotation_rad`` NaN in the frames where ``--rotation`` asked for
    a turn and none was fitted (:func:`xanestrack.motion.rotation_reported`), not the 0 the rigid positions applied
    there (results.h5's similarity read "no turn" where none was measured). Unchanged without ``--rotation``."""
    if similarity is None or "rotation_fitted" not in similarity.attrs:
        return similarity
    out = similarity.copy()
    out["rotation_rad"] = rotation_reported(similarity)
    return out


def _rotation_not_fitted_note(similarity, energies) -> str:
    """The run note where ``--rotation`` asked for a turn of the field and some frames had too few particles to fit
    one (three or more): those frames' common_rotation_deg is NaN, not measured (it read 0.000 with two particles,
    as if the field had not turned; it had turned 1.5 degrees)."""
    if similarity is None or "rotation_fitted" not in similarity.attrs:
        return ""
    fitted = np.asarray(similarity.attrs["rotation_fitted"], bool)
    frames = np.asarray(similarity["frame"], int)[~fitted]
    if not frames.size:
        return ""
    few = int(np.asarray(similarity["n_particles"], int)[~fitted].max())
    where = (
        "in any frame"
        if frames.size == fitted.size
        else f"in {count(frames.size, 'frame')} of {fitted.size} ({frame_list(frames, energies)})"
    )
    return (
        f"--rotation: the field's turn was not fitted {where}: a rotation needs three particles or more kept in the "
        f"frame ({count(few, 'particle')} measured there at most); common_rotation_deg is NaN there (not measured, "
        "not 0) and the common motion there is a translation (and scale), so a turn of the field is left in the "
        "particles' own motions"
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
        f"no particle measured in {frames.size} frame{'s' if frames.size > 1 else ''}: {frame_list(frames, energies)}; every particle's "
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
    # --rotation asked for and not fitted (fewer than three particles): common_rotation_deg NaN, not 0
    "--rotation: the field's turn was not fitted",
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
        f"{count(len(still), 'object')} left out that stayed put on the detector while the sample moved under them (dust on "
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


class _KeptFrames:
    """Some frames of a stack, the rest let go: ``[k]`` (a kept frame ``k``) and ``shape`` as the stack's
    (:func:`run_pipeline`'s ``let_go_frames``)."""

    def __init__(self, od, frames):
        self.shape = tuple(od.shape)
        self._frames = {int(k): np.array(od[k]) for k in frames}

    def __getitem__(self, k):
        return self._frames[int(k)]


def _let_go(stack, od, frames) -> _KeptFrames:
    """The ``frames`` of ``od`` kept, the rest let go with the stack's (``stack.od`` set to None): what
    :func:`run_pipeline` looks at after, where it may let the frames go."""
    kept = _KeptFrames(od, frames)
    object.__setattr__(stack, "od", None)
    return kept


def _first_seen_all(particles, od) -> list:
    """:func:`_first_seen` of each of ``particles``, placed by the others' motion."""
    return [_first_seen(p, [q.positions for q in particles if q is not p], od) for p in particles]


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


def _origin_unvouched_note(particles, first_seen, energies) -> str:
    """A run note naming the particles present from the first frame whose position there is not vouched for: their
    displacements (``dy, dx``, ``rigid_*``, ``nonrigid_*``, ``rel_*``) are from it, so each carries that frame's
    position error as one constant offset; ``""`` where there are none.

    Measured from it (the stress scenes' faint first frames: reduced stress-all seeds 1-2, every row vouched for
    0.48-0.80 px off the true displacement, median, where from the particle's first frame vouched for 0.26-0.48 px),
    unsaid. Moving the origin to that frame (as for a particle entering late) was tried and undone: the particles'
    own motions then start in different frames, which the field's rotation and strain fits and the relative motion
    take together (a 0.6 degree turn's note lost with 2 of 8 particles so moved). Differences between frames vouched
    for do not carry it."""
    from .result import UNVOUCHED_FLAGS

    rows = []
    for p, k in zip(particles, first_seen):
        flags = np.asarray(p.frame_flags)
        if k != 0 or not flags.size or not flags[0] & UNVOUCHED_FLAGS:
            continue
        vouched = np.flatnonzero((flags & UNVOUCHED_FLAGS) == 0)
        rows.append((int(p.particle), int(vouched[0]) if vouched.size else None))
    if not rows:
        return ""
    named = ", ".join(
        f"{pid} (first vouched for in frame {k})" if k is not None else f"{pid} (in none)" for pid, k in rows[:8]
    )
    return (
        f"the displacements of {count(len(rows), 'particle')} ({named}{' ...' if len(rows) > 8 else ''}) are measured "
        f"from frame 0 ({energies[0]:.1f} eV), where their positions are not vouched for: every displacement of theirs "
        "(dy, dx, rigid_*, nonrigid_*, rel_*) carries that frame's position error as one constant offset (on the "
        "stress scenes' faint first frames 0.2-0.5 px); the change between two frames vouched for does not"
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
            f"{count(len(plain), 'object')} seen in only part of the scan ({lo if lo == hi else f'{lo}-{hi}'} of the "
            f"{n_examined} frames examined) left out, at (y, x) {_where(plain[['y', 'x']].to_numpy())}: particles "
            "entering or leaving the field, faint particles, or debris"
        )
    if len(odd):
        seen = ", ".join(
            f"({y:.0f}, {x:.0f}) detected in {int(n)} and outlined as one irregular body in {int(m)}"
            for y, x, n, m in odd[["y", "x", "n_frames", "n_irregular"]].to_numpy(float)
        )
        parts.append(
            f"{count(len(odd), 'object')} detected as a particle in too few of the {n_examined} frames examined and, "
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
        f"{count(len(seen), 'object')} left out as larger than the largest particle radius ({max_radius:.4g} px) in every "
        f"frame they were seen (radius {_span(radii)} px, at (y, x) {_where([o[:2] for o in seen])}): if "
        f"they are particles, {RERUN} --max-radius {suggest}"
    )


def _not_convex_note(rejected_dets, particles, n_examined: int) -> str | None:
    """The note on objects of a particle's size left out as not convex (an outline neither cut at a neck nor solid
    enough to be kept whole: ``detect.KEEP_SOLIDITY``) in at least :data:`SMALL_SEEN_SHARE` of the frames examined,
    none of them where a tracked particle lies; None where there are none. Such an object is a particle lost (a
    crescent, a broken particle, touching particles the necks rule could not cut apart), not debris: a probe's
    crescent (equivalent radius 20.8 px, solidity 0.58-0.64) was left out in 9 of 9 frames by both detectors,
    named only in rejected.csv."""
    if not len(rejected_dets) or "reason" not in rejected_dets or not n_examined:
        return None
    need = max(2, int(np.ceil(SMALL_SEEN_SHARE * n_examined)))
    tracked = [
        (np.nanmedian(p.positions, axis=0), float(p.radius)) for p in particles if np.isfinite(p.positions).any()
    ]
    seen = [
        o
        for o in _objects(rejected_dets[rejected_dets["reason"] == "not_convex"])
        if len(o[3]) >= need and not any(np.hypot(o[0] - c[0], o[1] - c[1]) < max(o[2], r) for c, r in tracked)
    ]
    if not seen:
        return None
    # each one where its outline was largest (the clearest: in frame 0, a pre-edge frame, the outline may be faint and
    # 13 px off), the frame named (it moves with the stage; the tables give frame-0 places)
    nc = rejected_dets[rejected_dets["reason"] == "not_convex"]
    first = []
    for o in seen:
        row = nc.iloc[int(np.argmin(np.hypot(nc["y"] - o[0], nc["x"] - o[1]) + np.abs(nc["radius"] - o[2])))]
        first.append(f"({o[0]:.0f}, {o[1]:.0f}) in frame {int(row['frame'])}")
    lo, hi = min(len(o[3]) for o in seen), max(len(o[3]) for o in seen)
    return (
        f"{count(len(seen), 'object')} of a particle's size left out as not convex in {lo if lo == hi else f'{lo}-{hi}'} "
        f"of the {n_examined} frames examined, never tracked (radius {_span([o[2] for o in seen])} px, where largest at "
        f"(y, x) {', '.join(first[:6])}{' ...' if len(first) > 6 else ''}): an irregular particle (a crescent, a broken one) or touching particles "
        "the detector could not cut apart, lost; rejected.csv lists them (not_convex)"
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
        f"{count(len(seen), 'object')} left out as smaller than the smallest particle radius ({min_radius:g} px) in every frame "
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
    # a thin band of pixels on the boundary of two phases, their mix, clustered on its own is the resolution
    # mixing them, not a phase: a window of few energies made the blurred core/shell front of a two-phase
    # scene a "distinct" third phase (4.5 x the spread, 124 pixels all within 1 px of the true front, unsaid)
    mixed = phases.interface_clusters(
        spectra, labels, ps, energies_ev=ec, energy_window=window, min_separation=CLUSTER_MIN_SEPARATION
    )
    sep, pair = _cluster_separation(spectra, labels, means, ec, window, exclude=[m.cluster for m in mixed])
    settings["separation"] = sep if np.isfinite(sep) else None
    settings["interface_clusters"] = [int(m.cluster) for m in mixed]
    settings["note"] = _cluster_note(sep, pair, window, [particles[i] for i in usable], mixed)
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


def _cluster_separation(spectra, labels, means, energies, window, exclude=()):
    """``(smallest separation, (a, b))`` over the pairs of clusters: the distance of their centroids over
    the pooled sd of their pixels projected on the line joining them (the spectra over the clustering
    window; :func:`xanestrack.chemistry.phases.pair_separation`); ``(inf, None)`` with fewer than two
    clusters holding pixels. The clusters in ``exclude`` (the interface of two others,
    :func:`xanestrack.chemistry.phases.interface_clusters`) are not phases and enter no pair."""
    from .chemistry.phases import pair_separation

    rows = np.ones(energies.size, bool) if window is None else (energies >= window[0]) & (energies <= window[1])
    x = spectra[rows]
    best, pair = np.inf, None
    k = means.shape[0]
    for a in range(k):
        for b in range(a + 1, k):
            ia, ib = labels == a, labels == b
            if ia.sum() < 2 or ib.sum() < 2 or a in exclude or b in exclude:
                continue
            sep = pair_separation(x, ia, ib)
            if sep == 0.0:
                return 0.0, (a, b)
            if sep < best:
                best, pair = sep, (a, b)
    return float(best), pair


def _cluster_note(sep, pair, window, particles, mixed=()) -> str:
    """What the clusters cannot be (``sep, pair``: :func:`_cluster_separation`): phases, where two of them
    are one spread of pixels cut in two
    (k-means splits any cloud into k: a one-phase scene gave 2 and 5 "phases" 0.1 eV apart, nothing said),
    where one is the interface of two others (``mixed``: :func:`xanestrack.chemistry.phases.interface_clusters`),
    or where the window holds no edge (a post-edge window: a NiO particle 65/35)."""
    out = []
    for m in mixed:
        out.append(
            f"cluster {m.cluster} is not a phase: its {count(m.n_pixels, 'pixel')} (particle"
            f"{'s' if len(m.particles) > 1 else ''} {', '.join(map(str, m.particles))}) lie on the boundary of "
            f"clusters {m.between[0]} and {m.between[1]} ({m.boundary_share:.0%} in a band at most "
            f"{INTERFACE_MAX_WIDTH_PX - 1:g} px across between the two) and their spectra are mixes of those two "
            f"({m.mix:.0%} of cluster {m.between[1]}; what the mix leaves, {m.misfit:.1f} x its noise): the "
            "resolution mixing two phases at their front, not counted among the phases (the separation is of the "
            "others): fewer phases than clusters, try --clusters with fewer"
        )
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
