"""Particle-size rules: the radius range (px) tracked in a scan, from its pixel size.

One rule for every command that processes scans (``run``, ``series``): where the files
give the pixel size, particles are 0.4-8 um in radius (NCA/NMC secondary particles are
2-10 um across; smaller objects are fines); where they do not, 7-60 px. Radii given by
the user (in pixels) replace either end. A default largest radius that these frames cannot
hold whole (a crop, a detector region of interest) is clipped to the largest they can, with
a logged note; a range no particle of these frames can have (below a pixel, the smallest
radius not fitting in the frame) is refused with one line saying what does not fit and what
to give.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

__all__ = ["RADIUS_UM", "RADIUS_PX", "RadiusRange", "largest_radius_in_frame", "particle_radius_range"]

logger = logging.getLogger(__name__)

#: particle radius range (um) when the pixel size is known
RADIUS_UM = (0.4, 8.0)
#: particle radius range (px) when it is not
RADIUS_PX = (7.0, 60.0)


class RadiusRange(NamedTuple):
    """Radius range (px) and the detection binning that goes with it."""

    min_radius: float
    max_radius: float
    binning: int


def check_radii(min_radius=None, max_radius=None) -> None:
    """Refuse radii given that no particle can have, before any data is read (a series checks them once)."""
    from .errors import XanestrackError

    for name, v in (("`min_radius`", min_radius), ("`max_radius`", max_radius)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise XanestrackError(f"{name} {v}: give a radius in pixels (a positive number)")
    if min_radius is not None and max_radius is not None and not min_radius < max_radius:
        raise XanestrackError(f"`min_radius` {min_radius} is not below `max_radius` {max_radius}")


def largest_radius_in_frame(shape) -> float:
    """Largest radius (px) of a particle lying whole in frames of ``shape`` (rows, cols): its centre
    at least its radius from every edge, the rule the linker counts particles in view by
    (:func:`xanestrack.linking._in_view`), i.e. ``(min(rows, cols) - 1) / 2``."""
    return (min(int(n) for n in shape[-2:]) - 1) / 2


def particle_radius_range(
    stack, min_radius=None, max_radius=None, *, detector: str = "classical", notes: list | None = None
) -> RadiusRange:
    """Particle radius range (px) and detection binning of ``stack``.

    Parameters
    ----------
    stack : Stack
        Its ``pixel_size_um`` (from the files; None when unknown) sets the default range.
    min_radius, max_radius : float, optional
        The user's radii in pixels (``--min-radius``, ``--max-radius``).
    detector : "classical" or "learned"
        The binning is the classical detector's (``min_radius / 5``, 1-4), or for the
        learned detector the one that brings ``max_radius`` into its trained range.

    Returns
    -------
    RadiusRange
        ``min_radius, max_radius`` (px) and the binning.

    Raises
    ------
    XanestrackError
        A radius that is not a positive number, or a range no particle of these frames
        can have: a given radius above the frame, the minimum not below the maximum, or
        a smallest default radius (from the pixel size in the file) that no particle
        lying whole in the frame has, or a pixel size that makes the default largest
        radius less than a pixel (nanometres given as micrometres), naming it.

    Notes
    -----
    A default largest radius above :func:`largest_radius_in_frame` (8 um at FXI's 21.3 nm
    is 376 px; a 256 x 256 crop holds particles of up to 127.5 px) is clipped to it, and
    a warning says so: a larger particle would be cut by the border in every frame, so
    the clip loses no particle the frames show whole. Radii given are used as given.
    """
    from .errors import XanestrackError

    px = stack.pixel_size_um
    check_radii(min_radius, max_radius)
    lo_given, hi_given = min_radius is not None, max_radius is not None
    if min_radius is None:
        min_radius = RADIUS_UM[0] / px if px else RADIUS_PX[0]
    if max_radius is None:
        max_radius = RADIUS_UM[1] / px if px else RADIUS_PX[1]
    ny, nx = stack.od.shape[1:]
    size = max(ny, nx)
    fits = largest_radius_in_frame((ny, nx))

    def default(end: int, r: float) -> str:
        """How a default end of the range came about, for a message."""
        if px:
            return f"{RADIUS_UM[end]:g} um ({r:.3g} px at the pixel size {px:g} um)"
        return f"{r:.3g} px (the default where the files give no pixel size)"

    source = stack.metadata.get("source", "input")
    if px and not hi_given and max_radius < 1.0:
        # `--pixel-size 21.3` (FXI's 21.3 nm as um) was refused naming `--min-radius 0.0187793 / --max-radius
        # 0.375587`, two options not given, and never the pixel size
        raise XanestrackError(
            f"{source}: at the pixel size {px:g} um (`pixel_size`, or the files'), particles of {RADIUS_UM[0]:g}-"
            f"{RADIUS_UM[1]:g} um in radius are {RADIUS_UM[0] / px:.3g}-{max_radius:.3g} px, less than a pixel: "
            f"the pixel size is in micrometres ({px:g} um per pixel: nanometres given? {px:g} nm is "
            f"{px / 1000:g} um); give it in um, or `min_radius` and `max_radius` in pixels"
        )
    clip_note = ""
    if not lo_given and min_radius >= fits:
        raise XanestrackError(
            f"{source}: particles of the smallest radius, {default(0, min_radius)}, do not fit whole in frames of "
            f"{ny} x {nx} (a radius of at most {fits:.3g} px): give `min_radius` and `max_radius` in pixels"
            + (
                f" (or check the pixel size, {px:g} um (`pixel_size`, or the files'): a wrong one gives this too)"
                if px
                else ""
            )
        )
    if not hi_given and max_radius > fits:
        if min_radius >= fits:
            raise XanestrackError(
                f"`min_radius` {min_radius:g} px: no particle of that radius lies whole in frames of {ny} x {nx} (a "
                f"radius of at most {fits:.3g} px); give a smaller one, or `max_radius` too"
            )
        # a crop or a detector region of interest: the range is what the frames can show whole
        clip_note = (
            f"{source}: the largest particle radius, {default(1, max_radius)}, is more than frames of {ny} x {nx} "
            f"hold whole: particles are tracked up to a radius of {fits:.1f} px"
            + (f" ({fits * px:.3g} um)" if px else "")
            + "; give `max_radius` in pixels for another limit"
        )
        logger.info("%s", clip_note)
        max_radius = fits
    if not min_radius < max_radius and lo_given and not hi_given:
        raise XanestrackError(
            f"`min_radius` {min_radius:g} px is not below the largest particle radius, {default(1, max_radius)}: "
            "give `max_radius` in pixels too"
        )
    if not min_radius < max_radius and hi_given and not lo_given:
        raise XanestrackError(
            f"`max_radius` {max_radius:g} px is not above the smallest particle radius, {default(0, min_radius)}: "
            "give `min_radius` in pixels too"
        )
    if not (1.0 <= max_radius <= size and min_radius < max_radius):
        raise XanestrackError(
            f"`min_radius` {min_radius:g} / `max_radius` {max_radius:g} px: a particle radius must be at least 1 px, "
            f"at most the frame size ({size} px), and the minimum below the maximum"
        )
    binning = int(np.clip(round(min_radius / 5), 1, 4))
    if detector == "learned":
        from .models.detector import detector_binning

        binning = detector_binning(max_radius, binning)
    if clip_note and notes is not None:
        notes.append(clip_note)
    return RadiusRange(float(min_radius), float(max_radius), int(binning))
