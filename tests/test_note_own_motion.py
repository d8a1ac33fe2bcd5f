"""A particle's notes on its own motion against the matrix quote the own motion the run reports.

The notes of a particle not separated from the matrix behind it, or told apart from it by its
edge, gave the own motion measured against the matrix's motion (before the matrix was
subtracted) as its own motion, which tracks.csv does not report: a window wrinkle taken for the
matrix, a truly still particle "moving on its own by 1.00 px" (tracks.csv: 0.22 px); under a
bubble "own motion measured 1.17 px" (tracks.csv: 0.15). They now name that number as measured
against the matrix and give the reported one (``max_nonrigid_displacement``, motion_summary.csv)
beside it. On the reduced stress-fines scene, seed 5 (classical path), before: particle 0
"moving on its own by 0.62 px", reported 1.64 px; particles 1-3 0.19 / 0.21 / 0.14 px quoted,
0.21 / 0.32 / 0.29 reported.
"""

import re

import numpy as np
import pytest

from xanestrack.pipeline import PipelineOptions, _quote_reported_own_motion, run_pipeline
from xanestrack.stack import Stack

#: how each note on the own motion against the matrix begins
STARTS = ("not separated from the matrix behind it", "moving with the matrix behind it", "moving on its own by")
REPORTED = re.compile(
    r"its own motion as reported in tracks\.csv, against the motion the particles share: up to ([\d.]+) px"
)


def _run(stack):
    return run_pipeline(Stack(stack.optical_density(), stack.energies_ev), options=PipelineOptions())


@pytest.fixture(scope="module")
def fines():
    from xanestrack.synth_stress import make_stress_stack

    return _run(make_stress_stack("stress-fines", 5, reduced=True))


def test_own_motion_notes_quote_the_reported_own_motion(fines):
    reported = dict(zip(fines.peak_ratios["particle"], fines.peak_ratios["max_nonrigid_displacement"]))
    seen = []
    for p in fines.particles:
        for n in p.notes:
            if not n.startswith(STARTS):
                continue
            seen.append(n[:30])
            assert "against the matrix" in n, n  # the number measured against the matrix named as such
            m = REPORTED.search(n)
            assert m, n
            assert abs(float(m.group(1)) - reported[p.particle]) <= 0.05, (n, reported[p.particle])
            # tracks.csv's own motion is the same
            g = fines.tracks[fines.tracks["particle"] == p.particle]
            assert abs(np.nanmax(np.hypot(g["nonrigid_dy"], g["nonrigid_dx"])) - reported[p.particle]) <= 0.05
    # the three kinds of note fire on this scene (measured: one each of the edge's, two not separated)
    assert {s[:20] for s in seen} == {s[:20] for s in STARTS}, seen


def test_a_scene_without_the_notes_unchanged():
    """Control: the default scene (seed 1, reduced): no note on the own motion against the matrix, every
    particle's notes left as they were."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(200, 200), n_particles=4, radius_range=(10.0, 22.0)
    )
    r = _run(s)
    assert r.particles
    assert not any(n.startswith(STARTS) or "as reported in tracks.csv" in n for p in r.particles for n in p.notes)
    again = _quote_reported_own_motion(r.particles, r.peak_ratios)
    assert all(a is b for a, b in zip(again, r.particles))
