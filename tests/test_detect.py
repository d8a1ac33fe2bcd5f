"""The classical detector and the region tests shared by every detector (xanestrack.detect)."""

import numpy as np
import pytest

from conftest import undocumented_fields
from xanestrack.detect import (
    DETECTION_COLUMNS,
    DetectOptions,
    detect_particles,
    detect_stack,
    foreground_mask,
    regions_table,
)
from xanestrack.synth import make_synthetic_stack


def test_detection_rejects_border_touching_and_fines():
    s = make_synthetic_stack("hard", seed=2, n_energies=3)
    det = detect_particles(s.optical_density()[2])
    reasons = set(det["reason"])
    assert "" in reasons
    assert "too_small" in reasons or "not_convex" in reasons


def _touching_pair_frame():
    yy, xx = np.mgrid[0:120, 0:160]
    frame = np.zeros((120, 160), np.float32)
    for cy, cx, r in ((60, 60, 20), (60, 99, 20), (30, 135, 12)):  # a touching pair and a loner
        frame += 0.8 * np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)
    frame += np.random.default_rng(1).normal(0, 0.01, frame.shape).astype(np.float32)
    return frame


def test_touching_particles_are_separated_and_kept():
    det = detect_particles(_touching_pair_frame())
    assert det.isolated.all() and len(det) == 3
    pair = det[det.touching].sort_values("x")
    assert len(pair) == 2
    assert np.allclose(pair[["y", "x"]].to_numpy(), [[60, 60], [60, 99]], atol=2.5)
    assert np.allclose(pair["radius"], 20, atol=3)
    loner = det[~det.touching]
    assert abs(loner.iloc[0].x - 135) < 2


def test_touching_particles_are_rejected_when_splitting_is_off():
    det = detect_particles(_touching_pair_frame(), options=DetectOptions(split_touching=False))
    iso = det[det.isolated]
    assert len(iso) == 1 and abs(iso.iloc[0].x - 135) < 2
    assert (det.reason == "not_convex").sum() == 1


def test_a_small_particle_on_a_large_ones_flank_is_cut_off_and_kept():
    # a neck narrow for the small particle, wide against the large one's inscribed radius
    yy, xx = np.mgrid[0:220, 0:260]
    frame = np.zeros((220, 260), np.float32)
    for cy, cx, r in ((110, 100, 45), (110, 167, 14)):
        frame = np.maximum(frame, 0.8 * np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1))
    frame[107:113, 140:160] = 0.8  # a bridge 6 px wide
    frame += np.random.default_rng(1).normal(0, 0.01, frame.shape).astype(np.float32)
    det = detect_particles(frame, options=DetectOptions(max_radius=80)).sort_values("x")
    assert len(det) == 2 and det.isolated.all() and det.touching.all()
    assert np.allclose(det[["y", "x"]].to_numpy(), [[110, 100], [110, 166]], atol=2.0)  # measured 0.2, 0.4 px off
    assert np.allclose(det["radius"], [45, 14], atol=2.5)


def test_a_non_convex_particle_without_a_neck_is_kept_whole():
    # a disc with a bite taken out of its side: solidity 0.87, no neck to cut at
    yy, xx = np.mgrid[0:120, 0:120]
    shape = (np.hypot(yy - 60, xx - 60) < 25) & ~(np.hypot(yy - 60, xx - 82) < 15)
    frame = shape.astype(np.float32) * 0.8 + np.random.default_rng(3).normal(0, 0.01, (120, 120)).astype(np.float32)
    det = detect_particles(frame)
    assert len(det) == 1 and det.isolated.iloc[0] and not det.touching.iloc[0]
    assert det.solidity.iloc[0] < 0.9 and det.reason.iloc[0] == ""
    # without splitting, every non-convex component is rejected
    det = detect_particles(frame, options=DetectOptions(split_touching=False))
    assert not det.isolated.iloc[0] and det.reason.iloc[0] == "not_convex"


