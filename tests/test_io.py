import shutil

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_data
from xanestrack.io import optical_density, read_stack
from xanestrack.io.hdf5 import write_fxi
from xanestrack.io.xrm import default_grouping, energy_from_name, read_xrm

E = np.linspace(8300.0, 8400.0, 5)


def _raw(shape=(5, 24, 40), seed=0):
    rng = np.random.default_rng(seed)
    flats = rng.uniform(900, 1100, shape).astype(np.float32)
    od = rng.uniform(0, 1, shape).astype(np.float32)
    dark = np.full(shape[1:], 50.0, np.float32)
    counts = (flats - dark) * np.exp(-od) + dark
    return counts, flats, dark, od


def test_optical_density_known_answer():
    counts, flats, dark, od = _raw()
    assert np.allclose(optical_density(counts, flats=flats, darks=dark), od, atol=1e-4)


def test_zero_or_negative_flat_is_refused_beyond_a_few_dead_pixels():
    counts, flats, dark, od = _raw()
    flats[2, 3, 4] = 50.0  # equals the dark: a dead pixel, no transmission measured there
    notes = []
    got = optical_density(counts, flats=flats, darks=dark, notes=notes)
    assert any("zero or negative at 1 pixels (dead detector pixels)" in n for n in notes)
    assert got[2, 3, 4] == got[2].max()  # the frame's strongest absorption, until the defect pass fills it
    keep = np.ones(od.shape, bool)
    keep[2, 3, 4] = False
    assert np.allclose(got[keep], od[keep], atol=1e-4)
    flats[2, :2] = 40.0  # 2 % of the frame: the reference is unusable
    with pytest.raises(ValueError, match="flat minus dark is zero or negative"):
        optical_density(counts, flats=flats, darks=dark)


def test_tiff_stack_non_square_with_keV_energies(tmp_path):
    counts, flats, dark, od = _raw((5, 24, 40))
    tifffile.imwrite(tmp_path / "s.tif", counts)
    tifffile.imwrite(tmp_path / "f.tif", flats)
    tifffile.imwrite(tmp_path / "d.tif", dark)
    (tmp_path / "e.txt").write_text("# energies in keV\n" + "\n".join(f"{e / 1000:.4f}" for e in E))
    st_ = read_stack(
        tmp_path / "s.tif", energies=tmp_path / "e.txt", flats=tmp_path / "f.tif", darks=tmp_path / "d.tif"
    )
    assert st_.od.shape == (5, 24, 40)
    assert np.allclose(st_.od, od, atol=1e-4)
    assert np.allclose(st_.energies_ev, E, atol=0.05)


def test_tiff_integer_counts_without_flats_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 10, 12), np.uint16))
    (tmp_path / "e.txt").write_text("\n".join(map(str, E)))
    with pytest.raises(ValueError, match="need `flats`"):
        read_stack(tmp_path / "s.tif", energies=tmp_path / "e.txt")


def test_energy_count_mismatch_duplicates_unsorted(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 10, 12), np.float32))
    for text, msg in (
        ("8300\n8310\n8320", "5 frames but 3 energies"),
        ("8300\n8310\n8310\n8320\n8330", "duplicate energy 8310"),
        ("8300\n8320\n8310\n8330\n8340", "not increasing"),
    ):
        (tmp_path / "e.txt").write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_stack(tmp_path / "s.tif", energies=tmp_path / "e.txt", values="od")


