"""The particles' mean reference fractions in the outputs of one run (probe "report", finding 4).

Every run fits the references, and the run notes and README spoke of "the oxidised fractions" and of
``oxidised_fraction`` in "the particles' table", but no CSV of a run and no line of its report held a particle's
fraction: only ``particle_summary`` and ``series.csv`` did. ``figures/uncertainty.csv`` now holds, beside the
mean E50 and over the same trusted core pixels, each particle's ``fraction_<reference>`` with the median of its
pixels' standard errors, ``oxidised_fraction`` and ``fraction_flags`` (``no_fit``, ``at_bound``, ``misfit``); the
report's line for each particle gives them.

Reduced synthetic scenes (4 particles, 200 x 200 px, 48 energies), run through ``run_pipeline``.
"""

import dataclasses
import html
import re

import numpy as np
import pandas as pd
import pytest

from conftest import pair_by_position
from xanestrack import report
from xanestrack.pipeline import run_pipeline
from xanestrack.result import particle_summary
from xanestrack.results import write_results
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack
from xanestrack.xanes import MISFIT_NOTE

#: the reduced scene of these tests
SCENE = dict(n_particles=4, shape=(200, 200), radius_range=(10.0, 22.0), n_energies=48)
#: what the fraction columns of uncertainty.csv are, for the shipped references
FRACTION_COLUMNS = [
    "fraction_NiO",
    "fraction_LiNiO2",
    "fraction_NiO_sigma_median",
    "fraction_LiNiO2_sigma_median",
    "oxidised_fraction",
    "fraction_flags",
]


def _written(seed, patterns, folder):
    s = make_synthetic_stack("default", seed=seed, patterns=patterns, **SCENE)
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    write_results(r, folder, run_info={"pixel_size_um": None})
    report.write_report(folder, result=r)
    return s, r


def _report_text(folder) -> str:
    page = (folder / "report.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", page)))


@pytest.fixture(scope="module")
def two_phases(tmp_path_factory):
    """Two NiO and two LiNiO2 particles (seed 4), written with their report."""
    folder = tmp_path_factory.mktemp("phases")
    s, r = _written(4, ["phase_NiO", "phase_LiNiO2"], folder)
    return s, r, folder


