"""Bad, implausible or hostile input: one line naming the file and what to do, exit status 2,
the inputs untouched, nothing written (issue 11, cases 4, 5, 6 and 8)."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from conftest import digest as _digest
from conftest import shared_data
from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.io import read_stack
from xanestrack.io.hdf5 import write_fxi

runner = CliRunner()
E20 = np.linspace(8300.0, 8400.0, 20)


def _cli(*args, debug=False):
    return runner.invoke(app, (["--debug"] if debug else ["--quiet"]) + [str(a) for a in args])


def _one_line_error(r, *fragments):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _refused(tmp_path, inputs, args, *fragments):
    """Run the CLI, expect a one-line refusal; inputs byte-identical and no output folder."""
    before = _digest(*inputs)
    out = tmp_path / "out"
    line = _one_line_error(_cli(*args, "--out", out), *fragments)
    assert _digest(*inputs) == before
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return line


def _counts(n=20, shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    flats = rng.uniform(900, 1100, (n, *shape)).astype(np.float32)
    od = rng.uniform(0, 1, (n, *shape)).astype(np.float32)
    return (flats * np.exp(-od)).astype(np.uint16), flats, od


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A tiny synthetic FXI scan (12 energies, 140 x 140, 2 particles)."""
    d = tmp_path_factory.mktemp("scan") / "synthetic"
    r = runner.invoke(
        app,
        [
            "--quiet",
            "synth",
            str(d),
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
        ],
    )
    assert r.exit_code == 0, r.output
    return d / "stack.h5"


# ---- case 5: tracebacks that became one line -------------------------------------------------


def test_values_transmission_without_flats_is_minus_log(tmp_path):
    """Was an IndexError in the flat-field (no flats: a scalar reference)."""
    t = np.exp(-np.random.default_rng(1).uniform(0, 2, (5, 16, 20))).astype(np.float32)
    tifffile.imwrite(tmp_path / "t.tif", t)
    (tmp_path / "e.txt").write_text("\n".join(map(str, E20[:5])))
    st = read_stack(tmp_path / "t.tif", energies=tmp_path / "e.txt", values="transmission")
    assert np.allclose(st.od, -np.log(t), atol=1e-6) and st.metadata["values"] == "transmission"


def test_a_frame_of_one_count_everywhere_is_a_frame_without_an_image(scan, tmp_path):
    """Its OD is the flat field's pattern: particles were placed there 4 px off (flagged, not interpolated)."""
    import pandas as pd

    with h5py.File(scan) as f:
        parts = {k: f[k][()] for k in ("img_xanes", "img_bkg", "img_dark", "X_eng")}
    parts["img_xanes"][5] = 1000
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in parts.items():
            f[k] = v
    st = read_stack(tmp_path / "c.h5")
    assert any(
        "input frame 5 (1000) (counted from 0) holds one count in every pixel" in n for n in st.metadata["notes"]
    )
    assert np.isnan(st.od[5]).all() and np.isfinite(np.delete(st.od, 5, axis=0)).all()  # not the flat's pattern
    r = _cli("run", tmp_path / "c.h5", "--out", tmp_path / "out", "--detector", "classical", "--segmenter", "classical")
    assert r.exit_code == 0, r.output
    tracks = pd.read_csv(tmp_path / "out" / "tracks.csv", keep_default_na=False)
    at5 = tracks[tracks["frame"] == 5]
    assert len(at5) >= 1 and at5["flags"].str.contains("interpolated").all(), at5


def test_fxi_without_flats_or_darks(tmp_path):
    counts, flats, od = _counts()
    with h5py.File(tmp_path / "nobkg.h5", "w") as f:
        f["img_xanes"] = counts
        f["X_eng"] = E20 / 1000
    _refused(tmp_path, [tmp_path / "nobkg.h5"], ["run", tmp_path / "nobkg.h5"], "nobkg.h5", "raw counts", "/img_bkg")
    with h5py.File(tmp_path / "nodark.h5", "w") as f:  # flats but no darks: dark 0, said so
        f["img_xanes"] = counts
        f["img_bkg"] = flats
        f["X_eng"] = E20 / 1000
    st = read_stack(tmp_path / "nodark.h5")
    assert np.allclose(st.od, od, atol=1e-2)  # counts truncated to integers
    assert any("dark taken as 0" in n for n in st.metadata["notes"])


def test_hdf5_soft_link_loop(tmp_path):
    with h5py.File(tmp_path / "loop.h5", "w") as f:
        f["img_xanes"] = h5py.SoftLink("/a")
        f["a"] = h5py.SoftLink("/img_xanes")
    _refused(tmp_path, [tmp_path / "loop.h5"], ["run", tmp_path / "loop.h5"], "loop.h5", "/img_xanes", "link")


def test_implausible_radius_or_pixel_size(scan, tmp_path):
    _refused(tmp_path, [scan], ["run", scan, "--max-radius", "1e9"], "--max-radius", "frame size (140 px)")
    _refused(tmp_path, [scan], ["run", scan, "--min-radius", "-3"], "--min-radius")
    counts, flats, _ = _counts(12)
    write_fxi(
        tmp_path / "pix.h5", counts, flats=flats, darks=np.zeros((1, 64, 64)), energies_ev=E20[:12], pixel_size_um=1e-9
    )
    _refused(
        tmp_path, [tmp_path / "pix.h5"], ["run", tmp_path / "pix.h5"], "pix.h5", "pixel size", "1e-09", "--min-radius"
    )


