"""A scan written as one TIFF file per energy (a folder, or a list of files)."""

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.io import read_stack

E = np.array([8300.0, 8320.0, 8333.5, 8345.0, 8360.0, 8400.0])


def _frames(n=6, shape=(24, 20)):
    rng = np.random.default_rng(4)
    return rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32)


def _write(folder, names, frames):
    folder.mkdir(exist_ok=True)
    for name, f in zip(names, frames):
        tifffile.imwrite(folder / name, f)
    return folder


def test_a_folder_of_frames_named_by_their_energies_is_read_in_energy_order(tmp_path):
    od = _frames()
    # names in three spellings, written in an order that is neither the energies' nor the names'
    names = [f"scan_{e:.1f}eV.tif" for e in E[:2]] + [f"rep01_0{e:.1f}_eV_001of003.tiff" for e in E[2:4]]
    names += [f"img {e / 1000:.4f} keV.tif" for e in E[4:]]
    order = [3, 0, 5, 1, 4, 2]
    _write(tmp_path / "f", [names[i] for i in order], od[order])
    st = read_stack(tmp_path / "f", values="od", zingers=False)
    assert np.allclose(st.energies_ev, E) and np.array_equal(st.od, od)
    assert any("energies from their names" in n for n in st.metadata["notes"])
    # the same files listed one by one
    st2 = read_stack(sorted((tmp_path / "f").iterdir()), values="od", zingers=False)
    assert np.array_equal(st2.od, od)


def test_frames_with_an_energies_file_are_taken_in_the_natural_order_of_their_names(tmp_path):
    od = _frames()
    _write(tmp_path / "f", [f"frame_{k}.tif" for k in range(len(E))], od)  # frame_10 would follow frame_9
    (tmp_path / "e.txt").write_text("\n".join(map(str, E)))
    st = read_stack(tmp_path / "f", energies=tmp_path / "e.txt", values="od", zingers=False)
    assert np.array_equal(st.od, od) and np.allclose(st.energies_ev, E)
    # a scan from high to low energy: the energies file decides, the frames follow it
    (tmp_path / "d.txt").write_text("\n".join(map(str, E[::-1])))
    st = read_stack(tmp_path / "f", energies=tmp_path / "d.txt", values="od", zingers=False)
    assert np.array_equal(st.od, od[::-1]) and np.allclose(st.energies_ev, E)


def test_frames_given_in_a_shells_alphabetical_order_are_taken_in_their_natural_order(tmp_path):
    # `frames/*.tif --energies e.txt`: the shell lists frame_10 before frame_2; taken as given, every frame after
    # frame_1 got another's energy (every particle's E50 NaN), nothing said
    n = 12
    od = _frames(n)
    e = np.linspace(8300.0, 8410.0, n)
    _write(tmp_path / "f", [f"frame_{k}.tif" for k in range(n)], od)
    (tmp_path / "e.txt").write_text("\n".join(map(str, e)))
    glob = sorted((tmp_path / "f").glob("*.tif"))  # frame_0, frame_1, frame_10, frame_11, frame_2, ...
    st = read_stack(glob, energies=tmp_path / "e.txt", values="od", zingers=False)
    assert np.array_equal(st.od, od) and np.allclose(st.energies_ev, e)
    assert any("given in alphabetical order" in x for x in st.metadata["notes"])
    # an order of the user's own is kept
    mine = [tmp_path / "f" / f"frame_{k}.tif" for k in [1, 0, *range(2, n)]]
    st = read_stack(mine, energies=tmp_path / "e.txt", values="od", zingers=False)
    assert np.array_equal(st.od[:2], od[[1, 0]]) and not any("alphabetical" in x for x in st.metadata["notes"])


def test_an_energies_file_that_contradicts_the_files_names_is_refused_or_said(tmp_path):
    # names low to high, the file high to low: every frame's energy reversed, every E50 NaN, nothing said
    od = _frames()
    _write(tmp_path / "f", [f"s{k + 1}_{e:.1f}eV.tif" for k, e in enumerate(E)], od)
    (tmp_path / "down.txt").write_text("\n".join(map(str, E[::-1])))
    with pytest.raises(XanestrackError, match="orders the frames otherwise than the energies in the files' names"):
        read_stack(tmp_path / "f", energies=tmp_path / "down.txt", values="od", zingers=False)
    (tmp_path / "off.txt").write_text("\n".join(map(str, E + 3.0)))  # a calibrated axis beside nominal names
    st = read_stack(tmp_path / "f", energies=tmp_path / "off.txt", values="od", zingers=False)
    assert np.allclose(st.energies_ev, E + 3.0)
    assert any("differs from the energies in the files' names by up to 3.0 eV" in n for n in st.metadata["notes"])


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("unnamed", "no energy in its name"),
        ("two_energies", "more than one energy in its name"),
        ("shape", "the frames of a scan must match"),
        ("stack", "must give one frame each"),
        ("count", "6 frames but 5 energies"),
        ("duplicate", "duplicate energy"),
    ],
)
def test_a_folder_of_frames_that_does_not_make_a_scan_is_one_line(tmp_path, case, fragment):
    od = _frames()
    names = [f"f_{e:.1f}eV.tif" for e in E]
    args = []
    if case == "unnamed":
        names[2] = "f_2.tif"
    elif case == "two_energies":
        names[2] = "f_8333.5eV_to_8340eV.tif"
    elif case == "duplicate":
        names[2] = "f_8320.0_eV_b.tif"
    f = _write(tmp_path / "f", names, od)
    if case == "shape":
        tifffile.imwrite(f / names[4], od[4, :20])
    elif case == "stack":
        tifffile.imwrite(f / names[4], od[:2])
    elif case == "count":
        (tmp_path / "e.txt").write_text("\n".join(map(str, E[:5])))
        args = ["--energies", str(tmp_path / "e.txt")]
    r = CliRunner().invoke(app, ["run", str(f), "--values", "od", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and fragment in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_a_folder_with_neither_frames_nor_zeiss_files_says_so(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("nothing")
    with pytest.raises(XanestrackError, match="folder holds no .xrm/.txrm files"):
        read_stack(tmp_path / "f")


def test_a_series_sees_a_frame_of_a_tiff_folder_replaced(tmp_path):
    from xanestrack.series import ScanSource, source_checksum

    folder = _write(tmp_path / "f", [f"f_{e:.1f}eV.tif" for e in E], _frames())
    src = ScanSource("f", 0, "input", path=str(folder))
    before = source_checksum(src)
    tifffile.imwrite(folder / "f_8345.0eV.tif", _frames()[3] + 0.01)
    assert source_checksum(src) != before


def test_flats_one_per_file_follow_their_files_when_the_names_give_the_order(tmp_path):
    # a descending scan's files with their flats in the files' order: paired by position in energy order before
    rng = np.random.default_rng(2)
    flats = rng.uniform(900, 1100, (6, 24, 20)).astype(np.float32)
    counts = (flats * np.exp(-_frames())).astype(np.float32)
    names = [f"frame_{k:03d}_{e:.1f}eV.tif" for k, e in enumerate(E[::-1])]  # file k holds energy E[5 - k]
    _write(tmp_path / "f", names, counts[::-1])
    tifffile.imwrite(tmp_path / "flats.tif", flats[::-1])  # one per file, in the files' order
    st = read_stack(tmp_path / "f", flats=tmp_path / "flats.tif", zingers=False)
    assert np.allclose(st.energies_ev, E)
    assert np.allclose(st.od, _frames(), atol=1e-4)
    assert any("each paired with its file's frame" in n for n in st.metadata["notes"])
