"""An agreement that compared nothing vouches for nothing (the real SSRL pair, consistency probe round 11, item 4).

The two estimates of a particle's position (its mask's centre of mass, the edge correlation) are displacements up
to one constant offset. Where that offset is taken from the frame being tested alone, the frame agrees with
itself: the SSRL pair's particle 11, measured both ways in frame 0 only, had ``agreement_px`` 0.0000 there and
was counted vouched for ("vouched for in 1 of 2 frames (median agreement 0.00 px)"); its particle 10 had frame 0
(the reference frame) vouched for by the same 0.46-px comparison that left frame 1 ``disagree``.
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from xanestrack import report
from xanestrack.register import vouch_positions
from xanestrack.result import FRAME_FLAGS

DISAGREE = FRAME_FLAGS["disagree"]


def _disc_masks(n, size=31, r=8.0):
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    return np.stack([np.clip(r - np.hypot(yy - c, xx - c) + 0.5, 0, 1)] * n).astype(np.float32)


def _vouch(com, edge, *, no_mask=(), **kw):
    n = len(com)
    masks = _disc_masks(n)
    com = np.array(com, float)
    for k in no_mask:  # nothing segmented there: no centre of mass
        masks[k] = 0
        com[k] = np.nan
    args = dict(
        edge_measured=np.ones(n, bool),
        masks=masks,
        outside=np.zeros((n, 31, 31), bool),
        clipped=np.zeros(n, bool),
        undetected=np.zeros(n, bool),
        common=np.zeros((n, 2)),
        reference_frame=n - 1,
    )
    args.update(kw)
    return vouch_positions(com, np.asarray(edge, float), **args)


def _vouched(v):
    return (v.flags & DISAGREE) == 0


def test_a_frame_measured_both_ways_alone_is_compared_with_nothing_and_not_vouched_for():
    # the SSRL pair's particle 11: two frames, the edge estimate relative to frame 1 (where it was detected),
    # its mask empty there; frame 0 has both estimates, 2.3 px apart: the one offset they share is theirs
    com = [[880.7, 87.8], [900.6, 98.8]]
    edge = [[878.4, 87.8], [900.6, 98.8]]
    v = _vouch(com, edge, no_mask=[1], reference_frame=1)
    assert np.isnan(v.agreement).all()  # was 0.0000 in frame 0
    assert not _vouched(v).any()  # frame 0 was vouched for
    assert np.allclose(v.positions[0], com[0])  # the position is still measured, placed on that offset
    # the same with the reference frame the one measured (as before: NaN, not vouched for)
    w = _vouch(com, edge, no_mask=[1], reference_frame=0)
    assert np.isnan(w.agreement).all() and not _vouched(w).any()
    # a long scan with one such frame: compared with nothing either
    n = 8
    com8 = np.c_[50 + 0.3 * np.arange(n), 40.0 + 0 * np.arange(n)]
    lone = _vouch(com8, com8 - [2.0, 1.0], no_mask=[k for k in range(n) if k != 3])
    assert np.isnan(lone.agreement[3]) and lone.flags[3] & DISAGREE


def test_control_frames_compared_with_another_are_vouched_for_as_before():
    # both frames measured both ways and agreeing: each compared with the other, both vouched for
    com = np.array([[50.0, 40.0], [60.0, 45.0]])
    v = _vouch(com, com + [[0.0, 0.0], [0.2, 0.0]], reference_frame=0, common=np.array([[0, 0], [10, 5.0]]))
    assert _vouched(v).all() and np.allclose(v.agreement, 0.2)
    # eight frames, agreeing: the median offset, every frame vouched for
    n = 8
    rng = np.random.default_rng(0)
    com8 = np.c_[50 + 0.3 * np.arange(n), 40 - 0.1 * np.arange(n)] + rng.normal(0, 0.05, (n, 2))
    edge8 = com8 - [2.0, 1.0] + rng.normal(0, 0.05, (n, 2))
    v8 = _vouch(com8, edge8)
    assert (v8.flags == 0).all() and np.allclose(v8.agreement, np.hypot(*(com8 - edge8 - np.median(com8 - edge8, 0)).T))


def test_the_reference_frame_is_vouched_for_only_with_the_frames_compared_with_it():
    # the SSRL pair's particle 10: two frames, the common motion (10, 5) px, the particle 7 px off it on its own,
    # its two estimates 0.45 px apart: frame 1 not vouched for (a loose agreement far off the common motion),
    # and frame 0, whose agreement is that same comparison, no more (it was)
    common = np.array([[0.0, 0.0], [10.0, 5.0]])

    def vouched(own, apart):
        com = np.array([[50.0, 40.0], [60.0 + own, 45.0]])
        edge = com + np.array([[0.0, 0.0], [apart, 0.0]])
        v = _vouch(com, edge, common=common, reference_frame=0)
        assert np.allclose(v.agreement, apart)
        return _vouched(v).tolist()

    assert vouched(7.0, 0.45) == [False, False]  # was [True, False]
    # controls: where frame 1 is vouched for, so is frame 0
    assert vouched(7.0, 0.2) == [True, True]
    assert vouched(1.0, 0.45) == [True, True]
    assert vouched(0.0, 0.6) == [False, False]  # beyond the threshold: neither, as before


def test_few_frames_without_the_reference_frame_are_each_compared_with_the_others():
    # three frames, the reference frame's mask empty: frames 0 and 1 compared with each other. Their offsets
    # 0.8 px apart were each 0.4 px from their median (itself half their own) and both vouched for
    com = np.array([[50.0, 40.0], [51.0, 40.0], [52.0, 40.0]])
    edge = com.copy()
    edge[1, 0] += 0.8
    v = _vouch(com, edge, no_mask=[2], reference_frame=2)
    assert np.allclose(v.agreement[:2], 0.8) and not _vouched(v).any()
    # control: 0.3 px apart, each vouched for at 0.3 px
    edge[1, 0] = com[1, 0] + 0.3
    w = _vouch(com, edge, no_mask=[2], reference_frame=2)
    assert np.allclose(w.agreement[:2], 0.3) and _vouched(w)[:2].all()


def test_the_report_says_never_compared_not_never_agree():
    tracks = pd.DataFrame({"particle": [11, 11], "flags": ["undetected|disagree", "no_mask|disagree"]})
    row = pd.Series({"mean_e50_ev": np.nan, "frames_vouched": 0, "frames": 2, "median_agreement_px": np.nan})

    def text(agreement):
        p = SimpleNamespace(
            particle=11,
            size_radius=15.7,
            edge_maps={"e50": np.full((3, 3), np.nan)},
            e0_ev=np.nan,
            notes=(),
            agreement=np.asarray(agreement, float),
        )
        return report._particle_text(p, row, tracks)[1]

    assert "were never compared (both measured in one frame at most)" in text([np.nan, np.nan])
    assert "never agree" in text([0.9, np.nan]) and "never compared" not in text([0.9, np.nan])  # control
