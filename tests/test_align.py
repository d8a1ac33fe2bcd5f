import numpy as np
import pytest

from xanestrack.align import ALIGNERS, available_aligners
from xanestrack.bench import adjacent_ssim, benchmark_stack, differential_residual
from xanestrack.register import crop_windows
from xanestrack.synth import make_synthetic_stack

# expected accuracy (px, RMS with mean removed) on a rigid scan of pre-edge frames
EXPECTED = {
    "template_absolute": 0.2,
    "template_relative": 0.2,
    "phase_correlation": 0.6,
    "sift_ransac": 0.6,
    "optical_flow": 0.6,
    "stackreg": 0.2,
}


@pytest.fixture(scope="module")
def rigid():
    # pre-edge energies only: no contrast change, so every global method should work
    return make_synthetic_stack("rigid", seed=4, n_energies=8, shape=(240, 240), n_particles=4, radius_range=(12, 24), jump_size=3.0)


@pytest.mark.parametrize("name", [n for n, (f, s) in ALIGNERS.items() if s == "global"])
def test_global_aligners_recover_known_rigid_shift(rigid, name):
    if name not in available_aligners():
        pytest.skip(f"{name}: optional dependency not installed")
    od = rigid.optical_density()[:, :, :]
    e = rigid.energies_ev
    keep = e < 8330
    fn, _ = ALIGNERS[name]
    sh = fn(od[keep])
    err = sh - rigid.truth.global_shift[keep]
    err -= np.nanmean(err, axis=0)
    rms = np.sqrt(np.nanmean((err**2).sum(1)))
    assert rms < EXPECTED[name], (name, rms)


@pytest.mark.parametrize("name", [n for n, (f, s) in ALIGNERS.items() if s == "particle"])
def test_particle_aligners_recover_particle_shift(rigid, name):
    if name not in available_aligners():
        pytest.skip(f"{name}: weights or optional dependency not installed")
    od = rigid.optical_density()
    tp = rigid.truth.positions
    g = tp[tp.particle == 0].sort_values("frame")
    centres = np.round(g[["y", "x"]].to_numpy()[0]) + np.zeros((od.shape[0], 2))  # fixed window
    win, orig, _ = crop_windows(od, centres, 30)
    keep = rigid.energies_ev < 8330
    fn, _ = ALIGNERS[name]
    from xanestrack.segment import segment_rois

    masks = segment_rois(win[keep])
    sh = fn(win[keep], masks=masks)
    true = g[["dy", "dx"]].to_numpy()[keep]
    err = sh - (true - true[0])
    err -= err.mean(axis=0)
    assert np.sqrt((err**2).sum(1).mean()) < 0.3, name


def test_ssim_of_identical_frames_is_one_and_drops_with_shift():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    img = ndimage.gaussian_filter(rng.random((40, 40)), 2)
    same = np.stack([img, img, img])
    m, v = adjacent_ssim(same)
    assert abs(m - 1) < 1e-9 and v < 1e-12
    moved = np.stack([img, np.roll(img, 3, axis=1)])
    assert adjacent_ssim(moved)[0] < 0.9


def test_differential_residual_known_answer():
    a = np.ones((2, 10, 10))
    a[1] *= 3.0  # pure contrast change: residual 0
    mask = np.ones((10, 10), bool)
    assert differential_residual(a, mask) == pytest.approx(0.0)
    b = np.ones((2, 10, 10))
    b[1, :5] = 2.0  # last/mean(last): 4/3 and 2/3 -> residual 1/3
    assert differential_residual(b, mask) == pytest.approx(1 / 3)


@pytest.mark.slow
def test_benchmark_ranks_methods_on_a_small_deforming_scan():
    s = make_synthetic_stack("default", seed=2, n_energies=40, shape=(220, 220), n_particles=3, radius_range=(12, 22), drift_range=(3, 6))
    t, r, _ = benchmark_stack(s, methods=["template_absolute", "centre_of_mass", "particle_template"], preset="t", seed=2)
    med = t.groupby("method")["rms_px"].median()
    assert med["centre_of_mass"] < med["template_absolute"] / 3
    assert set(t.columns) >= {"ssim_mean", "ssim_var", "diff_residual", "edge_rms_ev", "ms_per_frame", "frac_over_1px"}


def test_bench_command_on_a_dataset_folder(tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app

    r = CliRunner()
    assert r.invoke(app, ["synth", str(tmp_path / "ds"), "--seed", "7", "--n-particles", "2", "--n-energies", "30", "--size", "160", "--max-radius", "16"]).exit_code == 0
    res = r.invoke(app, ["--quiet", "bench", "--method", "template_absolute", "--method", "centre_of_mass", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    import pandas as pd

    t = pd.read_csv(tmp_path / "b" / "bench_particles.csv")
    assert set(t.preset) == {"ds"} and set(t.method) == {"template_absolute", "centre_of_mass"}
    assert len(t) == 2 * 2  # 2 methods x 2 particles
    assert "### preset `ds`" in (tmp_path / "b" / "bench_summary.md").read_text()
