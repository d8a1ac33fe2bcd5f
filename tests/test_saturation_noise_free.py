"""A uniform beam with no or little noise (a hand-built or simulated stack) holds its whole background at one value, or
within a few counts, with the particles' counts far below: no clip, though it piles up at its largest value as clipped
counts do. It was taken for one (the review of the saturation check, finding 1): flats at the images' level were
refused "saturated at 100 %", flats 4 % brighter left 93 % of every frame NaN (mean E50s 0.3-0.8 eV, 84-99 sigma,
off). A clip is told from it by the noise of the counts below the pile: white, and wide against the pile's spread."""

import numpy as np
import pytest

from xanestrack.errors import XanestrackError
from xanestrack.io import optical_density

N = 12
SHAPE = (64, 64)
DARK = 100.0


def _scene(level=5000.0, noise=0.0, flat_gain=1.0, gradient=0.0, poisson=False, full=None, dtype=np.uint16, seed=0):
    """Counts, flats and the dark of spheres (radius 8-10 px, OD up to 0.8-1.2 over the scan) under a beam of
    ``level`` counts (``gradient``: +- that share across the columns), with Gaussian ``noise`` (counts) or photon
    noise (``poisson``), clipped at ``full`` where given; and the truth's optical density."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    t = np.zeros(SHAPE)
    for y, x, r in ((18, 18, 9), (20, 46, 8), (46, 30, 10)):
        t += np.sqrt(np.clip(1 - ((yy - y) ** 2 + (xx - x) ** 2) / r**2, 0, None))
    od = np.linspace(0.8, 1.2, N)[:, None, None] * t
    beam = level * np.broadcast_to(1 + gradient * np.linspace(-1, 1, SHAPE[1]), SHAPE)
    counts = beam * np.exp(-od)
    flats = np.repeat(flat_gain * beam[None], N, axis=0)
    if poisson:
        counts, flats = rng.poisson(counts).astype(float), rng.poisson(flats).astype(float)
    counts = counts + DARK + (rng.normal(0, noise, counts.shape) if noise else 0)
    flats = flats + DARK
    if full is not None:
        counts, flats = np.minimum(counts, full), np.minimum(flats, full)
    if np.dtype(dtype).kind in "iu":
        counts, flats = np.round(counts).astype(dtype), np.round(flats).astype(dtype)
    else:
        counts, flats = counts.astype(dtype), flats.astype(dtype)
    return counts, flats, np.full((1, *SHAPE), DARK, np.float32), od


def _run(counts, flats, dark):
    notes = []
    got = optical_density(counts, flats=flats, darks=dark, notes=notes)
    return got, [n for n in notes if "saturat" in n]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_noise_free_uniform_beam_under_flats_at_its_level_is_not_saturated(dtype):
    # every background pixel of every image and flat at 5100: refused "the flat ... is saturated (value 5100) at 100 %"
    counts, flats, dark, od = _scene(dtype=dtype)
    got, sat = _run(counts, flats, dark)
    assert not sat, sat
    assert np.isfinite(got).all()
    assert np.abs(got - od).max() < 1e-3  # rounding to whole counts aside: the truth


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_noise_free_uniform_beam_under_brighter_flats_is_measured(dtype):
    # flats 4 % brighter than the images' beam (it decayed): the images' background was NaN and filled, with a note
    # of saturated pixels "lower the exposure"
    counts, flats, dark, od = _scene(flat_gain=1.04, dtype=dtype)
    got, sat = _run(counts, flats, dark)
    assert not sat, sat
    assert np.isfinite(got).all()
    want = od - np.log(1 / 1.04)  # the beam's decay: an offset of OD 0.039 everywhere, as measured
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("noise", [0.5, 2.0])
def test_a_uniform_beam_with_gaussian_noise_below_photon_noise_is_not_saturated(noise):
    # 0.5 or 2 counts of noise at 5100 (photon noise: 71): the background a peak a few counts wide, the band of a
    # dark-subtracted clip; refused as saturated at 100 %
    counts, flats, dark, od = _scene(noise=noise, dtype=np.float32)
    got, sat = _run(counts, flats, dark)
    assert not sat, sat
    assert np.isfinite(got).all()
    assert np.abs(got - od).max() < 12 * noise / 1000  # the noise over the counts


# controls: the same scene with photon noise, clipped at a full well of 60000, is still saturated --------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_the_same_scene_clipped_all_over_at_a_full_well_is_still_refused(dtype):
    # flats of one value everywhere (60000) beside images clipped but in the particles, as the noise-free scenes'
    # background is: the particles' photon noise tells the clip
    counts, flats, dark, od = _scene(level=70000.0, poisson=True, full=60000.0, dtype=dtype)
    assert (flats == 60000).all() and (counts == 60000).mean() > 0.5
    with pytest.raises(XanestrackError, match=r"flat .reference. image of frame 0 is saturated .value 60000. at 100%"):
        optical_density(counts, flats=flats, darks=dark)


def test_the_same_scene_clipped_over_a_gradient_is_still_noted():
    # a beam brighter to the right clipped at 60000 over its brightest columns in flats and images
    counts, flats, dark, od = _scene(level=56000.0, gradient=0.1, poisson=True, full=60000.0)
    clipped = flats == 60000
    assert 0.1 < clipped.mean() < 0.4
    got, sat = _run(counts, flats, dark)
    assert np.isnan(got[clipped]).all()
    assert any("saturated detector pixels (value 60000) in 12 of the 12 flat (reference) images" in n for n in sat), sat


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_noise_free_gradient_and_a_photon_noise_beam_are_not_saturated(dtype):
    for kw in (dict(gradient=0.03), dict(poisson=True), dict(poisson=True, flat_gain=1.04)):
        counts, flats, dark, od = _scene(dtype=dtype, **kw)
        got, sat = _run(counts, flats, dark)
        assert not sat and np.isfinite(got).all(), (kw, sat)
