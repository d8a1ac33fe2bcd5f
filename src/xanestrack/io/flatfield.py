"""Flat-field (reference) and dark correction to optical density."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import XanestrackError
from .checks import check_pixel_dtype

__all__ = ["optical_density", "transmission_to_od", "repair_note", "no_image_refusal"]


def transmission_to_od(t) -> int:
    """Turn a transmission frame into optical density in place: ``t <- -ln(t)``.

    Non-positive or non-finite transmissions (dead pixels, a saturated absorber) get the
    frame's smallest positive transmission. Returns how many pixels were replaced.
    """
    n_bad = 0
    if t.min() <= 0 or not np.isfinite(t.sum()):
        finite = np.isfinite(t)
        good = finite & (t > 0)
        n_bad = int((~good).sum())
        pos = t[good]
        t[~good] = pos.min() if pos.size else 1e-6
    np.log(t, out=t)
    np.negative(t, out=t)
    return n_bad


logger = logging.getLogger(__name__)

#: pixels converted to OD per numpy call: 9 frames of 460^2, 2 of 1024^2 (8 frames of 1024^2 held 64 MiB of
#: temporaries per thread: the reading peaked 70-100 MiB higher, 727-759 against 656-659 MiB)
OD_BLOCK_PIXELS = 1 << 21


def _frame_indexable(a) -> bool:
    """A lazily read stack (e.g. :class:`xanestrack.io.hdf5.FrameReader`): ``a[k]`` reads frame k."""
    return (
        not isinstance(a, np.ndarray)
        and hasattr(a, "shape")
        and hasattr(a, "dtype")
        and hasattr(a, "__getitem__")
        and len(a.shape) == 3
    )


#: the flat field's own pattern (mottle, dust, scintillator grain) must correlate with the images' at least this
#: much, high-passed, to be judged at all; flats without a pattern (synthetic ones) are not
FLAT_PATTERN_MIN = 0.2
#: px: how far the images' pattern is sought off the flats'
FLAT_SHIFT_SEARCH = 16
#: frames spread over the scan whose pattern is set, one by one, against their own flat: a pattern moving back and
#: forth between frames (the beam's profile, the condenser drifting) has its median at the flats' place, where the
#: check of the median saw nothing (the probe's rings and fringes, 4 %, moving 3 px in a circle: one particle's E50
#: -0.118 eV, 6.9 sigma, unsaid) ...
FLAT_MOVE_FRAMES = 12
#: ... on the central square of at most this many px a side: 0.05-0.10 s more for 143 frames of 460^2 or 1024^2
#: (one flat, or one per frame) ...
FLAT_MOVE_CROP = 256
#: ... said where it lies this far (px) or more off its flat in :data:`FLAT_MOVE_MIN_FRAMES` of them or more. The
#: probe's profile moving 2 px measured 1.9-2.2 px off, 3 px 2.8-3.2 px; the same profile held by the flats, not
#: moving, at most 0.21 px; the SSRL NCA frames against their references 0.01 px (correlation 0.92-0.96); the
#: synthetic flats have no pattern (correlation 0.01-0.02: not judged) ...
FLAT_MOVE_MIN = 1.5
#: ... (one frame is not enough to say it)
FLAT_MOVE_MIN_FRAMES = 2

#: the full scale of a 16-bit detector: counts saved as float (or flats averaged) that stop at it, nothing above,
#: saturated there. Flats of uint16 clipped at 65535 (38 of 40 frames, up to 78 % of a frame) were divided as
#: measured: particles' mean E50 0.13 eV (20 sigma) off, without a word; as float32 they were not even looked at
FULL_SCALE_16BIT = 65535.0
#: a flat (reference) image saturated at more than this share of its pixels is refused: the beam's intensity is
#: unknown over most of its frame (a frame more than half without an image is one, see ``repair_note``)
MAX_SATURATED_FLAT_SHARE = 0.5
#: flats whose median is above this are counts (the bound above which
#: :func:`xanestrack.io.checks.values_without_flats` takes images for raw counts) ...
FLAT_COUNTS_MIN = 50.0
#: ... and images beside them whose values all stay within this share of the flats' median are no counts of
#: the same detector: transmission (0-1.1) or optical density (-0.1-2.2) beside flats of 5400 counts reached
#: 2e-4 of them, and were divided: OD 8.8 where 0.27 was measured (an opaque sample's counts are dark-level,
#: 100 or more, and its holes reach the flats')
NOT_COUNTS_SHARE = 0.01
#: a frame of transmission has its background (median) at this or more (optical density's is near 0)
TRANSMISSION_LEVEL_MIN = 0.2
#: px: the median frame is judged against its flats in blocks of this size (photon noise averaged out)
ABOVE_FLAT_BIN = 8
#: optical density below which a block of the median frame is brighter than its flat (transmission above 1.05).
#: A matrix absorbs: the synthetic scenes' blocks (default and hard presets, 3 seeds each, 2-4 % beam jitter
#: between flat and image) were no lower than +0.026, the SSRL NCA frames +0.6; flats of the probe 0.85 times
#: too dark over a band gave -0.095 there (0.5 times: -0.65 everywhere), unremarked
OD_BELOW_FLAT = -0.05
#: ... over more than this share of the field is said (a particle's bright phase-contrast rim is not)
ABOVE_FLAT_SHARE = 0.05
#: optical density below which a compact region of blocks of the median frame is named over a smaller share: the
#: sample in the flats. Flats holding the sample shifted 60 px over half the field (the probe's, synth seed 5)
#: left three regions of 2-8 blocks down to -0.33, -0.58 and -0.70 (1.8 % of the blocks; particle E50s 0.09 eV,
#: 6 sigma, off, unsaid); the lowest block of 16 synthetic scenes (default and 7 stress cases, seeds 1-2, 256 px,
#: 30 energies, 5 particles of radius up to 25 px) +0.024, of the SSRL NCA frames +0.67 ...
GHOST_OD = -0.1
#: ... over at least this many blocks (128 px: a particle 13 px across) ...
GHOST_MIN_BLOCKS = 2
#: ... filling at least this share of their bounding box (a band of too-dark flats is not a particle)
GHOST_MIN_FILL = 0.3

#: flat minus dark below this share of the flats' lit level (their 90th percentile) in every flat: the pixel is
#: unlit, outside the beam's field (a capillary condenser's round field, a beam smaller than the detector). The
#: probe's round field (r 120 px of 256, synth seed 5) was 0 +- 3 counts there against about 5300 inside; 3 % of
#: the beam there (stray light) is above it and measured as before (its run within 0.04 eV of the lit one's) ...
UNLIT_SHARE = 0.02
#: ... taken as outside the field where the unlit pixels form solid regions (opened with a square of this many px:
#: the scattered pixels of a flat taken without beam are none) touching the frame's border ...
UNLIT_OPENING = 5
#: ... over at most this share of the frame (the probe's round field: 31 %); more is refused as before (flats and
#: darks swapped or the beam off: :data:`MAX_DEAD_SHARE`). Refused at any share were the probe's round field and the
#: FXI export of it (images 0 +- 0.02 there): "flat minus dark is zero or negative", "look like optical density"
MAX_UNLIT_SHARE = 0.5


#: the full scales of 12- and 14-bit cameras, whose counts come as uint16 or float: flats of a 12-bit camera clipped
#: at 4095 were divided as measured, as 65535's were before (:data:`FULL_SCALE_16BIT`) ...
SMALLER_FULL_SCALES = (4095.0, 16383.0)
#: ... taken for where the counts saturated only where they pile up there, as clipped counts do: the largest value,
#: at least this many pixels at it ...
PILE_UP_MIN = 2
#: ... and this many times as many as within one count below it (unclipped counts thin out towards their largest)
PILE_UP_RATIO = 4.0
#: the counts' own full scale, wherever it lies (:func:`_pile_up`): clipped counts pile up at their largest value
#: whatever the type that stores them. The same counts clipped at 65535 refused as uint16 were divided as measured as
#: int32, uint32 or dark-subtracted float32 (87 % of a flat clipped: particles' mean E50 up to 0.67 eV, 72 sigma,
#: off), and so were 12-bit counts shifted into 16 bits (full scale 65520) and a camera whose full well clips at 60000
#: (mean E50 0.3-0.6 eV off, positions 0.3-0.7 px), with no word of saturation. A pile at a value that is no known
#: full scale counts only with at least this many pixels in it (a few zingers at one value are none) ...
PILE_UP_ANY_MIN = 16
#: ... within a band below the largest value of at most this many times its square root: dark-subtracted counts clip
#: at the full scale less each pixel's dark, spread by the dark's pattern (17 counts in the probe's); a count's photon
#: noise, its square root, spreads unclipped counts far wider, so that they do not crowd so close to their largest ...
PILE_UP_BAND = 0.25
#: ... holding at least this many values (or, within fewer counts, every count), each pixel counted: the same few
#: extreme values repeated (a frame tiled 2 x 2, one flat given for every frame) were a pile of 16 pixels over 4 values
#: with one below, where a pile spread by the dark's pattern holds many (17 counts in the probe's)
PILE_UP_ANY_DISTINCT = 8
#: ... against the mean of this many bands as wide just below it: one band's few pixels are noisy (flats uniform over
#: +-10 %, with a sharp upper edge, had 19 pixels at their two largest counts against 4 at the next)
PILE_UP_WIDTHS = 3
#: ... with at least this share of the values more than four bands (a square root) below: the counts the clip
#: spared. A flat of one value everywhere (a hand-built stack's) is no pile-up, nor a distribution narrower than
#: photon noise allows; a field clipped all over is found from its images (82 % clipped, the rest absorbed below)
PILE_UP_SPARED = 0.01
#: ... and only where the values are counts (their largest at least this): not transmission or optical density
PILE_UP_COUNTS = 50.0
#: ... and only where the counts below the pile are noisy as a detector's are (:func:`_noisy_below`): a uniform beam
#: with no or little noise (a hand-built or simulated stack) holds its whole background at one value, or within a few
#: counts, with the particles' counts far below, and was taken for a clip there (flats at the images' level refused
#: "saturated at 100 %"; flats 4 % brighter: 93 % of every frame filled, mean E50s 0.3-0.8 eV, 84-99 sigma, off). A
#: noise is white: its 6th differences along a row are as large as its 4th (each scaled to a white noise's sigma),
#: where a smooth shape's shrink with each order (the 2nd differences of clipped counts over spheres 5 px in radius
#: were 2-4 times their noise's: the 4th and 6th are not). At least this ratio: 0.98-1.04 below the clipped piles of
#: the inputs probe's scenes and of the tests' dialects, 0.99-1.01 in SSRL and Zeiss frames; 0.08-0.47 below
#: noise-free backgrounds (spheres of radius 20-5 px, blobs 0.12-0.22) ...
PILE_UP_WHITE = 0.75
#: ... of at least this many counts: rounding to whole counts is a white noise of 0.3 (0.4 below the review's
#: noise-free uint16 scene; 0.65 with 0.5 counts of Gaussian noise) ...
PILE_UP_NOISE_MIN = 1.0
#: ... and at least this many times the spread of the pile's values (their standard deviation): dark-subtracted
#: counts clip spread by the dark's pattern (2-3 counts in the tests' dialects and the probe's, 100-630 times narrower
#: than the noise below), where a peak of noise about a uniform background is about as wide as the noise below it
#: (1.0-1.3 times narrower with 0.5-2 counts of Gaussian noise) ...
PILE_UP_NOISE_WIDTHS = 3.0
#: ... measured over at least this many runs of 7 values below the pile along a row (fewer: taken for a clip, as
#: before), on at most about this many rows of each array (a block of frames: every so many of its rows)
PILE_UP_NOISE_RUNS = 100
PILE_UP_NOISE_ROWS = 256


#: the same pixels at full scale in every flat are named stuck or hot detector pixels only where they are few: at
#: most this many, or this share of the frame (a band of 6000 pixels, 15 % of the field, saturated in all 40 flats
#: was called "stuck or hot detector pixels, not an exposure too long")
STUCK_MAX, STUCK_MAX_SHARE = 16, 0.001


#: darks not one per frame are averaged into one dark for every frame and flat; said where their levels (the mean of
#: each dark's every 4th pixel about the darks' mean) spread by more than this many times the noise of such a level
#: ...
DARK_DRIFT_NOISE = 5.0
#: ... and by more than this share of the flats' level (flat minus dark): a camera's dark a few tenths of a count
#: apart over a million pixels is far beyond its noise and harmless. A dark drifting 3 % of the flats' level (150
#: counts of 5000) over a scan, averaged, moved every particle's E50 by -0.08 to -0.10 eV (7-11 sigma), 0.8 % (40
#: counts) by -0.02 to -0.03 eV; 0.2 % is about 0.006 eV
DARK_DRIFT_SHARE = 0.002
#: a frame holds only the dark (no beam, the shutter closed: a beam lost at the scan's end) where its median
#: transmission (counts less the dark, over the flat less the dark) is below this ...
NO_IMAGE_TRANSMISSION = 0.01
#: ... and within this many times its own noise (1.4826 MAD of the transmission) of zero (a frame of 0.5 % of the beam,
#: a partial refill, reads 0.0045 at a noise of 0.0009 and keeps its image; the dark alone reads 0 within its noise
#: over the square root of the pixels; 2 noise widths took a thick sample's frames at 600-2000 counts, OD 4.6-5.5,
#: for the dark: review r52). It was told by more than half its pixels
#: at or below the dark, which is a coin flip for the dark plus its read noise (49.7-50.2 % of the pixels of the
#: probe's dark-only frames): the frames unknown to be without an image, their optical density ln(flat / noise) ~7-8
#: with a noise texture, turned matrix separation on (texture 0.080 of the particles' contrast against 0.0019; every
#: mean E50 of synth seed 1 up to +0.38 eV, 4.2 sigma, off) and gave positions 7.5-12 px off
NO_IMAGE_NOISE = 0.5
#: pixels of a frame sampled (every n-th) for the test
NO_IMAGE_PROBE = 4096
#: darks of one value everywhere, this or less (zeros, as an export writes where it has no dark; ones), are a
#: placeholder, no measured dark (which holds the camera's offset and read noise): said as darks left out are ("dark
#: taken as 0"). A file whose /img_dark was all zeros passed unsaid (every mean E50 -0.02 to -0.04 eV, up to 7 sigma,
#: against its dark of ~100 counts), where the same file without /img_dark got that note. One value above it is kept
#: unsaid: it can be a real dark quantised (an 8-bit export of a dark of 100 +- 2 counts / 32 is 3 everywhere)
PLACEHOLDER_DARK_MAX = 1.0


def _per_frame(dark) -> bool:
    """Whether ``dark`` holds one dark per frame (n_frames, rows, cols), in memory or read lazily."""
    return getattr(dark, "ndim", 0) == 3


def _dark_at(dark, k):
    """Frame k's dark: ``dark`` itself where it is one for every frame (a number or one (rows, cols) frame), its
    frame k as float32 where it holds one per frame (:func:`_per_frame`)."""
    return np.asarray(dark[k], np.float32) if _per_frame(dark) else dark


def _per_frame_darks(darks, *, source, mean: bool):
    """Check darks of one per frame (``darks``: (n, rows, cols), in memory or read lazily) frame by frame, never
    converting the whole stack at once; with ``mean``, their mean (float32 (rows, cols)), else None.

    Raises
    ------
    XanestrackError
        Where a dark holds NaN/inf.
    """
    floating = np.dtype(darks.dtype).kind in "fc"
    if not (floating or mean):  # integer counts are finite: nothing to read here
        return None
    total = np.zeros(darks.shape[1:], np.float64) if mean else None
    for k in range(darks.shape[0]):
        d = np.asarray(darks[k])
        if floating and not np.all(np.isfinite(d)):
            raise XanestrackError(f"{source}: dark images contain NaN/inf (first in dark {k}, counted from 0)")
        if mean:
            total += d
    return (total / darks.shape[0]).astype(np.float32) if mean else None


def _placeholder_dark(darks) -> float | None:
    """The one value, :data:`PLACEHOLDER_DARK_MAX` or less, every pixel of every dark holds (``darks``: (rows, cols)
    or (n, rows, cols), in memory or read lazily); None where they hold another or more than one. Lazily read darks
    are read a frame at a time, the rest only where the first is such a placeholder."""
    first = np.asarray(darks[0] if darks.ndim == 3 else darks)
    if not first.size:
        return None
    v = first.flat[0]
    if not (np.isfinite(v) and v <= PLACEHOLDER_DARK_MAX) or np.any(first != v):
        return None
    for k in range(1, darks.shape[0] if darks.ndim == 3 else 1):
        if np.any(np.asarray(darks[k]) != v):
            return None
    return float(v)


def _averaged_darks_note(darks, n_frames: int, flat_level, source) -> str:
    """A note where darks not one per frame (``darks``: (m, rows, cols) float32, averaged into one for every frame)
    differ by more than their noise (:data:`DARK_DRIFT_NOISE`) and by a share of the flats' level that matters
    (:data:`DARK_DRIFT_SHARE`; ``flat_level``: the flats' median flat minus dark, None without flats: the noise
    alone decides); "" where they do not.

    Darks drifting 150 counts over a scan of flats of 5000 counts were averaged without a word: every particle's E50
    0.08-0.10 eV low, 7-11 times its sigma, the fractions up to 0.03 low.
    """
    m = darks.shape[0]
    if m < 2:
        return ""
    sample = darks[:, ::4, ::4].reshape(m, -1).astype(np.float64)
    dev = sample - sample.mean(axis=0)
    levels = dev.mean(axis=1)
    noise = float(np.median(dev.std(axis=1))) / np.sqrt(sample.shape[1])  # of one dark's level
    spread = float(levels.max() - levels.min())
    if not spread > DARK_DRIFT_NOISE * max(noise, 1e-12):
        return ""
    if flat_level is not None and not spread > DARK_DRIFT_SHARE * flat_level:
        return ""
    lo, hi = int(np.argmin(levels)), int(np.argmax(levels))
    share = f", {spread / flat_level:.1%} of the flats' level ({flat_level:.0f})" if flat_level else ""
    # darks without pixel noise (constant images, synthetic or clipped): "far beyond their noise (inf times" and a
    # RuntimeWarning of the division
    beyond = f"far beyond their noise ({spread / noise:.0f} times; " if noise > 0 else "and they hold no pixel noise ("
    return (
        f"{source}: {m} dark images for {n_frames} frames: not one per frame, so their mean is subtracted from every "
        f"frame and flat; but they differ by {spread:.3g} counts{share}, {beyond}"
        f"dark {lo} {levels[lo]:+.3g}, dark {hi} {levels[hi]:+.3g} about their mean, counted from 0): the "
        "camera's dark drifted while they were taken. A frame whose own dark was another leaves its transmission off "
        "by as much against its flat, changing over the scan (a dark drifting 3 % of the flats' level moved every "
        "particle's edge energy by about -0.1 eV): give one dark per frame (each is then subtracted from its own "
        "frame and flat)"
    )


def _saturated_flats_where(counts, most: float) -> str:
    """`` (up to 8.0% of one flat, centred near row 153, column 151)``: where the flats saturate (``counts``: per
    pixel, the flats saturated there), weighted by how often; empty without any."""
    if counts is None or not counts.any():
        return ""
    w = counts.astype(np.float64)
    rows, cols = np.indices(w.shape)
    y, x = (rows * w).sum() / w.sum(), (cols * w).sum() / w.sum()
    return f" (up to {most:.1%} of one flat, centred near row {y:.0f}, column {x:.0f})"


def _pile_up(arrays, mx=None):
    """``(value, band)`` where the values of ``arrays`` (one array, or a sample of frames pooled) pile up at their
    largest value as clipped counts do, or None: at :data:`FULL_SCALE_16BIT` or a 12- or 14-bit camera's full scale
    (:data:`SMALLER_FULL_SCALES`) :data:`PILE_UP_MIN` pixels or more at it; at any other largest value
    :data:`PILE_UP_ANY_MIN` or more, exactly at it or within a band below it (dark-subtracted counts:
    :data:`PILE_UP_BAND`, :data:`PILE_UP_ANY_DISTINCT`), with the counts the clip spared further below
    (:data:`PILE_UP_SPARED`), and :data:`PILE_UP_RATIO` times as many as in a band as wide just below, on the mean
    of :data:`PILE_UP_WIDTHS` (at a known full scale: within one count below), or at the next value present where
    those hold none; and with the values below it noisy, as a detector's counts are, not those of a uniform beam
    without noise (:func:`_noisy_below`). The saturated pixels are those at ``value`` (``band`` 0) or within
    ``band`` below it. ``mx``: their largest value, where known."""
    arrays = [np.asarray(a) for a in (arrays if isinstance(arrays, (list, tuple)) else [arrays])]
    # counts only: not 8-bit (its 255 is :func:`_saturated`'s), nor float16 (it holds no count of thousands exactly)
    arrays = [a for a in arrays if a.size and a.dtype.kind in "iuf" and a.itemsize >= (2 if a.dtype.kind != "f" else 4)]
    if not arrays:
        return None
    mx = max(_largest(a) for a in arrays) if mx is None else mx
    if mx < PILE_UP_COUNTS:
        return None
    cap = PILE_UP_BAND * np.sqrt(mx)
    integer = all(a.dtype.kind in "iu" for a in arrays)
    low = mx - 4 * (cap + 1)  # the widest band and three as wide below it

    def above(a, v):  # a >= v in a's own type: an integer array against a float converts it whole (2.5x the time)
        return a >= (a.dtype.type(np.ceil(v)) if a.dtype.kind in "iu" else a.dtype.type(v))

    with np.errstate(invalid="ignore"):
        near = np.sort(np.concatenate([a[above(a, low)].astype(np.float64) for a in arrays]))
    near = near[: np.searchsorted(near, mx, side="right")]  # not inf (a masked region)
    n_near = near.size
    further = []  # the number of pixels at the largest value below ``near``: found once, where asked

    def pile(band):
        """The pixels within ``band`` of the largest value; those in :data:`PILE_UP_WIDTHS` bands as wide just below
        it, per band (at the next value present where none); how many values the former hold. As wide: as many
        counts for integers (a band of 1 holds two), at least one count."""
        width = band + 1 if integer else max(band, 1.0)
        i = int(np.searchsorted(near, mx - band, side="left"))
        j = int(np.searchsorted(near, mx - band - PILE_UP_WIDTHS * width, side="left"))
        if n_near - i < PILE_UP_ANY_MIN:  # too few to be a pile (a zinger far above the rest): not looked below
            n_below = 0
        elif j < i:
            n_below = (i - j) / PILE_UP_WIDTHS
        elif i:  # down to the next value present (12-bit counts shifted into 16 bits: 16 apart)
            n_below = i - int(np.searchsorted(near, near[i - 1], side="left"))
        else:  # further down: the same frame tiled 4 x 4 had its largest value 16 times, 71 counts above the rest
            if not further:
                tops = []
                for a in arrays:
                    with np.errstate(invalid="ignore"):
                        r = ~above(a, low) & (a == a)  # a == a: not NaN
                    lowest = np.iinfo(a.dtype).min if a.dtype.kind in "iu" else -np.inf
                    if r.any():
                        tops.append(float(np.max(a, where=r, initial=lowest)))
                nxt = max(tops, default=None)
                further.append(0 if nxt is None else sum(int(np.count_nonzero(a == nxt)) for a in arrays))
            n_below = further[0]
        return n_near - i, n_below, 1 + int(np.count_nonzero(np.diff(near[i:])))

    if mx in (FULL_SCALE_16BIT, *SMALLER_FULL_SCALES):  # a known full scale: two pixels at it (a zinger clipped)
        n_top = n_near - int(np.searchsorted(near, mx, side="left"))
        n_below = int(np.searchsorted(near, mx, side="left") - np.searchsorted(near, mx - 1, side="left"))
        if n_top >= PILE_UP_MIN and n_top >= PILE_UP_RATIO * n_below:
            return mx, 0.0
    band = 0.0
    while band <= cap:
        n_top, n_below, n_values = pile(band)
        # a band holds many values (each count within it, for integers over a few counts) where the dark spread the pile
        many = not band or n_values >= (min(PILE_UP_ANY_DISTINCT, band + 1) if integer else PILE_UP_ANY_DISTINCT)
        if many and n_top >= PILE_UP_ANY_MIN and n_top >= PILE_UP_RATIO * n_below:
            size = sum(int(np.count_nonzero(np.isfinite(a))) if a.dtype.kind == "f" else a.size for a in arrays)
            with np.errstate(invalid="ignore"):
                spared = sum(int(np.count_nonzero(a < mx - 4 * cap - 1)) for a in arrays)
            if spared < PILE_UP_SPARED * size:
                return None
            # the pile's lower edge is the dark's spread: down to two bands (nearly full-well counts with it)
            edge = mx - 2.0 * band
            spread = float(np.std(near[np.searchsorted(near, edge, side="left") :])) if band else 0.0
            if not _noisy_below(arrays, edge, spread):
                return None  # a uniform beam without noise, not a clip (:data:`PILE_UP_WHITE`)
            return mx, 2.0 * band
        band = 1.0 if not band else 2.0 * band
    return None


def _row_noise(arrays, edge: float):
    """``(s4, s6)``: the noise of the values of ``arrays`` below ``edge``, from their 4th and 6th differences along
    the rows over runs of 7 such values, each the robust sigma (the median size) of a white noise that gives them
    (:data:`PILE_UP_WHITE`); None where there are fewer than :data:`PILE_UP_NOISE_RUNS` runs. At most about
    :data:`PILE_UP_NOISE_ROWS` rows of each array are read."""
    w4 = np.array([0.0, 1.0, -4.0, 6.0, -4.0, 1.0, 0.0])
    w6 = np.array([1.0, -6.0, 15.0, -20.0, 15.0, -6.0, 1.0])
    d4, d6 = [], []
    for a in arrays:
        rows = a.reshape(-1, a.shape[-1])
        if rows.shape[-1] < w6.size:
            continue
        rows = rows[:: max(1, rows.shape[0] // PILE_UP_NOISE_ROWS)].astype(np.float64)
        with np.errstate(invalid="ignore"):
            below = rows < edge  # not NaN (nor inf: above the largest finite value)
        n = rows.shape[-1] - w6.size + 1
        run = below[:, :n].copy()
        for i in range(1, w6.size):
            run &= below[:, i : i + n]
        if run.any():
            win = [rows[:, i : i + n][run] for i in range(w6.size)]
            d4.append(sum(c * x for c, x in zip(w4, win) if c))
            d6.append(sum(c * x for c, x in zip(w6, win)))
    if sum(x.size for x in d4) < PILE_UP_NOISE_RUNS:
        return None
    # the median size of N(0, s) is 0.6745 s; a 4th difference of white noise has sigma sqrt(70) s, a 6th sqrt(924) s
    s4 = float(np.median(np.abs(np.concatenate(d4)))) / (0.6745 * np.sqrt(70.0))
    s6 = float(np.median(np.abs(np.concatenate(d6)))) / (0.6745 * np.sqrt(924.0))
    return s4, s6


def _noisy_below(arrays, edge: float, spread: float) -> bool:
    """Whether the values of ``arrays`` below a pile (below ``edge``, its lowest value) are noisy as a detector's
    counts are, and their noise wide against the pile's ``spread`` (its values' standard deviation): only then is the
    pile a clip (:data:`PILE_UP_WHITE`, :data:`PILE_UP_NOISE_MIN`, :data:`PILE_UP_NOISE_WIDTHS`). True where too few
    values below can be measured (:func:`_row_noise`) to tell."""
    noise = _row_noise(arrays, edge)
    if noise is None:
        return True
    s4, s6 = noise
    return s6 >= PILE_UP_NOISE_MIN and s6 >= PILE_UP_WHITE * s4 and s6 >= PILE_UP_NOISE_WIDTHS * spread


def _largest(a) -> float:
    """The largest finite value of ``a`` (-inf where none): its maximum, or that of its finite values where it holds
    NaN or inf (a masked region) or none."""
    m = float(a.max()) if a.size else -np.inf
    if not np.isfinite(m) and a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        m = float(finite.max()) if finite.size else -np.inf
    return m


def _saturated(a, scale=None):
    """``(mask, value)`` of the saturated detector pixels of ``a`` (a block of frames, or flats): at the
    integer type's largest value, or, stored as float, at :data:`FULL_SCALE_16BIT` where nothing is above it
    (counts saved as float, flats averaged); else where the largest values pile up as clipped counts do
    (:func:`_pile_up`), or at ``scale`` (``(value, band)``: the pile-up of a sample of the flats or images,
    :func:`_full_scale`) where ``a`` reaches it and goes no higher; ``(None, None)`` where there are none."""
    a = np.asarray(a)
    if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and a.dtype.itemsize < 4) or not a.size:
        return None, None  # a float16 cannot hold 65535
    mx = _largest(a)
    top = np.iinfo(a.dtype).max if a.dtype.kind in "iu" else FULL_SCALE_16BIT
    if mx == top:  # as float, nothing above it (counts above 65535: it was not the detector's full scale)
        return a == top, top
    found = _pile_up(a, mx)
    if found is None and scale is not None and mx <= scale[0] + scale[1] / 2:  # higher: no full scale here
        found = scale
    if found is None:
        return None, None
    top, band = found
    with np.errstate(invalid="ignore"):
        sat = a == top if not band else a >= top - band
    if not sat.any():
        return None, None
    return sat, top


def _full_scale(flats, images):
    """``(value, band)``: where a sample of the flats (``flats``, a list of frames), else of the images, piles up
    (:func:`_pile_up`), or None. Every flat and block of frames is then saturated there where it reaches it: a flat
    clipped all over (one value everywhere) is no pile-up alone, nor a hot spot of a few pixels clipped, yet they are
    where the other frames clipped (a camera whose full well stops at 60000: the flats at 60000 in every pixel, the
    images over 82 % of theirs)."""
    return _pile_up(flats) or _pile_up(images)


def outside_field(refs):
    """The pixels outside the lit field (bool (rows, cols)), or None where there are none or too many.

    ``refs``: frames of the beam's intensity (flat minus dark, or transmission smoothed), float. A pixel below
    :data:`UNLIT_SHARE` of its frame's lit level (90th percentile) in every frame is unlit; the unlit pixels of
    solid regions (:data:`UNLIT_OPENING`) touching the frame's border are outside the field, unless they are more
    than :data:`MAX_UNLIT_SHARE` of it (then None: flats and darks swapped, the beam off).
    """
    from scipy import ndimage

    unlit = dim = None
    for r in refs:
        r = np.asarray(r, np.float32)
        some = r[::4, ::4]  # every 16th pixel sets the level
        some = some[np.isfinite(some)]
        level = float(np.percentile(some, 90)) if some.size else 0.0
        if not level > 0:
            return None
        with np.errstate(invalid="ignore"):
            u, d = ~(r > UNLIT_SHARE * level), ~(r > 0.5 * level)
        unlit, dim = (u, d) if unlit is None else (unlit & u, dim & d)
    if unlit is None or not unlit.any():
        return None
    square = np.ones((UNLIT_OPENING, UNLIT_OPENING), bool)
    # beyond the frame is unlit: a strip between the field and the frame's border, narrower than the square, stays
    solid = ndimage.binary_dilation(ndimage.binary_erosion(unlit, square, border_value=1), square)
    lab, _ = ndimage.label(solid)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.isin(lab, edge[edge > 0])
    # the opening shaves the region's rim, and a strip between the field and the frame's border as narrow as the
    # square: the pixels below half the lit level in every frame (the noise of unlit pixels, the field's penumbra)
    # joined to it there are outside too
    w = UNLIT_OPENING
    near = ndimage.binary_dilation(outside, iterations=w)
    near[:w], near[-w:], near[:, :w], near[:, -w:] = True, True, True, True
    lab, _ = ndimage.label(dim & near, structure=np.ones((3, 3)))
    joined = np.unique(lab[outside])
    outside = np.isin(lab, joined[joined > 0])
    if not outside.any() or outside.mean() > MAX_UNLIT_SHARE:
        return None
    return outside


#: the share of the pixels outside the field (unlit in the flats, :func:`outside_field`) that must be unlit in the
#: images as well (below :data:`UNLIT_SHARE` of their lit level) for them to be a field's edge: flats dead over a
#: band of 20 rows beside images lit there (flats taken wrong) were taken for an unlit field, and not refused
UNLIT_IN_IMAGES = 0.9


def _unlit_in_images(counts, dark, outside) -> bool:
    """Whether the pixels outside the field by the flats (``outside``) are unlit in up to 3 of the images too
    (:data:`UNLIT_IN_IMAGES`): the beam's field is the same in the flats and the images. ``dark``: one for every
    frame, or one per frame (:func:`_dark_at`)."""
    n = counts.shape[0]
    share = []
    for k in np.unique(np.linspace(0, n - 1, min(3, n)).round().astype(int)):
        img = np.subtract(np.asarray(counts[k]), _dark_at(dark, k), dtype=np.float32)
        lit = img[~outside]
        lit = lit[np.isfinite(lit)]
        level = float(np.percentile(lit, 90)) if lit.size else 0.0
        if not level > 0:
            return False
        with np.errstate(invalid="ignore"):
            share.append(float(np.mean(~(img[outside] > UNLIT_SHARE * level))))
    return bool(share) and min(share) >= UNLIT_IN_IMAGES


def _check_counts_beside_flats(counts, flat, source: str, outside=None) -> None:
    """Refuse images that are transmission or optical density already, given with flats of counts.

    Divided by flats of ~5400 counts, transmission images (0-1.1) gave an OD of 8.8 where 0.27 was measured,
    with no more than a note that the dark was taken as 0. Judged on every 4th pixel of up to 4 frames and their
    flats (see :data:`NOT_COUNTS_SHARE`), outside the field (``outside``: :func:`outside_field`) not: the
    FXI export of a round field, 0 +- 0.02 there (0.1 percentile -0.053, median 0.91), was called optical density.
    """
    n = counts.shape[0]
    ks = np.unique(np.linspace(0, n - 1, min(4, n)).round().astype(int))
    img = np.stack([np.asarray(counts[k], np.float32)[::4, ::4] for k in ks])
    ref = np.stack([np.asarray(flat[k if flat.shape[0] > 1 else 0], np.float32)[::4, ::4] for k in ks])
    if outside is not None:
        lit = ~outside[::4, ::4]
        img, ref = img[:, lit], ref[:, lit]
    frames = [f[np.isfinite(f)] for f in img.reshape(img.shape[0], -1)]
    img, ref = img[np.isfinite(img)], ref[np.isfinite(ref)]
    if not img.size or not ref.size:
        return
    f_med = float(np.median(ref))
    lo, med, hi = (float(v) for v in np.percentile(img, [0.1, 50, 99.9]))
    if not (f_med > FLAT_COUNTS_MIN and max(abs(lo), abs(hi)) < NOT_COUNTS_SHARE * f_med):
        return
    if lo >= 0 and hi <= 1.5 and med >= TRANSMISSION_LEVEL_MIN:
        like, values = "transmission I/I0 (background near 1)", "transmission"
    elif _absorbing_frames(frames):
        # I/I0 of frames at another exposure than their flats (2x above the edge: values 0.454 to 2.01, median 0.95)
        # was called optical density, and read so found none of 5 particles; read as transmission, every E50 as
        # measured (the scale of a frame is a constant optical density, taken out with the particles' background)
        levels = [float(np.median(f)) for f in frames if f.size]
        like = (
            f"transmission I/I0 (background at {min(levels):.3g} to {max(levels):.3g} from frame to frame, the "
            "particles below it: frames at another exposure than their flats?)"
        )
        values = "transmission"
    elif lo >= -1 and hi <= 10:
        like, values = "optical density", "od"
    else:
        like, values = "values normalised already", "od|transmission"
    raise XanestrackError(
        f"{source}: images of values {lo:.3g} to {hi:.3g} (median {med:.3g}) beside flats of {f_med:.3g} counts look "
        f"like {like}, not raw counts to divide by the flats; read them with `values` {values} and without "
        "`flats` or `darks` (an HDF5 file's own flat-field images are then not used)"
    )


def _absorbing_frames(frames) -> bool:
    """Whether every frame's values (finite, normalised already) look like transmission: its background (median) at
    :data:`TRANSMISSION_LEVEL_MIN` or more, nothing negative, and the particles below it, not above (its 0.1
    percentile further below the median than its 99.9 percentile is above). Optical density has its background near
    0 and its particles above it."""
    seen = False
    for f in frames:
        if not f.size:
            continue
        lo, med, hi = (float(v) for v in np.percentile(f, [0.1, 50, 99.9]))
        if not (lo >= 0 and med >= TRANSMISSION_LEVEL_MIN and med - lo > hi - med):
            return False
        seen = True
    return seen


def _brighter_than_flats(od, source: str) -> str:
    """A note where a share of the field is brighter than its flats (:data:`OD_BELOW_FLAT`), naming where.

    Flats 0.85 times too dark over a band of rows, or 0.5 times over the field (another exposure, beam current
    or scan), gave an OD 0.16-0.69 too low there, unremarked. Judged on the median of up to 5 frames (the
    particles move, the flats' mismatch stays) in blocks of :data:`ABOVE_FLAT_BIN` px.
    """
    n, rows, cols = od.shape
    b = ABOVE_FLAT_BIN
    r, c = rows // b * b, cols // b * b
    if not r or not c:  # a frame smaller than a block
        return ""
    ks = np.unique(np.linspace(0, n - 1, min(5, n)).round().astype(int))
    with warnings.catch_warnings():  # a block of saturated (NaN) pixels only: NaN, not below
        warnings.simplefilter("ignore", RuntimeWarning)
        blocks = [np.nanmean(od[k, :r, :c].reshape(r // b, b, c // b, b), axis=(1, 3)) for k in ks]
        med = np.nanmedian(np.stack(blocks), axis=0)
    low = med < OD_BELOW_FLAT
    if low.mean() <= ABOVE_FLAT_SHARE:
        return _bright_regions(med, source)
    ys, xs = np.flatnonzero(low.any(axis=1)), np.flatnonzero(low.any(axis=0))
    return (
        f"{source}: the images are brighter than their flats (optical density below {OD_BELOW_FLAT:g}, transmission "
        f"above {np.exp(-OD_BELOW_FLAT):.2f}) over {low.mean():.0%} of the field, within rows {ys[0] * b}-"
        f"{min((ys[-1] + 1) * b, rows) - 1}, columns {xs[0] * b}-{min((xs[-1] + 1) * b, cols) - 1} (median optical "
        f"density there {float(np.median(med[low])):.2f}): the flats do not belong to these images (another scan, "
        "exposure or beam current?); every optical density there is off by as much: give the flats taken with them"
    )


def _bright_regions(med, source: str) -> str:
    """A note naming the compact, particle-sized regions of ``med`` (the median frame's optical density in blocks
    of :data:`ABOVE_FLAT_BIN` px) well brighter than the flats (:data:`GHOST_OD`, :data:`GHOST_MIN_BLOCKS`,
    :data:`GHOST_MIN_FILL`): the sample, or debris, in the flats; "" where there are none.

    Flats taken with the sample partly in the beam left particle-shaped regions of optical density down to -0.70,
    2.1 % of the blocks below -0.05: under the share :func:`_brighter_than_flats` says (:data:`ABOVE_FLAT_SHARE`).
    """
    from scipy import ndimage

    b = ABOVE_FLAT_BIN
    lab, _ = ndimage.label(med < GHOST_OD, structure=np.ones((3, 3)))
    found = []
    for i, box in enumerate(ndimage.find_objects(lab), 1):
        inside = lab[box] == i
        area = int(inside.sum())
        if area < GHOST_MIN_BLOCKS or area < GHOST_MIN_FILL * inside.size:
            continue
        cy, cx = ndimage.center_of_mass(inside)
        found.append(
            (
                float(np.min(med[box][inside])),
                int(round((box[0].start + cy + 0.5) * b)),
                int(round((box[1].start + cx + 0.5) * b)),
                2 * np.sqrt(area * b * b / np.pi),
            )
        )
    if not found:
        return ""
    found.sort()
    where = "; ".join(
        f"around pixel ({y}, {x}) (row, column), about {d:.0f} px across, down to {od:.2f}" for od, y, x, d in found[:3]
    )
    return (
        f"{source}: {len(found)} compact region{'s' if len(found) > 1 else ''} of a particle's size brighter than the "
        f"flats (optical density below {GHOST_OD:g} in most frames): {where}{' ...' if len(found) > 3 else ''}: "
        "the flats may hold the sample (not all out of the beam when they were taken) or debris since gone; the "
        "optical density of whatever lies there is off by as much: give flats taken with the sample out of the field"
    )


def no_image_refusal(blank, n_frames: int, *, source, cause) -> str | None:
    """The refusal where half the frames or more (``blank``: their indices) hold no image, else None;
    ``cause``: the likely cause (a str, or a callable giving it, asked only when refusing).

    The stack's own rule (:func:`xanestrack.stack.sanitize_stack` refuses half its frames or more NaN) came
    too late for frames whose transmission was non-positive: set to their frame's strongest absorption, they
    passed it, and optical density given with flats, or int16 counts wrapped negative, ran to an empty output
    folder that looked complete, exit 0, the note saying every frame had "no beam, the shutter closed?".
    """
    blank = sorted(set(int(k) for k in blank))
    if not blank or 2 * len(blank) < n_frames:
        return None
    listed = ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else "")
    return (
        f"{source}: {len(blank)} of {n_frames} frames hold no image (more than half their pixels saturated, at or "
        f"below the dark, zero/negative or not finite; frames {listed}, counted from 0): "
        f"{cause() if callable(cause) else cause}"
    )


def _high_pass(img, *, lines_out: bool = False):
    from scipy import ndimage

    x = np.log(np.clip(np.asarray(img, np.float64), 1e-3, None))
    if lines_out:
        # a detector line (a stuck or dead column or row, in the images and the flats alike) correlates with itself
        # at any shift along it, and so does the halo the smoothing below draws beside it: the log image's rows'
        # and columns' medians out first (two stuck columns read 8-10 px "moving" from frame to frame)
        x = x - np.median(x, axis=0, keepdims=True)
        x = x - np.median(x, axis=1, keepdims=True)
    x = x - ndimage.gaussian_filter(x, 6.0)
    # a zinger, a dead pixel or a particle's edge does not set the correlation
    mad = float(np.median(np.abs(x - np.median(x)))) or 1e-12
    return np.clip(x, -5 * mad, 5 * mad)


def _ncc(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _frame_pattern_shifts(counts, flat, dark, flat_dark=None):
    """Where each of up to :data:`FLAT_MOVE_FRAMES` frames' pattern lies against its own flat.

    Parameters
    ----------
    counts : array (n_frames, rows, cols)
        Raw counts (read a frame at a time).
    flat : array (1 or n_frames, rows, cols)
        Flats: one for every frame, or one per frame.
    dark : float, ndarray (rows, cols) or (n_frames, rows, cols)
        The images' dark: one for every frame, or one per frame (:func:`_dark_at`).
    flat_dark : as ``dark``, optional
        The flats' dark (one per frame only beside flats of one per frame); ``dark`` where None.

    Returns
    -------
    ks : ndarray (m,) int
        The frames measured, spread over the scan.
    shifts : ndarray (m, 2) float
        px (rows, columns): where the frame's high-passed log pattern lies against its flat's (a sub-pixel peak of
        their cross-correlation within :data:`FLAT_SHIFT_SEARCH` px, on the central square of at most
        :data:`FLAT_MOVE_CROP` px a side).
    corr : ndarray (m,)
        Their normalised correlation at that peak (below :data:`FLAT_PATTERN_MIN`: flats without a pattern of
        their own, the shift means nothing).
    held : ndarray (m,) bool
        The frames set at their flat's place (0 shift): the pattern matches there within
        :data:`FLAT_MOVE_ZERO_SHARE` of the peak.
    """
    n, rows, cols = counts.shape
    ks = np.unique(np.linspace(0, n - 1, min(FLAT_MOVE_FRAMES, n)).round().astype(int))
    side = min(FLAT_MOVE_CROP, rows, cols)
    crop = np.s_[(rows - side) // 2 : (rows - side) // 2 + side, (cols - side) // 2 : (cols - side) // 2 + side]
    flat_dark = dark if flat_dark is None else flat_dark
    r = min(FLAT_SHIFT_SEARCH, (side - 1) // 2 - 1)

    def pattern(img, d):
        d = d[crop] if np.ndim(d) == 2 else d
        x = _high_pass(np.asarray(img)[crop].astype(np.float32) - d, lines_out=True)
        x -= x.mean()
        return np.fft.rfft2(x), float(np.sqrt((x * x).sum()))

    one = pattern(flat[0], _dark_at(flat_dark, 0)) if flat.shape[0] == 1 else None
    shifts = np.zeros((ks.size, 2))
    corr = np.zeros(ks.size)
    held = np.zeros(ks.size, bool)
    for i, k in enumerate(ks):
        fa, na = pattern(counts[k], _dark_at(dark, k))
        fb, nb = one if one is not None else pattern(flat[k], _dark_at(flat_dark, k))
        cc = np.fft.irfft2(fa * np.conj(fb), s=(side, side))
        near = np.roll(cc, (r, r), axis=(0, 1))[: 2 * r + 1, : 2 * r + 1]
        py, px = np.unravel_index(int(np.argmax(near)), near.shape)
        corr[i] = near[py, px] / (na * nb) if na * nb > 0 else 0.0
        # a parabola through the peak and its neighbours, along each axis
        sub = []
        for lo, mid, hi in (
            (near[py - 1, px], near[py, px], near[(py + 1) % near.shape[0], px]),
            (near[py, px - 1], near[py, px], near[py, (px + 1) % near.shape[1]]),
        ):
            den = lo - 2 * mid + hi
            sub.append(float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5)) if den < 0 else 0.0)
        shifts[i] = (py - r + sub[0], px - r + sub[1])
        # the pattern matching at its own place nearly as well as at the peak: no shift is told (a ripple of 40 px
        # lit alike on the images and their flats, the sample's own structure beside it, peaked 1.5-13.9 px off)
        if near[py, px] > 0 and near[r, r] >= FLAT_MOVE_ZERO_SHARE * near[py, px]:
            shifts[i] = 0.0
            held[i] = True
    return ks, shifts, corr, held


#: a frame's pattern is set at its flat's place where their correlation there is this share of its peak or more
#: (:func:`_frame_pattern_shifts`): the probe's rings of 18 px moved 3 px keep 0.59-0.82 of it there, moved 1.5 px
#: 0.89-0.96 (half of the frames still told); a ripple of 40 px lit alike on the images and their flats 0.95-1.00
#: (12 scenes)
FLAT_MOVE_ZERO_SHARE = 0.93


def _moving_pattern_note(counts, flat, dark, source: str, flat_dark=None) -> str:
    """A note where the flats' pattern lies off the images' frame by frame (:func:`_frame_pattern_shifts`), at
    least :data:`FLAT_MOVE_MIN` px in :data:`FLAT_MOVE_MIN_FRAMES` of the frames measured; "" where it does not."""
    ks, shifts, corr, held = _frame_pattern_shifts(counts, flat, dark, flat_dark)
    judged = corr >= FLAT_PATTERN_MIN
    off = np.hypot(shifts[:, 0], shifts[:, 1])
    far = judged & (off >= FLAT_MOVE_MIN)
    if far.sum() < min(FLAT_MOVE_MIN_FRAMES, ks.size):
        return ""
    # the shifts told (the frames set at their flat's place where the pattern matches there nearly as well as at
    # its peak are counted apart: a median over them read 0.0-0.9 px for rings moved 2 px in every frame)
    told = judged & ~held
    med = np.median(shifts[told], axis=0)
    spread = float(np.max(np.hypot(*(shifts[told] - med).T)))
    n_held = int((judged & held).sum())
    listed = ", ".join(
        f"{k} ({dy:+.1f}, {dx:+.1f})" for k, (dy, dx) in zip(ks[far][:6], shifts[far][:6], strict=True)
    ) + (" ..." if far.sum() > 6 else "")
    if spread >= FLAT_MOVE_MIN:
        how = (
            f"moving from frame to frame (by up to {spread:.1f} px about its median place): the beam's profile (its "
            "rings, fringes, the condenser's pattern) moved against the flats during the scan. The optical density "
            "carries the pattern the flats did not take out, moving over the field (taken for a matrix texture "
            "moving on its own over the particles, it biases their edge energies and fractions): take the flats "
            "closer in time to the images (one at each energy, right before or after it), or register each flat "
            "to its frame (shift it by its frame's shift) before dividing"
        )
    else:
        how = (
            "the same in every frame measured: the beam or the scintillator moved between the flats and the "
            "images. The optical density carries both patterns, fixed on the detector (taken for the matrix "
            f"behind the particles, it biases their edge energies): take flats again, or shift them by "
            f"({med[0]:+.1f}, {med[1]:+.1f}) px to the images"
        )
    held_words = (
        f"; {n_held} more matching at their flat's place within {FLAT_MOVE_ZERO_SHARE:.0%} of their best, set there"
        if n_held
        else ""
    )
    return (
        f"{source}: the images' pattern lies up to {off[told].max():.1f} px off the flats' pattern (median "
        f"{np.median(off[told]):.1f} px over {int(told.sum())} frames of {counts.shape[0]} set against their own "
        f"flat{held_words}; {int(far.sum())} at {FLAT_MOVE_MIN:g} px or more, frame (rows, columns), counted from 0: "
        f"{listed}), {how}"
    )


def _check_flat_pattern(counts, flat, dark, source: str, flat_dark=None) -> str:
    """Refuse flats whose pattern matches the images only turned or flipped; a note where it lies shifted.

    A stack saved rotated or flipped against its flats (or the flats against it) gave an OD that was the flat
    field's pattern, whose blobs were taken for particles and vouched for standing still, while the sample moved
    22 px (the real SSRL frames flipped: the high-passed log images correlate with the flats 0.025, as given
    0.948). Flats shifted against the images by a few pixels (the beam, the scintillator moved) leave both
    patterns in the OD, fixed to the detector, taken for the matrix behind the particles: E50 13 sigma off.
    Judged on the median of up to 5 frames (the sample moves, the pattern stays) against the median of their
    flats (of the first flat where there is one for all frames). A pattern that moves from frame to frame (the
    beam's profile or the condenser drifting during the scan) has its median at the flats' place: where that finds
    no shift, up to :data:`FLAT_MOVE_FRAMES` frames are set one by one against their own flat
    (:func:`_moving_pattern_note`). ``dark``, ``flat_dark``: the images' and the flats' darks, as for
    :func:`_frame_pattern_shifts`.
    """
    n = counts.shape[0]
    flat_dark = dark if flat_dark is None else flat_dark
    ks = np.unique(np.linspace(0, n - 1, min(5, n)).round().astype(int))
    # flats per frame: those of the same frames (a beam whose pattern moves with the energy, each frame's flat
    # right for it, was said to be shifted when the frames were set against the first flat alone)
    fks = ks if flat.shape[0] == n and n > 1 else np.zeros(1, int)
    if _per_frame(dark) or _per_frame(flat_dark):  # each frame less its own dark before their median
        img = np.median(np.stack([np.asarray(counts[k], np.float32) - _dark_at(dark, k) for k in ks]), axis=0)
        ref = np.median(np.stack([np.asarray(flat[k], np.float32) - _dark_at(flat_dark, k) for k in fks]), axis=0)
    else:
        img = np.median(np.stack([np.asarray(counts[k], np.float32) for k in ks]), axis=0) - dark
        ref = np.median(np.stack([np.asarray(flat[k], np.float32) for k in fks]), axis=0) - dark
    a, b = _high_pass(img), _high_pass(ref)
    turns = {
        "flipped up-down": lambda x: x[::-1],
        "flipped left-right": lambda x: x[:, ::-1],
        "turned by 180 degrees": lambda x: x[::-1, ::-1],
    }
    if a.shape[0] == a.shape[1]:
        turns.update(
            {
                "turned by 90 degrees": lambda x: np.rot90(x, 1),
                "turned by 270 degrees": lambda x: np.rot90(x, 3),
                "transposed": lambda x: x.T,
                "transposed across the other diagonal": lambda x: np.rot90(x, 2).T,
            }
        )
    as_given = _ncc(a, b)
    other = {name: _ncc(a, f(b)) for name, f in turns.items()}
    best = max(other, key=other.get)
    if other[best] >= FLAT_PATTERN_MIN and as_given < 0.3 * other[best]:
        raise XanestrackError(
            f"{source}: the flats' pattern matches the images only {best} (correlation {other[best]:.2f}; as given "
            f"{as_given:.2f}): the images and the flats were not saved the same way round. Save them alike, or "
            "turn one of them, and run again"
        )
    # where the images' pattern lies against the flats' (cross-correlation, within FLAT_SHIFT_SEARCH px)
    fa, fb = np.fft.rfft2(a - a.mean()), np.fft.rfft2(b - b.mean())
    cc = np.fft.irfft2(fa * np.conj(fb), s=a.shape)
    r = FLAT_SHIFT_SEARCH
    near = np.roll(np.roll(cc, r, axis=0), r, axis=1)[: 2 * r + 1, : 2 * r + 1]
    dy, dx = (int(v) - r for v in np.unravel_index(int(np.argmax(near)), near.shape))
    shifted = _ncc(a, np.roll(b, (dy, dx), axis=(0, 1))) if (dy, dx) != (0, 0) else as_given
    if (dy, dx) != (0, 0) and shifted >= FLAT_PATTERN_MIN and shifted >= 1.5 * max(as_given, 0.05):
        return (
            f"{source}: the flats' pattern lies ({-dy:+d}, {-dx:+d}) px (rows, columns) off the images' (correlation {shifted:.2f} "
            f"there, {as_given:.2f} as given): the beam or the scintillator moved between the flats and the images. "
            "The optical density carries both patterns, fixed on the detector (taken for the matrix behind the "
            f"particles, it biases their edge energies): take flats again, or shift them by ({dy:+d}, {dx:+d}) px to the images"
        )
    # a pattern moving back and forth between frames has its median at the flats' place: frame by frame
    return _moving_pattern_note(counts, flat, dark, source, flat_dark)


#: flats of one per frame whose pattern changes over the scan (the beam's profile, the monochromator's, the
#: condenser's) describe the illumination of each frame only as well as the sample's exposure had the flat's: where
#: the two differ (a flat-field ripple whose phase moved between them, beam wander), each frame's OD carries a
#: smooth residual pattern of the particles' size, different in every frame. The local background (a plane through a
#: ring) cannot follow its curvature under a particle: every pixel of it takes one error per frame, which no sigma
#: holds (``stress-counts`` seed 1, ripple phase sd 0.3 rad: 0.004-0.006 OD per frame under the particles, each
#: particle's mean E50 0.5 eV, 3-8 sigma, off, unsaid). The residual lies in the span of the flats' own changes
#: over the scan (their leading principal components, the "eigenflats" of dynamic flat-field correction: V.
#: Van Nieuwenhove et al., Opt. Express 23, 27975 (2015)), known under the particles as well: each frame's share of
#: them is fitted to its OD away from the particles (:func:`illumination_residual`) and taken out. At most this many
#: components ...
FLAT_RESIDUAL_MAX_COMPONENTS = 6
#: ... those whose singular value stands this many times above the flats' noise (the median singular value of the
#: later half: a flat's pixel noise, the same in every direction)
FLAT_RESIDUAL_SV_RATIO = 4.0
#: frames at least, for the components to mean anything
FLAT_RESIDUAL_MIN_FRAMES = 8
#: px: the flats' log is smoothed by a Gaussian of this sigma first, on a grid of at most :data:`FLAT_RESIDUAL_GRID` px
#: a side (binned: the pattern is smooth, the fit is per frame). The flats' photon noise goes into the components and
#: with them into every frame: at 2 px it left 0.0012 OD at scales under 4 px (``stress-counts`` at 600 counts), at
#: 4 px 0.0003-0.0006, but the positions of stress-all seed 1 came out worse at 4 px (0.11 -> 0.28 px RMS)
FLAT_RESIDUAL_SMOOTH_PX = 2.0
FLAT_RESIDUAL_GRID = 96
#: OD: the residual is taken out, and a run note says so, where the RMS over the frames and the lit field (less its
#: mean over the frames and a plane per frame, what the pre-edge and the local background take out anyway) of its part
#: that changes from frame to frame (:data:`FLAT_RESIDUAL_SMOOTH_FRAMES`) reaches this; below it the OD is left as it
#: was. Measured (full size, 143 x 460^2): ``stress-counts`` and ``stress-all`` seeds 1-2 (ripple phase sd 0.3 rad)
#: 0.0095-0.011, the other stress presets 0.0007-0.0010, the default and hard scenes 0.0001-0.0006
FLAT_RESIDUAL_NOTE_OD = 0.002
#: OD: a residual beyond this is no flat-field ripple (a flat that saturated over a patch, the sample in the flats)
#: and is left as it was
FLAT_RESIDUAL_MAX_OD = 0.05
#: frames: it is found where its part that changes from frame to frame (each frame's share of the flats' patterns
#: less its running median over this many frames) reaches :data:`FLAT_RESIDUAL_NOTE_OD` (the sample's own change
#: over the scan, monotonic or a step in the energy, takes a share that changes smoothly: :func:`_fit_residual`)
FLAT_RESIDUAL_SMOOTH_FRAMES = 9
#: frames spread over the scan on which it is decided first whether to measure it on all (scans of twice as many
#: frames or more) ...
FLAT_RESIDUAL_DECIDE_FRAMES = 24
#: ... OD: measured on all where those few give this much or more (half the note's floor; on 24 frames the default
#: and hard scenes 0.0001-0.0005, the other stress presets 0.0006-0.0009, ``stress-counts`` and ``-all`` 0.009-0.011)
FLAT_RESIDUAL_DECIDE_OD = 0.5 * FLAT_RESIDUAL_NOTE_OD


def _bin_mean(a, b: int):
    """``a`` (..., rows, cols) averaged over ``b`` x ``b`` blocks (rows and columns beyond a whole block left out)."""
    if b == 1:
        return a
    r, c = (a.shape[-2] // b) * b, (a.shape[-1] // b) * b
    x = a[..., :r, :c]
    return x.reshape(*x.shape[:-2], r // b, b, c // b, b).mean(axis=(-3, -1))


@dataclass(frozen=True)
class IlluminationResidual:
    """The smooth pattern by which each frame's illumination differed from its own flat's (:func:`measure_illumination`).

    Attributes
    ----------
    coefs : ndarray (n_frames, r) float64
        Each frame's share of the flats' ``r`` leading patterns of change, less its mean over the frames (0 in a
        frame without an image).
    components : ndarray (r, rows, cols) float32
        Those patterns at the frames' size (OD per unit share).
    rms_od : float
        Its RMS over the frames and the lit field, less its mean over the frames and a plane per frame.
    note : str
        What a run says of it.
    frame_levels : ndarray (n_frames,) or None
        Each frame's level (:func:`frame_levels`) as the reader handed the frames over: a Stack whose frames were put
        in another order since is refused (``pipeline._illumination_field``), as one of another shape is.

    Frame ``k``'s pattern is ``coefs[k] @ components`` (:meth:`frame`); :meth:`windows` gives it on a particle's
    aligned grid, where the pipeline takes it out of the frames its chemistry is measured on.
    """

    coefs: np.ndarray
    components: np.ndarray
    rms_od: float
    note: str
    frame_levels: np.ndarray | None = None

    @property
    def shape(self) -> tuple:
        """``(n_frames, rows, cols)`` of the frames it was measured on."""
        return (self.coefs.shape[0], *self.components.shape[1:])

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k``'s pattern (rows, cols), float32."""
        return np.tensordot(self.coefs[k], self.components, 1).astype(np.float32)

    def kept_for(self, od) -> IlluminationResidual:
        """The same with the levels of the frames ``od`` it goes with, as handed over (:func:`frame_levels`)."""
        return dataclasses.replace(self, frame_levels=frame_levels(od))

    def reversed(self) -> IlluminationResidual:
        """The same with the frames in reverse order."""
        levels = None if self.frame_levels is None else self.frame_levels[::-1].copy()
        return IlluminationResidual(self.coefs[::-1].copy(), self.components, self.rms_od, self.note, levels)

    def windows(self, origin, shifts, size: int) -> np.ndarray:
        """Each frame's pattern on an aligned grid (n_frames, size, size), float32.

        The aligned grid's pixel ``[i, j]`` is frame ``k``'s pixel ``origin + (i, j) + shifts[k]``
        (:func:`xanestrack.register.resample_windows`); the pattern is taken at the nearest whole pixel (it is smooth
        over :data:`FLAT_RESIDUAL_SMOOTH_PX` binned pixels: half a pixel moves it by a few 1e-4 of its size), its
        edge value carried beyond the frame. Frames without a shift (NaN) get 0.
        """
        n = self.coefs.shape[0]
        rows, cols = self.components.shape[1:]
        shifts = np.asarray(shifts, float)
        out = np.zeros((n, size, size), np.float32)
        ar = np.arange(size)
        for k in range(n):
            if not np.all(np.isfinite(shifts[k])) or not np.any(self.coefs[k]):
                continue
            iy = int(np.round(origin[0] + shifts[k, 0]))
            ix = int(np.round(origin[1] + shifts[k, 1]))
            if 0 <= iy and iy + size <= rows and 0 <= ix and ix + size <= cols:
                crop = self.components[:, iy : iy + size, ix : ix + size]
            else:
                ys, xs = np.clip(iy + ar, 0, rows - 1), np.clip(ix + ar, 0, cols - 1)
                crop = self.components[:, ys][:, :, xs]
            out[k] = np.tensordot(self.coefs[k], crop, 1)
        return out


def frame_levels(od) -> np.ndarray:
    """Each frame's level: the median of its finite pixels on a grid every 8 px (n_frames,), float64; NaN for a frame
    with none. What :attr:`IlluminationResidual.frame_levels` holds, to tell frames put in another order."""
    od = np.asarray(od)
    grid = od[:, ::8, ::8].reshape(od.shape[0], -1).astype(np.float64)
    with warnings.catch_warnings():  # a frame without a finite pixel: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(grid, axis=1)


def _robust_fit(y, use, design, grow: int):
    """Least squares of ``y`` on ``design`` (q, h, w) over ``use``, pixels more than 3 robust sigma off grown by
    ``grow`` and left out (three passes): the coefficients (q,), or None where too few pixels are left."""
    from scipy import ndimage

    q = design.shape[0]
    keep = use.copy()
    coef = None
    for _ in range(3):
        A = design[:, keep].T
        # normal equations: a constant, a plane and a few smooth patterns, well conditioned (lstsq took 5 ms a frame)
        try:
            coef = np.linalg.solve(A.T @ A, A.T @ y[keep])
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(A, y[keep], rcond=None)[0]
        res = np.where(use, y - np.tensordot(coef, design, 1), 0.0)
        sd = 1.4826 * np.median(np.abs(res[use] - np.median(res[use])))
        off = ndimage.binary_dilation(np.abs(res) > 3 * sd, iterations=grow)
        new = use & ~off
        if new.sum() < 10 * q or np.array_equal(new, keep):
            break
        keep = new
    return coef


def _running_median(x, window: int):
    """The running median of ``x`` (n, ...) along its first axis over ``window`` frames (odd), the ends extended."""
    half = window // 2
    if x.shape[0] == 0:
        return x
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0), axis=-1)