def _model_copy(tmp_path, kind):
    from xanestrack.models.detector import default_detector_dir
    from xanestrack.models.segmenter import default_model_dir

    src = default_detector_dir() if kind == "detector" else default_model_dir()
    d = tmp_path / f"my_{kind}"
    shutil.copytree(src, d)
    return d


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_unsafe_empty_or_mismatched_weights(scan, tmp_path, kind):
    import torch

    d = _model_copy(tmp_path, kind)
    opt = f"--{kind}-model"
    torch.save({"G": _Evil()} if kind == "detector" else _Evil(), d / "weights.pt")
    line = _refused(tmp_path, [scan, d], ["run", scan, opt, d], "weights.pt", "refused", "Python objects")
    assert "weights_only" not in line  # torch's advice to turn the protection off is never echoed
    (d / "weights.pt").write_bytes(b"")
    _refused(tmp_path, [scan, d], ["run", scan, opt, d], "weights.pt", "empty file")
    (d / "weights.pt").write_bytes(b"PK\x03\x04 not really a zip")
    _refused(tmp_path, [scan, d], ["run", scan, opt, d], "weights.pt", "not a readable weights file")
    torch.save(
        {"G": {"nothing": torch.zeros(1)}} if kind == "detector" else {"nothing": torch.zeros(1)}, d / "weights.pt"
    )
    _refused(tmp_path, [scan, d], ["run", scan, opt, d], "weights.pt", "do not fit")


@pytest.mark.parametrize(
    "kind,edit,fragment",
    [
        ("detector", "{not json", "not valid JSON"),
        ("detector", {"n_blocks": 1e7}, "'n_blocks' = 1e+07 is outside"),
        ("detector", {"width": "wide"}, "'width' is 'wide'"),
        ("detector", {"width": 256, "n_blocks": 64}, "M parameters"),
        ("detector", {"n_blocks": None}, "no 'n_blocks'"),
        ("segmenter", {"canvas": 1e6}, "'canvas' = 1e+06 is outside"),
        ("segmenter", {"canvas": 72}, "not a multiple of 2^depth"),
        ("segmenter", [1, 2], "a JSON object is expected"),
    ],
)
def test_bad_model_config_refused_before_allocation(tmp_path, kind, edit, fragment):
    from xanestrack.models.detector import LearnedDetector
    from xanestrack.models.segmenter import LearnedSegmenter

    d = _model_copy(tmp_path, kind)
    cfg = json.loads((d / "config.json").read_text())
    if isinstance(edit, dict):
        cfg.update(edit)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        text = json.dumps(cfg)
    else:
        text = edit if isinstance(edit, str) else json.dumps(edit)
    (d / "config.json").write_text(text)
    with pytest.raises(XanestrackError, match="config.json") as ei:
        (LearnedDetector if kind == "detector" else LearnedSegmenter)(d)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_bad_model_config_through_the_cli(scan, tmp_path):
    d = _model_copy(tmp_path, "segmenter")
    (d / "config.json").write_text('{"width": 8, "depth": 4, "canvas": 1000000}')
    _refused(
        tmp_path,
        [scan, d],
        ["run", scan, "--segmenter-model", d],
        "config.json",
        "'canvas'",
        "xanestrack train segmenter",
    )


def test_missing_detector_model_is_a_clean_exit_not_an_abort(scan, tmp_path):
    """The refusal came while the warm-up thread imported PyTorch; the interpreter exited under it and
    the C++ runtime aborted the process ("terminate called without an active exception", exit 134)."""
    import subprocess
    import sys

    (tmp_path / "empty_model").mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "xanestrack.cli",
            "-q",
            "run",
            str(scan),
            "--detector-model",
            str(tmp_path / "empty_model"),
        ]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "terminate called" not in r.stderr and "no trained detector" in r.stderr + r.stdout
    assert not (tmp_path / "out").exists()


def _fake_output(folder, *, columns=("particle", "frame", "energy_ev", "y", "x", "flags"), particles=True):
    folder.mkdir()
    (folder / "tracks.csv").write_text(",".join(columns) + "\n" + ",".join("0" for _ in columns) + "\n")
    (folder / "run.json").write_text(json.dumps({"version": "0.1.0"}))
    with h5py.File(folder / "results.h5", "w") as f:
        f["energies_ev"] = E20
        f["common_shift"] = np.zeros((20, 2))
        if particles:
            f.create_group("particles/000")
    return folder


def test_report_on_incomplete_outputs(tmp_path):
    cases = [
        (_fake_output(tmp_path / "a", particles=False), ["results.h5", "no /particles"]),
        (_fake_output(tmp_path / "b", columns=("particle", "frame", "energy_ev", "y", "x")), ["tracks.csv", "flags"]),
        (_fake_output(tmp_path / "c"), ["results.h5", "/particles/000/aligned"]),
    ]
    (tmp_path / "d").mkdir()
    cases.append((tmp_path / "d", ["no results.h5"]))
    for folder, fragments in cases:
        before = _digest(folder)
        _one_line_error(_cli("report", folder), str(folder), *fragments)
        assert _digest(folder) == before and not (folder / "report.html").exists()


def test_unexpected_exception_is_one_line_and_debug_shows_it(scan, tmp_path, monkeypatch):
    import xanestrack.io

    def boom(*a, **k):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(xanestrack.io, "read_stack", boom)
    line = _refused(tmp_path, [scan], ["run", scan], str(scan), "unexpected IndexError", "--debug")
    assert "index 7" in line
    r = _cli("run", scan, "--out", tmp_path / "o", debug=True)
    assert isinstance(r.exception, IndexError)  # --debug: the exception itself, with its traceback


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    r = _cli("run", tmp_path / "x.h5", "--out", tmp_path / "o", debug=True)
    assert isinstance(r.exception, XanestrackError) and r.exit_code == 1


