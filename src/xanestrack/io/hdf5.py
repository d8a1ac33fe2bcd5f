"""HDF5 readers: NSLS-II FXI layout and APS Data Exchange layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XanestrackError, one_line
from ..units import um_per_unit
from .checks import (
    MAX_FRAMES,
    MIN_FRAME_SIDE,
    check_frame_shape,
    check_memory,
    check_pixel_dtype,
    energies_in_ev,
    square_pixel_size,
)

__all__ = ["read_hdf5", "write_fxi", "image_shape"]

FXI = {"data": "img_xanes", "flat": "img_bkg", "dark": "img_dark", "energy": "X_eng"}
#: Data Exchange's energies where /exchange/energy is missing
DX_MONO_ENERGY = "measurement/instrument/monochromator/energy"
DXCHANGE = {
    "data": "exchange/data",
    "flat": "exchange/data_white",
    "dark": "exchange/data_dark",
    "energy": "exchange/energy",
}


def read_hdf5(path, *, scan: int | None = None, lazy: bool = False, need_energies: bool = True) -> dict:
    """Read raw frames, flats, darks and energies from an FXI or Data Exchange file.

    Every dataset's shape and type is checked before it is read (sizes against the
    free memory, chunks actually written), so a damaged or hostile file is refused
    with one line instead of exhausting memory.

    Axes of length 1 after the rows and columns (``/img_xanes`` (40, rows, cols, 1): one value per pixel) are
    dropped (:func:`image_shape`), as the TIFF reader drops them. Without ``scan``, a 4-D dataset with an axis
    of length 1 among its first two (``/img_xanes`` (40, 1, rows, cols), ``/img_dark`` (1, 1, rows, cols)) has it
    dropped too, and is read as one scan (a note says so for the images). A 4-D image dataset whose last axis is
    shorter than a frame's least side (``(40, rows, cols, 3)``: colour channels) is refused as such.

    ``scan``: for a file whose images have a scan axis ``(n_scans, n_energies, rows,
    cols)`` (an operando series), the scan to read; its flats are the scan's own where
    they have a scan axis too, and its energies the scan's row of a 2-D energy dataset.

    ``lazy``: the counts and the per-frame flats and darks are not read but returned as
    :class:`FrameReader` objects that read one frame at a time (for
    :func:`~xanestrack.io.flatfield.optical_density`: the scan is never in memory twice);
    close them (``.close()``) when done.

    Returns
    -------
    dict with ``counts`` (n, rows, cols), ``flats`` (m, rows, cols) or None, ``darks``
    or None, ``energies_ev`` (n,) (None where the file has none and ``need_energies`` is False), ``layout`` ("fxi" or "dxchange"), ``pixel_size_um``
    and ``notes`` (assumptions made, for run.json).

    Raises
    ------
    XanestrackError (a ValueError)
        If the file is not HDF5, is truncated, has neither layout, or declares
        datasets that are not images, absurdly large or never written.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise XanestrackError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError, but a damaged superblock can raise others
        raise XanestrackError(f"{path}: not a readable HDF5 file ({one_line(exc)})") from None
    notes = []
    with f:
        if _dataset(f, FXI["data"], path, must_exist=False) is not None:
            layout, keys = "fxi", FXI
            if _dataset(f, DXCHANGE["data"], path, must_exist=False) is not None:
                notes.append(
                    f"{path}: holds both /{FXI['data']} (NSLS-II FXI) and /{DXCHANGE['data']} (Data Exchange); the "
                    "FXI images read, the Data Exchange ones left alone"
                )
        elif _dataset(f, DXCHANGE["data"], path, must_exist=False) is not None:
            layout, keys = "dxchange", DXCHANGE
        else:
            raise XanestrackError(
                f"{path}: no image dataset found; expected /{FXI['data']} (NSLS-II FXI) or "
                f"/{DXCHANGE['data']} (APS Data Exchange); found {sorted(f.keys())[:20]}"
            )
        dsets = {name: _dataset(f, keys[name], path) for name in ("data", "flat", "dark", "energy")}
        one_energy = None
        if layout == "dxchange" and dsets["energy"] is None:
            # where Data Exchange's measurement group keeps the monochromator's energies (refused before)
            mono = _dataset(f, DX_MONO_ENERGY, path, must_exist=False)
            if mono is not None and mono.size > 1:
                dsets["energy"], keys = mono, dict(keys, energy=DX_MONO_ENERGY)
            elif mono is not None and mono.size == 1 and mono.dtype.kind in "iuf":
                one_energy = float(np.asarray(mono[()]).ravel()[0])  # said in the refusal below
        for name in ("data", "flat", "dark"):
            # (40, rows, cols, 1): a last axis of length 1 is one value per pixel, dropped as the TIFF reader drops
            # it (the file was sent to `series`, which refused it as frames of 256 x 1 pixels; the same stack as a
            # TIFF was read). (40, 1, rows, cols), without ``scan``: an axis of length 1 is no scan axis, dropped
            # too (the file was sent to `series`, which failed once per frame); flats and darks alike ((1, 1, rows,
            # cols) darks)
            d = dsets[name]
            if d is None or d.ndim < 4:
                continue
            shape = image_shape(d.shape)
            lead = scan is None and len(shape) == 4 and 1 in shape[:2]
            if lead:
                shape = (*(n for n in shape[:-2] if n != 1), *shape[-2:])
            if shape == tuple(d.shape):
                continue
            dsets[name] = _Squeezed(d, shape)
            if name == "data":
                notes.append(
                    f"{path}: /{keys['data']} {d.shape} read as "
                    + (f"one scan {shape}" if lead else f"{shape}")
                    + f" (its ax{'es' if d.ndim - len(shape) > 1 else 'is'} of length 1 dropped)"
                )
        data = dsets["data"]
        if data.ndim == 4 and data.shape[-1] < MIN_FRAME_SIDE:
            # (40, rows, cols, 3) is no scan of 40 scans: `series` read it so, frames of rows x 3 pixels
            raise XanestrackError(
                f"{path}: /{keys['data']} {data.shape} holds {data.shape[-1]} values per pixel along its last axis "
                "(colour channels?), not a scan axis; give one grey value per pixel: (energies, rows, cols)"
            )
        if data.ndim == 4 and scan is None:
            raise XanestrackError(
                f"{path}: /{keys['data']} has a scan axis {data.shape}; process it with 'xanestrack series {path.name}'"
            )
        if scan is not None:
            if data.ndim != 4:
                raise XanestrackError(f"{path}: /{keys['data']} {data.shape} has no scan axis; read it as one scan")
            if not 0 <= int(scan) < data.shape[0]:
                raise XanestrackError(f"{path}: no scan {scan} (/{keys['data']} holds {data.shape[0]})")
            data = _ScanView(data, int(scan))
            for name in ("flat", "dark"):
                if dsets[name] is not None and dsets[name].ndim == 4:
                    dsets[name] = _ScanView(dsets[name], int(scan))
            if dsets["energy"] is not None and dsets["energy"].ndim == 2:
                dsets["energy"] = _ScanView(dsets["energy"], int(scan))
            dsets["data"] = data
        shape = (1, *data.shape) if data.ndim == 2 else tuple(data.shape)
        check_frame_shape(shape, source=path, what=f"/{keys['data']}")
        need = 0
        for name in ("data", "flat", "dark"):
            d = dsets[name]
            if d is None:
                continue
            check_pixel_dtype(d.dtype, source=path, what=f"/{keys[name]}")
            if name != "data" and (d.ndim not in (2, 3) or d.shape[-2:] != shape[1:]):
                n_e = dsets["energy"].size if dsets["energy"] is not None else None
                last = tuple(d.shape[-2:]) == tuple(shape[:2]) or (n_e is not None and n_e > 1 and shape[-1] == n_e)
                raise XanestrackError(
                    f"{path}: /{keys[name]} images {d.shape} differ from the data images {shape[1:]}"
                    + (
                        f" (/{keys['data']} {shape}: is the energy axis last? It must be first: energies, rows, cols)"
                        if last
                        else ""
                    )
                )
            _check_written(d, path, keys[name])
            need += d.size * (d.dtype.itemsize + 4)  # as stored, then as float32
        check_memory(need + int(np.prod(shape)) * 4, source=path, what=f"reading /{keys['data']} {shape} {data.dtype}")
        whole = _reads_whole(data)  # a squeezed dataset is read whole: its frames are not d[k]
        if lazy and dsets["flat"] is not None and len(shape) == 3 and data.ndim == 3 and not whole:
            counts = FrameReader(path, keys["data"], scan, shape, data.dtype)
            fd = dsets["flat"]
            flats = (
                FrameReader(
                    path,
                    keys["flat"],
                    scan if isinstance(fd, _ScanView) else None,
                    tuple(fd.shape),
                    fd.dtype,
                )
                if fd.ndim == 3 and fd.shape[0] == shape[0] and not _reads_whole(fd)
                else _read(fd, path, keys["flat"])
            )
        else:
            counts = _read(data, path, keys["data"])
            flats = _read(dsets["flat"], path, keys["flat"])
        dd = dsets["dark"]
        if (
            isinstance(counts, FrameReader)
            and dd is not None
            and dd.ndim == 3
            and dd.shape[0] == shape[0] > 1
            and not _reads_whole(dd)
        ):
            # one dark per frame, as the flats: read a frame at a time while each frame less its own dark is formed
            # (read whole, 143 float32 darks of 1024^2 raised the reading's peak from 849 to 1308 MiB; so read, 854)
            darks = FrameReader(
                path, keys["dark"], scan if isinstance(dd, _ScanView) else None, tuple(dd.shape), dd.dtype
            )
        else:
            darks = _read(dd, path, keys["dark"])
        if dsets["energy"] is None and need_energies:
            found = (
                f" (/{DX_MONO_ENERGY} holds one energy, {one_energy:g}: the monochromator's at one moment, not the "
                "scan's)"
                if one_energy is not None
                else ""
            )
            attrs = _attributes(f, keys["data"], r"energ|(?:^|[_ ])eng(?:$|[_ ])")  # X_eng, energy; not "length"
            if attrs:  # energies kept as an attribute (img_xanes.attrs['X_eng']) are not read: say where they are
                found += (
                    f" (energies stored as an attribute are not read: {attrs[0]}; write them as the dataset "
                    f"/{keys['energy']}, or give them as a file)"
                )
            raise XanestrackError(
                f"{path}: no energy dataset /{keys['energy']}{found}; cannot do XANES without energies: pass `energies` "
                "FILE (one energy per frame)"
            )
        if dsets["energy"] is None:
            energy = None
        elif dsets["energy"].size > MAX_FRAMES or dsets["energy"].dtype.kind not in "iuf":
            raise XanestrackError(
                f"{path}: /{keys['energy']} is not a list of energies ({dsets['energy'].shape} {dsets['energy'].dtype})"
            )
        else:
            energy = energies_in_ev(_read(dsets["energy"], path, keys["energy"]), source=f"{path} /{keys['energy']}")
        pixel, unsquare = None, False  # unsquare: sizes per axis that differ, said; no other size then taken
        for cand in ("pixel_size_um", "exchange/pixel_size_um"):
            d = _dataset(f, cand, path, must_exist=False)
            if d is not None:
                try:
                    v = np.asarray(d[()], dtype=float).ravel()
                except Exception:  # text, empty or compound: not a number
                    v = np.array([np.nan])
                if v.size and np.all(np.isfinite(v)) and np.all(v > 0):
                    # [0.0426, 0.0213]: one size per axis (its first was taken, the other dropped unsaid)
                    pixel = (
                        float(v[0])
                        if v.size == 1
                        else square_pixel_size(
                            _sizes_per_axis(v), source=path, where=_sizes_where(v, f"/{cand}"), notes=notes
                        )
                    )
                    unsquare |= pixel is None
                else:
                    notes.append(f"{path}: /{cand} is not a positive number; pixel size unknown")
        if pixel is None and not unsquare:
            pixel = _fxi_pixel_size(f, path, notes)
        if pixel is None and not unsquare:
            pixel = _attribute_pixel_size(f, keys["data"], path, notes)
        if pixel is None and not unsquare:
            _unread_pixel_dataset(f, path, notes)
    if counts.ndim == 2:
        counts = counts[None]
    if flats is not None and darks is None:
        notes.append(f"{path}: no dark images (/{keys['dark']}): dark taken as 0")
    return dict(
        counts=counts, flats=flats, darks=darks, energies_ev=energy, layout=layout, pixel_size_um=pixel, notes=notes
    )


