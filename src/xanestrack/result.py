"""The result model: what the pipeline produces, what ``results.h5`` holds, what the report reads.

:class:`PipelineResult` (one scan) holds a :class:`ParticleResult` per tracked particle.
:func:`xanestrack.pipeline.run_pipeline` returns one; :func:`xanestrack.results.write_results`
writes it and :func:`xanestrack.results.read_results` gives the same object back, so the CLI,
the report, ``series`` and the evaluation all read one shape. :func:`particle_summary` is the
one per-particle table (mean edge energy, largest non-rigid motion, flagged frames...).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineOptions

__all__ = [
    "FRAME_FLAGS",
    "UNVOUCHED_FLAGS",
    "flag_names",
    "ParticleResult",
    "PipelineResult",
    "particle_summary",
    "fraction_pixels",
    "spread_beyond_noise",
    "e50_noise_and_spread",
]

#: per-particle, per-frame flags (bits)
FRAME_FLAGS = {
    "undetected": 1,  # not detected as an isolated particle in this frame (position predicted)
    "no_mask": 2,  # segmentation found no particle in the ROI
    "out_of_view": 4,  # the particle touches or crosses the frame border
    "area_outlier": 8,  # mask area far from the particle's median (merged with a neighbour?)
    "interpolated": 16,  # position not measured: filled from the common (rigid) motion
    "position_outlier": 32,  # measured position inconsistent with its neighbours in time
    "disagree": 64,  # centre of mass and the independent edge correlation disagree (or no second estimate)
    "by_motion": 128,  # vouched for by the scan's motion where its centre of mass did not (register.vouch_by_motion)
    "overlap": 256,  # another tracked particle lies over it (position vouched for; left out of its XANES)
}


#: flags under which a position is not vouched for (interpolated | position_outlier | disagree)
UNVOUCHED_FLAGS = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"] | FRAME_FLAGS["disagree"]

#: flags of the frames left out of a particle's size (:attr:`ParticleResult.size_radius`): its position not
#: vouched for, or its mask not whole (none, cut by the frame's border, merged with or lying under another)
SIZE_LEFT_OUT_FLAGS = (
    UNVOUCHED_FLAGS
    | FRAME_FLAGS["no_mask"]
    | FRAME_FLAGS["out_of_view"]
    | FRAME_FLAGS["area_outlier"]
    | FRAME_FLAGS["overlap"]
)

#: where a particle's outline is drawn for its size (:attr:`ParticleResult.size_radius`): the share of its OD level
#: above the local background at which its edge's foot is taken. Measured on the probe's reduced scenes (256 px,
#: 60 energies, 4 particles) against truth's equivalent radius: 0.5 (the half-height contour) read 8-10 % small on
#: the stress presets' large particles (stress-all s1 p0 34.16 px, truth 37.76) and 1.6-4.8 % small on default
#: seeds 1-2 and hard seed 1, since a particle's thickness tapers to its rim (the stress presets' ellipsoids' chords
#: fall to 0 there) and the blur moves a threshold's contour inward; 0.2 read 1.9-3.6 % small on the stress
#: presets' large particles (truth 29-43 px) and within 0.05 px on the default/hard ones; 0.1 reads 0.5-1.9 % small
#: on those large particles and 0.14-0.23 px large on the default/hard ones (whose sharp rims the soft masks gave
#: within 0.08 px). Smaller stress particles: 1.5 % small to 2.4 % large, one (stress-crowd s2, 10.40 px) 5.9 % large.
SIZE_FOOT_SHARE = 0.1
#: px: the particle's core (its level) is its consensus mask eroded by this much
SIZE_CORE_PX = 3
#: px: the ring of its local background lies at least this far beyond its outline (inner, outer; first beyond its
#: reach past the consensus mask, see :func:`_outline_area`), other tracked particles' pixels (grown by 2 px) left out
SIZE_RING_PX = (3, 8)
#: px: its outline is looked for within its consensus mask grown by this much at least, so that neighbours and fines
#: beyond do not enter
SIZE_GROW_PX = 3
#: how far beyond its consensus mask its outline may reach, and how far beyond its outline (and how wide) the ring
#: of its local background lies, as a share of the mask's equivalent radius (at least :data:`SIZE_GROW_PX` and
#: :data:`SIZE_RING_PX`): a fixed 3 px could not reach the foot of a large particle whose mask lies inside its rim.
#: On the real SSRL NCA pair, one particle on the default / classical path: 3 px 131.5 / 126.2 px, 0.06 134.0 / 131.6,
#: 0.1 134.6 / 134.2 (its profile's foot 132 px), and another 158.8, 161.9, 163.6 px on the default path (foot 162,
#: 0.1 takes in a touching fine); below 50 px of radius (all the synthetic particles) the 3 px stand
SIZE_REACH_SHARE = 0.06
#: the fewest background-ring pixels (after leaving other particles out) its outline is measured with
SIZE_RING_MIN = 20
#: px, and share of its detection radius (:attr:`ParticleResult.radius`), whichever is larger: how far a frame's
#: mask's centre of mass (on the aligned grid) may lie from the particle's position for the mask's area to enter
#: its size where the outline cannot be measured. On the real SSRL NCA pair (both paths) the masks of the particle
#: itself lay 0-10.9 px from it (particle 14 of the default run: 10.9 px, detection radius 15.8; 9.2 px of 37.0;
#: 9.1 of 30.8; tracks.csv's ``com_agreement_px`` of the frames vouched for: 1.2-9.2 px); particle 13's frame-0
#: mask, another object, 138.8 px (detection radius 97.4: 184.4 px in tracks.csv, on the whole frame)
SIZE_COM_PX = 12.0
#: the share of its detection radius in that rule (:data:`SIZE_COM_PX`)
SIZE_COM_SHARE = 0.5


def _outline_area(p) -> float:
    """The area (px) inside a particle's outline at its edge's foot; NaN where it cannot be measured.

    The mean of the aligned frames of ``p`` (a :class:`ParticleResult`) that :attr:`ParticleResult.size_radius`
    may use and that lie past the edge (normalised mean spectrum >= 0.75; where the normalisation failed, the half
    of those frames of highest mean OD), its level the median over its consensus mask eroded by
    :data:`SIZE_CORE_PX`. The outline is looked for within the mask grown by its reach (:data:`SIZE_REACH_SHARE` of
    the mask's equivalent radius, at least :data:`SIZE_GROW_PX`), other tracked particles' pixels left out: the
    pixels above background + :data:`SIZE_FOOT_SHARE` x (level - background), in the connected regions that meet the
    mask, holes filled. Its background is measured twice: first as the median over a ring just beyond that reach
    (as wide as the reach, at least ``SIZE_RING_PX[1] - SIZE_RING_PX[0]``), which a mask drawn inside the
    particle's rim cannot put on the rim, then, with the outline so found, over a ring as far beyond that outline
    as the reach (at least ``SIZE_RING_PX[0]``) and as wide, and the outline is drawn again. Other tracked
    particles' pixels (grown by 2 px) are left out of the rings. NaN without an aligned stack, without such
    frames, with fewer than :data:`SIZE_RING_MIN` ring pixels clear of other particles in the first ring, or where
    the level does not stand above the background (the first outline is kept where the second ring is too small).
    """
    relief = outline_relief(p)
    if relief is None:
        return float("nan")
    n = int(np.count_nonzero(relief.above(SIZE_FOOT_SHARE)))
    return float(n) if n else float("nan")


@dataclass(frozen=True)
class OutlineRelief:
    """A particle's mean image past its edge, its level and its local background (:func:`outline_relief`).

    ``img`` (h, w): the mean of its aligned frames past the edge (the grid of its ``mask``); ``mask``: its consensus
    mask; ``region``: where its outline may lie (the mask grown by its reach, other tracked particles left out);
    ``level``: the median over its core; ``background``: its local background.
    """

    img: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    level: float
    background: float

    def above(self, share: float) -> np.ndarray:
        """The pixels above background + ``share`` x (level - background) in the region, in the connected regions
        that meet the mask, holes filled: the outline drawn at that share of the particle's level."""
        from scipy import ndimage

        with np.errstate(invalid="ignore"):
            above = (self.img > self.background + share * (self.level - self.background)) & self.region
        labels, _ = ndimage.label(above)
        hit = np.unique(labels[self.mask & above])
        return ndimage.binary_fill_holes(np.isin(labels, hit[hit > 0]))


def outline_relief(p) -> OutlineRelief | None:
    """The image, level and background a particle's outline is drawn on (:func:`_outline_area`), or None where
    they cannot be measured."""
    from scipy import ndimage

    aligned, mask = getattr(p, "aligned", None), getattr(p, "mask", None)
    flags = np.asarray(p.frame_flags).astype(np.int64)
    if aligned is None or mask is None or np.ndim(aligned) != 3 or len(aligned) != len(flags):
        return None
    mask = np.asarray(mask, bool)
    if not mask.any() or np.shape(aligned)[1:] != mask.shape:
        return None
    use = (flags & SIZE_LEFT_OUT_FLAGS) == 0
    if p.filled_frames is not None:
        use &= ~np.asarray(p.filled_frames, bool)
    norm, od = np.asarray(p.mean_norm, float), np.asarray(p.mean_spectrum, float)
    if np.isfinite(norm[use]).any():
        use &= norm >= 0.75
    elif np.isfinite(od[use]).any():
        use &= od >= np.nanmedian(od[use])
    else:
        use[:] = False
    if not use.any():
        return None
    # frame by frame: the whole aligned stack in float64 (and a copy of its frames) raised the run's peak memory at
    # 1024^2 by 64 MiB; pixels outside every such frame (beyond the input's border) stay NaN
    total, count = np.zeros(mask.shape), np.zeros(mask.shape)
    for k in np.flatnonzero(use):
        frame = np.asarray(aligned[k], np.float64)
        seen = np.isfinite(frame)
        total[seen] += frame[seen]
        count += seen
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(count > 0, total / count, np.nan)
    core = ndimage.binary_erosion(mask, iterations=SIZE_CORE_PX)
    if not core.any():
        core = mask
    if not np.isfinite(img[core]).any():
        return None
    level = float(np.nanmedian(img[core]))
    share = SIZE_REACH_SHARE * np.sqrt(np.count_nonzero(mask) / np.pi)
    reach = max(float(SIZE_GROW_PX), share)
    gap, width = max(float(SIZE_RING_PX[0]), share), max(float(SIZE_RING_PX[1] - SIZE_RING_PX[0]), share)
    clear = np.isfinite(img)
    others = None
    if p.background_exclude is not None:
        others = np.asarray(p.background_exclude, bool)
        clear &= ~ndimage.binary_dilation(others, iterations=2)
    beyond = ndimage.distance_transform_edt(~mask)
    region = beyond <= reach
    if others is not None:
        region &= mask | ~others
    ring = (beyond > reach) & (beyond <= reach + width) & clear
    if np.count_nonzero(ring) < SIZE_RING_MIN:
        return None
    relief = OutlineRelief(img, mask, region, level, float(np.median(img[ring])))
    if not level > relief.background:
        return None
    inside = relief.above(SIZE_FOOT_SHARE)
    if inside.any():
        # the background again, beyond the outline so found (kept where that ring is too small or too bright)
        past = ndimage.distance_transform_edt(~inside)
        ring = (past > gap) & (past <= gap + width) & clear
        if np.count_nonzero(ring) >= SIZE_RING_MIN:
            again = replace(relief, background=float(np.median(img[ring])))
            if level > again.background:
                relief = again
    return relief


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
        The position reported ``(y, x)`` per frame in input pixel coordinates: the edge
        estimate vouched for by the centre of mass, smoothed across the energies (``edge_positions``
        as measured; ``options.position == "com"``: the centre of mass); filled where not
        measured, see ``frame_flags``.
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
    frame_flags : ndarray (n_frames,) uint16
        Bits of :data:`FRAME_FLAGS` (uint8 in files written before the ``overlap`` bit, 256).
    edge_maps : dict of str -> ndarray (h, w)
        ``e50`` (E at mu_norm = 0.5), ``derivative``, ``whiteline`` in eV, NaN outside
        the particle or where the fit failed.
    pixel_flags : ndarray (h, w) uint16
        XANES flags (see :mod:`xanestrack.xanes`), per pixel (uint8 in files written before ``misfit``, 256).
    fractions : ndarray (n_refs, h, w) or None
        Linear-combination fractions of ``reference_names``.
    mean_spectrum : ndarray (n_frames,)
        Mean optical density inside the mask.
    mean_norm : ndarray (n_frames,)
        Normalised mean spectrum (NaN if normalisation impossible).
    e0_ev : float
    radius : float
        The largest equivalent radius of its detections (px, at the detector's binning, which follows the pixel
        size): what its windows are sized by. Not its size, which :attr:`size_radius` gives.
    notes : tuple of str
    maps : dict of str -> ndarray
        Further per-pixel maps of the XANES analysis (:func:`xanestrack.xanes.analyse_particle`),
        on the grid of ``mask``; values are kept where the quality mask rejects a pixel
        (``quality_keep`` beside them says which are trusted): ``whiteline_height``
        (normalised units of the fitted whiteline, whose position is ``edge_maps["whiteline"]``),
        ``e50_sigma``, ``e50_sigma_noise``, ``e50_sigma_registration`` (eV, standard errors
        of ``edge_maps["e50"]``), ``fraction_sigma`` (n_refs, h, w), ``lcf_misfit`` (the fit's RMS residual over
        the spectra's local noise: :func:`xanestrack.xanes.lcf_misfit_map`), ``edge_jump_od``,
        ``quality_keep`` (bool), and with phase mapping ``cluster`` (int, -1 where not
        clustered). Empty when the analysis was skipped.
    xanes_frames : ndarray (n_frames,) bool or None
        The frames the XANES analysis used.
    background_exclude : ndarray (h, w) bool or None
        The pixels of its aligned window where other tracked particles lie, left out of the ring of its
        local background (:func:`xanestrack.xanes.local_background`); None where none comes near (and in
        results read back from a folder: not written there).
    filled_frames : ndarray (n_frames,) bool or None
        The frames in which its mask lay in a wide patch of input pixels without a value, filled from the patch's
        rim (:func:`xanestrack.outlines._filled_frames`): left out of its size and shape trends, also by
        :func:`xanestrack.pipeline.redo_xanes`, which has no patches; None where it lay in none.
    e50_normalisation_shift_ev : float
        eV: how far the energies its XANES used (``xanes_frames``) move its E50 against a particle of its chemistry
        measured on all the scan's energies, set by :func:`xanestrack.pipeline.run_pipeline` and
        :func:`~xanestrack.pipeline.redo_xanes` (:func:`xanestrack.pipeline._frames_bias`): from the references mixed
        at its chemistry (:func:`xanestrack.chemistry.normbias.frames_bias_shift`), or where they do not describe its
        spectrum from the particle most like it measured on every energy
        (:func:`~xanestrack.chemistry.normbias.spectrum_frames_shift`); 0 where it used them all, NaN where not
        measured (no mean E50, no reference of its edge, its E50 in a gap of them, or neither source there). The
        run's note on the normalisation's bias is of the scan's energies and does not hold for a particle
        normalised on fewer.
    touching_pieces : int
        The most pieces of a particle's size the detector cut its outline into in one of the frames it examined,
        where it kept it whole in the others (:func:`xanestrack.pipeline._pieces_note`); where it never cut it, the
        lobes of a particle's size its half-height outline is made of, joined at necks
        (:func:`xanestrack.outlines.outline_lobes`): it may be that many touching particles or more, reported as
        one; 0 where neither.
    touching_pieces_frames : int
        The frames examined in which it was so cut (0: none; with ``touching_pieces`` 2 or more: lobes of its
        outline).
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
    maps: dict = field(default_factory=dict)
    xanes_frames: np.ndarray | None = None
    background_exclude: np.ndarray | None = None
    filled_frames: np.ndarray | None = None
    e50_normalisation_shift_ev: float = float("nan")
    touching_pieces: int = 0
    touching_pieces_frames: int = 0

    @functools.cached_property
    def size_radius(self) -> float:
        """The particle's size: the equivalent radius ``sqrt(area / pi)`` of its outline (px), NaN without a mask.

        The outline is drawn at its edge's foot (:func:`_outline_area`): on the mean of its aligned frames past the
        edge, vouched for and whole (none of :data:`SIZE_LEFT_OUT_FLAGS`, not filled), where the OD rises above its
        local background by :data:`SIZE_FOOT_SHARE` of its level. Not at half height: a particle's thickness tapers
        to its rim and the optics blur it, so the half-height contour lies inside the outline (8-10 % small on the
        stress presets' large particles). The outline may reach past the consensus mask by a share of its radius
        and its background is taken beyond the outline found (:func:`_outline_area`), so a mask drawn inside the
        rim does not hold it there: on the real SSRL NCA pair the same particles read 131.5 / 126.2 px (default /
        classical path) and 158.8 / 164.9 px with a fixed 3 px reach and a ring 3-8 px past the mask (the
        classical path's ring on the first one's own rim, OD 1.27 against 1.08 at 200-230 px from its centre; now
        1.08), now 134.0 / 131.6 px and 163.0 / 163.1 px (the masks of the second took in a touching particle of
        about 27 px, 169.1 / 169.2 px, now left out of them: :func:`xanestrack.outlines.neighbour_lobes_left_out`;
        a third, 59.6 -> 59.9 px on the default path); azimuthal profiles of the raw post-edge frame put their foot
        (a tenth of the centre's level) at 132, 162 and 61 px.

        Where that cannot be measured (no aligned stack, no such frame, a background ring all other particles, a
        level not above the background, an empty consensus mask) it falls back to its masks: the median over those
        frames of the area of each frame's aligned soft mask (the sum of its weights); where no such frame has a
        mask, over the frames whose mask is whole (a scan of one frame: its position not vouched for, nothing to
        compare with), then the consensus mask's; NaN where none has one. Only the frames whose mask's centre of
        mass lies within :data:`SIZE_COM_PX` or :data:`SIZE_COM_SHARE` of its detection radius of its position count:
        on the SSRL pair particle 13's frame-0 mask was another object 138.8 px away, and its size (54.6 px) half
        that object's; now its frame-1 mask's, 66.0 px. The masks' size is another definition: they lie about at
        half height, inside the foot, and miss the blurred rim of tapered edges: on the SSRL pair's small
        particles, whose consensus mask is empty, about 20 % small against the foot (particles 0 and 10: 35.2 /
        35.0 px, their azimuthal profiles' half height at 36-37 px and foot at 44-45 px); on the probe's reduced
        stress scenes (256 px, 60 energies, 4 particles) they read the large particles 3.6-6.5 % small (stress-all s1 p0 35.84 px,
        stress-crowd s2 p0 41.58, stress-fines s1 p0 35.86 px; truth's equivalent radius 37.76 / 43.13 / 37.67),
        the outline 1.1-1.9 % small (37.17 / 42.64 / 36.94 px; the smaller particles of those scenes 3.1 % small to
        1.7 % large); on the default scenes (seeds 1-2), where the masks were within 0.08 px, the outline reads
        0.15-0.23 px large (seed 1: 28.55 / 40.18 / 18.63 / 10.12 px, truth 28.34 / 40.03 / 18.45 / 9.92; hard
        seed 1's two particles merged with a neighbour read 4-8 px large either way, not rerun since).

        This is what the report, ``particle_summary``'s ``radius_px``, the CLI and ``results.h5``'s ``radius_px``
        give; a folder read back gives the same number (its aligned stack, masks, flags, spectra and the other
        particles' pixels are written). Unlike :attr:`radius` (the largest detection's, at the detector's binning)
        it does not change with the pixel size: the probe's scene (seed 5, 256 px, 5 particles) gave 9.75 / 12.92 /
        24.33 / 16.17 / 19.83 px from the masks without one and the same within 0.01 px with ``--pixel-size 0.05``
        (truth 9.76 / 12.94 / 24.38 / 16.20 / 19.90; the largest detection's 9.51 / 13.11 / 24.38 / 16.27 / 19.90
        px, and 9.03 / 12.57 / 24.93 / 17.33 / 20.31 px with it); the test's (seed 5, 200 px, 4 particles) gives
        the outline's within 0.02 px of each other with and without it. Computed once per result (1-6 ms a
        particle on the reduced synthetic scenes, up to 34 ms on the SSRL pair's 447 px windows; the report, the
        tables and results.h5 each ask for it).
        """
        area = _outline_area(self)
        if np.isfinite(area):
            return float(np.sqrt(area / np.pi))
        masks = None if self.masks is None else np.nan_to_num(np.asarray(self.masks, float))
        flags = np.asarray(self.frame_flags).astype(np.int64)  # uint8 in files written before the overlap bit
        if masks is not None and masks.ndim == 3 and len(masks) == len(flags):
            area = masks.sum(axis=(1, 2))
            # only the frames whose mask is centred on the particle: not another object's (SSRL particle 13)
            yy, xx = np.indices(masks.shape[1:], dtype=float)
            with np.errstate(invalid="ignore", divide="ignore"):
                com = np.stack([(masks * yy).sum(axis=(1, 2)), (masks * xx).sum(axis=(1, 2))], axis=1) / area[:, None]
                off = np.hypot(*(com - (np.asarray(self.positions, float)[0] - np.asarray(self.origin, float))).T)
            near = off <= max(SIZE_COM_PX, SIZE_COM_SHARE * float(self.radius))  # NaN (no position): not near
            if self.mask is not None and not np.asarray(self.mask).any() and ((area > 0) & ~near).any():
                # no consensus of its frames' masks, and some of them another object's: one frame's own mask
                # alone is not enough to give a size (the SSRL pair's particle 13, two frames: 54.6 px from
                # another object's mask and its own, 66.0 from its own, an irregular patch of an agglomerate)
                if np.count_nonzero((area > 0) & near) < 2:
                    return float("nan")
            for left_out in (SIZE_LEFT_OUT_FLAGS, SIZE_LEFT_OUT_FLAGS & ~UNVOUCHED_FLAGS):
                use = ((flags & left_out) == 0) & (area > 0) & near
                if use.any():
                    return float(np.sqrt(np.median(area[use]) / np.pi))
        n = int(np.count_nonzero(self.mask)) if self.mask is not None else 0
        return float(np.sqrt(n / np.pi)) if n else float("nan")

    @property
    def quality_assessed(self) -> bool:
        """Whether the XANES analysis judged the pixels (``maps["quality_keep"]`` present)."""
        return "quality_keep" in self.maps

    @property
    def kept(self) -> np.ndarray:
        """The mask's pixels that the XANES quality masks keep (bool, the grid of ``mask``).

        The whole mask where the analysis did not judge the pixels (skipped, or a result
        written without it): the one reading of ``maps["quality_keep"]`` that the
        summaries, figures, tables and clustering share.
        """
        keep = self.maps.get("quality_keep")
        mask = np.asarray(self.mask, bool)
        return mask.copy() if keep is None else (np.asarray(keep, bool) & mask)


@dataclass(frozen=True)
class PipelineResult:
    """Result of :func:`run_pipeline`.

    ``chemistry`` (None when nothing beyond the per-particle analysis was asked) holds the
    analysis of all particles together (:func:`xanestrack.pipeline.phase_mapping`):
    ``energies_ev`` (the frames usable in every particle), ``cluster_mean_spectra``
    (k, n), ``pca_energies_ev``, ``pca_components``, ``pca_explained_variance_ratio``
    (the scree), ``cluster_fractions`` (a table: particle, cluster, n_pixels, fraction),
    ``nmf_components`` (with the NMF method) and ``settings`` (a JSON-able dict: method,
    clusters, window, pixels).
    """

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
    chemistry: dict | None = None  # phase mapping of all particles together (see above)
    #: per frame: the particles' edge width less its median (px, smoothed; resolution._width_profile)
    #: and the Gaussian blur the frame's particle windows got before the chemistry (px; 0 where none)
    edge_widths: pd.DataFrame | None = None
    #: eV per reference: its E50 measured as the particles' are on the scan's energies less its densely measured
    #: E50 (:func:`xanestrack.chemistry.normbias.normalisation_bias`); None where no reference was used
    normalisation_bias: dict | None = None


def core_pixels(p: ParticleResult, core_px: int = 2) -> np.ndarray:
    """The pixels a particle's means are taken over (:func:`particle_summary`): its mask eroded by
    ``core_px`` (the whole mask if nothing is left), of those the ones the quality masks keep (all
    where they keep none)."""
    return core_mask(p.mask, p.kept, core_px)


def core_mask(mask, kept, core_px: int = 2) -> np.ndarray:
    """:func:`core_pixels` of a ``mask`` (h, w) bool whose pixels ``kept`` (h, w) bool the quality masks keep."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    core = ndimage.binary_erosion(mask, iterations=core_px) if core_px > 0 else mask
    if not core.any():
        core = mask
    if (core & kept).any():
        core = core & kept
    return core


def fraction_pixels(p, core_px: int = 2) -> np.ndarray:
    """The pixels a particle's mean reference fractions are taken over: its :func:`core_pixels` less those flagged
    ``misfit`` in ``pixel_flags`` (:func:`xanestrack.xanes.misfit_region`: a region whose spectra the references do
    not describe, where the fractions are not its chemistry); the whole core where every pixel of it is (the
    particle's note says the references fail it).

    Its mean E50 keeps them (:func:`core_pixels`): the E50 of a phase the references lack is measured as any other.
    A particle half in a phase not in the references (NiO +3 eV, read LiNiO2 1.000) and half a 50/50 mix read a
    mean LiNiO2 fraction of 0.751, its note silent.
    """
    from .xanes import FLAG_MISFIT

    core = core_pixels(p, core_px)
    flags = getattr(p, "pixel_flags", None)
    if flags is None or np.shape(flags) != core.shape:
        return core
    fitted = core & ((np.asarray(flags).astype(np.int64) & FLAG_MISFIT) == 0)
    return fitted if fitted.any() else core


def spread_beyond_noise(e50, sigma_noise) -> float:
    """eV: the standard deviation of a particle's pixel E50s less their own noise, ``sqrt(max(0, var(e50) -
    mean(sigma_noise ** 2)))`` over the pixels where both are finite; NaN where none is.

    The spread of the pixels (``e50_spread_ev``, chemistry.csv's percentiles) is that of noisy pixels: a uniform
    particle (truth SD 0.084 eV) read 0.117 eV at 5000 counts and 0.184 eV at 800, its 2nd-98th percentile width 2.8
    and 4.9 times the truth's. ``sigma_noise`` is each pixel's standard error from the spectra's noise
    (``maps["e50_sigma_noise"]``, of the smoothed map the E50s are of), so what is left is the spread the noise does
    not explain, comparable across scans of different counts. 0 where the noise explains it all; not the truth's
    spread where the smoothing blurs chemistry fronts (it lowers both) or the stated sigmas are off.
    """
    e = np.asarray(e50, float).ravel()
    s = np.asarray(sigma_noise, float).ravel()
    ok = np.isfinite(e) & np.isfinite(s)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(max(0.0, float(np.var(e[ok])) - float(np.mean(s[ok] ** 2)))))


def gap_share(p) -> float:
    """The share of a particle's mask pixels whose E50 falls in a gap of frames left out (pixel flag ``gap``)."""
    from .xanes import FLAG_GAP

    flags = getattr(p, "pixel_flags", None)
    if flags is None or p.mask is None or not p.mask.any():
        return 0.0
    return float(np.count_nonzero((np.asarray(flags)[p.mask] & FLAG_GAP) > 0) / np.count_nonzero(p.mask))


def e50_withheld(p, core_px: int = 2) -> str:
    """Why a particle's mean E50 is not given, in a few plain words; ``""`` where it is given.

    The one decision that :func:`particle_summary` (an empty ``mean_e50_ev``) and the report's E50 outputs
    (:mod:`xanestrack.report`: chemistry.csv, the E50 overview, the particle's E50 panel) share. A particle's
    pixels measured are not the particle where its E50 falls in a gap of frames left out in more than
    :data:`xanestrack.xanes.MAX_GAP_SHARE` of its mask (they are those whose E50 lies outside the gap), or where
    fewer than :data:`xanestrack.xanes.MIN_E50_SHARE` of its whole core (:func:`e50_share`), but some of its
    pixels, have an E50 (:func:`few_e50_measured`; its fractions are then withheld too). Its own note says the
    same at more length ("its mean E50 is not given"). Where no pixel has an E50 (its XANES failed or was skipped)
    nothing is withheld: there is no number to give.
    """
    from .xanes import MAX_GAP_SHARE

    share = gap_share(p)
    if share > MAX_GAP_SHARE:
        return (
            f"E50 in a gap of frames left out in {100 * share:.0f} % of its pixels: those measured are the ones "
            "whose E50 lies outside the gap, a biased choice"
        )
    return few_e50_measured(p, core_px)


def gap_counted(result, p, core) -> tuple[float, float, int] | None:
    """``(centre, width, n)``: where the ``n`` pixels of ``core`` whose E50 lies in a gap of frames left out (pixel
    flag ``gap``) have it: the mean of the centres of their own gaps and the mean of those gaps' widths (eV; one
    gap: its centre and width), or None where none has.

    Each pixel's own gap is the interval between the two analysed energies its normalised spectrum crosses half its
    step between (``p.maps["e50_gap"]``, :data:`xanestrack.xanes.E50_GAP_MAP`, recorded by
    :func:`xanestrack.xanes.analyse_particle`). Results without that map (written before it, or a pixel flagged
    without it) take the span of :func:`xanestrack.xanes.e50_gap_span`, from the edge window's first gap to its last:
    with two gaps there, one of which holds no E50 (frames left out at 8341.9-8343.1 and 8355.1-8357.5 eV), every
    pixel was counted at 8349.7 eV and the mean E50 moved by +3.67 eV (sigma 2.40); each at its own gap's centre,
    +0.35 +- 0.48 eV, as with the first gap alone.

    :func:`particle_summary` counts those pixels in the mean E50 at their gaps' centres and holds in its sigma their
    spread over their gaps (uniform over each width: ``width / sqrt(12)``, times their share, the pixels' parts
    added as if they moved together): the pixels measured are those whose E50 lies outside the gap, not a random
    sample of the particle, and their mean alone was the mean of that choice, its sigma blind to it (stress-counts
    seed 2, reduced: 43 % of a particle in a gap at 8339.5-8343.1 eV, below its E50s: +0.32 +- 0.083 eV off its
    true mean, 3.9 sigma; counted, -0.88 +- 0.47 eV, 1.9 sigma: the most its pixels at one end of the gap can give
    is 1.73). Stress scenes with two frames near the edge left out: 7 particles with 4-43 % in a gap were 2.7-11.6
    sigma off, counted 0.2-1.9; three with 1.4-3.8 %, 0.2-0.65 eV low before (the normalisation's bias), moved by
    -0.15 to +0.03 eV."""
    from .xanes import E50_GAP_MAP, FLAG_GAP, e50_gap_span

    flags = getattr(p, "pixel_flags", None)
    if flags is None:
        return None
    in_gap = np.asarray(core, bool) & ((np.asarray(flags) & FLAG_GAP) > 0)
    n = int(np.count_nonzero(in_gap))
    if not n:
        return None
    own = (getattr(p, "maps", None) or {}).get(E50_GAP_MAP)
    if own is not None and np.shape(own) == (2, *in_gap.shape):
        lo, hi = (np.asarray(own, float)[k][in_gap] for k in (0, 1))
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            gaps, count = np.unique(np.c_[lo, hi], axis=0, return_counts=True)
            if len(gaps) == 1:  # one gap: its centre and width as they are
                return float(0.5 * (gaps[0, 0] + gaps[0, 1])), float(gaps[0, 1] - gaps[0, 0]), n
            return float(count @ (0.5 * (gaps[:, 0] + gaps[:, 1])) / n), float(count @ (gaps[:, 1] - gaps[:, 0]) / n), n
    energies = np.asarray(result.energies_ev, float)
    used = getattr(p, "xanes_frames", None)
    e = energies[np.asarray(used, bool)] if used is not None and len(used) == energies.size else energies
    window = getattr(getattr(result, "options", None), "edge_window", (-15.0, 20.0))
    span = e50_gap_span(np.sort(e), energies, float(p.e0_ev), window)
    if span is None:
        return None
    return 0.5 * (span[0] + span[1]), span[1] - span[0], n


def e50_share(e50, mask, core_px: int = 2) -> tuple[int, int]:
    """``(n, n_core)``: the pixels of a particle's whole core that have an E50, and that core: ``mask`` eroded by
    ``core_px`` (:func:`core_mask`), before the quality masks.

    The share is judged against the whole core, not against the pixels the quality masks keep (which
    :func:`core_mask` narrows the core to): one kept pixel of 437 (an Al flake or binder clump, no Ni edge: the E50
    of a noisy pixel) passed as "1 of 1 core pixels", and the flake was given a mean E50 and an oxidised fraction of
    1.000. Nor does a faint particle whose quality masks keep a quarter of its core lose its mean: its pixels
    measured are those whose spectra cross half the step, whichever the masks keep."""
    mask = np.asarray(mask, bool)
    core = core_mask(mask, mask, core_px)
    return int(np.count_nonzero(np.isfinite(np.asarray(e50, float)[core]))), int(np.count_nonzero(core))


def few_e50_measured(p, core_px: int = 2) -> str:
    """Why a particle's mean E50 and mean fractions are not given for want of pixels measured, in a few plain
    words; ``""`` where enough are (or none at all: no XANES, nothing to withhold).

    Fewer than :data:`xanestrack.xanes.MIN_E50_SHARE` of its whole core have an E50 (:func:`e50_share`): those are
    the spectra that cross half the step, not the particle. Its fractions go with it (:func:`fractions_withheld`):
    fitted over the same noisy spectra, an edgeless flake's were 1.000."""
    from .xanes import MIN_E50_SHARE

    maps = getattr(p, "edge_maps", None)
    e50 = maps.get("e50") if maps else None
    if e50 is None or p.mask is None:
        return ""
    mask = np.asarray(p.mask, bool)
    if not np.isfinite(np.asarray(e50, float)[mask]).any():  # none: nothing withheld (no XANES, or no pixel crossed)
        return ""
    n, n_core = e50_share(e50, mask, core_px)
    if n < MIN_E50_SHARE * n_core:
        return (
            f"E50 measured in {n} of its {n_core} core pixels only: those are the spectra that cross half the step, "
            "not the particle"
        )
    return ""


def fractions_withheld(p, core_px: int = 2) -> str:
    """Why a particle's mean reference fractions are not given (``""`` where they are): its E50 measured in too
    few of its core pixels (:func:`few_e50_measured`), the pixels fitted being the same few noisy spectra. The
    one decision that :func:`particle_summary` (``oxidised_fraction``) and the report (uncertainty.csv's
    fractions, flag ``withheld``) share."""
    return few_e50_measured(p, core_px)


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
    max_nonrigid_px, mean_e50_ev, e50_spread_ev, e50_spread_beyond_noise_ev, e0_ev, oxidised_fraction``
    (``radius_px``: its size, :attr:`ParticleResult.size_radius`; ``e50_spread_ev``: the standard deviation of
    the E50 of the pixels of ``mean_e50_ev``, noise included; ``e50_spread_beyond_noise_ev``: the same less the
    pixels' own noise, :func:`spread_beyond_noise`, what compares across scans of different counts;
    ``oxidised_fraction``: mean
    fraction of the last reference of the linear combination fit, NaN without one: give the
    references with the most oxidised last, a run note says where its edge is not the highest), then ``mean_e50_sigma_ev`` (standard error of
    ``mean_e50_ev``), ``e50_normalisation_shift_ev`` (eV, how far the energies its XANES used, fewer than the scan's,
    move its E50 against a particle of its chemistry measured on all of them:
    :attr:`ParticleResult.e50_normalisation_shift_ev`; 0 where it used them all, NaN where not measured or its mean
    E50 is not given), ``touching_pieces`` and ``touching_pieces_frames`` (the most pieces of a particle's size its
    outline was cut into in a frame examined, and in how many; where never cut, the lobes of its outline and 0: it
    may be touching particles reported as one, :attr:`ParticleResult.touching_pieces`; 0 where neither), ``whiteline_ev``, ``whiteline_height`` (means of the fitted
    whiteline), ``kept_fraction`` (the share of the mask's pixels the quality masks
    keep) and, when clusters were asked, ``cluster_<j>_fraction`` (of the particle's
    clustered pixels).

    Means are taken over the core pixels that the quality masks keep
    (``maps["quality_keep"]``; every core pixel for results without one). No mean E50 (nor
    spread, nor sigma) nor ``oxidised_fraction`` is given where fewer than
    :data:`xanestrack.xanes.MIN_E50_SHARE` of its whole core (the mask eroded, before the quality
    masks: :func:`e50_share`) have an E50 (the particle's note says why: their mean is not the
    particle's), nor a mean E50 where its E50 falls in a gap of frames left out in more than
    :data:`xanestrack.xanes.MAX_GAP_SHARE` of its mask; in up to that share, the core pixels in the gap are
    counted in ``mean_e50_ev`` each at the centre of its own gap, and ``mean_e50_sigma_ev`` holds their spread over
    it (:func:`gap_counted`; ``e50_spread_ev`` is of the pixels measured).
    ``mean_e50_sigma_ev`` combines the noise part of the pixels' standard errors
    (independent pixels, the variance of a mean of pixels smoothed with a Gaussian of
    ``xanes_smoothing`` px multiplied by ``4 pi sigma^2``; widened where the background's
    noise is common to rows or columns of a frame, readout stripes: ``maps["noise_shared"]``,
    :func:`xanestrack.chemistry.uncertainty.mean_noise_sigma`; with the noise of the local background subtracted
    per frame, common to every pixel: ``maps["noise_background"]``) with the registration part
    taken as common to every pixel (the mean of the pixels' registration sigmas: a
    frame's misregistration moves the whole particle, an upper bound). It is a
    statistical error: the bias of the normalisation model, which depends on the
    chemistry and on the scan's energies (the run's own numbers per reference: ``result.normalisation_bias``,
    :func:`xanestrack.chemistry.normbias.normalisation_bias`; for the shipped NiO / LiNiO2 on synth's grids
    +0.11 / +0.004 eV at 143 energies, +0.38 / -0.07 eV at 50), is not in it.
    """
    ratios = result.peak_ratios.set_index("particle") if len(result.peak_ratios) else None
    options = getattr(result, "options", None)
    smoothing_px = float(getattr(options, "xanes_smoothing", 1.0))
    clusters = int(getattr(options, "clusters", 0) or 0)
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    rows = []
    for p in result.particles:
        flags = np.asarray(p.frame_flags)
        core = core_pixels(p, core_px)
        e50 = p.edge_maps["e50"][core]
        fin_e50 = np.isfinite(e50)
        e50 = e50[fin_e50]
        # the pixels measured are those whose E50 lies outside the gap: their mean is biased (xanes.MAX_GAP_SHARE);
        # those with an E50 a few of the core: not the particle's (an entering particle's frames used starting past
        # its edge's rise: 18 of 2484 core pixels crossed half the step, a mean 33 eV high, its sigma 0.19 eV)
        if e50_withheld(p, core_px):  # the one decision, shared with the report's E50 outputs
            e50 = e50[:0]
            fin_e50 = np.zeros_like(fin_e50)
        ox = np.nan
        if p.fractions is not None and len(p.reference_names) and core.any() and not fractions_withheld(p, core_px):
            v = p.fractions[-1][fraction_pixels(p, core_px)]  # not over a region the references do not describe
            ox = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        extra = _chemistry_columns(p, core, fin_e50, smoothing_px, clusters)
        mean_e50 = float(e50.mean()) if e50.size else np.nan
        gap = gap_counted(result, p, core) if e50.size else None
        if gap is not None:
            # the pixels whose E50 lies in a gap of frames left out, each counted at its own gap's centre, their
            # spread over it in the sigma: the pixels measured alone are a choice by the value (gap_counted)
            centre, width, n_gap = gap
            share = n_gap / (n_gap + e50.size)
            mean_e50 = (float(e50.sum()) + n_gap * centre) / (n_gap + e50.size)
            extra["mean_e50_sigma_ev"] = float(np.hypot(extra["mean_e50_sigma_ev"], share * width / np.sqrt(12.0)))
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
                radius_px=p.size_radius,
                frames=int(len(flags)),
                frames_measured=int(((flags & unmeasured) == 0).sum()),
                frames_vouched=int(((flags & (unmeasured | FRAME_FLAGS["disagree"])) == 0).sum()),
                flagged_frames=int((flags > 0).sum()),
                median_agreement_px=float(np.median(a[fin])) if fin.any() else np.nan,
                max_agreement_px=float(a[fin].max()) if fin.any() else np.nan,
                max_nonrigid_px=nr,
                mean_e50_ev=mean_e50,
                e50_spread_ev=float(e50.std()) if e50.size else np.nan,
                e50_spread_beyond_noise_ev=_noise_and_spread(p, core, fin_e50)[1],
                e0_ev=float(p.e0_ev),
                oxidised_fraction=ox,
                **extra,
                # where its energies are fewer than the scan's, how far they move its E50 (run_pipeline measured it)
                e50_normalisation_shift_ev=float(getattr(p, "e50_normalisation_shift_ev", np.nan))
                if e50.size
                else np.nan,
                # its outline cut into this many pieces of a particle's size in so many frames examined: it may be
                # touching particles reported as one (pipeline._pieces_note)
                touching_pieces=int(getattr(p, "touching_pieces", 0) or 0),
                touching_pieces_frames=int(getattr(p, "touching_pieces_frames", 0) or 0),
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
        "e50_spread_beyond_noise_ev",
        "e0_ev",
        "oxidised_fraction",
        "mean_e50_sigma_ev",
        "e50_normalisation_shift_ev",
        "touching_pieces",
        "touching_pieces_frames",
        "whiteline_ev",
        "whiteline_height",
        "kept_fraction",
    ] + [f"cluster_{j}_fraction" for j in range(clusters)]
    return pd.DataFrame(rows, columns=cols)


def e50_noise_and_spread(p, core_px: int = 2) -> tuple[float, float]:
    """``(e50_noise_sigma_ev, e50_spread_beyond_noise_ev)`` of a particle over the pixels of its mean E50 (its
    :func:`core_pixels` with an E50; NaN where its E50 is withheld or it has no noise map): the RMS of their
    standard errors from the spectra's noise and :func:`spread_beyond_noise`. One definition for the particles'
    table, chemistry.csv and the report: chemistry.csv took every kept pixel, the rim included, whose noise is 2-3
    times the core's (a probe's stress-all particle, truth SD 0.29 eV: 0.000 there against 0.284 in the report)."""
    core = core_pixels(p, core_px)
    e50 = np.asarray(p.edge_maps["e50"], float)[core] if "e50" in (p.edge_maps or {}) else np.array([])
    fin = np.isfinite(e50)
    if e50_withheld(p, core_px):
        fin = np.zeros_like(fin)
    return _noise_and_spread(p, core, fin)


def _noise_and_spread(p, core, fin_e50) -> tuple[float, float]:
    """:func:`e50_noise_and_spread` over the pixels ``core`` with an E50 (``fin_e50`` selects them)."""
    sig = p.maps.get("e50_sigma_noise")
    if sig is None or not np.any(fin_e50):
        return float("nan"), float("nan")
    e50 = np.asarray(p.edge_maps["e50"], float)[core][fin_e50]
    s = np.asarray(sig, float)[core][fin_e50]
    ok = np.isfinite(s)
    noise = float(np.sqrt(np.mean(s[ok] ** 2))) if ok.any() else float("nan")
    return noise, spread_beyond_noise(e50, s)


def _chemistry_columns(p, core, fin_e50, smoothing_px, clusters) -> dict:
    """The chemistry columns of :func:`particle_summary` for one particle over the pixels ``core``."""
    nan = float("nan")
    m = p.maps

    def mean(a):
        v = np.asarray(a, float)[core]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else nan

    sigma = nan
    if "e50_sigma_noise" in m and fin_e50.any():
        from .chemistry.uncertainty import mean_noise_sigma

        sel = np.zeros(core.shape, bool)
        sel[core] = fin_e50  # the core pixels with an E50
        if np.isfinite(np.asarray(m["e50_sigma_noise"], float)[sel]).any():
            # pixels independent before the smoothing, or sharing the noise of a row (column): readout stripes
            sigma = mean_noise_sigma(
                m["e50_sigma_noise"],
                sel,
                smoothing_px=smoothing_px,
                shared=m.get("noise_shared"),
                background=m.get("noise_background"),  # the local background's noise, common to the pixels
            )
            sr = np.asarray(m.get("e50_sigma_registration", np.full(core.shape, nan)), float)[core]
            sr = sr[np.isfinite(sr)]
            if sr.size:
                sigma = float(np.hypot(sigma, sr.mean()))
    out = dict(
        mean_e50_sigma_ev=sigma,
        whiteline_ev=mean(p.edge_maps["whiteline"]) if "whiteline" in p.edge_maps else nan,
        whiteline_height=mean(m["whiteline_height"]) if "whiteline_height" in m else nan,
        kept_fraction=float(p.kept.sum() / max(int(p.mask.sum()), 1)) if p.quality_assessed else nan,
    )
    cl = m.get("cluster")
    for j in range(clusters):
        if cl is None:
            out[f"cluster_{j}_fraction"] = nan
            continue
        n = int((cl >= 0).sum())
        out[f"cluster_{j}_fraction"] = float((cl == j).sum() / n) if n else nan
    return out
