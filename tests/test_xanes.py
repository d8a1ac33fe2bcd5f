import warnings

import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_data, stress_disc
from xanestrack import xanes
from xanestrack.spectra import ni_references, read_spectrum
from xanestrack.synth import edge_energy_of_fraction, ni_energy_grid


def _e50(e, mu, **kw):
    n = xanes.normalize(e, mu, **kw)
    v, _ = xanes.edge_energy(e, n.norm, e0_ev=n.e0_ev)
    return float(v)


def test_shipped_reference_edges_known_values():
    refs = ni_references()
    e = ni_energy_grid()
    # E(mu_norm = 0.5): NiO ~8340.0 eV, LiNiO2 ~8341.8 eV (pyxas references)
    assert abs(_e50(e, refs["NiO"](e)) - 8340.05) < 0.15
    assert abs(_e50(e, refs["LiNiO2"](e)) - 8341.81) < 0.15


def test_edge_energy_with_sloped_pre_edge_and_scaling():
    refs = ni_references()
    e = ni_energy_grid()
    mu = 0.37 * refs["NiO"](e) + 0.2 - 0.3 * (e - 8200) / 1000
    assert abs(_e50(e, mu) - 8340.05) < 0.15


def test_edge_energy_does_not_follow_which_post_edge_frames_were_sampled():
    # The post-edge was a parabola from 200 eV of span, extrapolated 100 eV back to E0: with the default
    # grid's energies taken every 3rd, at its three offsets, one spectrum's E50 moved by 0.73-1.31 eV (pure
    # NiO: -0.74 to +0.57 eV off the truth), as the samples caught the EXAFS wiggles; now a line: 0.15-0.49 eV
    # (-0.15 to +0.35 eV off; what is left is mostly the linear crossing 1.5 eV apart at the edge).
    refs = ni_references()
    e_all = ni_energy_grid()
    for f in (0.0, 0.5, 1.0):
        e50 = []
        for off in range(3):
            e = e_all[off::3]
            mu = 0.5 * (0.3 * (e / 8333.0) ** -3 + (1 - f) * refs["NiO"](e) + f * refs["LiNiO2"](e)) + 0.2
            e50.append(_e50(e, mu))
        assert np.ptp(e50) < 0.6, (f, e50)
        assert np.max(np.abs(np.array(e50) - edge_energy_of_fraction(f))) < 0.4, (f, e50)


def test_measured_spectra_on_a_beamline_energy_list_keep_their_dense_edge_energy():
    # FXI's Ni energy list (post-edge every 40 eV, 8417-8777 eV) shifted by -10..+10 eV, sampling measured
    # spectra: E50 against the dense spectrum's up to 1.38 eV off with the parabola (Ni metal), 0.5 eV for
    # the oxides; with the line 0.65 eV (a metal foil at one offset), the oxides within 0.11 eV.
    fxi = np.loadtxt(shared_data("spectra", "pyxas", "Ni_eng_list_from_stetef_repo.txt")) * 1000.0
    names = {"Ni2O3_rt_01.xdi": 0.15, "NiOH2_rt_01.xdi": 0.15, "Ni_metal_rt_01.xdi": 0.7}
    for name, tol in names.items():
        r = read_spectrum(shared_data("spectra", "xasdatalibrary", "Ni", name))
        e_m, mu_m = np.asarray(r.energies_ev, float), np.asarray(r.mu, float)
        dense = np.arange(fxi[0], fxi[-1] + 0.01, 0.5)
        dense = dense[(dense >= e_m[0]) & (dense <= e_m[-1])]
        ref = _e50(dense, np.interp(dense, e_m, mu_m))
        for off in np.arange(-10.0, 10.1, 2.5):
            e = fxi + off
            e = e[(e >= e_m[0]) & (e <= e_m[-1])]
            assert abs(_e50(e, np.interp(e, e_m, mu_m)) - ref) < tol, (name, off)


