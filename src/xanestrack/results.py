"""Writing and reading results: the result model to and from an output folder.

:func:`write_results` writes a :class:`~xanestrack.result.PipelineResult` as ``results.h5``
(everything, exactly), ``tracks.csv`` and side tables (for people and spreadsheets) and
``run.json`` (provenance); :func:`read_results` gives the same ``PipelineResult`` back.
The folder itself is claimed, locked and completed atomically by :mod:`xanestrack.outdir`
(re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import XanestrackError, one_line
from .outdir import MARKER, TMP_MARKER, add_to_marker, atomic_output_dir, check_output_dir, output_lock, write_marker  # noqa: F401 (re-exported)

__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "output_lock",
    "write_marker",
    "add_to_marker",
    "write_results",
    "write_tables",
    "write_results_h5",
    "read_results",
    "cluster_table",
]

logger = logging.getLogger(__name__)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


#: tables of a PipelineResult kept exactly in results.h5 (/tables/<name>) and as CSV beside it
TABLES = ("tracks", "detections", "rejected", "motion", "peak_ratios", "similarity", "edge_widths")
_CSV = {
    "tracks": ("tracks.csv", "%.4f"),
    "detections": ("detections.csv", "%.3f"),
    "rejected": ("rejected.csv", "%.2f"),
    "peak_ratios": ("motion_summary.csv", "%.4f"),
}
#: what every results.h5 holds: tracks.csv columns, and per particle its datasets and attributes
TRACK_COLUMNS = ("particle", "frame", "energy_ev", "y", "x", "flags")
PARTICLE_DATASETS = ("aligned", "mask", "positions", "edge_e50", "mean_spectrum", "mean_norm", "pre_edge", "post_edge")
PARTICLE_ATTRS = ("particle", "origin_y", "origin_x", "radius_px", "e0_ev")


def _json_attrs(attrs: dict) -> str:
    """The JSON-able part of a DataFrame's ``attrs`` (nested DataFrames are stored as tables)."""
    import pandas as pd

    return json.dumps({k: v for k, v in attrs.items() if not isinstance(v, pd.DataFrame)}, default=_json_default)


def _write_table(parent, name: str, df, *, velocity_unit: str = "px/frame") -> None:
    """A DataFrame as one dataset per column (strings as UTF-8), exactly; dtypes and attrs kept.

    Each column's dataset carries its ``units`` and ``description`` (:data:`_COLUMN_DOC`; velocities in
    ``velocity_unit``), the group the table's ``description``."""
    import h5py

    g = parent.create_group(name)
    cols, dtypes = [], []
    for j, c in enumerate(df.columns):
        v = df[c].to_numpy()
        key = f"c{j:03d}"
        if v.dtype.kind in "biuf":
            d = g.create_dataset(key, data=v)
        else:  # strings, None, mixed objects
            txt = ["" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x) for x in v]
            d = g.create_dataset(key, data=np.array(txt, dtype=object), dtype=h5py.string_dtype())
        _documented(d, *_column_doc(name, str(c), velocity_unit))
        cols.append(str(c))
        dtypes.append(str(df[c].dtype))
    g.attrs.update(columns=json.dumps(cols), dtypes=json.dumps(dtypes), attrs=_json_attrs(df.attrs), n_rows=len(df))
    g.attrs["description"] = _TABLE_DOC.get(name, f"the table {name}") + "; one dataset per column, named in columns"


