"""The result model round-trips: read_results(write_results(r)) == r, field by field."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.result import PipelineResult, particle_summary
from xanestrack.results import read_results, write_results
from xanestrack.stack import Stack


@pytest.fixture(scope="module")
def result(small_synth):
    return run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev), options=PipelineOptions(detect_every=6)
    )


@pytest.fixture(scope="module")
def result_clusters(small_synth):
    """With phase mapping (NMF, in an energy window): maps, chemistry tables and arrays to round-trip."""
    return run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev),
        options=PipelineOptions(detect_every=6, clusters=2, cluster_method="nmf", cluster_window=(8320.0, 8400.0)),
    )


def _same(a, b, where):
    if isinstance(a, pd.DataFrame):
        assert isinstance(b, pd.DataFrame), where
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=True, obj=where)
        for k, v in a.attrs.items():
            if not isinstance(v, pd.DataFrame):
                assert json_norm(v) == json_norm(b.attrs.get(k)), f"{where}.attrs[{k}]"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def json_norm(v):
    import json

    return json.loads(json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@pytest.mark.parametrize("which", ["result", "result_clusters"])
def test_round_trip_field_by_field(which, request, tmp_path):
    result = request.getfixturevalue(which)
    assert len(result.particles) >= 3
    for p in result.particles:  # the chemistry maps are there to be compared
        assert {"e50_sigma", "whiteline_height", "quality_keep", "edge_jump_od"} <= set(p.maps)
        assert p.xanes_frames is not None and p.xanes_frames.dtype == bool
    if which == "result_clusters":
        assert result.chemistry is not None and "cluster_fractions" in result.chemistry
        assert all("cluster" in p.maps for p in result.particles)
    else:
        assert result.chemistry is None
    write_results(result, tmp_path, run_info={})
    back = read_results(tmp_path)
    assert isinstance(back, PipelineResult)
    for f in dataclasses.fields(PipelineResult):
        a, b = getattr(result, f.name), getattr(back, f.name)
        if f.name == "particles":
            assert len(a) == len(b)
            for pa, pb in zip(a, b):
                for pf in dataclasses.fields(pa):
                    _same(getattr(pa, pf.name), getattr(pb, pf.name), f"particle {pa.particle}.{pf.name}")
        elif f.name == "fused":
            _same(a, b, "fused")  # default fuse="ends": first and last frame
        elif f.name == "chemistry" and a is not None:
            assert a.keys() == b.keys()
            for k in a:
                if isinstance(a[k], dict):
                    assert json_norm(a[k]) == json_norm(b[k]), f"chemistry[{k}]"
                else:
                    _same(a[k], b[k], f"chemistry[{k}]")
        elif f.name == "timings":
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-12 for k in a)
        else:
            _same(a, b, f.name)
    # the similarity also rides on motion.attrs, as run_pipeline leaves it
    _same(result.motion.attrs["similarity"], back.motion.attrs["similarity"], "motion.attrs[similarity]")
    pd.testing.assert_frame_equal(particle_summary(result), particle_summary(back))
    assert (tmp_path / "clusters.csv").is_file() == (result.chemistry is not None)


def test_particle_summary_counts(result):
    s = particle_summary(result)
    assert list(s["particle"]) == [p.particle for p in result.particles]
    n = len(result.energies_ev)
    assert (s["frames"] == n).all()
    assert (s["frames_vouched"] <= s["frames_measured"]).all() and (s["frames_measured"] <= n).all()
    # mean edge energy near the synthetic Ni edge, and the largest non-rigid motion from the motion table
    assert s["mean_e50_ev"].between(8330, 8350).all()
    np.testing.assert_allclose(
        s["max_nonrigid_px"], result.peak_ratios.set_index("particle").loc[s["particle"], "max_nonrigid_displacement"]
    )


def test_folders_without_tables_still_read(result, tmp_path):
    """A folder written before results.h5 held the tables is read from its CSV files."""
    import h5py

    write_results(result, tmp_path, run_info={})
    with h5py.File(tmp_path / "results.h5", "a") as f:
        del f["tables"]
        for k in ("options", "notes", "timings_s", "frame_shape"):
            del f.attrs[k]
    back = read_results(tmp_path)
    assert len(back.particles) == len(result.particles)
    assert list(back.tracks["particle"]) == list(result.tracks["particle"])
    np.testing.assert_allclose(back.tracks["y"], result.tracks["y"], atol=1e-4)


def test_a_result_written_before_smoothing_reads_as_not_smoothed(result, tmp_path):
    """Options added later default to what was done before them, not to today's default."""
    import json

    import h5py

    from xanestrack.report import _positions_text

    assert result.options.smooth_tracks is True
    write_results(result, tmp_path, run_info={})
    assert read_results(tmp_path).options.smooth_tracks is True
    with h5py.File(tmp_path / "results.h5", "a") as f:
        opts = json.loads(f.attrs["options"])
        del opts["smooth_tracks"], opts["density_voucher"], opts["shape_apodisation"]
        f.attrs["options"] = json.dumps(opts)
    back = read_results(tmp_path)
    assert back.options.smooth_tracks is False
    assert result.options.density_voucher is True and back.options.density_voucher is False
    assert result.options.shape_apodisation is True and back.options.shape_apodisation is False
    assert "own shape" in _positions_text(result.options.to_dict())
    assert "own shape" not in _positions_text(back.options.to_dict())
    assert "smoothed" not in _positions_text(back.options.to_dict())
    assert "smoothed" in _positions_text(result.options.to_dict())


