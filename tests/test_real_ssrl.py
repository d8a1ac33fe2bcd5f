"""Real frames: SSRL 6-2c, pristine NCA, 8324 and 8354 eV (read from ../shared, GPL-3, never copied).

No ground truth, but physics: two frames of one pristine scan move as one translation plus
the zone plate's magnification change (focal length grows with the energy: scale about
up to 1 - 30 / 8339 = 0.9964 over these 30 eV). The tool must find that motion, report positions
that follow it for the particles it can measure, and flag every position that does not.
The centres of mass of the masks do not confirm the edge estimates here (the masks' outlines
move 1-7 px across the edge, off any similarity); the correlation of each particle's optical
density does, for the particles moving with the rest (``density_voucher``).
"""

import numpy as np
import pytest

from conftest import shared_data
from xanestrack.result import FRAME_FLAGS, UNVOUCHED_FLAGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ssrl_result():
    from xanestrack.detect import DetectOptions
    from xanestrack.io import read_stack
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.sizes import particle_radius_range

    folder = shared_data("real_txm", "ssrl_6-2c_nca")
    stack = read_stack(folder)
    # the options `xanestrack run` uses (particle sizes from the pixel size)
    lo, hi, binning = particle_radius_range(stack, detector="learned")
    opts = PipelineOptions(detect=DetectOptions(min_radius=lo, max_radius=hi, binning=binning))
    det, seg = pipeline_models("learned", "learned", options=opts)
    return run_pipeline(stack, options=opts, detector=det, segmenter=seg)


@pytest.fixture(scope="module")
def ssrl_classical():
    from xanestrack.detect import DetectOptions
    from xanestrack.io import read_stack
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.sizes import particle_radius_range

    stack = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    lo, hi, binning = particle_radius_range(stack, detector="classical")
    opts = PipelineOptions(detect=DetectOptions(min_radius=lo, max_radius=hi, binning=binning))
    return run_pipeline(stack, options=opts)


def test_classical_path_finds_the_same_common_motion(ssrl_classical):
    """Three particles are vouched for (moving with the rest, by the density correlation; a
    small particle 6.2 px off the rest, its estimates 0.39 px apart, was the fourth until a loose
    agreement stopped vouching for a large departure in scans too short for the neighbour tests):
    enough for the similarity's fit (``MIN_VOUCHED_FOR_FIT``, 3 since 2026-12-07; on the four with
    that mover it gave scale 0.99505; on every measured position, robustly, 0.99662), measured 0.99603,
    each of the three within 0.54 px of it. Before the fit fell back to the measured positions, it was made on that
    one small particle alone (scale 1, 7 px off)."""
    sim = ssrl_classical.similarity
    assert sim.attrs["fitted_on"] == "vouched positions"
    assert 0.5 * 30 / 8339 < 1 - float(sim["scale"].iloc[1]) < 1.25 * 30 / 8339
    assert 15 < sim["common_dy"].iloc[1] < 25 and 5 < sim["common_dx"].iloc[1] < 15
    for p in ssrl_classical.particles:
        if not np.isfinite(p.positions).any():
            assert (p.frame_flags & FRAME_FLAGS["disagree"]).all(), p.particle
    # measured: 0.31, 0.54, 0.01 px (radius 73-163 px) vouched for by the density correlation (0.16, 0.66, 0.43
    # fitted on every measured position)
    assert (_vouched(ssrl_classical) & (_similarity_residuals(ssrl_classical) <= 1.0)).sum() >= 3
    # fitted on the vouched positions, nothing said of a fit on every measured one (which the run said where it made
    # it); the summary of each particle's own motion counts only its frames vouched for (it took a frame flagged
    # disagree: stress-all seed 2, 3.81 px where its vouched frames gave 3.30)
    assert not any("fitted robustly on every measured position" in n for n in ssrl_classical.notes)
    pr = ssrl_classical.peak_ratios.set_index("particle")["max_nonrigid_displacement"]
    tr = ssrl_classical.tracks
    for p in ssrl_classical.particles:
        rows = tr[tr["particle"] == p.particle]
        ok = ((p.frame_flags & UNVOUCHED_FLAGS) == 0).astype(bool)
        own = np.hypot(rows["nonrigid_dy"], rows["nonrigid_dx"]).to_numpy()[ok]
        got = pr.get(p.particle, np.nan)
        if np.isfinite(got):  # (none where no two frames are vouched for: no velocity)
            assert abs(got - np.nanmax(own)) < 1e-9, (p.particle, got, own)


