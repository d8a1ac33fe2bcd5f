"""The edge energy's bias from the normalisation, on the scan's own energies.

E50 (the energy where the normalised spectrum crosses half its step) depends on the normalisation: the
pre-edge line and the post-edge line fitted from E0 + 100 eV (:func:`xanestrack.xanes.normalize`) through
whatever post-edge energies the scan holds. A sparse post-edge catches the EXAFS wiggles where it happens to,
and the line through them sets every edge step. The bias that leaves depends on the chemistry (the wiggles
are the compound's) and on the energy grid. Noise-free, on synth's own grids (:func:`xanestrack.synth.ni_energy_grid`,
against the provider's normalised references): NiO +0.110 / LiNiO2 +0.004 eV at 143 energies, -0.176 / +0.031 eV
at 60, +0.380 / -0.072 eV at 50. A difference between particles of different chemistry is compressed or
stretched by the difference of their biases, which no sigma holds.

:func:`normalisation_bias` measures it for each reference on the scan's energies (well under 0.1 s), and
:func:`mixture_bias` for mixes of them (a mix's bias need not lie between its references');
:func:`normalisation_bias_note` is the run's note where it matters.

Where no reference can measure it (a Mn or Co scan without references; a user's XANES standards spanning 6520-6630 eV,
short of the ranges the particles are normalised over), :func:`unmeasured_bias_note` says so. A particle's mean
spectrum is itself sampled on the scan's energies, so only part of the bias is in it: the linear interpolation of E50
between the two energies across the edge (:func:`own_spectra_bias`, against a smooth curve through the same values).
What the post-edge energies catch of the EXAFS wiggles between them is not in them (a smooth curve through them has no
wiggle there: on synth's 60-energy grid it read NiO's post-edge part +0.003 eV, -0.233 measured from the dense
reference), nor is another normalisation (the probe's Mn and Co scenes: -0.43 to +0.11 eV of the tool's E50 against
their references' provider's came of the normalisation on dense spectra, -0.10 to +0.12 of the sampling). For the
rest the note quotes what the shipped Ni references read on the scan's energies with their E0 placed about the
particles' (:func:`shipped_bias_at_edge`): the size of the bias on such a grid, not this edge's numbers.

That bias is the scan's energies'. A particle whose XANES left out frames (not vouched for, out of the field, under
another particle) is normalised on fewer of them, and its own bias is another: cut by the border in the last 5 of
synth's 60 frames, its mean E50 moved -0.39 eV (16 sigma) against the same particle measured on all of them.
:func:`frames_bias_shift` measures that move for its chemistry (the references mixed at its shares, read with a free
scale by :func:`scale_free_fractions`), :func:`spectrum_frames_shift` from a spectrum measured on every energy where
the references do not describe it; the pipeline puts it in the particles' table (``e50_normalisation_shift_ev``) and
says it where it matters (:data:`FRAMES_SHIFT_FLOOR_EV`, :data:`FRAMES_SHIFT_SIGMAS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the pre-edge absorbance put under each reference's unit edge step before it is normalised, as a share of the
#: step at the reference's E0, falling as E^-3, where the run gives none of its own (``background``: the pipeline
#: gives its particles' median): the synthetic scenes' (a particle's spectrum is never normalised already; the
#: pre-edge line takes most of it away: without it the shipped references' biases on synth's 143-, 60- and
#: 50-energy grids change by 0.004-0.007 eV; a matrix 6.7 times the step: NiO -0.31 / LiNiO2 -0.20 eV measured
#: against -0.18 / +0.03 quoted at 0.25, -0.30 / -0.13 at the scene's 6.7)
BACKGROUND_AT_EDGE = 0.25
#: eV: a reference (or a mix of two) whose E50 on the scan's energies lies this far or more from its densely
#: measured E50 is noted (:func:`normalisation_bias_note`); the shipped NiO is +0.110 eV off on synth's default
#: 143-energy grid, -0.146 on its 40-energy grid, +0.380 eV on its 50-energy grid, and their 50:50 mix -0.188 eV on
#: its 30-energy grid (the particles' mean E50s there 0.12-0.25 eV low, 7-22 sigma: unsaid at 0.2)
NOTE_BIAS_EV = 0.15
#: eV: two references whose biases differ by this or more are noted (differences between particles of their
#: chemistries are compressed or stretched by as much); the shipped NiO and LiNiO2 differ by 0.106 eV on synth's
#: default 143-energy grid, 0.207 eV on its 60-energy grid and 0.452 eV on its 50-energy grid
NOTE_SPREAD_EV = 0.15
#: the words :func:`normalisation_bias_note` begins with
NOTE_START = "the normalisation's bias on this scan's energies"
#: eV: the step of the smooth curve :func:`own_spectra_bias` places a particle's E50 on (a hundredth of synth's finest
#: step across the edge, 0.5 eV)
DENSE_STEP_EV = 0.005
#: the fewest energies a particle's mean spectrum is measured on by :func:`own_spectra_bias` (as
#: :func:`normalisation_bias` asks of a reference)
MIN_OWN_ENERGIES = 8
#: eV: where :func:`unmeasured_bias_note` places the shipped Ni references' E0 about the particles' on the scan's
#: energies (:func:`shipped_bias_at_edge`): their bias swings with where the energies fall on the spectrum (on the
#: probe's Co grid NiO +0.28 eV with its E0 at 7712 eV, -0.20 eV at 7720 eV), and the chemistries of one edge spread
#: their E0s over a few eV
PLACEMENTS_EV = tuple(float(d) for d in np.arange(-4.0, 4.5, 1.0))
#: what the note quotes where neither the references nor the shipped Ni references on the scan's energies measure the
#: bias: the shipped NiO / LiNiO2 on synth's grids (:func:`normalisation_bias`, ``dense="given"``)
SYNTH_GRID_BIAS = "+0.11 / +0.004 eV at 143 energies, -0.18 / +0.03 eV at 60 and +0.38 / -0.07 eV at 50"


def normalisation_bias(
    energies_ev, references: dict, *, dense: str = "given", edge_window=(-15.0, 20.0), background=None
) -> dict[str, float]:
    """Each reference's E50 as the pipeline measures it on the scan's energies, less its dense E50.

    Each reference (normalised: pre-edge 0, edge step 1), with :data:`BACKGROUND_AT_EDGE` added, is sampled on
    ``energies_ev`` (those within its own energies) and measured as a particle's spectrum is: E0 by
    :func:`~xanestrack.xanes.find_e0`, normalised by :func:`~xanestrack.xanes.normalize` (pre-edge line,
    post-edge line from E0 + 100 eV), E50 by :func:`~xanestrack.xanes.edge_energy`.

    Parameters
    ----------
    energies_ev : ndarray (n,)
        The scan's energies, increasing.
    references : dict of name -> ReferenceSpectrum
        As the linear-combination fit uses them (normalised; the shipped Ni references, or a user's as
        :func:`xanestrack.spectra.prepare_reference` made them ready). Other callables have no energies of
        their own to measure a dense E50 on: left out.
    dense : {"given", "normalised"}
        How the dense E50 each is compared with is measured, on the reference's own energies: ``"given"``, where
        its values cross 0.5 (the provider's normalisation: the shipped references, and the truth of
        :mod:`xanestrack.synth`, :func:`~xanestrack.synth.edge_energy_of_fraction`); ``"normalised"``, by the same
        normalisation as on the scan's energies (a user's reference: what its sampling alone does).
    edge_window : (float, float)
        eV relative to E0: where E50 is searched (the pipeline's ``edge_window``).
    background : float, optional
        The pre-edge absorbance under the particles' edge step, as a share of it at E0 (default
        :data:`BACKGROUND_AT_EDGE`). A user's reference (``"normalised"``) is measured densely over the scan's
        range of energies only.

    Returns
    -------
    dict of name -> float
        eV, the bias of each reference (positive: the scan's E50 lies higher); NaN where either E50 could not be
        measured (the scan's energies do not reach the reference's pre-edge or post-edge range, or its edge), or
        where its E50 on the scan's energies falls in a hole in them (an interval wider than
        :data:`~xanestrack.xanes.MAX_GAP_RATIO` times the steps on either side: the pipeline measures no E50
        there either).

    Raises
    ------
    ValueError
        If ``dense`` is not one of the two.

    Notes
    -----
    The bias is the normalisation's and the linear interpolation's across the edge; noise does not enter. It is a
    property of the energy grid and the chemistry, the same for every particle of that chemistry: particles' E50s
    are shifted by their chemistry's bias. A mix's bias need not lie between its references' (:func:`mixture_bias`):
    on synth's 30-energy grid NiO -0.056 / LiNiO2 -0.161 eV, their mixes -0.142 / -0.188 / -0.181 eV at
    f = 0.25 / 0.5 / 0.75.
    """
    from ..spectra import ReferenceSpectrum

    if dense not in ("given", "normalised"):
        raise ValueError(f"dense must be 'given' or 'normalised', got {dense!r}")
    e = np.asarray(energies_ev, float)
    bg = BACKGROUND_AT_EDGE if background is None or not np.isfinite(background) else float(background)
    out = {}
    for name, ref in references.items():
        if not isinstance(ref, ReferenceSpectrum) or ref.energies_ev.size < 8:
            continue
        try:
            e0_dense, truth = _dense_e50(ref, e, dense, bg, edge_window)
            seen = _as_particles(e, ref, e0_dense, bg, edge_window, e)[0]
        except ValueError:  # too few energies for a pre-edge, post-edge or edge window
            out[name] = float("nan")
            continue
        out[name] = float(seen - truth)
    return out


def _dense_e50(ref, scan_energies_ev, dense: str, background: float, edge_window) -> tuple[float, float]:
    """``(e0, e50)`` of reference ``ref`` on its own energies (:func:`normalisation_bias`'s ``dense``: where its
    given values cross 0.5, or normalised as the particles are, then over the scan's range only). Raises ValueError as
    :func:`~xanestrack.xanes.find_e0` and :func:`~xanestrack.xanes.edge_energy` do."""
    from ..xanes import edge_energy, find_e0, normalize

    r_e, r_mu = ref.energies_ev, ref.mu
    if dense == "normalised":
        # over the scan's range only: the post-edge line of a reference measured to 9570 eV is another than over the
        # scan's (a 0.5-eV grid to 9000 eV read larch's Ni foil -0.317 eV "biased", cut: -0.02 eV)
        e = np.asarray(scan_energies_ev, float)
        inside = (r_e >= e[0]) & (r_e <= e[-1])
        if inside.sum() >= 8:
            r_e, r_mu = r_e[inside], r_mu[inside]
    e0_dense = find_e0(r_e, r_mu)
    if dense == "given":
        return e0_dense, float(edge_energy(r_e, r_mu[:, None], e0_ev=e0_dense, window=edge_window)[0][0])
    nm = normalize(r_e, r_mu + background * (r_e / e0_dense) ** -3, e0_ev=e0_dense)
    return e0_dense, float(edge_energy(r_e, nm.norm[:, None], e0_ev=e0_dense, window=edge_window)[0][0])


def chemistry_bias(
    energies_ev,
    references: dict,
    shares: dict,
    *,
    used=None,
    dense: str = "given",
    edge_window=(-15.0, 20.0),
    background=None,
) -> float:
    """eV: the normalisation's bias of one chemistry's E50 (:func:`normalisation_bias`), the references mixed at
    ``shares``, on the energies a particle's XANES used.

    A particle's mean E50 carries the bias of its own chemistry on its own energies, not a reference's: on synth's
    50-energy grid NiO +0.380 / LiNiO2 -0.072 eV, their 50:50 mix +0.119, on its 12-energy grid +0.095 / -0.572 /
    -0.186. Two scans on other grids differ by the difference of those biases (a 20-energy scan among 143-energy
    scans read each particle's E50 0.18-0.52 eV low, 9-19 sigma), and one particle whose chemistry changes along a
    series on one grid moves through them (on the 50-energy grid a charge of +0.82 eV read +0.62):
    :func:`xanestrack.series.process_scan` gives each particle's, and the series takes it away beside its E50.

    Parameters
    ----------
    energies_ev : ndarray (n,)
        The scan's energies, increasing.
    references : dict of name -> ReferenceSpectrum
        As :func:`normalisation_bias` (those without energies of their own cannot be mixed).
    shares : dict of str -> float
        Each reference's share of the chemistry (:func:`scale_free_fractions`); shares under
        :data:`MIN_CHEMISTRY_SHARE` are left out, the others divided by their sum.
    used : ndarray (n,) bool, optional
        The frames its XANES used (``xanes_frames``); default all. The pipeline's gap test is on the scan's energies.
    dense, edge_window, background
        As :func:`normalisation_bias` (``dense``: how the mix's own E50 is measured).

    Returns
    -------
    float
        eV (positive: its E50 reads higher); NaN where a share is of a reference that cannot be mixed, none is
        given, or either E50 cannot be measured.
    """
    from ..spectra import ReferenceSpectrum

    if dense not in ("given", "normalised"):
        raise ValueError(f"dense must be 'given' or 'normalised', got {dense!r}")
    nan = float("nan")
    e = np.asarray(energies_ev, float)
    use = np.ones(e.size, bool) if used is None else np.asarray(used, bool)
    if use.shape != e.shape:
        raise ValueError(f"used must hold one value per energy ({e.size}), got shape {use.shape}")
    refs = {k: r for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8}
    parts = {k: float(v) for k, v in (shares or {}).items() if np.isfinite(v) and v >= MIN_CHEMISTRY_SHARE}
    if not parts or not set(parts) <= set(refs):
        return nan
    mix = _mix(parts, refs)
    bg = BACKGROUND_AT_EDGE if background is None or not np.isfinite(background) else float(background)
    try:
        e0_dense, truth = _dense_e50(mix, e, dense, bg, edge_window)
        seen = _as_particles(e[use], mix, e0_dense, bg, edge_window, e)[0]
    except ValueError:  # too few energies for a pre-edge, post-edge or edge window
        return nan
    return float(seen - truth) if np.isfinite(seen) and np.isfinite(truth) else nan


def _as_particles(energies_ev, ref, e0_dense: float, background: float, edge_window, scan_energies_ev):
    """``(e50, energies, normalised, e0)``: reference ``ref`` (with ``background`` times its step at ``e0_dense``
    under it, falling as E^-3) sampled on ``energies_ev`` (those within its own energies: it is flat beyond them, not a
    spectrum there), its E0 found, normalised and its E50 measured as a particle's spectrum is
    (:func:`~xanestrack.xanes.find_e0`, :func:`~xanestrack.xanes.normalize`, :func:`~xanestrack.xanes.edge_energy`).

    ``scan_energies_ev``: the scan's energies, for the pipeline's own gap test (an E50 interpolated across a hole in
    them is not measured there: a scan without its 8 frames of 8337-8345 eV read NiO -1.45 / LiNiO2 -1.70 eV, blamed
    on the post-edge, where the pipeline measured no E50 at all). Raises ValueError where the energies are too few
    for a pre-edge, post-edge or edge window."""
    from ..xanes import edge_energy, find_e0, normalize

    e = np.asarray(energies_ev, float)
    s = e[(e >= ref.energies_ev[0]) & (e <= ref.energies_ev[-1])]
    mu = ref(s) + background * (s / e0_dense) ** -3
    e0 = find_e0(s, mu)
    nm = normalize(s, mu, e0_ev=e0)
    seen = edge_energy(s, nm.norm[:, None], e0_ev=e0, window=edge_window, scan_energies_ev=scan_energies_ev)[0][0]
    return float(seen), s, nm.norm, e0


#: the shares of the second reference in the mixes of each adjacent pair of references that :func:`mixture_bias`
#: measures (a mix's bias need not lie between its references': on synth's 30-energy grid the 50:50 mix of the
#: shipped NiO and LiNiO2 is biased -0.188 eV, NiO -0.056 and LiNiO2 -0.161 eV)
MIX_FRACTIONS = (0.25, 0.5, 0.75)


def mixture_bias(
    energies_ev,
    references: dict,
    *,
    dense: str = "given",
    edge_window=(-15.0, 20.0),
    fractions=MIX_FRACTIONS,
    background=None,
) -> dict[str, float]:
    """:func:`normalisation_bias` of mixes of each adjacent pair of references (in the order given).

    A particle of two phases is a mix ``(1 - f) a + f b``; its spectrum crosses half its step where neither
    reference does, and the normalisation's and the interpolation's bias there is its own, not the mix of the
    references' biases.

    Parameters
    ----------
    energies_ev, references, dense, edge_window, background
        As :func:`normalisation_bias` (references without energies of their own are left out).
    fractions : sequence of float
        The shares ``f`` of the second reference of each pair.

    Returns
    -------
    dict of name -> float
        eV, keyed ``"75 % a + 25 % b"``; empty with fewer than two references. NaN as in
        :func:`normalisation_bias`.
    """
    from ..spectra import ReferenceSpectrum

    refs = [(k, r) for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8]
    mixes = {}
    for (na, a), (nb, b) in zip(refs[:-1], refs[1:]):
        grid = np.union1d(a.energies_ev, b.energies_ev)
        lo, hi = max(a.energies_ev[0], b.energies_ev[0]), min(a.energies_ev[-1], b.energies_ev[-1])
        grid = grid[(grid >= lo) & (grid <= hi)]
        for f in fractions:
            name = f"{100 * (1 - f):.0f} % {na} + {100 * f:.0f} % {nb}"
            mixes[name] = ReferenceSpectrum(name, grid, (1 - f) * a(grid) + f * b(grid))
    return normalisation_bias(energies_ev, mixes, dense=dense, edge_window=edge_window, background=background)


#: eV: a particle whose XANES used fewer of the scan's energies (its ``xanes_frames``: frames not vouched for, out of
#: the field, under another particle) is noted where they move its E50, against a particle of its chemistry measured
#: on all of them (:func:`frames_bias_shift`), by this much or more and by :data:`FRAMES_SHIFT_SIGMAS` times its mean
#: E50's sigma: a particle cut by the border in the last 5 of synth's 60 frames read -0.39 eV (16 sigma), the
#: probe's particles of default seed 1 without their last 3 / 5 / 8 frames -0.06 to +0.01 / -0.43 to -0.03 / -0.12 to
#: -0.06 eV, nothing said
FRAMES_SHIFT_FLOOR_EV = 0.05
#: a particle's E50 moved by its energies (:data:`FRAMES_SHIFT_FLOOR_EV`) by fewer of its mean E50's sigmas than this
#: is within its noise: not noted
FRAMES_SHIFT_SIGMAS = 2.0
#: a particle's last reference's fraction (``oxidised_fraction``) moved by its energies by this much or more is noted
#: and flagged (uncertainty.csv ``fraction_flags`` ``frames_left_out``): the same normalisation sets the spectra the
#: fractions are fitted to (the probe's particles without their last 3 or 8 of 60 frames: -0.012 to +0.001, with
#: their E50 -0.06 to -0.12 eV; without their last 5, its misfit region flagged, up to +0.45)
FRAMES_FRACTION_FLOOR = 0.02
#: the words a particle's note on the energies its XANES used begins with (:func:`frames_bias_shift`)
FRAMES_NOTE_START = "normalised on fewer of the scan's energies"
#: the words of that note where its fractions move too (uncertainty.csv ``fraction_flags`` ``frames_left_out``)
FRAMES_FRACTIONS_WORDS = "its fractions move too"
#: normalised absorption: the references describe a particle's normalised mean spectrum where the RMS residual of
#: their fit with a free scale (:func:`scale_free_fractions`) is this or less, and :func:`frames_bias_shift` measures
#: its chemistry's move from them; the default scenes' particles (seeds 1-3, and the one cut by the border) read
#: 0.001-0.005, the stress family's (a chemistry the shipped references do not hold) 0.08-0.21, where the references'
#: move missed the particles' by up to 0.16 eV, of the other sign (their last 8 of 60 frames out: -0.11 eV against
#: +0.005 to +0.043 measured)
FRAMES_DESCRIBED_RMS = 0.02
#: the share below which a reference is not part of a particle's chemistry (:func:`scale_free_fractions`): a mix of
#: the references needs energies of its own for each one in it (a callable has none)
MIN_CHEMISTRY_SHARE = 0.01


@dataclass(frozen=True)
class FramesShift:
    """What the energies a particle's XANES used (fewer than the scan's) do to it (:func:`frames_bias_shift`).

    Attributes
    ----------
    e50_ev : float
        eV, its E50 on its own energies less its E50 on the scan's, for its chemistry (the references mixed at
        ``fractions``) or, without one, the largest (in size) over the references and their mixes; 0 where it used
        all of them, NaN where not measured.
    fraction : float
        Its last reference's fraction fitted (sum to one, as the pipeline's) on its own energies less on the scan's,
        for its chemistry; NaN without one.
    fractions : dict of str -> float or None
        The chemistry measured (:func:`scale_free_fractions`), None where none was.
    low_ev, high_ev : float
        eV, the extremes of the shift over the references and their mixes (NaN where none was measured).
    """

    e50_ev: float
    fraction: float
    fractions: dict | None
    low_ev: float
    high_ev: float


def scale_free_fractions(
    energies_ev, mean_norm, e0_ev: float, references: dict, *, lcf_window=(-20.0, 40.0)
) -> tuple[dict | None, float]:
    """A particle's chemistry as the references' shares in its normalised mean spectrum, fitted with a free scale,
    and how well they describe it.

    The linear-combination fit without its sum-to-one constraint (:func:`~xanestrack.xanes.linear_combination_fit`,
    non-negative, over ``lcf_window`` about ``e0_ev``), its fractions divided by their sum: a post-edge line fitted
    on other energies sets another edge step, which scales the normalised spectrum over the fit's window, and the
    free scale takes that up where the pipeline's fractions (summing to one) take it for chemistry. On the probe's
    particles of default seed 1 without their last 5 of 60 frames the pipeline's LiNiO2 fractions moved from
    0.349 / 0.609 / 0.223 to 0.711 / 0.855 / 0.676; these read 0.362 / 0.615 / 0.213 with and without them (within
    0.02 of the run's on all frames, 0.000-0.020).

    Returns
    -------
    (dict of str -> float, or None; float)
        Share of each reference (summing to one), None where the fit cannot be made (too few energies in the
        window, references short of it, no positive share); and the fit's RMS residual (normalised absorption, NaN
        without a fit): :data:`FRAMES_DESCRIBED_RMS` or less where the references describe the spectrum.
    """
    from ..xanes import linear_combination_fit

    nan = float("nan")
    e = np.asarray(energies_ev, float)
    m = np.asarray(mean_norm, float)
    ok = np.isfinite(m)
    if m.shape != e.shape or not np.isfinite(e0_ev) or ok.sum() < MIN_OWN_ENERGIES or not references:
        return None, nan
    try:
        fit = linear_combination_fit(
            e[ok], m[ok][:, None], references, e0_ev=e0_ev, window=lcf_window, sum_to_one=False
        )
    except ValueError:
        return None, nan
    f = np.asarray(fit.fractions, float)[:, 0]
    if not np.all(np.isfinite(f)) or f.sum() <= 0:
        return None, nan
    return {str(k): float(v) for k, v in zip(fit.names, f / f.sum())}, float(np.asarray(fit.residual)[0])


def spectrum_frames_shift(energies_ev, used, spectrum, *, edge_window=(-15.0, 20.0)) -> float:
    """eV: a measured spectrum's E50 on the energies ``used`` less its E50 on all ``energies_ev``, each found, normalised
    and measured as a particle's (:func:`~xanestrack.xanes.find_e0`, :func:`~xanestrack.xanes.normalize`,
    :func:`~xanestrack.xanes.edge_energy` with the pipeline's gap test on the scan's energies); NaN where either
    cannot be measured.

    What a particle measured on every energy (its analysed mean spectrum) reads on another particle's fewer energies:
    the move of a real spectrum, where the references do not describe that particle (:func:`frames_bias_shift` is
    theirs). On the stress family's particles (a chemistry the shipped references do not hold) without their last 5
    of 60 frames: +0.13 to +0.18 eV read this way against +0.14 to +0.17 measured, the references' +0.08."""
    from ..xanes import edge_energy, find_e0, normalize

    e = np.asarray(energies_ev, float)
    mu = np.asarray(spectrum, float)
    use = np.asarray(used, bool)
    if mu.shape != e.shape or use.shape != e.shape or not np.isfinite(mu).all() or use.sum() < MIN_OWN_ENERGIES:
        return float("nan")
    out = []
    for sel in (use, np.ones(e.size, bool)):
        es, ms = e[sel], mu[sel]
        try:
            e0 = find_e0(es, ms)
            nm = normalize(es, ms, e0_ev=e0)
            out.append(float(edge_energy(es, nm.norm[:, None], e0_ev=e0, window=edge_window, scan_energies_ev=e)[0][0]))
        except ValueError:  # too few energies for a pre-edge, post-edge or edge window
            return float("nan")
    return out[0] - out[1]


