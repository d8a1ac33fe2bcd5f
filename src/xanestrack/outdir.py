"""Output folders: claimed, locked and written atomically; nothing of the user's overwritten.

Everything is written into a temporary folder beside the target and moved into
place only when complete; an existing folder is replaced only with
``overwrite=True``, and then only after the new one is complete (an interrupted run
leaves the previous results intact), and only if it is an output of ours (marker
``.xanestrack-output``) holding nothing else. A lock beside the target refuses a
second run into the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import XanestrackError, one_line

__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "check_rewrite",
    "output_lock",
    "write_marker",
    "add_to_marker",
    "committed",
    "interrupted_message",
    "remove_ours",
]

logger = logging.getLogger(__name__)

#: written into every output folder we complete: what we wrote, by which run
MARKER = ".xanestrack-output"
#: inside a temporary folder while a run writes into it (pid and host of the writer)
TMP_MARKER = ".xanestrack-tmp"
#: written into a finished output later, by 'report', 'demo' (accuracy) and 'series --synthetic': added to
#: the marker by :func:`add_to_marker`; a run folder from before markers may hold these (only these names:
#: ``figures/paper_fig1.png`` there is the user's, and is never deleted)
_LATER = re.compile(
    r"^(report\.html|\.report\.html\.tmp|accuracy\.csv|figures/(overview|chemistry|motion|common_motion|relative_motion"
    r"|resolution|resolved_pairs|edge_widths|whiteline|uncertainty|clusters|cluster_fractions|cluster_spectra|pca_scree"
    r"|particle_\d{3,}(_edge_e50|_edge_e50_shown|_spectrum)?)\.(png|svg|csv))$"
)
#: what a run, demo or series scan wrote before output folders had a marker (version 0.1.0)
_LEGACY = {
    "tracks.csv",
    "detections.csv",
    "rejected.csv",
    "motion_summary.csv",
    "results.h5",
    "run.json",
    "summary.json",
}
_STALE = (
    re.compile(r"^\..+\.(?P<kind>tmp)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$"),
    re.compile(r"^\..+\.(?P<kind>old)-(?P<host>.+)-(?P<pid>\d+)$"),
)


def _host() -> str:
    return socket.gethostname() or "localhost"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (when in doubt: yes, so that nothing of it is removed)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        try:
            import psutil

            return psutil.pid_exists(pid)
        except ImportError:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or cannot tell: alive
        return True
    return True


def _int(x) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return -1


def _read_marker(folder: Path, name: str = MARKER):
    """The marker's content if ``folder`` holds a marker that xanestrack wrote, else None."""
    try:
        info = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("tool") == "xanestrack" else None


def _legacy_marker(folder: Path):
    """A folder of a run from before markers: run.json with a version and a results.h5 that
    xanestrack wrote (its ``xanestrack_version`` attribute, which every release has written;
    another tool's ``run.json`` and ``results.h5`` are not ours)."""
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "version" not in info or not (folder / "results.h5").is_file():
        return None
    try:
        import h5py

        with h5py.File(folder / "results.h5", "r") as f:
            ours = "xanestrack_version" in f.attrs
    except Exception:  # not HDF5, truncated, unreadable: not known to be ours
        return None
    return dict(tool="xanestrack", kind="legacy", files=sorted(_LEGACY)) if ours else None


