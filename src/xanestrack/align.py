"""All aligners behind one signature, for comparison on identical data.

Every aligner estimates shifts and applies nothing:

    aligner(frames, *, masks=None) -> shifts (n_frames, 2)

``frames`` is ``(n, h, w)`` optical density: whole frames for the *global* aligners
(one shift per frame, what TXM-Wizard, TXM-Sandbox, xanespy, PyXAS and MANTiS offer)
and one particle's ROI windows for the *per-particle* ones. ``shifts[k]`` is the
position ``(dy, dx)`` of the content in frame ``k`` minus its position in frame 0,
the convention of :mod:`xanestrack.register`; apply them with
:func:`xanestrack.register.resample_windows`. ``masks`` (soft particle masks per
window) is used by the centre-of-mass aligner and, to pick the particle's pixels, by
per-particle optical flow.

:data:`ALIGNERS` maps a name to ``(function, scope)`` with scope ``"global"`` or
``"particle"``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .register import bin_frames, centre_of_mass

__all__ = ["ALIGNERS", "available_aligners"]


def _prep(frame, sigma=1.0):
    f = np.asarray(frame, np.float64)
    f = np.where(np.isfinite(f), f, np.nanmedian(f))
    g = ndimage.gaussian_filter(f, sigma)
    return g - g.mean()


def _pcc(ref, mov, normalization):
    from skimage.registration import phase_cross_correlation

    # upsampled to 1/100 px, as a careful user would (1/20 px steps alone left 0.02 px RMS on the rigid preset)
    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=100, normalization=normalization)
    return -np.asarray(shift)  # skimage returns the shift that registers mov onto ref


def template_absolute(frames, *, masks=None):
    """Cross-correlation of every frame against the first (no phase normalisation)."""
    ref = _prep(frames[0])
    return np.array([[0.0, 0.0]] + [_pcc(ref, _prep(f), None) for f in frames[1:]])


def template_relative(frames, *, masks=None):
    """Cross-correlation against the previous frame, chained (errors accumulate)."""
    out = np.zeros((len(frames), 2))
    prev = _prep(frames[0])
    for k in range(1, len(frames)):
        cur = _prep(frames[k])
        out[k] = out[k - 1] + _pcc(prev, cur, None)
        prev = cur
    return out


def _hann(shape):
    from skimage.filters import window

    return window("hann", shape)


def phase_correlation(frames, *, masks=None):
    """Upsampled phase correlation (phase-normalised spectrum) against the first frame, each frame Hann-windowed
    (unwindowed, the frame's border dominates the phase-normalised spectrum: on the rigid preset 0.28-0.51 px RMS
    where cross-correlation gives 0.04-0.07)."""
    w = _hann(np.shape(frames)[1:])
    ref = _prep(frames[0]) * w
    return np.array([[0.0, 0.0]] + [_pcc(ref, _prep(f) * w, "phase") for f in frames[1:]])


def _gradient(frame, sigma):
    f = np.asarray(frame, np.float64)
    f = np.where(np.isfinite(f), f, np.nanmedian(f))
    g = ndimage.gaussian_gradient_magnitude(f, sigma)
    return g - g.mean()


def gradient_correlation(frames, *, masks=None, sigma: float = 2.0):
    """Cross-correlation of gradient-magnitude images (Gaussian derivatives, ``sigma`` px), Hann-windowed, against
    the frame of most edge contrast (a post-edge frame): the global alignment a careful user runs across an edge.
    The intensity-based aligners against the faint pre-edge frame 0 carry the contrast change into their shifts
    (on the rigid preset 0.08 px apart before and after the edge); the particles' outlines do not change."""
    w = _hann(np.shape(frames)[1:])
    contrast = [float(np.std(_gradient(f, sigma))) for f in frames]
    r = int(np.argmax(contrast))
    ref = _gradient(frames[r], sigma) * w
    s = np.array([_pcc(ref, _gradient(f, sigma) * w, None) if k != r else (0.0, 0.0) for k, f in enumerate(frames)])
    return s - s[0]