def test_vectorised_normalisation_equals_per_spectrum_loop():
    refs = ni_references()
    e = ni_energy_grid()
    rng = np.random.default_rng(0)
    f = rng.random(12)
    mu = np.stack([(1 - fi) * refs["NiO"](e) + fi * refs["LiNiO2"](e) for fi in f], axis=1)
    mu = mu * rng.uniform(0.5, 2, 12) + rng.uniform(0, 0.3, 12) + rng.normal(0, 0.002, mu.shape)
    n = xanes.normalize(e, mu, e0_ev=8340.0)
    for j in range(12):
        nj = xanes.normalize(e, mu[:, j], e0_ev=8340.0)
        assert np.allclose(n.norm[:, j], nj.norm, atol=1e-5)
    v, _ = xanes.edge_energy(e, n.norm, e0_ev=8340.0)
    assert np.all(np.abs(v - edge_energy_of_fraction(f)) < 0.2)


def test_edge_energy_methods_order_and_flags():
    refs = ni_references()
    e = ni_energy_grid()
    mu = np.stack([refs["NiO"](e), refs["LiNiO2"](e), np.full(e.size, np.nan), np.zeros(e.size)], axis=1)
    n = xanes.normalize(e, mu, e0_ev=8340.0)
    assert n.flags[2] & xanes.FLAG_NONFINITE
    assert n.flags[3] & xanes.FLAG_LOW_STEP
    for method in ("half", "derivative", "whiteline"):
        v, fl = xanes.edge_energy(e, n.norm, method=method, e0_ev=8340.0)
        assert v[1] > v[0], method  # Ni3+ above Ni2+
        assert np.isnan(v[2]) and np.isnan(v[3])
        assert fl[2] and fl[3]


def test_linear_combination_fit_recovers_fractions():
    refs = ni_references()
    e = ni_energy_grid()
    f = np.array([0.0, 0.3, 0.75, 1.0])
    norm = np.stack([(1 - fi) * refs["NiO"](e) + fi * refs["LiNiO2"](e) for fi in f], axis=1)
    r = xanes.linear_combination_fit(e, norm, refs, e0_ev=8340.0)
    assert r.names == ("NiO", "LiNiO2")
    assert np.allclose(r.fractions[1], f, atol=1e-3)
    assert np.allclose(r.fractions.sum(axis=0), 1.0, atol=1e-6)
    # non-negativity: a spectrum beyond LiNiO2 is clipped to pure LiNiO2
    beyond = 1.3 * refs["LiNiO2"](e) - 0.3 * refs["NiO"](e)
    r2 = xanes.linear_combination_fit(e, beyond[:, None], refs, e0_ev=8340.0)
    assert np.all(r2.fractions >= 0) and abs(r2.fractions[1, 0] - 1.0) < 1e-6


def test_bad_input_messages():
    e = ni_energy_grid(20)
    with pytest.raises(ValueError, match="energy axis first"):
        xanes.normalize(e, np.zeros((5, 20)))
    with pytest.raises(ValueError, match="at least 8 energies"):
        xanes.normalize(e[:4], np.zeros(4))
    with pytest.raises(ValueError, match="post-edge range"):
        xanes.normalize(e[:12], np.linspace(0, 1, 12))


def test_mn_references_edges_increase_with_oxidation_state():
    folder = shared_data("spectra", "xasdatalibrary", "Mn")
    edges = {}
    for name in ("MnO", "Mn3O4", "Mn2O3", "MnO2"):
        sp = read_spectrum(folder / f"{name}_rt_01.xdi")
        edges[name] = _e50(sp.energies_ev, sp.mu, pre_range=(-40, -12), post_range=(35, None))
    vals = [edges[n] for n in ("MnO", "Mn3O4", "Mn2O3", "MnO2")]
    assert all(a < b for a, b in zip(vals, vals[1:])), edges


def test_ni_foil_e0_energy_calibration():
    path = shared_data("spectra", "larch_nio", "Ni_foil_reference_merged_mu.txt")
    sp = read_spectrum(path)
    e0 = xanes.find_e0(sp.energies_ev, sp.mu)
    assert abs(e0 - 8333.0) < 1.5


# --------------------------------------------------------------------------- one particle's analysis


