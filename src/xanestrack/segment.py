"""Per-ROI segmentation: the single particle's mask in each ROI.

The classical segmenter removes the ROI's local background (a plane fitted robustly
to the ROI's outer ring, where cut neighbours are outliers), picks the component
nearest the ROI centre (neighbours cut by the ROI border are discarded), and
outlines the particle at a fixed *fraction* of its own contrast. Because optical
density scales with the absorption across the energy scan, a fractional level gives
the same outline in faint pre-edge frames and bright post-edge frames; a low
fraction keeps the outline near the physical rim, where the projected thickness
falls steeply, so that chemistry-dependent contrast near the edge barely moves it.

The mask is *soft*: rim pixels get their partial coverage, from the signed distance
to the iso-contour ``(I - level) / |grad I|``. Moments of a soft mask follow sub-pixel
motion smoothly instead of in whole-pixel steps.

The learned Dual U-Net segmenter returns masks of the same form, so the register
step takes either. :func:`segment_particle` cuts a particle's window out of every frame,
runs either segmenter on them and cuts fines and neighbours off (:func:`isolate_particle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .morph import dilate_cross, frame_blocks, label_stats
from .register import centre_of_mass, crop_windows
from .robust import robust_sigma

__all__ = ["SegmentOptions", "segment_roi", "segment_rois", "isolate_particle", "SegmentedWindows", "segment_particle"]

#: A blob that :func:`isolate_particle`'s opening cut off stays in the mask (a piece of the
#: particle itself: the rim beyond a pore near its outline, cut off at a thin bridge) where it
#: holds nothing that survived the opening by itself and grows the convex hull of the
#: particle's outline by at most this times what it adds to the filled outline (the outline
#: closed with the opening's square, holes filled: its pixels and the pores it closes).
#: Measured: the pieces in the classical masks of the probe's r = 90 px particle with grains
#: and pores (big scene, seed 2) 0.01-0.36; pores near the rim of a disc of r = 40 (a wall of
#: 2-8 px, closed or open to the outside by a slot of 3-5 px) 0.25-0.92, but 1.4-2.0 for some
#: walls of 0-5 px (still cut off); fines of r = 3-8 px stuck to the rim of a disc or an ellipse
#: 1.5-3.3; a neighbour of r = 16 on a thin neck 1.38 (and it has a core of its own).
LOBE_HULL_GROWTH = 1.0


@dataclass(frozen=True)
class SegmentOptions:
    """Options of the classical ROI segmenter (:func:`segment_roi`; lengths in pixels).

    Attributes
    ----------
    sigma : float, default 1.5
        px. Gaussian smoothing of the ROI before the background fit and the outline.
    level : float, default 0.35
        In (0, 1). The outline is drawn at this fraction of the particle's own contrast
        (90th percentile of its background-corrected OD): the same outline in faint and
        bright frames; low keeps it near the physical rim.
    ring : int, default 3
        px. Width of the ROI's outer border to which the background plane is fitted
        (ROIs must be at least ``2 ring + 3`` px wide).
    noise_factor : float, default 3.0
        A particle must stand this many noise standard deviations (robust, of the ring's
        residual) above the background; the outline level is never below it.

    Raises
    ------
    ValueError
        If ``level`` is not in (0, 1).
    """

    sigma: float = 1.5
    level: float = 0.35
    ring: int = 3
    noise_factor: float = 3.0

    def __post_init__(self):
        if not 0 < self.level < 1:
            raise ValueError(f"level must be a fraction in (0, 1), got {self.level}")


def _plane_background(img, ring):
    """``(plane (h, w), noise)``: a plane fitted robustly to the ROI's outer ``ring`` px, and the residual's robust sigma.

    Not :func:`xanestrack.xanes.local_background`: this fit comes before the particle is
    known (the ROI's border, cut neighbours clipped at 2.5 sigma about the median, least
    squares per ROI); that one fits a ring around a known mask in every frame at once.
    """
    ny, nx = img.shape
    m = np.zeros(img.shape, bool)
    m[:ring], m[-ring:], m[:, :ring], m[:, -ring:] = True, True, True, True
    yy, xx = np.nonzero(m)
    v = img[m]
    A = np.c_[np.ones(v.size), yy - ny / 2, xx - nx / 2]
    keep = np.ones(v.size, bool)
    coef = np.array([np.median(v), 0.0, 0.0])
    for _ in range(3):
        r = v - A @ coef
        s = robust_sigma(r[keep]) + 1e-9
        keep = np.abs(r - np.median(r[keep])) < 2.5 * s
        if keep.sum() < 6:
            break
        coef = np.linalg.lstsq(A[keep], v[keep], rcond=None)[0]
    yy, xx = np.mgrid[0:ny, 0:nx]
    bg = coef[0] + coef[1] * (yy - ny / 2) + coef[2] * (xx - nx / 2)
    resid = (v - A @ coef)[keep]
    noise = robust_sigma(resid) + 1e-9
    return bg, noise


def segment_roi(roi, *, centre=None, options: SegmentOptions = SegmentOptions()) -> np.ndarray:
    """Soft mask (values in [0, 1]) of the particle nearest ``centre`` in one ROI.

    Parameters
    ----------
    roi : ndarray (h, w)
        Optical density around one particle.
    centre : (y, x), optional
        Expected particle position in ROI pixels; default the ROI centre.
    options : SegmentOptions

    Returns
    -------
    ndarray (h, w) float32; all zeros if no particle stands out of the noise.
    """
    roi = np.asarray(roi, dtype=np.float32)
    if roi.ndim != 2 or min(roi.shape) < 2 * options.ring + 3:
        raise ValueError(f"roi must be 2-D and at least {2 * options.ring + 3} px wide, got {roi.shape}")
    h, w = roi.shape
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if centre is None else centre
    s = ndimage.gaussian_filter(roi, options.sigma, mode="nearest")
    bg, noise = _plane_background(s, options.ring)
    corr = s - bg
    # coarse outline: the component nearest the expected centre
    peak = np.percentile(corr, 99)
    coarse = corr > max(options.noise_factor * noise, 0.3 * peak)
    lab, n = ndimage.label(coarse)
    if n == 0:
        return np.zeros(roi.shape, np.float32)
    if n > 1:
        sizes, coms = label_stats(lab, n)
        d = np.hypot(coms[:, 0] - cy, coms[:, 1] - cx)
        # the particle is the big component near the centre
        best = 1 + np.argmin(d - 0.5 * np.sqrt(sizes / np.pi))
        comp = lab == best
    else:
        comp = lab == 1
    level = options.level * np.percentile(corr[comp], 90)
    level = max(level, options.noise_factor * noise)
    region = dilate_cross(comp, iterations=4)
    # exclude other components that the dilation reached
    if n > 1:
        region &= ~(coarse & ~comp)
    gy, gx = np.gradient(corr)
    grad = np.hypot(gy, gx)
    dist = (corr - level) / np.maximum(grad, 1e-6)
    soft = np.clip(dist + 0.5, 0.0, 1.0)
    soft[~region] = 0.0
    inside = ndimage.binary_fill_holes(soft > 0.5)
    lab2, n2 = ndimage.label(inside)
    if n2 > 1:
        # keep the piece overlapping the coarse component most
        overlap = np.bincount(lab2[comp], minlength=n2 + 1)[1:]
        keep = lab2 == (np.argmax(overlap) + 1)
        soft[~dilate_cross(keep)] = 0.0
        inside = keep
    soft = np.where(inside, np.maximum(soft, ndimage.binary_erosion(inside, iterations=1)), soft)
    return soft.astype(np.float32)


def segment_rois(rois, *, centres=None, options: SegmentOptions = SegmentOptions()) -> np.ndarray:
    """Segment a stack of ROIs (n, h, w); ``centres`` (n, 2) in ROI pixels or None."""
    rois = np.asarray(rois)
    out = np.empty(rois.shape, np.float32)
    for k in range(rois.shape[0]):
        out[k] = segment_roi(rois[k], centre=None if centres is None else centres[k], options=options)
    return out


def isolate_particle(masks, *, radius: float, centres=None, max_area_ratio: float = 1.35, outside=None, reach=None):
    """Cut fines and touching neighbours off soft particle masks, frame by frame.

    Whatever segmenter made the masks (classical or learned), a fine stuck to the particle
    or a neighbour touching it must not enter the mask: its centre of mass would move
    with the contact, not with the particle.

    1. An opening with a square of half-width ``clip(0.3 radius, 2, 6)`` px cuts off fines
       (radius 2-6 px) and thin bridges (corners are cut alike in every frame, so the
       particle's registration is unaffected); the component at the expected centre is
       kept, grown by one pixel so that the soft rim stays. An elongated particle (``reach``
       beyond ``radius``) is as wide as a disc of ``radius**2 / reach``, not ``radius``: the
       opening is sized on that.
    2. Where that component is still much larger than the particle
       (``max_area_ratio`` times ``pi radius**2``), a touching neighbour is attached: it is
       cut off by a watershed of the distance transform, seeded at its maxima (the
       particle's own region is the one at the expected centre). So too where the component
       reaches the window's edge (its border rows and columns, not the pixels ``outside``
       the frame): whatever it joins there (a touching neighbour, the matrix) is cut at the
       neck, whatever its area. The window clips a neighbour, so the area alone misses it: a
       crowded scene's r = 62 px particle touching an r = 46 and an r = 44 one (the probe's
       scene c4, learned masks) had masks of 12074-12606 px, under 1.35 times the disc of its
       detected radius, 58.7 px (14619 px), that ran out of the window in all 40 frames and
       left it out of the run; cut, it is tracked, 0.02 px RMS from the truth.
    3. What the opening cut off is removed where it is a blob of a fine's size or more,
       except a piece of the particle itself: the rim beyond a pore near the outline, cut
       off at a thin bridge. Such a piece has nothing that survives the opening by itself
       (a neighbour has) and fills the particle's outline back: the outline's convex hull
       grows by at most ``LOBE_HULL_GROWTH`` times what the piece fills (its pixels and the
       pores it closes). A fine or a neighbour sticks out of the outline: the hull grows by
       more than it fills.

    Parameters
    ----------
    masks : ndarray (n, h, w)
        Soft masks in [0, 1].
    radius : float
        The particle's equivalent radius (px).
    centres : ndarray (n, 2), optional
        Expected particle centre in window pixels (default: the window centre).
    outside : ndarray (n, h, w) bool, optional
        Window pixels outside the frame (:attr:`SegmentedWindows.outside`; default: none).
        A mask the frame's border cuts is not cut at its necks there (it is flagged
        ``out_of_view``, :func:`xanestrack.register.mask_flags`).
    reach : float, optional
        The radius its windows are sized on (:func:`xanestrack.register.window_radius`; default
        ``radius``): an elongated particle's, from how far its outline reaches.

    Returns
    -------
    ndarray (n, h, w) float32: the masks with everything but the particle set to 0.

    Notes
    -----
    Every step is frame by frame; a long stack of large windows is cut in blocks of frames of at most
    :data:`ISOLATE_BLOCK_PX` pixels (the same masks): the labels' statistics take several times the stack's
    bytes at once (a particle of radius 113 px in 307 px windows, 143 frames: 412 MiB traced over its 51 MiB
    masks, the largest transient of a 1024^2 scan's locating).
    """
    m = np.asarray(masks, np.float32)
    n, h, w = m.shape
    if n == 0:
        return m.copy()
    c = np.tile([(h - 1) / 2, (w - 1) / 2], (n, 1)) if centres is None else np.asarray(centres, float)
    blocks = frame_blocks(n, h * w, ISOLATE_BLOCK_PX)
    if len(blocks) <= 1:
        return _isolate(m, c, radius, max_area_ratio, outside, reach)
    per_frame = outside is not None and np.ndim(outside) == 3
    out = np.empty_like(m)
    for b in blocks:
        out[b] = _isolate(m[b], c[b], radius, max_area_ratio, outside[b] if per_frame else outside, reach)
    return out


#: frames' pixels :func:`isolate_particle` separates at once (2 Mpx: 143 frames of windows up to 121 px in one block,
#: those of 307 px in blocks of 22 frames)
ISOLATE_BLOCK_PX = 1 << 21


def _isolate(m, c, radius: float, max_area_ratio: float, outside, reach):
    """:func:`isolate_particle` on the float32 masks ``m`` (n, h, w), ``c`` their expected centres (n, 2)."""
    n, h, w = m.shape
    hard = m > 0.5
    # the opening is sized on the particle's width: a rod of aspect 6 (10 px wide, equivalent radius 15.7 px) was
    # opened away by the 11 px square of its radius but for pieces of its noisy outline, one of them followed as
    # the particle (radius 8 px, 9 px from its centre)
    width = radius if reach is None or not reach > radius else radius * radius / reach
    r_open = int(np.clip(round(0.3 * width), 2, 6))
    size = (1, 2 * r_open + 1, 2 * r_open + 1)
    core = ndimage.maximum_filter(ndimage.minimum_filter(hard.view(np.uint8), size=size), size=size).astype(bool)
    core &= hard
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = ndimage.generate_binary_structure(2, 1)  # connectivity within a frame only
    lab, nl = ndimage.label(core, structure=struct)
    out = np.zeros_like(m)
    if nl == 0:
        return out
    idx = np.arange(1, nl + 1)
    area, com = label_stats(lab, nl)
    frame_of = com[:, 0].round().astype(int)  # components never span frames
    com = com[:, 1:]
    expected = np.pi * radius**2
    min_blob = max(6, int(0.5 * np.pi * r_open**2))  # a fine of radius >= ~0.7 r_open; corner slivers are smaller
    # the component at each frame's expected centre (or the nearest big one)
    iy = np.clip(np.round(c[:, 0]).astype(int), 0, h - 1)
    ix = np.clip(np.round(c[:, 1]).astype(int), 0, w - 1)
    pick = lab[np.arange(n), iy, ix]
    for k in np.flatnonzero(pick == 0):
        sel = np.flatnonzero(frame_of == k)
        if sel.size:
            d = np.hypot(com[sel, 0] - c[k, 0], com[sel, 1] - c[k, 1]) - np.sqrt(area[sel] / np.pi)
            pick[k] = idx[sel[np.argmin(d)]]
    lut = np.zeros(nl + 1, bool)
    lut[pick[pick > 0]] = True
    comp = lut[lab]
    # a touching neighbour still attached: cut at the neck (frame by frame, only there), where the component is
    # too large for the particle or runs out of the window (the window clips the neighbour, so its area can be small)
    edge = np.zeros((h, w), bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    edge = edge if outside is None else edge & ~np.asarray(outside, bool)
    joined = (comp & edge).any(axis=(1, 2)) | (area[np.maximum(pick, 1) - 1] > max_area_ratio * expected)
    for k in np.flatnonzero((pick > 0) & joined):
        comp[k] = _watershed_piece(comp[k], c[k], radius)
    # keep the particle's own outline as segmented: only blobs that the opening cut off
    # (fines, neighbours' parts) are removed, not the thin slivers of its corners, nor the
    # pieces of the particle beyond a pore near its rim (the probe's r = 90 px particle lost
    # 56-219 px so in 57 of its 68 classical masks)
    grown = dilate_cross(comp)
    cut = hard & ~grown
    keep = hard.copy()
    if cut.any():
        cl, ncl = ndimage.label(cut, structure=struct)
        sizes = np.bincount(cl.ravel(), minlength=ncl + 1)[1:]
        big = np.zeros(ncl + 1, bool)
        big[1:] = sizes >= min_blob
        big &= ~_own_pieces(cl, big, hard & grown, core, size[1:])
        keep &= ~big[cl]
    # the connected piece of what is kept that holds the particle
    kl, nk = ndimage.label(keep, structure=struct)
    hold = np.zeros(nk + 1, bool)
    hold[np.unique(kl[comp & keep])] = True
    hold[0] = False
    keep = hold[kl] | (comp & ~keep.any(axis=(1, 2), keepdims=True))
    removed = hard & ~keep
    keep = dilate_cross(keep) & ~(dilate_cross(removed) & ~keep)
    keep[pick == 0] = False
    out = np.where(keep, m, 0.0).astype(np.float32)
    return out


def _own_pieces(labels, candidates, base, core, size):
    """Which cut-off blobs are pieces of the particle itself (bool per label, 0 included).

    ``labels`` (n, h, w) numbers the blobs (each within one frame), ``candidates`` marks those
    to judge, ``base`` (n, h, w) is the particle's outline without the blobs, ``core`` what
    survived the opening and ``size`` the opening's square (h, w). A candidate is the
    particle's own where no pixel of it is in ``core`` and adding it to ``base`` grows the
    convex hull by at most ``LOBE_HULL_GROWTH`` times what it adds to the filled outline:
    ``base`` closed with the opening's square, holes filled.
    """
    from skimage.morphology import convex_hull_image

    def filled(x):
        closed = ndimage.minimum_filter(ndimage.maximum_filter(x.view(np.uint8), size=size), size=size)
        return np.count_nonzero(ndimage.binary_fill_holes(closed.astype(bool) | x))

    own = candidates.copy()
    own[labels[core]] = False  # a separate object: a neighbour, or a fine large enough to be one
    own[0] = False
    for k in np.flatnonzero(own[labels].any(axis=(1, 2)) & base.any(axis=(1, 2))):
        hull0, filled0 = np.count_nonzero(convex_hull_image(base[k])), filled(base[k])
        for j in np.unique(labels[k][own[labels[k]]]):
            piece = base[k] | (labels[k] == j)
            grows = np.count_nonzero(convex_hull_image(piece)) - hull0
            own[j] = grows <= LOBE_HULL_GROWTH * (filled(piece) - filled0)
    return own


def _watershed_piece(comp, centre, radius):
    """The watershed region of ``comp`` (split at the necks of its distance transform) at ``centre``."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(comp)
    peaks = h_maxima(dist, max(1.0, 0.2 * min(radius, dist.max())))
    markers, nm = ndimage.label(peaks)
    if nm < 2:
        return comp
    ws = watershed(-dist, markers, mask=comp)
    iy, ix = int(round(centre[0])), int(round(centre[1]))
    h, w = comp.shape
    label = ws[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
    if label == 0:
        return comp
    return ws == label


@dataclass(frozen=True)
class SegmentedWindows:
    """Result of :func:`segment_particle`, one entry per frame.

    Attributes
    ----------
    origins : ndarray (n_frames, 2) int
        Frame coordinates of each window's pixel [0, 0].
    clipped : ndarray (n_frames,) bool
        Windows that crossed the frame border (or hold pixels outside the beam's lit field).
    outside : ndarray (n_frames, h, w) bool
        Window pixels outside the frame (or NaN in it, or outside the beam's lit field).
    masks : ndarray (n_frames, h, w) float32
        Soft masks of the particle.
    com : ndarray (n_frames, 2)
        Centre of mass of each mask in frame coordinates (NaN for an empty mask).
    """

    origins: np.ndarray
    clipped: np.ndarray
    outside: np.ndarray
    masks: np.ndarray
    com: np.ndarray


class PackedMasks:
    """Soft masks ``(n, h, w)`` float32 held compactly and losslessly: per frame, a bit for each pixel whose value is
    not +0.0 (bit for bit: -0.0 and NaN are kept) and those pixels' values. Most of a window lies outside its
    particle: a 1024^2 scan's 12 large particles' masks, waiting to be finished, 203 -> about 90 MiB.

    ``masks[b]`` (a frame, a slice or indices of frames) gives those frames as a float32 array, ``np.asarray(masks)``
    all of them; ``shape``, ``dtype`` and ``len`` are the array's.

    >>> m = np.zeros((2, 3, 3), np.float32); m[1, 1, 1] = 0.5
    >>> p = PackedMasks(m)
    >>> bool(np.array_equal(p[1], m[1])) and bool(np.array_equal(np.asarray(p), m)) and p.shape == m.shape
    True
    """

    def __init__(self, masks):
        masks = np.asarray(masks, np.float32)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (n_frames, h, w), got shape {masks.shape}")
        self.shape, self.dtype = masks.shape, masks.dtype
        self._bits, self._values = [], []
        for frame in masks:
            set_ = frame.view(np.uint32) != 0
            self._bits.append(np.packbits(set_))
            self._values.append(frame[set_])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        idx = np.arange(self.shape[0])[key]
        h, w = self.shape[1:]
        out = np.zeros((np.size(idx), h, w), np.float32)
        for j, k in enumerate(np.atleast_1d(idx)):
            set_ = np.unpackbits(self._bits[k], count=h * w).view(bool).reshape(h, w)
            out[j][set_] = self._values[k]
        return out[0] if np.ndim(idx) == 0 else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


#: a particle's windows are levelled (:func:`_level_windows`) where the plane fitted to their outer ring rises across
#: the window by this many times the ring's residual noise (the median over its frames): a matrix ramping 0.94 / 0.3
#: OD across a reduced default scene gave 11.8-19.3 / 5.0-7.2 per particle; no ramp 0.6-1.2; the stress scenes
#: (stress-all seeds 1-2, stress-counts seed 2, learned) at most 1.6
LEVEL_MIN_TILT = 3.0
#: ... judged on this many of its windows, spread over its frames
LEVEL_JUDGE_FRAMES = 15


def _level_windows(windows, ring: int = 3):
    """Each window less the tilt of the plane fitted to its outer ``ring`` px (its level at the centre kept).

    A matrix whose thickness ramps across the field (a wedge-shaped electrode, a tilted
    sample) tilts every window's background. The learned segmenter takes only the ring's
    median off, so in the faint pre-edge frames its mask leaned towards the thick side, and
    the centre of mass with it: a matrix rising 1.5 OD across 256 px at 8200 eV (falling as
    E^-3) put the masks' centre of mass 1.2-4.3 px from the edge estimate before the edge,
    and 5 of 6 particles of the default scene (seed 5) lost their pre-edge frames ("not
    vouched for") and their XANES; levelled, none. The default scene (seed 1, 256 px, 60
    energies) moves by at most 0.0024 px. The classical segmenter fits this plane itself
    (:func:`segment_roi`): a segmenter marked ``fits_background`` is given the windows as cut.
    """
    out = np.array(windows, dtype=np.float32)
    if out.shape[1] < 2 * ring + 3 or out.shape[2] < 2 * ring + 3 or not len(out):
        return out
    # only a tilt that stands out of the ring's noise in most frames is the matrix's: elsewhere the plane fits the
    # ring's neighbours, fines and noise, and taking it off moved the stress scenes' masks (learned stress-all seed 2
    # 0.510 -> 0.565 px worst, seed 1's median 0.284 -> 0.304, the frames not vouched for up by 5-20 %). Judged on up
    # to LEVEL_JUDGE_FRAMES frames spread over the particle's (every window's plane cost 0.4 s of 143 x 460^2)
    some = np.unique(np.linspace(0, len(out) - 1, min(LEVEL_JUDGE_FRAMES, len(out))).round().astype(int))
    z = np.median([float(bg.max() - bg.min()) / noise for bg, noise in (_plane_background(out[k], ring) for k in some)])
    if not z >= LEVEL_MIN_TILT:
        return out
    for k in range(len(out)):
        bg, _ = _plane_background(out[k], ring)
        out[k] -= (bg - bg.mean()).astype(np.float32)
    return out


def _segment_windows(
    od, centres, half, segmenter, radius, separate=True, offsets=None, frames=None, unlit=None, reach=None
):
    cut_at = centres if offsets is None else centres + offsets
    windows, origins, clipped = crop_windows(od, cut_at, half, frames=frames)
    nanwin = ~np.isfinite(windows)
    if unlit is not None:
        # outside the beam's lit field is outside the frame: a mask it cuts is not whole
        dark, _, _ = crop_windows(unlit[None], cut_at, half, fill=0.0, frames=np.zeros(len(cut_at), int))
        dark = dark > 0.5
        clipped = clipped | dark.any(axis=(1, 2))
        nanwin |= dark
    if nanwin.any():
        for k in np.flatnonzero(nanwin.any(axis=(1, 2))):
            w = windows[k]
            fin = np.isfinite(w)
            w[~fin] = np.median(w[fin]) if fin.any() else 0.0
    rois = windows if getattr(segmenter, "fits_background", False) else _level_windows(windows)
    masks = np.asarray(segmenter(rois), dtype=np.float32)
    del rois  # a levelled copy: not held while the masks are separated (a large particle's: 51 MiB)
    if masks.shape != windows.shape:
        raise ValueError(f"segmenter returned shape {masks.shape} for ROIs of shape {windows.shape}")
    # fines and touching neighbours never enter the particle's mask
    if separate:
        masks = isolate_particle(
            masks, radius=radius, centres=np.asarray(centres, float) - origins, outside=nanwin, reach=reach
        )
    return windows, origins, clipped, nanwin, masks


def segment_particle(
    od, centres, half: int, *, segmenter, radius: float, separate: bool = True, offsets=None, unlit=None, reach=None
) -> SegmentedWindows:
    """Segment one particle in its window of every frame.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    centres : ndarray (n_frames, 2)
        Where the particle is expected in each frame.
    half : int
        Windows are ``2 * half + 1`` pixels wide (:func:`xanestrack.register.window_half`).
    segmenter : callable(rois (n, h, w)) -> soft masks (n, h, w)
        Classical (:func:`segment_rois`) or learned. Pixels outside the frame are given
        the window's median before it sees them.
    radius : float
        The particle's radius (px), for :func:`isolate_particle`.
    separate : bool
        Cut fines and touching neighbours off every mask (:func:`isolate_particle`).
    offsets : ndarray (n_frames, 2), optional
        px. Cut each window this far from where the particle is expected (which still
        picks the particle in it). A segmenter leans towards the centre of its window
        where the image is ambiguous (the learned one was trained on ROIs centred on
        their particle); windows centred on another estimate of the particle's position
        would lean the centre of mass towards that estimate, and the two would agree
        because of it. Offset windows keep the centre of mass independent of it.
    unlit : ndarray (rows, cols) bool, optional
        The pixels outside the beam's lit field (``Stack.metadata["unlit"]``): taken as outside the frame
        (``outside``; a window holding any is ``clipped``), so a mask the field's edge cuts is flagged
        ``out_of_view`` as one the frame's border cuts (:func:`xanestrack.register.mask_flags`).
    reach : float, optional
        The radius its windows are sized on (:func:`xanestrack.register.window_radius`), for
        :func:`isolate_particle` (default ``radius``).

    Returns
    -------
    SegmentedWindows

    Raises
    ------
    ValueError
        If the segmenter returns masks of another shape than its ROIs.

    Notes
    -----
    A window whose particle came out off-centre (centre of mass more than
    ``max(2, 0.15 half)`` px from where it was expected) is cut and segmented again
    around what it found (with the same offset).
    """
    centres = np.asarray(centres, float)
    offsets = None if offsets is None else np.asarray(offsets, float)
    if unlit is not None:
        unlit = np.asarray(unlit, bool)
        if unlit.shape != od.shape[1:]:
            raise ValueError(
                f"unlit must be a (rows, cols) mask of the frames' shape {od.shape[1:]}, got {unlit.shape}"
            )
        unlit = unlit if unlit.any() else None
    windows, origins, clipped, nanwin, masks = _segment_windows(
        od, centres, half, segmenter, radius, separate, offsets, unlit=unlit, reach=reach
    )
    com = centre_of_mass(masks) + origins
    off = np.hypot(*(com - centres).T)
    redo = np.flatnonzero(np.isfinite(off) & (off > max(2.0, 0.15 * half)))
    if redo.size:
        w2, o2, c2, n2, m2 = _segment_windows(
            od,
            com[redo],
            half,
            segmenter,
            radius,
            separate,
            None if offsets is None else offsets[redo],
            frames=redo,
            unlit=unlit,
            reach=reach,
        )
        windows[redo], origins[redo], clipped[redo], nanwin[redo], masks[redo] = w2, o2, c2, n2, m2
        com[redo] = centre_of_mass(m2) + o2
    # no window pixel outside the frame (a particle inside the field): a read-only view of one False, not an
    # (n, h, w) array held with the particle until it is finished (the 1024^2 large-particle scene: 63 MiB of them)
    outside = nanwin if nanwin.any() else np.broadcast_to(np.False_, nanwin.shape)
    return SegmentedWindows(origins=origins, clipped=clipped, outside=outside, masks=masks, com=com)
