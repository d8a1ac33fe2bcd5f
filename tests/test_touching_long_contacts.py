"""Touching particles with a long contact, kept whole as one particle, are not reported so silently.

The probe's case (a 1024 px FXI scene, 39 nm pixels): touching particles whose contact is tens of px long, not a
neck, are one body to the detector's necks rule, kept whole as one irregular particle (solidity 0.81-0.89); a trio
of particles of radius 94, 65 and 57 px, E50s 0.57 eV apart, sliding by up to 3.5 px, was reported as one 128-px
particle vouched for in 50 of 50 frames, with one mean E50, and nothing said that it might be several. The detector
cut it into its particles in 1 of its 8 key frames; those pieces were dropped as too short tracks.

Here: a pair of touching particles (radius 30 and 24 px, LiNiO2 fraction 0.1 and 0.9) whose contact, 39 px long,
shortens as the smaller one slides off by 2 px over the scan, so that the classical detector cuts them apart in the
last 2 of its 9 key frames; beside them the same pair apart and a lobed single particle (three ellipses, one body):
the controls, about which nothing is said.

Such groups of alike size are now tracked apart (``PipelineOptions.split_groups``, :func:`xanestrack.pipeline.
_split_groups`): each member followed, outlined and analysed on its own; with ``split_groups=False`` they stay one
particle, said to be perhaps several (the tests of that path run with it off).
"""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xanestrack.match import link_detections
from xanestrack.pipeline import GROUP_MOTION_NOTE, GROUP_NOTE, PIECES_NOTE, PipelineOptions, run_pipeline
from xanestrack.result import particle_summary
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import ni_energy_grid

N_ENERGIES, SIZE = 40, 256
R1, R2 = 30.0, 24.0  # px: the pair's radii
PAIR, APART, LOBED = (64.0, 50.0), (190.0, 50.0), (70.0, 200.0)  # frame-0 places (the pair: its larger one)


def _disc(yy, xx, c, r):
    return np.clip(1 - ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / r**2, 0, None) ** 0.5  # a sphere's thickness


def _touching(yy, xx, c1, c2, r1=R1, r2=R2):
    """The thicknesses of two touching particles (radius ``r1`` at ``c1``, ``r2`` at ``c2``), split at their contact
    (equal power distance)."""
    p1 = (yy - c1[0]) ** 2 + (xx - c1[1]) ** 2 - r1**2
    p2 = (yy - c2[0]) ** 2 + (xx - c2[1]) ** 2 - r2**2
    return _disc(yy, xx, c1, r1) * (p1 <= p2), _disc(yy, xx, c2, r2) * (p2 < p1)


def _frame(objects, energy, refs, rng):
    """One frame's OD: each ``(thickness, LiNiO2 fraction)`` object absorbing as its chemistry, blurred, noisy."""
    frame = np.zeros((SIZE, SIZE))
    for thickness, f in objects:
        mu = 0.25 * (energy / 8333.0) ** -3 + (1 - f) * refs["NiO"](energy) + f * refs["LiNiO2"](energy)
        frame += 0.6 * mu * thickness
    return ndimage.gaussian_filter(frame, 1.0) + rng.normal(0, 0.01, frame.shape)


