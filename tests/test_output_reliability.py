"""Output-folder reliability (the shapes probe's findings 2, 6 and 7): `--overwrite` refuses a large results.h5 the
user edited in place, SIGTERM through ``app()`` cleans up as through ``main()``, and the refusal for lack of space
gives numbers that differ."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import error_line
from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.outdir import MARKER, write_marker

runner = CliRunner()
_RUN = ["--quiet", "run", "--detector", "classical", "--segmenter", "classical"]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The default synthetic scene, seed 1, reduced (2 particles, 12 energies, 140 x 140)."""
    d = tmp_path_factory.mktemp("scan") / "synthetic"
    args = ["--quiet", "synth", str(d), "--seed", "1", "--n-particles", "2", "--n-energies", "12", "--size", "140"]
    assert runner.invoke(app, [*args, "--max-radius", "14"]).exit_code == 0
    return d / "stack.h5"


def _large_output(folder):
    """An output folder of ours whose results.h5 is 17 MiB, above the 16 MiB up to which the marker recorded content
    before (a run with --save-fused wrote 20.6 MB)."""
    import h5py

    folder.mkdir()
    with h5py.File(folder / "results.h5", "w") as f:
        f.attrs["xanestrack_version"] = "0.1.0"
        f.create_dataset("fused", data=np.random.default_rng(0).random((17 << 20) // 8))
    (folder / "run.json").write_text(json.dumps(dict(version="0.1.0")))
    write_marker(folder, kind="run")
    return folder / "results.h5"


def test_overwrite_refuses_a_large_results_h5_edited_in_place(scan, tmp_path):
    """A results.h5 over 16 MiB edited in place with h5py r+ (same size, only its time changed) was replaced by
    --overwrite without a word: only files up to 16 MiB had their content in the marker."""
    import h5py

    out = tmp_path / "o"
    h5 = _large_output(out)
    size = h5.stat().st_size
    with h5py.File(h5, "r+") as f:  # the user's edit (a curated map, a corrected value)
        f["fused"][:10] = 1234.5
    assert h5.stat().st_size == size
    error_line(
        runner.invoke(app, [*_RUN, str(scan), "--out", str(out), "--overwrite"]),
        "results.h5 changed since xanestrack wrote it",
    )
    with h5py.File(h5) as f:
        assert f["fused"][0] == 1234.5


def test_overwrite_replaces_a_large_results_h5_copied_with_another_time(scan, tmp_path):
    """Control: the same file, its content as written and only its time changed (cp -r, tar, scp), is ours."""
    out = tmp_path / "o"
    h5 = _large_output(out)
    os.utime(h5, ns=(h5.stat().st_atime_ns, h5.stat().st_mtime_ns - 5_000_000_000))
    assert runner.invoke(app, [*_RUN, str(scan), "--out", str(out), "--overwrite"]).exit_code == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "run" and (out / "tracks.csv").is_file()


def test_overwrite_with_an_older_marker_refuses_a_changed_time_and_replaces_an_unchanged_run(scan, tmp_path):
    """A marker written before every file's content was recorded (results.h5 over 16 MiB: size and time only): a
    changed time may be an edit in place, so the folder is refused, saying what to do. Control: the unedited run
    (time as recorded) is replaced by --overwrite as before."""
    out = tmp_path / "o"
    args = [*_RUN, str(scan), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    info = json.loads((out / MARKER).read_text())
    info["stat"]["results.h5"] = info["stat"]["results.h5"][:2]  # as the older markers left it
    (out / MARKER).write_text(json.dumps(info))
    h5 = out / "results.h5"
    recorded = info["stat"]["results.h5"][1]
    os.utime(h5, ns=(recorded, recorded + 3_000_000_000))
    error_line(
        runner.invoke(app, [*args, "--overwrite"]),
        "results.h5 has another modification time than when xanestrack wrote it",
        "did not record its content",
        "move out what you want to keep, then delete the folder yourself",
    )
    assert h5.is_file() and (out / MARKER).is_file()
    os.utime(h5, ns=(recorded, recorded))  # unchanged: replaced as before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert len(json.loads((out / MARKER).read_text())["stat"]["results.h5"]) == 3  # now with its content


def test_sigterm_through_app_cleans_up_and_says_so(scan, tmp_path):
    """SIGTERM to a run started through ``xanestrack.cli.app()`` (from Python, or an entry point calling it) ended
    silently (status -15), its .NAME.lock and .NAME.tmp-... left beside the output: the handler was set in main()."""
    out = tmp_path / "o"
    p = subprocess.Popen(
        [sys.executable, "-c", "from xanestrack.cli import app; app()", "run", str(scan), "--out", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    for _ in range(600):  # until the run has made its temporary folder
        if list(tmp_path.glob(".o.tmp-*")) or p.poll() is not None:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130 and "interrupted: nothing was written to" in err, (p.returncode, err[-500:])
    assert not list(tmp_path.glob(".o.*")) and not out.exists()


def test_the_sigterm_handler_is_put_back_after_a_command(scan, tmp_path):
    """Control: a command run in-process through app() leaves the caller's SIGTERM handler as it was."""

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert runner.invoke(app, [*_RUN, str(scan), "--out", str(tmp_path / "o")]).exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "need, free, shown",
    [
        (int(13.4 * 2**20), int(12.9 * 2**20), "about 13.4 MiB and 12.9 MiB are free"),  # both round to 13
        (int(13.04 * 2**20), int(12.96 * 2**20), "about 13.04 MiB and 12.96 MiB are free"),
        (20 << 20, 13 << 20, "about 20 MiB and 13 MiB are free"),  # control: whole MiB where they differ
    ],
)
def test_the_space_refusal_gives_numbers_that_differ(tmp_path, monkeypatch, need, free, shown):
    """A 12.9 MiB tmpfs read "it takes about 13 MiB and 13 MiB are free there"."""
    import shutil

    import xanestrack.results as xr

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=free))
    with pytest.raises(XanestrackError, match=shown.replace(".", r"\.")):
        xr._check_room(tmp_path / "results.h5", need)
