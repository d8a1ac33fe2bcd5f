"""Each particle's outline across the scan: its size and shape trends (a crack widening, a rim moving, a
turn), and the pixels filled rather than measured where its mask lay over a patch of the input without values.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import ndimage

from . import xanes
from .morph import frame_blocks
from .resolution import (
    _blur_frames,
    _measured_frames,
)
from .robust import robust_sigma
from .words import count, frame_list

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
    # each frame's area in float64, a block of frames at a time (the same sums): the whole stack in float64 and
    # nansum's copy of it were the run's peak at its end (a 113-px particle's 307-px windows: 2 x 103 MiB)
    n, h, w = np.shape(masks)
    area = np.empty(n)
    for b in frame_blocks(n, h * w, xanes.BLOCK_PX):
        area[b] = np.nansum(np.asarray(masks[b], float), axis=(1, 2))
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
#: px, and standard errors: a particle whose outline turns across the scan (:func:`_outline_turns`: a small-angle
#: rotation fitted to each frame's weights against their mean, which a square, a hexagon or a triangle show as an
#: ellipse does, where their second moments do not) so that its farthest pixels (``extent``, from its centre)
#: move by both this much or more has its rim flagged. Judged by how far its pixels move (``extent x angle``),
#: not by how far its outline moves across itself: the probe's ellipse 48 x 24 px turning 3 degrees moved its
#: outline by (a - b) x angle = 0.63 px, under :data:`OUTLINE_SHAPE_PX`, and left 3.8 % of its kept pixels more
#: than 0.5 eV off (a rod 48 x 16: 8.1 %); a square of 24 px equivalent radius turning 4 degrees 7.6 % (up to
#: 2.7 eV), its second moments unchanged. Read on them: the square 4.6 degrees (+2.65 +- 0.10 px), a hexagon turning
#: 3 degrees 1.17 +- 0.15 px, a triangle turning 2 degrees 1.01 +- 0.07 (another draw: 0.73 +- 0.11, 6.8 standard
#: errors; 75 kept pixels more than 0.5 eV off), the ellipse 1.29 +- 0.07, a square turning 1 degree 0.55 (17 kept
#: pixels off, up to 1.5 eV: not flagged); the same particles not turning within 0.32 px and 2.0 standard errors.
#: Particles left as they are: the default scene (seeds 1-3, 256 px, 60 energies) within 1.9 standard errors, the
#: stress scenes (drift, counts, fines, jitter, magnification, crowd, all; seed 1, 256 px) 3.2, none flagged (round
#: ones read up to 4.5 px: their angle is noise, its standard error says so). Trends within each side of the edge
#: only, as the size's: over the whole scan the stress-magnification scene's particles read turns of 6.6-9.0
#: standard errors
OUTLINE_TURN_PX = 0.6
OUTLINE_TURN_Z = 6.0
#: px: a turn is flagged only where it also moves the outline across itself by this much or more (the angle times
#: the outline's largest lever across itself, :func:`_outline_turns`): a round particle's outline shows no turn
#: (its pixels' texture moves, its outline does not: the probe's round particle of radius 20 px turned by 4
#: degrees kept its E50 as unturned, 1 pixel more than 0.5 eV off; one turned by 6 degrees moved its outline by
#: 0.22 px, its E50 0.113 against 0.102 eV), where the ellipse turning 3 degrees above moved it by 0.63 px
TURN_MIN_ACROSS_PX = 0.3
#: px: nor where the outline's lever across itself (:func:`_outline_turns`) is under this: a roundish outline's
#: (0.8-1.3 px on the default scenes' round particles, from its pixels) leaves the angle unconstrained, its fit
#: amplifying any other change of shape: a focus drifting astigmatically (0 -> 3 px sd in y, 0.6 in x) read a
#: particle of 10 px (lever 0.8 px) as turning 68 degrees, beyond 6 standard errors
TURN_MIN_LEVER_PX = 3.0
#: px: the Gaussian sd the weights are smoothed by before a turn is fitted to them (:func:`_outline_turns`): the
#: rotation's derivative needs the template's gradient over more than the outline's one or two pixels
TURN_FIT_SMOOTH_PX = 1.0
#: particles (at least) elongated as :data:`TURN_MIN_ELONGATION` whose median stretch is taken as the one the
#: particles share (the field magnified; :func:`_shared_shape_factor`; not their turn)
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


def _outline_weights(p, n_frames: int, blur=None, dtype=float) -> tuple | None:
    """A particle's soft weights per frame for its shape and turn, and the frames they are measured on: ``(weights,
    shape, frames (n,) bool)``, ``weights(b)`` those of a block ``b`` of frames (a slice), ``shape`` theirs ``(n, h,
    w)``: its aligned soft masks (NaN made 0, as ``dtype``), or where the frames are brought to the scan's coarsest
    resolution (``blur``) :func:`_matched_outline_weights`. A block at a time: the whole stack's float64 copies
    were a large particle's (radius 113 px, 143 frames) 206 MiB beside every particle's results. None without
    masks or frames."""
    masks = getattr(p, "masks", None)
    frames = _measured_frames(p)
    if masks is None or frames is None or len(masks) != n_frames:
        return None
    matched = None
    if blur is not None and np.any(np.asarray(blur) > 0) and len(blur) == n_frames:
        matched = _matched_outline_weights(p, np.asarray(blur, float))
    if matched is not None:
        return (lambda b: matched[b]), matched.shape, np.asarray(frames, bool)
    return (lambda b: np.nan_to_num(np.asarray(masks[b], dtype))), np.shape(masks), np.asarray(frames, bool)


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
    none = np.full(n_frames, np.nan + 0j), np.full(n_frames, np.nan), np.zeros(n_frames, bool)
    weights = _outline_weights(p, n_frames, blur)
    if weights is None:
        return none
    weight, (n, h, wd), frames = weights
    y, x = -np.arange(h, dtype=float), np.arange(wd, dtype=float)  # y up: angles counter-clockwise as shown
    wy, wx, wyx = np.empty((n, h)), np.empty((n, wd)), np.empty(n)
    for b in frame_blocks(n, h * wd, xanes.BLOCK_PX):  # each frame's moments its own: a block at a time
        w = weight(b)
        wy[b], wx[b] = w.sum(axis=2), w.sum(axis=1)  # (n, h), (n, w)
        wyx[b] = np.einsum("nij,i,j->n", w, y, x)
        del w
    area = wy.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        my, mx = wy @ y / area, wx @ x / area
        cyy = wy @ (y * y) / area - my**2
        cxx = wx @ (x * x) / area - mx**2
        cxy = wyx / area - my * mx
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


def _outline_turns(p, n_frames: int, blur=None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A particle's turn in each frame, fitted to its outline: ``(angle, used, extent, lever)`` (rad per frame,
    counter-clockwise as the image is shown, NaN where not fitted; bool per frame; px; px).

    Each frame's weights (:func:`_outline_weights`: its soft mask, or its window matched to the scan's coarsest
    resolution and scaled 0-1 by its own levels, so blind to the contrast across the edge), smoothed by
    :data:`TURN_FIT_SMOOTH_PX`, less their mean over the frames ``used`` (the template ``T``), fitted by least
    squares with the template's derivatives along a small turn about its centre (``r x grad T``), a shift in y
    and in x (what the registration left) and a growth (``r . grad T``). The second moments (:func:`_outline_shapes`)
    see a turn only as far as the outline is elongated: a square, a hexagon or a triangle has the moments of a
    disc, and turned by 4 degrees read no change of shape while its corners swept 2 px (the probe's facets). A
    round outline gives the turn nothing to hold on to: its angle is noise, with its spread
    (:func:`_outline_change`'s standard error) to say so. ``extent``: the farthest pixel of the particle's mask
    from its centre (its pixels move by up to ``extent x angle``); ``lever``: the outline's 95th percentile of
    ``|r x n|`` (``n`` its normal, where the template's gradient is half its largest or more), the most a turn
    by ``angle`` moves the outline across itself per radian (an ellipse's ``a - b``, a square's half side, a
    disc's about 0).

    Where the frames are brought to the scan's coarsest resolution (``blur``), two stretches (along the rows and
    columns, and along the diagonals: ``(x, -y) . grad T``, ``(y, x) . grad T``) are fitted with the turn: a focus
    drifting astigmatically stretches each outline, which turns a tilted elongated one's axis (0 -> 3 px sd in y,
    0.6 in x: a static particle of 16 px read as turning 8 degrees, 5.5 standard errors). An ellipse's turn is
    then taken up by the stretch (on an ellipse the two move the outline alike); its second moments still see it
    (:func:`_outline_shape_change`, the stretch the particles share taken out there), a square's turn not.
    """
    nan = np.full(n_frames, np.nan)
    weights, mask = _outline_weights(p, n_frames, blur, np.float32), getattr(p, "mask", None)
    mask = np.zeros((0, 0), bool) if mask is None else np.asarray(mask, bool)
    if weights is None or mask.ndim != 2 or not mask.any():
        return nan, np.zeros(n_frames, bool), float("nan"), float("nan")
    weight, shape, frames = weights
    # float32 and the small normal equations frame by frame (not lstsq over the whole stack): a particle of r 120 px
    # (325-px window, 143 frames) took 4.2 s and 476 MB more peak memory so; smoothed a block of frames at a time
    # (each frame on its own) into one array
    w = np.empty(shape, np.float32)
    for b in frame_blocks(shape[0], shape[1] * shape[2], xanes.BLOCK_PX):
        w[b] = ndimage.gaussian_filter(np.asarray(weight(b), np.float32), (0, TURN_FIT_SMOOTH_PX, TURN_FIT_SMOOTH_PX))
    used = frames & (w.sum(axis=(1, 2)) > 0)
    if used.sum() < 2 or w.shape[1:] != mask.shape:
        return nan, used, float("nan"), float("nan")
    template = (w if used.all() else w[used]).mean(axis=0)  # no copy of every frame where all are used
    gy, gx = np.gradient(template)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(float)
    total = template.sum()
    ry, rx = yy - (template * yy).sum() / total, xx - (template * xx).sum() / total
    spin = gy * rx - gx * ry  # the template's change per radian turned counter-clockwise as shown (rows down)
    design = np.c_[spin.ravel(), gy.ravel(), gx.ravel(), (gy * ry + gx * rx).ravel()]
    if blur is not None and np.any(np.asarray(blur) > 0):  # an astigmatic focus drift's stretches (rows down)
        design = np.c_[design, (gx * rx - gy * ry).ravel(), (gx * ry + gy * rx).ravel()]
    design = design.astype(np.float64)
    rhs = np.stack([(w[k] - template).reshape(-1).astype(np.float64) @ design for k in np.flatnonzero(used)])
    coef = np.linalg.lstsq(design.T @ design, rhs.T, rcond=None)[0]
    angle = nan.copy()
    angle[used] = coef[0]
    my, mx = np.nonzero(mask)
    extent = float(np.hypot(my - my.mean(), mx - mx.mean()).max() + 0.5)
    grad = np.hypot(gy, gx)
    outline = grad >= 0.5 * grad.max() if grad.max() > 0 else grad > 0
    lever = float(np.percentile(np.abs(spin[outline]) / grad[outline], 95)) if outline.any() else float("nan")
    return angle, used, extent, lever


