"""Operando series: the per-scan function, and particles linked across scans.

Each scan is one call of :func:`process_scan`: read (through :mod:`xanestrack.io`), run the per-scan pipeline,
write its results to ``OUT/scans/NAME/`` (``tracks.csv``, ``results.h5`` with chunked
datasets, ``summary.json``) atomically, and return a small per-particle summary.
A scan whose folder is complete, made from the same input content (SHA-256), is not
redone: an interrupted series resumes where it stopped, and a replaced input is
processed again. Memory is bounded by the scans in flight (the worker count), whatever the
series length.

:func:`xanestrack.parallel.run_series` maps :func:`process_scan` over the scans with Dask
and links the summaries with :func:`link_scans`.

The particle-size rules are ``run``'s (:func:`xanestrack.sizes.particle_radius_range`:
0.4-8 um from the pixel size in the files, else 7-60 px), per scan. A scan may be a
single frame (positions and sizes, no XANES: that needs ``min_xanes_energies`` frames).

Particles are linked across scans by the package's one linker, :func:`xanestrack.linking.link`,
in its strict mode (see :func:`link_scans`): the stage offset between consecutive scans
(tens of pixels, more than between frames) is voted by pairs of particles of similar size
and checked against an independent estimate, the phase correlation of the two scans'
frame-0 images; each particle is then predicted from its own motion and assigned within a
gate. Where the offset cannot be told (a single common particle and no image estimate,
or the two disagree), the scan's particles get new ids rather than a guessed link.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .accel import arrays_on
from .errors import XanestrackError

__all__ = [
    "ScanSource",
    "series_sources",
    "synthetic_sources",
    "source_checksum",
    "source_checksums",
    "process_scan",
    "link_scans",
    "scan_image_prior",
    "phase_offset",
    "SUMMARY_COLUMNS",
]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "scan",
    "scan_name",
    "scan_particle",
    "y0",
    "x0",
    "radius",
    "mean_e50",
    "oxidised_fraction",
    "max_nonrigid_px",
    "flagged_frames",
    "n_frames",
]

#: the frame-0 image of each scan kept for the offset between scans (binned to at most this size)
REFERENCE_SIZE = 512
REFERENCE_FILE = "frame0_binned.npy"


@dataclass(frozen=True)
class ScanSource:
    """Where one scan comes from; :meth:`load` reads it (called inside the task)."""

    name: str
    index: int
    kind: str  # "input" (file, .xrm or TIFF folder), "hdf5-scan" (4-D file), "synthetic"
    path: str | None = None
    synthetic: dict | None = None

    def load(self):
        from .stack import Stack

        if self.kind == "input":
            from .io import read_stack

            return read_stack(self.path)
        if self.kind == "hdf5-scan":
            from .io import read_stack

            return read_stack(self.path, scan=self.index)
        if self.kind == "synthetic":
            from .synth import make_synthetic_series

            cfg = dict(self.synthetic)
            ser = make_synthetic_series(cfg.pop("preset"), n_scans=cfg.pop("n_scans"), seed=cfg.pop("seed"), **cfg)
            s = ser.scan(self.index)
            return Stack(s.optical_density(), s.energies_ev, None, dict(source=self.name, reader="synthetic"))
        raise ValueError(f"unknown scan source kind {self.kind!r}")


def series_sources(inputs) -> list:
    """Scan sources from a list of paths (each a scan) or one HDF5 file with a scan axis."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise XanestrackError("no scans given")
    for p in paths:
        if not p.exists():
            raise XanestrackError(f"{p}: no such file or folder")
    seen = {}
    for p in paths:  # one file given twice was processed as two scans, linked at offset 0
        key = p.resolve()
        if key in seen:
            raise XanestrackError(f"{p}: given twice (as {seen[key]} too); give each scan once")
        seen[key] = p
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
    for p in paths:
        if p.is_file() and p.suffix.lower() in (".tif", ".tiff"):
            raise XanestrackError(
                f"{p}: a TIFF stack holds no energies, and `series` takes no energies file; give HDF5 files, "
                "Zeiss folders, or folders of single-frame TIFFs named with their energies (scan_8333.5eV.tif), or "
                "run `xanestrack run` on each scan with --energies"
            )
    names = [p.stem if p.is_file() else p.name for p in paths]
    if len(set(names)) != len(names):
        names = [f"scan_{i:04d}_{n}" for i, n in enumerate(names)]
    return [ScanSource(n, i, "input", _normalised(p)) for i, (n, p) in enumerate(zip(names, paths))]


