import json
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from xanestrack.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / "synthetic"
    r = runner.invoke(
        app,
        [
            "synth",
            str(d),
            "--seed",
            "2",
            "--n-particles",
            "3",
            "--n-energies",
            "40",
            "--size",
            "180",
            "--max-radius",
            "20",
        ],
    )
    assert r.exit_code == 0, r.output
    return d


def test_run_writes_results_and_refuses_to_overwrite(synth_dir, tmp_path):
    out = tmp_path / "res"
    r = runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for f in ("tracks.csv", "results.h5", "run.json", "report.html"):
        assert (out / f).is_file()
    t = pd.read_csv(out / "tracks.csv")
    assert list(t.columns[:5]) == ["particle", "frame", "energy_ev", "y", "x"]
    assert t["particle"].nunique() == 3 and len(t) == 3 * 40
    info = json.loads((out / "run.json").read_text())
    assert info["version"] and str(synth_dir / "stack.h5") in info["input_checksums_sha256"]
    # every stage the user waits for is timed (read and report were printed only), and the read options kept
    assert {"read", "detect", "match", "report"} <= set(info["timings_s"]) and info["zingers"] is True
    html = (out / "report.html").read_text()
    assert runner.invoke(app, ["--quiet", "report", str(out)]).exit_code == 0
    assert (out / "report.html").read_text() == html  # the report's own time is not in its table
    # the table printed names each flag with its frames (it counted frames vouched for by the motion as flagged:
    # "22 frames" beside 21 of 40 vouched for)
    import dataclasses

    from rich.console import Console

    from xanestrack.cli import _particle_table
    from xanestrack.result import FRAME_FLAGS, flag_names
    from xanestrack.results import read_results

    res = read_results(out)
    flags = np.zeros(40, np.uint8)
    flags[:3] = FRAME_FLAGS["by_motion"] | FRAME_FLAGS["undetected"]
    flags[3:5] = FRAME_FLAGS["disagree"]
    res.particles[0] = dataclasses.replace(res.particles[0], frame_flags=flags)
    con = Console(record=True, width=220)
    con.print(_particle_table(res))
    text = con.export_text()
    assert "flags (frames)" in text and "undetected 3, by_motion 3, disagree 2" in text
    assert "38/40" in text  # vouched for: the frames vouched for by the motion count
    for p in res.particles[1:]:
        for name in {n for f in p.frame_flags for n in flag_names(f).split("|") if n}:
            assert f"{name} {sum(name in flag_names(f).split('|') for f in p.frame_flags)}" in text
    before = (out / "tracks.csv").read_bytes()
    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "tracks.csv").read_bytes() == before


def test_interrupted_run_leaves_previous_results(synth_dir, tmp_path, monkeypatch):
    from xanestrack import results

    out = tmp_path / "res"
    assert runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out)]).exit_code == 0
    before = (out / "tracks.csv").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    # results.h5 is written beside the report, in a second thread: its failure must still reach the user
    # and leave the previous results as they were (the tables were written to the new folder already)
    monkeypatch.setattr(results, "write_results_h5", boom)
    r = runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "disk full" in r.output
    assert (out / "tracks.csv").read_bytes() == before
    assert (out / "results.h5").is_file() and (out / "report.html").is_file()
    assert not list(tmp_path.glob(".res.tmp-*"))

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "write_results_h5", ctrl_c)  # Ctrl-C: it printed a blank line
    r = runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), "--overwrite"])
    assert r.exit_code == 130 and "interrupted: nothing was written to" in r.output
    assert (out / "tracks.csv").read_bytes() == before and not list(tmp_path.glob(".res.tmp-*"))


def test_a_gpu_that_is_not_there_is_said_in_one_line_before_reading(synth_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal cannot be seen here")
    out = tmp_path / "o"
    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(out), "--device", "cuda"])
    assert r.exit_code == 2, r.output
    assert "no CUDA device" in r.output and "leave out --device" in r.output and "Traceback" not in r.output
    assert "read " not in r.output and not out.exists()  # refused before the stack was read
    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(out), "--device", "gpu0"])
    assert r.exit_code == 2 and "'cpu' (the default), 'cuda' or 'cuda:N'" in r.output
    # series: refused before any scan is started or the series folder made
    r = runner.invoke(app, ["series", "--synthetic", "2", "--out", str(tmp_path / "s"), "--device", "cuda"])
    assert r.exit_code == 2 and "no CUDA device" in r.output and not (tmp_path / "s").exists()
    # the classical path uses no model, but its array work would run there: refused alike
    r = runner.invoke(
        app,
        ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), "--device", "cuda"]
        + ["--detector", "classical", "--segmenter", "classical"],
    )
    assert r.exit_code == 2 and "no CUDA device" in r.output and not out.exists()


