"""Operando series: many scans, processed in parallel with Dask, particles linked across scans.

Each scan is one task: read lazily (inside the task), run the per-scan pipeline,
write its results to ``OUT/scans/NAME/`` (``tracks.csv``, ``results.h5`` with chunked
datasets, ``summary.json``) atomically, and return a small per-particle summary.
A scan whose folder is complete, made from the same input content (SHA-256), is not
redone: an interrupted series resumes where it stopped, and a replaced input is
processed again. Memory is bounded by the scans in flight (the worker count), whatever the
series length.

Schedulers: Dask's threaded scheduler by default (no set-up); ``workers=N`` starts a
local ``dask.distributed`` cluster of N single-threaded worker processes;
``scheduler=ADDRESS`` connects to a running cluster; ``"sync"`` runs the scans one by
one in this process (the reference the parallel paths are tested against).

Particles are linked across scans like frames within a scan (:mod:`xanestrack.match`):
the common displacement between consecutive scans is voted, then positions are
assigned optimally within a gate that grows with the particle's size.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import XanestrackError

__all__ = ["ScanSource", "series_sources", "synthetic_sources", "source_checksum", "process_scan", "run_series", "link_scans"]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["scan", "scan_name", "scan_particle", "y0", "x0", "radius", "mean_e50", "oxidised_fraction", "max_nonrigid_px", "flagged_frames"]


@dataclass(frozen=True)
class ScanSource:
    """Where one scan comes from; :meth:`load` reads it (called inside the task)."""

    name: str
    index: int
    kind: str  # "input" (file or .xrm folder), "hdf5-scan" (4-D file), "synthetic"
    path: str | None = None
    synthetic: dict | None = None

    def load(self):
        from ..stack import Stack

        if self.kind == "input":
            from ..io import read_stack

            return read_stack(self.path)
        if self.kind == "hdf5-scan":
            return _read_hdf5_scan(self.path, self.index)
        if self.kind == "synthetic":
            from ..synth import make_synthetic_series

            cfg = dict(self.synthetic)
            ser = make_synthetic_series(cfg.pop("preset"), n_scans=cfg.pop("n_scans"), seed=cfg.pop("seed"), **cfg)
            s = ser.scan(self.index)
            return Stack(s.optical_density(), s.energies_ev, None, dict(source=self.name, reader="synthetic"))
        raise ValueError(f"unknown scan source kind {self.kind!r}")


def _read_hdf5_scan(path, i):
    """Scan ``i`` of an FXI-like HDF5 file whose /img_xanes is (n_scans, n_energies, rows, cols)."""
    import h5py

    from ..io.flatfield import optical_density
    from ..stack import Stack, validate_energies

    with h5py.File(path, "r") as f:
        data = f["img_xanes"]
        counts = data[i]
        flats = f["img_bkg"][i] if "img_bkg" in f and f["img_bkg"].ndim == 4 else (f["img_bkg"][()] if "img_bkg" in f else None)
        darks = f["img_dark"][()] if "img_dark" in f else None
        e = np.asarray(f["X_eng"][()], float)
    e = e[i] if e.ndim == 2 else e
    e = e * 1000 if np.nanmax(e) < 100 else e
    e = validate_energies(e, counts.shape[0], source=f"{path} scan {i}")
    od = optical_density(counts, flats=flats, darks=darks, source=f"{path} scan {i}")
    return Stack(od, e, None, dict(source=f"{path}[scan {i}]", reader="hdf5-series", files=[str(path)]))


def series_sources(inputs) -> list:
    """Scan sources from a list of paths (each a scan) or one HDF5 file with a scan axis."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise XanestrackError("no scans given")
    for p in paths:
        if not p.exists():
            raise XanestrackError(f"{p}: no such file or folder")
    if len(paths) == 1 and paths[0].suffix.lower() in (".h5", ".hdf5") and paths[0].is_file():
        import h5py

        try:
            with h5py.File(paths[0], "r") as f:
                d = f.get("img_xanes")
                n = d.shape[0] if isinstance(d, h5py.Dataset) and d.ndim == 4 else None
        except Exception as exc:  # not HDF5, a looping link...: read_stack says what is wrong, in its task
            logger.debug("%s: %s", paths[0], exc)
            n = None
        if n is not None:
            return [ScanSource(f"scan_{i:04d}", i, "hdf5-scan", _normalised(paths[0])) for i in range(n)]
    names = [p.stem if p.is_file() else p.name for p in paths]
    if len(set(names)) != len(names):
        names = [f"scan_{i:04d}_{n}" for i, n in enumerate(names)]
    return [ScanSource(n, i, "input", _normalised(p)) for i, (n, p) in enumerate(zip(names, paths))]


