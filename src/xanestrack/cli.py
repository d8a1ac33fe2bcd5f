"""Command line: ``xanestrack demo | synth | run | series | bench | report``.

A thin shell: parse arguments, read, call the pipeline, write, print. Errors are
one readable line (``--debug`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Per-particle registration, chemistry and deformation of TXM-XANES energy scans.",
)

_STATE = {"debug": False, "quiet": False, "frames_bytes": None}

#: a failed allocation within this factor of the frames' size (float32), either way, is "of the frames' order":
#: cropping or binning them helps there. Far above it, the memory went to something else than the frames (150
#: particles' vote: 619 MiB asked for, the frames 98 MiB: binning kept every particle, and the advice did not help)
FRAMES_ORDER = 4.0


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=_STATE["quiet"])


def _message(exc: BaseException, context=None) -> str:
    """One line for the user: what went wrong, with which file, and what to do."""
    from .errors import XanestrackError, for_cli, one_line

    text = for_cli(one_line(exc)) or type(exc).__name__  # the library's `parameter` names as our flags
    if isinstance(exc, XanestrackError):
        return text
    where = f"{context}: " if context and str(context) not in text else ""
    if isinstance(exc, MemoryError):
        return f"{where}{_memory_advice(exc, text)}"
    if isinstance(exc, (ImportError, OSError)) and any(
        m in text.lower() for m in ("failed to map segment", "cannot allocate memory")
    ):
        # the learned models' libraries (PyTorch maps ~490 MiB) loaded where the process may not have that much:
        # "unexpected ImportError: libtorch_cpu.so: failed to map segment ...; this is a bug" under ulimit -v 800 MB
        return (
            f"{where}not enough memory to load a library ({text}): this process may use less memory than the run "
            "needs (ulimit -v, a container's limit, or the machine's memory): raise the limit, free memory, or use "
            "--detector classical --segmenter classical (no PyTorch)"
        )
    if isinstance(exc, (ValueError, TypeError, OSError)) and _raised_on_purpose(exc):
        return f"{where}{text} (--debug shows where)"
    return (
        f"{where}unexpected {type(exc).__name__}: {text}; this is a bug or an input we do not handle: "
        "rerun with --debug and report the traceback"
    )


def _memory_advice(exc: MemoryError, text: str) -> str:
    """What a MemoryError says: the size that failed and, only where it is of the frames' order, to crop or bin."""
    asked = getattr(exc, "_total_size", None)  # numpy's "Unable to allocate 619. MiB for an array ..."
    frames = _STATE.get("frames_bytes")
    if asked is None:
        return f"not enough memory ({text}); crop or bin the data, or use a machine with more memory"
    size = f"{asked / 2**20:,.0f} MiB" if asked >= 2**20 else f"{asked / 2**10:,.0f} KiB"
    if frames is None:  # before the input's size was known (or another command than run)
        return f"not enough memory: {size} could not be allocated ({text}); use a machine with more memory"
    said = f"not enough memory: {size} could not be allocated, the frames taking {frames / 2**20:,.0f} MiB as float32"
    if frames / FRAMES_ORDER <= asked <= FRAMES_ORDER * frames:
        return f"{said} ({text}); crop or bin the data, or use a machine with more memory"
    if asked > FRAMES_ORDER * frames:
        return (
            f"{said}: far more than the frames, for the run's own work (many objects?), which cropping or binning "
            f"would not shrink much ({text}); use a machine with more memory; rerun with --debug to see the step"
        )
    return (
        f"{said}: the memory was spent before this small request ({text}); free memory, raise the limit (ulimit -v, "
        "a container's) or use a machine with more memory"
    )


def _raised_on_purpose(exc: BaseException) -> bool:
    """Whether ``exc`` came from a ``raise`` statement (ours or a reader's, about the input), not from an operation
    that failed inside numpy: a scan of 5 frames met "operands could not be broadcast together with shapes (5,) (7,)",
    and the CLI put it as the input file's fault."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return not frames or (frames[-1].line or "").lstrip().startswith("raise") or isinstance(exc, OSError)


def _fail(exc: BaseException, context=None):
    """Print ``exc`` as one line and exit with status 2 (``--debug``: raise it, with its traceback)."""
    if _STATE["debug"]:
        raise exc
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(_message(exc, context))}", highlight=False)
    if getattr(sys.modules.get("xanestrack.results"), "HDF5_LEFT_OPEN", False):
        # HDF5 would flush a file it could not write at exit and crash (exit 139): end here, output cleaned up
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    raise typer.Exit(2)


class _Progress:
    """Turns the progress callback ``(stage, done, total)`` of the pipeline and the series into what the user sees.

    In a terminal, one rich bar at a time: the stage under way (a stage's bar goes when the next one starts).
    Elsewhere (a batch log: nohup, slurm), a plain line as each stage ends, flushed, with the seconds since the
    line before; with ``each``, one as each step ends (the series' scans). A 150-particle run's log said nothing
    from 2.6 s to 82.5 s, its stage lines all written at the end.
    """

    def __init__(self, quiet, *, each=False):
        import threading

        self.quiet = quiet
        self.each = each
        self.bar = None
        self.tasks = {}
        self.lines = None
        self.said = None
        self.lock = threading.Lock()
        self.t0 = self.t = time.perf_counter()

    def __enter__(self):
        self.t0 = self.t = time.perf_counter()
        if self.quiet:
            return self
        console = _console()
        if not console.is_terminal:
            self.lines = console
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            transient=True,
            console=console,
        )
        self.bar.__enter__()
        return self

    def __call__(self, stage, done, total):
        if self.lines is not None:
            self._line(stage, done, total)
            return
        if self.bar is None:
            return
        if stage not in self.tasks:
            for task in self.tasks.values():  # one live bar: the stage before is over
                self.bar.remove_task(task)
            self.tasks = {stage: self.bar.add_task(stage, total=total)}
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def _line(self, stage, done, total):
        with self.lock:  # the particles report from worker threads
            if (done < total and not self.each) or self.said == (stage, done, total):
                return
            self.said = (stage, done, total)
            now = time.perf_counter()
            self.lines.print(
                f"{stage:<9} {done}/{total} done ({now - self.t:.1f} s; {now - self.t0:.1f} s in all)",
                highlight=False,
                soft_wrap=True,
            )
            self.t = now
            self.lines.file.flush()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@app.callback()
def _main(
    ctx: typer.Context = None,  # None where called as a function, not as the app's callback
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="No progress bars, stage summaries, notes or warnings: errors only (notes stay in run.json).",
    ),
):
    _STATE["debug"], _STATE["quiet"] = debug, quiet
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _term_as_ctrl_c(ctx)


def _term_as_ctrl_c(ctx) -> None:
    """Make SIGTERM end the command being run as Ctrl-C does (:func:`_terminated`), until it is done; the previous
    handler is put back then. Called in the app's callback, which every command goes through: installed in
    :func:`main` only, a command started through ``app()`` (from Python, or an entry point calling it) died silently
    on SIGTERM, its ``.NAME.lock`` and ``.NAME.tmp-...`` left beside the output. Only within a command (``ctx``, its
    context, puts the handler back when it closes) and in the main thread (the only one a handler can be set from).
    """
    import signal
    import threading

    if ctx is None or not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminated)
    # None: a handler set outside Python, which cannot be put back; the default action is the nearest
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous))


def _stage_summary(result):
    from .pipeline import key_frame_step

    c = _console()
    t = result.timings
    n_frames = len(result.energies_ev)
    det = result.detections
    # the detector runs on key frames only (9 of 60 at --detect-every 12): "in 60 frames" said otherwise
    step = key_frame_step(n_frames, result.options.detect_every) if n_frames else 1
    n_key = n_frames if step == 1 else len(set(range(0, n_frames, step)) | {n_frames - 1})
    frames = (
        f"all {n_frames} frames" if n_key == n_frames else f"the {n_key} of {n_frames} frames it ran in (one in {step})"
    )
    c.print(
        f"detect    {int(det['isolated'].sum()) if len(det) else 0} isolated particles in {frames} "
        f"({t.get('detect', 0):.2f} s)"
    )
    c.print(
        f"match     {len(result.particles)} tracks, {len(result.rejected)} rejected objects ({t.get('match', 0):.2f} s)"
    )
    c.print(f"register  + xanes: {t.get('segment_register_xanes', 0):.2f} s")
    if "matrix" in t:
        c.print(f"  of which the matrix behind drifting particles: {t['matrix']:.2f} s")
    if "report" in t:
        c.print(f"report    {t['report']:.2f} s")


def _particle_table(result, title="particles"):
    import numpy as np
    from rich.table import Table

    from .result import FRAME_FLAGS, particle_summary

    def flag_counts(pid):
        """``disagree 12, undetected 3``: each flag's frames, the most frequent first (the count of flagged
        frames shown before took frames vouched for by the motion as flagged: "22 frames" beside 21 of 40
        vouched for)."""
        p = next((q for q in result.particles if q.particle == pid), None)
        if p is None:
            return ""
        f = np.asarray(p.frame_flags, int)
        counts = [(int(((f & bit) > 0).sum()), name) for name, bit in FRAME_FLAGS.items()]
        counts = sorted((c for c in counts if c[0]), key=lambda c: -c[0])
        return ", ".join(f"{name} {c}" for c, name in counts[:3]) + (" ..." if len(counts) > 3 else "")

    tab = Table(title=title)
    for col in (
        "particle",
        "radius px",
        "frames measured",
        "vouched for",
        "max |non-rigid| px",
        "mean E50 eV",
        "flags (frames)",
    ):
        tab.add_column(col, justify="right")
    for _, r in particle_summary(result).iterrows():
        n = int(r["frames"])
        tab.add_row(
            str(int(r["particle"])),
            f"{r['radius_px']:.1f}" if np.isfinite(r["radius_px"]) else "-",  # no size measured (result.size_radius)
            f"{int(r['frames_measured'])}/{n}",
            f"{int(r['frames_vouched'])}/{n}",
            f"{r['max_nonrigid_px']:.2f}" if np.isfinite(r["max_nonrigid_px"]) else "-",  # not given: a lone particle
            f"{r['mean_e50_ev']:.2f}" if np.isfinite(r["mean_e50_ev"]) else "-",
            flag_counts(int(r["particle"])),
        )
    return tab


def _interrupted(message: str):
    """Say what an interrupted command left, and end with status 130 (Ctrl-C)."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(message, highlight=False)
    raise typer.Exit(130) from None


def _exit_if_threads_stuck(code: int, wait_s: float = 2.0) -> None:
    """End the process at once with ``code`` where a thread of ours is still running ``wait_s`` after an interrupt.

    Ctrl-C landing while the warm-up thread imported PyTorch left the import lock held (a CPython race): that
    thread, not a daemon, then waited forever and so did the interpreter's shutdown, after "interrupted" was
    printed (8 of 24 tries, one still waiting after 10 minutes). The output folder is cleaned up by then."""
    import threading

    deadline = time.monotonic() + wait_s
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon and t.name.startswith("xanestrack"):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)