def test_bad_input_is_one_readable_line(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5 at all")
    r = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "not a readable HDF5 file" in r.output and "Traceback" not in r.output


def test_help_is_fast_and_explains():
    r = subprocess.run([sys.executable, "-m", "xanestrack.cli", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Example" in r.stdout
    r = subprocess.run(
        [sys.executable, "-c", "import xanestrack, sys; print('torch' in sys.modules, 'matplotlib' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert r.stdout.strip() == "False False"


def test_quiet_prints_no_warnings():
    # the chemistry's counts of NaN pixels printed under --quiet (a fuzz round); errors still print
    code = (
        "import logging; from xanestrack.cli import _main; _main(debug=False, quiet={q}); "
        "log = logging.getLogger('xanestrack.xanes'); log.warning('W1'); log.error('E1')"
    )
    for quiet, expect in ((True, ["E1"]), (False, ["W1", "E1"])):
        r = subprocess.run([sys.executable, "-c", code.format(q=quiet)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert [w for w in ("W1", "E1") if w in r.stderr] == expect


def test_the_pipeline_imports_no_scipy_signal_or_stats():
    # importing them (scipy.signal pulls scipy.stats) cost every run 0.55 s on the 2-core machine, in
    # the thread that competes with reading the stack; the run needs neither
    code = "import xanestrack.pipeline, xanestrack.report, sys; print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_run_with_user_references(synth_dir, tmp_path):
    import h5py
    import numpy as np

    from xanestrack.spectra import ni_references

    refs = ni_references()
    for name, r in refs.items():
        np.savetxt(tmp_path / f"{name}.txt", np.c_[r.energies_ev / 1000, r.mu])  # keV on purpose
    out = tmp_path / "res"
    r = runner.invoke(
        app,
        [
            "--quiet",
            "run",
            str(synth_dir / "stack.h5"),
            "--out",
            str(out),
            "--reference",
            f"Ni2={tmp_path / 'NiO.txt'}",
            "--reference",
            f"Ni3={tmp_path / 'LiNiO2.txt'}",
        ],
    )
    assert r.exit_code == 0, r.output
    import hashlib

    sums = json.loads((out / "run.json").read_text())["input_checksums_sha256"]
    for name in ("NiO", "LiNiO2"):  # the references' files are inputs too (only the scan's were recorded)
        f = tmp_path / f"{name}.txt"
        assert sums[str(f)] == hashlib.sha256(f.read_bytes()).hexdigest()
    with h5py.File(out / "results.h5") as f:
        d = f["particles/000/fractions"]
        assert json.loads(d.attrs["references"]) == ["Ni2", "Ni3"]
        fr = d[()]
        ok = np.isfinite(fr[0])
        assert ok.any() and np.allclose(fr[0][ok] + fr[1][ok], 1.0, atol=1e-4)
    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(tmp_path / "x"), "--reference", "nofile"])
    assert r.exit_code == 2 and "NAME=FILE" in r.output

    def mean_fractions(folder):
        with h5py.File(folder / "results.h5") as f:
            out = []
            for p in f["particles"]:
                fr = f["particles"][p]["fractions"][()]
                ok = np.isfinite(fr).all(axis=0)
                out.append(fr[0][ok].mean())
            return np.array(out)

    # the same references as measured (ln(i0/itrans): an offset, a step of 2, a slope): normalised before the
    # fit, said in a note; they were fitted as given (every particle 0.01-0.03 of the first one)
    for name, ref in refs.items():
        raw = 2 * ref.mu + 0.5 + 1e-3 * (ref.energies_ev - 8300)
        np.savetxt(tmp_path / f"{name}_raw.txt", np.c_[ref.energies_ev, raw])
    args = ["--quiet", "run", str(synth_dir / "stack.h5"), "--reference", f"Ni2={tmp_path / 'NiO_raw.txt'}"]
    args += ["--reference", f"Ni3={tmp_path / 'LiNiO2_raw.txt'}"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "raw")])
    assert r.exit_code == 0, r.output
    notes = json.loads((tmp_path / "raw" / "run.json").read_text())["input_notes"]
    assert sum("reference Ni2 normalised" in n or "reference Ni3 normalised" in n for n in notes) == 2, notes
    given, raw = mean_fractions(out), mean_fractions(tmp_path / "raw")
    assert np.all(np.abs(given - raw) < 0.1), (given, raw)
    # the same name twice (the second replaced the first, fitted under its name); an edge outside the scan
    r = runner.invoke(app, args[:-1] + [f"Ni2={tmp_path / 'LiNiO2.txt'}", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--reference Ni2 given twice" in r.output, r.output
    ref = refs["NiO"]
    np.savetxt(tmp_path / "other_edge.txt", np.c_[ref.energies_ev - 630, ref.mu])  # a Co K edge's place
    r = runner.invoke(
        app,
        [
            "run",
            str(synth_dir / "stack.h5"),
            "--reference",
            f"Co={tmp_path / 'other_edge.txt'}",
            "--reference",  # two: one alone is refused before anything is read
            f"Ni3={tmp_path / 'LiNiO2.txt'}",
            "--out",
            str(tmp_path / "z"),
        ],
    )
    assert r.exit_code == 2 and "outside the scan's" in r.output, r.output


def test_inputs_are_never_modified(synth_dir, tmp_path):
    import hashlib

    f = synth_dir / "stack.h5"
    before = hashlib.sha256(f.read_bytes()).hexdigest()
    assert runner.invoke(app, ["--quiet", "run", str(f), "--out", str(tmp_path / "o")]).exit_code == 0
    assert hashlib.sha256(f.read_bytes()).hexdigest() == before


def test_save_fused_stores_the_whole_fused_stack(synth_dir, tmp_path):
    import h5py

    out = tmp_path / "f"
    assert (
        runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), "--save-fused"]).exit_code
        == 0
    )
    with h5py.File(out / "results.h5") as f:
        assert f["fused"].shape == (40, 180, 180)
        assert (f["fused"][0] == f["fused_first"][()]).all()


def test_train_detector_raw_fine_tunes_a_copy_never_the_package(synth_dir, tmp_path):
    from xanestrack.models.detector import DetectorConfig, default_detector_dir, train_detector

    base = tmp_path / "base"
    train_detector(
        base,
        config=DetectorConfig(
            width=4,
            n_blocks=1,
            disc_width=4,
            crop=48,
            batch=2,
            iterations=4,
            n_stacks=1,
            frames_per_stack=4,
            n_val_stacks=1,
        ),
        log=lambda *a: None,
    )
    # --raw without --out, or into the package folder: refused before any training
    r = runner.invoke(app, ["train", "detector", "--raw", str(synth_dir / "stack.h5")])
    assert r.exit_code != 0 and "--out" in r.output
    r = runner.invoke(
        app, ["train", "detector", "--raw", str(synth_dir / "stack.h5"), "--out", str(default_detector_dir())]
    )
    assert r.exit_code != 0 and "outside the package" in r.output
    out = tmp_path / "tuned"
    r = runner.invoke(
        app,
        [
            "train",
            "detector",
            "--raw",
            str(synth_dir / "stack.h5"),
            "--init",
            str(base),
            "--quick",
            "--iterations",
            "4",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "40 frames" in r.output  # the unlabelled scan was read
    assert "unlabelled user frames" in (out / "card.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["width"] == 4 and cfg["n_raw_frames"] == 40
    # the tuned model runs, and the starting model is untouched
    assert (base / "weights.pt").stat().st_size > 0
    r = runner.invoke(
        app,
        [
            "--quiet",
            "run",
            str(synth_dir / "stack.h5"),
            "--out",
            str(tmp_path / "res"),
            "--detector-model",
            str(out),
            "--segmenter",
            "classical",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "res" / "run.json").read_text())["detector_model"] == str(out)
    # an existing folder is never overwritten
    r = runner.invoke(
        app,
        [
            "train",
            "detector",
            "--raw",
            str(synth_dir / "stack.h5"),
            "--init",
            str(base),
            "--quick",
            "--iterations",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code != 0


def _run_read(synth_dir, out, *extra):
    """`xanestrack run` on the synthetic scan with ``extra`` options; the result read back."""
    from xanestrack.results import read_results

    r = runner.invoke(app, ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return read_results(out)


def test_no_separate_matrix_reaches_the_pipeline(synth_dir, tmp_path):
    res = _run_read(synth_dir, tmp_path / "nm", "--no-separate-matrix")
    assert res.options.separate_matrix is False
    assert "matrix" not in res.timings


def test_no_unmix_matrix_reaches_the_pipeline(synth_dir, tmp_path):
    res = _run_read(synth_dir, tmp_path / "nu", "--no-unmix-matrix")
    assert res.options.unmix_matrix is False
    assert not any("absorption edge" in " ".join(p.notes) for p in res.particles)


@pytest.fixture(scope="module")
def textured_synth_dir(tmp_path_factory):
    """A small scan whose matrix is textured enough to be separated (the default preset's is too faint)."""
    d = tmp_path_factory.mktemp("h") / "synthetic"
    args = ["synth", str(d), "--preset", "hard", "--seed", "2", "--n-particles", "3", "--n-energies", "40"]
    r = runner.invoke(app, [*args, "--size", "260", "--max-radius", "20"])
    assert r.exit_code == 0, r.output
    return d


def test_no_subtract_matrix_reaches_the_pipeline(textured_synth_dir, tmp_path):
    """The positions do not depend on it; only the chemistry of particles separated from the matrix does, and
    their notes say whether it was subtracted."""
    synth_dir = textured_synth_dir
    res = {
        name: _run_read(synth_dir, tmp_path / name, *extra)
        for name, extra in (("on", []), ("off", ["--no-subtract-matrix"]))
    }
    assert res["on"].options.subtract_matrix is True
    assert res["off"].options.subtract_matrix is False
    np.testing.assert_array_equal(res["on"].tracks[["y", "x"]].to_numpy(), res["off"].tracks[["y", "x"]].to_numpy())
    said = lambda p: any("matrix texture separated" in n for n in p.notes)  # noqa: E731
    assert not any(said(p) for p in res["off"].particles)
    on = [p for p in res["on"].particles if said(p)]
    assert on, "no particle of this scene was separated from the matrix: the test cannot tell the flag works"
    for p in on:
        q = next(q for q in res["off"].particles if q.particle == p.particle)
        assert not np.array_equal(p.edge_maps["e50"], q.edge_maps["e50"], equal_nan=True)


def test_no_smooth_tracks_reaches_the_pipeline(synth_dir, tmp_path):
    """Smoothed by default (a note says so); with --no-smooth-tracks every measured position is the edge estimate."""
    res = {
        name: _run_read(synth_dir, tmp_path / name, *extra)
        for name, extra in (("smooth", []), ("raw", ["--no-smooth-tracks"]))
    }
    assert res["smooth"].options.smooth_tracks is True
    assert res["raw"].options.smooth_tracks is False
    assert any("smoothed across the energies" in n for n in res["smooth"].notes)
    assert not any("smoothed across the energies" in n for n in res["raw"].notes)
    for name, same in (("raw", True), ("smooth", False)):
        t = res[name].tracks
        m = t["edge_y"].notna() & t["edge_x"].notna()
        d = np.hypot(t.loc[m, "y"] - t.loc[m, "edge_y"], t.loc[m, "x"] - t.loc[m, "edge_x"])
        assert bool(d.max() < 1e-9) == same, (name, d.max())


def test_no_density_voucher_reaches_the_pipeline(synth_dir, tmp_path):
    out = tmp_path / "com_only"
    res = _run_read(synth_dir, out, "--no-density-voucher")
    assert res.options.density_voucher is False
    assert res.tracks["density_agreement_px"].isna().all()
    assert "a third estimate may" not in (out / "report.html").read_text()


def test_no_beside_neighbours_reaches_the_pipeline(synth_dir, tmp_path):
    res = _run_read(synth_dir, tmp_path / "beside", "--no-beside-neighbours")
    assert res.options.beside_neighbours is False


def test_no_split_groups_reaches_the_pipeline(synth_dir, tmp_path):
    res = _run_read(synth_dir, tmp_path / "groups", "--no-split-groups")
    assert res.options.split_groups is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's"
)
def test_memory_freed_between_stages_goes_back_to_the_system():
    # 190 MiB of freed 96-kB arrays, the newest kept: glibc keeps the blocks below it for reuse,
    # counted in the resident size, until they are trimmed (what a stage leaves for the next)
    code = (
        "import os, numpy as np\n"
        "from xanestrack.io.checks import release_freed_memory\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
        "a = [np.ones(12_000) for _ in range(2000)]\n"
        "keep = a[-1]\n"
        "del a\n"
        "before = rss()\n"
        "print(release_freed_memory(), before - rss())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    done, freed = r.stdout.split()
    assert done == "True" and float(freed) > 100


def test_means_over_untrusted_pixels_are_said_to_be_so(synth_dir, tmp_path):
    """With a quality mask that keeps nothing, the means fell back to every core pixel without a word: the report
    still called them the mean of the trusted core pixels."""
    out = tmp_path / "res"
    args = ["--quiet", "run", str(synth_dir / "stack.h5"), "--out", str(out), "--edge-jump-threshold", "1e9"]
    r = runner.invoke(app, args + ["--detector", "classical", "--segmenter", "classical"])
    assert r.exit_code == 0, r.output
    notes = json.loads((out / "run.json").read_text())["notes"]
    assert any("no pixel of" in n and "none of them trusted" in n for n in notes), notes
    assert "none of them trusted" in (out / "report.html").read_text()


def test_synth_of_no_particle_writes_a_blank_scan_and_its_truth(tmp_path):
    """Refused with "Object dtype dtype('O') has no native HDF5 equivalent" (the truth's empty table)."""
    from xanestrack.truth_io import read_truth

    d = tmp_path / "blank"
    r = runner.invoke(app, ["--quiet", "synth", str(d), "--n-particles", "0", "--n-energies", "12", "--size", "96"])
    assert r.exit_code == 0, r.output
    truth = read_truth(d / "truth.h5")
    assert len(truth.positions) == 0 and len(truth.radii) == 0


@pytest.mark.parametrize(
    "args", [["segmenter", "--epochs", "0"], ["segmenter", "--n-train", "-5"], ["detector", "--iterations", "-1"]]
)
def test_train_counts_below_one_are_refused_before_anything_is_made(tmp_path, args):
    """0 meant the default and -1 started a training; --n-train -5 failed inside numpy."""
    out = tmp_path / "model"
    r = runner.invoke(app, ["--quiet", "train", *args, "--out", str(out)])
    assert r.exit_code == 2 and r.output.startswith(f"error: {args[1]} {args[2]}: give 1 or more"), r.output
    assert not out.exists()


def test_training_into_the_shipped_model_folder_replaces_it_only_when_done(tmp_path, monkeypatch):
    """Without --out a training wrote into the package's model folder as it went: killed or failed, the shipped
    model was left half-written."""
    from xanestrack.models import segmenter as seg_mod

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "weights.pt").write_bytes(b"old weights")
    (shipped / "config.json").write_text("{}")
    monkeypatch.setattr(seg_mod, "default_model_dir", lambda: shipped)

    def failing(folder, **kw):
        (folder / "weights.pt").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(seg_mod, "train_segmenter", failing)
    r = runner.invoke(app, ["--quiet", "train", "segmenter", "--quick"])
    assert r.exit_code != 0 and (shipped / "weights.pt").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]  # nothing left beside it

    def done(folder, **kw):
        (folder / "weights.pt").write_bytes(b"new weights")
        (folder / "card.md").write_text("card")

    monkeypatch.setattr(seg_mod, "train_segmenter", done)
    r = runner.invoke(app, ["--quiet", "train", "segmenter", "--quick"])
    assert r.exit_code == 0, r.output
    assert (shipped / "weights.pt").read_bytes() == b"new weights" and (shipped / "card.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]


def test_an_error_from_inside_numpy_is_called_unexpected_not_the_inputs_fault():
    # a scan of 5 frames met "operands could not be broadcast together" and the CLI printed it as the file's fault
    from xanestrack.cli import _message

    try:
        np.ones(5) & np.ones(7, bool)
    except (ValueError, TypeError) as exc:
        msg = _message(exc, "s5.tif")
    assert "unexpected" in msg and "report the traceback" in msg
    try:
        raise ValueError("energies must increase")
    except ValueError as exc:
        assert _message(exc, "s5.tif") == "s5.tif: energies must increase (--debug shows where)"


def test_the_pixel_size_can_be_given_where_the_files_lose_it(synth_dir, tmp_path):
    # an export (TIFF, HDF5 without it) loses the pixel size: the radius range fell back to 7-60 px and the
    # largest real particles (radius 133-167 px on the SSRL frames) were not found; no option gave it back
    import json

    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(tmp_path / "px"), "--pixel-size", "0.05"])
    assert r.exit_code == 0, r.output
    # the radii from the pixel size: 0.4-8 um, the largest clipped to what 180 x 180 frames hold whole (89.5 px)
    assert "radius 8.0-89.5 px (0.40-4.4" in r.output
    run = json.loads((tmp_path / "px" / "run.json").read_text())
    assert run["pixel_size_um"] == 0.05
    assert " px of 0.05 \u00b5m" in (tmp_path / "px" / "report.html").read_text(encoding="utf-8")  # scale bars
    # refused before anything is read or written
    r = runner.invoke(app, ["run", str(synth_dir / "stack.h5"), "--out", str(tmp_path / "bad"), "--pixel-size", "0"])
    assert r.exit_code == 2 and "--pixel-size 0" in r.output and not (tmp_path / "bad").exists()


def test_an_interrupted_run_whose_warm_up_thread_is_stuck_ends_at_once(monkeypatch):
    """Ctrl-C inside PyTorch's import left the warm-up thread (not a daemon) waiting on the import lock for ever:
    "interrupted" was printed and the process never ended. A thread of ours still running is not waited for."""
    import threading

    import xanestrack.cli as cli

    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="xanestrack-model-warmup", daemon=False)
    t.start()
    try:
        cli._exit_if_threads_stuck(130, wait_s=0.2)
        assert exits == [130]
    finally:
        release.set()
        t.join()
    cli._exit_if_threads_stuck(130, wait_s=0.2)  # nothing stuck: the process ends as usual
    assert exits == [130]


def test_synth_and_report_interrupted_say_what_they_left(tmp_path, monkeypatch):
    """Both ended with status 130 and not a word."""
    import xanestrack.results
    import xanestrack.synth_stress

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(xanestrack.synth_stress, "make_scene", ctrl_c)
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "s")])
    assert r.exit_code == 130 and "interrupted: nothing was written to" in r.output
    assert not (tmp_path / "s").exists()
    monkeypatch.setattr(xanestrack.results, "read_results", ctrl_c)
    (tmp_path / "o").mkdir()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "o")])
    assert r.exit_code == 130 and "report.html was not rewritten" in r.output


