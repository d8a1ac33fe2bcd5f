"""Stress-family synthetic TXM-XANES scans: a second, independent scene model.

The default scene model (:mod:`xanestrack.synth`) draws round particles from a few
outline harmonics, with Gaussian grain dimples, chemistry from the pyxas NiO/LiNiO2
references, a rigid frame jitter and a small smooth drift. A tool tuned on it can learn
those assumptions. This module draws scans from different ones, and makes each of the
hard things of real frames (``DESIGN.md``, "What real frames do that easy synthetic
ones do not") as hard as asked, one at a time or all together (:data:`STRESS_CASES`).

Forward model, per frame ``k`` (energy ``E_k``) and frame pixel ``p``::

    u        = (p - g_k - C) / s_k + C - d_i(k)          (model coordinates of object i)
    OD_k(p)  = sum_i A_i(u) (pre(E_k) + N(E_k)) + B_i(u) (N(E_k - dE) - N(E_k))
               + background(u_bg) + ghosts(u_bg) (pre(E_k) + N_bg(E_k))
    I_k(p)   = G_psf * exp(-(OD_k + halo (OD_k - G_halo * OD_k)))
    counts_k = Poisson(n0 b_k V_k(p) I_k(p)) + dark + read noise
    flat_k   = Poisson(n_ref n0 b'_k V'_k(p)) / n_ref + dark + read noise / sqrt(n_ref)

- Common motion: a similarity about the frame centre ``C``: translation ``g_k`` (random
  walk + independent jitter + persistent jumps) and isotropic magnification ``s_k``,
  linear in energy (a zone plate's focal length grows with the photon energy).
- Non-rigid motion ``d_i(k)``: a smoothed random walk per particle (or per touching
  group, which moves as one); fines and some particles are fixed to the matrix
  (``d = 0``: they move only with the common motion).
- Particles: unions of 3D ellipsoids (a body, lobes, and primary grains around the
  silhouette), projected along the beam: the outline is the union of the projected
  ellipses, the thickness a soft union (power mean) of the ellipsoids' chords. Texture:
  primary grains (Voronoi cells of their own density, darker grain boundaries), a few
  intergranular cracks and spherical pores. Each particle is built once on a
  0.25-px lattice in its own coordinates: a signed-distance field ``phi`` (its outline:
  the zero level of the bilinear interpolant of ``phi``), ``A`` = thickness x edge jump
  and ``B`` = ``A`` x charged fraction, both averaged over a pixel footprint. A frame is
  a separable bilinear resampling of those fields (translation and scale only), so the
  truth is exact: the binary mask of a frame is ``phi >= 0`` at its pixel centres, and
  the centre of mass of the continuous outline, computed once on a 1/16-px grid, moves
  exactly with the similarity and the particle's drift.
- Chemistry: real spectra, not the default model's: the measured Ni(OH)2 (Ni2+) K-edge
  of the XAS Data Library (CC0), shipped normalised in ``data/ni_stress_references.csv``,
  and the same spectrum shifted by ``charged_shift_ev`` as the charged phase ``N(E - dE)``
  (no measured Ni3+ standard of a usable licence is at hand: "Ni2O3" has the Ni2+ edge).
  The charged fraction ``f`` per pixel follows one of :data:`STRESS_PATTERNS`.
- Background: a binder/carbon matrix (a thresholded band-pass "sponge", carbon-black
  dots, binder strands, thickness variation and a uniform absorber for window and
  electrolyte, no Ni edge) and out-of-focus Ni-bearing "ghost" particles (large blurred
  discs with a weak edge), all fixed to the matrix.
- Illumination: per frame a beam intensity (ring decay, rare dips during the sample
  exposure, a sample/reference intensity ratio jitter) and a flat-field shape
  (vignetting centre drifting with energy, monochromator stripes) that changes between
  the sample and the reference exposure; Poisson noise, a dark frame with a fixed
  pattern, read noise; detector blur and a phase-contrast halo at edges.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from importlib import resources

import numpy as np
import pandas as pd
from scipy import ndimage

from .synth import PRESETS, SynthStack, SynthTruth, make_synthetic_stack, mark_contacts, ni_energy_grid

__all__ = [
    "StressParams",
    "STRESS_CASES",
    "STRESS_PATTERNS",
    "make_stress_stack",
    "randomised_stress_stack",
    "make_scene",
    "reduced_params",
    "stress_reference",
    "stress_edge_energy",
]

#: chemistry patterns of the stress model (charged fraction per pixel)
STRESS_PATTERNS = ("grains", "shell", "front", "hotspots", "uniform")

_H = 0.25  # lattice step of a particle's fields (px)
_PHI_CLIP = 4.0  # |phi| is clipped here (px); only the zero level matters
_POWER = 4.0  # power of the soft union of chords


@dataclass(frozen=True)
class StressParams:
    """Knobs of a stress-family scan. Lengths in pixels, counts per pixel per exposure.

    Attributes
    ----------
    n_energies : int
        Number of energies (frames), on :func:`xanestrack.synth.ni_energy_grid`.
    shape : (int, int)
        Frame size (rows, cols).
    n_particles : int
        Secondary particles in all, those of touching groups included.
    radius_range : (float, float)
        Equivalent radius ``sqrt(area / pi)`` of the particles, drawn log-uniform and
        stratified so that both ends of the range are used.
    cluster_sizes : tuple of int
        Touching groups: one entry per group, its number of particles (2 = a touching
        pair, 3-4 = a small agglomerate). A group moves as one; its members are not
        isolated. The sum must not exceed ``n_particles``.
    contact_overlap : float
        How far touching objects interpenetrate (px): their masks merge.
    n_lobes : (int, int)
        Range of the number of lobes (ellipsoids beside the body) of a particle.
    irregularity : float
        0-1: the share of lumpy, agglomerate-like particles (``irregularity / 2``; the
        rest are round-ish) and how far their lobes stand out of the body.
    grain_radius_range : (float, float)
        Radius of the primary grains (px): the bumps of the outline, the Voronoi cells
        of the texture.
    grain_contrast : float
        Relative thickness spread between primary grains (sd).
    boundary_depth : float
        Relative thickness loss on a grain boundary.
    n_cracks : (int, int)
        Range of the number of intergranular cracks per particle.
    pore_fraction : float
        Pores per particle, as the fraction of its area covered by pore discs.
    edge_jump_per_px : float
        Ni K-edge jump (OD) per pixel of chord through a particle.
    pre_edge_ratio : float
        Below-edge OD of a particle relative to its edge jump, at 8333 eV (falls as E^-3).
    charged_shift_ev : float
        Energy shift (eV) of the charged phase's spectrum relative to the Ni2+ one.
    n_fines : int
        Fines (small fragments, all fixed to the matrix).
    fine_radius_range : (float, float)
        Equivalent radius of the fines.
    fine_jump_range : (float, float)
        Peak edge jump (OD) of a fine (denser than the porous secondary particles).
    n_touching_fines : int
        Of ``n_fines``, how many are placed in contact with a particle fixed to the
        matrix (that particle is then not isolated).
    min_gap : float
        Smallest clearance (px) between particles meant not to touch, over the whole scan.
    fine_gap : float
        Smallest clearance (px) between a fine and anything it is not meant to touch.
    background_od : float
        Uniform absorber (window, electrolyte, other layers), OD at 8333 eV.
    matrix_od : float
        Peak OD of the binder/carbon texture at 8333 eV.
    n_strands : int
        Binder strands in the matrix.
    n_ghosts : int
        Out-of-focus Ni-bearing particles of the background (blurred discs).
    ghost_jump : float
        Largest edge jump (OD) of a ghost.
    jitter_sd : float
        Independent frame-to-frame jitter of the common translation (sd, px).
    jitter_walk_sd : float
        Step sd (px) of the random-walk part of the common translation.
    n_jumps : int
        Persistent jumps of the common translation (stage re-seating).
    jump_range : (float, float)
        Size of a jump (px).
    magnification : float
        Relative change of the image scale across the scan (0.01 = 1 %), linear in
        energy, about the frame centre. Negative shrinks.
    drift_step_sd : float
        Largest step sd (px per frame) of a particle's own random walk (its non-rigid
        drift); each drifting group draws its own in [0.6, 1] x this. Over ``n``
        frames a walk strays about ``step sd x sqrt(n)`` px per axis.
    drift_smooth : float
        Gaussian smoothing of the walk (frames): removes frame-to-frame roughness,
        keeps the excursion.
    fixed_fraction : float
        Fraction of particle groups fixed to the matrix (no own motion); at least one
        when there is any drift.
    counts : float
        Mean flat-field counts per pixel per exposure at full beam.
    n_ref : int
        Reference exposures averaged into each flat.
    beam_jitter : float
        Sd of the log ratio of the beam intensity between the sample and the reference
        exposure of a frame.
    beam_dip_probability : float
        Probability that the sample exposure of a frame sees a beam dip of 5-25 %.
    flat_shift_px : float
        Sd (px) of the shift of the illumination pattern between the sample and the
        reference exposure.
    flat_phase_sd : float
        Sd (rad) of the phase change of the monochromator stripes between them.
    flat_ripple : float
        Relative amplitude of the monochromator stripes.
    vignetting : float
        Relative intensity loss at the middle of the frame edges.
    dark_level : float
        Mean dark counts.
    read_noise : float
        Read noise (counts, sd) of one exposure.
    psf_sigma : float
        Detector/optics blur (px, Gaussian sd).
    halo : float
        Strength of the phase-contrast halo (an unsharp mask on the OD).
    halo_sigma : float
        Width (px) of the halo.
    """

    n_energies: int = 143
    shape: tuple[int, int] = (460, 460)
    n_particles: int = 12
    radius_range: tuple[float, float] = (10.0, 45.0)
    cluster_sizes: tuple[int, ...] = ()
    contact_overlap: float = 1.0
    n_lobes: tuple[int, int] = (2, 5)
    irregularity: float = 0.6
    grain_radius_range: tuple[float, float] = (2.0, 3.5)
    grain_contrast: float = 0.06
    boundary_depth: float = 0.18
    n_cracks: tuple[int, int] = (0, 2)
    pore_fraction: float = 0.02
    edge_jump_per_px: float = 0.011
    pre_edge_ratio: float = 0.3
    charged_shift_ev: float = 2.5
    n_fines: int = 8
    fine_radius_range: tuple[float, float] = (2.0, 5.0)
    fine_jump_range: tuple[float, float] = (0.12, 0.35)
    n_touching_fines: int = 0
    min_gap: float = 8.0
    fine_gap: float = 4.0
    background_od: float = 0.8
    matrix_od: float = 0.06
    n_strands: int = 6
    n_ghosts: int = 3
    ghost_jump: float = 0.08
    jitter_sd: float = 0.3
    jitter_walk_sd: float = 0.15
    n_jumps: int = 0
    jump_range: tuple[float, float] = (5.0, 10.0)
    magnification: float = 0.002
    drift_step_sd: float = 0.1
    drift_smooth: float = 3.0
    fixed_fraction: float = 0.25
    counts: float = 5000.0
    n_ref: int = 10
    beam_jitter: float = 0.005
    beam_dip_probability: float = 0.0
    flat_shift_px: float = 0.5
    flat_phase_sd: float = 0.05
    flat_ripple: float = 0.02
    vignetting: float = 0.3
    dark_level: float = 100.0
    read_noise: float = 3.0
    psf_sigma: float = 0.7
    halo: float = 0.3
    halo_sigma: float = 2.0

    def __post_init__(self):
        if self.n_energies < 2 or self.n_particles < 0:
            raise ValueError(f"n_energies must be >= 2 and n_particles >= 0, got {self.n_energies}, {self.n_particles}")
        if len(self.shape) != 2 or min(self.shape) < 32:
            raise ValueError(f"shape must be (rows, cols) of at least 32 px, got {self.shape}")
        lo, hi = self.radius_range
        if not 3.0 <= lo <= hi:
            raise ValueError(f"radius_range must be (min >= 3, max >= min), got {self.radius_range}")
        if any(c < 2 for c in self.cluster_sizes) or sum(self.cluster_sizes) > self.n_particles:
            raise ValueError(
                f"cluster_sizes {self.cluster_sizes}: each group needs >= 2 particles and together at most "
                f"n_particles={self.n_particles}"
            )
        if not 1.0 <= self.fine_radius_range[0] <= self.fine_radius_range[1]:
            raise ValueError(f"fine_radius_range must be (min >= 1, max >= min), got {self.fine_radius_range}")
        if not 0 <= self.n_touching_fines <= self.n_fines or (self.n_touching_fines and not self.n_particles):
            raise ValueError(
                f"n_touching_fines must be in 0..n_fines={self.n_fines} and needs particles to touch "
                f"(n_particles={self.n_particles}), got {self.n_touching_fines}"
            )
        if not (np.isfinite(self.counts) and self.counts > 0) or self.n_ref < 1:
            raise ValueError(f"counts must be positive and finite and n_ref >= 1, got {self.counts}, {self.n_ref}")
        if not 0.0 <= self.fixed_fraction <= 1.0:
            raise ValueError(f"fixed_fraction must be in [0, 1], got {self.fixed_fraction}")
        if self.drift_step_sd < 0 or self.jitter_sd < 0 or self.jitter_walk_sd < 0:
            raise ValueError("drift_step_sd, jitter_sd and jitter_walk_sd must be >= 0")


_MILD = StressParams()

#: the named stress cases: one thing hard at a time, then all together; the rest mild
STRESS_CASES: dict[str, StressParams] = {
    "stress-drift": replace(_MILD, drift_step_sd=0.6),
    "stress-counts": replace(
        _MILD,
        counts=600.0,
        n_ref=5,
        beam_jitter=0.03,
        beam_dip_probability=0.05,
        flat_shift_px=2.0,
        flat_phase_sd=0.3,
        flat_ripple=0.05,
    ),
    "stress-fines": replace(_MILD, n_fines=30, n_touching_fines=5),
    "stress-jitter": replace(_MILD, jitter_sd=3.0, jitter_walk_sd=0.3, n_jumps=4),
    "stress-magnification": replace(_MILD, magnification=0.01, drift_step_sd=0.0),
    "stress-crowd": replace(_MILD, n_particles=16, cluster_sizes=(2, 2, 3, 4)),
    "stress-all": replace(
        _MILD,
        n_particles=16,
        cluster_sizes=(2, 2, 3, 4),
        drift_step_sd=0.6,
        counts=600.0,
        n_ref=5,
        beam_jitter=0.03,
        beam_dip_probability=0.05,
        flat_shift_px=2.0,
        flat_phase_sd=0.3,
        flat_ripple=0.05,
        n_fines=30,
        n_touching_fines=5,
        jitter_sd=3.0,
        jitter_walk_sd=0.3,
        n_jumps=4,
        magnification=0.01,
    ),
}


def reduced_params(params: StressParams) -> StressParams:
    """A small version of a case for tests: 48 energies, 256 x 256, fewer particles.

    Every stressor of ``params`` stays (drift per frame, jitter and jumps, counts, beam
    and flat changes, magnification across the scan, touching groups, touching fines);
    only the numbers that fill the frame shrink.
    """
    clusters = tuple(sorted(params.cluster_sizes)[:2])
    n_fines = int(round(params.n_fines * 0.35))
    return replace(
        params,
        n_energies=min(params.n_energies, 48),
        shape=(256, 256),
        radius_range=(params.radius_range[0], min(params.radius_range[1], 24.0)),
        n_particles=max(4, sum(clusters) + 3),
        cluster_sizes=clusters,
        n_fines=n_fines,
        n_touching_fines=min(params.n_touching_fines, 2, n_fines),
        n_jumps=max(1, params.n_jumps // 2) if params.n_jumps else 0,
    )


# --------------------------------------------------------------------------- spectra

_SPECTRA_CACHE: dict = {}


def stress_reference():
    """The shipped normalised Ni(OH)2 spectrum (XAS Data Library, CC0).

    Returns
    -------
    xanestrack.spectra.ReferenceSpectrum
        Energies 8110-9000 eV, normalised once by ``tools/build_stress_spectra.py``.
    """
    if "NiOH2" not in _SPECTRA_CACHE:
        from .spectra import ReferenceSpectrum

        text = resources.files("xanestrack.data").joinpath("ni_stress_references.csv").read_text()
        rows = [ln for ln in text.splitlines() if ln and not ln.startswith("#")][1:]
        table = np.array([[float(v) for v in ln.split(",")] for ln in rows])
        _SPECTRA_CACHE["NiOH2"] = ReferenceSpectrum("NiOH2", table[:, 0], table[:, 1])
    return _SPECTRA_CACHE["NiOH2"]


def _phases(energies_ev, charged_shift_ev):
    ref = stress_reference()
    e = np.asarray(energies_ev, float)
    return ref(e), ref(e - charged_shift_ev)


def stress_edge_energy(fraction, *, charged_shift_ev: float = 2.5) -> np.ndarray:
    """E(mu_norm = 0.5) in eV of the mix ``(1 - f) N(E) + f N(E - charged_shift_ev)``.

    ``N`` is the shipped Ni(OH)2 spectrum (:func:`stress_reference`): the truth of the
    stress model's edge-energy maps.
    """
    key = ("e50", float(charged_shift_ev))
    if key not in _SPECTRA_CACHE:
        e = np.arange(8320.0, 8370.0, 0.005)
        a, b = _phases(e, charged_shift_ev)
        fs = np.linspace(0.0, 1.0, 401)
        m = (1 - fs[:, None]) * a[None] + fs[:, None] * b[None]
        i = np.argmax(m >= 0.5, axis=1)
        r = np.arange(fs.size)
        m0, m1 = m[r, i - 1], m[r, i]
        e50 = e[i - 1] + (0.5 - m0) * (e[i] - e[i - 1]) / (m1 - m0)
        _SPECTRA_CACHE[key] = (fs, e50)
    fs, e50 = _SPECTRA_CACHE[key]
    return np.interp(fraction, fs, e50)


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Object:
    """A particle or fine in its own coordinates (relative to its anchor)."""

    fields: np.ndarray  # (3, H, W) float32 on the lattice: phi (px), A, B (OD)
    origin: np.ndarray  # (2,) position of lattice sample [0, 0] relative to the anchor (px)
    com: np.ndarray  # (2,) centre of mass of the outline relative to the anchor
    radius: float  # equivalent radius sqrt(area / pi)
    extent: float  # largest distance of the outline from the anchor
    pattern: str
    boundary: np.ndarray  # (n, 2) points just inside the outline, relative to the anchor


def _rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _projected(rng, semi_axes) -> tuple[np.ndarray, float]:
    """Projection along z of a randomly oriented ellipsoid: 2D shape matrix S, max chord.

    The ellipsoid ``x^T M x <= 1`` has, at (y, x), the chord ``m sqrt(1 - v^T S v)``
    along z with ``S`` the Schur complement of ``M_zz`` and ``m = 2 / sqrt(M_zz)``.
    """
    R = _rotation(rng)
    M = R @ np.diag(1.0 / np.asarray(semi_axes, float) ** 2) @ R.T
    a = M[:2, 2]
    S = M[:2, :2] - np.outer(a, a) / M[2, 2]
    return S, 2.0 / np.sqrt(M[2, 2])


def _prim_bounds(S) -> np.ndarray:
    """Half-widths (y, x) of the bounding box of the ellipse v^T S v <= 1."""
    return np.sqrt(np.diag(np.linalg.inv(S)))


def _inside_any(prims, pts) -> np.ndarray:
    """Whether points (n, 2) lie inside any projected ellipse."""
    inside = np.zeros(len(pts), bool)
    for c, S, _m in prims:
        v = pts - c
        inside |= np.einsum("ni,ij,nj->n", v, S, v) <= 1.0
    return inside


def _union_fields(prims, origin, shape):
    """phi (signed distance to the union's outline, px) and soft-union chord (px)."""
    phi = np.full(shape, -_PHI_CLIP, np.float32)
    acc = np.zeros(shape, np.float64)
    ys = origin[0] + _H * np.arange(shape[0])
    xs = origin[1] + _H * np.arange(shape[1])
    for c, S, m in prims:
        hw = _prim_bounds(S) + _PHI_CLIP / 2
        i0, i1 = np.searchsorted(ys, [c[0] - hw[0], c[0] + hw[0]])
        j0, j1 = np.searchsorted(xs, [c[1] - hw[1], c[1] + hw[1]])
        if i1 <= i0 or j1 <= j0:
            continue
        Y = (ys[i0:i1] - c[0])[:, None]
        X = (xs[j0:j1] - c[1])[None, :]
        g0 = S[0, 0] * Y + S[0, 1] * X
        g1 = S[0, 1] * Y + S[1, 1] * X
        q = Y * g0 + X * g1
        rq = np.sqrt(q)
        grad = np.hypot(g0, g1)
        # first-order distance to the ellipse (1 - sqrt q) / |grad sqrt q|, exact sign
        d = np.where(grad > 1e-12, (1.0 - rq) * rq / np.maximum(grad, 1e-12), _PHI_CLIP)
        np.maximum(phi[i0:i1, j0:j1], np.clip(d, -_PHI_CLIP, _PHI_CLIP), out=phi[i0:i1, j0:j1])
        acc[i0:i1, j0:j1] += (m * np.sqrt(np.clip(1.0 - q, 0.0, None))) ** _POWER
    return phi, acc ** (1.0 / _POWER)


def _bilinear_at(field, origin, pts, cval):
    """Bilinear value of a lattice field at points (n, 2) given relative to the anchor."""
    c = (np.asarray(pts, float) - origin) / _H
    return ndimage.map_coordinates(field, [c[:, 0], c[:, 1]], order=1, mode="constant", cval=cval)


def _outline_moments(phi, origin, sub: int = 4):
    """Area, centre of mass and extent of {bilinear phi >= 0} from a sub x sub supersampling."""
    f00, f01, f10, f11 = phi[:-1, :-1], phi[:-1, 1:], phi[1:, :-1], phi[1:, 1:]
    iy, ix = np.mgrid[0 : phi.shape[0] - 1, 0 : phi.shape[1] - 1]
    n = 0
    sy = sx = 0.0
    ext2 = 0.0
    for a in (np.arange(sub) + 0.5) / sub:
        for b in (np.arange(sub) + 0.5) / sub:
            v = (1 - a) * (1 - b) * f00 + (1 - a) * b * f01 + a * (1 - b) * f10 + a * b * f11
            inside = v >= 0
            cnt = int(inside.sum())
            if cnt == 0:
                continue
            yy = origin[0] + _H * (iy[inside] + a)
            xx = origin[1] + _H * (ix[inside] + b)
            n += cnt
            sy += yy.sum()
            sx += xx.sum()
            ext2 = max(ext2, float((yy**2 + xx**2).max()))
    if n == 0:
        raise ValueError("an object of the stress model has an empty outline")
    area = n * (_H / sub) ** 2
    return area, np.array([sy / n, sx / n]), np.sqrt(ext2)


def _pixel_box(a):
    """Average over a 1-px footprint on the 0.25-px lattice (trapezoid of width 1 px)."""
    w = np.array([0.5, 1.0, 1.0, 1.0, 0.5]) / 4.0
    return ndimage.convolve1d(ndimage.convolve1d(a, w, axis=0, mode="constant"), w, axis=1, mode="constant")


def _lattice(prims, pad=_PHI_CLIP / 2 + 3.0):
    lo = np.min([c - _prim_bounds(S) for c, S, _ in prims], axis=0) - pad
    hi = np.max([c + _prim_bounds(S) for c, S, _ in prims], axis=0) + pad
    origin = np.floor(lo / _H) * _H
    shape = tuple(int(v) for v in np.ceil((hi - origin) / _H) + 1)
    return origin, shape


def _scale_prims(prims, k):
    return [(c * k, S / k**2, m * k) for c, S, m in prims]


def _area_coarse(prims):
    lo = np.min([c - _prim_bounds(S) for c, S, _ in prims], axis=0) - 1
    hi = np.max([c + _prim_bounds(S) for c, S, _ in prims], axis=0) + 1
    yy, xx = np.mgrid[lo[0] : hi[0] : 0.5, lo[1] : hi[1] : 0.5]
    return _inside_any(prims, np.c_[yy.ravel(), xx.ravel()]).sum() * 0.25


def _silhouette_points(rng, prims, n, r_max):
    """n points on the outline of a union of ellipses, along random rays from the anchor."""
    theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    r = np.arange(0.0, r_max, 0.25)
    pts = np.stack(np.broadcast_arrays(r[None, :] * np.sin(theta)[:, None], r[None, :] * np.cos(theta)[:, None]), -1)
    inside = _inside_any(prims, pts.reshape(-1, 2)).reshape(n, r.size)
    last = r.size - 1 - np.argmax(inside[:, ::-1], axis=1)
    rb = r[last]
    return np.c_[rb * np.sin(theta), rb * np.cos(theta)], rb


def _crack_map(rng, shape, origin, radius, n_cracks):
    """Thin, dark, wandering lines from inside the particle outwards (1 = no crack)."""
    out = np.ones(shape, np.float32)
    if n_cracks == 0:
        return out
    ys = origin[0] + _H * np.arange(shape[0])
    xs = origin[1] + _H * np.arange(shape[1])
    Y, X = ys[:, None], xs[None, :]
    for _ in range(n_cracks):
        start = rng.normal(0, 0.25 * radius, 2)
        ang = rng.uniform(0, 2 * np.pi)
        n_seg = int(rng.integers(3, 7))
        seg_len = rng.uniform(0.5, 1.1) * radius / n_seg
        width = rng.uniform(0.3, 0.7)
        depth = rng.uniform(0.25, 0.55)
        p = start
        dist = np.full(shape, np.inf)
        for _s in range(n_seg):
            ang += rng.normal(0, 0.3)
            q = p + seg_len * np.array([np.sin(ang), np.cos(ang)])
            v = q - p
            t = np.clip(((Y - p[0]) * v[0] + (X - p[1]) * v[1]) / (v @ v), 0, 1)
            dist = np.minimum(dist, np.hypot(Y - p[0] - t * v[0], X - p[1] - t * v[1]))
            p = q
        out *= (1.0 - depth * np.exp(-0.5 * (dist / width) ** 2)).astype(np.float32)
    return out


def _chemistry(rng, pattern, labels, inside_depth, shape, origin, radius):
    """Charged fraction f in [0, 1] on the lattice."""
    lo, hi = rng.uniform(0.0, 0.25), rng.uniform(0.6, 1.0)
    ys = origin[0] + _H * np.arange(shape[0])
    xs = origin[1] + _H * np.arange(shape[1])
    Y, X = ys[:, None] / radius, xs[None, :] / radius
    if pattern == "grains":
        per_grain = np.clip(rng.normal(0.5 * (lo + hi), 0.25, labels.max() + 1), 0, 1)
        f = per_grain[labels] + 0.2 * (np.hypot(Y, X) - 0.5)
    elif pattern == "shell":
        lam = rng.uniform(0.12, 0.35) * radius
        f = lo + (hi - lo) * np.exp(-inside_depth / lam)
    elif pattern == "front":
        a = rng.uniform(0, 2 * np.pi)
        pos, w = rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.18)
        f = lo + (hi - lo) / (1 + np.exp(-((Y * np.sin(a) + X * np.cos(a)) - pos) / w))
    elif pattern == "hotspots":
        f = np.zeros((shape[0], shape[1]))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(-0.6, 0.6, 2)
            s = rng.uniform(0.15, 0.35)
            f = np.maximum(f, np.exp(-((Y - cy) ** 2 + (X - cx) ** 2) / (2 * s * s)))
        f = lo + (hi - lo) * f
    else:  # uniform
        f = np.full(shape, rng.uniform(0.2, 0.8))
    f = ndimage.gaussian_filter(np.clip(f, 0, 1), 0.5 / _H)
    return np.clip(f, 0.0, 1.0)