# ---- case 6: implausible input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("8300\n-8310\n8320\n8330\n8340", ["line 2", "-8310", "positive"]),
        ("8.300\n8.310\n8320\n8330\n8340", ["mix keV and eV", "line 1", "line 3"]),
        ("8300\nnan\n8320\n8330\n8340", ["line 2", "not a number"]),
        ("8300\n8310\n8320\n8330\nabc", ["line 5", "'abc'"]),
        ("\x00\x01binary", ["binary"]),
        ("0\n1\n2\n3\n4", ["line 1", "positive"]),
        # a decimal comma was read as two columns: 8300,250 -> 8300 eV, without a word
        ("8300,250\n8310,250\n8320,250\n8330,250\n8340,250", ["line 1", "'8300,250'", "decimal comma"]),
    ],
)
def test_implausible_energies_file(tmp_path, text, fragments):
    tifffile.imwrite(tmp_path / "s.tif", np.full((5, 16, 16), 0.1, np.float32))
    (tmp_path / "e.txt").write_text(text)
    _refused(
        tmp_path,
        [tmp_path / "s.tif", tmp_path / "e.txt"],
        ["run", tmp_path / "s.tif", "--energies", tmp_path / "e.txt"],
        "e.txt",
        *fragments,
    )


def test_energies_file_with_a_byte_order_mark_or_on_one_line(tmp_path):
    """A BOM made the first energy a header (one energy short); all energies on one line read as one."""
    from xanestrack.io.tiff import read_energies_file

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(f"{v:.2f}" for v in E20).encode())
    assert np.allclose(read_energies_file(tmp_path / "bom.txt"), E20)
    (tmp_path / "row.txt").write_text(" ".join(f"{v:.2f}" for v in E20) + "\n")
    assert np.allclose(read_energies_file(tmp_path / "row.txt"), E20)
    (tmp_path / "named.csv").write_text("energy,i0\n" + "\n".join(f"{int(v)},1000" for v in E20))
    assert np.allclose(read_energies_file(tmp_path / "named.csv"), np.floor(E20))  # integer columns, named: fine


def test_energies_csv_header_selects_the_energy_column(tmp_path):
    from xanestrack.io.tiff import read_energies_file

    (tmp_path / "e.csv").write_text(
        "frame, energy (keV)\n" + "\n".join(f"{i}, {e / 1000:.4f}" for i, e in enumerate(E20[:5]))
    )
    assert np.allclose(read_energies_file(tmp_path / "e.csv"), E20[:5], atol=0.05)


@pytest.mark.parametrize(
    "head,row",
    [
        ("No.,E [keV],exposure [s]", "{i},{k:.7f},2.0"),  # the frame numbers were read as keV, silently
        ("index,E(eV)", "{i},{e:.6f}"),  # refused: "energy at line 2 is 0"
        ("Photon energy (eV)", "{e:.6f}"),  # refused: "no number in its first 6 lines"
        ("mono energy", "{e:.6f}"),
        ("% energies", "{e:.6f}"),
        ("frame;energy", "{i};{c}"),  # decimal commas in a semicolon CSV: cut to whole eV, silently
        ('"frame","energy"', '{i},"{e:.6f}"'),
    ],
)
def test_energies_files_as_beamline_software_writes_them(tmp_path, head, row):
    from xanestrack.io.tiff import read_energies_file

    e = E20[:6] + 0.205128
    lines = [row.format(i=i, e=v, k=v / 1000, c=f"{v:.6f}".replace(".", ",")) for i, v in enumerate(e)]
    (tmp_path / "e.txt").write_text("\n".join([head, *lines]) + "\n")
    assert np.allclose(read_energies_file(tmp_path / "e.txt"), e, atol=1e-3)


def test_an_energies_file_whose_first_column_counts_the_lines_is_refused(tmp_path):
    from xanestrack.io.tiff import read_energies_file

    (tmp_path / "e.txt").write_text("\n".join(f"{i}\t{v:.3f}" for i, v in enumerate(E20)))  # read as 0, 1, 2 ... eV
    with pytest.raises(XanestrackError, match="first column counts the lines"):
        read_energies_file(tmp_path / "e.txt")
    (tmp_path / "e.txt").write_text("\n".join(f"{v:.3f}\t{i}" for i, v in enumerate(E20)))  # energy first: read
    assert np.allclose(read_energies_file(tmp_path / "e.txt"), E20, atol=1e-3)


