"""A particle deposited mid-scan: its own motion is measured from when it appears, and it does not pull the others.

The operando-cell probe's scene: the default scene (seed 5, 256 x 256, 60 energies, 4 particles, radii up to 28 px)
with a sphere (r 12 px, particle 2's spectrum) appearing at frame 30 at a place fixed to the cell (it moves with
the stage alone). Its frames before counted as measured: its displacements were taken from its frame-0 position of
nothing, 12 px from where it appears, and it was given 11.94 px of own motion in its frames vouched for (truly
none); growing from frame 5, it pulled a 5.8 % magnification into the motion all particles share.
"""

import numpy as np
import pytest

from xanestrack.pipeline import _first_seen, run_pipeline
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack
from xanestrack.synth_stress import make_stress_stack

#: where the deposit lies in the cell (frame-0 coordinates), its radius (px) and the frame it appears at
PLACE, RADIUS, APPEARS = (60.0, 200.0), 12.0, 30


def _vouched(g):
    return g["flags"].astype(str).isin(["", "nan"]).to_numpy()


@pytest.fixture(scope="module")
def deposited():
    """``(result, synth)`` of the scene with the deposit."""
    s = make_synthetic_stack("default", seed=5, n_energies=60, shape=(256, 256), n_particles=4, radius_range=(10, 28))
    od = s.optical_density().astype(np.float64)
    gs = np.asarray(s.truth.global_shift, float)
    tp = s.truth.positions
    p2 = tp[tp["particle"] == 2].set_index("frame")
    yy, xx = np.mgrid[0 : od.shape[1], 0 : od.shape[2]].astype(float)
    for k in range(APPEARS, od.shape[0]):
        y, x = int(round(p2.loc[k, "y"])), int(round(p2.loc[k, "x"]))
        spectrum = od[k, y - 2 : y + 3, x - 2 : x + 3].mean() - np.median(od[k, :12, :12])
        r = np.hypot(yy - PLACE[0] - gs[k, 0], xx - PLACE[1] - gs[k, 1]) / RADIUS
        od[k] += spectrum * np.sqrt(np.clip(1 - r**2, 0, None))
    return run_pipeline(Stack(od.astype(np.float32), s.energies_ev)), s


def _deposit(result, s):
    """The deposit's particle: the one at its place in the last frame."""
    gs = np.asarray(s.truth.global_shift, float)
    at = np.array(PLACE) + gs[-1]
    last = {p.particle: np.hypot(*(p.positions[-1] - at)) for p in result.particles}
    pid = min(last, key=last.get)
    assert last[pid] < 3.0
    return next(p for p in result.particles if p.particle == pid)


def test_a_deposited_particle_is_first_seen_when_it_appears_and_has_no_own_motion(deposited):
    result, s = deposited
    p = _deposit(result, s)
    (note,) = [n for n in p.notes if n.startswith("first seen at frame")]
    assert note.startswith(f"first seen at frame {APPEARS} ({s.energies_ev[APPEARS]:.1f} eV): not there")
    g = result.tracks[result.tracks["particle"] == p.particle].set_index("frame")
    v = _vouched(g)
    assert v[APPEARS:].mean() > 0.9 and not v[:APPEARS].any()
    own = np.hypot(g["nonrigid_dy"], g["nonrigid_dx"]).to_numpy()[v]
    assert own.max() < 0.5, own.max()  # truly none: it is fixed to the cell (was 11.94 px)


def test_a_deposited_particle_does_not_pull_the_others(deposited):
    result, s = deposited
    dep = _deposit(result, s).particle
    scale = result.tracks["common_scale"].to_numpy(float)
    assert np.abs(scale - 1).max() < 0.005  # no magnification in the scene
    tp = s.truth.positions
    gs = np.asarray(s.truth.global_shift, float)
    first = tp[tp["frame"] == 0].set_index("particle")
    for p in result.particles:
        if p.particle == dep:
            continue
        assert not any(n.startswith("first seen") for n in p.notes)
        t = tp[tp["particle"] == int(np.argmin(np.hypot(*(first[["y", "x"]].to_numpy() - p.positions[0]).T)))]
        t = t.set_index("frame").sort_index()
        truth = np.hypot(t["y"] - gs[:, 0] - t["y"].iloc[0], t["x"] - gs[:, 1] - t["x"].iloc[0]).to_numpy()
        g = result.tracks[result.tracks["particle"] == p.particle].set_index("frame")
        v = _vouched(g)
        own = np.hypot(g["nonrigid_dy"], g["nonrigid_dx"]).to_numpy()
        assert abs(own[v].max() - truth[v].max()) < 0.3, (p.particle, own[v].max(), truth[v].max())


@pytest.mark.parametrize("case", ["default", "stress-counts"])
def test_particles_there_from_the_first_frame_are_seen_there(case):
    """Controls: the default scene (seed 1, reduced) and stress-counts (seed 1, reduced: particles with no mask and
    not vouched for in their first 16-22 frames, faint before their edge): each particle is seen from frame 0, and
    no note says otherwise."""
    if case == "default":
        s = make_synthetic_stack(
            "default", seed=1, n_energies=48, shape=(200, 200), n_particles=4, radius_range=(10.0, 22.0)
        )
    else:
        s = make_stress_stack(case, 1, reduced=True)
    od = s.optical_density()
    result = run_pipeline(Stack(od, s.energies_ev))
    for p in result.particles:
        assert _first_seen(p, [q.positions for q in result.particles if q is not p], od) == 0
        assert not any(n.startswith("first seen") for n in p.notes)