def _normalised(path) -> str:
    """One spelling per file: absolute, symlinks resolved (relative and absolute paths compare equal)."""
    return str(Path(path).resolve())


def source_checksum(source: ScanSource) -> str:
    """SHA-256 of what a scan is read from: its file(s) (a folder: its .xrm/.txrm or TIFF files), or its synthetic recipe."""
    return source_checksums(source)[0]


def source_checksums(source: ScanSource) -> tuple[str, str]:
    """:func:`source_checksum`, and the SHA-256 of the data alone (the files' bytes without their names), read once:
    two scans with the same data under other names are one scan given twice."""
    import hashlib

    h, data = hashlib.sha256(), hashlib.sha256()
    if source.kind == "synthetic":
        h.update(json.dumps(dict(source.synthetic, index=source.index), sort_keys=True, default=str).encode())
        return h.hexdigest(), h.hexdigest()
    from .io import input_files

    for q in input_files(source.path):
        h.update(q.name.encode() + b"\0")
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                data.update(chunk)
    if source.kind == "hdf5-scan":
        h.update(f"scan {source.index}".encode())
        data.update(f"scan {source.index}".encode())
    return h.hexdigest(), data.hexdigest()


def synthetic_sources(n_scans: int, *, preset="default", seed=0, **params) -> list:
    """Sources that generate the scans of a synthetic series inside the tasks."""
    cfg = dict(preset=preset, n_scans=n_scans, seed=seed, **params)
    return [ScanSource(f"scan_{i:04d}", i, "synthetic", synthetic=cfg) for i in range(n_scans)]


def _summary_path(out, name):
    return Path(out) / "scans" / name / "summary.json"


_MODELS: dict = {}


def _models(detector: str, segmenter: str, options, device: str = "cpu"):
    """The pipeline's model callables, loaded once per worker process (on ``device``)."""
    key = (detector, segmenter, options.detect, device)
    if key not in _MODELS:
        from .models import pipeline_models

        _MODELS[key] = pipeline_models(detector, segmenter, options=options, device=device)
    return _MODELS[key]


