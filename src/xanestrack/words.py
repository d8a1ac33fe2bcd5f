"""Words the notes share: counts of things, and lists of frames with their energies."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``"1 object"``, ``"3 objects"`` (notes said "1 objects")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def frame_list(frames, energies) -> str:
    """``"20 (8330.0 eV), 31 (8341.5 eV)"``: up to ten frames with their energies, `` ...`` after."""
    return ", ".join(f"{k} ({energies[k]:.1f} eV)" for k in frames[:10]) + (" ..." if len(frames) > 10 else "")
