"""Operando series on Dask: a thin shell that maps the per-scan function over the scans.

The work is :func:`xanestrack.series.process_scan` (one scan: read, pipeline, results,
summary) and :func:`xanestrack.series.link_scans` (particles across scans, by the one
linker); this module only schedules it, the dask-image way: one delayed task per scan.

Schedulers: Dask's threaded scheduler by default (no set-up); ``workers=N`` starts a
local ``dask.distributed`` cluster of N single-threaded worker processes;
``scheduler=ADDRESS`` connects to a running cluster; ``"sync"`` runs the scans one by
one in this process (the reference the parallel paths are tested against). Memory is
bounded by the scans in flight (the worker count), whatever the series length.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from ..errors import XanestrackError, one_line
from ..evaluate import evaluate_series  # noqa: F401 (re-exported)
from ..report import write_series_report  # noqa: F401 (re-exported)
from ..series import (  # noqa: F401 (re-exported: the series API in one place)
    REFERENCE_FILE,
    SUMMARY_COLUMNS,
    ScanSource,
    _frame_shape,
    _manifest_sources,
    _normalised,
    _scan_records,
    _summary_path,
    link_scans,
    order_note,
    phase_offset,
    pixel_note,
    pixel_scales,
    process_scan,
    scan_image_prior,
    series_notes,
    series_own_displacement,
    series_sources,
    source_checksums,
    synthetic_sources,
)

__all__ = [
    "run_series",
    "ScanSource",
    "series_sources",
    "synthetic_sources",
    "process_scan",
    "link_scans",
    "evaluate_series",
    "write_series_report",
]

logger = logging.getLogger(__name__)

#: the series' own files, written from every scan at its end (:func:`run_series`, then the command line's
#: :func:`write_series_report` and, for a synthetic series, its accuracy table); a rerun removes them first
SERIES_FILES = ("series.csv", "series_report.html", "series.svg", "series_own_displacement.csv", "accuracy.csv")


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
    min_radius: float | None = None,
    max_radius: float | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Process every scan (in parallel) and link particles across scans.

    Parameters
    ----------
    sources : list of ScanSource
    out_dir : path
        Series folder: ``scans/`` per-scan results, ``series.csv``, ``series.json``.
        A folder holding an earlier run of the *same* sources (paths compared as
        absolute paths) is resumed: a scan whose input content (SHA-256) is unchanged
        is read back, a changed one processed again. The series' own files of the earlier
        run (:data:`SERIES_FILES`: ``series.csv``, the report) are removed first, so that an
        interrupted rerun leaves none that looks complete; they are written again at the end.
        A second series into the same folder is refused while one runs (a lock beside it).
    scheduler : None, "threads", "sync", or a dask.distributed address
    workers : int, optional
        Start a local dask.distributed cluster with this many worker processes.
    detector, segmenter : "learned" (default, the shipped models) or "classical"
    min_radius, max_radius : float, optional
        Particle radius range (px); default from each scan's pixel size, as ``run``.
    device : "cpu" (default), "cuda" or "cuda:N"
        Where each process runs the learned models and the per-particle array work (as ``run --device``).
    progress : callable(stage: str, done: int, total: int), optional
        Called as ``progress("scans", done, n_scans)`` as each scan ends (scans read back from an
        earlier run included), on every scheduler: a series of 8 scans said nothing for 30 s before.

    Returns
    -------
    DataFrame: one row per particle per scan (``particle`` is the series id; see
    :func:`link_scans` for the columns it adds). Its ``attrs`` hold ``failed`` (the scans
    refused), ``input_notes`` (scans given out of the order of the numbers in their names,
    one scan's data given twice, scans of another pixel size: their positions scaled to the
    common pixel size to link them) and ``energy_grids`` (each scan's energies), which
    :func:`xanestrack.series.series_notes` reads; ``series.json`` holds the series notes
    (``notes``) and each scan's grid and pixel size (``scans``) as well.
    """
    from ..outdir import output_lock

    out = Path(out_dir)
    for name, value in (("detector", detector), ("segmenter", segmenter)):
        if value not in ("classical", "learned"):
            raise XanestrackError(f"`{name}` takes 'classical' or 'learned', got {value!r}")
    if workers is not None and scheduler is not None:  # the scheduler was ignored without a word
        raise XanestrackError(
            f"`workers` {workers} starts a local cluster and `scheduler` {scheduler} names another: give one of them"
        )
    if workers is not None and workers < 1:
        raise XanestrackError(f"`workers` must be 1 or more, got {workers}")
    from ..sizes import check_radii

    check_radii(min_radius, max_radius)  # before any scan: refused once, not scan by scan
    with output_lock(_series_folder(out)):  # a second series into this folder is refused while this one runs
        existed = out.exists()
        fresh = not existed or not any(out.iterdir())
        state = {"started": False}
        try:
            return _run_series(
                sources,
                out,
                options=options,
                scheduler=scheduler,
                workers=workers,
                detector=detector,
                segmenter=segmenter,
                radii=(min_radius, max_radius),
                device=device,
                state=state,
                progress=progress,
            )
        except BaseException:
            # once scans are under way (Ctrl-C while one runs), its manifest stays, so that a rerun resumes: the
            # scan in flight finished after the manifest was taken away, and the rerun was refused
            if fresh and not state["started"]:
                _undo_fresh(out, sources, remove=not existed)
            raise


