"""A particle that enters the field mid-scan: its XANES, its mean E50 and its displacements.

The scene of the geometry probe: the default scene (320 x 320, seed 11, 5 particles, 60 energies) seen through
a 320 x 200 window whose origin slides from x = 60 to x = 0 across the scan. One particle (r = 32 px) is cut by
the left border until frame 30 (8349 eV, past its edge's rise): its XANES gave a mean E50 33 eV high with a
0.19 eV sigma, and its dy, dx were 2.6 px off in every frame vouched for.
"""

import re

import numpy as np
import pandas as pd
import pytest

from conftest import one_particle_result, stress_disc
from xanestrack import xanes
from xanestrack.pipeline import run_pipeline
from xanestrack.result import FRAME_FLAGS, core_mask, core_pixels, particle_summary
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack, ni_energy_grid


@pytest.fixture(scope="module")
def entering():
    """The pipeline's result on the sliding window, and the truth's positions in the window's pixels."""
    s = make_synthetic_stack("default", seed=11, n_energies=60, shape=(320, 320), n_particles=5)
    od = s.optical_density()
    n = od.shape[0]
    ox = np.round(np.linspace(60, 0, n)).astype(int)
    window = np.stack([od[k, :, ox[k] : ox[k] + 200] for k in range(n)])
    truth = s.truth.positions.copy()
    truth["x"] = truth["x"] - ox[truth["frame"].to_numpy()]
    return run_pipeline(Stack(np.ascontiguousarray(window), s.energies_ev)), truth


def _entering_particle(result, truth):
    """The particle cut by the border in the first frames, and its truth (paired by position)."""
    out = FRAME_FLAGS["out_of_view"]
    (p,) = [p for p in result.particles if (p.frame_flags[:10] & out).all()]
    med = truth.groupby("particle")[["y", "x"]].median()
    g = result.tracks[result.tracks["particle"] == p.particle]
    j = int(np.argmin(np.hypot(med["y"] - g["y"].median(), med["x"] - g["x"].median())))
    return p, g.set_index("frame"), truth[truth["particle"] == med.index[j]].set_index("frame")


def test_an_entering_particle_whose_frames_used_start_past_its_edge_has_its_xanes_declined(entering):
    result, truth = entering
    p, _, _ = _entering_particle(result, truth)
    used = np.asarray(p.xanes_frames, bool)
    assert result.energies_ev[used][0] > 8345  # the frames used start past the edge's rise
    assert all(np.isnan(m).all() for m in p.edge_maps.values()) and np.isnan(p.e0_ev)
    (note,) = [n for n in p.notes if n.startswith("XANES failed")]
    assert "the frames used hold 0 energies in the pre-edge range" in note
    assert abs(float(note.split("(E0 ")[1].split(" eV")[0]) - 8341.0) < 5  # its edge, truly E50 8341.0 eV
    row = particle_summary(result).set_index("particle").loc[p.particle]
    assert np.isnan(row["mean_e50_ev"]) and np.isnan(row["mean_e50_sigma_ev"])
    # the other particles keep theirs, and the report's shared colour scale is theirs (it stretched to 8374 eV)
    from xanestrack.report import _e50_limits

    others = particle_summary(result).set_index("particle").drop(p.particle)["mean_e50_ev"]
    assert np.isfinite(others).all() and (np.abs(others - 8340.5) < 1.0).all()
    lo, hi = _e50_limits(result)
    assert 8335 < lo < hi < 8346


