"""What the stress family allows: each isolated particle's Cramer-Rao bound beside what the pipeline reaches.

Usage: python benchmarks/bench_stress_limits.py [--cases stress-counts stress-all] [--seeds 1]
           [--path learned|classical|none] [--out limits.csv]

For every isolated particle of a stress scene (:mod:`xanestrack.synth_stress`):

- ``crlb_frame_px``: the Cramer-Rao bound of its position in one frame, RMS over the frames (2-D: the square
  root of the trace of the inverse Fisher information ``sum grad(mu) grad(mu)^T / var``), for a known template:
  ``mu`` the particle's own optical density (the scene drawn again without noise, matrix texture, ghosts, flat-field
  mismatch or beam changes; the particle's pixels and 3 px around it), ``var`` the Poisson variance of the OD,
  ``(1 + 1/n_ref) / (counts exp(-OD))`` with the OD of every absorber (vignetting, dark and read noise left out:
  the bound is optimistic); ``crlb_pre_edge_px`` the same over the frames below 8330 eV;
- ``crlb_prior_px``: the same with the particle's own motion as a random walk of its true mean squared step
  (a Rauch-Tung-Striebel smoother per axis; the common motion taken as known): what smoothing across the energies
  can reach with a perfect motion model. A random walk of the true mean squared step is not the scene model's motion:
  its walk is smoothed (over ``drift_smooth`` frames: steps about a tenth of the walk's, correlated, the path nearly
  straight over a few frames, its excursion the walk's), which a smoother knowing it uses;
- ``crlb_drift_px``: the same with the prior the scene model draws the own motion from (``synth_stress._drift``: a
  smoothed random walk; its exact Gaussian covariance, at 0.6 of the case's step, the least the model draws, so that
  no draw's bound is lower; 0 for a particle fixed to the matrix), the track's mean removed as the RMS is
  (the posterior variance of a Gaussian motion seen with each frame's Cramer-Rao variance: the Bayesian bound);
- ``own_motion_px``: the 90th percentile of its own motion's distance from its median (the truth);
- with ``--path``: the pipeline's RMS for the particle (default options; mean removed, as
  :func:`xanestrack.evaluate.evaluate_tracking`) on the scene as drawn (``rms_px``) and drawn without photon noise
  (``counts`` 10^6, every other stressor kept: ``rms_noise_free_px``). Where the two agree the error is not noise;
  where ``rms_px`` is far above ``crlb_drift_px`` the method, not the photons, limits;
- with ``--path``, where the gap between ``rms_px`` and the bound lies: ``edge_pre_edge_px`` and
  ``edge_post_edge_px``, the RMS error of the pipeline's per-frame edge estimate (``edge_y, edge_x`` in tracks.csv, the
  track's mean removed) below and above 8330 eV, against ``crlb_pre_edge_px`` (the estimator's own share); and
  ``edge_smoothed_bound_px``, ``crlb_drift_px`` with the edge estimate's own error variance (below and above 8330 eV)
  in place of the Cramer-Rao one: the best any smoothing of these estimates can reach with the scene model's prior.
  Where ``rms_px`` is near it and it is far above ``crlb_drift_px``, the per-frame estimate, not the smoothing, limits;
- with ``--path``, how much of the particle's own motion the pipeline reports (:func:`own_motion_response`):
  ``own_sd_px`` the RMS of its true motion relative to the other tracked particles, ``own_response`` the slope of
  the reported relative motion on the true one (1: reported in full; below 1: pulled towards the common motion, an
  underestimate of the deformation), over all frames and over the frames below / above 8330 eV. Meaningful where
  ``own_sd_px`` stands well above ``rms_px``.

Seeds must be below 100 (the models are trained on seeds >= 100).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

import numpy as np

PRE_EDGE_EV = 8330.0
EDGE_COLUMNS = ["edge_pre_edge_px", "edge_post_edge_px", "edge_smoothed_bound_px"]
RESPONSE_COLUMNS = ["own_sd_px", "own_response", "own_response_pre_edge", "own_response_post_edge"]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _rts_variance(sig2, q):
    """Posterior variance per step of a random walk (step variance ``q``) observed with variances ``sig2``."""
    m = len(sig2)
    filt, pred = np.empty(m), np.empty(m)
    prev = 1e12
    for k in range(m):
        pred[k] = prev + (q if k else 0.0)
        filt[k] = 1.0 / (1.0 / pred[k] + 1.0 / sig2[k])
        prev = filt[k]
    smooth = filt.copy()
    for k in range(m - 2, -1, -1):
        a = filt[k] / pred[k + 1]
        smooth[k] = filt[k] + a * a * (smooth[k + 1] - pred[k + 1])
    return smooth


def _drift_prior(n, step_sd, smooth):
    """Covariance (n, n), per axis, of the scene model's own drift (``synth_stress._drift``): a random walk of steps
    of sd ``step_sd`` from frame 0, smoothed over ``smooth`` frames (Gaussian, ``mode="nearest"``), less its frame 0."""
    from scipy import ndimage

    walk = np.tril(np.ones((n, n)))  # steps -> walk
    if smooth > 0:
        walk = ndimage.gaussian_filter1d(walk, smooth, axis=0, mode="nearest")
    walk = walk - walk[0]
    return step_sd**2 * walk @ walk.T


def _gp_variance(var, prior, diffuse=1e4):
    """Per-frame variance, mean over the frames removed, of the posterior of a Gaussian motion with covariance
    ``prior`` (its constant offset unknown: ``diffuse``) observed with independent variances ``var`` (n,)."""
    c = prior + diffuse
    post = c - c @ np.linalg.solve(c + np.diag(var), c)
    centred = post - post.mean(axis=0) - post.mean(axis=1)[:, None] + post.mean()
    return np.clip(np.diag(centred), 0.0, None)


def particle_bounds(case: str, seed: int) -> list[dict]:
    """The bounds of every isolated particle of one stress scene (see the module docstring)."""
    from scipy import ndimage

    from xanestrack.synth_stress import STRESS_CASES, make_stress_stack

    p = STRESS_CASES[case]
    scene = make_stress_stack(case, seed)
    quiet = dict(counts=1e9, flat_shift_px=0.0, flat_phase_sd=0.0, beam_jitter=0.0, beam_dip_probability=0.0)
    alone = make_stress_stack(case, seed, matrix_od=0.0, ghost_jump=0.0, **quiet)
    every = make_stress_stack(case, seed, **quiet)
    truth = scene.truth
    for other in (alone, every):  # the noise draws differ, the scene must not
        if not np.allclose(other.truth.positions[["y", "x"]].to_numpy(), truth.positions[["y", "x"]].to_numpy()):
            raise RuntimeError("the noise-free scenes moved the particles: the bound would be of another scene")
    pad = 12
    od_p = np.pad(alone.optical_density().astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    od_all = np.pad(every.optical_density().astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    n, H, W = od_p.shape[0], od_p.shape[1] - 2 * pad, od_p.shape[2] - 2 * pad
    g, s = truth.global_shift, truth.scale
    centre = (np.array([H, W]) - 1) / 2
    var_per_count = (1.0 + 1.0 / p.n_ref) / p.counts
    pre = scene.energies_ev < PRE_EDGE_EV
    rows, priors = [], {}
    for i in sorted(truth.positions["particle"].unique()):
        t = truth.positions[truth.positions["particle"] == i].sort_values("frame")
        if not t["isolated"].all():
            continue
        pos = t[["y", "x"]].to_numpy(float)
        own = (pos - g - centre) / s[:, None]
        own -= np.median(own, axis=0)
        q = np.mean(np.diff(own, axis=0) ** 2, axis=0)
        var = np.empty((n, 2))
        for k in range(n):
            m = ndimage.binary_dilation(np.pad(truth.masks[i][k], 3), iterations=3)
            y0, x0 = truth.mask_origins[i][k] - 3 + pad
            h, w = m.shape
            mu = od_p[k, y0 - 1 : y0 + h + 1, x0 - 1 : x0 + w + 1]
            gy, gx = (d[1:-1, 1:-1] for d in np.gradient(mu))
            weight = m / (var_per_count * np.exp(od_all[k, y0 : y0 + h, x0 : x0 + w]))
            fisher = np.array(
                [
                    [np.sum(weight * gy * gy), np.sum(weight * gy * gx)],
                    [np.sum(weight * gy * gx), np.sum(weight * gx * gx)],
                ]
            )
            var[k] = np.diag(np.linalg.inv(fisher))
        prior = _rts_variance(var[:, 0], max(q[0], 1e-10)) + _rts_variance(var[:, 1], max(q[1], 1e-10))
        still = not np.any(np.abs(own - own[0]) > 1e-6)  # fixed to the matrix: no own motion drawn
        # the smallest step the model draws (0.6 of the case's): the least motion, so the lowest bound of any draw
        drift = np.zeros((n, n)) if still else _drift_prior(n, 0.6 * p.drift_step_sd, p.drift_smooth)
        drawn = _gp_variance(var[:, 0], drift) + _gp_variance(var[:, 1], drift)
        priors[int(i)] = drift
        rows.append(
            dict(
                case=case,
                seed=seed,
                truth_particle=int(i),
                radius_px=float(truth.radii[i]),
                own_motion_px=float(np.percentile(np.hypot(*own.T), 90)),
                crlb_frame_px=float(np.sqrt(np.mean(var.sum(axis=1)))),
                crlb_pre_edge_px=float(np.sqrt(np.mean(var[pre].sum(axis=1)))) if pre.any() else np.nan,
                crlb_prior_px=float(np.sqrt(np.mean(prior))),
                crlb_drift_px=float(np.sqrt(np.mean(drawn))),
                _prior=drift,
            )
        )
    return rows


def pipeline_rms(case: str, seed: int, path: str, **overrides) -> dict:
    """``{truth particle: RMS px}`` of the isolated particles the pipeline tracked (default options)."""
    from xanestrack.evaluate import evaluate_tracking
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth_stress import make_stress_stack

    scene = make_stress_stack(case, seed, **overrides)
    opts = PipelineOptions()
    det, seg = pipeline_models(path, path, options=opts)
    result = run_pipeline(scene.stack(), options=opts, detector=det, segmenter=seg)
    table, _ = evaluate_tracking(result, scene.truth)
    found = table[table["isolated"] & table["rms_px"].notna()]
    out = {int(t): dict(rms_px=float(r)) for t, r in zip(found["truth_particle"], found["rms_px"])}
    pre = scene.energies_ev < PRE_EDGE_EV
    tp = scene.truth.positions
    for t, p in zip(found["truth_particle"].astype(int), found["particle"].astype(int)):
        rows = result.tracks[result.tracks["particle"] == p].sort_values("frame")
        err = rows[["edge_y", "edge_x"]].to_numpy(float) - tp[tp["particle"] == t].sort_values("frame")[
            ["y", "x"]
        ].to_numpy(float)
        ok = np.all(np.isfinite(err), axis=1)
        if ok.sum() < 2:
            continue
        err -= err[ok].mean(axis=0)
        var = np.full(len(err), 1e6)  # per axis; a frame not measured tells nothing
        for sel, name in ((pre, "edge_pre_edge_px"), (~pre, "edge_post_edge_px")):
            if (sel & ok).any():
                out[t][name] = float(np.sqrt(np.mean(np.sum(err[sel & ok] ** 2, axis=1))))
                var[sel & ok] = np.mean(err[sel & ok] ** 2)
        out[t]["_edge_var"] = var
    for t, resp in own_motion_response(result, table, scene.truth, scene.energies_ev < PRE_EDGE_EV).items():
        out.setdefault(t, {}).update(resp)
    return out


def own_motion_response(result, table, truth, pre) -> dict:
    """``{truth particle: {own_response, own_response_pre_edge, own_response_post_edge}}``.

    A particle's own motion here is its position less the mean position of the other particles
    the pipeline tracked through every frame (the same particles for the truth and for the
    reported positions, so that the common motion and its estimate drop out alike). The response
    is the least-squares slope of the reported own motion on the true one (both axes, each
    frame range's mean removed): 1 where the pipeline reports the particle's motion in full,
    below 1 where something fixed to the matrix or the window pulls it towards the common motion.
    """
    paired = table[table["particle"].notna() & table["tracked_all"].fillna(False).astype(bool)]
    if len(paired) < 3:
        return {}
    tp = truth.positions
    rep, true = {}, {}
    for t, p in zip(paired["truth_particle"].astype(int), paired["particle"].astype(int)):
        r = result.tracks[result.tracks["particle"] == p].sort_values("frame")[["y", "x"]].to_numpy(float)
        q = tp[tp["particle"] == t].sort_values("frame")[["y", "x"]].to_numpy(float)
        if r.shape == q.shape and np.isfinite(r).all():
            rep[t], true[t] = r - r.mean(axis=0), q - q.mean(axis=0)
    out = {}
    for t in table.loc[table["isolated"] & table["rms_px"].notna(), "truth_particle"].astype(int):
        others = [o for o in rep if o != t]
        if t not in rep or len(others) < 2:
            continue
        a = true[t] - np.mean([true[o] for o in others], axis=0)
        b = rep[t] - np.mean([rep[o] for o in others], axis=0)
        resp = {}
        for name, sel in (("", np.ones(len(a), bool)), ("_pre_edge", pre), ("_post_edge", ~pre)):
            if sel.sum() < 3:
                resp[f"own_response{name}"] = np.nan
                continue
            da, db = a[sel] - a[sel].mean(axis=0), b[sel] - b[sel].mean(axis=0)
            resp[f"own_response{name}"] = float(np.sum(da * db) / np.sum(da * da))
        resp["own_sd_px"] = float(np.sqrt(np.mean(np.sum((a - a.mean(axis=0)) ** 2, axis=1))))
        out[t] = resp
    return out


def main(argv=None) -> int:
    from xanestrack.synth_stress import STRESS_CASES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["stress-counts", "stress-all"], choices=list(STRESS_CASES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--path", default="learned", choices=["learned", "classical", "none"])
    ap.add_argument("--out", default=None, help="write the rows as CSV here")
    a = ap.parse_args(argv)
    if any(s >= 100 for s in a.seeds):
        ap.error("seeds must be below 100 (the models are trained on seeds >= 100)")
    logging.disable(logging.WARNING)
    print(f"machine: {machine()}")
    rows = []
    for case in a.cases:
        for seed in a.seeds:
            part = particle_bounds(case, seed)
            if a.path != "none":
                drawn = pipeline_rms(case, seed, a.path)
                clean = pipeline_rms(case, seed, a.path, counts=1e6)
                for r in part:
                    d, c = drawn.get(r["truth_particle"], {}), clean.get(r["truth_particle"], {})
                    r["rms_px"] = d.get("rms_px", np.nan)
                    r["rms_noise_free_px"] = c.get("rms_px", np.nan)
                    for k in EDGE_COLUMNS[:2]:
                        r[k] = d.get(k, np.nan)
                    v = d.get("_edge_var")
                    r["edge_smoothed_bound_px"] = (
                        float(np.sqrt(2 * np.mean(_gp_variance(v, r["_prior"])))) if v is not None else np.nan
                    )
                    for k in RESPONSE_COLUMNS:
                        r[k] = d.get(k, np.nan)
            rows.extend(part)
    cols = ["case", "seed", "truth_particle", "radius_px", "own_motion_px", "crlb_frame_px", "crlb_pre_edge_px"]
    cols += ["crlb_prior_px", "crlb_drift_px"] + (
        ["rms_px", "rms_noise_free_px", *EDGE_COLUMNS, *RESPONSE_COLUMNS] if a.path != "none" else []
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if a.out:
        import pandas as pd

        pd.DataFrame(rows, columns=cols).to_csv(a.out, index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
