"""What a long run says while it runs, and what it says of memory (probe report "perf", findings 2, 2b, 3, 4, 6).

- In a batch log (no terminal) every stage says it is over as it ends, and the series each scan; in a terminal one
  bar at a time.
- The run's memory is checked against its whole need before reading; a library PyTorch could not map, and a
  failed allocation far from the frames' size, are said as what they are.
- A large particle's uncertainty holds far fewer (energies x pixels) arrays at once.
- A scan where nothing real is found prints no raw numpy warnings.
"""

import io
import re
import tracemalloc
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from xanestrack import cli
from xanestrack.cli import app
from xanestrack.errors import XanestrackError
from xanestrack.synth import make_synthetic_stack

runner = CliRunner()
CLASSICAL = ["--detector", "classical", "--segmenter", "classical"]


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    from xanestrack.truth_io import write_synthetic

    root = tmp_path_factory.mktemp("progress")
    s = make_synthetic_stack(
        "default", seed=1, n_particles=3, shape=(180, 180), radius_range=(12.0, 20.0), n_energies=40
    )
    write_synthetic(s, root, preset="default")
    return root / "stack.h5"


# ----------------------------------------------------------------------------- progress


def _stage_lines(output):
    return re.findall(r"^(\w+)\s+(\d+)/(\d+) done \(", output, flags=re.M)


def test_a_run_without_a_terminal_says_each_stage_as_it_ends(small_scan, tmp_path):
    """Under CliRunner stderr is no terminal (a batch log): a line per stage, in the pipeline's order, each at its
    total; the particles' total is the particles analysed (it was the tracks counted before some were left out)."""
    r = runner.invoke(app, ["run", str(small_scan), "--out", str(tmp_path / "o"), *CLASSICAL])
    assert r.exit_code == 0, r.output
    lines = _stage_lines(r.output)
    stages = [s for s, _, _ in lines]
    assert stages[:3] == ["detect", "match", "locate"], r.output
    assert {"vouch", "particles"} <= set(stages), r.output
    assert stages.index("vouch") < stages.index("particles")
    assert all(done == total for _, done, total in lines)  # said as each ends, not part-way
    n_located = int(dict((s, t) for s, _, t in lines)["locate"])
    n_particles = int(dict((s, t) for s, _, t in lines)["particles"])
    assert 1 <= n_particles <= n_located
    # the stage lines come before the summary printed once the pipeline is over
    assert r.output.index("locate ") < r.output.index("register  + xanes")


def test_quiet_run_says_no_stage(small_scan, tmp_path):
    """Control: --quiet prints errors only, no progress line."""
    r = runner.invoke(app, ["--quiet", "run", str(small_scan), "--out", str(tmp_path / "o"), *CLASSICAL])
    assert r.exit_code == 0, r.output
    assert _stage_lines(r.output) == []


def test_a_terminal_shows_one_bar_at_a_time(monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(cli, "_console", lambda: Console(file=io.StringIO(), force_terminal=True, width=80))
    with cli._Progress(False) as prog:
        prog("detect", 3, 9)
        prog("detect", 9, 9)
        prog("match", 0, 1)
        assert [t.description for t in prog.bar.tasks] == ["match"]
        prog("locate", 1, 5)
        assert [t.description for t in prog.bar.tasks] == ["locate"]
    assert prog.lines is None


def test_series_lines_per_scan(tmp_path):
    """The series reports each scan as it ends (threads scheduler), and the CLI's display writes one line each."""
    from xanestrack.parallel.series import run_series, synthetic_sources

    seen = []
    kw = dict(shape=(200, 200), n_particles=3, radius_range=(12.0, 20.0), stage_offset=6.0, n_energies=30)
    run_series(
        synthetic_sources(2, seed=3, **kw),
        tmp_path / "s",
        progress=lambda *a: seen.append(a),
        detector="classical",
        segmenter="classical",
    )
    assert seen == [("scans", 1, 2), ("scans", 2, 2)]

    out = io.StringIO()
    from rich.console import Console

    console = Console(file=out, width=100)  # no terminal: a batch log
    p = cli._Progress(False, each=True)
    p.__enter__()
    p.lines = console
    p("scans", 1, 2)
    p("scans", 2, 2)
    p.__exit__(None, None, None)
    assert re.findall(r"^scans\s+(\d)/2 done", out.getvalue(), flags=re.M) == ["1", "2"]


# ----------------------------------------------------------------------------- memory


def test_the_run_is_checked_against_its_whole_need_before_reading(small_scan, monkeypatch):
    from xanestrack.io import RUN_WORKING_BYTES, check_run_memory, checks

    frames = 40 * 180 * 180 * 4
    monkeypatch.setattr(checks, "available_memory", lambda: 10 * 2**30)
    assert check_run_memory(small_scan) == frames  # control: room enough, nothing said
    # room for reading these 5 MiB many times over, not for the run (2 x frames + 500 MiB + the models)
    monkeypatch.setattr(checks, "available_memory", lambda: RUN_WORKING_BYTES)
    with pytest.raises(XanestrackError, match=r"the run on the frames \(40, 180, 180\) .* needs about .* available"):
        check_run_memory(small_scan)
    with pytest.raises(XanestrackError) as refused:
        check_run_memory(small_scan, learned_models=False)
    assert "learned models" not in str(refused.value)  # the classical path loads no PyTorch: not counted


def test_the_run_command_refuses_before_reading(small_scan, tmp_path, monkeypatch):
    from xanestrack.io import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 300 * 2**20)
    r = runner.invoke(app, ["run", str(small_scan), "--out", str(tmp_path / "o"), *CLASSICAL])
    assert r.exit_code == 2
    assert "the run on the frames (40, 180, 180)" in r.output and "read " not in r.output


