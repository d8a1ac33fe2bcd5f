"""Raw data saved wrong: unsigned counts stored as int16 (wrapped negative), a cube saved (rows, cols, energies).

The shapes probe's findings 3 and 4: a 16-bit camera's counts up to ~35,000 saved as int16 (6.8 % of the pixels
wrapped negative) ran to exit 0 with notes of zero transmission, a closed shutter and 4298 zingers, 3 of 4 mean E50s
withheld; a 160^3 stack saved (rows, cols, energies) ran to exit 0 with one "particle", 0 of 160 frames vouched for.
"""

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from conftest import error_line
from xanestrack.errors import XanestrackError


@pytest.fixture(scope="module")
def scene():
    """Synth seed 1 (the default scene), reduced: 16 energies of 128 x 128, 3 particles."""
    from xanestrack.synth import make_synthetic_stack

    return make_synthetic_stack(
        "default", seed=1, n_energies=16, shape=(128, 128), n_particles=3, radius_range=(8.0, 14.0)
    )


def _bright(scene):
    """The scene's counts, flats and dark scaled so that 7 % of the image pixels are above 32767 (a 16-bit camera
    at up to ~35,000 counts, as the probe's)."""
    k = 32767.0 / np.percentile(scene.counts, 93)
    return scene.counts * k, scene.flats * k, scene.dark * k


