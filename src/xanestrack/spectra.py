"""Reference XANES spectra: the shipped Ni references and readers for users' own.

The shipped references are the normalised NiO (Ni2+) and LiNiO2 (Ni3+) spectra of
pyxas (BSD-3), resampled and converted to eV. ``read_spectrum`` reads the common
text formats of reference spectra: XDI (a named ``mu`` column; else raw ``i0``/``itrans`` give
``mu = ln(i0/itrans)``, raw ``i0``/``ifluor`` give ``mu = ifluor/i0``; the same names in a plain header line),
two- or three-column text (energy,
mu[, stddev]; separated by spaces, tabs, commas or semicolons, or with decimal commas) with the
energy in eV or keV (keV is recognised when every energy is below 100: :func:`xanestrack.units.in_kev`).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .units import to_ev

__all__ = ["ReferenceSpectrum", "ni_references", "read_spectrum"]


@dataclass(frozen=True)
class ReferenceSpectrum:
    """One reference spectrum: ``mu`` sampled at ``energies_ev``.

    ``energies_ev`` (eV) and ``mu`` are kept as float arrays (lists are converted).

    Raises
    ------
    ValueError
        If they are not numbers, or not 1-D of the same length.
    """

    name: str
    energies_ev: np.ndarray
    mu: np.ndarray

    def __post_init__(self):
        # lists were kept as given, and the fit failed deep inside (AttributeError: 'list' object has no attribute 'size')
        try:
            e = np.asarray(self.energies_ev, dtype=float)
            mu = np.asarray(self.mu, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                f"reference {self.name}: energies_ev and mu must be numbers, got {type(self.energies_ev).__name__} "
                f"and {type(self.mu).__name__}"
            ) from None
        if e.ndim != 1 or mu.shape != e.shape:
            raise ValueError(
                f"reference {self.name}: energies_ev {e.shape} and mu {mu.shape} must be 1-D of the same length"
            )
        object.__setattr__(self, "energies_ev", e)
        object.__setattr__(self, "mu", mu)

    def __call__(self, energies_ev) -> np.ndarray:
        """Linear interpolation of the spectrum at ``energies_ev`` (flat outside)."""
        return np.interp(np.asarray(energies_ev, dtype=float), self.energies_ev, self.mu)


def ni_references() -> dict[str, ReferenceSpectrum]:
    """The shipped normalised Ni K-edge references ``{"NiO": ..., "LiNiO2": ...}``.

    E(mu_norm = 0.5) is 8340.05 eV for NiO and 8341.81 eV for LiNiO2.
    """
    text = resources.files("xanestrack.data").joinpath("ni_references.csv").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    names = lines[0].split(",")[1:]
    table = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    return {name: ReferenceSpectrum(name, table[:, 0].copy(), table[:, i + 1].copy()) for i, name in enumerate(names)}


#: a reference is taken as normalised as given where its pre-edge line is within this of 0 and its edge
#: step within this of 1 (else it is normalised as the particles' spectra are)
NORMALISED_TOLERANCE = 0.05


def prepare_reference(ref: ReferenceSpectrum, scan_energies_ev) -> tuple[ReferenceSpectrum, str | None]:
    """A user's reference spectrum made ready for the linear-combination fit, and a note where it was changed.

    The fit compares *normalised* spectra (pre-edge 0, edge step 1). A spectrum given as measured
    (an XDI file's ``ln(i0/itrans)``) was fitted as it was: every particle came out about half and half
    whatever its chemistry. It is normalised here like the particles' spectra
    (:func:`xanestrack.xanes.normalize`: pre-edge line, post-edge polynomial, step at E0), unless it
    is normalised already (within :data:`NORMALISED_TOLERANCE`).

    Raises
    ------
    ValueError
        Where its edge lies outside the scan's energies (another element's edge, another
        energy calibration), or it cannot be normalised (too few energies, no pre-edge or
        post-edge range) and is not normalised as given.
    """
    from .xanes import PRE_EDGE_RANGE, find_e0, normalize

    e = np.asarray(scan_energies_ev, float)
    if ref.energies_ev.size < 8:
        raise ValueError(f"{ref.energies_ev.size} energies; a reference spectrum needs at least 8")
    e0 = find_e0(ref.energies_ev, ref.mu)
    if not e[0] <= e0 <= e[-1]:
        raise ValueError(
            f"its edge (the derivative's maximum) is at {e0:.1f} eV, outside the scan's {e[0]:.1f}-{e[-1]:.1f} eV: "
            "not a reference for this edge, or its energies are calibrated otherwise"
        )
    try:
        n = normalize(ref.energies_ev, ref.mu, e0_ev=e0)
    except ValueError as exc:
        lo, hi = ref.mu[0], ref.mu[-1]
        if abs(lo) <= NORMALISED_TOLERANCE and abs(hi - 1) <= 2 * NORMALISED_TOLERANCE:
            return ref, None  # too short to normalise, and normalised as given: as it is
        raise ValueError(
            f"cannot normalise it ({exc}) and it is not normalised as given (it runs from {lo:.3g} to {hi:.3g}); "
            f"give a normalised spectrum (pre-edge 0, edge step 1) or one from {-PRE_EDGE_RANGE[0]:g} eV below its "
            "edge to 100 eV above it"
        ) from None
    pre_at_e0 = float(np.interp(e0, ref.energies_ev, n.pre_edge))
    step = float(n.edge_step)
    if abs(pre_at_e0) <= NORMALISED_TOLERANCE and abs(step - 1) <= NORMALISED_TOLERANCE:
        return ref, None
    if not step > 0:
        raise ValueError(
            f"no rising edge (edge step {step:.3g} at {e0:.1f} eV; its energies run {ref.energies_ev[0]:.1f}-"
            f"{ref.energies_ev[-1]:.1f} eV): does it start above its edge, is it inverted, or is it not a spectrum?"
        )
    note = (
        f"reference {ref.name} normalised as the particles' spectra are (pre-edge line, post-edge polynomial; as "
        f"given its pre-edge was {pre_at_e0:.3g} and its edge step {step:.3g} at E0 {e0:.1f} eV): the fit compares "
        "normalised spectra"
    )
    return ReferenceSpectrum(ref.name, ref.energies_ev.copy(), np.asarray(n.norm, float)), note


#: XDI column names (the XDI dictionary's, and Athena's and Larch's exports') that hold mu(E) itself, in the
#: order preferred where several are named
MU_COLUMNS = ("mu", "xmu", "mutrans", "mufluor", "normtrans", "normfluor", "norm", "flat")
#: XDI names of a fluorescence detector's intensity: ``mu = ifluor / i0``
FLUOR_COLUMNS = ("ifluor", "if")

_NUMBERS_ONLY = re.compile(r"[0-9eE+\-.,;\s]+")

#: a header's names for the columns read (lower case, units and ``=...`` left out), as :func:`_energy_and_mu`
#: names them
HEADER_NAMES = {
    "energy": "energy", "e": "energy", "en": "energy", "ev": "energy", "enc": "energy",
    "i0": "i0", "io": "i0", "i_0": "i0",
    "it": "itrans", "itrans": "itrans", "i1": "itrans", "i_t": "itrans", "itr": "itrans",
}  # fmt: skip


def _header_names(header: str, ncol: int) -> dict[int, str]:
    """The columns named by a header line (``energy_eV i0 it mu=ln(i0/it)``; text after ``columns:`` where
    it says so), where it names exactly ``ncol`` columns and mu can be had from them (a mu column, or i0 with
    itrans or a fluorescence intensity); else none (the columns read as energy, mu by position: ``energy
    mu_norm i0`` was refused as named columns holding no mu)."""
    m = re.search(r"columns?\s*:\s*(.*)$", header, flags=re.IGNORECASE)
    text = m.group(1) if m else header.lstrip("#")
    names = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
    if len(names) != ncol:
        return {}
    out = {}
    for k, t in enumerate(names):
        t = re.split(r"[=(\[]", t.lower(), maxsplit=1)[0]
        t = re.sub(r"_?(ev|kev)$", "", t) or t
        out[k] = HEADER_NAMES.get(t, t)
    named = set(out.values())
    usable = named & set(MU_COLUMNS) or ("i0" in named and named & ({"itrans"} | set(FLUOR_COLUMNS)))
    return out if usable else {}


def _refuse_project_file(path: Path) -> None:
    """Refuse an Athena project (``.prj``, gzip-compressed Perl) or another compressed file: it holds no table."""
    with open(path, "rb") as f:
        head = f.read(64)
    compressed = head[:2] == b"\x1f\x8b"
    if compressed:
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(64)
        except (OSError, EOFError):
            head = b""
    if path.suffix.lower() == ".prj" or head.lstrip().startswith(b"# Athena project file"):
        raise ValueError(
            f"reference spectrum {path}: an Athena project file, not a spectrum; export the group's mu(E) (or "
            "normalised mu(E)) as a text file (columns energy, mu) from Athena, or from Larch (read_athena, then "
            "write_ascii), and give that"
        )
    if compressed:
        raise ValueError(f"reference spectrum {path}: gzip-compressed; decompress it (gunzip) and give the text file")


def _numeric_rows(lines: list[str], path: Path) -> list[list[float]]:
    """The numeric rows of a spectrum's data ``lines`` (comment lines left out before).

    Columns are separated by spaces, tabs, commas or semicolons. Decimal commas ("8330,50<TAB>0,123", a European
    spreadsheet's export) are read where no number has a decimal point and the columns are separated otherwise
    (tabs, semicolons, spaces); where commas would be both the decimal mark and the separator they are refused.
    """
    numeric = [s for s in lines if _NUMBERS_ONLY.fullmatch(s) and any(c.isdigit() for c in s)]
    if numeric and not any("." in s for s in numeric) and any(re.search(r"\d,\d", s) for s in numeric):
        fields = [re.split(r"[;\s]+", s) for s in numeric]
        if all(len(f) >= 2 and all(v.count(",") <= 1 for v in f) for f in fields):
            rows = []
            for s in lines:
                try:
                    rows.append([float(v.replace(",", ".")) for v in re.split(r"[;\s]+", s) if v])
                except ValueError:
                    continue  # a header line without '#'
            return rows
        odd = next((s for s in numeric if s.count(",") >= 3), None)
        if odd is not None:  # "8330,50,0,123": 8330.50 and 0.123, or four columns?
            raise ValueError(
                f"reference spectrum {path}: decimal commas that are also the column separator (e.g. {odd!r}); "
                "save it with decimal points, or with tabs or semicolons between the columns"
            )
    rows = []
    for s in lines:
        try:
            rows.append([float(v) for v in re.split(r"[,;\s]+", s) if v])
        except ValueError:
            continue  # a header line without '#'
    return rows


def _energy_and_mu(table: np.ndarray, columns: dict[int, str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The energy and mu columns of ``table``, by the names XDI gives them (``columns``: index -> name) where it does.

    Without names: energy, mu. With names: a ``mu`` column (:data:`MU_COLUMNS`), else ``ln(i0/itrans)``
    (transmission), else ``ifluor/i0`` (fluorescence); named columns with none of them are refused.
    """
    if not columns:
        return table[:, 0], table[:, 1]
    at: dict[str, int] = {}
    for k, v in sorted(columns.items()):
        if k < table.shape[1]:
            at.setdefault(v, k)
    energy = table[:, at.get("energy", 0)]
    mu_name = next((c for c in MU_COLUMNS if c in at), None)
    fluor = next((c for c in FLUOR_COLUMNS if c in at), None)
    with np.errstate(divide="ignore", invalid="ignore"):
        if mu_name is not None:
            return energy, table[:, at[mu_name]]
        if "itrans" in at and "i0" in at:
            return energy, np.log(table[:, at["i0"]] / table[:, at["itrans"]])
        if fluor is not None and "i0" in at:
            return energy, table[:, at[fluor]] / table[:, at["i0"]]
    names = ", ".join(f"{k + 1}: {v}" for k, v in sorted(columns.items()))
    raise ValueError(
        f"reference spectrum {path}: its named columns ({names}) hold neither mu(E) ({', '.join(MU_COLUMNS)}) nor "
        "the intensities it is computed from (i0 with itrans, or i0 with ifluor); name its columns so in the "
        "'# Column.N:' lines, or give a text file with the columns energy, mu"
    )


def read_spectrum(path, *, name: str | None = None) -> ReferenceSpectrum:
    """Read a reference spectrum from an XDI or plain text file.

    Parameters
    ----------
    path : str or Path
        XDI file (columns named in ``# Column.N:`` lines: a ``mu`` column (:data:`MU_COLUMNS`), else
        ``mu = ln(i0/itrans)`` for transmission, else ``mu = ifluor/i0`` for fluorescence), text whose
        header line names its columns so (``energy i0 it``, ``# columns: energy_eV i0 it mu=ln(i0/it)``:
        :data:`HEADER_NAMES`), or text with columns energy, mu[, ...] (separated by spaces, tabs, commas or
        semicolons; decimal commas are read where the columns are separated otherwise).
    name : str, optional
        Name of the reference; default: the file stem.

    Returns
    -------
    ReferenceSpectrum
        Energies in eV, sorted ascending, repeated rows removed.

    Raises
    ------
    ValueError
        If the file has no numeric table, fewer than 2 columns, non-finite values, or an
        energy twice with values that differ by more than 1 % of the spectrum's range; if XDI
        names its columns and none is mu or the intensities it is computed from; if its decimal
        commas are also its separator; if it is an Athena project or compressed; if its columns 2 and 3
        hold counts (above 100 throughout) and no header names them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference spectrum {path}: file not found")
    _refuse_project_file(path)
    columns: dict[int, str] = {}
    lines = []
    header, numbers = "", False  # the last comment or text line before the first number: it may name the columns
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith("#"):
            m = re.match(r"#\s*Column\.(\d+)\s*:\s*(\S+)", s)
            if m:
                columns[int(m.group(1)) - 1] = m.group(2).lower()
            if not numbers and s.strip("#-= "):
                header = s
        elif s:
            numbers = numbers or bool(_NUMBERS_ONLY.fullmatch(s))
            if not numbers:
                header = s
            lines.append(s)
    rows = _numeric_rows(lines, path)
    if not rows or min(len(r) for r in rows) < 2:
        raise ValueError(f"reference spectrum {path}: no table of at least 2 numeric columns found")
    ncol = min(len(r) for r in rows)
    table = np.array([r[:ncol] for r in rows])
    if not columns:
        columns = _header_names(header, ncol)
    if not columns and ncol >= 3 and np.all(table[:, 1:3] > 100.0):
        # two columns of counts (i0, itrans?): a mu column never holds such values throughout
        raise ValueError(
            f"reference spectrum {path}: its columns 2 and 3 hold counts ({table[0, 1]:.6g}, {table[0, 2]:.6g}, ...), "
            "not mu(E); name its columns in a header line (e.g. 'energy i0 itrans', or XDI '# Column.N:' lines) "
            "or give a text file with the columns energy, mu"
        )
    energy, mu = _energy_and_mu(table, columns, path)
    energy = to_ev(energy)
    if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(mu))):
        raise ValueError(f"reference spectrum {path}: contains NaN/inf values or non-positive intensities")
    order = np.argsort(energy, kind="stable")
    energy, mu = energy[order], mu[order]
    keep = np.r_[True, np.diff(energy) > 0]
    starts = np.flatnonzero(keep)
    spread = np.maximum.reduceat(mu, starts) - np.minimum.reduceat(mu, starts)
    span = float(np.ptp(mu)) if mu.size else 0.0
    bad = np.flatnonzero(spread > 0.01 * span)
    if bad.size:  # which of two values is the spectrum's cannot be told (two scans in one file?)
        e = energy[starts[bad]]
        raise ValueError(
            f"reference spectrum {path}: {bad.size} energies appear twice with different values "
            f"(e.g. {e[0]:.2f} eV); give one spectrum per file"
        )
    return ReferenceSpectrum(name or path.stem, energy[keep], mu[keep])
