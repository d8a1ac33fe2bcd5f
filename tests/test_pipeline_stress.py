"""The pipeline on reduced stress scenes (issue 15, item 9): found, no spurious tracks, vouched.

Each case of :data:`~xanestrack.synth_stress.STRESS_CASES` is drawn reduced (48 energies,
256 x 256, 4-7 particles) for seeds 1-3 (< 100: never used for training, which draws
seeds >= 100) and run with default options on the classical path; one case also on the
learned path. The full-size numbers are in ``benchmarks/bench_stress.py``.

What is asserted, per case:

- isolated particles (truth ``isolated``) found: at least ``MIN_FOUND`` of them over
  the three seeds (measured at a6c7e92: 11/12 drift, 11/12 counts, 9/9 fines, 12/12
  jitter, 12/12 magnification, 7/9 crowd (the r ~ 10 px ones are lost), 6/7 all; the
  issue's goal is all of them, this is a floor against regressions);
- at most one spurious track per scan (measured: none in any case);
- the learned path (stress-fines, seed 1): the same three (measured: 3/3 found, no
  spurious track, no unflagged frame > 1 px);
- the tool vouches only for what it measured: no frame whose position is off by more
  than 1 px (constant offset removed) carries none of ``interpolated``,
  ``position_outlier``, ``disagree``. Measured at a6c7e92: none, except stress-counts
  seed 1 (one frame at 1.04 px) and seed 3 (one at 1.09 px);
- on a pure magnification change, no particle comes out non-rigid (max |non-rigid|
  over its vouched frames <= MAX_NONRIGID_PX) and the per-frame ``common_scale`` follows the true
  scale (median error <= 1e-3, a tenth of the 1 % change; change between the ends within
  20 %). Measured at a6c7e92 (seeds 1-3): max |non-rigid| 1.14, 1.12, 0.70 px; median
  scale error 2.9e-3, 4.7e-4, 6.7e-4; end-to-end ratio 1.41, 1.14, 1.00.
  With positions good to ~0.1 px per axis and 4 particles 60-90 px from the centre, the
  scale is measurable to ~5e-4 per frame, so these bounds leave a margin of 2-3 sigma;
- separating the matrix behind drifting particles (``PipelineOptions.separate_matrix``)
  brings them closer to the truth than following them over the matrix (stress-drift), and
  from 0.75 px of own motion closer than from the former 1.5 px (stress-jitter, own drift).
"""

import numpy as np
import pandas as pd
import pytest

from xanestrack.evaluate import UNVOUCHED_FLAGS, evaluate_tracking, true_tracks
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.result import FRAME_FLAGS
from xanestrack.stack import Stack
from xanestrack.synth_stress import STRESS_CASES, make_stress_stack

SEEDS = (1, 2, 3)
MIN_FOUND = 0.75  # of the isolated particles, over SEEDS (measured >= 7/9)
MAX_SPURIOUS = 1
# px. Measured with the tracks smoothed across the energies (PipelineOptions.smooth_tracks): seeds 1-3
# 0.37, 0.53, 0.37; without 0.37, 0.49, 0.37. Seed 2's 0.5 is one particle's plateau after the edge: its edge
# estimate's pre-/post-edge bias (~0.4 px, a contrast effect) against frame 0, not noise; its RMS against the
# truth is 0.162 px smoothed, 0.188 not (every particle of the scene closer to the truth smoothed). The
# translation-only trend is 0.88-1.30 px: the bound still tells the two rules apart.
MAX_NONRIGID_PX = 0.6
MAX_SCALE_MEDIAN_ERR = 1e-3
# the reduced scenes have 4 particles and ~0.2 px of position noise: the fitted change of
# scale across the scan scatters by 10-25 % over seeds and estimator variants (measured
# 0.86-1.23 x); 0.3 still tells a fitted magnification from none (a ratio of 0)
SCALE_END_TOLERANCE = 0.3

_CACHE: dict = {}


def run_case(case, seed, path="classical", **overrides):
    """(stack, result, table, summary) of a reduced stress scene, each run once per session."""
    key = (case, seed, path, tuple(sorted(overrides.items())))
    if key not in _CACHE:
        s = make_stress_stack(case, seed, reduced=True, **overrides)
        opts = PipelineOptions()
        det = seg = None
        if path == "learned":
            from xanestrack.models import pipeline_models

            det, seg = pipeline_models("learned", "learned", options=opts)
        r = run_pipeline(Stack(s.optical_density(), s.energies_ev), options=opts, detector=det, segmenter=seg)
        table, summary = evaluate_tracking(r, s.truth)
        _CACHE[key] = (s, r, table, summary)
    return _CACHE[key]


