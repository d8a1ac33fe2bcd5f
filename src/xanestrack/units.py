"""Units: the one rule that tells energies in keV from energies in eV.

Every energy inside the package is in eV. Files and users give eV or keV; the values are
told apart by their size: no absorption edge studied by TXM-XANES lies below 100 eV, and
no scan in keV reaches 100 keV.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KEV_BELOW", "in_kev", "to_ev", "UM_PER_UNIT"]

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