def _end_interrupted_process(code: int) -> None:
    """End the process at once with ``code`` after an interrupt was handled (the output folder cleaned up, the
    message printed), where the command owns the process (:func:`main`; not ``app()`` called from Python or a test).

    The interpreter's shutdown after an interrupt that landed while PyTorch was at work aborted the C++ runtime now
    and then ("terminate called without an active exception", exit 134 instead of 130): 1 of 20 and 1 of 25 SIGTERMs
    sent as a small run began, this morning's code too, and once in a CI run of the test suite."""
    if _STATE.get("process"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _ModelWarmup:
    """Import the pipeline's libraries (pandas, scipy, scikit-image; PyTorch and the learned
    segmenter where asked for) in a thread while the stack is read.

    These imports and loading a model take 1-2.5 s: time the user would otherwise wait
    after reading. Errors are kept and raised by :meth:`segmenter` where the model is
    needed, as they would have been.
    """

    def __init__(self, detector: str, segmenter: str, segmenter_model=None, device: str = "cpu"):
        import threading

        self.device = device

        self._seg = None
        self._error = None
        self._wanted = detector == "learned" or segmenter == "learned"
        self._build_seg = segmenter == "learned"
        self._model = segmenter_model
        # not a daemon: a run refused while the thread imports PyTorch (a bad --detector-model) must
        # wait for it before the interpreter exits, or the C++ runtime aborts the process (exit 134)
        self._thread = threading.Thread(target=self._work, name="xanestrack-model-warmup", daemon=False)
        self._thread.start()

    def _work(self):
        try:
            from . import pipeline  # noqa: F401 (pandas, scipy, scikit-image)

            if not self._wanted:
                return
            import torch  # noqa: F401

            from .models import detector as _d  # noqa: F401
            from .models import segmenter as _s

            if self._build_seg:
                self._seg = _s.LearnedSegmenter(self._model, device=self.device).segment_rois
        except Exception as exc:  # raised in the main thread, where the model is used
            self._error = exc

    def segmenter(self):
        """The learned segmenter callable (None when the classical one was chosen)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._seg


#: um: the largest ``--pixel-size`` taken. A TXM's pixels are 10-100 nm (FXI 21.3 nm, the SSRL frames 31.2 nm), binned
#: up to about 1 um; at 8 um the default particles (0.4-8 um in radius) are below a pixel. 100 um was taken, and
#: FXI's 21.3 nm given as 21.3 was refused naming `--min-radius 0.0187793 / --max-radius 0.375587`, never the pixel size
MAX_PIXEL_SIZE_UM = 10.0


def _check_pixel_size(pixel_size: float) -> None:
    import math

    from .errors import XanestrackError

    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise XanestrackError(f"--pixel-size {pixel_size:g}: give the pixel size in um, a number above 0")
    if pixel_size > MAX_PIXEL_SIZE_UM:
        raise XanestrackError(
            f"--pixel-size {pixel_size:g}: the pixel size is in micrometres, and {pixel_size:g} um per pixel is no "
            f"TXM's (10-100 nm, binned up to about 1 um; at most {MAX_PIXEL_SIZE_UM:g} um taken): nanometres given? "
            f"{pixel_size:g} nm is --pixel-size {pixel_size / 1000:g}"
        )


def _with_pixel_size(stack, pixel_size: float):
    """``stack`` with the pixel size ``--pixel-size`` gives (um), a note where it replaces the files' own.

    Its metadata say where it came from (``pixel_size_source`` "--pixel-size", and ``input_pixel_size_um``, the
    files' own, where they give one), for run.json and the report's row (which said "from the input")."""
    import dataclasses

    _check_pixel_size(pixel_size)
    own = stack.pixel_size_um
    notes = list(stack.metadata.get("notes", []))
    if own and abs(own - pixel_size) > 1e-6 * own:
        notes.append(f"pixel size {pixel_size:g} um (--pixel-size) used, not the files' {own:g} um")
    meta = {**stack.metadata, "notes": notes, "pixel_size_source": "--pixel-size"}
    if own:
        meta["input_pixel_size_um"] = float(own)
    return dataclasses.replace(stack, pixel_size_um=float(pixel_size), metadata=meta)


def _check_device(device: str) -> None:
    """Refuse ``--device`` at once where it names a GPU that is not there (the learned models and the
    per-particle array work would run there; torch is imported only then: the CPU default costs nothing here)."""
    if device.strip().lower() != "cpu":
        from .models.loading import torch_device

        torch_device(device)


def _run_and_write(
    stack,
    out,
    *,
    overwrite,
    run_info,
    options=None,
    detector="learned",
    segmenter="learned",
    make_report=True,
    save_fused=False,
    references=None,
    detector_model=None,
    segmenter_model=None,
    inputs=(),
    warmup=None,
    known_edge=None,
    read_s=None,
):
    from concurrent.futures import ThreadPoolExecutor

    from .accel import arrays_on
    from .io.checks import release_freed_memory
    from .pipeline import PipelineOptions, run_pipeline
    from .results import add_timing, atomic_output_dir, write_results_h5, write_tables

    options = options or PipelineOptions()
    from .models import pipeline_models

    # the output folder is checked, claimed and locked before anything is computed
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs, kind="run") as tmp:
        if warmup is not None:
            det_fn, _ = pipeline_models(
                detector, "classical", options=options, detector_model=detector_model, device=warmup.device
            )
            seg_fn = warmup.segmenter()
        else:
            det_fn, seg_fn = pipeline_models(
                detector, segmenter, options=options, detector_model=detector_model, segmenter_model=segmenter_model
            )
        t0 = time.perf_counter()
        device = warmup.device if warmup is not None else "cpu"
        with _Progress(_STATE["quiet"]) as prog, arrays_on(device):
            recalibrate, calibration = (
                _known_edge_calibration(*known_edge, references=references, options=options)
                if known_edge is not None
                else (None, None)
            )
            result = run_pipeline(
                stack,
                options=options,
                detector=det_fn,
                segmenter=seg_fn,
                references=references,
                progress=prog,
                recalibrate=recalibrate,
                let_go_frames=True,  # the stack was read for this run: its frames go once no stage needs them
            )
        if read_s is not None:  # the stage the user waits for first (it was printed, not recorded)
            stages = dict(result.timings)
            result.timings.clear()
            result.timings.update(read=float(read_s), **stages)
        release_freed_memory()  # what the pipeline freed, before the outputs and the report allocate
        run_info = dict(
            run_info,
            detector=detector,
            segmenter=segmenter,
            detector_model=str(detector_model) if detector_model else ("shipped" if detector == "learned" else None),
            segmenter_model=str(segmenter_model)
            if segmenter_model
            else ("shipped" if segmenter == "learned" else None),
            pipeline_s=time.perf_counter() - t0,
            models_device=device if "learned" in (detector, segmenter) else None,
            arrays_device=device,
        )
        if calibration is not None:
            import math

            from .result import particle_summary

            check = float(particle_summary(result).set_index("particle")["mean_e50_ev"].get(known_edge[0], math.nan))
            if not math.isfinite(check):  # the axis shifted on a mean the run then does not give: no record of a NaN
                from .errors import XanestrackError

                why = _why_no_e50(next((p for p in result.particles if p.particle == known_edge[0]), None))
                raise XanestrackError(
                    f"--known-edge {known_edge[0]}={known_edge[1]}: after the shift particle {known_edge[0]} has no E50"
                    f"{why}, so the calibration it gave cannot be checked and nothing was written; {KNOWN_EDGE_ADVICE}"
                )
            run_info["energy_calibration"] = dict(calibration, check_mean_e50_ev=check)
            if "shift_ev" in calibration:  # printed as --energy-reference's is (only in run.json before)
                import dataclasses

                from .chemistry.runnotes import _known_edge_note

                bias = float(calibration.get("normalisation_bias_ev", math.nan))
                _console().print(
                    f"energy    shifted by {calibration['shift_ev']:+.3f} eV (--known-edge: particle {known_edge[0]}'s "
                    f"mean E50 {calibration.get('measured_e0_ev', float('nan')):.2f} -> "
                    + (
                        f"{known_edge[1] + bias:.2f} eV, {known_edge[1]:.2f} with its chemistry's normalisation "
                        f"bias on these energies, {bias:+.2f} eV)"
                        if math.isfinite(bias)
                        else f"{known_edge[1]:.2f} eV, no normalisation bias taken out: see the run's note)"
                    ),
                    highlight=False,
                    soft_wrap=True,
                )
                # what was taken out (or could not be), beside the note on the normalisation's bias it squares with
                note = _known_edge_note(calibration, known_edge[0], known_edge[1])
                result = dataclasses.replace(result, notes=tuple(result.notes) + (note,))
        run_info["quality"] = _quality_record(result)
        if hasattr(run_info.get("input_checksums_sha256"), "result"):  # computed beside the pipeline
            run_info["input_checksums_sha256"] = run_info["input_checksums_sha256"].result()
        try:
            write_tables(result, tmp, run_info=run_info)
            # results.h5 (its compression) beside the report, which needs only run.json and the result
            # in memory: 1024^2, 36 particles, 1.9 + 3.1 s one after the other, 3.2 s side by side
            with ThreadPoolExecutor(1) as pool:
                h5 = pool.submit(write_results_h5, result, tmp, save_fused=save_fused)
                t = time.perf_counter()
                if make_report:
                    from .report import write_report

                    write_report(tmp, result=result)
                t_report = time.perf_counter() - t
                h5.result()
            if make_report:  # after results.h5 is written: its timings are the pipeline's
                result.timings["report"] = t_report
                add_timing(tmp, "report", t_report)  # recorded too (the report's own table cannot show it)
        except OSError as exc:  # the disk full, a file-size limit: the output's fault, not the input's
            from .errors import XanestrackError, one_line

            raise XanestrackError(
                f"cannot write the output {out} ({one_line(exc)}); nothing was changed there: free space, "
                "or choose another output folder (`out`)"
            ) from None
    return result


def _input_description(stack, inputs, others=()):
    """What the run's record says of its input; the files' checksums (the scan's, and those of
    ``others``: energies, flats, darks, references, models' files) are computed in a thread beside
    the pipeline (hashlib releases the GIL) and collected by :func:`_run_and_write`."""
    from concurrent.futures import ThreadPoolExecutor

    from .errors import for_cli
    from .io import file_checksums

    files = list(stack.metadata.get("files", [str(p) for p in inputs]))
    for p in map(Path, others):
        files += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")) if p.is_dir() else [p]
    ex = ThreadPoolExecutor(1)
    checksums = ex.submit(file_checksums, files)
    ex.shutdown(wait=False)  # returns at once; the checksums are collected when the results are written
    from .results import stack_description

    info = dict(command=" ".join(sys.argv), inputs=[str(p) for p in inputs], input_checksums_sha256=checksums)
    info.update(stack_description(stack))
    info["input_notes"] = [for_cli(n) for n in info["input_notes"]]  # as printed: flags, not parameters
    return info


def _chemistry_options(
    clusters,
    cluster_method,
    cluster_window,
    edge_jump_threshold,
    energy_reference,
    reference_standard,
    known_edge,
    reference_e0=None,
) -> dict:
    """Check the chemistry options of ``run``: ``{"options": PipelineOptions fields, "known_edge": (p, ev) or None}``."""
    import math

    from .errors import XanestrackError

    if clusters < 0 or clusters == 1:
        raise XanestrackError(f"--clusters {clusters}: give 0 (no phase mapping) or 2 or more phases")
    if cluster_method not in (None, "kmeans", "nmf"):
        raise XanestrackError(f"--cluster-method takes 'kmeans' or 'nmf', got {cluster_method!r}")
    window = None
    if cluster_window is not None:
        try:
            lo, hi = (float(v) for v in cluster_window.split(","))
        except ValueError:
            raise XanestrackError(
                f"--cluster-window takes LO,HI in eV (e.g. 8330,8370), got {cluster_window!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise XanestrackError(f"--cluster-window {cluster_window}: give LO,HI with LO < HI (eV)")
        window = (lo, hi)
        if not clusters:  # it was ignored without a word
            raise XanestrackError(f"--cluster-window {cluster_window}: give --clusters N too (it sets their window)")
    if not (math.isfinite(edge_jump_threshold) and edge_jump_threshold > 0):
        raise XanestrackError(f"--edge-jump-threshold {edge_jump_threshold}: give a positive number (5 is usual)")
    if reference_standard is not None and energy_reference is None:
        raise XanestrackError("--reference-standard needs --energy-reference (the reference measured with the scan)")
    # these two were ignored without a word without the option they qualify (None: not given)
    if reference_e0 is not None and energy_reference is None:
        raise XanestrackError(
            "--reference-e0 needs --energy-reference (it is the known E0 of that reference; it sets no edge itself)"
        )
    if cluster_method is not None and not clusters:
        raise XanestrackError(f"--cluster-method {cluster_method}: give --clusters N too (it sets how they are found)")
    cluster_method = cluster_method or "kmeans"
    edge = None
    if known_edge is not None:
        if energy_reference is not None:
            raise XanestrackError("--known-edge and --energy-reference: give one energy calibration, not both")
        try:
            pid, ev = known_edge.split("=", 1)
            edge = (int(pid), float(ev))
        except ValueError:
            raise XanestrackError(f"--known-edge takes PARTICLE=EV (e.g. 3=8340.05), got {known_edge!r}") from None
        if not (math.isfinite(edge[1]) and 1000 < edge[1] < 100000):
            raise XanestrackError(f"--known-edge {known_edge}: the edge energy must be in eV (e.g. 8340.05)")
    return dict(
        options=dict(
            clusters=int(clusters),
            cluster_method=cluster_method,
            cluster_window=window,
            edge_jump_threshold=float(edge_jump_threshold),
        ),
        known_edge=edge,
    )


#: eV. An energy calibration that would shift the axis further is refused: a monochromator is off by a few
#: eV, not by the 600-1800 eV between another element's edge and this one, or a keV/eV mix-up
MAX_CALIBRATION_SHIFT_EV = 50.0

#: eV. The derivative maximum of a reference measured this coarsely near its edge or coarser is refused: a Ni
#: foil on the scan's own 20-eV pre-edge grid: -10.5 eV where the truth was 0; every 1.0 eV (FXI's own step across
#: the edge), at any phase of the grid: -12.3 eV where the truth was 0 (its second rise, 12 eV above its first
#: inflection); every 0.5 eV with offsets of -8..+8 eV: within 0.13 eV. (Refused from 2 eV before, with a note
#: from 1 eV: the 1-eV case passed without a word). Also refused where the largest step from where the reference
#: begins to rise up to its maximum is this or more (the median near the maximum passed a foil every 2 eV to 8336,
#: every 0.5 eV after: -12.6 eV, its second rise); larch's Ni foil with 1.5-5 eV steps below 8334-8338 eV and 0.5 eV
#: above has its maximum on its second rise at every offset, with 1-eV steps at 9 of 12 (8333.4 eV at the others)
COARSE_REFERENCE_EV = 0.75

#: The share of a measured reference's edge derivative (RMS) that the best match with the standard may leave
#: unexplained: beyond it the two are not the same material (a Ni foil against a NiO standard: 0.71-0.78,
#: matched at a third of its amplitude and 1.6-4.2 eV off); from half of it the shift is kept with a note
XCORR_MISMATCH = 0.6


def _check_shift(shift_ev: float, what: str, scan_ev, known: str = "the known energy right") -> None:
    """Refuse a calibration shift no monochromator needs (more than ``MAX_CALIBRATION_SHIFT_EV``); ``known``
    asks after the energy it shifts to (naming the option that sets it)."""
    from .errors import XanestrackError

    if not abs(shift_ev) <= MAX_CALIBRATION_SHIFT_EV:
        raise XanestrackError(
            f"{what}: it would shift the energies by {shift_ev:+.1f} eV, more than any energy calibration needs "
            f"({MAX_CALIBRATION_SHIFT_EV:g} eV): is it of this edge, in eV, and is {known}? "
            f"(the scan: {scan_ev[0]:.1f}-{scan_ev[-1]:.1f} eV)"
        )


def _calibrate_stack(stack, path, known_e0, standard_path):
    """The stack on the calibrated energy axis, the calibration's record (for run.json) and a note or None."""
    from dataclasses import replace

    import numpy as np

    from .chemistry.calibration import calibrate_from_reference
    from .errors import XanestrackError
    from .spectra import read_spectrum

    scan = np.asarray(stack.energies_ev, float)
    try:
        ref = read_spectrum(path)
        standard = read_spectrum(standard_path) if standard_path is not None else None
        cal = calibrate_from_reference(
            ref.energies_ev, ref.mu, known_e0_ev=known_e0, standard=standard, source=str(path)
        )
    except (ValueError, OSError) as exc:
        raise XanestrackError(f"--energy-reference {path}: {exc}") from None
    details = dict(cal.details)
    measured = details.get("derivative_maximum_ev", cal.measured_e0_ev)
    if not scan[0] <= measured <= scan[-1]:
        raise XanestrackError(
            f"--energy-reference {path}: its edge (the derivative's maximum) is at {measured:.1f} eV, outside the "
            f"scan's {scan[0]:.1f}-{scan[-1]:.1f} eV: it was measured on another axis, or is of another edge"
        )
    # a Co foil on a Co scan was refused asking whether "the known energy" was right, never naming the option that
    # sets it: --reference-e0, left at the Ni foil's 8333 eV
    default = "; the default, a Ni foil's: give --reference-e0 for another foil" if known_e0 == 8333.0 else ""
    _check_shift(
        cal.shift_ev,
        f"--energy-reference {path}",
        scan,
        known=f"--reference-e0 right ({known_e0:g} eV, where its E0 at {cal.measured_e0_ev:.1f} eV is shifted to{default})",
    )
    note = None
    rel = details.get("derivative_rms_relative", 0.0)
    if rel > XCORR_MISMATCH:
        raise XanestrackError(
            f"--energy-reference {path}: its edge does not match the standard's ({standard_path.name}): the best "
            f"match leaves {100 * rel:.0f} % of its derivative unexplained (a foil against an oxide standard: 71-78 %); "
            "give a standard of the same material"
        )
    if rel > XCORR_MISMATCH / 2:
        note = (
            f"--energy-reference {path.name}: its edge matches the standard's ({standard_path.name}) loosely: "
            f"{100 * rel:.0f} % of its derivative unexplained by the best match (noise, or not quite the same "
            "material); the shift is less sure"
        )
    if cal.method == "derivative":
        near = ref.energies_ev[np.abs(ref.energies_ev - measured) <= 10.0]
        step = float(np.median(np.diff(near))) if near.size >= 2 else float("inf")
        advice = "give --reference-standard (the same material on a calibrated axis), which matches the whole edge"
        if step >= COARSE_REFERENCE_EV:
            # a Ni foil sampled every 1.8 eV on the scan's own grid, the scan 2 eV off: shifted by -13.9 eV (its
            # derivative's maximum on the second rise), every E50 12 eV low, with only a note; every 1.0 eV, at any
            # offset of the grid: -12.3 eV where the truth was 0, -4.3 where it was -8, without a word
            raise XanestrackError(
                f"--energy-reference {path}: measured every {step:.2g} eV near its edge, too coarse for its "
                f"derivative's maximum (it would shift the energies by {cal.shift_ev:+.1f} eV; on such a grid it can "
                f"land on another feature of the edge: a Ni foil's second rise, 12 eV above its first inflection, "
                f"at 1 eV steps); {advice}"
            )
        # the median step near the maximum passed a foil measured every 2 eV to 8336 eV, every 0.5 eV from there: its
        # maximum on its second rise (8345.58 eV), its first inflection in the 2-eV steps, every E50 12.5 eV low
        largest = details.get("rise_largest_step_ev", 0.0)
        if largest >= COARSE_REFERENCE_EV:
            a, b = details["rise_largest_step_at_ev"]
            raise XanestrackError(
                f"--energy-reference {path}: too coarse where its edge rises: {largest:.2g} eV from {a:.1f} to {b:.1f} "
                f"eV (it rises over {details['rise_ev'][0]:.1f}-{measured:.2f} eV); such steps can put the maximum on "
                f"another feature (a Ni foil's second rise, 12 eV up); it would shift the energies by "
                f"{cal.shift_ev:+.1f} eV; measure it every 0.5 eV from its pre-edge, or give --reference-standard"
            )
    rec = dict(
        cal.record(),
        applied="the energy axis was shifted before the analysis (run.json energies_ev: as read; results.h5: shifted)",
    )
    if note:
        rec["note"] = note
    if standard_path is not None:
        rec["standard"] = str(standard_path)
    # the record travels with the stack: the pipeline's note that the fractions' axis was not calibrated reads it
    calibrated = replace(
        stack, energies_ev=cal.apply(stack.energies_ev), metadata={**stack.metadata, "energy_calibration": rec}
    )
    return calibrated, rec, note


#: what a refused --known-edge asks for (a refused run writes nothing: the particles' E50s are in a run without it)
KNOWN_EDGE_ADVICE = (
    "run without --known-edge and name a particle with a mean E50 (figures/uncertainty.csv, mean_e50_ev), or calibrate "
    "with --energy-reference and a foil"
)


def _why_no_e50(particle, n_energies: int | None = None, min_energies: int | None = None) -> str:
    """The refusal's clause on why the particle has no E50: `` (the scan has N energies, fewer than ...)`` where the
    scan is too short for a XANES (``n_energies`` under ``min_energies``), else `` (its notes: ...)`` with what its
    notes say of its E50 or XANES (a refused run writes no notes: "its note says why" pointed at nothing); empty where
    neither tells."""
    if n_energies is not None and min_energies is not None and n_energies < min_energies:
        return f" (the scan has {n_energies} energies, fewer than the {min_energies} a XANES needs)"
    notes = [str(n) for n in getattr(particle, "notes", ()) or ()]
    notes = [n for n in notes if any(w in n for w in ("E50", "XANES", "edge", "spectrum"))]
    if not notes:
        return ""
    text = "; ".join(notes)
    return f" (its notes: {text[:400]}{' ...' if len(text) > 400 else ''})"


def _known_edge_calibration(particle, known_ev, *, references=None, options=None):
    """A ``recalibrate`` hook of :func:`~xanestrack.pipeline.run_pipeline` for ``--known-edge``, and its record.

    Once every particle is analysed, ``particle``'s mean E50 over its trusted core pixels is
    measured and the axis shifted so that it becomes ``known_ev`` plus the normalisation's bias at
    its chemistry on the scan's energies (``known_ev`` is its material's E50 measured densely: what
    the scan's energies show of it is another, by as much as the run's note on that bias says;
    :func:`xanestrack.chemistry.calibration.calibrate_from_particle`); the pipeline then analyses
    every particle's XANES again on that axis from the same windows (the matrix subtracted and
    the resolution matched as in the first analysis). The record (``run.json``
    ``energy_calibration``) is filled when the hook runs.

    ``references``: those the run fits (a caller's, ready for the fit), None: the shipped ones where the scan crosses
    their edge (as the pipeline takes them); ``options``: the run's :class:`~xanestrack.pipeline.PipelineOptions`
    (their edge and fit windows; default ones).
    """
    import numpy as np

    from .chemistry.calibration import calibrate_from_particle
    from .chemistry.runnotes import _two_edges
    from .errors import XanestrackError
    from .result import core_pixels, e50_share, gap_share
    from .xanes import MAX_GAP_SHARE, MIN_E50_SHARE

    record = {}

    def hook(particles, energies):
        found = [p for p in particles if p.particle == particle]
        if not found:
            ids = ", ".join(str(p.particle) for p in particles) or "none"
            raise XanestrackError(
                f"--known-edge {particle}={known_ev}: no particle {particle} was tracked (particles: {ids})"
            )
        # the E50 the run gives it (pipeline._two_edges withholds, after this hook, the E50 of a particle normalised
        # across another edge's step: a Co+Ni scan's Co-rich particle read 2.25 eV high, and every Ni particle
        # calibrated on it moved 2.2 eV and its LiNiO2 fraction from 1.00 to 0.08)
        seen = found[0]
        if all(hasattr(p, "e0_ev") for p in particles):  # ParticleResults (a stub of E50 maps alone: those judged)
            (seen,) = [p for p in _two_edges(particles, energies)[0] if p.particle == particle]
        what = f"--known-edge {particle}={known_ev}: particle {particle}"
        do = KNOWN_EDGE_ADVICE
        e50 = found[0].edge_maps["e50"][core_pixels(found[0])]  # as particle_summary's mean_e50_ev
        if np.isfinite(e50).any() and not np.isfinite(seen.edge_maps["e50"]).any():
            raise XanestrackError(
                f"{what}'s spectrum crosses two absorption edges (its own near {found[0].e0_ev:.0f} eV): the run gives "
                f"it no E50, normalised across the other edge's step, so it cannot calibrate the axis; {do}"
            )
        e50 = e50[np.isfinite(e50)]
        measured = float(e50.mean()) if e50.size else float("nan")
        if not np.isfinite(measured) or gap_share(found[0]) > MAX_GAP_SHARE:
            why = _why_no_e50(found[0], len(energies), options.min_xanes_energies if options is not None else None)
            raise XanestrackError(f"{what} has no E50{why}, so it cannot calibrate the axis; {do}")
        # a mean of a few pixels is not the particle's: the share of its whole core (particle_summary's decision)
        n, n_core = e50_share(found[0].edge_maps["e50"], found[0].mask)
        if n < MIN_E50_SHARE * n_core:
            raise XanestrackError(
                f"--known-edge {particle}={known_ev}: particle {particle} has an edge energy in only {n} of its "
                f"{n_core} core pixels, too few to calibrate on{_why_no_e50(found[0])}; name another particle"
            )
        cal = calibrate_from_particle(
            energies,
            measured,
            known_e50_ev=known_ev,
            source=f"particle {particle}: mean E50 over its trusted core pixels",
            **_bias_inputs(found[0], particles, energies, references, options),
        )
        _check_shift(cal.shift_ev, f"--known-edge {particle}={known_ev}", energies)
        record.update(
            cal.record(),
            applied="measured on the first analysis; energies shifted and every particle's XANES analysed again from "
            "the same windows (registration unchanged)",
        )
        return cal.apply(energies)

    return hook, record


def _bias_inputs(p, particles, energies, references, options) -> dict:
    """What :func:`~xanestrack.chemistry.calibration.calibrate_from_particle` measures the normalisation's bias at
    particle ``p``'s chemistry from, as the run's note on that bias measures it
    (:func:`xanestrack.chemistry.runnotes._normalisation_bias`): the references at the particles' edge (the shipped
    ones, or ``references``), each measured against its dense E50 as the fit uses it, the particles' own pre-edge
    under their step; ``p``'s normalised mean spectrum, E0 and frames. A particle without a spectrum (a stub of E50
    maps alone) gives none: nothing measured, said."""
    from .chemistry.runnotes import (
        _across_two_edges,
        _default_references,
        _particles_background,
        _reference_used_as_given,
        _references_at_particles_edge,
    )
    from .pipeline import PipelineOptions

    options = options or PipelineOptions()
    kw = dict(edge_window=options.edge_window, lcf_window=options.lcf_window)
    if not all(hasattr(q, "mean_norm") and hasattr(q, "pre_edge") for q in particles):
        return dict(mean_norm=None, e0_ev=float("nan"), references={}, **kw)
    shipped = not references
    measured = [q for q in particles if not _across_two_edges(q)]
    refs = _references_at_particles_edge(_default_references(energies) if shipped else references, measured)
    return dict(
        mean_norm=p.mean_norm,
        e0_ev=float(p.e0_ev),
        used=p.xanes_frames,
        references=refs,
        given={k: shipped or _reference_used_as_given(r, energies) for k, r in refs.items()},
        background=_particles_background(measured, energies),
        **kw,
    )


def _quality_record(result) -> dict:
    """The quality masks' thresholds and, per particle, the pixels kept (for run.json)."""
    opts = result.options
    rows = {}
    for p in result.particles:
        if p.quality_assessed:
            rows[str(p.particle)] = dict(mask_pixels=int(p.mask.sum()), kept_pixels=int(p.kept.sum()))
    return dict(
        edge_jump_threshold=float(getattr(opts, "edge_jump_threshold", 5.0)),
        residual_rule=(
            "normalisation residual <= median + 5 x 1.4826 MAD of the particle's pixels with an edge jump (the LCF "
            "residual does not choose the pixels)"
        ),
        particles=rows,
    )


@app.command()
def run(
    inputs: List[Path] = typer.Argument(
        ...,
        help="A TIFF stack, an HDF5 file (FXI or Data Exchange), .xrm/.txrm files or a folder of them, or single-frame TIFF files (one per energy) or a folder of them.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist unless --overwrite)."),
    energies: Optional[Path] = typer.Option(
        None,
        help="Energies file: one energy per frame, eV or keV. Needed for a TIFF stack (TIFF files one per energy: in their order; without it, from their names, e.g. scan_8333.5eV.tif); for HDF5 or Zeiss input it replaces the energies the files carry (a note says so).",
    ),
    flats: Optional[Path] = typer.Option(
        None, help="TIFF of flat-field (reference) images for TIFF input, or for an HDF5 file without its own."
    ),
    darks: Optional[Path] = typer.Option(None, help="TIFF of dark images, with --flats."),
    values: str = typer.Option(
        "auto",
        help="TIFF or HDF5 without flats: 'od' or 'transmission' (integer data need flats; 'auto' refuses floats that look like transmission).",
    ),
    min_radius: Optional[float] = typer.Option(
        None,
        help="Smallest particle radius to track (px); smaller objects are fines. Default 7 px, or 0.4 um when the files give the pixel size.",
    ),
    max_radius: Optional[float] = typer.Option(
        None, help="Largest particle radius to track (px). Default 60 px, or 8 um when the files give the pixel size."
    ),
    pixel_size: Optional[float] = typer.Option(
        None,
        help="Pixel size (um) where the files do not give it (a TIFF or HDF5 export), or to replace theirs: sets the default particle radii (0.4-8 um) and the report's scale bars.",
    ),
    reference_particle: Optional[int] = typer.Option(None, help="Particle the relative motion is measured against."),
    overwrite: bool = typer.Option(
        False, help="Replace an existing output folder (only once the new results are complete)."
    ),
    save_fused: bool = typer.Option(
        False, help="Also store the whole fused stack (as large as the input) in results.h5."
    ),
    detector: str = typer.Option(
        "learned", help="Particle detection: 'learned' (the Cycle-GAN generator) or 'classical' (threshold)."
    ),
    segmenter: str = typer.Option(
        "learned", help="ROI segmentation: 'learned' (the Dual U-Net) or 'classical' (soft threshold)."
    ),
    detector_model: Optional[Path] = typer.Option(
        None, help="A detector model folder (e.g. from 'train detector --raw'); default the shipped one."
    ),
    segmenter_model: Optional[Path] = typer.Option(None, help="A segmenter model folder; default the shipped one."),
    separate_matrix: bool = typer.Option(
        True,
        help="Follow each particle that drifts on its own (>= 1.5 px, or >= 0.75 px well above its noise or where its absorption edge does not tell its matrix apart) again with the matrix behind it subtracted (corrects the matrix's pull in faint pre-edge frames; costs a few seconds per scan).",
    ),
    unmix_matrix: bool = typer.Option(
        True,
        help="Follow a particle not separated from the matrix by its motion (it moves on its own by too little, or with the matrix) again with the matrix behind it subtracted, told apart from the particle by the particle's absorption edge (its contrast changes across the edge, the matrix's does not): where its own motion stands well out of its noise, or where the matrix so estimated stands out of its own noise and moves the positions beyond theirs. --no-unmix-matrix: such a particle is followed by its own shape only, or by the disc if it moves with the matrix.",
    ),
    subtract_matrix: bool = typer.Option(
        True,
        help="Subtract the matrix separated from behind a particle that drifts on its own from its frames before the XANES analysis (its texture would slide through the particle's pixels and enter their spectra); the aligned stack written stays as measured. --no-subtract-matrix: the chemistry of the frames as measured.",
    ),
    match_resolution: bool = typer.Option(
        True,
        help="Where the particles' edges blur or sharpen across the scan (a focus drifting with the energy; a run note says so), blur each frame's particle windows to the scan's coarsest resolution before the XANES analysis, so that the edge energies are not biased by it; the aligned stack written stays as measured. --no-match-resolution: the chemistry of the frames as measured (the note still says the edges blur).",
    ),
    device: str = typer.Option(
        "cpu",
        help="Where the learned detector and segmenter and the per-particle array work (resampling, smoothing, correlation) run: cpu (default), cuda or cuda:N (a GPU that PyTorch sees). Everything else runs on the CPU either way.",
    ),
    threads: int = typer.Option(
        1,
        min=1,
        help="Particles refined and finished this many at a time (threads). Results do not depend on it; more threads use more memory (about 60 MB per extra particle at 460^2) and paid nothing measurable on 2 cores.",
    ),
    smooth_tracks: bool = typer.Option(
        True,
        help="Smooth each particle's own motion across the energies (the motion all particles share stays frame by frame; how smooth, and where a particle jumps, is found from its data). --no-smooth-tracks: every frame's position as measured.",
    ),
    zingers: bool = typer.Option(
        True,
        help="Replace zingers (single pixels far brighter or darker than the 3 x 3 around them: cosmic rays on the detector) by the median around them, and the detector's defective pixels (dead, hot or stuck pixels, rows and columns: standing out at the same place in most frames) in every frame, and say how many in the notes. --no-zingers: the images as read.",
    ),
    dynamic_flats: bool = typer.Option(
        False,
        help="With one flat per frame, the smooth illumination pattern by which each exposure differed from its flat's (a flat-field ripple or the beam's profile that moved between the two exposures) is measured as its share of the flats' own patterns of change over the scan (dynamic flat-field correction) and, where found, taken out of each particle's frames before its chemistry, with a note giving its size (left in, a particle's local background cannot follow it under the particle and every E50 takes an error beyond its sigma: 0.5 eV on a stress scene); the positions are measured on the frames as read. --dynamic-flats: out of the frames themselves too (the positions then carry the pattern's estimate's noise: 0.01-0.05 px RMS on the stress scenes).",
    ),
    scale_model: str = typer.Option(
        "energy",
        help="The magnification all particles share: 'energy' (default), one straight line in the photon energy (a zone plate's focal length follows it); 'frame', one scale per frame (optics refocused during the scan: a run note says when the particles' own motions look like it).",
    ),
    rotation: bool = typer.Option(
        False,
        help="Fit a rotation of each frame in the motion all particles share (in frames with three particles or more; common_rotation_deg is NaN in the others, with a note), for scans whose image turns between energies; without it, a turn of the image is every particle's own (non-rigid) motion. Off by default: nothing turns the image in a TXM energy scan.",
    ),
    density_voucher: bool = typer.Option(
        True,
        help="For particles that move with the matrix, let the correlation of the particle's optical density vouch for a position where the centre of mass of its mask does not (mask outlines move across the absorption edge on real frames). --no-density-voucher: only the centre of mass vouches.",
    ),
    beside_neighbours: bool = typer.Option(
        True,
        help="Leave a neighbour that moves otherwise than a particle (a few pixels away, inside the window its position is correlated in) out of that correlation. --no-beside-neighbours: every particle's window as it is.",
    ),
    split_groups: bool = typer.Option(
        True,
        help="Track apart touching particles of alike size that the detector kept whole as one (a contact too long for its necks rule: the outline at half height has lobes of a particle's size joined at necks): each followed, outlined and analysed on its own, its notes saying so; a smaller particle touching a larger one (4 times smaller or more) tracked beside it. --no-split-groups: such a group stays one particle, its note saying it may be several, and the smaller touching particle is in no table.",
    ),
    mask_guard: bool = typer.Option(
        True,
        help="With the learned segmenter: outline a particle with the classical segmenter instead where the learned masks leave out more than 2 percent of what the particle's mean window shows (a lobe, an outline unlike those it was trained on); the particle's notes say so. --no-mask-guard: the learned masks for every particle.",
    ),
    rescue_small: bool = typer.Option(
        True,
        help="Measure objects the detector outlined too small to be particles again at their own contrast, and keep tracks of particles seen in 30-50 percent of the examined frames where nothing else was seen in their place: small, faint particles seen only after the edge or in low counts (scans of 3+ frames). --no-rescue-small: only what the detector outlines as particles, in half of the examined frames.",
    ),
    detect_every: int = typer.Option(
        12,
        help="Detect on every n-th frame (and the last; a short scan on 8 frames at least); in between, the common shift is chained by phase correlation and each particle is followed on its own from its key-frame positions, and every frame is still segmented and registered. 1 = detect in every frame: slower, and not more accurate (faint pre-edge and crowded frames give detections that link worse: on stress-all scenes 1 lost a particle the default tracks).",
    ),
    reference: Optional[List[str]] = typer.Option(
        None,
        help="Reference spectrum for the linear combination fit, as NAME=FILE (XDI or text: energy, mu; normalised here as the particles' spectra are where it is not already, with a note); repeat for each, each its own NAME. Default: the shipped NiO and LiNiO2 for Ni K-edge scans.",
    ),
    clusters: int = typer.Option(
        0, help="Phase mapping: cluster the normalised pixel spectra of all particles together into K phases (0: none)."
    ),
    cluster_method: Optional[str] = typer.Option(
        None, help="Phase mapping method (with --clusters): 'kmeans' (the default) or 'nmf' (started from k-means)."
    ),
    cluster_window: Optional[str] = typer.Option(
        None,
        help="Cluster on the energies LO,HI (eV) only, e.g. 8330,8370; default all frames usable in every particle.",
    ),
    energy_reference: Optional[Path] = typer.Option(
        None,
        help="Energy calibration: a foil or standard spectrum (XDI or text: energy, mu) measured on the scan's energy axis; its E0 (derivative maximum) is shifted to --reference-e0.",
    ),
    reference_e0: Optional[float] = typer.Option(
        None,
        help="Known E0 (eV) of --energy-reference; default 8333.0 (Ni foil, first inflection point).",
    ),
    reference_standard: Optional[Path] = typer.Option(
        None,
        help="With --energy-reference: the same material densely measured on a calibrated axis; the shift is then found by matching derivatives (robust on coarse TXM grids).",
    ),
    known_edge: Optional[str] = typer.Option(
        None,
        help="Energy calibration from a particle of known chemistry, PARTICLE=EV (EV: its material's E50 measured densely): its mean E50 is measured, the axis shifted to make it EV plus the normalisation's bias of its chemistry on the scan's energies (measured from the references; a run note says how much) and the XANES analysis redone.",
    ),
    edge_jump_threshold: float = typer.Option(
        5.0, help="Quality mask: trust a pixel whose edge step exceeds this many times its pre-edge noise."
    ),
    xanes_smoothing: float = typer.Option(
        1.0,
        "--xanes-smoothing",
        metavar="PX",
        help="Gaussian sigma (px) of the smoothing inside each particle's mask before the per-pixel XANES analysis "
        "(E50, whiteline, fractions and their sigma); 0: none. It trades noise for spatial resolution: a sharp "
        "chemistry front (a core-shell boundary) is blurred over about 2.4 x PX (the Gaussian's FWHM), and the "
        "per-pixel sigma is the noise of the smoothed map, not the bias of that blur. 0 gives the unblurred map "
        "with its larger noise.",
    ),
):
    """Register every isolated particle of an energy scan and map its chemistry.

    Example:

        xanestrack run scan.h5 --out results/

        xanestrack run stack.tif --energies energies.txt --flats flats.tif --out results/

        xanestrack run ../shared/data/real_txm/ssrl_6-2c_nca --out ssrl/

        xanestrack run scan.h5 --clusters 2 --energy-reference ni_foil.txt --out results/
    """
    given = [*inputs, *(p for p in (energies, flats, darks, detector_model, segmenter_model) if p is not None)]
    given += [p for p in (energy_reference, reference_standard) if p is not None]
    given += [Path(r.split("=", 1)[1]) for r in reference or [] if "=" in r]
    try:
        from .errors import XanestrackError, for_cli
        from .io import read_stack
        from .io.checks import release_freed_memory
        from .results import check_output_dir
        from .sizes import particle_radius_range

        if detect_every < 1:
            raise XanestrackError(f"--detect-every {detect_every}: give 1 (every frame) or more")
        if not 0 <= xanes_smoothing < float("inf"):  # before reading (NaN too)
            raise XanestrackError(
                f"--xanes-smoothing {xanes_smoothing}: give the smoothing's Gaussian sigma in px, 0 (none) or more"
            )
        if pixel_size is not None:
            _check_pixel_size(pixel_size)  # before reading
        chem = _chemistry_options(
            clusters,
            cluster_method,
            cluster_window,
            edge_jump_threshold,
            energy_reference,
            reference_standard,
            known_edge,
            reference_e0,
        )
        check_output_dir(out, overwrite=overwrite, inputs=given, kind="run")  # before reading: refuse early
        # one reference: refused before the reading (a NAME=FILE mistyped or not found is said after it, as before)
        if reference and len(reference) == 1 and "=" in reference[0] and Path(reference[0].split("=", 1)[1]).is_file():
            from .chemistry.runnotes import ONE_REFERENCE

            raise XanestrackError(ONE_REFERENCE.format(given=f"--reference {reference[0]} alone"))
        for name, value, model in (("detector", detector, detector_model), ("segmenter", segmenter, segmenter_model)):
            if value not in ("classical", "learned"):
                raise XanestrackError(f"--{name} takes 'classical' or 'learned', got {value!r}")
            if model is not None and value != "learned":  # it would be ignored
                raise XanestrackError(f"--{name}-model {model} is for --{name} learned, not {value}")
        _check_device(device)  # before reading
        from .io import check_run_memory

        # the whole run's need, not only the reading's: before PyTorch is imported beside the reading (passed at
        # ulimit -v 800 MB, the run failed loading PyTorch; at 1.0 GB, mid-read)
        _STATE["frames_bytes"] = check_run_memory(
            inputs if len(inputs) > 1 else inputs[0], learned_models="learned" in (detector, segmenter)
        )
        warmup = _ModelWarmup(detector, segmenter, segmenter_model, device)  # torch imported while reading
        c = _console()
        t = time.perf_counter()
        stack = read_stack(
            inputs if len(inputs) > 1 else inputs[0],
            energies=energies,
            flats=flats,
            darks=darks,
            values=values,
            zingers=zingers,
            dynamic_flats=dynamic_flats,
        )
        release_freed_memory()  # the raw counts and the reading's temporaries (glibc keeps them otherwise)
        read_s = time.perf_counter() - t
        c.print(
            f"read      {stack.od.shape[0]} frames of {stack.od.shape[1]} x {stack.od.shape[2]}, {stack.energies_ev[0]:.1f}-{stack.energies_ev[-1]:.1f} eV ({read_s:.2f} s)"
        )
        if pixel_size is not None:
            stack = _with_pixel_size(stack, pixel_size)
        for note in stack.metadata.get("notes", []):
            c.print(f"note      {for_cli(note)}", highlight=False, markup=False, soft_wrap=True)
        px = stack.pixel_size_um
        clipped = []  # a crop: its note recorded with the input's notes (run.json, the report)
        min_radius, max_radius, binning = particle_radius_range(
            stack, min_radius, max_radius, detector=detector, notes=clipped
        )
        for note in clipped:
            stack.metadata.setdefault("notes", []).append(note)
            c.print(f"note      {for_cli(note)}", highlight=False, markup=False, soft_wrap=True)
        c.print(
            f"particles radius {min_radius:.1f}-{max_radius:.1f} px"
            + (f" ({min_radius * px:.2f}-{max_radius * px:.2f} um)" if px else "")
            + f", {detector} detection binned {binning}x"
        )
        from .detect import DetectOptions  # imported by now in the warm-up thread
        from .match import MatchOptions
        from .pipeline import PipelineOptions

        opts = PipelineOptions(
            detect=DetectOptions(
                min_radius=min_radius, max_radius=max_radius, binning=binning, rescue_small=rescue_small
            ),
            match=MatchOptions()
            if rescue_small
            else MatchOptions(min_faint_fraction=MatchOptions().min_track_fraction),
            reference_particle=reference_particle,
            fuse="all" if save_fused else "ends",
            detect_every=detect_every,
            separate_matrix=separate_matrix,
            unmix_matrix=unmix_matrix,
            subtract_matrix=subtract_matrix,
            match_resolution=match_resolution,
            smooth_tracks=smooth_tracks,
            rotation=rotation,
            scale_model=scale_model,
            density_voucher=density_voucher,
            beside_neighbours=beside_neighbours,
            split_groups=split_groups,
            mask_guard=mask_guard,
            threads=threads,
            xanes_smoothing=float(xanes_smoothing),
            **chem["options"],
        )
        run_info = _input_description(stack, inputs, others=given[len(inputs) :])
        # read and chemistry options that are not the pipeline's (its `parameters`): in the command only before
        run_info.update(zingers=bool(zingers), dynamic_flats=bool(dynamic_flats), references=list(reference or []))
        if energy_reference is not None:
            stack, cal, cal_note = _calibrate_stack(
                stack, energy_reference, 8333.0 if reference_e0 is None else reference_e0, reference_standard
            )
            run_info["energy_calibration"] = cal
            if cal_note:
                stack.metadata.setdefault("notes", []).append(cal_note)
                c.print(f"note      {for_cli(cal_note)}", highlight=False, markup=False, soft_wrap=True)
            c.print(
                f"energy    shifted by {cal['shift_ev']:+.3f} eV ({cal['method']}, {energy_reference.name}: E0 {cal['measured_e0_ev']:.2f} -> {cal['known_e0_ev']:.2f} eV)",
                highlight=False,
            )
        refs = None
        if reference:  # on the calibrated axis (they were checked against the scan's as read)
            from .spectra import prepare_reference, read_spectrum

            refs = {}
            for item in reference:
                if "=" not in item:
                    raise XanestrackError(f"--reference takes NAME=FILE, got {item!r}")
                name, path = item.split("=", 1)
                if not name.strip():
                    raise XanestrackError(f"--reference {item}: give the reference a name (NAME=FILE)")
                if name in refs:  # the second replaced the first, and the fit was labelled with the wrong name
                    raise XanestrackError(f"--reference {name} given twice; give each reference its own name")
                try:
                    refs[name], note = prepare_reference(read_spectrum(path, name=name), stack.energies_ev)
                except (ValueError, OSError) as exc:
                    raise XanestrackError(f"--reference {item}: {exc}") from None
                if note:
                    stack.metadata.setdefault("notes", []).append(note)
                    c.print(f"note      {for_cli(note)}", highlight=False, markup=False, soft_wrap=True)
        # the notes of the calibration and of the references, made after run_info, are input notes too
        run_info["input_notes"] = [for_cli(n) for n in stack.metadata.get("notes", [])]
        if chem["known_edge"] is not None:
            ke = chem["known_edge"]
            if not stack.energies_ev[0] <= ke[1] <= stack.energies_ev[-1]:
                raise XanestrackError(
                    f"--known-edge {ke[0]}={ke[1]:g}: {ke[1]:g} eV is outside the scan's {stack.energies_ev[0]:.1f}-"
                    f"{stack.energies_ev[-1]:.1f} eV; give the particle's known edge energy (E50) in eV"
                )
        result = _run_and_write(
            stack,
            out,
            overwrite=overwrite,
            run_info=run_info,
            read_s=read_s,
            known_edge=chem["known_edge"],
            options=opts,
            save_fused=save_fused,
            references=refs,
            detector=detector,
            segmenter=segmenter,
            detector_model=detector_model,
            segmenter_model=segmenter_model,
            inputs=given,
            warmup=warmup,
        )
        _stage_summary(result)
        if not _STATE["quiet"]:
            from rich.console import Console

            Console().print(_particle_table(result))
        # the run notes that ask the user to act are printed too (all of them are in run.json and the report)
        from .pipeline import CONSOLE_NOTE_WORDS

        for note in result.notes:
            if any(w in note for w in CONSOLE_NOTE_WORDS):
                c.print(f"note      {note}")
        c.print(f"results in {out}/ (tracks.csv, results.h5, report.html, run.json)")
    except KeyboardInterrupt:
        # (Ctrl-C printed a blank line and ended with status 130)
        from rich.console import Console

        from .outdir import interrupted_message

        Console(stderr=True, soft_wrap=True).print(interrupted_message(out), highlight=False)
        _exit_if_threads_stuck(130)
        _end_interrupted_process(130)
        raise typer.Exit(130) from None
    except Exception as exc:
        _fail(exc, ", ".join(map(str, inputs)))


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder for stack.h5 (FXI layout) and truth.h5."),
    preset: str = typer.Option(
        "default",
        help="default, hard or rigid; or a stress case: stress-drift, -counts, -fines, -jitter, -magnification, -crowd, -all.",
    ),
    seed: int = typer.Option(0, help="Random seed."),
    n_particles: Optional[int] = typer.Option(None, help="Override the number of particles."),
    n_energies: Optional[int] = typer.Option(None, help="Override the number of energies."),
    size: Optional[int] = typer.Option(None, help="Override the frame size (square, px)."),
    counts: Optional[float] = typer.Option(None, help="Override the flat-field counts per pixel (noise level)."),
    max_radius: Optional[float] = typer.Option(None, help="Override the largest particle radius (px)."),
    patterns: Optional[str] = typer.Option(
        None,
        help="Chemistry pattern of each particle, comma-separated and repeated (default scene model): e.g. phase_NiO,phase_LiNiO2,core_shell for discrete phases.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing folder."),
):
    """Write a synthetic energy scan of a deforming electrode, with ground truth.

    Example:

        xanestrack synth synthetic/ --preset hard --seed 3
        xanestrack run synthetic/stack.h5 --out results/

        xanestrack synth phases/ --patterns phase_NiO,phase_LiNiO2,core_shell
        xanestrack run phases/stack.h5 --clusters 2 --out phases_out/
    """
    try:
        from .results import atomic_output_dir
        from .synth_stress import STRESS_CASES, make_scene
        from .truth_io import write_synthetic

        if seed < 0:
            raise ValueError(f"--seed must be 0 or more, got {seed}")
        kw = {}
        if n_particles is not None:
            kw["n_particles"] = n_particles
            groups = STRESS_CASES[preset].cluster_sizes if preset in STRESS_CASES else ()
            if sum(groups) > n_particles >= 0:
                # as many of the preset's groups of touching particles as the particles allow, smallest first
                kept = []
                for g in sorted(groups):
                    if sum(kept) + g <= n_particles:
                        kept.append(g)
                kw["cluster_sizes"] = tuple(kept)
                _console().print(
                    f"note: {len(kept)} of the {preset} preset's {len(groups)} groups of touching particles "
                    f"({', '.join(map(str, kept)) or 'none'} particles) fit in --n-particles {n_particles}"
                )
        if n_energies is not None:
            kw["n_energies"] = n_energies
        if size is not None:
            kw["shape"] = (size, size)
        if counts is not None:
            kw["counts"] = counts
        if max_radius is not None:
            from .synth import PRESETS

            lo = PRESETS.get(preset, PRESETS["default"]).radius_range[0]
            kw["radius_range"] = (min(lo, max_radius), max_radius)
        if patterns is not None:
            from .synth import PATTERNS, PHASE_PATTERNS

            names = [v.strip() for v in patterns.split(",") if v.strip()]
            bad = [v for v in names if v not in PATTERNS + PHASE_PATTERNS]
            if bad or not names:
                raise ValueError(
                    f"--patterns: unknown {bad or patterns!r}; choose from {', '.join(PATTERNS + PHASE_PATTERNS)}"
                )
            if preset in STRESS_CASES:
                raise ValueError(f"--patterns applies to the default scene model (default, hard, rigid), not {preset}")
            kw["patterns"] = names
        with atomic_output_dir(out, overwrite=overwrite, kind="synth") as tmp:  # checked before computing
            s = make_scene(preset, seed=seed, **kw)
            write_synthetic(s, tmp, preset=preset)
        _console().print(
            f"wrote {out}/stack.h5 ({s.counts.shape[0]} x {s.counts.shape[1]} x {s.counts.shape[2]}) and truth.h5, {len(s.truth.radii)} particles"
        )
    except KeyboardInterrupt:  # (it ended with status 130 and not a word)
        from .outdir import interrupted_message

        _interrupted(interrupted_message(out, what="scan"))
    except Exception as exc:
        _fail(exc)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Output folder."),
    preset: str = typer.Option("default", help="Synthetic preset: default, hard or rigid."),
    seed: int = typer.Option(1, help="Random seed of the synthetic scan."),
    detector: str = typer.Option(
        "learned", help="Particle detection: 'learned' (the Cycle-GAN generator) or 'classical'."
    ),
    segmenter: str = typer.Option("learned", help="ROI segmentation: 'learned' (the Dual U-Net) or 'classical'."),
    detect_every: int = typer.Option(
        12,
        help="Detect on every n-th frame (and the last); particles followed on their own in between. 1 = every frame (slower, not more accurate).",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
):
    """Make a synthetic scan with ground truth, run the pipeline, report its accuracy.

    Example:

        xanestrack demo --out demo_output --overwrite
    """
    try:
        from rich.console import Console
        from rich.table import Table

        from .evaluate import evaluate_result
        from .results import check_output_dir
        from .synth import params_dict
        from .synth_stress import make_scene

        check_output_dir(out, overwrite=overwrite, kind="run")  # before synthesising: refuse early
        c = _console()
        t = time.perf_counter()
        s = make_scene(preset, seed=seed)
        stack = s.stack(f"synthetic:{preset}:seed={seed}")
        c.print(
            f"synth     {preset} preset, seed {seed}: {stack.od.shape[0]} frames of {stack.od.shape[1]} x {stack.od.shape[2]}, {len(s.truth.radii)} particles ({time.perf_counter() - t:.2f} s)"
        )
        info = dict(
            command=" ".join(sys.argv),
            inputs=[f"synthetic preset {preset}"],
            synthetic=dict(preset=preset, seed=seed, params=params_dict(s.params)),
            energies_ev=list(map(float, s.energies_ev)),
        )
        from .pipeline import PipelineOptions

        result = _run_and_write(
            stack,
            out,
            overwrite=overwrite,
            run_info=info,
            detector=detector,
            segmenter=segmenter,
            options=PipelineOptions(detect_every=detect_every),
        )
        _stage_summary(result)
        table, summary = evaluate_result(result, s.truth)
        (Path(out) / "accuracy.csv").write_text(table.to_csv(index=False, float_format="%.4f"))
        from .results import add_to_marker

        add_to_marker(out, ["accuracy.csv"])
        tab = Table(title=f"accuracy against the ground truth ({preset}, seed {seed})")
        for col in (
            "particle",
            "radius px",
            "pattern",
            "frames measured",
            "registration RMS px",
            "worst px",
            "edge-energy RMS eV",
        ):
            tab.add_column(col, justify="right")
        for _, r in table.iterrows():
            if r["particle"] < 0:
                tab.add_row("missed", f"{r['radius']:.1f}", r["pattern"], "-", "-", "-", "-")
                continue
            tab.add_row(
                str(int(r["particle"])),
                f"{r['radius']:.1f}",
                r["pattern"],
                str(int(r["frames_measured"])),
                f"{r['rms_px']:.3f}",
                f"{r['worst_px']:.2f}",
                f"{r['edge_rms_ev']:.3f}",
            )
        con = Console()
        con.print(_particle_table(result))
        con.print(tab)
        con.print(
            f"found {summary['n_found']}/{summary['n_true']} particles ({summary['n_false']} false); "
            f"registration RMS max {summary['max_rms_px']:.3f} px, median {summary['median_rms_px']:.3f} px; "
            f"edge-energy RMS max {summary['max_edge_rms_ev']:.3f} eV"
        )
        con.print(f"results in {out}/ (report.html, tracks.csv, results.h5, run.json, accuracy.csv)")
    except Exception as exc:
        _fail(exc)


@app.command()
def bench(
    out: Path = typer.Option(Path("bench_output"), "--out", "-o", help="Output folder for tables and figures."),
    presets: Optional[List[str]] = typer.Option(
        None,
        "--preset",
        help="Synthetic presets (repeat); default: default, hard and rigid, unless --dataset is given.",
    ),
    seeds: Optional[List[int]] = typer.Option(
        None, "--seed", help="Seeds of the --preset scans (repeat); default 1 and 2. A --dataset is one scan as it is."
    ),
    methods: Optional[List[str]] = typer.Option(
        None,
        "--method",
        help="Methods to compare (repeat): 'xanestrack' (the pipeline's own positions, smoothed across the energies) and the installed aligners ('centre_of_mass': the paper's centre of mass of each frame's mask); default all.",
    ),
    dataset: Optional[List[Path]] = typer.Option(
        None, "--dataset", help="Also a folder with stack.h5 + truth.h5 (from 'xanestrack synth'); repeat."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
):
    """Compare our per-particle registration with global and per-particle baselines.

    Example:

        xanestrack bench --preset default --preset rigid --seed 1 --seed 2 --out bench/
    """
    try:
        from .align import available_aligners
        from .bench import PIPELINE_METHOD, run_benchmark, write_benchmark
        from .results import atomic_output_dir

        # the per-scan XANES warnings of many scans are not the bench's; the level is restored after (it stayed
        # lowered for the process: a later run in the same interpreter logged no XANES warning)
        xanes_log = logging.getLogger("xanestrack.xanes")
        old_level = xanes_log.level
        xanes_log.setLevel(logging.ERROR)
        known = [PIPELINE_METHOD, *available_aligners()]
        if methods:
            bad = [m for m in methods if m not in known]
            if bad:
                raise ValueError(f"unknown or unavailable aligner(s) {bad}; choose from {sorted(known)}")
        if seeds and dataset and not presets:
            raise ValueError("--seed draws the --preset scans; a --dataset folder is one scan, run as it is")
        seeds = seeds or [1, 2]
        if presets is None:
            presets = [] if dataset else ["default", "hard", "rigid"]
        with atomic_output_dir(out, overwrite=overwrite, inputs=dataset or (), kind="bench") as tmp:
            with _Progress(_STATE["quiet"]) as prog:
                table, results = run_benchmark(presets, seeds, methods=methods, progress=prog, datasets=dataset or ())
            md = write_benchmark(table, results, tmp)
        from rich.console import Console
        from rich.markdown import Markdown

        con = Console()
        if max(map(len, md.splitlines()), default=0) <= con.width:
            con.print(Markdown(md))
        else:  # Rich would cut the numbers of a table wider than the console (80 columns, or a pipe): the text as written
            con.print(md, markup=False, highlight=False, soft_wrap=True)
        _console().print(f"tables and figures in {out}/")
    except Exception as exc:
        _fail(exc)
    finally:
        if "xanes_log" in locals():
            xanes_log.setLevel(old_level)


@app.command()
def series(
    inputs: Optional[List[Path]] = typer.Argument(
        None,
        help="Scans in order: files/folders (any reader format), or one HDF5 file whose /img_xanes has a scan axis.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Series folder; an interrupted series in it is resumed."),
    synthetic: Optional[int] = typer.Option(
        None, help="Instead of inputs: a synthetic series of this many scans (with ground truth)."
    ),
    preset: str = typer.Option("default", help="Synthetic preset."),
    seed: int = typer.Option(0, help="Synthetic seed."),
    workers: Optional[int] = typer.Option(None, help="Start a local dask.distributed cluster with N worker processes."),
    scheduler: Optional[str] = typer.Option(
        None, help="Address of a running dask.distributed scheduler, or 'sync' to run one scan at a time."
    ),
    detector: str = typer.Option("learned", help="Particle detection: 'learned' or 'classical'."),
    segmenter: str = typer.Option("learned", help="ROI segmentation: 'learned' or 'classical'."),
    min_radius: Optional[float] = typer.Option(
        None,
        help="Smallest particle radius to track (px), as for 'run'. Default 7 px, or 0.4 um when the files give the pixel size.",
    ),
    max_radius: Optional[float] = typer.Option(
        None,
        help="Largest particle radius to track (px), as for 'run'. Default 60 px, or 8 um when the files give the pixel size.",
    ),
    device: str = typer.Option(
        "cpu",
        help="Where each process runs the learned detector and segmenter and the per-particle array work: cpu (default), cuda or cuda:N.",
    ),
):
    """Process an operando series of scans on Dask and follow every particle through it.

    Example:

        xanestrack series scan_*.h5 --out series/ --workers 2

        xanestrack series --synthetic 8 --out series_demo/
    """
    failed = []
    try:
        from .errors import XanestrackError, one_line
        from .parallel.series import evaluate_series, run_series, series_sources, synthetic_sources, write_series_report

        if synthetic and inputs:  # the inputs were ignored without a word
            raise ValueError("--synthetic N makes its own scans: give either the scans or --synthetic, not both")
        if synthetic:
            from .synth import make_synthetic_series

            try:  # a preset whose scans cannot be drawn fails here, before anything is written (each scan failed)
                make_synthetic_series(preset, n_scans=synthetic, seed=seed)
            except ValueError as exc:
                raise XanestrackError(
                    f"series --synthetic --preset {preset}: {one_line(exc)} (the series moves its stage between scans "
                    "as well); use --preset default or rigid"
                ) from None
            sources = synthetic_sources(synthetic, preset=preset, seed=seed)
        elif inputs:
            sources = series_sources(inputs)
        else:
            raise ValueError("give the scans, or --synthetic N")
        _check_device(device)  # before any scan is started
        _console().print(f"series    {len(sources)} scans -> {out}/")
        t = time.perf_counter()
        with _Progress(_STATE["quiet"], each=True) as prog:  # a bar, or a line per scan done in a batch log
            table = run_series(
                sources,
                out,
                scheduler=scheduler,
                workers=workers,
                progress=prog,
                detector=detector,
                segmenter=segmenter,
                min_radius=min_radius,
                max_radius=max_radius,
                device=device,
            )
        write_series_report(table, out)
        from .chemistry.runnotes import UNCALIBRATED_NOTE
        from .errors import for_cli
        from .pipeline import CONSOLE_NOTE_WORDS
        from .results import add_to_marker
        from .series import scan_notes, series_notes

        c = _console()
        for note in series_notes(table):
            c.print(f"note      {note}", highlight=False, markup=False, soft_wrap=True)
        per_scan = scan_notes(out)
        # the note that the fractions' axis was not calibrated is one for the series: printed once, for the first
        # scan, with how many say it (it was printed for every scan)
        uncalibrated = [name for name, notes in per_scan if any(n.startswith(UNCALIBRATED_NOTE) for n in notes)]
        for name, notes in per_scan:  # the scans' notes were only in their run.json
            for note in notes:
                if note.startswith(UNCALIBRATED_NOTE):
                    if name != uncalibrated[0]:
                        continue
                    if len(uncalibrated) > 1:
                        note = f"{note} (the same for {len(uncalibrated) - 1} more scans)"
                if any(w in note for w in CONSOLE_NOTE_WORDS):
                    c.print(f"note      {name}: {for_cli(note)}", highlight=False, markup=False, soft_wrap=True)
        failed = table.attrs.get("failed", [])
        scans_done = f"{len(sources) - len(failed)} of {len(sources)}" if failed else f"{len(sources)}"

        add_to_marker(out, ["series.csv", "series_report.html", "series.svg", "series_own_displacement.csv"])
        _console().print(
            f"done      {table['particle'].nunique() if len(table) else 0} particles through {scans_done} scans "
            f"({time.perf_counter() - t:.1f} s); series.csv, series_report.html"
        )
        if synthetic:
            from .synth import make_synthetic_series

            ev = evaluate_series(table, make_synthetic_series(preset, n_scans=synthetic, seed=seed).truth)
            ev["per_scan"].to_csv(Path(out) / "accuracy.csv", index=False, float_format="%.4f")
            from .results import add_to_marker

            add_to_marker(out, ["accuracy.csv"])
            _console().print(
                f"accuracy  identities kept: {ev['all_identities_kept']} ({ev['n_particles']} particles); "
                f"mean edge energy per scan: max |error| {ev['max_abs_e50_error_ev']:.3f} eV, RMS {ev['rms_e50_error_ev']:.3f} eV"
            )
    except KeyboardInterrupt:
        # (it ended with status 130 and not a word)
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"interrupted: the scans done are kept in {out}; run the same command again to resume", highlight=False
        )
        _end_interrupted_process(130)
        raise typer.Exit(130) from None
    except Exception as exc:
        _fail(exc, ", ".join(map(str, inputs or [])) or None)
    if failed:  # the others were processed, linked and reported; each refused scan named (exit status 2)
        from rich.console import Console
        from rich.markup import escape

        from .errors import for_cli

        err = Console(stderr=True, soft_wrap=True)
        for name, msg in failed:
            hint = (
                " (series takes no --values: run that scan with `xanestrack run`)" if "--values" in for_cli(msg) else ""
            )
            err.print(
                f"[bold red]error:[/] scan {escape(name)} not processed: {escape(for_cli(msg))}{escape(hint)}",
                highlight=False,
            )
        raise typer.Exit(2)


train_app = typer.Typer(no_args_is_help=True, help="Train the learned models on data the package generates.")
app.add_typer(train_app, name="train")


def _stress_fraction_option(model: str):
    """The ``--stress-fraction`` option of ``train segmenter`` and ``train detector``."""
    return typer.Option(
        0.0,
        min=0.0,
        max=1.0,
        help="Share of the generated scans drawn from the stress family with randomised knobs (0: synth only, "
        f"the shipped {model}'s recipe).",
    )


@contextlib.contextmanager
def _model_in_place(target: Path):
    """Train into a folder beside ``target`` (the package's shipped model), then move its files in: a training
    killed or failed on the way leaves the shipped model as it was (it was written in place)."""
    import os
    import shutil

    target = Path(target)
    tmp = target.parent / f".{target.name}.train-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "weights.pt"):  # the weights last
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _at_least_one(*options) -> None:
    """Refuse counts below 1 before any data is made (0 meant the default, -1 started a training)."""
    from .errors import XanestrackError

    for name, v in options:
        if v is not None and v < 1:
            raise XanestrackError(f"{name} {v}: give 1 or more")


@train_app.command("segmenter")
def train_segmenter_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Model folder (default: the package's shipped model folder)."
    ),
    quick: bool = typer.Option(False, help="Small, fast settings (minutes) for tests and CI."),
    epochs: Optional[int] = typer.Option(None, help="Override the number of epochs."),
    n_train: Optional[int] = typer.Option(None, help="Override the number of training ROIs."),
    init: Optional[Path] = typer.Option(
        None, help="Model folder to start from (fine-tuning, at a quarter of the learning rate)."
    ),
    stress_fraction: float = _stress_fraction_option("segmenter"),
    centre_jitter: float = typer.Option(
        0.0,
        min=0.0,
        max=0.5,
        help="Cut each training ROI up to this many particle radii off the particle's centre (uniform, per axis; "
        "0: the shipped recipe).",
    ),
    seed: int = typer.Option(0, help="Random seed (data and weights)."),
):
    """Train the Dual U-Net ROI segmenter on generated synthetic ROIs.

    Example:

        xanestrack train segmenter --quick --out my_model/
    """
    try:
        from dataclasses import replace

        from .models.segmenter import SegmenterConfig, default_model_dir, train_segmenter

        _at_least_one(("--epochs", epochs), ("--n-train", n_train))
        cfg = SegmenterConfig(seed=seed, stress_fraction=stress_fraction, centre_jitter=centre_jitter)
        if init:
            cfg = replace(cfg, lr=cfg.lr / 4)
        if quick:
            cfg = replace(cfg, n_train=160, n_val=48, epochs=1, width=8)
        if epochs is not None:
            cfg = replace(cfg, epochs=epochs)
        if n_train is not None:
            cfg = replace(cfg, n_train=n_train)
        target = out or default_model_dir()
        if out is not None:
            from .results import atomic_output_dir

            with atomic_output_dir(
                out, inputs=[init] if init else [], kind="model"
            ) as tmp:  # a folder that exists is refused; nothing half-written is left
                train_segmenter(tmp, config=cfg, init_dir=init, log=_console().print)
        else:
            with _model_in_place(target) as tmp:
                train_segmenter(tmp, config=cfg, init_dir=init, log=_console().print)
        _console().print(f"model written to {target}/ (config.json, weights.pt, card.md)")
    except Exception as exc:
        _fail(exc)


@train_app.command("detector")
def train_detector_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Model folder (default: the package's shipped model folder; required with --raw)."
    ),
    quick: bool = typer.Option(False, help="Small, fast settings (about a minute) for tests and CI."),
    raw: Optional[List[Path]] = typer.Option(
        None,
        help="Your own unlabelled scans (any readable input; repeat): fine-tune the shipped detector on them, unpaired.",
    ),
    init: Optional[Path] = typer.Option(
        None, help="Model folder to start from (default with --raw: the shipped detector)."
    ),
    iterations: Optional[int] = typer.Option(None, help="Override the number of iterations."),
    min_radius: Optional[float] = typer.Option(None, help="With --raw: smallest particle radius (px), as for 'run'."),
    max_radius: Optional[float] = typer.Option(
        None, help="With --raw: largest particle radius (px), as for 'run'; sets the binning."
    ),
    stress_fraction: float = _stress_fraction_option("detector"),
    cut_contacts: bool = typer.Option(
        False, help="Cut the contacts of touching objects out of the target images (touching particles apart)."
    ),
    seed: int = typer.Option(0, help="Random seed (data and weights)."),
):
    """Train the Cycle-GAN particle detector on generated synthetic frames (and your own, unlabelled).

    Example:

        xanestrack train detector --quick --out my_detector/

        xanestrack train detector --raw ../shared/data/real_txm/ssrl_6-2c_nca --out ssrl_detector/
        xanestrack run ../shared/data/real_txm/ssrl_6-2c_nca --detector-model ssrl_detector/ --out ssrl/
    """
    try:
        from dataclasses import replace

        from .models.detector import DetectorConfig, default_detector_dir, detector_binning, raw_frames, train_detector

        _at_least_one(("--iterations", iterations))
        cfg = DetectorConfig(seed=seed, stress_fraction=stress_fraction, cut_contacts=cut_contacts)
        frames = None
        if quick:
            cfg = replace(cfg, iterations=80, n_stacks=4, frames_per_stack=12, n_val_stacks=1)
        if raw:
            if out is None:
                raise ValueError("--raw needs --out: a model fine-tuned on your data is not written into the package")
            if Path(out).resolve() == default_detector_dir().resolve():
                raise ValueError("--raw: choose an --out outside the package's model folder")
            init = init or default_detector_dir()
            cfg = replace(cfg, iterations=40 if quick else 600, lr=1e-4)

            from .sizes import particle_radius_range

            def binning_for(stack):
                return detector_binning(particle_radius_range(stack, min_radius, max_radius).max_radius)

            frames = raw_frames(raw, binning_for=binning_for, log=_console().print)
        elif init:
            cfg = replace(cfg, lr=1e-4)  # fine-tuning on generated scans: half the learning rate
        if iterations is not None:
            cfg = replace(cfg, iterations=iterations)
        target = out or default_detector_dir()
        if out is not None:
            from .results import atomic_output_dir

            with atomic_output_dir(
                out, inputs=[*(raw or []), *([init] if init else [])], kind="model"
            ) as tmp:  # a folder that exists is refused
                res = train_detector(tmp, config=cfg, raw=frames, init_dir=init, log=_console().print)
        else:
            with _model_in_place(target) as tmp:
                res = train_detector(tmp, config=cfg, raw=frames, init_dir=init, log=_console().print)
        _console().print("validation F1 (synthetic): " + ", ".join(f"{k} {v:.3f}" for k, v in res["f1"].items()))
        _console().print(f"model written to {target}/ (config.json, weights.pt, card.md)")
    except Exception as exc:
        _fail(exc)


