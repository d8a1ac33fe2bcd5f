"""Light that is not absorbed (harmonics, stray or scattered light): measured from the particles' thickness.

A share ``f`` of the beam that the sample does not absorb (a harmonic of the monochromator, light scattered around
the zone plate's central stop, a detector's stray light) reaches every pixel: ``I = I0 [(1 - f) exp(-OD) + f]``,
so the measured ``OD_meas = -ln((1 - f) exp(-OD) + f)`` is compressed where the sample is thick. The post-edge OD
is compressed more than the pre-edge OD, the top of the edge more than its foot: the normalised edge leans to
lower energies, more the thicker the pixel. On thick uniform particles 3 % of such light moved E50 by -0.09 to
-0.51 eV (pixel sigma 0.05 eV), gave a pure NiO particle 0.13 LiNiO2, and a uniform particle a 0.2 eV core-to-rim
"gradient"; thickness alone (post-edge OD up to 3.9, ``f = 0``) moved nothing.

Within a particle of one material the pre-edge OD is a fixed share of the post-edge OD whatever its thickness (the
pre-edge is the other shells' and elements' absorption; far above the edge the absorption hardly depends on the
oxidation state). :func:`stray_light_fraction` finds the ``f`` whose correction ``OD = -ln((exp(-OD_meas) - f) /
(1 - f))`` leaves that share the same in thin and thick pixels of every particle (the curvature of the pre-edge OD
against the post-edge OD, over the kept pixels); :func:`flag_stray_light` flags, where ``f`` is measured, the
pixels thick enough for their E50 to move (:func:`stray_e50_bias`, on the scan's energies from the references of
the particles' edge, else from the particles' own mean spectra),
and gives the run's note.

What it can tell apart, measured: the probe's thick scenes (post-edge OD up to 3.9) read -0.002 +- 0.0005 without
such light (uniform, core-shell NiO/LiNiO2 and the default chemistry alike), 0.008-0.013 with 1 % and 0.028-0.029 with
3 %. Thin scenes without it (the default and hard scenes, stress-crowd; post-edge OD up to 1.3-1.4) read 0.04-0.15:
their pre-edge share changes by a few % across a particle for reasons not traced here (the synthetic NiO and
LiNiO2 have the same pre-edge per edge step), which stray light on thin particles cannot be told from (there 3 % moves
E50 by about 0.07 eV at a post-edge OD of 1). So it is said only where it is measured on a
particle with post-edge OD of :data:`SENSITIVITY_OD` or more and explains a change of the share larger than the
thin scenes' (:data:`RATIO_FLOOR`): 3 % on the probe's thick scene is found, 1 % is not; where none is found but
particles are that thick, the note says how much 1 % would move their E50. A chemistry whose pre-edge absorption
per edge step differs between rim and core (real NiO and LiNiO2 differ in their other elements) changes the share
too: on thick particles such a change of more than 7.5 % between thin and thick pixels would read as such light.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

__all__ = ["stray_light_fraction", "stray_e50_bias", "flag_stray_light"]

#: the least share of unabsorbed light that is noted and flagged; the probe's thick scenes (post-edge OD up to 3.9)
#: read -0.0021 +- 0.0005 without it (-0.0020 core-shell, -0.0015 default chemistry), 0.0076 / 0.0132 with 1 % and
#: 0.028-0.029 with 3 %
MIN_FRACTION = 0.01
#: the estimate must also lie this many of its own standard errors above 0
MIN_SIGNIFICANCE = 4.0
#: the particles' own estimates must agree: their mean squared deviation from the pooled estimate, in their standard
#: errors, at most this (the same light for every particle; the probe's thick scenes 1.6-4.9, the default scene
#: seed 1 95-151)
MAX_CHI2 = 10.0
#: the change the estimated share makes to the pre-edge OD's share of the post-edge OD between a particle's thin and
#: thick pixels (``ratio_change`` of :func:`stray_light_fraction`) must reach this in some particle. Scenes without
#: such light change that share by a few % across a particle for other reasons (their estimates 0.04-0.15 read
#: 0.034-0.070 here: default seeds 1-3, hard 1, stress-crowd 1, 256-384 px); the probe's thick scenes with 3 % read
#: 0.091-0.097, with 1 % 0.027-0.029
RATIO_FLOOR = 0.075
#: post-edge OD (measured, the surroundings included): a run is told it holds such light only where a particle's
#: 90th percentile reaches this (the scenes above: 1.27-1.44; the probe's thick scenes 2.2-3.1), and, where none was
#: measured, how much 1 % of it (:data:`SENSITIVITY_FRACTION`) would move E50 of pixels this thick
SENSITIVITY_OD = 2.0
#: the share of unabsorbed light the sensitivity note is computed for
SENSITIVITY_FRACTION = 0.01
#: eV: pixels whose E50 the measured share moves by this much or more (computed from the references on the scan's
#: energies) are flagged ``thick`` and left out of the quality mask; the median pixel sigma of the probe's thick
#: scenes was 0.05 eV
FLAG_BIAS_EV = 0.1
#: the fewest kept pixels of a particle that enter the estimate
MIN_PIXELS = 40
#: the words the run's note begins with
STRAY_NOTE_START = "light that the sample does not absorb"


def _unstray(od, f):
    """The OD without a share ``f`` of unabsorbed light (NaN where the light measured is all of it)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return -np.log((np.exp(-np.asarray(od, float)) - f) / (1.0 - f))


