"""Follow one particle through every frame on its own, by its outline.

Detection runs on key frames only; between them, and wherever a detection is missing,
a particle's window is placed from *its own* positions (the key-frame detections, common
motion removed, interpolated) and then refined on the particle itself: each frame's
window, resampled at the predicted sub-pixel position, is cross-correlated with the
particle's window in a reference frame, on contrast-invariant edge images (Gaussian
gradient magnitude, apodised by a disc around the particle so that neighbours moving
differently do not pull). Two passes: the second re-centres every window on the first
pass's estimate, so the apodisation sits on the particle in every frame.

The result is a second, independent estimate of the particle's displacement beside the
centre of mass of its segmented mask (different input: edges instead of a mask; different
estimator: correlation instead of moments). The pipeline compares the two per frame
(``agreement_px``) and flags a frame where they disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .register import bin_frames, correlate_shifts, edge_images, resample_windows, window_half

__all__ = [
    "FollowOptions",
    "follow_particle",
    "window_geometry",
    "shape_weight",
    "window_half",
]  # window_half: re-exported from register


@dataclass(frozen=True)
class FollowOptions:
    """Options of :func:`follow_particle` (lengths in pixels).

    Attributes
    ----------
    sigma : float, default 1.0
        Binned px. Gaussian scale of the gradient magnitude (the edge images).
    whitening : float, default 0.5
        Partial whitening of the cross-power spectrum (0: cross-correlation, 1: phase
        correlation). 0.5 weighs the particle's sharp outline above the smooth binder
        texture behind it without amplifying the noise as phase correlation does
        (measured on ``hard`` seed 5: worst particle 0.075 px vs 0.21 px at 0, and a
        diverging track at 0.8).
    apodisation : float, default 1.25
        Radius of the apodisation disc in particle radii (plus ``apodisation_margin``):
        neighbours outside it do not pull the correlation.
    apodisation_margin : float, default 4.0
        px. Added to the disc radius; the disc edge is a linear taper of this width.
    passes : int, default 2
        Correlation passes (each re-centres the windows on the previous estimate).
    min_quality : float, default 0.25
        Normalised correlation below which a frame's estimate is not used (the frame is
        not ``measured``).
    binning_radius : float, default 48.0
        px. Windows of particles larger than this radius are binned (by ``radius //
        binning_radius``): the outline of a big particle keeps sub-pixel information.
    template : bool, default True
        After the first pass, correlate with the mean of the measured frames' windows
        instead of the reference frame alone (with at least 3 measured frames).
    """

    sigma: float = 1.0
    whitening: float = 0.5
    apodisation: float = 1.25
    apodisation_margin: float = 4.0
    passes: int = 2
    min_quality: float = 0.25
    binning_radius: float = 48.0
    template: bool = True


def window_geometry(radius: float, options: FollowOptions = FollowOptions()):
    """``(binning, binned_size, size)`` of the windows :func:`follow_particle` correlates.

    ``size = binned_size * binning`` full-resolution pixels, centred on the particle (the
    centre at ``(size - 1) / 2``); ``binned_size`` is odd.
    """
    b = max(1, int(radius // options.binning_radius))
    nb = 2 * int(np.ceil(window_half(radius) / b)) + 1
    return b, nb, nb * b


def shape_weight(shape, *, grow: float, taper: float = 3.0) -> np.ndarray:
    """Apodisation weight from a particle's shape: 1 within ``grow`` px of it, 0 beyond ``grow + taper``.

    Parameters
    ----------
    shape : ndarray (h, w) bool
        The particle's pixels.
    grow, taper : float
        px.

    Returns
    -------
    ndarray (h, w) float32 (all ones for an empty shape: no shape, no apodisation by it).
    """
    shape = np.asarray(shape, bool)
    if not shape.any():
        return np.ones(shape.shape, np.float32)
    d = ndimage.distance_transform_edt(~shape)
    return np.clip(1 - (d - grow) / max(taper, 1e-6), 0, 1).astype(np.float32)


def follow_particle(
    od,
    predicted,
    radius: float,
    reference: int,
    *,
    options: FollowOptions = FollowOptions(),
    weight=None,
    background=None,
):
    """Displacement of one particle in every frame relative to a reference frame.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
    predicted : ndarray (n_frames, 2)
        Predicted ``(y, x)`` of the particle in every frame (NaN rows are skipped).
    radius : float
        Equivalent radius of the particle (px).
    reference : int
        The frame the displacements are relative to (a frame where the particle was
        detected, best one with high contrast).
    options : FollowOptions
    weight : ndarray (size, size), optional
        Apodisation weight on the full-resolution window (:func:`window_geometry`),
        e.g. the particle's own shape grown by the edge images' reach
        (:func:`shape_weight`): replaces the disc, so that matrix texture beside an
        irregular particle, which moves with the matrix and not with the particle, does
        not pull the correlation.
    background : MatrixBackground, optional
        The matrix behind the particle (:func:`xanestrack.background.matrix_background`),
        subtracted from every window, moved with the matrix, before the edge images are
        made.

    Returns
    -------
    positions : ndarray (n_frames, 2)
        ``predicted[reference]`` plus the measured displacement (the prediction where
        nothing was measured).
    quality : ndarray (n_frames,)
        Normalised correlation of the frame's edge image with the reference's (0 where
        not measured).
    measured : ndarray (n_frames,) bool
        Frames whose displacement was measured (quality at least ``min_quality``).
    """
    pos = np.array(predicted, dtype=float)
    n = pos.shape[0]
    quality = np.zeros(n)
    measured = np.zeros(n, bool)
    if not np.isfinite(pos[reference]).all():
        return pos, quality, measured
    b, nb, size = window_geometry(radius, options)
    centre = (size - 1) / 2  # the window centre, in full-resolution window pixels
    if weight is not None:
        weight = np.asarray(weight, np.float32)
        if weight.shape != (size, size):
            raise ValueError(f"`weight` must have the window's shape {(size, size)}, got {weight.shape}")
        apod = bin_frames(weight[None], b)[0] if b > 1 else weight
    else:
        # apodisation disc around the particle, on the binned window grid
        yy, xx = np.mgrid[0:nb, 0:nb]
        c = (nb - 1) / 2
        rad = (options.apodisation * radius + options.apodisation_margin) / b
        taper = max(options.apodisation_margin / b, 1.0)
        apod = np.clip(1 - (np.hypot(yy - c, xx - c) - rad) / taper, 0, 1).astype(np.float32)
    idx = np.flatnonzero(np.all(np.isfinite(pos), axis=1))
    jr = int(np.flatnonzero(idx == reference)[0])
    use_template = False
    for _ in range(max(1, options.passes)):
        # every window sampled (bilinear) so that the predicted position is its centre
        win = resample_windows(od, pos - centre, (0, 0), (size, size), order=1, frames=idx)
        if background is not None:
            win = win - background.windows(pos - centre, size, idx)
        if b > 1:
            win = bin_frames(win, b)
        g = edge_images(win, sigma=options.sigma, apodisation=apod)
        # the first pass correlates with the reference frame; the next ones with the mean of
        # the frames measured so far (their windows are centred on the particle now): a
        # template with far less noise than one frame
        ref_img = g[measured[idx]].mean(axis=0) if use_template else g[jr]
        s, q = correlate_shifts(ref_img, g, max_shift=max(3.0, nb / 4), whitening=options.whitening)
        s = (s - s[jr]) * b  # relative to the reference, full-resolution pixels
        ok = (q >= options.min_quality) & np.all(np.isfinite(s), axis=1)
        pos[idx[ok]] += s[ok]
        quality[idx] = q
        measured[:] = False
        measured[idx[ok]] = True
        use_template = options.template and ok.sum() >= 3
    return pos, quality, measured
