"""A part of a particle tracked a second time is left out, not reported as a particle of its own.

The probe's case: on the real SSRL pair (learned path) particle 1 was a lobe of particle 3's agglomerate, 2868 of its
2869 mask pixels inside particle 3's mask; each had been detected in one frame only, both were vouched for 2/2 and
neither was flagged (``_overlapping_frames`` counts only what comes over a particle beyond what covers it in its
reference frame). The duplicate took one of the places fixing the common similarity: scale 0.99602 with it, 0.99711
without. Here: the default scene (seed 1, reduced) with a second detection of part of its largest particle in every
frame, 20 px from its centre, and a segmenter that outlines only that part in the part's window.
"""

import numpy as np
import pandas as pd
import pytest

from xanestrack.detect import detect_stack
from xanestrack.pipeline import INSIDE_SHARE, PipelineOptions, _inside_shares, run_pipeline
from xanestrack.register import window_half
from xanestrack.segment import segment_rois
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack
from xanestrack.synth_stress import make_stress_stack

PART_RADIUS = 12.0  # px: the part detected a second time
PART_OFFSET = (0.0, 20.0)  # px from the largest particle's centre: 32 px of its 39.5 px radius


def _scene():
    return make_synthetic_stack("default", seed=1, n_energies=24, shape=(256, 256), n_particles=4)


def _run(s, *, with_part: bool):
    """The pipeline (classical) on ``s``; ``with_part``: the largest particle's part detected and outlined again."""
    od = s.optical_density()
    big = int(np.argmax(s.truth.radii))
    tp = s.truth.positions
    at = tp[tp["particle"] == big].sort_values("frame")[["y", "x"]].to_numpy() + PART_OFFSET
    # mask_guard off: the guard would outline the part classically (the whole particle's plateau: empty masks)
    opts = PipelineOptions(mask_guard=False)
    part_width = 2 * window_half(PART_RADIUS, opts.margin) + 1

    def detector(od_, frames=None):
        det = detect_stack(od_, options=opts.detect, frames=frames)
        if not with_part:
            return det
        rows = []
        for k in sorted(det["frame"].unique()):
            row = det[det["frame"] == k].iloc[0].copy()
            y, x = at[int(k)]
            r = PART_RADIUS
            row[["y", "x", "area", "radius", "y0", "x0", "y1", "x1"]] = (
                y, x, np.pi * r * r, r, y - r, x - r, y + r + 1, x + r + 1,
            )  # fmt: skip
            row[["isolated", "reason", "touching"]] = (True, "", False)
            row["extent"] = r  # the part's outline reaches its radius (not the copied row's particle's)
            rows.append(row)
        return pd.concat([det, pd.DataFrame(rows)], ignore_index=True)

    def segmenter(rois):
        masks = segment_rois(rois, options=opts.segment)
        if with_part and rois.shape[-1] == part_width:  # the part's window: only the part outlined
            h, w = rois.shape[-2:]
            yy, xx = np.mgrid[0:h, 0:w]
            part = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= PART_RADIUS
            masks = np.broadcast_to(part, masks.shape).astype(np.float32)
        return masks

    segmenter.fits_background = True
    return run_pipeline(Stack(od, s.energies_ev), options=opts, detector=detector, segmenter=segmenter)


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def with_part(scene):
    return _run(scene, with_part=True)


def _near(result, yx, tol=6.0):
    return [p.particle for p in result.particles if np.hypot(*(p.positions[0] - yx)) < tol]


@pytest.fixture(scope="module")
def without_part(scene):
    return _run(scene, with_part=False)


def test_a_part_of_a_particle_tracked_twice_is_left_out_with_a_row_and_a_note(scene, with_part, without_part):
    big = int(np.argmax(scene.truth.radii))
    tp = scene.truth.positions
    yx_big = tp[(tp["particle"] == big) & (tp["frame"] == 0)][["y", "x"]].to_numpy()[0]
    host = _near(with_part, yx_big)
    assert len(host) == 1, [p.positions[0] for p in with_part.particles]
    assert not _near(with_part, yx_big + PART_OFFSET), "the part is reported as a particle of its own"
    assert len(with_part.particles) == len(without_part.particles)
    rej = with_part.rejected
    row = rej[rej["reason"] == f"inside_particle_{host[0]}"]
    assert len(row) == 1, rej.to_string()
    assert np.hypot(*(row[["y", "x"]].to_numpy(float)[0] - (yx_big + PART_OFFSET))) < 3.0
    said = [n for n in with_part.notes if "inside another tracked particle" in n]
    assert len(said) == 1 and f"inside particle {host[0]}" in said[0], with_part.notes


