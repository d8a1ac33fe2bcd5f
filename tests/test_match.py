"""Linking detections into tracks through a scan (xanestrack.match)."""

import numpy as np
import pandas as pd
import pytest

from conftest import undocumented_fields
from xanestrack.match import MatchOptions, link_detections, propagate_common, roi_ssim
from xanestrack.synth import make_synthetic_stack


def test_propagate_common_recovers_stage_jumps_between_key_frames():
    """Given the true shift on every 6th frame, the jumps in between are found by phase correlation."""
    s = make_synthetic_stack(
        "default",
        seed=14,
        n_energies=48,
        shape=(220, 220),
        n_particles=4,
        radius_range=(10.0, 20.0),
        jump_probability=0.15,
        jump_size=8.0,
        drift_range=(0.5, 2.0),
    )
    od = s.optical_density()
    key = list(range(0, 48, 6)) + [47]
    g = s.truth.global_shift
    # given the true shift on the key frames, the frames in between are recovered to ~1-2 px
    est = propagate_common(od, np.where(np.isin(np.arange(48), key)[:, None], g, np.nan), np.array(key))
    between = ~np.isin(np.arange(48), key)
    assert np.abs(est[between] - g[between]).max() < 3.0
    lin = np.stack([np.interp(np.arange(48), key, g[key, d]) for d in range(2)], 1)
    assert np.abs(est[between] - g[between]).mean() < 0.5 * np.abs(lin[between] - g[between]).mean()


def test_roi_ssim_is_blind_to_the_contrast_change_across_the_edge():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:31, 0:31]
    roi = np.exp(-((yy - 15.0) ** 2 + (xx - 13.0) ** 2) / 40) + 0.02 * rng.normal(size=yy.shape)
    assert roi_ssim(roi, 3.0 * roi + 0.4) == pytest.approx(1.0, abs=1e-6)
    assert roi_ssim(roi, np.roll(roi, 6, axis=1)) < 0.8


def test_link_detections_keeps_identities_and_lists_gaps():
    s = make_synthetic_stack(
        "default", seed=9, n_energies=12, shape=(200, 200), n_particles=3, radius_range=(10.0, 16.0)
    )
    od = s.optical_density()
    from xanestrack.detect import detect_stack

    det = detect_stack(od)
    det = det[~((det["frame"] == 5) & (det.index == det[det["frame"] == 5].index[0]))]  # one particle missed in frame 5
    tracks, rejected, common = link_detections(det, od)
    assert sorted(tracks["particle"].unique()) == [0, 1, 2] and len(tracks) == 3 * 12
    assert (~tracks["detected"]).sum() == 1 and common.shape == (12, 2)
    # each track follows one true particle (truth paired by position in every frame)
    tp = s.truth.positions
    for pid, g in tracks.groupby("particle"):
        g = g.sort_values("frame")
        d = [
            np.hypot(
                *(tp[tp.particle == j].sort_values("frame")[["y", "x"]].to_numpy() - g[["y", "x"]].to_numpy()).T
            ).max()
            for j in range(3)
        ]
        assert min(d) < 3.0, (pid, d)


def test_a_faint_particle_seen_in_few_frames_is_kept_a_piece_of_a_tracked_one_is_not():
    """Seen in 5 of 12 frames (a faint particle outlined only after the edge): kept, as nothing
    else was seen where it was missed. A piece of a particle, seen alone in 4 frames (a touching
    group split while its contrast is low) and inside its particle's outline in the others: not."""
    from xanestrack.detect import detect_stack

    s = make_synthetic_stack(
        "default", seed=9, n_energies=12, shape=(200, 200), n_particles=3, radius_range=(10.0, 16.0)
    )
    od = s.optical_density()
    det = detect_stack(od).reset_index(drop=True)
    first = det[det["frame"] == 0].sort_values("x")
    faint = first.iloc[0][["y", "x"]].to_numpy(float)
    near = lambda d, p: np.hypot(d["y"] - p[0], d["x"] - p[1]) < 8  # noqa: E731
    # the faint particle: missed in frames 0-6
    det = det[~(near(det, faint) & (det["frame"] < 7))]
    # a piece of the right-most particle, seen on its own in frames 0-3
    whole = first.iloc[-1]
    piece = whole.copy()
    piece["x"] = whole["x"] + 0.6 * whole["radius"]
    piece["radius"], piece["area"] = 0.4 * whole["radius"], np.pi * (0.4 * whole["radius"]) ** 2
    pieces = pd.DataFrame([piece.to_dict() | {"frame": k} for k in range(4)])
    det = pd.concat([det, pieces.astype(det.dtypes.to_dict())], ignore_index=True)

    tracks, rejected, _ = link_detections(det, od)
    assert tracks["particle"].nunique() == 3
    kept_faint = tracks[near(tracks, faint) & (tracks["frame"] == 0)]
    assert len(kept_faint) == 1
    assert tracks[tracks["particle"] == kept_faint["particle"].iloc[0]]["detected"].sum() == 5
    # the rule is what keeps the one and drops the other
    old, _, _ = link_detections(det, od, options=MatchOptions(min_faint_fraction=0.5))
    assert old["particle"].nunique() == 2
    loose, _, _ = link_detections(det, od, options=MatchOptions(max_covered=1.0))
    assert loose["particle"].nunique() == 4