class FrameReader:
    """Frames of an HDF5 image dataset read one at a time (``reader[k]``) or a block at a time (``reader[k0:k1]``),
    file kept open until :meth:`close`."""

    def __init__(self, path, name: str, scan, shape, dtype):
        self.path, self.name, self.scan = Path(path), name, scan
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._f = None

    def __getitem__(self, k):
        import h5py

        try:
            if self._f is None:
                self._f = h5py.File(self.path, "r")
            d = self._f[self.name]
            k = k if isinstance(k, slice) else int(k)  # a frame, or a block of frames
            return np.asarray(d[self.scan, k] if self.scan is not None else d[k])
        except MemoryError:
            raise XanestrackError(f"{self.path}: not enough memory to read a frame of /{self.name}") from None
        except Exception as exc:  # truncated chunks, missing filters, checksum errors
            raise XanestrackError(
                f"{self.path}: dataset /{self.name} unreadable at frame {k} (truncated or damaged file?): {one_line(exc)}"
            ) from None

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


class _ScanView:
    """One scan of a dataset with a leading scan axis, with the dataset's checks and reads."""

    def __init__(self, d, i: int):
        self._d, self._i = d, i
        self.shape = tuple(d.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = d.dtype
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key):
        if key == ():
            return self._d[self._i]
        raise TypeError("a scan view reads whole")

    def checked(self):
        return self._d


