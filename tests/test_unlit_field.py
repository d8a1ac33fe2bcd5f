"""A field of view not lit to its corners (a capillary condenser's round field, a beam smaller than the detector):
the images and flats at the dark level outside a lit circle. It was refused by raw counts ("flat minus dark is zero
or negative ... swapped?"), called optical density as FXI's normalised export, and as transmission its corners took
the frames' strongest absorption (no particle found). Flats and darks truly swapped, or a beam that was off, are
still refused."""

import h5py
import numpy as np
import pytest

from conftest import pair_by_position
from xanestrack.errors import XanestrackError
from xanestrack.evaluate import evaluate_result
from xanestrack.io import optical_density, read_stack
from xanestrack.pipeline import run_pipeline
from xanestrack.synth import make_synthetic_stack

SIZE = 160
#: px: the lit circle, as the probe's (120 px of 256): 31 % of the frame unlit
R = 75.0


@pytest.fixture(scope="module")
def scene():
    """24 energies, 160 x 160, 4 particles (seed 5: one reaches the field's edge, r 75.2 px), and the field."""
    s = make_synthetic_stack(
        "default", seed=5, n_energies=24, shape=(SIZE, SIZE), n_particles=4, radius_range=(10.0, 18.0)
    )
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2) > R
    return s, out


def _write(path, counts, flats, dark, energies):
    with h5py.File(path, "w") as h:
        h["img_xanes"], h["img_bkg"], h["img_dark"], h["X_eng"] = counts, flats, dark[None], energies
    return path


def _unlit(s, out, stray=0.0, seed=3):
    """Counts and flats with the dark level plus read noise (or ``stray`` of the beam) outside the circle."""
    rng = np.random.default_rng(seed)
    c, f, d = s.counts.astype(float), s.flats.astype(float), s.dark.astype(float)
    for a in (c, f):
        a[:, out] = d[out] + stray * (a[:, out] - d[out]) + rng.normal(0, 3, (a.shape[0], int(out.sum())))
    return c, f, d


def _check_run(s, out, stack):
    r = run_pipeline(stack)
    table, _ = evaluate_result(r, s.truth)
    # every particle found, in place (the one reaching the field's edge too: 0.09 px at worst)
    assert (table.particle >= 0).all() and (table.rms_px < 0.3).all(), table
    # and none in or at the edge of the unlit region: each run particle is a true one
    tp = s.truth.positions
    true0 = tp[tp.frame == 0].sort_values("particle")[["y", "x"]].to_numpy()
    est0 = [p.positions[0] for p in r.particles]
    assert len(pair_by_position(est0, true0, tol=2.0)) == len(est0) <= 4
    return r


def test_raw_counts_of_a_round_field_are_read_with_the_corners_left_out(scene, tmp_path):
    s, out = scene
    c, f, d = _unlit(s, out)
    p = _write(tmp_path / "scan.h5", np.clip(c, 0, 65535).astype(np.uint16), f.astype(np.uint16), d, s.energies_ev)
    st = read_stack(p)
    (note,) = [n for n in st.metadata["notes"] if "unlit" in n]
    assert "31% of the frame" in note and "in every flat (reference) image" in note
    # the corners: the lit field's median in every frame, nothing of the dark level's noise
    assert np.all(np.ptp(st.od[:, out], axis=1) == 0)
    assert np.allclose(st.od[:, out][:, 0], np.median(st.od[:, ~out], axis=1), atol=1e-4)  # zingers replaced since
    _check_run(s, out, st)


def test_the_normalised_export_of_a_round_field_is_transmission(scene, tmp_path):
    """FXI's export (I - D) / (F - D), 0 +- 0.02 outside the field, beside its flats: taken as transmission."""
    s, out = scene
    c, f, d = _unlit(s, out)
    rng = np.random.default_rng(4)
    t = ((c - d) / np.where(out, 1.0, f - d)).astype(np.float32)
    t[:, out] = rng.normal(0, 0.02, (t.shape[0], int(out.sum())))
    p = _write(tmp_path / "scan.h5", t, f.astype(np.float32), d, s.energies_ev)
    st = read_stack(p)
    notes = " | ".join(st.metadata["notes"])
    assert "normalised already" in notes and "unlit in every frame (transmission near 0)" in notes
    assert "or sample too thick to transmit" in notes  # without flats, unlit and opaque look alike
    assert "do not look like transmission" not in notes
    _check_run(s, out, st)
    # said to be optical density, it is said to look like transmission (it was silent: 1 "particle", 48.7 px off)
    st = read_stack(p, values="od")
    assert any("look like transmission I/I0" in n for n in st.metadata["notes"])


def test_stray_light_outside_the_field_is_no_unlit_field(scene, tmp_path):
    """3 % of the beam outside the circle: measured as it is, as before (the rule does not fire)."""
    s, out = scene
    c, f, d = _unlit(s, out, stray=0.03)
    p = _write(tmp_path / "scan.h5", np.clip(c, 0, 65535).astype(np.uint16), f.astype(np.float32), d, s.energies_ev)
    st = read_stack(p)
    assert not [n for n in st.metadata["notes"] if "unlit" in n]
    assert np.ptp(st.od[0][out]) > 0.1  # measured, not filled


def test_the_default_scene_has_no_unlit_field():
    s = make_synthetic_stack(
        "default", seed=1, n_energies=12, shape=(160, 160), n_particles=3, radius_range=(10.0, 18.0)
    )
    notes = []
    od = optical_density(s.counts, flats=s.flats, darks=s.dark[None], notes=notes)
    assert not [n for n in notes if "unlit" in n]
    assert np.allclose(od, s.optical_density())


def test_swapped_flats_and_darks_or_a_beam_off_are_still_refused(scene):
    s, out = scene
    c, f, d = _unlit(s, out)
    # flats and darks swapped: flat minus dark negative wherever the beam was
    with pytest.raises(XanestrackError, match="flat minus dark is zero or negative.*swapped"):
        optical_density(c, flats=np.broadcast_to(d, f.shape), darks=f.mean(axis=0)[None])
    # flats taken with the beam off: the dark level and its noise everywhere
    rng = np.random.default_rng(5)
    off = d + rng.normal(0, 3, f.shape)
    with pytest.raises(XanestrackError, match="flat minus dark is zero or negative.*the beam was on"):
        optical_density(c, flats=off, darks=d[None])
    # so without the round field
    c, f = s.counts, s.flats
    with pytest.raises(XanestrackError, match="flat minus dark is zero or negative.*swapped"):
        optical_density(c, flats=np.broadcast_to(s.dark, f.shape), darks=f.mean(axis=0)[None])
