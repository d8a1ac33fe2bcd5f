"""TIFF stacks with an energies file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import XanestrackError, one_line
from ..units import um_per_unit
from .checks import check_frame_shape, check_memory, check_pixel_dtype, energies_in_ev, square_pixel_size

__all__ = ["read_tiff_frames", "read_energies_file"]


def read_tiff_frames(path, *, notes=None) -> np.ndarray:
    """Read a TIFF (multi-page or single image) as (n_frames, rows, cols).

    The declared shape and pixel type are checked before the pixels are read (size
    against the free memory). Further image series of other frame sizes (thumbnails)
    are ignored, with a note appended to ``notes`` when a list is given.

    ``path`` may be a folder of TIFF files of one frame each (flats or darks saved one per energy, as a scan's
    frames are): they are read in the natural order of their names (``flat_2`` before ``flat_10``), the order a
    folder of frames is read in, so that one flat per file pairs with the frame of the same place; a note says so.

    Raises
    ------
    XanestrackError (a ValueError)
        If the file is missing, not a readable TIFF, not 2-D/3-D grey images, or too
        large for the memory; a folder holding no TIFF, or TIFFs of more than one frame or of unlike frames.
    """
    import tifffile

    path = Path(path)
    if path.is_dir():
        return _tiff_folder(path, notes)
    if not path.is_file():
        raise XanestrackError(f"{path}: file not found")
    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise XanestrackError(f"{path}: not a readable TIFF ({type(exc).__name__}: {one_line(exc)})") from None
    with tf:
        try:
            series = list(tf.series)
            s = series[0]
            shape, dtype, axes = tuple(s.shape), np.dtype(s.dtype), str(s.axes)
        except Exception as exc:
            raise XanestrackError(f"{path}: not a readable TIFF ({type(exc).__name__}: {one_line(exc)})") from None
        try:
            photometric = getattr(tf.pages[0].photometric, "name", "")
        except Exception:
            photometric = ""
        # colour samples contiguous (YXS) or planar (SYX: three planes that would pass for three frames)
        colour = "S" in axes and len(shape) >= 3 and shape[axes.index("S")] in (3, 4)
        if colour or photometric in ("RGB", "YCBCR", "SEPARATED"):
            raise XanestrackError(
                f"{path}: a colour (RGB) image {shape}; give grey-level frames (one value per pixel); a stack of 3 or "
                "4 frames written by tifffile.imwrite is tagged RGB unless written with photometric='minisblack'"
            )
        if len(shape) > 3:
            shape = tuple(d for d in shape if d != 1) or (1, 1)
        frames = (1, *shape) if len(shape) == 2 else shape
        if len(frames) != 3:
            raise XanestrackError(
                f"{path}: expected a 2-D image or 3-D stack, got shape {tuple(s.shape)} (axes {axes})"
            )
        others = [t for t in series[1:] if tuple(t.shape)[-2:] == frames[1:]]
        pages = [s, *others]
        if (
            others
            and all(tuple(t.shape) == tuple(s.shape) and np.dtype(t.dtype) == dtype for t in pages)
            and (len(frames) == 3 and frames[0] == 1)
        ):
            # one frame per series, all alike: pages written one at a time (tifffile's append=True)
            check_pixel_dtype(dtype, source=path)
            check_frame_shape((len(pages), *frames[1:]), source=path)
            check_memory(len(pages) * int(np.prod(frames)) * (dtype.itemsize + 4), source=path, what="reading")
            try:
                return np.stack([np.asarray(t.asarray()).reshape(frames[1:]) for t in pages])
            except Exception as exc:
                raise XanestrackError(f"{path}: not a readable TIFF ({type(exc).__name__}: {one_line(exc)})") from None
        if others:
            raise XanestrackError(
                f"{path}: frames are split over {len(others) + 1} image series of different shapes or types; "
                "save the stack as one series of equal frames"
            )
        if len(series) > 1 and notes is not None:
            notes.append(f"{path}: {len(series) - 1} further image series of other sizes (thumbnails?) ignored")
        check_pixel_dtype(dtype, source=path)
        check_frame_shape(frames, source=path)
        n = int(np.prod(frames))
        check_memory(n * (dtype.itemsize + 4), source=path, what=f"reading {frames} {dtype}")
        try:
            data = np.asarray(s.asarray())
        except MemoryError:
            raise XanestrackError(f"{path}: not enough memory to read {frames} {dtype}") from None
        except Exception as exc:
            raise XanestrackError(f"{path}: not a readable TIFF ({type(exc).__name__}: {one_line(exc)})") from None
    return data.reshape(frames)


#: ImageJ's units that state no length: an image not calibrated (``pixel``), or calibrated in none (an empty unit)
_NO_LENGTH_UNITS = ("", "pixel", "pixels")


def stack_single_images(files, *, notes, source, noun: str, one_each: str, match: str) -> np.ndarray:
    """The one image of each TIFF file of ``files``, stacked (n, rows, cols) in their order; refused in one line,
    naming the file, where a file holds more than one ``noun`` (``one_each`` says what was expected) or its image's
    size or type differs from the first's (``match``). The memory the stack needs is checked first."""
    first = read_tiff_frames(files[0], notes=notes)
    check_memory(
        len(files) * first[0].nbytes * 2, source=source, what=f"reading {len(files)} frames of {first.shape[1:]}"
    )
    out = np.empty((len(files), *first.shape[1:]), first.dtype)
    for k, f in enumerate(files):
        frame = first if k == 0 else read_tiff_frames(f, notes=notes)
        if frame.shape[0] != 1:
            raise XanestrackError(f"{f}: holds {frame.shape[0]} {noun}s; {one_each}")
        if frame.shape[1:] != out.shape[1:] or frame.dtype != out.dtype:
            raise XanestrackError(
                f"{f}: {'an' if noun[0] in 'aeiou' else 'a'} {noun} of {frame.shape[1:]} {frame.dtype}, where "
                f"{files[0].name} has {out.shape[1:]} {out.dtype}; {match}"
            )
        out[k] = frame[0]
    return out


