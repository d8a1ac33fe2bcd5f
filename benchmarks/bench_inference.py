"""Inference options of the two learned models on the CPU: batching, channels-last, bf16, ONNX Runtime.

Times the shipped detector generator (whole frames, 232 x 232 = a 460-px frame binned 2x) and the
shipped Dual U-Net segmenter (64 x 64 ROIs) with each option, median of ``--repeats`` runs.
ONNX Runtime (fp32, CPU execution provider) is measured only when ``onnxruntime`` and ``onnx`` are
installed (they are not dependencies: ``pip install onnx onnxruntime`` to include them).

Usage: python benchmarks/bench_inference.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np


def med(f, n):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    import torch

    from xanestrack.models.detector import LearnedDetector
    from xanestrack.models.segmenter import LearnedSegmenter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {a.threads} threads\n"
    )
    g = LearnedDetector().model.eval()
    seg_cf = LearnedSegmenter().model.eval().to(memory_format=torch.contiguous_format)
    seg_cl = LearnedSegmenter().model.eval()
    frames = torch.randn(16, 1, 232, 232)
    rois = torch.randn(64, 1, 64, 64)
    rows = []

    def run(model, x, bs, bf16, cl=False):
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for i in range(0, len(x), bs):
                    xb = x[i : i + bs]
                    model(xb.to(memory_format=torch.channels_last) if cl else xb)

        return f

    for bs in (1, 4, 16):
        for bf16 in (False, True):
            t = med(run(g, frames, bs, bf16), a.repeats)
            rows.append(("detector", f"batch {bs}, {'bf16' if bf16 else 'fp32'}", 1000 * t / len(frames), "ms/frame"))
    for name, model, cl in (("contiguous", seg_cf, False), ("channels-last", seg_cl, True)):
        for bf16 in (False, True):
            t = med(run(model, rois, 64, bf16, cl), a.repeats)
            rows.append(
                ("segmenter", f"batch 64, {name}, {'bf16' if bf16 else 'fp32'}", 1000 * t / len(rois), "ms/ROI")
            )
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for label, model, x, unit, bs in (
                ("detector", g, frames, "ms/frame", 4),
                ("segmenter", seg_cf, rois, "ms/ROI", 64),
            ):
                path = f"/tmp/xanestrack_{label}.onnx"
                torch.onnx.export(model, x[:bs], path, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
                s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                xn = x.numpy()
                t = med(lambda: [s.run(None, {"x": xn[i : i + bs]}) for i in range(0, len(xn), bs)], a.repeats)  # noqa: B023 (called here)
                rows.append((label, f"ONNX Runtime {ort.__version__}, batch {bs}, fp32", 1000 * t / len(x), unit))
    except ImportError:
        rows.append(("both", "ONNX Runtime not installed: skipped", float("nan"), ""))
    print("| model | option | time | unit |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]} |")


if __name__ == "__main__":
    main()
