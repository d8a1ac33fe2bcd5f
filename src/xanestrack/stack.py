"""The Stack: an energy scan as optical density, with its energies and provenance."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field

import numpy as np

from .units import in_kev

__all__ = ["Stack", "validate_energies", "sanitize_stack"]

logger = logging.getLogger(__name__)


#: the energies whose near-repeats :func:`validate_energies` warned of last (their bytes): the reader and the
#: :class:`Stack` validate the same energies, and the warning was printed twice
_REPEATS_SAID: contextvars.ContextVar = contextvars.ContextVar("xanestrack_repeats_said", default=None)


def validate_energies(energies_ev, n_frames: int, *, source: str = "input") -> np.ndarray:
    """Check an energy list against a frame count; return it as float64 eV.

    Raises
    ------
    ValueError
        On a count mismatch, non-finite values, duplicates, energies that are not
        strictly increasing (the order of the frames must be the order of the energies;
        sort your frames and energies together), or one step of more than
        :data:`ANOTHER_EDGE_EV` that is longer than the rest of the scan (a mistyped energy, or another edge).
    """
    e = np.asarray(energies_ev, dtype=float).ravel()
    if e.size != n_frames:
        raise ValueError(f"{source}: {n_frames} frames but {e.size} energies; give one energy per frame")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{source}: energies contain NaN/inf values")
    if n_frames > 1:
        d = np.diff(e)
        if np.any(d == 0):
            i = int(np.flatnonzero(d == 0)[0])
            raise ValueError(
                f"{source}: duplicate energy {e[i]:.2f} eV at frames {i} and {i + 1}; if they are exposures "
                "taken one right after the other, average them first; frames of one energy taken at different times "
                "(two passes over the energies) must not be averaged, as the particles moved between them: keep one "
                "of the two, or run each pass on its own"
            )
        if np.any(d < 0):
            i = int(np.flatnonzero(d < 0)[0])
            raise ValueError(
                f"{source}: energies are not increasing ({e[i]:.2f} eV at frame {i}, then "
                f"{e[i + 1]:.2f} eV); sort frames and energies together (frames of two passes over the energies so "
                "sorted alternate between the passes: the tool then keeps their positions as measured and says so; or "
                "run each pass on its own)"
            )
        short = np.flatnonzero(repeat_steps(e))
        said = _REPEATS_SAID.get() == e.tobytes()  # the reader validates them, then the Stack: said once
        if short.size and not said:
            _REPEATS_SAID.set(e.tobytes())
            # kept (they are measurements), and said: find_e0 takes each such pair as one energy
            logger.warning(
                "%s: %d energies only %s eV from the one before, a small share of the steps around them (%s): "
                "repeated setpoints read back a little differently? They are taken as one in finding the edge (E0); "
                "average such repeated exposures before (where they were taken one right after the other; not frames of "
                "two passes, taken at different times), or remove them",
                source,
                short.size,
                "-".join(f"{v:.2f}" for v in sorted({float(d[short].min()), float(d[short].max())})),
                ", ".join(f"{e[i]:.2f}/{e[i + 1]:.2f}" for i in short[:5]) + (" ..." if short.size > 5 else ""),
            )
        lone = lone_step(e)
        if lone is not None and lone[1] > ANOTHER_EDGE_EV:
            # an energy mistyped at either end keeps them increasing: 8680 eV written as 86800 was taken, and a
            # magnification fitted as a line in the energy put the whole 1 % on the last frame
            raise ValueError(
                f"{source}: {lone_step_words(e, lone)} (A scan is one absorption edge: give another edge's frames as "
                "a scan of their own)"
            )
    if in_kev(e):
        raise ValueError(f"{source}: energies look like keV (max {np.nanmax(e):.4g}); give them in eV")
    return e


#: a step between two energies shorter than this share of the steps on both sides of it (of the one side, at the
#: scan's ends) is a repeated setpoint read back a little differently (:func:`repeat_steps`): the default 60-energy
#: grid (steps 1.2-24 eV) with one more energy 0.02-0.3 eV above 8388.6 eV, 4.8 eV from its neighbours, had the
#: noise over that step taken for the edge (E0 8389.9 eV, every particle's E50 and fractions lost); this package's
#: grids (25-143 energies), a grid 0.5 eV apart at the edge and 10 eV far from it, and the FXI Ni list hold none
#: (no step shorter than 0.99 of the shorter of its neighbours)
REPEAT_STEP_RATIO = 0.1


def repeat_steps(energies_ev) -> np.ndarray:
    """``(n - 1,)`` bool: the steps of the increasing ``energies_ev`` shorter than :data:`REPEAT_STEP_RATIO` times
    the steps on both sides of them."""
    d = np.diff(np.asarray(energies_ev, float))
    if d.size < 2:
        return np.zeros(d.size, bool)
    left = np.r_[np.inf, d[:-1]]
    right = np.r_[d[1:], np.inf]
    return d < REPEAT_STEP_RATIO * np.minimum(left, right)


#: eV: a step between two energies larger than this and than the rest of the scan spans is named in a run note as a
#: possibly mistyped energy (XANES scans span 100-1000 eV in steps of 0.2-40 eV; the SSRL pair is 30 eV apart; a
#: lone pre- or post-edge frame 600 eV away is legitimate), and refused beyond :data:`ANOTHER_EDGE_EV`
LONE_STEP_EV = 500.0

#: eV: ... a step this far is another edge, or a typo (86800 for 8680 eV; 820 for 8200)
ANOTHER_EDGE_EV = 2500.0


def lone_step(energies_ev):
    """``(i, step, rest)`` where one step between energies ``i`` and ``i + 1`` exceeds :data:`LONE_STEP_EV` and the
    span of the rest of the scan, else None."""
    e = np.asarray(energies_ev, float)
    if e.size < 2:
        return None
    d = np.diff(e)
    i = int(np.argmax(d))
    rest = float(e[-1] - e[0] - d[i])
    return (i, float(d[i]), rest) if d[i] > LONE_STEP_EV and d[i] > rest else None


def lone_step_words(energies_ev, lone) -> str:
    """What :func:`lone_step` found, in words (refusals and run notes say it alike)."""
    i, step, rest = lone
    return (
        f"the step from frame {i} ({energies_ev[i]:.1f} eV) to frame {i + 1} ({energies_ev[i + 1]:.1f} eV) is "
        f"{step:.0f} eV, more than the rest of the scan spans ({rest:.0f} eV): a mistyped energy?"
    )


@dataclass(frozen=True)
class Stack:
    """An energy scan ready for the pipeline.

    Attributes
    ----------
    od : ndarray, shape (n_frames, rows, cols), float32
        Optical density ``-ln((I - dark) / (flat - dark))``. A masked array is kept with NaN
        under its mask (the pipeline replaces such pixels by their local median, and says so).
    energies_ev : ndarray, shape (n_frames,)
    pixel_size_um : float or None
    metadata : dict
        Provenance: source files, reader, notes. Without ``"values"`` (a Stack not made by a
        reader, which judges them), values that look like transmission or raw counts rather
        than optical density (:func:`xanestrack.io.checks.values_without_flats`) are noted in
        ``metadata["notes"]`` (a copy of the dict given) and logged. ``metadata["unlit"]`` (bool
        (rows, cols), set by the readers where the beam lit part of the frame only): the pixels outside
        the lit field, taken by the pipeline as outside the frame (a particle they cut is flagged
        ``out_of_view``); crop or bin it with the frames, or leave it out. ``metadata["illumination"]``
        (:class:`xanestrack.io.flatfield.IlluminationResidual`, set by the readers where each frame's illumination
        differed from its own flat's by a smooth pattern): taken out of each particle's frames before its
        chemistry; leave it out where the frames are cropped, binned or some left out.
    """

    od: np.ndarray
    energies_ev: np.ndarray
    pixel_size_um: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        od = self.od
        masked = 0
        if isinstance(od, np.ma.MaskedArray):
            # np.asarray dropped the mask, and the values under it were analysed (-0.06 eV on a particle)
            masked = int(np.ma.count_masked(od))
            if masked and od.dtype.kind in "iu":  # integers hold no NaN
                od = od.astype(np.float32 if od.dtype.itemsize <= 2 else np.float64)
            od = np.asarray(od.filled(np.nan) if masked and od.dtype.kind == "f" else od.data)
            object.__setattr__(self, "od", od)
        if not isinstance(od, np.ndarray) and getattr(od, "ndim", None) == 3:
            # (a dask array or a tensor was refused as "must be a 3-D array ... got (40, 256, 256)")
            raise ValueError(
                f"Stack.od must be a numpy array, got a {type(od).__module__}.{type(od).__name__} of shape "
                f"{tuple(od.shape)}: pass np.asarray(...) of it (a Stack is held in memory)"
            )
        if not isinstance(od, np.ndarray) or od.ndim != 3:
            raise ValueError(
                f"Stack.od must be a 3-D array (n_frames, rows, cols), got {getattr(od, 'shape', type(od).__name__)}"
            )
        p = self.pixel_size_um
        if p is not None and not (np.isfinite(p) and p > 0):  # accepted, and the radius rules took it
            raise ValueError(f"Stack.pixel_size_um must be a positive number of um, or None; got {p!r}")
        if od.shape[0] < 1 or od.shape[1] < 8 or od.shape[2] < 8:
            raise ValueError(f"Stack.od shape {od.shape} is too small (need >=1 frame of >=8 x 8)")
        if od.dtype.kind not in "iuf":  # as read_stack refuses them (complex, bool, objects...)
            raise ValueError(f"Stack.od must hold real numbers (optical density), got dtype {od.dtype}")
        metadata = {} if self.metadata is None else self.metadata
        e = validate_energies(self.energies_ev, od.shape[0], source=metadata.get("source", "stack"))
        # the validated 1-D float64 energies are kept, not what was given ((n, 1) failed later inside pandas)
        object.__setattr__(self, "energies_ev", e)
        more = _values_notes(od, metadata, masked)
        if more:
            metadata = {**metadata, "notes": list(metadata.get("notes", [])) + more}
        object.__setattr__(self, "metadata", metadata)

    @property
    def n_frames(self) -> int:
        return self.od.shape[0]


def _values_notes(od, metadata: dict, masked: int) -> list[str]:
    """Notes on a Stack's values not yet in ``metadata["notes"]``: masked pixels taken as NaN, and where no reader
    judged the values (no ``metadata["values"]``), what :func:`xanestrack.io.checks.values_without_flats` says of
    values said to be optical density (transmission or raw counts ran as OD without a word: 4 fake particles)."""
    from .errors import XanestrackError
    from .io.checks import values_without_flats

    source = metadata.get("source", "Stack.od")
    notes = []
    if masked:
        notes.append(f"{source}: {masked} masked pixels taken as NaN")
    if "values" not in metadata:
        try:
            # the frames the reader's check samples (every ~n/8-th), as a view
            _, _, said = values_without_flats(
                od[:: max(1, od.shape[0] // 8)],
                "od",
                source=source,
                flats_hint="their optical density (xanestrack.io.optical_density with the flats)",
            )
        except XanestrackError as exc:
            # no finite value sampled: the NaN frames are refused or blanked by the pipeline; OD whose sign looks
            # flipped (the command line refuses it) is said: from Python it was dropped with the rest
            said = [str(exc)] if "sign were flipped" in str(exc) else []
        notes += [
            n.replace("pass `values` transmission", "give Stack.od = -ln(I/I0) (xanestrack.io.optical_density)")
            for n in said
        ]
    old = list(metadata.get("notes", []))
    notes = [n for n in notes if n not in old]
    for n in notes:
        logger.warning("%s", n)
    return notes


def duplicate_frames(od) -> list[tuple[int, int]]:
    """Pairs of frames that are the same image pixel for pixel (constant frames left out).

    Two measured frames never are (photon noise); a frame written twice, under two energies,
    gives every particle a wrong spectrum there (the default scene with frame 56 replaced by
    frame 50's image: four particles' mean edge energies 0.6-0.8 eV off, unflagged). A sum
    over every 7th pixel finds the candidates; they are compared whole.
    """
    od = np.asarray(od)
    sample = od[:, ::7, ::7].astype(np.float64)
    keys = sample.sum(axis=(1, 2))
    varied = sample.max(axis=(1, 2)) > sample.min(axis=(1, 2))
    pairs = []
    order = np.argsort(keys, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if keys[a] == keys[b] and varied[a] and varied[b] and np.array_equal(od[a], od[b]):
            pairs.append((int(min(a, b)), int(max(a, b))))
    return sorted(pairs)


def sanitize_stack(od, *, source: str = "stack", blank=None, gaps=None):
    """Replace NaN/inf pixels from the pixels around them; refuse hopeless frames, or blank them.

    Parameters
    ----------
    od : ndarray (n_frames, rows, cols)
        Optical density; not modified.
    source : str
        Named in the message and the warning (a file name).
    blank : list, optional
        Given, a frame more than half NaN/inf is carried as a frame without an image (every
        pixel the median of its finite ones, 0 without any) and its index appended here,
        instead of refusing the stack (the pipeline then measures no particle in it and leaves it
        out of every XANES); the stack is still refused where half its frames or more are so.
    gaps : list, optional
        Given, ``(frame, mask)`` is appended for every frame with a wide gap inside the field (see Notes):
        ``mask`` (rows, cols) bool, the gap's pixels with more than :data:`WIDE_GAP_SHARE` of their 5 x 5 missing,
        filled from pixels that are not theirs (the pipeline flags the particle pixels that lay there). A wide gap
        touching the frame's border is outside the field and not appended.

    Returns
    -------
    clean : ndarray float32 (a copy if anything was replaced)
    n_fixed : int
        Number of pixels replaced.

    Raises
    ------
    ValueError
        If a frame is more than half non-finite (name the frames), and ``blank`` is not given or
        half the frames or more are so.

    Notes
    -----
    A non-finite pixel gets the median of the 5 x 5 pixels around it, in which the
    non-finite pixels (itself included) count as the frame's median. A wide gap, a connected patch of
    non-finite pixels of which at least one has more than :data:`WIDE_GAP_SHARE` of its 5 x 5 non-finite, is
    filled from its rim inwards instead, each ring the mean of its measured (or already filled) 3 x 3
    neighbours (:func:`_fill_from_rim`): the frame's median there made background of a particle under the
    patch (flats saturated over the beam's hot spot, 11.5x the default scene's exposure, up to 8 % of a
    flat: a particle's E50 lost in all of its 732 core pixels, 12 of its frames not vouched for, positions up to
    0.77 px off). A wide gap touching the frame's border is outside the field (a round field given as optical
    density with NaN outside it), not a hole in the sample: its pixels keep the 5 x 5 median, the frame's median
    (background) away from the field's edge, and a warning says how much of the frame it is. Filled from its rim,
    it carried a particle beside it out to the frame's border (the default scene, seed 2, as OD with NaN outside a
    circle of radius 128 px of 256: 21 % of the frame; a particle rejected as cut by the border, 5 of 6 tracked).
    """
    od = np.asarray(od)
    finite = np.isfinite(od)
    if finite.all():
        return od.astype(np.float32, copy=False), 0
    frac = 1 - finite.mean(axis=(1, 2))
    bad = np.flatnonzero(frac > 0.5)
    if bad.size and (blank is None or 2 * bad.size >= od.shape[0]):
        raise ValueError(
            f"{source}: frames {bad.tolist()[:10]} are more than half NaN/inf; remove them "
            "(and their energies) or fix the input"
        )
    from scipy import ndimage  # here, not at import: `xanestrack run` starts reading before scipy is loaded

    clean = od.astype(np.float32, copy=True)
    for k in bad:
        f = clean[k]
        f[:] = np.median(f[np.isfinite(f)]) if np.isfinite(f).any() else 0.0
        blank.append(int(k))
    border = []  # (frame, share of the frame) of the wide gaps touching the frame's border: outside the field
    for k in np.setdiff1d(np.flatnonzero(frac > 0), bad):
        f = clean[k]
        m = ~np.isfinite(f)
        wide, deep, outside = _wide_gaps(m)
        fill = np.where(m, np.nanmedian(f), f)
        med = ndimage.median_filter(fill, size=5)
        few = m & ~wide  # the gaps outside the field too: the frame's median there, background
        f[few] = med[few]
        if outside.any():
            border.append((int(k), float(outside.mean())))
        if wide.any():
            _fill_from_rim(f, wide)
            if gaps is not None:
                gaps.append((int(k), deep))
    n = int((~finite[np.setdiff1d(np.arange(od.shape[0]), bad)]).sum())
    if n:
        logger.warning("%s: replaced %d NaN/inf pixels by their local median", source, n)
    if border:
        logger.warning(
            "%s: up to %.0f %% of the frame (in %d frames) has no value at the frame's border: outside the field "
            "(a round field masked with NaN), set to the frame's median (background)",
            source,
            100 * max(s for _, s in border),
            len(border),
        )
    return clean, n


#: share of a non-finite pixel's 5 x 5 neighbourhood (itself included) that, non-finite as well, makes its
#: connected patch of non-finite pixels a wide gap (:func:`sanitize_stack`), and the pixel one not measured (its
#: 5 x 5 holds at most two measured pixels). Saturated flat pixels at 11.4x the default scene's exposure (up to 2.4 %
#: of a flat, patches of up to 802 pixels, 829 pixels past half their 5 x 5 missing, 20 past this share) were
#: filled right by the 5 x 5 median (no core pixel's E50 0.5 eV off); at 11.5x (up to 8 % of a flat, a solid patch
#: over the beam's hot spot: 2594 pixels past this share, 1451 with their whole 5 x 5 missing) it made a particle
#: under the patch background there
WIDE_GAP_SHARE = 0.9


def _wide_gaps(missing):
    """``(wide, deep, outside)``, bool (rows, cols): the connected patches (8-connected) of ``missing`` in which some
    pixel has more than :data:`WIDE_GAP_SHARE` of its 5 x 5 neighbourhood missing and which do not touch the frame's
    border (holes in the field: ``wide``), those pixels of them (``deep``), and the patches of that kind that touch
    the border (``outside``: outside the field, a round field masked with NaN; not filled from their rim, which
    spread a particle beside them out to the frame's border, where it was rejected as cut by the border)."""
    from scipy import ndimage

    share = ndimage.uniform_filter(missing.astype(np.float32), size=5, mode="constant")
    deep = missing & (share > WIDE_GAP_SHARE + 1e-6)
    if not deep.any():
        return deep, deep, deep
    labels, _ = ndimage.label(missing, structure=np.ones((3, 3), bool))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    found = np.unique(labels[deep])
    wide = np.isin(labels, np.setdiff1d(found, edge))
    return wide, deep & wide, np.isin(labels, np.intersect1d(found, edge))


def _fill_from_rim(frame, gap):
    """Fill ``frame``'s pixels in ``gap`` (bool) in place, ring by ring from the gap's rim: each pixel next to a
    known one (measured, or filled in an earlier ring) gets the mean of its known 3 x 3 neighbours. Never the
    frame's median: a gap inside a particle is filled from the particle around it.

    Each ring is computed at its own pixels (their 8 neighbours by index), so the cost grows with the gap's area,
    not with its depth times its bounding box: a disc of radius 300 px in a 1024 x 1024 frame took 1.02 s with a
    filter over the whole box per ring, 0.06 s so (the same values to 1e-13)."""
    from scipy import ndimage

    rows, cols = np.nonzero(gap)
    y0, y1 = max(rows.min() - 1, 0), min(rows.max() + 2, frame.shape[0])
    x0, x1 = max(cols.min() - 1, 0), min(cols.max() + 2, frame.shape[1])
    # padded by one pixel, never known: every neighbour of a pixel of the crop has a flat index
    f = np.pad(frame[y0:y1, x0:x1].astype(np.float64), 1)
    todo = np.pad(gap[y0:y1, x0:x1], 1)
    known = ~todo & np.pad(np.isfinite(frame[y0:y1, x0:x1]), 1)
    todo &= ~known
    f[~known] = 0.0
    w = f.shape[1]
    steps = np.array([dy * w + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    ring = np.flatnonzero(todo & ndimage.binary_dilation(known, structure=np.ones((3, 3), bool)))
    fv, kv, tv = f.ravel(), known.ravel(), todo.ravel()
    while ring.size:
        near = ring[:, None] + steps
        k = kv[near]
        fv[ring] = (fv[near] * k).sum(axis=1) / k.sum(axis=1)
        kv[ring] = True
        tv[ring] = False
        near = near.ravel()
        ring = np.unique(near[tv[near]])
    if tv.any():  # nothing known around it (a frame without one measured pixel there): its median
        fv[tv] = np.nanmedian(frame) if np.isfinite(frame).any() else 0.0
    frame[y0:y1, x0:x1] = np.where(gap[y0:y1, x0:x1], f[1:-1, 1:-1], frame[y0:y1, x0:x1])