def process_scan(
    source: ScanSource,
    out_dir,
    options=None,
    detector: str = "learned",
    segmenter: str = "learned",
    checksum: str | None = None,
    min_radius: float | None = None,
    max_radius: float | None = None,
    device: str = "cpu",
) -> list:
    """Run the pipeline on one scan, write its results, return its per-particle summary.

    If the scan's folder is already complete (a previous, interrupted series) and was
    made from the same input content (``checksum``, SHA-256 of the source, computed
    when not given) with the same settings (options, models, radii, device, version), its
    summary is read back instead; a scan whose input or settings changed is processed again. ``detector`` / ``segmenter``: "learned" (the shipped models,
    loaded once per worker) or "classical".

    The particle radius range and detection binning (``options.detect``) follow the
    scan's pixel size as in ``run`` (:func:`xanestrack.sizes.particle_radius_range`);
    ``min_radius`` / ``max_radius`` (px) replace either end. A scan of a single frame
    gives positions and sizes; its XANES is skipped (noted in ``summary.json``).
    ``summary.json`` also records the radius range, the frame shape and the binning of
    ``frame0_binned.npy``, the frame-0 image the offset between scans is checked on.
    """
    from dataclasses import replace

    from . import __version__
    from .io.checks import release_freed_memory
    from .pipeline import PipelineOptions, run_pipeline
    from .results import atomic_output_dir, write_results
    from .sizes import particle_radius_range

    checksum = checksum or source_checksum(source)
    options = options or PipelineOptions(fuse="ends")
    # what the scan's results depend on besides its input: a series resumed with other options (another
    # --min-radius) read back the scans done with the first ones, their particles as before
    settings = json.loads(
        json.dumps(
            dict(
                options=options.to_dict(),
                detector=detector,
                segmenter=segmenter,
                min_radius=min_radius,
                max_radius=max_radius,
                device=device,
                version=__version__,
            ),
            default=str,
        )
    )
    sp = _summary_path(out_dir, source.name)
    if sp.is_file():
        try:
            done = json.loads(sp.read_text())
        except ValueError:
            done = {}
        same_input = done.get("input_sha256") == checksum and "particles" in done
        if same_input and done.get("settings") == settings:
            return done["particles"]
        logger.warning(
            "%s: %s since it was processed: processing it again",
            source.name,
            "the options (or the version) changed"
            if same_input
            else "its input changed (or its summary is unreadable)",
        )
    stack = source.load()
    release_freed_memory()  # the reading's temporaries (glibc keeps freed blocks otherwise)
    sizes = particle_radius_range(stack, min_radius, max_radius, detector=detector)
    options = replace(
        options,
        detect=replace(options.detect, min_radius=sizes.min_radius, max_radius=sizes.max_radius, binning=sizes.binning),
    )
    det_fn, seg_fn = _models(detector, segmenter, options, device)
    with arrays_on(device):
        result = run_pipeline(stack, options=options, detector=det_fn, segmenter=seg_fn)
    release_freed_memory()  # what the pipeline freed, before the outputs are written
    input_notes = list(stack.metadata.get("notes", []))
    notes = input_notes + list(result.notes)  # the pipeline's say where there are too few energies for XANES
    reference, ref_binning = _reference_image(stack.od, result)
    from .result import particle_summary

    summ = particle_summary(result)
    rows = [
        dict(
            scan=source.index,
            scan_name=source.name,
            scan_particle=int(r["particle"]),
            y0=float(r["y0"]),
            x0=float(r["x0"]),
            radius=float(r["radius_px"]),
            mean_e50=float(r["mean_e50_ev"]),
            oxidised_fraction=float(r["oxidised_fraction"]),
            max_nonrigid_px=float(r["max_nonrigid_px"]),
            flagged_frames=int(r["flagged_frames"]),
            n_frames=int(stack.n_frames),
        )
        for _, r in summ.iterrows()
    ]
    folder = Path(out_dir) / "scans" / source.name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(folder, overwrite=True, kind="series-scan") as tmp:
        write_results(
            result,
            tmp,
            run_info=dict(
                source=source.name,
                scan=source.index,
                inputs=[source.path or source.name],
                input_sha256=checksum,
                input_notes=input_notes,
                frames_reversed=bool(stack.metadata.get("frames_reversed", False)),
                pixel_size_um=stack.pixel_size_um,
            ),
        )
        np.save(tmp / REFERENCE_FILE, reference)
        info = dict(
            scan=source.index,
            name=source.name,
            input_sha256=checksum,
            n_frames=int(stack.n_frames),
            frame_shape=list(stack.od.shape[1:]),
            pixel_size_um=stack.pixel_size_um,
            radius_range_px=[sizes.min_radius, sizes.max_radius],
            settings=settings,
            detection_binning=sizes.binning,
            reference_binning=ref_binning,
            notes=notes,
            particles=rows,
        )
        (tmp / "summary.json").write_text(json.dumps(info, default=float))
    return rows