def _stray(od, f):
    """The OD measured with a share ``f`` of unabsorbed light."""
    return -np.log((1.0 - f) * np.exp(-np.asarray(od, float)) + f)


def _frames(energies, p, pre_range, post_range):
    e = np.asarray(energies, float)
    used = np.ones(e.size, bool) if p.xanes_frames is None else np.asarray(p.xanes_frames, bool)
    e0 = float(p.e0_ev)
    pre = used & (e >= e0 + pre_range[0]) & (e <= e0 + pre_range[1])
    post = used & (e >= e0 + post_range[0])
    return pre, post


def _particle_samples(energies, particles, pre_range, post_range):
    """Per particle: (pre-edge OD (n_frames_pre, n_px), background there, post-edge OD, background), kept pixels."""
    from ..morph import frame_blocks
    from ..xanes import BLOCK_PX, local_background

    out = []
    for p in particles:
        keep = p.maps.get("quality_keep") if p.maps else None
        if keep is None or p.aligned is None or not np.isfinite(p.e0_ev):
            continue
        keep = np.asarray(keep, bool) & np.asarray(p.mask, bool)
        if keep.sum() < MIN_PIXELS:
            continue
        pre, post = _frames(energies, p, pre_range, post_range)
        if pre.sum() < 2 or post.sum() < 2:
            continue
        # the frames used only, a block of them at a time (the background is a plane per frame, fitted frame by
        # frame), their kept pixels kept: the aligned stack in float64 and its background were the run's peak on a
        # 1024^2 scan with large particles (the largest's 307 px windows, 143 frames: 2 x 103 MiB beside its
        # local_background's work, every particle's results held; the frames used in float64 at once, 190 MiB)
        used = np.flatnonzero(pre | post)
        pre, post = pre[used], post[used]
        mask = np.asarray(p.mask, bool)
        a = np.empty((used.size, int(keep.sum())))
        bg = np.empty(a.shape, np.float32)
        for b in frame_blocks(used.size, mask.size, BLOCK_PX):
            block = np.asarray(p.aligned[used[b]], float)
            a[b] = block[:, keep]
            bg[b] = local_background(block, mask, exclude=p.background_exclude)[:, keep]
            del block
        ok = np.all(np.isfinite(a), axis=0)
        if ok.sum() < MIN_PIXELS:
            continue
        out.append((a[pre][:, ok], bg[pre][:, ok], a[post][:, ok], bg[post][:, ok]))
    return out


