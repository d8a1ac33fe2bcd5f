"""Each report figure alone: built from the result model, it shows what it says and returns its data."""

import dataclasses
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from xanestrack import report
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.stack import Stack


@pytest.fixture(scope="module")
def result(small_synth):
    return run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev), options=PipelineOptions(detect_every=6)
    )


def _svg_ok(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag.endswith("svg") and float(root.get("width")) > 100
    return root


def test_overview_outlines_every_particle_and_tabulates_it(result):
    fig = report.overview_figure(result)
    root = _svg_ok(fig.svg)
    # the frame is embedded as PNG, one trajectory polyline and one label per particle
    assert len(root.findall(".//{http://www.w3.org/2000/svg}image")) == 1
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for p in result.particles:
        assert str(p.particle) in texts
    # cyan outline pixels at each particle's mask boundary, on the raster
    cyan = np.all(fig.image == [0, 255, 255], axis=-1)
    for p in result.particles:
        y, x = np.round(p.positions[0]).astype(int)
        r = int(p.radius) + 4
        assert cyan[max(y - r, 0) : y + r, max(x - r, 0) : x + r].sum() > 2 * p.radius, p.particle
    t = fig.tables["overview"]
    assert list(t["particle"]) == [p.particle for p in result.particles]
    np.testing.assert_allclose(
        t["max_nonrigid_px"], result.peak_ratios.set_index("particle").loc[t["particle"], "max_nonrigid_displacement"]
    )


def test_chemistry_colours_each_map_on_one_scale(result):
    fig = report.chemistry_figure(result)
    _svg_ok(fig.svg)
    elo, ehi = report._e50_limits(result)
    assert 8330 < elo < ehi < 8350
    t = fig.tables["chemistry"]
    for p, (_, row) in zip(result.particles, t.iterrows()):
        assert row["e50_median_ev"] == pytest.approx(np.nanmedian(p.edge_maps["e50"]))
        # a pixel at the particle's centre carries the viridis colour of its edge energy
        cy, cx = np.array(p.mask.shape) // 2
        v = p.edge_maps["e50"][cy, cx]
        if np.isfinite(v):
            expect = report._colormap(np.array([v]), "viridis", elo, ehi)[0]
            assert np.array_equal(fig.image[p.origin[0] + cy, p.origin[1] + cx], expect)


def test_motion_figure_has_eight_panels_and_its_tables(result):
    fig = report.motion_figure(result)
    root = _svg_ok(fig.svg)
    titles = [
        t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.text and re.fullmatch(r"\([a-h]\)", t.text)
    ]
    assert titles == [f"({c})" for c in "abcdefgh"]
    n = len(result.particles)
    # per particle a line in (a)-(d), (g), (h), plus the common motion
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 6 * n
    assert set(fig.tables) == {"motion", "common_motion"}
    assert len(fig.tables["motion"]) == len(result.tracks)
    assert len(fig.tables["common_motion"]) == len(result.energies_ev)


def test_motion_figure_marks_the_frames_not_vouched_for(result):
    # drawn alike before, and motion.csv could not tell them apart
    tracks = result.tracks.copy()
    rows = np.flatnonzero(tracks["particle"] == result.particles[0].particle)[[2, 5, 7]]
    tracks.loc[tracks.index[rows], "flags"] = "undetected|disagree"
    fig = report.motion_figure(dataclasses.replace(result, tracks=tracks))
    m = fig.tables["motion"]
    assert "vouched" in m and not m["vouched"].iloc[rows].any()
    assert m["vouched"].sum() == len(m) - 3 - (~report.motion_figure(result).tables["motion"]["vouched"]).sum()

    def crosses(svg):
        return sum(d.count("L") // 2 for d in re.findall(r'<path d="([^"]*)" stroke="[^"]*" stroke-width="1.5"', svg))

    assert crosses(fig.svg) == crosses(report.motion_figure(result).svg) + 3 * 6  # a cross in 6 panels per frame


def test_particle_figure_is_the_aligned_stack_and_maps(result):
    p = result.particles[0]
    fig = report.particle_figure(result, p.particle)
    assert fig.svg is None and fig.image.dtype == np.uint8 and fig.image.ndim == 3
    h, w = p.aligned.shape[1:]
    zoom = max(1, int(np.ceil(96 / max(h, w))))
    n_top = len(report._energy_selection(len(result.energies_ev)))
    assert fig.image.shape[0] == 2 * h * zoom + 6 and fig.image.shape[1] == n_top * w * zoom + (n_top - 1) * 6
    # the first tile is the first selected frame in grey
    tile = fig.image[: h * zoom : zoom, : w * zoom : zoom]
    assert np.all(tile[..., 0] == tile[..., 1])
    assert np.corrcoef(tile[..., 0].ravel(), p.aligned[0].ravel())[0, 1] > 0.95
    spec = fig.tables[f"particle_{p.particle:03d}_spectrum"]
    np.testing.assert_array_equal(spec["mean_od"], p.mean_spectrum)
    np.testing.assert_array_equal(fig.tables[f"particle_{p.particle:03d}_edge_e50"].to_numpy(), p.edge_maps["e50"])


def test_spectrum_figure_plots_the_spectrum_and_its_fits(result):
    p = result.particles[0]
    root = _svg_ok(report.spectrum_figure(result, p.particle).svg)
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) >= np.isfinite(p.mean_spectrum).sum()  # one dot per energy (+ legend)
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for label in (
        "mean OD less background",
        "mean OD before background",
        "pre-edge fit",
        "post-edge fit",
        "normalised (right)",
        "energy (eV)",
    ):
        assert label in labels


def test_vouching_table_counts_agreeing_frames(result):
    t = report.vouching_table(result)
    for p, (_, row) in zip(result.particles, t.iterrows()):
        ok = (p.frame_flags & (16 | 32 | 64)) == 0
        assert row["vouched frames"] == ok.sum()
        # vouched for by the density correlation where the centre of mass did not agree
        g = result.tracks[result.tracks["particle"] == p.particle].sort_values("frame")
        by_motion = (p.frame_flags & 128) > 0
        by_density = ok & ~by_motion & ~(g["com_agreement_px"].to_numpy(float) <= result.options.agreement_px)
        assert row["by density"] == by_density.sum() <= row["vouched frames"]
        assert (g["density_agreement_px"].to_numpy(float)[by_density] <= result.options.agreement_px).all()


def test_vouching_table_counts_the_frames_vouched_for_by_the_motion_apart(result):
    import dataclasses

    p0 = result.particles[0]
    flags = p0.frame_flags.copy()
    flags[5:9] = (flags[5:9] & ~np.uint8(64)) | np.uint8(128)  # as register.vouch_by_motion leaves them
    r = dataclasses.replace(result, particles=[dataclasses.replace(p0, frame_flags=flags), *result.particles[1:]])
    t = report.vouching_table(r).set_index("particle")
    before = report.vouching_table(result).set_index("particle")
    assert t.loc[p0.particle, "by motion"] == ((flags & 128) > 0).sum() >= 4
    assert t.loc[p0.particle, "by density"] <= before.loc[p0.particle, "by density"]
    assert (t.drop(p0.particle)["by motion"] == 0).all()


# ----------------------------------------------------------------------------- chemistry figures


@pytest.fixture(scope="module")
def result_clusters(small_synth):
    return run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev),
        options=PipelineOptions(detect_every=6, clusters=2),
    )


