"""The one linker of particles (xanestrack.linking): the common displacement vote."""

import numpy as np
import pandas as pd

from conftest import undocumented_fields
from xanestrack.linking import LinkOptions, vote_displacement


def test_vote_finds_the_common_displacement_despite_a_drifting_particle():
    rng = np.random.default_rng(3)
    prev = rng.uniform(0, 300, (8, 2))
    cur = prev + [12.0, -7.0] + rng.normal(0, 0.2, prev.shape)
    cur[2] += [9.0, 4.0]  # one particle moved on its own
    d, n = vote_displacement(prev, cur, max_jump=40.0, tol=3.0)
    assert np.allclose(d, [12.0, -7.0], atol=0.3) and n == 7


def test_vote_falls_back_on_the_prior_without_agreement():
    d, n = vote_displacement(
        np.array([[10.0, 10.0]]), np.array([[30.0, 12.0]]), max_jump=40.0, tol=3.0, prior=np.array([1.0, 1.0])
    )
    assert np.allclose(d, [1.0, 1.0]) and n == 1  # a lone pairing the prior does not support
    d, n = vote_displacement(np.zeros((0, 2)), np.zeros((0, 2)), max_jump=40.0, tol=3.0)
    assert np.allclose(d, 0) and n == 0


def test_every_option_is_documented():
    assert undocumented_fields(LinkOptions) == []


def test_a_prior_that_the_particles_in_view_do_not_confirm_links_nothing():
    # two unrelated fields of few particles: the image correlation put the largest particle of one on the other's
    # and that one pair of similar size agreed, while the others, in view, did not: one id for two particles
    # (7 of 7 such pairs of synthetic scans), nothing said
    from xanestrack.linking import decide_displacement

    prev = np.array([[60.0, 60.0], [60.0, 180.0], [180.0, 60.0], [180.0, 180.0]])
    cur = np.array([[70.0, 75.0], [120.0, 140.0], [200.0, 100.0], [30.0, 220.0]])
    r = np.array([38.0, 9.0, 19.0, 28.0])
    prior = cur[0] - prev[0]  # (10, 15): prev 0 onto cur 0, nothing else
    kw = dict(prior=prior, prev_radius=r, cur_radius=r[[0, 2, 3, 1]], prior_tolerance=10.0)
    d, n, how = decide_displacement(prev, cur, 150.0, 4.0, **kw)
    assert how == "prior" and n == 1  # without the frame: taken
    d, n, how = decide_displacement(prev, cur, 150.0, 4.0, field=(256, 256), **kw)
    assert d is None and how == "prior unconfirmed"
    # the same field moved by (10, 15): every particle in view agrees
    d, n, how = decide_displacement(prev, prev + prior, 150.0, 4.0, field=(256, 256), **{**kw, "cur_radius": r})
    assert how == "vote+prior" and n == 4 and np.allclose(d, prior)
    # one particle in view of the other scan (the rest moved out): the one-common-particle case still links
    far = prev + np.array([0.0, 190.0])
    kw1 = {**kw, "prior": [0.0, 190.0], "cur_radius": r[:1]}
    d, n, how = decide_displacement(prev, far[:1], 250.0, 4.0, field=(256, 256), **kw1)
    assert how == "prior" and n == 1


def _support_brute(prev, cur, cand, tol, compatible):
    moved = prev[None, :, :] + cand[:, None, :]
    dist = np.hypot(moved[:, :, None, 0] - cur[None, None, :, 0], moved[:, :, None, 1] - cur[None, None, :, 1])
    return (np.where(compatible[None], dist, np.inf).min(axis=2) <= tol).sum(axis=1)


