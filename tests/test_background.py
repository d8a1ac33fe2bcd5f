"""The matrix layer: a particle drifting on its own over a textured matrix."""

import numpy as np
import pytest
from scipy import ndimage

from xanestrack.background import Footprint, matrix_background, separate_layers, unmix_layers
from xanestrack.follow import FollowOptions, follow_particle, shape_weight, window_geometry


def _scene(
    seed=0, n=40, size=128, radius=10.0, faint=0.04, bright=0.3, texture=0.03, noise=0.004, level=0.3, own_step=0.6
):
    """A disc drifting on its own over a matrix texture that moves with a common jitter.

    The matrix has an OD ``level`` (binder, carbon, the substrate): an estimator that
    depends on it (the old "edge images", sqrt(OD**2 + |grad OD|**2), rectified the texture
    where its OD crossed zero) is not measured on an OD of zero.

    Returns od (n, size, size), true particle positions (n, 2), matrix shifts (n, 2),
    the matrix texture in frame-0 coordinates.
    """
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.normal(size=(size + 40, size + 40)), 1.5)
    tex = (texture * tex / tex.std()).astype(np.float32)
    own = ndimage.gaussian_filter1d(np.cumsum(rng.normal(0, own_step, (n, 2)), axis=0), 2, axis=0)
    own -= own[0]
    jitter = rng.normal(0, 1.0, (n, 2))
    jitter[0] = 0
    c0 = np.array([size / 2, size / 2])
    pos = c0 + jitter + own
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    od = np.empty((n, size, size), np.float32)
    for k in range(n):
        # the matrix: frame-0 texture moved by the jitter
        m = ndimage.shift(tex, jitter[k], order=1, mode="nearest")[20 : 20 + size, 20 : 20 + size]
        d = np.hypot(yy - pos[k, 0], xx - pos[k, 1])
        disc = np.clip(radius + 0.5 - d, 0, 1) * np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1) + 0.3)
        a = faint if k < n * 3 // 4 else bright
        od[k] = level + m + a * disc + rng.normal(0, noise, (size, size))
    return od, pos, jitter, tex[20 : 20 + size, 20 : 20 + size]


def _disc_footprint(size, radius, positions):
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    return Footprint(np.hypot(yy - c, xx - c) <= radius, (c, c), positions)


def _disc_window(radius, opts):
    """The follower's window size, a disc of ``radius`` in it and its shape weight."""
    _, _, size = window_geometry(radius, opts)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    shape = np.hypot(yy - c, xx - c) <= radius
    return size, shape, shape_weight(shape, grow=4.0)


def _rms(est, truth):
    e = est - truth
    e -= np.median(e, axis=0)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


@pytest.fixture(scope="module")
def scene():
    return _scene()


