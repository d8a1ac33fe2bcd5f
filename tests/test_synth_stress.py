"""The stress scene model: truth exact, stressors present, consumers unchanged."""

from dataclasses import fields

import numpy as np
import pytest
from scipy import ndimage

from xanestrack.synth import SynthTruth
from xanestrack.synth_stress import (
    STRESS_CASES,
    StressParams,
    make_scene,
    make_stress_stack,
    reduced_params,
    stress_edge_energy,
    stress_reference,
)

_CACHE: dict = {}


def stack(case, seed=3, **kw):
    """Reduced stacks (48 energies, 256 x 256), each made once per session."""
    key = (case, seed, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = make_stress_stack(case, seed, reduced=True, store_frame_masks=True, **kw)
    return _CACHE[key]


def centre_of(p):
    return (np.asarray(p.shape, float) - 1) / 2


def similarity_residual(pos, pos0, centre):
    """Per frame least-squares fit pos = centre + s (pos0 - centre) + t; returns (s, t, residuals)."""
    n_frames, n_p, _ = pos.shape
    q = pos0 - centre
    A = np.zeros((2 * n_p, 3))
    A[0::2, 0], A[1::2, 0] = q[:, 0], q[:, 1]
    A[0::2, 1] = 1
    A[1::2, 2] = 1
    s, t, res = np.empty(n_frames), np.empty((n_frames, 2)), np.empty((n_frames, n_p))
    for k in range(n_frames):
        b = (pos[k] - centre).reshape(-1)
        sol = np.linalg.lstsq(A, b, rcond=None)[0]
        s[k], t[k] = sol[0], sol[1:]
        res[k] = np.hypot(*(A @ sol - b).reshape(n_p, 2).T)
    return s, t, res


def positions(truth):
    """(n_frames, n_particles, 2) true positions."""
    t = truth.positions.sort_values(["frame", "particle"])
    n_p = t["particle"].nunique()
    return t[["y", "x"]].to_numpy().reshape(-1, n_p, 2)


def own_motion(s):
    """Each particle's displacement left after the true common similarity (n_frames, n_p, 2)."""
    pos = positions(s.truth)
    c = centre_of(s.params)
    common = c + s.truth.scale[:, None, None] * (pos[0][None] - c) + s.truth.global_shift[:, None, :]
    return (pos - common) / s.truth.scale[:, None, None]


# --------------------------------------------------------------------------- cases


def test_cases_cover_the_stress_ranges_of_issue_15():
    assert set(STRESS_CASES) == {
        "stress-drift",
        "stress-counts",
        "stress-fines",
        "stress-jitter",
        "stress-magnification",
        "stress-crowd",
        "stress-all",
    }
    mild = StressParams()
    c = STRESS_CASES
    assert c["stress-drift"].drift_step_sd == 0.6 > mild.drift_step_sd
    assert c["stress-counts"].counts == 600 and c["stress-counts"].beam_jitter > mild.beam_jitter
    assert c["stress-counts"].flat_shift_px > mild.flat_shift_px and c["stress-counts"].beam_dip_probability > 0
    assert c["stress-fines"].n_fines == 30 and c["stress-fines"].n_touching_fines > 0
    assert c["stress-fines"].fine_radius_range == (2.0, 5.0)
    assert (
        c["stress-jitter"].jitter_sd == 3.0
        and c["stress-jitter"].n_jumps > 0
        and c["stress-jitter"].jump_range == (5.0, 10.0)
    )
    assert c["stress-magnification"].magnification == 0.01 and c["stress-magnification"].drift_step_sd == 0.0
    assert (
        c["stress-crowd"].n_particles == 16
        and 2 in c["stress-crowd"].cluster_sizes
        and max(c["stress-crowd"].cluster_sizes) == 4
    )
    a = c["stress-all"]
    assert (a.drift_step_sd, a.counts, a.n_fines, a.jitter_sd, a.magnification) == (0.6, 600, 30, 3.0, 0.01)
    assert a.cluster_sizes and a.n_touching_fines and a.n_jumps
    for p in c.values():
        assert 12 <= p.n_particles <= 16 and p.radius_range == (10.0, 45.0)
        assert (p.n_energies, p.shape) == (143, (460, 460))
        assert 0.0 <= abs(p.magnification) <= 0.01


def test_reduced_cases_keep_their_stressor():
    for name, p in STRESS_CASES.items():
        r = reduced_params(p)
        assert (r.n_energies, r.shape) == (48, (256, 256))
        assert r.drift_step_sd == p.drift_step_sd and r.counts == p.counts and r.magnification == p.magnification
        assert r.jitter_sd == p.jitter_sd and bool(r.n_jumps) == bool(p.n_jumps)
        assert bool(r.cluster_sizes) == bool(p.cluster_sizes) and bool(r.n_touching_fines) == bool(p.n_touching_fines)
        assert (r.n_fines >= 10) == (p.n_fines >= 30), name


# --------------------------------------------------------------------------- truth


def test_same_seed_same_scan_other_seed_other_scan():
    a = make_stress_stack("stress-all", 7, reduced=True, n_energies=6)
    b = make_stress_stack("stress-all", 7, reduced=True, n_energies=6)
    c = make_stress_stack("stress-all", 8, reduced=True, n_energies=6)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.flats, b.flats)
    np.testing.assert_array_equal(a.dark, b.dark)
    assert a.truth.positions.equals(b.truth.positions)
    assert not np.array_equal(a.counts, c.counts)