def _curvature(samples, f):
    """Each particle's curvature of pre-edge OD against post-edge OD (per OD) after undoing ``f``, and its error."""
    ks, ses = [], []
    for mp, bp, mq, bq in samples:
        y = np.mean(_unstray(mp, f) - _unstray(bp, f), axis=0)
        x = np.mean(_unstray(mq, f) - _unstray(bq, f), axis=0)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        if ok.sum() < MIN_PIXELS:
            ks.append(np.nan)
            ses.append(np.nan)
            continue
        x, y = x[ok], y[ok]
        s = np.median(x)
        xs = x / s
        design = np.stack([np.ones_like(xs), xs, xs**2], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ coef
        # a robust scale of the residuals: an outlier pixel (a speck, a rim) does not set every weight
        sig = 1.4826 * np.median(np.abs(resid - np.median(resid)))
        cov = np.linalg.pinv(design.T @ design) * sig**2
        slope = coef[1] + 2 * coef[2]  # dy/dxs at the median thickness
        if not slope > 0:
            ks.append(np.nan)
            ses.append(np.nan)
            continue
        ks.append(coef[2] / slope / s)
        ses.append(np.sqrt(cov[2, 2]) / slope / s)
    return np.array(ks), np.array(ses)


def _pooled(samples, f):
    k, se = _curvature(samples, f)
    ok = np.isfinite(k) & np.isfinite(se) & (se > 0)
    if not ok.any():
        return np.nan, np.nan
    w = 1.0 / se[ok] ** 2
    return float(np.sum(w * k[ok]) / np.sum(w)), float(1.0 / np.sqrt(np.sum(w)))


def stray_light_fraction(energies_ev, particles, *, pre_range=(-150.0, -30.0), post_range=(100.0, None)) -> dict:
    """The share of the beam the sample does not absorb, from how the particles' pre-edge OD follows their thickness.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    particles : list of ParticleResult
        With ``aligned`` (OD), ``mask``, ``e0_ev`` and ``maps["quality_keep"]``; particles with fewer than
        :data:`MIN_PIXELS` kept pixels, or without two pre-edge and two post-edge frames, are left out.
    pre_range, post_range : (float, float)
        eV relative to each particle's E0: the frames averaged as its pre-edge and its post-edge OD.

    Returns
    -------
    dict
        ``fraction`` (the share, NaN where no particle could be used), ``sigma`` (its standard error),
        ``n_particles`` used.

    Notes
    -----
    Each pixel's pre-edge OD ``y`` and post-edge OD ``x`` (each less its local background,
    :func:`xanestrack.xanes.local_background`) are corrected for a share ``f``; ``y = c0 + c1 x + c2 x^2`` is fitted
    over a particle's kept pixels, and ``c2`` relative to the slope is its curvature (per OD). Light not absorbed
    bends ``y`` upwards at large ``x``; ``f`` is where the particles' curvatures, weighted by their errors, average
    to 0 (bisection on -0.05..0.3). ``sigma`` is the pooled curvature's error carried through its slope in ``f``.
    """
    samples = _particle_samples(energies_ev, particles, pre_range, post_range)
    nan = float("nan")
    if not samples:
        return dict(fraction=nan, sigma=nan, n_particles=0, per_particle=[], chi2=nan, ratio_change=nan, thickest=nan)
    f, sigma = _solve(samples)
    each = [_solve([s]) for s in samples]
    fi = np.array([v[0] for v in each])
    si = np.array([v[1] for v in each])
    ok = np.isfinite(fi) & np.isfinite(si) & (si > 0)
    chi2 = float(np.mean(((fi[ok] - f) / si[ok]) ** 2)) if ok.sum() >= 2 and np.isfinite(f) else nan
    return dict(
        fraction=f,
        sigma=sigma,
        n_particles=len(samples),
        per_particle=[(float(a), float(b)) for a, b in each],
        chi2=chi2,
        ratio_change=_ratio_change(samples, max(f, 0.0)) if np.isfinite(f) else nan,
        thickest=float(max(np.quantile(np.mean(mq, axis=0), 0.9) for _, _, mq, _ in samples)),
    )


def _thickest(energies_ev, particles, *, pre_range=(-150.0, -30.0), post_range=(100.0, None)) -> float:
    """The largest, over the particles, of the 90th percentile of their kept pixels' mean post-edge OD (as
    :func:`stray_light_fraction`'s ``thickest``, without the background taken off: its upper bound), 0 without any."""
    best = 0.0
    for p in particles:
        keep = p.maps.get("quality_keep") if p.maps else None
        if keep is None or p.aligned is None or not np.isfinite(p.e0_ev):
            continue
        keep = np.asarray(keep, bool) & np.asarray(p.mask, bool)
        _, post = _frames(energies_ev, p, pre_range, post_range)
        if keep.sum() < MIN_PIXELS or post.sum() < 2:
            continue
        v = np.mean(np.asarray(p.aligned[post][:, keep], float), axis=0)  # those pixels in float64, not the stack
        v = v[np.isfinite(v)]
        if v.size:
            best = max(best, float(np.quantile(v, 0.9)))
    return best


def _solve(samples) -> tuple[float, float]:
    """``(f, sigma)`` where the pooled curvature of ``samples`` is 0 (bisection), NaN where it cannot be found.

    The share cannot exceed the light that reaches the darkest pixels: the bracket ends at 0.9 times the 0.1st
    percentile of the pixels' post-edge transmission (at most 0.3)."""
    nan = float("nan")
    t = np.concatenate([np.exp(-np.asarray(mq, float)).ravel() for _, _, mq, _ in samples])
    lo, hi = -0.05, float(min(0.3, 0.9 * np.quantile(t[np.isfinite(t)], 0.001)))
    k_lo, _ = _pooled(samples, lo)
    k_hi, _ = _pooled(samples, hi)
    if not (np.isfinite(k_lo) and np.isfinite(k_hi)):
        return nan, nan
    if k_lo <= 0:
        f = lo
    elif k_hi >= 0:
        f = hi
    else:
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            k_mid, _ = _pooled(samples, mid)
            if not np.isfinite(k_mid):
                break
            if k_mid > 0:
                lo = mid
            else:
                hi = mid
        f = 0.5 * (lo + hi)
    step = 0.002
    k0, se0 = _pooled(samples, f - step)
    k1, _ = _pooled(samples, f)
    dk = (k1 - k0) / step
    sigma = float(abs(se0 / dk)) if np.isfinite(dk) and dk != 0 else nan
    return float(f), sigma


def _ratio_change(samples, f) -> float:
    """The largest change, over the particles, of the pre-edge OD's share of the post-edge OD that a share ``f`` of
    unabsorbed light makes between a particle's thin pixels and its thick ones (10th and 90th percentile of the
    post-edge OD): what the estimate rests on, to be set against what chemistry alone does
    (:data:`RATIO_FLOOR`)."""
    out = 0.0
    for mp, _, mq, _ in samples:
        y, x = np.mean(mp, axis=0), np.mean(mq, axis=0)
        yc, xc = np.mean(_unstray(mp, f), axis=0), np.mean(_unstray(mq, f), axis=0)
        ok = np.isfinite(x) & np.isfinite(xc) & np.isfinite(y) & np.isfinite(yc) & (x > 0) & (y > 0)
        if ok.sum() < MIN_PIXELS:
            continue
        share = (yc[ok] / xc[ok]) / (y[ok] / x[ok])  # how much the light lowered the post-edge OD against the pre-edge
        lo, hi = np.quantile(x[ok], [0.1, 0.9])
        thin, thick = np.median(share[x[ok] <= lo]), np.median(share[x[ok] >= hi])
        out = max(out, float(thin / thick - 1.0))
    return out


def _shapes(energies, references, particles) -> dict:
    """Normalised spectra (pre-edge 0, step 1) on the scan's energies: the references, else the particles' means."""
    from ..spectra import ReferenceSpectrum

    e = np.asarray(energies, float)
    out = {}
    for name, ref in (references or {}).items():
        if isinstance(ref, ReferenceSpectrum) and ref.energies_ev.size >= 8:
            inside = (e >= ref.energies_ev[0]) & (e <= ref.energies_ev[-1])
            if inside.sum() >= 8:
                out[str(name)] = (e[inside], np.asarray(ref(e[inside]), float))
    if not out:
        for p in particles:
            m = np.asarray(p.mean_norm, float)
            if m.shape == e.shape and np.isfinite(m).sum() >= 8:
                ok = np.isfinite(m)
                out[f"particle {p.particle}"] = (e[ok], m[ok])
    return out


def _source(bias: dict) -> str:
    """What :func:`stray_e50_bias`'s numbers ``bias`` were computed from, in the notes' words (:func:`_shapes`): the
    references, else the particles' own mean spectra (a Co-only run's note said "from the references" where the
    particles' own were used)."""
    names = list(bias)
    if names and all(n.startswith("particle ") for n in names):
        return "the particles' own mean spectra on this scan's energies, no references being of their edge"
    return "the references on this scan's energies"


def _e50(e, od, *, scan_energies_ev):
    """E50 of one OD spectrum as the pipeline measures it."""
    from ..xanes import edge_energy, find_e0, normalize

    nm = normalize(e, od, e0_ev=find_e0(e, od))
    return edge_energy(e, nm.norm[:, None], e0_ev=nm.e0_ev, scan_energies_ev=scan_energies_ev)[0][0]


def stray_e50_bias(
    energies_ev, references, fraction, *, post_od=(0.5, 1.0, 1.5, 2.0, 3.0), background=None, particles=()
):
    """How far a share ``fraction`` of unabsorbed light moves E50, by the pixel's measured post-edge OD.

    Each reference (normalised; a callable without energies of its own is left out, and without any the particles'
    mean normalised spectra are used), with :data:`xanestrack.chemistry.normbias.BACKGROUND_AT_EDGE` (or
    ``background``) of its step under it falling as E^-3, is made thick enough for its measured OD averaged over
    E0 + 100 eV and above to be each of ``post_od``, measured with the light, and its E50 found as the pipeline's
    (:func:`~xanestrack.xanes.find_e0`, :func:`~xanestrack.xanes.normalize`,
    :func:`~xanestrack.xanes.edge_energy` on the scan's energies), against the same without it.

    Returns
    -------
    dict of name -> ndarray (len(post_od),)
        eV (negative: measured lower); NaN where it could not be measured.
    """
    from ..xanes import find_e0
    from .normbias import BACKGROUND_AT_EDGE

    bg = BACKGROUND_AT_EDGE if background is None or not np.isfinite(background) else float(background)
    out = {}
    for name, (e, mu) in _shapes(energies_ev, references, particles).items():
        try:
            e0 = find_e0(e, mu)
        except ValueError:
            continue
        unit = mu + bg * (e / e0) ** -3
        post = e >= e0 + 100.0
        if post.sum() < 2:
            continue

        e50 = functools.partial(_e50, e, scan_energies_ev=np.asarray(energies_ev, float))

        vals = []
        for target in post_od:
            try:
                # the thickness whose measured post-edge OD is the target: the measured OD rises monotonically with it
                lo, hi = 0.0, 50.0
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    if np.mean(_stray(mid * unit[post], fraction)) < target:
                        lo = mid
                    else:
                        hi = mid
                if hi >= 49.0:  # the light not absorbed caps the OD below the target
                    vals.append(np.nan)
                    continue
                vals.append(float(e50(_stray(lo * unit, fraction)) - e50(lo * unit)))
            except ValueError:
                vals.append(np.nan)
        out[name] = np.array(vals)
    return out


def flag_stray_light(particles, energies_ev, references=None, *, background=None) -> tuple[list, str, dict]:
    """Measure the light not absorbed; where it is, flag the pixels whose E50 it moves and give the run's note.

    Parameters
    ----------
    particles : list of ParticleResult
    energies_ev : ndarray (n,)
    references : dict of name -> ReferenceSpectrum, optional
        The E50 bias is computed from them (:func:`stray_e50_bias`).
    background : float, optional
        The particles' pre-edge absorbance under their edge step, as a share of it at E0.

    Returns
    -------
    particles : list
        Where light not absorbed is measured (:func:`stray_light_fraction`: at least :data:`MIN_FRACTION`,
        :data:`MIN_SIGNIFICANCE` standard errors, the particles agreeing within :data:`MAX_CHI2`, a change of the
        pre-edge share of :data:`RATIO_FLOOR` or more, a particle as thick as :data:`SENSITIVITY_OD`), copies whose mask
        pixels with a measured post-edge OD (averaged over E0 + 100 eV and above, the surroundings included) at or
        above the OD where the bias reaches :data:`FLAG_BIAS_EV` carry :data:`xanestrack.xanes.FLAG_THICK` and are
        out of ``maps["quality_keep"]``; else the particles as given.
    note : str
        The run's note; where nothing was measured, a note on how much :data:`SENSITIVITY_FRACTION` of such light
        would move E50 where particles are thick (post-edge OD :data:`SENSITIVITY_OD` or more), else ``""``.
    estimate : dict
        :func:`stray_light_fraction`'s, with ``detected``, ``flag_post_od`` and ``n_flagged``.
    """
    from ..xanes import FLAG_THICK

    nan = float("nan")
    thick = _thickest(energies_ev, particles)
    if not thick >= SENSITIVITY_OD:
        # no particle thick enough for this light to be told (a condition of its detection below): not sought (its
        # search cost 0.4-0.6 s of 143 x 460^2, the default scene, 9 particles)
        est = dict(fraction=nan, sigma=nan, n_particles=0, per_particle=[], chi2=nan, ratio_change=nan)
        est.update(thickest=thick, detected=False, flag_post_od=nan, n_flagged=0)
        return list(particles), _sensitivity_note(particles, energies_ev, references, background), est
    est = stray_light_fraction(energies_ev, particles)
    f, sig, chi2 = est["fraction"], est["sigma"], est["chi2"]
    detected = bool(
        np.isfinite(f)
        and np.isfinite(sig)
        and f >= MIN_FRACTION
        and f >= MIN_SIGNIFICANCE * sig
        and chi2 <= MAX_CHI2
        and est["ratio_change"] >= RATIO_FLOOR
        and est["thickest"] >= SENSITIVITY_OD
    )
    est = dict(est, detected=detected, flag_post_od=float("nan"), n_flagged=0)
    if not detected:
        return list(particles), _sensitivity_note(particles, energies_ev, references, background), est
    grid = np.round(np.arange(0.25, 5.01, 0.25), 2)
    bias = stray_e50_bias(energies_ev, references, f, post_od=grid, background=background, particles=particles)
    table = np.array(list(bias.values())) if bias else np.full((1, grid.size), np.nan)
    with warnings.catch_warnings():  # an OD the light caps below a value of the grid: NaN there
        warnings.simplefilter("ignore", RuntimeWarning)
        worst = np.nanmax(np.abs(table), axis=0) if np.isfinite(table).any() else np.full(grid.size, np.nan)
    with np.errstate(invalid="ignore"):
        above = grid[worst >= FLAG_BIAS_EV]
    limit = float(above[0]) if above.size else float("inf")
    out, n_flag, n_px, thickest = [], 0, 0, 0.0
    for p in particles:
        keep = p.maps.get("quality_keep") if p.maps else None
        if keep is None or p.aligned is None or not np.isfinite(p.e0_ev):
            out.append(p)
            continue
        od = _post_edge_od(p, energies_ev)
        if od is None:
            out.append(p)
            continue
        mask = np.asarray(p.mask, bool)
        n_px += int(mask.sum())
        thickest = max(thickest, float(np.nanmax(np.where(mask, od, np.nan))) if mask.any() else 0.0)
        hit = mask & (od >= limit)
        if not hit.any():
            out.append(p)
            continue
        n_flag += int(hit.sum())
        flags = np.array(p.pixel_flags, dtype=np.uint16, copy=True)  # uint16: the misfit bit (256) survives
        flags[hit] |= FLAG_THICK
        maps = dict(p.maps)
        maps["quality_keep"] = np.asarray(keep, bool) & ~hit
        out.append(dataclasses.replace(p, pixel_flags=flags, maps=maps))
    est.update(flag_post_od=limit, n_flagged=n_flag)
    at = [(x, worst[grid == x][0]) for x in (1.0, 2.0, 3.0) if np.isfinite(worst[grid == x][0])]
    words = ", ".join(f"{b:.2f} eV at a post-edge OD of {x:.0f}" for x, b in at)
    where = (
        f"{n_flag} of the particles' {n_px} pixels, whose post-edge OD (averaged from E0 + 100 eV, the surroundings "
        f"included) is {limit:.2f} or more, are flagged thick in pixel_flags and left out of quality_keep and the means"
        if np.isfinite(limit)
        else "no pixel is thick enough for its E50 to move by " + f"{FLAG_BIAS_EV} eV, and none is flagged"
    )
    note = (
        f"{STRAY_NOTE_START} seems to reach the detector: about {100 * f:.1f} % (+- {100 * sig:.1f} %) of the beam, "
        f"measured from how the particles' pre-edge OD falls behind their post-edge OD as they get thicker, alike in "
        f"{est['n_particles']} particles (thickness alone leaves that share alone). Such light (a harmonic of the "
        "monochromator, light scattered past the zone plate's central stop, the detector's stray light) compresses "
        "the OD where the sample is thick, more above the edge than below: E50 reads low, more the thicker the pixel, "
        "so a uniform particle shows a core-to-rim 'gradient' and like particles of different thickness differ. From "
        f"{_source(bias)} with that share, E50 moves by up to {words or 'an unmeasured amount'} "
        f"(the thickest pixel's post-edge OD is {thickest:.1f}); {where}. The thinner pixels' E50 and fractions are "
        "moved less, and not corrected. Check the harmonic rejection (detune the monochromator, use a mirror), the "
        "order-sorting aperture and the dark frames, or image thinner regions (post-edge OD below 1.5)"
    )
    return out, note, est


def _post_edge_od(p, energies_ev):
    """The particle's measured OD averaged over its frames from E0 + 100 eV (h, w), or None."""
    if p.aligned is None or not np.isfinite(p.e0_ev):
        return None
    _, post = _frames(energies_ev, p, (-150.0, -30.0), (100.0, None))
    if post.sum() < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(p.aligned[post], float), axis=0)  # those frames in float64, not the stack


