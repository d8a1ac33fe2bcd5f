"""Scans the tool was not built on: one thing changed at a time about a default scene, run as the user runs it.

Usage: python benchmarks/bench_trials.py [--seed 1] [--trials zingers few_energies ...] [--keep DIR]

A default scene (143 x 460^2, 9 particles; ``xanestrack synth``) is written once; each trial makes a changed copy
(HDF5 counts, or a TIFF of optical density with its energies file), runs ``xanestrack run`` on it as a subprocess, and
compares the positions in tracks.csv with the truth moved the same way (RMS per particle, each particle's mean offset
removed), beside the same for the unchanged scene:

- ``zingers``: 30-80 zingers per frame (1-2 px, 3-20 times the counts), and the same with ``--no-zingers``;
- ``defects``: the detector's defects, the same in every frame: a dead column (no counts, in the flats too), a hot
  row (+30 % counts, not in the flats), 200 hot pixels (+500-5000 counts), and the same with ``--no-zingers``;
- ``flat_pattern``: a fixed pattern of the beam that the flats do not hold (5 %, grains of 4 px), the same in every
  frame, as dust on the optics or a flat-field taken before the beam moved;
- ``few_energies``: 22 of the 143 energies (every 5th-10th frame, a quick scan of the same motion), and the same with
  ``--no-smooth-tracks``;
- ``descending``: the scan written from high to low energy (tracks.csv compared with the unchanged run's);
- ``no_beam``: frame 70 at the dark level; ``nan_frame``: frame 50 all NaN (TIFF of OD);
- ``beam_changes``: every frame's optical density offset by its own constant (sd 0.03: the beam's intensity changing
  where the flats do not see it);
- ``stage_jump``: the field moved by (+37, -29) px from frame 80 on;
- ``drift``: the field creeping by (+50, -70) px across the scan, a straight line (the stage or the sample holder
  drifting; the bare field comes in behind it; two particles leave the field: their RMS over the frames measured),
  and the same in whole pixels (frames aligned upstream to the nearest pixel), and the other way (the scan ends where
  the unchanged one is: particles enter the field; RMS over the frames vouched for, and the count of those more than
  1 px off);
- ``prealigned``: the frames aligned upstream (another tool's global alignment, to the nearest pixel), the bands
  shifted in filled with zeros (as TXM-Sandbox writes them) and, again, with NaN;
- ``rotation``: the image turned by 0.8 degrees across the scan, with and without ``--rotation``;
- ``magnification``: a 3 % magnification change across the scan;
- ``focus``: the images blurred more and more across the scan (a Gaussian of 0 to 1.0 and to 2.5 px sd: the zone
  plate's focus drifting with the energy, not refocused; and 2 px at both ends, none mid-scan: a focus set at the
  edge), as run and with ``--no-match-resolution``, beside every
  frame blurred alike by the largest (what matching the frames' resolution can at best reach); each particle's mean
  E50 less the unchanged scene's;
- ``non_square``: every frame cut to 460 x 300 px (a detector region of interest): the particles the cut crosses
  leave the run, those inside it are compared;
- ``od_ramp``: an optical density growing from 0 to 1 across the frame, the same at every energy (a thick matrix on
  one side);
- ``other_edge``: the scan labelled 624 eV lower, as a Co K-edge scan (the E50 change printed is the largest
  departure from -624 eV).

Printed per trial: the particles found, their RMS (min-max), the frames flagged, the largest own (non-rigid) motion,
the largest change of a particle's mean E50 against the unchanged scene's, and the run's notes that name the
trial's change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRIALS = [
    "zingers",
    "defects",
    "flat_pattern",
    "few_energies",
    "descending",
    "no_beam",
    "nan_frame",
    "beam_changes",
    "stage_jump",
    "drift",
    "prealigned",
    "rotation",
    "magnification",
    "focus",
    "non_square",
    "od_ramp",
    "other_edge",
]


def _cli(*args):
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", "from xanestrack.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"xanestrack {' '.join(map(str, args[:3]))} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def _score(out: Path, truth, frames=None, move=None, measured_only=False, vouched_only=False):
    """Per-particle RMS of tracks.csv against the truth (moved by ``move(frame, y, x)``), matched at the first frame
    (with ``vouched_only``: by the median distance over the frames); ``measured_only``: over the frames not flagged
    ``interpolated`` (a particle out of the field is not measured); ``vouched_only``: over the frames vouched for (no
    ``interpolated``, ``disagree`` or ``position_outlier``), and the count of those more than 1 px off as ``wrong``."""
    import pandas as pd

    t = pd.read_csv(out / "tracks.csv")
    tr = truth.copy()
    if frames is not None:
        tr = tr[tr["frame"].isin(frames)].copy()
        tr["frame"] = tr["frame"].map({k: i for i, k in enumerate(frames)})
    if move is not None:
        tr["y"], tr["x"] = move(tr["frame"].to_numpy(), tr["y"].to_numpy(), tr["x"].to_numpy())
    rms = []
    wrong = 0
    first = tr[tr["frame"] == 0]
    for _, g in t.groupby("particle"):
        g = g.sort_values("frame")
        if vouched_only:  # a particle entering the field has no true position to match at frame 0
            yx = g[["y", "x"]].to_numpy()
            ids = tr["particle"].unique()
            q = min(ids, key=lambda i: np.nanmedian(np.hypot(*(yx - tr[tr["particle"] == i][["y", "x"]].to_numpy()).T)))
            gt = tr[tr["particle"] == q].set_index("frame").loc[g["frame"]]
        else:
            j = ((first["y"] - g["y"].iloc[0]) ** 2 + (first["x"] - g["x"].iloc[0]) ** 2).idxmin()
            gt = tr[tr["particle"] == first.loc[j, "particle"]].set_index("frame").loc[g["frame"]]
        e = np.c_[g["y"].to_numpy() - gt["y"].to_numpy(), g["x"].to_numpy() - gt["x"].to_numpy()]
        flags = g["flags"].astype(object).fillna("").astype(str)
        if measured_only:
            e[flags.str.contains("interpolated").to_numpy()] = np.nan
        if vouched_only:
            e[flags.str.contains("interpolated|disagree|position_outlier").to_numpy()] = np.nan
        e -= np.nanmean(e, axis=0)
        wrong += int(np.sum(np.hypot(*e.T) > 1.0))
        rms.append(float(np.sqrt(np.nanmean((e**2).sum(axis=1)))))
    own = float(np.nanmax(np.hypot(t["nonrigid_dy"], t["nonrigid_dx"]))) if len(t) else np.nan
    run = json.loads((out / "run.json").read_text())
    from xanestrack.result import particle_summary
    from xanestrack.results import read_results

    e50 = particle_summary(read_results(out))[["y0", "x0", "mean_e50_ev"]].to_numpy()
    return dict(
        n=len(rms),
        rms=rms,
        wrong=wrong,
        flagged=int(t["flags"].notna().sum()),
        own=own,
        e50=e50,
        notes=run.get("input_notes", []) + run.get("notes", []),
    )


def _e50_change(s, base) -> float:
    """Largest |mean E50 - the unchanged scene's| over the particles (paired by their first position; the
    scenes moved from their first frame on move their particles by less than their spacing)."""
    b = base["e50"]
    d = [abs(e - b[np.argmin(np.hypot(b[:, 0] - y, b[:, 1] - x)), 2]) for y, x, e in s["e50"]]
    return float(np.nanmax(d)) if d else np.nan


def _e50_changes(s, base) -> str:
    """Each particle's mean E50 less the unchanged scene's (paired as in :func:`_e50_change`), by radius."""
    b = base["e50"]
    d = [e - b[np.argmin(np.hypot(b[:, 0] - y, b[:, 1] - x)), 2] for y, x, e in s["e50"]]
    return " ".join(f"{v:+.2f}" for v in d)


BASE = {}


def _line(name, s, keys=()):
    notes = [n for n in s["notes"] if any(k in n for k in keys)]
    de = _e50_change(s, BASE["clean"]) if "clean" in BASE else 0.0
    return (
        f"| {name} | {s['n']} | {min(s['rms']):.3f}-{max(s['rms']):.3f} | {s['flagged']} | {s['own']:.2f} | {de:.2f} | "
        + ("; ".join(n[:110] for n in notes) or "-")
        + " |"
    )


def _with_and_without(d, args, flag, name, truth, keys=(), **score):
    """``xanestrack run`` on ``args`` as it is and with ``flag``; a table line for each."""
    for extra in ([], [flag]):
        out = d / f"r{len(extra)}"
        _cli("run", *args, "--out", out, *extra)
        print(_line(name + (f" {flag}" if extra else ""), _score(out, truth, **score), keys))


def _write_fxi(path, counts, flats, dark, energies_kev):
    import h5py

    with h5py.File(path, "w") as f:
        f["img_xanes"], f["img_bkg"], f["img_dark"], f["X_eng"] = counts, flats, dark, energies_kev


def _write_od_tiff(folder, name, od, energies):
    import tifffile

    tifffile.imwrite(folder / f"{name}.tif", od.astype(np.float32))
    np.savetxt(folder / f"{name}_e.txt", energies)
    return [folder / f"{name}.tif", "--energies", folder / f"{name}_e.txt", "--values", "od"]


def _transform(od, matrices):
    """Each frame moved by ``out(p) = in(M_k (p - c) + c)`` (about the frame centre), cubic."""
    from scipy import ndimage

    c = (np.array(od.shape[1:]) - 1) / 2
    out = np.empty_like(od)
    for k, m in enumerate(matrices):
        out[k] = ndimage.affine_transform(od[k], m, offset=c - m @ c, order=3, mode="nearest")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", nargs="+", default=TRIALS, choices=TRIALS)
    ap.add_argument("--keep", default=None, help="keep the scans and runs in this folder")
    a = ap.parse_args(argv)
    import h5py
    import pandas as pd

    from xanestrack.io import read_stack

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        _cli("synth", root / "scene", "--seed", a.seed)
        src = root / "scene" / "stack.h5"
        truth = pd.read_csv(root / "scene" / "truth_positions.csv")
        with h5py.File(src, "r") as f:
            raw = {k: f[k][()] for k in f}
        clean = read_stack(src, zingers=False)
        od, e = clean.od, clean.energies_ev
        c = (np.array(od.shape[1:]) - 1) / 2
        t = _cli("run", src, "--out", root / "r_clean")
        base = _score(root / "r_clean", truth)
        print(
            f"\nthe unchanged scene: {base['n']} particles, {min(base['rms']):.3f}-{max(base['rms']):.3f} px, run {t:.1f} s\n"
        )
        print(
            "| trial | particles | RMS px | frames flagged | largest own motion px | largest E50 change eV | notes on it |\n"
            "|---|---|---|---|---|---|---|"
        )
        print(_line("unchanged", base))
        BASE["clean"] = base
        rng = np.random.default_rng(0)
        for trial in a.trials:
            d = root / trial
            d.mkdir(exist_ok=True)
            if trial == "zingers":
                counts = raw["img_xanes"].astype(np.float64)
                for k in range(len(counts)):
                    for _ in range(rng.integers(30, 80)):
                        y, x, s = (
                            rng.integers(0, counts.shape[1] - 1),
                            rng.integers(0, counts.shape[2] - 1),
                            rng.integers(1, 3),
                        )
                        counts[k, y : y + s, x : x + s] *= rng.uniform(3, 20)
                _write_fxi(
                    d / "s.h5",
                    np.clip(counts, 0, 65534).astype(np.uint16),
                    raw["img_bkg"],
                    raw["img_dark"],
                    raw["X_eng"],
                )
                _with_and_without(d, [d / "s.h5"], "--no-zingers", "zingers", truth, ["zinger"])
            elif trial == "defects":
                counts = raw["img_xanes"].astype(np.float64)
                flats = raw["img_bkg"].astype(np.float64)
                dark = float(np.mean(raw["img_dark"]))
                counts[:, :, 200] = flats[:, :, 200] = dark  # a dead column: dead in the flats as well
                counts[:, 300, :] = dark + 1.3 * (counts[:, 300, :] - dark)  # a hot row
                hot = rng.integers(2, np.array(counts.shape[1:]) - 2, (200, 2))
                counts[:, hot[:, 0], hot[:, 1]] += rng.uniform(500, 5000, 200)
                _write_fxi(
                    d / "s.h5",
                    np.clip(counts, 0, 65534).astype(np.uint16),
                    np.clip(flats, 0, 65534).astype(np.uint16),
                    raw["img_dark"],
                    raw["X_eng"],
                )
                _with_and_without(
                    d,
                    [d / "s.h5"],
                    "--no-zingers",
                    "dead column, hot row, 200 hot pixels",
                    truth,
                    ["defective", "dead detector"],
                )
            elif trial == "flat_pattern":
                from scipy import ndimage

                for draw in (5, 6):  # two patterns, each of its own generator
                    pattern = ndimage.gaussian_filter(
                        np.random.default_rng(draw).normal(size=raw["img_xanes"].shape[1:]), 4.0
                    )
                    pattern *= 0.05 / pattern.std()
                    dark = float(np.mean(raw["img_dark"]))
                    counts = (raw["img_xanes"] - dark) * (1 + pattern) + dark
                    _write_fxi(
                        d / f"s{draw}.h5",
                        np.clip(counts, 0, 65534).astype(np.uint16),
                        raw["img_bkg"],
                        raw["img_dark"],
                        raw["X_eng"],
                    )
                    _cli("run", d / f"s{draw}.h5", "--out", d / f"r{draw}")
                    print(
                        _line(
                            f"a fixed 5 % pattern not in the flats (draw {draw})",
                            _score(d / f"r{draw}", truth),
                            ["stayed put"],
                        )
                    )
            elif trial == "few_energies":
                idx = np.r_[0:40:8, 40:100:5, 100:143:10]
                args = _write_od_tiff(d, "s", od[idx], e[idx])
                _with_and_without(
                    d, args, "--no-smooth-tracks", f"{len(idx)} energies", truth, ["smoothed"], frames=idx
                )
            elif trial == "descending":
                _write_fxi(
                    d / "s.h5", raw["img_xanes"][::-1], raw["img_bkg"][::-1], raw["img_dark"], raw["X_eng"][::-1]
                )
                _cli("run", d / "s.h5", "--out", d / "r")
                same = (d / "r" / "tracks.csv").read_bytes() == (root / "r_clean" / "tracks.csv").read_bytes()
                print(
                    _line(
                        f"descending (tracks.csv {'identical' if same else 'DIFFERENT'})",
                        _score(d / "r", truth),
                        ["high to low"],
                    )
                )
            elif trial == "no_beam":
                counts = raw["img_xanes"].copy()
                counts[70] = 0
                _write_fxi(d / "s.h5", counts, raw["img_bkg"], raw["img_dark"], raw["X_eng"])
                _cli("run", d / "s.h5", "--out", d / "r")
                print(_line("no beam in frame 70", _score(d / "r", truth), ["no particle measured", "transmission"]))
            elif trial == "nan_frame":
                bad = od.copy()
                bad[50] = np.nan
                _cli("run", *_write_od_tiff(d, "s", bad, e), "--out", d / "r")
                print(_line("frame 50 all NaN", _score(d / "r", truth), ["NaN"]))
            elif trial == "beam_changes":
                # the beam's intensity changing from frame to frame where the flats do not see it: every
                # frame's optical density offset by its own constant (sd 0.03)
                drift = od + rng.normal(0, 0.03, len(od)).astype(np.float32)[:, None, None]
                _cli("run", *_write_od_tiff(d, "s", drift, e), "--out", d / "r")
                print(_line("beam changes not in the flats (OD offsets, sd 0.03)", _score(d / "r", truth)))
            elif trial == "stage_jump":
                dy, dx = 37, -29
                moved = od.copy()
                for k in range(80, len(od)):
                    g = np.full_like(od[k], np.median(od[k]))
                    g[dy:, :dx] = od[k, :-dy, -dx:]
                    moved[k] = g
                _cli("run", *_write_od_tiff(d, "s", moved, e), "--out", d / "r")
                shift = lambda f, y, x, dy=dy, dx=dx: (y + dy * (f >= 80), x + dx * (f >= 80))  # noqa: E731
                print(_line("stage jump (37, -29) px at frame 80", _score(d / "r", truth, move=shift)))
            elif trial == "prealigned":
                # the scan as another tool aligned it: every frame moved back by its common shift to the
                # nearest pixel (the median of the particles' true displacements), what it shifted in filled
                sh = np.round(truth.groupby("frame")[["dy", "dx"]].median().to_numpy()).astype(int)
                for fill in (0.0, np.nan):
                    moved = np.full_like(od, fill)
                    for k, (dy, dx) in enumerate(-sh):
                        ny, nx = od.shape[1:]
                        moved[k, max(dy, 0) : ny + min(dy, 0), max(dx, 0) : nx + min(dx, 0)] = od[
                            k, max(-dy, 0) : ny + min(-dy, 0), max(-dx, 0) : nx + min(-dx, 0)
                        ]
                    name = "zeros" if fill == 0 else "nan"
                    _cli("run", *_write_od_tiff(d, name, moved, e), "--out", d / f"r_{name}")
                    back = lambda f, y, x, sh=sh: (y - sh[f, 0], x - sh[f, 1])  # noqa: E731
                    print(
                        _line(
                            f"aligned upstream to whole pixels, shifted-in bands {name}",
                            _score(d / f"r_{name}", truth, move=back),
                            ["NaN", "zinger"],
                        )
                    )
            elif trial == "drift":
                from scipy import ndimage

                def creeping(dy, dx):
                    """Each frame moved by (dy, dx)[k], cubic; the bare field (the frame's median) comes in behind."""
                    return np.stack(
                        [
                            ndimage.shift(od[k], (dy[k], dx[k]), order=3, mode="constant", cval=float(np.median(od[k])))
                            for k in range(len(od))
                        ]
                    )

                for whole in (False, True):
                    dy, dx = np.linspace(0, 50, len(od)), np.linspace(0, -70, len(od))
                    if whole:  # as frames arrive from an upstream alignment in whole pixels
                        dy, dx = np.round(dy), np.round(dx)
                    out = d / f"r{int(whole)}"
                    _cli("run", *_write_od_tiff(d, "s", creeping(dy, dx), e), "--out", out)
                    creep = lambda f, y, x, dy=dy, dx=dx: (y + dy[f], x + dx[f])  # noqa: E731
                    name = "drift (+50, -70) px across the scan" + (", in whole pixels" if whole else "")
                    print(_line(name, _score(out, truth, move=creep, measured_only=True)))
                # the other way: the scan ends where the unchanged one is, particles enter the field
                dy, dx = np.linspace(-50, 0, len(od)), np.linspace(70, 0, len(od))
                _cli("run", *_write_od_tiff(d, "s", creeping(dy, dx), e), "--out", d / "r2")
                creep = lambda f, y, x, dy=dy, dx=dx: (y + dy[f], x + dx[f])  # noqa: E731
                s = _score(d / "r2", truth, move=creep, vouched_only=True)
                # first positions back on the unchanged field's, to pair the E50s
                s["e50"] = s["e50"] - np.array([dy[0], dx[0], 0.0])
                print(
                    _line("drift (-50, +70) px to the unchanged field (particles enter; frames vouched for)", s),
                    "frames vouched for > 1 px:",
                    s["wrong"],
                )
            elif trial == "rotation":
                ang = np.deg2rad(np.linspace(0, 0.8, len(od)))
                turned = _transform(od, [np.array([[np.cos(t_), np.sin(t_)], [-np.sin(t_), np.cos(t_)]]) for t_ in ang])
                args = _write_od_tiff(d, "s", turned, e)

                def turn(f, y, x, ang=ang):
                    a_ = ang[f]
                    py, px = y - c[0], x - c[1]
                    return np.cos(a_) * py - np.sin(a_) * px + c[0], np.sin(a_) * py + np.cos(a_) * px + c[1]

                _with_and_without(d, args, "--rotation", "turned 0.8 deg", truth, move=turn)
            elif trial == "focus":
                from scipy import ndimage

                for top in (1.0, 2.5, "V"):
                    # "V": a focus set mid-scan, drifting out both ways (2 px sd at both ends, none in the middle)
                    sd = 2.0 * np.abs(np.linspace(-1, 1, len(od))) if top == "V" else np.linspace(0, top, len(od))
                    blurred = np.stack([ndimage.gaussian_filter(od[k], sd[k]) for k in range(len(od))])
                    args = _write_od_tiff(d, "s", blurred, e)
                    for extra in ([], ["--no-match-resolution"]):
                        out = d / f"r{top}_{len(extra)}"
                        _cli("run", *args, "--out", out, *extra)
                        s = _score(out, truth)
                        what = "2 -> 0 -> 2 px sd" if top == "V" else f"0 -> {top:g} px sd"
                        print(_line(f"blurred by {what} across the scan {' '.join(extra)}", s, ["resolution"]))
                        print("  mean E50 - the unchanged scene's, per particle (eV):", _e50_changes(s, BASE["clean"]))
                # what the correction can at best reach: every frame at the coarsest resolution
                for top in (2.5, 2.0):
                    blurred = np.stack([ndimage.gaussian_filter(f, top) for f in od])
                    _cli("run", *_write_od_tiff(d, "s", blurred, e), "--out", d / f"u{top:g}")
                    s = _score(d / f"u{top:g}", truth)
                    print(_line(f"every frame blurred by {top:g} px sd", s, ["resolution"]))
                    print("  mean E50 - the unchanged scene's, per particle (eV):", _e50_changes(s, BASE["clean"]))
            elif trial == "non_square":
                x0 = 80
                _cli("run", *_write_od_tiff(d, "s", od[:, :, x0 : x0 + 300], e), "--out", d / "r")
                cut = lambda f, y, x, x0=x0: (y, x - x0)  # noqa: E731
                s = _score(d / "r", truth, move=cut, vouched_only=True)
                s["e50"] = s["e50"] + np.array([0.0, x0, 0.0])  # back on the unchanged field, to pair the E50s
                print(_line("cut to 460 x 300 px", s), "frames vouched for > 1 px:", s["wrong"])
            elif trial == "od_ramp":
                ramp = np.linspace(0, 1, od.shape[2], dtype=np.float32)[None, None, :]
                _cli("run", *_write_od_tiff(d, "s", od + ramp, e), "--out", d / "r")
                print(_line("OD growing 0 -> 1 across the frame", _score(d / "r", truth)))
            elif trial == "other_edge":
                _cli("run", *_write_od_tiff(d, "s", od, e - 624.0), "--out", d / "r")
                s = _score(d / "r", truth)
                s["e50"] = s["e50"] + np.array([0.0, 0.0, 624.0])  # the departure from the relabelling
                print(_line("labelled 624 eV lower (a Co K-edge scan)", s, ["linear-combination"]))
            elif trial == "magnification":
                sc = 1 - 0.03 * (e - e[0]) / (e[-1] - e[0])
                args = _write_od_tiff(d, "s", _transform(od, [np.eye(2) / s for s in sc]), e)
                _cli("run", *args, "--out", d / "r")
                grow = lambda f, y, x, sc=sc: ((y - c[0]) * sc[f] + c[0], (x - c[1]) * sc[f] + c[1])  # noqa: E731
                print(_line("magnification -3 %", _score(d / "r", truth, move=grow)))


if __name__ == "__main__":
    main()