@app.command()
def report(folder: Path = typer.Argument(..., help="An output folder of 'xanestrack run' or 'demo'.")):
    """Rebuild report.html (and its figures) from an output folder.

    Example:

        xanestrack report results/
    """
    try:
        from .outdir import check_rewrite, report_files
        from .report import write_report
        from .results import add_to_marker, read_results, write_missing_tables

        check_rewrite(folder, report_files(folder))  # a report.html the user edited is not overwritten
        t0 = time.time()
        result = read_results(folder)
        write_report(folder, result=result)
        figures = [
            f.relative_to(folder) for f in Path(folder).glob("figures/*") if f.is_file() and f.stat().st_mtime >= t0 - 1
        ]
        # the report links the CSV copies: one deleted since the run is written again from results.h5
        tables = write_missing_tables(result, folder) if (Path(folder) / "results.h5").is_file() else []
        add_to_marker(folder, ["report.html", *figures, *tables])  # what the report wrote is ours to replace later
        _console().print(f"wrote {folder}/report.html" + (f" and, missing, {', '.join(tables)}" if tables else ""))
    except KeyboardInterrupt:  # (it ended with status 130 and not a word)
        _interrupted(f"interrupted: {folder}/report.html was not rewritten (figures may have been); run report again")
    except Exception as exc:
        if "unable to lock file" in str(exc):  # HDF5's lock: the file is fine, a rerun is not what it needs
            from .errors import XanestrackError

            exc = XanestrackError(
                f"{Path(folder) / 'results.h5'}: open in another program (HDF5 file lock held); close it there, "
                "or set HDF5_USE_FILE_LOCKING=FALSE, and run report again"
            )
        _fail(exc, folder)


def _terminated(signum, frame):
    """SIGTERM (a batch system's time limit, ``kill``) ends a command as Ctrl-C does: its temporary folder and its lock
    removed, what it left said. It ended silently, both left behind (the next run beside them cleaned them up)."""
    raise KeyboardInterrupt


def main():
    # the command owns the process: an interrupted run ends it at once (_end_interrupted_process)
    _STATE["process"] = True
    app()  # SIGTERM is handled in the app's callback (_term_as_ctrl_c), for app() called from Python as well


if __name__ == "__main__":
    main()
