"""Per-ROI segmentation (xanestrack.segment): soft masks, fines and neighbours cut off, windows re-centred."""

import numpy as np
import pytest

from conftest import undocumented_fields
from xanestrack.register import centre_of_mass
from xanestrack.segment import SegmentOptions, isolate_particle, segment_particle, segment_roi, segment_rois


def disc(shape, cy, cx, r, od=0.8):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (od * np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)).astype(np.float32)


def test_soft_mask_of_a_disc_on_a_sloped_background():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:41, 0:41]
    roi = (
        disc((41, 41), 20.3, 19.6, 10.0)
        + 0.1
        + 0.002 * yy
        - 0.001 * xx
        + rng.normal(0, 0.01, (41, 41)).astype(np.float32)
    )
    m = segment_roi(roi)
    assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    assert m.sum() == pytest.approx(np.pi * 10.0**2, rel=0.1)
    assert np.allclose(centre_of_mass(m), [20.3, 19.6], atol=0.1)


def test_a_roi_without_particle_gives_an_empty_mask():
    roi = np.zeros((31, 31), np.float32)
    assert segment_roi(roi).sum() == 0
    rois = np.stack([roi, disc((31, 31), 15, 15, 8.0)])
    out = segment_rois(rois)
    assert out.shape == (2, 31, 31) and out[0].sum() == 0
    assert np.array_equal(out[1], segment_roi(rois[1]))


def test_isolate_particle_cuts_a_fine_off():
    m = np.clip(disc((51, 51), 25, 25, 12, od=1.0) + disc((51, 51), 25, 41, 3.0, od=1.0), 0, 1)[
        None
    ]  # fine touching the rim
    out = isolate_particle(m, radius=12.0)
    assert out[0, 25, 42] == 0 and out[0, 25, 25] == 1
    assert np.allclose(centre_of_mass(out[0]), [25, 25], atol=0.15)


def test_segment_particle_recentres_an_off_centre_window():
    n, truth = 4, np.array([[40.0, 40.0], [40.5, 41.0], [41.0, 42.2], [39.4, 43.0]])
    rng = np.random.default_rng(2)
    od = np.stack([disc((90, 90), y, x, 10.0) for y, x in truth]) + rng.normal(0, 0.01, (n, 90, 90)).astype(np.float32)
    centres = truth.copy()
    centres[2] += [0.0, 6.0]  # a window placed 6 px off
    seg = segment_particle(od, centres, 19, segmenter=segment_rois, radius=10.0)
    assert seg.masks.shape == (n, 39, 39) and not seg.clipped.any() and not seg.outside.any()
    assert np.allclose(seg.com, truth, atol=0.1)
    assert np.allclose(seg.origins[2], np.round(seg.com[2]) - 19, atol=1)  # cut again around what it found
    near = segment_particle(od, truth + [0, 38], 19, segmenter=segment_rois, radius=10.0)
    assert near.clipped.all() and near.outside.any(axis=(1, 2)).all()


def test_bad_input_messages():
    with pytest.raises(ValueError, match="level"):
        SegmentOptions(level=1.2)
    with pytest.raises(ValueError, match="at least 9 px"):
        segment_roi(np.zeros((5, 40), np.float32))
    with pytest.raises(ValueError, match="segmenter returned shape"):
        segment_particle(
            np.zeros((2, 40, 40), np.float32), np.full((2, 2), 20.0), 8, segmenter=lambda r: r[:, :3], radius=5.0
        )


def test_every_option_is_documented():
    assert undocumented_fields(SegmentOptions) == []
