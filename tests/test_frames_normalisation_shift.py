"""A particle whose XANES left out frames is normalised on fewer of the scan's energies: how far that moves its E50
is measured (``e50_normalisation_shift_ev``) and said (xanestrack.chemistry.normbias.frames_bias_shift).

The consistency probe (round 11): a particle cut by the border in the last 5 of synth's 60 frames was normalised on 5
post-edge energies where the others had 10; its mean E50 moved -0.39 eV (16 sigma) against the same particle measured
on all of them, and the run's note quoted the scan's bias (NiO -0.18 eV), which does not hold for it. Leaving the
last 3 / 5 / 8 frames out of every particle of the default scene moved the means -0.06..+0.01 / -0.43..-0.03 /
-0.12..-0.06 eV, nothing said.
"""

import dataclasses

import numpy as np
import pytest

from xanestrack.chemistry.normbias import (
    FRAMES_DESCRIBED_RMS,
    FRAMES_FRACTIONS_WORDS,
    FRAMES_NOTE_START,
    FRAMES_SHIFT_FLOOR_EV,
    frames_bias_shift,
    scale_free_fractions,
    spectrum_frames_shift,
)
from xanestrack.chemistry.runnotes import FRAMES_RUN_NOTE_START
from xanestrack.pipeline import redo_xanes, run_pipeline
from xanestrack.report import uncertainty_figure
from xanestrack.result import particle_summary
from xanestrack.results import read_results, write_results
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack, ni_energy_grid
from xanestrack.xanes import analyse_particle

COLUMN = "e50_normalisation_shift_ev"


def _disc(f: float, seed: int = 3):
    """``(energies, aligned, mask)``: a disc (radius 9 px) of ``(1 - f) NiO + f LiNiO2`` on synth's 60-energy grid,
    with the synthetic scenes' pre-edge under it and noise."""
    rng = np.random.default_rng(seed)
    e = ni_energy_grid(60)
    refs = ni_references()
    mu = (1 - f) * refs["NiO"](e) + f * refs["LiNiO2"](e) + 0.25 * (e / 8333.0) ** -3
    yy, xx = np.mgrid[0:33, 0:33]
    mask = np.hypot(yy - 16, xx - 16) < 9
    aligned = 0.8 * mu[:, None, None] * mask + 0.1 + rng.normal(0, 0.004, (e.size, 33, 33))
    return e, aligned.astype(np.float32), mask


def _mean_e50(xr, mask):
    v = np.asarray(xr["edge_maps"]["e50"], float)[mask]
    return float(np.nanmean(v))


@pytest.mark.parametrize("f, k", [(0.1, 5), (0.5, 5), (0.1, 8), (0.9, 3)])
def test_the_shift_predicts_the_move_of_a_particle_without_its_last_frames(f, k):
    """The particle's own analysis, with and without its last ``k`` frames: the prediction from the references mixed
    at its scale-free chemistry (read from the spectrum without them) holds the move within 0.05 eV or 20 %."""
    e, aligned, mask = _disc(f)
    refs = ni_references()
    used = np.ones(e.size, bool)
    used[-k:] = False
    whole = analyse_particle(aligned, mask, e, references=refs)
    cut = analyse_particle(aligned, mask, e, usable=used, references=refs)
    observed = _mean_e50(cut, mask) - _mean_e50(whole, mask)
    chemistry, rms = scale_free_fractions(e, cut["mean_norm"], cut["e0_ev"], refs)
    assert chemistry["LiNiO2"] == pytest.approx(f, abs=0.05)  # the free scale takes up the other edge step
    assert rms <= FRAMES_DESCRIBED_RMS
    shift = frames_bias_shift(e, used, refs, fractions=chemistry)
    assert abs(shift.e50_ev - observed) <= max(0.05, 0.2 * abs(observed)), (shift, observed)
    if (f, k) == (0.1, 5):
        assert observed < -0.3  # the probe's case: NiO-rich, the last 5 of 60 frames out
    # control: on every energy, nothing moves
    same = frames_bias_shift(e, np.ones(e.size, bool), refs, fractions=chemistry)
    assert same.e50_ev == 0.0 and same.fraction == 0.0


