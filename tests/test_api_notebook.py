"""The Python API as a notebook uses it: keV energies, masks and lists from elsewhere, a detector made once and
run with other options, masked arrays and transmission given as a Stack, results written from Python, the
benchmark's figures beside the caller's matplotlib. Each case below gave a wrong number, a deep traceback or a
changed global state."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from xanestrack import xanes
from xanestrack.chemistry import calibration as cal
from xanestrack.detect import DetectOptions, detect_stack, detector_with_options
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.spectra import ReferenceSpectrum, ni_references
from xanestrack.stack import Stack

E = np.linspace(8200.0, 8680.0, 60)


@pytest.fixture(scope="module")
def scene():
    """A small synthetic scan (2 particles, 24 energies, 160 x 160) and its Stack."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=24, shape=(160, 160), n_particles=2, radius_range=(10.0, 14.0)
    )
    return s, Stack(np.asarray(s.optical_density(), np.float32), np.asarray(s.energies_ev, float))


@pytest.fixture(scope="module")
def result(scene):
    return run_pipeline(scene[1], options=PipelineOptions(threads=1))


def _spectrum():
    refs = ni_references()
    return 0.5 * refs["NiO"](E) + 0.5 * refs["LiNiO2"](E)


# keV energies ---------------------------------------------------------------------------------------------------


def test_xanes_refuses_kev_energies_naming_kev():
    """find_e0 / edge_energy returned 8.34 (keV) as eV; normalize refused with a pre-edge range of -141.7--21.7 eV."""
    mu = _spectrum()
    norm = xanes.normalize(E, mu).norm
    for f in (
        lambda: xanes.find_e0(E / 1000, mu),
        lambda: xanes.edge_energy(E / 1000, norm),
        lambda: xanes.normalize(E / 1000, mu),
    ):
        with pytest.raises(ValueError, match="energies_ev 8.2-8.68 look like keV; give eV"):
            f()
    # an axis relative to the edge (partly negative) is not keV
    assert abs(xanes.find_e0(E - 8333.0, mu) - (xanes.find_e0(E, mu) - 8333.0)) < 1e-9


def test_calibration_shift_refuses_kev_axis():
    """A +1 eV calibration was added to keV energies as +1 keV."""
    c = cal.calibrate_from_region(8340.0, known_e0_ev=8341.0)
    np.testing.assert_allclose(c.apply(E), E + 1.0)
    np.testing.assert_allclose(cal.apply_energy_shift(E - 8333.0, 1.0), E - 8332.0)
    with pytest.raises(ValueError, match="energies_ev 8.68 look like keV"):
        c.apply(E / 1000)
    with pytest.raises(ValueError, match="look like keV"):
        cal.apply_energy_shift(list(E / 1000), 1.0)


# analyse_particle's inputs --------------------------------------------------------------------------------------


def _particle():
    yy, xx = np.mgrid[:31, :31]
    mask = np.hypot(yy - 15, xx - 15) <= 9
    rng = np.random.default_rng(3)
    aligned = (mask[None] * (0.2 + 0.6 * _spectrum())[:, None, None]).astype(np.float32)
    aligned += rng.normal(0, 0.002, aligned.shape).astype(np.float32)
    return aligned, mask


def _analyse(aligned, mask, energies):
    return xanes.analyse_particle(
        aligned, mask, energies, references=ni_references(), uncertainty=False, subtract_background=False
    )


def test_analyse_particle_takes_image_masks_and_energy_lists():
    """uint8 0/255 and float masks failed with an IndexError deep inside, an int 0/1 mask gave every map NaN (a
    note about broadcasting), energies as a list a TypeError."""
    aligned, mask = _particle()
    ref = _analyse(aligned, mask, E)
    assert np.isfinite(ref["edge_maps"]["e50"][mask]).all()
    for m, e in (
        (mask.astype(np.uint8) * 255, E),
        (mask.astype(int), E),
        (mask.astype(float), E),
        (mask, list(E)),
    ):
        got = _analyse(aligned, m, e)
        assert got["notes"] == ref["notes"]
        np.testing.assert_array_equal(got["edge_maps"]["e50"], ref["edge_maps"]["e50"])
        np.testing.assert_array_equal(got["fractions"], ref["fractions"])


def test_analyse_particle_refuses_soft_masks_and_kev():
    aligned, mask = _particle()
    soft = np.clip(mask + np.random.default_rng(0).uniform(0, 0.4, mask.shape), 0, 1)
    with pytest.raises(ValueError, match="soft mask"):
        _analyse(aligned, soft, E)
    with pytest.raises(ValueError, match="window's shape"):
        _analyse(aligned, mask[:-1], E)
    with pytest.raises(ValueError, match="one energy per frame"):
        _analyse(aligned, mask, E[:-1])
    with pytest.raises(ValueError, match="look like keV"):  # every map NaN with a misleading pre-edge note before
        _analyse(aligned, mask, E / 1000)


