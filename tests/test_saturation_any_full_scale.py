"""Clipped counts are saturated wherever they pile up, whatever stores them: the same counts clipped at 65535 were
refused (or noted) as uint16 but divided as measured as int32, uint32 or dark-subtracted float32, as 12-bit counts
shifted into 16 bits (full scale 65520) or from a camera whose full well stops at 60000 (the inputs probe's F1: mean
E50 up to 0.67 eV, 72 sigma, off, with no word of saturation). Counts that do not clip, zingers, tiled frames and
optical density are no pile-up."""

import numpy as np
import pytest

from xanestrack.errors import XanestrackError
from xanestrack.io import _match_flats, optical_density

N = 20
SHAPE = (64, 64)


def _raw(level, seed=0):
    """Unclipped counts and flats (float64, Poisson, a beam's hot spot 1.5x at row 32, column 40), the dark (a pattern
    of 100 +- 2 counts) and the truth's optical density (matrix 0.02-0.1, two particles of OD 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    beam = level * (1 + 0.5 * np.exp(-((yy - 32) ** 2 + (xx - 40) ** 2) / (2 * 8.0**2)))
    dark = rng.normal(100.0, 2.0, SHAPE)
    od = rng.uniform(0.02, 0.1, (N, *SHAPE))
    for y, x in ((20, 16), (44, 20)):
        od[:, (yy - y) ** 2 + (xx - x) ** 2 < 64] += 1.0
    drift = np.linspace(1.0, 1.02, N)[:, None, None]  # the beam's intensity over the scan
    flats = rng.poisson(beam * drift, (N, *SHAPE)) + dark
    counts = rng.poisson(beam * drift * np.exp(-od)) + dark
    return counts, flats, dark, od


def _dialect(name, counts, flats, dark):
    """The counts, flats and darks as a file of dialect ``name`` stores them, clipped at the camera's full scale."""
    if name in ("int32", "uint32"):
        c, f = (np.clip(np.round(x), 0, 65535).astype(name) for x in (counts, flats))
        return c, f, np.round(dark).astype(name)
    if name == "float32_dark_subtracted":  # clipped by the camera, then less each pixel's dark; no darks
        return tuple((np.clip(np.round(x), 0, 65535) - dark).astype(np.float32) for x in (counts, flats)) + (None,)
    if name == "int32_dark_subtracted":
        return tuple(np.round(np.clip(np.round(x), 0, 65535) - dark).astype(np.int32) for x in (counts, flats)) + (
            None,
        )
    if name == "12bit_x16":  # a 12-bit camera's counts shifted into 16 bits: full scale 4095 x 16 = 65520
        c, f = (np.minimum(np.round(x / 16), 4095).astype(np.uint16) * np.uint16(16) for x in (counts, flats))
        return c, f, dark.astype(np.float32)
    if name == "full_well_60000":  # a camera whose full well clips below its ADC's 65535
        c, f = (np.minimum(np.round(x), 60000).astype(np.uint16) for x in (counts, flats))
        return c, f, dark.astype(np.float32)
    if name == "full_well_60000_float32":
        c, f = (np.minimum(np.round(x), 60000).astype(np.float32) for x in (counts, flats))
        return c, f, dark.astype(np.float32)
    raise ValueError(name)


FULL = {"12bit_x16": 65520.0, "full_well_60000": 60000.0, "full_well_60000_float32": 60000.0}
DIALECTS = ["int32", "uint32", "float32_dark_subtracted", "int32_dark_subtracted", *FULL]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_counts_clipped_over_a_hot_spot_are_saturated_whatever_stores_them(dialect):
    full = FULL.get(dialect, 65535.0)
    counts, flats, dark, od = _raw(level=0.75 * full)  # the hot spot (1.5x) clips in every flat, in 5-6 % of it
    step = 16 if dialect == "12bit_x16" else 1  # (12 bits: counts from 65512 round to 65520)
    clipped_flat, clipped_image = (np.round(x / step) * step >= full for x in (flats, counts))
    assert 0.03 < clipped_flat.mean() < 0.08 and clipped_image.any()
    c, f, d = _dialect(dialect, counts, flats, dark)
    notes = []
    got = optical_density(c, flats=f, darks=d, notes=notes)
    # the flats' clipped pixels leave the transmission unknown: NaN (filled downstream), as uint16's at 65535 were
    assert np.isnan(got[clipped_flat]).all()
    (flat_note,) = [n for n in notes if "saturated detector pixels" in n and "flat (reference) images" in n]
    assert "lower the exposure of the flats" in flat_note
    assert any("saturated detector pixels" in n and " frames: no count measured there" in n for n in notes), notes
    # elsewhere what the unclipped counts give (a few nearly full-well pixels beside the pile aside)
    control = optical_density(counts.astype(np.float32), flats=flats.astype(np.float32), darks=dark[None])
    measured = np.isfinite(got) & ~clipped_image & ~clipped_flat
    assert measured.mean() > 0.9
    assert np.abs(got[measured] - control[measured]).max() < (2e-3 if dialect == "12bit_x16" else 2e-4)


