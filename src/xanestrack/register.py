"""Registration: estimate each particle's shift per frame, then apply it.

Centre of mass from image moments (Su et al. 2024, eqs. 2-5)::

    M00 = sum I,  M10 = sum x I,  M01 = sum y I,  Xc = M10 / M00,  Yc = M01 / M00

computed on the particle's (soft) mask, so that the intensity changes across the
edge do not move it. Shifts are always ``(n_frames, 2)`` arrays ``(dy, dx)`` in
pixels: the position of the content in frame ``k`` minus its position in the
reference. One function, :func:`resample_windows`, applies them, for every aligner.

References
----------
B. Su et al., J. Synchrotron Rad. 31 (2024), doi:10.1107/S1600577524000146.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["centre_of_mass", "crop_windows", "resample_windows", "shifts_from_positions"]


def centre_of_mass(images) -> np.ndarray:
    """Centre of mass ``(y, x)`` of one image (h, w) or each of a stack (n, h, w).

    Pixel ``[i, j]`` has its centre at ``(i, j)``. An image with zero mass gives NaN.

    Returns
    -------
    ndarray (2,) or (n, 2)
    """
    a = np.asarray(images, dtype=np.float64)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"images must be (h, w) or (n, h, w), got shape {a.shape}")
    m00 = a.sum(axis=(1, 2))
    m01 = (a.sum(axis=2) * np.arange(a.shape[1])).sum(axis=1)  # sum y I
    m10 = (a.sum(axis=1) * np.arange(a.shape[2])).sum(axis=1)  # sum x I
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.c_[m01 / m00, m10 / m00]
    out[m00 <= 0] = np.nan
    return out[0] if single else out


def shifts_from_positions(positions, *, reference: int = 0) -> np.ndarray:
    """Shifts ``(n, 2)`` = positions - positions[reference]."""
    p = np.asarray(positions, dtype=float)
    return p - p[reference]


def crop_windows(od, centres, half: int, *, fill=np.nan):
    """Integer-aligned windows ``(n, 2*half+1, 2*half+1)`` around ``centres`` (n, 2).

    Returns
    -------
    windows : ndarray float32
    origins : ndarray (n, 2) int, frame coordinates of each window's pixel [0, 0]
    clipped : ndarray (n,) bool, True where the window crossed the frame border
        (those pixels hold ``fill``)
    """
    n, ny, nx = od.shape
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
        out[k, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = od[k, sy0:sy1, sx0:sx1]
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
    h, w = shape
    idx = range(od.shape[0]) if frames is None else frames
    out = np.full((len(idx), h, w), np.nan, np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    pad = 4
    ny, nx = od.shape[1:]
    for j, k in enumerate(idx):
        sy, sx = shifts[k]
        if not (np.isfinite(sy) and np.isfinite(sx)):
            continue
        y0 = origin[0] + sy
        x0 = origin[1] + sx
        cy0, cx0 = int(np.floor(y0)) - pad, int(np.floor(x0)) - pad
        cy1, cx1 = cy0 + h + 2 * pad + 1, cx0 + w + 2 * pad + 1
        crop = od[k, max(cy0, 0) : min(cy1, ny), max(cx0, 0) : min(cx1, nx)]
        if crop.size == 0:
            continue
        crop = np.pad(
            crop,
            ((max(0, -cy0), max(0, cy1 - ny)), (max(0, -cx0), max(0, cx1 - nx))),
            mode="edge" if crop.size else "constant",
        )
        coords = np.array([gy + (y0 - cy0), gx + (x0 - cx0)])
        out[j] = ndimage.map_coordinates(crop.astype(np.float64), coords, order=order, mode="nearest")
        # outside the frame: NaN, not invented
        yy = gy + y0
        xx = gx + x0
        outside = (yy < -0.5) | (yy > ny - 0.5) | (xx < -0.5) | (xx > nx - 0.5)
        if outside.any():
            out[j][outside] = np.nan
    return out