def frames_bias_shift(
    energies_ev,
    used,
    references: dict,
    *,
    fractions: dict | None = None,
    edge_window=(-15.0, 20.0),
    lcf_window=(-20.0, 40.0),
    background=None,
) -> FramesShift | None:
    """How far the energies a particle's XANES used move its E50 (and fractions) against a particle of its chemistry
    measured on all the scan's energies.

    A particle whose XANES leaves out frames (not vouched for, out of the field, under another particle) is normalised
    on fewer energies: its post-edge line from E0 + 100 eV follows the EXAFS wiggles its own energies catch, its E50
    is interpolated between its own energies across the edge, and its bias (:func:`normalisation_bias`) is not the
    scan's, which the run's note quotes. Its chemistry (the references mixed at ``fractions``; without them each
    reference and each mix of :data:`MIX_FRACTIONS` of adjacent ones) is sampled on its energies and on the scan's,
    each normalised and measured as the particles are (:func:`_as_particles`, the pipeline's gap test on the scan's
    energies), and the two E50s are compared; the densely measured E50 is the same for both and does not enter.

    Against the probe's particles (default seed 1, 60 energies, their last 3 / 5 / 8 frames left out, redone; each
    at its scale-free chemistry, :func:`scale_free_fractions`): within 0.025 eV of the mean E50's move at every K
    (-0.427 eV predicted -0.413; -0.230 / -0.240), and 0.004 of the LiNiO2 fraction's where no misfit region was
    flagged; the particle cut by the border in its last 5 frames moved -0.389 eV, predicted -0.413 (its LiNiO2
    fraction -0.066, predicted -0.065). Only where the references describe the particle's spectrum: the stress
    family's (a chemistry they do not hold) without their last 8 frames moved +0.005 to +0.043 eV, the references
    read -0.11 (:func:`spectrum_frames_shift` reads such a particle's move from one measured on every energy).

    Parameters
    ----------
    energies_ev : ndarray (n,)
        The scan's energies, increasing.
    used : ndarray (n,) bool
        The frames the particle's XANES used (``xanes_frames``).
    references : dict of name -> ReferenceSpectrum or callable
        As the fit used them; those without energies of their own cannot be mixed or sampled (left out).
    fractions : dict of str -> float, optional
        Its chemistry: each reference's share (:func:`scale_free_fractions`); a share of
        :data:`MIN_CHEMISTRY_SHARE` or more of a reference that cannot be sampled, or none given: the references and
        their mixes instead.
    edge_window, lcf_window : (float, float)
        eV about E0, as the pipeline's.
    background : float, optional
        The pre-edge absorbance under the particles' edge step, as a share of it at E0 (:func:`normalisation_bias`).

    Returns
    -------
    FramesShift or None
        None where no reference can be sampled (none has energies of its own, 8 or more).
    """
    from ..spectra import ReferenceSpectrum
    from ..xanes import find_e0, linear_combination_fit

    e = np.asarray(energies_ev, float)
    use = np.asarray(used, bool)
    if use.shape != e.shape:
        raise ValueError(f"used must hold one value per energy ({e.size}), got shape {use.shape}")
    refs = {k: r for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8}
    if not refs:
        return None
    nan = float("nan")
    if use.all():  # measured on every energy of the scan: nothing moved
        return FramesShift(0.0, 0.0 if fractions else nan, fractions, 0.0, 0.0)
    bg = BACKGROUND_AT_EDGE if background is None or not np.isfinite(background) else float(background)

    def measured(ref):
        """``(shift eV, fraction shift)`` of one spectrum, NaN where either set of energies does not measure it."""
        e0_dense = find_e0(ref.energies_ev, ref.mu)
        out = []
        for energies in (e[use], e):
            try:
                seen, s, norm, e0 = _as_particles(energies, ref, e0_dense, bg, edge_window, e)
            except ValueError:  # too few energies for a pre-edge, post-edge or edge window
                return nan, nan
            try:
                fit = linear_combination_fit(s, norm[:, None], references, e0_ev=e0, window=lcf_window)
                last = float(np.asarray(fit.fractions, float)[-1, 0])
            except ValueError:  # the fit's window not covered: no fraction (as the pipeline's)
                last = nan
            out.append((seen, last))
        return out[0][0] - out[1][0], out[0][1] - out[1][1]

    spectra = dict(refs)
    names = list(refs)
    for na, nb in zip(names[:-1], names[1:]):  # as mixture_bias pairs them
        for f in MIX_FRACTIONS:
            spectra[f"{100 * (1 - f):.0f} % {na} + {100 * f:.0f} % {nb}"] = _mix({na: 1 - f, nb: f}, refs)
    each = {k: measured(r)[0] for k, r in spectra.items()}
    fin = [v for v in each.values() if np.isfinite(v)]
    low, high = (min(fin), max(fin)) if fin else (nan, nan)
    shares = {k: float(v) for k, v in (fractions or {}).items() if np.isfinite(v) and v >= MIN_CHEMISTRY_SHARE}
    if shares and set(shares) <= set(refs):
        shift, fraction = measured(_mix(shares, refs))
        return FramesShift(float(shift), float(fraction), dict(fractions), low, high)
    worst = max(fin, key=abs) if fin else nan
    return FramesShift(float(worst), nan, None, low, high)