def test_a_library_that_cannot_be_mapped_is_said_as_memory():
    exc = ImportError("libtorch_cpu.so: failed to map segment from shared object")
    msg = cli._message(exc)
    assert "not enough memory" in msg and "bug" not in msg
    other = cli._message(ImportError("No module named 'foo'"))  # control: any other ImportError stays a bug
    assert "unexpected ImportError" in other


def _array_memory_error(shape, dtype):
    try:
        from numpy._core._exceptions import _ArrayMemoryError
    except ImportError:  # numpy 1.x
        from numpy.core._exceptions import _ArrayMemoryError
    return _ArrayMemoryError(shape, np.dtype(dtype))


def test_memory_error_says_the_size_and_crop_or_bin_only_near_the_frames_size(monkeypatch):
    exc = _array_memory_error((3423, 159, 149), "float64")  # 619 MiB: the 150-particle vote of the report
    monkeypatch.setitem(cli._STATE, "frames_bytes", 98 * 2**20)
    msg = cli._message(exc)
    assert "619 MiB could not be allocated" in msg and "98 MiB" in msg
    assert "crop or bin" not in msg
    assert "far more than the frames" in msg
    small = cli._message(_array_memory_error((252 * 128,), "float64"))  # 252 KiB, mid-read at ulimit -v 1.0 GB
    assert "252 KiB could not be allocated" in small and "crop or bin" not in small
    # control: a failed allocation of the frames' order still advises cropping or binning
    monkeypatch.setitem(cli._STATE, "frames_bytes", 731 * 2**20)
    assert "crop or bin" in cli._message(exc)


# ----------------------------------------------------------------------------- uncertainty memory


def test_a_large_particles_uncertainty_holds_few_arrays_at_once():
    """tracemalloc peak of edge_energy_sigma (registration part included) on one particle of radius 60 px at 120
    energies, in units of one (energies x pixels) float64 array: 15.0 before (every intermediate float64 and kept),
    7.5 now; the sigma as before within 1e-4 (3.2e-6 on the default scene)."""
    from xanestrack.chemistry.uncertainty import edge_energy_sigma

    n, h, r = 120, 140, 60
    rng = np.random.default_rng(0)
    e = np.linspace(8200, 8500, n)
    yy, xx = np.mgrid[:h, :h]
    mask = (yy - h // 2) ** 2 + (xx - h // 2) ** 2 <= r**2
    e0 = 8345 + 2 * (xx - h // 2) / r
    spec = 0.2 + 0.0005 * (e[:, None, None] - 8200) + 1.0 / (1 + np.exp(-(e[:, None, None] - e0[None]) / 3))
    mu = (spec * mask + rng.normal(0, 0.01, (n, h, h))).astype(np.float32)
    one = n * int(mask.sum()) * 8
    tracemalloc.start()
    try:
        s = edge_energy_sigma(e, mu, mask=mask, shift_sigma_px=np.full(n, 0.1), shared={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * one, f"{peak / one:.1f} arrays"
    sig = s.sigma_ev[mask]
    assert np.isfinite(sig).mean() > 0.9 and 0 < np.nanmedian(sig) < 1.0


# ----------------------------------------------------------------------------- no raw numpy warnings


def test_border_median_of_an_all_nan_border_warns_nothing():
    from xanestrack.background import _border_median

    a = np.ones((3, 12, 12))
    a[1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = _border_median(a)
    assert m[0] == 1.0 and np.isnan(m[1])


def test_contrasts_of_a_particle_never_placed_warn_nothing():
    """A particle with no finite position (a texture track of a scan with no particle) has no contrast: NaN, left
    out as not usable, without numpy's "Mean of empty slice" printed to the user; the other particle's stands."""
    import types

    from xanestrack.pipeline import _particle_contrasts

    n, h = 40, 80
    e = np.linspace(8250, 8450, n)
    yy, xx = np.mgrid[:h, :h]
    disc = (np.hypot(yy - 40, xx - 40) < 10).astype(float)
    step = 1 / (1 + np.exp(-(e - 8345) / 3))
    od = (0.2 + disc[None] * (0.3 + step[:, None, None])).astype(np.float32)
    located = [
        types.SimpleNamespace(centres=np.full((n, 2), 40.0), radius=10.0),
        types.SimpleNamespace(centres=np.full((n, 2), 20.0), radius=8.0),
    ]
    shifts = np.zeros((n, 2, 2))
    shifts[:, 1] = np.nan  # the second particle never placed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _particle_contrasts(located, shifts, od, e)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()
