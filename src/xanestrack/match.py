"""ROI matching across frames: each particle keeps its identity through the scan.

The frames the detector examined are linked in energy order by the one linker of the
package, :func:`xanestrack.linking.link` (common displacement by voting, each track
predicted from its own recent motion plus the common one, Hungarian assignment), with
the paper's criterion as the extra score: the SSIM of the two ROIs, computed on
contrast-normalised ROIs so that the contrast change across the edge does not break it.

Tracks present in fewer than ``min_track_fraction`` of the examined frames are dropped
(and returned as rejected), the others keep their gaps: frames where a particle was not
detected are listed with ``detected = False`` and a predicted position, never silently
dropped or filled with another particle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

__all__ = ["MatchOptions", "link_detections", "roi_ssim", "propagate_common"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchOptions:
    """Options of the frame-to-frame linking (lengths in pixels).

    They are passed to the linker as :class:`xanestrack.linking.LinkOptions` (the
    distances scaled with the key-frame spacing, see :func:`link_detections`).

    Attributes
    ----------
    max_jump : float or None, default None
        px. Largest common displacement (stage jump, drift) between consecutive frames;
        ``None``: 40 px or 8 % of the larger frame side, whichever is larger. Grows with
        the square root of the key-frame spacing.
    gate : float, default 8.0
        px. Smallest search radius around a track's predicted position (grows with the
        fourth root of the key-frame spacing).
    gate_fraction : float, default 0.25
        The search radius is at least this fraction of the particle's radius.
    gap_gate_growth : float, default 0.5
        Relative growth of the search radius per examined frame the particle was missed (up
        to half the distance to the place another track is predicted at,
        :attr:`xanestrack.linking.LinkOptions.gap_gate_share`).
    ssim_weight : float, default 1.0
        Weight of ``1 - SSIM`` (of the two ROIs, contrast-normalised) in the assignment
        cost.
    size_weight : float, default 1.0
        Weight of ``|log(radius ratio)|`` in the assignment cost.
    min_ssim : float, default 0.2
        Below this SSIM a link is refused unless the position is convincing (residual
        below half the gate).
    min_track_fraction : float, default 0.5
        Tracks seen in fewer than this fraction of the examined frames are rejected
        (``short_track``) ...
    min_faint_fraction : float, default 0.3
        ... unless seen in at least this fraction of them (and detected in 2) and, where not seen, nothing
        else was seen in their place: no other particle kept for tracking covers the
        track's predicted position in more than ``max_covered`` of those frames. A faint
        particle that the detectors outline only in some frames (before the edge, in low
        counts) is kept; a piece of a touching group, seen alone only while the contrast
        is low and inside its group's outline in the other frames, is not (stress family,
        both detectors).
    max_covered : float, default 0.25
    vote_tolerance : float, default 3.0
        px. Agreement distance of the common-displacement vote ...
    vote_fraction : float, default 0.15
        ... or this fraction of the median radius, whichever is larger.
    max_gap : int, default 10000
        Examined frames a track waits for its particle (the default: the whole scan; the
        gate widens with the gap).
    velocity_damping : float, default 0.8
        Share of a particle's own velocity (relative to the common motion) carried into
        its predicted position (0: common motion only; 1: constant velocity).
    """

    max_jump: float | None = None
    gate: float = 8.0
    gate_fraction: float = 0.25
    gap_gate_growth: float = 0.5
    ssim_weight: float = 1.0
    size_weight: float = 1.0
    min_ssim: float = 0.2
    min_track_fraction: float = 0.5
    min_faint_fraction: float = 0.3
    max_covered: float = 0.25
    vote_tolerance: float = 3.0
    vote_fraction: float = 0.15
    max_gap: int = 10_000
    velocity_damping: float = 0.8


def _patch(frame, y, x, half):
    ny, nx = frame.shape
    iy, ix = int(round(y)), int(round(x))
    y0, x0 = iy - half, ix - half
    pad = max(0, -y0, -x0, y0 + 2 * half + 1 - ny, x0 + 2 * half + 1 - nx)
    if pad:
        frame = np.pad(frame, pad, mode="edge")
        y0, x0 = y0 + pad, x0 + pad
    return frame[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]


def roi_ssim(a, b) -> float:
    """SSIM of two equally shaped ROIs after normalising each to zero mean, unit std.

    Normalising makes the score blind to the contrast change across the absorption
    edge (a pure rescaling of the OD) while keeping the structure comparison.
    """
    from skimage.metrics import structural_similarity

    a = (a - a.mean()) / (a.std() + 1e-9)
    b = (b - b.mean()) / (b.std() + 1e-9)
    win = min(7, (min(a.shape) // 2) * 2 - 1)
    if win < 3:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    return float(structural_similarity(a, b, data_range=hi - lo, win_size=win))


#: margin (px) of the ROIs compared by SSIM (:func:`xanestrack.register.window_half`): tighter
#: than the pipeline's windows, so that less background enters the score
SSIM_MARGIN = 4

#: binning of the frames registered by phase correlation (ROI propagation, vote fallback)
PC_BINNING = 4


@lru_cache(maxsize=8)
def _hann(shape):
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def _pc_prep(frame, binning=PC_BINNING):
    """A frame prepared for phase correlation: binned, high-passed, Hann-windowed."""
    from scipy import ndimage

    from .register import bin_frames

    f = bin_frames(frame, binning)
    f = f - ndimage.gaussian_filter(f, 8)
    return (f - f.mean()) * _hann(f.shape)


def link_detections(detections: pd.DataFrame, od, *, options: MatchOptions = MatchOptions(), frames=None):
    """Link per-frame detections of isolated particles into tracks.

    The linking itself is :func:`xanestrack.linking.link` (the same linker joins particles
    across the scans of a series), with the SSIM of contrast-normalised ROIs as the
    extra score and the frames' phase correlation as the prior of the common vote.

    Parameters
    ----------
    detections : DataFrame
        From :func:`xanestrack.detect.detect_stack`; only rows with ``isolated`` are linked.
    od : ndarray (n_frames, rows, cols)
        The frames, for the SSIM of ROIs.
    options : MatchOptions
    frames : sequence of int, optional
        The frames the detector examined (default: all). Only these are linked; the
        others (detection on key frames) get predicted positions with ``examined``
        False, and the common shift of the nearest examined frames, interpolated.

    Returns
    -------
    tracks : DataFrame
        One row per particle per frame: ``particle, frame, y, x, area, radius,
        detected, examined, ssim``; for frames where the particle was not detected,
        ``y, x`` is the predicted position (the particle's own positions less the common
        shift, interpolated between the frames where it was seen, plus the common shift)
        and ``detected`` is False; ``irregular`` where, not detected there, the particle was
        outlined in its place as one irregular body (``not_convex``), which counts as seen when
        a track's length is judged (``min_track_fraction``, ``min_faint_fraction``);
        ``common_ambiguous`` in frames between key frames whose common shift could not be
        told (:func:`propagate_common`: a step that matched as well at another shift, e.g. a
        lattice of alike particles moved by one spacing, decided neither by the matrix texture
        nor by the key frames): the windows placed there may lie on a neighbour, and the
        positions measured there are not vouched for by the linking; ``pieces`` (int) where,
        not detected whole there, the particle's outline was found cut into that many pieces of a
        particle's size (0 elsewhere) and ``pieces_at`` where they lay, ``"y,x,radius;..."``
        (:func:`_seen_in_pieces`: touching particles with a long contact kept whole as one); ``extent`` (px)
        how far the detected outline reached from its centre (the detections' ``extent``; NaN where not
        detected, or where the detector gives none).
    rejected : DataFrame
        Tracks too short to keep: ``track, n_frames, y, x`` (mean position), ``reason``,
        ``n_irregular``: the frames examined where a ``short_track``, missed, was outlined in its
        place as one irregular body (as ``irregular`` above; 0 for other reasons), and ``piece_of``:
        the particle (of ``tracks``) whose outline a ``short_track`` was a piece of (``pieces``
        above; -1: none).
    common_shift : ndarray (n_frames, 2)
        The voted common displacement of each frame relative to frame 0.
    """
    from .linking import LinkOptions, link
    from .register import window_half

    n_frames = od.shape[0]
    examined = np.arange(n_frames) if frames is None else np.unique(np.asarray(frames, int))
    if examined.size == 0 or examined[0] < 0 or examined[-1] >= n_frames:
        raise ValueError(f"frames must be indices in [0, {n_frames}), got {frames!r}")
    # tolerances grow with the particles (a centroid moves more with contrast on a big one)
    # and the largest jump with the field of view (stage/optics jitter scales with it)
    max_jump = options.max_jump if options.max_jump is not None else max(40.0, 0.08 * max(od.shape[1:]))
    det = detections[detections["isolated"]] if len(detections) else detections
    by_frame = {k: g.reset_index(drop=True) for k, g in det.groupby("frame")} if len(det) else {}
    empty = pd.DataFrame(columns=["y", "x", "radius", "area"], dtype=float)
    objects = [by_frame.get(int(k), empty) for k in examined]
    # more motion accumulates between key frames: the gate and the jump grow with the step
    step = float(np.median(np.diff(examined))) if examined.size > 1 else 1.0
    lopt = LinkOptions(
        max_jump=max_jump * np.sqrt(step),
        gate=options.gate * step**0.25,
        gate_fraction=options.gate_fraction,
        gap_gate_growth=options.gap_gate_growth,
        max_gap=options.max_gap,
        vote_tolerance=options.vote_tolerance,
        vote_fraction=options.vote_fraction,
        size_weight=options.size_weight,
        score_weight=options.ssim_weight,
        min_score=options.min_ssim,
        velocity_damping=options.velocity_damping,
    )

    def on_link(tr, t, j):
        r = objects[t].iloc[j]
        if "half" not in tr.data:
            tr.data["half"] = window_half(r["radius"], SSIM_MARGIN)
        tr.data["patch"] = _patch(od[examined[t]], r["y"], r["x"], tr.data["half"])
        tr.data.setdefault("rows", []).append(r)

    ssim_of = {}

    def score(tr, t, j):
        r = objects[t].iloc[j]
        s = roi_ssim(tr.data["patch"], _patch(od[examined[t]], r["y"], r["x"], tr.data["half"]))
        ssim_of[(tr.id, t, j)] = s
        return s

    def prior(ta, tb):
        ka, kb = examined[ta], examined[tb]
        jump = max_jump * np.sqrt(kb - ka)
        cands, quality = _frame_step(_pc_prep(od[ka]), _pc_prep(od[kb]), jump / PC_BINNING)
        if quality < MIN_STEP_QUALITY:
            return None
        cands = _decided(od[ka], od[kb], cands * PC_BINNING)
        return cands[0] if len(cands) == 1 else None  # an ambiguous offset is no prior

    ids, common_ex, tracks = link(objects, options=lopt, score=score, prior=prior, on_link=on_link)
    tracks = _join_pieces(tracks, ids, common_ex, examined, lopt, options.min_track_fraction * examined.size)
    tracks = _join_alternating(tracks, ids, common_ex, options.min_track_fraction * examined.size)
    common = np.zeros((n_frames, 2))
    common[examined] = common_ex
    ambiguous = np.zeros(n_frames, bool)
    if examined.size < n_frames:
        motion = _propagate_common(od, common, examined, max_jump=max_jump)
        common, ambiguous = motion.shift, motion.ambiguous
        if ambiguous.any():
            logger.warning(
                "the common shift of %d frames (%s) is ambiguous: a step there matched as well at another shift "
                "(alike particles in a lattice?) and neither the matrix texture nor the key frames told which",
                int(ambiguous.sum()),
                ", ".join(map(str, np.flatnonzero(ambiguous)[:10])),
            )
    seen = set(examined.tolist())
    irregular = _irregular_outlines(detections)
    kept, rejected, irregular_of = [], [], {}
    for tr in tracks:
        n = n_detected = len(tr.times)
        tr.data["irregular"] = []
        if n < options.min_track_fraction * examined.size:
            # where a track was missed, its particle may have been outlined, in its place and at
            # its size, as one irregular body (``not_convex``): seen there all the same. A track
            # detected once too: a particle ringed by fines, outlined as one irregular body in 7 of
            # 8 key frames and isolated in one, was rejected and left no word (stress-fines seed 3
            # with an empty margin cropped)
            tr.data["irregular"] = _seen_irregular(tr, irregular, examined, common)
            n += len(tr.data["irregular"])
        arr = np.asarray(tr.positions, float)
        if _still_on_detector(arr, common[examined[np.asarray(tr.times)]]):
            rejected.append((tr.id, n_detected, arr[:, 0].mean(), arr[:, 1].mean(), "still_on_detector"))
        elif n >= options.min_track_fraction * examined.size or (
            # one detection is noise unless its particle's outline was there in most frames (above)
            n_detected >= 2
            and n >= max(2, options.min_faint_fraction * examined.size)
            and _vacant(tr, objects, examined, common, options.max_covered)
        ):
            kept.append(tr)
        else:
            rejected.append((tr.id, n_detected, arr[:, 0].mean(), arr[:, 1].mean(), "short_track"))
            irregular_of[tr.id] = len(tr.data["irregular"])
    # order particles by their first position (top-left first) for stable ids
    kept.sort(key=lambda tr: (round(tr.positions[0][0] / 20), tr.positions[0][1]))
    rows = []
    piece_of = {}  # track id of a piece -> the kept particle (pid before duplicates are dropped) it is a piece of
    for pid, tr in enumerate(kept):
        frames_seen = examined[np.asarray(tr.times)]
        have = {int(f): (t, r) for f, t, r in zip(frames_seen, tr.times, tr.data["rows"])}
        predicted = _predicted(tr, examined, common, np.arange(n_frames))
        irregular_frames = set(tr.data["irregular"])
        cut = _seen_in_pieces(tr, objects, ids, examined, common)
        for found in cut.values():
            for *_, other in found:
                if other != tr.id:
                    piece_of.setdefault(other, pid)
        for k in range(n_frames):
            if k in have:
                t, r = have[k]
                j = int(np.flatnonzero(ids[t] == tr.id)[0])
                rows.append(
                    (
                        pid,
                        k,
                        r["y"],
                        r["x"],
                        r["area"],
                        r["radius"],
                        True,
                        True,
                        ssim_of.get((tr.id, t, j), np.nan),
                        False,
                        *_pieces_columns(cut.get(k)),
                        float(r.get("extent", np.nan)),
                    )
                )
            else:
                rows.append(
                    (
                        pid,
                        k,
                        *predicted[k],
                        np.nan,
                        np.nan,
                        False,
                        k in seen,
                        np.nan,
                        k in irregular_frames,
                        *_pieces_columns(cut.get(k)),
                        np.nan,
                    )
                )
    tracks_df = pd.DataFrame(
        rows,
        columns=[
            "particle",
            "frame",
            "y",
            "x",
            "area",
            "radius",
            "detected",
            "examined",
            "ssim",
            "irregular",
            "pieces",
            "pieces_at",
            "extent",
        ],
    )
    tracks_df["common_ambiguous"] = ambiguous[tracks_df["frame"].to_numpy(int)] if len(tracks_df) else []
    tracks_df, dup = _drop_duplicates(tracks_df)
    rejected += dup
    rejected_df = pd.DataFrame(rejected, columns=["track", "n_frames", "y", "x", "reason"])
    short = (rejected_df["reason"] == "short_track").to_numpy(bool)
    rejected_df["n_irregular"] = np.where(short, rejected_df["track"].map(irregular_of).fillna(0), 0).astype(int)
    # the particle whose outline a short track was a piece of (-1: none), its id as in ``tracks`` (after duplicates)
    gone = {int(r[0]) for r in dup}
    final = {p: i for i, p in enumerate(q for q in range(len(kept)) if q not in gone)}
    owner = rejected_df["track"].map(lambda t: final.get(piece_of.get(int(t), -1), -1)).to_numpy(int)
    rejected_df["piece_of"] = np.where(short, owner, -1).astype(int)
    return tracks_df, rejected_df, common


def _join_pieces(tracks, ids, common, examined, link_options, short) -> list:
    """The tracks, those too ``short`` to keep that one fast particle left in pieces joined into one
    (:func:`xanestrack.linking.chain_pieces`, velocities per frame); ``ids`` follow (updated in place)."""
    from .linking import chain_pieces

    pieces = [tr.id for tr in tracks if len(tr.times) < short]
    chains = chain_pieces(tracks, common, pieces=pieces, options=link_options, clock=examined)
    if not chains:
        return tracks
    by_id = {tr.id: tr for tr in tracks}
    gone = set()
    for chain in chains:
        head = by_id[chain[0]]
        for c in chain[1:]:
            tr = by_id[c]
            _absorb(head, tr, ids)
            if np.isfinite(tr.radius):
                head.radius = tr.radius
            gone.add(c)
    logger.info("%d particles moving faster than the gate joined from %d pieces", len(chains), sum(map(len, chains)))
    return [tr for tr in tracks if tr.id not in gone]


def _absorb(head, tail, ids) -> None:
    """Track ``tail``'s sightings (times, positions and, one per sighting, the detections' rows) taken into ``head``,
    in time order; ``ids`` (the track of each object per time) follow."""
    times, positions = head.times + tail.times, head.positions + tail.positions
    rows = head.data.get("rows", []) + tail.data.get("rows", [])
    order = np.argsort(times, kind="stable")
    head.times = [times[k] for k in order]
    head.positions = [positions[k] for k in order]
    head.data["rows"] = [rows[k] for k in order] if len(rows) == len(times) else rows
    for t in tail.times:
        ids[t][ids[t] == tail.id] = head.id


#: two tracks too short to keep, seen in no frame together, whose positions (the common motion taken out) lie within
#: this share of the larger one's radius of each other, are one particle (:func:`_join_alternating`)
ALTERNATE_SHARE = 0.5


def _join_alternating(tracks, ids, common, short) -> list:
    """The tracks too ``short`` to keep that one particle left alternating between them joined into one.

    A particle outlined whole in some key frames and as a piece of itself in others (a charging front across it: its
    half-charged side faint at some energies) is linked as two tracks where its last outline differs too much from the
    next one (the ROIs' SSIM, the size): ``stress-magnification`` seed 4 (learned), a 10-px particle seen in 8 of the
    13 key frames, whole (r 10.1-10.6) in six and as a 7.3-px piece 4.5 px off in two, was linked as tracks of frames
    60, 72, 84, 108 and 96, 120, 132, 142, each too short to keep, and never reported. Such tracks are joined where
    they share no time and their median positions (the ``common`` motion taken out) lie within
    :data:`ALTERNATE_SHARE` of the larger one's radius of each other (touching particles lie a radius or more apart),
    the nearest pairs first, into groups that together are long enough to keep; the others are left as they were. Three
    as well as two: ``stress-all`` seed 3 (learned), a 38-px particle outlined alone in 5 key frames and with the
    particle touching it in 2 (r 41, 8 px off), linked as tracks of 4, 2 and 1 frames. ``ids`` follow (updated in
    place)."""
    common = np.asarray(common, float)
    pieces = [tr for tr in tracks if 0 < len(tr.times) < short]
    if len(pieces) < 2:
        return tracks
    centre = {tr.id: np.median(np.asarray(tr.positions, float) - common[np.asarray(tr.times)], axis=0) for tr in pieces}
    pairs = []
    for i, a in enumerate(pieces):
        for b in pieces[i + 1 :]:
            if set(a.times) & set(b.times):
                continue
            radius = float(np.nanmax([a.radius, b.radius, 0.0]))
            d = float(np.hypot(*(centre[a.id] - centre[b.id])))
            if d <= ALTERNATE_SHARE * radius:
                pairs.append((d, a, b))
    # groups, the nearest pairs first: two groups join where they share no time (union-find on the pieces)
    group = {tr.id: [tr] for tr in pieces}
    of = {tr.id: tr.id for tr in pieces}
    for _d, a, b in sorted(pairs, key=lambda p: p[0]):
        ga, gb = of[a.id], of[b.id]
        if ga == gb:
            continue
        if {t for tr in group[ga] for t in tr.times} & {t for tr in group[gb] for t in tr.times}:
            continue
        group[ga] += group.pop(gb)
        for tr in group[ga]:
            of[tr.id] = ga
    removed = set()
    for members in group.values():
        if len(members) < 2 or sum(len(tr.times) for tr in members) < short:
            continue
        members = sorted(members, key=lambda tr: -len(tr.times))
        head, radius = members[0], float(np.nanmax([tr.radius for tr in members] + [0.0]))
        for tail in members[1:]:
            _absorb(head, tail, ids)
            removed.add(tail.id)
            logger.info("track %d joined to track %d: one particle seen in turn in both", tail.id, head.id)
        head.radius = radius  # the whole particle's, not its piece's
    return [tr for tr in tracks if tr.id not in removed]


#: px: the RMS of the scan's common motion (over a track's frames) from which an object that does
#: not follow it can be told from a particle
STILL_MIN_MOTION = 1.5
#: an object still on the detector follows less than this share of the common motion ...
STILL_MAX_FOLLOW = 0.25
#: ... and moves (RMS) by less than this share of it. Particles of the stress family that drift on
#: their own by 0.6 px per frame (sd) can stay nearly put by chance: of 432 tracks of 34 scenes (the
#: seven stress cases, seeds 1-4; hard 1-2; default 1-4), 254 in 21 scenes saw a common motion of
#: 1.5 px RMS or more, and the least of them moved by 0.28 of it (stress-drift seed 3, following
#: 0.08 of it); none is left out. A speck of fixed flat-field pattern on the default scene moved by
#: 0.07 of it (another, cut by the frame's border, by 0.21: kept, and flagged in most frames)
STILL_MAX_MOTION = 0.15


def _still_on_detector(positions, common) -> bool:
    """Whether a track stays put on the detector while the sample moves under it (dust on the
    scintillator or the optics, a blob of flat-field pattern the flats did not take out): it
    follows less than :data:`STILL_MAX_FOLLOW` of the common motion and moves by less than
    :data:`STILL_MAX_MOTION` of it, where that motion is :data:`STILL_MIN_MOTION` px RMS or more."""
    if len(positions) < 3:
        return False
    p = positions - positions.mean(axis=0)
    c = common - common.mean(axis=0)
    cc = float((c**2).sum())
    rc = np.sqrt(cc / len(c))
    if not rc >= STILL_MIN_MOTION:
        return False
    follow = float((p * c).sum()) / cc
    return follow < STILL_MAX_FOLLOW and np.sqrt((p**2).sum() / len(p)) < STILL_MAX_MOTION * rc


#: an irregular outline (``not_convex``) counts as a sighting of a track it lies within this
#: fraction of the track's radius of, at most this many times its radius
IRREGULAR_OFFSET = 0.5
IRREGULAR_MAX_SIZE = 1.3


def _irregular_outlines(detections) -> dict:
    """Per frame, ``(y, x, radius)`` of the components rejected as one irregular body
    (``not_convex``, not cut at a neck into touching particles)."""
    if not len(detections) or "reason" not in detections:
        return {}
    one_body = detections["reason"] == "not_convex"
    if "touching" in detections:
        one_body &= ~detections["touching"].astype(bool)
    irr = detections[one_body]
    return {int(k): g[["y", "x", "radius"]].to_numpy(float) for k, g in irr.groupby("frame")}


def _seen_irregular(tr, irregular, examined, common) -> list[int]:
    """The examined frames a track was missed in that show, at its predicted place and
    no larger than ``IRREGULAR_MAX_SIZE`` times its radius, a component the detector rejected
    as not convex: the particle outlined irregularly (a small, lobed particle at the detector's
    binned resolution: solidity 0.56-0.73 in 5 of 8 post-edge frames, 0.84-0.93 in the other 3;
    ``stress-magnification`` seed 9). A touching group's outline, larger and centred elsewhere,
    does not count for one of its pieces."""
    missed = np.setdiff1d(np.arange(examined.size), tr.times)
    if missed.size == 0 or not irregular:
        return []
    radius = float(np.nanmedian([r["radius"] for r in tr.data.get("rows", [])] or [np.nan]))
    if not np.isfinite(radius) or radius <= 0:
        return []
    frames = []
    for k, (y, x) in zip(examined[missed], _predicted(tr, examined, common, examined[missed])):
        o = irregular.get(int(k))
        if o is None:
            continue
        near = np.hypot(o[:, 0] - y, o[:, 1] - x) <= IRREGULAR_OFFSET * radius
        if np.any(near & (o[:, 2] <= IRREGULAR_MAX_SIZE * radius)):
            frames.append(int(k))
    return frames


def _predicted(tr, examined, common, frames) -> np.ndarray:
    """``(len(frames), 2)``: a track's position in ``frames``: its own motion (the common
    motion removed), interpolated between the examined frames it was seen in, plus the
    common motion."""
    seen = examined[np.asarray(tr.times)]
    own = np.asarray(tr.positions, float) - common[seen]
    return np.stack([np.interp(frames, seen, own[:, a]) for a in range(2)], axis=1) + common[frames]


#: :func:`_seen_in_pieces`: a detection of at most this share of a track's area (its median over the frames it
#: was detected in) is a piece of it, not the whole ...
PIECE_MAX_SHARE = 0.8
#: ... and the pieces, two or more, together cover this range of its area ...
PIECES_AREA_RANGE = (0.7, 1.3)
#: ... their joint centre (weighted by area) within this share of its radius of its own ...
PIECES_CENTRE_SHARE = 0.2
#: ... each inside its outline's bounding box grown by this share of its radius. Only a track that the detector
#: kept whole while examining it as possibly several touching particles (its median solidity below the detector's
#: default convexity test, :attr:`xanestrack.detect.DetectOptions.min_solidity`) is looked at
PIECES_BOX_MARGIN = 0.15
PIECES_MAX_SOLIDITY = 0.92


def _seen_in_pieces(tr, objects, ids, examined, common) -> dict:
    """The frames in which a track's particle was found in pieces: ``{frame: [(y, x, radius, track id), ...]}``.

    Touching particles with long contacts (tens of px, not necks) are one body to the detector's necks rule: kept
    whole as one irregular particle where its solidity passes (:data:`xanestrack.detect.KEEP_SOLIDITY`), but cut
    into its particles in some frames, whose pieces then lasted too short to be tracked (``short_track``): a trio
    of particles of radius 94, 65 and 57 px, their E50s 0.57 eV apart and sliding by up to 3.5 px, was reported as
    one 128-px particle vouched for in 50 of 50 frames, cut into two pieces in 1 of its 8 key frames. For a track
    the detector kept whole as not convex (median solidity below :data:`PIECES_MAX_SOLIDITY`), an examined frame
    counts where, not detected there whole (missed, or detected as a piece of at most :data:`PIECE_MAX_SHARE` of
    its area), two or more particles kept for tracking, each at most that share of its area, lie inside its
    outline's box there (:data:`PIECES_BOX_MARGIN`), together cover :data:`PIECES_AREA_RANGE` of its area and
    have their joint centre within :data:`PIECES_CENTRE_SHARE` of its radius of its own (its own motion
    interpolated between the frames it was seen whole in): the pieces make up the whole. ``track id``: the
    track each piece was linked into (``ids``).
    """
    rows = tr.data.get("rows", [])
    if not rows or "y0" not in rows[0] or "solidity" not in rows[0]:
        return {}
    area = np.array([float(r["area"]) for r in rows])
    solidity = np.array([float(r["solidity"]) for r in rows])
    whole_area = float(np.median(area))
    if not np.isfinite(whole_area) or not np.nanmedian(solidity) < PIECES_MAX_SOLIDITY:
        return {}
    whole = area > PIECE_MAX_SHARE * whole_area
    times = np.asarray(tr.times)
    radius = np.sqrt(whole_area / np.pi)
    # the outline's box about its centre, from the frames it was seen whole in
    box = np.median(
        [[r["y0"] - r["y"], r["x0"] - r["x"], r["y1"] - r["y"], r["x1"] - r["x"]] for r, w in zip(rows, whole) if w],
        axis=0,
    ) + PIECES_BOX_MARGIN * radius * np.array([-1, -1, 1, 1])
    seen = examined[times[whole]]
    own = np.asarray(tr.positions, float)[whole] - common[seen]
    out = {}
    for t in np.setdiff1d(np.arange(examined.size), times[whole]):
        k = int(examined[t])
        o = objects[t]
        if len(o) < 2:
            continue
        y, x = (np.interp(k, seen, own[:, a]) + common[k, a] for a in range(2))
        inside = (
            (o["area"] <= PIECE_MAX_SHARE * whole_area)
            & (o["y0"] >= y + box[0])
            & (o["x0"] >= x + box[1])
            & (o["y1"] <= y + box[2])
            & (o["x1"] <= x + box[3])
        ).to_numpy(bool)
        if inside.sum() < 2:
            continue
        a = o["area"].to_numpy(float)[inside]
        cy = float(np.sum(a * o["y"].to_numpy(float)[inside]) / a.sum())
        cx = float(np.sum(a * o["x"].to_numpy(float)[inside]) / a.sum())
        low, high = PIECES_AREA_RANGE
        if (
            low * whole_area <= a.sum() <= high * whole_area
            and np.hypot(cy - y, cx - x) <= PIECES_CENTRE_SHARE * radius
        ):
            j = np.flatnonzero(inside)
            out[k] = [
                (float(o["y"].iloc[i]), float(o["x"].iloc[i]), float(o["radius"].iloc[i]), int(ids[t][i])) for i in j
            ]
    return out


def _pieces_columns(found) -> tuple:
    """``(pieces, pieces_at)`` of a frame of a track: how many pieces it was found in there (0: not in pieces) and
    where, ``"y,x,radius;..."`` (px; empty where not)."""
    if not found:
        return 0, ""
    return len(found), ";".join(f"{y:.1f},{x:.1f},{r:.1f}" for y, x, r, _ in found)


def _vacant(tr, objects, examined, common, max_covered) -> bool:
    """Whether a track's predicted position, in the examined frames it was not seen in,
    is covered (inside the bounding box) by a particle kept for tracking in at most
    ``max_covered`` of them."""
    missed = np.setdiff1d(np.arange(examined.size), tr.times)
    if missed.size == 0:
        return True
    covered = 0
    for t, (y, x) in zip(missed, _predicted(tr, examined, common, examined[missed])):
        o = objects[t]
        if not len(o):
            continue
        if "y0" in o:
            inside = (o["y0"] <= y) & (y < o["y1"]) & (o["x0"] <= x) & (x < o["x1"])
        else:  # no outlines: within the radius
            inside = np.hypot(o["y"] - y, o["x"] - x) <= o["radius"]
        covered += bool(np.any(inside))
    return covered <= max_covered * missed.size


def _drop_duplicates(tracks_df, fraction: float = 0.5):
    """Two tracks that follow one particle (e.g. found whole in one frame and as a piece
    of a touching pair in another): the one detected less often is dropped.

    Tracks are duplicates when their median distance over the frames is below
    ``fraction`` of the larger radius (a piece inside a whole particle).
    """
    if not len(tracks_df):
        return tracks_df, []
    pids = sorted(tracks_df["particle"].unique())
    pos = {p: g.sort_values("frame")[["y", "x"]].to_numpy() for p, g in tracks_df.groupby("particle")}
    rad = tracks_df.groupby("particle")["radius"].median()
    ndet = tracks_df.groupby("particle")["detected"].sum()
    drop = set()
    for i, a in enumerate(pids):
        for b in pids[i + 1 :]:
            if a in drop or b in drop:
                continue
            d = np.nanmedian(np.hypot(*(pos[a] - pos[b]).T))
            r = np.nanmax([rad.get(a, np.nan), rad.get(b, np.nan)])
            if np.isfinite(d) and np.isfinite(r) and d < fraction * r:
                if ndet[a] != ndet[b]:
                    drop.add(a if ndet[a] < ndet[b] else b)
                else:  # as often: the piece goes, the whole particle stays
                    drop.add(a if rad.get(a, np.nan) < rad.get(b, np.nan) else b)
    if not drop:
        return tracks_df, []
    gone = [
        (int(p), int(ndet[p]), float(pos[p][:, 0].mean()), float(pos[p][:, 1].mean()), "duplicate")
        for p in sorted(drop)
    ]
    out = tracks_df[~tracks_df["particle"].isin(drop)].copy()
    # particle ids stay consecutive
    remap = {p: i for i, p in enumerate(sorted(out["particle"].unique()))}
    out["particle"] = out["particle"].map(remap)
    return out.reset_index(drop=True), gone


def _frame_step(a, b, max_shift):
    """Integer shift of frame ``b`` relative to ``a`` by phase correlation (binned frames), with the
    shifts it cannot be told from.

    Returns ``(candidates, quality)``: ``candidates`` (m, 2) holds the highest peak of the
    correlation within ``max_shift`` first, then every other local maximum, further than
    :data:`STEP_PEAK_EXCLUSION` from a higher one, that reaches :data:`AMBIGUOUS_STEP_RATIO` of it
    (at most :data:`MAX_STEP_CANDIDATES`), and then, where there are such, no step at all: more
    than one row is an ambiguous step (a lattice of alike particles matches itself moved by one
    spacing). ``quality`` is the highest peak over the spread of the correlation surface
    (measured ~30-80 between consecutive frames of a scan, ~5 when one of them holds no particles).
    """
    from scipy import ndimage

    fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
    x = fb * np.conj(fa)
    r = np.fft.irfft2(x / (np.abs(x) + 1e-12), s=a.shape)
    ny, nx = a.shape
    yy = np.fft.fftfreq(ny, 1 / ny)
    xx = np.fft.fftfreq(nx, 1 / nx)
    far = (np.abs(yy)[:, None] > max_shift) | (np.abs(xx)[None, :] > max_shift)
    quality = float(r.max() / (r.std() + 1e-12))
    r[far] = -np.inf
    i = np.unravel_index(np.argmax(r), r.shape)
    peaks = [i]
    top = r[i]

    def distinct(j):
        dy = np.abs((np.array([p[0] for p in peaks]) - j[0] + ny // 2) % ny - ny // 2)
        dx = np.abs((np.array([p[1] for p in peaks]) - j[1] + nx // 2) % nx - nx // 2)
        return bool(np.all((dy > STEP_PEAK_EXCLUSION) | (dx > STEP_PEAK_EXCLUSION)))

    if top > 0:
        local = (r >= ndimage.maximum_filter(r, size=3, mode="wrap")) & (r >= AMBIGUOUS_STEP_RATIO * top)
        for j in sorted(zip(*np.nonzero(local)), key=lambda j: -r[j]):
            if len(peaks) >= MAX_STEP_CANDIDATES:
                break
            if distinct(j):
                peaks.append(j)
        if len(peaks) > 1 and distinct((0, 0)):
            # no step at all is a candidate of an ambiguous step: two alike particles passing each other
            # peak at their distance apart, either side of the true, zero, step (probe ``cross``)
            peaks.append((0, 0))
    return np.array([[yy[p[0]], xx[p[1]]] for p in peaks]), quality


#: phase-correlation quality below which a frame-to-frame step is not trusted
MIN_STEP_QUALITY = 12.0

#: a step whose phase correlation has a second peak (a local maximum further than
#: :data:`STEP_PEAK_EXCLUSION` binned px from the highest) of this share of the highest or more is
#: ambiguous. Consecutive frames of the default, hard, rigid and stress scenes (seed 1, 1420 steps)
#: reach 0.25 at most (stress-all; 0.06 on the default scene); a lattice of 20 alike particles
#: moved by one spacing in one frame (probe ``chemlat``): 0.82 and 0.85, the zero shift the highest;
#: a lattice of 16 without texture 0.39 (the frames' window favours the zero shift). An ambiguous
#: step of a scene without a lattice keeps its highest peak: the texture and the key frames confirm it
AMBIGUOUS_STEP_RATIO = 0.3
#: binned px: peaks this close to a higher one are its shoulders, not another shift
STEP_PEAK_EXCLUSION = 2
#: the most candidate shifts of an ambiguous step that are weighed
MAX_STEP_CANDIDATES = 6

#: The matrix texture behind the particles (:func:`_texture_choice`): band-pass of the frame between
#: these scales (px; the synthetic matrix's texture correlates from frame to frame at 0.6-0.8 so, the
#: lattice's particles at 0.0-0.5 once masked)
TEXTURE_SIGMA = (1.0, 8.0)
#: the particles masked out of it: deviating by this many robust sigma (smoothed at 2 px) ...
TEXTURE_MASK_Z = 4.0
#: ... grown by this many px
TEXTURE_MASK_GROW = 8
#: A candidate shift of an ambiguous step is chosen by the texture where its normalised correlation
#: (the particles masked out of both frames) is at least this ...
TEXTURE_MIN_NCC = 0.25
#: ... and exceeds every other candidate's by this much. Probe ``chemlat`` (a lattice of 20 alike
#: particles, 36 px apart): the true shift 0.58-0.80, the lattice's other shifts up to 0.48 (pre-edge,
#: the particles faint and partly unmasked) and 0.04-0.11 (past the edge)
TEXTURE_MARGIN = 0.15
#: px: the texture is compared over the middle of the frames, at most this wide (the cost of a large
#: frame's ambiguous step stays that of a 768-px one)
TEXTURE_MAX_SIDE = 768


def _matrix_texture(frame):
    """``(band, objects)``: the frame's texture (a band-pass, :data:`TEXTURE_SIGMA`) and the pixels of
    its objects, the particles, that stand out of it (:data:`TEXTURE_MASK_Z`, grown)."""
    from scipy import ndimage

    f = np.nan_to_num(np.asarray(frame, np.float32))
    low = ndimage.gaussian_filter(f, TEXTURE_SIGMA[1])
    band = ndimage.gaussian_filter(f, TEXTURE_SIGMA[0]) - low
    s = ndimage.gaussian_filter(f, 2.0) - low
    dev = np.abs(s - np.median(s))
    objects = dev > TEXTURE_MASK_Z * 1.4826 * max(float(np.median(dev)), 1e-12)
    return band, ndimage.binary_dilation(objects, iterations=TEXTURE_MASK_GROW)


def _middle(frame, side: int):
    """The middle of a frame, at most ``side`` px wide and high."""
    frame = np.asarray(frame)
    return frame[tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + side) for n in frame.shape)]


def _masked_ncc(a, ma, b, mb, shift) -> float:
    """Normalised correlation of ``b`` moved by ``shift`` (int, px) with ``a`` over the pixels masked in
    neither (NaN where fewer than 5 % of the frame remain)."""
    dy, dx = int(shift[0]), int(shift[1])
    ny, nx = a.shape
    sa = (slice(max(0, -dy), min(ny, ny - dy)), slice(max(0, -dx), min(nx, nx - dx)))
    sb = (slice(max(0, dy), min(ny, ny + dy)), slice(max(0, dx), min(nx, nx + dx)))
    keep = ~ma[sa] & ~mb[sb]
    if keep.sum() < 0.05 * a.size:
        return np.nan
    u, v = a[sa][keep], b[sb][keep]
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / (np.sqrt((u * u).sum() * (v * v).sum()) + 1e-12))


def _texture_choice(frame_a, frame_b, candidates, *, search: int = PC_BINNING // 2):
    """Which of the ``candidates`` (m, 2) shifts (px) of ``frame_b`` relative to ``frame_a`` the matrix
    texture behind the particles takes: its index, or None where the texture does not single one out.

    The matrix moves with the stage; a lattice of alike particles matches itself at more than one
    shift, its texture only at the true one. Each candidate is scored by the best normalised
    correlation of the two frames' textures, their particles masked out, within ``search`` px of it
    (the candidates are binned shifts), over the middle of the frames (:data:`TEXTURE_MAX_SIDE`); it
    is taken where it reaches :data:`TEXTURE_MIN_NCC` and exceeds every other candidate's by
    :data:`TEXTURE_MARGIN`.
    """
    a, ma = _matrix_texture(_middle(frame_a, TEXTURE_MAX_SIDE))
    b, mb = _matrix_texture(_middle(frame_b, TEXTURE_MAX_SIDE))
    off = range(-search, search + 1)
    scores = []
    for c in np.rint(np.asarray(candidates, float)).astype(int):
        v = [_masked_ncc(a, ma, b, mb, (c[0] + i, c[1] + j)) for i in off for j in off]
        scores.append(np.nanmax(v) if np.isfinite(v).any() else np.nan)
    scores = np.asarray(scores)
    if not np.isfinite(scores).any():
        return None
    best = int(np.nanargmax(scores))
    others = np.delete(scores, best)
    others = others[np.isfinite(others)]
    runner_up = float(others.max()) if others.size else -1.0
    if scores[best] >= TEXTURE_MIN_NCC and scores[best] - runner_up >= TEXTURE_MARGIN:
        return best
    return None


def _decided(frame_a, frame_b, candidates, binning=PC_BINNING):
    """An ambiguous step's ``candidates`` (m, 2) px from ``frame_a`` to ``frame_b`` reduced to the one the
    matrix texture takes, where it takes one (:func:`_texture_choice`); a step of one candidate as it is."""
    if len(candidates) > 1:
        pick = _texture_choice(frame_a, frame_b, candidates, search=binning // 2)
        if pick is not None:
            return candidates[pick : pick + 1]
    return candidates


@dataclass(frozen=True)
class _CommonMotion:
    """The common shift of every frame (:func:`propagate_common`) and the frames where it is not known.

    ``ambiguous`` (n_frames,) bool: frames between key frames whose common shift is not vouched for:
    a step there matched as well at another shift (:func:`_frame_step`; a lattice of alike particles)
    and neither the matrix texture nor the key frames' common shift told which.
    """

    shift: np.ndarray
    ambiguous: np.ndarray


def propagate_common(od, common, examined, *, max_jump: float = 40.0, binning: int = PC_BINNING):
    """Common shift of the frames between key frames, by chained phase correlation.

    Consecutive frames (one energy step apart, so nearly alike) are registered on
    ``binning`` x binned, high-passed copies; the chain between two key frames is
    corrected linearly so that it ends on the key frames' voted common shift. Jumps
    of the stage between key frames are thus placed in the right frame, and the ROI
    windows of the frames without detection land on their particles.

    A step whose correlation peaks as high (:data:`AMBIGUOUS_STEP_RATIO`) at another shift (a
    lattice of alike particles: a stage jump of one spacing matches the unmoved lattice too) is
    decided by the matrix texture behind the particles (:func:`_texture_choice`), else by the
    key frames: the candidates whose chain ends on the next key frame's common shift (within two
    binned px). Frames that neither decides are left with the highest peak's shift and counted as
    ambiguous (:func:`link_detections` marks them, ``common_ambiguous``).
    """
    return _propagate_common(od, common, examined, max_jump=max_jump, binning=binning).shift


def _propagate_common(od, common, examined, *, max_jump: float = 40.0, binning: int = PC_BINNING) -> _CommonMotion:
    out = np.asarray(common, float).copy()
    ambiguous = np.zeros(len(out), bool)
    for ka, kb in zip(examined[:-1], examined[1:]):
        if kb - ka < 2:
            continue
        # chain from the last frame that registered well (a frame without particles,
        # e.g. beam lost, breaks no chain: it is skipped and filled in afterwards)
        ref, ref_frame = ka, _pc_prep(od[ka], binning)
        steps = {}  # frame -> (the frame it is registered on, candidate shifts (m, 2) px)
        prepared = {ka: ref_frame}
        for k in range(ka + 1, kb + 1):
            f = _pc_prep(od[k], binning)
            cands, q = _frame_step(ref_frame, f, max_jump / binning * np.sqrt(k - ref))
            if q >= MIN_STEP_QUALITY:
                steps[k] = (ref, _decided(od[ref], od[k], cands * binning, binning))
                prepared[k] = f
                ref, ref_frame = k, f
        if kb not in steps:  # no usable step to the next key frame: plain interpolation
            out[ka + 1 : kb] = _fill({ka: common[ka], kb: common[kb]}, common, ka, kb)
            continue
        steps = _jump_beyond_search(steps, prepared, common, ka, kb, max_jump=max_jump, binning=binning)
        vals, unknown = _resolve_steps(steps, common, ka, kb, tol=2.0 * binning)
        out[ka + 1 : kb] = vals
        ambiguous[ka + 1 : kb] = unknown
    # before the first / after the last key frame: hold
    out[: examined[0]] = common[examined[0]]
    out[examined[-1] + 1 :] = common[examined[-1]]
    return _CommonMotion(out, ambiguous)


def _jump_beyond_search(steps, prepared, common, ka, kb, *, max_jump, binning) -> dict:
    """``steps`` (frame -> (frame registered on, candidate shifts (m, 2) px)) between key frames ``ka``
    and ``kb``, the one step that a stage jump beyond the steps' search took searched again.

    A jump longer than the search of one step (``max_jump``) is not among its candidates: in a lattice of
    alike particles its highest peak within the search is the lattice moved by the jump less one spacing,
    elsewhere some other peak, and the chain of the highest peaks misses ``common[kb]`` by about a
    spacing. Spread linearly over the frames between (:func:`_fill`), that miss put the windows of
    three frames on the neighbours, where both position estimates agree and vouched for one of them
    (a 3 x 3 lattice 70 px apart, a 67.5-px jump: 69.9 px off, unflagged). Where the chain misses by
    more than two binned px, each step is searched again out to the shift that would close the chain
    (its highest candidate plus the miss); where that shift is a candidate of exactly one step's wider
    search (a peak of :data:`AMBIGUOUS_STEP_RATIO` of the highest at least: in a 300-px field the jump's
    peak was below that of the lattice moved by the jump less one spacing), that step's candidates are
    those of the wider search, for :func:`_resolve_steps` to choose among by the key frames. Otherwise
    the steps are returned as they were.
    """
    tol = 2.0 * binning
    order = sorted(steps)
    chain = {ka: np.asarray(common[ka], float)}
    for k in order:
        chain[k] = chain[steps[k][0]] + steps[k][1][0]
    miss = np.asarray(common[kb], float) - chain[kb]
    if not np.isfinite(miss).all() or np.hypot(*miss) <= tol:
        return steps
    half = (min(prepared[ka].shape) - 1) // 2  # binned px: the correlation wraps beyond
    found = []
    for k in order:
        r, cands = steps[k]
        implied = cands[0] + miss
        reach = max(max_jump * np.sqrt(k - r), float(np.abs(implied).max()) + tol) / binning
        if reach > half:
            continue
        wide, q = _frame_step(prepared[r], prepared[k], reach)
        if q >= MIN_STEP_QUALITY and (np.hypot(*(wide * binning - implied).T) <= tol).any():
            found.append((k, wide * binning))
    if len(found) != 1:
        return steps
    k, wide = found[0]
    out = dict(steps)
    out[k] = (steps[k][0], wide)  # the key frames choose among them, not the highest peak
    return out


def _fill(chain, common, ka, kb) -> np.ndarray:
    """``(kb - ka - 1, 2)``: the frames between key frames ``ka`` and ``kb`` from the ``chain`` of
    registered frames, corrected linearly so that it ends on ``common[kb]``, interpolated between them."""
    miss = common[kb] - chain[kb]
    good = np.array(sorted(chain))
    vals = np.array([chain[k] + miss * (k - ka) / (kb - ka) for k in good])
    between = np.arange(ka + 1, kb)
    return np.stack([np.interp(between, good, vals[:, d]) for d in range(2)], axis=1)


#: ambiguous steps between two key frames beyond which their combinations are not weighed
MAX_AMBIGUOUS_STEPS = 4


def _resolve_steps(steps, common, ka, kb, *, tol):
    """The frames between key frames ``ka`` and ``kb`` from the chained ``steps``, each ambiguous one
    decided by the key frames where they can: ``(values (kb - ka - 1, 2), ambiguous (kb - ka - 1,))``.

    Every combination of the ambiguous steps' candidates is chained; those ending within ``tol`` of
    ``common[kb]`` are consistent with the key frames. The consistent one that takes the fewest steps
    off their highest peak is taken, then the one with the smallest miss (then the highest peaks);
    frames where the consistent combinations differ by more than ``tol / 2`` are ambiguous. By the
    smallest miss first (before 2026-12-07), three lower peaks that happened to add up closer to the
    key frame than the highest peaks' chain (which missed it by 6 of the 8 px allowed: the binned steps'
    rounding) were taken over it, near the edge of a reduced stress-all scene (seed 1): every
    particle's window placed 30 px off in two frames, measured in neither, their positions filled
    there from that shift (flagged): each isolated particle 7.2 px RMS, none tracked through every
    frame; with the fewest lower peaks 0.31-0.53 px, all three (0.40-0.53 px turned or flipped).
    Where none is consistent (or the steps are too many to weigh), the highest peaks are taken and every
    frame from the first ambiguous step on is ambiguous, as is every frame before it that the miss of
    that chain, spread over the frames, moved by more than ``tol / 2``.
    """
    import itertools

    open_steps = [k for k in sorted(steps) if len(steps[k][1]) > 1]

    def chain_of(choice):
        chain = {ka: np.asarray(common[ka], float)}
        for k in sorted(steps):
            r, cands = steps[k]
            chain[k] = chain[r] + cands[choice.get(k, 0)]
        return chain

    first = _fill(chain_of({}), common, ka, kb)
    none = np.zeros(kb - ka - 1, bool)
    if not open_steps:
        return first, none
    between = np.arange(ka + 1, kb)
    # the miss of the highest peaks' chain, spread over the frames between (:func:`_fill`), moved the frames
    # before the first open step too (the open step last before the key frame: none of those between was
    # marked, each moved by up to 61 px of a 70-px miss)
    first_miss = float(np.hypot(*(np.asarray(common[kb], float) - chain_of({})[kb])))
    unresolved = (between >= open_steps[0]) | (first_miss * (between - ka) / (kb - ka) > tol / 2)
    if len(open_steps) > MAX_AMBIGUOUS_STEPS:
        return first, unresolved
    fits = []
    for idx in itertools.product(*[range(len(steps[k][1])) for k in open_steps]):
        chain = chain_of(dict(zip(open_steps, idx)))
        miss = float(np.hypot(*(common[kb] - chain[kb])))
        if miss <= tol:
            fits.append((sum(i > 0 for i in idx), miss, sum(idx), _fill(chain, common, ka, kb)))
    if not fits:
        return first, unresolved
    fits.sort(key=lambda f: f[:3])
    vals = fits[0][3]
    spread = np.max([np.hypot(*(f[3] - vals).T) for f in fits], axis=0)
    return vals, spread > tol / 2
