"""Particles that swell together: their rims are flagged as one swelling on its own is.

The registration moves each particle's window by a translation and never scales it, so an outline that grows
sweeps through the particle's rim as the energy crosses the edge, whatever makes it grow: its own swelling, a
swelling every particle shares, or the field's magnification. The moving-rim pass took the change the particles
share out before its test (a shared change is not a particle's own), and with it the flag: six particles swelling
by 4 % together (the field not magnified, its common scale 1.0000), the pixels 0-1 px inside their outlines read
+0.49 to +0.79 eV (3-5 times their standard error), none flagged, nothing said, where one of them swelling alone
had 453 rim pixels flagged (a probe of the tenth round). Now the rim is flagged where the outline itself moves as
far, and the note says the change is shared, not the particle's own.
"""

import pytest

import xanestrack.synth as synth
from xanestrack import xanes
from xanestrack.pipeline import MOVING_RIM_NOTE, run_pipeline
from xanestrack.stack import Stack

#: four uniform particles of 14-24 px: 6 % is 0.84-1.44 px in radius, beyond OUTLINE_CHANGE_PX (0.8 px)
SCENE = dict(seed=2, n_particles=4, shape=(240, 240), n_energies=60, radius_range=(14.0, 24.0), patterns=["inactive"])
SWELL = 0.06


def _scene(amount: float):
    """The scene with every particle scaled by ``1 + amount * k / (n - 1)`` about its centre in frame ``k``."""
    state = {"k": -1, "on": True}
    fields, matrix, truth = synth._particle_fields, synth._matrix_od, synth._truth
    n = SCENE["n_energies"]

    def scaled_fields(q, ly, lx):
        s = 1 + amount * state["k"] / (n - 1) if state["on"] else 1.0
        return fields(q, ly / s, lx / s)

    def counting_matrix(*a, **kw):  # called once per frame, before the frame's particles are drawn
        state["k"] += 1
        return matrix(*a, **kw)

    def unscaled_truth(*a, **kw):
        state["on"] = False
        return truth(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "_particle_fields", scaled_fields)
        mp.setattr(synth, "_matrix_od", counting_matrix)
        mp.setattr(synth, "_truth", unscaled_truth)
        return synth.make_synthetic_stack("default", **SCENE)


def _rim(p):
    notes = [n for n in p.notes if n.startswith(MOVING_RIM_NOTE)]
    return notes, int(((p.pixel_flags & xanes.FLAG_MOVING_RIM) > 0).sum())


@pytest.fixture(scope="module")
def swelling():
    s = _scene(SWELL)
    return run_pipeline(Stack(s.optical_density(), s.energies_ev))


def test_particles_swelling_together_have_their_rims_flagged(swelling):
    flagged = [p for p in swelling.particles if _rim(p)[1] > 0]
    assert len(flagged) >= 3, [(p.particle, p.radius) for p in swelling.particles]  # was 0
    for p in flagged:
        (note,) = _rim(p)[0]
        assert "as the particles do together" in note and "not its own" in note
        assert not (p.kept & ((p.pixel_flags & xanes.FLAG_MOVING_RIM) > 0)).any()
    assert any("grow or shrink across the scan" in n for n in swelling.notes)


def test_still_particles_keep_their_rims():
    s = _scene(0.0)
    result = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    assert all(_rim(p) == ([], 0) for p in result.particles)
