"""What is left out is said with the reason it was: tracks measured in no frame (what their windows' masks gave)
and the pieces of a component that its cut into touching particles leaves out."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from xanestrack.result import FRAME_FLAGS

MASK_REASONS = ("mask_", "no_usable_mask")


def _disc(shape, centre, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= r


def _track(pid, masks, origins, centre, radius, detected):
    """A track as the pipeline holds it after segmenting its windows (only what the notes read)."""
    n = len(masks)
    masks = np.asarray(masks, np.float32)
    seg = SimpleNamespace(
        masks=masks,
        origins=np.asarray(origins, int),
        outside=np.zeros(masks.shape, bool),
        clipped=np.zeros(n, bool),
        com=np.full((n, 2), np.nan),
    )
    c = np.tile(np.asarray(centre, float), (n, 1))
    return SimpleNamespace(
        pid=pid,
        seg=seg,
        centres=c,
        followed=c,
        measured=np.ones(n, bool),
        detected=np.asarray(detected, bool),
        examined=np.ones(n, bool),
        radius=float(radius),
    )


def _nowhere(n):
    return SimpleNamespace(positions=np.full((n, 2), np.nan))


def test_a_track_measured_in_no_frame_is_said_with_what_its_masks_gave():
    # the SSRL pair's cases, drawn: a particle whose window's mask was empty in one frame and ran into the
    # touching particle 7 in the other (was: "no outline of a particle in its window"), and a lone particle
    # whose masks' areas, 2241 and 4109 px, are too far apart to trust either of the two frames
    from xanestrack.pipeline import _edgeless_note, _left_out_rows, _summarise_rejected

    size = 61
    empty = np.zeros((size, size))
    a_origin = (100, 100)
    # particle 7 (r 25) at (130, 165): the track's second mask reaches over it to the window's edge
    joined = _disc((size, size), (30, 30), 14) | (_disc((size, size), (30, 65), 25))
    a = _track(3, [empty, joined], [a_origin, a_origin], (130, 130), 14, [True, False])
    p7 = _track(7, [empty, empty], [(0, 0), (0, 0)], (130, 165), 25, [True, True])
    b_origin, big = (280, 280), 101
    small = _disc((big, big), (50, 50), np.sqrt(2241 / np.pi))
    large = _disc((big, big), (50, 50), np.sqrt(4109 / np.pi))
    b = _track(4, [small, large], [b_origin, b_origin], (330, 330), 34, [False, True])
    located = [a, p7, b]
    gone, results = [a, b], [_nowhere(2), _nowhere(2)]

    note = _edgeless_note(gone, results, located)
    assert note.startswith("2 tracks left out, measured in no frame")
    assert "no outline" not in note
    first, second = note.split("; at (y, x)")
    assert "(130, 130)" in first and "detected in 1 of the 2 frames examined" in first
    assert "empty in 1 frame" in first and "ran into the touching particle 7 in 1 frame" in first
    assert "(330, 330)" in second and "area was too far from its median" in second and "in 2 frames" in second

    rows = _left_out_rows(gone, results, located)
    assert [r[2] for r in rows] == ["mask_joined_to_particle_7", "mask_area_unsteady"]
    assert [r[3] for r in rows] == [1, 1]
    rej = _summarise_rejected(pd.DataFrame(), pd.DataFrame(columns=["y", "x", "reason", "n_frames"]), rows)
    assert list(rej["reason"]) == ["mask_joined_to_particle_7", "mask_area_unsteady"]
    assert np.allclose(rej[["y", "x"]].to_numpy(), [[130, 130], [330, 330]])


def test_a_piece_cut_off_a_component_and_left_out_has_a_row():
    # two touching particles (r 14 and 12) with a fine (r 4) on a neck, and a particle too large (r 32) touching a
    # small one: the cut at the necks kept the particles and left the fine and the large piece out, unsaid
    from xanestrack.detect import DetectOptions, regions_table

    fg = np.zeros((160, 200), bool)
    fg |= _disc(fg.shape, (40, 40), 14) | _disc(fg.shape, (40, 66), 12)
    fg |= _disc(fg.shape, (40, 17), 5) | (np.abs(np.mgrid[0:160, 0:200][0] - 40) <= 1) & (
        (np.mgrid[0:160, 0:200][1] >= 17) & (np.mgrid[0:160, 0:200][1] <= 40)
    )
    fg |= _disc(fg.shape, (110, 70), 32) | _disc(fg.shape, (110, 113), 12)
    opts = DetectOptions(min_radius=8.0, max_radius=24.0, binning=1, border=2)
    det = regions_table(fg, fg.astype(np.float32), frame_index=0, binning=1, options=opts)
    kept = det[det["isolated"]]
    assert len(kept) == 3 and kept["touching"].all()
    small = det[det["reason"] == "piece_too_small"]
    large = det[det["reason"] == "piece_too_large"]
    assert len(small) == 1 and abs(small["y"].iloc[0] - 40) < 2 and small["x"].iloc[0] < 25
    assert len(large) == 1 and abs(large["y"].iloc[0] - 110) < 2 and abs(large["x"].iloc[0] - 70) < 3
    assert not det["isolated"][det["reason"].isin(["piece_too_small", "piece_too_large"])].any()


def test_nothing_is_said_of_left_out_tracks_or_pieces_on_the_default_scene():
    # control: the default scene (seed 1, 12 energies) leaves no track out and cuts off no piece
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=12)
    res = run_pipeline(Stack(s.optical_density(), s.energies_ev))
    assert len(res.particles) >= 3
    reasons = set(res.rejected["reason"]) | set(res.detections["reason"])
    assert not any(str(r).startswith(MASK_REASONS) or str(r).startswith("piece_") for r in reasons), reasons
    assert not any("measured in no frame" in n for n in res.notes)


@pytest.mark.slow
def test_ssrl_tracks_whose_masks_failed_are_kept_or_said():
    # the real SSRL pair, learned detector: 5 tracks had been left out as "measured in no frame (no outline of a
    # particle in its window)"; their windows held masks: empty or joined to a touching one, or too unlike in area
    from xanestrack.detect import DetectOptions
    from xanestrack.io import read_stack
    from xanestrack.models import pipeline_models
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.sizes import particle_radius_range

    stack = read_stack(shared_data("real_txm", "ssrl_6-2c_nca"))
    lo, hi, binning = particle_radius_range(stack, detector="learned")
    opts = PipelineOptions(detect=DetectOptions(min_radius=lo, max_radius=hi, binning=binning))
    det, seg = pipeline_models("learned", "learned", options=opts)
    res = run_pipeline(stack, options=opts, detector=det, segmenter=seg)
    rej = res.rejected
    left = rej[rej["reason"].astype(str).str.startswith(MASK_REASONS)]
    # 2 since the orientation guard (the learned outlines of most of the pair's particles move 0.9-11.9 px with the
    # window's orientation: outlined classically), 3-5 before; 1 since an elongated particle whose masks fail is
    # located again in windows that hold it (pipeline._locate_particle): the one at (187, 380), its masks empty in
    # both frames, reaches 1.7 radii along its long axis: outlined in windows that hold it, it lies inside particle 3
    # (99 % of its mask: a part of it tracked twice). None since the mask guard counts an empty mask as trouble
    # (2026-12-07): the one at (935, 362) (1.9 radii) had been given classical masks empty in both frames over learned
    # ones of 532 / 525 px (an empty mask was no trouble) and left out; it is tracked now, vouched for in neither frame
    assert left.empty, left
    assert not any("measured in no frame" in n for n in res.notes)
    (at,) = [p for p in res.particles if np.hypot(*(np.asarray(p.positions[0]) - (935, 357))) < 12]
    assert (at.frame_flags & FRAME_FLAGS["disagree"]).all()
    inside = rej[rej["reason"].astype(str).str.startswith("inside_particle_")]
    assert (np.hypot(inside["y"] - 187, inside["x"] - 380) < 5).sum() == 1
    # the particle at (944, 761) (965, 770 at 8354 eV), detected isolated in that frame, was left out for its two
    # learned masks' areas (2241 and 4109 px); outlined classically, it is tracked now (not vouched for)
    assert left[np.hypot(left["y"] - 944, left["x"] - 761) < 15].empty
    assert sum(np.hypot(*(np.asarray(p.positions[0]) - (944, 761))) < 15 for p in res.particles) == 1
