"""Two output folders of one synthetic scan side by side, each against the truth.

Usage: python benchmarks/compare_runs.py OUT_A OUT_B SCAN/truth_positions.csv

For example the same scan run with ``--device cpu`` and ``--device cuda`` (bfloat16 on the GPU), or with two
releases. Prints, per folder, the tracks, the worst and median registration RMS over the isolated particles
(``tracks.csv`` against the truth, each particle's mean offset removed, every frame) and the frames off by more
than 1 px that carry no flag; then, where both folders hold the same rows, how far their positions lie apart,
how many flags agree, and how far each particle's median E50 moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

UNVOUCHED = "disagree|interpolated|outside"


def _flags(tracks):
    return tracks["flags"].astype(object).fillna("").astype(str)


def score(out, truth):
    """(tracks, RMS per isolated particle, unflagged frames off by more than 1 px)."""
    tracks = pd.read_csv(f"{out}/tracks.csv")
    rms, wrong = [], 0
    for _, g in tracks.groupby("particle"):
        g = g.sort_values("frame")
        mid = g.iloc[len(g) // 2]
        here = truth[truth.frame == mid.frame]
        d = np.hypot(here.y - mid.y, here.x - mid.x)
        j = d.idxmin()
        if d[j] > 10 or not bool(here.isolated[j]):
            continue
        tp = truth[truth.particle == here.particle[j]].set_index("frame").loc[g.frame]
        err = np.c_[g.y.to_numpy() - tp.y.to_numpy(), g.x.to_numpy() - tp.x.to_numpy()]
        err -= np.nanmean(err, axis=0)
        r = np.hypot(*err.T)
        rms.append(np.sqrt(np.nanmean(r**2)))
        wrong += int(((r > 1) & ~_flags(g).str.contains(UNVOUCHED).to_numpy()).sum())
    return tracks, np.array(rms), wrong


def main(a, b, truth_csv):
    truth = pd.read_csv(truth_csv)
    scored = [(out, *score(out, truth)) for out in (a, b)]
    for out, tracks, rms, wrong in scored:
        run = json.loads(Path(out, "run.json").read_text())
        print(
            f"{out}: {tracks.particle.nunique()} tracks, {rms.size} isolated, worst RMS {rms.max():.4f} px, median "
            f"{np.median(rms):.4f}, unflagged > 1 px {wrong}; models on {run.get('models_device')}"
        )
    ta, tb = scored[0][1], scored[1][1]
    if len(ta) == len(tb) and (ta.particle.to_numpy() == tb.particle.to_numpy()).all():
        d = np.hypot(ta.y.to_numpy() - tb.y.to_numpy(), ta.x.to_numpy() - tb.x.to_numpy())
        print(
            f"positions apart: max {np.nanmax(d):.4f} px, median {np.nanmedian(d):.5f}, > 0.05 px in {int((d > 0.05).sum())} of {d.size}"
        )
        print(f"flags identical in {int((_flags(ta) == _flags(tb)).sum())} of {len(ta)} rows")
    else:
        print("the folders' tracks differ (particles or rows): positions not compared row by row")
    with h5py.File(f"{a}/results.h5", "r") as fa, h5py.File(f"{b}/results.h5", "r") as fb:
        moved = []
        for p in fa["particles"]:
            if p in fb["particles"]:
                x, y = fa[f"particles/{p}/edge_e50"][()], fb[f"particles/{p}/edge_e50"][()]
                if np.isfinite(x).any() and np.isfinite(y).any():
                    moved.append(abs(np.nanmedian(x) - np.nanmedian(y)))
    if moved:
        print(f"median E50 per particle moved by at most {max(moved):.4f} eV ({len(moved)} particles mapped in both)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