def _particle_stack(f=0.4, seed=5):
    """A uniform particle of Ni3+ fraction ``f`` in a 33 x 33 window: each frame with its own OD offset and tilt."""
    rng = np.random.default_rng(seed)
    e = ni_energy_grid()
    refs = ni_references()
    yy, xx = np.mgrid[0:33, 0:33]
    mask = np.hypot(yy - 16, xx - 16) < 9
    mu = (1 - f) * refs["NiO"](e) + f * refs["LiNiO2"](e) + 0.25 * (e / 8333.0) ** -3
    offs, tilt = rng.normal(0, 0.05, e.size), rng.normal(0, 0.02, e.size)
    aligned = 0.8 * mu[:, None, None] * mask + 0.1 + offs[:, None, None] + tilt[:, None, None] * (yy - 16) / 33
    return e, (aligned + rng.normal(0, 0.01, aligned.shape)).astype(np.float32), mask, refs


def test_analyse_particle_edge_map_and_fractions_known_answer():
    e, aligned, mask, refs = _particle_stack(f=0.4)
    r = xanes.analyse_particle(aligned, mask, e, references=refs)
    assert r["notes"] == [] and r["reference_names"] == ("NiO", "LiNiO2")
    e50 = r["edge_maps"]["e50"]
    assert np.isnan(e50[~mask]).all()
    assert abs(np.nanmean(e50[mask]) - edge_energy_of_fraction(0.4)) < 0.1  # measured 0.03 eV
    frac = np.nanmean(r["fractions"][:, mask], axis=1)
    assert np.allclose(frac, [0.6, 0.4], atol=0.02)  # measured 0.005
    # the per-frame background (offset, tilt) is what the local background removes
    raw = xanes.analyse_particle(aligned, mask, e, references=refs, subtract_background=False)
    assert abs(np.nanmean(raw["fractions"][1][mask]) - 0.4) > abs(frac[1] - 0.4)
    assert np.isfinite(r["mean_norm"]).all() and r["pixel_flags"].shape == mask.shape


def test_analyse_particle_with_too_few_energies_is_skipped_with_a_note():
    e, aligned, mask, _ = _particle_stack()
    r = xanes.analyse_particle(aligned[:5], mask, e[:5])
    assert r["notes"] == ["XANES skipped: 5 usable energies (need 8)"]
    assert all(np.isnan(m).all() for m in r["edge_maps"].values()) and np.isnan(r["e0_ev"])
    r = xanes.analyse_particle(aligned, mask, e, usable=np.arange(e.size) < 20, min_energies=30)
    assert "need 30" in r["notes"][0]


def test_a_particle_whose_pre_edge_frames_are_left_out_is_told_why_not_sent_to_the_energy_range():
    # a faint particle's pre-edge positions are often not vouched for (stress-all seed 2: 4 of 14 particles):
    # the note must say that frames were left out and why, not that the scan misses the range
    e, aligned, mask, _ = _particle_stack()
    pre = e < 8330
    assert pre.sum() >= 8
    r = xanes.analyse_particle(aligned, mask, e, usable=~pre, left_out="their positions are not vouched for")
    (note,) = r["notes"]
    assert note.startswith("XANES failed: pre-edge range")
    assert f"{int(pre.sum())} of the scan's {e.size} frames ({e[pre].min():.1f}-{e[pre].max():.1f} eV)" in note
    assert note.endswith("were left out of this particle's analysis: their positions are not vouched for")
    assert "scan covers" not in note and "adjust" not in note
    assert np.isnan(r["e0_ev"]) and all(np.isnan(m).all() for m in r["edge_maps"].values())
    # every frame given and the scan itself too short: no frames left out to blame
    r = xanes.analyse_particle(aligned[~pre], mask, e[~pre])
    assert r["notes"][0].startswith("XANES failed: pre-edge range") and "left out" not in r["notes"][0]