def describe(case, seed, summ):
    return (
        f"{case} seed {seed}: isolated found {summ['isolated_found']}/{summ['n_isolated']}, tracked through all frames "
        f"{summ['isolated_tracked']}, worst/median RMS {summ['max_rms_px']:.3f}/{summ['median_rms_px']:.3f} px, spurious "
        f"{summ['spurious']}, frames > 1 px {summ['frames_wrong']} (unflagged {summ['unflagged_wrong']}, worst "
        f"{summ['worst_unflagged_px']:.2f} px), disagree {summ['frames_disagree']}"
    )


def check_case(case, seeds, path="classical"):
    found = isolated = 0
    problems, lines = [], []
    for seed in seeds:
        _, r, table, summ = run_case(case, seed, path)
        lines.append(describe(case, seed, summ))
        # the stress family's focus holds (the reduced scenes' edge widths change by 0.01-0.20 px between quarters)
        said = [n for n in r.notes if "resolution changes across the scan" in n]
        if said:
            problems.append(f"seed {seed}: a change of resolution noted where the focus holds: {said[0][:160]}")
        found += summ["isolated_found"]
        isolated += summ["n_isolated"]
        if summ["spurious"] > MAX_SPURIOUS:
            problems.append(f"seed {seed}: {summ['spurious']} spurious tracks (at most {MAX_SPURIOUS})")
        if summ["unflagged_wrong"]:
            bad = table[table["unflagged_wrong"] > 0]
            problems.append(
                f"seed {seed}: {summ['unflagged_wrong']} frames off by > 1 px (up to {summ['worst_unflagged_px']:.2f} px) "
                f"stated as measured and vouched for (true particles {bad['truth_particle'].tolist()})"
            )
    if found < MIN_FOUND * isolated:
        problems.append(f"isolated particles found {found}/{isolated} (at least {MIN_FOUND:.0%})")
    assert not problems, "; ".join(problems) + "\n" + "\n".join(lines)


_SLOW = {"stress-crowd", "stress-all"}


#: known shortfall, measured: in stress-all (everything at once) both estimates can share
#: a ~1.1 px error in a low-contrast frame and vouch for it (reduced seed 3: one frame of
#: 96 at 1.08 px; full size seed 1: 2 frames of ~2000 at 1.2-1.5 px). Measured at this
#: release (tracks smoothed across the energies): the test passes, the frame under 1 px — after
#: the smoothing's solver change, not before it, so by a float-level margin (full size: drift
#: seed 2 learned still has one such frame at 1.03 px). The mark stays, not strict. Issue 15 stays open.
_MARKS = {c: [pytest.mark.slow] for c in _SLOW}
_MARKS["stress-all"] = [
    pytest.mark.slow,
    pytest.mark.xfail(strict=False, reason="vouching misses a ~1.1 px shared error in stress-all"),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=_MARKS[c]) if c in _MARKS else c for c in STRESS_CASES])
def test_stress_case_classical(case):
    check_case(case, SEEDS)


@pytest.mark.slow
def test_stress_case_learned():
    # fines and fines touching particles: what the learned segmenter must cut off
    check_case("stress-fines", (1,), path="learned")


def test_magnification_is_common_motion():
    """The common scale follows the true magnification (and the scene is one the former
    translation-only rule gets wrong)."""
    _check_magnification(nonrigid=False)


def test_magnification_leaves_no_nonrigid_trend():
    _check_magnification(nonrigid=True)


