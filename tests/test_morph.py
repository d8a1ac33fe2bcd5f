"""The fast label statistics and cross dilation give scipy.ndimage's numbers."""

import numpy as np
import pytest
from scipy import ndimage

from xanestrack.morph import dilate_cross, label_stats


@pytest.mark.parametrize("shape", [(40, 50), (6, 30, 35)])
def test_label_stats_match_scipy_on_random_blobs(shape):
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52
    struct = None
    if len(shape) == 3:  # components within a frame, as the mask separation labels them
        struct = np.zeros((3, 3, 3), bool)
        struct[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(blobs, structure=struct)
    assert n > 5
    area, centroid = label_stats(lab, n)
    idx = np.arange(1, n + 1)
    np.testing.assert_array_equal(area, ndimage.sum(blobs, lab, idx))
    np.testing.assert_allclose(centroid, np.array(ndimage.center_of_mass(blobs, lab, idx)), rtol=0, atol=1e-12)


def test_label_stats_of_a_missing_label_is_nan_not_an_error():
    lab = np.zeros((5, 5), int)
    lab[1, 1] = 2
    area, centroid = label_stats(lab, 2)
    assert area.tolist() == [0.0, 1.0]
    assert np.isnan(centroid[0]).all() and centroid[1].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_dilate_cross_matches_scipy_frame_by_frame(iterations):
    rng = np.random.default_rng(5)
    stack = rng.random((4, 23, 31)) > 0.93
    stack[0, 0, :] = True  # the frame's border: nothing spills into the next frame
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = ndimage.generate_binary_structure(2, 1)
    expected = ndimage.binary_dilation(stack, structure=struct, iterations=iterations)
    np.testing.assert_array_equal(dilate_cross(stack, iterations), expected)
    np.testing.assert_array_equal(
        dilate_cross(stack[1], iterations), ndimage.binary_dilation(stack[1], iterations=iterations)
    )
