"""``peak_nonrigid_v_noise`` bounds the peak own velocity that the positions' noise alone reaches (per axis, 95 % of
noise-only scans below it). The velocities are ``np.gradient``'s: central differences inside (noise 1 / sqrt(2) of
the positions'), one-sided at the track's first and last frame (sqrt(2) of it, twice as noisy). A floor for central
differences alone was exceeded by white noise of exactly the stated size in 40.7 % of particles (either axis; 22 %
per axis): the ends' velocities went above it."""

import numpy as np
import pandas as pd
import pytest

from xanestrack.motion import (
    OWN_DISPLACEMENT_NOISE,
    noise_maximum,
    peak_ratios,
    velocity_noise_maximum,
    velocity_noise_scales,
)

N_FRAMES = 60
SIGMA = 0.1  # px per axis


def _white_noise(n_particles, seed, *, gaps=False, frames=None):
    """``n_particles`` still particles on a field drifting 0.3 px/frame, every own position white noise ``SIGMA``
    per axis; ``gaps``: frames 10-13 and 30-32 not vouched for; ``frames``: only those frames in the table."""
    rng = np.random.default_rng(seed)
    f = np.arange(N_FRAMES) if frames is None else np.asarray(frames)
    rows = []
    for pid in range(n_particles):
        ny, nx = rng.normal(0, SIGMA, (2, len(f)))
        rel = np.ones(len(f), bool)
        if gaps:
            rel[(f >= 10) & (f < 14) | (f >= 30) & (f < 33)] = False
        rows.append(
            pd.DataFrame(
                dict(
                    particle=pid,
                    frame=f,
                    rigid_dy=0.3 * f,
                    rigid_dx=0.0,
                    nonrigid_dy=ny - ny[0],
                    nonrigid_dx=nx - nx[0],
                    reliable=rel,
                )
            )
        )
    m = pd.concat(rows, ignore_index=True)
    pr = peak_ratios(
        m.drop(columns="reliable"),
        reliable=m[["particle", "frame", "reliable"]],
        position_noise=pd.Series(SIGMA, index=range(n_particles)),
    )
    return pr


def test_velocity_noise_scales_are_np_gradients():
    """Per frame, the noise of np.gradient's velocity from unit-noise positions: its weights' length, on frames 1
    apart (1 / sqrt(2) inside, sqrt(2) at the ends) and on frames with some left out (unequal spacing)."""
    for f in (np.arange(8.0), np.array([0.0, 1, 2, 5, 6, 9, 10, 11])):
        weights = np.gradient(np.eye(len(f)), f, axis=0)  # column j: the velocities' weights of position j
        assert velocity_noise_scales(f) == pytest.approx(np.sqrt((weights**2).sum(axis=1)))
    s = velocity_noise_scales(np.arange(5.0))
    assert s[1:-1] == pytest.approx(1 / np.sqrt(2)) and s[[0, -1]] == pytest.approx(np.sqrt(2))
    assert np.isnan(velocity_noise_scales([3.0])).all()


def test_velocity_noise_maximum_is_the_largest_of_values_of_unequal_noise():
    """Equal scales (control): the 1-D noise_maximum, as before; unequal ones: the 95 % point of the largest
    |value| against draws."""
    assert velocity_noise_maximum(np.full(58, 0.5)) == pytest.approx(0.5 * noise_maximum(58, dims=1), rel=1e-9)
    assert np.isnan(velocity_noise_maximum([])) and np.isnan(velocity_noise_maximum([np.nan, 0.0]))
    rng = np.random.default_rng(3)
    scales = np.r_[np.sqrt(2), np.full(58, 1 / np.sqrt(2)), np.sqrt(2)]
    draws = np.abs(rng.normal(size=(40000, len(scales))) * scales).max(axis=1)
    assert np.mean(draws <= velocity_noise_maximum(scales)) == pytest.approx(0.95, abs=0.005)
    with pytest.raises(ValueError, match="quantile"):
        velocity_noise_maximum(scales, quantile=1.0)


@pytest.mark.parametrize("gaps", [False, True])
def test_white_noise_stays_below_the_velocity_floor_in_95_percent_per_axis(gaps):
    """600 noise-only particles (60 frames; with two gaps of frames not vouched for): the peak own |v| is above the
    floor in about 5 % per axis (22 % before), on either axis in about 10 % (41 % before)."""
    pr = _white_noise(600, seed=11, gaps=gaps)
    above = pr[["peak_nonrigid_vy", "peak_nonrigid_vx"]].to_numpy() > pr[["peak_nonrigid_v_noise"]].to_numpy()
    assert above.mean() == pytest.approx(0.05, abs=0.02), above.mean(axis=0)
    assert above.any(axis=1).mean() < 0.14, above.any(axis=1).mean()


def test_frames_left_out_of_the_table_are_counted_with_their_wider_differences():
    """A track whose table lacks frames 20-24 (np.gradient over unequal spacing at 19 and 25): still 5 % per axis."""
    frames = np.r_[0:20, 25:N_FRAMES]
    pr = _white_noise(600, seed=12, frames=frames)
    above = pr[["peak_nonrigid_vy", "peak_nonrigid_vx"]].to_numpy() > pr[["peak_nonrigid_v_noise"]].to_numpy()
    assert above.mean() == pytest.approx(0.05, abs=0.02), above.mean(axis=0)


def test_the_displacement_floor_and_its_flag_do_not_change():
    """Control: max_nonrigid_noise_px stays sqrt(2) x noise x the 2-D noise_maximum of the frames, and
    nonrigid_at_noise compares the largest own displacement with it."""
    pr = _white_noise(20, seed=5, gaps=True)
    n = N_FRAMES - 7
    assert pr["max_nonrigid_noise_px"].to_numpy() == pytest.approx(OWN_DISPLACEMENT_NOISE * SIGMA * noise_maximum(n))
    assert (pr["nonrigid_at_noise"] == (pr["max_nonrigid_displacement"] <= pr["max_nonrigid_noise_px"])).all()
    # the velocity floor: 49 velocities (a gap's neighbours have none), 2 of them one-sided (the ends)
    f = np.arange(N_FRAMES)
    rel = ~((f >= 9) & (f <= 14) | (f >= 29) & (f <= 33))  # velocities finite: both neighbours vouched for
    expect = SIGMA * velocity_noise_maximum(velocity_noise_scales(f)[rel])
    assert pr["peak_nonrigid_v_noise"].to_numpy() == pytest.approx(expect)
    assert expect > SIGMA / np.sqrt(2) * noise_maximum(rel.sum(), dims=1) * 1.3
