"""Readers: turn what a beamline wrote into a :class:`~xanestrack.stack.Stack`.

``read_stack`` recognises, from its input:

- a TIFF stack (``.tif``/``.tiff``) with an energies file, optional flats and darks;
- a folder, or a list, of single-frame TIFF files, one per energy: the energies from an energies
  file (in the order of the files; a folder's in the natural order of their names) or, without
  one, from the files' names (``..._8333.5eV.tif``, ``..._08324.0_eV...``), sorted by them;
- an HDF5 file in the NSLS-II FXI layout (``/img_xanes``, ``/img_bkg``, ``/img_dark``,
  ``/X_eng`` in keV) or the APS Data Exchange layout (``/exchange/data``,
  ``data_white``, ``data_dark``, ``energy``);
- a folder, or a list, of Zeiss/Xradia ``.xrm``/``.txrm`` files (see :mod:`.xrm`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..errors import XanestrackError
from ..stack import Stack
from .checks import (
    MIN_ENERGY_EV,
    energies_in_ev,
    energy_axis_last_refusal,
    energy_order,
    replaced_energies_note,
    rounded_energies_note,
    values_without_flats,
)
from .flatfield import optical_density

__all__ = ["read_stack", "optical_density", "file_checksums", "input_files", "check_run_memory"]

#: the working memory ``xanestrack run`` needs beyond twice its frames as float32 (the README's budget,
#: "2 x input + 500 MiB"), bytes
RUN_WORKING_BYTES = 500 * 2**20
#: the resident memory PyTorch and the learned detector and segmenter add once loaded, bytes: 202 MiB measured
#: (RSS 102 -> 304 MiB, address space 255 -> 742 MiB, `pipeline_models("learned", "learned")`, CPU, in .venv)
LEARNED_MODELS_BYTES = 200 * 2**20

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


def input_files(path) -> list:
    """The files a scan given as ``path`` is read from: a folder's .xrm/.txrm files, else its TIFF files (one
    frame per energy), in name order; a file itself. What a series checksums to tell a scan changed."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    # hidden files are not frames: macOS's ._name.tif (AppleDouble) and .DS_Store
    inside = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
    xrm = [q for q in inside if q.suffix.lower() in _XRM]
    return xrm or [q for q in inside if q.suffix.lower() in _TIFF]


def _as_paths(inputs):
    if isinstance(inputs, (str, Path)):
        return [Path(inputs)]
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind not in "US":
        # an array of images is not a path: build a Stack from it (pathlib's TypeError said nothing of that)
        raise TypeError(
            "read_stack reads files: give a path (or paths); for an array of OD build a xanestrack.stack.Stack"
        )
    return [Path(p) for p in inputs]


def read_stack(
    inputs,
    *,
    energies=None,
    flats=None,
    darks=None,
    values: str = "auto",
    grouping=None,
    scan: int | None = None,
    zingers: bool = True,
    dynamic_flats: bool = False,
) -> Stack:
    """Read an energy scan from files into a Stack (optical density).

    Parameters
    ----------
    inputs : path or list of paths
        One TIFF or HDF5 file, or a folder/list of .xrm/.txrm files.
    energies : path or array, optional
        Energies file (eV or keV) or values: needed for a TIFF stack; for HDF5 and Zeiss
        input they replace the energies the files carry (a note says so).
    flats, darks : path, optional
        TIFF flats/darks for TIFF input, or for an HDF5 file without flat-field images;
        refused for input that has its own (they would be ignored).
    values : {"auto", "transmission", "od"}
        What the pixel values of a TIFF or HDF5 file without flats are: under "auto",
        integers are raw counts (refused: they need flats) and floats optical density,
        unless they look like transmission or counts (refused: say which). The
        assumption made is recorded in ``metadata["notes"]``.
    grouping : callable, optional
        For .xrm folders: see :func:`xanestrack.io.xrm.read_xrm_scan`.
    scan : int, optional
        For an HDF5 file whose images have a scan axis (an operando series in one file):
        the scan to read.
    zingers : bool
        Replace zingers (single pixels far brighter, or darker, than their neighbourhood:
        cosmic rays on the CCD) by their 3 x 3 median (:func:`xanestrack.io.zingers.remove_zingers`),
        noted in ``metadata["notes"]``.
    dynamic_flats : bool
        With one flat per frame, take out each frame's own illumination pattern the flats' changes describe
        (:func:`xanestrack.io.flatfield.illumination_residual`) out of the frames; off by default, where that
        pattern is measured all the same and, where found, kept as ``metadata["illumination"]`` (an
        :class:`xanestrack.io.flatfield.IlluminationResidual`), which the pipeline takes out of each particle's
        frames before its chemistry (its positions measured on the frames as read).

    Raises
    ------
    XanestrackError (a ValueError)
        With the file and the problem for anything unreadable, implausible or
        inconsistent (one line, saying what to do).
    """
    stack = _read(inputs, energies, flats, darks, values, grouping, scan, dynamic_flats)
    if zingers:
        from .zingers import remove_defects, remove_zingers

        defects = remove_defects(stack.od)
        if len(defects):
            stack.metadata.setdefault("notes", []).append(_defects_note(defects, stack.od.shape[1:]))
        per_frame = remove_zingers(stack.od)
        if per_frame.sum():
            k = int(np.argmax(per_frame))
            stack.metadata.setdefault("notes", []).append(
                f"{int(per_frame.sum())} zingers (pixels far brighter or darker than the 3 x 3 around them: cosmic "
                f"rays on the detector) replaced by the median around them, in {int((per_frame > 0).sum())} of "
                f"{len(per_frame)} frames, most in the frame at {stack.energies_ev[k]:.1f} eV ({int(per_frame[k])}; "
                f"frame {k} in energy order)"
            )
    found = stack.metadata.get("illumination")
    if found is not None:  # the frames' levels as handed over: frames put in another order since are refused
        stack.metadata["illumination"] = found.kept_for(stack.od)
    return stack


