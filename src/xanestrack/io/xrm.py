"""Zeiss/Xradia ``.xrm`` / ``.txrm`` files (OLE2 compound documents, see :mod:`.ole`).

Layout: image ``i`` (1-based) is the stream ``ImageData{(i-1)//100+1}/Image{i}``; its
size is in ``ImageInfo/ImageWidth`` and ``ImageInfo/ImageHeight`` (uint32), its type
in ``ImageInfo/DataType`` (5: uint16, 10: float32); ``ImageInfo/Energy`` (eV),
``PixelSize`` (um) and ``ExpTimes`` (s) are float32 arrays, one value per image. A
reference (flat) may be stored inside the file as ``ReferenceData/Image``.
Pixel data are row-major with the width as the fast axis: the image is
``(height, width)``.

Scans from one folder (the SSRL 6-2C layout is the first case)::

    rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm       sample, 8324 eV, exposure 1 of 3
    rep01_000051_ref_20161456_ssrl-test-data_08324.0_eV_001of010.xrm   reference (flat)

The default grouping rule (:func:`default_grouping`): a file is a *reference* when
``ref`` is a word of its name (``_ref_``, ``-ref-``, ``ref_`` at the start), else a
*sample*; its energy is ``ImageInfo/Energy`` when that is non-zero, else the number
before ``eV`` in the name. Repeated exposures at one energy are averaged after
dividing by their exposure times; each sample energy is divided by the mean
reference of the same energy (or the reference stored in the file). Images whose
energies lie within :data:`ENERGY_TOLERANCE_EV` of one another (a monochromator's
readback in ``ImageInfo/Energy``) are one energy, with a note. Pass your own
``grouping(path, energy_from_metadata) -> (role, energy_ev)`` to override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import XanestrackError
from ..stack import Stack
from .checks import (
    MAX_ENERGY_EV,
    MIN_ENERGY_EV,
    check_frame_shape,
    check_memory,
    replaced_energies_note,
    rounded_energies_note,
    validated_energies,
)

__all__ = ["XrmFile", "read_xrm", "read_xrm_scan", "default_grouping", "energy_from_name"]


_DTYPES = {
    5: np.dtype("<u2"),
    10: np.dtype("<f4"),
    3: np.dtype("<u1"),
    4: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<u4"),
}


@dataclass(frozen=True)
class XrmFile:
    """Contents of one .xrm/.txrm file."""

    path: Path
    images: np.ndarray  # (n, height, width)
    energies_ev: np.ndarray  # (n,), NaN where the metadata has none
    exposure_s: np.ndarray  # (n,) s, NaN where unknown (ExpTimes 0 or missing)
    pixel_size_um: float | None
    reference: np.ndarray | None = None
    reference_exposure_s: float | None = None
    notes: list = field(default_factory=list)


def _read_array(ole, name, dtype, path):
    if not ole.exists(name):
        return None
    try:
        raw = ole.read(name)
    except ValueError as exc:
        raise XanestrackError(f"{path}: stream {name} unreadable: {exc}") from None
    n = len(raw) // np.dtype(dtype).itemsize
    return np.frombuffer(raw[: n * np.dtype(dtype).itemsize], dtype=dtype)


def read_xrm(path) -> XrmFile:
    """Read every image of one .xrm/.txrm file.

    Raises
    ------
    ValueError
        If the file is not an OLE2 document, lacks the size/type streams, or an image
        stream is missing or shorter than width x height (a truncated file).
    """
    from .ole import OleFile

    path = Path(path)
    if not path.is_file():
        raise XanestrackError(f"{path}: file not found")
    check_memory(2 * path.stat().st_size, source=path, what="reading the file")
    try:
        ole = OleFile(path)
    except ValueError as exc:
        msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        hint = "copy the file again or leave it out" if "truncated" in msg else "not a readable Zeiss/Xradia file"
        raise XanestrackError(f"{msg} ({hint})") from None
    except Exception as exc:  # a damaged header can break any parse step
        raise XanestrackError(f"{path}: damaged Zeiss/Xradia file ({type(exc).__name__}: {exc})") from None
    w = _read_array(ole, "ImageInfo/ImageWidth", "<u4", path)
    h = _read_array(ole, "ImageInfo/ImageHeight", "<u4", path)
    dt = _read_array(ole, "ImageInfo/DataType", "<u4", path)
    if w is None or h is None or w.size == 0 or h.size == 0:
        raise XanestrackError(f"{path}: no ImageInfo/ImageWidth or ImageHeight: not an image file or truncated")
    width, height = int(w[0]), int(h[0])
    if width <= 0 or height <= 0 or width * height > 1 << 28:
        raise XanestrackError(f"{path}: implausible image size {width} x {height}")
    check_frame_shape((1, height, width), source=path, what="ImageInfo/ImageWidth x ImageHeight")
    dtype = _DTYPES.get(int(dt[0]) if dt is not None and dt.size else 5)
    if dtype is None:
        raise XanestrackError(f"{path}: unsupported ImageInfo/DataType {int(dt[0])}")
    n_img = _read_array(ole, "ImageInfo/NoOfImages", "<u4", path)
    taken = _read_array(ole, "ImageInfo/ImagesTaken", "<u4", path)
    n = int(n_img[0]) if n_img is not None and n_img.size else 1
    if taken is not None and taken.size and 0 < int(taken[0]) < n:
        n = int(taken[0])
    if n < 1:
        raise XanestrackError(
            f"{path}: ImageInfo/NoOfImages is {n}: the file declares no image (an aborted acquisition?)"
        )
    images = []
    for i in range(1, n + 1):
        name = f"ImageData{(i - 1) // 100 + 1}/Image{i}"
        if not ole.exists(name):
            if i == 1:
                raise XanestrackError(
                    f"{path}: no image stream ({name}): the file holds no image (truncated acquisition?)"
                )
            raise XanestrackError(f"{path}: image {i} of {n} missing ({name}): truncated file")
        raw = ole.read(name, partial=True)
        need = width * height * dtype.itemsize
        if len(raw) < need:
            raise XanestrackError(
                f"{path}: image {i} has {len(raw) // dtype.itemsize} pixels, expected {width} x {height} = "
                f"{width * height}: truncated file"
            )
        images.append(np.frombuffer(raw[:need], dtype=dtype).reshape(height, width))
    if ole.truncated:
        raise XanestrackError(
            f"{path}: truncated file ({path.stat().st_size} of {ole.expected_size} bytes; the end, with the "
            "metadata or reference image, is missing): copy the file again or leave it out"
        )
    energy = _read_array(ole, "ImageInfo/Energy", "<f4", path)
    exp = _read_array(ole, "ImageInfo/ExpTimes", "<f4", path)
    pix = _read_array(ole, "ImageInfo/PixelSize", "<f4", path)
    notes = []
    e = np.full(n, np.nan)
    if energy is not None and energy.size:
        vals = energy[:n].astype(float)
        ok = (vals >= MIN_ENERGY_EV) & (vals <= MAX_ENERGY_EV)
        if np.any(~ok & (vals != 0)):  # 0 means "not recorded"; anything else implausible is said
            notes.append(f"ImageInfo/Energy {vals[~ok & (vals != 0)][0]:g} is not an energy in eV: ignored")
        e[: vals.size] = np.where(ok, vals, np.nan)
        if n > 1 and np.isfinite(e[0]) and np.all(~np.isfinite(e[1:])):
            # known .txrm quirk: the energy is written for image 1 only
            e[:] = e[0]
            notes.append("ImageInfo/Energy set for image 1 only; applied to all images")
    t = np.full(n, np.nan)  # NaN: exposure unknown (no ExpTimes, or 0)
    if exp is not None and exp.size:
        tv = exp[:n].astype(float)
        t[: tv.size] = np.where(tv > 0, tv, np.nan)
        if tv.size < n and tv.size:
            t[tv.size :] = tv[0]
    ref = None
    ref_t = None
    if ole.exists("ReferenceData/Image"):
        rdt = _read_array(ole, "ReferenceData/DataType", "<u4", path)
        rtype = _DTYPES.get(int(rdt[0]) if rdt is not None and rdt.size else 10, np.dtype("<f4"))
        raw = ole.read("ReferenceData/Image", partial=True)
        if len(raw) >= width * height * rtype.itemsize:
            ref = np.frombuffer(raw[: width * height * rtype.itemsize], dtype=rtype).reshape(height, width)
            rexp = _read_array(ole, "ReferenceData/ExpTime", "<f4", path)
            ref_t = float(rexp[0]) if rexp is not None and rexp.size and rexp[0] > 0 else None
        else:
            notes.append("ReferenceData/Image truncated: ignored")
    return XrmFile(
        path=path,
        images=images[0][None] if len(images) == 1 else np.stack(images),
        energies_ev=e,
        exposure_s=t,
        pixel_size_um=float(pix[0]) if pix is not None and pix.size and np.isfinite(pix[0]) and pix[0] > 0 else None,
        reference=ref,
        reference_exposure_s=ref_t,
        notes=notes,
    )


_ENERGY_RE = re.compile(r"(\d{3,6}(?:\.\d+)?)\s*_?eV", re.IGNORECASE)
_REF_RE = re.compile(r"(?:^|[_\-. ])(?:ref|reference|flat|bkg)(?:[_\-. ]|$)", re.IGNORECASE)


def energy_from_name(name: str) -> float | None:
    """The energy in eV written in a file name (``..._08324.0_eV_...``), or None."""
    m = _ENERGY_RE.findall(Path(name).name)
    return float(m[-1]) if m else None


def default_grouping(path, energy_from_metadata):
    """``(role, energy_ev)`` of a file: role ``"sample"`` or ``"reference"``.

    See the module docstring for the rule.
    """
    name = Path(path).stem
    role = "reference" if _REF_RE.search(name) else "sample"
    e = energy_from_metadata
    if e is None or not np.isfinite(e) or e <= 0:
        e = energy_from_name(name)
    return role, e


def _collect(paths):
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(
                q
                for q in p.iterdir()
                if q.suffix.lower() in (".xrm", ".txrm") and q.is_file() and not q.name.startswith(".")
            )
            if not found:
                kinds = sorted({q.suffix.lower() or q.name for q in p.iterdir() if not q.name.startswith(".")})
                raise XanestrackError(
                    f"{p}: folder holds no .xrm/.txrm files nor single-frame TIFFs"
                    + (f" (found {', '.join(kinds[:5])})" if kinds else " (it is empty)")
                    + "; give an HDF5 file or a TIFF stack itself, not its folder"
                )
            files += found
        else:
            files.append(p)
    return files


def _accumulate(table, key, image, t_exp, path):
    """Remember ``image`` (a view on the file's bytes, not a float copy) and its exposure (NaN: unknown)."""
    table.setdefault(key, [[], []])
    table[key][0].append(
        (image, np.float32(1.0) / np.float32(t_exp) if np.isfinite(t_exp) and t_exp > 0 else np.float32(np.nan))
    )
    table[key][1].append(path)


#: repeated exposures of one energy whose mean count rates spread more than this (relative to their median)
#: are not repeats of one image: said in a note (a tomography's 7 projections were averaged into one frame)
UNLIKE_EXPOSURES = 0.1


def _unlike_exposures(jobs) -> list:
    """Notes for energies whose sample images, averaged as repeated exposures, differ more than repeats do."""
    notes = []
    for _, k, sent, _, _ in jobs:
        if len(sent) < 2:
            continue
        rates = np.array([float(img.mean()) * (float(sc) if np.isfinite(sc) else 1.0) for img, sc in sent])
        med = float(np.median(rates))
        if med > 0 and (rates.max() - rates.min()) / med > UNLIKE_EXPOSURES:
            notes.append(
                f"the {len(sent)} sample images at {k:.2f} eV were averaged as repeated exposures, but their mean "
                f"count rates differ by {100 * (rates.max() - rates.min()) / med:.0f} % ({rates.min():.3g}-"
                f"{rates.max():.3g}): are they one image repeated, or several (a tomography, a time series)?"
            )
    return notes


def _exposure_assumption(jobs, groups):
    """Count rates need exposure times: all known, or all unknown (then taken equal, noted).

    A mixture (ExpTimes 0 or missing in some files only) is refused: taking the unknown
    ones as 1 s would scale their counts arbitrarily (an OD of 1.97 read as -1.72).
    """
    entries = []  # (scale, file, role, energy)
    for (_, k, sent, rent, _), g in zip(jobs, groups):
        entries += [(scale, f, "sample", k) for (_, scale), f in zip(sent, g["samples"])]
        rfiles = g["samples"] if g["references"] == ["(inside the sample file)"] else g["references"]
        entries += [(scale, f, "reference", k) for (_, scale), f in zip(rent, rfiles)]
    unknown = [e for e in entries if not np.isfinite(e[0])]
    if not unknown:
        return []
    if len(unknown) < len(entries):
        _, f, role, k = unknown[0]
        raise XanestrackError(
            f"{f}: {role} image at {k:.2f} eV has no exposure time (ImageInfo/ExpTimes is 0 or missing) while "
            f"other images state theirs ({len(unknown)} of {len(entries)} unknown), so their counts cannot be "
            "compared: fix the metadata, or leave such files out"
        )
    for _, _, sent, rent, _ in jobs:  # all unknown: equal exposures
        sent[:] = [(img, np.float32(1.0)) for img, _ in sent]
        rent[:] = [(img, np.float32(1.0)) for img, _ in rent]
    return ["no exposure times in any file (ImageInfo/ExpTimes 0 or missing): all exposures taken as equal"]


def _mean_rate(entries, out):
    """Mean of ``image * (1 / exposure)`` over entries, written into ``out`` (float32)."""
    img, scale = entries[0]
    np.multiply(img, scale, out=out, casting="unsafe")
    for img, scale in entries[1:]:
        out += img.astype(np.float32) * scale
    if len(entries) > 1:
        out *= np.float32(1.0 / len(entries))
    return out


#: eV: images whose energies lie within this of one another are one energy. A monochromator's readback, where
#: ImageInfo/Energy records it, scatters about the energy set (the probe's copy of the SSRL 6-2C files, readbacks
#: written as N(0, 0.03 eV): the 13 images of each energy spread over 0.079 and 0.101 eV, neighbours at most 0.032 eV
#: apart); a scan's steps are far coarser (the SSRL 6-2C scan's 62 energies, its XANES.txt: 1 eV at the finest)
ENERGY_TOLERANCE_EV = 0.1


def _one_energy_within_tolerance(samples, refs, inner_refs) -> str | None:
    """Merge, in place, the entries of ``samples``, ``refs`` and ``inner_refs`` (keyed by energy) whose energies are
    chained within :data:`ENERGY_TOLERANCE_EV` of one another into one energy: the mean of its sample images'
    energies (or of its references', where it has no sample). A note says so where any was merged; nothing is
    merged where a chain spans more than twice the tolerance (a scan whose steps are as fine as the tolerance: its
    energies are then matched exactly, as before)."""
    energies = sorted(set(samples) | set(refs) | set(inner_refs))
    chains = [[energies[0]]]
    for e in energies[1:]:
        if e - chains[-1][-1] <= ENERGY_TOLERANCE_EV:
            chains[-1].append(e)
        else:
            chains.append([e])
    if all(len(c) == 1 for c in chains) or any(c[-1] - c[0] > 2 * ENERGY_TOLERANCE_EV for c in chains):
        return None
    spread = max(c[-1] - c[0] for c in chains)
    n_merged = sum(len(c) > 1 for c in chains)
    for c in chains:
        if len(c) == 1:
            continue
        weights = [(e, len(samples[e][0])) for e in c if e in samples] or [(e, len(refs.get(e, [[]])[0])) for e in c]
        total = sum(w for _, w in weights)
        key = round(sum(e * w for e, w in weights) / total, 3) if total else round(float(np.mean(c)), 3)
        for table in (samples, refs, inner_refs):
            parts = [table.pop(e) for e in c if e in table]
            if parts:
                table[key] = [[x for part in parts for x in part[0]], [x for part in parts for x in part[1]]]
    return (
        f"the images' energies (ImageInfo/Energy: the monochromator's readback?) spread over up to {spread:.3f} eV at "
        f"{n_merged} of the {len(chains)} energies: images within {ENERGY_TOLERANCE_EV:g} eV of one another taken as "
        "one energy, each the mean of its sample images' energies"
    )


#: relative spread of the files' pixel sizes beyond which the reader says which one it took
PIXEL_SIZE_SPREAD = 1e-3


def _pixel_size_spread_note(sizes, used) -> str | None:
    """A note where the files' ``PixelSize`` differ by more than :data:`PIXEL_SIZE_SPREAD` of the one used (the
    first file's): sizes in um follow that one; a magnification that changes across the scan is measured from the
    images (the common motion's scale per frame), not from these values (probe r52 "acq": 0.4 % apart, unsaid)."""
    if not sizes or not used:
        return None
    lo, hi = min(sizes), max(sizes)
    if (hi - lo) / used <= PIXEL_SIZE_SPREAD:
        return None
    return (
        f"the files' pixel sizes differ: {lo:.5g}-{hi:.5g} um ({100 * (hi - lo) / used:.2g} % apart); sizes in um "
        f"use the first file's, {used:.5g} um; a magnification changing across the scan is measured from the images "
        "(the scale per frame), not from these values"
    )


def read_xrm_scan(paths, *, energies=None, grouping=None) -> Stack:
    """Read a XANES scan from .xrm/.txrm files into a Stack (optical density).

    Parameters
    ----------
    paths : list of paths
        Files, or folders whose .xrm/.txrm files are all read (sub-folders are not).
    energies : array, optional
        Override: one energy per sample image, in the order the images are read.
    grouping : callable(path, energy_from_metadata) -> (role, energy_ev), optional
        Default :func:`default_grouping`.

    Raises
    ------
    ValueError
        If a file is unreadable (named), a sample has no energy, an energy has no
        reference, or the image sizes differ.
    """
    grouping = grouping or default_grouping
    files = _collect(paths)
    # running sums of count rates per energy: files are not kept in memory
    samples: dict[float, list] = {}  # key -> [sum, files]
    refs: dict[float, list] = {}
    inner_refs: dict[float, list] = {}
    shape = None
    pixel = None
    sizes = []  # each file's pixel size, um
    notes = []
    order = []
    carried = True  # every image's energy in the files (metadata or name)
    for f in files:
        x = read_xrm(f)
        if shape is None:
            shape = x.images.shape[1:]
        elif x.images.shape[1:] != shape:
            raise XanestrackError(f"{f}: image size {x.images.shape[1:]} differs from the first file's {shape}")
        pixel = pixel or x.pixel_size_um
        if x.pixel_size_um:
            sizes.append(x.pixel_size_um)
        notes += [f"{f.name}: {n}" for n in x.notes]
        for i in range(x.images.shape[0]):
            role, e = grouping(f, x.energies_ev[i])
            if role not in ("sample", "reference"):
                raise XanestrackError(f"grouping returned role {role!r} for {f}; expected 'sample' or 'reference'")
            if energies is None and (e is None or not np.isfinite(e)):
                raise XanestrackError(
                    f"{f}: no energy in the metadata (ImageInfo/Energy is 0) nor in the file name; "
                    "rename the file with '<energy>_eV' or pass the energies explicitly"
                )
            carried = carried and e is not None and bool(np.isfinite(e))
            key = round(float(e), 3) if e is not None and np.isfinite(e) else float(len(order))
            _accumulate(samples if role == "sample" else refs, key, x.images[i], x.exposure_s[i], f)
            if role == "sample":
                order.append(key)
                if x.reference is not None:
                    _accumulate(inner_refs, key, x.reference, x.reference_exposure_s or np.nan, f)
    if not samples:
        raise XanestrackError(f"no sample images among {len(files)} files (all recognised as references)")
    if energies is None or carried:
        # one energy's images whose ImageInfo/Energy is the monochromator's readback (8323.98, 8324.03 eV for 8324):
        # the samples were refused as having no reference, or read as several energies a few 0.01 eV apart
        readback = _one_energy_within_tolerance(samples, refs, inner_refs)
        if readback:
            notes.append(readback)
    keys = sorted(samples)
    if energies is not None:
        e_arr = np.asarray(energies, float).ravel()
        if e_arr.size != len(keys):
            raise XanestrackError(f"{len(keys)} sample energies found in the files but {e_arr.size} energies given")
    from .flatfield import MAX_DEAD_SHARE, dead_note, no_image_refusal, transmission_to_od

    od = np.empty((len(keys), *shape), np.float32)
    groups = []
    jobs = []
    for j, k in enumerate(keys):
        sent, sfiles = samples.pop(k)
        if k in refs:
            rent, rfiles = refs.pop(k)
            src = [str(p) for p in rfiles]
        elif k in inner_refs:
            rent, rfiles = inner_refs.pop(k)
            src = ["(inside the sample file)"]
        else:
            near = sorted(refs, key=lambda r: abs(r - k))
            raise XanestrackError(
                f"no reference (flat) images within {ENERGY_TOLERANCE_EV:g} eV of {k:.2f} eV: samples "
                f"{sorted({p.name for p in sfiles})}{f' ({len(sfiles)} images)' if len(sfiles) > 1 else ''}; "
                + (
                    f"the references are at {', '.join(f'{r:.2f}' for r in sorted(near[:5]))}"
                    f"{' ...' if len(near) > 5 else ''} eV (the nearest {abs(near[0] - k):.2f} eV away); "
                    if near
                    else ""
                )
                + "add reference files for that energy (name containing '_ref_') or remove the energy"
            )
        jobs.append((j, k, sent, rent, src))
        groups.append(dict(energy_ev=k, samples=[str(p) for p in sfiles], references=src))
    notes += _exposure_assumption(jobs, groups)
    notes += _unlike_exposures(jobs)

    n_dead = [0]

    def one(job):
        j, k, sent, rent, src = job
        rsum = _mean_rate(rent, np.empty(shape, np.float32))
        dead = rsum <= 0
        if dead.sum() > MAX_DEAD_SHARE * dead.size:
            raise XanestrackError(
                f"reference images for {k:.2f} eV ({[Path(p).name for p in src][:3]}) are zero or negative at "
                f"{int(dead.sum())} pixels: the reference is unusable there"
            )
        # mean sample rate / mean reference rate, in place
        t = _mean_rate(sent, od[j])
        with np.errstate(divide="ignore", invalid="ignore"):
            t /= rsum
        if dead.any():  # dead pixels: no transmission measured (the defect pass fills them)
            t[dead] = np.nan
            n_dead[0] = max(n_dead[0], int(dead.sum()))
        return transmission_to_od(t)

    # energies are independent and numpy releases the GIL: two threads
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(2, len(jobs)))) as ex:
        per_frame = list(ex.map(one, jobs))
    if n_dead[0]:
        notes.append(dead_note(n_dead[0], files[0].parent))
    blank = [j for j, b in enumerate(per_frame) if b > shape[0] * shape[1] / 2]
    refusal = no_image_refusal(
        blank,
        len(per_frame),
        source=files[0].parent,
        cause="the beam off, or the shutter closed, while they were taken?",
    )
    if refusal:
        raise XanestrackError(refusal)
    if sum(per_frame):
        from .flatfield import repair_note

        notes.append(repair_note(per_frame, shape, source=files[0].parent))  # jobs in frame order
    e = np.array(keys, float) if energies is None else np.asarray(energies, float).ravel()
    e = validated_energies(e, len(keys), source=files[0].parent if energies is None else "energies given")
    if energies is not None and carried:
        notes.append(replaced_energies_note("the energies given", keys, e, "the files' metadata or names"))
    spread = _pixel_size_spread_note(sizes, pixel)
    if spread:
        notes.append(spread)
    rounded = rounded_energies_note(e, source=files[0].parent if energies is None else "energies given")
    if rounded:
        notes.append(rounded)
    meta = dict(
        source=str(files[0].parent if len(set(p.parent for p in files)) == 1 else files[0]),
        reader="xrm",
        values="counts",  # divided by their reference images (null in run.json before)
        files=[str(p) for p in files],
        groups=groups,
        notes=notes + ["no dark images in .xrm scans: dark taken as 0"],
    )
    return Stack(od, e, pixel, meta)