def test_an_entering_particle_is_displaced_from_its_first_frame_vouched_for(entering):
    # its position before it entered is not measured: its displacement from there assumed it had not moved on
    # its own (2.6 px off the truth in every frame vouched for, no flag); now from its first frame vouched for
    result, truth = entering
    p, g, t = _entering_particle(result, truth)
    vouched = g["flags"].astype(str).isin(["", "nan"])
    k0 = int(vouched.idxmax())
    assert k0 > 20 and vouched.loc[k0:].all()
    assert g.loc[k0, "dy"] == 0 and g.loc[k0, "dx"] == 0
    assert g.loc[k0, "rigid_dy"] == 0 and g.loc[k0, "rigid_dx"] == 0
    k = g.index[vouched]
    err = np.hypot(g.loc[k, "dy"] - (t.loc[k, "y"] - t.loc[k0, "y"]), g.loc[k, "dx"] - (t.loc[k, "x"] - t.loc[k0, "x"]))
    assert err.max() < 0.3, err.max()
    # dy = rigid + non-rigid still, and the relative motion is from the same frame
    assert np.allclose(g["dy"], g["rigid_dy"] + g["nonrigid_dy"]) and np.allclose(
        g["dx"], g["rigid_dx"] + g["nonrigid_dx"]
    )
    ref = result.tracks[result.tracks["particle"] == g["rel_to"].iloc[0]].set_index("frame")
    assert np.allclose(g.loc[k, "rel_dy"], g.loc[k, "dy"] - (ref.loc[k, "dy"] - ref.loc[k0, "dy"]))
    # the particles seen from the first frame keep theirs from frame 0
    for q in result.particles:
        if q.particle != p.particle:
            d = result.tracks[result.tracks["particle"] == q.particle].set_index("frame")
            assert d.loc[0, "dy"] == 0 and d.loc[0, "dx"] == 0


def test_the_pre_edge_check_counts_frames_the_particle_is_partly_out_of():
    # the check of the frames used against the particle's own edge took only frames with every mask pixel
    # finite: a particle cut by the border in every frame left out was never checked
    e, mask, aligned, true_e50 = stress_disc(5)
    for above in (6, 7):  # the frames used alone gave E50 maps 31-33 eV high, nothing said
        used = e >= true_e50 + above
        cut = aligned.copy()
        cut[~used, :, :12] = np.nan  # outside the frame: a third of the mask
        r = xanes.analyse_particle(cut, mask, e, usable=used, left_out="the particle leaves the frame")
        assert all(np.isnan(m).all() for m in r["edge_maps"].values())
        (note,) = r["notes"]
        assert note.startswith("XANES failed: the frames used hold 0 energies in the pre-edge range")
        assert abs(float(note.split("(E0 ")[1].split(" eV")[0]) - true_e50) < 5
    # frames that see less than half of it do not count: nothing to check the frames used against
    cut[~used, :, :17] = np.nan
    r = xanes.analyse_particle(cut, mask, e, usable=used)
    assert not any("the frames used hold" in n for n in r["notes"])
    # a particle cut in its first frames whose frames used start below its edge is analysed as before
    early = e >= 8250
    r = xanes.analyse_particle(np.where(early[:, None, None], aligned, cut), mask, e, usable=early)
    assert not any("failed" in n for n in r["notes"])
    assert abs(np.nanmean(r["edge_maps"]["e50"][mask]) - true_e50) < 0.3


def test_no_mean_e50_from_a_few_of_the_core_pixels():
    # a scan that starts past the edge's rise (8349 eV) on a LiNiO2 particle whose small centre's edge lies 40 eV
    # higher: E0 is found on the whiteline's fall and only the centre's pixels cross half the step in the edge
    # window. Their mean (8376 eV) passed for the particle's, with a sigma.
    e = ni_energy_grid(60)
    refs = ni_references()
    yy, xx = np.mgrid[0:40, 0:40]
    rho = np.hypot(yy - 20, xx - 20)
    mask = rho < 12
    spec = np.where(rho < 2.5, refs["LiNiO2"](e - 40)[:, None, None], refs["LiNiO2"](e)[:, None, None])
    rng = np.random.default_rng(1)
    aligned = (0.5 * spec * mask + 0.1 + rng.normal(0, 0.01, (e.size, 40, 40))).astype(np.float32)
    used = e >= 8349
    xr = xanes.analyse_particle(aligned[used], mask, e[used])
    result = one_particle_result(xr, aligned[used], mask, e[used], 12.0)
    p = result.particles[0]
    core = core_pixels(p)
    share = np.isfinite(p.edge_maps["e50"][core]).mean()
    assert 0 < share < 0.5
    (note,) = [n for n in p.notes if "its mean E50 is not given" in n]
    m = re.search(r"E50 measured in (\d+) of its (\d+) core pixels only", note)
    # of its whole core, the mask eroded, before the quality masks (result.e50_share): 313, where 310 are kept
    whole = core_mask(p.mask, p.mask)
    assert m and int(m.group(1)) == int(np.isfinite(p.edge_maps["e50"][whole]).sum()) and int(m.group(2)) == whole.sum()
    assert "never cross half the edge step" in note
    row = particle_summary(result).iloc[0]
    assert np.isnan(row["mean_e50_ev"]) and np.isnan(row["e50_spread_ev"]) and np.isnan(row["mean_e50_sigma_ev"])
    # over half the core measured: the mean is given, and no note
    import dataclasses

    e50 = p.edge_maps["e50"].copy()
    ys, xs = np.nonzero(core)
    e50[ys[::2], xs[::2]] = 8345.0
    q = dataclasses.replace(p, edge_maps={**p.edge_maps, "e50": e50})
    assert np.isfinite(particle_summary(dataclasses.replace(result, particles=[q])).iloc[0]["mean_e50_ev"])
    full = xanes.analyse_particle(aligned, mask, e)
    assert not any("its mean E50 is not given" in n for n in full["notes"])


