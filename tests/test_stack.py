"""The Stack and its checks (xanestrack.stack)."""

import numpy as np
import pytest

from xanestrack.stack import Stack, sanitize_stack, validate_energies


def test_nan_pixels_are_repaired_and_hopeless_frames_refused():
    od = np.zeros((3, 32, 32), np.float32)
    od[1, 5, 5] = np.nan
    clean, n = sanitize_stack(od)
    assert n == 1 and np.isfinite(clean).all() and np.isnan(od[1, 5, 5])  # input untouched
    od[2, :20] = np.inf
    with pytest.raises(ValueError, match=r"frames \[2\]"):
        sanitize_stack(od)


def test_hopeless_frames_can_be_carried_blank_while_most_frames_are_usable():
    od = np.ones((4, 32, 32), np.float32)
    od[1, :20] = np.nan
    od[2, 3, 3] = np.inf
    blank = []
    clean, n = sanitize_stack(od, blank=blank)
    assert blank == [1] and n == 1
    assert np.all(clean[1] == 1.0) and np.isfinite(clean).all() and np.isnan(od[1, 0, 0])
    od[3] = np.nan  # two of four frames hopeless: refused as before
    with pytest.raises(ValueError, match=r"frames \[1, 3\]"):
        sanitize_stack(od, blank=[])


def test_stack_validation_messages():
    with pytest.raises(ValueError, match="3-D array"):
        Stack(np.zeros((10, 10)), np.arange(10.0) + 8000)
    with pytest.raises(ValueError, match="look like keV"):
        Stack(np.zeros((2, 10, 10)), np.array([8.3, 8.4]))


def test_sanitize_replaces_a_pixel_by_the_median_of_its_neighbours():
    od = np.arange(3 * 9 * 9, dtype=np.float32).reshape(3, 9, 9)
    od[1, 4, 4] = np.nan
    clean, n = sanitize_stack(od, source="scan.h5")
    assert n == 1 and clean.dtype == np.float32
    # the median of the 5 x 5 pixels around it, itself counted as the frame's median
    win = od[1, 2:7, 2:7].copy()
    win[2, 2] = np.median(od[1][np.isfinite(od[1])])
    assert clean[1, 4, 4] == np.median(win)
    assert np.array_equal(np.delete(clean.ravel(), 81 + 40), np.delete(od.ravel(), 81 + 40))
    same, n0 = sanitize_stack(clean)
    assert n0 == 0 and same is clean  # nothing to replace: no copy
    with pytest.raises(ValueError, match="scan.h5: frames"):
        sanitize_stack(np.full((2, 8, 8), np.nan), source="scan.h5")


def test_validate_energies_messages():
    assert validate_energies([8330, 8340.5], 2).dtype == float
    for e, msg in (
        ([8330.0], "2 frames but 1 energies"),
        ([8330.0, np.nan], "NaN"),
        ([8330.0, 8330.0], "duplicate energy"),
        ([8340.0, 8330.0], "not increasing"),
        ([8.33, 8.34], "keV"),
    ):
        with pytest.raises(ValueError, match=msg):
            validate_energies(e, 2, source="e.txt")


def test_a_stack_of_another_array_type_or_a_pixel_size_that_is_none_says_so():
    import pytest

    from xanestrack.stack import Stack

    class Lazy:  # a dask array or a tensor: 3-D, not numpy
        ndim, shape = 3, (4, 16, 16)

    with pytest.raises(ValueError, match="must be a numpy array, got a .*Lazy of shape \\(4, 16, 16\\)"):
        Stack(Lazy(), np.linspace(8300, 8400, 4))
    for bad in (0.0, -0.02, float("nan")):
        with pytest.raises(ValueError, match="pixel_size_um must be a positive number"):
            Stack(np.zeros((4, 16, 16), np.float32), np.linspace(8300, 8400, 4), pixel_size_um=bad)


def test_an_energy_mistyped_at_either_end_is_refused_or_named():
    """A typo in the first or last energy keeps them increasing: 86800 eV for 8680 was taken without a word (and a
    magnification fitted as a line in the energy put the whole 1 % on the last frame). Beyond 2.5 keV it is refused;
    a lone frame 0.5-2.5 keV away (a typo of 7200 for 8200, or a far pre-edge frame) is named, not refused."""
    from xanestrack.stack import lone_step

    e = np.linspace(8200, 8680, 143)
    for bad, frames in ((np.r_[e[:-1], 86800.0], "frame 141 .* to frame 142"), (np.r_[820.0, e[1:]], "frame 0 ")):
        with pytest.raises(ValueError, match=f"{frames}.*mistyped energy"):
            validate_energies(bad, 143, source="X_eng")
    near = np.r_[7200.0, e[1:]]
    assert validate_energies(near, 143).size == 143 and lone_step(near)[:1] == (0,)
    assert validate_energies([7700.0, 8330.0, 8345.0], 3).size == 3  # one pre-edge frame 630 eV below
    assert lone_step(e) is None and lone_step([8324.0, 8354.0]) is None
    assert lone_step(np.r_[np.linspace(8300, 8400, 30), 8900.0]) is None  # a long last step, not longer than the rest
