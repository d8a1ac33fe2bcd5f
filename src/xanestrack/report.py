"""The HTML report: one self-contained file with the paper's figures for one run (or a series).

Each figure is one small function that takes the result model
(:class:`~xanestrack.result.PipelineResult`) and returns a :class:`Figure`: an RGB
image array and the tables behind it. Images of data (frames, maps) are rendered
straight from the arrays with a colormap; the line plots are matplotlib figures
drawn once each. :func:`write_report` only assembles the figures into
``report.html`` and writes each as PNG, and its data as CSV, into ``figures/``.
``xanestrack report DIR`` rebuilds the same file from the output folder.
"""

from __future__ import annotations

import base64
import functools
import html
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .result import FRAME_FLAGS, e50_noise_and_spread, e50_withheld
from .svgplot import COLORS, SvgFigure, png_bytes

__all__ = [
    "Figure",
    "overview_figure",
    "chemistry_figure",
    "whiteline_figure",
    "edge_width_figure",
    "uncertainty_figure",
    "resolution_figure",
    "quality_table",
    "cluster_map_figure",
    "cluster_spectra_figure",
    "motion_figure",
    "particle_figure",
    "spectrum_figure",
    "vouching_table",
    "write_report",
    "series_figure",
    "write_series_report",
]

#: trajectories on the overview are drawn magnified by this factor
TRAJ_SCALE = 5
#: the overview's trajectory of a particle whose own motion was not measured (``max_nonrigid_px`` NaN): grey and
#: dashed, off the colour bar (it was drawn in the bar's 0 colour, as the best-measured particle)
UNMEASURED_COLOR = "#9a9a9a"
UNMEASURED_DASH = "4,3"
#: the overview's trajectory of a particle whose own motion is within the split's uncertainty and its noise
#: (``nonrigid_within_split``): its colour is an upper bound, drawn dotted
WITHIN_SPLIT_DASH = "1.5,2"
#: the motion figure's line styles, one per ten particles (the colours, ``COLORS``, repeat every ten: particles 0 and
#: 10 were drawn alike, with no other key)
MOTION_DASHES = (None, "6,3", "1.5,2", "6,2,1.5,2")
MOTION_DASH_WORDS = ("solid", "dashed", "dotted", "dash-dotted")
#: the run notes' words (:func:`xanestrack.motion_notes._split_notes`) where the magnification fitted to the particles
#: is not determined by them (one particle left out moves or drops it) or rests on too few particles to be tested:
#: panel (e) drew it as a clean curve and its caption as the zone plate's (a default scene with none in its truth:
#: 1.0 %, the notes "not determined", a particle truly fixed reported moving 1.27 px on its own)
SCALE_NOTE_START = "the magnification fitted to the particles ("
SCALE_NOTE_UNDETERMINED = ("is not determined by them", "too few particles to be tested")
#: panel (e)'s magnification line where it is not determined (:data:`SCALE_NOTE_UNDETERMINED`)
UNDETERMINED_SCALE_DASH = "5,3"


@dataclass
class Figure:
    """One figure of the report.

    Attributes
    ----------
    svg : str or None
        The figure as SVG text (vector line work and labels; raster data embedded as PNG).
    image : ndarray (h, w, 3) uint8 or None
        The raster part (a frame with outlines, a mosaic of maps), also written as PNG;
        a figure without ``svg`` is this image alone.
    tables : dict of str -> DataFrame
        The data behind it; written as ``figures/<name>.csv``.
    caption : str
        What the figure says of itself in the report, after its fixed caption: where its
        colour scale is clipped and how many pixels lie beyond, its scale bar, how its data
        differ from the stored arrays (plain text, escaped on the page).
    """

    svg: str | None = None
    image: np.ndarray | None = None
    tables: dict = field(default_factory=dict)
    caption: str = ""


# ---------------------------------------------------------------- rendering helpers
@functools.lru_cache(maxsize=16)
def _lut(cmap: str) -> np.ndarray:
    """The 256 RGB uint8 colours of a matplotlib colormap."""
    from matplotlib import colormaps

    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _colormap(values, cmap: str, vmin: float, vmax: float, *, bad=(255, 255, 255)) -> np.ndarray:
    """Values to RGB uint8 through a matplotlib colormap; NaN pixels get ``bad``."""
    v = np.asarray(values, float)
    span = vmax - vmin if vmax > vmin else 1.0
    lut = _lut(cmap)
    idx = np.nan_to_num(np.clip((v - vmin) / span, 0, 1) * 255, nan=0).round().astype(np.int64)
    out = lut[idx]
    out[~np.isfinite(v)] = bad
    return out


def _hex(cmap: str, t: float) -> str:
    from matplotlib import colormaps

    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in colormaps[cmap](float(np.clip(t, 0, 1)))[:3])


def _limits(values, lo=1.0, hi=99.5, default=(0.0, 1.0)):
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return default
    a, b = np.percentile(v, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a), float(a) + 1.0)


def _table_html(df, floatfmt="{:.3f}") -> str:
    if df is None or len(df) == 0:
        return "<p class='note'>none</p>"
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, escape=True, na_rep="–")


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    m = np.asarray(mask, bool)
    return m & ~ndimage.binary_erosion(m)


