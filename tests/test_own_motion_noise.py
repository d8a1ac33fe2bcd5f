"""Each particle's own-motion summary states its uncertainty: its positions' noise, the largest own displacement
(and peak own velocity) that noise alone reaches over its frames, and whether its largest own displacement is within
that (``nonrigid_at_noise``), with a run note naming such particles. The calibration probe's stress-counts particles
read 0.33 +- 0.24 px (truly 0.16 px) and 0.36 +- 0.46 px with nothing saying that this was noise; the default scenes'
own motions (0.86-5.7 px) are not marked."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from xanestrack.motion import (
    OWN_MOTION_NOISE_COLUMNS,
    OWN_MOTION_SPLIT_COLUMNS,
    compute_motion,
    noise_maximum,
    peak_ratios,
    velocity_noise_maximum,
    velocity_noise_scales,
)
from xanestrack.motion_notes import _own_motion_noise_note, _particle_position_noise

N_FRAMES = 60
SIGMA = 0.1  # px per axis


def _tracks(seed=4, *, mover_px=2.0, sigma=SIGMA):
    """6 particles over 60 frames: a common drift of 0.3 px/frame, particle 0 moving ``mover_px`` on its own (a smooth
    ramp along y and x), the others still; every position measured with white noise ``sigma`` per axis. ``edge_y,
    edge_x`` are the raw estimates, ``y, x`` the positions reported: the truth plus a third of the noise (smoothed)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, (6, 2))
    k = np.arange(N_FRAMES)
    common = 0.3 * k[:, None] * [1.0, -0.5]
    own = np.zeros((N_FRAMES, 6, 2))
    own[:, 0] = (k / (N_FRAMES - 1))[:, None] * np.full(2, mover_px / np.sqrt(2))
    truth = base[None] + common[:, None] + own
    raw = truth + rng.normal(0, sigma, truth.shape)
    rep = truth + (raw - truth) / 3.0
    rows = [(j, f, *rep[f, j], *raw[f, j]) for f in range(N_FRAMES) for j in range(6)]
    return pd.DataFrame(rows, columns=["particle", "frame", "y", "x", "edge_y", "edge_x"])


def _summary(t, reliable=None):
    m = compute_motion(t[["particle", "frame", "y", "x"]], centre=(127.5, 127.5))
    table = t.merge(m.drop(columns=["y", "x"]), on=["particle", "frame"])
    noise = _particle_position_noise(table, reliable)
    return peak_ratios(m, reliable=reliable, position_noise=noise).set_index("particle"), noise


def test_noise_maximum_is_the_largest_of_n_noisy_values():
    """The floor's factor: the 95 % point of the largest length of n 2-D (1-D) unit normal vectors, against draws."""
    rng = np.random.default_rng(0)
    for n in (1, 10, 60):
        two = np.hypot(*rng.normal(size=(2, 20000, n))).max(axis=1)
        one = np.abs(rng.normal(size=(20000, n))).max(axis=1)
        assert np.mean(two <= noise_maximum(n, dims=2)) == pytest.approx(0.95, abs=0.006)
        assert np.mean(one <= noise_maximum(n, dims=1)) == pytest.approx(0.95, abs=0.006)
    assert noise_maximum(60) == pytest.approx(3.759, abs=1e-3)
    assert np.isnan(noise_maximum(0))
    with pytest.raises(ValueError, match="dims"):
        noise_maximum(5, dims=3)


def test_the_positions_noise_is_measured_from_the_raw_own_motion():
    """Per particle, from its raw estimates frame to frame (0.1 px per axis here: 0.077-0.133 from 60 frames,
    0.092-0.108 their mean), the mover's 2 px ramp adding nothing; the same without edge estimates (positions as
    measured, ``--no-smooth-tracks``); from frames vouched for apart (each against the line through its neighbours
    vouched for); NaN where they lie too far apart."""
    t = _tracks()
    _, noise = _summary(t)
    assert noise.to_numpy() == pytest.approx(SIGMA, rel=0.35) and noise.mean() == pytest.approx(SIGMA, rel=0.1), noise
    raw = t.drop(columns=["y", "x"]).rename(columns={"edge_y": "y", "edge_x": "x"})
    _, plain = _summary(raw)
    assert plain.to_numpy() == pytest.approx(SIGMA, rel=0.35) and plain.mean() == pytest.approx(SIGMA, rel=0.1), plain
    rel = t[["particle", "frame"]].copy()
    # particle 3 vouched for every other frame (never three in a row: its line through frames 2 apart), 4 every 10th
    rel["reliable"] = ~((rel["particle"] == 3) & (rel["frame"] % 2 == 1)) & ~(
        (rel["particle"] == 4) & (rel["frame"] % 10 > 0)
    )
    _, some = _summary(t, rel)
    assert some[3] == pytest.approx(SIGMA, rel=0.35)
    assert np.isnan(some[4]) and np.isfinite(some.drop(4)).all()


