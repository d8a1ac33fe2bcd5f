"""One linker for particles: through the frames of a scan and through the scans of a series.

The linker is given the objects found at each time (a frame of a scan, or a scan of a
series) and gives each one a track id. Between a time and the tracks built so far:

1. the **common displacement** is found by voting: every pairing of a track with an
   object of similar size within ``max_jump`` proposes a displacement, and the one that
   brings most tracks onto an object wins (stage jumps and offsets move every particle
   alike). A ``prior`` (e.g. the frames' phase-correlation shift) breaks ties and stands in
   when no two particles agree;
2. each track's position is **predicted** by a pluggable predictor; the default,
   :func:`own_motion_predictor`, adds to the track's last position the common displacement
   since then *and the particle's own recent velocity relative to it* (a particle drifting
   on its own is followed, not only the frame);
3. track-object pairs within a gate (growing with the radius and with the gap since the
   track was last seen, the growth stopping short of the place another track is predicted
   at) are scored by their residual distance, by the size ratio and by an optional extra
   score (the SSIM of the two ROIs within a scan); the optimal assignment (Hungarian) links
   them, unlinked objects start tracks.

A particle moving on its own by more than the gate from one time to the next leaves a track
of its own at each sighting; :func:`chain_pieces` joins such pieces where they step evenly, at
one size, and nothing else could continue them (used within a scan).

In **strict** mode (``LinkOptions.strict``, used across the scans of a series) the
common displacement is never guessed (:func:`decide_displacement`): a vote must be
unique and unlikely to be a coincidence, or the prior must be confirmed by the
particles, or not contradicted by them; otherwise nothing is linked at that time and
the older tracks are closed: new ids rather than a wrong link.

The design follows trackpy's ``linking`` (a predictor that is a plain function of the
track's history); the assignment is global per time step as in ``trackpy.link`` with the
``'hybrid'`` strategy replaced by one Hungarian solve, since our subnetworks are small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "LinkOptions",
    "Track",
    "link",
    "chain_pieces",
    "vote_displacement",
    "decide_displacement",
    "chance_support",
    "own_motion_predictor",
    "common_only_predictor",
]


@dataclass(frozen=True)
class LinkOptions:
    """Options of :func:`link` (lengths in pixels of the input coordinates).

    Attributes
    ----------
    max_jump : float or None, default None
        px. Largest common displacement between two consecutive times (stage jump or
        offset). ``None``: 40 px or 8 % of the field of view, whichever is larger (within
        a scan).
    gate : float, default 8.0
        px. Smallest search radius around a track's predicted position.
    gate_fraction : float, default 0.25
        The search radius is at least this fraction of the track's particle radius.
    gap_gate_growth : float, default 0.5
        The search radius grows by this fraction per time step the track was not seen ...
    gap_gate_share : float, default 0.5
        ... up to this share of the distance from the track's predicted position to the
        nearest other track's beyond the search radius of a track without a gap (never below
        that radius; a track predicted within it may be a piece of the same particle):
        after a gap, a track is not linked where another track is nearly as likely to be
        (two alike particles passing each other 36 px apart at 2-3 px per frame, each lost
        after its first sighting: the grown radius reached the other one, and each track was
        vouched for on both). ``inf``: no limit.
    max_gap : int, default 10000
        A track not seen for more than this many time steps is closed.
    vote_tolerance : float, default 3.0
        px. Two objects agree with a candidate common displacement within this distance ...
    vote_fraction : float, default 0.15
        ... or this fraction of the median radius, whichever is larger.
    max_size_ratio : float, default 1.6
        Objects whose radii differ by more than this factor are never paired (neither in
        the vote nor in the assignment).
    size_weight : float, default 1.0
        Weight of ``|log(r1 / r2)|`` in the assignment cost.
    score_weight : float, default 1.0
        Weight of ``1 - score`` (e.g. SSIM) in the assignment cost.
    min_score : float, default 0.2
        A pair scoring below this is not linked unless its position is convincing
        (residual below half the gate).
    velocity_damping : float, default 0.8
        Fraction of the particle's own velocity carried into the prediction (0: common
        motion only; 1: constant velocity).
    strict : bool, default False
        Never guess the common displacement (see :func:`decide_displacement`): it is taken
        only from a vote that no other displacement matches, or from the ``prior``
        confirmed (or not contradicted) by the particles; where neither can tell it, no
        object of that time is linked and the tracks seen before are closed (new ids
        rather than a wrong link). Used across the scans of a series, where offsets are
        large and few particles may be common to two scans.
    prior_tolerance : float, default 8.0
        px. With ``strict``: a voted displacement within this distance of the prior
        agrees with it.
    field_area : float or None, default None
        px^2. With ``strict``: area over which objects are found (the frame), for the
        chance that pairs agree by coincidence; None: the bounding box of the objects.
    field_shape : (rows, cols) or None, default None
        With ``strict`` and a prior: the frame, to count the objects the prior's
        displacement should bring into view (:func:`decide_displacement`); None: not counted.
    max_chance : float, default 0.1
        With ``strict``: a vote not confirmed by the prior is taken only when the expected
        number of displacements that as many points would support by coincidence is
        below this.
    """

    max_jump: float | None = None
    gate: float = 8.0
    gate_fraction: float = 0.25
    gap_gate_growth: float = 0.5
    gap_gate_share: float = 0.5
    max_gap: int = 10_000
    vote_tolerance: float = 3.0
    vote_fraction: float = 0.15
    max_size_ratio: float = 1.6
    size_weight: float = 1.0
    score_weight: float = 1.0
    min_score: float = 0.2
    velocity_damping: float = 0.8
    strict: bool = False
    prior_tolerance: float = 8.0
    field_area: float | None = None
    max_chance: float = 0.1
    field_shape: tuple | None = None


@dataclass
class Track:
    """A track while linking: its history and whatever the caller stores with it."""

    id: int
    times: list = field(default_factory=list)
    positions: list = field(default_factory=list)  # (y, x) per time seen
    radius: float = np.nan
    data: dict = field(default_factory=dict)

    @property
    def last_time(self):
        return self.times[-1]

    @property
    def last(self):
        return np.asarray(self.positions[-1], float)


def own_motion_predictor(track: Track, t, common, *, damping: float = 0.8):
    """Last position + common displacement since then + the particle's own velocity.

    The own velocity is the track's displacement less the common one between its last two
    sightings, per time step, damped by ``damping``.
    """
    last_t = track.last_time
    pred = track.last + common[t] - common[last_t]
    if len(track.times) >= 2 and damping > 0:
        t0 = track.times[-2]
        own = (track.last - np.asarray(track.positions[-2], float)) - (common[last_t] - common[t0])
        pred = pred + damping * own * (t - last_t) / max(last_t - t0, 1)
    return pred


def common_only_predictor(track: Track, t, common, **_):
    """Last position + common displacement since then (rigid motion only)."""
    return track.last + common[t] - common[track.last_time]


def vote_displacement(prev, cur, max_jump, tol, *, prior=None, prev_radius=None, cur_radius=None, max_size_ratio=1.6):
    """Common displacement of point set ``prev`` onto ``cur`` by voting.

    Parameters
    ----------
    prev, cur : ndarray (n, 2), (m, 2)
    max_jump : float
        Candidate displacements longer than this are not considered.
    tol : float
        A point agrees with a candidate when it lands within ``tol`` of a point of ``cur``.
    prior : (2,) array, optional
        Breaks ties between equally supported candidates (the nearest wins) and replaces
        a vote that no two points agree on (with one point common to both sets, any
        pairing "agrees" with itself). Without it the shortest displacement wins a tie
        (``prev`` are predictions: no new common motion is the likeliest).
    prev_radius, cur_radius : ndarray, optional
        Sizes: only pairs within ``max_size_ratio`` propose or agree.

    Returns
    -------
    displacement : ndarray (2,)
    n_agree : int
        Points of ``prev`` that agree with it (0 when nothing could be voted).
    """
    disp, n, _ = _vote(prev, cur, max_jump, tol, prior, prev_radius, cur_radius, max_size_ratio)
    return disp, n


def _vote(prev, cur, max_jump, tol, prior, prev_radius, cur_radius, max_size_ratio):
    """:func:`vote_displacement`, and whether a candidate more than ``2 tol`` from the one chosen had as much
    support (``tied``: two particles of a lattice agree on a step of one spacing as well as on the true one)."""
    prev = np.asarray(prev, float).reshape(-1, 2)
    cur = np.asarray(cur, float).reshape(-1, 2)
    nothing = (np.zeros(2) if prior is None else np.asarray(prior, float)), 0, False
    cand, support, compatible = _vote_support(prev, cur, max_jump, tol, prev_radius, cur_radius, max_size_ratio)
    if cand.size == 0:
        return nothing
    gap = np.hypot(*(cand - prior).T) if prior is not None else np.zeros(len(cand))
    order = np.lexsort((gap, -support))
    best, best_n, best_gap = cand[order[0]], int(support[order[0]]), float(gap[order[0]])
    tied = bool(((support == best_n) & (np.hypot(*(cand - best).T) > 2 * tol)).any())
    if tied and prior is None:
        # steps far apart, as well supported: the shortest (else the first pairing found won; candidates close
        # together, one step measured through different pairs, are left in that order)
        top = np.flatnonzero(support == best_n)
        best = cand[top[np.argmin(np.hypot(*cand[top].T))]]
    if prior is not None and best_n < 2 and best_gap > tol:
        return np.asarray(prior, float), best_n, tied  # a lone pairing that the prior does not support
    return _refine(prev, cur, best, tol, compatible), best_n, tied


def _size_compatible(n_prev, n_cur, prev_radius, cur_radius, max_size_ratio) -> np.ndarray:
    """(n_prev, n_cur): pairs whose radii are within ``max_size_ratio`` of each other (NaN sizes stay compatible)."""
    compatible = np.ones((n_prev, n_cur), bool)
    if n_prev and n_cur and prev_radius is not None and cur_radius is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(np.log(np.asarray(cur_radius, float)[None, :] / np.asarray(prev_radius, float)[:, None]))
        compatible = ~(ratio > np.log(max_size_ratio))
    return compatible


def _vote_support(prev, cur, max_jump, tol, prev_radius, cur_radius, max_size_ratio, prior=None):
    """Candidate displacements (every size-compatible pairing within ``max_jump``, and, where the ``prior`` lies
    beyond it, within ``max_jump`` of the prior: an offset the images measured beyond the particles' own search,
    155 px, was otherwise never confirmed by them) and their support.

    Returns ``cand`` (n_cand, 2), ``support`` (n_cand,): points of ``prev`` that land within
    ``tol`` of a compatible point of ``cur`` when moved by the candidate, and the
    ``compatible`` (n_prev, n_cur) size mask.
    """
    compatible = _size_compatible(len(prev), len(cur), prev_radius, cur_radius, max_size_ratio)
    if len(prev) == 0 or len(cur) == 0:
        return np.zeros((0, 2)), np.zeros(0, int), compatible
    d = cur[None, :, :] - prev[:, None, :]  # (n_prev, n_cur, 2)
    near = np.hypot(d[..., 0], d[..., 1]) <= max_jump
    # around a prior beyond it too (within it, the search is as it was: frames' votes unchanged)
    if prior is not None and np.hypot(*prior) > max_jump:
        near |= np.hypot(d[..., 0] - prior[0], d[..., 1] - prior[1]) <= max_jump
    cand = d[near & compatible]
    if cand.size == 0:
        return np.zeros((0, 2)), np.zeros(0, int), compatible
    return cand, _support(d, compatible, cand, tol), compatible


def _support(d, compatible, cand, tol) -> np.ndarray:
    """For each candidate displacement, the number of points ``i`` of the first set with a compatible pairing
    ``d[i, j]`` within ``tol`` of it (a point moved by it lands within ``tol`` of a compatible point).

    Counted among the compatible pairings near each candidate (a k-d tree of the pairings' displacements): the
    distances of every candidate to every pairing, (n_cand, n_prev, n_cur) at once, grew with the fourth power of
    the objects per frame (150 particles: 2.4 GB; 300 fines kept by ``--min-radius 2``: 6.2 GB, 90 s).
    """
    from scipy.spatial import cKDTree

    owner = np.nonzero(compatible)[0]
    tree = cKDTree(d[compatible])
    hits = tree.query_ball_point(cand, r=tol * (1 + 1e-12), return_sorted=False)
    lengths = np.fromiter((len(h) for h in hits), int, len(hits))
    if not lengths.sum():
        return np.zeros(len(cand), int)
    which = np.repeat(np.arange(len(cand)), lengths)
    pairs = np.unique(which * np.int64(compatible.shape[0]) + owner[np.concatenate(hits).astype(np.intp)])
    return np.bincount(pairs // compatible.shape[0], minlength=len(cand)).astype(int)


def _refine(prev, cur, best, tol, compatible):
    """Median displacement of the pairs that agree with ``best`` (``best`` if none does)."""
    dd = np.hypot(*((prev + best)[:, None, :] - cur[None, :, :]).transpose(2, 0, 1))
    dd = np.where(compatible, dd, np.inf)
    j = dd.argmin(axis=1)
    ok = dd[np.arange(len(prev)), j] <= tol
    if ok.any():
        best = np.median(cur[j[ok]] - prev[ok], axis=0)
    return np.asarray(best, float)


def chance_support(prev, cur, compatible, tol, k, area=None) -> float:
    """Expected number of candidate displacements that ``k`` points support by coincidence.

    Points placed at random over ``area`` (default: the bounding box of both sets): a
    candidate (one pairing) is supported by each other point of ``prev`` with the chance
    that it lands within ``tol`` of a size-compatible point of ``cur``.
    """
    from scipy.stats import binom

    n = len(prev)
    if k <= 1 or n < k:
        return float("inf") if k <= 1 else 0.0
    if area is None:
        both = np.r_[prev, cur]
        area = float(np.prod(np.ptp(both, axis=0) + 2 * tol))
    p = min(1.0, float(compatible.sum(axis=1).mean()) * np.pi * tol**2 / max(area, 1.0))
    return float(compatible.sum() * binom.sf(k - 2, n - 1, p))


def decide_displacement(
    prev,
    cur,
    max_jump,
    tol,
    *,
    prior=None,
    prior_tolerance=8.0,
    prev_radius=None,
    cur_radius=None,
    max_size_ratio=1.6,
    area=None,
    max_chance=0.1,
    field=None,
):
    """Common displacement of ``prev`` onto ``cur``, or None where it cannot be told.

    The strict counterpart of :func:`vote_displacement` (``LinkOptions.strict``): a
    displacement is returned only when the evidence singles it out.

    - Without a prior: the vote must be carried by at least two points, no other
      displacement (further than ``2 * tol``) may have as many, and as many points must
      be unlikely to agree by coincidence (:func:`chance_support` over ``area`` at most
      ``max_chance``). One point common to both sets cannot be told from a chance
      pairing: None.
    - With a prior (an independent estimate, e.g. phase correlation of the two images):
      a vote within ``prior_tolerance`` of it is taken (refined on its pairs); the
      prior (refined on the pairs that agree with it, if any) is taken when no other
      displacement has more support than it, which covers a single common point; a
      vote that contradicts the prior wins only with at least three points, twice the
      prior's support and no likely coincidence; anything else (e.g. two points
      agreeing on a displacement the prior rejects) is ambiguous: None.
    - With ``field`` (rows, cols): the prior taken with the support of at most half of
      the points it should bring into view (of ``prev`` inside ``cur``'s frame and of
      ``cur`` inside ``prev``'s, the fewer; two at least), or of none of one or more, is
      not confirmed: None ("prior unconfirmed"). Two unrelated fields of few particles
      correlate by chance (the largest particle of one on the other's: 7 of 7 such pairs
      of synthetic scans were joined by one particle, quality 31-51), and then one pair of
      similar size agrees with that offset while the others, which should be in view, do
      not (or none agrees within ``tol``, and one was linked inside the wider gate).
    - The vote taken without a prior is held to the same test ("vote unconfirmed"), in
      ``field`` or, without it, in the least frame that holds both sets: at the true
      offset the objects that lie where the two frames overlap are found in both. Two
      unrelated scans (320 x 320) of 5 and of 6 particles were linked by two pairs of
      similar size agreeing by chance in 3 of 300 draws each, now in 2 and 0 (the two
      left: 2 of the 3 in view of both frames found). In the probe's case
      (:func:`chance_support` 0.088) the offset (10.7, 10.2) px kept 94 % of the frames
      overlapping, yet 3 of each scan's 5 particles had no partner.

    Where one of the sets is empty there is nothing to link: the prior, or zero.

    Returns
    -------
    displacement : ndarray (2,) or None
    n_agree : int
        Points of ``prev`` that agree with the displacement (the best vote's when None).
    how : str
        "vote", "vote+prior", "prior", "vote over prior", "empty", "ambiguous",
        "prior contradicted", "prior unconfirmed" or "vote unconfirmed".
    """
    out = _decide_displacement(
        prev, cur, max_jump, tol, prior, prior_tolerance, prev_radius, cur_radius, max_size_ratio, area, max_chance
    )
    disp, n, how = out
    if disp is None or how not in ("prior", "vote") or (field is None and how == "prior"):
        return out
    if field is None:  # a vote without the frame: the objects' own extent stands in for it
        field = _extent(prev, cur, prev_radius, cur_radius)
    expected = _in_view(prev, disp, field, prev_radius), _in_view(cur, -np.asarray(disp, float), field, cur_radius)
    k = min(expected)
    n = max(n, _landing(prev, cur, disp, CONFIRM_TOL * tol, prev_radius, cur_radius, max_size_ratio))
    if (k >= 2 and n <= k / 2) or (k >= 1 and n == 0):
        return None, n, f"{how} unconfirmed"
    return out


def _extent(prev, cur, prev_radius, cur_radius) -> tuple:
    """(rows, cols) that hold every point of both sets with its radius: the least frame they were found in."""
    pts = np.r_[np.asarray(prev, float).reshape(-1, 2), np.asarray(cur, float).reshape(-1, 2)]
    r = np.r_[
        np.zeros(len(prev)) if prev_radius is None else np.asarray(prev_radius, float).reshape(-1),
        np.zeros(len(cur)) if cur_radius is None else np.asarray(cur_radius, float).reshape(-1),
    ]
    far = pts + np.nan_to_num(r, nan=0.0)[:, None] + 1
    return tuple(float(v) for v in far.max(axis=0)) if len(far) else (0.0, 0.0)


#: the prior (the images' offset) is confirmed by the particles that land within this many vote tolerances of a
#: particle of their size when moved by it: between scans particles move on their own by more than within one (4-6 px
#: per scan reset every id of 3 of 6 probe series at 1; at 2, and at 3, those linked and no wrong identity among 39
#: probe series, unrelated fields included)
CONFIRM_TOL = 2.0


def _landing(prev, cur, disp, tol, prev_radius, cur_radius, max_size_ratio) -> int:
    """Points of ``prev`` that, moved by ``disp``, land within ``tol`` of a size-compatible point of ``cur``."""
    prev = np.asarray(prev, float).reshape(-1, 2)
    cur = np.asarray(cur, float).reshape(-1, 2)
    if not len(prev) or not len(cur):
        return 0
    compatible = _size_compatible(len(prev), len(cur), prev_radius, cur_radius, max_size_ratio)
    moved = prev + np.asarray(disp, float)
    dist = np.hypot(moved[:, None, 0] - cur[None, :, 0], moved[:, None, 1] - cur[None, :, 1])
    return int((np.where(compatible, dist, np.inf).min(axis=1) <= tol).sum())


#: how a step of :func:`decide_displacement` ends when it links nothing (the tracks are closed, new ids); "images not
#: compared" is ``xanestrack.series.link_scans``'s "ambiguous" where the scans' images could not be compared at all
NOT_JOINED = ("ambiguous", "prior contradicted", "prior unconfirmed", "vote unconfirmed", "images not compared")


def _in_view(points, disp, field, radius=None) -> int:
    """How many ``points`` moved by ``disp`` lie inside ``field`` (rows, cols), their radius from its edges."""
    p = np.asarray(points, float).reshape(-1, 2) + np.asarray(disp, float)
    r = np.zeros(len(p)) if radius is None else np.nan_to_num(np.asarray(radius, float).reshape(-1), nan=0.0)
    inside = (p[:, 0] >= r) & (p[:, 0] <= field[0] - 1 - r) & (p[:, 1] >= r) & (p[:, 1] <= field[1] - 1 - r)
    return int(inside.sum())


def _decide_displacement(
    prev, cur, max_jump, tol, prior, prior_tolerance, prev_radius, cur_radius, max_size_ratio, area, max_chance
):
    prev = np.asarray(prev, float).reshape(-1, 2)
    cur = np.asarray(cur, float).reshape(-1, 2)
    if len(prev) == 0 or len(cur) == 0:
        return (np.zeros(2) if prior is None else np.asarray(prior, float)), 0, "empty"
    if prior is not None:
        prior = np.asarray(prior, float)
    cand, support, compatible = _vote_support(
        prev, cur, max_jump, tol, prev_radius, cur_radius, max_size_ratio, prior=prior
    )
    if cand.size == 0:
        return (None, 0, "ambiguous") if prior is None else (prior, 0, "prior")
    gap = np.hypot(*(cand - prior).T) if prior is not None else np.zeros(len(cand))
    order = np.lexsort((gap, -support))
    best, n1 = cand[order[0]], int(support[order[0]])
    far = np.hypot(*(cand - best).T) > 2 * tol
    n2 = int(support[far].max()) if far.any() else 0
    if prior is None:
        if n1 >= 2 and n2 < n1 and chance_support(prev, cur, compatible, tol, n1, area) <= max_chance:
            return _refine(prev, cur, best, tol, compatible), n1, "vote"
        return None, n1, "ambiguous"
    near = gap <= prior_tolerance
    n_p = int(support[near].max()) if near.any() else 0
    if np.hypot(*(best - prior)) <= prior_tolerance:  # (a single pairing is the prior's choice, not a vote)
        return _refine(prev, cur, best, tol, compatible), n1, "vote+prior" if n1 >= 2 else "prior"
    if n_p >= n1 or n1 < 2:
        if n_p == 0:
            return prior, 0, "prior"
        k = np.flatnonzero(near)
        k = k[np.lexsort((gap[k], -support[k]))[0]]
        return _refine(prev, cur, cand[k], tol, compatible), n_p, "prior"
    if n1 >= 3 and n1 >= 2 * n_p and chance_support(prev, cur, compatible, tol, n1, area) <= max_chance:
        return _refine(prev, cur, best, tol, compatible), n1, "vote over prior"
    return None, n1, "prior contradicted"


def link(
    objects,
    *,
    options: LinkOptions = LinkOptions(),
    predictor=own_motion_predictor,
    score=None,
    prior=None,
    on_link=None,
    on_step=None,
):
    """Give every object a track id.

    Parameters
    ----------
    objects : list of DataFrame
        One table per time (frame or scan), in order, each with columns ``y, x, radius``
        (the radius may be NaN). An empty table is a time with nothing found.
    options : LinkOptions
    predictor : callable(track, t, common, damping=...) -> (y, x)
        Predicted position of a track at time index ``t`` (see :func:`own_motion_predictor`).
    score : callable(track, t, j) -> float, optional
        Similarity in [0, 1] (1: same object) of track and object ``j`` of time ``t``,
        e.g. the SSIM of their ROIs. Called only for pairs inside the gate.
    prior : callable(t_prev, t) -> (2,) array or None, optional
        Independent estimate of the common displacement between two times, used when
        the vote is not decided by at least two particles (with ``options.strict``:
        asked at every time, see :func:`decide_displacement`).
    on_link : callable(track, t, j), optional
        Called whenever object ``j`` of time ``t`` joins ``track`` (also for a new
        track), e.g. to store the ROI for ``score``.
    on_step : callable(t, displacement, n_agree, how), optional
        Called once per time after the first with the common displacement from the
        previous time (None where ``options.strict`` could not tell it), the number of
        tracks that agree with it and how it was decided.

    Returns
    -------
    ids : list of ndarray
        Track id of every object, per time.
    common : ndarray (n_times, 2)
        Common displacement of each time relative to time 0.
    tracks : list of Track
    """
    n_times = len(objects)
    common = np.zeros((n_times, 2))
    tracks: list[Track] = []
    ids = []
    all_r = np.concatenate([np.asarray(o["radius"], float) for o in objects if len(o)] or [np.zeros(0)])
    med_r = float(np.nanmedian(all_r)) if np.isfinite(all_r).any() else 10.0
    vote_tol = max(options.vote_tolerance, options.vote_fraction * med_r)
    max_jump = 40.0 if options.max_jump is None else float(options.max_jump)
    prev_t = None
    horizon = 0  # strict: tracks last seen before this time are closed (displacement since unknown)
    for t, obj in enumerate(objects):
        cur = obj[["y", "x"]].to_numpy(float) if len(obj) else np.zeros((0, 2))
        cur_r = obj["radius"].to_numpy(float) if len(obj) else np.zeros(0)
        alive = [tr for tr in tracks if t - tr.last_time <= options.max_gap and tr.last_time >= horizon]
        if prev_t is not None:
            voters = [tr for tr in alive if tr.last_time == prev_t] or alive
            # where each voter would be with no new common motion (its own velocity included)
            common[t] = common[prev_t]
            damp = options.velocity_damping
            prev = np.array([predictor(tr, t, common, damping=damp) for tr in voters], float).reshape(-1, 2)
            prev_r = np.array([tr.radius for tr in voters], float)
            kw = dict(prev_radius=prev_r, cur_radius=cur_r, max_size_ratio=options.max_size_ratio)
            if options.strict:
                pr = prior(prev_t, t) if prior is not None else None
                disp, n_agree, how = decide_displacement(
                    prev,
                    cur,
                    max_jump,
                    vote_tol,
                    prior=pr,
                    prior_tolerance=options.prior_tolerance,
                    area=options.field_area,
                    max_chance=options.max_chance,
                    field=options.field_shape,
                    **kw,
                )
                if disp is None:  # cannot tell where the tracks went: none is linked, all are closed
                    horizon, alive = t, []
                else:
                    common[t] = common[prev_t] + disp
            else:
                disp, n_agree, tied = _vote(prev, cur, max_jump, vote_tol, None, prev_r, cur_r, options.max_size_ratio)
                pr = None
                # the images' offset decides where fewer than two particles agree, or where as many agree on
                # another step (a 2 x 2 lattice of particles 115 px apart, two of them too faint to be found at
                # first: two agreed on no motion, two on one spacing; the shortest step wins that tie without a
                # prior, but a true jump of one spacing is the images' to tell)
                if (n_agree < 2 or tied) and prior is not None:
                    pr = prior(prev_t, t)
                    if pr is not None:
                        disp, n_agree = vote_displacement(prev, cur, max_jump, vote_tol, prior=pr, **kw)
                how = "prior" if (pr is not None and (n_agree < 2 or tied)) else ("vote" if n_agree else "none")
                common[t] = common[prev_t] + (disp if (n_agree > 0 or pr is not None) else 0)
            if on_step is not None:
                on_step(t, None if disp is None else common[t] - common[prev_t], n_agree, how)
        prev_t = t
        these = np.full(len(cur), -1, int)
        if len(cur) and alive:
            cost = np.full((len(alive), len(cur)), np.inf)
            preds = np.array(
                [predictor(tr, t, common, damping=options.velocity_damping) for tr in alive], float
            ).reshape(-1, 2)
            for i, tr in enumerate(alive):
                pred = preds[i]
                gap = t - tr.last_time - 1
                r = tr.radius if np.isfinite(tr.radius) else med_r
                base = _base_gate(options, r)
                gate = base * (1 + options.gap_gate_growth * gap)
                reach = gate
                if gap > 0 and len(alive) > 1:
                    # the grown gate stops short of the place another track is predicted at (one predicted
                    # within the gate may be this very particle: a piece of it, seen while this track was
                    # not); the costs stay those of the grown gate
                    near = np.hypot(*(np.delete(preds, i, axis=0) - pred).T)
                    near = near[np.isfinite(near) & (near > base)]
                    if near.size:
                        reach = min(gate, max(base, options.gap_gate_share * float(near.min())))
                dist = np.hypot(cur[:, 0] - pred[0], cur[:, 1] - pred[1])
                with np.errstate(divide="ignore", invalid="ignore"):
                    size = np.abs(np.log(cur_r / r))
                size = np.where(np.isfinite(size), size, 0.0)
                for j in np.flatnonzero((dist <= reach) & (size <= np.log(options.max_size_ratio))):
                    c = dist[j] / gate + options.size_weight * size[j]
                    if score is not None:
                        s = float(score(tr, t, j))
                        # a low score vetoes a link only when the position is not convincing
                        if not np.isfinite(s) or (s < options.min_score and dist[j] > 0.5 * gate):
                            continue
                        c += options.score_weight * (1 - s)
                    cost[i, j] = c
            big = 1e6
            c = np.where(np.isfinite(cost), cost, big)
            for i, j in zip(*linear_sum_assignment(c)):
                if c[i, j] < big:
                    these[j] = alive[i].id
        for j in range(len(cur)):
            if these[j] < 0:
                tracks.append(Track(id=len(tracks)))
                these[j] = tracks[-1].id
            tr = tracks[these[j]]
            tr.times.append(t)
            tr.positions.append(cur[j])
            if np.isfinite(cur_r[j]):
                tr.radius = float(cur_r[j])
            if on_link is not None:
                on_link(tr, t, j)
        ids.append(these)
    return ids, common, tracks


def _base_gate(options: LinkOptions, radius: float) -> float:
    """px: the search radius of a track of particle ``radius`` seen at the time before (``gate``, or
    ``gate_fraction`` of the radius; an unknown radius counts as none)."""
    return max(options.gate, options.gate_fraction * (radius if np.isfinite(radius) else 0.0))


#: pieces whose radii differ by more than this factor are not one particle (:func:`chain_pieces`)
CHAIN_SIZE_RATIO = 1.25
#: share of a chain's velocity by which a step from piece to piece may differ from it (and the gate's
#: vote tolerance over the step's time, for the positions' own noise)
CHAIN_SPEED_TOLERANCE = 0.25


def chain_pieces(tracks, common, *, pieces, options: LinkOptions = LinkOptions(), clock=None, min_sightings: int = 3):
    """Chains of tracks that one particle, moving faster than the gate, left in pieces.

    A particle that moves on its own by more than the gate from one time to the next is lost
    after each sighting (its own velocity is known only from two sightings in one track): each
    sighting starts a track of its own (twins passing each other at 1.7 px per frame, 13.5 px per
    key frame against a gate of 13.4: one of them never reported, 9 tracks of one sighting). Two
    ``pieces`` are joined, the later starting one or two times after the earlier ends, where

    - their radii are within :data:`CHAIN_SIZE_RATIO` of each other;
    - the own displacement between them (the ``common`` one taken out) is longer than the gate of
      the earlier one, grown with the time skipped (``options.gate``, ``options.gate_fraction``,
      ``options.gap_gate_growth``: nearer, the linker would have joined them, and something else
      kept them apart) and at most ``options.max_jump``;
    - it steps evenly: its velocity (per unit of ``clock``) is within :data:`CHAIN_SPEED_TOLERANCE` of
      the chain's so far (plus the vote tolerance over the step's time), and a piece of more than one
      sighting moves with the chain within as much (or half its gate: within a piece, the common
      displacement's own errors weigh on a short time);
    - nothing else continues the chain so, and the piece joined continues no other piece so.

    A chain holds ``min_sightings`` sightings at least; a piece found in two chains is in neither.

    Parameters
    ----------
    tracks : list of Track
        As :func:`link` returns them.
    common : ndarray (n_times, 2)
        The common displacement of every time (:func:`link`).
    pieces : iterable of int
        The ids of the tracks that may be joined (e.g. those too short to keep).
    options : LinkOptions
        The linker's options (``gate``, ``gate_fraction``, ``vote_tolerance``, ``max_jump``).
    clock : ndarray (n_times,), optional
        The time of every time index (e.g. the frame numbers of the key frames): velocities are per
        unit of it. Default: the indices.
    min_sightings : int

    Returns
    -------
    list of list of int
        The chains, each the ids of its pieces in time order.
    """
    common = np.asarray(common, float)
    clock = np.arange(len(common), dtype=float) if clock is None else np.asarray(clock, float)
    by_id = {tr.id: tr for tr in tracks}
    ids = [i for i in dict.fromkeys(pieces) if i in by_id and by_id[i].times]
    if len(ids) < 2:
        return []
    own = {i: np.asarray(by_id[i].positions, float) - common[np.asarray(by_id[i].times)] for i in ids}
    radius = {i: by_id[i].radius for i in ids}
    max_jump = 40.0 if options.max_jump is None else float(options.max_jump)
    tol = options.vote_tolerance

    def agree(v, w, dt):
        return np.hypot(*(v - w)) <= tol / dt + CHAIN_SPEED_TOLERANCE * max(np.hypot(*v), np.hypot(*w))

    def span(i, j):  # own displacement and time from the end of piece i to the start of piece j
        a, b = by_id[i].times[-1], by_id[j].times[0]
        return own[j][0] - own[i][-1], clock[b] - clock[a]

    starts = {}
    for i in ids:
        starts.setdefault(by_id[i].times[0], []).append(i)
    succ = {i: [] for i in ids}
    pred = {i: [] for i in ids}
    for i in ids:
        end = by_id[i].times[-1]
        for j in starts.get(end + 1, []) + starts.get(end + 2, []):
            ri, rj = radius[i], radius[j]
            if np.isfinite(ri) and np.isfinite(rj) and abs(np.log(rj / ri)) > np.log(CHAIN_SIZE_RATIO):
                continue
            d, dt = span(i, j)
            step = np.hypot(*d)
            gate = _base_gate(options, ri) * (1 + options.gap_gate_growth * (by_id[j].times[0] - end - 1))
            if dt > 0 and gate < step <= max_jump:
                succ[i].append((j, d / dt, dt))
                pred[j].append((i, d / dt, dt))

    def inner(i, v):  # a piece of several sightings moves with the chain, within half its gate
        tr = by_id[i]
        dt = clock[tr.times[-1]] - clock[tr.times[0]]
        miss = np.hypot(*(own[i][-1] - own[i][0] - v * dt))
        return miss <= max(tol, 0.5 * _base_gate(options, radius[i])) + CHAIN_SPEED_TOLERANCE * np.hypot(*v) * dt

    def velocity(chain):
        a, b = by_id[chain[0]].times[0], by_id[chain[-1]].times[-1]
        return (own[chain[-1]][-1] - own[chain[0]][0]) / (clock[b] - clock[a])

    chains = []
    for i in ids:
        for j, v, dt in succ[i]:
            if not (inner(i, v) and inner(j, v)):
                continue
            if any(agree(w, v, min(dt, dw)) for _, w, dw in pred[i]):
                continue  # not the chain's first piece: it is reached from the one before
            if any(agree(w, v, min(dt, dw)) for _, w, dw in succ[i] if dw < dt):
                continue  # a piece sooner continues it
            chain = [i, j]
            while True:
                vel = velocity(chain)
                nxt = [(k, dw) for k, w, dw in succ[chain[-1]] if agree(w, vel, dw) and inner(k, vel)]
                soonest = min((dw for _, dw in nxt), default=None)
                nxt = [k for k, dw in nxt if dw == soonest]
                if len(nxt) != 1:
                    break  # nothing, or more than one piece, continues it
                k = nxt[0]
                _, dk = span(chain[-1], k)
                if sum(agree(w, vel, dw) for _, w, dw in pred[k] if dw <= dk) != 1:
                    break  # another piece as near before continues into it as well
                chain.append(k)
            if sum(len(by_id[c].times) for c in chain) >= min_sightings:
                chains.append(chain)
    count = {}
    for chain in chains:
        for c in chain:
            count[c] = count.get(c, 0) + 1
    return [chain for chain in chains if all(count[c] == 1 for c in chain)]