class _Squeezed:
    """A dataset with axes of length 1 dropped (``shape``: (40, 1, rows, cols) or (40, rows, cols, 1) read as (40,
    rows, cols)), with the dataset's checks and reads: whole, or one index of its first axis where that axis is
    kept (a scan of (scans, 40, rows, cols, 1))."""

    def __init__(self, d, shape):
        self._d = d
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = d.dtype
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key):
        if key == ():
            return np.asarray(self._d[()]).reshape(self.shape)
        if isinstance(key, (int, np.integer)) and self.shape[0] == self._d.shape[0]:
            return np.asarray(self._d[key]).reshape(self.shape[1:])
        raise TypeError("a squeezed dataset reads whole")

    def checked(self):
        return self._d


def image_shape(shape) -> tuple:
    """An image dataset's shape with its axes of length 1 after the rows and columns dropped, down to three axes:
    (40, rows, cols, 1), one value per pixel, is (40, rows, cols), as the TIFF reader reads such a stack."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _reads_whole(d) -> bool:
    """Whether ``d`` (a dataset, or a view of one) is read whole, not a frame at a time by :class:`FrameReader`."""
    return isinstance(d, _Squeezed) or (isinstance(d, _ScanView) and isinstance(d.checked(), _Squeezed))


def _dataset(f, name, path, *, must_exist=False):
    """The dataset ``name`` of ``f``, None if absent; refuses groups, loops and broken links."""
    import h5py

    try:
        obj = f.get(name)
    except Exception as exc:  # soft-link loops (RuntimeError), broken external links (KeyError/OSError)
        raise XanestrackError(
            f"{path}: /{name} cannot be opened ({one_line(exc)}): a broken or looping link in the file; "
            "fix or re-export the file"
        ) from None
    if obj is None:
        try:
            link = f.get(name, getlink=True)
        except Exception:
            link = None
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):  # the link is there, what it names is not
            target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
            where = (
                f"put {link.filename} where the link looks for it (beside {Path(path).name}, or at that path), or "
                "re-export the file with its data inside"
                if isinstance(link, h5py.ExternalLink)
                else "fix or re-export the file"
            )
            raise XanestrackError(
                f"{path}: /{name} is a link to {target}, which cannot be opened (a broken link): {where}"
            )
        if must_exist:
            raise XanestrackError(f"{path}: no dataset /{name}")
        return None
    if not isinstance(obj, h5py.Dataset):
        raise XanestrackError(
            f"{path}: /{name} is a {type(obj).__name__.lower()}, not a dataset of numbers; "
            "is this file in the NSLS-II FXI or APS Data Exchange layout?"
        )
    return obj


def _check_written(d, path, name):
    """Refuse a dataset whose storage was never (fully) written: it would read as fill values."""
    while isinstance(d, (_ScanView, _Squeezed)):
        d = d.checked()
    try:
        if d.is_virtual or d.external:  # stored elsewhere: the read below checks it
            return
        if d.chunks is not None:
            expected = int(np.prod([-(-s // c) for s, c in zip(d.shape, d.chunks)]))
            n = d.id.get_num_chunks()
            if n < expected:
                raise XanestrackError(
                    f"{path}: only {n} of {expected} chunks of /{name} {d.shape} were ever written (an interrupted "
                    "acquisition or copy?); the rest would read as zeros: use a complete file"
                )
        elif d.size and d.id.get_storage_size() < d.size * d.dtype.itemsize and d.compression is None:
            raise XanestrackError(
                f"{path}: /{name} {d.shape} has {d.id.get_storage_size()} bytes stored for "
                f"{d.size * d.dtype.itemsize} declared (never written or truncated): use a complete file"
            )
    except XanestrackError:
        raise
    except Exception:  # an HDF5 library without these queries: the read below still checks
        pass


def _read(d, path, name):
    if d is None:
        return None
    try:
        return np.asarray(d[()])
    except MemoryError:
        raise XanestrackError(f"{path}: not enough memory to read /{name} {d.shape} {d.dtype}") from None
    except Exception as exc:  # truncated chunks, missing filters, checksum errors
        raise XanestrackError(
            f"{path}: dataset /{name} unreadable (truncated or damaged file?): {one_line(exc)}"
        ) from None


#: where other writers keep a pixel size that is not read (its meaning or unit unknown): said in a note
_OTHER_PIXEL_SIZES = (
    "measurement/instrument/detector/x_pixel_size",
    "measurement/instrument/detection_system/objective/resolution",
)


def _fxi_pixel_size(f, path, notes):
    """The pixel size (um) of FXI's ``Pixel Size`` ("21.3nm"), where it names its unit; else None, with a note
    where the file holds a pixel size that is not read (the radius range then falls back to pixels)."""
    import re

    import h5py

    if "Pixel Size" in f and isinstance(f["Pixel Size"], h5py.Dataset):
        raw = f["Pixel Size"][()]
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(np.asarray(raw).ravel()[0])
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*([^\s\d.]+)\s*", text)
        scale = um_per_unit(m.group(2)) if m else None  # "21.3 NM" too: case ignored
        if scale is not None and float(m.group(1)) > 0:
            return float(m.group(1)) * scale
        # "2.13e-8 m" names a unit, one not understood: it was said to name none
        named = f"names the unit {m.group(2)!r}, not one understood" if m and scale is None else "names no unit"
        notes.append(
            f"{path}: /Pixel Size {text!r} {named} (nm, um): not used, the pixel size unknown; the particle "
            "radius range is 7-60 px unless `min_radius` / `max_radius` are given"
        )
        return None
    found = [name for name in _OTHER_PIXEL_SIZES if name in f]
    if found:
        notes.append(
            f"{path}: /{found[0]} not read as the pixel size (a detector's pixel, or its unit, cannot be told); the "
            "particle radius range is 7-60 px unless `min_radius` / `max_radius` are given"
        )
    return None


def _attributes(f, data_name, pattern) -> list:
    """The attributes of the file's root and of its image dataset whose name matches ``pattern`` (case ignored), as
    ``/img_xanes attribute 'X_eng' (40 values)``, each with the object and name: for notes and refusals."""
    import re

    out = []
    for obj_name in ("", data_name):
        try:
            attrs = (f if not obj_name else f[obj_name]).attrs
            names = list(attrs.keys())
        except Exception:  # an unreadable attribute table: nothing to say of it
            continue
        for name in names:
            if not re.search(pattern, name, re.IGNORECASE):
                continue
            try:
                n = int(np.asarray(attrs[name]).size)
            except Exception:
                n = 0
            out.append(f"/{obj_name} attribute {name!r} ({n} value{'s' if n != 1 else ''})")
    return out


#: an attribute naming a pixel size, the axis it may begin with and the unit its name may end with
#: (``pixel_size_um``, ``PixelSize(nm)``, ``x_pixel_size_um``, ``y_pixel_size_um``)
_PIXEL_ATTRIBUTE = r"^(?:([xy])_?)?pix(?:el)?[ _]?size(?:[ _(\[]+([a-z\u00b5\u03bc]+)[)\]]?)?$"


def _sizes_per_axis(v) -> dict:
    """The pixel sizes of a vector ``v`` (2 values or more) per axis, for
    :func:`~xanestrack.io.checks.square_pixel_size`: three values are a voxel's, (z, y, x), of which the last two are
    the images' pixel, x and y (``[1.0, 0.02, 0.02]`` was called "not square, 50 times apart" and its pixel size
    dropped); else one per value in their order (``first``, ``second``, ...)."""
    if len(v) == 3:
        return {"x": float(v[2]), "y": float(v[1])}
    return {("first", "second", "third")[i] if i < 3 else f"value {i + 1}": float(x) for i, x in enumerate(v)}


def _sizes_where(v, where: str) -> str:
    """Where :func:`_sizes_per_axis` took the sizes of ``v`` from, for a note (``where``: the dataset or attribute)."""
    return f"the last two of the 3 values of {where}, a voxel's (z, y, x)" if len(v) == 3 else where


def _attribute_pixel_size(f, data_name, path, notes):
    """The pixel size (um) an attribute of the root or of the image dataset gives where its name states the unit
    (``pixel_size_um``, ``pixel_size_nm``, ``x_pixel_size_um``) and its value is one positive number; else None, with
    a note where such an attribute exists but is not used (``pixel_size`` = 0.0213: its unit cannot be told; a
    ``units`` attribute beside it may be the images' own).

    Where the size along x and along y are stated (``x_pixel_size_um``, ``y_pixel_size_um``), on one object or one
    on each (x on the root, y on the images), or one attribute gives two values (``pixel_size_um = [0.0426,
    0.0213]``), both are read: the size where they agree, else None with a note
    (:func:`~xanestrack.io.checks.square_pixel_size`); the x size alone was taken, the y size dropped without a word.
    Three values are a voxel's, (z, y, x): the last two are read (:func:`_sizes_per_axis`)."""
    import re

    seen = []
    found = []  # (object, its axes) for each object stating a size
    for obj_name in ("", data_name):
        try:
            attrs = (f if not obj_name else f[obj_name]).attrs
            names = list(attrs.keys())
        except Exception:  # an unreadable attribute table: nothing to read
            continue
        axes = {}  # axis ("x", "y", or "" for both) -> (the attribute's name, its size(s) in um)
        for name in names:
            m = re.match(_PIXEL_ATTRIBUTE, name, re.IGNORECASE)
            if not m:
                continue
            try:
                v = np.asarray(attrs[name], dtype=float).ravel()
            except Exception:  # text or compound: not a number
                v = np.array([np.nan])
            scale = um_per_unit(m.group(2)) if m.group(2) else None
            axis = (m.group(1) or "").lower()
            ok = v.size == 1 or (not axis and v.size in (2, 3))  # a size per axis (or a voxel's, z, y, x) in one
            if scale is not None and ok and np.all(np.isfinite(v)) and np.all(v > 0):
                axes.setdefault(axis, (name, v * scale))
                continue
            seen.append(f"/{obj_name} attribute {name!r}" + (f" = {v[0]:g}" if v.size == 1 else ""))
        if axes:
            found.append((obj_name, axes))
    if found:
        obj_name, axes = found[0]
        if "" not in axes and len(axes) == 1:
            # one axis alone: the other may be stated on the other object (x on the root, y on the images), and
            # is read with it (the x size alone was taken, the y size dropped without a word)
            other = "y" if "x" in axes else "x"
            more = [(o, ax[other]) for o, ax in found[1:] if other in ax]
            if more:
                (axis, (name, v)), (o2, (name2, v2)) = next(iter(axes.items())), more[0]
                sizes = {axis: v[0], other: v2[0]}
                what = f"the attributes {name!r} of /{obj_name}, {name2!r} of /{o2}"
                size = square_pixel_size(dict(sorted(sizes.items())), source=path, where=what, notes=notes)
                if size is not None:
                    notes.append(f"{path}: pixel size {size:.4g} um, from {what}")
                return size
        if "x" in axes and "y" in axes:  # one size per axis: both read
            (xn, x), (yn, y) = axes["x"], axes["y"]
            sizes, what = {"x": x[0], "y": y[0]}, f"the attributes {xn!r}, {yn!r} of /{obj_name}"
        else:  # one size for both, or for one axis alone; values in one attribute are one per axis
            name, v = axes.get("") or next(iter(axes.values()))
            sizes = _sizes_per_axis(v) if v.size > 1 else {"first": v[0]}
            what = _sizes_where(v, f"the attribute {name!r} of /{obj_name}")
        size = square_pixel_size(sizes, source=path, where=what, notes=notes)
        if size is not None:
            notes.append(f"{path}: pixel size {size:.4g} um, from {what}")
        return size
    if seen:
        notes.append(
            f"{path}: {seen[0]} not read as the pixel size (its unit is not in its name, as in pixel_size_um): the "
            "pixel size unknown; the particle radius range is 7-60 px unless `pixel_size` (or `min_radius` / "
            "`max_radius`) is given"
        )
    return None


#: datasets a pixel size is often kept in whose name gives no unit: not read, said in a note
_UNITLESS_PIXEL_DATASETS = ("pixel_size", "exchange/pixel_size")


def _unread_pixel_dataset(f, path, notes) -> None:
    """A note where the file holds a dataset ``/pixel_size`` (no unit in its name), which is not read: an attribute
    of that name was said, the dataset ignored without a word."""
    import h5py

    for name in _UNITLESS_PIXEL_DATASETS:
        try:
            d = f.get(name)
        except Exception:  # a broken link: nothing to say of it here
            continue
        if isinstance(d, h5py.Dataset):
            try:
                v = np.asarray(d[()], dtype=float).ravel()
                shown = f" = {v[0]:g}" if v.size == 1 else ""
            except Exception:  # text or compound
                shown = ""
            notes.append(
                f"{path}: /{name}{shown} not read as the pixel size (its unit is not in its name, as in "
                "pixel_size_um): the pixel size unknown; the particle radius range is 7-60 px unless `pixel_size` "
                "(or `min_radius` / `max_radius`) is given"
            )
            return


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
