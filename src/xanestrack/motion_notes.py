"""The run's notes on the field's motion: the common similarity against the particles' own motions, the
positions' noise, magnifications too large for a zone plate, and particles rarely vouched for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .result import FRAME_FLAGS
from .words import count

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
        f"{count(len(ids), 'particle')} of {len(particles)} vouched for in fewer than {100 * RARELY_VOUCHED:.0f} % of "
        f"{'its' if len(ids) == 1 else 'their'} frames ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}): "
        f"{why}: read their positions, motions and chemistry as not measured"
    )
