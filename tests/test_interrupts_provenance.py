"""Ctrl-C around the moment new results are put in place, an interrupted series rerun, and run.json's provenance."""

import datetime
import hashlib
import json
import os
import platform
import signal
import sys
from pathlib import Path

import pytest

from xanestrack import outdir
from xanestrack.outdir import MARKER, atomic_output_dir, check_output_dir, committed, interrupted_message


def _output(out: Path, text: str, **kw) -> None:
    with atomic_output_dir(out, **kw) as tmp:
        (tmp / "run.json").write_text(json.dumps(dict(version="x", text=text)))
        for name in ("tracks.csv", "detections.csv", "motion_summary.csv"):
            (tmp / name).write_text(text)
        (tmp / "figures").mkdir()
        for i in range(3):
            (tmp / "figures" / f"f{i}.csv").write_text(text)


def _text(out: Path) -> str:
    return json.loads((out / "run.json").read_text())["text"]


def _hidden(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# -- Ctrl-C once the new results are in place ------------------------------------------------------------------------


@pytest.fixture(params=["SIGINT", "SIGTERM"])
def interrupt(request):
    """The signal a user's Ctrl-C or a batch system's time limit sends, with the handler the command line has for
    it (SIGTERM ends a command as Ctrl-C does: :func:`xanestrack.cli._terminated`). Python's own Ctrl-C handler is
    set too: a shell's background job starts with SIGINT ignored (`make test &`), and a test failed there."""
    from xanestrack import cli

    sig = getattr(signal, request.param)
    before = signal.signal(sig, cli._terminated if sig == signal.SIGTERM else signal.default_int_handler)
    try:
        yield sig
    finally:
        signal.signal(sig, before)


def test_ctrl_c_after_the_new_results_are_in_place_says_so(tmp_path):
    """Ctrl-C while `run` printed its summary said "nothing was written ... a previous output there is as it was",
    the folder holding the new results."""
    out = tmp_path / "out"
    _output(out, "old")
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new", overwrite=True)
        raise KeyboardInterrupt  # while the command line prints the stage summary and the particle table
    assert _text(out) == "new" and committed(out)
    msg = interrupted_message(out)
    assert "nothing was written" not in msg and "as it was" not in msg
    assert msg.startswith(f"interrupted: the new results are complete in {out}") and "replaced" in msg
    assert _hidden(tmp_path) == []  # the previous output removed, nothing hidden left for the next run to delete
    # a first output (nothing replaced) says only that
    with pytest.raises(KeyboardInterrupt):
        _output(tmp_path / "first", "new")
        raise KeyboardInterrupt
    assert (
        interrupted_message(tmp_path / "first") == f"interrupted: the new results are complete in {tmp_path / 'first'}"
    )


def test_ctrl_c_before_the_results_are_in_place_says_nothing_was_written(tmp_path):
    out = tmp_path / "out"
    _output(out, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "run.json").write_text("{}")
            raise KeyboardInterrupt
    assert _text(out) == "old" and not committed(out)
    assert (
        interrupted_message(out) == f"interrupted: nothing was written to {out} (a previous output there is as it was)"
    )
    assert interrupted_message(out, what="scan").endswith("(a previous scan there is as it was)")
    # what an earlier run of this process put in place is forgotten once a new run into the folder starts (a run
    # interrupted while reading its scan, after the check before reading, wrote nothing)
    _output(out, "new", overwrite=True)
    assert committed(out)
    check_output_dir(out, overwrite=True)
    assert not committed(out) and "nothing was written" in interrupted_message(out)


def test_a_real_ctrl_c_at_the_rename_is_held_until_the_replaced_folder_is_gone(tmp_path, monkeypatch, interrupt):
    """SIGINT just after os.replace(tmp, out): the replaced results were left in a hidden .out.old-HOST-PID folder,
    half deleted or whole, which the next run removed as a leftover. SIGTERM was not held at all."""
    handler = signal.getsignal(interrupt)
    out = tmp_path / "out"
    _output(out, "old")
    real = os.replace

    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if Path(dst) == out.resolve():  # the new results are in place: Ctrl-C now
            signal.raise_signal(interrupt)

    monkeypatch.setattr(outdir.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new", overwrite=True)
    monkeypatch.undo()
    assert _text(out) == "new"
    assert _hidden(tmp_path) == []  # removed before the interrupt was let through
    assert "replaced by them" in interrupted_message(out)
    assert signal.getsignal(interrupt) is handler  # restored


def test_a_second_ctrl_c_while_the_replaced_folder_is_deleted_leaves_it_marked_for_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _output(out, "old")
    deleted = []
    real = Path.unlink

    def unlink(self, *a, **k):
        if ".old-" in str(self):
            deleted.append(self.name)
            if len(deleted) == 2:
                raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new", overwrite=True)
    monkeypatch.undo()
    assert _text(out) == "new"
    (left,) = [tmp_path / n for n in _hidden(tmp_path)]
    assert (left / MARKER).is_file() and MARKER not in deleted  # its marker goes last: still known as ours
    msg = interrupted_message(out)
    assert str(left) in msg and "removed by the next xanestrack run" in msg and "as it was" not in msg
    # the next run into that folder removes it (as a process that is gone left it)
    gone = left.with_name(left.name.rsplit("-", 1)[0] + "-99999999")
    left.rename(gone)
    _output(tmp_path / "other", "x")
    assert _hidden(tmp_path) == [] and _text(out) == "new"


def test_ctrl_c_between_the_two_renames_puts_the_previous_output_back(tmp_path, monkeypatch):
    """Outside the main thread a Ctrl-C is not held: interrupted between moving the previous output aside and
    moving the new one in, the previous one goes back (it was missing until the next run restored it)."""
    out = tmp_path / "out"
    _output(out, "old")
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == out.resolve() and ".tmp-" in str(src):  # the new results' rename, not the way back
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    monkeypatch.setattr(outdir.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new", overwrite=True)
    monkeypatch.undo()
    assert _text(out) == "old" and _hidden(tmp_path) == []
    assert "nothing was written" in interrupted_message(out)


@pytest.mark.parametrize("step", ["mkdir", "write"])
def test_an_interrupt_just_as_the_temporary_folder_or_lock_is_made_leaves_neither(
    tmp_path, monkeypatch, interrupt, step
):
    """A SIGTERM landing just as the run had made its temporary folder (before the clean-up that removes it was set
    up) left ``.NAME.tmp-HOST-PID-XXXXXXXX`` beside the output: once in a CI run of the suite, where the test sends
    it as soon as that folder appears. The lock file had the same gap (``os.write`` of its content). Both are made
    with interrupts held now, and the interrupt is let through where the clean-up is in place."""
    out = tmp_path / "out"
    real = getattr(os, step)
    fired = []

    def interrupted(*a, **k):
        r = real(*a, **k)
        if not fired:
            fired.append(a[0])
            signal.raise_signal(interrupt)  # lands as the call returns: its folder or file is made
        return r

    monkeypatch.setattr(outdir.os, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new")
    monkeypatch.undo()
    assert fired and list(tmp_path.iterdir()) == []
    assert "nothing was written" in interrupted_message(out)
    _output(out, "next")  # and the next run goes ahead
    assert _text(out) == "next" and _hidden(tmp_path) == []


def test_an_interrupt_as_the_output_s_parent_folders_are_made_leaves_none(tmp_path, monkeypatch, interrupt):
    out = tmp_path / "a" / "b" / "out"
    real = Path.mkdir
    fired = []

    def mkdir(self, *a, **k):
        r = real(self, *a, **k)
        if not fired and self == out.parent:
            fired.append(self)
            signal.raise_signal(interrupt)
        return r

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        _output(out, "new")
    monkeypatch.undo()
    assert fired and list(tmp_path.iterdir()) == []


# -- an interrupted series rerun -------------------------------------------------------------------------------------

SERIES_KW = dict(
    shape=(200, 200), n_particles=3, radius_range=(10.0, 14.0), stage_offset=8.0, deformation=3.0, n_energies=30
)


def test_an_interrupted_series_rerun_leaves_no_stale_series_table_and_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """A scan redone and Ctrl-C before the series files were written again: series.csv and series_report.html of
    the earlier run stayed, complete to the eye, beside the scan's new values."""
    from conftest import digest
    from xanestrack.parallel import series as ser
    from xanestrack.parallel.series import run_series, synthetic_sources, write_series_report

    kw = dict(scheduler="sync", detector="classical", segmenter="classical")
    src = synthetic_sources(2, seed=4, **SERIES_KW)
    out = tmp_path / "s"
    first = run_series(src, out, **kw)
    assert first.attrs["failed"] == [] and first["scan"].nunique() == 2
    write_series_report(first, out)
    files = ["series.csv", "series_report.html", "series.svg", "series_own_displacement.csv"]
    assert all((out / f).is_file() for f in files)
    fresh = digest(*(out / f for f in files))
    # scan 1 to be processed again (its summary gone, as for a changed input); Ctrl-C while it runs
    (out / "scans" / src[1].name / "summary.json").unlink()
    orig = ser.process_scan

    def interrupted(source, *a, **k):
        if source.index == 1:
            raise KeyboardInterrupt
        return orig(source, *a, **k)

    monkeypatch.setattr(ser, "process_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_series(src, out, **kw)
    assert [f for f in files if (out / f).exists()] == []  # nothing out of date that looks complete
    assert (out / "scans" / src[0].name / "summary.json").is_file()  # the scans done stay, to resume
    marker = json.loads((out / MARKER).read_text())
    assert not set(files) & set(marker["files"])
    monkeypatch.setattr(ser, "process_scan", orig)
    write_series_report(run_series(src, out, **kw), out)
    assert digest(*(out / f for f in files)) == fresh  # as the series done at once


def test_a_series_rerun_keeps_a_file_of_the_users_under_a_series_name(tmp_path):
    from xanestrack.outdir import remove_ours, write_marker

    (tmp_path / "series.csv").write_text("ours\n")
    write_marker(tmp_path, kind="series")
    (tmp_path / "accuracy.csv").write_text("the user's\n")  # not in the marker
    assert remove_ours(tmp_path, ["series.csv", "accuracy.csv", "series.svg"]) == ["series.csv"]
    assert (tmp_path / "accuracy.csv").read_text() == "the user's\n" and not (tmp_path / "series.csv").exists()


# -- run.json provenance ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_result():
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=3, n_energies=30, shape=(128, 128), n_particles=2, radius_range=(10, 14))
    return run_pipeline(Stack(s.optical_density(), s.energies_ev))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_json_records_when_and_with_what_the_results_were_made(small_result, tmp_path):
    """run.json had the version and the options only: no date, no library versions, no checksum of the shipped
    model weights or reference table, nothing to tell a result of another torch or other weights."""
    import numpy
    import scipy
    import skimage

    import xanestrack
    from xanestrack.results import write_tables

    pkg = Path(xanestrack.__file__).resolve().parent
    info = dict(detector="learned", segmenter="classical", detector_model="shipped", segmenter_model=None)
    write_tables(small_result, tmp_path, run_info=dict(info, references=[]))
    run = json.loads((tmp_path / "run.json").read_text())
    created = datetime.datetime.fromisoformat(run["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 120
    assert run["python"] == platform.python_version() and run["platform"] == platform.platform()
    libs = run["libraries"]
    assert libs["numpy"] == numpy.__version__ and libs["scipy"] == scipy.__version__
    assert libs["scikit-image"] == skimage.__version__
    assert ("torch" in libs) == ("torch" in sys.modules)
    assert run["models_sha256"] == {
        "detector": {n: _sha(pkg / "models" / "detector" / n) for n in ("weights.pt", "config.json")}
    }
    assert any(len(p.reference_names) for p in small_result.particles)  # the shipped Ni references were fitted
    assert run["references_sha256"] == {"ni_references.csv": _sha(pkg / "data" / "ni_references.csv")}
    assert not {"host", "hostname", "node"} & set(run)
    node = platform.node()
    if len(node) >= 4:
        assert node not in json.dumps(run)
    # the user's references, no learned model: no checksum of what was not used
    write_tables(small_result, tmp_path, run_info=dict(detector="classical", segmenter="classical", references=["a"]))
    run = json.loads((tmp_path / "run.json").read_text())
    assert "models_sha256" not in run and "references_sha256" not in run and "created" in run


def test_run_json_does_not_import_torch_for_its_versions(tmp_path):
    """torch is recorded where the run imported it (a learned model), never imported to be recorded."""
    import subprocess

    code = (
        "import sys, json, pathlib\n"
        "from xanestrack.pipeline import run_pipeline\n"
        "from xanestrack.stack import Stack\n"
        "from xanestrack.synth import make_synthetic_stack\n"
        "from xanestrack.results import write_tables\n"
        "s = make_synthetic_stack('default', seed=3, n_energies=12, shape=(96, 96), n_particles=1, radius_range=(10, 12))\n"
        "r = run_pipeline(Stack(s.optical_density(), s.energies_ev))\n"
        "assert 'torch' not in sys.modules, 'the classical pipeline imported torch'\n"
        "write_tables(r, pathlib.Path(sys.argv[1]), run_info={})\n"
        "print(json.dumps(['torch' in sys.modules, json.loads(pathlib.Path(sys.argv[1], 'run.json').read_text())['libraries']]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    imported, libs = json.loads(p.stdout.strip().splitlines()[-1])
    assert not imported and "torch" not in libs and "numpy" in libs
