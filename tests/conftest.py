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


def stress_disc(seed: int = 5):
    """A 33 x 33 window over synth's grid: a disc of the stress family's reference spectrum (radius 9 px) on an
    offset that changes from frame to frame, with noise. ``(energies, mask, aligned float32, true E50)``."""
    from xanestrack.synth import ni_energy_grid
    from xanestrack.synth_stress import stress_edge_energy, stress_reference

    rng = np.random.default_rng(seed)
    e = ni_energy_grid()
    mu = stress_reference()(e) + 0.25 * (e / 8333.0) ** -3
    yy, xx = np.mgrid[0:33, 0:33]
    mask = np.hypot(yy - 16, xx - 16) < 9
    offs = rng.normal(0, 0.05, e.size)
    aligned = 0.8 * mu[:, None, None] * mask + 0.1 + offs[:, None, None] + rng.normal(0, 0.01, (e.size, 33, 33))
    return e, mask, aligned.astype(np.float32), float(stress_edge_energy(0.0))


#: the probe's NaN patch (frames, rows, columns) over the scene of :func:`nan_patch_scene`
NAN_PATCH = (slice(None), slice(100, 140), slice(100, 140))


def nan_patch_scene():
    """The API probe's scene (``xanestrack synth --seed 5 --size 256 --n-energies 40 --n-particles 4 --max-radius
    25``): ``(optical density, energies)``; its particle 2 drifts across :data:`NAN_PATCH`."""
    from xanestrack.synth import PRESETS, make_synthetic_stack

    s = make_synthetic_stack(
        "default",
        seed=5,
        n_energies=40,
        shape=(256, 256),
        n_particles=4,
        radius_range=(min(PRESETS["default"].radius_range[0], 25.0), 25.0),
    )
    return s.optical_density(), np.asarray(s.energies_ev, float)


class CollectWarnings:
    """The messages of the warnings logged by ``xanestrack`` inside the ``with`` block (``.messages``): for
    module-scoped fixtures, where pytest's ``caplog`` cannot be used."""

    def __enter__(self):
        import logging

        self.messages = []
        self._handler = logging.Handler(logging.WARNING)
        self._handler.emit = lambda record: self.messages.append(record.getMessage())
        logging.getLogger("xanestrack").addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        import logging

        logging.getLogger("xanestrack").removeHandler(self._handler)
        return False


#: eV: a Co-like K edge made from the Ni references shifted down by this much (the other-edge tests' scenes: no Co
#: spectrum needed)
CO_BELOW_NI_EV = 624.0
#: eV: the Co+Ni user's grid of those tests: 5 eV below the Co edge, 1 eV across it, 10 eV between, 1-2 eV across
#: the Ni edge
CO_NI_GRID = np.r_[
    np.arange(7650, 7700, 5.0),
    np.arange(7700, 7730, 1.0),
    np.arange(7730, 8320, 10.0),
    np.arange(8320, 8330, 2.0),
    np.arange(8330, 8360, 1.0),
    np.arange(8360, 8451, 6.0),
]


def still_particle(xr, aligned, mask, energies, radius: float, pid: int = 0):
    """A ``ParticleResult`` of one still particle ``pid`` at the origin: its aligned frames ``aligned`` (n, h, w), its
    mask and ``xr``, what :func:`xanestrack.xanes.analyse_particle` gave for it."""
    from xanestrack.result import ParticleResult

    n = np.asarray(energies).size
    return ParticleResult(
        particle=pid,
        positions=np.zeros((n, 2)),
        shifts=np.zeros((n, 2)),
        origin=np.zeros(2, int),
        aligned=aligned,
        masks=np.repeat(mask[None].astype(np.float32), n, axis=0),
        mask=mask,
        frame_flags=np.zeros(n, np.uint8),
        mean_spectrum=np.nanmean(aligned[:, mask], axis=1),
        radius=radius,
        **xr,
    )


def one_particle_result(xr, aligned, mask, energies, radius: float):
    """A ``PipelineResult`` of one still particle (id 0) at the origin (:func:`still_particle`); the tables empty."""
    import pandas as pd

    from xanestrack.result import PipelineResult

    n = np.asarray(energies).size
    p = still_particle(xr, aligned, mask, energies, radius)
    empty = pd.DataFrame()
    return PipelineResult(
        energies_ev=energies,
        frame_shape=mask.shape,
        detections=empty,
        tracks=empty,
        rejected=empty,
        particles=[p],
        motion=empty,
        peak_ratios=empty,
        common_shift=np.zeros((n, 2)),
        fused=None,
        timings={},
        options=None,
    )
