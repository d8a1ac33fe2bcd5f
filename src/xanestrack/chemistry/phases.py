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
- :func:`interface_clusters`: the clusters that are not phases but the resolution mixing two
  of them, a thin band of pixels on their boundary whose spectra are mixes of theirs.

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
    "InterfaceCluster",
    "interface_clusters",
    "pair_separation",
]

logger = logging.getLogger(__name__)

#: px. A cluster's pixel lies across the boundary of two others (:func:`interface_clusters`) when the nearest pixel
#: of one and the nearest of the other, in its particle, are this far at most through it (their distances added): a
#: band up to 4 px across. A sharp front blurred by the 1 px smoothing alone (``xanes_smoothing``) gave a band 1-2
#: px across (the false "phase" of a NiO-core / LiNiO2-shell particle clustered over 8330-8370 eV: 124 pixels, all
#: within 1.0 px of the true front); with an optical blur of 1 px more, the band cut at 20-80 % is 2.4 px across, its
#: noisy edges wider (3 px from one side and 1-2 from the other). A layer 5 px across or more is a region of its own
INTERFACE_MAX_WIDTH_PX = 5.0
#: the share of a cluster's pixels that must lie on the boundary of the same two other clusters for it to be
#: their interface; a rim of other chemistry on a particle's outline borders one cluster only
INTERFACE_MIN_SHARE = 0.8
#: a cluster's mean spectrum is a mix of two others' when what a linear mix of theirs leaves of it is within
#: this many times its standard error (:func:`_mix_of`). Measured: the blurred NiO-core / LiNiO2-shell
#: interfaces 1.1-2.1; a 3 px layer of a third compound (Ni(OH)2's shape, its edge between the two) 8.6-320
INTERFACE_MAX_MISFIT = 4.0
#: px. The standard error of a cluster's mean spectrum is taken from the scatter of its pixels' means in
#: cells this wide: the spectra are smoothed in space before the clustering (``xanes_smoothing``, 1 px), so
#: neighbouring pixels share their noise and the scatter of single pixels over the root of their number
#: understates it (the blurred interface read 2.2-3.8 x "its noise" that way; 1.1-2.1 by cells)
INTERFACE_CELL_PX = 4


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


# --------------------------------------------------------------------------- interfaces


@dataclass(frozen=True)
class InterfaceCluster:
    """A cluster that is the resolution mixing two others (:func:`interface_clusters`).

    Attributes
    ----------
    cluster : int
    between : (int, int)
        The two clusters it mixes, lowest edge first.
    n_pixels : int
    boundary_share : float
        Share of its pixels across the boundary of ``between`` (:data:`INTERFACE_MAX_WIDTH_PX`).
    mix : float
        Mean weight of ``between[1]`` in its pixels' spectra (0-1).
    misfit : float
        What the linear mix of the two leaves of its mean spectrum, in its standard errors (about 1: a mix).
    separation : float
        :func:`pair_separation` of the two, its pixels given to the nearer of them.
    particles : tuple of int
        The particles its pixels lie in.
    """

    cluster: int
    between: tuple
    n_pixels: int
    boundary_share: float
    mix: float
    misfit: float
    separation: float
    particles: tuple = ()


def pair_separation(spectra, in_a, in_b) -> float:
    """How far apart two groups of spectra lie: the distance of their mean spectra over the pooled sd
    of their members projected on the line joining them (a ratio; 0 for equal means, inf without spread).

    Parameters
    ----------
    spectra : ndarray (n_energies, n_pixels)
        The spectra over the energies compared.
    in_a, in_b : ndarray (n_pixels,) bool
        The members of each group (two or more each).
    """
    x = np.asarray(spectra, np.float64)
    d = x[:, in_a].mean(axis=1) - x[:, in_b].mean(axis=1)
    nd = float(np.linalg.norm(d))
    if not nd > 0:
        return 0.0
    za, zb = d @ x[:, in_a] / nd, d @ x[:, in_b] / nd
    spread = np.sqrt(0.5 * (za.var() + zb.var()))
    return abs(float(za.mean() - zb.mean())) / spread if spread > 0 else np.inf