def _reference_image(od, result):
    """The scan's frame-0 image for the offset between scans: fused ends (frame-0 grid) averaged, binned.

    The last frame (post-edge, highest contrast), brought onto frame 0's grid by the
    pipeline's fusion, is averaged with the first; without fused frames (no particle),
    frame 0 alone. Binned so that its long side is at most :data:`REFERENCE_SIZE`.
    """
    from .register import bin_frames

    img = result.fused.mean(axis=0) if result.fused is not None and len(result.fused) else od[0]
    img = np.nan_to_num(np.asarray(img, np.float32), nan=float(np.nanmedian(img)) if np.isfinite(img).any() else 0.0)
    b = max(1, int(np.ceil(max(img.shape) / REFERENCE_SIZE)))
    return (bin_frames(img, b) if b > 1 else img).astype(np.float32), b


#: eV. Between two scans, every common particle's mean E50 moving by at least this much, all within
#: :data:`UNIFORM_SHIFT_SPREAD_EV` of one another, is said to look like an energy-axis offset: a scan whose axis was
#: 0.5-2 eV off read as every particle oxidised alike (0.46 -> 0.85 at +1 eV), unsaid (the references' misfit
#: note fires from about 2 eV)
UNIFORM_SHIFT_EV, UNIFORM_SHIFT_SPREAD_EV = 0.25, 0.05


def series_notes(table: pd.DataFrame) -> list[str]:
    """What the series as a whole should say: scans on different energy grids, and scans whose particles' mean
    E50 all moved alike from the scan before (:data:`UNIFORM_SHIFT_EV`)."""
    out = []
    if not len(table) or not {"scan", "n_frames", "mean_e50", "particle"} <= set(table.columns):
        return out
    names = dict(zip(table["scan"], table["scan_name"])) if "scan_name" in table else {}
    name = lambda s: str(names.get(s, s))  # noqa: E731
    grids = table.groupby("scan")["n_frames"].max()
    if grids.nunique() > 1:
        parts = [
            f"{int(n)} ({', '.join(name(s) for s in grids.index[grids == n][:6])})" for n in sorted(grids.unique())
        ]
        out.append(
            "the scans are on different energy grids (energies: " + "; ".join(parts) + "): their edge energies carry "
            "each grid's interpolation and normalisation bias (every 2nd energy of the same scan: 0.1-0.2 eV), so a "
            "trend across grids is not all chemistry"
        )
    scans = sorted(table["scan"].unique())
    e50 = table.pivot_table(index="particle", columns="scan", values="mean_e50")
    for a, b in zip(scans, scans[1:]):
        if a not in e50 or b not in e50:
            continue
        d = (e50[b] - e50[a]).dropna().to_numpy(float)
        if d.size >= 3 and abs(np.median(d)) >= UNIFORM_SHIFT_EV and np.ptp(d) <= 2 * UNIFORM_SHIFT_SPREAD_EV:
            out.append(
                f"scan {name(b)}: the mean edge energy of all {d.size} particles it shares with scan {name(a)} moved by "
                f"{np.median(d):+.2f} eV, within {np.ptp(d):.2f} eV of one another: a shift this uniform is what an "
                "energy axis off by as much gives, not chemistry alike in every particle; check that scan's "
                "calibration (xanestrack run it with --energy-reference or --known-edge)"
            )
    return out