def _write(tmp_path, counts, flats, dark, energies):
    tifffile.imwrite(tmp_path / "c.tif", counts, photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", flats.astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "d.tif", dark.astype(np.float32), photometric="minisblack")
    np.savetxt(tmp_path / "e.txt", energies)
    return dict(energies=tmp_path / "e.txt", flats=tmp_path / "f.tif", darks=tmp_path / "d.tif")


# ---------------------------------------------------------------- finding 3: int16 counts wrapped negative


def test_int16_counts_wrapped_negative_are_refused_naming_the_overflow(tmp_path, scene):
    from xanestrack.cli import app
    from xanestrack.io import read_stack

    c, f, d = _bright(scene)
    wrapped = c.round().astype(np.int64).astype(np.int16)  # as a camera's software saved them
    assert 0.05 < (wrapped < 0).mean() < 0.1
    kw = _write(tmp_path, wrapped, f, d, scene.energies_ev)
    with pytest.raises(XanestrackError, match=r"int16 counts of its images \(\d.\d+%\) are negative") as exc:
        read_stack(tmp_path / "c.tif", **kw)
    msg = str(exc.value)
    assert "above 32767 stored as signed wrap around" in msg and "uint16" in msg and "the flats reach" in msg
    r = CliRunner().invoke(
        app, ["run", str(tmp_path / "c.tif"), *(f"--{k}={v}" for k, v in kw.items()), "--out", str(tmp_path / "o")]
    )
    error_line(r, "int16 counts", "wrap around", "uint16")
    assert not (tmp_path / "o").exists()
    # the fix the message gives: the same counts as uint16 read as the float ones do
    tifffile.imwrite(tmp_path / "c.tif", wrapped.astype(np.uint16), photometric="minisblack")
    od = read_stack(tmp_path / "c.tif", **kw, zingers=False).od
    tifffile.imwrite(tmp_path / "c.tif", c.round().astype(np.float32), photometric="minisblack")
    assert np.allclose(od, read_stack(tmp_path / "c.tif", **kw, zingers=False).od, atol=1e-5)


def test_wrapped_int16_in_hdf5_and_in_the_flats_are_refused(tmp_path, scene):
    from xanestrack.io import read_stack
    from xanestrack.io.hdf5 import write_fxi

    c, f, d = _bright(scene)
    wrapped = c.round().astype(np.int64).astype(np.int16)
    write_fxi(tmp_path / "s.h5", wrapped, flats=f.astype(np.float32), darks=d[None], energies_ev=scene.energies_ev)
    with pytest.raises(XanestrackError, match="int16 counts of its images .* wrap around"):
        read_stack(tmp_path / "s.h5")
    # flats as int16 as well, wrapped (they were "flat minus dark is zero or negative ... flats and darks swapped?")
    f16 = (f * 1.05).round().astype(np.int64).astype(np.int16)
    write_fxi(tmp_path / "f.h5", wrapped, flats=f16, darks=d[None], energies_ev=scene.energies_ev)
    with pytest.raises(XanestrackError, match=r"int16 counts of its flat \(reference\) images .* wrap around"):
        read_stack(tmp_path / "f.h5")
    # integer counts without flats are refused as before, now naming the wrap too
    tifffile.imwrite(tmp_path / "c.tif", wrapped, photometric="minisblack")
    np.savetxt(tmp_path / "e.txt", scene.energies_ev)
    with pytest.raises(XanestrackError, match="raw counts, which need .*int16 values are negative.*wrapped around"):
        read_stack(tmp_path / "c.tif", energies=tmp_path / "e.txt")


def test_signed_data_that_did_not_wrap_read_as_before(tmp_path, scene):
    """Controls: int16 counts below 32767, uint16 counts, a few negative counts (under 0.01 %), a camera's noise just
    below its subtracted offset, and optical density x 1000 as int16 with `values` od (legitimately signed)."""
    from xanestrack.io import read_stack

    c, f, d = _bright(scene)
    half = (c / 2).round()
    kw = _write(tmp_path, half.astype(np.int16), f / 2, d / 2, scene.energies_ev)
    base = read_stack(tmp_path / "c.tif", **kw, zingers=False).od
    tifffile.imwrite(tmp_path / "c.tif", half.astype(np.uint16), photometric="minisblack")
    assert np.array_equal(base, read_stack(tmp_path / "c.tif", **kw, zingers=False).od)
    few = half.astype(np.int16)
    few[3, 10, 10:12] = -30000  # 2 of 262,144 values (0.0008 %)
    tifffile.imwrite(tmp_path / "c.tif", few, photometric="minisblack")
    read_stack(tmp_path / "c.tif", **kw, zingers=False)
    noise = half.astype(np.int16)
    noise[:, :8, :8] = -3  # 0.4 % just below zero: not a wrap
    tifffile.imwrite(tmp_path / "c.tif", noise, photometric="minisblack")
    read_stack(tmp_path / "c.tif", **kw, zingers=False)

    od = scene.optical_density()
    od1000 = ((od - np.median(od)) * 1000).round().astype(np.int16)  # OD against the background, x 1000
    assert (od1000 < 0).mean() > 0.1
    tifffile.imwrite(tmp_path / "od.tif", od1000, photometric="minisblack")
    st = read_stack(tmp_path / "od.tif", energies=kw["energies"], values="od", zingers=False)
    assert np.array_equal(st.od, od1000.astype(np.float32))
    assert not any("wrap" in n for n in st.metadata["notes"])
    with pytest.raises(XanestrackError, match="look like raw counts") as exc:  # refused under auto, as before
        read_stack(tmp_path / "od.tif", energies=kw["energies"])
    assert "wrap" not in str(exc.value)


# ---------------------------------------------------------------- finding 4: a cube with its energy axis last


@pytest.fixture(scope="module")
def cube():
    """The probe's scene (synth --seed 2 --size 160 --n-energies 160 --n-particles 2 --max-radius 14)."""
    from xanestrack.synth import make_synthetic_stack

    return make_synthetic_stack(
        "default", seed=2, n_energies=160, shape=(160, 160), n_particles=2, radius_range=(10.0, 14.0)
    )


def test_a_cube_saved_energy_last_is_refused_asking_for_the_axis(tmp_path, cube):
    from xanestrack.cli import app
    from xanestrack.io import read_stack

    np.savetxt(tmp_path / "e.txt", cube.energies_ev)
    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(cube.counts, 0, -1), photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", np.moveaxis(cube.flats, 0, -1), photometric="minisblack")
    kw = dict(energies=tmp_path / "e.txt", flats=tmp_path / "f.tif")
    with pytest.raises(XanestrackError, match=r"is the energy axis last\? It must be first") as exc:
        read_stack(tmp_path / "c.tif", **kw)
    assert "np.moveaxis(a, 2, 0)" in str(exc.value)
    r = CliRunner().invoke(
        app, ["run", str(tmp_path / "c.tif"), *(f"--{k}={v}" for k, v in kw.items()), "--out", str(tmp_path / "o")]
    )
    error_line(r, "is the energy axis last?", "np.moveaxis")
    # optical density saved (rows, energies, cols): its second axis
    tifffile.imwrite(tmp_path / "od.tif", np.moveaxis(cube.optical_density(), 0, 1), photometric="minisblack")
    with pytest.raises(XanestrackError, match=r"is the energy axis second\?"):
        read_stack(tmp_path / "od.tif", energies=tmp_path / "e.txt", values="od")


@pytest.mark.parametrize("seed", [1, 2])
def test_a_cube_saved_energy_first_reads_as_before(tmp_path, cube, seed):
    """160 frames of 160 x 160 in the right order: read, as counts with flats and as optical density."""
    from xanestrack.io import read_stack
    from xanestrack.synth import make_synthetic_stack

    s = (
        cube
        if seed == 2
        else make_synthetic_stack(
            "default", seed=seed, n_energies=160, shape=(160, 160), n_particles=2, radius_range=(10.0, 14.0)
        )
    )
    np.savetxt(tmp_path / "e.txt", s.energies_ev)
    tifffile.imwrite(tmp_path / "c.tif", s.counts, photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", s.flats, photometric="minisblack")
    st = read_stack(tmp_path / "c.tif", energies=tmp_path / "e.txt", flats=tmp_path / "f.tif")
    assert st.od.shape == (160, 160, 160)
    tifffile.imwrite(tmp_path / "od.tif", s.optical_density(), photometric="minisblack")
    read_stack(tmp_path / "od.tif", energies=tmp_path / "e.txt", values="od")
