"""Plausibility checks shared by the readers, done before anything large is allocated.

Each check either passes, or raises :class:`~xanestrack.errors.XanestrackError`
with one line naming the file, what is wrong and what to do. Assumptions that are
accepted are returned as notes, which end up in ``run.json`` (``input_notes``).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import XanestrackError
from ..units import KEV_BELOW, to_ev

__all__ = [
    "available_memory",
    "release_freed_memory",
    "check_memory",
    "check_pixel_dtype",
    "check_frame_shape",
    "energies_in_ev",
    "validated_energies",
    "energy_order",
    "energy_axis_last_refusal",
    "values_without_flats",
    "replaced_energies_note",
    "rounded_energies_note",
    "square_pixel_size",
]

#: sane bounds on what a file may declare, whatever the memory: a frame of at most
#: 16384 x 16384 pixels (as for .xrm), at most a million frames
MAX_FRAME_PIXELS = 1 << 28
MAX_FRAMES = 1_000_000
#: a frame's least number of rows or columns: fewer is no image the pipeline can use
MIN_FRAME_SIDE = 8
#: a pixel's two sides (x, y) stated by a file and this share apart or less are one square pixel's (rounding in the
#: file); further apart the pixels are not square, which the analysis (every size in um, the radius range) assumes
SQUARE_PIXEL_TOLERANCE = 0.01
#: energies (eV) a TXM-XANES scan can have: soft X-ray L-edges to hard X-ray K-edges
MIN_ENERGY_EV, MAX_ENERGY_EV = 100.0, 200_000.0


def available_memory() -> int:
    """Bytes of memory this process can still use (the system's, a cgroup's limit, the process's ``ulimit -v``)."""
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported here: ask the OS
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:  # a container's own limit (cgroup v2) can be far below the machine's memory
        lim = open("/sys/fs/cgroup/memory.max").read().strip()
        if lim != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read().strip())
            room = int(lim) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    try:  # this process's own address-space limit (ulimit -v): passed by the check, the run failed 33 s later
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            avail = soft - used if avail is None else min(avail, soft - used)
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    return int(avail) if avail is not None else 1 << 62


def release_freed_memory() -> bool:
    """Hand the memory that freed arrays leave in the C allocator's heaps back to the system.

    glibc keeps freed blocks below its (growing) mmap threshold for reuse, per thread arena, so
    what a stage freed still counts in the process's resident size while the next one allocates
    anew: ``xanestrack run`` on 143 x 460^2 peaked at 738-765 MiB in the report, 696-703 MiB with
    this called after the pipeline (the budget of issue 12 is 731). The same call dask.distributed
    recommends for a worker's "unmanaged" memory. Does nothing (returns False) where the C library
    has no ``malloc_trim`` (macOS, Windows, musl).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(nbytes: int, *, source, what: str) -> None:
    """Refuse when ``nbytes`` (what reading ``what`` needs) exceed 90 % of the free memory."""
    avail = available_memory()
    if nbytes > 0.9 * avail:
        raise XanestrackError(
            f"{source}: {what} needs about {_gib(nbytes)} of memory but {_gib(avail)} are available; "
            "crop or bin the data first, or run on a machine with more memory"
        )


def check_pixel_dtype(dtype, *, source, what: str = "the images") -> None:
    """Refuse pixel types that are not intensities: complex, boolean, text, records, objects."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iuf":
        return
    kind = {
        "c": "complex numbers",
        "b": "booleans (a mask?)",
        "U": "text",
        "S": "bytes",
        "O": "Python objects",
        "V": "records/compound values",
        "M": "dates",
        "m": "time spans",
    }.get(dtype.kind, f"type {dtype}")
    raise XanestrackError(
        f"{source}: the pixel values of {what} are {kind} ({dtype}), not intensities; give the detector's images "
        "(integer counts, or float transmission / optical density)"
    )