def _files_of(folder: Path) -> list:
    """Every file under ``folder`` (relative paths, '/'-separated); symlinks count as files, and an
    empty folder as one (``name/``: somebody made it, and it goes only with what we wrote)."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            out.append((rel / name).as_posix())
        if rel != Path(".") and not dirs and not files:
            out.append(rel.as_posix() + "/")
    return sorted(out)


def _foreign(folder: Path, info: dict) -> list:
    """Files in ``folder`` that xanestrack did not write (per its marker)."""
    ours = set(info.get("files", [])) | {MARKER}
    legacy = info.get("kind") == "legacy"
    return [
        f for f in _files_of(folder) if f not in ours and f != ".report.html.tmp" and not (legacy and _LATER.match(f))
    ]


def write_marker(folder, *, kind: str, extra: dict | None = None) -> None:
    """Mark ``folder`` as a xanestrack output, listing every file in it now."""
    folder = Path(folder)
    info = dict(
        tool="xanestrack",
        version=__version__,
        kind=kind,
        host=_host(),
        pid=os.getpid(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    )
    info["files"] = [f for f in _files_of(folder) if f not in (MARKER, TMP_MARKER)]
    info["stat"] = _stats(folder, info["files"])
    (folder / MARKER).write_text(json.dumps(info, indent=1))


#: bytes read at a time to hash a file: the SHA-256 of a 600 MiB file took 0.37-0.48 s in 1 MiB blocks (1.3-1.7 GB/s;
#: 4 and 8 MiB blocks were no faster, BLAKE2b took 0.72 s) on the shared 2-core AMD EPYC development machine, the file
#: in the page cache: what every file an output holds costs when its marker is written
HASH_BLOCK = 1 << 20


def _sha256(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _stats(folder: Path, files) -> dict:
    """Size, modification time (ns) and the SHA-256 of each of ``files`` that is a plain file: what tells a file edited
    since. Every file's content is recorded, whatever its size: an HDF5 file edited in place (h5py ``r+``) keeps its
    size, and only its content tells the edit from a copy that did not keep times (cp -r, tar, scp, a download)."""
    out = {}
    for f in files:
        p = folder / f
        if not f.endswith("/") and p.is_file() and not p.is_symlink():
            st = p.stat()
            out[f] = [st.st_size, st.st_mtime_ns, _sha256(p)]
    return out


def _edited(folder: Path, info: dict, files=None) -> list:
    """Files the marker recorded that changed since: another size, or another time and another content. A file whose
    time alone changed (copied, touched) counts as ours where its content is as recorded; where the marker did not
    record its content (older markers left out files over 16 MiB), a changed time counts as an edit (an HDF5 file
    edited in place keeps its size), see :func:`_unrecorded`."""
    stat = info.get("stat") or {}
    out = []
    for f, rec in stat.items():
        if files is not None and f not in files:
            continue
        try:
            st = (folder / f).stat()
        except OSError:
            continue  # gone: nothing of the user's to lose
        size, mtime = rec[0], rec[1]
        if st.st_size != size:
            out.append(f)
        elif st.st_mtime_ns != mtime and (len(rec) < 3 or _sha256(folder / f) != rec[2]):
            out.append(f)
    return sorted(out)


def _unrecorded(folder: Path, info: dict, files) -> list:
    """Those of ``files`` in ``folder`` of the size ``info``, its marker, recorded, whose content it did not record:
    whether they were edited since is not known."""
    stat = info.get("stat") or {}
    out = []
    for f in files:
        try:
            same = f in stat and len(stat[f]) < 3 and (folder / f).stat().st_size == stat[f][0]
        except OSError:
            same = False
        if same:
            out.append(f)
    return out


def _protected(folder: Path) -> str | None:
    """The first file or folder under ``folder`` (itself included) without its owner's write permission: the user
    protected it (``chmod -R a-w``), and it is not ours to replace (as root every permission is bypassed, so the
    mode is read, not tried)."""
    import stat as st_

    for root, dirs, files in os.walk(folder):
        for name in [None, *dirs, *files]:
            p = Path(root) if name is None else Path(root) / name
            try:
                mode = p.lstat().st_mode
            except OSError:
                continue
            if not st_.S_ISLNK(mode) and not mode & st_.S_IWUSR:
                return str(p)
    return None


def _write_protected(folder: Path) -> bool:
    """Whether the folder ``folder`` lacks its owner's write permission, the rule of :func:`_protected` for one
    folder: the user protected it (``chmod a-w``), and as root, whom no permission stops, only the mode tells.
    Not on Windows, where a folder's read-only attribute marks a customised folder (Documents) and protects nothing."""
    import stat as st_

    if os.name == "nt":
        return False
    try:
        return not folder.stat().st_mode & st_.S_IWUSR
    except OSError:
        return False


def _check_writable(folder: Path) -> None:
    """Refuse to write in ``folder`` (an output's parent, or an empty output filled in place): not permitted, or
    write-protected (:func:`_write_protected`; root was let write in a folder of mode 555)."""
    if not folder.is_dir():
        return
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "permission denied"
    elif _write_protected(folder):
        why = "write-protected: its owner has no write permission"
    else:
        return
    raise XanestrackError(f"cannot write in {folder} ({why}); choose another output folder (`out`)")


def report_files(folder) -> list:
    """The files of ``folder`` that rebuilding its report writes over: report.html and the figures under our names."""
    folder = Path(folder)
    return [f for f in _files_of(folder) if _LATER.match(f) and f not in ("accuracy.csv", ".report.html.tmp")]