@pytest.mark.parametrize("dtype,fragment", [(np.complex64, "complex"), (np.bool_, "booleans")])
def test_complex_or_bool_pixels(tmp_path, dtype, fragment):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 16, 16), dtype))
    (tmp_path / "e.txt").write_text("\n".join(map(str, E20[:5])))
    _refused(
        tmp_path, [tmp_path / "s.tif"], ["run", tmp_path / "s.tif", "--energies", tmp_path / "e.txt"], "s.tif", fragment
    )
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["img_xanes"] = np.ones((5, 16, 16), dtype)
        f["X_eng"] = E20[:5]
    _refused(tmp_path, [tmp_path / "c.h5"], ["run", tmp_path / "c.h5"], "c.h5", "/img_xanes", fragment)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_rgb_tiff_is_refused_whatever_its_sample_layout(tmp_path, planar):
    """An RGB TIFF saved with its colours in planes (axes SYX) was read as three frames of a scan."""
    rgb = np.random.default_rng(0).integers(0, 255, (3, 32, 32) if planar == "separate" else (32, 32, 3), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", rgb, photometric="rgb", planarconfig=planar)
    tifffile.imwrite(tmp_path / "f.tif", np.full((32, 32), 1000, np.uint16))
    (tmp_path / "e.txt").write_text("8300\n8330\n8360\n")
    _refused(
        tmp_path,
        [tmp_path / "s.tif"],
        ["run", tmp_path / "s.tif", "--energies", tmp_path / "e.txt", "--flats", tmp_path / "f.tif"],
        "s.tif",
        "colour (RGB)",
    )


def test_transmission_tiff_is_not_taken_for_optical_density(tmp_path):
    t = np.exp(-np.random.default_rng(2).uniform(0, 0.6, (5, 32, 32))).astype(np.float32)
    tifffile.imwrite(tmp_path / "t.tif", t)
    (tmp_path / "e.txt").write_text("\n".join(map(str, E20[:5])))
    _refused(
        tmp_path,
        [tmp_path / "t.tif"],
        ["run", tmp_path / "t.tif", "--energies", tmp_path / "e.txt"],
        "t.tif",
        "look like transmission",
        "--values transmission",
    )
    # optical density under auto is accepted, and the assumption is recorded
    st = read_stack(tmp_path / "t.tif", energies=tmp_path / "e.txt", values="transmission")
    tifffile.imwrite(tmp_path / "od.tif", st.od)
    st2 = read_stack(tmp_path / "od.tif", energies=tmp_path / "e.txt")
    assert np.array_equal(st2.od, st.od) and any("taken as optical density" in n for n in st2.metadata["notes"])
    # said to be optical density, they are taken as such, and the note says what they look like
    st3 = read_stack(tmp_path / "t.tif", energies=tmp_path / "e.txt", values="od")
    assert np.array_equal(st3.od, t) and any("look like transmission" in n for n in st3.metadata["notes"])
    assert not any("look like transmission" in n for n in st2.metadata["notes"])
    # float counts are refused whatever --values says, except od
    tifffile.imwrite(tmp_path / "fc.tif", np.full((5, 16, 16), 900.0, np.float32))
    with pytest.raises(XanestrackError, match="look like raw counts"):
        read_stack(tmp_path / "fc.tif", energies=tmp_path / "e.txt", values="transmission")


def test_fewer_flats_than_frames_is_a_recorded_assumption(tmp_path):
    """7 flats for 20 frames: averaged, and said so on the console and in run.json."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=3, n_energies=20, shape=(140, 140), n_particles=2, radius_range=(10.0, 14.0)
    )
    tifffile.imwrite(tmp_path / "s.tif", s.counts.round().astype(np.uint16))
    tifffile.imwrite(tmp_path / "f.tif", s.flats[::3][:7])
    tifffile.imwrite(tmp_path / "d.tif", s.dark)
    (tmp_path / "e.txt").write_text("\n".join(map(str, s.energies_ev)))
    ins = [tmp_path / n for n in ("s.tif", "f.tif", "d.tif", "e.txt")]
    before = _digest(*ins)
    r = runner.invoke(
        app,
        [
            "run",
            str(ins[0]),
            "--energies",
            str(ins[3]),
            "--flats",
            str(ins[1]),
            "--darks",
            str(ins[2]),
            "--out",
            str(tmp_path / "o"),
            "--detector",
            "classical",
            "--segmenter",
            "classical",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "7 flat-field images for 20 frames" in r.output
    notes = json.loads((tmp_path / "o" / "run.json").read_text())["input_notes"]
    assert any("7 flat-field images for 20 frames" in n and "mean" in n for n in notes)
    assert _digest(*ins) == before


def test_flats_for_input_that_has_its_own_are_refused_not_ignored(tmp_path):
    """--flats and --darks were ignored without a word for HDF5 and Zeiss input (an all-zero flat
    given with an FXI file: a run as if it had not been given)."""
    counts, flats, od = _counts()
    write_fxi(tmp_path / "s.h5", counts, flats=flats, darks=np.zeros((1, 64, 64)), energies_ev=E20)
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((64, 64), np.float32))
    _refused(
        tmp_path,
        [tmp_path / "s.h5", tmp_path / "zero.tif"],
        ["run", tmp_path / "s.h5", "--flats", tmp_path / "zero.tif"],
        "s.h5",
        "--flats not used",
        "/img_bkg",
    )
    with pytest.raises(XanestrackError, match="darks"):
        read_stack(tmp_path / "s.h5", darks=tmp_path / "zero.tif")
    # --values od / transmission on counts the flats normalise: ignored without a word before (a docs audit)
    _refused(tmp_path, [tmp_path / "s.h5"], ["run", tmp_path / "s.h5", "--values", "od"], "look like raw counts")
    # an HDF5 file without flats of its own takes them from TIFF (they were ignored, the counts taken for OD)
    with h5py.File(tmp_path / "nobkg.h5", "w") as f:
        f["img_xanes"] = counts
        f["X_eng"] = E20 / 1000
    tifffile.imwrite(tmp_path / "flats.tif", flats)
    st = read_stack(tmp_path / "nobkg.h5", flats=tmp_path / "flats.tif")
    assert np.allclose(st.od, od, atol=1e-2) and st.metadata["values"] == "counts"
    assert str(tmp_path / "flats.tif") in st.metadata["files"]
    with pytest.raises(XanestrackError, match="`values` transmission not used"):
        read_stack(tmp_path / "nobkg.h5", flats=tmp_path / "flats.tif", values="transmission")
    with pytest.raises(XanestrackError, match="without `flats`"):
        read_stack(tmp_path / "nobkg.h5", darks=tmp_path / "zero.tif")


def test_energies_given_for_a_file_that_stores_its_own_are_noted(tmp_path):
    """--energies replaced an HDF5 file's /X_eng (and a Zeiss scan's energies) without a note."""
    counts, flats, _ = _counts()
    write_fxi(tmp_path / "s.h5", counts, flats=flats, darks=np.zeros((1, 64, 64)), energies_ev=E20)
    (tmp_path / "e.txt").write_text("\n".join(f"{v:.2f}" for v in E20 + 0.5))
    st = read_stack(tmp_path / "s.h5", energies=tmp_path / "e.txt")
    assert np.allclose(st.energies_ev, E20 + 0.5)
    note = [n for n in st.metadata["notes"] if "replace" in n]
    assert len(note) == 1 and "/X_eng" in note[0] and "up to 0.50 eV" in note[0], st.metadata["notes"]
    # a file without energies takes them from the file given (it was refused whatever was given)
    with h5py.File(tmp_path / "noeng.h5", "w") as f:
        f["img_xanes"] = counts
        f["img_bkg"] = flats
    st = read_stack(tmp_path / "noeng.h5", energies=tmp_path / "e.txt")
    assert np.allclose(st.energies_ev, E20 + 0.5) and not [n for n in st.metadata["notes"] if "replace" in n]
    _refused(tmp_path, [tmp_path / "noeng.h5"], ["run", tmp_path / "noeng.h5"], "no energy dataset", "--energies")


def test_zeiss_scan_refuses_tiff_options_and_notes_energies_given(tmp_path):
    src = shared_data("real_txm", "ssrl_6-2c_nca")
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((8, 8), np.float32))
    _refused(tmp_path, [src], ["run", src, "--flats", tmp_path / "zero.tif"], "--flats not used", "Zeiss")
    _refused(tmp_path, [src], ["run", src, "--values", "od"], "--values", "Zeiss")
    d = _xrm_folder(tmp_path, {})  # one energy, 8324 eV in the names
    (tmp_path / "e.txt").write_text("8330.0\n")
    st = read_stack(d, energies=tmp_path / "e.txt")
    assert st.energies_ev.tolist() == [8330.0]
    assert any(
        "replace the 1 stored in the files' metadata or names" in n and "6.00 eV" in n for n in st.metadata["notes"]
    )


def _xrm_folder(tmp_path, exptimes):
    """One energy of the SSRL scan (3 samples, 10 references) with ExpTimes rewritten per file."""
    import olefile

    src = shared_data("real_txm", "ssrl_6-2c_nca")
    files = sorted(src.glob("*_08324.0_eV_*.xrm"))
    d = tmp_path / "xrm"
    d.mkdir()
    for f in files:
        shutil.copy(f, d / f.name)
    for pattern, t in exptimes.items():
        for p in d.glob(pattern):
            with olefile.OleFileIO(str(p), write_mode=True) as o:
                n = len(o.openstream("ImageInfo/ExpTimes").read()) // 4
                o.write_stream("ImageInfo/ExpTimes", np.full(n, t, "<f4").tobytes())
    return d


def test_xrm_exposure_time_zero_in_some_files_is_refused(tmp_path):
    d = _xrm_folder(tmp_path, {"*08324.0_eV_002of003.xrm": 0.0})
    _refused(tmp_path, [d], ["run", d], "002of003.xrm", "no exposure time", "ExpTimes")


def test_xrm_exposure_time_zero_everywhere_is_a_recorded_assumption(tmp_path):
    d = _xrm_folder(tmp_path, {"*.xrm": 0.0})
    st = read_stack(d)
    assert any("all exposures taken as equal" in n for n in st.metadata["notes"])
    assert np.isfinite(st.od).mean() > 0.99


# ---- case 4: sizes checked before allocation -----------------------------------------------------


def test_hdf5_declaring_huge_or_unwritten_datasets(tmp_path):
    with h5py.File(tmp_path / "huge.h5", "w") as f:  # 107 GiB declared in a file of a few KB
        f.create_dataset("img_xanes", shape=(143, 20000, 20000), dtype="u2", chunks=(1, 256, 256))
        f["X_eng"] = np.linspace(8.3, 8.4, 143)
    _refused(tmp_path, [tmp_path / "huge.h5"], ["run", tmp_path / "huge.h5"], "huge.h5", "(143, 20000, 20000)")
    with h5py.File(tmp_path / "hollow.h5", "w") as f:  # declared, never written: would read as zeros
        f.create_dataset("img_xanes", shape=(2, 4000, 4000), dtype="u2", chunks=(1, 500, 500))
        f.create_dataset("img_bkg", data=np.ones((1, 4000, 4000), np.uint16), chunks=(1, 500, 500), compression="gzip")
        f["X_eng"] = [8.3, 8.4]
    _refused(
        tmp_path,
        [tmp_path / "hollow.h5"],
        ["run", tmp_path / "hollow.h5"],
        "hollow.h5",
        "0 of 128 chunks of /img_xanes",
    )


def test_declared_size_against_free_memory(tmp_path, monkeypatch):
    import xanestrack.io.checks as checks

    counts, flats, _ = _counts(20, (64, 64))
    write_fxi(tmp_path / "s.h5", counts, flats=flats, darks=np.zeros((1, 64, 64)), energies_ev=E20)
    tifffile.imwrite(tmp_path / "s.tif", counts)
    (tmp_path / "e.txt").write_text("\n".join(map(str, E20)))
    monkeypatch.setattr(checks, "available_memory", lambda: 200_000)
    _refused(tmp_path, [tmp_path / "s.h5"], ["run", tmp_path / "s.h5"], "s.h5", "GiB of memory", "crop or bin")
    _refused(
        tmp_path,
        [tmp_path / "s.tif"],
        ["run", tmp_path / "s.tif", "--energies", tmp_path / "e.txt", "--flats", tmp_path / "s.tif"],
        "s.tif",
        "GiB of memory",
    )


# ---- case 8: misleading messages -------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.9, 0.95, 0.99])
def test_xrm_cut_near_its_end_says_truncated(tmp_path, fraction):
    data = shared_data("zeiss", "test_chip00.xrm").read_bytes()
    p = tmp_path / "cut.xrm"
    p.write_bytes(data[: int(len(data) * fraction)])
    line = _refused(tmp_path, [p], ["run", p], "cut.xrm", "truncated file", "copy the file again")
    assert "reference" not in line.split("truncated")[0]  # no longer "add reference files"


def test_every_real_zeiss_file_is_complete():
    from xanestrack.io.ole import OleFile

    files = sorted(shared_data("zeiss").glob("*.*rm")) + sorted(shared_data("real_txm", "ssrl_6-2c_nca").glob("*.xrm"))
    assert files
    for f in files:
        assert not OleFile(f).truncated, f


def test_group_where_a_dataset_belongs_and_empty_stacks(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("img_xanes")
        f["X_eng"] = E20 / 1000
    line = _refused(tmp_path, [tmp_path / "g.h5"], ["run", tmp_path / "g.h5"], "g.h5", "/img_xanes is a group")
    assert "Accessing a group" not in line
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f["img_xanes"] = np.zeros((0, 64, 64), np.uint16)
        f["X_eng"] = np.zeros(0)
    line = _refused(tmp_path, [tmp_path / "z.h5"], ["run", tmp_path / "z.h5"], "z.h5", "no frames")
    assert "zero-size" not in line
    counts, flats, _ = _counts(5)
    with h5py.File(tmp_path / "ne.h5", "w") as f:
        f["img_xanes"] = counts
        f["img_bkg"] = flats
        f["X_eng"] = np.zeros(0)
    _refused(tmp_path, [tmp_path / "ne.h5"], ["run", tmp_path / "ne.h5"], "ne.h5", "/X_eng", "no energies")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--values", "bogus"], ["--values", "'bogus'"]),
        (["--detect-every", "0"], ["--detect-every 0"]),
        (["--reference", "bad"], ["--reference takes NAME=FILE"]),
        (["--reference", "X=nothere.txt"], ["--reference X=nothere.txt", "not found"]),
        (["--min-radius", "0"], ["--min-radius 0.0", "positive"]),  # was a generic message from deep inside
    ],
)
def test_bad_options_are_one_line(scan, tmp_path, args, fragments):
    _refused(tmp_path, [scan], ["run", scan, *args], *fragments)


def test_series_of_missing_or_looping_files(tmp_path):
    with h5py.File(tmp_path / "loop.h5", "w") as f:
        f["img_xanes"] = h5py.SoftLink("/a")
        f["a"] = h5py.SoftLink("/img_xanes")
    _refused(tmp_path, [tmp_path / "loop.h5"], ["series", tmp_path / "nothere.h5"], "nothere.h5", "no such file")
    line = _one_line_error(
        _cli(
            "series",
            tmp_path / "loop.h5",
            "--out",
            tmp_path / "s",
            "--detector",
            "classical",
            "--segmenter",
            "classical",
        )
    )
    assert "loop.h5" in line and "link" in line


def test_failures_leave_a_previous_output_intact(scan, tmp_path):
    prev = tmp_path / "prev"
    assert (
        runner.invoke(
            app,
            [
                "--quiet",
                "synth",
                str(prev),
                "--n-particles",
                "2",
                "--n-energies",
                "12",
                "--size",
                "140",
                "--max-radius",
                "14",
            ],
        ).exit_code
        == 0
    )
    before = _digest(prev)
    d = _model_copy(tmp_path, "segmenter")
    (d / "weights.pt").write_bytes(b"")
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    for args in (
        ["run", tmp_path / "x.h5"],
        ["run", scan, "--segmenter-model", d],
        ["run", scan, "--max-radius", "1e9"],
    ):
        _one_line_error(_cli(*args, "--out", prev, "--overwrite"))
        assert _digest(prev) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["my_segmenter", "prev", "x.h5"]


def test_xrm_reference_dead_at_a_few_pixels_is_noted_not_refused(tmp_path):
    import olefile

    d = _xrm_folder(tmp_path, {})
    for p in d.glob("*_ref_*.xrm"):  # two pixels of every reference read no counts
        with olefile.OleFileIO(str(p), write_mode=True) as o:
            img = np.frombuffer(o.openstream("ImageData1/Image1").read(), "<u2").copy()
            img[[1000, 5000]] = 0
            o.write_stream("ImageData1/Image1", img.tobytes())
    st = read_stack(d)
    assert any("zero or negative at 2 pixels (dead detector pixels)" in n for n in st.metadata["notes"])
    assert np.isfinite(st.od).all()


def test_folders_and_links_that_are_not_what_they_seem(tmp_path):
    """macOS's ._name.tif beside the frames was taken for a frame (a duplicate energy); a folder of HDF5
    files was said to hold no .xrm files; a broken external link read as no image dataset at all."""
    od = np.random.default_rng(0).uniform(0.1, 1.0, (4, 32, 32)).astype(np.float32)
    d = tmp_path / "frames"
    d.mkdir()
    for k, e in enumerate(E20[:4]):
        tifffile.imwrite(d / f"scan_{e:.1f}eV.tif", od[k])
    (d / f"._scan_{E20[0]:.1f}eV.tif").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    st = read_stack(d, values="od")
    assert st.od.shape == (4, 32, 32) and np.allclose(st.energies_ev, E20[:4], atol=0.05)
    h = tmp_path / "h5s"
    h.mkdir()
    (h / "a.h5").write_bytes(b"x")
    _refused(tmp_path, [h], ["run", h], "no .xrm/.txrm files nor single-frame TIFFs", "found .h5", "not its folder")
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f["img_xanes"] = h5py.ExternalLink("missing.h5", "/img_xanes")
        f["X_eng"] = E20 / 1000
    _refused(
        tmp_path, [tmp_path / "ext.h5"], ["run", tmp_path / "ext.h5"], "/img_xanes is a link to missing.h5", "broken"
    )


def test_options_and_layouts_that_would_be_ignored_or_doubtful(scan, tmp_path):
    """A model for the classical path, transmission asked for OD-like values, two layouts in one file: each
    was taken without a word."""
    d = tmp_path / "m"
    d.mkdir()
    _refused(
        tmp_path,
        [scan],
        ["run", scan, "--detector", "classical", "--detector-model", d],
        "--detector-model",
        "learned",
    )
    od = np.random.default_rng(0).uniform(0.0, 3.0, (5, 32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "od.tif", od)
    (tmp_path / "e.txt").write_text("\n".join(map(str, E20[:5])))
    st = read_stack(tmp_path / "od.tif", energies=tmp_path / "e.txt", values="transmission")
    assert any("do not look like transmission" in n for n in st.metadata["notes"])
    counts, flats, _ = _counts()
    with h5py.File(tmp_path / "both.h5", "w") as f:
        f["img_xanes"], f["img_bkg"], f["X_eng"] = counts, flats, E20 / 1000
        f["exchange/data"] = counts
    st = read_stack(tmp_path / "both.h5")
    assert any("holds both /img_xanes" in n for n in st.metadata["notes"])


def test_a_scan_too_short_for_xanes_says_so_in_the_run_notes(scan, tmp_path):
    """Two frames: the run succeeded with no XANES, said only in each particle's notes in results.h5."""
    with h5py.File(scan) as f:
        parts = {k: f[k][()] for k in ("img_xanes", "img_bkg", "img_dark", "X_eng")}
    with h5py.File(tmp_path / "two.h5", "w") as f:
        for k, v in parts.items():
            f[k] = v[:2] if k != "img_dark" else v
    r = _cli(
        "run", tmp_path / "two.h5", "--out", tmp_path / "out", "--detector", "classical", "--segmenter", "classical"
    )
    assert r.exit_code == 0, r.output
    notes = json.loads((tmp_path / "out" / "run.json").read_text())["notes"]
    assert any("2 frame(s): positions and sizes only, no XANES" in n for n in notes), notes


