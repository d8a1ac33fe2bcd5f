"""The notes and refusals of a user's references (``--reference``, ``run_pipeline(references=...)``).

- The normalisation-bias note of references taken as already normalised is measured against their values as given,
  as the shipped references' is: the same pyxas NiO / LiNiO2 given with ``--reference`` read NiO -0.29 eV, spread
  0.34 eV, where shipped they read -0.18 / 0.21 (its NiO particle -0.147 eV from the truth).
- The note that the energy axis is not calibrated is given with a user's references too (it was left out).
- The reference-order note places each edge at its first crossing of 0.3 of the step: at 0.5 (E50) a Ni foil's
  shoulder put its edge above NiO's, and the note asked for the metal last.
- A single reference is refused (every fraction was 1.000 +- 0.000 by the sum to one).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xanestrack import synth
from xanestrack.chemistry.normbias import NOTE_START, normalisation_bias
from xanestrack.chemistry.runnotes import (
    ONE_REFERENCE,
    UNCALIBRATED_NOTE,
    _normalisation_bias,
    _oxidised_order_note,
    _reference_used_as_given,
)
from xanestrack.cli import app
from xanestrack.io import Stack
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.spectra import ReferenceSpectrum, ni_references, prepare_reference, read_spectrum

SPECTRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spectra"
ORDER = "oxidised_fraction (the particles' table"


def _as_measured(ref: ReferenceSpectrum) -> ReferenceSpectrum:
    """A normalised reference as a measured one: on a sloping pre-edge, with an edge step of 1.7."""
    e = ref.energies_ev
    return ReferenceSpectrum(ref.name, e, 0.4 - 2e-4 * (e - e[0]) + 1.7 * ref.mu)


# ----------------------------------------------------------------------------- F1: the normalisation's bias


def test_references_used_as_given_are_measured_as_the_shipped():
    """The shipped spectra given as the user's: the same bias (measured -0.176 / +0.031 eV on synth's 60-energy grid;
    it was -0.292 / +0.044, against a normalisation they were never given)."""
    e = synth.ni_energy_grid(60)
    refs = ni_references()
    shipped, _ = _normalisation_bias([], refs, e, True, PipelineOptions())
    users, _ = _normalisation_bias([], refs, e, False, PipelineOptions())
    assert users == pytest.approx(shipped, abs=1e-9)
    assert users["NiO"] == pytest.approx(-0.18, abs=0.02) and users["LiNiO2"] == pytest.approx(0.03, abs=0.02)
    assert all(_reference_used_as_given(r, e) for r in refs.values())


def test_references_normalised_here_are_measured_as_before():
    """The control: references xanestrack normalised (as measured) are measured against the same normalisation on
    their own energies, as they were."""
    e = synth.ni_energy_grid(60)
    prepared = {}
    for k, r in ni_references().items():
        prepared[k], note = prepare_reference(_as_measured(r), e)
        assert note is not None and prepared[k] is not r  # normalised here
        assert not _reference_used_as_given(prepared[k], e)
    got, _ = _normalisation_bias([], prepared, e, False, PipelineOptions())
    want = normalisation_bias(e, prepared, dense="normalised", edge_window=PipelineOptions().edge_window)
    assert got == pytest.approx(want, abs=1e-9)


def _stack60():
    s = synth.make_synthetic_stack(
        "default", seed=3, n_particles=2, shape=(150, 150), n_energies=60, radius_range=(12.0, 16.0)
    )
    return Stack(s.optical_density(), s.energies_ev)


@pytest.fixture(scope="module")
def runs():
    stack = _stack60()
    return run_pipeline(stack), run_pipeline(stack, references=ni_references())


def test_the_same_spectra_given_get_the_same_notes(runs):
    """Through the pipeline: the bias note is the shipped run's word for word, and the axis note is there too
    (it was left out with the user's references: the shipped spectra given so, 0.19 per 0.5 eV all the same)."""
    shipped, users = runs
    (a,) = [n for n in shipped.notes if n.startswith(NOTE_START)]
    (b,) = [n for n in users.notes if n.startswith(NOTE_START)]
    assert a == b and "NiO -0.17 eV" in a
    assert shipped.normalisation_bias == users.normalisation_bias
    (axis,) = [n for n in users.notes if n.startswith(UNCALIBRATED_NOTE)]
    assert "references given (NiO, LiNiO2" in axis and "the scan's own axis" in axis and "--known-edge" in axis
    (control,) = [n for n in shipped.notes if n.startswith(UNCALIBRATED_NOTE)]
    assert "shipped references (NiO, LiNiO2" in control and "own axis" not in control


def test_no_axis_note_with_user_references_on_a_calibrated_axis():
    """The control: a calibrated axis is not noted, whoever's the references."""
    s = _stack60()
    stack = Stack(s.od, s.energies_ev, metadata={"energy_calibration": {"shift_ev": 0.0}})
    result = run_pipeline(stack, references=ni_references())
    assert any(p.fractions is not None for p in result.particles)
    assert not any(n.startswith(UNCALIBRATED_NOTE) for n in result.notes)


# ----------------------------------------------------------------------------- F2: the references' order


def _metal_like(e):
    """A normalised metal-like edge: a shoulder to 0.35 of the step at 8333 eV, the rest rising slowly about 8346 eV
    (E50 8343.6 eV, above NiO's 8340.05 and LiNiO2's 8341.8; 0.3 of the step at 8334.2 eV, below theirs)."""
    return 0.35 / (1 + np.exp(-(e - 8333.0) / 0.7)) + 0.65 / (1 + np.exp(-(e - 8346.0) / 2.0))


def test_a_metal_given_first_is_not_told_to_go_last():
    e = synth.ni_energy_grid(60)
    refs = ni_references()
    dense = np.arange(8200.0, 9000.0, 0.25)
    metal = ReferenceSpectrum("Ni", dense, _metal_like(dense))
    assert np.interp(0.5, metal.mu, dense) > 8343.0  # its E50 lies above both oxides'
    assert _oxidised_order_note({"Ni": metal, "NiO": refs["NiO"]}, e) == ""
    assert _oxidised_order_note({"Ni": metal, "NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]}, e) == ""
    assert _oxidised_order_note({"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]}, e) == ""  # control: in order
    # given out of order, it is still said: the metal last, or NiO after LiNiO2
    note = _oxidised_order_note({"NiO": refs["NiO"], "Ni": metal}, e)
    assert note.startswith(ORDER) and "the last reference given, Ni " in note and "NiO's edge lies higher" in note
    note = _oxidised_order_note({"LiNiO2": refs["LiNiO2"], "NiO": refs["NiO"]}, e)
    assert note.startswith(ORDER) and "LiNiO2's edge lies higher" in note


def _mn(name):
    """xasdatalibrary's Mn oxide (scan 1), normalised by hand: its file spans 6520-6630 eV only (a pre-edge line to
    6532 eV, the mean from 6590 eV)."""
    r = read_spectrum(SPECTRA / "xasdatalibrary" / "Mn" / f"{name}_rt_01.xdi", name=name)
    e, mu = r.energies_ev, r.mu
    mu = mu - np.polyval(np.polyfit(e[e < 6532], mu[e < 6532], 1), e)
    return ReferenceSpectrum(name, e, mu / np.mean(mu[e > 6590]))


@pytest.mark.skipif(not SPECTRA.is_dir(), reason="the real reference spectra (../shared/data/spectra) are not here")
def test_real_references_in_order_of_oxidation_get_no_note():
    e = np.arange(8200.0, 8800.0, 1.0)
    pyxas = {n: read_spectrum(SPECTRA / "pyxas" / f"ref_{n}.txt", name=n) for n in ("NiO", "LiNiO2")}
    metals = [SPECTRA / "larch_nio" / "Ni_foil_reference_merged_mu.txt"]
    metals += [Path(p) for p in sorted(glob.glob(str(SPECTRA / "xasdatalibrary" / "Ni" / "Ni_metal_rt_*.xdi")))]
    for path in metals:
        metal, _ = prepare_reference(read_spectrum(path, name="Ni"), e)
        assert _oxidised_order_note({"Ni": metal, "NiO": pyxas["NiO"], "LiNiO2": pyxas["LiNiO2"]}, e) == "", path
        assert _oxidised_order_note({"Ni": metal, "NiO": pyxas["NiO"]}, e) == "", path
        assert _oxidised_order_note({"NiO": pyxas["NiO"], "Ni": metal}, e).startswith(ORDER), path
    mn = {n: _mn(n) for n in ("MnO", "Mn3O4", "Mn2O3", "MnO2")}
    names = list(mn)
    e_mn = np.arange(6520.0, 6630.0, 1.0)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            assert _oxidised_order_note({a: mn[a], b: mn[b]}, e_mn) == "", (a, b)
            assert _oxidised_order_note({b: mn[b], a: mn[a]}, e_mn).startswith(ORDER), (b, a)
    assert _oxidised_order_note(mn, e_mn) == ""


# ----------------------------------------------------------------------------- F4: one reference


def test_one_reference_is_refused_from_python():
    s = _stack60()
    with pytest.raises(ValueError, match="the fractions need two or more references") as info:
        run_pipeline(s, references={"LiNiO2": ni_references()["LiNiO2"]})
    assert "references: one given (LiNiO2)" in str(info.value) and "edge-energy maps" in str(info.value)


def test_one_reference_is_refused_before_the_stack_is_read(tmp_path):
    """One line, before reading: the scan here is not even a scan (read, it would be refused otherwise)."""
    scan = tmp_path / "scan.h5"
    scan.write_bytes(b"not an HDF5 file")
    ref = tmp_path / "LiNiO2.txt"
    r = ni_references()["LiNiO2"]
    np.savetxt(ref, np.column_stack([r.energies_ev, r.mu]))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["--quiet", "run", str(scan), "--reference", f"LiNiO2={ref}", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --reference LiNiO2=") and "Traceback" not in res.output
    assert ONE_REFERENCE.split("{given}")[1][:40] in lines[0] and "edge-energy maps" in lines[0]
    assert not out.exists()
