import numpy as np
import pytest

from conftest import pair_by_position
from xanestrack.detect import DetectOptions, detect_particles
from xanestrack.evaluate import evaluate_result
from xanestrack.pipeline import run_pipeline, sanitize_stack
from xanestrack.result import FRAME_FLAGS
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack


@pytest.fixture(scope="module")
def small_result(small_synth):
    st = Stack(small_synth.optical_density(), small_synth.energies_ev)
    return run_pipeline(st)


def test_synthetic_generator_is_deterministic_and_has_truth():
    a = make_synthetic_stack("default", seed=3, n_energies=5, shape=(120, 120), n_particles=2, radius_range=(10, 14))
    b = make_synthetic_stack("default", seed=3, n_energies=5, shape=(120, 120), n_particles=2, radius_range=(10, 14))
    assert np.array_equal(a.counts, b.counts)
    t = a.truth
    assert len(t.positions) == 2 * 5 and t.masks[0].shape[0] == 5
    # shifts of the rigid particle are the global jitter
    g = t.positions[t.positions.particle == 0].sort_values("frame")
    assert np.allclose(g[["dy", "dx"]].to_numpy(), t.global_shift)


def test_end_to_end_small_stack(small_synth, small_result):
    truth = small_synth.truth
    table, summary = evaluate_result(small_result, truth)
    assert summary["n_found"] == 4 and summary["n_false"] == 0
    assert summary["max_rms_px"] < 0.3
    # 48 energies give ~1.5 eV steps across the edge: linear interpolation of E50 costs ~0.5 eV here
    assert summary["max_edge_rms_ev"] < 1.0
    # every particle tracked through every frame, ids paired by position
    est0 = [p.positions[0] for p in small_result.particles]
    true0 = truth.positions[truth.positions.frame == 0].sort_values("particle")[["y", "x"]].to_numpy()
    assert len(pair_by_position(est0, true0)) == 4
    assert all(((p.frame_flags & FRAME_FLAGS["interpolated"]) == 0).all() for p in small_result.particles)
    t = small_result.tracks
    assert {"particle", "frame", "energy_ev", "y", "x", "dy", "dx", "vy", "vx", "rigid_dy", "nonrigid_dy", "flags"} <= set(t.columns)
    assert len(t) == 4 * 48


def test_detection_rejects_border_touching_and_fines():
    s = make_synthetic_stack("hard", seed=2, n_energies=3)
    det = detect_particles(s.optical_density()[2])
    reasons = set(det["reason"])
    assert "" in reasons
    assert "too_small" in reasons or "not_convex" in reasons


def test_particle_leaving_the_field_of_view_is_flagged():
    s = make_synthetic_stack("default", seed=5, n_energies=30, shape=(160, 160), n_particles=2, radius_range=(12, 16), drift_range=(0, 0), jitter_step=0.0, jump_probability=0.0)
    od = s.optical_density()
    truth0 = s.truth.positions[s.truth.positions.frame == 0].sort_values("particle")
    # slide the frames so that the first particle exits the top edge in the last frames
    cy = float(truth0.iloc[0]["y"])
    moved = od.copy()
    for k in range(20, 30):
        dy = int((k - 19) * (cy / 6))
        moved[k] = np.roll(od[k], -dy, axis=0)
        moved[k, -dy:] = od[k, -dy:]  # refill the bottom with background-like content
    r = run_pipeline(Stack(moved, s.energies_ev))
    assert len(r.particles) >= 1
    flags = np.concatenate([p.frame_flags for p in r.particles])
    assert (flags & (FRAME_FLAGS["undetected"] | FRAME_FLAGS["out_of_view"] | FRAME_FLAGS["interpolated"])).any()


def test_stack_without_particles_and_single_frame():
    rng = np.random.default_rng(0)
    empty = Stack(rng.normal(0, 0.01, (10, 64, 64)).astype(np.float32), np.linspace(8300, 8400, 10))
    r = run_pipeline(empty)
    assert r.particles == [] and "no isolated particle" in " ".join(r.notes)
    s = make_synthetic_stack("default", seed=4, n_energies=2, shape=(120, 120), n_particles=2, radius_range=(10, 14))
    r1 = run_pipeline(Stack(s.optical_density()[:1], s.energies_ev[:1]))
    assert len(r1.particles) == 2
    assert "XANES skipped" in " ".join(r1.particles[0].notes)