def _check_magnification(*, nonrigid):
    problems, lines = [], []
    for seed in SEEDS:
        # 8 particles: with the reduced scene's 4, a 1 % magnification over 256 px is not
        # told from particles drifting on their own (the scale is then rightly left at 1)
        s, r, _, _ = run_case("stress-magnification", seed, n_particles=8)
        true_scale = s.truth.scale / s.truth.scale[0]
        tr = r.tracks
        fitted = tr.groupby("frame")["common_scale"].first().reindex(range(len(true_scale))).to_numpy()
        err = np.abs(fitted - true_scale)
        ends = lambda v: v[-5:].mean() - v[:5].mean()  # noqa: E731
        ratio = ends(fitted) / ends(true_scale)
        flags = np.array([(p.frame_flags & UNVOUCHED_FLAGS) != 0 for p in r.particles]).reshape(-1)
        order = np.concatenate([np.full(len(p.frame_flags), p.particle) for p in r.particles])
        nr = tr.sort_values(["particle", "frame"])
        assert np.array_equal(nr["particle"].to_numpy(), order)
        # non-rigid motion is a trend, not one frame's position noise (~0.2 px RMS here):
        # each particle's non-rigid displacement, vouched frames only, running median of 7
        nrv = nr[["nonrigid_dy", "nonrigid_dx"]].to_numpy().copy()
        nrv[flags] = np.nan
        sm = pd.DataFrame(nrv).groupby(order).transform(lambda v: v.rolling(7, center=True, min_periods=3).median())
        mag = np.hypot(sm[0], sm[1]).to_numpy()
        worst = pd.Series(mag).groupby(order).max()
        # the same trend measured against the common translation alone (the former rule)
        # is well above the limit: the test tells the two apart
        P = nr[["y", "x"]].to_numpy().reshape(len(r.particles), -1, 2)
        D = P - P[:, :1]
        tr_only = D - np.median(D, axis=0, keepdims=True)
        tr_only = (
            pd.DataFrame(tr_only.reshape(-1, 2))
            .groupby(order)
            .transform(lambda v: v.rolling(7, center=True, min_periods=3).median())
        )
        lines.append(f"seed {seed}: translation-only trend max {np.nanmax(np.hypot(tr_only[0], tr_only[1])):.2f} px")
        if not np.nanmax(np.hypot(tr_only[0], tr_only[1])) > MAX_NONRIGID_PX:
            problems.append(
                f"seed {seed}: the scene's magnification is too small to test (translation-only trend below the limit)"
            )
        lines.append(
            f"seed {seed}: max |non-rigid| trend on vouched frames per particle {np.round(worst.to_numpy(), 2).tolist()} px; "
            f"scale error median {np.nanmedian(err):.1e}, max {np.nanmax(err):.1e}; "
            f"change between the ends {ratio:.2f} x the true one"
        )
        if nonrigid and not (worst.max() <= MAX_NONRIGID_PX):
            problems.append(
                f"seed {seed}: a particle comes out non-rigid by {worst.max():.2f} px (at most {MAX_NONRIGID_PX})"
            )
        if not (np.nanmedian(err) <= MAX_SCALE_MEDIAN_ERR):
            problems.append(
                f"seed {seed}: common_scale off by {np.nanmedian(err):.1e} (median; at most {MAX_SCALE_MEDIAN_ERR:.0e})"
            )
        if not abs(ratio - 1) <= SCALE_END_TOLERANCE:
            problems.append(f"seed {seed}: common_scale changes {ratio:.2f} x the true change across the scan")
    assert not problems, "; ".join(problems) + "\n" + "\n".join(lines)


@pytest.mark.slow
def test_separating_the_matrix_removes_its_pull_on_drifting_particles():
    """Particles drifting on their own over a textured matrix (reduced stress-drift, seed 4,
    learned path): followed again with the matrix behind them subtracted, their positions
    are closer to the truth than without (measured: worst / median RMS 0.355 / 0.195 px
    with, 0.584 / 0.500 px without; seed 3: 0.41 / 0.25 vs 0.41 / 0.32)."""
    from xanestrack.models import pipeline_models

    s = make_stress_stack("stress-drift", 4, reduced=True)
    st = Stack(s.optical_density(), s.energies_ev)
    out = {}
    for sep in (True, False):
        opts = PipelineOptions(separate_matrix=sep)
        det, seg = pipeline_models("learned", "learned", options=opts)
        r = run_pipeline(st, options=opts, detector=det, segmenter=seg)
        out[sep] = evaluate_tracking(r, s.truth)[1]
        if sep:
            assert any("matrix behind them subtracted" in n for n in r.notes), r.notes
            assert "matrix" in r.timings
    with_, without = out[True], out[False]
    assert with_["isolated_tracked"] == without["isolated_tracked"] == 4
    assert with_["median_rms_px"] < 0.7 * without["median_rms_px"], (with_, without)
    assert with_["max_rms_px"] < 0.8 * without["max_rms_px"], (with_, without)
    assert with_["unflagged_wrong"] == 0