def check_rewrite(folder, names) -> None:
    """Refuse to write ``names`` (relative paths) into the finished output ``folder`` where one exists that is not
    known to be ours as we wrote it: a report.html the user edited, a figure of their own under our name, or any of
    them in a folder without our marker (a folder of copied results beside the user's own report)."""
    folder = Path(folder)
    info = _read_marker(folder)
    present = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not present:
        return
    if info is None:
        raise XanestrackError(
            f"{folder} has no {MARKER} marker (copied results, or a run from before markers) and holds "
            f"{', '.join(present[:3])}{' and more' if len(present) > 3 else ''}: not known to be xanestrack's, so "
            "not overwritten; move them out (or delete them if they are xanestrack's), then run report again"
        )
    ours = set(info.get("files", []))
    foreign = [n for n in present if n not in ours]
    edited = _edited(folder, info, set(present))
    if foreign or edited:
        bad = foreign + edited
        raise XanestrackError(
            f"{folder}: {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} "
            f"{'was' if len(bad) == 1 else 'were'} {'not written by xanestrack' if foreign else 'changed since xanestrack wrote ' + ('it' if len(bad) == 1 else 'them')}"
            " and would be overwritten; move it out (or rename it) first"
        )


def _relative(folder: Path, f) -> str:
    """``f`` as a path inside ``folder``: an absolute path, one relative to the current folder that lies in
    ``folder`` (``report v1`` globbed ``v1/figures/...``: recorded under that name, its new size and time never
    were, and every later report and --overwrite was refused), or a name inside it."""
    p = Path(f)
    if not p.is_absolute() and (folder / p).exists():
        return p.as_posix()
    try:
        return Path(os.path.abspath(p)).relative_to(Path(os.path.abspath(folder))).as_posix()
    except ValueError:
        return p.as_posix()


def add_to_marker(folder, files) -> None:
    """Record in ``folder``'s marker files written into it after it was completed (report, accuracy)."""
    folder = Path(folder)
    info = _read_marker(folder)
    if info is None:
        return
    new = {_relative(folder, f) for f in files}
    info["files"] = sorted(set(info.get("files", [])) | new)
    info["stat"] = {**(info.get("stat") or {}), **_stats(folder, new)}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, folder / MARKER)


#: kinds of output that may replace each other with ``overwrite`` (a run and a demo write the same); any other
#: only its own kind: a synthetic scan (stack.h5, truth.h5) is never replaced by a run's results
_RUN_KINDS = {"run", "legacy", "output"}


def _same_kind(old, new) -> bool:
    return old is None or new is None or old == new or {old, new} <= _RUN_KINDS


def _input_ids(inputs, out=None) -> set:
    """(device, inode) of the input files (and the files in input folders, but those of the output ``out`` itself,
    which may lie inside an input folder): a hard link to one is the input too."""
    ids = set()
    skip = Path(os.path.abspath(out)) if out is not None else None
    for p in map(Path, inputs):
        if p.is_dir():
            inside = (q for q in p.rglob("*") if q.is_file())
            paths = [q for q in inside if skip is None or skip not in Path(os.path.abspath(q)).parents][:10000]
        else:
            paths = [p] if p.is_file() else []
        for q in paths:
            try:
                st = q.stat()
            except OSError:
                continue
            ids.add((st.st_dev, st.st_ino))
    return ids


def _check_parent(out: Path) -> None:
    """Refuse an output whose nearest existing folder above cannot be written in (checked before the scan is read:
    `run` read the whole stack, `demo` synthesised for 7 s, before the refusal)."""
    p = Path(os.path.abspath(out)).parent
    if not p.exists():
        p = _first_missing(p).parent
    _check_writable(p)


