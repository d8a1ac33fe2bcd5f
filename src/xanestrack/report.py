"""The HTML report: one self-contained file with the paper's figures for this run.

Built from an output folder (``results.h5``, ``tracks.csv``, ``run.json``...), so
``xanestrack report DIR`` rebuilds it at any time. Every figure is also written as
a PNG, and the data behind it as CSV, in ``DIR/figures/``.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_report"]

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>xanestrack report</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } .flag { color: #b00; } .note { color: #555; font-size: .9em; }
.particle { border-top: 1px dashed #bbb; padding-top: .5em; }
code { background: #f6f6f6; padding: 0 .2em; }
</style></head><body>
<h1>xanestrack report</h1>
<p>{{ summary }}</p>
<h2>Overview</h2>
<figure><img alt="overview" src="data:image/png;base64,{{ figs.overview }}">
<figcaption>First frame (rigidly aligned) with every tracked particle outlined and numbered; its trajectory
through the scan drawn magnified x{{ traj_scale }} and coloured by its largest non-rigid excursion
(see the colour bar); rejected objects are marked with the reason they were not tracked.</figcaption></figure>
<figure><img alt="chemistry overview" src="data:image/png;base64,{{ figs.chemistry }}">
<figcaption>Edge energy E(&mu;<sub>norm</sub> = 0.5) of every particle on one colour scale: higher energy = more oxidised Ni.</figcaption></figure>
{% if rejected %}<h3>Rejected objects</h3>{{ rejected }}{% endif %}
<h2>Motion</h2>
<figure><img alt="motion" src="data:image/png;base64,{{ figs.motion }}">
<figcaption>Cumulative displacement and velocity per particle, vertical (y) and horizontal (x); the common translation
(of the similarity fitted over all particles each frame) in thick black.</figcaption></figure>
{% if figs.common %}<figure><img alt="common motion" src="data:image/png;base64,{{ figs.common }}">
<figcaption>Common motion of each frame: a similarity (translation + isotropic scale) fitted robustly over the particles'
vouched positions. The scale is the magnification relative to the first frame (a zone plate's changes with the energy);
it moves every particle radially, so it is removed before non-rigid motion is measured.</figcaption></figure>{% endif %}
<figure><img alt="relative motion" src="data:image/png;base64,{{ figs.relative }}">
<figcaption>Non-rigid motion of each particle (its displacement less the rigid one) and motion relative to the reference particle {{ ref_particle }}.</figcaption></figure>
{{ ratios }}
<h2>Particles</h2>
<p>{{ vouch_text }}</p>
{{ vouch_table }}
{% for p in particles %}
<div class="particle"><h3>Particle {{ p.id }}</h3>
<figure><img alt="particle {{ p.id }}" src="data:image/png;base64,{{ p.fig }}">
<figcaption>Top: aligned sub-stack at selected energies. Bottom: differential map (last minus first frame) before and after
alignment, edge-energy map, mean normalised spectrum with pre-/post-edge fits.</figcaption></figure>
<p class="note">{{ p.info }}</p>
{% if p.flags %}<p class="flag">{{ p.flags }}</p>{% endif %}
</div>
{% endfor %}
<h2>Run</h2>
{{ run_table }}
<h3>Time per stage</h3>{{ timings }}
<h3>Input files</h3>{{ inputs }}
<h3>Parameters</h3><pre>{{ params }}</pre>
</body></html>
"""


def _png(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _table(df: pd.DataFrame, floatfmt="{:.3f}") -> str:
    if df is None or len(df) == 0:
        return "<p class='note'>none</p>"
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, escape=True)


def _outline(ax, mask, origin, **kw):
    if mask.any():
        ax.contour(np.arange(mask.shape[1]) + origin[1], np.arange(mask.shape[0]) + origin[0], mask.astype(float), levels=[0.5], **kw)