def _sift_points(img):
    from skimage.feature import SIFT

    lo, hi = np.percentile(img, [1, 99.8])
    d = SIFT()
    d.detect_and_extract(np.clip((img - lo) / (hi - lo + 1e-12), 0, 1))
    return d.keypoints.astype(float), d.descriptors


def sift_ransac(frames, *, masks=None, binning: int = 2, tolerance: float = 1.0, seed: int = 0):
    """SIFT keypoints matched to the first frame; translation by RANSAC consensus.

    Runs on 2x binned frames (0.7 s per full 460 x 460 frame otherwise). A frame with
    fewer than 3 matches gets NaN.
    """
    from skimage.feature import match_descriptors

    b = binning
    prep = (lambda f: bin_frames(_prep(f), 2, dtype=np.float64)) if b == 2 else _prep
    k0, d0 = _sift_points(prep(frames[0]))
    out = np.zeros((len(frames), 2))
    rng = np.random.default_rng(seed)
    for k in range(1, len(frames)):
        kk, dk = _sift_points(prep(frames[k]))
        if len(kk) < 3 or len(k0) < 3:
            out[k] = np.nan
            continue
        m = match_descriptors(d0, dk, cross_check=True, max_ratio=0.8)
        if len(m) < 3:
            out[k] = np.nan
            continue
        disp = kk[m[:, 1]] - k0[m[:, 0]]
        best, best_n = None, -1
        for i in rng.permutation(len(disp))[:200]:
            inl = np.hypot(*(disp - disp[i]).T) <= tolerance
            if inl.sum() > best_n:
                best, best_n = inl, int(inl.sum())
        out[k] = disp[best].mean(axis=0) * b
    return out


def _ilk_flow(ref, mov):
    from skimage.registration import optical_flow_ilk

    return optical_flow_ilk(ref, mov, radius=7)  # (2, h, w): mov(r + v) ~ ref(r)


def _zscore(frame, sigma=1.0):
    """A frame smoothed and scaled to zero mean and unit variance: optical flow assumes brightness constancy, and
    a particle's optical density rises across the edge (read as motion on raw OD)."""
    g = _prep(frame, sigma)
    return g / (g.std() + 1e-12)


#: Share of the reference frame's pixels (those of strongest gradient) over which the global optical flow is
#: reduced to one shift: the flow over flat background is noise. The top 10 %, as a careful user would pick them;
#: with them, on z-scored frames, the rigid preset (seeds 1, 2, 143 x 460 x 460) gives 0.070 / 0.071 px median / worst.
OPTICAL_FLOW_TEXTURED_QUANTILE = 0.9


def optical_flow(frames, *, masks=None, binning: int = 2):
    """iLK optical flow against the first frame, reduced to one shift: the median flow over the textured pixels.

    Each frame is z-scored on its own (smoothed, zero mean, unit variance) so that the rise of optical density
    across the edge is not read as motion, and the flow is reduced over the reference's pixels of strongest
    gradient (:data:`OPTICAL_FLOW_TEXTURED_QUANTILE`), not over the flat background. On the rigid preset (seeds 1, 2,
    143 x 460 x 460) 0.070 / 0.071 px median / worst RMS; on raw optical density over the whole frame it gave 3.525
    / 3.852 px, against 5.652 / 7.663 without alignment. Runs on 2x binned frames (0.6 s per full 460 x 460 frame
    otherwise).
    """
    prep = (lambda f: bin_frames(_zscore(f), 2, dtype=np.float64)) if binning == 2 else _zscore
    ref = prep(frames[0])
    grad = ndimage.gaussian_gradient_magnitude(ref, 1.5)
    sel = grad >= np.quantile(grad, OPTICAL_FLOW_TEXTURED_QUANTILE)
    out = np.zeros((len(frames), 2))
    for k in range(1, len(frames)):
        flow = _ilk_flow(ref, prep(frames[k]))
        out[k] = np.median(flow[:, sel], axis=1) * binning
    return out


