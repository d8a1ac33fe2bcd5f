import numpy as np
import pytest

from xanestrack.align import ALIGNERS, available_aligners
from xanestrack.register import crop_windows
from xanestrack.synth import make_synthetic_stack

# expected accuracy (px, RMS with mean removed) on a rigid scan of pre-edge frames
EXPECTED = {
    "template_absolute": 0.2,
    "template_relative": 0.2,
    "phase_correlation": 0.6,
    "gradient_correlation": 0.2,
    "sift_ransac": 0.6,
    "optical_flow": 0.6,
    "stackreg": 0.2,
}


@pytest.fixture(scope="module")
def rigid():
    # pre-edge energies only: no contrast change, so every global method should work
    return make_synthetic_stack(
        "rigid", seed=4, n_energies=8, shape=(240, 240), n_particles=4, radius_range=(12, 24), jump_size=3.0
    )


@pytest.mark.parametrize("name", [n for n, (f, s) in ALIGNERS.items() if s == "global"])
def test_global_aligners_recover_known_rigid_shift(rigid, name):
    if name not in available_aligners():
        pytest.skip(f"{name}: optional dependency not installed")
    od = rigid.optical_density()[:, :, :]
    e = rigid.energies_ev
    keep = e < 8330
    fn, _ = ALIGNERS[name]
    sh = fn(od[keep])
    err = sh - rigid.truth.global_shift[keep]
    err -= np.nanmean(err, axis=0)
    rms = np.sqrt(np.nanmean((err**2).sum(1)))
    assert rms < EXPECTED[name], (name, rms)


@pytest.mark.parametrize("name", [n for n, (f, s) in ALIGNERS.items() if s == "particle"])
def test_particle_aligners_recover_particle_shift(rigid, name):
    if name not in available_aligners():
        pytest.skip(f"{name}: weights or optional dependency not installed")
    od = rigid.optical_density()
    tp = rigid.truth.positions
    g = tp[tp.particle == 0].sort_values("frame")
    centres = np.round(g[["y", "x"]].to_numpy()[0]) + np.zeros((od.shape[0], 2))  # fixed window
    win, orig, _ = crop_windows(od, centres, 30)
    keep = rigid.energies_ev < 8330
    fn, _ = ALIGNERS[name]
    from xanestrack.segment import segment_rois

    masks = segment_rois(win[keep])
    sh = fn(win[keep], masks=masks)
    true = g[["dy", "dx"]].to_numpy()[keep]
    err = sh - (true - true[0])
    err -= err.mean(axis=0)
    assert np.sqrt((err**2).sum(1).mean()) < 0.3, name


def test_gradient_correlation_is_not_moved_by_the_edge():
    """Across the absorption edge the particles' contrast changes: intensity cross-correlation against the faint
    first frame carries that into its shifts; correlating gradient magnitudes against the frame of most contrast
    does not (the global baseline a careful user runs, against which the bench compares)."""
    s = make_synthetic_stack(
        "rigid", seed=4, n_energies=24, shape=(240, 240), n_particles=4, radius_range=(12, 24), jump_size=3.0
    )
    od = s.optical_density()

    def rms(name):
        err = ALIGNERS[name][0](od) - s.truth.global_shift
        err -= err.mean(axis=0)
        return float(np.sqrt((err**2).sum(1).mean()))

    assert rms("gradient_correlation") < 0.1
    assert rms("gradient_correlation") < rms("template_absolute")
