"""``pipeline.redo_xanes`` keeps what the run knew of the wide patches of input pixels without a value.

The run flags a particle's pixels that lay in a patch filled from its rim (``filled``, left out of its means) and
leaves the frames where its mask lay in one out of its size and shape trends
(tests/test_filled_patch_no_fake_shrink.py). The redo had no patches: on the probe's scene (seed 5 at 256 px, a
40 x 40 px NaN patch in every frame) a redo on the axis shifted by +0.5 eV, in memory or from the folder, gave the
particle under the patch 0 filled pixels of the run's 515 (its filled note kept), said it shrank by 10.9 % and
flagged its rim (kept fraction 0.560 -> 0.536), its mean E50 8341.010 eV against the run's 8340.949 + 0.5, and the
console again suggested the frames were reversed. The run now keeps those frames (``filled_frames``, in
results.h5); the redo flags the filled pixels again and leaves the frames out.
"""

import numpy as np
import pytest

from conftest import NAN_PATCH, CollectWarnings, nan_patch_scene
from xanestrack import xanes
from xanestrack.outlines import FILLED_NOTE, MOVING_RIM_NOTE
from xanestrack.pipeline import PipelineOptions, redo_xanes, run_pipeline
from xanestrack.result import particle_summary
from xanestrack.results import read_results, write_results
from xanestrack.stack import Stack
from xanestrack.synth import make_synthetic_stack

#: the redo's axis: the run's shifted by this (eV); every E50 moves by it
SHIFT_EV = 0.5


def _redone(stack, tmp_path_factory, name):
    """The run on ``stack``, its redo on the shifted axis in memory and from its folder, and the console's warnings
    of the redos."""
    result = run_pipeline(stack, options=PipelineOptions(threads=1))
    out = tmp_path_factory.mktemp(name)
    write_results(result, out, stack=stack)
    e = np.asarray(result.energies_ev, float) + SHIFT_EV
    with CollectWarnings() as said:
        mem = redo_xanes(result, energies_ev=e)
        folder = redo_xanes(read_results(out), energies_ev=e)
    return result, mem, folder, out, said.messages


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """The probe's scene (:func:`conftest.nan_patch_scene`) with its NaN patch."""
    od, e = nan_patch_scene()
    od[NAN_PATCH] = np.nan
    return _redone(Stack(od, e), tmp_path_factory, "patched")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The default scene, seed 1 at reduced size: no patch."""
    s = make_synthetic_stack(
        "default", seed=1, n_energies=40, shape=(160, 160), n_particles=3, radius_range=(12.0, 18.0)
    )
    return _redone(Stack(s.optical_density(), np.asarray(s.energies_ev, float)), tmp_path_factory, "clean")


def _filled(p):
    return (np.asarray(p.pixel_flags) & xanes.FLAG_FILLED) > 0


def _rim_notes(p):
    return [n for n in p.notes if n.startswith(MOVING_RIM_NOTE)]


def _same_as_run(run, redone):
    """The redo's flags, quality masks and notes on the outline as the run's, its mean E50 moved by SHIFT_EV."""
    summary, before = (particle_summary(r).set_index("particle") for r in (redone, run))
    assert [p.particle for p in redone.particles] == [p.particle for p in run.particles]
    for p, q in zip(redone.particles, run.particles):
        np.testing.assert_array_equal(p.pixel_flags, q.pixel_flags)
        np.testing.assert_array_equal(p.kept, q.kept)
        assert _rim_notes(p) == _rim_notes(q)
        assert [n for n in p.notes if n.startswith(FILLED_NOTE)] == [n for n in q.notes if n.startswith(FILLED_NOTE)]
        a, b = summary.loc[p.particle], before.loc[q.particle]
        assert a.kept_fraction == b.kept_fraction
        assert abs(a.mean_e50_ev - (b.mean_e50_ev + SHIFT_EV)) < 0.01, (p.particle, a.mean_e50_ev, b.mean_e50_ev)


def test_a_redo_keeps_the_filled_pixels_and_invents_no_shrinking(patched):
    run, mem, folder, out, messages = patched
    (p,) = [q for q in run.particles if _filled(q).any()]
    assert _filled(p).sum() == 515 and not _rim_notes(p)
    assert p.filled_frames is not None and p.filled_frames.all()  # the patch lay over it in every frame
    for redone in (mem, folder):
        (r,) = [q for q in redone.particles if q.particle == p.particle]
        np.testing.assert_array_equal(r.filled_frames, p.filled_frames)
        assert not _rim_notes(r)  # before: "it shrinks by 10.9 % (-2.11 px in radius) ..."
        assert not (_filled(r) & r.kept).any()  # before: 0 filled, kept 0.536 (0.560 in the run)
        assert not any("grow or shrink across the scan" in n for n in redone.notes)
        _same_as_run(run, redone)  # before: mean E50 8341.010 eV, the run's +0.5 is 8341.449
    # its filled pixels' negative steps do not suggest reversed frames on the redo's console either
    assert not any("reverse order" in m for m in messages), messages


def test_a_redo_of_a_run_without_patches_is_unchanged(clean):
    """Control: nothing filled, no frame kept, nothing written; the redo as the run, E50 moved by the shift."""
    run, mem, folder, out, _ = clean
    import h5py

    with h5py.File(out / "results.h5", "r") as f:
        assert not any("filled_frames" in g for g in f["particles"].values())
    for redone in (run, mem, folder):
        assert all(p.filled_frames is None and not _filled(p).any() for p in redone.particles)
    _same_as_run(run, mem)
    _same_as_run(run, folder)
