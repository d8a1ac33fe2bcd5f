"""The still-field rule of the ratios of peak velocities (ratio_v, ratio_h) is decided once for the field, each frame's
common velocity against that frame's positions' noise: a field that moves keeps every particle's ratios, a field that
does not loses them all, and the note quotes the numbers it compared."""

import numpy as np
import pandas as pd
import pytest

import xanestrack.synth as synth
from xanestrack.models import pipeline_models
from xanestrack.motion import STILL_FIELD_NOISE, compute_motion, peak_ratios
from xanestrack.motion_notes import _position_noise, _still_field_note
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.stack import Stack
from xanestrack.synth_stress import make_stress_stack

N = 40


def _moving_field(*, seed=3, noise=0.02):
    """Tracks of 6 particles whose field moves 0.5 px/frame along y and x over frames 0-9, then stands still."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, (6, 2))
    k = np.arange(N)
    common = 0.5 * np.minimum(k, 10)[:, None] * [1.0, 1.0]
    P = base[None] + common[:, None] + rng.normal(0, noise, (N, 6, 2))
    rows = [(j, f, *P[f, j]) for f in range(N) for j in range(6)]
    return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])


def test_one_decision_for_the_field_not_one_per_particle():
    """A particle vouched for only after the field stopped saw none of its motion (peak common velocity 0.016 / 0.014
    px/frame over its frames, below 3 x 0.02): its ratios were NaN and the others' given. Now all are given."""
    m = compute_motion(_moving_field(), centre=(127.5, 127.5))
    pf = m[["particle", "frame"]].to_numpy()
    reliable = pd.DataFrame({"particle": pf[:, 0], "frame": pf[:, 1], "reliable": (pf[:, 0] != 0) | (pf[:, 1] >= 15)})
    r = peak_ratios(m, reliable=reliable, noise_px=0.02)
    assert r[["ratio_v", "ratio_h"]].notna().to_numpy().all(), r
    assert r.set_index("particle").loc[0, ["peak_rigid_vy", "peak_rigid_vx"]].max() < 3 * 0.02  # its own frames
    assert all(r.attrs["still_field"][c]["moves"] for c in "yx")
    assert _still_field_note(r) == ""


def test_the_frames_noise_decides_and_the_note_quotes_what_was_compared():
    """The same field with a noise of 1 px in the frames it moves in: its 0.5 px/frame is within the noise there, and
    every particle's ratios are NaN; the note gives the velocity, the noise and their ratio of the frame compared."""
    t = _moving_field()
    m = compute_motion(t, centre=(127.5, 127.5))
    noise = pd.Series(np.where(np.arange(N) <= 11, 1.0, 0.02), index=np.arange(N))
    r = peak_ratios(m, noise_px=noise)
    assert r[["ratio_v", "ratio_h"]].isna().to_numpy().all()
    note = _still_field_note(r)
    assert "hardly moves" in note and "ratio_v and ratio_h" in note and "every particle" in note, note
    for c in "yx":
        d = r.attrs["still_field"][c]
        assert not d["moves"] and d["velocity"] / d["noise"] < STILL_FIELD_NOISE
        assert f"{d['velocity'] / d['noise']:.2f} times it (frame {d['frame']}: {d['velocity']:.3f} px/frame" in note
    assert r.attrs["least_common_velocity"] == pytest.approx(STILL_FIELD_NOISE * 0.02)


def _learned_run(stack):
    opts = PipelineOptions()
    det, seg = pipeline_models("learned", "learned", options=opts)
    return run_pipeline(stack, options=opts, detector=det, segmenter=seg)


