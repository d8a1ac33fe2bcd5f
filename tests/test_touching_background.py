"""A touching neighbour of another chemistry must not enter a particle's local background.

Two touching discs (f 0.1 and 0.9 LiNiO2, radius 20 and 25 px, the second 1.5 times as thick) and an isolated twin of the f 0.1 one, in aligned windows with a field
that changes from frame to frame (an offset and a tilt): the touching one's E50 must be the twin's once the
neighbour's pixels are left out of the ring (``background_exclude``), as it is not with the whole ring.
"""

import numpy as np
from scipy import ndimage

from xanestrack import xanes
from xanestrack.spectra import ni_references

HALF = 40  # the window: 81 x 81 px
RADIUS = 20.0
ENERGIES = np.r_[np.linspace(8250, 8320, 12), np.arange(8322, 8370, 1.0), np.linspace(8372, 8500, 14)]


def _disc(cy, cx, r=RADIUS, size=2 * HALF + 1):
    gy, gx = np.mgrid[0:size, 0:size]
    return np.clip(1.0 - np.hypot(gy - cy, gx - cx) / r, 0, None) ** 0.5  # thickness: a sphere-like profile


def _stack(discs, seed):
    """(n, h, w) OD: each disc's thickness times its spectrum, a frame offset and tilt, blur and noise."""
    refs = ni_references()
    rng = np.random.default_rng(seed)
    n, size = ENERGIES.size, 2 * HALF + 1
    gy, gx = np.mgrid[0:size, 0:size] / size
    od = np.zeros((n, size, size))
    for thick, f in discs:
        mu = 0.25 * (ENERGIES / 8333.0) ** -3 + (1 - f) * refs["NiO"](ENERGIES) + f * refs["LiNiO2"](ENERGIES)
        od += 0.5 * mu[:, None, None] * thick[None]
    field = rng.normal(0, 0.02, n)[:, None, None] + rng.normal(0, 0.02, n)[:, None, None] * (gy - gx)[None]
    od = ndimage.gaussian_filter(od, (0, 1.2, 1.2)) + field + rng.normal(0, 0.004, od.shape)
    return od.astype(np.float32)


def _mean_e50(stack, mask, **kw):
    res = xanes.analyse_particle(stack, mask, ENERGIES, uncertainty=False, **kw)
    core = ndimage.binary_erosion(mask, iterations=3)
    return float(np.nanmean(res["edge_maps"]["e50"][core])), res["notes"]


def test_touching_neighbour_left_out_of_the_background():
    c = HALF
    me = _disc(c, c)
    other = 1.5 * _disc(c, c + RADIUS + 25 - 3, r=25)  # larger, thicker, overlapping it by 3 px
    mask = me > 0.3
    touching = _stack([(me, 0.1), (other, 0.9)], seed=1)
    twin = _stack([(me, 0.1)], seed=2)
    e_twin, _ = _mean_e50(twin, mask)
    e_before, _ = _mean_e50(touching, mask)
    # the pipeline's exclusion: the neighbour's mask grown by NEIGHBOUR_GROW_PX
    exclude = ndimage.binary_dilation(other > 0.45, iterations=3)
    e_after, notes = _mean_e50(touching, mask, background_exclude=exclude)
    assert abs(e_before - e_twin) > 0.15, (e_before, e_twin)  # the neighbour's edge in the plane (-0.29 eV)
    assert abs(e_after - e_twin) < 0.03, (e_after, e_twin, e_before)
    assert not any("ring around it" in n for n in notes)  # three quarters of the ring left: a plane


