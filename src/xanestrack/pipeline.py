"""The per-particle pipeline: detect → match → segment → register → xanes → motion.

:func:`run_pipeline` takes a :class:`~xanestrack.stack.Stack` and returns a
:class:`PipelineResult`; nothing here reads or writes files. The detector and the
segmenter are arguments, so the learned models (and any user's own) plug in:

- ``detector(od) -> DataFrame`` with the columns of :data:`xanestrack.detect.DETECTION_COLUMNS`;
- ``segmenter(rois) -> masks``: ROIs ``(n, h, w)`` to soft masks in [0, 1] of the same shape.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from .detect import DetectOptions, detect_stack
from .follow import FollowOptions, follow_particle, window_half
from .match import MatchOptions, link_detections
from .motion import compute_motion, peak_ratios
from .register import centre_of_mass, crop_windows, resample_windows
from .segment import SegmentOptions, isolate_particle, segment_rois
from .result import FRAME_FLAGS, ParticleResult, PipelineResult, flag_names  # noqa: F401 (re-exported)
from .stack import Stack
from . import xanes

__all__ = [
    "PipelineOptions",
    "ParticleResult",
    "PipelineResult",
    "run_pipeline",
    "sanitize_stack",
    "analyse_xanes",
    "FRAME_FLAGS",
    "flag_names",
]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PipelineOptions:
    """Options of the whole pipeline (lengths in pixels, energies in eV)."""

    detect: DetectOptions = field(default_factory=DetectOptions)
    match: MatchOptions = field(default_factory=MatchOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    margin: int = 6
    detect_every: int = 12  # detect on every n-th frame (and the last); ROIs are propagated in between (1: every frame)
    interpolation_order: int = 3
    area_tolerance: float = 0.25
    min_xanes_energies: int = 8
    reference_particle: int | None = None
    fuse: str = "ends"  # "ends": first and last frame; "all": the whole stack; "none"
    lcf_window: tuple = (-20.0, 40.0)
    edge_window: tuple = (-15.0, 20.0)
    local_background: bool = True
    xanes_smoothing: float = 1.0
    follow: FollowOptions = field(default_factory=FollowOptions)
    agreement_px: float = 0.5  # centre of mass vs edge correlation: frames further apart are flagged "disagree"
    separate_neighbours: bool = True  # cut fines and touching neighbours off every mask (segment.isolate_particle)
    position: str = "edges"  # "edges": edge correlation, vouched by the centre of mass; "com": the reverse (the paper's)
    scale_model: str = "energy"  # common magnification: "energy" (linear in the photon energy) or "frame" (one per frame)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def sanitize_stack(od, *, source: str = "stack"):
    """Replace isolated NaN/inf pixels by their local median; refuse hopeless frames.

    Returns
    -------
    clean : ndarray float32 (a copy if anything was replaced)
    n_fixed : int
        Number of pixels replaced.

    Raises
    ------
    ValueError
        If a frame is more than half non-finite (name the frames).
    """
    od = np.asarray(od)
    finite = np.isfinite(od)
    if finite.all():
        return od.astype(np.float32, copy=False), 0
    frac = 1 - finite.mean(axis=(1, 2))
    bad = np.flatnonzero(frac > 0.5)
    if bad.size:
        raise ValueError(
            f"{source}: frames {bad.tolist()[:10]} are more than half NaN/inf; remove them "
            "(and their energies) or fix the input"
        )
    clean = od.astype(np.float32, copy=True)
    for k in np.flatnonzero(frac > 0):
        f = clean[k]
        m = ~np.isfinite(f)
        fill = np.where(m, np.nanmedian(f), f)
        med = ndimage.median_filter(fill, size=5)
        f[m] = med[m]
    n = int((~finite).sum())
    logger.warning("%s: replaced %d NaN/inf pixels by their local median", source, n)
    return clean, n


def _default_segmenter(options):
    def seg(rois):
        return segment_rois(rois, options=options)

    return seg


def _resample_masks(masks, origins, shifts, origin, shape):
    """Move each frame's window mask onto the aligned (frame-0) grid (bilinear, 0 outside)."""
    # a zero border makes the edge-clamped sampling of resample_windows read 0 outside
    padded = np.pad(masks.astype(np.float32), ((0, 0), (1, 1), (1, 1)))
    pos = np.asarray(origin, float)[None] + shifts - origins + 1
    out = resample_windows(padded, pos, (0, 0), shape, order=1)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def local_background(aligned, mask, *, inner: int = 3, outer: int = 10):
    """Per-frame plane fitted robustly to a ring around the particle, (n, h, w).

    Frame-to-frame changes of the source intensity, of the flat-field and of the binder
    brightness add an OD offset to every pixel of a frame; the ring outside the particle
    measures it. Neighbours inside the ring are rejected as outliers (3 sigma-clipping passes).
    """
    n, h, w = aligned.shape
    ring = ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)
    out = np.zeros(aligned.shape, np.float32)
    if ring.sum() < 12:
        return out
    yy, xx = np.nonzero(ring)
    A = np.c_[np.ones(yy.size), (yy - h / 2) / h, (xx - w / 2) / w]
    gy, gx = np.mgrid[0:h, 0:w]
    G = np.stack([np.ones((h, w)), (gy - h / 2) / h, (gx - w / 2) / w])
    # all frames at once: normal equations weighted by each frame's kept ring pixels
    v = aligned[:, yy, xx].astype(np.float64)  # (n, m)
    fin = np.isfinite(v)
    v0 = np.where(fin, v, 0.0)
    usable = fin.sum(axis=1) >= 12

    AA = (A[:, :, None] * A[:, None, :]).reshape(len(A), 9)

    def solve(keep):
        wts = keep.astype(np.float64)
        ata = (wts @ AA).reshape(-1, 3, 3)
        atv = (wts * v0) @ A
        ata[~usable] = np.eye(3)
        return np.linalg.solve(ata, atv[..., None])[..., 0]

    keep = fin
    coef = solve(keep)
    for _ in range(3):
        r = np.abs(v0 - coef @ A.T)
        # median of |r| over each frame's kept pixels (sorted, the rest pushed to the end)
        srt = np.sort(np.where(keep, r, np.inf), axis=1)
        c = np.maximum(keep.sum(axis=1), 1)
        rows = np.arange(len(srt))
        med = 0.5 * (srt[rows, (c - 1) // 2] + srt[rows, c // 2])
        sd = 1.4826 * med + 1e-9
        new = fin & (r < 3 * sd[:, None])
        take = usable & (new.sum(axis=1) >= 12)  # too few left: stay with the previous selection
        take &= (new != keep).any(axis=1)
        if not take.any():
            break
        keep = np.where(take[:, None], new, keep)
        coef = solve(keep)
    out = np.einsum("ni,ihw->nhw", coef, G).astype(np.float32)
    out[~usable] = 0.0
    return out


def _masked_smooth(stack, mask, sigma):
    """Gaussian smoothing confined to the mask (normalised convolution), per frame."""
    if sigma <= 0:
        return stack
    m = mask.astype(np.float32)
    norm = ndimage.gaussian_filter(m, sigma)
    out = ndimage.gaussian_filter(np.where(mask, stack, 0), (0, sigma, sigma))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = out / norm
    return np.where(mask, out, stack).astype(np.float32)


def _fill_positions(pos, good, common):
    """Fill unmeasured positions from the nearest measured frame plus the common shift."""
    out = pos.copy()
    gi = np.flatnonzero(good)
    if gi.size == 0:
        return out
    for k in np.flatnonzero(~good):
        j = gi[np.argmin(np.abs(gi - k))]
        out[k] = pos[j] + common[k] - common[j]
    return out


def analyse_xanes(aligned, mask, energies, *, usable=None, options: PipelineOptions = PipelineOptions(), references=None) -> dict:
    """XANES of one aligned particle sub-stack: edge-energy maps, LCF, mean spectra.

    Parameters
    ----------
    aligned : ndarray (n_frames, h, w)
    mask : ndarray (h, w) bool
    energies : ndarray (n_frames,)
    usable : ndarray (n_frames,) bool, optional
        Frames to use (default: frames without NaN).

    Returns
    -------
    dict with ``edge_maps`` (e50, derivative, whiteline), ``pixel_flags``,
    ``fractions``, ``reference_names``, ``e0_ev``, ``mean_norm``, ``pre_edge``,
    ``post_edge``, ``notes``.
    """
    n, size = aligned.shape[0], aligned.shape[1]
    notes = []
    if usable is None:
        usable = np.all(np.isfinite(aligned), axis=(1, 2))
    usable = np.asarray(usable, bool).copy()
    edge_maps = {}
    pix_flags = np.zeros(aligned.shape[1:], np.uint8)
    fractions, ref_names = None, ()
    e0 = float("nan")
    mean_norm = np.full(n, np.nan)
    pre_c = post_c = np.full(n, np.nan)
    if usable.sum() < options.min_xanes_energies or not mask.any():
        notes.append(
            f"XANES skipped: {int(usable.sum())} usable energies (need {options.min_xanes_energies})"
        )
        for name in ("e50", "derivative", "whiteline"):
            edge_maps[name] = np.full(aligned.shape[1:], np.nan, np.float32)
    else:
        e = energies[usable]
        sub = aligned[usable]
        if options.local_background:
            sub = sub - local_background(sub, mask)
        sub = _masked_smooth(sub, mask, options.xanes_smoothing)
        mu = sub[:, mask]  # (n_e, n_pix)
        try:
            nm = xanes.normalize(e, mu.mean(axis=1))
            e0 = nm.e0_ev
            mean_norm[usable] = nm.norm
            pre_c = np.full(n, np.nan)
            post_c = np.full(n, np.nan)
            pre_c[usable], post_c[usable] = nm.pre_edge, nm.post_edge
            npix = xanes.normalize(e, mu, e0_ev=e0)
            pf = npix.flags.copy()
            for name, method in (("e50", "half"), ("derivative", "derivative"), ("whiteline", "whiteline")):
                vals, fl = xanes.edge_energy(e, npix.norm, method=method, e0_ev=e0, window=options.edge_window)
                m = np.full(aligned.shape[1:], np.nan, np.float32)
                m[mask] = vals
                edge_maps[name] = m
                if name == "e50":
                    pf |= fl
            pix_flags[mask] = pf
            if references:
                lo = max(r.energies_ev[0] if hasattr(r, "energies_ev") else -np.inf for r in references.values())
                hi = min(r.energies_ev[-1] if hasattr(r, "energies_ev") else np.inf for r in references.values())
                if lo <= e0 + options.lcf_window[0] and e0 + options.lcf_window[1] <= hi:
                    lcf = xanes.linear_combination_fit(e, npix.norm, references, e0_ev=e0, window=options.lcf_window)
                    fr = np.full((len(lcf.names), *aligned.shape[1:]), np.nan, np.float32)
                    fr[:, mask] = lcf.fractions
                    fractions, ref_names = fr, lcf.names
                    pix_flags[mask] |= lcf.flags
                else:
                    notes.append(f"LCF skipped: references cover {lo:.0f}-{hi:.0f} eV, edge at {e0:.0f} eV")
        except ValueError as exc:
            notes.append(f"XANES failed: {exc}")
            for name in ("e50", "derivative", "whiteline"):
                edge_maps.setdefault(name, np.full(aligned.shape[1:], np.nan, np.float32))
    return dict(
        edge_maps=edge_maps,
        pixel_flags=pix_flags,
        fractions=fractions,
        reference_names=tuple(ref_names),
        e0_ev=e0,
        mean_norm=mean_norm,
        pre_edge=pre_c,
        post_edge=post_c,
        notes=notes,
    )


def _segment_windows(od, centres, half, segmenter, radius, separate=True):
    windows, origins, clipped = crop_windows(od, centres, half)
    nanwin = ~np.isfinite(windows)
    if nanwin.any():
        for k in np.flatnonzero(nanwin.any(axis=(1, 2))):
            w = windows[k]
            fin = np.isfinite(w)
            w[~fin] = np.median(w[fin]) if fin.any() else 0.0
    masks = np.asarray(segmenter(windows), dtype=np.float32)
    if masks.shape != windows.shape:
        raise ValueError(f"segmenter returned shape {masks.shape} for ROIs of shape {windows.shape}")
    # fines and touching neighbours never enter the particle's mask
    if separate:
        masks = isolate_particle(masks, radius=radius, centres=np.asarray(centres, float) - origins)
    return windows, origins, clipped, nanwin, masks


def _process_particle(pid, track, od, energies, common, segmenter, options, references):
    n = od.shape[0]
    track = track.sort_values("frame")
    predicted = track[["y", "x"]].to_numpy()
    detected = track["detected"].to_numpy()
    radius = float(np.nanmax(track["radius"])) if track["radius"].notna().any() else 10.0
    half = window_half(radius, options.margin)
    flags = np.zeros(n, np.uint8)
    examined = track["examined"].to_numpy() if "examined" in track else np.ones(n, bool)
    flags[~detected & examined] |= FRAME_FLAGS["undetected"]
    # follow the particle on its own: windows placed from its own positions and refined by
    # correlating its outline with a reference frame (the last frame it was detected in:
    # post-edge, highest contrast, in an energy scan)
    ref_frame = int(np.flatnonzero(detected)[-1]) if detected.any() else 0
    followed, _, measured = follow_particle(od, predicted, radius, ref_frame, options=options.follow)
    centres = np.where(measured[:, None], followed, predicted)
    windows, origins, clipped, nanwin, masks = _segment_windows(od, centres, half, segmenter, radius, options.separate_neighbours)
    com = centre_of_mass(masks) + origins
    # a window whose particle came out off-centre: segment again around what it found
    off = np.hypot(*(com - centres).T)
    redo = np.flatnonzero(np.isfinite(off) & (off > max(2.0, 0.15 * half)))
    if redo.size:
        w2, o2, c2, n2, m2 = _segment_windows(od[redo], com[redo], half, segmenter, radius, options.separate_neighbours)
        windows[redo], origins[redo], clipped[redo], nanwin[redo], masks[redo] = w2, o2, c2, n2, m2
        com[redo] = centre_of_mass(m2) + o2
    area = masks.sum(axis=(1, 2))
    flags[area <= 0] |= FRAME_FLAGS["no_mask"]
    # a particle whose mask reaches pixels outside the frame (or the window edge) is not whole
    edge_touch = (masks[:, 0, :].max(1) > 0.5) | (masks[:, -1, :].max(1) > 0.5) | (masks[:, :, 0].max(1) > 0.5) | (masks[:, :, -1].max(1) > 0.5)
    out_of_frame = np.array([(masks[k] > 0.5)[nanwin[k]].any() for k in range(n)])
    flags[out_of_frame | (edge_touch & clipped)] |= FRAME_FLAGS["out_of_view"]
    med_area = np.median(area[area > 0]) if (area > 0).any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        outlier = np.abs(np.log(area / med_area)) > options.area_tolerance if med_area > 0 else np.zeros(n, bool)
    flags[outlier & (area > 0)] |= FRAME_FLAGS["area_outlier"]
    flags[edge_touch & ~clipped] |= FRAME_FLAGS["area_outlier"]
    good = (flags & (FRAME_FLAGS["no_mask"] | FRAME_FLAGS["out_of_view"] | FRAME_FLAGS["area_outlier"])) == 0
    good &= np.all(np.isfinite(com), axis=1)
    # position outliers: residual from the common motion far beyond its spread
    if good.sum() >= 5:
        resid = com - common
        medr = np.median(resid[good], axis=0)
        smooth = ndimage.median_filter(np.where(good[:, None], resid, medr), size=(7, 1), mode="nearest")
        jump = np.hypot(*(resid - smooth).T)
        scale = 1.4826 * np.median(jump[good]) + 0.05
        bad = good & (jump > 8 * scale) & (jump > 1.0)
        flags[bad] |= FRAME_FLAGS["position_outlier"]
        good &= ~bad
    # the second, independent estimate vouches for each position: displacement by edge
    # correlation vs displacement of the centre of mass (both up to one constant offset:
    # the median over frames, or the reference frame's when there are few frames)
    agreement = np.full(n, np.nan)
    both = good & measured
    offset = np.full(2, np.nan)
    if both.sum() >= 5 or (both.any() and not both[ref_frame]):
        offset = np.nanmedian(com[both] - followed[both], axis=0)
    elif both.any():
        offset = com[ref_frame] - followed[ref_frame]
    agreement[both] = np.hypot(*(com[both] - followed[both] - offset).T)
    if both.sum() < 5 and both.any() and both[ref_frame]:
        # anchored on the reference frame, whose agreement is 0 by construction: it is only
        # as vouched for as the frames compared with it
        agreement[ref_frame] = np.nanmax(agreement[both]) if both.sum() > 1 else np.nan
    disagree = good & ~(agreement <= options.agreement_px)
    flags[disagree] |= FRAME_FLAGS["disagree"]
    edge_pos = np.where(measured[:, None], followed + offset, np.nan)
    whole = (flags & FRAME_FLAGS["out_of_view"]) == 0
    notes = []
    if options.position == "edges":
        # the edge correlation (contrast-invariant, blind to smooth backgrounds, no
        # segmentation) is the position where it measured; the centre of mass elsewhere
        use_edge = measured & whole & np.isfinite(offset).all()
        have = use_edge | good
        positions = np.where(use_edge[:, None], edge_pos, np.where(good[:, None], com, np.nan))
    elif options.position == "com":
        # the paper's centre of mass; the edge correlation where no usable mask
        fill = ~good & measured & whole & np.isfinite(offset).all()
        have = good | fill
        positions = np.where(good[:, None], com, np.where(fill[:, None], edge_pos, np.nan))
    else:
        raise ValueError(f"options.position must be 'edges' or 'com', got {options.position!r}")
    # neither estimate measured the particle here, or only one (no second estimate)
    flags[~both & have] |= FRAME_FLAGS["disagree"]
    if not have.any():
        notes.append("the particle was measured in no frame: not aligned")
        positions = np.full((n, 2), np.nan)
    else:
        positions = _fill_positions(positions, have, common)
        flags[~have] |= FRAME_FLAGS["interpolated"] | FRAME_FLAGS["disagree"]
    disagree = (flags & FRAME_FLAGS["disagree"]) > 0
    if disagree.any():
        notes.append(f"{int(disagree.sum())} frames not vouched for: the edge correlation and the centre of mass disagree, or only one measured")
    ref = int(np.flatnonzero(have)[0]) if have.any() else 0
    size = 2 * half + 1
    origin = np.round(positions[ref]).astype(int) - half if have.any() else origins[0]
    # the aligned grid is frame-0's (positions are filled for every frame, or all NaN)
    shifts = positions - positions[0]
    aligned = resample_windows(od, shifts, origin, (size, size), order=options.interpolation_order)
    # mark frames whose position is not measured: keep them (interpolated) but flagged
    amasks = _resample_masks(masks, origins, shifts, origin, (size, size))
    use = good & ~disagree & np.all(np.isfinite(aligned), axis=(1, 2))
    mask = (amasks[use].mean(axis=0) >= 0.5) if use.any() else np.zeros((size, size), bool)
    mask = ndimage.binary_fill_holes(mask)
    mean_spec = np.array([np.nanmean(a[mask]) if mask.any() else np.nan for a in aligned])

    xr = analyse_xanes(aligned, mask, energies, usable=use & np.isfinite(mean_spec), options=options, references=references)
    notes += xr.pop("notes")
    return ParticleResult(
        particle=int(pid),
        positions=positions,
        shifts=shifts,
        origin=np.asarray(origin, int),
        aligned=aligned,
        masks=amasks,
        mask=mask,
        frame_flags=flags,
        mean_spectrum=mean_spec,
        radius=radius,
        **xr,
        unaligned_ends=resample_windows(od, np.zeros((n, 2)), origin, (size, size), order=0, frames=[0, n - 1]),
        notes=tuple(notes),
        agreement=agreement,
        reference_frame=ref_frame,
        edge_positions=edge_pos,
    ), com


def fuse_particles(od, particles, common_shift, *, frames=None):
    """One frame-0-grid stack: rigidly aligned frames, each particle pasted aligned.

    The background of frame ``k`` is shifted back by the common (rigid) shift; inside
    each particle's (dilated) consensus mask, the particle's own aligned sub-stack
    replaces it. ``frames`` selects frames (default all).
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


def run_pipeline(
    stack: Stack,
    *,
    options: PipelineOptions = PipelineOptions(),
    detector=None,
    segmenter=None,
    references=None,
    progress=None,
) -> PipelineResult:
    """Find, track, align and analyse every isolated particle of an energy scan.

    Parameters
    ----------
    stack : Stack
    options : PipelineOptions
    detector : callable(od[, frames=...]) -> DataFrame, optional
        Default: the classical detector with ``options.detect``. With
        ``options.detect_every > 1`` it is called with ``frames=`` the key frames.
    segmenter : callable(rois) -> masks, optional
        Default: the classical segmenter with ``options.segment``.
    references : dict of name -> ReferenceSpectrum, optional
        For the linear combination fit; default the shipped Ni references when the
        scan covers the Ni K-edge, else none.
    progress : callable(stage: str, done: int, total: int), optional

    Returns
    -------
    PipelineResult
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a xanestrack Stack, got {type(stack).__name__}")
    timings = {}
    notes = []
    od, n_fixed = sanitize_stack(stack.od, source=stack.metadata.get("source", "stack"))
    if n_fixed:
        notes.append(f"{n_fixed} NaN/inf pixels replaced by their local median")
    energies = np.asarray(stack.energies_ev, float)
    if references is None:
        from .spectra import ni_references

        references = ni_references() if (energies[0] < 8340 < energies[-1]) else {}

    def prog(stage):
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)

    t = time.perf_counter()
    n_frames = od.shape[0]
    if int(options.detect_every) < 1:
        raise ValueError(f"options.detect_every must be >= 1, got {options.detect_every}")
    key = None
    if options.detect_every > 1:
        key = sorted(set(range(0, n_frames, int(options.detect_every))) | {n_frames - 1})
    if detector is None:
        detections = detect_stack(od, options=options.detect, frames=key, progress=prog("detect"))
    else:
        detections = detector(od) if key is None else detector(od, frames=key)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    tracks, rejected_tracks, common = link_detections(detections, od, options=options.match, frames=key)
    timings["match"] = time.perf_counter() - t

    t = time.perf_counter()
    seg = segmenter if segmenter is not None else _default_segmenter(options.segment)
    particles = []
    com_rows = []
    pids = sorted(tracks["particle"].unique()) if len(tracks) else []
    for j, pid in enumerate(pids):
        tr = tracks[tracks["particle"] == pid]
        pr, com_raw = _process_particle(pid, tr, od, energies, common, seg, options, references)
        particles.append(pr)
        tr = tr.sort_values("frame")
        com_rows.append(
            pd.DataFrame(
                {
                    "particle": pid,
                    "frame": tr["frame"].to_numpy(),
                    "energy_ev": energies[tr["frame"].to_numpy()],
                    "y": pr.positions[:, 0],
                    "x": pr.positions[:, 1],
                    "measured_y": com_raw[:, 0],
                    "measured_x": com_raw[:, 1],
                    "detected": tr["detected"].to_numpy(),
                    "area": tr["area"].to_numpy(),
                    "ssim": tr["ssim"].to_numpy(),
                    "edge_y": pr.edge_positions[:, 0],
                    "edge_x": pr.edge_positions[:, 1],
                    "agreement_px": pr.agreement,
                    "flags": [flag_names(f) for f in pr.frame_flags],
                }
            )
        )
        if progress is not None:
            progress("particles", j + 1, len(pids))
    timings["segment_register_xanes"] = time.perf_counter() - t

    t = time.perf_counter()
    table = pd.concat(com_rows, ignore_index=True) if com_rows else pd.DataFrame(
        columns=["particle", "frame", "energy_ev", "y", "x", "measured_y", "measured_x", "detected", "area", "ssim", "edge_y", "edge_x", "agreement_px", "flags"]
    )
    ny, nx = od.shape[1:]
    fit = table[["particle", "frame", "y", "x"]].copy()
    # the common motion is fitted on vouched positions; where fewer than three particles
    # are vouched for in most frames (e.g. real frames whose masks do not confirm the
    # edge estimate), on every measured position instead (recorded in the similarity)
    unmeasured = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    vouched = [(p.frame_flags & (unmeasured | FRAME_FLAGS["disagree"])) == 0 for p in particles]
    fitted_on = "vouched positions"
    if sum(v.mean() >= 0.5 for v in vouched) < 3:
        vouched = [(p.frame_flags & unmeasured) == 0 for p in particles]
        fitted_on = "measured positions (too few particles vouched for)"
    fit["reliable"] = np.concatenate(vouched) if particles else np.zeros(0, bool)
    motion = compute_motion(
        fit,
        reference_particle=options.reference_particle,
        centre=((ny - 1) / 2, (nx - 1) / 2),
        scale_axis=energies if options.scale_model == "energy" else None,
    )
    similarity = motion.attrs.get("similarity")
    if similarity is not None:
        similarity.attrs["fitted_on"] = fitted_on
    if len(table):
        table = table.merge(motion.drop(columns=["y", "x"]), on=["particle", "frame"], how="left")
        sim = similarity[["frame", "common_dy", "common_dx", "scale"]].rename(columns={"scale": "common_scale"})
        table = table.merge(sim, on="frame", how="left")
    ratios = peak_ratios(motion) if len(motion) else pd.DataFrame()
    timings["motion"] = time.perf_counter() - t

    fused = None
    if options.fuse not in ("ends", "all", "none"):
        raise ValueError(f"options.fuse must be 'ends', 'all' or 'none', got {options.fuse!r}")
    if options.fuse != "none" and particles:
        t = time.perf_counter()
        fused = fuse_particles(od, particles, common, frames=None if options.fuse == "all" else [0, od.shape[0] - 1])
        timings["fuse"] = time.perf_counter() - t
    if not particles:
        notes.append("no isolated particle was tracked through enough frames")
    rej = detections[~detections["isolated"]] if len(detections) else detections
    return PipelineResult(
        energies_ev=energies,
        frame_shape=tuple(od.shape[1:]),
        detections=detections,
        tracks=table,
        rejected=_summarise_rejected(rej, rejected_tracks),
        particles=particles,
        motion=motion,
        peak_ratios=ratios,
        common_shift=common,
        fused=fused,
        timings=timings,
        options=options,
        notes=tuple(notes),
        similarity=similarity,
    )


def _summarise_rejected(rejected_dets, rejected_tracks):
    """One row per rejected object (grouped by position): ``y, x, reason, n_frames``."""
    rows = []
    if len(rejected_dets):
        r = rejected_dets.copy()
        r["key"] = list(zip((r["y"] // 25).astype(int), (r["x"] // 25).astype(int), r["reason"]))
        for (_, _, reason), g in r.groupby("key"):
            rows.append((g["y"].mean(), g["x"].mean(), reason, len(g), g["radius"].mean()))
    for _, t in rejected_tracks.iterrows():
        rows.append((t["y"], t["x"], "short_track", int(t["n_frames"]), np.nan))
    return pd.DataFrame(rows, columns=["y", "x", "reason", "n_frames", "radius"])
