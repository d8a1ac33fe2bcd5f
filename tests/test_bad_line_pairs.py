"""Two or three adjacent bad detector lines (columns or rows: stuck, dead or of another gain) through a
particle: the lines repaired are the bad ones, filled from the good lines beyond them.

Each line of a pair stands out of its own neighbours by half its offset, and so do the two good lines
beside the pair (the other way). The defect pass once kept those two and filled them from the bad
pair (a stuck pair 120+121 through a particle: columns 119 and 122 named and replaced, the particle
split into two tracks 12.7 and 9.3 px off its centre), or found a pair of another gain not at all.
"""

import functools

import numpy as np
import pytest

from conftest import pair_by_position
from xanestrack.io.zingers import _fill, remove_defects
from xanestrack.pipeline import run_pipeline
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack
from xanestrack.synth_stress import STRESS_CASES, make_scene, reduced_params


@functools.lru_cache(maxsize=1)
def _scene():
    """A reduced default scene (3 particles, 160 x 160, 24 energies), its OD and particle 0's centre."""
    s = make_synthetic_stack(
        "default", seed=1, n_energies=24, shape=(160, 160), n_particles=3, radius_range=(12.0, 18.0)
    )
    first = s.truth.positions[(s.truth.positions.frame == 0) & (s.truth.positions.particle == 0)].iloc[0]
    return s, s.optical_density(), (int(round(first.y)), int(round(first.x)))


def _spoiled(od, kind, axis, lines):
    """``od`` with the rows (``axis`` 0) or columns (1) ``lines`` made bad, as the flat field makes them:
    stuck at one count in images and flats (transmission 1: OD 0), dead (no transmission: each frame's
    strongest absorption, as the reader sets it) or of a gain x 0.8 in the images alone (OD + 0.22)."""
    out = od.copy()
    view = out if axis == 0 else out.transpose(0, 2, 1)
    for line in lines:
        if kind == "stuck":
            view[:, line, :] = 0.0
        elif kind == "dead":
            view[:, line, :] = od.reshape(len(od), -1).max(axis=1)[:, None]
        else:
            view[:, line, :] += np.float32(-np.log(0.8))
    return out


def _pixels(shape, axis, lines):
    """Rows and columns of every pixel of the rows (``axis`` 0) or columns (1) ``lines``."""
    mask = np.zeros(shape, bool)
    (mask if axis == 0 else mask.T)[list(lines), :] = True
    return np.nonzero(mask)


def _check_repaired(kind, axis, offsets):
    s, clean, centre = _scene()
    lines = [centre[axis] + o for o in offsets]
    od = _spoiled(clean, kind, axis, lines)
    found = remove_defects(od)
    # the pixels repaired are those of the bad lines, every one and nothing else (the good lines beside
    # them included)
    yy, xx = _pixels(clean.shape[1:], axis, lines)
    assert set(map(tuple, found)) == set(zip(yy, xx)), (sorted(set(found[:, axis])), lines)
    # filled from the good lines beyond them: as the clean scene's lines are filled, pixel for pixel
    expected = clean.copy()
    _fill(expected, yy, xx)
    assert np.array_equal(od, expected)
    return s, clean, od


@pytest.mark.parametrize(
    "kind, axis, offsets",
    [
        ("stuck", 1, (0, 1)),
        ("stuck", 0, (0, 1)),
        ("dead", 1, (0, 1)),
        ("gain", 1, (0, 1)),
        ("gain", 0, (-1, 0)),
        ("stuck", 1, (-1, 0, 1)),
        ("gain", 1, (-1, 0, 1)),
    ],
)
def test_adjacent_bad_lines_through_a_particle_are_the_lines_repaired(kind, axis, offsets):
    _check_repaired(kind, axis, offsets)


def test_a_particle_under_a_stuck_pair_of_columns_is_followed_as_on_the_clean_scene():
    s, clean, (_, cx) = _scene()
    od = _spoiled(clean, "stuck", 1, (cx, cx + 1))
    remove_defects(od)
    ref = run_pipeline(Stack(clean.copy(), s.energies_ev))
    got = run_pipeline(Stack(od, s.energies_ev))
    assert len(got.particles) == len(ref.particles) == 3
    pairs = pair_by_position([p.positions[0] for p in got.particles], [p.positions[0] for p in ref.particles])
    assert sorted(pairs.values()) == [0, 1, 2]
    for i, j in pairs.items():
        worst = np.nanmax(np.abs(got.particles[i].positions - ref.particles[j].positions))
        assert worst < 0.1, (i, worst)


# ---- controls: where the rule must not change anything -------------------------------------------


@pytest.mark.parametrize("kind, axis", [("stuck", 1), ("stuck", 0), ("dead", 1), ("dead", 0), ("gain", 1), ("gain", 0)])
def test_a_single_bad_line_is_repaired_as_before(kind, axis):
    _check_repaired(kind, axis, (0,))


def test_two_bad_lines_one_apart_are_both_repaired():
    # the good line between them stands out of its neighbours by the whole offset, the other way
    _check_repaired("stuck", 1, (-1, 1))


def test_a_clean_scene_gets_nothing_repaired():
    _, clean, _ = _scene()
    od = clean.copy()
    assert len(remove_defects(od)) == 0 and np.array_equal(od, clean)
    od = make_synthetic_stack("default", seed=1, n_energies=40, shape=(256, 256), n_particles=5).optical_density()
    assert len(remove_defects(od)) == 0


@pytest.mark.parametrize("case", ["stress-all", "stress-fines"])
def test_fines_and_textured_particles_get_no_line_repaired(case):
    p = reduced_params(STRESS_CASES[case])
    knobs = ("n_energies", "shape", "radius_range", "n_particles", "cluster_sizes", "n_fines", "n_touching_fines")
    od = make_scene(case, seed=1, **{k: getattr(p, k) for k in knobs}).optical_density()
    before = od.copy()
    assert len(remove_defects(od)) == 0 and np.array_equal(od, before)


@pytest.mark.parametrize("axis", [0, 1])
def test_a_line_bad_in_just_enough_of_the_frames_looked_at_late_is_repaired(axis):
    """The pass stops looking at lines once none can stand out in ``DEFECT_SHARE`` of the frames it samples: a
    column (row) that goes bad late in the scan, in exactly as many of the sampled frames as needed (the last 12 of
    15), is still repaired; one frame fewer and it is a line gone bad mid-scan, not the detector's, and is left."""
    from xanestrack.io.zingers import DEFECT_SAMPLE, DEFECT_SHARE

    _, clean, _ = _scene()
    n = clean.shape[0]
    pick = np.unique(np.linspace(0, n - 1, min(n, DEFECT_SAMPLE)).round().astype(int))
    need = int(np.ceil(DEFECT_SHARE * pick.size))
    for late, repaired in ((need, True), (need - 1, False)):
        od = clean.copy()
        first = pick[-late]  # bad from this sampled frame on (and in the frames between)
        view = od if axis == 0 else od.transpose(0, 2, 1)
        view[first:, 60, :] += 0.22  # another gain
        defects = remove_defects(od)
        line = defects[:, axis] == 60
        assert bool(line.sum() >= clean.shape[2 - axis] - 2) is repaired, (late, int(line.sum()))