def _finish(rng, prims, p: StressParams, *, radius, jump_per_px, pattern, textured):
    """Lattice fields, outline moments and texture of an object built from its ellipsoids.

    The ellipsoids are scaled so that the outline's equivalent radius is ``radius``.
    """
    prims = _scale_prims(prims, radius / np.sqrt(_area_coarse(prims) / np.pi))
    origin, shape = _lattice(prims)
    phi, chord = _union_fields(prims, origin, shape)
    area, com, extent = _outline_moments(phi, origin)
    r_eq = float(np.sqrt(area / np.pi))
    if abs(r_eq / radius - 1) > 1e-3:
        # second pass on the exact outline (the first scale came from a coarse grid)
        prims = _scale_prims(prims, radius / r_eq)
        origin, shape = _lattice(prims)
        phi, chord = _union_fields(prims, origin, shape)
        area, com, extent = _outline_moments(phi, origin)
        r_eq = float(np.sqrt(area / np.pi))
    inside = phi >= 0
    thick = chord.copy()
    labels = np.zeros(shape, np.int64)
    depth = ndimage.distance_transform_edt(inside) * _H
    if textured:
        g_mean = float(np.mean(p.grain_radius_range))
        n_seeds = max(int(shape[0] * shape[1] * _H * _H / (np.pi * (0.9 * g_mean) ** 2)), 2)
        seeds = np.ones(shape, bool)
        seeds.flat[rng.choice(shape[0] * shape[1], n_seeds, replace=False)] = False
        _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
        labels = np.ravel_multi_index((iy, ix), shape)
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(shape)
        edge = np.zeros(shape, np.float32)
        edge[1:] += labels[1:] != labels[:-1]
        edge[:, 1:] += labels[:, 1:] != labels[:, :-1]
        sig = 0.25 / _H
        edge = ndimage.gaussian_filter(np.minimum(edge, 1), sig) * np.sqrt(2 * np.pi) * sig
        density = 1.0 + p.grain_contrast * np.clip(rng.normal(size=labels.max() + 1), -2.5, 2.5)
        tex = density[labels] * (1.0 - p.boundary_depth * np.clip(edge, 0, 1))
        tex *= _crack_map(rng, shape, origin, r_eq, int(rng.integers(p.n_cracks[0], p.n_cracks[1] + 1)))
        thick = thick * tex
        # spherical pores: their chords are missing from the thickness
        n_pores = int(rng.poisson(p.pore_fraction * r_eq**2 / 1.5**2))
        cand = np.argwhere(depth > 3.0)
        ys = origin[0] + _H * np.arange(shape[0])
        xs = origin[1] + _H * np.arange(shape[1])
        for _ in range(n_pores if len(cand) else 0):
            cy, cx = cand[rng.integers(len(cand))]
            rp = rng.uniform(0.7, 2.2)
            i0, i1 = max(cy - int(rp / _H) - 1, 0), min(cy + int(rp / _H) + 2, shape[0])
            j0, j1 = max(cx - int(rp / _H) - 1, 0), min(cx + int(rp / _H) + 2, shape[1])
            rho2 = (ys[i0:i1, None] - ys[cy]) ** 2 + (xs[None, j0:j1] - xs[cx]) ** 2
            hole = 2 * np.sqrt(np.clip(rp * rp - rho2, 0, None))
            blk = thick[i0:i1, j0:j1]
            thick[i0:i1, j0:j1] = np.maximum(blk - hole, 0.3 * blk)
    f = _chemistry(rng, pattern, labels, depth, shape, origin, r_eq)
    a_od = thick * jump_per_px
    A = _pixel_box(a_od)
    B = _pixel_box(a_od * f)
    fields_ = np.stack([phi, A, B]).astype(np.float32)
    b = (phi >= 0) & (phi <= 2 * _H)
    boundary = origin + _H * np.argwhere(b)
    return _Object(fields_, origin, com, r_eq, float(extent), pattern, boundary)


