"""Writing and reading results: the result model to and from an output folder.

:func:`write_results` writes a :class:`~xanestrack.result.PipelineResult` as ``results.h5``
(everything, exactly), ``tracks.csv`` and side tables (for people and spreadsheets) and
``run.json`` (provenance); :func:`read_results` gives the same ``PipelineResult`` back.
The folder itself is claimed, locked and completed atomically by :mod:`xanestrack.outdir`
(re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import XanestrackError, one_line
from .outdir import MARKER, TMP_MARKER, add_to_marker, atomic_output_dir, check_output_dir, output_lock, write_marker  # noqa: F401 (re-exported)

__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "output_lock",
    "write_marker",
    "add_to_marker",
    "write_results",
    "write_tables",
    "write_results_h5",
    "read_results",
    "cluster_table",
]

logger = logging.getLogger(__name__)


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


#: tables of a PipelineResult kept exactly in results.h5 (/tables/<name>) and as CSV beside it
TABLES = ("tracks", "detections", "rejected", "motion", "peak_ratios", "similarity", "edge_widths")
_CSV = {
    "tracks": ("tracks.csv", "%.4f"),
    "detections": ("detections.csv", "%.3f"),
    "rejected": ("rejected.csv", "%.2f"),
    "peak_ratios": ("motion_summary.csv", "%.4f"),
}
#: what every results.h5 holds: tracks.csv columns, and per particle its datasets and attributes
TRACK_COLUMNS = ("particle", "frame", "energy_ev", "y", "x", "flags")
PARTICLE_DATASETS = ("aligned", "mask", "positions", "edge_e50", "mean_spectrum", "mean_norm", "pre_edge", "post_edge")
PARTICLE_ATTRS = ("particle", "origin_y", "origin_x", "radius_px", "e0_ev")


def _json_attrs(attrs: dict) -> str:
    """The JSON-able part of a DataFrame's ``attrs`` (nested DataFrames are stored as tables)."""
    import pandas as pd

    return json.dumps({k: v for k, v in attrs.items() if not isinstance(v, pd.DataFrame)}, default=_json_default)


def _write_table(parent, name: str, df) -> None:
    """A DataFrame as one dataset per column (strings as UTF-8), exactly; dtypes and attrs kept."""
    import h5py

    g = parent.create_group(name)
    cols, dtypes = [], []
    for j, c in enumerate(df.columns):
        v = df[c].to_numpy()
        key = f"c{j:03d}"
        if v.dtype.kind in "biuf":
            g.create_dataset(key, data=v)
        else:  # strings, None, mixed objects
            txt = ["" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x) for x in v]
            g.create_dataset(key, data=np.array(txt, dtype=object), dtype=h5py.string_dtype())
        cols.append(str(c))
        dtypes.append(str(df[c].dtype))
    g.attrs.update(columns=json.dumps(cols), dtypes=json.dumps(dtypes), attrs=_json_attrs(df.attrs), n_rows=len(df))


