"""The one linker of particles (xanestrack.linking): the common displacement vote."""

import numpy as np

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
