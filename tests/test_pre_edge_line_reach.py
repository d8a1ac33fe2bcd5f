"""A pre-edge line carried beyond its reach is not a scan in the wrong order (xanes._fall_back_note), and the frames
not vouched for lengthen it (xanes._pre_edge_from_unvouched).

A faint particle of stress-fines seed 2 (256 px, 60 energies, 5 particles) had three pre-edge frames vouched for,
8200-8224 eV, the others not: their line, carried to 8680 eV (20 times its span), took its mean normalised spectrum
from 0.98 down to 0.15 of its step at 8656-8680 eV, and the particle was refused, asked whether the frames were in
the order of the energies. Padded or transposed (its pre-edge frames 8200-8308 eV standing in), its E50 was within
0.04 eV of the truth.
"""

import numpy as np
import pytest
from typer.testing import CliRunner

from xanestrack import xanes
from xanestrack.cli import app
from xanestrack.result import particle_summary
from xanestrack.results import read_results
from xanestrack.synth_stress import make_scene
from xanestrack.truth_io import write_synthetic

E0 = 8345.0
#: three pre-edge frames 12 eV apart (vouched for), seven more up to E0 - 37 eV (not vouched for), the edge every
#: 1 eV from E0 - 14 eV, the post-edge every 24 eV to E0 + 335 eV (as the stress scenes' grid)
PRE = E0 - 145 + 12.0 * np.arange(10)
E = np.r_[PRE, np.arange(E0 - 14, E0 + 21, 1.0), np.arange(E0 + 70, E0 + 336, 24.0)]
#: the three frames vouched for read this much of the step off their line (noise rising across them by chance)
TILT = np.array([-0.025, 0.0, 0.025])


def _particle(tilt=True, seed=0):
    """An arctan edge at E0 (step 1, pre-edge OD 0.3 falling 0.02 per 100 eV) on a disc; ``vouched``: every frame
    but pre-edge frames 4-10."""
    yy, xx = np.mgrid[:41, :41]
    m = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    spec = 0.3 - 0.02 * (E - E0) / 100 + 0.5 + np.arctan((E - E0) / 2.0) / np.pi
    if tilt:
        spec[:3] += TILT
    a = np.zeros((E.size, *m.shape), np.float32)
    a[:, m] = spec[:, None]
    a += np.random.default_rng(seed).normal(0, 0.002, a.shape).astype(np.float32)
    vouched = np.ones(E.size, bool)
    vouched[3:10] = False
    return a, m, vouched


def _e50(out, m):
    e50 = out["edge_maps"]["e50"][m]
    return float(np.median(e50)) if np.isfinite(e50).any() else np.nan


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_short_pre_edge_line_is_lengthened_by_the_frames_not_vouched_for():
    a, m, v = _particle()
    out = xanes.analyse_particle(a, m, E, usable=v, pre_usable=~v, uncertainty=False)
    assert not any(n.startswith("XANES failed") for n in out["notes"]), out["notes"]
    (took,) = [n for n in out["notes"] if n.startswith(xanes.PRE_UNVOUCHED_NOTE)]
    assert "7 frames not vouched for" in took and "carried across the scan" in took
    every = xanes.analyse_particle(a, m, E, uncertainty=False)  # every frame used
    assert abs(_e50(out, m) - _e50(every, m)) < 0.01 and abs(_e50(out, m) - E0) < 0.1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_them_the_refusal_names_the_line_not_the_frames_order():
    a, m, v = _particle()
    out = xanes.analyse_particle(a, m, E, usable=v, uncertainty=False)
    (note,) = [n for n in out["notes"] if n.startswith("XANES failed")]
    assert xanes.FALL_BACK_NOTE in note and xanes.FALL_BEYOND_LINE in note
    assert "are the frames in the order" not in note
    assert f"{E[0]:.1f}-{E[2]:.1f} eV (a span of 24.0 eV)" in note
    # the control: a fall just above the edge, within the line's reach (frames out of order), still asks about
    # their order, the same words as without the line's range
    norm = np.where(E > E0 + 5, 0.05, np.clip((E - E0 + 5) / 10, 0, 1))
    norm[E > E0 + 15] = 1.0
    within = xanes._fall_back_note(E, norm, (E[0], E[2]))
    assert "are the frames in the order" in within and xanes.FALL_BEYOND_LINE not in within
    assert within == xanes._fall_back_note(E, norm)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_controls_nothing_changes_where_the_line_holds():
    # the same frames without the chance tilt: analysed on the frames vouched for alone, nothing stands in
    a, m, v = _particle(tilt=False)
    out = xanes.analyse_particle(a, m, E, usable=v, pre_usable=~v, uncertainty=False)
    assert not any(n.startswith(("XANES failed", xanes.PRE_UNVOUCHED_NOTE)) for n in out["notes"]), out["notes"]
    alone = xanes.analyse_particle(a, m, E, usable=v, uncertainty=False)
    assert np.array_equal(out["edge_maps"]["e50"], alone["edge_maps"]["e50"], equal_nan=True)


def test_the_stress_fines_particle_gets_its_e50(tmp_path):
    # the probe's scene, written as `xanestrack synth` writes it and run as `xanestrack run` runs it (learned path)
    s = make_scene("stress-fines", seed=2, n_energies=60, shape=(256, 256), n_particles=5)
    (tmp_path / "scene").mkdir()
    write_synthetic(s, tmp_path / "scene", preset="stress-fines")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["--quiet", "run", str(tmp_path / "scene" / "stack.h5"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = read_results(out)
    summ = particle_summary(result).set_index("particle")
    failed = [n for p in result.particles for n in p.notes if n.startswith("XANES failed")]
    assert summ["mean_e50_ev"].notna().all() and not failed, failed
    (told,) = [p for p in result.particles if any(n.startswith(xanes.PRE_UNVOUCHED_NOTE) for n in p.notes)]
    truth = float(np.nanmean(s.truth.edge_maps[1]))  # the truth particle it is (8344.08 eV)
    assert abs(np.nanmedian(told.positions[:, 0]) - 19) < 2 and abs(np.nanmedian(told.positions[:, 1]) - 164) < 2
    assert abs(summ.loc[told.particle, "mean_e50_ev"] - truth) < 0.2
