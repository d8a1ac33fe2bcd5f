"""The classical detector and the region tests shared by every detector (xanestrack.detect)."""

import numpy as np
import pytest

from conftest import undocumented_fields
from xanestrack.detect import DETECTION_COLUMNS, DetectOptions, detect_particles, detect_stack
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
