"""A touching neighbour that the window clips is cut off at the neck (segment.isolate_particle).

The window clips a touching neighbour, so a mask joined to one can stay under ``max_area_ratio``
times the particle's disc and is then not cut by the area rule: it runs out of the window in
every frame and the particle is left out of the run (the probe's crowded scene c4: an r = 62 px
particle between an r = 46 and an r = 44 one, "joined to something larger beside it"). A mask
reaching the window's edge is now cut at its necks too; an isolated particle, a particle cut by
the frame's border and one with a wide-necked lobe of its own keep their masks.
"""

import numpy as np
import pytest

from xanestrack import segment
from xanestrack.register import centre_of_mass, window_half
from xanestrack.segment import isolate_particle, segment_particle, segment_rois

R = 62.0
HALF = window_half(R)  # 87: windows of 175 px
N, C = 260, 130.0  # the particle's centre in a 260-px frame, its window [43, 217]
# as in scene c4: two touching neighbours of r 46 and 44 overlapping it by 3 px, their centres outside
# the window, at its right and below
NEIGHBOURS = [
    (C, C + R + 46 - 3, 46.0),
    (C + (R + 41) * np.sin(np.radians(100)), C + (R + 41) * np.cos(np.radians(100)), 44.0),
]


def soft_disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1).astype(np.float32)


def crowded_frame(neighbours=True, centre=(C, C)):
    """OD of the particle (r 62) with its two touching neighbours, on a faint background."""
    od = 0.8 * soft_disc((N, N), *centre, R)
    for cy, cx, r in NEIGHBOURS if neighbours else []:
        od = np.maximum(od, 0.8 * soft_disc((N, N), cy, cx, r))
    return od + 0.05


def at_edge(mask):
    m = mask > 0.5
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def without_edge_rule(monkeypatch):
    """``isolate_particle`` as before the window's-edge rule: every window pixel taken as outside."""
    isolate = segment.isolate_particle

    def before(masks, **kw):
        kw["outside"] = np.ones(np.shape(masks), bool)
        return isolate(masks, **kw)

    monkeypatch.setattr(segment, "isolate_particle", before)


def test_the_masks_of_the_window_are_joined_to_clipped_neighbours_under_the_area_rule():
    # the scene is what the rule is for: the window's mask runs out of it, its area under 1.35 discs
    od = crowded_frame()[None]
    seg = segment_particle(od, np.array([[C, C]]), HALF, segmenter=segment_rois, radius=R, separate=False)
    area = np.count_nonzero(seg.masks[0] > 0.5)
    assert at_edge(seg.masks[0]) and np.pi * R**2 < area < 1.35 * np.pi * R**2


def test_a_particle_touching_two_neighbours_the_window_clips_is_cut_to_itself():
    od = crowded_frame()[None]
    seg = segment_particle(od, np.array([[C, C]]), HALF, segmenter=segment_rois, radius=R)
    # before: the mask ran out of the window, its centre of mass 10.7 px off the particle's
    assert not at_edge(seg.masks[0])
    np.testing.assert_allclose(seg.com[0], [C, C], atol=1.0)
    assert np.count_nonzero(seg.masks[0] > 0.5) == pytest.approx(np.pi * R**2, rel=0.1)


def test_soft_masks_joined_to_clipped_neighbours_are_cut_at_the_necks():
    # the masks alone (any segmenter's), the particle off the window's centre by a few px
    n = 2 * HALF + 1
    masks, truth = [], np.array([[HALF, HALF], [HALF + 2.5, HALF - 1.5]])
    for cy, cx in truth:
        m = soft_disc((n, n), cy, cx, R)
        for ny, nx, r in NEIGHBOURS:
            m = np.maximum(m, soft_disc((n, n), cy + ny - C, cx + nx - C, r))
        masks.append(m)
    masks = np.array(masks)
    assert all(at_edge(m) for m in masks) and (masks > 0.5).sum(axis=(1, 2)).max() < 1.35 * np.pi * R**2
    out = isolate_particle(masks, radius=R, centres=truth)
    assert not any(at_edge(m) for m in out)
    np.testing.assert_allclose(centre_of_mass(out), truth, atol=1.0)


