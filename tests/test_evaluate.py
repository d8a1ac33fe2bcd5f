"""Scoring against ground truth (xanestrack.evaluate)."""

import numpy as np
import pandas as pd
import pytest

from xanestrack.evaluate import detection_f1, edge_map_error, evaluate_tracking, f1_by_band, pair_tracks
from xanestrack.result import FRAME_FLAGS


def test_detection_f1_counts():
    from xanestrack.detect import detect_stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=13, n_energies=4, shape=(200, 200), n_particles=3, radius_range=(10.0, 18.0)
    )
    det = detect_stack(s.optical_density())
    c = detection_f1(det, s.truth, s.energies_ev)
    assert len(c) == 4 and (c.tp + c.fn == 3).all()
    # a spurious isolated detection is a false positive, a removed one a false negative
    extra = det.iloc[:1].copy()
    extra[["y", "x"]] = [5.0, 5.0]
    import pandas as pd

    worse = f1_by_band(detection_f1(pd.concat([det.iloc[1:], extra]), s.truth, s.energies_ev))
    assert worse.loc["all", "fp"] >= 1 and worse.loc["all", "fn"] >= 1
    assert worse.loc["all", "f1"] < f1_by_band(c).loc["all", "f1"]


class _P:
    def __init__(self, pid, positions, flags):
        self.particle = pid
        self.positions = np.asarray(positions, float)
        self.frame_flags = np.asarray(flags, np.uint8)


class _Truth:
    def __init__(self, tracks, isolated):
        rows = [(j, k, y, x, iso) for j, (t, iso) in enumerate(zip(tracks, isolated)) for k, (y, x) in enumerate(t)]
        self.positions = pd.DataFrame(rows, columns=["particle", "frame", "y", "x", "isolated"])
        self.radii = np.full(len(tracks), 10.0)


def test_evaluate_tracking_counts_unflagged_errors_and_spurious_tracks():
    n = 20
    k = np.arange(n, dtype=float)
    t0 = np.c_[50 + 0.1 * k, 60 + 0 * k]
    t1 = np.c_[150 + 0 * k, 100 - 0.2 * k]
    t2 = np.c_[100 + 0 * k, 200 + 0 * k]  # not isolated, not found
    truth = _Truth([t0, t1, t2], [True, True, False])
    e0 = t0 + [0.3, -0.2]  # a constant offset misaligns nothing
    e0[5] += [1.5, 0]  # wrong, unflagged
    e0[6] += [0, 2.0]  # wrong, flagged disagree
    e0[7] += [0.7, 0]  # not wrong, but vouched for 0.7 px off (beyond the tool's 0.5-px agreement)
    f0 = np.zeros(n, int)
    f0[6] = FRAME_FLAGS["disagree"]
    e1 = t1.copy()
    e1[3] += [3.0, 0]  # wrong, interpolated: not tracked through every frame
    f1 = np.zeros(n, int)
    f1[3] = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["undetected"]
    spurious = np.c_[10 + 0 * k, 10 + 0 * k]
    result = type("R", (), {"particles": [_P(7, e1, f1), _P(3, e0, f0), _P(9, spurious, np.zeros(n))]})()
    table, s = evaluate_tracking(result, truth)
    assert s["n_true"] == 3 and s["n_found"] == 2 and s["n_isolated"] == 2 and s["isolated_found"] == 2
    assert s["isolated_tracked"] == 1 and s["spurious"] == 1
    assert s["frames_wrong"] == 3 and s["unflagged_wrong"] == 1 and s["worst_unflagged_px"] == pytest.approx(1.5)
    assert s["frames_disagree"] == 1
    # vouched for beyond the agreement: frames 5 and 7 (not 6, flagged; not particle 7's interpolated frame 3)
    assert s["vouched_off"] == 2 and s["worst_vouched_px"] == pytest.approx(1.5)
    assert evaluate_tracking(result, truth, agreement_px=1.0)[1]["vouched_off"] == 1
    assert (
        table.set_index("truth_particle").loc[0, "particle"] == 3
        and table.set_index("truth_particle").loc[2, "particle"] == -1
    )
    # pairing by whole tracks: a first frame far off still pairs with the particle followed
    e_bad0 = t0.copy()
    e_bad0[0] += [30, 30]
    assert pair_tracks(np.stack([e_bad0]), np.stack([t0, t1])) == [(0, 0)]


def test_edge_map_error_says_how_many_errors_the_standard_errors_cover():
    """Against the truth on the frame-0 grid (the estimate's window offset from the truth's):
    errors drawn with a known sigma fall within 1 and 2 of it at the normal rates; a sigma
    half as large covers far fewer."""
    rng = np.random.default_rng(0)
    truth = np.full((60, 60), 8345.0)
    truth[:, :5] = np.nan  # outside the particle: not compared
    sigma = np.full((70, 70), 0.3)
    est = np.full((70, 70), np.nan)
    est[5:65, 5:65] = truth + rng.normal(0, 0.3, truth.shape)  # the truth's origin is 5 px further in
    got = edge_map_error(est, (0, 0), truth, (5, 5), rim_px=2, sigma_map=sigma)
    assert got["within_1_sigma"] == pytest.approx(0.683, abs=0.03)
    assert got["within_2_sigma"] == pytest.approx(0.954, abs=0.02)
    assert got["rms_ev"] == pytest.approx(0.3, abs=0.02)
    half = edge_map_error(est, (0, 0), truth, (5, 5), rim_px=2, sigma_map=sigma / 2)
    assert half["within_1_sigma"] < 0.45 and half["within_2_sigma"] < 0.75
    assert "within_1_sigma" not in edge_map_error(est, (0, 0), truth, (5, 5))


def test_true_tracks_stacks_the_truth_by_particle_and_frame():
    from types import SimpleNamespace

    import pandas as pd

    from xanestrack.evaluate import true_tracks

    rows = [(p, k, 10.0 * p + k, -k) for p in (2, 0) for k in (1, 0, 2)]  # out of order
    truth = SimpleNamespace(positions=pd.DataFrame(rows, columns=["particle", "frame", "y", "x"]))
    t = true_tracks(truth)
    assert t.shape == (2, 3, 2)
    np.testing.assert_array_equal(t[1, :, 0], [20.0, 21.0, 22.0])  # particle 2, frames 0-2
    np.testing.assert_array_equal(t[0, :, 1], [0.0, -1.0, -2.0])
    assert true_tracks(SimpleNamespace(positions=truth.positions.iloc[:0])).shape == (0, 0, 2)
