"""Frames in another order than the energies given, and the notes around spectra that are no sample's.

A scan taken in two passes (even-numbered energies, then odd) given with its energies sorted gave every particle
an E50 17 eV low with a sigma of 0.02 eV and no word; a scan taken from high to low energies given ascending was
blamed on "frames that start on the edge"; OD normalised per frame counted each pixel twice and claimed a mean
that was not given; an axis 3-15 eV off read "each 0.5 eV moves the fraction by 0.00".
"""

from types import SimpleNamespace

import numpy as np
import pytest
from chemistry_synth import disc, dome, pixel_od

from xanestrack import synth, xanes
from xanestrack.chemistry.runnotes import UNCALIBRATED_NOTE
from xanestrack.pipeline import _untrusted_note, run_pipeline
from xanestrack.spectra import ni_references
from xanestrack.stack import Stack
from xanestrack.synth_stress import make_stress_stack

E = synth.ni_energy_grid(60)
#: two passes: the even-numbered energies, then the odd ones (the frames' order), the energies given sorted
PASSES = np.r_[0:60:2, 1:60:2]


def _particle(spectrum, seed=0):
    """A particle's OD window (60, 40, 40) of one normalised ``spectrum`` (60,) and its mask."""
    mask = disc((40, 40), 13)
    od, _ = pixel_od(
        E, spectrum[None], mask[None].astype(float), dome((40, 40), 13, 0.6), rng=np.random.default_rng(seed)
    )
    return od, mask


def _mix():
    refs = ni_references()
    return 0.6 * refs["NiO"](E) + 0.4 * refs["LiNiO2"](E)


def test_frames_taken_in_two_passes_decline_the_particle():
    od, mask = _particle(_mix())
    refs = ni_references()
    right = xanes.analyse_particle(od, mask, E, references=refs, uncertainty=False)
    assert not any(xanes.FALL_BACK_NOTE in n or xanes.NEGATIVE_STEP_NOTE in n for n in right["notes"]), right["notes"]
    assert np.isfinite(right["edge_maps"]["e50"][mask]).all()
    out = xanes.analyse_particle(od[PASSES], mask, E, references=refs, uncertainty=False)
    (note,) = [n for n in out["notes"] if xanes.FALL_BACK_NOTE in n]
    assert note.startswith("XANES failed") and "are the frames in the order of the energies" in note
    assert " eV" in note.split(xanes.FALL_BACK_NOTE)[1][:30]  # names where it falls back
    assert not np.isfinite(out["edge_maps"]["e50"]).any() and out["fractions"] is None
    assert np.isfinite(out["mean_norm"]).any()  # the spectrum that shows why is kept


def test_a_strong_white_line_is_not_a_fall_back():
    """The control: a white line 2.3 times the step, the post-edge dipping to 0.6 after it."""
    s = (
        0.5
        + np.arctan((E - 8342.0) / 1.2) / np.pi
        + 1.3 * np.exp(-(((E - 8348.0) / 3.5) ** 2))
        - 0.4 * np.exp(-(((E - 8362.0) / 6.0) ** 2))
    )
    assert s.max() > 2.0 and s[E > 8350].min() < 0.7
    od, mask = _particle(s)
    out = xanes.analyse_particle(od, mask, E, uncertainty=False)
    assert not any(n.startswith("XANES failed") for n in out["notes"]), out["notes"]
    assert np.isfinite(out["edge_maps"]["e50"][mask]).mean() > 0.9


def test_frames_in_the_reverse_order_say_the_step_is_negative():
    od, mask = _particle(_mix())
    out = xanes.analyse_particle(od[::-1], mask, E, references=ni_references(), uncertainty=False)
    (note,) = [n for n in out["notes"] if xanes.NEGATIVE_STEP_NOTE in n]
    assert "reverse order of the energies" in note and "transmission" in note
    assert not any("start on the edge" in n for n in out["notes"]), out["notes"]  # the wrong cause, said before
    assert not np.isfinite(out["edge_maps"]["e50"]).any()


def test_a_step_too_low_is_not_also_counted_non_finite():
    """normalize sets a spectrum of too low a step to NaN: "193 too low, 193 non-finite" counted each pixel twice."""
    mask = disc((30, 30), 12)
    e50 = np.full(mask.shape, np.nan, np.float32)
    flags = np.zeros(mask.shape, np.uint8)
    flags[mask] = xanes.FLAG_LOW_STEP | xanes.FLAG_NONFINITE
    note = xanes._few_e50_note(e50, flags, mask)
    assert "have too low an edge step" in note and "non-finite" not in note
    flags[mask] = xanes.FLAG_NONFINITE  # the control: spectra that hold NaN are said to
    assert "hold non-finite values" in xanes._few_e50_note(e50, flags, mask)