def _defects_note(defects, shape) -> str:
    """The note on the detector's defective pixels replaced, naming the rows and columns they line."""
    rows, nr = np.unique(defects[:, 0], return_counts=True)
    cols, nc = np.unique(defects[:, 1], return_counts=True)
    lines = [f"row {r}" for r in rows[nr > shape[1] / 4]] + [f"column {c}" for c in cols[nc > shape[0] / 4]]
    return (
        f"{len(defects)} defective detector pixels (standing out of the 3 x 3 around them at the same place in most "
        "frames: dead, hot or stuck pixels) replaced in every frame by the median of their good neighbours"
        + (f"; most along {', '.join(lines[:6])}{' ...' if len(lines) > 6 else ''}" if lines else "")
    )


def _read(inputs, energies, flats, darks, values, grouping, scan, dynamic_flats=False) -> Stack:
    """:func:`read_stack` but for the zingers."""
    if values not in ("auto", "od", "transmission", "counts"):
        raise XanestrackError(f"`values` must be auto, od or transmission, got {values!r}")
    paths = _as_paths(inputs)
    if not paths:
        raise XanestrackError("no input given")
    for p in paths:
        if not p.exists():
            raise XanestrackError(f"{p}: no such file or folder")
    tiff_files = _tiff_files(paths)
    if tiff_files is not None:
        data, e, reverse, notes, order = _tiff_frames(tiff_files, energies)
        return _tiff_stack(
            data,
            e,
            reverse,
            notes,
            paths[0],
            tiff_files,
            flats,
            darks,
            values,
            order=order,
            dynamic_flats=dynamic_flats,
        )
    if len(paths) > 1 or paths[0].is_dir() or paths[0].suffix.lower() in _XRM:
        from .xrm import read_xrm_scan

        _no_tiff_options(
            paths[0], "Zeiss .xrm/.txrm scans (their reference images are files of the scan)", flats, darks
        )
        if values != "auto":
            raise XanestrackError(
                f"{paths[0]}: `values` is for TIFF or HDF5 data without flats; a Zeiss scan's counts are divided by "
                "its reference images"
            )
        st = read_xrm_scan(paths, energies=None if energies is None else _energies_arg(energies), grouping=grouping)
        for p in paths:  # a folder's TIFFs beside its .xrm files (exported frames?) are not read: say so
            inside = sorted(p.iterdir()) if p.is_dir() else []
            tiffs = [q for q in inside if q.is_file() and q.suffix.lower() in _TIFF and not q.name.startswith(".")]
            if tiffs:
                st.metadata.setdefault("notes", []).append(
                    f"{p}: {len(tiffs)} TIFF file(s) beside the .xrm/.txrm files not read (e.g. {tiffs[0].name}): "
                    "the folder is read as a Zeiss scan; give the TIFFs as their own input to read them"
                )
        return st
    path = paths[0]
    suffix = path.suffix.lower()
    if suffix in _HDF:
        from .hdf5 import read_hdf5

        # frames read one at a time while the OD is formed
        d = read_hdf5(path, scan=scan, lazy=True, need_energies=energies is None)
        try:
            return _hdf5_stack(d, path, energies, values, scan, flats, darks, dynamic_flats=dynamic_flats)
        finally:
            for k in ("counts", "flats", "darks"):
                if hasattr(d[k], "close"):
                    d[k].close()
    if suffix in _TIFF:
        from .tiff import read_tiff_frames

        notes = []
        if energies is None:
            raise XanestrackError(
                f"{path}: a TIFF stack needs its energies: pass `energies` FILE (one energy per frame)"
            )
        data = read_tiff_frames(path, notes=notes)
        e, reverse = energy_order(_energies_arg(energies), data.shape[0], source=path, frame_shape=data.shape[1:])
        return _tiff_stack(data, e, reverse, notes, path, [path], flats, darks, values, dynamic_flats=dynamic_flats)
    raise XanestrackError(
        f"{path}: unrecognised input type {suffix!r}; give a .tif/.tiff stack, an HDF5 file "
        "(.h5/.hdf5, FXI or Data Exchange) or .xrm/.txrm files"
    )


