import numpy as np
from scipy import ndimage

from xanestrack.io import read_stack
from xanestrack.io.hdf5 import write_fxi
from xanestrack.io.zingers import remove_zingers


def _scene(seed=0, n=4, shape=(160, 200), counts=3000.0):
    """Raw counts of blurred particles (OD up to 2) on a vignetted beam, Poisson noise; flats; the OD."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    od = np.zeros(shape)
    for cy, cx, r, c in ((40, 50, 14, 2.0), (110, 60, 9, 1.2), (80, 140, 22, 0.8), (130, 170, 6, 1.5)):
        od += c * (np.hypot(yy - cy, xx - cx) < r)
    od = ndimage.gaussian_filter(od, 1.0)
    beam = counts * np.exp(-(((yy - 80) / 120) ** 2 + ((xx - 100) / 140) ** 2))  # weaker towards the corners
    frames = rng.poisson(beam * np.exp(-od), (n, *shape)).astype(np.float64)
    flats = rng.poisson(beam, (n, *shape)).astype(np.float64)
    return frames, flats, od


def _od(frames, flats):
    return (-np.log(np.maximum(frames, 1) / flats)).astype(np.float32)


def test_zingers_are_replaced_and_nothing_else():
    frames, flats, _ = _scene()
    clean = _od(frames, flats)
    rng = np.random.default_rng(1)
    hit = frames.copy()
    spots = []
    for k in range(len(hit)):
        for _ in range(25):
            y, x = rng.integers(2, 156), rng.integers(2, 196)
            size = rng.integers(1, 3)  # single pixels and 2 x 2 clusters
            hit[k, y : y + size, x : x + size] *= rng.uniform(3, 20)
            spots.append((k, y, x, size))
    od = _od(hit, flats)
    per_frame = remove_zingers(od)
    # every zinger pixel is back within the noise of the clean image (its 3 x 3 median), and no
    # other pixel moved
    for k, y, x, size in spots:
        assert np.all(np.abs(od[k, y : y + size, x : x + size] - clean[k, y : y + size, x : x + size]) < 0.5)
    changed = od != _od(hit, flats)
    was_hit = _od(hit, flats) != clean
    assert np.array_equal(changed, was_hit)
    assert per_frame.sum() == was_hit.sum()
    # the clean frames keep every pixel: edges, corners and the noisy corners of the beam included
    untouched = clean.copy()
    assert remove_zingers(untouched).sum() == 0 and np.array_equal(untouched, clean)


def test_a_band_of_noise_is_not_taken_for_zingers():
    frames, flats, _ = _scene()
    od = _od(frames, flats)
    rng = np.random.default_rng(2)
    od[:, -12:] += rng.normal(0, 0.4, od[:, -12:].shape).astype(
        np.float32
    )  # the frame's last rows: seven times the noise
    before = od.copy()
    remove_zingers(od)
    assert (od != before)[:, :, :].sum() <= 2 * len(od)


def test_the_reader_removes_zingers_and_says_how_many(tmp_path):
    frames, flats, _ = _scene(n=3)
    frames[1, 50, 60] *= 10
    frames[2, 100:102, 30:32] *= 6
    write_fxi(
        tmp_path / "s.h5",
        np.round(frames).astype(np.uint16),
        flats=np.round(flats).astype(np.uint16),
        darks=np.zeros((1, *frames.shape[1:]), np.uint16),
        energies_ev=[8300.0, 8340.0, 8380.0],
    )
    st = read_stack(tmp_path / "s.h5")
    raw = read_stack(tmp_path / "s.h5", zingers=False)
    assert np.array_equal(st.od != raw.od, np.isin(np.arange(3), [1, 2])[:, None, None] & (st.od != raw.od))
    assert (st.od != raw.od).sum() == 5
    (note,) = [n for n in st.metadata["notes"] if "zingers" in n]
    assert note.startswith("5 zingers") and "in 2 of 3 frames, most in frame 2 (4)" in note
    assert not any("zingers" in n for n in raw.metadata["notes"])
