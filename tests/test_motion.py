import numpy as np
import pandas as pd
import pytest

from xanestrack.motion import compute_motion, peak_ratios


def _tracks(rigid, own):
    rows = []
    for p in range(own.shape[1]):
        for k in range(own.shape[0]):
            y, x = np.array([50.0 * p, 20.0]) + rigid[k] + own[k, p]
            rows.append((p, k, y, x))
    return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])


def test_rigid_and_nonrigid_split_known_answer():
    n = 30
    k = np.arange(n)
    rigid = np.c_[0.5 * k, -0.2 * k]
    own = np.zeros((n, 3, 2))
    own[:, 1, 0] = 0.1 * k**1.5  # particle 1 deforms vertically
    m = compute_motion(_tracks(rigid, own))
    g0 = m[m.particle == 0].sort_values("frame")
    # the common motion is a robust (least absolute deviation) similarity fit: the
    # deforming particle leaks into it by less than 0.01 px
    assert np.allclose(g0[["rigid_dy", "rigid_dx"]], rigid, atol=0.01)
    g1 = m[m.particle == 1].sort_values("frame")
    assert np.allclose(g1["nonrigid_dy"], own[:, 1, 0], atol=0.01)
    assert np.allclose(g1["vy"].iloc[1:-1], 0.5 + 0.15 * k[1:-1] ** 0.5, atol=0.05)
    assert m.attrs["reference_particle"] in (0, 2)
    assert np.allclose(g1["rel_dy"], own[:, 1, 0], atol=1e-9)  # relative motion is exact
    r = peak_ratios(m).set_index("particle")
    assert r.loc[1, "ratio_v"] > 0.5 and r.loc[0, "ratio_v"] < 0.05


def test_unknown_reference_particle_is_refused():
    t = _tracks(np.zeros((5, 2)), np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="`reference_particle` 7"):
        compute_motion(t, reference_particle=7)