def test_uncertainty_csv_holds_each_particles_fractions_as_its_truth(two_phases):
    s, r, folder = two_phases
    csv = pd.read_csv(folder / "figures" / "uncertainty.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns[-len(FRACTION_COLUMNS) :]) == FRACTION_COLUMNS  # the references named
    assert sorted(csv["particle"]) == sorted(p.particle for p in r.particles)
    t0 = s.truth.positions[s.truth.positions["frame"] == 0].sort_values("particle")
    pairs = pair_by_position([p.positions[0] for p in r.particles], t0[["y", "x"]].to_numpy())
    assert len(pairs) == len(r.particles)
    for i, p in enumerate(r.particles):
        row = csv.set_index("particle").loc[p.particle]
        truth = 1.0 if s.truth.patterns[int(t0["particle"].iloc[pairs[i]])] == "phase_LiNiO2" else 0.0
        assert abs(row["fraction_LiNiO2"] - truth) < 0.1 and abs(row["fraction_NiO"] - (1 - truth)) < 0.1
        assert 0 < row["fraction_NiO_sigma_median"] < 0.05
        # pure phases: every mean sits at the fit's bounds (measured 0.005-0.010 from it, sigma 0.013-0.021)
        assert row["fraction_flags"] == "at_bound"
    # the same means as particle_summary's oxidised_fraction (series.csv): the trusted core pixels of mean_e50_ev
    summ = particle_summary(r).set_index("particle")
    np.testing.assert_allclose(
        csv.set_index("particle")["oxidised_fraction"], summ["oxidised_fraction"].loc[csv["particle"]], atol=1e-4
    )
    np.testing.assert_allclose(csv["oxidised_fraction"], csv["fraction_LiNiO2"], atol=1e-4)


def test_the_report_gives_each_particles_fractions(two_phases):
    _, r, folder = two_phases
    text = _report_text(folder)
    csv = pd.read_csv(folder / "figures" / "uncertainty.csv").set_index("particle")
    num = r"([0-9.]+)"
    lines = re.findall(
        rf"reference fractions NiO {num} \u00b1 {num}, LiNiO2 {num} \u00b1 {num} "
        r"\(trusted core pixels; \u00b1 the pixels' median standard error\): at 0 or 1, the fit's bounds",
        text,
    )
    assert len(lines) == len(r.particles)
    # each particle's line gives its row of uncertainty.csv to the 3 decimals printed (the CSV's 4 decimals printed
    # again to 3 round twice: a sigma of 0.01747 is 0.0175 there, 0.017 in the report)
    rows = csv.loc[[p.particle for p in r.particles]]  # the report's order
    cols = ["fraction_NiO", "fraction_NiO_sigma_median", "fraction_LiNiO2", "fraction_LiNiO2_sigma_median"]
    printed = np.array([[float(x) for x in v] for v in lines])
    np.testing.assert_allclose(printed, rows[cols].to_numpy(float), atol=0.00051)


def test_the_report_rebuilt_from_its_folder_gives_the_same_table(two_phases):
    _, _, folder = two_phases
    csv = folder / "figures" / "uncertainty.csv"
    before = csv.read_bytes()
    lines = re.findall(r"reference fractions [^;]*;[^;]*", _report_text(folder))
    report.write_report(folder)  # read back from results.h5, as `xanestrack report FOLDER`
    assert csv.read_bytes() == before
    assert re.findall(r"reference fractions [^;]*;[^;]*", _report_text(folder)) == lines and lines


def test_a_particle_without_xanes_has_empty_fractions_not_zero(two_phases, tmp_path):
    """A particle whose XANES failed (a stress run: no pre-edge energies) has no fractions: empty, flagged no_fit."""
    _, r, _ = two_phases
    failed = r.particles[0]
    nan = {k: np.full_like(v, np.nan) for k, v in failed.edge_maps.items()}
    failed = dataclasses.replace(
        failed,
        fractions=None,
        reference_names=(),
        edge_maps=nan,
        maps={},
        notes=("XANES failed: pre-edge range holds 0 energies",),
    )
    r2 = dataclasses.replace(r, particles=[failed] + list(r.particles[1:]))
    table = report.uncertainty_figure(r2).tables["uncertainty"]
    assert list(table["particle"]) == [p.particle for p in r2.particles]  # a row, though nothing was measured
    row = table.set_index("particle").loc[failed.particle]
    assert row[FRACTION_COLUMNS[:-1]].isna().all() and row["fraction_flags"] == "no_fit"
    report._write_tables(tmp_path, {"uncertainty": table})
    first = (tmp_path / "uncertainty.csv").read_text().splitlines()[1].split(",")
    assert first[0] == str(failed.particle) and first[-6:] == ["", "", "", "", "", "no_fit"]
    info, _ = report._particle_text(
        failed, particle_summary(r2).set_index("particle").loc[failed.particle], r2.tracks, row
    )
    assert "reference fractions" not in info
    # control: the others keep theirs
    assert (
        table["fraction_NiO"].iloc[1:].notna().all()
        and not table["fraction_flags"].iloc[1:].str.contains("no_fit").any()
    )


def test_the_columns_name_the_references_fitted_and_a_misfit_is_flagged(two_phases):
    """A user's references (``--reference A=... --reference B=...``) name the columns; a particle whose note says
    the references do not describe its spectra is flagged ``misfit``."""
    _, r, _ = two_phases
    parts = [dataclasses.replace(p, reference_names=("Ni(OH)2", "NiOOH")) for p in r.particles]
    parts[1] = dataclasses.replace(parts[1], notes=(f"the references (Ni(OH)2, NiOOH) {MISFIT_NOTE}: ...",))
    table = report.uncertainty_figure(dataclasses.replace(r, particles=parts)).tables["uncertainty"]
    assert [c for c in table.columns if c.startswith("fraction_")] == [
        "fraction_Ni(OH)2",
        "fraction_NiOOH",
        "fraction_Ni(OH)2_sigma_median",
        "fraction_NiOOH_sigma_median",
        "fraction_flags",
    ]
    assert table["fraction_flags"].tolist()[1] == "at_bound|misfit"
    assert "misfit" not in "".join(table["fraction_flags"].tolist()[:1] + table["fraction_flags"].tolist()[2:])


def test_mixed_particles_are_not_at_the_bounds(tmp_path):
    """Control: the default scene (seed 1), every particle a mixture (LiNiO2 0.17-0.54 measured): fractions given,
    no flag."""
    _, r = _written(1, None, tmp_path)
    csv = pd.read_csv(tmp_path / "figures" / "uncertainty.csv", keep_default_na=False)
    assert len(csv) == len(r.particles) and (csv["fraction_flags"] == "").all()
    assert ((csv["fraction_LiNiO2"] > 0.1) & (csv["fraction_LiNiO2"] < 0.9)).all()
    assert "at 0 or 1" not in _report_text(tmp_path) and "reference fractions NiO 0." in _report_text(tmp_path)