def test_truth_has_the_fields_of_synth_truth():
    s = stack("stress-crowd")
    t = s.truth
    assert isinstance(t, SynthTruth)
    n, n_p = s.counts.shape[0], len(t.radii)
    assert list(t.positions.columns) == ["particle", "frame", "energy_ev", "y", "x", "dy", "dx", "isolated"]
    assert len(t.positions) == n * n_p and t.positions["isolated"].dtype == bool
    assert t.global_shift.shape == (n, 2) and np.all(t.global_shift[0] == 0)
    assert t.scale.shape == (n,) and t.scale[0] == 1.0
    assert len(t.masks) == len(t.mask_origins) == len(t.edge_maps) == len(t.patterns) == n_p
    assert all(m.shape[0] == n and m.dtype == bool for m in t.masks)
    assert t.edge_map_origins.shape == (n_p, 2) and t.fines.shape[1] == 3
    assert t.frame_masks.shape == s.counts.shape
    assert s.counts.dtype == s.flats.dtype == s.dark.dtype == np.float32
    np.testing.assert_allclose(s.energies_ev[[0, -1]], [8200.0, 8680.0])


def test_outline_centre_of_mass_is_exact_to_a_hundredth_of_a_pixel():
    """Independent oracle: the outline (bilinear phi >= 0) sampled on a 1/10-px grid."""
    from xanestrack.synth_stress import _H, _build_fine, _build_particle

    rng = np.random.default_rng(5)
    p = StressParams()
    for obj in [_build_particle(rng, r, "uniform", p) for r in (10.0, 27.0)] + [_build_fine(rng, 2.5, p)]:
        phi = obj.fields[0]
        ys = np.arange(0, phi.shape[0] - 1, 0.4) + 0.013
        xs = np.arange(0, phi.shape[1] - 1, 0.4) + 0.029
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        inside = ndimage.map_coordinates(phi, [yy.ravel(), xx.ravel()], order=1) >= 0
        com = obj.origin + _H * np.array([yy.ravel()[inside].mean(), xx.ravel()[inside].mean()])
        assert np.hypot(*(com - obj.com)) < 0.01
        r_eq = np.sqrt(inside.sum() * (0.4 * _H) ** 2 / np.pi)
        assert abs(r_eq - obj.radius) < 0.01 * obj.radius


