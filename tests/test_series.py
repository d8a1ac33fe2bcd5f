import numpy as np
import pandas as pd
import pytest

from xanestrack.parallel.series import evaluate_series, link_scans, process_scan, run_series, synthetic_sources
from xanestrack.synth import make_synthetic_series

KW = dict(shape=(260, 260), n_particles=4, radius_range=(12.0, 22.0), stage_offset=12.0, deformation=4.0)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "series"
    return run_series(synthetic_sources(3, seed=3, **KW), out, scheduler="sync")


def test_series_identity_and_chemistry_trend(sequential):
    truth = make_synthetic_series("default", n_scans=3, seed=3, **KW).truth
    ev = evaluate_series(sequential, truth)
    assert ev["all_identities_kept"] and ev["n_particles"] == 4
    assert ev["max_abs_e50_error_ev"] < 0.2


def test_threads_and_local_cluster_equal_sequential(sequential, tmp_path):
    cols = ["particle", "scan", "scan_particle", "y0", "x0", "mean_e50", "oxidised_fraction"]
    thr = run_series(synthetic_sources(3, seed=3, **KW), tmp_path / "thr")
    pd.testing.assert_frame_equal(thr[cols], sequential[cols])
    dist = run_series(synthetic_sources(3, seed=3, **KW), tmp_path / "dist", workers=2)
    pd.testing.assert_frame_equal(dist[cols], sequential[cols])


def test_interrupted_series_resumes_without_redoing(tmp_path, monkeypatch):
    src = synthetic_sources(3, seed=3, **KW)
    out = tmp_path / "s"
    # "interrupt" after 2 scans: process them alone
    import json

    from xanestrack.parallel import series as ser

    (out).mkdir()
    manifest = dict(sources=[dict(name=s.name, index=s.index, kind=s.kind, path=s.path, synthetic=s.synthetic) for s in src])
    (out / "series.json").write_text(json.dumps(manifest))
    for s in src[:2]:
        process_scan(s, out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "scans").rglob("results.h5")}
    loads = []
    orig = ser.ScanSource.load
    monkeypatch.setattr(ser.ScanSource, "load", lambda self: loads.append(self.index) or orig(self))
    table = run_series(src, out, scheduler="sync")
    assert loads == [2]  # only the missing scan was read and processed
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert table["scan"].nunique() == 3


def test_other_series_in_folder_is_refused(sequential, tmp_path):
    out = tmp_path / "x"
    run_series(synthetic_sources(1, seed=5, **KW), out, scheduler="sync")
    with pytest.raises(ValueError, match="something other than this series"):
        run_series(synthetic_sources(1, seed=6, **KW), out, scheduler="sync")


def test_link_scans_follows_a_large_common_jump():
    rows = []
    base = np.array([[50.0, 50.0], [50.0, 150.0], [150.0, 80.0]])
    for s, off in enumerate([(0, 0), (30, -25), (-20, 35)]):
        for j, (y, x) in enumerate(base[::-1] if s == 1 else base):  # ids permuted in scan 1
            rows.append(dict(scan=s, scan_name=f"s{s}", scan_particle=j, y0=y + off[0], x0=x + off[1], radius=15.0, mean_e50=0.0, oxidised_fraction=0.0, max_nonrigid_px=0.0, flagged_frames=0))
    t = link_scans(pd.DataFrame(rows))
    for s in range(3):
        g = t[t.scan == s].sort_values("y0")
        assert sorted(t.particle.unique()) == [0, 1, 2]
    # the particle at (50, 50)+offset has the same id in every scan
    ids = [int(t[(t.scan == s) & (np.hypot(t.y0 - (50 + o[0]), t.x0 - (50 + o[1])) < 1)].particle.iloc[0]) for s, o in enumerate([(0, 0), (30, -25), (-20, 35)])]
    assert len(set(ids)) == 1
