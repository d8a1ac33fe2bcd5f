"""Operando series at the real frame size: time per scan, peak memory per process, projection to 54 scans.

Each series runs in a fresh process. Scans are synthetic (generated inside the Dask tasks, as a reader
would read them lazily): ``--energies`` x ``--size``^2 with ``--particles`` particles, stage offsets and
slow deformation between scans (the series scene model). Memory is sampled every 0.2 s for the main
process and every worker process (``psutil``), so the peak of each ``dask.distributed`` worker is its own.

Usage: python benchmarks/bench_series.py [--scans 8] [--energies 143] [--size 1024] [--particles 36]
       [--schedulers threads distributed]

The paper's operando data set is 54 scans x 143 energies of 1000^2: the projection is
``54 x (time per scan)`` after the first scan (models loaded once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time


def _sampler(stop, peaks):
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        for p in procs:
            try:
                name = "main" if p.pid == me.pid else " ".join(p.cmdline()[-2:])[-40:] or str(p.pid)
                peaks[(p.pid, name)] = max(peaks.get((p.pid, name), 0), p.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.2)


def one(n, energies, size, particles, scheduler):
    from xanestrack.parallel.series import run_series, synthetic_sources

    src = synthetic_sources(
        n,
        seed=1,
        n_energies=energies,
        shape=(size, size),
        n_particles=particles,
        radius_range=(10.0, 40.0),
        stage_offset=40.0,
        deformation=4.0,
    )
    stop, peaks = threading.Event(), {}
    th = threading.Thread(target=_sampler, args=(stop, peaks), daemon=True)
    th.start()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        table = run_series(src, os.path.join(d, "s"), workers=2 if scheduler == "distributed" else None)
        dt = time.perf_counter() - t
        times = []
        for s in src:  # per-scan times as written by each scan's run.json
            try:
                info = json.load(open(os.path.join(d, "s", "scans", s.name, "run.json")))
                times.append(sum(info.get("timings_s", {}).values()))
            except OSError:
                pass
    stop.set()
    th.join()
    main_peak = max((v for (pid, name), v in peaks.items() if name == "main"), default=0)
    workers = sorted((v for (pid, name), v in peaks.items() if name != "main"), reverse=True)
    print(
        json.dumps(
            dict(
                n_scans=n,
                seconds=dt,
                seconds_per_scan=dt / n,
                pipeline_s_per_scan=sum(times) / max(len(times), 1),
                main_peak_mib=main_peak / 2**20,
                worker_peaks_mib=[w / 2**20 for w in workers[:4]],
                particles=int(table["particle"].nunique()),
            )
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--energies", type=int, default=143)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--particles", type=int, default=36)
    ap.add_argument("--schedulers", nargs="+", default=["threads", "distributed"], choices=["threads", "distributed"])
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        one(a.scans, a.energies, a.size, a.particles, a.one)
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{a.scans} scans of {a.energies} x {a.size} x {a.size}, {a.particles} particles, default (learned) models"
    )
    print(
        "| scheduler | scans | time s | s per scan | pipeline s per scan | peak RSS MiB main / workers | particles linked | 54 scans (projected) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for sched in a.schedulers:
        cmd = [sys.executable, __file__, "--one", sched, "--scans", str(a.scans), "--energies", str(a.energies)]
        cmd += ["--size", str(a.size), "--particles", str(a.particles)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-3000:])
        r = json.loads(r.stdout.strip().splitlines()[-1])
        workers = " / ".join(f"{w:.0f}" for w in r["worker_peaks_mib"]) or "-"
        name = "threads (2)" if sched == "threads" else "distributed, 2 workers"
        print(
            f"| {name} | {r['n_scans']} | {r['seconds']:.0f} | {r['seconds_per_scan']:.1f} | {r['pipeline_s_per_scan']:.1f} | "
            f"{r['main_peak_mib']:.0f} / {workers} | {r['particles']} | {54 * r['seconds_per_scan'] / 60:.0f} min |"
        )


if __name__ == "__main__":
    main()
