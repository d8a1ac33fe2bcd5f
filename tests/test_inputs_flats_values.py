"""Flats and pixel values that were read silently wrong: saturated flats, transmission or optical density given with
flats, half the frames without an image, counts said to be optical density, flats darker than the images."""

import numpy as np
import pytest
import tifffile

from xanestrack.errors import XanestrackError, for_cli
from xanestrack.io import optical_density, read_stack

N = 20
E = np.linspace(8300.0, 8400.0, N)


def _scan(shape=(64, 64), level=5000.0, seed=0):
    """Counts, flats (one per frame) and the dark of a matrix (OD 0.02-0.1) with two particles (OD 1), and the OD."""
    rng = np.random.default_rng(seed)
    flats = (rng.uniform(0.9, 1.1, (N, *shape)) * level).astype(np.float32)
    od = rng.uniform(0.02, 0.1, (N, *shape)).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y, x in ((20, 20), (40, 44)):
        od[:, (yy - y) ** 2 + (xx - x) ** 2 < 64] += 1.0
    dark = np.full(shape, 100.0, np.float32)
    counts = (flats - dark) * np.exp(-od) + dark
    return counts, flats, dark, od


def _tiffs(tmp_path, counts, flats, dark=None):
    tifffile.imwrite(tmp_path / "s.tif", counts)
    tifffile.imwrite(tmp_path / "f.tif", flats, photometric="minisblack")
    (tmp_path / "e.txt").write_text("\n".join(f"{e:.1f}" for e in E))
    kw = dict(energies=tmp_path / "e.txt", flats=tmp_path / "f.tif")
    if dark is not None:
        tifffile.imwrite(tmp_path / "d.tif", dark)
        kw["darks"] = tmp_path / "d.tif"
    return tmp_path / "s.tif", kw


# 1. saturated flats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_saturated_flat_pixels_leave_the_transmission_unknown_and_are_noted(dtype):
    counts, flats, dark, od = _scan()
    flats = np.round(flats).astype(dtype)
    flats[[2, 5, 7], 10:12, 30] = 65535  # the detector's full scale (as float: counts saved as float32)
    notes = []
    got = optical_density(np.round(counts).astype(np.uint16), flats=flats, darks=dark, notes=notes)
    sat = np.zeros(od.shape, bool)
    sat[[2, 5, 7], 10:12, 30] = True
    assert np.isnan(got[sat]).all() and np.allclose(got[~sat], od[~sat], atol=2e-3)
    (note,) = [n for n in notes if "flat (reference) images" in n]
    assert "6 saturated detector pixels (value 65535) in 3 of the 20 flat (reference) images" in note
    # one flat for every frame: unknown in every frame there
    notes = []
    got = optical_density(counts, flats=flats[2], darks=dark, notes=notes)
    assert np.isnan(got[:, 10:12, 30]).all() and np.isfinite(got[:, 12:, :]).all()
    assert any("2 saturated detector pixels (value 65535) in the flat (reference) image:" in n for n in notes)


def test_float_counts_stop_at_65535_saturated_unless_counts_go_beyond():
    counts, flats, dark, od = _scan()
    c = np.round(counts).astype(np.float32)  # uint16 counts saved as float
    c[4, 30, 5:8] = 65535.0
    notes = []
    got = optical_density(c, flats=flats, darks=dark, notes=notes)
    # filled by their local median (tests/test_io.py): like the row beside them, not the clipped count's OD
    assert np.isfinite(got[4]).all() and np.abs(got[4, 30, 5:8] - got[4, 31, 5:8]).max() < 0.2
    assert any("3 saturated detector pixels (value 65535) in 1 frames" in n for n in notes)
    # counts above 65535 in that frame: 65535 is no full scale there, only a count
    c[4, 0, 0] = 70000.0
    notes = []
    got = optical_density(c, flats=flats * 20, darks=dark, notes=notes)
    assert np.isfinite(got[4, 30, 5:8]).all() and not any("saturated detector pixels" in n for n in notes)


def test_flats_averaged_from_uint16_keep_their_saturated_pixels(tmp_path):
    # 3 flats for 20 frames are averaged: one saturated at a pixel averaged to below 65535, and passed for measured
    counts, flats, dark, od = _scan()
    fl = np.round(flats[:3]).astype(np.uint16)
    fl[1, 8, 8:10] = 65535
    path, kw = _tiffs(tmp_path, np.round(counts).astype(np.uint16), fl, dark)
    st = read_stack(path, **kw, zingers=False)
    assert any(
        "2 saturated detector pixels (value 65535) in the flat (reference) image" in n for n in st.metadata["notes"]
    )