def _tiff_stack(data, e, reverse, notes, path, files, flats, darks, values, order=None, dynamic_flats=False) -> Stack:
    """The Stack of TIFF frames ``data`` (one file's stack, or one frame per file) with their energies;
    ``order``: the files' order that put ``data`` in energy order (energies from their names), which
    flats and darks of one per frame, given in the files' order, follow too."""
    from .tiff import read_tiff_frames

    files = [str(f) for f in files]
    unlit = []  # the pixels outside the beam's lit field, where optical_density finds any
    illumination = []  # the images' illumination off their flats', where optical_density finds it
    if flats is not None:
        _no_values_with_flats(path, values, "TIFF frames with `flats`")
        fl = read_tiff_frames(flats, notes=notes)
        dk = read_tiff_frames(darks, notes=notes) if darks is not None else None
        files += [str(flats)] + ([str(darks)] if darks is not None else [])
        fl = _match_flats(fl, data.shape[0], source=flats, notes=notes)
        if order is not None and data.shape[0] > 1 and not np.array_equal(order, np.arange(data.shape[0])):
            # one per file, in the files' order: paired with each file's frame, not by position in energy order
            # (a descending scan's flats were paired in reverse, without a word)
            fl = fl[order] if fl.shape[0] == data.shape[0] else fl
            both = ""
            if dk is not None and dk.ndim == 3 and dk.shape[0] == data.shape[0]:
                dk = dk[order]  # one dark per file too: each frame less its own (optical_density pairs them)
                both = f" (and {darks}: one dark per file)"
            notes.append(f"{flats}: one flat-field image per file{both}, each paired with its file's frame")
        if dk is None:
            notes.append(f"{path}: no dark images (`darks`): dark taken as 0")
        od = optical_density(
            data,
            flats=fl,
            darks=dk,
            source=str(path),
            notes=notes,
            unlit=unlit,
            dynamic_flats=dynamic_flats,
            illumination=illumination,
        )
        kind = "counts"
    else:
        if darks is not None:
            raise XanestrackError(f"{darks}: darks given without `flats`; give the flats too, or neither")
        od, kind, more = values_without_flats(
            data, values, source=path, flats_hint="`flats` (reference images)", unlit=unlit
        )
        notes += more
    rounded = rounded_energies_note(e, source=path)
    if rounded:
        notes.append(rounded)
    meta = dict(source=str(path), reader="tiff", values=kind, files=files, notes=notes)
    refusal = energy_axis_last_refusal(od, source=path)  # a cube saved (rows, cols, energies)
    if refusal:
        raise XanestrackError(refusal)
    _keep_extras(meta, unlit, illumination)
    from .tiff import tiff_pixel_size

    # an ImageJ or OME TIFF's, with its unit (ignored before, without a word)
    pixel = tiff_pixel_size(files[0], notes=notes)
    if pixel is not None:
        notes.append(f"{files[0]}: pixel size {pixel:.4g} um, as the file's ImageJ/OME metadata state it")
    return Stack(_in_energy_order(od, e, reverse, meta), e, pixel, meta)


