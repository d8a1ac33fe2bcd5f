"""Small objects in every frame (fines fixed to the matrix) are no zingers; single-frame hits still are."""

import numpy as np

from xanestrack.io.zingers import remove_zingers


def _fines_scan(n=12, shape=(96, 96), seed=0, jump_at=7, jump=(2.0, 10.0)):
    """Optical density of sharp fines (hard disks of radius 1.5-3 px, OD 0.3-1, area-sampled) drifting with
    the matrix by 0.3-0.6 px a frame, the stage jumping by ``jump`` px before frame ``jump_at``; photon
    noise of about 2,000 counts. The frames and each frame's fine pixels (covered by a fine by a quarter or
    more)."""
    rng = np.random.default_rng(seed)
    fines = np.c_[rng.uniform(8, shape[0] - 8, 40), rng.uniform(8, shape[1] - 20, 40), rng.uniform(1.5, 3, 40)]
    contrast = rng.uniform(0.3, 1.0, 40)
    steps = rng.uniform(0.3, 0.6, (n, 2)) * rng.choice([-1, 1], (n, 2))
    steps[0] = 0
    steps[jump_at] += jump
    shift = np.cumsum(steps, axis=0)
    sub = 4  # area sampling: 4 x 4 points a pixel
    yy, xx = np.mgrid[0 : shape[0] * sub, 0 : shape[1] * sub]
    yy, xx = (yy + 0.5) / sub - 0.5, (xx + 0.5) / sub - 0.5
    od, cover = np.zeros((n, *shape), np.float32), np.zeros((n, *shape), bool)
    for k in range(n):
        fine = np.zeros(yy.shape)
        for (y, x, r), c in zip(fines, contrast):
            fine = np.maximum(fine, c * (np.hypot(yy - y - shift[k, 0], xx - x - shift[k, 1]) < r))
        f = fine.reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3))
        counts = rng.poisson(2000 * np.exp(-f))
        od[k] = -np.log(np.maximum(counts, 1) / 2000)
        cover[k] = f > 0.25 * contrast.min()
    return od, cover


def _hit(od, per_frame=6, seed=1, on=None):
    """Pits of ln(3)-ln(20) (a cosmic ray: 3-20 times the counts) in single pixels and 2-px streaks, each in
    one frame (some on the fines where ``on`` says): the stack hit and the list of (frame, pixels)."""
    rng = np.random.default_rng(seed)
    n, ny, nx = od.shape
    hit, spots = od.copy(), []
    for k in range(n):
        for i in range(per_frame):
            if on is not None and i < per_frame // 3:
                ys, xs = np.nonzero(on[k, 3:-4, 3:-4])
                y, x = ys[j := rng.integers(ys.size)] + 3, xs[j] + 3
            else:
                y, x = rng.integers(3, ny - 4), rng.integers(3, nx - 4)
            pixels = [(y, x), (y, x + 1)][: rng.integers(1, 3)]
            for py, px in pixels:
                hit[k, py, px] -= np.log(rng.uniform(3, 20))
            spots.append((k, pixels))
    return hit, spots


def test_fines_in_every_frame_are_kept_and_hits_on_them_still_found():
    od, fines = _fines_scan()
    before = od.copy()
    remove_zingers(od)
    # the fines' corners and edges stand out of their 3 x 3 median by up to tens of times the noise, in
    # every frame, moved by the drift and the 10 px jump (measured: 9 pixels, 6 of them in the first and
    # last frames; before, 145, every frame losing 4-48)
    assert (od != before).sum() <= 15
    hit, spots = _hit(before, on=fines)
    out = hit.copy()
    remove_zingers(out)
    found = [all(out[k, y, x] != hit[k, y, x] for y, x in pixels) for k, pixels in spots]
    assert np.mean(found) >= 0.95  # measured: 71 of 72
    # and little else (measured: 9 pixels; before, 162)
    assert ((out != hit) & (hit == before)).sum() <= 20


def test_zingers_on_the_default_scene_are_all_found_and_nothing_else():
    """Control: the default scene (seed 1, reduced), particles drifting, with hits in single frames."""
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=1, n_energies=12, shape=(256, 256), n_particles=4)
    od = np.asarray(s.optical_density(), np.float32)
    hit, spots = _hit(od, per_frame=10, seed=2)
    out = hit.copy()
    remove_zingers(out)
    found = [all(out[k, y, x] != hit[k, y, x] for y, x in pixels) for k, pixels in spots]
    assert np.mean(found) == 1.0
    assert ((out != hit) & (hit == od)).sum() == 0
