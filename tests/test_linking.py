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
