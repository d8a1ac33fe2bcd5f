"""Reading a 143-energy scan of 1024 x 1024 .xrm files (+ one reference per energy).

The scan is built by copying one real SSRL sample file and one reference file from
../shared/data/real_txm under names carrying 143 energies. Reports the median of
``--repeats`` runs of (a) reading the raw bytes of every file, (b) parsing them with
xanestrack (OLE2 + grouping + flat-field to OD). With ``--drop-caches`` (root) the page
cache is dropped before each run, so (a) is a real disk read.

Usage: python benchmarks/bench_read_xrm.py [--n 143] [--repeats 3] [--drop-caches]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_txm" / "ssrl_6-2c_nca"


def drop():
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv=None):
    from xanestrack.io import read_stack
    from xanestrack.synth import ni_energy_grid

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=143)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true")
    a = ap.parse_args(argv)
    sample = SRC / "rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm"
    ref = SRC / "rep01_000051_ref_20161456_ssrl-test-data_08324.0_eV_001of010.xrm"
    if not sample.is_file():
        raise SystemExit(f"needs the real data in {SRC}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        d = Path(d)
        for e in ni_energy_grid(a.n):
            shutil.copy(sample, d / f"scan_{e:08.1f}_eV_001of001.xrm")
            shutil.copy(ref, d / f"scan_ref_{e:08.1f}_eV_001of001.xrm")
        files = sorted(d.iterdir())
        total = sum(f.stat().st_size for f in files)
        from xanestrack.io.xrm import read_xrm

        raw, parse, files_only, dropped = [], [], [], False
        for _ in range(a.repeats):
            if a.drop_caches:
                dropped = drop()
            t = time.perf_counter()
            for f in files:
                f.read_bytes()
            raw.append(time.perf_counter() - t)
            if a.drop_caches:
                drop()
            t = time.perf_counter()
            for f in files:
                read_xrm(f)
            files_only.append(time.perf_counter() - t)
            if a.drop_caches:
                drop()
            t = time.perf_counter()
            st = read_stack(d)
            parse.append(time.perf_counter() - t)
        print(f"{len(files)} files, {total / 1e6:.0f} MB, stack {st.od.shape}; page cache dropped: {dropped}")
        print(f"raw byte read: median {statistics.median(raw):.2f} s ({total / 1e6 / statistics.median(raw):.0f} MB/s)")
        print(f"parse every file (read_xrm, bytes included): median {statistics.median(files_only):.2f} s")
        print(f"read_stack (parse + average exposures + flat-field to OD): median {statistics.median(parse):.2f} s")


if __name__ == "__main__":
    main()