def _centre_pixel(p):
    """A kept pixel near the particle's centre (map coordinates)."""
    keep = p.maps["quality_keep"] & np.isfinite(p.edge_maps["e50"])
    yy, xx = np.nonzero(keep)
    c = np.array(p.mask.shape) / 2
    k = int(np.argmin(np.hypot(yy - c[0], xx - c[1])))
    return yy[k], xx[k]


def test_whiteline_figure_colours_the_fitted_position_of_kept_pixels(result):
    fig = report.whiteline_figure(result)
    _svg_ok(fig.svg)
    t = fig.tables["whiteline"]
    allv = []
    for p, (_, row) in zip(result.particles, t.iterrows(), strict=True):
        m = np.where(p.maps["quality_keep"], p.edge_maps["whiteline"], np.nan)
        assert row["whiteline_median_ev"] == pytest.approx(np.nanmedian(m))
        assert 8345 < row["whiteline_median_ev"] < 8360 and 1.2 < row["whiteline_height_median"] < 2.2
        allv.append(m[np.isfinite(m)])
    lo, hi = report._limits(np.concatenate(allv), 2, 98)
    p = result.particles[0]
    y, x = _centre_pixel(p)
    expect = report._colormap(np.array([p.edge_maps["whiteline"][y, x]]), "cividis", lo, hi)[0]
    assert np.array_equal(fig.image[p.origin[0] + y, p.origin[1] + x], expect)


def test_uncertainty_figure_maps_sigma_and_tabulates_its_parts(result):
    fig = report.uncertainty_figure(result)
    _svg_ok(fig.svg)
    t = fig.tables["uncertainty"]
    assert list(t["particle"]) == [p.particle for p in result.particles]
    for p, (_, row) in zip(result.particles, t.iterrows(), strict=True):
        keep = p.maps["quality_keep"]
        s = p.maps["e50_sigma"][keep & np.isfinite(p.maps["e50_sigma"])]
        assert row["sigma_median_ev"] == pytest.approx(np.median(s))
        # the parts combine in quadrature (medians: the total is at least each part)
        assert row["sigma_median_ev"] >= row["sigma_noise_median_ev"] - 1e-6
        assert 0 < row["mean_e50_sigma_ev"] < row["sigma_median_ev"]


def test_resolution_figure_lists_every_pair_once(result):
    fig = report.resolution_figure(result)
    root = _svg_ok(fig.svg)
    t, pairs = fig.tables["resolution"], fig.tables["resolved_pairs"]
    n = len(t)
    assert n == len(result.particles) and len(pairs) == n * (n - 1) // 2
    by = t.set_index("particle")
    from xanestrack.result import core_pixels

    for p in result.particles:  # n_pixels: the pixels the mean is over (it said every kept pixel)
        px = core_pixels(p) & np.isfinite(p.edge_maps["e50"])
        assert by.loc[p.particle, "n_pixels"] == px.sum()
        assert by.loc[p.particle, "e50_ev"] == pytest.approx(p.edge_maps["e50"][px].mean())
    for _, row in pairs.iterrows():
        a, b = int(row["particle_a"]), int(row["particle_b"])
        d = by.loc[b, "e50_ev"] - by.loc[a, "e50_ev"]
        s = np.hypot(by.loc[a, "sigma_ev"], by.loc[b, "sigma_ev"])
        assert row["delta_ev"] == pytest.approx(d) and row["z"] == pytest.approx(abs(d) / s)
        assert row["resolved"] == (abs(d) / s > 2)
    assert "E50 (eV)" in [x.text for x in root.iter("{http://www.w3.org/2000/svg}text")]