def test_one_irregular_particle_is_not_split():
    yy, xx = np.mgrid[0:120, 0:120]
    th = np.arctan2(yy - 60, xx - 60)
    r = 25 * (1 + 0.15 * np.cos(3 * th) + 0.08 * np.cos(5 * th + 1))  # lobed outline, one body
    frame = (np.hypot(yy - 60, xx - 60) < r).astype(np.float32) * 0.8
    frame += np.random.default_rng(2).normal(0, 0.01, frame.shape).astype(np.float32)
    det = detect_particles(frame)
    assert len(det) == 1 and not det.touching.iloc[0] and det.isolated.iloc[0]


def test_detect_stack_on_given_frames_and_nothing_found():
    s = make_synthetic_stack(
        "default", seed=7, n_energies=3, shape=(160, 160), n_particles=2, radius_range=(10.0, 14.0)
    )
    det = detect_stack(s.optical_density(), frames=[0, 2])
    assert list(det.columns) == DETECTION_COLUMNS and set(det["frame"]) == {0, 2}
    assert det["isolated"].sum() == 4  # two particles in each of the two frames
    none = detect_stack(np.zeros((2, 64, 64), np.float32))
    assert len(none) == 0 and list(none.columns) == DETECTION_COLUMNS


def test_bad_input_messages():
    with pytest.raises(ValueError, match="2-D"):
        detect_particles(np.zeros((2, 32, 32)))
    frame = np.zeros((32, 32))
    frame[3, 4] = np.nan
    with pytest.raises(ValueError, match="sanitize_stack"):
        detect_particles(frame)
    with pytest.raises(ValueError, match="min_radius < max_radius"):
        DetectOptions(min_radius=30.0, max_radius=20.0)
    with pytest.raises(ValueError, match="contrast_fraction"):
        DetectOptions(contrast_fraction=1.5)


def test_every_option_is_documented():
    assert undocumented_fields(DetectOptions) == []


def _faint_scene():
    """A faint 10-px particle, a bright 3-px fine, a bright 22-px particle; binned 2x, noise 0.01."""
    yy, xx = np.mgrid[0:100, 0:100]
    img = np.zeros((100, 100), np.float32)
    for cy, cx, r, c in ((30, 30, 5, 0.15), (70, 25, 1.5, 0.6), (60, 70, 11, 0.8)):
        img += c * np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)
    img += np.random.default_rng(3).normal(0, 0.01, img.shape).astype(np.float32)
    # what a detector outlined: a speck of the faint particle, the fine, the big particle and
    # a speck on its flank
    fg = np.zeros((100, 100), bool)
    fg[29:32, 29:32] = True
    fg[68:72, 23:27] = True
    fg |= np.hypot(yy - 60, xx - 70) <= 11
    fg[60, 83] = True
    return img, fg


def test_a_faint_particle_outlined_too_small_is_measured_at_its_own_contrast():
    img, fg = _faint_scene()
    opts = DetectOptions(min_radius=7, max_radius=40, rescue_small=True)
    got = regions_table(fg, img, frame_index=0, binning=2, options=opts, image=img)
    kept = got[got.isolated].sort_values("x")
    # the faint particle (true radius 10 px at full resolution) and the big one; the fine stays a fine
    assert len(kept) == 2
    assert np.allclose(kept[["y", "x"]].to_numpy() / 2, [[30, 30], [60, 70]], atol=1.0)
    assert 7 <= kept.iloc[0].radius <= 12
    assert (got[~got.isolated].reason == "too_small").sum() >= 1  # the fine
    # without the image (or with the option off) the faint particle is too small
    off = regions_table(
        fg,
        img,
        frame_index=0,
        binning=2,
        options=DetectOptions(min_radius=7, max_radius=40, rescue_small=False),
        image=img,
    )
    assert off.isolated.sum() == 1
    assert regions_table(fg, img, frame_index=0, binning=2, options=opts).isolated.sum() == 1


