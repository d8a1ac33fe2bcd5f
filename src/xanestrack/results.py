"""Writing results: tables, HDF5 and provenance, atomically.

Everything is written into a temporary folder beside the target and moved into
place only when complete; an existing folder is replaced only with
``overwrite=True``, and then only after the new one is complete (an interrupted run
leaves the previous results intact).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__

__all__ = ["atomic_output_dir", "check_output_dir", "write_results", "read_results"]


def check_output_dir(out_dir, *, overwrite: bool) -> Path:
    """Refuse an existing output folder unless ``overwrite``; refuse a file there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder {out} exists and is not empty; choose another --out or pass --overwrite")
    return out


@contextmanager
def atomic_output_dir(out_dir, *, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces ``out_dir``.

    On an exception the temporary folder is removed and ``out_dir`` is untouched.
    """
    out = check_output_dir(out_dir, overwrite=overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_results(result, folder, *, run_info: dict, save_fused: bool = False) -> None:
    """Write ``tracks.csv``, ``results.h5``, ``run.json`` and side tables into ``folder``.

    ``folder`` should be the temporary folder of :func:`atomic_output_dir`. The fused
    stack (as large as the input) is stored only with ``save_fused``; its first, last
    and mean frames always are.
    """
    import h5py

    folder = Path(folder)
    result.tracks.to_csv(folder / "tracks.csv", index=False, float_format="%.4f")
    result.detections.to_csv(folder / "detections.csv", index=False, float_format="%.3f")
    result.rejected.to_csv(folder / "rejected.csv", index=False, float_format="%.2f")
    if len(result.peak_ratios):
        result.peak_ratios.to_csv(folder / "motion_summary.csv", index=False, float_format="%.4f")
    comp = dict(compression="gzip", compression_opts=1, shuffle=True)
    with h5py.File(folder / "results.h5", "w") as f:
        f.attrs["xanestrack_version"] = __version__
        f.attrs["coordinates"] = "pixels (row y, column x); origin_y/origin_x give frame-0 coordinates of pixel [0, 0]"
        f.create_dataset("energies_ev", data=result.energies_ev)
        f.create_dataset("common_shift", data=result.common_shift)
        g = f.create_group("particles")
        for p in result.particles:
            pg = g.create_group(f"{p.particle:03d}")
            pg.attrs.update(
                particle=p.particle,
                origin_y=int(p.origin[0]),
                origin_x=int(p.origin[1]),
                e0_ev=p.e0_ev,
                radius_px=p.radius,
                notes=json.dumps(list(p.notes)),
            )
            pg.create_dataset("aligned", data=p.aligned, chunks=(1, *p.aligned.shape[1:]), **comp)
            pg.create_dataset("masks", data=p.masks, chunks=(1, *p.masks.shape[1:]), **comp)
            pg.create_dataset("mask", data=p.mask)
            for name, m in p.edge_maps.items():
                d = pg.create_dataset(f"edge_{name}", data=m, **comp)
                d.attrs.update(units="eV", origin_y=int(p.origin[0]), origin_x=int(p.origin[1]))
            pg.create_dataset("pixel_flags", data=p.pixel_flags, **comp)
            if p.fractions is not None:
                d = pg.create_dataset("fractions", data=p.fractions, **comp)
                d.attrs["references"] = json.dumps(list(p.reference_names))
                d.attrs.update(origin_y=int(p.origin[0]), origin_x=int(p.origin[1]))
            pg.create_dataset("positions", data=p.positions)
            pg.create_dataset("shifts", data=p.shifts)
            pg.create_dataset("frame_flags", data=p.frame_flags)
            pg.create_dataset("mean_spectrum", data=p.mean_spectrum)
            pg.create_dataset("mean_norm", data=p.mean_norm)
            pg.create_dataset("pre_edge", data=p.pre_edge)
            pg.create_dataset("post_edge", data=p.post_edge)
            if p.unaligned_ends is not None:
                pg.create_dataset("unaligned_ends", data=p.unaligned_ends, **comp)
        if result.fused is not None:
            desc = "frame-0 grid: frames rigidly aligned, each particle pasted aligned"
            for name, img in (("fused_first", result.fused[0]), ("fused_last", result.fused[-1])):
                f.create_dataset(name, data=img, **comp).attrs["description"] = desc
            if save_fused and result.fused.shape[0] == len(result.energies_ev):
                d = f.create_dataset("fused", data=result.fused, chunks=(1, *result.fused.shape[1:]), **comp)
                d.attrs["description"] = desc
    info = dict(run_info)
    info.setdefault("version", __version__)
    info["timings_s"] = result.timings
    info["notes"] = list(result.notes)
    info["parameters"] = result.options.to_dict()
    with open(folder / "run.json", "w") as fh:
        json.dump(info, fh, indent=2, default=_json_default)


def read_results(folder) -> dict:
    """Read back what :func:`write_results` wrote (tables as DataFrames, particles as dicts)."""
    import h5py
    import pandas as pd

    folder = Path(folder)
    if not (folder / "results.h5").is_file():
        raise ValueError(f"{folder}: no results.h5 here; is this a xanestrack output folder?")
    tracks = pd.read_csv(folder / "tracks.csv", dtype={"flags": "string"})
    if "flags" in tracks:
        tracks["flags"] = tracks["flags"].fillna("")
    out = dict(tracks=tracks, run=json.loads((folder / "run.json").read_text()))
    for name in ("detections", "rejected", "motion_summary"):
        p = folder / f"{name}.csv"
        if p.is_file() and p.stat().st_size > 1:
            try:
                out[name] = pd.read_csv(p)
            except pd.errors.EmptyDataError:
                out[name] = pd.DataFrame()
    parts = []
    with h5py.File(folder / "results.h5", "r") as f:
        out["energies_ev"] = f["energies_ev"][()]
        out["common_shift"] = f["common_shift"][()]
        for key in sorted(f["particles"]):
            g = f["particles"][key]
            d = {k: g[k][()] for k in g}
            d.update({k: g.attrs[k] for k in g.attrs})
            if "fractions" in g:
                d["reference_names"] = json.loads(g["fractions"].attrs["references"])
            parts.append(d)
        for name in ("fused_first", "fused_last"):
            out[name] = f[name][()] if name in f else None
    out["particles"] = parts
    return out
