"""A piece of a particle beyond a pore near its rim stays in its mask (segment.isolate_particle).

The opening that cuts fines and neighbours off also cuts the thin bridge between a pore near the
rim and the outline. The piece beyond it is the particle's own: it was removed like a fine (the
probe's r = 90 px particle with grains and pores lost 56-219 px so in 57 of its 68 classical
masks). A touching neighbour or a fine stuck to the rim is still cut off.
"""

import numpy as np
import pytest

from xanestrack import segment
from xanestrack.register import centre_of_mass, window_half
from xanestrack.segment import isolate_particle

N, C, R = 121, 60.0, 40.0
YY, XX = np.mgrid[0:N, 0:N].astype(float)


def soft_disc(cy, cx, r):
    return np.clip(r - np.hypot(YY - cy, XX - cx) + 0.5, 0, 1)


def with_rim_pore(kind):
    """A soft disc mask of radius 40 with a pore near its rim (at the top)."""
    rr = np.hypot(YY - C, XX - C)
    if kind == "closed":
        # a pore whose outer wall, a shell 8 px thick, bridges to the particle at its ends only
        ang = np.degrees(np.arctan2(XX - C, -(YY - C)))
        pore = (rr >= 24) & (rr <= 32) & (np.abs(ang) <= 40)
    else:
        # a round pore (r 8) 8 px inside the outline, open to the outside by a slot 3 px wide
        py, px = C - 24, C
        ux, uy = np.sin(np.radians(60)), -np.cos(np.radians(60))
        along, across = (XX - px) * ux + (YY - py) * uy, np.abs(-(XX - px) * uy + (YY - py) * ux)
        pore = (np.hypot(YY - py, XX - px) <= 8) | ((along >= 0) & (across <= 1.5))
    return np.where(pore, 0, soft_disc(C, C, R)).astype(np.float32)


@pytest.mark.parametrize("kind", ["closed", "open"])
def test_the_rim_beyond_a_pore_near_the_outline_stays_in_the_mask(kind):
    m = with_rim_pore(kind)
    out = isolate_particle(m[None], radius=R)[0]
    # before: 473 (closed) and 208 (open) px of the rim beyond the pore removed, the centre of
    # mass 3.8 and 1.7 px off the particle's
    assert np.count_nonzero((m > 0.5) & ~(out > 0.5)) == 0
    np.testing.assert_allclose(centre_of_mass(out), centre_of_mass(m), atol=0.01)


def test_a_touching_neighbour_and_fines_are_still_cut_off():
    # the particle with its rim pore, a neighbour (r 16) touching it on a thin neck at the right,
    # a fine (r 6) stuck to its rim at the bottom
    n, c = 181, 70.0
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    particle = np.zeros((n, n), np.float32)
    particle[10 : 10 + N, 10 : 10 + N] = with_rim_pore("closed")
    neighbour = np.clip(16.5 - np.hypot(yy - c, xx - (c + 58)), 0, 1)
    neck = (np.abs(yy - c) <= 3) & (xx > c + 35) & (xx < c + 45)
    fine = np.clip(6.5 - np.hypot(yy - (c + 44), xx - c), 0, 1)
    m = np.maximum.reduce([particle, neighbour, neck.astype(np.float32), fine]).astype(np.float32)
    out = isolate_particle(m[None], radius=R, centres=np.array([[c, c]]))[0]
    assert out[int(c), int(c + 58)] == 0 and out[int(c + 46), int(c)] == 0  # neighbour and fine gone
    np.testing.assert_array_equal(out[particle > 0.5] > 0.5, True)  # the particle whole, its rim too
    np.testing.assert_allclose(centre_of_mass(out), centre_of_mass(particle), atol=0.15)


def test_the_fine_on_an_elongated_particle_is_cut_off():
    # a fine on the short side of an ellipse lies within the ellipse's longest radius
    ellipse = (((YY - C) / 25) ** 2 + ((XX - C) / 55) ** 2 <= 1).astype(np.float32)
    m = np.maximum(ellipse, soft_disc(C - 29, C, 5)).astype(np.float32)
    out = isolate_particle(m[None], radius=37.0)[0]
    assert out[int(C - 31), int(C)] == 0
    np.testing.assert_allclose(centre_of_mass(out), [C, C], atol=0.15)


@pytest.mark.parametrize("scene", ["default", "stress-crowd"])
def test_masks_of_particles_without_such_pores_are_as_before(scene, monkeypatch):
    """Control: the default scene (seed 1) and touching particles (stress-crowd, seed 1, reduced),
    12 energies: the rule keeps nothing that was removed before, while the neighbours and fines
    of stress-crowd are still cut off (6782 px of its masks)."""
    from xanestrack.synth import make_synthetic_stack
    from xanestrack.synth_stress import make_stress_stack

    if scene == "default":
        s = make_synthetic_stack("default", seed=1, n_energies=12)
    else:
        s = make_stress_stack("stress-crowd", 1, reduced=True, n_energies=12)
    od, truth = s.optical_density(), s.truth.positions
    removed = 0
    for pid, r in enumerate(s.truth.radii):
        centres = truth[truth.particle == pid].sort_values("frame")[["y", "x"]].to_numpy(float)

        def masks(centres=centres, r=r, **kw):
            return segment.segment_particle(od, centres, window_half(r), segmenter=segment.segment_rois, radius=r, **kw)

        now = masks().masks > 0.5
        with monkeypatch.context() as mp:
            mp.setattr(segment, "LOBE_HULL_GROWTH", -np.inf)  # no piece kept: the rule before
            np.testing.assert_array_equal(now, masks().masks > 0.5)
        removed += np.count_nonzero((masks(separate=False).masks > 0.5) & ~now)
    assert removed > 1000 if scene == "stress-crowd" else True
