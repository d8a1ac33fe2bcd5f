"""A learned mask that moves with the window's orientation is caught by the mask guard (pipeline._orientation_spread).

The learned segmenter left out a strip about 2 px wide on one side of a 12-px particle
(stress-jitter seed 1, 256 px, 60 energies, 5 particles, truth particle 4). The absolute positions
are anchored on the centre of mass, so the particle was vouched for 1.07 px off the truth (steady,
in y) in 45 of 60 frames, unflagged; the guard's share missed (``MASK_MISS``, the shape grown by
2 px) forgave the strip (0.006). The same scene transposed or turned gave 0.20-0.21 px. In
stress-jitter seed 2 transposed, a 19.7-px particle: vouched 1.15 px off (median), 0.21 px as given.
The segmenter's outline of such a particle's mean window moves with the window's orientation (its
centre of mass 0.72-0.97 px from the mean over the square's 8 orientations; every other particle
of these scenes 0.08-0.47 px): such a particle is now outlined classically and says so. A test of
the learned shape's centre against the classical outline's (the commit before) threw correct
learned masks away where the classical outline takes attached fines in (stress-fines seed 1).
"""

import numpy as np
import pytest

from conftest import pair_by_position
from xanestrack import pipeline as P
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.result import UNVOUCHED_FLAGS
from xanestrack.stack import Stack


def _truth_positions(s) -> np.ndarray:
    """(n_particles, n_frames, 2) true positions."""
    t = s.truth.positions
    par, fr = t["particle"].to_numpy(), t["frame"].to_numpy()
    out = np.full((par.max() + 1, fr.max() + 1, 2), np.nan)
    out[par, fr, 0], out[par, fr, 1] = t["y"].to_numpy(), t["x"].to_numpy()
    return out


def _learned_run(od, energies):
    from xanestrack.models import pipeline_models

    opts = PipelineOptions()
    det, seg = pipeline_models("learned", "learned", options=opts)
    return run_pipeline(Stack(np.ascontiguousarray(od), energies), options=opts, detector=det, segmenter=seg)


def _paired(r, truth):
    """[(particle result, its true positions (n_frames, 2), vouched (n_frames,) bool)] of the matched particles."""
    est = [np.nanmedian(np.asarray(p.positions, float), axis=0) for p in r.particles]
    pairs = pair_by_position(est, np.nanmedian(truth, axis=1))
    out = []
    for i, j in pairs.items():
        p = r.particles[i]
        out.append((p, truth[j], (np.asarray(p.frame_flags) & UNVOUCHED_FLAGS) == 0))
    return out


def _jitter(seed):
    from xanestrack.synth_stress import make_stress_stack

    return make_stress_stack("stress-jitter", seed, shape=(256, 256), n_energies=60, n_particles=5)


def test_a_learned_mask_moving_with_the_orientation_falls_back_to_classical():
    """stress-jitter seed 1 as given: every vouched frame of every particle within 0.6 px of the truth (before:
    truth particle 4 vouched 1.07 px off, median over 45 frames, 1.28 px at worst; now 0.075 px, 0.33 at worst,
    48 frames; its outline moved 0.72 px with the orientation)."""
    s = _jitter(1)
    r = _learned_run(s.optical_density(), s.energies_ev)
    paired = _paired(r, _truth_positions(s))
    assert len(paired) == 5
    for p, t, vouched in paired:
        err = np.hypot(*(np.asarray(p.positions, float) - t).T)[vouched]
        assert vouched.any() and err.max() < 0.6, (p.particle, np.round(err, 2), p.notes)
    assert sum(any("with the window's orientation" in n for n in p.notes) for p in r.particles) == 1


def test_the_same_on_a_larger_particle_transposed():
    """stress-jitter seed 2 transposed, truth particle 4 (r 19.7 px): its steady offset from the truth under 0.5 px
    (before: 1.02 px in y, 0.53 in x; now 0.41 px, the classical segmenter's own offset on this particle; its
    outline moved 0.97 px with the orientation)."""
    s = _jitter(2)
    truth = _truth_positions(s)[..., ::-1]
    r = _learned_run(np.swapaxes(s.optical_density(), -1, -2), s.energies_ev)
    p, t, vouched = next(q for q in _paired(r, truth) if np.allclose(q[1], truth[4], equal_nan=True))
    offset = np.median((np.asarray(p.positions, float) - t)[vouched], axis=0)
    assert vouched.sum() >= 30 and np.hypot(*offset) < 0.5, (offset, vouched.sum(), p.notes)
    assert sum("with the window's orientation" in n for n in p.notes) == 1
    assert not any("missed" in n for n in p.notes)