def _tiff_folder(path: Path, notes) -> np.ndarray:
    """The frames of a folder of single-frame TIFF files, in the natural order of their names."""
    from . import _natural_key

    # hidden files are not frames (macOS's ._name.tif), as in a folder of the scan's frames
    files = sorted(
        (q for q in path.iterdir() if q.is_file() and q.suffix.lower() in (".tif", ".tiff") and q.name[0] != "."),
        key=_natural_key,
    )
    if not files:
        raise XanestrackError(
            f"{path}: a folder holding no TIFF file; give one TIFF stack of the images, or a folder of TIFF files of "
            "one image each"
        )
    out = stack_single_images(
        files,
        notes=notes,
        source=path,
        noun="image",
        one_each="a folder given for flats or darks must hold one image per file (or give the stack itself)",
        match="the images of one folder must match",
    )
    if notes is not None:
        notes.append(
            f"{path}: a folder of {len(files)} TIFF files, one image each, read in the natural order of their names "
            f"({', '.join(f.name for f in files[:2])}{', ...' if len(files) > 2 else ''})"
        )
    return out


def tiff_pixel_size(path, *, notes=None) -> float | None:
    """The pixel size (um) an ImageJ or OME TIFF states with its unit (ImageJ's ``unit`` and X resolution,
    OME's ``PhysicalSizeX``); None where the file states none, or none in a length unit.

    Where it states the y size too (ImageJ's Y resolution, OME's ``PhysicalSizeY``), both are read: the size where
    they agree, else None with a note (:func:`~xanestrack.io.checks.square_pixel_size`: the pixels are not square;
    the x size alone was taken, the y size dropped without a word).

    The unit is read by :func:`~xanestrack.units.um_per_unit` (ImageJ's ``unit=\\u00B5m``, as it writes "µm", and
    any case). Where the file states a unit that is not understood (``inch``, ``furlong``), a note saying so is
    appended to ``notes`` when a list is given (the particle radius range then falls back to pixels; it was
    dropped without a word).
    """
    import tifffile

    def not_understood(unit, where):
        if notes is not None:
            notes.append(
                f"{path}: {where} states the pixel size in {unit!r}, a unit not understood (nm, um, micron, mm): not "
                "used, the pixel size unknown; the particle radius range is 7-60 px unless `pixel_size` (or "
                "`min_radius` / `max_radius`) is given"
            )

    try:
        with tifffile.TiffFile(path) as tf:
            if tf.is_imagej:
                unit = str((tf.imagej_metadata or {}).get("unit", "")).strip()
                res = tf.pages[0].tags.get("XResolution")
                yres = tf.pages[0].tags.get("YResolution")
                scale = um_per_unit(unit)
                if scale is not None and res is not None:
                    num, den = res.value
                    if not (num and den):
                        return None
                    sizes = {"x": float(den) / float(num) * scale}
                    if yres is not None and all(yres.value):
                        sizes["y"] = float(yres.value[1]) / float(yres.value[0]) * scale
                    return square_pixel_size(sizes, source=path, where="its ImageJ X and Y resolution", notes=notes)
                if scale is None and unit.lower() not in _NO_LENGTH_UNITS:
                    not_understood(unit, "its ImageJ metadata")
            if tf.is_ome and tf.ome_metadata:
                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
                u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
                unit = u.group(1).strip() if u else "um"  # OME's default unit: um
                scale = um_per_unit(unit)
                if m and scale is not None and float(m.group(1)) > 0:
                    sizes = {"x": float(m.group(1)) * scale}
                    my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tf.ome_metadata)
                    uy = re.search(r'PhysicalSizeYUnit="([^"]+)"', tf.ome_metadata)
                    yscale = um_per_unit(uy.group(1).strip() if uy else "um")
                    if my and yscale is not None and float(my.group(1)) > 0:
                        sizes["y"] = float(my.group(1)) * yscale
                    return square_pixel_size(
                        sizes, source=path, where="its OME PhysicalSizeX, PhysicalSizeY", notes=notes
                    )
                if m and scale is None:
                    not_understood(unit, "its OME metadata")
    except Exception:  # the frames' reader says what is wrong with a file
        return None
    return None