def test_particles_moving_a_little_on_their_own_followed_by_their_shape():
    """Particles drifting by 0.375-0.75 px on their own (reduced stress-jitter, seed 2, own
    drift 0.25 px/step; classical path): followed again with the correlation apodised by
    their own shape, the worst is closer to the truth (measured 0.261 px with, 0.290 without;
    median 0.184 / 0.186; seed 1: 0.226 / 0.147 vs 0.232 / 0.139. Before the edge images were
    blind to the OD level: 0.256 / 0.287, median 0.205 / 0.207. With the band at 0.75-1.5 px,
    before the matrix was separated from 0.75 px: 0.309 / 0.383, median 0.268 / 0.270)."""
    s = make_stress_stack("stress-jitter", 2, reduced=True, drift_step_sd=0.25)
    st = Stack(s.optical_density(), s.energies_ev)
    out = {}
    for shape in (True, False):
        # the shape alone (with it, some of these particles are unmixed from the matrix by their edge:
        # test_particles_hardly_moving_on_their_own_unmixed_from_the_matrix_by_their_edge)
        r = run_pipeline(st, options=PipelineOptions(shape_apodisation=shape, unmix_matrix=False))
        out[shape] = evaluate_tracking(r, s.truth)[1]
        assert any("apodised by their own shape" in n for n in r.notes) == shape, r.notes
    with_, without = out[True], out[False]
    assert with_["isolated_tracked"] == without["isolated_tracked"] == 4
    assert with_["max_rms_px"] < 0.95 * without["max_rms_px"], (with_, without)
    assert with_["median_rms_px"] <= without["median_rms_px"] + 0.005, (with_, without)
    assert with_["unflagged_wrong"] == 0


def test_particles_drifting_about_a_pixel_separated_from_the_matrix(monkeypatch):
    """The matrix pulls a particle drifting by 0.75-1.5 px on its own as well: separated from
    it from 0.75 px of own motion (``MIN_OWN_MOTION``, where that stands out of its noise; it
    was 1.5 px), the same scene as above comes out closer to the truth (measured, reduced stress-jitter with 0.25 px/step own drift,
    classical, worst / median RMS px, 1.5 -> 0.75: seed 1 0.233 / 0.170 -> 0.225 / 0.154, seed 2
    0.309 / 0.268 -> 0.256 / 0.205, seed 3 0.243 / 0.186 -> 0.201 / 0.176)."""
    import xanestrack.pipeline as pipeline

    assert pipeline.MIN_OWN_MOTION == 0.75
    s = make_stress_stack("stress-jitter", 2, reduced=True, drift_step_sd=0.25)
    st = Stack(s.optical_density(), s.energies_ev)
    out = {}
    for threshold in (0.75, 1.5):
        monkeypatch.setattr(pipeline, "MIN_OWN_MOTION", threshold)
        # the separation alone (not unmixed by the edge where it is not separated, which came later)
        r = run_pipeline(st, options=PipelineOptions(unmix_matrix=False))
        out[threshold] = evaluate_tracking(r, s.truth)[1]
        separated = any("matrix behind them subtracted" in n for n in r.notes)
        assert separated == (threshold == 0.75), r.notes
    now, before = out[0.75], out[1.5]
    assert now["isolated_tracked"] == before["isolated_tracked"] == 4
    assert now["max_rms_px"] < 0.9 * before["max_rms_px"], (now, before)
    assert now["median_rms_px"] < 0.85 * before["median_rms_px"], (now, before)
    assert now["unflagged_wrong"] == 0


@pytest.mark.parametrize("seed", [2, 5])
def test_particles_hardly_moving_on_their_own_unmixed_from_the_matrix_by_their_edge(seed):
    """A particle moving on its own by too little to separate it from the matrix by that
    motion, but well above its noise, is followed again with the matrix behind it told apart
    by its absorption edge (``unmix_matrix``) and subtracted: it comes out closer to the
    truth (reduced stress-fines, classical path; measured RMS without -> with: seed 2 0.175
    -> 0.145 px, seed 5 0.130 -> 0.091; seed 6 0.205 -> 0.190), and its notes say so."""
    s = make_stress_stack("stress-fines", seed, reduced=True)
    st = Stack(s.optical_density(), s.energies_ev)
    rms, res = {}, {}
    for unmix in (True, False):
        r = run_pipeline(st, options=PipelineOptions(unmix_matrix=unmix))
        tab, summ = evaluate_tracking(r, s.truth)
        rms[unmix] = dict(zip(tab["particle"], tab["rms_px"]))
        res[unmix] = (r, summ)
    r, summ = res[True]
    unmixed = [
        p.particle for p in r.particles if any("told apart from it by its absorption edge" in n for n in p.notes)
    ]
    assert unmixed, [p.notes for p in r.particles]
    assert any("told apart from them by their absorption edge" in n for n in r.notes), r.notes
    assert not any("absorption edge" in " ".join(p.notes) for p in res[False][0].particles)
    for pid in unmixed:
        assert rms[True][pid] < rms[False][pid] - 0.01, (pid, rms[True][pid], rms[False][pid])
    assert summ["unflagged_wrong"] == 0
    assert summ["isolated_tracked"] == res[False][1]["isolated_tracked"]


