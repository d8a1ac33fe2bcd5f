"""Pixels the images clip (bright background between particles, not the flats) are filled by the local median at
once, not from the rim of the patch they form (which is for patches the flats leave unknown over the sample)."""

import numpy as np

from xanestrack.io.flatfield import optical_density
from xanestrack.stack import sanitize_stack


def _frames(n=4, size=96):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    ring = (r > 14) & (r < 26)  # a particle (an annulus) enclosing a bright background region
    od = np.where(ring, 1.2, np.where(r >= 26, 0.15, 0.0))  # only the enclosed region clips
    flat = np.full((size, size), 60000.0)
    counts = flat * np.exp(-od) * 1.1  # the beam 10 % brighter in the images: the background clips at 65535
    counts = np.minimum(np.broadcast_to(counts, (n, size, size)), 65535).astype(np.uint16)
    return counts, flat.astype(np.uint16)[None], r < 14, ring


def test_a_clipped_background_enclosed_by_a_particle_is_not_filled_from_the_particle():
    counts, flats, inside, ring = _frames()
    od = optical_density(counts, flats=flats, notes=[])
    clean, _ = sanitize_stack(od, gaps=(gaps := []))
    # the enclosed clipped region reads as the background around (the frame's median, 0.15 - ln 1.1), not the
    # particle's 1.1 around it (filled from the patch's rim: 1.10)
    assert np.all(np.abs(clean[:, inside]) < 0.2), float(np.abs(clean[:, inside]).max())
    assert not gaps  # nothing left for the rim fill
    assert np.allclose(clean[:, ring], 1.2 - np.log(1.1), atol=0.01)