_SEP = re.compile(r"[,\t]")
_MAX_HEADER_LINES = 5


#: a line of two integers joined by a comma and nothing else: a decimal comma, or two columns?
_DECIMAL_COMMA = re.compile(r"^\d+,\d+$")
#: a number written with a decimal comma (a field of a semicolon-separated file)
_COMMA_NUMBER = re.compile(r"^[+-]?\d+,\d+([eE][+-]?\d+)?$")


def _fields(line: str):
    """A line's fields, unquoted ("8200.0" as spreadsheets quote them)."""
    if ";" in line:  # semicolons between fields (Excel's CSV where the comma is the decimal mark)
        toks = [t.strip().strip("\"'") for t in line.split(";")]
        return [t.replace(",", ".") if _COMMA_NUMBER.match(t) else t for t in toks]
    toks = _SEP.split(line) if _SEP.search(line) else line.split()
    return [t.strip().strip("\"'") for t in toks]


def _names_energy(field: str) -> bool:
    """Whether a header field names the energy column: "energy", "E [keV]", "E(eV)", "eV", "mono energy"."""
    t = field.lower()
    words = re.findall(r"[a-z]+", t)
    return "energ" in t or "mono" in t or bool({"ev", "kev"} & set(words)) or words[:1] in (["e"], ["eng"])


def _counts_lines(values) -> bool:
    """Whether values are a line counter: 0, 1, 2 ... or 1, 2, 3 ..."""
    v = np.asarray(values, float)
    return v.size >= 2 and v[0] in (0.0, 1.0) and bool(np.all(np.diff(v) == 1))