def test_a_faint_particle_wholly_under_the_classical_threshold_is_found_at_half_of_it():
    """A bright particle sets the threshold (a quarter of its contrast, 0.25); a faint, flat one
    (radius 10 px, 0.18 OD: the stress family's small particles after the edge) does not reach
    it anywhere, so no piece of it is a component. What stands above half the threshold is
    examined by the rescue too; a fine (radius 3 px) at the same contrast stays out."""
    yy, xx = np.mgrid[0:200, 0:200]
    f = np.clip(25 - np.hypot(yy - 120, xx - 120) + 0.5, 0, 1).astype(np.float32)
    f += 0.18 * np.clip(10 - np.hypot(yy - 50, xx - 50) + 0.5, 0, 1).astype(np.float32)
    f += 0.18 * np.clip(3 - np.hypot(yy - 40, xx - 150) + 0.5, 0, 1).astype(np.float32)
    f += np.random.default_rng(1).normal(0, 0.01, f.shape).astype(np.float32)
    fg, corr, thr = foreground_mask(f)
    assert not fg[20:30, 20:30].any() and corr[23:27, 23:27].max() < thr  # below the threshold everywhere
    det = detect_particles(f)
    kept = det[det.isolated].sort_values("x")
    assert len(kept) == 2
    faint = kept.iloc[0]
    assert abs(faint.y - 50) < 1 and abs(faint.x - 50) < 1 and 8 <= faint.radius <= 12
    assert detect_particles(f, options=DetectOptions(rescue_small=False)).isolated.sum() == 1
    assert detect_particles(f, rescue=False).isolated.sum() == 1


def test_a_body_too_large_for_one_particle_in_a_cut_group_is_cut_again_at_its_wider_necks():
    """Two large particles overlapping (a neck 0.66 of their inscribed radius: one body by the
    standard rule) with a small one on a narrow neck beside them: the group is cut, and the body of
    the two, larger than any particle, is cut too, not dropped with both of them."""
    from xanestrack.detect import cut_at_necks

    yy, xx = np.mgrid[0:100, 0:150]
    reg = (np.hypot(yy - 50, xx - 40) <= 20) | (np.hypot(yy - 50, xx - 70) <= 20) | (np.hypot(yy - 50, xx - 101) <= 10)
    reg |= (np.abs(yy - 50) <= 2) & (xx >= 85) & (xx <= 95)  # the small one's narrow neck
    pieces = cut_at_necks(reg, min_area=50, max_area=1500)
    assert len(pieces) == 3
    centres = sorted(float(np.mean(np.nonzero(p)[1])) for p in pieces)
    assert np.allclose(centres, [38, 72, 101], atol=3)
    # where the two fit one particle's size, they stay one body (a lobed particle)
    two = cut_at_necks(reg, min_area=50, max_area=3000)
    assert len(two) == 2 and max(int(p.sum()) for p in two) > 2000


def test_a_faint_particle_near_the_frame_border_is_rescued_where_it_keeps_off_it():
    """The faint particle of the test above, 22-24 px from an edge of the frame (the window the
    rescue examines it in, 2.5 minimum radii + 4 binned px, is clipped by the frame there): found
    all the same. One whose outline reaches the border is not whole: not kept."""
    yy, xx = np.mgrid[0:200, 0:200]
    for cy, cx in ((176, 60), (60, 178), (24, 60)):
        f = np.clip(25 - np.hypot(yy - 100, xx - 110) + 0.5, 0, 1).astype(np.float32)
        f += 0.18 * np.clip(10 - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1).astype(np.float32)
        f += np.random.default_rng(1).normal(0, 0.01, f.shape).astype(np.float32)
        kept = detect_particles(f)
        kept = kept[kept.isolated]
        near = kept[np.hypot(kept.y - cy, kept.x - cx) < 2]
        assert len(kept) == 2 and len(near) == 1 and 8 <= near.iloc[0].radius <= 12, (cy, cx)
    f = np.clip(25 - np.hypot(yy - 100, xx - 110) + 0.5, 0, 1).astype(np.float32)
    f += 0.18 * np.clip(10 - np.hypot(yy - 191, xx - 60) + 0.5, 0, 1).astype(np.float32)
    f += np.random.default_rng(1).normal(0, 0.01, f.shape).astype(np.float32)
    assert detect_particles(f).isolated.sum() == 1