def _cut_around(case, seed, j, size=200):
    """A full-size stress scene cut to ``size`` px (less at the frame's edge) from ``size / 2``
    above and left of truth particle ``j``'s first position: the stack, the truth's tracks
    (:func:`~xanestrack.evaluate.true_tracks`, frame coordinates) and the cut's corner."""
    s = make_stress_stack(case, seed)
    truth = true_tracks(s.truth)
    corner = np.maximum(np.round(truth[j, 0]).astype(int) - size // 2, 0)
    (y0, x0) = corner
    return Stack(s.optical_density()[:, y0 : y0 + size, x0 : x0 + size], s.energies_ev), truth, corner


def _errors_of(r, truth, j, corner):
    """The result's particle paired with truth particle ``j`` in a cut (:func:`_cut_around`):
    its index and its position errors (n_frames, 2), frame coordinates."""
    from xanestrack.evaluate import pair_tracks

    est = np.array([p.positions for p in r.particles], float) + corner
    (i,) = [i for i, k in pair_tracks(est, truth, max_distance=10) if k == j]
    return i, est[i] - truth[j]


def test_own_motion_measured_again_after_the_shape_before_deciding_on_the_separation(monkeypatch):
    """The first pass is pulled toward the matrix, which hides part of a particle's own
    motion: a particle whose first-pass motion is below ``MIN_OWN_MOTION`` is followed by
    its shape, its motion measured again there and, where that now suffices, separated.
    Full-size stress-fines seed 1, cut to the 16-px particle (truth 8) and its surroundings,
    classical: first pass 0.65 px of own motion, separated after the shape; RMS measured
    0.191 px separated, 0.230 followed by its shape alone (a 200-px cut, two particles, before
    the shared motion of two was their mean: 0.64 px, 0.208 / 0.244; before the edge images were blind
    to the OD level: 0.187 / 0.242, 0.312 with neither; whole scene, bench_stress: 0.206 ->
    0.127 px worst, classical, 0.161 now)."""
    import xanestrack.pipeline as pipeline

    # 260 px: four particles, so that the motion they share is a similarity (of two it is their mean,
    # and each one's own motion half their relative motion: 0.31 px each here, below MIN_OWN_MOTION)
    st, truth, corner = _cut_around("stress-fines", 1, 8, size=260)
    first_pass = {}
    refine = pipeline._refine_one

    def spy(loc, m, od, footprints, options, contrast=None):
        own = (loc.centres - m)[loc.measured]
        first_pass[loc.pid] = pipeline._own_motion_px(own)
        return refine(loc, m, od, footprints, options, contrast)

    monkeypatch.setattr(pipeline, "_refine_one", spy)

    def rms_of_particle_8(r):
        i, e = _errors_of(r, truth, 8, corner)
        e -= np.median(e, axis=0)
        return float(np.sqrt(np.mean(np.sum(e**2, axis=1)))), r.particles[i].particle

    r = run_pipeline(st, options=PipelineOptions())
    now, pid = rms_of_particle_8(r)
    assert first_pass[pid] < pipeline.MIN_OWN_MOTION
    assert any("matrix behind them subtracted" in n for n in r.notes), r.notes
    monkeypatch.setattr(pipeline, "_separable", lambda own, motion: False)
    shape_only, _ = rms_of_particle_8(run_pipeline(st, options=PipelineOptions()))
    assert now < 0.9 * shape_only, (now, shape_only)


def test_a_noisy_mover_whose_matrix_the_edge_cannot_tell_is_separated_by_its_motion(monkeypatch):
    """At 600 counts a small particle drifting about a pixel on its own moves by less than 4 times its
    positions' noise, and the matrix told apart by its edge stands too little out of its own noise to
    be used: it was followed by its shape alone, pulled by the matrix in its faint frames. Separated by
    its motion all the same (``SEPARATE_WHERE_UNMIXING_FAILS``, with the matrix taken from every frame)
    it comes out closer to the truth. Full-size stress-counts seed 2 cut to its 12-px particle (truth
    5) and its surroundings, classical: measured 0.284 px RMS, 0.342 followed by its shape (whole
    scene, bench_stress: 0.321 -> 0.249 px worst, classical)."""
    import xanestrack.pipeline as pipeline

    st, truth, corner = _cut_around("stress-counts", 2, 5, size=260)
    separated = []
    separate = pipeline._separate

    def spy(loc, *args, **kwargs):
        separated.append(loc.pid)
        return separate(loc, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_separate", spy)
    rms = {}
    for fallback in (True, False):
        monkeypatch.setattr(pipeline, "SEPARATE_WHERE_UNMIXING_FAILS", fallback)
        separated.clear()
        r = run_pipeline(st, options=PipelineOptions())
        i, e = _errors_of(r, truth, 5, corner)
        e -= np.median(e, axis=0)
        rms[fallback] = float(np.sqrt(np.mean(np.sum(e**2, axis=1))))
        assert (r.particles[i].particle in separated) == fallback, (fallback, separated)
        # the note that its own motion is reported in part only: on the shape alone, not once separated
        said = any("reported in part only" in n for n in r.particles[i].notes)
        assert said == (not fallback), r.particles[i].notes
    assert rms[True] < 0.9 * rms[False], rms


def test_own_motion_measured_again_after_the_matrix_told_apart_by_the_edge(monkeypatch):
    """A particle not separable after its shape pass has its matrix told apart by the edge; its
    own motion, less pulled again, is measured once more and, where the layers can now be told
    apart by it, the particle is separated (whole scene, learned, stress-fines seed 1: a 16-px
    particle 0.72 px after its shape, 0.84 px unmixed, separated: 0.220 -> 0.208 px). Where it
    cannot, it stays unmixed and its notes say so. The unmixing is replaced here by a stand-in
    that reveals a known motion (or none), on a particle of a reduced stress scene."""
    import copy

    import xanestrack.pipeline as pipeline

    s = make_stress_stack("stress-drift", 4, reduced=True)
    calls = []
    refine = pipeline._refine_one

    def capture(loc, m, od, footprints, options, contrast=None):
        calls.append((copy.deepcopy(loc), m, od, footprints, options, contrast))
        return refine(loc, m, od, footprints, options, contrast)

    monkeypatch.setattr(pipeline, "_refine_one", capture)
    run_pipeline(Stack(s.optical_density(), s.energies_ev), options=PipelineOptions())
    loc, m, od, footprints, options, contrast = next(c for c in calls if c[0].shape is not None)
    monkeypatch.undo()

    # every particle is taken to move on its own, below the separation at first
    monkeypatch.setattr(pipeline, "_moves_on_its_own", lambda own, motion: True)
    monkeypatch.setattr(pipeline, "_follow_by_shape", lambda loc, od, options: True)
    monkeypatch.setattr(pipeline, "_position_noise_px", lambda own: 0.01)
    n = od.shape[0]
    ramp = np.linspace(-1.0, 1.0, n)[:, None] * np.array([[1.0, 0.0]])

    def run(revealed):
        def unmix(loc, m, od, footprints, options, contrast, *, min_snr=pipeline.UNMIX_MIN_SNR):
            loc.followed = m + np.nanmedian(loc.centres - m, axis=0) + revealed * ramp
            return True

        monkeypatch.setattr(pipeline, "_unmix_one", unmix)
        here = copy.deepcopy(loc)
        # the first pass's and the shape's positions: no own motion to tell
        here.centres = here.followed = m + np.nanmedian(here.centres - m, axis=0)
        here.measured[:] = True
        return pipeline._refine_one(here, m, od, footprints, options, contrast), here

    how, here = run(revealed=0.4)  # 0.4 px either way: below MIN_OWN_MOTION
    assert how == "unmixed" and here.unmixed_motion is not None and here.matrix is None
    how, here = run(revealed=2.0)  # 1.8 px of own motion once unmixed: separable
    assert how == "matrix" and here.unmixed_motion is None and here.matrix is not None


def test_a_small_own_motion_out_of_its_noise_is_followed_by_the_shape(monkeypatch):
    """A particle moving on its own by less than ``MIN_OWN_MOTION / 2`` but well out of its
    noise is followed by its shape: it was followed with the disc, pulled by the matrix.
    Full-size stress-fines seed 1, cut to its 17-px particle (truth 7) and its surroundings,
    classical, the matrix not told apart by the edge: measured 0.23 px of own motion, RMS
    0.109 -> 0.082 px (the whole scene, learned: 0.108 -> 0.062). Left with the disc, the
    matrix told apart by its edge now reaches it all the same (its estimate stands out of its
    noise and moves the positions beyond theirs): 0.083 px."""
    import xanestrack.pipeline as pipeline

    st, truth, corner = _cut_around("stress-fines", 1, 7)
    taken = []
    moves = pipeline._moves_on_its_own

    def spy(own, motion):
        out = moves(own, motion)
        if out and motion < 0.5 * pipeline.MIN_OWN_MOTION:
            taken.append(motion)
        return out

    monkeypatch.setattr(pipeline, "_moves_on_its_own", spy)

    def rms_of_particle_7(**options):
        _, e = _errors_of(run_pipeline(st, options=PipelineOptions(**options)), truth, 7, corner)
        e -= np.mean(e, axis=0)
        return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))

    now = rms_of_particle_7(unmix_matrix=False)
    assert len(taken) == 1 and pipeline.SHAPE_MIN_PX <= taken[0], taken
    monkeypatch.setattr(pipeline, "SHAPE_MIN_PX", np.inf)
    before = rms_of_particle_7(unmix_matrix=False)
    assert now < before - 0.015, (now, before)
    assert rms_of_particle_7() < before - 0.015


