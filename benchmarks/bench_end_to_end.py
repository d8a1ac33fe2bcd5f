"""What the user waits for: `xanestrack run` as a subprocess, report included, beside plain global alignment.

Usage: python benchmarks/bench_end_to_end.py [--preset default] [--seed 1] [--repeats 3] [--shape 460]

One synthetic scan is written as an FXI-layout HDF5 file (``xanestrack synth``); then, in the same run and
on the same file, best of ``--repeats``:

- ``xanestrack run stack.h5 --out DIR`` (defaults: learned models, report), as a subprocess;
- plain global alignment, as a subprocess: read the file with h5py, flat/dark-correct to OD, register
  every frame to the first with scikit-image's ``phase_cross_correlation(upsample_factor=10)``, shift
  (``scipy.ndimage.shift``, linear), save the aligned stack to HDF5 — what the user would otherwise run;
- the I/O floor: read, OD, write.

The ratio run / plain alignment is printed. ``--python`` lets another checkout be timed (e.g. an older
commit on PYTHONPATH) with the same scan.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLAIN = r"""
import sys, h5py, numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation
src, dst, align = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with h5py.File(src, "r") as f:
    raw = f["img_xanes"][()].astype(np.float32)
    flat = f["img_bkg"][()].astype(np.float32)
    dark = f["img_dark"][()].astype(np.float32)
dark = dark.mean(axis=0) if dark.ndim == 3 else dark
flat = flat if flat.shape[0] == raw.shape[0] else flat.mean(axis=0, keepdims=True)
with np.errstate(divide="ignore", invalid="ignore"):
    od = -np.log(np.clip((raw - dark) / (flat - dark), 1e-6, None))
od = np.nan_to_num(od).astype(np.float32)
if align:
    for k in range(1, od.shape[0]):
        shift, _, _ = phase_cross_correlation(od[0], od[k], upsample_factor=10)
        od[k] = ndimage.shift(od[k], shift, order=1, mode="nearest")
with h5py.File(dst, "w") as f:
    f.create_dataset("aligned", data=od)
"""


def _best(cmd, repeats, env=None, before=None):
    times = []
    for _ in range(repeats):
        if before:
            before()
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{cmd[:3]} failed: {r.stderr[-2000:]}")
    return min(times), times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, default=460)
    ap.add_argument("--particles", type=int, default=None)
    ap.add_argument("--python", default=sys.executable, help="interpreter for `xanestrack run` (default: this one)")
    ap.add_argument("--pythonpath", default=None, help="PYTHONPATH for `xanestrack run` (another checkout)")
    a = ap.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = tmp / "scan"
        cmd = [sys.executable, "-c", "from xanestrack.cli import main; main()", "synth", str(scan), "--preset", a.preset, "--seed", str(a.seed)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        stack = scan / "stack.h5"
        import h5py

        with h5py.File(stack, "r") as f:
            shape = f["img_xanes"].shape
        print(f"scan: {a.preset} seed {a.seed}, {shape[0]} x {shape[1]} x {shape[2]}, {stack.stat().st_size / 2**20:.0f} MiB")
        env = dict(os.environ)
        if a.pythonpath:
            env["PYTHONPATH"] = a.pythonpath
        out = tmp / "out"

        def clean():
            import shutil

            shutil.rmtree(out, ignore_errors=True)

        run_cmd = [a.python, "-c", "from xanestrack.cli import main; main()", "run", str(stack), "--out", str(out)]
        t_run, all_run = _best(run_cmd, a.repeats, env=env, before=clean)
        t_plain, all_plain = _best([sys.executable, "-c", PLAIN, str(stack), str(tmp / "plain.h5"), "1"], a.repeats)
        t_io, all_io = _best([sys.executable, "-c", PLAIN, str(stack), str(tmp / "io.h5"), "0"], a.repeats)
    print(f"xanestrack run (report included): best {t_run:.2f} s  (all {', '.join(f'{t:.2f}' for t in all_run)})")
    print(f"plain global alignment:           best {t_plain:.2f} s  (all {', '.join(f'{t:.2f}' for t in all_plain)})")
    print(f"I/O floor (read, OD, write):      best {t_io:.2f} s")
    print(f"ratio run / plain alignment: {t_run / t_plain:.2f}x")


if __name__ == "__main__":
    main()
