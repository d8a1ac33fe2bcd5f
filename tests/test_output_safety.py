"""Nothing the user had is ever deleted, concurrent runs do not overwrite each other, folders left
by killed runs are cleaned, outputs get normal permissions, series resume by content (issue 11,
cases 1, 2, 3 and 7)."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import digest as _digest
from conftest import error_line as _error_line
from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.results import MARKER, TMP_MARKER, atomic_output_dir, output_lock

runner = CliRunner()


def _synth(folder, *extra):
    return runner.invoke(
        app,
        [
            "--quiet",
            "synth",
            str(folder),
            "--seed",
            "1",
            "--n-particles",
            "2",
            "--n-energies",
            "12",
            "--size",
            "140",
            "--max-radius",
            "14",
            *map(str, extra),
        ],
    )


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan") / "synthetic"
    assert _synth(d).exit_code == 0
    return d / "stack.h5"


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _no_pipeline(monkeypatch):
    import xanestrack.pipeline

    def refuse(*a, **k):
        raise AssertionError("the pipeline ran before the output folder was checked")

    monkeypatch.setattr(xanestrack.pipeline, "run_pipeline", refuse)


# ---- case 1: --overwrite never deletes what we did not write ------------------------------------


def test_overwrite_refuses_a_folder_holding_the_input(scan, tmp_path, monkeypatch):
    v = tmp_path / "v"
    v.mkdir()
    (v / "stack.h5").write_bytes(scan.read_bytes())
    (v / "notes.txt").write_text("my notes")
    before = _digest(v)
    _no_pipeline(monkeypatch)
    r = runner.invoke(app, ["--quiet", "run", str(v / "stack.h5"), "--out", str(v), "--overwrite"])
    _error_line(r, "holds the input", "stack.h5")
    assert _digest(v) == before


def test_overwrite_refuses_the_current_folder_and_foreign_folders(scan, tmp_path, monkeypatch):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "thesis.tex").write_text("\\documentclass{article}")
    before = _digest(d)
    _no_pipeline(monkeypatch)
    monkeypatch.chdir(d)
    _error_line(runner.invoke(app, ["--quiet", "run", str(scan), "--out", ".", "--overwrite"]), "current folder")
    monkeypatch.chdir(tmp_path)
    _error_line(
        runner.invoke(app, ["--quiet", "run", str(scan), "--out", "d", "--overwrite"]),
        "not a xanestrack output",
        MARKER,
    )
    _error_line(_synth(d, "--overwrite"), "not a xanestrack output")
    assert _digest(d) == before


def test_overwrite_refuses_our_output_once_the_user_added_a_file(tmp_path):
    out = tmp_path / "res"
    assert _synth(out).exit_code == 0
    info = json.loads((out / MARKER).read_text())
    assert info["tool"] == "xanestrack" and set(info["files"]) == {"stack.h5", "truth.h5", "truth_positions.csv"}
    (out / "notes.txt").write_text("mine")
    before = _digest(out)
    _error_line(_synth(out, "--overwrite", "--seed", "2"), "did not write", "notes.txt")
    assert _digest(out) == before
    (out / "notes.txt").unlink()
    assert _synth(out, "--overwrite", "--seed", "2").exit_code == 0  # ours only: replaced
    assert _digest(out) != before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _legacy_run_folder(folder, *, ours=True):
    """A run folder as releases before markers wrote it: run.json, results.h5 (with the
    ``xanestrack_version`` attribute every release wrote), the report and its figures."""
    import h5py

    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"version": "0.1.0"}))
    with h5py.File(folder / "results.h5", "w") as f:
        if ours:
            f.attrs["xanestrack_version"] = "0.1.0"
        f["x"] = [1, 2, 3]
    (folder / "tracks.csv").write_text("x")
    (folder / "report.html").write_text("<html></html>")
    (folder / "figures").mkdir()
    for name in ("overview.png", "particle_000.png", "particle_000_spectrum.csv", "resolution.svg"):
        (folder / "figures" / name).write_text("x")
    return folder


def test_overwrite_of_a_run_folder_from_before_markers(tmp_path):
    out = _legacy_run_folder(tmp_path / "old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "new.txt"])
    (tmp_path / "old2").mkdir()
    for name in ("run.json", "results.h5", "thesis.tex"):
        (tmp_path / "old2" / name).write_text(json.dumps({"version": "0.1.0"}))
    with pytest.raises(XanestrackError, match="not a xanestrack output"):  # results.h5 not ours (not even HDF5)
        with atomic_output_dir(tmp_path / "old2", overwrite=True):
            pass
    assert sorted(p.name for p in (tmp_path / "old2").iterdir()) == ["results.h5", "run.json", "thesis.tex"]


def test_overwrite_keeps_what_we_cannot_tell_we_wrote_in_a_folder_from_before_markers(tmp_path):
    # the user's own figure beside ours, a folder of notes: refused, both kept (they were deleted)
    out = _legacy_run_folder(tmp_path / "old")
    (out / "figures" / "paper_fig1.png").write_text("the user's")
    (out / "figures" / "mine").mkdir()
    (out / "figures" / "mine" / "notes.txt").write_text("the user's")
    before = _digest(out)
    with pytest.raises(XanestrackError, match="paper_fig1.png"):
        with atomic_output_dir(out, overwrite=True):
            pass
    assert _digest(out) == before
    # another tool's folder with a run.json that has a version and a results.h5: not ours
    other = _legacy_run_folder(tmp_path / "other", ours=False)
    before = _digest(other)
    with pytest.raises(XanestrackError, match="not a xanestrack output"):
        with atomic_output_dir(other, overwrite=True):
            pass
    assert _digest(other) == before


def test_overwrite_refuses_an_empty_folder_the_user_made_in_our_output(tmp_path):
    out = tmp_path / "res"
    assert _synth(out).exit_code == 0
    (out / "keep_me").mkdir()
    _error_line(_synth(out, "--overwrite", "--seed", "2"), "did not write", "keep_me/")
    assert (out / "keep_me").is_dir()


def test_run_overwrite_replaces_only_its_own_output(scan, tmp_path):
    out = tmp_path / "res"
    args = ["--quiet", "run", str(scan), "--out", str(out), "--detector", "classical", "--segmenter", "classical"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "run"
    assert runner.invoke(app, ["--quiet", "report", str(out)]).exit_code == 0  # what the report writes stays ours
    # and would be known as ours in a folder from before markers (the names the legacy rule accepts)
    from xanestrack.outdir import _LATER

    written = [p.relative_to(out).as_posix() for p in (out / "figures").iterdir()] + ["report.html"]
    assert [f for f in written if not _LATER.match(f)] == []
    (out / "figures" / "mine.png").write_bytes(b"a figure of the user's")
    _error_line(runner.invoke(app, args + ["--overwrite"]), "did not write", "figures/mine.png")
    (out / "figures" / "mine.png").unlink()
    before = _digest(scan)
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert _digest(scan) == before
    assert [p.name for p in tmp_path.iterdir()] == ["res"]


# ---- case 2: concurrent runs into one --out --------------------------------------------------------

_HOLD = """
import sys, time
from pathlib import Path
from xanestrack.results import atomic_output_dir
with atomic_output_dir(sys.argv[1]) as tmp:
    (tmp / "first.txt").write_text("first")
    Path(sys.argv[2]).write_text("ready")
    time.sleep(120)
