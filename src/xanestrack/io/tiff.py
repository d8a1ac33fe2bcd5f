"""TIFF stacks with an energies file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_tiff_frames", "read_energies_file"]


def read_tiff_frames(path) -> np.ndarray:
    """Read a TIFF (multi-page or single image) as (n_frames, rows, cols).

    Raises
    ------
    ValueError
        If the file is missing, not a readable TIFF, or not 2-D/3-D.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        data = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ValueError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image or 3-D stack, got shape {data.shape}")
    return data


def read_energies_file(path) -> np.ndarray:
    """Energies from a text file: one per line, or a column of a CSV (eV or keV).

    The first numeric column is used; lines starting with ``#`` and a header line are
    skipped. Energies below 100 are taken as keV and converted to eV.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"energies file {path}: not found")
    values = []
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.replace(",", " ").replace(";", " ").split()[0]
        try:
            values.append(float(tok))
        except ValueError:
            if values:
                raise ValueError(f"energies file {path}: non-numeric line {s!r}") from None
    if not values:
        raise ValueError(f"energies file {path}: no numbers found")
    e = np.array(values)
    if np.nanmax(e) < 100:
        e = e * 1000.0
    return e
