"""Synthetic TXM-XANES energy scans of a deforming electrode, with ground truth.

The forward model, per frame ``k`` (energy ``E_k``) and pixel ``p``::

    OD_k(p)   = sum_particles t(p - c_k) * [pre(E_k) + mu_norm(E_k; f(p - c_k))]
                + background_k(p - g_k) + plane_k(p)
    counts_k  = Poisson(I0_k(p) * (1 + eps_k) * exp(-OD_k(p))) + dark
    flat_k    = Poisson(n_ref * I0_k(p)) / n_ref + dark     (the recorded reference)

``t`` is the particle's projected thickness (irregular rounded outline, primary
grain texture), ``f`` its Ni3+ fraction (the chemistry pattern), ``mu_norm`` the mix
``(1 - f) NiO + f LiNiO2`` of the shipped measured references, ``c_k = c_0 + g_k +
d_k`` its position (global rigid jitter ``g_k`` plus its own non-rigid drift ``d_k``),
``eps_k`` the source intensity fluctuation between the sample and the reference
exposure. Particles are evaluated in their own continuous coordinates, so their true
sub-pixel shifts are exact (no resampling of a rendered particle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

from .spectra import ni_references

__all__ = [
    "SynthParams",
    "SynthTruth",
    "SynthStack",
    "SynthSeries",
    "make_synthetic_series",
    "PRESETS",
    "make_synthetic_stack",
    "ni_energy_grid",
    "edge_energy_of_fraction",
]

PATTERNS = ("core_offcentre", "shrinking_core", "gradient", "inactive", "charged")
#: chemistry patterns of discrete phases (only when asked for: ``make_synthetic_stack(patterns=...)``):
#: the whole particle pure NiO (Ni2+) or pure LiNiO2 (Ni3+), or a sharp LiNiO2 core (to the
#: particle's ``core`` radius, 0.45-0.65) in a NiO shell
PHASE_PATTERNS = ("phase_NiO", "phase_LiNiO2", "core_shell")


def ni_energy_grid(n_energies: int = 143) -> np.ndarray:
    """A Ni K-edge XANES energy grid in eV (8200-8680 eV).

    143 energies: 5 eV steps over the pre-edge (8200-8315), 1 eV over 8320-8329,
    0.5 eV across the edge (8330-8359.5), 2 eV to 8398, 10 eV to 8680 (the post-edge
    must reach well beyond the whiteline oscillations for a stable normalisation).
    Other counts resample this grid by index, keeping its density profile.
    """
    if n_energies < 2:
        raise ValueError(f"n_energies must be at least 2, got {n_energies}")
    grid = np.r_[
        np.arange(8200.0, 8320.0, 5.0),
        np.arange(8320.0, 8330.0, 1.0),
        np.arange(8330.0, 8360.0, 0.5),
        np.arange(8360.0, 8400.0, 2.0),
        np.arange(8400.0, 8681.0, 10.0),
    ]
    if n_energies == grid.size:
        return grid
    return np.interp(np.linspace(0, grid.size - 1, n_energies), np.arange(grid.size), grid)


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the synthetic scan. Lengths in pixels, counts per pixel per frame.

    Attributes
    ----------
    n_energies : int, default 143
        Frames, on :func:`ni_energy_grid`.
    shape : (int, int), default (460, 460)
        Frame size (rows, cols).
    n_particles : int, default 9
        Isolated particles (their radii spread evenly over ``radius_range``).
    radius_range : (float, float), default (10.0, 40.0)
        px. Radius of the smallest and largest particle (each times 0.92-1.0 at random).
    counts : float, default 5000.0
        Incident counts per pixel per frame (mean; the illumination varies over the
        frame and from frame to frame).
    n_ref : int, default 10
        The flat of each frame averages this many exposures (its Poisson noise).
    intensity_jitter : float, default 0.02
        Relative sd of the source intensity between the sample and the flat exposure.
    flat_shape_variation : float, default 0.05
        Relative amplitude of the illumination's shape, which drifts over the scan.
    pre_edge_level : float, default 0.25
        Pre-edge absorption of a particle at 8333 eV, in units of its edge step
        (falling as E^-3).
    background_od : float, default 0.06
        Mean optical density of the binder/carbon matrix (its texture spans 0.3-1.7 times it).
    background_variation : float, default 0.15
        Relative change of the matrix brightness from frame to frame, and of a tilt across it.
    jitter_step : float, default 0.4
        px. sd of each frame's step of the common (rigid) random walk.
    jump_probability : float, default 0.03
        Chance per frame of a stage jump ...
    jump_size : float, default 5.0
        px. ... of this sd.
    drift_range : (float, float), default (1.0, 6.0)
        px. Range of the amplitude of each particle's own smooth drift (the first
        particle has none); ``(0, 0)``: rigid motion only.
    min_gap : float, default 12.0
        px. Smallest gap between particles (on top of twice their largest drift).
    n_fines : int, default 0
        Small particles (radius 1.5-4 px) fixed to the matrix.
    n_touching_pairs : int, default 0
        Pairs of touching round particles moving together (not isolated).
    dark_level : float, default 100.0
        Counts of the dark frame (plus 2 counts of read noise).

    Raises
    ------
    ValueError
        On a negative particle count, no energies, a radius range not ``(> 2, >= min)``
        or non-positive counts.
    """

    n_energies: int = 143
    shape: tuple[int, int] = (460, 460)
    n_particles: int = 9
    radius_range: tuple[float, float] = (10.0, 40.0)
    counts: float = 5000.0
    n_ref: int = 10
    intensity_jitter: float = 0.02
    flat_shape_variation: float = 0.05
    pre_edge_level: float = 0.25
    background_od: float = 0.06
    background_variation: float = 0.15
    jitter_step: float = 0.4
    jump_probability: float = 0.03
    jump_size: float = 5.0
    drift_range: tuple[float, float] = (1.0, 6.0)
    min_gap: float = 12.0
    n_fines: int = 0
    n_touching_pairs: int = 0
    dark_level: float = 100.0

    def __post_init__(self):
        if self.n_particles < 0 or self.n_energies < 1:
            raise ValueError("n_particles must be >= 0 and n_energies >= 1")
        if self.radius_range[0] <= 2 or self.radius_range[1] < self.radius_range[0]:
            raise ValueError(f"radius_range must be (min > 2, max >= min), got {self.radius_range}")
        if not (np.isfinite(self.counts) and self.counts > 0):
            raise ValueError(f"counts must be positive and finite, got {self.counts}")