def _read_table(g):
    import pandas as pd

    cols, dtypes = json.loads(g.attrs["columns"]), json.loads(g.attrs["dtypes"])
    data = {}
    for j, (c, dt) in enumerate(zip(cols, dtypes)):
        v = g[f"c{j:03d}"][()]
        if v.dtype.kind == "O":
            v = np.array([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
            data[c] = pd.Series(v, dtype=object if dt == "object" else dt)
        else:
            data[c] = v
    df = pd.DataFrame(data, columns=cols)
    if not cols:
        df = pd.DataFrame(index=range(int(g.attrs.get("n_rows", 0))))
    df.attrs.update(json.loads(g.attrs.get("attrs", "{}")))
    return df


#: pipeline options added after results were first written, and what a result written before them did
#: (its options lack the field; the current default would misdescribe it)
_BEFORE_OPTION = {
    "smooth_tracks": False,
    "density_voucher": False,
    "shape_apodisation": False,
    "mask_guard": False,
    "subtract_matrix": False,
    "unmix_matrix": False,
    "match_resolution": False,
    # an option from the start, not on the command line before --xanes-smoothing: every CLI run did 1 px
    # (pinned here should the default change)
    "xanes_smoothing": 1.0,
}


def _options_from_dict(cls, d: dict):
    """Rebuild a (nested, frozen) options dataclass from its ``asdict`` (JSON lists back to tuples)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue  # written by an older version: the default
        v = d[f.name]
        t = hints.get(f.name)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = _options_from_dict(t, v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


#: units of the per-particle maps (``ParticleResult.maps``) in results.h5
_MAP_UNITS = {
    "e50_sigma": "eV",
    "e50_sigma_noise": "eV",
    "e50_sigma_registration": "eV",
    "whiteline_height": "normalised absorption",
    "fraction_sigma": "fraction",
    "edge_jump_od": "OD",
    "quality_keep": "bool: pixel trusted (edge jump and fit quality)",
    "cluster": "cluster index, -1 where not clustered",
    "noise_shared": "OD (0), weight (1, 2), fraction of variance (3, 4)",
    "noise_background": "frame index (0), eV (1, 2, 3), 1 (4, 5, 6)",
    "lcf_misfit": "ratio (RMS residual of the fit over the spectra's noise, both normalised absorption)",
    "e50_gap": "eV",
}

#: every dataset of results.h5 gets ``units`` and ``description`` from the tables below (``units`` of a count, a
#: ratio or an index say what its numbers are); a dataset they lack (a map, a column or a chemistry array added
#: later without its entry) gets this as its units, and tests/test_results.py fails on it
UNDOCUMENTED = "undocumented: see the xanestrack docs"

_WINDOW = (
    "on the particle's window of the frame-0 grid: pixel [0, 0] is at frame-0 coordinates (origin_y, origin_x), "
    "attributes of this particle's group"
)
_PER_FRAME = "one value per frame, in the order of /energies_ev"

#: the frame axis of results.h5
_ENERGIES_DOC = (
    "the X-ray energy of each frame, in the order of the frames: the frame axis of every per-frame dataset in this "
    "file (positions, shifts, spectra, flags, the first axis of aligned and masks)"
)

#: units and description of each particle's datasets (/particles/NNN/<name>)
_PARTICLE_DOC = {
    "aligned": (
        "OD",
        "the particle's aligned sub-stack (n_frames, h, w): the input optical density of each frame resampled so the "
        "particle stays put, " + _WINDOW + "; the measured OD (no matrix subtracted, no blur: those are "
        "applied to the spectra only, see mean_spectrum)",
    ),
    "masks": (
        "0-1 (soft mask weight)",
        "each frame's soft mask of the particle (n_frames, h, w), aligned as aligned, " + _WINDOW,
    ),
    "mask": (
        "bool",
        "the consensus mask (h, w): the aligned masks of the frames used by the XANES analysis, averaged, >= 0.5, "
        "less any pixel missing from one of them; the pixels the spectra and the summaries are taken over; " + _WINDOW,
    ),
    "core_mask": (
        "bool",
        "the pixels the particle's means (mean E50 and its sigma, fractions: uncertainty.csv, the report) are taken "
        "over (h, w): mask eroded by 2 px (the whole mask where nothing is left), of those the ones map_quality_keep "
        "keeps (all where it keeps none); " + _WINDOW,
    ),
    "positions": (
        "px",
        "the particle's reported position (y, x) in each frame (n_frames, 2): the edge estimate smoothed across the "
        "energies, in that frame's own input pixels (row, column; not corrected for the drift); filled from the "
        "common motion where not measured (frame_flags); as tracks.csv y, x",
    ),
    "shifts": (
        "px",
        "(dy, dx) per frame (n_frames, 2): positions less positions[0], the particle's displacement from its "
        "position in the first frame, which was undone to align it (aligned is on the frame-0 grid)",
    ),
    "edge_positions": (
        "px",
        "(y, x) per frame (n_frames, 2): the edge-correlation estimate as measured, before the smoothing across "
        "energies (its displacement from the reference_frame placed at the centre of mass there), in that frame's "
        "own input pixels; NaN where not measured; as tracks.csv edge_y, edge_x",
    ),
    "agreement_px": (
        "px",
        _PER_FRAME + ": distance between the edge-correlation estimate and the second estimate that vouches for it "
        "(centre of mass, or density correlation); NaN where not measured; the attribute reference_frame is the "
        "frame the edge correlation is relative to",
    ),
    "frame_flags": (
        "bit flags",
        _PER_FRAME + ": bits of xanestrack.result.FRAME_FLAGS (attributes flag_bits: name -> bit, as JSON; "
        "flag_masks, flag_meanings: the same, CF convention); the position is vouched for unless interpolated (16), "
        "position_outlier (32) or disagree (64) is set (xanestrack.result.UNVOUCHED_FLAGS): the other bits, "
        "undetected (1) included, describe the frame and its mask; overlap: another tracked particle lies over the "
        "particle there, the frame is left out of its XANES (xanes_frames)",
    ),
    "pixel_flags": (
        "bit flags",
        "per pixel (h, w): why the XANES analysis of the pixel failed, was not measured or is not trusted, bits of "
        "xanestrack.xanes FLAG_* (attributes flag_bits: name -> bit, as JSON; flag_masks, flag_meanings: the same, "
        "CF convention); 0 = measured, no bit set; these are not the quality masks: a pixel they reject for its edge "
        "jump or its normalisation residual has no bit of its own and may read 0 here, map_quality_keep gives the "
        "pixels trusted (the means, the report's maps and chemistry.csv use those); moving_rim (32): measured, but within a few px of the outline of a particle "
        "whose own size or shape changes across the scan (it swells, shrinks or turns; its note says by how much): the outline sweeps through the pixel "
        "as the energy crosses the edge, its spectrum mixes the particle and its surroundings, its E50 and fractions "
        "are biased; left out of map_quality_keep; filled (64): in a frame its XANES used, the pixel lay in a wide "
        "patch of input pixels without a value (flats saturated over the beam's hot spot), filled from the patch's "
        "rim: not measured there, left out of map_quality_keep; thick (128): the run measured light that the sample "
        "does not absorb (harmonics, stray light; its run note says how much) and the pixel is thick enough for it to "
        "move its E50 by 0.1 eV or more: measured but biased low, left out of map_quality_keep; misfit (256): in a "
        "region whose spectra the references do not describe (map_lcf_misfit; a phase they do not hold, the "
        "particle's note says how much): its E50 is measured and kept, its fractions are not its chemistry and are "
        "left out of the particle's mean fractions; uint16 (uint8 in files written before the misfit bit); " + _WINDOW,
    ),
    "mean_spectrum": (
        "OD",
        _PER_FRAME + ": mean optical density over the consensus mask of the particle's aligned sub-stack, after the "
        "matrix behind it is subtracted (where it was separated and subtract_matrix is on: the particle's notes say "
        "so) and each frame blurred to the scan's coarsest resolution (only where the resolution-change note fired); "
        "NaN in a frame with no finite pixel in the mask",
    ),
    "mean_norm": (
        "normalised absorption",
        _PER_FRAME + ": the normalised mean spectrum (pre-edge line 0, post-edge 1 at E0 = the group's e0_ev), "
        "of the same OD after the local background and the smoothing inside the mask of the XANES analysis; NaN in "
        "frames the analysis did not use (xanes_frames) and where the normalisation failed",
    ),
    "pre_edge": (
        "OD",
        _PER_FRAME + ": the pre-edge line fitted to the mean spectrum the normalisation used (see mean_norm), at "
        "each frame's energy; NaN in frames the analysis did not use",
    ),
    "post_edge": (
        "OD",
        _PER_FRAME + ": the post-edge polynomial fitted to the mean spectrum the normalisation used (see mean_norm), "
        "at each frame's energy; NaN in frames the analysis did not use",
    ),
    "xanes_frames": (
        "bool",
        _PER_FRAME + ": the frames the XANES analysis used (position vouched for, the particle whole in the frame, "
        "not left out of every particle; and, where those hold too few pre-edge energies to normalise (or span too "
        "little for its pre-edge line to be carried across the scan), measured frames not vouched for (frame flag disagree) standing in for the pre-edge line alone: see the particle's "
        "notes, 'pre-edge taken from')",
    ),
    "unaligned_ends": (
        "OD",
        "the first and last frames (2, h, w) of the input optical density at the pixels of the particle's window, "
        "not aligned (what the alignment undid: compare with aligned[0], aligned[-1]); window pixel [0, 0] at "
        "(origin_y, origin_x) of each frame's own grid",
    ),
    "fractions": (
        "fraction",
        "linear-combination fractions (n_refs, h, w) of the references named in the attribute references, "
        "per pixel: the shares of the absorber in each phase, fitted against the references normalised as the "
        "particle's spectra are (sampled on its energies analysed, normalised at its E0 with its pre-edge and "
        "post-edge lines' ranges) and converted back by their edge steps there (xanestrack.xanes.references_on_scan; "
        "as given where its note says 'fractions fitted against the references as given'); " + _WINDOW,
    ),
}

#: description of each particle's edge-energy maps (/particles/NNN/edge_<name>, eV)
_EDGE_DOC = {
    "e50": "edge energy E50: where the normalised absorption crosses 0.5",
    "derivative": "edge energy at the maximum of the derivative of the normalised absorption",
    "whiteline": "whiteline position: the maximum of a cubic fitted within 5 eV of the smoothed maximum",
}

#: description of the per-particle maps (``ParticleResult.maps``, /particles/NNN/map_<name>)
_MAP_DOC = {
    "e50_sigma": "standard error of edge_e50 (noise and registration in quadrature)",
    "e50_sigma_noise": "standard error of edge_e50 from the noise of the spectra",
    "e50_sigma_registration": "standard error of edge_e50 from the registration (the position's agreement)",
    "whiteline_height": "height of the fitted whiteline, whose position is edge_whiteline",
    "fraction_sigma": "standard errors (n_refs, h, w) of fractions, for the references named in the attribute "
    "references: the noise of the spectra (and the registration) through the particle's normalisation and the fit; "
    "not the offset of the energy axis from the references'",
    "edge_jump_od": "the edge jump of the pixel's spectrum (post-edge less pre-edge at E0)",
    "quality_keep": "the pixels the quality masks trust (edge jump and fit quality, and not on a moving rim: "
    "pixel_flags moving_rim); the other maps keep their values where this is False",
    "cluster": "the phase (cluster) of the pixel from the phase mapping of all particles together (/chemistry)",
    "lcf_misfit": "the RMS residual of the pixel's linear combination fit (fractions) over the spectra's local noise "
    "(the normalisation's residual of the kept pixels about it, averaged inside the mask over 3 px): about 1 where "
    "the references describe the spectra, 3-5 for a phase they do not hold; where its RMS over a Gaussian of 1.5 px "
    "exceeds 3 over 20 connected pixels or more inside the outer 2 px, 2.5 times the rest of the particle's or more, "
    "those pixels (and the ones connected to them above 2) are flagged misfit in pixel_flags "
    "(xanestrack.xanes.misfit_region); NaN where no fraction was fitted",
    "noise_shared": "(5, h, w): the pixel's OD above its local background (mean over the frames analysed), the "
    "weight of its row (1) and of its column (2) in the local background subtracted from the particle's mean, and "
    "the shares of the background's noise variance common to a row (3) and to a column (4) of a frame (readout "
    "stripes; 0 where not told from none): what widens the sigma of the mean E50 "
    "(xanestrack.chemistry.uncertainty.mean_noise_sigma)",
    "e50_gap": "(2, h, w): where the E50 of a pixel flagged gap in pixel_flags lies: the analysed energies either "
    "side of the gap of frames left out that its normalised spectrum crosses half its step in (0: below, 1: above), "
    "NaN elsewhere; the particle's mean E50 counts the pixel at that gap's centre (xanestrack.result.gap_counted). "
    "Written only for a particle with such a pixel",
    "noise_background": "(7, h, w): how the noise of the local background subtracted per frame, common to every pixel "
    "of the particle, enters its E50: the analysed frame below the pixel's E50 crossing (0; NaN where none), the "
    "E50's change per standard deviation of the background's noise in that frame (1) and the next (2), the same over "
    "the other frames in quadrature (3), and the pixel's weights in the background plane (4-6): what widens the sigma "
    "of the mean E50 (xanestrack.chemistry.uncertainty.mean_noise_sigma, background_noise)",
}

#: units and description of the arrays of the phase mapping (/chemistry/<name>)
_CHEMISTRY_DOC = {
    "energies_ev": ("eV", "the frames usable in every particle, which the phase mapping is done on"),
    "cluster_mean_spectra": (
        "normalised absorption",
        "mean normalised spectrum of each cluster (k, n) at /chemistry/energies_ev",
    ),
    "pca_energies_ev": ("eV", "the energies of the PCA and NMF (the cluster window, where one was given)"),
    "pca_components": ("normalised absorption", "principal components (n_components, n) at pca_energies_ev"),
    "pca_explained_variance_ratio": (
        "fraction",
        "the share of the variance each principal component explains: the scree",
    ),
    "nmf_components": ("normalised absorption", "NMF component spectra (k, n) at pca_energies_ev"),
}

#: description of each table (/tables/<name>, /chemistry/tables/<name>)
_TABLE_DOC = {
    "tracks": "one row per particle per frame: positions, the estimates that vouch for them, flags and motion "
    "(tracks.csv is a rounded copy)",
    "detections": "every object found in the frames examined (detections.csv is a rounded copy)",
    "rejected": "objects left out, with the reason (rejected.csv is a rounded copy)",
    "motion": "per particle per frame: displacement, velocity, acceleration, rigid and own (non-rigid) motion",
    "peak_ratios": "per particle: peak own (non-rigid) and rigid velocities and their ratios, the largest own "
    "displacement, over the frames vouched for, and how far its positions' noise alone takes them (folders written "
    "before these noise columns lack them; motion_summary.csv is a rounded copy)",
    "similarity": "per frame: the common motion (translation, scale, rotation) fitted over the particles",
    "edge_widths": "per frame: the particles' edge width less its median and the blur applied before the chemistry",
    "cluster_fractions": "per particle and cluster: the particle's clustered pixels in the cluster",
}

#: units and description of the tables' columns (one dataset each); (table, column) before column alone
_COLUMN_DOC = {
    "particle": ("particle ID", "the particle's number (its group /particles/NNN)"),
    "frame": ("frame index", "the frame, 0-based (its energy: /energies_ev[frame])"),
    "energy_ev": ("eV", "the X-ray energy of the frame"),
    "y": ("px", "row of the position in the frame's own input pixels"),
    "x": ("px", "column of the position in the frame's own input pixels"),
    ("tracks", "y"): (
        "px",
        "row of the reported position (the edge estimate smoothed across the energies) in the "
        "frame's own input pixels; as /particles/NNN/positions",
    ),
    ("tracks", "x"): ("px", "column of the reported position, as y"),
    ("detections", "y"): ("px", "row of the object's centroid in the frame's own input pixels"),
    ("detections", "x"): ("px", "column of the object's centroid in the frame's own input pixels"),
    ("rejected", "y"): ("px", "row of the rejected object's mean position (input pixels)"),
    ("rejected", "x"): ("px", "column of the rejected object's mean position (input pixels)"),
    "measured_y": ("px", "row of the centre of mass of the particle's mask in its window: the second estimate"),
    "measured_x": ("px", "column of the centre of mass of the particle's mask in its window: the second estimate"),
    "detected": ("bool", "whether the detector found the particle as an isolated object in the frame"),
    "area": ("px^2 (pixels)", "the object's area"),
    "radius": ("px", "radius of the disc of the same area (NaN for a track too short)"),
    "ssim": (
        "1 (-1 to 1)",
        "structural similarity of the particle's window with the one it was last linked in: "
        "the linker's match score; NaN where not scored",
    ),
    "edge_y": ("px", "row of the edge-correlation estimate as measured (before the smoothing across energies)"),
    "edge_x": ("px", "column of the edge-correlation estimate as measured (before the smoothing across energies)"),
    "agreement_px": ("px", "distance between the edge estimate and the second estimate that vouches for it"),
    "com_agreement_px": ("px", "distance between the edge estimate and the centre of mass"),
    "density_agreement_px": ("px", "distance between the edge estimate and the density correlation"),
    "flags": (
        "text",
        "the frame's flags by name, |-separated (bits: /particles/NNN/frame_flags); the position is vouched for "
        "unless interpolated, position_outlier or disagree is among them (undetected, no_mask, out_of_view, "
        "area_outlier, by_motion and overlap describe the frame: overlap, another tracked particle lies over it "
        "there, the frame left out of its XANES)",
    ),
    "dy": (
        "px",
        "displacement (rows) from the particle's position in the first frame (a particle entering the field later: "
        "in its first frame vouched for, its own motion before unseen)",
    ),
    "dx": ("px", "displacement (columns) from the particle's position in the first frame (or as dy)"),
    "vy": ("velocity", "velocity along the rows (central differences)"),
    "vx": ("velocity", "velocity along the columns (central differences)"),
    "ay": ("acceleration", "acceleration along the rows (central differences)"),
    "ax": ("acceleration", "acceleration along the columns (central differences)"),
    "rigid_dy": ("px", "the common motion's displacement of the particle's first position (rows; from dy's frame)"),
    "rigid_dx": ("px", "the common motion's displacement of the particle's first position (columns)"),
    "nonrigid_dy": ("px", "the particle's own motion: dy less rigid_dy"),
    "nonrigid_dx": ("px", "the particle's own motion: dx less rigid_dx"),
    "rel_dy": ("px", "displacement (rows) relative to the particle rel_to (from the later of their dy's frames)"),
    "rel_dx": ("px", "displacement (columns) relative to the particle rel_to"),
    "rel_to": ("particle ID", "the particle rel_dy, rel_dx are relative to"),
    "common_dy": ("px", "the common translation (rows, of the scale centre) from the first frame"),
    "common_dx": ("px", "the common translation (columns, of the scale centre) from the first frame"),
    "common_scale": ("1 (ratio)", "the common isotropic scale: magnification relative to the first frame"),
    "common_rotation_deg": (
        "deg",
        "the common rotation from the first frame (only with --rotation), positive counter-clockwise as the image is "
        "shown (row 0 at the top), about the frame's centre; NaN in the frames where it could not be fitted (fewer "
        "than three particles: not measured, a run note says which)",
    ),
    "scale": ("1 (ratio)", "the common isotropic scale: magnification relative to the first frame"),
    "rotation_rad": (
        "rad",
        "the common rotation from the first frame, positive counter-clockwise as the image is shown (row 0 at the "
        "top): y' = y cos - x sin, x' = x cos + y sin about the frame's centre, the optical axis (0 without "
        "--rotation; NaN where --rotation asked for it and it could not be fitted: fewer than three particles)",
    ),
    "n_particles": ("count", "the particles the frame's common motion was fitted over"),
    "residual_px": (
        "px",
        "the plain (unweighted) RMS of the fitted particles' distances from the fitted common motion; in folders "
        "whose description here does not say unweighted, the RMS weighted as the robust fit weighs them (~1/r), "
        "which all but drops the far-off ones (the SSRL pair: 0.13 px where the plain RMS is 0.59)",
    ),
    "y0": ("px", "bounding box: first row"),
    "x0": ("px", "bounding box: first column"),
    "y1": ("px", "bounding box: end row (exclusive)"),
    "x1": ("px", "bounding box: end column (exclusive)"),
    "solidity": ("1 (0-1)", "the object's area over that of its convex hull"),
    "contrast": ("OD", "mean background-corrected optical density of the object"),
    "isolated": ("bool", "kept for tracking as an isolated particle"),
    "reason": (
        "text",
        "why the object was left out (border, too_small, too_large, not_convex, short_track...); empty where kept",
    ),
    "touching": ("bool", "one of several touching particles split apart at a neck"),
    "extent": (
        "px",
        "how far the object's outline reaches from its centre along its long axis: its major semi-axis from its "
        "second moments (a disc: its radius); an elongated particle's windows are sized on it where those of its "
        "radius do not hold it",
    ),
    "n_frames": ("count", "the frames the object was seen in"),
    "peak_nonrigid_vy": ("px/frame", "largest own (non-rigid) velocity along the rows"),
    "peak_nonrigid_vx": ("px/frame", "largest own (non-rigid) velocity along the columns"),
    "peak_rigid_vy": ("px/frame", "largest rigid (common-motion) velocity along the rows"),
    "peak_rigid_vx": ("px/frame", "largest rigid (common-motion) velocity along the columns"),
    "ratio_v": ("1 (ratio)", "peak_nonrigid_vy / peak_rigid_vy (vertical)"),
    "ratio_h": ("1 (ratio)", "peak_nonrigid_vx / peak_rigid_vx (horizontal)"),
    "max_nonrigid_displacement": ("px", "largest own (non-rigid) displacement"),
    "position_noise_px": (
        "px",
        "the particle's positions' noise per axis over its frames vouched for: the RMS of the second differences of "
        "its own motion as measured (raw edge estimates), scaled to one frame's noise; NaN where too few frames "
        "vouched for lie close enough (a scan of 2 frames)",
    ),
    "max_nonrigid_noise_px": (
        "px",
        "the largest own displacement its positions' noise alone reaches over as many frames (of white noise that "
        "size, 95 % of scans below it): sqrt(2) x position_noise_px x the 95 % point of the largest of n Rayleigh "
        "values. Errors that wander slowly (a touching neighbour, the matrix) are not in it",
    ),
    "nonrigid_at_noise": (
        "bool",
        "max_nonrigid_displacement is not above max_nonrigid_noise_px: the noise's largest excursion (biased "
        "upward), no own motion measured; False also where no noise is known",
    ),
    "peak_nonrigid_v_noise": (
        "px/frame",
        "the largest |own velocity| per axis its positions' noise, unsmoothed, reaches over as many frames (95 % of "
        "scans below it, per axis), each velocity with its own noise: central differences 1/sqrt(2) x "
        "position_noise_px, the first and last frame's one-sided sqrt(2) x: an upper bound, the smoothing across the "
        "energies leaves less; a peak above it is not noise",
    ),
    "own_motion_split_px": (
        "px",
        "how far the particle's own motion moves, over its frames vouched for, when the common motion is fitted again "
        "with any one particle left out (xanestrack.motion.common_motion_split): where no majority of particles moves "
        "together, the split into common and own motion is not determined by the positions, and every own motion "
        "is uncertain by this much or more (leaving one out shows a lower bound: reduced default seed 2, 1.09 px "
        "here, its common motion 2.70 px off the truth); NaN with fewer than 3 particles",
    ),
    "nonrigid_within_split": (
        "bool",
        "max_nonrigid_displacement is not above own_motion_split_px plus max_nonrigid_noise_px (0 where not known): "
        "the positions cannot tell it from a particle that did not move on its own",
    ),
    "split_px": (
        "px",
        "the most any particle's own motion moves in this frame when the common motion is fitted again with any one "
        "particle left out, its scale as the whole fit found it (xanestrack.motion.common_motion_split); NaN with "
        "fewer than 3 particles",
    ),
    "width_change_px": ("px", "the particles' edge width in the frame less its median (smoothed): its blur"),
    "blur_px": ("px", "sigma of the Gaussian blur of the frame's particle windows before the chemistry (0: none)"),
    "cluster": ("cluster index", "the cluster"),
    "n_pixels": ("count", "the particle's clustered pixels in this cluster"),
    "fraction": ("fraction", "n_pixels over the particle's clustered pixels"),
}


def _put(group, name: str, data, **kw):
    """A particle's dataset ``name``, documented from :data:`_PARTICLE_DOC`."""
    return _documented(group.create_dataset(name, data=data, **kw), *_PARTICLE_DOC[name])


def _documented(d, units: str, description: str):
    """``d`` (an h5py dataset) with its ``units`` and ``description`` attributes."""
    d.attrs.update(units=units, description=description)
    return d


def _column_doc(table: str, column: str, velocity_unit: str) -> tuple:
    """``(units, description)`` of a table's column (:data:`_COLUMN_DOC`)."""
    units, desc = _COLUMN_DOC.get((table, column)) or _COLUMN_DOC.get(column) or (UNDOCUMENTED, "")
    if units == "velocity":
        units = velocity_unit
    elif units == "acceleration":
        units = f"{velocity_unit}^2"
    return units, f"column {column!r} of the {table} table" + (f": {desc}" if desc else "")


def _flag_attributes(bits: dict) -> dict:
    """The attributes that spell out a flag dataset's bits: ``flag_bits`` (JSON ``{name: bit}``, read back with
    ``json.loads``) and the same as the CF convention's ``flag_masks`` (uint8, uint16 from bit 256: the frame
    flags' ``overlap``) and ``flag_meanings`` (names, space-separated), which netCDF/xarray tools read."""
    masks = [int(v) for v in bits.values()]
    return dict(
        flag_bits=json.dumps({str(k): int(v) for k, v in bits.items()}),
        flag_masks=np.array(masks, np.uint8 if max(masks, default=0) < 256 else np.uint16),
        flag_meanings=" ".join(bits),
    )


def _pixel_flag_bits() -> dict:
    """``{name: bit}`` of the per-pixel XANES flags (``pixel_flags``): the ``FLAG_*`` constants of
    :mod:`xanestrack.xanes`, named without the prefix in lower case (``nonfinite``, ``low_step``...)."""
    from . import xanes

    return {n[5:].lower(): int(getattr(xanes, n)) for n in xanes.__all__ if n.startswith("FLAG_")}


def _write_chemistry(g, chem: dict) -> None:
    """``PipelineResult.chemistry``: arrays as datasets, tables as tables, the rest as JSON attributes."""
    import pandas as pd

    tables = g.create_group("tables")
    other = {}
    for k, v in chem.items():
        if isinstance(v, pd.DataFrame):
            _write_table(tables, k, v)
        elif isinstance(v, np.ndarray):
            units, desc = _CHEMISTRY_DOC.get(k, (UNDOCUMENTED, f"{k} of the phase mapping"))
            _documented(g.create_dataset(k, data=v), units, desc)
        else:
            other[k] = v
    g.attrs["values"] = json.dumps(other, default=_json_default)
    g.attrs["description"] = "phase mapping of all particles together (xanestrack.pipeline.phase_mapping)"


def _read_chemistry(g) -> dict:
    out = {k: g[k][()] for k in g if k != "tables"}
    for k in g.get("tables", {}):
        out[k] = _read_table(g["tables"][k])
    out.update(json.loads(g.attrs.get("values", "{}")))
    return out


def cluster_table(result):
    """Per-particle cluster fractions as one row per particle (``clusters.csv``), or None without clusters.

    Columns ``particle, n_clustered, cluster_0_fraction, ...`` (fractions of the
    particle's clustered, quality-kept pixels) and ``separation``: the clustering's smallest separation of two
    clusters (:func:`xanestrack.pipeline._cluster_separation`, the same in every row, as run.json and
    ``/chemistry``'s settings hold it; NaN where fewer than two clusters hold pixels). Below
    :data:`xanestrack.pipeline.CLUSTER_MIN_SEPARATION` (4) two clusters are not distinct phases and a
    printed run note says which (the report alone said so before). A cluster that is the band across the
    front of two others, its spectra mixes of theirs (:func:`xanestrack.chemistry.phases.interface_clusters`;
    ``/chemistry`` settings' ``interface_clusters``) enters no pair, and a printed run note names it.
    """
    import pandas as pd

    chem = result.chemistry or {}
    cf = chem.get("cluster_fractions")
    if cf is None:
        return None
    settings = chem.get("settings", {})
    k = int(settings.get("clusters", 0))
    sep = settings.get("separation")
    rows = []
    for p in result.particles:
        g = cf[cf["particle"] == p.particle].set_index("cluster")
        n = int(g["n_pixels"].sum()) if len(g) else 0
        rows.append(
            [int(p.particle), n]
            + [float(g.loc[j, "fraction"]) if (len(g) and j in g.index and n) else np.nan for j in range(k)]
        )
    table = pd.DataFrame(rows, columns=["particle", "n_clustered"] + [f"cluster_{j}_fraction" for j in range(k)])
    table["separation"] = float(sep) if sep is not None else np.nan
    return table


def write_results(result, folder, *, run_info: dict | None = None, save_fused: bool = False, stack=None) -> None:
    """Write a :class:`~xanestrack.result.PipelineResult` into ``folder``.

    ``results.h5`` holds everything :func:`read_results` needs to give the same result
    back; ``tracks.csv``, ``detections.csv``, ``rejected.csv``, ``motion_summary.csv``
    are copies for people and spreadsheets; ``run.json`` the provenance. ``folder``
    should be the temporary folder of :func:`atomic_output_dir`; it is created where it
    does not exist. The fused stack (as large as the input) is stored only with
    ``save_fused``; its first and last frames always are (and are what is read back otherwise).

    ``stack`` (optional) is the :class:`~xanestrack.stack.Stack` the result was run on: what
    ``run_info`` lacks of the input's description is taken from it as the command line records it
    (``pixel_size_um`` for results.h5 and run.json, ``input_notes`` from ``stack.metadata["notes"]``,
    ``reader``, ``values``, ``energies_ev``, ``frame_shape``, ``frames_reversed``,
    ``energy_calibration``). Without either, the pixel size is unknown (NaN in results.h5, no scale
    bars in the report; logged).

    The same as :func:`write_tables` then :func:`write_results_h5` (the command line runs
    the second beside the report, which needs only the first).
    """
    info = _input_info(dict(run_info or {}), stack, result)
    if info.get("pixel_size_um") is None and "pixel_size_um" not in (run_info or {}):
        logger.warning(
            "write_results: the pixel size is unknown (NaN in results.h5): "
            + (
                "the stack given has none (Stack.pixel_size_um is None); give it as run_info={'pixel_size_um': ...}"
                if stack is not None
                else "pass stack= (the Stack the result was run on) or run_info={'pixel_size_um': ...}"
            )
        )
    # a folder that did not exist failed inside pandas (OSError: Cannot save file into a non-existent directory)
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_tables(result, folder, run_info=info)
    write_results_h5(
        result,
        folder,
        save_fused=save_fused,
        pixel_size_um=info.get("pixel_size_um"),
        input_notes=info.get("input_notes", []),
    )


def stack_description(stack) -> dict:
    """What run.json says of a :class:`~xanestrack.stack.Stack`: ``reader``, ``values``, ``energies_ev``,
    ``frame_shape``, ``pixel_size_um``, ``pixel_size_source`` (:func:`pixel_size_source`), ``input_pixel_size_um``
    (the files' own where ``--pixel-size`` replaced it), ``input_notes`` (its notes as they are),
    ``frames_reversed``."""
    meta = getattr(stack, "metadata", None) or {}
    out = dict(
        reader=meta.get("reader"),
        values=meta.get("values"),
        energies_ev=[float(e) for e in stack.energies_ev],
        frame_shape=list(stack.od.shape[1:]),
        pixel_size_um=stack.pixel_size_um,
        pixel_size_source=pixel_size_source(stack),
        input_notes=[str(n) for n in meta.get("notes", [])],
        frames_reversed=bool(meta.get("frames_reversed", False)),
    )
    if meta.get("input_pixel_size_um") is not None:
        out["input_pixel_size_um"] = float(meta["input_pixel_size_um"])
    return out


def pixel_size_source(stack) -> str | None:
    """Where a :class:`~xanestrack.stack.Stack`'s pixel size came from: ``"--pixel-size"`` (the command line's,
    recorded in its metadata as ``pixel_size_source``), ``"input"`` (the files'), None where it has none."""
    if stack.pixel_size_um is None:
        return None
    return str((getattr(stack, "metadata", None) or {}).get("pixel_size_source", "input"))


def _input_info(info: dict, stack, result=None) -> dict:
    """``info`` with what it lacks of the input's description taken from ``stack`` (as ``xanestrack run`` records
    it; the Stack's pixel size and input notes were lost from Python).

    With ``result``, ``energies_ev`` are the energies it was analysed on; where these are not the ones given (in
    ``info``, or the Stack's: a result of :func:`xanestrack.pipeline.redo_xanes`), those go to
    ``input_energies_ev``, and the redo's run notes (what it changed) to ``xanes_redone``. A redo moved 3 eV
    wrote the Stack's 8200.0 eV as the first energy in run.json, beside 8203.0 eV in results.h5 and tracks.csv,
    and nothing of the redo."""
    if info.get("pixel_size_um") is not None and info.get("pixel_size_source") is None:
        info["pixel_size_source"] = "run_info"  # the caller's, not the Stack's
    if stack is not None:
        meta = getattr(stack, "metadata", None) or {}
        given = stack_description(stack)
        if meta.get("energy_calibration") is not None:
            given["energy_calibration"] = meta["energy_calibration"]
        for k, v in given.items():
            if info.get(k) is None:
                info[k] = v
    if result is not None:
        from .pipeline import REDONE_NOTE

        used = [float(e) for e in np.asarray(result.energies_ev, float)]
        if info.get("energies_ev") is not None and [float(e) for e in info["energies_ev"]] != used:
            info["input_energies_ev"] = [float(e) for e in info["energies_ev"]]
        info["energies_ev"] = used
        redone = [n for n in result.notes if n.startswith(REDONE_NOTE)]
        if redone:
            info["xanes_redone"] = redone
    return info


def write_tables(result, folder, *, run_info: dict) -> None:
    """The CSV copies of the result's tables and ``run.json`` (provenance, timings so far)."""
    folder = Path(folder)
    for name, (fname, fmt) in _CSV.items():
        df = getattr(result, name)
        if name != "peak_ratios" or len(df):
            df.to_csv(folder / fname, index=False, float_format=fmt)
    ct = cluster_table(result)
    if ct is not None:
        ct.to_csv(folder / "clusters.csv", index=False, float_format="%.4f")
    info = dict(run_info)
    info.setdefault("version", __version__)
    for k, v in _provenance(info, result).items():
        info.setdefault(k, v)
    info["timings_s"] = dict(result.timings)
    info["notes"] = list(result.notes)
    if getattr(result, "normalisation_bias", None) is not None:  # the report's caption quotes them
        info["normalisation_bias_ev"] = {str(k): float(v) for k, v in result.normalisation_bias.items()}
    info["parameters"] = result.options.to_dict()
    _write_run_json(folder, info)


#: the libraries the numbers depend on, as run.json names them: (name, module)
_LIBRARIES = (("numpy", "numpy"), ("scipy", "scipy"), ("scikit-image", "skimage"), ("torch", "torch"))


def _provenance(info: dict, result) -> dict:
    """When and with what software ``result`` was made, for run.json (a paper's numbers reproduced later).

    ``created``: the time it is written (UTC, ISO 8601); ``python``, ``platform`` (operating system and
    machine type, not the host's name) and ``libraries``: the versions of those of numpy, scipy, scikit-image
    and torch this process imported (torch only where something used it: not imported for this);
    ``models_sha256``: the SHA-256 of ``weights.pt`` and ``config.json`` of each learned model the run used
    (``info``'s ``detector`` / ``segmenter`` "learned"; the shipped one, or the folder ``*_model`` names);
    ``references_sha256``: the SHA-256 of the shipped ``ni_references.csv`` where the linear-combination fit
    used the shipped references (no ``references`` of the user's in ``info``).
    """
    import datetime
    import platform

    libraries = {}
    for name, module in _LIBRARIES:
        version = getattr(sys.modules.get(module), "__version__", None)
        if version is not None:
            libraries[name] = str(version)
    out = dict(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        libraries=libraries,
    )
    models = {}
    for kind in ("detector", "segmenter"):
        if info.get(kind) != "learned":
            continue
        given = info.get(f"{kind}_model")
        folder = Path(__file__).resolve().parent / "models" / kind if given in (None, "shipped") else Path(given)
        sums = {n: _file_sha256(folder / n) for n in ("weights.pt", "config.json") if (folder / n).is_file()}
        if sums:
            models[kind] = sums
    if models:
        out["models_sha256"] = models
    table = Path(__file__).resolve().parent / "data" / "ni_references.csv"
    used = {str(n) for p in getattr(result, "particles", ()) for n in (getattr(p, "reference_names", None) or ())}
    if used and not info.get("references") and table.is_file() and used <= set(_shipped_reference_names(table)):
        out["references_sha256"] = {"ni_references.csv": _file_sha256(table)}
    return out


def _shipped_reference_names(table: Path) -> list:
    """The phase names of the shipped reference table (its header after ``energy_ev``)."""
    for line in table.read_text().splitlines():
        if line and not line.startswith("#"):
            return line.split(",")[1:]
    return []


_SHA256_CACHE: dict = {}


def _file_sha256(path: Path) -> str:
    """SHA-256 of ``path``'s content, kept per process while its size and time are the same (a series hashes
    the same model once)."""
    import hashlib

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]


def write_missing_tables(result, folder) -> list:
    """Write again the CSV copies of ``result``'s tables that are missing from ``folder`` (deleted since the run);
    a copy that is there is left as it is. Returns the names written."""
    folder = Path(folder)
    written = []
    for name, (fname, fmt) in _CSV.items():
        df = getattr(result, name)
        if not (folder / fname).exists() and (name != "peak_ratios" or len(df)):
            df.to_csv(folder / fname, index=False, float_format=fmt)
            written.append(fname)
    ct = cluster_table(result)
    if ct is not None and not (folder / "clusters.csv").exists():
        ct.to_csv(folder / "clusters.csv", index=False, float_format="%.4f")
        written.append("clusters.csv")
    return written


def _write_run_json(folder, info: dict) -> None:
    with open(Path(folder) / "run.json", "w") as fh:
        json.dump(info, fh, indent=2, default=_json_default)


def add_timing(folder, stage: str, seconds: float) -> None:
    """Add a stage's time to ``run.json`` in ``folder`` (one timed after it was written: the report)."""
    info = json.loads((Path(folder) / "run.json").read_text())
    info["timings_s"] = dict(info.get("timings_s", {}), **{stage: float(seconds)})
    _write_run_json(folder, info)


#: True after a results.h5 that could not be written (the disk full) left HDF5 handles it cannot close: the
#: library's own clean-up at exit then crashes the interpreter (exit 139 after the error), so the command line
#: ends such a process at once (:func:`xanestrack.cli._fail`), its output folder already cleaned up
HDF5_LEFT_OPEN = False


def write_results_h5(
    result, folder, *, save_fused: bool = False, pixel_size_um: float | None = None, input_notes=None
) -> None:
    """``results.h5``: everything :func:`read_results` needs to give the same result back.

    Every dataset carries ``units`` and ``description`` attributes (the tables' columns too); ``frame_flags`` and
    ``pixel_flags`` spell out their bits (``flag_bits``, ``flag_masks``, ``flag_meanings``). The root attribute
    ``pixel_size_um`` is the input's pixel size in micrometres: ``pixel_size_um`` where given, else the
    ``pixel_size_um`` of the ``run.json`` already in ``folder`` (:func:`write_tables` writes it first), and NaN
    where neither knows it (a synthetic scan, a TIFF without one). The root attribute ``input_notes`` (JSON) holds
    the notes on the input (frames given from high to low energy and reversed, darks taken as 0, zingers replaced:
    ``input_notes`` where given, else run.json's), beside ``notes``, the pipeline's: a reader of results.h5 alone
    did not learn that frame k was the input's frame n - 1 - k.

    Refused before writing where the file-size limit (``ulimit -f``) or the free space of the disk is below what
    the particles' aligned windows and masks alone take; a failed write (the disk filled meanwhile) is a
    :class:`~xanestrack.errors.XanestrackError` naming the file, the partial file removed (see
    :data:`HDF5_LEFT_OPEN`).

    Raises
    ------
    ValueError
        If ``pixel_size_um`` is given and not a positive number."""
    import gc

    import h5py

    folder = Path(folder)
    path = folder / "results.h5"
    pixel_size_um = _pixel_size(pixel_size_um, folder)
    input_notes = _run_json_input_notes(folder) if input_notes is None else [str(n) for n in input_notes]
    need = sum(int(p.aligned.nbytes) + int(p.masks.nbytes) for p in result.particles) + (1 << 20)
    _check_room(path, need)
    _quiet_h5py_dealloc()
    f = None
    try:
        f = h5py.File(path, "w")
        _write_h5(f, result, save_fused, pixel_size_um)
        f.attrs["input_notes"] = json.dumps(input_notes)
        f.close()
    except BaseException as exc:
        if f is not None:
            global HDF5_LEFT_OPEN
            HDF5_LEFT_OPEN = True  # whether HDF5 still holds it cannot be told from here (h5py marks it closed)
            try:
                f.close()
            except Exception:  # its buffers cannot be written either: closed as far as HDF5 can
                pass
            del f
            if isinstance(exc, OSError):  # its datasets, held by the traceback's frames: freed now
                exc.__traceback__ = None
                gc.collect()
        try:
            path.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):  # the caller names the output folder
            raise OSError(exc.errno, f"results.h5: {os.strerror(exc.errno) if exc.errno else one_line(exc)}") from None
        raise


