"""The chemistry through the whole tool: phase mapping, sigma coverage, whiteline, calibration, quality, napari.

Known answers from synthetic scans whose chemistry is known per pixel (``synth``), run through
``run_pipeline`` or ``xanestrack run`` as a user would.
"""

import json

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from xanestrack.cli import app
from xanestrack.evaluate import pair_particles
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.result import particle_summary
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import edge_energy_of_fraction, make_synthetic_stack

runner = CliRunner()
#: E50 halfway between pure NiO (8340.05 eV) and pure LiNiO2 (8341.81 eV): the phase boundary of the truth
E50_MIDDLE = 0.5 * (8340.05 + 8341.81)


def _pixels(result, truth, *, rim_px=0):
    """Per paired particle: (particle result, truth index, truth rows, truth cols, map rows, map cols)."""
    tp = truth.positions
    true0 = tp[tp["frame"] == 0].sort_values("particle")[["y", "x"]].to_numpy()
    est0 = np.array([p.positions[0] for p in result.particles]).reshape(-1, 2)
    out = []
    for i, j in pair_particles(est0, true0):
        p, tm, to = result.particles[i], truth.edge_maps[j], truth.edge_map_origins[j]
        inside = np.isfinite(tm)
        if rim_px:
            inside = ndimage.binary_erosion(inside, iterations=rim_px)
        ty, tx = np.nonzero(inside)
        gy, gx = ty + int(to[0]) - int(p.origin[0]), tx + int(to[1]) - int(p.origin[1])
        ok = (gy >= 0) & (gy < p.mask.shape[0]) & (gx >= 0) & (gx < p.mask.shape[1])
        out.append((p, j, ty[ok], tx[ok], gy[ok], gx[ok]))
    return out