PRESETS: dict[str, SynthParams] = {
    "default": SynthParams(),
    "hard": SynthParams(
        n_particles=10,
        radius_range=(10.0, 34.0),
        counts=800.0,
        intensity_jitter=0.04,
        flat_shape_variation=0.10,
        background_od=0.12,
        background_variation=0.3,
        jitter_step=0.8,
        jump_probability=0.05,
        jump_size=10.0,
        drift_range=(2.0, 12.0),
        min_gap=8.0,
        n_fines=15,
        n_touching_pairs=1,
    ),
    "rigid": SynthParams(drift_range=(0.0, 0.0)),
}


@dataclass(frozen=True)
class SynthTruth:
    """Ground truth of a synthetic scan.

    Attributes
    ----------
    positions : DataFrame
        One row per particle per frame: ``particle, frame, energy_ev, y, x, dy, dx,
        isolated``. ``y, x`` is the true centre of mass of the particle mask in input
        pixel coordinates, ``dy, dx`` its shift relative to frame 0.
    global_shift : ndarray, shape (n_frames, 2)
        The rigid (stage/optics) shift of every frame, relative to frame 0.
    masks : list of ndarray, each (n_frames, h, w) bool
        True mask of each particle in a fixed window per frame.
    mask_origins : list of ndarray, each (n_frames, 2) int
        Frame pixel coordinates (y, x) of each window's pixel [0, 0].
    edge_maps : list of ndarray, each (h, w) float32
        True E(mu_norm = 0.5) map in eV on the frame-0 pixel grid (NaN outside).
    edge_map_origins : ndarray, shape (n_particles, 2)
        Frame-0 coordinates of each edge map's pixel [0, 0].
    radii : ndarray
        Mean radius of each particle (px).
    patterns : list of str
        Chemistry pattern of each particle.
    """

    positions: pd.DataFrame
    global_shift: np.ndarray
    masks: list
    mask_origins: list
    edge_maps: list
    edge_map_origins: np.ndarray
    radii: np.ndarray
    patterns: list
    fines: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    coverage: list | None = None  # per particle (n_frames, h, w) float16 partial coverage, with store_clean
    clean: list | None = None  # per particle (n_frames, h, w) float16 particle-only OD, with store_clean
    frame_masks: np.ndarray | None = (
        None  # (n_frames, rows, cols) bool: every object incl. fines, with store_frame_masks
    )
    frame_contacts: np.ndarray | None = (
        None  # (n_frames, rows, cols) bool: where two objects meet (within 1 px of both), with store_frame_masks
    )
    scale: np.ndarray | None = (
        None  # (n_frames,) image magnification of each frame about the frame centre, frame 0 = 1 (stress model)
    )