# a detector made once, run with other options -------------------------------------------------------------------


class _OwnOptionsDetector:
    """A detector that carries DetectOptions of its own (as LearnedDetector does) and records what it ran with."""

    def __init__(self, options):
        self.options = options
        self.ran_with = []

    def __call__(self, od, frames=None):
        self.ran_with.append(self.options)
        return detect_stack(od, options=self.options, frames=frames)


def test_run_pipeline_runs_a_detector_with_the_options_it_records(scene):
    """A learned detector made for min_radius 7 and run with min_radius 12 kept a 9.6 px particle, while
    result.options said 12."""
    made_for = DetectOptions(min_radius=5.0, max_radius=40.0)
    det = _OwnOptionsDetector(made_for)
    opts = PipelineOptions(threads=1, detect=replace(made_for, min_radius=12.0))
    r = run_pipeline(scene[1], options=opts, detector=det)
    assert det.ran_with == [opts.detect]  # (the copy's record, a list shared with the caller's)
    assert det.options is made_for  # the caller's detector is not changed
    kept = r.detections[r.detections["reason"] == ""]
    assert len(kept) and (kept["radius"] >= 12.0).all()
    assert r.options.detect.min_radius == 12.0


def test_detector_with_options_copies_a_learned_detector():
    pytest.importorskip("torch")
    from xanestrack.models.detector import LearnedDetector, detector_binning
    from xanestrack.models.nets import ResnetGenerator

    g = ResnetGenerator(1, 1, 4, 1)
    small = DetectOptions(min_radius=7.0, max_radius=60.0)
    det = LearnedDetector.from_modules(g, options=small)
    large = replace(small, min_radius=20.0, max_radius=300.0)
    new = detector_with_options(det, large)
    assert new is not det and new.model is det.model
    assert new.options == large and det.options == small
    assert new.binning == detector_binning(300.0, 2) > det.binning == detector_binning(60.0, 2)
    assert detector_with_options(det, small) is det
    fixed = LearnedDetector.from_modules(g, options=small, binning=5)  # an explicit binning is kept
    assert detector_with_options(fixed, large).binning == 5
    plain = lambda od, frames=None: None  # noqa: E731 (any other callable: as it is)
    assert detector_with_options(plain, large) is plain


# the Stack ------------------------------------------------------------------------------------------------------


def test_masked_array_stack_has_nan_under_its_mask(caplog):
    """np.asarray dropped the mask and the values under it were analysed (a particle's E50 0.06 eV off)."""
    rng = np.random.default_rng(1)
    data = rng.normal(0.1, 0.01, (10, 16, 16)).astype(np.float32)
    bad = np.zeros(data.shape, bool)
    bad[:, 3, 4:7] = True
    given = np.ma.MaskedArray(data.copy(), mask=bad.copy())
    with caplog.at_level(logging.WARNING, logger="xanestrack.stack"):
        s = Stack(given, E[:10])
    assert type(s.od) is np.ndarray and s.od.dtype == np.float32
    assert np.isnan(s.od[bad]).all() and np.array_equal(s.od[~bad], data[~bad])
    assert "30 masked pixels taken as NaN" in s.metadata["notes"][0] and "masked pixels" in caplog.text
    assert np.array_equal(given.data, data) and np.array_equal(given.mask, bad)  # the input is not changed
    counts = Stack(np.ma.MaskedArray((data * 100).astype(np.int16), mask=bad), E[:10])
    assert counts.od.dtype == np.float32 and np.isnan(counts.od[bad]).all()


def test_stack_notes_transmission_and_counts_given_as_od(scene):
    """I/I0 given as Stack.od gave 4 fake particles without a word; the CLI's `--values od` names it."""
    s, proper = scene
    assert "notes" not in proper.metadata  # optical density: nothing said, nothing copied
    od = np.asarray(s.optical_density(), np.float32)
    assert Stack(od, s.energies_ev).od is od
    t = Stack(np.exp(-od), s.energies_ev, metadata={"source": "mine", "notes": ["given"]})
    assert t.metadata["notes"][0] == "given" and "mine: values" in t.metadata["notes"][1]
    assert "look like transmission I/I0" in t.metadata["notes"][1] and "-ln(I/I0)" in t.metadata["notes"][1]
    c = Stack((4000 * np.exp(-od)).astype(np.uint16), s.energies_ev)
    assert "look like raw counts" in c.metadata["notes"][0]
    again = replace(t, pixel_size_um=0.02)  # made again (dataclasses.replace): said once
    assert again.metadata["notes"] == t.metadata["notes"]
    read = Stack(np.exp(-od), s.energies_ev, metadata={"values": "transmission"})  # a reader judged them
    assert "notes" not in read.metadata


# results written from Python ------------------------------------------------------------------------------------


