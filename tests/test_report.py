"""The report of a run renders in headless Chromium with every image loaded."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xanestrack.cli import app

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "synth",
            str(root / "s"),
            "--seed",
            "3",
            "--n-particles",
            "3",
            "--n-energies",
            "40",
            "--size",
            "200",
            "--max-radius",
            "20",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--quiet", "run", str(root / "s" / "stack.h5"), "--out", str(root / "out")])
    assert r.exit_code == 0, r.output
    return root / "out"


def test_report_is_self_contained_with_figures_and_data(report_dir):
    html = (report_dir / "report.html").read_text()
    assert "<img" in html and 'src="http' not in html and "<script" not in html
    # overview, chemistry, motion (SVG) + per particle its panels (PNG) and its spectrum (SVG)
    assert html.count("data:image/svg+xml;base64,") >= 3 + 3 and html.count("data:image/png;base64,") >= 3
    figs = report_dir / "figures"
    for name in (
        "overview.svg",
        "overview.png",
        "overview.csv",
        "chemistry.svg",
        "chemistry.png",
        "chemistry.csv",
        "motion.svg",
        "motion.csv",
        "common_motion.csv",
        "particle_000.png",
        "particle_000_spectrum.svg",
        "particle_000_spectrum.csv",
        "particle_000_edge_e50.csv",
    ):
        assert (figs / name).is_file(), name
    # the summary names the particle that moved most
    assert "moved most" in html
    # how positions are vouched for, the density correlation included (on by default)
    assert "a third estimate may" in html and "by density" in html


def test_each_particles_mean_edge_energy_is_the_one_of_the_tables(report_dir):
    """The particle's line gave the whole map's mean, the figures and series.csv the trusted core's: up to 0.2 eV
    apart in one report."""
    import re

    from xanestrack.result import particle_summary
    from xanestrack.results import read_results

    summ = particle_summary(read_results(report_dir)).set_index("particle")
    html = (report_dir / "report.html").read_text()
    said = [float(v) for v in re.findall(r"mean edge energy ([0-9.]+) eV \(spread", html)]
    expected = [round(v, 2) for v in summ["mean_e50_ev"] if v == v]
    assert said and said == expected, (said, expected)


def test_report_rebuild_command_gives_the_same_file(report_dir):
    """`report DIR` rebuilds from the folder what `run` wrote from memory, byte for byte."""
    from conftest import digest

    before = digest(report_dir / "report.html", report_dir / "figures")
    mtime = (report_dir / "report.html").stat().st_mtime_ns
    r = CliRunner().invoke(app, ["report", str(report_dir)])
    assert r.exit_code == 0, r.output
    assert (report_dir / "report.html").stat().st_mtime_ns >= mtime
    assert digest(report_dir / "report.html", report_dir / "figures") == before


def test_report_writes_again_the_table_copies_deleted_since_the_run(report_dir, tmp_path):
    """The report links tracks.csv and motion_summary.csv: deleted, `report` wrote report.html with dead links and
    said nothing. They are written again from results.h5, the same bytes; a copy still there is left as it is."""
    folder = tmp_path / "out"
    shutil.copytree(report_dir, folder)
    kept = {n: (folder / n).read_bytes() for n in ("tracks.csv", "motion_summary.csv")}
    (folder / "tracks.csv").unlink()
    (folder / "motion_summary.csv").unlink()
    (folder / "detections.csv").write_text("particle\nmine\n")  # the user's own edit stays
    r = CliRunner().invoke(app, ["report", str(folder)])
    assert r.exit_code == 0, r.output
    assert "tracks.csv" in r.output and "motion_summary.csv" in r.output
    for n, b in kept.items():
        assert (folder / n).read_bytes() == b, n
    assert (folder / "detections.csv").read_text() == "particle\nmine\n"
    marker = json.loads((folder / ".xanestrack-output").read_text())
    assert {"tracks.csv", "motion_summary.csv"} <= set(marker["files"])


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    page = report_dir / "report.html"
    # a probe page loads the report in an iframe-free way: we append a script that
    # checks every image and prints the result into the DOM, then dump the DOM
    probe = tmp_path / "probe.html"
    html = page.read_text()
    check = (
        "<script>window.addEventListener('load', () => {"
        "const imgs=[...document.images];"
        "const bad=imgs.filter(i=>!(i.complete && i.naturalWidth>0)).length;"
        "document.body.setAttribute('data-check', JSON.stringify({n: imgs.length, bad: bad}));});</script>"
    )
    probe.write_text(html.replace("</body>", check + "</body>"))
    user_dir = tmp_path / "profile"
    cmd = [
        exe,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={user_dir}",
        "--virtual-time-budget=5000",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        probe.as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    import re

    m = re.search(r"data-check=\"([^\"]+)\"", r.stdout)
    assert m, "the load check did not run"
    res = json.loads(m.group(1).replace("&quot;", '"'))
    assert res["n"] >= 7 and res["bad"] == 0, res
    console_errors = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)]
    assert not console_errors, console_errors
    shot = report_dir / "figures" / "report_screenshot.png"
    r2 = subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_dir}2",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r2.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
    Path(tmp_path / "screenshot_path.txt").write_text(str(shot))


def test_a_figure_that_fails_ends_the_report_and_leaves_no_writer_running(report_dir, tmp_path, monkeypatch):
    """A figure function that raises: the report fails with that error, report.html is left as it was, and the
    threads that write the figures' files are gone (none left writing into the folder)."""
    import threading

    from xanestrack import report

    folder = tmp_path / "run"
    shutil.copytree(report_dir, folder)
    html_before = (folder / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "spectrum_figure", broken)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="figure failed"):
        report.write_report(folder)
    left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("ThreadPoolExecutor")]
    assert not left
    assert (folder / "report.html").read_bytes() == html_before


