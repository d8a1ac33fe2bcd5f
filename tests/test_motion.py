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
    assert np.allclose(g0[["rigid_dy", "rigid_dx"]], rigid, atol=1e-9)
    g1 = m[m.particle == 1].sort_values("frame")
    assert np.allclose(g1["nonrigid_dy"], own[:, 1, 0], atol=1e-9)
    assert np.allclose(g1["vy"].iloc[1:-1], 0.5 + 0.15 * k[1:-1] ** 0.5, atol=0.05)
    assert m.attrs["reference_particle"] in (0, 2)
    assert np.allclose(g1["rel_dy"], own[:, 1, 0], atol=1e-9)
    r = peak_ratios(m).set_index("particle")
    assert r.loc[1, "ratio_v"] > 0.5 and r.loc[0, "ratio_v"] < 1e-6


def test_unknown_reference_particle_is_refused():
    t = _tracks(np.zeros((5, 2)), np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="reference_particle 7"):
        compute_motion(t, reference_particle=7)