def _vouched(result) -> np.ndarray:
    """Particles vouched for in both frames (bool, one per particle)."""
    bad = FRAME_FLAGS["disagree"] | FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    return np.array([((p.frame_flags & bad) == 0).all() for p in result.particles])


def _similarity_residuals(result) -> np.ndarray:
    """px: each particle's displacement from frame 0 to 1 less the common similarity's."""
    from xanestrack.motion import _apply

    P0, D, _ = _displacements(result)
    sim = result.similarity
    c = np.array(sim.attrs["centre"])
    t = sim[["common_dy", "common_dx"]].iloc[1].to_numpy(float)
    pred = _apply(P0, t, float(sim["scale"].iloc[1]), float(sim["rotation_rad"].iloc[1]), c) - P0
    return np.hypot(*(D - pred).T)


def _displacements(result):
    P0 = np.array([p.positions[0] for p in result.particles])
    D = np.array([p.positions[1] - p.positions[0] for p in result.particles])
    R = np.array([p.radius for p in result.particles])
    return P0, D, R


def test_common_motion_is_the_zone_plate_magnification(ssrl_result):
    sim = ssrl_result.similarity
    scale = float(sim["scale"].iloc[1])
    # a zone plate's focal length grows with the energy: the image shrinks by up to
    # dE/E = 0.36 % over these 30 eV (less where the optics refocus); measured 0.26 %
    # (0.25-0.34 % with the estimator's variants tried; the big particles' lever decides)
    de = 30 / 8339
    assert 0.5 * de < 1 - scale < 1.25 * de, scale
    assert 15 < sim["common_dy"].iloc[1] < 25 and 5 < sim["common_dx"].iloc[1] < 15


def test_particles_follow_one_similarity_and_the_others_are_flagged(ssrl_result):
    P0, D, R = _displacements(ssrl_result)
    assert len(P0) >= 6
    resid = _similarity_residuals(ssrl_result)
    follow = resid <= 1.0
    # at least six particles, the largest among them, move with the common similarity
    # (measured: six of eight within 0.5 px)
    assert follow.sum() >= 6, resid
    assert follow[np.argmax(R)] and R[follow].max() > 100
    # a particle off the similarity by more than a pixel is flagged, unless both estimates
    # agree on it: then it is reported as moving on its own. Here that is what two small
    # particles (546, 229) and (860, 760) did: each of the 3 exposures per energy shows it,
    # and the binder ring around each moves with the common motion while the particle does
    # not (README, Real data); the non-rigid motion table must show it.
    nonrigid = ssrl_result.motion.groupby("particle").apply(
        lambda g: np.hypot(g["nonrigid_dy"], g["nonrigid_dx"]).max()
    )
    for p, r in zip(ssrl_result.particles, resid):
        if r > 1.0 and not (p.frame_flags & FRAME_FLAGS["disagree"]).any():
            assert p.radius < 40 and np.nanmax(p.agreement) <= 0.5, (p.particle, r)
            assert nonrigid[p.particle] > 5.0, (p.particle, nonrigid[p.particle])


