"""Edge-energy maps on the stress family against the truth: how far off, and whether sigma says so.

Usage: python benchmarks/bench_chemistry_stress.py [--cases stress-drift stress-all] [--seeds 1 2]
           [--path learned|classical] [--decompose] [--out chemistry.csv]

For every particle of a stress scene (:mod:`xanestrack.synth_stress`) paired with a true one and given an E50 map,
run twice with default options, ``subtract_matrix`` on (the default) and off (the positions must come out identical:
the option touches only the chemistry):

- ``rms_ev``, ``bias_ev``, ``coverage``: the E50 map against the true one (the particle's unblurred mixture of its
  two phases, frame 0; 2-px rim left out; :func:`xanestrack.evaluate.edge_map_error`), and ``within_1_sigma``,
  ``within_2_sigma``: the shares of those pixels whose error is within one and two of the reported standard error
  (``maps["e50_sigma"]``: photon noise and registration; 0.68 and 0.95 where it is right);
- ``separated``: whether the matrix was separated from behind the particle (its own motion), i.e. whether
  ``subtract_matrix`` changes it.

``--decompose`` splits each particle's error (default options) into what is not the tool's registration: the same
analysis (its mask, its frames) of windows placed at the TRUE positions, on the scene as drawn (``truepos``), drawn
without photon noise (counts 10^7: ``nf``), and without noise and then without the flat field's and beam's changes
(``nf_flat``) and without the matrix, strands and ghosts too (``nf_flat_matrix``): what is left there is the
definition of E50 itself (the analysis's normalisation and smoothing against the truth's mixture rule).

``--compare-paths`` instead runs both paths (default options) and compares their E50 maps on the pixels both map
(the true interior, 2-px rim out), per particle both pair with the truth: the paths' masks differ in size, so each
path's own RMS is over different pixels.

Seeds must be below 100 (the models are trained on seeds >= 100).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

import numpy as np

NF = dict(counts=1e7)
FLAT = dict(flat_shift_px=0.0, flat_phase_sd=0.0, flat_ripple=0.0, beam_jitter=0.0, beam_dip_probability=0.0)
MATRIX = dict(matrix_od=0.0, n_strands=0, n_ghosts=0)
VARIANTS = {"nf": NF, "nf_flat": {**NF, **FLAT}, "nf_flat_matrix": {**NF, **FLAT, **MATRIX}}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _maps(result, truth, *, sigma: bool = True) -> dict:
    """Per paired particle (truth id -> (particle, edge_map_error dict))."""
    from xanestrack.evaluate import edge_map_error, pair_tracks, true_tracks

    tt = true_tracks(truth)
    est = np.array([p.positions for p in result.particles], float).reshape(-1, tt.shape[1], 2)
    out = {}
    for i, j in pair_tracks(est, tt, max_distance=10):
        p = result.particles[i]
        e50 = p.edge_maps["e50"]
        if not np.isfinite(e50).any():
            continue
        em = edge_map_error(
            e50,
            p.origin,
            truth.edge_maps[j],
            truth.edge_map_origins[j],
            sigma_map=p.maps.get("e50_sigma") if sigma else None,
        )
        out[int(j)] = (p, em)
    return out


def _decompose(case, seed, od, result, truth, options) -> dict:
    """E50 RMS (eV) of each paired particle's analysis at the true positions, on the drawn and the cleaned scenes."""
    from xanestrack import xanes
    from xanestrack.evaluate import edge_map_error, true_tracks
    from xanestrack.pipeline import _xanes_settings
    from xanestrack.register import resample_windows
    from xanestrack.synth_stress import make_stress_stack

    tt = true_tracks(truth)
    scenes = {"truepos": od}
    for name, over in VARIANTS.items():
        v = make_stress_stack(case, seed, **over)
        if not np.allclose(true_tracks(v.truth), tt):
            raise RuntimeError(f"{name}: the cleaned scene moved the particles")
        scenes[name] = v.optical_density()
    out = {}
    settings = dict(_xanes_settings(options), uncertainty=False)
    for j, (p, _) in _maps(result, truth, sigma=False).items():
        h, w = p.edge_maps["e50"].shape
        use = np.asarray(p.xanes_frames, bool) if p.xanes_frames is not None else np.ones(tt.shape[1], bool)
        row = {}
        for name, od in scenes.items():
            al = resample_windows(od, tt[j] - tt[j][0], p.origin, (h, w), order=options.interpolation_order)
            ok = use & np.all(np.isfinite(al), axis=(1, 2))
            xr = xanes.analyse_particle(al, p.mask, result.energies_ev, usable=ok, agreement=None, **settings)
            em = edge_map_error(xr["edge_maps"]["e50"], p.origin, truth.edge_maps[j], truth.edge_map_origins[j])
            row[f"{name}_rms_ev"] = em["rms_ev"]
            row[f"{name}_bias_ev"] = em["bias_ev"]
        out[j] = row
    return out