def test_local_background_recovers_each_frame_plane_despite_a_neighbour():
    rng = np.random.default_rng(6)
    n, h, w = 4, 41, 41
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.hypot(yy - 20, xx - 20) < 8
    coef = rng.normal(0, 0.1, (n, 3))
    planes = (
        coef[:, 0, None, None] + coef[:, 1, None, None] * (yy - h / 2) / h + coef[:, 2, None, None] * (xx - w / 2) / w
    )
    stack = planes + 0.5 * mask + rng.normal(0, 0.002, (n, h, w))
    stack[:, 18:23, 32:36] += 1.0  # a neighbour inside the ring
    stack[3, :38] = np.nan  # fewer than 12 finite ring pixels left in the last frame
    bg = xanes.local_background(stack.astype(np.float32), mask)
    assert bg.dtype == np.float32 and bg.shape == stack.shape
    assert np.abs(bg[:3] - planes[:3]).max() < 0.005
    assert (bg[3] == 0).all()


def test_an_edge_energy_in_a_gap_of_left_out_frames_is_not_measured_but_elsewhere_it_is():
    # stress family: a particle whose 27 frames across the edge were left out (not vouched for) got an
    # E50 map 2.2 eV off, interpolated across the gap; with them 0.24 eV
    e, aligned, mask, _ = _particle_stack(f=0.4)
    true_e50 = edge_energy_of_fraction(0.4)
    across = np.abs(e - true_e50) < 6
    assert across.sum() >= 4
    r = xanes.analyse_particle(aligned, mask, e, usable=~across, left_out="not vouched for")
    assert np.isnan(r["edge_maps"]["e50"][mask]).all()
    assert ((r["pixel_flags"][mask] & xanes.FLAG_GAP) > 0).all()
    note = next(n for n in r["notes"] if n.startswith("E50 not measured"))
    assert f"in {int(mask.sum())} of {int(mask.sum())} pixels" in note and "gap of frames left out" in note
    # without the test, the same frames give an edge energy off by more than the one measured with them all
    kept = ~across
    e50, _ = xanes.edge_energy(e[kept], xanes.normalize(e[kept], aligned[kept][:, mask]).norm, e0_ev=true_e50)
    # frames left out away from the crossing (the pre-edge start) change nothing
    r2 = xanes.analyse_particle(aligned, mask, e, usable=np.arange(e.size) != 3)
    assert np.isfinite(r2["edge_maps"]["e50"][mask]).all() and not any("not measured" in n for n in r2["notes"])
    assert abs(np.nanmean(r2["edge_maps"]["e50"][mask]) - true_e50) < 0.1
    # a scan's own coarse steps are no gap: every other frame of the scan, none left out
    sub = np.arange(e.size) % 2 == 0
    r3 = xanes.analyse_particle(aligned[sub], mask, e[sub])
    assert not any("not measured" in n for n in r3["notes"])
    assert np.isfinite(r3["edge_maps"]["e50"][mask]).mean() > 0.95
    assert abs(np.nanmean(e50) - true_e50) > abs(np.nanmean(r2["edge_maps"]["e50"][mask]) - true_e50)


