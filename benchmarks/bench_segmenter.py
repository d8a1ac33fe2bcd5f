"""Classical vs learned (Dual U-Net) ROI segmentation, on synthetic seeds never used in training.

Per preset and seed: mask IoU and mean boundary error (px) against the true masks, per energy
band (pre-edge < 8330 eV, edge 8330-8360 eV, post-edge), computed in the truth's own windows;
registration RMS per particle of the whole pipeline with each segmenter; pipeline time.

Usage: python benchmarks/bench_segmenter.py [--presets default hard] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage


def boundary_error(pred, true):
    """Symmetric mean distance (px) between the two mask boundaries."""
    bp = pred & ~ndimage.binary_erosion(pred)
    bt = true & ~ndimage.binary_erosion(true)
    if not bp.any() or not bt.any():
        return np.nan
    dt = ndimage.distance_transform_edt(~bt)
    dp = ndimage.distance_transform_edt(~bp)
    return 0.5 * (dt[bp].mean() + dp[bt].mean())


def main():
    from xanestrack.evaluate import evaluate_result
    from xanestrack.models.segmenter import LearnedSegmenter
    from xanestrack.pipeline import run_pipeline
    from xanestrack.register import crop_windows, window_half
    from xanestrack.segment import segment_rois
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["default", "hard"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    learned = LearnedSegmenter()
    segs = {"classical": segment_rois, "learned": learned.segment_rois}
    print(
        "| preset | seed | segmenter | IoU pre/edge/post | boundary err px pre/edge/post | max reg RMS px | median reg RMS px | max edge RMS eV | pipeline s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in a.presets:
        for seed in a.seeds:
            s = make_synthetic_stack(preset, seed=seed)
            od = s.optical_density()
            e = s.energies_ev
            bands = [e < 8330, (e >= 8330) & (e < 8360), e >= 8360]
            for name, fn in segs.items():
                ious = [[], [], []]
                berr = [[], [], []]
                for i in range(len(s.truth.radii)):
                    w = (s.truth.masks[i].shape[1] - 1) // 2
                    # ROIs with the pipeline's margin, the true mask in their centre
                    half = window_half(s.truth.radii[i])
                    tm = np.pad(s.truth.masks[i], ((0, 0), (half - w, half - w), (half - w, half - w)))
                    win, _, _ = crop_windows(od, s.truth.mask_origins[i] + w, half)
                    win = np.where(np.isfinite(win), win, np.nanmedian(win))
                    m = fn(win) > 0.5
                    for b, sel in enumerate(bands):
                        for k in np.flatnonzero(sel):
                            ious[b].append((m[k] & tm[k]).sum() / max((m[k] | tm[k]).sum(), 1))
                            berr[b].append(boundary_error(m[k], tm[k]))
                t = time.perf_counter()
                r = run_pipeline(Stack(od, e), segmenter=None if name == "classical" else fn)
                dt = time.perf_counter() - t
                _, summ = evaluate_result(r, s.truth)
                print(
                    f"| {preset} | {seed} | {name} | "
                    + "/".join(f"{np.mean(x):.3f}" for x in ious)
                    + " | "
                    + "/".join(f"{np.nanmean(x):.2f}" for x in berr)
                    + f" | {summ['max_rms_px']:.3f} | {summ['median_rms_px']:.3f} | {summ['max_edge_rms_ev']:.3f} | {dt:.1f} |"
                )


if __name__ == "__main__":
    main()