def test_write_results_keeps_the_stacks_pixel_size_and_notes_and_makes_the_folder(scene, result, tmp_path, caplog):
    import h5py

    from xanestrack.results import read_results, write_results

    _, st = scene
    st = Stack(st.od, st.energies_ev, 0.025, {"source": "mine", "reader": "mine", "notes": ["2 zingers replaced"]})
    out = tmp_path / "not" / "yet"  # OSError from inside pandas before
    write_results(result, out, run_info={}, stack=st)
    with h5py.File(out / "results.h5") as f:
        assert f.attrs["pixel_size_um"] == 0.025
    run = json.loads((out / "run.json").read_text())
    assert run["pixel_size_um"] == 0.025 and run["input_notes"] == ["2 zingers replaced"]
    assert run["reader"] == "mine" and run["frame_shape"] == [160, 160] and len(run["energies_ev"]) == 24
    assert len(read_results(out).particles) == len(result.particles)
    # what run_info gives wins; without either the pixel size is unknown, and that is said
    write_results(result, tmp_path / "b", run_info={"pixel_size_um": 0.05}, stack=st)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["pixel_size_um"] == 0.05
    with caplog.at_level(logging.WARNING, logger="xanestrack.results"):
        write_results(result, tmp_path / "c", run_info={})
    assert "pixel size is unknown" in caplog.text


# options checked before anything is computed --------------------------------------------------------------------


def _refusing_detector(od, frames=None):
    raise AssertionError("detection ran before the options were checked")


def test_pipeline_options_position_and_window_offset_refused_up_front(scene):
    st = scene[1]
    with pytest.raises(ValueError, match=r"options.position must be one of \('edges', 'com'\), got 'COM'"):
        run_pipeline(st, options=PipelineOptions(position="COM"), detector=_refusing_detector)
    for v in (float("nan"), -1.0, "2"):  # NaN: OverflowError inside numpy's random generator
        with pytest.raises(ValueError, match="options.window_offset_px must be a number of pixels >= 0"):
            run_pipeline(st, options=PipelineOptions(window_offset_px=v), detector=_refusing_detector)


def test_reference_spectrum_from_lists():
    """Lists were kept, and the fit failed with AttributeError: 'list' object has no attribute 'size'."""
    r = ni_references()["NiO"]
    mine = ReferenceSpectrum("NiO", list(r.energies_ev), list(r.mu))
    assert isinstance(mine.energies_ev, np.ndarray) and mine.mu.dtype == np.float64
    norm = _spectrum()
    a = xanes.linear_combination_fit(E, norm, ni_references())
    b = xanes.linear_combination_fit(E, norm, dict(ni_references(), NiO=mine))
    np.testing.assert_array_equal(a.fractions, b.fractions)
    with pytest.raises(ValueError, match="must be 1-D of the same length"):
        ReferenceSpectrum("x", [1.0, 2.0], [1.0])


# the benchmark's figures ----------------------------------------------------------------------------------------


def test_write_benchmark_leaves_the_callers_matplotlib_backend(scene, tmp_path):
    """matplotlib.use("Agg") replaced a notebook's inline backend: later plt.show() showed nothing."""
    import matplotlib
    import matplotlib.pyplot as plt

    from xanestrack.bench import benchmark_stack, write_benchmark

    s, _ = scene
    table, r, pos = benchmark_stack(s, methods=["xanestrack"], preset="t", seed=1)
    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        fig = plt.figure()
        write_benchmark(table, {("t", 1): (s, r, pos)}, tmp_path)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [fig.number]
    finally:
        plt.close("all")
        plt.switch_backend(before)
    assert (tmp_path / "figures" / "differential_t_1.png").stat().st_size > 0
    assert (tmp_path / "figures" / "motion_t_1.png").stat().st_size > 0


def test_an_unknown_reference_particle_is_refused_before_the_particles_are_analysed(small_synth, monkeypatch):
    """`reference_particle=99` was refused by the motion, after every particle's registration and chemistry."""
    import pytest

    from xanestrack import pipeline
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.stack import Stack

    def not_now(*a, **k):
        raise AssertionError("a particle was analysed")

    monkeypatch.setattr(pipeline, "_locate_particle", not_now)
    st = Stack(small_synth.optical_density(), small_synth.energies_ev)
    with pytest.raises(ValueError, match="`reference_particle` 99 is not among the tracked particles"):
        run_pipeline(st, options=PipelineOptions(reference_particle=99))


def test_reference_particle_refused_where_no_particle_is_tracked():
    """Probe r52 "fuzz", F5: with no particle tracked, `reference_particle=0` ended the run without a word (the check
    ran only where tracks were found)."""
    import numpy as np
    import pytest

    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import ni_energy_grid

    rng = np.random.default_rng(0)
    e = ni_energy_grid(12)
    st = Stack(rng.normal(0.0, 0.01, (12, 96, 96)).astype(np.float32), e)
    assert not run_pipeline(st).particles  # the control: nothing there, no refusal without the option
    with pytest.raises(ValueError, match=r"`reference_particle` 0 is not among the tracked particles \[\]"):
        run_pipeline(st, options=PipelineOptions(reference_particle=0))
