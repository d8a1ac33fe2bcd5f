"""A particle first found after the stage moved: its aligned window is centred on it (pipeline._aligned_masks).

The probe's scene (round 13, finding 1), reduced: the stage jumps +20 px in x at frame 8 (pre-edge) and brings a
radius-12 particle with a chemical gradient (LiNiO2 share 0.2 -> 0.8 along x) whole into the field; before, it lies
partly outside the left border. Its window was placed at its first located position while the aligned grid's
shifts run from frame 0's position (filled from the common motion): the window sat 20 px off the particle, which
its 0.3 r + 6 px margin cut. Radius 11.89 -> 9.47 px, mean E50 +0.23 eV (4.7 sigma), LiNiO2 fraction 0.500 ->
0.597 +- 0.015, pixel flags 0, nothing said. The control: the same particle in view throughout.
"""

import numpy as np
import pytest

from xanestrack import pipeline
from xanestrack.pipeline import WINDOW_CUT_NOTE, run_pipeline
from xanestrack.result import particle_summary
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import ni_energy_grid

N_E, SHAPE, JUMP, AT = 60, (160, 160), 20.0, 8
R = 12.0


def _gradient(ly, lx):
    return np.clip(0.5 + 0.3 * lx / R, 0, 1)


def _scene(jump: float, seed: int = 5):
    """OD stack and energies: particle 0 (r 12, the gradient) at x = 15 after a +``jump`` px stage jump at frame 8
    (control ``jump=0``: at x = 40 throughout), three uniform particles (LiNiO2 share 0.5-0.7) in view."""
    rng = np.random.default_rng(seed)
    e = ni_energy_grid(N_E)
    refs = ni_references()
    mu_a, mu_b = refs["NiO"](e), refs["LiNiO2"](e)
    pre = 0.25 * (e / 8333.0) ** -3
    k = np.arange(N_E)
    common = np.stack([0.1 * np.sin(k / 4), np.where(k >= AT, jump, 0.0)], axis=1)
    x0 = 15.0 - jump if jump > 0 else 40.0
    parts = [((80.0, x0), R, None), ((40.0, 90.0), 13.0, 0.6), ((120.0, 85.0), 12.0, 0.5), ((80.0, 110.0), 11.0, 0.7)]
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    od = np.empty((N_E, *SHAPE), np.float32)
    counts = 5000.0
    for j in range(N_E):
        a = np.full(SHAPE, 0.06)
        for (cy, cx), r, f in parts:
            c = np.array([cy, cx]) + common[j]
            rho = np.hypot(yy - c[0], xx - c[1])
            u = np.clip(rho / r, 0, 1)
            thick = 0.8 * np.clip(r - rho + 0.5, 0, 1) * ((1 - u**2) ** 0.3 + 0.15) / 1.15
            share = _gradient(yy - c[0], xx - c[1]) if f is None else f
            a += thick * (pre[j] + (1 - share) * mu_a[j] + share * mu_b[j])
        od[j] = -np.log(np.maximum(rng.poisson(counts * np.exp(-a)), 1) / counts)
    return od, e


@pytest.fixture(scope="module")
def runs():
    """``{jump: (result, summary row of the gradient particle)}`` for the jump and its control."""
    out = {}
    for jump in (JUMP, 0.0):
        od, e = _scene(jump)
        result = run_pipeline(Stack(od, e))
        s = particle_summary(result).set_index("particle")
        pid = int(s["x0"].idxmin())  # the gradient particle lies leftmost
        out[jump] = result, s.loc[pid], next(p for p in result.particles if p.particle == pid)
    return out


def test_an_entering_particle_sits_at_its_window_centre_and_is_read_whole(runs):
    _, row, p = runs[JUMP]
    _, ctl, q = runs[0.0]
    # read whole: as the control in view throughout (truth radius 12, LiNiO2 share 0.5 over it); the frames 0-7
    # it misses are pre-edge frames (the probe measured them at +0.06 eV at most). Before the mend: 9.82 px,
    # E50 +0.20 eV against the control's, LiNiO2 0.586 (with the fix 11.92 px, +0.06 eV, 0.502)
    assert abs(row["radius_px"] - ctl["radius_px"]) < 0.3 and abs(row["radius_px"] - R) < 0.5, row["radius_px"]
    assert abs(row["mean_e50_ev"] - ctl["mean_e50_ev"]) < 0.1, (row["mean_e50_ev"], ctl["mean_e50_ev"])
    assert abs(row["oxidised_fraction"] - 0.5) < 0.03, row["oxidised_fraction"]
    assert abs(ctl["oxidised_fraction"] - 0.5) < 0.03, ctl["oxidised_fraction"]
    # at its window's centre: the window placed by frame 0's position, which its shifts run from (the particle
    # out of the field there)
    mask = np.asarray(p.mask, bool)
    half = mask.shape[0] // 2
    yy, xx = np.nonzero(mask)
    assert abs(yy.mean() - half) < 1.0 and abs(xx.mean() - half) < 1.0, (yy.mean(), xx.mean(), half)
    assert np.array_equal(p.origin, np.round(p.positions[0]).astype(int) - half)
    # nothing says it is cut by its window, nor the control's
    for r in (p, q):
        assert not any(n.startswith(WINDOW_CUT_NOTE) for n in r.notes), r.notes


