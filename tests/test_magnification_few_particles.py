"""A magnification shared by three or four particles is kept; a small turn of the field is said.

The rigid scene (256 px, 60 energies, no own motion) magnified by +1 % linearly in the energy, with 3 or 4 particles:
the particles' radial slopes agreed within 6 % (21.2, 21.0, 19.8 x 1e-6 per eV), but of three values the weighted MAD
is set by the two closest, and the outlier cut dropped the third as drifting on its own; with fewer than three left the
scale was set to 1, and the still particles reported 0.6-0.9 px of own motion. The same scene turned by 0.3 degrees
(rotation not fitted): 98 % of the own motions were a turn, but at the particles' median distance from their centroid
it moved them by 0.47 px, under the note's 0.5 px, while five of six reported 0.42-0.52 px; nothing was said.
Two of three particles close together (21 px apart, on one side of the centre; the third across it), +1 %: each
frame's robust fit started from the median translation, dropped the far particle once the magnification had moved it
0.5 px from it, and with two particles left fitted a translation only: the particle was dropped in most frames, taken
for drifting on its own, and the scale line dropped with it; that particle reported 1.45-1.55 px of own motion,
nothing said. With a fourth particle, leaving one out did the same: a false note that the magnification is not
determined, own motions "uncertain by" 1.47-1.54 px.
Here scenes built from positions: the rigid scene's particles, the stage's random walk, a small bias per particle
growing across the scan (as the edge estimates' contrast bias) and white noise.
"""

import numpy as np
import pandas as pd
import pytest

from xanestrack import motion as motion_module
from xanestrack.motion import compute_motion, peak_ratios
from xanestrack.motion_notes import _field_motion_notes, _split_notes
from xanestrack.pipeline import PipelineOptions

CENTRE = np.array([127.5, 127.5])
ENERGIES = np.linspace(8200, 8680, 60)
#: frame-0 positions of the rigid scene's particles (seed 1: 6, 3 and 4 particles)
SIX = np.array([[109.6, 163.0], [62.1, 77.4], [161.9, 82.5], [206.8, 210.6], [223.3, 123.4], [42.0, 203.1]])
THREE = np.array([[95.1, 176.2], [207.9, 153.1], [166.7, 195.4]])
FOUR = np.array([[142.1, 168.8], [168.8, 58.5], [76.2, 95.5], [210.1, 209.7]])
#: two particles 21 px apart on one side of the centre, one across it (a magnification moves the two 0.2 px apart
#: across the scan, the third 1.5 px from them); with a fourth off both
CLOSE_THREE = CENTRE + np.array([[-22.4, 60.0], [-6.4, -90.1], [-11.7, 78.0]])
CLOSE_FOUR = np.r_[CLOSE_THREE, CENTRE + np.array([[70.0, -30.0]])]


def _scene(src, seed, *, mag=0.0, turn_deg=0.0, bias=0.02, noise=0.02):
    """Positions (frames, particles, 2) of still particles at ``src`` magnified by ``mag`` and turned by ``turn_deg``
    across the scan about the frame centre, and the true scale per frame."""
    rng = np.random.default_rng(seed)
    n, m = len(ENERGIES), len(src)
    f = (ENERGIES - ENERGIES[0]) / (ENERGIES[-1] - ENERGIES[0])
    scale = 1 + mag * f
    th = np.radians(turn_deg) * f
    rot = np.stack([np.stack([np.cos(th), np.sin(th)], -1), np.stack([-np.sin(th), np.cos(th)], -1)], -2)
    walk = np.cumsum(rng.normal(0, 0.4, (n, 2)), axis=0)
    P = CENTRE + walk[:, None] + scale[:, None, None] * np.einsum("kab,jb->kja", rot, src - CENTRE)
    P += f[:, None, None] * rng.normal(0, bias, (1, m, 2)) + rng.normal(0, noise, (n, m, 2))
    return P, scale