def test_vouched_particles_follow_the_physics_the_largest_among_them(ssrl_result):
    """Issue 15 asks for at least six particles vouched for, the largest among them, each within 1 px
    of the similarity. Measured: six (radius 45-167 px), 0.00-0.86 px off it; the similarity is fitted
    on them (``MIN_VOUCHED_FOR_FIT``). The sixth is the 45-px particle of the bottom-right agglomerate,
    joined to two the frame's border cuts (``test_border_agglomerates``: it was left out with them, then
    lost to a piece of itself, then to classical masks running into them). Five before it, once the
    track lying inside particle 3 (a lobe of it tracked twice, 100 % of its mask inside) was left out
    (``pipeline.INSIDE_SHARE``); seven counted with that duplicate and a piece of the agglomerate at the
    bottom left, 0.01-0.96 px off.
    Not vouched for: the particle at the frame's top edge, faint at 8324 eV, fragments of the
    agglomerates whose masks fail, and the two small particles that move 7 px on their own
    (the density may not vouch: the binder ring around each moves with the rest)."""
    _, _, R = _displacements(ssrl_result)
    vouched = _vouched(ssrl_result)
    resid = _similarity_residuals(ssrl_result)
    assert vouched.sum() >= 6, vouched
    assert (resid[vouched] <= 1.0).all(), resid[vouched]
    assert vouched[np.argmax(R)] and R[vouched].max() > 100
    assert ssrl_result.similarity.attrs["fitted_on"].startswith("vouched")
    t = ssrl_result.tracks
    v = t[t["particle"].isin([p.particle for p, ok in zip(ssrl_result.particles, vouched) if ok])]
    # vouched for by the density correlation, not by the centres of mass (1.2-184 px off)
    assert (v["density_agreement_px"] <= 0.5).all() and (v["com_agreement_px"] > 0.5).any()


def test_a_real_particle_shifted_by_a_known_amount_is_measured_so():
    """The edge estimate on real frames against a known answer: the 8354-eV frame and the same
    frame shifted by 0.25-3 px (Fourier shift), windows predicted with no shift, two passes.
    Measured: the binned windows (radius 131 and 167 px) within 0.016 px; before the edge
    images' local level was removed and the taper widened on binned windows, 0.52-0.56 px off
    at 1 px, 1.6-1.8 px at 3 px (the prediction pulled them). Unbinned (radius 53 and 82 px,
    one level per window, bilinear resampling): within 0.068 px."""
    from scipy import ndimage

    from xanestrack.follow import follow_particle
    from xanestrack.io import read_stack

    stack = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    f1 = stack.od[1].astype(np.float64)
    spectrum = np.fft.fft2(f1)
    # particles of radius 167, 131, 82, 53 px (centres in the 8354-eV frame)
    particles = [((707.1, 420.8), 166.7), ((390.2, 628.4), 130.6), ((223.6, 463.8), 81.9), ((405.8, 840.3), 52.7)]
    for d in (0.25, 1.0, 3.0):
        shifted = np.fft.ifft2(ndimage.fourier_shift(spectrum, (d, -0.5 * d))).real.astype(np.float32)
        od = np.stack([stack.od[1], shifted])
        for centre, radius in particles:
            pos, _, measured = follow_particle(od, np.array([centre, centre]), radius, 0)
            assert measured.all()
            err = pos[1] - pos[0] - [d, -0.5 * d]
            assert np.abs(err).max() < (0.03 if radius > 96 else 0.1), (d, radius, err)


def test_without_the_density_voucher_nothing_is_vouched_for():
    """The state before: the centres of mass confirm no edge estimate on these frames."""
    from xanestrack.detect import DetectOptions
    from xanestrack.io import read_stack
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.sizes import particle_radius_range

    stack = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    lo, hi, binning = particle_radius_range(stack, detector="learned")
    opts = PipelineOptions(detect=DetectOptions(min_radius=lo, max_radius=hi, binning=binning), density_voucher=False)
    det, seg = pipeline_models("learned", "learned", options=opts)
    result = run_pipeline(stack, options=opts, detector=det, segmenter=seg)
    assert not _vouched(result).any()
    assert result.similarity.attrs["fitted_on"].startswith("measured positions")