def _build_particle(rng, radius, pattern, p: StressParams) -> _Object:
    """A secondary particle: body + lobes + primary grains around its silhouette."""
    prims = []
    lumpy = rng.random() < 0.5 * p.irregularity  # an agglomerate-like lumpy particle, else a round-ish one
    body = rng.uniform(0.65, 0.8) if lumpy else rng.uniform(0.9, 1.0)
    S, m = _projected(rng, body * radius * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0)]))
    prims.append((np.zeros(2), S, m))
    n_lobes = int(rng.integers(p.n_lobes[0], p.n_lobes[1] + 1)) + (2 if lumpy else 0)
    for _ in range(n_lobes):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        if lumpy:
            c, size = radius * rng.uniform(0.4, 0.45 + 0.4 * p.irregularity) * v[:2], rng.uniform(0.35, 0.55)
        else:
            c, size = radius * rng.uniform(0.2, 0.25 + 0.3 * p.irregularity) * v[:2], rng.uniform(0.4, 0.65)
        S, m = _projected(rng, size * radius * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)]))
        prims.append((c, S, m))
    g_lo, g_hi = p.grain_radius_range
    g = rng.uniform(g_lo, g_hi)
    n_grains = int(np.clip(2 * np.pi * radius / (1.5 * g), 6, 120))
    pts, rb = _silhouette_points(rng, prims, n_grains, 2.5 * radius)
    for (py, px), r in zip(pts, rb):
        gs = rng.uniform(0.7, 1.3) * g
        S, m = _projected(rng, gs * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)]))
        inward = rng.uniform(0.3, 0.8) * gs
        k = max(r - inward, 0.0) / max(r, 1e-9)
        prims.append((np.array([py * k, px * k]), S, m))
    return _finish(rng, prims, p, radius=radius, jump_per_px=p.edge_jump_per_px, pattern=pattern, textured=True)


