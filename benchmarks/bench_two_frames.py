"""Two frames across the edge (the SSRL 6-2c situation), cut from the stress family: what is vouched for.

Usage: python benchmarks/bench_two_frames.py [--cases stress-drift ...] [--seeds 1 2]
           [--pairs 20,110 0,142] [--paths learned classical] [--out two_frames.csv]

A scan of two frames offers no time series: each particle's centre of mass is compared
with its edge estimate once, and where the masks' outlines move across the absorption edge
(real frames) nothing is vouched for. ``PipelineOptions.density_voucher`` lets the density
correlation vouch for such particles. This measures, on stress scenes (full size, seeds
below 100: never trained on) cut to two frames, with the voucher off and on: particles
tracked, vouched for (both frames free of ``disagree``, ``interpolated``,
``position_outlier``), and of those, how many carry a displacement error (frame 0 to 1,
against the truth) above 0.5 and 1 px, and the worst. Prints one row per case, seed, pair,
path and setting, then the totals, with the machine line.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from bench_stress import machine


def run(case, seed, pair, path, density, models):
    from xanestrack.evaluate import pair_tracks, true_tracks
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.result import FRAME_FLAGS
    from xanestrack.stack import Stack
    from xanestrack.synth_stress import make_stress_stack

    key = (case, seed)
    if key not in run.cache:
        run.cache.clear()
        run.cache[key] = make_stress_stack(case, seed)
    s = run.cache[key]
    a, b = pair
    true = true_tracks(s.truth)[:, [a, b]]
    det, seg = models[path]
    t = time.perf_counter()
    r = run_pipeline(
        Stack(s.optical_density()[[a, b]], s.energies_ev[[a, b]]),
        options=PipelineOptions(density_voucher=density),
        detector=det,
        segmenter=seg,
    )
    elapsed = time.perf_counter() - t
    est = np.array([p.positions for p in r.particles], float).reshape(-1, 2, 2)
    bad = FRAME_FLAGS["disagree"] | FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    errors = []
    for i, j in pair_tracks(est, true, max_distance=10) if len(est) else []:
        if ((r.particles[i].frame_flags & bad) == 0).all():
            errors.append(float(np.hypot(*((est[i, 1] - est[i, 0]) - (true[j, 1] - true[j, 0])))))
    e = np.array(errors)
    return dict(
        case=case,
        seed=seed,
        pair=f"{a},{b}",
        path=path,
        density_voucher=density,
        tracks=len(r.particles),
        vouched=len(e),
        over_half_px=int((e > 0.5).sum()),
        over_1px=int((e > 1.0).sum()),
        worst_px=float(e.max()) if e.size else 0.0,
        pipeline_s=elapsed,
    )


run.cache = {}


def main(argv=None):
    from xanestrack.synth_stress import STRESS_CASES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(STRESS_CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--pairs", nargs="+", default=["20,110", "0,142"], help="frame pairs A,B (pre- and post-edge)")
    ap.add_argument("--paths", nargs="+", default=["learned", "classical"], choices=["learned", "classical"])
    ap.add_argument("--out", default=None, help="CSV of the rows")
    args = ap.parse_args(argv)
    if any(s >= 100 for s in args.seeds):
        sys.exit("error: seeds must be below 100 (the models are trained on seeds >= 100)")
    pairs = [tuple(int(v) for v in p.split(",")) for p in args.pairs]
    models = {"classical": (None, None)}
    if "learned" in args.paths:
        from xanestrack.models import pipeline_models
        from xanestrack.pipeline import PipelineOptions

        models["learned"] = pipeline_models("learned", "learned", options=PipelineOptions())
    print(f"machine: {machine()}")
    print("| case | seed | frames | path | density voucher | tracks | vouched | > 0.5 px | > 1 px | worst px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for case in args.cases:
        for seed in args.seeds:
            for pair in pairs:
                for path in args.paths:
                    for density in (False, True):
                        r = run(case, seed, pair, path, density, models)
                        rows.append(r)
                        print(
                            f"| {case} | {seed} | {r['pair']} | {path} | {'on' if density else 'off'} | {r['tracks']} | "
                            f"{r['vouched']} | {r['over_half_px']} | {r['over_1px']} | {r['worst_px']:.2f} |",
                            flush=True,
                        )
    print("\ntotals (vouched particles; displacement error > 0.5 px, > 1 px; worst px):")
    for path in args.paths:
        for density in (False, True):
            g = [r for r in rows if r["path"] == path and r["density_voucher"] == density]
            print(
                f"  {path}, density voucher {'on' if density else 'off'}: {sum(r['vouched'] for r in g)} vouched, "
                f"{sum(r['over_half_px'] for r in g)} > 0.5 px, {sum(r['over_1px'] for r in g)} > 1 px, "
                f"worst {max((r['worst_px'] for r in g), default=0):.2f} px"
            )
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