def test_without_a_chemistry_the_largest_over_the_references_and_mixes():
    e = ni_energy_grid(60)
    refs = ni_references()
    used = np.ones(e.size, bool)
    used[-5:] = False
    s = frames_bias_shift(e, used, refs)
    assert s.fractions is None and np.isnan(s.fraction)
    assert s.low_ev <= s.e50_ev <= s.high_ev and abs(s.e50_ev) == max(abs(s.low_ev), abs(s.high_ev))
    assert s.low_ev < -0.3  # NiO on 55 of the 60 energies
    # a reference without energies of its own cannot be sampled: nothing to measure
    assert frames_bias_shift(e, used, {"flat": lambda x: np.ones_like(x)}) is None
    with pytest.raises(ValueError, match="one value per energy"):
        frames_bias_shift(e, used[:-1], refs)


def test_a_measured_spectrum_reads_the_move_as_the_references_do():
    """A spectrum measured on every energy, normalised on fewer (what a particle measured on all of them gives where
    the references do not describe the one that lost frames), reads what the references so mixed read; and the
    references do not describe a spectrum of another chemistry (the stress family's), whose move is another."""
    from xanestrack.synth_stress import stress_reference

    e = ni_energy_grid(60)
    refs = ni_references()
    used = np.ones(e.size, bool)
    used[-5:] = False
    mix = 0.7 * refs["NiO"](e) + 0.3 * refs["LiNiO2"](e) + 0.25 * (e / 8333.0) ** -3
    own = spectrum_frames_shift(e, used, mix)
    assert own == pytest.approx(
        frames_bias_shift(e, used, refs, fractions={"NiO": 0.7, "LiNiO2": 0.3}).e50_ev, abs=0.01
    )
    assert spectrum_frames_shift(e, np.ones(e.size, bool), mix) == 0.0
    other = stress_reference()(e) + 0.25 * (e / 8333.0) ** -3
    a, b = float(other[e < 8300].mean()), float(other[e > 8450].mean())
    shares, rms = scale_free_fractions(e, (other - a) / (b - a), 8347.0, refs)
    assert rms > FRAMES_DESCRIBED_RMS
    assert spectrum_frames_shift(e, used, other) > 0.1  # +0.15 eV: the references' mixes read -0.46 to +0.08


@pytest.fixture(scope="module")
def scene():
    """``(stack, result)``: the default scene, seed 1, reduced (192 px, 3 particles, synth's 60 energies)."""
    s = make_synthetic_stack(
        "default", seed=1, n_energies=60, shape=(192, 192), n_particles=3, radius_range=(10.0, 22.0)
    )
    st = Stack(s.optical_density(), s.energies_ev)
    return st, run_pipeline(st)


#: the probe's "leave" scene, reduced: the field is 148 columns of the scene's; at frame 55 it jumps 16 px, so that
#: the particle nearest its right border is cut by it in the last 5 frames (8584-8680 eV, post-edge)
CUT_AT, CUT_JUMP, CUT_WIDTH = 55, 16, 148