def write_report(folder, *, result=None) -> Path:
    """Write ``report.html`` and ``figures/`` into an output folder.

    Parameters
    ----------
    folder : path
        A folder written by :func:`xanestrack.results.write_results`.
    result : PipelineResult, optional
        Unused except for speed in the future; the report is always built from the files.

    Returns
    -------
    Path of report.html.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from jinja2 import Environment

    from .results import read_results

    folder = Path(folder)
    res = read_results(folder)
    figdir = folder / "figures"
    figdir.mkdir(exist_ok=True)
    tracks = res["tracks"]
    parts = res["particles"]
    energies = res["energies_ev"]
    run = res["run"]
    figs = {}

    # ---- overview
    base = res.get("fused_first")
    if base is None:
        base = np.zeros(run.get("frame_shape", [100, 100]))
    fig, ax = plt.subplots(figsize=(8, 8 * base.shape[0] / base.shape[1]))
    lo, hi = np.nanpercentile(base, [1, 99.5])
    ax.imshow(base, cmap="gray", vmin=lo, vmax=hi)
    summ = res.get("motion_summary")
    maxnr = summ.set_index("particle")["max_nonrigid_displacement"] if summ is not None and len(summ) else pd.Series(dtype=float)
    vmax_nr = max(float(maxnr.max()) if len(maxnr) else 1.0, 1e-3)
    cmap = plt.get_cmap("plasma")
    scale = 5
    rows = []
    for p in parts:
        pid = int(p["particle"])
        _outline(ax, p["mask"], (p["origin_y"], p["origin_x"]), colors="cyan", linewidths=1.0)
        pos = p["positions"]
        c0 = pos[0]
        traj = c0 + scale * (pos - c0)
        col = cmap(float(maxnr.get(pid, 0)) / vmax_nr)
        ax.plot(traj[:, 1], traj[:, 0], "-", color=col, lw=1.2)
        ax.text(c0[1] + p["radius_px"] * 0.8, c0[0] - p["radius_px"] * 0.8, str(pid), color="yellow", fontsize=12, weight="bold")
        rows.append((pid, c0[0], c0[1], p["radius_px"], float(maxnr.get(pid, np.nan))))
    rej = res.get("rejected")
    if rej is not None and len(rej):
        # fragments of tracked particles (faint frames) are not separate objects: hide them
        inside = np.zeros(len(rej), bool)
        for p in parts:
            m = p["mask"]
            yy = np.round(rej["y"].to_numpy() - p["origin_y"]).astype(int)
            xx = np.round(rej["x"].to_numpy() - p["origin_x"]).astype(int)
            ok = (yy >= 0) & (yy < m.shape[0]) & (xx >= 0) & (xx < m.shape[1])
            inside[ok] |= m[yy[ok], xx[ok]]
        rej = rej[~inside].reset_index(drop=True)
        for _, r in rej.iterrows():
            ax.plot(r["x"], r["y"], "x", color="red", ms=7)
            ax.text(r["x"] + 4, r["y"] + 4, r["reason"].replace("_", " "), color="red", fontsize=7)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, vmax_nr))
    fig.colorbar(sm, ax=ax, fraction=0.04, label="max non-rigid displacement (px)")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    pd.DataFrame(rows, columns=["particle", "y", "x", "radius_px", "max_nonrigid_px"]).to_csv(figdir / "overview.csv", index=False)
    figs["overview"] = _png(fig, figdir / "overview.png")

    # ---- chemistry overview: edge maps on one colour scale
    allv = np.concatenate([p["edge_e50"][np.isfinite(p["edge_e50"])] for p in parts]) if parts else np.array([])
    if allv.size:
        elo, ehi = np.percentile(allv, [2, 98])
    else:
        elo, ehi = 8330.0, 8350.0
    fig, ax = plt.subplots(figsize=(8, 8 * base.shape[0] / base.shape[1]))
    ax.imshow(base, cmap="gray", vmin=lo, vmax=hi, alpha=0.6)
    im = None
    for p in parts:
        m = p["edge_e50"]
        h, w = m.shape
        oy, ox = p["origin_y"], p["origin_x"]
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=elo, vmax=ehi, extent=(ox - 0.5, ox + w - 0.5, oy + h - 0.5, oy - 0.5))
        ax.text(ox + w, oy, str(int(p["particle"])), color="black", fontsize=11, weight="bold")
        np.savetxt(figdir / f"particle_{int(p['particle']):03d}_edge_e50.csv", m, delimiter=",", fmt="%.3f", header=f"E50 map (eV), pixel [0,0] at frame-0 (y, x) = ({oy}, {ox})")
    ax.set_xlim(-0.5, base.shape[1] - 0.5)
    ax.set_ylim(base.shape[0] - 0.5, -0.5)
    if im is not None:
        fig.colorbar(im, ax=ax, fraction=0.04, label="edge energy E(mu_norm = 0.5) (eV)")
    figs["chemistry"] = _png(fig, figdir / "chemistry.png")

    # ---- motion
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    cols = [("dy", "vertical displacement (px)"), ("dx", "horizontal displacement (px)"), ("vy", "vertical velocity (px/frame)"), ("vx", "horizontal velocity (px/frame)")]
    for ax, (c, label) in zip(axes.ravel(), cols):
        if c in tracks:
            for pid, g in tracks.groupby("particle"):
                ax.plot(g["frame"], g[c], lw=1, label=f"{pid}")
            rc = ("common_dy", "common_dx") if "common_dy" in tracks else ("rigid_dy", "rigid_dx")
            rig = tracks.groupby("frame")[list(rc)].first()
            rig = rig - rig.iloc[0]
            if c in ("dy", "dx"):
                ax.plot(rig.index, rig[rc[0] if c == "dy" else rc[1]], "k-", lw=2.5, label="common")
            else:
                r = np.gradient(rig[rc[0] if c == "vy" else rc[1]].to_numpy(), rig.index.to_numpy()) if len(rig) > 1 else np.zeros(len(rig))
                ax.plot(rig.index, r, "k-", lw=2.5, label="common")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1, 0].set_xlabel("frame")
    axes[1, 1].set_xlabel("frame")
    axes[0, 1].legend(fontsize=7, ncol=2, title="particle")
    figs["motion"] = _png(fig, figdir / "motion.png")
    keep = [c for c in ["particle", "frame", "energy_ev", "y", "x", "dy", "dx", "vy", "vx", "ay", "ax", "rigid_dy", "rigid_dx", "nonrigid_dy", "nonrigid_dx", "rel_dy", "rel_dx"] if c in tracks]
    tracks[keep].to_csv(figdir / "motion.csv", index=False, float_format="%.4f")

    figs["common"] = ""
    if "common_scale" in tracks and len(tracks):
        cm = tracks.groupby("frame")[["energy_ev", "common_dy", "common_dx", "common_scale"]].first().reset_index()
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        axes[0].plot(cm["frame"], (cm["common_scale"] - 1) * 100, "k.-", ms=3)
        axes[0].set_xlabel("frame")
        axes[0].set_ylabel("magnification change (%)")
        axes[0].grid(alpha=0.3)
        axes[1].plot(cm["frame"], cm["common_dy"], label="dy")
        axes[1].plot(cm["frame"], cm["common_dx"], label="dx")
        axes[1].set_xlabel("frame")
        axes[1].set_ylabel("common translation (px)")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
        figs["common"] = _png(fig, figdir / "common_motion.png")
        cm.to_csv(figdir / "common_motion.csv", index=False, float_format="%.6f")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for pid, g in tracks.groupby("particle"):
        if "nonrigid_dy" in g:
            axes[0].plot(g["nonrigid_dx"], g["nonrigid_dy"], lw=1, label=str(pid))
            axes[1].plot(g["frame"], np.hypot(g["rel_dy"], g["rel_dx"]), lw=1, label=str(pid))
    axes[0].invert_yaxis()
    axes[0].set_xlabel("non-rigid dx (px)")
    axes[0].set_ylabel("non-rigid dy (px)")
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("|displacement relative to reference| (px)")
    axes[1].legend(fontsize=7, ncol=2, title="particle")
    figs["relative"] = _png(fig, figdir / "relative_motion.png")

    # ---- particles
    pblocks = []
    vouch_rows = []
    n_e = len(energies)
    sel = np.unique(np.linspace(0, n_e - 1, min(8, n_e)).round().astype(int))
    for p in parts:
        pid = int(p["particle"])
        al = p["aligned"]
        fig = plt.figure(figsize=(12, 5.6))
        gs = fig.add_gridspec(2, max(len(sel), 4), height_ratios=[1, 1.4])
        vlo, vhi = np.nanpercentile(al[np.isfinite(al)], [1, 99.5]) if np.isfinite(al).any() else (0, 1)
        for j, k in enumerate(sel):
            ax = fig.add_subplot(gs[0, j])
            ax.imshow(al[k], cmap="gray", vmin=vlo, vmax=vhi)
            ax.set_title(f"{energies[k]:.1f} eV", fontsize=8)
            ax.axis("off")
        ncol = max(len(sel), 4)
        w = ncol // 4
        ax1 = fig.add_subplot(gs[1, 0:w])
        ax2 = fig.add_subplot(gs[1, w : 2 * w])
        ax3 = fig.add_subplot(gs[1, 2 * w : 3 * w])
        ax4 = fig.add_subplot(gs[1, 3 * w :])
        before = p["unaligned_ends"][1] - p["unaligned_ends"][0] if "unaligned_ends" in p else np.zeros_like(al[0])
        after = al[-1] - al[0]
        dl = np.nanpercentile(np.abs(before[np.isfinite(before)]), 99) if np.isfinite(before).any() else 1
        ax1.imshow(before, cmap="RdBu_r", vmin=-dl, vmax=dl)
        ax1.set_title("last - first, before", fontsize=9)
        ax2.imshow(after, cmap="RdBu_r", vmin=-dl, vmax=dl)
        ax2.set_title("last - first, aligned", fontsize=9)
        for a in (ax1, ax2):
            a.axis("off")
        im = ax3.imshow(np.ma.masked_invalid(p["edge_e50"]), cmap="viridis", vmin=elo, vmax=ehi)
        ax3.set_title("edge energy (eV)", fontsize=9)
        ax3.axis("off")
        fig.colorbar(im, ax=ax3, fraction=0.046)
        ms = p["mean_spectrum"]
        ax4.plot(energies, ms, ".", ms=3, color="C0", label="mean OD")
        if np.isfinite(p["pre_edge"]).any():
            ax4.plot(energies, p["pre_edge"], "--", color="C1", lw=1, label="pre-edge fit")
            ax4.plot(energies, p["post_edge"], "--", color="C2", lw=1, label="post-edge fit")
            ax5 = ax4.twinx()
            ax5.plot(energies, p["mean_norm"], "-", color="k", lw=1, label="normalised")
            ax5.set_ylabel("normalised", fontsize=8)
        ax4.set_xlabel("energy (eV)", fontsize=8)
        ax4.set_ylabel("OD", fontsize=8)
        ax4.legend(fontsize=6, loc="upper left")
        fig.tight_layout()
        pd.DataFrame(dict(energy_ev=energies, mean_od=ms, mean_norm=p["mean_norm"], pre_edge=p["pre_edge"], post_edge=p["post_edge"])).to_csv(figdir / f"particle_{pid:03d}_spectrum.csv", index=False, float_format="%.5f")
        b64 = _png(fig, figdir / f"particle_{pid:03d}.png")
        g = tracks[tracks["particle"] == pid]
        flagged = g[g["flags"] != ""]
        flags = ""
        if len(flagged):
            counts = flagged["flags"].str.split("|").explode().value_counts()
            flags = "quality flags: " + ", ".join(f"{k} in {v} frames" for k, v in counts.items())
        e50 = p["edge_e50"]
        info = f"radius {p['radius_px']:.1f} px; E0 {p['e0_ev']:.1f} eV; mean edge energy {np.nanmean(e50):.2f} eV (spread {np.nanstd(e50):.2f} eV)" if np.isfinite(e50).any() else "no edge-energy map"
        notes = json.loads(p.get("notes", "[]")) if isinstance(p.get("notes"), str) else []
        if notes:
            info += "; " + "; ".join(notes)
        vouch = _vouch_row(g)
        if vouch is not None:
            vouch_rows.append(vouch)
            if vouch[1] == 0:
                flags = (flags + "; " if flags else "") + "not vouched for in any frame: the edge correlation and the centre of mass never agree"
            elif vouch[1] < vouch[2]:
                info += f"; vouched for in {vouch[1]} of {vouch[2]} frames (median agreement {vouch[3]:.2f} px)"
            else:
                info += f"; vouched for in every frame (median agreement {vouch[3]:.2f} px)"
        pblocks.append(dict(id=pid, fig=b64, info=html.escape(info), flags=html.escape(flags)))

    timings = pd.DataFrame(sorted(run.get("timings_s", {}).items()), columns=["stage", "seconds"])
    inputs = pd.DataFrame(sorted(run.get("input_checksums_sha256", {}).items()), columns=["file", "sha256"])
    if not len(inputs):
        inputs = pd.DataFrame({"input": run.get("inputs", [])})
    e = np.asarray(run.get("energies_ev", energies))
    run_table = pd.DataFrame(
        [
            ("xanestrack version", run.get("version")),
            ("command", run.get("command", "")),
            ("reader", run.get("reader", run.get("inputs", ""))),
            ("energies", f"{len(e)} from {e.min():.1f} to {e.max():.1f} eV" if len(e) else "none"),
            ("detector / segmenter", " / ".join(
                f"{run.get(k, 'classical')}" + (f" ({run[k + '_model']} model)" if run.get(k + "_model") else "") for k in ("detector", "segmenter")
            )),
            ("detection", _detection_text(run.get("parameters", {}).get("detect_every", 1))),
        ],
        columns=["", "value"],
    )
    ratios = res.get("motion_summary")
    ntr = len(parts)
    most = int(maxnr.idxmax()) if len(maxnr) else None
    summary = f"{ntr} particles tracked through {len(energies)} energies ({energies.min():.1f}-{energies.max():.1f} eV)."
    if most is not None:
        summary += f" Particle {most} moved most on its own ({maxnr.max():.2f} px beyond the rigid motion)."
    ref_particle = tracks.attrs.get("reference_particle", "")
    vt = pd.DataFrame(vouch_rows, columns=["particle", "vouched frames", "frames", "median agreement px", "max agreement px"])
    thr = run.get("parameters", {}).get("agreement_px", 0.5)
    vouch_text = (
        "Every position is measured twice, independently: by correlating the particle's outline (edge image) with a reference "
        f"frame and by the centre of mass of its segmented mask. A frame is vouched for when the two agree within {thr} px; "
        "frames that are not are flagged 'disagree' in tracks.csv and left out of the consensus mask."
    )
    if len(vt):
        bad = vt[vt["vouched frames"] == 0]["particle"].tolist()
        if bad:
            vouch_text += f" Not vouched for in any frame: particle{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}."
    env = Environment(autoescape=False)
    page = env.from_string(_TEMPLATE).render(
        summary=html.escape(summary),
        figs=figs,
        traj_scale=scale,
        rejected=_table(rej, "{:.1f}") if rej is not None and len(rej) else "",
        ratios=_table(ratios),
        particles=pblocks,
        vouch_text=html.escape(vouch_text),
        vouch_table=_table(vt, "{:.2f}") if len(vt) else "",
        ref_particle=ref_particle,
        run_table=run_table.to_html(index=False, border=0),
        timings=_table(timings, "{:.2f}"),
        inputs=inputs.to_html(index=False, border=0),
        params=html.escape(json.dumps(run.get("parameters", {}), indent=1)),
    )
    out = folder / "report.html"
    tmp = folder / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _vouch_row(g):
    """``(particle, vouched frames, frames, median, max agreement)`` of one particle's tracks rows."""
    if "agreement_px" not in g:
        return None
    flags = g["flags"].fillna("").astype(str)
    vouched = int((~flags.str.contains("disagree") & ~flags.str.contains("interpolated")).sum())
    a = g["agreement_px"].to_numpy(float)
    fin = np.isfinite(a)
    return (int(g["particle"].iloc[0]), vouched, int(len(g)), float(np.median(a[fin])) if fin.any() else np.nan, float(a[fin].max()) if fin.any() else np.nan)


def _detection_text(every) -> str:
    every = int(every)
    if every <= 1:
        return "in every frame"
    return f"on every {every}th frame and the last; the windows of the others placed by phase correlation"
