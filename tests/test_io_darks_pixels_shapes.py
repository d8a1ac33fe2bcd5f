"""Inputs as files carry them (probe round 11): a dark that is a placeholder of zeros, pixel sizes stated per axis
that differ (pixels not square), an HDF5 stack with a trailing axis of length 1, and two messages on pixel sizes."""

import h5py
import numpy as np
import pytest

from xanestrack.errors import XanestrackError
from xanestrack.io import read_stack

E = np.array([8300.0, 8320.0, 8333.0, 8340.0, 8360.0, 8400.0])
SHAPE = (24, 24)


def _counts(shape=SHAPE, seed=0):
    """Raw counts with flats (one per frame) and a measured dark (100 counts and read noise): a disc absorbing
    more above the edge."""
    n, rng = len(E), np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 12) ** 2 + (xx - 12) ** 2 < 36
    dark = rng.normal(100, 2, (1, *shape)).astype(np.float32)
    flats = rng.normal(5000, 20, (n, *shape)).astype(np.float32)
    od = np.where(disc, 0.3, 0.0)[None] * (1 + (np.arange(n) >= 2))[:, None, None]
    counts = np.round(flats * np.exp(-od) + dark).astype(np.uint16)
    return counts, np.round(flats + dark).astype(np.uint16), np.round(dark).astype(np.uint16)


def _fxi(path, counts, flats, darks, *, root_attrs=None, **datasets):
    with h5py.File(path, "w") as h:
        h["img_xanes"], h["img_bkg"] = counts, flats
        if darks is not None:
            h["img_dark"] = darks
        h["X_eng"] = E / 1000.0
        for k, v in (root_attrs or {}).items():
            h.attrs[k] = v
        for k, v in datasets.items():
            h[k.replace("__", " ")] = v
    return path


def _notes(st) -> str:
    return " | ".join(st.metadata["notes"])


# --- F2: a dark of zeros everywhere is no dark -------------------------------------------------------------------


def test_a_dark_of_zeros_everywhere_is_said_as_no_dark(tmp_path):
    # /img_dark all zeros (an export's placeholder) passed unsaid (the probe's scene: every mean E50 -0.02 to -0.04
    # eV, up to 7 sigma), where the same file without /img_dark got "dark taken as 0"
    c, f, d = _counts()
    zeros = read_stack(_fxi(tmp_path / "zeros.h5", c, f, np.zeros_like(d)), zingers=False)
    none = read_stack(_fxi(tmp_path / "none.h5", c, f, None), zingers=False)
    np.testing.assert_array_equal(zeros.od, none.od)  # the same assumption ...
    assert "no dark images" in _notes(none)
    assert "dark images are 0 everywhere" in _notes(zeros) and "dark taken as 0" in _notes(zeros)  # ... now said
    # one per frame, read a frame at a time: said once
    per_frame = read_stack(_fxi(tmp_path / "zeros_n.h5", c, f, np.zeros((len(E), *SHAPE), np.uint16)), zingers=False)
    assert _notes(per_frame).count("0 everywhere") == 1
    np.testing.assert_array_equal(per_frame.od, none.od)


def test_a_dark_of_zeros_from_tiff_is_said_too(tmp_path):
    import tifffile

    c, f, d = _counts()
    for name, a in (("c.tif", c), ("f.tif", f), ("d0.tif", np.zeros_like(d[0])), ("d.tif", d[0])):
        tifffile.imwrite(tmp_path / name, a)
    kw = dict(energies=E, flats=tmp_path / "f.tif", zingers=False)
    st = read_stack(tmp_path / "c.tif", darks=tmp_path / "d0.tif", **kw)
    assert "dark images are 0 everywhere" in _notes(st)
    st = read_stack(tmp_path / "c.tif", darks=tmp_path / "d.tif", **kw)  # control: a measured dark
    assert "everywhere" not in _notes(st) and "dark taken as" not in _notes(st)