def _read_table(g):
    import pandas as pd

    cols, dtypes = json.loads(g.attrs["columns"]), json.loads(g.attrs["dtypes"])
    data = {}
    for j, (c, dt) in enumerate(zip(cols, dtypes)):
        v = g[f"c{j:03d}"][()]
        if v.dtype.kind == "O":
            v = np.array([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
            data[c] = pd.Series(v, dtype=object if dt == "object" else dt)
        else:
            data[c] = v
    df = pd.DataFrame(data, columns=cols)
    if not cols:
        df = pd.DataFrame(index=range(int(g.attrs.get("n_rows", 0))))
    df.attrs.update(json.loads(g.attrs.get("attrs", "{}")))
    return df


#: pipeline options added after results were first written, and what a result written before them did
#: (its options lack the field; the current default would misdescribe it)
_BEFORE_OPTION = {
    "smooth_tracks": False,
    "density_voucher": False,
    "shape_apodisation": False,
    "mask_guard": False,
    "subtract_matrix": False,
    "unmix_matrix": False,
    "match_resolution": False,
}


def _options_from_dict(cls, d: dict):
    """Rebuild a (nested, frozen) options dataclass from its ``asdict`` (JSON lists back to tuples)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue  # written by an older version: the default
        v = d[f.name]
        t = hints.get(f.name)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = _options_from_dict(t, v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


#: units of the per-particle maps (``ParticleResult.maps``) in results.h5
_MAP_UNITS = {
    "e50_sigma": "eV",
    "e50_sigma_noise": "eV",
    "e50_sigma_registration": "eV",
    "whiteline_height": "normalised absorption",
    "fraction_sigma": "fraction",
    "edge_jump_od": "OD",
    "quality_keep": "bool: pixel trusted (edge jump and fit quality)",
    "cluster": "cluster index, -1 where not clustered",
}


def _write_chemistry(g, chem: dict) -> None:
    """``PipelineResult.chemistry``: arrays as datasets, tables as tables, the rest as JSON attributes."""
    import pandas as pd

    tables = g.create_group("tables")
    other = {}
    for k, v in chem.items():
        if isinstance(v, pd.DataFrame):
            _write_table(tables, k, v)
        elif isinstance(v, np.ndarray):
            g.create_dataset(k, data=v)
        else:
            other[k] = v
    g.attrs["values"] = json.dumps(other, default=_json_default)
    g.attrs["description"] = "phase mapping of all particles together (xanestrack.pipeline.phase_mapping)"


def _read_chemistry(g) -> dict:
    out = {k: g[k][()] for k in g if k != "tables"}
    for k in g.get("tables", {}):
        out[k] = _read_table(g["tables"][k])
    out.update(json.loads(g.attrs.get("values", "{}")))
    return out


def cluster_table(result):
    """Per-particle cluster fractions as one row per particle (``clusters.csv``), or None without clusters.

    Columns ``particle, n_clustered, cluster_0_fraction, ...`` (fractions of the
    particle's clustered, quality-kept pixels).
    """
    import pandas as pd

    chem = result.chemistry or {}
    cf = chem.get("cluster_fractions")
    if cf is None:
        return None
    k = int(chem.get("settings", {}).get("clusters", 0))
    rows = []
    for p in result.particles:
        g = cf[cf["particle"] == p.particle].set_index("cluster")
        n = int(g["n_pixels"].sum()) if len(g) else 0
        rows.append(
            [int(p.particle), n]
            + [float(g.loc[j, "fraction"]) if (len(g) and j in g.index and n) else np.nan for j in range(k)]
        )
    return pd.DataFrame(rows, columns=["particle", "n_clustered"] + [f"cluster_{j}_fraction" for j in range(k)])


def write_results(result, folder, *, run_info: dict, save_fused: bool = False) -> None:
    """Write a :class:`~xanestrack.result.PipelineResult` into ``folder``.

    ``results.h5`` holds everything :func:`read_results` needs to give the same result
    back; ``tracks.csv``, ``detections.csv``, ``rejected.csv``, ``motion_summary.csv``
    are copies for people and spreadsheets; ``run.json`` the provenance. ``folder``
    should be the temporary folder of :func:`atomic_output_dir`. The fused stack (as
    large as the input) is stored only with ``save_fused``; its first and last frames
    always are (and are what is read back otherwise).

    The same as :func:`write_tables` then :func:`write_results_h5` (the command line runs
    the second beside the report, which needs only the first).
    """
    write_tables(result, folder, run_info=run_info)
    write_results_h5(result, folder, save_fused=save_fused)


def write_tables(result, folder, *, run_info: dict) -> None:
    """The CSV copies of the result's tables and ``run.json`` (provenance, timings so far)."""
    folder = Path(folder)
    for name, (fname, fmt) in _CSV.items():
        df = getattr(result, name)
        if name != "peak_ratios" or len(df):
            df.to_csv(folder / fname, index=False, float_format=fmt)
    ct = cluster_table(result)
    if ct is not None:
        ct.to_csv(folder / "clusters.csv", index=False, float_format="%.4f")
    info = dict(run_info)
    info.setdefault("version", __version__)
    info["timings_s"] = dict(result.timings)
    info["notes"] = list(result.notes)
    info["parameters"] = result.options.to_dict()
    _write_run_json(folder, info)


def _write_run_json(folder, info: dict) -> None:
    with open(Path(folder) / "run.json", "w") as fh:
        json.dump(info, fh, indent=2, default=_json_default)


def add_timing(folder, stage: str, seconds: float) -> None:
    """Add a stage's time to ``run.json`` in ``folder`` (one timed after it was written: the report)."""
    info = json.loads((Path(folder) / "run.json").read_text())
    info["timings_s"] = dict(info.get("timings_s", {}), **{stage: float(seconds)})
    _write_run_json(folder, info)


#: True after a results.h5 that could not be written (the disk full) left HDF5 handles it cannot close: the
#: library's own clean-up at exit then crashes the interpreter (exit 139 after the error), so the command line
#: ends such a process at once (:func:`xanestrack.cli._fail`), its output folder already cleaned up
HDF5_LEFT_OPEN = False


def write_results_h5(result, folder, *, save_fused: bool = False) -> None:
    """``results.h5``: everything :func:`read_results` needs to give the same result back.

    Refused before writing where the file-size limit (``ulimit -f``) or the free space of the disk is below what
    the particles' aligned windows and masks alone take; a failed write (the disk filled meanwhile) is a
    :class:`~xanestrack.errors.XanestrackError` naming the file, the partial file removed (see
    :data:`HDF5_LEFT_OPEN`)."""
    import gc

    import h5py

    folder = Path(folder)
    path = folder / "results.h5"
    need = sum(int(p.aligned.nbytes) + int(p.masks.nbytes) for p in result.particles) + (1 << 20)
    _check_room(path, need)
    _quiet_h5py_dealloc()
    f = None
    try:
        f = h5py.File(path, "w")
        _write_h5(f, result, save_fused)
        f.close()
    except BaseException as exc:
        if f is not None:
            global HDF5_LEFT_OPEN
            HDF5_LEFT_OPEN = True  # whether HDF5 still holds it cannot be told from here (h5py marks it closed)
            try:
                f.close()
            except Exception:  # its buffers cannot be written either: closed as far as HDF5 can
                pass
            del f
            if isinstance(exc, OSError):  # its datasets, held by the traceback's frames: freed now
                exc.__traceback__ = None
                gc.collect()
        try:
            path.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):  # the caller names the output folder
            raise OSError(exc.errno, f"results.h5: {os.strerror(exc.errno) if exc.errno else one_line(exc)}") from None
        raise


def _quiet_h5py_dealloc() -> None:
    """From now on, h5py's handles do not print their failure to close when freed: once a file could not be
    written, each of its datasets printed "Exception ignored in ... __dealloc__" with HDF5's whole message (900 lines
    above the error of a small scan)."""
    previous = sys.unraisablehook
    if getattr(previous, "_xanestrack", False):
        return

    def hook(unraisable):
        if "h5py" in repr(getattr(unraisable, "object", "")):
            return
        previous(unraisable)

    hook._xanestrack = True
    sys.unraisablehook = hook


def _check_room(path: Path, need: int) -> None:
    """Refuse writing ``need`` bytes at ``path`` beyond the file-size limit or the disk's free space."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and need > soft:
        raise XanestrackError(
            f"cannot write {path}: it takes about {need / 2**20:.0f} MiB and files are limited to {soft / 2**20:.1f} "
            "MiB here (ulimit -f); raise the limit"
        )
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if need > free:
        raise XanestrackError(
            f"cannot write {path}: it takes about {need / 2**20:.0f} MiB and {free / 2**20:.0f} MiB are free there; "
            "free space, or choose another output folder (`out`)"
        )


def _write_h5(f, result, save_fused: bool) -> None:
    comp = dict(compression="gzip", compression_opts=1, shuffle=True)
    f.attrs["xanestrack_version"] = __version__
    f.attrs["coordinates"] = "pixels (row y, column x); origin_y/origin_x give frame-0 coordinates of pixel [0, 0]"
    f.attrs["frame_shape"] = np.asarray(result.frame_shape, np.int64)
    f.attrs["notes"] = json.dumps(list(result.notes))
    f.attrs["timings_s"] = json.dumps(dict(result.timings), default=_json_default)
    f.attrs["options"] = json.dumps(result.options.to_dict(), default=_json_default)
    f.create_dataset("energies_ev", data=result.energies_ev)
    d = f.create_dataset("common_shift", data=result.common_shift)
    d.attrs["description"] = (
        "per frame (dy, dx) px: the linker's rough shift of the frame from the first, from the detections (where "
        "each particle's search window was placed); not the common motion: that is common_similarity (the "
        "translation, scale and rotation fitted over the particles' positions, as in tracks.csv common_dy, common_dx)"
    )
    sim = result.similarity
    if sim is not None and len(sim):
        cols = ["common_dy", "common_dx", "scale", "rotation_rad", "n_particles", "residual_px"]
        d = f.create_dataset("common_similarity", data=sim[cols].to_numpy(float))
        d.attrs["columns"] = json.dumps(cols)
        d.attrs["description"] = (
            "per frame: translation of the scale centre, isotropic scale (magnification relative to the first frame), "
            "rotation, particles fitted, RMS residual; fitted robustly over the particles' "
            + sim.attrs.get("fitted_on", "vouched positions")
        )
        d.attrs["fitted_on"] = sim.attrs.get("fitted_on", "vouched positions")
        d.attrs["centre_yx"] = sim.attrs.get("centre", [np.nan, np.nan])
    tg = f.create_group("tables")
    tg.attrs["description"] = "the result's tables, exactly (tracks.csv etc. are rounded copies)"
    for name in TABLES:
        df = getattr(result, name)
        if df is not None:
            _write_table(tg, name, df)
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
            reference_frame=int(p.reference_frame),
            reference_names=json.dumps(list(p.reference_names)),
        )
        # the aligned windows (noisy floats) uncompressed: gzip kept 78 % of their bytes and took 10x the
        # time of writing them (460^2, 9 particles: 0.41 s for 26 MB against 0.04 s for 33 MB)
        pg.create_dataset("aligned", data=p.aligned, chunks=(1, *p.aligned.shape[1:]))
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
        if p.agreement is not None:
            d = pg.create_dataset("agreement_px", data=p.agreement)
            d.attrs["reference_frame"] = int(p.reference_frame)
        if p.edge_positions is not None:
            pg.create_dataset("edge_positions", data=p.edge_positions)
        pg.create_dataset("mean_spectrum", data=p.mean_spectrum)
        pg.create_dataset("mean_norm", data=p.mean_norm)
        pg.create_dataset("pre_edge", data=p.pre_edge)
        pg.create_dataset("post_edge", data=p.post_edge)
        if p.unaligned_ends is not None:
            pg.create_dataset("unaligned_ends", data=p.unaligned_ends, **comp)
        if p.xanes_frames is not None:
            pg.create_dataset("xanes_frames", data=np.asarray(p.xanes_frames))
        for name, m in p.maps.items():
            d = pg.create_dataset(f"map_{name}", data=m, **comp)
            d.attrs.update(origin_y=int(p.origin[0]), origin_x=int(p.origin[1]))
            if name in _MAP_UNITS:
                d.attrs["units"] = _MAP_UNITS[name]
            if name == "fraction_sigma":
                d.attrs["references"] = json.dumps(list(p.reference_names))
    if result.chemistry is not None:
        _write_chemistry(f.create_group("chemistry"), result.chemistry)
    if result.fused is not None:
        desc = "frame-0 grid: frames rigidly aligned, each particle pasted aligned"
        for name, img in (("fused_first", result.fused[0]), ("fused_last", result.fused[-1])):
            f.create_dataset(name, data=img, **comp).attrs["description"] = desc
        if save_fused and result.fused.shape[0] == len(result.energies_ev):
            d = f.create_dataset("fused", data=result.fused, chunks=(1, *result.fused.shape[1:]), **comp)
            d.attrs["description"] = desc


def read_run_info(folder) -> dict:
    """``run.json`` of an output folder (provenance: command, inputs, checksums, timings...)."""
    folder = Path(folder)
    rerun = "rerun 'xanestrack run' to write a complete output folder"
    if not (folder / "run.json").is_file():
        raise XanestrackError(f"{folder / 'run.json'}: missing; {rerun}")
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise XanestrackError(f"{folder / 'run.json'}: not readable JSON ({one_line(exc)}); {rerun}") from None
    if not isinstance(run, dict):
        raise XanestrackError(f"{folder / 'run.json'}: not a run description (a JSON object); {rerun}")
    return run


def _read_csv_tables(folder: Path, rerun: str) -> dict:
    """The tables from the CSV files (folders written before results.h5 held them)."""
    import pandas as pd

    try:
        tracks = pd.read_csv(folder / "tracks.csv", dtype={"flags": "string"})
    except Exception as exc:  # empty, binary, ragged
        raise XanestrackError(f"{folder / 'tracks.csv'}: unreadable ({one_line(exc)}); {rerun}") from None
    if "flags" in tracks:
        tracks["flags"] = tracks["flags"].fillna("")
    out = dict(tracks=tracks)
    for name, fname in (
        ("detections", "detections.csv"),
        ("rejected", "rejected.csv"),
        ("peak_ratios", "motion_summary.csv"),
    ):
        p = folder / fname
        out[name] = pd.DataFrame()
        if p.is_file() and p.stat().st_size > 1:
            try:
                out[name] = pd.read_csv(p)
            except pd.errors.EmptyDataError:
                pass
            except Exception as exc:
                raise XanestrackError(f"{p}: unreadable ({one_line(exc)}); {rerun}") from None
    return out


def _read_particle(g, n_frames: int):
    from .result import ParticleResult

    d = {k: g[k][()] for k in g}
    a = g.attrs
    edge_maps = {k[5:]: v for k, v in d.items() if k.startswith("edge_") and k != "edge_positions"}
    names = a.get("reference_names")
    if names is not None:
        names = tuple(json.loads(names))
    elif "fractions" in g:
        names = tuple(json.loads(g["fractions"].attrs["references"]))
    else:
        names = ()
    positions = d["positions"]
    return ParticleResult(
        particle=int(a["particle"]),
        positions=positions,
        shifts=d.get("shifts", positions - positions[0]),
        origin=np.array([int(a["origin_y"]), int(a["origin_x"])]),
        aligned=d["aligned"],
        masks=d.get("masks", np.repeat(d["mask"][None].astype(np.float32), n_frames, axis=0)),
        mask=d["mask"],
        frame_flags=d.get("frame_flags", np.zeros(n_frames, np.uint8)),
        edge_maps=edge_maps,
        pixel_flags=d.get("pixel_flags", np.zeros(d["mask"].shape, np.uint8)),
        fractions=d.get("fractions"),
        reference_names=names,
        mean_spectrum=d["mean_spectrum"],
        mean_norm=d["mean_norm"],
        pre_edge=d["pre_edge"],
        post_edge=d["post_edge"],
        e0_ev=float(a["e0_ev"]),
        radius=float(a["radius_px"]),
        unaligned_ends=d.get("unaligned_ends"),
        notes=tuple(json.loads(a["notes"])) if "notes" in a else (),
        agreement=d.get("agreement_px"),
        reference_frame=int(
            a.get("reference_frame", g["agreement_px"].attrs.get("reference_frame", 0) if "agreement_px" in g else 0)
        ),
        edge_positions=d.get("edge_positions"),
        maps={k[4:]: v for k, v in d.items() if k.startswith("map_")},
        xanes_frames=d.get("xanes_frames"),
    )


def read_results(folder):
    """Read back what :func:`write_results` wrote: the same :class:`~xanestrack.result.PipelineResult`.

    Every field is read exactly from ``results.h5`` (folders from before it held the
    tables are read from their CSV files, the missing fields with defaults). ``fused``
    is the whole fused stack where it was saved, else its first and last frames.

    Raises
    ------
    XanestrackError (a ValueError)
        Naming the file, if a file is missing, unreadable, or lacks a dataset or
        column that :func:`write_results` writes (an incomplete or foreign folder).
    """
    import h5py
    import pandas as pd

    from .pipeline import PipelineOptions
    from .result import PipelineResult

    folder = Path(folder)
    rerun = "rerun 'xanestrack run' to write a complete output folder"
    if not folder.is_dir():
        raise XanestrackError(f"{folder}: not a folder; give an output folder of 'xanestrack run'")
    if not (folder / "results.h5").is_file():
        raise XanestrackError(f"{folder}: no results.h5 here; is this a xanestrack output folder?")
    for name in ("tracks.csv", "run.json"):
        if not (folder / name).is_file():
            raise XanestrackError(f"{folder / name}: missing; {rerun}")
    run = read_run_info(folder)
    h5 = folder / "results.h5"
    try:
        f = h5py.File(h5, "r")
    except Exception as exc:
        raise XanestrackError(f"{h5}: not a readable HDF5 file ({one_line(exc)}); {rerun}") from None
    try:
        with f:
            for name in ("energies_ev", "common_shift", "particles"):
                if name not in f:
                    raise XanestrackError(f"{h5}: no /{name}; not a complete xanestrack results file: {rerun}")
            energies = f["energies_ev"][()]
            if "tables" in f:
                # the tables exactly, from results.h5 (tracks.csv etc. are rounded copies for the user: the report
                # is built from these, whatever was done to the CSV files)
                tables = {name: _read_table(f["tables"][name]) for name in TABLES if name in f["tables"]}
                where = f"{h5} /tables/tracks"
            else:
                tables = _read_csv_tables(folder, rerun)
                where = str(folder / "tracks.csv")
            tracks = tables.get("tracks")
            missing = [c for c in TRACK_COLUMNS if tracks is None or c not in tracks]
            for cols in (
                ("dy", "dx", "vy", "vx", "rigid_dy", "rigid_dx"),
                ("nonrigid_dy", "nonrigid_dx", "rel_dy", "rel_dx"),
            ):
                if tracks is not None and any(c in tracks for c in cols):
                    missing += [c for c in cols if c not in tracks]
            if missing:
                raise XanestrackError(f"{where}: no column(s) {', '.join(missing)}; {rerun}")
            similarity = tables.get("similarity")
            if similarity is None and "common_similarity" in f:
                d = f["common_similarity"]
                similarity = pd.DataFrame(d[()], columns=json.loads(d.attrs["columns"]))
                similarity.insert(0, "frame", np.arange(len(similarity)))
                similarity.attrs["centre"] = list(d.attrs.get("centre_yx", [np.nan, np.nan]))
            if similarity is not None and "common_similarity" in f and "fitted_on" in f["common_similarity"].attrs:
                similarity.attrs["fitted_on"] = str(f["common_similarity"].attrs["fitted_on"])
            motion = tables.get("motion", pd.DataFrame())
            if similarity is not None:
                motion.attrs["similarity"] = similarity
            parts = []
            for key in sorted(f["particles"]):
                g = f["particles"][key]
                gone = [f"/particles/{key}/{k}" for k in PARTICLE_DATASETS if k not in g]
                gone += [f"attribute {k} of /particles/{key}" for k in PARTICLE_ATTRS if k not in g.attrs]
                if gone:
                    raise XanestrackError(f"{h5}: no {gone[0]}; not a complete xanestrack results file: {rerun}")
                parts.append(_read_particle(g, len(energies)))
            if "fused" in f:
                fused = f["fused"][()]
            elif "fused_first" in f:
                fused = np.stack([f["fused_first"][()], f["fused_last"][()]])
            else:
                fused = None
            attrs = f.attrs
            shape = (
                tuple(int(v) for v in attrs["frame_shape"])
                if "frame_shape" in attrs
                else tuple(run.get("frame_shape", fused.shape[1:] if fused is not None else (0, 0)))
            )
            options = json.loads(attrs["options"]) if "options" in attrs else run.get("parameters", {})
            options = dict(options) if isinstance(options, dict) else {}
            for name, then in _BEFORE_OPTION.items():
                options.setdefault(name, then)  # a result written before the option: what was done then
            result = PipelineResult(
                energies_ev=energies,
                frame_shape=shape,
                detections=tables.get("detections", pd.DataFrame()),
                tracks=tracks,
                rejected=tables.get("rejected", pd.DataFrame()),
                particles=parts,
                motion=motion,
                peak_ratios=tables.get("peak_ratios", pd.DataFrame()),
                common_shift=f["common_shift"][()],
                fused=fused,
                timings=json.loads(attrs["timings_s"]) if "timings_s" in attrs else dict(run.get("timings_s", {})),
                options=_options_from_dict(PipelineOptions, options),
                notes=tuple(json.loads(attrs["notes"])) if "notes" in attrs else tuple(run.get("notes", ())),
                similarity=similarity,
                chemistry=_read_chemistry(f["chemistry"]) if "chemistry" in f else None,
                edge_widths=tables.get("edge_widths"),
            )
    except XanestrackError:
        raise
    except Exception as exc:  # truncated datasets, groups where datasets should be, bad attributes
        raise XanestrackError(f"{h5}: damaged ({type(exc).__name__}: {one_line(exc)}); {rerun}") from None
    return result
