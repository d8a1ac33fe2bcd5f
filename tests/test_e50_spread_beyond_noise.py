"""The spread of a particle's E50 beside the part its pixels' noise does not explain.

``e50_spread_ev`` and chemistry.csv's 2nd/98th percentiles are of noisy pixels: a probe's uniform particle (truth SD
0.084 eV) read a spread of 0.117 eV at 5000 counts and 0.184 eV at 800, its 2nd-98th percentile width 2.8 and 4.9 x
the truth's, so that a researcher comparing particles across scans of other counts read noise as heterogeneity.
``e50_spread_beyond_noise_ev`` (particle_summary, chemistry.csv) takes the pixels' own noise out; the existing
columns keep their meaning.
"""

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from xanestrack import report, xanes
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.result import core_mask, particle_summary, spread_beyond_noise
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth import edge_energy_of_fraction, ni_energy_grid


def _spreads(fraction, counts, seed=1):
    """``(raw SD, SD beyond the noise, truth SD)`` of one particle's E50 over its kept core pixels."""
    refs = ni_references()
    e = ni_energy_grid(60)
    mask = disc((45, 45), 18)
    w = np.stack([1 - fraction, fraction]) * mask
    spectra = np.stack([refs["NiO"](e), refs["LiNiO2"](e)])
    od, _ = pixel_od(e, spectra, w, dome((45, 45), 18, 0.6), counts=counts, rng=np.random.default_rng(seed))
    r = xanes.analyse_particle(od, mask, e, references={"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]})
    e50 = r["edge_maps"]["e50"]
    sel = core_mask(mask, r["maps"]["quality_keep"] & mask) & np.isfinite(e50)
    beyond = spread_beyond_noise(e50[sel], r["maps"]["e50_sigma_noise"][sel])
    return float(np.std(e50[sel])), beyond, float(np.std(edge_energy_of_fraction(fraction[sel])))


def test_the_spread_beyond_the_noise_is_the_same_at_5000_and_800_counts():
    xx = np.mgrid[0:45, 0:45][1]
    gradient = np.clip(0.5 + (xx - 22) / 60, 0, 1)  # E50 SD 0.22 eV over the core
    raw_hi, beyond_hi, truth = _spreads(gradient, 5000)
    raw_lo, beyond_lo, _ = _spreads(gradient, 800)
    assert raw_lo - raw_hi > 0.07  # measured 0.259 / 0.358 eV: the noise, read as chemistry
    assert beyond_hi == pytest.approx(truth, abs=0.04) and beyond_lo == pytest.approx(truth, abs=0.04)  # 0.235 / 0.239
    # a uniform particle: its spread is its noise's
    raw_hi, beyond_hi, _ = _spreads(np.full((45, 45), 0.4), 5000)
    raw_lo, beyond_lo, _ = _spreads(np.full((45, 45), 0.4), 800)
    assert raw_hi > 0.08 and raw_lo > 0.2  # measured 0.099 / 0.277
    assert beyond_hi < 0.05 and beyond_lo < 0.1  # measured 0.000 / 0.075


def test_spread_beyond_noise_arithmetic():
    rng = np.random.default_rng(0)
    truth = rng.normal(8340.0, 0.3, 20000)
    sigma = np.full(truth.size, 0.4)
    assert spread_beyond_noise(truth + rng.normal(0, 0.4, truth.size), sigma) == pytest.approx(0.3, abs=0.01)
    assert spread_beyond_noise(truth, np.full(truth.size, 1.0)) == 0.0  # the noise explains it all: 0, not NaN
    assert np.isnan(spread_beyond_noise([8340.0, np.nan], [np.nan, 0.1]))


@pytest.fixture(scope="module")
def result(small_synth):
    return run_pipeline(
        Stack(small_synth.optical_density(), small_synth.energies_ev), options=PipelineOptions(detect_every=6)
    )


def test_the_tables_give_it_beside_the_spreads_they_had(result):
    s = particle_summary(result)
    cols = list(s.columns)
    assert cols.index("e50_spread_beyond_noise_ev") == cols.index("e50_spread_ev") + 1
    ok = np.isfinite(s["e50_spread_ev"])
    assert ok.any() and (s.loc[ok, "e50_spread_beyond_noise_ev"] <= s.loc[ok, "e50_spread_ev"]).all()
    t = report.chemistry_figure(result).tables["chemistry"]
    assert {"e50_noise_sigma_ev", "e50_spread_beyond_noise_ev"} <= set(t.columns)
    s = particle_summary(result)
    for p, (_, row) in zip(result.particles, t.iterrows()):
        m = np.where(p.kept, p.edge_maps["e50"], np.nan)
        fin = np.isfinite(m)
        if not fin.any():
            continue
        # the percentiles are those of the pixels as measured, as before; the spread beyond their noise beside them,
        # over the pixels of the particle's mean E50 (its core), as in the particles' table
        assert row["e50_p2_ev"] == pytest.approx(np.percentile(m[fin], 2))
        core = core_mask(p.mask, p.kept) & np.isfinite(p.edge_maps["e50"])
        sig = p.maps["e50_sigma_noise"][core]
        assert row["e50_noise_sigma_ev"] == pytest.approx(np.sqrt(np.nanmean(sig**2)), rel=1e-6)
        assert row["e50_spread_beyond_noise_ev"] == pytest.approx(
            spread_beyond_noise(p.edge_maps["e50"][core], sig), abs=1e-9
        )
        same = s.loc[s["particle"] == p.particle, "e50_spread_beyond_noise_ev"].iloc[0]
        assert row["e50_spread_beyond_noise_ev"] == pytest.approx(same, abs=1e-12, nan_ok=True)


def test_chemistry_csv_and_the_particles_table_take_one_set_of_pixels():
    """chemistry.csv took the spread beyond the noise over every kept pixel, the rim included, whose noise is 2-3 x
    the core's: a probe's stress-all particle (truth SD 0.29 eV) read 0.000 there and 0.284 eV in the report. A
    particle with a noisy rim: the core's noise and spread, as the particles' table gives them."""
    from types import SimpleNamespace

    from xanestrack.result import e50_noise_and_spread

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:61, 0:61]
    r = np.hypot(yy - 30, xx - 30)
    mask = r <= 20
    truth = 8340.0 + 0.3 * (xx - 30) / 10.0  # a gradient: SD about 0.3 eV over the core
    sigma = np.where(r > 18.5, 1.5, 0.1)  # the rim (outside the core, the mask eroded by 2 px) 15 x noisier
    e50 = np.where(mask, truth + rng.normal(0, 1, mask.shape) * sigma, np.nan)
    p = SimpleNamespace(
        mask=mask,
        kept=mask.copy(),
        edge_maps={"e50": e50},
        maps={"e50_sigma_noise": np.where(mask, sigma, np.nan)},
        pixel_flags=np.zeros(mask.shape, np.uint16),
        xanes_frames=None,
    )
    noise, beyond = e50_noise_and_spread(p)
    core = core_mask(mask, mask)
    assert beyond == pytest.approx(np.std(truth[core]), abs=0.05)  # the core's spread beyond its noise
    assert noise == pytest.approx(0.1)  # the core's noise, not the rim's (RMS over every kept pixel: 0.55 eV)
