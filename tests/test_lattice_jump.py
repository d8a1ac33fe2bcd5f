"""A stage jump longer than one step's search, between key frames, in a lattice of alike particles: the
chain of frame-to-frame steps took the lattice moved by the jump less one spacing and missed the next key
frame by a spacing; spread over the frames between, that miss put windows on the neighbours, where both
position estimates agree (a 3 x 3 lattice 70 px apart, a 67.5-px jump: one frame 69.9 px off, unflagged)."""

import numpy as np
import pytest

from xanestrack import match, synth
from xanestrack.pipeline import run_pipeline
from xanestrack.result import UNVOUCHED_FLAGS
from xanestrack.stack import Stack

SPACING = 70.0
#: the stage jump (px): longer than one step's search (40 px), within it less one lattice spacing in x
JUMP = (27.5, -61.7)
N_ENERGIES = 60
#: the jump lands in the last frame before a key frame (every 8th of 60 frames)
JUMP_FRAME = 16


def _lattice(monkeypatch, jump):
    """A 3 x 3 lattice of alike particles, ``SPACING`` apart in a 320-px field, the stage's jitter and
    ``jump`` (px) added to the common motion from :data:`JUMP_FRAME` on (None: no jump). The repro's
    scene at its size (320 px, 60 energies): in a 300-px field or with 57 energies the old code flagged
    every frame it put on a neighbour."""
    rng = np.random.default_rng(5)
    layout = [
        synth._random_particle(rng, (87 + SPACING * iy, 125 + SPACING * ix), 18, "charged", peak_od=1.0)
        for iy in range(3)
        for ix in range(3)
    ]
    walk = synth._common_motion

    def with_jump(rng, p):
        g = walk(rng, p)
        if jump is not None:
            g[JUMP_FRAME:] += jump
        return g

    monkeypatch.setattr(synth, "_common_motion", with_jump)
    s = synth.make_synthetic_stack(
        "default",
        seed=3,
        layout=layout,
        shape=(320, 320),
        n_energies=N_ENERGIES,
        drift_range=(0.0, 0.0),
        jump_probability=0.0,
    )
    monkeypatch.setattr(synth, "_common_motion", walk)
    return s


def _errors(result, truth):
    """Per particle found: ``(error (n_frames,) px, vouched (n_frames,) bool)``: the distance of each
    frame's position from the true one (the constant offset of the two taken out), and whether it is
    vouched for (no flag of :data:`~xanestrack.result.UNVOUCHED_FLAGS`)."""
    pos = truth.positions
    first = pos[pos.frame == 0]
    out = []
    for p in result.particles:
        est = np.asarray(p.positions, float)
        j = int(np.argmin(np.hypot(first.y.to_numpy() - est[0, 0], first.x.to_numpy() - est[0, 1])))
        true = pos[pos.particle == first.particle.iloc[j]].sort_values("frame")[["y", "x"]].to_numpy(float)
        d = est - true
        d -= np.nanmedian(d, axis=0)
        vouched = (np.asarray(p.frame_flags).astype(np.int64) & UNVOUCHED_FLAGS) == 0
        out.append((np.hypot(*d.T), vouched))
    return out


def test_a_jump_beyond_the_search_in_a_lattice_puts_no_frame_on_a_neighbour(monkeypatch):
    """The jump is found, every frame placed right (before: frame 15 of two particles 70 px off, on the
    neighbour, vouched for); where it is not found, the frames whose common shift the chain's miss moved
    are flagged."""
    s = _lattice(monkeypatch, JUMP)
    stack = Stack(s.optical_density(), s.energies_ev)
    errors = _errors(run_pipeline(stack), s.truth)
    assert len(errors) == 9
    for err, vouched in errors:
        # no frame of any track on a neighbour unless it is flagged
        assert not (vouched & ~(err <= 5.0)).any(), np.round(err, 1)
    # the jump is found: every frame is placed right
    assert max(float(np.nanmax(err)) for err, _ in errors) < 2.0
    # not searched for, the frames the chain's miss moved are not vouched for
    monkeypatch.setattr(match, "_jump_beyond_search", lambda steps, *a, **k: steps)
    for err, vouched in _errors(run_pipeline(stack), s.truth):
        assert not (vouched & ~(err <= 5.0)).any(), np.round(err, 1)


