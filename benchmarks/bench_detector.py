"""Classical vs learned (Cycle-GAN) particle detection, on synthetic seeds never used in training.

Per preset and seed (whole 143-energy scans): precision, recall and F1 of isolated-particle
detection per energy band (pre-edge < 8330 eV, edge 8330-8360 eV, post-edge), counted per frame
against the true isolated particles (fines, touching pairs and noise kept as isolated are false
positives); detection time per frame (median of ``--repeat`` runs).

Usage: python benchmarks/bench_detector.py [--presets default hard] [--seeds 1 2 3] [--model DIR]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd


def md(df: pd.DataFrame, fmt: str = ".3f") -> str:
    """A DataFrame as a markdown table (index included)."""
    df = df.reset_index()
    cell = lambda v: format(v, fmt) if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main():
    from xanestrack.detect import detect_stack
    from xanestrack.evaluate import detection_f1, f1_by_band
    from xanestrack.models.detector import LearnedDetector
    from xanestrack.synth import make_synthetic_stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["default", "hard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--model", default=None, help="detector model folder (default: shipped)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--counts",
        type=float,
        nargs="+",
        default=[None],
        help="override the flat-field counts (noise); several: each is run",
    )
    a = ap.parse_args()
    learned = LearnedDetector(a.model)
    detectors = {"classical": lambda od: detect_stack(od), "learned": learned}
    print(
        f"# detection benchmark: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores\n"
    )
    rows, times = [], []
    conditions = [(p, c) for p in a.presets for c in a.counts]
    for preset_name, counts in conditions:
        preset = preset_name if counts is None else f"{preset_name}@{counts:g}counts"
        for seed in a.seeds:
            s = make_synthetic_stack(preset_name, seed=seed, **({} if counts is None else {"counts": counts}))
            od = s.optical_density()
            for name, det in detectors.items():
                ts = []
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    d = det(od)
                    ts.append(time.perf_counter() - t)
                times.append((preset, seed, name, 1000 * np.median(ts) / od.shape[0]))
                f = f1_by_band(detection_f1(d, s.truth, s.energies_ev)).reset_index()
                f.insert(0, "detector", name)
                f.insert(0, "seed", seed)
                f.insert(0, "preset", preset)
                rows.append(f)
    t = pd.concat(rows, ignore_index=True)
    print("## per scan\n")
    print(md(t.set_index("preset")))
    agg = t.groupby(["preset", "detector", "band"], sort=False)[["tp", "fp", "fn"]].sum().reset_index()
    agg["f1"] = 2 * agg.tp / np.maximum(2 * agg.tp + agg.fp + agg.fn, 1)
    print("\n## all seeds\n")
    print(md(agg.pivot_table(index=["preset", "detector"], columns="band", values="f1", sort=False)))
    tt = pd.DataFrame(times, columns=["preset", "seed", "detector", "ms_per_frame"])
    print("\n## time per frame (median of runs), ms\n")
    print(md(tt.groupby(["preset", "detector"])["ms_per_frame"].median().to_frame(), ".1f"))


if __name__ == "__main__":
    main()