#: the datasets a user probe found without attributes; every one must now say its units and what it is
_ONCE_UNDOCUMENTED = (
    "energies_ev",
    "aligned",
    "masks",
    "mask",
    "positions",
    "shifts",
    "edge_positions",
    "agreement_px",
    "frame_flags",
    "pixel_flags",
    "mean_spectrum",
    "mean_norm",
    "pre_edge",
    "post_edge",
    "xanes_frames",
    "unaligned_ends",
)


@pytest.mark.parametrize("which", ["result", "result_clusters"])
def test_every_dataset_says_its_units_and_what_it_is(which, request, tmp_path):
    """Every dataset of results.h5 (particles, tables' columns, chemistry) has non-empty ``units`` and
    ``description``, none left as the writer's placeholder; the flag datasets spell out their bits."""
    import json

    import h5py

    from xanestrack import xanes
    from xanestrack.result import FRAME_FLAGS
    from xanestrack.results import UNDOCUMENTED

    result = request.getfixturevalue(which)
    write_results(result, tmp_path, run_info={"pixel_size_um": 0.0213})
    seen, bare = set(), []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        seen.add(name.rsplit("/", 1)[-1])
        units, desc = obj.attrs.get("units"), obj.attrs.get("description")
        if not (isinstance(units, str) and units.strip() and isinstance(desc, str) and desc.strip()):
            bare.append(f"{name}: units={units!r}, description={desc!r}")
        elif UNDOCUMENTED in (units, desc):
            bare.append(f"{name}: not in the writer's tables of units and descriptions")

    with h5py.File(tmp_path / "results.h5", "r") as f:
        f.visititems(visit)
        assert not bare, "\n".join(bare)
        assert set(_ONCE_UNDOCUMENTED) <= seen
        assert "c000" in seen and (which == "result" or "cluster_mean_spectra" in seen)  # columns, chemistry visited
        assert f.attrs["pixel_size_um"] == 0.0213
        # pixel sizes go with units and the frame axis with the energies
        p = f["particles"][sorted(f["particles"])[0]]
        assert p["positions"].attrs["units"] == "px" and f["energies_ev"].attrs["units"] == "eV"
        assert p["mean_spectrum"].attrs["units"] == "OD"
        # the flag bits round-trip to the package's own definitions
        for g in f["particles"].values():
            fa, pa = g["frame_flags"].attrs, g["pixel_flags"].attrs
            assert json.loads(fa["flag_bits"]) == FRAME_FLAGS
            assert fa["flag_meanings"].split() == list(FRAME_FLAGS)
            assert list(fa["flag_masks"]) == list(FRAME_FLAGS.values())
            assert json.loads(pa["flag_bits"]) == {
                "nonfinite": xanes.FLAG_NONFINITE,
                "low_step": xanes.FLAG_LOW_STEP,
                "no_crossing": xanes.FLAG_NO_CROSSING,
                "fit": xanes.FLAG_FIT,
                "gap": xanes.FLAG_GAP,
                "moving_rim": xanes.FLAG_MOVING_RIM,
                "filled": xanes.FLAG_FILLED,
                "thick": xanes.FLAG_THICK,
                "misfit": xanes.FLAG_MISFIT,
            }
            assert g["pixel_flags"].dtype == np.uint16  # the misfit bit (256) is past uint8
            assert dict(zip(pa["flag_meanings"].split(), pa["flag_masks"])) == json.loads(pa["flag_bits"])
        # velocities carry the motion table's unit
        cols = json.loads(f["tables/motion"].attrs["columns"])
        vy = f["tables/motion"][f"c{cols.index('vy'):03d}"]
        assert vy.attrs["units"] == result.motion.attrs["velocity_unit"] == "px/frame"
        assert f["tables/motion"][f"c{cols.index('ay'):03d}"].attrs["units"] == "px/frame^2"
    # the attributes change nothing that is read back
    back = read_results(tmp_path)
    np.testing.assert_array_equal(back.particles[0].frame_flags, result.particles[0].frame_flags)