def _three_particle_scene():
    """``(od, detections, the smallest particle's frame-0 place, near(d, p))``: three particles of 10-16 px, 12
    energies, detected in every frame; ``near`` marks the rows of ``d`` within 8 px of ``p``."""
    from xanestrack.detect import detect_stack

    s = make_synthetic_stack(
        "default", seed=9, n_energies=12, shape=(200, 200), n_particles=3, radius_range=(10.0, 16.0)
    )
    od = s.optical_density()
    det = detect_stack(od).reset_index(drop=True)
    small = det[det["frame"] == 0].sort_values("x").iloc[0][["y", "x"]].to_numpy(float)
    return od, det, small, lambda d, p: np.hypot(d["y"] - p[0], d["x"] - p[1]) < 8


def test_a_particle_outlined_as_one_irregular_body_where_it_was_missed_counts_as_seen_there():
    """Detected in 3 of 12 frames (below both the 50 % and the faint 30 % rule) and, in 5 of the
    others, rejected as not convex at its place and size (a small lobed particle at the detector's
    binned resolution): kept, those frames marked ``irregular``. An outline larger than 1.3 times
    the particle (a touching group's) or off its place does not count."""

    od, det, small, near = _three_particle_scene()
    mine = near(det, small)
    assert mine.sum() == 12  # seen in every frame to begin with
    irregular_frames = [1, 2, 4, 6, 8]
    missed = mine & ~det["frame"].isin([0, 5, 10] + irregular_frames)
    outlined = mine & det["frame"].isin(irregular_frames)

    def scan(radius_factor=1.0, offset=0.0):
        d = det.copy()
        d.loc[outlined, "isolated"] = False
        d.loc[outlined, "reason"] = "not_convex"
        d.loc[outlined, "radius"] *= radius_factor
        d.loc[outlined, "x"] += offset
        return d[~missed]

    tracks, _, _ = link_detections(scan(), od)
    assert tracks["particle"].nunique() == 3
    pid = tracks[near(tracks, small) & (tracks["frame"] == 0)]["particle"].iloc[0]
    mine_t = tracks[tracks["particle"] == pid].set_index("frame")
    assert mine_t["detected"].sum() == 3
    assert sorted(mine_t.index[mine_t["irregular"]]) == irregular_frames
    # a group's outline (1.6 times the particle) or one off its place is no sighting of it
    for kw in (dict(radius_factor=1.6), dict(offset=9.0)):
        other, _, _ = link_detections(scan(**kw), od)
        assert other["particle"].nunique() == 2 and not other["irregular"].any()


def test_a_particle_detected_once_and_outlined_as_one_irregular_body_in_most_frames_is_kept_or_named():
    """A particle ringed by fines: outlined as one irregular body (not convex) in most frames and isolated in
    one only (stress-fines seed 3 with an empty margin cropped: 7 of 8 key frames, r 12.6 px). The irregular
    sightings were counted for tracks detected twice or more only: it was rejected as a track seen once and
    vanished from every output, nothing said. Seen so in most frames it is kept; in too few, it is left out
    with its irregular sightings counted (``n_irregular``), which the run note and rejected.csv name. Detected
    once with nothing at its place elsewhere: one sighting, noise, as before."""
    from xanestrack.pipeline import _short_tracks_note, _summarise_rejected

    od, det, small, near = _three_particle_scene()
    mine = near(det, small)
    assert mine.sum() == 12

    def scan(irregular_frames):
        d = det.copy()
        outlined = mine & d["frame"].isin(irregular_frames)
        d.loc[outlined, "isolated"] = False
        d.loc[outlined, "reason"] = "not_convex"
        return d[~(mine & ~d["frame"].isin([5] + list(irregular_frames)))]  # detected in frame 5 only

    most = [0, 1, 2, 3, 4, 6, 7, 8]
    tracks, rejected, _ = link_detections(scan(most), od)
    assert tracks["particle"].nunique() == 3
    pid = tracks[near(tracks, small) & (tracks["frame"] == 5)]["particle"].iloc[0]
    kept = tracks[tracks["particle"] == pid].set_index("frame")
    assert kept["detected"].sum() == 1 and sorted(kept.index[kept["irregular"]]) == most
    assert not len(rejected)

    few = [1, 3, 8]  # 4 of 12 with the detection: too few
    tracks, rejected, _ = link_detections(scan(few), od)
    assert tracks["particle"].nunique() == 2
    assert rejected[["n_frames", "reason", "n_irregular"]].values.tolist() == [[1, "short_track", 3]]
    note = _short_tracks_note(rejected, 12, tracks)
    assert note.startswith("1 object detected as a particle in too few of the 12 frames examined")
    y, x = rejected[["y", "x"]].iloc[0]
    assert np.hypot(y - small[0], x - small[1]) < 8
    assert f"({y:.0f}, {x:.0f}) detected in 1 and outlined as one irregular body in 3" in note
    rows = _summarise_rejected(pd.DataFrame(), rejected)
    assert rows["reason"].tolist() == ["short_track_not_convex_3"] and rows["n_frames"].tolist() == [1]

    # control: detected once, nothing at its place in the other frames: one sighting, no note, as before
    tracks, rejected, _ = link_detections(scan([]), od)
    assert tracks["particle"].nunique() == 2
    assert rejected[["n_frames", "reason", "n_irregular"]].values.tolist() == [[1, "short_track", 0]]
    assert _short_tracks_note(rejected, 12, tracks) is None
    assert _summarise_rejected(pd.DataFrame(), rejected)["reason"].tolist() == ["short_track"]