def test_a_scan_from_high_to_low_energy_is_read_in_increasing_energy(tmp_path):
    # a scan acquired downwards: FXI HDF5 (per-frame flats) and TIFF with an energies file
    counts, flats, dark, od = _raw((5, 24, 40))
    write_fxi(tmp_path / "up.h5", counts, flats=flats, darks=dark[None], energies_ev=E)
    write_fxi(tmp_path / "down.h5", counts[::-1], flats=flats[::-1], darks=dark[None], energies_ev=E[::-1])
    up, down = read_stack(tmp_path / "up.h5"), read_stack(tmp_path / "down.h5")
    assert np.array_equal(down.energies_ev, up.energies_ev)
    assert np.array_equal(down.od, up.od)  # frame k is the input's frame n - 1 - k
    assert down.metadata["frames_reversed"] and "frames_reversed" not in up.metadata
    assert any("frame k of every output is frame 4 - k of the input" in n for n in down.metadata["notes"])
    tifffile.imwrite(tmp_path / "s.tif", od[::-1])
    (tmp_path / "e.txt").write_text("\n".join(f"{e:.1f}" for e in E[::-1]))
    t = read_stack(tmp_path / "s.tif", energies=tmp_path / "e.txt", values="od")
    assert np.array_equal(t.energies_ev, E) and np.array_equal(t.od, od) and t.metadata["frames_reversed"]
    # down and then up again is not one scan: refused as before
    (tmp_path / "e.txt").write_text("8340\n8330\n8320\n8330\n8340")
    with pytest.raises(ValueError, match="not increasing"):
        read_stack(tmp_path / "s.tif", energies=tmp_path / "e.txt", values="od")


def test_a_frame_without_beam_is_named_in_the_input_notes(tmp_path):
    counts, flats, dark, od = _raw((5, 24, 40))
    counts[3] = dark  # the shutter closed: nothing above the dark
    counts[1, 0, :5] = dark[0, :5]  # and a few dead pixels elsewhere
    write_fxi(tmp_path / "fxi.h5", counts, flats=flats, darks=dark[None], energies_ev=E)
    st_ = read_stack(tmp_path / "fxi.h5")
    assert np.isfinite(st_.od[[0, 1, 2, 4]]).all() and np.allclose(st_.od[[0, 2, 4]], od[[0, 2, 4]], atol=1e-4)
    # the frame of the dark alone is carried as one without an image (NaN: the pipeline blanks it), said so
    assert np.isnan(st_.od[3]).all()
    (note,) = [n for n in st_.metadata["notes"] if "non-finite transmission" in n]
    assert "5 pixels in 1 frames" in note and "more than half" not in note
    (note,) = [n for n in st_.metadata["notes"] if "only the dark" in n]
    assert "input frame 3 (counted from 0) holds only the dark" in note and "without an image" in note


def test_fxi_hdf5_non_square_round_trip(tmp_path):
    counts, flats, dark, od = _raw((5, 24, 40))
    write_fxi(tmp_path / "fxi.h5", counts, flats=flats, darks=dark[None], energies_ev=E)
    st_ = read_stack(tmp_path / "fxi.h5")
    assert st_.od.shape == (5, 24, 40)
    assert np.allclose(st_.od, od, atol=1e-4)
    assert np.allclose(st_.energies_ev, E)


def test_dxchange_hdf5(tmp_path):
    counts, flats, dark, od = _raw((5, 24, 40))
    with h5py.File(tmp_path / "dx.h5", "w") as f:
        f["exchange/data"] = counts
        f["exchange/data_white"] = flats
        f["exchange/data_dark"] = np.stack([dark, dark])
        f["exchange/energy"] = E
    st_ = read_stack(tmp_path / "dx.h5")
    assert np.allclose(st_.od, od, atol=1e-4)


