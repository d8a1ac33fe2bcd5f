"""Units: the one rule that tells energies in keV from energies in eV.

Every energy inside the package is in eV. Files and users give eV or keV; the values are
told apart by their size: no absorption edge studied by TXM-XANES lies below 100 eV, and
no scan in keV reaches 100 keV.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["KEV_BELOW", "in_kev", "to_ev", "UM_PER_UNIT", "um_per_unit"]

#: energies below this value are in keV
KEV_BELOW = 100.0


def in_kev(energies) -> bool:
    """Whether ``energies`` are in keV: every finite value below :data:`KEV_BELOW`.

    Raises
    ------
    ValueError
        If ``energies`` is empty.
    """
    return bool(np.nanmax(np.asarray(energies, dtype=float)) < KEV_BELOW)


def to_ev(energies) -> np.ndarray:
    """Energies in eV (float64) from values in eV or keV (:func:`in_kev`: multiplied by 1000)."""
    e = np.asarray(energies, dtype=float)
    return e * 1000.0 if in_kev(e) else e


#: micrometres per length unit as files name them (FXI's "21.3nm", ImageJ's "micron", OME's "µm")
UM_PER_UNIT = {"nm": 1e-3, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "mm": 1e3}


#: a ``\uXXXX`` escape: how ImageJ writes a unit outside ASCII in its TIFF description (``unit=\u00B5m``), which
#: tifffile hands back as those six characters
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def um_per_unit(unit) -> float | None:
    r"""Micrometres per ``unit`` as a file names it (``nm``, ``um``, ``µm``, ``micron``, ``mm``), None where it names
    no length unit of :data:`UM_PER_UNIT`.

    ImageJ's escapes (``\u00B5m``, as its TIFF description writes "µm") are decoded first. Case is ignored
    (FXI's "21.3 NM", "UM", "Micron"): no two units of the table differ by case alone, save the megametre (``Mm``),
    which no pixel is, so ``Mm`` is not taken for millimetres.
    """
    if unit is None:
        return None
    text = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), str(unit)).strip()
    if text in UM_PER_UNIT:
        return UM_PER_UNIT[text]
    if text == "Mm":  # SI's megametre: not a pixel size, and not to be read as mm
        return None
    return UM_PER_UNIT.get(text.lower())