@pytest.mark.parametrize("case", ["stress-all", "stress-magnification"])
def test_true_positions_are_the_centres_of_mass_of_the_rendered_masks(case):
    s = stack(case)
    t = s.truth
    err = []
    for i in range(len(t.radii)):
        tp = t.positions[t.positions["particle"] == i].sort_values("frame")[["y", "x"]].to_numpy()
        for k in range(s.counts.shape[0]):
            yy, xx = np.nonzero(t.masks[i][k])
            com = np.array([yy.mean(), xx.mean()]) + t.mask_origins[i][k]
            err.append(np.hypot(*(com - tp[k])))
            # the mask covers the particle: its area is that of its radius, scaled
            area = t.masks[i][k].sum() / (np.pi * (t.radii[i] * t.scale[k]) ** 2)
            assert 0.9 < area < 1.1
    err = np.array(err)
    # a binary mask's centre of mass scatters by pixelisation only (~0.05 px for r >= 10)
    assert err.max() < 0.2 and np.median(err) < 0.06


def test_magnification_case_moves_every_particle_by_one_similarity():
    s = stack("stress-magnification")
    pos = positions(s.truth)
    sc, tr, res = similarity_residual(pos, pos[0], centre_of(s.params))
    assert res.max() < 0.01
    np.testing.assert_allclose(sc, s.truth.scale, atol=1e-9)
    np.testing.assert_allclose(tr, s.truth.global_shift, atol=1e-6)
    e = s.energies_ev
    np.testing.assert_allclose(s.truth.scale, 1 + 0.01 * (e - e[0]) / (e[-1] - e[0]))
    # read as translations only, the magnification would fake non-rigid motion
    rel = pos - pos[:, :1]
    assert np.abs(rel - rel[0]).max() > 0.5
    # the rendered masks follow the similarity too (up to pixelisation)
    com = np.array(
        [[np.argwhere(m[k]).mean(0) + o[k] for k in range(len(o))] for m, o in zip(s.truth.masks, s.truth.mask_origins)]
    )
    _, _, res_masks = similarity_residual(com.transpose(1, 0, 2), com[:, 0], centre_of(s.params))
    assert res_masks.max() < 0.2


def test_drift_case_moves_particles_relative_to_each_other():
    s = stack("stress-drift")
    own = own_motion(s)
    step = np.hypot(*np.diff(own, axis=0).transpose(2, 0, 1))
    moving = step.mean(axis=0) > 0
    assert moving.any() and (~moving).any()  # some particles are fixed to the matrix
    assert np.abs(own[:, ~moving]).max() < 1e-9
    # raw walk steps up to 0.6 px sd, smoothed: the excursion over the scan is several px
    end = own[-1]
    rel = np.hypot(*(end[:, None] - end[None]).transpose(2, 0, 1))
    assert rel.max() > 3.0
    # the mild cases drift little
    assert np.abs(own_motion(stack("stress-counts"))).max() < np.abs(own).max()


def test_full_length_drift_scan_separates_particles_by_more_than_10_px():
    s = make_stress_stack("stress-drift", 0, reduced=True, n_energies=143)
    end = own_motion(s)[-1]
    assert np.hypot(*(end[:, None] - end[None]).transpose(2, 0, 1)).max() > 10.0


def test_jitter_case_has_jumps_of_5_to_10_px():
    s = stack("stress-jitter")
    g = s.truth.global_shift
    assert np.hypot(*np.diff(g, axis=0).T).max() > 5.0
    assert np.diff(g, axis=0).std() > 2.0
    assert np.diff(stack("stress-counts").truth.global_shift, axis=0).std() < 1.0


def test_fines_number_radius_and_contact():
    full = make_stress_stack("stress-fines", 4, n_energies=3)
    assert full.truth.fines.shape == (30, 3)
    r = full.truth.fines[:, 2]
    assert r.min() >= 2.0 * 0.99 and r.max() <= 5.0 * 1.01
    ny, nx = full.params.shape
    assert np.all((full.truth.fines[:, :2] > 0) & (full.truth.fines[:, :2] < [ny, nx]))
    assert (~full.truth.positions.groupby("particle")["isolated"].first()).sum() >= 1