# ----------------------------------------------------------------------------- phase mapping


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory):
    """``xanestrack run --clusters 2`` on a scan of two pure phases (whole particles and a core/shell)."""
    from xanestrack.truth_io import write_synthetic

    root = tmp_path_factory.mktemp("phases")
    s = make_synthetic_stack(
        "default",
        seed=4,
        n_particles=5,
        shape=(260, 260),
        radius_range=(12.0, 26.0),
        n_energies=72,
        patterns=("phase_NiO", "phase_LiNiO2", "core_shell"),
    )
    (root / "s").mkdir()
    write_synthetic(s, root / "s", preset="default")
    out = root / "out"
    r = runner.invoke(
        app,
        [
            "--quiet",
            "run",
            str(root / "s" / "stack.h5"),
            "--out",
            str(out),
            "--detector",
            "classical",
            "--segmenter",
            "classical",
            "--clusters",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    return s, out


def test_two_phases_are_recovered_by_run_clusters_2(phase_run):
    """Known answer: every pixel's cluster is its true phase (>= 95 % of the clustered pixels; measured 99.9 %)."""
    from xanestrack.results import read_results

    s, out = phase_run
    result = read_results(out)
    assert result.chemistry is not None and result.chemistry["settings"]["clusters"] == 2
    agree = total = 0
    for p, j, ty, tx, gy, gx in _pixels(result, s.truth):
        lab = p.maps["cluster"][gy, gx]
        truth_lab = (s.truth.edge_maps[j][ty, tx] > E50_MIDDLE).astype(int)  # cluster 0 = lower edge = NiO
        sel = lab >= 0
        agree += int((lab[sel] == truth_lab[sel]).sum())
        total += int(sel.sum())
    assert total > 1000
    assert agree / total >= 0.95, agree / total
    # per-particle fractions: clusters.csv, the summary columns and the chemistry table say the same
    import pandas as pd

    csv = pd.read_csv(out / "clusters.csv")
    summ = particle_summary(result)
    np.testing.assert_allclose(csv["cluster_1_fraction"], summ["cluster_1_fraction"], atol=1e-4)
    for p in result.particles:
        pat = s.truth.patterns[[j for q, j, *_ in _pixels(result, s.truth) if q is p][0]]
        frac = float(csv.loc[csv["particle"] == p.particle, "cluster_1_fraction"].iloc[0])
        if pat == "phase_NiO":
            assert frac < 0.05
        elif pat == "phase_LiNiO2":
            assert frac > 0.95
        else:
            assert 0.05 < frac < 0.95
    # mean spectra: cluster 1 (LiNiO2) has the higher edge; the scree says one component dominates
    chem = result.chemistry
    e = chem["energies_ev"]
    m0, m1 = chem["cluster_mean_spectra"]
    assert np.interp(0.5, m1[(e > 8330) & (e < 8350)], e[(e > 8330) & (e < 8350)]) > np.interp(
        0.5, m0[(e > 8330) & (e < 8350)], e[(e > 8330) & (e < 8350)]
    )
    assert chem["pca_explained_variance_ratio"][0] > 0.5


def test_report_with_clusters_is_rebuilt_byte_identical(phase_run):
    from conftest import digest

    _, out = phase_run
    html = (out / "report.html").read_text()
    for fig in ("clusters", "cluster_spectra", "uncertainty", "whiteline", "resolution"):
        assert (out / "figures" / f"{fig}.svg").is_file(), fig
    assert "Phase mapping" in html and "Quality masks" in html
    before = digest(out / "report.html", out / "figures")
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert digest(out / "report.html", out / "figures") == before


def test_napari_reader_shows_the_chemistry_maps(phase_run):
    from xanestrack.napari import read_output

    _, out = phase_run
    by = {kw["name"]: (data, kind) for data, kw, kind in read_output(str(out))}
    for name in (
        "sigma E50 (eV)",
        "sigma E50, noise (eV)",
        "sigma E50, registration (eV)",
        "whiteline, fitted (eV)",
        "whiteline height",
        "edge jump (OD)",
    ):
        assert by[name][1] == "image" and np.isfinite(by[name][0]).any(), name
    assert by["quality: kept"][1] == "labels" and by["quality: kept"][0].max() == 1
    clusters = by["cluster (label = value + 1)"]
    assert clusters[1] == "labels" and set(np.unique(clusters[0])) == {0, 1, 2}
    assert any(name.startswith("map_fraction_sigma: ") for name in by)


# ----------------------------------------------------------------------------- uncertainty, whiteline


@pytest.fixture(scope="module")
def default_scene():
    s = make_synthetic_stack("default", seed=1)
    return s, run_pipeline(Stack(s.optical_density(), s.energies_ev), options=PipelineOptions())


def _convention_e50(energies, e0):
    """E50 of ``(1-f) NiO + f LiNiO2`` on the scan's energies, normalised as the pipeline does (pre-edge
    line, post-edge polynomial at the particle's E0), on a grid of fractions; and the generator's E50."""
    from xanestrack import xanes

    refs = ni_references()
    fs = np.linspace(0, 1, 201)
    out = []
    for f in fs:
        mu = 0.25 * (energies / 8333.0) ** -3 + (1 - f) * refs["NiO"](energies) + f * refs["LiNiO2"](energies)
        nm = xanes.normalize(energies, mu, e0_ev=e0)
        out.append(xanes.edge_energy(energies, nm.norm[:, None], e0_ev=e0)[0][0])
    return fs, np.array(out), edge_energy_of_fraction(fs)


def test_sigma_e50_covers_the_true_error_at_its_nominal_rate(default_scene):
    """Coverage of the stated 1-sigma over the kept core pixels of the default scene (seed 1, 9 particles).

    Measured: 65.7 % within 1 sigma and 92.6 % within 2 sigma of the E50 that the pipeline's own
    normalisation gives for each pixel's true chemistry; 43.0 % / 76.9 % against the generator's E50
    (the references' normalisation). The difference is a deterministic bias of the normalisation model
    (+0.11 eV for pure NiO to +0.003 eV for pure LiNiO2; measured below on noise-free spectra), which a
    statistical error does not contain. (With the post-edge parabola of releases before: 67.6 / 94.0 %
    and 61.9 / 90.4 %, the bias -0.07 to +0.10 eV; the line is a convention 0.06 eV off the references'
    on average and far steadier where the post-edge is sampled sparsely: test_xanes.)
    """
    s, result = default_scene
    z_conv, z_raw = [], []
    for p, j, ty, tx, gy, gx in _pixels(result, s.truth, rim_px=2):
        fs, conv, gen = _convention_e50(result.energies_ev, p.e0_ev)
        t_raw = s.truth.edge_maps[j][ty, tx].astype(float)
        t_conv = np.interp(np.interp(t_raw, gen, fs), fs, conv)
        est, sig = p.edge_maps["e50"][gy, gx], p.maps["e50_sigma"][gy, gx]
        ok = np.isfinite(est) & np.isfinite(sig) & p.maps["quality_keep"][gy, gx]
        z_conv.append((est[ok] - t_conv[ok]) / sig[ok])
        z_raw.append((est[ok] - t_raw[ok]) / sig[ok])
    z_conv, z_raw = np.concatenate(z_conv), np.concatenate(z_raw)
    assert z_conv.size > 10000
    within1, within2 = np.mean(np.abs(z_conv) < 1), np.mean(np.abs(z_conv) < 2)
    assert 0.63 <= within1 <= 0.73, within1
    assert 0.92 <= within2 <= 0.98, within2
    assert np.mean(np.abs(z_raw) < 1) >= 0.38
    # the bias that separates the two: the normalisation model on noise-free spectra
    fs, conv, gen = _convention_e50(result.energies_ev, result.particles[0].e0_ev)
    bias = conv - gen
    assert -0.02 < bias.min() < 0.03 and 0.08 < bias.max() < 0.13


def test_particle_summary_uses_kept_pixels_and_states_the_standard_error(default_scene):
    _, result = default_scene
    s = particle_summary(result)
    assert (s["kept_fraction"] > 0.8).all() and (s["kept_fraction"] <= 1).all()
    assert (s["mean_e50_sigma_ev"] > 0).all() and (s["mean_e50_sigma_ev"] < 0.1).all()
    assert s["whiteline_ev"].between(8345, 8360).all() and s["whiteline_height"].between(1.2, 2.2).all()
    # a pixel rejected by the quality mask does not enter the mean
    p = result.particles[0]
    keep = p.maps["quality_keep"]
    core = ndimage.binary_erosion(p.mask, iterations=2) & keep
    assert float(s.loc[0, "mean_e50_ev"]) == pytest.approx(float(np.nanmean(p.edge_maps["e50"][core])), abs=1e-9)


def test_fitted_whiteline_beats_the_arg_max_on_the_pipeline(default_scene):
    """Per-pixel whiteline position against the true one (the dense mix of the references at the pixel's
    fraction): the fitted peak is closer than the arg-max of the noisy points (measured on the default scene,
    seed 1, 16175 kept core pixels: RMS 0.20 eV fitted vs 0.25 eV arg-max)."""
    from xanestrack import xanes

    s, result = default_scene
    refs = ni_references()
    dense = np.arange(8340.0, 8370.0, 0.01)
    fs = np.linspace(0, 1, 101)
    true_wl = np.array([dense[np.argmax((1 - f) * refs["NiO"](dense) + f * refs["LiNiO2"](dense))] for f in fs])
    fs_gen, gen = fs, edge_energy_of_fraction(fs)
    err_fit, err_max = [], []
    for p, j, ty, tx, gy, gx in _pixels(result, s.truth, rim_px=2):
        f = np.interp(s.truth.edge_maps[j][ty, tx], gen, fs_gen)
        truth = np.interp(f, fs, true_wl)
        e = result.energies_ev[p.xanes_frames]
        sub = p.aligned[p.xanes_frames] - xanes.local_background(p.aligned[p.xanes_frames], p.mask)
        sub = xanes._masked_smooth(sub, p.mask, 1.0)
        nm = xanes.normalize(e, sub[:, gy, gx], e0_ev=p.e0_ev)
        argmax, _ = xanes.edge_energy(e, nm.norm, method="whiteline", e0_ev=p.e0_ev)
        fit = p.edge_maps["whiteline"][gy, gx]
        ok = np.isfinite(fit) & np.isfinite(argmax) & p.maps["quality_keep"][gy, gx]
        err_fit.append(fit[ok] - truth[ok])
        err_max.append(argmax[ok] - truth[ok])
    rms_fit = float(np.sqrt(np.mean(np.concatenate(err_fit) ** 2)))
    rms_max = float(np.sqrt(np.mean(np.concatenate(err_max) ** 2)))
    assert rms_fit < rms_max, (rms_fit, rms_max)


# ----------------------------------------------------------------------------- calibration, options


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    """A small scan whose energy axis is off by +2.3 eV, and the larch Ni foil measured on the same axis."""
    import h5py

    from conftest import shared_data
    from xanestrack.spectra import read_spectrum
    from xanestrack.truth_io import write_synthetic

    foil = read_spectrum(shared_data("spectra", "larch_nio", "Ni_foil_reference_merged_mu.txt"))
    root = tmp_path_factory.mktemp("cal")
    s = make_synthetic_stack(
        "default", seed=2, n_particles=3, shape=(180, 180), radius_range=(12.0, 20.0), n_energies=60
    )
    (root / "s").mkdir()
    write_synthetic(s, root / "s", preset="default")
    with h5py.File(root / "s" / "stack.h5", "a") as f:
        e = f["X_eng"][()]
        unit = 1000.0 if e.max() < 100 else 1.0  # the FXI layout stores keV
        f["X_eng"][...] = e + 2.3 / unit
    np.savetxt(root / "foil.txt", np.c_[foil.energies_ev + 2.3, foil.mu], header="energy_eV mu (on the scan's axis)")
    return s, root


def _run(root, out, *args):
    r = runner.invoke(
        app,
        ["--quiet", "run", str(root / "s" / "stack.h5"), "--out", str(out), "--detector", "classical"]
        + ["--segmenter", "classical", *args],
    )
    assert r.exit_code == 0, r.output
    return json.loads((out / "run.json").read_text())


def test_energy_reference_shifts_the_axis_back(small_scan):
    """The larch Ni foil, measured on an axis 2.3 eV off, brings the scan back (derivative E0 -> 8333 eV)."""
    from xanestrack.results import read_results

    s, root = small_scan
    run = _run(root, root / "out_ref", "--energy-reference", str(root / "foil.txt"), "--reference-e0", "8333.0")
    cal = run["energy_calibration"]
    assert cal["method"] == "derivative" and cal["known_e0_ev"] == 8333.0
    # the foil's own derivative E0 is 0.06 eV from 8333: the shift is -2.3 within 0.1 eV
    assert cal["shift_ev"] == pytest.approx(-2.3, abs=0.1)
    result = read_results(root / "out_ref")
    np.testing.assert_allclose(result.energies_ev, s.energies_ev, atol=0.1)
    assert "energy calibration" in (root / "out_ref" / "report.html").read_text()


def _refused(root, out, *args):
    r = runner.invoke(
        app,
        ["--quiet", "run", str(root / "s" / "stack.h5"), "--out", str(out), "--detector", "classical"]
        + ["--segmenter", "classical", *args],
    )
    assert r.exit_code == 2 and r.output.startswith("error: "), r.output
    assert not out.exists()
    return r.output


def test_energy_calibrations_no_monochromator_needs_are_refused(small_scan):
    """Each was applied without a word: a foil 1000 eV off (-1000 eV), a foil on the scan's own coarse grid
    (-10.5 eV where the truth was 0), a foil against an oxide standard (scale 0.26, 4.2 eV off), a foil
    matched inverted to the standard's EXAFS (scale -59), a known edge of 2000 eV (-6341 eV)."""
    s, root = small_scan
    foil = np.loadtxt(root / "foil.txt")
    np.savetxt(root / "far.txt", np.c_[foil[:, 0] + 1000, foil[:, 1]])
    assert "outside the scan's" in _refused(root, root / "o1", "--energy-reference", str(root / "far.txt"))
    np.savetxt(root / "shifted.txt", foil)  # its edge inside the scan, but 70 eV from the known E0
    out = _refused(root, root / "o2", "--energy-reference", str(root / "shifted.txt"), "--reference-e0", "8263")
    assert "more than any energy calibration needs" in out
    e = np.arange(8200.0, 8700.0, 5.0)  # a coarse axis (a 24-energy scan's own: 3 eV near the edge, -10.5 eV off)
    np.savetxt(root / "grid.txt", np.c_[e, np.interp(e, foil[:, 0], foil[:, 1])])
    assert "too coarse" in _refused(root, root / "o3", "--energy-reference", str(root / "grid.txt"))
    # every 1.8 eV (a 40-energy scan's own grid), 2 eV off: -13.9 eV was applied, with a note that its maximum "is
    # good to about that step"
    e = np.r_[np.arange(8200.0, 8300.0, 10.0), np.arange(8300.0, 8380.0, 1.8), np.arange(8380.0, 8700.0, 20.0)]
    np.savetxt(root / "grid18.txt", np.c_[e, np.interp(e - 2.0, foil[:, 0], foil[:, 1])])
    out = _refused(root, root / "o3b", "--energy-reference", str(root / "grid18.txt"))
    assert "can land on another feature" in out and "would shift the energies by" in out
    # every 1.0 eV (FXI's own step over the edge), no offset: -12.3 eV applied without a word
    e = np.r_[np.arange(8200.0, 8300.0, 10.0), np.arange(8300.0, 8380.0, 1.0), np.arange(8380.0, 8700.0, 20.0)]
    np.savetxt(root / "grid10.txt", np.c_[e, np.interp(e, foil[:, 0], foil[:, 1])])
    assert "too coarse" in _refused(root, root / "o3c", "--energy-reference", str(root / "grid10.txt"))
    from xanestrack.spectra import ni_references

    nio = ni_references()["NiO"]
    np.savetxt(root / "nio.txt", np.c_[nio.energies_ev, nio.mu])
    out = _refused(
        root, root / "o4", "--energy-reference", str(root / "foil.txt"), "--reference-standard", str(root / "nio.txt")
    )
    assert "does not match the standard's" in out
    np.savetxt(root / "inverted.txt", np.c_[foil[:, 0], 2 - foil[:, 1]])
    out = _refused(
        root,
        root / "o5",
        "--energy-reference",
        str(root / "inverted.txt"),
        "--reference-standard",
        str(root / "foil.txt"),
    )
    assert "inverted" in out or "does not match" in out or "edge of search_ev" in out
    assert "outside the scan's" in _refused(root, root / "o6", "--known-edge", "0=2000")


def test_known_edge_of_a_particle_shifts_and_redoes_the_analysis(small_scan):
    from xanestrack.results import read_results

    s, root = small_scan
    run0 = _run(root, root / "out_plain")
    assert "energy_calibration" not in run0
    plain = read_results(root / "out_plain")
    e50 = float(particle_summary(plain).set_index("particle").loc[0, "mean_e50_ev"])
    run = _run(root, root / "out_known", "--known-edge", f"0={e50 - 2.0:.4f}")
    cal = run["energy_calibration"]
    # the known E50 is the material's dense one: the axis sets the particle's to it plus its chemistry's
    # normalisation bias on the scan's energies (measured, taken out: tests/test_known_edge_bias.py)
    bias = cal["normalisation_bias_ev"]
    assert np.isfinite(bias) and abs(bias) < 0.5
    assert cal["method"] == "region" and cal["shift_ev"] == pytest.approx(-2.0 + bias, abs=1e-3)
    assert cal["check_mean_e50_ev"] == pytest.approx(e50 - 2.0 + bias, abs=0.02)
    assert cal["target_e50_ev"] == pytest.approx(e50 - 2.0 + bias, abs=1e-3)
    known = read_results(root / "out_known")
    np.testing.assert_allclose(known.energies_ev, plain.energies_ev + cal["shift_ev"], atol=1e-3)
    assert any(n.startswith("the energy axis is calibrated on particle 0") for n in run["notes"])
    # registration untouched, edge maps moved with the axis
    for a, b in zip(plain.particles, known.particles, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        d = b.edge_maps["e50"] - a.edge_maps["e50"]
        assert np.nanmedian(d) == pytest.approx(cal["shift_ev"], abs=0.02)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--clusters", "1"], "--clusters 1"),
        (["--clusters", "-2"], "--clusters -2"),
        (["--cluster-method", "pca"], "--cluster-method takes 'kmeans' or 'nmf'"),
        (["--cluster-window", "8330"], "--cluster-window takes LO,HI"),
        (["--cluster-window", "8370,8330"], "LO < HI"),
        (["--cluster-window", "8330,8370"], "give --clusters N too"),  # was ignored without a word
        (["--edge-jump-threshold", "0"], "--edge-jump-threshold 0.0"),
        (["--known-edge", "x"], "--known-edge takes PARTICLE=EV"),
        (["--known-edge", "0=8.34"], "must be in eV"),
        (["--known-edge", "99=8340"], "no particle 99"),
        (["--energy-reference", "nothere.txt"], "--energy-reference nothere.txt"),
        (["--reference-standard", "x.txt"], "--reference-standard needs --energy-reference"),
    ],
)
def test_bad_chemistry_options_are_one_line(small_scan, tmp_path, args, fragment):
    _, root = small_scan
    r = runner.invoke(
        app,
        ["run", str(root / "s" / "stack.h5"), "--out", str(tmp_path / "o"), "--detector", "classical"]
        + ["--segmenter", "classical", *args],
    )
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.output
    assert "Traceback" not in r.output


def test_pipeline_refuses_bad_chemistry_options(small_synth):
    stack = Stack(small_synth.optical_density()[:12], small_synth.energies_ev[:12])
    for kw, frag in (
        (dict(clusters=1), "options.clusters"),
        (dict(cluster_method="pca"), "options.cluster_method"),
        (dict(cluster_window=(2.0, 1.0)), "options.cluster_window"),
        (dict(edge_jump_threshold=-1.0), "options.edge_jump_threshold"),
    ):
        with pytest.raises(ValueError, match=frag):
            run_pipeline(stack, options=PipelineOptions(**kw))


def test_synth_patterns_option(tmp_path):
    from xanestrack.truth_io import read_truth

    args = ["--quiet", "synth", str(tmp_path / "s"), "--n-particles", "2", "--n-energies", "12", "--size", "140"]
    r = runner.invoke(app, [*args, "--max-radius", "14", "--patterns", "phase_LiNiO2,core_shell"])
    assert r.exit_code == 0, r.output
    assert read_truth(tmp_path / "s" / "truth.h5").patterns == ["phase_LiNiO2", "core_shell"]
    r = runner.invoke(app, ["synth", str(tmp_path / "t"), "--patterns", "phase_FeO"])
    assert r.exit_code == 2 and "--patterns: unknown ['phase_FeO']" in r.output


def test_phase_mapping_without_enough_common_frames_is_a_note_not_a_failure(small_synth):
    stack = Stack(small_synth.optical_density()[:8], small_synth.energies_ev[:8])
    r = run_pipeline(stack, options=PipelineOptions(clusters=2, detect_every=4))
    assert r.chemistry is not None and "cluster_mean_spectra" not in r.chemistry
    assert any(n.startswith("phase mapping: ") for n in r.notes)
    assert all((p.maps["cluster"] == -1).all() for p in r.particles)