def test_two_frames_across_the_edge_vouched_for_by_the_density_within_a_pixel():
    """The SSRL situation on a scene we did not draw it from: two frames, pre- and post-edge.
    The density correlation vouches for particles the centre of mass does not confirm; none
    of the particles vouched for may be off by more than a pixel in its displacement, and the
    voucher must add some (here: stress-fines seed 2, 1 -> 3; full size,
    ``benchmarks/bench_two_frames.py``, 7 cases x 2 seeds x 2 frame pairs: classical 202 -> 223
    vouched for, learned 160 -> 227, none added off by more than 1 px, worst added 0.97 px)."""
    from xanestrack.evaluate import pair_tracks

    bad = FRAME_FLAGS["disagree"] | FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"]
    added = 0
    for case, seed in (("stress-magnification", 1), ("stress-fines", 2)):
        s = make_stress_stack(case, seed, reduced=True)
        n = s.optical_density().shape[0]
        a, b = 0, n - 1
        true = true_tracks(s.truth)[:, [a, b]]
        vouched = {}
        for density in (False, True):
            r = run_pipeline(
                Stack(s.optical_density()[[a, b]], s.energies_ev[[a, b]]),
                options=PipelineOptions(density_voucher=density),
            )
            est = np.array([p.positions for p in r.particles], float).reshape(-1, 2, 2)
            errs = [
                np.hypot(*((est[i, 1] - est[i, 0]) - (true[j, 1] - true[j, 0])))
                for i, j in pair_tracks(est, true, max_distance=10)
                if ((r.particles[i].frame_flags & bad) == 0).all()
            ]
            assert all(e <= 1.0 for e in errs), (case, seed, density, np.round(errs, 2))
            vouched[density] = len(errs)
        added += vouched[True] - vouched[False]
    assert added > 0


