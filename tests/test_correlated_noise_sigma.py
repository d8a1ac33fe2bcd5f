"""Noise shared along a frame's rows (readout stripes) must widen the stated sigma of a particle's mean E50.

The probe (synth default seed 5, 256 px, 60 energies, 4 particles): row stripes of 40 counts per row per frame on
~5000 counts (0.8 %) spread the mean E50s by 0.053 / 0.029 / 0.036 eV over 10 draws against stated sigmas of
0.023 / 0.012 / 0.019 eV: the noise part took the pixels as independent (corrected only for the smoothing), but the
pixels of a row share their stripe, which a mean over them does not average away.
"""

import re

import numpy as np
import pytest

from xanestrack.chemistry.uncertainty import mean_noise_sigma
from xanestrack.result import core_mask, particle_summary
from xanestrack.xanes import SHARED_NOISE_NOTE, analyse_particle

#: a Ni K-edge-like grid: coarse pre-edge, fine across the edge, coarse post-edge (48 energies)
E = np.r_[np.linspace(8250, 8330, 10), np.linspace(8332, 8370, 20), np.linspace(8375, 8600, 18)]


def _window(rng, stripes, *, size=72, radius=22, i0=5000.0):
    """One particle's window: a sphere-like disc (peak OD 0.8 times its spectrum) over a clear background, Poisson
    counts on ``i0``, and an offset of ``stripes`` counts (sd) per row per frame."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    t = np.sqrt(np.clip(1 - (r / radius) ** 2, 0, None))
    spec = 0.2 + 0.6 * (0.5 + np.arctan((E - 8345.0) / 3.0) / np.pi) + 0.15 * np.exp(-(((E - 8352) / 4.0) ** 2))
    od = 0.8 * spec[:, None, None] * t[None]
    counts = rng.poisson(i0 * np.exp(-od)).astype(float)
    counts += rng.normal(0, stripes, (E.size, size, 1))
    return -np.log(np.clip(counts, 1, None) / i0).astype(np.float32), r < radius - 0.5


def _draws(stripes, n=30, seed=3):
    """Mean E50 over the core and its stated noise sigma (as the particles table takes it: the pixels' sigmas,
    the smoothing of 1 px, ``maps["noise_shared"]`` where the analysis gave one), and the notes, per draw."""
    rng = np.random.default_rng(seed)
    means, stated, independent, notes = [], [], [], []
    for _ in range(n):
        od, mask = _window(rng, stripes)
        out = analyse_particle(od, mask, E)
        e50, maps = out["edge_maps"]["e50"], out["maps"]
        sel = core_mask(mask, maps["quality_keep"]) & np.isfinite(e50)
        means.append(float(e50[sel].mean()))
        sn = maps["e50_sigma_noise"]
        stated.append(mean_noise_sigma(sn, sel, smoothing_px=1.0, shared=maps.get("noise_shared")))
        independent.append(mean_noise_sigma(sn, sel, smoothing_px=1.0))
        notes.append(out["notes"])
    return np.std(means, ddof=1), np.median(stated), np.median(independent), notes


def test_a_striped_particle_states_the_spread_of_its_mean_e50():
    # 30 draws (photons and stripes): spread 0.045 eV; stated 0.045 (0.024 taking the pixels as independent)
    spread, stated, independent, notes = _draws(40.0)
    assert spread / 1.5 < stated < 1.5 * spread, (spread, stated, independent)
    assert independent < spread / 1.5  # what was stated before
    for n in notes:
        (note,) = [x for x in n if x.startswith(SHARED_NOISE_NOTE)]
        assert "along rows of the frames" in note and "0 % to a column" in note
        x = float(re.search(r"widened ([\d.]+) x", note).group(1))
        assert 1.5 <= x <= 2.5, note


def test_no_widening_nor_note_without_stripes():
    # the same windows without the stripes: 30 draws spread 0.018 eV, stated 0.016 either way
    spread, stated, independent, notes = _draws(0.0)
    assert stated == pytest.approx(independent, rel=1e-9)
    assert spread / 1.5 < stated < 1.5 * spread
    assert not any(x.startswith(SHARED_NOISE_NOTE) for n in notes for x in n)


def _scene(preset, seed, **kw):
    from xanestrack.synth_stress import make_scene

    return make_scene(preset, seed=seed, n_energies=48, shape=(192, 192), **kw)


def _od(counts, flats, dark):
    return (-np.log(np.clip((counts - dark) / (flats - dark), 1e-4, None))).astype(np.float32)


def _run(od, energies):
    from xanestrack.pipeline import PipelineOptions, run_pipeline
    from xanestrack.stack import Stack

    return run_pipeline(Stack(od, energies), options=PipelineOptions())


def _independent_sigma(result):
    """The particles' mean E50 sigma taking the pixels as independent (the sigma stated before the fix; with the local
    background's noise, which the stripes do not change)."""
    out = {}
    for p in result.particles:
        s = particle_summary(result).set_index("particle")
        if not np.isfinite(s.loc[p.particle, "mean_e50_sigma_ev"]):
            continue
        sel = core_mask(p.mask, p.kept) & np.isfinite(p.edge_maps["e50"])
        # the local background's noise, common to the pixels, counted as the table does (not a stripe)
        sn = mean_noise_sigma(
            p.maps["e50_sigma_noise"], sel, smoothing_px=1.0, background=p.maps.get("noise_background")
        )
        sr = np.asarray(p.maps["e50_sigma_registration"], float)[core_mask(p.mask, p.kept)]
        sr = sr[np.isfinite(sr)]
        out[p.particle] = float(np.hypot(sn, sr.mean())) if sr.size else sn
    return out


@pytest.fixture(scope="module")
def default_scene():
    return _scene("default", 5, n_particles=3, radius_range=(14.0, 26.0))


def test_pipeline_widens_the_sigma_of_striped_particles_and_says_so(default_scene):
    s = default_scene
    counts = np.asarray(s.counts, np.float64)
    counts = counts + np.random.default_rng(0).normal(0, 40.0, (counts.shape[0], counts.shape[1], 1))
    r = _run(_od(counts, s.flats, s.dark), s.energies_ev)
    summ = particle_summary(r).set_index("particle")
    before = _independent_sigma(r)
    assert len(before) >= 2
    for pid, old in before.items():
        assert summ.loc[pid, "mean_e50_sigma_ev"] > 1.25 * old, (pid, old, summ.loc[pid, "mean_e50_sigma_ev"])
    (run_note,) = [n for n in r.notes if n.startswith(SHARED_NOISE_NOTE)]
    assert "along rows of the frames" in run_note and "were widened" in run_note


@pytest.mark.parametrize("preset", ["default", "stress-drift"])
def test_no_note_and_sigmas_unchanged_without_stripes(preset, default_scene):
    # the default scene as synthesised, and a stress preset (a textured matrix moving behind the particles)
    s = default_scene if preset == "default" else _scene(preset, 1, n_particles=4, radius_range=(12.0, 24.0))
    r = _run(s.optical_density(), s.energies_ev)
    assert not [n for n in r.notes if n.startswith(SHARED_NOISE_NOTE)]
    assert not [n for p in r.particles for n in p.notes if n.startswith(SHARED_NOISE_NOTE)]
    summ = particle_summary(r).set_index("particle")
    before = _independent_sigma(r)
    assert before
    for pid, old in before.items():
        assert summ.loc[pid, "mean_e50_sigma_ev"] == pytest.approx(old, rel=0.05)