def test_unlike_images_of_one_energy_averaged_as_repeats_are_said_to_be(tmp_path):
    """A tomography's 7 projections (.txrm, the energy written for image 1 only) were averaged into one frame with
    no word beyond the energy quirk; the SSRL scan's repeated exposures are not said to differ."""
    src = shared_data("zeiss", "txrm_test_chip_tomo.txrm")
    d = tmp_path / "tomo"
    d.mkdir()
    (d / "chip_tomo.txrm").symlink_to(src)
    (d / "chip_ref_tomo.txrm").symlink_to(src)
    st = read_stack(d)
    assert st.od.shape[0] == 1
    assert any("7 sample images" in n and "averaged as repeated exposures" in n for n in st.metadata["notes"])
    ssrl = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    assert not any("averaged as repeated exposures" in n for n in ssrl.metadata["notes"])


def test_a_frame_written_twice_under_two_energies_is_refused():
    """Frame 56 replaced by frame 50's image (the default scene): four particles' mean edge energies 0.6-0.8 eV
    off, no flag, no note (a physics probe). Two measured frames are never the same image."""
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack, duplicate_frames
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=2, n_energies=12, shape=(96, 96), n_particles=1, radius_range=(10, 12))
    od = s.optical_density()
    assert duplicate_frames(od) == []
    od[7] = od[3]
    od[1] = od[2] = 0.25  # constant frames (blanked) are not copies of one another
    assert duplicate_frames(od) == [(3, 7)]
    with pytest.raises(ValueError, match=r"frames 3 and 7 \(.* eV\) are the same image pixel for pixel"):
        run_pipeline(Stack(od, s.energies_ev))


