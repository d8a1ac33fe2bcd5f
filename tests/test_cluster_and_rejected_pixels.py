"""What the clusters and the quality masks' rejections say outside the report (probe "maps", F3, F5, F6).

- Clusters that are not distinct phases: the run note is printed (its words are among
  ``CONSOLE_NOTE_WORDS``) and clusters.csv carries the clustering's ``separation`` (the report alone said so).
- A cluster window holding too few of the scan's energies is refused before anything is computed (it was
  refused after the whole run, nothing written).
- The pixels the quality masks reject are not drawn in the E50 overview nor in a particle's E50 panel, nor
  counted in chemistry.csv's percentiles, as in the whiteline and sigma figures; ``pixel_flags`` says that
  those rejections have no bit.

Reduced synthetic scenes (4 particles, 200 x 200 px, 48 energies), run through ``run_pipeline``.
"""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from xanestrack import report
from xanestrack.cli import app
from xanestrack.pipeline import (
    CLUSTER_MIN_SEPARATION,
    CONSOLE_NOTE_WORDS,
    PipelineOptions,
    _check_options,
    run_pipeline,
)
from xanestrack.results import cluster_table, write_results, write_tables
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack

#: the reduced scene every test here runs on (the default scene's chemistry unless ``patterns`` is given)
SCENE = dict(n_particles=4, shape=(200, 200), radius_range=(10.0, 22.0), n_energies=48)


def _run(seed, patterns=None, **options):
    s = make_synthetic_stack("default", seed=seed, patterns=patterns, **SCENE)
    return s, run_pipeline(Stack(s.optical_density(), s.energies_ev), options=PipelineOptions(**options))


@pytest.fixture(scope="module")
def one_phase():
    """Four pure-LiNiO2 particles clustered in 2: one spread of pixels cut in two (separation 2.4 measured)."""
    return _run(4, ("phase_LiNiO2",), clusters=2)[1]


@pytest.fixture(scope="module")
def default_scene():
    """The default scene, seed 1, reduced: 11 pixels of its particles have an E50 the quality masks reject."""
    return _run(1)


# ----------------------------------------------------------------------------- F3: clusters that are not phases


def test_clusters_that_are_not_phases_are_said_on_the_console_and_in_clusters_csv(one_phase, tmp_path):
    (note,) = [n for n in one_phase.notes if "not distinct phases" in n]
    assert any(w in note for w in CONSOLE_NOTE_WORDS)  # printed by run and series beside the table
    sep = one_phase.chemistry["settings"]["separation"]
    assert sep < CLUSTER_MIN_SEPARATION
    write_tables(one_phase, tmp_path, run_info={})
    csv = pd.read_csv(tmp_path / "clusters.csv")
    assert list(csv.columns[-1:]) == ["separation"] and len(csv) == len(one_phase.particles)
    np.testing.assert_allclose(csv["separation"], sep, atol=1e-4)
    pd.testing.assert_frame_equal(
        cluster_table(one_phase), report.cluster_map_figure(one_phase).tables["cluster_fractions"]
    )


def test_distinct_phases_get_no_note_and_their_separation():
    """Control: NiO and LiNiO2 particles in 2 clusters (separation 47 measured)."""
    _, r = _run(4, ("phase_NiO", "phase_LiNiO2"), clusters=2)
    assert not [n for n in r.notes if n.startswith("phase mapping")]
    t = cluster_table(r)
    assert (t["separation"] >= CLUSTER_MIN_SEPARATION).all()
    assert ((t["cluster_0_fraction"] > 0.9) | (t["cluster_1_fraction"] > 0.9)).all()


# ----------------------------------------------------------------------------- F5: a window of too few energies


@pytest.mark.parametrize("held", [0, 1])
def test_a_cluster_window_of_too_few_energies_is_refused_before_anything_is_computed(held):
    s = make_synthetic_stack("default", seed=1, **SCENE)
    e = np.asarray(s.energies_ev, float)
    k = int(np.argmin(np.abs(e - 8331.0)))
    window = (e[k] - 0.1, e[k] + 0.1) if held else (e[k] + 0.1, e[k] + 0.2)
    stages = []
    with pytest.raises(ValueError, match=rf"^options.cluster_window .* holds {held} of the scan's energies") as exc:
        run_pipeline(
            Stack(s.optical_density(), e),
            options=PipelineOptions(clusters=2, cluster_window=window),
            progress=lambda *a: stages.append(a),
        )
    assert not stages  # nothing detected, tracked or analysed first
    assert "widen it" in str(exc.value) and f"{e[k]:.1f}" in str(exc.value)


