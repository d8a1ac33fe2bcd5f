"""The run's notes on the chemistry: the references (the user's, the shipped ones, another edge's), the
normalisation's bias on the scan's energies and from frames left out, a coarse edge, two edges in one scan, and
the energy axis's calibration.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import xanes
from ..words import count
from ..xanes import (
    MISFIT_NOTE,
    MISFIT_REGION_NOTE,
    OTHER_EDGE_EV,
    OTHER_EDGE_NOTE,
    find_e0,
)
from .normbias import FRAMES_NOTE_START


def _particles_background(particles, energies) -> float | None:
    """The particles' pre-edge absorbance under their edge step, as a share of it at E0 (the median over the particles
    whose mean spectrum's pre- and post-edge lines are known there): the background
    :func:`xanestrack.chemistry.normbias.normalisation_bias` puts under each reference. None where no particle has
    them."""
    e = np.asarray(energies, float)
    shares = []
    for p in particles:
        pre, post = np.asarray(p.pre_edge, float), np.asarray(p.post_edge, float)
        ok = np.isfinite(pre) & np.isfinite(post)
        if ok.sum() < 2 or not np.isfinite(p.e0_ev):
            continue
        a, b = np.interp(p.e0_ev, e[ok], pre[ok]), np.interp(p.e0_ev, e[ok], post[ok])
        if b - a > 0:
            shares.append(a / (b - a))
    return float(np.clip(np.median(shares), 0.0, 50.0)) if shares else None


#: a user's reference that xanestrack's own normalisation (:func:`xanestrack.xanes.normalize`, at its E0) changes
#: by less than this anywhere is one xanestrack normalised itself (:func:`xanestrack.spectra.prepare_reference`,
#: in the CLI or :func:`_user_references`): measured 2.4e-7 at most on the real Ni and Co references so normalised
#: (xasdatalibrary Ni foil, Ni(OH)2, "Ni2O3", NiS, Co foil; larch's NiO and Ni foil), against 0.028 / 0.024 for the
#: pyxas NiO / LiNiO2 (their provider's normalisation, fitted as given) (:func:`_reference_used_as_given`)
SELF_NORMALISED_TOLERANCE = 1e-4


def _reference_used_as_given(ref, energies) -> bool:
    """Whether the fit uses a user's reference with its values as given, normalised by its provider
    (:func:`xanestrack.spectra.prepare_reference` left it as it was, and it is not xanestrack's own normalisation:
    :data:`SELF_NORMALISED_TOLERANCE`). False for one xanestrack normalised (or would normalise: as measured), and
    for callables and references it cannot judge."""
    from ..spectra import ReferenceSpectrum, prepare_reference
    from ..xanes import find_e0, normalize

    if not isinstance(ref, ReferenceSpectrum) or ref.energies_ev.size < 8:
        return False
    try:
        prepared, _ = prepare_reference(ref, energies)
    except ValueError:
        return False
    if prepared is not ref:  # as measured: the fit gets it normalised as the particles are
        return False
    try:
        again = normalize(ref.energies_ev, ref.mu, e0_ev=find_e0(ref.energies_ev, ref.mu)).norm
    except ValueError:  # too short to normalise, and normalised as given: fitted as it is
        return True
    return float(np.max(np.abs(np.asarray(again, float) - ref.mu))) > SELF_NORMALISED_TOLERANCE


def _normalisation_bias(particles, references, energies, default_references: bool, options) -> tuple[dict | None, str]:
    """``(bias, note)``: eV per reference, the bias of E50 from the normalisation on the scan's energies
    (:func:`xanestrack.chemistry.normbias.normalisation_bias`, with the particles' own pre-edge under the step,
    :func:`_particles_background`), the references whose bias could be measured (None without references or XANES);
    and the run's note on it (:func:`xanestrack.chemistry.normbias.normalisation_bias_note`), over the references'
    biases and those of their mixes (:func:`~xanestrack.chemistry.normbias.mixture_bias`: on synth's 30-energy grid
    the 50:50 mix of the shipped references -0.188 eV, NiO -0.056 and LiNiO2 -0.161 eV), ``""`` where it does not
    matter or there are no particles.

    Each reference is measured against its E50 as the fit uses it: the shipped references and a user's normalised
    by its provider (:func:`_reference_used_as_given`) where their values cross 0.5 (``dense="given"``); a user's
    that xanestrack normalised against the same normalisation on its own energies (``"normalised"``), and a mix
    so where either of its two is. The pyxas NiO / LiNiO2 given with ``--reference`` had all been measured the
    second way: on a 60-energy synth scan NiO -0.29 / LiNiO2 +0.04 eV, spread 0.34 eV, where the same spectra
    shipped read -0.18 / +0.03 eV, 0.21 (its NiO particle measured -0.147 eV from the truth, LiNiO2 -0.003).

    Where no reference measures it (none of the particles' edge, or none reaching the ranges they are normalised
    over), the note says so, with the part the particles' own mean spectra hold and what it is elsewhere
    (:func:`xanestrack.chemistry.normbias.unmeasured_bias_note`): a Mn scan with standards over 6520-6630 eV and a
    Co scan without references were silent, their particles 0.1-0.47 eV off their references' provider's E50."""
    from .normbias import mixture_bias, normalisation_bias, normalisation_bias_note, unmeasured_bias_note

    if len(energies) < options.min_xanes_energies:
        return None, ""
    kw = dict(
        edge_window=options.edge_window,
        background=_particles_background(particles, energies),  # the scene's own pre-edge under its step
    )
    if not references:
        return None, unmeasured_bias_note(energies, particles, **kw)
    given = {k: default_references or _reference_used_as_given(r, energies) for k, r in references.items()}
    raw = {}
    for how in ("given", "normalised"):
        part = {k: r for k, r in references.items() if given[k] == (how == "given")}
        raw.update(normalisation_bias(energies, part, dense=how, **kw) if part else {})
    bias = {k: raw[k] for k in references if k in raw and np.isfinite(raw[k])}  # in the order given
    if not bias:  # not measured: said (run.json's bias stays the references', none)
        return bias, unmeasured_bias_note(energies, particles, references, shipped=default_references, **kw)
    if not particles:
        return bias, ""
    from ..spectra import ReferenceSpectrum

    mixes = {}
    names = [k for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8]
    for a, b in zip(names[:-1], names[1:]):  # as mixture_bias pairs them, each pair as its references are measured
        pair = {a: references[a], b: references[b]}
        mixes.update(mixture_bias(energies, pair, dense="given" if given[a] and given[b] else "normalised", **kw))
    edges = [float(p.e0_ev) for p in particles if np.isfinite(p.e0_ev)]
    return bias, normalisation_bias_note(bias, mixes, edge_ev=float(np.median(edges)) if edges else None)


#: how the run note on the particles whose XANES left out energies that move their mean E50 or fractions begins
#: (:func:`_frames_bias`); "left out" puts it on the console (:data:`CONSOLE_NOTE_WORDS`)
FRAMES_RUN_NOTE_START = "the energies left out of their XANES move the mean E50"


def _frames_bias(particles, references, energies, options) -> tuple[list, str]:
    """``(particles, note)``: each particle with ``e50_normalisation_shift_ev`` measured (how far the energies its
    XANES used, fewer than the scan's, move its E50 against a particle of its chemistry measured on all of them), and
    a note where that is :data:`~xanestrack.chemistry.normbias.FRAMES_SHIFT_FLOOR_EV` or more and
    :data:`~xanestrack.chemistry.normbias.FRAMES_SHIFT_SIGMAS` times its mean E50's sigma, or where its last
    reference's fraction moves by :data:`~xanestrack.chemistry.normbias.FRAMES_FRACTION_FLOOR` or more; the run note
    gathering them, ``""`` where none.

    Where the references describe its normalised mean spectrum (their fit with a free scale,
    :func:`~xanestrack.chemistry.normbias.scale_free_fractions`, leaves
    :data:`~xanestrack.chemistry.normbias.FRAMES_DESCRIBED_RMS` or less), from them mixed at that chemistry
    (:func:`~xanestrack.chemistry.normbias.frames_bias_shift`); else from the particle measured on every energy whose
    spectrum is most like its own (its analysed mean spectrum on the particle's energies,
    :func:`~xanestrack.chemistry.normbias.spectrum_frames_shift`); NaN where neither is there.

    The run's note on the normalisation's bias (:func:`_normalisation_bias`) is of the scan's energies: a particle
    cut by the border in the last 5 of synth's 60 frames was normalised on 5 post-edge energies where the others had
    10, its mean E50 -0.39 eV (16 sigma) off the same particle's measured on all of them, its fractions at the bound
    and said misfit, and nothing said of its E50 (now: -0.41 eV measured, its note and the column). Not applied to
    its mean E50: an estimate from other spectra (within 0.025 eV of the moves of synth's particles, made of the
    references; 0.01-0.10 eV from the stress family's by their neighbours).

    ``references``: those at the particles' edge (:func:`_references_at_particles_edge`); none: every particle NaN.
    A particle whose mean E50 is not given, or that spans two edges, NaN."""
    from types import SimpleNamespace

    from ..result import fractions_withheld, particle_summary
    from .normbias import (
        FRAMES_DESCRIBED_RMS,
        FRAMES_FRACTION_FLOOR,
        FRAMES_SHIFT_FLOOR_EV,
        FRAMES_SHIFT_SIGMAS,
        _e50_given,
        frames_bias_shift,
        scale_free_fractions,
        spectrum_frames_shift,
    )

    e = np.asarray(energies, float)
    nan = float("nan")

    # the sigma of each one's mean E50, as the particles' table gives it (before this column is set)
    def measurable(p):
        used = None if p.xanes_frames is None else np.asarray(p.xanes_frames, bool)
        return used is not None and used.shape == e.shape and not _across_two_edges(p) and _e50_given(p)

    # only where a particle left frames out (a scan whose particles used every frame: each 0, nothing to measure)
    fewer = bool(references) and any(measurable(p) and not np.asarray(p.xanes_frames, bool).all() for p in particles)
    stand_in = SimpleNamespace(particles=particles, peak_ratios=pd.DataFrame(), options=options, energies_ev=e)
    summ = particle_summary(stand_in) if particles and fewer else None
    sigma = dict(zip(summ["particle"], summ["mean_e50_sigma_ev"])) if summ is not None else {}
    background = _particles_background(particles, e) if fewer else None

    # the particles measured on every energy: their analysed mean spectra, for those the references do not describe
    whole = {
        p.particle: (np.asarray(p.pre_edge, float) + np.asarray(p.mean_norm, float) * (p.post_edge - p.pre_edge))
        for p in particles
        if measurable(p) and np.asarray(p.xanes_frames, bool).all()
    }
    norms = {p.particle: np.asarray(p.mean_norm, float) for p in particles if p.particle in whole}
    reads = {}
    out, said = [], []
    for p in particles:
        notes = tuple(n for n in p.notes if not n.startswith(FRAMES_NOTE_START))
        shift, how = nan, None
        if references and measurable(p) and np.asarray(p.xanes_frames, bool).all():
            shift = 0.0
        elif references and measurable(p):
            used = np.asarray(p.xanes_frames, bool)
            shares, rms = scale_free_fractions(e, p.mean_norm, p.e0_ev, references, lcf_window=options.lcf_window)
            described = shares is not None and rms <= FRAMES_DESCRIBED_RMS
            if described:
                fs = frames_bias_shift(
                    e,
                    used,
                    references,
                    fractions=shares,
                    edge_window=options.edge_window,
                    lcf_window=options.lcf_window,
                    background=background,
                )
                if fs is not None:
                    shift, how = fs.e50_ev, dict(shares=shares, fraction=fs.fraction)
            else:
                alike = _most_alike(p, norms, used, e, options.lcf_window)
                if alike:
                    # each of the most alike read on this one's energies (the same frames left out: read once)
                    read = {}
                    for q in alike:
                        key = (q, used.tobytes())
                        if key not in reads:
                            reads[key] = spectrum_frames_shift(e, used, whole[q], edge_window=options.edge_window)
                        read[q] = reads[key]
                    near = alike[0]
                    shift = read[near]
                    fin = [v for v in read.values() if np.isfinite(v)]
                    how = dict(near=near, rms=rms, low=min(fin, default=nan), high=max(fin, default=nan), n=len(fin))
        if how is not None and np.isfinite(shift):
            s = float(sigma.get(p.particle, nan))
            bar = max(FRAMES_SHIFT_FLOOR_EV, FRAMES_SHIFT_SIGMAS * s) if np.isfinite(s) else FRAMES_SHIFT_FLOOR_EV
            moved = abs(shift) >= bar
            fitted = bool(p.fractions is not None and len(p.reference_names) and not fractions_withheld(p))
            # its fractions are fitted to the same spectra: moved as the references predict, and where its E50 moved,
            # a misfit said of it may be the normalisation's (the probe's particle 3 without its last 5 of 60 frames:
            # -0.014 predicted, a misfit region flagged and its mean LiNiO2 fraction +0.25); where the references do
            # not describe it, by as much as its E50 says, not measured
            misfit = moved and any(MISFIT_NOTE in n or n.startswith(MISFIT_REGION_NOTE) for n in p.notes)
            df = how.get("fraction", nan)
            # only where the fit took the references as given: normalised on the particle's own energies
            # (xanes.references_on_scan) they are normalised as its spectra on the same energies, and its fractions do
            # not move with the frames left out (a review: 0.6 NiO + 0.4 LiNiO2 without its last 5 of 60 frames,
            # +0.0001 fitted where this said -0.037)
            as_given = any(n.startswith(xanes.AS_GIVEN_NOTE) for n in p.notes)
            fraction_moved = (
                fitted
                and as_given
                and ((np.isfinite(df) and (abs(df) >= FRAMES_FRACTION_FLOOR or misfit)) or ("near" in how and moved))
            )
            if moved or fraction_moved:
                last = p.reference_names[-1] if fraction_moved else ""
                notes += (_frames_bias_words(shift, how, used, e, s, last, misfit),)
                said.append(
                    f"{p.particle}: {shift:+.2f} eV" + (f", {last} {df:+.3f}" if last and np.isfinite(df) else "")
                )
        out.append(dataclasses.replace(p, e50_normalisation_shift_ev=shift, notes=notes))
    if not said:
        return out, ""
    return out, (
        f"{FRAMES_RUN_NOTE_START} (or the fractions) of {count(len(said), 'particle')} ({'; '.join(said[:12])}"
        + (" ..." if len(said) > 12 else "")
        + ") against particles of their chemistry measured on all the scan's energies: their XANES was normalised on "
        "fewer of them (frames not vouched for, out of the field, under another particle), the post-edge line from "
        "E0 + 100 eV following the EXAFS wiggles their own energies catch. The note on the normalisation's bias on "
        "this scan's energies does not hold for them, and their mean E50s are not comparable with the others' by as "
        "much; each one's note says more (e50_normalisation_shift_ev in figures/uncertainty.csv)"
    )


def particles_grid_bias(particles, references, energies, options, *, shipped: bool = True) -> dict:
    """Particle id -> eV: the normalisation's bias of its mean E50 at its own chemistry on the energies its XANES used
    (:func:`xanestrack.chemistry.normbias.particle_chemistry_bias`), what the series takes away beside its E50
    (:func:`xanestrack.series.process_scan`).

    The run's note quotes the references' biases and their mixes' on the scan's energies (the range of the scan); a
    particle carries its own chemistry's: a 20-energy scan among 143-energy scans read its particles 0.18-0.52 eV low
    against the truth where its references read -0.41 / -0.20 eV (NiO / LiNiO2), each particle by the mix it is. Its
    chemistry is the references' shares in its normalised mean spectrum with a free scale
    (:func:`~xanestrack.chemistry.normbias.scale_free_fractions`, as :func:`_frames_bias` takes it); NaN where the
    references do not describe it (its RMS residual over
    :data:`~xanestrack.chemistry.normbias.FRAMES_DESCRIBED_RMS`: their bias missed the stress family's by up to
    0.16 eV), where it has no mean E50 or spans two edges, and for every particle without references.

    ``references``: those at the particles' edge (:func:`_references_at_particles_edge`); ``shipped``: the shipped
    references (their E50 where their values cross 0.5), else each user's reference measured as
    :func:`_normalisation_bias` measures it.
    """
    from .normbias import _e50_given, particle_chemistry_bias

    nan = float("nan")
    out = {int(p.particle): nan for p in particles}
    if not references or len(energies) < options.min_xanes_energies:
        return out
    e = np.asarray(energies, float)
    given = {k: shipped or _reference_used_as_given(r, e) for k, r in references.items()}
    background = _particles_background(particles, e)
    for p in particles:
        if _across_two_edges(p) or not _e50_given(p) or getattr(p, "mean_norm", None) is None:
            continue
        used = getattr(p, "xanes_frames", None)
        used = None if used is None or np.shape(used) != e.shape else np.asarray(used, bool)
        out[int(p.particle)] = particle_chemistry_bias(
            e,
            used,
            p.mean_norm,
            p.e0_ev,
            references,
            given=given,
            edge_window=options.edge_window,
            lcf_window=options.lcf_window,
            background=background,
        ).bias_ev
    return out


#: A smoothing of the per-pixel XANES (``xanes_smoothing``, px sigma) more than this share of a particle's radius is
#: said: its maps then resolve little inside it, and its mean E50 is that of spectra mixed across it (E50 of a mix is
#: not the mean of E50s: the options probe's core-shell particle moved -0.06 eV, 6 sigma, at 30 px; the default 1 px
#: is a tenth of the smallest radius tracked)
SMOOTHING_RADIUS_SHARE = 0.25


def _smoothing_note(particles, sigma: float) -> str:
    """A run note naming the particles with XANES whose radius is less than ``sigma`` over
    :data:`SMOOTHING_RADIUS_SHARE` (``--xanes-smoothing`` accepted at 30 px with nothing said), else ``""``."""
    if not sigma > 0:
        return ""
    small = []
    for p in particles:
        if not sigma > SMOOTHING_RADIUS_SHARE * 0.5 * getattr(p, "radius", np.inf):
            continue  # (far larger than the smoothing: its size, an outline to draw, is not needed)
        r = getattr(p, "size_radius", np.nan)
        r = r if np.isfinite(r) and r > 0 else getattr(p, "radius", np.nan)
        if getattr(p, "edge_maps", None) and np.isfinite(r) and sigma > SMOOTHING_RADIUS_SHARE * r:
            small.append((int(p.particle), float(r)))
    if not small:
        return ""
    named = ", ".join(f"{pid} (r {r:.0f} px)" for pid, r in small[:8]) + (" ..." if len(small) > 8 else "")
    return (
        f"the per-pixel XANES was smoothed with a Gaussian of {sigma:g} px (sigma), more than a quarter of the radius "
        f"of {count(len(small), 'particle')}: {named}. Their maps resolve little inside them, and each pixel's "
        "spectrum mixes chemistry from across the particle (E50 of a mixed spectrum is not the mean of the E50s: a "
        "core-shell particle's mean E50 moved 0.06 eV, 6 sigma, at 30 px); --xanes-smoothing 1 (the default) or 0 "
        "keeps them"
    )


#: how many of the particles measured on every energy, the most alike first, a particle the references do not describe
#: is read from (:func:`_most_alike`): the most alike gives its move, the others' range is said beside it
MOST_ALIKE = 5


def _most_alike(p, norms: dict, used, energies, lcf_window, most: int = MOST_ALIKE) -> list:
    """Up to ``most`` particles of ``norms`` (id -> normalised mean spectrum over every energy), those whose spectrum
    is most like particle ``p``'s first: the least RMS difference over its fit window on the energies ``used``, each
    scaled to it (its own normalisation, on fewer energies, sets another step); ``p`` itself left out."""
    e = np.asarray(energies, float)
    m = np.asarray(p.mean_norm, float)
    w = used & np.isfinite(m) & (e >= p.e0_ev + lcf_window[0]) & (e <= p.e0_ev + lcf_window[1])
    mm = float(m[w] @ m[w])
    if w.sum() < 2 or mm <= 0:
        return []
    far = {}
    for q, n in norms.items():
        if q == p.particle or not np.isfinite(n[w]).all():
            continue
        far[q] = float(np.sqrt(np.mean((n[w] - float(m[w] @ n[w]) / mm * m[w]) ** 2)))
    return sorted(far, key=far.get)[:most]


def _frames_bias_words(shift: float, how: dict, used, energies, sigma: float, fraction_of: str, misfit: bool) -> str:
    """A particle's note on the energies its XANES used (:func:`_frames_bias`): ``shift`` (eV) and ``how`` it was
    measured (``shares``, ``fraction``: from the references at its chemistry; ``near``, ``rms``, ``low``, ``high``,
    ``n``: from the particle most like it measured on every energy); ``fraction_of`` the reference whose fraction to
    say moved (``""``: not said); ``misfit``: a misfit is said of its spectra, which may come of it."""
    from ..xanes import _frame_runs
    from .normbias import FRAMES_FRACTIONS_WORDS

    n, k = used.size, int(used.sum())
    if "shares" in how:
        source = (
            "its chemistry read from its normalised mean spectrum fitted with a free scale: "
            + ", ".join(f"{100 * v:.0f} % {name}" for name, v in how["shares"].items() if v >= 0.005)
            + "; the references so mixed sampled on both sets of energies and normalised as the particles are"
        )
    else:
        source = (
            f"the references do not describe its spectra (their fit leaves {how['rms']:.3f}): read from particle "
            f"{how['near']}, the one most like it measured on every energy, its mean spectrum normalised on this "
            "one's energies and on all"
            + (
                f" (the {how['n']} most like it so read {how['low']:+.2f} to {how['high']:+.2f} eV)"
                if how["n"] > 1
                else ""
            )
        )
    times = f" ({abs(shift) / sigma:.0f} x its sigma)" if np.isfinite(sigma) and sigma > 0 else ""
    df = how.get("fraction", float("nan"))
    return (
        f"{FRAMES_NOTE_START} ({k} of {n}; {_frame_runs(energies, ~used)} left out): its mean E50 is moved by "
        f"{shift:+.2f} eV{times} against a particle of its chemistry measured on all of them ({source}). Its "
        "post-edge line from E0 + 100 eV follows the EXAFS wiggles its own energies catch, so the run's note on the "
        "normalisation's bias on this scan's energies does not hold for it, and its mean E50 is not comparable with "
        "the other particles' by that much (e50_normalisation_shift_ev in uncertainty.csv; an estimate from other "
        "spectra, not applied)"
        + (
            f"; {FRAMES_FRACTIONS_WORDS}"
            + (
                f": its {fraction_of} fraction by {df:+.3f} as the references predict"
                if np.isfinite(df)
                else f", its {fraction_of} fraction fitted to the same spectra (by how much not measured)"
            )
            + (", and the misfit said of its spectra may come of it" if misfit and np.isfinite(df) else "")
            + " (fraction_flags frames_left_out)"
            if fraction_of
            else ""
        )
    )


#: the refusal of a single reference (``{given}``: what was given), by :func:`_user_references` and ``run
#: --reference``: the fit's fractions sum to one, so one reference gave every pixel 1.000 +- 0.000 and every
#: particle an oxidised_fraction of 1.0 (a 60-energy synth scan, NiO, core-shell and gradient particles alike)
ONE_REFERENCE = (
    "{given}: the fractions need two or more references (they sum to one: with one, every fraction is 1); give "
    "another, or none for the edge-energy maps alone (E50, whiteline: they need no reference; a Ni K-edge scan is "
    "then fitted with the shipped NiO and LiNiO2)"
)


def _user_references(references, energies) -> tuple[dict, list]:
    """The references a caller gave, checked before anything is computed, and notes: each
    :class:`~xanestrack.spectra.ReferenceSpectrum` made ready for the fit
    (:func:`~xanestrack.spectra.prepare_reference`: normalised where it is not, refused where its edge is
    not in the scan); a single reference is refused (:data:`ONE_REFERENCE`). Spectra as measured were fitted as given from Python (the CLI prepared them):
    pure NiO particles 0.39 NiO against 0.90 with the normalised references, without a word."""
    from collections.abc import Mapping

    from ..spectra import ReferenceSpectrum, prepare_reference

    if not isinstance(references, Mapping):
        raise TypeError(
            f"references must map names to ReferenceSpectrum (or callables of the energies), got "
            f"{type(references).__name__}"
        )
    if len(references) > 6:
        raise ValueError(f"references: at most 6 references supported, got {len(references)}")
    if len(references) == 1:  # every fraction 1.000 +- 0.000 and oxidised_fraction 1.0, by the sum to one alone
        raise ValueError(ONE_REFERENCE.format(given=f"references: one given ({next(iter(references))})"))
    out, notes = {}, []
    for name, ref in references.items():
        if isinstance(ref, ReferenceSpectrum):
            if not (np.all(np.isfinite(ref.energies_ev)) and np.all(np.isfinite(ref.mu))):
                raise ValueError(f"reference {name}: NaN/inf values")
            try:
                ref, note = prepare_reference(ref, energies)
            except ValueError as exc:
                raise ValueError(f"reference {name}: {exc}") from None
            if note:
                notes.append(note)
        elif not callable(ref):
            raise TypeError(
                f"reference {name}: give a ReferenceSpectrum (xanestrack.spectra.read_spectrum) or a callable of the "
                f"energies, got {type(ref).__name__}"
            )
        out[name] = ref
    order = _oxidised_order_note(out, energies)
    if order:
        notes.append(order)
    notes += _coarse_reference_notes(out, energies)
    return out, notes


#: a reference sampled across its edge (E0 - 20 to E0 + 40 eV) in steps more than this many times the scan's there
#: is noted (:func:`_coarse_reference_notes`)
COARSE_REFERENCE_RATIO = 1.5


def _coarse_reference_notes(references: dict, energies) -> list:
    """Notes on references sampled across the edge more coarsely than the scan: the fit interpolates them linearly
    between their points, and the misfit that leaves was blamed on the references' chemistry or the energy axis
    (Mn references every 3 eV against a scan every 1 eV: fractions right to 0.003-0.006, "do not describe 2 of 4
    particles ... calibrate it")."""
    from ..spectra import ReferenceSpectrum
    from ..xanes import find_e0

    e = np.asarray(energies, float)
    out = []
    for name, ref in references.items():
        if not isinstance(ref, ReferenceSpectrum) or ref.energies_ev.size < 8:
            continue
        try:
            e0 = find_e0(ref.energies_ev, ref.mu)
        except ValueError:
            continue
        r_e, s_e = ref.energies_ev, e
        r_step = np.diff(r_e[(r_e >= e0 - 20) & (r_e <= e0 + 40)])
        s_step = np.diff(s_e[(s_e >= e0 - 20) & (s_e <= e0 + 40)])
        if r_step.size < 2 or s_step.size < 2:
            continue
        r, sc = float(np.median(r_step)), float(np.median(s_step))
        if r > COARSE_REFERENCE_RATIO * sc:
            out.append(
                f"reference {name} is sampled every {r:.2g} eV across its edge, the scan every {sc:.2g} eV: the fit "
                "takes it linearly between its points there, and a note that the references do not describe a "
                "particle may come of that alone; give references sampled as finely as the scan"
            )
    return out


#: the share of its edge step where a reference's edge is placed (its first crossing) to tell its oxidation state
#: from the others' (:func:`_oxidised_order_note`). Measured on the real references of ../shared/data (SOURCES.md),
#: the first crossing of 0.2 / 0.3 / 0.5: Ni foil (larch) 8333.4 / 8334.8 / 8341.1 eV, Ni metal (xasdatalibrary)
#: 8331.9 / 8333.2 / 8339.5, NiO (pyxas) 8337.3 / 8338.2 / 8340.1, LiNiO2 (pyxas) 8338.7 / 8339.6 / 8341.9; MnO
#: 6542.2 / 6543.0 / 6544.0, Mn3O4 6542.8 / 6544.4 / 6546.1, Mn2O3 6546.6 / 6547.7 / 6549.7, MnO2 6542.3 / 6550.0 /
#: 6551.7 (the Mn files span 6520-6630 eV only: normalised by a pre-edge line to 6532 eV and the mean from 6590 eV).
#: At 0.5 (E50) the metal's shoulder and slow rise put the foil above NiO (the note told the user to give the metal
#: last); at 0.2 MnO2's pre-edge peak put it below Mn2O3, and so did the derivative's maximum (E0: 6551.9 against
#: 6552.8 eV). At 0.3 each set is in the order of its oxidation state
ORDER_EDGE_LEVEL = 0.3


def _oxidised_order_note(references: dict, energies) -> str:
    """The note where the last reference, whose fraction is the particles' ``oxidised_fraction`` (their table
    ``figures/uncertainty.csv``, ``series.csv``, the series report), has not the highest edge: references given as LiNiO2 then NiO made every
    particle's "oxidised" fraction its NiO fraction (0.70 became 0.30), without a word. Empty otherwise.

    The edge is where the reference first reaches :data:`ORDER_EDGE_LEVEL` of its step (E50 put a Ni foil's
    edge above NiO's, and the note asked for the metal last)."""
    if len(references) < 2:
        return ""
    e = np.asarray(energies, float)
    grid = np.arange(e.min(), e.max(), 0.05)
    edge = {}
    for name, ref in references.items():
        try:
            mu = np.asarray(ref(grid), float)
        except Exception:  # a callable that cannot be evaluated off the scan's energies: not judged
            return ""
        up = np.flatnonzero((mu[:-1] < ORDER_EDGE_LEVEL) & (mu[1:] >= ORDER_EDGE_LEVEL))
        if not up.size:
            return ""
        edge[name] = float(grid[up[0] + 1])
    last = list(references)[-1]
    top = max(edge, key=edge.get)
    if edge[top] - edge[last] <= 0.1:
        return ""
    return (
        f"oxidised_fraction (the particles' table figures/uncertainty.csv, series.csv) is the fraction of the last "
        f"reference given, {last} "
        f"(its edge, where it first reaches {ORDER_EDGE_LEVEL:g} of its step, at {edge[last]:.1f} eV), but {top}'s "
        f"edge lies higher ({edge[top]:.1f} eV): give the references in the order of their oxidation state, the most "
        "oxidised last"
    )


#: eV: the scan's step where the edge crosses half its height beyond which its edge energies are said to be
#: biased. The default scene's pixel spectra (noise-free, every pixel's E50 against the truth), its energies
#: taken every k-th: 0.5-2.5 eV apart there -0.13 to +0.11 eV; 3-5 eV apart -0.75 to +0.17 eV (the linear
#: crossing across the edge's curvature). With the post-edge parabola of releases before (a line now:
#: :func:`xanestrack.xanes.auto_post_order`), 1.5 eV apart was already -0.65 to +0.06 eV.
COARSE_EDGE_STEP_EV = 2.5
#: (step eV, lowest, highest bias eV): the E50 of noise-free mixtures of the shipped NiO and LiNiO2 (fractions
#: 0-1 by 0.1) sampled on uniform grids of that step over 8200-8680 eV (10 grid phases each), normalised and
#: measured as the particles are, against their densely computed E50. The bias grows with the step, mostly low
#: (medians -0.04 / -0.22 / -0.62 / -1.00 / -1.50 eV at 2.5 / 5 / 8 / 10 / 12 eV); at 15 eV the edge window
#: holds one energy. :func:`_coarse_edge_note` quotes it at the scan's step (interpolated), where no references of
#: the particles' edge measure the bias for the run and the particles' edges lie at the Ni K-edge only (within
#: :data:`TWO_EDGES_EV` of :data:`NI_REFERENCE_EDGE_EV`): MnO / Mn2O3 mixtures sampled so read two-sided, up to
#: +0.69 eV at 5 eV apart, and a Co foil and that foil +4 eV -0.46 eV at 2.5 eV apart
COARSE_EDGE_BIAS_EV = (
    (2.5, -0.16, 0.10),
    (3.0, -0.21, 0.10),
    (4.0, -0.32, 0.08),
    (5.0, -0.49, 0.06),
    (6.0, -0.68, 0.08),
    (8.0, -1.41, 0.08),
    (10.0, -2.24, 0.13),
    (12.0, -3.20, 0.56),
)


#: eV: with references of the particles' edge, the coarse-step note is given where their mixtures' E50 sampled at
#: the scan's step is biased this much or more (:func:`_coarse_edge_range`), so that a sharp edge's note waits for a
#: coarser step than a metal-like edge's. Just above the shipped pair's at 2.5 eV apart (-0.166 to +0.099 eV; 3 eV
#: -0.212, synth's 30-energy grid, 2.45 eV there, -0.163), so that Ni scans keep :data:`COARSE_EDGE_STEP_EV`;
#: a Co foil pair reaches -0.46 eV and MnO / Mn2O3 +0.32 eV at 2.5 eV apart
COARSE_EDGE_NOTE_EV = 0.17
#: eV: steps up to this are not measured (:func:`_coarse_edge_range`, 0.1-0.3 s a run): the shipped pair read within
#: 0.11 eV on synth's 143- and 60-energy grids (0.5 and 1.2 eV apart at their edge)
COARSE_EDGE_MEASURED_FROM_EV = 1.0
#: the grid offsets (a share of the step each) and shares of the second reference of each adjacent pair that
#: :func:`_coarse_edge_range` samples, as :data:`COARSE_EDGE_BIAS_EV` was measured
COARSE_EDGE_PHASES = tuple(np.arange(10) / 10)
COARSE_EDGE_FRACTIONS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _coarse_edge_range(references, energies, step: float, *, shipped: bool, background, edge_window):
    """``(lowest, highest)`` eV: the bias of E50 of the mixtures of each adjacent pair of ``references``
    (:data:`COARSE_EDGE_FRACTIONS`, :func:`xanestrack.chemistry.normbias.mixture_bias`, measured as
    :func:`_normalisation_bias` measures them) sampled on uniform grids ``step`` eV apart over the scan's span, at
    :data:`COARSE_EDGE_PHASES` offsets; NaNs where none could be measured (fewer than two spectra)."""
    from .normbias import mixture_bias

    e = np.asarray(energies, float)
    given = shipped or all(_reference_used_as_given(r, e) for r in references.values())
    vals = []
    for ph in COARSE_EDGE_PHASES:
        grid = np.arange(e[0] + ph * step, e[-1] + 1e-9, step)
        b = mixture_bias(
            grid,
            references,
            dense="given" if given else "normalised",
            edge_window=edge_window,
            fractions=COARSE_EDGE_FRACTIONS,
            background=background,
        )
        vals += [v for v in b.values() if np.isfinite(v)]
    return (min(vals), max(vals)) if vals else (float("nan"), float("nan"))


def _coarse_edge_bias(step: float) -> str:
    """The words of :func:`_coarse_edge_note` on the bias at ``step`` eV (:data:`COARSE_EDGE_BIAS_EV`)."""
    s, lo, hi = (np.asarray(c, float) for c in zip(*COARSE_EDGE_BIAS_EV))
    if step > s[-1]:
        return (
            f"more than the {lo[-1]:+.2f} to {hi[-1]:+.2f} eV of noise-free reference mixtures sampled {s[-1]:g} eV "
            "apart"
        )
    return (
        f"noise-free reference mixtures sampled {step:.1f} eV apart: {np.interp(step, s, lo):+.2f} to "
        f"{np.interp(step, s, hi):+.2f} eV; 2.5 eV apart, within {max(-lo[0], hi[0]):.2f} eV"
    )


def _coarse_edge_note(particles, energies, references=None, *, shipped: bool = False, edge_window=(-15.0, 20.0)) -> str:
    """A note where the scan's energies are far apart where the particles' edges cross half their step:
    E50 is interpolated linearly between frames, and across a coarse step the edge's curvature biases it, by an
    amount and in a direction the edge's shape sets. With ``references`` of the particles' edge
    (:func:`_references_at_particles_edge`) the bias is measured for this run (:func:`_coarse_edge_range`) and said
    where it reaches :data:`COARSE_EDGE_NOTE_EV`; without, where the step is over :data:`COARSE_EDGE_STEP_EV`,
    with the Ni table (:data:`COARSE_EDGE_BIAS_EV`) at the Ni K-edge and no numbers elsewhere (a Mn scan 5 eV
    apart was told "mostly low, -0.49 to +0.06 eV"; its particles read 0.16-0.35 eV high). Empty where the step
    there is fine."""
    e50 = []
    for p in particles:
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            e50.append(float(np.nanmedian(m)))
    e = np.asarray(energies, float)
    i = np.searchsorted(e, e50)
    inside = (i > 0) & (i < e.size)
    if not inside.any():
        return ""
    step = float(np.max(e[i[inside]] - e[i[inside] - 1]))
    e50 = np.asarray(e50)[inside]
    start = (
        f"the scan's energies are up to {step:.1f} eV apart where the particles' edges cross half their step "
        f"({min(e50):.1f}-{max(e50):.1f} eV): edge energies (E50) are interpolated between frames that far apart "
    )
    end = ": compare them between scans of one energy grid only"
    from ..spectra import ReferenceSpectrum

    pair = {k: r for k, r in (references or {}).items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8}
    if len(pair) >= 2 and step > COARSE_EDGE_MEASURED_FROM_EV:
        lo, hi = _coarse_edge_range(
            pair,
            e,
            step,
            shipped=shipped,
            background=_particles_background(particles, e),
            edge_window=edge_window,
        )
        if np.isfinite(lo):
            if max(-lo, hi) < COARSE_EDGE_NOTE_EV:
                return ""
            return (
                start + f"and are biased by {lo:+.2f} to {hi:+.2f} eV (noise-free mixtures of the references "
                f"{', '.join(pair)} sampled {step:.1f} eV apart at {len(COARSE_EDGE_PHASES)} offsets, normalised and "
                "measured as the particles are, against their densely measured E50)" + end
            )
    if step <= COARSE_EDGE_STEP_EV:
        return ""
    if abs(float(np.median(e50)) - NI_REFERENCE_EDGE_EV) <= TWO_EDGES_EV:
        return start + f"and are biased, mostly low ({_coarse_edge_bias(step)})" + end
    at, lo, hi = (np.asarray(c, float) for c in zip(*COARSE_EDGE_BIAS_EV))
    ni = (
        f"more than {lo[-1]:+.2f} to {hi[-1]:+.2f} eV"
        if step > at[-1]
        else f"{np.interp(step, at, lo):+.2f} to {np.interp(step, at, hi):+.2f} eV"
    )
    return (
        start + "and are biased by an amount and in a direction the edge's shape sets, not measured here: no "
        "references of this edge (give them with --reference NAME=FILE for its numbers; at the Ni K-edge noise-free "
        f"NiO / LiNiO2 mixtures sampled so read {ni}, other edges' shapes otherwise, higher or lower)" + end
    )


#: eV: particles whose E0s (:func:`xanestrack.xanes.find_e0`, the largest rise of each one's mean spectrum) are
#: more than this apart are measured at two absorption edges (a scan over the Co K and Ni K edges of Co-rich
#: particles: one particle's E0 8343 eV, three at 7709 eV; one edge's E0s vary by a few eV)
TWO_EDGES_EV = 100.0
#: a step of a particle's mean normalised spectrum, more than :data:`SECOND_EDGE_FROM_EV` from its E0, of more than
#: this share of its edge step is another edge (:func:`_second_edge`). One edge (the probe's default, 143-energy,
#: 320-energy, uniform 5 eV, 0.5/10 eV, Mn and Ni-only Co+Ni scans, 40 particles): at most 0.01; a Co K step 0.15 /
#: 1 / 3 times the Ni K step: 0.08-0.18 / 0.54-1.14 / 0.28-1.65
SECOND_EDGE_STEP = 0.05
SECOND_EDGE_FROM_EV = 200.0
#: energies at least on each side of that step, 10-60 eV from it ...
SECOND_EDGE_MIN_ENERGIES = 2
#: ... one on a side where the scan steps by this much (eV) or more (the median step within 70 eV of it there)
SECOND_EDGE_COARSE_EV = 25.0


def _second_edge(e, norm, e0: float) -> float:
    """The energy (eV) of another edge in a particle's mean normalised spectrum ``norm`` at the energies ``e``: the
    largest rise (:func:`xanestrack.xanes.find_e0`) among the energies more than :data:`SECOND_EDGE_FROM_EV` below or
    above its E0 ``e0`` whose step (the mean 10-60 eV above it less the mean 10-60 eV below, each over
    :data:`SECOND_EDGE_MIN_ENERGIES` energies or more, one on a grid as coarse as :data:`SECOND_EDGE_COARSE_EV`) is
    more than :data:`SECOND_EDGE_STEP`; NaN where there is none (or too few energies, 8, to look)."""
    e, norm = np.asarray(e, float), np.asarray(norm, float)
    best, where = SECOND_EDGE_STEP, float("nan")
    for part in (e < e0 - SECOND_EDGE_FROM_EV, e > e0 + SECOND_EDGE_FROM_EV):
        ok = part & np.isfinite(norm)
        if ok.sum() < 8:
            continue
        ec = find_e0(e[ok], norm[ok])
        hi = ok & (e > ec + 10.0) & (e < ec + 60.0)
        lo = ok & (e < ec - 10.0) & (e > ec - 60.0)
        # a side of one energy is one frame's noise where the grid holds more there: the last frame of a stress scene
        # at 600 counts (every 10 eV) stood 0.056 above the five before it, the run took the scan for two edges and
        # withheld every particle's E50; a grid stepping 25 eV or more there holds no more (a Co region every 30-50
        # eV: its step on one energy a side is found)
        need = []
        for side in (ok & (e >= ec) & (e <= ec + 70.0), ok & (e <= ec) & (e >= ec - 70.0)):
            step = float(np.median(np.diff(e[side]))) if side.sum() >= 2 else np.inf
            need.append(1 if step >= SECOND_EDGE_COARSE_EV else SECOND_EDGE_MIN_ENERGIES)
        if hi.sum() >= need[0] and lo.sum() >= need[1]:
            step = abs(float(norm[hi].mean() - norm[lo].mean()))
            if step > best:
                best, where = step, float(ec)
    return where


def _two_edges(particles, energies) -> tuple[list, str]:
    """``(particles, note)``: where the particles' E0s lie more than :data:`TWO_EDGES_EV` apart, or a particle's mean
    spectrum has another step (:func:`_second_edge`), a run note naming the edges and the particles measured at
    each; the particles whose normalisation (from E0 + PRE_EDGE_RANGE[0] to the scan's end) spans another edge's
    step are given without edge energies and fractions (NaN maps, and a note), so that no table compares edges.

    A scan over the Co K and Ni K edges of Co-rich particles (Co step 3 times the Ni one): one particle's mean E50
    8340.5 eV (Ni), three 7715.8-7716.0 eV (Co: their post-edge line fitted across the Ni edge), in one table, and
    "resolved" differences of 624.7 eV between them. Those measured at the lower edge are withheld: their post-edge
    spans the upper edge's step; those at the upper edge keep theirs (their pre-edge lies 150-30 eV below it)."""
    from ..xanes import PRE_EDGE_RANGE

    e = np.asarray(energies, float)
    e0 = {p.particle: float(p.e0_ev) for p in particles if np.isfinite(p.e0_ev)}
    second = {}
    for p in particles:
        if p.particle in e0 and getattr(p, "mean_norm", None) is not None:
            where = _second_edge(e, p.mean_norm, e0[p.particle])
            if np.isfinite(where):
                second[p.particle] = where
    if len(e0) < 2 and not second:
        return particles, ""
    at = np.array(sorted([*e0.values(), *second.values()]))
    starts = np.r_[0, np.flatnonzero(np.diff(at) > TWO_EDGES_EV) + 1]
    if starts.size < 2:
        return particles, ""
    groups = np.split(at, starts[1:])
    edges = [float(np.median(g)) for g in groups]
    edge_of = {pid: int(np.argmin([abs(v - x) for x in edges])) for pid, v in e0.items()}

    def ids(pids):
        return ", ".join(map(str, sorted(pids)))

    parts = []
    for k, x in enumerate(edges):
        own = [pid for pid, j in edge_of.items() if j == k]
        seen = [pid for pid, v in second.items() if abs(v - x) <= TWO_EDGES_EV]
        words = [f"E0 of particle{'s' if len(own) > 1 else ''} {ids(own)}"] if own else []
        if seen:
            words.append(f"a second step in the spectra of particle{'s' if len(seen) > 1 else ''} {ids(seen)}")
        parts.append(f"near {x:.0f} eV ({'; '.join(words)})")
    withheld, out = [], []
    for p in particles:
        others = [x for k, x in enumerate(edges) if p.particle in edge_of and k != edge_of[p.particle]]
        if p.particle in e0 and any(x > e0[p.particle] + PRE_EDGE_RANGE[0] for x in others):
            withheld.append(p.particle)
            nan_maps = {k: np.full_like(np.asarray(v, np.float32), np.nan) for k, v in p.edge_maps.items()}
            fr = None if p.fractions is None else np.full_like(np.asarray(p.fractions, np.float32), np.nan)
            maps = {
                k: np.full_like(np.asarray(v, np.float32), np.nan) if k.startswith(("e50", "whiteline")) else v
                for k, v in p.maps.items()
            }
            note = (
                f"no edge energies nor fractions: its spectrum is normalised at its edge near {e0[p.particle]:.0f} eV "
                f"from {e0[p.particle] + PRE_EDGE_RANGE[0]:.0f} eV to the scan's end, across another absorption "
                f"edge's step near {', '.join(f'{x:.0f}' for x in others)} eV (the run's note on two edges)"
            )
            p = dataclasses.replace(p, edge_maps=nan_maps, fractions=fr, maps=maps, notes=tuple(p.notes) + (note,))
        out.append(p)
    text = (
        f"the scan spans {len(edges)} absorption edges, {' and '.join(parts)}: each particle's edge energies and "
        "fractions are measured at the edge its mean spectrum rises most at, which hangs on its composition and "
        "thickness, and one edge's are not compared with another's"
    )
    if withheld:
        text += (
            f"; particle{'s' if len(withheld) > 1 else ''} {ids(withheld)} "
            f"{'have' if len(withheld) > 1 else 'has'} none (normalised across another edge's step)"
        )
    text += "; give each edge's frames as a scan of their own"
    return out, text


#: eV. The shipped Ni references (NiO, LiNiO2: half-step energies 8340.0 / 8341.8 eV) are fitted
#: by default to scans whose energies span this
NI_REFERENCE_EDGE_EV = 8340.0


#: eV: the calibration error the note on an uncalibrated axis quotes the fractions' change for
#: (:func:`_uncalibrated_note`; a monochromator is off by 0.5-3 eV between beamtimes)
CALIBRATION_STEP_EV = 0.5
#: how the run note on fractions fitted on an uncalibrated axis begins (with the shipped references or a user's)
UNCALIBRATED_NOTE = "the oxidised fractions are fitted on an energy axis not calibrated"
#: a particle's mean spectrum fitted with a fraction within this of 0 (another's of 1) sits at the fit's bounds:
#: left out of :func:`_uncalibrated_note`'s change per 0.5 eV (0 there: the axis 3-15 eV off read "0.00")
BOUND_FRACTION = 1e-3
#: eV: the particles' E50 (the median of their medians) further than this outside the references' half-step
#: energies is said in :func:`_uncalibrated_note` (the axis off, or a phase beyond the references). A five-particle
#: default scene: 8340.8 eV, within NiO / LiNiO2's 8340.0-8341.8; its axis 3 eV high / low: 2.0 eV above / 2.2 eV
#: below (every fraction at 0 or 1, "0.00 per 0.5 eV" said before); 15 eV high: 14.0 eV above. Reduced stress-drift
#: and -crowd scenes (Ni(OH)2 and that shifted 2.5 eV: a phase the references do not hold) 1.7 / 1.8 eV above. Synth
#: seed 5 on 8 energies (against the references' E50 on them, 8338.2-8340.2 eV): 8338.6 eV, not said; 3 eV high,
#: 1.3 eV above
UNCALIBRATED_E50_OUTSIDE_EV = 1.0
#: eV: on an axis calibrated from a reference, the particles' E50 further than this outside the references' is said
#: (:func:`_calibrated_e50_note`): the calibration's own check (a reference measured coarsely where its edge rises
#: is refused) has passed, so only what no phase of the references' element explains is taken for a calibration
#: gone wrong. At :data:`UNCALIBRATED_E50_OUTSIDE_EV` a good calibration (stress-drift seed 1 on larch's Ni foil,
#: shifted -0.02 eV; its particles' Ni(OH)2-like phases 8343.4-8344.5 eV, as drawn) was said to be "off by about"
#: 1.8 eV; charged Ni-rich cathodes sit 1-2 eV above LiNiO2. A foil whose derivative's maximum lay on its second
#: rise moved the axis by -12.6 eV
CALIBRATED_E50_OUTSIDE_EV = 4.0


def _references_e50_on_scan(references, energies, *, background=None, edge_window=(-15.0, 20.0)) -> dict:
    """``{name: eV}``: each reference's E50 as the particles' are measured on the scan's ``energies`` (sampled
    there, with ``background`` under its step, normalised as a particle's spectrum is: its half-step energy plus
    :func:`xanestrack.chemistry.normbias.normalisation_bias`), where that moves it by
    :data:`~xanestrack.chemistry.normbias.NOTE_BIAS_EV` or more (where the run's note on the normalisation's bias
    speaks); else, and where the scan's energies cannot measure it (NaN there), its half-step energy on its own
    energies (:func:`xanestrack.chemistry.calibration.half_step_energies`; NaN for a callable)."""
    from .calibration import half_step_energies
    from .normbias import NOTE_BIAS_EV, normalisation_bias

    half = half_step_energies(references)
    # "given": against the values the fit uses (a user's reference as prepare_reference made it ready, too), so
    # that half-step + bias is the E50 measured on the scan's energies
    bias = normalisation_bias(energies, references, dense="given", edge_window=edge_window, background=background)
    return {
        k: v + bias[k] if np.isfinite(bias.get(k, np.nan)) and abs(bias[k]) >= NOTE_BIAS_EV else v
        for k, v in half.items()
    }


def _uncalibrated_note(
    particles, energies, references, lcf_window, *, shipped: bool = True, edge_window=(-15.0, 20.0)
) -> str:
    """The run note where the fractions are fitted on an energy axis not calibrated (``shipped``: with the shipped
    references; else with the caller's, which the note asks to be on the scan's own axis).

    The references were measured on another (calibrated) axis; a scan's axis is off by its monochromator's
    offset. A user's references are as sensitive to it (the shipped NiO / LiNiO2 given with ``--reference``: the
    same 0.19 per 0.5 eV on a 60-energy synth scan), unless they were measured on the scan's own axis. A +1 eV offset moved the default scene's oxidised fractions by 0.35-0.40, 7 of its 9 particles with
    no note (the references still describe their spectra, shifted; --known-edge recovered them). The change
    per :data:`CALIBRATION_STEP_EV` is computed from each particle's mean normalised spectrum and the
    references used (:func:`xanestrack.chemistry.calibration.fraction_shift_sensitivity`), not assumed.
    Empty where no particle has fractions.

    The particles' E50 (the median of their medians) is said where it lies more than
    :data:`UNCALIBRATED_E50_OUTSIDE_EV` outside the references' E50 as the scan's energies measure them
    (:func:`_references_e50_on_scan`, ``edge_window`` as the particles'), over the particles whose mean E50 is
    given (:func:`xanestrack.result.e50_withheld`). Against the references' dense half-step energies, 8 energies
    (synth seed 5) read "1.4 eV below ... the axis is off" on an exact axis, the sampling's own -1.66 to -1.91 eV;
    and a particle whose mean E50 was withheld (its E50 in a gap of frames left out: 8351.1 eV, the other's 8341.3)
    made it "4.4 eV above" on an exact axis.
    """
    from ..result import e50_withheld, fractions_withheld
    from ..xanes import linear_combination_fit
    from .calibration import fraction_shift_sensitivity, half_step_energies

    e = np.asarray(energies, float)
    moves, bound, e50, withheld = [], [], [], 0
    for p in particles:
        if p.fractions is None or not len(p.reference_names) or p.xanes_frames is None:
            continue
        norm = np.asarray(p.mean_norm, float)
        use = np.asarray(p.xanes_frames, bool) & np.isfinite(norm)
        try:
            # whether it sits at a bound: fitted as its pixels are, against the references normalised as its
            # spectra (xanes.references_on_scan; as given, a pure NiO particle read 0.023 on 143 energies)
            bg = xanes.particle_background(e[use], np.asarray(p.pre_edge)[use], np.asarray(p.post_edge)[use], p.e0_ev)
            on_scan = xanes.references_on_scan(references, e[use], float(p.e0_ev), background=bg)
            fit_refs, steps = on_scan if on_scan is not None else (references, None)
            fit = linear_combination_fit(
                e[use], norm[use], fit_refs, e0_ev=float(p.e0_ev), window=lcf_window, edge_steps=steps
            )
            s = fraction_shift_sensitivity(
                e[use], norm[use], references, e0_ev=float(p.e0_ev), window=lcf_window, shift_ev=CALIBRATION_STEP_EV
            )
        except ValueError:
            continue
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            if e50_withheld(p):  # the pixels measured are a biased choice: its E50 is not the particle's
                withheld += 1
            else:
                e50.append(float(np.nanmedian(m)))
        if fractions_withheld(p):  # its fractions are not given: not among "the particles fitted"
            continue
        # a fit held at 0 or 1 by its constraints does not move one way, and moves the other: its "0.00 per
        # 0.5 eV" reassured (the axis 3-15 eV off), and "moves them little or not at all" hid that pure NiO on
        # an axis 0.5 eV high fits as 0.20 LiNiO2: the change the other way is said for them
        if np.nanmin(fit.fractions) <= BOUND_FRACTION:
            try:
                s2 = fraction_shift_sensitivity(
                    e[use],
                    norm[use],
                    references,
                    e0_ev=float(p.e0_ev),
                    window=lcf_window,
                    shift_ev=-CALIBRATION_STEP_EV,
                )
            except ValueError:
                s2 = np.full_like(np.asarray(s, float), np.nan)
            bound.append(float(np.nanmax(np.abs([s[-1], s2[-1]]))) if np.isfinite([s[-1], s2[-1]]).any() else np.nan)
        elif np.isfinite(s[-1]):
            moves.append(abs(float(s[-1])))
    if not moves and not bound:
        return ""
    names = list(references)
    half = half_step_energies(references)
    apart = max(half.values()) - min(half.values()) if len(half) > 1 else float("nan")
    text = (
        f"{UNCALIBRATED_NOTE}, with the {'shipped references' if shipped else 'references given'} ({', '.join(names)}"
        + (f", {apart:.1f} eV apart at half step" if np.isfinite(apart) else "")
        + ("): " if shipped else "), unless these were measured on the scan's own axis: ")
    )
    if moves:
        spread = f" ({min(moves):.2f}-{max(moves):.2f} over {len(moves)} particles)" if len(moves) > 1 else ""
        text += f"each {CALIBRATION_STEP_EV:g} eV it is off moves the {names[-1]} fraction by {np.median(moves):.2f}{spread}"
    if bound:
        one_way = [b for b in bound if np.isfinite(b) and b >= 0.01]
        # of the particles fitted, and how many were tracked where they differ: "4 of 4 particles" beside another
        # run note's "4 of 9 particles" (stress-all: 5 of its 9 particles without XANES) read as a contradiction
        n_fit = len(bound) + len(moves)
        of = (
            f"{('all ' if n_fit > 1 else 'the ') if len(bound) == n_fit else ''}{len(bound)}"
            + ("" if len(bound) == n_fit else f" of the {n_fit}")
            + f" particle{'s' if n_fit > 1 else ''} fitted{f' (of {len(particles)} tracked; the others have no fractions)' if n_fit < len(particles) else ''}"
        )
        text += (
            f"{'; ' if moves else ''}the fractions of {of} sit at 0 or 1 "
            f"(the fit's bounds){' (left out of these numbers)' if moves else ''}: an offset one way leaves them "
            "there, which may hide it"
            + (
                f", the other way each {CALIBRATION_STEP_EV:g} eV moves "
                + (f"{len(one_way)} of them" if len(one_way) < len(bound) else "them")
                + f" by {np.median(one_way):.2f}"
                + (f" ({min(one_way):.2f}-{max(one_way):.2f})" if len(one_way) > 1 else "")
                if one_way
                else f"; {CALIBRATION_STEP_EV:g} eV either way leaves them there"
            )
        )
    # the references' E50 as this scan's energies measure them: 8 energies move E50 by -1.66 to -1.91 eV, which
    # the dense half-step energies called an axis offset
    scan = _references_e50_on_scan(
        references, e, background=_particles_background(particles, e), edge_window=edge_window
    )
    lo, hi = min(scan.values(), default=np.nan), max(scan.values(), default=np.nan)
    moved = any(abs(scan[k] - half[k]) > 0 for k in half if np.isfinite(half[k]))
    where = (
        f"({lo:.1f}-{hi:.1f} eV on this scan's energies, sampled and normalised as the particles are; "
        f"{min(half.values()):.1f}-{max(half.values()):.1f} eV measured densely)"
        if moved
        else f"({lo:.1f}-{hi:.1f} eV)"
    )
    left_out = (
        f", over {count(len(e50), 'particle')}: {withheld} whose mean E50 is withheld left out" if withheld else ""
    )
    if e50 and np.isfinite(lo):
        mid = float(np.median(e50))
        off = mid - hi if mid > hi else mid - lo if mid < lo else 0.0
        if abs(off) > OTHER_EDGE_EV:  # not an axis offset (a callable's edge is not judged per particle)
            text += (
                f"; the particles' E50 (median {mid:.1f} eV{left_out}) lie {abs(off):.1f} eV "
                f"{'above' if off > 0 else 'below'} the references' half-step energies {where}: the references are of "
                "another absorption edge"
            )
        elif abs(off) > UNCALIBRATED_E50_OUTSIDE_EV:
            text += (
                f"; the particles' E50 (median {mid:.1f} eV, {min(e50):.1f}-{max(e50):.1f}{left_out}) lie {abs(off):.1f} "
                f"eV {'above' if off > 0 else 'below'} the references' half-step energies {where}: the "
                f"axis is off by about that much, or the particles hold a phase the references do not"
            )
    return text + "; calibrate: run again with --energy-reference FILE or --known-edge PARTICLE=EV"


def _calibrated_e50_note(particles, references, calibration, energies, *, edge_window=(-15.0, 20.0)) -> str:
    """The run note where, on an axis calibrated from a reference (``calibration``: its run.json record), the median
    of the particles' E50s lies more than :data:`CALIBRATED_E50_OUTSIDE_EV` outside the references' half-step
    energies, else "".

    :func:`_uncalibrated_note` says it of an axis not calibrated; a calibration can be as far off: a Ni foil measured
    every 2 eV to 8336 eV had its derivative's maximum on its second rise, the axis shifted by -12.6 eV and every
    E50 12.4-12.6 eV low, with no word but that the references do not describe the particles' spectra. As there,
    over the particles whose mean E50 is given (:func:`xanestrack.result.e50_withheld`), against the references'
    E50 as the scan's ``energies`` measure them (:func:`_references_e50_on_scan`)."""
    from ..result import e50_withheld

    e50 = []
    for p in particles:
        m = p.edge_maps.get("e50") if p.edge_maps else None
        usable = p.fractions is not None and len(p.reference_names) and m is not None and np.isfinite(m).any()
        if usable and not e50_withheld(p):
            e50.append(float(np.nanmedian(m)))
    if not e50:
        return ""
    e = np.asarray(energies, float)
    scan = _references_e50_on_scan(
        references, e, background=_particles_background(particles, e), edge_window=edge_window
    )
    half = {k: v for k, v in scan.items() if np.isfinite(v)}
    if not half:
        return ""
    lo, hi = min(half.values()), max(half.values())
    mid = float(np.median(e50))
    off = mid - hi if mid > hi else mid - lo if mid < lo else 0.0
    # beyond 50 eV (what an energy calibration may shift, cli.MAX_CALIBRATION_SHIFT_EV) the references are of another
    # edge, which other notes say
    if not CALIBRATED_E50_OUTSIDE_EV < abs(off) <= 50.0:
        return ""
    return (
        f"the particles' E50 (median {mid:.1f} eV, {min(e50):.1f}-{max(e50):.1f}) lie {abs(off):.1f} eV "
        f"{'above' if off > 0 else 'below'} the references' half-step energies ({lo:.1f}-{hi:.1f} eV) on the axis "
        f"calibrated from {calibration.get('source') or 'a reference'} (shifted by "
        f"{float(calibration.get('shift_ev', np.nan)):+.2f} eV): the calibration is off by about that much (a "
        "reference measured too coarsely where its edge rises, its derivative's maximum on another feature; a wrong "
        "--reference-e0), or the particles hold a phase the references do not"
    )


#: what the run note of :func:`_other_edge_references_note` says (:func:`redo_xanes` replaces it)
OTHER_EDGE_RUN_NOTE = "are of another absorption edge than the particles'"


#: how the run note on a ``--known-edge`` calibration begins (:func:`_known_edge_note`)
KNOWN_EDGE_NOTE = "the energy axis is calibrated on particle"


def _known_edge_note(calibration: dict, particle, known_ev: float) -> str:
    """The run note on a ``--known-edge`` calibration (``calibration``: its run.json record, as
    :func:`xanestrack.chemistry.calibration.calibrate_from_particle` gives it): the normalisation's bias at the
    particle's chemistry on the scan's energies taken out, in numbers, and what the axis would have been without it;
    or that none could be measured, why, and what that leaves.

    Set to the known E50 itself, the axis took that bias, and the note on the normalisation's bias, which quotes each
    chemistry's against its dense E50, no longer described the result: calibrated on a pure NiO particle (bias -0.18
    eV on synth's 60-energy grid) the axis moved +0.18 eV, NiO read right and LiNiO2 +0.21 eV where that note said
    "NiO -0.17 eV, LiNiO2 +0.02 eV", and the note that the axis is not calibrated was gone."""
    bias = float(calibration.get("normalisation_bias_ev", np.nan))
    shift = float(calibration.get("shift_ev", np.nan))
    measured = float(calibration.get("measured_e0_ev", np.nan))
    head = (
        f"{KNOWN_EDGE_NOTE} {particle} (--known-edge {particle}={known_ev:.3f} eV, its material's E50 measured densely)"
    )
    if np.isfinite(bias):
        shares = calibration.get("bias_fractions") or {}
        chem = ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
        return (
            f"{head}: on this scan's energies a particle of its chemistry ({chem}: its mean spectrum fitted with a free "
            f"scale) reads {bias:+.2f} eV from that (the normalisation's bias, sampled and normalised as the particles "
            f"are), taken out: its mean E50 {measured:.3f} eV set to {known_ev + bias:.3f} eV, the axis shifted by "
            f"{shift:+.3f} eV ({shift - bias:+.3f} eV would have set it to {known_ev:.3f} eV and moved every other "
            f"particle's E50 by {-bias:+.2f} eV). On this axis each particle's E50 is its chemistry's densely measured "
            "E50 plus that chemistry's bias on these energies, as the note on the normalisation's bias quotes it where "
            "it matters"
        )
    why = calibration.get("bias_not_measured") or "not measured"
    return (
        f"{head}: its mean E50 {measured:.3f} eV set to {known_ev:.3f} eV itself, the axis shifted by {shift:+.3f} eV, "
        f"with no normalisation's bias taken out: {why}. On a scan's energies a particle shows its material's dense "
        "E50 plus the normalisation's bias at its chemistry (the shipped Ni references on synth's 60-energy grid: NiO "
        "-0.18, LiNiO2 +0.03 eV), so every particle's E50 on this axis is off by the difference of its chemistry's "
        f"bias and particle {particle}'s: give EV as this scan's energies measure that chemistry, or calibrate with "
        "--energy-reference and a foil"
    )


def _other_edge_references_note(particles, references) -> str:
    """The run note where particles' fits were skipped for references of another absorption edge
    (:data:`~xanestrack.xanes.OTHER_EDGE_NOTE`, :data:`~xanestrack.xanes.OTHER_EDGE_EV`): both edges' energies, and
    that this is not an axis offset. Co references on a Co+Ni scan's Ni particles were fitted at the Ni edge (every
    fraction 0.000, truth 0.13-0.66) and the only word was the uncalibrated-axis note's "620.0 eV above the
    references' half-step energies: the axis is off by about that much"."""
    from ..xanes import _other_edge_references

    skipped = [p for p in particles if any(n.startswith(OTHER_EDGE_NOTE) for n in p.notes)]
    if not skipped:
        return ""
    e0 = [float(p.e0_ev) for p in skipped]
    far = _other_edge_references(references, float(np.median(e0)))
    gap = min((abs(v - np.median(e0)) for v in far.values()), default=float("nan"))
    ids = [p.particle for p in skipped]
    return (
        f"no fractions for {count(len(ids), 'particle')} ({', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}"
        f"): the references {', '.join(f'{n} (edge at {v:.0f} eV)' for n, v in far.items()) or 'given'} "
        f"{OTHER_EDGE_RUN_NOTE} (E0 {min(e0):.0f}-{max(e0):.0f} eV"
        + (f", {gap:.0f} eV away" if np.isfinite(gap) else "")
        + f"), not an axis offset (those are a few eV; over {OTHER_EDGE_EV:.0f} eV is another edge): give references "
        "of the particles' edge with --reference NAME=FILE"
    )


def _no_references_note(energies, particles=None) -> str:
    """The run's note where the shipped references are not fitted: the scan does not cross their edge, or (given
    ``particles``) no particle's edge lies at theirs (:func:`_default_references`)."""
    edges = _particle_edges(particles or [])
    where = (
        f"which this scan ({energies[0]:.1f}-{energies[-1]:.1f} eV) crosses, but no particle's edge lies near "
        f"(E0 and E50 {min(edges):.0f}-{max(edges):.0f} eV; not used for the stray-light, coarse-step or "
        "normalisation-bias numbers either)"
        if edges and energies[0] < NI_REFERENCE_EDGE_EV < energies[-1]
        else f"which this scan ({energies[0]:.1f}-{energies[-1]:.1f} eV) does not cross"
    )
    return (
        f"no linear-combination fit (no oxidised fraction): the shipped reference spectra (NiO, LiNiO2) are of "
        f"the Ni K-edge, their edges near {NI_REFERENCE_EDGE_EV:.0f} eV, {where}; "
        "give the phases of its edge with --reference NAME=FILE (edge energies are measured either way)"
    )


def _default_references(energies, particles=None):
    """The shipped Ni references where the scan crosses their edge (:data:`NI_REFERENCE_EDGE_EV`), else ``{}``;
    given the analysed ``particles``, only where some particle's edge lies at theirs
    (:func:`_references_at_particles_edge`): a Co-only scan over 7650-8450 eV took them by its span alone, and its
    stray-light and normalisation-bias notes quoted them (0.07 / 0.32 eV for 1 % of stray light, where the Co
    particles' own spectra read 0.30 / 0.76 eV), though no particle was fitted with them."""
    from ..spectra import ni_references

    refs = ni_references() if (energies[0] < NI_REFERENCE_EDGE_EV < energies[-1]) else {}
    # narrowed only where some particle has an edge energy to judge by: where none has (every XANES failed, a
    # scan of two or three energies), "no particle's edge lies near" is not known, and the note said the scan
    # does not cross the Ni edge (the real SSRL pair at 8324 / 8354 eV, a map at 8296 / 8341 / 8398 eV)
    if particles is None or not _particle_edges(particles):
        return refs
    return _references_at_particles_edge(refs, particles)


def _particle_edges(particles) -> list:
    """eV: the particles' E0s and mean E50s (those measured), the energies their edges are at."""
    out = []
    for p in particles:
        out += [float(p.e0_ev)] if np.isfinite(p.e0_ev) else []
        m = p.edge_maps.get("e50") if p.edge_maps else None
        if m is not None and np.isfinite(m).any():
            out.append(float(np.nanmedian(m)))
    return out


def _references_at_particles_edge(references, particles) -> dict:
    """The references whose edge (:func:`xanestrack.xanes.find_e0` of their spectrum) lies within
    :data:`TWO_EDGES_EV` of some particle's E0 or mean E50 (:func:`_particle_edges`): those the stray-light,
    coarse-step and normalisation-bias numbers may come from. A callable (no spectrum) is kept; ``{}`` without
    particles' edges."""
    from ..xanes import _other_edge_references

    edges = _particle_edges(particles)
    if not references or not edges:
        return {}
    far = [set(_other_edge_references(references, x)) for x in edges]
    return {k: r for k, r in references.items() if not all(k in f for f in far)}


#: words of the particle note of :func:`_two_edges` on a particle whose edge energies it withholds
TWO_EDGES_WITHHELD = "across another absorption edge's step"


def _across_two_edges(p) -> bool:
    """Whether :func:`_two_edges` withheld a particle's edge energies (normalised across another edge's step)."""
    return any(TWO_EDGES_WITHHELD in n for n in p.notes)
