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
or the two disagree), the scan's particles get new ids rather than a guessed link. Scans
whose files give another pixel size are linked in the series' common pixels
(:func:`pixel_scales`).

What the series as a whole should say (:func:`series_notes`, in ``series.json``, the report
and on the console): scans given out of the order of the numbers in their names, a scan's
data given twice, scans of another pixel size, scans on other energy grids (their energies
compared, and how far each grid moves its particles' E50: ``e50_grid_bias_ev``, each particle's normalisation bias
at its chemistry on its scan's energies, taken away in ``mean_e50_grid_corrected``), particles whose E50 change on
one grid that bias compresses or stretches (:func:`bias_change_note`), a scan whose particles' edge energies (less
that bias) all lie off their trends by one offset
(:func:`energy_offset_scans`: its energy axis), a scan magnified or turned against the first
(:func:`series_own_displacement`), and links that the positions alone would make and the rest
does not bear (:func:`doubtful_links`: a merge, a different particle where one left).
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
    "series_notes",
    "energy_offset_scans",
    "bias_change_note",
    "order_note",
    "pixel_scales",
    "to_common_pixels",
    "series_own_displacement",
    "shared_rotation",
    "shared_size_change",
    "doubtful_links",
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
    "detection_radius",
    "mean_e50",
    "mean_e50_sigma_ev",
    "e50_grid_bias_ev",
    "mean_e50_grid_corrected",
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
            return s.stack(self.name)
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

        from .io.checks import MIN_FRAME_SIDE
        from .io.hdf5 import image_shape

        try:
            with h5py.File(paths[0], "r") as f:
                d = f.get("img_xanes")
                # (40, 1, rows, cols) is one scan of 40 frames, its axis of length 1 dropped by the reader (it was
                # taken as 40 scans of one frame, each failing: "1 frames but 40 energies"); so is (40, rows, cols, 1)
                # (taken as 40 scans of frames of rows x 1 pixels), and (40, rows, cols, 3) no scans (colour: the
                # reader refuses it saying so)
                shape = image_shape(d.shape) if isinstance(d, h5py.Dataset) else ()
                n = shape[0] if len(shape) == 4 and shape[1] > 1 and shape[-1] >= MIN_FRAME_SIDE else None
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
    from .results import atomic_output_dir, pixel_size_source, write_results
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
        # an earlier summary without every column (each particle's grid bias came later) is made again: read back,
        # its particles had none, and the series' notes on grids fell back to words
        complete = same_input and all(set(SUMMARY_COLUMNS) <= set(r) for r in done["particles"])
        if complete and done.get("settings") == settings:
            return done["particles"]
        logger.warning(
            "%s: %s since it was processed: processing it again",
            source.name,
            "the options (or the version) changed"
            if complete
            else "the version changed (its summary lacks columns)"
            if same_input
            else "its input changed (or its summary is unreadable)",
        )
    stack = source.load()
    release_freed_memory()  # the reading's temporaries (glibc keeps freed blocks otherwise)
    # a crop: the clipped radius's note among the scan's input notes (its summary, the series notes)
    sizes = particle_radius_range(
        stack, min_radius, max_radius, detector=detector, notes=stack.metadata.setdefault("notes", [])
    )
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
    detection_radius = {int(p.particle): float(p.radius) for p in result.particles}
    bias = _grid_bias(result)  # each particle's normalisation bias on this scan's energies, at its chemistry
    rows = [
        dict(
            scan=source.index,
            scan_name=source.name,
            scan_particle=int(r["particle"]),
            y0=float(r["y0"]),
            x0=float(r["x0"]),
            radius=float(r["radius_px"]),  # its size (the equivalent radius of its masks)
            detection_radius=detection_radius.get(int(r["particle"]), float("nan")),  # what link_scans sizes by
            mean_e50=float(r["mean_e50_ev"]),
            mean_e50_sigma_ev=float(r["mean_e50_sigma_ev"]),
            e50_grid_bias_ev=bias.get(int(r["particle"]), float("nan")),
            # measured less that bias: what a trend across grids (or across chemistries on one grid) is read on
            mean_e50_grid_corrected=float(r["mean_e50_ev"]) - bias.get(int(r["particle"]), float("nan")),
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
                pixel_size_source=pixel_size_source(stack),
                detector=detector,  # run.json's models_sha256 (the learned models used)
                segmenter=segmenter,
            ),
        )
        np.save(tmp / REFERENCE_FILE, reference)
        info = dict(
            scan=source.index,
            name=source.name,
            input_sha256=checksum,
            n_frames=int(stack.n_frames),
            # the grid itself, for the series' comparison of grids (:func:`series_notes`): the number of energies
            # alone told nothing of a scan whose 40 energies all lay 2 eV above the others'
            energies_ev=[float(e) for e in np.asarray(stack.energies_ev, float).ravel()],
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


def _grid_bias(result) -> dict:
    """Particle id -> eV: the normalisation's bias of its mean E50 at its own chemistry on the energies its XANES used
    (:func:`xanestrack.chemistry.runnotes.particles_grid_bias`), with the references the pipeline measured the run's
    bias with (the shipped Ni references where some particle's edge is at theirs: a series takes no others). Each
    scan's ``normalisation_bias_ev`` is its references' alone; a series on several grids read every particle of a
    20-energy scan 0.18-0.52 eV low against its 143-energy scans, which the series' note quoted as 0.1-0.33 eV."""
    from .chemistry.runnotes import _default_references, _references_at_particles_edge, particles_grid_bias

    e = np.asarray(result.energies_ev, float)
    measured = set(result.normalisation_bias or {})
    refs = _references_at_particles_edge(_default_references(e, result.particles), result.particles)
    refs = {k: r for k, r in refs.items() if k in measured}
    return particles_grid_bias(result.particles, refs, e, result.options)


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


#: eV. A scan whose particles' mean E50 all lie this far or further off their trend through the other scans, alike
#: (:data:`OFFSET_FACTOR`), is said to look like an energy-axis offset: a scan whose axis was 0.5-2 eV off read as
#: every particle oxidised alike (0.46 -> 0.85 at +1 eV), unsaid (the references' misfit note fires from about 2 eV).
#: A floor, however alike: 4x the largest spread of the residuals in the probe's correct series (0.06 eV).
UNIFORM_SHIFT_EV = 0.25
#: How many times the spread a scan's common offset must stand out by: the spread of its own particles' residuals
#: (one offset common to all of them) and the typical spread of the other scans' residuals (how well the trend
#: predicts a scan at all). Measured on the probe's series (5 scans of 460 x 460, 5-9 particles per scan judged, whose
#: chemistry moves with the state of charge, each particle at its own rate): residual spreads 0.02-0.06 eV in every
#: scan of the correct series, largest |median| 0.02 eV; its middle scan 0.5 / 1 eV off stood out by +0.50 / +1.00 eV
#: at spread 0.04 eV (12x / 24x the larger spread), the same on the series whose chemistry does not move. On 300
#: simulated series (4-8 scans, 5-15 particles, a quarter of them missing from each scan, 0.03 eV noise) whose
#: particles change along sigmoids of their own: none named; one scan moved by 0.5-1 eV named alone in 280 of 300
#: (sigmoids 0.7-2.5 scans wide) and 78 of 300 (0.2-0.6 scans wide: the particles' own jumps hide it).
OFFSET_FACTOR = 4.0
#: Scans whose offset, taken away, takes away at least (1 - this) of the most residual any one takes away explain the
#: series as well (:func:`energy_offset_scans`): in the probe's series of 5 scans the next best took away 28-30 % of
#: what the scan off took away; in a series of 3 scans all tie
OFFSET_TIE_FRACTION = 0.05
#: particles of a scan that a trend through the other scans must predict for its offset to be judged
MIN_OFFSET_PARTICLES = 3
#: eV. A series of two scans has no trend to judge either against: there every common particle moving by
#: :data:`UNIFORM_SHIFT_EV` or more between them, all within twice this of one another, is said instead
UNIFORM_SHIFT_SPREAD_EV = 0.05
#: Two scans' energies within this fraction of the grid's finest step (its 10th-percentile step: the edge region) of
#: one another, energy by energy, are one grid. Chosen so that a monochromator's readback differing by a few
#: hundredths of an eV between scans of one nominal grid is one grid, while a grid moved by 0.5 eV on the probe's
#: 1.82-eV edge step (tolerance 0.46 eV) is named; the number of energies alone missed a grid moved by 2 eV.
GRID_TOLERANCE_STEP = 0.25
#: how large the bias between two grids of one scan was measured, for the grid note: every 2nd energy of a
#: 143-energy scan 0.1-0.2 eV; a probe's series scan of 20 energies among scans of 40 (every 2nd of them) read
#: -0.27 to -0.44 eV against the truth where the 40-energy scans read -0.11 (0.16-0.33 eV between the grids),
#: reversing a charge's trend; the note said 0.1-0.2 eV alone
GRID_BIAS_TEXT = (
    "every 2nd energy of one scan shifted its particles' E50 by 0.1-0.2 eV at 143 energies, by 0.16-0.33 eV at 40: "
    "the coarser the grid across the edge, the larger"
)


#: eV. A particle whose normalisation bias at its chemistry (``e50_grid_bias_ev``) differs by this much or more between
#: two of its scans on one grid, and by :data:`BIAS_CHANGE_SIGMAS` times the sigma of its E50 change, has that change
#: compressed or stretched by it (:func:`bias_change_note`): on a probe's series of one 50-energy grid (NiO +0.38,
#: LiNiO2 -0.07 eV) four charging particles' changes read 15-38 % short (0.12-0.22 eV, z 4-11), unsaid; on one of 143
#: energies (NiO +0.11, LiNiO2 +0.004) no particle's bias moves by 0.1 eV
BIAS_CHANGE_FLOOR_EV = 0.1
#: how many sigmas of a particle's E50 change (its two mean E50 sigmas in quadrature) its bias's change must reach to be
#: said (:data:`BIAS_CHANGE_FLOOR_EV`)
BIAS_CHANGE_SIGMAS = 3.0


def _trend_residuals(e50: np.ndarray, anchor=None) -> np.ndarray:
    """Each value of ``e50`` (particles x scans in scan order, NaN where a particle is not seen) less its
    particle's trend through the other scans at that scan.

    The trend is the line through the particle's nearest values before and after the scan (interpolated); where it
    is seen on one side only (the first and last scans), the line through its two nearest values on that side
    (extrapolated). NaN where a particle has fewer values than that. ``anchor`` (bool per scan, default all): the
    scans whose values the trends of others may pass through; the others are judged against the trend but do not
    carry it (their residuals are still given).
    """
    v = np.asarray(e50, float)
    n_p, n_s = v.shape
    seen = np.isfinite(v)
    usable = seen if anchor is None else seen & np.asarray(anchor, bool)[None, :]
    col = np.broadcast_to(np.arange(n_s), v.shape)
    last = np.maximum.accumulate(np.where(usable, col, -1), axis=1)  # last anchor seen at or before each scan
    first = np.minimum.accumulate(np.where(usable, col, n_s)[:, ::-1], axis=1)[:, ::-1]  # first at or after
    before = np.concatenate([np.full((n_p, 1), -1), last[:, :-1]], axis=1)
    after = np.concatenate([first[:, 1:], np.full((n_p, 1), n_s)], axis=1)

    def at(a, i):
        return np.take_along_axis(a, np.clip(i, 0, n_s - 1), axis=1)

    before2 = np.where(before >= 0, at(before, before), -1)
    after2 = np.where(after < n_s, at(after, after), n_s)
    vz = np.nan_to_num(v)

    def line(a, b):  # at each scan, the line through the particle's values at scans a and b
        va, vb = at(vz, a), at(vz, b)
        return va + (vb - va) * (col - a) / np.where(b != a, b - a, 1)

    trend = np.where(
        (before >= 0) & (after < n_s),
        line(before, after),
        np.where(before2 >= 0, line(before2, before), np.where(after2 < n_s, line(after, after2), np.nan)),
    )
    return np.where(seen, v - trend, np.nan)


def energy_offset_scans(table: pd.DataFrame, *, grids: dict | None = None) -> list[dict]:
    """Scans that stand apart from the others by one energy offset common to all their particles.

    Each particle's mean edge energy (``mean_e50``) is taken to follow a trend of its own, locally linear in the
    scan order (:func:`_trend_residuals`), plus an offset common to every particle of a scan whose energy axis is
    off. The offset of a scan is the median of its particles' residuals from their trends through the other scans;
    chemistry that moves the particles differently scatters them, an axis moves them alike. A scan off by ``o``
    pulls the trends through it, and so its neighbours' residuals (by ``-o/2``) as well: of the scans, the one whose
    offset, taken away, leaves the least residual (sum of absolute values) in the whole series is the one judged, and
    named where its offset is at least :data:`UNIFORM_SHIFT_EV` and :data:`OFFSET_FACTOR` times both the spread
    (standard deviation) of its particles' residuals and the median spread of the other scans' (the offset taken
    away). Then the next, with that offset taken away, until one is not named. The first and last scans are judged
    on the trend of the two scans after (before) them, extrapolated. A series of two scans cannot be judged so
    (see :func:`series_notes`).

    Only the scans on the grid of most scans (``grids``, scan -> its energies in eV; the same energies, or all
    moved by one amount: an axis off is what is sought) and not yet named carry the trends the others are judged
    on; the others are judged, but skipped as anchors. A scan of every 2nd energy reads its E50 0.16-0.33 eV apart
    (:data:`GRID_BIAS_TEXT`), and a named scan keeps the error of its offset: as anchors, extrapolated to the last
    scan, they doubled it (the probe's series: its last scan, correct, named as -0.35 eV off, after its middle scan
    +1.00 eV off was named at +0.91 eV beside a scan of every 2nd energy).

    Each particle's normalisation bias on its scan's energies at its chemistry (``e50_grid_bias_ev``, where the table
    has it: :func:`_e50_less_bias`) is taken away first: it is the grid's, not an axis offset (a 12-energy scan among
    50-energy scans, its axis exact, was named -0.36 eV off, its particles' bias -0.57 to +0.06 eV against -0.07 to
    +0.36 on the others' grid). A scan of other steps none of whose particles' bias was measured is not judged.

    Parameters
    ----------
    table : DataFrame
        ``scan``, ``particle``, ``mean_e50`` (eV); optionally ``e50_grid_bias_ev`` (eV).
    grids : dict, optional
        Scan (as in ``table["scan"]``) -> its energies (eV). Without it every scan is on one grid.

    Returns
    -------
    list of dict
        In scan order: ``scan``, ``offset_ev``, ``spread_ev`` (its particles'), ``others_spread_ev`` (the median of
        the other scans'), ``n`` (its particles judged), ``end`` ("first", "last" or None), ``or_else`` (``(scan,
        offset)`` of the scans whose offset explains the series as well, :data:`OFFSET_TIE_FRACTION`: the scan
        judged from both sides is named first, then the smaller offset).
    """
    if not len(table) or not {"scan", "particle", "mean_e50"} <= set(table.columns):
        return []
    scans = sorted(table["scan"].unique())
    if len(scans) < 3:
        return []
    # each particle's normalisation bias on its scan's energies taken away first: a 12-energy scan among 50-energy
    # scans, its axis exact, was named "-0.36 eV off, calibrate it", its grid's bias at its particles' chemistry
    e50, unmeasured = _e50_less_bias(table)
    v = (
        table.assign(mean_e50=e50)
        .pivot_table(index="particle", columns="scan", values="mean_e50", dropna=False)
        .reindex(columns=scans)
        .to_numpy(float)
    )

    def spread(r, k):
        x = r[:, k][np.isfinite(r[:, k])]
        return float(np.std(x, ddof=1)) if x.size >= MIN_OFFSET_PARTICLES else None

    # the grid of most scans, by its steps (a grid moved as a whole is on it: its E50 moves by as much, which is
    # what is sought); scans of other steps carry another interpolation bias and anchor no trend
    steps = {
        s: np.sort(np.asarray(e, float).ravel()) for s, e in (grids or {}).items() if s in scans and np.size(e) >= 2
    }

    def same_steps(a, b):
        return len(a) == len(b) and np.ptp(a - b) <= GRID_TOLERANCE_STEP * min(_fine_step(a), _fine_step(b))

    groups: list[list] = []
    for s, e in steps.items():
        g = next((g for g in groups if same_steps(steps[g[0]], e)), None)
        if g is None:
            groups.append([s])
        else:
            g.append(s)
    main = max(groups, key=len) if groups else []
    on_grid = np.array([not groups or s in main or s not in steps for s in scans])
    # a scan of other steps whose particles' bias was not measured (the references describe none of them): its grid's
    # bias cannot be told from an offset there, and it is not judged
    unjudged = {k for k, s in enumerate(scans) if not on_grid[k] and s in unmeasured}
    # one on the grid of most scans whose particles' bias was not measured takes each particle's from the nearest
    # scan of that grid where it was (its grid's part, at the particle's chemistry nearest in time): left as measured
    # beside corrected neighbours, a scan with an exact axis was named "+0.35 eV off"
    if "e50_grid_bias_ev" in table:
        bias = _bias_by_particle(table, "e50_grid_bias_ev").reindex(columns=scans).to_numpy(float)
        raw = (
            table.pivot_table(index="particle", columns="scan", values="mean_e50", dropna=False)
            .reindex(columns=scans)
            .to_numpy(float)
        )
        measured_on_grid = [k for k in range(len(scans)) if on_grid[k] and scans[k] not in unmeasured]
        v = v.copy()
        for k in (k for k, s in enumerate(scans) if on_grid[k] and s in unmeasured):
            near = sorted(measured_on_grid, key=lambda j: abs(j - k))
            for i in range(v.shape[0]):
                got = next((bias[i, j] for j in near if np.isfinite(bias[i, j])), np.nan)
                if not np.isfinite(got) and near:
                    got = float(np.nanmedian(bias[:, near])) if np.isfinite(bias[:, near]).any() else np.nan
                v[i, k] = raw[i, k] - got if np.isfinite(got) else np.nan

    found, done = [], set()
    for _ in range(len(scans)):
        anchor = on_grid & ~np.isin(np.arange(len(scans)), list(done))
        r = _trend_residuals(v, anchor)
        misfit = np.nansum(np.abs(r))
        tried = []  # (gain, scan position, offset, particles, the series with that offset taken away)
        for k in range(len(scans)):
            x = r[:, k][np.isfinite(r[:, k])]
            if k in done or k in unjudged or x.size < MIN_OFFSET_PARTICLES:
                continue
            w = v.copy()
            w[:, k] -= np.median(x)
            gain = misfit - np.nansum(np.abs(_trend_residuals(w, anchor)))
            tried.append((gain, k, float(np.median(x)), int(x.size), w))
        if not tried:
            break
        # scans that explain it as well: in three scans each particle's trend is a line through the other two, and
        # any one of them taken away leaves none (s1 off by +0.5 eV is s0 or s2 off by -1 eV); the scan judged from
        # both sides is taken, the smaller offset first, and the others are said
        top = max(t[0] for t in tried)
        if top <= 0:  # no offset of one scan brings the series nearer its trends
            break
        ties = [t for t in tried if t[0] >= (1 - OFFSET_TIE_FRACTION) * top]
        _, k, offset, n, w = min(ties, key=lambda t: (t[1] in (0, len(scans) - 1), abs(t[2])))
        rw = _trend_residuals(w, anchor)
        own = spread(rw, k)
        others = [s for i in range(len(scans)) if i != k and (s := spread(rw, i)) is not None]
        ref = float(np.median(others)) if others else 0.0
        if abs(offset) < UNIFORM_SHIFT_EV or abs(offset) < OFFSET_FACTOR * max(own, ref):
            break
        end = "first" if k == 0 else "last" if k == len(scans) - 1 else None
        found.append(
            dict(
                scan=scans[k],
                offset_ev=offset,
                spread_ev=own,
                others_spread_ev=ref,
                n=n,
                end=end,
                or_else=[(scans[t[1]], t[2]) for t in ties if t[1] != k],
            )
        )
        v, done = w, done | {k}
    return sorted(found, key=lambda f: scans.index(f["scan"]))


def _e50_less_bias(table: pd.DataFrame) -> tuple[pd.Series, set]:
    """``(e50, unmeasured)``: each row's ``mean_e50`` less its normalisation bias at its chemistry on its scan's
    energies (``e50_grid_bias_ev``, :func:`process_scan`), and the scans none of whose particles' bias was measured.

    A particle whose bias was not measured in a scan where others' was (the references do not describe it) is taken at
    the median of theirs, the scan's grid's part; a scan where none was keeps its E50 as measured. Without the column
    (a table from an earlier version) every E50 as measured and no scan named."""
    e50 = table["mean_e50"].astype(float)
    if "e50_grid_bias_ev" not in table:
        return e50, set()
    bias = table["e50_grid_bias_ev"].astype(float)
    median = bias.groupby(table["scan"]).transform("median")
    unmeasured = set(table["scan"][median.isna()].unique()) if bias.notna().any() else set()
    return e50 - bias.fillna(median).fillna(0.0), unmeasured


def _bias_by_particle(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """``column`` by particle (rows) and scan (columns, in scan order)."""
    return table.pivot_table(index="particle", columns="scan", values=column, dropna=False).reindex(
        columns=sorted(table["scan"].unique())
    )


def _grid_bias_words(table: pd.DataFrame, key, name):
    """For :func:`_grid_note`: a function of the scans of the grid of most scans and the other scans (as ``key`` of a
    table scan names them) giving how far each other grid moves the particles' E50 against it, measured
    (``e50_grid_bias_ev``), or None where no particle's bias was measured.

    Each particle of an other grid's scan is set against itself in the nearest scan of the grid of most scans (in
    scan order) where its bias was measured: that difference is in its E50 change between the two. The note quoted a
    fixed 0.1-0.33 eV where a 20-energy scan among 143-energy scans moved every particle by -0.18 to -0.52 eV (z 9-19;
    a +0.445 eV charge read -0.002), and the scans' own notes held both biases."""
    if "e50_grid_bias_ev" not in table or not table["e50_grid_bias_ev"].notna().any():
        return None
    bias = _bias_by_particle(table, "e50_grid_bias_ev")
    sigma = _bias_by_particle(table, "mean_e50_sigma_ev") if "mean_e50_sigma_ev" in table else None
    scans = list(bias.columns)
    of = {key(s): s for s in scans}

    def words(ref, others) -> str | None:
        main = [of[k] for k in ref if k in of]
        if not main:
            return None
        b_main = bias[main].to_numpy(float)
        parts = []
        for k in others:
            s = of.get(k)
            if s is None:
                continue
            b = bias[s].to_numpy(float)
            if not np.isfinite(b).any():
                parts.append(f"{name(s)}'s not measured (the references describe none of its particles)")
                continue
            d, sd = [], []
            for i in np.flatnonzero(np.isfinite(b)):
                near = [j for j in sorted(main, key=lambda j: (abs(scans.index(j) - scans.index(s)), j))]
                j = next((j for j in near if np.isfinite(bias.at[bias.index[i], j])), None)
                if j is None:
                    continue
                d.append(b[i] - bias.at[bias.index[i], j])
                if sigma is not None:
                    sd.append(float(np.hypot(sigma.at[sigma.index[i], s], sigma.at[sigma.index[i], j])))
            own = f"its particles' {np.nanmin(b):+.2f} to {np.nanmax(b):+.2f} eV"
            if not d:
                parts.append(f"{name(s)}: {own}, no particle shared with the grid of most scans")
                continue
            d = np.asarray(d)
            med = float(np.median(d))
            sd = np.asarray([x for x in sd if np.isfinite(x)])
            z = f", {abs(med) / np.median(sd):.0f} times the median sigma of those changes" if sd.size else ""
            parts.append(
                f"{name(s)}: {own}, which moves their E50 changes against the grid of most scans by "
                f"{d.min():+.2f} to {d.max():+.2f} eV (median {med:+.2f}{z})"
            )
        if not parts:
            return None
        fin = b_main[np.isfinite(b_main)]
        there = f"{fin.min():+.2f} to {fin.max():+.2f} eV" if fin.size else "not measured"
        return (
            "energies carry each grid's interpolation and normalisation bias, measured at each particle's chemistry "
            "(e50_grid_bias_ev: the references mixed at its shares, sampled on its scan's energies and normalised as "
            f"the particles are): on the grid of most scans {there}; " + "; ".join(parts) + ": a trend across grids is "
            "off by as much (mean_e50_grid_corrected takes each particle's own bias away; oxidised_fraction, fitted to "
            "the references normalised on the same energies, carries far less of it)"
        )

    return words


def bias_change_note(table: pd.DataFrame) -> str | None:
    """The note on particles whose E50 change between two scans on one grid is compressed or stretched by the
    normalisation's bias at their chemistry, or None.

    The bias (``e50_grid_bias_ev``) follows a particle's chemistry on any grid coarse after the edge: on a probe's
    series of one 50-energy grid (NiO +0.38, LiNiO2 -0.07 eV) four charging particles' changes read 15-38 % short
    (z 4-11) and nothing was said; the scans' notes spoke of differences between particles only. Said for each particle
    at its pair of scans on one grid (``table.attrs["energy_grids"]`` by scan name, else the number of energies) whose
    biases differ most, where by :data:`BIAS_CHANGE_FLOOR_EV` or more and :data:`BIAS_CHANGE_SIGMAS` times the change's
    sigma (its two ``mean_e50_sigma_ev`` in quadrature; the floor alone without them). Changes across grids are the
    grid note's (:func:`_grid_note`)."""
    if "e50_grid_bias_ev" not in table or not table["e50_grid_bias_ev"].notna().any():
        return None
    name, scan_of = _scan_words(table)
    scans = sorted(table["scan"].unique())
    by_name = {name(s): s for s in scans}
    grids = {by_name[str(n)]: e for n, e in table.attrs.get("energy_grids", {}).items() if str(n) in by_name}
    if grids:
        groups = [g for g in _grid_groups({s: grids[s] for s in scans if s in grids}) if len(g) >= 2]
    else:
        n = table.groupby("scan")["n_frames"].max()
        groups = [list(n.index[n == k]) for k in n.unique() if (n == k).sum() >= 2]
    bias = _bias_by_particle(table, "e50_grid_bias_ev")
    e50 = _bias_by_particle(table, "mean_e50")
    sigma = _bias_by_particle(table, "mean_e50_sigma_ev") if "mean_e50_sigma_ev" in table else None
    said = []
    for p in bias.index:
        best = None
        for g in groups:
            seen = [s for s in g if np.isfinite(bias.at[p, s]) and np.isfinite(e50.at[p, s])]
            for i, a in enumerate(seen):
                for b in seen[i + 1 :]:
                    d = float(bias.at[p, b] - bias.at[p, a])
                    sd = float(np.hypot(sigma.at[p, a], sigma.at[p, b])) if sigma is not None else float("nan")
                    bar = (
                        max(BIAS_CHANGE_FLOOR_EV, BIAS_CHANGE_SIGMAS * sd) if np.isfinite(sd) else BIAS_CHANGE_FLOOR_EV
                    )
                    if abs(d) >= bar and (best is None or abs(d) > abs(best[2])):
                        best = (a, b, d)
        if best is not None:
            a, b, d = best
            measured = float(e50.at[p, b] - e50.at[p, a])
            said.append((abs(d), p, a, b, d, measured))
    if not said:
        return None
    said.sort(key=lambda t: (-t[0], t[1]))
    each = [
        f"particle {p} {name(a)} -> {name(b)}: {m:+.2f} eV measured, {m - d:+.2f} eV with it taken away ({d:+.2f})"
        for _, p, a, b, d, m in said[:8]
    ]
    return (
        f"on one energy grid the normalisation's bias still follows each particle's chemistry (e50_grid_bias_ev: the "
        f"references mixed at its shares, sampled on its scan's energies and normalised as the particles are), and it "
        f"moves the E50 changes of {len(said)} particle{'s' if len(said) > 1 else ''} by {BIAS_CHANGE_FLOOR_EV:.2f} eV "
        f"and {BIAS_CHANGE_SIGMAS:.0f} times their sigma or more "
        f"({'; '.join(each)}{' ...' if len(said) > 8 else ''}): each particle's own trend, not only differences "
        "between particles, is compressed or stretched on a grid with a coarse post-edge (read mean_e50_grid_corrected "
        "for trends; oxidised_fraction, fitted to the references normalised on the same energies, carries far less "
        "of it)"
    )


def _fine_step(e) -> float:
    d = np.diff(e)
    d = d[d > 0]
    return float(np.percentile(d, 10)) if d.size else 0.0


def _same_grid(a, b) -> bool:
    """As many energies, their typical difference within :data:`GRID_TOLERANCE_STEP` of the finer grid's finest
    step and none beyond 4 times that. Each energy within it, as first written, took a monochromator's readback
    jitter for other grids: sd 0.03 eV on one nominal grid of 0.5-eV steps, 42 of 50 series of 4 scans noted."""
    tol = GRID_TOLERANCE_STEP * min(_fine_step(a), _fine_step(b))
    if len(a) != len(b):
        return False
    d = np.abs(a - b)
    return float(np.median(d)) <= tol and float(np.max(d)) <= 4 * tol


def _grid_groups(grids: dict) -> list[list]:
    """The scans of each grid (``grids``: scan -> its energies in eV, in scan order; :func:`_same_grid`), the first
    one's energies standing for it, in the order first seen. Scans of fewer than two energies (no XANES) are left out."""
    grids = {s: np.sort(np.asarray(e, float).ravel()) for s, e in grids.items() if np.size(e) >= 2}
    groups: list[list] = []
    for s, e in grids.items():
        for g in groups:
            if _same_grid(grids[g[0]], e):
                g.append(s)
                break
        else:
            groups.append([s])
    return groups


def _grid_note(grids: dict, name, bias_words=None) -> str | None:
    """The note on scans whose energies differ from the grid of most scans (:data:`GRID_TOLERANCE_STEP`), or None.

    ``grids``: scan -> its energies (eV), in scan order. Scans of fewer than two energies (no XANES) are left out.
    ``bias_words``: called with the scans of the grid of most scans and the others (``grids``' keys), the words on how
    far each grid moves the particles' E50 as measured (:func:`_grid_bias_words`), or None where not measured: then
    :data:`GRID_BIAS_TEXT` is quoted.
    """
    groups = _grid_groups(grids)
    grids = {s: np.sort(np.asarray(e, float).ravel()) for s, e in grids.items() if np.size(e) >= 2}
    if len(groups) < 2:
        return None
    ref = max(groups, key=len)  # the grid of most scans (the earliest such on a tie)
    r = grids[ref[0]]

    def grid(e):
        return f"{len(e)} energies {e[0]:.1f}-{e[-1]:.1f} eV, finest step {_fine_step(e):.2f} eV"

    parts, moved = [], False
    for s, e in grids.items():
        if s in ref:
            continue
        d = e - r if len(e) == len(r) else None
        if d is not None and np.ptp(d) <= GRID_TOLERANCE_STEP * _fine_step(r):
            parts.append(f"{name(s)} on that grid moved by {np.median(d):+.2f} eV")
            moved = True
        else:
            parts.append(f"{name(s)} {grid(e)}")
    others = ", ".join(name(s) for s in ref[:6]) + (", ..." if len(ref) > 6 else "")
    measured = bias_words(ref, [s for s in grids if s not in ref]) if bias_words is not None else None
    return (
        f"the scans are on different energy grids: {others} on {grid(r)}; {'; '.join(parts)}: their edge "
        + (
            "energies carry each grid's interpolation and normalisation bias (" + GRID_BIAS_TEXT + "), so a trend "
            "across grids is not all chemistry"
            if not measured
            else measured
        )
        + (
            "; a grid moved as a whole is also what a monochromator calibrated otherwise records: check that those "
            "scans' edge energies match the others' (xanestrack run them with --energy-reference or --known-edge)"
            if moved
            else ""
        )
    )


def _scan_words(table: pd.DataFrame):
    """Two functions of a scan index for the series' notes: its name (``scan_name`` where the table has it) and how a
    note names it, "scan {name}" ("scan scan_1" was read where the name says it already)."""
    names = dict(zip(table["scan"], table["scan_name"])) if "scan_name" in table else {}

    def name(s) -> str:
        return str(names.get(s, s))

    def scan_of(s) -> str:
        return name(s) if name(s).lower().startswith("scan") else f"scan {name(s)}"

    return name, scan_of


def series_notes(table: pd.DataFrame) -> list[str]:
    """What the series as a whole should say.

    The notes on its inputs that :func:`xanestrack.parallel.run_series` left in ``table.attrs["input_notes"]``
    (scans given out of the order of the numbers in their names, one scan's data given twice, scans of another
    pixel size); scans on different energy grids: their energies compared (``table.attrs["energy_grids"]``,
    scan name -> energies in scan order, :data:`GRID_TOLERANCE_STEP`), or where those are not known (a table read
    back from ``series.csv``) the number of energies; and scans whose particles' mean E50 all lie off their trend alike
    (:func:`energy_offset_scans`; in a series of two scans, all moved alike between them); and scans joined to the
    one before by two particles alone, no image offset confirming it (:func:`link_scans`); links that position alone
    makes and the rest does not bear, made or not (``link_doubt``, ``unlinked_from``, :func:`doubtful_links`); and
    scans whose particles lie as if magnified or turned against the first scan (``table.attrs["scale_notes"]``,
    :func:`series_own_displacement`).
    """
    out = [str(n) for n in table.attrs.get("input_notes", [])]
    out += [n for n in [_weak_link_note(table)] if n]
    out += _doubtful_link_note(table)  # links position alone makes and the rest does not bear
    out += [str(n) for n in table.attrs.get("scale_notes", [])]  # scans magnified against the first
    if not len(table) or not {"scan", "n_frames", "mean_e50", "particle"} <= set(table.columns):
        return out
    name, scan_of = _scan_words(table)
    if "energy_grids" in table.attrs:
        note = _grid_note(table.attrs["energy_grids"], str, _grid_bias_words(table, name, name))
        if note:
            out.append(note)
    else:
        grids = table.groupby("scan")["n_frames"].max()
        if grids.nunique() > 1:
            parts = [
                f"{int(n)} ({', '.join(name(s) for s in grids.index[grids == n][:6])})" for n in sorted(grids.unique())
            ]
            words = _grid_bias_words(table, lambda s: s, name)
            main = grids.index[grids == grids.value_counts().index[0]]  # the number of energies of most scans
            measured = words(list(main), [s for s in grids.index if s not in main]) if words else None
            out.append(
                "the scans are on different energy grids (energies: "
                + "; ".join(parts)
                + "): their edge "
                + (
                    measured
                    or "energies carry each grid's interpolation and normalisation bias ("
                    + GRID_BIAS_TEXT
                    + "), so a trend across grids is not all chemistry"
                )
            )
    note = bias_change_note(table)  # one grid: each particle's bias follows its chemistry
    out += [note] if note else []
    scans = sorted(table["scan"].unique())
    if len(scans) == 2:
        # as the offsets below, each particle's bias on its scan's energies taken away
        e50 = table.assign(mean_e50=_e50_less_bias(table)[0]).pivot_table(
            index="particle", columns="scan", values="mean_e50"
        )
        a, b = scans
        d = (e50[b] - e50[a]).dropna().to_numpy(float) if a in e50 and b in e50 else np.array([])
        if d.size >= 3 and abs(np.median(d)) >= UNIFORM_SHIFT_EV and np.ptp(d) <= 2 * UNIFORM_SHIFT_SPREAD_EV:
            out.append(
                f"{scan_of(b)}: the mean edge energy of all {d.size} particles it shares with {scan_of(a)} moved by "
                f"{np.median(d):+.2f} eV, within {np.ptp(d):.2f} eV of one another: a shift this uniform is what an "
                "energy axis off by as much in one of the two scans gives (two scans cannot tell which), or a change "
                "of the chemistry every particle made alike; check their calibration (xanestrack run them with "
                "--energy-reference or --known-edge)"
            )
    # the grids by scan (they are kept by scan name), for the offset judgement's anchors
    by_name = {name(s): s for s in table["scan"].unique()}
    grids = {by_name[str(n)]: e for n, e in table.attrs.get("energy_grids", {}).items() if str(n) in by_name}
    for f in energy_offset_scans(table, grids=grids):
        trend = {
            "first": "the trend of the two scans after it (the first scan: extrapolated)",
            "last": "the trend of the two scans before it (the last scan: extrapolated)",
        }.get(f["end"], "their trend through the scans before and after it")
        less = " (each less its normalisation bias, e50_grid_bias_ev)" if "e50_grid_bias_ev" in table else ""
        out.append(
            f"{scan_of(f['scan'])}: the mean edge energy of its {f['n']} particles{less} lies {f['offset_ev']:+.2f} eV off "
            f"{trend}, all alike (spread {f['spread_ev']:.2f} eV; {f['others_spread_ev']:.2f} eV in the other scans): "
            "one offset common to every particle is what an energy axis off by as much gives (the monochromator's "
            "calibration), or a change of the chemistry every particle made alike (a step of the whole electrode "
            "between two scans reads so on the scans beside it)"
            + (
                " (or "
                + ", or ".join(f"{scan_of(s)} off by {o:+.2f} eV" for s, o in f["or_else"])
                + ": too few scans to tell which)"
                if f["or_else"]
                else ""
            )
            + "; check that scan's calibration (xanestrack run it with --energy-reference or --known-edge)"
        )
    return out


def order_note(sources) -> str | None:
    """A note where the scans were given out of the order of the numbers in their file names, or None.

    Names are compared among those that differ only in their numbers (``scan_2``, ``scan_10``; ``pristine`` is
    compared with none), as tuples of numbers (``cell1_scan2`` < ``cell1_scan10``; decimals as such: ``NCA_4.05V``
    < ``NCA_4.1V``, which compared as 4, 5 and 4, 1 were said to be out of order). Names as given (a symbolic link
    by its own name, not its target's). A series given in falling order throughout (a discharge named by its
    voltages, ``4.2V, 4.0V, 3.8V``) is taken as meant, unless it is the order a shell lists the names in (``scan_10,
    scan_2``). The scans are
    not reordered: the order given is the order of the series (a shell sorts ``scan_10`` before ``scan_2``).
    """
    import re

    if len(sources) < 2 or any(s.kind != "input" for s in sources):
        return None
    groups: dict = {}
    for i, s in enumerate(sources):
        parts = re.split(r"(\d+(?:\.\d+)?)", str(s.name))
        if len(parts) > 1:
            groups.setdefault(tuple(parts[0::2]), []).append((tuple(float(x) for x in parts[1::2]), i))

    def out_of_order(g):  # equal numbers (scan_1.h5 of two folders) tell no order
        keys = [k for k, _ in g]
        rising = all(a <= b for a, b in zip(keys, keys[1:]))
        falling = all(a >= b for a, b in zip(keys, keys[1:]))
        given = [str(sources[i].name) for _, i in g]
        # falling, but in the order a shell lists them (scan_10 before scan_2): the shell's, not meant
        return len(g) > 1 and not rising and (not falling or given == sorted(given))

    bad = [g for g in groups.values() if out_of_order(g)]
    if not bad:
        return None
    g = max(bad, key=len)
    given = [sources[i].name for _, i in g]
    by_number = [sources[i].name for _, i in sorted(g)]

    def short(x):
        return ", ".join(x[:8]) + (", ..." if len(x) > 8 else "")

    return (
        f"the scans were not given in the order of the numbers in their names: {short(given)} (by number: "
        f"{short(by_number)}); the series follows the order given (a shell sorts scan_10 before scan_2), so its "
        "trend and the linking of its particles are in that order: if the numbers count time, give the scans in "
        "their order (ls -v, or names padded with zeros)"
    )


#: relative difference above which two scans' pixel sizes (from their files) are taken as different
PIXEL_SIZE_TOLERANCE = 0.01


def pixel_scales(pixel_sizes: dict) -> tuple[float | None, dict]:
    """The series' common pixel size (um) and, for each scan whose pixel size differs from it, the factor that
    brings its pixel coordinates to it (its pixel size over the common one).

    ``pixel_sizes``: scan -> pixel size in um from its files, or None. The common pixel size is that of most scans
    (the earliest's on a tie), within :data:`PIXEL_SIZE_TOLERANCE`; scans without one are taken at it.
    """
    known = {s: float(p) for s, p in sorted(pixel_sizes.items()) if p is not None and np.isfinite(p) and p > 0}
    if not known:
        return None, {}

    def same(a, b):
        return abs(a / b - 1) <= PIXEL_SIZE_TOLERANCE

    common = max(known.values(), key=lambda p: sum(same(p, q) for q in known.values()))
    return common, {s: p / common for s, p in known.items() if not same(p, common)}


def to_common_pixels(yx, factor) -> np.ndarray:
    """Positions ``(y, x)`` (n, 2) in a scan's own pixels, brought to the series' common pixels.

    ``factor``: the scan's pixel size over the common one (:func:`pixel_scales`), one number or one per row. Pixel
    centres scale, not pixel corners: ``(y + 0.5) * factor - 0.5`` (the centre of pixel 0 of a scan binned 2x lies at
    0.5 common px). :func:`link_scans` links in these pixels and :func:`series_own_displacement` measures in them.
    """
    f = np.asarray(factor, float)
    return (np.asarray(yx, float) + 0.5) * (f[:, None] if f.ndim == 1 else f) - 0.5


#: frames this close (relative, in both rows and columns) to a whole multiple (2-4) of another scan's are said to look
#: binned so against it in :func:`pixel_note`: the probe's scan binned 2x, 160 x 160 against 320 x 320 pixels
BINNING_SHAPE_TOLERANCE = 0.02


def pixel_note(pixel_sizes: dict, names: dict, *, frame_shapes: dict | None = None) -> str | None:
    """The note on scans of another pixel size (:func:`pixel_scales`), and on scans whose files give none while
    others' do, or None.

    A scan without a pixel size is taken at the common one (:func:`pixel_scales`): a file that lost it (a TIFF
    export among HDF5 files of one microscope) is the likely case, and no other size can be known. That is said
    whenever it is done (it was said only where two given sizes differed: a series whose one scan binned 2x gave
    0.08 um and four gave none had its particles split into 16 ids for 10, the cause unsaid). ``frame_shapes``
    (scan -> (rows, cols)): where a scan without a pixel size has frames a whole multiple (2-4,
    :data:`BINNING_SHAPE_TOLERANCE`) of a given scan's, or that share of them, the note says which binning and
    pixel size that would mean; nothing is scaled on that guess (a region of interest cut to half is as likely).
    """
    common, scale = pixel_scales(pixel_sizes)
    name = lambda s: str(names.get(s, s))  # noqa: E731
    missing = [s for s, p in sorted(pixel_sizes.items()) if p is None or not np.isfinite(p) or p <= 0]
    unknown = [name(s) for s in missing]
    if common is None or (not scale and not missing):
        return None
    shapes = {s: tuple(int(n) for n in v) for s, v in (frame_shapes or {}).items() if v is not None and len(v) == 2}
    binned = []  # (scan without a size, scan with one, factor of the first's pixels over the second's)
    for u in missing:
        for k in (s for s in sorted(pixel_sizes) if s not in missing):
            if u not in shapes or k not in shapes or min(shapes[k] + shapes[u]) <= 0:
                continue
            ratio = np.array(shapes[u], float) / np.array(shapes[k], float)
            for f in (2, 3, 4, 1 / 2, 1 / 3, 1 / 4):
                if np.all(np.abs(ratio / f - 1) <= BINNING_SHAPE_TOLERANCE):
                    binned.append((u, k, 1 / f))
                    break
            else:
                continue
            break
    hint = ""
    if binned:
        u, k, f = binned[0]
        like = [name(b[0]) for b in binned if b[1:] == (k, f) and shapes[b[0]] == shapes[u]]
        shape = lambda s: " x ".join(map(str, shapes[s]))  # noqa: E731
        hint = (
            f"; the frames of {', '.join(like[:8])}{', ...' if len(like) > 8 else ''} are {shape(u)} pixels against "
            f"{shape(k)} of {name(k)} ({pixel_sizes[k]:g} um): if that is a binning, not a smaller region, "
            f"{'its' if len(like) == 1 else 'their'} pixels are {pixel_sizes[k] * f:g} um"
        )
    unknown_text = (
        f"{', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''} "
        f"{'gives' if len(unknown) == 1 else 'give'} no pixel size in {'its file' if len(unknown) == 1 else 'their files'}"
    )
    advice = (
        "; where their pixels are of another size, their particles are not linked to the others' (links "
        "'ambiguous', new ids for the same particles): write each scan's pixel size into its file (series reads it "
        "from the files) or bin the scans alike"
    )
    if not scale:
        given = [name(s) for s in sorted(pixel_sizes) if s not in missing]
        return (
            f"{unknown_text}: taken at {common:g} um, the pixel size of {'the scan' if len(given) == 1 else 'the scans'}"
            f" that {'gives' if len(given) == 1 else 'give'} one ({', '.join(given[:8])}{', ...' if len(given) > 8 else ''})"
            + hint
            + advice
        )
    parts = ", ".join(f"{name(s)} {pixel_sizes[s]:g} um" for s in scale)
    return (
        f"the scans are not all of one pixel size ({parts}; the others {common:g} um, as their files say): the "
        f"positions and sizes of {'that scan' if len(scale) == 1 else 'those scans'} were scaled to {common:g}-um "
        "pixels to link their particles to the others' (series.csv keeps each scan's own pixels; common_dy and "
        f"common_dx are in pixels of {common:g} um)"
        + (f"; {', '.join(unknown)} give no pixel size: taken at {common:g} um" + hint + advice if unknown else "")
    )


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


def _weak_link_note(table: pd.DataFrame) -> str | None:
    """The scans joined to the one before by a vote of two particles and no image offset (``link_method`` "vote",
    ``link_support`` 2), named: two chance pairs of similar size had joined unrelated scans so (:func:`link_scans`)."""
    if not len(table) or not {"scan", "link_method", "link_support"} <= set(table.columns):
        return None
    steps = table.drop_duplicates("scan")
    weak = steps[(steps["link_method"] == "vote") & (steps["link_support"] <= 2)]
    if not len(weak):
        return None
    names = weak["scan_name"] if "scan_name" in weak else weak["scan"]
    many = len(weak) > 1
    return (
        f"scan{'s' if many else ''} {', '.join(map(str, names))} {'were' if many else 'was'} joined to the scan "
        "before by two particles alone, with no offset from the images to confirm it: two particles of one size "
        "agreeing by chance can join unrelated fields so (2 of 600 pairs of unrelated synthetic scans of 5-6 "
        "particles); check those ids (their positions in series.csv) before trusting a trend across that step"
    )


#: px (common). A link between two scans is doubted where the particle's own step (its displacement less the motion
#: the scan pair's other links share, :func:`doubtful_links`) exceeds the larger of this and
#: :data:`LINK_OUTLIER_FACTOR` times the robust spread of the links' own steps. On the probe's series (six particles,
#: none moving on its own between scans; stage offsets up to 182 px, magnification 1-3 %, rotation 0.5-2 degrees,
#: swelling 2-13 %, a particle hidden, one cracked) the links' own steps were at most 0.38 px; on reduced synthetic
#: series whose particles move on their own (default, rigid and hard presets, walks of up to 7.7 px over 6 scans) at
#: most 1.2-2.6 px, none standing out of their spread. A particle merged with its neighbour stepped 7.6 px, a
#: different particle appearing 5 px from where one left 5.0 px (both given the old ids, silently)
LINK_STEP_FLOOR_PX = 1.0
#: times the robust spread (:func:`xanestrack.robust.robust_sigma`: 1.4826 x the median absolute deviation, the
#: standard deviation of normal values) of a scan pair's links an own step or a change of size must stand out by to be
#: doubted.
#: Each link's own step is taken from the similarity of the others (itself left out): on simulated scan pairs of 4-10
#: links moving 0.1-2 px at random, at most 0.2 % of the links stood out (a fit over all of them, 1-4 % of 4-6 links);
#: a 5 px step among links moving 0.1 px stood out in every draw of 4 links or more (with 3, never: each of the others
#: is then fitted on the step)
LINK_OUTLIER_FACTOR = 5.0
#: A link is not made where the particle's size (the equivalent radius of its masks) changes by this much (log of the
#: radii's ratio, about the same fraction) or more beyond the change the scan pair's links share (the median:
#: swelling, a magnification). The probe's series and the synthetic ones above: at most 0.01 beyond the common change
#: (swelling of 2-13 % taken by it); the merged particle +0.205, the different particle +0.066, two particles of one
#: size swapping places 0.08-0.09; the piece of a touching pair segmented otherwise in one scan (hard preset) 0.11
LINK_SIZE_FLOOR = 0.05
#: px (common). Nor is a link undone on size, or a merge read from a growth, where the particle's equivalent radius
#: changes by less than this beyond the common change (``r1 - r0 exp(common)``): one ring of its mask's pixels, what
#: a threshold at another scan's counts or energies moves its edge by. The relative floor alone took a particle of
#: radius 5 px reading 5.6 px (+12 %) for another particle (new id, its series cut in two); below a radius of 20 px
#: this floor is the larger. The probe's merged particle grew by 2.5 px or more (+0.205 of radii from 12 px)
LINK_SIZE_FLOOR_PX = 1.0
#: links a scan pair needs for its own steps and size changes to be judged against one another
MIN_LINK_CHECK = 3
#: A track that ends (seen in the scan before, not in this one) where it overlaps a particle linked on (its predicted
#: centre within the sum of the two radii), that particle having grown beyond the common change by at least this share
#: of what taking it in would give (``log(sqrt(r**2 + r_ended**2) / r)``), is said to have merged into it: the probe's
#: merge grew by 0.205 for an expected 0.207
LINK_MERGE_GROWTH = 0.5


def doubtful_links(table: pd.DataFrame, pos, radius, *, frame_shape=None) -> tuple[np.ndarray, list, np.ndarray]:
    """The links across scans that the particles' positions alone assert and the rest of the evidence does not bear.

    :func:`link_scans` links by position: a particle is given the id of the track predicted nearest it within the gate
    (10 px or 0.3 of its radius). A particle merged with its neighbour (its centroid moved 7.6 px towards it, its
    radius +23 %, its edge energy the two's mixture) or a different particle appearing a few pixels from where one
    left (5.0 px, its E50 2.2 eV off the departed one's trend) was given the old id, nothing said. Per scan, each
    link (a row whose id was seen in an earlier scan) is judged against the scan's other links:

    - its own step: its position less where the motion the other links share takes the track's last position (a
      robust similarity over them, the link itself left out: translation and scale, and rotation with
      :data:`xanestrack.motion.ROTATION_MIN_PARTICLES` links or more), or less that and the track's own step before (a
      particle moving on at its pace), whichever is less. Beyond the larger of :data:`LINK_STEP_FLOOR_PX` and :data:`LINK_OUTLIER_FACTOR` times the robust spread
      of the links' own steps (:data:`MIN_LINK_CHECK` links or more), the link is doubted but kept: a particle can
      move on its own;
    - its size (``radius``): changed beyond the links' common change (their median) by more than the larger of
      :data:`LINK_SIZE_FLOOR` and :data:`LINK_OUTLIER_FACTOR` times their robust spread, and by more than
      :data:`LINK_SIZE_FLOOR_PX` in radius (its measurement's error), it is not what it was;
    - a track seen in the scan before and not in this one ends where it overlaps it, and it grew as by taking that one
      in (:data:`LINK_MERGE_GROWTH`), by more than :data:`LINK_SIZE_FLOOR_PX` in radius: the two merged.

    Where its size changed or it merged, the link is not made: the particle gets a new id from that scan on (the scans
    are judged in order, the new track's history its own), and the earlier track ends before it. A link whose particle
    reaches the frame's border (``frame_shape``; within 1 px) in either scan is not judged: the part of it in view, its
    size and centroid, changes with the stage.

    Parameters
    ----------
    table : DataFrame
        ``particle, scan, common_dy, common_dx`` (common px, as :func:`link_scans` gives them), one row per object.
    pos : ndarray (n, 2)
        Each row's position in common pixels (NaN: not judged).
    radius : ndarray (n,)
        Each row's size (common px): the equivalent radius of its masks.
    frame_shape : (rows, cols), optional
        In common pixels. The similarity's scale and rotation act about its centre (without it, about the links'
        centroid), and particles reaching its border are not judged.

    Returns
    -------
    ids : ndarray (n,)
        The ids, the links not made undone.
    doubt : list of str
        Per row, why its link is doubted ('' where it is not, or the row starts a track).
    unlinked_from : ndarray (n,)
        Per row whose link was not made, the id position alone gave it (the track that ends before it); -1 elsewhere
        (a link doubted for its own step alone is kept: ``doubt`` says it).
    """
    from .motion import ROTATION_MIN_PARTICLES, _apply, common_similarity
    from .robust import robust_sigma

    n = len(table)
    pid = table["particle"].to_numpy().copy()
    doubt, unlinked = [""] * n, np.full(n, -1)
    if not n:
        return pid, doubt, unlinked
    next_id = int(pid.max()) + 1
    scan = table["scan"].to_numpy()
    common = table[["common_dy", "common_dx"]].to_numpy(float)
    pos = np.asarray(pos, float)
    size = np.log(np.where(np.asarray(radius, float) > 0, radius, np.nan))
    scans = sorted(np.unique(scan))
    t_of = {s: i for i, s in enumerate(scans)}
    centre = None if frame_shape is None else (np.asarray(frame_shape, float) - 1) / 2
    known = np.all(np.isfinite(pos), axis=1)
    edge = np.zeros(n, bool)  # the particle reaches the frame's border (within 1 px): in view in part
    if frame_shape is not None:
        h, w = float(frame_shape[0]), float(frame_shape[1])
        inside = np.stack([pos[:, 0], pos[:, 1], h - 1 - pos[:, 0], w - 1 - pos[:, 1]], axis=1).min(axis=1)
        edge = inside - np.exp(size) < 1.0
    own_step = np.full((n, 2), np.nan)  # each link's own step, for the next scan's (a particle moving on)
    seen: dict = {}  # id -> its rows so far, in scan order
    for k in scans:
        rows = np.flatnonzero((scan == k) & known)
        links = [i for i in rows if pid[i] in seen]
        last = [seen[pid[i]][-1] for i in links]
        split = []
        if links:
            here = common[links[0]]
            src = np.array([pos[j] + here - common[j] for j in last])
            dst = pos[links]
            grew = size[links] - size[last]
            common_growth = 0.0
            grew_px = np.exp(size[links]) - np.exp(size[last])  # the radius's change beyond the common one, px
            if len(links) >= MIN_LINK_CHECK:
                about = src.mean(axis=0) if centre is None else centre
                # each link's own step from the similarity of the others (left out of its own fit: with as few as
                # four or six links a robust fit over all of them took up their own motion, whose spread then read
                # too small, and 1-4 % of links moving 0.5-2 px at random stood out)
                res = np.zeros_like(dst)
                for a in range(len(links)):
                    o = np.arange(len(links)) != a
                    params, _ = common_similarity(
                        dst[o][None], reference=src[o], centre=about, rotation=o.sum() >= ROTATION_MIN_PARTICLES
                    )
                    dy, dx, sc, th = params[["common_dy", "common_dx", "scale", "rotation_rad"]].to_numpy(float)[0]
                    res[a] = dst[a] - _apply(src[a], np.array([dy, dx]), sc, th, np.asarray(about, float))
                # the track's own step into its last scan (none known: 0): a particle moving on at its pace
                moving = np.nan_to_num(own_step[last])
                step = np.minimum(np.hypot(*res.T), np.hypot(*(res - moving).T))
                step_limit = max(LINK_STEP_FLOOR_PX, LINK_OUTLIER_FACTOR * robust_sigma(np.hypot(*res.T), centre=0.0))
                ok = np.isfinite(grew)
                if ok.sum() >= MIN_LINK_CHECK:
                    common_growth = float(np.median(grew[ok]))
                    grew_px = np.exp(size[links]) - np.exp(size[last] + common_growth)
                    size_limit = max(LINK_SIZE_FLOOR, LINK_OUTLIER_FACTOR * robust_sigma(grew[ok]))
                else:
                    size_limit = np.inf
                out_step = step > step_limit
                own_step[links] = res
                # and beyond the radius's measurement error in px (one ring of the mask): a relative floor alone
                # took a small particle's sub-pixel change (5 px reading 5.6) for another particle
                out_size = (np.abs(grew - common_growth) > size_limit) & (np.abs(grew_px) > LINK_SIZE_FLOOR_PX)
                calm = ~out_step
                for a, i in enumerate(links):
                    why = []
                    if edge[i] or edge[last[a]]:  # in view in part: its size and centroid are the part's
                        continue
                    if out_step[a]:
                        why.append(
                            f"its own step {step[a]:.2f} px, where the scan's other {int(calm.sum())} particles linked "
                            f"moved at most {np.max(step[calm], initial=0.0):.2f} px on their own"
                        )
                    if out_size[a]:
                        others = np.abs(grew - common_growth)[~out_size & np.isfinite(grew)]
                        why.append(
                            f"its size {100 * np.expm1(grew[a] - common_growth):+.0f} % beyond the change the scan's "
                            f"particles share ({100 * np.expm1(common_growth):+.1f} %; the others within "
                            f"{100 * np.max(others, initial=0.0):.1f} %)"
                        )
                        split.append(i)
                    doubt[i] = "; ".join(why)
            # tracks seen in the scan before and not in this one, ending where a particle that grew as by taking
            # them in lies: a merge (the probe's merged particle kept one of the two ids, the other's just ended)
            before_scan = scans[t_of[k] - 1] if t_of[k] > 0 else None
            here_ids = set(pid[rows])
            gone = [v[-1] for q, v in seen.items() if q not in here_ids and scan[v[-1]] == before_scan]
            for g in gone:
                p_g = pos[g] + here - common[g]
                for a, (i, j) in enumerate(zip(links, last)):
                    if edge[i] or edge[j] or not (np.hypot(*(p_g - pos[i])) < np.exp(size[i]) + np.exp(size[g])):
                        continue
                    expect = 0.5 * np.log1p(np.exp(2 * (size[g] - size[j])))  # log(sqrt(r**2 + r_g**2) / r)
                    if grew[a] - common_growth >= LINK_MERGE_GROWTH * expect and grew_px[a] > LINK_SIZE_FLOOR_PX:
                        doubt[i] = "; ".join(
                            [w for w in [doubt[i]] if w]
                            + [
                                f"particle {pid[g]}'s track ends where it overlaps it, and it grew by "
                                f"{100 * np.expm1(grew[a] - common_growth):+.0f} % beyond the common change, as by "
                                f"taking that one in ({100 * np.expm1(expect):+.0f} %): the two merged"
                            ]
                        )
                        split.append(i)
        for i in dict.fromkeys(split):  # not linked: a track of its own from here on
            unlinked[i] = pid[i]
            pid[(pid == pid[i]) & (scan >= k)] = next_id
            own_step[i] = np.nan
            next_id += 1
        for i in rows:
            seen.setdefault(pid[i], []).append(i)
    return pid, doubt, unlinked


def _doubtful_link_note(table: pd.DataFrame) -> list[str]:
    """The links :func:`link_scans` doubted (``link_doubt``, :func:`doubtful_links`), named: which particle of which
    scan, the id position alone gives it, and why; those not made (``unlinked_from``) apart from those kept."""
    if not len(table) or not {"link_doubt", "unlinked_from", "particle", "scan"} <= set(table.columns):
        return []
    said = table["link_doubt"].map(lambda v: isinstance(v, str) and bool(v))  # read back from series.csv: NaN
    doubted = table[said].sort_values("scan")
    if not len(doubted):
        return []
    _, scan_of = _scan_words(table)
    scan = table["scan"].to_numpy()

    def where(r):
        return f"particle {int(r['particle'])} of {scan_of(r['scan'])} (at y {r['y0']:.0f}, x {r['x0']:.0f})"

    def listed(rows, say):
        parts = [say(r) for _, r in rows.head(8).iterrows()]
        return "; ".join(parts) + (f"; and {len(rows) - 8} more (link_doubt in series.csv)" if len(rows) > 8 else "")

    def was(r, old):
        before = table[(table["particle"] == old) & (scan < r["scan"])]["scan"]
        return scan_of(before.max()) if len(before) else "an earlier scan"

    notes = []
    cut = doubted[doubted["unlinked_from"] >= 0]
    if len(cut):
        notes.append(
            "not linked, though position alone links them: "
            + listed(
                cut,
                lambda r: (
                    f"{where(r)} to particle {int(r['unlinked_from'])} of {was(r, int(r['unlinked_from']))}: "
                    f"{r['link_doubt']}"
                ),
            )
            + ". Each was given a new id, and the earlier track ends before it (a merge, or a different particle "
            "where one left): its edge energies from there on may not be the earlier particle's; if it is the same "
            "particle, its rows continue the earlier id (unlinked_from in series.csv)"
        )
    kept = doubted[doubted["unlinked_from"] < 0]
    if len(kept):
        notes.append(
            "linked by position, but moved on their own far more than the others: "
            + listed(
                kept, lambda r: f"{where(r)}, kept as that id from {was(r, int(r['particle']))}: {r['link_doubt']}"
            )
            + ". Each kept its id (its size is as before): a particle that moved on its own, or a different particle "
            "of its size where one left; check its position and edge energy against the scan before "
            "(link_doubt in series.csv)"
        )
    return notes


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
    scale: dict | None = None,
) -> pd.DataFrame:
    """Give each particle one id through the series (column ``particle``).

    The objects of each scan are its summary rows (``y0, x0``: position in the scan's
    first frame; ``detection_radius``, the largest detection's, or ``radius`` where not given),
    linked scan to scan by :func:`xanestrack.linking.link` in strict mode:

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
    chance on a wrong offset (more likely the more particles per scan) are told from two
    common particles only by the particles the offset brings where the two frames
    overlap: most of them without a partner, it is not taken ("vote unconfirmed",
    :func:`xanestrack.linking.decide_displacement`). Unrelated scans of 5-6 particles
    (320 x 320) were linked so in 6 of 600 draws, now in 2 of 600; a link that rests on two
    particles and no image offset is therefore said (a warning, and :func:`series_notes`).

    Parameters
    ----------
    summary : DataFrame
        Rows ``scan, scan_particle, y0, x0, radius, ...`` (rows with unknown position
        get an id of their own).
    prior : callable(scan_a, scan_b) -> (dy, dx) or None, or dict {(scan_a, scan_b): (dy, dx)}, optional
        Offset of scan ``scan_b`` relative to ``scan_a`` (a position in ``scan_a`` plus
        it is the position in ``scan_b``) measured independently of the particles.
    frame_shape : (rows, cols), optional
        Sets the default ``max_jump``; without it the extent of the positions does (in common pixels where
        ``scale`` is given).
    scale : dict {scan: factor}, optional
        For scans whose pixel size differs from the series' common one (:func:`pixel_scales`): its pixel size over
        the common one. Their positions and radii are brought to common pixels (pixel centres:
        ``(y + 0.5) * factor - 0.5``) before they are linked: in pixels of their own, the particles of a scan binned
        2x lay at half the distances of the others' and no offset brought them together (29 ids for 13 particles).
        The offsets (``common_dy``, ``common_dx``) are in common pixels; ``y0, x0, radius`` stay each scan's own.

    Returns
    -------
    DataFrame: ``summary`` sorted by scan with ``particle`` (series id) first and
    ``common_dy, common_dx`` (offset of the scan relative to ``offset_from_scan``: the first
    scan, or the last scan whose offset from the one before could not be told, where the
    chain starts again; such a scan's offset is 0), ``link_method`` (how the scan
    was joined to the previous one: "first", "vote", "vote+prior", "prior",
    "vote over prior", "empty"; "ambiguous", "images not compared" (ambiguous, and the
    prior's ``not_compared(scan_a, scan_b)``, as :func:`scan_image_prior` gives it, says the
    images could not be compared), "prior contradicted", "prior unconfirmed" or "vote
    unconfirmed": not joined, new ids) and ``link_support`` (tracks agreeing with the offset), ``link_doubt`` (why a
    particle's link from its earlier scan is doubted, '' where it is not) and ``unlinked_from`` (the id position alone
    gave it where the link was not made, -1 elsewhere): :func:`doubtful_links`.

    **Links that position alone makes.** A particle within the gate of a track is linked to it; a particle merged with
    its neighbour, or a different particle appearing a few pixels from where one left, was so given the old id and
    its edge energy read as the old particle's (+0.9 eV in one step, or -2.2 eV mid-charge), nothing said. Each link
    is judged against the scan's others (:func:`doubtful_links`): one whose size changed beyond their common change,
    or into which a neighbour's ending track merged, is not made (a new id, a warning and a series note); one whose
    own step alone stands out is kept, and said.
    """
    from .linking import NOT_JOINED, LinkOptions, link

    summary = summary.sort_values(["scan", "scan_particle"]).reset_index(drop=True)
    scans = sorted(summary["scan"].unique())
    factor = summary["scan"].map(scale or {}).fillna(1.0).to_numpy(float)
    pos = to_common_pixels(summary[["y0", "x0"]].to_numpy(float), factor)
    # the largest detection's radius, as the linking was measured with (rows of scans done before it was kept: their
    # radius is that one)
    radius = summary["radius"].to_numpy(float)
    if "detection_radius" in summary:
        given = summary["detection_radius"].to_numpy(float)
        radius = np.where(np.isfinite(given), given, radius)
    radius = radius * factor
    known = np.all(np.isfinite(pos), axis=1)
    if max_jump is None:
        size = max(frame_shape) if frame_shape is not None else (float(np.max(pos[known])) if known.any() else 0.0)
        max_jump = max(150.0, 0.25 * float(size))
    objects, rows_of = [], []
    for s in scans:
        idx = np.flatnonzero((summary["scan"].to_numpy() == s) & known)
        rows_of.append(idx)
        objects.append(pd.DataFrame(dict(y=pos[idx, 0], x=pos[idx, 1], radius=radius[idx])))
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
    not_compared = getattr(prior, "not_compared", None)
    for k, (how, n) in list(method.items()):
        if how == "ambiguous" and not_compared is not None and not_compared(scans[k - 1], scans[k]):
            method[k] = ("images not compared", n)
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
    # a link the positions alone make and the rest does not bear (a merge, another particle where one left) is not
    # made: a new id from that scan on, the id it would have continued in unlinked_from (the merged particle had kept
    # its id, its edge energy the mixture's, nothing said)
    pid, doubt, unlinked = doubtful_links(out, pos, summary["radius"].to_numpy(float) * factor, frame_shape=frame_shape)
    out["particle"] = pid
    out["link_doubt"] = doubt
    out["unlinked_from"] = unlinked
    for i in np.flatnonzero([bool(d) for d in doubt]):
        name = names.get(summary["scan"].iloc[i], summary["scan"].iloc[i])
        if unlinked[i] >= 0:
            logger.warning(
                "scan %s: particle %d is not linked to particle %d, which position alone gives it: %s; a new id",
                name,
                pid[i],
                unlinked[i],
                doubt[i],
            )
        else:
            logger.warning("scan %s: particle %d is linked by position, but: %s; check it", name, pid[i], doubt[i])
    for k, s in enumerate(scans):
        how = method.get(k, ("none", 0))[0]
        if how in NOT_JOINED:
            logger.warning(  # named as its folder and the notes name it (it was "scan 1")
                "scan %s: its offset from the previous scan cannot be told (%s): its particles get new ids",
                names.get(s, s),
                how,
            )
        elif how == "vote" and method[k][1] <= 2:
            logger.warning(
                "scan %s: joined to the previous scan by %d particles alone, the images giving no offset to confirm "
                "it: check its ids",
                names.get(s, s),
                method[k][1],
            )
    return out


#: A scan's scale against the first scan of its chain (:func:`series_own_displacement`) is kept, and its particles'
#: own displacements measured against it, only where it lies this many standard errors from 1: particles moving on
#: their own fake a scale. Measured on hand-built series (six particles 57-226 px from the centre of a 460 x 460 frame,
#: each moving on its own by a random walk of 0.3 or 0.5 px a scan, 20 draws): no magnification gave at most 1.9 standard
#: errors (95 % below 1.2), one scan magnified by 1.5 % 4.4-18.5. On a probe's synthetic series (5 particles moving
#: 0.5-5.3 px on their own, 1.4-4.3 px RMS about the similarity) a 1.5 % magnification gave 0.8: not told from their
#: own motion, and not taken away.
SCALE_SIGNIFICANCE = 3.0
#: px (common). A kept scale that moves a scan's particles by this much or more at their median distance from the
#: frame centre is said in a series note, as a run says a magnification (:data:`xanestrack.motion_notes.FIELD_NOTE_PX`)
SCALE_NOTE_PX = 0.5
#: particles a scan must share with the first scan of its chain for its scale to be fitted; with fewer, a translation
#: alone (two particles' scale would be their own motion)
MIN_SCALE_PARTICLES = 3
#: Where a scan's scale is kept, its particles' radii (common pixels) are set against it
#: (:func:`shared_size_change`): a change of the optics' magnification scales the sizes as it scales the distances,
#: a uniform strain of the electrode moves the particles apart without scaling them. Their median change is told from
#: the scale, or from none, where it lies this many standard errors from it (as :data:`SCALE_SIGNIFICANCE`)
SIZE_SIGNIFICANCE = 3.0
#: the least scatter (relative, one particle) of a radius' change between two scans that the median's standard error
#: is taken from: the probe's series of unchanged particles read their radii within +-0.4 % (a crack aside), and a
#: few alike particles would otherwise make a sub-per-cent difference look certain
SIZE_CHANGE_FLOOR = 0.005
#: px (common). A kept rotation (:func:`shared_rotation`) that moves a scan's particle farthest from their centroid by
#: this much or more is said in a series note: half a degree turned the probe's particles (25-60 px from the centre)
#: by 0.15-0.58 px, read as each one's own displacement, unsaid, where a series without it reads at most 0.13-0.18 px
ROTATION_NOTE_PX = 0.25


def shared_rotation(src, dst, centre) -> tuple[float, float]:
    """The rotation (rad) that the particles at ``src`` share on their way to ``dst``, or 0 where it is not measured.

    A robust similarity with rotation (:func:`xanestrack.motion.common_similarity`) of ``dst`` against ``src`` about
    ``centre``, over :data:`xanestrack.motion.ROTATION_MIN_PARTICLES` particles or more (as ``run`` needs to say a
    turn of the field). The rotation is kept where it lies :data:`SCALE_SIGNIFICANCE` standard errors or more from 0
    (standard error: the RMS distance of the particles from where the similarity puts them over the root sum of their
    squared distances from their centroid, as for the scale), with every particle and with each one left out, alike
    in sign (the rule of :func:`xanestrack.motion.field_rotation`): a particle moving on its own far from the others'
    centroid reads as a turn too. Without the rotation, a series whose field turned by 0.5-2 degrees between scans
    reported 0.15-2.21 px of own displacement for particles that had not moved, and said nothing.

    Returns
    -------
    theta : float
        rad, in :func:`xanestrack.motion.fit_similarity`'s sense (positive counter-clockwise as the image is shown);
        0 where not kept.
    t : float
        How many standard errors the rotation fitted over every particle lies from 0 (0 where too few particles).
    """
    from .motion import ROTATION_MIN_PARTICLES, common_similarity

    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if len(src) < ROTATION_MIN_PARTICLES:
        return 0.0, 0.0

    def fit(keep):
        params, _ = common_similarity(dst[keep][None], reference=src[keep], centre=centre, rotation=True)
        spread = float(np.sqrt(((src[keep] - src[keep].mean(axis=0)) ** 2).sum()))
        se = float(params["residual_px"].iloc[0]) / spread if spread > 0 else np.inf
        theta = float(params["rotation_rad"].iloc[0])
        return theta, (abs(theta) / se if se > 0 else np.inf)

    theta, t = fit(np.ones(len(src), bool))
    if not t >= SCALE_SIGNIFICANCE:
        return 0.0, t
    for j in range(len(src)):
        keep = np.arange(len(src)) != j
        th, tj = fit(keep)
        if not (tj >= SCALE_SIGNIFICANCE and np.sign(th) == np.sign(theta)):
            return 0.0, t
    return theta, t


def shared_size_change(src, dst) -> tuple[float, float]:
    """The particles' common relative change of radius from ``src`` to ``dst`` (the same particles, common pixels),
    and its standard error: the median of ``dst / src - 1``, its error ``sqrt(pi / 2)`` times their robust scatter
    (1.4826 MAD, at least :data:`SIZE_CHANGE_FLOOR`) over the root of their number; NaN, NaN without a pair of finite
    positive radii."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    ok = np.isfinite(src) & np.isfinite(dst) & (src > 0) & (dst > 0)
    if not ok.any():
        return np.nan, np.nan
    change = dst[ok] / src[ok] - 1
    m = float(np.median(change))
    sigma = max(1.4826 * float(np.median(np.abs(change - m))), SIZE_CHANGE_FLOOR)
    return m, float(np.sqrt(np.pi / 2) * sigma / np.sqrt(change.size))


def _scale_note(k, r, *, s_, t, moved, lever, n, about, own, own_wide, size, scan_of) -> str:
    """The note on scan ``k``'s scale ``s_`` against scan ``r``: a change of the optics' magnification or a uniform
    strain of the electrode, which the positions cannot tell apart, with both readings in numbers (the particles' own
    displacements up to ``own`` px with it taken away, ``own_wide`` px as the electrode's strain) and what their
    radii say (``size``: :func:`shared_size_change`'s median and error against the first scan, NaN where unknown).
    The note had called every such scale "a refocus ..., not the particles' own motion": a probe's electrode swelling
    by 2 % (particles moving 0.5-2.0 px outward) read at most 0.22 px of own displacement, and a scan magnified by
    2 % kept its radii 1.9-2.7 % larger, neither said."""
    grow = s_ > 1
    text = (
        f"{scan_of(k)}: its particles lie as if magnified by {100 * (s_ - 1):+.2f} % against {scan_of(r)} "
        f"(scale {s_:.4f}, {t:.0f} times its standard error; {moved:.2f} px at their median distance of {lever:.0f} px "
        f"from the {about}, {n} particles in common): a change of the optics' magnification (a refocus, or a change "
        f"of the sample's height) or a uniform {'swelling' if grow else 'shrinking'} of the electrode by as much (a "
        f"strain of {100 * (s_ - 1):+.2f} % in every direction of the image, {100 * (s_**2 - 1):+.1f} % in area), which "
        "positions alone cannot tell apart. Read as the optics, it is taken away (scale_vs_first in series.csv): "
        f"own_dy, own_dx, up to {own:.2f} px. Read as the electrode's strain, the particles moved up to "
        f"{own_wide:.2f} px on their own (own_dy_with_scale, own_dx_with_scale; about the {about})"
    )
    m, se = size
    if not (np.isfinite(m) and np.isfinite(se) and se > 0):
        return text
    said = f"Their radii changed by a median of {100 * m:+.2f} % (standard error {100 * se:.2f} %)"
    as_scale, as_none = abs(m - (s_ - 1)) < SIZE_SIGNIFICANCE * se, abs(m) < SIZE_SIGNIFICANCE * se
    if as_scale and not as_none:
        said += (
            ", as much as the scale: what a change of the optics gives (it scales sizes as it scales distances), or "
            "particles swelling with the electrode alike"
        )
    elif as_none and not as_scale:
        said += (
            ", not with the scale: a change of the optics would have scaled them by as much, so the electrode's "
            f"strain is the likelier reading, unless every particle {'shrank' if grow else 'grew'} by as much"
        )
    elif as_none:
        said += ": too scattered to tell the two readings apart"
    else:
        said += ", neither as much as the scale nor none"
    return text + ". " + said + "; radius is as measured, radius_at_first_scale with the scale taken out as the optics'"


def series_own_displacement(table: pd.DataFrame, *, scale=None, frame_shape=None) -> pd.DataFrame:
    """Each scan's scale and rotation against the first scan of its chain, and each particle's own displacement through
    the series.

    Parameters
    ----------
    table : DataFrame
        :func:`link_scans`' table: ``particle, scan, y0, x0`` (the scan's own pixels), ``common_dy, common_dx``
        (common pixels) and ``offset_from_scan``.
    scale : dict {scan: factor}, optional
        As for :func:`link_scans`: positions are brought to common pixels (:func:`to_common_pixels`) before anything
        is measured (the own displacement subtracted an offset in common pixels from positions in the scan's own:
        129-134 px for particles of a scan binned 2x that had moved about 1 px).
    frame_shape : (rows, cols), optional
        In common pixels: the note measures a scale's effect at the particles' median distance from its centre (the
        optical axis); without it, from their centroid.

    Returns
    -------
    DataFrame
        ``table`` with ``scale_vs_first`` (the scan's scale against the first scan of its chain, ``offset_from_scan``;
        1 where none was told from the particles' own motion), ``rotation_vs_first_deg`` (its rotation against that
        scan, degrees, positive counter-clockwise as the image is shown; 0 where none was told, :func:`shared_rotation`)
        and ``own_dy, own_dx`` (common px: the particle's displacement since its first scan, less the common motion);
        ``own_dy_with_scale, own_dx_with_scale`` (common px: the same with the scale kept, less the offset and the
        rotation alone: the own displacement where the scale is the electrode's strain, about the frame centre;
        ``own_dy, own_dx`` where no scale was kept) and ``radius_at_first_scale`` (common px: ``radius`` with the
        scale taken out, the size where the scale is the optics'; where ``table`` has ``radius``);
        ``attrs["scale_notes"]``, the notes on scans whose scale moves their particles by :data:`SCALE_NOTE_PX` or
        more, or whose rotation by :data:`ROTATION_NOTE_PX` (:func:`series_notes` says them).

    Notes
    -----
    A scan's common motion is the linking's offset (``common_dy, common_dx``) unless its particles share a scale
    against the first scan of its chain: a robust similarity (translation and isotropic scale,
    :func:`xanestrack.motion.common_similarity`) of its particles' positions against that scan's, over the particles
    the two share (at least :data:`MIN_SCALE_PARTICLES`), whose scale lies :data:`SCALE_SIGNIFICANCE` standard errors
    or more from 1 (standard error: the RMS distance of the particles from where the similarity puts them over the
    root sum of their squared distances from their centroid). That scale is taken away from the scan's positions
    (about the frame centre), and the offset between it and the scans beside it is measured again on those positions,
    as the median displacement of the particles the two share: the linking's offsets are chained scan to scan and
    took the magnification in, and one scan magnified by 1.5 % in a probe's series moved the next, unchanged scan's
    own displacements by up to 1.27 px. On hand-built series of six particles (:data:`SCALE_SIGNIFICANCE`), one scan
    magnified by 1.5 % moved the next scan's own displacements by 1.0-2.6 px, now by 0.04-0.44 px (its offset from the
    magnified scan is a plain median of the displacements, the linking's one from the particles' predicted places;
    the magnified scan's own: 2.4-3.3 px, now 0.08-0.43 px; 20 draws); its scale read 1.0133-1.0173. Identities and
    ``common_dy, common_dx`` are not changed.

    Such a scale is a change of the optics' magnification (a refocus, the sample's height) or a uniform swelling or
    shrinking of the electrode: the positions cannot tell them apart (as ``run``'s note on a scale says), and each
    reading is given in full, the positions and the sizes alike. As the optics: ``own_dy, own_dx`` and
    ``radius_at_first_scale``; as the electrode's strain: ``own_dy_with_scale, own_dx_with_scale`` and ``radius``.
    The note says both, in numbers, with what the particles' radii say (:func:`shared_size_change`: a change of the
    optics scales them as much as the distances, a strain of the electrode need not). A probe's series whose electrode
    swelled by 2 % (particles 0.5-2.0 px outward) had been told "a refocus ..., not the particles' own motion", own
    displacements at most 0.22 px; one magnified by 2 % by the optics kept its radii 1.9-2.7 % larger, unsaid.

    A rotation the particles share (:func:`shared_rotation`: four particles or more, kept where it stands out from
    their own motion with each one left out) is fitted with the scale and taken away alike: a probe's series turned by
    0.5-2 degrees about the frame centre between scans (six particles 25-60 px from it, none moving on its own between
    scans) read 0.15-2.21 px of own displacement, nothing said; now the rotation reads within 0.04 degrees and the own
    displacements at most 0.16 px (0.19 px in the same series without a turn).
    """
    from .motion import common_similarity

    out = table.copy()
    out.attrs = dict(table.attrs)
    out["scale_vs_first"] = 1.0
    out["rotation_vs_first_deg"] = 0.0
    out["own_dy"] = np.nan
    out["own_dx"] = np.nan
    out["own_dy_with_scale"] = np.nan
    out["own_dx_with_scale"] = np.nan
    if "radius" in out:
        out["radius_at_first_scale"] = np.nan
    notes = []
    out.attrs["scale_notes"] = notes
    if not len(out) or not {"particle", "scan", "y0", "x0", "common_dy", "common_dx"} <= set(out.columns):
        return out
    scan = out["scan"].to_numpy()
    pid = out["particle"].to_numpy()
    pos = to_common_pixels(out[["y0", "x0"]].to_numpy(float), out["scan"].map(scale or {}).fillna(1.0).to_numpy(float))
    scans = sorted(np.unique(scan))
    first = {s: int(np.flatnonzero(scan == s)[0]) for s in scans}
    link = {s: out[["common_dy", "common_dx"]].to_numpy(float)[first[s]] for s in scans}
    origin = {s: (out["offset_from_scan"].iloc[first[s]] if "offset_from_scan" in out else scans[0]) for s in scans}
    at = {s: {pid[i]: pos[i] for i in np.flatnonzero(scan == s) if np.all(np.isfinite(pos[i]))} for s in scans}
    centre = None if frame_shape is None else (np.asarray(frame_shape, float) - 1) / 2
    _, scan_of = _scan_words(out)
    # each scan's scale and rotation against the first scan of its chain: 1 and 0 where the particles do not share one
    scale_of = {s: 1.0 for s in scans}
    turn_of = {s: 0.0 for s in scans}
    # the radii in common pixels (a size scales with the pixel size: no pixel-centre shift), set against a kept scale
    rad = (
        out["radius"].to_numpy(float) * out["scan"].map(scale or {}).fillna(1.0).to_numpy(float)
        if "radius" in out
        else np.full(len(out), np.nan)
    )
    rad_at = {s: {pid[i]: rad[i] for i in np.flatnonzero(scan == s)} for s in scans}
    pending = []  # (where in notes, scan, its words): said once the own displacements of both readings are measured
    for k in scans:
        r = origin[k]
        ids = [p for p in at[k] if p in at.get(r, {})] if k != r else []
        if len(ids) < MIN_SCALE_PARTICLES:
            continue
        src = np.array([at[r][p] for p in ids])
        dst = np.array([at[k][p] for p in ids])
        about = src.mean(axis=0) if centre is None else centre
        # a turn of the field between scans (the sample or the stage rotated) was every particle's own displacement
        theta, t_turn = shared_rotation(src, dst, about)
        params, _ = common_similarity(dst[None], reference=src, centre=about, rotation=theta != 0.0)
        s_ = float(params["scale"].iloc[0])
        spread = float(np.sqrt(((src - src.mean(axis=0)) ** 2).sum()))
        se = float(params["residual_px"].iloc[0]) / spread if spread > 0 else np.inf
        if theta != 0.0:
            turn_of[k] = theta
            lever = np.hypot(*(dst - dst.mean(axis=0)).T)  # a turn about any point: the offset takes the rest
            moved = abs(theta) * float(lever.max())
            if moved >= ROTATION_NOTE_PX:
                notes.append(
                    f"{scan_of(k)}: its particles lie as if turned by {abs(np.degrees(theta)):.2f} degrees "
                    f"{'counter-clockwise' if theta > 0 else 'clockwise'} (as the image is shown, row 0 at the top) "
                    f"against {scan_of(r)} ({t_turn:.0f} times its standard "
                    f"error; {moved:.2f} px at the particle farthest from their centroid, {len(ids)} particles in "
                    "common): a rotation of the sample or the stage between the scans, not the particles' own motion; "
                    "their own displacements are measured with it taken away (rotation_vs_first_deg in series.csv)"
                )
        if not abs(s_ - 1) >= SCALE_SIGNIFICANCE * se:
            continue
        scale_of[k] = s_
        lever = np.hypot(*(dst - (dst.mean(axis=0) if centre is None else centre)).T)
        moved = abs(s_ - 1) * float(np.median(lever))
        if moved >= SCALE_NOTE_PX:
            size = shared_size_change([rad_at[r].get(p, np.nan) for p in ids], [rad_at[k].get(p, np.nan) for p in ids])
            words = dict(s_=s_, t=abs(s_ - 1) / se, moved=moved, lever=float(np.median(lever)), n=len(ids), size=size)
            pending.append((len(notes), k, r, words))
            notes.append(None)
    # the positions with each scan's scale taken away (about the frame centre; about another point it leaves a
    # translation, which the offsets take), then each scan's offset from the one before: the linking's between two
    # scans without a scale, else the median displacement of the particles the two share, as the linking measures it
    c = np.nanmean(pos, axis=0) if centre is None else centre
    d = pos - c
    turn = out["scan"].map(turn_of).to_numpy(float)
    cs, sn = np.cos(turn), np.sin(turn)
    # the rotation taken away too (the inverse of motion.fit_similarity's: y = y' cos + x' sin, x = x' cos - y' sin)
    flat = (
        c
        + np.stack([cs * d[:, 0] + sn * d[:, 1], cs * d[:, 1] - sn * d[:, 0]], axis=1)
        / out["scan"].map(scale_of).to_numpy(float)[:, None]
    )
    offset = {}
    for i, k in enumerate(scans):
        before = [s for s in scans[:i] if origin[s] == origin[k]]
        if not before:
            offset[k] = np.zeros(2)
            continue
        prev = before[-1]
        step = link[k] - link[prev]
        if scale_of[k] != 1.0 or scale_of[prev] != 1.0 or turn_of[k] != 0.0 or turn_of[prev] != 0.0:
            a, b = (np.flatnonzero((scan == s) & np.all(np.isfinite(flat), axis=1)) for s in (prev, k))
            shared, ia, ib = np.intersect1d(pid[a], pid[b], return_indices=True)
            if shared.size:
                step = np.median(flat[b[ib]] - flat[a[ia]], axis=0)
        offset[k] = offset[prev] + step
    back = flat - np.array([offset[s] for s in scan]).reshape(-1, 2)  # each position in its chain's first scan
    out["scale_vs_first"] = out["scan"].map(scale_of).to_numpy(float)
    out["rotation_vs_first_deg"] = np.degrees(turn)

    def since_first_seen(xy):
        # each particle's positions less its position in the first scan it is seen in
        d = np.full_like(pos, np.nan)
        for p in np.unique(pid):
            rows = np.flatnonzero(pid == p)
            rows = rows[np.argsort(scan[rows], kind="stable")]
            seen = rows[np.all(np.isfinite(xy[rows]), axis=1)]
            if seen.size:
                d[rows] = xy[rows] - xy[seen[0]]
        return d

    own = since_first_seen(back)
    out["own_dy"] = own[:, 0]
    out["own_dx"] = own[:, 1]
    # the other reading of a kept scale, the electrode's strain: the positions with the offset and rotation taken
    # away but the scale kept, about the same centre (the strain's own fixed point is not known: a common translation
    # goes with the offset); the sizes then as measured, where as the optics' they have the scale taken out
    s_row = out["scan"].map(scale_of).to_numpy(float)
    wide = np.where(s_row[:, None] == 1.0, back, c + (back - c) * s_row[:, None])  # without a scale: the same
    own_wide = since_first_seen(wide)
    out["own_dy_with_scale"] = own_wide[:, 0]
    out["own_dx_with_scale"] = own_wide[:, 1]
    if "radius" in out:
        out["radius_at_first_scale"] = rad / s_row
    about = "frame centre" if centre is not None else "centroid of the particles"
    for i, k, r, words in pending:
        here = scan == k
        notes[i] = _scale_note(
            k,
            r,
            **words,
            about=about,
            own=float(np.nanmax(np.hypot(*own[here].T), initial=0.0)),
            own_wide=float(np.nanmax(np.hypot(*own_wide[here].T), initial=0.0)),
            scan_of=scan_of,
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

    Images of different shapes (a detector region of interest changed between two scans)
    are compared too, on the larger rows and columns of the two: each is placed at the
    top left (the offset is of the top-left corners, as the particles' positions are) and
    the rest filled with its own mean, which the high-pass takes to about zero, and both
    are windowed alike on that common frame. (They were not compared at all: a scan
    sharing one particle with the one before, 320 x 320 then 300 x 340, got new ids for
    all.) On 300 pairs of windows of one synthetic field (two scans of it), 320 x 320
    against 260-380 px a side: offset used and within 8 px of the particles' 256 times,
    used 8-13 px off it 3 times (its background moves apart from them); each image
    windowed on its own frame and padded with zeros instead: 248 and 1. The second
    window turned by 90 degrees (unrelated): used 25 times (padded with zeros: 52; the
    same pairs at 320 x 320 both: 41).
    """
    from scipy import ndimage

    shape = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))

    def prep(f):
        f = np.asarray(f, np.float32)
        if f.shape != shape:
            f = np.pad(f, [(0, shape[0] - f.shape[0]), (0, shape[1] - f.shape[1])], constant_values=f.mean())
        f = f - ndimage.gaussian_filter(f, 8)
        return (f - f.mean()) * np.outer(np.hanning(f.shape[0]), np.hanning(f.shape[1])).astype(np.float32)

    fa, fb = np.fft.rfft2(prep(a)), np.fft.rfft2(prep(b))
    x = fb * np.conj(fa)
    r = np.fft.irfft2(x / (np.abs(x) + 1e-12), s=shape)
    ny, nx = shape
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
    out_dir,
    names: dict,
    *,
    min_quality: float = MIN_PRIOR_QUALITY,
    min_uniqueness: float = MIN_PRIOR_UNIQUENESS,
    scale: dict | None = None,
):
    """The offset between two scans measured on their frame-0 images (for :func:`link_scans`).

    ``names`` maps scan index to scan folder name under ``OUT/scans``. Returns a
    callable ``prior(scan_a, scan_b)``: the offset in pixels, or None where an image is
    missing (a scan processed by an older version) or the correlation does not single
    out one offset (quality below ``min_quality`` or uniqueness below ``min_uniqueness``,
    see :func:`phase_offset`): an image offset taken on weak evidence could confirm a
    chance pairing of particles. Frames of different shapes are compared (see
    :func:`phase_offset`). ``prior.not_compared(scan_a, scan_b)`` says why the two images
    could not be compared at all (None where they were), for :func:`link_scans` to say so.

    ``scale`` (scan -> its pixel size over the common one, :func:`pixel_scales`): the offset is in common pixels,
    and the image of the scan of finer pixels is binned (or resampled) to the other's pixels before the two are
    correlated (a scan binned 2x had no image offset: its frames are of another shape).
    """
    cache: dict = {}
    scale = scale or {}

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
        if ia is None or ib is None:
            return None
        (fa, ga), (fb, gb) = (ia[0], ia[1] * scale.get(a, 1.0)), (ib[0], ib[1] * scale.get(b, 1.0))  # common px
        if abs(ga / gb - 1) > PIXEL_SIZE_TOLERANCE:  # the finer image onto the coarser one's pixels
            fa, fb = (_resampled(fa, ga / gb), fb) if ga < gb else (fa, _resampled(fb, gb / ga))
        px = max(ga, gb)
        off, q, u = phase_offset(fa, fb, max_shift=0.45 * max(fa.shape + fb.shape))
        logger.debug("image offset scan %s -> %s: %s px (quality %.1f, uniqueness %.2f)", a, b, off * px, q, u)
        return off * px if q >= min_quality and u >= min_uniqueness else None

    def not_compared(a, b):
        missing = [str(names.get(s, s)) for s in (a, b) if s not in names or image(s) is None]
        if missing:
            return f"no reference image of {' and '.join(missing)} (a scan processed by an earlier version?)"
        return None

    prior.not_compared = not_compared
    return prior