def test_an_fxi_export_normalised_already_is_read_as_transmission(tmp_path):
    """FXI's export writes img_xanes as I/I0 beside the flats and darks it used: divided by them again, every pixel
    was "zero transmission", no particle was found, and --values was refused (a formats probe)."""
    _, flats, od = _counts()
    with h5py.File(tmp_path / "norm.h5", "w") as f:
        f["img_xanes"] = np.exp(-od).astype(np.float32)
        f["img_bkg"] = flats
        f["img_dark"] = np.full((1, 64, 64), 100.0, np.float32)
        f["X_eng"] = E20 / 1000
    for values in ("auto", "transmission"):
        st = read_stack(tmp_path / "norm.h5", values=values, zingers=False)
        assert np.allclose(st.od, od, atol=1e-5)
        assert any("flat-field images (/img_bkg) not used" in n for n in st.metadata["notes"])
    # flats of one value (FXI's 'img_only' export): no flats, said so (it was "flats and darks swapped?")
    with h5py.File(tmp_path / "ones.h5", "w") as f:
        f["img_xanes"] = (flats * np.exp(-od)).astype(np.float32)
        f["img_bkg"] = np.ones((1, 64, 64), np.float32)
        f["img_dark"] = np.full((1, 64, 64), 100.0, np.float32)
        f["X_eng"] = E20 / 1000
    with pytest.raises(XanestrackError, match="ones \\(or zeros\\) everywhere: no flats"):
        read_stack(tmp_path / "ones.h5")


