"""A tracked particle passing over another: the frames where it lies over it are flagged ``overlap`` and left out
of the other's XANES.

The probe's scene: a 12-px particle crossing a still 22-px one at 1 px per frame, their outlines overlapping in
frames 51-118 of 143. The positions were right (the still one within 0.19 px), but 58 of the 68 overlapped frames
went into the still particle's XANES (35 of them vouched for again ``by_motion``): its E50 map +0.905 eV off
(median), 72.7 % of its pixels more than 0.5 eV off, no pixel or frame flagged. Reduced here: 80 energies, a
still NiO particle (r = 14 px) and a LiNiO2 particle (r = 10 px) crossing it past the edge (frames 47-68).
"""

import numpy as np
import pytest
from scipy import ndimage

from xanestrack.pipeline import OVERLAP_GROW_PX, PipelineOptions, _overlapping_frames, run_pipeline
from xanestrack.result import FRAME_FLAGS, flag_names
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import ni_energy_grid

N_ENERGIES = 80
SHAPE = (150, 170)
STILL = (75.0, 85.0, 14.0)  # y, x, radius
MOVER_Y, MOVER_RADIUS = 77.0, 10.0
NIO_E50 = 8340.05  # eV (:func:`ni_references`)
OVERLAP = 2**8


def _crossing_path(n=N_ENERGIES):
    """The mover's x per frame: still at 122 (13 px from the still particle's outline) until frame 40, across it
    at 2.1 px per frame until frame 75 (their outlines overlap in frames 47-68), still at 48 after."""
    t = np.clip((np.arange(n) - 40) / 35, 0, 1)
    return 122 - 74 * t


def _disc(radius, centre, shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def _dome(yy, xx, cy, cx, r):
    """A sphere's projected thickness (0-1) with a soft outline."""
    d = np.hypot(yy - cy, xx - cx)
    return (np.clip((r - d) / 1.2 + 0.5, 0, 1) * (0.3 + 0.7 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1)))).astype(
        np.float32
    )


def _scene(mover_x):
    """Optical density: the still NiO particle, the LiNiO2 mover at ``mover_x`` (per frame) and two still
    references, over a static matrix texture, with noise."""
    rng = np.random.default_rng(3)
    e = ni_energy_grid(N_ENERGIES)
    refs = ni_references()
    pre = 0.25 * (e / 8333.0) ** -3
    nio, lini = refs["NiO"](e) + pre, refs["LiNiO2"](e) + pre
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float32)
    matrix = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0).astype(np.float32)
    matrix *= 0.01 / matrix.std()
    still = _dome(yy, xx, *STILL)
    others = _dome(yy, xx, 128, 25, 10) + _dome(yy, xx, 25, 140, 11)
    od = np.empty((N_ENERGIES,) + SHAPE, np.float32)
    for k in range(N_ENERGIES):
        mover = _dome(yy, xx, MOVER_Y, mover_x[k], MOVER_RADIUS)
        od[k] = 0.6 * still * nio[k] + 0.35 * mover * lini[k] + 0.5 * others * nio[k] + matrix
    od += rng.normal(0, 0.004, od.shape).astype(np.float32)
    return Stack(od, e)


def _covered_share(mover_x):
    """Per frame: the share of the mover's outline that lies over the still particle's."""
    a = _disc(STILL[2], STILL[:2], SHAPE)
    return np.array([(a & _disc(MOVER_RADIUS, (MOVER_Y, x), SHAPE)).sum() for x in mover_x]) / (np.pi * MOVER_RADIUS**2)


def _run(mover_x):
    # key frames every 3rd: the mover moves 6 px between them, within the linker's gate
    return run_pipeline(_scene(mover_x), options=PipelineOptions(detect_every=3))


@pytest.fixture(scope="module")
def crossing():
    return _run(_crossing_path())


@pytest.fixture(scope="module")
def apart():
    return _run(np.full(N_ENERGIES, 122.0))  # the mover stays where it starts


def _at(result, y, x):
    """The particle reported nearest ``(y, x)`` in frame 0 (IDs are not compared)."""
    return min(result.particles, key=lambda p: np.hypot(*(p.positions[0] - (y, x))))


def _overlap(p):
    return (np.asarray(p.frame_flags).astype(int) & OVERLAP) > 0


def _e50_error(p):
    """Median E50 error (eV) over the still particle's kept pixels, and the share more than 0.5 eV off."""
    err = p.edge_maps["e50"][p.maps["quality_keep"] & np.isfinite(p.edge_maps["e50"])] - NIO_E50
    return float(np.median(err)), float(np.mean(np.abs(err) > 0.5)), err.size


