"""Two output folders of one synthetic scan side by side, each against the truth.

Usage: python benchmarks/compare_runs.py OUT_A OUT_B SCAN/truth_positions.csv

For example the same scan run with ``--device cpu`` and ``--device cuda`` (bfloat16 on the GPU), or with two
releases. Prints, per folder, the tracks, the worst and median registration RMS over the isolated particles
(``tracks.csv`` against the truth, each particle's mean offset removed, every frame) and the frames off by more
than 1 px that carry no flag; then, for the particles paired between the folders (median positions within 5 px), how far their positions lie apart,
how many flags agree, and how far each particle's mean E50 (as the summary table reports it) moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from xanestrack.result import particle_summary
from xanestrack.results import read_results

UNVOUCHED = "disagree|interpolated|outside"
PAIR_PX = 5.0


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
    pairs = _pairs(ta, tb)
    print(
        f"particles paired (median positions within {PAIR_PX:g} px): {len(pairs)} of {ta.particle.nunique()} / {tb.particle.nunique()}"
    )
    ra = ta.set_index(["particle", "frame"])
    rb = tb.set_index(["particle", "frame"])
    d, same, rows = [], 0, 0
    for pa, pb in pairs.items():
        ga, gb = ra.loc[pa], rb.loc[pb]
        frames = ga.index.intersection(gb.index)
        ga, gb = ga.loc[frames], gb.loc[frames]
        d.append(np.hypot(ga.y.to_numpy() - gb.y.to_numpy(), ga.x.to_numpy() - gb.x.to_numpy()))
        same += int((_flags(ga) == _flags(gb)).sum())
        rows += len(frames)
    if rows:
        d = np.concatenate(d)
        print(
            f"positions apart: max {np.nanmax(d):.4f} px, median {np.nanmedian(d):.5f}, > 0.05 px in "
            f"{int((d > 0.05).sum())} of {d.size}; flags identical in {same} of {rows} rows"
        )
    # the mean E50 the tool reports (its summary table: trusted core pixels), not a median over whatever pixels
    # have a value (a particle with its E50 left unmeasured in all but a few noisy pixels has none)
    e50 = [particle_summary(read_results(out)).set_index("particle")["mean_e50_ev"] for out in (a, b)]
    ea = e50[0][list(pairs)].to_numpy()
    eb = e50[1][list(pairs.values())].to_numpy()
    both = np.isfinite(ea) & np.isfinite(eb)
    if both.any():
        print(
            f"mean E50 per particle moved by at most {np.abs(ea - eb)[both].max():.4f} eV ({int(both.sum())} paired "
            f"particles with one in both; in one folder only: {int((np.isfinite(ea) & ~np.isfinite(eb)).sum())} / "
            f"{int((~np.isfinite(ea) & np.isfinite(eb)).sum())})"
        )


def _pairs(ta, tb) -> dict:
    """Particle of ``ta`` -> particle of ``tb`` whose median positions lie within ``PAIR_PX`` (one to one, the
    pairing of :func:`xanestrack.evaluate.pair_particles`; the two folders may number their particles differently)."""
    from xanestrack.evaluate import pair_particles

    ma = ta.groupby("particle")[["y", "x"]].median()
    mb = tb.groupby("particle")[["y", "x"]].median()
    return {ma.index[i]: mb.index[j] for i, j in pair_particles(ma.to_numpy(), mb.to_numpy(), max_distance=PAIR_PX)}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