def _normalised(path) -> str:
    """One spelling per file: absolute, symlinks resolved (relative and absolute paths compare equal)."""
    return str(Path(path).resolve())


def source_checksum(source: ScanSource) -> str:
    """SHA-256 of what a scan is read from: its file(s) (a folder: its .xrm/.txrm files), or its synthetic recipe."""
    import hashlib

    h = hashlib.sha256()
    if source.kind == "synthetic":
        h.update(json.dumps(dict(source.synthetic, index=source.index), sort_keys=True, default=str).encode())
        return h.hexdigest()
    p = Path(source.path)
    files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in (".xrm", ".txrm")) if p.is_dir() else [p]
    for q in files:
        h.update(q.name.encode() + b"\0")
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    if source.kind == "hdf5-scan":
        h.update(f"scan {source.index}".encode())
    return h.hexdigest()


def synthetic_sources(n_scans: int, *, preset="default", seed=0, **params) -> list:
    """Sources that generate the scans of a synthetic series inside the tasks."""
    cfg = dict(preset=preset, n_scans=n_scans, seed=seed, **params)
    return [ScanSource(f"scan_{i:04d}", i, "synthetic", synthetic=cfg) for i in range(n_scans)]


def _summary_path(out, name):
    return Path(out) / "scans" / name / "summary.json"


_MODELS: dict = {}


def _models(detector: str, segmenter: str, options):
    """The pipeline's model callables, loaded once per worker process."""
    key = (detector, segmenter, options.detect)
    if key not in _MODELS:
        from ..models import pipeline_models

        _MODELS[key] = pipeline_models(detector, segmenter, options=options)
    return _MODELS[key]


def process_scan(source: ScanSource, out_dir, options=None, detector: str = "learned", segmenter: str = "learned", checksum: str | None = None) -> list:
    """Run the pipeline on one scan, write its results, return its per-particle summary.

    If the scan's folder is already complete (a previous, interrupted series) and was
    made from the same input content (``checksum``, SHA-256 of the source, computed
    when not given), its summary is read back instead; a scan whose input changed is
    processed again. ``detector`` / ``segmenter``: "learned" (the shipped models,
    loaded once per worker) or "classical".
    """
    from ..pipeline import PipelineOptions, run_pipeline
    from ..results import atomic_output_dir, write_results

    checksum = checksum or source_checksum(source)
    sp = _summary_path(out_dir, source.name)
    if sp.is_file():
        try:
            done = json.loads(sp.read_text())
        except ValueError:
            done = {}
        if done.get("input_sha256") == checksum and "particles" in done:
            return done["particles"]
        logger.warning("%s: its input changed since it was processed (or its summary is unreadable): processing it again", source.name)
    options = options or PipelineOptions(fuse="ends")
    stack = source.load()
    det_fn, seg_fn = _models(detector, segmenter, options)
    result = run_pipeline(stack, options=options, detector=det_fn, segmenter=seg_fn)
    rows = []
    from scipy import ndimage

    ratios = result.peak_ratios.set_index("particle") if len(result.peak_ratios) else None
    for p in result.particles:
        inner = ndimage.binary_erosion(p.mask, iterations=2)
        e50 = p.edge_maps["e50"][inner]
        ox = np.nan
        if p.fractions is not None and len(p.reference_names):
            ox = float(np.nanmean(p.fractions[-1][inner])) if inner.any() else np.nan
        nr = float(ratios["max_nonrigid_displacement"].get(p.particle, np.nan)) if ratios is not None else np.nan
        rows.append(
            dict(
                scan=source.index,
                scan_name=source.name,
                scan_particle=p.particle,
                y0=float(p.positions[0, 0]),
                x0=float(p.positions[0, 1]),
                radius=p.radius,
                mean_e50=float(np.nanmean(e50)) if np.isfinite(e50).any() else np.nan,
                oxidised_fraction=ox,
                max_nonrigid_px=nr,
                flagged_frames=int((p.frame_flags > 0).sum()),
            )
        )
    folder = Path(out_dir) / "scans" / source.name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(folder, overwrite=True, kind="series-scan") as tmp:
        write_results(result, tmp, run_info=dict(source=source.name, scan=source.index, inputs=[source.path or source.name], input_sha256=checksum))
        (tmp / "summary.json").write_text(json.dumps(dict(scan=source.index, name=source.name, input_sha256=checksum, particles=rows), default=float))
    return rows


