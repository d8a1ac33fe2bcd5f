"""Operando series at the real frame size, as the user runs it: time per scan, peak memory, projection to 54 scans.

The scans are written first, untimed, as FXI HDF5 files (raw uint16 counts, per-energy flats, a dark: what a
beamline writes and ``xanestrack synth`` writes): ``--energies`` x ``--size``^2 with ``--particles`` particles,
stage offsets and slow deformation between scans (the series scene model). Then ``xanestrack series FILES --out
DIR`` runs as a subprocess (reading included, the series report included), once per scheduler:

- ``threads``: Dask's threaded scheduler (the default; two scans in flight, one on a machine of two cores or fewer:
  :func:`xanestrack.parallel.series.scans_in_flight`);
- ``sync``: one scan at a time (``--scheduler sync``);
- ``distributed``: a local ``dask.distributed`` cluster of two worker processes (``--workers 2``).

Memory is sampled every 0.2 s for the CLI process and each of its children (``psutil``), so a distributed
worker's peak is its own. Beside it, the plain global alignment the user would otherwise run
(``bench_end_to_end.py``'s: read, OD, phase correlation of every frame to the first at upsample 10, shift,
save), on two of the same files, median: the ratio and both projections to the paper's 54 scans.

Usage: python benchmarks/bench_series.py [--scans 8] [--energies 143] [--size 1024] [--particles 36]
       [--schedulers threads sync distributed] [--data DIR (keep the written scans there, reuse them)]

Earlier versions generated each scan inside its Dask task: 29-30 s of synthesis per 1024^2 scan counted as
the series' time (measured), where reading the file takes about 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sampler(root_pid, stop, peaks):
    import psutil

    try:
        root = psutil.Process(root_pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = [root]
        for p in procs:
            try:
                name = "main" if p.pid == root_pid else str(p.pid)
                peaks[name] = max(peaks.get(name, 0), p.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.2)


def write_scans(folder: Path, n, energies, size, particles) -> list[Path]:
    """The series' scans as FXI HDF5 files (kept where they already are)."""
    from xanestrack.synth import make_synthetic_series
    from xanestrack.truth_io import write_synthetic

    ser = make_synthetic_series(
        "default",
        n_scans=n,
        seed=1,
        n_energies=energies,
        shape=(size, size),
        n_particles=particles,
        radius_range=(10.0, 40.0),
        stage_offset=40.0,
        deformation=4.0,
    )
    files = []
    for i in range(n):
        d = folder / f"scan_{i:04d}"
        if not (d / "stack.h5").is_file():
            d.mkdir(parents=True, exist_ok=True)
            write_synthetic(ser.scan(i), d)
        files.append(d / "stack.h5")
    return files


def run_series_cli(files, out: Path, scheduler: str) -> dict:
    cmd = [
        sys.executable,
        "-c",
        "from xanestrack.cli import main; main()",
        "series",
        *map(str, files),
        "--out",
        str(out),
    ]
    cmd += {"threads": [], "sync": ["--scheduler", "sync"], "distributed": ["--workers", "2"]}[scheduler]
    stop, peaks = threading.Event(), {}
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    th = threading.Thread(target=_sampler, args=(p.pid, stop, peaks), daemon=True)
    th.start()
    so, se = p.communicate()
    dt = time.perf_counter() - t
    stop.set()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"series ({scheduler}) failed: {se[-3000:]}")
    times = []
    for f in files:  # each scan's pipeline time, from its run.json
        info = out / "scans" / f.parent.name / "run.json"
        if not info.is_file():
            info = next((out / "scans").glob(f"*{f.parent.name}*/run.json"), None)
        if info and info.is_file():
            times.append(sum(json.loads(info.read_text()).get("timings_s", {}).values()))
    import pandas as pd

    table = pd.read_csv(out / "series.csv")
    workers = sorted((v for k, v in peaks.items() if k != "main"), reverse=True)
    return dict(
        seconds=dt,
        per_scan=dt / len(files),
        pipeline=statistics.mean(times) if times else float("nan"),
        main_mib=peaks.get("main", 0) / 2**20,
        worker_mib=[w / 2**20 for w in workers[:4]],
        particles=int(table["particle"].nunique()),
        n_pipeline_times=len(times),
    )


def plain_alignment(files, tmp: Path) -> float:
    """Median seconds of the plain global alignment of one scan (as bench_end_to_end.py times it)."""
    from bench_end_to_end import PLAIN

    ts = []
    for f in files:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", PLAIN, str(f), str(tmp / "aligned.h5"), "1"], check=True)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--energies", type=int, default=143)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--particles", type=int, default=36)
    ap.add_argument("--schedulers", nargs="+", default=["threads", "sync"], choices=["threads", "sync", "distributed"])
    ap.add_argument(
        "--data", default=None, help="folder for the written scans (kept and reused); default a temporary one"
    )
    a = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{a.scans} scans of {a.energies} x {a.size} x {a.size}, {a.particles} particles, default (learned) models",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(a.data) if a.data else tmp / "data"
        t = time.perf_counter()
        files = write_scans(data, a.scans, a.energies, a.size, a.particles)
        print(f"scans written in {time.perf_counter() - t:.0f} s (untimed)", flush=True)
        rows = []
        for sched in a.schedulers:
            out = tmp / f"series_{sched}"
            r = run_series_cli(files, out, sched)
            rows.append((sched, r))
            print(f"{sched}: {json.dumps(r)}", flush=True)
        plain = plain_alignment(files[:2], tmp)
    print(
        "| scheduler | scans | time s | s per scan | pipeline s per scan | peak RSS MiB main / workers | particles linked "
        "| 54 scans (projected) | plain alignment per scan, 54 scans | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    from xanestrack.parallel.series import scans_in_flight

    names = {
        "threads": f"threads ({scans_in_flight()} in flight)",
        "sync": "sync (one at a time)",
        "distributed": "distributed, 2 workers",
    }
    for sched, r in rows:
        workers = " / ".join(f"{w:.0f}" for w in r["worker_mib"]) or "-"
        print(
            f"| {names[sched]} | {a.scans} | {r['seconds']:.0f} | {r['per_scan']:.1f} | {r['pipeline']:.1f} | "
            f"{r['main_mib']:.0f} / {workers} | {r['particles']} | {54 * r['per_scan'] / 60:.0f} min | "
            f"{plain:.1f} s, {54 * plain / 60:.0f} min | {r['per_scan'] / plain:.2f}x |"
        )


if __name__ == "__main__":
    main()