def _shared_shape_factor(changes, befores, radii) -> complex:
    """The stretch of the particles' shapes they share: ``q`` with its change across the scan over ``q`` before the
    edge (:func:`_outline_shape_change`), the median of its size ``|ratio|`` over the particles elongated at least
    :data:`TURN_MIN_ELONGATION` (:data:`SHARED_SHAPE_MIN_PARTICLES` or more; 1 with fewer), as :func:`_shared_change`
    takes out a size change they share (a magnification; 0.4 % of a rim is harmless).

    Their median turn is not taken out (it was, as a field's): each particle is registered by a translation only,
    ``--rotation`` too (it fits the field's turn to the positions, it does not turn the windows), so a turn the
    particles share sweeps their rims as much as one of their own. And particles that turn on their own alike are
    not a field that turns: the probe's four elongated particles turning 2-5 degrees counter-clockwise, their centres
    still, had the turn cleared as the field's (the 5-degree one: 0 pixels flagged, 110 kept more than 0.5 eV off,
    up to 1.55 eV; alone among round particles 422 flagged, none off).
    """
    c, b, r = (np.asarray(v) for v in (changes, befores, radii))
    ok = np.isfinite(c) & np.isfinite(b) & np.isfinite(r) & (r > 0)
    ok[ok] &= np.abs(b[ok]) >= TURN_MIN_ELONGATION * r[ok]
    if ok.sum() < SHARED_SHAPE_MIN_PARTICLES:
        return 1.0 + 0j
    ratio = (b[ok] + c[ok]) / b[ok]
    return complex(np.median(np.abs(ratio)))


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


