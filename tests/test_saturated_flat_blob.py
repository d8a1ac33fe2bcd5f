"""Flats saturated over the beam's hot spot: a wide patch of pixels without a value over a particle.

The probe's scene (the default scene exposed 11.5x, flats clipped at 65535 over a blob up to 8 % of a flat) is
reduced here to the default synthetic scene with a solid saturated disc in the flats of the edge's frames, over
part of one particle. The 5 x 5 median fill, in which the missing pixels count as the frame's median, made the
blob background inside the particle: its E50 was lost in every core pixel and its notes blamed a "metal-like"
shoulder and the references.
"""

import numpy as np
import pytest

from xanestrack import xanes
from xanestrack.io.flatfield import optical_density
from xanestrack.outlines import FILLED_NOTE
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.stack import Stack, sanitize_stack


def _disc_frame(shape=(80, 80), centre=(40, 40), radius=20, od=1.0, background=0.1):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    f = np.full(shape, background, np.float32)
    f[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = od
    return f


def test_a_wide_gap_inside_a_particle_is_filled_from_the_particle_and_reported():
    frame = _disc_frame()
    od = np.stack([frame, frame.copy()])
    od[1, 30:46, 32:48] = np.nan  # a solid 16 x 16 patch inside the disc
    gaps = []
    clean, n = sanitize_stack(od, gaps=gaps)
    assert n == 256
    # the frame's median (the background, 0.1) filled it before: filled from the disc around it now
    np.testing.assert_allclose(clean[1, 30:46, 32:48], 1.0, atol=1e-5)
    ((k, mask),) = gaps
    assert k == 1 and mask.any() and not mask[~np.isnan(od[1])].any()
    # the pixels reported are those whose 5 x 5 is almost all missing: the inside of the patch
    assert mask[38, 40] and not mask[30, 32]


def test_scattered_missing_pixels_keep_their_5x5_median_and_are_not_reported():
    rng = np.random.default_rng(0)
    frame = _disc_frame() + rng.normal(0, 0.01, (80, 80)).astype(np.float32)
    od = np.stack([frame, frame.copy()])
    holes = rng.random((80, 80)) < 0.05
    od[1][holes] = np.nan
    gaps = []
    clean, n = sanitize_stack(od, gaps=gaps)
    assert n == int(holes.sum()) and gaps == []
    from scipy import ndimage

    f = np.where(holes, np.nanmedian(od[1]), od[1])
    np.testing.assert_array_equal(clean[1][holes], ndimage.median_filter(f, size=5)[holes])


@pytest.fixture(scope="module")
def scene():
    from xanestrack.synth import make_synthetic_stack

    return make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(160, 160), n_particles=3, radius_range=(12.0, 18.0)
    )


def _under_patch(s):
    """The particle the hot spot lies over (the largest) and the disc of the flats saturated there."""
    j = int(np.argmax(s.truth.radii))
    p0 = s.truth.positions
    y, x = p0[(p0.particle == j) & (p0.frame == 0)][["y", "x"]].to_numpy()[0]
    r = float(s.truth.radii[j])
    yy, xx = np.mgrid[: s.flats.shape[1], : s.flats.shape[2]]
    # centred on the particle's right edge: it covers part of the particle and the background beside it
    return j, (yy - y) ** 2 + (xx - (x + 0.5 * r)) ** 2 < r**2


def _run(s, flats):
    notes = []
    od = optical_density(np.round(s.counts).astype(np.uint16), flats=flats, darks=s.dark[None], notes=notes)
    st = Stack(od, np.asarray(s.energies_ev, float), metadata={"source": "scan.h5"})
    return run_pipeline(st, options=PipelineOptions(threads=1)), notes


def _match(result, s, j):
    """The run's particle closest to truth particle j in frame 0."""
    p0 = s.truth.positions
    y, x = p0[(p0.particle == j) & (p0.frame == 0)][["y", "x"]].to_numpy()[0]
    return min(result.particles, key=lambda p: np.hypot(*(p.positions[0] - (y, x))))


def _e50_error(p, s, j, pixels):
    """Mean E50 of ``pixels`` (the particle's grid) less the truth there (eV), and how many compared."""
    a = p.edge_maps["e50"]
    b = s.truth.edge_maps[j]
    by, bx = s.truth.edge_map_origins[j]
    d = []
    for iy, ix in np.argwhere(pixels & np.isfinite(a)):
        yy, xx = int(round(iy + p.origin[0] - by)), int(round(ix + p.origin[1] - bx))
        if 0 <= yy < b.shape[0] and 0 <= xx < b.shape[1] and np.isfinite(b[yy, xx]):
            d.append(a[iy, ix] - b[yy, xx])
    return (float(np.mean(d)) if d else float("nan")), len(d)


@pytest.fixture(scope="module")
def clean_run(scene):
    return _run(scene, np.round(scene.flats).astype(np.uint16))


def test_the_particle_under_a_saturated_flat_blob_keeps_its_chemistry_on_its_unaffected_pixels(scene, clean_run):
    s = scene
    j, patch = _under_patch(s)
    flats = np.round(s.flats).astype(np.uint16)
    edge = slice(14, 27)  # the frames over the edge, as the hot spot's flats were at 11.5x
    flats[edge][:, patch] = 65535
    result, notes = _run(s, flats)
    p = _match(result, s, j)
    assert (
        np.hypot(*(p.positions - _match(clean_run[0], s, j).positions).T).max() < 0.3
    )  # the registration is not thrown
    flagged = (p.pixel_flags & xanes.FLAG_FILLED) > 0
    kept = p.kept & p.mask
    assert flagged.any() and kept.sum() > 100 and not (flagged & kept).any()
    err, n = _e50_error(p, s, j, kept)
    base, _ = _e50_error(_match(clean_run[0], s, j), s, j, _match(clean_run[0], s, j).kept)
    assert n > 100 and abs(err - base) < 0.1, (err, base, n)
    (note,) = [n for n in p.notes if n.startswith(FILLED_NOTE)]
    assert "saturated flat" in note and "left out of its means" in note
    assert not any("metal-like" in n for n in p.notes)
    run_note = [n for n in result.notes if n.startswith("wide patches of input pixels without a value")]
    assert len(run_note) == 1 and f"({p.particle})" in run_note[0] and "13 frames" in run_note[0]
    (flat_note,) = [n for n in notes if "flat (reference) images" in n]
    assert "in 13 of the 40 flat (reference) images" in flat_note and "centred near row" in flat_note
    # the other particles lie away from the blob: nothing flagged
    assert all(not (q.pixel_flags & xanes.FLAG_FILLED).any() for q in result.particles if q is not p)


def test_scattered_saturated_flat_pixels_and_the_default_scene_flag_nothing(scene, clean_run):
    s = scene
    result, notes = clean_run
    assert all(not (p.pixel_flags & xanes.FLAG_FILLED).any() for p in result.particles)
    assert not any(n.startswith(FILLED_NOTE) for p in result.particles for n in p.notes)
    assert not any("wide patches" in n for n in result.notes)
    # scattered clipped pixels (3 % of the edge frames' flats): the 5 x 5 median as before, nothing flagged
    rng = np.random.default_rng(2)
    flats = np.round(s.flats).astype(np.uint16)
    flats[14:27][rng.random(flats[14:27].shape) < 0.03] = 65535
    result, notes = _run(s, flats)
    assert all(not (p.pixel_flags & xanes.FLAG_FILLED).any() for p in result.particles)
    assert not any("wide patches" in n for n in result.notes)
    assert any("saturated detector pixels" in n for n in notes)