def test_a_whiteline_next_to_a_gap_of_left_out_frames_is_not_measured_but_away_from_it_is():
    # the peak model is drawn through the points on either side of a gap: with 6 eV around the
    # whiteline left out, up to 85 % of a particle's spectra got a maximum 4-5.5 eV off, no flag
    e, aligned, mask, _ = _particle_stack(f=0.4)
    peak = float(np.nanmean(xanes.analyse_particle(aligned, mask, e)["edge_maps"]["whiteline"][mask]))
    out = np.abs(e - (peak + 1)) < 3
    r = xanes.analyse_particle(aligned, mask, e, usable=~out, left_out="not vouched for")
    wl = r["edge_maps"]["whiteline"][mask]
    note = next(n for n in r["notes"] if n.startswith("whiteline not measured"))
    assert "gap of frames left out" in note and "not vouched for" in note
    assert np.isfinite(wl).sum() < 0.05 * mask.sum()
    assert np.all(np.abs(wl[np.isfinite(wl)] - peak) < 1.0)
    # the fit itself: without the scan's energies (no gap known) a confident wrong maximum
    from xanestrack.chemistry.whiteline import fit_whiteline

    rng = np.random.default_rng(0)
    spectrum = xanes.normalize(e, aligned[:, mask].mean(axis=1)).norm
    spectra = spectrum[:, None] + rng.normal(0, 0.005, (e.size, 200))
    kept = np.abs(e - (peak - 2.5)) >= 3
    blind = fit_whiteline(e[kept], spectra[kept], e0_ev=r["e0_ev"])
    told = fit_whiteline(e[kept], spectra[kept], e0_ev=r["e0_ev"], scan_energies_ev=e)
    wrong = np.abs(blind.position_ev - peak) > 2.0  # measured: 45 % of them, 4.4 eV off
    assert wrong.mean() > 0.3
    assert ((told.flags[wrong] & xanes.FLAG_GAP) > 0).all() and np.isnan(told.position_ev[wrong]).all()
    assert told.record()["n_gap"] >= wrong.sum()
    # frames left out 7 eV above the peak: measured, within the fit's noise of the full scan's
    far = np.abs(e - (peak + 7)) < 3
    r2 = xanes.analyse_particle(aligned, mask, e, usable=~far)
    w2 = r2["edge_maps"]["whiteline"][mask]
    assert np.isfinite(w2).all() and not any(n.startswith("whiteline not measured") for n in r2["notes"])
    assert abs(np.nanmean(w2) - peak) < 0.3


def test_frames_used_that_start_on_the_edge_do_not_give_an_edge_energy():
    # stress-all at 1024^2: a 10-px particle whose frames vouched for start at 8352.5 eV, 8 eV above its E50,
    # had E0 found on the whiteline (8385.8 eV), the pre-edge line fitted to the edge's top and an E50 map
    # 30 eV off (8373.6 against about 8344), without a note. Its spectrum over every frame measured shows
    # where the edge is, and the frames used hold nothing below it: declined, with a note.
    e, mask, aligned, true_e50 = stress_disc(5)
    for above in (6, 8, 10):
        used = e >= true_e50 + above
        r = xanes.analyse_particle(aligned, mask, e, usable=used, left_out="not vouched for")
        assert all(np.isnan(m).all() for m in r["edge_maps"].values()) and np.isnan(r["e0_ev"])
        (note,) = r["notes"]
        assert note.startswith("XANES failed: the frames used hold 0 energies in the pre-edge range")
        e0_whole = float(note.split("(E0 ")[1].split(" eV")[0])
        assert abs(e0_whole - true_e50) < 5
        assert note.endswith("were left out of this particle's analysis: not vouched for")
        # the edge found on the frames used alone lies far up the edge: what gave the wrong map
        assert xanes.find_e0(e[used], aligned[used][:, mask]) > true_e50 + 25
    # frames left out elsewhere (the first pre-edge frames, a few across the post-edge) change nothing
    used = (np.arange(e.size) > 3) & ~((e > 8400) & (e < 8450))
    r = xanes.analyse_particle(aligned, mask, e, usable=used)
    assert not any("failed" in n for n in r["notes"])
    assert abs(np.nanmean(r["edge_maps"]["e50"][mask]) - true_e50) < 0.3
    # nor does a frame left out because the particle alone is far off in it (brighter than the edge step)
    spiked = aligned.copy()
    spiked[10][mask] += 1.0
    used[10] = False
    r = xanes.analyse_particle(spiked, mask, e, usable=used)
    assert not any("failed" in n for n in r["notes"])
    assert abs(np.nanmean(r["edge_maps"]["e50"][mask]) - true_e50) < 0.3


def _core_shell(e):
    """A LiNiO2 core in a NiO shell (OD with photon noise), its mask and its true E50 map."""
    from chemistry_synth import disc, dome, pixel_od

    refs = ni_references()
    mask = disc((41, 41), 18)
    core = disc((41, 41), 10)
    w = np.stack([~core, core]).astype(float) * mask
    od, _ = pixel_od(e, np.stack([refs["NiO"](e), refs["LiNiO2"](e)]), w, dome((41, 41), 18, 0.6))
    return od, mask, core


