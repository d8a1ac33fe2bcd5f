"""The figure that says which edge-energy differences are resolved (SVG, for the report).

Presentation only: it draws the tables of :func:`.uncertainty.region_edge_energies` and
:func:`.uncertainty.resolved_differences`; it computes nothing new.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resolution_figure"]


def resolution_figure(table, pairs, *, k: float = 2.0, width: float = 760.0) -> str:
    """Edge energies of regions with their errors, and which differences are resolved.

    Left: each region's mean E50 with its 1-sigma (thick) and k-sigma (thin) error bar.
    Right: the matrix of ``z = |delta| / sigma_delta`` between every pair (colour, capped
    at ``2 k``), a dot where the difference is resolved (``z > k``).

    Parameters
    ----------
    table : DataFrame
        :func:`~xanestrack.chemistry.uncertainty.region_edge_energies` (of one or several
        particles, concatenated; one row per region).
    pairs : DataFrame
        :func:`~xanestrack.chemistry.uncertainty.resolved_differences` of ``table``.
    k : float
        The threshold used for ``pairs``.
    width : float
        Figure width in pixels.

    Returns
    -------
    str
        The SVG text.
    """
    from matplotlib import colormaps

    from ..svgplot import SvgFigure

    n = len(table)
    if n == 0:
        raise ValueError("table: no region to draw")
    labels = list(dict.fromkeys(list(pairs["label_a"]) + list(pairs["label_b"]))) if len(pairs) else ["0"]
    if len(labels) != n:
        labels = [str(i) for i in range(n)]
    e = table["e50_ev"].to_numpy(float)
    s = table["sigma_ev"].to_numpy(float)
    height = 60 + 18 * max(n, 6)
    fig = SvgFigure(width, height)
    half = width / 2
    lo = float(np.nanmin(e - k * s)) if np.isfinite(e - k * s).any() else 0.0
    hi = float(np.nanmax(e + k * s)) if np.isfinite(e + k * s).any() else 1.0
    span = max(hi - lo, 0.1)
    # room on the left of the data for the region labels
    ax = fig.axes(
        40,
        20,
        half - 60,
        height - 60,
        xlabel="E50 (eV)",
        xlim=(lo - 0.45 * span, hi + 0.05 * span),
        ylim=(n - 0.5, -0.5),
        title=f"region means, 1 and {k:g} sigma",
    )
    for i in range(n):
        ax.text(lo - 0.43 * span, i + 0.15, labels[i], size=9)
        if not (np.isfinite(e[i]) and np.isfinite(s[i])):
            continue
        ax.line([e[i] - k * s[i], e[i] + k * s[i]], [i, i], color="#999999", width=1.0)
        ax.line([e[i] - s[i], e[i] + s[i]], [i, i], color="black", width=2.5)
        ax.points([e[i]], [i], color="black", r=2.5)
    z = np.zeros((n, n))
    resolved = np.zeros((n, n), bool)
    for a, b, zz, r in zip(pairs["a"], pairs["b"], pairs["z"], pairs["resolved"], strict=True):
        z[a, b] = z[b, a] = min(float(zz), 2 * k)
        resolved[a, b] = resolved[b, a] = bool(r)
    cmap = colormaps["viridis"]
    rgb = (np.asarray(cmap(z / (2 * k)))[..., :3] * 255).astype(np.uint8)
    side = min(half - 90, height - 60)
    title = f"|delta| / sigma (regions in the order left), dot: > {k:g}"
    mx = fig.axes(half + 20, 20, side, side, xlim=(-0.5, n - 0.5), ylim=(n - 0.5, -0.5), title=title)
    mx.image(rgb, extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    yy, xx = np.nonzero(resolved)
    if yy.size:
        mx.points(xx, yy, color="white", r=3.0)
    fig.colorbar(half + 30 + side, 20, 12, side, cmap="viridis", vmin=0.0, vmax=2 * k, label="z")
    return fig.to_svg()