def _build_fine(rng, radius, p: StressParams) -> _Object:
    """A fine: one or two small ellipsoids (a fragment), dense, uniform chemistry."""
    prims = []
    S, m = _projected(rng, radius * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)]))
    prims.append((np.zeros(2), S, m))
    if rng.random() < 0.4:
        v = rng.normal(size=2)
        S, m = _projected(rng, radius * rng.uniform(0.5, 0.8) * np.ones(3))
        prims.append((0.5 * radius * v / np.linalg.norm(v), S, m))
    peak = max(m for _, _, m in _scale_prims(prims, radius / np.sqrt(_area_coarse(prims) / np.pi)))
    jump = rng.uniform(*p.fine_jump_range) / peak
    return _finish(rng, prims, p, radius=radius, jump_per_px=jump, pattern="uniform", textured=False)


# --------------------------------------------------------------------------- motion


def _common_motion(rng, p: StressParams, energies):
    """Common translation (n, 2) and magnification (n,) of every frame; frame 0 is (0, 1)."""
    n = p.n_energies
    walk = np.cumsum(rng.normal(0, p.jitter_walk_sd, (n, 2)), axis=0)
    iid = rng.normal(0, p.jitter_sd, (n, 2))
    jumps = np.zeros((n, 2))
    total = np.zeros(2)
    if n > 1 and p.n_jumps:
        for k in np.sort(rng.choice(np.arange(1, n), size=min(p.n_jumps, n - 1), replace=False)):
            a = rng.uniform(0, 2 * np.pi)
            v = rng.uniform(*p.jump_range) * np.array([np.sin(a), np.cos(a)])
            if v @ total > 0:  # jumps never carry the stage ever further away
                v = -v
            total = total + v
            jumps[k:] += v
    g = walk + iid + jumps
    g -= g[0]
    span = energies[-1] - energies[0] if n > 1 else 1.0
    scale = 1.0 + p.magnification * (energies - energies[0]) / span
    return g, scale