def link_scans(summary: pd.DataFrame, *, max_jump: float = 120.0, gate: float = 8.0, gate_fraction: float = 0.3, max_gap: int = 3) -> pd.DataFrame:
    """Give each particle one id through the series (column ``particle``).

    Consecutive scans are related by the common displacement (voted, as between frames)
    and particles assigned optimally within ``max(gate, gate_fraction * radius)``; a
    particle missing from up to ``max_gap`` scans keeps its id when it reappears.
    """
    from scipy.optimize import linear_sum_assignment

    from ..match import _vote_displacement

    summary = summary.sort_values(["scan", "scan_particle"]).reset_index(drop=True)
    scans = sorted(summary["scan"].unique())
    ids = np.full(len(summary), -1)
    tracks = []  # dict(pos, radius, last_scan)
    common = {}
    prev_common = np.zeros(2)
    for si, s in enumerate(scans):
        idx = np.flatnonzero(summary["scan"].to_numpy() == s)
        cur = summary.loc[idx, ["y0", "x0"]].to_numpy()
        rad = summary.loc[idx, "radius"].to_numpy()
        alive = [t for t in tracks if si - t["last"] <= max_gap]
        if alive:
            prev = np.array([t["pos"] + prev_common - common[t["last"]] for t in alive])
            tol = max(3.0, 0.15 * float(np.median(rad)))
            disp, n_agree = _vote_displacement(prev, cur, max_jump, tol)
            prev_common = prev_common + (disp if n_agree > 0 else 0)
        common[si] = prev_common.copy()
        assigned = set()
        if alive and len(cur):
            pred = np.array([t["pos"] + common[si] - common[t["last"]] for t in alive])
            d = np.hypot(pred[:, None, 0] - cur[None, :, 0], pred[:, None, 1] - cur[None, :, 1])
            g = np.array([max(gate, gate_fraction * t["radius"]) for t in alive])[:, None]
            size = np.abs(np.log(rad[None, :] / np.array([t["radius"] for t in alive])[:, None]))
            cost = np.where((d <= g) & (size < 0.4), d / g + size, 1e6)
            r, c = linear_sum_assignment(cost)
            for i, j in zip(r, c):
                if cost[i, j] >= 1e6:
                    continue
                alive[i].update(pos=cur[j], radius=rad[j], last=si)
                ids[idx[j]] = alive[i]["id"]
                assigned.add(j)
        for j in range(len(cur)):
            if j not in assigned:
                t = dict(id=len(tracks), pos=cur[j], radius=rad[j], last=si)
                tracks.append(t)
                ids[idx[j]] = t["id"]
    out = summary.copy()
    out.insert(0, "particle", ids)
    out["common_dy"] = [common[scans.index(s)][0] for s in out["scan"]]
    out["common_dx"] = [common[scans.index(s)][1] for s in out["scan"]]
    return out


def run_series(
    sources,
    out_dir,
    *,
    options=None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress=None,
    detector: str = "learned",
    segmenter: str = "learned",
) -> pd.DataFrame:
    """Process every scan (in parallel) and link particles across scans.

    Parameters
    ----------
    sources : list of ScanSource
    out_dir : path
        Series folder: ``scans/`` per-scan results, ``series.csv``, ``series.json``.
        A folder holding an earlier run of the *same* sources (paths compared as
        absolute paths) is resumed: a scan whose input content (SHA-256) is unchanged
        is read back, a changed one processed again. A second series into the same
        folder is refused while one runs (a lock beside it).
    scheduler : None, "threads", "sync", or a dask.distributed address
    workers : int, optional
        Start a local dask.distributed cluster with this many worker processes.
    detector, segmenter : "learned" (default, the shipped models) or "classical"

    Returns
    -------
    DataFrame: one row per particle per scan (``particle`` is the series id).
    """
    from ..results import output_lock

    out = Path(out_dir)
    with output_lock(_series_folder(out)):  # a second series into this folder is refused while this one runs
        return _run_series(sources, out, options=options, scheduler=scheduler, workers=workers, detector=detector, segmenter=segmenter)