def read_energies_file(path) -> np.ndarray:
    """Energies from a text file: one per line (or all on one line), or a column of a CSV (eV or keV).

    Lines starting with ``#`` or ``%`` are skipped, as are up to five header lines before the
    first number; a header naming a column "energy" (or "E [keV]", "E(eV)", "eV", "mono")
    selects that column, else the first is used, unless it counts the lines (0, 1, 2 ...:
    refused). Fields are separated by commas, tabs or spaces, or by semicolons, in which case
    a decimal comma is read as the decimal mark. Energies below 100 are keV and converted to eV.

    Raises
    ------
    XanestrackError (a ValueError)
        Naming the file and line for a binary file, a line that is not a number,
        zero/negative energies, or keV mixed with eV.
    """
    path = Path(path)
    src = f"energies file {path}"
    if not path.is_file():
        raise XanestrackError(f"{src}: not found")
    if path.stat().st_size > 16 << 20:
        raise XanestrackError(
            f"{src}: {path.stat().st_size >> 20} MiB is far too large for one energy per frame; is this the right file?"
        )
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise XanestrackError(f"{src}: binary data, not text; give a text file with one energy per line")
    text = raw.decode("utf-8-sig", errors="replace")  # a byte-order mark (Windows editors) is no header
    values, lines, fields = [], [], []
    col, n_header, named, comma_pairs, n_fields = 0, 0, False, 0, None
    header = None
    row = None  # all energies on one line
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(("#", "%")):  # comments (% as Matlab and Origin write them)
            continue
        toks = _fields(s)
        # a data line of one field is that field, whatever a header split on its spaces said
        c = 0 if len(toks) == 1 else col
        try:
            v = float(toks[c])
        except (ValueError, IndexError):
            if values:
                raise XanestrackError(
                    f"{src}: line {n} {one_line(s, 60)!r} is not a number; give one energy per line"
                ) from None
            n_header += 1
            if n_header > _MAX_HEADER_LINES:
                raise XanestrackError(
                    f"{src}: no number in its first {n} lines; give one energy per line (eV or keV)"
                ) from None
            header = s
            for k, t in enumerate(toks):
                if _names_energy(t):
                    col, named = k, True
                    break
            continue
        if n_fields is None:
            n_fields = len(toks)
        fields.append(toks)
        values.append(v)
        lines.append(n)
        comma_pairs += bool(_DECIMAL_COMMA.match(s))
        if len(values) == 1 and not named and len(toks) >= 3:
            try:
                row = [float(t) for t in toks]
            except ValueError:
                row = None
    if not values:
        raise XanestrackError(f"{src}: no numbers found; give one energy per line (eV or keV)")
    if row is not None and len(values) == 1:
        return energies_in_ev(row, source=src, lines=[lines[0]] * len(row))
    if not named and (n_fields or 1) >= 2 and _counts_lines(values):
        # "No.,E [keV]" (a header not understood) or an index column: the frame numbers were read as keV
        raise XanestrackError(
            f"{src}: its first column counts the lines ({values[0]:g}, {values[1]:g}, ...)"
            + (f" and its header {one_line(header, 50)!r} names no energy column" if header else "")
            + "; name the energy column in a header line (energy, E [eV], E [keV]) or give one energy per line"
        )
    if comma_pairs == len(values) and not named:
        # "8230,870" on every line: a decimal comma (8230.870 eV), or two integer columns? was read
        # as 8230 without a word
        n = lines[0]
        raise XanestrackError(
            f"{src}: line {n} {one_line(text.splitlines()[n - 1].strip(), 40)!r} is "
            "one number with a decimal comma or two columns; write the energies with a decimal point (8230.870), "
            "or name the energy column in a header line"
        )
    if not named and (n_fields or 1) >= 2:
        _one_energy_column(src, fields, header)
    return energies_in_ev(values, source=src, lines=lines)


#: eV: the widest span taken for one scan's energies when telling which column of a file holds them (XANES and
#: EXAFS to k = 20 per angstrom span up to about 1.5 keV; a column of elapsed seconds 300-5298 does not pass)
SCAN_SPAN_EV = 2500.0


def _looks_like_a_scan(v) -> bool:
    """Whether values could be a XANES scan's energies: all eV or all keV, within 100 eV - 200 keV, strictly
    monotonic, spanning at most :data:`SCAN_SPAN_EV`."""
    v = np.asarray(v, float)
    if v.size < 2 or not np.isfinite(v).all() or np.any(v <= 0):
        return False
    kev = v < 100
    if kev.any() and not kev.all():
        return False
    e = v * 1000 if kev.all() else v
    d = np.diff(e)
    return bool(e.min() >= 100 and e.max() <= 200e3 and (np.all(d > 0) or np.all(d < 0)) and np.ptp(e) <= SCAN_SPAN_EV)


def _one_energy_column(src, fields, header) -> None:
    """Refuse a file of several columns, none named, whose first column does not look like a scan's energies while
    another does: the first was taken without a word (elapsed seconds read as 300-5298 eV beside the energies in
    keV). Where the first looks like energies it is taken, whatever the others hold (a monitor, a readback)."""
    width = min(len(t) for t in fields)
    cols = []
    for k in range(width):
        try:
            cols.append(np.array([float(t[k]) for t in fields]))
        except ValueError:
            cols.append(None)
    if cols[0] is not None and _looks_like_a_scan(cols[0]):
        return
    like = [k for k, c in enumerate(cols) if k and c is not None and _looks_like_a_scan(c)]
    if not like:
        return
    shown = ", ".join(f"column {k + 1} ({cols[k][0]:g} ... {cols[k][-1]:g})" for k in like)
    first = f"({cols[0][0]:g} ... {cols[0][-1]:g}) " if cols[0] is not None else ""
    raise XanestrackError(
        f"{src}: its first column {first}does not look like a scan's energies; {shown} could be"
        + (f", and its header {one_line(header, 50)!r} names no energy column" if header else "")
        + "; name the energy column in a header line (energy, E [eV], E [keV]) or give one energy per line"
    )
