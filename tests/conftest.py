from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts) -> Path:
    """Path under ../shared/data, skipping the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (../shared/data is not beside the checkout)")
    return p


@pytest.fixture(scope="session")
def small_synth():
    """A small synthetic scan: 4 particles, 48 energies, 200 x 200."""
    from xanestrack.synth import make_synthetic_stack

    return make_synthetic_stack(
        "default",
        seed=11,
        n_energies=48,
        shape=(200, 200),
        n_particles=4,
        radius_range=(10.0, 22.0),
        drift_range=(1.0, 3.0),
    )


def pair_by_position(est_yx, true_yx, tol=5.0):
    """Map estimated index -> true index by nearest position (ignores id numbering)."""
    from xanestrack.evaluate import pair_particles

    return dict(pair_particles(np.asarray(est_yx), np.asarray(true_yx), max_distance=tol))


def digest(*paths) -> dict:
    """SHA-256 of every file under ``paths``: inputs and outputs must come out byte-identical."""
    import hashlib

    out = {}
    for p in paths:
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def undocumented_fields(cls) -> list:
    """Fields of an options dataclass that its docstring does not describe (``name : type`` lines)."""
    import re
    from dataclasses import fields

    doc = cls.__doc__ or ""
    return [f.name for f in fields(cls) if not re.search(rf"^\s*{re.escape(f.name)} : ", doc, re.M)]


def error_line(r, *fragments):
    """The one line a refused command printed (``error: ...``, exit status 2, no traceback), holding ``fragments``."""
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]
