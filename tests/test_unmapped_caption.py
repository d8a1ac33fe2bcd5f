"""The E50 overview's caption names the particles it numbers but cannot colour (a report probe: a crowded scene's
particle 6, without a XANES, drawn grey under its number while the caption spoke of "every particle")."""

import dataclasses

import numpy as np
from chemistry_synth import disc

from conftest import one_particle_result
from xanestrack import report, xanes
from xanestrack.spectra import ni_references
from xanestrack.synth import ni_energy_grid


def _result():
    e = ni_energy_grid(48)
    mask = disc((40, 40), 12)
    od = 0.2 + 0.5 * ni_references()["NiO"](e)[:, None, None] * mask[None]
    od = od + np.random.default_rng(0).normal(0, 0.005, od.shape)
    xr = xanes.analyse_particle(od.astype(np.float32), mask, e, references=ni_references())
    return one_particle_result(xr, od.astype(np.float32), mask, e, 12.0)


def test_a_particle_without_a_map_is_named_in_the_caption():
    r = _result()
    p = r.particles[0]
    assert np.isfinite(report._kept_e50(p)).any()
    assert "No edge-energy map" not in report.chemistry_figure(r).caption  # control: mapped, nothing said
    blank = dataclasses.replace(p, edge_maps={**p.edge_maps, "e50": np.full_like(p.edge_maps["e50"], np.nan)})
    cap = report.chemistry_figure(dataclasses.replace(r, particles=[blank])).caption
    assert "No edge-energy map for particle 0" in cap
