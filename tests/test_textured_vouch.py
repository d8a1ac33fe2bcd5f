"""A textured particle's centre of mass follows its contrast: a steady offset before the edge is no
reason to refuse those frames (:func:`xanestrack.pipeline._steady_offset_frames`)."""

from types import SimpleNamespace

import numpy as np
import pytest

from xanestrack import pipeline
from xanestrack.pipeline import PipelineOptions, _steady_offset_frames, _vouch_estimates
from xanestrack.result import FRAME_FLAGS

N_PRE, N_POST = 20, 40


def _offsets(pre, *, pre_sd=0.1, post_sd=0.05, seed=0):
    """Centre of mass less edge estimate: ``pre`` (px, (y, x)) in the first N_PRE frames, 0 after."""
    rng = np.random.default_rng(seed)
    o = np.r_[np.tile(pre, (N_PRE, 1)) + rng.normal(0, pre_sd, (N_PRE, 2)), rng.normal(0, post_sd, (N_POST, 2))]
    return o


def _ask(o):
    """The frames the centre of mass does not confirm (off the median offset by more than 0.5 px)."""
    return np.hypot(*(o - np.median(o, axis=0)).T) > 0.5


def test_a_steady_offset_before_the_edge_asks_the_density_there():
    o = _offsets([0.77, 0.55])  # the probe's r 90 particle: (+0.75, +0.54), sd (0.17, 0.11)
    both = np.ones(len(o), bool)
    ask = _ask(o)
    assert ask[:N_PRE].sum() > 10 and not ask[N_PRE:].any()
    got = _steady_offset_frames(o, both, ask)
    assert np.array_equal(got, ask)
    # after the edge instead (the probe's dense field, particle 27: the last 7 frames)
    o2 = o[::-1]
    assert np.array_equal(_steady_offset_frames(o2, both, _ask(o2)), _ask(o2))


@pytest.mark.parametrize(
    "what",
    ["wandering", "scattered", "nothing confirmed after", "too few frames"],
)
def test_a_disagreement_that_is_no_steady_offset_asks_nothing(what):
    rng = np.random.default_rng(1)
    o = _offsets([0.8, 0.5])
    both = np.ones(len(o), bool)
    if what == "wandering":  # a neighbour coming into the window: the offset grows frame by frame
        o[:N_PRE] = np.linspace(0, 1.6, N_PRE)[:, None] * [1.0, 0.3] + rng.normal(0, 0.05, (N_PRE, 2))
    elif what == "scattered":  # the outline jumps about by a pixel
        o[:N_PRE] = [0.8, 0.5] + rng.normal(0, 0.6, (N_PRE, 2))
    elif what == "nothing confirmed after":
        ask = np.ones(len(o), bool)
        assert not _steady_offset_frames(o, both, ask).any()
        return
    else:
        both[8:] = False
    assert not _steady_offset_frames(o, both, _ask(o) & both).any()


def _textured_scene(com_offset, n=60, n_pre=20, seed=0):
    """A grainy r 14 disc on a textured matrix, the two drifting 1.5 px over ``n`` frames; its first
    ``n_pre`` frames (before the edge) are faint. Returns ``(od, loc)``: a stand-in for the pipeline's
    located particle whose centre of mass is the true position plus ``com_offset(frame)``, its edge
    estimate the true position."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    size, r, half = 128, 14.0, 24
    yy, xx = np.mgrid[0:size, 0:size]
    disc = np.clip(r - np.hypot(yy - 64, xx - 64) + 0.5, 0, 1)
    grains = 1 + 0.4 * np.kron(rng.random((size // 4, size // 4)), np.ones((4, 4)))
    matrix = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
    matrix *= 0.05 / matrix.std()
    truth = np.c_[64 + np.linspace(0, 1.5, n), 64 + np.linspace(0, -1.0, n)]
    od = np.empty((n, size, size), np.float32)
    for k in range(n):
        level = 0.3 if k < n_pre else 1.0
        od[k] = ndimage.shift(level * disc * grains + matrix, truth[k] - 64, order=3, mode="nearest")
        od[k] += rng.normal(0, 0.01, (size, size))
    win = 2 * half + 1
    wy, wx = np.mgrid[0:win, 0:win]
    masks = np.stack(
        [np.clip(r - np.hypot(wy - half - (t[0] % 1), wx - half - (t[1] % 1)) + 0.5, 0, 1) for t in truth]
    ).astype(np.float32)
    com = truth + np.array([com_offset(k) for k in range(n)])
    seg = SimpleNamespace(com=com, masks=masks, outside=np.zeros((n, win, win), bool), clipped=np.zeros(n, bool))
    loc = SimpleNamespace(
        seg=seg,
        measured=np.ones(n, bool),
        detected=np.ones(n, bool),
        examined=np.ones(n, bool),
        followed=truth.copy(),
        ref_frame=n - 1,
        radius=r,
        reach=r,  # the radius its windows are sized on (an elongated particle's is larger)
    )
    return od, loc


def test_a_textured_particle_keeps_its_pre_edge_frames():
    """The centre of mass sits a steady (0.8, 0.5) px off the (right) edge estimate before the edge and
    on it after: the density vouches for the pre-edge frames (every one was refused before)."""
    rng = np.random.default_rng(2)
    jitter = rng.normal(0, 0.1, (60, 2))
    od, loc = _textured_scene(lambda k: (np.array([0.8, 0.5]) if k < 20 else 0) + jitter[k])
    v = _vouch_estimates(loc, np.zeros((60, 2)), od, PipelineOptions())
    dis = (v.flags & FRAME_FLAGS["disagree"]) > 0
    assert (v.com_agreement[:20] > 0.5).sum() >= 15  # the centre of mass refuses the pre-edge frames
    assert not dis.any()  # the density vouches for them


def test_a_wandering_disagreement_is_not_vouched_for_by_the_density():
    """The control: a centre of mass pulled away more and more before the edge (a neighbour coming
    into the window) keeps those frames refused, as before."""
    od, loc = _textured_scene(lambda k: np.array([1.5, 0.5]) * max(0, 20 - k) / 20 * 1.0)
    v = _vouch_estimates(loc, np.zeros((60, 2)), od, PipelineOptions())
    dis = (v.flags & FRAME_FLAGS["disagree"]) > 0
    assert dis[:5].all()


def test_on_the_default_scene_the_rule_gives_only_right_frames(monkeypatch):
    """The control: the default synthetic scene (seed 1, reduced). One particle's outline shifts a little
    across the edge too ((+0.1, -0.3) px before, (-0.15, +0.1) px after): the rule gives the density 2 frames
    (vouched for without it too), right to 0.1 px. Nothing ends up more than 0.5 px off."""
    from xanestrack.evaluate import evaluate_tracking
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    fired = []
    real = pipeline._steady_offset_frames

    def spy(*a, **kw):
        out = real(*a, **kw)
        fired.append(int(out.sum()))
        return out

    monkeypatch.setattr(pipeline, "_steady_offset_frames", spy)
    s = make_synthetic_stack(
        "default",
        seed=1,
        n_energies=48,
        shape=(200, 200),
        n_particles=4,
        radius_range=(10.0, 22.0),
        drift_range=(1.0, 3.0),
    )
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    table, summ = evaluate_tracking(r, s.truth)
    assert len(r.particles) == 4 and sum(fired) <= 4
    assert summ["unflagged_wrong"] == 0 and table["worst_px"].max() < 0.5
    assert all(((p.frame_flags & FRAME_FLAGS["disagree"]) == 0).all() for p in r.particles)
