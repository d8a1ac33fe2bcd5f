"""Registration: estimate each particle's shift per frame, then apply it.

Centre of mass from image moments (Su et al. 2024, eqs. 2-5)::

    M00 = sum I,  M10 = sum x I,  M01 = sum y I,  Xc = M10 / M00,  Yc = M01 / M00

computed on the particle's (soft) mask, so that the intensity changes across the
edge do not move it. Shifts are always ``(n_frames, 2)`` arrays ``(dy, dx)`` in
pixels: the position of the content in frame ``k`` minus its position in the
reference. One function, :func:`resample_windows`, applies them, for every aligner.

Two independent estimates of a particle's position per frame (the centre of mass of its
mask here, the edge correlation of :mod:`xanestrack.follow`) are compared by
:func:`vouch_positions`, which sets the per-frame quality flags
(:data:`xanestrack.result.FRAME_FLAGS`) and chooses the position of each frame.
:func:`fuse_particles` pastes every aligned particle into one frame-0-grid stack.

References
----------
B. Su et al., J. Synchrotron Rad. 31 (2024), doi:10.1107/S1600577524000146.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import accel
from .morph import dilate_cross, frame_blocks
from .result import FRAME_FLAGS, UNVOUCHED_FLAGS
from .robust import robust_sigma

__all__ = [
    "centre_of_mass",
    "window_half",
    "window_radius",
    "WINDOW_MARGIN",
    "WINDOW_REACH",
    "crop_windows",
    "resample_windows",
    "resample_masks",
    "consensus_mask",
    "edge_widths",
    "shifts_from_positions",
    "correlate_shifts",
    "edge_images",
    "fill_outside",
    "mask_flags",
    "VouchedPositions",
    "fill_positions",
    "vouch_positions",
    "fuse_particles",
]


def centre_of_mass(images) -> np.ndarray:
    """Centre of mass ``(y, x)`` of one image (h, w) or each of a stack (n, h, w).

    Pixel ``[i, j]`` has its centre at ``(i, j)``. An image with zero mass gives NaN.

    Returns
    -------
    ndarray (2,) or (n, 2)
    """
    a = np.asarray(images)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"images must be (h, w) or (n, h, w), got shape {a.shape}")
    # in float64, a block of frames at a time (each frame's sums are its own): a float64 copy of a large particle's
    # whole stack of masks was its locating's peak (an 81-px particle's 223-px windows: 24 MiB at 60 energies)
    n, h, w = a.shape
    m00, m01, m10 = np.empty(n), np.empty(n), np.empty(n)
    for s in frame_blocks(n, h * w, RESAMPLE_BLOCK_PX):
        b = np.asarray(a[s], dtype=np.float64)
        m00[s] = b.sum(axis=(1, 2))
        m01[s] = (b.sum(axis=2) * np.arange(h)).sum(axis=1)  # sum y I
        m10[s] = (b.sum(axis=1) * np.arange(w)).sum(axis=1)  # sum x I
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.c_[m01 / m00, m10 / m00]
    out[m00 <= 0] = np.nan
    return out[0] if single else out


def bin_frames(a, b: int, *, dtype=np.float32) -> np.ndarray:
    """Mean over ``b`` x ``b`` blocks of the last two axes (trailing rows/columns dropped).

    The sums are made in ``dtype`` (float32 by default; float64 for the baselines of
    :mod:`xanestrack.align`, which work in float64), which is also the result's.
    """
    a = np.asarray(a)
    if b == 1:
        return a.astype(dtype, copy=False)
    ny, nx = (a.shape[-2] // b) * b, (a.shape[-1] // b) * b
    lead = a.shape[:-2]
    x = a[..., :ny, :nx].astype(dtype, copy=False)
    x = x.reshape(*lead, ny // b, b, nx).sum(axis=-2)  # rows first: contiguous sums
    x = x.reshape(*lead, ny // b, nx // b, b).sum(axis=-1)
    return x / np.dtype(dtype).type(b * b)


#: pixels of background around a particle's outline in its window (the pipeline's default
#: ``PipelineOptions.margin``, and the ROIs the learned segmenter is trained on)
WINDOW_MARGIN = 6

#: radii of a particle's outline that its window holds (:func:`window_half`): an irregular outline
WINDOW_REACH = 1.3


def window_half(radius: float, margin: int = WINDOW_MARGIN) -> int:
    """Half width of a particle's window: 1.3 radii plus ``margin`` pixels.

    The one rule for the size of a particle's window (ROI), ``2 * half + 1`` pixels wide:
    1.3 radii (:data:`WINDOW_REACH`) hold an irregular outline, the margin holds the background ring around it.
    Give it :func:`window_radius` for a particle whose outline may reach further (an elongated one).
    """
    return int(np.ceil(WINDOW_REACH * radius)) + int(margin)


def window_radius(radius: float, extent: float | None = None) -> float:
    """The radius (px) a particle's windows are sized on (:func:`window_half`,
    :func:`xanestrack.follow.window_geometry`): its equivalent ``radius``, or, where its outline reaches
    further from its centre than :data:`WINDOW_REACH` radii (``extent``, px: the detections' ``extent``), so far
    that the window holds it: ``extent / WINDOW_REACH``.

    An elongated particle's ends reach well beyond its equivalent radius (a rod of aspect 4: 2 radii, of aspect 6:
    2.4; an 80 x 32 px ellipse: 1.6): in windows sized on that radius its outline ran out of the window in every
    frame, and the probe's rods of aspect 4 and 6 and an 80 x 32 px ellipse were measured in no frame. A round or
    irregular particle's outline lies within 1.3 radii (its major semi-axis: the default and stress scenes' at most
    1.10): its windows are as before. The pipeline locates a particle in these windows only where its masks fail in
    those of its radius (:func:`xanestrack.pipeline._locate_particle`). ``extent`` None or NaN: the radius.
    """
    radius = float(radius)
    if extent is None or not np.isfinite(extent):
        return radius
    return max(radius, float(extent) / WINDOW_REACH)


def shifts_from_positions(positions, *, reference: int = 0) -> np.ndarray:
    """Shifts ``(n, 2)`` = positions - positions[reference]."""
    p = np.asarray(positions, dtype=float)
    return p - p[reference]


def crop_windows(od, centres, half: int, *, fill=np.nan, frames=None):
    """Integer-aligned windows ``(n, 2*half+1, 2*half+1)`` around ``centres`` (n, 2).

    ``frames`` (n,) int, optional: the frames of ``od`` the windows are cut from (default
    ``0 .. n - 1``), so that a few frames' windows need no copy of those frames.

    Returns
    -------
    windows : ndarray float32
    origins : ndarray (n, 2) int, frame coordinates of each window's pixel [0, 0]
    clipped : ndarray (n,) bool, True where the window crossed the frame border
        (those pixels hold ``fill``)
    """
    _, ny, nx = od.shape
    frames = np.arange(od.shape[0]) if frames is None else np.asarray(frames, int)
    n = len(frames)
    size = 2 * half + 1
    out = np.full((n, size, size), fill, np.float32)
    origins = np.zeros((n, 2), int)
    clipped = np.zeros(n, bool)
    for k in range(n):
        iy, ix = int(round(centres[k][0])), int(round(centres[k][1]))
        y0, x0 = iy - half, ix - half
        origins[k] = y0, x0
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + size, ny), min(x0 + size, nx)
        if sy0 >= sy1 or sx0 >= sx1:
            clipped[k] = True
            continue
        clipped[k] = (sy0, sx0, sy1, sx1) != (y0, x0, y0 + size, x0 + size)
        out[k, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = od[frames[k], sy0:sy1, sx0:sx1]
    return out, origins, clipped


def resample_windows(od, shifts, origin, shape, *, order: int = 3, frames=None) -> np.ndarray:
    """Aligned sub-stack: frame ``k`` sampled at ``origin + grid + shifts[k]``.

    The result is on the pixel grid of the reference frame: pixel ``[i, j]`` of every
    aligned frame shows what the reference frame has at ``origin + (i, j)``.
    Resampling is done in real space by splines on a padded crop (no Fourier shift,
    so no ringing from the ROI border); pixels that fall outside the frame are NaN.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    shifts : ndarray (n_frames, 2)
        ``(dy, dx)`` per frame; NaN rows give NaN frames.
    origin : (y0, x0) int
        Reference-frame coordinates of the window's pixel [0, 0].
    shape : (h, w)
    order : int
        Spline order (1 bilinear, 3 cubic).
    frames : sequence of int, optional
        Which frames (default all).
    """
    shifts = np.asarray(shifts, dtype=float)
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    h, w = shape
    idx = np.arange(od.shape[0]) if frames is None else np.asarray(list(frames), int)
    # every frame on its own: in blocks of frames, the crops, their prefiltered copies and the weighted sums are
    # held for one block at a time (a particle's 307 px windows, 143 frames: 258 MiB traced at once for its 51 MiB
    # result), the same numbers
    blocks = frame_blocks(len(idx), h * w, RESAMPLE_BLOCK_PX)
    if len(blocks) <= 1:
        return _resample_windows(od, shifts, origin, (h, w), order, idx)
    out = np.empty((len(idx), h, w), np.float32)
    for b in blocks:
        out[b] = _resample_windows(od, shifts, origin, (h, w), order, idx[b])
    return out


def resample_scaled(od, shifts, origin, shape, ratio, ref, *, order: int = 3, frames=None) -> np.ndarray:
    """:func:`resample_windows` with each frame's own magnification about a point: frame ``k`` sampled at
    ``ref + ratio[k] * (origin + grid - ref) + shifts[k]`` (a zone plate's image scale changes with the energy:
    texture ``d`` px from where ``shifts`` holds moves ``(ratio - 1) d`` px more, 0.2 px at 20 px for a 1 % change).
    ``ratio`` None: :func:`resample_windows`. The same splines (cubic on a prefiltered crop, or bilinear), each
    axis on its own (a magnification keeps the axes apart); pixels outside the frame NaN."""
    if ratio is None:
        return resample_windows(od, shifts, origin, shape, order=order, frames=frames)
    if order not in (1, 3):
        raise ValueError(f"order must be 1 or 3, got {order}")
    shifts = np.asarray(shifts, float)
    ratio = np.asarray(ratio, float)
    ref = np.asarray(ref, float)
    h, w = shape
    idx = np.arange(od.shape[0]) if frames is None else np.asarray(list(frames), int)
    out = np.full((len(idx), h, w), np.nan, np.float32)
    ny, nx = od.shape[1:]
    pad = 4 if order == 3 else 1
    taps = range(-1, 3) if order == 3 else range(0, 2)
    grid = (np.arange(h, dtype=float), np.arange(w, dtype=float))
    for i, k in enumerate(idx):
        r = ratio[k] if np.isfinite(ratio[k]) else 1.0
        if not np.isfinite(shifts[k]).all():
            continue
        ys, xs = (ref[a] + r * (origin[a] + grid[a] - ref[a]) + shifts[k, a] for a in (0, 1))
        fy, fx = np.floor(ys), np.floor(xs)
        y0, x0 = int(fy.min()) - pad, int(fx.min()) - pad
        ch, cw = int(fy.max()) + pad + 2 - y0, int(fx.max()) + pad + 2 - x0
        crop = _crops(od, np.array([k]), np.array([y0]), np.array([x0]), 0, (ch, cw))[0]
        if order == 3:
            crop = ndimage.spline_filter1d(crop, 3, axis=0, mode="nearest", output=np.float32)
            crop = ndimage.spline_filter1d(crop, 3, axis=1, mode="nearest", output=np.float32)
            wy, wx = _bspline3_weights(ys - fy), _bspline3_weights(xs - fx)
        else:
            wy, wx = np.stack([1 - (ys - fy), ys - fy]), np.stack([1 - (xs - fx), xs - fx])
        ry, rx = fy.astype(int) - y0, fx.astype(int) - x0
        tmp = sum(wy[j].astype(np.float32)[:, None] * crop[ry + t] for j, t in enumerate(taps))
        res = sum(wx[j].astype(np.float32)[None, :] * tmp[:, rx + t] for j, t in enumerate(taps))
        res[(ys < -0.5) | (ys > ny - 0.5)] = np.nan
        res[:, (xs < -0.5) | (xs > nx - 0.5)] = np.nan
        out[i] = res
    return out


#: frames' pixels :func:`resample_windows` and :func:`resample_masks` work on at once (2 Mpx: 143 frames of
#: windows up to 121 px in one block)
RESAMPLE_BLOCK_PX = 1 << 21


def _resample_windows(od, shifts, origin, shape, order: int, idx) -> np.ndarray:
    """:func:`resample_windows` of the frames ``idx``."""
    h, w = shape
    out = np.full((len(idx), h, w), np.nan, np.float32)
    ok = np.all(np.isfinite(shifts[idx]), axis=1)
    if not ok.any():
        return out
    sel = idx[ok]
    ny, nx = od.shape[1:]
    y0 = origin[0] + shifts[sel, 0]
    x0 = origin[1] + shifts[sel, 1]
    if order == 0:
        iy, ix = np.round(y0).astype(int), np.round(x0).astype(int)
        fy = fx = np.zeros(len(sel))
    else:
        iy, ix = np.floor(y0).astype(int), np.floor(x0).astype(int)
        fy, fx = y0 - iy, x0 - ix
    # every frame's crop, rows iy - pad .. iy + h + pad, edge-padded outside the frame (the
    # cubic spline's prefilter needs 4 rows of context, bilinear only the next row)
    pad = 4 if order == 3 else 0
    on_device = accel.array_device() is not None
    if on_device and order == 3:  # the prefilter's impulse response needs its own reach of context
        pad = accel.SPLINE_TAPS + 2
    crops = _crops(od, sel, iy, ix, pad, (h + 2 * pad + 1, w + 2 * pad + 1))
    if order == 3:
        taps, wy, wx = range(-1, 3), _bspline3_weights(fy), _bspline3_weights(fx)
    elif order == 1:
        taps, wy, wx = range(0, 2), np.stack([1 - fy, fy]), np.stack([1 - fx, fx])
    else:
        taps, wy, wx = range(0, 1), np.ones((1, len(sel))), np.ones((1, len(sel)))
    if on_device:
        res = accel.interpolate(crops, wy, wx, taps, pad, (h, w), prefilter=order == 3)
    else:
        if order == 3:  # cubic B-spline coefficients (as map_coordinates does) for the 4-tap weights
            crops = ndimage.spline_filter1d(crops, 3, axis=1, mode="nearest", output=np.float32)
            crops = ndimage.spline_filter1d(crops, 3, axis=2, mode="nearest", output=np.float32)
        wy, wx = wy.astype(np.float32), wx.astype(np.float32)
        tmp = _weighted_sum(wy, [crops[:, pad + t : pad + t + h, :] for t in taps])
        res = _weighted_sum(wx, [tmp[:, :, pad + t : pad + t + w] for t in taps])
    # outside the frame: NaN, not invented
    yy = np.arange(h)[None, :] + y0[:, None]
    xx = np.arange(w)[None, :] + x0[:, None]
    out_y = (yy < -0.5) | (yy > ny - 0.5)
    out_x = (xx < -0.5) | (xx > nx - 0.5)
    res[out_y[:, :, None] | out_x[:, None, :]] = np.nan
    out[ok] = res
    return out


def _crops(od, frames, iy, ix, pad: int, shape) -> np.ndarray:
    """float32 crops ``(len(frames), *shape)`` of ``od`` whose pixel [0, 0] is at ``(iy - pad, ix - pad)``,
    edge-clamped outside the frame: sliced where a crop lies inside the frame, gathered
    (clipped indices) only where it crosses the border."""
    ny, nx = od.shape[1:]
    ch, cw = shape
    y0, x0 = iy - pad, ix - pad
    inside = (y0 >= 0) & (x0 >= 0) & (y0 + ch <= ny) & (x0 + cw <= nx)
    crops = np.empty((len(frames), ch, cw), np.float32)
    for i in np.flatnonzero(inside):
        crops[i] = od[frames[i], y0[i] : y0[i] + ch, x0[i] : x0[i] + cw]
    edge = np.flatnonzero(~inside)
    if edge.size:
        ry = np.clip(y0[edge, None] + np.arange(ch)[None], 0, ny - 1)
        rx = np.clip(x0[edge, None] + np.arange(cw)[None], 0, nx - 1)
        crops[edge] = od[np.asarray(frames)[edge, None, None], ry[:, :, None], rx[:, None, :]]
    return crops


def _weighted_sum(weights, parts) -> np.ndarray:
    """``sum(weights[j][:, None, None] * parts[j])`` without the extra pass of ``sum``'s start value."""
    out = weights[0][:, None, None] * parts[0]
    for wj, part in zip(weights[1:], parts[1:]):
        out += wj[:, None, None] * part
    return out