def run_case(case, seed, path, models, decompose=False) -> list[dict]:
    from dataclasses import replace

    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth_stress import make_stress_stack

    s = make_stress_stack(case, seed)
    st = s.stack()
    det, seg = models
    on_opts = PipelineOptions()
    on = run_pipeline(st, options=on_opts, detector=det, segmenter=seg)
    off = run_pipeline(st, options=replace(on_opts, subtract_matrix=False), detector=det, segmenter=seg)
    a = np.array([p.positions for p in on.particles])
    b = np.array([p.positions for p in off.particles])
    if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
        raise RuntimeError(f"{case} seed {seed}: subtract_matrix changed the positions")
    m_on, m_off = _maps(on, s.truth), _maps(off, s.truth)
    parts = _decompose(case, seed, st.od, on, s.truth, on_opts) if decompose else {}
    rows = []
    for j, (p, em) in sorted(m_on.items()):
        e_off = m_off[j][1] if j in m_off else {"rms_ev": np.nan}  # no map without the subtraction
        row = dict(
            case=case,
            seed=seed,
            path=path,
            truth_particle=j,
            radius_px=float(p.radius),
            separated=any("matrix texture separated" in n for n in p.notes),
            n_pixels=em["n_pixels"],
            coverage=em["coverage"],
            rms_ev=em["rms_ev"],
            rms_off_ev=e_off["rms_ev"],
            bias_ev=em["bias_ev"],
            sigma_ev=float(np.nanmedian(p.maps["e50_sigma"][p.mask])) if "e50_sigma" in p.maps else np.nan,
            within_1_sigma=em.get("within_1_sigma", np.nan),
            within_2_sigma=em.get("within_2_sigma", np.nan),
            within_1_sigma_off=e_off.get("within_1_sigma", np.nan),
            within_2_sigma_off=e_off.get("within_2_sigma", np.nan),
        )
        row.update(parts.get(j, {}))
        rows.append(row)
    return rows


def compare_paths(case, seed, models) -> list[dict]:
    """Learned and classical E50 against the truth on the pixels both map, per particle both pair."""
    from xanestrack.evaluate import edge_map_pixel_errors, pair_tracks, true_tracks
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth_stress import make_stress_stack

    s = make_stress_stack(case, seed)
    st = s.stack()
    tt = true_tracks(s.truth)
    paired = {}
    for path, (det, seg) in (("learned", models), ("classical", (None, None))):
        r = run_pipeline(st, options=PipelineOptions(), detector=det, segmenter=seg)
        est = np.array([p.positions for p in r.particles], float).reshape(-1, tt.shape[1], 2)
        paired[path] = {int(j): r.particles[i] for i, j in pair_tracks(est, tt, max_distance=10)}
    rows = []
    for j in sorted(set(paired["learned"]) & set(paired["classical"])):
        tm, to = s.truth.edge_maps[j], np.round(s.truth.edge_map_origins[j]).astype(int)
        pl, pc = paired["learned"][j], paired["classical"][j]
        dl = edge_map_pixel_errors(pl.edge_maps["e50"], pl.origin, tm, to)[0]
        dc = edge_map_pixel_errors(pc.edge_maps["e50"], pc.origin, tm, to)[0]
        both = np.isfinite(dl) & np.isfinite(dc)
        if both.sum() < 20:
            continue
        rows.append(
            dict(
                case=case,
                seed=seed,
                truth_particle=j,
                n_pixels=int(both.sum()),
                learned_rms_ev=float(np.sqrt(np.mean(dl[both] ** 2))),
                classical_rms_ev=float(np.sqrt(np.mean(dc[both] ** 2))),
                learned_mapped=float(np.isfinite(dl).mean()),
                classical_mapped=float(np.isfinite(dc).mean()),
            )
        )
    return rows