def _mix(shares: dict, refs: dict):
    """The mix ``sum_k shares[k] refs[k]`` (shares divided by their sum) as a reference spectrum, over the energies
    all of them hold."""
    from ..spectra import ReferenceSpectrum

    names = list(shares)
    w = np.array([shares[k] for k in names], float)
    w = w / w.sum()
    grid = np.unique(np.concatenate([refs[k].energies_ev for k in names]))
    lo, hi = max(refs[k].energies_ev[0] for k in names), min(refs[k].energies_ev[-1] for k in names)
    grid = grid[(grid >= lo) & (grid <= hi)]
    name = " + ".join(f"{100 * x:.0f} % {k}" for k, x in zip(names, w))
    return ReferenceSpectrum(name, grid, sum(x * refs[k](grid) for k, x in zip(names, w)))


@dataclass(frozen=True)
class ChemistryBias:
    """The normalisation's bias of one particle's chemistry on the energies its XANES used
    (:func:`particle_chemistry_bias`).

    Attributes
    ----------
    bias_ev : float
        eV, the E50 a particle of its chemistry shows on those energies less its densely measured E50 (positive: the
        scan's lies higher); NaN where not measured.
    fractions : dict of str -> float or None
        Its chemistry: each reference's share (:func:`scale_free_fractions`), None where none was measured.
    rms : float
        The RMS residual of that fit (normalised absorption; NaN without one).
    why : str
        Where ``bias_ev`` is NaN, why (words for a note); ``""`` where measured.
    """

    bias_ev: float
    fractions: dict | None
    rms: float
    why: str = ""