def test_a_particle_cut_by_the_border_late_in_the_scan_is_said_moved(scene):
    """run_pipeline: the particle cut by the border in the last 5 of 60 frames is normalised on 55 energies, its mean
    E50 moved -0.31 eV (16 sigma) against the same particle in the whole field, said nowhere before; now its
    column and note give the move (-0.34 eV) and the run note names it; its fractions, fitted against references
    normalised on its own energies, do not move. Control: the two
    particles whole in every frame keep their mean E50 and read 0."""
    st, whole = scene
    od, e = np.asarray(st.od, np.float32), np.asarray(st.energies_ev, float)
    off = np.where(np.arange(e.size) >= CUT_AT, 0, CUT_JUMP)
    cut = run_pipeline(Stack(np.stack([od[k][:, off[k] : off[k] + CUT_WIDTH] for k in range(e.size)]), e))
    a = particle_summary(whole).set_index("particle")
    b = particle_summary(cut).set_index("particle")
    table = uncertainty_figure(cut).tables["uncertainty"].set_index("particle")
    moved = []
    for pid, row in b.iterrows():
        # the same particle in the whole field: its first position CUT_JUMP px further right
        same = ((a["x0"] - row["x0"] - CUT_JUMP).abs() < 3) & ((a["y0"] - row["y0"]).abs() < 3)
        assert same.sum() == 1
        observed = row["mean_e50_ev"] - float(a.loc[same, "mean_e50_ev"].iloc[0])
        p = next(q for q in cut.particles if q.particle == pid)
        notes = [n for n in p.notes if n.startswith(FRAMES_NOTE_START)]
        if np.asarray(p.xanes_frames, bool).all():  # control
            assert row[COLUMN] == 0.0 and not notes and abs(observed) < 0.02
            assert "frames_left_out" not in str(table.loc[pid, "fraction_flags"])
            continue
        moved.append(pid)
        assert int(np.count_nonzero(p.xanes_frames)) == CUT_AT
        assert observed < -0.2 and abs(observed) > 10 * row["mean_e50_sigma_ev"]
        assert abs(row[COLUMN] - observed) <= max(0.05, 0.2 * abs(observed)), (row[COLUMN], observed)
        assert len(notes) == 1 and f"{row[COLUMN]:+.2f} eV" in notes[0]
        # its fractions are fitted against references normalised on its own energies (xanes.references_on_scan):
        # not moved by the frames left out, and not flagged so
        assert abs(row["oxidised_fraction"] - float(a.loc[same, "oxidised_fraction"].iloc[0])) < 0.02
        assert "frames_left_out" not in str(table.loc[pid, "fraction_flags"])
        assert table.loc[pid, COLUMN] == row[COLUMN]
    assert len(moved) == 1
    assert any(n.startswith(FRAMES_RUN_NOTE_START) and f"{moved[0]}: " in n for n in cut.notes)


def _without_last(result, k: int):
    """The result with the last ``k`` frames left out of every particle's XANES, analysed again (as the probe's
    drop_post.py: what a particle leaving the field late in the scan has)."""
    ps = []
    for p in result.particles:
        used = np.asarray(p.xanes_frames, bool).copy()
        used[-k:] = False
        ps.append(dataclasses.replace(p, xanes_frames=used))
    return redo_xanes(dataclasses.replace(result, particles=ps), energies_ev=result.energies_ev)


def test_particles_on_every_energy_are_not_moved(scene):
    """Control: every particle used every frame: 0 in the column, no note, no run note."""
    _, r = scene
    s = particle_summary(r)
    assert all(np.asarray(p.xanes_frames, bool).all() for p in r.particles)
    assert (s[COLUMN] == 0.0).all()
    assert not any(n.startswith(FRAMES_NOTE_START) for p in r.particles for n in p.notes)
    assert not any(n.startswith(FRAMES_RUN_NOTE_START) for n in r.notes)
    table = uncertainty_figure(r).tables["uncertainty"]
    assert (table[COLUMN] == 0.0).all() and not table["fraction_flags"].str.contains("frames_left_out").any()


def test_a_particle_without_its_last_frames_is_said_moved(scene):
    """The last 5 of 60 frames left out of every particle: each one's mean E50 moves as the column says (within 0.05
    eV or 20 %), and those moved beyond max(0.05 eV, 2 sigma) say so, their fractions flagged."""
    _, r = scene
    before = particle_summary(r).set_index("particle")
    cut = _without_last(r, 5)
    after = particle_summary(cut).set_index("particle")
    observed = after["mean_e50_ev"] - before["mean_e50_ev"]
    predicted = after[COLUMN]
    assert np.isfinite(predicted).all()
    for pid in after.index:
        assert abs(predicted[pid] - observed[pid]) <= max(0.05, 0.2 * abs(observed[pid])), (pid, predicted, observed)
    table = uncertainty_figure(cut).tables["uncertainty"].set_index("particle")
    said = []
    for p in cut.particles:
        notes = [n for n in p.notes if n.startswith(FRAMES_NOTE_START)]
        bar = max(FRAMES_SHIFT_FLOOR_EV, 2 * after.loc[p.particle, "mean_e50_sigma_ev"])
        if abs(predicted[p.particle]) >= bar:
            assert len(notes) == 1 and f"{predicted[p.particle]:+.2f} eV" in notes[0] and "55 of 60" in notes[0]
            said.append(p.particle)
            if FRAMES_FRACTIONS_WORDS in notes[0]:
                assert "frames_left_out" in table.loc[p.particle, "fraction_flags"]
        np.testing.assert_allclose(table.loc[p.particle, COLUMN], predicted[p.particle])
    assert said and min(observed[said]) < -0.2  # the NiO-rich ones, as the probe's
    run_note = [n for n in cut.notes if n.startswith(FRAMES_RUN_NOTE_START)]
    assert len(run_note) == 1 and all(f"{pid}: " in run_note[0] for pid in said)
    # analysed again on every frame: the notes and the run note go, the column is 0 again
    back = redo_xanes(
        dataclasses.replace(
            cut,
            particles=[dataclasses.replace(p, xanes_frames=np.ones(len(r.energies_ev), bool)) for p in cut.particles],
        ),
        energies_ev=r.energies_ev,
    )
    assert (particle_summary(back)[COLUMN] == 0.0).all()
    assert not any(n.startswith(FRAMES_NOTE_START) for p in back.particles for n in p.notes)
    assert not any(n.startswith(FRAMES_RUN_NOTE_START) for n in back.notes)


