"""A learned mask whose centre lies off the particle's is caught by the mask guard (pipeline._mask_off_centre).

The learned segmenter left out a strip about 2 px wide on one side of a 12-px particle
(stress-jitter seed 1, 256 px, 60 energies, 5 particles, truth particle 4): its area as the
classical outline's, its centre of mass 1.35 px off that outline's. The absolute positions are
anchored on the centre of mass, so the particle was vouched for 1.07 px off the truth (steady,
in y) in 45 of 60 frames, unflagged; the guard's share missed (``MASK_MISS``, the shape grown by
2 px) forgave the strip (0.006). The same scene transposed or turned gave 0.20-0.21 px. In
stress-jitter seed 2 transposed, a 19.7-px particle: 0.54 px off centre, vouched 1.15 px off
(median), 0.21 px as given. Such a particle is now outlined classically and says so.
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


def test_a_learned_mask_lying_off_the_particles_centre_falls_back_to_classical():
    """stress-jitter seed 1 as given: every vouched frame of every particle within 0.6 px of the truth (before:
    truth particle 4 vouched 1.07 px off, median over 45 frames, 1.28 px at worst; now 0.08 px, 0.33 at worst,
    48 frames; the others 0.47-0.51 px at worst, unchanged)."""
    s = _jitter(1)
    r = _learned_run(s.optical_density(), s.energies_ev)
    paired = _paired(r, _truth_positions(s))
    assert len(paired) == 5
    for p, t, vouched in paired:
        err = np.hypot(*(np.asarray(p.positions, float) - t).T)[vouched]
        assert vouched.any() and err.max() < 0.6, (p.particle, np.round(err, 2), p.notes)
    assert sum(any("px off the centre" in n for n in p.notes) for p in r.particles) == 1


def test_the_same_on_a_larger_particle_transposed():
    """stress-jitter seed 2 transposed, truth particle 4 (r 19.7 px): its steady offset from the truth under 0.5 px
    (before: 1.02 px in y, 0.53 in x, its learned shape 0.54 px off the outline's centre; now 0.41 px, the
    classical segmenter's own offset on this particle)."""
    s = _jitter(2)
    truth = _truth_positions(s)[..., ::-1]
    r = _learned_run(np.swapaxes(s.optical_density(), -1, -2), s.energies_ev)
    p, t, vouched = next(q for q in _paired(r, truth) if np.allclose(q[1], truth[4], equal_nan=True))
    offset = np.median((np.asarray(p.positions, float) - t)[vouched], axis=0)
    assert vouched.sum() >= 30 and np.hypot(*offset) < 0.5, (offset, vouched.sum(), p.notes)
    assert any("px off the centre" in n for n in p.notes)


def test_the_default_scene_keeps_its_learned_masks_and_results(monkeypatch):
    """Control: default scene seed 1 (reduced: 256 px, 12 energies, 4 particles): every learned shape within 0.2 px
    of its outline's centre (measured 0.09-0.16 px at 24 energies), no particle outlined classically, and the
    results identical to a run without the centre's test."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=12, shape=(256, 256), n_particles=4)
    seen = []
    off_centre = P._mask_off_centre

    def spy(shape, outline):
        seen.append(off_centre(shape, outline))
        return seen[-1]

    monkeypatch.setattr(P, "_mask_off_centre", spy)
    r = _learned_run(s.optical_density(), s.energies_ev)
    assert len(seen) == 4 and max(seen) < 0.2, seen
    assert not any("outlined by the classical segmenter" in n for p in r.particles for n in p.notes)
    monkeypatch.setattr(P, "MASK_OFF_CENTRE_PX", np.inf)
    before = _learned_run(s.optical_density(), s.energies_ev)
    assert len(before.particles) == len(r.particles) == 4
    for a, b in zip(before.particles, r.particles):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.frame_flags, b.frame_flags)
        np.testing.assert_array_equal(a.mean_spectrum, b.mean_spectrum)


@pytest.mark.parametrize("off, expected", [(None, 0.0), ((0, 2), 2.0)])
def test_off_centre_is_the_distance_between_the_centres_of_mass(off, expected):
    outline = np.zeros((21, 21), bool)
    outline[5:15, 5:15] = True
    shape = outline if off is None else np.roll(outline, off, axis=(0, 1))
    assert P._mask_off_centre(shape, outline) == pytest.approx(expected)
    assert P._mask_off_centre(shape, None) == 0.0