def test_pixel_size_where_known_nan_where_not(result, tmp_path):
    """results.h5's root ``pixel_size_um``: given, else run.json's (the command line writes run.json first), else NaN."""
    import h5py

    from xanestrack.results import write_results_h5, write_tables

    def pixel(folder):
        with h5py.File(folder / "results.h5", "r") as f:
            return float(f.attrs["pixel_size_um"])

    (tmp_path / "a").mkdir()
    write_results(result, tmp_path / "a", run_info={"pixel_size_um": None})  # a synthetic scan: unknown
    assert np.isnan(pixel(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    write_tables(result, tmp_path / "b", run_info={"pixel_size_um": 0.03})
    write_results_h5(result, tmp_path / "b")  # as the command line calls it
    assert pixel(tmp_path / "b") == 0.03
    write_results_h5(result, tmp_path / "b", pixel_size_um=0.01)
    assert pixel(tmp_path / "b") == 0.01


def test_the_inputs_notes_are_in_results_h5(result, tmp_path):
    """The notes on the input (frames given from high to low energy, reversed; darks taken as 0) were in run.json
    and the report, not in results.h5: its reader did not learn that frame k was the input's frame n - 1 - k."""
    import json

    import h5py

    from xanestrack.results import write_results_h5, write_tables

    said = "energies from high to low: frame k of every output is frame 59 - k of the input"

    def notes(folder):
        with h5py.File(folder / "results.h5", "r") as f:
            return json.loads(f.attrs["input_notes"]), json.loads(f.attrs["notes"])

    (tmp_path / "a").mkdir()
    write_tables(result, tmp_path / "a", run_info={"pixel_size_um": None, "input_notes": [said]})
    write_results_h5(result, tmp_path / "a")  # as the command line calls it: run.json's
    assert notes(tmp_path / "a") == ([said], list(result.notes))
    (tmp_path / "b").mkdir()
    write_results(result, tmp_path / "b", run_info={"pixel_size_um": None, "input_notes": [said]})
    assert notes(tmp_path / "b")[0] == [said]
    (tmp_path / "c").mkdir()
    write_results(result, tmp_path / "c", run_info={"pixel_size_um": None})  # none: an empty list
    assert notes(tmp_path / "c")[0] == []


@pytest.mark.parametrize("bad", [0, -0.03, float("nan"), "tiny"])
def test_bad_pixel_size_is_refused(result, tmp_path, bad):
    from xanestrack.results import write_results_h5

    with pytest.raises(ValueError, match=r"pixel_size_um must be a positive number of micrometres.*got"):
        write_results_h5(result, tmp_path, pixel_size_um=bad)
    assert not (tmp_path / "results.h5").exists()


def test_the_pixels_a_particles_means_are_taken_over_are_written(result, tmp_path):
    # the report's mean E50 is over the mask eroded by 2 px and kept by the quality masks; results.h5 held neither,
    # and a mean over mask and map_quality_keep differed from it by up to 0.07 eV (5 sigma)
    import h5py

    from xanestrack.result import core_pixels, particle_summary

    write_results(result, tmp_path, run_info={})
    summ = particle_summary(result).set_index("particle")
    with h5py.File(tmp_path / "results.h5", "r") as f:
        for p in result.particles:
            g = f[f"particles/{p.particle:03d}"]
            core = g["core_mask"][()]
            assert np.array_equal(core, core_pixels(p)) and core.sum() < p.mask.sum()
            e50 = g["edge_e50"][()][core]
            if np.isfinite(summ.loc[p.particle, "mean_e50_ev"]):
                assert np.nanmean(e50) == pytest.approx(summ.loc[p.particle, "mean_e50_ev"], abs=1e-6)