def test_the_matrix_pulls_a_faint_particle_and_the_layers_remove_the_pull(scene):
    od, pos, shift, _ = scene
    n = od.shape[0]
    radius = 10.0
    ref = n - 1
    opts = FollowOptions()
    size, shape, weight = _disc_window(radius, opts)
    c = (size - 1) / 2
    start = pos + np.random.default_rng(1).normal(0, 0.3, pos.shape)  # a rough first estimate
    plain, _, _ = follow_particle(od, start, radius, ref, options=opts, weight=weight)
    # as the pipeline does: separate the layers at the positions, follow, twice
    layered = plain.copy()
    q = layered - shift
    lo = np.floor(q.min(axis=0) - size / 2 - 3).astype(int)
    box = np.ceil(q.max(axis=0) + size / 2 + 3).astype(int) - lo + 1
    fp = Footprint(ndimage.binary_dilation(shape, iterations=6), (c, c), layered)
    for _ in range(2):
        bg, template, contrast = separate_layers(od, layered, shift, lo, tuple(box), size, [fp])
        layered, _, _ = follow_particle(od, layered, radius, ref, options=opts, weight=weight, background=bg)
    faint = np.arange(n) < n * 3 // 4
    e_plain = _rms(plain[faint], pos[faint])
    e_layered = _rms(layered[faint], pos[faint])
    # the matrix pulls the faint frames' estimate (measured: 0.72 px); the layers remove about
    # half of the pull (measured: 0.37 px; with the true matrix as background 0.07 px: the
    # rest is the matrix behind the particle's core, which no frame shows and the particle's
    # own motion, a few px, only partly tells apart)
    assert e_plain > 0.5, e_plain
    assert e_layered < 0.6 * e_plain, (e_layered, e_plain)
    # the contrast of the particle layer follows the scene's (faint, then bright)
    a = contrast[np.isfinite(contrast)]
    k = np.flatnonzero(np.isfinite(contrast))
    assert np.median(a[k >= n * 3 // 4]) > 4 * np.median(a[k < n * 3 // 4])
    assert template.shape == (size, size)


def test_the_edge_estimate_is_blind_to_an_od_offset():
    # an OD offset (the matrix's level; a background subtracted or not) changes no position.
    # The old edge images (scipy's gradient magnitude over the frames axis too) kept the OD in
    # them: measured 0.005-0.014 px moved by these offsets, 1e-6 px now
    od, pos, _, _ = _scene(texture=0.0, faint=0.3)
    radius = 10.0
    opts = FollowOptions()
    _, _, size = window_geometry(radius, opts)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    weight = shape_weight(np.hypot(yy - c, xx - c) <= radius, grow=4.0)
    a, _, _ = follow_particle(od, pos, radius, 0, options=opts, weight=weight)
    assert _rms(a, pos) < 0.05, _rms(a, pos)
    for offset in (0.3, 0.85):
        b, _, _ = follow_particle(od - offset, pos, radius, 0, options=opts, weight=weight)
        assert np.abs(a - b).max() < 1e-3, (offset, np.abs(a - b).max())


def test_the_matrix_levels_of_the_frames_leave_no_trace_of_the_particle_path():
    # a flat matrix whose OD falls frame by frame (it absorbs less as the energy rises) under
    # a particle drifting across it: a pixel some frames show uncovered must not take the
    # level of just those frames (without the levelling: a rim of the particle's path)
    rng = np.random.default_rng(3)
    n, size, radius = 40, 96, 10.0
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    pos = np.stack([np.linspace(40, 56, n), np.full(n, 48.0)], axis=1)
    levels = np.linspace(0.5, 0.3, n)
    od = np.empty((n, size, size), np.float32)
    for k in range(n):
        d = np.hypot(yy - pos[k, 0], xx - pos[k, 1])
        od[k] = levels[k] + 0.3 * (d <= radius) + rng.normal(0, 0.002, (size, size))
    fp = _disc_footprint(31, 13, pos)
    bg = matrix_background(od, np.zeros((n, 2)), np.array([16, 16]), (64, 64), [fp])
    flat = bg.image[bg.seen]
    # measured: 0.005 OD peak-to-peak (the noise); without the levelling 0.20 (the levels'
    # range, laid along the path)
    assert np.ptp(flat) < 0.03, np.ptp(flat)


def test_matrix_background_recovers_the_texture_beside_the_particle(scene):
    od, pos, shift, tex = scene
    fp = _disc_footprint(61, 16, pos)
    lo = np.array([20, 20])
    bg = matrix_background(od, shift, lo, (88, 88), [fp])
    truth = tex[20:108, 20:108]
    seen = bg.seen
    # uncovered pixels: the median of the frames that show them is the matrix
    r = np.corrcoef(bg.image[seen], truth[seen])[0, 1]
    assert r > 0.95, r
    # the particle's core is never uncovered: filled, not invented from the particle
    assert not seen[44, 44]
    assert abs(float(bg.image[44, 44]) - float(np.median(bg.image[seen]))) < 0.1


def test_the_separated_matrix_is_taken_from_every_frame():
    """The matrix behind a particle is a median over frames: from every frame of a long, noisy scan
    it is closer to the truth than from 48 of them, as it was (the noise of the estimate, the same in
    every frame, pulls the particle as the texture does). Measured here: the error beside the particle
    0.0048 OD RMS from 48 frames, 0.0029 from all 143 (the texture 0.020)."""
    od, pos, shift, tex = _scene(seed=2, n=143, noise=0.03, texture=0.02)
    radius = 10.0
    size, shape, _ = _disc_window(radius, FollowOptions())
    c = (size - 1) / 2
    q = pos - shift
    lo = np.floor(q.min(axis=0) - size / 2 - 3).astype(int)
    box = tuple(np.ceil(q.max(axis=0) + size / 2 + 3).astype(int) - lo + 1)
    fp = Footprint(ndimage.binary_dilation(shape, iterations=6), (c, c), pos)
    truth = tex[lo[0] : lo[0] + box[0], lo[1] : lo[1] + box[1]]
    yy, xx = np.mgrid[lo[0] : lo[0] + box[0], lo[1] : lo[1] + box[1]]
    beside = np.hypot(yy - q[:, 0].mean(), xx - q[:, 1].mean()) > radius + 8
    err = {}
    for max_frames in (48, None):
        bg, _, _ = separate_layers(od, pos, shift, lo, box, size, [fp], max_frames=max_frames)
        d = (bg.image - truth)[beside & bg.seen]
        err[max_frames] = float(np.std(d - np.median(d)))
    assert err[None] < 0.8 * err[48], err


def test_follow_weight_must_have_the_window_shape(scene):
    od, pos, _, _ = scene
    with pytest.raises(ValueError, match="`weight`"):
        follow_particle(od, pos, 10.0, 0, weight=np.ones((5, 5)))


def test_shape_weight_is_one_near_the_shape_and_zero_far():
    shape = np.zeros((41, 41), bool)
    shape[15:26, 15:26] = True
    w = shape_weight(shape, grow=3.0, taper=2.0)
    assert w[20, 20] == 1 and w[20, 28] == 1  # 3 px outside
    assert w[20, 32] == 0  # 7 px outside
    assert 0 < w[20, 29] < 1
    assert np.all(shape_weight(np.zeros((5, 5), bool), grow=1.0) == 1)


def test_matrix_motion_follows_the_matrix_not_the_particle(scene):
    from xanestrack.background import matrix_motion

    od, pos, shift, _ = scene
    fp = _disc_footprint(41, 17, pos)
    # started from the particle's motion (what the particles' common motion would say
    # if they all drifted): the matrix's own motion comes back
    est, quality = matrix_motion(od, [fp], pos - pos[0])
    err = np.hypot(*(est - shift).T)
    assert np.sqrt(np.mean(err**2)) < 0.1, err
    assert np.sqrt(np.mean(np.sum((pos - pos[0] - shift) ** 2, axis=1))) > 1.0  # the particle's is not it
    assert quality.min() > 0.3


def test_leading_components_match_the_svd():
    from xanestrack.background import _leading_components

    rng = np.random.default_rng(5)
    # a wide (frames, pixels) matrix: a scaled pattern, a weaker second one, noise
    X = (
        np.outer(rng.normal(1.0, 0.3, 48), rng.random(3000))
        + 0.2 * np.outer(rng.normal(size=48), rng.random(3000))
        + 0.01 * rng.normal(size=(48, 3000))
    ).astype(np.float32)
    U, S, Vt = np.linalg.svd(X.astype(np.float64), full_matrices=False)
    u, s, vt = _leading_components(X, 2)
    assert u.shape == (48, 2) and s.shape == (2,) and vt.shape == (2, 3000)
    np.testing.assert_allclose(s, S[:2], rtol=1e-6)
    for i in range(2):  # each triplet up to its sign
        sign = np.sign(U[:, i] @ u[:, i])
        np.testing.assert_allclose(sign * u[:, i], U[:, i], atol=1e-6)
        np.testing.assert_allclose(sign * vt[i], Vt[i], atol=1e-6)
    rec = (u * s) @ vt
    np.testing.assert_allclose(rec, (U[:, :2] * S[:2]) @ Vt[:2], atol=1e-5)


def test_the_stack_median_is_numpys_nanmedian_exactly():
    """The matrix's median over the frames (a faster path than numpy's for short stacks) gives
    numpy's numbers, even and odd counts, pixels no frame shows (NaN), infinities, float32 and float64."""
    import warnings

    from xanestrack.background import _nanmedian_frames

    rng = np.random.default_rng(5)
    for n, dtype in [(1, np.float32), (2, np.float32), (7, np.float64), (48, np.float32), (49, np.float64)]:
        a = rng.normal(size=(n, 13, 17)).astype(dtype)
        a[rng.random(a.shape) < 0.4] = np.nan
        a[:, 0, 0] = np.nan
        a[0, 1, 1], a[-1, 2, 2] = np.inf, -np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmedian(a, axis=0)
        got = _nanmedian_frames(a)
        assert got.dtype == ref.dtype
        assert np.array_equal(got, ref, equal_nan=True), n


def test_the_edge_tells_the_matrix_from_a_particle_that_hardly_moves():
    """A particle moving on its own by about a pixel at most: its motion hardly tells the two
    layers apart, its contrast (faint before the edge, bright after) does. The matrix under
    it, which no frame shows uncovered, is recovered by the regression on the contrast
    without a share of the particle in it, and the faint frames followed on the frames less
    that matrix are no longer pulled."""
    n, radius, faint, bright = 40, 10.0, 0.04, 0.3
    od, pos, shift, tex = _scene(seed=5, own_step=0.08, noise=0.002)
    q = pos - shift  # the particle's own motion
    assert np.ptp(q, axis=0).max() < 1.1  # measured 0.42 / 1.04 px
    opts = FollowOptions()
    size, shape, weight = _disc_window(radius, opts)
    c = (size - 1) / 2
    lo = np.floor(q.min(axis=0) - size / 2 - 3).astype(int)
    box = np.ceil(q.max(axis=0) + size / 2 + 3).astype(int) - lo + 1
    fp = Footprint(ndimage.binary_dilation(shape, iterations=6), (c, c), pos)
    contrast = np.where(np.arange(n) < n * 3 // 4, faint, bright)
    unmixed = unmix_layers(od, pos, shift, lo, tuple(box), contrast, [fp])
    separated, _, _ = separate_layers(od, pos, shift, lo, tuple(box), size, [fp])
    # each estimate less the true matrix, around the particle, as a share of the particle's
    # faint contrast (its disc profile) plus what is left
    g = np.mgrid[0 : box[0], 0 : box[1]] + lo[:, None, None] - q.mean(axis=0)[:, None, None]
    d = np.hypot(*g)
    disc = np.clip(radius + 0.5 - d, 0, 1) * np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1) + 0.3)
    near = d < radius + 6
    true_m = tex[lo[0] : lo[0] + box[0], lo[1] : lo[1] + box[1]]
    x = np.c_[np.ones(near.sum()), disc[near]]

    def share(m):
        e = (m - true_m)[near]
        coef = np.linalg.lstsq(x, e, rcond=None)[0]
        return coef[1] / faint, float(np.std(e - x @ coef))

    s_unmixed, rest = share(unmixed.image)
    s_separated, _ = share(separated.image)
    assert abs(s_unmixed) < 0.05, s_unmixed  # measured -0.002
    assert rest < 0.1 * 0.03, rest  # of the texture's 0.03 OD; measured 0.0014
    assert abs(s_separated) > 0.3, s_separated  # by the motion alone: -0.51 of the particle left in it
    start = pos + np.random.default_rng(1).normal(0, 0.3, pos.shape)
    plain, _, _ = follow_particle(od, start, radius, n - 1, options=opts, weight=weight)
    on_unmixed, _, _ = follow_particle(od, plain, radius, n - 1, options=opts, weight=weight, background=unmixed)
    fa = np.arange(n) < n * 3 // 4
    e_plain, e_unmixed = _rms(plain[fa], pos[fa]), _rms(on_unmixed[fa], pos[fa])
    assert e_unmixed < 0.5 * e_plain, (e_unmixed, e_plain)  # measured 0.045 vs 0.148 px


def test_unmix_layers_declines_a_contrast_that_does_not_change():
    od, pos, shift, _ = _scene(seed=3, n=12, own_step=0.08)
    fp = _disc_footprint(31, 16, pos)
    assert unmix_layers(od, pos, shift, (30, 30), (68, 68), np.full(12, 0.3), [fp]) is None
    assert unmix_layers(od, pos, shift, (30, 30), (68, 68), np.r_[np.full(3, 0.04), np.full(9, np.nan)], [fp]) is None


def test_particle_contrast_includes_the_pre_edge_absorption_and_skips_a_lost_frame():
    """The contrast the edge unmixing regresses on is the particle's whole contrast (zero where it is
    absent): the disc scene's faint and bright contrasts (0.04, 0.3) come out in that ratio (a large
    particle on a weak texture: the matrix under a small faint one biases its pre-edge level, 8.55
    for a 10-px disc on 0.03 OD of texture, hence the pipeline's ratio from its largest particles),
    and a frame without data (the beam lost) is left out, its neighbours unchanged."""
    from types import SimpleNamespace

    from xanestrack.pipeline import _particle_contrasts

    n, faint, bright = 40, 0.04, 0.3
    od, pos, shift, _ = _scene(seed=3, own_step=0.08, texture=0.01, radius=20.0)
    energies = np.linspace(8200.0, 8600.0, n)  # the edge between frames 29 and 30, as the scene's contrast
    loc = SimpleNamespace(centres=pos, radius=20.0)
    a = _particle_contrasts([loc], shift[:, None, :], od, energies)[0]
    late = np.arange(n) >= n * 3 // 4
    ratio = np.median(a[late]) / np.median(a[~late])
    assert abs(ratio - bright / faint) < 0.1 * bright / faint, ratio  # 7.5; measured 7.41
    lost = od.copy()
    lost[10] = np.nan
    b = _particle_contrasts([loc], shift[:, None, :], lost, energies)[0]
    assert np.isnan(b[10])
    np.testing.assert_allclose(b[[8, 12, 20]], a[[8, 12, 20]], rtol=0.05)


def test_the_matrix_told_apart_by_the_edge_says_how_far_it_stands_out_of_its_noise():
    """``MatrixBackground.snr`` of :func:`unmix_layers`: a textured matrix at low noise stands
    far out of the noise of its estimate; a flat matrix (nothing to estimate but noise), or the
    same texture under noise like 600 counts', does not (the pipeline subtracts it only from
    ``UNMIX_MIN_SNR``)."""
    from xanestrack.pipeline import UNMIX_MIN_SNR

    n, radius, faint, bright = 40, 10.0, 0.04, 0.3
    snr = {}
    for name, kw in {
        "textured": dict(texture=0.03, noise=0.002),
        "flat": dict(texture=1e-6, noise=0.002),
        "noisy": dict(texture=0.03, noise=0.12),
    }.items():
        od, pos, shift, _ = _scene(seed=5, own_step=0.08, **kw)
        q = pos - shift
        size, shape, _ = _disc_window(radius, FollowOptions())
        c = (size - 1) / 2
        lo = np.floor(q.min(axis=0) - size / 2 - 3).astype(int)
        box = np.ceil(q.max(axis=0) + size / 2 + 3).astype(int) - lo + 1
        fp = Footprint(ndimage.binary_dilation(shape, iterations=6), (c, c), pos)
        contrast = np.where(np.arange(n) < n * 3 // 4, faint, bright)
        snr[name] = unmix_layers(od, pos, shift, lo, tuple(box), contrast, [fp]).snr
    assert snr["textured"] > 4 * UNMIX_MIN_SNR, snr  # measured 4656
    assert snr["flat"] < 3, snr  # noise alone: measured 2.1
    assert snr["noisy"] < UNMIX_MIN_SNR, snr  # measured 2.5 (at half that noise, 7.2)


def test_the_matrix_texture_ratio_tells_a_textured_matrix_from_a_smooth_one():
    from xanestrack.background import matrix_texture_ratio

    rng = np.random.default_rng(0)
    n, size = 24, 200
    yy, xx = np.mgrid[:size, :size]
    centres = np.array([[60.0, 60.0], [140.0, 130.0]])
    particles = sum(0.5 * (np.hypot(yy - c[0], xx - c[1]) < 15) for c in centres)
    smooth = 0.05 * np.sin(yy / 40.0) * np.cos(xx / 50.0)
    grains = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2.0)
    textured = smooth + 0.04 * grains / grains.std()

    def scan(matrix):
        return np.stack([particles + matrix + rng.normal(0, 0.02, (size, size)) for _ in range(n)]).astype(np.float32)

    pos = np.repeat(centres[:, None, :], n, axis=1)
    faint = matrix_texture_ratio(scan(smooth), pos, [15, 15])
    strong = matrix_texture_ratio(scan(textured), pos, [15, 15])
    assert faint < 0.003 < strong
    # too few frames to measure it: never "faint"
    assert matrix_texture_ratio(scan(smooth)[:10], pos[:, :10], [15, 15]) == np.inf
