"""Particle-size rules: the radius range (px) tracked in a scan, from its pixel size.

One rule for every command that processes scans (``run``, ``series``): where the files
give the pixel size, particles are 0.4-8 um in radius (NCA/NMC secondary particles are
2-10 um across; smaller objects are fines); where they do not, 7-60 px. Radii given by
the user (in pixels) replace either end. A range no particle of these frames can have
(below a pixel, above the frame) is refused with one line saying what to give.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RADIUS_UM", "RADIUS_PX", "RadiusRange", "particle_radius_range"]

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


def particle_radius_range(stack, min_radius=None, max_radius=None, *, detector: str = "classical") -> RadiusRange:
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

    Raises
    ------
    XanestrackError
        A radius that is not a positive number, or a range no particle of these frames
        can have (from the options, or from an implausible pixel size in the file).
    """
    from .errors import XanestrackError

    px = stack.pixel_size_um
    given = (min_radius is not None, max_radius is not None)
    check_radii(min_radius, max_radius)
    if min_radius is None:
        min_radius = RADIUS_UM[0] / px if px else RADIUS_PX[0]
    if max_radius is None:
        max_radius = RADIUS_UM[1] / px if px else RADIUS_PX[1]
    size = max(stack.od.shape[1:])
    if not (1.0 <= max_radius <= size and min_radius < max_radius):
        if px and not all(given):
            raise XanestrackError(
                f"{stack.metadata.get('source', 'input')}: the pixel size in the file, {px:g} um, gives particle radii of "
                f"{min_radius:.3g}-{max_radius:.3g} px ({RADIUS_UM[0]:g}-{RADIUS_UM[1]:g} um) in frames of "
                f"{stack.od.shape[1]} x {stack.od.shape[2]}: the pixel size is wrong; give `min_radius` and `max_radius` in pixels"
            )
        raise XanestrackError(
            f"`min_radius` {min_radius:g} / `max_radius` {max_radius:g} px: a particle radius must be at least 1 px, "
            f"at most the frame size ({size} px), and the minimum below the maximum"
        )
    binning = int(np.clip(round(min_radius / 5), 1, 4))
    if detector == "learned":
        from .models.detector import detector_binning

        binning = detector_binning(max_radius, binning)
    return RadiusRange(float(min_radius), float(max_radius), int(binning))