def test_measured_or_quantised_darks_are_not_placeholders(tmp_path):
    c, f, d = _counts()
    # a measured dark (100 +- 2 counts), one per frame whose first alone is zeros, a dark of 3 everywhere (an 8-bit
    # export of 100 counts / 32): subtracted as given, nothing said
    first_zero = np.repeat(d, len(E), axis=0)
    first_zero[0] = 0
    for name, darks in (("measured", d), ("first_zero", first_zero), ("three", np.full_like(d, 3))):
        st = read_stack(_fxi(tmp_path / f"{name}.h5", c, f, darks), zingers=False)
        assert "everywhere" not in _notes(st) and "dark taken as" not in _notes(st), name


def test_optical_density_says_a_placeholder_dark(caplog):
    from xanestrack.io.flatfield import optical_density

    c, f, d = _counts()
    notes = []
    optical_density(c, flats=f, darks=np.zeros(SHAPE, np.float32), notes=notes, source="s")
    assert any("s: its dark images are 0 everywhere" in n for n in notes)
    notes = []
    optical_density(c, flats=f, darks=np.ones((2, *SHAPE), np.float32), notes=notes, source="s")
    assert any("are 1 everywhere" in n and "dark taken as 1" in n for n in notes)
    notes = []
    optical_density(c, flats=f, darks=d, notes=notes, source="s")
    assert not any("everywhere" in n for n in notes)


# --- F3: pixels that are not square --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"x_pixel_size_um": 0.0426, "y_pixel_size_um": 0.0213},
        {"y_pixel_size_um": 0.0213, "x_pixel_size_um": 0.0426},
        {"pixel_size_um": np.array([0.0426, 0.0213])},
    ],
)
def test_hdf5_pixel_size_attributes_per_axis_that_differ_are_not_used(tmp_path, attrs):
    # only x_pixel_size_um was read (0.0426), y dropped without a word: every size along y 2x off, the 0.4 um least
    # radius 9.39 px instead of 18.8 (the probe lost its r = 9.85 px particle)
    c, f, d = _counts()
    st = read_stack(_fxi(tmp_path / "s.h5", c, f, d, root_attrs=attrs), zingers=False)
    assert st.pixel_size_um is None
    (note,) = [n for n in st.metadata["notes"] if "not square" in n]
    assert "0.0426 um" in note and "0.0213 um" in note and "resample the frames to square pixels" in note


def test_hdf5_pixel_size_vector_dataset_that_differs_is_not_used(tmp_path):
    c, f, d = _counts()
    st = read_stack(_fxi(tmp_path / "v.h5", c, f, d, pixel_size_um=np.array([0.0426, 0.0213])), zingers=False)
    assert st.pixel_size_um is None and "not square, 0.0426 um (first), 0.0213 um (second)" in _notes(st)
    # controls: the same size twice, and one number, are read as before (no note)
    for name, v in (("two", np.array([0.0213, 0.0213])), ("one", 0.0213)):
        st = read_stack(_fxi(tmp_path / f"{name}.h5", c, f, d, pixel_size_um=v), zingers=False)
        assert st.pixel_size_um == pytest.approx(0.0213) and "square" not in _notes(st), name


def test_hdf5_pixel_sizes_per_axis_within_one_percent_are_square(tmp_path):
    c, f, d = _counts()
    for name, attrs in (
        ("xy", {"x_pixel_size_um": 0.0213, "y_pixel_size_um": 0.02135}),  # 0.2 % apart: rounding
        ("x", {"x_pixel_size_um": 0.0213}),  # x alone: as before
        ("plain", {"pixel_size_nm": 21.3}),
    ):
        st = read_stack(_fxi(tmp_path / f"{name}.h5", c, f, d, root_attrs=attrs), zingers=False)
        assert st.pixel_size_um == pytest.approx(0.0213), name
        assert "not square" not in _notes(st) and "pixel size 0.0213 um, from the attribute" in _notes(st), name


def _with_image_attrs(path, **attrs):
    with h5py.File(path, "a") as h:
        for k, v in attrs.items():
            h["img_xanes"].attrs[k] = v
    return path