def test_a_particle_not_separated_from_the_matrix_says_its_own_motion_is_reported_in_part(monkeypatch):
    """The matrix pulls a particle that is not separated from it towards the common motion
    (``bench_stress_limits.py``: 0.33-0.94 of its own motion reported on stress-counts and
    stress-crowd seed 1): its result says so; a separated particle's does not."""
    import xanestrack.pipeline as pipeline

    s = make_stress_stack("stress-jitter", 2, reduced=True, drift_step_sd=0.25)
    st = Stack(s.optical_density(), s.energies_ev)
    r = run_pipeline(st, options=PipelineOptions())
    noted = ["reported in part only" in " ".join(p.notes) for p in r.particles]
    run_note = [n for n in r.notes if "matrix behind them subtracted" in n]
    assert run_note, r.notes
    n_separated = int(run_note[0].split()[0])
    assert 0 < n_separated < len(r.particles)
    # a particle unmixed from the matrix by its edge is not pulled so: its notes say how it was followed
    unmixed = ["told apart from it by its absorption edge" in " ".join(p.notes) for p in r.particles]
    assert not any(a and b for a, b in zip(noted, unmixed))
    assert sum(noted) == len(r.particles) - n_separated - sum(unmixed), [p.notes for p in r.particles]
    monkeypatch.setattr(pipeline, "MIN_OWN_MOTION", 100.0)
    monkeypatch.setattr(pipeline, "SEPARATE_PX", 200.0)
    r = run_pipeline(st, options=PipelineOptions())
    # none separated now: each says its own motion is reported in part, or how its matrix was told apart
    said = [
        "reported in part only" in " ".join(p.notes) or "told apart from it by its absorption edge" in " ".join(p.notes)
        for p in r.particles
    ]
    assert all(said), [p.notes for p in r.particles]
    assert any("reported in part only" in " ".join(p.notes) for p in r.particles)