def test_an_isolated_particle_and_one_cut_by_the_frames_border_keep_their_masks(monkeypatch):
    """Control: the masks are bit for bit those without the rule."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=6, shape=(200, 200), n_particles=4)
    od, truth = s.optical_density(), s.truth.positions
    lone = crowded_frame(neighbours=False)[None]
    at_border = crowded_frame(neighbours=False, centre=(C, 30.0))[None]  # cut by the frame's left border
    cases = [(lone, np.array([[C, C]]), R), (at_border, np.array([[C, 30.0]]), R)]
    for pid, r in enumerate(s.truth.radii):
        cases.append((od, truth[truth.particle == pid].sort_values("frame")[["y", "x"]].to_numpy(float), r))

    def masks(image, centres, r):
        return segment_particle(image, centres, window_half(r), segmenter=segment_rois, radius=r)

    now = [masks(*case) for case in cases]
    assert now[1].clipped[0] and now[1].masks[0][:, -now[1].origins[0, 1]].any()  # it reaches the frame's border
    with monkeypatch.context() as mp:
        without_edge_rule(mp)
        for seg, case in zip(now, cases):
            np.testing.assert_array_equal(seg.masks, masks(*case).masks)


def test_a_wide_necked_lobe_of_the_particle_itself_is_not_cut():
    # an irregular particle: a disc of r 62 with a lobe of r 40 on a wide neck (70 px), no neighbour; the
    # window of the disc's radius, centred on the disc, clips the lobe: the mask runs out of it
    od = np.maximum(0.8 * soft_disc((N, N), C, C, R), 0.8 * soft_disc((N, N), C - 45, C + 55, 40.0)) + 0.05
    cut = slice(int(C) - HALF, int(C) + HALF + 1)
    masks = segment_rois(od[None, cut, cut])
    assert at_edge(masks[0])
    out = isolate_particle(masks, radius=R)
    np.testing.assert_array_equal(out > 0.5, masks > 0.5)
    before = isolate_particle(masks, radius=R, outside=np.ones(masks.shape, bool))
    np.testing.assert_array_equal(out, before)


def test_a_long_stack_separated_in_blocks_of_frames_gives_the_same_masks(monkeypatch):
    """isolate_particle works frame by frame: cut in blocks of frames (a large particle's long stack, whose labels'
    statistics took 412 MiB at once), the masks are the same, with fines, clipped neighbours, off-centre particles,
    pixels outside the frame and a frame with nothing at its centre."""
    import tracemalloc

    rng = np.random.default_rng(3)
    n = 2 * HALF + 1
    masks, centres = [], []
    for k in range(11):
        cy, cx = HALF + rng.uniform(-3, 3), HALF + rng.uniform(-3, 3)
        m = soft_disc((n, n), cy, cx, R)
        for ny, nx, r in NEIGHBOURS:  # the neighbours, moved into the window's frame
            m = np.maximum(m, soft_disc((n, n), ny - C + HALF, nx - C + HALF, r))
        for _ in range(6):  # fines on and beside the rim
            a = rng.uniform(0, 2 * np.pi)
            m = np.maximum(m, soft_disc((n, n), cy + (R + 2) * np.sin(a), cx + (R + 2) * np.cos(a), rng.uniform(2, 5)))
        masks.append(m if k != 4 else np.zeros_like(m))
        centres.append((cy, cx))
    masks, centres = np.array(masks, np.float32), np.array(centres)
    outside = np.zeros(masks.shape, bool)
    outside[7, :, :20] = True  # a window the frame's border cuts
    kw = dict(radius=R, centres=centres, outside=outside)
    tracemalloc.start()
    whole = isolate_particle(masks, **kw)
    whole_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert segment.ISOLATE_BLOCK_PX >= masks.size  # in one block by default
    monkeypatch.setattr(segment, "ISOLATE_BLOCK_PX", 3 * n * n)  # blocks of 3 frames: 3, 3, 3, 2
    tracemalloc.start()
    blocks = isolate_particle(masks, **kw)
    blocks_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(whole, blocks) and (blocks[4] == 0).all() and (blocks > 0.5).sum() > 0
    assert not at_edge(blocks[0])  # the neighbours were cut off
    assert blocks_peak < 0.6 * whole_peak, (blocks_peak, whole_peak)