def test_hdf5_without_known_layout_or_truncated(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["foo"] = np.zeros(3)
    with pytest.raises(ValueError, match="no image dataset found"):
        read_stack(tmp_path / "x.h5")
    counts, flats, dark, _ = _raw()
    write_fxi(tmp_path / "fxi.h5", counts, flats=flats, darks=dark[None], energies_ev=E)
    data = (tmp_path / "fxi.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.h5"):
        read_stack(tmp_path / "cut.h5")


def test_zeiss_single_xrm_metadata():
    x = read_xrm(shared_data("zeiss", "test_chip00.xrm"))
    assert x.images.shape == (1, 512, 512) and x.images.dtype == np.uint16
    assert abs(x.energies_ev[0] - 7191.05) < 0.01
    assert abs(x.pixel_size_um - 0.0779) < 1e-3


def test_zeiss_txrm_energy_quirk():
    x = read_xrm(shared_data("zeiss", "txrm_test_chip_tomo.txrm"))
    assert x.images.shape == (7, 256, 256)
    assert np.allclose(x.energies_ev, x.energies_ev[0]) and x.notes


def test_zeiss_non_square_orientation(tmp_path):
    """Rewrite the size streams of a real file to 2048 x 512: rows must be 2048 wide."""
    import olefile

    src = shared_data("zeiss", "test_chip00.xrm")
    p = tmp_path / "ns.xrm"
    shutil.copy(src, p)
    with olefile.OleFileIO(str(src)) as o:
        raw = np.frombuffer(o.openstream("ImageData1/Image1").read(), "<u2")
    with olefile.OleFileIO(str(p), write_mode=True) as o:
        o.write_stream("ImageInfo/ImageWidth", np.array([1024], "<u4").tobytes())
        o.write_stream("ImageInfo/ImageHeight", np.array([256], "<u4").tobytes())
    x = read_xrm(p)
    assert x.images.shape == (1, 256, 1024)
    assert np.array_equal(x.images[0], raw.reshape(256, 1024))


@pytest.mark.parametrize(
    "name,msg",
    [
        ("rep02_000072_ref_20161456_ssrl-test-data_08348.0_eV_002of010.xrm", "no image stream"),
        ("rep02_000182_ref_20161456_ssrl-test-data_08400.0_eV_002of010.xrm", "6144 pixels"),
    ],
)
def test_real_truncated_xrm_files_give_clear_errors(name, msg):
    p = shared_data("real_txm", "ssrl_6-2c_nca", "truncated_stubs", name)
    with pytest.raises(ValueError, match=msg) as ei:
        read_xrm(p)
    assert name in str(ei.value)


def test_ssrl_folder_grouping():
    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    st_ = read_stack(folder)
    assert list(st_.energies_ev) == [8324.0, 8354.0]
    assert st_.od.shape == (2, 1024, 1024)
    g = st_.metadata["groups"]
    assert [len(x["samples"]) for x in g] == [3, 3] and [len(x["references"]) for x in g] == [10, 10]
    # the edge jump: more absorption above the Ni edge inside particles
    assert np.percentile(st_.od[1], 99) > np.percentile(st_.od[0], 99) + 0.2


def test_tiffs_beside_xrm_files_are_named_in_a_note(tmp_path):
    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    for f in folder.glob("*.xrm"):
        (tmp_path / f.name).symlink_to(f)
    import tifffile

    tifffile.imwrite(tmp_path / "exported_8324eV.tif", np.zeros((8, 8), np.float32))  # ignored without a word before
    notes = read_stack(tmp_path).metadata["notes"]
    assert any("1 TIFF file(s) beside the .xrm/.txrm files not read" in n for n in notes)


def test_grouping_rule():
    assert default_grouping("rep01_000051_ref_x_08324.0_eV_001of010.xrm", 0.0) == ("reference", 8324.0)
    assert default_grouping("rep01_x_08354.0_eV_001of003.xrm", np.nan) == ("sample", 8354.0)
    assert default_grouping("preference_scan_8333eV.xrm", 8340.0) == ("sample", 8340.0)
    assert energy_from_name("no_energy_here.xrm") is None


def test_missing_reference_energy_is_refused(tmp_path):
    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    for f in folder.glob("*.xrm"):
        if "ref" in f.name and "08354.0" in f.name:
            continue
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ValueError, match="no reference .* 8354.00 eV"):
        read_stack(tmp_path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.98), flip=st.integers(0, 10_000))
def test_fuzz_truncated_or_corrupted_xrm_never_crashes(tmp_path_factory, cut, flip):
    src = shared_data("zeiss", "txrm_test_chip_tomo.txrm")
    data = bytearray(src.read_bytes())
    data = data[: max(1, int(len(data) * cut))]
    if flip < len(data):
        data[flip] ^= 0xFF
    p = tmp_path_factory.mktemp("fz") / "f.txrm"
    p.write_bytes(bytes(data))
    try:
        x = read_xrm(p)
    except ValueError as exc:
        assert "f.txrm" in str(exc)
    else:
        assert x.images.ndim == 3 and x.images.shape[1:] == (256, 256)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.95))
def test_fuzz_truncated_tiff_never_crashes(tmp_path_factory, cut):
    d = tmp_path_factory.mktemp("tf")
    tifffile.imwrite(d / "s.tif", np.ones((5, 16, 20), np.float32))
    data = (d / "s.tif").read_bytes()
    (d / "c.tif").write_bytes(data[: int(len(data) * cut)])
    (d / "e.txt").write_text("\n".join(map(str, E)))
    try:
        read_stack(d / "c.tif", energies=d / "e.txt", values="od")
    except ValueError as exc:
        assert "c.tif" in str(exc)


