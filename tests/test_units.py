"""Energy units (xanestrack.units): keV told from eV by size."""

import numpy as np
import pytest

from xanestrack.units import KEV_BELOW, in_kev, to_ev


def test_kev_values_are_converted_ev_values_kept():
    assert np.array_equal(to_ev([8.333, 8.4]), [8333.0, 8400.0])
    e = np.array([8333.0, 8400.0])
    assert np.array_equal(to_ev(e), e) and to_ev(e).dtype == np.float64
    assert in_kev([8.3, np.nan]) and not in_kev([8333.0, np.nan])
    assert in_kev([KEV_BELOW - 1e-9]) and not in_kev([KEV_BELOW])


def test_empty_energies_are_refused():
    with pytest.raises(ValueError):
        in_kev([])