def test_a_particle_without_a_mask_is_not_said_to_be_left_out_as_unvouched(ssrl_result):
    """A particle whose mask over the frames is empty had every frame "left out ... not vouched for" in its note,
    beside "vouched for in every frame" (particle 13 of the learned path, the regressions of real data): the note
    now says its mask is empty."""
    empty = [p for p in ssrl_result.particles if not np.asarray(p.mask).any()]
    assert empty  # the case: particle 13 of these frames
    for p in empty:
        text = " ".join(p.notes)
        assert "the particle's mask over the frames is empty" in text
        assert "their positions are not vouched for" not in text


def test_the_pair_turned_by_180_degrees_gives_the_same_displacements(ssrl_result):
    """The same frames turned by 180 degrees: every particle vouched for in both runs has the same displacement
    (turned back) within 0.3 px (measured: 0.00-0.14 px), and 4 are vouched for (3 before the mask guard counted empty
    masks as trouble and scored the frames that agree less those that fail: the 131-px particle's classical masks of
    21848 / 48332 px, agreeing in one frame by chance, had replaced learned ones of 53511 / 52800 px and the track was
    left out; a 90-px particle's classical masks, empty in both frames, had replaced learned ones)."""
    from xanestrack.detect import DetectOptions
    from xanestrack.io import read_stack
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.sizes import particle_radius_range
    from xanestrack.stack import Stack

    stack = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    h, w = stack.od.shape[1:]
    meta = {k: v for k, v in stack.metadata.items() if k not in ("illumination", "unlit")}
    turned = Stack(np.ascontiguousarray(stack.od[:, ::-1, ::-1]), stack.energies_ev, stack.pixel_size_um, meta)
    lo, hi, binning = particle_radius_range(turned, detector="learned")
    opts = PipelineOptions(detect=DetectOptions(min_radius=lo, max_radius=hi, binning=binning))
    det, seg = pipeline_models("learned", "learned", options=opts)
    r = run_pipeline(turned, options=opts, detector=det, segmenter=seg)
    back = np.array([h - 1, w - 1], float)
    P0, D, _ = _displacements(r)
    P0, D = back - P0, -D
    v = _vouched(r)
    assert v.sum() >= 4, v
    A0, AD, _ = _displacements(ssrl_result)
    av = _vouched(ssrl_result)
    compared = 0
    for p, d in zip(P0[v], D[v]):
        near = np.hypot(*(A0 - p).T)
        j = int(np.nanargmin(near))
        if near[j] < 10 and av[j]:
            assert np.hypot(*(AD[j] - d)) < 0.3, (p, d, AD[j])
            compared += 1
    assert compared >= 4


@pytest.mark.parametrize("path", ["learned", "classical"])
def test_the_touching_particle_the_largest_ones_mask_took_in_is_left_out(path, ssrl_result, ssrl_classical):
    """The largest particle's consensus mask took in a touching particle of about 27 px on its upper right (a lobe of
    its outline beyond a neck, some 32 times smaller): it is left out of the mask, its note says where, and the
    particle's size is its own (163.0 / 163.1 px; the raw frame's profile puts its foot at 162 px; 169.1 / 169.2 px
    with the neighbour in), on both paths."""
    import re

    from xanestrack.outlines import LOBES_LEFT_OUT_NOTE

    result = ssrl_result if path == "learned" else ssrl_classical
    big = max(result.particles, key=lambda p: np.count_nonzero(p.mask))
    note = next((n for n in big.notes if n.startswith(LOBES_LEFT_OUT_NOTE)), None)
    assert note is not None, big.notes
    (y, x, r), *_ = [tuple(map(float, m)) for m in re.findall(r"\((\d+), (\d+)\) r (\d+)", note)]
    assert np.hypot(y - 554, x - 558) < 15 and 20 <= r <= 35, note
    assert abs(big.size_radius - 162.0) < 3.0, big.size_radius