def _unchanged_by_the_rule(monkeypatch, stack):
    """The pipeline's particles with :func:`xanestrack.match._jump_beyond_search` and without it."""
    with_rule = run_pipeline(stack)
    monkeypatch.setattr(match, "_jump_beyond_search", lambda steps, *a, **k: steps)
    without = run_pipeline(stack)
    monkeypatch.undo()
    return with_rule, without


@pytest.mark.parametrize("scene", ["default", "lattice"])
def test_scenes_without_a_jump_beyond_the_search_are_unchanged(monkeypatch, scene):
    """Controls: the default scene (seed 1, reduced) and the lattice without the jump come out as they did
    without the search for a jump (every flag and position alike), the lattice with no flag at all."""
    if scene == "default":
        s = synth.make_synthetic_stack("default", seed=1, n_energies=33, shape=(256, 256), n_particles=4)
    else:
        s = _lattice(monkeypatch, None)
    a, b = _unchanged_by_the_rule(monkeypatch, Stack(s.optical_density(), s.energies_ev))
    assert len(a.particles) == len(b.particles)
    for p, q in zip(a.particles, b.particles):
        np.testing.assert_array_equal(p.frame_flags, q.frame_flags)
        np.testing.assert_allclose(p.positions, q.positions)
    if scene == "lattice":
        errors = _errors(a, s.truth)
        assert len(errors) == 9
        assert all(vouched.all() and np.nanmax(err) < 2.0 for err, vouched in errors)


def test_a_chain_that_fits_no_key_frame_is_ambiguous_wherever_its_miss_was_spread():
    """An open (lattice) step in the last frame before a key frame, no combination of candidates ending on
    it: the miss, spread linearly over the frames between, moved the earlier frames by up to a spacing,
    and they are marked too (before: only frames from the open step on, none of those between)."""
    steps = {k: (k - 1, np.zeros((1, 2))) for k in range(9, 16)}
    steps[16] = (15, np.array([[28.0, 8.0], [-40.0, 8.0], [0.0, 0.0]]))
    common = np.zeros((17, 2))
    common[16] = (25.0, -62.0)
    vals, unknown = match._resolve_steps(steps, common, 8, 16, tol=8.0)
    assert unknown.all()


def test_lower_peaks_adding_up_closer_to_the_key_frame_do_not_win_over_the_highest():
    """The steps between key frames 6 and 12 of reduced stress-all seed 1, as its linking measured them (px, binned
    by 4): the highest peaks' chain misses the key frame by 6.1 px (the binned steps' rounding), three lower peaks
    of steps 10-12 add up to a miss of 1.8 px. Those were taken: frames 10 and 11 placed 30 px off the truth (true
    common steps 9 -> 10 -> 11: (-5.5, +1.6), (+0.2, +0.4)). The fewest steps off their highest peak first."""
    steps = {
        7: (6, np.array([[0.0, 0.0], [16.0, 8.0]])),
        8: (7, np.array([[0.0, -4.0]])),
        9: (8, np.array([[8.0, 4.0]])),
        10: (9, np.array([[-4.0, 0.0], [24.0, 40.0], [24.0, 28.0]])),
        11: (10, np.array([[0.0, 0.0], [4.0, -12.0]])),
        12: (11, np.array([[8.0, -4.0], [24.0, -4.0], [-32.0, -16.0]])),
    }
    common = np.zeros((13, 2))
    common[6], common[12] = (-13.2, 6.4), (-5.6, 6.6)
    vals, unknown = match._resolve_steps(steps, common, 6, 12, tol=8.0)
    # the truth there, on the key frames' origin (common = truth + (-3.2, -0.3) about)
    truth = np.array([[-12.0, 7.9], [-13.0, 5.6], [-4.4, 9.4], [-9.9, 11.0], [-9.7, 11.4]]) + (-3.2, -0.3)
    assert np.hypot(*(vals - truth).T).max() < 5.0, vals
    # the other consistent combination stays: those frames are not vouched for (as before)
    assert unknown[3:].all()