def test_the_default_scene_keeps_its_learned_masks_and_results(monkeypatch):
    """Control: default scene seed 1 (reduced: 256 px, 12 energies, 4 particles): every learned outline moves under
    0.2 px with the orientation (measured 0.02-0.11 px at 24 energies), no particle outlined classically, and the
    results identical to a run without the orientation's test."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=12, shape=(256, 256), n_particles=4)
    seen = []
    spread = P._orientation_spread

    def spy(*args):
        out = spread(*args)
        seen.append(out[0])
        return out

    monkeypatch.setattr(P, "_orientation_spread", spy)
    r = _learned_run(s.optical_density(), s.energies_ev)
    assert len(seen) == 4 and max(seen) < 0.2, seen
    assert not any("outlined by the classical segmenter" in n for p in r.particles for n in p.notes)
    monkeypatch.setattr(P, "MASK_ORIENTATION_PX", np.inf)
    before = _learned_run(s.optical_density(), s.energies_ev)
    assert len(before.particles) == len(r.particles) == 4
    for a, b in zip(before.particles, r.particles):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.frame_flags, b.frame_flags)
        np.testing.assert_array_equal(a.mean_spectrum, b.mean_spectrum)


def test_fines_attached_to_a_particle_leave_its_learned_masks():
    """Control: stress-fines seed 1 (``xanestrack synth --preset stress-fines --seed 1 --size 320 --n-energies 60``),
    truth particle 3 (r 22 px) with fines attached that the classical outline takes in. Its learned outline moves
    0.15 px with the orientation: it keeps its learned masks, vouched 0.08 px off the truth (median; the classical
    outline's centre test of the commit before sent it to the classical segmenter: 0.60 px)."""
    from xanestrack.synth_stress import make_stress_stack

    s = make_stress_stack("stress-fines", 1, shape=(320, 320), n_energies=60)
    truth = _truth_positions(s)
    r = _learned_run(s.optical_density(), s.energies_ev)
    p, t, vouched = next(q for q in _paired(r, truth) if np.allclose(q[1], truth[3], equal_nan=True))
    err = np.hypot(*(np.asarray(p.positions, float) - t).T)[vouched]
    assert vouched.sum() >= 50 and np.median(err) < 0.2, (np.median(err), vouched.sum(), p.notes)
    assert not any("outlined by the classical segmenter" in n for n in p.notes)


def _disc(size=31, centre=(15.0, 15.0), r=8.0):
    yy, xx = np.mgrid[:size, :size]
    return (np.hypot(yy - centre[0], xx - centre[1]) <= r).astype(np.float32)


def test_the_spread_is_nil_for_an_orientation_invariant_segmenter_and_not_for_a_one_sided_one():
    od = np.repeat(_disc()[None], 3, axis=0)
    centres = np.full((3, 2), 15.0)
    frames = np.ones(3, bool)

    def invariant(rois):
        return (rois > 0.5 * rois.max(axis=(1, 2), keepdims=True)).astype(np.float32)

    def one_sided(rois):  # leaves out a 5-px strip on the left of whatever it is shown
        m = invariant(rois)
        for k in range(len(m)):
            cols = np.flatnonzero(m[k].any(axis=0))
            m[k][:, cols[:5]] = 0.0
        return m

    invariant.fits_background = one_sided.fits_background = True
    spread, n = P._orientation_spread(invariant, od, centres, frames, 8.0, 15)
    assert n == 8 and spread == pytest.approx(0.0, abs=1e-9)
    spread, n = P._orientation_spread(one_sided, od, centres, frames, 8.0, 15)
    assert n == 8 and spread > P.MASK_ORIENTATION_PX


@pytest.mark.parametrize("t", P._orientations(5, 5))
def test_an_orientation_turns_back(t):
    x = np.arange(2 * 5 * 5, dtype=float).reshape(2, 5, 5)
    np.testing.assert_array_equal(P._oriented(P._oriented(x, t), t, inverse=True), x)
