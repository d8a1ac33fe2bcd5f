"""A matrix whose thickness ramps across the field (a wedge-shaped electrode, a tilted sample) tilts every particle's
window: the tilt of the plane fitted to the window's outer ring is taken off before the segmenter sees it
(:func:`xanestrack.segment._level_windows`), so the mask's centre of mass is not pulled towards the thick side in
the faint pre-edge frames."""

import numpy as np
import pytest

import xanestrack.synth as synth
from xanestrack import segment
from xanestrack.models import pipeline_models
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.segment import segment_particle
from xanestrack.stack import Stack


@pytest.fixture(scope="module")
def learned():
    det, seg = pipeline_models("learned", "learned", options=PipelineOptions())
    return det, seg


def _disc_on_ramp(rise_per_px, *, contrast=0.15, n=6, size=96, r=14.0, seed=0):
    """``n`` frames of a soft disc of OD ``contrast`` at (48.3, 47.6) on a matrix rising ``rise_per_px`` OD per px
    along x, noise 0.01 OD."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = np.array([48.3, 47.6])
    disc = np.clip(r - np.hypot(yy - centre[0], xx - centre[1]) + 0.5, 0, 1)
    od = contrast * disc + 0.3 + rise_per_px * xx + rng.normal(0, 0.01, (n, size, size))
    return od.astype(np.float32), np.tile(centre, (n, 1))


@pytest.mark.parametrize("rise_per_px", [0.0, 0.003, 0.006])
def test_a_sloped_matrix_does_not_pull_the_masks_centre_of_mass(learned, rise_per_px):
    """A 14-px disc of 0.15 OD (a pre-edge frame) on a matrix rising 0.006 OD/px (1.5 OD across 256 px, the probe's
    wedge): the learned masks' centre of mass was 0.18-3.55 px towards the thick side (x) and up to 1.1 px off in y;
    now within 0.02 px of the disc's, as on a flat matrix. 0.003 OD/px was within 0.03 px before."""
    od, centre = _disc_on_ramp(rise_per_px)
    s = segment_particle(od, centre + [0.0, 1.5], 30, segmenter=learned[1], radius=14.0)
    err = s.com - centre
    assert np.abs(err).max() < 0.05, err


def _ramped_scene(monkeypatch, rise):
    """The default scene, reduced (160 px, 40 energies, 3 particles of 10-20 px, seed 1), with a matrix whose OD rises
    from 0 to ``rise`` across the field at 8200 eV (columns), falling as E^-3."""
    energies = synth.ni_energy_grid(40)
    expose = synth._expose

    def ramped(rng, p, od, k, dark, grid, flat_phase):
        _, _, _, xcen = grid
        return expose(rng, p, od + rise * (0.5 + xcen) * (energies[k] / 8200.0) ** -3, k, dark, grid, flat_phase)

    monkeypatch.setattr(synth, "_expose", ramped)
    return synth.make_synthetic_stack(
        "default", seed=1, shape=(160, 160), n_energies=40, n_particles=3, radius_range=(10.0, 20.0)
    )


def _run(stack, learned):
    od = Stack(stack.optical_density(), stack.energies_ev)
    return run_pipeline(od, options=PipelineOptions(), detector=learned[0], segmenter=learned[1])


def test_a_wedge_of_matrix_leaves_every_particle_its_chemistry(monkeypatch, learned):
    """Reduced scene on a matrix rising by 0.94 OD across its 160 px (the probe's slope, 1.5 OD across 256 px): before,
    2 of 3 particles lost 12 and 14 pre-edge frames ("not vouched for": the centre of mass 3-11 px from the edge
    estimate) and with them their XANES; now every frame is vouched for and every particle has E50."""
    r = _run(_ramped_scene(monkeypatch, 0.94), learned)
    assert len(r.particles) == 3
    assert not r.tracks["flags"].fillna("").str.contains("disagree").any()
    for p in r.particles:
        assert np.isfinite(p.edge_maps["e50"]).any(), p.notes


def test_the_default_scene_keeps_its_positions(monkeypatch, learned):
    """Control: on the default scene (reduced, no ramp) levelling the windows moves no reported position by 0.005 px."""
    s = _ramped_scene(monkeypatch, 0.0)
    after = _run(s, learned).tracks.sort_values(["particle", "frame"])
    monkeypatch.setattr(segment, "_level_windows", lambda w, ring=3: np.asarray(w, np.float32))
    before = _run(s, learned).tracks.sort_values(["particle", "frame"])
    d = np.abs(after[["y", "x"]].to_numpy() - before[["y", "x"]].to_numpy())
    assert d.max() < 0.005, d.max()
    assert (after["flags"].fillna("").to_numpy() == before["flags"].fillna("").to_numpy()).all()


def test_windows_without_a_tilt_beyond_their_noise_are_left_as_cut():
    """A plane fitted to a ring of noise and a neighbour's edge is no matrix: such windows are given to the segmenter
    as cut (levelled, the stress scenes' masks moved: learned stress-all seed 2 0.510 -> 0.565 px worst)."""
    rng = np.random.default_rng(1)
    w = rng.normal(0.3, 0.01, (5, 61, 61)).astype(np.float32)
    w[:, :8, :20] += 0.05  # a neighbour reaching into one corner of the ring
    assert np.array_equal(segment._level_windows(w), w)
    tilted = w + 0.003 * np.arange(61, dtype=np.float32)  # 0.18 OD across the window: levelled
    assert not np.array_equal(segment._level_windows(tilted), tilted)