@dataclass(frozen=True)
class SynthStack:
    """Raw synthetic scan: counts, per-energy flats and a dark, as a beamline writes them."""

    counts: np.ndarray  # (n_frames, Y, X) float32
    flats: np.ndarray  # (n_frames, Y, X) float32
    dark: np.ndarray  # (Y, X) float32
    energies_ev: np.ndarray
    truth: SynthTruth
    params: SynthParams
    seed: int

    def optical_density(self, *, dynamic_flats: bool = False) -> np.ndarray:
        """Flat/dark-corrected optical density (n_frames, Y, X), float32 (``dynamic_flats``: see
        :func:`xanestrack.io.flatfield.optical_density`)."""
        from .io.flatfield import optical_density

        return optical_density(self.counts, flats=self.flats, darks=self.dark[None], dynamic_flats=dynamic_flats)

    def stack(self, source: str = "synthetic", **metadata):
        """The :class:`xanestrack.stack.Stack` a reader makes of this scan: its optical density, and where the
        images' illumination differed from their flats' (the stress family's ripple), that pattern as
        ``metadata["illumination"]`` with its note (:func:`xanestrack.io.flatfield.optical_density`), which the
        pipeline takes out of the particles' chemistry."""
        from .io.flatfield import optical_density
        from .stack import Stack

        notes, found = [], []
        od = optical_density(self.counts, flats=self.flats, darks=self.dark[None], notes=notes, illumination=found)
        meta = dict(source=source, reader="synthetic", **metadata)
        if notes:
            meta["notes"] = notes
        if found:
            meta["illumination"] = found[0].kept_for(od)
        return Stack(od, self.energies_ev, None, meta)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Particle:
    centre: np.ndarray  # frame-0 centre of the outline (y, x)
    radius: float
    harmonics: np.ndarray  # (n, 3): order, amplitude, phase
    peak_od: float
    pattern: str
    chem: dict
    grains: np.ndarray  # (n, 3): y, x (in units of radius), weight
    isolated: bool

    def outline(self, theta):
        r = np.ones_like(theta)
        for k, a, ph in self.harmonics:
            r = r + a * np.cos(k * theta + ph)
        return self.radius * r

    @property
    def extent(self) -> float:
        return self.radius * (1 + np.abs(self.harmonics[:, 1]).sum()) + 2


def _particle_fields(part: _Particle, yy, xx):
    """Coverage, thickness (post-edge OD scale) and Ni3+ fraction at local coords."""
    rho = np.hypot(yy, xx)
    theta = np.arctan2(yy, xx)
    r = part.outline(theta)
    # partial-pixel coverage from the signed distance to the outline
    cover = np.clip(r - rho + 0.5, 0.0, 1.0)
    u = np.clip(rho / r, 0.0, 1.0)
    profile = (1.0 - u**2) ** 0.3 + 0.15
    uy, ux = yy / part.radius, xx / part.radius
    texture = np.ones_like(rho)
    for gy, gx, w in part.grains:
        texture -= w * np.exp(-((uy - gy) ** 2 + (ux - gx) ** 2) / (2 * 0.12**2))
    thickness = part.peak_od * cover * profile * texture / 1.15
    f = _fraction(part, uy, ux, rho / part.radius)
    shift = part.chem.get("shift", 0.0)
    if shift:
        f = np.clip(f + shift, 0.0, 1.0)
    return cover, thickness, f


def _fraction(part: _Particle, uy, ux, urho):
    c = part.chem
    if part.pattern == "core_offcentre":
        f = c["lo"] + (c["hi"] - c["lo"]) * np.exp(-((uy - c["cy"]) ** 2 + (ux - c["cx"]) ** 2) / (2 * c["width"] ** 2))
    elif part.pattern == "shrinking_core":
        f = c["lo"] + (c["hi"] - c["lo"]) / (1 + np.exp(-(urho - c["core"]) / 0.08))
    elif part.pattern == "gradient":
        f = c["lo"] + (c["hi"] - c["lo"]) * np.clip(0.5 + 0.5 * (uy * c["dy"] + ux * c["dx"]), 0, 1)
    elif part.pattern == "inactive":
        f = np.full_like(uy, c["lo"])
    elif part.pattern == "phase_NiO":
        f = np.zeros_like(uy)
    elif part.pattern == "phase_LiNiO2":
        f = np.ones_like(uy)
    elif part.pattern == "core_shell":
        f = np.where(urho < c["core"], 1.0, 0.0)
    else:  # charged
        f = np.full_like(uy, c["hi"]) - 0.1 * np.exp(-(urho**2) / 0.1)
    return np.clip(f, 0.0, 1.0)


@lru_cache(maxsize=1)
def _e50_table():
    """``(fractions, e50)``: E(mu_norm = 0.5) of the reference mix on 501 fractions (computed once)."""
    refs = ni_references()
    e = np.arange(8320.0, 8360.0, 0.01)
    a, b = refs["NiO"](e), refs["LiNiO2"](e)
    fs = np.linspace(0, 1, 501)
    e50 = []
    for f in fs:
        m = (1 - f) * a + f * b
        i = int(np.argmax(m >= 0.5))
        e50.append(e[i - 1] + (0.5 - m[i - 1]) * (e[i] - e[i - 1]) / (m[i] - m[i - 1]))
    return fs, np.array(e50)