def test_a_scan_from_high_to_low_energy_gives_the_upward_scans_tracks_and_says_so(report_dir, tmp_path):
    """The fixture's scan written last energy first: the same tracks, and run.json and the report
    say how the frames are numbered."""
    import h5py

    src = report_dir.parent / "s" / "stack.h5"
    down = tmp_path / "down.h5"
    with h5py.File(src, "r") as f, h5py.File(down, "w") as g:
        for k in f:
            d = f[k][()]
            g.create_dataset(k, data=d[::-1] if k in ("X_eng", "img_xanes", "img_bkg") and len(d) > 1 else d)
    r = CliRunner().invoke(app, ["--quiet", "run", str(down), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert (out / "tracks.csv").read_bytes() == (report_dir / "tracks.csv").read_bytes()
    run = json.loads((out / "run.json").read_text())
    assert run["frames_reversed"] and not json.loads((report_dir / "run.json").read_text())["frames_reversed"]
    html = (out / "report.html").read_text()
    assert "<td>input</td>" in html and "frame k of every output is frame 39 - k of the input" in html


def test_the_chemistry_caption_names_the_element_of_the_edge_it_maps():
    """ "higher energy = more oxidised Ni" was written under a Co K-edge scan's map (7716-7718 eV)."""
    from xanestrack.report import _k_edge_element

    assert _k_edge_element((8339.5, 8343.1)) == " Ni"
    assert _k_edge_element((7716.2, 7717.5)) == " Co"
    assert _k_edge_element((6540.0, 6552.0)) == " Mn"
    assert _k_edge_element((8000.0, 8100.0)) == "" and _k_edge_element((float("nan"), 8340.0)) == ""


def test_the_motion_table_names_its_columns_with_units_and_says_which_frames_count(report_dir):
    """The table read 'peak_nonrigid_vy ... max_nonrigid_displacement', counted over the frames vouched for alone
    without a word; its columns have readable names with units, the caption defines them and ratio_v / ratio_h.
    motion_summary.csv keeps its column names (users' scripts read them)."""
    import re

    import pandas as pd

    html = (report_dir / "report.html").read_text()
    motion = html[html.index("<h2>Motion</h2>") : html.index("<h2>Particles</h2>")]
    heads = re.findall(r"<th>([^<]*)</th>", motion)
    for name in (
        "peak |non-rigid vy| (px/frame)",
        "peak |non-rigid vx| (px/frame)",
        "peak |common vy| (px/frame)",
        "peak |common vx| (px/frame)",
        "ratio_v (y)",
        "ratio_h (x)",
        "max |non-rigid| (px), frames vouched for",
        "position noise (px per axis)",
        "max |non-rigid| from noise alone (px)",
        "own motion within noise",
        "non-rigid moved by the split, up to (px)",
        "own motion within split and noise",
    ):
        assert name in heads, (name, heads)
    assert "peak_nonrigid_vy" not in heads and "max_nonrigid_displacement" not in heads
    assert "over its frames vouched for only" in motion
    assert "ratio_v = peak |non-rigid vy| / peak |common vy|" in motion
    assert "ratio_h = peak |non-rigid vx| / peak |common vx|" in motion
    assert list(pd.read_csv(report_dir / "motion_summary.csv").columns) == [
        "particle",
        "peak_nonrigid_vy",
        "peak_nonrigid_vx",
        "peak_rigid_vy",
        "peak_rigid_vx",
        "ratio_v",
        "ratio_h",
        "max_nonrigid_displacement",
        # their uncertainty, after them (tests/test_own_motion_noise.py)
        "position_noise_px",
        "max_nonrigid_noise_px",
        "nonrigid_at_noise",
        "peak_nonrigid_v_noise",
        # how far the split into common and own motion moves them (tests/test_motion_split.py)
        "own_motion_split_px",
        "nonrigid_within_split",
    ]


def test_the_pixel_size_gives_scale_bars_and_is_stated_once(report_dir, tmp_path):
    """Without a pixel size (a synthetic scan): no scale bar, 'pixel size unknown' once. With run.json's
    pixel_size_um: a scale bar on the overview and every map, and the pixel size in the run table."""
    from xanestrack.report import write_report

    html = (report_dir / "report.html").read_text()
    assert html.count("pixel size unknown") == 1
    for name in ("overview", "chemistry", "whiteline", "uncertainty"):
        assert "µm" not in (report_dir / "figures" / f"{name}.svg").read_text(), name
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    run = json.loads((copy / "run.json").read_text())
    run["pixel_size_um"] = 0.05
    run["pixel_size_source"] = "input"  # the files gave it (run.json says where it came from)
    (copy / "run.json").write_text(json.dumps(run))
    html = write_report(copy).read_text()
    assert "pixel size unknown" not in html
    assert "<td>0.05 µm (from the input; scale bars on the images)</td>" in html
    for name in ("overview", "chemistry", "whiteline", "uncertainty"):
        # 200 px of 0.05 um: a 2 um bar (1/5 of the width)
        assert ">2 µm</text>" in (copy / "figures" / f"{name}.svg").read_text(), name
    assert html.count("Scale bar 2 µm (40 px of 0.05 µm).") == 4
    # the particles' tiles: their width in um
    assert html.count(" µm) wide.") == html.count('<div class="particle">') > 0


def test_the_normalisation_bias_is_quoted_for_the_shipped_references_alone(report_dir, tmp_path):
    """The sigma caption quoted '+0.11 eV for NiO to +0.003 eV for LiNiO2' under any references (a Mn scan's,
    a Ni-metal's -0.56 eV) and any energies (those of synth's 143-energy grid). The fixture's run (40 energies)
    fits the shipped ones: their numbers on its energies (run.json); the same folder with the user's references
    and theirs in run.json is said with theirs."""
    from xanestrack.report import write_report

    bias = json.loads((report_dir / "run.json").read_text())["normalisation_bias_ev"]
    text = (report_dir / "report.html").read_text()
    assert f"{bias['NiO']:+.2f} eV for NiO" in text and "+0.003 eV" not in text
    copy = tmp_path / "copy"
    shutil.copytree(report_dir, copy)
    run = json.loads((copy / "run.json").read_text())
    run["references"] = ["my_nio=my_nio.txt", "my_linio2=my_linio2.txt"]
    run["normalisation_bias_ev"] = {"my_nio": 0.21, "my_linio2": -0.02}
    (copy / "run.json").write_text(json.dumps(run))
    html = write_report(copy).read_text()
    assert "eV for NiO" not in html and "+0.21 eV for my_nio, -0.02 eV for my_linio2" in html
