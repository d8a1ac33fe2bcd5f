"""The reader: a xanestrack output folder (results.h5 + tracks.csv) as napari layer data.

Layers, in the frame-0 pixel grid of the scan (the grid of the fused frame; each
particle's maps are placed at its ``origin_y, origin_x``):

- the fused frame (``fused`` when the full stack was saved, else the first and the last
  frame) as images;
- one labels layer of the particles' masks (label = particle id + 1);
- one image per per-pixel map found for the particles (``edge_e50`` -> "E50 (eV)",
  fractions, and whatever 2-D float maps later versions add: sigma, whiteline, ...), all
  particles pasted into one canvas, NaN elsewhere; integer and boolean maps (cluster
  labels, quality masks) as labels layers;
- each particle's aligned stack ``(n_energies, h, w)`` as an image (hidden at first);
- the trajectories of ``tracks.csv`` as a tracks layer ``(particle, frame, y, x)``, in
  the coordinates of the input frames.

Every layer is a ``(data, kwargs, layer_type)`` tuple; napari is never imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["get_reader", "read_output"]

#: display names of the maps the pipeline writes; other maps keep their dataset name
_MAP_NAMES = {
    "edge_e50": "E50 (eV)",
    "edge_derivative": "edge, derivative maximum (eV)",
    "edge_whiteline": "whiteline, fitted (eV)",
    "map_e50_sigma": "sigma E50 (eV)",
    "map_e50_sigma_noise": "sigma E50, noise (eV)",
    "map_e50_sigma_registration": "sigma E50, registration (eV)",
    "map_whiteline_height": "whiteline height",
    "map_edge_jump_od": "edge jump (OD)",
    "map_quality_keep": "quality: kept",
    "map_cluster": "cluster",
}
#: per-particle datasets that are not maps of the particle's window
_NOT_MAPS = {
    "aligned",
    "masks",
    "mask",
    "unaligned_ends",
    "positions",
    "shifts",
    "frame_flags",
    "agreement_px",
    "edge_positions",
    "mean_spectrum",
    "mean_norm",
    "pre_edge",
    "post_edge",
    "xanes_frames",
    # what the mean E50's standard error needs of the noise shared along rows and columns (5 channels), not a map
    "map_noise_shared",
    # the same for the noise of the local background (7 channels), not a map
    "map_noise_background",
}
#: maps shown at first; the rest are added hidden
_VISIBLE = {"edge_e50"}


def _folder_of(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (p / "results.h5").is_file():
        return p
    if p.is_file() and p.name == "results.h5":
        return p.parent
    return None


def get_reader(path):
    """The npe2 reader hook: :func:`read_output` for a xanestrack output folder, else None.

    Parameters
    ----------
    path : str, Path or a list of one
        An output folder of ``xanestrack run`` (holding ``results.h5``) or its
        ``results.h5``.
    """
    return read_output if _folder_of(path) is not None else None


def _limits(values):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(lo) + 0.5)


def _frame_shape(f, particles):
    if "frame_shape" in f.attrs:
        return tuple(int(v) for v in f.attrs["frame_shape"])
    for name in ("fused", "fused_first", "fused_last"):
        if name in f:
            return tuple(f[name].shape[-2:])
    ext = [
        (int(g.attrs["origin_y"]) + g["mask"].shape[0], int(g.attrs["origin_x"]) + g["mask"].shape[1])
        for g in particles
    ]
    return (max(e[0] for e in ext), max(e[1] for e in ext)) if ext else (1, 1)


def _paste(canvas, window, oy, ox, where=None):
    """Paste a window into a canvas at (oy, ox), clipped to the canvas; only where ``where``."""
    h, w = window.shape[-2:]
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + h, canvas.shape[-2]), min(ox + w, canvas.shape[-1])
    if y1 <= y0 or x1 <= x0:
        return
    src = window[..., y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    dst = canvas[..., y0:y1, x0:x1]
    if where is None:
        dst[...] = src
    else:
        m = where[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        dst[..., m] = src[..., m]


def _component_names(ds, k):
    for key in ("references", "names", "components"):
        if key in ds.attrs:
            try:
                names = json.loads(ds.attrs[key])
            except (TypeError, ValueError):
                continue
            if len(names) == k:
                return [str(n) for n in names]
    return [str(i) for i in range(k)]


def read_output(path) -> list:
    """Layer data of a xanestrack output folder.

    Parameters
    ----------
    path : str, Path or a list of one
        The output folder (or its ``results.h5``).

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``layer_type`` is ``"image"``, ``"labels"`` or ``"tracks"``.

    Raises
    ------
    ValueError
        If ``path`` is not a xanestrack output folder.
    """
    import h5py

    folder = _folder_of(path)
    if folder is None:
        raise ValueError(f"{path}: not a xanestrack output folder (no results.h5); give the folder of 'xanestrack run'")
    layers = []
    with h5py.File(folder / "results.h5", "r") as f:
        groups = [f["particles"][k] for k in sorted(f["particles"])] if "particles" in f else []
        shape = _frame_shape(f, groups)
        energies = f["energies_ev"][()] if "energies_ev" in f else None
        meta = {"source": str(folder)}
        if energies is not None:
            meta["energies_ev"] = energies.tolist()
        # --- the fused frame
        if "fused" in f:
            d = f["fused"][()]
            kw = dict(
                name="fused frames (frame-0 grid)", colormap="gray", contrast_limits=_limits(d[-1]), metadata=meta
            )
            layers.append((d, kw, "image"))
        else:
            for name in ("fused_first", "fused_last"):
                if name in f:
                    d = f[name][()]
                    label = "fused, first frame" if name == "fused_first" else "fused, last frame"
                    kw = dict(
                        name=label,
                        colormap="gray",
                        contrast_limits=_limits(d),
                        visible=name == "fused_last",
                        metadata=meta,
                    )
                    layers.append((d, kw, "image"))
        # --- per-particle maps pasted into frame-sized canvases
        masks = np.zeros(shape, np.int32)
        canvases: dict = {}
        order: list = []
        for g in groups:
            pid = int(g.attrs.get("particle", int(g.name.rsplit("/", 1)[-1])))
            oy, ox = int(g.attrs["origin_y"]), int(g.attrs["origin_x"])
            mask = g["mask"][()].astype(bool)
            _paste(masks, np.where(mask, pid + 1, 0).astype(np.int32), oy, ox, where=mask)
            for key in g:
                ds = g[key]
                if key in _NOT_MAPS or not isinstance(ds, h5py.Dataset):
                    continue
                if ds.shape == mask.shape:
                    items = [(key, _MAP_NAMES.get(key, key), ds[()])]
                elif ds.ndim == 3 and ds.shape[1:] == mask.shape and (energies is None or ds.shape[0] != energies.size):
                    data = ds[()]
                    names = _component_names(ds, ds.shape[0])
                    items = [(f"{key}:{n}", f"{key}: {n}", data[i]) for i, n in enumerate(names)]
                else:
                    continue
                for ckey, label, m in items:
                    integer = m.dtype.kind in "biu"
                    shifted = integer and m.dtype.kind != "b" and ckey != "pixel_flags"
                    if shifted:
                        label = f"{label} (label = value + 1)"
                    if ckey not in canvases:
                        fill = 0 if integer else np.nan
                        dtype = np.int32 if integer else np.float32
                        canvases[ckey] = (label, integer, np.full(shape, fill, dtype))
                        order.append(ckey)
                    _, is_int, canvas = canvases[ckey]
                    if is_int:
                        # labels 0 is napari's background: shift cluster numbers (which start at 0, -1 outside)
                        _paste(canvas, m.astype(np.int32) + int(shifted), oy, ox, where=mask)
                    else:
                        _paste(canvas, m.astype(np.float32), oy, ox, where=mask & np.isfinite(m))
        if groups:
            kw = dict(name="particles (label = particle + 1)", opacity=0.4, visible=False, metadata=meta)
            layers.append((masks, kw, "labels"))
        for ckey in order:
            label, is_int, canvas = canvases[ckey]
            kw = dict(name=label, visible=ckey in _VISIBLE, metadata=meta)
            if is_int:
                layers.append((canvas, dict(kw, opacity=0.6), "labels"))
            else:
                layers.append((canvas, dict(kw, colormap="turbo", contrast_limits=_limits(canvas)), "image"))
        # --- each particle's aligned stack, in place
        for g in groups:
            if "aligned" not in g:
                continue
            pid = int(g.attrs.get("particle", 0))
            d = g["aligned"][()]
            layers.append(
                (
                    d,
                    dict(
                        name=f"particle {pid} aligned",
                        translate=(0.0, float(g.attrs["origin_y"]), float(g.attrs["origin_x"])),
                        colormap="gray",
                        contrast_limits=_limits(d),
                        visible=False,
                        metadata=meta,
                    ),
                    "image",
                )
            )
    # --- trajectories
    tracks_csv = folder / "tracks.csv"
    if tracks_csv.is_file():
        import pandas as pd

        t = pd.read_csv(tracks_csv, usecols=lambda c: c in {"particle", "frame", "y", "x"})
        if {"particle", "frame", "y", "x"} <= set(t.columns) and len(t):
            t = t.dropna().sort_values(["particle", "frame"])
            data = t[["particle", "frame", "y", "x"]].to_numpy(float)
            kw = dict(name="trajectories (input-frame coordinates)", tail_length=20, metadata=meta)
            layers.append((data, kw, "tracks"))
    return layers