def test_isolated_particle_unchanged_and_ring_too_small_noted():
    me = _disc(HALF, HALF)
    mask = me > 0.3
    stack = _stack([(me, 0.1)], seed=3)
    # nothing near: left out nothing, the same background as without the argument
    none = np.zeros(mask.shape, bool)
    np.testing.assert_array_equal(
        xanes.local_background(stack, mask), xanes.local_background(stack, mask, exclude=none)
    )
    # neighbours on three sides: what is left lies on one side only, a constant per frame, and the note says so
    gy, gx = np.mgrid[0 : 2 * HALF + 1, 0 : 2 * HALF + 1]
    exclude = ~mask & (gx < HALF + RADIUS)
    bg = xanes.local_background(stack, mask, exclude=exclude)
    assert np.ptp(bg, axis=(1, 2)).max() == 0.0  # no tilt
    _, notes = _mean_e50(stack, mask, background_exclude=exclude)
    assert any("constant per frame, not a tilted plane" in n for n in notes), notes


def _spy_on_neighbours(monkeypatch) -> list:
    """What the pipeline's :func:`~xanestrack.pipeline._neighbour_pixels` returns, kept in the list returned."""
    from xanestrack import pipeline

    seen = []
    real = pipeline._neighbour_pixels

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pipeline, "_neighbour_pixels", spy)
    return seen


def test_no_neighbour_no_change_in_the_pipeline(small_synth, monkeypatch):
    """Control: particles that no other comes near get nothing left out of their rings, and no note."""
    from xanestrack import pipeline
    from xanestrack.stack import Stack

    seen = _spy_on_neighbours(monkeypatch)
    r = pipeline.run_pipeline(Stack(small_synth.optical_density(), small_synth.energies_ev))
    assert len(seen) == 1 and len(seen[0]) == len(r.particles) >= 3
    assert all(x is None for x in seen[0])
    assert not any("ring around it" in n for p in r.particles for n in p.notes)


def test_the_pipeline_places_a_touching_neighbour_in_the_ring(small_synth, monkeypatch):
    """A disc of f 0.9 added beside a particle of the small scene, touching it and moving with it: the pixels left
    out of that particle's ring cover where the disc lies, and most of its ring stays free (a plane)."""
    from xanestrack import pipeline
    from xanestrack.stack import Stack

    od, e = small_synth.optical_density(), small_synth.energies_ev
    tp = small_synth.truth.positions
    p0 = tp[tp["particle"] == 0].sort_values("frame")[["y", "x"]].to_numpy()
    r0, r1 = float(small_synth.truth.radii[0]), 22.0
    refs = ni_references()
    mu = 0.25 * (e / 8333.0) ** -3 + 0.1 * refs["NiO"](e) + 0.9 * refs["LiNiO2"](e)
    gy, gx = np.mgrid[0 : od.shape[1], 0 : od.shape[2]]
    disc = np.empty_like(od)
    for k in range(len(e)):
        cy, cx = p0[k] + [0.0, r0 + r1 - 3.0]  # overlapping particle 0 by 3 px
        disc[k] = 0.8 * np.sqrt(np.clip(1 - (np.hypot(gy - cy, gx - cx) / r1) ** 2, 0, None)) * mu[k]
    seen = _spy_on_neighbours(monkeypatch)
    r = pipeline.run_pipeline(Stack((od + disc).astype(np.float32), e))
    i = int(np.argmin([np.hypot(*(p.positions[0] - p0[0])) for p in r.particles]))
    p, left_out = r.particles[i], seen[0][i]
    assert left_out is not None
    oy, ox = p.origin
    h, w = p.mask.shape
    there = disc[0, oy : oy + h, ox : ox + w] > 0.1 * disc[0].max()  # where the disc lies in its window
    assert left_out[there].mean() > 0.95  # 1.0 seen
    ring, model, n_ring, n_free = xanes._background_ring(p.mask, left_out)
    assert model == "plane" and n_free > 0.6 * n_ring, (model, n_free, n_ring)  # 820 of 1022 seen
    # the result keeps what was left out, and redo_xanes (the same energies) measures as the run did
    assert p.background_exclude is not None and np.array_equal(p.background_exclude, left_out)
    again = pipeline.redo_xanes(r, energies_ev=r.energies_ev)
    q = again.particles[i]
    np.testing.assert_allclose(q.edge_maps["e50"], p.edge_maps["e50"], equal_nan=True, atol=1e-9)
