"""The normalisation's bias of E50 on the scan's own energies: measured per reference, noted where it matters,
quoted in the report's caption (xanestrack.chemistry.normbias)."""

import json

import numpy as np
import pytest

from xanestrack import xanes
from xanestrack.chemistry.normbias import NOTE_BIAS_EV, normalisation_bias, normalisation_bias_note
from xanestrack.pipeline import run_pipeline
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import edge_energy_of_fraction, make_synthetic_stack, ni_energy_grid

NOTE_START = "the normalisation's bias on this scan's energies moves E50"


def _oracle(energies):
    """The bias as the probe of the sigma measured it: each shipped reference on the
    grid under the synthetic scenes' background, normalised as the pipeline does, against synth's truth."""
    refs = ni_references()
    out = {}
    for name, f in (("NiO", 0.0), ("LiNiO2", 1.0)):
        true = float(edge_energy_of_fraction(np.array([f]))[0])
        e0 = xanes.find_e0(energies, refs[name](energies))
        mu = 0.25 * (energies / 8333.0) ** -3 + refs[name](energies)
        nm = xanes.normalize(energies, mu, e0_ev=e0)
        out[name] = xanes.edge_energy(energies, nm.norm[:, None], e0_ev=e0)[0][0] - true
    return out


@pytest.mark.parametrize(
    "n, nio, linio2",
    # measured by grid_cause.py: the 143-energy grid's bias was quoted whatever the grid
    [(143, 0.110, 0.004), (60, -0.176, 0.031), (50, 0.380, -0.072)],
)
def test_the_bias_on_synths_grids_is_grid_causes(n, nio, linio2):
    e = ni_energy_grid(n)
    bias = normalisation_bias(e, ni_references())
    assert set(bias) == {"NiO", "LiNiO2"}
    assert bias["NiO"] == pytest.approx(nio, abs=0.002) and bias["LiNiO2"] == pytest.approx(linio2, abs=0.002)
    oracle = _oracle(e)
    for k in bias:
        assert bias[k] == pytest.approx(oracle[k], abs=0.008), k  # E0 of the spectrum with its background


def test_a_users_reference_on_its_own_energies_has_no_bias():
    """``dense="normalised"`` (a user's reference): the same normalisation on its own energies; sampled there,
    nothing is left. Callables without energies of their own are left out."""
    refs = ni_references()
    own = refs["NiO"].energies_ev
    bias = normalisation_bias(own, dict(refs, flat=lambda e: np.ones_like(e)), dense="normalised")
    assert set(bias) == {"NiO", "LiNiO2"}
    assert all(abs(v) < 1e-3 for v in bias.values()), bias
    coarse = normalisation_bias(ni_energy_grid(50), refs, dense="normalised")
    assert abs(coarse["NiO"]) > NOTE_BIAS_EV  # sampling alone: +0.35 eV
    with pytest.raises(ValueError, match="dense"):
        normalisation_bias(own, refs, dense="provider")


def test_the_note_says_the_numbers_where_they_matter():
    assert normalisation_bias_note({"NiO": 0.110, "LiNiO2": 0.004}) == ""  # synth's default grid
    assert normalisation_bias_note({"NiO": 0.14}) == ""
    one = normalisation_bias_note({"NiO": -0.16})
    assert one.startswith(NOTE_START) and "NiO -0.16 eV" in one and "compressed" not in one
    # synth's 30-energy grid: the references under both thresholds, their 50:50 mix not (the particles 0.12-0.25 eV low)
    mixed = normalisation_bias_note({"NiO": -0.056, "LiNiO2": -0.161 + 0.02}, {"50 % NiO + 50 % LiNiO2": -0.188})
    assert mixed.startswith(NOTE_START) and "-0.19" in mixed
    spread = normalisation_bias_note({"NiO": 0.10, "LiNiO2": -0.06, "bad": float("nan")})
    assert "up to 0.16 eV" in spread and "bad" not in spread
    assert "post-edge" in spread and "like chemistry" in spread
    assert normalisation_bias_note({"x": float("nan")}) == ""


@pytest.fixture(scope="module", params=[143, 60, 50])
def scene_run(request):
    """The default scene, seed 1, reduced (192 px, 3 particles) on synth's grid of ``n`` energies."""
    s = make_synthetic_stack(
        "default", seed=1, n_energies=request.param, shape=(192, 192), n_particles=3, radius_range=(10.0, 22.0)
    )
    stack = Stack(s.optical_density(), s.energies_ev)
    return request.param, stack, run_pipeline(stack)


