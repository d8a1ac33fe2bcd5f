"""The Python API with the inputs a notebook user gives by mistake: a clear error naming the argument, or a
note, never a confident wrong number (each case below was one)."""

import numpy as np
import pytest

from xanestrack import xanes
from xanestrack.chemistry.calibration import calibrate_from_reference, calibrate_from_region
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.stack import Stack

E = np.linspace(8300.0, 8400.0, 20)


def test_stack_keeps_validated_energies_and_refuses_non_real_od():
    s = Stack(np.zeros((20, 16, 16), np.float32), E[:, None])  # (n, 1) failed later inside pandas
    assert s.energies_ev.shape == (20,) and s.energies_ev.dtype == np.float64
    for dtype in (complex, bool, object):
        with pytest.raises(ValueError, match="real numbers"):
            Stack(np.zeros((20, 16, 16), dtype), E)


def test_xanes_refuses_nan_energies():
    e = E.copy()
    e[3] = np.nan  # find_e0 returned NaN, normalize spoke of a "nan-nan eV" range
    with pytest.raises(ValueError, match="NaN/inf"):
        xanes.find_e0(e, np.linspace(0, 1, 20))


def test_lcf_outside_the_references_or_with_nan_is_refused():
    refs = ni_references()
    e = np.linspace(8300.0, 8420.0, 60)
    norm = 0.3 * refs["NiO"](e) + 0.7 * refs["LiNiO2"](e)
    fit = xanes.linear_combination_fit(e, norm, refs)
    assert np.allclose(fit.fractions.ravel(), [0.3, 0.7], atol=0.02)
    with pytest.raises(ValueError, match="look like keV"):  # keV: the references held flat, [0, 1] with flags 0
        xanes.linear_combination_fit(e / 1000, norm, refs)
    bad = dict(refs, NiO=ReferenceSpectrum("NiO", refs["NiO"].energies_ev, np.where(refs["NiO"].mu > 0.5, np.nan, 0)))
    with pytest.raises(ValueError, match="reference NiO: NaN"):  # it was silently given fraction 0
        xanes.linear_combination_fit(e, norm, bad)


def test_calibration_refuses_kev_and_nan_energies():
    foil = ni_references()["NiO"]
    with pytest.raises(ValueError, match="look like keV"):  # a shift of +8325 eV
        calibrate_from_reference(foil.energies_ev / 1000, foil.mu, known_e0_ev=8333.0)
    with pytest.raises(ValueError, match="known_e0_ev 8.333 look like keV"):
        calibrate_from_reference(foil.energies_ev, foil.mu, known_e0_ev=8.333)
    with pytest.raises(ValueError, match="look like keV"):
        calibrate_from_region(8340.1, known_e0_ev=8.3401)
    e = foil.energies_ev.copy()
    e[5] = np.nan  # a NaN shift
    with pytest.raises(ValueError, match="NaN/inf"):
        calibrate_from_reference(e, foil.mu, known_e0_ev=8333.0)


def test_run_pipeline_prepares_references_as_the_cli_does():
    """Spectra as measured (read_spectrum returns mu as the file holds it) were fitted as given from Python: pure
    NiO particles 0.39 NiO against 0.90 with the normalised references."""
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=24, shape=(160, 160), n_particles=2, radius_range=(10.0, 14.0)
    )
    st = Stack(np.asarray(s.optical_density(), np.float32), np.asarray(s.energies_ev, float))
    with pytest.raises(TypeError, match="references must map names"):  # before anything is computed
        run_pipeline(st, references=list(ni_references().values()))
    refs = ni_references()
    raw = {
        f"{k} measured": ReferenceSpectrum(k, r.energies_ev, 0.4 + 1e-4 * (r.energies_ev - 8200) + 1.7 * r.mu)
        for k, r in refs.items()
    }
    opts = PipelineOptions(threads=1)
    a = run_pipeline(st, references=refs, options=opts, detector=None, segmenter=None)
    b = run_pipeline(st, references=raw, options=opts, detector=None, segmenter=None)
    assert sum("normalised as the particles' spectra are" in n for n in b.notes) == 2
    assert len(a.particles) >= 1 and all(p.fractions is not None for p in a.particles)
    assert [tuple(p.reference_names) for p in b.particles] == [("NiO measured", "LiNiO2 measured")] * len(b.particles)
    for pa, pb in zip(a.particles, b.particles, strict=True):
        fa = np.nanmean(pa.fractions.reshape(2, -1), axis=1)
        fb = np.nanmean(pb.fractions.reshape(2, -1), axis=1)
        assert np.allclose(fa, fb, atol=0.1), (fa, fb)  # the two normalisations differ by up to 0.05


def test_motion_refuses_frame_times_that_do_not_run_forward_and_read_stack_an_array():
    import pandas as pd

    from xanestrack.io import read_stack
    from xanestrack.motion import compute_motion

    rows = [(p, k, 50.0 + 10 * p + 0.1 * k, 40.0 + k * 0.2) for p in range(3) for k in range(6)]
    tracks = pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])
    assert len(compute_motion(tracks, frame_times_s=np.arange(6.0)))
    for times, fragment in (
        (np.arange(6.0)[::-1], "increase"),
        (np.ones(6), "increase"),
        (np.arange(4.0), "per frame"),
    ):
        with pytest.raises(ValueError, match=fragment):  # flipped velocities, inf, an IndexError
            compute_motion(tracks, frame_times_s=times)
    with pytest.raises(ValueError, match="scale_axis"):
        compute_motion(tracks, scale_axis=np.arange(3.0))
    with pytest.raises(TypeError, match="read_stack reads files"):
        read_stack(np.zeros((4, 16, 16)))


def test_a_spectrum_without_an_edge_is_flagged_not_normalised():
    """A flat spectrum passed with a step of 1e-15, flags 0 and a normalised spectrum of 0.25."""
    e = np.linspace(8200.0, 8700.0, 60)
    n = xanes.normalize(e, np.ones((60, 3)))
    assert np.all(n.flags & xanes.FLAG_LOW_STEP) and np.all(np.isnan(n.norm))
    edge = 1 / (1 + np.exp(-(e - 8340.0) / 2.0))
    assert not (xanes.normalize(e, edge).flags & xanes.FLAG_LOW_STEP)  # a noise-free edge is one


def test_a_reference_with_an_energy_twice_at_two_values_is_refused(tmp_path):
    # two spectra in one file (an energy twice, other values): the first of each pair was kept, sorted
    from xanestrack.spectra import read_spectrum

    e = np.linspace(8300, 8400, 21)
    mu = 1 / (1 + np.exp(-(e - 8345) / 3))
    p = tmp_path / "two.txt"
    np.savetxt(p, np.r_[np.c_[e, mu], np.c_[e[::4], mu[::4] + 0.2]])
    with pytest.raises(ValueError, match="appear twice with different values"):
        read_spectrum(p)
    np.savetxt(p, np.r_[np.c_[e, mu], np.c_[e[::4], mu[::4]]])  # repeated rows: one kept
    assert np.array_equal(read_spectrum(p).energies_ev, e)


def test_a_stack_of_od_with_its_sign_flipped_is_said_from_python():
    """The command line refuses ln(I/I0) given as OD; a Stack made of it from Python ran without a word."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=12, shape=(128, 128), n_particles=2, radius_range=(8, 12))
    od = np.asarray(s.optical_density(), np.float32)
    e = np.asarray(s.energies_ev, float)
    assert not any("flipped" in n for n in Stack(od, e).metadata.get("notes", []))
    assert any("sign were flipped" in n for n in Stack(-od, e).metadata.get("notes", []))
