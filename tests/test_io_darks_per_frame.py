"""Darks of one per frame are paired with their frames (and flats), as flats are; darks of another number are
averaged, with a note where they drift. A camera dark drifting 150 counts over a scan (flats of 5000 counts), given
one per frame and averaged, moved every particle's E50 by -0.08 to -0.10 eV (7-11 sigma), unsaid."""

import re
import warnings

import numpy as np
import pytest
import tifffile

from xanestrack.errors import XanestrackError
from xanestrack.io import optical_density, read_stack
from xanestrack.io.hdf5 import FrameReader, read_hdf5, write_fxi
from xanestrack.spectra import ni_references
from xanestrack.synth import ni_energy_grid
from xanestrack.xanes import edge_energy, normalize

E = ni_energy_grid(40)
SHAPE = (64, 64)
YY, XX = np.mgrid[: SHAPE[0], : SHAPE[1]]
DISC = (YY - 32) ** 2 + (XX - 32) ** 2 < 18**2
RING = ((YY - 32) ** 2 + (XX - 32) ** 2 > 22**2) & ((YY - 32) ** 2 + (XX - 32) ** 2 < 28**2)


def _scan(drift=0.0, seed=0):
    """Counts and flats (one per energy, ~5000 counts, the dark of the same moment in both) of a still particle
    ((NiO + LiNiO2) / 2, OD up to ~0.7) on a faint matrix; the darks of every frame (100 counts rising by ``drift``
    over the scan, read noise 2 counts); and the counts without any dark."""
    rng = np.random.default_rng(seed)
    refs = ni_references()
    mu = 0.5 * (refs["NiO"](E) + refs["LiNiO2"](E)) + 0.25 * (E / 8333.0) ** -3
    od = 0.05 + 0.02 * rng.random(SHAPE)
    od = od[None] * (E[:, None, None] / 8333.0) ** -3 + 0.6 * mu[:, None, None] * DISC
    beam = 5000.0 * (1 + 0.05 * np.cos(2 * np.pi * XX / SHAPE[1]))
    dark0 = 100.0 + rng.normal(0, 2.0, SHAPE)
    t = np.arange(E.size) / (E.size - 1)
    darks = np.stack([dark0 + drift * t[k] + rng.normal(0, 2.0, SHAPE) for k in range(E.size)]).astype(np.float32)
    signal = rng.poisson(beam * np.exp(-od)).astype(np.float32) + rng.normal(0, 2.0, od.shape).astype(np.float32)
    bright = (rng.poisson(10 * beam, od.shape) / 10.0).astype(np.float32)
    # the frame and its flat hold the camera's dark of their moment
    return signal + darks, bright + darks, darks, signal, bright


def _e50(od):
    """The particle's E50 (eV): its mean optical density less the ring around it, normalised."""
    mu = od[:, DISC].mean(axis=1) - od[:, RING].mean(axis=1)
    return float(edge_energy(E, normalize(E, mu).norm)[0])


def _fxi(tmp_path, name, counts, flats, darks):
    p = tmp_path / f"{name}.h5"
    write_fxi(p, counts, flats=flats, darks=darks, energies_ev=E)
    return read_stack(p, zingers=False)


def test_darks_of_every_frame_drifting_give_the_edge_of_darks_without_drift(tmp_path):
    counts, flats, darks, _, _ = _scan(drift=150.0)
    still = _scan(drift=0.0)
    drifting = _fxi(tmp_path, "drift", counts, flats, darks)
    e_drift, e_still = _e50(drifting.od), _e50(_fxi(tmp_path, "still", *still[:3]).od)
    # averaged, the drifting darks moved E50 by -0.09 eV here (the probe's scene: -0.08 to -0.10 eV, 7-11 sigma)
    e_averaged = _e50(optical_density(counts, flats=flats, darks=darks.mean(axis=0)))
    assert e_averaged - e_still < -0.05
    assert abs(e_drift - e_still) < 0.005
    assert not any("dark" in n for n in drifting.metadata["notes"])  # paired: nothing to say


def test_per_frame_darks_are_read_a_frame_at_a_time(tmp_path):
    counts, flats, darks, _, _ = _scan(drift=150.0)
    write_fxi(tmp_path / "s.h5", counts, flats=flats, darks=darks, energies_ev=E)
    d = read_hdf5(tmp_path / "s.h5", lazy=True)
    try:
        assert isinstance(d["darks"], FrameReader)  # not read whole, nor converted whole to float32
    finally:
        for k in ("counts", "flats", "darks"):
            d[k].close()


def test_identical_darks_of_every_frame_read_as_one_dark_to_the_bit(tmp_path):
    counts, flats, darks, _, _ = _scan()
    one = _fxi(tmp_path, "one", counts, flats, darks[:1])
    every = _fxi(tmp_path, "every", counts, flats, np.repeat(darks[:1], E.size, axis=0))
    assert np.array_equal(one.od, every.od, equal_nan=True)
    # the same through the TIFF reader (darks in memory)
    tifffile.imwrite(tmp_path / "s.tif", counts)
    tifffile.imwrite(tmp_path / "f.tif", flats, photometric="minisblack")
    tifffile.imwrite(tmp_path / "d.tif", np.repeat(darks[:1], E.size, axis=0), photometric="minisblack")
    np.savetxt(tmp_path / "e.txt", E)
    tif = read_stack(
        tmp_path / "s.tif",
        energies=tmp_path / "e.txt",
        flats=tmp_path / "f.tif",
        darks=tmp_path / "d.tif",
        zingers=False,
    )
    assert np.array_equal(one.od, tif.od, equal_nan=True)


