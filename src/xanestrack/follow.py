"""Follow one particle through every frame on its own, by its window's correlation.

Detection runs on key frames only; between them, and wherever a detection is missing,
a particle's window is placed from *its own* positions (the key-frame detections, common
motion removed, interpolated) and then refined on the particle itself: each frame's
window, resampled at the predicted sub-pixel position, is cross-correlated with the
particle's window in a reference frame, on contrast-invariant images (the smoothed
optical density less its level, apodised by a disc around the particle so that
neighbours moving differently do not pull). Two passes: the second re-centres every window on the first
pass's estimate, so the apodisation sits on the particle in every frame (more, until settled, and each frame
searched in its whole window against the apodised template, where a neighbour lies in the disc's taper:
``FollowOptions.search``, ``max_passes``).

The result is a second, independent estimate of the particle's displacement beside the
centre of mass of its segmented mask (different input: the window's density instead of
a mask; different estimator: correlation instead of moments). The pipeline compares the two per frame
(``agreement_px``) and flags a frame where they disagree. :func:`density_residuals` is a
third: the particle's optical density correlated in windows centred on the edge estimate,
which vouches where the mask's outline, not the particle, moved (real frames across the edge).

The "edge estimate" keeps its name from when its images were meant as gradient
magnitudes (see :func:`xanestrack.register.edge_images`): it correlates the particle's
density, weighted towards its outline by the partial whitening, and so shares the
density with the centre of mass; what makes it a second estimate is the estimator
(a correlation against a reference frame, not the moments of a mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .register import bin_frames, correlate_shifts, edge_images, fill_outside, resample_windows, window_half

__all__ = [
    "FollowOptions",
    "follow_particle",
    "density_residuals",
    "window_geometry",
    "shape_weight",
    "disc_weight",
    "window_half",
]  # window_half: re-exported from register


@dataclass(frozen=True)
class FollowOptions:
    """Options of :func:`follow_particle` (lengths in pixels).

    Attributes
    ----------
    sigma : float, default 1.0
        Binned px. Gaussian scale of the edge images (:func:`edge_images
        <xanestrack.register.edge_images>`: the smoothed density less its level).
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
        px. Added to the disc radius; the disc edge is a linear taper of this width (of
        this many binned px on binned windows).
    passes : int, default 2
        Correlation passes (each re-centres the windows on the previous estimate); more, up to ``max_passes``,
        while a pass moves the measured frames by more than ``settle_px`` (RMS).
    max_passes : int, default 2
        The most passes (the pipeline allows 8 to particles with a neighbour in their disc's taper:
        :func:`xanestrack.pipeline._refine_near_neighbours`). More passes for every particle moved the stress
        family's faint particles (``stress-all`` seed 1, classical: worst 0.425 -> 0.601 px).
    settle_px : float, default 0.03
        px. A pass that moves the measured frames by no more than this (RMS) is the last. Each pass takes a share of
        the pull of features the apodisation cuts: a particle alone moves 0.025-0.027 px in its second pass and
        0.004-0.005 in its third (settled); one 4 px from a neighbour moving with it 0.19-0.33, 0.13-0.17, 0.10
        ... (its error along their axis 0.35 -> 0.27 -> 0.21 px with the disc, -> 0.21 -> 0.13 -> 0.08 -> 0.05
        searched in the window: ``search``).
    min_quality : float, default 0.25
        Normalised correlation below which a frame's estimate is not used (the frame is
        not ``measured``).
    binning_radius : float, default 48.0
        px. Windows of particles larger than this radius are binned (by ``radius //
        binning_radius``): the outline of a big particle keeps sub-pixel information.
    template : bool, default True
        After the first pass, correlate with the mean of the measured frames' windows
        instead of the reference frame alone (with at least 3 measured frames).
    floor_scale : float, default 4.0
        Binned windows (particles larger than ``2 * binning_radius``): the edge images'
        local level (a Gaussian of ``floor_scale * sigma``) is removed before apodisation
        (:func:`xanestrack.register.edge_images`); 0: one level per window, as unbinned
        windows always have. Left in, textured surroundings cut by the apodisation are a
        pattern fixed to the window that pulls every shift towards its centre, the
        prediction: SSRL 6-2c particles of radius 131 and 167 px, shifted by 1 px, were
        measured 0.33 and 0.28 px in one pass, 0.94 and 0.93 px with it (and the taper of
        ``apodisation_margin`` binned px). Not on unbinned windows: there the pull was
        small (0.84-0.96 px of 1 px in one pass, SSRL radius 31-82 px) and the high-pass
        costs small, faint particles their measurements (stress-counts seed 1, at 2:
        isolated particles tracked through every frame 10 -> 6).
    order : int, default 1
        Spline order of the windows' resampling at sub-pixel positions (1: bilinear,
        3: cubic). Cubic removes most of bilinear's bias on sub-pixel shifts (SSRL 6-2c
        frames shifted by known fractions, unbinned particles after 4 passes: up to 0.05
        px, cubic 0.012 px) but keeps the noise that bilinear smooths: on stress-counts
        seed 1 (600 counts) the worst particle went 0.293 -> 0.314 px. Hence bilinear.
    search : str, default "disc"
        What the frames' windows are apodised by in the passes after the first: ``"disc"``, as the reference (the
        disc, or the ``weight`` given); ``"window"``, only a taper of ``apodisation_margin`` binned px at the
        window's border, the reference (template) keeping the disc (with a ``weight`` given, as ``"disc"``). For every
        particle it moved the stress family's (``stress-counts`` seed 1, learned, with more passes: worst 0.260 ->
        0.368 px: more of the matrix, which moves otherwise, in the frames); the pipeline asks it only beside a
        neighbour in the disc's taper. Features the disc's taper cuts (the near rim
        of a neighbour a few px away) are weighted by where they lie in the window, and with both images so
        apodised they pull the shift towards the window's centre, the prediction: two particles moving as one,
        4 px apart, each 0.25 px RMS off along their axis in two passes (0.06 at 12 px; 0.03 alone), 0.08 with the
        disc after seven; searched in the whole window against the apodised template 0.19 in two passes (0.05),
        0.03 once settled.
    """

    sigma: float = 1.0
    whitening: float = 0.5
    apodisation: float = 1.25
    apodisation_margin: float = 4.0
    passes: int = 2
    min_quality: float = 0.25
    binning_radius: float = 48.0
    template: bool = True
    floor_scale: float = 4.0
    order: int = 1
    search: str = "disc"
    max_passes: int = 2
    settle_px: float = 0.03

    def __post_init__(self):
        if self.search not in ("disc", "window"):
            raise ValueError(f"search must be 'disc' or 'window', got {self.search!r}")


def _disc(nb: int, radius: float, b: int, options: FollowOptions, *, taper=None) -> np.ndarray:
    """The apodisation disc (nb, nb) on a window binned by ``b``: 1 within
    ``apodisation * radius + apodisation_margin`` px of the centre, a linear taper of
    ``taper`` binned px to 0 (default ``apodisation_margin``, in px unbinned, in binned px
    on binned windows: a taper of one or two binned px is a sharp edge fixed to the
    window, which the whitening boosts)."""
    yy, xx = np.mgrid[0:nb, 0:nb]
    c = (nb - 1) / 2
    rad = (options.apodisation * radius + options.apodisation_margin) / b
    if taper is None:
        taper = options.apodisation_margin
    taper = max(taper, 1.0)
    return np.clip(1 - (np.hypot(yy - c, xx - c) - rad) / taper, 0, 1)


def _moved(pos, before, measured, settle_px: float) -> bool:
    """Whether the last pass moved the measured frames' positions by more than ``settle_px`` (RMS)."""
    if not measured.any():
        return False
    d = (pos - before)[measured]
    return bool(np.sqrt(np.mean(np.sum(d * d, axis=1))) > settle_px)