def test_an_energies_file_of_two_unnamed_columns_is_read_only_where_the_energy_is_plain(tmp_path):
    """Elapsed seconds beside the energies in keV, no header: the seconds were read as 300-5298 eV without a word
    (every particle then 'XANES failed', tracks.csv's energies wrong). A first column that cannot be a scan's energies
    beside one that can is refused; a first column of energies is read whatever the others hold (a monitor decaying
    with the ring current, a readback, the same energies in keV; two frames)."""
    from xanestrack.errors import XanestrackError
    from xanestrack.io.tiff import read_energies_file

    e = np.linspace(8.2, 8.68, 143)
    np.savetxt(tmp_path / "time.txt", np.c_[300 + 35.2 * np.arange(143), e], delimiter="\t")
    with pytest.raises(XanestrackError, match="first column .* does not look like a scan's energies; column 2"):
        read_energies_file(tmp_path / "time.txt")
    np.savetxt(tmp_path / "second.txt", np.c_[np.full(143, 2.0), e])
    with pytest.raises(XanestrackError, match="first column .* does not look like a scan's energies; column 2"):
        read_energies_file(tmp_path / "second.txt")
    for name, other in (
        ("i0.txt", 1e5 + np.arange(143) % 7),
        ("decaying_i0.txt", np.linspace(1.2345, 1.10, 143)),  # nA, falling with the ring: it looked like keV
        ("ring.txt", np.linspace(250.3, 248.1, 143)),  # mA
        ("kev.txt", e),
        ("readback.txt", e * 1000 + 0.8),
    ):
        np.savetxt(tmp_path / name, np.c_[e * 1000, other])
        assert np.allclose(read_energies_file(tmp_path / name), e * 1000), name
    (tmp_path / "two.txt").write_text("8324 75585\n8354 75401\n")  # two frames and a monitor
    assert np.allclose(read_energies_file(tmp_path / "two.txt"), [8324, 8354])
    (tmp_path / "named.txt").write_text("t_s\tenergy_keV\n" + "".join(f"{300 + k}\t{v}\n" for k, v in enumerate(e)))
    assert np.allclose(read_energies_file(tmp_path / "named.txt"), e * 1000)


