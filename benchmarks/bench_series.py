"""Series throughput and peak memory against the number of scans (Dask threaded scheduler).

Each series size runs in a fresh process so that its peak resident memory (ru_maxrss)
is its own. Scans are synthetic (generated inside the Dask tasks, as a reader would read
them lazily): ``--energies`` x ``--size``^2 with ``--particles`` particles.

Usage: python benchmarks/bench_series.py [--scans 4 8 16] [--energies 60] [--size 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile


def one(n, energies, size, particles, workers):
    import resource
    import time

    from xanestrack.parallel.series import run_series, synthetic_sources

    src = synthetic_sources(
        n,
        seed=1,
        n_energies=energies,
        shape=(size, size),
        n_particles=particles,
        radius_range=(10.0, 24.0),
        stage_offset=10.0,
        deformation=4.0,
    )
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        table = run_series(src, os.path.join(d, "s"), workers=workers)
        dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(
        json.dumps(
            dict(
                n_scans=n,
                seconds=dt,
                frames_per_s=n * energies / dt,
                peak_rss_mib=rss,
                particles=int(table["particle"].nunique()),
            )
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--energies", type=int, default=60)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--particles", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="local distributed cluster instead of threads")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        one(a.one, a.energies, a.size, a.particles, a.workers)
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; scans of {a.energies} x {a.size} x {a.size}, {a.particles} particles; scheduler: {'distributed x%d' % a.workers if a.workers else 'threads'}"
    )
    print("| scans | frames | time s | frames/s | peak RSS MiB | particles linked |")
    print("|---|---|---|---|---|---|")
    for n in a.scans:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--energies",
            str(a.energies),
            "--size",
            str(a.size),
            "--particles",
            str(a.particles),
        ]
        if a.workers:
            cmd += ["--workers", str(a.workers)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(
            f"| {n} | {n * a.energies} | {r['seconds']:.1f} | {r['frames_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['particles']} |"
        )


if __name__ == "__main__":
    main()
