"""Optical density given with NaN outside a round field: the corners are outside the field, not holes in the sample.

The probe's scene: the default scene (seed 2, 256 px, 60 energies, 6 particles) as optical density, every pixel
outside a circle of radius 128 px NaN (21 % of the frame). The wide-gap fill from the rim spread the particle at
(224, 197) out to the frame's border, where it was rejected as cut by it (5 of 6 tracked), and the run note placed
the gaps at row 126, column 126, the frame's centre, blaming flats saturated over the beam's hot spot.
"""

import numpy as np
import pytest

from xanestrack import stack as stack_module
from xanestrack import xanes
from xanestrack.outlines import _filled_run_note
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.stack import Stack, sanitize_stack


def _round_field(shape):
    """bool (rows, cols): the pixels outside a circle of radius half the frame, about its centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - shape[0] / 2, xx - shape[1] / 2) > 0.5 * shape[0]


def _disc_frame(shape=(80, 80), centre=(40, 40), radius=20, od=1.0, background=0.1):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    f = np.full(shape, background, np.float32)
    f[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = od
    return f


def test_nan_corners_take_the_frames_median_and_an_interior_patch_is_still_filled_from_its_rim(monkeypatch):
    frame = _disc_frame()
    od = np.stack([frame, frame.copy()])
    outside = _round_field(frame.shape)
    od[:, outside] = np.nan  # NaN outside the field in both frames
    od[1, 30:46, 32:48] = np.nan  # and a solid 16 x 16 patch inside the disc in the second
    calls = []
    rim = stack_module._fill_from_rim
    monkeypatch.setattr(stack_module, "_fill_from_rim", lambda f, gap: (calls.append(gap.copy()), rim(f, gap)))
    gaps = []
    clean, n = sanitize_stack(od, gaps=gaps)
    assert n == 2 * int(outside.sum()) + 256
    # the corners: the frame's median (the background, 0.1), as before the fill from the rim; not reported
    np.testing.assert_allclose(clean[:, outside], 0.1, atol=1e-6)
    # the patch inside the disc: from the disc around it, reported, and the only gap the rim's fill was given
    np.testing.assert_allclose(clean[1, 30:46, 32:48], 1.0, atol=1e-5)
    ((k, mask),) = gaps
    assert k == 1 and mask[38, 40] and not mask[outside].any()
    (gap,) = calls
    assert gap[30:46, 32:48].all() and not gap[outside].any()


def test_a_large_border_gap_is_not_filled_from_its_rim(monkeypatch):
    """At 1024 px the fill from the rim of the NaN corners took 4.7 s per frame (0.40 s with the 5 x 5 median)."""
    calls = []
    monkeypatch.setattr(stack_module, "_fill_from_rim", lambda f, gap: calls.append(gap))
    od = np.full((2, 256, 256), 0.3, np.float32)
    outside = _round_field(od.shape[1:])
    od[:, outside] = np.nan
    gaps = []
    clean, n = sanitize_stack(od, gaps=gaps)
    assert calls == [] and gaps == [] and n == 2 * int(outside.sum())
    np.testing.assert_allclose(clean, 0.3)


def test_the_rim_fill_is_the_ring_by_ring_mean_of_known_neighbours():
    """An oracle: ring by ring, each pixel next to a known one the mean of its known 3 x 3 neighbours."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    frame = ndimage.gaussian_filter(rng.normal(0.3, 0.1, (60, 60)), 2)
    gap = np.zeros(frame.shape, bool)
    gap[10:30, 12:25] = True
    gap[40:55, 35:58] = True
    f = frame.copy()
    f[gap] = np.nan
    stack_module._fill_from_rim(f, gap)
    want, known = np.where(gap, 0.0, frame), ~gap
    while not known.all():
        val = ndimage.uniform_filter(np.where(known, want, 0.0), size=3, mode="constant")
        cnt = ndimage.uniform_filter(known.astype(float), size=3, mode="constant")
        ring = ~known & (cnt > 1e-9)
        want[ring] = val[ring] / cnt[ring]
        known |= ring
    np.testing.assert_allclose(f, want, atol=1e-12)


def test_the_run_note_locates_each_patch_and_names_no_cause_it_cannot_know():
    gaps = []
    for k in range(3):
        mask = np.zeros((100, 100), bool)
        mask[10:20, 10:20] = True  # two patches, far apart: their mean (row 47, column 47) has none
        mask[80:90, 70:90] = True
        gaps.append((k, mask))
    note = _filled_run_note([], gaps, np.arange(3.0) + 8330)
    assert "2 patches centred near row 84, column 80; row 14, column 14" in note, note
    assert "hot spot" not in note and "a masked region" in note and "lower the exposure" not in note


@pytest.fixture(scope="module")
def scene():
    from xanestrack.synth_stress import make_scene

    return make_scene("default", seed=2, shape=(256, 256), n_energies=60, n_particles=6)


def _pairs(result, other, tol=1.0):
    """The particles of ``result`` and ``other`` at the same frame-0 position (within ``tol`` px)."""
    a = np.array([p.positions[0] for p in result.particles])
    b = np.array([p.positions[0] for p in other.particles])
    d = np.hypot(*(a[:, None] - b[None]).transpose(2, 0, 1))
    return [(i, int(np.argmin(d[i]))) for i in range(len(a)) if d[i].min() < tol]


def test_the_probes_round_field_as_od_keeps_the_particle_by_its_edge(scene):
    e = np.asarray(scene.energies_ev, float)
    od = scene.optical_density().astype(np.float32)
    opts = PipelineOptions(threads=1)
    lit = run_pipeline(Stack(od, e), options=opts)  # control: the same scene lit to its corners
    assert not any(n.startswith("wide patches") for n in lit.notes)
    od[:, _round_field(od.shape[1:])] = np.nan
    result = run_pipeline(Stack(od, e), options=opts)
    # every particle tracked, the one at (224, 197), its disc reaching the field's edge, among them
    assert len(result.particles) == len(lit.particles) == 6
    assert len(_pairs(result, lit)) == 6
    assert any(np.hypot(*(p.positions[0] - (224, 197))) < 2 for p in result.particles)
    assert "border" not in set(result.rejected.reason)
    assert not any(n.startswith("wide patches") for n in result.notes)
    assert not any(((p.pixel_flags & xanes.FLAG_FILLED) > 0).any() for p in result.particles)