def particle_chemistry_bias(
    energies_ev,
    used,
    mean_norm,
    e0_ev: float,
    references: dict,
    *,
    given: dict | bool = True,
    edge_window=(-15.0, 20.0),
    lcf_window=(-20.0, 40.0),
    background=None,
) -> ChemistryBias:
    """The normalisation's bias at one particle's chemistry: its normalised mean spectrum's chemistry (the references'
    shares, fitted with a free scale: :func:`scale_free_fractions`), measured by :func:`chemistry_bias` on the
    energies the particle's XANES used.

    What a particle of known E50 shows on the scan's energies (a ``--known-edge`` calibration sets its mean E50 to
    the known value plus this: :func:`xanestrack.chemistry.calibration.calibrate_from_particle`; set to the known
    value itself, the axis took the bias of its chemistry: on synth's 60-energy grid a pure NiO particle (-0.18 eV)
    moved it +0.18 eV, every other particle's E50 +0.2 eV (6-20 sigma), and pure NiO read 6 % LiNiO2), and what a
    series takes away beside each particle's E50 (:func:`xanestrack.chemistry.runnotes.particles_grid_bias`).

    Parameters
    ----------
    energies_ev : ndarray (n,)
        The scan's energies (on the axis the references are on), increasing.
    used : ndarray (n,) bool or None
        The frames the particle's XANES used (``xanes_frames``); None: every one.
    mean_norm : ndarray (n,)
        Its normalised mean spectrum (NaN where not measured).
    e0_ev : float
        Its E0 on ``energies_ev``.
    references : dict of name -> ReferenceSpectrum or callable
        As the fit used them; a share of :data:`MIN_CHEMISTRY_SHARE` or more of one without energies of its own (a
        callable) cannot be sampled: not measured.
    given : dict of name -> bool, or bool
        Whether each reference is fitted with its provider's normalisation (``dense="given"``: the shipped ones) or
        was normalised by xanestrack (``"normalised"``); a mix is measured ``"given"`` where all of its are.
    edge_window, lcf_window : (float, float)
        eV about E0, as the pipeline's.
    background : float, optional
        The pre-edge absorbance under the particles' edge step, as a share of it at E0 (:func:`normalisation_bias`).

    Returns
    -------
    ChemistryBias
        NaN, with why, where the references do not describe its spectrum (the free-scale fit's RMS over
        :data:`FRAMES_DESCRIBED_RMS`: what they would say of it is not its chemistry's), cannot be fitted to it or
        sampled, or the energies do not measure the mix's E50.
    """
    from ..spectra import ReferenceSpectrum

    nan = float("nan")
    e = np.asarray(energies_ev, float)
    m = np.asarray(mean_norm, float) if mean_norm is not None else np.full(e.shape, nan)
    use = np.ones(e.size, bool) if used is None else np.asarray(used, bool)
    if m.shape != e.shape or use.shape != e.shape or not np.isfinite(e0_ev):
        return ChemistryBias(nan, None, nan, "its normalised mean spectrum is not at hand")
    if not references:
        return ChemistryBias(nan, None, nan, "no reference spectrum of its edge was given")
    shares, rms = scale_free_fractions(e, np.where(use, m, nan), float(e0_ev), references, lcf_window=lcf_window)
    if shares is None:
        return ChemistryBias(
            nan,
            None,
            rms,
            "the references cannot be fitted to its mean spectrum (too few of its energies in the "
            "fit's window, or references short of it)",
        )
    if not rms <= FRAMES_DESCRIBED_RMS:
        return ChemistryBias(
            nan,
            shares,
            rms,
            f"the references do not describe its mean spectrum (fitted with a free scale they leave "
            f"{rms:.3f} RMS, over {FRAMES_DESCRIBED_RMS:g}): its chemistry is not theirs",
        )
    part = [k for k, v in shares.items() if v >= MIN_CHEMISTRY_SHARE]
    refs = {k for k, r in references.items() if isinstance(r, ReferenceSpectrum) and r.energies_ev.size >= 8}
    if not part or not set(part) <= refs:
        return ChemistryBias(
            nan, shares, rms, "part of its chemistry is a reference without a spectrum of its own to sample"
        )
    dense = "given" if (given if isinstance(given, bool) else all(given.get(k, False) for k in part)) else "normalised"
    bias = chemistry_bias(e, references, shares, used=use, dense=dense, edge_window=edge_window, background=background)
    if not np.isfinite(bias):
        return ChemistryBias(
            nan,
            shares,
            rms,
            "its chemistry's E50 cannot be measured on the energies its XANES used (too few of them "
            "in the pre-edge, post-edge or edge ranges, or its E50 in a gap of them)",
        )
    return ChemistryBias(float(bias), shares, rms)