def _drift(rng, n, step_sd, smooth):
    """A random walk (n, 2) from 0 with steps of sd ``step_sd``, smoothed over ``smooth`` frames.

    The smoothing removes the frame-to-frame roughness but keeps the walk's excursion
    (about ``step_sd * sqrt(n)`` per axis).
    """
    if step_sd <= 0 or n < 2:
        return np.zeros((n, 2))
    w = np.cumsum(rng.normal(0, step_sd, (n, 2)), axis=0)
    if smooth > 0:
        w = ndimage.gaussian_filter1d(w, smooth, axis=0, mode="nearest")
    return w - w[0]


# --------------------------------------------------------------------------- layout


def _depth_in(obj: _Object, pts) -> float:
    """Deepest penetration (px, approx.) of points into obj's outline; < 0 when outside."""
    return float(_bilinear_at(obj.fields[0], obj.origin, pts, -_PHI_CLIP).max())


def _contact(a: _Object, b: _Object, u, overlap, others=()):
    """Offset of b's anchor from a's along unit vector u so that b overlaps a by ``overlap``.

    ``others``: (object, anchor offset) pairs b may touch but not overlap by more.
    Returns None when b would overlap one of them more than that.
    """
    lo, hi = 0.0, a.extent + b.extent + 2.0
    pts = b.boundary
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if _depth_in(a, pts + mid * u) > overlap:
            lo = mid
        else:
            hi = mid
    off = hi * u
    for o, o_off in others:
        if _depth_in(o, pts + off - o_off) > overlap + 0.5:
            return None
    return off


def _cluster(rng, members: list, p: StressParams):
    """Anchor offsets (n, 2) that make the members one touching group."""
    offs = [np.zeros(2)]
    for j in range(1, len(members)):
        for _try in range(200):
            host = int(rng.integers(j))
            a = rng.uniform(0, 2 * np.pi)
            u = np.array([np.sin(a), np.cos(a)])
            others = [(members[i], offs[i] - offs[host]) for i in range(j) if i != host]
            off = _contact(members[host], members[j], u, p.contact_overlap, others)
            if off is not None:
                offs.append(offs[host] + off)
                break
        else:
            raise ValueError(f"cannot assemble a touching group of {len(members)} particles")
    return np.array(offs)


def _frame_positions(anchor, drift, g, scale, centre):
    """Frame coordinates (n, 2) of a model point moving with drift (n, 2)."""
    return centre + scale[:, None] * (anchor + drift - centre) + g


class _Layout:
    """Placed objects: anchor, drift, extent, for the clearance test over all frames."""

    def __init__(self, p, g, scale):
        self.p, self.g, self.scale = p, g, scale
        self.centre = (np.asarray(p.shape, float) - 1) / 2
        self.anchors: list = []
        self.drifts: list = []
        self.extents: list = []

    def fits(self, anchors, drift, extents, gaps, *, exclude=()) -> bool:
        ny, nx = self.p.shape
        for a, e in zip(anchors, extents):
            pos = _frame_positions(a, drift, self.g, self.scale, self.centre)
            ee = e * self.scale.max() + 3
            if (
                pos[:, 0].min() - ee < 0
                or pos[:, 1].min() - ee < 0
                or pos[:, 0].max() + ee > ny - 1
                or pos[:, 1].max() + ee > nx - 1
            ):
                return False
        keep = [i for i in range(len(self.anchors)) if i not in exclude]
        if not keep:
            return True
        A = np.array([self.anchors[i] for i in keep])
        D = np.array([self.drifts[i] for i in keep])  # (m, n, 2)
        E = np.array([self.extents[i] for i in keep])
        for a, e, gap in zip(anchors, extents, gaps):
            rel = (a + drift)[None] - (A[:, None, :] + D)  # model coordinates: similarity-invariant contact
            dmin = np.sqrt((rel**2).sum(-1)).min(axis=1)
            if np.any(dmin < e + E + gap):
                return False
        return True

    def add(self, anchors, drift, extents) -> list:
        """Add objects; returns their indices."""
        start = len(self.anchors)
        for a, e in zip(anchors, extents):
            self.anchors.append(np.asarray(a, float))
            self.drifts.append(drift)
            self.extents.append(float(e))
        return list(range(start, len(self.anchors)))


def _place(rng, layout: _Layout, offsets, drift, extents, gaps, what):
    """A random anchor for a group (anchor offsets) that fits; raises when none does."""
    ny, nx = layout.p.shape
    for _ in range(4000):
        a0 = rng.uniform([0, 0], [ny, nx])
        anchors = a0 + offsets
        if layout.fits(anchors, drift, extents, gaps):
            return anchors, layout.add(anchors, drift, extents)
    raise ValueError(
        f"cannot place {what} in a {ny} x {nx} frame with its motion (jitter, jumps, drift) and "
        f"min_gap={layout.p.min_gap}: use fewer or smaller particles, fewer fines or a larger shape"
    )