def _sensitivity_note(particles, energies_ev, references, background) -> str:
    """Where no unabsorbed light was measured but particles are thick (post-edge OD :data:`SENSITIVITY_OD` or more):
    how much :data:`SENSITIVITY_FRACTION` of it would move their E50, else ``""``."""
    ods = []
    for p in particles:
        od = _post_edge_od(p, energies_ev)
        if od is not None and p.mask is not None and np.asarray(p.mask, bool).any():
            ods.append(np.where(np.asarray(p.mask, bool), od, np.nan))
    if not ods:
        return ""
    n_thick = sum(int(np.count_nonzero(o >= SENSITIVITY_OD)) for o in ods)
    if not n_thick:
        return ""
    top = float(max(np.nanquantile(o, 0.99) for o in ods if np.isfinite(o).any()))
    grid = (SENSITIVITY_OD, top)
    bias = stray_e50_bias(
        energies_ev, references, SENSITIVITY_FRACTION, post_od=grid, background=background, particles=particles
    )
    table = np.array(list(bias.values())) if bias else np.full((1, 2), np.nan)
    if not np.isfinite(table).any():
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        worst = np.nanmax(np.abs(table), axis=0)
    n_part = sum(1 for o in ods if np.any(o >= SENSITIVITY_OD))
    return (
        f"{STRAY_NOTE_START} was not measured, but {n_part} particle{' is' if n_part == 1 else 's are'} thick "
        f"({n_thick} pixels with a post-edge OD "
        f"of {SENSITIVITY_OD:.0f} or more, up to {top:.1f}, the surroundings included), where E50 is sensitive to it: "
        f"{100 * SENSITIVITY_FRACTION:.0f} % of the beam not absorbed (harmonics, stray light), too little to be "
        f"measured here, would move E50 down by {worst[0]:.2f} eV at a post-edge OD of {SENSITIVITY_OD:.0f} and "
        f"{worst[1]:.2f} eV at {top:.1f} (from {_source(bias)}), more the thicker the pixel. "
        "Compare like particles of like thickness, or image thinner regions (post-edge OD below 1.5)"
    )