def test_a_faint_particle_under_the_classical_threshold_is_rescued_in_scans_of_three_frames_or_more():
    # a bright particle sets the threshold (a quarter of its contrast); a faint, soft one
    # (peak 0.3, Gaussian profile sigma 7 px: half-maximum radius 8.2 px) only peeks above it
    yy, xx = np.mgrid[0:200, 0:200]
    f = np.clip(25 - np.hypot(yy - 120, xx - 120) + 0.5, 0, 1).astype(np.float32)
    f += 0.3 * np.exp(-0.5 * (np.hypot(yy - 50, xx - 50) / 7.0) ** 2).astype(np.float32)
    f += np.random.default_rng(0).normal(0, 0.01, f.shape).astype(np.float32)
    on = DetectOptions(rescue_small=True)
    det = detect_particles(f, options=on)
    assert det.isolated.sum() == 2
    faint = det[det.x < 90].iloc[0]
    assert abs(faint.y - 50) < 1 and abs(faint.x - 50) < 1 and 7 <= faint.radius <= 11
    assert detect_particles(f, options=on, rescue=False).isolated.sum() == 1
    assert detect_particles(f).isolated.sum() == 2  # on by default
    assert detect_particles(f, options=DetectOptions(rescue_small=False)).isolated.sum() == 1
    # a scan of two frames: one detection would make a track, so nothing is rescued
    assert detect_stack(np.stack([f, f]), options=on).isolated.sum() == 2
    assert detect_stack(np.stack([f, f, f]), options=on).isolated.sum() == 6


def test_an_object_far_below_the_smallest_radius_is_still_listed_as_too_small():
    # a scan binned 2 x 2: a particle of radius 4.7 px was outlined as 6-9 px at the learned detector's
    # binning of 2, under a quarter of the smallest particle's area (38.5 binned px): it was in no table,
    # and the run note naming the --min-radius that keeps such objects never saw it
    from xanestrack.detect import DetectOptions, regions_table

    fg = np.zeros((64, 64), bool)
    fg[30:33, 30:33] = True  # 9 binned px
    fg[50, 10] = True  # a speck of one pixel stays out
    got = regions_table(fg, fg.astype(float), frame_index=0, binning=2, options=DetectOptions(min_radius=7.0))
    assert len(got) == 1 and got["reason"].iloc[0] == "too_small"
    assert abs(got["y"].iloc[0] - 63.0) < 1.5 and abs(got["x"].iloc[0] - 63.0) < 1.5


def test_touching_particles_joined_by_a_closing_are_split_where_a_finer_map_holds_them_apart():
    # the learned detector closes its map (notches of particles with inner contrast), which also filled the
    # neck between touching particles: pairs reported as one isolated particle each, their chemistry mixed
    from scipy import ndimage

    from xanestrack.detect import DetectOptions, regions_table, split_by

    yy, xx = np.mgrid[0:80, 0:120]
    a = np.hypot(yy - 40, xx - 40) < 9
    b = np.hypot(yy - 40, xx - 66.5) < 16
    finer = a | b  # a small and a large particle 1.5 px apart at their closest
    closed = finer | ((np.abs(yy - 40) < 6) & (xx > 40) & (xx < 66))  # the neck filled
    assert ndimage.label(closed)[1] == 1 and ndimage.label(finer)[1] == 2
    pieces = split_by(closed, finer, min_area=100, max_area=5000)
    assert len(pieces) == 2
    assert sum(int(p.sum()) for p in pieces) == int(closed.sum())  # the pieces cover the component
    for p, disc in zip(sorted(pieces, key=lambda p: np.argwhere(p)[:, 1].mean()), (a, b)):
        assert (p & disc).sum() / disc.sum() > 0.97
    opts = DetectOptions(min_radius=5, max_radius=40)
    corr = closed.astype(float)
    t = regions_table(closed, corr, frame_index=0, binning=1, options=opts)
    assert len(t) == 1 and t.isolated.all()  # without the finer map: one isolated particle
    t = regions_table(closed, corr, frame_index=0, binning=1, options=opts, split=finer)
    assert len(t) == 2 and t.touching.all()
    assert np.allclose(np.sort(t.x.to_numpy()), [40, 66.5], atol=1.5)
    # a notched particle (the closing's reason) whose finer map holds one part of a particle's size: kept whole
    notched = np.hypot(yy - 40, xx - 60) < 20
    finer_n = notched & ~((np.abs(yy - 40) < 2) & (xx > 60))  # a slit into it
    t = regions_table(notched, notched.astype(float), frame_index=0, binning=1, options=opts, split=finer_n)
    assert len(t) == 1 and t.isolated.all() and not t.touching.any()


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - cy, xx - cx) <= r