@pytest.mark.parametrize("case", ["stress-crowd", "stress-fines", "stress-all"])
def test_isolated_flags_are_the_contacts_of_the_masks(case):
    """An isolated particle's mask is its whole connected component in every frame;
    a touching one (group member or touched by a fine) shares its component in every frame."""
    s = stack(case)
    t = s.truth
    iso = t.positions.groupby("particle")["isolated"].first().to_numpy()
    assert iso.any() and (~iso).any()
    for k in range(s.counts.shape[0]):
        lab, _ = ndimage.label(t.frame_masks[k], structure=np.ones((3, 3)))
        for i in range(len(t.radii)):
            yy, xx = np.nonzero(t.masks[i][k])
            ids = np.unique(lab[yy + t.mask_origins[i][k][0], xx + t.mask_origins[i][k][1]])
            assert ids.size == 1
            alone = (lab == ids[0]).sum() == yy.size
            assert alone == iso[i], (case, k, i)


def test_crowd_case_has_touching_pairs_and_agglomerates():
    s = make_stress_stack("stress-crowd", 2, n_energies=2, store_frame_masks=True)
    t = s.truth
    lab, n = ndimage.label(t.frame_masks[0], structure=np.ones((3, 3)))
    members = {}
    for i in range(len(t.radii)):
        yy, xx = np.nonzero(t.masks[i][0])
        members.setdefault(int(lab[yy[0] + t.mask_origins[i][0][0], xx[0] + t.mask_origins[i][0][1]]), []).append(i)
    sizes = sorted(len(v) for v in members.values() if len(v) > 1)
    assert sizes == [2, 2, 3, 4]
    assert len(t.radii) == 16 and 10.0 <= t.radii.min() and t.radii.max() <= 45.0 * 1.001


def test_counts_case_noise_is_photon_noise_of_600_counts():
    s = stack("stress-counts")
    od = s.optical_density()
    free = ~ndimage.binary_dilation(s.truth.frame_masks.any(0), iterations=4)
    sample, flat = s.counts - s.dark, s.flats - s.dark
    assert 350 < flat.mean() < 650  # 600 at the centre of the beam, vignetting at the edges
    predicted = np.sqrt(np.mean((1 / sample + 1 / (s.params.n_ref * flat))[:, free]))
    both = free[:, 1:] & free[:, :-1]
    measured = np.diff(od, axis=2)[:, both].std() / np.sqrt(2)
    assert 0.9 < measured / predicted < 1.15
    assert measured > 2.5 * np.diff(stack("stress-drift").optical_density(), axis=2)[:, both].std() / np.sqrt(2)
    # beam changes between the sample and the reference exposure: frame-to-frame OD offsets
    med = np.array([np.median(o[free]) for o in od])
    med_mild = np.array([np.median(o[free]) for o in stack("stress-drift").optical_density()])
    assert np.diff(med).std() > 2 * np.diff(med_mild).std()


def test_optical_density_is_physical():
    s = stack("stress-drift")
    od = s.optical_density()
    assert np.isfinite(od).all()
    t = s.truth
    free = ~ndimage.binary_dilation(t.frame_masks.any(0), iterations=4)
    bg = np.array([np.median(o[free]) for o in od])
    assert np.all((bg > 0.5) & (bg < 1.1)) and bg[0] > bg[-1]  # matrix absorbs less at higher energy
    pre = int(np.argmin(np.abs(s.energies_ev - 8310)))
    post = int(np.argmin(np.abs(s.energies_ev - 8380)))
    for i in range(len(t.radii)):
        c = []
        for k in (pre, post):
            m, o = t.masks[i][k], t.mask_origins[i][k]
            win = od[k, o[0] : o[0] + m.shape[0], o[1] : o[1] + m.shape[1]]
            c.append(win[m].mean() - bg[k])
        # every particle absorbs more above the edge; its edge jump grows with its size
        assert c[1] > c[0] + 0.05
        assert 0.05 < c[1] < 0.02 * t.radii[i] + 0.2