def edge_energy_of_fraction(fraction) -> np.ndarray:
    """E(mu_norm = 0.5) in eV of the reference mix ``(1-f) NiO + f LiNiO2``."""
    fs, e50 = _e50_table()
    return np.interp(fraction, fs, e50)


def _smooth_walk(rng, n, amplitude, sigma):
    if amplitude == 0 or n < 2:
        return np.zeros((n, 2))
    w = np.cumsum(rng.normal(size=(n, 2)), axis=0)
    w = ndimage.gaussian_filter1d(w, sigma, axis=0, mode="nearest")
    w -= w[0]
    peak = np.abs(w).max()
    return w * (amplitude / peak) if peak > 0 else w


def _random_particle(rng, centre, radius, pattern, isolated=True, peak_od=None):
    n_h = 4
    harmonics = np.c_[
        np.arange(2, 2 + n_h),
        rng.uniform(0.01, 0.06, n_h) / np.arange(1, 1 + n_h) ** 0.5,
        rng.uniform(0, 2 * np.pi, n_h),
    ]
    n_g = int(np.clip(radius, 8, 30))
    gr = np.sqrt(rng.uniform(0, 0.8, n_g))
    ga = rng.uniform(0, 2 * np.pi, n_g)
    grains = np.c_[gr * np.sin(ga), gr * np.cos(ga), rng.uniform(0.03, 0.1, n_g)]
    ang = rng.uniform(0, 2 * np.pi)
    lo = rng.uniform(0.05, 0.2)
    hi = rng.uniform(0.75, 0.95)
    chem = dict(
        lo=lo,
        hi=hi,
        cy=0.35 * np.sin(ang),
        cx=0.35 * np.cos(ang),
        width=rng.uniform(0.25, 0.35),
        core=rng.uniform(0.45, 0.65),
        dy=np.sin(ang),
        dx=np.cos(ang),
    )
    if peak_od is None:
        peak_od = 0.5 + 0.7 * (radius - 10) / 30 + rng.uniform(-0.1, 0.1)
    return _Particle(
        np.asarray(centre, float), float(radius), harmonics, float(peak_od), pattern, chem, grains, isolated
    )


def _layout(rng, p: SynthParams, border_margin, drift_max):
    """Place particles without overlap; returns list of _Particle."""
    ny, nx = p.shape
    r_lo, r_hi = p.radius_range
    n = p.n_particles
    radii = np.linspace(r_lo, r_hi, n) if n > 1 else np.array([0.5 * (r_lo + r_hi)])
    radii = rng.permutation(radii * rng.uniform(0.92, 1.0, n))
    placed: list[_Particle] = []
    margin = border_margin + 6
    order = np.argsort(-radii)
    crowded = ValueError(
        f"cannot place {n} particles of radius {r_lo}-{r_hi} px in a {ny} x {nx} frame with "
        f"min_gap={p.min_gap}, drift up to {drift_max:.1f} px and jitter up to {border_margin:.1f} px: "
        "use fewer or smaller particles, or a larger frame"
    )
    for idx, i in enumerate(order):
        r = radii[i]
        ext = r * 1.15 + 2
        if min(ny, nx) - 2 * (ext + margin) <= 0:  # the particle cannot lie inside the frame at all
            raise crowded
        for _ in range(5000):
            c = rng.uniform([ext + margin, ext + margin], [ny - ext - margin, nx - ext - margin])
            if all(np.hypot(*(c - q.centre)) > ext + q.extent + p.min_gap + 2 * drift_max for q in placed):
                break
        else:
            raise crowded
        placed.append(_random_particle(rng, c, r, PATTERNS[idx % len(PATTERNS)]))
    return placed


def _resolve_params(params, overrides) -> SynthParams:
    """A preset name or SynthParams, with field overrides applied."""
    if isinstance(params, str):
        if params not in PRESETS:
            raise ValueError(f"unknown preset {params!r}; choose one of {sorted(PRESETS)}")
        params = PRESETS[params]
    return replace(params, **overrides) if overrides else params