def _undo_fresh(out: Path, sources, *, remove: bool) -> None:
    """After a series refused or failed before any scan was done: take away what it wrote into a folder
    that was new or empty (its manifest and marker; a later series with other scans was refused there),
    and the folder itself where it made it (``remove``)."""
    import shutil

    from ..outdir import MARKER

    if not out.is_dir() or any(_summary_path(out, s.name).is_file() for s in sources):
        return  # scans done: kept, to resume
    for entry in out.iterdir():
        if entry.name not in ("series.json", MARKER, "scans"):
            continue  # not the series' own: left alone
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if remove:
        try:
            out.rmdir()
        except OSError:
            pass


def _series_folder(out: Path) -> Path:
    """Create (or check) the series folder before anything is computed."""
    if out.exists() and not out.is_dir():
        raise XanestrackError(f"output {out} exists and is not a folder; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XanestrackError(
            f"cannot create {out.parent} ({one_line(exc.strerror or exc)}); choose another --out"
        ) from None
    return out


def scans_in_flight(cores: int | None = None) -> int:
    """Scans the threaded scheduler processes at once: one on a machine of two cores or fewer, else two.

    Each scan's pipeline already keeps two cores busy part of the time (the networks use every
    core), so on two cores a second scan in flight gains nothing and doubles the memory: measured
    (``benchmarks/bench_series.py``, 8 scans of 143 x 1024^2, 36 particles), 263 s with two in
    flight and 263 s one at a time, 2722 against 1629 MiB.
    """
    cores = os.cpu_count() if cores is None else cores
    return 1 if (cores or 1) <= 2 else 2


class _DistributedLogs:
    """Raise the level of ``distributed``'s loggers in this process for a series, then restore it.

    ``distributed`` logs its scheduler's and nannies' every step at INFO (176 lines for 16 scans on
    16 workers), and while a local cluster closes, comms closed under a worker print a traceback
    at INFO: a user saw a traceback at the end of a series that had succeeded. Its warnings while
    the scans run (a worker restarted for memory) are kept. Nothing changes under ``--debug``
    (the root logger at DEBUG).
    """

    def __init__(self):
        self.logger = logging.getLogger("distributed")
        self.old = self.logger.level

    def set(self, level: int):
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            self.logger.setLevel(max(level, self.old))

    def restore(self):
        self.logger.setLevel(self.old)


def _how_other(old, new) -> str:
    """What differs between the series in a folder (its manifest's sources, or None) and this one."""
    if old is None:
        return "holds something other than a series (no readable series.json)"

    def key(src):
        return json.dumps({k: v for k, v in src.items() if k != "index"}, sort_keys=True, default=str)

    def name(src):
        return src.get("path") or src.get("name")

    before, now = [key(s) for s in old], [key(s) for s in new]
    added = [name(s) for s in new if key(s) not in before]
    gone = [name(s) for s in old if key(s) not in now]
    if added and not gone and now[: len(before)] == before:
        return f"holds a series of {len(before)} scans; this one adds {len(added)} ({added[0]} ...): a longer series is a new one"
    if added or gone:
        return f"holds a series of other scans ({(added or gone)[0]} is in {'this one' if added else 'that one'} only)"
    return "holds the same scans in another order"


