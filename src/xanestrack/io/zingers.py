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
"""

from __future__ import annotations

import os

import numpy as np

from ..robust import MAD_TO_SIGMA, robust_sigma

__all__ = ["remove_zingers", "ZINGER_THRESHOLD"]

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
        Which frames (default all).

    Returns
    -------
    per_frame : ndarray (n_frames,) int
        Pixels replaced in each frame.
    """
    od = np.asarray(od)
    if od.ndim != 3:
        raise ValueError(f"od must be (n_frames, rows, cols), got shape {od.shape}")
    n, h, w = od.shape
    per_frame = np.zeros(n, int)
    if threshold <= 0 or h < 3 or w < 3:
        return per_frame
    idx = list(range(n) if frames is None else frames)

    def one(k):
        per_frame[k] = _frame(od[k], threshold)

    # numpy releases the GIL in these passes: frames in two threads
    from concurrent.futures import ThreadPoolExecutor

    workers = min(2, os.cpu_count() or 1, len(idx))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, idx))
    else:
        for k in idx:
            one(k)
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


def _frame(f, threshold: float) -> int:
    ny, nx = f.shape
    inner = f[1:-1, 1:-1]
    # each pixel less the mean of its four neighbours: a cheap first look at every inner pixel,
    # against the noise of its block (which holds the beam's fall-off towards the corners and,
    # roughly, the particles' photon noise)
    lap = inner - 0.25 * (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:])
    raw = _block_noise(lap)
    if raw is None:
        return 0
    # a cluster of up to four zingers lowers each one's difference from its neighbours' mean:
    # candidates from half the threshold, decided on the median, in units of photon noise
    cy, cx = np.nonzero(np.abs(lap) > 0.5 * threshold * _spread(raw, lap.shape))
    if not cy.size:
        return 0
    scaled = _block_noise(lap, _photon_scale(inner[::2, ::2]))
    # the difference from the median is less noisy than the one from the mean of four: their ratio,
    # from a sample of the frame's pixels
    sy = np.arange(1, ny - 1, max(1, (ny - 2) // 64))
    sx = np.arange(1, nx - 1, max(1, (nx - 2) // 64))
    gy, gx = (a.ravel() for a in np.meshgrid(sy, sx, indexing="ij"))
    s_med = _robust_sigma((f[gy, gx] - (m := _median3(f, gy, gx))) * _photon_scale(m))
    s_lap = _robust_sigma(lap[gy - 1, gx - 1] * _photon_scale(f[gy, gx]))
    if not (s_med > 0 and s_lap > 0 and scaled is not None):
        return 0
    by = np.minimum(np.arange(ny) // NOISE_BLOCK, scaled.shape[0] - 1)
    bx = np.minimum(np.arange(nx) // NOISE_BLOCK, scaled.shape[1] - 1)
    block_limit = threshold * (s_med / s_lap) * scaled

    def limit_at(yy, xx):
        return block_limit[by[yy], bx[xx]]

    cy, cx = cy + 1, cx + 1
    # zingers are sparse; a block where more than MAX_BLOCK_SHARE of the pixels stand out is
    # noisier than measured: left as it is
    med = _median3(f, cy, cx)
    out = np.abs(f[cy, cx] - med) * _photon_scale(med) > limit_at(cy, cx)
    counts = np.zeros((ny // NOISE_BLOCK + 1, nx // NOISE_BLOCK + 1), int)
    np.add.at(counts, (cy[out] // NOISE_BLOCK, cx[out] // NOISE_BLOCK), 1)
    dense = counts > MAX_BLOCK_SHARE * NOISE_BLOCK**2
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
        bad = np.abs(f[cy, cx] - med) * _photon_scale(med) > factor * limit_at(cy, cx)
        f[cy[bad], cx[bad]] = med[bad]
        taken_y.append(cy[bad])
        taken_x.append(cx[bad])
        if npass == 0:
            cy, cx = cy[~bad], cx[~bad]
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
    replaced = np.unique(np.concatenate(taken_y) * nx + np.concatenate(taken_x)).size
    return replaced


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
