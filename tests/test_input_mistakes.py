"""Good-faith beamline mistakes in the input that ran without a word (the probe "mistakes", scene
``synth --seed 5 --size 256 --n-energies 60 --n-particles 5 --max-radius 25``), on reduced scenes:

- optical density of the wrong sign, ln(I/I0): the gaps between the particles tracked as 6 "particles";
- flats taken with the sample partly in the beam: particle-sized regions brighter than the flats, under the
  share the "brighter than their flats" note needs (E50 0.09 eV, 6 sigma, off);
- energies in keV with 3 decimals (rounded to 1 eV) on a 1.2-eV grid: mean E50s -0.16 to +0.23 eV off;
- ``--pixel-size 21.3`` (FXI's 21.3 nm as um): refused naming ``--min-radius``/``--max-radius``, not given;
- the energy axis last, and the detector's frames counted as all the frames.

Each rule has its controls: the default synthetic scene (seed 1) and a stress scene, where it must not fire.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import shared_data
from xanestrack.errors import XanestrackError


@pytest.fixture(scope="module")
def scene():
    from xanestrack.synth import make_synthetic_stack

    return make_synthetic_stack(
        "default", seed=1, n_energies=12, shape=(200, 200), n_particles=4, radius_range=(10.0, 22.0)
    )


@pytest.fixture(scope="module")
def stress():
    from xanestrack.synth_stress import make_scene

    return make_scene("stress-all", seed=1, n_energies=8)


def _od(s):
    from xanestrack.io.flatfield import optical_density

    return optical_density(s.counts, flats=s.flats, darks=s.dark[None])


# ---------------------------------------------------------------- F3: optical density of the wrong sign


def test_optical_density_of_the_wrong_sign_is_refused(scene, stress):
    from xanestrack.io.checks import values_without_flats

    for od in (_od(scene), _od(stress)):  # a thin matrix (background ~0.03) and a thick electrode (~0.8)
        for values in ("auto", "od"):
            with pytest.raises(XanestrackError, match="sign were flipped") as exc:
                values_without_flats(-od, values, source="s.h5", flats_hint="flats")
            msg = str(exc.value)
            assert "\n" not in msg and "-ln(I/I0)" in msg and ("even as `values` od" in msg) == (values == "od")


def test_optical_density_of_the_right_sign_is_taken(scene, stress):
    """Controls: both scenes' OD, in ln and log10, with bright zingers (0.05 % of the pixels), and I/I0 said so."""
    from xanestrack.io.checks import values_without_flats

    rng = np.random.default_rng(0)
    for od in (_od(scene), _od(stress)):
        zingered = od.copy()
        hit = rng.random(od.shape) < 0.0005
        zingered[hit] = -3.0
        for v in (od, od / np.log(10), zingered):
            _, kind, notes = values_without_flats(v, "auto", source="s", flats_hint="flats")
            assert kind == "od" and not any("flipped" in n for n in notes)
        _, kind, _ = values_without_flats(np.exp(-od), "transmission", source="s", flats_hint="flats")
        assert kind == "transmission"


# ---------------------------------------------------------------- F4: the sample in the flats


def _ghost_flats(s, shift=50, width=100):
    """Each frame's flat holding the sample's transmission shifted by ``shift`` px (the stage retracted too
    little), over the left ``width`` columns only (as the probe's ``make_ghost.py``)."""
    c, f, d = (np.asarray(a, float) for a in (s.counts, s.flats, s.dark[None]))
    t = (c - d) / (f - d)
    tr = np.roll(t, shift, axis=2)
    tr[:, :, width:] = 1.0
    return ((f - d) * tr + d).astype(np.float32)


def _flat_notes(counts, flats, dark):
    from xanestrack.io.flatfield import optical_density

    notes = []
    optical_density(counts, flats=flats, darks=dark[None], source="s.h5", notes=notes)
    return [n for n in notes if "brighter than" in n]