def test_a_drifting_field_keeps_its_ratios(tmp_path):
    """Reduced stress-drift seed 2 read as a run reads it (counts and flats, learned models), its field moving up to
    0.913 / 0.543 px/frame (truth): three of its 8 ratios were NaN and "the field hardly moves" said (particles'
    peaks 0.524 px/frame along x against 3 x 0.176). Now all are given, ratio_h 0.704 and 0.356 (truth 0.724 and
    0.318), the field's velocity 49 and 23 times its frame's noise."""
    from xanestrack.io import read_stack
    from xanestrack.truth_io import write_synthetic

    s = make_stress_stack("stress-drift", 2, reduced=True)
    write_synthetic(s, tmp_path, preset="stress-drift")
    r = _learned_run(read_stack(tmp_path / "stack.h5"))
    assert not any("hardly moves" in n for n in r.notes)
    pr = r.peak_ratios
    assert len(pr) == 4 and pr[["ratio_v", "ratio_h"]].notna().to_numpy().all(), pr
    for c in "yx":
        d = pr.attrs["still_field"][c]
        assert d["moves"] and d["velocity"] / d["noise"] > 5 * STILL_FIELD_NOISE
    # the run's particles near the truth's particles 2 and 1 (their first positions), ratio_h against the truth's
    first = r.tracks.sort_values("frame").groupby("particle")[["y", "x"]].first()
    g = s.truth.global_shift
    for truth_id in (2, 1):
        h = s.truth.positions[s.truth.positions["particle"] == truth_id].sort_values("frame")
        yx = h[["y", "x"]].to_numpy()
        own = yx - yx[0] - (g - g[0])
        true_h = np.abs(np.gradient(own[:, 1])).max() / np.abs(np.gradient(g[:, 1])).max()
        pid = (np.hypot(*(first.to_numpy() - yx[0]).T)).argmin()
        assert np.hypot(*(first.to_numpy()[pid] - yx[0])) < 2
        assert pr.set_index("particle").loc[first.index[pid], "ratio_h"] == pytest.approx(true_h, abs=0.06)


def test_a_field_with_no_stage_motion_still_loses_its_ratios(monkeypatch):
    """The deformation probe's scene: the rigid preset with no stage motion, one particle of 6 moving (+4, -2) px on its
    own (ratios of 1.19 and 1.98 were noise over noise): caught, all ratios NaN, the largest velocity / noise 1.24
    along y and 1.54 along x (1.56 and 1.48 in the run from its files, as the probe's)."""
    drifts = synth._own_drifts

    def one_mover(rng, p, n):
        drifts(rng, p, n)  # the random stream as the probe's
        d = [np.zeros((p.n_energies, 2)) for _ in range(n)]
        d[2] = np.linspace(0, 1, p.n_energies)[:, None] * [4.0, -2.0]
        return d

    monkeypatch.setattr(synth, "_common_motion", lambda rng, p: 0.0 * rng.normal(0, 1, (p.n_energies, 2)))
    monkeypatch.setattr(synth, "_own_drifts", one_mover)
    s = synth.make_synthetic_stack(
        "rigid", seed=5, n_energies=60, shape=(256, 256), n_particles=6, radius_range=(10.0, 22.0)
    )
    assert not np.any(s.truth.global_shift)
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    pr = r.peak_ratios
    assert len(pr) == 6 and pr[["ratio_v", "ratio_h"]].isna().to_numpy().all(), pr
    assert any("the field hardly moves" in n for n in r.notes)
    for c in "yx":
        d = pr.attrs["still_field"][c]
        assert not d["moves"] and d["velocity"] / d["noise"] < 0.8 * STILL_FIELD_NOISE


def test_the_default_scene_keeps_its_ratios():
    """Control: the default scene, seed 1, reduced (256 px, 40 energies, 6 particles): its field moves far beyond the
    noise, no note, every ratio given."""
    s = synth.make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(256, 256), n_particles=6, radius_range=(10.0, 22.0)
    )
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    pr = r.peak_ratios
    assert len(pr) and pr[["ratio_v", "ratio_h"]].notna().to_numpy().all()
    assert not any("hardly moves" in n for n in r.notes)
    for c in "yx":
        assert pr.attrs["still_field"][c]["velocity"] / pr.attrs["still_field"][c]["noise"] > 10 * STILL_FIELD_NOISE


def test_the_noise_per_frame_is_that_of_the_raw_edge_estimates():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"frame": np.repeat(np.arange(50), 6), "y": 10.0, "x": 20.0})
    t["edge_y"] = t["y"] + rng.normal(0, 0.03, len(t)) * (1 + (t["frame"] < 10))  # noisier pre-edge frames
    t["edge_x"] = t["x"] + rng.normal(0, 0.03, len(t)) * (1 + (t["frame"] < 10))
    n = _position_noise(t, per_frame=True)
    assert list(n.index) == list(range(50))
    assert 0.04 < n[:10].median() < 0.08 and 0.02 < n[10:].median() < 0.04
    assert _position_noise(t.assign(edge_y=t["y"], edge_x=t["x"]), per_frame=True).isna().all()