def make_synthetic_stack(
    params: SynthParams | str = "default",
    *,
    seed: int = 0,
    layout=None,
    store_clean: bool = False,
    store_frame_masks: bool = False,
    patterns=None,
    **overrides,
) -> SynthStack:
    """Generate a synthetic energy scan with ground truth.

    Parameters
    ----------
    params : SynthParams or str
        The knobs, or the name of a preset (``"default"``, ``"hard"``, ``"rigid"``).
    seed : int
        Seed of the random generator; the same seed gives the same scan.
    store_clean : bool
        Also keep, per particle and frame, its partial coverage and its own noise- and
        background-free OD in the mask windows (training targets of the learned models).
    store_frame_masks : bool
        Also keep a full-frame mask of every object per frame (isolated particles,
        touching pairs and fines) and where two objects meet (``frame_contacts``): the
        target images of the learned detector (objects, their contacts cut out).
    layout : list, optional
        Particles to use instead of a random layout (the series mode passes the same
        particles, moved and with their chemistry shifted, to every scan).
    patterns : sequence of str, optional
        Chemistry pattern of each particle, in layout order (repeated cyclically when
        shorter), replacing the default cycle of :data:`PATTERNS`; e.g. the discrete phases
        of :data:`PHASE_PATTERNS` for a known-answer test of phase mapping. Nothing else
        changes: the random draws are those of the scan without it.
    **overrides
        Fields of :class:`SynthParams` replacing those of ``params``.

    Returns
    -------
    SynthStack

    Notes
    -----
    One random generator draws, in this order: the common motion, the layout, each
    particle's own drift, the touching pairs, the fines, the background matrix, the dark
    frame, then frame by frame the matrix brightness, the sample and the flat exposures.
    """
    p = _resolve_params(params, overrides)
    rng = np.random.default_rng(seed)
    energies = ni_energy_grid(p.n_energies)
    nE = p.n_energies
    global_shift = _common_motion(rng, p)
    g_ext = np.abs(global_shift - global_shift.mean(0)).max() if nE > 1 else 0.0
    max_excursion = g_ext + p.drift_range[1] + 2
    drift_max = p.drift_range[1] + 1
    particles = _layout(rng, p, max_excursion, drift_max) if layout is None else list(layout)
    if patterns is not None:
        patterns = [str(v) for v in patterns]
        bad = [v for v in patterns if v not in PATTERNS + PHASE_PATTERNS]
        if bad or not patterns:
            raise ValueError(f"patterns: unknown {bad or patterns}; choose from {list(PATTERNS + PHASE_PATTERNS)}")
        particles = [replace(q, pattern=patterns[i % len(patterns)]) for i, q in enumerate(particles)]
    drifts = _own_drifts(rng, p, len(particles))
    extra = _touching_pairs(rng, p, particles, max_excursion, drift_max)
    fines = _fines(rng, p, particles, drift_max)
    objects = [(q, drifts[i]) for i, q in enumerate(particles)] + extra
    objects += [(q, np.zeros((nE, 2))) for q in fines]
    frames = _render(rng, p, energies, global_shift, g_ext, objects, len(particles), store_clean, store_frame_masks)
    truth = _truth(energies, particles, drifts, global_shift, fines, frames)
    return SynthStack(frames.counts, frames.flats, frames.dark, energies, truth, p, seed)


def _common_motion(rng, p: SynthParams) -> np.ndarray:
    """The rigid (stage/optics) shift of every frame: a random walk with jumps, frame 0 at 0."""
    nE = p.n_energies
    steps = rng.normal(0, p.jitter_step, (nE, 2))
    jumps = rng.random(nE) < p.jump_probability
    steps[jumps] += rng.normal(0, p.jump_size, (int(jumps.sum()), 2))
    steps[0] = 0
    global_shift = np.cumsum(steps, axis=0)
    global_shift -= global_shift.mean(axis=0)
    global_shift -= global_shift[0]
    return global_shift


def _own_drifts(rng, p: SynthParams, n_particles: int) -> list:
    """Each particle's own smooth drift (n_frames, 2); the first particle has none."""
    amps = rng.uniform(*p.drift_range, n_particles)
    if n_particles > 0:
        amps[0] = 0.0  # one particle moves with the global jitter only
    return [_smooth_walk(rng, p.n_energies, a, sigma=rng.uniform(6, 15)) for a in amps]


def _touching_pairs(rng, p: SynthParams, particles, max_excursion, drift_max) -> list:
    """Pairs of particles in contact, moving together (not isolated): ``[(particle, drift), ...]``."""
    ny, nx = p.shape
    extra: list[tuple[_Particle, np.ndarray]] = []
    for _ in range(p.n_touching_pairs):
        r1, r2 = rng.uniform(p.radius_range[0], 0.6 * p.radius_range[1], 2)
        for _try in range(5000):
            c = rng.uniform([r1 + max_excursion + 8] * 2, [ny - r1 - 2 * r2 - max_excursion - 8] * 2)
            a = rng.uniform(0, 2 * np.pi)
            c2 = c + (r1 + r2 - 1.0) * np.array([np.sin(a), np.cos(a)])
            if not (r2 + 4 < c2[0] < ny - r2 - 4 and r2 + 4 < c2[1] < nx - r2 - 4):
                continue
            if all(
                np.hypot(*(q.centre - cc)) > q.extent + rr * 1.2 + p.min_gap + 2 * drift_max
                for q in particles + [e[0] for e in extra]
                for cc, rr in ((c, r1), (c2, r2))
            ):
                break
        else:
            raise ValueError("cannot place touching particle pair: frame too crowded")
        d = _smooth_walk(rng, p.n_energies, rng.uniform(*p.drift_range), 10)
        for cc, rr in ((c, r1), (c2, r2)):
            q = _random_particle(rng, cc, rr, "inactive", isolated=False)
            # exact circles so that the pair touches whatever the harmonics
            extra.append((replace(q, harmonics=q.harmonics * [1, 0, 1]), d))
    return extra