def test_the_run_notes_the_bias_on_coarse_grids_only(scene_run):
    """Control: synth's default 143 energies, no note (NiO +0.11, LiNiO2 +0.004 eV); 60 and 50 energies, the
    note with the numbers (-0.18 / +0.03, +0.38 / -0.07 eV; no word was said before)."""
    n, _, result = scene_run
    assert len(result.particles) == 3
    bias = result.normalisation_bias
    assert set(bias) == {"NiO", "LiNiO2"}
    from xanestrack.chemistry.runnotes import _particles_background

    background = _particles_background(result.particles, result.energies_ev)  # the scene's own: 0.25-0.26
    assert 0.2 < background < 0.3
    assert bias == pytest.approx(normalisation_bias(result.energies_ev, ni_references(), background=background))
    noted = [x for x in result.notes if x.startswith(NOTE_START)]
    if n == 143:
        assert not noted, noted
    else:
        assert len(noted) == 1
        assert f"NiO {bias['NiO']:+.2f} eV" in noted[0] and f"LiNiO2 {bias['LiNiO2']:+.2f} eV" in noted[0]


def test_the_caption_quotes_the_runs_numbers(scene_run, tmp_path):
    """The uncertainty caption quotes this run's numbers (from run.json: the same page rebuilt from the folder);
    a folder written before they were measured gets words only. The resolution caption says the systematic
    errors are not part of its test."""
    from xanestrack.report import write_report
    from xanestrack.results import read_results, write_results

    n, stack, result = scene_run
    write_results(result, tmp_path, run_info={}, stack=stack)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["normalisation_bias_ev"] == pytest.approx(result.normalisation_bias)
    assert read_results(tmp_path).normalisation_bias == pytest.approx(result.normalisation_bias)
    page = write_report(tmp_path).read_text()
    want = {
        143: ("+0.11 eV for NiO", "+0.004 eV for LiNiO<sub>2</sub>"),
        60: ("-0.18 eV for NiO", "+0.03 eV for LiNiO<sub>2</sub>"),
        50: ("+0.38 eV for NiO", "-0.07 eV for LiNiO<sub>2</sub>"),
    }[n]
    for w in want:
        assert w in page, w
    assert "compressed or stretched by" in page and "a mix's bias need not lie between theirs" in page
    assert "+0.003 eV" not in page  # the fixed number of before
    assert "systematic errors" in page and "not part of it" in page
    # an older folder: run.json without the numbers
    del run["normalisation_bias_ev"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    old = write_report(tmp_path).read_text()
    assert "not measured for this run" in old and "eV for NiO" not in old


def test_run_prints_the_note_on_synths_50_energy_grid(tmp_path):
    """``synth --n-energies 50`` then ``run``: the note is printed (the probe found the E50s far off, unsaid)."""
    from typer.testing import CliRunner

    from xanestrack.cli import app

    runner = CliRunner()
    args = ["synth", str(tmp_path / "s"), "--seed", "1", "--n-particles", "3", "--n-energies", "50"]
    r = runner.invoke(app, args + ["--size", "192", "--max-radius", "20"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(tmp_path / "s" / "stack.h5"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "note the normalisation's bias on this scan's energies moves E50: NiO +0.38 eV, LiNiO2 -0.07 eV" in said
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["normalisation_bias_ev"]["NiO"] == pytest.approx(0.380, abs=0.002)


@pytest.mark.parametrize("scene_run", [50], indirect=True)
def test_redo_xanes_measures_the_bias_on_its_new_axis(scene_run):
    """redo_xanes kept the run's numbers (and note) after it moved the energy axis."""
    from xanestrack.pipeline import redo_xanes

    n, _, r = scene_run
    assert n == 50
    again = redo_xanes(r, energies_ev=r.energies_ev + 7.0)  # a new axis: its own numbers
    assert again.normalisation_bias is not None
    assert sum(note.startswith("the normalisation's bias") for note in again.notes) == 1
    same = redo_xanes(r, energies_ev=r.energies_ev)
    assert same.normalisation_bias == pytest.approx(r.normalisation_bias)


def test_a_users_reference_is_measured_over_the_scans_range_and_the_scenes_background():
    """larch's Ni foil, measured to 9570 eV, read -0.317 eV "biased" on a dense 0.5-eV grid to 9000 eV: its post-edge
    line over its own range is another than over the scan's. And a matrix under the particles 6.7 times their step
    changes the bias the note quotes (it assumed 0.25)."""
    from conftest import shared_data
    from xanestrack.spectra import read_spectrum

    foil = read_spectrum(shared_data("spectra", "larch_nio", "Ni_foil_reference_merged_mu.txt"))
    dense = np.arange(8200.0, 9000.01, 0.5)
    b = normalisation_bias(dense, {"foil": foil}, dense="normalised")["foil"]
    assert abs(b) < 0.1, b
    refs = ni_references()
    e = ni_energy_grid(143)
    low = normalisation_bias(e, refs, background=0.25)
    high = normalisation_bias(e, refs, background=6.7)
    assert abs(high["LiNiO2"] - low["LiNiO2"]) > 0.05, (low, high)