def test_flats_holding_the_sample_in_part_are_named(scene):
    said = _flat_notes(scene.counts, _ghost_flats(scene), scene.dark)
    assert len(said) == 1 and "compact region" in said[0] and "flats may hold the sample" in said[0], said
    assert "over" not in said[0].split(":")[1]  # not the share-of-the-field note: too small a share for it
    # the regions named lie where the flats hold particles: in the left 100 columns, 50 px right of a particle
    truth = scene.truth.positions
    first = truth[truth["frame"] == 0]
    import re

    named = [(int(y), int(x)) for y, x in re.findall(r"around pixel \((\d+), (\d+)\)", said[0])]
    assert named
    for y, x in named:
        assert x < 100 + 8
        d = np.hypot(first["y"] - y, (first["x"] + 50) % 200 - x)
        assert d.min() < 12, (y, x, first[["y", "x"]].values)


def test_flats_without_the_sample_are_not_named(scene, stress):
    """Controls: the scenes' own flats (flat-field noise, beam changes between flat and image)."""
    for s in (scene, stress):
        assert _flat_notes(s.counts, s.flats, s.dark) == []


def test_real_ssrl_frames_are_not_said_to_have_the_sample_in_their_flats():
    from xanestrack.io import read_stack

    st = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    assert not any("brighter than" in n for n in st.metadata["notes"]), st.metadata["notes"]


# ---------------------------------------------------------------- F7: energies rounded


def test_energies_rounded_to_whole_ev_are_noted():
    from xanestrack.io.checks import rounded_energies_note
    from xanestrack.synth import ni_energy_grid

    e = ni_energy_grid(60)
    note = rounded_energies_note(np.round(e / 1000, 3) * 1000, source="s.h5")  # keV with 3 decimals
    assert note and "rounded to 1 eV" in note and "1 and 2 eV" in note and "0.5 eV off" in note, note
    f32 = (np.round(e / 1000, 3).astype(np.float32) * np.float32(1000)).astype(float)  # stored as float32 keV
    assert rounded_energies_note(f32, source="s.h5")
    assert "0.05 eV off" in rounded_energies_note(np.round(np.arange(8300, 8330, 0.35), 1), source="s")


def test_even_or_exact_energy_grids_are_not_said_rounded():
    from xanestrack.io.checks import rounded_energies_note
    from xanestrack.synth import ni_energy_grid

    grids = [ni_energy_grid(n) for n in (8, 12, 30, 48, 60, 143, 200)]
    grids += [
        np.arange(8300.0, 8360.0),  # whole eV, even steps
        np.r_[8200:8320:5, 8320:8340:2, 8340:8360:1, 8360:8400:2, 8400:8500:5.0],  # regions of whole-eV steps
        np.delete(np.arange(8300.0, 8360.0), [10, 30]),  # two frames left out
        np.round(ni_energy_grid(143)),  # a 5-eV grid rounded
    ]
    fxi = shared_data("spectra", "pyxas", "Ni_eng_list_from_stetef_repo.txt")  # keV, FXI's real list
    grids += [np.loadtxt(fxi) * 1000, np.round(np.loadtxt(fxi) * 1000)]
    for e in grids:
        assert rounded_energies_note(e, source="s") is None, np.diff(e)


def test_a_file_with_rounded_energies_gets_the_note(tmp_path, scene):
    from xanestrack.io import read_stack
    from xanestrack.io.hdf5 import write_fxi

    kw = dict(flats=scene.flats.astype(np.float32), darks=scene.dark[None])
    counts = scene.counts.round().astype(np.uint16)
    e = 8330.0 + 1.4 * np.arange(12)  # 1.4-eV steps: 1 and 2 eV rounded
    write_fxi(tmp_path / "r.h5", counts, energies_ev=np.round(e), **kw)
    write_fxi(tmp_path / "x.h5", counts, energies_ev=e, **kw)
    assert any("rounded to 1 eV" in n for n in read_stack(tmp_path / "r.h5").metadata["notes"])
    assert not any("rounded" in n for n in read_stack(tmp_path / "x.h5").metadata["notes"])


# ---------------------------------------------------------------- F8: the pixel size in nm


