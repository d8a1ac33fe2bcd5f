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


def test_offset_windows_decouple_the_centre_of_mass_from_where_the_window_was_placed():
    """Windows cut off the expected position: a clear particle's centre of mass does not
    change, a neighbour in the window is still not taken for it, and a segmenter that leans
    to its window's centre no longer leans to the position that placed the window."""
    from xanestrack.pipeline import window_offsets

    n = 6
    truth = np.array([[45.0 + 0.3 * k, 45.0 - 0.2 * k] for k in range(n)])
    rng = np.random.default_rng(4)
    od = np.stack([disc((96, 96), y, x, 10.0) + disc((96, 96), y, x + 26, 7.0) for y, x in truth])
    od += rng.normal(0, 0.01, od.shape).astype(np.float32)
    off = window_offsets(3, n, 2.5)
    assert np.array_equal(off, window_offsets(3, n, 2.5)) and np.abs(off).max() <= 2.5 and np.abs(off).max() > 1
    assert not window_offsets(3, n, 0.0).any()
    a = segment_particle(od, truth, 19, segmenter=segment_rois, radius=10.0)
    b = segment_particle(od, truth, 19, segmenter=segment_rois, radius=10.0, offsets=off)
    assert np.allclose(b.com, truth, atol=0.1) and np.allclose(a.com, b.com, atol=0.05)
    assert np.array_equal(b.origins, np.round(truth + off).astype(int) - 19)

    def leaning(rois):  # a "segmenter" that only ever finds its window's centre
        m = np.zeros(rois.shape, np.float32)
        c = rois.shape[1] // 2
        m[:, c - 8 : c + 9, c - 8 : c + 9] = 1.0
        return m

    c0 = segment_particle(od, truth, 19, segmenter=leaning, radius=10.0, separate=False).com
    c1 = segment_particle(od, truth, 19, segmenter=leaning, radius=10.0, separate=False, offsets=off).com
    assert np.allclose(c0, np.round(truth), atol=1e-6)  # agrees with the placing estimate by construction
    assert np.hypot(*(c1 - truth).T).max() > 1.0  # offset: the lean shows as a disagreement


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
