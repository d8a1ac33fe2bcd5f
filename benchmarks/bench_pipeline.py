"""Pipeline speed per stage and accuracy against ground truth, on synthetic scans.

Usage: python benchmarks/bench_pipeline.py [--preset default] [--seeds 1 2 3] [--repeats 3]
           [--detector learned|classical] [--segmenter learned|classical] [--detect-every N]
           [--detector-model DIR] [--segmenter-model DIR]

Reports, per seed, the median over ``--repeats`` runs of each stage's time, and the
accuracy (registration RMS per particle, edge-energy RMS) of the run. Timing is of
the pipeline on an in-memory stack (reading and writing excluded; see the read benchmark).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def main(argv=None):
    from xanestrack.evaluate import evaluate_result
    from xanestrack.pipeline import run_pipeline
    from xanestrack.synth import make_synthetic_stack

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--detector", default="classical", choices=["classical", "learned"])
    ap.add_argument("--segmenter", default="classical", choices=["classical", "learned"])
    ap.add_argument("--detect-every", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--detector-model", default=None, help="learned detector folder (default: shipped)")
    ap.add_argument("--segmenter-model", default=None, help="learned segmenter folder (default: shipped)")
    a = ap.parse_args(argv)
    from xanestrack.pipeline import PipelineOptions

    det = seg = None
    if a.detector == "learned":
        from xanestrack.models.detector import LearnedDetector

        det = LearnedDetector(a.detector_model)
    if a.segmenter == "learned":
        from xanestrack.models.segmenter import LearnedSegmenter

        seg = LearnedSegmenter(a.segmenter_model).segment_rois
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    opts = PipelineOptions(detect_every=a.detect_every)
    print(f"machine: {machine()}")
    print(
        f"preset {a.preset}, seeds {a.seeds}, median of {a.repeats} runs; detector {a.detector}, segmenter {a.segmenter}, detect every {a.detect_every}\n"
    )
    print(
        "| seed | found | max reg RMS px | median reg RMS px | max edge RMS eV | detect s | match s | segment+register+xanes s | fuse s | total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in a.seeds:
        s = make_synthetic_stack(a.preset, seed=seed)
        st = s.stack()
        times = []
        result = None
        for _ in range(a.repeats):
            t = time.perf_counter()
            result = run_pipeline(st, detector=det, segmenter=seg, options=opts)
            tt = dict(result.timings)
            tt["total"] = time.perf_counter() - t
            times.append(tt)
        med = {k: statistics.median(t[k] for t in times) for k in times[0]}
        table, summ = evaluate_result(result, s.truth)
        print(
            f"| {seed} | {summ['n_found']}/{summ['n_true']} (+{summ['n_false']}) | {summ['max_rms_px']:.3f} | {summ['median_rms_px']:.3f} | "
            f"{summ['max_edge_rms_ev']:.3f} | {med['detect']:.2f} | {med['match']:.2f} | {med['segment_register_xanes']:.2f} | "
            f"{med.get('fuse', 0):.2f} | {med['total']:.2f} |"
        )
        print(
            "  per particle (radius px: reg RMS px / edge RMS eV): "
            + ", ".join(
                f"{r.radius:.0f}: {r.rms_px:.3f}/{r.edge_rms_ev:.2f}" if r.particle >= 0 else f"{r.radius:.0f}: missed"
                for r in table.itertuples()
            )
        )


if __name__ == "__main__":
    main()