#: an energy in a file name: a number, then eV or keV (``frame_8333.5eV``, ``..._08324.0_eV_001of003``); its decimal
#: mark a point or a ``p`` (``8333p5eV``, ``8p3335keV``: a ``p`` between digits just before the unit is no separator)
_ENERGY_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:[.p]\d+)?)[ _-]?(k?ev)(?![a-z])", re.IGNORECASE)
#: ``8200_0eV``: digits, ``_``, digits, then the unit, where the digits before ``_`` alone would be an energy: the
#: ``_`` may be the name's decimal mark (said where the energy read is below 100 eV)
_UNDERSCORE_DECIMAL = re.compile(r"(?<![\d.])(\d{3,})_(\d+)[ -]?(k?ev)(?![a-z])", re.IGNORECASE)


def _natural_key(path: Path):
    """``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _tiff_files(paths) -> list | None:
    """The TIFF files of a folder or a list of two or more, in order; None where the inputs are something else."""
    if len(paths) == 1 and not paths[0].is_dir():
        return None
    files = []
    for p in paths:
        if p.is_dir():
            inside = input_files(p)
            if not inside or inside[0].suffix.lower() not in _TIFF:
                return None  # a Zeiss folder, or neither: the .xrm reader says what it found
            files += sorted(inside, key=_natural_key)
        elif p.suffix.lower() in _TIFF:
            files.append(p)
        else:
            return None
    return files


def _name_energies(files) -> tuple[list, np.ndarray | None]:
    """Each file's energies found in its name (:data:`_ENERGY_IN_NAME`), and the energy (eV) of each where every
    name holds exactly one (else None)."""
    found = [_ENERGY_IN_NAME.findall(f.stem) for f in files]
    if any(len(m) != 1 for m in found):
        return found, None
    values = np.array(
        [float(v.replace("p", ".")) * (1000.0 if unit.lower() == "kev" else 1.0) for ((v, unit),) in found]
    )
    if np.any(values < MIN_ENERGY_EV):  # not an energy any scan has: said by _low_name_energy where the names are used
        return found, None
    return found, values


def _low_name_energy(files, found) -> str | None:
    """The refusal of an energy below 100 eV read from a file's name (``scan_8200_0eV.tif``: 0 eV, the digits after
    a ``_`` used as the decimal mark), naming the file and what was read; None where there is none."""
    for f, m in zip(files, found):
        if len(m) != 1:
            continue
        ((v, unit),) = m
        ev = float(v.replace("p", ".")) * (1000.0 if unit.lower() == "kev" else 1.0)
        if ev >= MIN_ENERGY_EV:
            continue
        u = _UNDERSCORE_DECIMAL.search(f.stem)
        guess = (
            f" (is `_` its decimal mark, {u.group(1)}.{u.group(2)} {u.group(3)}? write it with a point: "
            f"{u.group(1)}.{u.group(2)}{u.group(3)})"
            if u
            else ""
        )
        return (
            f"{f}: energy read as {ev:g} eV from its name ({v!r} before {unit!r}), below any absorption edge a scan "
            f"studies{guess}; rename the files (as in frame_8333.5eV.tif, or 8333p5eV), or pass `energies` FILE, one "
            "energy per file in the order of the files (a folder's: the natural order of their names)"
        )
    return None


def _shell_order_note(files) -> tuple[list, str | None]:
    """Files given in the alphabetical order a shell's ``*`` gives, where their names' numbers are not
    zero-padded: put in the natural order (``frame_2`` before ``frame_10``, as a folder's are), with a note.
    (``frames/*.tif --energies energies.txt`` gave frame_10 the second energy: every frame after frame_1 the
    wrong one, every particle's E50 NaN, nothing said.) Any other order is kept as given."""
    names = [f.name for f in files]
    natural = sorted(files, key=_natural_key)
    if len(files) < 3 or names != sorted(names) or natural == list(files):
        return list(files), None
    shown = ", ".join(f.name for f in files[:3])
    return natural, (
        f"{len(files)} TIFF files given in alphabetical order ({shown}, ...: a shell's *), their numbers not "
        f"zero-padded: taken in the natural order of their names ({', '.join(f.name for f in natural[:3])}, ...), "
        "as a folder's are; give them in the order you mean otherwise"
    )


#: eV. Energies in the files' names and in the energies file further apart than this are said (the file's are used)
NAMES_ENERGY_TOLERANCE_EV = 1.0


def _names_against_energies(files, values) -> str | None:
    """Where every file's name holds an energy and an energies file is given too: refused where the two order the
    frames differently (a file listing them high to low beside names low to high reversed every frame's energy:
    every E50 NaN, nothing said), a note where they differ by more than :data:`NAMES_ENERGY_TOLERANCE_EV`."""
    values = np.asarray(values, float).ravel()
    named = _name_energies(files)[1]
    if len(files) < 2 or values.size != len(files) or named is None:
        return None
    if not np.array_equal(np.argsort(named, kind="stable"), np.argsort(values, kind="stable")):
        raise XanestrackError(
            f"{files[0].parent}: the energies file orders the frames otherwise than the energies in the files' names "
            f"({files[0].name}: {named[0]:.1f} eV in its name, {values[0]:.1f} eV in the file; {files[-1].name}: "
            f"{named[-1]:.1f} / {values[-1]:.1f} eV): give the files in the energies file's order, or leave the "
            "energies file out to use the names"
        )
    diff = float(np.max(np.abs(named - values)))
    if diff > NAMES_ENERGY_TOLERANCE_EV:
        return (
            f"the energies file differs from the energies in the files' names by up to {diff:.1f} eV (the same order): "
            "the file's are used"
        )
    return None


def check_run_memory(inputs, *, learned_models: bool = True, scan: int | None = None) -> int | None:
    """Refuse, before anything is read, a run the memory cannot hold.

    The readers check only what reading needs (the frames as stored and as float32); a
    run that passed that check failed later (loading PyTorch: "failed to map segment", or
    mid-read), or was killed. This checks the run's documented need: twice the frames as
    float32 plus :data:`RUN_WORKING_BYTES`, plus :data:`LEARNED_MODELS_BYTES` where the
    learned models are used, against the memory this process may still use.

    Parameters
    ----------
    inputs : path or list of paths
        As :func:`read_stack`.
    learned_models : bool
        Whether the learned detector or segmenter will be loaded.
    scan : int, optional
        The scan of an HDF5 file with a scan axis.

    Returns
    -------
    int or None
        The frames' size as float32 (bytes), or None where it cannot be told without reading
        (Zeiss files, an input the reader will refuse): nothing is checked then.

    Raises
    ------
    XanestrackError
        Where the run needs more than 90 % of the memory available, with both numbers.
    """
    from .checks import check_memory

    paths = _as_paths(inputs)
    shape = _frames_shape(paths, scan)
    if shape is None:
        return None
    frames = int(np.prod(shape)) * 4
    models = LEARNED_MODELS_BYTES if learned_models else 0
    check_memory(
        2 * frames + RUN_WORKING_BYTES + models,
        source=paths[0] if len(paths) == 1 else paths[0].parent,
        what=f"the run on the frames {shape} (twice them as float32, "
        f"{RUN_WORKING_BYTES / 2**30:.1f} GiB of working memory"
        + (f", {models / 2**30:.1f} GiB for the learned models)" if models else ")"),
    )
    return frames


def _frames_shape(paths, scan) -> tuple | None:
    """(frames, rows, cols) of the input from its files' headers, without reading the images; None where
    that cannot be told (a Zeiss scan, an input the readers will refuse with their own message)."""
    try:
        if not paths or not all(p.exists() for p in paths):
            return None
        files = _tiff_files(paths)
        if files is not None:
            import tifffile

            with tifffile.TiffFile(files[0]) as t:
                page = t.pages[0].shape
            return (len(files), *page[-2:]) if len(page) >= 2 else None
        path = paths[0]
        suffix = path.suffix.lower()
        if len(paths) > 1 or path.is_dir() or suffix in _XRM:
            return None
        if suffix in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as t:
                shape = tuple(int(v) for v in t.series[0].shape)
        elif suffix in _HDF:
            import h5py

            from .hdf5 import DXCHANGE, FXI, image_shape

            with h5py.File(path, "r") as f:
                key = next((k["data"] for k in (FXI, DXCHANGE) if isinstance(f.get(k["data"]), h5py.Dataset)), None)
                if key is None:
                    return None
                # the axes of length 1 the reader drops ((40, rows, cols, 1); (40, 1, rows, cols) without a scan)
                shape = image_shape(f[key].shape)
            if len(shape) == 4 and scan is not None:
                shape = shape[1:]
            elif len(shape) == 4 and 1 in shape[:2]:
                shape = (*(n for n in shape[:-2] if n != 1), *shape[-2:])
        else:
            return None
    except Exception:  # an unreadable header: the reader refuses it with its own message
        return None
    if len(shape) == 2:
        shape = (1, *shape)
    return shape if len(shape) == 3 else None


def _tiff_frames(files, energies):
    """(frames, energies in increasing order, reversed?, notes, the files' order taken or None) of single-frame TIFF files."""
    from .tiff import stack_single_images

    notes = []
    if energies is None:
        found, values = _name_energies(files)
        low = _low_name_energy(files, found) if values is None else None
        if low:
            raise XanestrackError(low)
        if values is None:
            bad = next(f for f, m in zip(files, found) if len(m) != 1)
            raise XanestrackError(
                f"{bad}: {'no' if not found[files.index(bad)] else 'more than one'} energy in its name "
                f"(as in frame_8333.5eV.tif); pass `energies` FILE, one energy per file in the order of the files"
                + (" (a folder's: the natural order of their names)" if len(files) > 1 else "")
            )
        order = np.argsort(values, kind="stable")
        files = [files[i] for i in order]
        values = values[order]
        notes.append(f"{len(files)} TIFF files, one frame each, energies from their names, taken in energy order")
    else:
        order = None
        values = _energies_arg(energies)
        files, shell_note = _shell_order_note(files)
        if shell_note:
            notes.append(shell_note)
        named = _names_against_energies(files, values)
        if named:
            notes.append(named)
        notes.append(
            f"{len(files)} TIFF files, one frame each, in the order given (a folder's: the natural order of their names), "
            f"energies from {energies if isinstance(energies, (str, Path)) else 'the values given'} in that order"
        )
    e, reverse = energy_order(values, len(files), source=f"{files[0].parent}")
    data = stack_single_images(
        files,
        notes=notes,
        source=files[0].parent,
        noun="frame",
        one_each="a list of TIFF files must give one frame each (or give one TIFF stack with an energies file)",
        match="the frames of a scan must match",
    )
    return data, e, reverse, notes, order


def _match_flats(flats, n_frames: int, *, source, notes):
    """Flats as one per frame or one for all; any other number is averaged, and that is noted."""
    if flats.ndim == 2:
        flats = flats[None]
    if flats.shape[0] == 0:
        raise XanestrackError(f"{source}: the flat-field images hold no image (an empty dataset); give flats")
    if flats.shape[0] in (1, n_frames):
        return flats
    notes.append(
        f"{source}: {flats.shape[0]} flat-field images for {n_frames} frames: not one per frame, so their mean "
        "is used for every frame (give one flat per frame if the beam changed with energy)"
    )
    mean = flats.mean(axis=0, keepdims=True, dtype=np.float32)
    # a pixel saturated in any of them averages to below the full scale, where it would pass for measured: kept
    # at the full scale, which optical_density takes for saturated (a uint16's as float: 65535; a 12-bit camera's 4095;
    # wherever else the flats' counts piled up, a full well's 60000)
    from .flatfield import _saturated

    sat, top = _saturated(flats)
    if sat is not None:
        mean[sat.any(axis=0, keepdims=True)] = top
    return mean


def _energies_arg(energies):
    if isinstance(energies, (str, Path)):
        from .tiff import read_energies_file

        return read_energies_file(energies)
    return energies_in_ev(energies, source="energies given")


def _sample(a, n: int = 4):
    """Up to ``n`` frames of a (lazy) stack, every 4th pixel of every 4th row, as float32."""
    if a.ndim == 2:
        return np.asarray(a, np.float32)[None, ::4, ::4]
    if not a.shape[0]:  # no images (an empty dataset): nothing to sample
        return np.zeros((0, 1, 1), np.float32)
    idx = np.unique(np.linspace(0, a.shape[0] - 1, min(n, a.shape[0])).astype(int))
    return np.stack([np.asarray(a[int(k)], np.float32)[::4, ::4] for k in idx])


def _normalised_already(counts, sample, flat_sample) -> bool:
    """Whether float images (``sample``: :func:`_sample` of ``counts``) beside flats of counts (``flat_sample``: of
    the flats) are transmission already (values within 0-1.5, median 0.2 or more, the flats' median 20 times theirs
    or more), judged where the flats are lit (above their 0.1 percentile, the dark where part of the frame is unlit,
    by :data:`~xanestrack.io.flatfield.UNLIT_SHARE` of their range up to the 90th): a round field's corners, 0 +- 0.02
    in FXI's export (0.1 percentile -0.053), made it "optical density"."""
    from .flatfield import UNLIT_SHARE

    if not np.issubdtype(np.dtype(counts.dtype), np.floating):
        return False
    if sample.shape[1:] == flat_sample.shape[1:] and np.isfinite(flat_sample).any():
        base, top = np.nanpercentile(flat_sample, [0.1, 90])
        with np.errstate(invalid="ignore"):
            lit = (flat_sample - base > UNLIT_SHARE * (top - base)).all(axis=0)
        if lit.any():
            sample, flat_sample = sample[:, lit], flat_sample[:, lit]
    c, f = sample[np.isfinite(sample)], flat_sample[np.isfinite(flat_sample)]
    if not c.size or not f.size:
        return False
    lo, med, hi = np.percentile(c, [0.1, 50, 99.9])
    return bool(lo >= 0 and hi <= 1.5 and med >= 0.2 and np.median(f) >= 20 * med)


def _constant(f) -> bool:
    """Flats (``f``: :func:`_sample` of them) that are a placeholder: one value, 1 or less, everywhere (FXI's
    'img_only' export writes ones)."""
    return bool(f.size and np.isfinite(f).all() and np.ptp(f) == 0 and f.flat[0] <= 1)


def _no_values_with_flats(path, values, what: str) -> None:
    """Refuse ``values`` od / transmission for counts that flats turn into transmission: it would be ignored."""
    if values in ("od", "transmission"):
        raise XanestrackError(
            f"{path}: `values` {values} not used for {what}: its counts are divided by the flats; "
            "leave `values` out (it is for data without flats)"
        )


def _no_tiff_options(path, what: str, flats, darks) -> None:
    """Refuse TIFF flats or darks for an input that brings its own: they would be ignored."""
    given = [name for name, v in (("flats", flats), ("darks", darks)) if v is not None]
    if given:
        raise XanestrackError(
            f"{path}: {' and '.join(f'`{g}`' for g in given)} not used for {what}; leave "
            f"{'them' if len(given) > 1 else 'it'} out"
        )


def _hdf5_stack(d, path, energies, values, scan, flats=None, darks=None, dynamic_flats=False) -> Stack:
    """The Stack of what :func:`xanestrack.io.hdf5.read_hdf5` found; TIFF ``flats`` (and
    ``darks``) only for a file without flat-field images of its own."""
    notes = list(d["notes"])
    flat_name = f"/{'img_bkg' if d['layout'] == 'fxi' else 'exchange/data_white'}"
    if d["flats"] is not None:
        _no_tiff_options(path, f"an HDF5 file with its own flat-field images ({flat_name})", flats, darks)
        given = values in ("od", "transmission")
        sample = _sample(d["counts"])  # a few frames, read once (lazily read files: from disk)
        flat_sample = _sample(d["flats"])
        normalised = not given and values == "auto" and _normalised_already(d["counts"], sample, flat_sample)
        if given and sample.size and np.median(sample) > 50:  # `values` ignored before
            raise XanestrackError(
                f"{path}: `values` {values}, but its images look like raw counts (median {np.median(sample):.3g}) "
                f"and it has flat-field images ({flat_name}); leave `values` out to divide them by the flats"
            )
        if given or normalised:
            # FXI's export writes img_xanes as I/I0 beside the flats it was divided by: divided again, every
            # pixel was "zero transmission" and no particle was found (and `values` was refused)
            notes.append(
                f"{path}: the images taken as {values if given else 'transmission'} "
                + (
                    "as asked"
                    if given
                    else "(values 0-1.5 beside flats of counts: normalised already, as FXI exports them)"
                )
                + f"; the file's flat-field images ({flat_name}) not used"
            )
            counts = d["counts"]
            if not isinstance(counts, np.ndarray):  # read frame by frame beside the flats: now read whole
                counts = np.asarray(counts[0 : counts.shape[0]])
            d = dict(d, counts=counts, flats=None, darks=None)
            values = values if given else "transmission"
        elif _constant(flat_sample):
            raise XanestrackError(
                f"{path}: its flat-field images ({flat_name}) are ones (or zeros) everywhere: no flats (FXI's 'img_only' "
                "export?); give `flats` from TIFF, or `values` od|transmission if the images are normalised"
            )
    elif flats is not None:
        _no_values_with_flats(path, values, "an HDF5 file with `flats`")
    elif darks is not None and flats is None:
        raise XanestrackError(f"{darks}: darks given without `flats`; give the flats too, or neither")
    if energies is None:
        e = d["energies_ev"]
    else:
        e = _energies_arg(energies)
        if d["energies_ev"] is not None:
            name = energies if isinstance(energies, (str, Path)) else "the energies given"
            where = f"{path} /{'X_eng' if d['layout'] == 'fxi' else 'exchange/energy'}"
            notes.append(replaced_energies_note(name, d["energies_ev"], e, where))
    e, reverse = energy_order(e, d["counts"].shape[0], source=path, frame_shape=d["counts"].shape[1:])
    rounded = rounded_energies_note(e, source=path)
    if rounded:
        notes.append(rounded)
    flats_, kind = d["flats"], "counts"
    if flats_ is None and flats is not None:
        from .tiff import read_tiff_frames

        flats_ = read_tiff_frames(flats, notes=notes)
        darks_ = read_tiff_frames(darks, notes=notes) if darks is not None else None
        if darks_ is None:
            notes.append(f"{path}: no dark images (`darks`): dark taken as 0")
        d = dict(d, darks=darks_)
    unlit = []  # the pixels outside the beam's lit field, where optical_density finds any
    illumination = []  # the images' illumination off their flats', where optical_density finds it
    if flats_ is None:
        od, kind, more = values_without_flats(
            d["counts"],
            values,
            source=path,
            flats_hint=f"flat-field images (/{'img_bkg' if d['layout'] == 'fxi' else 'exchange/data_white'})",
            unlit=unlit,
        )
        notes += more
    else:
        flats_ = _match_flats(flats_, d["counts"].shape[0], source=path, notes=notes)
        od = optical_density(
            d["counts"],
            flats=flats_,
            darks=d["darks"],
            source=str(path),
            notes=notes,
            unlit=unlit,
            dynamic_flats=dynamic_flats,
            illumination=illumination,
        )
    meta = dict(
        source=str(path) if scan is None else f"{path}[scan {scan}]",
        reader=f"hdf5-{d['layout']}" + ("" if scan is None else "-series"),
        values=kind,
        files=[str(path)] + [str(p) for p in (flats, darks) if p is not None and d["flats"] is None],
        notes=notes,
    )
    refusal = energy_axis_last_refusal(od, source=path)  # a cube saved (rows, cols, energies)
    if refusal:
        raise XanestrackError(refusal)
    _keep_extras(meta, unlit, illumination)
    return Stack(_in_energy_order(od, e, reverse, meta), e, d["pixel_size_um"], meta)


def _keep_extras(meta: dict, unlit: list, illumination: list) -> None:
    """Keep in ``meta`` what :func:`optical_density` (or ``values_without_flats``) handed back beside the optical
    density, where it found any: ``"unlit"``, the pixels outside the beam's lit field (the pipeline flags a particle
    the field's edge cuts as out of view), and ``"illumination"``, the images' illumination off their flats' (the
    pipeline takes it out of the particles' chemistry)."""
    if unlit:
        meta["unlit"] = unlit[0]
    if illumination:
        meta["illumination"] = illumination[0]


def _in_energy_order(od, energies_ev, reverse: bool, meta: dict):
    """``od`` with its frames in the order of ``energies_ev`` (increasing): reversed in place
    (no second stack in memory) where the scan went from high to low energy, which
    ``meta`` then records (``frames_reversed``, and a note saying how frames are numbered)."""
    if not reverse:
        return od
    n = od.shape[0]
    if not (isinstance(od, np.ndarray) and od.flags.writeable):
        od = np.array(od)
    for i in range(n // 2):
        first = od[i].copy()
        od[i] = od[n - 1 - i]
        od[n - 1 - i] = first
    meta["frames_reversed"] = True
    if meta.get("illumination") is not None:  # its frames too
        meta["illumination"] = meta["illumination"].reversed()
    meta["notes"].append(
        f"energies from high to low ({energies_ev[-1]:.1f} -> {energies_ev[0]:.1f} eV): the frames are taken in "
        f"increasing energy, so frame k of every output is frame {n - 1} - k of the input"
    )
    return od
