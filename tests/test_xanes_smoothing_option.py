"""`xanestrack run --xanes-smoothing PX`: the smoothing inside each mask before the per-pixel XANES analysis
reaches the pipeline, and the report and results.h5 say which was used.

At a sharp chemistry front (a core-shell particle, synth seed 5, 256 px, 60 energies) the default 1 px blurs the
front: pixels within 2 px of it were off by up to 0.79 eV in E50 (0.34 in fraction) with a per-pixel sigma of
0.08 eV, none within 2 sigma; with 0 the same pixels were off by 0.27 eV at sigma 0.28 eV. Nothing said the maps
were smoothed, and `run` could not change it.
"""

import json
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from xanestrack.cli import app
from xanestrack.results import read_results

runner = CliRunner()

#: the reduced scene: two particles, 30 energies, 128 px; the classical models (the option's path does not
#: depend on them): about 4 s a run
_SCENE = ["--seed", "1", "--size", "128", "--n-energies", "30", "--n-particles", "2", "--max-radius", "16"]
_MODELS = ["--detector", "classical", "--segmenter", "classical"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("xs") / "synthetic"
    r = runner.invoke(app, ["synth", str(d), *_SCENE])
    assert r.exit_code == 0, r.output
    return d


def _run(scene, out, *extra):
    r = runner.invoke(app, ["--quiet", "run", str(scene / "stack.h5"), "--out", str(out), *_MODELS, *extra])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def runs(scene, tmp_path_factory):
    base = tmp_path_factory.mktemp("xs_runs")
    return {s: _run(scene, base / f"s{s}", *([] if s is None else ["--xanes-smoothing", s])) for s in (None, "0")}


def _h5_smoothing(out) -> list:
    # .get, not [ ]: a KeyError's traceback kept h5py objects alive into the next run, whose writer thread then
    # hung on h5py's lock (seen while checking that these tests fail without the attribute)
    with h5py.File(out / "results.h5", "r") as f:
        return [g.attrs.get("xanes_smoothing_px") for g in f["particles"].values()]


def test_default_is_one_px_and_said(runs):
    out = runs[None]
    assert json.loads((out / "run.json").read_text())["parameters"]["xanes_smoothing"] == 1.0
    res = read_results(out)
    assert res.options.xanes_smoothing == 1.0 and len(res.particles) == 2
    assert _h5_smoothing(out) == [1.0, 1.0]
    html = (out / "report.html").read_text()
    assert "smoothed inside each mask with a Gaussian of 1 px (sigma)" in html
    assert "blurred over about 2.4 px" in html and "not the bias of that blur" in html
    assert "--xanes-smoothing 0 for none" in html and "not smoothed" not in html


def test_zero_reaches_the_pipeline_and_changes_the_maps(runs):
    out = runs["0"]
    assert json.loads((out / "run.json").read_text())["parameters"]["xanes_smoothing"] == 0.0
    res0, res1 = read_results(out), read_results(runs[None])
    assert res0.options.xanes_smoothing == 0.0
    assert _h5_smoothing(out) == [0.0, 0.0]
    html = (out / "report.html").read_text()
    assert "The maps are not smoothed (--xanes-smoothing 0)." in html
    assert "Gaussian of" not in html and "blurred over" not in html
    # the option does something: same tracks, other maps, and the unsmoothed ones noisier
    for p0, p1 in zip(res0.particles, res1.particles):
        assert np.array_equal(p0.mask, p1.mask)
        both = p0.mask & np.isfinite(p0.edge_maps["e50"]) & np.isfinite(p1.edge_maps["e50"])
        assert both.sum() > 100
        assert np.median(np.abs(p0.edge_maps["e50"][both] - p1.edge_maps["e50"][both])) > 0.01
        s0, s1 = (np.nanmedian(p.maps["e50_sigma"][both]) for p in (p0, p1))
        assert s0 > 1.5 * s1
    # the report rebuilt from the folder says the same
    assert runner.invoke(app, ["--quiet", "report", str(out)]).exit_code == 0
    assert "The maps are not smoothed (--xanes-smoothing 0)." in (out / "report.html").read_text()


def test_explicit_default_changes_nothing(scene, runs, tmp_path):
    """Control: `--xanes-smoothing 1` is the run without the option, map for map."""
    res = read_results(_run(scene, tmp_path / "one", "--xanes-smoothing", "1"))
    ref = read_results(runs[None])
    for p, q in zip(res.particles, ref.particles):
        np.testing.assert_array_equal(p.edge_maps["e50"], q.edge_maps["e50"])
        np.testing.assert_array_equal(p.fractions, q.fractions)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_nonsense_is_refused_before_reading(scene, tmp_path, value):
    r = runner.invoke(app, ["run", str(scene / "stack.h5"), "--out", str(tmp_path / "o"), "--xanes-smoothing", value])
    assert r.exit_code == 2
    assert f"--xanes-smoothing {float(value)}" in r.output and "0 (none) or more" in r.output
    assert "read " not in r.output and not (tmp_path / "o").exists()


def test_read_back_without_the_option(runs, tmp_path):
    """A results.h5 whose options lack the field: the particles' attribute, else 1 px (what such runs did)."""
    out = tmp_path / "old"
    shutil.copytree(runs["0"], out)
    with h5py.File(out / "results.h5", "r+") as f:
        opts = json.loads(f.attrs["options"])
        del opts["xanes_smoothing"]
        f.attrs["options"] = json.dumps(opts)
    assert read_results(out).options.xanes_smoothing == 0.0
    with h5py.File(out / "results.h5", "r+") as f:
        for g in f["particles"].values():
            del g.attrs["xanes_smoothing_px"]
    assert read_results(out).options.xanes_smoothing == 1.0


def test_a_smoothing_wider_than_a_quarter_of_a_particle_is_said(scene, runs, tmp_path):
    """`--xanes-smoothing 30` ran without a word (the options probe: a core-shell particle's mean E50 moved 0.06 eV,
    6 sigma); now a run note names the particles it is more than a quarter of the radius of. The default 1 px and
    0 say nothing."""
    from xanestrack.chemistry.runnotes import SMOOTHING_RADIUS_SHARE

    wide = _run(scene, tmp_path / "s8", "--xanes-smoothing", "8")
    notes = json.loads((wide / "run.json").read_text())["notes"]
    said = [n for n in notes if n.startswith("the per-pixel XANES was smoothed with a Gaussian of 8 px")]
    assert len(said) == 1, notes
    res = read_results(wide)
    named = [p for p in res.particles if 8 > SMOOTHING_RADIUS_SHARE * p.size_radius]
    assert named and all(f"{p.particle} (r " in said[0] for p in named)
    for out in runs.values():  # the default and none
        assert not any(
            "the per-pixel XANES was smoothed" in n for n in json.loads((out / "run.json").read_text())["notes"]
        )
