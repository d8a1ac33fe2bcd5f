"""Each frame's illumination differs from its own flat's by a ripple whose phase moved between the two exposures
(probe r52 coverage F1: ``stress-counts`` every particle's mean E50 0.5 eV, 3-8 sigma, off, unsaid): the residual
pattern is taken out of the optical density as its share of the flats' own changes
(:func:`xanestrack.io.flatfield.illumination_residual`), and a run note says so. Controls: the same scan whose images
were lit as their flats were, and one flat for every frame, are not changed and not noted. By default the pattern
is measured and kept, and the pipeline takes it out of the particles' chemistry (their positions from the frames as
read)."""

import numpy as np
import pytest

from xanestrack.io import optical_density
from xanestrack.io.flatfield import FLAT_RESIDUAL_NOTE_OD
from xanestrack.xanes import local_background

N = 40
SHAPE = (160, 160)
DISCS = ((50, 50, 16), (110, 60, 12), (80, 120, 18))


def _ripple(phase, lam=40.0, tilt=0.3, ripple=0.05):
    """A flat-field of vignetting and a ripple (the stress scenes' model), (rows, cols)."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(float)
    a = 2 * np.pi * (np.cos(tilt) * y + np.sin(tilt) * x) / lam + phase
    v = np.exp(-0.3 * (((y - 80) / 80) ** 2 + ((x - 80) / 80) ** 2))
    return v * (1 + ripple * np.sin(a))


def _scan(phase_sd: float, seed: int = 0, level: float = 20000.0, n: int = N, bowl: float = 0.0, lag: float = 0.0):
    """Counts, flats (one per frame), the dark and the true OD of three discs (OD 0.8) on a textured matrix; the
    ripple's phase drifts over the scan, the images' phase off their flats' by ``phase_sd`` (rad) at random."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    matrix = 0.1 + 0.02 * np.sin(yy / 7.0) * np.cos(xx / 9.0)
    od = np.repeat(matrix[None], n, axis=0)
    for y, x, r in DISCS:
        od[:, (yy - y) ** 2 + (xx - x) ** 2 < r * r] += 0.8
    # a matrix whose thickness curves over the field, absorbing as E^-3 over the scan (8200 -> 8680 eV)
    curve = bowl * (((yy - 80) / 80.0) ** 2 + 0.5 * ((xx - 80) / 80.0) ** 2)
    od += np.linspace(1.0, (8680 / 8200) ** -3, n)[:, None, None] * curve[None]
    phase = np.linspace(0, 3 * np.pi, n)
    dark = np.full(SHAPE, 100.0, np.float32)
    counts = np.empty((n, *SHAPE), np.float32)
    flats = np.empty((n, *SHAPE), np.float32)
    for k in range(n):
        flat = level * _ripple(phase[k])
        lit = level * _ripple(phase[k] + lag + rng.normal(0, phase_sd))
        flats[k] = rng.normal(flat, np.sqrt(flat / 10)) + dark
        counts[k] = rng.poisson(lit * np.exp(-od[k])) + dark
    return counts, flats, dark, od


def _disc_errors(measured, truth):
    """Per disc, the SD over the frames of the error of its mean OD above a plane fitted to a ring around it."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    out = []
    for y, x, r in DISCS:
        box = np.s_[:, y - r - 14 : y + r + 15, x - r - 14 : x + r + 15]
        m = ((yy - y) ** 2 + (xx - x) ** 2 < (r - 2) ** 2)[box[1:]]
        err = []
        for stack in (measured, truth):
            w = np.asarray(stack[box], np.float64)
            err.append((w - local_background(w, m))[:, m].mean(axis=1))
        out.append(float(np.std(err[0] - err[1])))
    return np.array(out)


def test_a_ripple_off_its_flats_is_taken_out_and_said():
    counts, flats, dark, truth = _scan(0.3)
    notes = []
    od = optical_density(counts, flats=flats, darks=dark, notes=notes, dynamic_flats=True)
    # 0.004-0.006 OD per frame left under each disc before, one error for all its pixels
    assert _disc_errors(od, truth).max() < 0.0015
    said = [t for t in notes if "illumination differed from their flats'" in t]
    assert len(said) == 1 and "taken out of each frame" in said[0]


def test_the_plane_alone_leaves_the_ripple():
    """What the test above corrects: the ring's plane under the OD as the flats give it."""
    counts, flats, dark, truth = _scan(0.3)
    with np.errstate(divide="ignore"):
        plain = -np.log((counts - dark) / (flats - dark))
    assert _disc_errors(plain, truth).min() > 0.003