def test_the_matrix_separated_from_behind_a_drifting_particle_is_kept_out_of_its_chemistry():
    """A particle drifting on its own slides over the matrix texture, which then moves through its
    pixels and enters their spectra; the matrix separated from behind it is subtracted before
    the XANES analysis (``subtract_matrix``). Reduced stress-drift, seed 4, learned path: the
    separated particles' E50 maps come out closer to the truth with it, the positions and the
    aligned stack as measured are untouched, and the particles not separated are unchanged."""
    from dataclasses import replace

    from xanestrack.evaluate import edge_map_error, pair_tracks
    from xanestrack.models import pipeline_models

    s = make_stress_stack("stress-drift", 4, reduced=True, counts=2e4)
    st = Stack(s.optical_density(), s.energies_ev)
    opts = PipelineOptions()
    det, seg = pipeline_models("learned", "learned", options=opts)
    on = run_pipeline(st, options=opts, detector=det, segmenter=seg)
    off = run_pipeline(st, options=replace(opts, subtract_matrix=False), detector=det, segmenter=seg)
    truth = true_tracks(s.truth)
    rms = {}
    for p_on, p_off in zip(on.particles, off.particles):
        np.testing.assert_array_equal(p_on.positions, p_off.positions)
        np.testing.assert_array_equal(p_on.aligned, p_off.aligned)
        separated = any("matrix texture separated" in n for n in p_on.notes)
        if not separated:
            np.testing.assert_array_equal(p_on.edge_maps["e50"], p_off.edge_maps["e50"])
            continue
        paired = pair_tracks(p_on.positions[None], truth, max_distance=10)
        if not paired or not np.isfinite(p_on.edge_maps["e50"]).any():
            continue
        j = paired[0][1]
        errs = [
            edge_map_error(p.edge_maps["e50"], p.origin, s.truth.edge_maps[j], s.truth.edge_map_origins[j])
            for p in (p_on, p_off)
        ]
        assert errs[0]["coverage"] >= errs[1]["coverage"] - 0.02, errs
        rms[p_on.particle] = (errs[0]["rms_ev"], errs[1]["rms_ev"])
    assert len(rms) >= 2, rms
    with_, without = np.array(list(rms.values())).T
    assert np.median(with_) < 0.92 * np.median(without), rms
    assert (with_ <= without + 0.02).all(), rms


def test_a_separation_that_moves_the_positions_far_beyond_their_noise_is_undone(monkeypatch):
    """A separation from the matrix removes a pull that grows as the particle's contrast falls, as
    its positions' noise does; one that moves the positions by more than
    ``SEPARATION_MAX_CHANGE_Z`` times that noise went wrong (stress-all seed 8, learned: a touching
    32-px particle moved 2.2 px RMS, 13 times its noise, 16 frames off by more than 1 px vouched
    for) and is undone: the first pass's positions are kept and the notes say so. The separation
    is replaced here by a stand-in that moves every particle by a ramp of a known size in units of
    its noise, on a reduced stress scene."""
    import xanestrack.pipeline as pipeline

    s = make_stress_stack("stress-drift", 4, reduced=True)
    st = Stack(s.optical_density(), s.energies_ev)

    def run(z):
        def stand_in(loc, m, od, footprints, options, contrast=None):
            if z is None:
                return None
            ok = loc.measured & np.isfinite(loc.followed).all(axis=1)
            noise = pipeline._position_noise_px((loc.followed - m)[ok])
            ramp = np.linspace(-1.0, 1.0, len(loc.followed))
            # the ramp's RMS about its median is 1/sqrt(3) of its amplitude
            loc.followed = loc.followed + (z * noise * np.sqrt(3.0)) * np.c_[ramp, 0 * ramp]
            return "matrix"

        monkeypatch.setattr(pipeline, "_refine_one", stand_in)
        return run_pipeline(st, options=PipelineOptions())

    undone = "separation from the matrix behind it was undone"
    untouched = run(None)
    kept, far = run(3.0), run(3 * pipeline.SEPARATION_MAX_CHANGE_Z)
    assert len(untouched.particles) == len(kept.particles) == len(far.particles) >= 2
    for p0, p1, p2 in zip(untouched.particles, kept.particles, far.particles):
        assert not any(undone in n for n in p1.notes)
        assert np.nanmax(np.abs(p1.positions - p0.positions)) > 0.05  # kept: the stand-in's ramp moved it
        assert any(undone in n for n in p2.notes), p2.notes
        np.testing.assert_array_equal(p2.positions, p0.positions)  # undone: the first pass's positions
