"""The notes on the whole field's motion (a turn, a magnification off its line, a strain) are judged on the frames
vouched for: where no particle was vouched for (a faint pre-edge), the common motion is filled in from the frames
that were, and the frame's jitter it missed there read as the particles' own motion (a reduced stress-all scene, seed
2, learned: "mostly (84 %) a turn of the whole field, up to -0.53 degrees (frame 10)", a frame before any particle
was vouched for, and a magnification off its line; the scene neither turns nor leaves its line)."""

import numpy as np
import pandas as pd
from scipy import ndimage

from xanestrack.motion import compute_motion
from xanestrack.motion_notes import _field_motion_notes
from xanestrack.pipeline import PipelineOptions, _own_motion_vouched, run_pipeline
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack

CENTRE = np.array([127.5, 127.5])


def _turned_tracks(turn_deg, n=40, m=7, seed=3):
    """Tracks of ``m`` particles turned about the centre by ``turn_deg[k]`` in frame ``k``, plus a small drift."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, (m, 2))
    rows = []
    for k in range(n):
        a = np.radians(turn_deg[k])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        P = (base - CENTRE) @ rot.T + CENTRE + 0.2 * k + rng.normal(0, 0.02, (m, 2))
        rows += [(j, k, *P[j]) for j in range(m)]
    return pd.DataFrame(rows, columns=["particle", "frame", "y", "x"])


def test_a_turn_in_frames_not_vouched_for_is_not_said():
    """Frames 0-9 turned by up to 1.5 degrees and back (as a missed jitter reads), none of them vouched for; the rest
    still: no note. The same table judged on every frame names a turn."""
    n = 40
    turn = np.zeros(n)
    turn[:10] = 1.5 * np.sin(np.linspace(0, np.pi, 10))
    tracks = _turned_tracks(turn, n=n)
    motion = compute_motion(tracks, centre=CENTRE)
    energies = np.linspace(8250, 8450, n)
    assert any("a turn of the whole field" in t for t in _field_motion_notes(motion, energies, PipelineOptions()))
    frames = tracks[["particle", "frame"]].assign(reliable=tracks["frame"] >= 10)
    vouched = _own_motion_vouched(motion, frames)
    assert vouched.loc[vouched["frame"] < 10, "nonrigid_dy"].isna().all()
    assert vouched.loc[vouched["frame"] >= 10, "nonrigid_dy"].notna().all()
    assert vouched.attrs.keys() == motion.attrs.keys()
    assert not any("turn of the whole field" in t for t in _field_motion_notes(vouched, energies, PipelineOptions()))


def test_a_field_turning_in_every_frame_is_still_said():
    """Control through the pipeline: the rigid scene (seed 1, reduced) turned by up to 2 degrees across the scan:
    "mostly (100 %) a turn of the whole field, up to +2.01 degrees" (measured)."""
    s = make_synthetic_stack("rigid", seed=1, n_energies=40, shape=(256, 256), n_particles=6, radius_range=(10.0, 22.0))
    od = s.optical_density()
    n = od.shape[0]
    turned = np.stack(
        [ndimage.rotate(od[k], 2.0 * k / (n - 1), reshape=False, order=1, mode="nearest") for k in range(n)]
    ).astype(np.float32)
    r = run_pipeline(Stack(turned, s.energies_ev))
    (note,) = [t for t in r.notes if "a turn of the whole field" in t]
    deg = float(note.split("up to ")[1].split(" degrees")[0])
    assert 1.8 < deg < 2.2, note
