"""The scan's resolution across its energies: where the particles' outlines blur or sharpen (a focus that
drifts or steps with the energy), measured from their edge widths, and the frames matched to the coarsest before
the XANES.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .register import (
    edge_widths,
)
from .smoothing import local_quadratic
from .words import count, frame_list

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
        if blur is None:  # the frames used taken near the outline, not copied whole
            rows[i, used] = edge_widths(aligned, mask, frames=used)
        else:
            rows[i, used] = edge_widths(_blur_frames(aligned[used], blur[used]), mask)
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
        f"{count(len(frames), 'frame')} blurred on {'its' if len(frames) == 1 else 'their'} own (a defocused shot?): "
        f"the particles' edges {BLURRED_FRAME_PX:g} px or more wider there than in the frames around "
        f"(median over {len(res.measured)} particles): left out of every particle's XANES, their positions kept: "
        f"{frame_list(list(frames), energies)}. Left in, every 10th frame of the default scene blurred by 1.5 / 3 px "
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
