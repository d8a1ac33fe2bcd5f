"""Particle sizes on cropped frames (a detector region of interest, a crop of a large frame) and the
note on the scale fitted to a scan of two energies."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xanestrack.errors import XanestrackError
from xanestrack.sizes import particle_radius_range


def _frames(shape, pixel_size_um=None):
    """What :func:`particle_radius_range` reads of a stack: the frames' shape, the pixel size, the source."""
    return SimpleNamespace(
        od=np.zeros((1, *shape), np.float32), pixel_size_um=pixel_size_um, metadata={"source": "crop.h5"}
    )


# ---- the radius range of a cropped frame ------------------------------------------------------------------


def test_largest_radius_in_frame_is_the_linkers_rule_for_a_particle_in_view():
    from xanestrack.linking import _in_view
    from xanestrack.sizes import largest_radius_in_frame

    r = largest_radius_in_frame((256, 300))
    assert r == 127.5
    centre = [[127.5, 149.5]]
    assert _in_view(centre, (0, 0), (256, 300), radius=[r]) == 1
    assert _in_view(centre, (0, 0), (256, 300), radius=[r + 0.01]) == 0


@pytest.mark.parametrize("pixel_size_um", [0.0213, 0.01, 0.03])
def test_a_real_pixel_size_on_a_crop_clips_the_largest_radius(pixel_size_um):
    """FXI's own 21.3 nm (and 10, 30 nm) on a 256 x 256 crop: 8 um is 267-800 px, more than the frame. It was
    refused as "the pixel size is wrong"; the largest radius is what the frame holds whole, and a warning says so."""
    notes = []
    lo, hi, binning = particle_radius_range(_frames((256, 256), pixel_size_um), notes=notes)
    assert lo == pytest.approx(0.4 / pixel_size_um) and hi == 127.5 and 1 <= binning <= 4
    (msg,) = notes
    assert "crop.h5" in msg and "8 um" in msg and "127.5 px" in msg and "`max_radius`" in msg
    # the learned detector's binning follows the clipped radius, not 8 um
    from xanestrack.models.detector import detector_binning

    assert particle_radius_range(_frames((256, 256), pixel_size_um), detector="learned").binning == detector_binning(
        127.5, binning
    )


def test_non_square_crop_and_unknown_pixel_size_clip_to_the_short_side():
    notes = []
    a = particle_radius_range(_frames((96, 400)), notes=notes)
    b = particle_radius_range(_frames((400, 96), 0.0213), notes=notes)
    assert a[:2] == (7.0, 47.5)  # 60 px by default
    assert b[:2] == pytest.approx((0.4 / 0.0213, 47.5))
    assert len(notes) == 2 and all("47.5 px" in n for n in notes)


def test_a_range_the_frame_holds_and_radii_given_are_unchanged():
    # SSRL's 1024 x 1024 at 31.2 nm: 8 um is 256 px, inside the frame
    notes = []
    a = particle_radius_range(_frames((1024, 1024), 0.0312), notes=notes)
    assert a[:2] == pytest.approx((0.4 / 0.0312, 8 / 0.0312)) and not notes
    # a largest radius given is used as given (at most the frame size, as before)
    b = particle_radius_range(_frames((256, 256), 0.0213), max_radius=200.0, notes=notes)
    assert b[:2] == pytest.approx((0.4 / 0.0213, 200.0)) and not notes
    # the clip keeps a smallest radius given
    c = particle_radius_range(_frames((256, 256), 0.0213), min_radius=5.0, notes=notes)
    assert c[:2] == (5.0, 127.5) and len(notes) == 1 and "127.5 px" in notes[0]


def test_refused_only_where_the_smallest_radius_does_not_fit():
    # 0.4 um at 21.3 nm is 18.8 px: no whole particle of that radius in 30 x 30 frames (at most 14.5 px)
    with pytest.raises(XanestrackError) as e:
        particle_radius_range(_frames((30, 30), 0.0213))
    msg = str(e.value)
    assert "crop.h5" in msg and "do not fit whole in frames of 30 x 30" in msg and "14.5 px" in msg
    assert "`min_radius`" in msg and "pixel size is wrong" not in msg
    with pytest.raises(XanestrackError, match="7 px .*no pixel size.*do not fit whole in frames of 12 x 40"):
        particle_radius_range(_frames((12, 40)))
    # a smallest radius given that no whole particle has, the largest a default
    with pytest.raises(XanestrackError, match="`min_radius` 200 px: no particle of that radius lies whole"):
        particle_radius_range(_frames((256, 256), 0.0213), min_radius=200.0)
    # one end given against the other's default: the message names the default and the option to give
    with pytest.raises(XanestrackError, match=r"`max_radius` 10 px is not above the smallest particle radius, 0.4 um"):
        particle_radius_range(_frames((256, 256), 0.0213), max_radius=10.0)
    # radii given that the frame cannot hold: refused as before
    with pytest.raises(XanestrackError, match="at most the frame size"):
        particle_radius_range(_frames((256, 256), 0.0213), min_radius=5.0, max_radius=300.0)


