"""Zingers: single pixels (or clusters of two to four) far brighter than what surrounds them.

A cosmic ray or a scattered photon burst on the CCD adds counts to a pixel or two of one
exposure: in optical density a pit far below its neighbours (or, in a reference image, a
peak above them). Left in, one such pixel on a particle's window pulls its correlation and
its centre of mass by pixels (the default scene with 30-80 zingers of 3-20 times the counts
per frame: registration 0.9-9.5 px RMS instead of 0.015-0.03 px).

A pixel is a zinger where it stands out of the median of its 3 x 3 neighbourhood by more
than ``threshold`` times the noise there, on either side: the robust standard deviation of
the pixels' differences from their neighbours in blocks of :data:`NOISE_BLOCK` px (the beam
falls off towards a frame's corners), scaled by exp(OD / 2) (photon noise: the transmitted
counts fall as exp(-OD)). The median is taken only around candidates (pixels standing out of
the mean of their four neighbours), so a frame costs a few array passes; the median of 9
pixels is not moved by a cluster of up to four, and an edge or a corner of a particle blurred
over a pixel or more is not taken for one (on the default and stress scenes without zingers,
7-12 pixels of 30-150 million replaced, positions moved by 0.002 px at most).

A sharp corner, a crack's edge or the texture of a particle binned 2 x 2 or more stands out of
its median as far: it is told from a zinger by the frames beside, where it is too (moved by the
sample) and a cosmic ray is not (:func:`_seen_elsewhere`). So are the fines of a scan, objects of a
radius of 1.5-4 px in every frame: their edge pixels, partly covered, stand out of a median that is
the background's, and a drift of half a pixel changes which of them do (the fines300 scene, 300 fines
and no zingers, 60 x 512^2: 4,944 fine pixels replaced in 59 of 60 frames before they were sought so,
39 in 25 frames now).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..robust import MAD_TO_SIGMA, robust_sigma

__all__ = ["remove_zingers", "remove_defects", "ZINGER_THRESHOLD", "DEFECT_SHARE"]

#: times the frame's noise (robust standard deviation of the differences from the 3 x 3 median)
ZINGER_THRESHOLD = 8.0


def _robust_sigma(x) -> float:
    """:func:`xanestrack.robust.robust_sigma` of the finite values; 0 for fewer than 16."""
    x = x[np.isfinite(x)]
    return float(robust_sigma(x)) if x.size >= 16 else 0.0


def _photon_scale(od):
    """1 / the relative photon noise of optical density ``od``: the transmitted counts fall as
    exp(-od), so the noise of the OD grows as exp(od / 2) (a particle's inside is noisier than
    the background around it, and is not full of zingers for that)."""
    return np.exp(-0.5 * np.clip(od, -2.0, 8.0))


def remove_zingers(od, *, threshold: float = ZINGER_THRESHOLD, frames=None):
    """Replace zingers in ``od`` (n_frames, rows, cols) by their 3 x 3 median, in place.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols), float
        Optical density; modified in place.
    threshold : float
        Times the frame's noise a pixel must stand out of its 3 x 3 median (0: nothing done).
    frames : iterable of int, optional
        Which frames (default all); the others are still looked at, as the frames a pixel's
        excess is sought in (:func:`_seen_elsewhere`).

    Returns
    -------
    per_frame : ndarray (n_frames,) int
        Pixels replaced in each frame.

    Notes
    -----
    A pixel standing out of its 3 x 3 median is a zinger only where the frames beside it do not
    show it (:func:`_seen_elsewhere`): a cosmic ray hits one exposure, while a particle's texture,
    corners and edges, which in binned data stand out of their median by tens of times the noise,
    are in every frame, moved by the sample by a few pixels (the default scene binned 4 x 4 without
    zingers: 4,841 pixels of 793,500 replaced without this look, 43 with it), and so are a scan's fines
    (objects of 1.5-4 px: 4,944 pixels of the fines300 scene were replaced before they were sought
    there by their value, and around the stage's jumps, 39 now). Every frame is judged
    on the stack as given; the replacements are written after. A scan of fewer than
    :data:`MIN_DEFECT_FRAMES` frames is judged frame by frame (as before: its detector defects are
    left to this pass).
    """
    od = np.asarray(od)
    if od.ndim != 3:
        raise ValueError(f"od must be (n_frames, rows, cols), got shape {od.shape}")
    n, h, w = od.shape
    per_frame = np.zeros(n, int)
    if threshold <= 0 or h < 3 or w < 3:
        return per_frame
    idx = list(range(n) if frames is None else frames)
    found = {}
    profiles = {}  # each frame's profiles, as the frames beside it need them (:func:`_jump`)

    def one(k):
        found[k] = _frame(od, k, threshold, profiles)

    # numpy releases the GIL in these passes: frames in two threads, each reading the stack as given
    # (the frames beside it included) and writing nothing to it
    from concurrent.futures import ThreadPoolExecutor

    workers = min(2, os.cpu_count() or 1, len(idx))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, idx))
    else:
        for k in idx:
            one(k)
    for k, (yy, xx, values) in found.items():
        od[k, yy, xx] = values
        per_frame[k] = yy.size
    return per_frame


#: px: the side of the blocks the noise is measured in (the beam is weaker towards a TXM frame's
#: corners, so the noise varies across the frame)
NOISE_BLOCK = 32


#: the share of a block's pixels beyond which its zingers are taken for noise the block's
#: measured noise understates (the noise of a real frame's last rows grows sevenfold within 15
#: rows: hundreds per block), not for hits (tens to hundreds in a million pixels)
MAX_BLOCK_SHARE = 0.03


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _median3(f, cy, cx):
    return np.median(np.stack([f[cy + dy, cx + dx] for dy, dx in _OFFSETS]), axis=0)


def _lap(f):
    """Each inner pixel of frame ``f`` less the mean of its four neighbours."""
    return f[1:-1, 1:-1] - 0.25 * (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:])


def _median_noise(f, lap):
    """The noise of frame ``f``'s differences from their 3 x 3 median, in units of photon noise
    (:func:`_photon_scale`), per block of :data:`NOISE_BLOCK` px: a function of (rows, cols), or
    None where it cannot be measured. The blocks' noise is measured on ``lap`` (cheap), scaled by
    the ratio of the two kinds of difference over a sample of the frame's pixels (the difference
    from the median is less noisy than the one from the mean of four)."""
    ny, nx = f.shape
    scaled = _block_noise(lap, _photon_scale(f[1:-1:2, 1:-1:2]))
    sy = np.arange(1, ny - 1, max(1, (ny - 2) // 64))
    sx = np.arange(1, nx - 1, max(1, (nx - 2) // 64))
    gy, gx = (a.ravel() for a in np.meshgrid(sy, sx, indexing="ij"))
    s_med = _robust_sigma((f[gy, gx] - (m := _median3(f, gy, gx))) * _photon_scale(m))
    s_lap = _robust_sigma(lap[gy - 1, gx - 1] * _photon_scale(f[gy, gx]))
    if not (s_med > 0 and s_lap > 0 and scaled is not None):
        return None
    by = np.minimum(np.arange(ny) // NOISE_BLOCK, scaled.shape[0] - 1)
    bx = np.minimum(np.arange(nx) // NOISE_BLOCK, scaled.shape[1] - 1)
    block = (s_med / s_lap) * scaled
    return lambda yy, xx: block[by[yy], bx[xx]]


def _candidates(lap, threshold: float):
    """Inner pixels (of ``lap``'s grid) standing out of the mean of their four neighbours by half
    ``threshold`` times the noise of their block (which holds the beam's fall-off towards the
    corners and, roughly, the particles' photon noise): a boolean image, or None where the noise
    cannot be measured. Half: a cluster of up to four zingers lowers each one's difference from
    its neighbours' mean; candidates are decided on the median, in units of photon noise."""
    raw = _block_noise(lap)
    if raw is None:
        return None
    return np.abs(lap) > 0.5 * threshold * _spread(raw, lap.shape)


def _dense(yy, xx, shape):
    """Per block of :data:`NOISE_BLOCK` px, whether more than :data:`MAX_BLOCK_SHARE` of its pixels
    are among (yy, xx): noisier than its measured noise says (a real frame's last rows)."""
    counts = np.zeros((shape[0] // NOISE_BLOCK + 1, shape[1] // NOISE_BLOCK + 1), int)
    np.add.at(counts, (yy // NOISE_BLOCK, xx // NOISE_BLOCK), 1)
    return counts > MAX_BLOCK_SHARE * NOISE_BLOCK**2


def _frame(od, k: int, threshold: float, profiles=None):
    """The zingers of frame ``k`` of ``od`` (which is not modified): rows, columns, new values."""
    f = od[k].copy()
    ny, nx = f.shape
    none = (np.zeros(0, int), np.zeros(0, int), np.zeros(0, f.dtype))
    # each pixel less the mean of its four neighbours: a cheap first look at every inner pixel
    lap = _lap(f)
    cand = _candidates(lap, threshold)
    if cand is None:
        return none
    cy, cx = np.nonzero(cand)
    if not cy.size:
        return none
    noise = _median_noise(f, lap)
    if noise is None:
        return none

    def limit_at(yy, xx):
        return threshold * noise(yy, xx)

    def zinger(yy, xx, med, factor):
        """Which of the pixels (yy, xx) stand out of their median ``med`` by ``factor`` times the
        limit and are not seen in the frames beside, and which are (the sample's texture, corners
        and edges)."""
        excess = (f[yy, xx] - med) * _photon_scale(med)
        out = np.abs(excess) > factor * limit_at(yy, xx)
        seen = np.zeros_like(out)
        if out.any():
            seen[out] = _seen_elsewhere(
                od, k, yy[out], xx[out], excess[out], limit_at(yy[out], xx[out]), med[out], profiles, f
            )
        return out & ~seen, seen

    cy, cx = cy + 1, cx + 1
    # zingers are sparse; a block where more than MAX_BLOCK_SHARE of the pixels stand out is
    # noisier than measured: left as it is
    med = _median3(f, cy, cx)
    out = np.abs(f[cy, cx] - med) * _photon_scale(med) > limit_at(cy, cx)
    dense = _dense(cy[out], cx[out], f.shape)
    skip = dense.any()
    if skip:
        keep = ~dense[cy // NOISE_BLOCK, cx // NOISE_BLOCK]
        cy, cx = cy[keep], cx[keep]
    taken_y, taken_x = [], []
    # the clear ones first (twice the threshold), then the rest judged without them beside them
    # (an edge pixel next to a cluster has it in its median); then twice more around what was taken
    # (a cluster of more than four keeps its median until part of it is gone), at twice the
    # threshold (what is left of a cluster stands out by far more, an edge beside it by less)
    for npass, factor in enumerate((2.0, 1.0, 2.0, 2.0)):
        med = _median3(f, cy, cx)
        bad, seen = zinger(cy, cx, med, factor)
        f[cy[bad], cx[bad]] = med[bad]
        taken_y.append(cy[bad])
        taken_x.append(cx[bad])
        if npass == 0:
            # what the frames beside show is the sample's, whatever is taken beside it
            cy, cx = cy[~bad & ~seen], cx[~bad & ~seen]
            continue
        ty = np.concatenate(taken_y) if npass == 1 else cy[bad]
        tx = np.concatenate(taken_x) if npass == 1 else cx[bad]
        if not ty.size:
            break
        near = np.unique(
            np.clip(ty[:, None] + np.repeat([-1, 0, 1], 3), 1, ny - 2) * nx
            + np.clip(tx[:, None] + np.tile([-1, 0, 1], 3), 1, nx - 2)
        )
        cy, cx = near // nx, near % nx
        if skip:
            keep = ~dense[cy // NOISE_BLOCK, cx // NOISE_BLOCK]
            cy, cx = cy[keep], cx[keep]
    replaced = np.unique(np.concatenate(taken_y) * nx + np.concatenate(taken_x))
    yy, xx = replaced // nx, replaced % nx
    return yy, xx, f[yy, xx]


#: px: how far a pixel is sought in another frame, per frame between them (the sample moves: 3 px
#: a frame is followed; at the ends of the scan the frame two away is sought twice as far)
MOTION_WINDOW = 3

#: the share of a pixel's excess over its 3 x 3 median that the place it moved to in another frame
#: must have for it to be seen there: a particle's texture changes between frames at the absorption
#: edge, and a sharp pixel shifted by half a pixel keeps half its excess; a zinger on the texture is
#: still caught where it adds twice what the texture has
SEEN_SHARE = 0.35

#: the share of a pixel's excess over its 3 x 3 median that a pixel within 1 px of the place it moved to in
#: another frame must reach, from the pixel's own median, for the pixel to be seen there where it is an
#: edge or a corner of something (:func:`_seen_elsewhere`). On the fines300 scene (300 fines, no zingers):
#: 37, 39 and 48 fine pixels replaced at 0.35, 0.5 and 0.7, 336 at 1.5 (as good as never); zingers on the
#: particles of the binned test scene found 0.69, 0.72 and 0.75 (0.72 without it)
REACH_SHARE = 0.5


#: the pixels that find a pixel in another frame: its 7 x 7 neighbourhood less the 3 x 3 a zinger
#: of up to four pixels takes
_RING = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if max(abs(dy), abs(dx)) >= 2]

#: where, around the place found, its excess is sought (the match is good to a pixel or two)
_AROUND = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]


def _seen_elsewhere(od, k, yy, xx, excess, limit, med_k, profiles=None, own=None):
    """Whether each pixel (yy, xx) of frame ``k``, standing out of its 3 x 3 median by ``excess`` (in
    units of photon noise, as :func:`_frame` measures it; ``limit``: the threshold there), is seen
    in the frames beside it, as a particle's texture, corner or edge is and a zinger is not.
    ``med_k``: each pixel's 3 x 3 median; ``profiles``: as :func:`_jump` keeps them; ``own``: frame
    ``k`` as cleaned so far (its rings then hold no zinger taken; default: as given).

    In each frame, the place the pixel moved to is the shift within :data:`MOTION_WINDOW` px that
    best matches its neighbourhood (:data:`_RING`, least squares, each less its mean: the absorption
    edge raises a particle as a whole), not the pixel itself (a zinger would find the brightest pixel
    near it); where none is seen so, the same around the two frames' common jump (:func:`_jump`: a
    stage that jumps by 8-11 px between two frames). It is seen there where a pixel within 2 px of
    that place stands out of its own 3 x 3 median on the same side by :data:`SEEN_SHARE` of
    ``excess`` and by half ``limit`` at least (above the noise); or, for a pixel with a neighbour
    further out on its side (an edge or corner of something, the fines' above all: which of their
    partly covered pixels stand out of their median changes with each half pixel of drift), where a
    pixel within 1 px of the place (for a pit, the place itself: beside a particle the background is
    as low) is beyond the pixel's own median, less the difference of the two neighbourhoods' levels,
    by :data:`REACH_SHARE` of ``excess``. A zinger beside an edge is not seen: the place found is
    beside the edge too, not on it (but for one that leaves a pixel beside a brighter object less
    bright than the object there). The pixel must be seen in both frames next to it; where it is
    seen in one only, the frame beyond the other stands for it (a zinger on a fine there hid the fine:
    the fines300 scene with 60 zingers a frame, 1,074 pixels not hit replaced with the two frames next
    to it alone, 362 so); at the ends of the scan it must be seen in the two after or before it, the
    second sought twice as far when not within :data:`MOTION_WINDOW`. Scans of fewer than
    :data:`MIN_DEFECT_FRAMES` frames are not looked at (nothing is seen).
    """
    n, ny, nx = od.shape
    # a scan of a few frames cannot tell the sample from a defect of the detector, which stands out
    # at the same place in every frame: it is judged on each frame alone (:func:`remove_defects`
    # leaves its defects to this pass)
    if n < MIN_DEFECT_FRAMES or not yy.size:
        return np.zeros(yy.size, bool)
    bar = np.maximum(SEEN_SHARE * np.abs(excess), 0.5 * limit)
    sign = np.sign(excess)
    need = np.maximum(REACH_SHARE * np.abs(excess), 0.5 * limit)
    own = od[k] if own is None else own
    # a pixel with a neighbour further out on the same side (an edge or corner of something, as a zinger is
    # not) may be shown by a pixel near the place without standing out of its own median (REACH_SHARE)
    beyond = np.zeros(yy.size, bool)
    for dy, dx in _OFFSETS:
        if dy or dx:
            beyond |= (own[np.clip(yy + dy, 0, ny - 1), np.clip(xx + dx, 0, nx - 1)] - own[yy, xx]) * sign > 0
    need = np.where(beyond, need, np.inf)
    pixels = (own, yy, xx, med_k, sign, bar, need)

    def look(i, jj, far=False):
        """Whether the pixels ``i`` are seen in the frames ``jj`` (one each): within MOTION_WINDOW px of where
        they were (among the fines of a scan a wider search can find another), or, with ``far``, as far as
        the sample can move in the frames between; failing that, around the frames' common jump, where the
        stage jumped further."""
        r = np.full(jj.size, MOTION_WINDOW)
        found = _seen_in(od, jj, r, i, np.zeros((i.size, 2), int), *pixels)
        if far:
            r = MOTION_WINDOW * np.abs(jj - k)
            again = ~found & (r > MOTION_WINDOW)
            if again.any():
                found[again] = _seen_in(od, jj[again], r[again], i[again], np.zeros((again.sum(), 2), int), *pixels)
        jumps = {j: _jump(od, k, j, profiles) for j in np.unique(jj[~found])}
        shift = np.array([jumps.get(j, (0, 0)) for j in jj], int).reshape(-1, 2)
        again = ~found & (np.abs(shift).max(axis=1) > r)
        if again.any():
            found[again] = _seen_in(od, jj[again], r[again], i[again], shift[again], *pixels)
        return found

    every = np.arange(yy.size)
    if 0 < k < n - 1:
        # the frame on each side; where one does not show the pixel but the other does, the one beyond it (a
        # zinger on the sample there)
        seen = look(np.r_[every, every], np.r_[np.full(yy.size, k - 1), np.full(yy.size, k + 1)])
        before, after = seen[: yy.size], seen[yy.size :]
        fill = np.flatnonzero(before ^ after)
        beyond_j = np.where(before[fill], k + 2, k - 2)
        ok = (beyond_j >= 0) & (beyond_j < n)
        filled = np.zeros(fill.size, bool)
        if ok.any():
            filled[ok] = look(fill[ok], beyond_j[ok])
        out = before & after
        out[fill[filled]] = True
        return out
    # at the ends of the scan, the two frames after (or before) it
    d = 1 if k == 0 else -1
    seen = look(np.r_[every, every], np.r_[np.full(yy.size, k + d), np.full(yy.size, k + 2 * d)], far=True)
    return seen[: yy.size] & seen[yy.size :]


def _seen_in(od, jj, r, i, shift, own, yy, xx, med_k, side, bar, need):
    """The look of :func:`_seen_elsewhere` for the pixels ``i`` of (yy, xx) in frames ``jj`` (one each):
    the place each moved to sought within ``r`` px (one each) of it moved by ``shift`` (rows, columns, one
    each). ``own``: the pixels' own frame; ``med_k``, ``side``, ``bar``, ``need``: as
    :func:`_seen_elsewhere` has them, for all the pixels."""
    n, ny, nx = od.shape
    if not i.size:
        return np.zeros(0, bool)
    if np.unique(r).size > 1:
        found = np.zeros(i.size, bool)
        for w in np.unique(r):
            sel = r == w
            found[sel] = _seen_in(od, jj[sel], r[sel], i[sel], shift[sel], own, yy, xx, med_k, side, bar, need)
        return found
    r = int(r[0])
    yy, xx, med_k, side, bar, need = yy[i], xx[i], med_k[i], side[i], bar[i], need[i]
    p = np.arange(i.size)
    ring = np.stack([own[np.clip(yy + dy, 0, ny - 1), np.clip(xx + dx, 0, nx - 1)] for dy, dx in _RING])
    level = ring.mean(axis=0)
    ring = ring - level
    # each pixel's neighbourhood in its frame: (pixels, 2r + 9, 2r + 9), (yy, xx) + shift at [r + 4, r + 4]
    span = np.arange(-r - 4, r + 5)
    g = od[
        jj[:, None, None],
        np.clip(yy[:, None] + shift[:, :1] + span, 0, ny - 1)[:, :, None],
        np.clip(xx[:, None] + shift[:, 1:] + span, 0, nx - 1)[:, None, :],
    ]
    m = 2 * r + 1
    there = np.stack([g[:, 4 + dy : 4 + dy + m, 4 + dx : 4 + dx + m] for dy, dx in _RING])
    there_level = there.mean(axis=0)
    there = there - there_level
    cost = ((there - ring[:, :, None, None]) ** 2).sum(axis=0).reshape(i.size, -1)
    best = np.argmin(cost, axis=1)
    # the level of the place found less that of the pixel's own neighbourhood (the absorption edge raises a
    # particle as a whole; the beam drifts)
    step = there_level.reshape(i.size, -1)[p, best] - level
    # around the place found, each pixel's excess over its own 3 x 3 median
    cy, cx = best // m + 4, best % m + 4
    most = np.full(i.size, -np.inf, np.float32)
    for ey, ex in _AROUND:
        v = g[p, cy + ey, cx + ex]
        med = np.median(np.stack([g[p, cy + ey + dy, cx + ex + dx] for dy, dx in _OFFSETS]), axis=0)
        most = np.maximum(most, (v - med) * _photon_scale(med) * side)
    # or a pixel within 1 px of it as far (less the step) from the pixel's own median as the pixel is
    reach = np.full(i.size, -np.inf, np.float32)
    for ey, ex in _OFFSETS:
        r1 = (g[p, cy + ey, cx + ex] - step - med_k) * _photon_scale(med_k) * side
        # a pit (what a cosmic ray makes of the optical density) only at the place itself: beside a particle's
        # edge the background is as low
        reach = np.maximum(reach, r1 if (ey, ex) == (0, 0) else np.where(side > 0, r1, -np.inf))
    return (most >= bar) | (reach >= need)


#: px: the largest jump of the sample between two frames looked for (:func:`_jump`)
MAX_JUMP = 32

#: the correlation (0 to 1) of two frames' profiles along an axis, at the jump found, below which the
#: jump is not trusted (taken as none): measured on the stage jumps of the fines300 scene (9 and 11 px)
#: and the default scene, seed 1 (8 px), 0.51-0.96; where a stress-fines scan (seed 1), which does not
#: jump, found one (2-7 px), 0.24-0.36
JUMP_CORRELATION = 0.45


def _profiles(f):
    """The steps along frame ``f``'s mean row and mean column (what a jump of the whole frame moves),
    each less its mean; the frame clipped to its 0.5 and 99.5 percentiles first (its zingers)."""
    sub = f[::16, ::16]
    lo, hi = np.quantile(sub[np.isfinite(sub)], [0.005, 0.995]) if np.isfinite(sub).any() else (0.0, 0.0)
    g = np.nan_to_num(np.clip(f, lo, hi), nan=0.5 * (lo + hi))
    out = []
    for a in (1, 0):
        d = np.diff(g.mean(axis=a).astype(np.float64))
        out.append(d - d.mean())
    return out


def _jump(od, k, j, profiles=None):
    """The common jump (rows, columns) of the sample from frame ``k`` to frame ``j``, whole pixels, within
    :data:`MAX_JUMP`: where the steps of the two frames' mean rows (and mean columns) match best (their
    correlation over their overlap), 0 where that correlation is below :data:`JUMP_CORRELATION`.
    ``profiles``: a dict of :func:`_profiles` by frame, filled as they are measured (a pass a frame)."""
    have = {} if profiles is None else profiles
    for i in (k, j):
        if i not in have:
            have[i] = _profiles(od[i])
    out = []
    for a, b in zip(have[k], have[j]):
        n = a.size
        most = min(MAX_JUMP, n // 4)
        lags = np.arange(-most, most + 1)
        # at lag s: the mean over i of a[i] b[i + s] over the overlap, as a correlation
        score = np.correlate(np.pad(b, most), a, mode="valid") / (n - np.abs(lags))
        score /= max(np.sqrt(np.mean(a * a) * np.mean(b * b)), 1e-30)
        best = int(np.argmax(score))
        out.append(int(lags[best]) if score[best] >= JUMP_CORRELATION else 0)
    return out[0], out[1]


def _block_noise(lap, scale=None):
    """Robust standard deviation of ``lap`` (times ``scale``, given on every second pixel) in blocks
    of :data:`NOISE_BLOCK` px, from every second pixel: (blocks_y, blocks_x); None where it
    cannot be measured."""
    b = NOISE_BLOCK // 2
    sub = np.abs(lap[::2, ::2])
    if scale is not None:
        sub = sub * scale[: sub.shape[0], : sub.shape[1]]
    if sub.shape[0] < b or sub.shape[1] < b:
        sig = np.full((1, 1), MAD_TO_SIGMA * np.median(sub))
        return sig if sig[0, 0] > 0 else None
    ny, nx = sub.shape[0] // b, sub.shape[1] // b
    blocks = sub[: ny * b, : nx * b].reshape(ny, b, nx, b).transpose(0, 2, 1, 3).reshape(ny, nx, b * b)
    sig = MAD_TO_SIGMA * np.median(blocks, axis=2)
    good = sig > 0
    if not good.any():
        return None
    sig[~good] = np.median(sig[good])
    return sig


def _spread(sig, shape):
    """Block values ``sig`` over an image of ``shape`` (the last blocks reach to its edges)."""
    ry = np.full(sig.shape[0], NOISE_BLOCK)
    ry[-1] = shape[0] - NOISE_BLOCK * (sig.shape[0] - 1)
    rx = np.full(sig.shape[1], NOISE_BLOCK)
    rx[-1] = shape[1] - NOISE_BLOCK * (sig.shape[1] - 1)
    return np.repeat(np.repeat(sig.astype(np.float32), ry, axis=0), rx, axis=1)


#: the share of the frames in which a pixel must stand out of its 3 x 3 median to be taken for a
#: defect of the detector (a zinger hits one frame; the sample moves)
DEFECT_SHARE = 0.8

#: times the noise a defective pixel stands out of its 3 x 3 median in those frames (a zinger's bar: at 5 the corners of particles that do not move at all, blurred by 1 px, are taken
#: for defects where the noise is as low as at 30,000 counts; at 8, from about 100,000 counts)
DEFECT_THRESHOLD = ZINGER_THRESHOLD

#: frames looked at to find the defects (spread over the scan)
DEFECT_SAMPLE = 15

#: fewer frames than this are left to the zinger pass
MIN_DEFECT_FRAMES = 5


def remove_defects(od, *, threshold: float = DEFECT_THRESHOLD, share: float = DEFECT_SHARE):
    """Find the detector's defective pixels and replace them in every frame, in place.

    A dead, hot or stuck pixel (or a dead row or column of the CCD) stands out of its 3 x 3
    neighbourhood at the same place in every frame, while the sample moves and a zinger hits one
    frame. Left in, a line of them crossing a particle pulls its centre of mass by pixels (the
    default scene with a dead column and a hot row: one particle 2.9 px RMS, 196 frames flagged).
    A pixel is defective where, in at least ``share`` of :data:`DEFECT_SAMPLE` frames spread over
    the scan, it stands out of the median of its 3 x 3 neighbourhood by more than ``threshold``
    times the noise there (as :func:`remove_zingers` measures it), on either side (a pixel whose
    reference is all but dead comes out at random). A row or column is defective as a whole where
    it stands out of the lines beyond it in as many frames, alone or in a run of up to
    :data:`MAX_LINE_RUN` adjacent ones (:func:`_line_runs`: CCD lines often go bad in pairs; judged
    line by line, a pair's two good neighbours stood out as far, and were taken and filled from the
    pair: a stuck pair through a particle of the seed-5 default scene split it into two tracks 12.7
    and 9.3 px off its centre), and the other pixels are judged on the median of their neighbours
    off such lines. Each is
    replaced, in every frame, by the median of its neighbours that are not defective (3 x 3, else
    5 x 5): a run's lines from the good lines beyond it.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols), float
        Optical density; modified in place.
    threshold, share : float
        See above (``threshold`` 0: nothing done).

    Returns
    -------
    defects : ndarray (n, 2) int
        Rows and columns of the pixels replaced.
    """
    od = np.asarray(od)
    if od.ndim != 3:
        raise ValueError(f"od must be (n_frames, rows, cols), got shape {od.shape}")
    n, ny, nx = od.shape
    none = np.zeros((0, 2), int)
    # a few frames cannot tell a defect from noise the blocks' noise understates (the two frames of
    # the SSRL scan: 295 pixels of its noisiest last rows stand out in both, on the same side)
    if threshold <= 0 or ny < 5 or nx < 5 or n < MIN_DEFECT_FRAMES:
        return none
    pick = np.unique(np.linspace(0, n - 1, min(n, DEFECT_SAMPLE)).round().astype(int))
    need = share * pick.size
    # candidates: pixels that are zinger candidates (:func:`_candidates`) in enough of the frames;
    # then, in each frame, the difference of each from its 3 x 3 median, in units of the noise there
    hits = np.zeros((ny - 2, nx - 2), np.uint8)
    noises = {}
    lines = [np.zeros(ny, int), np.zeros(nx, int)]
    for i, k in enumerate(pick):
        # rows (columns) not looked at once no line can stand out in ``need`` frames any more (most scans: after
        # the first 4 of 15, about 0.6 s of a 460^2 scan's reading)
        hopeless = [int(count.max()) + pick.size - i < need for count in lines]
        _line_hits(od[k], threshold, lines, skip=hopeless)
        lap = _lap(od[k])
        cand = _candidates(lap, threshold)
        if cand is None:
            continue
        hits += cand
        noises[k] = _median_noise(od[k], lap)
    bad_rows, bad_cols = np.flatnonzero(lines[0] >= need), np.flatnonzero(lines[1] >= need)
    cy, cx = np.nonzero(hits >= need)
    cy, cx = cy + 1, cx + 1
    # the pixels of a bad line are taken with it; the others are judged on the median of their neighbours
    # off the bad lines (a good line between two bad ones, one apart, stands out of a median of theirs)
    off = ~np.isin(cy, bad_rows) & ~np.isin(cx, bad_cols)
    cy, cx = cy[off], cx[off]
    out = np.zeros(cy.size, int)
    for k, noise in noises.items():
        if noise is None:
            continue
        f = od[k]
        if bad_rows.size or bad_cols.size:
            f = f.astype(np.float32)  # a copy
            f[bad_rows, :] = np.nan
            f[:, bad_cols] = np.nan
            with warnings.catch_warnings():  # a pixel among bad lines only: no median, not judged
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(np.stack([f[cy + dy, cx + dx] for dy, dx in _OFFSETS]), axis=0)
        else:
            med = _median3(f, cy, cx)
        # either side: a pixel whose reference is all but dead comes out at random, far each time
        out += np.abs(f[cy, cx] - med) * _photon_scale(med) > threshold * noise(cy, cx)
    bad = out >= need
    yy, xx = cy[bad], cx[bad]
    # as for zingers, a block where more than MAX_BLOCK_SHARE of the pixels stand out is noisier
    # than measured (a real frame's last rows), but for the rows and columns of the detector that
    # are dead along a quarter of the frame or more (no noise lines up so)
    dense = _dense(yy, xx, od.shape[1:])
    if dense.any():
        row = np.bincount(yy, minlength=ny)[yy] > ny / 4
        col = np.bincount(xx, minlength=nx)[xx] > nx / 4
        keep = ~dense[yy // NOISE_BLOCK, xx // NOISE_BLOCK] | row | col
        yy, xx = yy[keep], xx[keep]
    defective = np.zeros((ny, nx), bool)
    defective[yy, xx] = True
    # a dead row or column off by little in the background still cuts each particle it crosses:
    # every pixel of a line that stands out as a whole
    defective[bad_rows, :] = True
    defective[:, bad_cols] = True
    yy, xx = np.nonzero(defective)
    if not yy.size:
        return none
    _fill(od, yy, xx)
    return np.c_[yy, xx]


#: the longest run of adjacent bad rows (or columns) judged as one (:func:`_line_runs`): the lines of
#: a run stand out of the lines beyond it, not of each other
MAX_LINE_RUN = 3


def _line_hits(f, threshold, lines, skip=(False, False)):
    """Count, in ``lines`` (per row, per column), the rows and columns of frame ``f`` that stand out
    as a whole, alone or in a run of up to :data:`MAX_LINE_RUN` adjacent ones (:func:`_line_runs`);
    ``skip``: (rows, columns) not to look at."""
    for g, count, done in ((f, lines[0], skip[0]), (f.T, lines[1], skip[1])):
        if done:
            continue
        step = max(1, g.shape[1] // 256)  # a few hundred pixels along each line are enough
        for i0, i1 in _line_runs(g[:, ::step], threshold):
            count[i0:i1] += 1


def _line_runs(g, threshold):
    """The runs of adjacent lines (rows of ``g``) that stand out of the lines beyond them as a whole:
    a list of (first, last + 1).

    A line's offset is the median along it of each pixel's difference from the mean of the two
    lines beside its run (a dead line off by 0.05 OD where the noise is 0.015 stands out by dozens;
    a natural image, smooth along any line, does not). A run of up to :data:`MAX_LINE_RUN` lines
    stands out where each of its lines is offset to the same side by more than ``threshold`` times
    the robust spread over the lines of the single lines' offsets; its score is the least of them.
    Judged against its own neighbours, each line of a pair of bad lines stands out by half its
    offset, and so do the two good lines beside the pair, the other way (taken for the pair before):
    the pair as a run stands out by all of it. The runs are taken strongest first; one beside a run
    taken is judged again against the line beyond that run (the good line beside a bad one, its
    echo, then stands out by nothing; a bad one still does) and one overlapping it is dropped.
    """
    import heapq

    n = g.shape[0]
    if n < 3:
        return []
    s = _robust_sigma(np.median(g[1:-1] - 0.5 * (g[:-2] + g[2:]), axis=1))
    if not s > 0:
        return []
    bar = threshold * s

    def score(e):
        """Per column of ``e`` (a run's lines' offsets): the least offset where all are on one side."""
        same = np.all(e > 0, axis=0) | np.all(e < 0, axis=0)
        return np.where(same, np.abs(e).min(axis=0), 0.0)

    # (-score, first, last + 1, the two lines it was judged against)
    heap = []
    for length in range(1, MAX_LINE_RUN + 1):
        starts = np.arange(1, n - length)
        if not starts.size:
            continue
        ref = 0.5 * (g[starts - 1] + g[starts + length])
        sc = score(np.stack([np.median(g[starts + t] - ref, axis=1) for t in range(length)]))
        for j in np.flatnonzero(sc > bar):
            i0 = int(starts[j])
            heapq.heappush(heap, (-float(sc[j]), i0, i0 + length, i0 - 1, i0 + length))
    taken = np.zeros(n, bool)
    while heap:
        _, i0, i1, ref_lo, ref_hi = heapq.heappop(heap)
        if taken[i0:i1].any():
            continue
        lo, hi = i0 - 1, i1
        while lo >= 0 and taken[lo]:
            lo -= 1
        while hi < n and taken[hi]:
            hi += 1
        if (lo, hi) != (ref_lo, ref_hi):
            # beside a run taken: judged again against the line beyond it
            if lo >= 0 and hi < n:
                ref = 0.5 * (g[lo] + g[hi])
                again = float(score(np.median(g[i0:i1] - ref, axis=1)[:, None])[0])
                if again > bar:
                    heapq.heappush(heap, (-again, i0, i1, lo, hi))
            continue
        taken[i0:i1] = True
    # each line taken judged again against the nearest lines not taken, the weakest dropped first while
    # one does not stand out so: two bad lines one apart make the good line between them stand out of its
    # neighbours by as much (the other way), and taken first it brought them in beside it
    while taken.any():
        idx = np.flatnonzero(taken)
        free = np.flatnonzero(~taken)
        at = np.searchsorted(free, idx)
        inner = (at > 0) & (at < free.size)
        e = np.zeros(idx.size)
        lo, hi = free[np.maximum(at - 1, 0)[inner]], free[np.minimum(at, free.size - 1)[inner]]
        e[inner] = np.abs(np.median(g[idx[inner]] - 0.5 * (g[lo] + g[hi]), axis=1))
        weakest = int(np.argmin(np.where(inner, e, np.inf)))
        if not (inner[weakest] and e[weakest] <= bar):
            break
        taken[idx[weakest]] = False
    edges = np.flatnonzero(np.diff(np.r_[0, taken.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _fill(od, yy, xx):
    """Each pixel (yy, xx) of every frame by the median of its neighbours not among them (3 x 3,
    else 5 x 5), a few frames at a time."""
    n, ny, nx = od.shape
    mask = np.zeros((ny, nx), bool)
    mask[yy, xx] = True
    for r in (1, 2):
        offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
        ny_ = np.clip(yy[:, None] + np.array([o[0] for o in offs]), 0, ny - 1)
        nx_ = np.clip(xx[:, None] + np.array([o[1] for o in offs]), 0, nx - 1)
        good = ~mask[ny_, nx_]
        ok = good.any(axis=1)
        if not ok.any():
            continue
        py, px, gy, gx, gd = yy[ok], xx[ok], ny_[ok], nx_[ok], good[ok]
        step = max(1, int(2e7 // max(1, gy.size)))
        for k0 in range(0, n, step):
            v = od[k0 : k0 + step][:, gy, gx].astype(np.float32)
            v[:, ~gd] = np.nan
            with warnings.catch_warnings():  # an all-NaN neighbourhood (NaN pixels of the scan) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                od[k0 : k0 + step, py, px] = np.nanmedian(v, axis=2)
        yy, xx = yy[~ok], xx[~ok]
        if not yy.size:
            break