def test_controls_without_drift_one_dark_or_none_keep_their_edge(tmp_path):
    counts, flats, darks, signal, bright = _scan()
    e_every = _e50(_fxi(tmp_path, "every", counts, flats, darks).od)
    # one dark (the first) for all frames: as before, the dark subtracted from every frame and flat
    one = _fxi(tmp_path, "one", counts, flats, darks[:1])
    want = -np.log((counts - darks[0]) / (flats - darks[0]))
    assert np.allclose(one.od, want, atol=1e-5)
    # no darks: the counts without their dark
    none = tmp_path / "none.h5"
    write_fxi(none, signal, flats=bright, darks=np.zeros((1, *SHAPE)), energies_ev=E)
    import h5py

    with h5py.File(none, "a") as f:
        del f["img_dark"]
    e_none = _e50(read_stack(none, zingers=False).od)
    for e in (_e50(one.od), e_none):
        assert abs(e - e_every) < 0.01


def test_darks_of_another_number_are_averaged_with_a_note_only_where_they_drift(tmp_path):
    counts, flats, darks, _, _ = _scan(drift=150.0)
    notes = []
    five = np.linspace(0, E.size - 1, 5).round().astype(int)  # taken at 5 moments over the scan
    optical_density(counts, flats=flats, darks=darks[five], notes=notes)
    drift = [n for n in notes if "dark images for" in n]
    assert (
        len(drift) == 1
        and "give one dark per frame" in drift[0]
        and "differ by 150 counts, 3.1% of the flats' level" in drift[0]
    )
    counts, flats, darks, _, _ = _scan(drift=0.0)
    notes = []
    optical_density(counts, flats=flats, darks=darks[:10], notes=notes)  # a batch of darks: within their noise
    assert not [n for n in notes if "dark" in n]


def test_one_flat_with_darks_of_every_frame_takes_their_mean_for_the_flat(tmp_path):
    counts, flats, darks, _, _ = _scan(drift=150.0)
    od = optical_density(counts[:3], flats=flats[:1], darks=darks[:3])
    want = -np.log((counts[:3] - darks[:3]) / (flats[0] - darks[:3].mean(axis=0)))
    assert np.allclose(od, want, atol=1e-5)


def test_a_dark_of_every_frame_with_nan_is_refused_naming_it():
    counts, flats, darks, _, _ = _scan()
    darks[7, 3, 3] = np.nan
    with pytest.raises(XanestrackError, match="dark images contain NaN/inf .first in dark 7"):
        optical_density(counts, flats=flats, darks=darks)


def test_darks_of_one_per_file_follow_their_files_in_a_descending_folder(tmp_path):
    # a descending scan's files, flats and darks in the files' order: each frame less its own dark, its flat too
    counts, flats, darks, _, _ = _scan(drift=150.0)
    sub = np.arange(6) * 7  # 6 frames across the scan
    counts, flats, darks, e = counts[sub], flats[sub], darks[sub], E[sub]
    (tmp_path / "f").mkdir()
    for k, i in enumerate(range(5, -1, -1)):  # file k holds energy e[5 - k]
        tifffile.imwrite(tmp_path / "f" / f"frame_{k:03d}_{e[i]:.1f}eV.tif", counts[i])
    tifffile.imwrite(tmp_path / "flats.tif", flats[::-1], photometric="minisblack")
    tifffile.imwrite(tmp_path / "darks.tif", darks[::-1], photometric="minisblack")
    st = read_stack(tmp_path / "f", flats=tmp_path / "flats.tif", darks=tmp_path / "darks.tif", zingers=False)
    assert np.allclose(st.energies_ev, e)
    assert np.allclose(st.od, -np.log((counts - darks) / (flats - darks)), atol=1e-5)
    assert any("one dark per file), each paired with its file's frame" in n for n in st.metadata["notes"])


def test_darks_without_pixel_noise_are_not_said_to_drift_inf_times_their_noise():
    """Darks of constant images at different levels (synthetic, or clipped) have no pixel noise: the note divided
    their spread by it, "far beyond their noise (inf times ...)", with a RuntimeWarning. Now it says they hold no
    pixel noise; the drifting darks with noise (control) keep their ratio."""
    counts, flats, darks, _, _ = _scan(drift=150.0)
    flat = np.stack([np.full(SHAPE, 100.0 + 150.0 * k / 4, np.float32) for k in range(5)])
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        optical_density(counts, flats=flats, darks=flat, notes=notes)
    (drift,) = [n for n in notes if "dark images for" in n]
    assert (
        "inf" not in drift and "differ by 150 counts" in drift and "and they hold no pixel noise (dark 0 -75" in drift
    )
    notes = []
    five = np.linspace(0, E.size - 1, 5).round().astype(int)
    optical_density(counts, flats=flats, darks=darks[five], notes=notes)
    (drift,) = [n for n in notes if "dark images for" in n]
    assert re.search(r"far beyond their noise \(\d+ times; dark 0 ", drift)