def test_the_other_particles_do_not_move_with_the_fix(runs):
    # particles located in frame 0 keep the window they had (origin from frame 0's position either way)
    for jump in (JUMP, 0.0):
        result, _, p = runs[jump]
        for q in result.particles:
            if q.particle != p.particle:
                half = q.mask.shape[0] // 2
                assert np.array_equal(q.origin, np.round(q.positions[0]).astype(int) - half)
                assert not any(n.startswith(WINDOW_CUT_NOTE) for n in q.notes)


def test_a_particle_cut_by_its_window_is_said(monkeypatch):
    # the window placed as before the mend (at the first located position, the shifts from frame 0's): the
    # particle is cut, and its note says so rather than giving a clipped particle's numbers unsaid
    aligned_masks = pipeline._aligned_masks

    def before(loc, v):
        origin, shifts, _ = aligned_masks(loc, v)
        if v.located.any():
            half = loc.half
            origin = np.round(v.positions[int(np.flatnonzero(v.located)[0])]).astype(int) - half
        size = 2 * loc.half + 1
        return origin, shifts, pipeline.resample_masks(loc.seg.masks, loc.seg.origins, shifts, origin, (size, size))

    monkeypatch.setattr(pipeline, "_aligned_masks", before)
    od, e = _scene(JUMP)
    result = run_pipeline(Stack(od, e))
    s = particle_summary(result).set_index("particle")
    pid = int(s["x0"].idxmin())
    p = next(p for p in result.particles if p.particle == pid)
    assert s.loc[pid, "radius_px"] < R - 1.5  # clipped (the probe's 9.47 px)
    (note,) = [n for n in p.notes if n.startswith(WINDOW_CUT_NOTE)]
    assert "mean E50" in note
    assert not any(n.startswith(WINDOW_CUT_NOTE) for q in result.particles if q.particle != pid for n in q.notes)


def test_the_window_cut_note_reads_the_band_and_the_share_of_frames():
    e = ni_energy_grid(10)
    masks = np.zeros((10, 21, 21), np.float32)
    masks[:, 5:16, 5:16] = 1.0
    use = np.ones(10, bool)
    mask = masks[0] > 0.5
    assert pipeline._window_cut_note(masks, use, mask, e) == ""
    cut = masks.copy()
    cut[:2, 1:16, 5:16] = 1.0  # 2 of 10 frames reach 1 px from the top: under the share, the consensus inside
    assert pipeline._window_cut_note(cut, use, mask, e) == ""
    cut[:5, 1:16, 5:16] = 1.0  # 5 of 10
    note = pipeline._window_cut_note(cut, use, mask, e)
    assert note.startswith(WINDOW_CUT_NOTE) and "5 frames of 10 used" in note
    wide = mask.copy()
    wide[0:16, 5:16] = True
    note = pipeline._window_cut_note(masks, use, wide, e)
    assert "its mask over its frames used" in note
    assert pipeline._window_cut_note(cut, np.zeros(10, bool), wide, e) == ""
    # one frame's own mask alone (of 2 used) is not enough: the real SSRL pair's frame-0 mask of another object
    two = np.zeros(10, bool)
    two[:2] = True
    one = masks.copy()
    one[0, 0:16, 5:16] = 1.0
    assert pipeline._window_cut_note(one, two, mask, e) == ""


def test_the_chemistry_figure_says_a_particle_lies_partly_outside_the_first_frame(runs):
    """Review r52: an entering particle, read whole, is drawn over the first frame where it lay (partly) outside
    the field; the chemistry figure's caption says so (a particle wholly outside had been left out of it without a
    word). The control, in view throughout: nothing said."""
    from xanestrack.report import chemistry_figure

    result, _, p = runs[JUMP]
    caption = chemistry_figure(result).caption
    assert f"Particle {p.particle} drawn in part: outside the first frame's field" in caption, caption
    ctl, _, _ = runs[0.0]
    assert "outside the first frame's field" not in chemistry_figure(ctl).caption