def _scene(n=40, m=10, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.uniform(20, 440, (m, 2))
    centre = np.array([229.5, 229.5])
    scale = 1 + np.linspace(0, 0.01, n)  # 1 % magnification across the scan
    jitter = np.cumsum(rng.normal(0, 1.5, (n, 2)), axis=0)
    P = centre + jitter[:, None] + scale[:, None, None] * (src[None] - centre)
    return P, centre, scale


def _table(P):
    n, m = P.shape[:2]
    return pd.DataFrame(
        [(j, k, P[k, j, 0], P[k, j, 1]) for k in range(n) for j in range(m)], columns=["particle", "frame", "y", "x"]
    )


def test_pure_magnification_is_not_nonrigid():
    P, centre, scale = _scene()
    m = compute_motion(_table(P), centre=centre)
    assert np.abs(m[["nonrigid_dy", "nonrigid_dx"]].to_numpy()).max() < 1e-6
    sim = m.attrs["similarity"]
    assert np.allclose(sim["scale"], scale, atol=1e-9)
    # the old translation-only split called up to 2 px of this motion non-rigid
    d = P - P[0]
    assert np.abs(d - np.median(d, axis=1, keepdims=True)).max() > 1.0


def test_one_drifting_particle_does_not_pull_the_common_similarity():
    P, centre, scale = _scene(seed=1)
    P[:, 3] += np.linspace(0, 12, P.shape[0])[:, None]
    m = compute_motion(_table(P), centre=centre)
    nr = m.groupby("particle")[["nonrigid_dy", "nonrigid_dx"]].apply(lambda g: np.abs(g.to_numpy()).max())
    assert nr.drop(3).max() < 0.01
    assert abs(nr[3] - 12) < 0.01
    assert np.allclose(m.attrs["similarity"]["scale"], scale, atol=1e-4)


def test_similarity_recovers_a_rotation_when_asked():
    from xanestrack.motion import fit_similarity

    rng = np.random.default_rng(2)
    src = rng.uniform(0, 400, (8, 2))
    th = 0.01
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    c = np.array([200.0, 200.0])
    dst = c + np.array([3.0, -2.0]) + 1.005 * (src - c) @ R.T
    t, s, theta = fit_similarity(src, dst, rotation=True, centre=c)
    assert np.allclose(t, [3, -2]) and abs(s - 1.005) < 1e-9 and abs(theta - th) < 1e-9


def test_scale_linear_in_energy_is_not_fooled_by_a_few_drifting_particles():
    rng = np.random.default_rng(3)
    n, m = 80, 8
    energies = np.linspace(8200, 8680, n)
    centre = np.array([229.5, 229.5])
    src = rng.uniform(20, 440, (m, 2))
    scale = 1 + 0.005 * (energies - energies[0]) / (energies[-1] - energies[0])
    own = np.cumsum(rng.normal(0, 0.6, (n, m, 2)), axis=0)
    own -= own[0]
    own[:, 2:] = rng.normal(0, 0.05, (n, m - 2, 2))  # two particles drift on their own, the rest hold still
    P = centre + scale[:, None, None] * (src[None] - centre) + own
    tr = _table(P)
    per_frame = compute_motion(tr, centre=centre).attrs["similarity"]["scale"].to_numpy()
    linear = compute_motion(tr, centre=centre, scale_axis=energies).attrs["similarity"]["scale"].to_numpy()
    err_frame = np.abs(per_frame - scale).max()
    err_linear = np.abs(linear - scale).max()
    assert err_linear < 0.5 * err_frame
    assert err_linear < 2e-3


@pytest.mark.parametrize(
    "mag, movers",
    [
        (0.01, {5: (-0.8, 0.0)}),
        (0.01, {0: (1.6, 1.5)}),
        (-0.008, {0: (1.6, 1.5)}),
        (-0.008, {0: (1.5, -1.6), 5: (-0.8, 0.0)}),
    ],
)
def test_a_magnification_is_kept_when_a_particle_or_two_move_on_their_own(mag, movers):
    # The rigid scene (6 particles, 256 px, 40 energies) magnified linearly in the energy, one or two
    # particles drifting on their own: the magnification was dropped (its test took each frame's median
    # translation, pulled by the movers and the magnification, and left the movers in by a spread they
    # inflated): the static particles reported up to 1.1 px of own motion, nothing said (on the pipeline's
    # own runs of that scene: one mover of 0.8 px at +1 %, two at -0.8 %; here the mover of 2.2 px, 9 of 32
    # such cases of noise, seed and magnification before)
    rng = np.random.default_rng(5)
    n = 40
    energies = np.linspace(8200, 8680, n)
    centre = np.array([127.5, 127.5])
    src = np.array([[65.3, 80.2], [67.5, 223.6], [112.6, 157.0], [159.0, 214.9], [192.0, 80.6], [201.4, 164.0]])
    scale = 1 + mag * (energies - energies[0]) / (energies[-1] - energies[0])
    drift = np.c_[np.linspace(0, -8, n), np.linspace(0, 2, n)]
    own = np.zeros((n, 6, 2))
    for j, d in movers.items():
        own[:, j] = np.linspace(0, 1, n)[:, None] * np.array(d)
    P = centre + drift[:, None] + scale[:, None, None] * (src[None] - centre) + own + rng.normal(0, 0.02, (n, 6, 2))
    motion = compute_motion(_table(P), centre=centre, scale_axis=energies)
    sim = motion.attrs["similarity"]
    assert np.abs(sim["scale"].to_numpy() - scale).max() < 1e-3
    nr = np.hypot(motion["nonrigid_dy"], motion["nonrigid_dx"]).to_numpy().reshape(6, n)
    static = [j for j in range(6) if j not in movers]
    assert nr[static].max() < 0.15, nr[static].max(axis=1)
    for j, d in movers.items():
        assert abs(nr[j, -1] - np.hypot(*d)) < 0.15


def test_particles_drifting_on_their_own_fake_no_magnification():
    rng = np.random.default_rng(4)
    n, m = 100, 9
    energies = np.linspace(8200, 8680, n)
    centre = np.array([229.5, 229.5])
    src = rng.uniform(20, 440, (m, 2))
    own = np.cumsum(rng.normal(0, 0.3, (n, m, 2)), axis=0)  # every particle drifts, no magnification
    own -= own[0]
    P = src[None] + own + np.cumsum(rng.normal(0, 1.0, (n, 1, 2)), axis=0)
    sim = compute_motion(_table(P), centre=centre, scale_axis=energies).attrs["similarity"]
    assert np.all(sim["scale"] == 1.0)
    # the per-frame fit does absorb part of the drift as a scale: the energy model's test is what stops it
    per_frame = compute_motion(_table(P), centre=centre).attrs["similarity"]["scale"]
    assert np.abs(per_frame - 1).max() > 1e-3


def test_a_particle_entering_late_is_not_given_its_filled_in_first_position_as_reference():
    # the field drifts by 1.5 px per frame; particle 3 enters at frame 20: its positions before are
    # filled in (held at its first measured one, not measured). Its own motion is 0: it must come
    # out 0 where it is measured, and the summary must not count the filled-in frames
    n = 40
    k = np.arange(n)
    rigid = np.c_[1.5 * k, -1.0 * k]
    own = np.zeros((n, 4, 2))
    t = _tracks(rigid, own)
    t["reliable"] = True
    late = (t.particle == 3) & (t.frame < 20)
    first = t[(t.particle == 3) & (t.frame == 20)][["y", "x"]].to_numpy()[0]
    t.loc[late, ["y", "x"]] = first
    t.loc[late, "reliable"] = False
    t["measured"] = t["reliable"]
    m = compute_motion(t)
    g3 = m[(m.particle == 3) & (m.frame >= 20)]
    assert np.abs(g3[["nonrigid_dy", "nonrigid_dx"]].to_numpy()).max() < 0.01
    assert np.allclose(m[m.particle == 0][["rigid_dy", "rigid_dx"]], rigid, atol=0.01)
    pr = peak_ratios(m, reliable=t[["particle", "frame", "reliable"]]).set_index("particle")
    assert pr.loc[3, "max_nonrigid_displacement"] < 0.01
    assert peak_ratios(m).set_index("particle").loc[3, "max_nonrigid_displacement"] > 10  # the filled-in frames


def test_a_turning_field_or_a_magnification_step_is_told_from_own_motions():
    # a field turning by up to 1 degree, fitted without rotation: every particle's "own" motion is the turn
    from xanestrack.motion import compute_motion, field_rotation
    from xanestrack.motion_notes import _field_motion_notes
    from xanestrack.pipeline import PipelineOptions

    rng = np.random.default_rng(5)
    # the particles in one part of the field: the turn is about the image's centre, far from their centroid
    # (lever arms from the image's centre explained 77 % of a turn the similarity's translation took in part)
    base = np.c_[rng.uniform(200, 420, 9), rng.uniform(150, 420, 9)]
    c = np.array([229.5, 229.5])
    n = 40
    energies = np.linspace(8300, 8400, n)
    opts = PipelineOptions()

    def tracks_of(turn_deg, scale):
        rows = []
        for k in range(n):
            th = np.radians(turn_deg) * k / (n - 1)
            rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])  # (y, x) turned about c
            p = scale[k] * (base - c) @ rot.T + c + [0.3 * k, -0.2 * k]
            rows += [(j, k, *p[j]) for j in range(9)]
        return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])

    turned = tracks_of(1.0, np.ones(n))
    m = compute_motion(turned, centre=c, scale_axis=energies)
    theta, share = field_rotation(m)
    assert share > 0.9 and abs(abs(np.degrees(theta[-1])) - 1.0) < 0.1
    (note,) = _field_motion_notes(m, energies, opts)
    assert "a turn of the whole field" in note and "--rotation" in note
    m_rot = compute_motion(turned, centre=c, rotation=True, scale_axis=energies)
    assert _field_motion_notes(m_rot, energies, PipelineOptions(rotation=True)) == []
    # a magnification step of 1 % at mid-scan (optics refocused), the scale fitted as a line in the energy
    stepped = tracks_of(0.0, np.where(np.arange(n) < n // 2, 1.0, 1.01))
    m = compute_motion(stepped, centre=c, scale_axis=energies)
    (note,) = _field_motion_notes(m, energies, opts)
    assert "magnification off one straight line" in note and "--scale-model frame" in note
    m = compute_motion(stepped, centre=c)  # one scale per frame: nothing left over
    assert _field_motion_notes(m, energies, PipelineOptions(scale_model="frame")) == []
    # own motions in random directions: neither
    drift = np.cumsum(rng.normal(0, 0.3, (n, 9, 2)), axis=0)
    own = turned.copy()
    own[["y", "x"]] = np.repeat(base[None], n, axis=0).reshape(-1, 2) + drift.reshape(-1, 2)
    m2 = compute_motion(own, centre=c, scale_axis=energies)
    assert field_rotation(m2)[1] < 0.5 and _field_motion_notes(m2, energies, opts) == []


def test_the_shared_translation_does_not_jump_where_no_particle_does():
    # Four particles drifting on their own, no magnification (the scale line dropped): each frame's translation
    # was refitted with the weights of the frame's free-scale fit, made for other residuals: it jumped by up to
    # 3.9 px more than any particle moved between two frames (median over 20 scenes 1.0 px; the probe's scene:
    # 0.87 px where the four moved by less than 0.2). The weights are now found again for the fixed scale.
    excess = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n, m = 40, 4
        src = rng.uniform(40, 215, (m, 2))
        own = np.cumsum(rng.normal(0, 0.4, (n, m, 2)), axis=0)
        own -= own[0]
        P = src[None] + own + np.linspace(0, 1, n)[:, None, None] * np.array([6.0, -10.0])
        sim = compute_motion(_table(P), centre=(127.5, 127.5), scale_axis=np.linspace(8200, 8680, n)).attrs[
            "similarity"
        ]
        t = sim[["common_dy", "common_dx"]].to_numpy()
        excess.append((np.abs(np.diff(t, axis=0)) - np.abs(np.diff(P, axis=0)).max(axis=1)).max())
    assert np.median(excess) < 0.6 and np.max(excess) < 2.0, np.round(excess, 2)


def test_a_uniform_strain_or_shear_of_the_field_is_told_from_own_motions():
    """A stretch along one axis or a shear is no similarity: every particle's own motion is one pattern across the
    field. A note says so (with the strain), and own motions in random directions give none."""
    from xanestrack.motion import compute_motion, field_strain
    from xanestrack.motion_notes import _field_motion_notes
    from xanestrack.pipeline import PipelineOptions

    rng = np.random.default_rng(8)
    base = rng.uniform(40, 420, (9, 2))
    c = np.array([229.5, 229.5])
    n = 40
    energies = np.linspace(8300, 8400, n)

    def tracks_of(grad):
        rows = []
        for k in range(n):
            a = np.eye(2) + np.asarray(grad) * k / (n - 1)
            p = (base - c) @ a.T + c + [0.3 * k, -0.2 * k]
            rows += [(j, k, *p[j]) for j in range(9)]
        return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])

    for grad, words in (([[0, 0], [0, 0.01]], "+1.00 % along x"), ([[0, 0.01], [0, 0]], "+0.50 % shear")):
        m = compute_motion(tracks_of(grad), centre=c, scale_axis=energies)
        A, share = field_strain(m)
        assert share > 0.95
        (note,) = _field_motion_notes(m, energies, PipelineOptions())
        assert "uniform deformation of the whole field" in note and words in note
    drift = np.cumsum(rng.normal(0, 0.3, (n, 9, 2)), axis=0)
    own = tracks_of(np.zeros((2, 2)))
    own[["y", "x"]] = np.repeat(base[None], n, axis=0).reshape(-1, 2) + drift.reshape(-1, 2)
    m = compute_motion(own, centre=c, scale_axis=energies)
    assert field_strain(m)[1] < 0.6 and _field_motion_notes(m, energies, PipelineOptions()) == []