def test_edge_maps_are_the_mix_of_the_shipped_spectra():
    s = stack("stress-drift")
    lo, hi = stress_edge_energy([0.0, 1.0], charged_shift_ev=s.params.charged_shift_ev)
    assert hi - lo == pytest.approx(s.params.charged_shift_ev, abs=0.05)
    for m, mask in zip(s.truth.edge_maps, s.truth.masks):
        assert m.shape == mask.shape[1:]
        assert np.isfinite(m[mask[0]]).mean() > 0.99 and np.isnan(m[~mask[0]]).all()
        assert np.nanmin(m) >= lo - 1e-3 and np.nanmax(m) <= hi + 1e-3


def test_spectra_are_real_and_not_the_default_model_s():
    from xanestrack.spectra import ni_references

    ref = stress_reference()
    e = ref.energies_ev
    assert abs(np.mean(ref.mu[(e > 8200) & (e < 8300)])) < 0.03
    assert abs(np.mean(ref.mu[(e > 8500) & (e < 8700)]) - 1) < 0.05
    assert ref.mu.max() > 1.3  # the whiteline of Ni(OH)2
    e50 = stress_edge_energy(0.0)
    assert 8341.5 < e50 < 8344.5
    nio = ni_references()["NiO"]
    grid = np.arange(8300.0, 8400.0, 0.5)
    assert np.abs(ref(grid) - nio(grid)).max() > 0.1


# --------------------------------------------------------------------------- consumers and errors


def test_written_and_read_back_with_the_scale(tmp_path):
    from xanestrack.truth_io import read_truth, write_synthetic

    s = make_stress_stack("stress-magnification", 1, reduced=True, n_energies=5)
    write_synthetic(s, tmp_path, preset="stress-magnification")
    t = read_truth(tmp_path / "truth.h5")
    np.testing.assert_allclose(t.scale, s.truth.scale)
    np.testing.assert_allclose(t.positions[["y", "x"]].to_numpy(), s.truth.positions[["y", "x"]].to_numpy(), atol=1e-9)
    assert list(t.positions["isolated"]) == list(s.truth.positions["isolated"])


def test_cli_synth_accepts_stress_presets(tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.truth_io import read_truth

    out = tmp_path / "s"
    r = CliRunner().invoke(
        app,
        [
            "synth",
            str(out),
            "--preset",
            "stress-jitter",
            "--seed",
            "2",
            "--n-energies",
            "6",
            "--size",
            "256",
            "--n-particles",
            "5",
            "--max-radius",
            "22",
        ],
    )
    assert r.exit_code == 0, r.output
    t = read_truth(out / "truth.h5")
    assert len(t.radii) == 5 and t.scale is not None and t.radii.max() <= 22.0 * 1.001


def test_make_scene_dispatches_to_both_models():
    from xanestrack.synth import SynthParams

    assert isinstance(
        make_scene("default", seed=1, n_energies=3, shape=(120, 120), n_particles=2, radius_range=(10.0, 14.0)).params,
        SynthParams,
    )
    assert isinstance(
        make_scene(
            "stress-fines",
            seed=1,
            n_energies=3,
            shape=(200, 200),
            n_particles=3,
            n_fines=5,
            n_touching_fines=1,
            radius_range=(10.0, 20.0),
        ).params,
        StressParams,
    )
    with pytest.raises(ValueError, match="unknown preset 'nope'.*stress-all"):
        make_scene("nope")


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="unknown stress case 'stress-x'"):
        make_stress_stack("stress-x", 0)
    with pytest.raises(ValueError, match=r"unknown StressParams field\(s\) \['n_particle'\]"):
        make_stress_stack("stress-all", 0, n_particle=3)
    with pytest.raises(TypeError, match="case_or_params"):
        make_stress_stack(3, 0)
    with pytest.raises(ValueError, match="cluster_sizes"):
        StressParams(n_particles=3, cluster_sizes=(2, 2))
    with pytest.raises(ValueError, match="radius_range"):
        StressParams(radius_range=(20.0, 10.0))
    with pytest.raises(ValueError, match="cannot place"):
        make_stress_stack("stress-crowd", 0, shape=(96, 96), n_energies=2)
    assert {f.name for f in fields(StressParams)} >= {"n_energies", "shape", "n_particles", "radius_range", "counts"}