def scan_notes(out_dir) -> list[tuple[str, list[str]]]:
    """``(scan name, its notes)`` for each scan of the series in ``out_dir`` that has notes (in the
    manifest's order): the input notes and the run notes of each scan's ``run.json``."""
    out = Path(out_dir)
    try:
        names = [s["name"] for s in json.loads((out / "series.json").read_text())["sources"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(p.name for p in (out / "scans").iterdir()) if (out / "scans").is_dir() else []
    rows = []
    for name in names:
        try:
            info = json.loads((out / "scans" / name / "run.json").read_text())
        except (OSError, ValueError):
            continue
        notes = [str(n) for n in [*info.get("input_notes", []), *info.get("notes", [])]]
        if notes:
            rows.append((name, notes))
    return rows


def link_scans(
    summary: pd.DataFrame,
    *,
    prior=None,
    frame_shape=None,
    max_jump: float | None = None,
    gate: float = 10.0,
    gate_fraction: float = 0.3,
    max_gap: int = 3,
    max_size_ratio: float = 1.3,
    vote_tolerance: float = 4.0,
    prior_tolerance: float = 10.0,
    max_chance: float = 0.1,
) -> pd.DataFrame:
    """Give each particle one id through the series (column ``particle``).

    The objects of each scan are its summary rows (``y0, x0``: position in the scan's
    first frame; ``radius``), linked scan to scan by :func:`xanestrack.linking.link`
    in strict mode:

    1. the stage offset between consecutive scans is voted by pairs of particles of
       similar size (radii within ``max_size_ratio``) up to ``max_jump`` (default 25 %
       of the frame, at least 150 px);
    2. it is taken only when the evidence singles it out
       (:func:`xanestrack.linking.decide_displacement`): without ``prior``, at least two
       particles agreeing and no other offset as well supported; with ``prior`` (the
       offset measured on the images, e.g. :func:`scan_image_prior`) a vote that agrees
       with it, or the prior itself refined on the particles that agree with it;
    3. each particle is predicted from its last position, the offset and its own recent
       motion, and assigned optimally within ``max(gate, gate_fraction * radius)``; a
       particle missing from up to ``max_gap`` scans keeps its id when it reappears. Between
       scans particles move on their own, by more than between frames: in ``series
       --synthetic 2`` a 17-px particle lay 8.3 px from where the voted offset put it and
       was given a new id with a gate of 8 px.

    **One common particle.** A single particle present in both scans agrees with any
    offset, so the particles alone cannot tell the offset: without a prior the scan's
    particles get new ids (and the earlier tracks are closed). With a prior, the one
    particle within ``prior_tolerance`` of where the prior puts a track keeps its id,
    unless two or more other pairs agree on a different offset (then nothing is linked:
    new ids rather than a possibly wrong link). Without a prior, two pairs agreeing by
    chance on a wrong offset (more likely the more particles per scan) cannot be told
    from two common particles; the image prior guards against it.

    Parameters
    ----------
    summary : DataFrame
        Rows ``scan, scan_particle, y0, x0, radius, ...`` (rows with unknown position
        get an id of their own).
    prior : callable(scan_a, scan_b) -> (dy, dx) or None, or dict {(scan_a, scan_b): (dy, dx)}, optional
        Offset of scan ``scan_b`` relative to ``scan_a`` (a position in ``scan_a`` plus
        it is the position in ``scan_b``) measured independently of the particles.
    frame_shape : (rows, cols), optional
        Sets the default ``max_jump``; without it the extent of the positions does.

    Returns
    -------
    DataFrame: ``summary`` sorted by scan with ``particle`` (series id) first and
    ``common_dy, common_dx`` (offset of the scan relative to ``offset_from_scan``: the first
    scan, or the last scan whose offset from the one before could not be told, where the
    chain starts again; such a scan's offset is 0), ``link_method`` (how the scan
    was joined to the previous one: "first", "vote", "vote+prior", "prior",
    "vote over prior", "empty"; "ambiguous", "prior contradicted" or "prior unconfirmed": not
    joined, new ids) and ``link_support`` (tracks agreeing with the offset).
    """
    from .linking import NOT_JOINED, LinkOptions, link

    summary = summary.sort_values(["scan", "scan_particle"]).reset_index(drop=True)
    scans = sorted(summary["scan"].unique())
    pos = summary[["y0", "x0"]].to_numpy(float)
    known = np.all(np.isfinite(pos), axis=1)
    if max_jump is None:
        size = max(frame_shape) if frame_shape is not None else (float(np.max(pos[known])) if known.any() else 0.0)
        max_jump = max(150.0, 0.25 * float(size))
    objects, rows_of = [], []
    for s in scans:
        idx = np.flatnonzero((summary["scan"].to_numpy() == s) & known)
        rows_of.append(idx)
        objects.append(pd.DataFrame(dict(y=pos[idx, 0], x=pos[idx, 1], radius=summary["radius"].to_numpy(float)[idx])))
    opts = LinkOptions(
        max_jump=max_jump,
        gate=gate,
        gate_fraction=gate_fraction,
        # missing from max_gap scans = not seen for max_gap + 1 steps (the linker's count): a particle absent from
        # 3 scans was given a new id where the docstring promises it keeps its own
        max_gap=max_gap + 1,
        max_size_ratio=max_size_ratio,
        vote_tolerance=vote_tolerance,
        velocity_damping=0.5,
        strict=True,
        prior_tolerance=prior_tolerance,
        field_area=float(np.prod(frame_shape)) if frame_shape is not None else None,
        max_chance=max_chance,
        field_shape=tuple(frame_shape) if frame_shape is not None else None,
    )
    if isinstance(prior, dict):
        table = {k: v for k, v in prior.items()}
        prior = lambda a, b: table.get((a, b))  # noqa: E731
    link_prior = None
    if prior is not None:

        def link_prior(ta, tb):
            p = prior(scans[ta], scans[tb])
            return None if p is None or not np.all(np.isfinite(p)) else np.asarray(p, float)

    method = {0: ("first", 0)}
    ids_t, common, _ = link(
        objects, options=opts, prior=link_prior, on_step=lambda t, d, n, how: method.__setitem__(t, (how, n))
    )
    ids = np.full(len(summary), -1)
    for idx, these in zip(rows_of, ids_t):
        ids[idx] = these
    next_id = int(ids.max()) + 1 if len(ids) else 0
    for i in np.flatnonzero(ids < 0):  # unknown position: a particle of its own
        ids[i], next_id = next_id, next_id + 1
    t_of = {s: t for t, s in enumerate(scans)}
    t = summary["scan"].map(t_of).to_numpy()
    out = summary.copy()
    out.insert(0, "particle", ids)
    # where an offset cannot be told, the chain starts again: that scan's and the later scans' offsets are
    # from it (`offset_from_scan`); they were given from the first scan, the unknown offset taken as none
    origin = np.zeros(len(scans), int)
    for k in range(1, len(scans)):
        restart = method.get(k, ("none", 0))[0] in NOT_JOINED
        origin[k] = k if restart else origin[k - 1]
    rel = common - common[origin]
    out["common_dy"] = rel[t, 0]
    out["common_dx"] = rel[t, 1]
    out["offset_from_scan"] = [scans[origin[k]] for k in t]
    out["link_method"] = [method.get(k, ("none", 0))[0] for k in t]
    out["link_support"] = [int(method.get(k, ("none", 0))[1]) for k in t]
    names = dict(zip(summary["scan"], summary["scan_name"])) if "scan_name" in summary else {}
    for k, s in enumerate(scans):
        how = method.get(k, ("none", 0))[0]
        if how in NOT_JOINED:
            logger.warning(  # named as its folder and the notes name it (it was "scan 1")
                "scan %s: its offset from the previous scan cannot be told (%s): its particles get new ids",
                names.get(s, s),
                how,
            )
    return out


def phase_offset(a, b, max_shift=None):
    """Offset of image ``b`` relative to ``a`` by phase correlation (integer pixels).

    The images are high-passed and Hann-windowed. Returns ``(offset, quality,
    uniqueness)``: quality is the correlation peak over the spread of the correlation
    surface, uniqueness the peak over the highest value further than 4 px from it.
    Measured on synthetic scans of 5 particles (460 x 460): two scans of one field
    quality 11-83, unrelated fields up to 19 (uniqueness up to 2.0): sparse particles
    on a smooth background coincide by chance; a textured matrix singles the offset out.
    """
    from scipy import ndimage

    def prep(f):
        f = np.asarray(f, np.float32)
        f = f - ndimage.gaussian_filter(f, 8)
        return (f - f.mean()) * np.outer(np.hanning(f.shape[0]), np.hanning(f.shape[1])).astype(np.float32)

    fa, fb = np.fft.rfft2(prep(a)), np.fft.rfft2(prep(b))
    x = fb * np.conj(fa)
    r = np.fft.irfft2(x / (np.abs(x) + 1e-12), s=a.shape)
    ny, nx = a.shape
    yy = np.fft.fftfreq(ny, 1 / ny)
    xx = np.fft.fftfreq(nx, 1 / nx)
    quality = float(r.max() / (r.std() + 1e-12))
    if max_shift is not None:
        r[(np.abs(yy)[:, None] > max_shift) | (np.abs(xx)[None, :] > max_shift)] = -np.inf
    i = np.unravel_index(np.argmax(r), r.shape)
    dy = (np.arange(ny)[:, None] - i[0] + ny // 2) % ny - ny // 2
    dx = (np.arange(nx)[None, :] - i[1] + nx // 2) % nx - nx // 2
    rest = r[np.hypot(dy, dx) > 4]
    second = float(rest.max()) if rest.size and np.isfinite(rest).any() else 0.0
    uniqueness = float(r[i] / second) if second > 0 else float("inf")
    return np.array([yy[i[0]], xx[i[1]]]), quality, uniqueness


#: phase-correlation quality and uniqueness below which the image offset between two scans is not used
MIN_PRIOR_QUALITY = 30.0
MIN_PRIOR_UNIQUENESS = 1.25


def scan_image_prior(
    out_dir, names: dict, *, min_quality: float = MIN_PRIOR_QUALITY, min_uniqueness: float = MIN_PRIOR_UNIQUENESS
):
    """The offset between two scans measured on their frame-0 images (for :func:`link_scans`).

    ``names`` maps scan index to scan folder name under ``OUT/scans``. Returns a
    callable ``prior(scan_a, scan_b)``: the offset in pixels, or None where an image is
    missing (a scan processed by an older version), the frames differ in shape or
    binning, or the correlation does not single out one offset (quality below
    ``min_quality`` or uniqueness below ``min_uniqueness``, see :func:`phase_offset`):
    an image offset taken on weak evidence could confirm a chance pairing of particles.
    """
    cache: dict = {}

    def image(s):
        if s not in cache:
            folder = Path(out_dir) / "scans" / names[s]
            try:
                info = json.loads((folder / "summary.json").read_text())
                cache[s] = (np.load(folder / REFERENCE_FILE), int(info["reference_binning"]))
            except (OSError, ValueError, KeyError, TypeError):
                cache[s] = None
        return cache[s]

    def prior(a, b):
        ia, ib = image(a), image(b)
        if ia is None or ib is None or ia[0].shape != ib[0].shape or ia[1] != ib[1]:
            return None
        off, q, u = phase_offset(ia[0], ib[0], max_shift=0.45 * max(ia[0].shape))
        logger.debug("image offset scan %s -> %s: %s px (quality %.1f, uniqueness %.2f)", a, b, off * ia[1], q, u)
        return off * ia[1] if q >= min_quality and u >= min_uniqueness else None

    return prior


def _manifest_sources(sources) -> list:
    return [
        dict(
            name=s.name,
            index=s.index,
            kind=s.kind,
            path=None if s.path is None else _normalised(s.path),
            synthetic=s.synthetic,
        )
        for s in sources
    ]


def _frame_shape(out, sources):
    """The largest frame shape recorded in the scans' summaries (None if none is)."""
    shapes = []
    for src in sources:
        try:
            shapes.append(tuple(json.loads(_summary_path(out, src.name).read_text())["frame_shape"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(shapes, key=max) if shapes else None
