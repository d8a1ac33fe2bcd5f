"""Flat-field (reference) and dark correction to optical density."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import XanestrackError
from .checks import check_pixel_dtype

__all__ = ["optical_density", "transmission_to_od", "repair_note"]


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


def _high_pass(img):
    from scipy import ndimage

    x = np.log(np.clip(np.asarray(img, np.float64), 1e-3, None))
    x = x - ndimage.gaussian_filter(x, 6.0)
    # a zinger, a dead pixel or a particle's edge does not set the correlation
    mad = float(np.median(np.abs(x - np.median(x)))) or 1e-12
    return np.clip(x, -5 * mad, 5 * mad)


def _ncc(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _check_flat_pattern(counts, flat, dark, source: str) -> str:
    """Refuse flats whose pattern matches the images only turned or flipped; a note where it lies shifted.

    A stack saved rotated or flipped against its flats (or the flats against it) gave an OD that was the flat
    field's pattern, whose blobs were taken for particles and vouched for standing still, while the sample moved
    22 px (the real SSRL frames flipped: the high-passed log images correlate with the flats 0.025, as given
    0.948). Flats shifted against the images by a few pixels (the beam, the scintillator moved) leave both
    patterns in the OD, fixed to the detector, taken for the matrix behind the particles: E50 13 sigma off.
    Judged on the median of up to 5 frames (the sample moves, the pattern stays) against the median of their
    flats (of the first flat where there is one for all frames).
    """
    n = counts.shape[0]
    ks = np.unique(np.linspace(0, n - 1, min(5, n)).round().astype(int))
    img = np.median(np.stack([np.asarray(counts[k], np.float32) for k in ks]), axis=0) - dark
    # flats per frame: those of the same frames (a beam whose pattern moves with the energy, each frame's flat
    # right for it, was said to be shifted when the frames were set against the first flat alone)
    refs = [flat[k] for k in ks] if flat.shape[0] == n and n > 1 else [flat[0]]
    ref = np.median(np.stack([np.asarray(r, np.float32) for r in refs]), axis=0) - dark
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
    if (dy, dx) == (0, 0):
        return ""
    shifted = _ncc(a, np.roll(b, (dy, dx), axis=(0, 1)))
    if shifted >= FLAT_PATTERN_MIN and shifted >= 1.5 * max(as_given, 0.05):
        return (
            f"{source}: the flats' pattern lies ({-dy:+d}, {-dx:+d}) px (rows, columns) off the images' (correlation {shifted:.2f} "
            f"there, {as_given:.2f} as given): the beam or the scintillator moved between the flats and the images. "
            "The optical density carries both patterns, fixed on the detector (taken for the matrix behind the "
            f"particles, it biases their edge energies): take flats again, or shift them by ({dy:+d}, {dx:+d}) px to the images"
        )
    return ""


def optical_density(counts, *, flats=None, darks=None, source: str = "input", notes=None) -> np.ndarray:
    """Optical density ``OD = -ln((I - dark) / (flat - dark))``, float32.

    Parameters
    ----------
    counts : array (n_frames, rows, cols)
        Raw transmitted intensity.
    flats : array (rows, cols), (1, rows, cols), (n_frames, rows, cols) or None
        Reference (sample-out) images; several per frame must be averaged before. With
        ``None`` the counts are taken to be already normalised transmission.
    darks : array (rows, cols) or (n, rows, cols) or None
        Dark images; several are averaged.
    notes : list, optional
        What was repaired is appended here as well as logged (see :func:`repair_note`).

    Returns
    -------
    ndarray (n_frames, rows, cols) float32. Pixels whose corrected sample intensity is
    <= 0 get the OD of the smallest positive transmission of their frame (a saturated
    absorber) and are counted in one warning.

    Raises
    ------
    ValueError
        On shape mismatches, NaN/inf in flats or darks, or a flat that is zero or
        negative after dark subtraction at more than :data:`MAX_DEAD_SHARE` of the pixels
        (the reference is unusable; fewer are dead pixels, NaN here).
    """
    if not _frame_indexable(counts):
        counts = np.asarray(counts)
    check_pixel_dtype(counts.dtype, source=source)
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise XanestrackError(f"{source}: counts must be (n_frames, rows, cols), got shape {counts.shape}")
    shape = counts.shape[1:]
    dark = np.float32(0.0)
    if darks is not None:
        darks = np.asarray(darks, dtype=np.float32)
        if darks.shape[-2:] != shape:
            raise XanestrackError(f"{source}: dark shape {darks.shape} does not match frames {shape}")
        if not np.all(np.isfinite(darks)):
            raise XanestrackError(f"{source}: dark images contain NaN/inf")
        dark = darks.reshape(-1, *shape).mean(axis=0)
    if flats is None:
        flat = np.broadcast_to(np.float32(1.0) + dark, (1, *shape))
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

    one_ref = None  # one reference for every frame: formed once

    def reference(k):
        """Flat minus dark of frame k, float32: formed (and checked) a frame at a time, never a full copy."""
        if one_ref is not None:
            return one_ref
        return np.subtract(flat[k], dark, dtype=np.float32)

    def check(k, r):
        """Why frame k's reference is unusable, or None (a few dead pixels are not a reason)."""
        if flats is not None and not np.all(np.isfinite(r)):
            return f"{source}: flat (reference) images contain NaN/inf"
        bad = r <= 0
        if bad.sum() > MAX_DEAD_SHARE * bad.size:
            idx = (k if flat.shape[0] > 1 else 0, *np.argwhere(bad)[0])
            return (
                f"{source}: flat minus dark is zero or negative at {int(bad.sum())} pixels "
                f"(first at frame/row/col {tuple(int(i) for i in idx)}); the reference is unusable "
                "there: check that flats and darks are not swapped and the beam was on"
            )
        return None

    if flat.shape[0] == 1:  # one reference for every frame: formed and checked once
        one_ref = np.subtract(flat[0], dark, dtype=np.float32)
        problem = check(0, one_ref)
        if problem:
            raise XanestrackError(problem)
    if flats is not None:
        offset_note = _check_flat_pattern(counts, flat, dark, source)
        if offset_note:
            if notes is not None:
                notes.append(offset_note)
            else:
                logger.warning("%s", offset_note)

    out = np.empty(counts.shape, np.float32)
    saturation = np.iinfo(counts.dtype).max if np.issubdtype(counts.dtype, np.integer) else None
    n_sat = [0]
    sat_frames = []
    constant = []  # (frame, count) of frames of one count everywhere
    dark_max = float(np.max(dark))
    n_dead = [0]
    problems = {}

    def block(k0, k1):
        """Frames k0..k1-1 to OD in ``out``; their counts of replaced pixels. A block of frames per
        numpy call: each call takes the GIL again, and while the pipeline's libraries are imported in
        another thread (a shared library's loading holds it for long) a frame at a time waited 2.2 s
        for what takes 0.23 s (143 x 460^2)."""
        t = out[k0:k1]
        c = np.asarray(counts[k0:k1])
        if one_ref is not None:
            r = one_ref
        else:
            r = np.subtract(flat[k0:k1], dark, dtype=np.float32)
            for i in range(k1 - k0):
                problem = check(k0 + i, r[i])
                if problem:
                    problems[k0 + i] = problem
                    return [0] * (k1 - k0)
        np.subtract(c, dark, out=t, dtype=np.float32, casting="unsafe")
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(t, r, out=t)
        # a dead pixel of the reference measured no transmission (the defect pass fills it)
        dead = r <= 0
        if dead.any():
            t[np.broadcast_to(dead, t.shape)] = np.nan
            n_dead[0] = max(n_dead[0], int(dead.reshape(-1, *shape).sum(axis=(1, 2)).max()))
        # a saturated detector pixel has no valid count: NaN (repaired downstream)
        sat = (c == saturation) if saturation is not None else None
        if sat is not None and sat.any():
            n_sat[0] += int(sat.sum())
            sat_frames.extend(k0 + i for i in np.flatnonzero(sat.any(axis=(1, 2))))
            t[sat] = 1.0
        if t.min() > 0 and np.isfinite(t.sum()):  # nothing to replace: the whole block at once
            np.log(t, out=t)
            np.negative(t, out=t)
            n_bad = [0] * (k1 - k0)
        else:
            n_bad = [transmission_to_od(t[i]) for i in range(k1 - k0)]
        if sat is not None and sat.any():
            t[sat] = np.nan
        # a frame of one count everywhere (a readout fault, a frame the software filled) holds no image;
        # its OD would be the flat field's pattern, where particles were placed 4 px off (vouched for by
        # nothing, but measured): NaN, carried as a frame without an image (its positions interpolated)
        flat_c = c.reshape(c.shape[0], -1)
        probe = flat_c[:, :: max(1, flat_c.shape[1] // 4096)]
        # (one at or below the dark is the shutter closed, said by repair_note)
        for i in np.flatnonzero(probe.min(axis=1) == probe.max(axis=1)):
            if flat_c[i].min() == flat_c[i].max() and flat_c[i, 0] > dark_max:
                t[i] = np.nan
                constant.append((k0 + int(i), float(flat_c[i, 0])))
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
    said = []
    if n_dead[0]:
        said.append(dead_note(n_dead[0], source))
    if n_sat[0]:
        said.append(
            f"{source}: {n_sat[0]} saturated detector pixels (value {saturation}) in {len(sat_frames)} frames: no count "
            "measured there; filled from the pixels around them (a particle's position or spectrum taken there is less "
            "sure: lower the exposure)"
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
    for note in said:
        if notes is not None:  # the caller shows them (the CLI prints the input's notes)
            notes.append(note)
        else:
            logger.warning("%s", note)
    return out


#: the share of a reference's pixels that may be zero or negative after dark subtraction (dead
#: detector pixels: no transmission measured there, filled from their neighbours by the defect
#: pass of :func:`xanestrack.io.read_stack`); beyond it the reference is refused as unusable
#: (flats and darks swapped, the beam off while the flats were taken)
MAX_DEAD_SHARE = 0.01


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
