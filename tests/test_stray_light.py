"""Light the sample does not absorb (harmonics, stray light) on thick particles: measured, noted and flagged.

``I = I0 [(1 - f) exp(-OD) + f]`` compresses the OD where the sample is thick, more above the edge than below:
E50 reads low, more the thicker the pixel (the probe's thick uniform particles at f = 3 %: -0.09 to -0.51 eV, sigma
0.05). :mod:`xanestrack.chemistry.stray` measures ``f`` from how the particles' pre-edge OD falls behind their
post-edge OD as they thicken; thickness alone (f = 0) and the thin default scene must not be taken for it.
"""

from dataclasses import replace

import numpy as np
import pytest

from xanestrack import xanes
from xanestrack.chemistry.stray import STRAY_NOTE_START
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.stack import Stack


def _thick_scene(fraction, *, seed=5):
    """The probe's scene: six uniform NiO / LiNiO2 particles three times the default scene's thickness (post-edge OD up to about 3),
    exposed with a share ``fraction`` of the beam not absorbed."""
    import xanestrack.synth as synth

    orig_particle, orig_expose = synth._random_particle, synth._expose

    def particle(rng, centre, radius, pattern, isolated=True, peak_od=None):
        q = orig_particle(rng, centre, radius, pattern, isolated, peak_od)
        return replace(q, peak_od=q.peak_od * 3) if peak_od is None else q

    def expose(rng, p, od, k, dark, grid, flat_phase):
        return orig_expose(rng, p, -np.log((1 - fraction) * np.exp(-od) + fraction), k, dark, grid, flat_phase)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "_random_particle", particle)
        mp.setattr(synth, "_expose", expose)
        s = synth.make_synthetic_stack(
            "default",
            seed=seed,
            shape=(256, 256),
            n_energies=60,
            n_particles=6,
            radius_range=(10.0, 28.0),
            patterns=["phase_NiO", "phase_LiNiO2"],
        )
    stack = Stack(np.asarray(s.optical_density(), np.float32), np.asarray(s.energies_ev, float))
    return s, run_pipeline(stack, options=PipelineOptions(threads=1))


def _stray_notes(result):
    return [n for n in result.notes if n.startswith(STRAY_NOTE_START)]


def _flagged(result):
    return sum(int(np.count_nonzero(np.asarray(p.pixel_flags) & xanes.FLAG_THICK)) for p in result.particles)


def test_three_percent_unabsorbed_light_is_measured_noted_and_flagged():
    _, r = _thick_scene(0.03)
    notes = _stray_notes(r)
    assert len(notes) == 1 and "seems to reach the detector" in notes[0], r.notes
    share = float(notes[0].split("about ")[1].split(" %")[0])
    assert 2.0 <= share <= 4.0, notes[0]
    assert _flagged(r) > 0
    for p in r.particles:
        thick = (np.asarray(p.pixel_flags) & xanes.FLAG_THICK) > 0
        assert not np.any(np.asarray(p.maps["quality_keep"]) & thick)


def test_thick_particles_without_it_are_not_flagged():
    """Control: the same thick scene without the light: nothing measured, nothing flagged (a note may say how much
    1 % would move E50 there)."""
    _, r = _thick_scene(0.0)
    assert _flagged(r) == 0
    assert all("seems to reach the detector" not in n for n in _stray_notes(r)), _stray_notes(r)


def test_default_scene_is_left_alone():
    """Control: the default scene (seed 1, reduced; thin particles whose pre- to post-edge share changes by a few %
    for other reasons) gets no note and no flag."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, shape=(256, 256), n_energies=60, n_particles=6)
    stack = Stack(np.asarray(s.optical_density(), np.float32), np.asarray(s.energies_ev, float))
    r = run_pipeline(stack, options=PipelineOptions(threads=1))
    assert not _stray_notes(r), _stray_notes(r)
    assert _flagged(r) == 0
