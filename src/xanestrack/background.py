"""The matrix behind a particle, seen in the frames where the particle is elsewhere.

A particle that drifts on its own slides over the binder/carbon matrix, whose texture moves
with the common motion. In a faint pre-edge frame that texture is as strong as the particle's
own outline, and any estimate made in a window on the particle (edge correlation, centre of
mass) is pulled part of the way towards the matrix: the error is proportional to the
particle's own motion (measured on ``stress-drift``: 15-70 % of it, correlation -0.9), and
both estimates share it, so they agree and vouch for a wrong position. With the matrix
texture removed from the scene, the same pipeline meets the stress goals (worst 0.24 px,
median 0.10 px on ``stress-drift`` seed 1).

Two layers: in frame ``k`` a particle's window holds the particle, displaced by its own
motion, on the matrix, displaced by the common motion. Aligning the frames on the matrix
(the common similarity at the particle), every matrix pixel that some frames show
uncovered by any particle is the median of those frames; what no frame shows uncovered
(under the particle's core, where its own motion never uncovers it) is filled smoothly. An
absorber that no particle's footprint holds (a neighbour the detector lost, a track too
short) is no matrix either: found by its change over the frames and left out likewise
(:func:`untracked_absorbers`; taken for matrix, a lost neighbour moved a particle's mean E50
0.47 eV).
:func:`follow_particle <xanestrack.follow.follow_particle>` subtracts this background,
moved with the matrix, from each window before it compares outlines.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .register import correlate_shifts, resample_scaled, resample_windows
from .robust import robust_sigma

__all__ = ["Footprint", "MatrixBackground", "matrix_background"]

#: Pixels of a matrix box (matrix coordinates) whose OD changes over the frames (the 90th less the
#: 10th percentile, where no footprint covers them) by more than this many robust standard
#: deviations above the box's median change are taken for an absorber no footprint holds (a
#: neighbour not tracked: lost by the detector, a track too short, a piece left out), not for
#: matrix: the matrix has no absorption edge and holds still in these coordinates, an absorber
#: changes by its edge step and by its own motion. Measured on the probe's 1024^2 scene (a particle
#: of an agglomerate whose two touching neighbours were lost): the matrix 0.029 +- 0.006 OD, the
#: neighbours 0.5-1.6 OD; taken into the matrix, their median (OD ~1) slid through the particle's
#: pixels with its own motion: its mean E50 0.47 eV (13 sigma) low.
ABSORBER_Z = 8.0

#: ... and by more than this share of the change of the tracked particles' own pixels (their 90th
#: percentile), above that median: a weak Ni edge that moves with the matrix (an out-of-focus
#: "ghost" of the stress scenes, an edge of 0.08 OD at most) stays matrix beside particles whose
#: edge is ten times that; a neighbour like the particle is far above it.
ABSORBER_SHARE = 0.25

#: px. Those pixels are opened by a disc of this radius (an absorber is compact: the texture's
#: thin rims where the matrix's shift is a fraction of a pixel off, a footprint's rim, a hot
#: pixel are not) and grown by ``ABSORBER_GROW_PX`` (its blurred rim, its halo)
ABSORBER_OPEN_PX = 2
ABSORBER_GROW_PX = 3

#: the least number of frames that must show a pixel uncovered for its change to be measured
ABSORBER_MIN_FRAMES = 6

#: px. An absorber whose centroid moves less than this over the matrix (:func:`_absorber_drift_px`) holds
#: still on it and stays in the matrix. Measured: the probe's two lost neighbours 1.3 and 1.6 px (their
#: own motion 7.6 px over the scan, seen through the pixels every bright frame shows); fines fixed to
#: the matrix of the reduced stress scenes 0.01-0.03 px
ABSORBER_STILL_PX = 0.5


@dataclass(frozen=True)
class Footprint:
    """Where one particle covers the matrix.

    Attributes
    ----------
    shape : ndarray (h, w) bool
        The particle's pixels (grown by the blur and halo around it).
    centre : (2,)
        The pixel of ``shape`` that sits at the particle's position.
    positions : ndarray (n_frames, 2)
        The particle's position in every frame (NaN: unknown).
    """

    shape: np.ndarray
    centre: tuple
    positions: np.ndarray


@dataclass(frozen=True)
class MatrixBackground:
    """The matrix OD behind a particle, in matrix coordinates (frame-0 pixels).

    Attributes
    ----------
    image : ndarray (h, w) float32
        Median matrix OD (filled smoothly where no frame shows the matrix).
    origin : (2,)
        Frame-0 coordinates of ``image[0, 0]``.
    shift : ndarray (n_frames, 2)
        Where the matrix at frame-0 position ``x`` is in frame ``k``: ``x + shift[k]``.
    seen : ndarray (h, w) bool
        Pixels some frame showed uncovered (less the ``excluded``).
    snr : float
        How far the estimate stands out of its own noise (:func:`unmix_layers`): the variance
        of ``image`` over the pixels solved, over the median variance of each pixel's
        estimate (the regression's residuals); about 1 where the image is noise. NaN where
        not measured.
    excluded : ndarray (h, w) bool or None
        Pixels of an absorber no footprint holds (:func:`untracked_absorbers`), left out of the
        estimate and filled like those no frame shows (None: not looked for).
    ratio : ndarray (n_frames,) or None
        Each frame's image scale relative to frame 0 (the magnification), acting about ``ref``
        (frame-0 coordinates, where ``shift`` holds): the matrix at frame-0 position ``x`` is at
        ``ref + ratio[k] (x - ref) + shift[k]`` in frame ``k``. None: a translation only.
    ref : ndarray (2,) or None
        See ``ratio``.
    """

    image: np.ndarray
    origin: np.ndarray
    shift: np.ndarray
    seen: np.ndarray
    snr: float = float("nan")
    excluded: np.ndarray | None = None
    ratio: np.ndarray | None = None
    ref: np.ndarray | None = None

    def windows(self, corners, size: int, frames) -> np.ndarray:
        """The background of windows whose pixel [0, 0] is at ``corners[k]`` in frame ``k`` (n, size, size).

        Bilinear; outside the estimated box, the image's median (the box is made to hold
        every window of its particle).
        """
        n = self.shift.shape[0]
        stack = np.broadcast_to(self.image, (n, *self.image.shape))
        pos = np.asarray(corners, float) - self.shift - self.origin
        if self.ratio is None:
            out = resample_windows(stack, pos, (0, 0), (size, size), order=1, frames=frames)
        else:
            # window pixel u of frame k is matrix pixel ref + (u - shift[k] - ref) / ratio[k]
            r = np.asarray(self.ratio, float)
            rel = np.asarray(self.ref, float) - self.origin
            at = rel + (pos + self.origin - np.asarray(self.ref, float)) / r[:, None]
            out = resample_scaled(stack, at, (0, 0), (size, size), 1.0 / r, (0.0, 0.0), order=1, frames=frames)
        return np.nan_to_num(out, nan=float(np.median(self.image)))


def _fill(image, known, *, sigmas=(2.0, 4.0, 8.0, 16.0, 32.0, 64.0)):
    """``image`` with the pixels not ``known`` filled by normalised Gaussian convolution (coarser where needed)."""
    out = np.where(known, image, 0.0).astype(np.float32)
    have = known.copy()
    val = out.copy()
    w = known.astype(np.float32)
    for s in sigmas:
        if have.all():
            break
        num = ndimage.gaussian_filter(val, s, mode="nearest")
        den = ndimage.gaussian_filter(w, s, mode="nearest")
        new = ~have & (den > 1e-3)
        out[new] = num[new] / den[new]
        have |= new
    if not have.all():
        out[~have] = float(np.median(image[known])) if known.any() else 0.0
    return out


def matrix_background(od, shift, origin, shape, footprints, *, frames=None, max_frames: int = 48) -> MatrixBackground:
    """Estimate the matrix OD in a box, from the frames where no particle covers it.

    Per pixel (matrix coordinates), the median of the frames that show it uncovered, each
    frame first brought to the frames' mean level (its own level: the median of its
    uncovered pixels). Absorbers that no footprint holds (a neighbour not tracked) are
    found by their change over the frames and left out (:func:`untracked_absorbers`).

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    shift : ndarray (n_frames, 2)
        The matrix's displacement in each frame relative to frame 0, at the box (the
        common similarity evaluated there; NaN: unknown frame).
    origin : (2,) int
        Frame-0 coordinates of the box's pixel [0, 0].
    shape : (h, w)
        Size of the box.
    footprints : list of Footprint
        Every particle that may cover the box (its own particle included).
    frames : sequence of int, optional
        Frames to use (default: up to ``max_frames`` spread evenly over the scan; the
        matrix has no absorption edge, so any frames show it).
    max_frames : int

    Returns
    -------
    MatrixBackground
    """
    n = od.shape[0]
    shift = np.asarray(shift, float)
    if frames is None:
        frames = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    frames = np.asarray([k for k in frames if np.isfinite(shift[k]).all()], int)
    origin = np.asarray(origin, int)
    h, w = shape
    if frames.size == 0:
        z = np.zeros((h, w), np.float32)
        return MatrixBackground(z, origin, shift, np.zeros((h, w), bool))
    return _median_matrix(od, shift, origin, frames, _covered(shift, origin, (h, w), footprints, frames))


def _median_matrix(od, shift, origin, frames, cover, ratio=None, ref=None) -> MatrixBackground:
    """:func:`matrix_background` on ``frames`` (non-empty, finite shifts) with the footprints'
    ``cover`` of the box (len(frames), h, w) already known (``ratio``, ``ref``: as
    :class:`MatrixBackground`'s)."""
    h, w = cover.shape[1:]
    raw = resample_scaled(od, shift, origin, (h, w), ratio, ref, order=1, frames=frames)
    aligned = np.where(cover, np.float32(np.nan), raw)
    # each frame's own level (the matrix and the substrate absorb less as the energy rises): a
    # pixel some frames show uncovered would take the level of just those frames, leaving a
    # rim of the particle's path in the matrix (0.12 OD peak-to-peak behind a drifting
    # particle of stress-drift seed 1 drawn with a flat matrix)
    aligned -= _levels(aligned, np.isfinite(aligned))
    ordered = np.sort(aligned, axis=0)  # NaN last: the median and the change over the frames from one sort
    excluded = untracked_absorbers(aligned, cover, raw, ordered=ordered)
    if excluded.any():
        # the frames' levels without the absorbers (the median of the matrix alone), sorted again
        aligned = np.where(cover | excluded[None], np.float32(np.nan), raw)
        aligned -= _levels(aligned, np.isfinite(aligned))
        ordered = None
    seen = np.isfinite(aligned).any(axis=0)
    med = _nanmedian_frames(aligned, ordered=ordered)  # NaN where no frame shows the pixel uncovered: filled below
    image = _fill(np.nan_to_num(med), seen)
    return MatrixBackground(image.astype(np.float32), origin, shift, seen, excluded=excluded, ratio=ratio, ref=ref)


def _frame_quantile(ordered, count, q: float, *, upper: bool) -> np.ndarray:
    """Per pixel the ``q`` quantile (the order statistic below or, ``upper``, above it) of a stack
    sorted along the frames with NaN last (``ordered``), ``count`` finite values per pixel."""
    at = (count - 1) * q
    idx = np.ceil(at) if upper else np.floor(at)
    idx = np.clip(idx, 0, ordered.shape[0] - 1).astype(int)
    return np.take_along_axis(ordered, idx[None], axis=0)[0]


def _frame_change(a, *, ordered=None, min_frames: int = ABSORBER_MIN_FRAMES) -> np.ndarray:
    """(h, w): how much each pixel of a stack ``a`` (n, h, w; NaN: not shown) changes over the
    frames: its 90th less its 10th percentile (robust to a frame or two of another kind); NaN
    where fewer than ``min_frames`` frames show it. ``ordered``: ``a`` already sorted along the
    frames (NaN last)."""
    if ordered is None:
        ordered = np.sort(a, axis=0)
    count = np.isfinite(a).sum(axis=0)
    change = _frame_quantile(ordered, count, 0.9, upper=True) - _frame_quantile(ordered, count, 0.1, upper=False)
    return np.where(count >= min_frames, change, np.nan)


def untracked_absorbers(
    aligned,
    cover,
    raw=None,
    *,
    ordered=None,
    z: float = ABSORBER_Z,
    share: float = ABSORBER_SHARE,
) -> np.ndarray:
    """(h, w) bool: the pixels of a matrix box that an absorber no footprint holds covers in some frame.

    The matrix holds still in matrix coordinates and has no absorption edge: where no
    footprint covers a pixel, its OD changes over the frames by the noise alone. An absorber
    that is not among the footprints (a neighbour not tracked: lost by the detector, a track
    too short, a piece left out) changes it by its edge step, and by its own motion where it
    moves over the matrix: taken for matrix, its median over the frames (half-way up its edge)
    would be subtracted from the particles it touches, sliding through their pixels with their
    own motion. A pixel whose change (:func:`_frame_change`) stands ``z`` robust standard
    deviations above the box's median change, and by ``share`` of the tracked particles' own
    change (the 90th percentile over the pixels their footprints cover, less that median),
    is such an absorber's; those pixels, opened by a disc of ``ABSORBER_OPEN_PX`` (an absorber
    is compact), joined by the pixels beside them whose level (their median over the frames that
    show them) stands ``z`` robust standard deviations above the matrix's (a contact the
    footprints show in a few frames only), kept where the absorber does not hold still on the
    matrix (its centroid moves by ``ABSORBER_STILL_PX`` or more over the frames after the edge,
    :func:`_absorber_drift_px`: a fine fixed to the matrix is the matrix's) and grown by
    ``ABSORBER_GROW_PX``, are returned (none where the box holds fewer than 16 pixels measured).

    Parameters
    ----------
    aligned : ndarray (n, h, w)
        The frames in matrix coordinates, each less its level, NaN where a footprint covers them.
    cover : ndarray (n, h, w) bool
        Where a footprint covers the box.
    raw : ndarray (n, h, w), optional
        The frames with the covered pixels too (for the tracked particles' own change; without
        it only ``z`` applies).
    ordered : ndarray, optional
        ``aligned`` sorted along the frames (NaN last), where already made.
    z, share : float

    Returns
    -------
    ndarray (h, w) bool
    """
    if ordered is None:
        ordered = np.sort(aligned, axis=0)
    change = _frame_change(aligned, ordered=ordered)
    ok = np.isfinite(change)
    if ok.sum() < 16:
        return np.zeros(change.shape, bool)
    base = float(np.median(change[ok]))
    found = ok & (change > base + z * float(robust_sigma(change[ok])))
    covered = np.asarray(cover, bool).any(axis=0)
    if found.any() and raw is not None and covered.any():
        own = _frame_change(np.asarray(raw)[:, covered])
        own = own[np.isfinite(own)]
        if own.size:
            found &= change > base + share * (float(np.percentile(own, 90)) - base)
    if not found.any():
        return found
    r = ABSORBER_OPEN_PX
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    found = ndimage.binary_opening(found, structure=yy**2 + xx**2 <= r * r)
    if not found.any():
        return found
    # beside it, the pixels the footprints show in too few frames to measure a change, or in frames
    # all on one side of the edge (where a particle's own motion sweeps next to the absorber: its
    # contact), show the absorber by their level: above the matrix's by ``z`` of its spread, joined
    # to the absorber, they are its (left in, their few frames' median was the absorber's OD: the
    # probe's particle still 0.26 eV low)
    count = np.isfinite(aligned).sum(axis=0)
    level = _frame_quantile(ordered, count, 0.5, upper=False)
    matrix = ok & ~found
    lvl = level[matrix]
    high = (count > 0) & (level > float(np.median(lvl)) + z * float(robust_sigma(lvl)))
    found = ndimage.binary_propagation(found, mask=found | high)
    # an absorber that holds still on the matrix (a fine fixed to it) is the matrix's: its median over the
    # frames stays where it is and is closer to it frame by frame than a fill (left out, the reduced
    # stress-all seed 1's particle beside such a fine: 0.251 -> 0.255 px, its mean E50 0.009 eV farther off)
    lab, n = ndimage.label(found)
    for i in range(1, n + 1):
        drift = _absorber_drift_px(aligned, lab == i)
        if drift < ABSORBER_STILL_PX:
            found[lab == i] = False
    if ABSORBER_GROW_PX > 0 and found.any():
        found = ndimage.binary_dilation(found, iterations=ABSORBER_GROW_PX)
    return found


def _absorber_drift_px(aligned, region) -> float:
    """px: how far an absorber moves over the matrix in the frames where it is brightest (those at or
    above its median level, after the edge): the straight-line trend over those frames of the centroid
    of its OD above the matrix level, over the pixels of ``region`` (h, w) that every one of them shows
    (``aligned``: (n, h, w) in matrix coordinates, each frame less its level, NaN where a footprint
    covers it). ``inf`` where it cannot be measured (fewer than 3 such frames or 9 such pixels): not
    shown to hold still."""
    a = aligned[:, region]
    with warnings.catch_warnings():  # a frame that shows none of it: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmedian(a, axis=1)
    ok = np.isfinite(level)
    if ok.sum() < 3:
        return float("inf")
    bright = np.flatnonzero(ok & (level >= np.median(level[ok])))
    a = a[bright]
    shown = np.isfinite(a).all(axis=0)
    if bright.size < 3 or shown.sum() < 9:
        return float("inf")
    w = np.clip(a[:, shown], 0.0, None)
    total = w.sum(axis=1)
    if not (total > 0).all():
        return float("inf")
    yx = np.argwhere(region)[shown].astype(float)
    centroid = (w @ yx) / total[:, None]
    t = bright.astype(float)
    slope = np.polyfit(t - t.mean(), centroid, 1)[0]
    return float(np.hypot(*slope) * np.ptp(t))


def _nanmedian_frames(a, *, ordered=None) -> np.ndarray:
    """``np.nanmedian(a, axis=0)`` of a stack (n, h, w), the same numbers (the two middle values'
    mean for an even count, NaN where a pixel has none), without the warning: sorted along the
    frames (NaN last) and read at each pixel's middle. numpy takes its masked-array path for
    fewer than 600 frames, which sorts through masked arrays: 10x slower on a (48, 300, 300)
    stack. ``ordered``: ``a`` already so sorted."""
    a = np.asarray(a)
    s = np.sort(a, axis=0) if ordered is None else ordered
    count = (~np.isnan(a)).sum(axis=0)  # as np.nanmedian: +-inf are values (sorted first / last)
    low = np.take_along_axis(s, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(s, np.minimum(count // 2, a.shape[0] - 1)[None], axis=0)[0]
    return np.where(count > 0, (low + high) / np.asarray(2, a.dtype), np.nan).astype(a.dtype)


def _covered(shift, origin, shape, footprints, frames) -> np.ndarray:
    """(len(frames), h, w) bool: the box pixels (matrix coordinates) a footprint covers per frame."""
    h, w = shape
    cover = np.zeros((len(frames), h, w), bool)
    for j, k in enumerate(frames):
        for fp in footprints:
            p = fp.positions[k]
            if not np.isfinite(p).all():
                continue
            # the particle's position in matrix (frame-0) coordinates, in the box
            q = np.round(p - shift[k] - origin - np.asarray(fp.centre)).astype(int)
            fh, fw = fp.shape.shape
            y0, x0 = max(q[0], 0), max(q[1], 0)
            y1, x1 = min(q[0] + fh, h), min(q[1] + fw, w)
            if y1 > y0 and x1 > x0:
                cover[j, y0:y1, x0:x1] |= fp.shape[y0 - q[0] : y1 - q[0], x0 - q[1] : x1 - q[1]]
    return cover


def _levels(a, use, *, min_fraction: float = 0.25) -> np.ndarray:
    """Per frame the median of the pixels of ``a`` (n, h, w) marked in ``use`` (n, h, w; all
    finite pixels where fewer than ``min_fraction`` are marked), less their mean over the
    frames (the frames keep their common level): (n, 1, 1) float32. A level only, not a
    plane: at 600 counts with the flat field changing frame by frame a tilt fitted per frame
    cost every separated particle of ``stress-counts`` seed 2 (0.11-0.18 -> 0.19-0.35 px)."""
    n, h, w = a.shape
    level = np.full(n, np.nan)
    for k in range(n):
        ok = use[k] & np.isfinite(a[k])
        if ok.sum() < max(3, min_fraction * h * w):
            ok = np.isfinite(a[k])
        if ok.any():
            level[k] = float(np.median(a[k][ok]))
    level = np.nan_to_num(level - np.nanmean(level)) if np.isfinite(level).any() else np.zeros(n)
    return level.astype(np.float32)[:, None, None]


def _border_median(a, width: int = 3):
    """Median of each frame's outer ``width``-pixel border (n,)."""
    m = np.zeros(a.shape[1:], bool)
    m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
    with warnings.catch_warnings():  # a frame whose border is all NaN: NaN ("All-NaN slice" printed to the user)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a[:, m], axis=1)


def separate_layers(
    od,
    positions,
    shift,
    origin,
    shape,
    size: int,
    footprints,
    *,
    iterations: int = 2,
    max_frames: int | None = None,
    rank: int = 1,
    cache: dict | None = None,
    ratio=None,
    ref=None,
):
    """The matrix and the particle, separated in a particle's box by their different motions.

    Model of frame ``k``: ``a_k P(x - p_k) + M(x - m_k) + c_k``: a particle template ``P``
    scaled by the frame's contrast ``a_k`` at the particle's position ``p_k``, on the matrix
    ``M`` moved by the common motion ``m_k``, plus an offset. Alternating least squares
    from the footprint-masked median (:func:`matrix_background`): ``P`` and ``a_k`` from
    the frames less the matrix, in particle coordinates; ``M`` as the median over frames of
    the frames less the particle, in matrix coordinates (robust to the frames whose
    particle differs from the template, e.g. across the edge). The two layers separate at
    the scales the particle's own motion spans; what neither motion tells apart (structure
    larger than the own motion) stays ambiguous, and there the pull it causes is as small
    as that motion.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    positions : ndarray (n_frames, 2)
        The particle's position per frame (frame coordinates; the first estimate).
    shift : ndarray (n_frames, 2)
        The matrix's displacement from frame 0 at the particle.
    origin, shape
        The box, in matrix (frame-0) coordinates (as :func:`matrix_background`).
    size : int
        Side (odd) of the particle template's window, centred on the particle.
    footprints : list of Footprint
        For the first estimate of the matrix.
    iterations : int
    max_frames : int, optional
        Frames used, spread evenly over the scan; default every frame. Each matrix pixel is a
        median over frames, its noise the frames' over the square root of their number: at 600
        counts (``stress-counts`` seed 2, full size, its three particles separated, band-passed
        0.7-6 px) the estimate beside a particle (4-15 px beyond its radius) correlated 0.79-0.83
        with the true matrix from 48 of the 143 frames (error 0.0069-0.0073 OD RMS, the texture's
        own 0.011), 0.88-0.92 from all (0.0045-0.0052); the matrix's noise, the same in every
        frame, pulls the particle as the texture does.
    cache : dict, optional
        Kept between calls for one particle's box (the pipeline calls this once per pass, at new
        positions): the frames in matrix coordinates, the footprints' cover and the first
        estimate depend on the box, the frames and ``footprints`` only, and are made once.
    ratio : ndarray (n_frames,), optional
        Each frame's image scale relative to frame 0, about ``ref`` (frame-0 coordinates, where
        ``shift`` holds): the matrix in the box is sampled as it is magnified
        (:class:`MatrixBackground`). Without it the box moves by ``shift`` alone, and with a
        magnification across the scan its texture away from ``ref`` is smeared over the frames
        (``stress-all`` seed 1 drawn without photon noise, its 1 % magnification: an 11-px
        particle that moves 8 px on its own 0.38 px RMS, 0.10 with no magnification drawn).

    Returns
    -------
    background : MatrixBackground
    template : ndarray (size, size) float32
        ``P``.
    contrast : ndarray (n_frames,)
        ``a_k`` (NaN for frames not used).
    """
    n = od.shape[0]
    positions = np.asarray(positions, float)
    shift = np.asarray(shift, float)
    frames = np.unique(np.linspace(0, n - 1, min(n, max_frames or n)).round().astype(int))
    frames = frames[np.isfinite(shift[frames]).all(axis=1) & np.isfinite(positions[frames]).all(axis=1)]
    template = np.zeros((size, size), np.float32)
    contrast = np.full(n, np.nan)
    if frames.size == 0:
        return matrix_background(od, shift, origin, shape, footprints, frames=frames), template, contrast
    key = (frames.tobytes(), tuple(np.asarray(origin, int)), tuple(shape), id(footprints), id(od), id(shift), id(ratio))
    if cache is not None and cache.get("key") == key:
        cover, bg, Wm, excluded = cache["value"]
    else:
        cover = _covered(shift, np.asarray(origin, int), shape, footprints, frames)
        bg = _median_matrix(od, shift, np.asarray(origin, int), frames, cover, ratio, ref)
        Wm = excluded = None
        if frames.size >= 3:
            Wm = resample_scaled(od, shift, origin, shape, ratio, ref, order=3, frames=frames)
            # each frame's level where no particle covers the box (as for ``bg``), nor an absorber no footprint holds
            excluded = bg.excluded if bg.excluded is not None and bg.excluded.any() else None
            Wm -= _levels(Wm, ~cover if excluded is None else ~(cover | excluded[None]))
        if cache is not None:
            cache.update(key=key, value=(cover, bg, Wm, excluded))
    if frames.size < 3:
        return bg, template, contrast
    c = (size - 1) / 2
    h, w = shape
    Wp = resample_windows(od, positions - c, (0, 0), (size, size), order=3, frames=frames)
    M = bg.image
    for _ in range(max(1, iterations)):
        R = Wp - MatrixBackground(M, bg.origin, shift, bg.seen, ratio=ratio, ref=ref).windows(
            positions - c, size, frames
        )
        R -= _border_median(R)[:, None, None]
        R = np.nan_to_num(R)
        # the particle layer: the best rank-``rank`` approximation of the frames less the
        # matrix (contrast, and the chemistry's change of pattern across the edge)
        U, S, Vt = _leading_components(R.reshape(len(frames), -1), max(1, min(int(rank), len(frames))))
        recon = ((U * S) @ Vt).reshape(R.shape).astype(np.float32)
        sign = np.sign(Vt[0].sum()) or 1.0
        P = (sign * Vt[0] * S[0] / np.sqrt(len(frames))).reshape(size, size)
        a = sign * U[:, 0] * np.sqrt(len(frames))
        # the particle, in matrix coordinates: box pixel x is at x + origin + shift_k in
        # frame k, i.e. at that minus (p_k - c) in the particle's window (0 outside it)
        stack = np.zeros((n, size + 2, size + 2), np.float32)
        stack[frames, 1:-1, 1:-1] = recon
        Pm = resample_scaled(stack, shift - positions + c + 1, origin, (h, w), ratio, ref, order=3, frames=frames)
        D = Wm - np.nan_to_num(Pm)
        M = _nanmedian_frames(D).astype(np.float32)  # NaN where no frame shows the pixel: filled below
        if excluded is not None:
            # an absorber no footprint holds stays out of the matrix here too (what moves with the particle
            # is in its layer, what does not would be the frames' median): the first estimate's fill there
            M = np.where(excluded, bg.image, M)
        M = np.where(np.isfinite(M), M, np.nanmedian(M)).astype(np.float32)
    contrast[frames] = a
    background = MatrixBackground(M, bg.origin, shift, bg.seen, excluded=bg.excluded, ratio=ratio, ref=ref)
    return background, P.astype(np.float32), contrast


def _leading_components(X, r):
    """The ``r`` leading singular triplets of a wide matrix ``X`` (n, m), n << m: ``U`` (n, r),
    ``S`` (r,), ``Vt`` (r, m), from the eigenvectors of the small Gram matrix ``X X^T``.
    LAPACK's SVD of the whole (48, 151^2) matrix took 0.35 s per call, this 2.4 ms: the
    separation of a large particle's layers was most of the matrix stage's time; the leading
    triplets are the same to rounding (their eigenvalues stand well apart from the rest)."""
    X = np.asarray(X, np.float64)
    w, V = np.linalg.eigh(X @ X.T)
    order = np.argsort(w)[::-1][:r]
    S = np.sqrt(np.clip(w[order], 0.0, None))
    U = V[:, order]
    Vt = (U.T @ X) / np.where(S > 0, S, 1.0)[:, None]
    return U, S, Vt


def _place(mask, shape, q):
    """OR ``shape`` into ``mask`` with its pixel [0, 0] at integer ``q`` (clipped)."""
    h, w = mask.shape
    fh, fw = shape.shape
    y0, x0 = max(q[0], 0), max(q[1], 0)
    y1, x1 = min(q[0] + fh, h), min(q[1] + fw, w)
    if y1 > y0 and x1 > x0:
        mask[y0:y1, x0:x1] |= shape[y0 - q[0] : y1 - q[0], x0 - q[1] : x1 - q[1]]


def matrix_motion(
    od, footprints, guess, *, highpass: float = 8.0, search: float = 3.0, max_size: int = 320, threads: int = 1
):
    """Translation of the matrix in every frame relative to frame 0, measured on the matrix itself.

    The common motion of the particles is not the matrix's when they all drift on their
    own (the default scene model: every particle drifts 1-6 px): the matrix is followed
    by its own texture. Every frame, its particles masked out (their footprints at their
    positions, filled from around) and high-passed (``highpass`` px) against the
    flat-field and brightness changes, is cross-correlated, within ``search`` px of
    ``guess``, with a reference: the mean of 24 frames aligned on frame 0.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    footprints : list of Footprint
        Every particle (its positions in every frame).
    guess : ndarray (n_frames, 2)
        First estimate (e.g. the particles' common translation).
    highpass, search : float
        px. ``highpass`` 8 px: measured against the scenes' true matrix motion, 0.12 px
        RMS on the default scene model (seed 1; 0.16 at 6 px, 0.11 at 12), 0.04 px on
        ``stress-drift`` (0.03 at 6, 0.14 at 12). At full resolution: a 2 x 2 binning
        aliases the fine matrix texture (0.3-0.5 px errors measured).
    max_size : int
        px. Only the central ``max_size`` x ``max_size`` of larger frames is used (the
        translation about the optical axis). Measured against the truth: 320 px gives
        0.154 px RMS on the default scene (0.141 with 512 px, 0.196 with 256) and
        0.283 px on ``stress-all`` (0.27, 0.29) in 1.8 s instead of 3.6 s (143 frames).

    threads : int
        Frames prepared this many at a time (the filters release the GIL).

    Returns
    -------
    shift : ndarray (n_frames, 2)
        Where the matrix at frame-0 position ``x`` is in frame ``k``: ``x + shift[k]``.
    quality : ndarray (n_frames,)
        Normalised correlation with the reference (0: none).
    """
    n, H, W = od.shape
    guess = np.nan_to_num(np.asarray(guess, float))
    gi = np.round(guess).astype(int)
    h, w = min(H, max_size), min(W, max_size)
    y0, x0 = (H - h) // 2, (W - w) // 2

    def taper(m):  # a cosine taper over the outer 8 %
        t = np.ones(m)
        k = max(2, int(0.08 * m))
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
        t[:k], t[-k:] = ramp, ramp[::-1]
        return t

    apod = np.outer(taper(h), taper(w)).astype(np.float32)

    def prepared(k):
        cover = np.zeros((H, W), bool)
        for fp in footprints:
            p = fp.positions[k]
            if np.isfinite(p).all():
                _place(cover, fp.shape, np.round(p - np.asarray(fp.centre)).astype(int))
        # the crop moves with the guess, so that the same matrix stays in it
        ys = int(np.clip(y0 + gi[k, 0], 0, H - h))
        xs = int(np.clip(x0 + gi[k, 1], 0, W - w))
        g = np.asarray(od[k, ys : ys + h, xs : xs + w], np.float32)
        mb = cover[ys : ys + h, xs : xs + w]
        keep = (~mb).astype(np.float32)
        # fill the particles from around (normalised convolution), high-pass, a light
        # smoothing against the noise (Gaussian: box filters measured 2-5x less accurate)
        num = ndimage.gaussian_filter(np.where(mb, 0, g).astype(np.float32), 4.0)
        den = ndimage.gaussian_filter(keep, 4.0)
        filled = np.where(mb, num / np.maximum(den, 1e-3), g).astype(np.float32)
        x = filled - ndimage.gaussian_filter(filled, highpass)
        x = ndimage.gaussian_filter(x, 0.7)
        x -= x[~mb].mean() if (~mb).any() else 0.0
        # residual of the crop's whole-pixel offset from the guess, undone by a roll
        return np.roll(x * keep * apod, (ys - y0 - gi[k, 0], xs - x0 - gi[k, 1]), axis=(0, 1))

    hp = np.empty((n, h, w), np.float32)

    def fill(k):
        hp[k] = prepared(k)

    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(fill, range(n)))
    else:
        for k in range(n):
            fill(k)
    lim = max(1.0, search)
    sub = np.unique(np.linspace(0, n - 1, min(n, 24)).round().astype(int))
    s1, _ = correlate_shifts(hp[0], hp[sub], max_shift=lim)
    s1 = np.nan_to_num(s1)
    ref = np.mean([np.roll(hp[k], tuple(-np.round(d).astype(int)), axis=(0, 1)) for k, d in zip(sub, s1)], axis=0)
    # in chunks: the whole stack's spectra at once would hold three stack-sized arrays
    parts = [correlate_shifts(ref, hp[i : i + 16], max_shift=lim) for i in range(0, n, 16)]
    s2 = np.concatenate([p[0] for p in parts])
    q = np.concatenate([p[1] for p in parts])
    bad = ~np.isfinite(s2).all(axis=1)
    s2[bad] = 0.0
    shift = s2 + gi
    shift = shift - shift[0]
    return shift, np.where(bad, 0.0, q)


def unmix_layers(od, positions, shift, origin, shape, contrast, footprints, *, iterations: int = 4):
    """The matrix behind a particle, told apart from it by the particle's absorption edge.

    Model of frame ``k`` in matrix coordinates (the box): ``M(x) + a_k P(x - q_k) + c_k``:
    the matrix ``M`` holds still, the particle ``P`` (at ``q_k``, its position less the
    matrix's motion) is scaled by its contrast ``a_k``, which the Ni edge changes three- to
    fivefold across the scan while the matrix (no Ni) keeps its own. So ``M`` and ``P`` are
    told apart per pixel by a regression on ``a_k``, whatever the particle's own motion
    (:func:`separate_layers` tells them apart by that motion: it needs ``q_k`` to move).
    ``a_k`` must be the particle's whole contrast, its pre-edge absorption included (zero
    where it is absent); an offset in it is a share of the particle left in the matrix.
    Each pass moves ``P`` to every frame's position (cubic) and solves the two-term
    regression again; ``c_k`` is each frame's level where no particle covers the box.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    positions : ndarray (n_frames, 2)
        The particle's position per frame.
    shift : ndarray (n_frames, 2)
        The matrix's displacement from frame 0 at the particle.
    origin, shape
        The box, in matrix (frame-0) coordinates.
    contrast : ndarray (n_frames,)
        ``a_k`` (NaN: frame not used).
    footprints : list of Footprint
        For the frames' levels.
    iterations : int

    Returns
    -------
    MatrixBackground or None
        None where fewer than 6 frames can be used or the contrast does not vary (the two
        layers cannot be told apart). Its ``snr`` says how far the matrix so estimated
        stands out of its own noise (at 600 counts, ``stress-counts`` seeds 2-3: 2.0-3.9 for
        every particle; ``stress-jitter`` and ``stress-all`` seed 1 together: 11.7-24 for
        most, 1.9-3.6 for four).
    """
    positions = np.asarray(positions, float)
    shift = np.asarray(shift, float)
    a = np.asarray(contrast, float)
    ok = np.isfinite(shift).all(axis=1) & np.isfinite(positions).all(axis=1) & np.isfinite(a)
    frames = np.flatnonzero(ok)
    if frames.size < 6 or not np.std(a[frames]) > 0.1 * abs(np.mean(a[frames])):
        return None
    origin = np.asarray(origin, int)
    h, w = shape
    cover = _covered(shift, origin, shape, footprints, frames)
    W = resample_windows(od, shift, origin, shape, order=3, frames=frames)
    W -= _levels(W, ~cover)
    fin = np.isfinite(W)
    Wz = np.where(fin, W, 0.0).astype(np.float64)
    af = a[frames]
    q = positions[frames] - shift[frames] - origin  # the particle's place in the box
    q -= q.mean(axis=0)

    # per pixel, least squares of Y_k on (1, a_k) over the frames that show the pixel: the normal
    # equations' matrix depends on the pixels shown only, formed once
    wgt = fin.astype(np.float64)
    wa = wgt * af[:, None, None]
    s0, s1, s2 = wgt.sum(0), wa.sum(0), (wa * af[:, None, None]).sum(0)
    det = s0 * s2 - s1**2
    good = det > 1e-9 * np.maximum(s0 * s2, 1e-12)
    det = np.where(good, det, 1.0)

    def regress(Y):
        t0, t1 = (wgt * Y).sum(0), (wa * Y).sum(0)
        M = np.where(good, (s2 * t0 - s1 * t1) / det, np.nan)
        P = np.where(good, (s0 * t1 - s1 * t0) / det, 0.0)
        return M, P

    M, P = regress(Wz)
    Pk = P[None]  # the particle in every frame, as the last regression had it
    for _ in range(max(0, int(iterations))):
        # the particle moved to each frame's place, the difference taken out of the frames
        Pk = resample_windows(np.broadcast_to(P.astype(np.float32), (len(frames), h, w)), -q, (0, 0), (h, w), order=3)
        Pk = np.nan_to_num(Pk, nan=0.0)
        M, P = regress(Wz - af[:, None, None] * (Pk - P[None]))
    known = np.isfinite(M)
    # how far the matrix image stands out of its own noise: each pixel's intercept has the
    # variance s2 / det times that of the residuals (ordinary least squares on (1, a_k))
    residual = np.where(fin, Wz - M[None] - af[:, None, None] * Pk, 0.0)
    res_var = (residual**2).sum(axis=0) / np.maximum(s0 - 2, 1)
    solved = known & good & (s0 > 2)
    snr = float("nan")
    if solved.sum() > 16:
        noise = float(np.median((res_var * s2 / det)[solved]))
        snr = float(np.var(M[solved]) / noise) if noise > 0 else float("inf")
    image = _fill(np.where(known, M, 0.0), known) if not known.all() else M
    return MatrixBackground(image.astype(np.float32), origin, shift, known, snr)


def matrix_texture_ratio(od, positions, radii, *, frames: int = 8, without_image=()) -> float:
    """How strongly the matrix is textured against the particles: a ratio of variances.

    The last ``frames`` frames with an image (the particles at their brightest, after the edge) are
    brought onto one another by the particles' median displacement (whole pixels) and
    averaged; in that mean, band-passed (Gaussian 1.5 px less Gaussian 8 px: the scales
    the edge estimate sees), the variance outside every particle (beyond 1.3 radii + 8 px)
    is divided by the variance inside them (within their radius + 2 px). The noise's share
    of each, measured on the difference of the even and odd frames' means, is taken off.

    Parameters
    ----------
    od : ndarray (n_frames, h, w)
    positions : ndarray (n_particles, n_frames, 2)
        The particles' positions (NaN allowed where not measured).
    radii : sequence of float
    frames : int
    without_image : sequence of int
        Frames without an image (no beam, the shutter closed: ``blank`` of
        :func:`xanestrack.stack.sanitize_stack`), left out. Two frames of the dark alone at the scan's end, read
        as an image (optical density ~7-8 with the noise's texture), made the ratio 0.080 against 0.0019 and
        turned matrix separation on for a scene without a matrix (synth seed 1: mean E50s up to +0.38 eV, 4.2
        sigma, off); the last 8 blanked (one value each) measure nothing, ``inf``, which turned it on as well.

    Returns
    -------
    float: the ratio; ``inf`` where it cannot be measured (fewer than ``2 * frames`` frames with
    an image, no particle, or too little of the frame outside the particles or inside them).
    """
    od = np.asarray(od)
    P = np.asarray(positions, float)
    n, ny, nx = od.shape
    lit = np.setdiff1d(np.arange(n), np.asarray(list(without_image), int))
    if lit.size < 2 * frames or P.shape[0] == 0:
        return float("inf")
    sel = lit[-frames:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = np.nanmedian(P[:, sel] - P[:, sel[:1]], axis=0)
    if not np.isfinite(d).all():
        return float("inf")
    d = np.round(d).astype(int)
    stack = np.stack(
        [np.roll(np.nan_to_num(od[f].astype(np.float64)), (-d[j, 0], -d[j, 1]), axis=(0, 1)) for j, f in enumerate(sel)]
    )
    mean = stack.mean(axis=0)
    noise = (stack[0::2].mean(axis=0) - stack[1::2].mean(axis=0)) / 2

    def band(a):
        return ndimage.gaussian_filter(a, 1.5) - ndimage.gaussian_filter(a, 8.0)

    g, gn = band(mean), band(noise)
    yy, xx = np.mgrid[:ny, :nx]
    inside = np.zeros((ny, nx), bool)
    near = np.zeros((ny, nx), bool)
    for c, r in zip(P[:, sel[0]], radii):
        if not np.isfinite(c).all():
            continue
        dist = np.hypot(yy - c[0], xx - c[1])
        inside |= dist < r + 2
        near |= dist < 1.3 * r + 8
    b = 16 + int(np.abs(d).max())
    keep = np.zeros((ny, nx), bool)
    keep[b : ny - b, b : nx - b] = True
    outside, within = keep & ~near, keep & inside
    if outside.sum() < 1000 or within.sum() < 100:
        return float("inf")
    signal = g[within].var() - gn[within].var()
    texture = g[outside].var() - gn[outside].var()
    return float(max(texture, 0.0) / signal) if signal > 0 else float("inf")
