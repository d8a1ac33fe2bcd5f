"""Adversarial tracking scenes, reduced from a probe's: a lattice of alike particles that the stage moves
by one spacing in one frame, twins passing each other, a particle moving faster than the gate."""

import numpy as np
import pandas as pd
from scipy import ndimage

from xanestrack.linking import LinkOptions, Track, chain_pieces, link
from xanestrack.match import link_detections, propagate_common

SPACING = 32
RADIUS = 8.0


def _disc(yy, xx, cy, cx, r):
    """A soft-edged sphere's projected thickness (0-1)."""
    d = np.hypot(yy - cy, xx - cx)
    return np.clip((r - d) / 1.5 + 0.5, 0, 1) * np.sqrt(np.clip(r**2 - d**2, 0, None)) / r


def _lattice_scan(*, texture, fixed, whole_field, n_frames=13, jump_frame=6, shape=(160, 160), seed=0):
    """Frames of a lattice of alike particles ``SPACING`` px apart over a matrix texture (moving with the
    stage, std ``texture``) and a pattern fixed on the detector (std ``fixed``); the stage moves by one
    spacing in x in ``jump_frame`` only. The lattice fills the field (``whole_field``: every frame shows
    the same pattern) or only its middle. Returns the frames, the stage shift per frame and the lattice's
    positions in frame 0."""
    rng = np.random.default_rng(seed)
    pad = 2 * SPACING
    ny, nx = shape
    tex = ndimage.gaussian_filter(rng.normal(size=(ny + 2 * pad, nx + 2 * pad)), 2.0)
    tex *= texture / tex.std()
    still = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    still *= fixed / still.std()
    yy, xx = np.mgrid[0 : ny + 2 * pad, 0 : nx + 2 * pad]
    first, stop = (SPACING // 2, ny + 2 * pad) if whole_field else (pad + 24, pad + ny - 16)
    centres = [(cy, cx) for cy in np.arange(first, stop, SPACING) for cx in np.arange(first, stop, SPACING)]
    particles = sum(_disc(yy, xx, cy, cx, RADIUS) for cy, cx in centres)
    shift = np.zeros((n_frames, 2))
    shift[jump_frame] = (0, SPACING)
    od = np.empty((n_frames, ny, nx), np.float32)
    for k in range(n_frames):
        contrast = 0.3 + 0.7 * k / (n_frames - 1)  # the particles' contrast grows across the edge
        dy, dx = shift[k].astype(int)
        canvas = tex + contrast * particles
        od[k] = canvas[pad - dy : pad - dy + ny, pad - dx : pad - dx + nx] + still + rng.normal(0, 0.005, shape)
    inside = [
        (cy - pad, cx - pad)
        for cy, cx in centres
        if RADIUS + 2 <= cy - pad <= ny - RADIUS - 3 and RADIUS + 2 <= cx - pad <= nx - RADIUS - 3
    ]
    return od, shift, np.array(inside, float)


def _key_detections(positions, frames, radius):
    """Detections of every particle, isolated, in the key ``frames``: ``positions`` (n_frames, n, 2)."""
    rows = [(k, y, x, np.pi * radius**2, radius, True) for k in frames for y, x in positions[k] if np.isfinite(y)]
    return pd.DataFrame(rows, columns=["frame", "y", "x", "area", "radius", "isolated"])


def test_a_stage_jump_of_one_lattice_spacing_is_told_by_the_matrix_texture():
    """The stage moves a lattice of 16 alike particles by one spacing (32 px) in one frame between key
    frames; the phase correlation's highest peak is the unmoved lattice (with a pattern fixed on the
    detector), 32 px off: every particle's window was placed on its neighbour there. The matrix texture
    behind the particles moves with the stage and tells the step (before: common shift 0 in that frame)."""
    od, shift, _ = _lattice_scan(texture=0.01, fixed=0.01, whole_field=False)
    key = np.array([0, 12])
    common = np.where(np.isin(np.arange(13), key)[:, None], shift, np.nan)
    est = propagate_common(od, common, key)
    assert np.abs(est - shift).max() < 2.0, est[5:8]


def test_a_stage_jump_nothing_can_tell_is_marked_ambiguous():
    """A lattice filling the field, no matrix texture: the jumped frame shows the very pattern of the
    frames beside it, and nothing (texture, key frames) tells the step. Its frames are marked, not
    vouched for by the linking (before: the unmoved lattice taken, nothing said)."""
    od, shift, inside = _lattice_scan(texture=0.0, fixed=0.0, whole_field=True, n_frames=7, jump_frame=3)
    key = [0, 6]
    det = _key_detections(np.repeat(inside[None], 7, axis=0), key, RADIUS)
    tracks, _, common = link_detections(det, od, frames=key)
    by_frame = tracks.groupby("frame")["common_ambiguous"].all()
    assert by_frame[3] and not by_frame[0] and not by_frame[6]
    assert tracks["particle"].nunique() == len(inside)
    # with the matrix's texture, the same jump is followed and nothing is marked
    od, shift, _ = _lattice_scan(texture=0.01, fixed=0.01, whole_field=False, n_frames=7, jump_frame=3)
    tracks, _, common = link_detections(det, od, frames=key)
    assert not tracks["common_ambiguous"].any() and abs(common[3, 1] - SPACING) < 2.0


def _passing_twins(speed, n_times=9, key_step=8):
    """Per key frame, the objects of two alike particles in lanes 36 px apart passing each other at
    ``speed`` px per frame, and two still ones."""
    objects = []
    for t in range(n_times):
        k = t * key_step
        objects.append(
            pd.DataFrame(
                [
                    (90.0, 40.0 + speed * k, 16.0),
                    (126.0, 210.0 - speed * k, 16.0),
                    (210.0, 50.0, 14.0),
                    (210.0, 200.0, 18.0),
                ],
                columns=["y", "x", "radius"],
            )
        )
    return objects


def test_twins_passing_each_other_are_never_linked_onto_each_other():
    """Twins passing 36 px apart at 2.9 px per frame (23 px per key frame, beyond the gate of 13.5 px): each
    lost after its first sighting. The gate, grown with the gap, reached the other twin, 36 px away: each
    track joined the two particles (and the pipeline vouched for both ends). The grown gate stops at half
    the distance to the place another track is predicted at."""
    objects = _passing_twins(2.875)
    ids, common, tracks = link(objects, options=LinkOptions(gate=13.45, max_jump=113.0))
    for tr in tracks:
        lanes = {round(p[0] / 36) for p in tr.positions}
        assert len(lanes) == 1, (tr.id, tr.times, tr.positions)


def _twin_scan(speed, *, n_frames=57, key_step=8, shape=(180, 256), seed=1):
    """Frames of two alike particles (r = 16 px) in lanes 36 px apart passing each other at ``speed`` px
    per frame, two still ones, over a still matrix texture, and their true positions (n_frames, 4, 2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    k = np.arange(n_frames)
    x0 = 128 - speed * (n_frames - 1) / 2
    truth = np.stack(
        [
            np.stack([np.full(n_frames, 60.0), x0 + speed * k], 1),
            np.stack([np.full(n_frames, 96.0), 256 - x0 - speed * k], 1),
            np.stack([np.full(n_frames, 150.0), np.full(n_frames, 50.0)], 1),
            np.stack([np.full(n_frames, 150.0), np.full(n_frames, 200.0)], 1),
        ],
        1,
    )
    radii = (16.0, 16.0, 14.0, 18.0)
    matrix = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    matrix *= 0.01 / matrix.std()
    od = np.empty((n_frames, *shape), np.float32)
    for f in range(n_frames):
        img = matrix + rng.normal(0, 0.01, shape)
        for (cy, cx), r in zip(truth[f], radii):
            d = _disc(yy, xx, cy, cx, r)
            img += d * (1 + 0.2 * np.cos(3 * np.arctan2(yy - cy, xx - cx)))  # alike twins, lobed
        od[f] = img
    key = sorted(set(range(0, n_frames, key_step)) | {n_frames - 1})
    det = _key_detections(truth, key, 16.0)
    det["radius"] = np.tile(radii, len(key))
    return od, det, key, truth


def _lanes(tracks):
    """Per track: the lanes (36 px wide) its detected positions lie in, and how many it was detected in."""
    seen = tracks[tracks["detected"]]
    return {p: ({round(y / 36) for y in g["y"]}, len(g)) for p, g in seen.groupby("particle")}


def test_twins_faster_than_the_gate_are_each_tracked_whole():
    """Twins passing at 1.9 px per frame, 15 px per key frame against a gate of 13.5 px: every sighting
    started a track of its own, and both were left out as objects seen in part of the scan (at 1.7 px per
    frame one was lost, nothing said but "entering or leaving the field, faint particles, or debris").
    Their pieces step evenly, at one size, and nothing else continues them: each is joined into one track."""
    od, det, key, truth = _twin_scan(1.9)
    tracks, rejected, _ = link_detections(det, od, frames=key)
    lanes = _lanes(tracks)
    assert len(lanes) == 4, (lanes, rejected)
    for lane, n in lanes.values():
        assert len(lane) == 1 and n == len(key)
    assert "short_track" not in set(rejected["reason"])


def test_twins_passing_fast_keep_their_identities():
    """The same twins at 2.9 px per frame (23 px per key frame): tracked whole, each in its own lane (each
    track was vouched for on both twins)."""
    od, det, key, truth = _twin_scan(2.9)
    tracks, rejected, _ = link_detections(det, od, frames=key)
    lanes = _lanes(tracks)
    assert len(lanes) == 4, (lanes, rejected)
    for lane, n in lanes.values():
        assert len(lane) == 1 and n == len(key)


def test_pieces_are_joined_only_where_they_step_evenly_and_nothing_else_continues_them():
    common = np.zeros((6, 2))
    opts = LinkOptions(gate=8.0)

    def pieces(points):
        return [Track(id=i, times=[t], positions=[np.array(p, float)], radius=r) for i, (t, p, r) in enumerate(points)]

    even = [(t, (50.0, 20.0 + 15 * t), 10.0) for t in range(6)]
    assert chain_pieces(pieces(even), common, pieces=range(6), options=opts) == [list(range(6))]
    # uneven steps (debris scattered along a line), another size, or steps within the gate: not joined
    uneven = [(t, (50.0, 20.0 + 15 * t + (9.0 if t % 2 else 0.0)), 10.0) for t in range(6)]
    assert chain_pieces(pieces(uneven), common, pieces=range(6), options=opts) == []
    sizes = [(t, p, 10.0 * 1.3**t) for t, p, _ in even]
    assert chain_pieces(pieces(sizes), common, pieces=range(6), options=opts) == []
    slow = [(t, (50.0, 20.0 + 5 * t), 10.0) for t in range(6)]
    assert chain_pieces(pieces(slow), common, pieces=range(6), options=opts) == []
    # two pieces that could continue it at one time: neither is joined to it
    fork = even[:3] + [(3, (50.0, 65.0), 10.0), (3, (53.0, 66.0), 10.0)]
    assert all(len(c) <= 3 for c in chain_pieces(pieces(fork), common, pieces=range(5), options=opts))


def test_frames_of_an_ambiguous_step_are_not_vouched_for_by_the_pipeline():
    """The linker marks them; the pipeline vouched for them as any other (the window possibly on a neighbour, both
    estimates agreeing there), and the scan's motion could vouch again (the other particles err alike)."""
    from xanestrack.pipeline import _ambiguous_unvouched
    from xanestrack.register import VouchedPositions
    from xanestrack.result import FRAME_FLAGS

    n = 6
    v = VouchedPositions(
        positions=np.zeros((n, 2)),
        flags=np.zeros(n, np.uint8),
        agreement=np.zeros(n),
        com_agreement=np.zeros(n),
        density_agreement=np.full(n, np.nan),
        edge_positions=np.zeros((n, 2)),
        usable=np.ones(n, bool),
        located=np.ones(n, bool),
    )
    track = pd.DataFrame(dict(frame=np.arange(n)[::-1], common_ambiguous=[False, False, True, False, False, False]))
    out = _ambiguous_unvouched(v, track)  # frame 3 (rows in any order)
    bad = FRAME_FLAGS["position_outlier"] | FRAME_FLAGS["disagree"]
    assert (out.flags[3] & bad) == bad and not out.usable[3]
    assert not np.delete(out.flags, 3).any() and np.delete(out.usable, 3).all()