def test_the_frames_a_particle_lies_over_another_are_flagged_and_left_out_of_its_xanes(crossing):
    still = _at(crossing, *STILL[:2])
    mover = _at(crossing, MOVER_Y, 122.0)
    assert still.particle != mover.particle
    assert np.abs(still.positions - STILL[:2]).max() < 0.6  # tracked where it stays
    share = _covered_share(_crossing_path())
    gap = np.abs(_crossing_path() - STILL[1]) - STILL[2] - MOVER_RADIUS  # px between their outlines
    overlap = _overlap(still)
    # every frame the mover covers a fifth of itself on the still particle is flagged (it is flagged from 3 %
    # on here); none where their outlines do not meet
    assert overlap[share >= 0.2].all(), np.flatnonzero(overlap)
    # none where their outlines are further apart than the rule's reach (the still particle's mask grown by
    # OVERLAP_GROW_PX); within it, at most one frame on the way out (frame 69, outlines 0.3 px apart, the mover's
    # own position there 3.3 px off and not vouched for, since the smoothing seeks a particle's jumps against the
    # median of the shared steps: its start at 2.1 px per frame is followed as a break)
    assert not overlap[gap > OVERLAP_GROW_PX].any(), np.flatnonzero(overlap)
    assert overlap[gap > 0].sum() <= 1, np.flatnonzero(overlap)
    # none of them is in its XANES (13 of the 22 were before, vouched for)
    used = np.asarray(still.xanes_frames, bool)
    assert not (used & overlap).any() and used.sum() >= N_ENERGIES - 25
    # the mover's frames over it are flagged as well
    assert _overlap(mover)[share >= 0.2].all()
    # the positions there stay vouched for: overlap is not a reason to doubt them
    assert flag_names(OVERLAP | FRAME_FLAGS["by_motion"]) == "by_motion|overlap"
    t = crossing.tracks[crossing.tracks["particle"] == still.particle].sort_values("frame")
    assert (t["flags"].astype(str).str.contains("overlap").to_numpy() == overlap).all()
    # its note names the particle that lay over it and the frames, and a run note counts them
    (note,) = [n for n in still.notes if "lies over it" in n]
    assert f"particle {mover.particle} in frames " in note and "eV" in note
    assert any("overlapped by another tracked particle" in n for n in crossing.notes)


def test_its_edge_energies_are_known_as_if_nothing_had_passed(crossing, apart):
    # with the overlapped frames in, its E50 map was -0.09 eV off (median) and 18 % of its kept pixels more than
    # 0.5 eV off; with the mover kept apart +0.10 eV and none. Now -0.02 eV and none
    median, off, n = _e50_error(_at(crossing, *STILL[:2]))
    median_apart, off_apart, _ = _e50_error(_at(apart, *STILL[:2]))
    assert n > 400
    assert abs(median) < 0.15 and abs(median_apart) < 0.15, (median, median_apart)
    assert off < 0.02 and off_apart < 0.02, (off, off_apart)


def test_a_particle_left_with_too_few_frames_has_its_xanes_declined_saying_why():
    # 58 of its 80 frames remain once the 22 it lies under are left out (71 with them in): asking for 65, its
    # XANES is declined, and the note says which frames were left out and why
    result = run_pipeline(_scene(_crossing_path()), options=PipelineOptions(detect_every=3, min_xanes_energies=65))
    still = _at(result, *STILL[:2])
    assert _overlap(still).sum() >= 20
    assert all(np.isnan(m).all() for m in still.edge_maps.values())
    (note,) = [n for n in still.notes if n.startswith("XANES skipped")]
    assert "(need 65)" in note and "another tracked particle lies over it (flag overlap)" in note


def test_particles_kept_apart_get_no_overlap_flag(apart):
    assert len(apart.particles) == 4
    for p in apart.particles:
        assert not _overlap(p).any(), p.particle
        assert not any("lies over it" in n for n in p.notes)
    assert not any("overlapped" in n for n in apart.notes)
    assert np.asarray(_at(apart, *STILL[:2]).xanes_frames, bool).sum() >= N_ENERGIES - 5


def test_the_overlap_flag_has_its_own_bit():
    bits = list(FRAME_FLAGS.values())
    assert FRAME_FLAGS["overlap"] == OVERLAP and len(set(bits)) == len(bits)
    assert all(b & (b - 1) == 0 for b in bits)  # one bit each
    assert flag_names(OVERLAP | FRAME_FLAGS["disagree"]) == "disagree|overlap"