def _smooth_level(img, size: int):
    """``img``'s own smooth level: its running median over ``size`` px, taken on a grid 4 times coarser and brought
    back bilinearly (the median over 32 px of a 96-px grid took 0.16 s)."""
    from scipy import ndimage

    c = 4 if min(img.shape) >= 32 else 1
    level = ndimage.median_filter(_bin_mean(img, c), size=max(3, size // c), mode="nearest")
    return _upsampled(level[None], c, img.shape)[0]


def _upsampled(grids, b: int, shape):
    """``grids`` (m, h, w) on a grid ``b`` times coarser brought to ``shape`` (rows, cols): bilinear between the
    coarse pixels' centres, their edge values beyond them."""
    from scipy import ndimage

    if b == 1:
        return grids
    cy = (np.arange(shape[0]) + 0.5) / b - 0.5
    cx = (np.arange(shape[1]) + 0.5) / b - 0.5
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    return np.stack([ndimage.map_coordinates(g, [gy, gx], order=1, mode="nearest") for g in grids])


def _fit_residual(od, flat, flat_dark, outside, frames):
    """:func:`measure_illumination` on the frames ``frames`` (indices): ``(rms_frames, rms, coefs (len(frames), r),
    comp (r, hb, wb) binned, b, imaged)``, or None where it cannot be measured; ``rms_frames`` the RMS of the part
    that changes from frame to frame (each share less its running median over the frames), ``rms`` the whole's."""
    from scipy import ndimage

    rows, cols = od.shape[1:]
    n = len(frames)
    b = max(1, int(np.ceil(max(rows, cols) / FLAT_RESIDUAL_GRID)))
    lit = np.ones((rows, cols), bool) if outside is None else ~np.asarray(outside, bool)
    # pixels without an OD in some frame (saturated in the images or the flats, dead) are left out of the patterns;
    # a frame without an image (NaN nearly everywhere) is not fitted
    imaged = np.zeros(n, bool)
    for i, k in enumerate(frames):  # one frame's mask at a time (all of them at once: 150 MB at 143 x 1024^2)
        finite = np.isfinite(od[k])
        imaged[i] = finite.mean() > 0.5
        if imaged[i]:
            lit &= finite
    logs = []
    for k in frames:
        # binned first, then the log (the pattern is smooth at the grid's scale)
        f = np.subtract(np.asarray(flat[k]), _dark_at(flat_dark, k), dtype=np.float32)
        good = lit & np.isfinite(f) & (f > 0)
        if not good.all():
            f = np.where(good, f, np.median(f[good]) if good.any() else 1.0)
        logs.append(np.log(np.maximum(_bin_mean(f, b), 1e-12)))
    # (and their neighbours, that the smoothing below mixes with them)
    reach = int(np.ceil(2 * FLAT_RESIDUAL_SMOOTH_PX))
    small_lit = ndimage.binary_erosion(_bin_mean(lit.astype(np.float32), b) > 0.99, iterations=reach, border_value=1)
    if small_lit.sum() < 100 * (3 + FLAT_RESIDUAL_MAX_COMPONENTS):
        return None
    L = np.stack([ndimage.gaussian_filter(x, FLAT_RESIDUAL_SMOOTH_PX) for x in logs]).astype(np.float64)
    L -= np.array([x[small_lit].mean() for x in L])[:, None, None]
    X = (L - L.mean(axis=0))[:, small_lit]  # (n, pixels)
    # the principal components from the frames' Gram matrix (n x n; the SVD of X took 0.8 s at 143 frames)
    w, u = np.linalg.eigh(X @ X.T)
    order = np.argsort(w)[::-1]
    w, u = np.maximum(w[order], 0.0), u[:, order]
    sv = np.sqrt(w)
    noise = float(np.median(sv[sv.size // 2 :]))
    r = int(min(FLAT_RESIDUAL_MAX_COMPONENTS, np.count_nonzero(sv > FLAT_RESIDUAL_SV_RATIO * noise)))
    if r == 0:
        return None
    vt = (u[:, :r].T @ X) / sv[:r, None]
    hb, wb = L.shape[1:]
    comp = np.zeros((r, hb, wb))
    comp[:, small_lit] = vt
    yy, xx = np.mgrid[0:hb, 0:wb]
    base = np.stack([np.ones((hb, wb)), (yy - hb / 2) / hb, (xx - wb / 2) / wb])
    design = np.concatenate([base, comp])  # (3 + r, hb, wb)
    binned = np.stack([_bin_mean(od[k], b) for k in frames]).astype(np.float64)
    # the sample's absorbers, found on the mean of the frames (a particle faint in a pre-edge frame is not clipped
    # there, and its change over the edge entered the fit), left out of every frame's fit
    mean_od = np.nan_to_num(binned[imaged]).mean(axis=0) if imaged.any() else np.zeros((hb, wb))
    # against the sample's own smooth absorption (its median over a third of the field): over a matrix whose
    # thickness curves across the field (a bowl of 0-0.9 OD) a level for the whole field let particles into the fit,
    # whose edge then moved the patterns' shares from frame to frame (0.005-0.009 OD "found", images lit as flats)
    above = mean_od - _smooth_level(mean_od, max(15, max(hb, wb) // 3))
    level = np.median(above[small_lit])
    spread = 1.4826 * np.median(np.abs(above[small_lit] - level))
    grow = max(1, int(round(4 / b)))
    absorbers = ndimage.binary_dilation(above > level + 3 * spread, iterations=grow)
    free = small_lit & ~absorbers
    if free.sum() < 100 * (3 + r):
        free = small_lit
    coefs = np.zeros((n, r))
    for k in range(n):
        y = binned[k]
        use = free & np.isfinite(y)
        if not imaged[k] or use.sum() < 10 * design.shape[0]:
            continue
        coef = _robust_fit(y, use, design, grow)
        if coef is not None:
            coefs[k] = coef[3:]
    Q = np.linalg.qr(base[:, small_lit].T)[0]  # the plane's orthonormal basis over the lit field

    def size(c):
        """The RMS of the patterns' part ``c @ comp`` over the frames and the lit field, less a plane per frame (at
        the particles' scale) and its mean over the frames (an OD constant over the scan is the pre-edge's, and the
        sample's own texture away from the particles takes that share of the fit: 0.002 OD in the default scenes)."""
        sub = c @ comp[:, small_lit]
        sub = sub - (sub @ Q) @ Q.T
        sub = sub - sub.mean(axis=0)
        return float(np.sqrt(np.mean(sub**2)))

    rms = size(coefs)
    # the sample's own change over the scan away from the particles (a curved matrix thickness absorbing as E^-3, an
    # element of the matrix with its edge) takes a share of the flats' patterns too, one that changes with the energy
    # smoothly or in a step: a bowl of 0-0.9 OD lit as its flats had 0.012-0.019 OD "found" and every mean E50 moved
    # by up to 0.37 eV (10-15 sigma). So it is decided on the shares less their running median over the frames (a
    # monotonic change or a step passes a running median unchanged; a mismatch that differs frame by frame does not)
    hp = coefs.copy()
    hp[imaged] -= _running_median(coefs[imaged], FLAT_RESIDUAL_SMOOTH_FRAMES)
    rms_frames = size(hp)
    return rms_frames, rms, coefs, comp, b, imaged


def measure_illumination(
    od, flat, flat_dark, *, outside=None, source: str = "input", whole: bool = False, notes=None
) -> IlluminationResidual | None:
    """The residual illumination pattern of each frame that the flats' changes describe, or None.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols) float32
        Optical density of each frame against its own flat (not changed).
    flat : array (n_frames, rows, cols)
        The flats, one per frame (read a frame at a time).
    flat_dark : float, ndarray (rows, cols) or (n_frames, rows, cols)
        Their dark.
    outside : ndarray (rows, cols) bool, optional
        Pixels outside the lit field (left out).
    whole : bool
        Found where the whole of it reaches :data:`FLAT_RESIDUAL_NOTE_OD`, its part that changes smoothly over the
        scan included (``--dynamic-flats``: the user's word that the flats were not taken with the images), not
        where its part that changes from frame to frame does (the default).
    notes : list, optional
        By default, where only the whole reaches the floor (a share of the flats' patterns that changes smoothly
        over the scan: the sample's own absorption, or a mismatch that changes slowly, e.g. flats taken a fixed
        time after their images while the beam's ripple drifts), a note saying so is appended here; nothing is
        taken out.

    Returns
    -------
    :class:`IlluminationResidual`, or None where its part that changes from frame to frame is small (under
    :data:`FLAT_RESIDUAL_NOTE_OD`), the whole is beyond a ripple (:data:`FLAT_RESIDUAL_MAX_OD`), or it cannot be
    measured (too few frames, one flat, too little field).

    Notes
    -----
    ``ln(flat_k)`` less its mean over the frames (and each frame's own mean level: the beam's intensity is the
    pre-edge's) gives up to :data:`FLAT_RESIDUAL_MAX_COMPONENTS` principal components above the flats' noise
    (:data:`FLAT_RESIDUAL_SV_RATIO`). In each frame a constant, a plane and these components are fitted to the OD by
    least squares, robustly (pixels more than 3 robust sigma off the fit, grown by 4 px: particles and their halo,
    left out, found above the mean OD's own smooth level; three passes), and the components' part less its mean over
    the frames is the residual (the constant and the plane are the local background's, a pattern the same in every
    frame the pre-edge's; the sample's own texture away from the particles takes a share of the fit, nearly the same
    in every frame). The sample's own change over the scan (a matrix curving in thickness, absorbing as E^-3) takes a
    share that changes smoothly with the energy, a mismatch of the exposures one that changes from frame to frame: it
    is found on the shares less their running median over :data:`FLAT_RESIDUAL_SMOOTH_FRAMES` frames, and taken out
    whole. All of it on a grid of at most :data:`FLAT_RESIDUAL_GRID` px a side, decided on
    :data:`FLAT_RESIDUAL_DECIDE_FRAMES` frames first: 0.0-0.1 s for 143 frames of 460^2 where none is found, 0.65 s
    where one is.
    """

    n, rows, cols = od.shape
    if flat.shape[0] != n or n < FLAT_RESIDUAL_MIN_FRAMES:
        return None
    if n >= 2 * FLAT_RESIDUAL_DECIDE_FRAMES:
        # decided on a few frames spread over the scan first (the whole fit cost 0.5 s a 143 x 460^2 scan)
        few = np.unique(np.round(np.linspace(0, n - 1, FLAT_RESIDUAL_DECIDE_FRAMES)).astype(int))
        quick = _fit_residual(od, flat, flat_dark, outside, few)
        if quick is None or max(quick[0], quick[1] if whole or notes is not None else 0.0) < FLAT_RESIDUAL_DECIDE_OD:
            return None
    fit = _fit_residual(od, flat, flat_dark, outside, np.arange(n))
    if fit is None:
        return None
    rms_frames, rms, coefs, comp, b, imaged = fit
    r = comp.shape[0]
    logger.debug("illumination residual: %d components, rms %.4f OD (%.4f frame to frame)", r, rms, rms_frames)
    if rms > FLAT_RESIDUAL_MAX_OD:
        return None
    if rms_frames < FLAT_RESIDUAL_NOTE_OD and not whole:
        if rms >= FLAT_RESIDUAL_NOTE_OD and notes is not None:
            notes.append(
                f"{source}: the flats' patterns of change over the scan take a share of the images that changes "
                f"smoothly from frame to frame ({rms:.4f} OD RMS; {rms_frames:.4f} from frame to frame): the sample's "
                "own absorption changing over the scan (a thickness curving over the field), or the images' "
                "illumination off their flats' by a pattern that changes slowly (flats taken a fixed time after "
                "their images while the beam's profile drifts). Not taken out; where the flats were not taken with "
                "the images, --dynamic-flats takes it out of the frames"
            )
        return None
    if rms < FLAT_RESIDUAL_NOTE_OD:
        return None
    coefs -= coefs[imaged].mean(axis=0)
    coefs[~imaged] = 0.0
    full = _upsampled(comp, b, (rows, cols))  # the components at full size
    note = (
        f"{source}: the flats' pattern changes over the scan and the images' illumination differed from their "
        f"flats' by a smooth pattern of its own in each frame ({rms:.4f} OD RMS over the frames, less its mean and a "
        "plane per frame; a flat-field ripple or the beam's profile moved between the two exposures): measured as "
        f"each frame's share of the flats' {r} leading patterns of change, fitted away from the particles (left "
        "in, a particle's local background could not follow it under the particle and its edge energy took one "
        "error per frame, beyond its sigma). Flats taken at the same time as the images avoid it"
    )
    return IlluminationResidual(coefs, full.astype(np.float32), rms, note)


#: how the note of a residual taken out of the particles' chemistry ends (the default: the frames as given for
#: the positions) and of one taken out of the frames (``dynamic_flats``)
ILLUMINATION_CHEMISTRY = (
    ": taken out of each particle's frames before its chemistry, its positions measured on the frames as given "
    "(`--dynamic-flats`: out of the frames too)"
)
ILLUMINATION_FRAMES = ": taken out of each frame"


def illumination_residual(od, flat, flat_dark, *, outside=None, source: str = "input") -> tuple[np.ndarray, str]:
    """Take out of ``od`` the residual illumination pattern of each frame that the flats' changes describe
    (:func:`measure_illumination`).

    Returns
    -------
    (od, note): ``od`` changed in place, and ``note``; ``od`` as it was and ``note`` "" where the residual is
    small (:data:`FLAT_RESIDUAL_NOTE_OD`).
    """
    found = measure_illumination(od, flat, flat_dark, outside=outside, source=source, whole=True)
    if found is None:
        return od, ""
    for k in range(od.shape[0]):
        if np.any(found.coefs[k]):
            od[k] -= found.frame(k)
    return od, found.note + ILLUMINATION_FRAMES


def optical_density(
    counts,
    *,
    flats=None,
    darks=None,
    source: str = "input",
    notes=None,
    outside=None,
    unlit=None,
    dynamic_flats: bool = False,
    illumination=None,
) -> np.ndarray:
    """Optical density ``OD = -ln((I - dark) / (flat - dark))``, float32.

    Parameters
    ----------
    counts : array (n_frames, rows, cols)
        Raw transmitted intensity.
    flats : array (rows, cols), (1, rows, cols), (n_frames, rows, cols) or None
        Reference (sample-out) images; several per frame must be averaged before. With
        ``None`` the counts are taken to be already normalised transmission.
    darks : array (rows, cols) or (n, rows, cols) or None
        Dark images. One per frame (n = n_frames, in memory or read lazily as ``counts``) are paired with their
        frames: frame k and its flat less dark k (one flat for all frames less their mean); any other number is
        averaged into one for every frame and flat, with a note where they differ by more than their noise
        (:func:`_averaged_darks_note`).
    notes : list, optional
        What was repaired is appended here as well as logged (see :func:`repair_note`).
    outside : ndarray (rows, cols) bool, optional
        Without flats: the pixels outside the lit field (:func:`outside_field` of the transmission), set to
        the lit field's median optical density in every frame. With flats they are those unlit in every flat
        (:data:`UNLIT_SHARE`), found here and said in a note (:func:`unlit_note`); the value checks judge the lit
        pixels only.
    unlit : list, optional
        The pixels outside the lit field (bool (rows, cols), as ``outside`` above), where there are any, are
        appended here: the readers keep them as ``Stack.metadata["unlit"]``, where the pipeline flags a particle
        they cut ``out_of_view`` as the frame's border does.
    dynamic_flats : bool
        With one flat per frame: take out of each frame the smooth illumination pattern by which its exposure
        differed from its flat's, as its share of the flats' leading patterns of change over the scan
        (:func:`illumination_residual`; dynamic flat-field correction), where it is 0.002-0.05 OD RMS, with a note.
        Off by default: where it acts it moves positions by 0.01-0.05 px RMS (its estimate's own noise).
    illumination : list, optional
        With one flat per frame and without ``dynamic_flats``: that pattern is measured, not taken out
        (:func:`measure_illumination`), and where it is found its :class:`IlluminationResidual` is appended here,
        with a note: the readers keep it as ``Stack.metadata["illumination"]``, which the pipeline takes out of
        each particle's frames before its chemistry (the stress family's flats ripple with a phase of their own per
        frame: every mean E50 0.3-0.8 eV, 3-8 sigma, off without it).

    Returns
    -------
    ndarray (n_frames, rows, cols) float32. Pixels whose corrected sample intensity is
    <= 0 get the OD of the smallest positive transmission of their frame (a saturated
    absorber) and are counted in one warning. Pixels saturated in the images or in their
    flat (see :func:`_saturated`) are NaN, counted in a note. A frame that holds only the dark (:func:`_dark_only`:
    no beam, the shutter closed) or one count everywhere is NaN throughout, named in a note: the pipeline carries it
    as a frame without an image. Where a share of the field
    is brighter than its flats (:data:`OD_BELOW_FLAT`), or a compact region of a particle's
    size is (:data:`GHOST_OD`: the sample in the flats), a note says where.

    Raises
    ------
    ValueError
        On shape mismatches, NaN/inf in flats or darks, or a flat that is zero or
        negative after dark subtraction at more than :data:`MAX_DEAD_SHARE` of the pixels
        (the reference is unusable; fewer are dead pixels, NaN here); a flat saturated at
        more than :data:`MAX_SATURATED_FLAT_SHARE` of its pixels; images that are
        transmission or optical density beside flats of counts (:data:`NOT_COUNTS_SHARE`);
        half the frames or more without an image (:func:`no_image_refusal`); raw counts of a signed integer type
        (beside flats or darks), or flats, wrapped negative (:func:`wrapped_counts_refusal`).
    """
    if not _frame_indexable(counts):
        counts = np.asarray(counts)
    check_pixel_dtype(counts.dtype, source=source)
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise XanestrackError(f"{source}: counts must be (n_frames, rows, cols), got shape {counts.shape}")
    shape = counts.shape[1:]
    dark = np.float32(0.0)  # the images' dark: one for every frame, or (n_frames, rows, cols) one per frame
    averaged = None  # darks not one per frame, averaged into ``dark``: judged for a drift once the flats are known
    single_flat = flats is not None and (np.ndim(flats) == 2 or np.shape(flats)[0] == 1)
    mean = None  # the mean of darks of one per frame, the dark of one flat for every frame
    if darks is not None:
        darks = darks if _frame_indexable(darks) else np.asarray(darks)
        if darks.shape[-2:] != shape:
            raise XanestrackError(f"{source}: dark shape {darks.shape} does not match frames {shape}")
        if darks.ndim == 3 and darks.shape[0] == 0:
            raise XanestrackError(f"{source}: the dark images hold no image (an empty dataset); give darks, or none")
        placeholder = _placeholder_dark(darks)
        if placeholder is not None:
            said = (
                f"{source}: its dark images are {placeholder:g} everywhere, a placeholder rather than a measured dark "
                f"(which holds the camera's offset and read noise): dark taken as {placeholder:g} (right only where "
                "the images and flats were dark-subtracted already)"
            )
            if notes is not None:
                notes.append(said)
            else:
                logger.warning("%s", said)
        if darks.ndim == 3 and darks.shape[0] == counts.shape[0] > 1:
            # one per frame: each frame less its own dark, as flats of one per frame are paired with their frames. A
            # camera's dark drifting 150 counts over the scan (flats of 5000), averaged, moved every particle's E50
            # by -0.08 to -0.10 eV (7-11 sigma), unsaid. Used a block of frames at a time, never converted whole (a
            # 143 x 1024^2 stack as float32 is 572 MiB)
            mean = _per_frame_darks(darks, source=source, mean=single_flat)
            dark = darks
        else:
            darks = np.asarray(darks, dtype=np.float32)
            if not np.all(np.isfinite(darks)):
                raise XanestrackError(f"{source}: dark images contain NaN/inf")
            averaged = darks.reshape(-1, *shape)
            dark = averaged.mean(axis=0)
    # the flats' dark: a flat of one per frame less its frame's dark; one flat for every frame (its time unknown)
    # less the darks' mean, which is off its own dark by the same in every frame (an optical density constant over
    # the scan, taken out with the pre-edge)
    flat_dark = mean if _per_frame(dark) and single_flat else dark
    if flats is None:
        flat = np.broadcast_to(np.float32(1.0) + (0.0 if _per_frame(dark) else dark), (1, *shape))
        flat_dark = np.float32(0.0) if _per_frame(dark) else dark
        if outside is not None and (outside.shape != shape or not outside.any()):
            outside = None
    else:
        flat = (
            flats if _frame_indexable(flats) else np.asarray(flats)
        )  # kept in its stored type: converted a frame at a time
        if flat.ndim == 2:
            flat = flat[None]
        if flat.shape[-2:] != shape or flat.shape[0] not in (1, counts.shape[0]):
            raise XanestrackError(
                f"{source}: flats of shape {flat.shape} do not match {counts.shape[0]} frames of {shape}; "
                "give one flat for all frames or one per frame"
            )
        # the pixels unlit in every flat (up to 5 of them): outside the beam's field, left out
        ks = np.unique(np.linspace(0, flat.shape[0] - 1, min(5, flat.shape[0])).round().astype(int))
        if np.issubdtype(flat.dtype, np.signedinteger):  # wrapped flats were "flats and darks swapped?"
            f = np.stack([np.asarray(flat[k]) for k in ks])
            neg = f[f < 0]
            if neg.size:
                refusal = wrapped_counts_refusal(
                    neg.size,
                    f.size,
                    int(neg.min()),
                    int(neg.max()),
                    flat.dtype,
                    source=source,
                    what="flat (reference) images",
                )
                if refusal:
                    raise XanestrackError(refusal)
        outside = outside_field(np.subtract(np.asarray(flat[k]), _dark_at(flat_dark, k), dtype=np.float32) for k in ks)
        if outside is not None and not _unlit_in_images(counts, dark, outside):
            outside = None  # lit in the images, dark in the flats alone: the flats are at fault (refused below)
        _check_counts_beside_flats(counts, flat, source, outside)
    # the counts' full scale where it is not the type's (int32, dark-subtracted float, a full well below 65535): from
    # a sample of the flats and images, so that a flat or frame clipped at it over a few pixels, or over all, is too
    full_scale = None
    if flats is not None:
        kc = np.unique(np.linspace(0, counts.shape[0] - 1, min(5, counts.shape[0])).round().astype(int))
        full_scale = _full_scale([np.asarray(flat[k]) for k in ks], [np.asarray(counts[k]) for k in kc])
    if averaged is not None:
        level = None
        if flats is not None:
            lit = np.subtract(np.asarray(flat[0]), flat_dark, dtype=np.float32)[::4, ::4]
            lit = lit[np.isfinite(lit)] if outside is None else lit[~outside[::4, ::4] & np.isfinite(lit)]
            level = float(np.median(lit)) if lit.size else None
        drift = _averaged_darks_note(averaged, counts.shape[0], level, source)
        if drift:
            if notes is not None:
                notes.append(drift)
            else:
                logger.warning("%s", drift)
        averaged = None

    one_ref = None  # one reference for every frame: formed once

    def check(k, r):
        """Why frame k's reference is unusable, or None (a few dead pixels are not a reason)."""
        if flats is not None and not np.all(np.isfinite(r)):
            return f"{source}: flat (reference) images contain NaN/inf"
        bad = r <= 0
        if outside is not None:
            bad &= ~outside
        if bad.sum() > MAX_DEAD_SHARE * bad.size:
            idx = (k if flat.shape[0] > 1 else 0, *np.argwhere(bad)[0])
            return (
                f"{source}: flat minus dark is zero or negative at {int(bad.sum())} pixels "
                f"(first at frame/row/col {tuple(int(i) for i in idx)}); the reference is unusable "
                "there: check that flats and darks are not swapped and the beam was on (a field of view lit over "
                f"less than {1 - MAX_UNLIT_SHARE:.0%} of the frame: crop the frames to it)"
            )
        return None

    def saturated_flat(k, f):
        """The saturated pixels of frame k's flat ``f`` (or None), and why it is unusable (or None)."""
        sat, top = _saturated(f, full_scale) if flats is not None else (None, None)
        if sat is None:
            return None, None
        n_pix = int(sat.sum())
        with tally:
            flat_sat[0] += n_pix
            flat_sat[1] += 1
            flat_sat[2] = top
            flat_sat[5] = max(flat_sat[5], float(sat.mean()))
            flat_sat[6] = sat.astype(np.int32) if flat_sat[6] is None else flat_sat[6] + sat
            # the same pixels in every flat: stuck or hot detector pixels, not an exposure too long
            if flat_sat[3] is None:
                flat_sat[3] = sat.copy()
            elif flat_sat[4] and not np.array_equal(sat, flat_sat[3]):
                flat_sat[4] = False
        if sat.mean() > MAX_SATURATED_FLAT_SHARE:
            return sat, (
                f"{source}: the flat (reference) image{f' of frame {k}' if flat.shape[0] > 1 else ''} is saturated "
                f"(value {top:g}) at {sat.mean():.0%} of its pixels: the beam's intensity is unknown there; take the "
                "flats again with a shorter exposure"
            )
        return sat, None

    # saturated pixels in the flats, flats with any, the value, the first such flat's pixels, all flats alike so far
    # ..., the largest share of one flat saturated, how many flats each pixel is saturated in
    flat_sat = [0, 0, None, None, True, 0.0, None]
    # the counts are added to from the threads of the blocks below: `n[0] += a.sum()` reads n, releases the GIL in
    # the sum and can write n back over what another thread added meanwhile
    tally = threading.Lock()
    one_sat = None  # the saturated pixels of the one reference for every frame
    if flat.shape[0] == 1:  # one reference for every frame: formed and checked once
        one_ref = np.subtract(flat[0], flat_dark, dtype=np.float32)
        problem = check(0, one_ref)
        one_sat, sat_problem = saturated_flat(0, np.asarray(flat[0]))
        if problem or sat_problem:
            raise XanestrackError(problem or sat_problem)
    if flats is not None:
        offset_note = _check_flat_pattern(counts, flat, dark, source, flat_dark)
        if offset_note:
            if notes is not None:
                notes.append(offset_note)
            else:
                logger.warning("%s", offset_note)

    out = np.empty(counts.shape, np.float32)
    saturation = [None]  # the value at which the images saturated
    n_sat = [0]
    sat_frames = []
    constant = []  # (frame, count) of frames of one count everywhere
    dark_only = []  # frames holding only the dark (:func:`_dark_only`)
    dark_max = None if _per_frame(dark) else float(np.max(dark))  # one per frame: each frame's own, where asked
    n_dead = [0]
    problems = {}
    # raw counts of a signed type below 0 (unsigned counts wrapped around): how many, the lowest, the highest
    signed = np.issubdtype(counts.dtype, np.signedinteger) and (flats is not None or darks is not None)
    wrapped = [0, 0, -(1 << 62)]

    def block(k0, k1):
        """Frames k0..k1-1 to OD in ``out``; their counts of replaced pixels. A block of frames per
        numpy call: each call takes the GIL again, and while the pipeline's libraries are imported in
        another thread (a shared library's loading holds it for long) a frame at a time waited 2.2 s
        for what takes 0.23 s (143 x 460^2)."""
        t = out[k0:k1]
        c = np.asarray(counts[k0:k1])
        d = np.asarray(dark[k0:k1]) if _per_frame(dark) else dark  # as stored: converted in the subtraction
        if one_ref is not None:
            r, f_sat = one_ref, one_sat
        else:
            f = np.asarray(flat[k0:k1])
            r = np.subtract(f, d if _per_frame(flat_dark) else flat_dark, dtype=np.float32)
            f_sat = None
            for i in range(k1 - k0):
                sat_i, sat_problem = saturated_flat(k0 + i, f[i])
                problem = check(k0 + i, r[i]) or sat_problem
                if problem:
                    problems[k0 + i] = problem
                    return [0] * (k1 - k0)
                if sat_i is not None:
                    f_sat = np.zeros(f.shape, bool) if f_sat is None else f_sat
                    f_sat[i] = sat_i
        if signed:
            neg = c[c < 0]
            if neg.size:
                with tally:
                    wrapped[0] += neg.size
                    wrapped[1] = min(wrapped[1], int(neg.min()))
                    wrapped[2] = max(wrapped[2], int(neg.max()))
        np.subtract(c, d, out=t, dtype=np.float32, casting="unsafe")
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(t, r, out=t)
        lost = [i for i in range(k1 - k0) if _dark_only(t[i])]
        # a dead pixel of the reference measured no transmission (the defect pass fills it)
        dead = r <= 0
        if outside is not None:
            dead &= ~outside
        if dead.any():
            t[np.broadcast_to(dead, t.shape)] = np.nan
            most = int(dead.reshape(-1, *shape).sum(axis=(1, 2)).max())
            with tally:
                n_dead[0] = max(n_dead[0], most)
        # a saturated detector pixel has no valid count: NaN (repaired downstream); one of the flat's leaves the
        # transmission there unknown as well
        sat, top = _saturated(c, full_scale)
        clipped = None  # clipped in the image, not in its flat
        if sat is not None:
            n_pix = int(sat.sum())
            with tally:
                n_sat[0] += n_pix
            saturation[0] = top
            sat_frames.extend(k0 + i for i in np.flatnonzero(sat.any(axis=(1, 2))))
            clipped = sat if f_sat is None else sat & ~np.broadcast_to(f_sat, t.shape)
        if f_sat is not None:
            sat = np.broadcast_to(f_sat, t.shape) | (False if sat is None else sat)
        if c.dtype.kind == "f":
            # NaN / inf counts (a masked region) are unknown as well: NaN, filled from their neighbours downstream.
            # They were given the frame's strongest absorption and called zero transmission (a 3 x 3 block inside
            # a particle: its E50 0.2-0.4 eV high, kept by the quality mask)
            nonfinite = ~np.isfinite(c)
            if nonfinite.any():
                sat = nonfinite if sat is None else (sat | nonfinite)
        if sat is not None:
            t[sat] = 1.0
        if outside is not None:  # outside the field: no absorption here, the lit field's median below
            t[:, outside] = 1.0
        if t.min() > 0 and np.isfinite(t.sum()):  # nothing to replace: the whole block at once
            np.log(t, out=t)
            np.negative(t, out=t)
            n_bad = [0] * (k1 - k0)
        else:
            n_bad = [transmission_to_od(t[i]) for i in range(k1 - k0)]
        if sat is not None:
            t[sat] = np.nan
        if clipped is not None:
            for i in np.flatnonzero(clipped.any(axis=(1, 2))):
                _fill_clipped(t[i], clipped[i])
        if outside is not None:  # the lit field's median: with OD 0 there (a step) the probe's particle whose
            # outline comes within 5 px of the field's edge was 0.078 px RMS off, 0.042 px with the median (0.043 lit)
            for i in range(k1 - k0):
                t[i][outside] = np.nanmedian(t[i][~outside])
        # a frame of one count everywhere (a readout fault, a frame the software filled) holds no image;
        # its OD would be the flat field's pattern, where particles were placed 4 px off (vouched for by
        # nothing, but measured): NaN, carried as a frame without an image (its positions interpolated)
        flat_c = c.reshape(c.shape[0], -1)
        probe = flat_c[:, :: max(1, flat_c.shape[1] // 4096)]
        # (one at or below the dark is the shutter closed, said by repair_note)
        for i in np.flatnonzero(probe.min(axis=1) == probe.max(axis=1)):
            if flat_c[i].min() == flat_c[i].max() and flat_c[i, 0] > (
                float(np.max(d[i])) if dark_max is None else dark_max
            ):
                t[i] = np.nan
                constant.append((k0 + int(i), float(flat_c[i, 0])))
        for i in lost:  # NaN: carried as a frame without an image (its pixels not counted as repaired)
            if not np.isnan(t[i]).all():
                t[i] = np.nan
                n_bad[i] = 0
                with tally:
                    dark_only.append(k0 + i)
        return n_bad

    # numpy releases the GIL in these ufuncs: blocks of frames in parallel threads
    from concurrent.futures import ThreadPoolExecutor

    n = counts.shape[0]
    per_block = OD_BLOCK_PIXELS // max(shape[0] * shape[1], 1)
    step = max(1, min(per_block, -(-n // 4)))  # 4 blocks at least: work for every thread
    blocks = [(k, min(k + step, n)) for k in range(0, n, step)]
    workers = min(4, os.cpu_count() or 1, len(blocks))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            per_frame = [b for part in ex.map(lambda kk: block(*kk), blocks) for b in part]
    else:
        per_frame = [b for kk in blocks for b in block(*kk)]
    n_bad = sum(per_frame)
    if problems:
        raise XanestrackError(problems[min(problems)])
    dark_only.sort()
    blank = [k for k, b in enumerate(per_frame) if b > shape[0] * shape[1] / 2] + [k for k, _ in constant] + dark_only
    refusal = no_image_refusal(blank, n, source=source, cause=lambda: _no_image_cause(counts, flats is not None, blank))
    if refusal:
        raise XanestrackError(refusal)
    # fewer frames without an image (the 6.8 % wrapped of the probe's ran to the end): the wrap said all the same
    refusal = wrapped[0] and wrapped_counts_refusal(
        wrapped[0],
        int(np.prod(counts.shape)),
        wrapped[1],
        wrapped[2],
        counts.dtype,
        source=source,
        flat_top=None if flats is None else max(float(np.asarray(flat[k]).max()) for k in ks),
    )
    if refusal:
        raise XanestrackError(refusal)
    if outside is not None and unlit is not None:
        unlit.append(np.array(outside, bool))
    said = []
    if outside is not None and flats is not None:  # without flats the caller says it
        said.append(unlit_note(outside, source, "in every flat (reference) image"))
    if n_dead[0]:
        said.append(dead_note(n_dead[0], source))
    if n_sat[0]:
        said.append(
            f"{source}: {n_sat[0]} saturated detector pixels (value {saturation[0]:g}) in {len(sat_frames)} frames: no "
            "count measured there; filled from the pixels around them (a particle's position or spectrum taken there is "
            "less sure: lower the exposure)"
        )
    few = flat_sat[3] is not None and flat_sat[3].sum() <= max(STUCK_MAX, STUCK_MAX_SHARE * flat_sat[3].size)
    if flat_sat[0] and flat.shape[0] > 1 and flat_sat[1] == flat.shape[0] and flat_sat[4] and few:
        # four stuck pixels in all 60 flats were "240 saturated detector pixels ...: lower the exposure of the flats"
        said.append(
            f"{source}: {int(flat_sat[3].sum())} pixels at the detector's full scale ({flat_sat[2]:g}) in every flat "
            "(reference) image, the same ones: stuck or hot detector pixels, not an exposure too long; the "
            "transmission there is unknown, filled from the pixels around them"
        )
    elif flat_sat[0]:
        n_flats = flat.shape[0]
        said.append(
            f"{source}: {flat_sat[0]} saturated detector pixels (value {flat_sat[2]:g}) in "
            f"{f'{flat_sat[1]} of the {n_flats} flat (reference) images' if n_flats > 1 else 'the flat (reference) image'}: "
            f"the beam's intensity, so the transmission, unknown there{_saturated_flats_where(flat_sat[6], flat_sat[5])}; "
            "filled from the pixels around them, a wide "
            "patch from its rim, and a particle's pixels that lay in such a patch are flagged filled (a particle's "
            "position or spectrum taken there is less sure: lower the exposure of the flats)"
        )
    if n_bad:
        said.append(repair_note(per_frame, shape, source=source, what="after dark subtraction"))
    if constant:
        constant.sort()
        listed = ", ".join(f"{k} ({v:g})" for k, v in constant[:10]) + (" ..." if len(constant) > 10 else "")
        said.append(
            f"{source}: input frame{'s' if len(constant) > 1 else ''} {listed} (counted from 0) "
            f"{'hold' if len(constant) > 1 else 'holds'} one count in every pixel: no image there (a readout fault?); "
            "carried as frames without an image"
        )
    if dark_only:
        listed = ", ".join(map(str, dark_only[:10])) + (" ..." if len(dark_only) > 10 else "")
        said.append(
            f"{source}: input frame{'s' if len(dark_only) > 1 else ''} {listed} (counted from 0) "
            f"{'hold' if len(dark_only) > 1 else 'holds'} only the dark (counts within their noise of it or below, under "
            f"{NO_IMAGE_TRANSMISSION:.0%} of the flat's): no image there (no beam, the shutter closed?); carried as "
            "frames without an image, their positions interpolated"
        )
    per_frame_flats = flats is not None and flat.shape[0] == counts.shape[0] > 1 and not problems
    if dynamic_flats and per_frame_flats:
        out, residual = illumination_residual(out, flat, flat_dark, outside=outside, source=source)
        if residual:
            said.append(residual)
    elif illumination is not None and per_frame_flats:
        found = measure_illumination(out, flat, flat_dark, outside=outside, source=source, notes=said)
        if found is not None:
            illumination.append(found)
            said.append(found.note + ILLUMINATION_CHEMISTRY)
    if flats is not None:
        brighter = _brighter_than_flats(out, source)
        if brighter:
            said.append(brighter)
    for note in said:
        if notes is not None:  # the caller shows them (the CLI prints the input's notes)
            notes.append(note)
        else:
            logger.warning("%s", note)
    return out


#: the share of the raw counts of a signed integer type (int16, int32) that may be negative before the images are
#: refused as unsigned counts stored signed, wrapped around (a count is never negative: a few, from a camera that
#: subtracts its own offset, pass). A 16-bit camera at up to ~35,000 counts saved as int16 (synth seed 5, 256^2,
#: 60 energies) had 6.8 % of its pixels wrapped: run to the end with notes of "zero/negative transmission", "no
#: beam, the shutter closed?" and 4298 "zingers", 3 of 4 mean E50s withheld
WRAPPED_SHARE = 1e-4
#: ... and the lowest of them at or below this: a 16-bit count just above 32767 stored as int16 is -32768 and up, and
#: counts that cross 32767 wrap to near -32768 (the probe's: -32764); a camera's noise about its own subtracted
#: offset never goes so low, nor does optical density x 1000 as int16 (synth seed 1, 128^2, against its background:
#: -95 to 975, 49 % negative)
WRAPPED_BELOW = -16384


def wrapped_counts_refusal(
    n_negative: int, n_values: int, low: int, high: int, dtype, *, source, what: str = "images", flat_top=None
) -> str | None:
    """The refusal for raw counts of a signed integer ``dtype`` of which ``n_negative`` of ``n_values`` are negative
    (from ``low`` to ``high``), more than :data:`WRAPPED_SHARE`: unsigned 16-bit counts stored as signed, their values
    above 32767 wrapped around (the lowest at or below :data:`WRAPPED_BELOW`); else None. ``flat_top``: the flats'
    largest count, said where it is above 32767."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.signedinteger) or n_negative <= WRAPPED_SHARE * max(n_values, 1):
        return None
    if low > WRAPPED_BELOW:
        return None
    seen = f"{source}: {n_negative} of the {dtype} counts of its {what} ({n_negative / n_values:.2%}) are negative"
    if low < -32768:  # not 16-bit counts wrapped
        return f"{seen} ({low} to {high}): a count never is; save the detector's counts unsigned and run again"
    top = f"; the flats reach {flat_top:.0f}" if flat_top is not None and flat_top > 32767 else ""
    return (
        f"{seen} ({low} to {high}): 16-bit counts above 32767 stored as signed wrap around (as uint16 these are "
        f"{low + 65536} to {high + 65536}{top}); save the {what} as uint16 (numpy: a.astype(np.uint16) restores "
        "them) and run again"
    )


#: the share of a reference's pixels that may be zero or negative after dark subtraction (dead
#: detector pixels: no transmission measured there, filled from their neighbours by the defect
#: pass of :func:`xanestrack.io.read_stack`); beyond it the reference is refused as unusable
#: (flats and darks swapped, the beam off while the flats were taken)
MAX_DEAD_SHARE = 0.01


def _dark_only(t) -> bool:
    """Whether a frame of transmission ``t`` (counts less the dark over the flat less the dark; NaN / inf where
    unknown) holds only the dark: its median under :data:`NO_IMAGE_TRANSMISSION` and within :data:`NO_IMAGE_NOISE`
    times its own noise of zero (at or below zero at once), judged on every n-th pixel (:data:`NO_IMAGE_PROBE`).
    Not the share of its pixels at or below the dark: that is half of them, give or take, for the dark and its
    read noise (:data:`NO_IMAGE_NOISE`)."""
    v = t.reshape(-1)[:: max(1, t.size // NO_IMAGE_PROBE)]
    v = v[np.isfinite(v)]
    if not v.size:
        return False
    med = float(np.median(v))
    if med >= NO_IMAGE_TRANSMISSION:
        return False
    noise = 1.4826 * float(np.median(np.abs(v - med)))
    # and nothing of it transmits: its 99th percentile within the noise's reach too (a thick sample's frame at low
    # counts, OD 4.6-5.5 at 600-2000 counts, has its median a few noise widths above zero, and its holes transmit)
    return med <= NO_IMAGE_NOISE * noise and float(np.percentile(v, 99)) <= max(NO_IMAGE_TRANSMISSION, 4.0 * noise)


def _no_image_cause(counts, flats_given: bool, blank) -> str:
    """The likely cause of frames without an image, for :func:`no_image_refusal`: counts of a signed integer type
    that went negative wrapped around; else what the values may be."""
    if np.issubdtype(counts.dtype, np.signedinteger):
        low = min(int(np.asarray(counts[k]).min()) for k in blank[:3])
        if low < 0:
            return (
                f"its {np.dtype(counts.dtype)} counts go down to {low}: counts above {np.iinfo(counts.dtype).max} "
                "wrapped around to negative values (an integer overflow when they were saved); save them unsigned "
                "(uint16) or wider and run again"
            )
    # frames saturated over most of their pixels (an exposure far too long) were refused naming OD, transmission,
    # swapped darks or the beam off, not the saturation (the false-alarm probe: images 99.97 % at 65535)
    for k in blank[:3]:
        sat, top = _saturated(np.asarray(counts[k]))
        if sat is not None and sat.mean() > 0.5:
            return (
                f"frame {k} is saturated over {sat.mean():.0%} of its pixels (at the detector's full scale, {top:g}): "
                "lower the exposure (or the beam's intensity) and measure again"
            )
    if not flats_given:
        return "the values are not transmission I/I0 (optical density?); say what they are with `values`"
    return (
        "are the values optical density or transmission rather than counts (then read them with `values` without "
        "`flats`), the darks swapped with the images, or the beam off?"
    )


def _fill_clipped(frame, clipped) -> None:
    """Fill the pixels of ``frame`` (OD, NaN where unknown) that the image clipped (``clipped``, bool) in place by the
    median of the 5 x 5 around each, the frame's median standing in for every pixel without a value: bright pixels,
    where the beam met little. Not left to the fill from a patch's rim (:func:`xanestrack.stack.sanitize_stack`),
    which is for patches the flats leave unknown over the sample: a background clipped between particles, enclosed
    by them in some frames, was filled from their edges, the ring of one particle's local background jumping from
    frame to frame (0.068 / 0.022 / 0.111 OD in frames 10 / 15 / 20 against 0.027 / 0.022 / 0.046 so filled) and
    its E50 read 1.8 eV high (synth seed 1 at 62100 counts, images clipped at 65535 in 47 of 60 frames)."""
    from scipy import ndimage

    unknown = ~np.isfinite(frame)
    if unknown.all():
        return
    med = ndimage.median_filter(np.where(unknown, np.nanmedian(frame), frame), size=5)
    frame[clipped] = med[clipped]


def unlit_note(outside, source, where: str, *, flats: bool = True) -> str:
    """The note on the pixels outside the lit field (:func:`outside_field`), set to the lit field's median.
    Without flats (``flats`` False) a region transmitting nothing may be unlit or opaque: said so (a piece of
    sample at OD 5 touching the border was called "outside the beam's field of view")."""
    cause = (
        "outside the beam's field of view (a round field, a beam smaller than the detector)"
        if flats
        else "outside the beam's field of view (a round field, a beam smaller than the detector), or sample too thick "
        "to transmit (without flats the two cannot be told apart)"
    )
    return (
        f"{source}: {outside.mean():.0%} of the frame ({int(outside.sum())} pixels, touching its border) unlit {where}: "
        f"{cause}; left out, set to the lit "
        "field's median optical density in every frame. A particle there is not seen; one the field's edge cuts is "
        "flagged out of view in those frames, as at the frame's border"
    )


def dead_note(n: int, source) -> str:
    """The note on a reference's dead pixels."""
    return (
        f"{source}: the flat (reference) minus the dark is zero or negative at {n} pixels (dead detector pixels): "
        "no transmission measured there; filled from their neighbours"
    )


def repair_note(bad_per_frame, frame_shape, *, source, what: str = "") -> str:
    """The note on pixels whose transmission was zero, negative or not finite (set to their
    frame's strongest absorption by :func:`transmission_to_od`), naming the frames where they are
    more than half the frame: such a frame carries no image (no beam, the shutter closed)."""
    per = np.asarray(bad_per_frame, int)
    n_pix = int(np.prod(frame_shape))
    blank = np.flatnonzero(per > n_pix / 2)
    note = (
        f"{source}: {int(per.sum())} pixels in {int((per > 0).sum())} frames had zero/negative or non-finite "
        f"transmission{' ' + what if what else ''}; set to their frame's strongest absorption"
    )
    if blank.size:
        listed = ", ".join(map(str, blank[:10])) + (" ..." if blank.size > 10 else "")
        note += (
            f"; more than half of input frame{'s' if blank.size > 1 else ''} {listed} (counted from 0): "
            "no image there (no beam, the shutter closed?)"
        )
    return note