@pytest.mark.parametrize("one_flat", [False, True])
def test_images_lit_as_their_flats_are_left_alone(one_flat):
    counts, flats, dark, truth = _scan(0.0, seed=1)
    if one_flat:
        # every image lit as the first flat
        counts = (counts - dark) * (flats[:1] - dark) / (flats - dark) + dark
        flats = flats[:1]
    notes = []
    od = optical_density(counts, flats=flats, darks=dark, notes=notes, dynamic_flats=True)
    with np.errstate(divide="ignore"):
        plain = -np.log((counts - dark) / (flats - dark))
    assert not [t for t in notes if "illumination differed" in t]
    assert _disc_errors(od, truth).max() < 0.0015
    found = []  # nor kept for the chemistry by default
    optical_density(counts, flats=flats, darks=dark, notes=notes, illumination=found)
    assert not found and not [t for t in notes if "illumination differed" in t]
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    inside = np.zeros(SHAPE, bool)
    for y, x, r in DISCS:
        inside |= (yy - y) ** 2 + (xx - x) ** 2 < r * r
    change = (od - plain)[:, inside]
    if one_flat:
        assert np.abs(change).max() < 1e-5
    else:  # the sample's own share of the fit, smooth over the frames: well below the note's floor
        assert np.sqrt(np.mean((change - change.mean(axis=1, keepdims=True)) ** 2)) < FLAT_RESIDUAL_NOTE_OD


def test_measured_by_default_and_taken_out_through_read_stack(tmp_path):
    """By default the reader measures the pattern and keeps it (``metadata["illumination"]``), leaving the frames as
    they are (the positions are measured on them), with a note saying it goes out of the particles' chemistry;
    ``dynamic_flats`` (``--dynamic-flats``) takes it out of the frames. An FXI file written as synth writes one."""
    import h5py

    from xanestrack.io import read_stack
    from xanestrack.io.flatfield import IlluminationResidual

    counts, flats, dark, truth = _scan(0.3)
    notes = []
    od = optical_density(counts, flats=flats, darks=dark, notes=notes)
    assert not [t for t in notes if "illumination differed" in t]  # not asked for: nothing measured
    assert _disc_errors(od, truth).min() > 0.003  # left in: as the plane alone
    energies = np.linspace(8.30, 8.40, N)  # keV, as FXI writes X_eng
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["img_xanes"] = counts
        f["img_bkg"] = flats
        f["img_dark"] = dark[None]
        f["X_eng"] = energies
    on = read_stack(tmp_path / "s.h5", dynamic_flats=True, zingers=False)
    default = read_stack(tmp_path / "s.h5", zingers=False)
    assert any(
        "illumination differed from their flats'" in t and "taken out of each frame" in t for t in on.metadata["notes"]
    )
    assert "illumination" not in on.metadata
    said = [t for t in default.metadata["notes"] if "illumination differed" in t]
    assert len(said) == 1 and "before its chemistry" in said[0]
    found = default.metadata["illumination"]
    assert isinstance(found, IlluminationResidual) and found.shape == counts.shape
    assert _disc_errors(on.od, truth).max() < 0.0015 < 0.003 < _disc_errors(default.od, truth).min()
    # the pattern kept is the one the frames lose under --dynamic-flats
    taken = np.stack([found.frame(k) for k in range(N)])
    assert np.abs((default.od - taken) - on.od).max() < 1e-4


def test_windows_are_the_frames_pattern_where_each_window_lies():
    counts, flats, dark, _ = _scan(0.3)
    found = []
    optical_density(counts, flats=flats, darks=dark, illumination=found)
    (ill,) = found
    shifts = np.column_stack([np.linspace(0, 7.4, N), np.linspace(0, -3.6, N)])
    shifts[5] = np.nan  # a frame without a position: nothing taken out
    w = ill.windows((30, 40), shifts, 41)
    for k in (0, 17, N - 1):
        iy, ix = int(np.round(30 + shifts[k, 0])), int(np.round(40 + shifts[k, 1]))
        assert np.allclose(w[k], ill.frame(k)[iy : iy + 41, ix : ix + 41], atol=1e-6)
    assert not w[5].any()
    # a window reaching past the frame takes the edge value there
    edge = ill.windows((-10, 140), np.zeros((N, 2)), 41)
    assert np.allclose(edge[3][:10, 0], ill.frame(3)[0, 140], atol=1e-6)
    assert np.allclose(edge[3][10:, :20], ill.frame(3)[:31, 140:], atol=1e-6)
    # reversed with the frames
    assert np.allclose(ill.reversed().frame(0), ill.frame(N - 1))