def test_ole_reader_agrees_with_olefile_on_every_real_file():
    """Our numpy OLE2 reader against olefile (the oracle), stream by stream."""
    import olefile

    from xanestrack.io.ole import OleFile

    files = (
        sorted(shared_data("zeiss").glob("*.*rm")) + sorted(shared_data("real_txm", "ssrl_6-2c_nca").glob("*.xrm"))[:4]
    )
    for f in files:
        ours = OleFile(f)
        with olefile.OleFileIO(str(f)) as o:
            names = {"/".join(p) for p in o.listdir()}
            assert set(ours.paths) == names, f
            for n in sorted(names)[::7] + [n for n in names if n.startswith("ImageData")][:2]:
                assert ours.read(n) == o.openstream(n).read(), (f, n)


def test_xrm_scan_averaging_matches_independent_oracle():
    """Mean of exposure-normalised samples over mean of references, per energy (float64 oracle)."""
    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    st_ = read_stack(folder, zingers=False)  # the averaging alone (the zinger pass changes 10 pixels of the last rows)
    for k, e in enumerate(("08324.0", "08354.0")):
        rate = lambda f: read_xrm(f).images[0] / read_xrm(f).exposure_s[0]  # noqa: E731
        s = np.mean([rate(f) for f in sorted(folder.glob(f"rep01_2016*_{e}_eV_*.xrm"))], axis=0)
        r = np.mean([rate(f) for f in sorted(folder.glob(f"rep01_*_ref_*_{e}_eV_*.xrm"))], axis=0)
        assert np.abs(-np.log(s / r) - st_.od[k]).max() < 1e-5


def test_saturated_pixels_are_repaired_by_their_local_median(tmp_path):
    # a pixel the image clips is filled at once by the median of the 5 x 5 around it (not left NaN for the fill from
    # a patch's rim, which is for what the flats leave unknown: tests/test_clipped_images_fill.py)
    from scipy import ndimage

    from xanestrack.stack import sanitize_stack

    counts, flats, dark, od = _raw((5, 24, 40))
    c = counts.round().astype(np.uint16)
    c[2, 3, 4] = np.iinfo(np.uint16).max
    out = optical_density(c, flats=flats, darks=dark)
    assert np.isfinite(out).all()
    f = out[2].copy()
    f[3, 4] = np.median(np.delete(out[2].ravel(), 3 * 40 + 4))  # the frame's median stands in for the pixel itself
    assert out[2, 3, 4] == pytest.approx(ndimage.median_filter(f, size=5)[3, 4], abs=1e-6)
    clean, n = sanitize_stack(out)
    assert n == 0 and np.isfinite(clean).all()


def test_saturated_pixels_are_noted_for_the_user():
    counts, flats, dark, od = _raw()
    raw = np.round(counts).astype(np.uint16)
    raw[1, 5:7, 8] = 65535  # the detector's full scale: no count measured
    notes = []
    got = optical_density(raw, flats=flats, darks=dark, notes=notes)
    assert np.isfinite(got).all()  # filled by their local median (test above)
    (note,) = [n for n in notes if "saturated" in n]
    assert "2 saturated detector pixels (value 65535) in 1 frames" in note


@pytest.mark.parametrize("compression", ["lzw", "zstd"])
def test_compressed_tiff_stacks_are_read(tmp_path, compression):
    # refused before: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package" (a formats probe)
    import tifffile

    od = np.random.default_rng(0).uniform(0, 1, (4, 32, 32)).astype(np.float32)
    kw = dict(predictor=True) if compression == "lzw" else {}
    tifffile.imwrite(tmp_path / "s.tif", od, compression=compression, photometric="minisblack", **kw)
    st = read_stack(tmp_path / "s.tif", energies=[8300.0, 8330.0, 8340.0, 8400.0], values="od", zingers=False)
    assert np.array_equal(st.od, od)