def _run_series(
    sources,
    out,
    *,
    options,
    scheduler,
    workers,
    detector,
    segmenter,
    radii=(None, None),
    device="cpu",
    state=None,
    progress=None,
):
    import dask

    from ..errors import one_line
    from ..outdir import MARKER, write_marker

    manifest = json.loads(json.dumps(dict(sources=_manifest_sources(sources))))
    mpath = out / "series.json"
    if out.exists() and any(out.iterdir()):
        try:
            old = json.loads(mpath.read_text()).get("sources") if mpath.is_file() else None
            old = json.loads(json.dumps(_manifest_sources([ScanSource(**o) for o in old]))) if old is not None else None
        except (ValueError, TypeError, AttributeError):
            old = None
        if old != manifest["sources"]:
            raise XanestrackError(f"output folder {out} {_how_other(old, manifest['sources'])}; choose another --out")
        from ..outdir import check_rewrite

        # what the series writes last (its table and report): not over a copy the user edited
        check_rewrite(out, list(SERIES_FILES[:4]))
        done = sum(_summary_path(out, s.name).is_file() for s in sources)
        logger.info("resuming series in %s: %d of %d scans already done", out, done, len(sources))
        # the series' own files go before any scan is processed again: interrupted, the rerun left the table and
        # report of the scans as they were, complete to the eye, beside a scan redone with other values; they are
        # written anew at the end, from every scan (the same bytes as a series done at once)
        from ..outdir import remove_ours

        gone = remove_ours(out, SERIES_FILES)
        if gone:
            logger.info("series in %s: %s removed until the series is done again", out, ", ".join(gone))
    try:
        out.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(manifest, indent=1))
        if not (out / MARKER).is_file():
            write_marker(out, kind="series")
    except OSError as exc:
        raise XanestrackError(
            f"cannot write in {out} ({one_line(exc.strerror or exc)}); choose another --out"
        ) from None
    both = [source_checksums(s) for s in sources]
    checksums = [b[0] for b in both]
    seen: dict = {}
    # the notes on the inputs, among the series notes (series.json, the report, the console): a copy of a scan
    # was said in one WARNING line on the console only, and scans given as a shell sorts them (scan_10 before
    # scan_2) were processed in that order without a word
    order = order_note(sources)
    if order:  # said before the scans run as well, to stop a long series
        logger.warning("%s", order)
    input_notes = [order] if order else []
    for s, (_, c) in zip(sources, both):  # a copy under another name was processed as a second scan, unsaid
        if c in seen:
            logger.warning(
                "scan %s holds the same data as scan %s (identical SHA-256): processed as two scans", s.name, seen[c]
            )
            input_notes.append(
                f"scan {s.name} holds the same data as scan {seen[c]} (identical SHA-256 of their files): processed "
                "as two scans, its particles linked to themselves and their chemistry unchanged between the two; "
                "give each scan once"
            )
        seen.setdefault(c, s.name)
    tasks = [
        dask.delayed(_scan_or_failure, pure=False)(s, str(out), options, detector, segmenter, c, *radii, device)
        for s, c in zip(sources, checksums)
    ]
    client = cluster = None
    quiet = _DistributedLogs()
    state = {} if state is None else state
    try:
        if workers:
            from distributed import Client, LocalCluster

            quiet.set(logging.WARNING)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            state["started"] = True  # scans under way from here on
            parts = _compute_on_cluster(client, tasks, progress)
        elif scheduler and scheduler not in ("threads", "sync", "synchronous"):
            from distributed import Client

            quiet.set(logging.WARNING)
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, ValueError, TypeError) as exc:  # named the inputs, not the option, before
                raise XanestrackError(
                    f"`scheduler` {scheduler}: no dask scheduler reached there ({one_line(exc)}); give a running "
                    "scheduler's address (tcp://host:8786), 'threads' or 'sync', or `workers` N for a local cluster"
                ) from None
            state["started"] = True  # scans under way from here on
            parts = _compute_on_cluster(client, tasks, progress)
        else:
            sched = "sync" if scheduler in ("sync", "synchronous") else "threads"
            state["started"] = True
            with _scans_done(tasks, progress):
                parts = dask.compute(*tasks, scheduler=sched, num_workers=scans_in_flight())
    finally:
        # closing: workers that outlast the scheduler's comms log tracebacks at INFO and
        # "still alive, killing" warnings (16 workers on a loaded machine) about nothing lost
        quiet.set(logging.ERROR)
        try:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        finally:
            quiet.restore()
    failed = [p for p in parts if isinstance(p, dict)]
    rows = [r for p in parts if not isinstance(p, dict) for r in p]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    records = _scan_records(out, sources)
    pixel_sizes = {i: r["pixel_size_um"] for i, r in records.items()}
    common_px, scale = pixel_scales(pixel_sizes)  # a scan binned 2x split every identity from it on, unsaid
    note = pixel_note(
        pixel_sizes,
        {i: r["name"] for i, r in records.items()},
        frame_shapes={i: r["frame_shape"] for i, r in records.items()},
    )
    input_notes += [note] if note else []
    frame_shape = _frame_shape(out, sources, scale) if len(summary) else None
    if len(summary):
        table = link_scans(
            summary,
            prior=scan_image_prior(out, {s.index: s.name for s in sources}, scale=scale),
            frame_shape=frame_shape,
            scale=scale,
        )
    else:  # the same columns as a series with particles (particle first, the linking's columns after)
        table = summary.assign(common_dy=[], common_dx=[], offset_from_scan=[], link_method=[], link_support=[])
        table.insert(0, "particle", pd.Series([], dtype=int))
    # each scan's scale against the first and the particles' own displacements, in common pixels
    table = series_own_displacement(table, scale=scale, frame_shape=frame_shape)
    table.attrs["pixel_size_um"] = common_px
    table.to_csv(out / "series.csv", index=False, float_format="%.4f")
    from ..outdir import add_to_marker

    add_to_marker(out, ["series.csv"])  # ours to write again on a later run, as long as nobody edits it
    table.attrs["failed"] = [(f["scan"], f["error"]) for f in failed]
    table.attrs["input_notes"] = input_notes
    # lists, not arrays: pandas compares the attrs of frames it concatenates, which arrays make ambiguous
    table.attrs["energy_grids"] = {r["name"]: r["energies_ev"].tolist() for r in records.values()}
    manifest.update(
        notes=series_notes(table),
        pixel_size_um=common_px,
        scans=[
            dict(
                name=r["name"],
                n_energies=len(r["energies_ev"]),
                energy_range_ev=[float(r["energies_ev"].min()), float(r["energies_ev"].max())]
                if len(r["energies_ev"])
                else None,
                pixel_size_um=r["pixel_size_um"],
                to_common_pixels=scale.get(i, 1.0),
            )
            for i, r in records.items()
        ],
    )
    mpath.write_text(json.dumps(manifest, indent=1))  # its sources as before (what a rerun is checked against)
    return table