# --------------------------------------------------------------------------- rendering


def _axis(coord, n):
    """Index, weight and validity of a separable bilinear sample along one axis."""
    i0 = np.floor(coord).astype(np.int64)
    w = (coord - i0).astype(np.float32)
    ok = (i0 >= 0) & (i0 < n - 1)
    return np.clip(i0, 0, n - 2), w, ok


def _resample(F, cy, cx, fill):
    """Separable bilinear resampling of fields F (c, H, W) at lattice coords cy (m,), cx (q,)."""
    iy, wy, oky = _axis(cy, F.shape[1])
    ix, wx, okx = _axis(cx, F.shape[2])
    R = F[:, iy] * (1 - wy)[None, :, None] + F[:, iy + 1] * wy[None, :, None]
    out = R[:, :, ix] * (1 - wx) + R[:, :, ix + 1] * wx
    bad = ~(oky[:, None] & okx[None, :])
    if bad.any():
        out[:, bad] = np.asarray(fill, np.float32)[:, None]
    return out


def _object_window(obj: _Object, anchor, drift_k, g_k, s_k, centre, half):
    """Frame window origin (2,) and the object's fields (3, 2 half + 1, 2 half + 1) there."""
    c = centre + s_k * (anchor + drift_k - centre) + g_k
    o = np.round(c).astype(np.int64) - half
    rows = np.arange(o[0], o[0] + 2 * half + 1)
    cols = np.arange(o[1], o[1] + 2 * half + 1)
    # model coordinates relative to the anchor, then lattice coordinates
    uy = (rows - g_k[0] - centre[0]) / s_k + centre[0] - drift_k[0] - anchor[0]
    ux = (cols - g_k[1] - centre[1]) / s_k + centre[1] - drift_k[1] - anchor[1]
    F = _resample(obj.fields, (uy - obj.origin[0]) / _H, (ux - obj.origin[1]) / _H, (-_PHI_CLIP, 0.0, 0.0))
    return o, F


def _background(rng, p: StressParams, margin):
    """Matrix OD (no Ni edge) and ghost Ni edge jump on a canvas of the frame + margin."""
    ny, nx = p.shape[0] + 2 * margin, p.shape[1] + 2 * margin
    noise = rng.normal(size=(ny, nx)).astype(np.float32)
    band = ndimage.gaussian_filter(noise, 1.5) - ndimage.gaussian_filter(noise, 5.0)
    band /= band.std() + 1e-12
    sponge = 1.0 / (1.0 + np.exp(-(band - 0.6) / 0.25))
    dots = np.zeros((ny, nx), np.float32)
    n_dots = rng.poisson(ny * nx / 120.0)
    dots[rng.integers(0, ny, n_dots), rng.integers(0, nx, n_dots)] = rng.uniform(0.5, 1.0, n_dots)
    dots = ndimage.gaussian_filter(dots, 1.0) * 2 * np.pi
    strands = np.zeros((ny, nx), np.float32)
    for _ in range(p.n_strands):
        pos = rng.uniform([0, 0], [ny, nx])
        ang = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.4, 1.0)
        for _s in range(int(rng.integers(150, 600))):
            ang += rng.normal(0, 0.05)
            pos = pos + 0.5 * np.array([np.sin(ang), np.cos(ang)])
            iy, ix = int(pos[0]), int(pos[1])
            if 0 <= iy < ny and 0 <= ix < nx:
                strands[iy, ix] = amp
    strands = ndimage.gaussian_filter(strands, 0.7) * 2.5
    large = ndimage.gaussian_filter(rng.normal(size=(ny, nx)).astype(np.float32), 50.0)
    large /= np.abs(large).max() + 1e-12
    matrix = (
        p.background_od * (1.0 + 0.08 * large)
        + p.matrix_od * (0.6 * sponge + 0.4 * np.clip(dots, 0, 1.5) + 0.5 * np.clip(strands, 0, 1))
    ).astype(np.float32)
    ghosts = np.zeros((ny, nx), np.float32)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for _ in range(p.n_ghosts):
        cy, cx = rng.uniform([0, 0], [ny, nx])
        r = rng.uniform(15, 50)
        ghosts += (rng.uniform(0.3, 1.0) * p.ghost_jump * ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)).astype(np.float32)
    if p.n_ghosts:
        ghosts = ndimage.gaussian_filter(ghosts, rng.uniform(6, 14))
    return np.stack([matrix, ghosts])


def _illumination(rng, p: StressParams, n):
    """Per-frame separable illumination parameters of the sample and reference exposures."""
    ny, nx = p.shape
    t = np.linspace(0, 1, n)
    v_centre = (np.array([ny, nx]) - 1) / 2 + np.outer(t - 0.5, rng.uniform(-0.15, 0.15, 2) * [ny, nx])
    lam = rng.uniform(30, 80)
    tilt = rng.uniform(-0.2, 0.2)
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * t * rng.uniform(0.5, 2.0)
    ring = 1.0 - 0.03 * ((np.arange(n) / 40.0) % 1.0)  # storage-ring decay between top-ups
    dips = rng.random(n) < p.beam_dip_probability
    beam = ring * np.where(dips, 1.0 - rng.uniform(0.05, 0.25, n), 1.0)
    beam_ref = ring * np.exp(rng.normal(0, p.beam_jitter, n))
    shift_ref = rng.normal(0, p.flat_shift_px, (n, 2))
    phase_ref = phase + rng.normal(0, p.flat_phase_sd, n)
    return dict(
        v_centre=v_centre,
        lam=lam,
        tilt=tilt,
        phase=phase,
        beam=beam,
        beam_ref=beam_ref,
        shift_ref=shift_ref,
        phase_ref=phase_ref,
    )


def _flat_shape(p: StressParams, centre, lam, tilt, phase):
    ny, nx = p.shape
    y = np.arange(ny, dtype=np.float64)
    x = np.arange(nx, dtype=np.float64)
    k = -np.log(max(1.0 - p.vignetting, 1e-3))
    vy = np.exp(-k * ((y - centre[0]) / (ny / 2)) ** 2)
    vx = np.exp(-k * ((x - centre[1]) / (nx / 2)) ** 2)
    ay = 2 * np.pi * np.cos(tilt) * y / lam + phase
    bx = 2 * np.pi * np.sin(tilt) * x / lam
    ripple = np.sin(ay)[:, None] * np.cos(bx)[None, :] + np.cos(ay)[:, None] * np.sin(bx)[None, :]
    return ((vy[:, None] * vx[None, :]) * (1.0 + p.flat_ripple * ripple)).astype(np.float32)


# --------------------------------------------------------------------------- public


