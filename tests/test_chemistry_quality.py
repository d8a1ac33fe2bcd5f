"""Quality masks: pixels without an edge and pixels whose normalisation does not fit are found."""

import json

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from xanestrack.chemistry.quality import apply_quality, masked_statistics, quality_masks
from xanestrack.spectra import ni_references
from xanestrack.synth import ni_energy_grid

E = ni_energy_grid()


@pytest.fixture(scope="module")
def scene():
    """A 48 x 48 window: a particle (radius 18) with a thin hole, background around it,
    and 12 pixels that a neighbour covered in three post-edge frames (+0.3 OD)."""
    shape = (48, 48)
    particle = disc(shape, 18)
    hole = disc(shape, 6, centre=(30, 20))
    step = dome(shape, 18, 0.9)
    step[hole] = 0.004  # almost no material: no edge worth the name
    nio = ni_references()["NiO"](E)[None]
    od, _ = pixel_od(E, nio, np.ones((1,) + shape), step, smoothing_px=1.0, rng=np.random.default_rng(0))
    glitch = np.zeros(shape, bool)
    glitch[10:12, 20:26] = True
    post = np.flatnonzero(E > 8500)[:3]
    for k in post:
        od[k][glitch] += 0.3
    return od, particle, hole, glitch


def test_edge_jump_mask_finds_the_particle(scene):
    od, particle, hole, _ = scene
    q = quality_masks(E, od, e0_ev=8342.0)
    solid = particle & ~hole
    assert q.edge_jump_ok[solid].mean() > 0.99
    background = ~disc(od.shape[1:], 20)  # beyond the smoothed rim
    # the step of a noise spectrum is extrapolated from both sides to E0 and scatters more than
    # the pre-edge noise: at TXM-Sandbox's threshold of 5 SD, 1.5 % of background pixels pass (measured)
    assert q.edge_jump_ok[background].mean() < 0.03
    ok = np.isfinite(q.edge_jump_od)
    assert np.array_equal(q.edge_jump_ok[ok], (q.edge_jump_od > 5.0 * q.pre_edge_sd_od)[ok])
    inner_hole = disc(od.shape[1:], 3.5, centre=(30, 20))  # beyond the reach of the 1 px smoothing
    assert q.edge_jump_ok[inner_hole].mean() < 0.1
    assert q.edge_jump_od.shape == od.shape[1:] and np.nanmax(q.pre_edge_sd_od) < 0.05
    # stricter thresholds keep fewer pixels
    strict = quality_masks(E, od, e0_ev=8342.0, edge_jump_threshold=50.0)
    assert strict.edge_jump_ok.sum() < q.edge_jump_ok.sum()
    od_min = quality_masks(E, od, e0_ev=8342.0, min_edge_step_od=0.5)
    assert np.all(q.edge_jump_od[od_min.edge_jump_ok] > 0.5)


def test_fit_quality_mask_finds_covered_pixels(scene):
    od, particle, hole, glitch = scene
    q = quality_masks(E, od, e0_ev=8342.0, mask=particle)
    assert not q.fit_ok[glitch].any()
    clean = particle & ~hole & ~glitch
    assert q.fit_ok[clean].mean() > 0.98
    assert np.array_equal(q.keep, q.edge_jump_ok & q.fit_ok)
    assert not q.keep[~particle].any() and np.isnan(q.residual[~particle]).all()
    rec = q.record()
    json.dumps(rec)
    assert rec["edge_jump_threshold"] == 5.0 and rec["n_pixels"] == int(particle.sum())
    assert rec["n_kept"] == int(q.keep.sum()) and "MAD" in rec["residual_rule"]
    # an absolute limit is recorded as given
    q2 = quality_masks(E, od, e0_ev=8342.0, mask=particle, max_residual=rec["max_residual"])
    assert np.array_equal(q2.fit_ok, q.fit_ok) and q2.record()["residual_rule"] == "given"
    # another residual (e.g. of the LCF) joins in quadrature
    extra = np.zeros(od.shape[1:])
    extra[24, 24] = 1.0
    q3 = quality_masks(E, od, e0_ev=8342.0, mask=particle, extra_residual=extra)
    assert q.fit_ok[24, 24] and not q3.fit_ok[24, 24]


def test_apply_and_statistics(scene):
    od, particle, _, _ = scene
    q = quality_masks(E, od, e0_ev=8342.0, mask=particle)
    value = np.where(particle, 8340.0, np.nan)
    out = apply_quality({"e50": value, "fractions": np.stack([value, value])}, q.keep)
    assert np.isnan(out["e50"][~q.keep]).all() and np.all(out["e50"][q.keep] == 8340.0)
    assert out["fractions"].shape == (2, 48, 48)
    st = masked_statistics(value, q.keep)
    assert st["n"] == int(q.keep.sum()) and st["n_excluded"] == int((particle & ~q.keep).sum())
    assert st["mean"] == pytest.approx(8340.0) and st["std"] == pytest.approx(0.0)


def test_bad_input_is_refused_with_a_clear_message(scene):
    od = scene[0]
    with pytest.raises(ValueError, match="n_energies"):
        quality_masks(E[:-1], od)
    with pytest.raises(ValueError, match="edge_jump_threshold"):
        quality_masks(E, od, edge_jump_threshold=0)
    with pytest.raises(ValueError, match="max_residual"):
        quality_masks(E, od, max_residual=-1.0)
    with pytest.raises(ValueError, match="mask"):
        quality_masks(E, od, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="extra_residual"):
        quality_masks(E, od, extra_residual=np.ones(3))
    with pytest.raises(ValueError, match="does not end with"):
        apply_quality({"x": np.ones((3, 3))}, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="same shape"):
        masked_statistics(np.ones(3), np.ones(4, bool))