@pytest.mark.parametrize("dtype,top", [(np.uint16, 4095), (np.float32, 4095), (np.float32, 16383)])
def test_flats_of_12_and_14_bit_cameras_are_saturated_at_their_full_scale(dtype, top):
    """A 12-bit camera's counts come as uint16 or float and stop at 4095 (a 14-bit's at 16383): clipped flats were
    divided as measured, as 65535's were before."""
    counts, flats, dark, od = _scan(level=0.7 * top)
    flats = np.round(flats).astype(dtype)
    flats[[2, 5, 7], 10:12, 30] = top
    notes = []
    got = optical_density(np.round(counts).astype(dtype), flats=flats, darks=dark, notes=notes)
    sat = np.zeros(od.shape, bool)
    sat[[2, 5, 7], 10:12, 30] = True
    assert np.isnan(got[sat]).all() and np.allclose(got[~sat], od[~sat], atol=3e-3)
    assert any(f"6 saturated detector pixels (value {top}) in 3 of the 20 flat" in n for n in notes), notes
    # the averaged flats keep them at the full scale
    from xanestrack.io import _match_flats

    fl = flats[:3].copy()
    fl[1, 8, 8:10] = top
    notes = []
    got = optical_density(counts, flats=_match_flats(fl, N, source="f", notes=notes), darks=dark, notes=notes)
    assert np.isnan(got[:, 8, 8:10]).all()
    # control: the counts' largest value at 4095 once, no pile-up there: a count, not a full scale
    flats = np.round(_scan(level=0.7 * top)[1]).astype(dtype)
    flats[3, 5, 5] = top
    notes = []
    got = optical_density(counts, flats=flats, darks=dark, notes=notes)
    assert np.isfinite(got).all() and not any("saturated" in n for n in notes)


def test_a_flat_saturated_over_most_of_its_pixels_is_refused():
    counts, flats, dark, od = _scan()
    flats = np.round(flats).astype(np.uint16)
    flats[6, :40] = 65535  # 62 % of frame 6's flat
    with pytest.raises(XanestrackError, match="flat .reference. image of frame 6 is saturated .value 65535. at 62%"):
        optical_density(counts, flats=flats, darks=dark)


# 2. transmission or optical density given with flats -------------------------------------------------------------


def test_transmission_or_optical_density_given_with_flats_is_refused(tmp_path):
    counts, flats, dark, od = _scan()
    for values, like in ((np.exp(-od), "transmission I/I0"), (od, "optical density")):
        path, kw = _tiffs(tmp_path, values.astype(np.float32), flats)
        with pytest.raises(XanestrackError, match=f"look like {like}") as err:
            read_stack(path, **kw)
        want = "--values transmission" if like.startswith("transmission") else "--values od"
        assert f"{want} and without --flats" in for_cli(err.value)
    # counts of an opaque sample (near the dark, its holes at the flats') are counts
    thick = counts.copy()
    thick[:, 8:56] = dark[8:56] + 3.0
    assert np.isfinite(optical_density(thick, flats=flats, darks=dark, notes=[])).all()


