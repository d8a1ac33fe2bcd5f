"""Readers' details as beamlines write them: ImageJ's escaped units, a monochromator's readback in Zeiss files,
singleton axes in HDF5, decimal marks in file names, flats given as a folder, attributes in HDF5."""

import shutil

import numpy as np
import pytest

from conftest import shared_data
from xanestrack.errors import XanestrackError
from xanestrack.io import read_stack

E = np.array([8300.0, 8320.0, 8333.0, 8340.0, 8360.0, 8400.0])


def _counts(n=6, shape=(24, 24), seed=0):
    """Raw counts with flats and a dark: a disc absorbing more above the edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 12) ** 2 + (xx - 12) ** 2 < 36
    flats = rng.normal(5000, 20, (n, *shape)).astype(np.float32)
    od = np.where(disc, 0.3, 0.0)[None] * (1 + (np.arange(n) >= 2))[:, None, None]
    counts = (flats * np.exp(-od) + 100).astype(np.uint16)
    return counts, (flats + 100).astype(np.uint16), np.full((1, *shape), 100, np.uint16)


# --- 2 / 8: units of pixel sizes -------------------------------------------------------------------------------


def test_um_per_unit_decodes_imagej_escapes_and_ignores_case():
    from xanestrack.units import um_per_unit

    assert um_per_unit("\\u00B5m") == 1.0  # ImageJ's "µm" as tifffile returns it
    assert um_per_unit("\\u03bcm") == 1.0
    assert um_per_unit("NM") == pytest.approx(1e-3)  # FXI's "21.3 NM"
    assert um_per_unit("Micron") == 1.0
    assert um_per_unit("mm") == 1e3
    assert um_per_unit("Mm") is None  # a megametre is not a millimetre
    assert um_per_unit("pixel") is None and um_per_unit("") is None


def test_an_imagej_tiff_in_escaped_micrometres_keeps_its_pixel_size(tmp_path):
    # ImageJ writes "µm" as unit=\u00B5m: the pixel size was None, without a word (scale bars and the um radius
    # range lost)
    import tifffile

    from xanestrack.io.tiff import tiff_pixel_size

    od = np.random.default_rng(0).uniform(0.1, 1, (len(E), 24, 24)).astype(np.float32)
    f = tmp_path / "um.tif"
    tifffile.imwrite(f, od, imagej=True, resolution=(1 / 0.0213, 1 / 0.0213), metadata={"unit": "\\u00B5m"})
    assert tiff_pixel_size(f) == pytest.approx(0.0213)
    st = read_stack(f, energies=E, values="od", zingers=False)
    assert st.pixel_size_um == pytest.approx(0.0213)
    assert not any("not understood" in n for n in st.metadata["notes"])


def test_a_tiff_unit_not_understood_is_said_and_pixel_is_silent(tmp_path):
    import tifffile

    od = np.random.default_rng(0).uniform(0.1, 1, (len(E), 24, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", od, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "furlong"})
    st = read_stack(tmp_path / "in.tif", energies=E, values="od", zingers=False)
    assert st.pixel_size_um is None
    assert any("'furlong', a unit not understood" in n for n in st.metadata["notes"])
    # control: an image not calibrated (unit=pixel) states no length: nothing to say
    tifffile.imwrite(tmp_path / "px.tif", od, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel"})
    st = read_stack(tmp_path / "px.tif", energies=E, values="od", zingers=False)
    assert st.pixel_size_um is None and not any("not understood" in n for n in st.metadata["notes"])


def _fxi(path, counts, flats, darks, energies=E, **extra):
    import h5py

    with h5py.File(path, "w") as h:
        h["img_xanes"], h["img_bkg"], h["img_dark"] = counts, flats, darks
        if energies is not None:
            h["X_eng"] = np.asarray(energies) / 1000.0
        for k, v in extra.items():
            h[k.replace("_", " ")] = v
    return path


def test_fxi_pixel_size_in_upper_case_is_read(tmp_path):
    c, f, d = _counts()
    st = read_stack(_fxi(tmp_path / "s.h5", c, f, d, Pixel_Size=b"21.3 NM"), zingers=False)
    assert st.pixel_size_um == pytest.approx(0.0213)
    assert not any("names no unit" in n for n in st.metadata["notes"])


# --- 8: attributes of an HDF5 file ------------------------------------------------------------------------------


def test_energies_kept_as_an_attribute_are_named_in_the_refusal(tmp_path):
    import h5py

    c, f, d = _counts()
    p = _fxi(tmp_path / "s.h5", c, f, d, energies=None)
    with h5py.File(p, "a") as h:
        h["img_xanes"].attrs["X_eng"] = E / 1000
        h["img_xanes"].attrs["length"] = 3.0  # no energy ("eng" inside a word)
    with pytest.raises(XanestrackError, match=r"no energy dataset /X_eng") as ei:
        read_stack(p)
    assert "attribute 'X_eng' (6 values)" in str(ei.value) and "length" not in str(ei.value)


def test_a_pixel_size_attribute_is_used_where_its_name_gives_the_unit_else_said(tmp_path):
    import h5py

    c, f, d = _counts()
    p = _fxi(tmp_path / "s.h5", c, f, d)
    with h5py.File(p, "a") as h:
        h["img_xanes"].attrs["pixel_size"] = 0.0213
        h["img_xanes"].attrs["units"] = "um"  # the images' unit, or the pixel size's? cannot be told
    st = read_stack(p, zingers=False)
    assert st.pixel_size_um is None
    assert any("attribute 'pixel_size' = 0.0213 not read as the pixel size" in n for n in st.metadata["notes"])
    with h5py.File(p, "a") as h:
        h["img_xanes"].attrs["pixel_size_nm"] = 21.3
    st = read_stack(p, zingers=False)
    assert st.pixel_size_um == pytest.approx(0.0213)
    assert any("from the attribute 'pixel_size_nm'" in n for n in st.metadata["notes"])


# --- 5: singleton axes in HDF5 ----------------------------------------------------------------------------------


def test_hdf5_frames_with_a_singleton_axis_are_one_scan(tmp_path):
    # (n, 1, rows, cols) was sent to `series`, which failed once per frame; darks (1, 1, rows, cols) "differ from the
    # data images"
    c, f, d = _counts()
    ref = read_stack(_fxi(tmp_path / "flat.h5", c, f, d), zingers=False)
    st = read_stack(_fxi(tmp_path / "one.h5", c[:, None], f[:, None], d[:, None]), zingers=False)
    assert st.od.shape == ref.od.shape
    np.testing.assert_array_equal(st.od, ref.od)
    assert any("read as one scan" in n for n in st.metadata["notes"])
    assert not any("read as one scan" in n for n in ref.metadata["notes"])
    # control: a real scan axis (2 scans) is still a series
    with pytest.raises(XanestrackError, match="has a scan axis"):
        read_stack(_fxi(tmp_path / "two.h5", np.stack([c, c]), f, d))
    # and `series` takes the singleton file as one scan, not as one scan per frame
    from xanestrack.series import series_sources

    assert len(series_sources([tmp_path / "one.h5"])) == 1
    assert len(series_sources([tmp_path / "two.h5"])) == 2


def test_the_default_scene_in_fxi_gets_none_of_the_new_notes(tmp_path):
    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.synth import make_synthetic_stack

    scene = make_synthetic_stack(
        "default", seed=1, n_energies=20, shape=(128, 128), n_particles=2, radius_range=(8.0, 12.0)
    )
    write_fxi(
        tmp_path / "s.h5",
        scene.counts.astype(np.uint16),
        flats=scene.flats.astype(np.uint16),
        darks=scene.dark[None].astype(np.uint16),
        energies_ev=scene.energies_ev,
    )
    st = read_stack(tmp_path / "s.h5", zingers=False)
    notes = " ".join(st.metadata["notes"])
    for said in ("one scan", "attribute", "not understood", "names no unit", "readback"):
        assert said not in notes


# --- 6: decimal marks in file names -----------------------------------------------------------------------------


def _frames_folder(folder, names, seed=0):
    import tifffile

    folder.mkdir()
    od = np.random.default_rng(seed).uniform(0.1, 1, (len(names), 24, 24)).astype(np.float32)
    for name, frame in zip(names, od):
        tifffile.imwrite(folder / name, frame)
    return folder


def test_p_as_the_decimal_mark_in_names(tmp_path):
    folder = _frames_folder(tmp_path / "p", [f"scan_{e:.1f}eV.tif".replace(".", "p", 1) for e in E + 0.5])
    st = read_stack(folder, values="od", zingers=False)
    np.testing.assert_allclose(st.energies_ev, E + 0.5)


def test_an_underscore_decimal_mark_is_refused_naming_the_file_and_what_was_read(tmp_path):
    # read as "duplicate energy 0.00 eV at frames 0 and 1", naming no file
    folder = _frames_folder(tmp_path / "u", [f"scan_{e:.1f}eV.tif".replace(".", "_", 1) for e in E])
    with pytest.raises(XanestrackError, match=r"scan_8300_0eV\.tif: energy read as 0 eV from its name") as ei:
        read_stack(folder, values="od")
    assert "8300.0 eV?" in str(ei.value) and "`energies`" in str(ei.value)
    # the way out it names: the energies given
    st = read_stack(folder, energies=E, values="od", zingers=False)
    np.testing.assert_allclose(st.energies_ev, E)


def test_a_frame_number_before_the_energy_is_not_a_decimal(tmp_path):
    # control: frame_001_8300.0eV: "_" separates a frame number, the energy is read as before
    folder = _frames_folder(tmp_path / "n", [f"frame_{k:03d}_{e:.1f}eV.tif" for k, e in enumerate(E)])
    st = read_stack(folder, values="od", zingers=False)
    np.testing.assert_allclose(st.energies_ev, E)


# --- 7: flats given as a folder ---------------------------------------------------------------------------------


def test_flats_given_as_a_folder_of_one_image_each(tmp_path):
    import tifffile

    c, f, d = _counts()
    tifffile.imwrite(tmp_path / "stack.tif", c, photometric="minisblack")
    tifffile.imwrite(tmp_path / "flats.tif", f, photometric="minisblack")
    (tmp_path / "flats").mkdir()
    for k, flat in enumerate(f):
        tifffile.imwrite(tmp_path / "flats" / f"flat_{k}.tif", flat)  # flat_10 after flat_9 were there ten
    ref = read_stack(tmp_path / "stack.tif", energies=E, flats=tmp_path / "flats.tif", zingers=False)
    st = read_stack(tmp_path / "stack.tif", energies=E, flats=tmp_path / "flats", zingers=False)
    np.testing.assert_array_equal(st.od, ref.od)
    assert any("a folder of 6 TIFF files, one image each" in n for n in st.metadata["notes"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(XanestrackError, match="a folder holding no TIFF file"):
        read_stack(tmp_path / "stack.tif", energies=E, flats=tmp_path / "empty")


# --- 4: a monochromator's readback in Zeiss files -----------------------------------------------------------------


def _zeiss(folder, energies):
    """Copies of a real .xrm (one 512 x 512 image, its own reference inside), named and with ImageInfo/Energy set:
    ``energies`` maps a name to the energy written."""
    import olefile

    src = shared_data("zeiss", "test_chip00.xrm")
    folder.mkdir()
    for name, e in energies.items():
        p = folder / name
        shutil.copy(src, p)
        p.chmod(0o644)
        with olefile.OleFileIO(str(p), write_mode=True) as o:
            o.write_stream("ImageInfo/Energy", np.array([e], "<f4").tobytes())
    return folder


READBACK = {  # two energies, 8324 and 8354 eV, each image's energy a readback a few 0.01 eV off
    "s_08324.0_eV_001of002.xrm": 8323.98,
    "s_08324.0_eV_002of002.xrm": 8324.03,
    "s_ref_08324.0_eV_001of002.xrm": 8324.01,
    "s_ref_08324.0_eV_002of002.xrm": 8323.96,
    "s_08354.0_eV_001of002.xrm": 8354.02,
    "s_08354.0_eV_002of002.xrm": 8353.97,
    "s_ref_08354.0_eV_001of002.xrm": 8354.04,
    "s_ref_08354.0_eV_002of002.xrm": 8353.99,
}


def test_zeiss_readback_energies_are_matched_within_a_tolerance(tmp_path):
    # refused before: "no reference (flat) images for 8323.98 eV ... add reference files"
    st = read_stack(_zeiss(tmp_path / "rb", READBACK), zingers=False)
    np.testing.assert_allclose(st.energies_ev, [8324.005, 8353.995], atol=1e-3)  # the samples' readbacks' means
    assert [len(g["samples"]) for g in st.metadata["groups"]] == [2, 2]
    assert [len(g["references"]) for g in st.metadata["groups"]] == [2, 2]
    assert any("ImageInfo/Energy: the monochromator's readback?" in n for n in st.metadata["notes"])


def test_zeiss_samples_with_their_own_reference_are_one_energy_per_set_energy(tmp_path):
    # each sample carries ReferenceData: read as 4 frames a few 0.01 eV apart before
    samples = {k: v for k, v in READBACK.items() if "_ref_" not in k}
    st = read_stack(_zeiss(tmp_path / "own", samples), zingers=False)
    assert st.od.shape[0] == 2


def test_zeiss_exact_energies_are_read_as_before(tmp_path):
    # control: energies set exactly, no readback: no note, the energies as written
    exact = {k: float(k.split("_eV")[0][-7:]) for k in READBACK}
    st = read_stack(_zeiss(tmp_path / "ex", exact), zingers=False)
    assert list(st.energies_ev) == [8324.0, 8354.0]
    assert not any("readback" in n for n in st.metadata["notes"])


def test_zeiss_refusal_names_the_references_energies(tmp_path):
    # a sample 0.5 eV from every reference (the SSRL files: no reference inside the samples): refused, saying where
    # the references are
    import olefile

    src = shared_data("real_txm", "ssrl_6-2c_nca")
    folder = tmp_path / "far"
    folder.mkdir()
    names = [
        "rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm",
        "rep01_000051_ref_20161456_ssrl-test-data_08324.0_eV_001of010.xrm",
        "rep01_000351_ref_20161456_ssrl-test-data_08354.0_eV_001of010.xrm",
    ]
    for name, e in zip(names, (8323.5, 8324.0, 8354.0)):
        shutil.copy(src / name, folder / name)
        (folder / name).chmod(0o644)
        with olefile.OleFileIO(str(folder / name), write_mode=True) as o:
            raw = np.frombuffer(o.openstream("ImageInfo/Energy").read(), "<f4").copy()
            raw[:] = 0
            raw[0] = e
            o.write_stream("ImageInfo/Energy", raw.tobytes())
    with pytest.raises(XanestrackError, match=r"within 0.1 eV of 8323.50 eV") as ei:
        read_stack(folder)
    assert "the references are at 8324.00, 8354.00 eV (the nearest 0.50 eV away)" in str(ei.value)