def normalisation_bias_note(bias: dict, mixtures: dict | None = None, *, edge_ev: float | None = None) -> str:
    """The run's note where the normalisation's bias on the scan's energies matters, else ``""``.

    Where a reference's bias (:func:`normalisation_bias`), or a mix's of them (``mixtures``: :func:`mixture_bias`),
    is :data:`NOTE_BIAS_EV` or more, or two of them differ by :data:`NOTE_SPREAD_EV` or more: the extremes over the
    references and their mixes (a mix's bias need not lie between its references'). NaN values are left out (a
    reference whose E50 falls in a hole in the scan's energies: the pipeline measures none there). ``edge_ev``
    (eV, the particles' edge): the advice quotes what a denser post-edge did for the shipped Ni references as
    measured at the Ni K-edge where the edge is elsewhere (a Mn or Co run read "left the shipped Ni references
    within 0.11 eV" as if of its own).
    """
    b = {k: float(v) for k, v in bias.items() if np.isfinite(v)}
    if not b:
        return ""
    m = {k: float(v) for k, v in (mixtures or {}).items() if np.isfinite(v)}
    both = list(b.values()) + list(m.values())
    large = max(abs(v) for v in both) >= NOTE_BIAS_EV
    spread = max(both) - min(both)
    if not large and spread < NOTE_SPREAD_EV:
        return ""
    from ..xanes import _edge_element

    element = None if edge_ev is None or not np.isfinite(edge_ev) else _edge_element(edge_ev)
    words = _bias_words(b, m)
    return (
        f"{NOTE_START} moves E50: {words} (each sampled on the scan's "
        "energies and normalised as the particles are, against its densely measured E50); it comes of how the "
        "scan's energies sample the spectra (the post-edge line fitted from E0 + 100 eV follows the EXAFS wiggles "
        "its energies catch, and E50 is interpolated between the energies across the edge), is the same for every "
        "particle of a chemistry and is not in sigma"
        + (
            f", and differences between particles of different chemistry are compressed or stretched by up to "
            f"{spread:.2f} eV"
            if len(b) > 1
            else ""
        )
        + ": scan more post-edge energies ("
        + ("" if element in ("Ni", None) else "at the Ni K-edge, ")
        + "every 10 eV from E0 + 100 eV on left the shipped Ni references within 0.11 eV"
        + ("" if element in ("Ni", None) else f"; not measured at this {element + ' K-' if element else ''}edge")
        + ") and finer across the edge, or compare only particles of like chemistry"
    )