def test_still_particles_are_within_their_noise_and_the_mover_is_not():
    """The five still particles' largest own displacement (noise only, smoothed: 0.09-0.19 px) is within the floor
    sqrt(2) x noise x 3.76 (0.41-0.61 px over 60 frames); the mover's 2 px is not. Without position noise the table
    is as before (its 8 columns)."""
    r, noise = _summary(_tracks())
    # (then the split's columns, tests/test_motion_split.py)
    assert list(r.columns[-6:]) == OWN_MOTION_NOISE_COLUMNS + OWN_MOTION_SPLIT_COLUMNS
    assert r["position_noise_px"].to_numpy() == pytest.approx(noise.reindex(r.index).to_numpy())
    assert r["max_nonrigid_noise_px"].to_numpy() == pytest.approx(
        np.sqrt(2) * noise.reindex(r.index).to_numpy() * noise_maximum(N_FRAMES)
    )
    assert r["nonrigid_at_noise"].dtype == bool
    assert not r.loc[0, "nonrigid_at_noise"] and r.loc[0, "max_nonrigid_displacement"] > 1.9
    assert r.drop(0)["nonrigid_at_noise"].all(), r
    # the velocity floor: np.gradient's velocities, central differences inside (1 / sqrt(2) of the noise) and
    # one-sided at the two ends (sqrt(2) of it), over the frames, 1-D (tests/test_velocity_noise_bound.py)
    scales = velocity_noise_scales(np.arange(N_FRAMES))
    assert r["peak_nonrigid_v_noise"].to_numpy() == pytest.approx(
        noise.reindex(r.index).to_numpy() * velocity_noise_maximum(scales)
    )
    # control: the same tracks without position noise (nor the split measured) give the same 8 columns, the same
    # numbers
    m = compute_motion(_tracks()[["particle", "frame", "y", "x"]], centre=(127.5, 127.5), split=False)
    plain = peak_ratios(m).set_index("particle")
    assert not set(OWN_MOTION_NOISE_COLUMNS) & set(plain.columns) and len(plain.columns) == 7
    pd.testing.assert_frame_equal(plain, r[plain.columns])


def test_a_real_own_motion_of_five_times_the_noise_is_not_marked_and_noise_is():
    """Noisier positions (0.3 px per axis): the mover's 2.08 px stays above its floor (1.35 px); moving 0.2 px, it
    reads 0.32 px, within its floor (1.27 px): the number is the noise's largest excursion. A particle without a
    noise is not judged (False)."""
    r, _ = _summary(_tracks(seed=7, sigma=0.3))
    assert not r.loc[0, "nonrigid_at_noise"] and r.loc[0, "max_nonrigid_noise_px"] < 1.8
    small, _ = _summary(_tracks(seed=7, sigma=0.3, mover_px=0.2))
    assert small.loc[0, "nonrigid_at_noise"]
    m = compute_motion(_tracks()[["particle", "frame", "y", "x"]], centre=(127.5, 127.5))
    some = peak_ratios(m, position_noise=pd.Series({1: 0.1, 2: np.nan})).set_index("particle")
    assert some.loc[1, "nonrigid_at_noise"] and not some.drop(1)["nonrigid_at_noise"].any()
    assert some.drop(1)["max_nonrigid_noise_px"].isna().all()


def test_the_note_names_the_particles_within_their_noise_and_none_otherwise():
    r, _ = _summary(_tracks())
    note = _own_motion_noise_note(r.reset_index())
    assert note.startswith("5 of 6 particles' own motion is within their positions' noise"), note
    for j in range(1, 6):
        row = r.loc[j]
        assert (
            f"particle {j} {row.max_nonrigid_displacement:.2f} px (noise alone: up to "
            f"{row.max_nonrigid_noise_px:.2f} px; {row.position_noise_px:.3f} px per axis)" in note
        )
    assert "particle 0 " not in note and "nonrigid_at_noise" in note
    # control: no particle within its noise (the still ones left out), or no noise columns (a folder before them)
    assert _own_motion_noise_note(r.loc[[0]].reset_index()) == ""
    assert _own_motion_noise_note(r.reset_index().drop(columns=OWN_MOTION_NOISE_COLUMNS)) == ""