def _setup(seed):
    """``(rng, energies, references, yy, xx, drift)`` of a scene: a common random drift from frame 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    drift = np.cumsum(rng.normal(0, 0.4, (N_ENERGIES, 2)), axis=0)
    return rng, ni_energy_grid(N_ENERGIES), ni_references(), yy, xx, drift - drift[0]


def _lobed(yy, xx, c):
    """The thickness of the lobed single particle (three ellipses, one body) centred at ``c``."""
    body = np.zeros(yy.shape, bool)
    for dy, dx, ay, ax in ((0, 0, 26, 20), (10, 16, 16, 14), (-12, 14, 14, 16)):
        body |= ((yy - c[0] - dy) / ay) ** 2 + ((xx - c[1] - dx) / ax) ** 2 <= 1
    depth = ndimage.distance_transform_edt(body)
    return (depth / depth.max()) ** 0.5


def _scene(seed: int = 1):
    """``(od, energies, pair centres per frame (n, 2, 2))``: the three objects above, a common random drift."""
    rng, energies, refs, yy, xx, drift = _setup(seed)
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    centres = np.zeros((N_ENERGIES, 2, 2))
    for k in range(N_ENERGIES):
        t = k / (N_ENERGIES - 1)
        g = drift[k]
        # the smaller one's centre lies a px from the contact (a chord of the larger one): 19.5 -> 21.5 px, the
        # contact 39 -> 33 px long; it slides along the line between them and across it
        a = 19.5 + 2.0 * t
        c1 = np.array(PAIR) + g
        c2 = c1 + np.array([1.2 * t, np.sqrt(R1**2 - R2**2 + a**2) + a])
        centres[k] = c1, c2
        c3 = np.array(APART) + g
        c4 = c3 + np.array([0.0, R1 + R2 + 14.0])
        lobed = _lobed(yy, xx, np.array(LOBED) + g)
        objects = [
            *zip(_touching(yy, xx, c1, c2), (0.1, 0.9), strict=True),
            (_disc(yy, xx, c3, R1), 0.1),
            (_disc(yy, xx, c4, R2), 0.9),
            (lobed, 0.5),
        ]
        od[k] = _frame(objects, energies[k], refs, rng)
    return od, energies, centres


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def result(scene):
    """The pair kept whole as one (``split_groups`` off), the classical path."""
    od, energies, _ = scene
    return run_pipeline(Stack(od, energies), options=PipelineOptions(split_groups=False))


@pytest.fixture(scope="module")
def tracked_apart(scene):
    """The same scene with the default options: the pair tracked apart."""
    od, energies, _ = scene
    return run_pipeline(Stack(od, energies), options=PipelineOptions())


def _at(summary, yx, tol=20.0):
    d = np.hypot(summary["y0"] - yx[0], summary["x0"] - yx[1])
    return summary[d < tol]


def test_a_touching_pair_kept_whole_is_said_to_be_perhaps_several(result, scene):
    """The pair is reported as one particle (its E50 between its members'), vouched for: it is now said that its
    outline was cut into 2 pieces of a particle's size in 2 of the 9 key frames, where they lay; the pieces are
    named in rejected.csv as pieces of it; the run note names it."""
    _, _, centres = scene
    s = particle_summary(result)
    pair = _at(s, (PAIR[0], PAIR[1] + 18))  # the pair's joint centre
    assert len(pair) == 1, s
    pid = int(pair["particle"].iloc[0])
    assert int(pair["touching_pieces"].iloc[0]) == 2 and int(pair["touching_pieces_frames"].iloc[0]) == 2
    p = next(q for q in result.particles if q.particle == pid)
    note = next(n for n in p.notes if n.startswith(PIECES_NOTE))
    assert "2 pieces of a particle's size in 2 of the 9 frames examined" in note
    assert "may be 2 or more touching particles reported as one" in note
    assert f"rejected.csv: short_track_piece_of_{pid})" in note
    # the pieces named where they lay: in frame 39 (the last), each within 3 px of a member's centre
    last = note.split("frame 39 ")[1].split(";")[0]
    named = np.array([[float(v) for v in m] for m in re.findall(r"\((\d+), (\d+)\) r", last)])
    assert named.shape == (2, 2), note
    assert np.hypot(*(named - centres[39]).T).max() < 3.0, (named, centres[39])
    assert any(
        n.startswith(f"the outline of 1 of {len(s)} particles ({pid}) was cut into pieces") for n in result.notes
    )
    assert (result.rejected["reason"] == f"short_track_piece_of_{pid}").sum() == 2, result.rejected


def _member_of(result, summary, yx, tol=5.0):
    """The particle result at ``yx`` (frame 0), one and only."""
    row = _at(summary, yx, tol)
    assert len(row) == 1, (yx, summary)
    return next(q for q in result.particles if q.particle == int(row["particle"].iloc[0])), row.iloc[0]


def test_a_touching_pair_kept_whole_is_tracked_apart(tracked_apart, scene):
    """By default each member of the pair is a particle of its own: found where it lies (the larger one's centre of
    mass lies 1-2 px off its sphere's centre, away from the contact that truncates it), its mean E50 its own (within
    0.1 eV of the same particle apart beside it; 1.4 eV between the two, the group's between them), its note naming
    the group; the key frames' pieces named as pieces of the members in rejected.csv; the run note; and, as the pair
    parts by 3.7 px with its contact shortening, said to move against each other (read at 0.50 px)."""
    _, _, centres = scene
    s = particle_summary(tracked_apart)
    assert len(s) == 5, s  # the two members, the pair apart, the lobed particle
    members = [_member_of(tracked_apart, s, centres[0, i]) for i in range(2)]
    alone = [_at(s, APART).iloc[0], _at(s, (APART[0], APART[1] + R1 + R2 + 14.0)).iloc[0]]
    ids = sorted(int(row["particle"]) for _, row in members)
    for (p, row), twin in zip(members, alone, strict=True):
        assert abs(float(row["mean_e50_ev"]) - float(twin["mean_e50_ev"])) < 0.1, (row, twin)
        assert int(row["touching_pieces"]) == 0
        note = next(n for n in p.notes if n.startswith(GROUP_NOTE))
        assert f"(particles {ids[0]}, {ids[1]})" in note, note
        assert not any(n.startswith(PIECES_NOTE) for n in p.notes)
        assert any(n.startswith(GROUP_MOTION_NOTE) for n in p.notes), p.notes
    assert sorted(tracked_apart.rejected["reason"]) == [f"short_track_piece_of_{i}" for i in ids]
    assert any(
        n.startswith("1 group of touching particles") and f"particles {ids[0]}, {ids[1]}" in n
        for n in tracked_apart.notes
    )


def test_the_same_pair_apart_and_a_lobed_particle_are_not_said_to_be_several(result):
    """Controls: the pair apart is two particles, the lobed one (three ellipses, one body, solidity ~0.95) one,
    none of them said to have been found in pieces."""
    s = particle_summary(result)
    assert len(s) == 4, s
    for yx in (APART, (APART[0], APART[1] + R1 + R2 + 14.0), (LOBED[0], LOBED[1] + 5)):
        row = _at(s, yx)
        assert len(row) == 1, (yx, s)
        assert int(row["touching_pieces"].iloc[0]) == 0
        p = next(q for q in result.particles if q.particle == int(row["particle"].iloc[0]))
        assert not any(n.startswith(PIECES_NOTE) for n in p.notes)


def test_the_columns_survive_results_h5(result, tmp_path):
    from xanestrack.results import read_results, write_results

    write_results(result, tmp_path)
    back = particle_summary(read_results(tmp_path))
    pd.testing.assert_series_equal(back["touching_pieces"], particle_summary(result)["touching_pieces"])
    assert back["touching_pieces_frames"].max() == 2


def _whole_and_pieces(solidity=0.86, piece_area_share=0.5, n_key=8, cut=(0,)):
    """Detections of one body of radius 60 px, solidity ``solidity``, in ``n_key`` frames, cut into two side-by-side
    pieces (each ``piece_area_share`` of its area) in the frames ``cut``; ``(detections, od)``."""
    rows = []
    area = np.pi * 60.0**2
    for k in range(n_key):
        if k in cut:
            for dx in (-30.0, 30.0):
                a = piece_area_share * area
                r = np.sqrt(a / np.pi)
                rows.append((k, 100.0, 150.0 + dx, a, r, 100 - r, 150 + dx - r, 101 + r, 151 + dx + r, 0.97, True))
        else:
            rows.append((k, 100.0, 150.0, area, 60.0, 40.0, 80.0, 161.0, 221.0, solidity, False))
    det = pd.DataFrame(
        rows, columns=["frame", "y", "x", "area", "radius", "y0", "x0", "y1", "x1", "solidity", "touching"]
    )
    det["contrast"], det["isolated"], det["reason"] = 1.0, True, ""
    yy, xx = np.mgrid[0:200, 0:300]
    od = np.repeat((np.hypot(yy - 100.0, xx - 150.0) < 60).astype(np.float32)[None], n_key, axis=0)
    return det, od


def test_link_detections_marks_the_frames_a_track_was_found_in_pieces():
    """The linker's part: the whole track (7 of 8 frames) is kept, frame 0 marked ``pieces`` 2 with their places,
    the pieces' short tracks ``piece_of`` it. Not where the whole is convex (the detector's tests found one particle),
    nor where the pieces do not make up the whole (a quarter of its area each)."""
    det, od = _whole_and_pieces()
    tracks, rejected, _ = link_detections(det, od)
    assert tracks["particle"].nunique() == 1
    assert tracks.set_index("frame")["pieces"].to_dict() == {0: 2, **{k: 0 for k in range(1, 8)}}
    assert tracks.set_index("frame").loc[0, "pieces_at"] == "100.0,120.0,42.4;100.0,180.0,42.4"
    assert (rejected["piece_of"] == 0).sum() == 2 and (rejected["reason"] == "short_track").sum() == 2
    for kw in (dict(solidity=0.97), dict(piece_area_share=0.25)):
        det, od = _whole_and_pieces(**kw)
        tracks, rejected, _ = link_detections(det, od)
        assert not tracks["pieces"].any() and (rejected["piece_of"] == -1).all(), kw


# --- touching particles never cut in a key frame: the lobes of the outline ------------------------------------------
# A pair whose contact stays 39 px long (radius 30 and 24 px, the smaller one's centre 14 px from the contact's chord:
# a neck 0.81 of its radius), LiNiO2 fraction 0.1 and 0.9, held together: no key frame cuts it, and before, nothing
# said it might be two. Beside it each member alone and the lobed single particle: the controls.
NC_PAIR, NC_ONE, NC_TWO, NC_LOBED = (80.0, 60.0), (200.0, 60.0), (200.0, 190.0), (80.0, 190.0)
NC_HALF_CHORD = 19.5  # px


def _never_cut_scene(seed: int = 3, slide: float = 0.0):
    """The pair, the members alone, the lobed particle; the pair's smaller member sliding ``slide`` px across the
    scan (along (0.6, 0.8): its contact stays too wide to be cut)."""
    rng, energies, refs, yy, xx, drift = _setup(seed)
    apart = np.sqrt(R1**2 - NC_HALF_CHORD**2) + np.sqrt(R2**2 - NC_HALF_CHORD**2)  # the centres' distance
    lobed = _lobed(yy, xx, NC_LOBED)
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    for k in range(N_ENERGIES):
        g = drift[k]
        c1 = np.array(NC_PAIR) + g
        c2 = c1 + np.array([0.0, apart]) + slide * k / (N_ENERGIES - 1) * np.array([0.6, 0.8])
        objects = [
            *zip(_touching(yy, xx, c1, c2), (0.1, 0.9), strict=True),
            (_disc(yy, xx, np.array(NC_ONE) + g, R1), 0.1),
            (_disc(yy, xx, np.array(NC_TWO) + g, R2), 0.9),
            (ndimage.shift(lobed, g, order=1), 0.5),
        ]
        od[k] = _frame(objects, energies[k], refs, rng)
    return od, energies, apart


@pytest.fixture(scope="module")
def never_cut():
    """The scene with the pair kept whole as one (``split_groups`` off), the classical path."""
    od, energies, apart = _never_cut_scene()
    return run_pipeline(Stack(od, energies), options=PipelineOptions(split_groups=False)), apart


def _never_cut_truth(apart, seed: int = 3, slide: float = 0.0):
    """The pair's members' true positions per frame ((n, 2) each), as :func:`_never_cut_scene` draws them."""
    *_, drift = _setup(seed)
    c1 = np.array(NC_PAIR) + drift
    t = np.arange(N_ENERGIES)[:, None] / (N_ENERGIES - 1)
    return c1, c1 + np.array([0.0, apart]) + slide * t * np.array([0.6, 0.8])


@pytest.mark.parametrize("slide", [0.0, 2.0])
def test_a_pair_never_cut_is_tracked_apart(slide):
    """By default the pair the detector never cut is two particles: each member's positions within 0.1 px RMS of
    its truth held together (0.03-0.04 measured; the group's one position was neither's), its mean E50 within 0.05 eV
    of the same particle alone beside it (0.01-0.02 measured; the group's was between the two, 1.4 eV apart), its
    note naming the group, nothing said of lobes. With the smaller member sliding 2 px across the scan each is said
    to move against the other (the pull of the contact: 0.20-0.26 px RMS off, within 0.5 px)."""
    from xanestrack.outlines import LOBES_NOTE

    od, energies, apart = _never_cut_scene(slide=slide)
    result = run_pipeline(Stack(od, energies), options=PipelineOptions())
    s = particle_summary(result)
    assert len(s) == 5, s
    truth = _never_cut_truth(apart, slide=slide)
    alone = (float(_at(s, NC_ONE)["mean_e50_ev"].iloc[0]), float(_at(s, NC_TWO)["mean_e50_ev"].iloc[0]))
    for c, e50 in zip(truth, alone, strict=True):
        p, row = _member_of(result, s, c[0])
        err = p.positions - c
        rms = float(np.sqrt(np.mean(np.sum((err - np.median(err, axis=0)) ** 2, axis=1))))
        assert rms < (0.1 if slide == 0 else 0.5), rms
        assert abs(float(row["mean_e50_ev"]) - e50) < 0.05, (row["mean_e50_ev"], e50)
        assert any(n.startswith(GROUP_NOTE) for n in p.notes), p.notes
        assert not any(n.startswith(LOBES_NOTE) for n in p.notes), p.notes
        assert any(n.startswith(GROUP_MOTION_NOTE) for n in p.notes) == (slide > 0), p.notes


def test_a_pair_never_cut_is_said_to_be_perhaps_two_with_each_lobes_e50(never_cut):
    """Kept whole as one (``split_groups`` off), the pair is one particle, cut in no key frame: its half-height outline's two lobes are named where the
    members lie, with a median E50 each that is its member's (the member alone beside it, within 0.3 eV; the two
    1.4 eV apart), ``touching_pieces`` 2 with ``touching_pieces_frames`` 0, and a run note of its own (not the one
    on outlines cut in key frames)."""
    from xanestrack.outlines import LOBES_NOTE

    result, apart = never_cut
    s = particle_summary(result)
    assert len(s) == 4, s  # the pair as one, each member alone, the lobed particle
    pair = _at(s, (NC_PAIR[0], NC_PAIR[1] + 15))
    assert len(pair) == 1, s
    pid = int(pair["particle"].iloc[0])
    assert int(pair["touching_pieces"].iloc[0]) == 2 and int(pair["touching_pieces_frames"].iloc[0]) == 0
    p = next(q for q in result.particles if q.particle == pid)
    note = next(n for n in p.notes if n.startswith(LOBES_NOTE))
    assert "2 lobes of a particle's size" in note and "may be 2 touching particles reported as one" in note
    lobes = re.findall(r"\((\d+), (\d+)\) r (\d+), median E50 ([\d.]+) eV", note)
    assert len(lobes) == 2, note
    (y1, x1, _, e1), (y2, x2, _, e2) = [tuple(map(float, q)) for q in lobes]  # the larger lobe first
    assert np.hypot(y1 - NC_PAIR[0], x1 - NC_PAIR[1]) < 4.0, note
    assert np.hypot(y2 - NC_PAIR[0], x2 - NC_PAIR[1] - apart) < 4.0, note
    alone = {yx: float(_at(s, yx)["mean_e50_ev"].iloc[0]) for yx in (NC_ONE, NC_TWO)}
    assert abs(e1 - alone[NC_ONE]) < 0.3 and abs(e2 - alone[NC_TWO]) < 0.3, (e1, e2, alone)
    assert e2 - e1 > 1.0
    assert any(n.startswith(f"the outline of 1 of 4 particles ({pid}) has lobes") for n in result.notes)
    assert not any("were cut into pieces" in n or "was cut into pieces" in n for n in result.notes)
    assert "its lobes moved together" in note  # held together: the position is the group's


def test_a_pair_never_cut_whose_members_slide_is_said_not_to_be_one_body():
    """Kept whole as one (``split_groups`` off): the same pair with its smaller member sliding 2 px across the scan: the lobes are said to move against each
    other (their relative position straying more than 0.5 px from its median), so that no member's position is the
    one reported; held together (above) they are said to move together."""
    from xanestrack.outlines import LOBES_NOTE

    od, energies, _ = _never_cut_scene(slide=2.0)
    result = run_pipeline(Stack(od, energies), options=PipelineOptions(split_groups=False))
    pair = _at(particle_summary(result), (NC_PAIR[0], NC_PAIR[1] + 15))
    assert len(pair) == 1 and int(pair["touching_pieces_frames"].iloc[0]) == 0, pair
    p = next(q for q in result.particles if q.particle == int(pair["particle"].iloc[0]))
    note = next(n for n in p.notes if n.startswith(LOBES_NOTE))
    m = re.search(
        r"its lobes moved against each other across the scan, their relative position straying ([\d.]+) px", note
    )
    assert m and float(m.group(1)) > 0.5, note


def test_single_particles_and_a_lobed_one_have_no_lobes(never_cut):
    """Controls: each member alone and the lobed particle (three ellipses, one body) have no note on lobes."""
    from xanestrack.outlines import LOBES_NOTE

    result, _ = never_cut
    s = particle_summary(result)
    for yx in (NC_ONE, NC_TWO, (NC_LOBED[0], NC_LOBED[1] + 5)):
        row = _at(s, yx)
        assert len(row) == 1, (yx, s)
        assert int(row["touching_pieces"].iloc[0]) == 0
        p = next(q for q in result.particles if q.particle == int(row["particle"].iloc[0]))
        assert not any(n.startswith(LOBES_NOTE) for n in p.notes), p.notes


# --- a smaller touching particle taken into a particle's mask: left out of it -----------------------------------------
BIG, SMALL, BIG_ALONE = 34.0, 14.0, (200.0, 70.0)  # px; the big particle alone (a control) at BIG_ALONE
BS_PAIR = (80.0, 80.0)
SMALL_ALONE = (190.0, 190.0)  # the small particle alone (a control), where asked for


def _big_and_small_scene(seed: int = 5, slide: float = 0.0, small_alone: bool = False):
    """A particle of radius 34 px (LiNiO2 fraction 0.1) with one of 14 px (0.9) touching it across a 21-px contact,
    held together (or sliding ``slide`` px across the scan); beside them the big particle alone (and, with
    ``small_alone``, the small one alone at ``SMALL_ALONE``)."""
    rng, energies, refs, yy, xx, drift = _setup(seed)
    _, c2 = _big_and_small_truth(seed, slide)
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    for k in range(N_ENERGIES):
        g = drift[k]
        c1 = np.array(BS_PAIR) + g
        objects = [
            *zip(_touching(yy, xx, c1, c2[k], BIG, SMALL), (0.1, 0.9), strict=True),
            (_disc(yy, xx, np.array(BIG_ALONE) + g, BIG), 0.1),
        ]
        if small_alone:
            objects.append((_disc(yy, xx, np.array(SMALL_ALONE) + g, SMALL), 0.9))
        od[k] = _frame(objects, energies[k], refs, rng)
    return od, energies


def _big_and_small_truth(seed: int = 5, slide: float = 0.0):
    """The touching pair's true positions per frame ((n, 2) each: the big one, the small one), as drawn above."""
    *_, drift = _setup(seed)
    a = 10.5  # the contact's half chord
    apart = np.sqrt(BIG**2 - a**2) + np.sqrt(SMALL**2 - a**2)
    c1 = np.array(BS_PAIR) + drift
    t = np.arange(N_ENERGIES)[:, None] / (N_ENERGIES - 1)
    return c1, c1 + apart * np.array([np.sin(-0.5), np.cos(-0.5)]) + slide * t * np.array([0.6, 0.8])


@pytest.mark.parametrize("slide", [0.0, 2.0])
def test_a_smaller_touching_particle_is_tracked_beside_the_larger_one(slide):
    """The 14-px particle that the big one's outline takes in (6 times smaller at half height), kept whole with it by
    the detector, was left out of its mask and of every table; now it is tracked beside it: its positions within
    0.1 px RMS of its truth held together (0.039 measured) and 0.3 px sliding 2 px along the big one's flank (0.19),
    its note naming the big particle, the big one's note naming it; its mean E50, where given, within 0.1 eV of the
    same particle alone (sliding: 8341.493 against 8341.473 alone; held together its frames at the edge, whose masks
    the contact cuts short, are left out of its chemistry and its E50 is withheld). Without ``split_groups`` it is
    not tracked, as before."""
    from xanestrack.outlines import LOBES_LEFT_OUT_NOTE
    from xanestrack.pipeline import SMALLER_NOTE

    od, energies = _big_and_small_scene(slide=slide, small_alone=True)
    result = run_pipeline(Stack(od, energies), options=PipelineOptions())
    s = particle_summary(result)
    big_truth, small_truth = _big_and_small_truth(slide=slide)
    small = _at(s, tuple(small_truth[0]), tol=5.0)
    big, alone = _at(s, BS_PAIR, tol=8.0), _at(s, SMALL_ALONE, tol=5.0)
    assert len(small) == 1 and len(big) == 1 and len(alone) == 1, s
    sid, bid = int(small["particle"].iloc[0]), int(big["particle"].iloc[0])
    p = next(q for q in result.particles if q.particle == sid)
    b = next(q for q in result.particles if q.particle == bid)
    assert any(n.startswith(f"{SMALLER_NOTE} (particle {bid},") for n in p.notes), p.notes
    left_out = next(n for n in b.notes if n.startswith(LOBES_LEFT_OUT_NOTE))
    assert f"tracked beside it as particle {sid}" in left_out, left_out
    assert any("the touching particles are tracked beside them" in n for n in result.notes), result.notes
    e = p.positions - small_truth
    e = e - np.median(e, axis=0)
    assert np.sqrt(np.mean((e**2).sum(axis=1))) < (0.1 if slide == 0 else 0.3)
    e50, e50_alone = float(small["mean_e50_ev"].iloc[0]), float(alone["mean_e50_ev"].iloc[0])
    assert np.isfinite(e50_alone)
    assert not np.isfinite(e50) or abs(e50 - e50_alone) < 0.1, (e50, e50_alone)
    if slide:
        assert np.isfinite(e50)
    off = run_pipeline(Stack(od, energies), options=PipelineOptions(split_groups=False))
    assert len(_at(particle_summary(off), tuple(small_truth[0]), tol=5.0)) == 0


def test_a_smaller_touching_particle_is_left_out_of_the_mask():
    """The big particle's outline takes in the small one beyond a neck (5.9 times smaller): it is left out of the
    big one's mask before the chemistry, so that its mean E50 and its size are those of the big particle alone (taken
    in, +0.13 eV, 3 sigma, and 2.5 px large); its note says so, and the run note."""
    from xanestrack.outlines import LOBES_LEFT_OUT_NOTE

    od, energies = _big_and_small_scene()
    result = run_pipeline(Stack(od, energies), options=PipelineOptions())
    s = particle_summary(result)
    pair, alone = _at(s, BS_PAIR, tol=8.0), _at(s, BIG_ALONE)
    assert len(pair) == 1 and len(alone) == 1, s
    p = next(q for q in result.particles if q.particle == int(pair["particle"].iloc[0]))
    q = next(q for q in result.particles if q.particle == int(alone["particle"].iloc[0]))
    assert any(n.startswith(LOBES_LEFT_OUT_NOTE) for n in p.notes), p.notes
    assert abs(float(pair["mean_e50_ev"].iloc[0]) - float(alone["mean_e50_ev"].iloc[0])) < 0.08, (pair, alone)
    assert abs(p.size_radius - q.size_radius) < 1.0, (p.size_radius, q.size_radius)
    assert int(pair["touching_pieces"].iloc[0]) == 0  # not "perhaps several": the small one is left out
    assert any("took in a smaller touching particle" in n for n in result.notes)
    assert not any("it moved against the particle" in n for n in p.notes)  # held together


def test_a_smaller_touching_particle_sliding_against_the_particle_is_said_to_pull_it():
    """The 14-px particle sliding 2 px across the scan along the big one's flank: left out of its mask as before, and
    its note says that it moved against the particle (more than 0.5 px from its median) and may pull its position."""
    from xanestrack.outlines import LOBES_LEFT_OUT_NOTE

    od, energies = _big_and_small_scene(slide=2.0)
    result = run_pipeline(Stack(od, energies), options=PipelineOptions())
    pair = _at(particle_summary(result), BS_PAIR, tol=8.0)
    assert len(pair) == 1, pair
    p = next(q for q in result.particles if q.particle == int(pair["particle"].iloc[0]))
    note = next(n for n in p.notes if n.startswith(LOBES_LEFT_OUT_NOTE))
    m = re.search(r"it moved against the particle across the scan, their relative position straying ([\d.]+) px", note)
    assert m and float(m.group(1)) > 0.5, note


# --- a neighbour a few px away that moves with the particle: not a pull towards the prediction ------------------------
def _row_scene(gap: float, seed: int = 7):
    """``(od, energies, truth (4, n, 2))``: particles of radius 30 and 26 px ``gap`` px apart along x, moving as one
    with the field's random drift (0.4 px steps), and two particles alone (the controls); uniform chemistry."""
    rng, energies, refs, yy, xx, drift = _setup(seed)
    truth = np.stack(
        [np.array(c) + drift for c in ((70.0, 70.0), (70.0, 70.0 + R1 + 26.0 + gap), (200.0, 60.0), (200.0, 170.0))]
    )
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    for k in range(N_ENERGIES):
        objects = [(_disc(yy, xx, t[k], r), 0.5) for t, r in zip(truth, (R1, 26.0, R1, 26.0), strict=True)]
        od[k] = _frame(objects, energies[k], refs, rng)
    return od, energies, truth


def _rms_by_truth(result, truth):
    out = []
    for t in truth:
        p = min(result.particles, key=lambda q: float(np.hypot(*(q.positions[0] - t[0]))))
        e = p.positions - t
        out.append(float(np.sqrt(np.mean(np.sum((e - np.median(e, axis=0)) ** 2, axis=1)))))
    return np.array(out)


def test_a_neighbour_4_px_away_moving_with_the_particle_does_not_pull_it(monkeypatch):
    """Each of the pair is followed again with passes until settled, searched in its whole window
    (``pipeline._refine_near_neighbours``): its neighbour's near rim lies in the taper of its apodisation disc, which
    pulled each frame's shift towards the window's centre (the linker's prediction), along the pair's axis: 0.162 /
    0.172 px RMS, the particles alone 0.04-0.07; now 0.033 / 0.033."""
    import xanestrack.pipeline as pipeline

    od, energies, truth = _row_scene(4.0)
    rms = _rms_by_truth(run_pipeline(Stack(od, energies), options=PipelineOptions()), truth)
    assert rms.max() < 0.08, rms
    monkeypatch.setattr(pipeline, "_refine_near_neighbours", lambda *a, **k: [])
    before = _rms_by_truth(run_pipeline(Stack(od, energies), options=PipelineOptions()), truth)
    assert before[:2].min() > 0.12 and before[:2].min() > 2 * rms[:2].max(), (before, rms)


# --- a chain whose end pair the detector cut in some key frames only: the pieces tracked apart ------------------------
CHAIN_R, CHAIN_F = (30.0, 26.0, 22.0), (0.1, 0.5, 0.9)


def _chain_scene(seed: int = 7):
    """``(od, energies, truth (3, n, 2))``: three touching particles in a row (radius 30, 26, 22 px, their centres
    50 and 42 px apart, split at their contacts), held together, LiNiO2 0.1 / 0.5 / 0.9; below them each alone."""
    rng, energies, refs, yy, xx, drift = _setup(seed)
    truth = np.stack([np.array([80.0, x]) + drift for x in (70.0, 120.0, 162.0)])
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    for k in range(N_ENERGIES):
        power = np.stack([(yy - c[k, 0]) ** 2 + (xx - c[k, 1]) ** 2 - r**2 for c, r in zip(truth, CHAIN_R)])
        own = np.argmin(power, axis=0)
        objects = [(_disc(yy, xx, c[k], r) * (own == i), f) for i, (c, r, f) in enumerate(zip(truth, CHAIN_R, CHAIN_F))]
        objects += [
            (_disc(yy, xx, np.array([200.0, 40.0 + 70.0 * i]) + drift[k], r), f)
            for i, (r, f) in enumerate(zip(CHAIN_R, CHAIN_F))
        ]
        od[k] = _frame(objects, energies[k], refs, rng)
    return od, energies, truth


def test_a_chain_whose_end_pair_was_cut_in_some_key_frames_is_tracked_apart():
    """The end pair of the chain (radius 26 and 22 px) is cut apart by the detector in 4 of its 9 key frames and kept
    whole in the others; the track's masks hold the 26-px particle only, so the 22-px one lay untracked beside it
    (said). Now the detector's pieces are its lobes: all three tracked, each its own E50 (within 0.1 eV of the same
    particle alone), the pair's notes naming the group and the pieces."""
    od, energies, truth = _chain_scene()
    said = run_pipeline(Stack(od, energies), options=PipelineOptions(split_groups=False))
    assert len(said.particles) == 5  # the chain's third is not tracked
    result = run_pipeline(Stack(od, energies), options=PipelineOptions())
    s = particle_summary(result)
    assert len(s) == 6, s
    alone = s[s["y0"] > 150].sort_values("x0")["mean_e50_ev"].to_numpy(float)
    for i in range(3):
        p, row = _member_of(result, s, truth[i, 0])
        assert abs(float(row["mean_e50_ev"]) - alone[i]) < 0.1, (i, row["mean_e50_ev"], alone)
        if i > 0:
            note = next(n for n in p.notes if n.startswith(GROUP_NOTE))
            assert "which it cut into these 2 in some of its key frames only" in note, note