def _resampled(img, zoom: float):
    """``img`` on pixels ``1 / zoom`` times its own (``zoom`` < 1): binned where that is a whole number, else
    interpolated."""
    from scipy import ndimage

    from .register import bin_frames

    b = 1 / zoom
    if abs(b - round(b)) < 0.01:
        return bin_frames(img, int(round(b)))
    return ndimage.zoom(np.asarray(img, np.float32), zoom, order=1)


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


def _scan_records(out, sources) -> dict:
    """``index -> dict(name, energies_ev, pixel_size_um, frame_shape)`` of each scan done in ``out`` (its ``summary.json``; the
    energies from its ``results.h5`` where a summary of an earlier version holds none)."""
    records = {}
    for src in sources:
        try:
            info = json.loads(_summary_path(out, src.name).read_text())
        except (OSError, ValueError):
            continue
        energies = info.get("energies_ev")
        if energies is None:
            try:
                import h5py

                with h5py.File(_summary_path(out, src.name).with_name("results.h5"), "r") as f:
                    energies = f["energies_ev"][()]
            except (OSError, KeyError, ValueError):
                energies = []
        records[src.index] = dict(
            name=src.name,
            energies_ev=np.asarray(energies, float).ravel(),
            pixel_size_um=info.get("pixel_size_um"),
            frame_shape=info.get("frame_shape"),
        )
    return records


def _frame_shape(out, sources, scale=None):
    """The largest frame shape recorded in the scans' summaries (None if none is), in common pixels where ``scale``
    (scan -> factor, :func:`pixel_scales`) is given."""
    shapes = []
    for src in sources:
        try:
            f = (scale or {}).get(src.index, 1.0)
            shape = json.loads(_summary_path(out, src.name).read_text())["frame_shape"]
            shapes.append(tuple(int(round(n * f)) for n in shape))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(shapes, key=max) if shapes else None