def test_resolved_pairs_name_particles_where_one_has_no_edge_energy(result):
    """resolved_pairs.csv is read by particle: a particle without a mean E50 is no row of the resolution table, and
    the pairs after it named the particles by row (``a, b``: particle 7 written as 6)."""
    first = result.particles[0]
    maps = dict(first.edge_maps)
    maps["e50"] = np.full_like(maps["e50"], np.nan)
    r = dataclasses.replace(result, particles=[dataclasses.replace(first, edge_maps=maps), *result.particles[1:]])
    fig = report.resolution_figure(r)
    t, pairs = fig.tables["resolution"], fig.tables["resolved_pairs"]
    assert first.particle not in set(t["particle"])
    assert set(pairs["particle_a"]) | set(pairs["particle_b"]) == set(t["particle"])
    assert "a" not in pairs and "label_a" not in pairs


def test_quality_table_counts_the_kept_pixels(result):
    t = report.quality_table(result)
    for p, (_, row) in zip(result.particles, t.iterrows(), strict=True):
        assert row["mask pixels"] == p.mask.sum()
        assert row["kept pixels"] == (p.maps["quality_keep"] & p.mask).sum()
        assert 0 < row["kept %"] <= 100


def test_cluster_map_figure_paints_each_pixel_in_its_cluster_colour(result_clusters):
    from xanestrack.results import cluster_table
    from xanestrack.svgplot import COLORS

    fig = report.cluster_map_figure(result_clusters)
    _svg_ok(fig.svg)
    for p in result_clusters.particles:
        cl = p.maps["cluster"]
        yy, xx = np.nonzero(cl >= 0)
        y, x = yy[len(yy) // 2], xx[len(xx) // 2]
        colour = COLORS[int(cl[y, x])]
        expect = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        assert list(fig.image[p.origin[0] + y, p.origin[1] + x]) == expect
    pd_t = fig.tables["cluster_fractions"]
    import pandas as pd

    pd.testing.assert_frame_equal(pd_t, cluster_table(result_clusters))
    np.testing.assert_allclose(pd_t[["cluster_0_fraction", "cluster_1_fraction"]].sum(axis=1), 1.0)


def test_cluster_spectra_figure_draws_the_means_and_the_scree(result_clusters):
    fig = report.cluster_spectra_figure(result_clusters)
    root = _svg_ok(fig.svg)
    chem = result_clusters.chemistry
    # one line per cluster and the scree
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 3
    spec = fig.tables["cluster_spectra"]
    np.testing.assert_array_equal(spec["energy_ev"], chem["energies_ev"])
    np.testing.assert_array_equal(spec["cluster_1"], chem["cluster_mean_spectra"][1])
    np.testing.assert_array_equal(
        fig.tables["pca_scree"]["explained_variance_ratio"], chem["pca_explained_variance_ratio"]
    )


def test_chemistry_figures_without_particles_or_clusters_do_not_fail():
    from xanestrack.stack import Stack as S

    empty = run_pipeline(S(np.zeros((12, 60, 60), np.float32), np.linspace(8300, 8400, 12)))
    assert not empty.particles
    for f in (report.whiteline_figure, report.uncertainty_figure, report.cluster_spectra_figure):
        _svg_ok(f(empty).svg)
    assert report.resolution_figure(empty).svg is None
    assert len(report.quality_table(empty)) == 0


def test_every_reader_of_the_quality_mask_counts_the_same_pixels(result):
    """One reading of ``quality_keep``: kept pixels lie in the mask, and the quality table,
    the resolution table, the particle summary and run.json count the same ones, also where
    the quality mask reaches beyond the particle's mask or is absent."""
    import dataclasses

    from xanestrack.cli import _quality_record
    from xanestrack.result import particle_summary

    p0 = result.particles[0]
    wide = dataclasses.replace(p0, maps={**p0.maps, "quality_keep": np.ones(p0.mask.shape, bool)})
    bare = dataclasses.replace(p0, particle=999, maps={k: v for k, v in p0.maps.items() if k != "quality_keep"})
    res = dataclasses.replace(result, particles=[wide, bare, *result.particles[1:]])
    for p in res.particles[:2]:
        np.testing.assert_array_equal(p.kept, p.mask)  # beyond the mask is not kept; absent: all kept
    assert wide.quality_assessed and not bare.quality_assessed
    n_kept = np.array([p.kept.sum() for p in res.particles])
    assert (n_kept <= np.array([p.mask.sum() for p in res.particles])).all()
    table = report.quality_table(res)
    # not judged: not said to keep its whole mask (the stress run's failed particles read "kept 100.0 %")
    assert table["kept pixels"].iloc[1] == "\u2013" and table["note"].iloc[1].startswith("not analysed")
    np.testing.assert_array_equal(table["kept pixels"].drop(index=1).astype(int), np.delete(n_kept, 1))
    summ = particle_summary(res)
    np.testing.assert_allclose(summ["kept_fraction"].iloc[0], 1.0)
    assert np.isnan(summ["kept_fraction"].iloc[1])  # not judged: no fraction to state
    rec = _quality_record(res)["particles"]
    assert "999" not in rec  # nothing judged, nothing recorded
    assert rec[str(wide.particle)]["kept_pixels"] == n_kept[0] == wide.mask.sum()


def test_a_figures_files_and_its_data_uri_are_written_together(tmp_path):
    """``_emit_files`` (the report's worker threads): an image alone is embedded as PNG, a figure
    with line work as its SVG (the PNG still written beside it), its tables as CSV; a figure with
    neither gives no URI."""
    import base64

    import pandas as pd

    img = np.zeros((4, 6, 3), np.uint8)
    img[1, 2] = (255, 0, 0)
    uri = report._emit_files(tmp_path, "raster", report.Figure(None, img, {"raster": pd.DataFrame({"a": [1.0]})}))
    png = (tmp_path / "raster.png").read_bytes()
    assert uri == "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    assert (tmp_path / "raster.csv").read_text().splitlines() == ["a", "1.0000"]

    svg = "<svg xmlns='http://www.w3.org/2000/svg'/>"
    uri = report._emit_files(tmp_path, "both", report.Figure(svg, img, {}))
    assert uri == "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
    assert (tmp_path / "both.png").is_file() and (tmp_path / "both.svg").read_text() == svg

    assert report._emit_files(tmp_path, "empty", report.Figure(None, None, {})) is None
    assert not (tmp_path / "empty.png").exists() and not (tmp_path / "empty.svg").exists()


def test_edge_width_figure_shows_the_widths_and_the_blur_matched(result, small_synth):
    import dataclasses

    from scipy import ndimage

    # where the focus holds: the widths flat within 0.2 px, no blur
    fig = report.edge_width_figure(result)
    _svg_ok(fig.svg)
    t = fig.tables["edge_widths"]
    assert list(t.columns) == ["frame", "energy_ev", "width_change_px", "blur_px"] and len(t) == len(result.energies_ev)
    assert np.ptp(t["width_change_px"]) < 0.2 and (t["blur_px"] == 0).all()
    # blurred more and more across the scan: the widths grow, and the sharp frames were blurred to the last one's
    od = small_synth.optical_density()
    sd = np.linspace(0, 2.5, len(od))
    blurred = np.stack([ndimage.gaussian_filter(od[k], sd[k]) for k in range(len(od))]).astype(np.float32)
    t = report.edge_width_figure(run_pipeline(Stack(blurred, small_synth.energies_ev))).tables["edge_widths"]
    assert t["width_change_px"].iloc[-1] - t["width_change_px"].iloc[0] > 1.0
    np.testing.assert_allclose(t["blur_px"].to_numpy(), np.sqrt(2.5**2 - sd**2), atol=0.3)
    # a result without the table (fewer particles measured, or written before it): no figure
    assert report.edge_width_figure(dataclasses.replace(result, edge_widths=None)).svg is None


# ---------------------------------------------------------------- numbers, colour bars, spectra, scale bars
_SVG = "{http://www.w3.org/2000/svg}"


def _crowded(result):
    """The result's first particle copied onto a crowded 200 x 200 scene: a small particle touching a large one
    at its top-right, the others touching or nearly so around them (y, x, radius px)."""
    layout = [
        (100, 100, 30),
        (72.4, 127.6, 8),
        (100, 44, 25),
        (150, 100, 18),
        (58, 68, 12),
        (110, 150, 15),
        (150, 145, 14),
        (155, 50, 20),
        (40, 110, 14),
        (30, 170, 12),
    ]
    p0 = result.particles[0]
    half = np.array(p0.mask.shape) // 2
    ps = []
    for k, (y, x, r) in enumerate(layout):
        c = np.array([y, x], float)
        ps.append(
            dataclasses.replace(
                p0,
                particle=k,
                positions=p0.positions - p0.positions[0] + c,
                origin=np.round(c).astype(int) - half,
                radius=float(r),
            )
        )
    return dataclasses.replace(result, particles=ps)


def _number_centres(svg: str, frame_width: int) -> dict:
    """particle -> (y, x) in frame pixels of the centre of its number drawn on a frame figure."""
    img = re.search(r'<image x="([-\d.]+)" y="([-\d.]+)" width="([\d.]+)"', svg)
    x0, y0, width = (float(v) for v in img.groups())
    scale = width / frame_width
    out = {}
    pattern = (
        r'<text x="([-\d.]+)" y="([-\d.]+)" fill="(?:yellow|black)" font-size="(\d+)" font-weight="bold" '
        r'text-anchor="(\w+)">(\d+)</text>'
    )
    for x, y, size, anchor, t in re.findall(pattern, svg):
        size = float(size)
        cx = float(x) + (0.3 * size * len(t) if anchor == "start" else 0.0)  # a number's glyphs are ~0.6 em wide
        cy = float(y) - 0.35 * size
        out[int(t)] = ((cy - y0) / scale - 0.5, (cx - x0) / scale - 0.5)
    return out


def test_particle_numbers_sit_nearest_their_own_particle_on_a_crowded_scene(result):
    """The maps' numbers were drawn at the top-right corner of each particle's window: on a crowded scene half of
    them nearer another particle than their own. Every figure over the frame places them as the overview does,
    from the particle's centre; on this scene each is nearer its own centre than any other's (by 1.5x)."""
    crowded = _crowded(result)
    centres = {p.particle: p.positions[0] for p in crowded.particles}
    width = report._base_image(crowded).shape[1]
    figures = {
        "overview": report.overview_figure(crowded),
        "chemistry": report.chemistry_figure(crowded),
        "whiteline": report.whiteline_figure(crowded),
        "uncertainty": report.uncertainty_figure(crowded),
        "clusters": report.cluster_map_figure(crowded),
    }
    where = {}
    for name, fig in figures.items():
        labels = _number_centres(fig.svg, width)
        assert sorted(labels) == sorted(centres), name
        for pid, yx in labels.items():
            d = {q: float(np.hypot(*(np.asarray(yx) - c))) for q, c in centres.items()}
            other = min(v for q, v in d.items() if q != pid)
            assert d[pid] * 1.5 <= other + 1.0, (name, pid, d[pid], other)
        where[name] = labels
    # one place per particle, in every figure
    for name in figures:
        for pid in centres:
            np.testing.assert_allclose(where[name][pid], where["overview"][pid], atol=0.2, err_msg=name)


def test_spectrum_points_lie_on_their_pre_and_post_edge_lines(result):
    """The mean OD was plotted before the local background was subtracted, the lines fitted after it (0.07 OD off
    on the default scene). The points drawn through the lines are the spectrum they were fitted to:
    (OD - pre) / (post - pre) of the points is 0 before the edge and 1 past it (in the SVG's own coordinates, where
    that ratio is the data's)."""
    from xanestrack.svgplot import COLORS

    for p in result.particles:
        fig = report.spectrum_figure(result, p.particle)
        root = _svg_ok(fig.svg)
        group = next(g for g in root.iter(f"{_SVG}g") if g.get("fill") == COLORS[0])
        px = np.array([float(c.get("cx")) for c in group.iter(f"{_SVG}circle")])
        py = np.array([float(c.get("cy")) for c in group.iter(f"{_SVG}circle")])

        def polyline(colour, root=root):
            pts = [
                tuple(map(float, xy.split(",")))
                for line in root.iter(f"{_SVG}polyline")
                if line.get("stroke") == colour
                for xy in line.get("points").split()
            ]
            return np.array(pts)

        pre, post = polyline(COLORS[1]), polyline(COLORS[2])
        # the screen's x is affine in the energy: the pre-edge line runs over the frames it was fitted on
        e_fit = np.asarray(result.energies_ev, float)[np.isfinite(p.pre_edge)]
        energy = e_fit[0] + (px - pre[0, 0]) * (e_fit[-1] - e_fit[0]) / (pre[-1, 0] - pre[0, 0])
        assert len(px) == np.isfinite(p.mean_norm).sum()  # the frames normalised, one point each
        ratio = (py - np.interp(px, pre[:, 0], pre[:, 1])) / (
            np.interp(px, post[:, 0], post[:, 1]) - np.interp(px, pre[:, 0], pre[:, 1])
        )
        before, after = energy < p.e0_ev - 15, energy > p.e0_ev + 60
        assert before.sum() > 5 and after.sum() > 5
        assert abs(np.median(ratio[before])) < 0.02, (p.particle, np.median(ratio[before]))
        assert abs(np.median(ratio[after]) - 1) < 0.05, (p.particle, np.median(ratio[after]))
        # the spectrum as measured is drawn beside it and the caption says how far apart they are
        grey = next(g for g in root.iter(f"{_SVG}g") if g.get("fill") == "#aaaaaa")
        assert len(list(grey.iter(f"{_SVG}circle"))) == np.isfinite(p.mean_spectrum).sum()
        assert "local background" in fig.caption and "OD from it on average before the edge" in fig.caption
        spec = report.particle_figure(result, p.particle).tables[f"particle_{p.particle:03d}_spectrum"]
        np.testing.assert_array_equal(spec["mean_od"], p.mean_spectrum)  # the CSV's columns kept, one added
        norm = (spec["mean_od_analysed"] - spec["pre_edge"]) / (spec["post_edge"] - spec["pre_edge"])
        e = spec["energy_ev"]
        assert abs(np.nanmedian(norm[e < p.e0_ev - 15])) < 0.02


def test_clipped_colour_bars_mark_their_ends_and_count_the_pixels_beyond(result):
    """The maps' colour ranges are percentiles: the ends of each colour bar say '≤ lo' / '≥ hi' (triangles) and the
    caption which percentiles, and how many pixels lie beyond, counted here from the maps."""
    fig = report.chemistry_figure(result)
    lo, hi = report._e50_limits(result)
    kept = [report._kept_e50(p) for p in result.particles]  # the pixels drawn: those the quality masks keep
    v = np.concatenate([m[np.isfinite(m)] for m in kept]).astype(float)
    n_lo, n_hi = int((v < lo).sum()), int((v > hi).sum())
    assert n_lo > 0 and n_hi > 0
    assert "2nd-98th percentiles" in fig.caption
    assert (
        f"of the {v.size} pixels drawn, {n_lo} lie below it (down to {report._value_text(v.min(), hi - lo)})"
        in fig.caption
    )
    assert f"and {n_hi} above it (up to {report._value_text(v.max(), hi - lo)})" in fig.caption
    texts = [t.text for t in _svg_ok(fig.svg).iter(f"{_SVG}text")]
    assert f"≤ {report._value_text(lo, hi - lo)}" in texts and f"≥ {report._value_text(hi, hi - lo)}" in texts
    assert len(re.findall(r'<path d="M[^"]*Z" fill="#', fig.svg)) == 2
    # the standard error from 0: only its top is clipped
    fig = report.uncertainty_figure(result)
    texts = [t.text for t in _svg_ok(fig.svg).iter(f"{_SVG}text")]
    assert any(t and t.startswith("≥ ") for t in texts) and not any(t and t.startswith("≤ ") for t in texts)
    assert "0 lie below it" in fig.caption and "98th percentile" in fig.caption
    # |delta| / sigma capped at 2k: the top tick says so where pairs lie beyond it (here every pair)
    fig = report.resolution_figure(result)
    z = fig.tables["resolved_pairs"]["z"].to_numpy()
    assert (z > 4).sum() > 0
    texts = [t.text for t in _svg_ok(fig.svg).iter(f"{_SVG}text")]
    assert "≥ 4.0" in texts
    assert f"{(z > 4).sum()} of the {len(z)} pairs lie above (up to {z.max():.1f})" in fig.caption
    # one edge energy everywhere: no pair beyond, nothing marked
    flat = dataclasses.replace(
        result,
        particles=[
            dataclasses.replace(p, edge_maps={**p.edge_maps, "e50": np.where(p.mask, 8340.0, np.nan)})
            for p in result.particles
        ],
    )
    fig = report.resolution_figure(flat)
    assert "no pair lies above" in fig.caption
    assert not any(t and t.startswith("≥") for t in (t.text for t in _svg_ok(fig.svg).iter(f"{_SVG}text")))


def test_frame_figures_draw_a_scale_bar_only_with_a_pixel_size(result):
    """A scale bar of a round length near 1/5 of the frame (200 px of 0.05 um: 2 um, 40 px) on the overview and
    every map; none without the pixel size."""
    width = report._base_image(result).shape[1]
    for f in (
        report.overview_figure,
        report.chemistry_figure,
        report.whiteline_figure,
        report.uncertainty_figure,
        report.cluster_map_figure,
    ):
        assert "µm" not in f(result).svg and "Scale bar" not in f(result).caption
        fig = f(result, pixel_size_um=0.05)
        root = _svg_ok(fig.svg)
        assert "2 µm" in [t.text for t in root.iter(f"{_SVG}text")], f.__name__
        img = next(root.iter(f"{_SVG}image"))
        scale = float(img.get("width")) / width
        bar = [
            line.get("points").split()
            for line in root.iter(f"{_SVG}polyline")
            if line.get("stroke") == "black" and line.get("stroke-width") == "3"
        ]
        assert len(bar) == 1
        (x0, _), (x1, _) = (map(float, xy.split(",")) for xy in bar[0])
        assert abs(x1 - x0) / scale == pytest.approx(40, abs=0.3), f.__name__
        assert "Scale bar 2 µm (40 px of 0.05 µm)" in fig.caption


def _trajectories(svg: str) -> list:
    """(stroke, dasharray or None) of each trajectory polyline on the overview (width 1.2)."""
    return re.findall(
        r'<polyline points="[^"]*" fill="none" stroke="([^"]*)" stroke-width="1.2"(?: stroke-dasharray="([^"]*)")?', svg
    )


def test_overview_draws_an_own_motion_not_measured_grey_and_says_so(result):
    """A particle whose max_nonrigid_px is NaN (no frame vouched for) was drawn in the colour bar's 0 colour, as the
    best-measured particle, and the caption did not say what an uncoloured trajectory means."""
    pr = result.peak_ratios.copy()
    first = result.particles[0].particle
    pr.loc[pr["particle"] == first, "max_nonrigid_displacement"] = np.nan
    if "nonrigid_within_split" in pr:
        pr["nonrigid_within_split"] = False
    fig = report.overview_figure(dataclasses.replace(result, peak_ratios=pr))
    lines = _trajectories(fig.svg)
    assert len(lines) == len(result.particles)
    assert report._hex("plasma", 0.0) not in [c for c, _ in lines] and lines[0][1] != ""
    assert lines[0] == (report.UNMEASURED_COLOR, report.UNMEASURED_DASH)
    assert all(c != report.UNMEASURED_COLOR for c, _ in lines[1:])
    assert "Grey, dashed: own motion not measured" in fig.caption and f"particle {first}." in fig.caption
    # control: every own motion measured, none within the split: no grey, no dashes, nothing said
    pr = result.peak_ratios.copy()
    if "nonrigid_within_split" in pr:
        pr["nonrigid_within_split"] = False
    fig = report.overview_figure(dataclasses.replace(result, peak_ratios=pr))
    assert all(c != report.UNMEASURED_COLOR and d == "" for c, d in _trajectories(fig.svg))
    assert "Grey" not in fig.caption and "Dotted" not in fig.caption


def test_overview_draws_an_own_motion_within_the_split_dotted_and_says_so(result):
    """An own motion the notes call within the split's uncertainty and noise was coloured as measured (a particle
    truly fixed painted 1.27 px): dotted, and the caption says its colour is an upper bound."""
    pr = result.peak_ratios.copy()
    pr["nonrigid_within_split"] = pr["particle"] == result.particles[1].particle
    fig = report.overview_figure(dataclasses.replace(result, peak_ratios=pr))
    lines = _trajectories(fig.svg)
    assert lines[1][1] != "" and "Dotted" in fig.caption
    assert lines[1][1] == report.WITHIN_SPLIT_DASH and lines[1][0] != report.UNMEASURED_COLOR
    assert all(d == "" for k, (_, d) in enumerate(lines) if k != 1)
    assert "Dotted: own motion within the uncertainty of the split" in fig.caption
    assert f"particle {result.particles[1].particle}." in fig.caption


def _many_particles(result, n: int):
    """The result's tracks repeated for ``n`` particles (ids 0..n-1)."""
    import pandas as pd

    first = result.tracks[result.tracks["particle"] == result.particles[0].particle]
    tracks = pd.concat([first.assign(particle=k) for k in range(n)], ignore_index=True)
    return dataclasses.replace(result, tracks=tracks)


def _legend_styles(svg: str) -> dict:
    """label -> (colour, dasharray or "") of the legend entries of the motion figure (short lines, then their text)."""
    pattern = (
        r'<line [^>]*stroke="([^"]*)" stroke-width="2"(?: stroke-dasharray="([^"]*)")?/><text [^>]*>([^<]*)</text>'
    )
    return {t: (c, d) for c, d, t in re.findall(pattern, svg)}


def test_motion_figure_tells_apart_particles_whose_colours_repeat(result):
    """COLORS[k % 10] with no other key: particles 0 and 10 were drawn alike in every panel and the legend."""
    fig = report.motion_figure(_many_particles(result, 23))
    legend = _legend_styles(fig.svg)
    styles = [legend[str(k)] for k in range(23)]
    assert len(set(styles)) == 23  # colour and dash together name each particle
    assert styles[0][1] == "" and styles[10][1] == report.MOTION_DASHES[1] and styles[20][1] == report.MOTION_DASHES[2]
    # the lines themselves carry the dash (a-d, g, h: 6 per particle of 10-22)
    dashed = re.findall(r'<polyline [^>]*stroke-width="1" stroke-dasharray="([^"]*)"', fig.svg)
    assert len(dashed) >= 6 * 13
    assert "solid: particles 0-9; dashed: particles 10-19; dotted: particles 20-22" in fig.caption
    # control: ten particles or fewer, one colour each: solid, and nothing said
    fig = report.motion_figure(_many_particles(result, 10))
    assert all(d == "" for c, d in _legend_styles(fig.svg).values())
    assert "stroke-dasharray" not in fig.svg and "line style" not in fig.caption


def test_motion_table_says_unknown_where_no_noise_floor_is_known(result):
    """A 2-energy scan has no noise floor: nonrigid_at_noise False for want of it read "own motion within noise: no",
    and the summary named the particle that moved most with no caveat."""
    pr = result.peak_ratios.copy()
    assert "max_nonrigid_noise_px" in pr
    pr["position_noise_px"] = np.nan
    pr["max_nonrigid_noise_px"] = np.nan
    pr["peak_nonrigid_v_noise"] = np.nan
    pr["nonrigid_at_noise"] = False
    bare = dataclasses.replace(result, peak_ratios=pr)
    t = report._motion_table(bare)
    col = report.MOTION_TABLE_NAMES["nonrigid_at_noise"]
    assert set(t[col]) == {"unknown"}
    text = report._own_motion_summary(bare, report._max_nonrigid(bare))
    assert "noise is known (too few frames)" in text and "moved most on its own (" not in text
    # one particle's floor known and its own motion above it: it alone is counted, the others left out as unknown
    pr2 = pr.copy()
    pid = int(pr2["particle"].iloc[0])
    pr2.loc[pr2.index[0], ["position_noise_px", "max_nonrigid_noise_px"]] = [1e-4, 1e-4]
    part = dataclasses.replace(result, peak_ratios=pr2)
    assert list(report._motion_table(part)[col]) == ["no"] + ["unknown"] * (len(pr2) - 1)
    text = report._own_motion_summary(part, report._max_nonrigid(part))
    assert text.startswith(f" Particle {pid} moved most") and "their positions' noise not known" in text
    # control: the floor known for every particle: yes / no as before
    assert set(report._motion_table(result)[col]) <= {"yes", "no"}
    assert "not known" not in report._own_motion_summary(result, report._max_nonrigid(result))


def test_e50_map_csv_marks_the_pixels_the_figures_hide(result, tmp_path, monkeypatch):
    """particle_NNN_edge_e50.csv holds every pixel measured, the 2-4 % the figures hide (quality masks) too, and a
    withheld particle's full map, under one header: a _shown grid beside it says which are drawn."""
    p = max(result.particles, key=lambda q: int((np.isfinite(q.edge_maps["e50"]) & ~q.kept).sum()))
    hidden = np.isfinite(p.edge_maps["e50"]) & ~p.kept
    assert hidden.any()
    fig = report.particle_figure(result, p.particle)
    name = f"particle_{p.particle:03d}_edge_e50"
    shown = fig.tables[f"{name}_shown"].to_numpy()
    assert shown.shape == p.edge_maps["e50"].shape
    assert np.array_equal(shown == 1, np.isfinite(report._kept_e50(p)))
    assert (shown[hidden] == 0).all()
    report._write_tables(tmp_path, fig.tables)
    grid = np.loadtxt(tmp_path / f"{name}_shown.csv", delimiter=",")
    assert np.array_equal(grid, shown)
    e50 = np.loadtxt(tmp_path / f"{name}.csv", delimiter=",")
    assert np.isfinite(e50[hidden]).all()  # the map as measured is unchanged
    head = (tmp_path / f"{name}.csv").read_text().splitlines()[0]
    assert f"{name}_shown.csv" in head and "withheld" not in head
    # a particle whose mean E50 is withheld: nothing shown, and both headers say why
    monkeypatch.setattr(report, "e50_withheld", lambda q: "too few pixels" if q.particle == p.particle else "")
    fig = report.particle_figure(result, p.particle)
    assert (fig.tables[f"{name}_shown"].to_numpy() == 0).all()
    report._write_tables(tmp_path, fig.tables)
    for f in (f"{name}.csv", f"{name}_shown.csv"):
        assert "withheld: too few pixels" in (tmp_path / f).read_text().splitlines()[0], f


def test_a_number_is_not_placed_on_another_particles_mask(result):
    """The clearance was checked against the other particles' centres only: a particle with a large radius and an
    empty mask (real SSRL pair, particle 12) had its number on a large neighbour's mask, far enough from its centre."""
    p0 = result.particles[0]
    yy, xx = np.mgrid[:111, :111]
    big = np.hypot(yy - 55, xx - 55) <= 55
    small = np.zeros((17, 17), bool)
    small[8, 8] = True
    a = dataclasses.replace(
        p0,
        particle=0,
        positions=p0.positions - p0.positions[0] + [100.0, 100.0],
        origin=np.array([45, 45]),
        radius=55.0,
        mask=big,
    )
    # b's first place (0.8 r up and right) is 50 px from a's centre, 22.6 from its own: it passed 1.5x
    b_centre = np.array([100 + 35.36 + 16, 100 - 35.36 - 16])
    b = dataclasses.replace(
        p0,
        particle=1,
        positions=p0.positions - p0.positions[0] + b_centre,
        origin=np.round(b_centre).astype(int) - 8,
        radius=20.0,
        mask=small,
    )
    scene = dataclasses.replace(result, particles=[a, b])
    pos = report._label_positions(scene)
    assert np.hypot(*(np.asarray(pos[1]) - 100.0)) > 55, pos[1]  # off a's disc
    # control: a's mask small (its own disc, radius 10): b's number keeps its first place
    tiny = np.hypot(yy - 55, xx - 55) <= 10
    scene = dataclasses.replace(result, particles=[dataclasses.replace(a, mask=tiny, radius=10.0), b])
    np.testing.assert_allclose(report._label_positions(scene)[1], b_centre + 20.0 * np.array([-0.8, 0.8]))


def test_motion_panel_e_marks_a_magnification_the_notes_call_not_determined(result):
    """Panel (e) drew a 1.0 % magnification as a clean curve, its caption the zone plate's, where the run notes said
    that the particles do not determine it (a default scene with no magnification in its truth)."""
    import inspect

    from xanestrack import motion_notes

    note = (
        "the magnification fitted to the particles (common_scale 1.0000 to 1.0101 across the scan) is not determined "
        "by them: fitted again with any one particle left out it reads 1.0000 to 1.0257 there"
    )
    fig = report.motion_figure(dataclasses.replace(result, notes=tuple(result.notes) + (note,)))
    assert re.search(r'<polyline [^>]*stroke="black" stroke-width="1.2" stroke-dasharray="[^"]+"', fig.svg)
    assert "(e) Drawn dashed: the run notes say that this magnification is not determined" in fig.caption
    # the words looked for are the notes' own
    src = inspect.getsource(motion_notes)
    for words in (report.SCALE_NOTE_START, *report.SCALE_NOTE_UNDETERMINED):
        assert words in src, words
    # control: no such note: solid, nothing said
    plain = tuple(n for n in result.notes if not n.startswith(report.SCALE_NOTE_START))
    fig = report.motion_figure(dataclasses.replace(result, notes=plain))
    assert not re.search(r'<polyline [^>]*stroke="black" stroke-width="1.2" stroke-dasharray', fig.svg)
    assert "Drawn dashed" not in fig.caption