def test_the_column_reads_back_from_the_folder_and_a_redo_there(scene, tmp_path_factory):
    """results.h5 holds each particle's number: read_results gives the same particles' table, and a redo of the
    folder the same numbers as the redo in memory."""
    st, r = scene
    cut = _without_last(r, 5)
    out = tmp_path_factory.mktemp("frames_shift")
    write_results(cut, out, stack=st)
    back = read_results(out)
    np.testing.assert_array_equal(particle_summary(back)[COLUMN], particle_summary(cut)[COLUMN])
    assert [p.notes for p in back.particles] == [p.notes for p in cut.particles]
    mem = redo_xanes(cut, energies_ev=r.energies_ev)
    folder = redo_xanes(back, energies_ev=r.energies_ev)
    np.testing.assert_allclose(particle_summary(folder)[COLUMN], particle_summary(mem)[COLUMN], atol=1e-9)
    np.testing.assert_allclose(particle_summary(mem)[COLUMN], particle_summary(cut)[COLUMN], atol=1e-9)
    assert [n for n in folder.notes if n.startswith(FRAMES_RUN_NOTE_START)] == [
        n for n in mem.notes if n.startswith(FRAMES_RUN_NOTE_START)
    ]


def test_where_the_references_do_not_describe_it_the_particles_on_every_energy_read_it(scene, monkeypatch):
    """The references judged not to describe any particle: a particle without its last 5 frames is measured from the
    particle most like it that used every energy (its mean spectrum normalised on the first one's energies), and its
    note says so; the particles on every energy stay 0."""
    from xanestrack import chemistry
    from xanestrack.chemistry.runnotes import _most_alike

    _, r = scene
    monkeypatch.setattr(chemistry.normbias, "FRAMES_DESCRIBED_RMS", -1.0)
    lose = int(particle_summary(r).set_index("particle")["oxidised_fraction"].idxmin())  # the most NiO: moved most
    ps = []
    for p in r.particles:
        used = np.asarray(p.xanes_frames, bool).copy()
        if p.particle == lose:
            used[-5:] = False
        ps.append(dataclasses.replace(p, xanes_frames=used))
    cut = redo_xanes(dataclasses.replace(r, particles=ps), energies_ev=r.energies_ev)
    s = particle_summary(cut).set_index("particle")
    assert (s.drop(index=lose)[COLUMN] == 0.0).all()
    p = next(q for q in cut.particles if q.particle == lose)
    norms = {q.particle: q.mean_norm for q in cut.particles if q.particle != lose}
    near = _most_alike(p, norms, p.xanes_frames, np.asarray(r.energies_ev), (-20.0, 40.0))[0]
    q = next(x for x in cut.particles if x.particle == near)
    expect = spectrum_frames_shift(r.energies_ev, p.xanes_frames, q.pre_edge + q.mean_norm * (q.post_edge - q.pre_edge))
    assert s.loc[lose, COLUMN] == pytest.approx(expect, abs=1e-9) and np.isfinite(expect)
    assert abs(expect) >= max(FRAMES_SHIFT_FLOOR_EV, 2 * s.loc[lose, "mean_e50_sigma_ev"]), expect
    notes = [n for n in p.notes if n.startswith(FRAMES_NOTE_START)]
    assert len(notes) == 1 and f"read from particle {near}" in notes[0] and "do not describe" in notes[0]
