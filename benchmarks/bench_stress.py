"""The pipeline on the stress family (issue 15): found, tracked, RMS, spurious, vouched, time.

Usage: python benchmarks/bench_stress.py [--cases stress-drift ...] [--seeds 1 2]
           [--paths learned classical] [--reduced] [--out stress.csv]
           [--detector-model DIR] [--segmenter-model DIR]

For each stress case (:data:`xanestrack.synth_stress.STRESS_CASES`, full size: 143
energies, 460 x 460), seed and path, the in-memory pipeline runs with DEFAULT options
(``PipelineOptions()``; "learned" = the shipped learned detector and segmenter, as the
CLI's default; "classical" = the pipeline's own). Seeds must be below 100: the models
are trained on seeds >= 100. Scored by :func:`xanestrack.evaluate.evaluate_tracking`:

- found: estimated tracks paired with a true particle (isolated or not) / true particles;
- isolated tracked: isolated true particles found and measured in every frame (no frame
  flagged ``interpolated``) / isolated true particles;
- worst / median RMS: per-particle registration RMS (mean removed) over the isolated
  particles found, px;
- spurious: estimated tracks paired with no true particle;
- > 1 px: frames of paired tracks whose error exceeds 1 px (constant offset removed);
  unflagged: of those, frames carrying none of ``interpolated``, ``position_outlier``,
  ``disagree`` (stated as measured and vouched for; the tool promises none);
- vouched for > 0.5 px: frames vouched for (none of those flags) whose error exceeds the tool's
  own agreement threshold (``PipelineOptions.agreement_px``, 0.5 px), and the largest error of a
  frame vouched for: not wrong by the 1-px line above, but more off than the agreement between the
  two estimates suggests (both can share an error: the matrix's pull before the edge);
- disagree: frames flagged ``disagree`` (all tracks);
- time: ``run_pipeline`` wall time (generation and scoring excluded);
- common: with both paths, the isolated particles that *both* track through every frame,
  and each path's worst / median RMS over just those. The two paths share the position
  estimator (the edge correlation; the segmenter only outlines), so the columns above
  differ mostly by *which* particles each detector finds (and, through them, by the common
  motion fitted over the particles found); this compares like with like.

Prints a markdown table per case and path (one row per seed) with the machine line;
``--out`` writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


COLUMNS = [
    "case",
    "seed",
    "path",
    "n_found",
    "n_true",
    "isolated_tracked",
    "isolated_found",
    "n_isolated",
    "max_rms_px",
    "median_rms_px",
    "spurious",
    "frames_wrong",
    "unflagged_wrong",
    "worst_unflagged_px",
    "frames_disagree",
    "vouched_off",
    "worst_vouched_px",
    "n_frames",
    "pipeline_s",
]


def run_one(case, seed, path, *, reduced=False, models=None):
    """One row (dict of COLUMNS) for a case, seed and path."""
    from xanestrack.evaluate import evaluate_tracking
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth_stress import make_stress_stack

    s = make_stress_stack(case, seed, reduced=reduced)
    st = s.stack()
    opts = PipelineOptions()
    det, seg = (models or {}).get(path, (None, None))
    t = time.perf_counter()
    result = run_pipeline(st, options=opts, detector=det, segmenter=seg)
    elapsed = time.perf_counter() - t
    tab, summ = evaluate_tracking(result, s.truth)
    row = dict(case=case, seed=seed, path=path, pipeline_s=elapsed)
    row.update({k: summ[k] for k in COLUMNS if k in summ})
    all_frames = tab["tracked_all"].astype(object).fillna(False).astype(bool)  # NaN where not found
    tracked = tab[tab["isolated"].astype(bool) & all_frames & tab["rms_px"].notna()]
    row["_rms"] = dict(zip(tracked["truth_particle"].astype(int), tracked["rms_px"].astype(float)))
    return row


def common_rows(rows) -> list[dict]:
    """Per case and seed run by both paths: each path's worst / median RMS over the isolated
    particles both track through every frame."""
    out = []
    by = {}
    for r in rows:
        by.setdefault((r["case"], r["seed"]), {})[r["path"]] = r
    for (case, seed), paths in by.items():
        if len(paths) < 2:
            continue
        common = sorted(set.intersection(*(set(r["_rms"]) for r in paths.values())))
        for path, r in paths.items():
            v = np.array([r["_rms"][i] for i in common])
            out.append(
                dict(
                    case=case,
                    seed=seed,
                    path=path,
                    n_common=len(common),
                    common_max_rms_px=float(v.max()) if v.size else np.nan,
                    common_median_rms_px=float(np.median(v)) if v.size else np.nan,
                )
            )
    return out


def format_row(r) -> str:
    return (
        f"| {r['case']} | {r['path']} | {r['seed']} | {r['n_found']}/{r['n_true']} | "
        f"{r['isolated_tracked']}/{r['n_isolated']} ({r['isolated_found']} found) | {r['max_rms_px']:.3f} | {r['median_rms_px']:.3f} | "
        f"{r['spurious']} | {r['frames_wrong']} | {r['unflagged_wrong']}"
        + (f" (≤ {r['worst_unflagged_px']:.2f} px)" if r["unflagged_wrong"] else "")
        + f" | {r['vouched_off']} (≤ {r['worst_vouched_px']:.2f} px) | {r['frames_disagree']} | {r['pipeline_s']:.1f} |"
    )


HEADER = (
    "| case | path | seed | found/true | isolated tracked all frames | worst RMS px | median RMS px | spurious | "
    "frames > 1 px | unflagged > 1 px | vouched for > 0.5 px | disagree frames | pipeline s |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv=None):
    from xanestrack.synth_stress import STRESS_CASES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(STRESS_CASES), choices=list(STRESS_CASES), metavar="CASE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--paths", nargs="+", default=["learned", "classical"], choices=["learned", "classical"])
    ap.add_argument("--reduced", action="store_true", help="reduced scenes (48 energies, 256 x 256), as the tests")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="write the rows as CSV here")
    ap.add_argument("--detector-model", default=None, help="learned path: this detector folder (default: shipped)")
    ap.add_argument("--segmenter-model", default=None, help="learned path: this segmenter folder (default: shipped)")
    a = ap.parse_args(argv)
    bad = [s for s in a.seeds if not 0 <= s < 100]
    if bad:
        ap.error(f"seeds must be in 0..99 (the models are trained on seeds >= 100), got {bad}")

    from xanestrack.pipeline import PipelineOptions

    models = {"classical": (None, None)}
    if "learned" in a.paths:
        from xanestrack.models import pipeline_models

        models["learned"] = pipeline_models(
            "learned",
            "learned",
            options=PipelineOptions(),
            detector_model=a.detector_model,
            segmenter_model=a.segmenter_model,
        )
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    size = "reduced (48 energies, 256 x 256)" if a.reduced else "full size"
    print(f"machine: {machine()}")
    print(f"stress cases {a.cases}, {size}, seeds {a.seeds}, paths {a.paths}; default options")
    print(f"models: detector {a.detector_model or 'shipped'}, segmenter {a.segmenter_model or 'shipped'}\n")
    print(HEADER, flush=True)
    rows = []
    for case in a.cases:
        for path in a.paths:
            for seed in a.seeds:
                r = run_one(case, seed, path, reduced=a.reduced, models=models)
                rows.append(r)
                print(format_row(r), flush=True)
    common = common_rows(rows)
    if common:
        print("\nThe isolated particles both paths track through every frame (like with like):\n")
        print("| case | seed | path | particles | worst RMS px | median RMS px |\n|---|---|---|---|---|---|")
        for c in common:
            print(
                f"| {c['case']} | {c['seed']} | {c['path']} | {c['n_common']} | "
                f"{c['common_max_rms_px']:.3f} | {c['common_median_rms_px']:.3f} |"
            )
    if a.out:
        import pandas as pd

        pd.DataFrame(rows, columns=COLUMNS).to_csv(a.out, index=False, float_format="%.4f")
        if common:
            pd.DataFrame(common).to_csv(a.out.replace(".csv", "") + "_common.csv", index=False, float_format="%.4f")
        print(f"\nwrote {a.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