def stackreg_translation(frames, *, masks=None):
    """pystackreg (TurboReg) translation against the first frame, as PyXAS/TXM-Sandbox."""
    from pystackreg import StackReg

    sr = StackReg(StackReg.TRANSLATION)
    ref = _prep(frames[0])
    out = np.zeros((len(frames), 2))
    for k in range(1, len(frames)):
        tm = sr.register(ref, _prep(frames[k]))
        out[k] = (tm[1, 2], tm[0, 2])
    return out


def particle_template(windows, *, masks=None):
    """Per-particle cross-correlation of intensities: each ROI against the particle's first (pre-edge) ROI, what
    many users do. :func:`particle_gradient_correlation` is the careful setup on the same windows."""
    return template_absolute(windows)


def particle_gradient_correlation(windows, *, masks=None):
    """Per-particle gradient correlation: :func:`gradient_correlation` (gradient magnitudes, Hann window, the
    window of most edge contrast as reference) on each particle's ROI windows, the careful per-ROI alignment a
    TXM-Sandbox or TXM-Wizard user can run. On the default preset (seeds 1, 2, the bench's windows) 0.061 / 0.112 px
    median / worst RMS, against 0.082 / 0.202 for :func:`particle_template`."""
    return gradient_correlation(windows)


def particle_optical_flow(windows, *, masks=None):
    """Per-particle optical flow: median iLK flow over the particle's first-frame mask, each window z-scored on its
    own (on raw optical density the edge's rise was read as motion: on the default preset, seeds 1, 2, 4.879 / 9.270
    px median / worst RMS, against 5.622 / 8.591 without alignment; z-scored 0.195 / 0.528)."""
    ref = _zscore(windows[0])
    sel = (masks[0] > 0.5) if masks is not None else np.ones(ref.shape, bool)
    if not sel.any():
        sel = np.ones(ref.shape, bool)
    out = np.zeros((len(windows), 2))
    for k in range(1, len(windows)):
        flow = _ilk_flow(ref, _zscore(windows[k]))
        out[k] = np.median(flow[:, sel], axis=1)
    return out


def centre_of_mass_aligner(windows, *, masks=None):
    """Our method: centre of mass of each window's particle mask (Su et al. 2024)."""
    if masks is None:
        from .segment import segment_rois

        masks = segment_rois(windows)
    c = centre_of_mass(masks)
    return c - c[0]


def centre_of_mass_learned(windows, *, masks=None):
    """Our method with the learned (Dual U-Net) segmentation of each window."""
    from .models.segmenter import LearnedSegmenter

    return centre_of_mass_aligner(windows, masks=LearnedSegmenter().segment_rois(windows))


ALIGNERS = {
    "template_absolute": (template_absolute, "global"),
    "template_relative": (template_relative, "global"),
    "phase_correlation": (phase_correlation, "global"),
    "gradient_correlation": (gradient_correlation, "global"),
    "sift_ransac": (sift_ransac, "global"),
    "optical_flow": (optical_flow, "global"),
    "stackreg": (stackreg_translation, "global"),
    "particle_template": (particle_template, "particle"),
    "particle_gradient_correlation": (particle_gradient_correlation, "particle"),
    "particle_optical_flow": (particle_optical_flow, "particle"),
    "centre_of_mass": (centre_of_mass_aligner, "particle"),
    "centre_of_mass_learned": (centre_of_mass_learned, "particle"),
}


def available_aligners() -> dict:
    """The aligners whose optional dependencies (pystackreg) or weights are installed."""
    out = dict(ALIGNERS)
    try:
        import pystackreg  # noqa: F401
    except ImportError:
        out.pop("stackreg")
    from .models.segmenter import default_model_dir

    if not (default_model_dir() / "weights.pt").is_file():
        out.pop("centre_of_mass_learned")
    return out