@pytest.fixture(scope="module")
def small():
    s = synth.make_synthetic_stack(
        "default", seed=1, n_particles=3, shape=(160, 160), n_energies=48, radius_range=(12.0, 18.0)
    )
    return s.optical_density(), s.energies_ev


def _order_notes(result):
    return [n for n in result.notes if xanes.FALL_BACK_NOTE in n or xanes.NEGATIVE_STEP_NOTE in n]


def test_the_run_says_the_frames_are_not_in_the_order_of_the_energies(small):
    od, e = small
    passes = np.r_[0 : e.size : 2, 1 : e.size : 2]
    result = run_pipeline(Stack(od[passes], e))
    (note,) = _order_notes(result)
    assert note.startswith("no XANES for 3 of 3 particles") and "are the frames in the order" in note
    assert all(not np.isfinite(p.edge_maps["e50"]).any() for p in result.particles)
    result = run_pipeline(Stack(od[::-1], e))
    (note,) = _order_notes(result)
    assert "no XANES for 3 of 3" in note and "reverse order of the energies" in note


def test_no_order_note_on_the_default_and_a_stress_scene(small):
    """The controls: the spectra in order, on the default scene and on a stress scene (drift, a phase that is not
    the references')."""
    od, e = small
    result = run_pipeline(Stack(od, e))
    assert not _order_notes(result)
    assert all(np.isfinite(p.edge_maps["e50"]).any() for p in result.particles)
    assert not any(n.startswith("every frame has the same mean") for n in result.notes)
    st = make_stress_stack("stress-drift", 3, reduced=True)
    result = run_pipeline(Stack(st.optical_density(), st.energies_ev))
    assert not _order_notes(result)
    assert sum(np.isfinite(p.edge_maps["e50"]).any() for p in result.particles) >= 3


def test_od_normalised_per_frame_is_said(small):
    """Each frame divided by its own mean: the edge divided out of the spectra, nothing said of why."""
    od, e = small
    result = run_pipeline(Stack(od / np.nanmean(od, axis=(1, 2), keepdims=True), e))
    assert any(n.startswith("every frame has the same mean") for n in result.notes), result.notes
    assert not any(np.isfinite(p.edge_maps["e50"]).any() for p in result.particles)


def _untrusted(pid, withheld, fractions):
    mask = disc((30, 30), 12)
    note = "E50 measured in 0 of its 300 core pixels only (...): its mean E50 is not given (...)"
    fr = np.full((2, 30, 30), 0.5 if fractions else np.nan, np.float32)
    return SimpleNamespace(particle=pid, notes=(note,) if withheld else (), fractions=fr, mask=mask, kept=~mask)


def test_the_untrusted_note_claims_no_mean_it_does_not_give():
    """OD normalised per frame: "the mean edge energy and fractions are over every core pixel" while no mean E50
    was given."""
    note = _untrusted_note([_untrusted(0, True, False), _untrusted(1, True, False)])
    assert "none of them trusted" in note and "no mean edge energy is given for any" in note
    assert "the mean edge energy" not in note and "fractions" not in note
    note = _untrusted_note([_untrusted(0, True, True), _untrusted(3, False, True)])
    assert "the mean edge energy and the fractions given are over every core pixel" in note
    assert "no mean edge energy is given for 0 " in note
    # the control: both means given
    note = _untrusted_note([_untrusted(0, False, True)])
    assert "the mean edge energy and the fractions given are over every core pixel, none of them trusted" in note
    assert "no mean edge energy" not in note


def test_an_axis_far_off_says_where_the_e50_lie_not_a_change_of_zero(small):
    od, e = small
    result = run_pipeline(Stack(od, e + 15.0))
    (note,) = [n for n in result.notes if n.startswith(UNCALIBRATED_NOTE)]
    assert "0.00" not in note and "sit at 0 or 1" in note
    assert "may hide it" in note and "either way leaves them there" in note  # 15 eV off: neither way moves them
    assert "above the references' half-step energies" in note
    # the control: the axis as given
    (note,) = [n for n in run_pipeline(Stack(od, e)).notes if n.startswith(UNCALIBRATED_NOTE)]
    assert "sit at 0 or 1" not in note and "half-step energies" not in note


def test_a_foil_of_another_edge_names_reference_e0():
    from conftest import shared_data
    from xanestrack.cli import _calibrate_stack
    from xanestrack.errors import XanestrackError

    foil = shared_data("spectra", "xasdatalibrary", "Co", "co_metal_rt.xdi")
    e = np.linspace(7576.0, 8056.0, 60)
    stack = Stack(np.ones((60, 8, 8), np.float32), e)
    with pytest.raises(XanestrackError, match=r"--reference-e0 right \(8333 eV.*default, a Ni foil"):
        _calibrate_stack(stack, foil, 8333.0, None)
