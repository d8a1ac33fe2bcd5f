"""Phase mapping: PCA, NMF and k-means on the normalised per-pixel spectra of many particles.

The spectra of all particles are analysed together, so that a cluster or a component
means the same chemistry in every particle. The data are a matrix ``(n_energies,
n_pixels)`` of normalised spectra (:func:`collect_spectra` builds it from per-particle
maps and remembers where each pixel came from; :func:`to_maps` puts per-pixel values
back into per-particle maps). Every method can be restricted to an energy window (the
edge and whiteline carry the chemistry; the far post-edge mostly noise).

- :func:`pca`: principal components and the scree (explained variance ratio), which says
  how many independent spectral shapes the data hold (two phases and noise: one
  component above the noise floor of the mean-centred data).
- :func:`nmf`: non-negative matrix factorisation into ``k`` non-negative spectra and
  non-negative weights; with normalised spectra the weights, divided by their sum, are
  phase fractions.
- :func:`kmeans`: hard clustering of the spectra; cluster mean spectra and, per particle,
  cluster maps and fractions (:func:`cluster_fractions`).

Clusters and NMF components are ordered, so that the result does not depend on the
solver's internal numbering: by the energy where the spectrum (centre or component)
first reaches half of its maximum in the window, lowest first (for Ni K-edge spectra:
the most reduced first).

All of it is deterministic for a given ``seed``. scikit-learn provides the solvers.

References
----------
F. Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12 (2011) 2825.
F. Meirer et al., Three-dimensional imaging of chemical phase transformations at the
nanoscale with full-field transmission X-ray microscopy, J. Synchrotron Rad. 18 (2011) 773,
doi:10.1107/S0909049511019364 (PCA + k-means of TXM-XANES spectra).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PixelSpectra",
    "PCAResult",
    "NMFResult",
    "ClusterResult",
    "collect_spectra",
    "to_maps",
    "pca",
    "nmf",
    "kmeans",
    "cluster_fractions",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelSpectra:
    """Normalised spectra of the pixels of several particles, one column per pixel.

    Attributes
    ----------
    spectra : ndarray (n_energies, n_pixels) float32
    particle : ndarray (n_pixels,) int
        Particle id of each pixel.
    y, x : ndarray (n_pixels,) int
        Row and column of each pixel in its particle's map.
    shapes : dict
        Particle id -> (h, w) of its maps.
    """

    spectra: np.ndarray
    particle: np.ndarray
    y: np.ndarray
    x: np.ndarray
    shapes: dict


@dataclass(frozen=True)
class PCAResult:
    """Result of :func:`pca` (``k`` components, energies of the window).

    ``explained_variance_ratio`` is the scree: the fraction of the variance of the
    mean-centred spectra carried by each component, decreasing.
    """

    energies_ev: np.ndarray  # (n_window,)
    mean: np.ndarray  # (n_window,)
    components: np.ndarray  # (k, n_window), unit norm
    explained_variance: np.ndarray  # (k,)
    explained_variance_ratio: np.ndarray  # (k,)
    scores: np.ndarray  # (k, n_pixels)


@dataclass(frozen=True)
class NMFResult:
    """Result of :func:`nmf`.

    ``components`` are scaled to the mean level of the data over the window, so that
    for normalised spectra a pixel's ``weights`` sum to about 1; ``fractions`` are the
    weights divided by their sum (exactly 1; NaN for an all-zero pixel).
    """

    energies_ev: np.ndarray  # (n_window,)
    components: np.ndarray  # (k, n_window)
    weights: np.ndarray  # (k, n_pixels)
    fractions: np.ndarray  # (k, n_pixels)
    reconstruction_rms: float
    n_clipped: int  # negative values set to 0 before the factorisation


@dataclass(frozen=True)
class ClusterResult:
    """Result of :func:`kmeans`.

    ``centres`` live on the window's energies, ``mean_spectra`` (the mean of each
    cluster's members) on all energies of the input, for plotting and for LCF.
    """

    energies_ev: np.ndarray  # (n_window,)
    labels: np.ndarray  # (n_pixels,) int, 0..k-1
    centres: np.ndarray  # (k, n_window)
    mean_spectra: np.ndarray  # (k, n_energies)
    counts: np.ndarray  # (k,) pixels per cluster
    inertia: float  # sum of squared distances to the centres (in the space clustered)


# --------------------------------------------------------------------------- data


def collect_spectra(norms, masks, *, particles=None) -> PixelSpectra:
    """Stack the masked pixels of several particles into one spectra matrix.

    Parameters
    ----------
    norms : sequence of ndarray (n_energies, h_i, w_i)
        Normalised spectra maps, one per particle, all on the same energies.
    masks : sequence of ndarray (h_i, w_i) bool
        Pixels to take. Pixels with a non-finite value at any energy are left out.
    particles : sequence of int, optional
        Particle ids (default ``0, 1, ...``).

    Returns
    -------
    PixelSpectra

    Raises
    ------
    ValueError
        If the lists differ in length, a mask does not match its map, the maps have
        different numbers of energies or no pixel is left.
    """
    norms, masks = list(norms), list(masks)
    if len(norms) != len(masks) or not norms:
        raise ValueError(f"norms and masks: give one mask per map, got {len(norms)} maps and {len(masks)} masks")
    ids = list(range(len(norms))) if particles is None else [int(p) for p in particles]
    if len(ids) != len(norms) or len(set(ids)) != len(ids):
        raise ValueError(f"particles: give {len(norms)} distinct ids, got {ids}")
    n_e = np.asarray(norms[0]).shape[0]
    cols, pid, ys, xs, shapes = [], [], [], [], {}
    for p, nm, m in zip(ids, norms, masks, strict=True):
        nm, m = np.asarray(nm), np.asarray(m, bool)
        if nm.ndim != 3 or nm.shape[0] != n_e or nm.shape[1:] != m.shape:
            raise ValueError(
                f"particle {p}: map {nm.shape} and mask {m.shape} do not match; expected ({n_e}, h, w) and (h, w)"
            )
        use = m & np.all(np.isfinite(nm), axis=0)
        yy, xx = np.nonzero(use)
        cols.append(nm[:, yy, xx].astype(np.float32))
        pid.append(np.full(yy.size, p))
        ys.append(yy)
        xs.append(xx)
        shapes[p] = m.shape
    spectra = np.concatenate(cols, axis=1)
    if spectra.shape[1] == 0:
        raise ValueError("no finite pixel inside the masks: nothing to analyse")
    return PixelSpectra(spectra, np.concatenate(pid), np.concatenate(ys), np.concatenate(xs), shapes)


def to_maps(values, pixels: PixelSpectra, *, fill=np.nan) -> dict:
    """Per-pixel values back into per-particle maps.

    Parameters
    ----------
    values : ndarray (n_pixels,) or (k, n_pixels)
    pixels : PixelSpectra
    fill : scalar
        Value outside the pixels analysed (NaN; use -1 for integer labels).

    Returns
    -------
    dict
        Particle id -> ndarray (h, w) or (k, h, w), dtype of ``values`` (float when
        ``fill`` is NaN and ``values`` are integers).
    """
    v = np.asarray(values)
    if v.shape[-1] != pixels.particle.size or v.ndim not in (1, 2):
        raise ValueError(f"values: expected ({pixels.particle.size},) or (k, {pixels.particle.size}), got {v.shape}")
    dtype = np.result_type(v.dtype, np.asarray(fill).dtype)
    out = {}
    for p, (h, w) in pixels.shapes.items():
        sel = pixels.particle == p
        m = np.full(v.shape[:-1] + (h, w), fill, dtype=dtype)
        m[..., pixels.y[sel], pixels.x[sel]] = v[..., sel]
        out[p] = m
    return out


def _window(spectra, energies_ev, energy_window, minimum):
    x = np.asarray(spectra, dtype=np.float64)
    e = np.asarray(energies_ev, dtype=float)
    if x.ndim != 2 or e.ndim != 1 or x.shape[0] != e.size:
        raise ValueError(
            f"spectra must be (n_energies, n_pixels) with energies (n_energies,): got {x.shape} and {e.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("spectra contain NaN/inf: leave those pixels out (collect_spectra does)")
    if energy_window is None:
        sel = np.ones(e.size, bool)
    else:
        lo, hi = energy_window
        sel = (e >= lo) & (e <= hi)
        if sel.sum() < minimum:
            raise ValueError(
                f"energy_window {lo}-{hi} eV holds {int(sel.sum())} energies, need {minimum}; "
                f"the spectra cover {e[0]:.1f}-{e[-1]:.1f} eV"
            )
    return x, e, sel


def _rise_energy(rows, e):
    """Energy (k,) where each spectrum first reaches half of its maximum: the edge position."""
    rows = np.nan_to_num(np.asarray(rows, float), nan=-np.inf)
    half = 0.5 * rows.max(axis=1, keepdims=True)
    above = rows >= half
    i = np.argmax(above, axis=1)
    out = e[i].astype(float)
    j = i > 0
    a, b = rows[j, i[j] - 1], rows[j, i[j]]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(b > a, (half[j, 0] - a) / (b - a), 0.0)
    out[j] = e[i[j] - 1] + np.clip(t, 0, 1) * (e[i[j]] - e[i[j] - 1])
    return out


def _order_by_edge(rows, e):
    """Order (k, n) spectra by their edge position, lowest first."""
    return np.argsort(_rise_energy(rows, e), kind="stable")


# --------------------------------------------------------------------------- methods


def pca(spectra, *, energies_ev, n_components: int | None = None, energy_window=None) -> PCAResult:
    """Principal components of normalised spectra and their scree.

    Parameters
    ----------
    spectra : ndarray (n_energies, n_pixels)
        Normalised spectra, finite.
    energies_ev : ndarray (n_energies,)
    n_components : int, optional
        Components kept (default: all, ``min(n_window, n_pixels)``).
    energy_window : (float, float), optional
        Absolute energy range in eV (inclusive) to analyse; default all energies.

    Returns
    -------
    PCAResult

    Notes
    -----
    The spectra are mean-centred (no scaling: every energy keeps its noise level). The
    sign of each component is fixed (largest absolute loading positive), so the result
    is deterministic.
    """
    from sklearn.decomposition import PCA

    x, e, sel = _window(spectra, energies_ev, energy_window, 2)
    data = x[sel].T  # (n_pixels, n_window)
    kmax = min(data.shape)
    k = kmax if n_components is None else int(n_components)
    if not 1 <= k <= kmax:
        raise ValueError(
            f"n_components must be 1..{kmax} for {data.shape[0]} pixels x {data.shape[1]} energies, got {n_components}"
        )
    model = PCA(n_components=k, svd_solver="full").fit(data)
    comps = model.components_.copy()
    sign = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
    comps *= sign[:, None]
    scores = (data - model.mean_) @ comps.T
    return PCAResult(
        energies_ev=e[sel],
        mean=model.mean_,
        components=comps,
        explained_variance=model.explained_variance_,
        explained_variance_ratio=model.explained_variance_ratio_,
        scores=scores.T,
    )


def nmf(
    spectra,
    *,
    energies_ev,
    n_components: int,
    energy_window=None,
    seed: int = 0,
    init: str = "kmeans",
    max_iter: int = 1000,
) -> NMFResult:
    """Non-negative factorisation ``spectra ~ components.T @ weights``.

    Parameters
    ----------
    spectra : ndarray (n_energies, n_pixels)
        Normalised spectra, finite. Negative values (pre-edge noise) are set to 0.
    energies_ev : ndarray (n_energies,)
    n_components : int
        Number of phases ``k`` (>= 1).
    energy_window : (float, float), optional
        Absolute energy range in eV to analyse.
    seed : int
        Seed of the k-means initialisation.
    init : {"kmeans", "nndsvda"}
        Start from the k-means cluster centres (and their memberships), or from the
        NNDSVDa decomposition of the data.
    max_iter : int

    Returns
    -------
    NMFResult

    Notes
    -----
    Coordinate descent on the Frobenius norm (scikit-learn ``NMF``). The factorisation
    of XANES spectra is not unique: edge spectra are positive almost everywhere, so many
    pairs of non-negative "phases" span the data equally well, and a generic start
    (NNDSVDa) converges to a mean-like and a difference-like component (measured on two
    phases in known regions: 25 % of the pixels assigned right, against 100 % from the
    k-means start). Started
    from the k-means centres, the solution stays at the spectra of the purest regions,
    which is what a phase map needs when such regions exist.
    NMF is unique only up to a scale per component: each component is scaled to the
    mean level of the data over the window, so that for normalised spectra of mixtures
    the weights of a pixel sum to about 1 and ``fractions`` read as phase fractions.
    Components are ordered by edge position, lowest first.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    x, e, sel = _window(spectra, energies_ev, energy_window, 2)
    k = int(n_components)
    if not 1 <= k <= min(int(sel.sum()), x.shape[1]):
        raise ValueError(f"n_components must be 1..{min(int(sel.sum()), x.shape[1])}, got {n_components}")
    data = x[sel].T
    n_clipped = int((data < 0).sum())
    data = np.clip(data, 0.0, None)
    if init == "kmeans":
        km = kmeans(np.clip(x, 0.0, None), energies_ev=e, n_clusters=k, energy_window=energy_window, seed=seed)
        h0 = np.clip(km.centres, 1e-6, None)
        w0 = np.full((data.shape[0], k), 0.1 / k)
        w0[np.arange(data.shape[0]), km.labels] = 0.9
        model = NMF(n_components=k, init="custom", solver="cd", max_iter=max_iter, tol=1e-4)
        with warnings.catch_warnings():  # reported once below, with the residual
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = model.fit_transform(data, W=w0, H=h0)
    elif init == "nndsvda":
        model = NMF(n_components=k, init="nndsvda", solver="cd", random_state=seed, max_iter=max_iter, tol=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = model.fit_transform(data)  # (n_pixels, k)
    else:
        raise ValueError(f"init must be 'kmeans' or 'nndsvda', got {init!r}")
    h = model.components_  # (k, n_window)
    level = data.mean()
    scale = np.where(h.mean(axis=1) > 0, h.mean(axis=1) / level, 1.0)
    h = h / scale[:, None]
    w = w * scale[None, :]
    order = _order_by_edge(h, e[sel])
    h, w = h[order], w[:, order]
    total = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, w / total, np.nan)
    rms = float(np.sqrt(np.mean((data - w @ h) ** 2)))
    if model.n_iter_ >= max_iter:
        logger.warning("NMF did not converge in %d iterations (rms %.4g)", max_iter, rms)
    return NMFResult(e[sel], h, w.T, frac.T, rms, n_clipped)