def test_compute_motion_gives_a_late_particle_its_displacements_from_its_first_frame_vouched_for():
    # a field drifting 1.5 px per frame; particle 3 drifts on its own 0.1 px per frame from the start and enters
    # at frame 20 (its positions before are filled in, held at its first one). Its own motion before is not seen:
    # from frame 0 its dy would miss 2 px; from frame 20 every displacement is as measured
    from xanestrack.motion import compute_motion

    n, m = 40, 5
    k = np.arange(n)
    rigid = np.c_[1.5 * k, -1.0 * k]
    own = np.zeros((n, m, 2))
    own[:, 3, 0] = 0.1 * k
    base = np.c_[50.0 * np.arange(m), 20.0 + 13.0 * np.arange(m) ** 2]
    P = base[None] + rigid[:, None] + own
    t = pd.DataFrame([(j, f, *P[f, j]) for f in range(n) for j in range(m)], columns=["particle", "frame", "y", "x"])
    late = (t.particle == 3) & (t.frame < 20)
    t.loc[late, ["y", "x"]] = P[20, 3]
    t["reliable"] = ~late
    t["measured"] = ~late
    out = compute_motion(t, reference_particle=0)
    g = out[out.particle == 3].set_index("frame")
    truth = P[20:, 3] - P[20, 3]
    assert np.allclose(g.loc[20:, ["dy", "dx"]].to_numpy(), truth, atol=1e-6)
    # the common motion is a robust fit over the particles, its own motion among them: within 0.05 px
    assert np.allclose(g.loc[20:, ["rigid_dy", "rigid_dx"]].to_numpy(), rigid[20:] - rigid[20], atol=0.05)
    assert np.allclose(g.loc[20:, ["nonrigid_dy", "nonrigid_dx"]].to_numpy(), own[20:, 3] - own[20, 3], atol=0.05)
    assert np.allclose(g["dy"], g["rigid_dy"] + g["nonrigid_dy"]) and np.allclose(
        g["dx"], g["rigid_dx"] + g["nonrigid_dx"]
    )
    assert np.allclose(g.loc[20:, ["rel_dy", "rel_dx"]].to_numpy(), own[20:, 3] - own[20, 3], atol=1e-6)
    # the particles seen from frame 0: from frame 0, as before
    g0 = out[out.particle == 1].set_index("frame")
    assert np.allclose(g0[["dy", "dx"]].to_numpy(), P[:, 1] - P[0, 1], atol=1e-9)
    # particle 3 as the reference: the others' relative motion from frame 20 on
    rel = compute_motion(t, reference_particle=3)
    g1 = rel[rel.particle == 1].set_index("frame")
    assert np.allclose(g1.loc[20:, ["rel_dy", "rel_dx"]].to_numpy(), -(own[20:, 3] - own[20, 3]), atol=1e-6)
