"""XANES analysis of aligned spectra, vectorised over pixels.

Normalisation follows the usual recipe (Athena/larch ``pre_edge``): a line fitted to
the pre-edge, a polynomial to the post-edge, the edge step is their difference at E0
and ``norm = (mu - pre) / step``. Every pixel's fit shares one design matrix, so the
whole map is two least-squares solves, not a loop over spectra.

Spectra are arrays ``(n_energies, ...)``: a single spectrum ``(n,)``, a map
``(n, h, w)`` or a flat list ``(n, n_pixels)``. A pixel whose fit fails gets NaN and a
bit in ``flags``:

- ``FLAG_NONFINITE`` (1): the spectrum has NaN/inf values;
- ``FLAG_LOW_STEP`` (2): the edge step is not positive or below 3 x the pre-edge noise;
- ``FLAG_NO_CROSSING`` (4): the normalised spectrum never crosses the level in the window;
- ``FLAG_FIT`` (8): the linear combination fit failed or is outside its constraints;
- ``FLAG_GAP`` (16): the edge energy falls in a gap of left-out frames: not measured;
- ``FLAG_MOVING_RIM`` (32): measured, but within a few pixels of the outline of a particle whose size
  or shape (a turn, a crack opening) changes across the scan (:func:`flag_moving_rim`): the outline moves
  through the pixel across the edge's energies, so its spectrum mixes the particle's and its surroundings';
  not kept by the quality mask.
- ``FLAG_FILLED`` (64): in a frame its XANES used, the pixel lay in a wide patch of input pixels without a value
  (flats saturated over the beam's hot spot), filled from the patch's rim
  (:func:`xanestrack.stack.sanitize_stack`): its spectrum there is not measured; not kept by the quality mask.
- ``FLAG_THICK`` (128): the run measured light that the sample does not absorb, and the pixel is thick enough for
  it to move its E50 by 0.1 eV or more (:func:`xanestrack.chemistry.stray.flag_stray_light`); not kept by the
  quality mask.
- ``FLAG_MISFIT`` (256): measured, but in a region of the particle whose spectra the references do not describe
  (:func:`misfit_region`: a phase they do not hold); its E50 stands, its fractions are left out of the particle's
  mean fractions (kept by the quality mask). Pixel flags are uint16 from this bit on (uint8 in files written
  before it).

:func:`analyse_particle` runs the whole analysis on one particle's aligned sub-stack:
local background (:func:`local_background`), smoothing inside the mask, normalisation,
edge-energy maps and the linear combination fit.

References
----------
B. Ravel and M. Newville, J. Synchrotron Rad. 12 (2005) 537, doi:10.1107/S0909049505012719.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .morph import frame_blocks
from .robust import MAD_TO_SIGMA

__all__ = [
    "analyse_particle",
    "local_background",
    "Normalization",
    "LCFResult",
    "find_e0",
    "normalize",
    "edge_energy",
    "linear_combination_fit",
    "FLAG_NONFINITE",
    "FLAG_LOW_STEP",
    "FLAG_NO_CROSSING",
    "FLAG_FIT",
    "FLAG_GAP",
    "FLAG_MOVING_RIM",
    "FLAG_FILLED",
    "FLAG_THICK",
    "FLAG_MISFIT",
    "lcf_misfit_map",
    "misfit_region",
    "moving_rim",
    "flag_moving_rim",
]

logger = logging.getLogger(__name__)
#: the spectra whose "no usable edge step" warning :func:`normalize` gave last (a key of their low steps), so that
#: the quality masks and the standard errors, which normalise the same spectra again, do not repeat it: stress-all
#: printed each such warning three times, word for word. :func:`analyse_particle` clears it for each particle
_EDGE_STEP_WARNED: contextvars.ContextVar = contextvars.ContextVar("xanestrack_edge_step_warned", default=None)

FLAG_NONFINITE, FLAG_LOW_STEP, FLAG_NO_CROSSING, FLAG_FIT = 1, 2, 4, 8
#: the edge energy falls in a gap of left-out frames (:func:`edge_energy`): not measured
FLAG_GAP = 16
#: the pixel lies within a few pixels of the outline of a particle whose own size or shape (a turn, a crack
#: opening) changes across the scan (:func:`flag_moving_rim`): its E50 and fractions are measured but biased,
#: and the quality mask drops it
FLAG_MOVING_RIM = 32
#: in a frame the pixel's XANES used it lay in a wide patch of input pixels without a value (saturated flat pixels
#: over the beam's hot spot), filled from the patch's rim (:func:`xanestrack.stack.sanitize_stack`): its spectrum
#: there is not measured, and the quality mask drops it (set by the pipeline)
FLAG_FILLED = 64
#: the run measured light that the sample does not absorb (harmonics, stray light), and the pixel is thick enough
#: for it to move its E50 by 0.1 eV or more (:func:`xanestrack.chemistry.stray.flag_stray_light`): measured but
#: biased low, and the quality mask drops it (set by the pipeline)
FLAG_THICK = 128
#: the pixel lies in a region of the particle whose spectra the references do not describe (:func:`misfit_region`:
#: the fit leaves several times the spectra's noise over a connected patch, a phase the references do not hold):
#: its E50 is measured, its fractions are not its chemistry and are left out of the particle's mean fractions
#: (:func:`xanestrack.result.fraction_pixels`); the quality mask keeps it (its E50 is the particle's: cutting the
#: pixels the references describe worse moved a core-shell particle's mean E50 by -0.43 eV). The first bit past
#: uint8: pixel flags are uint16
FLAG_MISFIT = 256
#: a particle whose E50 falls in a gap of frames left out in more than this share of its mask's pixels has no
#: mean E50 (nor spread, nor sigma; :func:`xanestrack.result.particle_summary`): the pixels measured are those
#: whose E50 lies outside the gap, a choice by the value measured (three frames lost at 8339.5-8340.5 eV to a
#: beam dump: a mean 0.82 eV high, its sigma 0.010, from 424 of 4805 pixels; at 10 %, a stress-all particle
#: with 44 % in a gap lost a mean 0.17 eV off). Up to this share the mean counts each pixel in a gap at its own
#: gap's centre and its sigma holds their spread over it (:func:`xanestrack.result.gap_counted`): the mean of the
#: pixels measured alone is the mean of that choice (stress-counts seed 2, reduced: 43 % of a particle in a gap
#: at 8339.5-8343.1 eV, below its E50s: +0.32 +- 0.083 eV off its true mean, 3.9 sigma; counted, -0.88 +- 0.47
#: eV, 1.9 sigma)
MAX_GAP_SHARE = 0.5
#: the per-pixel map (``ParticleResult.maps``) of where the E50 of a pixel flagged ``FLAG_GAP`` lies: ``(2, h, w)``,
#: the analysed energies either side of its own gap (eV), NaN elsewhere; made where a pixel of the particle has one
E50_GAP_MAP = "e50_gap"
#: a particle with an E50 in fewer than this share of its whole core (its mask eroded, before the quality masks:
#: :func:`xanestrack.result.e50_share`) has no mean E50 (nor spread, nor sigma), no mean fractions
#: (:func:`xanestrack.result.particle_summary`) and a note saying so: the pixels whose spectra cross half the step
#: are a choice by the spectrum, not the particle (an entering particle's frames used starting past its edge's rise:
#: 18 of 2484 core pixels, a mean 33 eV high, its sigma 0.19 eV)
MIN_E50_SHARE = 0.5

#: eV relative to E0: the pre-edge range of :func:`normalize`
PRE_EDGE_RANGE = (-150.0, -30.0)
#: the pre-edge energies must span this share of their distance below E0 (the line fitted through them is
#: carried to E0: 0.1 lets its slope's error grow at most 10-fold there; two energies 1 eV apart 30 eV below
#: E0, 0.03, gave per-pixel E50 1.4-1.6 eV off; grids starting 40 eV below the edge at 5-10 eV steps, 0.2-0.25,
#: and pre-edge frames 15-20 eV apart 100-140 eV below (the rest left out), 0.13-0.15, measure well)
MIN_PRE_SPAN = 0.1

#: fewer energies than this from E0 + 100 eV to the scan's end: the post-edge's normalisation is said to
#: rest on too few (:func:`analyse_particle`), and the references' misfit is not said (it is the
#: normalisation's: on the default scene with only 8460 and 8680 eV past the edge, every particle 3.1-9.2 x,
#: its E50 within 0.1-0.3 eV). Three energies at 8500, 8600 and 8680 eV: E50 +0.34 eV (+0.48 at most; the full
#: scan +0.05), sigma 0.01-0.03
MIN_POST_EDGE_ENERGIES = 5

#: how the particle notes on a sparse post-edge and on references that do not describe the spectra begin
#: (the run notes gather them: :func:`xanestrack.pipeline._particle_chemistry_notes`)
SPARSE_POST_EDGE_NOTE, MISFIT_NOTE = "the post-edge is normalised from", "do not describe this particle's spectra"

#: eV: a reference whose edge (its E0, :func:`find_e0`) lies further than this from a particle's is of another
#: absorption edge, and no fractions are fitted with it (:func:`analyse_particle`). The notes on an axis off the
#: references' are built for 0.5-15 eV (chemistry.runnotes.UNCALIBRATED_E50_OUTSIDE_EV: an axis 3-15 eV off), and one edge's
#: E0 moves with the phase by 13 eV (a Co foil mixed with that foil +4 eV, every 0.5 eV: 7708.9-7721.9 eV); Co
#: references on a Co+Ni scan's Ni particles: 7709-7713 against 8343-8346 eV, every fraction 0.000 (truth
#: 0.13-0.66). As chemistry.runnotes.TWO_EDGES_EV
OTHER_EDGE_EV = 100.0
#: how the particle note of a fit skipped for references of another edge begins (the run note gathers them:
#: :func:`xanestrack.pipeline._other_edge_references_note`)
OTHER_EDGE_NOTE = "LCF skipped: references of another absorption edge"

#: how the particle note begins where the fit takes the references as given, not normalised as the particle's
#: spectra are (:func:`references_on_scan`: they do not reach over the energies those are normalised on; the run
#: note gathers them: :func:`xanestrack.pipeline._particle_chemistry_notes`)
AS_GIVEN_NOTE = "fractions fitted against the references as given"


#: eV per 1 % of the edge step: a particle whose mean spectrum crosses half its step so slowly that 1 % of the step
#: moves its E50 by more than this is noted (:func:`_shoulder_note`). Its E50 hangs on the normalisation: Ni foil
#: (edge on a shoulder, no white line) 0.16 eV per 1 %, read on this package's energy grids (143 / 100 / 60 / 40
#: energies) 0.33 / 0.07 / 0.56 / 0.42 eV below its E50 densely measured, its sigma 0.02 eV; NiO, LiNiO2,
#: Ni(OH)2, "Ni2O3", NiS 0.037-0.062 eV per 1 % and 0.07-0.21 eV
SHOULDER_EV_PER_PERCENT = 0.1
#: how the particle note of :func:`_shoulder_note` begins (the run notes gather it)
SHOULDER_NOTE = "its edge crosses half its step on a shoulder"

#: share of the edge step: a particle's mean normalised spectrum that falls back below it at
#: :data:`FALL_BACK_MIN_ENERGIES` energies or more after first crossing half its step has no XANES
#: (:func:`_fall_back_note`): no sample's spectrum returns to its pre-edge level above its edge. Frames taken in two
#: passes (even-numbered energies, then odd) given with the energies sorted: five particles' mean spectra that climb
#: to 1.76-1.91, fall back to -0.05 to -0.03 at 8349-8364 eV and rise again; every mean E50 17.3-17.5 eV low with a
#: sigma of 0.01-0.03 eV, nothing said. Correct order: their lowest after the crossing 0.69-0.82 (three particles
#: of a smaller default scene 0.84-0.85)
FALL_BACK_LEVEL = 0.2
FALL_BACK_MIN_ENERGIES = 2
#: how the particle note of :func:`_fall_back_note` begins (the run notes gather it)
FALL_BACK_NOTE = "its mean normalised spectrum falls back to its pre-edge level above its edge"
#: what :func:`_fall_back_note` says (instead of asking whether the frames are in the order of the energies) where
#: every energy of the fall lies beyond the reach of the pre-edge line: further from the line's first energy than
#: 1 / :data:`MIN_PRE_SPAN` times its span, where the error of its slope, grown as many times, sets the level. A
#: faint particle whose pre-edge frames vouched for were three, 8200-8224 eV (the others not vouched for): its line
#: carried to 8680 eV (20 times its span) took its post-edge from 0.98 down to 0.15 of its step at 8656-8680 eV, and
#: the particle was refused as if its frames were out of order (stress-fines seed 2, 256 px, 60 energies; padded or
#: transposed, its pre-edge frames 8200-8308 eV stood in, its E50 within 0.04 eV of the truth). The fall of frames
#: out of order lies just above the edge (8349-8364 eV), well within reach (:func:`_pre_edge_from_unvouched` then
#: lengthens the line with the frames not vouched for)
FALL_BEYOND_LINE = "beyond the reach of its pre-edge line"
#: a particle whose edge step is negative beyond 3 times its pre-edge noise in more than this share of its pixels
#: has no XANES (:func:`_negative_step_note`): its absorption falls across the edge. A scan taken from high to low
#: energies, its frames given with the energies ascending: the step negative in every pixel of the 5 particles
NEGATIVE_STEP_SHARE = 0.5
#: how the particle note of :func:`_negative_step_note` begins (the run notes gather it)
NEGATIVE_STEP_NOTE = "the edge step is negative"


def _fall_back_note(e, norm, pre_range_ev=None) -> str:
    """The reason a particle's mean normalised spectrum ``norm`` (n,) at the energies ``e`` is not a spectrum:
    it falls back below :data:`FALL_BACK_LEVEL` of its step at :data:`FALL_BACK_MIN_ENERGIES` energies or more
    after first crossing half of it (frames in another order than the energies given). Empty otherwise.

    ``pre_range_ev`` (first, last eV): the pre-edge energies its line was fitted through (``Normalization``'s
    ``pre_range_ev``). Where every energy of the fall lies beyond that line's reach (further from its first energy
    than 1 / :data:`MIN_PRE_SPAN` times its span), the note says so (:data:`FALL_BEYOND_LINE`) and does not ask
    about the frames' order: the level there is set by the error of the line's slope carried that far."""
    norm = np.asarray(norm, float)
    up = np.flatnonzero(norm >= 0.5)
    if not up.size:
        return ""
    back = np.flatnonzero((np.arange(norm.size) > up[0]) & (norm < FALL_BACK_LEVEL))
    if back.size < FALL_BACK_MIN_ENERGIES:
        return ""
    what = (
        f"{FALL_BACK_NOTE} ({_frame_runs(e, np.isin(np.arange(e.size), back))}: below {FALL_BACK_LEVEL:g} of its "
        f"step, down to {norm[back].min():.2f}, after crossing half of it at {e[up[0]]:.1f} eV and reaching "
        f"{np.nanmax(norm):.2f})"
    )
    if pre_range_ev is not None:
        lo, hi = (float(v) for v in pre_range_ev)
        far = float(np.max(e[back])) - lo
        # a fall confined to where the pre-edge line is carried beyond its reach is that line's slope, not the
        # frames' order (whose fall lies just above the edge): asking about the order misled
        if hi > lo and (e[back] - lo > (hi - lo) / MIN_PRE_SPAN).all():
            return (
                f"{what} {FALL_BEYOND_LINE}: the line is fitted through its pre-edge energies {lo:.1f}-{hi:.1f} eV "
                f"(a span of {hi - lo:.1f} eV) and carried to {lo + far:.1f} eV, {far / (hi - lo):.0f} times that "
                f"span (more than {1 / MIN_PRE_SPAN:g}): the error of its slope, grown as many times, sets the level "
                "there. Its E50 and fractions would rest on that line; pre-edge frames left out (not vouched for) "
                "would lengthen it"
            )
    return (
        f"{what}: no sample's spectrum does; are the frames in the order of the energies given "
        "(an energies file sorted while the frames were taken in two passes or in another order), and as measured "
        "(not each divided by its own mean)? Its E50 and fractions would be of a spectrum that is not the particle's"
    )


def _negative_step_note(e, mu, nm, measured=None) -> str:
    """The reason a particle's pixels' spectra ``mu`` (n, n_pix), normalised as ``nm``, have no edge: their edge
    step is negative beyond 3 times their pre-edge noise in more than :data:`NEGATIVE_STEP_SHARE` of them (the
    absorption falls across the edge). Empty otherwise. ``measured`` (n_pix,) bool: the pixels counted (default
    all; those filled from a patch's rim in some frame say nothing of the frames' order)."""
    ip = (e >= nm.pre_range_ev[0]) & (e <= nm.pre_range_ev[1])
    # the pre-edge rows only, in float64 (the whole spectra so were two 46 MiB copies of a large particle's)
    y = np.asarray(np.reshape(mu, (e.size, -1))[ip], float)
    resid = y - np.asarray(np.reshape(nm.pre_edge, (e.size, -1))[ip], float)
    noise = np.sqrt((resid**2).sum(axis=0) / max(int(ip.sum()) - 2, 1))
    neg = np.asarray(nm.edge_step, float).ravel() < -3 * noise
    if measured is not None:
        neg = neg[np.asarray(measured, bool).ravel()]
    if not neg.size or not neg.mean() > NEGATIVE_STEP_SHARE:
        return ""
    return (
        f"{NEGATIVE_STEP_NOTE} in {int(neg.sum())} of its {neg.size} pixels (their absorption falls across the edge "
        f"at {nm.e0_ev:.1f} eV, by more than 3 times their pre-edge noise): the frames are in the reverse order of "
        "the energies (a scan taken from high to low energies, its energies given ascending), or the values are "
        "transmission, not optical density"
    )


#: a particle whose mean spectrum's edge step (:func:`mean_edge_step`) is not above this many standard errors, or not
#: above :data:`EDGE_ABSENT_RATIO` of its pre-edge OD at E0, shows no absorption edge of the scan's element
#: (:func:`_no_edge_note`): a binder or carbon clump, an Al flake, a particle of another element. The few noisy
#: crossings of its pixels were given as its E50 and its fractions as its chemistry (an absorber whose OD falls as
#: E^-3, post-edge OD 2: E50 8326.69 +- 6.61 eV and oxidised_fraction 1.000 from the one pixel of 437 the quality masks
#: kept). 3 as the faint tracks' rule (:data:`xanestrack.pipeline.EDGELESS_Z`). Measured (60 and 143 energies): 6 such
#: absorbers of the probe's scenes (post-edge OD 0.3-2) -4.3 to +0.4; 62 Ni particles of the default scenes (seeds
#: 1-3), the stress presets (reduced, seed 1) and the probe's scenes, faint ones (a step of 0.19 OD at 1500 counts)
#: included, 19.8 to 70.5 (a thin synthetic disc, a step of 0.008 OD at 5000 counts: 10)
EDGE_ABSENT_Z = 3.0
#: the share of its pre-edge OD (at E0) below which a mean spectrum's edge step is no edge of the scan's element,
#: however many standard errors it holds (a thick absorber's smooth fall, its noise averaged over thousands of
#: pixels). Physics: Ni K-edge steps are 0.5 (NMC111, LiNi0.5Mn1.5O4: Mn and Co absorb below the Ni edge) to about
#: 7 (Ni, NiO) times the absorption just below the edge; 0.02 is about 1 wt % Ni in a Co oxide. A Ni-free absorber
#: (OD ~ E^-3) normalised as the particles are: -0.003 (noise-free, 20-143 energies). Measured: the 6 absorbers
#: -0.0096 to +0.0007; the 63 Ni particles 3.1 to 4.3 (synthetic: a pre-edge OD a quarter of the step)
EDGE_ABSENT_RATIO = 0.02
#: how the particle note of :func:`_no_edge_note` begins (the run notes gather it)
EDGE_ABSENT_NOTE = "its mean spectrum shows no"


def mean_edge_step(e, spectrum, nm) -> tuple[float, float, float]:
    """``(step, sigma, pre_od)`` of a mean spectrum ``spectrum`` (n,) at the energies ``e``, normalised as ``nm``
    (:func:`normalize`): its edge step at E0 (OD), the step's standard error (the scatter of the spectrum about its
    pre-edge line and post-edge polynomial, carried to E0 by their fits) and the pre-edge line's OD at E0. The
    standard error is NaN where a side holds no more energies than its fit has terms (no scatter to measure)."""
    e, y = np.asarray(e, float), np.asarray(spectrum, float).ravel()
    e0 = float(nm.e0_ev)
    x = (e - e0) / 100.0  # as normalize's fits
    pre, post = np.asarray(nm.pre_edge, float).ravel(), np.asarray(nm.post_edge, float).ravel()
    var = 0.0
    for (lo, hi), curve, order in (
        (nm.pre_range_ev, pre, 1),
        (nm.post_range_ev, post, auto_post_order(e, e0)),
    ):
        i = np.flatnonzero((e >= lo) & (e <= hi) & np.isfinite(y))
        if i.size <= order + 1:
            var = float("nan")
            continue
        a = np.vander(x[i], order + 1, increasing=True)
        s2 = float(((y[i] - curve[i]) ** 2).sum()) / (i.size - order - 1)
        var += s2 * float(np.linalg.pinv(a.T @ a)[0, 0])  # the fit's variance at x = 0 (E0)
    pre_od = float(np.interp(e0, e, pre))  # a line: exact between any two energies
    return float(nm.edge_step), float(np.sqrt(var)), pre_od


def _edge_shown(step, sigma, pre_od, sign: int = 1) -> bool:
    """Whether a mean spectrum's edge step ``step`` (its standard error ``sigma``, its pre-edge OD ``pre_od`` at E0:
    :func:`mean_edge_step`) times ``sign`` is an edge: positive, above :data:`EDGE_ABSENT_Z` standard errors
    (where they are measured) and above :data:`EDGE_ABSENT_RATIO` of its pre-edge OD (where that is positive).
    ``sign=-1`` asks whether it is an edge falling across E0 (frames in the reverse order of the energies)."""
    step = sign * step
    z = step / sigma if sigma > 0 else float("nan")
    ratio = step / pre_od if pre_od > 0 else float("nan")
    return bool(step > 0 and not z <= EDGE_ABSENT_Z and not ratio <= EDGE_ABSENT_RATIO)


def _no_edge_note(e, spectrum, nm) -> str:
    """The reason a particle's mean spectrum ``spectrum`` (n,) at the energies ``e``, normalised as ``nm``, shows no
    absorption edge of the scan's element (:func:`_edge_shown`: a step within :data:`EDGE_ABSENT_Z` standard
    errors of nil or below :data:`EDGE_ABSENT_RATIO` of its pre-edge OD). Empty where it shows one.

    The per-pixel E50 of such a particle are a few noise crossings, its fractions a fit to noise: no E50 and no
    fractions rather than a binder clump or an Al flake given as fully charged Ni (the share of its core measured,
    :func:`xanestrack.result.few_e50_measured`, caught the thinner ones only where no pixel passed the quality
    masks)."""
    step, sigma, pre_od = mean_edge_step(e, spectrum, nm)
    if _edge_shown(step, sigma, pre_od):
        return ""
    z = step / sigma if sigma > 0 else float("nan")
    ratio = step / pre_od if pre_od > 0 else float("nan")
    element = _scan_element(e, nm.e0_ev)
    return (
        f"{EDGE_ABSENT_NOTE} {f'{element} K-' if element else 'absorption '}edge: its step across "
        f"{nm.e0_ev:.1f} eV is {step:+.4f} OD"
        + (f", {z:+.1f} standard errors" if np.isfinite(z) else "")
        + (f", {100 * ratio:+.1f} % of its OD below the edge ({pre_od:.3f})" if np.isfinite(ratio) else "")
        + f" (an edge needs more than {EDGE_ABSENT_Z:g} standard errors and {100 * EDGE_ABSENT_RATIO:g} %): "
        f"not a particle of {element or 'the element scanned'} (a binder or carbon clump, an Al flake, a particle of "
        "another element), or one too thin for its edge to show; no E50 and no fractions are given"
    )


def _scan_element(e, e0_ev: float) -> str:
    """The element whose K-edge (:data:`xanestrack.report.K_EDGES_EV`) the energies ``e`` span, the one nearest
    ``e0_ev`` where they span several; else :func:`_edge_element` of ``e0_ev`` (a particle without an edge has no
    E0 of its own: its derivative's maximum is noise)."""
    from .report import K_EDGES_EV

    e = np.asarray(e, float)
    inside = {k: v for k, v in K_EDGES_EV.items() if e.size and e.min() < v < e.max()}
    if inside:
        return min(inside, key=lambda k: abs(inside[k] - float(e0_ev)) if np.isfinite(e0_ev) else 0.0)
    return _edge_element(e0_ev)


def _falling_mean_note(e0_ev: float, mean_step) -> str:
    """The reason a particle's mean spectrum falls across its edge at ``e0_ev`` (``mean_step``: its
    :func:`mean_edge_step`, an edge by :func:`_edge_shown` with ``sign=-1``) where its pixels are too noisy for
    :func:`_negative_step_note`: a faint particle's frames in the reverse order of the energies."""
    step, sigma, _ = mean_step
    return (
        f"{NEGATIVE_STEP_NOTE} in its mean spectrum (its absorption falls across the edge at {e0_ev:.1f} eV by "
        f"{-step:.4f} OD"
        + (f", {-step / sigma:.1f} standard errors" if sigma > 0 else "")
        + "; its pixels too noisy to say so one by one): the frames are in the reverse order of the energies (a scan "
        "taken from high to low energies, its energies given ascending), or the values are transmission, not optical "
        "density"
    )


def _edge_element(e0_ev: float) -> str:
    """The element whose K-edge lies within :data:`xanestrack.report.K_EDGE_NEAR_EV` of ``e0_ev`` (eV), as the
    report's captions name it (:data:`xanestrack.report.K_EDGES_EV`), else ``""``."""
    from .report import K_EDGE_NEAR_EV, K_EDGES_EV

    near = [k for k, v in K_EDGES_EV.items() if np.isfinite(e0_ev) and abs(float(e0_ev) - v) <= K_EDGE_NEAR_EV]
    return near[0] if near else ""


def _shoulder_note(e, norm, e0: float) -> str:
    """The note where the mean normalised spectrum ``norm`` crosses 0.5 (nearest ``e0``) so slowly that its E50
    depends on the edge step far more than an oxide's (:data:`SHOULDER_EV_PER_PERCENT`); empty otherwise."""
    e, norm = np.asarray(e, float), np.asarray(norm, float)
    up = np.flatnonzero((norm[:-1] < 0.5) & (norm[1:] >= 0.5) & np.isfinite(norm[:-1]) & np.isfinite(norm[1:]))
    if not up.size:
        return ""
    i = int(up[np.argmin(np.abs(e[up] - e0))])
    slope = (norm[i + 1] - norm[i]) / (e[i + 1] - e[i])
    per = 0.005 / slope if slope > 0 else np.inf
    if per <= SHOULDER_EV_PER_PERCENT:
        return ""
    element = _edge_element(e0)
    return (
        f"{SHOULDER_NOTE} (a metal-like edge, {slope:.3f} of the step per eV there): each 1 % of the edge step "
        f"the normalisation sets moves its E50 by {per:.2f} eV, which its sigma does not hold; "
        + (
            "a Ni foil read so 0.07-0.56 eV below its densely measured E50 on scans of 40-143 energies (oxides "
            "0.04-0.06 eV per 1 %, within 0.21 eV)"
            if element == "Ni"
            else f"at the Ni K-edge a Ni foil read so 0.07-0.56 eV below its densely measured E50 on scans of 40-143 "
            f"energies (oxides 0.04-0.06 eV per 1 %, within 0.21 eV), not measured at this "
            f"{f'{element} K-edge' if element else f'edge ({e0:.0f} eV)'}"
        )
        + ": compare its E50 with scans of the same energy grid only"
    )


def _count_energies(n: int) -> str:
    return f"{n} energy" if n == 1 else f"{n} energies"


#: eV: the post-edge span (from E0 + 100 eV to the scan's end) from which :func:`normalize`'s "auto"
#: rule fits a line, and from which a parabola. A parabola extrapolated 100 eV back to E0 from a sparsely
#: sampled post-edge follows the EXAFS wiggles the samples happen to catch: on the real FXI Ni energy list
#: (post-edge every 40 eV, 8457-8777 eV), shifted by -10..+10 eV, the E50 of six measured Ni spectra moved
#: by up to 1.4 eV against the dense spectrum's (Ni metal; 0.2-0.5 eV for the oxides), and on the default
#: scene's grid with every 2nd / 3rd / 5th energy by up to 0.4 / 0.7 / 1.3 eV. A line: 0.65 eV at most (a
#: metal foil at one offset), within 0.11 eV for the oxides; over a XANES post-edge (E^-3 falls by 11 %
#: across 340 eV, curving it by 0.5 %) a line is all the physics needs. A constant ignores the fall:
#: E50 2-4 eV low.
POST_EDGE_LINE_SPAN_EV, POST_EDGE_PARABOLA_SPAN_EV = 80.0, 600.0

#: an interval between two analysed frames is a gap when it is more than this many times the
#: scan's own widest step inside it (frames left out between them), or, a hole in the scan's energies
#: themselves, more than this many times the scan's steps on both sides of it (the frames of 8336.5-8344.5 eV
#: absent from a 143-energy file, 0.5 eV apart around the hole: every mean E50 1.39-1.48 eV low with a sigma of
#: 0.004-0.027 eV, where the same frames left out for want of beam were declined)
MAX_GAP_RATIO = 2.5


def _too_wide(e, scan_energies=None, min_gap_ev: float = 0.0) -> np.ndarray:
    """``(len(e) - 1,)`` bool: intervals of the analysed energies ``e`` that are gaps (wider than ``min_gap_ev``
    and :data:`MAX_GAP_RATIO` times the scan's own step there); none without ``scan_energies``.

    The scan's own step is the widest of the scan's steps inside the interval where frames of the scan were left
    out there, and the wider of the scan's steps on either side of it: a hole in the scan's energies is a gap as
    frames left out are. A scan equally coarse everywhere has none, nor a change from a fine step to a coarse one
    (the interval is within the ratio of the coarse side)."""
    wide = np.zeros(max(len(e) - 1, 0), bool)
    if scan_energies is None or len(e) < 2:
        return wide
    s = np.sort(np.asarray(scan_energies, float))
    steps = np.diff(s)
    for k, (a, b) in enumerate(zip(e[:-1], e[1:])):
        inside = steps[(s[:-1] >= a) & (s[1:] <= b)]
        if inside.size > 1:  # frames of the scan between a and b were left out
            wide[k] = (b - a) > max(MAX_GAP_RATIO * inside.max(), min_gap_ev)
        below, above = steps[s[1:] <= a], steps[s[:-1] >= b]
        if not wide[k] and below.size and above.size:  # a hole in the scan's own energies
            wide[k] = (b - a) > max(MAX_GAP_RATIO * max(below[-1], above[0]), min_gap_ev)
    return wide


@dataclass(frozen=True)
class Normalization:
    """Result of :func:`normalize`. Arrays have the spectra's trailing shape."""

    norm: np.ndarray
    e0_ev: float
    edge_step: np.ndarray
    pre_edge: np.ndarray
    post_edge: np.ndarray
    flags: np.ndarray
    pre_range_ev: tuple
    post_range_ev: tuple


@dataclass(frozen=True)
class LCFResult:
    """Result of :func:`linear_combination_fit`: ``fractions`` is (n_refs, ...)."""

    names: tuple
    fractions: np.ndarray
    residual: np.ndarray
    flags: np.ndarray


def _check(energies_ev, mu):
    e = np.asarray(energies_ev, dtype=float)
    mu = np.asarray(mu)
    if e.ndim != 1 or mu.shape[:1] != e.shape:
        raise ValueError(f"spectra must have the energy axis first: energies {e.shape}, spectra {mu.shape}")
    if e.size < 8:
        raise ValueError(f"XANES analysis needs at least 8 energies, got {e.size}")
    if not np.all(np.isfinite(e)):  # NaN passed the order test below, and find_e0 returned NaN
        raise ValueError("energies contain NaN/inf values")
    _refuse_kev(e)
    if np.any(np.diff(e) <= 0):
        raise ValueError("energies must be strictly increasing")
    return e, mu


def _refuse_kev(e) -> None:
    """Raise ``ValueError`` where every finite energy lies between 0 and :data:`xanestrack.units.KEV_BELOW`: keV
    (find_e0 and edge_energy returned 8.34 as eV, normalize refused with a pre-edge range of -141.7--21.7 eV)."""
    from .units import KEV_BELOW

    fin = e[np.isfinite(e)]
    if fin.size and fin.min() > 0 and fin.max() < KEV_BELOW:
        raise ValueError(
            f"energies_ev {fin.min():.4g}-{fin.max():.4g} look like keV; give eV (e.g. 8333.0 for the Ni K edge)"
        )


def _particle_mask(mask, shape) -> np.ndarray:
    """``mask`` as bool: a bool array, or numbers 0 and one positive value (0/1, 0/255 of an image file) taken as
    ``mask > 0``; a soft mask (more values) is refused (0/255 failed deep inside with an IndexError, 0/1 gave every
    map NaN with a note about broadcasting)."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask must have the particle window's shape {tuple(shape)}, got {m.shape}")
    if m.dtype == bool:
        return m
    if m.dtype.kind not in "iuf":
        raise ValueError(f"mask must be a bool array (True on the particle's pixels), got dtype {m.dtype}")
    values = np.unique(m)
    if not values.size:
        return m > 0
    if not np.all(np.isfinite(values)) or values.size > 2 or values.min() < 0 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if values.size > 4 else "")
        raise ValueError(
            f"mask must be bool (True on the particle's pixels), or 0 and one positive value (0/1, 0/255); got "
            f"{values.size} values ({shown}) of dtype {m.dtype}: a soft mask? threshold it first (e.g. mask >= 0.5)"
        )
    return m > 0


def find_e0(energies_ev, mu) -> float:
    """E0 (eV) of a spectrum, or of the mean of many: the maximum of the derivative.

    The derivative is taken on a lightly smoothed spectrum (3-point running mean) and
    the maximum refined by a parabola through its three highest points. Energies a step
    far shorter than the steps on both sides apart (a repeated setpoint read back a little
    differently: :data:`xanestrack.stack.REPEAT_STEP_RATIO`) are taken as one, their mean
    (:func:`_merge_repeats`): their noise over so short a step was the scan's largest
    "derivative". Where the step changes, the running mean is a straight line fitted
    through each energy and its two neighbours, taken at that energy (the mean on equal
    steps), and the parabola is the one through the three unequally spaced points
    (:func:`_smooth3`, :func:`_vertex`): the mean of a coarse and a fine neighbour made a jump
    where the step changes, and E0 sat there (0.5 eV to 8339 eV, then 4 eV: every particle's
    E0 8338.5-8338.6 eV, the derivative's maximum 8342-8347 eV).
    """
    e, mu = _check(energies_ev, mu)
    m = np.nanmean(mu.reshape(e.size, -1), axis=1)
    if not np.all(np.isfinite(m)):
        raise ValueError("cannot find E0: the mean spectrum has NaN values")
    e, m = _merge_repeats(e, m)
    d = np.gradient(_smooth3(e, m), e)
    i = int(np.argmax(d[1:-1])) + 1
    return _vertex(e[i - 1 : i + 2], d[i - 1 : i + 2])


def _smooth3(e, m):
    """``m`` smoothed over each energy and its two neighbours: the straight line fitted through the three, at the
    middle one (their mean where the two steps are equal); the ends as a 3-point running mean with the end repeated.

    The running mean itself counted points, not eV: across a change of step (0.5 eV, then 4 eV) it added the coarse
    neighbour's rise to a fine point, a jump whose derivative was the spectrum's largest. The line is exact for a
    straight spectrum on any spacing and smooths a lone outlier as the mean does (a pre-edge frame 1.0 above the
    rest, 5 eV from its neighbours, is not taken for the edge)."""
    out = np.convolve(np.pad(m, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    if m.size < 3:
        return out
    x = np.stack([e[:-2] - e[1:-1], np.zeros(e.size - 2), e[2:] - e[1:-1]])
    y = np.stack([m[:-2], m[1:-1], m[2:]])
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    slope = ((x - xm) * (y - ym)).sum(axis=0) / ((x - xm) ** 2).sum(axis=0)
    # equal steps keep the running mean to the last bit (a sum's rounding flipped the maximum between equal
    # derivatives of a reference interpolated on a 0.02-eV grid by 0.36 eV)
    equal = np.abs(x[0] + x[2]) <= 1e-9 * (x[2] - x[0])
    out[1:-1] = np.where(equal, out[1:-1], ym - slope * xm)
    return out


def _vertex(x, y) -> float:
    """The abscissa of the parabola's vertex through the three points ``(x, y)`` (``x`` increasing, steps equal or
    not), kept within half a step of the middle one; the middle one where the three lie on a line."""
    return float(_vertices(x[0], x[1], x[2], y[0], y[1], y[2]))


def _vertices(x0, x1, x2, y0, y1, y2):
    """:func:`_vertex` for arrays of three points each: the vertex of the parabola through ``(x0, y0)``,
    ``(x1, y1)``, ``(x2, y2)``, within half a step of ``x1`` (``x1`` where they lie on a line). The steps need not be
    equal: the equal-step formula, ``x1 + 0.5 h (y0 - y2) / (y0 - 2 y1 + y2)`` with each side's own step, put a
    derivative peak up to 0.72 eV off where the grid went from 0.5-eV to 2-eV steps at it (a noise-free edge;
    this formula: within 0.08 eV, the error of the derivative itself on those steps)."""
    a, b = x0 - x1, x2 - x1
    ya, yb = y0 - y1, y2 - y1
    curv = b * ya - a * yb  # the parabola's x^2 coefficient times a * b * (a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(curv != 0, 0.5 * (b * b * ya - a * a * yb) / curv, 0.0)
    return x1 + np.clip(v, a / 2, b / 2)  # NaN where a point is NaN


def _merge_repeats(e, m):
    """``(e, m)`` with runs of energies joined by steps shorter than :data:`xanestrack.stack.REPEAT_STEP_RATIO`
    times the steps on both sides of them (:func:`xanestrack.stack.repeat_steps`) replaced by their means."""
    from .stack import repeat_steps

    short = repeat_steps(e)
    if not short.any():
        return e, m
    group = np.concatenate([[0], np.cumsum(~short)])  # a short step keeps the next energy in the group
    n = group[-1] + 1
    count = np.bincount(group, minlength=n)
    return np.bincount(group, e, n) / count, np.bincount(group, m, n) / count


def auto_post_order(energies_ev, e0_ev, post_range=(100.0, None), post_order="auto") -> int:
    """The degree of :func:`normalize`'s post-edge polynomial: ``post_order``, or by its "auto" rule.

    "auto": 2 when the post-edge range spans :data:`POST_EDGE_PARABOLA_SPAN_EV` or more,
    1 from :data:`POST_EDGE_LINE_SPAN_EV`, else 0 (a short post-edge cannot constrain a
    slope, and the whiteline's oscillations bias it).
    """
    if post_order != "auto":
        return post_order
    e = np.asarray(energies_ev, float)
    lo = e0_ev + post_range[0]
    hi = e[-1] if post_range[1] is None else min(e0_ev + post_range[1], e[-1])
    span = hi - lo
    order = 2 if span >= POST_EDGE_PARABOLA_SPAN_EV else (1 if span >= POST_EDGE_LINE_SPAN_EV else 0)
    # no more terms than energies (one post-edge energy 240 eV above E0 asked for a line, and every particle's
    # XANES failed: "holds 1 energies, need 2"); a constant from one is said (MIN_POST_EDGE_ENERGIES)
    n = int(np.count_nonzero((e >= lo) & (e <= hi)))
    return max(0, min(order, n - 1))


def frame_runs(which) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(k, starts, ends)``: the frames ``which`` (bool, per frame) as indices ``k`` and the runs of consecutive
    ones among them, ``k[starts[i]]..k[ends[i]]``."""
    k = np.flatnonzero(which)
    if not k.size:
        return k, k, k
    starts = np.r_[0, np.flatnonzero(np.diff(k) > 1) + 1]
    return k, starts, np.r_[starts[1:] - 1, k.size - 1]


def _frame_runs(energies, which, most: int = 3) -> str:
    """The energies of the frames ``which`` as runs of consecutive frames: ``"8200.0-8329.0 eV, 8400.5 eV"``
    (the first ``most`` runs, then how many more). A note said "8200.0-8680.0 eV" of 34 pre-edge frames and 30
    scattered over the scan: it read as the whole scan left out."""
    k, starts, ends = frame_runs(which)
    if not k.size:
        return ""
    runs = [
        f"{energies[k[a]]:.1f} eV" if a == b else f"{energies[k[a]]:.1f}-{energies[k[b]]:.1f} eV ({b - a + 1} frames)"
        for a, b in zip(starts, ends)
    ]
    if len(runs) == 1 and starts[0] != ends[0]:
        return f"{energies[k[0]]:.1f}-{energies[k[-1]]:.1f} eV"
    more = len(runs) - most
    return ", ".join(runs[:most]) + (f" and {more} more run{'s' if more > 1 else ''} of frames" if more > 0 else "")


class _ShortPreEdge(ValueError):
    """:func:`normalize`'s pre-edge energies span too little of their distance below E0."""


def _range_idx(e, lo, hi, what, minimum):
    idx = np.flatnonzero((e >= lo) & (e <= hi))
    if idx.size < minimum:
        where = (
            f"range {lo:.1f}-{hi:.1f} eV holds {idx.size} energies"
            if lo <= hi
            else f"range would start at {lo:.1f} eV, beyond the last energy analysed"
        )  # "8443.4-8397.7 eV holds 0 energies" before
        raise ValueError(f"{what} {where}, need {minimum}; the energies analysed cover {e[0]:.1f}-{e[-1]:.1f} eV")
    return idx


def normalize(
    energies_ev,
    mu,
    *,
    e0_ev: float | None = None,
    pre_range=PRE_EDGE_RANGE,
    post_range=(100.0, None),
    post_order: int | str = "auto",
    measured=None,
) -> Normalization:
    """Normalise spectra: pre-edge line, post-edge polynomial, edge step at E0.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    mu : ndarray (n, ...)
        Absorption (optical density) spectra.
    e0_ev : float, optional
        Edge energy; default :func:`find_e0` of the mean spectrum.
    pre_range, post_range : (float, float or None)
        Fit ranges relative to E0 in eV (None: the scan's end).
    post_order : int or "auto"
        Degree of the post-edge polynomial (0-3). ``"auto"``: :func:`auto_post_order`
        (a line over a XANES post-edge; a parabola only from 600 eV).
    measured : ndarray (...) bool, optional
        The spectra measured in every frame (``mu``'s shape less its first axis; default all). The console's
        warning on spectra without an edge step, and its hint that the frames may be reversed, count these
        only: a spectrum filled from a patch's rim in some frames (``FLAG_FILLED``) says nothing of the frames'
        order. Every spectrum is normalised and flagged alike.

    Returns
    -------
    Normalization
    """
    e, mu = _check(energies_ev, mu)
    shape = mu.shape[1:]
    y = mu.reshape(e.size, -1).astype(np.float64)  # a copy, worked on in place below
    flags = np.zeros(y.shape[1], np.uint8)
    fin = np.isfinite(y)
    bad = ~np.all(fin, axis=0)
    flags[bad] |= FLAG_NONFINITE
    y[~fin] = 0.0
    del fin
    if e0_ev is None:
        good = ~bad
        if not good.any():
            raise ValueError("every spectrum has NaN/inf values")
        e0_ev = find_e0(e, y[:, good])
    pre_lo = e0_ev + pre_range[0]
    pre_hi = e0_ev + pre_range[1]
    post_lo = e0_ev + post_range[0]
    post_hi = e[-1] if post_range[1] is None else e0_ev + post_range[1]
    ip = _range_idx(e, pre_lo, pre_hi, "pre-edge", 2)
    span, reach = e[ip[-1]] - e[ip[0]], e0_ev - e[ip[0]]
    if span < MIN_PRE_SPAN * reach:
        # a line through energies close together, carried to E0 far from them: its slope's error is
        # multiplied by reach / span there (a scan starting at 8315 eV, E0 8346.5: two pre-edge energies
        # 1 eV apart, per-pixel E50 errors of 1.4-1.6 eV where 0.1 is usual, no word said)
        raise _ShortPreEdge(
            f"pre-edge energies {e[ip[0]]:.1f}-{e[ip[-1]]:.1f} eV span {span:.1f} eV, {reach:.1f} eV below E0 "
            f"{e0_ev:.1f}: too short a line to carry to the edge (a span of {MIN_PRE_SPAN:g} times the distance "
            "is needed: the scan starts close below this edge, or its pre-edge frames were left out)"
        )
    post_order = auto_post_order(e, e0_ev, post_range, post_order)
    if post_order not in (0, 1, 2, 3):
        raise ValueError(f"post_order must be 0-3 or 'auto', got {post_order!r}")
    iq = _range_idx(e, post_lo, post_hi, "post-edge", post_order + 1)
    # shared design matrices: one lstsq for all pixels
    x = (e - e0_ev) / 100.0
    A = np.c_[np.ones(ip.size), x[ip]]
    pre_c = np.linalg.lstsq(A, y[ip], rcond=None)[0]
    B = np.vander(x[iq], post_order + 1, increasing=True)
    post_c = np.linalg.lstsq(B, y[iq], rcond=None)[0]
    pre = np.c_[np.ones(e.size), x] @ pre_c
    # (n, n_spectra) float64 arrays held at once, a large particle's 46 MiB each: the post-edge line kept in the
    # float32 it is returned in, the normalised spectra made in y's place (the same numbers)
    post = (np.vander(x, post_order + 1, increasing=True) @ post_c).astype(np.float32)
    step = post_c[0] - pre_c[0]  # x = 0 at E0
    resid = y[ip] - pre[ip]
    noise = np.sqrt((resid**2).sum(axis=0) / max(ip.size - 2, 1))
    # a step lost in the noise, or none (a flat spectrum has no noise either: a step of 1e-15 passed as an edge)
    # |y|'s largest per spectrum without an (n, n_spectra) copy of |y| (the same numbers)
    level = np.maximum(y.max(axis=0), -y.min(axis=0)) if y.size else np.zeros(y.shape[1])
    low = ~(step > 3 * noise) | ~(step > 1e-6 * np.maximum(level, 1e-12))
    flags[low] |= FLAG_LOW_STEP
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.divide(np.subtract(y, pre, out=y), step, out=y)
    del y
    norm[:, (flags & (FLAG_LOW_STEP | FLAG_NONFINITE)) > 0] = np.nan
    seen = np.ones(low.size, bool) if measured is None else np.asarray(measured, bool).reshape(-1)
    if low.any():
        # a negative step is not a small one: the absorption falls across the edge (frames in the reverse order of
        # the energies, transmission given as OD); lumped with the small ones, it was blamed on the frames used
        negative = step < -3 * noise
        key = (round(float(e0_ev), 6), e.size, int(np.count_nonzero(negative)), np.packbits(low).tobytes())
        neg = int(np.count_nonzero(negative & seen))
        # the same spectra normalised again (``measured`` given or not): said once, or not at all where the spectra
        # measured do not call for it (pixels filled from a patch's rim, counted, made 16 of a particle's 1175
        # negative, and the frames were said to be perhaps reversed)
        said = _EDGE_STEP_WARNED.get() == key
        _EDGE_STEP_WARNED.set(key)
        if not said and (low & seen).sum() > 0.01 * seen.sum():
            logger.warning(
                "%d of %d spectra have no usable edge step (NaN)%s",
                int((low & seen).sum()),
                int(seen.sum()),
                f"; {neg} of them a negative one (the absorption falls across the edge: frames in the reverse order "
                "of the energies, or transmission, not OD?)"
                if neg
                else "",
            )
    r = lambda a: a.reshape(a.shape[:1] + shape) if a.ndim == 2 else a.reshape(shape)  # noqa: E731
    norm = norm.astype(np.float32)  # each float64 let go once its float32 is made
    pre = pre.astype(np.float32)
    return Normalization(
        norm=r(norm),
        e0_ev=float(e0_ev),
        edge_step=r(step).astype(np.float32),
        pre_edge=r(pre),
        post_edge=r(post),
        flags=r(flags),
        pre_range_ev=(float(e[ip[0]]), float(e[ip[-1]])),
        post_range_ev=(float(e[iq[0]]), float(e[iq[-1]])),
    )


def _finite_mean(flat, cols) -> np.ndarray:
    """The mean spectrum of the columns ``cols`` (bool) of ``flat`` (n, n_spectra), spectra without NaN, in float64:
    ``np.nanmean(flat.astype(np.float64)[:, cols], axis=1)`` (NaN-free, the same sums as ``np.mean``), one row at a
    time (no float64 copy of the whole). Of every column where none is free of NaN."""
    if not cols.any():
        with warnings.catch_warnings():  # energies where no pixel has a value: NaN, as meant
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(flat.astype(np.float64), axis=1)
    every = bool(cols.all())
    out = np.empty(flat.shape[0])
    for k in range(flat.shape[0]):
        out[k] = np.mean((flat[k] if every else flat[k, cols]).astype(np.float64))
    return out


def edge_energy(
    energies_ev,
    norm,
    *,
    method: str = "half",
    e0_ev: float | None = None,
    window=(-15.0, 20.0),
    level: float = 0.5,
    scan_energies_ev=None,
    return_gap: bool = False,
):
    """Edge-energy (or whiteline) map from normalised spectra.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    norm : ndarray (n, ...)
        Normalised spectra.
    method : {"half", "derivative", "whiteline"}
        ``half``: energy where ``norm`` crosses ``level`` (linear interpolation; with
        several crossings in the window, the one nearest the crossing of the mean
        spectrum). ``derivative``: energy of the maximum of d(norm)/dE.
        ``whiteline``: energy of the maximum of ``norm`` above the edge. The last two are
        refined by a parabola through the three highest points.
    e0_ev : float, optional
        Centre of the search window (default: :func:`find_e0` of the mean).
    window : (float, float)
        Search window relative to ``e0_ev`` in eV (``whiteline`` searches from E0 to
        E0 + window[1] + 10).
    scan_energies_ev : ndarray, optional
        Every energy of the scan, where ``energies_ev`` are those analysed (frames left
        out). ``half`` and ``derivative``: an edge energy found between two analysed frames
        with left-out frames between them, more than ``MAX_GAP_RATIO`` times the scan's
        own widest step there apart, is not measured: NaN, flagged ``FLAG_GAP`` (linear
        interpolation across a gap in the edge is biased by the edge's curvature: 2.2 eV
        on a stress-family particle whose 27 frames across the edge, 8338-8358 eV, were
        left out; 0.24 eV with them).
    return_gap : bool
        Return also where each pixel flagged ``FLAG_GAP`` has its edge energy.

    Returns
    -------
    values : ndarray (...), eV, NaN where not found
    flags : ndarray (...) uint8
    gap : ndarray (2, ...) float64, eV (only with ``return_gap``)
        The analysed energies either side of the gap a pixel flagged ``FLAG_GAP`` has its edge energy in (the
        interval its spectrum crosses ``level`` in; ``derivative``: the gap, or the two, its maximum borders),
        NaN elsewhere: each pixel's own gap, where a window holds several
        (:func:`xanestrack.result.gap_counted` counts the pixel at its centre).
    """
    e, norm = _check(energies_ev, norm)
    shape = norm.shape[1:]
    # the spectra as given (float32 in the pipeline), in float64 where worked on: the edge window's rows for "half"
    # (all of them made float64, and nanmean's copies of them, were a large particle's XANES peak: 3.4 times its
    # spectra's float64 bytes traced, 1.4 now)
    flat = norm.reshape(e.size, -1)
    flags = np.zeros(flat.shape[1], np.uint8)
    finite_cols = np.all(np.isfinite(flat), axis=0)
    flags[~finite_cols] |= FLAG_NONFINITE
    if e0_ev is None:
        e0_ev = find_e0(e, flat[:, finite_cols].astype(np.float64)) if finite_cols.any() else float(np.mean(e))
    if method == "half":
        iw = _range_idx(e, e0_ev + window[0], e0_ev + window[1], "edge window", 2)
        ew, yw = e[iw], flat[iw].astype(np.float64)
        a, b = yw[:-1], yw[1:]
        cross = (a < level) & (b >= level)
        with np.errstate(divide="ignore", invalid="ignore"):
            # ew + (level - a) / (b - a) * dE, worked out in place (the same numbers)
            ec = np.subtract(level, a)
            d = np.subtract(b, a)
            np.divide(ec, d, out=ec)
            del d, a, b, yw
            np.multiply(ec, np.diff(ew)[:, None], out=ec)
            np.add(ew[:-1, None], ec, out=ec)
        ec[~cross] = np.nan
        mean = _finite_mean(flat, finite_cols)
        ma, mb = mean[iw][:-1], mean[iw][1:]
        mc = np.flatnonzero((ma < level) & (mb >= level))
        ref = (
            ew[mc[0]] + (level - ma[mc[0]]) / (mb[mc[0]] - ma[mc[0]]) * (ew[mc[0] + 1] - ew[mc[0]])
            if mc.size
            else e0_ev
        )
        dist = np.subtract(ec, ref)
        np.abs(dist, out=dist)
        fin = np.isfinite(dist)
        has = fin.any(axis=0)
        dist[~fin] = np.inf
        del fin
        pick = np.argmin(dist, axis=0)
        del dist
        out = ec[pick, np.arange(ec.shape[1])]
        out[~has] = np.nan
        gap = has & _too_wide(ew, scan_energies_ev)[pick]
        lo, hi = ew[pick], ew[pick + 1]  # the interval each pixel crosses level in
    elif method in ("derivative", "whiteline"):
        if method == "derivative":
            iw = _range_idx(e, e0_ev + window[0], e0_ev + window[1], "edge window", 3)
            v = np.gradient(flat.astype(np.float64), e, axis=0)[iw]
        else:
            iw = _range_idx(e, e0_ev, e0_ev + window[1] + 10, "whiteline window", 3)
            v = flat[iw].astype(np.float64)
        ew = e[iw]
        i = np.argmax(np.where(np.isfinite(v), v, -np.inf), axis=0)
        i = np.clip(i, 1, ew.size - 2)
        cols = np.arange(v.shape[1])
        y0, y1, y2 = v[i - 1, cols], v[i, cols], v[i + 1, cols]
        out = _vertices(ew[i - 1], ew[i], ew[i + 1], y0, y1, y2)
        has = np.isfinite(y1)
        out[~has] = np.nan
        gap = np.zeros_like(has)
        lo = hi = ew[i]
        if method == "derivative":  # the whiteline's peak is fitted elsewhere (chemistry.whiteline)
            wide = _too_wide(ew, scan_energies_ev)
            gap = has & (wide[i - 1] | wide[i])
            lo, hi = np.where(wide[i - 1], ew[i - 1], ew[i]), np.where(wide[i], ew[i + 1], ew[i])
    else:
        raise ValueError(f"method must be 'half', 'derivative' or 'whiteline', got {method!r}")
    flags[~has & (flags == 0)] |= FLAG_NO_CROSSING
    out[gap] = np.nan
    flags[gap] |= FLAG_GAP
    if return_gap:
        span = np.where(gap, np.stack([lo, hi]), np.nan).astype(np.float64)
        return out.reshape(shape).astype(np.float32), flags.reshape(shape), span.reshape((2, *shape))
    return out.reshape(shape).astype(np.float32), flags.reshape(shape)


def linear_combination_fit(
    energies_ev,
    norm,
    references,
    *,
    e0_ev: float | None = None,
    window=(-20.0, 40.0),
    sum_to_one: bool = True,
    nonnegative: bool = True,
    edge_steps=None,
) -> LCFResult:
    """Per-pixel fractions of reference spectra: ``norm ~ sum_j c_j ref_j``.

    Solved for all pixels at once. With constraints, every subset of references is
    solved in closed form (equality constraint ``sum c = 1`` by a Lagrange multiplier)
    and, per pixel, the feasible subset with the least residual is kept, which is the
    exact constrained optimum for the handful of references used in practice.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    norm : ndarray (n, ...)
    references : mapping name -> callable(energies_ev) or ReferenceSpectrum
        Normalised reference spectra (interpolated at ``energies_ev``): best normalised as the spectra ``norm``
        are, on the same energies (:func:`references_on_scan`, which :func:`analyse_particle` fits with).
    window : (float, float)
        Fit range relative to ``e0_ev`` (default E0 of the mean spectrum).
    edge_steps : array-like (n_refs,), optional
        Each reference's edge step as normalised on these energies, its own being 1 (:func:`references_on_scan`).
        The weights ``c_j`` of such references are converted to the shares of the absorber in each phase,
        ``c_j / s_j`` scaled to the weights' sum (:func:`_weights_to_fractions`): a spectrum normalised on the
        scan's energies is divided by its mix's step there, ``sum_j f_j s_j``, not by 1. Without, the weights are
        the fractions.

    Returns
    -------
    LCFResult
        ``residual``: the RMS residual of the fit of the normalised spectra (the weights', in ``norm``'s units).
    """
    from itertools import combinations

    e, norm = _check(energies_ev, norm)
    if not references:
        raise ValueError("references: give at least one reference spectrum")
    if len(references) > 6:
        raise ValueError(f"references: at most 6 references supported, got {len(references)}")
    shape = norm.shape[1:]
    y = norm.reshape(e.size, -1).astype(np.float64)
    finite = np.all(np.isfinite(y), axis=0)
    if e0_ev is None:
        e0_ev = find_e0(e, y[:, finite]) if finite.any() else float(np.mean(e))
    iw = _range_idx(e, e0_ev + window[0], e0_ev + window[1], "LCF window", len(references) + 1)
    names = tuple(references)
    for n in names:  # held flat outside its range, a reference fitted there gave confident nonsense (keV energies)
        r = references[n]
        if hasattr(r, "energies_ev") and not (r.energies_ev[0] <= e[iw[0]] and e[iw[-1]] <= r.energies_ev[-1]):
            raise ValueError(
                f"reference {n} covers {r.energies_ev[0]:.1f}-{r.energies_ev[-1]:.1f} eV, the fit needs "
                f"{e[iw[0]]:.1f}-{e[iw[-1]]:.1f} eV (energies in eV?)"
            )
    A = np.stack([np.asarray(references[n](e[iw]), dtype=float) for n in names], axis=1)
    if not np.all(np.isfinite(A)):
        bad = [n for j, n in enumerate(names) if not np.all(np.isfinite(A[:, j]))]
        raise ValueError(f"reference {bad[0]}: NaN/inf values in the fit window")
    Y = np.where(np.isfinite(y[iw]), y[iw], 0.0)
    npix, nref = Y.shape[1], len(names)
    best = np.full((nref, npix), np.nan)
    best_res = np.full(npix, np.inf)
    subsets = [s for k in range(1, nref + 1) for s in combinations(range(nref), k)]
    if not (sum_to_one or nonnegative):
        subsets = [tuple(range(nref))]
    for s in subsets:
        As = A[:, s]
        G = As.T @ As
        try:
            Gi = np.linalg.inv(G)
        except np.linalg.LinAlgError:
            continue
        c = Gi @ As.T @ Y
        if sum_to_one:
            one = np.ones(len(s))
            lam = (one @ c - 1.0) / (one @ Gi @ one)
            c = c - np.outer(Gi @ one, lam)
        res = ((Y - As @ c) ** 2).sum(axis=0)
        ok = np.all(c >= -1e-9, axis=0) if nonnegative else np.ones(npix, bool)
        better = ok & (res < best_res)
        if better.any():
            full = np.zeros((nref, npix))
            full[list(s)] = c
            best[:, better] = full[:, better]
            best_res[better] = res[better]
    flags = np.zeros(npix, np.uint8)
    flags[~finite] |= FLAG_NONFINITE
    failed = ~np.isfinite(best_res) | ~finite
    flags[failed & finite] |= FLAG_FIT
    best[:, failed] = np.nan
    best_res[failed] = np.nan
    rms = np.sqrt(best_res / iw.size)
    if edge_steps is not None:
        best = _weights_to_fractions(best, _edge_steps(edge_steps, nref))
    return LCFResult(
        names=names,
        fractions=best.reshape((nref,) + shape).astype(np.float32),
        residual=rms.reshape(shape).astype(np.float32),
        flags=flags.reshape(shape),
    )


def _edge_steps(edge_steps, n_refs: int) -> np.ndarray:
    """``edge_steps`` as a float array of ``n_refs`` positive steps, or a ValueError saying what is wrong."""
    s = np.asarray(edge_steps, float).ravel()
    if s.size != n_refs or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"edge_steps must be {n_refs} positive numbers (one per reference), got {edge_steps!r}")
    return s


def _weights_to_fractions(weights, steps) -> np.ndarray:
    """The shares of the absorber ``f_j`` (n_refs, ...) from the weights ``c_j`` (n_refs, ...) of references
    normalised on the scan's energies, whose edge steps there are ``steps`` (n_refs,; their own 1): ``c_j / s_j``
    scaled to the weights' sum. A mix ``sum_j f_j mu_j`` normalised on the scan's energies is
    ``sum_j f_j s_j n_j / sum_k f_k s_k`` (``n_j``: each reference so normalised): its weights are
    ``f_j s_j / sum_k f_k s_k``."""
    w = np.asarray(weights, float)
    s = np.asarray(steps, float).reshape((-1,) + (1,) * (w.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = w / s
        return f * (w.sum(axis=0) / f.sum(axis=0))


def fraction_jacobian(fractions, steps) -> np.ndarray:
    """``d f_i / d c_j`` (n_refs, n_refs, ...) of :func:`_weights_to_fractions` at the fractions ``fractions``
    (n_refs, ...), for the standard errors of the fractions from those of the weights
    (:func:`xanestrack.chemistry.uncertainty.fraction_sigma`). With ``T = sum f`` and ``K = sum f s / T``:
    ``K (delta_ij / s_i - f_i / s_j) + f_i / T`` (the last term cancels where the weights' sum is held)."""
    f = np.asarray(fractions, float)
    s = np.asarray(steps, float).reshape((-1,) + (1,) * (f.ndim - 1))
    t = f.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (f * s).sum(axis=0) / t
        eye = np.eye(f.shape[0]).reshape(f.shape[:1] * 2 + (1,) * (f.ndim - 1))
        return k * (eye / s[:, None] - f[:, None] / s[None, :]) + f[:, None] / t


def references_on_scan(references, energies_ev, e0_ev: float, *, background=None) -> tuple[dict, np.ndarray] | None:
    """The references as a particle's spectra are fitted: each sampled on the analysed energies with the particle's
    pre-edge absorbance under its step, normalised by :func:`normalize` at the particle's E0 (the same pre-edge line
    and post-edge line through the same energies); and each one's edge step there (its own: 1).

    A particle's spectra are normalised on the scan's energies, whose post-edge line (from E0 + 100 eV) follows the
    EXAFS wiggles those energies catch (:mod:`xanestrack.chemistry.normbias`); references normalised densely by
    their provider (or :func:`xanestrack.spectra.prepare_reference`) and only sampled there are another
    normalisation. Fitted against them, the fractions were biased by up to -0.024 on synth's 60-energy grid and
    +0.023 on its 143-energy grid (noise-free, the sign following the grid), 1-2.7 times their pixels' standard
    errors, the same for every pixel: 21-34 % of the default scenes' pixels within 1 sigma. The normalisation is
    linear but for its division by the step, so a mix ``sum f_j mu_j`` so normalised is the mix of the references
    so normalised with the weights ``f_j s_j / sum f_k s_k`` (``s_j``: their steps on these energies), which
    :func:`linear_combination_fit` converts back (``edge_steps``): noise-free, within 1e-5 on synth's 40- to
    143-energy grids.

    Parameters
    ----------
    references : mapping name -> ReferenceSpectrum or callable
        Normalised references (edge step 1), as the fit takes them.
    energies_ev : ndarray (n,)
        The energies the particle's spectra were normalised on (its frames analysed).
    e0_ev : float
        The particle's E0 (its spectra's normalisation's).
    background : float, optional
        The particle's pre-edge absorbance under its edge step, as a share of it at E0 (its mean spectrum's
        pre-edge line at E0 over its step), falling as E^-3; default (or not finite)
        :data:`xanestrack.chemistry.normbias.BACKGROUND_AT_EDGE`. The pre-edge line takes only its straight part
        away (the shipped references at 60 energies with 2 under the step, fitted with 0.25: -0.010).

    Returns
    -------
    (dict of name -> ReferenceSpectrum on ``energies_ev``, ndarray (n_refs,) of edge steps), or None
        None where a reference does not reach the last energy analysed (held flat beyond its own energies, its
        post-edge is not the spectrum whose EXAFS the scan's energies catch), nor, below its first energy, the
        start of the particle's pre-edge range with a line through its own pre-edge (no further than that line's
        span: :func:`_own_pre_edge_line`), or cannot be normalised there, or a step is not positive: the fit then
        takes the references as given.
    """
    from .chemistry.normbias import BACKGROUND_AT_EDGE
    from .spectra import ReferenceSpectrum

    e = np.asarray(energies_ev, float)
    bg = BACKGROUND_AT_EDGE if background is None or not np.isfinite(background) else float(background)
    lo = e0_ev + PRE_EDGE_RANGE[0]
    first = e[e >= lo][0] if np.any(e >= lo) else e[0]
    out, steps = {}, []
    for name, ref in references.items():
        if hasattr(ref, "energies_ev") and not e[-1] <= ref.energies_ev[-1]:
            return None  # its post-edge beyond its energies is not the spectrum whose wiggles the scan catches
        mu = np.asarray(ref(e), float)
        if hasattr(ref, "energies_ev") and first < ref.energies_ev[0]:
            below = e < ref.energies_ev[0]
            line = _own_pre_edge_line(ref, float(ref.energies_ev[0] - first))
            if line is None:
                return None
            mu[below] = np.polyval(line, e[below])
        if mu.shape != e.shape or not np.all(np.isfinite(mu)):
            return None
        try:
            nm = normalize(e, mu + bg * (e / e0_ev) ** -3, e0_ev=e0_ev)
        except ValueError:
            return None
        step = float(nm.edge_step)
        if not step > 0 or nm.flags != 0:
            return None
        out[name] = ReferenceSpectrum(name, e.copy(), np.asarray(nm.norm, float))
        steps.append(step)
    return out, np.array(steps)


def _own_pre_edge_line(ref, reach_ev: float):
    """``(slope, intercept)`` of a line through a reference's own pre-edge (its energies up to its E0 - 30 eV:
    :data:`PRE_EDGE_RANGE`), to carry it ``reach_ev`` below its first energy where the scan's pre-edge starts there
    (the shipped references start at 8200 eV, E0 - 150 eV is 8193-8197 eV at the Ni K-edge); None where it has fewer
    than 8 such energies or they span less than ``reach_ev`` (a line is carried no further than its own span)."""
    r_e, r_mu = np.asarray(ref.energies_ev, float), np.asarray(ref.mu, float)
    try:
        e0 = find_e0(r_e, r_mu)
    except ValueError:
        return None
    pre = r_e <= e0 + PRE_EDGE_RANGE[1]
    if pre.sum() < 8 or r_e[pre][-1] - r_e[pre][0] < reach_ev:
        return None
    return np.polyfit(r_e[pre], r_mu[pre], 1)


def _references_as_given_note(references, energies_ev, e0_ev: float) -> str:
    """The particle note where :func:`references_on_scan` could not normalise the references as the particle's
    spectra are (they do not reach over the energies those are normalised on): the fit takes them as given."""
    e = np.asarray(energies_ev, float)
    lo = e0_ev + PRE_EDGE_RANGE[0]
    first = float(e[e >= lo][0]) if np.any(e >= lo) else float(e[0])
    spans = ", ".join(
        f"{k} {r.energies_ev[0]:.0f}-{r.energies_ev[-1]:.0f} eV" if hasattr(r, "energies_ev") else k
        for k, r in references.items()
    )
    return (
        f"{AS_GIVEN_NOTE} ({spans}), not normalised as its spectra are: they do not reach over the energies those "
        f"are normalised on ({first:.0f}-{e[-1]:.0f} eV: the pre-edge line from E0 - {-PRE_EDGE_RANGE[0]:.0f} eV, the "
        "post-edge line from E0 + 100 eV to the last energy analysed), or cannot be normalised there. Its spectra's "
        "post-edge line follows the EXAFS wiggles this scan's energies catch, the references' does not: the "
        "fractions may be off by a few hundredths, alike in every pixel and not in sigma (the shipped NiO / LiNiO2 so "
        "fitted on synth's 60- and 143-energy grids: up to -0.024 and +0.023); give references that span the scan's "
        "energies"
    )


def particle_background(energies_ev, pre_edge, post_edge, e0_ev: float) -> float:
    """A particle's pre-edge absorbance under its edge step, as a share of the step at E0, from its mean spectrum's
    pre-edge line and post-edge line ``pre_edge``, ``post_edge`` (n,; NaN where not fitted), clipped to 0-50: the
    background :func:`references_on_scan` puts under each reference (the run's median over its particles is
    :func:`xanestrack.chemistry.normbias.normalisation_bias`'s). NaN where the lines are not known at E0 or the step
    is not positive. The synthetic scenes' 0.25 read 0.25-0.28 on the probe's pure NiO particles."""
    e = np.asarray(energies_ev, float)
    pre, post = np.asarray(pre_edge, float), np.asarray(post_edge, float)
    ok = np.isfinite(pre) & np.isfinite(post)
    if ok.sum() < 2 or not np.isfinite(e0_ev):
        return float("nan")
    a, b = np.interp(e0_ev, e[ok], pre[ok]), np.interp(e0_ev, e[ok], post[ok])
    return float(np.clip(a / (b - a), 0.0, 50.0)) if b - a > 0 else float("nan")


#: the ring of :func:`local_background` less the pixels left out (``exclude``: tracked neighbours) must keep at least
#: this many pixels, on more than one side of the particle, for a tilted plane; with fewer, or on one side only, the
#: background is a constant (:func:`_background_ring`). A plane fitted to one side of the ring is carried, tilt and
#: all, under the whole particle. Chosen, not tuned: the constant was taken by no particle of the dense two-chemistry
#: field (37 particles), the default scene or ``stress-crowd`` (seed 1); a particle of the small scene with a disc
#: touching it kept 820 of its 1022 ring pixels (``tests/test_touching_background.py``)
MIN_PLANE_RING_PX = 60

#: the ring's directions around the particle's centre (:func:`_background_ring`): a ring whose free pixels leave
#: this many neighbouring sectors or more empty, of :data:`RING_SECTORS` (half the circle), lies on one side only
RING_SECTORS = 12


def _background_ring(mask, exclude=None, *, inner: int = 3, outer: int = 10):
    """The ring of :func:`local_background` and what can be fitted to it: ``(ring, model, n_ring, n_free)``.

    ``ring`` (h, w) bool is the mask dilated by ``outer`` less the mask dilated by ``inner``, less ``exclude``;
    ``model`` is ``"plane"``, ``"constant"`` (fewer than :data:`MIN_PLANE_RING_PX` free pixels, or all of them on
    one side of the particle) or ``"none"`` (fewer than 12); ``n_ring`` and ``n_free`` count the ring's pixels
    before and after ``exclude``.
    """
    mask = np.asarray(mask, bool)
    ring = ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)
    n_ring = int(ring.sum())
    if exclude is not None:
        ring = ring & ~np.asarray(exclude, bool)
    n_free = int(ring.sum())
    if n_free < 12:
        return ring, "none", n_ring, n_free
    if exclude is None or n_free == n_ring:
        return ring, "plane", n_ring, n_free
    if n_free < MIN_PLANE_RING_PX:
        return ring, "constant", n_ring, n_free
    cy, cx = np.argwhere(mask).mean(axis=0) if mask.any() else (np.array(mask.shape) - 1) / 2
    yy, xx = np.nonzero(ring)
    sector = (np.floor((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * RING_SECTORS)).astype(int)
    full = np.bincount(sector % RING_SECTORS, minlength=RING_SECTORS) >= 3
    # the longest run of empty sectors, round the circle
    run = longest = 0
    for f in np.r_[full, full]:
        run = 0 if f else run + 1
        longest = max(longest, run)
    one_side = longest >= RING_SECTORS // 2
    return ring, ("constant" if one_side else "plane"), n_ring, n_free


#: frames' pixels a per-frame pass over a particle's window stack takes into float64 at once (:func:`local_background`;
#: ``outlines``' mask areas): 2 Mpx, 143 frames of windows up to 121 px in one block. As
#: :data:`xanestrack.register.RESAMPLE_BLOCK_PX` and :data:`xanestrack.segment.ISOLATE_BLOCK_PX`
BLOCK_PX = 1 << 21


def local_background(aligned, mask, *, inner: int = 3, outer: int = 10, exclude=None):
    """Per-frame plane fitted robustly to a ring around the particle, (n, h, w).

    Frame-to-frame changes of the source intensity, of the flat-field and of the binder
    brightness add an OD offset to every pixel of a frame; the ring outside the particle
    measures it. Small neighbours inside the ring are rejected as outliers (3 sigma-clipping
    passes); a touching neighbour that fills a large part of the ring is not, and its
    absorption edge enters the plane: leave its pixels out with ``exclude``.

    Parameters
    ----------
    aligned : ndarray (n, h, w)
        A particle's aligned sub-stack (NaN pixels are left out of the fit).
    mask : ndarray (h, w) bool
        The particle.
    inner, outer : int
        The ring is the mask dilated by ``outer`` pixels less the mask dilated by ``inner``.
    exclude : ndarray (h, w) bool, optional
        Pixels left out of the ring (other particles; default: none). Where the ring keeps fewer
        than :data:`MIN_PLANE_RING_PX` pixels, or keeps them on one side of the particle only, the
        background is a constant per frame (no tilt) from what is left (:func:`_background_ring`).

    Returns
    -------
    ndarray (n, h, w) float32: the plane (or constant) of each frame; zeros for a frame with
    fewer than 12 finite ring pixels, and for every frame when the ring has fewer than 12 pixels.

    Notes
    -----
    Two touching discs of different chemistry (f 0.1 and 0.9, radius 20 and 25 px, the second 1.5 times as thick,
    overlapping by 3 px), the f 0.1 one's mean E50 against an isolated twin's: -0.285 eV with the whole ring,
    +0.002 eV with its neighbour left out (``tests/test_touching_background.py``).
    """
    n, h, w = aligned.shape
    ring, model, _, _ = _background_ring(mask, exclude, inner=inner, outer=outer)
    out = np.zeros(aligned.shape, np.float32)
    if model == "none":
        return out
    yy, xx = np.nonzero(ring)
    A = np.c_[np.ones(yy.size), (yy - h / 2) / h, (xx - w / 2) / w]
    gy, gx = np.mgrid[0:h, 0:w]
    G = np.stack([np.ones((h, w)), (gy - h / 2) / h, (gx - w / 2) / w])
    if model == "constant":
        A, G = A[:, :1], G[:1]
    k = A.shape[1]
    # all frames at once: normal equations weighted by each frame's kept ring pixels
    v = aligned[:, yy, xx].astype(np.float64)  # (n, m)
    fin = np.isfinite(v)
    v0 = np.where(fin, v, 0.0)
    usable = fin.sum(axis=1) >= 12

    AA = (A[:, :, None] * A[:, None, :]).reshape(len(A), k * k)

    def solve(keep):
        wts = keep.astype(np.float64)
        ata = (wts @ AA).reshape(-1, k, k)
        atv = (wts * v0) @ A
        ata[~usable] = np.eye(k)
        return np.linalg.solve(ata, atv[..., None])[..., 0]

    keep = fin
    coef = solve(keep)
    for _ in range(3):
        r = np.abs(v0 - coef @ A.T)
        # median of |r| over each frame's kept pixels (sorted, the rest pushed to the end)
        srt = np.sort(np.where(keep, r, np.inf), axis=1)
        c = np.maximum(keep.sum(axis=1), 1)
        rows = np.arange(len(srt))
        med = 0.5 * (srt[rows, (c - 1) // 2] + srt[rows, c // 2])
        sd = MAD_TO_SIGMA * med + 1e-9
        new = fin & (r < 3 * sd[:, None])
        take = usable & (new.sum(axis=1) >= 12)  # too few left: stay with the previous selection
        take &= (new != keep).any(axis=1)
        if not take.any():
            break
        keep = np.where(take[:, None], new, keep)
        coef = solve(keep)
    # each frame's plane, made a block of frames at a time (the same sums): the whole stack's float64 planes were
    # a large particle's 103 MiB beside its float32 copy
    out = np.empty((n, h, w), np.float32)
    for b in frame_blocks(n, h * w, BLOCK_PX):
        out[b] = np.einsum("ni,ihw->nhw", coef[b], G)
    out[~usable] = 0.0
    return out


def moving_rim(mask, depth_px: float) -> np.ndarray:
    """The pixels of ``mask`` within ``depth_px`` of its outline (bool, the shape of ``mask``).

    The depth is the Euclidean distance to the nearest pixel outside the mask, so the outermost ring of
    pixels is at depth 1 (``depth_px`` 3: the three outer rings).
    """
    mask = np.asarray(mask, bool)
    if not mask.any() or not depth_px > 0:
        return np.zeros(mask.shape, bool)
    # padded: a mask that touches its window's edge has an outline there too
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return mask & (depth <= depth_px)


def flag_moving_rim(pixel_flags, maps: dict, mask, depth_px: float) -> tuple[np.ndarray, dict, int]:
    """Flag the rim of a particle whose outline moves across the scan: ``(pixel_flags, maps, n_pixels)``.

    The registration moves each frame by a translation only; where the particle itself grows,
    shrinks, turns or cracks across the scan, its outline sweeps through the pixels of its rim as
    the energy crosses the edge, and their spectra mix the particle's absorption with its surroundings' (a particle
    grown by 4 %: E50 +0.69 / +0.41 / +0.26 eV at 0-1 / 1-2 / 2-3 px inside its outline, 7-10
    times their standard error, every pixel kept). The pixels of :func:`moving_rim` get
    :data:`FLAG_MOVING_RIM` and are dropped from ``maps["quality_keep"]`` (so from the particle's
    means, figures and tables); their values stay in the maps.

    Parameters
    ----------
    pixel_flags : ndarray (h, w) uint16 (uint8 read back from older files)
    maps : dict
        The particle's maps (:func:`analyse_particle`); returned as a new dict.
    mask : ndarray (h, w) bool
    depth_px : float
        px inside the outline.

    Returns
    -------
    pixel_flags : ndarray (h, w) uint16 (a new array)
    maps : dict (a new dict, ``quality_keep`` a new array where present)
    n_pixels : int
        The pixels flagged.
    """
    rim = moving_rim(mask, depth_px)
    flags = np.array(pixel_flags, dtype=np.uint16, copy=True)  # uint16: FLAG_MISFIT (256) survives
    flags[rim] |= FLAG_MOVING_RIM
    maps = dict(maps)
    if "quality_keep" in maps:
        maps["quality_keep"] = np.asarray(maps["quality_keep"], bool) & ~rim
    return flags, maps, int(rim.sum())


def _background_row_weights(mask, exclude=None, *, inner: int = 3, outer: int = 10):
    """Each row's and each column's weight in the mean over ``mask`` of :func:`local_background`'s plane:
    ``(rows (h,), cols (w,))``, the plane's least-squares weights of the ring's pixels summed per row (column).
    An offset common to a row enters the particle's mean less that weight times it (zeros: no background)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    ring, model, _, _ = _background_ring(mask, exclude, inner=inner, outer=outer)
    if model == "none" or not mask.any():
        return np.zeros(h), np.zeros(w)
    yy, xx = np.nonzero(ring)
    A = np.c_[np.ones(yy.size), (yy - h / 2) / h, (xx - w / 2) / w]
    my, mx = np.argwhere(mask).mean(axis=0)
    g = np.array([1.0, (my - h / 2) / h, (mx - w / 2) / w])
    if model == "constant":
        A, g = A[:, :1], g[:1]
    q = A @ np.linalg.solve(A.T @ A, g)  # the plane's value at the mask's centroid, per ring pixel
    return np.bincount(yy, weights=q, minlength=h), np.bincount(xx, weights=q, minlength=w)


def _shared_noise_map(aligned, mask, sub_mean, exclude, *, plane: bool = True) -> tuple[np.ndarray, object]:
    """``maps["noise_shared"]`` (5, h, w) float32 of a particle's window and the :class:`SharedNoise` it holds:
    the pixel's OD above its local background (``sub_mean``, the mean over the analysed frames, in the mask), its
    row's and column's weights in the local background (:func:`_background_row_weights`; zeros without ``plane``,
    no background subtracted), and the shares of the
    background's noise common to a row and to a column (:func:`~xanestrack.chemistry.uncertainty.shared_noise`,
    measured in the window outside every particle and the particle's rim: the mask dilated by 3 px)."""
    from .chemistry.uncertainty import shared_noise

    mask = np.asarray(mask, bool)
    bg = ~ndimage.binary_dilation(mask, iterations=3)
    if exclude is not None:
        bg &= ~ndimage.binary_dilation(np.asarray(exclude, bool), iterations=3)
    sn = shared_noise(aligned, bg)
    h, w = mask.shape
    qr, qc = _background_row_weights(mask, exclude) if plane else (np.zeros(h), np.zeros(w))
    out = np.zeros((5, h, w), np.float32)
    out[0] = np.where(mask, np.nan_to_num(sub_mean), 0.0)
    out[1] = qr[:, None]
    out[2] = qc[None, :]
    out[3] = sn.row
    out[4] = sn.col
    return out, sn


#: the start of a particle's note where the detector's noise is shared along rows or columns of a frame
SHARED_NOISE_NOTE = "the detector's noise is correlated along"

#: the note is given where the standard error of the particle's mean E50 was widened by this factor or more for
#: the noise its pixels share along rows or columns (:func:`~xanestrack.chemistry.uncertainty.mean_noise_sigma`)
SHARED_NOISE_NOTE_RATIO = 1.25


def _shared_noise_note(maps, e50, mask, shared, smoothing) -> str:
    """The particle's note where the noise common to a row or a column of its background widened the standard
    error of its mean E50 by :data:`SHARED_NOISE_NOTE_RATIO` or more (over its core: the mask eroded by 2 px, the
    pixels the quality masks keep); empty otherwise."""
    from .chemistry.uncertainty import mean_noise_sigma
    from .result import core_mask

    if not (shared.row > 0 or shared.col > 0):
        return ""
    keep = np.asarray(maps.get("quality_keep", mask), bool)
    core = core_mask(mask, keep) & np.isfinite(np.asarray(e50, float))
    sn = maps["e50_sigma_noise"]
    common = maps.get("noise_background")  # the local background's noise: in both, as in the particles table
    before = mean_noise_sigma(sn, core, smoothing_px=smoothing, background=common)
    after = mean_noise_sigma(sn, core, smoothing_px=smoothing, shared=maps["noise_shared"], background=common)
    if not (before > 0 and after >= SHARED_NOISE_NOTE_RATIO * before):
        return ""
    along = " and ".join(w for w, v in (("rows", shared.row), ("columns", shared.col)) if v > 0)
    return (
        f"{SHARED_NOISE_NOTE} {along} of the frames: {100 * shared.row:.0f} % of the noise variance of its "
        f"background is common to a row, {100 * shared.col:.0f} % to a column (readout stripes, or a detector's "
        f"correlated noise); a mean over its pixels averages that part away only across rows (columns), so the "
        f"standard error of its mean E50 (the noise part) was widened {after / before:.1f} x, "
        f"{before:.3f} -> {after:.3f} eV (removing the stripes from the frames before the run would narrow it)"
    )


def _masked_smooth(stack, mask, sigma):
    """Gaussian smoothing confined to the mask (normalised convolution), per frame."""
    if sigma <= 0:
        return stack
    m = mask.astype(np.float32)
    norm = ndimage.gaussian_filter(m, sigma)
    # one work array, filtered and divided in place, the pixels outside the mask put back as they were: the same
    # numbers as np.where(mask, filtered / norm, stack) in float32, without four copies of a large particle's stack
    out = np.where(mask, stack, 0)
    if not np.issubdtype(out.dtype, np.floating):
        out = out.astype(np.float64)
    ndimage.gaussian_filter(out, (0, sigma, sigma), output=out)
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= norm
    out[:, ~mask] = np.asarray(stack)[:, ~mask]
    return out.astype(np.float32, copy=False)


def e50_gap_span(energies_ev, scan_energies_ev, e0_ev: float, window=(-15.0, 20.0)) -> tuple[float, float] | None:
    """``(lo, hi)`` eV: where the E50 of a pixel flagged ``FLAG_GAP`` lies, or None where no gap is.

    :func:`edge_energy` (``half``) leaves a pixel's E50 unmeasured where it crosses half its step between two
    analysed energies of its edge window (``e0_ev + window``) with frames left out between them (or a hole in
    the scan, ``scan_energies_ev``); its E50 lies between those two energies. With several such gaps in the
    window, from the first's lower end to the last's upper end: a bound for results that lack each pixel's own gap
    (:data:`E50_GAP_MAP`, which :func:`xanestrack.result.gap_counted` takes where it is).
    """
    e = np.asarray(energies_ev, float)
    if not np.isfinite(e0_ev) or e.size < 2:
        return None
    iw = np.flatnonzero((e >= e0_ev + window[0]) & (e <= e0_ev + window[1]))
    ew = e[iw]
    wide = np.flatnonzero(_too_wide(ew, scan_energies_ev))
    if not wide.size:
        return None
    return float(ew[wide[0]]), float(ew[wide[-1] + 1])


def _gap_spans(e, e_all, lo, hi, min_gap_ev: float = 0.0) -> str:
    """The gaps of left-out frames among the analysed energies ``e`` that touch lo..hi eV."""
    wide = [k for k in np.flatnonzero(_too_wide(e, e_all, min_gap_ev)) if e[k + 1] >= lo and e[k] <= hi]
    return ", ".join(f"{e[k]:.1f}-{e[k + 1]:.1f}" for k in wide)


def _whiteline_maps(e, norm, mask, e0, notes, scan_energies=None, why=""):
    """Fitted whiteline position (eV) and height maps of the mask's normalised spectra (n_e, n_pix)."""
    from .chemistry.whiteline import WHITELINE_MIN_GAP_EV, fit_whiteline

    pos = np.full(mask.shape, np.nan, np.float32)
    height = np.full(mask.shape, np.nan, np.float32)
    try:
        wl = fit_whiteline(e, norm, e0_ev=e0, scan_energies_ev=scan_energies)
    except ValueError as exc:
        notes.append(f"whiteline not fitted: {exc}")
        return pos, height
    n_gap = int(np.count_nonzero(wl.flags & FLAG_GAP))
    if n_gap:
        spans = _gap_spans(e, scan_energies, *wl.window_ev, min_gap_ev=WHITELINE_MIN_GAP_EV)
        notes.append(
            f"whiteline not measured in {n_gap} of {wl.flags.size} pixels: its maximum borders a gap of frames "
            f"left out of the analysis ({spans} eV), across which the peak model is not constrained{why}"
        )
    pos[mask] = wl.position_ev
    height[mask] = wl.height
    return pos, height


def _chemistry_maps(
    e,
    sub,
    mask,
    e0,
    *,
    agreement,
    uncertainty,
    references,
    edge_window,
    lcf_window,
    edge_jump_threshold,
    lcf_residual,
    notes,
    background_ring=None,
    edge_steps=None,
    fractions=None,
) -> dict:
    """Quality masks and standard errors of one particle's analysed OD ``sub`` (n_e, h, w); ``background_ring``:
    ``(ring, model)`` of the local background subtracted from it (:func:`_background_ring`), None without one;
    ``references`` as fitted, with ``edge_steps`` and the ``fractions`` (n_refs, h, w) fitted
    (:func:`references_on_scan`, :func:`linear_combination_fit`)."""
    from .chemistry.quality import quality_masks
    from .chemistry.uncertainty import background_noise, edge_energy_sigma, fraction_sigma, registration_sigma_px

    out = {}
    # the fit of the references is not a quality of the pixel: with it in the mask (in quadrature with the
    # normalisation's residual, median + 5 MAD of the particle's pixels) a phase the references describe worse
    # was cut from the particle's statistics: a core-shell particle's mean E50 moved by -0.43 eV (25 sigma) with
    # the NiO reference alone, -0.36 eV with the scan's axis 2 eV off, nothing said
    q = quality_masks(e, sub, mask=mask, e0_ev=e0, edge_jump_threshold=edge_jump_threshold)
    out["quality_keep"] = q.keep
    out["edge_jump_od"] = q.edge_jump_od
    if lcf_residual is not None:
        # kept per pixel (the particle note below judges only its median and 90th percentile): a third phase in part
        # of a particle was fitted as the nearest reference, pixel by pixel, with nothing to show it
        out["lcf_misfit"] = lcf_misfit_map(lcf_residual, q.residual, q.keep, mask)
    if lcf_residual is not None and not any(n.startswith(SPARSE_POST_EDGE_NOTE) for n in notes):
        note = _lcf_misfit_note(lcf_residual, q, references)
        if note:
            notes.append(note)
    if not uncertainty:
        return out
    shift_sigma = None
    if agreement is not None and np.isfinite(agreement).any():
        shift_sigma = registration_sigma_px(agreement)
    elif agreement is not None:
        notes.append("no registration uncertainty: the position was measured only one way")
    shared = {}  # the normalisation, noise and gradients both propagations need: computed once
    # the background's own noise, common to the particle's pixels in a frame, is measured on its ring (outside the
    # mask ``sub`` is not smoothed): the mean E50 of a large particle at low counts was stated 1.3-1.4 x too narrow
    ring = background_ring if background_ring is not None and background_ring[1] != "none" else None
    bg = background_noise(sub, ring[0], model=ring[1]) if ring is not None else None
    s = edge_energy_sigma(
        e, sub, mask=mask, e0_ev=e0, window=edge_window, shift_sigma_px=shift_sigma, shared=shared, background=bg
    )
    out["e50_sigma"] = s.sigma_ev
    out["e50_sigma_noise"] = s.sigma_noise_ev
    out["e50_sigma_registration"] = s.sigma_registration_ev
    if s.background is not None:
        out["noise_background"] = s.background
    if references:
        fs = fraction_sigma(
            e,
            sub,
            references,
            mask=mask,
            e0_ev=e0,
            window=lcf_window,
            shift_sigma_px=shift_sigma,
            shared=shared,
            edge_steps=edge_steps,
            fractions=fractions,
        )
        out["fraction_sigma"] = fs.sigma
    return out


def _drop_sigma_of_unmeasured(maps: dict, e50, fractions) -> None:
    """Set the standard-error maps in ``maps`` (in place: the analysis's own new dict) to NaN where the value they
    belong to is NaN: ``e50_sigma``, ``e50_sigma_noise``, ``e50_sigma_registration`` where ``e50`` is, and
    ``fraction_sigma`` where ``fractions`` are (an E50 in a gap of frames, a pixel without a crossing)."""
    none = ~np.isfinite(np.asarray(e50, float))
    for key in ("e50_sigma", "e50_sigma_noise", "e50_sigma_registration"):
        if key in maps and none.any():
            m = np.asarray(maps[key])
            maps[key] = np.where(none, np.nan, m).astype(m.dtype, copy=False)
    if "fraction_sigma" in maps and fractions is not None:
        m = np.asarray(maps["fraction_sigma"])
        if m.shape == np.shape(fractions):
            maps["fraction_sigma"] = np.where(np.isfinite(fractions), m, np.nan).astype(m.dtype, copy=False)


#: the references describe a particle's spectra when the median residual of their fit over its pixels is within
#: this many times the median residual of the normalisation's pre- and post-edge lines (the spectra's noise), and
#: its 90th percentile within :data:`LCF_MISFIT_RATIO_P90` times. Measured, that ratio (median / 90th
#: percentile): 0.67-1.23 / 0.94-2.06 on 33 particles of the default and hard scenes and of four-particle scenes
#: fitted with the references they were drawn from; 2.4-2.7 / 2.7-5.8 on the NiO particles of a scan whose axis is
#: 2 eV off the references; 1.5 / 7.1 on a LiNiO2-core, NiO-shell particle fitted with NiO alone; 13 / 13 on a
#: LiNiO2 particle so fitted. Measured again (60 energies, seeds 1 and 2; 320 px but hard 460 px): with the
#: references drawn from, default 0.73-1.32 / 1.29-2.15 (18 particles), hard 1.14-1.61 / 1.92-2.96 (24), the
#: stress-crowd, -counts and -all scenes with the two phases they are drawn from (Ni(OH)2 and it +2.5 eV)
#: 1.57-2.38 / 2.66-4.13 (38 particles) but 2.57 / 6.06 and 4.14 / 6.22 for two of stress-all's; with wrong ones
#: (the stress pair on default and hard, the shipped NiO / LiNiO2 on the stress scenes, the shipped ones +2 eV on
#: default) 2.46-10.14 (100 particles; stress-counts and stress-all 2.46-4.65). At 2.0 / 4.0, 19 of the 82
#: particles fitted with their own phases were told otherwise (the probe's stress-crowd: 10 of 16); at 2.4 / 6.5 the
#: two above, every wrong fit noted (but stress-crowd seed 1's, the axis moved -0.70 eV by --known-edge: 2 of 14 at
#: 2.36 and 2.38 not). No threshold separates the two (2.38 against 2.36-2.46): the note says "may"
LCF_MISFIT_RATIO, LCF_MISFIT_RATIO_P90 = 2.4, 6.5


def _lcf_misfit_note(lcf_residual, q, references) -> str:
    """The note where the linear combination fit leaves far more than the spectra's noise: the references
    (or the energy axis against them) may not describe the particle, or a part of it, and its fractions
    may not be its chemistry (they were given without a word: a pure LiNiO2 particle 100 % NiO with the NiO
    reference alone; NiO particles 85 % LiNiO2 with the scan's axis 2 eV off)."""
    kept = q.keep & np.isfinite(lcf_residual) & np.isfinite(q.residual)
    if not kept.any():
        return ""
    noise = float(np.median(q.residual[kept]))
    misfit = float(np.median(lcf_residual[kept]))
    p90 = float(np.percentile(lcf_residual[kept], 90))
    if not noise > 0 or (misfit <= LCF_MISFIT_RATIO * noise and p90 <= LCF_MISFIT_RATIO_P90 * noise):
        return ""
    where = (
        f"the fit leaves {misfit / noise:.1f} x the spectra's noise (median over its pixels)"
        if misfit > LCF_MISFIT_RATIO * noise
        else f"a tenth of its pixels or more are fitted {p90 / noise:.1f} x worse than the spectra's noise"
    )
    return (
        f"the references ({', '.join(references)}) {MISFIT_NOTE}: {where}: its fractions "
        "may not be its chemistry (a phase the references do not hold, the energy axis off theirs: calibrate it, or a "
        "normalisation the scan's energies cannot support; fitted with the phases they were drawn from, 38 of 40 "
        "particles of synthetic stress scenes left 1.6-2.4 x, the others 2.6 and 4.1 x)"
    )


#: px: the spectra's noise a pixel's LCF residual is judged against (:func:`lcf_misfit_map`) is the normalisation's
#: residual (its pre- and post-edge lines) of the kept pixels about it, averaged inside the mask with a Gaussian of
#: this sigma: thin rims and smoothing near the outline make it 1.1-1.7 x the particle's median there, and a rim of
#: fitted pixels read 3-4.5 x the particle's median noise (a two-phase domains particle described by its references)
MISFIT_NOISE_SIGMA_PX = 3.0
#: px: :func:`misfit_region` judges the RMS of the misfit map over a Gaussian of this sigma inside the mask, not single
#: pixels (the controls' single pixels reach 2.6-10 x, their smoothed RMS inside the rim at most 2.7 x)
MISFIT_SMOOTH_PX = 1.5
#: a pixel whose smoothed misfit (:data:`MISFIT_SMOOTH_PX`) exceeds this many times the spectra's local noise seeds a
#: region the references do not describe (:func:`misfit_region`). Measured inside the rim (:data:`MISFIT_RIM_PX`),
#: the references the particles are drawn from: default scenes (seeds 1-3, 256 px, 60 energies, 15 particles) at most
#: 1.6-2.6 x, the probe's scenes (5000 and 800 counts, a PSF, own motion) 1.6-3.3 x (no patch of 20 px above 3); a
#: third phase (NiO +3 eV, fitted with NiO and LiNiO2) 3.3-4.0 x over it
MISFIT_PIXEL_RATIO = 3.0
#: pixels: the smallest connected region of :func:`misfit_region` (a disc of radius about 2.5 px), counted deeper
#: than :data:`MISFIT_RIM_PX` inside the particle's outline
MISFIT_MIN_PX = 20
#: px: the outer rim a region of :func:`misfit_region` may not lie in alone (the particle's means leave it out too:
#: :func:`xanestrack.result.core_mask`): there the spectra mix with the surroundings and the local background (the
#: default scenes' rims: patches of 8-17 px, 3-5 x, half of their pixels rejected by the quality masks)
MISFIT_RIM_PX = 2
#: a region of :func:`misfit_region` takes in the pixels connected to it whose smoothed misfit exceeds this
#: (hysteresis: where the phase mixes with its neighbours' in the blur, e.g. a 4 px shell's inner ring at 2.5 x)
MISFIT_GROW_RATIO = 2.0
#: a region of :func:`misfit_region` must also be fitted this many times worse than the rest of the particle (the
#: medians of :func:`lcf_misfit_map`): spectra the references describe only roughly everywhere are not a phase they
#: lack. The stress scenes fitted with the very phases they are drawn from (stress-counts, -crowd, -all, seed 1) leave
#: 1.7-2.7 x over their pixels and patches of 22-167 px at 3.4-3.8 x, 1.4-2.0 times the rest; the probe's third
#: phase 3.8-5.2 times the rest (a 4 px shell, half a particle)
MISFIT_REGION_CONTRAST = 2.5
#: how the particle note of :func:`_misfit_region_note` begins (the run notes gather it)
MISFIT_REGION_NOTE = "the references do not describe a region of"


def lcf_misfit_map(lcf_residual, noise_residual, keep, mask) -> np.ndarray:
    """Per pixel, the RMS residual of the linear combination fit over the spectra's local noise (float32, NaN outside
    ``mask`` and where the fit failed).

    The noise is the normalisation's residual ``noise_residual`` (its pre- and post-edge lines, normalised units:
    :attr:`xanestrack.chemistry.quality.QualityMasks.residual`) of the pixels ``keep`` about the pixel, averaged
    inside the mask with a Gaussian of :data:`MISFIT_NOISE_SIGMA_PX` (the particle's median where none is near):
    the spectra's noise grows towards a thin rim, which one number for the particle read as misfit. About 1 where
    the references describe the spectra (1.0 median, 1.5-1.8 at the 90th percentile on the probe's particles
    drawn from them); a phase they do not hold reads 3-5 (NiO shifted +3 eV, fitted with NiO and LiNiO2).
    """
    mask = np.asarray(mask, bool)
    lcf = np.asarray(lcf_residual, float)
    res = np.asarray(noise_residual, float)
    good = mask & np.asarray(keep, bool) & np.isfinite(res) & np.isfinite(lcf)
    out = np.full(mask.shape, np.nan, np.float32)
    if not good.any():
        return out
    median = float(np.median(res[good]))
    w = ndimage.gaussian_filter(good.astype(float), MISFIT_NOISE_SIGMA_PX)
    v = ndimage.gaussian_filter(np.where(good, res, 0.0), MISFIT_NOISE_SIGMA_PX)
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.where(w > 0.05, v / w, median)  # hardly any kept pixel about it: the particle's median
        ratio = lcf / noise
    fin = mask & np.isfinite(ratio) & (noise > 0)
    out[fin] = ratio[fin]
    return out


def misfit_region(misfit, mask, keep=None) -> np.ndarray:
    """The pixels of ``mask`` (h, w bool) in a region whose spectra the references do not describe (bool).

    ``misfit`` is :func:`lcf_misfit_map`; only the pixels ``keep`` (the quality masks', all of ``mask`` without it)
    are judged. Its square is averaged inside them with a Gaussian of :data:`MISFIT_SMOOTH_PX` (a single pixel's
    residual is noisy: the controls' single pixels reach 2.6-10 x); a region is seeded by a connected patch where
    the root of it exceeds :data:`MISFIT_PIXEL_RATIO`, holding :data:`MISFIT_MIN_PX` pixels or more deeper than
    :data:`MISFIT_RIM_PX` inside the outline, whose median misfit there is :data:`MISFIT_REGION_CONTRAST` times
    that of the rest of the particle inside its rim or more; it takes in the pixels connected to it above
    :data:`MISFIT_GROW_RATIO`.

    A part of a particle in a phase the references do not hold (a 4 px shell, half the particle) left the
    particle's median and 90th percentile below the particle note's thresholds (:data:`LCF_MISFIT_RATIO`) and its
    fractions read as the nearest reference's (a NiO shifted +3 eV as LiNiO2 1.000 +- 0.012-0.017), nothing said.
    """
    mask = np.asarray(mask, bool)
    m = np.asarray(misfit, float)
    fin = mask & np.isfinite(m)
    if keep is not None:
        fin &= np.asarray(keep, bool)
    if not fin.any():
        return np.zeros(mask.shape, bool)

    def smoothed(sel):  # the RMS of the misfit over a Gaussian, inside ``sel``
        w = ndimage.gaussian_filter(sel.astype(float), MISFIT_SMOOTH_PX)
        v = ndimage.gaussian_filter(np.where(sel, m * m, 0.0), MISFIT_SMOOTH_PX)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sel, np.sqrt(v / w), np.nan)

    smooth = smoothed(fin)
    with np.errstate(invalid="ignore"):
        high = fin & (smooth > MISFIT_PIXEL_RATIO)
    if not high.any():
        return high
    lab, n = ndimage.label(high)
    # counted inside the outer rim: there the spectra mix with the surroundings and the local background (the
    # default scenes' rims: patches of 8-17 px at 1-2 px deep, 3-5 x, half of them rejected by the quality masks)
    inner = fin & ndimage.binary_erosion(np.pad(mask, 1), iterations=MISFIT_RIM_PX)[1:-1, 1:-1]
    big = np.bincount(lab[inner].ravel(), minlength=n + 1) >= MISFIT_MIN_PX
    big[0] = False
    # against the rest of the particle inside its rim; a particle fitted this badly everywhere is its own note
    # (LCF_MISFIT_RATIO)
    rest = inner & ~big[lab]
    base = float(np.median(m[rest])) if np.count_nonzero(rest) >= MISFIT_MIN_PX else 0.0
    for k in np.flatnonzero(big):
        big[k] = float(np.median(m[inner & (lab == k)])) >= MISFIT_REGION_CONTRAST * base
    region = big[lab]
    if region.any() and MISFIT_GROW_RATIO < MISFIT_PIXEL_RATIO:
        # hysteresis, over every pixel judged (the rim too): a region's edge, where the phase mixes with its
        # neighbour's in the blur, is fitted less badly (a 4 px shell's inner ring: 2.5 x, its E50 0.67 eV above the
        # bound reference's at a fraction of 1.000)
        with np.errstate(invalid="ignore"):
            grow, _ = ndimage.label(fin & (smooth > MISFIT_GROW_RATIO))
        region = np.isin(grow, np.unique(grow[region])) & (grow > 0)
    return region


def _misfit_region_note(region, misfit, e50, fractions, names, mask) -> str:
    """The particle note on its :func:`misfit_region` (empty where there is none): how much of its core it covers,
    how badly it is fitted, its E50 against the rest's and what the fractions read there (not its chemistry)."""
    from .result import core_mask

    region = np.asarray(region, bool)
    if not region.any():
        return ""
    mask = np.asarray(mask, bool)
    core = core_mask(mask, mask)
    n_core = int(np.count_nonzero(core))
    n_in = int(np.count_nonzero(region & core))
    e50 = np.asarray(e50, float)
    inside, rest = region & mask & np.isfinite(e50), ~region & mask & np.isfinite(e50)
    where = (
        f"{n_in} of its {n_core} core pixels ({100 * n_in / max(n_core, 1):.0f} %)"
        if n_in
        else f"{int(region.sum())} pixels of its rim"
    )
    misfit = np.asarray(misfit, float)
    others = ~region & mask & np.isfinite(misfit)
    text = (
        f"{MISFIT_REGION_NOTE} this particle: in {where}, {int(region.sum())} pixels in all, the fit leaves "
        f"{float(np.nanmedian(misfit[region])):.1f} x the spectra's local noise (median"
        + (f"; {float(np.median(misfit[others])):.1f} x over the rest" if others.any() else "")
        + f"), a phase the references ({', '.join(names)}) do not hold (or spectra distorted there)"
    )
    if inside.any():
        text += f"; its E50 there {np.mean(e50[inside]):.2f} eV" + (
            f" against {np.mean(e50[rest]):.2f} eV over the rest" if rest.any() else ""
        )
    fr = None if fractions is None else np.asarray(fractions, float)
    if fr is not None and len(names) and fr.shape[1:] == mask.shape:
        read = [f"{n} {np.nanmean(fr[j][region]):.2f}" for j, n in enumerate(names) if np.isfinite(fr[j][region]).any()]
        if read:
            text += f"; the fractions there read {', '.join(read)}, not its chemistry"
    return (
        text + ": flagged misfit in pixel_flags (map_lcf_misfit: the fit's residual over the noise per pixel) and "
        "left out of its mean fractions, not of its mean E50"
    )


_EDGE_METHODS = (("e50", "half"), ("derivative", "derivative"), ("whiteline", "whiteline"))

#: a frame enters :func:`_check_pre_edge_seen`'s spectrum where at least this share of the particle's mask lies
#: inside it (finite): the mean of half a particle finds its edge within a few eV, enough to place the pre-edge
PRE_EDGE_SEEN_SHARE = 0.5


def _few_e50_note(e50, pix_flags, mask) -> str:
    """The note where fewer than :data:`MIN_E50_SHARE` of the particle's whole core pixels (the mask eroded, before
    the quality masks: :func:`xanestrack.result.e50_share`) have an E50 (empty otherwise), naming what the others'
    spectra failed on: its mean E50 is not given, nor its mean fractions
    (:func:`xanestrack.result.particle_summary`)."""
    from .result import core_mask, e50_share

    mask = np.asarray(mask, bool)
    n_fin, n = e50_share(e50, mask)
    if not n or n_fin >= MIN_E50_SHARE * n:
        return ""
    core = core_mask(mask, mask)
    fl = pix_flags[core][~np.isfinite(e50[core])]
    # normalize sets the spectra of a step too low to NaN: those are not also spectra that "hold non-finite values"
    # (193 pixels counted twice, the input without a NaN)
    fl = np.where(fl & FLAG_LOW_STEP, fl & ~np.uint16(FLAG_NONFINITE), fl)
    names = (
        (FLAG_NO_CROSSING, "never cross half the edge step in the edge window"),
        (FLAG_LOW_STEP, "have too low an edge step"),
        (FLAG_GAP, "cross it in a gap of frames left out"),
        (FLAG_NONFINITE, "hold non-finite values"),
    )
    why = ", ".join(f"{int(np.count_nonzero(fl & bit))} {text}" for bit, text in names if (fl & bit).any())
    return (
        f"E50 measured in {n_fin} of its {n} core pixels only (the others' spectra: {why or 'no E50'}): "
        "its mean E50 is not given, nor its mean fractions (the few pixels measured are not the particle; frames "
        "used that start on the edge or past it, or an edge E0 did not find, leave most spectra without a crossing)"
    )


def _check_pre_edge_seen(aligned, mask, energies_ev, usable, e0_used, subtract_background) -> None:
    """Raise ``ValueError`` where the frames used miss the pre-edge of the particle's own edge.

    Where frames are left out (positions not vouched for: a faint particle before the edge),
    the frames used may start on the edge's rise. Their own E0 then moves up the edge and the
    pre-edge range follows it onto the edge (stress-all at 1024^2, a 10-px particle whose
    frames vouched for start at 8352.5 eV: E0 8385.8 eV, E50 8373.6 eV everywhere, truly
    about 8344). The edge is found instead on the particle's spectrum over every frame where
    it was measured (vouched for or not: a position a pixel or two off moves the mean over
    the mask little), and the frames used must hold two energies in the pre-edge range of
    that edge. A frame counts where :data:`PRE_EDGE_SEEN_SHARE` of the mask or more lies inside
    the frame, its spectrum the mean over those pixels: a particle entering the field, cut by
    the border until 8349 eV, was otherwise never checked (its frames used start past the
    edge's rise: E0 8387 eV, a mean E50 33 eV high with a 0.19 eV sigma, nothing said).
    """
    e_all = np.asarray(energies_ev, float)
    inside = np.isfinite(aligned[:, mask])
    whole = inside.mean(axis=1) >= PRE_EDGE_SEEN_SHARE
    if not (whole & ~usable).any() or whole.sum() < 8:
        return
    w = aligned[whole]
    if subtract_background:
        w = w - local_background(w, mask)
    with warnings.catch_warnings():  # the frames kept hold finite pixels in the mask
        warnings.simplefilter("ignore", RuntimeWarning)
        spectrum = np.nanmean(w[:, mask], axis=1)
    try:
        e0_whole = find_e0(e_all[whole], spectrum)
    except ValueError:
        return
    lo, hi = e0_whole + PRE_EDGE_RANGE[0], e0_whole + PRE_EDGE_RANGE[1]
    in_pre = (e_all >= lo) & (e_all <= hi)
    n_pre = int(np.count_nonzero(in_pre & usable))
    # only an edge found lower, with a pre-edge the scan measured: a glitch in a frame left out
    # that puts the whole spectrum's E0 elsewhere declines nothing
    if n_pre < 2 and e0_whole < e0_used and np.count_nonzero(in_pre & whole) >= 2:
        raise ValueError(
            f"the frames used hold {n_pre} energies in the pre-edge range {lo:.1f}-{hi:.1f} eV of the particle's "
            f"edge (E0 {e0_whole:.1f} eV in its spectrum over every frame measured with half of it or more in view; "
            f"{e0_used:.1f} eV over the frames used alone, which start on the edge)"
        )


def _other_edge_references(references, e0: float) -> dict:
    """``{name: eV}``: the references whose edge (:func:`find_e0` of their spectrum) lies more than
    :data:`OTHER_EDGE_EV` from ``e0`` (eV), a particle's edge: those of another absorption edge. A reference without
    a spectrum (a callable) is not judged."""
    far = {}
    for name, r in references.items():
        if not hasattr(r, "energies_ev"):
            continue
        try:
            at = find_e0(r.energies_ev, r.mu)
        except ValueError:
            continue
        if abs(at - e0) > OTHER_EDGE_EV:
            far[name] = float(at)
    return far


#: how the particle notes of :func:`_pre_edge_from_unvouched` begin: frames not vouched for taken for the pre-edge,
#: or refused (:data:`xanestrack.pipeline.XANES_NOTE_STARTS`: a redo replaces them)
PRE_UNVOUCHED_NOTE = "pre-edge taken from"
PRE_UNVOUCHED_REFUSED_NOTE = "its pre-edge frames not vouched for"
#: the frames not vouched for that stand in for a particle's pre-edge (:func:`_pre_edge_from_unvouched`) are judged
#: by :func:`_stand_in_misfit` against what does not depend on them, in units of the edge step: each must lie within
#: this of the pre-edge line fitted without it (leave one out), and the line must pass within this of the frames
#: vouched for just below the edge window. A frame whose position strays so far that the mask catches the rim or the
#: background is refused. Judged on the line fitted through them all, two frames always passed (the line runs through
#: both) and a third was diluted: a frame with its mean OD halved was taken and moved E50 -1.2 eV, said to lie
#: "within 0.00 of the edge step of that line". The 24 reduced scenes of the false-alarm sweep (256 px, 60 energies,
#: learned path; 10 frames stand in): 20 of the 24 particles taken before still taken, 14 of the 16 given a mean E50
#: that way kept, unchanged (-0.28 to +0.37 eV from the truth maps); the two refused (0.10 and 0.12, their pre-edge
#: noise about 0.05 of the step) were the two furthest off: +1.16 eV (sigma 2.54), -0.60 eV (sigma 0.61)
PRE_UNVOUCHED_MAX_DEV = 0.1


def _stand_in_misfit(e, mean_norm, used, extra, e0: float, edge_start: float) -> tuple[str, str]:
    """``(refused, tested)``: why the frames ``extra`` (not vouched for, in ``used``) do not stand in for the pre-edge
    of a mean normalised spectrum ``mean_norm`` (edge at ``e0``, eV; ``""`` where they do), and what they were
    tested against.

    Each frame of ``extra`` in the pre-edge range is compared with the pre-edge line fitted through the other
    frames there (its leave-one-out residual, in units of the edge step): :data:`PRE_UNVOUCHED_MAX_DEV` at most.
    That needs two other frames. The frames vouched for between the pre-edge range and the edge window (from
    ``e0 + edge_start``) lie on that line carried to the edge, whatever the frames not vouched for read: the line
    must pass within :data:`PRE_UNVOUCHED_MAX_DEV` of their range (the lowest to the highest), else they stray
    together (a consistent offset, which leave-one-out does not see). Where neither test can be made (two frames in
    the pre-edge range, none vouched for just below the edge window), they are refused as not tested.
    """
    e = np.asarray(e, float)
    v = np.asarray(mean_norm, float)
    ok = np.asarray(used, bool) & np.isfinite(v)
    pre = ok & (e >= e0 + PRE_EDGE_RANGE[0]) & (e <= e0 + PRE_EDGE_RANGE[1])
    idx = np.flatnonzero(pre)
    x = (e - e0) / 100.0
    tested, why = [], []
    if idx.size >= 3:
        loo = []
        for j in np.flatnonzero(pre & extra):
            o = idx[idx != j]
            c = np.linalg.lstsq(np.c_[np.ones(o.size), x[o]], v[o], rcond=None)[0]
            loo.append(abs(v[j] - c[0] - c[1] * x[j]))
        worst = max(loo, default=0.0)
        tested.append(f"each lies within {worst:.2f} of the edge step of the pre-edge line fitted through the others")
        if worst > PRE_UNVOUCHED_MAX_DEV:
            why.append(
                f"one strays {worst:.3f} of the edge step (more than {PRE_UNVOUCHED_MAX_DEV:g}) from the pre-edge line "
                "fitted through the others"
            )
    near = ok & ~np.asarray(extra, bool) & (e > e0 + PRE_EDGE_RANGE[1]) & (e <= e0 + edge_start)
    if near.any():
        lo, hi = float(v[near].min()), float(v[near].max())
        miss = max(lo, -hi, 0.0)  # from the line (0) to the range of the frames vouched for there
        where = _frame_runs(e, near)
        tested.append(f"the line passes within {miss:.2f} of the edge step of the frames vouched for at {where}")
        if miss > PRE_UNVOUCHED_MAX_DEV:
            why.append(
                f"the line they set passes {miss:.3f} of the edge step (more than {PRE_UNVOUCHED_MAX_DEV:g}) "
                f"{'below' if lo > 0 else 'above'} the frames vouched for at {where}, just below the edge window"
            )
    elif tested:  # leave-one-out only: a shift of them all is not seen
        tested[-1] += (
            " (no frame vouched for lies between the pre-edge range and the edge window to test the line against)"
        )
    if not tested:
        why.append(
            f"only {idx.size} energies in the pre-edge range and no frame vouched for between it and the edge window: "
            "nothing independent of them to test them against (not tested)"
        )
    return "; ".join(why), "; ".join(tested)


def _pre_edge_from_unvouched(aligned, mask, energies_ev, usable, pre_usable, kw) -> dict:
    """:func:`analyse_particle` of the frames ``usable``; where it fails as they hold too few energies in the
    pre-edge range, or as its mean spectrum falls back to the level of a pre-edge line carried beyond its reach
    (:data:`FALL_BEYOND_LINE`: those energies too close together for the scan), again with the frames of
    ``pre_usable`` in the pre-edge range of the edge found on ``usable`` added (placed at their reported positions),
    and a note naming them.

    A faint particle's pre-edge frames are often not vouched for (its mask's centre of mass strays 0.6-2 px while
    the edge estimate holds) and were left out: with no pre-edge frame left, no XANES at all ("pre-edge range ...
    holds 0 energies, need 2": no mean E50 in stress-counts seed 3 at 256 px, 4 of its 5 particles failing so). Its pre-edge is flat: a position
    a pixel off moves the mean over the mask little, and the frames added lie below the edge and LCF windows, so
    they set the pre-edge line only, never an E50, a fraction or the edge's frames. Only where needed (the frames
    vouched for suffice elsewhere) and where plausible against what does not depend on them
    (:func:`_stand_in_misfit`: each frame against the line fitted without it, the line against the frames vouched
    for just below the edge window), else the first result (its failure) stands, with a note saying why.
    """
    first = analyse_particle(aligned, mask, energies_ev, usable=usable, **kw)
    # normalize's own failures for want of pre-edge energies only (not _check_pre_edge_seen's frames used that start
    # on the edge: their E0 lies up the edge, and a pre-edge range below it would take in the edge's frames)
    few = any(t.startswith(("XANES failed: pre-edge range", "XANES failed: pre-edge energies")) for t in first["notes"])
    # or a pre-edge line too short for the scan: the frames vouched for there, close together, carry it so far that
    # its slope's error took the post-edge back to the pre-edge level (_fall_back_note, FALL_BEYOND_LINE; the frames
    # not vouched for between them and the edge lengthen it). Only on that failure: a particle analysed is not changed
    short = any(t.startswith(f"XANES failed: {FALL_BACK_NOTE}") and FALL_BEYOND_LINE in t for t in first["notes"])
    if not (few or short):
        return first
    e_all = np.asarray(energies_ev, float).ravel()
    use = np.ones(e_all.size, bool) if usable is None else np.asarray(usable, bool)
    pre_ok = np.asarray(pre_usable, bool) & ~use
    m = _particle_mask(mask, aligned.shape[1:])
    edges = []
    for frames in (use, use | pre_ok):  # the lower of the edges found with and without them
        sub = aligned[frames]  # a copy (frames is a bool index)
        if kw.get("subtract_background", True):
            sub -= local_background(sub, m, exclude=kw.get("background_exclude"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            spectrum = np.nanmean(sub[:, m], axis=1)
        try:
            edges.append(find_e0(e_all[frames], spectrum))
        except ValueError:
            return first
    found = min(edges)
    # below the pre-edge range's top and the edge and LCF windows' starts: these frames set the pre-edge line only
    top = found + min(PRE_EDGE_RANGE[1], kw["edge_window"][0], kw["lcf_window"][0])
    extra = pre_ok & (e_all >= found + PRE_EDGE_RANGE[0]) & (e_all <= top)
    if np.count_nonzero(extra) < 2:
        return first
    again = analyse_particle(aligned, mask, energies_ev, usable=use | extra, **kw)
    if any(t.startswith("XANES failed:") for t in again["notes"]):
        return first
    refused, tested = _stand_in_misfit(
        e_all, again["mean_norm"], use | extra, extra, float(again["e0_ev"]), kw["edge_window"][0]
    )
    if refused:
        first["notes"].append(
            f"{PRE_UNVOUCHED_REFUSED_NOTE} ({_frame_runs(e_all, extra)}) were not taken for its pre-edge: {refused}"
        )
        return first
    again["notes"].insert(
        0,
        f"{PRE_UNVOUCHED_NOTE} {int(extra.sum())} frames not vouched for ({_frame_runs(e_all, extra)}), placed at "
        "their reported positions: the frames vouched for "
        + (
            "hold too few pre-edge energies to normalise"
            if few
            else "span too little of the pre-edge for its line to be carried across the scan (carried there alone, "
            "it took the mean normalised spectrum back to its pre-edge level, beyond its reach)"
        )
        + ". They set "
        "its pre-edge line only (the edge and its E50 and fractions come from the frames vouched for); " + tested,
    )
    return again


def analyse_particle(
    aligned,
    mask,
    energies_ev,
    *,
    usable=None,
    references=None,
    min_energies: int = 8,
    subtract_background: bool = True,
    smoothing: float = 1.0,
    edge_window=(-15.0, 20.0),
    lcf_window=(-20.0, 40.0),
    agreement=None,
    uncertainty: bool = True,
    edge_jump_threshold: float = 5.0,
    keep_norm: bool = False,
    left_out: str = "not usable",
    background_exclude=None,
    filled=None,
    pre_usable=None,
) -> dict:
    """XANES of one aligned particle sub-stack: edge-energy maps, LCF, mean spectra.

    Parameters
    ----------
    aligned : ndarray (n_frames, h, w)
        The particle's aligned optical density.
    mask : ndarray (h, w) bool
        The particle's pixels; numbers 0 and one positive value (0/1, 0/255) are taken as
        ``mask > 0``, a soft mask is refused (threshold it first).
    energies_ev : array-like (n_frames,)
        eV (keV refused).
    usable : ndarray (n_frames,) bool, optional
        Frames to use (default: frames without NaN).
    references : dict of name -> ReferenceSpectrum, optional
        For the linear combination fit (skipped without, or when they do not cover
        ``lcf_window`` around the edge). Each is sampled on the energies analysed and normalised
        as the particle's spectra are before the fit (:func:`references_on_scan`; as given, with a
        note, where it does not reach over them).
    min_energies : int
        Fewer usable frames than this: no analysis (NaN maps and a note).
    subtract_background : bool
        Subtract each frame's :func:`local_background` first.
    smoothing : float
        Gaussian sigma (px) of the smoothing inside the mask (0: none).
    edge_window, lcf_window : (float, float)
        eV relative to the edge E0: where edge energies are searched
        (:func:`edge_energy`) and where the fit is made (:func:`linear_combination_fit`).

    agreement : ndarray (n_frames,), optional
        px. Per frame, the distance between the two independent position estimates
        (``ParticleResult.agreement``): the registration part of the edge-energy
        uncertainty (:func:`xanestrack.chemistry.uncertainty.registration_sigma_px`).
        None or no finite value: no registration part (NaN map).
    uncertainty : bool
        Compute the standard errors of E50 and of the fractions (noise and registration).
    edge_jump_threshold : float
        Quality mask: minimum edge step in units of the pre-edge noise
        (:func:`xanestrack.chemistry.quality.quality_masks`).
    keep_norm : bool
        Also return ``norm``: the normalised spectra (n_frames, h, w), NaN in frames
        not used and outside the mask (for phase mapping over several particles).
    left_out : str
        Why the frames outside ``usable`` were left out: said in the note where the
        analysis fails for want of them (e.g. a faint particle whose pre-edge positions
        are not vouched for), so that the note does not blame the scan's energy range.
    background_exclude : ndarray (h, w) bool, optional
        Pixels left out of the ring of the local background (``exclude`` of :func:`local_background`:
        the other tracked particles about it). Where too little of the ring is left for a tilted plane,
        the background is a constant per frame, and a note says so.
    filled : ndarray (h, w) bool, optional
        Pixels that lay, in a frame used, in a wide patch of input pixels filled from its rim (not measured
        there: flagged ``FLAG_FILLED`` by the pipeline). Analysed as the others, but left out of the check that
        the frames are in the order of the energies (:func:`_negative_step_note`), of the console's count
        of spectra without an edge step (:func:`normalize`'s ``measured``) and of :func:`misfit_region`.
    pre_usable : ndarray (n_frames,) bool, optional
        Frames outside ``usable`` that may stand in for its pre-edge alone (positions measured but not vouched
        for): where the frames of ``usable`` leave the pre-edge range too few energies to normalise, those of them
        in the pre-edge range (below the edge and LCF windows) are added, only where they pass tests that do not
        depend on them (:func:`_stand_in_misfit`: each on the pre-edge line fitted through the others, the line on
        the frames vouched for just below the edge window); a note names them (:func:`_pre_edge_from_unvouched`).

    Returns
    -------
    dict with ``edge_maps`` (e50, derivative, whiteline), ``pixel_flags``,
    ``fractions``, ``reference_names``, ``e0_ev``, ``mean_norm``, ``pre_edge``,
    ``post_edge``, ``notes``, ``maps`` (see :class:`xanestrack.result.ParticleResult`),
    ``xanes_frames`` (the frames used), and ``norm`` with ``keep_norm``.

    Notes
    -----
    E0 is found on the mean spectrum of the mask and then used for every pixel. A
    ``ValueError`` of the analysis (e.g. a scan that does not reach the post-edge) is
    not raised: it becomes a note and NaN maps. So do spectra no sample has: a mean
    normalised spectrum that falls back to its pre-edge level above its edge
    (:func:`_fall_back_note`: frames in another order than the energies), and edge steps
    negative in most pixels (:func:`_negative_step_note`: frames in the reverse order).

    ``edge_maps["whiteline"]`` is the position of a peak model fitted to the top of the
    whiteline (:func:`xanestrack.chemistry.whiteline.fit_whiteline`: a cubic within 5 eV
    of the smoothed maximum), not the arg-max of noisy points; its height is
    ``maps["whiteline_height"]``. The uncertainties are propagated from the OD stack as
    analysed (after the background subtraction and the smoothing,
    :func:`xanestrack.chemistry.uncertainty.edge_energy_sigma`). The quality masks
    (edge jump, normalisation and LCF residual) are stored beside the maps
    (``quality_keep``); the maps keep their values.

    Raises
    ------
    ValueError
        For an ``aligned`` that is not 3-D, energies that are not one per frame or look like
        keV, or a mask that is not of the window's shape or not a (0/1) mask.
    """
    aligned = np.asarray(aligned)
    if aligned.ndim != 3:
        raise ValueError(f"aligned must be (n_frames, h, w), got shape {aligned.shape}")
    n = aligned.shape[0]
    if pre_usable is not None:
        kw = dict(
            references=references,
            min_energies=min_energies,
            subtract_background=subtract_background,
            smoothing=smoothing,
            edge_window=edge_window,
            lcf_window=lcf_window,
            agreement=agreement,
            uncertainty=uncertainty,
            edge_jump_threshold=edge_jump_threshold,
            keep_norm=keep_norm,
            left_out=left_out,
            background_exclude=background_exclude,
            filled=filled,
        )
        return _pre_edge_from_unvouched(aligned, mask, energies_ev, usable, pre_usable, kw)
    # a list of energies failed deep inside (TypeError), keV ran into a pre-edge note of "-141.7--21.7 eV"
    energies_ev = np.asarray(energies_ev, dtype=float)
    if energies_ev.size != n:
        raise ValueError(f"energies_ev must hold one energy per frame ({n}), got shape {energies_ev.shape}")
    energies_ev = energies_ev.ravel()
    _refuse_kev(energies_ev)
    mask = _particle_mask(mask, aligned.shape[1:])
    notes = []
    if usable is None:
        usable = np.all(np.isfinite(aligned), axis=(1, 2))
    usable = np.asarray(usable, bool).copy()
    edge_maps = {}
    pix_flags = np.zeros(aligned.shape[1:], np.uint16)  # uint16: FLAG_MISFIT is bit 256
    fractions, ref_names = None, ()
    maps, norm, lcf_residual = {}, None, None
    fit_refs, steps = references, None  # the references as fitted (references_on_scan), their steps on the scan
    e0 = float("nan")
    mean_norm = np.full(n, np.nan)
    pre_c = post_c = np.full(n, np.nan)
    n_out = int(n - usable.sum())
    e_all = np.asarray(energies_ev, float)
    why = (
        f"; {n_out} of the scan's {n} frames ({_frame_runs(e_all, ~usable)}) "
        f"were left out of this particle's analysis: {left_out}"
        if n_out
        else ""
    )
    if usable.sum() < min_energies or not mask.any():
        notes.append(f"XANES skipped: {int(usable.sum())} usable energies (need {min_energies}){why}")
        for name, _ in _EDGE_METHODS:
            edge_maps[name] = np.full(aligned.shape[1:], np.nan, np.float32)
    else:
        e = energies_ev[usable]
        sub = aligned[usable]  # a copy (usable is a bool index): its background is taken off in place
        if subtract_background:
            sub -= local_background(sub, mask, exclude=background_exclude)
            if background_exclude is not None:
                _, model, n_ring, n_free = _background_ring(mask, background_exclude)
                if model != "plane":
                    notes.append(
                        f"other particles fill most of the ring around it from which its local background is "
                        f"measured ({n_free} of its {n_ring} pixels left, "
                        + (
                            "too few: no background subtracted)"
                            if model == "none"
                            else f"fewer than {MIN_PLANE_RING_PX} or on one side only): the background is a "
                            "constant per frame, not a tilted plane; a tilt of the field across it stays in its E50"
                        )
                    )
        sub = _masked_smooth(sub, mask, smoothing)
        mu = sub[:, mask]  # (n_e, n_pix)
        try:
            spectrum = mu.mean(axis=1)
            found = find_e0(e, spectrum)
            try:
                nm = normalize(e, spectrum, e0_ev=found)
            except _ShortPreEdge:  # where the frames used start on the edge, that is said rather
                _check_pre_edge_seen(aligned, mask, e_all, usable, found, subtract_background)
                raise
            _check_pre_edge_seen(aligned, mask, e_all, usable, found, subtract_background)
            e0 = nm.e0_ev
            # a particle without the scan's edge (binder, carbon, an Al flake): no E50, no fractions, rather than
            # the few noisy crossings of its pixels (said before the notes on its edge's shape, which it has not);
            # an edge falling across E0 is left to the pixels' own steps below (frames in the reverse order)
            mean_step = mean_edge_step(e, spectrum, nm)
            falls = _edge_shown(*mean_step, sign=-1)
            no_edge = "" if falls else _no_edge_note(e, spectrum, nm)
            if no_edge:
                e0 = float("nan")  # its derivative's maximum is noise, no edge (the two-edge check reads the E0s)
                raise ValueError(no_edge)
            n_post = int(np.count_nonzero((e >= nm.post_range_ev[0]) & (e <= nm.post_range_ev[1])))
            if n_post < MIN_POST_EDGE_ENERGIES:
                # a scan ending 120 eV past the edge: its one post-edge energy set every edge step, E50 0.1-0.2 eV
                # lower than with the scan's full post-edge (40x its stated sigma), nothing said
                notes.append(
                    f"{SPARSE_POST_EDGE_NOTE} {_count_energies(n_post)} ("
                    + (
                        f"at {nm.post_range_ev[0]:.1f} eV"
                        if n_post == 1
                        else f"{nm.post_range_ev[0]:.1f}-{nm.post_range_ev[1]:.1f} eV"
                    )
                    + ", from E0 + 100 eV): their noise and the EXAFS wiggles they catch set "
                    f"every edge step, and E50 and the fractions with it (a scan should hold {MIN_POST_EDGE_ENERGIES} "
                    "energies or more from E0 + 100 eV on)"
                )
            shoulder = _shoulder_note(e, nm.norm, float(e0))
            if shoulder:
                notes.append(shoulder)
            mean_norm[usable] = nm.norm
            pre_c = np.full(n, np.nan)
            post_c = np.full(n, np.nan)
            pre_c[usable], post_c[usable] = nm.pre_edge, nm.post_edge
            # a spectrum no sample has (frames in another order than the energies): no E50, no fractions, rather
            # than numbers 17 eV off with a sigma of 0.02 eV (the mean spectrum is kept: it shows why)
            fall_back = _fall_back_note(e, nm.norm, nm.pre_range_ev)
            if fall_back:
                raise ValueError(fall_back)
            _EDGE_STEP_WARNED.set(None)  # this particle's spectra: their warning is given here, not again below
            measured = None if filled is None else ~np.asarray(filled, bool)[mask]
            npix = normalize(e, mu, e0_ev=e0, measured=measured)
            negative = _negative_step_note(e, mu, npix, measured)
            if negative:
                raise ValueError(negative)
            # the pixels' OD and their pre- and post-edge lines have served: not held through the maps' work (a
            # large particle's 40k pixels at 143 energies: 66 MiB)
            del mu
            npix = dataclasses.replace(npix, pre_edge=None, post_edge=None)
            if falls:  # its mean falls across E0 beyond its noise, its pixels too noisy to say so one by one
                raise ValueError(_falling_mean_note(e0, mean_step))
            pf = npix.flags.copy()
            for name, method in _EDGE_METHODS:
                if name == "whiteline":
                    continue  # fitted below
                vals, fl, in_gap = edge_energy(
                    e, npix.norm, method=method, e0_ev=e0, window=edge_window, scan_energies_ev=e_all, return_gap=True
                )
                m = np.full(aligned.shape[1:], np.nan, np.float32)
                m[mask] = vals
                edge_maps[name] = m
                n_gap = int(np.count_nonzero(fl & FLAG_GAP))
                if n_gap and name == "e50":
                    # each pixel's own gap: with two gaps in the edge window, one span from the first to the last
                    # counted every pixel at its centre (a second gap 8353.9-8358.7 eV that holds no E50 moved a
                    # particle's mean E50 by +3.67 eV; xanestrack.result.gap_counted)
                    g = np.full((2, *aligned.shape[1:]), np.nan)
                    g[:, mask] = in_gap
                    maps[E50_GAP_MAP] = g
                if n_gap:
                    spans = _gap_spans(e, e_all, e0 + edge_window[0], e0 + edge_window[1])
                    biased = name == "e50" and n_gap > MAX_GAP_SHARE * vals.size
                    notes.append(
                        f"{'E50' if name == 'e50' else 'derivative edge energy'} not measured in {n_gap} of "
                        f"{vals.size} pixels: it falls in a gap of frames left out of the analysis or absent from "
                        f"the scan ({spans} eV), "
                        "across which interpolation is biased"
                        + (
                            "; its mean E50 is not given (the pixels measured are those whose E50 lies outside the "
                            "gap: their mean is biased)"
                            if biased
                            else (
                                "; its mean E50 counts each at the centre of the gap its E50 lies in and its sigma "
                                "holds their E50's spread over it (its width / sqrt(12), times their share of the "
                                "pixels): the pixels measured are those whose E50 lies outside the gap, a choice by "
                                "the value"
                                if name == "e50"
                                else ""
                            )
                        )
                        + why
                    )
                if name == "e50":
                    pf |= fl
            edge_maps["whiteline"], maps["whiteline_height"] = _whiteline_maps(
                e, npix.norm, mask, e0, notes, scan_energies=e_all, why=why
            )
            pix_flags[mask] = pf
            if keep_norm:
                norm = np.full(aligned.shape, np.nan, np.float32)
                full = np.full((e.size, *mask.shape), np.nan, np.float32)
                full[:, mask] = npix.norm
                norm[usable] = full
            if references:
                lo = max(r.energies_ev[0] if hasattr(r, "energies_ev") else -np.inf for r in references.values())
                hi = min(r.energies_ev[-1] if hasattr(r, "energies_ev") else np.inf for r in references.values())
                far = _other_edge_references(references, e0)
                if far and lo <= e0 + lcf_window[0] and e0 + lcf_window[1] <= hi:
                    notes.append(
                        f"{OTHER_EDGE_NOTE} ({', '.join(f'{n} at {v:.0f} eV' for n, v in far.items())}), not this "
                        f"particle's edge at {e0:.0f} eV: no fractions (give references of its edge)"
                    )
                elif lo <= e0 + lcf_window[0] and e0 + lcf_window[1] <= hi:
                    # the references normalised as the particle's spectra are, on its energies and at its E0: fitted
                    # as densely normalised by their provider, the fractions were off by up to -0.028 (60 energies)
                    # and +0.024 (143), 1-2.7 times their sigma, the sign following the grid (references_on_scan)
                    bg = particle_background(e, nm.pre_edge, nm.post_edge, e0)
                    on_scan = references_on_scan(references, e, e0, background=bg)
                    fit_refs, steps = on_scan if on_scan is not None else (references, None)
                    if on_scan is None:
                        notes.append(_references_as_given_note(references, e, e0))
                    lcf = linear_combination_fit(e, npix.norm, fit_refs, e0_ev=e0, window=lcf_window, edge_steps=steps)
                    fr = np.full((len(lcf.names), *aligned.shape[1:]), np.nan, np.float32)
                    fr[:, mask] = lcf.fractions
                    fractions, ref_names = fr, lcf.names
                    pix_flags[mask] |= lcf.flags
                    lcf_residual = np.full(mask.shape, np.nan)
                    lcf_residual[mask] = lcf.residual
                else:
                    short = [
                        f"{name} {r.energies_ev[0]:.0f}-{r.energies_ev[-1]:.0f} eV"
                        for name, r in references.items()
                        if hasattr(r, "energies_ev")
                        and not (r.energies_ev[0] <= e0 + lcf_window[0] and e0 + lcf_window[1] <= r.energies_ev[-1])
                    ]
                    notes.append(
                        f"LCF skipped: the fit needs {e0 + lcf_window[0]:.0f}-{e0 + lcf_window[1]:.0f} eV (edge at "
                        f"{e0:.0f} eV), not covered by {', '.join(short) or 'the references together'}"
                    )
            maps.update(
                _chemistry_maps(
                    e,
                    sub,
                    mask,
                    e0,
                    agreement=None if agreement is None else np.asarray(agreement, float)[usable],
                    uncertainty=uncertainty,
                    references=fit_refs if fractions is not None else None,
                    edge_steps=steps,
                    fractions=fractions,
                    edge_window=edge_window,
                    lcf_window=lcf_window,
                    edge_jump_threshold=edge_jump_threshold,
                    lcf_residual=lcf_residual,
                    notes=notes,
                    background_ring=_background_ring(mask, background_exclude)[:2] if subtract_background else None,
                )
            )
            # no standard error of a value not measured: edge_energy_sigma works out E50 itself, with no gap test
            # (a scan missing its frames across the edge: every E50 NaN, yet sigma 0.06-0.13 eV over 1719 pixels,
            # and the report drew that map)
            _drop_sigma_of_unmeasured(maps, edge_maps["e50"], fractions)
            if "lcf_misfit" in maps and not any(n.startswith(SPARSE_POST_EDGE_NOTE) for n in notes):
                # a region of a phase the references lack, per pixel (not where the post-edge is too sparse to
                # normalise: the misfit is the normalisation's, as for the note above). Not over pixels filled from a
                # patch's rim, nor those the smoothing mixes them into: their spectra are not measured, not a phase
                # (a particle under a probe's NaN patch: 239 of its 249 pixels so flagged were filled, and on an axis
                # 0.5 eV off 85 of their neighbours within 2 px)
                measured = mask
                if filled is not None and np.any(filled):
                    reach = max(1, int(np.ceil(3 * smoothing)))
                    measured = mask & ~ndimage.binary_dilation(np.asarray(filled, bool), iterations=reach)
                region = misfit_region(maps["lcf_misfit"], measured, maps.get("quality_keep"))
                pix_flags[region] |= FLAG_MISFIT
                # a particle the references fail as a whole has its note already (the stress scenes' Ni(OH)2 with
                # the shipped NiO / LiNiO2: every pixel 4-7 x): the region's would say it again
                if region.any() and not any(MISFIT_NOTE in n for n in notes):
                    notes.append(
                        _misfit_region_note(region, maps["lcf_misfit"], edge_maps["e50"], fractions, ref_names, mask)
                    )
            if "e50_sigma_noise" in maps:
                # readout stripes: the pixels of a row share part of their noise, which a mean over them keeps (row
                # stripes of 0.8 % on synth's scene: the mean E50s spread 1.9-2.4 x their stated sigmas)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    sub_mean = np.nanmean(sub, axis=0)
                maps["noise_shared"], shared = _shared_noise_map(
                    aligned[usable], mask, sub_mean, background_exclude, plane=subtract_background
                )
                note = _shared_noise_note(maps, edge_maps["e50"], mask, shared, smoothing)
                if note:
                    notes.append(note)
            few = _few_e50_note(edge_maps["e50"], pix_flags, mask)
            if few and not any("its mean E50 is not given" in n for n in notes):
                notes.append(few + why)
        except ValueError as exc:
            notes.append(f"XANES failed: {exc}{why}")
            for name, _ in _EDGE_METHODS:
                edge_maps.setdefault(name, np.full(aligned.shape[1:], np.nan, np.float32))
    out = dict(
        edge_maps=edge_maps,
        pixel_flags=pix_flags,
        fractions=fractions,
        reference_names=tuple(ref_names),
        e0_ev=e0,
        mean_norm=mean_norm,
        pre_edge=pre_c,
        post_edge=post_c,
        notes=notes,
        maps=maps,
        xanes_frames=usable,
    )
    if keep_norm:
        out["norm"] = norm
    return out
