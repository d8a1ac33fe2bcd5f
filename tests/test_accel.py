"""The per-particle array kernels on a torch device (``run --device cuda``) against the numpy ones.

CI has no GPU: the torch kernels run here on the CPU (``accel._forced``), which checks the
arithmetic the GPU runs; the device itself is measured in the README (**A GPU**).
"""

import numpy as np
import pytest
from scipy import ndimage

from xanestrack import accel
from xanestrack import register as R
from xanestrack.errors import XanestrackError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def od():
    rng = np.random.default_rng(1)
    return (10 * ndimage.gaussian_filter(rng.normal(size=(20, 200, 200)), (0, 3, 3))).astype(np.float32)


def _both(fn):
    a = fn()
    with accel._forced("cpu"):
        assert accel.array_device() is not None
        b = fn()
    assert accel.array_device() is None
    return a, b


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("origin", [(50, 60), (-5, 150)])  # inside the frame; across its top and right borders
def test_resampling_on_the_device_is_the_numpy_resampling(od, order, origin):
    shifts = np.random.default_rng(2).uniform(-3, 3, (20, 2))
    shifts[3] = np.nan
    a, b = _both(lambda: R.resample_windows(od, shifts, origin, (80, 70), order=order))
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(a[3]).all()
    # bilinear and nearest exactly; the cubic spline's prefilter differs at the crops' edges (module docstring)
    tol = 1e-5 if order < 3 else 5e-4 * np.nanstd(a)
    assert np.nanmax(np.abs(a - b)) <= tol


@pytest.mark.parametrize("floor_scale", [0.0, 2.0])
def test_edge_images_on_the_device_are_the_numpy_ones(od, floor_scale):
    win = od[:, 40:120, 40:120].copy()
    win[2, :5] = np.nan  # outside the frame
    apod = np.zeros((80, 80), np.float32)
    apod[20:60, 20:60] = 1
    a, b = _both(lambda: R.edge_images(win, sigma=1.5, apodisation=apod, floor_scale=floor_scale))
    assert np.abs(a - b).max() < 1e-4


def test_correlation_on_the_device_is_the_numpy_correlation(od):
    imgs = R.edge_images(R.resample_windows(od, np.random.default_rng(3).uniform(-3, 3, (20, 2)), (40, 40), (80, 80)))
    ref = imgs[0]
    for kwargs in (dict(reference=ref, max_shift=10), dict(reference=imgs[::-1], whitening=0.5)):
        (sa, qa), (sb, qb) = _both(lambda kw=kwargs: R.correlate_shifts(images=imgs, **kw))
        assert np.abs(sa - sb).max() < 1e-3 and np.abs(qa - qb).max() < 1e-4
    # a shift the correlation must find, on either path: a particle-like blob, the window sampled
    # 1.3 px lower and 0.7 px further left shows it moved by (-1.3, +0.7)
    yy, xx = np.mgrid[:200, :200]
    blob = np.broadcast_to(np.exp(-((yy - 100.0) ** 2 + (xx - 97.0) ** 2) / 200.0).astype(np.float32), (4, 200, 200))
    still = R.edge_images(R.resample_windows(blob, np.zeros((4, 2)), (60, 60), (80, 80)))
    moved = R.edge_images(R.resample_windows(blob, np.tile([[1.3, -0.7]], (4, 1)), (60, 60), (80, 80)))
    (sa, _), (sb, _) = _both(lambda: R.correlate_shifts(still, moved, max_shift=5))
    assert np.abs(sa - [-1.3, 0.7]).max() < 0.05 and np.abs(sa - sb).max() < 1e-3


def test_the_array_device_is_shared_by_scans_side_by_side_and_refused_where_absent():
    import torch

    assert accel.array_device() is None
    with accel.arrays_on("cpu") as dev:  # the CPU: nothing changes
        assert dev is None and accel.array_device() is None
    with accel._forced("cpu"), accel._forced("cpu"):  # two scans in threads of one series
        assert accel.array_device() == torch.device("cpu")
    assert accel.array_device() is None
    with accel._forced("cpu"), pytest.raises(XanestrackError, match="in use"):
        with accel._forced("meta"):
            pass
    assert accel.array_device() is None
    if not torch.cuda.is_available():
        with pytest.raises(XanestrackError, match="no CUDA device"):
            with accel.arrays_on("cuda"):
                pass
        assert accel.array_device() is None