def _own_turn_clause(angle: float, extent: float, across: float) -> str:
    """A particle's turn across the scan (:func:`_outline_turns`) in words: the angle, how far its farthest pixels
    move and how far its outline moves across itself."""
    return (
        f"turns by {np.degrees(abs(angle)):.1f} degrees ({'counter-' if angle > 0 else ''}clockwise as shown; its "
        f"farthest pixels, {extent:.0f} px from its centre, move by {abs(angle) * extent:.1f} px, its outline by up to "
        f"{across:.2f} px across itself)"
    )


def _moving_rim_note(clauses: list, depth: int, n_px: int, n_mask: int) -> str:
    return (
        f"{MOVING_RIM_NOTE}: it {' and '.join(clauses)} (its own: a change of size or a stretch the particles "
        "share taken out, not a turn, which no window's registration undoes), "
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
    :func:`_outline_shape_change`), less the stretch the particles share (:func:`_shared_shape_factor`) and the
    shape its own turn made, flagged where it reaches :data:`OUTLINE_SHAPE_PX` and
    :data:`OUTLINE_SHAPE_Z` standard errors. Its turn: fitted to its outline frame by frame (:func:`_outline_turns`,
    which sees a square's turn as an ellipse's), its trend across the scan (as the radius's) times its extent, how
    far its farthest pixels move, flagged where it reaches :data:`OUTLINE_TURN_PX` and :data:`OUTLINE_TURN_Z`
    standard errors and moves its outline across itself by :data:`TURN_MIN_ACROSS_PX` or more; no turn is taken
    out as the particles' shared one (no window is turned, ``--rotation`` included). Where the frames were brought
    to the scan's coarsest resolution (``blur``, each frame's Gaussian sd, :func:`_resolution_blur`), measured on
    the windows so blurred (a focus drifting from 0 to 2.5 px across the scan read as a change of shape of 1.51 px
    on the segmented masks), the stretch the particles share there taken out first (:func:`_shared_stretch`). The
    mask's pixels within half the changes flagged (a turn's: how far it moves the outline across itself) plus
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
    # each one's turn, fitted to its outline (not its second moments, blind to a square's turn), judged by how far
    # its pixels move (extent x angle); none taken out as shared: no window is turned by the registration
    turned = []
    for p, c in zip(particles, clear):
        angle, used, extent, lever = _outline_turns(p, n, blur)
        sweep, sweep_sigma, _ = _outline_change(extent * angle, used & c, energies, float(p.e0_ev))
        turned.append((sweep, sweep_sigma, extent, lever))
    if gaps:  # the frames left out, kept for redo_xanes (which has no gaps: _filled_frames reads them back)
        particles = [dataclasses.replace(p, filled_frames=None if c.all() else ~c) for p, c in zip(particles, clear)]
    out = []
    for p, (change, sigma, radius), (dq, dq_sigma, before), (_, semi, used), (sweep, sweep_sigma, extent, lever) in zip(
        particles, measured, shaped, shapes, turned
    ):
        notes = tuple(x for x in p.notes if not x.startswith(MOVING_RIM_NOTE))
        change = change - shared * radius
        dq = before + dq - factor * before  # its own: the shape the shared stretch made of it taken out
        angle = sweep / extent if extent > 0 else float("nan")
        if np.isfinite(angle) and np.isfinite(before):  # the shape its turn made (judged below by the turn's own)
            dq -= before * (np.exp(2j * angle) - 1)
        clauses, moved = [], 0.0
        if p.quality_assessed and radius > 0:
            if abs(change) >= OUTLINE_CHANGE_PX and abs(change) >= OUTLINE_CHANGE_Z * sigma:
                clauses.append(
                    f"{'grows' if change > 0 else 'shrinks'} by {abs(100 * change / radius):.1f} % ({change:+.2f} px "
                    "in radius)"
                )
                moved += abs(change)
            across = abs(angle) * lever
            if (
                abs(sweep) >= OUTLINE_TURN_PX
                and abs(sweep) >= OUTLINE_TURN_Z * sweep_sigma
                and across >= TURN_MIN_ACROSS_PX
                and lever >= TURN_MIN_LEVER_PX
            ):
                clauses.append(_own_turn_clause(angle, extent, across))
                moved += across
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
            f"(saturated flat or detector pixels: see the input's notes) in {count(len(frames), 'frame')} its XANES "
            f"used ({frame_list(frames, energies)}); they were filled from the patch's rim, so their spectra there "
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
        f"detector pixels: see the input's notes) in {count(len(frames), 'frame')} "
        f"({frame_list(frames, energies)}), up to {max(int(g.sum()) for _, g in gaps)} pixels in one, "
        f"{count(n_patches, 'patch').replace('patchs', 'patches')} centred near {where}"
        f"{' ...' if n_patches > 3 else ''}: filled from their rim (the frame's median there would be background "
        "inside a particle); "
        + (
            f"the pixels of {count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}"
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


#: the share of a particle's level above its local background at which the outline its lobes are sought in is
#: drawn (:func:`outline_lobes`), on the mean of its aligned frames past the edge (the image its size is measured
#: on, :func:`xanestrack.result.outline_relief`). At half height the neck between two touching spheres is as wide as
#: their contact: the probe's touching pairs and trios (radius 22-36 px, contacts 32-44 px long, 40 energies) read
#: a saddle of the outline's distance transform of 0.60-0.875 of the smaller lobe's inscribed radius where their
#: geometry gives 0.67-0.875, on both paths alike; their consensus masks, which the learned segmenter rounds, read
#: 0.675-0.975 (a pair at 0.81 not split at all)
LOBE_LEVEL_SHARE = 0.5
#: lobes of that outline are taken for touching particles where the saddle of its distance transform between them
#: is at most this share of the smaller one's inscribed radius (the detector cuts a component at 0.6:
#: :func:`xanestrack.detect.cut_at_necks`; between the two, touching particles are kept whole as one, and said to
#: be perhaps several). Measured at half height (:data:`LOBE_LEVEL_SHARE`): every particle of the stress family
#: (seven cases, seeds 1-2, full size, both paths, 367 particles) 0.95 or more, the probe's lobed particle (three
#: ellipses, one body) 1.0 (no saddle below), none under it on the default scenes (seeds 1-4) and the hard preset
#: (seeds 1-2); the real SSRL pair's largest particle, whose consensus mask takes in a touching particle of radius
#: about 27 px at its upper right, 0.55; the default scene model's touching pairs kept whole as one track, 0.28-0.33
LOBE_NECK = 0.85
#: pixels of a lobe with an E50 (in the particle's core, kept by the quality masks) for its median to be given
LOBE_MIN_E50_PIXELS = 20
#: px: lobes whose positions against each other (:func:`_lobes_apart`) stray from their median by more than this in
#: the 95th percentile of the frames vouched for are said to move otherwise, not as one body. The probe's pairs, trio
#: and chain of three held together, both paths: 0.13-0.31 px (the lobes' chemistry differs: their contrast changes
#: otherwise across the edge); one member sliding 2 px against the next across the scan: 0.59-1.75 px (3.5 px: 1.18
#: and, the trio, 3.08); frame-to-frame noise 0.02-0.12 px
LOBES_APART_PX = 0.5
#: px: the margin around a lobe (grown by 4 px) its correlation window takes in (:func:`_lobes_apart`)
LOBE_WINDOW_MARGIN = 8
#: how a particle's note on the lobes of its outline begins (the run note gathers them: :func:`_lobes_run_note`)
LOBES_NOTE = "its outline at half height has"
#: a lobe of a particle's outline is the particle's own where it holds the particle's position (its window's centre)
#: and is at least this many times as large as every other lobe: the others are touching particles beside it, left
#: out of its mask before its chemistry (:func:`neighbour_lobes_left_out`). The probe's particles of radius 34 px
#: with a 14-px one of other chemistry touching them (0.1 / 0.9 LiNiO2, necks 0.17-0.63 at half height; 5.9 times
#: the area): their mean E50 +0.13 eV (2.8-3.5 sigma) off the same particle alone, both paths; the real SSRL pair's
#: largest particle and the 27-px particle its consensus mask took in: 32-33 times; the default scene model's 21-px
#: particle with an 11-px one: 4.1 times. Pairs of more alike size (that model's 14- and 10-px pair: 2.0 times) are
#: one of them no more than the other: said only (:func:`_with_outline_lobes`)
LOBE_DOMINANT_AREA = 4.0
#: how a particle's note on the touching particles left out of its mask begins (:func:`neighbour_lobes_left_out`)
LOBES_LEFT_OUT_NOTE = "a touching particle beside it"


@dataclasses.dataclass(frozen=True)
class Lobe:
    """One of the bodies a particle's outline is made of (:func:`outline_lobes`).

    ``pixels`` (bool, the grid of the particle's mask), ``centre`` (y, x: frame-0 px), ``radius`` (the equivalent
    radius of its part of the half-height outline, px) and ``peak`` (its inscribed radius, px).
    """

    pixels: np.ndarray
    centre: tuple
    radius: float
    peak: float


def outline_lobes(p, min_radius: float, relief=None) -> tuple[list, float]:
    """The lobes of a particle's outline where it is made of bodies of a particle's size joined at necks.

    The outline is drawn at :data:`LOBE_LEVEL_SHARE` of the particle's level on the image its size is measured on
    (:func:`xanestrack.result.outline_relief`) and cut at the saddles of its distance transform that are at most
    :data:`LOBE_NECK` times the smaller body's inscribed radius (:func:`xanestrack.detect.cut_at_necks`); bodies
    under a disc of ``min_radius`` (the detector's smallest particle) are not lobes (a fine on its flank).

    Returns
    -------
    lobes : list of :class:`Lobe`
        Two or more, or none (one body, or the outline not measured).
    neck : float
        The widest neck between two lobes that touch, as a share of the smaller one's inscribed radius (NaN
        where no two touch: a piece too small between them).

    ``relief``: the particle's :class:`xanestrack.result.OutlineRelief`, where the caller has it (default: drawn here).
    """
    from .result import outline_relief

    return _lobes_of(outline_relief(p) if relief is None else relief, p.origin, min_radius)


def _lobes_of(relief, origin, min_radius: float) -> tuple[list, float]:
    """:func:`outline_lobes` on a particle's :class:`xanestrack.result.OutlineRelief` (None: no lobes) on the grid
    whose pixel [0, 0] lies at ``origin`` (frame-0 px)."""
    from .detect import cut_at_necks

    if relief is None:
        return [], float("nan")
    half = relief.above(LOBE_LEVEL_SHARE)
    min_area = np.pi * float(min_radius) ** 2
    if np.count_nonzero(half) < 2 * min_area:
        return [], float("nan")
    pieces = cut_at_necks(half, min_area, np.inf, neck=1.0 - LOBE_NECK)
    if len(pieces) < 2:
        return [], float("nan")
    dist = ndimage.distance_transform_edt(np.pad(half, 1))[1:-1, 1:-1]
    labels = np.zeros(half.shape, int)
    for i, q in enumerate(pieces, start=1):
        labels[q] = i
    peaks = np.array([float(dist[q].max()) for q in pieces])
    neck = float("nan")
    for a, b, da, db in (
        (labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:]),
        (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        for la, lb, s in zip(a[m], b[m], np.minimum(da[m], db[m]), strict=True):
            r = float(s) / min(peaks[la - 1], peaks[lb - 1])
            neck = r if not np.isfinite(neck) else max(neck, r)
    origin = np.asarray(origin, float)
    lobes = []
    for q, peak in zip(pieces, peaks, strict=True):
        yy, xx = np.nonzero(q)
        centre = (float(origin[0] + yy.mean()), float(origin[1] + xx.mean()))
        lobes.append(Lobe(q, centre, float(np.sqrt(q.sum() / np.pi)), peak))
    return lobes, neck


def _lobes_apart(p, lobes: list, relief) -> float:
    """How far the lobes of a particle's outline (:func:`outline_lobes`) move against each other across the scan, px.

    Each lobe (grown by 4 px, tapered) is correlated (:func:`xanestrack.register.correlate_shifts` of
    :func:`xanestrack.register.edge_images`) in each of the particle's aligned frames vouched for and whole against
    the mean image past the edge its outline was drawn on; of each pair of lobes, their shifts' difference less its
    median over the frames, and of its lengths the 95th percentile; the largest over the pairs. A particle whose
    members move as one has its lobes fixed in its aligned frames; members sliding against each other move there.
    NaN where no pair of lobes is measured in 4 such frames (with a value over the lobes in each). ``relief``: the
    particle's :class:`xanestrack.result.OutlineRelief` the lobes were found on (None: NaN).
    """
    from .register import correlate_shifts, edge_images
    from .result import FRAME_FLAGS, UNVOUCHED_FLAGS

    aligned = np.asarray(p.aligned)
    flags = np.asarray(p.frame_flags).astype(np.int64)
    # vouched for and whole: not out of view, nothing lying over it, a value over every lobe
    use = (flags & (UNVOUCHED_FLAGS | FRAME_FLAGS["out_of_view"] | FRAME_FLAGS["overlap"])) == 0
    grown = [ndimage.binary_dilation(q.pixels, iterations=4) for q in lobes]
    use &= np.isfinite(aligned[:, np.logical_or.reduce(grown)]).all(axis=1)
    frames = np.flatnonzero(use)
    if relief is None or frames.size < 4:
        return float("nan")
    shifts = []
    for g in grown:
        taper = ndimage.gaussian_filter(g.astype(np.float32), 2.0)
        yy, xx = np.nonzero(g)
        m = LOBE_WINDOW_MARGIN
        box = np.s_[max(yy.min() - m, 0) : yy.max() + m + 1, max(xx.min() - m, 0) : xx.max() + m + 1]
        ref = edge_images(np.asarray(relief.img, np.float32)[box][None], apodisation=taper[box], floor_scale=2.0)
        imgs = edge_images(aligned[frames][:, box[0], box[1]], apodisation=taper[box], floor_scale=2.0)
        shifts.append(correlate_shifts(ref[0], imgs, max_shift=LOBE_WINDOW_MARGIN)[0])
    apart = float("nan")
    for i in range(len(lobes)):
        for j in range(i + 1, len(lobes)):
            d = shifts[i] - shifts[j]
            d = d[np.isfinite(d).all(axis=1)]
            if len(d) < 4:
                continue
            pair = float(np.percentile(np.hypot(*(d - np.median(d, axis=0)).T), 95))
            apart = pair if not np.isfinite(apart) else max(apart, pair)
    return apart


def _lobes_note(p, lobes: list, neck: float, apart: float = float("nan")) -> str:
    """A particle's note on the lobes of its outline (:func:`outline_lobes`), each with its median E50 where the
    particle's is given."""
    from .result import core_pixels, e50_withheld

    e50 = (p.edge_maps or {}).get("e50")
    core = core_pixels(p) if e50 is not None and not e50_withheld(p) else None
    parts = []
    for q in sorted(lobes, key=lambda q: -q.radius):
        words = f"({q.centre[0]:.0f}, {q.centre[1]:.0f}) r {q.radius:.0f}"
        if core is not None:
            v = np.asarray(e50, float)[q.pixels & core]
            v = v[np.isfinite(v)]
            if v.size >= LOBE_MIN_E50_PIXELS:
                words += f", median E50 {np.median(v):.2f} eV over {v.size} px"
        parts.append(words)
    how = (
        f"joined at a neck {neck:.2f} of the smaller one's width"
        if np.isfinite(neck)
        else f"joined at necks narrower than {LOBE_NECK:.2f} of the smaller one's width"
    )
    if not np.isfinite(apart):
        moved = ""
    elif apart > LOBES_APART_PX:
        moved = (
            f"; its lobes moved against each other across the scan, their relative position straying {apart:.2f} px "
            "from its median (95th percentile of its frames vouched for, each lobe correlated in the aligned "
            "frames): not one body, so no member's position is the one reported, and each member's maps are "
            "registered only to that much"
        )
    else:
        moved = f"; its lobes moved together, within {apart:.2f} px (as one body: the position is the group's)"
    return (
        f"{LOBES_NOTE} {len(lobes)} lobes of a particle's size, {how} (y, x in frame-0 px, radius r at half height: "
        f"{'; '.join(parts)}): it may be {len(lobes)} touching particles reported as one (which the detector kept "
        "whole: a contact too wide for its necks, or an outline convex enough at its binning), its position, motion, size and mean E50 a mix of theirs; the pixels' "
        f"maps are each pixel's own{moved}"
    )


def _unnormalised_view(aligned, mask, flags, neighbours=None):
    """A particle's frames ``aligned`` (n, h, w) on the grid of its ``mask``, before its XANES, as
    :func:`xanestrack.result.outline_relief` takes a particle: its outline drawn on the mean of the frames of highest
    mean OD in the mask (past the edge) among those ``flags`` (n,) allow, its local background left out of
    ``neighbours`` (bool (h, w) or None)."""
    from types import SimpleNamespace

    n = len(aligned)
    with warnings.catch_warnings():  # a frame with no finite pixel in the mask: NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_od = np.array([np.nanmean(a[mask]) for a in aligned])
    return SimpleNamespace(
        aligned=aligned,
        mask=mask,
        frame_flags=np.asarray(flags),
        filled_frames=None,
        mean_norm=np.full(n, np.nan),  # not normalised yet: the frames of highest mean OD (past the edge)
        mean_spectrum=mean_od,
        background_exclude=neighbours,
    )


def window_lobes(windows, mask, min_radius: float) -> tuple[list, float]:
    """:func:`outline_lobes` of a particle not yet analysed: on the mean of its ``windows`` (n, h, w), centred on
    it, of highest mean OD in its ``mask`` (its consensus shape on their grid), each lobe's ``centre`` in window px.
    """
    from .result import outline_relief

    mask = np.asarray(mask, bool)
    if not mask.any() or len(windows) == 0:
        return [], float("nan")
    return _lobes_of(outline_relief(_unnormalised_view(windows, mask, np.zeros(len(windows), int))), (0, 0), min_radius)


def neighbour_lobes_left_out(
    aligned, mask, flags, origin, neighbours, min_radius: float, tracked: tuple = ()
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A particle's mask less the touching particles beside it that its outline takes in, the pixels left out (grown
    by 2 px: to be left out of its local background's ring as well) and its note (the mask as given, None and ``""``
    where none).

    Before its chemistry: its outline's lobes (:func:`outline_lobes`, on the mean of its aligned frames ``aligned``
    of highest mean OD in ``mask`` among those its size may use (``flags``), its local background left out of the
    other tracked particles ``neighbours``); where the lobe that holds the window's centre (the particle's position)
    is at least :data:`LOBE_DOMINANT_AREA` times as large as every other, the mask's pixels nearer to another lobe
    than to it are left out. Otherwise (one lobe, lobes of alike size, the position between them) the mask is kept:
    :func:`_with_outline_lobes` says it may be several particles. ``origin``: frame-0 px of the grid's pixel [0, 0].
    ``tracked``: the ids of those touching particles tracked beside it (the note names them).
    """
    from .result import outline_relief

    mask = np.asarray(mask, bool)
    if not mask.any() or len(aligned) == 0:
        return mask, None, ""
    view = _unnormalised_view(aligned, mask, flags, neighbours)
    relief = outline_relief(view)
    lobes, neck = _lobes_of(relief, origin, min_radius)
    cy, cx = (k // 2 for k in mask.shape)
    own = next((q for q in lobes if q.pixels[cy, cx]), None)
    if own is None:
        return mask, None, ""
    others = [q for q in lobes if q is not own]
    area = float(np.count_nonzero(own.pixels))
    if any(area < LOBE_DOMINANT_AREA * np.count_nonzero(q.pixels) for q in others):
        return mask, None, ""
    nearer = ndimage.distance_transform_edt(~np.logical_or.reduce([q.pixels for q in others])) < (
        ndimage.distance_transform_edt(~own.pixels)
    )
    kept = mask & ~nearer
    if not kept.any():
        return mask, None, ""
    listed = "; ".join(
        f"({q.centre[0]:.0f}, {q.centre[1]:.0f}) r {q.radius:.0f}, {area / np.count_nonzero(q.pixels):.0f} times "
        "smaller"
        for q in others
    )
    joined = f"joined at a neck {neck:.2f} of its width" if np.isfinite(neck) else "joined at a narrow neck"
    apart = _lobes_apart(view, lobes, relief)
    whose = (
        f"tracked beside it as {'particle' if len(tracked) == 1 else 'particles'} {', '.join(map(str, tracked))}"
        if tracked
        else "the touching particle is not tracked (its chemistry is in no table)"
    )
    moved = (
        f"; it moved against the particle across the scan, their relative position straying {apart:.2f} px from its "
        "median (95th percentile of the frames vouched for): the particle's position, measured over its window, may "
        "be pulled by it"
        if np.isfinite(apart) and apart > LOBES_APART_PX
        else ""
    )
    return (
        kept,
        ndimage.binary_dilation(mask & nearer, iterations=2) & ~kept,
        (
            f"{LOBES_LEFT_OUT_NOTE}, {'a lobe' if len(others) == 1 else 'lobes'} of its outline at half height "
            f"(y, x in frame-0 px, radius r at half height: {listed}; {joined}), left out of its mask "
            f"({count(int(np.count_nonzero(mask & nearer)), 'pixel')}): its mean spectrum, size, maps, E50 and fractions "
            f"are of the particle alone; {whose}{moved}"
        ),
    )


def _with_outline_lobes(particles: list, min_radius: float) -> list:
    """The particles with a note on the lobes of their outline (:func:`outline_lobes`) where it has some, and
    ``touching_pieces`` their number (``touching_pieces_frames`` 0: the detector cut it in no frame). Those whose
    outline the detector cut into pieces in some frames are left as they are (their note says so)."""
    from .result import outline_relief

    out = []
    for p in particles:
        if int(getattr(p, "touching_pieces", 0) or 0) >= 2 or _has_note(p, LOBES_LEFT_OUT_NOTE):
            out.append(p)
            continue
        relief = outline_relief(p)  # once: the lobes and their motion are measured on it
        lobes, neck = outline_lobes(p, min_radius, relief)
        if len(lobes) < 2:
            out.append(p)
            continue
        note = _lobes_note(p, lobes, neck, _lobes_apart(p, lobes, relief))
        out.append(dataclasses.replace(p, notes=(*p.notes, note), touching_pieces=len(lobes), touching_pieces_frames=0))
    return out


def _lobes_run_note(particles) -> str:
    """The run note gathering the particles whose outline has lobes of a particle's size (:func:`outline_lobes`),
    and those with touching particles left out of their mask (:func:`neighbour_lobes_left_out`)."""
    ids = [p.particle for p in particles if _has_note(p, LOBES_NOTE)]
    left = [p.particle for p in particles if _has_note(p, LOBES_LEFT_OUT_NOTE)]
    beside = [
        p.particle
        for p in particles
        if any(n.startswith(LOBES_LEFT_OUT_NOTE) and "; tracked beside it as particle" in n for n in p.notes)
    ]
    if not beside:
        tracked = "the touching particles are not tracked"
    elif len(beside) == len(left):
        tracked = "the touching particles are tracked beside them (each note names which)"
    else:
        tracked = (
            f"those touching {', '.join(map(str, beside))} are tracked beside them (each note names which), the "
            "others not"
        )
    said = (
        f"the mask{'s' if len(left) > 1 else ''} of {len(left)} of {len(particles)} particles "
        f"({', '.join(map(str, left[:12]))}{' ...' if len(left) > 12 else ''}) took in a smaller touching particle "
        f"(a lobe of the outline at most 1/{LOBE_DOMINANT_AREA:g} of the particle's, beyond a neck), left out of "
        f"it before the chemistry: each particle's note says where; {tracked}"
        if left
        else ""
    )
    if not ids:
        return said
    return (said + "; " if said else "") + (
        f"the outline{'s' if len(ids) > 1 else ''} of {len(ids)} of {len(particles)} particles "
        f"({', '.join(map(str, ids[:12]))}{' ...' if len(ids) > 12 else ''}) {'have' if len(ids) > 1 else 'has'} "
        f"lobes of a particle's size joined at necks (at half height, at most {LOBE_NECK:.2f} of the smaller lobe's "
        "width), which the detector did not cut: each may be touching particles reported as one, its position, "
        "motion, size and mean E50 a mix of theirs; each particle's note names its lobes and their median E50 "
        "(touching_pieces in the particles' table and figures/uncertainty.csv, touching_pieces_frames 0)"
    )
