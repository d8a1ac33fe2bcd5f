"""The napari reader: an output folder as layer data, without napari (and a valid npe2 manifest)."""

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xanestrack.napari import get_reader, read_output


@pytest.fixture()
def output_folder(tmp_path):
    """A small output folder with the layout of results.write_results (two particles) plus maps
    that the chemistry integration adds (a cluster map, a sigma map, a quality mask)."""
    import h5py

    n, frame = 12, (80, 90)
    energies = np.linspace(8300.0, 8400.0, n)
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "results.h5", "w") as f:
        f.attrs["frame_shape"] = np.asarray(frame, np.int64)
        f.create_dataset("energies_ev", data=energies)
        f.create_dataset("common_shift", data=np.zeros((n, 2)))
        f.create_dataset("fused_first", data=rng.random(frame).astype(np.float32))
        f.create_dataset("fused_last", data=rng.random(frame).astype(np.float32))
        g = f.create_group("particles")
        for pid, (oy, ox, size) in enumerate(((5, 10, 20), (40, 50, 30))):
            pg = g.create_group(f"{pid:03d}")
            pg.attrs.update(particle=pid, origin_y=oy, origin_x=ox, e0_ev=8342.0, radius_px=size / 3)
            yy, xx = np.mgrid[0:size, 0:size]
            mask = np.hypot(yy - size / 2, xx - size / 2) < size / 3
            pg.create_dataset("aligned", data=rng.random((n, size, size)).astype(np.float32))
            pg.create_dataset("masks", data=np.repeat(mask[None], n, 0).astype(np.float32))
            pg.create_dataset("mask", data=mask)
            pg.create_dataset("edge_e50", data=np.where(mask, 8340.0 + pid, np.nan).astype(np.float32))
            pg.create_dataset("pixel_flags", data=np.zeros((size, size), np.uint8))
            fractions = np.stack([np.where(mask, 0.3, np.nan), np.where(mask, 0.7, np.nan)]).astype(np.float32)
            d = pg.create_dataset("fractions", data=fractions)
            d.attrs["references"] = json.dumps(["NiO", "LiNiO2"])
            pg.create_dataset("positions", data=np.zeros((n, 2)))
            pg.create_dataset("agreement_px", data=np.full(n, 0.1))
            pg.create_dataset("mean_spectrum", data=np.zeros(n, np.float32))
            # chemistry maps of the second assignment
            pg.create_dataset("clusters", data=np.where(mask, xx > size / 2, -1).astype(np.int16))
            pg.create_dataset("sigma_e50", data=np.where(mask, 0.1, np.nan).astype(np.float32))
            pg.create_dataset("quality_keep", data=mask & (yy > 2))
    rows = [(p, k, 8300.0 + k, 10.0 + p * 40 + 0.1 * k, 20.0 + p * 40) for p in (0, 1) for k in range(n)]
    tracks = pd.DataFrame(rows, columns=["particle", "frame", "energy_ev", "y", "x"]).assign(flags="")
    tracks.to_csv(tmp_path / "tracks.csv", index=False)
    return tmp_path


def _by_name(layers):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in layers}


def test_reader_builds_layers_of_an_output_folder(output_folder):
    reader = get_reader(str(output_folder))
    assert reader is read_output
    layers = reader(str(output_folder))
    assert all(kind in ("image", "labels", "tracks") for _, _, kind in layers)
    by = _by_name(layers)
    # the fused frame
    assert by["fused, last frame"][0].shape == (80, 90) and by["fused, last frame"][2] == "image"
    # per-pixel maps pasted into frame-0 canvases at each particle's origin
    e50 = by["E50 (eV)"][0]
    assert e50.shape == (80, 90)
    assert e50[5 + 10, 10 + 10] == 8340.0 and e50[40 + 15, 50 + 15] == 8341.0
    assert np.isnan(e50[0, 0])
    assert by["E50 (eV)"][1]["visible"] and not by["fractions: LiNiO2"][1]["visible"]
    assert np.nanmax(by["fractions: LiNiO2"][0]) == pytest.approx(0.7)
    assert np.nanmax(by["sigma_e50"][0]) == pytest.approx(0.1)
    # masks and cluster maps as labels (0 = background)
    parts = by["particles (label = particle + 1)"]
    assert parts[2] == "labels" and set(np.unique(parts[0])) == {0, 1, 2}
    clusters = by["clusters (label = value + 1)"]
    assert clusters[2] == "labels" and set(np.unique(clusters[0])) == {0, 1, 2}
    assert by["quality_keep"][2] == "labels" and by["quality_keep"][0].max() == 1
    # each aligned stack in place
    aligned = by["particle 1 aligned"]
    assert aligned[0].shape == (12, 30, 30) and aligned[1]["translate"] == (0.0, 40.0, 50.0)
    # trajectories: (track id, frame, y, x)
    tracks = by["trajectories (input-frame coordinates)"]
    assert tracks[2] == "tracks" and tracks[0].shape == (24, 4)
    assert np.array_equal(tracks[0][:12, 0], np.zeros(12)) and np.array_equal(tracks[0][:12, 1], np.arange(12))
    for _, kw, kind in layers:
        if kind == "image":
            lo, hi = kw["contrast_limits"]
            assert np.isfinite(lo) and np.isfinite(hi) and hi > lo


def test_reader_accepts_the_h5_file_and_refuses_other_paths(output_folder, tmp_path_factory):
    assert get_reader([str(output_folder / "results.h5")]) is read_output
    other = tmp_path_factory.mktemp("other")
    assert get_reader(str(other)) is None
    assert get_reader(str(output_folder / "tracks.csv")) is None
    assert get_reader([str(output_folder), str(other)]) is None
    with pytest.raises(ValueError, match="not a xanestrack output folder"):
        read_output(str(other))


def test_manifest_is_valid():
    path = Path(str(resources.files("xanestrack.napari").joinpath("napari.yaml")))
    try:
        from npe2 import PluginManifest
    except ImportError:
        import yaml

        manifest = yaml.safe_load(path.read_text())
        assert manifest["name"] == "xanestrack"
        (command,) = manifest["contributions"]["commands"]
        (reader,) = manifest["contributions"]["readers"]
        assert reader["command"] == command["id"] and reader["accepts_directories"] is True
        python_name = command["python_name"]
    else:
        manifest = PluginManifest.from_file(path)
        manifest.validate_imports()  # every python_name resolves
        assert manifest.name == "xanestrack"
        (reader,) = manifest.contributions.readers
        (command,) = manifest.contributions.commands
        assert reader.command == command.id and reader.accepts_directories
        python_name = command.python_name
    module, attr = python_name.split(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is get_reader


def test_package_never_imports_napari():
    code = (
        "import sys, xanestrack.napari, xanestrack.chemistry.phases, xanestrack.chemistry.uncertainty;"
        "sys.exit(1 if 'napari' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    src = Path(__file__).resolve().parents[1] / "src" / "xanestrack"
    for py in src.rglob("*.py"):
        for line in py.read_text().splitlines():
            s = line.strip()
            assert not (s.startswith("import napari") or s.startswith("from napari")), py
