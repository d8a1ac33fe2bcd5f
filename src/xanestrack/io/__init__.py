"""Readers: turn what a beamline wrote into a :class:`~xanestrack.stack.Stack`.

``read_stack`` recognises, from its input:

- a TIFF stack (``.tif``/``.tiff``) with an energies file, optional flats and darks;
- an HDF5 file in the NSLS-II FXI layout (``/img_xanes``, ``/img_bkg``, ``/img_dark``,
  ``/X_eng`` in keV) or the APS Data Exchange layout (``/exchange/data``,
  ``data_white``, ``data_dark``, ``energy``);
- a folder, or a list, of Zeiss/Xradia ``.xrm``/``.txrm`` files (see :mod:`.xrm`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..stack import Stack, validate_energies
from .flatfield import optical_density

__all__ = ["read_stack", "optical_density", "file_checksums"]

_TIFF = {".tif", ".tiff"}
_HDF = {".h5", ".hdf5", ".hdf", ".nxs"}
_XRM = {".xrm", ".txrm"}


def file_checksums(paths) -> dict:
    """SHA-256 of each file (streamed), keyed by path string."""
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[str(p)] = h.hexdigest()
    return out


def _as_paths(inputs):
    if isinstance(inputs, (str, Path)):
        return [Path(inputs)]
    return [Path(p) for p in inputs]


def read_stack(inputs, *, energies=None, flats=None, darks=None, values: str = "auto", grouping=None) -> Stack:
    """Read an energy scan from files into a Stack (optical density).

    Parameters
    ----------
    inputs : path or list of paths
        One TIFF or HDF5 file, or a folder/list of .xrm/.txrm files.
    energies : path or array, optional
        Energies file (TIFF input; eV or keV) or values; overrides file metadata.
    flats, darks : path, optional
        TIFF flats/darks for TIFF input.
    values : {"auto", "counts", "transmission", "od"}
        What TIFF pixel values are when no flats are given: integer data are taken as
        counts and then need ``flats``; ``"od"`` / ``"transmission"`` say so explicitly.
    grouping : callable, optional
        For .xrm folders: see :func:`xanestrack.io.xrm.read_xrm_scan`.

    Raises
    ------
    ValueError
        With the file and the problem for anything unreadable or inconsistent.
    """
    paths = _as_paths(inputs)
    if not paths:
        raise ValueError("no input given")
    for p in paths:
        if not p.exists():
            raise ValueError(f"{p}: no such file or folder")
    if len(paths) > 1 or paths[0].is_dir() or paths[0].suffix.lower() in _XRM:
        from .xrm import read_xrm_scan

        return read_xrm_scan(paths, energies=energies, grouping=grouping)
    path = paths[0]
    suffix = path.suffix.lower()
    if suffix in _HDF:
        from .hdf5 import read_hdf5

        d = read_hdf5(path)
        e = d["energies_ev"] if energies is None else _energies_arg(energies)
        e = validate_energies(e, d["counts"].shape[0], source=str(path))
        flats_ = d["flats"]
        if flats_ is not None and flats_.shape[0] not in (1, d["counts"].shape[0]):
            flats_ = flats_.mean(axis=0, keepdims=True)
        od = optical_density(d["counts"], flats=flats_, darks=d["darks"], source=str(path))
        meta = dict(source=str(path), reader=f"hdf5-{d['layout']}", files=[str(path)])
        return Stack(od, e, d["pixel_size_um"], meta)
    if suffix in _TIFF:
        from .tiff import read_tiff_frames

        data = read_tiff_frames(path)
        if energies is None:
            raise ValueError(f"{path}: a TIFF stack needs its energies: pass --energies FILE (one energy per frame)")
        e = validate_energies(_energies_arg(energies), data.shape[0], source=str(path))
        files = [str(path)]
        if flats is not None:
            fl = read_tiff_frames(flats)
            dk = read_tiff_frames(darks) if darks is not None else None
            files += [str(flats)] + ([str(darks)] if darks is not None else [])
            if fl.shape[0] not in (1, data.shape[0]):
                fl = fl.mean(axis=0, keepdims=True)
            od = optical_density(data, flats=fl, darks=dk, source=str(path))
            kind = "counts"
        else:
            kind = values
            if kind == "auto":
                if np.issubdtype(data.dtype, np.integer):
                    raise ValueError(
                        f"{path}: integer pixel values look like raw counts, which need --flats "
                        "(reference images); if they are already optical density or transmission, "
                        "say so with --values od|transmission"
                    )
                kind = "od"
            if kind == "od":
                od = data.astype(np.float32)
            elif kind == "transmission":
                od = optical_density(data, source=str(path))
            else:
                raise ValueError(f"values must be auto, od or transmission without flats, got {values!r}")
        meta = dict(source=str(path), reader="tiff", values=kind, files=files)
        return Stack(od, e, None, meta)
    raise ValueError(
        f"{path}: unrecognised input type {suffix!r}; give a .tif/.tiff stack, an HDF5 file "
        "(.h5/.hdf5, FXI or Data Exchange) or .xrm/.txrm files"
    )


def _energies_arg(energies):
    if isinstance(energies, (str, Path)):
        from .tiff import read_energies_file

        return read_energies_file(energies)
    e = np.asarray(energies, dtype=float)
    return e * 1000.0 if e.size and np.nanmax(e) < 100 else e