def test_a_tiff_stack_written_one_page_at_a_time_is_read(tmp_path):
    # tifffile's append=True makes a series per page: refused before as "frames split over 4 image series"
    import tifffile

    od = np.random.default_rng(1).uniform(0, 1, (4, 24, 20)).astype(np.float32)
    for f in od:
        tifffile.imwrite(tmp_path / "s.tif", f, append=True)
    st = read_stack(tmp_path / "s.tif", energies=[8300.0, 8330.0, 8340.0, 8400.0], values="od", zingers=False)
    assert np.array_equal(st.od, od)
    tifffile.imwrite(tmp_path / "m.tif", od[0], append=True)
    tifffile.imwrite(tmp_path / "m.tif", od[1].astype(np.float64), append=True)  # frames of two types
    with pytest.raises(ValueError, match="split over 2 image series of different shapes or types"):
        read_stack(tmp_path / "m.tif", energies=[8300.0, 8330.0], values="od")


def test_the_pixel_size_fxi_writes_is_read_where_it_names_its_unit(tmp_path):
    # FXI's /Pixel Size "21.3nm" was ignored (the radius range fell back to pixels, without a word)
    import h5py

    from xanestrack.io.hdf5 import read_hdf5, write_fxi

    counts = np.full((2, 16, 16), 500, np.uint16)
    for text, expect in ((b"21.3nm", 0.0213), (b"0.5 um", 0.5), (b"21.3", None)):
        p = tmp_path / f"s{len(text)}.h5"
        write_fxi(p, counts, flats=np.full((2, 16, 16), 1000.0), darks=np.zeros((16, 16)), energies_ev=[8300.0, 8400.0])
        with h5py.File(p, "a") as f:
            f["Pixel Size"] = text
        d = read_hdf5(p)
        assert d["pixel_size_um"] == (pytest.approx(expect) if expect else None)
        assert expect or any("names no unit" in n for n in d["notes"])


def test_data_exchange_energies_in_the_measurement_group_are_read(tmp_path):
    # /measurement/instrument/monochromator/energy, where /exchange/energy is missing: refused before
    import h5py

    from xanestrack.io.hdf5 import read_hdf5

    with h5py.File(tmp_path / "dx.h5", "w") as f:
        f["exchange/data"] = np.full((3, 16, 16), 500, np.uint16)
        f["exchange/data_white"] = np.full((3, 16, 16), 1000, np.uint16)
        f["measurement/instrument/monochromator/energy"] = [8.30, 8.34, 8.40]
        f["measurement/instrument/detector/x_pixel_size"] = 6.5
    d = read_hdf5(tmp_path / "dx.h5")
    assert np.allclose(d["energies_ev"], [8300.0, 8340.0, 8400.0]) and d["pixel_size_um"] is None
    assert any("x_pixel_size not read as the pixel size" in n for n in d["notes"])
    # one energy there (the monochromator's at one moment): the refusal says what it found
    from xanestrack.errors import XanestrackError

    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["exchange/data"] = np.full((3, 16, 16), 500, np.uint16)
        f["exchange/data_white"] = np.full((3, 16, 16), 1000, np.uint16)
        f["measurement/instrument/monochromator/energy"] = 8.324
    with pytest.raises(XanestrackError, match="monochromator/energy holds one energy, 8.324"):
        read_stack(tmp_path / "one.h5")