def test_the_vote_counts_support_as_every_distance_would_without_holding_them_all():
    """The vote's support was counted over every candidate x point x point distance at once: 150 particles in a
    frame took 2.4 GB, 300 fines 6.2 GB. Counted through a k-d tree: the same counts, in a few MB."""
    import tracemalloc

    from xanestrack.linking import _vote_support

    rng = np.random.default_rng(3)
    for t in range(60):
        n, m = rng.integers(1, 30, 2)
        prev = rng.uniform(0, 200, (n, 2))
        cur = np.r_[prev[:m] + rng.normal(0, 0.5, (min(m, n), 2)) + 7, rng.uniform(0, 200, (max(0, m - n), 2))]
        if t % 2:  # integer positions: distances exactly at the tolerance
            prev, cur = np.round(prev), np.round(cur)
        pr, cr = rng.uniform(5, 30, len(prev)), rng.uniform(5, 30, len(cur))
        cand, support, compatible = _vote_support(prev, cur, 40, 1.0 + t % 3, pr, cr, 1.6)
        np.testing.assert_array_equal(support, _support_brute(prev, cur, cand, 1.0 + t % 3, compatible))
    prev = rng.uniform(0, 600, (200, 2))
    cur = prev + 3 + rng.normal(0, 0.3, (200, 2))
    tracemalloc.start()
    cand, support, _ = _vote_support(prev, cur, 60, 2.0, None, None, 1.6)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(cand) > 500 and support.max() == 200
    assert peak < 50 * 2**20, peak / 2**20  # the distances at once: 2.2 GB here


def _lattice_step():
    """Two times of a 2 x 2 lattice of particles 115 px apart whose faint pair (found at the first time a few px
    off) agrees with no step: two particles agree on no motion, the same two on one spacing up (the chemistry
    probe's scene: a track followed its neighbour 115 px away through the rest of the scan, E50 5.2 eV low, the
    note blaming the energy axis)."""
    a, b = np.array([185.0, 70.0]), np.array([185.0, 185.0])
    up = np.array([-115.0, 0.0])
    c1, d1 = a + up + [0.3, -0.4], b + up + [-0.5, 0.2]  # the faint pair at the second time
    c0, d0 = c1 + [4.5, 0.0], d1 + [0.0, 5.0]  # ... and at the first, off by more than the tolerance
    t0 = pd.DataFrame({"y": [a[0], b[0], c0[0], d0[0]], "x": [a[1], b[1], c0[1], d0[1]], "radius": 26.0})
    t1 = pd.DataFrame({"y": [c1[0], d1[0], a[0] + 1, b[0] - 1], "x": [c1[1], d1[1], a[1], b[1]], "radius": 26.0})
    return [t0, t1]


def test_a_tie_between_no_motion_and_one_lattice_spacing_is_not_won_by_the_spacing():
    prev = _lattice_step()[0][["y", "x"]].to_numpy()
    cur = _lattice_step()[1][["y", "x"]].to_numpy()
    d, n = vote_displacement(prev, cur, max_jump=150.0, tol=3.0)
    assert n == 2 and np.hypot(*d) < 2, d  # the shortest of the tied steps
    # with a prior: the prior's (a true jump of one spacing is the images' to tell)
    d, n = vote_displacement(prev, cur, max_jump=150.0, tol=3.0, prior=np.array([-114.0, 0.0]))
    assert np.allclose(d, [-115, 0], atol=1.5), d


def test_the_linker_asks_the_images_where_the_particles_tie():
    from xanestrack.linking import link

    opts = LinkOptions(max_jump=150.0, vote_tolerance=3.0, vote_fraction=0.0)
    asked = []

    def prior(ta, tb):
        asked.append((ta, tb))
        return np.array([0.5, 0.0])

    ids, common, tracks = link(_lattice_step(), options=opts, prior=prior)
    assert asked == [(0, 1)]
    assert np.hypot(*common[1]) < 2, common
    # the bright pair keeps its ids (each linked to itself, not to the neighbour a spacing up)
    assert list(ids[1][2:]) == [0, 1], ids
    # a clear vote (every particle agrees) does not ask
    asked.clear()
    t0 = _lattice_step()[0]
    link([t0, t0.assign(y=t0.y + 1.0)], options=opts, prior=prior)
    assert asked == []