def interface_clusters(
    spectra,
    labels,
    pixels: PixelSpectra,
    *,
    energies_ev,
    energy_window=None,
    min_separation: float = 4.0,
    max_width_px: float = INTERFACE_MAX_WIDTH_PX,
    min_share: float = INTERFACE_MIN_SHARE,
    max_misfit: float = INTERFACE_MAX_MISFIT,
) -> list:
    """The clusters that are two phases mixed at their boundary by the resolution, not a phase.

    A blurred front between two phases gives a thin band of pixels whose spectra lie between
    theirs; clustered in one more cluster than the scan holds phases, the band may come out a
    compact cluster of its own, and (over a window of few energies, where each phase's spread
    is small) as far from both as distinct phases are (measured: 4.5 x the spread, a NiO-core /
    LiNiO2-shell particle over 8330-8370 eV). A cluster ``c`` is the interface of ``a`` and ``b``
    when all of these hold:

    - its pixels lie across their boundary: for at least ``min_share`` of them, the nearest pixel
      of ``a`` and the nearest of ``b`` in the same particle are ``max_width_px`` apart at most
      through it (their distances added: a band a few pixels across; a rim of other chemistry on
      an outline, which borders one of them only, or a layer thicker than the blur, does not);
    - its spectra are mixes of theirs: its mean spectrum less the nearest linear mix
      ``(1 - t) a + t b`` (``0 <= t <= 1``) is within ``max_misfit`` of its standard error (taken
      over cells of :data:`INTERFACE_CELL_PX`, as the smoothed pixels share their noise; a third
      compound, whose spectrum is not a mix, is not);
    - ``a`` and ``b`` are distinct phases with ``c``'s pixels given to the nearer of them
      (:func:`pair_separation` at least ``min_separation``): one phase cut in three by k-means
      puts its middle cluster between the two others in space and in spectrum alike, and is
      not an interface.

    Parameters
    ----------
    spectra : ndarray (n_energies, n_pixels)
        The spectra clustered (:attr:`PixelSpectra.spectra`).
    labels : ndarray (n_pixels,) int
        Cluster of each pixel, 0..k-1.
    pixels : PixelSpectra
        Where each pixel lies (particle, row, column).
    energies_ev : ndarray (n_energies,)
    energy_window : (float, float), optional
        The energies the clustering used; the spectra are compared there.
    min_separation, max_width_px, min_share, max_misfit : float
        The thresholds above.

    Returns
    -------
    list of InterfaceCluster
        Ordered by cluster; a cluster found the interface of more than one pair is given once
        (the pair bordering most of its pixels).
    """
    from scipy import ndimage

    x, e, sel = _window(spectra, energies_ev, energy_window, 2)
    x = x[sel]
    labels = np.asarray(labels)
    if labels.shape != (x.shape[1],) or pixels.particle.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} must give one cluster per pixel ({x.shape[1]})")
    ids = [int(j) for j in np.unique(labels) if j >= 0]
    if len(ids) < 3:
        return []
    maps = to_maps(labels.astype(np.int32), pixels, fill=-1)
    # distance of each pixel to the nearest pixel of each cluster, in its own particle
    near = {j: np.full(labels.size, np.inf) for j in ids}
    for p, m in maps.items():
        sel_p = pixels.particle == p
        yy, xx = pixels.y[sel_p], pixels.x[sel_p]
        for j in ids:
            if (m == j).any():
                near[j][sel_p] = ndimage.distance_transform_edt(m != j)[yy, xx]
    cells = (
        pixels.particle.astype(np.int64) * 2**40
        + (pixels.y // INTERFACE_CELL_PX).astype(np.int64) * 2**20
        + pixels.x // INTERFACE_CELL_PX
    )
    out = []
    for c in ids:
        ic = labels == c
        best = None
        for ia, a in enumerate(ids):
            for b in ids[ia + 1 :]:
                if c in (a, b):
                    continue
                on = near[a][ic] + near[b][ic] <= max_width_px
                share = float(on.mean())
                if share < min_share or (best is not None and share <= best.boundary_share):
                    continue
                found = _mix_of(x, labels, c, a, b, min_separation, max_misfit, cells)
                if found is not None:
                    t, misfit, sep = found
                    where = tuple(int(v) for v in np.unique(pixels.particle[ic]))
                    best = InterfaceCluster(c, (a, b), int(ic.sum()), share, t, misfit, float(sep), where)
        if best is not None:
            out.append(best)
    return out


def _cell_standard_error(dev, cells) -> float:
    """Standard error (the root of the summed variances over the energies) of the mean of ``dev``
    (n_energies, n_pixels; each pixel's deviation from the mean), its pixels grouped in ``cells`` that
    share their noise: from the scatter of the cells' sums (the cluster-robust variance)."""
    _, inv = np.unique(cells, return_inverse=True)
    g = inv.max() + 1
    if g < 2:
        return np.inf
    sums = np.stack([np.bincount(inv, weights=row, minlength=g) for row in dev])
    return float(np.sqrt((sums**2).sum() * g / (g - 1)) / dev.shape[1])


def _mix_of(x, labels, c, a, b, min_separation, max_misfit, cells):
    """``(t, misfit, separation)`` where cluster ``c``'s spectra are a mix ``(1 - t) a + t b`` within
    ``max_misfit`` standard errors (``cells``: each pixel's cell of :data:`INTERFACE_CELL_PX`) and ``a``,
    ``b`` (with ``c``'s pixels) are distinct; None otherwise."""
    ic = labels == c
    if ic.sum() < 3 or (labels == a).sum() < 2 or (labels == b).sum() < 2:
        return None
    ma, mb = x[:, labels == a].mean(axis=1), x[:, labels == b].mean(axis=1)
    d = mb - ma
    dd = float(d @ d)
    if not dd > 0:
        return None
    xc = x[:, ic]
    t = d @ (xc - ma[:, None]) / dd  # each pixel's weight of b on the line a-b
    tm = float(t.mean())
    if not 0.0 <= tm <= 1.0:
        return None
    resid = xc - ma[:, None] - np.outer(d, t)  # what the mix leaves of each pixel
    mean = resid.mean(axis=1)
    se = _cell_standard_error(resid - mean[:, None], cells[ic])
    misfit = float(np.linalg.norm(mean) / se) if se > 0 else np.inf
    if misfit > max_misfit:
        return None
    to_b = np.zeros(labels.size, bool)
    to_b[np.flatnonzero(ic)[t >= 0.5]] = True
    sep = pair_separation(x, (labels == a) | (ic & ~to_b), (labels == b) | to_b)
    if sep < min_separation:
        return None
    return tm, misfit, sep