def _fines(rng, p: SynthParams, particles, drift_max) -> list:
    """Small particles (radius 1.5-4 px) fixed to the matrix, away from the particles."""
    ny, nx = p.shape
    fines = []
    for _ in range(p.n_fines):
        for _try in range(2000):
            c = rng.uniform([10, 10], [ny - 10, nx - 10])
            if all(np.hypot(*(q.centre - c)) > q.extent + 6 + drift_max for q in particles):
                break
        fines.append(_random_particle(rng, c, rng.uniform(1.5, 4.0), "inactive", peak_od=rng.uniform(0.3, 0.9)))
    return fines


@dataclass(frozen=True)
class _Rendered:
    """The recorded frames and the per-particle windows of the truth (see :class:`SynthTruth`)."""

    counts: np.ndarray
    flats: np.ndarray
    dark: np.ndarray
    masks: list
    origins: list
    coverage: list | None
    clean: list | None
    frame_masks: np.ndarray | None
    frame_contacts: np.ndarray | None = None


def mark_contacts(owner, contacts, box, inside, label: int) -> None:
    """Record where one object meets those drawn before it in a frame (in place).

    Parameters
    ----------
    owner : ndarray (rows, cols) int32
        The frame's first claimant of each pixel (0: none); the object's pixels grown by
        one are claimed where free.
    contacts : ndarray (rows, cols) bool
        Set where the object's grown pixels meet another object's: the band where two
        objects are within a pixel of each other.
    box : (y0, y1, x0, x1)
        The object's window in the frame.
    inside : ndarray (y1 - y0, x1 - x0) bool
        The object's pixels in the window.
    label : int
        The object's label (> 0, distinct per object).
    """
    y0, y1, x0, x1 = box
    grown = ndimage.binary_dilation(inside, iterations=1)
    region = owner[y0:y1, x0:x1]
    contacts[y0:y1, x0:x1] |= grown & (region > 0) & (region != label)
    region[grown & (region == 0)] = label


def _matrix_texture(rng, p: SynthParams, pad: int) -> np.ndarray:
    """Background matrix (binder/carbon) OD: a smooth texture on the frame plus ``pad`` px each side."""
    ny, nx = p.shape
    bg_tex = ndimage.gaussian_filter(rng.normal(size=(ny + 2 * pad, nx + 2 * pad)), 6)
    bg_tex = (bg_tex - bg_tex.min()) / (np.ptp(bg_tex) + 1e-12)
    return p.background_od * (0.3 + 1.4 * bg_tex)


def _matrix_od(rng, p: SynthParams, bg_tex, g, pad, grid):
    """Frame OD of the matrix, moved by the common shift ``g``, with this frame's brightness and tilt."""
    yy, xx, ycen, xcen = grid
    od = ndimage.map_coordinates(bg_tex, [yy - g[0] + pad, xx - g[1] + pad], order=1, mode="nearest")
    bscale = 1 + p.background_variation * rng.uniform(-1, 1)
    od *= bscale
    od += p.background_od * p.background_variation * (rng.uniform(-1, 1) * ycen + rng.uniform(-1, 1) * xcen)
    return od


def _expose(rng, p: SynthParams, od, k, dark, grid, flat_phase):
    """Sample counts and flat of frame ``k``: illumination of varying intensity and shape, Poisson noise."""
    _, _, ycen, xcen = grid
    fy0, fx0, fs = flat_phase
    ny, nx = p.shape
    t = k / max(p.n_energies - 1, 1)
    shape = 1 + p.flat_shape_variation * (
        np.cos(2 * np.pi * (ycen * (1 + fs) + fy0 + 0.3 * t)) * np.cos(2 * np.pi * (xcen * (1 - fs) + fx0 - 0.2 * t))
        - 0.5 * (ycen**2 + xcen**2) * (1 + 0.5 * np.sin(2 * np.pi * t))
    )
    i0 = p.counts * (1 + 0.1 * np.sin(3 * t + fs)) * shape
    eps = rng.normal(0, p.intensity_jitter)
    counts = (
        rng.poisson(i0 * (1 + eps) * np.exp(-od)).astype(np.float32)
        + dark
        + rng.normal(0, 2.0, (ny, nx)).astype(np.float32)
    )
    flat = rng.poisson(i0 * p.n_ref).astype(np.float32) / p.n_ref + dark
    return counts, flat