def _series_folder(out: Path) -> Path:
    """Create (or check) the series folder before anything is computed."""
    from ..errors import one_line

    if out.exists() and not out.is_dir():
        raise XanestrackError(f"output {out} exists and is not a folder; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XanestrackError(f"cannot create {out.parent} ({one_line(exc.strerror or exc)}); choose another --out") from None
    return out


def _manifest_sources(sources) -> list:
    return [dict(name=s.name, index=s.index, kind=s.kind, path=None if s.path is None else _normalised(s.path), synthetic=s.synthetic) for s in sources]


def _run_series(sources, out, *, options, scheduler, workers, detector, segmenter):
    import dask

    from ..errors import one_line
    from ..results import MARKER, write_marker

    manifest = json.loads(json.dumps(dict(sources=_manifest_sources(sources))))
    mpath = out / "series.json"
    if out.exists() and any(out.iterdir()):
        try:
            old = json.loads(mpath.read_text()).get("sources") if mpath.is_file() else None
            old = json.loads(json.dumps(_manifest_sources([ScanSource(**o) for o in old]))) if old is not None else None
        except (ValueError, TypeError, AttributeError):
            old = None
        if old != manifest["sources"]:
            raise XanestrackError(f"output folder {out} holds something other than this series; choose another --out")
        done = sum(_summary_path(out, s.name).is_file() for s in sources)
        logger.info("resuming series in %s: %d of %d scans already done", out, done, len(sources))
    try:
        out.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(manifest, indent=1))
        if not (out / MARKER).is_file():
            write_marker(out, kind="series")
    except OSError as exc:
        raise XanestrackError(f"cannot write in {out} ({one_line(exc.strerror or exc)}); choose another --out") from None
    checksums = [source_checksum(s) for s in sources]
    tasks = [dask.delayed(process_scan, pure=False)(s, str(out), options, detector, segmenter, c) for s, c in zip(sources, checksums)]
    client = cluster = None
    try:
        if workers:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            parts = dask.compute(*tasks)
        elif scheduler and scheduler not in ("threads", "sync", "synchronous"):
            from distributed import Client

            client = Client(scheduler)
            parts = dask.compute(*tasks)
        else:
            sched = "sync" if scheduler in ("sync", "synchronous") else "threads"
            parts = dask.compute(*tasks, scheduler=sched, num_workers=2)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    rows = [r for p in parts for r in p]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table = link_scans(summary) if len(summary) else summary.assign(particle=[])
    table.to_csv(out / "series.csv", index=False, float_format="%.4f")
    return table


def write_series_report(table: pd.DataFrame, out_dir) -> Path:
    """Series figures (chemistry and position per particle vs scan) and an HTML page."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for pid, g in table.groupby("particle"):
        g = g.sort_values("scan")
        axes[0].plot(g["scan"], g["mean_e50"], "o-", ms=3, label=f"p{pid}")
        axes[1].plot(g["scan"], g["oxidised_fraction"], "o-", ms=3)
        nr = np.hypot(g["y0"] - g["common_dy"] - (g["y0"].iloc[0] - g["common_dy"].iloc[0]), g["x0"] - g["common_dx"] - (g["x0"].iloc[0] - g["common_dx"].iloc[0]))
        axes[2].plot(g["scan"], nr, "o-", ms=3)
    axes[0].set_ylabel("mean edge energy (eV)")
    axes[1].set_ylabel("oxidised (Ni3+) fraction")
    axes[2].set_ylabel("own displacement since first scan (px)")
    for a in axes:
        a.set_xlabel("scan")
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png = out / "series.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    b64 = base64.b64encode(png.read_bytes()).decode()
    piv = table.pivot_table(index="particle", columns="scan", values="mean_e50")
    html = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>xanestrack series</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse;font-size:.85em}</style></head><body><h1>Operando series</h1>"
        f"<p>{table['scan'].nunique()} scans, {table['particle'].nunique()} particles followed through the series.</p>"
        f"<img alt='series' style='max-width:100%' src='data:image/png;base64,{b64}'>"
        "<h2>Mean edge energy (eV) per particle and scan</h2>" + piv.to_html(float_format=lambda v: f"{v:.2f}") + "</body></html>"
    )
    path = out / "series_report.html"
    path.write_text(html)
    return path


def evaluate_series(table: pd.DataFrame, truth: pd.DataFrame, *, max_distance: float = 10.0) -> dict:
    """Identity and chemistry-trend accuracy of a series against its ground truth.

    Each true particle is paired, in every scan, with the estimated particle nearest its
    true frame-0 position; it kept its identity if that is the same series id in every
    scan. The chemistry error is estimated minus true mean edge energy per scan.
    """
    from ..evaluate import pair_particles

    errs, ids_ok, rows = [], [], []
    for tp, g in truth.groupby("particle"):
        ids = []
        for _, t in g.sort_values("scan").iterrows():
            est = table[table["scan"] == t["scan"]]
            pr = pair_particles(est[["y0", "x0"]].to_numpy(), np.array([[t["y0"], t["x0"]]]), max_distance=max_distance)
            if not pr:
                ids.append(None)
                continue
            e = est.iloc[pr[0][0]]
            ids.append(int(e["particle"]))
            err = float(e["mean_e50"] - t["mean_e50"])
            errs.append(err)
            rows.append((tp, int(t["scan"]), int(e["particle"]), err))
        ids_ok.append(len(set(ids)) == 1 and None not in ids)
    errs = np.array(errs)
    return dict(
        all_identities_kept=bool(all(ids_ok)),
        n_particles=len(ids_ok),
        max_abs_e50_error_ev=float(np.nanmax(np.abs(errs))) if errs.size else np.nan,
        rms_e50_error_ev=float(np.sqrt(np.nanmean(errs**2))) if errs.size else np.nan,
        per_scan=pd.DataFrame(rows, columns=["truth_particle", "scan", "particle", "e50_error_ev"]),
    )