def _bias_words(b: dict, m: dict) -> str:
    """``"NiO -0.18 eV, LiNiO2 +0.03 eV"`` for the finite biases ``b``, and their mixes' ``m`` where one lies beyond
    them (a mix's bias need not lie between its references')."""
    words = ", ".join(f"{k} {v:+.2f} eV" for k, v in b.items())
    beyond = {k: v for k, v in m.items() if v < min(b.values()) - 0.005 or v > max(b.values()) + 0.005}
    if beyond:
        worst = max(beyond, key=lambda k: abs(beyond[k]))
        words += (
            f"; their mixes {min(m.values()):+.2f} to {max(m.values()):+.2f} eV ({worst} {beyond[worst]:+.2f} eV: a "
            "mix's bias need not lie between its references')"
        )
    return words


def _e50_given(p) -> bool:
    """Whether particle ``p``'s mean E50 is given: its E50 map has a pixel measured (its XANES neither failed nor was
    skipped) and it is not withheld (:func:`xanestrack.result.e50_withheld`). A particle whose mean spectrum fell back
    to its pre-edge level, or fell across its edge, keeps its normalised mean spectrum and E0 but has no E50: its
    "own bias" was quoted all the same. A bare spectrum (no ``edge_maps``: a caller's own) is taken as given."""
    from ..result import e50_withheld

    maps = getattr(p, "edge_maps", None)
    if maps is None:
        return True
    e50 = maps.get("e50")
    if e50 is None or not np.isfinite(np.asarray(e50, float)).any():
        return False
    return getattr(p, "mask", None) is None or not e50_withheld(p)