def _grid_masks(radii):
    """Disc masks on grids of their own (radius + 6 px each side) and the grids' frame-0 origins for discs
    centred on (0, 0)."""
    masks = [_disc(r, (r + 6, r + 6), (2 * r + 13, 2 * r + 13)) for r in radii]
    return masks, [np.array([-(r + 6), -(r + 6)], float) for r in radii]


@pytest.mark.parametrize("radii", [(7, 7), (10, 10), (7, 40), (40, 7), (22, 12), (12, 22)])
@pytest.mark.parametrize("gap", [-1.0, 0.0, 1.0])
def test_a_touching_pair_drifting_less_than_a_pixel_is_not_flagged(radii, gap):
    # touching (or 1 px apart, or interpenetrating by 1 px): the neighbour covers the particle in its reference
    # frame as much as in any other. Drifting 0.6 px towards (or away from) each other over the scan adds at most
    # 0.07 of the smaller one's area (discs of 7-40 px radius), under OVERLAP_SHARE
    n = 30
    masks, origins = _grid_masks(radii)
    origins[1] = origins[1] + (0, radii[0] + radii[1] + gap)
    for drift in (0.0, 0.6, -0.6):
        shifts = [np.zeros((n, 2)), np.c_[np.zeros(n), np.linspace(0, -drift, n)]]
        for ref in (0, n - 1):
            assert not _overlapping_frames(masks, origins, shifts, [ref, ref]).any(), (drift, ref)


def test_a_particle_crossing_another_is_flagged_on_both_in_the_frames_it_covers():
    n = 61
    masks, origins = _grid_masks((22, 12))
    x = np.linspace(-60, 60, n)  # the small one crosses the large one, centre over centre in frame 30
    shifts = [np.zeros((n, 2)), np.c_[np.zeros(n), x - x[0]]]
    origins[1] = origins[1] + (0, x[0])
    for ref in (0, 30):  # a reference frame inside the crossing: the baseline is where it covers least
        covered = _overlapping_frames(masks, origins, shifts, [ref, ref])
        big, small = covered[0, 1], covered[1, 0]
        assert not covered[0, 0].any() and not covered[1, 1].any()
        # the outlines meet at |x| = 34, 36 grown by 2 px: flagged from a tenth of the small one's area on
        assert big[np.abs(x) <= 30].all() and not big[np.abs(x) >= 36].any()
        assert (small == big).sum() >= n - 4


def test_a_particle_that_stays_over_another_all_along_is_not_flagged():
    # a neighbour lying over it in every frame is there all along, as a touching one: no frame is more covered
    n = 20
    masks, origins = _grid_masks((22, 12))
    origins[1] = origins[1] + (0, 15)
    shifts = [np.zeros((n, 2)), np.zeros((n, 2))]
    assert not _overlapping_frames(masks, origins, shifts, [0, 0]).any()


def test_pairs_whose_masks_never_meet_skip_the_correlation_with_the_same_answer(monkeypatch):
    """:func:`xanestrack.pipeline._covered_areas` skips the FFT where the two masks' bounding boxes never meet
    (their grids' wide margins do): random fields of discs on margins, random walks, gaps. Every ``overlap`` frame
    and every inside share is what the full correlation of every pair gives."""
    from xanestrack import pipeline

    rng = np.random.default_rng(7)
    full = lambda m, axis: (0, m.shape[0 if axis == 1 else 1])  # noqa: E731 (the boxes: the whole grids)
    met = 0
    for _ in range(20):
        n, n_frames = int(rng.integers(2, 6)), 30
        masks, origins, shifts = [], [], []
        for _ in range(n):
            h, w = rng.integers(30, 70, 2)
            r = int(rng.integers(4, min(h, w) // 2 - 2))
            masks.append(_disc(r, (rng.integers(r, h - r), rng.integers(r, w - r)), (h, w)))
            origins.append(rng.uniform(0, 90, 2).round())
            walk = np.cumsum(rng.normal(0, 0.8, (n_frames, 2)), axis=0)
            walk[rng.random(n_frames) < 0.05] = np.nan
            shifts.append(walk)
        refs = [int(rng.integers(0, n_frames)) for _ in range(n)]
        frames = [np.isfinite(s).all(axis=1) for s in shifts]
        pruned = _overlapping_frames(masks, origins, shifts, refs)
        shares = pipeline._inside_shares(masks, origins, shifts, frames)
        with monkeypatch.context() as m:
            m.setattr(pipeline, "_extent", full)
            assert np.array_equal(pruned, _overlapping_frames(masks, origins, shifts, refs))
            np.testing.assert_allclose(shares, pipeline._inside_shares(masks, origins, shifts, frames), atol=1e-12)
        met += int((shares > 0).sum())
    assert met > 10  # pairs that do come near were compared too
