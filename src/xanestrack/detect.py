"""Particle detection per frame: which isolated particles are there, and where.

The classical detector smooths the frame, removes a slowly varying background
(binder, flat-field residue) estimated from the pixels that are not particles,
thresholds at a level set both by the frame's noise and by the particles' own
contrast (so faint pre-edge frames and bright post-edge frames give the same
outlines), and keeps the connected components that are isolated particles: inside
the field of view, within a size range, and convex enough not to be two touching
particles. The learned detector (Cycle-GAN generator) plugs in through
``particle_probability`` maps with the same output table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from .register import bin_frames
from .robust import robust_sigma

__all__ = [
    "DetectOptions",
    "detect_particles",
    "detect_stack",
    "detector_with_options",
    "DETECTION_COLUMNS",
    "foreground_mask",
    "regions_table",
    "empty_detections",
]

DETECTION_COLUMNS = [
    "frame",
    "y",
    "x",
    "area",
    "radius",
    "y0",
    "x0",
    "y1",
    "x1",
    "solidity",
    "contrast",
    "isolated",
    "reason",
    "touching",
    "extent",
]


@dataclass(frozen=True)
class DetectOptions:
    """Options of the detectors' region tests, and of the classical detector.

    Lengths are in pixels of the full-resolution frame (the classical detector divides
    them by ``binning``). The fields marked *classical* are used by the classical
    detector only; the region tests (size, border, convexity, splitting) by every
    detector, through :func:`regions_table`.

    Attributes
    ----------
    sigma : float, default 2.0
        px. Gaussian smoothing of the (binned) frame before thresholding (classical):
        larger finds faint particles in noisy frames, merges close ones.
    binning : int, default 2
        Frames are binned by this factor before detection (classical). The learned
        detector bins by at least this much (more for large ``max_radius``, see
        :func:`xanestrack.models.detector.detector_binning`).
    background_scale : int, default 8
        px. Block size of the smooth background (binder, flat-field residue) estimated
        from the pixels that are not particles and subtracted before the final threshold
        (classical).
    noise_factor : float, default 5.0
        The threshold is at least this many noise standard deviations (robust sigma of a
        high-pass residual) above the background (classical): higher, fewer noise
        detections in faint frames.
    contrast_fraction : float, default 0.25
        In (0, 1). ... and at least this fraction of the particles' own contrast (the
        frame's 99.5th percentile above its median; Otsu's level where that is lower)
        (classical): the same outline in faint pre-edge and bright post-edge frames.
    min_radius : float, default 7.0
        px. Smallest equivalent radius ``sqrt(area / pi)`` of a particle: smaller
        components are fines (``too_small``).
    max_radius : float, default 60.0
        px. Largest equivalent radius: larger components are rejected (``too_large``)
        or split (``split_touching``). Must exceed ``min_radius``.
    border : int, default 2
        px. Components this close to the frame border are not whole (``border``).
    min_solidity : float, default 0.92
        Below this area / convex-hull area (relaxed by ``0.6 / sqrt(area)`` for small,
        pixelated outlines), or when the largest inscribed disc covers less than 60 % of
        the area, a component is examined as possibly several touching particles.
    split_touching : bool, default True
        Separate touching particles and agglomerates at the necks of the distance
        transform and keep each piece (``touching`` True): a neck narrow for the smaller of
        the two bodies it joins (a small particle on a large one's flank is cut off, as two
        of equal size are). A non-convex component with no narrow neck is one irregular
        particle, or particles overlapping so much that they move as one: kept whole if its
        solidity is at least ``KEEP_SOLIDITY`` (0.8; the two position estimates vouch for it
        frame by frame), else rejected (``not_convex``). False: reject every non-convex
        component.
    rescue_small : bool, default True
        A component too small to be a particle is measured again at the frame's own
        contrast (:func:`rescue_small`): where it is the brightest part of a faint
        particle that the detector outlined too small (a small, textured particle before
        the edge or in a frame of low counts), the particle's half-maximum outline is kept
        if it is whole, apart from every larger object, in the size range and convex.
        Scans of ``RESCUE_MIN_FRAMES`` frames or more. On the stress family (seeds 1-2,
        28 runs, with the linker keeping faint tracks, ``MatchOptions.min_faint_fraction``)
        the runs with every isolated particle tracked through every frame went from 6 to
        20, those meeting all of issue 15's tracking goals from 1 to 9, spurious tracks
        0 -> 0; the particles it brings are the faintest (0.06-0.39 px RMS), so the worst
        particle of a run is more often above 0.25 px (8 -> 12 runs). The classical detector
        also has what stands above half its threshold examined (a faint particle's core may
        not reach the threshold at all): its isolated particles tracked through every frame
        120 -> 133 of 133 on those runs. README: Rescue.

    Raises
    ------
    ValueError
        If not ``0 < min_radius < max_radius`` or ``contrast_fraction`` is not in (0, 1).
    """

    sigma: float = 2.0
    binning: int = 2
    background_scale: int = 8
    noise_factor: float = 5.0
    contrast_fraction: float = 0.25
    min_radius: float = 7.0
    max_radius: float = 60.0
    border: int = 2
    min_solidity: float = 0.92
    split_touching: bool = True
    rescue_small: bool = True

    def __post_init__(self):
        if not 0 < self.min_radius < self.max_radius:
            raise ValueError(f"need 0 < min_radius < max_radius, got {self.min_radius}, {self.max_radius}")
        if not 0 < self.contrast_fraction < 1:
            raise ValueError(f"contrast_fraction must be in (0, 1), got {self.contrast_fraction}")


def _background(img, mask, scale):
    """Smooth background from the unmasked pixels (normalised convolution, downsampled)."""
    ny, nx = img.shape
    py, px = (-ny) % scale, (-nx) % scale
    w = (~mask).astype(np.float32)
    v = np.where(mask, 0, img).astype(np.float32)
    if py or px:
        w = np.pad(w, ((0, py), (0, px)), mode="edge")
        v = np.pad(v, ((0, py), (0, px)), mode="edge")
    sh = (w.shape[0] // scale, scale, w.shape[1] // scale, scale)
    ws = w.reshape(sh).sum(axis=(1, 3))
    vs = v.reshape(sh).sum(axis=(1, 3))
    sig = 40.0 / scale
    ws = ndimage.gaussian_filter(ws, sig, mode="nearest")
    vs = ndimage.gaussian_filter(vs, sig, mode="nearest")
    bg = vs / np.maximum(ws, 1e-6)
    zoom = (w.shape[0] / bg.shape[0], w.shape[1] / bg.shape[1])
    bg = ndimage.zoom(bg, zoom, order=1, mode="nearest", grid_mode=True)
    return bg[:ny, :nx]


def _threshold(corr, mask, options):
    """Threshold above the noise and at the particles' own contrast.

    The contrast level is the smaller of Otsu's threshold (background vs particles)
    and a fraction of the bright end, so that a few very absorbing inclusions do not
    lift it above the particles, nor does a frame with little particle area.
    """
    from skimage.filters import threshold_otsu

    resid = corr[~mask] if (~mask).any() else corr.ravel()
    med = np.median(resid)
    # pixel noise from a high-pass residual: blind to how much of the frame particles cover
    hp = corr - ndimage.gaussian_filter(corr, 4)
    noise = robust_sigma(hp) + 1e-12
    peak = np.percentile(corr, 99.5) - med
    otsu = threshold_otsu(corr[::2, ::2]) - med
    level = min(options.contrast_fraction * peak, otsu) if otsu > 0 else options.contrast_fraction * peak
    return float(med + max(options.noise_factor * noise, level))


#: :func:`hidden_objects`: objects left beside everything found, above this share of the frame's brightest level
#: (its 99.9th percentile over its median, lightly smoothed), compact and of a particle's size ...
SECOND_LOOK_LEVEL = 0.08
#: ... where nothing left is brighter than this share of it (a faint pre-edge frame of the stress family: the
#: matrix left beside the particles found reached 0.24-0.33 of it; beside a particle 6-8 times thicker than
#: the rest, 0.11-0.17)
SECOND_LOOK_RATIO = 0.22


def hidden_objects(img, fg, *, min_radius: float, max_radius: float):
    """Particles a far brighter one may have hidden: ``(hidden, near)`` masks, or None.

    Both detectors set their level from the frame's brightest objects: one particle far thicker than the rest
    (an edge step of 2.5-3 beside steps of 0.3-0.5) lifted it above the others, which were not found (4 or 5
    of 9 lost, by either detector, nothing said). The learned detector looks again where this finds objects
    (:meth:`xanestrack.models.detector.LearnedDetector._second_look`); the classical one does not (its own
    second look, a threshold taken again beside what was found, cost the real SSRL pair a particle vouched for
    and two of the test suite's scenes their accuracy). ``near``: what was found (``fg``) grown by 3 px; ``hidden``:
    the compact objects of a particle's size (radii in ``img``'s pixels) left beside it, above
    :data:`SECOND_LOOK_LEVEL` of the frame's brightest level, where nothing left is brighter than
    :data:`SECOND_LOOK_RATIO` of it (so that the level was the found objects', not the frame's noise or matrix).
    """
    sm = ndimage.gaussian_filter(np.asarray(img, np.float32), 1.0)
    med = float(np.median(sm))
    scale = float(np.percentile(sm, 99.9)) - med
    if not fg.any() or not scale > 0:
        return None
    near = ndimage.binary_dilation(fg, iterations=3)
    if near.all() or float(np.percentile(sm[~near], 99.9)) - med > SECOND_LOOK_RATIO * scale:
        return None
    lab, n = ndimage.label(((sm - med) > SECOND_LOOK_LEVEL * scale) & ~near)
    lo, hi = 2 * np.pi * min_radius**2, np.pi * max_radius**2
    hidden = np.zeros(fg.shape, bool)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        reg = lab[sl] == i
        if lo <= reg.sum() <= hi and _solidity(reg) >= 0.85:
            hidden[sl] |= reg
    return (hidden, near) if hidden.any() else None


def foreground_mask(frame, *, options: DetectOptions = DetectOptions()):
    """Binary particle mask of one OD frame, at the detector's binned resolution.

    Returns
    -------
    mask : ndarray of bool, shape (rows // binning, cols // binning)
    corrected : ndarray float32 (smoothed, background removed), same shape
    threshold : float
    """
    b = options.binning
    img = bin_frames(np.asarray(frame, dtype=np.float32), b)
    s = ndimage.gaussian_filter(img, options.sigma / b)
    corr = s - np.median(s)
    thr = _threshold(corr, np.zeros(s.shape, bool), options)
    mask = ndimage.binary_dilation(corr > thr, iterations=max(1, 6 // b))
    corr = s - _background(s, mask, max(1, options.background_scale // b))
    thr = _threshold(corr, mask, options)
    fg = ndimage.binary_fill_holes(corr > thr)
    return fg, corr, thr


def _solidity(region_mask):
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(region_mask)
    return float(region_mask.sum() / max(hull.sum(), 1))


def detect_particles(
    frame, *, frame_index: int = 0, options: DetectOptions = DetectOptions(), rescue: bool = True
) -> pd.DataFrame:
    """Detect particles in one optical-density frame.

    Parameters
    ----------
    frame : ndarray (rows, cols)
        Optical density (particles absorb: brighter than the background).
    frame_index : int
        Written in the ``frame`` column.
    options : DetectOptions
    rescue : bool
        Measure components too small to be particles again (``options.rescue_small``);
        :func:`detect_stack` turns it off for fewer than ``RESCUE_MIN_FRAMES`` frames.

    Returns
    -------
    DataFrame with columns ``DETECTION_COLUMNS``: centroid ``y, x`` (px), ``area``
    (px), equivalent ``radius``, bounding box ``y0, x0, y1, x1`` (exclusive end),
    ``solidity``, mean background-corrected ``contrast``, ``isolated`` (kept for
    tracking) and the ``reason`` a component was rejected (``border``, ``too_small``,
    ``too_large``, ``not_convex``; empty when isolated), ``touching`` (a piece of a component cut at its necks)
    and ``extent`` (px: how far its outline reaches from its centroid along its long axis, :func:`_region_extent`). Specks smaller than a 16th
    of the minimum area (or than :data:`SPECK_AREA` binned px) are not listed.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be 2-D (rows, cols), got shape {frame.shape}")
    if not np.all(np.isfinite(frame)):
        raise ValueError("frame contains NaN/inf; clean it first (xanestrack.stack.sanitize_stack)")
    fg, corr, thr = foreground_mask(frame, options=options)
    # the threshold sits at a fraction of the brightest particles' contrast: a faint particle's
    # core may not reach it at all (stress family: 10-13 px particles at 0.10-0.15 OD after the
    # edge beside 0.5-0.8): what stands above half of it is examined by the rescue as well
    seeds = corr > 0.5 * thr if rescue and options.rescue_small and thr > 0 else None
    return regions_table(
        fg,
        corr,
        frame_index=frame_index,
        binning=options.binning,
        options=options,
        image=corr if rescue else None,
        seeds=seeds,
    )


#: a non-convex component with no narrow neck is kept whole only this convex: below it, no one
#: body (SSRL 6-2c, classical, 8324 eV: a component of solidity 0.76 joined a particle and a
#: piece of its neighbour; kept, it took the place of the particle's track)
KEEP_SOLIDITY = 0.8

#: faint particles outlined too small are rescued (:func:`rescue_small`) only when the detector
#: examines at least this many frames: the linker then keeps a track only if it is seen in 2 of
#: them at least, repeated evidence (:class:`xanestrack.match.MatchOptions`). In a scan of two
#: frames one detection makes a track, and on the real SSRL 6-2c pair the rescued objects were pieces of larger structures or textured matrix,
#: or small particles vouched for 1.1-1.5 px off the frames' similarity (classical: its scale fit
#: moved from 0.99661 to 0.99512)
RESCUE_MIN_FRAMES = 3


#: binned px: components this small are not listed (specks), nor below a 16th of the smallest particle's
#: area. (A quarter before: a scan binned 2 x 2 lost a particle of radius 4.7 px, 6-9 binned px as the
#: detector outlined it at its binning of 2, from every table, and the note on objects too small to be
#: particles, which names the --min-radius that keeps them, never saw it.)
SPECK_AREA = 3


def regions_table(
    fg,
    corr,
    *,
    frame_index: int,
    binning: int,
    options: DetectOptions = DetectOptions(),
    image=None,
    seeds=None,
    split=None,
) -> pd.DataFrame:
    """The detection table of a binned foreground mask (shared by every detector).

    ``fg`` and ``corr`` (background-corrected intensity for the ``contrast`` column) are
    at ``binning`` times reduced resolution; coordinates are returned at full resolution.
    Components are kept as isolated particles by the size, border and convexity tests
    of ``options`` (see :func:`detect_particles`). With ``image`` (the binned frame) and
    ``options.rescue_small``, components too small to be particles are measured again on
    it (:func:`rescue_small`). ``split``: a finer foreground within ``fg`` (``fg`` less a
    closing of its gaps): a component of ``fg`` that it holds as two or more parts of a
    particle's size is that many touching particles (:func:`split_by`).
    """
    lab, n = ndimage.label(fg)
    rows = []
    if n:
        slices = ndimage.find_objects(lab)
        b = binning
        min_area = np.pi * (options.min_radius / b) ** 2
        max_area = np.pi * (options.max_radius / b) ** 2
        ny, nx = fg.shape
        border = max(1, int(np.ceil(options.border / b)))
        rescued, consumed = [], set()
        if image is not None and options.rescue_small:
            rescued, consumed = rescue_small(lab, image, min_area=min_area, options=options, binning=b, seeds=seeds)
        for i, sl in enumerate(slices, start=1):
            if sl is None or i in consumed:
                continue
            reg = lab[sl] == i
            area = int(reg.sum())
            if area < max(SPECK_AREA, min_area / 16):
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            reason = ""
            solidity = np.nan
            if y0 < border or x0 < border or y1 > ny - border or x1 > nx - border:
                reason = "border"
            elif area < min_area:
                reason = "too_small"
            elif area > max_area:
                reason = "too_large"
            else:
                solidity = _solidity(reg)
                if not _convex_enough(reg, solidity, options.min_solidity):
                    reason = "not_convex"
            pieces, small = [], []
            if reason == "border" and options.split_touching:
                # touching particles at the frame's border: those of them whole inside the frame are
                # particles like any other (a field full of particles: the real SSRL 6-2c frames' bottom
                # right agglomerate, two particles of radius 45-55 px inside the frame joined to two the
                # border cuts, all left out as one "border" component)
                pieces = [
                    q for q in cut_at_necks(reg, min_area, max_area) if not _touches_border(q, sl, fg.shape, border)
                ]
                if pieces:
                    rows += [_region_row(frame_index, piece, sl, corr, b, touching=True) for piece in pieces]
                    rows += _dropped_piece_rows(
                        frame_index, reg, pieces, [], sl, corr, b, min_area, rest_reason="border"
                    )
                    continue
            if reason in ("not_convex", "too_large") and options.split_touching:
                # touching particles and agglomerates: separated at the necks of the
                # distance transform, each piece tracked on its own ("touching"); the pieces
                # too small for a particle are listed as such (min_area plays no part in the cut)
                cut = cut_at_necks(reg, 0, max_area)
                pieces = [q for q in cut if q.sum() >= min_area]
                small = [q for q in cut if q.sum() < min_area] if pieces else []
                if not pieces and reason == "not_convex" and solidity < KEEP_SOLIDITY:
                    # one particle with fines stuck to its rim, too small for a neck to seed: cut free of them
                    # (only what would be rejected: a faint particle's ragged outline at 600 counts, kept whole at
                    # solidity 0.84, lost noise lumps as "fines" and its worst particle went 0.241 -> 0.284 px)
                    core = _without_fines(reg, min_area, options.min_solidity)
                    if core is not None:
                        pieces, small = core
                if not pieces and reason == "not_convex" and solidity >= KEEP_SOLIDITY:
                    # no narrow neck: one irregular particle (or an agglomerate that moves as
                    # one), kept whole; non-convex alone is no reason to give up a particle
                    # (stress-drift seed 1, classical: a 16-px particle was lost, or cut in
                    # halves at a neck 0.6 times its lobes' radius)
                    reason = ""
            if split is not None and not pieces and not reason and options.split_touching:
                # kept whole as one particle: unless a finer map holds it as touching ones (only here: where
                # the component was cut or left out as before, held-out stress-all seed 11 lost 0.07 px to
                # pieces of its agglomerates found otherwise from frame to frame)
                pieces = split_by(reg, split[sl], min_area, max_area) or split_by(
                    reg, _pieces_mask(cut_at_necks(reg & split[sl], min_area, max_area)), min_area, max_area
                )
            if pieces:
                rows += [_region_row(frame_index, piece, sl, corr, b, touching=True) for piece in pieces]
                rows += _dropped_piece_rows(frame_index, reg, pieces, small, sl, corr, b, min_area)
                continue
            rows.append(_region_row(frame_index, reg, sl, corr, b, solidity=solidity, reason=reason))
        rows += [_region_row(frame_index, reg, sl, corr, b, solidity=sol) for sl, reg, sol in rescued]
    out = pd.DataFrame(rows, columns=DETECTION_COLUMNS)
    return out.astype(_DTYPES)


def _convex_enough(reg, solidity, min_solidity) -> bool:
    """Whether a component (bool mask ``reg``, its ``solidity``) passes the detector's convexity test: its solidity at
    least ``min_solidity`` (relaxed by its size: pixelated small outlines have lower solidity) and its largest
    inscribed disc covering 0.6 of its area or more (two touching particles: it covers little)."""
    area = int(reg.sum())
    inscribed = np.pi * ndimage.distance_transform_edt(np.pad(reg, 1)).max() ** 2 / area
    return solidity >= min_solidity - 0.6 / np.sqrt(area) and inscribed >= 0.6


def _without_fines(reg, min_area, min_solidity):
    """``([core], fines)``: a component that is one particle with small bodies stuck to its rim by narrow necks (fines
    at the detector's binned resolution, too small for :func:`cut_at_necks` to seed), or None."""
    from skimage.morphology import disk

    pad = np.pad(reg, 1)
    inner = float(ndimage.distance_transform_edt(pad).max())
    ro = max(2, int(round(0.3 * inner)))
    opened = ndimage.binary_opening(np.pad(reg, ro), structure=disk(ro))[ro:-ro, ro:-ro]
    lab, n = ndimage.label(opened)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    core = lab == 1 + int(np.argmax(sizes))
    area = int(core.sum())
    if area < max(min_area, 0.6 * reg.sum()):
        return None
    if not _convex_enough(core, _solidity(core), min_solidity):
        return None
    rest, m = ndimage.label(reg & ~core)
    fines, grown = [], ndimage.binary_dilation(core)
    for j in range(1, m + 1):
        piece = rest == j
        a = int(piece.sum())
        if a >= min_area:
            return None  # a particle's size: not a fine
        if a < np.pi * ro**2 / 2:
            continue  # a sliver of the outline's rim
        contact = int((piece & grown).sum())
        width = 2 * float(ndimage.distance_transform_edt(np.pad(piece, 1)).max())
        if contact >= width:
            return None  # attached as wide as it is: part of the body (a crescent's tip), not a fine
        fines.append(piece)
    if not fines:
        return None
    return [core], fines


def _dropped_piece_rows(frame_index, reg, pieces, small, sl, corr, b, min_area, *, rest_reason=None) -> list:
    """Rows (not isolated, ``touching``) for what a cut of the component ``reg`` into ``pieces`` left out:
    ``small`` (pieces below ``min_area``: ``piece_too_small``) and the rest of ``reg`` outside every piece
    (pieces larger than a particle: ``piece_too_large``; ``rest_reason``, where given, is the reason of each
    rest piece of a particle's size or larger); specks are not listed (as in
    :func:`regions_table`). Without them such a piece left no row in any table, nothing said of it."""
    rows = []
    speck = max(SPECK_AREA, min_area / 16)
    taken = np.zeros_like(reg)
    for q in list(pieces) + list(small):
        taken |= q
        if q.sum() < min_area and q.sum() >= speck:
            rows.append(_region_row(frame_index, q, sl, corr, b, reason="piece_too_small", touching=True))
    rest, n = ndimage.label(reg & ~taken)
    for i in range(1, n + 1):
        q = rest == i
        if q.sum() >= speck:
            reason = "piece_too_small" if q.sum() < min_area else (rest_reason or "piece_too_large")
            rows.append(_region_row(frame_index, q, sl, corr, b, reason=reason, touching=True))
    return rows


def _touches_border(piece, sl, shape, border: int) -> bool:
    """Whether the mask ``piece`` over the slice ``sl`` of a frame of ``shape`` comes within ``border``
    px of the frame's edge (the border test of :func:`regions_table`)."""
    rows, cols = np.flatnonzero(piece.any(axis=1)), np.flatnonzero(piece.any(axis=0))
    y0, y1 = sl[0].start + rows[0], sl[0].start + rows[-1] + 1
    x0, x1 = sl[1].start + cols[0], sl[1].start + cols[-1] + 1
    return y0 < border or x0 < border or y1 > shape[0] - border or x1 > shape[1] - border


def _region_row(frame_index, region, sl, corr, b, *, solidity=None, reason: str = "", touching: bool = False):
    """The table row of a component, a piece of one or a rescued particle: the mask ``region``
    over the binned slice ``sl``; kept (``isolated``) where there is no ``reason``. ``solidity``
    None: computed (NaN: not examined)."""
    area = int(region.sum())
    py, px = np.nonzero(region)
    cy, cx = py.mean() + sl[0].start, px.mean() + sl[1].start
    # back to full-resolution pixel coordinates (bin centres)
    cy, cx = (cy + 0.5) * b - 0.5, (cx + 0.5) * b - 0.5
    area_full = area * b * b
    return (
        frame_index,
        cy,
        cx,
        area_full,
        np.sqrt(area_full / np.pi),
        (py.min() + sl[0].start) * b,
        (px.min() + sl[1].start) * b,
        (py.max() + 1 + sl[0].start) * b,
        (px.max() + 1 + sl[1].start) * b,
        _solidity(region) if solidity is None else solidity,
        float(corr[sl][region].mean()),
        reason == "",
        reason,
        touching,
        _region_extent(py, px, b),
    )


def _region_extent(py, px, b: int) -> float:
    """px at full resolution: how far a component (its pixels ``py, px`` at binning ``b``) reaches from its
    centroid along its long axis: its major semi-axis, twice the root of the largest eigenvalue of its pixels'
    second moments (a disc of radius r: r; an ellipse: its semi-major axis; a rod: its half-length or a little
    more). An elongated particle reaches well beyond its equivalent radius (a rod of aspect 6: 2.4 radii), which
    sizes the windows it is followed and outlined in (:func:`xanestrack.register.window_radius`). The moments, not
    the farthest pixel: a round particle's lobe or a fine on its rim reaches far but moves them little (the real
    SSRL pair's irregular particles reach 1.3-1.7 radii by their farthest pixel)."""
    if len(py) < 2:
        return 0.5 * b
    cov = np.cov(np.vstack([py, px]).astype(float), bias=True)
    return float(2.0 * np.sqrt(max(np.linalg.eigvalsh(cov)[-1], 0.0) + 1.0 / 12.0) * b)


def rescue_small(lab, image, *, min_area: float, options: DetectOptions, binning: int, snr: float = 5.0, seeds=None):
    """Faint particles that a detector outlined too small, measured at their own contrast.

    A detector's threshold (or a learned map) can keep only the brightest part of a
    small, faint or textured particle (stress family: a 10-px particle outlined 4-8 px
    in every frame, with both detectors; its post-edge contrast 6 times the noise).
    Every component of ``lab`` smaller than ``min_area`` (binned px) is examined in a
    window of ``image`` (the binned frame, lightly smoothed here) around it: if it
    stands ``snr`` noise deviations above the window's background, its particle is the
    connected region above half its height (90th percentile of the seed) that holds
    most of the seed. That region is kept when it lies inside the window (not part of
    something larger), touches no component of at least ``min_area`` (a neighbour, an
    agglomerate), is at most ``options.max_radius`` large, at least ``min_area``, not at
    the frame's border, and as convex as the region tests ask. Fines stay fines: their
    half-maximum outline is as small as they are.

    ``seeds`` (bool, the binned frame's shape): more places to examine so, each connected
    piece not touching a component of ``lab`` (e.g. a lower threshold's objects, where a
    faint particle's core did not reach the detector's own threshold at all).

    Returns
    -------
    rescued : list of (slice pair, bool mask, float)
        Binned-frame slices, the region inside them and its solidity, one per particle.
    consumed : set of int
        Labels of ``lab`` inside a rescued region (their own rows are replaced).
    """
    b = binning
    img = ndimage.gaussian_filter(np.asarray(image, np.float32), 1.0)
    n_lab = int(lab.max())
    areas = np.bincount(lab.ravel(), minlength=n_lab + 1)
    areas[0] = 0
    big = (areas >= min_area)[lab]
    small = np.flatnonzero((areas > 0) & (areas < min_area))
    max_area = np.pi * (options.max_radius / b) ** 2
    if seeds is not None:
        extra, n_extra = ndimage.label(seeds & ~ndimage.binary_dilation(lab > 0, iterations=2))
        if n_extra:
            lab = np.where(extra > 0, extra + n_lab, lab)
            sizes = np.bincount(extra.ravel(), minlength=n_extra + 1)[1:]
            small = np.r_[small, n_lab + 1 + np.flatnonzero(sizes <= max_area)]
    if small.size == 0:
        return [], set()
    border = max(1, int(np.ceil(options.border / b)))
    ny, nx = lab.shape
    h = int(np.ceil(2.5 * options.min_radius / b)) + 4
    com = ndimage.center_of_mass(np.ones_like(lab), lab, small)
    taken = np.zeros(lab.shape, bool)
    rescued, consumed = [], set()
    for i, (cy, cx) in zip(small, com):
        if i in consumed:
            continue
        y0, y1 = max(0, int(cy) - h), min(ny, int(cy) + h + 1)
        x0, x1 = max(0, int(cx) - h), min(nx, int(cx) + h + 1)
        lw, w = lab[y0:y1, x0:x1], img[y0:y1, x0:x1]
        seed = lw == i
        back = w[lw == 0]
        if back.size < w.size // 4:
            continue
        bg = float(np.median(back))
        noise = robust_sigma(back) + 1e-12
        peak = float(np.percentile(w[seed], 90))
        if peak - bg < snr * noise:
            continue
        regions, _ = ndimage.label(w > bg + 0.5 * (peak - bg))
        ids, counts = np.unique(regions[seed], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if ids.size == 0:
            continue
        reg = ndimage.binary_fill_holes(regions == ids[np.argmax(counts)])
        area = int(reg.sum())
        # alone on a flat background: the surroundings' bright end (5 % of them) must stay
        # below a third of the particle's height (a piece of a larger bright structure or of
        # textured matrix has bright surroundings)
        around = w[~ndimage.binary_dilation(reg, iterations=2) & (lw == 0)]
        if around.size < w.size // 4:
            continue
        level = float(np.median(around))
        if np.percentile(around, 95) - level > (peak - level) / 3:
            continue
        # the region, not the window around it, must keep off the frame's border (a window
        # clipped by the frame's edge lost every particle within 13 binned px of it: stress-drift
        # seed 10, classical, a 10-px particle 27 px from the border, never rescued)
        rows, cols = np.flatnonzero(reg.any(axis=1)), np.flatnonzero(reg.any(axis=0))
        if (
            reg[0].any()
            or reg[-1].any()
            or reg[:, 0].any()
            or reg[:, -1].any()
            or (reg & big[y0:y1, x0:x1]).any()
            or not min_area <= area <= max_area
            or y0 + rows[0] < border
            or x0 + cols[0] < border
            or y0 + rows[-1] + 1 > ny - border
            or x0 + cols[-1] + 1 > nx - border
        ):
            continue
        sl = (slice(y0, y1), slice(x0, x1))
        if (reg & taken[sl]).any():
            continue
        solidity = _solidity(reg)
        if solidity < options.min_solidity - 0.6 / np.sqrt(area):
            continue
        taken[sl] |= reg
        consumed.update(int(v) for v in np.unique(lw[reg]) if 0 < v <= n_lab)
        rescued.append((sl, reg, solidity))
    return rescued, consumed


def _pieces_mask(pieces):
    """The pieces of :func:`cut_at_necks` as one label-free mask whose parts are the pieces (False if none)."""
    if not pieces:
        return False
    out = np.zeros(pieces[0].shape, bool)
    for p in pieces:
        out |= ndimage.binary_erosion(p)  # apart from each other
    return out


def split_by(reg, finer, min_area, max_area):
    """Pieces of ``reg`` (bool masks) where ``finer`` (a mask within it) holds two or more parts of at
    least ``min_area``, else [].

    Each part seeds a piece, and the pixels of ``reg`` outside the parts go to the nearest one
    (watershed on the distance transform), so that the pieces cover ``reg``; pieces larger than
    ``max_area`` are dropped. The learned detector's map, closed to fill the notches of particles
    with strong inner contrast, also closes the gap between touching particles: both pairs of a
    scene of three touching pairs whose members stood apart in the map before the closing were
    reported as one isolated particle each (their chemistry maps mixing the two).
    """
    from skimage.segmentation import watershed

    lab, n = ndimage.label(np.asarray(finer, bool) & reg)
    if n < 2:
        return []
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    big = np.flatnonzero(areas >= min_area) + 1
    if big.size < 2:
        return []
    markers = np.where(np.isin(lab, big), lab, 0)
    ws = watershed(-ndimage.distance_transform_edt(reg), markers, mask=reg)
    pieces = [ws == k for k in big]
    return [p for p in pieces if p.sum() <= max_area]


def cut_at_necks(reg, min_area, max_area, *, neck: float = 0.4):
    """Pieces of a component of touching particles (bool masks), or [] if it is one particle.

    Every maximum of the distance transform (1 px of relief) seeds a basin of its watershed;
    adjacent basins are merged, the shallowest neck first, unless the neck between them is
    narrow for the *smaller* of the two bodies: its saddle (the largest inscribed radius
    along their common boundary) at most ``1 - neck`` times that body's inscribed radius.
    So a small particle or fine on a large one's flank is cut off at its neck, while the
    lobes of one irregular particle (wide necks) stay one piece. Pieces outside the size
    range are dropped (a fine cut off a particle is not part of its piece).
    """
    from scipy.cluster.hierarchy import DisjointSet
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    pad = np.pad(reg, 1)
    dist = ndimage.distance_transform_edt(pad)
    if dist.max() < 2:
        return []
    markers, nm = ndimage.label(h_maxima(dist, 1.0))
    if nm < 2:
        return []
    ws = watershed(-dist, markers, mask=pad)
    peak = np.asarray(ndimage.maximum(dist, ws, index=np.arange(1, nm + 1)), float)
    # the saddle between two adjacent basins: the largest min(dist) over neighbouring pixel pairs
    keys, saddles = [], []
    for a, b, da, db in (
        (ws[:, :-1], ws[:, 1:], dist[:, :-1], dist[:, 1:]),
        (ws[:-1, :], ws[1:, :], dist[:-1, :], dist[1:, :]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        la, lb = a[m], b[m]
        keys.append(np.minimum(la, lb).astype(np.int64) * (nm + 1) + np.maximum(la, lb))
        saddles.append(np.minimum(da[m], db[m]))
    keys, saddles = np.concatenate(keys), np.concatenate(saddles)
    if keys.size == 0:
        return []
    order = np.lexsort((saddles, keys))
    keys, saddles = keys[order], saddles[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # the largest saddle of each pair
    pairs, sad = keys[last], saddles[last]
    ia, ib = pairs // (nm + 1) - 1, pairs % (nm + 1) - 1
    # shallowest necks first (highest saddle for the smaller body)
    order = np.argsort(-sad / np.minimum(peak[ia], peak[ib]), kind="stable")
    basin_area = np.bincount(ws.ravel(), minlength=nm + 1)[1:]

    def merged(narrow, among=None):
        """Basins merged across every neck not narrow (``narrow`` = 1 - neck) for the smaller of
        the two bodies, only those in ``among`` (default all): a list of sets of basins."""
        bodies, top = DisjointSet(range(nm)), peak.copy()
        for k in order:
            a, b = int(ia[k]), int(ib[k])
            if among is not None and not (a in among and b in among):
                continue
            ra, rb = bodies[a], bodies[b]
            if ra != rb and sad[k] > narrow * min(top[ra], top[rb]):
                bodies.merge(ra, rb)
                top[bodies[ra]] = max(top[ra], top[rb])
        # in the order of their roots (the order the pieces were always listed in)
        groups = sorted(bodies.subsets(), key=lambda g: bodies[next(iter(g))])
        return [g for g in groups if among is None or g <= among]

    groups = merged(1.0 - neck)
    if len(groups) < 2:
        return []

    # a body too large for any particle, in a group already cut, is several particles whose necks
    # are wide (large particles overlapping): cut it again at stricter necks, the first at which
    # every piece fits (stress-crowd seed 9, learned: three particles of 36-44 px merged into one
    # body of 68 px, which was dropped with them)
    def fitted(g):
        """``g`` itself, or where too large for a particle, its pieces at the first stricter necks
        at which every piece fits."""
        if basin_area[list(g)].sum() <= max_area or len(g) < 2:
            return [g]
        for narrow in (0.7, 0.8, 0.9):
            sub = merged(narrow, g)
            if len(sub) > 1 and all(basin_area[list(q)].sum() <= max_area for q in sub):
                return sub
        return [g]

    out_groups = [piece for g in groups for piece in fitted(g)]
    lab = np.zeros(nm + 1, int)
    for i, g in enumerate(out_groups, start=1):
        lab[[b + 1 for b in g]] = i
    pieces = lab[ws][1:-1, 1:-1]
    out = []
    for r in range(1, len(out_groups) + 1):
        piece = pieces == r
        a = int(piece.sum())
        if min_area <= a <= max_area:
            out.append(piece)
    return out


_DTYPES = {
    "frame": int,
    "y": float,
    "x": float,
    "area": float,
    "radius": float,
    "y0": int,
    "x0": int,
    "y1": int,
    "x1": int,
    "solidity": float,
    "contrast": float,
    "isolated": bool,
    "reason": object,
    "touching": bool,
    "extent": float,
}


def detect_stack(od, *, options: DetectOptions = DetectOptions(), frames=None, progress=None) -> pd.DataFrame:
    """Detect particles in every frame (or the given frame indices) of a stack."""
    idx = range(od.shape[0]) if frames is None else frames
    out = []
    rescue = len(idx) >= RESCUE_MIN_FRAMES
    for j, k in enumerate(idx):
        out.append(detect_particles(od[k], frame_index=int(k), options=options, rescue=rescue))
        if progress is not None:
            progress(j + 1, len(idx))
    out = [d for d in out if len(d)]
    if not out:
        return empty_detections()
    return pd.concat(out, ignore_index=True)


def detector_with_options(detector, options: DetectOptions):
    """``detector`` as it runs with ``options``.

    A detector that carries :class:`DetectOptions` of its own (``detector.options``, as
    :class:`xanestrack.models.detector.LearnedDetector` does) made for other ones is copied (its model
    shared) with ``options``; its ``binning``, where it followed the old options (an explicit
    ``binning`` is kept), follows the new ones. Any other callable is returned as it is.

    A learned detector made once (:func:`xanestrack.models.pipeline_models`) and run with other
    ``options.detect`` kept its own size tests and binning, while the result recorded the new ones
    (a 9.6 px particle kept with ``min_radius`` 12).

    Raises
    ------
    ValueError
        Where such a detector cannot be copied with other options: build it again with them.
    """
    own = getattr(detector, "options", None)
    if not isinstance(own, DetectOptions) or own == options:
        return detector
    import copy

    try:
        new = copy.copy(detector)
        new.options = options
        binning = getattr(detector, "binning", None)
        if binning is not None:
            from .models.detector import detector_binning

            if binning == detector_binning(own.max_radius, own.binning):
                new.binning = detector_binning(options.max_radius, options.binning)
    except (AttributeError, TypeError) as exc:
        raise ValueError(
            f"the detector was made with other DetectOptions than options.detect and cannot be given these "
            f"({exc}): make it again with the options you run (pipeline_models(..., options=options))"
        ) from None
    return new


def empty_detections() -> pd.DataFrame:
    return pd.DataFrame(columns=DETECTION_COLUMNS).astype(_DTYPES)