def test_nan_pixels_are_repaired_and_hopeless_frames_refused():
    od = np.zeros((3, 32, 32), np.float32)
    od[1, 5, 5] = np.nan
    clean, n = sanitize_stack(od)
    assert n == 1 and np.isfinite(clean).all() and np.isnan(od[1, 5, 5])  # input untouched
    od[2, :20] = np.inf
    with pytest.raises(ValueError, match=r"frames \[2\]"):
        sanitize_stack(od)


def test_stack_validation_messages():
    with pytest.raises(ValueError, match="3-D array"):
        Stack(np.zeros((10, 10)), np.arange(10.0) + 8000)
    with pytest.raises(ValueError, match="look like keV"):
        Stack(np.zeros((2, 10, 10)), np.array([8.3, 8.4]))
    with pytest.raises(TypeError, match="Stack"):
        run_pipeline(np.zeros((2, 10, 10)))


def test_all_background_frame_is_flagged_not_fatal(small_synth):
    od = small_synth.optical_density().copy()
    od[20] = np.random.default_rng(0).normal(0, 0.01, od[20].shape)  # beam lost: no particles
    r = run_pipeline(Stack(od, small_synth.energies_ev))
    assert len(r.particles) == 4
    for p in r.particles:
        assert p.frame_flags[20] & FRAME_FLAGS["interpolated"]  # position not measured there: interpolated and flagged
        assert ((p.frame_flags & FRAME_FLAGS["interpolated"]) == 0).sum() >= 46


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


def test_one_irregular_particle_is_not_split():
    yy, xx = np.mgrid[0:120, 0:120]
    th = np.arctan2(yy - 60, xx - 60)
    r = 25 * (1 + 0.15 * np.cos(3 * th) + 0.08 * np.cos(5 * th + 1))  # lobed outline, one body
    frame = (np.hypot(yy - 60, xx - 60) < r).astype(np.float32) * 0.8
    frame += np.random.default_rng(2).normal(0, 0.01, frame.shape).astype(np.float32)
    det = detect_particles(frame)
    assert len(det) == 1 and not det.touching.iloc[0] and det.isolated.iloc[0]


def test_key_frame_detection_propagates_rois_through_stage_jumps():
    """Detect on every 6th frame only: the jumps in between are found by phase correlation."""
    from xanestrack.evaluate import evaluate_result
    from xanestrack.match import propagate_common
    from xanestrack.pipeline import PipelineOptions

    s = make_synthetic_stack("default", seed=14, n_energies=48, shape=(220, 220), n_particles=4, radius_range=(10.0, 20.0),
                             jump_probability=0.15, jump_size=8.0, drift_range=(0.5, 2.0))
    od = s.optical_density()
    key = list(range(0, 48, 6)) + [47]
    g = s.truth.global_shift
    # given the true shift on the key frames, the frames in between are recovered to ~1-2 px
    est = propagate_common(od, np.where(np.isin(np.arange(48), key)[:, None], g, np.nan), np.array(key))
    between = ~np.isin(np.arange(48), key)
    assert np.abs(est[between] - g[between]).max() < 3.0
    lin = np.stack([np.interp(np.arange(48), key, g[key, d]) for d in range(2)], 1)
    assert np.abs(est[between] - g[between]).mean() < 0.5 * np.abs(lin[between] - g[between]).mean()
    r = run_pipeline(Stack(od, s.energies_ev), options=PipelineOptions(detect_every=6))
    assert set(r.detections["frame"]) <= set(key)
    _, summ = evaluate_result(r, s.truth)
    assert summ["n_found"] == 4 and summ["n_false"] == 0
    assert summ["max_rms_px"] < 0.3
    # frames not examined are not flagged "undetected"
    assert not r.tracks[~r.tracks["frame"].isin(key)]["flags"].str.contains("undetected").any()
