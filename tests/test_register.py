import numpy as np
import pytest
from scipy import ndimage

from xanestrack.register import centre_of_mass, crop_windows, resample_windows


def brute_force_com(img):
    m00 = m10 = m01 = 0.0
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            m00 += img[i, j]
            m01 += i * img[i, j]
            m10 += j * img[i, j]
    return m01 / m00, m10 / m00


def test_centre_of_mass_matches_brute_force_moments():
    rng = np.random.default_rng(0)
    img = rng.random((13, 21))  # non-square: y is rows
    assert np.allclose(centre_of_mass(img), brute_force_com(img), atol=1e-12)
    stack = rng.random((3, 9, 7))
    assert np.allclose(centre_of_mass(stack), [brute_force_com(s) for s in stack], atol=1e-12)


def test_centre_of_mass_of_empty_image_is_nan():
    assert np.all(np.isnan(centre_of_mass(np.zeros((5, 5)))))


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    # anti-aliased disc from the signed distance
    return np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)


@pytest.mark.parametrize("shift", [(0.3, -0.7), (2.25, 1.6), (-3.4, 0.05)])
def test_known_subpixel_shift_recovered_by_moments(shift):
    a = _disc((64, 80), 30.0, 40.0, 12.0)
    b = _disc((64, 80), 30.0 + shift[0], 40.0 + shift[1], 12.0)
    d = centre_of_mass(b) - centre_of_mass(a)
    assert np.allclose(d, shift, atol=0.02)


def test_resample_windows_undoes_shift_without_ringing():
    rng = np.random.default_rng(1)
    base = ndimage.gaussian_filter(rng.random((70, 90)), 3) * 10
    shifts = np.array([[0.0, 0.0], [1.4, -2.3], [-0.6, 0.8]])
    frames = np.stack([ndimage.shift(base, s, order=3, mode="nearest") for s in shifts])
    out = resample_windows(frames, shifts, origin=(20, 25), shape=(30, 40))
    ref = base[20:50, 25:65]
    for k in range(3):
        assert np.max(np.abs(out[k] - ref)) < 0.02 * np.ptp(ref)
    # a constant frame stays constant to rounding: no FFT ringing at the window border
    const = np.full((2, 40, 40), 3.0, np.float32)
    out = resample_windows(const, np.array([[0.3, 0.7], [-0.45, 0.2]]), origin=(5, 5), shape=(20, 20))
    assert np.allclose(out, 3.0, atol=1e-6)


def test_resample_windows_outside_frame_is_nan():
    frames = np.ones((1, 20, 20), np.float32)
    out = resample_windows(frames, np.array([[0.0, 0.0]]), origin=(15, 15), shape=(10, 10))
    assert np.isnan(out[0, -1, -1]) and np.isfinite(out[0, 0, 0])


def test_crop_windows_flags_border():
    od = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40)
    win, origins, clipped = crop_windows(od, np.array([[15, 20], [2, 2]]), 5)
    assert win.shape == (2, 11, 11)
    assert not clipped[0] and clipped[1]
    assert np.array_equal(win[0], od[0, 10:21, 15:26])
    assert np.isnan(win[1, 0, 0])