def main(argv=None) -> int:
    from xanestrack.synth_stress import STRESS_CASES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(STRESS_CASES), choices=list(STRESS_CASES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--path", default="learned", choices=["learned", "classical"])
    ap.add_argument(
        "--decompose", action="store_true", help="also the analysis at the true positions on cleaned scenes"
    )
    ap.add_argument("--out", default=None, help="write the rows as CSV here")
    ap.add_argument(
        "--compare-paths", action="store_true", help="learned against classical on the pixels both map (see above)"
    )
    a = ap.parse_args(argv)
    if any(s >= 100 for s in a.seeds):
        ap.error("seeds must be below 100 (the models are trained on seeds >= 100)")
    logging.disable(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions

    if a.compare_paths:
        import pandas as pd

        models = pipeline_models("learned", "learned", options=PipelineOptions())
        print(f"machine: {machine()}; learned against classical, on the pixels both map")
        rows = [r for case in a.cases for seed in a.seeds for r in compare_paths(case, seed, models)]
        df = pd.DataFrame(rows)
        if len(df):
            d = df["learned_rms_ev"] - df["classical_rms_ev"]
            print(
                f"{len(df)} particles: median E50 RMS learned {df['learned_rms_ev'].median():.3f} eV, classical "
                f"{df['classical_rms_ev'].median():.3f} eV; learned better by > 0.01 eV for {int((d < -0.01).sum())}, "
                f"worse for {int((d > 0.01).sum())}; mapped share of the true interior learned "
                f"{df['learned_mapped'].mean():.3f}, classical {df['classical_mapped'].mean():.3f}"
            )
            print(df.groupby("case")[["learned_rms_ev", "classical_rms_ev"]].median().round(3).to_string())
            if a.out:
                df.to_csv(a.out, index=False, float_format="%.4f")
        return 0
    models = pipeline_models(a.path, a.path, options=PipelineOptions()) if a.path == "learned" else (None, None)
    print(f"machine: {machine()}; path {a.path}")
    rows = []
    for case in a.cases:
        for seed in a.seeds:
            got = run_case(case, seed, a.path, models, decompose=a.decompose)
            rows.extend(got)
            sep = [r for r in got if r["separated"]]
            fmt = lambda v: "-" if not v else f"{np.median(v):.3f}"  # noqa: E731
            print(
                f"{case} seed {seed}: {len(got)} maps, {len(sep)} separated; separated median E50 RMS "
                f"{fmt([r['rms_off_ev'] for r in sep])} -> {fmt([r['rms_ev'] for r in sep])} eV "
                f"(better {sum(r['rms_ev'] < r['rms_off_ev'] - 0.005 for r in sep)}, "
                f"worse {sum(r['rms_ev'] > r['rms_off_ev'] + 0.005 for r in sep)}); all: median "
                f"{fmt([r['rms_ev'] for r in got])} eV, within 1 / 2 sigma {fmt([r['within_1_sigma'] for r in got])} / "
                f"{fmt([r['within_2_sigma'] for r in got])}",
                flush=True,
            )
    import pandas as pd

    df = pd.DataFrame(rows)
    if len(df):
        with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_rows", 500):
            print(df.round(3).to_string(index=False))
    if a.out:
        df.to_csv(a.out, index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