def test_hdf5_pixel_sizes_split_between_the_root_and_the_images_are_read_together(tmp_path):
    # x on the root, y on /img_xanes: the root's x size alone was taken (0.0426), the y size never read
    c, f, d = _counts()
    for name, root, image in (
        ("x_root", {"x_pixel_size_um": 0.0426}, {"y_pixel_size_um": 0.0213}),
        ("y_root", {"y_pixel_size_um": 0.0213}, {"x_pixel_size_um": 0.0426}),
    ):
        path = _with_image_attrs(_fxi(tmp_path / f"{name}.h5", c, f, d, root_attrs=root), **image)
        st = read_stack(path, zingers=False)
        assert st.pixel_size_um is None, name
        (note,) = [n for n in st.metadata["notes"] if "not square" in n]
        assert "0.0426 um (x), 0.0213 um (y)" in note and " of /, " in note and "of /img_xanes" in note, name
    # control: the same size split so is read, naming both
    path = _fxi(tmp_path / "same.h5", c, f, d, root_attrs={"x_pixel_size_um": 0.0213})
    st = read_stack(_with_image_attrs(path, y_pixel_size_um=0.0213), zingers=False)
    assert st.pixel_size_um == pytest.approx(0.0213) and "not square" not in _notes(st)
    assert "from the attributes 'x_pixel_size_um' of /, 'y_pixel_size_um' of /img_xanes" in _notes(st)


def test_hdf5_pixel_size_of_three_values_is_a_voxels_z_y_x(tmp_path):
    # [1.0, 0.0213, 0.0213]: a voxel's size, z first; called "not square, 47 times apart" and dropped
    c, f, d = _counts()
    for name, kw in (
        ("dataset", dict(pixel_size_um=np.array([1.0, 0.0213, 0.0213]))),
        ("attribute", dict(root_attrs={"pixel_size_um": np.array([1.0, 0.0213, 0.0213])})),
    ):
        st = read_stack(_fxi(tmp_path / f"{name}.h5", c, f, d, **kw), zingers=False)
        assert st.pixel_size_um == pytest.approx(0.0213) and "square" not in _notes(st), name
    # the image's two sizes that differ are said as before, as x and y
    st = read_stack(_fxi(tmp_path / "xy.h5", c, f, d, pixel_size_um=np.array([1.0, 0.0213, 0.0426])), zingers=False)
    assert st.pixel_size_um is None
    assert "not square, 0.0426 um (x), 0.0213 um (y) (the last two of the 3 values of /pixel_size_um" in _notes(st)


def test_imagej_and_ome_tiffs_with_pixels_not_square(tmp_path):
    import tifffile

    from xanestrack.io.tiff import tiff_pixel_size

    od = np.random.default_rng(0).uniform(0.1, 1, (len(E), *SHAPE)).astype(np.float32)
    cases = {
        "ij_ns.tif": (dict(imagej=True, resolution=(1 / 0.0426, 1 / 0.0213), metadata={"unit": "um"}), None),
        "ij_sq.tif": (dict(imagej=True, resolution=(1 / 0.0213, 1 / 0.0213), metadata={"unit": "um"}), 0.0213),
        "ome_ns.ome.tif": (
            dict(metadata={"axes": "ZYX", "PhysicalSizeX": 21.3, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 42.6}),
            None,  # y in OME's default unit, um: 42.6 um against 21.3 nm
        ),
        "ome_ns2.ome.tif": (
            dict(
                metadata={
                    "axes": "ZYX",
                    **{"PhysicalSizeX": 21.3, "PhysicalSizeXUnit": "nm"},
                    **{"PhysicalSizeY": 42.6, "PhysicalSizeYUnit": "nm"},
                }
            ),
            None,
        ),
        "ome_sq.ome.tif": (
            dict(
                metadata={
                    "axes": "ZYX",
                    **{"PhysicalSizeX": 21.3, "PhysicalSizeXUnit": "nm"},
                    **{"PhysicalSizeY": 0.0213, "PhysicalSizeYUnit": "\u00b5m"},
                }
            ),
            0.0213,
        ),
    }
    for name, (kw, want) in cases.items():
        tifffile.imwrite(tmp_path / name, od, **kw)
        notes = []
        got = tiff_pixel_size(tmp_path / name, notes=notes)
        st = read_stack(tmp_path / name, energies=E, values="od", zingers=False)
        if want is None:
            assert got is None and st.pixel_size_um is None, name
            assert any("not square" in n for n in notes) and "not square" in _notes(st), name
        else:
            assert got == pytest.approx(want) and st.pixel_size_um == pytest.approx(want), name
            assert not notes and "not square" not in _notes(st), name