def test_series_takes_the_same_clipped_range(tmp_path):
    """``series`` shares run's sizes: a 1-frame FXI crop of 200 x 200 at 21.3 nm runs (it was refused)."""
    import json

    from xanestrack.io.hdf5 import write_fxi
    from xanestrack.parallel.series import process_scan, series_sources
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=4, shape=(200, 200), n_particles=3, radius_range=(20.0, 26.0), n_energies=2
    )
    p = tmp_path / "crop.h5"
    write_fxi(p, s.counts[:1], flats=s.flats[:1], darks=s.dark, energies_ev=s.energies_ev[:1], pixel_size_um=0.0213)
    src = series_sources([p])[0]
    rows = process_scan(src, tmp_path / "out", detector="classical", segmenter="classical")
    info = json.loads((tmp_path / "out" / "scans" / src.name / "summary.json").read_text())
    assert info["radius_range_px"] == pytest.approx([0.4 / 0.0213, 99.5])
    assert any("up to a radius of 99.5 px" in n for n in info["notes"]), info["notes"]  # said, not only logged
    assert len(rows) >= 1


# ---- the scale fitted to a scan of two energies -----------------------------------------------------------


def _two_frame_motion(scale, lever=100.0):
    from xanestrack.motion_notes import _two_frame_scale_note

    c = (127.5, 127.5)
    ang = np.linspace(0, 2 * np.pi, 4, endpoint=False)
    y, x = c[0] + lever * np.sin(ang), c[1] + lever * np.cos(ang)
    motion = pd.DataFrame(dict(particle=np.r_[0:4, 0:4], frame=[0] * 4 + [1] * 4, y=np.r_[y, y], x=np.r_[x, x]))
    sim = pd.DataFrame(dict(frame=[0, 1], common_dy=[0.0, 0.0], common_dx=[0.0, 0.0], scale=[1.0, scale]))
    sim.attrs["centre"] = list(c)
    return _two_frame_scale_note(motion, sim)


def test_two_frame_scale_note_threshold():
    """Said where the scale moves the particles by 0.5 px or more at their median distance from the centre."""
    assert _two_frame_motion(1.0) == ""
    assert _two_frame_motion(1.004) == ""  # 0.4 px at 100 px
    note = _two_frame_motion(0.994)  # 0.6 px
    assert "two energies" in note and "0.9940" in note and "-0.6 %" in note and "0.6 px" in note
    assert "relative to this scale" in note


def test_two_energy_scan_says_the_scale_its_own_motions_are_relative_to():
    """The probe's scene (default, seed 5, 4 particles): two energies fit a 2.8-2.9 % magnification with no note
    (the still particle reported moving 3.4 px on its own); now a note says the scale and that the own motions are
    relative to it, printed by the CLI. The fit itself is unchanged, and three energies get no such note."""
    from xanestrack.pipeline import CONSOLE_NOTE_WORDS, run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=5, shape=(256, 256), n_energies=2, n_particles=4)
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    assert len(r.particles) == 4
    scale = float(r.similarity["scale"].iloc[1])
    assert scale == pytest.approx(1.028, abs=0.003)  # as fitted before: only said now
    (note,) = [n for n in r.notes if n.startswith("two energies")]
    assert f"{scale:.4f}" in note and "relative to this scale" in note
    assert any(w in note for w in CONSOLE_NOTE_WORDS)  # `run` prints it

    s3 = make_synthetic_stack("default", seed=5, shape=(256, 256), n_energies=3, n_particles=4)
    r3 = run_pipeline(Stack(s3.optical_density(), s3.energies_ev))
    assert not [n for n in r3.notes if n.startswith("two energies")]