def _paste(canvas: np.ndarray, tile: np.ndarray, origin, where=None) -> None:
    """Paste ``tile`` (h, w[, 3]) into ``canvas`` at ``origin`` (clipped to the canvas)."""
    oy, ox = int(origin[0]), int(origin[1])
    h, w = tile.shape[:2]
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + h, canvas.shape[0]), min(ox + w, canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    sub = tile[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    if where is None:
        canvas[y0:y1, x0:x1] = sub
    else:
        wm = where[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        canvas[y0:y1, x0:x1][wm] = sub[wm]


def _base_image(result) -> np.ndarray:
    if result.fused is not None:
        return np.asarray(result.fused[0], float)
    return np.zeros(tuple(result.frame_shape) or (100, 100))


def _max_nonrigid(result) -> pd.Series:
    pr = result.peak_ratios
    if pr is None or not len(pr) or "max_nonrigid_displacement" not in pr:
        return pd.Series(dtype=float)
    return pr.set_index("particle")["max_nonrigid_displacement"]


def _own_motion_summary(result, maxnr: pd.Series) -> str:
    """The report summary's sentence on the particle that moved most on its own, saying where that is within its
    positions' noise (``nonrigid_at_noise`` of :func:`xanestrack.motion.peak_ratios`), or that no particle's own
    motion stands above its noise: "moved most on its own (0.33 px)" read as a measured motion on a faint scan."""
    pr = result.peak_ratios
    maxnr = maxnr.dropna()
    if not len(maxnr):
        return ""
    at = pd.Series(False, index=maxnr.index)
    if "nonrigid_at_noise" in pr:  # (folders written before it: every particle's own motion as measured)
        at = pr.set_index("particle")["nonrigid_at_noise"].reindex(maxnr.index).fillna(False).astype(bool)
    # no noise floor known (2-energy scans): not counted as standing above it, and said so
    unknown = pd.Series(_noise_unknown(pr), index=pr["particle"].to_numpy()).reindex(maxnr.index).fillna(False)
    unknown = unknown.astype(bool)
    if unknown.all():
        return (
            f" Particle {int(maxnr.idxmax())} moved most on its own as measured ({maxnr.max():.2f} px beyond the rigid "
            "motion, over its frames vouched for); no particle's positions' noise is known (too few frames), so "
            "whether any own motion stands above it is not known."
        )
    if (at | unknown).all():
        return (
            " No particle's own motion stands above its positions' noise (largest own displacements up to "
            f"{maxnr[at].max():.2f} px, each within what that noise alone reaches: the motion table"
            + (
                f"; noise not known for {', '.join(str(int(p)) for p in unknown[unknown].index)}"
                if unknown.any()
                else ""
            )
            + ")."
        )
    above = maxnr[~at & ~unknown]
    # where the positions do not determine the split into common and own motion (motion.common_motion_split), the
    # "moved most on its own" is relative to a common motion that one particle left out moves by that much
    from .motion import undetermined_split_px

    worst = undetermined_split_px(pr)
    return (
        f" Particle {int(above.idxmax())} moved most on its own ({above.max():.2f} px beyond the rigid motion, "
        "over its frames vouched for"
        + (
            f"; left out, within their positions' noise: {', '.join(str(int(p)) for p in at[at].index)}"
            if at.any()
            else ""
        )
        + (
            f"; left out, their positions' noise not known: {', '.join(str(int(p)) for p in unknown[unknown].index)}"
            if unknown.any()
            else ""
        )
        + (
            f"; the split into common and own motion is not determined by the particles: every own motion is "
            f"uncertain by {worst:.2f} px or more (the run notes)"
            if np.isfinite(worst)
            else ""
        )
        + ")."
    )


def _e50_limits(result):
    """The E50 colour scale of the report: the 2nd-98th percentiles of every particle's kept E50 pixels
    (:func:`_kept_e50`, as drawn)."""
    vals = [m[np.isfinite(m)] for m in (_kept_e50(p) for p in result.particles if "e50" in p.edge_maps)]
    allv = np.concatenate(vals) if vals else np.array([])
    return _limits(allv, 2, 98, default=(8330.0, 8350.0))


def _kept_e50(p) -> np.ndarray:
    """A particle's E50 map where its quality masks keep the pixel (``p.kept``), NaN elsewhere: what the E50
    figures draw and chemistry.csv's percentiles are over, as the whiteline and sigma figures. The rejected pixels
    were drawn and counted (a scene at 800 counts: 122 pixels with |E50 error| 0.35-0.82 eV in median, against
    0.19-0.26 eV kept; "of the 8684 pixels drawn" where the sigma figure drew 8562).

    All NaN for a particle whose mean E50 is withheld (:func:`xanestrack.result.e50_withheld`): its pixels
    measured are a biased choice, not the particle, so they are not drawn and do not set the colour scale (a
    stress-all scene, seed 2, 256 px, 60 energies, 5 particles: about 290 pixels of one of them, 88 % of its mask in a
    gap of frames left out, were drawn and gave chemistry.csv a median 1.25 eV below its true one).
    """
    if e50_withheld(p):
        return np.full(np.shape(p.edge_maps["e50"]), np.nan)
    return np.where(p.kept, p.edge_maps["e50"], np.nan)


def _withheld_sentence(particles) -> str:
    """The caption's sentence naming the particles whose E50 is not drawn, and why; ``""`` where none."""
    why = [(p.particle, e50_withheld(p)) for p in particles]
    why = [(pid, w) for pid, w in why if w]
    if not why:
        return ""
    who = "; ".join(f"particle {pid} ({w})" for pid, w in why)
    return f"Not drawn, {'their' if len(why) > 1 else 'its'} mean E50 withheld as in the particles' table: {who}."


def _unmapped_sentence(particles) -> str:
    """The caption's sentence naming the particles numbered on the overview with no E50 drawn for want of a map (no
    XANES, or no pixel the quality masks keep), not withheld (:func:`_withheld_sentence` names those); ``""`` where
    none. A probe's crowded scene drew particle 6 grey under its number, the caption saying "every particle"."""
    ids = [
        p.particle
        for p in particles
        if "e50" not in (p.edge_maps or {}) or (not e50_withheld(p) and not np.isfinite(_kept_e50(p)).any())
    ]
    if not ids:
        return ""
    who = ", ".join(str(i) for i in ids)
    return (
        f"No edge-energy map for particle{'s' if len(ids) > 1 else ''} {who} (no XANES, or no pixel the quality masks "
        "keep: each particle's notes say why); numbered, not coloured."
    )


def _outside_sentence(particles, shape) -> str:
    """The caption's sentence naming the particles whose mask lies, wholly or in part, outside the first frame's
    field the maps are drawn over (a particle that entered the field later: its window is placed where it was in
    frame 0, filled from the common motion); ``""`` where none. A probe's particle entering after a 40-px stage
    jump was read whole, and left out of the chemistry figure without a word (2 of 3 particles drawn)."""
    out, part = [], []
    for p in particles:
        mask = np.asarray(getattr(p, "mask", np.zeros((0, 0))), bool)
        if not mask.any():
            continue
        yy, xx = np.nonzero(mask)
        yy, xx = yy + int(p.origin[0]), xx + int(p.origin[1])
        inside = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        if not inside.any():
            out.append(p.particle)
        elif not inside.all():
            part.append(p.particle)
    said = []
    if out:
        said.append(f"particle{'s' if len(out) > 1 else ''} {', '.join(map(str, out))} not drawn")
    if part:
        said.append(f"particle{'s' if len(part) > 1 else ''} {', '.join(map(str, part))} drawn in part")
    if not said:
        return ""
    return (
        f"{'; '.join(said).capitalize()}: outside the first frame's field, where the maps are drawn (entering the "
        "field later); each particle's own figure and results.h5 hold its maps."
    )


#: FWHM of a Gaussian in units of its sigma (2 sqrt(2 ln 2)): how far the in-mask smoothing spreads a sharp front
_FWHM_PER_SIGMA = 2.3548


def _smoothing_sentence(options) -> str:
    """The chemistry caption's sentence on the smoothing inside each mask before the per-pixel XANES analysis
    (``PipelineOptions.xanes_smoothing``, ``--xanes-smoothing``): the maps' resolution at a chemistry front, which
    their sigma does not contain (a core-shell particle, synth seed 5: pixels within 2 px of the front off by up
    to 0.79 eV with sigma 0.08 eV at 1 px)."""
    s = float(getattr(options, "xanes_smoothing", 1.0))
    if s == 0:
        return "The maps are not smoothed (--xanes-smoothing 0)."
    return (
        f"The maps (E50, whiteline, fractions) are smoothed inside each mask with a Gaussian of {s:g} px (sigma): a "
        f"chemistry front is blurred over about {_FWHM_PER_SIGMA * s:.2g} px; the per-pixel sigma is the noise of "
        "the smoothed map, not the bias of that blur; --xanes-smoothing 0 for none."
    )


def _visible_rejected(result) -> pd.DataFrame:
    """Rejected objects, less the fragments of tracked particles (faint frames)."""
    rej = result.rejected
    if rej is None or not len(rej):
        return pd.DataFrame()
    inside = np.zeros(len(rej), bool)
    for p in result.particles:
        m = p.mask
        yy = np.round(rej["y"].to_numpy() - p.origin[0]).astype(int)
        xx = np.round(rej["x"].to_numpy() - p.origin[1]).astype(int)
        ok = (yy >= 0) & (yy < m.shape[0]) & (xx >= 0) & (xx < m.shape[1])
        inside[ok] |= m[yy[ok], xx[ok]]
    return rej[~inside].reset_index(drop=True)


def _frame_panel(rgb: np.ndarray, *, width: float = 640.0):
    """An :class:`SvgFigure` showing a frame at ``width`` px with room for a colour bar on the right."""
    h, w = rgb.shape[:2]
    pw = width - 150
    ph = pw * h / w
    fig = SvgFigure(width, ph + 50)
    ax = fig.axes(
        50, 8, pw, ph, xlabel="x (px)", ylabel="y (px)", xlim=(-0.5, w - 0.5), ylim=(-0.5, h - 0.5), invert_y=True
    )
    ax.image(rgb)
    return fig, ax, (50 + pw + 14, 8 + ph * 0.15, 14, ph * 0.7)


#: where a particle's number goes, relative to its centre, in units of its radius (y, x): top-right first
#: (the overview's place), then the other diagonals, then the sides; the same nearer the centre where
#: neighbours crowd round (:func:`_label_positions`)
_LABEL_OFFSETS = (
    (-0.8, 0.8),
    (-0.8, -0.8),
    (0.8, 0.8),
    (0.8, -0.8),
    (-1.13, 0.0),
    (0.0, 1.13),
    (1.13, 0.0),
    (0.0, -1.13),
)
_LABEL_SHRINK = (1.0, 0.6, 0.3)
#: a number's distance to the nearest other centre over its distance to its own, at least
LABEL_CLEARANCE = 1.5


def _label_positions(result) -> dict:
    """particle -> (y, x) frame-0 data coordinates of the centre of its number on the frame figures.

    From the particle's centre in the first frame, offset by about 0.8 of its radius up and
    right (:data:`_LABEL_OFFSETS`); where that place is not :data:`LABEL_CLEARANCE` times
    nearer its own centre than any other particle's, or lies outside the frame, the next
    offset, then the offsets shrunk towards the centre (:data:`_LABEL_SHRINK`), and last the
    centre itself. The numbers were drawn at each window's top-right corner: on a crowded
    scene half of them nearer another particle than their own. Every figure over the frame
    places the numbers here.
    """
    ps = result.particles
    if not ps:
        return {}
    centres = np.array(
        [
            p.positions[0] if np.isfinite(p.positions[0]).all() else np.asarray(p.origin) + np.array(p.mask.shape) / 2
            for p in ps
        ],
        float,
    )
    h, w = _base_image(result).shape[:2]
    owner = _mask_owners(ps, (h, w))
    out = {}
    for i, p in enumerate(ps):
        r = max(float(p.radius), 1.0) if np.isfinite(p.radius) else 5.0
        others = np.delete(centres, i, axis=0)
        place = centres[i]
        for shrink in _LABEL_SHRINK:
            for oy, ox in _LABEL_OFFSETS:
                pos = centres[i] + shrink * r * np.array([oy, ox])
                own = shrink * r * float(np.hypot(oy, ox))
                near = float(np.hypot(*(others - pos).T).min()) if len(others) else np.inf
                inside = -0.5 <= pos[0] <= h - 0.5 and -0.5 <= pos[1] <= w - 0.5
                if inside and near >= LABEL_CLEARANCE * own and not _on_other_mask(owner, pos, i):
                    place = pos
                    break
            else:
                continue
            break
        out[p.particle] = (float(place[0]), float(place[1]))
    return out


#: a number's place must be this far (frame px) from any other particle's mask (:func:`_label_positions`)
LABEL_MASK_MARGIN = 2


def _mask_owners(particles, shape) -> np.ndarray:
    """A frame-0 array of ``shape``: the index (in ``particles``) of the particle whose mask covers each pixel, -1
    where none (the first particle's where two overlap)."""
    owner = np.full(shape, -1, int)
    for i in reversed(range(len(particles))):
        p = particles[i]
        if p.mask is None or not np.size(p.mask):
            continue
        idx = np.full(np.shape(p.mask), i, int)
        _paste(owner, idx, p.origin, where=np.asarray(p.mask, bool))
    return owner


def _on_other_mask(owner: np.ndarray, pos, i: int) -> bool:
    """Whether a number centred at ``pos`` (y, x) lies on (within :data:`LABEL_MASK_MARGIN` px of) the mask of a
    particle other than the ``i``-th. The clearance against centres alone put a particle's number (its mask empty, its
    radius from one large detection) 110 px from its centre on another particle's bright inclusion, 176 px from that
    one's centre: "12" labelled a feature of particle 8 on every map of the real SSRL pair."""
    h, w = owner.shape
    y, x = int(round(pos[0])), int(round(pos[1]))
    m = LABEL_MASK_MARGIN
    near = owner[max(y - m, 0) : min(y + m + 1, h), max(x - m, 0) : min(x + m + 1, w)]
    return bool(((near >= 0) & (near != i)).any())


def _draw_labels(ax, result, *, color: str, size: int) -> None:
    """Each particle's number centred at :func:`_label_positions` (an axes over the frame, y down)."""
    xl = ax.xlim
    scale = ax.box[2] / (xl[1] - xl[0])  # screen px per data px
    pos = _label_positions(result)
    for p in result.particles:
        y, x = pos[p.particle]
        # the baseline 0.35 em below the centre (text-anchor middle centres it across)
        ax.text(x, y + 0.35 * size / scale, str(p.particle), color=color, size=size, weight="bold", anchor="middle")


def _value_text(v: float, span: float) -> str:
    """``v`` with as many decimals as a colour scale of ``span`` needs (1/50 of it)."""
    digits = max(0, int(np.ceil(-np.log10(span / 50.0)))) if span > 0 and np.isfinite(span) else 2
    return f"{v:.{digits}f}"


def _clip_marks(box, *, cmap: str, vmin: float, vmax: float, below: bool, above: bool) -> str:
    """SVG of the ends of a clipped colour bar ``box`` (x, y, w, h): a triangle in the end colour past
    each end that values lie beyond, labelled ``≤ vmin`` / ``≥ vmax``."""
    x, y, w, h = (float(v) for v in box)
    lo_text, hi_text = _value_text(vmin, vmax - vmin), _value_text(vmax, vmax - vmin)
    t = 8.0  # triangle height, screen px
    out = []
    if above:
        out.append(
            f'<path d="M{x:.1f},{y:.1f}L{x + w:.1f},{y:.1f}L{x + w / 2:.1f},{y - t:.1f}Z" fill="{_hex(cmap, 1.0)}" '
            f'stroke="#444"/><text x="{x:.1f}" y="{y - t - 3:.1f}" font-size="9">\u2265 {html.escape(hi_text)}</text>'
        )
    if below:
        out.append(
            f'<path d="M{x:.1f},{y + h:.1f}L{x + w:.1f},{y + h:.1f}L{x + w / 2:.1f},{y + h + t:.1f}Z" '
            f'fill="{_hex(cmap, 0.0)}" stroke="#444"/><text x="{x:.1f}" y="{y + h + t + 10:.1f}" '
            f'font-size="9">\u2264 {html.escape(lo_text)}</text>'
        )
    return "".join(out)


def _clipped_colorbar(fig, box, values, *, cmap: str, vmin: float, vmax: float, label: str, what: str) -> str:
    """A colour bar of ``cmap`` over ``[vmin, vmax]`` with its clipped ends marked; the caption's sentence.

    ``values`` are the pixels drawn (NaN ignored); ``what`` says how the range was chosen
    ("the 2nd-98th percentiles of the kept pixels"). Where no pixel is drawn the range is a default, and the
    caption says so (it quoted "the 2nd-98th percentiles ... of the 0 pixels drawn" for a scan with no E50).
    """
    fig.colorbar(*box, cmap=cmap, vmin=vmin, vmax=vmax, label=label)
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        span = vmax - vmin
        return (
            f"Nothing drawn: no pixel has a value (no particle's was measured: see the notes); the colour scale "
            f"{_value_text(vmin, span)} to {_value_text(vmax, span)} is a default."
        )
    n_lo, n_hi = int((v < vmin).sum()), int((v > vmax).sum())
    fig.extra.append(_clip_marks(box, cmap=cmap, vmin=vmin, vmax=vmax, below=n_lo > 0, above=n_hi > 0))
    span = vmax - vmin
    lo_t, hi_t = _value_text(vmin, span), _value_text(vmax, span)
    below = f"{n_lo} lie below it" + (f" (down to {_value_text(v.min(), span)})" if n_lo else "")
    above = f"{n_hi} above it" + (f" (up to {_value_text(v.max(), span)})" if n_hi else "")
    ends = ", drawn in the end colours (the triangles on the colour bar)" if n_lo or n_hi else ""
    return f"Colour scale {lo_t} to {hi_t}: {what}; of the {v.size} pixels drawn, {below} and {above}{ends}."


def _nice_length(target: float) -> float:
    """The 1, 2 or 5 x 10^k nearest ``target`` (> 0) on a log scale."""
    k = np.floor(np.log10(target))
    cands = np.array([1.0, 2.0, 5.0, 10.0]) * 10**k
    return float(cands[np.argmin(np.abs(np.log(cands / target)))])


def _scale_bar(ax, shape, pixel_size_um) -> str:
    """A scale bar of a round length near 1/5 of the frame's width, bottom right of an axes over a frame
    of ``shape`` (rows, cols); the caption's sentence. Nothing (and "") without a pixel size."""
    if pixel_size_um is None:
        return ""
    h, w = shape[:2]
    length_um = _nice_length(w * pixel_size_um / 5)
    n_px = length_um / pixel_size_um
    scale = ax.box[2] / (ax.xlim[1] - ax.xlim[0])
    margin = 0.04 * w
    x1 = w - 0.5 - margin
    x0, y = x1 - n_px, h - 0.5 - margin
    pad = 5 / scale
    # a white ground under the bar and its length, over any image
    ax.line([x0 - pad, x1 + pad], [y - 7 / scale] * 2, color="white", width=24)
    ax.line([x0, x1], [y, y], color="black", width=3)
    ax.text((x0 + x1) / 2, y - 5 / scale, f"{length_um:g} \u00b5m", color="black", size=10, anchor="middle")
    return f"Scale bar {length_um:g} \u00b5m ({n_px:.0f} px of {pixel_size_um:g} \u00b5m)."


# ---------------------------------------------------------------- figures
def overview_figure(result, *, pixel_size_um: float | None = None) -> Figure:
    """First frame (rigidly aligned) with every particle outlined, numbered, and its trajectory.

    Trajectories are magnified :data:`TRAJ_SCALE` times and coloured by the particle's
    largest non-rigid excursion (over its frames vouched for): grey and dashed where it was not
    measured, dotted where it is within the split's uncertainty (:func:`_trajectory_sentence`,
    which the caption gives); rejected objects are marked
    with their reason. With ``pixel_size_um`` (um per px) a scale bar. Numbers are placed
    by :func:`_label_positions`, as on every figure over the frame.
    Table ``overview``: particle, y, x, radius_px (its size: the equivalent radius of its masks,
    :attr:`xanestrack.result.ParticleResult.size_radius`), max_nonrigid_px.
    """
    base = _base_image(result)
    lo, hi = _limits(base)
    rgb = _colormap(base, "gray", lo, hi, bad=(0, 0, 0))
    for p in result.particles:
        edge = _outline(p.mask)
        _paste(rgb, np.broadcast_to(np.array([0, 255, 255], np.uint8), (*edge.shape, 3)), p.origin, where=edge)
    maxnr = _max_nonrigid(result)
    vmax = max(float(maxnr.max()) if len(maxnr) else 1.0, 1e-3)
    fig, ax, cbar = _frame_panel(rgb)
    within = _within_split(result)
    rows, unmeasured, upper = [], [], []
    for p in result.particles:
        c0 = p.positions[0]
        traj = c0 + TRAJ_SCALE * (p.positions - c0)
        nr = float(maxnr.get(p.particle, np.nan))
        if np.isnan(nr):  # not measured: off the colour bar, not its 0
            unmeasured.append(p.particle)
            ax.line(traj[:, 1], traj[:, 0], color=UNMEASURED_COLOR, width=1.2, dash=UNMEASURED_DASH)
        else:
            dotted = p.particle in within
            upper += [p.particle] if dotted else []
            ax.line(
                traj[:, 1],
                traj[:, 0],
                color=_hex("plasma", nr / vmax),
                width=1.2,
                dash=WITHIN_SPLIT_DASH if dotted else None,
            )
        rows.append((p.particle, c0[0], c0[1], p.size_radius, nr))
    _draw_labels(ax, result, color="yellow", size=13)
    rej = _visible_rejected(result)
    if len(rej):
        ax.points(rej["x"], rej["y"], color="red", r=3, marker="x")
        for _, r in rej.iterrows():
            ax.text(r["x"] + 4, r["y"] + 8, str(r["reason"]).replace("_", " "), color="red", size=8)
    fig.colorbar(*cbar, cmap="plasma", vmin=0, vmax=vmax, label="max non-rigid displacement (px)")
    caption = " ".join(
        c for c in (_trajectory_sentence(unmeasured, upper), _scale_bar(ax, rgb.shape, pixel_size_um)) if c
    )
    table = pd.DataFrame(rows, columns=["particle", "y", "x", "radius_px", "max_nonrigid_px"])
    return Figure(fig.to_svg(), rgb, {"overview": table}, caption)


def _within_split(result) -> set:
    """The particles whose own motion is within the split's uncertainty and their noise (``nonrigid_within_split`` of
    :func:`xanestrack.motion.peak_ratios`): they may not have moved on their own at all."""
    pr = result.peak_ratios
    if pr is None or not len(pr) or "nonrigid_within_split" not in pr:
        return set()
    return {int(q) for q in pr.loc[pr["nonrigid_within_split"].astype(bool), "particle"]}


def _trajectory_sentence(unmeasured, upper) -> str:
    """The overview caption's sentences on the trajectories not coloured as measured: grey dashed where the own motion
    was not measured (NaN; drawn in the colour bar's 0 before, as the best-measured particle), dotted where it is
    within the split's uncertainty and noise (the colour an upper bound: a particle truly fixed was painted 1.27 px)."""

    def names(pids):
        return ", ".join(str(int(q)) for q in pids)

    out = []
    if unmeasured:
        out.append(
            f"Grey, dashed: own motion not measured (no frame vouched for; max_nonrigid_px empty in overview.csv), not "
            f"0 px: particle{'s' if len(unmeasured) > 1 else ''} {names(unmeasured)}."
        )
    if upper:
        out.append(
            f"Dotted: own motion within the uncertainty of the split into common and own motion and the positions' "
            f"noise (the motion table: own motion within split and noise), the colour an upper bound; "
            f"{'they' if len(upper) > 1 else 'it'} may not have moved on {'their' if len(upper) > 1 else 'its'} own at "
            f"all: particle{'s' if len(upper) > 1 else ''} {names(upper)}."
        )
    return " ".join(out)


def chemistry_figure(result, *, pixel_size_um: float | None = None) -> Figure:
    """Edge energy E(mu_norm = 0.5) of every particle on one colour scale, over the first frame.

    Only the pixels the quality masks keep are drawn (:func:`_kept_e50`). The scale is the 2nd-98th
    percentiles of every particle's kept pixels (:func:`_e50_limits`); its clipped ends are marked on the
    colour bar and counted in the caption. With ``pixel_size_um`` a scale bar. A particle whose mean E50 is
    withheld (:func:`xanestrack.result.e50_withheld`) is not drawn (the frame shows there) and the caption
    names it and why: a figure taken into a paper without its caption then shows no E50 for it, where hatched or
    greyed colours would still read as values on the scale.
    Table ``chemistry``: per particle its origin, the number of kept pixels with an E50 and their 2/50/98
    percentiles (of the pixels as measured, each with its noise: they spread wider than the chemistry), and over
    the pixels of its mean E50 (its core pixels, as in the particles' table: :func:`xanestrack.result.e50_noise_and_spread`)
    their noise ``e50_noise_sigma_ev`` (the RMS of their standard errors from the spectra's noise,
    ``maps["e50_sigma_noise"]``) and ``e50_spread_beyond_noise_ev`` (their standard deviation less that noise,
    :func:`xanestrack.result.spread_beyond_noise`: what compares across scans of different counts), and
    ``withheld``: why its mean E50 is withheld (its percentiles and spreads then empty; ``n_pixels`` still counts
    the pixels measured), empty where it is not.
    The maps themselves are the ``particle_NNN_edge_e50`` tables of :func:`particle_figure`.
    """
    base = _base_image(result)
    lo, hi = _limits(base)
    rgb = (_colormap(base, "gray", lo, hi, bad=(0, 0, 0)).astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)
    elo, ehi = _e50_limits(result)
    rows, drawn = [], []
    for p in result.particles:
        m = _kept_e50(p)
        fin = np.isfinite(m)
        _paste(rgb, _colormap(m, "viridis", elo, ehi), p.origin, where=fin)
        drawn.append(m[fin])
        q = np.percentile(m[fin], [2, 50, 98]) if fin.any() else [np.nan] * 3
        # the percentiles are of noisy pixels (a uniform particle's 2nd-98th width 2.8 x the truth's at 5000 counts,
        # 4.9 x at 800): the pixels' noise and the spread beyond it beside them, to compare scans of other counts,
        # over the pixels of its mean E50 as in the particles' table (the rim's noise is 2-3 x the core's)
        noise, beyond = e50_noise_and_spread(p)
        why = e50_withheld(p)
        n = int(np.count_nonzero(p.kept & np.isfinite(p.edge_maps["e50"]))) if why else int(fin.sum())
        rows.append((p.particle, int(p.origin[0]), int(p.origin[1]), n, *q, noise, beyond, why))
    fig, ax, cbar = _frame_panel(rgb)
    _draw_labels(ax, result, color="black", size=12)
    caption = _clipped_colorbar(
        fig,
        cbar,
        np.concatenate(drawn) if drawn else [],
        cmap="viridis",
        vmin=elo,
        vmax=ehi,
        label="edge energy E(mu_norm = 0.5) (eV)",
        what="the 2nd-98th percentiles of every particle's E50 pixels that the quality masks keep (eV)",
    )
    caption = " ".join(
        c
        for c in (
            caption,
            _withheld_sentence(result.particles),
            _unmapped_sentence(result.particles),
            _outside_sentence(result.particles, rgb.shape),
            _smoothing_sentence(result.options),
            _scale_bar(ax, rgb.shape, pixel_size_um),
        )
        if c
    )
    table = pd.DataFrame(
        rows,
        columns=[
            "particle",
            "origin_y",
            "origin_x",
            "n_pixels",
            "e50_p2_ev",
            "e50_median_ev",
            "e50_p98_ev",
            "e50_noise_sigma_ev",
            "e50_spread_beyond_noise_ev",
            "withheld",
        ],
    )
    return Figure(fig.to_svg(), rgb, {"chemistry": table}, caption)


def _map_overview(
    result,
    maps: dict,
    cmap: str,
    lo: float,
    hi: float,
    label: str,
    *,
    what: str,
    pixel_size_um: float | None = None,
    pastel: bool = True,
):
    """Per-particle maps (particle -> (h, w) array) pasted over the first frame, with a colour bar.

    Returns the :class:`SvgFigure`, the raster and the caption's sentences (the colour bar's
    clipped ends, ``what`` saying how ``lo``/``hi`` were chosen; the scale bar). NaN pixels
    are left as the frame.
    """
    base = _base_image(result)
    blo, bhi = _limits(base)
    rgb = _colormap(base, "gray", blo, bhi, bad=(0, 0, 0))
    if pastel:
        rgb = (rgb.astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)
    drawn = []
    for p in result.particles:
        m = maps.get(p.particle)
        if m is None:
            continue
        m = np.asarray(m, float)
        where = np.isfinite(m) & p.mask
        _paste(rgb, _colormap(m, cmap, lo, hi), p.origin, where=where)
        drawn.append(m[where])
    fig, ax, cbar = _frame_panel(rgb)
    _draw_labels(ax, result, color="black", size=12)
    values = np.concatenate(drawn) if drawn else np.array([])
    caption = _clipped_colorbar(fig, cbar, values, cmap=cmap, vmin=lo, vmax=hi, label=label, what=what)
    caption = " ".join(
        c
        for c in (caption, _outside_sentence(result.particles, rgb.shape), _scale_bar(ax, rgb.shape, pixel_size_um))
        if c
    )
    return fig, rgb, caption


def whiteline_figure(result, *, pixel_size_um: float | None = None) -> Figure:
    """Fitted whiteline position of every particle on one colour scale, over the first frame.

    The position is the maximum of a peak model fitted per pixel
    (:func:`xanestrack.chemistry.whiteline.fit_whiteline`); pixels the quality masks reject
    are left out. Table ``whiteline``: per particle the median position and height over
    its kept pixels.
    """
    maps, rows = {}, []
    for p in result.particles:
        wl = p.edge_maps.get("whiteline")
        if wl is None:
            continue
        keep = p.kept
        m = np.where(keep, wl, np.nan)
        maps[p.particle] = m
        h = np.where(keep, p.maps.get("whiteline_height", np.full(p.mask.shape, np.nan)), np.nan)
        fin = np.isfinite(m)
        rows.append(
            (
                p.particle,
                int(fin.sum()),
                float(np.median(m[fin])) if fin.any() else np.nan,
                float(np.nanmedian(h[fin])) if fin.any() and np.isfinite(h[fin]).any() else np.nan,
            )
        )
    allv = np.concatenate([m[np.isfinite(m)] for m in maps.values()]) if maps else np.array([])
    lo, hi = _limits(allv, 2, 98, default=(8345.0, 8355.0))
    fig, rgb, caption = _map_overview(
        result,
        maps,
        "cividis",
        lo,
        hi,
        "whiteline position, fitted (eV)",
        what="the 2nd-98th percentiles of the kept pixels (eV)",
        pixel_size_um=pixel_size_um,
    )
    table = pd.DataFrame(rows, columns=["particle", "n_pixels", "whiteline_median_ev", "whiteline_height_median"])
    return Figure(fig.to_svg(), rgb, {"whiteline": table}, caption)


#: a particle's mean fraction of a reference within this many times its pixels' median standard error
#: (``fraction_sigma``) of 0 or 1 sits at the fit's bounds (flag ``at_bound`` of :func:`_fraction_means`): the
#: pixels' fits are held in [0, 1], so a pure phase's noise is cut on one side and its mean lies about 0.4 standard
#: errors inside (a normal cut at its mean: sigma / sqrt(2 pi)). Measured on a reduced two-phase scene (seed 4,
#: NiO and LiNiO2, 48 energies): the LiNiO2 particles' NiO fraction 0.006 against a median standard error of 0.015,
#: the NiO particles' LiNiO2 fraction 0.000 (the run note's fit of each mean spectrum, held to
#: :data:`xanestrack.chemistry.runnotes.BOUND_FRACTION`, put 3 of the 4 at the bounds, the fourth at 0.0012); a core-shell
#: particle 0.431 (0.019) and the default scene (seed 1) 0.167-0.458 (0.015-0.021) are not flagged
FRACTION_BOUND_SIGMAS = 1.0


def _fraction_means(result) -> pd.DataFrame:
    """Each particle's mean reference fractions over the pixels its mean E50 is taken over, with flags.

    Returns
    -------
    DataFrame, one row per particle: ``particle``, ``fraction_<reference>`` (the mean over
    :func:`xanestrack.result.fraction_pixels`: the trusted core pixels of ``mean_e50_ev`` less those flagged misfit;
    the references as the run
    fitted them, shipped or given), ``fraction_<reference>_sigma_median`` (the median over the same pixels of the
    pixels' standard errors, ``maps["fraction_sigma"]``: a pixel's, not the mean's, which is smaller, the noise
    averaging over the pixels), ``oxidised_fraction`` (that of the last reference, as
    :func:`xanestrack.result.particle_summary`) and ``fraction_flags``: ``|``-joined ``no_fit`` (no fraction: no
    references, or no XANES), ``withheld`` (fitted, but its E50 measured in too few of its core pixels: the
    means are NaN, :func:`xanestrack.result.fractions_withheld`), ``at_bound`` (a mean within
    :data:`FRACTION_BOUND_SIGMAS` of its ``sigma_median``, or :data:`xanestrack.chemistry.runnotes.BOUND_FRACTION` without
    one, of 0 or 1: the fit sits at its bounds, its standard error is one-sided there), ``misfit`` (the
    particle's note says the references do not describe its spectra, :data:`xanestrack.xanes.MISFIT_NOTE`) and
    ``misfit_region`` (the means leave out its core pixels flagged misfit: a region the references do not describe,
    :func:`xanestrack.result.fraction_pixels`; its note says how much) and ``frames_left_out`` (its XANES was
    normalised on fewer of the scan's energies, which move its fractions against a particle of its chemistry measured
    on all of them: its note says by how much, :data:`xanestrack.chemistry.normbias.FRAMES_FRACTIONS_WORDS`). The
    fractions of a particle without any are NaN (empty in a CSV), not 0.
    """
    from .chemistry.normbias import FRAMES_FRACTIONS_WORDS, FRAMES_NOTE_START
    from .chemistry.runnotes import BOUND_FRACTION
    from .result import core_pixels, fraction_pixels, fractions_withheld
    from .xanes import MISFIT_NOTE

    names = list(dict.fromkeys(str(n) for p in result.particles for n in (p.reference_names or ())))
    rows = []
    for p in result.particles:
        row = {"particle": int(p.particle), "oxidised_fraction": np.nan}
        fr = None if p.fractions is None or not len(p.reference_names) else np.asarray(p.fractions, float)
        sig = p.maps.get("fraction_sigma")
        sig = None if sig is None or fr is None or np.shape(sig) != fr.shape else np.asarray(sig, float)
        # less the pixels flagged misfit (a region the references do not describe): their fractions are not its
        # chemistry (a third phase in half a particle, read LiNiO2 1.000, moved its mean 0.50 -> 0.75)
        core = fraction_pixels(p)
        left_out = bool((core_pixels(p) & ~core).any())
        at_bound = False
        # fitted over a few noisy pixels of its core, not the particle (an edgeless flake's 1.000): not given
        withheld = fr is not None and bool(fractions_withheld(p))
        if withheld:
            fr, sig = np.full_like(fr, np.nan), None
        for j, name in enumerate(p.reference_names if fr is not None else ()):
            v = fr[j][core]
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
            s = sig[j][core] if sig is not None else np.array([])
            s = float(np.median(s[np.isfinite(s)])) if np.isfinite(s).any() else np.nan
            row[f"fraction_{name}"], row[f"fraction_{name}_sigma_median"] = mean, s
            tol = max(BOUND_FRACTION, FRACTION_BOUND_SIGMAS * s) if np.isfinite(s) else BOUND_FRACTION
            at_bound |= bool(np.isfinite(mean) and min(mean, 1.0 - mean) <= tol)
        if fr is not None:  # as particle_summary's: the last reference's mean over the same pixels
            row["oxidised_fraction"] = row[f"fraction_{p.reference_names[-1]}"]
        flags = []
        if withheld:
            flags.append("withheld")
        elif not np.isfinite([row.get(f"fraction_{n}", np.nan) for n in names]).any():
            flags.append("no_fit")
        if at_bound:
            flags.append("at_bound")
        if any(MISFIT_NOTE in n for n in p.notes):
            flags.append("misfit")
        if left_out and fr is not None:
            flags.append("misfit_region")
        # normalised on fewer of the scan's energies, which moved its fractions too (frames_bias_shift)
        if fr is not None and any(n.startswith(FRAMES_NOTE_START) and FRAMES_FRACTIONS_WORDS in n for n in p.notes):
            flags.append("frames_left_out")
        rows.append({**row, "fraction_flags": "|".join(flags)})
    cols = (
        ["particle"]
        + [f"fraction_{n}" for n in names]
        + [f"fraction_{n}_sigma_median" for n in names]
        + ["oxidised_fraction", "fraction_flags"]
    )
    return pd.DataFrame(rows, columns=cols)


def uncertainty_figure(result, *, pixel_size_um: float | None = None) -> Figure:
    """Standard error of E50 per pixel (noise and registration combined), over the first frame.

    Table ``uncertainty``, one row per particle (empty where nothing was measured): the median sigma over its
    kept pixels, total and its noise and registration parts, the particle's mean E50 with its standard error
    and ``e50_normalisation_shift_ev`` (how far the energies its XANES used, fewer than the scan's, move its E50:
    :func:`xanestrack.result.particle_summary`), ``touching_pieces`` and ``touching_pieces_frames`` (its outline cut
    into that many pieces of a particle's size in so many frames examined, or where never cut its outline's lobes
    and 0: it may be touching particles reported as one; 0 where neither), and its mean reference fractions over the same pixels as its mean
    E50 with their flags (:func:`_fraction_means`: ``fraction_<reference>``, ``fraction_<reference>_sigma_median``,
    ``oxidised_fraction``, ``fraction_flags``).
    """
    from .result import particle_summary

    summ = particle_summary(result).set_index("particle") if result.particles else None
    maps, rows = {}, []
    for p in result.particles:
        s = p.maps.get("e50_sigma")
        keep = p.kept
        if s is not None:  # a row either way: the particle's fractions (a stress run's failed XANES: empty)
            maps[p.particle] = np.where(keep, s, np.nan)

        def med(name, keep=keep, p=p):
            v = p.maps.get(name)
            if v is None:
                return np.nan
            v = v[keep & np.isfinite(v)]
            return float(np.median(v)) if v.size else np.nan

        rows.append(
            (
                p.particle,
                med("e50_sigma"),
                med("e50_sigma_noise"),
                med("e50_sigma_registration"),
                float(summ.loc[p.particle, "mean_e50_ev"]),
                float(summ.loc[p.particle, "mean_e50_sigma_ev"]),
                float(summ.loc[p.particle, "e50_normalisation_shift_ev"]),
                int(summ.loc[p.particle, "touching_pieces"]),
                int(summ.loc[p.particle, "touching_pieces_frames"]),
            )
        )
    allv = np.concatenate([m[np.isfinite(m)] for m in maps.values()]) if maps else np.array([])
    lo, hi = _limits(allv, 2, 98, default=(0.0, 0.5))
    fig, rgb, caption = _map_overview(
        result,
        maps,
        "magma",
        0.0,
        hi,
        "standard error of E50 (eV)",
        what="from 0 to the 98th percentile of the kept pixels (eV)",
        pixel_size_um=pixel_size_um,
    )
    table = pd.DataFrame(
        rows,
        columns=[
            "particle",
            "sigma_median_ev",
            "sigma_noise_median_ev",
            "sigma_registration_median_ev",
            "mean_e50_ev",
            "mean_e50_sigma_ev",
            "e50_normalisation_shift_ev",
            "touching_pieces",
            "touching_pieces_frames",
        ],
    )
    # the fractions over the pixels of mean_e50_ev (they were in no CSV: only particle_summary and series.csv)
    table = table.merge(_fraction_means(result), on="particle", how="left")
    return Figure(fig.to_svg(), rgb, {"uncertainty": table}, caption)


def resolution_figure(result, *, k: float = 2.0) -> Figure:
    """Which particle-to-particle differences of the mean edge energy are resolved.

    Each particle's mean E50 over its kept core pixels with its standard error
    (:func:`xanestrack.result.particle_summary`), and every pair's ``|delta| / sigma``,
    resolved above ``k`` (:func:`xanestrack.chemistry.uncertainty.resolved_differences`,
    drawn by :func:`xanestrack.chemistry.figures.resolution_figure`). Tables
    ``resolution`` (per particle) and ``resolved_pairs`` (``particle_a, particle_b, delta_ev`` (b - a),
    ``sigma_delta_ev, z, resolved``).
    """
    from .chemistry.figures import resolution_figure as draw
    from .chemistry.uncertainty import resolved_differences
    from .result import core_pixels, particle_summary

    s = particle_summary(result)
    t = pd.DataFrame(
        {
            "particle": s["particle"].to_numpy(int),
            # the pixels the mean is over (the kept core: particle_summary's), not every kept pixel
            "n_pixels": np.array(
                [int((core_pixels(p) & np.isfinite(p.edge_maps["e50"])).sum()) for p in result.particles], int
            ),
            "e50_ev": s["mean_e50_ev"].to_numpy(float),
            "sigma_ev": s["mean_e50_sigma_ev"].to_numpy(float),
        }
    )
    t = t[np.isfinite(t["e50_ev"]) & np.isfinite(t["sigma_ev"])].reset_index(drop=True)
    if len(t) < 2:
        return Figure(None, None, {"resolution": t})
    pairs = resolved_differences(t, k=k)
    # the table written names the particles (``a, b`` are rows of ``t``: a particle without a mean E50 is no row)
    ids = t["particle"].to_numpy(int)
    named = pd.DataFrame({"particle_a": ids[pairs["a"].to_numpy(int)], "particle_b": ids[pairs["b"].to_numpy(int)]})
    named = pd.concat([named, pairs[["delta_ev", "sigma_delta_ev", "z", "resolved"]]], axis=1)
    svg, caption = _mark_capped_z(draw(t, pairs, k=k), pairs["z"].to_numpy(float), cap=2 * k)
    return Figure(svg, None, {"resolution": t, "resolved_pairs": named}, caption)


def _mark_capped_z(svg: str, z: np.ndarray, *, cap: float) -> tuple:
    """The resolution figure with the top of its z colour bar marked where pairs lie beyond ``cap``
    (:func:`xanestrack.chemistry.figures.resolution_figure` caps the colours at ``2 k``), and the
    caption's sentence."""
    import re

    z = z[np.isfinite(z)]
    n_hi = int((z > cap).sum())
    text = (
        f"Colours of |delta| / sigma capped at {cap:g} (2 x the threshold): {n_hi} of the {z.size} pairs lie above "
        f"(up to {z.max():.1f}), drawn in the top colour (\u2265 {cap:g} on the colour bar)."
        if n_hi
        else f"Colours of |delta| / sigma from 0 to {cap:g} (2 x the threshold); no pair lies above."
    )
    bar = re.search(
        r'<rect x="([-\d.]+)" y="([-\d.]+)" width="([-\d.]+)" height="([-\d.]+)" fill="url\(#g\d+_viridis\)"', svg
    )
    if n_hi and bar is not None:
        # the bar's top tick label (at ``cap``) becomes "≥ cap": the figure's title runs above the bar, no room
        # for a triangle there
        x, y, w, _ = (float(v) for v in bar.groups())
        top = re.compile(rf'(<text x="{x + w + 6:.1f}" y="{y + 3:.1f}" font-size="9">)([^<]*)(</text>)')
        svg = top.sub(lambda m: m.group(1) + "\u2265 " + m.group(2) + m.group(3), svg, count=1)
    return svg, text


def edge_width_figure(result) -> Figure:
    """The sharpness of the particles' outlines across the scan, and the blur that matched it.

    Per frame, the particles' edge width less its median over the frames (median over the
    particles, smoothed across the energies: ``PipelineResult.edge_widths``), and the sd of the
    Gaussian each frame's particle windows got before the chemistry where the resolution changed
    (``PipelineOptions.match_resolution``). Table ``edge_widths``. No figure for a result without
    the table (fewer than 3 particles with 16 frames each, or written before it).
    """
    t = result.edge_widths
    if t is None or not len(t):
        return Figure(None, None, {})
    fig = SvgFigure(900, 250)
    ax = fig.axes(70, 22, 780, 185)
    ax.xlabel, ax.ylabel = "energy (eV)", "px"
    e = t["energy_ev"].to_numpy(float)
    ax.line(e, t["width_change_px"].to_numpy(float), color=COLORS[0], width=2, label="edge width less its median")
    ax.line(e, t["blur_px"].to_numpy(float), color=COLORS[1], width=2, dash="5,3", label="blur matched (sd)")
    ax.legend()
    return Figure(fig.to_svg(), None, {"edge_widths": t})


def quality_table(result) -> pd.DataFrame:
    """Per particle: pixels of the mask, pixels the quality masks keep, and their share.

    A particle whose pixels were not judged (no ``quality_keep``: its XANES failed or was skipped, or a result
    written without it) or that has no edge energy in any pixel keeps none: its kept pixels and share are "–" and
    a ``note`` column says it was not analysed, and why (:attr:`xanestrack.result.ParticleResult.kept` is its whole mask there, which showed as "kept 100.0 %":
    3 particles of the stress-all scene, seed 4, whose XANES failed, above the one measured, 98.0 %).
    """
    rows, skipped = [], False
    for p in result.particles:
        n = int(p.mask.sum())
        measured = np.isfinite(p.edge_maps["e50"]).any()
        if p.quality_assessed and measured:
            k = int(p.kept.sum())
            rows.append((p.particle, n, k, 100.0 * k / n if n else np.nan, ""))
        else:
            skipped = True
            why = "pixels not judged (no quality mask stored)" if measured else "no edge energy (its notes say why)"
            rows.append((p.particle, n, "–", np.nan, f"not analysed: {why}"))
    table = pd.DataFrame(rows, columns=["particle", "mask pixels", "kept pixels", "kept %", "note"])
    return table if skipped else table.drop(columns="note")


def cluster_map_figure(result, *, pixel_size_um: float | None = None) -> Figure:
    """The cluster of every clustered pixel of every particle, over the first frame.

    Colours are those of :data:`xanestrack.svgplot.COLORS` in cluster order (lowest edge
    first); pixels not clustered (rejected by the quality masks) show the frame.
    Table ``cluster_fractions``: one row per particle (``xanestrack.results.cluster_table``).
    """
    from .results import cluster_table

    chem = result.chemistry or {}
    k = int(chem.get("settings", {}).get("clusters", 0))
    base = _base_image(result)
    blo, bhi = _limits(base)
    rgb = (_colormap(base, "gray", blo, bhi, bad=(0, 0, 0)).astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)
    palette = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in COLORS], np.uint8)
    for p in result.particles:
        cl = p.maps.get("cluster")
        if cl is None:
            continue
        tile = palette[np.clip(cl, 0, None) % len(palette)]
        _paste(rgb, tile, p.origin, where=(cl >= 0) & p.mask)
    fig, ax, _ = _frame_panel(rgb)
    _draw_labels(ax, result, color="black", size=12)
    caption = _scale_bar(ax, rgb.shape, pixel_size_um)
    for j in range(k):
        ax.legend_items.append((f"cluster {j}", COLORS[j % len(COLORS)], "line"))
    if k:
        ax.legend(title="cluster")
    table = cluster_table(result)
    return Figure(fig.to_svg(), rgb, {"cluster_fractions": table} if table is not None else {}, caption)


def cluster_spectra_figure(result) -> Figure:
    """Cluster mean spectra (normalised) and the PCA scree of the clustered spectra (SVG).

    Tables ``cluster_spectra`` (energy and one column per cluster) and ``pca_scree``.
    """
    chem = result.chemistry or {}
    fig = SvgFigure(900, 300)
    a = fig.axes(60, 22, 360, 220, xlabel="energy (eV)", ylabel="normalised absorption", title="cluster mean spectra")
    b = fig.axes(510, 22, 360, 220, xlabel="component", ylabel="explained variance (%)", title="PCA scree")
    tables = {}
    e = chem.get("energies_ev")
    means = chem.get("cluster_mean_spectra")
    if e is not None and means is not None:
        for j, m in enumerate(means):
            a.line(e, m, color=COLORS[j % len(COLORS)], width=1.5, label=f"cluster {j}")
        a.legend()
        tables["cluster_spectra"] = pd.DataFrame({"energy_ev": e, **{f"cluster_{j}": m for j, m in enumerate(means)}})
    ev = chem.get("pca_explained_variance_ratio")
    if ev is not None:
        x = np.arange(1, len(ev) + 1)
        b.line(x, 100 * ev, color="black", width=1)
        b.points(x, 100 * ev, color="black", r=3)
        tables["pca_scree"] = pd.DataFrame({"component": x, "explained_variance_ratio": ev})
    return Figure(fig.to_svg(), None, tables)


def motion_figure(result) -> Figure:
    """Every line plot of motion in one figure.

    (a, b) cumulative displacement y, x per particle with the common translation;
    (c, d) velocity; (e) magnification change (and rotation, degrees, where it was fitted)
    and (f) common translation of the fitted similarity; (g) non-rigid path of each particle; (h) displacement relative to the
    reference particle. Frames not vouched for are marked with a cross on every
    particle panel (drawn alike before: a particle vouched for in 7 of 40 frames
    looked as sure as one in 32). The colours repeat every ten particles, the line style every
    ten (:func:`_motion_dash`); (e) is dashed where the notes say the particles do not determine the
    magnification (:func:`_scale_undetermined`). Tables ``motion`` (per particle and frame, with
    ``vouched``) and ``common_motion`` (per frame).
    """
    tracks = result.tracks
    if len(tracks) and "flags" in tracks:
        from .result import UNVOUCHED_FLAGS

        unvouched_names = {n for n, bit in FRAME_FLAGS.items() if bit & UNVOUCHED_FLAGS}
        tracks = tracks.assign(
            vouched=[
                not (set(str(f).split("|")) & unvouched_names) if isinstance(f, str) else True for f in tracks["flags"]
            ]
        )
    W, H = 900, 1000
    pw, ph = 360, 185
    fig = SvgFigure(W, H)
    grid = [
        [fig.axes(70 + c * 450, 22 + r * 245, pw, ph, title=f"({'abcdefgh'[2 * r + c]})") for c in range(2)]
        for r in range(4)
    ]
    by = list(tracks.groupby("particle")) if len(tracks) else []
    colour = {pid: COLORS[k % len(COLORS)] for k, (pid, _) in enumerate(by)}
    dash = {pid: _motion_dash(k) for k, (pid, _) in enumerate(by)}
    rc = ("common_dy", "common_dx") if "common_dy" in tracks else ("rigid_dy", "rigid_dx")
    rig = None
    if len(tracks) and all(c in tracks for c in rc):
        rig = tracks.groupby("frame")[list(rc)].first()
        rig = rig - rig.iloc[0]
    labels = [
        ("dy", "vertical displacement (px)"),
        ("dx", "horizontal displacement (px)"),
        ("vy", "vertical velocity (px/frame)"),
        ("vx", "horizontal velocity (px/frame)"),
    ]
    for ax, (c, label) in zip([grid[0][0], grid[0][1], grid[1][0], grid[1][1]], labels):
        ax.xlabel, ax.ylabel = "frame", label
        if c in tracks:
            for pid, g in by:
                ax.line(
                    g["frame"].to_numpy(), g[c].to_numpy(), color=colour[pid], width=1, dash=dash[pid], label=str(pid)
                )
                _mark_unvouched(ax, g, g["frame"].to_numpy(), g[c].to_numpy(), colour[pid])
            if rig is not None:
                comp = rig[rc[0] if c in ("dy", "vy") else rc[1]].to_numpy()
                if c in ("vy", "vx"):
                    comp = np.gradient(comp, rig.index.to_numpy()) if len(comp) > 1 else np.zeros(len(comp))
                ax.line(rig.index.to_numpy(), comp, color="black", width=2.5, label="common")
    grid[0][1].legend(title="particle", ncol=max(1, int(np.ceil((len(by) + 1) / 8))))
    common = pd.DataFrame()
    e, f = grid[2]
    e.xlabel, e.ylabel, f.xlabel, f.ylabel = "frame", "magnification change (%)", "frame", "common translation (px)"
    # the rotation, where it was fitted (--rotation), beside the scale in (e): it was in results.h5 alone (the field
    # turned 1.5 degrees clockwise, fitted -1.499 degrees: not in the figure, its table or its caption)
    turned = "common_rotation_deg" in tracks
    caption = (
        "Rotation fitted (--rotation): the similarity is translation + isotropic scale + rotation, and (e) shows the "
        "rotation too (degrees, common_rotation_deg), positive counter-clockwise as the image is shown (row 0 at the "
        "top)."
        if turned
        else "Rotation not fitted: the similarity is translation + isotropic scale."
    )
    if turned and len(tracks):
        # frames whose turn could not be fitted (fewer than three particles) hold NaN, not 0: said, not drawn as no turn
        rot = tracks.groupby("frame")["common_rotation_deg"].first()
        unfitted = int(rot.isna().sum())
        if unfitted == len(rot):
            caption = (
                "Rotation asked for (--rotation) and not fitted in any frame: it needs three particles or more; the "
                "similarity is translation + isotropic scale, and common_rotation_deg is NaN (not measured)."
            )
        elif unfitted:
            caption += (
                f" Not fitted in {unfitted} of {len(rot)} frames (fewer than three particles there): "
                "common_rotation_deg is NaN there and (e) draws no rotation."
            )
    if "common_scale" in tracks and len(tracks):
        cols = ["energy_ev", "common_dy", "common_dx", "common_scale"] + (["common_rotation_deg"] if turned else [])
        common = tracks.groupby("frame")[cols].first().reset_index()
        fr = common["frame"].to_numpy()
        loose = _scale_undetermined(getattr(result, "notes", ()))
        e.line(
            fr,
            (common["common_scale"].to_numpy() - 1) * 100,
            color="black",
            dash=UNDETERMINED_SCALE_DASH if loose else None,
            label="scale (%)" if turned else None,
        )
        if loose:
            caption += (
                " (e) Drawn dashed: the run notes say that this magnification is not determined by the particles "
                "(fitted with one left out it reads otherwise, or too few particles to test it); it may be particles "
                "drifting outward or inward together (a swelling), not the optics', and every own motion is relative "
                "to it."
            )
        e.points(fr, (common["common_scale"].to_numpy() - 1) * 100, color="black", r=1.2)
        if turned:
            e.ylabel = "magnification change (%), rotation (deg)"
            e.line(fr, common["common_rotation_deg"].to_numpy(), color=COLORS[2], label="rotation (deg)")
            e.legend()
        f.line(fr, common["common_dy"].to_numpy(), color=COLORS[0], label="dy")
        f.line(fr, common["common_dx"].to_numpy(), color=COLORS[1], label="dx")
        f.legend()
    g_ax, h_ax = grid[3]
    g_ax.xlabel, g_ax.ylabel, g_ax.invert_y, g_ax.equal = "non-rigid dx (px)", "non-rigid dy (px)", True, True
    h_ax.xlabel, h_ax.ylabel = "frame", "|displacement relative to reference| (px)"
    for pid, g in by:
        if "nonrigid_dy" in g:
            g_ax.line(
                g["nonrigid_dx"].to_numpy(), g["nonrigid_dy"].to_numpy(), color=colour[pid], width=1, dash=dash[pid]
            )
            _mark_unvouched(g_ax, g, g["nonrigid_dx"].to_numpy(), g["nonrigid_dy"].to_numpy(), colour[pid])
            rel = np.hypot(g["rel_dy"], g["rel_dx"]).to_numpy()
            h_ax.line(g["frame"].to_numpy(), rel, color=colour[pid], width=1, dash=dash[pid], label=str(pid))
            _mark_unvouched(h_ax, g, g["frame"].to_numpy(), rel, colour[pid])
    caption = " ".join(c for c in (_motion_dash_sentence([pid for pid, _ in by]), caption) if c)
    from .motion import MOTION_COLUMNS

    cols = MOTION_COLUMNS[:2] + ["energy_ev"] + MOTION_COLUMNS[2:] + ["vouched"]
    keep = [c for c in cols if c in tracks]
    tables = {"motion": tracks[keep]}
    if len(common):
        tables["common_motion"] = common
    return Figure(fig.to_svg(), None, tables, caption=caption)


def _scale_undetermined(notes) -> bool:
    """Whether the run notes say that the magnification fitted to the particles is not determined by them
    (:data:`SCALE_NOTE_UNDETERMINED`)."""
    return any(str(n).startswith(SCALE_NOTE_START) and any(w in str(n) for w in SCALE_NOTE_UNDETERMINED) for n in notes)


def _motion_dash(k: int):
    """The line style (SVG dash array, None: solid) of the ``k``-th particle on the motion figure: one per ten
    particles (:data:`MOTION_DASHES`), as the colours repeat every ten; beyond forty they repeat."""
    return MOTION_DASHES[(k // len(COLORS)) % len(MOTION_DASHES)]


def _motion_dash_sentence(pids) -> str:
    """The motion caption's key to the line styles where more particles than colours are drawn; ``""`` else."""
    n = len(COLORS)
    if len(pids) <= n:
        return ""
    groups = []
    for j in range(1, int(np.ceil(len(pids) / n))):
        chunk = pids[j * n : (j + 1) * n]
        groups.append(f"{MOTION_DASH_WORDS[j % len(MOTION_DASHES)]}: particles {chunk[0]}-{chunk[-1]}")
    return (
        f"The colours repeat every {n} particles; the line style tells them apart (solid: particles {pids[0]}-"
        f"{pids[n - 1]}; " + "; ".join(groups) + "; the legend of (b) draws each)."
    )


def _mark_unvouched(ax, g, x, y, color) -> None:
    """A cross at each frame of ``g`` (one particle's rows) not vouched for."""
    if "vouched" not in g:
        return
    bad = ~g["vouched"].to_numpy(bool)
    if bad.any():
        ax.points(np.asarray(x)[bad], np.asarray(y)[bad], color=color, r=2.2, marker="x")


def _energy_selection(n_energies: int, n: int = 8) -> np.ndarray:
    return np.unique(np.linspace(0, n_energies - 1, min(n, n_energies)).round().astype(int))


def _tile(a: np.ndarray, zoom: int) -> np.ndarray:
    return np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) if zoom > 1 else a


def particle_figure(result, particle: int, *, e50_limits=None, pixel_size_um: float | None = None) -> Figure:
    """One particle's panels, rendered straight from its arrays (an image, no SVG).

    Top row: the aligned sub-stack at up to 8 energies (one grey scale). Bottom row:
    last minus first frame before and after alignment (one diverging scale), and the
    edge-energy map over the pixels the quality masks keep (the colour scale of :func:`chemistry_figure`;
    blank, and the caption says why, where the particle's mean E50 is withheld: :func:`_kept_e50`).
    Tables ``particle_NNN_edge_e50`` (the map, every pixel measured: results.h5's ``edge_e50``),
    ``particle_NNN_edge_e50_shown`` (1 where the figures draw the pixel: :func:`_e50_map_tables`) and
    ``particle_NNN_spectrum`` (with ``mean_od_analysed``,
    :func:`_analysed_spectrum`). With ``pixel_size_um`` the caption gives the tiles' width in um.
    """
    p = next(q for q in result.particles if q.particle == particle)
    energies = result.energies_ev
    al = p.aligned
    sel = _energy_selection(len(energies))
    h, w = al.shape[1:]
    zoom = max(1, int(np.ceil(96 / max(h, w))))
    gap = 6
    vlo, vhi = _limits(al[sel])
    top = [_colormap(al[k], "gray", vlo, vhi) for k in sel]
    before = p.unaligned_ends[1] - p.unaligned_ends[0] if p.unaligned_ends is not None else np.zeros_like(al[0])
    after = al[-1] - al[0]
    fb = np.abs(before[np.isfinite(before)])
    dl = float(np.percentile(fb, 99)) if fb.size else 0.0
    dl = dl if dl > 0 else 1.0
    elo, ehi = e50_limits if e50_limits is not None else _e50_limits(result)
    bottom = [
        _colormap(before, "RdBu_r", -dl, dl),
        _colormap(after, "RdBu_r", -dl, dl),
        _colormap(_kept_e50(p), "viridis", elo, ehi),
    ]
    th, tw = h * zoom, w * zoom
    ncol = max(len(top), len(bottom))
    img = np.full((2 * th + gap, ncol * tw + (ncol - 1) * gap, 3), 255, np.uint8)
    for j, t in enumerate(top):
        img[:th, j * (tw + gap) : j * (tw + gap) + tw] = _tile(t, zoom)
    for j, t in enumerate(bottom):
        img[th + gap :, j * (tw + gap) : j * (tw + gap) + tw] = _tile(t, zoom)
    spectrum = pd.DataFrame(
        dict(
            energy_ev=energies,
            mean_od=p.mean_spectrum,
            mean_norm=p.mean_norm,
            pre_edge=p.pre_edge,
            post_edge=p.post_edge,
            mean_od_analysed=_analysed_spectrum(p, energies),
        )
    )
    e50, shown = _e50_map_tables(p)
    caption = f"Each tile {w} px ({w * pixel_size_um:.3g} \u00b5m) wide." if pixel_size_um is not None else ""
    why = e50_withheld(p)
    if why:  # its E50 tile is left blank, as on the overview (_kept_e50)
        caption = " ".join(c for c in (f"The E50 tile is blank: its mean E50 is withheld ({why}).", caption) if c)
    tables = {
        f"particle_{particle:03d}_edge_e50": e50,
        f"particle_{particle:03d}_edge_e50_shown": shown,
        f"particle_{particle:03d}_spectrum": spectrum,
    }
    return Figure(None, img, tables, caption)


def _e50_map_tables(p) -> tuple:
    """A particle's E50 map as written beside its figure (every pixel measured: results.h5's ``edge_e50``) and, on
    the same grid, 1 where the figures draw the pixel and 0 where they hide it (:func:`_kept_e50`: the quality masks
    reject it, or the particle's mean E50 is withheld). The map was written alone under the same header for every
    particle: a replot from it drew the 2-4 % of pixels the figure hides, 2-3x worse against the truth, and a
    particle whose E50 is withheld unmarked. Both headers say so (``withheld: <why>``, as chemistry.csv's column)."""
    origin = f"pixel [0,0] at frame-0 (y, x) = ({int(p.origin[0])}, {int(p.origin[1])})"
    why = e50_withheld(p)
    tail = f"; withheld: {why} (no pixel drawn)" if why else ""
    name = f"particle_{p.particle:03d}_edge_e50_shown.csv"
    e50 = pd.DataFrame(p.edge_maps["e50"])
    e50.attrs["header"] = (
        f"E50 map (eV), {origin}; every pixel measured; the figures draw only those marked 1 in {name}{tail}"
    )
    shown = pd.DataFrame(np.isfinite(_kept_e50(p)).astype(int))
    shown.attrs["header"] = (
        f"1: pixel drawn on the figures (the quality masks keep it), 0: hidden, of the E50 map beside, {origin}{tail}"
    )
    return e50, shown


def _analysed_spectrum(p, energies_ev) -> np.ndarray:
    """The mean OD the pre- and post-edge lines were fitted to (n_frames,), NaN where not analysed.

    :func:`xanestrack.xanes.analyse_particle` normalises the mask's mean of the particle's stack
    less each frame's local background (and smoothed inside the mask); ``mean_spectrum`` is the
    mean before that subtraction (0.07 OD above the lines on the default scene). It is not stored,
    but ``mean_norm = (mu - pre_edge) / step`` with ``step = post_edge(E0) - pre_edge(E0)`` gives
    it back exactly: ``mu = pre_edge + mean_norm * step`` (the pre-edge a line, the post-edge a
    polynomial of degree 3 at most, both in ``(E - E0) / 100``).
    """
    e = np.asarray(energies_ev, float)
    pre, post = np.asarray(p.pre_edge, float), np.asarray(p.post_edge, float)
    norm = np.asarray(p.mean_norm, float)
    fin = np.isfinite(pre) & np.isfinite(post)
    if fin.sum() < 4 or not np.isfinite(p.e0_ev):
        return np.full(e.shape, np.nan)
    x = (e[fin] - float(p.e0_ev)) / 100.0
    step = np.polyfit(x, post[fin], 3)[-1] - np.polyfit(x, pre[fin], 1)[-1]
    return pre + norm * step


def spectrum_figure(result, particle: int) -> Figure:
    """One particle's mean spectrum: mean OD with its pre- and post-edge fits, and normalised (right axis).

    The points the lines are drawn through are the spectrum they were fitted to: the mean OD
    less each frame's local background (:func:`_analysed_spectrum`); the mean OD as measured
    (``mean_spectrum``: before that subtraction, every frame) is drawn small and grey beside it,
    and the caption gives the difference over the pre-edge.
    """
    p = next(q for q in result.particles if q.particle == particle)
    e = np.asarray(result.energies_ev, float)
    fig = SvgFigure(430, 270)
    ax = fig.axes(58, 22, 300, 200, xlabel="energy (eV)", ylabel="OD", title=f"particle {particle}")
    analysed = _analysed_spectrum(p, e)
    caption = ""
    if np.isfinite(analysed).any():
        ax.points(e, p.mean_spectrum, color="#aaaaaa", r=1.2, label="mean OD before background")
        ax.points(e, analysed, color=COLORS[0], label="mean OD less background")
        ax.line(e, p.pre_edge, color=COLORS[1], dash="4,3", width=1, label="pre-edge fit")
        ax.line(e, p.post_edge, color=COLORS[2], dash="4,3", width=1, label="post-edge fit")
        ax.right_axis(ylabel="normalised").line(e, p.mean_norm, color="black", width=1, label="normalised (right)")
        below = np.isfinite(analysed) & np.isfinite(p.mean_spectrum) & (e < float(p.e0_ev))
        if below.any():
            diff = float(np.mean(np.asarray(p.mean_spectrum, float)[below] - analysed[below]))
            caption = (
                "Blue: the mean OD in the mask less each frame's local background (a plane fitted to a ring around "
                "the particle), the spectrum the pre- and post-edge lines were fitted to and normalised; grey: the "
                f"mean OD in the mask before that subtraction, {diff:+.3f} OD from it on average before the edge (mean_od and "
                "mean_od_analysed in the spectrum's CSV)."
            )
    else:
        # not normalised (too few energies, no edge step): no fit to draw
        ax.points(e, p.mean_spectrum, color=COLORS[0], label="mean OD")
        caption = "Mean OD in the mask: not normalised, no pre- or post-edge fit."
    ax.legend()
    return Figure(fig.to_svg(), None, {}, caption)


def vouching_table(result) -> pd.DataFrame:
    """Per particle: frames vouched for (both position estimates agree), median and max agreement."""
    from .result import particle_summary

    s = particle_summary(result)
    t = s[["particle", "frames_vouched", "frames", "median_agreement_px", "max_agreement_px"]].copy()
    tr = result.tracks
    flags = {int(p.particle): np.asarray(p.frame_flags) for p in result.particles}
    motion = FRAME_FLAGS["by_motion"]
    if "com_agreement_px" in tr.columns and len(t):
        # vouched for by the density correlation alone: the centre of mass did not agree
        thr = float(getattr(result.options, "agreement_px", 0.5))
        bad = FRAME_FLAGS["interpolated"] | FRAME_FLAGS["position_outlier"] | FRAME_FLAGS["disagree"] | motion
        by = []
        for pid in t["particle"]:
            g = tr[tr["particle"] == pid].sort_values("frame")
            com_ok = g["com_agreement_px"].to_numpy(float) <= thr
            by.append(int((((flags[int(pid)] & bad) == 0) & ~com_ok).sum()))
        t.insert(2, "by density", by)
    if len(t) and any((f & motion).any() for f in flags.values()):
        t.insert(2, "by motion", [int(((flags[int(pid)] & motion) > 0).sum()) for pid in t["particle"]])
    return t.rename(
        columns={
            "frames_vouched": "vouched frames",
            "median_agreement_px": "median agreement px",
            "max_agreement_px": "max agreement px",
        }
    )


#: eV: K-edges of the transition metals of cathodes (metal foil); a scan's edge energies within K_EDGE_NEAR_EV of one
#: name it in the captions ("more oxidised Ni" was written under a Co scan's map)
K_EDGES_EV = {"Mn": 6539.0, "Fe": 7112.0, "Co": 7709.0, "Ni": 8333.0, "Cu": 8979.0}
K_EDGE_NEAR_EV = 40.0


def _normalisation_bias(run: dict, result) -> str:
    """The uncertainty caption's words on the normalisation's bias: the numbers measured for this run.

    ``run["normalisation_bias_ev"]`` (run.json; else ``result.normalisation_bias``): each reference's E50 on the
    run's energies less its densely measured one (:func:`xanestrack.chemistry.normbias.normalisation_bias`). Fixed
    numbers, those of the shipped references on synth's 143-energy grid (+0.11 / +0.003 eV), were quoted before
    whatever the energies: on its 50-energy grid the bias is +0.38 / -0.07 eV, on its 60-energy grid -0.18 / +0.03.
    A folder without them (written before they were measured, or a run without references) gets words only. The
    references' numbers do not bound a mix's (:func:`xanestrack.chemistry.normbias.mixture_bias`: on synth's
    30-energy grid NiO -0.056, LiNiO2 -0.161, their 50:50 mix -0.188 eV): the words do not say they do.
    """
    bias = run.get("normalisation_bias_ev")
    if bias is None:
        bias = getattr(result, "normalisation_bias", None)
    bias = {str(k): float(v) for k, v in (bias or {}).items() if np.isfinite(float(v))}
    if not bias:
        return (
            " and on the energies sampled (not measured for this run; larger where the post-edge is sampled sparsely "
            "or the edge has no white line)"
        )

    def name(k: str) -> str:
        return "LiNiO<sub>2</sub>" if k == "LiNiO2" else html.escape(k)

    def ev(v: float) -> str:
        return f"{v:+.2f}" if abs(v) >= 0.01 else f"{v:+.3f}"

    words = ", ".join(f"{ev(v)} eV for {name(k)}" for k, v in bias.items())
    spread = max(bias.values()) - min(bias.values())
    return (
        f" and on the energies sampled (measured for this run's references on its energies, noise-free, against "
        f"each one's densely measured E50: {words}"
        + (
            f"; a difference between particles of {'the two' if len(bias) == 2 else 'different'} chemistries is "
            f"compressed or stretched by {spread:.2f} eV between the pure references, and a mix's bias need not lie "
            "between theirs (the run note, where there is one, gives their mixes')"
            if len(bias) > 1
            else ""
        )
        + ")"
    )


def _k_edge_element(limits) -> str:
    """`` Ni`` (with its space) where the edge energies ``limits`` lie near one element's K-edge, else ``""``."""
    lo, hi = (float(v) for v in limits)
    for name, e in K_EDGES_EV.items():
        if np.isfinite(lo) and np.isfinite(hi) and e - K_EDGE_NEAR_EV <= lo and hi <= e + K_EDGE_NEAR_EV:
            return f" {name}"
    return ""


# ---------------------------------------------------------------- the page
_STYLE = """body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } .flag { color: #b00; } .note { color: #555; font-size: .9em; }
.particle { border-top: 1px dashed #bbb; padding-top: .5em; } .row { display: flex; gap: 1em; align-items: flex-start; flex-wrap: wrap; }
code { background: #f6f6f6; padding: 0 .2em; }"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>xanestrack report</title>
<style>{{ style }}</style></head><body>
<h1>xanestrack report</h1>
<p>{{ summary }}</p>
<h2>Overview</h2>
<figure><img alt="overview" src="{{ figs.overview }}">
<figcaption>First frame (rigidly aligned) with every tracked particle outlined and numbered; its trajectory
through the scan drawn magnified x{{ traj_scale }} and coloured by its largest non-rigid excursion over its frames
vouched for (see the colour bar); rejected objects are marked with the reason they were not tracked. {{ caps.overview }}</figcaption></figure>
<figure><img alt="chemistry overview" src="{{ figs.chemistry }}">
<figcaption>Edge energy E(&mu;<sub>norm</sub> = 0.5) of every particle on one colour scale ({{ elo }}&ndash;{{ ehi }} eV, viridis):
higher energy = more oxidised{{ element }}; pixels the quality masks reject are not shown. {{ caps.chemistry }}</figcaption></figure>
{% if rejected %}<h3>Rejected objects</h3>{{ rejected }}{% endif %}
<h2>Chemistry</h2>
<figure><img alt="whiteline" src="{{ figs.whiteline }}">
<figcaption>Whiteline position per pixel: the maximum of a cubic fitted to the top of the whiteline (not the highest
noisy point); pixels the quality masks reject are not shown. {{ caps.whiteline }}</figcaption></figure>
<figure><img alt="edge-energy uncertainty" src="{{ figs.uncertainty }}">
<figcaption>Standard error of E(&mu;<sub>norm</sub> = 0.5) per pixel: the frames' photon noise and each particle's registration
uncertainty (from the agreement of its two position estimates), propagated through the normalisation and the interpolation.
It is a statistical error: the normalisation convention (pre-edge line, post-edge line from E0 + 100 eV) differs from other
normalisations by a bias that depends on the chemistry{{ norm_bias }} which it does not contain,
nor the flat field's changes from frame to frame or the texture of a matrix under a particle that moves with it (measured on
synthetic scans with strong ones: up to 0.5 eV RMS for single particles, README: what sigma(E50) does not contain).
{{ caps.uncertainty }}</figcaption></figure>
{% if resolved %}<figure><img alt="resolved differences" src="{{ figs.resolution }}">
<figcaption>Mean edge energy of each particle (trusted core pixels) with its standard error (thick: 1&sigma;, thin: 2&sigma;),
and which particle-to-particle differences exceed 2&sigma; (dots). The test weighs &sigma; alone: the systematic errors
&sigma; does not contain are not part of it (the normalisation's bias, which differs between chemistries: above; the flat
field's changes and a matrix moving with a particle: README, what sigma(E50) does not contain), so a difference resolved
here may still be theirs. {{ caps.resolution }}</figcaption></figure>{% endif %}
{% if figs.edge_widths %}<figure><img alt="edge widths" src="{{ figs.edge_widths }}">
<figcaption>Sharpness of the particles' outlines across the scan: each particle's edge width (the sd of an erf fitted across
its outline) less its median, median over the particles, smoothed across the energies; within about 0.2 px where the focus
holds. Where it changes by {{ width_limit }} px or more between quarters of the frames (a focus that drifts with the energy)
each frame's particle windows are blurred before the XANES analysis to the coarsest frame's resolution by the Gaussian drawn
dashed (its sd), so that the share of the surroundings mixed into a pixel does not change with the energy.</figcaption></figure>{% endif %}
<h3>Quality masks</h3>
<p class="note">Pixels trusted for statistics: edge jump above the threshold and normalisation residual not an outlier
(TXM-Sandbox's rules; the fit of the references does not choose the pixels; the maps keep every value, the mask is stored
beside them in results.h5).</p>
{{ quality_table }}
{% if clustered %}<h3>Phase mapping</h3>
<p class="note">{{ cluster_note }}</p>
<figure><img alt="cluster maps" src="{{ figs.clusters }}">
<figcaption>Cluster of every clustered pixel (clusters ordered by edge position, lowest first). {{ caps.clusters }}</figcaption></figure>
<figure><img alt="cluster spectra" src="{{ figs.cluster_spectra }}">
<figcaption>Mean normalised spectrum of each cluster, and the PCA scree of the clustered spectra (explained variance per component).</figcaption></figure>
{{ cluster_table }}
<p class="note">{{ separation_note }}</p>{% endif %}
<h2>Motion</h2>
<figure><img alt="motion" src="{{ figs.motion }}">
<figcaption>(a, b) Cumulative displacement per particle, vertical (y) and horizontal (x), and (c, d) velocity, with the common
translation in thick black. (e, f) Common motion of each frame: a similarity (translation + isotropic scale, + rotation with --rotation) fitted robustly
over the particles' {{ fitted_on }}; the scale is the magnification relative to the first frame (a zone plate's changes
with the energy), it moves every particle radially and is removed before non-rigid motion is measured. (g) Non-rigid motion
of each particle (its displacement less the common one); (h) motion relative to the reference particle {{ ref_particle }}.
Crosses: frames not vouched for (the particle's two position estimates disagree, or its position was not measured there). {{ caps.motion }}</figcaption></figure>
{% if ratios_note %}<p class="note">{{ ratios_note }}</p>{% endif %}
{{ ratios }}
<h2>Particles</h2>
<p>{{ vouch_text }}</p>
{{ vouch_table }}
{% for p in particles %}
<div class="particle"><h3>Particle {{ p.id }}</h3>
<div class="row"><figure><img alt="particle {{ p.id }}" src="{{ p.fig }}">
<figcaption>Top: aligned sub-stack at {{ p.energies }} eV. Bottom: last minus first frame before and after alignment
(red = more absorbing), and the edge-energy map (scale as in the chemistry overview; pixels the quality masks reject are
not shown). {{ p.fig_caption }}</figcaption></figure>
<figure><img alt="particle {{ p.id }} spectrum" src="{{ p.spectrum }}">
<figcaption>Mean spectrum with pre-/post-edge fits, and normalised. {{ p.spectrum_caption }}</figcaption></figure></div>
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


def _write_tables(figdir: Path, tables: dict) -> None:
    for name, df in tables.items():
        if name.endswith(("_edge_e50", "_edge_e50_shown")):
            np.savetxt(
                figdir / f"{name}.csv",
                df.to_numpy(),
                delimiter=",",
                fmt="%d" if name.endswith("_shown") else "%.3f",
                header=df.attrs.get("header", ""),
            )
        else:
            df.to_csv(
                figdir / f"{name}.csv",
                index=False,
                float_format="%.6f" if name == "common_motion" else "%.5f" if "spectrum" in name else "%.4f",
            )


def _size_words(p) -> str:
    """The report's words on a particle's size (:attr:`xanestrack.result.ParticleResult.size_radius`), and where none
    was measured (its frames' masks disagree, one of them another object's) that it was not: it read "radius nan px"."""
    r = p.size_radius
    return f"radius {r:.1f} px" if np.isfinite(r) else "size not measured (its masks disagree between frames)"


def _fraction_text(row) -> str:
    """The report's words on a particle's mean reference fractions (a row of :func:`_fraction_means`); empty
    without any."""
    names = [
        c[len("fraction_") :] for c in row.index if c.startswith("fraction_") and not c.endswith(("_median", "_flags"))
    ]
    if "withheld" in str(row["fraction_flags"]).split("|"):
        return "reference fractions not given (its E50 measured in too few of its core pixels: its note says why)"
    if not np.isfinite([row[f"fraction_{n}"] for n in names]).any():
        return ""
    parts = []
    for n in names:
        v, s = row[f"fraction_{n}"], row[f"fraction_{n}_sigma_median"]
        if np.isfinite(v):
            parts.append(f"{n} {v:.3f}" + (f" \u00b1 {s:.3f}" if np.isfinite(s) else ""))
    text = (
        "reference fractions " + ", ".join(parts) + " (trusted core pixels; \u00b1 the pixels' median standard error)"
    )
    flags = str(row["fraction_flags"]).split("|")
    if "at_bound" in flags:
        text += ": at 0 or 1, the fit's bounds (its error is one-sided there)"
    if "misfit" in flags:
        text += "; the references may not describe its spectra (its note says why)"
    if "misfit_region" in flags:
        text += "; over the pixels the references describe (a region they do not is left out: its note says how much)"
    if "frames_left_out" in flags:
        text += "; moved by the energies its XANES left out (its note says by how much)"
    return text


def _particle_text(p, summ_row, tracks, fractions=None) -> tuple:
    """The report's lines on one particle (``info``, ``flags``); ``fractions`` its row of :func:`_fraction_means`."""
    g = tracks[tracks["particle"] == p.particle]
    flags = ""
    flagged = g[g["flags"].astype(str) != ""]
    if len(flagged):
        counts = flagged["flags"].astype(str).str.split("|").explode().value_counts()
        flags = "quality flags: " + ", ".join(f"{k} in {v} frame{'' if v == 1 else 's'}" for k, v in counts.items())
    if np.isfinite(summ_row["mean_e50_ev"]):
        # particle_summary's mean over the trusted core pixels, as the figures and series.csv (it was the whole
        # map's here: up to 0.2 eV apart from the same report's figures)
        info = (
            f"{_size_words(p)}; E0 {p.e0_ev:.1f} eV; mean edge energy {summ_row['mean_e50_ev']:.2f} eV "
            f"(spread {summ_row['e50_spread_ev']:.2f} eV, trusted core pixels"
            + (
                f"; {summ_row['e50_spread_beyond_noise_ev']:.2f} eV beyond their noise"
                if np.isfinite(summ_row.get("e50_spread_beyond_noise_ev", np.nan))
                else ""
            )
            + ")"
        )
    elif np.isfinite(p.edge_maps["e50"]).any():
        info = f"{_size_words(p)}; E0 {p.e0_ev:.1f} eV; no mean edge energy (its notes say why)"
    else:
        info = "no edge-energy map"
    if fractions is not None and _fraction_text(fractions):
        info += "; " + _fraction_text(fractions)
    if p.notes:
        info += "; " + "; ".join(p.notes)
    if p.agreement is not None:
        v, n, med = int(summ_row["frames_vouched"]), int(summ_row["frames"]), summ_row["median_agreement_px"]
        if v == 0:
            # a particle whose estimates were never compared (measured both ways in one frame at most) did not
            # "never agree": its agreement is NaN in every frame (register._edge_agreement)
            never = (
                "never agree"
                if np.isfinite(np.asarray(p.agreement, float)).any()
                else "were never compared (both measured in one frame at most)"
            )
            flags = (flags + "; " if flags else "") + (
                f"not vouched for in any frame: the edge correlation and the centre of mass {never}"
            )
        elif v < n:
            info += f"; vouched for in {v} of {n} frames (median agreement {med:.2f} px)"
        else:
            info += f"; vouched for in every frame (median agreement {med:.2f} px)"
    return info, flags


def _redone_rows(result) -> list:
    """The run table's row saying the result's XANES was analysed again after the run (its run notes of
    :func:`xanestrack.pipeline.redo_xanes`: the axis and references used); none for a result as run."""
    from .pipeline import REDONE_NOTE

    redone = [n[len(REDONE_NOTE) :].lstrip(": ") for n in result.notes if n.startswith(REDONE_NOTE)]
    return [("re-analysed", "XANES analysed again after the run: " + "; then ".join(redone))] if redone else []


def _calibration_text(cal) -> str:
    if not cal:
        return "none (energies as read)"
    bias = cal.get("normalisation_bias_ev")
    if bias is not None and np.isfinite(bias):  # --known-edge: set to the known E50 plus its chemistry's bias
        return (
            f"{cal.get('shift_ev', 0.0):+.3f} eV ({cal.get('method')}, {cal.get('source')}: "
            f"E50 {cal.get('measured_e0_ev', float('nan')):.2f} -> {cal.get('target_e50_ev', float('nan')):.2f} eV, "
            f"known {cal.get('known_e0_ev', float('nan')):.2f} eV with the normalisation's bias at its chemistry on "
            f"these energies, {bias:+.2f} eV)"
        )
    return (
        f"{cal.get('shift_ev', 0.0):+.3f} eV ({cal.get('method')}, {cal.get('source')}: "
        f"E0 {cal.get('measured_e0_ev', float('nan')):.2f} -> {cal.get('known_e0_ev', float('nan')):.2f} eV)"
    )


def _cluster_table(result):
    from .results import cluster_table

    return cluster_table(result)


def _separation_text() -> str:
    """What the cluster table's ``separation`` column is (:func:`xanestrack.pipeline._cluster_separation`)."""
    from .pipeline import CLUSTER_MIN_SEPARATION

    return (
        "separation: how far apart the two closest clusters lie, the same in every row: the distance between their "
        "centroids (mean spectra over the clustering's energies) over the spread of their pixels' spectra along the "
        "line joining them (pooled sd), a ratio without a unit. Below "
        f"{CLUSTER_MIN_SEPARATION:g} the two are not distinct phases (one spread of pixels cut in two lies about "
        "2.7 apart): a run note then says which. A cluster that is the band across the front of two others (a few "
        "pixels across, its spectra mixes of theirs: the resolution mixing two phases) is not a phase and enters no "
        "pair: a run note names it."
    )


def _cluster_text(result) -> str:
    st = (result.chemistry or {}).get("settings", {})
    w = st.get("window_ev")
    return (
        f"{st.get('method', '')} with {st.get('clusters', '')} clusters on {st.get('n_pixels', 0)} pixels (those the quality "
        f"masks keep) of particles {', '.join(map(str, st.get('particles', [])))}, "
        f"{st.get('n_common_frames', 0)} frames usable in every particle"
        + (f", energies {w[0]:.1f}-{w[1]:.1f} eV" if w else "")
        + "."
        + (f" {st['note']}" if st.get("note") else "")
    )


def _detection_text(every, rescue: bool = False, match=None) -> str:
    every = int(every)
    text = (
        "in every frame"
        if every <= 1
        else f"on every {every}th frame and the last; the windows of the others placed by each particle's own motion"
    )
    if rescue:
        text += "; objects outlined too small to be particles measured again at their own contrast (scans of 3+ frames)"
    faint, full = (match or {}).get("min_faint_fraction"), (match or {}).get("min_track_fraction", 0.5)
    if faint is not None and faint < full:
        text += (
            f"; particles seen in {100 * faint:.0f}-{100 * full:.0f} % of the examined frames kept where nothing else "
            "was seen in their place"
        )
    return text


def _positions_text(params) -> str:
    """How the positions were made, in a sentence for the run table."""
    text = (
        "edge correlation, vouched for by the mask's centre of mass"
        if params.get("position", "edges") == "edges"
        else "mask centre of mass, vouched for by the edge correlation"
    )
    if params.get("shape_apodisation", False):
        text += " (the correlation apodised by each particle's own shape)"
    if params.get("smooth_tracks", False):
        text += (
            "; each particle's own motion smoothed across the energies (GCV; jumps kept), the motion all "
            "particles share kept frame by frame; tracks.csv edge_y, edge_x: as measured"
        )
    return text


def _data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of ``data`` (base64), for an image embedded in a page."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _emit_files(figdir: Path, name: str, fig: Figure) -> str | None:
    """Write a figure's files (``<name>.png`` / ``.svg`` and its tables' CSVs); its data URI for
    the page (the SVG where it has one), None where it has neither."""
    uri = None
    if fig.image is not None:
        data = png_bytes(fig.image)
        (figdir / f"{name}.png").write_bytes(data)
        if fig.svg is None:
            uri = _data_uri(data, "image/png")
    if fig.svg is not None:
        data = fig.svg.encode("utf-8")
        (figdir / f"{name}.svg").write_bytes(data)
        uri = _data_uri(data, "image/svg+xml")
    _write_tables(figdir, fig.tables)
    return uri


def _pixel_size_origin(run: dict) -> str:
    """Where the pixel size came from, as the report's row says it (run.json's ``pixel_size_source``; the row said
    "from the input" for one given with ``--pixel-size``, the input giving none)."""
    source = run.get("pixel_size_source")
    if source == "--pixel-size":
        own = run.get("input_pixel_size_um")
        if own and abs(float(own) - float(run.get("pixel_size_um") or 0)) <= 1e-6 * float(own):
            return "given with --pixel-size, as the input gives it"
        return "given with --pixel-size" + (f", replacing the input's {float(own):g} \u00b5m" if own else "")
    if source == "input":
        return "from the input"
    if source == "run_info":
        return "given to write_results (run_info)"
    return "its source not recorded"


def _pixel_size(run: dict, result) -> float | None:
    """The input's pixel size in um (``run.json``'s ``pixel_size_um``, else the result's), None where unknown."""
    for v in (run.get("pixel_size_um"), getattr(result, "pixel_size_um", None)):
        try:
            px = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(px) and px > 0:
            return px
    return None


#: the report's names (with units) of the columns of ``peak_ratios`` (motion_summary.csv keeps its own)
MOTION_TABLE_NAMES = {
    "peak_nonrigid_vy": "peak |non-rigid vy| ({v})",
    "peak_nonrigid_vx": "peak |non-rigid vx| ({v})",
    "peak_rigid_vy": "peak |common vy| ({v})",
    "peak_rigid_vx": "peak |common vx| ({v})",
    "ratio_v": "ratio_v (y)",
    "ratio_h": "ratio_h (x)",
    "max_nonrigid_displacement": "max |non-rigid| (px), frames vouched for",
    "position_noise_px": "position noise (px per axis)",
    "max_nonrigid_noise_px": "max |non-rigid| from noise alone (px)",
    "nonrigid_at_noise": "own motion within noise",
    "peak_nonrigid_v_noise": "peak |non-rigid v| from noise alone, at most ({v})",
    "own_motion_split_px": "non-rigid moved by the split, up to (px)",
    "nonrigid_within_split": "own motion within split and noise",
}


def _velocity_unit(result) -> str:
    return str(getattr(result.motion, "attrs", {}).get("velocity_unit", "px/frame"))


def _motion_table(result) -> pd.DataFrame:
    """``peak_ratios`` with readable column names and their units (the report's table)."""
    v = _velocity_unit(result)
    t = result.peak_ratios
    if t is None or not len(t):
        return t
    unknown = _noise_unknown(t)
    for flag in ("nonrigid_at_noise", "nonrigid_within_split"):  # read as words, not a Python bool
        if flag in t:
            words = np.where(t[flag].astype(bool), "yes", "no")
            # False where no noise floor is known (peak_ratios): "no" read as "stands above its noise" on a 2-frame
            # scan; "within split" True stays yes (within the split alone), its "no" is not known either
            t = t.assign(**{flag: np.where(unknown & (words == "no"), "unknown", words)})
    return t.rename(columns={k: name.format(v=v) for k, name in MOTION_TABLE_NAMES.items()})


def _noise_unknown(pr) -> np.ndarray:
    """Per row of ``peak_ratios``, whether the particle's own motion cannot be weighed against its noise: no noise
    floor known (``max_nonrigid_noise_px`` NaN: too few frames, as a 2-energy scan) or no own motion measured.
    ``nonrigid_at_noise`` is False there for want of a floor, not a measured "above its noise"."""
    if "max_nonrigid_noise_px" not in pr:  # (folders written before it: every own motion as measured)
        return np.zeros(len(pr), bool)
    floor = pr["max_nonrigid_noise_px"].to_numpy(float)
    own = pr["max_nonrigid_displacement"].to_numpy(float)
    return ~(np.isfinite(floor) & np.isfinite(own))


def _motion_table_note(result) -> str:
    """The motion table's caption: what each column is (:func:`xanestrack.motion.peak_ratios`)."""
    v = _velocity_unit(result)
    return (
        "Each particle's motion over its frames vouched for only: frames not vouched for (flagged: its two position "
        "estimates disagree, or its position was filled in) do not count. Non-rigid: its displacement less the common "
        "one (the similarity fitted over the particles, at the particle's place); common: the displacement the common "
        f"motion gives it. Velocities are their derivatives across the frames ({v}); peak: the largest |value| over "
        "those frames, vertical (vy) and horizontal (vx). ratio_v = peak |non-rigid vy| / peak |common vy|, ratio_h = "
        "peak |non-rigid vx| / peak |common vx|: how fast the particle moves on its own against the field's motion "
        "(about 0: it moves with the electrode). max |non-rigid|: the largest non-rigid displacement, sqrt(dy^2 + "
        "dx^2), in px. In motion_summary.csv: peak_nonrigid_vy, peak_nonrigid_vx, peak_rigid_vy, peak_rigid_vx, "
        "ratio_v, ratio_h, max_nonrigid_displacement."
        + (
            " Their uncertainty: position noise, the particle's positions' noise per axis over its frames vouched for "
            "(from its own motion as measured, frame to frame); max |non-rigid| from noise alone, the largest own "
            "displacement that noise alone reaches over as many frames (of white noise that size, 95 % of scans stay "
            "below it); 'own motion within noise' where max |non-rigid| is not above it: that number is the noise's "
            "largest excursion, not a measured own motion; 'unknown' where no noise floor is known (too few frames, as "
            "two energies) or no own motion was measured, in 'own motion within split and noise' too where not within "
            "the split alone. Errors that wander slowly (a touching neighbour, the "
            "matrix) are not counted: near the floor, read it as uncertain. Peak |non-rigid v| from noise alone is an "
            "upper bound per axis (the positions' noise unsmoothed, 95 % of scans stay below it; the first and last "
            "frame's velocities, one-sided, twice as noisy as the central ones, counted as such): a peak above it is "
            "not noise. In motion_summary.csv: "
            "position_noise_px, max_nonrigid_noise_px, nonrigid_at_noise, peak_nonrigid_v_noise."
            if "max_nonrigid_noise_px" in result.peak_ratios
            else ""
        )
        + (
            " The split into common and own motion: non-rigid moved by the split, how far the particle's non-rigid "
            "motion moves over those frames when the common motion is fitted again with any one particle left out "
            "(where most particles move on their own and no majority moves together, the positions do not decide "
            "what is common); 'own motion within split and noise' where max |non-rigid| is not above that plus the "
            "noise's floor: it may not have moved on its own at all. The motion relative to one particle (rel_dy, "
            "rel_dx in tracks.csv) does not depend on it. In motion_summary.csv: own_motion_split_px, "
            "nonrigid_within_split."
            if "own_motion_split_px" in result.peak_ratios
            else ""
        )
    )


def write_report(folder, *, result=None) -> Path:
    """Write ``report.html`` and ``figures/`` into an output folder.

    Parameters
    ----------
    folder : path
        A folder written by :func:`xanestrack.results.write_results` (its ``run.json``
        gives the provenance).
    result : PipelineResult, optional
        The result written there, to save reading it back; the file is the same either way.

    Returns
    -------
    Path of report.html.
    """
    from jinja2 import Environment

    from .resolution import RESOLUTION_CHANGE_PX
    from .result import particle_summary
    from .results import read_results, read_run_info

    folder = Path(folder)
    if result is None:
        result = read_results(folder)
    run = read_run_info(folder)
    figdir = folder / "figures"
    figdir.mkdir(exist_ok=True)
    energies = result.energies_ev
    pixel_size_um = _pixel_size(run, result)
    captions = {}
    # each figure's files (PNG encoding, which releases the GIL, and its tables) are written by
    # two threads while the next figure is drawn (1024^2 stress-all, 36 particles, rebuilt from its
    # folder: 2.5-2.8 -> 1.7-1.9 s on this 2-core machine; report.html and figures/ identical)
    with ThreadPoolExecutor(2) as pool:  # on an error, the files under way are finished before it propagates
        pending = {}

        def emit(name: str, fig: Figure) -> None:
            captions[name] = html.escape(fig.caption)
            pending[name] = pool.submit(_emit_files, figdir, name, fig)

        emit("overview", overview_figure(result, pixel_size_um=pixel_size_um))
        emit("chemistry", chemistry_figure(result, pixel_size_um=pixel_size_um))
        emit("whiteline", whiteline_figure(result, pixel_size_um=pixel_size_um))
        emit("uncertainty", uncertainty_figure(result, pixel_size_um=pixel_size_um))
        res_fig = resolution_figure(result)
        if res_fig.svg is not None:
            emit("resolution", res_fig)
        widths_fig = edge_width_figure(result)
        if widths_fig.svg is not None:
            emit("edge_widths", widths_fig)
        clustered = bool(result.chemistry and "cluster_mean_spectra" in result.chemistry)
        if clustered:
            emit("clusters", cluster_map_figure(result, pixel_size_um=pixel_size_um))
            emit("cluster_spectra", cluster_spectra_figure(result))
        emit("motion", motion_figure(result))
        limits = _e50_limits(result)
        summ = particle_summary(result).set_index("particle")
        fracs = _fraction_means(result).set_index("particle", drop=False)
        sel = _energy_selection(len(energies))
        pblocks = []
        for p in result.particles:
            name = f"particle_{p.particle:03d}"
            emit(name, particle_figure(result, p.particle, e50_limits=limits, pixel_size_um=pixel_size_um))
            emit(f"{name}_spectrum", spectrum_figure(result, p.particle))
            info, flags = _particle_text(p, summ.loc[p.particle], result.tracks, fracs.loc[p.particle])
            pblocks.append(
                dict(
                    id=p.particle,
                    fig=name,
                    spectrum=f"{name}_spectrum",
                    fig_caption=captions[name],
                    spectrum_caption=captions[f"{name}_spectrum"],
                    info=html.escape(info),
                    flags=html.escape(flags),
                    energies=", ".join(f"{energies[k]:.1f}" for k in sel),
                )
            )
        uris = {name: f.result() for name, f in pending.items()}
    b64 = {name: uri for name, uri in uris.items() if uri is not None}
    for block in pblocks:
        block["fig"], block["spectrum"] = b64[block["fig"]], b64.get(block["spectrum"], "")

    # the report's own time is recorded after it is written: a report rebuilt from the folder leaves it out too
    stages = {k: v for k, v in run.get("timings_s", result.timings).items() if k != "report"}
    timings = pd.DataFrame(sorted(stages.items()), columns=["stage", "seconds"])
    inputs = pd.DataFrame(sorted(run.get("input_checksums_sha256", {}).items()), columns=["file", "sha256"])
    if not len(inputs):
        inputs = pd.DataFrame({"input": run.get("inputs", [])})
    e = np.asarray(energies)
    params = result.options.to_dict()
    run_table = pd.DataFrame(
        [
            ("xanestrack version", run.get("version")),
            ("command", run.get("command", "")),
            ("reader", run.get("reader", run.get("inputs", ""))),
            ("energies", f"{len(e)} from {e.min():.1f} to {e.max():.1f} eV" if len(e) else "none"),
            (
                "detector / segmenter",
                " / ".join(
                    f"{run.get(k, 'classical')}" + (f" ({run[k + '_model']} model)" if run.get(k + "_model") else "")
                    for k in ("detector", "segmenter")
                ),
            ),
            (
                "detection",
                _detection_text(
                    params.get("detect_every", 1),
                    (params.get("detect") or {}).get("rescue_small", False),
                    params.get("match"),
                ),
            ),
            ("positions", _positions_text(params)),
            ("energy calibration", _calibration_text(run.get("energy_calibration"))),
            *_redone_rows(result),
            (
                "quality masks",
                f"edge jump > {params.get('edge_jump_threshold', 5.0):g} x pre-edge noise; "
                + (run.get("quality", {}).get("residual_rule") or "normalisation residual not an outlier"),
            ),
        ],
        columns=["", "value"],
    )
    run_table.loc[len(run_table)] = (
        "pixel size",
        f"{pixel_size_um:g} \u00b5m ({_pixel_size_origin(run)}; scale bars on the images)"
        if pixel_size_um is not None
        else "pixel size unknown (the input gives none): no scale bar, lengths in px",
    )
    if run.get("input_notes"):
        run_table.loc[len(run_table)] = ("input", "; ".join(run["input_notes"]))
    if result.notes:
        run_table.loc[len(run_table)] = ("notes", "; ".join(result.notes))
    maxnr = _max_nonrigid(result)
    summary = (
        f"{len(result.particles)} particles tracked through {len(e)} energies ({e.min():.1f}-{e.max():.1f} eV)."
        if len(e)
        else "no energies"
    )
    if len(maxnr):
        summary += _own_motion_summary(result, maxnr)
    vt = vouching_table(result)
    vouch_text = (
        "Every position is measured twice, independently: by correlating the particle's window (its optical density, "
        "smoothed and less its level: the edge estimate) with a reference "
        f"frame and by the centre of mass of its segmented mask. A frame is vouched for when the two agree within {params.get('agreement_px', 0.5)} px; "
        "frames that are not are flagged 'disagree' in tracks.csv and left out of the consensus mask."
    )
    if params.get("density_voucher", False):
        vouch_text += (
            " For a particle whose centre of mass confirms no frame, a third estimate may ('by density'): the correlation "
            "of its optical density in windows centred on the outline's estimate, in frames where its mask is usable and "
            "its surroundings move with it (else both correlations are pulled alike); the outlines of masks can move "
            "across the absorption edge on real frames."
        )
    if "by motion" in vt.columns:
        vouch_text += (
            " Where the centre of mass left a short run of frames unvouched between frames it vouched for (a chemically "
            "mixed particle is outlined in part across the edge), the scan's motion may vouch ('by motion'): the "
            f"outline's estimate within {params.get('agreement_px', 0.5)} px of the other particles' motion in that frame "
            "plus the particle's own, interpolated from the frames on either side."
        )
    if any((np.asarray(p.frame_flags).astype(int) & FRAME_FLAGS["overlap"]).any() for p in result.particles):
        vouch_text += (
            " Frames flagged 'overlap' are vouched for, but another tracked particle lies over the particle there "
            "(its outline, placed where that particle was in the frame, covers more of this one's, grown by 2 px, "
            "than in its reference frame): their spectra are both particles', and they are left out of its XANES."
        )
    bad = vt[vt["vouched frames"] == 0]["particle"].tolist() if len(vt) else []
    if bad:
        vouch_text += (
            f" Not vouched for in any frame: particle{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}."
        )
    rej = _visible_rejected(result)
    page = (
        Environment(autoescape=False)
        .from_string(_TEMPLATE)
        .render(
            style=_STYLE,
            summary=html.escape(summary),
            figs=b64,
            traj_scale=TRAJ_SCALE,
            width_limit=f"{RESOLUTION_CHANGE_PX:g}",
            elo=f"{limits[0]:.1f}",
            ehi=f"{limits[1]:.1f}",
            element=_k_edge_element(limits),
            norm_bias=_normalisation_bias(run, result),
            rejected=_table_html(rej, "{:.1f}") if len(rej) else "",
            ratios=_table_html(_motion_table(result)),
            ratios_note=html.escape(_motion_table_note(result)) if len(result.peak_ratios) else "",
            caps=captions,
            particles=pblocks,
            vouch_text=html.escape(vouch_text),
            vouch_table=_table_html(vt, "{:.2f}") if len(vt) else "",
            ref_particle=result.motion.attrs.get("reference_particle", ""),
            fitted_on=(
                result.similarity.attrs.get("fitted_on", "vouched positions")
                if result.similarity is not None
                else "vouched positions"
            ),
            run_table=run_table.to_html(index=False, border=0),
            timings=_table_html(timings, "{:.2f}"),
            inputs=inputs.to_html(index=False, border=0),
            params=html.escape(json.dumps(params, indent=1, default=str)),
            quality_table=_table_html(quality_table(result), "{:.1f}"),
            resolved=res_fig.svg is not None,
            clustered=clustered,
            cluster_table=_table_html(_cluster_table(result), "{:.3f}") if clustered else "",
            cluster_note=html.escape(_cluster_text(result)) if clustered else "",
            separation_note=html.escape(_separation_text()) if clustered else "",
        )
    )
    out = folder / "report.html"
    tmp = folder / ".report.html.tmp"
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except BaseException:  # the disk full, say: the old report stays, and no half-written copy beside it
        tmp.unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------- the series page
def series_figure(table: pd.DataFrame) -> Figure:
    """Chemistry and position of every particle through an operando series (one panel each).

    ``table`` is the series table (``run_series``): per scan and particle ``mean_e50``,
    ``oxidised_fraction`` and ``own_dy, own_dx``
    (:func:`xanestrack.series.series_own_displacement`: in the series' common pixels, less the scan's common motion,
    its scale and rotation against the first scan included), or where those are missing ``y0, x0`` and the scan's
    ``common_dy, common_dx`` (each scan's pixels then taken as the common ones). Table
    ``series_own_displacement``: each particle's displacement since its first scan, less the common one, in common
    pixels (``own_displacement_common_px``) and, where ``table.attrs["pixel_size_um"]`` gives their size, in um.
    """
    if "own_dy" not in table or "own_dx" not in table:
        from .series import series_own_displacement

        table = series_own_displacement(table)
    px_um = table.attrs.get("pixel_size_um")
    px_um = float(px_um) if px_um is not None and np.isfinite(px_um) and px_um > 0 else None
    unit = f"common px, {px_um:g} um" if px_um else "common px"
    fig = SvgFigure(1200, 300)
    panels = [
        fig.axes(60 + k * 400, 14, 320, 230, xlabel="scan", ylabel=label)
        for k, label in enumerate(
            ("mean edge energy (eV)", "oxidised (Ni3+) fraction", f"own displacement since first scan ({unit})")
        )
    ]
    rows = []
    for k, (pid, g) in enumerate(table.groupby("particle")):
        g = g.sort_values("scan")
        c = COLORS[k % len(COLORS)]
        sc = g["scan"].to_numpy(float)
        nr = np.hypot(g["own_dy"], g["own_dx"]).to_numpy(float)
        for ax, v in zip(panels, (g["mean_e50"].to_numpy(float), g["oxidised_fraction"].to_numpy(float), nr)):
            ax.line(sc, v, color=c, width=1, label=f"p{pid}" if ax is panels[0] else None)
            ax.points(sc, v, color=c, r=2)
        rows += [(int(pid), int(s_), float(d)) for s_, d in zip(sc, nr)]
    panels[0].legend(ncol=max(1, int(np.ceil(table["particle"].nunique() / 10))))
    t = pd.DataFrame(rows, columns=["particle", "scan", "own_displacement_common_px"])
    if px_um:
        t["own_displacement_um"] = t["own_displacement_common_px"] * px_um
    return Figure(fig.to_svg(), None, {"series_own_displacement": t})


_SERIES_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xanestrack series</title>
<style>{{ style }}</style></head><body>
<h1>Operando series</h1>
<p>{{ n_scans }} scans, {{ n_particles }} particles followed through the series.</p>
{% for r in remarks %}<p>{{ r }}</p>{% endfor %}
<figure><img alt="series" src="{{ fig }}"><figcaption>Per particle through the scans: mean edge energy, oxidised fraction of the
linear combination fit, and its own displacement since its first scan, in the series' common pixels (less the scan's common
motion: its offset and, where its particles share them, its scale and rotation against the first scan, scale_vs_first and
rotation_vs_first_deg in series.csv; a scale is the optics' or the electrode's uniform strain, which positions cannot tell
apart: own_dy_with_scale, own_dx_with_scale in series.csv keep it).</figcaption></figure>
<h2>Mean edge energy (eV) per particle and scan</h2>
{{ pivot }}
{% if scan_notes %}<h2>Notes of each scan</h2>
{% for name, notes in scan_notes %}<h3>{{ name }}</h3><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
{% endfor %}{% endif %}
</body></html>
"""


def write_series_report(table: pd.DataFrame, out_dir) -> Path:
    """``series_report.html`` (and ``series.svg`` and its table) of an operando series, in ``out_dir``."""
    from jinja2 import Environment

    out = Path(out_dir)
    fig = series_figure(table)
    svg = fig.svg.encode("utf-8")
    (out / "series.svg").write_bytes(svg)
    _write_tables(out, fig.tables)
    remarks = []
    if "link_method" in table:
        from .linking import NOT_JOINED

        why = {
            "ambiguous": "the particles agree on more than one offset, or on none, and the images did not single one "
            "out",
            "images not compared": "the particles agree on more than one offset, or on none, and the images could "
            "not be compared (a scan's reference image, frame0_binned.npy in its folder under scans/, is missing or "
            "unreadable: process that scan again)",
            "vote unconfirmed": "particles agree on an offset, but most of those it brings where the two frames "
            "overlap find no partner there (particles of one size agreeing by chance), and the images did not single "
            "one out",
            "prior contradicted": "the offset the images gave was contradicted by the particles",
            "prior unconfirmed": "the images gave an offset, but too few of the particles it brings into view agree "
            "with it (within a few px: particles moving on their own by more than that between scans, or few in "
            "common, or an offset beyond the particles' search of 150 px or a quarter of the frame)",
        }
        bad = table.loc[table["link_method"].isin(NOT_JOINED), ["scan", "link_method"]].drop_duplicates()
        for how, g in bad.groupby("link_method", sort=False):
            scans = sorted(g["scan"].unique())
            remarks.append(
                f"Scan{'s' if len(scans) > 1 else ''} {', '.join(map(str, scans))} ({how}): the offset from the "
                f"previous scan could not be told: {why.get(how, how)}; their particles were given new ids, not linked."
            )
    for name, msg in table.attrs.get("failed", []):
        remarks.append(f"Scan {name} was not processed: {msg}")
    if "n_frames" in table:
        from .pipeline import PipelineOptions

        need = PipelineOptions().min_xanes_energies
        few = table.loc[table["n_frames"] < need].groupby("scan")["n_frames"].max()
        if len(few):
            # "Scans 2 have fewer than 8 energies" read for one scan, by its number alone
            names = dict(zip(table["scan"], table["scan_name"])) if "scan_name" in table else {}
            label = lambda s, n: f"{names.get(s, s)} ({int(n)} energ{'y' if n == 1 else 'ies'})"  # noqa: E731
            remarks.append(
                f"Scan{'s' if len(few) > 1 else ''} {', '.join(label(s, n) for s, n in few.items())} "
                f"ha{'ve' if len(few) > 1 else 's'} fewer than {need} energies: positions and sizes only, no XANES."
            )
    from .series import scan_notes, series_notes

    remarks += [n[0].upper() + n[1:] + "." for n in series_notes(table)]
    piv = table.pivot_table(index="particle", columns="scan", values="mean_e50")
    page = (
        Environment(autoescape=True)
        .from_string(_SERIES_TEMPLATE)
        .render(
            style=_STYLE,
            n_scans=table["scan"].nunique(),
            n_particles=table["particle"].nunique(),
            remarks=remarks,
            scan_notes=scan_notes(out),
            fig=_data_uri(svg, "image/svg+xml"),
            pivot=_Markup(piv.to_html(float_format=lambda v: f"{v:.2f}")),
        )
    )
    path = out / "series_report.html"
    tmp = out / ".series_report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    from .outdir import add_to_marker

    add_to_marker(
        out, [n for n in ("series_report.html", "series.svg", "series_own_displacement.csv") if (out / n).exists()]
    )
    return path


def _Markup(text: str):
    from markupsafe import Markup

    return Markup(text)