def test_a_cluster_window_of_too_few_energies_is_one_line_on_the_command_line(tmp_path):
    from xanestrack.truth_io import write_synthetic

    s = make_synthetic_stack("default", seed=1, **SCENE)
    (tmp_path / "s").mkdir()
    write_synthetic(s, tmp_path / "s", preset="default")
    e = np.asarray(s.energies_ev, float)
    k = int(np.argmin(np.abs(e - 8331.0)))
    r = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "s" / "stack.h5"), "--out", str(tmp_path / "o"), "--detector", "classical"]
        + ["--segmenter", "classical", "--clusters", "2", "--cluster-window", f"{e[k] - 0.1:.2f},{e[k] + 0.1:.2f}"],
    )
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "holds 1 of the scan's energies" in line and "widen it" in line
    assert "detect " not in r.output and not (tmp_path / "o").exists()


def test_a_cluster_window_of_enough_energies_passes_the_check():
    """Control: two energies, the whole edge, no window, or no clusters."""
    e = np.asarray(make_synthetic_stack("default", seed=1, **SCENE).energies_ev, float)
    k = int(np.argmin(np.abs(e - 8331.0)))
    for opts in (
        PipelineOptions(clusters=2, cluster_window=(e[k] - 0.1, e[k + 1] + 0.1)),
        PipelineOptions(clusters=2, cluster_window=(8320.0, 8360.0)),
        PipelineOptions(clusters=2),
        PipelineOptions(clusters=0),
    ):
        _check_options(opts, e)


# ----------------------------------------------------------------------------- F6: pixels the quality masks reject


def _rejected(p):
    """The pixels with an E50 that the quality masks reject."""
    return p.mask & ~p.kept & np.isfinite(p.edge_maps["e50"])


def test_rejected_pixels_are_neither_drawn_nor_counted_in_the_e50_overview(default_scene):
    _, r = default_scene
    assert sum(int(_rejected(p).sum()) for p in r.particles) > 0  # 11 measured
    kept = [p.edge_maps["e50"][p.kept & np.isfinite(p.edge_maps["e50"])] for p in r.particles]
    fig = report.chemistry_figure(r)
    assert f"of the {sum(v.size for v in kept)} pixels drawn" in fig.caption
    assert "E50 pixels that the quality masks keep" in fig.caption
    lo, hi = report._e50_limits(r)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(np.concatenate(kept), [2, 98])))
    t = fig.tables["chemistry"]  # chemistry.csv
    for p, v, (_, row) in zip(r.particles, kept, t.iterrows()):
        assert row["n_pixels"] == v.size
        assert [row["e50_p2_ev"], row["e50_median_ev"], row["e50_p98_ev"]] == pytest.approx(
            list(np.percentile(v, [2, 50, 98]))
        )
        # a rejected pixel shows the frame under it, not an E50 colour; a kept one its colour
        for y, x in zip(*np.nonzero(_rejected(p))):
            c = fig.image[p.origin[0] + y, p.origin[1] + x]
            assert not np.array_equal(c, report._colormap(np.array([p.edge_maps["e50"][y, x]]), "viridis", lo, hi)[0])
        y, x = np.argwhere(p.kept & np.isfinite(p.edge_maps["e50"]))[0]
        expect = report._colormap(np.array([p.edge_maps["e50"][y, x]]), "viridis", lo, hi)[0]
        assert np.array_equal(fig.image[p.origin[0] + y, p.origin[1] + x], expect)
    assert "pixels the quality masks reject are not shown" in report._TEMPLATE.split("chemistry overview")[1]


def test_a_particles_e50_panel_leaves_its_rejected_pixels_out(default_scene):
    _, r = default_scene
    p = max(r.particles, key=lambda q: int(_rejected(q).sum()))
    fig = report.particle_figure(r, p.particle)
    h, w = p.mask.shape
    zoom, gap = max(1, int(np.ceil(96 / max(h, w)))), 6
    panel = fig.image[h * zoom + gap :, 2 * (w * zoom + gap) : 2 * (w * zoom + gap) + w * zoom][::zoom, ::zoom]
    assert (panel[_rejected(p)] == 255).all()  # white, as outside the particle
    kept = p.kept & np.isfinite(p.edge_maps["e50"])
    assert not (panel[kept] == 255).all(axis=-1).any()
    # the map's CSV is the map as measured (results.h5's edge_e50), every pixel
    table = fig.tables[f"particle_{p.particle:03d}_edge_e50"].to_numpy()
    assert np.isfinite(table[_rejected(p)]).all()


def test_pixel_flags_say_the_quality_masks_rejections_have_no_bit(default_scene, tmp_path):
    import h5py

    s, r = default_scene
    write_results(r, tmp_path, run_info={"pixel_size_um": None})
    p = max(r.particles, key=lambda q: int(_rejected(q).sum()))
    with h5py.File(tmp_path / "results.h5") as f:
        d = f[f"particles/{p.particle:03d}/pixel_flags"]
        flags, desc = d[()], str(d.attrs["description"])
    assert (flags[_rejected(p)] == 0).any()  # the values' meaning is unchanged
    assert "has no bit of its own and may read 0 here" in desc and "map_quality_keep gives the pixels trusted" in desc