def resample_masks(masks, origins, shifts, origin, shape) -> np.ndarray:
    """Move each frame's window mask onto the aligned (frame-0) grid (bilinear, 0 outside).

    Parameters
    ----------
    masks : ndarray (n_frames, h, w)
        Soft masks of windows whose pixel [0, 0] is at ``origins[k]`` in frame ``k``.
    origins : ndarray (n_frames, 2) int
    shifts, origin, shape
        As for :func:`resample_windows`.

    Returns
    -------
    ndarray (n_frames, *shape) float32
    """
    pos = np.asarray(origin, float)[None] + np.asarray(shifts, float) - origins + 1
    n = len(masks)
    out = np.empty((n, *shape), np.float32)
    for b in frame_blocks(n, int(np.prod(shape)), RESAMPLE_BLOCK_PX):  # as resample_windows: the same numbers
        # a zero border makes the edge-clamped sampling of resample_windows read 0 outside
        padded = np.pad(np.asarray(masks[b], np.float32), ((0, 0), (1, 1), (1, 1)))
        out[b] = np.nan_to_num(resample_windows(padded, pos[b], (0, 0), shape, order=1), nan=0.0)
    return out


def consensus_mask(masks, frames) -> np.ndarray:
    """The particle's mask: aligned soft ``masks`` (n, h, w) averaged over ``frames`` (bool), >= 0.5, holes filled.

    All False (h, w) when no frame is selected.
    """
    mask = (masks[frames].mean(axis=0) >= 0.5) if frames.any() else np.zeros(masks.shape[1:], bool)
    return ndimage.binary_fill_holes(mask)


