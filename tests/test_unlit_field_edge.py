"""A particle that the edge of the beam's lit field (a capillary condenser's round field) cuts is flagged out of
view in those frames, as at the frame's border: the reader keeps the pixels outside the field
(``Stack.metadata["unlit"]``) and every particle's windows take them as outside the frame. It was measured cut and
vouched for (the note said "measured cut (not flagged out of view)")."""

import numpy as np
import pytest
from test_unlit_field import _unlit, _write

from xanestrack.evaluate import evaluate_result
from xanestrack.io import read_stack
from xanestrack.pipeline import run_pipeline
from xanestrack.result import FRAME_FLAGS
from xanestrack.synth import make_synthetic_stack

SIZE = 256
#: px: the lit disc, centred at CENTRE: particle 3 (r 9.5 px) lies 7.8-9.0 px inside it in the 12 frames before the
#: edge and reaches 1.3-2.6 px beyond it in the 28 from 8334.8 eV on; particles 0-2 lie 45 px inside it or more.
#: 27 % of the frame unlit
CENTRE, R = (120.0, 136.0), 124.0
OOV = FRAME_FLAGS["out_of_view"]


@pytest.fixture(scope="module")
def scene():
    """40 energies, 256 x 256, 4 particles (default, seed 1), and the pixels outside the disc."""
    s = make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(SIZE, SIZE), n_particles=4, radius_range=(10.0, 16.0)
    )
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.hypot(yy - CENTRE[0], xx - CENTRE[1]) > R
    return s, out


def _run(s, c, f, d, path, images=None):
    """Read the scene written as counts (or ``images``: FXI's normalised export) and run it."""
    images = np.clip(c, 0, 65535).astype(np.uint16) if images is None else images
    st = read_stack(_write(path, images, f.astype(np.uint16), d, s.energies_ev))
    r = run_pipeline(st)
    table, _ = evaluate_result(r, s.truth)
    found = {
        int(t.truth_particle): r.particles[[p.particle for p in r.particles].index(t.particle)]
        for t in table.itertuples()
        if t.particle >= 0
    }
    return st, r, table.set_index("truth_particle"), found


def _reach(s, j):
    """px: how far particle ``j``'s true disc reaches beyond the lit circle, frame by frame."""
    tp = s.truth.positions
    p = tp[tp.particle == j].sort_values("frame")[["y", "x"]].to_numpy()
    return np.hypot(p[:, 0] - CENTRE[0], p[:, 1] - CENTRE[1]) + s.truth.radii[j] - R


@pytest.mark.parametrize("values", ["counts", "transmission"])
def test_a_particle_the_field_edge_cuts_is_flagged_out_of_view(scene, tmp_path, values):
    """Raw counts beside flats (the field found in the flats), and FXI's export I/I0, 0 +- 0.02 outside the field
    (found without the flats)."""
    s, out = scene
    c, f, d = _unlit(s, out)
    images = None
    if values == "transmission":
        images = ((c - d) / np.where(out, 1.0, f - d)).astype(np.float32)
        images[:, out] = np.random.default_rng(4).normal(0, 0.02, (images.shape[0], int(out.sum())))
    st, r, table, found = _run(s, c, f, d, tmp_path / "scan.h5", images)
    # the disc's outside, as drawn (without flats, found in the images smoothed: 4 pixels of the rim more)
    assert np.count_nonzero(st.metadata["unlit"] != out) <= (0 if values == "counts" else 20)
    (note,) = [n for n in st.metadata["notes"] if "unlit" in n]
    assert "27% of the frame" in note and "flagged out of view in those frames" in note
    # the cut particle: flagged in every frame its true disc reaches beyond the circle, in none where it lies inside
    # (it was measured cut and vouched for in all 40 frames, none flagged: 0.15 px RMS from the truth, 0.28 px at
    # worst; 0.03 px with the field lit)
    reach = _reach(s, 3)
    oov = (np.asarray(found[3].frame_flags) & OOV) > 0
    assert oov[reach > 1].all() and not oov[reach < -5].any(), (reach.round(1), oov)
    assert (reach > 1).sum() == 28 and (reach < -5).sum() == 12
    # ... and its flagged frames are left out of its XANES as at the frame's border (here every post-edge frame)
    said = f"no XANES for 1 of 4 particles ({found[3].particle})"
    assert any(said in n and "the particle leaves the frame" in n for n in r.notes)
    # the particles inside the disc: none flagged, in place (0.03-0.05 px RMS, as with the field lit)
    for j in (0, 1, 2):
        assert not (np.asarray(found[j].frame_flags) & OOV).any()
        assert table.loc[j, "rms_px"] < 0.1 and table.loc[j, "frames_vouched"] == 40


def test_the_same_scene_lit_to_its_corners_flags_nothing_out_of_view(scene, tmp_path):
    s, _ = scene
    c, f, d = s.counts.astype(float), s.flats.astype(float), s.dark.astype(float)
    st, r, table, found = _run(s, c, f, d, tmp_path / "scan.h5")
    assert "unlit" not in st.metadata and not [n for n in st.metadata["notes"] if "unlit" in n]
    assert len(found) == 4 and not any((np.asarray(p.frame_flags) & OOV).any() for p in r.particles)
    assert (table.rms_px < 0.1).all()


def test_an_unlit_mask_of_another_shape_is_refused(scene):
    """A Stack whose frames were cropped after reading, its mask not: said, not used misplaced."""
    from xanestrack.stack import Stack

    s, out = scene
    st = Stack(s.optical_density()[:, 8:, 8:], s.energies_ev, None, dict(source="cropped", values="od", unlit=out))
    with pytest.raises(ValueError, match=r"metadata\['unlit'\].*\(248, 248\).*crop or bin it as the frames were"):
        run_pipeline(st)