def _edge_scan(phase_sd: float):
    """The scan of :func:`_scan` whose discs hold an absorption edge (8345 eV, as the pipeline looks for one)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    energies = np.linspace(8300.0, 8400.0, N)
    step = 1 / (1 + np.exp(-(energies - 8345.0) / 2.0))
    matrix = 0.1 + 0.02 * np.sin(yy / 7.0) * np.cos(xx / 9.0)
    od = np.repeat(matrix[None], N, axis=0)
    for y, x, r in DISCS:
        od[:, (yy - y) ** 2 + (xx - x) ** 2 < r * r] += (0.3 + 0.5 * step)[:, None]
    phase = np.linspace(0, 3 * np.pi, N)
    dark = np.full(SHAPE, 100.0, np.float32)
    counts = np.empty((N, *SHAPE), np.float32)
    flats = np.empty((N, *SHAPE), np.float32)
    for k in range(N):
        flat = 20000.0 * _ripple(phase[k])
        lit = 20000.0 * _ripple(phase[k] + rng.normal(0, phase_sd))
        flats[k] = rng.normal(flat, np.sqrt(flat / 10)) + dark
        counts[k] = rng.poisson(lit * np.exp(-od[k])) + dark
    return counts, flats, dark, od, energies


def test_the_pipeline_takes_it_out_of_the_chemistry_not_the_positions():
    """``run_pipeline`` with the pattern kept: every position as without it (the frames are the same), each
    particle's aligned frames (its chemistry's) less the pattern where they lie (the pattern whose removal brings
    the OD above each disc's ring plane to the truth's, the test above); a pattern of other frames refused."""
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack

    counts, flats, dark, truth, energies = _edge_scan(0.3)
    found, notes = [], []
    od = optical_density(counts, flats=flats, darks=dark, illumination=found, notes=notes)
    assert found
    plain = run_pipeline(Stack(od, energies))
    kept = run_pipeline(Stack(od, energies, None, {"illumination": found[0]}))
    assert len(plain.particles) == len(kept.particles) == 3
    for a, b in zip(plain.particles, kept.particles):
        assert np.array_equal(a.positions, b.positions, equal_nan=True)
        size = a.aligned.shape[1]
        shifts = np.asarray(a.positions, float) - np.asarray(a.positions, float)[0]
        taken = found[0].windows(a.origin, shifts, size)
        ok = np.isfinite(a.aligned) & np.isfinite(b.aligned)
        assert np.allclose((a.aligned - b.aligned)[ok], taken[ok], atol=1e-5)
    with pytest.raises(ValueError, match="measured on frames of shape"):
        run_pipeline(Stack(od[:, :150], energies, None, {"illumination": found[0]}))


@pytest.mark.parametrize("phase_sd", [0.0, 0.3])
def test_a_long_scan_is_decided_on_a_few_frames_first(phase_sd):
    """From 48 frames the decision is made on 24 spread over the scan (``FLAT_RESIDUAL_DECIDE_FRAMES``), then
    measured on all: found with the ripple off its flats (as the whole fit finds it), not without."""
    from xanestrack.io.flatfield import FLAT_RESIDUAL_DECIDE_FRAMES, _fit_residual

    n = 2 * FLAT_RESIDUAL_DECIDE_FRAMES + 12
    counts, flats, dark, truth = _scan(phase_sd, seed=2, n=n)
    found = []
    od = optical_density(counts, flats=flats, darks=dark, illumination=found)
    whole = _fit_residual(od, flats, dark, None, np.arange(n))[1]
    if phase_sd:
        assert len(found) == 1 and found[0].shape == od.shape and found[0].rms_od == whole > 0.003
        taken = np.stack([found[0].frame(k) for k in range(n)])
        assert _disc_errors(od - taken, truth).max() < 0.0015 < 0.003 < _disc_errors(od, truth).min()
    else:
        assert not found and whole < FLAT_RESIDUAL_NOTE_OD / 4


@pytest.mark.parametrize("n", [N, 60])
def test_a_matrix_curving_over_the_field_is_no_illumination_mismatch(n):
    """A matrix whose thickness curves over the field (0-0.9 OD), its OD falling as E^-3 over the scan, the images lit
    as their flats (probe r53: 0.012-0.019 OD "found", every mean E50 moved by up to 0.37 eV): its change over the
    scan is the sample's, not taken for the flats' patterns (the particles told from it against its own smooth level,
    the mismatch decided on the part that changes from frame to frame). With the images off their flats as well, the
    mismatch is found."""
    counts, flats, dark, truth = _scan(0.0, seed=4, n=n, bowl=0.6)
    found, notes = [], []
    optical_density(counts, flats=flats, darks=dark, notes=notes, illumination=found)
    assert not found and not [t for t in notes if "illumination differed" in t]
    counts, flats, dark, truth = _scan(0.3, seed=4, n=n, bowl=0.6)
    optical_density(counts, flats=flats, darks=dark, illumination=found)
    assert len(found) == 1 and found[0].rms_od > 0.003


@pytest.mark.parametrize("seed", [0, 3])
def test_a_ripple_lit_alike_on_images_and_flats_is_not_said_to_move(seed):
    """Images lit exactly as their own flats under a ripple drifting over the scan (probe r53): the frame-by-frame
    check of the beam's pattern read it 3.4-13.9 px "off" the flats' (the sample's structure beside a broad
    correlation peak) and asked for flats again; where the pattern matches at its own place within
    ``FLAT_MOVE_ZERO_SHARE`` of its peak, no shift is told (rings moved 2-3 px still are:
    tests/test_moving_beam_profile.py)."""
    counts, flats, dark, _ = _scan(0.0, seed=seed)
    notes = []
    optical_density(counts, flats=flats, darks=dark, notes=notes)
    assert not [t for t in notes if "pattern lies" in t]


def test_a_mismatch_changing_smoothly_is_said_by_default_and_taken_out_when_asked():
    """Flats taken a fixed time after their images while the ripple drifts (a constant phase lag, review r53): the
    mismatch changes smoothly from frame to frame, as a sample's own absorption does, so by default it is not taken
    out but said (the note names both causes and --dynamic-flats); --dynamic-flats decides on the whole and takes it
    out (0.007-0.008 OD under each disc left in, under 0.0015 after)."""
    counts, flats, dark, truth = _scan(0.0, lag=0.3)
    found, notes = [], []
    od = optical_density(counts, flats=flats, darks=dark, notes=notes, illumination=found)
    assert not found
    said = [t for t in notes if "changes smoothly from frame to frame" in t]
    assert len(said) == 1 and "--dynamic-flats" in said[0]
    assert _disc_errors(od, truth).min() > 0.003
    notes = []
    on = optical_density(counts, flats=flats, darks=dark, notes=notes, dynamic_flats=True)
    assert any("taken out of each frame" in t for t in notes)
    assert _disc_errors(on, truth).max() < 0.0015


def test_frames_put_in_another_order_after_reading_are_refused_with_the_pattern(tmp_path):
    """The reader keeps each frame's level beside the pattern; a Stack whose frames were put in another order since,
    the pattern kept (same shape: it passed), would give each frame's chemistry another frame's mismatch: refused.
    The frames as read, and read from a file written from high to low energy (reversed by the reader), pass."""
    import h5py

    from xanestrack.io import read_stack
    from xanestrack.pipeline import _illumination_field
    from xanestrack.stack import Stack

    counts, flats, dark, _ = _scan(0.3)
    energies = np.linspace(8.30, 8.40, N)
    for name, order in (("up", slice(None)), ("down", slice(None, None, -1))):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["img_xanes"] = counts[order]
            f["img_bkg"] = flats[order]
            f["img_dark"] = dark[None]
            f["X_eng"] = energies[order]
        st = read_stack(tmp_path / f"{name}.h5", zingers=False)
        found = st.metadata["illumination"]
        assert found.frame_levels is not None and found.frame_levels.shape == (N,)
        assert _illumination_field(st, st.od.shape) is found
    swapped = st.od.copy()
    swapped[[3, 7]] = swapped[[7, 3]]
    with pytest.raises(ValueError, match="in another order"):
        _illumination_field(Stack(swapped, st.energies_ev, None, dict(st.metadata)), swapped.shape)
    # values changed in place (not a reordering): passes as before
    changed = st.od + np.float32(0.01)
    assert _illumination_field(Stack(changed, st.energies_ev, None, dict(st.metadata)), changed.shape) is found
