"""Users' reference spectra and the options that qualify others: read as written, or refused in one line."""

import gzip
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_data
from xanestrack.cli import app
from xanestrack.spectra import read_spectrum

runner = CliRunner()

E = np.round(np.linspace(8280.0, 8480.0, 81), 2)
MU = np.round(0.2 + 1.0 / (1.0 + np.exp(-(E - 8340.0) / 2.0)), 5)


def _refused(args, tmp_path):
    """The one error line of a `run` refused before its input is read."""
    (tmp_path / "scan.h5").write_bytes(b"")
    r = runner.invoke(app, ["run", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


@pytest.mark.parametrize(
    "args, names",
    [
        (["--reference-e0", "6539"], ("--reference-e0", "--energy-reference")),
        (["--reference-e0", "8333"], ("--reference-e0", "--energy-reference")),  # the default's value, but given
        (["--cluster-method", "nmf"], ("--cluster-method", "--clusters")),
        (["--cluster-method", "kmeans"], ("--cluster-method", "--clusters")),
    ],
)
def test_an_option_without_the_one_it_qualifies_is_refused(tmp_path, args, names):
    """`--reference-e0 6539` on a Mn scan without --energy-reference, and `--cluster-method nmf` without
    --clusters, ran without a word: neither did anything."""
    line = _refused(args, tmp_path)
    assert all(n in line for n in names), line


def test_the_qualifying_options_pass_with_the_ones_they_qualify(tmp_path):
    # the empty input file is what is refused then
    line = _refused(["--clusters", "2", "--cluster-method", "nmf"], tmp_path)
    assert "--cluster-method" not in line and "scan.h5" in line, line
    line = _refused(["--energy-reference", str(tmp_path / "foil.txt"), "--reference-e0", "7709"], tmp_path)
    assert "--reference-e0" not in line, line


def _xdi(path, names, table):
    head = ["# XDI/1.0"] + [f"# Column.{k + 1}: {n}" for k, n in enumerate(names)] + ["#----"]
    path.write_text("\n".join(head + [" ".join(f"{v:.6f}" for v in row) for row in table]) + "\n")
    return path


@pytest.mark.parametrize("fluor", ["ifluor", "if"])
def test_a_fluorescence_xdi_gives_ifluor_over_i0(tmp_path, fluor):
    """An XDI file with energy, i0, ifluor: the i0 column was read as mu, then refused as 'no rising edge ...
    inverted?'."""
    i0 = 2.0e5 * (1 + 0.1 * np.sin(E / 7.0))
    p = _xdi(tmp_path / "fluor.xdi", ["energy eV", "i0", fluor], np.c_[E, i0, i0 * MU])
    r = read_spectrum(p)
    np.testing.assert_allclose(r.energies_ev, E)
    np.testing.assert_allclose(r.mu, MU, rtol=1e-5)


def test_an_xdi_mu_column_is_read_where_it_is_named(tmp_path):
    i0 = np.full_like(E, 1e5)
    p = _xdi(tmp_path / "mu.xdi", ["energy eV", "i0", "mutrans"], np.c_[E, i0, MU])
    np.testing.assert_allclose(read_spectrum(p).mu, MU, rtol=1e-5)


def test_xdi_columns_named_without_mu_are_refused_by_their_names(tmp_path):
    i0 = np.full_like(E, 1e5)
    p = _xdi(tmp_path / "refer.xdi", ["energy eV", "i0", "irefer"], np.c_[E, i0, i0 * MU])
    with pytest.raises(ValueError, match=r"named columns \(1: energy, 2: i0, 3: irefer\) hold neither mu"):
        read_spectrum(p)


def test_the_shipped_transmission_xdi_is_read_as_before():
    path = shared_data("spectra", "xasdatalibrary", "Ni", "NiOH2_rt_01.xdi")
    table = np.loadtxt(path)
    r = read_spectrum(path)
    np.testing.assert_allclose(r.mu, np.log(table[:, 1] / table[:, 2]))


def _decimal_comma(values, sep):
    return sep.join(f"{v}".replace(".", ",") for v in values)


@pytest.mark.parametrize("sep", ["\t", ";", "  "])
def test_decimal_commas_are_read_where_the_columns_are_separated_otherwise(tmp_path, sep):
    """ "8330,50<TAB>0,123" (a European spreadsheet's export) was read as 8330 and 50: '70 energies appear twice'."""
    p = tmp_path / "euro.txt"
    p.write_text(f"Energy{sep}mu\n" + "\n".join(_decimal_comma(row, sep) for row in zip(E, MU)) + "\n")
    r = read_spectrum(p)
    np.testing.assert_allclose(r.energies_ev, E)
    np.testing.assert_allclose(r.mu, MU)


def test_decimal_commas_that_are_also_the_separator_are_refused(tmp_path):
    p = tmp_path / "euro.csv"
    p.write_text("\n".join(_decimal_comma(row, ",") for row in zip(E + 0.25, MU)) + "\n")
    with pytest.raises(ValueError, match="decimal commas that are also the column separator"):
        read_spectrum(p)


def test_comma_and_semicolon_separated_files_with_decimal_points_are_read(tmp_path):
    for sep in (",", ";", ", "):
        p = tmp_path / "points.csv"
        p.write_text(f"energy{sep}mu\n" + "\n".join(f"{a}{sep}{b}" for a, b in zip(E, MU)) + "\n")
        r = read_spectrum(p)
        np.testing.assert_allclose(r.mu, MU, err_msg=repr(sep))


def test_an_athena_project_is_refused_with_what_to_export(tmp_path):
    """An Athena .prj gave 'no table of at least 2 numeric columns found'."""
    with pytest.raises(ValueError, match=r"an Athena project file, not a spectrum; export the group's mu\(E\)"):
        read_spectrum(shared_data("spectra", "larch_nio", "NiO.prj"))
    p = tmp_path / "project.dat"  # told by its content, whatever its name
    with gzip.open(p, "wt") as f:
        f.write("# Athena project file -- Demeter version 0.9.26\n$old_group = 'abc';\n")
    with pytest.raises(ValueError, match="Athena project"):
        read_spectrum(p)


def test_the_sigma_caption_quotes_the_bias_only_for_the_shipped_references():
    """'+0.11 eV for NiO to +0.003 eV for LiNiO2' was written under Mn scans and users' own references."""
    from xanestrack.report import _normalisation_bias

    def result(*names):
        return SimpleNamespace(particles=[SimpleNamespace(reference_names=n) for n in names])

    shipped = ("NiO", "LiNiO2")
    # the run's own numbers (run.json), whichever references they are of; none, words only
    measured = {"references": [], "normalisation_bias_ev": {"NiO": 0.38, "LiNiO2": -0.072}}
    assert "+0.38 eV for NiO, -0.07 eV for LiNiO<sub>2</sub>" in _normalisation_bias(measured, result((), shipped))
    theirs = {"references": ["MnO=a.txt"], "normalisation_bias_ev": {"MnO": -0.25}}
    assert "-0.25 eV for MnO" in _normalisation_bias(theirs, result(("MnO",)))
    for run, res in (
        ({"references": ["NiO=mine.txt", "LiNiO2=mine2.txt"]}, result(shipped)),  # the user's, named alike
        ({"references": ["MnO=a.txt", "MnO2=b.txt"]}, result(("MnO", "MnO2"))),
        ({"references": []}, result(())),  # no references fitted (a Mn scan without references)
    ):
        text = _normalisation_bias(run, res)
        assert "NiO" not in text and "eV for" not in text and "energies sampled" in text, (run, text)


def test_references_given_most_oxidised_first_are_said_since_oxidised_fraction_is_the_last():
    """oxidised_fraction is the last reference's fraction: LiNiO2 then NiO turned 0.70 into 0.30, without a word."""
    from xanestrack.chemistry.runnotes import _user_references
    from xanestrack.spectra import ni_references
    from xanestrack.synth import ni_energy_grid

    refs, e = ni_references(), ni_energy_grid()
    _, notes = _user_references({"LiNiO2": refs["LiNiO2"], "NiO": refs["NiO"]}, e)
    (note,) = [n for n in notes if n.startswith("oxidised_fraction")]
    assert "last reference given, NiO" in note and "LiNiO2's edge lies higher" in note, note
    _, notes = _user_references({"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]}, e)
    assert not any(n.startswith("oxidised_fraction") for n in notes)


def test_references_sampled_more_coarsely_than_the_scan_are_noted():
    """Mn references every 3 eV against a scan every 1 eV: the fractions right, yet the particles said not described
    by them and the axis to be calibrated; the sampling is now named."""
    from xanestrack.chemistry.runnotes import _user_references
    from xanestrack.spectra import ReferenceSpectrum, ni_references
    from xanestrack.synth import ni_energy_grid

    refs, e = ni_references(), ni_energy_grid()
    fine = {n: ReferenceSpectrum(n, r.energies_ev, r.mu) for n, r in refs.items()}
    _, notes = _user_references(fine, e)
    assert not any("sampled every" in n for n in notes), notes
    grid = np.arange(8200.0, 8700.0, 3.0)
    coarse = {n: ReferenceSpectrum(n, grid, r(grid)) for n, r in refs.items()}
    _, notes = _user_references(coarse, e)
    said = [n for n in notes if "sampled every" in n]
    assert len(said) == 2 and "every 3 eV across its edge" in said[0], notes


def test_a_reference_holding_only_its_post_edge_is_refused_naming_its_energies():
    """A file cut to 8501-9000 eV was refused as "is it inverted, or not a spectrum?"."""
    from xanestrack.spectra import ReferenceSpectrum, ni_references, prepare_reference
    from xanestrack.synth import ni_energy_grid

    r = ni_references()["NiO"]
    keep = r.energies_ev >= 8501.0
    with pytest.raises(ValueError) as e:
        prepare_reference(ReferenceSpectrum("NiO", r.energies_ev[keep], 2 * r.mu[keep] + 0.3), ni_energy_grid())
    msg = str(e.value)
    assert "8501" in msg and ("start above its edge" in msg or "eV below its edge" in msg), msg


def test_a_raw_text_file_is_read_by_the_names_its_header_gives_its_columns():
    """larch's NiO scan exported as 'columns: energy_eV i0 it mu=ln(i0/it)' (no XDI tags): i0 (75,000 counts)
    was read as mu, normalised without a word, and fitted."""
    path = shared_data("spectra", "larch_nio", "NiO_scan000_raw.txt")
    raw = np.loadtxt(path)
    r = read_spectrum(path)
    np.testing.assert_allclose(r.mu, np.log(raw[:, 1] / raw[:, 2]), atol=1e-5)  # its mu column, rounded


@pytest.mark.parametrize("header", ["energy i0 it", "# E(eV)\tI0\tIt", "Energy_eV,i0,itrans"])
def test_a_header_line_naming_i0_and_it_gives_ln_i0_over_it(tmp_path, header):
    i0 = 7.5e4 * (1 + 0.05 * np.cos(E / 11.0))
    sep = "," if "," in header else " "
    table = np.c_[E, i0, i0 * np.exp(-MU)]
    p = tmp_path / "raw.txt"
    p.write_text(header + "\n" + "\n".join(sep.join(f"{v:.6f}" for v in row) for row in table) + "\n")
    np.testing.assert_allclose(read_spectrum(p).mu, MU, rtol=1e-5)


def test_columns_of_counts_without_names_are_refused():
    """energy, i0, it with no header: column 2 was taken for mu."""
    i0 = 7.5e4 * np.ones_like(E)
    table = np.c_[E, i0, i0 * np.exp(-MU)]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "counts.txt"
        np.savetxt(p, table)
        with pytest.raises(ValueError, match="counts"):
            read_spectrum(p)


def test_a_header_naming_energy_mu_and_stddev_reads_mu(tmp_path):
    p = tmp_path / "mu.txt"
    p.write_text("# energy mu stddev\n" + "\n".join(f"{e} {m} 0.003" for e, m in zip(E, MU)) + "\n")
    np.testing.assert_allclose(read_spectrum(p).mu, MU)


@pytest.mark.parametrize(
    "header", ["# energy mu_norm i0", "# Energy(eV) norm_mu I0", "# energy absorption i0", "energy xmu_sm i0"]
)
def test_a_header_from_which_mu_cannot_be_had_leaves_the_columns_read_by_position(tmp_path, header):
    """energy, mu, i0 under names that do not say mu: read as energy, mu (they were refused for a day)."""
    p = tmp_path / "mu_i0.txt"
    i0 = 7.5e4 * np.ones_like(E)
    p.write_text(header + "\n" + "\n".join(f"{e} {m} {i}" for e, m, i in zip(E, MU, i0)) + "\n")
    np.testing.assert_allclose(read_spectrum(p).mu, MU)