def own_spectra_bias(energies_ev, particles, *, edge_window=(-15.0, 20.0)) -> dict[str, float]:
    """The part of each particle's E50 bias its own mean spectrum holds: E50 interpolated linearly between the scan's
    energies, less E50 on a smooth curve through the same normalised values.

    The pipeline places E50 on the straight line between the two energies whose normalised values straddle half the
    step (:func:`~xanestrack.xanes.edge_energy`); the edge is curved between them. A shape-preserving cubic
    (``scipy.interpolate.PchipInterpolator``) through the particle's normalised mean spectrum crosses half its step
    in the same interval (it does not overshoot its values), at the energy the bend of the edge puts it. The
    normalisation is the particle's own, as fitted on the scan's energies: a smooth curve through them holds none of
    the EXAFS wiggles between the post-edge energies, whose catch sets the step (on synth's 60-energy grid such a
    curve read NiO's post-edge part +0.003 eV, -0.233 eV measured from the dense reference), so a dense
    normalisation of it measures nothing of that part (:func:`unmeasured_bias_note` quotes what it is elsewhere).

    Measured against the same part from the dense noise-free spectra: within 0.032 eV on the probe's Mn and Co scenes
    and on synth's 143- to 30-energy grids (at worst a MnO/Mn2O3 mix -0.020 against -0.052, NiO on 60 energies -0.018
    against -0.050).

    Parameters
    ----------
    energies_ev : ndarray (n,)
        The scan's energies, increasing.
    particles : list of ParticleResult
        With ``mean_norm`` (NaN on the frames their analysis left out), ``e0_ev`` and ``particle``.
    edge_window : (float, float)
        eV relative to each particle's E0: where E50 is searched (the pipeline's ``edge_window``).

    Returns
    -------
    dict of str -> float
        ``"particle N"`` -> eV (positive: the scan's E50 lies higher), for the particles whose mean E50 is given
        (:func:`_e50_given`) and whose mean spectrum crosses half its step on the scan's energies, not across a hole
        in them (:data:`~xanestrack.xanes.MAX_GAP_RATIO`: the pipeline measures no E50 there), on
        :data:`MIN_OWN_ENERGIES` energies or more.
    """
    from scipy.interpolate import PchipInterpolator

    from ..xanes import edge_energy

    e = np.asarray(energies_ev, float)
    out = {}
    for p in particles:
        m = np.asarray(getattr(p, "mean_norm", np.full(e.shape, np.nan)), float)
        e0 = float(getattr(p, "e0_ev", np.nan))
        if m.shape != e.shape or not np.isfinite(e0) or not _e50_given(p):
            continue
        ok = np.isfinite(m)
        if ok.sum() < MIN_OWN_ENERGIES or np.any(np.diff(e[ok]) <= 0):
            continue
        es, ms = e[ok], m[ok]
        try:
            seen = float(edge_energy(es, ms[:, None], e0_ev=e0, window=edge_window, scan_energies_ev=e)[0][0])
        except ValueError:  # fewer than two energies in the edge window
            continue
        if not np.isfinite(seen):
            continue
        # the interval the straight line crosses in; the smooth curve crosses in it too (no overshoot)
        i = int(np.clip(np.searchsorted(es, seen, side="right") - 1, 0, es.size - 2))
        x = np.linspace(es[i], es[i + 1], max(3, int(np.ceil((es[i + 1] - es[i]) / DENSE_STEP_EV)) + 1))
        y = PchipInterpolator(es, ms)(x)
        up = np.flatnonzero((y[:-1] < 0.5) & (y[1:] >= 0.5))
        if not up.size:
            continue
        j = up[0]
        dense = x[j] + (0.5 - y[j]) / (y[j + 1] - y[j]) * (x[j + 1] - x[j])
        out[f"particle {p.particle}"] = seen - float(dense)
    return out


def shipped_bias_at_edge(
    energies_ev, edge_ev, *, offsets=PLACEMENTS_EV, edge_window=(-15.0, 20.0), background=None
) -> dict[float, dict[str, float]]:
    """:func:`normalisation_bias` and :func:`mixture_bias` of the shipped Ni references (``dense="given"``, as a Ni
    run measures them) on the scan's energies moved so that their E0 lies at ``edge_ev`` + each of ``offsets``.

    What the grid does to spectra whose bias is known, where the particles' own cannot be measured: the pre-edge,
    post-edge and edge windows are taken relative to E0, so the scan's energies relative to the particles' edge sample
    the Ni spectra as they would sample any. Another chemistry's EXAFS is caught otherwise: an order of magnitude,
    not this edge's numbers. It swings with where the energies fall on the spectrum (the probe's Co grid: NiO +0.28
    eV with its E0 at 7712 eV, -0.20 eV at 7720 eV; its Co particles -0.09 to -0.47 eV against their references'
    provider), hence the placements.

    Returns
    -------
    dict of float -> dict of str -> float
        ``offset`` (eV) -> the references' and their mixes' biases (eV, NaN where not measured); ``{}`` where
        ``edge_ev`` is not finite.
    """
    from ..spectra import ni_references
    from ..xanes import find_e0

    if edge_ev is None or not np.isfinite(edge_ev):
        return {}
    refs = ni_references()
    at = float(np.median([find_e0(r.energies_ev, r.mu) for r in refs.values()]))
    kw = dict(dense="given", edge_window=edge_window, background=background)
    out = {}
    for d in offsets:
        moved = np.asarray(energies_ev, float) + (at - float(edge_ev) - float(d))
        out[float(d)] = {**normalisation_bias(moved, refs, **kw), **mixture_bias(moved, refs, **kw)}
    return out