def test_optical_density_of_a_thick_electrode_is_not_taken_for_transmission():
    """OD 0.55-1.43, median 0.80 (stress-all's): between 0 and 1.5 with a median above 0.5, taken for I/I0
    (refused without `values`, a false note with `values od`); its particles are the high tail, as OD's are."""
    from xanestrack.io.checks import values_without_flats
    from xanestrack.synth_stress import make_scene

    od = make_scene("stress-all", seed=1, n_energies=8).optical_density().astype(np.float32)
    base = np.percentile(od, 0.1)
    od = base + 0.6 * (od - base)  # its contrast within 0-1.5 (the reduced test scene's was)
    lo, med, hi = np.percentile(od, [0.1, 50, 99.9])
    assert lo >= 0 and hi <= 1.5 and med >= 0.5, (lo, med, hi)  # the old rule's transmission
    _, kind, notes = values_without_flats(od, "od", source="s", flats_hint="flats")
    assert not any("look like transmission" in n for n in notes), notes
    t = np.exp(-(od - base))  # a thinner electrode's transmission still is
    _, _, notes = values_without_flats(t, "od", source="s", flats_hint="flats")
    assert any("look like transmission" in n for n in notes)


def test_messages_for_an_external_link_and_a_three_frame_tiff_say_what_to_do(tmp_path):
    """Both were right but left the user without the way out: "a broken link in the file; re-export", and "a colour
    (RGB) image" for 3 grey frames that tifffile.imwrite tags RGB."""
    import h5py
    import tifffile

    from xanestrack.errors import XanestrackError
    from xanestrack.io import read_stack

    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["img_xanes"] = h5py.ExternalLink("frames.h5", "/img_xanes")
        f["X_eng"] = np.linspace(8.3, 8.4, 5)
    with pytest.raises(XanestrackError, match="put frames.h5 where the link looks for it"):
        read_stack(tmp_path / "s.h5")
    tifffile.imwrite(tmp_path / "t.tif", np.ones((3, 16, 16), np.float32))
    with pytest.raises(XanestrackError, match="photometric='minisblack'"):
        read_stack(tmp_path / "t.tif", energies=[8300.0, 8340.0, 8380.0])