def _compute_on_cluster(client, tasks, progress) -> tuple:
    """``dask.compute(*tasks)`` on a dask.distributed ``client``, ``progress("scans", done, n)`` as each scan ends."""
    import dask

    if progress is None:
        return dask.compute(*tasks)
    from distributed import as_completed

    futures = client.compute(tasks)
    for done, future in enumerate(as_completed(futures), 1):
        if future.status == "finished":
            _say_failed(future.result())
        progress("scans", done, len(futures))
    return tuple(client.gather(futures))


def _say_failed(result) -> None:
    """A warning, as it happens, where ``result`` is a scan's failure (:func:`_scan_or_failure`): a scan that could
    not be read was counted as "scans 4/5 done (0.0 s)", its error given only after every other scan."""
    if isinstance(result, dict) and "error" in result:
        logger.warning("scan %s failed, the series goes on without it: %s", result["scan"], result["error"])


def _scans_done(tasks, progress):
    """A dask callback (threads or sync scheduler) calling ``progress("scans", done, n)`` as each scan ends;
    a context that does nothing without ``progress``."""
    import contextlib
    import threading

    from dask.callbacks import Callback

    if progress is None:
        return contextlib.nullcontext()
    keys = {t.key for t in tasks}
    count = [0]
    lock = threading.Lock()

    class Done(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys:
                with lock:
                    _say_failed(result)
                    count[0] += 1
                    progress("scans", count[0], len(keys))

    return Done()


def _scan_or_failure(source, out_dir, *args):
    """:func:`process_scan`, or ``{"scan", "error"}`` where the scan is refused (a damaged or unfit input):
    one bad scan stopped the whole series before, the others' results unwritten (and, on a cluster, the
    scans in flight cancelled)."""
    try:
        return process_scan(source, out_dir, *args)
    except (XanestrackError, ValueError, OSError) as exc:
        logger.debug("scan %s failed", source.name, exc_info=True)
        return {"scan": source.name, "error": one_line(exc)}