def kmeans(
    spectra,
    *,
    energies_ev,
    n_clusters: int,
    energy_window=None,
    seed: int = 0,
    n_init: int = 10,
    n_pca: int | None = None,
) -> ClusterResult:
    """k-means clustering of normalised spectra.

    Parameters
    ----------
    spectra : ndarray (n_energies, n_pixels)
        Normalised spectra, finite.
    energies_ev : ndarray (n_energies,)
    n_clusters : int
        Number of clusters ``k`` (>= 1).
    energy_window : (float, float), optional
        Absolute energy range in eV to cluster on; mean spectra cover all energies.
    seed : int
        Seed of the k-means++ initialisations.
    n_init : int
        Independent initialisations; the one with the least inertia is kept.
    n_pca : int, optional
        Cluster on the scores of the first ``n_pca`` principal components instead of
        the spectra (denoises; the noise of the discarded components does not enter
        the distances).

    Returns
    -------
    ClusterResult
        Labels ordered by edge position of the centres, lowest first.
    """
    from sklearn.cluster import KMeans

    x, e, sel = _window(spectra, energies_ev, energy_window, 2)
    k = int(n_clusters)
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"n_clusters must be 1..{x.shape[1]} (the number of pixels), got {n_clusters}")
    data = x[sel].T
    feats = data
    if n_pca is not None:
        p = pca(x, energies_ev=e, n_components=n_pca, energy_window=energy_window)
        feats = p.scores.T
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(feats)
    raw = model.labels_
    empty_w, empty_all = np.full(data.shape[1], np.nan), np.full(x.shape[0], np.nan)
    centres = np.stack([data[raw == j].mean(axis=0) if (raw == j).any() else empty_w for j in range(k)])
    order = _order_by_edge(centres, e[sel])
    relabel = np.empty(k, int)
    relabel[order] = np.arange(k)
    labels = relabel[raw]
    means = np.stack([x[:, labels == j].mean(axis=1) if (labels == j).any() else empty_all for j in range(k)])
    counts = np.bincount(labels, minlength=k)
    return ClusterResult(e[sel], labels, centres[order], means, counts, float(model.inertia_))


def cluster_fractions(labels, particle, *, n_clusters: int):
    """Fraction of each particle's pixels in each cluster, a tidy table.

    Parameters
    ----------
    labels : ndarray (n_pixels,) int
        Cluster of each pixel (0..n_clusters-1; negative values are ignored).
    particle : ndarray (n_pixels,) int
        Particle of each pixel (``PixelSpectra.particle``).
    n_clusters : int

    Returns
    -------
    DataFrame
        Columns ``particle, cluster, n_pixels, fraction``; one row per particle and
        cluster (fraction 0 included), fractions of a particle sum to 1.
    """
    import pandas as pd

    labels, particle = np.asarray(labels), np.asarray(particle)
    if labels.shape != particle.shape:
        raise ValueError(f"labels {labels.shape} and particle {particle.shape} must have the same shape")
    rows = []
    for p in np.unique(particle):
        lab = labels[(particle == p) & (labels >= 0)]
        counts = np.bincount(lab, minlength=n_clusters)[:n_clusters]
        total = max(int(counts.sum()), 1)
        rows += [(int(p), j, int(counts[j]), counts[j] / total) for j in range(n_clusters)]
    return pd.DataFrame(rows, columns=["particle", "cluster", "n_pixels", "fraction"])
