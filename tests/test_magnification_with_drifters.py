"""A magnification shared by most particles is kept when a few drift on their own, and a dropped one is said.

The crowded scene of seed 3 (10 particles, 40 energies, +0.5 % magnification across the scan, four particles in two
groups drifting on their own): the scale line was fitted right (0.66 %), but two particles drifting inward passed the
test's outlier cut and pulled its t-statistic under 3. The scale was set to 1 in every frame with no note: the still
particles reported up to 1.04 px of own motion and the movers came out 1.0-1.3 px off.
Here a reduced scene built from positions: 10 particles 60-190 px from the centre, each still one with a small bias
growing across the scan (0.3 px per component, as the edge estimates' contrast bias), two drifting 2.5 px inward.
"""

import numpy as np
import pandas as pd
import pytest

from xanestrack.motion import compute_motion

N_FRAMES = 40
CENTRE = np.array([255.5, 255.5])
MOVERS = (8, 9)


def _scene(seed, *, mag=0.005, drift=2.5):
    """Positions (frames, 10, 2), energies, the true scale per frame and the true own motions."""
    rng = np.random.default_rng(seed)
    energies = np.linspace(8300, 8500, N_FRAMES)
    angle = rng.uniform(0, 2 * np.pi, 10)
    lever = rng.uniform(60, 190, 10)
    lever[list(MOVERS)] = (150, 185)
    unit = np.c_[np.sin(angle), np.cos(angle)]
    src = CENTRE + lever[:, None] * unit
    f = (energies - energies[0]) / (energies[-1] - energies[0])
    scale = 1 + mag * f
    walk = np.cumsum(rng.normal(0, 0.5, (N_FRAMES, 2)), axis=0)
    own = np.zeros((N_FRAMES, 10, 2))
    own[:, :8] = f[:, None, None] * rng.normal(0, 0.3, (1, 8, 2))
    for j in MOVERS:
        own[:, j] = -drift * f[:, None] * unit[j]  # inward
    P = CENTRE + walk[:, None] + scale[:, None, None] * (src - CENTRE) + own + rng.normal(0, 0.05, (N_FRAMES, 10, 2))
    return P, energies, scale, own


def _table(P):
    n, m = P.shape[:2]
    return pd.DataFrame(
        [(j, k, P[k, j, 0], P[k, j, 1]) for k in range(n) for j in range(m)], columns=["particle", "frame", "y", "x"]
    )


def _own_motion_errors(motion, own):
    """Per particle and frame, the distance of the reported own (non-rigid) motion from the true one, px."""
    nr = motion.sort_values(["particle", "frame"])[["nonrigid_dy", "nonrigid_dx"]].to_numpy()
    nr = nr.reshape(own.shape[1], own.shape[0], 2)
    return np.hypot(*(nr - own.transpose(1, 0, 2)).transpose(2, 0, 1))


@pytest.mark.parametrize("seed", [1, 7])
def test_a_magnification_is_kept_when_two_of_ten_particles_drift_inward(seed):
    # before: scale 1.0000 in every frame; still particles 0.91 / 1.17 px off their true own motion, the movers
    # 0.77-1.08 / 0.65-1.57 px off at the end (seeds 1 / 7); now 1.0054 at the end, 0.30 / 0.34 px, 0.09-0.13 px
    P, energies, scale, own = _scene(seed)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=energies)
    sim = motion.attrs["similarity"]
    assert np.abs(sim["scale"].to_numpy() - scale).max() < 1e-3, sim["scale"].iloc[-1]
    assert "dropped_scale" not in sim.attrs
    err = _own_motion_errors(motion, own)
    assert err[: MOVERS[0]].max() < 0.45
    assert err[list(MOVERS), -1].max() < 0.3  # the movers' own 2.5 px inward, to 0.3 px


@pytest.mark.parametrize("seed", [1, 7])
def test_no_magnification_is_invented_from_the_same_drifters(seed):
    """Control: the same scene unmagnified: scale 1 in every frame, the movers' own motion whole."""
    P, energies, _, own = _scene(seed, mag=0.0)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=energies)
    sim = motion.attrs["similarity"]
    assert np.all(sim["scale"] == 1.0)
    err = _own_motion_errors(motion, own)
    assert err[list(MOVERS), -1].max() < 0.3


def test_a_magnification_alone_is_found_as_before():
    """Control: no particle drifting on its own: the magnification found, no own motion made of it."""
    P, energies, scale, own = _scene(1, drift=0.0)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=energies)
    sim = motion.attrs["similarity"]
    assert np.abs(sim["scale"].to_numpy() - scale).max() < 1e-3
    assert _own_motion_errors(motion, own).max() < 0.45


def test_a_magnification_dropped_is_kept_on_record():
    """Seed 5: the still particles' biases scatter their radial slopes too widely for the test, and the
    magnification is dropped (not said in a note: its t-statistic, 1.4 here, cannot tell this case from the
    default scenes' particles drifting on their own, which lean towards a line of -0.5 to +1.6 % at t 0.3-2.4; a
    note on it fired on three of the four default scenes); the line dropped is kept in the similarity's attrs."""
    P, energies, _, _ = _scene(5)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=energies)
    sim = motion.attrs["similarity"]
    assert np.all(sim["scale"] == 1.0)
    lo, hi = sim.attrs["dropped_scale"]
    assert lo == 1.0 and hi == pytest.approx(1.0042, abs=1e-4)
    assert np.isfinite(sim.attrs["dropped_scale_t"])


def test_the_default_scene_gets_no_magnification_and_no_scale_note():
    """Control: the default scene, seed 1, reduced (no magnification, its particles drifting 1-6 px): the line fitted
    (+3.6 %, beyond what the optics give) is dropped and not said."""
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(256, 256), n_particles=6, radius_range=(10.0, 22.0)
    )
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    sim = r.motion.attrs["similarity"]
    assert np.all(sim["scale"] == 1.0)
    assert not any("was not kept" in n for n in r.notes)