def test_known_edge_refuses_a_particle_measured_in_a_few_core_pixels():
    """--known-edge took the mean of any core pixels with an E50: an entering particle's 18 of 2484 (33 eV high)."""
    from types import SimpleNamespace

    from xanestrack.cli import _known_edge_calibration
    from xanestrack.errors import XanestrackError

    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    e50 = np.full(mask.shape, np.nan)
    e50[10:13, 10:13] = 8374.0  # 9 of 676 core pixels
    p = SimpleNamespace(particle=3, mask=mask, kept=mask, edge_maps={"e50": e50})
    hook, _ = _known_edge_calibration(3, 8340.0)
    with pytest.raises(XanestrackError, match="edge energy in only 9 of its 676 core pixels"):
        hook([p], np.linspace(8300, 8400, 50))
    e50[mask] = 8341.0  # every core pixel: calibrated (-1 eV)
    assert np.allclose(hook([p], np.linspace(8300, 8400, 50)), np.linspace(8300, 8400, 50) - 1.0)


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """A batch job's time limit (SIGTERM) ended a run silently, its temporary folder and lock left behind."""
    import signal
    import time

    s = tmp_path / "s"
    assert (
        CliRunner()
        .invoke(
            app,
            ["--quiet", "synth", str(s), "--seed", "2", "--size", "200", "--n-particles", "3", "--max-radius", "20"],
        )
        .exit_code
        == 0
    )
    out = tmp_path / "o"
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from xanestrack.cli import main; main()",
            "run",
            str(s / "stack.h5"),
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for _ in range(600):  # until the run has made its temporary folder
        if list(tmp_path.glob(".o.tmp-*")) or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130 and "interrupted" in err, (p.returncode, err[-500:])
    assert not list(tmp_path.glob(".o.*")) and not out.exists()
