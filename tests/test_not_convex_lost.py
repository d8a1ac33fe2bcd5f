"""An object of a particle's size left out as not convex in most frames is said to be a particle lost.

Probe r52 "shapes", F5: a crescent (a disc of radius 30 px less an offset disc; solidity about 0.6, equivalent radius
about 21 px) was left out as ``not_convex`` in every frame examined by both detectors, named only in rejected.csv.
Here: a crescent beside two round particles; the control, a disc of the crescent's area in its place.
"""

import re

import numpy as np
import pytest
from scipy import ndimage

from xanestrack.pipeline import run_pipeline
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import ni_energy_grid

N_ENERGIES, SIZE = 30, 200
CRESCENT = (70.0, 70.0)


def _scene(crescent: bool, seed: int = 1):
    rng = np.random.default_rng(seed)
    energies = ni_energy_grid(N_ENERGIES)
    refs = ni_references()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    drift = np.cumsum(rng.normal(0, 0.3, (N_ENERGIES, 2)), axis=0)
    od = np.zeros((N_ENERGIES, SIZE, SIZE), np.float32)
    for k in range(N_ENERGIES):
        g = drift[k]
        c = np.array(CRESCENT) + g
        if crescent:
            body = (np.hypot(yy - c[0], xx - c[1]) <= 30) & (np.hypot(yy - c[0] + 14, xx - c[1] - 14) > 24)
        else:
            body = np.hypot(yy - c[0], xx - c[1]) <= 21
        depth = ndimage.distance_transform_edt(body)
        thick = [np.sqrt(np.clip(depth / 6.0, 0, 1))]
        for cy, cx, r in ((150.0, 60.0, 18.0), (120.0, 150.0, 22.0)):
            thick.append(np.sqrt(np.clip(1 - ((yy - cy - g[0]) ** 2 + (xx - cx - g[1]) ** 2) / r**2, 0, None)))
        mu = 0.25 * (energies[k] / 8333.0) ** -3 + 0.5 * refs["NiO"](energies[k]) + 0.5 * refs["LiNiO2"](energies[k])
        frame = 0.6 * mu * sum(thick)
        od[k] = ndimage.gaussian_filter(frame, 1.0) + rng.normal(0, 0.01, frame.shape)
    return Stack(od, energies)


@pytest.mark.parametrize("crescent", [True, False])
def test_a_crescent_left_out_in_every_frame_is_said_lost(crescent):
    r = run_pipeline(_scene(crescent))
    lost = [n for n in r.notes if "left out as not convex" in n]
    near = [p for p in r.particles if np.hypot(*(np.nanmedian(p.positions, axis=0) - np.array(CRESCENT) - 5)) < 25]
    if crescent:
        assert not near, "the crescent was kept: the scene no longer tests the note"
        assert len(lost) == 1, r.notes
        assert "never tracked" in lost[0], lost[0]
        y, x = map(float, re.search(r"where largest at \(y, x\) \((\d+), (\d+)\) in frame \d+", lost[0]).groups())
        assert np.hypot(y - CRESCENT[0], x - CRESCENT[1]) < 20, lost[0]
        assert (r.rejected["reason"] == "not_convex").any()
    else:
        assert len(near) == 1 and not lost, (r.notes, [p.positions[0] for p in r.particles])
    assert len(r.particles) == (2 if crescent else 3)