def test_the_pixel_size_an_imagej_or_ome_tiff_states_is_read(tmp_path):
    # ignored before, without a word (the radius range fell back to 7-60 px)
    import tifffile

    from xanestrack.io.tiff import tiff_pixel_size

    od = np.random.default_rng(0).uniform(0, 1, (4, 32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", od, imagej=True, resolution=(1 / 0.05, 1 / 0.05), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "ome.ome.tif", od, metadata={"axes": "TYX", "PhysicalSizeX": 0.04})
    tifffile.imwrite(tmp_path / "px.tif", od, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel"})
    assert tiff_pixel_size(tmp_path / "ij.tif") == pytest.approx(0.05)
    assert tiff_pixel_size(tmp_path / "ome.ome.tif") == pytest.approx(0.04)
    assert tiff_pixel_size(tmp_path / "px.tif") is None  # no length unit
    st = read_stack(tmp_path / "ij.tif", energies=[8300.0, 8330.0, 8340.0, 8400.0], values="od", zingers=False)
    assert st.pixel_size_um == pytest.approx(0.05) and any("pixel size 0.05 um" in n for n in st.metadata["notes"])


def _patterned_scan(rng, n=6, size=128):
    """Counts of a few discs moving across the frames under a flat with a pattern (mottle and dust), and the flat."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:size, 0:size]
    flat = 5000 * (1 + 0.03 * ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2) / 0.14)
    for _ in range(30):  # dust
        cy, cx = rng.uniform(0, size, 2)
        flat *= 1 - 0.2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4)
    frames = []
    for k in range(n):
        od = sum(0.8 * (np.hypot(yy - cy - 2 * k, xx - cx + k) < 12) for cy, cx in ((40, 40), (80, 90)))
        frames.append(rng.poisson(flat * np.exp(-od)).astype(np.float32))
    return np.stack(frames), flat.astype(np.float32)


def test_flats_turned_against_the_images_are_refused_and_shifted_ones_noted():
    # the real SSRL frames saved flipped against their flats: the OD was the flats' pattern, its blobs taken for
    # particles standing still (the sample moved 22 px), vouched for, nothing said
    from xanestrack.errors import XanestrackError

    rng = np.random.default_rng(0)
    counts, flat = _patterned_scan(rng)
    notes = []
    optical_density(counts, flats=flat, notes=notes)
    assert not [n for n in notes if "flats' pattern" in n]
    with pytest.raises(XanestrackError, match="only flipped up-down"):
        optical_density(counts[:, ::-1], flats=flat)
    with pytest.raises(XanestrackError, match="only turned by 90 degrees"):
        optical_density(np.rot90(counts, 1, axes=(1, 2)), flats=flat)
    # flats taken after the beam moved by (3, 2) px: the OD carries both patterns
    notes = []
    optical_density(counts, flats=np.roll(flat, (3, 2), axis=(0, 1)), notes=notes)
    (note,) = [n for n in notes if "flats' pattern" in n]
    assert "lies (+3, +2) px" in note and "shift them by (-3, -2) px" in note
    # flats without a pattern (a synthetic scan's) are not judged
    plain = np.full_like(flat, 5000.0)
    optical_density(rng.poisson(np.broadcast_to(plain, counts.shape)).astype(np.float32)[:, ::-1], flats=plain)


def test_flats_per_frame_whose_pattern_moves_with_the_energy_are_not_said_to_be_shifted():
    # each frame's flat right for it, the beam's pattern moving 12 px across the scan: set against the first flat
    # alone, the median of the frames was said to lie 9 px off, and the user told to shift correct flats
    rng = np.random.default_rng(2)
    counts, flat = _patterned_scan(rng, n=12)
    moved = np.stack([np.roll(flat, k, axis=1) for k in range(12)])
    frames = np.stack([rng.poisson(moved[k] * counts[k] / flat).astype(np.float32) for k in range(12)])
    notes = []
    optical_density(frames, flats=moved, notes=notes)
    assert not [n for n in notes if "flats' pattern" in n]


def test_zeiss_files_whose_pixel_sizes_differ_are_said(tmp_path):
    """Probe r52 "acq", F5: files of one scan whose ``PixelSize`` differ (0.4 % here) had the first file's taken for
    every size in um, unsaid; now a note gives the spread and which one is used. The real folder as it is: no note."""
    import olefile

    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    files = sorted(folder.glob("*.xrm"))
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    assert not any("pixel sizes differ" in n for n in read_stack(tmp_path).metadata["notes"])
    for f in sorted(tmp_path.glob("*08354*.xrm")):
        with olefile.OleFileIO(str(f)) as o:
            pix = np.frombuffer(o.openstream("ImageInfo/PixelSize").read(), "<f4").copy()
        with olefile.OleFileIO(str(f), write_mode=True) as o:
            o.write_stream("ImageInfo/PixelSize", (pix * np.float32(1.004)).astype("<f4").tobytes())
    st_ = read_stack(tmp_path)
    note = [n for n in st_.metadata["notes"] if "pixel sizes differ" in n]
    assert len(note) == 1 and "0.4 % apart" in note[0], st_.metadata["notes"]
    assert st_.pixel_size_um == pytest.approx(float(pix[0]), rel=1e-6)  # the first file's (8324 eV): unchanged
