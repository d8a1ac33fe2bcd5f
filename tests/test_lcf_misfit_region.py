"""A phase the references do not hold in part of a particle is flagged per pixel, noted and kept out of its means.

A probe's third phase (NiO shifted +3 eV, its E50 1.15 eV above LiNiO2's) over half a particle or in a 4 px shell
read as pure LiNiO2 (1.000 +- 0.012-0.017) pixel by pixel, pixel_flags 0, no note: the particle's note judges only
the median and 90th percentile of the fit's residual over its pixels, and the per-pixel residual was thrown away.
The same scenes with the phases in the references (NiO, LiNiO2) are the controls: nothing flagged, nothing said.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od
from scipy import ndimage

from xanestrack import report, xanes
from xanestrack.result import core_pixels, fraction_pixels
from xanestrack.spectra import ni_references
from xanestrack.synth import ni_energy_grid

SHAPE, RADIUS = (53, 53), 22


def _scene(kind: str, seed: int = 1):
    """``(analysis, mask, truth)`` of one particle of the shipped NiO / LiNiO2 and a third phase C (NiO +3 eV).

    ``half_c``: C where x < centre, a 50/50 NiO / LiNiO2 mix elsewhere; ``shell_c``: a 4 px C shell over a LiNiO2
    core; ``half_nio`` and ``shell_lnio`` the same geometries with NiO in C's place (the controls). ``truth``: the
    pixels of phase C (empty for the controls)."""
    refs = ni_references()
    e = ni_energy_grid(60)
    mask = disc(SHAPE, RADIUS)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    c = (SHAPE[0] - 1) / 2
    part = (xx < c) if kind.startswith("half") else np.hypot(yy - c, xx - c) > RADIUS - 4
    part &= mask
    if kind.startswith("half"):
        other = np.stack([~part * 0.5, ~part * 0.5])
    else:
        other = np.stack([0 * part, ~part * 1.0])
    third = kind.endswith("_c")
    w = np.concatenate([other + np.stack([part * (not third), 0 * part]), (part * third)[None]]).astype(float) * mask
    spectra = np.stack([refs["NiO"](e), refs["LiNiO2"](e), refs["NiO"](e - 3.0)])
    od, _ = pixel_od(e, spectra, w, dome(SHAPE, RADIUS, 0.6), rng=np.random.default_rng(seed))
    r = xanes.analyse_particle(od, mask, e, references={"NiO": refs["NiO"], "LiNiO2": refs["LiNiO2"]})
    return r, mask, part if third else np.zeros_like(part)


def _region_notes(r):
    return [n for n in r["notes"] if n.startswith(xanes.MISFIT_REGION_NOTE)]


@pytest.mark.parametrize("kind", ["half_c", "shell_c"])
def test_a_third_phase_in_part_of_a_particle_is_flagged_per_pixel_and_noted(kind):
    r, mask, truth = _scene(kind)
    flagged = (r["pixel_flags"] & xanes.FLAG_MISFIT) > 0
    # the per-pixel misfit is kept: about 1 where the references describe the spectra, 3-5 in phase C
    m = r["maps"]["lcf_misfit"]
    inner = ndimage.binary_erosion(truth, iterations=1)
    assert np.nanmedian(m[mask & ~truth]) < 1.5 and np.nanmedian(m[truth]) > 3.0
    # every pixel of phase C flagged (half: 736 of 760 measured, the boundary's blur; shell: all 508), spilling at
    # most 2 px into the rest (17 / 82 pixels measured)
    assert flagged[inner].mean() > 0.97, flagged[inner].mean()
    assert not (flagged & ~ndimage.binary_dilation(truth, iterations=2)).any()
    # its fractions there read as the nearest reference's (LiNiO2 1.000): those at the bound whose E50 lies well
    # above LiNiO2's, which no mix of the references reaches, are among the flagged
    dense = np.arange(8300.0, 8400.0, 0.05)
    lnio = float(xanes.edge_energy(dense, ni_references()["LiNiO2"](dense))[0])  # 8341.8 eV
    bound = mask & (r["fractions"][1] > 0.99) & (r["edge_maps"]["e50"] > lnio + 0.5)
    assert bound.sum() > 100 and flagged[bound].mean() > 0.95
    notes = _region_notes(r)
    assert len(notes) == 1 and "core pixels" in notes[0] and "the fractions there read NiO 0.0" in notes[0], notes
    assert not any(xanes.MISFIT_NOTE in n for n in r["notes"])  # the particle's own note stays silent, as before


@pytest.mark.parametrize("kind", ["half_nio", "shell_lnio"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_particles_in_the_references_phases_are_not_flagged(kind, seed):
    r, mask, _ = _scene(kind, seed)
    assert not ((r["pixel_flags"] & xanes.FLAG_MISFIT) > 0).any()
    assert not _region_notes(r) and not any(xanes.MISFIT_NOTE in n for n in r["notes"])
    m = r["maps"]["lcf_misfit"]
    assert np.isnan(m[~mask]).all() and 0.7 < np.nanmedian(m[mask]) < 1.5  # measured 1.02-1.19


def test_isolated_misfit_pixels_are_not_a_region():
    # single noisy pixels reach 2.6-10 x on the controls: a region needs its smoothed misfit over MISFIT_PIXEL_RATIO
    # in MISFIT_MIN_PX connected pixels inside the outer rim
    mask = disc((41, 41), 18)
    m = np.where(mask, 1.0, np.nan)
    rng = np.random.default_rng(0)
    m[rng.random(mask.shape) < 0.01] = 5.0  # 1 % of the pixels, scattered
    m[20:22, 20:22] = 5.0  # a 2 x 2 clump
    assert not xanes.misfit_region(m, mask).any()
    depth = ndimage.distance_transform_edt(mask)
    rim = mask & (depth <= 2)
    m[rim & (np.mgrid[0:41, 0:41][0] > 25)] = 5.0  # an arc of the outer 2 px, 70 pixels: the rim's mixed spectra
    assert not xanes.misfit_region(m, mask).any()
    m[8:18, 15:25] = 4.0  # a 10 x 10 patch inside
    region = xanes.misfit_region(m, mask)
    assert region[10:16, 17:23].all() and not region[30:, :].any()
    # only the pixels the quality masks keep are judged
    assert not xanes.misfit_region(m, mask, keep=mask & (np.mgrid[0:41, 0:41][0] > 20)).any()


def _as_result(r, mask):
    """The analysis as the report reads a particle (what :func:`report._fraction_means` needs of it)."""
    p = SimpleNamespace(
        particle=0,
        mask=mask,
        kept=np.asarray(r["maps"]["quality_keep"], bool) & mask,
        fractions=r["fractions"],
        reference_names=r["reference_names"],
        maps=r["maps"],
        notes=tuple(r["notes"]),
        pixel_flags=r["pixel_flags"],
        edge_maps=r["edge_maps"],
    )
    return SimpleNamespace(particles=[p]), p


def test_the_mean_fractions_leave_the_region_out_and_say_so():
    # half phase C (read LiNiO2 1.000), half a 50/50 mix: its mean LiNiO2 fraction read 0.751, now the mix's 0.5
    r, mask, truth = _scene("half_c")
    res, p = _as_result(r, mask)
    row = report._fraction_means(res).iloc[0]
    assert row["fraction_LiNiO2"] == pytest.approx(0.5, abs=0.03)
    assert "misfit_region" in row["fraction_flags"].split("|")
    assert np.nanmean(r["fractions"][1][core_pixels(p)]) > 0.7  # over the whole core, as before
    assert not (fraction_pixels(p) & truth).any()
    # the control's means are over its whole core, unflagged
    r, mask, _ = _scene("half_nio")
    res, p = _as_result(r, mask)
    row = report._fraction_means(res).iloc[0]
    np.testing.assert_array_equal(fraction_pixels(p), core_pixels(p))
    assert row["fraction_LiNiO2"] == pytest.approx(0.25, abs=0.03) and row["fraction_flags"] == ""