@pytest.fixture(scope="module")
def faint_run(tmp_path_factory):
    """The probe's scene: reduced stress-counts, seed 1, 60 energies, read as the command line reads it (counts and
    flats, learned models)."""
    from xanestrack.io import read_stack
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.synth_stress import make_stress_stack
    from xanestrack.truth_io import write_synthetic

    folder = tmp_path_factory.mktemp("counts")
    s = make_stress_stack("stress-counts", 1, reduced=True, n_energies=60)
    write_synthetic(s, folder, preset="stress-counts")
    opts = PipelineOptions()
    det, seg = pipeline_models("learned", "learned", options=opts)
    return s, run_pipeline(read_stack(folder / "stack.h5"), options=opts, detector=det, segmenter=seg)


def test_a_faint_scan_marks_its_noise_level_own_motions_and_round_trips(faint_run, tmp_path):
    """stress-counts: the three particles reading 0.03-0.19 px of own motion (noise 0.08-0.16 px per axis, floors
    0.41-0.80 px) are marked and named in a run note, the one reading 1.23 px (truly 1.29) is not; the summary
    sentence and the motion table say so; results.h5 and motion_summary.csv keep the new columns, and a folder
    written before them still reads and reports."""
    from xanestrack.report import write_report
    from xanestrack.results import read_results, write_results

    s, r = faint_run
    pr = r.peak_ratios
    assert list(pr.columns[-6:]) == OWN_MOTION_NOISE_COLUMNS + OWN_MOTION_SPLIT_COLUMNS
    at = pr[pr["nonrigid_at_noise"]]
    assert len(at) >= 2 and (at["max_nonrigid_displacement"] < 0.3).all(), pr
    moved = pr[pr["max_nonrigid_displacement"] > 1.0]
    assert len(moved) >= 1 and not moved["nonrigid_at_noise"].any(), pr
    assert (pr["position_noise_px"] > 0.03).all()
    note = [n for n in r.notes if "own motion is within" in n]
    assert len(note) == 1 and all(f"particle {int(p)} " in note[0] for p in at["particle"]), r.notes
    out = tmp_path / "run"
    write_results(r, out)
    back = read_results(out)
    pd.testing.assert_frame_equal(back.peak_ratios, pr)
    csv = pd.read_csv(out / "motion_summary.csv")
    assert list(csv.columns[-6:]) == OWN_MOTION_NOISE_COLUMNS + OWN_MOTION_SPLIT_COLUMNS
    assert csv["nonrigid_at_noise"].dtype == bool and csv["nonrigid_within_split"].dtype == bool
    html = write_report(out).read_text()
    assert "own motion within noise" in html and "from noise alone" in html
    assert "within their positions&#x27; noise" in html or "No particle&#x27;s own motion stands above" in html
    # a folder written before the columns: read back without them, its report as before
    old = dataclasses.replace(r, peak_ratios=pr.drop(columns=OWN_MOTION_NOISE_COLUMNS + OWN_MOTION_SPLIT_COLUMNS))
    write_results(old, tmp_path / "old")
    back = read_results(tmp_path / "old")
    assert not set(OWN_MOTION_NOISE_COLUMNS + OWN_MOTION_SPLIT_COLUMNS) & set(back.peak_ratios.columns)
    html = write_report(tmp_path / "old").read_text()
    assert "own motion within noise" not in html and "moved most on its own" in html
    assert "moved by the split" not in html


def test_a_bright_scan_marks_no_own_motion(small_synth):
    """Control: the default scene (4 particles drifting 1-3 px on their own): their own motions (1.36-2.32 px) stand
    8-13 times above their floors (0.13-0.18 px), no particle is marked, no note."""
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.stack import Stack

    r = run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev), options=PipelineOptions(detect_every=6)
    )
    pr = r.peak_ratios
    assert len(pr) >= 3 and not pr["nonrigid_at_noise"].any(), pr
    assert (pr["max_nonrigid_displacement"] > 5 * pr["max_nonrigid_noise_px"]).all(), pr
    assert not any("own motion is within" in n for n in r.notes)