"""


def _holder(tmp_path, out):
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), str(ready)])
    for _ in range(300):
        if ready.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("helper process did not start")


def test_second_run_into_the_same_new_folder_is_refused(scan, tmp_path, monkeypatch):
    out = tmp_path / "c"
    p = _holder(tmp_path, out)
    try:
        _no_pipeline(monkeypatch)
        import xanestrack.io

        read = []  # refused before the scan is read (it read the whole scan first, minutes on a large one)
        monkeypatch.setattr(xanestrack.io, "read_stack", lambda *a, **k: read.append(1) or 1 / 0)
        r = runner.invoke(app, ["--quiet", "run", str(scan), "--out", str(out)])
        _error_line(r, "another xanestrack run", f"process {p.pid}")
        assert not read
        _error_line(_synth(out), "another xanestrack run")
        with pytest.raises(XanestrackError, match="another xanestrack run"):
            from xanestrack.parallel.series import run_series, synthetic_sources

            run_series(synthetic_sources(1), out, scheduler="sync")
    finally:
        p.send_signal(signal.SIGKILL)  # a killed run: its lock dies with it
        p.wait()
    assert not out.exists()
    leftovers = [q.name for q in tmp_path.iterdir() if q.name.startswith(".c.")]
    assert any(".tmp-" in n for n in leftovers)
    # the next run into the same parent: lock free, the dead run's temporary folder removed
    with atomic_output_dir(out) as tmp:
        (tmp / "second.txt").write_text("second")
    assert sorted(q.name for q in out.iterdir()) == [MARKER, "second.txt"]
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".c.")]


def test_two_commands_racing_into_one_new_folder(tmp_path):
    """Both started at once: exactly one writes, the other is refused; no temporary folder left."""
    cmd = [
        sys.executable,
        "-m",
        "xanestrack.cli",
        "--quiet",
        "synth",
        str(tmp_path / "c"),
        "--n-particles",
        "2",
        "--n-energies",
        "12",
        "--size",
        "140",
        "--max-radius",
        "14",
    ]
    procs = [subprocess.Popen(cmd + ["--seed", str(k)], stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "another xanestrack run" in refused or "exists and is not empty" in refused
    winner = next(k for (rc, _), k in zip(results, (1, 2)) if rc == 0)
    import h5py

    with h5py.File(tmp_path / "c" / "truth.h5") as f:
        assert int(f.attrs["seed"]) == winner
    assert [q.name for q in tmp_path.iterdir()] == ["c"]


def test_an_empty_existing_folder_is_kept_and_filled(tmp_path, monkeypatch):
    d = tmp_path / "mine"
    d.mkdir()
    d.chmod(0o2770)
    ino = d.stat().st_ino
    monkeypatch.chdir(d)
    assert _synth(".").exit_code == 0  # the current, empty folder: filled in place
    assert d.stat().st_ino == ino and stat.S_IMODE(d.stat().st_mode) == 0o2770
    assert sorted(q.name for q in d.iterdir()) == sorted([MARKER, "stack.h5", "truth.h5", "truth_positions.csv"])
    assert Path.cwd() == d and [q.name for q in tmp_path.iterdir()] == ["mine"]


def test_lock_without_fcntl_takes_over_a_dead_process_lock(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on a system without fcntl
    out = tmp_path / "x"
    lock = tmp_path / ".x.lock"
    lock.write_text(json.dumps(dict(tool="xanestrack", pid=_dead_pid(), host=socket.gethostname())))
    with output_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(XanestrackError, match="another xanestrack run"):
            with output_lock(out):
                pass
    assert not lock.exists()


# ---- case 7: permissions, early checks, leftovers of killed runs -----------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750)])
def test_outputs_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert _synth(tmp_path / "s").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == mode


def test_unwritable_output_is_refused_before_the_pipeline(scan, tmp_path, monkeypatch):
    _no_pipeline(monkeypatch)
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["--quiet", "run", str(scan), "--out", str(tmp_path / "afile" / "res")])
    _error_line(r, "afile")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the access check see what an ordinary user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p).resolve() != ro.resolve())
    import xanestrack.io

    def no_reading(*a, **k):
        raise AssertionError("the stack was read before the output folder was checked")

    monkeypatch.setattr(xanestrack.io, "read_stack", no_reading)  # it was read (and demo synthesised) first
    try:
        _error_line(
            runner.invoke(app, ["--quiet", "run", str(scan), "--out", str(ro / "res")]), "cannot write in", "ro"
        )
        _error_line(runner.invoke(app, ["--quiet", "demo", "--out", str(ro / "d" / "demo")]), "cannot write in")
    finally:
        ro.chmod(0o755)


def test_synth_checks_the_folder_before_computing(tmp_path, monkeypatch):
    import xanestrack.synth

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.txt").write_text("x")

    def refuse(*a, **k):
        raise AssertionError("computed before checking the output folder")

    monkeypatch.setattr(xanestrack.synth, "make_synthetic_stack", refuse)
    _error_line(_synth(tmp_path / "s"), "exists and is not empty", "--overwrite")


def test_leftovers_of_killed_runs_are_removed_only_when_ours_and_dead(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    ours_tmp = tmp_path / f".res.tmp-{host}-{dead}-0a1b2c3d"
    ours_old = tmp_path / f".res.old-{host}-{dead}"
    alive = tmp_path / f".res.tmp-{host}-{os.getpid()}-0a1b2c3d"
    other_host = tmp_path / f".res.tmp-elsewhere-{dead}-0a1b2c3d"
    no_marker = tmp_path / f".res.tmp-{host}-{dead}-ffffffff"
    foreign_old = tmp_path / f".res.old-{host}-{dead}1"
    for d in (ours_tmp, ours_old, alive, other_host, no_marker, foreign_old):
        d.mkdir()
        (d / "part.csv").write_text("x")
    for d in (ours_tmp, alive, other_host):
        (d / TMP_MARKER).write_text(json.dumps(dict(tool="xanestrack", pid=dead, host=host)))
    for d in (ours_old, foreign_old):
        (d / MARKER).write_text(json.dumps(dict(tool="xanestrack", files=["part.csv"])))
    (foreign_old / "thesis.tex").write_text("mine")
    stale_lock = tmp_path / ".res.lock"
    stale_lock.write_text(json.dumps(dict(tool="xanestrack", pid=dead, host=host)))
    with atomic_output_dir(tmp_path / "new") as tmp:
        (tmp / "a").write_text("a")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"new", alive.name, other_host.name, no_marker.name, foreign_old.name}


# ---- case 3: series resume by content, paths normalised ------------------------------------------


def test_series_resume_compares_content_and_normalises_paths(tmp_path, monkeypatch):
    from xanestrack.parallel import series as ser

    for name, seed in (("a", 1), ("b", 2)):
        assert _synth(tmp_path / name, "--seed", seed).exit_code == 0
    a, b = tmp_path / "a" / "stack.h5", tmp_path / "b" / "stack.h5"
    (tmp_path / "a.h5").write_bytes(a.read_bytes())
    (tmp_path / "b.h5").write_bytes(b.read_bytes())
    # linking is not what is tested here
    monkeypatch.setattr(ser, "link_scans", lambda summary, **kw: summary.assign(particle=summary["scan_particle"]))
    monkeypatch.setattr(ser, "scan_image_prior", lambda *a, **kw: None, raising=False)
    loads = []
    orig = ser.ScanSource.load
    monkeypatch.setattr(ser.ScanSource, "load", lambda self: loads.append(self.name) or orig(self))
    out = tmp_path / "series"

    def run(paths):
        return ser.run_series(
            ser.series_sources(paths), out, scheduler="sync", detector="classical", segmenter="classical"
        )

    run([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert sorted(loads) == ["a", "b"]
    first_b = json.loads((out / "scans" / "b" / "summary.json").read_text())
    assert json.loads((out / MARKER).read_text())["kind"] == "series"
    # the same files given by relative paths: the same series, nothing redone
    monkeypatch.chdir(tmp_path)
    loads.clear()
    run([Path("a.h5"), Path("b.h5")])
    assert loads == []
    # b's content replaced (same name): b is processed again, a is not
    (tmp_path / "b.h5").write_bytes(a.read_bytes())
    run([Path("a.h5"), Path("b.h5")])
    assert loads == ["b"]
    new_b = json.loads((out / "scans" / "b" / "summary.json").read_text())
    assert new_b["input_sha256"] != first_b["input_sha256"]
    assert np.allclose(
        [p["y0"] for p in new_b["particles"]],
        [p["y0"] for p in json.loads((out / "scans" / "a" / "summary.json").read_text())["particles"]],
    )
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".")]


def test_files_added_after_completion_count_as_ours_only_when_recorded(tmp_path):
    from xanestrack.results import add_to_marker

    out = tmp_path / "o"
    with atomic_output_dir(out) as tmp:
        (tmp / "tracks.csv").write_text("x")
    (out / "accuracy.csv").write_text("demo's accuracy table")
    with pytest.raises(XanestrackError, match="accuracy.csv"):
        with atomic_output_dir(out, overwrite=True):
            pass
    add_to_marker(out, ["accuracy.csv"])  # what 'demo' does after writing it
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "tracks.csv").write_text("y")
    assert (out / "tracks.csv").read_text() == "y" and not (out / "accuracy.csv").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
def test_an_output_where_no_file_can_be_made_is_one_line(tmp_path):
    from xanestrack.errors import XanestrackError
    from xanestrack.outdir import atomic_output_dir

    # os.access says /proc is writable for root; the lock file cannot be made there (a raw errno before)
    with pytest.raises(XanestrackError, match="cannot write in /proc"):
        with atomic_output_dir("/proc/xanestrack-test-out"):
            pass


# ---- writing fails (the disk full, a file-size limit) --------------------------------------------


def test_a_write_that_fails_names_the_output_and_leaves_nothing(scan, tmp_path, monkeypatch):
    """The disk filling while the tables were written was put as the input's fault ("error: s/stack.h5: [Errno 28]
    No space left on device"); it names the output, and nothing is left of it."""
    import xanestrack.results

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xanestrack.results, "write_tables", full)
    out = tmp_path / "o"
    r = runner.invoke(
        app, ["--quiet", "run", str(scan), "--out", str(out), "--detector", "classical", "--segmenter", "classical"]
    )
    _error_line(r, f"cannot write the output {out}", "No space left on device")
    assert str(scan) not in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_results_h5_is_refused_beyond_the_file_size_limit_and_a_failed_one_removed(tmp_path, monkeypatch):
    """ulimit -f below what results.h5 takes: refused before writing. A write failing part-way (the disk filled
    meanwhile) left HDF5 handles that crashed the interpreter at exit (status 139 after the error): the partial
    file is removed, the error names it, and the command line knows to end the process at once."""
    import resource

    import xanestrack.results as xr
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, shape=(140, 140), n_particles=2, n_energies=12, radius_range=(8.0, 14.0)
    )
    result = run_pipeline(Stack(s.optical_density(), s.energies_ev), options=PipelineOptions(detect_every=4))
    monkeypatch.setattr(xr, "HDF5_LEFT_OPEN", False)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (4096, resource.RLIM_INFINITY))
    with pytest.raises(XanestrackError, match="files are limited to 0.0 MiB here \\(ulimit -f\\)"):
        xr.write_results_h5(result, tmp_path)
    assert not (tmp_path / "results.h5").exists()
    monkeypatch.undo()
    monkeypatch.setattr(xr, "HDF5_LEFT_OPEN", False)

    def part_way(f, *a):
        f.create_dataset("x", data=np.zeros(1000))
        raise OSError(27, "File too large")

    monkeypatch.setattr(xr, "_write_h5", part_way)
    with pytest.raises(OSError, match="results.h5: File too large"):
        xr.write_results_h5(result, tmp_path)
    assert not (tmp_path / "results.h5").exists()