def _check_name_length(out) -> None:
    """Refuse an output whose temporary folder beside it, ``.NAME.tmp-HOST-PID-XXXXXXXX`` (the longest name made
    there: the lock and the replaced folder's names are shorter), or a folder to be made for it, would have a longer
    name than the file system allows (checked before the scan is read: `run` read the stack, then failed)."""
    out = Path(out).resolve()  # named as atomic_output_dir names it
    base = out.parent
    while not os.path.isdir(base) and base != base.parent:  # not Path.exists: it raises on a name too long
        base = base.parent
    try:
        limit = os.pathconf(base, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or a file system that does not say
        limit = 255
    names = [f".{out.name}.tmp-{_host()}-{os.getpid()}-{'0' * 8}"]
    names += [p.name for p in (out, *out.parents) if base in p.parents]
    for name in names:
        n = len(os.fsencode(name))
        if n > limit:  # the names shortened: the line would be cut before it says what to do
            what = "its temporary folder's name" if name == names[0] else f"the name {name[:40]}..."
            raise XanestrackError(
                f"output {out.name[:40]}{'...' if len(out.name) > 40 else ''}: name too long ({what} would be {n} "
                f"bytes, the file system allows {limit}); choose a shorter output folder name (`out`)"
            )


def check_output_dir(out_dir, *, overwrite: bool, inputs=(), kind: str | None = None) -> Path:
    """Refuse an output folder we may not write.

    A new or empty folder is fine where it and its parent may be written (as root too: not
    write-protected) and the temporary folder's name beside it fits the file system's limit.
    An existing one needs ``overwrite``, and then must
    be a previous xanestrack output (its ``.xanestrack-output`` marker, or a run folder
    from before markers) holding only files xanestrack wrote and none of ``inputs``,
    and must not be (or contain) the current folder. Anything else is refused: nothing
    we did not write is ever deleted.
    """
    out = Path(out_dir)
    _check_name_length(out)  # first: Path.exists raises on a name longer than the file system allows
    _COMMITTED.pop(_key(out), None)  # a new run into ``out``: what an earlier one of this process did is past
    output_lock(out).check_free()  # another run writing it now: refused before this one reads its input
    if out.exists() and not out.is_dir():
        raise XanestrackError(f"output {out} exists and is not a folder; choose another output folder (`out`)")
    _check_parent(out)  # the temporary folder and the lock are made there, whether or not ``out`` exists
    if not out.exists():
        return out
    if not any(out.iterdir()):
        _check_writable(out)  # filled in place
        return out
    if not overwrite:
        raise XanestrackError(
            f"output folder {out} exists and is not empty; choose another output folder (`out`) or pass `overwrite`"
        )
    res = out.resolve()
    cwd = Path.cwd().resolve()
    if cwd == res or res in cwd.parents:
        raise XanestrackError(
            f"`overwrite`: {out} is the current folder or contains it; choose another output folder (`out`)"
        )
    for p in inputs:
        rp = Path(p).resolve()
        if rp == res or res in rp.parents:
            raise XanestrackError(
                f"`overwrite`: {out} holds the input {p}; it is never replaced: choose another output folder (`out`)"
            )
    ids = _input_ids(inputs, out)
    if ids:
        for f in _files_of(out):
            try:
                st = (out / f).stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in ids:
                raise XanestrackError(
                    f"`overwrite`: {out} holds the input ({out / f} is the same file, a link to it); it is never "
                    "replaced: choose another output folder (`out`)"
                )
    info = _read_marker(out) or _legacy_marker(out)
    if info is None:
        raise XanestrackError(
            f"`overwrite`: {out} is not a xanestrack output (no {MARKER} marker) and is not replaced; "
            "choose another output folder (`out`), or empty the folder yourself"
        )
    if not _same_kind(info.get("kind"), kind):
        raise XanestrackError(
            f"`overwrite`: {out} is the output of xanestrack {info.get('kind')}, not of {kind}"
            + (
                " (a synthetic scan: its stack.h5 may be the input of other runs)"
                if info.get("kind") == "synth"
                else ""
            )
            + "; it is not replaced: choose another output folder (`out`)"
        )
    extra = _foreign(out, info)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise XanestrackError(
            f"`overwrite`: {out} holds files xanestrack did not write ({shown}); move them out or choose another output folder (`out`)"
        )
    edited = _edited(out, info)
    unknown = _unrecorded(out, info, edited)
    if unknown and len(unknown) == len(edited):
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise XanestrackError(
            f"`overwrite`: in {out}, {shown} {'has' if len(unknown) == 1 else 'have'} another modification time than "
            "when xanestrack wrote "
            f"{'it' if len(unknown) == 1 else 'them'}, and this older output's marker did not record "
            f"{'its' if len(unknown) == 1 else 'their'} content, so an edit in place cannot be ruled out; move out "
            "what you want to keep, then delete the folder yourself, or choose another output folder (`out`)"
        )
    if edited:
        shown = ", ".join(edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
        raise XanestrackError(
            f"`overwrite`: in {out}, {shown} changed since xanestrack wrote {'it' if len(edited) == 1 else 'them'}; "
            "move out what you want to keep (or delete it), or choose another output folder (`out`)"
        )
    locked = _protected(out)
    if locked:
        raise XanestrackError(
            f"`overwrite`: {out} is write-protected ({locked}); it is not replaced: make it writable, or choose "
            "another output folder (`out`)"
        )
    return out


def _restore_replaced(old: Path, pid: str, host: str) -> bool:
    """Rename ``old`` (``.NAME.old-HOST-PID``, a previous output that process ``pid`` moved aside) back to NAME where
    that process was killed between its two renames: NAME is missing and its finished temporary folder is beside
    ``old`` (it moves NAME aside only once that is complete). Removing both deleted the user's previous results.
    Without that folder, NAME was replaced and then removed by the user, and ``old`` goes as before.

    Returns
    -------
    bool
        True if ``old`` is NAME again, or is to be kept (NAME's lock is held: another run is restoring it now).
    """
    name = old.name[1 : -len(f".old-{host}-{pid}")]
    target = old.with_name(name)
    prefix = f".{name}.tmp-{host}-{pid}-"  # not a glob: a name may hold [ or *
    finished = [
        t
        for t in old.parent.iterdir()
        if t.name.startswith(prefix)
        and re.fullmatch(r"[0-9a-f]{8}", t.name[len(prefix) :])
        and _read_marker(t) is not None
        and not (t / TMP_MARKER).exists()
    ]
    if not finished or os.path.lexists(target):
        return False
    try:
        with output_lock(target):  # no run into NAME may start meanwhile
            if os.path.lexists(target):
                return False
            os.rename(old, target)
    except (XanestrackError, OSError):
        return True
    logger.warning(
        "restored %s: the previous results, moved aside as %s by a xanestrack run (process %s) killed before its new "
        "results were in place",
        target,
        old.name,
        pid,
    )
    return True


def _clean_stale(parent: Path) -> None:
    """Remove temporary / replaced folders and lock files that killed runs of ours left in ``parent``.

    Only entries named as we name them, holding our marker, written on this host by a
    process that is no longer running. A replaced folder whose run was killed before the
    new one took its place is renamed back instead (:func:`_restore_replaced`), and the
    new one removed: an interrupted run leaves the previous results as they were.
    """
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    host = _host()
    # replaced folders first: whether one is restored depends on its run's temporary folder, removed below
    for e in sorted(entries, key=lambda e: not _STALE[1].match(e.name)):
        name = e.name
        if not name.startswith("."):
            continue
        if name.endswith(".lock") and e.is_file() and not e.is_symlink():
            info = _read_marker(parent, name)
            if info and info.get("host") == host and not _pid_alive(_int(info.get("pid"))):
                try:
                    with output_lock(parent / name[1:-5]):
                        pass  # acquiring and releasing removes it
                except XanestrackError:
                    pass
            continue
        m = _STALE[0].match(name) or _STALE[1].match(name)
        if not m or m["host"] != host or _pid_alive(int(m["pid"])) or e.is_symlink() or not e.is_dir():
            continue
        if m["kind"] == "tmp":
            if _read_marker(e, TMP_MARKER) is None and _read_marker(e) is None:
                continue
        else:
            info = _read_marker(e) or _legacy_marker(e)
            if info is None or _foreign(e, info) or _restore_replaced(e, m["pid"], host):
                continue
        shutil.rmtree(e, ignore_errors=True)
        if e.exists():  # write-protected inside, say: left, and said so once per run
            logger.warning("could not remove %s, left by an interrupted xanestrack run (process %s)", e, m["pid"])
        else:
            logger.warning("removed %s, left by an interrupted xanestrack run (process %s)", e, m["pid"])


#: the lock files this process holds (:class:`output_lock`)
_HELD: set = set()


class output_lock:
    """Hold ``.NAME.lock`` beside ``out`` while a run writes it; a second run is refused.

    The lock is an advisory ``flock`` on that file (released by the kernel when the
    process dies, so a killed run never blocks the next one); where ``fcntl`` is
    missing, the file is created with ``O_EXCL`` and a lock whose process is dead is
    taken over.
    """

    def __init__(self, out):
        out = Path(os.path.abspath(out))
        self.path = out.parent / f".{out.name}.lock"
        self.out = out
        self.fd = None

    def _busy(self):
        info = _read_marker(self.path.parent, self.path.name) or {}
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        return XanestrackError(
            f"{self.out}: another xanestrack run ({who}) is writing this output now; wait for it to finish "
            "or choose another output folder (`out`)"
        )

    def _open(self, flags):
        try:
            return os.open(self.path, flags, 0o666)
        except FileExistsError:
            raise
        except OSError as exc:  # a folder no file can be made in (/proc, a read-only mount)
            raise XanestrackError(
                f"cannot write in {self.path.parent} ({one_line(exc.strerror or exc)}); "
                "choose another output folder (`out`)"
            ) from None

    def __enter__(self):
        # taken with interrupts held, and given up again where one came meanwhile: a SIGTERM landing just as the
        # file was made left it (no ``with`` had taken it yet to remove it)
        try:
            with _interrupts_held():
                return self._take()
        except BaseException:
            if self.fd is not None:
                self.__exit__(None, None, None)
            raise

    def _take(self):
        try:
            import fcntl
        except ImportError:
            fcntl = None
        content = json.dumps(dict(tool="xanestrack", pid=os.getpid(), host=_host(), out=str(self.out))).encode()
        for _ in range(20):
            if fcntl is None:
                try:
                    fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    info = _read_marker(self.path.parent, self.path.name) or {}
                    try:
                        age = time.time() - self.path.stat().st_mtime
                    except OSError:
                        age = 0.0
                    if (info.get("host") == _host() and not _pid_alive(_int(info.get("pid")))) or (
                        not info and age > 60
                    ):
                        stale = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                        try:
                            os.replace(self.path, stale)
                            os.unlink(stale)
                        except OSError:
                            pass
                        continue
                    raise self._busy() from None
            else:
                fd = self._open(os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self._busy() from None
                try:  # the file we locked must still be the one at the path (not unlinked by its last holder)
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, content)
            self.fd = fd
            _HELD.add(self.path)
            return self
        raise self._busy()

    def check_free(self) -> None:
        """Raise where another run holds the lock now (nothing is created or taken): a second run into the same
        output read its whole scan first, and was refused only when it came to write (minutes on a large scan)."""
        if self.path in _HELD:  # this process's own (atomic_output_dir checks the folder again under it)
            return
        try:
            import fcntl
        except ImportError:
            fcntl = None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or none readable): nobody holds it
            return
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    raise self._busy() from None
            else:
                info = _read_marker(self.path.parent, self.path.name) or {}
                if info.get("host") == _host() and _pid_alive(_int(info.get("pid"))):
                    raise self._busy()
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        _HELD.discard(self.path)
        try:
            os.unlink(self.path)  # while still holding it: a waiting run sees a new file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        return False


def _first_missing(folder: Path) -> Path:
    """The highest folder of ``folder``'s path that does not exist (``folder`` itself if its parent does)."""
    while not folder.parent.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _prepare_parent(out: Path) -> tuple[Path, Path | None]:
    """``out``'s parent, created and writable, and the highest folder this created (None if none)."""
    parent = out.parent
    if parent == out:
        raise XanestrackError(f"output {out}: give a folder, not the file-system root")
    first = None if parent.exists() else _first_missing(parent)  # removed again (if empty) when the run fails
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XanestrackError(
            f"cannot create the folder {parent} for {out.name} ({one_line(exc.strerror or exc)}); choose another output folder (`out`)"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise XanestrackError(f"cannot write in {parent} (permission denied); choose another output folder (`out`)")
    return parent, first


def _remove_created(out: Path, first: Path | None) -> None:
    """Remove the folders above ``out`` up to ``first``, which its run created, where they are still empty (a refused
    `synth` left `scn/` behind)."""
    if first is None:
        return
    p = out.parent
    while True:
        try:
            p.rmdir()  # only an empty folder
        except OSError:
            return
        if p == first:
            return
        p = p.parent


#: what became of each output folder this process put in place (:func:`atomic_output_dir`), by its real path:
#: ``old`` the folder it replaced (or None), ``left`` that folder where it was not removed (``kept``: it holds
#: files of the user's), read by :func:`interrupted_message` (a Ctrl-C after the new results were in place said
#: "nothing was written", the old results then hidden beside them and removed by the next run)
_COMMITTED: dict = {}


def _key(out) -> str:
    return os.path.realpath(out)


def committed(out) -> bool:
    """Whether the latest :func:`atomic_output_dir` of this process into ``out`` has put its new results in place
    (from the rename that does so on; forgotten when a new one, or :func:`check_output_dir`, starts on ``out``)."""
    return _key(out) in _COMMITTED


def interrupted_message(out, *, what: str = "output") -> str:
    """The line that says what an interrupted (Ctrl-C) command left in ``out``, its output folder.

    ``out`` as the user gave it (printed as given); ``what`` names a previous output there ("output", "scan").
    Before :func:`atomic_output_dir` put the new results in place, nothing was written (the previous output
    is as it was); from then on, ``out`` holds the new results, complete, and the line says what became of the
    folder they replaced: removed, or (a second Ctrl-C while it was removed) what is left of it, removed by
    the next run into the same parent folder, or kept because it holds files xanestrack did not write.
    """
    state = _COMMITTED.get(_key(out))
    if state is None:
        return f"interrupted: nothing was written to {out} (a previous {what} there is as it was)"
    line = f"interrupted: the new results are complete in {out}"
    old = state.get("old")
    if old is None:
        return line
    if state.get("kept"):
        return f"{line}; the previous {what} there was moved to {old} (it holds files xanestrack did not write)"
    if state.get("left"):
        return (
            f"{line}; the previous {what} there was replaced and was being deleted: what is left of it, {old}, is "
            "removed by the next xanestrack run into the same folder"
        )
    return f"{line}; the previous {what} there was replaced by them"


@contextmanager
def _interrupts_held():
    """Hold an interrupt (Ctrl-C's SIGINT; SIGTERM, which the command line makes end a command as Ctrl-C does) until
    the block is done, then raise it: the renames that put new results in place, the removal of the folder they
    replaced, and the making of the temporary folder and the lock together with what removes them again are not cut
    in half. A second interrupt meanwhile interrupts at once.

    Only in the main thread (the one Python runs signal handlers in), and each signal only where it has a Python
    handler (SIGINT's default one raises KeyboardInterrupt; SIGTERM's is the command line's); elsewhere the block
    runs as it is.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        handler = None if sig is None else signal.getsignal(sig)
        if callable(handler):  # not ignored (SIG_IGN), the default action (SIG_DFL), or set outside Python
            previous[sig] = handler

    def hold(signum, frame):
        if held:  # the second: now
            previous[signum](signum, frame)
            return
        held.append((signum, frame))

    try:
        for sig in previous:
            signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        previous[held[0][0]](*held[0])


def _remove_replaced(old: Path) -> bool:
    """Delete ``old``, a replaced output of ours, its marker last (and a folder from before markers its run.json
    and results.h5 last): cut short, what is left is still known as ours, and the next run removes it
    (:func:`_clean_stale`). Returns whether it is gone."""
    last = {MARKER: 2, "run.json": 1, "results.h5": 1}
    try:
        entries = sorted(old.iterdir(), key=lambda e: last.get(e.name, 0))
    except OSError:
        entries = []
    for e in entries:
        try:
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                e.unlink()
        except OSError:
            pass
    try:
        old.rmdir()
    except OSError:
        pass
    return not os.path.lexists(old)


def remove_ours(folder, names) -> list:
    """Delete those of ``names`` (paths relative to ``folder``) that ``folder``'s marker records and that are as
    xanestrack wrote them (another size or content: the user's, kept), and drop them from the marker.

    Returns the names removed.
    """
    folder = Path(folder)
    info = _read_marker(folder)
    if info is None:
        return []
    ours = set(info.get("files", []))
    present = [n for n in names if n in ours and (folder / n).is_file() and not (folder / n).is_symlink()]
    edited = set(_edited(folder, info, set(present)))
    gone = []
    for n in present:
        if n in edited:
            continue
        try:
            (folder / n).unlink()
        except OSError:
            continue
        gone.append(n)
    if gone:
        info["files"] = [f for f in info.get("files", []) if f not in gone]
        info["stat"] = {f: v for f, v in (info.get("stat") or {}).items() if f not in gone}
        tmp = folder / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, folder / MARKER)
    return gone


def _swap(tmp: Path, out: Path, old: Path) -> Path | None:
    """Put the finished ``tmp`` in place of ``out``, which (where it exists) is moved to ``old`` first; recorded
    in :data:`_COMMITTED` once ``tmp`` is ``out``. Interrupted before that, the previous ``out`` is put back and
    ``tmp`` removed. Returns ``old`` where ``out`` existed, else None."""
    moved = False
    try:
        if out.exists():
            mode = out.stat()
            os.replace(out, old)
            moved = True
            try:  # the replaced folder's permissions and group (a folder shared with colleagues stays shared)
                os.chmod(tmp, mode.st_mode & 0o7777)
                os.chown(tmp, -1, mode.st_gid)
            except OSError:
                pass
        os.replace(tmp, out)
    except BaseException:
        if not os.path.lexists(tmp):  # in place after all (interrupted just after the rename)
            _COMMITTED[_key(out)] = dict(old=str(old) if moved else None, left=moved)
            raise
        if moved and not os.path.lexists(out):
            try:
                os.replace(old, out)
            except OSError:  # left as .NAME.old-HOST-PID: the next run puts it back (_restore_replaced)
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _COMMITTED[_key(out)] = dict(old=str(old) if moved else None)
    return old if moved else None


def _make_tmp(parent: Path, out: Path, host: str, pid: int) -> Path:
    """A new temporary folder for ``out`` in ``parent``: ``.NAME.tmp-HOST-PID-XXXXXXXX``, normal permissions."""
    for _ in range(100):
        tmp = parent / f".{out.name}.tmp-{host}-{pid}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)  # the umask applies, unlike mkdtemp's 0700
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise XanestrackError(
                f"cannot write in {parent} ({one_line(exc.strerror or exc)}); choose another output folder (`out`)"
            ) from None
    raise XanestrackError(f"cannot make a temporary folder for {out.name} in {parent}; choose another output folder")


@contextmanager
def atomic_output_dir(out_dir, *, overwrite: bool = False, inputs=(), kind: str = "output"):
    """Yield a temporary folder; on success it replaces ``out_dir``.

    Before anything is computed: the folder is checked (:func:`check_output_dir`),
    the parent is created and must be writable, folders left by killed runs of ours
    there are removed, and ``out_dir`` is locked (a concurrent run into it is refused).
    The temporary folder gets the normal permissions (umask). On an exception it is
    removed and ``out_dir`` is untouched; on success it gets the ``.xanestrack-output``
    marker and replaces ``out_dir``; a replaced folder is deleted only if it still
    holds nothing but what xanestrack wrote.
    """
    check_output_dir(out_dir, overwrite=overwrite, inputs=inputs, kind=kind)
    out = Path(out_dir).resolve()
    host, pid = _host(), os.getpid()
    created = tmp = None
    moving = False  # from here on the temporary folder is (being) put in place, not removed
    try:
        # what is made here is made with interrupts held and known to the clean-up below before one is let through:
        # a SIGTERM landing just as the temporary folder was made (CI, once) left it beside the output
        with _interrupts_held():
            parent, created = _prepare_parent(out)
        _clean_stale(parent)
        with output_lock(out):
            check_output_dir(out, overwrite=overwrite, inputs=inputs, kind=kind)  # again, now that it is ours
            try:
                with _interrupts_held():
                    tmp = _make_tmp(parent, out, host, pid)
                    (tmp / TMP_MARKER).write_text(json.dumps(dict(tool="xanestrack", pid=pid, host=host, out=str(out))))
                yield tmp
                (tmp / TMP_MARKER).unlink()
                write_marker(tmp, kind=kind)
                check_output_dir(out, overwrite=overwrite, inputs=inputs, kind=kind)
                # an interrupt from here on is held until the new results are in place and the folder they replace
                # is gone (a second one interrupts at once): what is left then is said by interrupted_message
                with _interrupts_held():
                    moving = True
                    if out.is_dir() and not any(out.iterdir()):
                        # an empty folder the user made (perhaps the current one): keep it, move our files in, marker last
                        for entry in sorted(tmp.iterdir(), key=lambda e: e.name == MARKER):
                            if (out / entry.name).exists():
                                raise XanestrackError(
                                    f"{out / entry.name} appeared while the run was writing; it is left alone: rerun"
                                )
                            os.replace(entry, out / entry.name)
                        _COMMITTED[_key(out)] = dict(old=None)
                        tmp.rmdir()
                        return
                    old = _swap(tmp, out, parent / f".{out.name}.old-{host}-{pid}")
                    state = _COMMITTED[_key(out)]
                    if old is not None:
                        info = _read_marker(old) or _legacy_marker(old) or dict(files=[])
                        left = _foreign(old, info)
                        if left:  # something appeared in it meanwhile: keep it
                            state["kept"] = True
                            logger.warning(
                                "the replaced output was kept as %s: it holds files xanestrack did not write (%s)",
                                old,
                                left[0],
                            )
                        else:
                            state["left"] = True  # until it is gone
                            if _remove_replaced(old):
                                state["left"] = False
            except BaseException:
                if tmp is not None and not moving:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise

    except BaseException:  # the folders above that this run created go again (a lock in them is gone by now)
        _remove_created(out, created)
        raise