def _render(
    rng, p: SynthParams, energies, global_shift, g_ext, objects, n_particles, store_clean, store_frame_masks
) -> _Rendered:
    """Every frame: matrix + objects (particles first, then touching pairs and fines), exposed."""
    nE, (ny, nx) = p.n_energies, p.shape
    refs = ni_references()
    mu_a, mu_b = refs["NiO"](energies), refs["LiNiO2"](energies)
    pre = p.pre_edge_level * (energies / 8333.0) ** -3
    pad = int(np.ceil(g_ext)) + 4
    bg_tex = _matrix_texture(rng, p, pad)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    grid = (yy, xx, (yy - ny / 2) / ny, (xx - nx / 2) / nx)

    dark = (p.dark_level + rng.normal(0, 2.0, (ny, nx))).astype(np.float32)
    counts = np.empty((nE, ny, nx), np.float32)
    flats = np.empty((nE, ny, nx), np.float32)

    # one fixed window per particle for the true masks
    win = [int(np.ceil(q.extent)) + 2 for q, _ in objects]
    masks = [np.zeros((nE, 2 * w + 1, 2 * w + 1), bool) for w in win[:n_particles]]
    origins = [np.zeros((nE, 2), int) for _ in range(n_particles)]
    coverage = [np.zeros(m.shape, np.float16) for m in masks] if store_clean else None
    clean = [np.zeros(m.shape, np.float16) for m in masks] if store_clean else None

    frame_masks = np.zeros((nE, ny, nx), bool) if store_frame_masks else None
    frame_contacts = np.zeros((nE, ny, nx), bool) if store_frame_masks else None
    flat_phase = rng.uniform(-0.2, 0.2, 3)
    for k in range(nE):
        g = global_shift[k]
        od = _matrix_od(rng, p, bg_tex, g, pad, grid)
        owner = np.zeros((ny, nx), np.int32) if store_frame_masks else None
        for i, ((q, d), w) in enumerate(zip(objects, win)):
            c = q.centre + g + d[k]
            iy, ix = int(round(c[0])), int(round(c[1]))
            y0, y1 = max(iy - w, 0), min(iy + w + 1, ny)
            x0, x1 = max(ix - w, 0), min(ix + w + 1, nx)
            if y0 >= y1 or x0 >= x1:
                continue
            ly = yy[y0:y1, x0:x1] - c[0]
            lx = xx[y0:y1, x0:x1] - c[1]
            cover, thick, frac = _particle_fields(q, ly, lx)
            mu = (1 - frac) * mu_a[k] + frac * mu_b[k]
            od[y0:y1, x0:x1] += thick * (pre[k] + mu)
            if frame_masks is not None:
                frame_masks[k, y0:y1, x0:x1] |= cover >= 0.5
                mark_contacts(owner, frame_contacts[k], (y0, y1, x0, x1), cover >= 0.5, i + 1)
            if i < n_particles:
                origins[i][k] = (iy - w, ix - w)
                m = np.zeros((2 * w + 1, 2 * w + 1), bool)
                m[y0 - (iy - w) : y1 - (iy - w), x0 - (ix - w) : x1 - (ix - w)] = cover >= 0.5
                masks[i][k] = m
                if store_clean:
                    sl = (k, slice(y0 - (iy - w), y1 - (iy - w)), slice(x0 - (ix - w), x1 - (ix - w)))
                    coverage[i][sl] = cover
                    clean[i][sl] = thick * (pre[k] + mu)
        counts[k], flats[k] = _expose(rng, p, od, k, dark, grid, flat_phase)
    return _Rendered(counts, flats, dark, masks, origins, coverage, clean, frame_masks, frame_contacts)


def _outline_com(q: _Particle):
    """``(com (2,), radius)``: centre of mass of the outline (8x supersampled) relative to its centre, equivalent radius."""
    ext = int(np.ceil(q.extent)) + 1
    s = np.arange(-ext, ext + 1, 0.125)
    sy, sx = np.meshgrid(s, s, indexing="ij")
    inside = np.hypot(sy, sx) <= q.outline(np.arctan2(sy, sx))
    return np.array([sy[inside].mean(), sx[inside].mean()]), np.sqrt(inside.sum() * 0.125**2 / np.pi)


def _true_edge_map(q: _Particle):
    """``(map, origin)``: the particle's E(mu_norm = 0.5) on the frame-0 pixel grid (NaN outside)."""
    ext = int(np.ceil(q.extent)) + 1
    c = q.centre
    y0, x0 = int(np.floor(c[0])) - ext, int(np.floor(c[1])) - ext
    ly, lx = np.mgrid[y0 : y0 + 2 * ext + 2, x0 : x0 + 2 * ext + 2].astype(float)
    ly -= c[0]
    lx -= c[1]
    cover, _, frac = _particle_fields(q, ly, lx)
    return np.where(cover >= 0.5, edge_energy_of_fraction(frac), np.nan).astype(np.float32), (y0, x0)


