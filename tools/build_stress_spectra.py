"""Regenerate ``src/xanestrack/data/ni_stress_references.csv`` from the raw XDI files.

The stress scene model (:mod:`xanestrack.synth_stress`) draws its chemistry from a
measured Ni(OH)2 (Ni2+) K-edge spectrum of the XAS Data Library (CC0), independent
of the pyxas NiO/LiNiO2 references the default scene model uses. This script is run
once by a developer (never at import): it reads the three room-temperature Ni(OH)2
transmission scans, takes ``mu = ln(i0 / itrans)``, averages the scans (they share
one energy grid), normalises the mean once (pre-edge line, post-edge quadratic, edge
step at E0, :func:`xanestrack.xanes.normalize`) and writes energy and mu_norm for
8110-9000 eV.

Usage::

    .venv/bin/python tools/build_stress_spectra.py [XASDATALIBRARY_NI_FOLDER]

The default folder is ``../shared/data/spectra/xasdatalibrary/Ni`` beside the checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from xanestrack.xanes import normalize

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "xanestrack" / "data" / "ni_stress_references.csv"
FILES = ("NiOH2_rt_01.xdi", "NiOH2_rt_02.xdi", "NiOH2_rt_03.xdi")


def main(folder: Path) -> None:
    scans = [np.loadtxt(folder / f, comments="#") for f in FILES]
    e = scans[0][:, 0]
    for s in scans[1:]:
        if s.shape != scans[0].shape or np.abs(s[:, 0] - e).max() > 1e-6:
            raise ValueError("the Ni(OH)2 scans no longer share one energy grid: interpolate first")
    mu = np.mean([np.log(s[:, 1] / s[:, 2]) for s in scans], axis=0)
    n = normalize(e, mu, pre_range=(-150.0, -30.0), post_range=(100.0, None), post_order=2)
    keep = (e >= 8110.0) & (e <= 9000.0)
    lines = [
        "# Normalised Ni K-edge XANES of Ni(OH)2 (Ni2+), mean of XAS Data Library scans "
        + ", ".join(FILES)
        + " (SSRL 4-1, 1997, transmission; mono d-spacing nominal, energies as recorded).",
        "# Licence: CC0 1.0 (public domain), XAS Data Library; see LICENSE-xasdatalibrary.txt.",
        f"# mu = ln(i0/itrans); normalised once by tools/build_stress_spectra.py: E0 {n.e0_ev:.2f} eV,"
        " pre-edge line E0-150..E0-30 eV, post-edge quadratic E0+100 eV..end.",
        "energy_ev,NiOH2",
    ]
    lines += [f"{ee:.3f},{mm:.5f}" for ee, mm in zip(e[keep], n.norm[keep])]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({int(keep.sum())} energies, E0 {n.e0_ev:.2f} eV)")


if __name__ == "__main__":
    default = ROOT.parent / "shared" / "data" / "spectra" / "xasdatalibrary" / "Ni"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