def _drifting_last(P, amplitude, seed):
    """``P`` with its last particle drifting on its own, straight and growing across the scan to ``amplitude`` px."""
    f = (ENERGIES - ENERGIES[0]) / (ENERGIES[-1] - ENERGIES[0])
    a = np.random.default_rng(100 + seed).uniform(0, 2 * np.pi)
    P = P.copy()
    P[:, -1] += f[:, None] * amplitude * np.array([np.sin(a), np.cos(a)])
    return P


def _table(P):
    n, m = P.shape[:2]
    return pd.DataFrame(
        [(j, k, P[k, j, 0], P[k, j, 1]) for k in range(n) for j in range(m)], columns=["particle", "frame", "y", "x"]
    )


def _largest_own_motion(motion):
    return float(np.hypot(motion["nonrigid_dy"], motion["nonrigid_dx"]).max())


def _assert_magnification_kept(P, scale):
    """The scale line of positions ``P`` kept as drawn (``scale`` per frame), no own motion left, no note."""
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    sim = motion.attrs["similarity"]
    assert np.abs(sim["scale"].to_numpy() - scale).max() < 1e-3, sim["scale"].iloc[-1]
    assert "dropped_scale" not in sim.attrs
    assert _largest_own_motion(motion) < 0.2
    assert _field_motion_notes(motion, ENERGIES, PipelineOptions()) == []