def check_frame_shape(shape, *, source, what: str = "the images") -> None:
    """Refuse stacks that are empty, too small for the pipeline or absurdly large."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise XanestrackError(f"{source}: {what} must be (frames, rows, cols), got shape {shape}")
    n, r, c = shape
    if n < 1:
        raise XanestrackError(f"{source}: no frames in {what} (shape {shape}); the file is empty or was not written")
    if r < MIN_FRAME_SIDE or c < MIN_FRAME_SIDE:
        raise XanestrackError(
            f"{source}: frames of {r} x {c} pixels in {what} are too small (at least {MIN_FRAME_SIDE} x "
            f"{MIN_FRAME_SIDE}); is this the right dataset?"
        )
    if r * c > MAX_FRAME_PIXELS or n > MAX_FRAMES:
        raise XanestrackError(
            f"{source}: {what} of shape {shape} means more than {MAX_FRAMES} frames or frames larger than "
            "16384 x 16384 pixels; the file is damaged or not an energy scan"
        )


def square_pixel_size(sizes_um, *, source, where: str, notes=None) -> float | None:
    """The pixel size (um) of a file that states one per axis (``sizes_um``: ``{"x": 0.0213, "y": 0.0213}``, or the
    values of a vector in their order, ``{"first": .., "second": ..}``): the first where they agree within
    :data:`SQUARE_PIXEL_TOLERANCE`; None where they do not, with a note appended to ``notes`` (a list) naming both.

    Only the x size was read: ImageJ's X resolution, OME's ``PhysicalSizeX``, an HDF5 attribute ``x_pixel_size_um``
    or the first value of ``pixel_size_um = [0.0426, 0.0213]``, the y size dropped without a word, so every size
    along y in um and the report's scale bars were 2x off and the radius range in pixels taken along x (the probe's
    r = 9.85 px particle fell below the 0.4 um least radius). The pipeline takes pixels to be square; with pixels that
    are not, no size in um is right along both axes, so none is given: the results stay in pixels (right along both),
    as for a file without a pixel size. Not refused: a refusal would stop a run whose results in pixels are right,
    and `--pixel-size` could not rescue it (the files are read first).
    """
    values = [float(v) for v in sizes_um.values()]
    lo, hi = min(values), max(values)
    if hi <= lo * (1 + SQUARE_PIXEL_TOLERANCE):
        return values[0]
    if notes is not None:
        stated = ", ".join(f"{v:.4g} um ({k})" for k, v in sizes_um.items())
        notes.append(
            f"{source}: pixels that are not square, {stated} ({where}), {hi / lo:.3g} times apart; the analysis "
            "takes pixels to be square, so the pixel size is not used (any size in um would be off along one "
            "axis): results in pixels, the particle radius range 7-60 px unless `min_radius` / `max_radius` are "
            "given; resample the frames to square pixels, then give `pixel_size`, to have sizes in um"
        )
    return None


def energies_in_ev(values, *, source, lines=None) -> np.ndarray:
    """Energies in eV from values in eV or keV, refusing what cannot be a XANES scan.

    All values below 100 are keV (converted); a mixture of keV and eV values, a value
    that is not a number, zero or negative, or beyond 100 eV - 200 keV is refused.
    ``lines``: where each value came from (line numbers of a text file), for messages.
    """
    try:
        e = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        raise XanestrackError(f"{source}: energies are not numbers ({np.asarray(values).dtype})") from None

    def at(i):
        return f"line {lines[i]}" if lines is not None else f"value {i + 1}"

    if e.size == 0:
        raise XanestrackError(f"{source}: no energies; give one energy per frame (eV or keV)")
    bad = ~np.isfinite(e)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise XanestrackError(f"{source}: energy at {at(i)} is {e[i]} (not a number); give one number per frame")
    if np.any(e <= 0):
        i = int(np.flatnonzero(e <= 0)[0])
        raise XanestrackError(f"{source}: energy at {at(i)} is {e[i]:g}: energies must be positive (eV or keV)")
    kev = e < KEV_BELOW
    if kev.any() and not kev.all():
        i, j = int(np.flatnonzero(kev)[0]), int(np.flatnonzero(~kev)[0])
        raise XanestrackError(
            f"{source}: energies mix keV and eV ({e[i]:g} at {at(i)}, {e[j]:g} at {at(j)}); give them all in one unit"
        )
    e = to_ev(e)
    out = (e < MIN_ENERGY_EV) | (e > MAX_ENERGY_EV)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise XanestrackError(
            f"{source}: energy {e[i]:g} eV at {at(i)} is outside 100 eV - 200 keV; check the unit (eV or keV)"
        )
    return e


def validated_energies(energies_ev, n_frames: int, *, source, frame_shape=None) -> np.ndarray:
    """:func:`~xanestrack.stack.validate_energies` (count, order, duplicates), its complaints as user errors.

    ``frame_shape``: the frames' (rows, cols), for a count that disagrees: where a side of the frames is as long as
    the energies are many, the message asks whether the energy axis is last."""
    from ..stack import validate_energies

    try:
        return validate_energies(energies_ev, n_frames, source=str(source))
    except XanestrackError:
        raise
    except ValueError as exc:
        n_e = np.asarray(energies_ev).size
        if frame_shape is not None and n_e != n_frames and n_e > 1 and n_e in tuple(frame_shape)[-2:]:
            # (256, 256, 60) read as 256 frames of 256 x 60: "256 frames but 60 energies"
            rows, cols = tuple(frame_shape)[-2:]
            raise XanestrackError(
                f"{exc} (frames of {rows} x {cols} pixels, a side as long as the {n_e} energies: is the energy "
                "axis last? It must be first: energies, rows, cols)"
            ) from None
        raise XanestrackError(str(exc)) from None


#: a stack whose frames' side is as long as the energies are many (a cube) is refused as having its energy axis last
#: where that axis is this many times more alike along its length than the first: the share of the stack's variation
#: (each axis's mean profile taken out: a frame's offset, a gradient) left in its mean along an axis (a particle is
#: one along the energies). Normal 160^3 scans (synth 3 particles: default, rigid, stress-drift, -jitter, -crowd,
#: -counts, -all; optical density, every 2nd value): the larger of the other two axes 0.07-0.22 times the energy
#: axis, 0.72 for stress-all; the same saved (rows, cols, energies) or (rows, energies, cols): 1.83 (stress-all) to
#: 15.6. The probe's 160^3 saved (rows, cols, energies): 6.9 (ran to one "particle", 0 of 160 frames vouched for)
ENERGY_LAST_RATIO = 1.2
#: the fewest energies the check is made for (fewer hold too little to judge)
ENERGY_LAST_MIN_FRAMES = 16


def energy_axis_last_refusal(od, *, source) -> str | None:
    """The refusal for a stack ``od`` (frames, rows, cols) with a side as long as its frames are many that varies
    along that side as an energy scan does along its energies, not along its first axis (:data:`ENERGY_LAST_RATIO`):
    saved (rows, cols, energies), its frames read across the energies; else None.

    Judged on every 2nd value along each axis, non-finite values set to the median: for each axis, the variance of
    the mean along it over the whole variance, each axis's mean profile taken out first. A particle is the same along
    the energies (its mean over them keeps it), not along the rows or columns.
    """
    n = od.shape[0]
    sides = [a for a in (1, 2) if od.shape[a] == n]
    if n < ENERGY_LAST_MIN_FRAMES or not sides:
        return None
    x = np.array(od[::2, ::2, ::2], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.all():
        return None
    if bad.any():
        x[bad] = np.median(x[~bad])
    for a in ((1, 2), (0, 2), (0, 1)):
        x -= x.mean(axis=a, keepdims=True)
    v = x.var()
    if not v > 0:
        return None
    alike = [float(x.mean(axis=a).var() / v) for a in (0, 1, 2)]
    a = max(sides, key=lambda k: alike[k])
    if not alike[a] > ENERGY_LAST_RATIO * alike[0]:
        return None
    rows, cols = od.shape[1:]
    name = "last" if a == 2 else "second"
    return (
        f"{source}: {n} frames of {rows} x {cols} pixels, and the images along its {name} axis are alike "
        f"({alike[a]:.2f} of its variation the same in all), along its first unlike ({alike[0]:.2f}): is the energy "
        f"axis {name}? It must be first (energies, rows, cols): save it, and its flats, as np.moveaxis(a, {a}, 0) "
        "(e.g. with tifffile.imwrite) and run again"
    )


def energy_order(energies_ev, n_frames: int, *, source, frame_shape=None) -> tuple[np.ndarray, bool]:
    """Validated energies in increasing order, and whether the frames must be reversed for it.

    A scan acquired from high to low energy (every energy below the one before) is taken
    as it is, reversed; any other order that is not increasing is refused, as by
    :func:`validated_energies` (the frames' order is the energies' order: a scan that goes
    up and down is two scans). ``frame_shape``: the frames' (rows, cols), for the message on a count
    that disagrees (:func:`validated_energies`).

    Returns
    -------
    energies_ev : ndarray (n_frames,), increasing
    reversed : bool
        The frames are to be taken last first.
    """
    e = np.asarray(energies_ev, dtype=float).ravel()
    if e.size == n_frames and e.size > 1 and np.all(np.isfinite(e)) and np.all(np.diff(e) < 0):
        return validated_energies(e[::-1].copy(), n_frames, source=source), True
    return validated_energies(e, n_frames, source=source, frame_shape=frame_shape), False


#: optical density whose low tail reaches further below its median than this many times its high tail above it
#: (0.1 and 99.9 percentiles) has its absorbers as the low tail: its sign flipped, ln(I/I0). The mirror of the
#: rule that keeps a thick electrode's OD from being taken for I/I0 (particles the high tail). ln(I/I0) of the
#: probe's scene (synth seed 5, 5 particles): -1.22 to 0.0259, median -0.0434 (17 times); its OD: 1/17 ...
FLIPPED_TAIL_RATIO = 2.0
#: ... where that low tail lies this far (optical density) below the median at least: absorbers, not noise or a
#: few zingers (the probe's: 1.18)
FLIPPED_MIN_DEPTH = 0.1


def _sign_flipped(sample, lo: float, med: float, hi: float) -> bool:
    """Whether finite values ``sample`` (0.1, 50, 99.9 percentiles ``lo, med, hi``) look like optical density
    of the wrong sign: mostly near a background, the absorbers far below it (:data:`FLIPPED_TAIL_RATIO`,
    :data:`FLIPPED_MIN_DEPTH`), some values negative (I/I0, whose particles are a low tail too, is not), and the
    1 and 99 percentiles not saying otherwise (a few bright zingers cannot make the low tail)."""
    if not (lo < 0 and med < 0.5 and med - lo > FLIPPED_MIN_DEPTH and med - lo > FLIPPED_TAIL_RATIO * (hi - med)):
        return False
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    return med - p1 > p99 - med


def values_without_flats(data, values: str, *, source, flats_hint: str, unlit=None):
    """Optical density from images given without flats, as ``values`` says or as they look.

    Returns ``(od float32, kind, notes)``. Integers under ``"auto"`` are raw counts and
    refused (they need flats); floats under ``"auto"`` are optical density unless they
    look like transmission (background near 1) or raw counts (large values): then
    refused, asking the user to say which. Said to be ``"od"``, values that look like
    transmission or raw counts are taken as asked, with a note.

    A region near 0 touching the frame's border in every frame, beside values that look like transmission
    (:func:`xanestrack.io.flatfield.outside_field` of up to 4 frames, each the lower of itself and its 3 x 3
    median), is outside the lit field (a round field's corners, 0 +- 0.02 in FXI's export): the values are judged
    without it, and as transmission it is set to the lit field's median optical density, said in a note. The
    probe's round field (31 % of the frame) was called optical density, and as transmission its 406,769 corner
    pixels were given their frame's strongest absorption: no particle was tracked. Those pixels (bool (rows, cols))
    are appended to ``unlit`` (a list, optional) where it is given (see
    :func:`xanestrack.io.flatfield.optical_density`).
    """
    from scipy import ndimage

    from .flatfield import WRAPPED_BELOW, WRAPPED_SHARE, optical_density, outside_field, unlit_note

    if values not in ("auto", "od", "transmission", "counts"):
        raise XanestrackError(f"`values` must be auto, od or transmission, got {values!r}")
    integer = np.issubdtype(data.dtype, np.integer)
    if values == "counts" or (values == "auto" and integer):
        wrapped = ""
        if np.issubdtype(data.dtype, np.signedinteger):  # int16 counts wrapped negative: said before the flats
            some = np.asarray(data[:: max(1, data.shape[0] // 8), ::2, ::2])
            neg = some[some < 0]
            if neg.size > WRAPPED_SHARE * some.size and neg.min() <= WRAPPED_BELOW:
                wrapped = (
                    f" ({neg.size / some.size:.2%} of its {data.dtype} values are negative, {int(neg.min())} to "
                    f"{int(neg.max())}: as counts, 16-bit counts above 32767 stored as signed, wrapped around; save "
                    "them as uint16)"
                )
        raise XanestrackError(
            f"{source}: {'integer pixel values look like' if values == 'auto' else 'pixel values are'} raw counts, "
            f"which need {flats_hint}{wrapped}; if they are already optical density or transmission, "
            "say so with `values` od|transmission"
        )
    sample = np.asarray(data[:: max(1, data.shape[0] // 8), ::2, ::2], dtype=np.float32)  # ~8 frames, every 4th pixel
    ks = np.unique(np.linspace(0, data.shape[0] - 1, min(4, data.shape[0])).round().astype(int))
    # the noise of unlit pixels is taken out by a median (3 x 3), which also spreads the lit field by a pixel: the
    # lower of the two
    frames = (np.nan_to_num(np.asarray(data[k], np.float32)) for k in ks)
    outside = outside_field(np.minimum(f, ndimage.median_filter(f, 3)) for f in frames)
    if outside is not None and np.nanmedian(sample[:, ~outside[::2, ::2]]) >= 0.5:  # beside transmission
        sample = sample[:, ~outside[::2, ::2]]
    else:
        outside = None
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise XanestrackError(f"{source}: every sampled pixel is NaN or inf; the images hold no data")
    lo, med, hi = (float(v) for v in np.percentile(sample, [0.1, 50, 99.9]))
    rng = f"values {lo:.3g} to {hi:.3g}, median {med:.3g}"
    if values in ("auto", "transmission") and med > 50:
        raise XanestrackError(
            f"{source}: {rng} look like raw counts, not {'optical density' if values == 'auto' else 'transmission'}; "
            f"give {flats_hint}"
        )
    notes = []
    # unless the particles are clearly the high tail (optical density: they absorb; in I/I0 they are the low tail):
    # the OD of a thick electrode (stress-all: 0.547 to 1.43, median 0.798) was taken for I/I0
    like_transmission = lo >= 0 and hi <= 1.5 and med >= 0.5 and not hi - med > 2 * (med - lo)
    if values in ("auto", "od") and _sign_flipped(sample, lo, med, hi):
        # ln(I/I0) (values -1.22 to 0.0259, median -0.0434) was taken as OD: the gaps between the particles
        # were tracked as 6 "particles", no XANES; the same data said to be OD cannot be measured either
        raise XanestrackError(
            f"{source}: {rng}: optical density whose absorbers are its low tail, far below the background, "
            "as if its sign were flipped (ln(I/I0) instead of -ln(I/I0)); the particles cannot be found in it"
            f"{' (even as `values` od)' if values == 'od' else ''}: give -ln(I/I0) (the values negated), "
            f"or I/I0 with `values` transmission, or the raw counts with {flats_hint}"
        )
    if values == "od" and med > 50:
        # raw uint16 counts (median 5000) taken as optical density, as asked, gave 1 particle and no XANES, unsaid
        notes.append(
            f"{source}: {rng} look like raw counts, not optical density (that of a TXM sample is about -0.5 to 5), "
            f"taken as optical density as asked; if they are counts, give {flats_hint}"
        )
    if values == "od" and like_transmission:
        notes.append(
            f"{source}: {rng} look like transmission I/I0 (background near 1), taken as optical density as asked; "
            "if they are I/I0, every particle is measured inverted: pass `values` transmission"
        )
    if values == "transmission" and not like_transmission:
        notes.append(
            f"{source}: {rng} do not look like transmission I/I0 (background near 1), taken as transmission as asked; "
            "if they are optical density, every particle is measured inverted: pass `values` od"
        )
    if values == "auto":
        if like_transmission:
            raise XanestrackError(
                f"{source}: {rng} look like transmission I/I0 (background near 1), not optical density; "
                "pass `values` transmission, or `values` od if they really are optical density"
            )
        notes.append(
            f"{source}: floating-point values without flats taken as optical density ({rng}); "
            "pass `values` transmission if they are I/I0"
        )
        values = "od"
    if values == "od":
        return np.asarray(data, dtype=np.float32), "od", notes
    if outside is not None:
        notes.append(unlit_note(outside, source, "in every frame (transmission near 0)", flats=False))
    od = optical_density(data, source=str(source), notes=notes, outside=outside, unlit=unlit)
    return od, "transmission", notes


#: eV: the roundings energies are looked at for (keV with 2, 3 and 4 decimals, eV with 1), largest first
ROUNDING_UNITS_EV = (10.0, 1.0, 0.1)
#: an energy within this share of the unit of a multiple of it is on it (keV stored as float32: half a step is
#: 0.0005 eV at 8.3 keV; FXI's Ni energy list, a monochromator's readback, is 0.0002-0.0046 eV off whole eV)
ROUNDING_TOLERANCE = 0.01
#: the steps between energies all on a unit change by exactly one unit at least this many times, over stretches
#: the energies follow a straight line within :data:`ROUNDED_LINE_UNITS` units: rounded from an even grid. Keyed
#: in keV with 3 decimals, the probe's 1.2-eV grid (60 energies) changed 19 times (steps 1, 1, 1, 1, 2, ...;
#: 2, 3, 2, 3; 5, 4, 5, 5, 5, 5, 4, 5), and moved mean E50s by -0.16 to +0.23 eV unsaid (one particle's to 0.34 eV
#: from the truth, 15 sigma); a grid going from 2-eV to 1-eV steps and back changes twice, one frame left out of a
#: whole-eV grid twice
ROUNDED_MIN_CHANGES = 6
#: ... (an energy rounded is at most half a unit off its grid)
ROUNDED_LINE_UNITS = 0.75


def rounded_energies_note(energies_ev, *, source) -> str | None:
    """A note where the energies look rounded from an even grid (to whole eV: keV with 3 decimals), else None.

    Every energy a multiple of a unit (:data:`ROUNDING_UNITS_EV`), and the steps between them changing by one
    unit back and forth (1, 1, 2, 1, 1, 2 eV where the grid is 1.2 eV) over stretches the energies follow a
    straight line within :data:`ROUNDED_LINE_UNITS` units, at least :data:`ROUNDED_MIN_CHANGES` times: each
    energy may be off by half a unit, which no uncertainty of the run includes.
    """
    e = np.asarray(energies_ev, float).ravel()
    if e.size < ROUNDED_MIN_CHANGES + 2 or not np.all(np.isfinite(e)):
        return None
    for unit in ROUNDING_UNITS_EV:
        k = e / unit
        if np.all(np.abs(k - np.round(k)) <= ROUNDING_TOLERANCE):
            break
    else:
        return None
    steps = np.round(np.diff(e) / unit).astype(int)
    changes, seen, i = 0, [], 0
    while i < steps.size:
        j = i + 1  # the longest stretch from step i whose steps take two values one unit apart, or one
        while j < steps.size and steps[i : j + 1].max() - steps[i : j + 1].min() <= 1:
            j += 1
        part = steps[i:j]
        n = int(np.count_nonzero(np.diff(part)))
        if n >= 2 and part.min() >= 1:
            x = np.arange(j - i + 1)
            fit = np.polyval(np.polyfit(x, e[i : j + 1], 1), x)
            if np.max(np.abs(e[i : j + 1] - fit)) <= ROUNDED_LINE_UNITS * unit:
                changes += n
                seen.append((part.min(), part.max(), (e[j] - e[i]) / (j - i)))
        i = j
    if changes < ROUNDED_MIN_CHANGES:
        return None
    a, b, mean = min(seen, key=lambda s: s[0])  # the stretch of the smallest steps: the edge's
    return (
        f"{source}: the energies all lie on {'whole eV' if unit == 1 else f'multiples of {unit:g} eV'} and the steps between them change by {unit:g} eV "
        f"{changes} times ({a * unit:g} and {b * unit:g} eV in turn where the grid is about {mean:.3g} eV): they look "
        f"rounded to {unit:g} eV ({'keV with 3 decimals' if unit == 1 else 'too few decimals'}?), each up to "
        f"{unit / 2:g} eV off, which the E50s' uncertainties do not include; give the energies with all their "
        "decimals (the scan's own), unless frames were left out of an even grid or the monochromator was set to "
        "these values themselves (then nothing is off)"
    )


def replaced_energies_note(given: str, stored, e, source: str) -> str:
    """The note that the energies ``given`` (a name) replace the ones ``source`` stores, and by how much they
    differ frame by frame (the given ones in the order the file lists its frames)."""
    stored = np.asarray(stored, float).ravel()
    e = np.asarray(e, float).ravel()
    diff = ""
    if stored.size == e.size:
        d = float(np.nanmax(np.abs(e - stored)))
        diff = f"; they differ from them by up to {d:.2f} eV" if d > 0.005 else "; the same values"
    return (
        f"energies from {given} replace the {stored.size} stored in {source} ({np.nanmin(stored):.1f}-"
        f"{np.nanmax(stored):.1f} eV){diff}"
    )