EDGE_REACH_PX = 8.0  # the profile across a particle's outline: this far inside and outside it
EDGE_WIDTHS_PX = np.round(np.arange(0.3, 6.01, 0.1), 1)  # the widths tried


def edge_widths(windows, mask, frames=None) -> np.ndarray:
    """How sharp each window shows its particle's outline: the width (px, a Gaussian's sd) of its edge.

    Each window's mean optical density against the signed distance from the outline of
    ``mask`` (the particle's pixels; half-pixel bins, ``EDGE_REACH_PX`` either side) is fitted
    by ``a + b (1 - erf(d / (sqrt(2) s))) / 2`` for every ``s`` of ``EDGE_WIDTHS_PX``, the level
    ``a`` and contrast ``b`` by least squares; the width is the ``s`` of the smallest residual,
    placed between the widths tried by the vertex of the parabola through it and its neighbours
    (steps of 0.1 px would hide a change of resolution of a few tenths across a scan).
    The blur of the optics and of the detector, and that of the outline itself (a mask a pixel
    off the true outline widens it), add up in it, so it is a particle's *change* from frame to
    frame that tells a change of resolution (a focus that drifts with the energy), not its value.

    Parameters
    ----------
    windows : ndarray (n, h, w)
        Aligned windows of one particle (NaN pixels ignored).
    mask : ndarray (h, w) bool
    frames : ndarray of int, optional
        The windows measured (default all): taken from the pixels near the outline, not the whole windows copied
        (a large particle's 51 MiB of them beside every particle's results).

    Returns
    -------
    ndarray (n,) (or of ``frames``): NaN where the mask is empty or whole, or a window has too few pixels.
    """
    from scipy.special import erf

    windows = np.asarray(windows)
    mask = np.asarray(mask, bool)
    n = len(windows) if frames is None else len(frames)
    out = np.full(n, np.nan)
    if not mask.any() or mask.all():
        return out
    d = np.where(mask, 0.5 - ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask) - 0.5)
    sel = np.abs(d) <= EDGE_REACH_PX
    nb = int(4 * EDGE_REACH_PX) + 1
    b = np.clip(np.round((d[sel] + EDGE_REACH_PX) * 2).astype(int), 0, nb - 1)
    a = windows[:, sel]  # the pixels near the outline only
    a = (a if frames is None else a[frames]).astype(np.float64)
    ok = np.isfinite(a)
    onehot = np.zeros((b.size, nb))
    onehot[np.arange(b.size), b] = 1.0
    sums = np.where(ok, a, 0.0) @ onehot
    counts = ok.astype(float) @ onehot
    prof = sums / np.maximum(counts, 1.0)
    full = counts.min(axis=0) > 0  # bins every window sees
    if full.sum() < 8:
        return out
    x = (np.arange(nb) / 2 - EDGE_REACH_PX)[full]
    wt = np.sqrt(counts[:, full].mean(axis=0))
    y = (prof[:, full] * wt).T  # (bins, n)
    res = np.empty((EDGE_WIDTHS_PX.size, n))
    for i, s_ in enumerate(EDGE_WIDTHS_PX):
        X = np.c_[np.ones(x.size), 0.5 * (1 - erf(x / (np.sqrt(2) * s_)))] * wt[:, None]
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        res[i] = ((y - X @ coef) ** 2).sum(axis=0)
    k = np.argmin(res, axis=0)
    out = EDGE_WIDTHS_PX[k].astype(float)
    # between the widths tried: the vertex of the parabola through the smallest residual and its neighbours
    inner = (k > 0) & (k < EDGE_WIDTHS_PX.size - 1)
    cols = np.flatnonzero(inner)
    r0, r1, r2 = res[k[cols] - 1, cols], res[k[cols], cols], res[k[cols] + 1, cols]
    curv = r0 - 2 * r1 + r2
    step = EDGE_WIDTHS_PX[1] - EDGE_WIDTHS_PX[0]
    out[cols] += np.where(curv > 0, 0.5 * (r0 - r2) / np.where(curv > 0, curv, 1.0), 0.0).clip(-0.5, 0.5) * step
    out[ok.sum(axis=1) < 50] = np.nan
    return out


