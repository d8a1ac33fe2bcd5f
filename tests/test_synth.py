"""The default scene model (xanestrack.synth): deterministic scans with exact ground truth."""

import numpy as np
import pytest

from conftest import undocumented_fields
from xanestrack.synth import SynthParams, edge_energy_of_fraction, make_synthetic_stack


def test_synthetic_generator_is_deterministic_and_has_truth():
    a = make_synthetic_stack("default", seed=3, n_energies=5, shape=(120, 120), n_particles=2, radius_range=(10, 14))
    b = make_synthetic_stack("default", seed=3, n_energies=5, shape=(120, 120), n_particles=2, radius_range=(10, 14))
    assert np.array_equal(a.counts, b.counts)
    t = a.truth
    assert len(t.positions) == 2 * 5 and t.masks[0].shape[0] == 5
    # shifts of the rigid particle are the global jitter
    g = t.positions[t.positions.particle == 0].sort_values("frame")
    assert np.allclose(g[["dy", "dx"]].to_numpy(), t.global_shift)


def test_same_seed_same_scan_other_seed_other_scan_with_every_target():
    kw = dict(
        n_energies=4,
        shape=(260, 260),
        n_particles=2,
        radius_range=(10.0, 20.0),
        n_fines=3,
        n_touching_pairs=1,
        store_clean=True,
        store_frame_masks=True,
    )
    a, b = make_synthetic_stack("hard", seed=5, **kw), make_synthetic_stack("hard", seed=5, **kw)
    for x, y in (
        (a.counts, b.counts),
        (a.flats, b.flats),
        (a.dark, b.dark),
        (a.truth.frame_masks, b.truth.frame_masks),
    ):
        assert np.array_equal(x, y)
    for x, y in zip(
        a.truth.clean + a.truth.coverage + a.truth.edge_maps, b.truth.clean + b.truth.coverage + b.truth.edge_maps
    ):
        assert np.array_equal(x, y, equal_nan=True)
    assert not np.array_equal(a.counts, make_synthetic_stack("hard", seed=6, **kw).counts)
    t = a.truth
    assert t.fines.shape == (3, 3) and t.frame_masks.shape == a.counts.shape
    # the frame masks hold every object: the particles' own masks and more (fines, the touching pair)
    assert t.frame_masks.sum() > sum(mm.sum() for mm in t.masks)


def test_edge_energy_of_fraction_rises_from_nio_to_linio2():
    e = edge_energy_of_fraction(np.linspace(0, 1, 11))
    assert np.all(np.diff(e) > 0)
    assert e[0] == pytest.approx(8340.05, abs=0.15) and e[-1] == pytest.approx(8341.81, abs=0.15)  # test_xanes' values
    assert edge_energy_of_fraction(0.5) == pytest.approx(float(edge_energy_of_fraction(np.array([0.5]))[0]))


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="radius_range"):
        SynthParams(radius_range=(1.0, 5.0))
    with pytest.raises(ValueError, match="counts"):
        SynthParams(counts=0.0)
    with pytest.raises(ValueError, match="unknown preset"):
        make_synthetic_stack("nonsense")
    with pytest.raises(ValueError, match="cannot place"):
        make_synthetic_stack("default", shape=(200, 200), n_particles=40, n_energies=2)
    # a frame too small for one particle: the same message (numpy's "high - low < 0" before)
    for kw in (dict(shape=(64, 64)), dict(radius_range=(10.0, 500.0))):
        with pytest.raises(ValueError, match="cannot place"):
            make_synthetic_stack("default", n_energies=2, **kw)
    with pytest.raises(ValueError, match="counts"):
        SynthParams(counts=float("nan"))


def test_synth_command_refuses_a_negative_seed_and_fits_the_groups_to_few_particles(tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.truth_io import read_truth

    runner = CliRunner()
    r = runner.invoke(app, ["synth", str(tmp_path / "a"), "--seed", "-1"])
    assert r.exit_code == 2 and "--seed must be 0 or more" in r.output
    args = ["synth", str(tmp_path / "b"), "--preset", "stress-crowd", "--n-particles", "5"]
    r = runner.invoke(app, [*args, "--size", "200", "--n-energies", "4"])
    assert r.exit_code == 0, r.output
    assert "2 of the stress-crowd preset's 4 groups" in r.output
    assert len(read_truth(tmp_path / "b" / "truth.h5").radii) == 5


def test_every_parameter_is_documented():
    assert undocumented_fields(SynthParams) == []


@pytest.mark.parametrize("model", ["synth", "stress"])
def test_contacts_mark_where_touching_objects_meet_and_cutting_them_separates(model):
    """``frame_contacts``: the band where two objects are within a pixel of each other; the
    detector's targets cut it out, so a touching pair is two objects, not one."""
    from scipy import ndimage

    from xanestrack.register import bin_frames

    if model == "synth":
        s = make_synthetic_stack(
            "hard",
            seed=5,
            n_energies=2,
            shape=(260, 260),
            n_particles=2,
            radius_range=(10.0, 20.0),
            n_fines=0,
            n_touching_pairs=1,
            store_frame_masks=True,
        )
    else:
        from xanestrack.synth_stress import make_stress_stack

        s = make_stress_stack("stress-crowd", 3, reduced=True, n_energies=2, n_fines=0, store_frame_masks=True)
    m, c = s.truth.frame_masks[0], s.truth.frame_contacts[0]
    assert c.shape == m.shape and c.any()
    # contacts lie on or next to objects' pixels only
    assert not (c & ~ndimage.binary_dilation(m, iterations=1)).any()
    n_union = ndimage.label(m)[1]
    n_cut = ndimage.label((bin_frames(m, 2) >= 0.5) & ~(bin_frames(c, 2) > 0))[1]
    assert n_cut > n_union  # a touching group falls apart into its members
    # an isolated object's pixels are untouched: every pixel far from a contact is kept
    far = ~ndimage.binary_dilation(c, iterations=3)
    assert (m & far).sum() > 0.8 * m.sum()