@pytest.mark.parametrize("src", [THREE, FOUR], ids=["3 particles", "4 particles"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_magnification_shared_by_three_or_four_particles_is_kept(src, seed):
    # before: scale 1.0000 in every frame, the still particles 0.6-0.9 px of own motion (the line dropped)
    _assert_magnification_kept(*_scene(src, seed, mag=0.01))


@pytest.mark.parametrize("src", [THREE, FOUR], ids=["3 particles", "4 particles"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_magnification_is_invented_for_three_or_four_still_particles(src, seed):
    """Control: the same scenes unmagnified: scale 1, no note."""
    P, _ = _scene(src, seed)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    sim = motion.attrs["similarity"]
    assert np.all(sim["scale"] == 1.0)
    assert _largest_own_motion(motion) < 0.2
    assert _field_motion_notes(motion, ENERGIES, PipelineOptions()) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_magnification_is_kept_where_two_of_three_particles_lie_close_together(seed):
    # before: the far particle dropped by the frames' fits, the line dropped (seed 3: 1.0065 kept), that particle
    # 1.45-1.55 px of own motion, nothing said
    _assert_magnification_kept(*_scene(CLOSE_THREE, seed, mag=0.01))


@pytest.mark.parametrize("seed", [1, 2])
def test_leaving_one_of_four_out_keeps_the_magnification_two_close_particles_share(seed):
    # before: one left out, the line dropped (split_scale_ends 1.0), the own motions "uncertain by" 1.47 / 1.54 px,
    # and a note that the magnification is not determined by the particles
    P, scale = _scene(CLOSE_FOUR, seed, mag=0.01)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    sim = motion.attrs["similarity"]
    ratios = peak_ratios(motion, position_noise=0.02)
    assert np.abs(sim["scale"].to_numpy() - scale).max() < 1e-3
    assert np.abs(np.asarray(sim.attrs["split_scale_ends"]) - scale[-1]).max() < 1e-3
    assert ratios["own_motion_split_px"].max() < 0.2
    assert _split_notes(sim, ratios, motion) == []


@pytest.mark.parametrize("src", [CLOSE_THREE, CLOSE_FOUR], ids=["3 particles", "4 particles"])
@pytest.mark.parametrize("seed", [1, 2])
def test_no_magnification_is_invented_for_close_particles_still_or_one_drifting(src, seed):
    """Controls: the same scenes unmagnified, the particles still, or the last drifting 1.5 px on its own (what the
    frames' fits drop a particle for): scale 1, and the drifting particle carries its own motion."""
    for amplitude in (0.0, 1.5):
        P, _ = _scene(src, seed)
        P = _drifting_last(P, amplitude, seed)
        motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
        sim = motion.attrs["similarity"]
        assert np.all(sim["scale"] == 1.0)
        own = np.hypot(motion["nonrigid_dy"], motion["nonrigid_dx"]).groupby(motion["particle"]).max()
        if amplitude:
            assert own.iloc[-1] > 1.2
        else:
            assert own.max() < 0.2
        if len(src) == 4:
            assert _split_notes(sim, peak_ratios(motion, position_noise=0.02), motion) == []


def test_a_magnification_line_dropped_is_not_called_off_one_straight_line(monkeypatch):
    """Where the straight line fitted was not kept, the scale left in the own motions is that line's: the note on it
    says so, not "off one straight line" (the wording of a magnification the line kept cannot follow)."""
    monkeypatch.setattr(motion_module, "_magnification_is_shared", lambda *a, **k: False)
    P, _ = _scene(FOUR, 1, mag=0.01)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    assert "dropped_scale" in motion.attrs["similarity"].attrs
    (note,) = _field_motion_notes(motion, ENERGIES, PipelineOptions())
    assert "off one straight line" not in note
    assert "was not kept" in note and "--scale-model frame" in note


def test_a_turn_of_0_3_degrees_is_said():
    # the rigid scene's run found a turn of 0.286 degrees; here 0.28 (fitted -0.29, 97 % of the own motions, five of
    # six particles 0.49-0.56 px): before, 0.48 px at the median distance from the particles' centroid, under 0.5 px,
    # and no note; judged at the farthest particle it is 0.56 px
    P, _ = _scene(SIX, 1, turn_deg=0.28)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    (note,) = _field_motion_notes(motion, ENERGIES, PipelineOptions())
    assert "a turn of the whole field" in note and "--rotation" in note
    assert "px at the particle farthest from their centroid" in note


def test_no_turn_is_said_of_still_particles():
    """Control: the same six particles, not turned."""
    P, _ = _scene(SIX, 1)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    assert _field_motion_notes(motion, ENERGIES, PipelineOptions()) == []


def test_the_default_scene_gets_no_turn_or_magnification_note():
    """Control: the default scene, seed 1, reduced (no turn, no magnification, its particles drifting 1-6 px)."""
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(256, 256), n_particles=6, radius_range=(10.0, 22.0)
    )
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    assert np.all(r.motion.attrs["similarity"]["scale"] == 1.0)
    assert not any("a turn of the whole field" in n or "magnification off" in n for n in r.notes)
    assert not any("not hold" in n for n in r.notes)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_particles_cannot_tell_a_magnification_from_one_particles_radial_drift_and_say_so(seed):
    """Two of three particles close together: the lone one drifting 1.5 px outward on its own and a 1 % magnification
    read alike (a review's scene: the drift kept as a +0.9 % line, its own motion read as none, nothing said). A kept
    line that no particles left can test (one of three left out leaves two) is said; a fourth particle tests it."""
    lone = 1  # CLOSE_THREE's particle across the centre from the close pair
    out = (CLOSE_THREE[lone] - CENTRE) / np.hypot(*(CLOSE_THREE[lone] - CENTRE))
    f = (ENERGIES - ENERGIES[0]) / (ENERGIES[-1] - ENERGIES[0])
    drift, _ = _scene(CLOSE_THREE, seed)
    drift[:, lone] += f[:, None] * 1.5 * out
    for P in (drift, _scene(CLOSE_THREE, seed, mag=0.01)[0]):
        motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
        sim = motion.attrs["similarity"]
        notes = _split_notes(sim, peak_ratios(motion, position_noise=0.02), motion)
        if abs(sim["scale"].iloc[-1] - 1.0) > 1e-3:  # a line kept: it rests on the lone particle
            assert sim.attrs.get("split_scale_untested") is True
            assert any("rests on too few particles to be tested" in n for n in notes), notes
        else:  # dropped: the lone particle's own motion carries it (read as its own, as measured)
            assert _largest_own_motion(motion) > 1.0
    # a fourth particle off both tests the line: no such note
    P, _ = _scene(CLOSE_FOUR, seed, mag=0.01)
    motion = compute_motion(_table(P), centre=CENTRE, scale_axis=ENERGIES)
    notes = _split_notes(motion.attrs["similarity"], peak_ratios(motion, position_noise=0.02), motion)
    assert not any("rests on too few particles" in n for n in notes)