def unmeasured_bias_note(
    energies_ev, particles, references=None, *, edge_window=(-15.0, 20.0), background=None, shipped: bool = False
) -> str:
    """The run's note where no reference measured the normalisation's bias (:func:`normalisation_bias` gave none:
    no reference of the particles' edge, or references that do not reach the ranges the particles are normalised
    over), ``""`` where no particle's mean E50 is given (:func:`_e50_given`) on the scan's energies (none to bias).

    It says that the bias was not measured and why, gives the part the particles' own mean spectra measure
    (:func:`own_spectra_bias`), and for the rest the range the shipped Ni references and their mixes read on this
    scan's energies with their E0 placed about the particles' (:data:`PLACEMENTS_EV`, :func:`shipped_bias_at_edge`),
    else on synth's grids (:data:`SYNTH_GRID_BIAS`). A Mn scan with the user's standards over 6520-6630 eV and a Co
    scan without references had run.json's bias ``{}`` and no word: their particles were -0.11 to +0.12 eV and -0.09
    to -0.47 eV off their references' provider's E50 (noise-free), differences between chemistries stretched by
    0.2 eV, unsaid. run.json's bias stays the references' (none): the particles' own numbers are in the note.

    Parameters
    ----------
    energies_ev : ndarray (n,)
    particles : list of ParticleResult
        Those with edge energies (``mean_norm``, ``e0_ev``).
    references : dict of name -> ReferenceSpectrum or callable, optional
        The references at the particles' edge that could not measure it (named in the note), or none.
    edge_window : (float, float)
    background : float, optional
        The particles' pre-edge absorbance under their edge step, as a share of it at E0
        (:func:`normalisation_bias`).
    shipped : bool
        ``references`` are the shipped ones (no ``--reference`` given): named so, not as "the references given".
    """
    from ..spectra import ReferenceSpectrum
    from ..xanes import PRE_EDGE_RANGE, _edge_element

    e = np.asarray(energies_ev, float)
    own = {k: v for k, v in own_spectra_bias(e, particles, edge_window=edge_window).items() if np.isfinite(v)}
    if not own:
        return ""
    # the edge of the particles quoted (own_spectra_bias: those whose mean E50 is given)
    e0s = [float(p.e0_ev) for p in particles if np.isfinite(getattr(p, "e0_ev", np.nan)) and _e50_given(p)]
    edge = float(np.median(e0s))
    element = _edge_element(edge)
    if references:
        spans = ", ".join(
            f"{k} {r.energies_ev[0]:.0f}-{r.energies_ev[-1]:.0f} eV"
            if isinstance(r, ReferenceSpectrum)
            else f"{k} (a function: no energies of its own)"
            for k, r in references.items()
        )
        pre = (max(edge + PRE_EDGE_RANGE[0], e[0]), edge + PRE_EDGE_RANGE[1])
        short = all(
            isinstance(r, ReferenceSpectrum) and (r.energies_ev[0] > pre[1] or r.energies_ev[-1] < edge + 100.0)
            for r in references.values()
        )
        named = f"the shipped references ({spans})" if shipped else f"the references given ({spans})"
        why = (
            f"{named} do not reach the ranges the particles are normalised over on this "
            f"scan's energies (the pre-edge line from E0 - {-PRE_EDGE_RANGE[0]:.0f} to E0 - {-PRE_EDGE_RANGE[1]:.0f} "
            f"eV, the post-edge from E0 + 100 eV: {pre[0]:.0f}-{pre[1]:.0f} and {edge + 100:.0f}-{e[-1]:.0f} eV here)"
            if short
            else f"{named} cannot be measured on this scan's energies as the particles are (too "
            "few of its energies in their pre-edge, post-edge or edge ranges, or their E50 in a gap of them)"
        )
    else:
        why = "no reference spectrum of the particles' edge was given"
    lo, hi = min(own, key=own.get), max(own, key=own.get)
    ours = (
        f"{lo} {own[lo]:+.2f} eV"
        if len(own) == 1
        else f"{own[lo]:+.2f} eV ({lo}) to {own[hi]:+.2f} eV ({hi}), over {len(own)} particles"
    )
    placed = shipped_bias_at_edge(e, edge, edge_window=edge_window, background=background)
    vals = {d: [v for v in b.values() if np.isfinite(v)] for d, b in placed.items()}
    vals = {d: v for d, v in vals.items() if v}
    if vals:
        every = [v for vs in vals.values() for v in vs]
        apart = max(max(vs) - min(vs) for vs in vals.values())
        offsets = sorted(vals)
        elsewhere = (
            "on this scan's energies"
            + ("" if element == "Ni" else " moved to the Ni K-edge")
            + f", with their E0 placed {-offsets[0]:.0f} eV below to {offsets[-1]:.0f} eV above the particles' "
            f"({edge:.1f} eV), the shipped Ni references and their mixes read {min(every):+.2f} to "
            f"{max(every):+.2f} eV against their provider's E50, up to {apart:.2f} eV apart at one placement"
        )
    else:
        elsewhere = f"the shipped Ni references read {SYNTH_GRID_BIAS} on synth's Ni grids against their provider's E50"
    return (
        f"{NOTE_START} was not measured against references: {why}. The particles' own mean spectra hold only the part "
        "that comes of interpolating E50 linearly between the scan's energies across the edge: "
        f"{ours} (against a smooth curve through the same values). The rest is not in spectra sampled at these "
        "energies alone (the post-edge line fitted from E0 + 100 eV follows the EXAFS wiggles its energies catch and "
        "sets every edge step; a reference's provider or the literature normalise otherwise). Its size elsewhere: "
        f"{elsewhere}"
        + ("" if element in ("Ni", "") else f" (not measured at this {element} K-edge)")
        + ". The bias is the same for every particle of a chemistry, differs between chemistries (their differences "
        "compressed or stretched by as much) and is not in sigma: give references of this edge that reach those "
        "ranges (--reference), or compare only particles of like chemistry"
    )