# --- F4: an HDF5 stack with a trailing axis of length 1 ------------------------------------------------------------


def test_hdf5_frames_with_a_trailing_axis_of_length_1_are_read(tmp_path):
    # (frames, rows, cols, 1) was refused with "has a scan axis; process it with 'xanestrack series'", and `series`
    # refused it as frames of 24 x 1 pixels; the same stack as a TIFF was read
    from xanestrack.io import check_run_memory
    from xanestrack.series import series_sources

    c, f, d = _counts()
    ref = read_stack(_fxi(tmp_path / "ref.h5", c, f, d), zingers=False)
    p = _fxi(tmp_path / "nrc1.h5", c[..., None], f[..., None], d[..., None])
    st = read_stack(p, zingers=False)
    np.testing.assert_array_equal(st.od, ref.od)
    assert f"/img_xanes {c[..., None].shape} read as {c.shape}" in _notes(st)
    assert "read as" not in _notes(ref)  # control: a 3-D stack, nothing said
    assert len(series_sources([p])) == 1
    with pytest.raises(XanestrackError, match="has no scan axis; read it as one scan"):
        read_stack(p, scan=0)
    assert check_run_memory(p, learned_models=False) == check_run_memory(tmp_path / "ref.h5", learned_models=False)


def test_a_scan_axis_with_a_trailing_axis_of_length_1_is_a_series(tmp_path):
    from xanestrack.series import series_sources

    c, f, d = _counts()
    ref = read_stack(_fxi(tmp_path / "ref.h5", c, f, d), zingers=False)
    p = _fxi(tmp_path / "s.h5", np.stack([c, c])[..., None], np.stack([f, f])[..., None], d[..., None])
    with pytest.raises(XanestrackError, match="has a scan axis"):
        read_stack(p)
    assert len(series_sources([p])) == 2
    np.testing.assert_array_equal(read_stack(p, scan=1, zingers=False).od, ref.od)
    # control: a plain scan axis, as before
    q = _fxi(tmp_path / "s4.h5", np.stack([c, c]), np.stack([f, f]), d)
    assert len(series_sources([q])) == 2
    np.testing.assert_array_equal(read_stack(q, scan=1, zingers=False).od, ref.od)


def test_hdf5_frames_of_colour_values_are_refused_as_such(tmp_path):
    from xanestrack.series import series_sources

    c, f, d = _counts()
    p = _fxi(tmp_path / "rgb.h5", np.repeat(c[..., None], 3, -1), f, d)
    for scan in (None, 0):
        with pytest.raises(XanestrackError, match=r"3 values per pixel along its last axis \(colour channels\?\)"):
            read_stack(p, scan=scan)
    assert len(series_sources([p])) == 1  # not one scan per frame: the reader refuses it, saying why


# --- F5: messages on pixel sizes -----------------------------------------------------------------------------------


def test_pixel_size_messages_name_what_the_file_holds(tmp_path):
    c, f, d = _counts()
    st = read_stack(_fxi(tmp_path / "m.h5", c, f, d, Pixel__Size=b"2.13e-8 m"), zingers=False)
    assert st.pixel_size_um is None and "names the unit 'm', not one understood" in _notes(st)
    st = read_stack(_fxi(tmp_path / "n.h5", c, f, d, Pixel__Size=b"21.3"), zingers=False)
    assert "names no unit" in _notes(st)
    # a dataset /pixel_size (no unit in its name) was ignored without a word, an attribute of that name said
    st = read_stack(_fxi(tmp_path / "p.h5", c, f, d, pixel_size=0.0213), zingers=False)
    assert st.pixel_size_um is None and "/pixel_size = 0.0213 not read as the pixel size" in _notes(st)
    # controls: a unit understood, and no pixel size at all: nothing said
    st = read_stack(_fxi(tmp_path / "nm.h5", c, f, d, Pixel__Size=b"21.3nm"), zingers=False)
    assert st.pixel_size_um == pytest.approx(0.0213) and "pixel" not in _notes(st).lower()
    st = read_stack(_fxi(tmp_path / "no.h5", c, f, d), zingers=False)
    assert st.pixel_size_um is None and not st.metadata["notes"]
