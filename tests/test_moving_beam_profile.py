"""A beam profile (rings, fringes) that moves against the flats from frame to frame must be noted.

The probe's scene (synth default seed 5, 256 px, 60 energies): a profile of 4 % rings (18 px period) and fringes
moving in a circle of 3 px over the scan, each frame with its own flat at the profile's unshifted place. The check
of the flats' place judged one shift on the median of 5 frames, which lies at the flats' place: nothing was said,
the residue was taken for a matrix texture moving on its own, one particle's E50 moved by -0.118 eV (6.9 sigma).
"""

import re

import numpy as np
import pytest

from conftest import shared_data
from xanestrack.io.flatfield import optical_density


@pytest.fixture(scope="module")
def base():
    """The default scene, seed 1, reduced: counts, flats (one per frame) and the dark."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack(
        "default", seed=1, n_energies=24, shape=(160, 160), n_particles=3, radius_range=(10.0, 20.0)
    )
    counts = np.asarray(s.counts, np.float64)
    flats = np.asarray(s.flats, np.float64)
    dark = np.asarray(s.dark, np.float64).reshape(-1, *counts.shape[1:]).mean(axis=0)
    return counts, np.broadcast_to(flats, counts.shape), dark


def _profile(shape, dy, dx, amp, period=18.0):
    """The probe's beam profile (vignetting, rings and fringes) centred (dy, dx) px off the frame's centre."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    r = np.hypot(yy - (rows - 1) / 2 - dy, xx - (cols - 1) / 2 - dx)
    v = 1 - 0.3 * (r / (0.7 * rows)) ** 2
    rings = 1 + amp * np.cos(2 * np.pi * r / period)
    fringes = 1 + 0.5 * amp * np.cos(2 * np.pi * (yy - dy + 0.3 * (xx - dx)) / (period * 0.7))
    return v * rings * fringes


def _under_profile(base, *, amp, shift, cycles=1.5):
    """Counts and flats under the profile: the flats at its unshifted place, frame k's images with it moved by
    ``shift`` px along a circle (``cycles`` turns over the scan)."""
    counts, flats, dark = base
    n, shape = counts.shape[0], counts.shape[1:]
    p0 = _profile(shape, 0, 0, amp)
    phase = np.linspace(0, 2 * np.pi, n) * cycles
    moved = np.stack([_profile(shape, shift * np.sin(a), shift * np.cos(a), amp) for a in phase])
    return (
        np.clip(np.round(dark + (counts - dark) * moved), 0, 65535).astype(np.uint16),
        (dark + (flats - dark) * p0).astype(np.float32),
        dark[None].astype(np.float32),
    )


def _pattern_notes(counts, flats, darks):
    notes = []
    optical_density(counts, flats=flats, darks=darks, notes=notes)
    return [n for n in notes if "pattern lies" in n]


def test_a_beam_profile_moving_against_the_flats_from_frame_to_frame_is_noted(base):
    # 4 %, 3 px: nothing was said (the median of 5 frames lies at the flats' place)
    (note,) = _pattern_notes(*_under_profile(base, amp=0.04, shift=3.0))
    largest = float(re.search(r"lies up to ([\d.]+) px off the flats. pattern", note).group(1))
    assert 2.5 <= largest <= 3.5, note
    assert "moving from frame to frame" in note and "register each flat" in note
    assert "closer in time" in note
    # frame 0: the profile (0, +3) px off its flat
    dy, dx = (float(v) for v in re.search(r"from 0: 0 \(([-+\d.]+), ([-+\d.]+)\)", note).groups())
    assert abs(dy) < 0.5 and abs(dx - 3.0) < 0.5, note


def test_no_note_on_the_clean_scene_nor_a_profile_the_flats_hold(base):
    counts, flats, dark = base
    assert not _pattern_notes(np.round(counts).astype(np.uint16), flats.astype(np.float32), dark[None])
    # the same profile, not moving: each flat right for its frame
    assert not _pattern_notes(*_under_profile(base, amp=0.04, shift=0.0))


def test_no_note_on_the_real_ssrl_frames_and_their_references():
    # the SSRL 6-2C NCA scan's two energies: the mean of each energy's sample images, of its references
    from xanestrack.io.xrm import read_xrm

    folder = shared_data("real_txm", "ssrl_6-2c_nca")

    def mean(pattern):
        files = sorted(folder.glob(pattern))
        assert files, pattern
        return np.mean([read_xrm(p).images.astype(np.float32).mean(axis=0) for p in files], axis=0)

    energies = ("08324.0", "08354.0")
    counts = np.stack([mean(f"rep01_2016*_{e}_eV_*.xrm") for e in energies])
    flats = np.stack([mean(f"rep01_0*_ref_*_{e}_eV_*.xrm") for e in energies])
    assert not _pattern_notes(counts, flats, None)


def test_no_note_for_stuck_detector_columns_in_images_and_flats(base):
    # two adjacent stuck columns (and a stuck row) in the images and the flats alike correlate with themselves at any
    # shift along them: before their medians were taken out, they read 8-10 px "moving from frame to frame"
    counts, flats, dark = base
    for lines in ((np.s_[:, :, 80:82],), (np.s_[:, 50:52, :],), (np.s_[:, :, 80:82], np.s_[:, 50, :])):
        c = np.round(counts).astype(np.uint16)
        f = np.array(flats, np.float32)
        for a in (c, f):
            for sl in lines:
                a[sl] = 3000
        assert not _pattern_notes(c, f, dark[None]), lines
    # the moving profile is still seen with the stuck lines
    mc, mf, md = _under_profile(base, amp=0.04, shift=3.0)
    mf = np.array(mf)
    for a in (mc, mf):
        a[:, :, 80:82] = 3000
    assert len(_pattern_notes(mc, mf, md)) == 1