def _truth(energies, particles, drifts, global_shift, fines, frames: _Rendered) -> SynthTruth:
    rows = []
    e50_maps, e50_orig, radii = [], [], []
    for i, (q, d) in enumerate(zip(particles, drifts)):
        com_local, radius = _outline_com(q)
        radii.append(radius)
        for k in range(len(energies)):
            pos = q.centre + global_shift[k] + d[k] + com_local
            sh = global_shift[k] + d[k]
            rows.append((i, k, energies[k], pos[0], pos[1], sh[0], sh[1], q.isolated))
        m, origin = _true_edge_map(q)
        e50_maps.append(m)
        e50_orig.append(origin)
    positions = pd.DataFrame(rows, columns=["particle", "frame", "energy_ev", "y", "x", "dy", "dx", "isolated"])
    return SynthTruth(
        positions=positions,
        global_shift=global_shift,
        masks=frames.masks,
        mask_origins=frames.origins,
        edge_maps=e50_maps,
        edge_map_origins=np.array(e50_orig, dtype=float).reshape(-1, 2),
        radii=np.array(radii),
        patterns=[q.pattern for q in particles],
        fines=np.array([[q.centre[0], q.centre[1], q.radius] for q in fines]).reshape(-1, 3),
        coverage=frames.coverage,
        clean=frames.clean,
        frame_masks=frames.frame_masks,
        frame_contacts=frames.frame_contacts,
    )


@dataclass(frozen=True)
class SynthSeries:
    """An operando series: the same particles scanned ``n_scans`` times during a charge.

    Scans are generated on demand by :meth:`scan` (memory is one scan at a time).
    ``truth`` has one row per particle per scan: ``particle, scan, soc, y0, x0``
    (frame-0 centre of mass) and ``mean_e50`` (true mean edge energy, eV, rim of 2 px
    excluded).
    """

    params: SynthParams
    seed: int
    n_scans: int
    base: list
    offsets: np.ndarray  # (n_scans, n_particles, 2): slow deformation + stage offset
    rates: np.ndarray  # (n_particles,): chemistry shift at full charge

    def scan(self, i: int) -> SynthStack:
        if not 0 <= i < self.n_scans:
            raise ValueError(f"scan index {i} outside 0..{self.n_scans - 1}")
        soc = i / max(self.n_scans - 1, 1)
        parts = []
        for j, q in enumerate(self.base):
            chem = dict(q.chem, shift=float(self.rates[j] * soc))
            parts.append(replace(q, centre=q.centre + self.offsets[i, j], chem=chem))
        return make_synthetic_stack(self.params, seed=self.seed * 1000 + i + 1, layout=parts)

    @property
    def truth(self) -> pd.DataFrame:
        from scipy import ndimage as ndi

        rows = []
        for i in range(self.n_scans):
            soc = i / max(self.n_scans - 1, 1)
            for j, q in enumerate(self.base):
                qq = replace(q, chem=dict(q.chem, shift=float(self.rates[j] * soc)))
                ext = int(np.ceil(q.extent)) + 1
                ly, lx = np.mgrid[-ext : ext + 1, -ext : ext + 1].astype(float)
                cover, _, frac = _particle_fields(qq, ly, lx)
                inside = ndi.binary_erosion(cover >= 0.5, iterations=2)
                c = q.centre + self.offsets[i, j]
                rows.append((j, i, soc, c[0], c[1], float(edge_energy_of_fraction(frac[inside]).mean())))
        return pd.DataFrame(rows, columns=["particle", "scan", "soc", "y0", "x0", "mean_e50"])


def make_synthetic_series(
    params: SynthParams | str = "default",
    *,
    n_scans: int = 6,
    seed: int = 0,
    stage_offset: float = 25.0,
    deformation: float = 6.0,
    **overrides,
) -> SynthSeries:
    """A synthetic operando series with ground truth.

    The particles keep their shapes; between scans the electrode deforms slowly (each
    particle's smooth random walk, up to ``deformation`` px over the series) and the
    stage is repositioned (a common offset of up to ``stage_offset`` px); within each
    scan the usual jitter and drift apply. Chemistry follows the state of charge: each
    particle's Ni3+ fraction rises by its own rate (0 for one inactive particle) times
    the state of charge (0 at the first scan, 1 at the last).
    """
    params = _resolve_params(params, overrides)
    if n_scans < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}")
    rng = np.random.default_rng([seed, 7])
    margin = params.jitter_step * 8 + params.jump_size * 2 + stage_offset + params.drift_range[1] + deformation + 4
    base = _layout(rng, params, margin, params.drift_range[1] + deformation + 1)
    n_p = len(base)
    walk = np.stack(
        [_smooth_walk(rng, n_scans, rng.uniform(0.3, 1.0) * deformation, sigma=2.0) for _ in range(n_p)], axis=1
    )
    stage = rng.uniform(-stage_offset, stage_offset, (n_scans, 2))
    stage[0] = 0
    offsets = walk + stage[:, None, :]
    rates = rng.uniform(0.2, 0.7, n_p)
    if n_p:
        rates[int(rng.integers(n_p))] = 0.0
    return SynthSeries(params, seed, n_scans, base, offsets, rates)


def params_dict(p: SynthParams) -> dict:
    """The parameters as a JSON-serialisable dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()}