def test_one_particle_drifting_on_its_own_is_no_strain_of_the_field():
    """With 6-7 particles, one drifting 3 px on its own far from the others' centroid was explained by a displacement
    gradient (share >= 0.8 in 30 % of random layouts of 6): the share is the least with each particle left out."""
    from xanestrack.motion import compute_motion, field_strain

    rng = np.random.default_rng(3)
    n = 40
    hits = 0
    for _ in range(20):
        base = rng.uniform(40, 420, (6, 2))
        far = int(np.argmax(np.hypot(*(base - base.mean(axis=0)).T)))
        rows = []
        for k in range(n):
            p = base + rng.normal(0, 0.05, base.shape)
            p[far] += 3.0 * k / (n - 1)
            rows += [(j, k, *p[j]) for j in range(6)]
        m = compute_motion(pd.DataFrame(rows, columns=["particle", "frame", "y", "x"]), centre=(229.5, 229.5))
        hits += field_strain(m)[1] >= 0.8
    assert hits == 0


def test_a_scale_change_beyond_the_optics_is_named_as_possibly_swelling():
    # stress-all: particles drifting outward on their own and 1 % magnified were fitted 4.3 % magnification,
    # one particle fixed in the truth then "moved" 8 px on its own; the two cannot be told apart, but a scale
    # change beyond what a zone plate gives across a XANES scan is said
    from xanestrack.motion_notes import _large_scale_note

    rng = np.random.default_rng(2)
    n, m = 60, 8
    centre = np.array([229.5, 229.5])
    base = rng.uniform(40, 420, (m, 2))
    for grow, fires in ((0.03, True), (0.008, False), (0.0, False)):
        s = 1 + grow * np.linspace(0, 1, n)
        P = (s[:, None, None] * (base - centre)[None] + centre) + np.c_[np.linspace(0, 4, n), np.zeros(n)][:, None]
        sim = compute_motion(_table(P), centre=centre).attrs["similarity"]
        note = _large_scale_note(sim)
        assert bool(note) is fires, (grow, note)
        if fires:
            assert "3.0 %" in note and "swelling" in note


def test_two_particles_share_their_mean_motion_in_every_frame():
    """Reweighted, one of two particles always lost: the shared motion followed one or the other from frame to
    frame, the other taking the whole relative motion (own motions summing to 1.58 px, not 0)."""
    n = 40
    k = np.arange(n)
    rng = np.random.default_rng(5)
    rigid = np.c_[0.3 * k, -0.25 * k] + rng.normal(0, 0.5, (n, 2))
    own = np.zeros((n, 2, 2))
    own[:, 1] = np.c_[0.04 * k, -0.02 * k] + rng.normal(0, 0.01, (n, 2))  # particle 1 drifts off particle 0
    m = compute_motion(_tracks(rigid, own))
    a, b = (m[m.particle == p].sort_values("frame") for p in (0, 1))
    mean = (a[["dy", "dx"]].to_numpy() + b[["dy", "dx"]].to_numpy()) / 2
    assert np.allclose(a[["rigid_dy", "rigid_dx"]].to_numpy(), mean, atol=1e-9)
    own_sum = a[["nonrigid_dy", "nonrigid_dx"]].to_numpy() + b[["nonrigid_dy", "nonrigid_dx"]].to_numpy()
    assert np.abs(own_sum).max() < 1e-9