def test_bad_frames_are_refused():
    det = pd.DataFrame(columns=["frame", "y", "x", "radius", "area", "isolated"])
    with pytest.raises(ValueError, match="frames must be indices"):
        link_detections(det, np.zeros((4, 32, 32), np.float32), frames=[0, 7])


def test_every_option_is_documented():
    assert undocumented_fields(MatchOptions) == []


def test_an_object_that_stays_put_on_the_detector_is_left_out():
    """Dust on the scintillator (or a blob of flat-field pattern) does not move with the sample:
    where the sample moves by pixels, a track that follows none of it is no particle."""
    from xanestrack.detect import detect_stack

    s = make_synthetic_stack(
        "default", seed=9, n_energies=24, shape=(200, 200), n_particles=3, radius_range=(10.0, 16.0)
    )
    od = s.optical_density()
    g = s.truth.global_shift
    assert np.sqrt(((g - g.mean(axis=0)) ** 2).sum(axis=1).mean()) > 2.0  # the sample moves
    tp = s.truth.positions
    # a dark speck fixed on the detector, away from every particle
    yy, xx = np.mgrid[0:200, 0:200]
    free = [(y, x) for y in range(25, 176, 10) for x in range(25, 176, 10)]
    y0, x0 = max(free, key=lambda p: np.hypot(tp["y"] - p[0], tp["x"] - p[1]).min())
    speck = 0.8 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 6.0**2))
    tracks, rejected, _ = link_detections(detect_stack(od + speck), od + speck)
    assert tracks["particle"].nunique() == 3
    still = rejected[rejected["reason"] == "still_on_detector"]
    assert len(still) == 1 and np.hypot(still["y"].iloc[0] - y0, still["x"].iloc[0] - x0).max() < 3
    # the same speck where the sample does not move is a particle as far as anyone can tell
    od0 = np.stack([od[0]] * 24)
    tracks0, rejected0, _ = link_detections(detect_stack(od0 + speck), od0 + speck)
    assert tracks0["particle"].nunique() == 4 and not (rejected0["reason"] == "still_on_detector").any()


def test_a_particle_drifting_against_the_common_motion_is_not_taken_for_dust():
    from xanestrack.match import _still_on_detector

    t = np.linspace(0, 1, 13)[:, None]
    common = np.c_[3.0 * t, 8.0 * t]  # the sample moves 8.5 px
    # own drift against it: the particle moves by 0.28 of the common motion, following 0.08 of it (the
    # least on the stress family)
    assert not _still_on_detector(0.08 * common + 0.27 * np.c_[-8.0 * t, 3.0 * t], common)
    # dust: still, but for its measurement noise
    rng = np.random.default_rng(0)
    assert _still_on_detector(rng.normal(0, 0.15, common.shape), common)
    # a sample that hardly moves tells nothing
    assert not _still_on_detector(rng.normal(0, 0.05, common.shape), common * 0.1)