def test_a_particle_ringed_by_fines_too_small_for_a_neck_is_cut_free_of_them_and_kept():
    # at the detector's binned resolution (stress-all seed 1, learned: a 13-px particle with five fines of r 3 stuck
    # to its rim, one body of solidity 0.65-0.79 in 12 of 13 key frames: rejected as not convex and never tracked),
    # the fines (r 1.6) hold no maximum of the distance transform 1 px above their neck for cut_at_necks to seed
    from xanestrack.detect import cut_at_necks

    shape = (60, 60)
    body = _disc(shape, 30, 30, 6.5)
    ringed = body.copy()
    for a in np.deg2rad([0, 72, 144, 216, 288]):
        ringed |= _disc(shape, 30 + 7.8 * np.sin(a), 30 + 7.8 * np.cos(a), 1.6)
    opts = DetectOptions(min_radius=3.5, max_radius=30)
    det = regions_table(ringed, ringed.astype(np.float32), frame_index=0, binning=1, options=opts)
    assert cut_at_necks(ringed, 0, np.inf) == []
    kept = det[det.isolated]
    assert len(kept) == 1 and kept.touching.iloc[0]
    # the particle, not the fines: its centre within 0.41 px (what is left of three fines stays on its rim) and
    # its size within 0.25 px
    assert np.allclose(kept[["y", "x"]].to_numpy(float), [[30, 30]], atol=0.5)
    assert abs(kept.radius.iloc[0] - np.sqrt(body.sum() / np.pi)) < 0.5
    assert (det.reason == "piece_too_small").sum() >= 2
    # a particle with fewer fines, convex enough to be kept whole (solidity 0.87 >= KEEP_SOLIDITY), is as before
    three = body.copy()
    for a in np.deg2rad([0, 110, 230]):
        three |= _disc(shape, 30 + 7.8 * np.sin(a), 30 + 7.8 * np.cos(a), 1.6)
    whole = regions_table(three, three.astype(np.float32), frame_index=0, binning=1, options=opts)
    assert len(whole) == 1 and whole.isolated.iloc[0] and not whole.touching.iloc[0]
    # the body alone is found as before, untouched
    plain = regions_table(body, body.astype(np.float32), frame_index=0, binning=1, options=opts)
    assert len(plain) == 1 and plain.isolated.iloc[0] and not plain.touching.iloc[0]


@pytest.mark.parametrize("what", ["crescent", "wide_lobe", "pair"])
def test_what_is_not_a_particle_with_fines_is_not_cut_as_one(what):
    # a partial outline (a crescent: a faint particle's rim before the edge), a lobe joined as wide as it is (part of
    # the body), two alike particles: no core with fines stuck to it
    from xanestrack.detect import _without_fines

    shape = (60, 60)
    if what == "crescent":
        reg = _disc(shape, 30, 30, 9) & ~_disc(shape, 30, 34, 8)
    elif what == "wide_lobe":
        reg = (
            _disc(shape, 30, 30, 7)
            | (_disc(shape, 30, 38, 3.0) & ~_disc(shape, 30, 30, 7))
            | np.pad(np.ones((5, 4), bool), ((28, 27), (35, 21)))
        )
    else:
        reg = _disc(shape, 30, 22, 6.5) | _disc(shape, 30, 35, 6.5)
    min_area = np.pi * 3.5**2
    assert _without_fines(reg, min_area, DetectOptions().min_solidity) is None