def test_the_scene_without_the_part_keeps_every_particle(without_part):
    """Control: nothing is left out of the unchanged scene (no row, no note)."""
    r = without_part
    assert not r.rejected["reason"].astype(str).str.startswith("inside_particle").any()
    assert not any("inside another tracked particle" in n for n in r.notes)


def test_touching_particles_of_the_crowded_scene_are_kept():
    """Control: the reduced ``stress-crowd`` scene (seed 1, classical) has touching groups (their masks cut apart,
    interpenetrating by 1 px): every track kept, the largest share of a mask inside another's far below the rule."""
    import xanestrack.pipeline as pl

    seen = []
    shares = pl._inside_shares

    def spy(*args, **kwargs):
        seen.append(shares(*args, **kwargs))
        return seen[-1]

    s = make_stress_stack("stress-crowd", 1, reduced=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(pl, "_inside_shares", spy)
    try:
        r = run_pipeline(Stack(s.optical_density(), s.energies_ev), options=PipelineOptions())
    finally:
        mp.undo()
    assert not r.rejected["reason"].astype(str).str.startswith("inside_particle").any()
    assert len(r.particles) == len(s.truth.radii)
    assert seen and seen[0].max() < 0.1 * INSIDE_SHARE, seen


def test_inside_shares_of_a_small_disc_in_a_large_one_and_of_a_touching_pair():
    """The share is of the inner mask's pixels, in the frames both were located in."""
    yy, xx = np.mgrid[0:81, 0:81]
    large = np.hypot(yy - 40, xx - 40) <= 30
    small = np.hypot(yy[:31, :31] - 15, xx[:31, :31] - 15) <= 10
    shifts = np.zeros((4, 2))
    located = np.ones(4, bool)
    # the small disc's centre 15 px right of the large one's: inside it
    sh = _inside_shares([large, small], [(0, 0), (25, 40)], [shifts, shifts], [located, located])
    assert sh[1, 0] == pytest.approx(1.0) and sh[0, 1] < 0.15
    # the same disc touching the large one from outside (41 px apart): nothing inside
    sh = _inside_shares([large, small], [(0, 0), (25, 66)], [shifts, shifts], [located, located])
    assert sh[1, 0] < 0.05 and sh[0, 1] < 0.05
    # inside in one frame of four only (passing over it): not inside in the frames both were located in
    moving = np.array([[0, 56], [0, 56], [0, 56], [0, 0]], float)
    sh = _inside_shares([large, small], [(0, 0), (25, 40)], [shifts, moving], [located, located])
    assert sh[1, 0] < 0.05


@pytest.mark.parametrize("scale_axis", [False, True])
def test_the_common_motions_residual_is_the_plain_rms_of_the_particles_fitted(scale_axis):
    """``residual_px`` (finding 3 of the same probe): the RMS of every fitted particle's distance from the common
    motion, not weighted as the robust fit weighs them (~1 / r): on the SSRL pair that read 0.13 px where the six
    particles' residuals were 0.02-0.97 px, their RMS 0.59."""
    from xanestrack.motion import common_similarity

    rng = np.random.default_rng(4)
    ref = rng.uniform(50, 450, size=(6, 2))
    own = np.array([[0.02, 0], [0, 0.04], [-0.04, 0], [0.53, 0], [0, -0.92], [0.97, 0]])
    P = np.stack([ref, ref + (3.0, -2.0) + own, ref + (5.0, 1.0) - own])
    prm, rigid = common_similarity(
        P, centre=np.array([250.0, 250.0]), scale_axis=np.array([8330.0, 8340.0, 8350.0]) if scale_axis else None
    )
    for k in (1, 2):
        plain = float(np.sqrt(np.mean(np.sum((P[k] - rigid[k]) ** 2, axis=1))))
        assert prm["residual_px"].iloc[k] == pytest.approx(plain, rel=1e-9)
        assert plain > 0.4