def _resolve(case, reduced, overrides) -> StressParams:
    if isinstance(case, str):
        if case not in STRESS_CASES:
            raise ValueError(f"unknown stress case {case!r}; choose one of {sorted(STRESS_CASES)}")
        case = STRESS_CASES[case]
    if not isinstance(case, StressParams):
        raise TypeError(f"case_or_params must be a stress case name or StressParams, got {type(case).__name__}")
    if reduced:
        case = reduced_params(case)
    if overrides:
        known = {f.name for f in fields(StressParams)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown StressParams field(s) {bad}; known: {sorted(known)}")
        case = replace(case, **overrides)
    return case


def _radii(rng, n, lo, hi):
    q = (np.arange(n) + rng.uniform(0.1, 0.9, n)) / max(n, 1)
    return np.exp(np.log(lo) + q * (np.log(hi) - np.log(lo)))


def make_stress_stack(
    case_or_params: StressParams | str = "stress-all",
    seed: int = 0,
    *,
    reduced: bool = False,
    store_frame_masks: bool = False,
    **overrides,
) -> SynthStack:
    """Generate a stress-family energy scan with ground truth.

    Parameters
    ----------
    case_or_params : str or StressParams
        A name of :data:`STRESS_CASES` or the knobs.
    seed : int
        Seed; the same seed and parameters give the same scan.
    reduced : bool
        Shrink the case first (:func:`reduced_params`: 48 energies, 256 x 256, fewer
        particles and fines; every stressor kept), for tests.
    store_frame_masks : bool
        Also keep a full-frame mask of every object per frame (particles and fines) and
        where two of them meet (``frame_contacts``).
    **overrides
        Fields of :class:`StressParams` replacing those of the case.

    Returns
    -------
    SynthStack
        ``counts``, ``flats`` (per energy) and ``dark`` as a beamline writes them;
        ``truth`` (:class:`~xanestrack.synth.SynthTruth`) holds every particle, isolated
        or not (``positions.isolated``), the common translation ``global_shift`` (n, 2),
        the magnification ``scale`` (n,), fines ``(y, x, r)`` at frame 0; ``params`` the
        :class:`StressParams`.

    Raises
    ------
    ValueError
        Unknown case or field, or a layout that cannot be placed in the frame.

    Notes
    -----
    Truth positions are the centre of mass of each particle's continuous outline (1/16
    px sampling of its model) carried by the common similarity and the particle's own
    drift: exact to ~1e-3 px. Truth masks are that outline at the frame's pixel centres.
    """
    p = _resolve(case_or_params, reduced, overrides)
    rng_shape, rng_motion, rng_layout, rng_scene, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0x57E55]).spawn(5)
    )
    energies = ni_energy_grid(p.n_energies)
    n = p.n_energies
    ny, nx = p.shape
    centre = (np.array([ny, nx], float) - 1) / 2

    # --- objects
    radii = rng_shape.permutation(_radii(rng_shape, p.n_particles, *p.radius_range))
    patterns = [STRESS_PATTERNS[i % len(STRESS_PATTERNS)] for i in rng_shape.permutation(max(p.n_particles, 1))][
        : p.n_particles
    ]
    particles = [_build_particle(rng_shape, r, pat, p) for r, pat in zip(radii, patterns)]
    fines = [_build_fine(rng_shape, rng_shape.uniform(*p.fine_radius_range), p) for _ in range(p.n_fines)]

    # --- motion, layout, frames, truth
    g, scale = _common_motion(rng_motion, p, energies)
    groups, drifts, fixed = _groups(rng_motion, p, particles)
    anchor, particle_drift, isolated, fine_anchor = _arrange(
        rng_layout, p, particles, fines, groups, drifts, fixed, g, scale
    )
    objects = [(o, anchor[i], particle_drift[i]) for i, o in enumerate(particles)]
    objects += [(fo, fine_anchor[j], np.zeros((n, 2))) for j, fo in enumerate(fines)]
    r = _render(rng_scene, rng_noise, p, energies, g, scale, objects, len(particles), store_frame_masks)

    trows = []
    for i, obj in enumerate(particles):
        pos = _frame_positions(anchor[i] + obj.com, particle_drift[i], g, scale, centre)
        dpos = pos - pos[0]
        for k in range(n):
            trows.append((i, k, energies[k], pos[k, 0], pos[k, 1], dpos[k, 0], dpos[k, 1], bool(isolated[i])))
    positions = pd.DataFrame(trows, columns=["particle", "frame", "energy_ev", "y", "x", "dy", "dx", "isolated"])
    positions = positions.astype({"particle": np.int64, "frame": np.int64, "isolated": bool})
    truth = SynthTruth(
        positions=positions,
        global_shift=g,
        masks=r.masks,
        mask_origins=r.mask_origins,
        edge_maps=r.edge_maps,
        edge_map_origins=np.array(r.edge_origins, float).reshape(-1, 2),
        radii=np.array([o.radius for o in particles]),
        patterns=[o.pattern for o in particles],
        fines=np.array([[a[0] + fo.com[0], a[1] + fo.com[1], fo.radius] for fo, a in zip(fines, fine_anchor)]).reshape(
            -1, 3
        ),
        frame_masks=r.frame_masks,
        frame_contacts=r.frame_contacts,
        scale=scale,
    )
    return SynthStack(r.counts, r.flats, r.dark, energies, truth, p, int(seed))


#: what :func:`randomised_stress_stack` draws (for the model cards)
RANDOMISED_RANGES = (
    "a named stress case, then flat-field counts 600-8000, own drift step sd 0-0.6 px, frame jitter 0-3 px sd "
    "with 0-4 jumps, 0-30 fines (some touching), magnification 0.2-1 % (either sign), radii x0.7-1.2, "
    "frames of 380-520 px, drawn per scan"
)


def randomised_stress_stack(rng, seed: int, n_energies: int, *, store_frame_masks: bool = True) -> SynthStack:
    """A stress-family scan with its knobs drawn at random, for training (domain randomisation).

    A named case of :data:`STRESS_CASES` (its crowding and agglomerates), then over the
    ranges the tool must handle (:data:`RANDOMISED_RANGES`): flat-field counts 600-8000,
    own drift step sd 0-0.6 px, frame jitter 0-3 px sd with 0-4 jumps, 0-30 fines (some
    touching), magnification 0.2-1 % (either sign), radii x0.7-1.2, frames of 380-520 px.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the case and the knobs.
    seed : int
        Seed of the scan (training uses seeds >= 100 only; tests and benchmarks below).
    n_energies : int
    store_frame_masks : bool
        See :func:`make_stress_stack`.

    Raises
    ------
    RuntimeError
        If no draw of 20 could be placed in the frame.
    """
    names = sorted(STRESS_CASES)
    case = STRESS_CASES[names[int(rng.integers(len(names)))]]
    for attempt in range(20):
        n_fines = int(rng.integers(0, 31))
        k = rng.uniform(0.7, 1.2)
        over = dict(
            n_energies=n_energies,
            shape=(int(rng.integers(380, 521)), int(rng.integers(380, 521))),
            counts=float(np.exp(rng.uniform(np.log(600), np.log(8000)))),
            drift_step_sd=float(rng.uniform(0.0, 0.6)),
            jitter_sd=float(rng.uniform(0.0, 3.0)),
            n_jumps=int(rng.integers(0, 5)),
            n_fines=n_fines,
            n_touching_fines=int(rng.integers(0, min(n_fines, 5) + 1)) if case.n_particles else 0,
            magnification=float(rng.uniform(0.002, 0.01) * rng.choice([-1, 1])),
            radius_range=(max(4.0, case.radius_range[0] * k), max(5.0, case.radius_range[1] * k)),
        )
        try:
            return make_stress_stack(case, seed=seed * 31 + attempt, store_frame_masks=store_frame_masks, **over)
        except ValueError:  # too crowded for this draw: draw again
            continue
    raise RuntimeError("could not place particles in 20 draws")


def _groups(rng, p: StressParams, particles):
    """Touching groups (lists of particle indices), each group's drift, the fixed groups."""
    n = p.n_energies
    groups, start = [], 0
    order = np.argsort([-o.extent for o in particles])  # groups take the largest particles
    for size in sorted(p.cluster_sizes, reverse=True):
        groups.append([int(i) for i in order[start : start + size]])
        start += size
    groups += [[int(i)] for i in order[start:]]
    if p.drift_step_sd > 0:
        n_fixed = int(round(p.fixed_fraction * len(groups)))
        n_fixed = max(n_fixed, 1) if groups else 0  # some particles always stay with the matrix
        fixed = set(rng.permutation(len(groups))[:n_fixed].tolist())
    else:
        fixed = set(range(len(groups)))
    drifts = [
        np.zeros((n, 2)) if gi in fixed else _drift(rng, n, p.drift_step_sd * rng.uniform(0.6, 1.0), p.drift_smooth)
        for gi in range(len(groups))
    ]
    return groups, drifts, fixed