def _pixel_size(pixel_size_um, folder: Path) -> float:
    """The pixel size (um) for results.h5: the one given, else run.json's in ``folder``, else NaN."""
    if pixel_size_um is not None:
        try:
            px = float(pixel_size_um)
        except (TypeError, ValueError):
            px = float("nan")
        if not (np.isfinite(px) and px > 0):
            raise ValueError(
                f"pixel_size_um must be a positive number of micrometres, or None where unknown; got {pixel_size_um!r}"
            )
        return px
    try:
        px = json.loads((folder / "run.json").read_text()).get("pixel_size_um")
        px = float(px)
    except (OSError, ValueError, TypeError, AttributeError):  # no run.json (yet), or no pixel size in it
        return float("nan")
    return px if np.isfinite(px) and px > 0 else float("nan")


def _run_json_input_notes(folder: Path) -> list:
    """The input's notes from run.json in ``folder`` (:func:`write_tables` writes it first), ``[]`` where none."""
    try:
        notes = json.loads((folder / "run.json").read_text()).get("input_notes") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in notes] if isinstance(notes, list) else []


def _quiet_h5py_dealloc() -> None:
    """From now on, h5py's handles do not print their failure to close when freed: once a file could not be
    written, each of its datasets printed "Exception ignored in ... __dealloc__" with HDF5's whole message (900 lines
    above the error of a small scan)."""
    previous = sys.unraisablehook
    if getattr(previous, "_xanestrack", False):
        return

    def hook(unraisable):
        if "h5py" in repr(getattr(unraisable, "object", "")):
            return
        previous(unraisable)

    hook._xanestrack = True
    sys.unraisablehook = hook