def test_transmission_at_another_exposure_than_its_flats_is_advised_as_transmission(tmp_path):
    """I/I0 of frames at twice their flats' exposure from the middle on (values 0.45 to 2.0, median 0.95) was
    advised ``--values od``, which found none of 5 particles; read as transmission it gives every E50 as measured."""
    counts, flats, dark, od = _scan()
    values = np.exp(-od)
    values[N // 2 :] *= 2
    path, kw = _tiffs(tmp_path, values.astype(np.float32), flats)
    with pytest.raises(XanestrackError, match="look like transmission I/I0") as err:
        read_stack(path, **kw)
    assert "--values transmission and without --flats" in for_cli(err.value)
    assert "another exposure than their flats" in str(err.value)
    # control: optical density scaled alike (its background near 0, the particles above it) is still optical density
    scaled = od.copy()
    scaled[N // 2 :] *= 2
    path, kw = _tiffs(tmp_path, scaled.astype(np.float32), flats)
    with pytest.raises(XanestrackError, match="look like optical density"):
        read_stack(path, **kw)


# 3. half the frames or more without an image ---------------------------------------------------------------------


def test_half_the_frames_without_an_image_are_refused_before_anything_else():
    counts, flats, dark, od = _scan()
    c = counts.copy()
    c[:9] = dark  # 9 of 20 frames at the dark: said, carried as frames without an image
    notes = []
    optical_density(c, flats=flats, darks=dark, notes=notes)
    assert any("no image there" in n for n in notes)
    c[9] = dark  # 10 of 20: refused, with the likely causes
    with pytest.raises(XanestrackError, match="10 of 20 frames hold no image") as err:
        optical_density(c, flats=flats, darks=dark)
    assert "optical density or transmission rather than counts" in str(err.value)


def test_int16_counts_that_wrapped_negative_are_refused_as_an_overflow():
    counts, flats, dark, od = _scan(level=50000.0)
    wrapped = np.round(counts).astype(np.uint16).view(np.int16)  # counts above 32767 saved as int16
    assert (wrapped < 0).mean() > 0.5
    with pytest.raises(XanestrackError, match="20 of 20 frames hold no image") as err:
        optical_density(wrapped, flats=flats, darks=dark)
    assert "int16 counts go down to" in str(err.value) and "wrapped around" in str(err.value)
    # int16 counts that did not wrap, a frame at the dark among them: read, that frame said
    counts, flats, dark, od = _scan()
    c = np.round(counts).astype(np.int16)
    c[3] = 100
    notes = []
    got = optical_density(c, flats=flats, darks=dark, notes=notes)
    assert np.allclose(got[4:], od[4:], atol=2e-3) and any("no image there" in n for n in notes)


# 4. counts said to be optical density ----------------------------------------------------------------------------


def test_counts_said_to_be_optical_density_are_noted(tmp_path):
    counts, flats, dark, od = _scan()
    (tmp_path / "e.txt").write_text("\n".join(f"{e:.1f}" for e in E))
    tifffile.imwrite(tmp_path / "c.tif", np.round(counts).astype(np.uint16))
    st = read_stack(tmp_path / "c.tif", energies=tmp_path / "e.txt", values="od", zingers=False)
    assert any("look like raw counts, not optical density" in n for n in st.metadata["notes"])
    tifffile.imwrite(tmp_path / "od.tif", od)
    st = read_stack(tmp_path / "od.tif", energies=tmp_path / "e.txt", values="od", zingers=False)
    assert not any("raw counts" in n for n in st.metadata["notes"])


# 5. flats darker than the images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, said",
    [
        (1.0, None),
        (0.97, None),  # a beam 3 % weaker at the flats: the matrix's OD still above -0.05
        ("band", "over 25% of the field, within rows 48-63, columns 0-63"),
        (0.5, "of the field, within rows 0-63, columns 0-63 (median optical density there -0.6"),
    ],
)
def test_flats_darker_than_the_images_are_noted_with_where(scale, said):
    counts, flats, dark, od = _scan()
    flats = flats.copy()
    if scale == "band":
        flats[:, 48:] = (flats[:, 48:] - dark[48:]) * 0.85 + dark[48:]
    else:
        flats = (flats - dark) * scale + dark
    notes = []
    optical_density(counts, flats=flats, darks=dark, notes=notes)
    brighter = [n for n in notes if "brighter than their flats" in n]
    if said is None:
        assert not brighter, brighter
    else:
        (note,) = brighter
        assert said in note and "the flats do not belong to these images" in note


def test_frames_saturated_over_most_of_their_pixels_are_refused_as_saturated():
    # images 99.97 % at 65535 beside float flats were refused as "OD or transmission ..., darks swapped, or the beam
    # off?": the saturation was not named
    counts, flats, dark, od = _scan()
    c = np.round(counts).astype(np.uint16)
    c[:12] = 65535
    with pytest.raises(XanestrackError, match="12 of 20 frames hold no image") as err:
        optical_density(c, flats=flats, darks=dark)
    assert "saturated over 100% of its pixels" in str(err.value) and "lower the exposure" in str(err.value)
    # its first words: they said "more than half their pixels at or below the dark", then that they were saturated
    assert "hold no image (more than half their pixels saturated, " in str(err.value)


def test_the_same_pixels_at_full_scale_in_every_flat_are_stuck_pixels_not_an_exposure():
    # four stuck pixels in all 60 flats were "240 saturated detector pixels ...: lower the exposure of the flats"
    counts, flats, dark, od = _scan()
    flats = np.round(flats).astype(np.uint16)
    flats[:, 10:12, 30:32] = 65535
    notes = []
    got = optical_density(np.round(counts).astype(np.uint16), flats=flats, darks=dark, notes=notes)
    assert np.isnan(got[:, 10:12, 30:32]).all()
    (note,) = [n for n in notes if "flat (reference) image" in n]
    assert "4 pixels at the detector's full scale (65535) in every flat" in note and "stuck or hot" in note
    assert "lower the exposure" not in note
    # a band of them (15 % of the field) in every flat is an exposure too long, not stuck pixels
    flats[:, :, 50:60] = 65535
    notes = []
    optical_density(np.round(counts).astype(np.uint16), flats=flats, darks=dark, notes=notes)
    (note,) = [n for n in notes if "flat (reference) image" in n]
    assert "stuck or hot" not in note and "lower the exposure of the flats" in note, note


def test_nan_counts_are_unknown_not_the_strongest_absorption():
    """NaN counts (a masked region) with flats were given the frame's strongest absorption and called zero
    transmission; they are NaN (filled from their neighbours downstream, as NaN OD is)."""
    counts, flats, dark, od = _scan()
    counts[4, 19:22, 19:22] = np.nan  # inside a particle
    notes = []
    got = optical_density(counts, flats=flats, darks=dark, notes=notes)
    assert np.isnan(got[4, 19:22, 19:22]).all()
    nan = np.zeros(od.shape, bool)
    nan[4, 19:22, 19:22] = True
    assert np.allclose(got[~nan], od[~nan], atol=2e-3)
    assert not any("strongest absorption" in n or "zero transmission" in n for n in notes), notes