def test_int32_and_uint32_clipped_counts_are_read_as_their_uint16_are():
    counts, flats, dark, od = _raw(level=0.75 * 65535)
    c16, f16 = (np.clip(np.round(x), 0, 65535).astype(np.uint16) for x in (counts, flats))
    want_notes = []
    want = optical_density(c16, flats=f16, darks=np.round(dark).astype(np.uint16), notes=want_notes)
    for dtype in ("int32", "uint32"):
        notes = []
        c, f, d = _dialect(dtype, counts, flats, dark)
        got = optical_density(c, flats=f, darks=d, notes=notes)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)
        assert [n for n in notes if "saturated" in n] == [n for n in want_notes if "saturated" in n]


@pytest.mark.parametrize("dialect", ["int32", "float32_dark_subtracted", "full_well_60000"])
def test_flats_clipped_over_most_of_their_pixels_are_refused_whatever_stores_them(dialect):
    # the exposure 13x the probe's: 87 % of the flats clipped, refused as uint16, run silently as int32 or dark-
    # subtracted float32 (mean E50 up to 0.67 eV off); at 60000 the flats are one value everywhere, clipped all over,
    # which the images' pile (clipped where the particles do not absorb) names
    full = FULL.get(dialect, 65535.0)
    counts, flats, dark, od = _raw(level=1.2 * full)
    with pytest.raises(
        XanestrackError, match=r"flat .reference. image of frame \d+ is saturated .value \d+(\.\d+)?. at"
    ):
        c, f, d = _dialect(dialect, counts, flats, dark)
        optical_density(c, flats=f, darks=d)


def test_averaged_flats_keep_pixels_clipped_at_a_full_well_below_65535():
    # three flats for 20 frames are averaged: a pixel clipped in one of them averages to below 60000
    counts, flats, dark, od = _raw(level=0.75 * 60000)
    c, f, d = _dialect("full_well_60000", counts, flats, dark)
    notes = []
    mean = _match_flats(f[:3], N, source="f", notes=notes)
    clipped = (f[:3] == 60000).any(axis=0)
    assert clipped.any() and (mean[0][clipped] == 60000).all()
    got = optical_density(c, flats=mean, darks=d, notes=notes)
    assert np.isnan(got[:, clipped]).all()
    assert any("saturated detector pixels (value 60000) in the flat (reference) image:" in n for n in notes), notes


# controls: no pile-up, no note, the optical density unchanged --------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,dark_subtracted", [(np.int32, False), (np.uint32, False), (np.float32, True), (np.float32, False)]
)
def test_unclipped_counts_of_any_type_are_not_saturated(dtype, dark_subtracted):
    # the same scene and dialects with the counts below the full scale (the brightest 5 % below the hot spot's
    # peak, as the clipped scenes' are): nothing saturated, nothing said
    counts, flats, dark, od = _raw(level=0.6 * 65535)
    c, f = (np.round(x) - (dark if dark_subtracted else 0) for x in (counts, flats))
    c, f = (x.astype(dtype) if dtype == np.float32 else np.round(x).astype(dtype) for x in (c, f))
    notes = []
    got = optical_density(c, flats=f, darks=None if dark_subtracted else dark[None], notes=notes)
    assert np.isfinite(got).all() and not [n for n in notes if "saturat" in n], notes


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_a_few_zingers_at_one_value_are_no_pile_up(dtype):
    # the brightest pixels of the images a handful of zingers: five at 30000 in frame 3, eight at 28000 in frame 7
    # (a cluster), others at their own values: not a full scale
    counts, flats, dark, od = _raw(level=5000.0)
    c = np.round(counts)
    c[3, [5, 9, 30, 41, 60], [7, 50, 12, 33, 2]] = 30000
    c[7, 50:52, 10:14] = 28000
    c[11, 3, 3], c[12, 60, 61], c[15, 33, 9] = 25123, 17777, 29999
    notes = []
    got = optical_density(c.astype(dtype), flats=flats.astype(np.float32), darks=dark[None], notes=notes)
    assert np.isfinite(got).all() and not [n for n in notes if "saturat" in n], notes


def test_one_flat_repeated_for_every_frame_and_tiled_frames_are_no_pile_up():
    # the same values repeated (one flat stored once per frame; frames tiled 2 x 2) crowd their largest values: a
    # pile of 16 pixels over 4 values was taken for one before the band had to hold many values
    for seed in range(4):
        counts, flats, dark, od = _raw(level=5000.0, seed=seed)
        f = np.repeat(flats[:1], N, axis=0).astype(np.float32)
        c = np.round(counts).astype(np.uint16)
        notes = []
        assert np.isfinite(optical_density(c, flats=f, darks=dark[None], notes=notes)).all()
        tiled = lambda x: np.tile(x, (1, 2, 2))  # noqa: E731
        assert np.isfinite(optical_density(tiled(c), flats=tiled(f), darks=tiled(dark[None]), notes=notes)).all()
        assert not [n for n in notes if "saturat" in n], notes


def test_transmission_and_flats_of_one_value_are_no_pile_up():
    counts, flats, dark, od = _raw(level=5000.0)
    notes = []
    # transmission given without flats: clipped at 1 (an export's), its values no counts
    t = np.minimum(np.exp(-od), 0.95).astype(np.float32)
    assert np.isfinite(optical_density(t, notes=notes)).all()
    # a hand-built flat of one value everywhere beside images of counts under it
    c = np.random.default_rng(1).poisson(5000.0 * np.exp(-od)).astype(np.float32)
    assert np.isfinite(optical_density(c, flats=np.full(SHAPE, 5000.0, np.float32), notes=notes)).all()
    assert not [n for n in notes if "saturat" in n], notes