# ---- what --overwrite and report leave alone ------------------------------------------------------

_RUN = ["--quiet", "run", "--detector", "classical", "--segmenter", "classical"]


def test_overwrite_never_replaces_a_synthetic_scan_or_a_hard_link_to_the_input(scan, tmp_path):
    """`demo --out SCAN_FOLDER --overwrite` deleted a synthetic scan (stack.h5, truth.h5: another run's input), and a
    hard link to the input in the output folder was not known as the input."""
    d = tmp_path / "scan"
    assert _synth(d).exit_code == 0
    before = _digest(d / "stack.h5")
    _error_line(runner.invoke(app, [*_RUN, str(scan), "--out", str(d), "--overwrite"]), "output of xanestrack synth")
    assert _digest(d / "stack.h5") == before
    out = tmp_path / "res"
    assert runner.invoke(app, [*_RUN, str(scan), "--out", str(out)]).exit_code == 0
    os.link(scan, tmp_path / "linked.h5")  # the input under another name, as it lies in the output
    os.link(scan, out / "stack.h5")
    info = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**info, "files": [*info["files"], "stack.h5"]}))  # as if we wrote it
    scan_before = _digest(scan)
    r = runner.invoke(app, [*_RUN, str(tmp_path / "linked.h5"), "--out", str(out), "--overwrite"])
    _error_line(r, "holds the input", "stack.h5 is the same file")
    assert (out / "stack.h5").is_file() and _digest(scan) == scan_before