def _border_taper(nb: int, margin: float) -> np.ndarray:
    """(nb, nb) float32: 1 inside, falling linearly to 0 over ``margin`` px at the window's border."""
    k = np.arange(nb, dtype=np.float32)
    edge = np.minimum(k, nb - 1 - k)
    ramp = np.clip(edge / max(float(margin), 1.0), 0.0, 1.0)
    return np.minimum.outer(ramp, ramp).astype(np.float32)


def window_geometry(radius: float, options: FollowOptions = FollowOptions()):
    """``(binning, binned_size, size)`` of the windows :func:`follow_particle` correlates.

    ``size = binned_size * binning`` full-resolution pixels, centred on the particle (the
    centre at ``(size - 1) / 2``); ``binned_size`` is odd.
    """
    b = max(1, int(radius // options.binning_radius))
    nb = 2 * int(np.ceil(window_half(radius) / b)) + 1
    return b, nb, nb * b


def disc_weight(radius: float, options: FollowOptions = FollowOptions()) -> np.ndarray:
    """The apodisation disc of :func:`follow_particle` on the full-resolution window ``(size, size)``
    (:func:`window_geometry`), to be multiplied by another weight and given as ``weight``: binned
    again there, it is the disc :func:`follow_particle` uses without one (its taper in binned px)."""
    b, _, size = window_geometry(radius, options)
    return _disc(size, radius, 1, options, taper=options.apodisation_margin * b).astype(np.float32)


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
        apod = _disc(nb, radius, b, options).astype(np.float32)
    idx = np.flatnonzero(np.all(np.isfinite(pos), axis=1))
    jr = int(np.flatnonzero(idx == reference)[0])
    use_template = False
    before = pos.copy()
    # a weight given (a shape, neighbours left out) is cut sharply where a touching neighbour's density is largest:
    # searched in the whole window against a template so cut, the shift runs towards that neighbour (the members
    # of a trio held together, tracked apart: one 0.03 -> 0.22 px RMS); with the disc, the taper is gentle
    border = _border_taper(nb, options.apodisation_margin) if options.search == "window" and weight is None else None
    for step in range(max(1, options.passes, options.max_passes)):
        if step >= max(1, options.passes) and not _moved(pos, before, measured, options.settle_px):
            break
        before = pos.copy()
        # every window sampled (bilinear) so that the predicted position is its centre
        win = resample_windows(od, pos - centre, (0, 0), (size, size), order=options.order, frames=idx)
        if background is not None:
            win = win - background.windows(pos - centre, size, idx)
        if b > 1:
            win = bin_frames(win, b)
        floor = options.floor_scale if b > 1 else 0.0
        g = edge_images(win, sigma=options.sigma, apodisation=apod, floor_scale=floor)
        # the first pass correlates with the reference frame; the next ones with the mean of
        # the frames measured so far (their windows are centred on the particle now): a
        # template with far less noise than one frame
        ref_img = g[measured[idx]].mean(axis=0) if use_template else g[jr]
        if border is not None and step > 0:
            # the frames searched in the whole window against the apodised template: the frames measured in the
            # first pass (its quality decided them) move; nothing else changes
            wide = edge_images(win, sigma=options.sigma, apodisation=border, floor_scale=floor)
            s, _ = correlate_shifts(ref_img, wide, max_shift=max(3.0, nb / 4), whitening=options.whitening)
            s = (s - s[jr]) * b
            ok = measured[idx] & np.all(np.isfinite(s), axis=1)
            pos[idx[ok]] += s[ok]
            continue
        s, q = correlate_shifts(ref_img, g, max_shift=max(3.0, nb / 4), whitening=options.whitening)
        s = (s - s[jr]) * b  # relative to the reference, full-resolution pixels
        ok = (q >= options.min_quality) & np.all(np.isfinite(s), axis=1)
        pos[idx[ok]] += s[ok]
        quality[idx] = q
        measured[:] = False
        measured[idx[ok]] = True
        use_template = options.template and ok.sum() >= 3
    return pos, quality, measured


def _offset_free(shifts, ok, jr):
    """Shifts less their constant offset: the median over >= 5 frames, else the reference frame's."""
    if ok.sum() >= 5:
        return shifts - np.nanmedian(shifts[ok], axis=0)
    return shifts - shifts[jr]


def density_residuals(
    od,
    positions,
    measured,
    radius: float,
    reference: int,
    *,
    options: FollowOptions = FollowOptions(),
    surroundings_px: float = 0.75,
    frames=None,
    template_frames: int = 32,
):
    """A third estimate: residual displacement of each frame's optical density around ``positions``.

    Each frame's window, centred on ``positions`` (the edge estimate), less a plane fitted
    outside the apodisation disc (the background and its gradients), apodised as
    :func:`follow_particle` does and normalised (blind to the contrast scale that changes
    across the edge), is correlated with a template: the mean of up to ``template_frames``
    measured frames spread over the scan, less the frame itself (a template holding the frame
    would pull its peak to zero shift); the reference frame's window alone with fewer than 3.
    Where the edge estimate is right and the particle's density pattern moves with it, the
    residual is a constant. It uses the particle's mass distribution, as the centre of mass
    does, without a segmentation: no outline to decide, no threshold.

    It is a correlation of the same window as the edge estimate: texture in the window that
    moves otherwise than the particle (the matrix behind a particle drifting on its own)
    pulls both alike. So a frame counts as measured only where the particle's surroundings
    move with it: the edge image of a ring around the window (from the apodisation disc to
    ``2 radius + 12`` px, binned twice as much), correlated the same way, stays within
    ``surroundings_px`` of its offset (frames where the ring has no texture to correlate are
    not measured either).

    Parameters
    ----------
    frames : ndarray (n_frames,) bool, optional
        Frames whose residual is wanted (default: every measured one); the template's frames
        are measured as well (they carry the constant offset).

    Returns
    -------
    residual : ndarray (n_frames, 2)
        px, NaN where not measured.
    measured : ndarray (n_frames,) bool
        Correlated well (``min_quality``), and the surroundings move with the particle.
    surroundings : ndarray (n_frames, 2)
        px: the ring's displacement relative to the particle's, offset removed (NaN where
        its correlation is poor or not computed).
    """
    pos = np.asarray(positions, float)
    n = pos.shape[0]
    res = np.full((n, 2), np.nan)
    ring_res = np.full((n, 2), np.nan)
    ok = np.zeros(n, bool)
    have = np.asarray(measured, bool) & np.isfinite(pos).all(axis=1)
    cand = np.flatnonzero(have)
    if cand.size < 2 or not have[reference]:
        return res, ok, ring_res
    # the template's frames: spread over the scan, the reference among them
    tmpl = cand[np.unique(np.round(np.linspace(0, cand.size - 1, min(template_frames, cand.size))).astype(int))]
    tmpl = np.union1d(tmpl, [reference])
    want = cand if frames is None else np.flatnonzero(np.asarray(frames, bool) & have)
    idx = np.union1d(tmpl, want)
    in_tmpl = np.isin(idx, tmpl)
    jr = int(np.flatnonzero(idx == reference)[0])
    b, nb, size = window_geometry(radius, options)

    def correlate(g, binning):
        if cand.size >= 3:
            total = g[in_tmpl].sum(axis=0)
            m = in_tmpl.sum() - in_tmpl  # each frame's template leaves the frame out
            ref_img = (total[None] - g * in_tmpl[:, None, None]) / m[:, None, None]
        else:
            ref_img = g[jr]
        sh, q = correlate_shifts(ref_img, g, max_shift=max(3.0, g.shape[-1] / 4), whitening=options.whitening)
        good = (q >= options.min_quality) & np.isfinite(sh).all(axis=1)
        return sh * binning, good

    # the particle's density, background plane removed
    win = resample_windows(od, pos - (size - 1) / 2, (0, 0), (size, size), order=1, frames=idx)
    win = fill_outside(np.asarray(bin_frames(win, b) if b > 1 else win, np.float64))
    apod = _disc(nb, radius, b, options)
    outer = apod < 0.5
    if outer.sum() < 16:
        return res, ok, ring_res
    yy, xx = np.mgrid[0:nb, 0:nb].astype(float)
    A = np.c_[np.ones(outer.sum()), yy[outer], xx[outer]]
    coef, *_ = np.linalg.lstsq(A, win[:, outer].T, rcond=None)  # (3, frames)
    g = win - (coef[0][:, None, None] + coef[1][:, None, None] * yy + coef[2][:, None, None] * xx)
    g = g * apod
    g -= g.mean(axis=(1, 2), keepdims=True)
    g /= np.sqrt((g**2).mean(axis=(1, 2), keepdims=True)) + 1e-12
    s, good = correlate(g, b)
    del win, g
    # its surroundings: the edge image of a ring around the window (0.75 px needs no finer grid)
    br = 2 * b
    r_out = (2 * radius + 12) / br
    t_r = max(options.apodisation_margin / br, 1.0)
    nr = 2 * int(np.ceil(r_out + t_r + 2)) + 1
    big = bin_frames(resample_windows(od, pos - (nr * br - 1) / 2, (0, 0), (nr * br, nr * br), order=1, frames=idx), br)
    yy, xx = np.mgrid[0:nr, 0:nr]
    d = np.hypot(yy - (nr - 1) / 2, xx - (nr - 1) / 2)
    # outside the apodisation disc, inside r_out (edge_images fills what lies outside the frame)
    ring = (1 - _disc(nr, radius, br, options, taper=options.apodisation_margin / br)) * np.clip(
        (r_out - d) / t_r, 0, 1
    )
    sr, ring_good = correlate(edge_images(big, sigma=max(options.sigma * b / br, 0.5), apodisation=ring), br)
    del big
    sr = np.where(ring_good[:, None], _offset_free(np.where(ring_good[:, None], sr, np.nan), ring_good, jr), np.nan)
    with_it = ring_good & (np.hypot(*sr.T) <= surroundings_px)
    res[idx[good]] = s[good]
    ring_res[idx] = sr
    ok[idx[good & with_it]] = True
    return res, ok, ring_res
