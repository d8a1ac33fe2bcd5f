"""HDF5 readers: NSLS-II FXI layout and APS Data Exchange layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_hdf5", "write_fxi"]

FXI = {"data": "img_xanes", "flat": "img_bkg", "dark": "img_dark", "energy": "X_eng"}
DXCHANGE = {
    "data": "exchange/data",
    "flat": "exchange/data_white",
    "dark": "exchange/data_dark",
    "energy": "exchange/energy",
}


def read_hdf5(path) -> dict:
    """Read raw frames, flats, darks and energies from an FXI or Data Exchange file.

    Returns
    -------
    dict with ``counts`` (n, rows, cols), ``flats`` (m, rows, cols) or None, ``darks``
    or None, ``energies_ev`` (n,), ``layout`` ("fxi" or "dxchange"), ``pixel_size_um``.

    Raises
    ------
    ValueError
        If the file is not HDF5, is truncated, or has neither layout.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if FXI["data"] in f:
            layout, keys = "fxi", FXI
        elif DXCHANGE["data"] in f:
            layout, keys = "dxchange", DXCHANGE
        else:
            raise ValueError(
                f"{path}: no image dataset found; expected /{FXI['data']} (NSLS-II FXI) or "
                f"/{DXCHANGE['data']} (APS Data Exchange); found {sorted(f.keys())}"
            )

        def get(name):
            if keys[name] not in f:
                return None
            try:
                return np.asarray(f[keys[name]][()])
            except (OSError, KeyError) as exc:
                raise ValueError(f"{path}: dataset /{keys[name]} unreadable (truncated file?): {exc}") from None

        counts = get("data")
        flats, darks, energy = get("flat"), get("dark"), get("energy")
        pixel = None
        for cand in ("pixel_size_um", "exchange/pixel_size_um"):
            if cand in f:
                pixel = float(np.asarray(f[cand][()]).ravel()[0])
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise ValueError(f"{path}: /{keys['data']} must be (n_frames, rows, cols), got {counts.shape}")
    if energy is None:
        raise ValueError(f"{path}: no energy dataset /{keys['energy']}; cannot do XANES without energies")
    energy = np.asarray(energy, dtype=float).ravel()
    if energy.size and np.nanmax(energy) < 100:  # keV (FXI stores keV)
        energy = energy * 1000.0
    for name, arr in (("flat", flats), ("dark", darks)):
        if arr is not None and arr.ndim == 2:
            arr = arr[None]
        if arr is not None and arr.shape[-2:] != counts.shape[-2:]:
            raise ValueError(
                f"{path}: /{keys[name]} images {arr.shape[-2:]} differ from data images {counts.shape[-2:]}"
            )
    return dict(counts=counts, flats=flats, darks=darks, energies_ev=energy, layout=layout, pixel_size_um=pixel)


def write_fxi(path, counts, *, flats, darks, energies_ev, pixel_size_um=None) -> None:
    """Write raw frames in the NSLS-II FXI layout (energies in keV)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(FXI["data"], data=counts, chunks=(1, *counts.shape[1:]))
        f.create_dataset(FXI["flat"], data=flats, chunks=(1, *flats.shape[1:]))
        f.create_dataset(FXI["dark"], data=np.asarray(darks).reshape(-1, *counts.shape[1:]))
        f.create_dataset(FXI["energy"], data=np.asarray(energies_ev, float) / 1000.0)
        if pixel_size_um is not None:
            f.create_dataset("pixel_size_um", data=float(pixel_size_um))
