"""Large particles in less memory, the same numbers (issue 12, item 4).

A 1024^2 scan of 12 particles of radius 10-113 px peaked at 1846-1921 MiB (budget 1644): the frames were held
beside every particle's results to the end, the waiting particles' window masks as float32, the outlines' moments
and turns made float64 copies of a whole mask stack. Each change below keeps the numbers: these tests compare the
compact or blockwise path with the whole-array one.
"""

import dataclasses

import numpy as np
import pytest

from xanestrack import outlines, register, xanes
from xanestrack.pipeline import PipelineOptions, run_pipeline
from xanestrack.segment import PackedMasks
from xanestrack.stack import Stack


def test_packed_masks_give_back_every_bit():
    rng = np.random.default_rng(0)
    m = rng.random((9, 17, 13)).astype(np.float32)
    m[m < 0.55] = 0.0
    m[0, 0, 0], m[1, 2, 3], m[2, 4, 5] = -0.0, np.nan, np.inf
    p = PackedMasks(m)
    assert p.shape == m.shape and len(p) == 9 and p.dtype == np.float32
    for key in (slice(None), slice(2, 7), slice(7, 20), 4, -1, [0, 5, 8], np.arange(9) % 2 == 0):
        got, want = p[key], m[key]
        assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32)), key
    assert np.array_equal(np.asarray(p, np.float32).view(np.uint32), m.view(np.uint32))
    assert np.array_equal(np.array(p, copy=True) > 0.5, m > 0.5)
    held = sum(b.nbytes for b in p._bits) + sum(v.nbytes for v in p._values)
    assert held < 0.6 * m.nbytes  # 45 % set: their values and a bit per pixel
    with pytest.raises(ValueError, match="n_frames, h, w"):
        PackedMasks(m[0])


@pytest.fixture(scope="module")
def finished(small_synth):
    return run_pipeline(Stack(small_synth.optical_density(), small_synth.energies_ev))


def test_outline_moments_and_turns_a_block_of_frames_at_a_time(finished, monkeypatch):
    """The moments (_outline_shapes) and turns (_outline_turns) of a particle's masks, frame by frame, are the
    same whether the frames come a few at a time or all at once, with and without a resolution match."""
    n = len(finished.energies_ev)
    blur = np.linspace(0.0, 1.2, n)

    def measure():
        out = []
        for p in finished.particles:
            for b in (None, blur):
                out += [np.asarray(v) for v in outlines._outline_shapes(p, n, b)]
                out += [np.asarray(v) for v in outlines._outline_turns(p, n, b)]
        return out

    whole = measure()
    monkeypatch.setattr(xanes, "BLOCK_PX", 3 * 60 * 60)  # blocks of a few frames
    for a, b in zip(whole, measure(), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    assert any(np.isfinite(a).any() for a in whole)


def test_edge_widths_of_some_frames_are_those_of_the_frames_taken(finished):
    p = max(finished.particles, key=lambda q: q.mask.sum())
    frames = np.flatnonzero(np.arange(len(p.aligned)) % 3 == 1)
    got = register.edge_widths(p.aligned, p.mask, frames=frames)
    want = register.edge_widths(p.aligned[frames], p.mask)
    assert got.shape == (frames.size,) and np.isfinite(want).sum() > 5
    assert np.array_equal(got, want, equal_nan=True)


def _same_result(a, b):
    assert [p.particle for p in a.particles] == [p.particle for p in b.particles]
    for p, q in zip(a.particles, b.particles):
        for f in ("positions", "frame_flags", "aligned", "masks", "pixel_flags"):
            assert np.array_equal(getattr(p, f), getattr(q, f), equal_nan=True), f
        assert set(p.maps) == set(q.maps)
        for k in p.maps:
            assert np.array_equal(p.maps[k], q.maps[k], equal_nan=True), k
        assert p.notes == q.notes
    assert a.notes == b.notes
    assert (a.fused is None) == (b.fused is None)
    if a.fused is not None:
        assert np.array_equal(a.fused, b.fused, equal_nan=True)


@pytest.mark.parametrize("fuse", ["ends", "all"])
def test_the_frames_let_go_once_no_stage_needs_them(small_synth, finished, fuse):
    """``let_go_frames`` (the CLI's): the stack's frames are let go before the passes over every particle's
    results, the frames the fused image needs kept; every output the same. With ``fuse="all"`` every frame is
    needed to the end and kept."""
    options = dataclasses.replace(PipelineOptions(), fuse=fuse)
    stack = Stack(small_synth.optical_density(), small_synth.energies_ev)
    ref = finished if fuse == "ends" else run_pipeline(Stack(stack.od.copy(), stack.energies_ev), options=options)
    got = run_pipeline(stack, options=options, let_go_frames=True)
    assert (stack.od is None) == (fuse == "ends")
    _same_result(ref, got)