def _mib_pair(need: int, have: int, *, digits: int = 0) -> tuple[str, str]:
    """``need`` and ``have`` bytes in MiB, with ``digits`` decimals or as many more (up to 6) as tell them apart: both
    rounded to whole MiB, a refusal read "it takes about 13 MiB and 13 MiB are free" (13.4 and 12.9 MiB)."""
    for n in range(digits, 7):
        a, b = f"{need / 2**20:.{n}f}", f"{have / 2**20:.{n}f}"
        if a != b:
            break
    return a, b


def _check_room(path: Path, need: int) -> None:
    """Refuse writing ``need`` bytes at ``path`` beyond the file-size limit or the disk's free space."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and need > soft:
        a, b = _mib_pair(need, soft, digits=1)
        raise XanestrackError(
            f"cannot write {path}: it takes about {a} MiB and files are limited to {b} MiB here (ulimit -f); raise "
            "the limit"
        )
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if need > free:
        a, b = _mib_pair(need, free)
        raise XanestrackError(
            f"cannot write {path}: it takes about {a} MiB and {b} MiB are free there; "
            "free space, or choose another output folder (`out`)"
        )


def _write_h5(f, result, save_fused: bool, pixel_size_um: float = float("nan")) -> None:
    from .result import FRAME_FLAGS, core_pixels

    comp = dict(compression="gzip", compression_opts=1, shuffle=True)
    f.attrs["xanestrack_version"] = __version__
    f.attrs["coordinates"] = "pixels (row y, column x); origin_y/origin_x give frame-0 coordinates of pixel [0, 0]"
    f.attrs["frame_shape"] = np.asarray(result.frame_shape, np.int64)
    f.attrs["pixel_size_um"] = float(pixel_size_um)
    f.attrs["notes"] = json.dumps(list(result.notes))
    f.attrs["timings_s"] = json.dumps(dict(result.timings), default=_json_default)
    f.attrs["options"] = json.dumps(result.options.to_dict(), default=_json_default)
    _documented(f.create_dataset("energies_ev", data=result.energies_ev), "eV", _ENERGIES_DOC)
    d = f.create_dataset("common_shift", data=result.common_shift)
    _documented(
        d,
        "px",
        "per frame (dy, dx) px: the linker's rough shift of the frame from the first, from the detections (where "
        "each particle's search window was placed); not the common motion: that is common_similarity (the "
        "translation, scale and rotation fitted over the particles' positions, as in tracks.csv common_dy, common_dx)",
    )
    sim = result.similarity
    if sim is not None and len(sim):
        cols = ["common_dy", "common_dx", "scale", "rotation_rad", "n_particles", "residual_px"]
        d = f.create_dataset("common_similarity", data=sim[cols].to_numpy(float))
        d.attrs["columns"] = json.dumps(cols)
        _documented(
            d,
            "per column: px, px, 1 (ratio), rad, count, px",
            "per frame: translation of the scale centre, isotropic scale (magnification relative to the first frame), "
            "rotation (positive counter-clockwise as the image is shown, row 0 at the top; 0 without --rotation, NaN "
            "where --rotation asked for it and it could not be fitted: fewer than three particles), "
            "particles fitted, the plain (unweighted) RMS of their residuals; fitted robustly over the particles' "
            + sim.attrs.get("fitted_on", "vouched positions"),
        )
        d.attrs["fitted_on"] = sim.attrs.get("fitted_on", "vouched positions")
        d.attrs["centre_yx"] = sim.attrs.get("centre", [np.nan, np.nan])
    tg = f.create_group("tables")
    tg.attrs["description"] = "the result's tables, exactly (tracks.csv etc. are rounded copies)"
    velocity_unit = str(result.motion.attrs.get("velocity_unit", "px/frame"))
    for name in TABLES:
        df = getattr(result, name)
        if df is not None:
            _write_table(tg, name, df, velocity_unit=velocity_unit)
    frame_flags, pixel_flags = _flag_attributes(FRAME_FLAGS), _flag_attributes(_pixel_flag_bits())
    g = f.create_group("particles")
    for p in result.particles:
        pg = g.create_group(f"{p.particle:03d}")
        pg.attrs.update(
            particle=p.particle,
            origin_y=int(p.origin[0]),
            origin_x=int(p.origin[1]),
            e0_ev=p.e0_ev,
            # its size (the equivalent radius of its masks); the largest detection's, which sized its windows and
            # follows the detector's binning, beside it (folders written before it hold that one as radius_px)
            radius_px=p.size_radius,
            detection_radius_px=p.radius,
            notes=json.dumps(list(p.notes)),
            reference_frame=int(p.reference_frame),
            reference_names=json.dumps(list(p.reference_names)),
            # its maps (edge_*, fractions, map_*) were computed after a Gaussian of this sigma inside the mask
            # (0: none): a chemistry front is blurred over its FWHM, and map_e50_sigma is the smoothed map's noise
            xanes_smoothing_px=float(result.options.xanes_smoothing),
            # eV: how far the energies its XANES used (xanes_frames, fewer than the scan's) move its E50 against a
            # particle of its chemistry measured on all of them (0: it used them all; NaN: not measured): the
            # particles' table and uncertainty.csv read it back from here (chemistry.normbias.frames_bias_shift)
            e50_normalisation_shift_ev=float(getattr(p, "e50_normalisation_shift_ev", np.nan)),
            # its outline cut into this many pieces of a particle's size in so many of the frames examined (0: never;
            # or its outline's lobes and 0): it may be touching particles reported as one (pipeline._pieces_note,
            # outlines.outline_lobes); the particles' table reads them
            touching_pieces=int(getattr(p, "touching_pieces", 0) or 0),
            touching_pieces_frames=int(getattr(p, "touching_pieces_frames", 0) or 0),
        )
        origin = dict(origin_y=int(p.origin[0]), origin_x=int(p.origin[1]))

        # the aligned windows (noisy floats) uncompressed: gzip kept 78 % of their bytes and took 10x the
        # time of writing them (460^2, 9 particles: 0.41 s for 26 MB against 0.04 s for 33 MB)
        _put(pg, "aligned", p.aligned, chunks=(1, *p.aligned.shape[1:]))
        _put(pg, "masks", p.masks, chunks=(1, *p.masks.shape[1:]), **comp)
        _put(pg, "mask", p.mask)
        # the report's and uncertainty.csv's means are over these: without them, a mean over mask and
        # map_quality_keep differed from the report's by up to 0.07 eV (5 sigma), and could not be rebuilt
        _put(pg, "core_mask", core_pixels(p))
        for name, m in p.edge_maps.items():
            d = pg.create_dataset(f"edge_{name}", data=m, **comp)
            desc = _EDGE_DOC.get(name, f"edge energy ({name})")
            _documented(d, "eV", f"{desc}, per pixel; NaN outside the particle or where the fit failed; {_WINDOW}")
            d.attrs.update(origin)
        _put(pg, "pixel_flags", p.pixel_flags, **comp).attrs.update(pixel_flags)
        if p.fractions is not None:
            d = _put(pg, "fractions", p.fractions, **comp)
            d.attrs["references"] = json.dumps(list(p.reference_names))
            d.attrs.update(origin)
        _put(pg, "positions", p.positions)
        _put(pg, "shifts", p.shifts)
        _put(pg, "frame_flags", p.frame_flags).attrs.update(frame_flags)
        if p.agreement is not None:
            _put(pg, "agreement_px", p.agreement).attrs["reference_frame"] = int(p.reference_frame)
        if p.edge_positions is not None:
            _put(pg, "edge_positions", p.edge_positions)
        _put(pg, "mean_spectrum", p.mean_spectrum)
        _put(pg, "mean_norm", p.mean_norm)
        _put(pg, "pre_edge", p.pre_edge)
        _put(pg, "post_edge", p.post_edge)
        if p.unaligned_ends is not None:
            _put(pg, "unaligned_ends", p.unaligned_ends, **comp).attrs.update(origin)
        if p.xanes_frames is not None:
            _put(pg, "xanes_frames", np.asarray(p.xanes_frames))
        if p.background_exclude is not None:
            # as the flat indices of its pixels (a handful beside the window's): pipeline.redo_xanes of a result read
            # back needs them (without, stress-crowd seed 1's mean E50 moved by up to 0.063 eV, a pixel's by 2.63 eV)
            idx = np.flatnonzero(np.asarray(p.background_exclude, bool)).astype(np.int32)
            d = pg.create_dataset("background_exclude", data=idx)
            _documented(
                d,
                "index",
                "flat (row-major) indices into the particle's aligned window (shape of 'mask') of the pixels where "
                "other tracked particles lie, left out of the ring its local background is measured from",
            )
        if p.filled_frames is not None:
            # pipeline.redo_xanes of a result read back leaves them out of the outline's trends as the run did
            # (without: a particle under a 40 x 40 px patch was said to shrink by 10.9 %, its rim flagged)
            d = pg.create_dataset("filled_frames", data=np.asarray(p.filled_frames, bool))
            _documented(
                d,
                "bool",
                _PER_FRAME + ": the frames in which the particle's mask lay in a wide patch of input pixels without a "
                "value, filled from the patch's rim (its pixels there are flagged filled in pixel_flags): left out of "
                "the trends of its size and shape (moving_rim)",
            )
        for name, m in p.maps.items():
            d = pg.create_dataset(f"map_{name}", data=m, **comp)
            desc = _MAP_DOC.get(name, f"per-pixel map {name} of the XANES analysis")
            _documented(d, _MAP_UNITS.get(name, UNDOCUMENTED), f"{desc}; {_WINDOW}")
            d.attrs.update(origin)
            if name == "fraction_sigma":
                d.attrs["references"] = json.dumps(list(p.reference_names))
    if result.chemistry is not None:
        _write_chemistry(f.create_group("chemistry"), result.chemistry)
    if result.fused is not None:
        desc = (
            "the input optical density on the frame-0 grid: frames rigidly aligned to the first, "
            "each particle pasted aligned"
        )
        for name, img in (("fused_first", result.fused[0]), ("fused_last", result.fused[-1])):
            which = "first" if name == "fused_first" else "last"
            _documented(f.create_dataset(name, data=img, **comp), "OD", f"the {which} frame of the fused stack: {desc}")
        if save_fused and result.fused.shape[0] == len(result.energies_ev):
            d = f.create_dataset("fused", data=result.fused, chunks=(1, *result.fused.shape[1:]), **comp)
            _documented(d, "OD", f"every frame of the fused stack: {desc}")


def read_run_info(folder) -> dict:
    """``run.json`` of an output folder (provenance: command, inputs, checksums, timings...)."""
    folder = Path(folder)
    rerun = "rerun 'xanestrack run' to write a complete output folder"
    if not (folder / "run.json").is_file():
        raise XanestrackError(f"{folder / 'run.json'}: missing; {rerun}")
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise XanestrackError(f"{folder / 'run.json'}: not readable JSON ({one_line(exc)}); {rerun}") from None
    if not isinstance(run, dict):
        raise XanestrackError(f"{folder / 'run.json'}: not a run description (a JSON object); {rerun}")
    return run


def _read_csv_tables(folder: Path, rerun: str) -> dict:
    """The tables from the CSV files (folders written before results.h5 held them)."""
    import pandas as pd

    try:
        tracks = pd.read_csv(folder / "tracks.csv", dtype={"flags": "string"})
    except Exception as exc:  # empty, binary, ragged
        raise XanestrackError(f"{folder / 'tracks.csv'}: unreadable ({one_line(exc)}); {rerun}") from None
    if "flags" in tracks:
        tracks["flags"] = tracks["flags"].fillna("")
    out = dict(tracks=tracks)
    for name, fname in (
        ("detections", "detections.csv"),
        ("rejected", "rejected.csv"),
        ("peak_ratios", "motion_summary.csv"),
    ):
        p = folder / fname
        out[name] = pd.DataFrame()
        if p.is_file() and p.stat().st_size > 1:
            try:
                out[name] = pd.read_csv(p)
            except pd.errors.EmptyDataError:
                pass
            except Exception as exc:
                raise XanestrackError(f"{p}: unreadable ({one_line(exc)}); {rerun}") from None
    return out


def _read_particle(g, n_frames: int):
    from .result import ParticleResult

    d = {k: g[k][()] for k in g}
    a = g.attrs
    edge_maps = {k[5:]: v for k, v in d.items() if k.startswith("edge_") and k != "edge_positions"}
    names = a.get("reference_names")
    if names is not None:
        names = tuple(json.loads(names))
    elif "fractions" in g:
        names = tuple(json.loads(g["fractions"].attrs["references"]))
    else:
        names = ()
    positions = d["positions"]
    return ParticleResult(
        particle=int(a["particle"]),
        positions=positions,
        shifts=d.get("shifts", positions - positions[0]),
        origin=np.array([int(a["origin_y"]), int(a["origin_x"])]),
        aligned=d["aligned"],
        masks=d.get("masks", np.repeat(d["mask"][None].astype(np.float32), n_frames, axis=0)),
        mask=d["mask"],
        frame_flags=d.get("frame_flags", np.zeros(n_frames, np.uint8)),
        edge_maps=edge_maps,
        pixel_flags=d.get("pixel_flags", np.zeros(d["mask"].shape, np.uint16)),
        fractions=d.get("fractions"),
        reference_names=names,
        mean_spectrum=d["mean_spectrum"],
        mean_norm=d["mean_norm"],
        pre_edge=d["pre_edge"],
        post_edge=d["post_edge"],
        e0_ev=float(a["e0_ev"]),
        radius=float(a.get("detection_radius_px", a["radius_px"])),
        unaligned_ends=d.get("unaligned_ends"),
        notes=tuple(json.loads(a["notes"])) if "notes" in a else (),
        agreement=d.get("agreement_px"),
        reference_frame=int(
            a.get("reference_frame", g["agreement_px"].attrs.get("reference_frame", 0) if "agreement_px" in g else 0)
        ),
        edge_positions=d.get("edge_positions"),
        maps={k[4:]: v for k, v in d.items() if k.startswith("map_")},
        xanes_frames=d.get("xanes_frames"),
        background_exclude=_exclude_mask(d.get("background_exclude"), d["mask"].shape),
        filled_frames=d.get("filled_frames"),
        # folders written before it was measured: not measured (NaN)
        e50_normalisation_shift_ev=float(a.get("e50_normalisation_shift_ev", np.nan)),
        # folders written before it was looked for: not looked for (0)
        touching_pieces=int(a.get("touching_pieces", 0)),
        touching_pieces_frames=int(a.get("touching_pieces_frames", 0)),
    )


def _exclude_mask(indices, shape) -> np.ndarray | None:
    """``background_exclude`` (``shape`` bool) from the flat indices results.h5 holds; None where none were written."""
    if indices is None:
        return None
    out = np.zeros(shape, bool)
    out.flat[np.asarray(indices, np.int64)] = True
    return out


def read_results(folder):
    """Read back what :func:`write_results` wrote: the same :class:`~xanestrack.result.PipelineResult`.

    Every field is read exactly from ``results.h5`` (folders from before it held the
    tables are read from their CSV files, the missing fields with defaults). ``fused``
    is the whole fused stack where it was saved, else its first and last frames.

    Raises
    ------
    XanestrackError (a ValueError)
        Naming the file, if a file is missing, unreadable, or lacks a dataset or
        column that :func:`write_results` writes (an incomplete or foreign folder).
    """
    import h5py
    import pandas as pd

    from .pipeline import PipelineOptions
    from .result import PipelineResult

    folder = Path(folder)
    rerun = "rerun 'xanestrack run' to write a complete output folder"
    if not folder.is_dir():
        raise XanestrackError(f"{folder}: not a folder; give an output folder of 'xanestrack run'")
    if not (folder / "results.h5").is_file():
        raise XanestrackError(f"{folder}: no results.h5 here; is this a xanestrack output folder?")
    if not (folder / "run.json").is_file():
        raise XanestrackError(f"{folder / 'run.json'}: missing; {rerun}")
    run = read_run_info(folder)
    h5 = folder / "results.h5"
    try:
        f = h5py.File(h5, "r")
    except Exception as exc:
        raise XanestrackError(f"{h5}: not a readable HDF5 file ({one_line(exc)}); {rerun}") from None
    try:
        with f:
            for name in ("energies_ev", "common_shift", "particles"):
                if name not in f:
                    raise XanestrackError(f"{h5}: no /{name}; not a complete xanestrack results file: {rerun}")
            energies = f["energies_ev"][()]
            if "tables" in f:
                # the tables exactly, from results.h5 (tracks.csv etc. are rounded copies for the user: the report
                # is built from these, whatever was done to the CSV files)
                tables = {name: _read_table(f["tables"][name]) for name in TABLES if name in f["tables"]}
                where = f"{h5} /tables/tracks"
            else:  # a folder from before results.h5 held the tables: tracks.csv is the only copy
                if not (folder / "tracks.csv").is_file():
                    raise XanestrackError(f"{folder / 'tracks.csv'}: missing; {rerun}")
                tables = _read_csv_tables(folder, rerun)
                where = str(folder / "tracks.csv")
            tracks = tables.get("tracks")
            missing = [c for c in TRACK_COLUMNS if tracks is None or c not in tracks]
            for cols in (
                ("dy", "dx", "vy", "vx", "rigid_dy", "rigid_dx"),
                ("nonrigid_dy", "nonrigid_dx", "rel_dy", "rel_dx"),
            ):
                if tracks is not None and any(c in tracks for c in cols):
                    missing += [c for c in cols if c not in tracks]
            if missing:
                raise XanestrackError(f"{where}: no column(s) {', '.join(missing)}; {rerun}")
            similarity = tables.get("similarity")
            if similarity is None and "common_similarity" in f:
                d = f["common_similarity"]
                similarity = pd.DataFrame(d[()], columns=json.loads(d.attrs["columns"]))
                similarity.insert(0, "frame", np.arange(len(similarity)))
                similarity.attrs["centre"] = list(d.attrs.get("centre_yx", [np.nan, np.nan]))
            if similarity is not None and "common_similarity" in f and "fitted_on" in f["common_similarity"].attrs:
                similarity.attrs["fitted_on"] = str(f["common_similarity"].attrs["fitted_on"])
            motion = tables.get("motion", pd.DataFrame())
            if similarity is not None:
                motion.attrs["similarity"] = similarity
            parts, smoothing = [], None
            for key in sorted(f["particles"]):
                g = f["particles"][key]
                smoothing = g.attrs.get("xanes_smoothing_px", smoothing)  # its maps' smoothing, where options lack it
                gone = [f"/particles/{key}/{k}" for k in PARTICLE_DATASETS if k not in g]
                gone += [f"attribute {k} of /particles/{key}" for k in PARTICLE_ATTRS if k not in g.attrs]
                if gone:
                    raise XanestrackError(f"{h5}: no {gone[0]}; not a complete xanestrack results file: {rerun}")
                parts.append(_read_particle(g, len(energies)))
            if "fused" in f:
                fused = f["fused"][()]
            elif "fused_first" in f:
                fused = np.stack([f["fused_first"][()], f["fused_last"][()]])
            else:
                fused = None
            attrs = f.attrs
            shape = (
                tuple(int(v) for v in attrs["frame_shape"])
                if "frame_shape" in attrs
                else tuple(run.get("frame_shape", fused.shape[1:] if fused is not None else (0, 0)))
            )
            options = json.loads(attrs["options"]) if "options" in attrs else run.get("parameters", {})
            options = dict(options) if isinstance(options, dict) else {}
            if smoothing is not None:
                options.setdefault("xanes_smoothing", float(smoothing))
            for name, then in _BEFORE_OPTION.items():
                options.setdefault(name, then)  # a result written before the option: what was done then
            result = PipelineResult(
                energies_ev=energies,
                frame_shape=shape,
                detections=tables.get("detections", pd.DataFrame()),
                tracks=tracks,
                rejected=tables.get("rejected", pd.DataFrame()),
                particles=parts,
                motion=motion,
                peak_ratios=tables.get("peak_ratios", pd.DataFrame()),
                common_shift=f["common_shift"][()],
                fused=fused,
                timings=json.loads(attrs["timings_s"]) if "timings_s" in attrs else dict(run.get("timings_s", {})),
                options=_options_from_dict(PipelineOptions, options),
                notes=tuple(json.loads(attrs["notes"])) if "notes" in attrs else tuple(run.get("notes", ())),
                similarity=similarity,
                chemistry=_read_chemistry(f["chemistry"]) if "chemistry" in f else None,
                edge_widths=tables.get("edge_widths"),
                normalisation_bias=run.get("normalisation_bias_ev"),
            )
    except XanestrackError:
        raise
    except Exception as exc:  # truncated datasets, groups where datasets should be, bad attributes
        raise XanestrackError(f"{h5}: damaged ({type(exc).__name__}: {one_line(exc)}); {rerun}") from None
    return result
