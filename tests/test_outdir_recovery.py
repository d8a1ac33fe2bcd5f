"""Output folders after a kill and at the edges of the file system: a run killed between moving the previous
results aside and moving the new ones in loses nothing; names too long for the temporary folder, a report on a
results.h5 another program holds open, and write-protected folders as root are refused in one line."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from conftest import error_line as _error_line
from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.outdir import MARKER, atomic_output_dir, check_output_dir

runner = CliRunner()


def _no_reading(monkeypatch):
    import xanestrack.io

    def refuse(*a, **k):
        raise AssertionError("the stack was read before the output folder was checked")

    monkeypatch.setattr(xanestrack.io, "read_stack", refuse)


# ---- a kill between the two renames of --overwrite ------------------------------------------------

#: replaces ``out`` with ``overwrite`` and is killed (SIGKILL: power loss, the OOM killer) right after the previous
#: results were moved aside, before the new ones are moved in
_KILLED_SWAP = textwrap.dedent(
    """
    import os, signal, sys
    import xanestrack.outdir as od

    real = os.replace

    class KilledAfterMovingAside:
        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, a, b):
            real(a, b)
            if ".old-" in str(b):
                os.kill(os.getpid(), signal.SIGKILL)

    od.os = KilledAfterMovingAside()
    with od.atomic_output_dir(sys.argv[1], overwrite=True) as tmp:
        (tmp / "tracks.csv").write_text("new")
    """
)


def _killed_swap(out):
    with atomic_output_dir(out) as tmp:
        (tmp / "tracks.csv").write_text("previous")
    p = subprocess.run([sys.executable, "-c", _KILLED_SWAP, str(out)], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    hidden = sorted(q.name.split("-")[0] for q in out.parent.iterdir() if q.name.startswith(f".{out.name}."))
    assert not out.exists() and hidden == [f".{out.name}.lock", f".{out.name}.old", f".{out.name}.tmp"], hidden


def test_a_run_killed_between_its_two_renames_leaves_the_previous_results(tmp_path, caplog):
    """The previous results, moved aside as .res.old-HOST-PID, and the new ones, complete in .res.tmp-HOST-PID-X,
    were both deleted by the next run into any folder beside them: the user's results were lost."""
    out = tmp_path / "res"
    _killed_swap(out)
    with caplog.at_level(logging.WARNING, logger="xanestrack.outdir"):
        with atomic_output_dir(tmp_path / "other") as tmp:
            (tmp / "tracks.csv").write_text("other")
    assert (out / "tracks.csv").read_text() == "previous"
    assert json.loads((out / MARKER).read_text())["files"] == ["tracks.csv"]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["other", "res"]  # the killed run's own folder removed
    assert any(r.getMessage().startswith(f"restored {out}: the previous results") for r in caplog.records)


def test_after_such_a_kill_a_run_into_the_folder_itself_needs_overwrite(tmp_path):
    out = tmp_path / "res"
    _killed_swap(out)
    with pytest.raises(XanestrackError, match="exists and is not empty"):
        with atomic_output_dir(out) as tmp:
            (tmp / "tracks.csv").write_text("again")
    assert (out / "tracks.csv").read_text() == "previous"
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "tracks.csv").write_text("again")
    assert (out / "tracks.csv").read_text() == "again"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["res"]


# ---- names longer than the file system allows ----------------------------------------------------


def test_an_output_name_too_long_for_its_temporary_folder_is_refused_before_reading(tmp_path, monkeypatch):
    """A name of 240 bytes fits, `.NAME.tmp-HOST-PID-XXXXXXXX` does not: refused after the stack was read."""
    (tmp_path / "stack.h5").write_bytes(b"")
    _no_reading(monkeypatch)
    long = tmp_path / ("r" * 240)
    r = runner.invoke(app, ["--quiet", "run", str(tmp_path / "stack.h5"), "--out", str(long)])
    line = _error_line(r, "too long", "choose a shorter output folder name (--out)")
    assert len(line) < 300
    # a folder to be made above it with a name over the limit (Path.exists raised a raw OSError)
    with pytest.raises(XanestrackError, match="too long"):
        check_output_dir(tmp_path / ("d" * 300) / "res", overwrite=False)
    assert check_output_dir(tmp_path / ("r" * 150), overwrite=False) == tmp_path / ("r" * 150)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["stack.h5"]


# ---- report on a results.h5 open elsewhere --------------------------------------------------------


def test_report_on_a_results_file_another_program_holds_open_says_so(tmp_path, monkeypatch):
    """HDF5's file lock held by another program was put as an unreadable file: 'rerun xanestrack run'."""
    fcntl = pytest.importorskip("fcntl")
    import h5py

    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "tracks.csv").write_text("particle\n")
    h5py.File(tmp_path / "results.h5", "w").close()
    fd = os.open(tmp_path / "results.h5", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as HDF5 in another program writing it (HDFView, a notebook)
        r = runner.invoke(app, ["--quiet", "report", str(tmp_path)])
    finally:
        os.close(fd)
    line = _error_line(r, "results.h5: open in another program", "close it", "HDF5_USE_FILE_LOCKING=FALSE")
    assert "rerun" not in line


# ---- write-protected folders without --overwrite ------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_write_protected_folders_are_refused_without_overwrite_also_as_root(tmp_path, monkeypatch):
    """An empty output folder, or a parent, of mode 555 was written into as root (refused only with --overwrite)."""
    (tmp_path / "stack.h5").write_bytes(b"")
    _no_reading(monkeypatch)
    empty = tmp_path / "empty"
    parent = tmp_path / "parent"
    for d in (empty, parent):
        d.mkdir()
        d.chmod(0o555)
    try:
        for out, named in ((empty, empty), (parent / "res", parent), (parent / "a" / "b", parent)):
            r = runner.invoke(app, ["--quiet", "run", str(tmp_path / "stack.h5"), "--out", str(out)])
            _error_line(r, f"cannot write in {named} (")
        with pytest.raises(XanestrackError, match="cannot write in"):
            check_output_dir(empty, overwrite=True)
    finally:
        for d in (empty, parent):
            d.chmod(0o755)
    assert not any(empty.iterdir()) and not any(parent.iterdir())
    assert check_output_dir(empty, overwrite=False) == empty  # writable again: fine
