"""The aligner comparison (xanestrack.bench): metrics with known answers, the benchmark and its command."""

import numpy as np
import pytest

from xanestrack.bench import adjacent_ssim, benchmark_stack, differential_residual
from xanestrack.synth import make_synthetic_stack


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
    s = make_synthetic_stack(
        "default", seed=2, n_energies=40, shape=(220, 220), n_particles=3, radius_range=(12, 22), drift_range=(3, 6)
    )
    t, r, pos = benchmark_stack(
        s, methods=["template_absolute", "centre_of_mass", "particle_template", "xanestrack"], preset="t", seed=2
    )
    med = t.groupby("method")["rms_px"].median()
    assert med["centre_of_mass"] < med["template_absolute"] / 3
    assert med["xanestrack"] < med["template_absolute"] / 3
    # the row named centre_of_mass was the pipeline's own (edge correlation, smoothed), credited to the paper's method
    for p in r.particles:
        assert np.array_equal(pos[("xanestrack", p.particle)], p.positions, equal_nan=True)
        assert np.nanmax(np.abs(pos[("centre_of_mass", p.particle)] - p.positions)) > 0.01
    assert set(t.columns) >= {"ssim_mean", "ssim_var", "diff_residual", "edge_rms_ev", "ms_per_frame", "frac_over_1px"}


def test_bench_command_on_a_dataset_folder(tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app

    r = CliRunner()
    assert (
        r.invoke(
            app,
            [
                "synth",
                str(tmp_path / "ds"),
                "--seed",
                "7",
                "--n-particles",
                "2",
                "--n-energies",
                "30",
                "--size",
                "160",
                "--max-radius",
                "16",
            ],
        ).exit_code
        == 0
    )
    res = r.invoke(
        app,
        [
            "--quiet",
            "bench",
            "--method",
            "template_absolute",
            "--method",
            "centre_of_mass",
            "--method",
            "xanestrack",
            "--dataset",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert res.exit_code == 0, res.output
    import logging

    # the bench quiets the XANES warnings of its scans for its own run only (a later run in the same process logged
    # none: it had left the level at ERROR)
    assert logging.getLogger("xanestrack.xanes").level != logging.ERROR
    import pandas as pd

    t = pd.read_csv(tmp_path / "b" / "bench_particles.csv")
    assert set(t.preset) == {"ds"} and set(t.method) == {"template_absolute", "centre_of_mass", "xanestrack"}
    assert len(t) == 3 * 2  # 3 methods x 2 particles
    md = (tmp_path / "b" / "bench_summary.md").read_text()
    # what the scan was: a dataset was headed "preset `ds` (seeds 0)", drawn with seed 7, its size not said
    assert "### dataset `ds` (30 x 160 x 160, 2 particles, drawn as preset default seed 7)" in md, md
    assert "xanestrack (edge correlation vouched for by the centre of mass" in md
    assert "The centre of mass of each frame's mask alone (the paper's method, not smoothed)" in md
    assert set(t.seed) == {7} and (tmp_path / "b" / "peak_ratios_ds_7.csv").is_file()  # its seed, not 0
    # on an 80-column console (or a pipe) Rich cut the table's numbers to "0.0…": every row is printed whole
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and any(c.isdigit() for c in ln)]
    assert rows and all(ln in res.output for ln in rows), res.output


def test_two_datasets_of_one_folder_name_are_kept_apart(tmp_path):
    """Both were labelled by the folder's name: their particles pooled into one row, figures written once."""
    import pandas as pd
    from typer.testing import CliRunner

    from xanestrack.cli import app

    r = CliRunner()
    for parent, n in (("a", 2), ("b", 1)):
        args = ["--quiet", "synth", str(tmp_path / parent / "x"), "--seed", "1", "--n-particles", str(n)]
        assert r.invoke(app, args + ["--n-energies", "20", "--size", "140", "--max-radius", "14"]).exit_code == 0
    args = ["--quiet", "bench", "--method", "centre_of_mass", "--dataset", str(tmp_path / "a" / "x")]
    res = r.invoke(app, args + ["--dataset", str(tmp_path / "b" / "x"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    t = pd.read_csv(tmp_path / "o" / "bench_particles.csv")
    assert t.groupby("preset").size().to_dict() == {"a_x": 2, "b_x": 1}
    res = r.invoke(app, args + ["--dataset", str(tmp_path / "a" / "x"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "the same folder given twice" in res.output


def test_seed_without_a_preset_is_refused(tmp_path):
    from typer.testing import CliRunner

    from xanestrack.cli import app

    args = ["--quiet", "bench", "--dataset", str(tmp_path), "--seed", "3", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, args)  # the seed was ignored without a word
    assert res.exit_code == 2 and "--seed draws the --preset scans" in res.output


def test_a_method_without_estimates_is_not_the_best():
    # SIFT finding no matches in the second of two frames scored 0.000 px ("infx lower" than ours)
    import pandas as pd

    from xanestrack.bench import summarise
    from xanestrack.evaluate import registration_error

    truth = np.array([[10.0, 10.0], [11.0, 12.0]])
    failed = registration_error(np.array([[10.0, 10.0], [np.nan, np.nan]]), truth)
    assert np.isnan(failed["rms"]) and failed["frac_missing"] == 0.5
    good = registration_error(truth + 0.1, truth)
    assert good["rms"] < 1e-9 and good["frac_missing"] == 0.0
    rows = [
        dict(preset="p", method=m, scope="global", rms_px=r, frac_over_1px=0.0, frac_missing=0.0, worst_px=r)
        for m, r in (("sift", np.nan), ("sift", 0.2), ("template", 0.3))
    ]
    t = pd.DataFrame(rows).assign(ssim_mean=0.5, ssim_var=0.0, diff_residual=0.1, edge_rms_ev=0.1, ms_per_frame=1.0)
    summ = summarise(t).set_index("method")
    assert np.isnan(summ.loc["sift", "max_rms_px"]) and summ.loc["template", "max_rms_px"] == 0.3