def test_the_references_given_do_not_choose_the_pixels_of_the_edge_energy_statistics():
    # The fit's residual was in the quality mask (median + 5 MAD of the particle's pixels): with the NiO reference
    # alone, the LiNiO2 core was cut and the particle's mean E50 moved by -0.43 eV (25 sigma), nothing said
    e = ni_energy_grid()
    od, mask, core = _core_shell(e)
    refs = ni_references()
    both = xanes.analyse_particle(od, mask, e, references={"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]})
    one = xanes.analyse_particle(od, mask, e, references={"NiO": refs["NiO"]})
    np.testing.assert_array_equal(both["maps"]["quality_keep"], one["maps"]["quality_keep"])
    assert (both["maps"]["quality_keep"] & core).sum() > 0.8 * core.sum()
    assert not any("do not describe" in n for n in both["notes"])
    # ... and the fractions that cannot be the chemistry are said to be so
    assert any("do not describe this particle's spectra" in n for n in one["notes"]), one["notes"]


def test_a_post_edge_of_one_energy_is_said():
    e = ni_energy_grid()
    e = e[e <= 8451.0]  # one energy from E0 + 100 eV on
    od, mask, _ = _core_shell(e)
    notes = xanes.analyse_particle(od, mask, e, uncertainty=False)["notes"]
    assert any(n.startswith("the post-edge is normalised from 1 energy") for n in notes), notes
    full = ni_energy_grid()
    od, mask, _ = _core_shell(full)
    assert not any("post-edge is normalised" in n for n in xanes.analyse_particle(od, mask, full)["notes"])


def test_a_lone_post_edge_energy_far_above_the_edge_is_a_constant_not_a_failure():
    # one energy 240 eV past the edge asked for a line ("post-edge range ... holds 1 energies, need 2"): every
    # particle's XANES failed. Now a constant, said; and from three energies far apart (+0.34 eV on the default
    # scene) the post-edge is still said to rest on too few, and the references' misfit (the normalisation's) is not
    e = ni_energy_grid()
    for keep in ([8680.0], [8500.0, 8600.0, 8680.0]):
        sel = e[(e <= 8440) | np.isin(e, keep)]
        od, mask, _ = _core_shell(sel)
        refs = ni_references()
        out = xanes.analyse_particle(od, mask, sel, references={"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]})
        assert np.isfinite(out["edge_maps"]["e50"][mask]).mean() > 0.9, out["notes"]
        assert any(n.startswith(f"the post-edge is normalised from {len(keep)} energ") for n in out["notes"])
        assert not any("do not describe" in n for n in out["notes"])


def test_a_pre_edge_line_through_energies_close_together_is_not_carried_to_a_far_edge():
    # a scan starting at 8315 eV, the particle's E0 at 8346.5: two pre-edge energies 1 eV apart, a line
    # through them carried 30 eV to the edge, per-pixel E50 1.4-1.6 eV off (0.1 usual), nothing said
    e = np.r_[8315.0, 8316.0, np.arange(8320.0, 8500.0, 1.0)]
    mu = 0.3 + 0.7 / (1 + np.exp(-(e - 8346.5) / 2.0))
    with pytest.raises(ValueError, match="span 1.0 eV, 31.5 eV below E0"):
        xanes.normalize(e, mu, e0_ev=8346.5)
    # ordinary grids starting 40 eV below the edge (8300, 8310, 8320, then 1 eV steps; 8305 in 1 eV steps) measured
    # well, and are kept (a quarter of the distance refused them, half the particles of a scan at random)
    for e2 in (np.r_[8300.0, 8310.0, np.arange(8320.0, 8500.0, 1.0)], np.arange(8305.0, 8500.0, 1.0)):
        mu2 = 0.3 + 0.7 / (1 + np.exp(-(e2 - 8346.5) / 2.0))
        nm = xanes.normalize(e2, mu2, e0_ev=8346.5)
        assert abs(float(nm.edge_step) - 0.7) < 0.02


def test_frames_left_out_are_named_as_the_runs_they_form():
    # "64 of the scan's 143 frames (8200.0-8680.0 eV) were left out": 34 pre-edge frames and 30 scattered ones,
    # read as the whole scan
    e = np.linspace(8200.0, 8680.0, 143)
    out = np.zeros(143, bool)
    out[:34] = True
    out[[60, 61, 62, 90, 100, 120, 121]] = True
    text = xanes._frame_runs(e, out)
    assert text.startswith("8200.0-8311.5 eV (34 frames), 8402.8-8409.6 eV (3 frames), 8504.2 eV")
    assert text.endswith("and 2 more runs of frames")
    assert xanes._frame_runs(e, np.arange(143) < 34) == "8200.0-8311.5 eV"


@pytest.mark.parametrize("n_energies", [143, 60])
def test_an_edge_on_a_shoulder_is_said_to_hang_on_the_normalisation(n_energies):
    """A Ni-metal particle (edge on a shoulder, no white line) read 0.56 eV below its densely measured E50 on a
    scan of 60 energies, its sigma 0.018 eV, nothing said. NiO-like particles (and Ni(OH)2, NiS) get no note."""
    from chemistry_synth import disc, dome, pixel_od

    d = shared_data("spectra", "xasdatalibrary", "Ni")
    e = ni_energy_grid(n_energies)
    mask = disc((41, 41), 18)
    for name, said in (("Ni_metal_rt_01.xdi", True), ("NiOH2_rt_01.xdi", False), ("NiS_rt_01.xdi", False)):
        r = read_spectrum(d / name)
        mu = np.interp(e, r.energies_ev, r.mu)
        od, _ = pixel_od(e, mu[None], mask[None].astype(float), dome((41, 41), 18, 0.6))
        notes = xanes.analyse_particle(od, mask, e, uncertainty=False)["notes"]
        assert any(n.startswith(xanes.SHOULDER_NOTE) for n in notes) == said, (name, notes)
    od, mask, _ = _core_shell(e)
    assert not any(n.startswith(xanes.SHOULDER_NOTE) for n in xanes.analyse_particle(od, mask, e)["notes"])


def test_a_pre_edge_of_frames_not_vouched_for_stands_in_only_where_the_frames_vouched_for_lack_one():
    # stress-counts seed 3 (256 px): every particle's pre-edge frames not vouched for (a faint particle's centre
    # of mass strays 0.6-2 px): no XANES at all. Their pre-edge, a pixel off, sets the pre-edge line only
    e, aligned, mask, refs = _particle_stack()
    pre = e < 8330
    stray = aligned.copy()
    stray[pre] = np.roll(aligned[pre], 1, axis=2)  # placed 1 px off
    placed = xanes.analyse_particle(aligned, mask, e, usable=~pre, pre_usable=pre, references=refs)
    r = xanes.analyse_particle(stray, mask, e, usable=~pre, pre_usable=pre, references=refs)
    assert not any(n.startswith("XANES failed") for n in r["notes"])
    added = r["xanes_frames"] & pre
    assert r["notes"][0].startswith(f"pre-edge taken from {int(added.sum())} frames not vouched for")
    assert added.sum() >= 2 and e[added].max() <= r["e0_ev"] + xanes.PRE_EDGE_RANGE[1]  # the pre-edge range only
    # over its core (the particle's mean E50: result.core_pixels); its rim pixels, a pixel off, are off more
    core = ndimage.binary_erosion(mask, iterations=2)
    e50, e50_placed = np.nanmean(r["edge_maps"]["e50"][core]), np.nanmean(placed["edge_maps"]["e50"][core])
    assert abs(e50 - e50_placed) < 0.02 and abs(e50 - edge_energy_of_fraction(0.4)) < 0.1
    # not given: the failure stands
    r = xanes.analyse_particle(stray, mask, e, usable=~pre)
    assert r["notes"][0].startswith("XANES failed: pre-edge range")
    # not needed (the frames used hold the pre-edge): nothing changes
    some = e < 8300
    a = xanes.analyse_particle(stray, mask, e, usable=~some, references=refs)
    b = xanes.analyse_particle(stray, mask, e, usable=~some, pre_usable=some, references=refs)
    assert a["notes"] == b["notes"]
    assert np.array_equal(a["edge_maps"]["e50"], b["edge_maps"]["e50"], equal_nan=True)
    # not plausible (their mean off the line: the mask catches something else): refused, said
    odd = stray.copy()
    odd[np.flatnonzero(pre)[::2]] += 0.4 * mask
    r = xanes.analyse_particle(odd, mask, e, usable=~pre, pre_usable=pre)
    assert r["notes"][0].startswith("XANES failed: pre-edge range")
    assert "were not taken for its pre-edge" in r["notes"][-1]


def test_normalising_and_edge_energies_hold_few_copies_of_the_spectra():
    """A large particle's XANES (40k pixels, 143 energies) peaked at 504 MiB traced for its 46 MiB of float64
    spectra, a 1024^2 run's peak: normalize held six float64 copies at once, edge_energy three of nanmean's. In
    place now; the values are those of the formulas as written before (pre-edge line, step, NaN spectra kept out)."""
    import tracemalloc

    e = np.linspace(8200, 8600, 143)
    rng = np.random.default_rng(0)
    step = 1 / (1 + np.exp(-(e - 8345) / 3))
    mu = (0.3 + step[:, None] * rng.uniform(0.5, 1.5, 20000) + rng.normal(0, 0.01, (143, 20000))).astype(np.float32)
    mu[:, 7] = np.nan
    f64 = mu.size * 8
    tracemalloc.start()
    nm = xanes.normalize(e, mu, e0_ev=8345.0)
    norm_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tracemalloc.start()
    e50, flags = xanes.edge_energy(e, nm.norm, e0_ev=8345.0)
    edge_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert norm_peak < 4.5 * f64 and edge_peak < 2.0 * f64, (norm_peak / f64, edge_peak / f64)  # 5.8 and 3.4 before
    # the numbers as the formulas give them
    y = np.where(np.isfinite(mu), mu, 0.0).astype(np.float64)
    x = (e - 8345.0) / 100.0
    ip = np.flatnonzero((e >= 8345.0 + xanes.PRE_EDGE_RANGE[0]) & (e <= 8345.0 + xanes.PRE_EDGE_RANGE[1]))
    pre_c = np.linalg.lstsq(np.c_[np.ones(ip.size), x[ip]], y[ip], rcond=None)[0]
    pre = np.c_[np.ones(e.size), x] @ pre_c
    with np.errstate(invalid="ignore", divide="ignore"):
        want = ((y - pre) / nm.edge_step.astype(np.float64)).astype(np.float32)
    want[:, 7] = np.nan
    np.testing.assert_allclose(nm.norm, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(nm.pre_edge, pre.astype(np.float32))
    assert np.isnan(e50[7]) and flags[7] & xanes.FLAG_NONFINITE and np.isfinite(np.delete(e50, 7)).all()
    assert abs(np.nanmedian(e50) - 8345.0) < 1.0


@pytest.mark.parametrize("n_spectra", [1, 7, 4096, 8193, 40001])
def test_the_mean_spectrum_a_row_at_a_time_is_nanmeans(n_spectra):
    """edge_energy's mean spectrum, made a row at a time without a float64 copy of the spectra, is the number
    np.nanmean gave over the NaN-free spectra: the same for float32 spectra (the pipeline's: their float64 sums are
    exact in any order), to the last bits for float64 ones (np.nanmean's order of summing depends on the layout of
    its copy), with and without NaN spectra."""
    rng = np.random.default_rng(n_spectra)
    for dtype in (np.float32, np.float64):
        flat = rng.normal(0.5, 0.3, (23, n_spectra)).astype(dtype)
        for nan in (False, True):
            if nan:
                flat[3, :: max(2, n_spectra // 3)] = np.nan
            cols = np.all(np.isfinite(flat), axis=0)
            got = xanes._finite_mean(flat, cols)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                want = np.nanmean(flat.astype(np.float64)[:, cols] if cols.any() else flat.astype(np.float64), axis=1)
            if dtype is np.float32:
                assert np.array_equal(got, want, equal_nan=True)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-11, atol=0)  # n_spectra x eps: the order of the sums