def test_overwrite_and_report_leave_an_edited_report_and_a_protected_output(scan, tmp_path):
    """`run --overwrite` and `report` replaced a report.html the user had edited, `report` did so in a folder of copied
    results without our marker, and a write-protected output (chmod -R a-w) was replaced (as root, or where its
    parent is writable)."""
    import stat

    out = tmp_path / "res"
    args = [*_RUN, str(scan), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    page = out / "report.html"
    page.write_text(page.read_text() + "<!-- my notes -->")
    _error_line(
        runner.invoke(app, ["--quiet", "report", str(out)]), "report.html was changed since xanestrack wrote it"
    )
    _error_line(runner.invoke(app, args + ["--overwrite"]), "report.html changed since xanestrack wrote it")
    assert page.read_text().endswith("<!-- my notes -->")
    page.unlink()
    assert runner.invoke(app, ["--quiet", "report", str(out)]).exit_code == 0  # rebuilt, and ours again
    assert runner.invoke(app, ["--quiet", "report", str(out)]).exit_code == 0
    # a folder of copied results beside the user's own report
    paper = tmp_path / "paper"
    paper.mkdir()
    for name in ("results.h5", "run.json", "tracks.csv"):
        (paper / name).write_bytes((out / name).read_bytes())
    (paper / "report.html").write_text("my report")
    _error_line(
        runner.invoke(app, ["--quiet", "report", str(paper)]), "has no .xanestrack-output marker", "report.html"
    )
    assert (paper / "report.html").read_text() == "my report"
    # write-protected
    for p in [out, *out.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        _error_line(runner.invoke(app, args + ["--overwrite"]), "is write-protected")
    finally:
        for p in [out, *out.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0


def test_a_replaced_output_keeps_its_permissions(scan, tmp_path):
    """A shared output folder (mode 2770, a group's) came back 755 after --overwrite."""
    out = tmp_path / "res"
    args = [*_RUN, str(scan), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    out.chmod(0o2770)
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert out.stat().st_mode & 0o7777 == 0o2770


def test_a_report_that_cannot_be_written_leaves_the_old_one_and_no_temporary(scan, tmp_path, monkeypatch):
    """A failed `report` left `.report.html.tmp` beside the old report."""
    import pathlib

    out = tmp_path / "res"
    assert runner.invoke(app, [*_RUN, str(scan), "--out", str(out)]).exit_code == 0
    before = (out / "report.html").read_bytes()
    real = pathlib.Path.replace

    def full(self, target):
        if self.name == ".report.html.tmp":
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", full)
    r = runner.invoke(app, ["--quiet", "report", str(out)])
    assert r.exit_code == 2 and "No space left" in r.output
    assert (out / "report.html").read_bytes() == before and not (out / ".report.html.tmp").exists()


def test_ordinary_workflows_are_not_refused(scan, tmp_path, monkeypatch):
    """`report v1` (a relative path) recorded its figures under wrong names, and every later report and --overwrite
    was refused as 'changed since xanestrack wrote them'; a copy that does not keep modification times (cp -r, tar)
    was refused likewise; an output inside the input's folder could not be overwritten ('holds the input')."""
    import shutil

    monkeypatch.chdir(tmp_path)
    args = [*_RUN, str(scan), "--out", "v1"]
    assert runner.invoke(app, args).exit_code == 0
    for _ in range(2):
        assert runner.invoke(app, ["--quiet", "report", "v1"]).exit_code == 0
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    shutil.copytree("v1", "copy", copy_function=shutil.copy)  # contents, not times
    for p in Path("copy").rglob("*"):
        if p.is_file():
            os.utime(p, (1e9, 1e9))
    assert runner.invoke(app, ["--quiet", "report", "copy"]).exit_code == 0
    page = Path("copy/report.html")
    page.write_text(page.read_text() + "<!-- mine -->")
    _error_line(runner.invoke(app, ["--quiet", "report", "copy"]), "report.html was changed since xanestrack wrote it")
    # an output folder inside the folder given as input
    folder = tmp_path / "scanfolder"
    folder.mkdir()
    shutil.copy(scan, folder / "stack.h5")
    monkeypatch.chdir(folder)
    nested = [*_RUN, "stack.h5", "--out", "results"]
    assert runner.invoke(app, nested).exit_code == 0
    assert runner.invoke(app, nested + ["--overwrite"]).exit_code == 0
    from xanestrack.outdir import check_output_dir

    # the folder itself as the input (a folder of .xrm or TIFF files): its files include the output's own
    assert check_output_dir(folder / "results", overwrite=True, inputs=[folder], kind="run") == folder / "results"


def test_a_refused_synth_leaves_no_folder_it_made(tmp_path):
    """`synth scn/a/b` refused for its geometry left `scn/a` behind (the folders made for the output)."""
    r = runner.invoke(
        app, ["--quiet", "synth", str(tmp_path / "scn" / "a" / "b"), "--size", "200", "--n-particles", "12"]
    )
    _error_line(r, "cannot place 12 particles")
    assert not (tmp_path / "scn").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there stays
    r = runner.invoke(app, ["--quiet", "synth", str(tmp_path / "mine" / "b"), "--size", "200", "--n-particles", "12"])
    assert r.exit_code == 2 and (tmp_path / "mine").is_dir()