def test_a_particle_seen_in_turn_whole_and_as_a_piece_is_one_track_not_two_short_ones():
    # stress-magnification seed 4 (learned): a 10-px particle outlined whole (r 10.1-10.6) in six key frames and as a
    # 7.3-px piece of itself 4.5 px off in two was linked as two tracks of 4 key frames each, both too short to keep
    from xanestrack.linking import Track
    from xanestrack.match import _join_alternating

    n = 13
    common = np.stack([np.linspace(0, 6, n), np.linspace(0, -3, n)], axis=1)  # the field drifts 6.7 px

    def track(tid, times, at, radius):
        pos = [tuple(np.asarray(at, float) + common[t]) for t in times]
        return Track(tid, list(times), pos, radius, {"rows": [{"frame": t, "radius": radius} for t in times]})

    whole = track(1, [5, 6, 8, 10], (93.0, 390.0), 10.6)
    piece = track(2, [7, 9, 11, 12], (94.4, 394.2), 7.3)
    beside = track(3, [0, 1, 2, 3], (93.0, 411.0), 10.0)  # a touching neighbour, 21 px away, seen early only
    overlapping = track(4, [4, 5, 11], (92.0, 389.0), 9.0)  # seen with ``whole`` in frame 5: another object
    kept = track(5, list(range(n)), (300.0, 300.0), 12.0)  # long enough already
    everyone = [whole, piece, beside, overlapping, kept]
    ids = [np.array([tr.id for tr in everyone if t in tr.times]) for t in range(n)]  # the tracks' ids per time
    out = _join_alternating([whole, piece, beside, overlapping, kept], ids, common, 0.5 * n)
    assert [tr.id for tr in out] == [1, 3, 4, 5]
    joined = out[0]
    assert joined.times == [5, 6, 7, 8, 9, 10, 11, 12]  # in time order, positions and rows with them
    assert np.allclose(joined.positions[1], np.add((93.0, 390.0), common[6]))
    assert np.allclose(joined.positions[2], np.add((94.4, 394.2), common[7]))
    assert [r["frame"] for r in joined.data["rows"]] == joined.times
    assert joined.radius == 10.6  # the whole particle's
    assert not any((i == 2).any() for i in ids) and all((ids[t] == 1).sum() == 1 for t in joined.times)
    # too short together, or farther apart than half the larger radius: left as they were
    short = [track(1, [5, 6], (93.0, 390.0), 10.6), track(2, [7, 9], (94.4, 394.2), 7.3)]
    assert [tr.id for tr in _join_alternating(short, ids, common, 0.5 * n)] == [1, 2]
    apart = [track(1, [5, 6, 8, 10], (93.0, 390.0), 10.6), track(2, [7, 9, 11, 12], (93.0, 396.0), 7.3)]
    assert [tr.id for tr in _join_alternating(apart, ids, common, 0.5 * n)] == [1, 2]


def test_a_particle_left_in_three_short_tracks_is_one_track():
    # stress-all seed 3 (learned): a 38-px particle outlined alone in 5 key frames and with the particle touching it in
    # 2 (r 41, 8 px off) was linked as tracks of 4, 2 and 1 key frames, each too short to keep (and no two together)
    from xanestrack.linking import Track
    from xanestrack.match import _join_alternating

    n = 13
    common = np.stack([np.linspace(0, 4, n), np.linspace(0, 2, n)], axis=1)

    def track(tid, times, at, radius):
        pos = [tuple(np.asarray(at, float) + common[t]) for t in times]
        return Track(tid, list(times), pos, radius, {"rows": [{"frame": t, "radius": radius} for t in times]})

    def tracks():
        return [
            track(1, [5, 7, 8, 11], (245.0, 63.0), 37.7),
            track(2, [6, 10], (237.0, 66.0), 41.3),
            track(3, [9], (240.0, 65.0), 37.6),
            track(4, [0, 1], (245.0, 120.0), 30.0),  # another short track, 57 px away: noise, left alone
            track(5, list(range(n)), (100.0, 100.0), 12.0),
        ]

    def ids_of(everyone):
        return [np.array([tr.id for tr in everyone if t in tr.times]) for t in range(n)]

    everyone = tracks()
    ids = ids_of(everyone)
    out = _join_alternating(everyone, ids, common, 0.5 * n)
    assert [tr.id for tr in out] == [1, 4, 5]
    assert out[0].times == [5, 6, 7, 8, 9, 10, 11] and out[0].radius == 41.3
    assert all((ids[t] == 1).sum() == 1 for t in out[0].times) and not any(np.isin(i, [2, 3]).any() for i in ids)
    # two of them only (6 of 13 key frames: too short together): left as they were
    two = tracks()[:2] + tracks()[3:]
    assert [tr.id for tr in _join_alternating(two, ids_of(two), common, 0.5 * n)] == [1, 2, 4, 5]
    # a third seen in a frame with one of the others: not the same particle, the other two not joined through it
    clash = tracks()
    clash[2] = track(3, [8], (240.0, 65.0), 37.6)
    assert [tr.id for tr in _join_alternating(clash, ids_of(clash), common, 0.5 * n)] == [1, 2, 3, 4, 5]