def test_pixel_size_in_nanometres_is_named(tmp_path, scene):
    from typer.testing import CliRunner

    from xanestrack.cli import app
    from xanestrack.io.hdf5 import write_fxi

    write_fxi(
        tmp_path / "s.h5",
        scene.counts.round().astype(np.uint16),
        flats=scene.flats.astype(np.float32),
        darks=scene.dark[None],
        energies_ev=scene.energies_ev,
    )
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.h5"), "--out", str(tmp_path / "o"), "--pixel-size", "21.3"])
    assert r.exit_code == 2 and not (tmp_path / "o").exists()
    assert "--pixel-size 21.3" in r.output and "--pixel-size 0.0213" in r.output and "nanometres" in r.output
    assert "--min-radius" not in r.output


def test_a_pixel_size_making_every_particle_sub_pixel_is_named(scene):
    """A pixel size of 9 um (from the files, or taken by the command line) made the default particles 0.044-0.89 px:
    the error named `min_radius` / `max_radius`, never the pixel size."""
    from xanestrack.sizes import particle_radius_range
    from xanestrack.stack import Stack

    od = _od(scene)
    with pytest.raises(XanestrackError, match="`pixel_size`") as exc:
        particle_radius_range(Stack(od, scene.energies_ev, 9.0, {"source": "s.h5"}))
    assert "nanometres" in str(exc.value) and "`max_radius`" in str(exc.value)
    lo, hi, _ = particle_radius_range(Stack(od, scene.energies_ev, 0.0213, {"source": "s.h5"}))  # FXI's: taken
    assert lo == pytest.approx(0.4 / 0.0213) and hi == pytest.approx((200 - 1) / 2)


# ---------------------------------------------------------------- messages: the energy axis last, the detector's frames


def test_energy_axis_last_is_asked_about(tmp_path, scene):
    import h5py
    import tifffile

    from xanestrack.io import read_stack

    counts = scene.counts.round().astype(np.uint16)  # (12, 200, 200)
    last = np.ascontiguousarray(np.moveaxis(counts, 0, -1))  # (200, 200, 12)
    np.savetxt(tmp_path / "e.txt", scene.energies_ev)
    tifffile.imwrite(tmp_path / "t.tif", (last / 60000).astype(np.float32))
    with pytest.raises(XanestrackError, match="200 frames but 12 energies.*energy axis last"):
        read_stack(tmp_path / "t.tif", energies=tmp_path / "e.txt", values="transmission")
    tifffile.imwrite(tmp_path / "n.tif", (counts[:10] / 60000).astype(np.float32))  # 10 frames: no side of 12
    with pytest.raises(XanestrackError, match="10 frames but 12 energies") as exc:
        read_stack(tmp_path / "n.tif", energies=tmp_path / "e.txt", values="transmission")
    assert "energy axis" not in str(exc.value)
    with h5py.File(tmp_path / "l.h5", "w") as f:  # FXI's layout, the images' energy axis last
        f["img_xanes"], f["img_bkg"], f["img_dark"] = last, scene.flats[:1], scene.dark[None]
        f["X_eng"] = scene.energies_ev / 1000
    with pytest.raises(XanestrackError, match=r"differ from the data images \(200, 12\).*energy axis last"):
        read_stack(tmp_path / "l.h5")


def test_the_detector_frames_are_counted(capsys):
    import pandas as pd

    from xanestrack.cli import _stage_summary
    from xanestrack.pipeline import PipelineOptions

    def said(n, every):
        det = pd.DataFrame({"frame": [0, 0], "isolated": [True, True]})
        res = SimpleNamespace(
            timings={},
            energies_ev=np.arange(n, dtype=float),
            detections=det,
            particles=[],
            rejected=[],
            options=PipelineOptions(detect_every=every),
        )
        _stage_summary(res)
        return capsys.readouterr().err.splitlines()[0]

    assert "in the 9 of 60 frames it ran in (one in 8)" in said(60, 12)
    assert "in all 60 frames" in said(60, 1)