def _arrange(rng, p: StressParams, particles, fines, groups, drifts, fixed, g, scale):
    """Anchors of particles (groups largest first) and fines (touching ones first).

    Returns (particle anchors, particle drifts, isolated flags, fine anchors).
    """
    n = p.n_energies
    layout = _Layout(p, g, scale)
    anchor = [None] * len(particles)
    drift = [None] * len(particles)
    slot = [0] * len(particles)  # index of each particle in the layout
    isolated = np.ones(len(particles), bool)
    for gi in sorted(range(len(groups)), key=lambda gi: -sum(particles[i].extent for i in groups[gi])):
        members = [particles[i] for i in groups[gi]]
        offs = _cluster(rng, members, p) if len(members) > 1 else np.zeros((1, 2))
        anchors, slots = _place(
            rng,
            layout,
            offs,
            drifts[gi],
            [m.extent for m in members],
            [p.min_gap] * len(members),
            f"a group of {len(members)} particle(s)",
        )
        for i, a, sl in zip(groups[gi], anchors, slots):
            anchor[i], slot[i], drift[i] = a, sl, drifts[gi]
            isolated[i] = len(members) == 1
    zero = np.zeros((n, 2))
    fine_anchor = []
    hosts = [i for gi in sorted(fixed) for i in groups[gi]]  # a touching fine stays in contact
    for j, fo in enumerate(fines):
        if j < p.n_touching_fines and hosts:
            host = hosts[int(rng.integers(len(hosts)))]
            for _try in range(200):
                a = rng.uniform(0, 2 * np.pi)
                pos = anchor[host] + _contact(particles[host], fo, np.array([np.sin(a), np.cos(a)]), p.contact_overlap)
                if layout.fits([pos], zero, [fo.extent], [p.fine_gap], exclude=(slot[host],)):
                    layout.add([pos], zero, [fo.extent])
                    fine_anchor.append(pos)
                    isolated[host] = False
                    break
            else:
                raise ValueError(
                    "cannot place a fine touching a particle: frame too crowded; use fewer fines or particles"
                )
        else:
            fine_anchor.append(
                _place(rng, layout, np.zeros((1, 2)), zero, [fo.extent], [p.fine_gap], "the fines")[0][0]
            )
    return anchor, drift, isolated, fine_anchor


@dataclass(frozen=True)
class _Rendered:
    counts: np.ndarray
    flats: np.ndarray
    dark: np.ndarray
    masks: list
    mask_origins: list
    edge_maps: list
    edge_origins: list
    frame_masks: np.ndarray | None
    frame_contacts: np.ndarray | None = None


def _render(
    rng_scene, rng_noise, p: StressParams, energies, g, scale, objects, n_particles, store_frame_masks
) -> _Rendered:
    """Counts and flats of every frame; the particles' masks and frame-0 edge maps."""
    n = p.n_energies
    ny, nx = p.shape
    centre = (np.array([ny, nx], float) - 1) / 2
    reach = np.abs(g).max() + abs(p.magnification) * np.hypot(ny, nx) / 2 + 4
    margin = int(np.ceil(reach)) + 2
    bg = _background(rng_scene, p, margin)  # in model coordinates: fixed to the matrix
    ill = _illumination(rng_scene, p, n)
    # dust and scintillator defects: in the sample and the reference exposure alike
    dust = (
        1.0
        - 0.15
        * np.clip(ndimage.gaussian_filter((rng_scene.random((ny, nx)) < 2e-4).astype(np.float32), 2.5) * 40, 0, 1)
    ).astype(np.float32)

    mu_a, mu_b = _phases(energies, p.charged_shift_ev)
    pre = p.pre_edge_ratio * (energies / 8333.0) ** -3.0
    bg_mu = pre + 0.7 * mu_a + 0.3 * mu_b

    halves = [int(np.ceil(o.extent * max(scale.max(), 1.0))) + 2 for o, _, _ in objects]
    masks = [np.zeros((n, 2 * halves[i] + 1, 2 * halves[i] + 1), bool) for i in range(n_particles)]
    mask_origins = [np.zeros((n, 2), np.int64) for _ in range(n_particles)]
    edge_maps, edge_origins = [], []
    frame_masks = np.zeros((n, ny, nx), bool) if store_frame_masks else None
    frame_contacts = np.zeros((n, ny, nx), bool) if store_frame_masks else None

    dark = (p.dark_level + rng_noise.normal(0, 2.0, (1, nx)) + rng_noise.normal(0, 1.0, (ny, nx))).astype(np.float32)
    dark_rec = (dark + rng_noise.normal(0, p.read_noise / np.sqrt(10), (ny, nx))).astype(np.float32)
    counts = np.empty((n, ny, nx), np.float32)
    flats = np.empty((n, ny, nx), np.float32)
    rows = np.arange(ny, dtype=np.float64)
    cols = np.arange(nx, dtype=np.float64)
    for k in range(n):
        s_k, g_k = scale[k], g[k]
        by = (rows - g_k[0] - centre[0]) / s_k + centre[0] + margin
        bx = (cols - g_k[1] - centre[1]) / s_k + centre[1] + margin
        b = _resample(bg, by, bx, (p.background_od, 0.0))
        od = b[0] * float((energies[k] / 8333.0) ** -3.0) + b[1] * float(bg_mu[k])
        c_a, c_b = float(pre[k] + mu_a[k]), float(mu_b[k] - mu_a[k])
        owner = np.zeros((ny, nx), np.int32) if store_frame_masks else None
        for i, ((obj, a, d), half) in enumerate(zip(objects, halves)):
            o, F = _object_window(obj, a, d[k], g_k, s_k, centre, half)
            y0, x0 = max(o[0], 0), max(o[1], 0)
            y1, x1 = min(o[0] + 2 * half + 1, ny), min(o[1] + 2 * half + 1, nx)
            if y1 <= y0 or x1 <= x0:
                continue
            sl = (slice(y0 - o[0], y1 - o[0]), slice(x0 - o[1], x1 - o[1]))
            od[y0:y1, x0:x1] += F[1][sl] * c_a + F[2][sl] * c_b
            inside = F[0] >= 0
            if frame_masks is not None:
                frame_masks[k, y0:y1, x0:x1] |= inside[sl]
                mark_contacts(owner, frame_contacts[k], (y0, y1, x0, x1), inside[sl], i + 1)
            if i < n_particles:
                m = np.zeros_like(inside)
                m[sl] = inside[sl]
                masks[i][k] = m
                mask_origins[i][k] = o
                if k == 0:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        frac = np.clip(F[2] / F[1], 0.0, 1.0)
                    e50 = stress_edge_energy(np.nan_to_num(frac), charged_shift_ev=p.charged_shift_ev)
                    edge_maps.append(np.where(inside & (F[1] > 0), e50, np.nan).astype(np.float32))
                    edge_origins.append(o.astype(float))
        if p.halo:
            od = od + p.halo * (od - ndimage.gaussian_filter(od, p.halo_sigma))
        trans = np.exp(-od)
        if p.psf_sigma > 0:
            trans = ndimage.gaussian_filter(trans, p.psf_sigma)
        v = _flat_shape(p, ill["v_centre"][k], ill["lam"], ill["tilt"], ill["phase"][k]) * dust
        v_ref = (
            _flat_shape(p, ill["v_centre"][k] + ill["shift_ref"][k], ill["lam"], ill["tilt"], ill["phase_ref"][k])
            * dust
        )
        lam_s = (p.counts * float(ill["beam"][k])) * v * trans
        lam_r = (p.counts * float(ill["beam_ref"][k])) * v_ref
        counts[k] = (
            rng_noise.poisson(lam_s) + dark + p.read_noise * rng_noise.standard_normal((ny, nx), dtype=np.float32)
        )
        # the mean of n_ref Poisson exposures of >= a few hundred counts: Gaussian to ~1e-3
        sd_r = np.sqrt(lam_r / p.n_ref + p.read_noise**2 / p.n_ref)
        flats[k] = lam_r + dark + sd_r * rng_noise.standard_normal((ny, nx), dtype=np.float32)

    return _Rendered(counts, flats, dark_rec, masks, mask_origins, edge_maps, edge_origins, frame_masks, frame_contacts)


def make_scene(preset: str = "default", *, seed: int = 0, **overrides) -> SynthStack:
    """A synthetic scan of either scene model by name.

    ``preset`` is a name of :data:`xanestrack.synth.PRESETS` (the default scene model)
    or of :data:`STRESS_CASES` (this one); ``overrides`` are fields of that model's
    parameters.
    """
    if preset in STRESS_CASES:
        return make_stress_stack(preset, seed, **overrides)
    if preset in PRESETS:
        return make_synthetic_stack(preset, seed=seed, **overrides)
    raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS) + sorted(STRESS_CASES)}")