def _bspline3_weights(f):
    """Cubic B-spline weights of the taps -1, 0, 1, 2 for fractional offsets ``f``."""
    f = np.asarray(f, float)
    return np.stack([(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6])


def correlate_shifts(reference, images, *, max_shift=None, whitening: float = 0.0):
    """Sub-pixel shift of each image relative to ``reference`` by cross-correlation.

    The images should be zero-mean and apodised (see :func:`edge_images`). The integer
    peak of the circular cross-correlation (FFT) is refined by a three-point Gaussian fit
    per axis, which is unbiased for the near-Gaussian peak of smooth images.

    Parameters
    ----------
    reference : ndarray (h, w) or (n, h, w)
        One reference for every image, or one per image.
    images : ndarray (n, h, w)
    max_shift : float, optional
        Peaks farther than this from zero are not considered.
    whitening : float
        The cross-power spectrum is divided by its modulus to this power (0: plain
        cross-correlation; 1: phase correlation).

    Returns
    -------
    shifts : ndarray (n, 2)
        ``(dy, dx)``: the content of image ``k`` sits at the reference's position plus
        this shift (NaN where the correlation has no peak).
    quality : ndarray (n,)
        Normalised correlation at the peak (1: identical up to shift and scale).
    """
    ref = np.asarray(reference, np.float32)
    imgs = np.asarray(images, np.float32)
    n, h, w = imgs.shape
    if accel.array_device() is not None:
        return _subpixel_peaks(*accel.correlate(ref, imgs, max_shift=max_shift, whitening=whitening))
    from scipy import fft as sfft

    fr = sfft.rfft2(ref)
    fk = sfft.rfft2(imgs, workers=-1)
    if whitening:
        fr = fr / (np.abs(fr) + 1e-12) ** whitening
        fk = fk / (np.abs(fk) + 1e-12) ** whitening
    x = np.conj(fr) * fk if ref.ndim == 3 else np.conj(fr)[None] * fk
    cc = sfft.irfft2(x, s=(h, w), axes=(1, 2), workers=-1)
    # Parseval: the zero-lag correlation of each (whitened) image with itself
    norm = np.sqrt(_energy(fr, w) * _energy(fk, w)) / (h * w) + 1e-30
    yy = np.fft.fftfreq(h, 1 / h)
    xx = np.fft.fftfreq(w, 1 / w)
    if max_shift is not None:
        far = (np.abs(yy)[:, None] > max_shift) | (np.abs(xx)[None, :] > max_shift)
        cc[:, far] = -np.inf
    flat = cc.reshape(n, -1).argmax(axis=1)
    iy, ix = np.unravel_index(flat, (h, w))
    pick = _peak_and_neighbours(cc, iy, ix, np.arange(n), np.stack)
    return _subpixel_peaks(pick, iy, ix, norm, yy, xx)


def _peak_and_neighbours(cc, iy, ix, rows, stack):
    """(5, n): each correlation ``cc`` (n, h, w) at its peak ``(iy, ix)`` and the four pixels beside it
    (wrapping around); numpy arrays or torch tensors, with the matching ``stack``."""
    h, w = cc.shape[-2:]
    return stack(
        [
            cc[rows, iy, ix],
            cc[rows, (iy - 1) % h, ix],
            cc[rows, (iy + 1) % h, ix],
            cc[rows, iy, (ix - 1) % w],
            cc[rows, iy, (ix + 1) % w],
        ]
    )


def _subpixel_peaks(pick, iy, ix, norm, yy, xx):
    """Shifts and quality from each correlation's integer peak and its four neighbours ``pick`` (5, n)."""
    peak = pick[0]

    def fit(c_m, c_0, c_p):
        # Gaussian three-point interpolation (log-parabola); parabola where not all positive
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = (c_m > 0) & (c_0 > 0) & (c_p > 0)
            lm, l0, lp = np.log(np.where(pos, c_m, 1)), np.log(np.where(pos, c_0, 1)), np.log(np.where(pos, c_p, 1))
            g = (lm - lp) / (2 * (lm - 2 * l0 + lp))
            p = (c_m - c_p) / (2 * (c_m - 2 * c_0 + c_p))
            d = np.where(pos, g, p)
        return np.clip(np.nan_to_num(d, nan=0.0), -0.5, 0.5)

    dy = fit(pick[1], peak, pick[2])
    dx = fit(pick[3], peak, pick[4])
    shifts = np.c_[yy[iy] + dy, xx[ix] + dx]
    quality = peak / norm
    shifts[~np.isfinite(peak)] = np.nan
    return shifts, np.where(np.isfinite(peak), quality, 0.0)


def _energy(f, w):
    """Sum of squares of the real image behind the rfft2 ``f`` (times h * w)."""
    a = np.abs(f) ** 2
    full = 2 * a.sum(axis=(-2, -1)) - a[..., :, 0].sum(axis=-1)
    if w % 2 == 0:
        full = full - a[..., :, -1].sum(axis=-1)
    return full


def fill_outside(windows) -> np.ndarray:
    """Windows (n, h, w) with their NaN pixels (outside the frame) set to the window's median
    (0 where a window has none); a copy where any is filled, else the windows themselves."""
    win = windows
    if not np.isfinite(win).all():
        win = win.copy()
        for k in np.flatnonzero(~np.isfinite(win).all(axis=(1, 2))):
            f = win[k]
            fin = np.isfinite(f)
            f[~fin] = np.median(f[fin]) if fin.any() else 0.0
    return win


def edge_images(windows, *, sigma: float = 1.5, apodisation=None, floor_scale: float = 0.0):
    """Contrast-invariant images of particle windows for :func:`correlate_shifts`.

    Each window's optical density smoothed by a Gaussian of ``sigma`` (each frame on its
    own), less its floor, multiplied by ``apodisation`` (h, w), made zero-mean and scaled
    to unit RMS: blind to an OD offset (the floor) and to the contrast scale that changes
    across the absorption edge (the normalisation). NaN pixels (outside the frame) count as
    the window's median. The name is historical: see below.

    The floor is the image's level where the particle is not: with ``floor_scale`` 0 one
    value per window, measured where the apodisation is low; with ``floor_scale`` > 0 the
    local level, a Gaussian of ``floor_scale * sigma``. Left in, the level is cut by the
    apodisation into a pattern fixed to the window that pulls every shift towards zero:
    where the apodisation cuts textured surroundings (a neighbour, an agglomerate), a
    single value leaves most of it (SSRL 6-2c, a particle of radius 167 px shifted by 1 px:
    0.28 px measured in one pass; 0.90 px with the local level removed at ``floor_scale``
    2).

    Until this release these were meant as Gaussian gradient magnitudes and computed with
    scipy's ``gaussian_gradient_magnitude`` over (frames, y, x) with sigma 0 along the
    frames, which keeps the OD itself along that axis: ``sqrt(OD**2 + |grad OD|**2)``, in
    effect the same density where the OD stands well above its gradient, but not blind to
    an offset (a window less a matrix background changed character; where the OD crosses
    zero it is rectified). Measured, full stress table seeds 1-2 (worst RMS px): a true
    per-frame gradient magnitude lost the low-count cases (``stress-counts`` seed 1 0.26 ->
    1.42 px; ``stress-all`` 0.4-0.5 -> 1.2-3.8 px); this density with the matrix levelled
    frame by frame in the separation (:func:`xanestrack.background.matrix_background`) gained
    on ``stress-drift`` (learned 0.59 / 0.41 -> 0.26 / 0.16 px; see the README for the
    whole table).
    """
    win = fill_outside(np.asarray(windows, np.float32))
    a = np.ones(win.shape[1:], np.float32) if apodisation is None else np.asarray(apodisation, np.float32)
    if accel.array_device() is not None:
        return accel.edge_images(win, a, sigma=sigma, floor_scale=floor_scale)
    g = ndimage.gaussian_filter(win, (0, sigma, sigma), mode="nearest")
    if floor_scale > 0:
        s = floor_scale * sigma
        g = g - ndimage.gaussian_filter(g, (0, s, s), mode="nearest")
    else:
        outer = a < 0.5
        if outer.sum() < 16:
            outer = np.ones(a.shape, bool)
        sub = g[:, outer]
        g = g - np.partition(sub, sub.shape[1] // 2, axis=1)[:, sub.shape[1] // 2][:, None, None]
    g = g * a
    g = g - g.mean(axis=(1, 2), keepdims=True)
    rms = np.sqrt((g**2).mean(axis=(1, 2))) + 1e-12
    return g / rms[:, None, None]


def mask_flags(masks, *, outside, clipped, area_tolerance: float = 0.25) -> np.ndarray:
    """The flags of each frame that its particle mask tells: ``no_mask``, ``out_of_view``, ``area_outlier``.

    ``out_of_view``: the mask reaches pixels outside the frame or is cut by its border, or it touches the edge
    of a window that crossed the border, or the window's centre (the particle's expected position) lies outside
    the frame.

    Parameters
    ----------
    masks : ndarray (n_frames, h, w)
        Soft masks of the particle's windows.
    outside : ndarray (n_frames, h, w) bool
        Window pixels outside the frame.
    clipped : ndarray (n_frames,) bool
        Windows that crossed the frame border.
    area_tolerance : float
        A mask whose area differs from the median area by more than this (in
        ``|log(area / median)|``) is an ``area_outlier``.

    Returns
    -------
    ndarray (n_frames,) uint8: bits of :data:`~xanestrack.result.FRAME_FLAGS`.
    """
    n = len(masks)
    flags = np.zeros(n, np.uint8)
    area = masks.sum(axis=(1, 2))
    flags[area <= 0] |= FRAME_FLAGS["no_mask"]
    # a particle whose mask reaches pixels outside the frame (or the window edge) is not whole
    edge_touch = (
        (masks[:, 0, :].max(1) > 0.5)
        | (masks[:, -1, :].max(1) > 0.5)
        | (masks[:, :, 0].max(1) > 0.5)
        | (masks[:, :, -1].max(1) > 0.5)
    )
    out_of_frame = np.array([(masks[k] > 0.5)[outside[k]].any() for k in range(n)])
    # the segmenter sees the pixels outside the frame as background, so a mask stops at the frame's
    # border rather than crossing it: one that reaches the border is cut by it (was never flagged:
    # frames 2-4 px across the border were vouched for, 0.10-0.26 px off)
    at_border = np.zeros(n, bool)
    cut = np.flatnonzero(outside.reshape(n, -1).any(axis=1))
    if cut.size:
        o = outside[cut]
        at_border[cut] = ((masks[cut] > 0.5) & dilate_cross(o) & ~o).any(axis=(1, 2))
    # the window is centred on the particle's expected position: one whose centre lies outside the frame has
    # the particle out of view whatever its mask holds (a particle entering the field, its centre 12 px beyond
    # the border with nothing of it in the frame, had an empty mask and was flagged no_mask alone, then counted
    # as measured); the whole column or row through the centre outside (the window crossed the border there),
    # not one NaN pixel in the frame. An empty mask where the particle's disc (the radius of its masks' median
    # area) around the centre reaches beyond the border is out of view too (the same scene: a 16-px particle
    # leaving the field, the window's centre 1 px inside the border, was flagged no_mask alone)
    beyond = np.asarray(outside, bool)
    h, w = masks.shape[1:]
    centre_out = np.asarray(clipped, bool) & (beyond[:, :, w // 2].all(axis=1) | beyond[:, h // 2, :].all(axis=1))
    empty_cut = np.flatnonzero((area <= 0) & np.asarray(clipped, bool) & ~centre_out)
    if empty_cut.size and (area > 0).any():
        yy, xx = np.ogrid[:h, :w]
        disc = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= np.median(area[area > 0]) / np.pi
        centre_out[empty_cut] = (beyond[empty_cut] & disc).any(axis=(1, 2))
    flags[out_of_frame | at_border | (edge_touch & clipped) | centre_out] |= FRAME_FLAGS["out_of_view"]
    med_area = np.median(area[area > 0]) if (area > 0).any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        outlier = np.abs(np.log(area / med_area)) > area_tolerance if med_area > 0 else np.zeros(n, bool)
    flags[outlier & (area > 0)] |= FRAME_FLAGS["area_outlier"]
    flags[edge_touch & ~clipped] |= FRAME_FLAGS["area_outlier"]
    return flags


def _position_outliers(com, common, good) -> np.ndarray:
    """Frames whose residual from the common motion jumps far beyond its spread (bool, n)."""
    resid = com - common
    medr = np.median(resid[good], axis=0)
    smooth = ndimage.median_filter(np.where(good[:, None], resid, medr), size=(7, 1), mode="nearest")
    jump = np.hypot(*(resid - smooth).T)
    scale = robust_sigma(jump[good], centre=0.0) + 0.05
    return good & (jump > 8 * scale) & (jump > 1.0)


#: frames measured by both estimates from which their common offset is their median over those frames; with
#: fewer, a frame's agreement compares it with the others alone (:func:`_edge_agreement`)
MEDIAN_OFFSET_FRAMES = 5


def _edge_agreement(com, edge, both, reference_frame):
    """``(agreement (n,), offset (2,))``: |centre of mass - edge estimate - offset| where ``both`` measured.

    Both estimates are displacements up to one constant offset: the median over the frames
    (at least :data:`MEDIAN_OFFSET_FRAMES`). With fewer, each frame is compared with the others
    alone: with the reference frame's offset where it measured both (the reference frame's own
    agreement is then the largest of theirs, and :func:`_agreeing` vouches for it only with all of
    them), else with the median of the other frames' offsets (leave one out). A frame measured both
    ways in no other frame is compared with nothing: its agreement is NaN, and it is not vouched for.
    ``offset`` is the one the edge estimate is placed on (the median, or the reference frame's).
    """
    agreement = np.full(len(com), np.nan)
    offset = np.full(2, np.nan)
    idx = np.flatnonzero(both)
    if idx.size == 0:
        return agreement, offset
    resid = np.asarray(com, float)[idx] - np.asarray(edge, float)[idx]
    if idx.size >= MEDIAN_OFFSET_FRAMES:
        offset = np.nanmedian(resid, axis=0)
        agreement[idx] = np.hypot(*(resid - offset).T)
    elif both[reference_frame]:
        offset = com[reference_frame] - edge[reference_frame]
        agreement[idx] = np.hypot(*(resid - offset).T)
        # anchored on the reference frame, whose agreement is 0 by construction: it is only
        # as vouched for as the frames compared with it
        others = idx[idx != reference_frame]
        agreement[reference_frame] = np.max(agreement[others]) if others.size else np.nan
    else:
        offset = np.nanmedian(resid, axis=0)
        # leave one out: an offset taken with the frame itself is set in part (one frame: wholly) by the
        # frame it is compared with (the real SSRL pair's particle 11, measured both ways in its frame 0
        # alone, agreed to 0.0000 px there and was vouched for; two frames agreed to half their distance)
        for i, k in enumerate(idx):
            rest = np.delete(resid, i, axis=0)
            if len(rest):
                agreement[k] = np.hypot(*(resid[i] - np.nanmedian(rest, axis=0)))
    return agreement, offset


#: frames: the agreement of a frame's neighbours (+- half of it) must vouch for it too
AGREEMENT_WINDOW = 7


#: px: with fewer than 5 frames (no neighbours to vouch as well), an agreement beyond half the
#: threshold does not vouch for a position that departs from the common motion by more than this
FEW_FRAMES_DEPARTURE_PX = 4.0


def _agreeing(agreement, both, agreement_px, departure=None, reference_frame=None) -> np.ndarray:
    """Frames vouched for by an agreement (bool): within ``agreement_px`` and, with at least
    :data:`MEDIAN_OFFSET_FRAMES` frames, not only loosely where the estimates clearly disagree
    around them; with fewer, not only loosely where the position departs from the common motion
    by more than :data:`FEW_FRAMES_DEPARTURE_PX` (``departure`` (n,), px; NaN: unknown), and the
    ``reference_frame`` (where the agreement is anchored on it: :func:`_edge_agreement`) only where
    every frame compared with it is vouched for. A NaN agreement (nothing compared) vouches for nothing."""
    ok = both & (agreement <= agreement_px)
    loose = agreement > 0.5 * agreement_px
    if both.sum() >= MEDIAN_OFFSET_FRAMES:
        # two noisy estimates agree by chance now and then: a frame whose estimates agree only
        # loosely (beyond half the threshold) is not vouched for where they clearly disagree
        # around it (median over +-3 frames beyond 1.5 times the threshold)
        ok &= ~(loose & ~(_local_median(agreement, both, AGREEMENT_WINDOW) <= 1.5 * agreement_px))
        # nor is a frame that agrees almost alone among its +-3 neighbours (they disagree, or
        # their masks are not usable): stress-drift seed 2, a faint 13-px particle, both
        # estimates 1.07 px off alike in a frame whose neighbours failed
        ok &= ~_almost_alone(ok)
    elif departure is not None:
        # no neighbours to tell a chance agreement: a particle that moves far from what the others
        # do needs its estimates to agree closely (SSRL 6-2c, two frames: a 31-px particle 7 px off
        # the others' motion, its centre of mass and edge estimate 0.496 px apart, 0.50-0.72 px
        # with other library versions; the particles moving with the rest agree to 0.05-0.21 px)
        ok &= ~(loose & (np.asarray(departure, float) > FEW_FRAMES_DEPARTURE_PX))
    if reference_frame is not None and both.sum() < MEDIAN_OFFSET_FRAMES and both[reference_frame]:
        # the reference frame's agreement is the comparison of the others with it: where that does not vouch
        # for them it vouches for it no more (the real SSRL pair's particle 10: frame 1, 0.46 px apart and 6 px
        # off the others' motion, not vouched for; frame 0, by the same 0.46 px, was)
        others = both.copy()
        others[reference_frame] = False
        ok[reference_frame] &= bool(ok[others].all())
    return ok


def _almost_alone(vouched, window: int = AGREEMENT_WINDOW) -> np.ndarray:
    """Frames vouched for (bool) while fewer than a third of the frames around them (+-``window // 2``) are."""
    from scipy import ndimage

    k = np.ones(window)
    k[window // 2] = 0
    # (np.convolve's "same" is as long as the longer input: a scan of 5 or 6 frames, shorter than the window,
    # failed here with "operands could not be broadcast together with shapes (5,) (7,)")
    near = ndimage.correlate1d(vouched.astype(float), k, mode="constant", cval=0.0)
    frames_near = ndimage.correlate1d(np.ones(len(vouched)), k, mode="constant", cval=0.0)
    return vouched & (near < frames_near / 3)


def withdraw_lone_agreements(flags, *, window: int = AGREEMENT_WINDOW):
    """``(flags, n)``: a particle's frame flags with ``disagree`` added where a frame is vouched
    for (none of :data:`~xanestrack.result.UNVOUCHED_FLAGS`) but fewer than a third of the frames
    around it (+-``window // 2``) are, and how many such frames there were.

    :func:`_agreeing` applies this rule to the agreement alone; the tests after it (the mask's
    area and position, the smoothing) withdraw vouching from more frames, and a frame left
    agreeing almost alone among them agrees by chance: stress-all seed 7 (classical, held out),
    a touching 27-px particle, frame 0 vouched for 1.29 px off (its centre of mass 0.38 px
    from the edge estimate) beside 50 frames not vouched for. Applied once, on the final flags.
    """
    flags = np.asarray(flags).copy()
    if len(flags) < 5:
        return flags, 0
    lone = _almost_alone((flags.astype(int) & UNVOUCHED_FLAGS) == 0, window)
    flags[lone] |= FRAME_FLAGS["disagree"]
    return flags, int(lone.sum())


#: most frames in a run vouched for by the motion (:func:`vouch_by_motion`)
MOTION_RUN_FRAMES = 24


def vouch_by_motion(
    positions, edge_positions, flags, energies, *, agreement_px=0.5, max_run=MOTION_RUN_FRAMES, ends=3, particles=None
):
    """Vouch for frames whose centre of mass did not, by the scan's motion: ``(flags, agreement, n)``.

    A frame not vouched for only because its second estimate disagreed or was missing
    (``disagree``, nothing worse) that lies in a run of at most ``max_run`` such frames with
    frames vouched for on both sides is vouched for where its edge estimate and its position
    both lie within ``agreement_px`` of a prediction made without it: the other particles'
    motion in that frame (their shared displacement by median polish, at least two vouched for there)
    plus the particle's own motion interpolated, linearly in energy, between the ``ends``
    nearest frames vouched for on either side. Its ``disagree`` flag is replaced by
    ``by_motion`` and its agreement is the distance of its edge estimate from the prediction.

    The prediction shares nothing with the frame's own window: the common motion comes from
    the other particles, the own motion from the particle's other frames. Where the centre of
    mass is no position at all, it still vouches: a particle whose chemistry is mixed is
    outlined in part across the edge (stress-drift seed 1: a 41-px particle, 23 frames
    at 8338-8349 eV whose outlines' centres moved 0.5-1.6 px while the edge estimate and the
    truth agreed within 0.12 px: no edge energy could be measured in any of its pixels). A run
    at either end of the scan (nothing on one side) is never vouched for so.

    Parameters
    ----------
    positions, edge_positions : ndarray (n_particles, n_frames, 2)
        Every particle's positions and its edge estimate (NaN where not measured).
    flags : ndarray (n_particles, n_frames)
        Bits of :data:`~xanestrack.result.FRAME_FLAGS`.
    energies : ndarray (n_frames,)
        eV (or any coordinate the own motion is smooth in).
    agreement_px : float
    max_run : int
        Longest run of frames vouched for so (0: none).
    ends : int
        Frames vouched for on each side whose own motion is averaged.
    particles : ndarray (n_particles,) bool, optional
        Which particles may be vouched for so (default all); the others still give the
        common motion. Not a particle whose positions are known to be pulled towards the
        common motion (one moving on its own, not separated from the matrix behind it): its
        own frames carry the pull, so they predict it, and its centre of mass, which the
        matrix does not pull, is right to disagree (stress-crowd seed 1, a 10-px particle: 45
        frames 0.49-0.66 px off would have been vouched for).

    Returns
    -------
    flags : ndarray, the new flags
    agreement : ndarray (n_particles, n_frames), px from the prediction where vouched so, NaN elsewhere
    n : int, frames vouched for so
    """
    P = np.asarray(positions, float)
    E = np.asarray(edge_positions, float)
    flags = np.asarray(flags).copy()
    x = np.asarray(energies, float)
    agreement = np.full(flags.shape, np.nan)
    n_p = P.shape[0]
    if n_p < 3 or max_run <= 0:
        return flags, agreement, 0
    vouched = ((flags.astype(int) & UNVOUCHED_FLAGS) == 0) & np.isfinite(P).all(axis=2)
    eligible = (flags.astype(int) & UNVOUCHED_FLAGS) == FRAME_FLAGS["disagree"]
    D = np.where(vouched[..., None], P, np.nan)
    n_done = 0
    allowed = np.ones(n_p, bool) if particles is None else np.asarray(particles, bool)
    for i in range(n_p):
        if not allowed[i] or vouched[i].sum() < 2 * ends:
            continue
        # the other particles' common motion per frame (median polish: it does not depend on
        # which frames each of them is vouched for in) and this particle's offset from it
        shared = _median_polish(np.delete(D, i, axis=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            offset = np.nanmedian(D[i] - shared, axis=0)
        own = P[i] - offset - shared
        v = vouched[i]
        for a, b in _runs(~v):
            if a == 0 or b == len(v) - 1 or b - a + 1 > max_run:
                continue
            left = np.flatnonzero(v[:a])[-ends:]
            right = a + np.flatnonzero(v[a:])[:ends]
            ol, orr = own[left].mean(axis=0), own[right].mean(axis=0)
            xl, xr = x[left].mean(), x[right].mean()
            if not (np.isfinite(ol).all() and np.isfinite(orr).all()) or xr == xl:
                continue
            q = np.arange(a, b + 1)
            pred = offset + shared[q] + ol + np.outer((x[q] - xl) / (xr - xl), orr - ol)
            de = np.hypot(*(E[i, q] - pred).T)
            dp = np.hypot(*(P[i, q] - pred).T)
            with np.errstate(invalid="ignore"):
                ok = eligible[i, q] & (de <= agreement_px) & (dp <= agreement_px)
            k = q[ok]
            flags[i, k] = (flags[i, k] & (0xFF ^ FRAME_FLAGS["disagree"])) | FRAME_FLAGS["by_motion"]
            agreement[i, k] = de[ok]
            n_done += int(ok.sum())
    return flags, agreement, n_done


def _median_polish(D, iterations: int = 5) -> np.ndarray:
    """The motion particles share per frame: ``D`` (n_particles, n_frames, 2) as offset + shared,
    by median polish over its finite entries; NaN in frames with fewer than two particles."""
    count = np.isfinite(D[..., 0]).sum(axis=0)
    shared = np.zeros(D.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(iterations):
            offset = np.nanmedian(D - shared[None], axis=1)
            shared = np.nanmedian(D - offset[:, None], axis=0)
    shared[count < 2] = np.nan
    return shared


def _runs(mask):
    """``(start, stop)`` (inclusive) of each run of True in a bool array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(int)))
    return list(zip(d[::2], d[1::2] - 1))


def _local_median(values, valid, window: int) -> np.ndarray:
    """Median of ``values`` over ``valid`` frames within ``window // 2`` of each frame (NaN: none)."""
    n = len(values)
    h = window // 2
    out = np.full(n, np.nan)
    v = np.where(valid, values, np.nan)
    for k in range(n):
        seg = v[max(0, k - h) : k + h + 1]
        if np.isfinite(seg).any():
            out[k] = np.nanmedian(seg)
    return out


def fill_positions(pos, good, common):
    """Fill unmeasured positions from the nearest measured frame plus the common shift."""
    out = pos.copy()
    gi = np.flatnonzero(good)
    if gi.size == 0:
        return out
    for k in np.flatnonzero(~good):
        j = gi[np.argmin(np.abs(gi - k))]
        out[k] = pos[j] + common[k] - common[j]
    return out


@dataclass(frozen=True)
class VouchedPositions:
    """Result of :func:`vouch_positions`, per frame.

    Attributes
    ----------
    positions : ndarray (n_frames, 2)
        The particle's position ``(y, x)``; frames where it was not located are filled
        from the nearest located frame plus the common shift (all NaN if located nowhere).
    flags : ndarray (n_frames,) uint8
        Bits of :data:`~xanestrack.result.FRAME_FLAGS`.
    agreement : ndarray (n_frames,)
        px: distance of the edge estimate's displacement from the second estimate's that
        vouches for it (common offset removed): the centre of mass's, or where only the
        density correlation agrees, its (:func:`vouch_positions`); NaN where no second
        estimate measured, or where both measured in this frame alone (nothing to compare:
        :func:`_edge_agreement`).
    com_agreement, density_agreement : ndarray (n_frames,)
        px: the same for each second estimate alone (all NaN: not used).
    edge_positions : ndarray (n_frames, 2)
        The edge estimate on the centre of mass's offset (NaN where not measured).
    usable : ndarray (n_frames,) bool
        Whole, plausible mask with a finite centre of mass, not a position outlier.
    located : ndarray (n_frames,) bool
        A position was measured (by either estimate) rather than filled.
    """

    positions: np.ndarray
    flags: np.ndarray
    agreement: np.ndarray
    edge_positions: np.ndarray
    usable: np.ndarray
    located: np.ndarray
    com_agreement: np.ndarray | None = None
    density_agreement: np.ndarray | None = None


def vouch_positions(
    com,
    edge,
    *,
    edge_measured,
    masks,
    outside,
    clipped,
    undetected,
    common,
    reference_frame: int,
    area_tolerance: float = 0.25,
    agreement_px: float = 0.5,
    position: str = "edges",
    density=None,
    density_measured=None,
) -> VouchedPositions:
    """Per-frame quality flags and position of one particle from its two independent estimates.

    Parameters
    ----------
    com : ndarray (n_frames, 2)
        Centre of mass of the particle's mask, frame coordinates (NaN: empty mask).
    edge : ndarray (n_frames, 2)
        The edge-correlation estimate (:func:`xanestrack.follow.follow_particle`).
    edge_measured : ndarray (n_frames,) bool
        Frames where the edge correlation measured.
    masks, outside, clipped
        The particle's window masks, their pixels outside the frame and the windows that
        crossed the border (see :func:`mask_flags`).
    undetected : ndarray (n_frames,) bool
        Frames the detector examined without finding the particle.
    common : ndarray (n_frames, 2)
        The common (rigid) shift of every frame.
    reference_frame : int
        The frame the edge correlation is relative to.
    area_tolerance : float
        See :func:`mask_flags`.
    agreement_px : float
        px: the two estimates' displacements further apart than this: ``disagree``.
    position : {"edges", "com"}
        ``"edges"``: the edge estimate where it measured (contrast-invariant, blind to
        smooth backgrounds, no segmentation), the centre of mass elsewhere; ``"com"``:
        the centre of mass (the paper's), the edge estimate where no usable mask.
    density : ndarray (n_frames, 2), optional
        A third estimate, relative to the edge estimate: the residual displacement of the
        particle's density pattern in windows centred on the edge estimate
        (:func:`xanestrack.follow.density_residuals`; NaN where not measured). A frame
        the centre of mass does not vouch for is vouched for where this one agrees (the same
        rules), if its mask is usable. Both are correlations of one window, so anything in
        it that moves otherwise pulls both alike: the pipeline gives it only for particles
        whose centre of mass confirms no frame, or in the frames of one contrast regime where
        the centre of mass is off by a steady offset (a textured particle's outline:
        :func:`xanestrack.pipeline._steady_offset_frames`), and only frames whose surroundings
        move with the particle (``PipelineOptions.density_voucher``).
    density_measured : ndarray (n_frames,) bool, optional
        Frames where ``density`` measured.

    Returns
    -------
    VouchedPositions

    Raises
    ------
    ValueError
        If ``position`` is neither ``"edges"`` nor ``"com"``.

    Notes
    -----
    The flags (bits of :data:`~xanestrack.result.FRAME_FLAGS`):

    - ``undetected``: the detector examined the frame and did not find the particle
      isolated there (its window was placed from the prediction);
    - ``no_mask``: the segmentation found no particle in the window;
    - ``out_of_view``: the mask reaches pixels outside the frame, or the edge of a
      window that crossed the frame border, or the window's centre lies outside the frame:
      the particle is not whole;
    - ``area_outlier``: the mask area is far from the particle's median area (a
      neighbour merged, a piece lost), or the mask touches the window edge inside the frame;
    - ``position_outlier``: the centre of mass jumps away from the common motion far
      beyond the spread of its residual (8 robust sigma and more than 1 px): a frame
      whose mask is not the particle's;
    - ``disagree``: the two estimates' displacements differ by more than
      ``agreement_px`` in the frame or, where they differ by more than half of it there, by
      more than 1.5 times it as a median in the frames around it (+-3: two noisy estimates
      that mostly disagree coincide now and then, which vouches for nothing), or where fewer
      than a third of the frames around it (+-3) agree (they disagree, or their masks are not
      usable: an agreement almost alone is chance, or a bias both share), or only one
      of them (or neither) measured the frame, or both measured it but no other frame (their
      offset compared with nothing; with fewer than :data:`MEDIAN_OFFSET_FRAMES` such frames,
      also the reference frame where a frame compared with it is not vouched for); with
      ``density``, only where neither the centre of mass nor the density correlation vouches
      for the edge estimate so;
    - ``interpolated``: neither estimate located the particle: the position is filled
      from the nearest located frame plus the common shift (NaN, and every frame so
      flagged, where it was located in none).

    Frames without ``no_mask``, ``out_of_view``, ``area_outlier`` and with a finite centre
    of mass are usable; of these, ``position_outlier`` frames are not.
    """
    flags = mask_flags(masks, outside=outside, clipped=clipped, area_tolerance=area_tolerance)
    flags[undetected] |= FRAME_FLAGS["undetected"]
    good = (flags & (FRAME_FLAGS["no_mask"] | FRAME_FLAGS["out_of_view"] | FRAME_FLAGS["area_outlier"])) == 0
    good &= np.all(np.isfinite(com), axis=1)
    if good.sum() >= 5:
        bad = _position_outliers(com, common, good)
        flags[bad] |= FRAME_FLAGS["position_outlier"]
        good &= ~bad
    # the second, independent estimate vouches for each position
    both = good & edge_measured
    agreement, offset = _edge_agreement(com, edge, both, reference_frame)
    com_agreement = agreement
    # each frame's displacement from the reference frame less the common motion's (few frames)
    with np.errstate(invalid="ignore"):
        departure = np.hypot(*((edge - edge[reference_frame]) - (common - common[reference_frame])).T)
    vouched = _agreeing(agreement, both, agreement_px, departure, reference_frame)
    iagree = np.full(len(com), np.nan)
    if density is not None:
        # the density correlation: its residuals are displacements from the edge estimate;
        # only where the mask is usable (the particle clearly visible: in faint frames whose
        # masks fail, both correlations drift alike, 1.0-1.2 px on stress-all)
        iboth = np.asarray(density_measured, bool) & both
        res = np.asarray(density, float)
        iagree, _ = _edge_agreement(res, np.zeros_like(res), iboth, reference_frame)
        ivouched = _agreeing(iagree, iboth, agreement_px, departure, reference_frame)
        # the agreement is that of the estimate that vouches (the centre of mass's where both do)
        agreement = np.where(ivouched & ~vouched, iagree, agreement)
        vouched |= ivouched
    disagree = both & ~vouched
    flags[disagree] |= FRAME_FLAGS["disagree"]
    edge_pos = np.where(edge_measured[:, None], edge + offset, np.nan)
    whole = (flags & FRAME_FLAGS["out_of_view"]) == 0
    if position == "edges":
        use_edge = edge_measured & whole & np.isfinite(offset).all()
        have = use_edge | good
        positions = np.where(use_edge[:, None], edge_pos, np.where(good[:, None], com, np.nan))
    elif position == "com":
        fill = ~good & edge_measured & whole & np.isfinite(offset).all()
        have = good | fill
        positions = np.where(good[:, None], com, np.where(fill[:, None], edge_pos, np.nan))
    else:
        raise ValueError(f"position must be 'edges' or 'com', got {position!r}")
    # neither estimate measured the particle here, or only one (no second estimate)
    flags[~both & have] |= FRAME_FLAGS["disagree"]
    # frames where neither located it: not measured, not vouched for (filled from the
    # nearest located frame, or NaN where it was located nowhere)
    flags[~have] |= FRAME_FLAGS["interpolated"] | FRAME_FLAGS["disagree"]
    if not have.any():
        positions = np.full((len(com), 2), np.nan)
    else:
        positions = fill_positions(positions, have, common)
    return VouchedPositions(
        positions=positions,
        flags=flags,
        agreement=agreement,
        edge_positions=edge_pos,
        usable=good,
        located=have,
        com_agreement=com_agreement,
        density_agreement=iagree,
    )


def fuse_particles(od, particles, common_shift, *, frames=None):
    """One frame-0-grid stack: rigidly aligned frames, each particle pasted aligned.

    The background of frame ``k`` is shifted back by the common (rigid) shift; inside
    each particle's (dilated) consensus mask, the particle's own aligned sub-stack
    replaces it.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    particles : list of :class:`~xanestrack.result.ParticleResult`
        Their ``mask``, ``origin`` and ``aligned`` are used.
    common_shift : ndarray (n_frames, 2)
    frames : sequence of int, optional
        Which frames (default all).

    Returns
    -------
    ndarray (len(frames), rows, cols) float32
    """
    frames = list(range(od.shape[0])) if frames is None else list(frames)
    n, ny, nx = len(frames), od.shape[1], od.shape[2]
    fused = np.empty((n, ny, nx), np.float32)
    for j, k in enumerate(frames):
        fused[j] = ndimage.shift(od[k], -common_shift[k], order=1, mode="nearest")
    for p in particles:
        m = ndimage.binary_dilation(p.mask, iterations=2)
        h, w = m.shape
        y0, x0 = p.origin
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + h, ny), min(x0 + w, nx)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        sub_m = m[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        sub_a = p.aligned[frames, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        region = fused[:, sy0:sy1, sx0:sx1]
        ok = sub_m[None] & np.isfinite(sub_a)
        region[ok] = sub_a[ok]
    return fused
