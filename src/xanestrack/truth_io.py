"""Writing and reading synthetic scans with their ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .synth import SynthStack, SynthTruth, params_dict

__all__ = ["write_synthetic", "read_truth"]


def write_synthetic(s: SynthStack, folder, *, preset: str = "custom") -> None:
    """Write ``stack.h5`` (raw counts, FXI layout) and ``truth.h5`` into ``folder``."""
    import h5py

    from .io.hdf5 import write_fxi

    folder = Path(folder)
    write_fxi(
        folder / "stack.h5",
        s.counts.round().clip(0, 65535).astype(np.uint16),
        flats=s.flats.astype(np.float32),
        darks=s.dark[None],
        energies_ev=s.energies_ev,
    )
    t = s.truth
    t.positions.to_csv(folder / "truth_positions.csv", index=False, float_format="%.4f")
    with h5py.File(folder / "truth.h5", "w") as f:
        f.attrs["params"] = json.dumps(params_dict(s.params))
        f.attrs["preset"] = preset
        f.attrs["seed"] = s.seed
        f.create_dataset("energies_ev", data=s.energies_ev)
        f.create_dataset("global_shift", data=t.global_shift)
        f.create_dataset("radii", data=t.radii)
        f.create_dataset("fines", data=t.fines)
        if t.scale is not None:
            f.create_dataset("scale", data=t.scale)
        f.attrs["patterns"] = json.dumps(list(t.patterns))
        types = dict(particle=np.int64, frame=np.int64, isolated=bool)  # typed: a scene of no particle too
        for name in ("particle", "frame", "energy_ev", "y", "x", "dy", "dx", "isolated"):
            f.create_dataset(f"positions/{name}", data=t.positions[name].to_numpy(types.get(name, np.float64)))
        for i in range(len(t.radii)):
            g = f.create_group(f"particles/{i:03d}")
            g.create_dataset("masks", data=t.masks[i], compression="gzip")
            g.create_dataset("mask_origins", data=t.mask_origins[i])
            d = g.create_dataset("edge_e50", data=t.edge_maps[i])
            d.attrs["origin_y"], d.attrs["origin_x"] = t.edge_map_origins[i]


def read_truth(path) -> SynthTruth:
    """Read ``truth.h5`` written by :func:`write_synthetic`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ground-truth file not found")
    with h5py.File(path, "r") as f:
        pos = pd.DataFrame({k: f["positions"][k][()] for k in f["positions"]})
        n = len(f["particles"]) if "particles" in f else 0  # a scene of no particle has none
        masks, origins, maps, morig = [], [], [], []
        for i in range(n):
            g = f["particles"][f"{i:03d}"]
            masks.append(g["masks"][()])
            origins.append(g["mask_origins"][()])
            maps.append(g["edge_e50"][()])
            morig.append((g["edge_e50"].attrs["origin_y"], g["edge_e50"].attrs["origin_x"]))
        return SynthTruth(
            positions=pos[["particle", "frame", "energy_ev", "y", "x", "dy", "dx", "isolated"]],
            global_shift=f["global_shift"][()],
            masks=masks,
            mask_origins=origins,
            edge_maps=maps,
            edge_map_origins=np.array(morig, float).reshape(-1, 2),
            radii=f["radii"][()],
            patterns=json.loads(f.attrs["patterns"]),
            fines=f["fines"][()],
            scale=f["scale"][()] if "scale" in f else None,
        )
